//! What the manifest asks for, computed without I/O: the remote instance it wants, the request
//! body, the resync interval, and every check of a pass's inputs ([`validate`]): spec values that
//! the schema may not have enforced (objects stored before a rule existed, or on API servers that
//! do not run CEL rules), and what the referenced objects allow.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::step::AuthMode;
use crate::api::{
    AdoptionPolicy, CLUSTER_TAG_PREFIX, ConnectorInstance, ConnectorInstanceStatus,
    ConsumerCredentialsPolicy, PlatformStatusRef, REFERENCE_TAG_PREFIX, RESERVED_TAG_PREFIXES, cluster_tag,
    ownership_tag, reference_tag,
};
use crate::controller::context::Settings;
use crate::controller::error::Error;
use crate::controller::inputs::{Dereferenced, ResolvedPlatform};
use crate::controller::token_secret;
use crate::platform::InstanceRequest;

/// The remote instance as the manifest wants it (no secret values: those only enter the
/// `auth_hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRemote {
    /// The connector (element) key.
    pub connector: String,
    /// This resource's ownership tag (also in `tags`).
    pub own_tag: String,
    /// This resource's reference tag (also in `tags`), when the operator has a cluster id.
    pub reference_tag: Option<String>,
    /// Remote instance name.
    pub name: String,
    /// Full tag list: `spec.tags`, then the ownership, reference and cluster tags.
    pub tags: Vec<String>,
    /// Enabled flag.
    pub enabled: bool,
    /// Hash of name and tags (see [`metadata_hash`]).
    pub metadata_hash: String,
    /// Hash of every authentication-relevant input, secret values included (see [`AuthHasher`]).
    pub auth_hash: String,
}

/// The remote instance as the resource wants it, in the cluster `cluster_id` (see
/// [`Settings::cluster_id`]).
pub fn remote(
    ci: &ConnectorInstance,
    configuration: &BTreeMap<String, SecretString>,
    cluster_id: Option<&str>,
) -> DesiredRemote {
    // Trimmed, as the platform stores it: what is sent is what reads back.
    let name = ci
        .spec
        .display_name
        .as_deref()
        .map(|name| name.trim().to_string())
        .unwrap_or_else(|| format!("{}/{}", ci.namespace().unwrap_or_default(), ci.name_any()));
    let own_tag = ownership_tag(&ci.uid().unwrap_or_default());
    let cluster = cluster_id
        .map(|id| (reference_tag(id, &ci.namespace().unwrap_or_default(), &ci.name_any()), cluster_tag(id)));
    let mut tags: Vec<String> = Vec::with_capacity(ci.spec.tags.len() + 3);
    let operators = std::iter::once(&own_tag).chain(cluster.iter().flat_map(|(r, c)| [r, c]));
    for tag in ci.spec.tags.iter().chain(operators) {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    let mut hasher = AuthHasher::default();
    hasher.field(ci.spec.connector.as_bytes());
    if auth_mode(ci) == AuthMode::RefreshToken {
        hasher.field(EXTERNAL_AUTHENTICATION_INITIAL.as_bytes());
    }
    for (key, value) in configuration {
        hasher.field(key.as_bytes()).field(value.expose_secret().as_bytes());
    }
    DesiredRemote {
        connector: ci.spec.connector.clone(),
        own_tag,
        reference_tag: cluster.map(|(reference, _)| reference),
        metadata_hash: metadata_hash(&name, &tags),
        name,
        tags,
        enabled: ci.spec.enabled(),
        auth_hash: hasher.finish(),
    }
}

/// A digest of every configuration key's value, keyed by the instance UID: 16 hex digits of the
/// sha256 of (uid, key, value), length-prefixed. Recorded on the token Secret with the token, so
/// that a later plan can name the keys whose values changed (see [`changed_inputs`]).
pub fn input_digests(uid: &str, configuration: &BTreeMap<String, SecretString>) -> BTreeMap<String, String> {
    configuration
        .iter()
        .map(|(key, value)| {
            let mut hasher = AuthHasher::default();
            hasher.field(uid.as_bytes()).field(key.as_bytes()).field(value.expose_secret().as_bytes());
            (key.clone(), hasher.finish()[..16].to_string())
        })
        .collect()
}

/// Most keys a plan names (the record is read from the token Secret, which others may edit).
pub const MAX_CHANGED_INPUTS: usize = 32;

/// The keys added, removed or changed between the digests last applied and the current ones
/// (names only, sorted; at most [`MAX_CHANGED_INPUTS`], and only names a configuration key can
/// have).
pub fn changed_inputs(applied: &BTreeMap<String, String>, current: &BTreeMap<String, String>) -> Vec<String> {
    let keys: BTreeSet<&String> = applied.keys().chain(current.keys()).collect();
    keys.into_iter()
        .filter(|key| applied.get(*key) != current.get(*key))
        .filter(|key| key.len() <= 253 && !key.chars().any(char::is_control))
        .take(MAX_CHANGED_INPUTS)
        .cloned()
        .collect()
}

/// `externalAuthentication` of an instance created from a refresh token (API.md §6.3).
pub const EXTERNAL_AUTHENTICATION_INITIAL: &str = "initial";

/// How the instance authenticates: `spec.oauth` with a refresh token, `spec.oauth` without one
/// (the authorization-code flow), or with configuration values alone.
pub fn auth_mode(ci: &ConnectorInstance) -> AuthMode {
    match &ci.spec.oauth {
        None => AuthMode::Values,
        Some(oauth) if oauth.refresh_token_secret_ref.is_some() => AuthMode::RefreshToken,
        Some(_) => AuthMode::Code,
    }
}

/// The body of a create or re-authentication; `grant` is the OAuth grant code to exchange
/// (`providerData.code`), if one is at hand.
pub fn request(
    ci: &ConnectorInstance,
    desired: &DesiredRemote,
    configuration: &BTreeMap<String, SecretString>,
    grant: Option<&SecretString>,
) -> InstanceRequest {
    InstanceRequest {
        element_key: ci.spec.connector.clone(),
        name: desired.name.clone(),
        tags: desired.tags.clone(),
        configuration: configuration.clone(),
        provider_data: grant.map(|code| [("code".to_string(), code.clone())].into()).unwrap_or_default(),
        external_authentication: (auth_mode(ci) == AuthMode::RefreshToken)
            .then(|| EXTERNAL_AUTHENTICATION_INITIAL.to_string()),
    }
}

/// `spec.tags` may not use the prefixes of the operator's own tags: the ownership and reference
/// tags prove which resource owns a remote instance. The CRD's CEL rule refuses such tags; this
/// covers objects stored without it.
pub fn check_tags(tags: &[String]) -> Result<(), Error> {
    let reserved =
        tags.iter().find_map(|t| RESERVED_TAG_PREFIXES.iter().find(|p| t.starts_with(**p)).map(|p| (t, p)));
    match reserved {
        Some((tag, prefix)) => Err(Error::invalid(
            "ReservedTag",
            format!(
                "spec.tags entry `{tag}` starts with `{prefix}`, which is reserved for the operator's own tags; remove it"
            ),
        )),
        None => Ok(()),
    }
}

/// `spec.displayName` may not contain `<` or `>`: the platform strips markup from names, so such
/// a name would read back different on every resync (and be patched forever). The schema's
/// pattern refuses it; this covers objects stored before that pattern.
pub fn check_display_name(name: Option<&str>) -> Result<(), Error> {
    match name {
        Some(name) if name.contains(['<', '>']) => Err(Error::invalid(
            "InvalidDisplayName",
            "spec.displayName contains `<` or `>`; the platform strips markup from instance names, so remove them",
        )),
        _ => Ok(()),
    }
}

/// What the checks of a pass's inputs found, for the steps.
#[derive(Debug, Clone)]
pub struct Checked {
    /// The resync interval in force.
    pub resync: Duration,
    /// The token Secret's name.
    pub secret_name: String,
    /// The platform's base URL (trimmed).
    pub base_url: String,
    /// The remote instance the manifest wants.
    pub desired: DesiredRemote,
    /// How the instance authenticates.
    pub auth: AuthMode,
    /// The token Secret's template uses the `authorization` value.
    pub wants_authorization: bool,
    /// The approval value of the plan in effect (see [`super::approval::approval_value`]).
    pub approval: String,
}

impl Checked {
    /// Where the remote instance lives, for `status.platform`.
    pub fn platform_ref(&self, platform: &ResolvedPlatform) -> PlatformStatusRef {
        PlatformStatusRef {
            kind: platform.kind,
            name: platform.name.clone(),
            base_url: self.base_url.clone(),
        }
    }
}

/// Every check of a pass's inputs, before any platform call: the spec's values, the token
/// Secret's name and owner, that the instance has not moved, adoption, and what the token Secret
/// needs (the `authorization` value only where the platform allows it, restarts only where this
/// operator may make them, a template that renders).
pub fn validate(
    ci: &ConnectorInstance,
    status: &ConnectorInstanceStatus,
    read: &Dereferenced,
    settings: &Settings,
) -> Result<Checked, Error> {
    let resync = resync_interval(ci, settings.default_resync)?;
    check_tags(&ci.spec.tags)?;
    check_display_name(ci.spec.display_name.as_deref())?;
    let secret_name = token_secret::token_secret_name(ci);
    token_secret::check_secret_name(&secret_name)
        .map_err(|message| Error::invalid("InvalidTokenSecretName", message))?;
    let existing = read.token_secret.as_deref();
    if existing.is_some_and(|existing| !token_secret::is_owned_by(existing, ci)) {
        return Err(Error::invalid(
            "SecretConflict",
            format!(
                "Secret `{secret_name}` already exists and is not owned by this ConnectorInstance; delete or rename it, or set spec.tokenSecret.name"
            ),
        ));
    }
    let base_url = read.platform.settings.base_url.trim().to_string();
    let recorded_connector = existing.and_then(token_secret::stored_connector);
    check_unmoved(ci, status, &base_url, recorded_connector.as_deref())?;
    check_adoption(ci, status, read.platform.settings.adoption)?;
    let wants_authorization = token_secret::wants_authorization(ci);
    check_token_secret(ci, &read.platform, settings.rollout_restart, wants_authorization, existing)?;
    let approval = super::approval::approval_value(
        ci.metadata.generation.unwrap_or_default(),
        &read.binding,
        status.planned_action.as_ref().map(|p| p.approval.as_str()),
        status.last_approved.as_deref(),
    );
    Ok(Checked {
        resync,
        secret_name,
        base_url,
        desired: remote(ci, &read.configuration, settings.cluster_id.as_deref()),
        auth: auth_mode(ci),
        wants_authorization,
        approval,
    })
}

/// Checks what the token Secret needs before anything is sent: the `authorization` value only
/// where the platform allows it, restarts only where this operator may make them
/// (`rollout_restart`), and a template that renders (tried with the token at hand, or a stand-in
/// before the first one).
fn check_token_secret(
    ci: &ConnectorInstance,
    platform: &ResolvedPlatform,
    rollout_restart: bool,
    wants_authorization: bool,
    existing: Option<&Secret>,
) -> Result<(), Error> {
    if wants_authorization && platform.settings.consumer_credentials != Some(ConsumerCredentialsPolicy::Allow)
    {
        return Err(Error::invalid(
            CONSUMER_CREDENTIALS_NOT_ALLOWED,
            format!(
                "spec.tokenSecret.template uses `authorization`, which holds the credentials of {} `{}`; that platform does not allow it (its owner may set spec.consumerCredentials: Allow); or use `token` and pass the user and organization secrets another way",
                platform.kind, platform.name
            ),
        ));
    }
    let spec = ci.spec.token_secret.as_ref();
    if spec.is_some_and(|t| !t.rollout_restart.is_empty()) && !rollout_restart {
        return Err(Error::invalid(
            "RolloutRestartDisabled",
            "spec.tokenSecret.rolloutRestart names workloads, but this operator does not restart workloads: install the chart with rolloutRestart.enabled=true (it grants patching Deployments, StatefulSets and DaemonSets), or remove rolloutRestart",
        ));
    }
    if spec.is_some_and(|t| t.template.is_some()) {
        let stand_in = SecretString::from("stand-in-for-the-first-token");
        let token = existing.and_then(token_secret::stored_token).unwrap_or(stand_in);
        let authorization = wants_authorization.then(|| {
            token_secret::authorization_header(&platform.user_secret, &platform.organization_secret, &token)
        });
        let content = token_secret::TokenSecretContent {
            token: &token,
            instance_id: 0,
            base_url: platform.settings.base_url.trim(),
            connector: &ci.spec.connector,
            auth_hash: "",
            grant_sha256: None,
            authorization: authorization.as_ref(),
            applied_inputs: None,
        };
        token_secret::render(ci, &content)?;
    }
    Ok(())
}

/// The reason of the refusal that also takes the `authorization` keys out of the token Secret.
pub const CONSUMER_CREDENTIALS_NOT_ALLOWED: &str = "ConsumerCredentialsNotAllowed";

/// `spec.adopt` is the platform owner's privilege (`adoption: Allow`), and names the instance the
/// resource has, once it has one.
pub fn check_adoption(
    ci: &ConnectorInstance,
    status: &ConnectorInstanceStatus,
    policy: Option<AdoptionPolicy>,
) -> Result<(), Error> {
    let Some(adopt) = &ci.spec.adopt else {
        return Ok(());
    };
    let wanted = adopt.instance_id;
    match status.instance_id {
        Some(id) if id != wanted => Err(Error::invalid(
            "ImmutableField",
            format!(
                "spec.adopt.instanceId is {wanted}, but this resource manages remote instance {id}; restore it, or create a new ConnectorInstance"
            ),
        )),
        Some(_) => Ok(()),
        None if policy != Some(AdoptionPolicy::Allow) => {
            let platform = &ci.spec.platform_ref;
            Err(Error::invalid(
                "AdoptionNotAllowed",
                format!(
                    "{} `{}` does not allow adoption (its spec.adoption is not Allow): remote instance {wanted} is not taken over and its token is not read; ask the platform's owner, or remove spec.adopt",
                    platform.kind, platform.name
                ),
            ))
        }
        None => Ok(()),
    }
}

/// The resync interval: `spec.resyncInterval`, or `default`.
pub fn resync_interval(ci: &ConnectorInstance, default: Duration) -> Result<Duration, Error> {
    let Some(text) = &ci.spec.resync_interval else {
        return Ok(default);
    };
    let interval = crate::controller::parse_duration(text).ok_or_else(|| {
        Error::invalid(
            "InvalidResyncInterval",
            format!("resyncInterval `{text}` is not a duration like `90s`, `10m` or `1h`"),
        )
    })?;
    if !(Duration::from_secs(10)..=Duration::from_secs(7 * 24 * 3600)).contains(&interval) {
        return Err(Error::invalid(
            "InvalidResyncInterval",
            format!("resyncInterval `{text}` is out of range: use between 10s and 168h"),
        ));
    }
    Ok(interval)
}

/// An instance that has a remote instance stays where it was created: `spec.platformRef` and
/// `spec.connector` are immutable (the CRD's rules refuse changes; this covers API servers and
/// objects that skipped them), and a platform whose `baseUrl` changed no longer reaches it.
/// `recorded` is `status.platform`, `connector` the connector of the token Secret.
pub fn check_unmoved(
    ci: &ConnectorInstance,
    status: &ConnectorInstanceStatus,
    platform_base_url: &str,
    connector: Option<&str>,
) -> Result<(), Error> {
    let Some(id) = status.instance_id else {
        return Ok(());
    };
    if let Some(connector) = connector
        && connector != ci.spec.connector
    {
        return Err(Error::invalid(
            "ImmutableField",
            format!(
                "spec.connector changed from `{connector}` to `{}` but remote instance {id} is a `{connector}` instance; restore it, or create a new ConnectorInstance",
                ci.spec.connector
            ),
        ));
    }
    let Some(PlatformStatusRef { kind, name, base_url }) = status.platform.as_deref() else {
        return Ok(());
    };
    let reference = &ci.spec.platform_ref;
    if *kind != reference.kind || *name != reference.name {
        return Err(Error::invalid(
            "ImmutableField",
            format!(
                "spec.platformRef changed from {kind} `{name}` to {} `{}` but remote instance {id} lives on the former; restore it, or create a new ConnectorInstance",
                reference.kind, reference.name
            ),
        ));
    }
    if base_url.trim() != platform_base_url.trim() {
        return Err(Error::invalid(
            "PlatformMoved",
            format!(
                "remote instance {id} was created on {base_url}, but {kind} `{name}` now points to {platform_base_url}; restore its baseUrl, or delete this ConnectorInstance (its remote instance on {base_url} is deleted) and create it again"
            ),
        ));
    }
    Ok(())
}

/// Hash of a remote name and tag set (order and duplicates of tags do not matter). The reference
/// and cluster tags are left out: an instance created before they existed is not patched for
/// them alone; it gets them with its next PATCH or PUT, which send the full list.
pub fn metadata_hash(name: &str, tags: &[String]) -> String {
    let tags: BTreeSet<&str> = tags
        .iter()
        .map(String::as_str)
        .filter(|t| !t.starts_with(REFERENCE_TAG_PREFIX) && !t.starts_with(CLUSTER_TAG_PREFIX))
        .collect();
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    for tag in tags {
        hasher.update([0u8]);
        hasher.update(tag.as_bytes());
    }
    hex::encode(&hasher.finalize()[..12])
}

/// Hashes the authentication-relevant inputs: connector key and every configuration entry. Each
/// field is length-prefixed so that no two different inputs hash alike.
#[derive(Debug, Default)]
pub struct AuthHasher(Sha256);

impl AuthHasher {
    /// Adds one field.
    pub fn field(&mut self, value: &[u8]) -> &mut Self {
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value);
        self
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::PlatformKind;
    use crate::controller::Class;

    fn instance(spec: serde_json::Value) -> ConnectorInstance {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "demo", "namespace": "ns", "uid": "u-1", "generation": 1 }, "spec": spec,
        }))
        .unwrap()
    }

    fn echo() -> serde_json::Value {
        serde_json::json!({ "platformRef": { "name": "sim" }, "connector": "echo" })
    }

    #[test]
    fn tags_with_a_reserved_prefix_are_refused_naming_the_tag() {
        let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert!(check_tags(&tags(&[])).is_ok());
        assert!(
            check_tags(&tags(&["team-a", "k8s-uidx", "uid-k8s-uid-1", "k8s-refs", "k8s-clusters"])).is_ok()
        );
        for prefix in RESERVED_TAG_PREFIXES {
            let stolen = format!("{prefix}0b7e6a2c-another-resource");
            let err = check_tags(&tags(&["team-a", &stolen])).unwrap_err();
            assert_eq!(err.reason(), "ReservedTag");
            assert_eq!(err.class(), Class::Stalled);
            assert!(err.to_string().contains(&stolen) && err.to_string().contains(prefix), "{err}");
        }
    }

    #[test]
    fn display_names_with_markup_are_refused() {
        assert!(check_display_name(None).is_ok());
        assert!(check_display_name(Some("Team A: billing & CRM (prod)")).is_ok());
        for name in ["<a href=\"#\">x</a>", "a > b", "<script>"] {
            let err = check_display_name(Some(name)).unwrap_err();
            assert_eq!((err.reason(), err.class()), ("InvalidDisplayName", Class::Stalled), "{name}");
        }
    }

    #[test]
    fn resync_interval_defaults_parses_and_is_bounded() {
        let default = Duration::from_secs(600);
        let with = |value: &str| {
            let mut spec = echo();
            spec["resyncInterval"] = value.into();
            resync_interval(&instance(spec), default)
        };
        assert_eq!(resync_interval(&instance(echo()), default).unwrap(), default);
        assert_eq!(with("90s").unwrap(), Duration::from_secs(90));
        for bad in ["9s", "200h", "soon"] {
            assert_eq!(with(bad).unwrap_err().reason(), "InvalidResyncInterval", "{bad}");
        }
    }

    #[test]
    fn the_desired_remote_carries_the_ownership_tag_once_and_hashes_configuration() {
        let mut spec = echo();
        spec["tags"] = serde_json::json!(["team-a", "team-a"]);
        let ci = instance(spec);
        let mut configuration = BTreeMap::new();
        let a = remote(&ci, &configuration, None);
        assert_eq!(a.name, "ns/demo");
        assert_eq!(a.tags, ["team-a".to_string(), ownership_tag("u-1")]);
        assert_eq!(a.reference_tag, None);
        configuration.insert("password".to_string(), SecretString::from("s3cret"));
        let b = remote(&ci, &configuration, None);
        assert_eq!(a.metadata_hash, b.metadata_hash, "configuration is not metadata");
        assert_ne!(a.auth_hash, b.auth_hash, "configuration is authentication");
        assert!(!b.auth_hash.contains("s3cret"));
    }

    #[test]
    fn with_a_cluster_id_the_remote_also_carries_reference_and_cluster_tags_outside_the_metadata_hash() {
        let mut spec = echo();
        spec["tags"] = serde_json::json!(["team-a"]);
        let ci = instance(spec);
        let configuration = BTreeMap::new();
        let without = remote(&ci, &configuration, None);
        let with = remote(&ci, &configuration, Some("east"));
        let reference = reference_tag("east", "ns", "demo");
        assert_eq!(with.reference_tag.as_deref(), Some(reference.as_str()));
        assert_eq!(with.tags, ["team-a".to_string(), ownership_tag("u-1"), reference, cluster_tag("east")]);
        assert_eq!(
            with.metadata_hash, without.metadata_hash,
            "an instance tagged before the cluster id existed is not patched for the new tags alone"
        );
        // The reference tag names cluster, namespace and name, and nothing else.
        assert_ne!(reference_tag("west", "ns", "demo"), reference_tag("east", "ns", "demo"));
        assert_ne!(reference_tag("east", "ns2", "demo"), reference_tag("east", "ns", "demo"));
        assert_ne!(reference_tag("east", "n", "sdemo"), reference_tag("east", "ns", "demo"));
        assert_eq!(reference_tag("east", "ns", "demo").len(), REFERENCE_TAG_PREFIX.len() + 32);
    }

    #[test]
    fn input_digests_name_the_changed_keys_and_hide_the_values() {
        let config = |entries: &[(&str, &str)]| -> BTreeMap<String, SecretString> {
            entries.iter().map(|(k, v)| (k.to_string(), SecretString::from(*v))).collect()
        };
        let applied = input_digests("u-1", &config(&[("password", "s3cret"), ("site", "a"), ("old", "x")]));
        let current = input_digests("u-1", &config(&[("password", "s3cret2"), ("site", "a"), ("new", "y")]));
        assert_eq!(changed_inputs(&applied, &current), ["new", "old", "password"]);
        assert!(changed_inputs(&applied, &applied).is_empty());
        assert!(applied.values().all(|d| d.len() == 16 && !d.contains("s3cret")));
        // Keyed by the instance: the same value elsewhere digests differently.
        let other = input_digests("u-2", &config(&[("site", "a")]));
        assert_ne!(other["site"], applied["site"]);
        // An edited record names no more than a configuration could.
        let edited: BTreeMap<String, String> = (0..100)
            .map(|i| (format!("k{i:03}"), String::new()))
            .chain([("bad\nkey".to_string(), String::new()), ("x".repeat(300), String::new())])
            .collect();
        let named = changed_inputs(&edited, &current);
        assert_eq!(named.len(), MAX_CHANGED_INPUTS);
        assert!(named.iter().all(|k| k.len() <= 253 && !k.contains('\n')));
    }

    #[test]
    fn an_instance_stays_where_its_remote_instance_lives() {
        let recorded = |kind, name: &str, url: &str| ConnectorInstanceStatus {
            instance_id: Some(7),
            platform: Some(Box::new(PlatformStatusRef { kind, name: name.into(), base_url: url.into() })),
            ..ConnectorInstanceStatus::default()
        };
        let here = "https://api.example/elements/api-v2";
        // (what, status, the platform's base URL now, the token Secret's connector, expected reason)
        type Case<'a> = (&'a str, ConnectorInstanceStatus, &'a str, Option<&'a str>, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (
                "nothing remote yet",
                ConnectorInstanceStatus::default(),
                "https://elsewhere",
                Some("sfdc"),
                None,
            ),
            ("unchanged", recorded(PlatformKind::ConnectorPlatform, "sim", here), here, Some("echo"), None),
            (
                "status from before status.platform",
                ConnectorInstanceStatus { instance_id: Some(7), ..Default::default() },
                here,
                None,
                None,
            ),
            (
                "connector changed",
                recorded(PlatformKind::ConnectorPlatform, "sim", here),
                here,
                Some("sfdc"),
                Some("ImmutableField"),
            ),
            (
                "platform renamed",
                recorded(PlatformKind::ConnectorPlatform, "other", here),
                here,
                None,
                Some("ImmutableField"),
            ),
            (
                "platform kind changed",
                recorded(PlatformKind::ClusterConnectorPlatform, "sim", here),
                here,
                None,
                Some("ImmutableField"),
            ),
            (
                "baseUrl changed",
                recorded(PlatformKind::ConnectorPlatform, "sim", here),
                "https://new.example",
                None,
                Some("PlatformMoved"),
            ),
        ];
        let ci = instance(echo());
        for (what, status, url, connector, expected) in cases {
            let result = check_unmoved(&ci, &status, url, connector);
            assert_eq!(result.as_ref().err().map(Error::reason), expected, "{what}");
            if let Err(err) = result {
                assert_eq!(err.class(), Class::Stalled, "{what}");
                assert!(err.to_string().contains("remote instance 7"), "{what}: {err}");
            }
        }
    }

    #[test]
    fn tag_order_does_not_matter() {
        let a = metadata_hash("n", &["x".into(), "y".into()]);
        let b = metadata_hash("n", &["y".into(), "x".into(), "x".into()]);
        assert_eq!(a, b);
        assert_ne!(a, metadata_hash("n", &["x".into()]));
        assert_ne!(metadata_hash("ab", &[]), metadata_hash("a", &["b".into()]));
    }

    #[test]
    fn auth_hash_is_length_prefixed() {
        let mut a = AuthHasher::default();
        a.field(b"ab").field(b"c");
        let mut b = AuthHasher::default();
        b.field(b"a").field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }
}
