//! Dereference: everything a ConnectorInstance points at, read and checked — the platform object,
//! its credentials, and the configuration values from Secrets. Errors name the object and say what
//! to do; no secret value enters an error.

use sha2::Digest as _;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};

use super::Error;
use crate::api::{
    ClusterConnectorPlatform, ConnectorInstanceSpec, ConnectorPlatform, EventVendorType, EventsSpec,
    MAX_CONFIGURATION_VALUE_BYTES, PlatformKind, PlatformRef, PlatformSettings,
};

/// A platform object with its credentials read.
#[derive(Debug, Clone)]
pub struct ResolvedPlatform {
    /// Kind of the platform object.
    pub kind: PlatformKind,
    /// Name of the platform object.
    pub name: String,
    /// Namespace of a `ConnectorPlatform`; `None` for a cluster platform.
    pub namespace: Option<String>,
    /// Its settings.
    pub settings: PlatformSettings,
    /// The user secret.
    pub user_secret: SecretString,
    /// The organization secret.
    pub organization_secret: SecretString,
    /// Extra CA certificates (PEM) trusted for the platform's TLS certificate, from
    /// `spec.caBundleSecretRef`.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Identifies this platform configuration and credential version (for client reuse).
    pub fingerprint: String,
}

/// The identity of a platform object, `<kind>/<namespace>/<name>` (no namespace for a cluster
/// platform): the key of what this process knows of it across credential changes.
pub fn platform_identity(kind: PlatformKind, namespace: Option<&str>, name: &str) -> String {
    format!("{kind}/{}/{name}", namespace.unwrap_or(""))
}

impl ResolvedPlatform {
    /// The identity of the platform object (see [`platform_identity`]).
    pub fn identity(&self) -> String {
        platform_identity(self.kind, self.namespace.as_deref(), &self.name)
    }

    /// The user and organization secrets: what a platform's words must never show.
    pub fn credentials(&self) -> [&SecretString; 2] {
        [&self.user_secret, &self.organization_secret]
    }

    /// The same platform and credentials at another base URL (where an instance was created
    /// before the platform object's `baseUrl` changed). Its fingerprint differs in its first part,
    /// so its client and health are kept apart from the live configuration's.
    pub fn at(&self, base_url: &str) -> ResolvedPlatform {
        let mut moved = self.clone();
        moved.settings.base_url = base_url.trim().to_string();
        let (first, rest) = self.fingerprint.split_once('#').unwrap_or((&self.fingerprint, ""));
        moved.fingerprint = format!("{first}@{}#{rest}", moved.settings.base_url);
        moved
    }
}

/// Where Secrets are read from: the API server directly, or the controller's cache.
pub trait SecretSource: Sync {
    /// The Secret, or `None` when it does not exist.
    fn secret(
        &self,
        namespace: &str,
        name: &str,
    ) -> impl std::future::Future<Output = Result<Option<Arc<Secret>>, kube::Error>> + Send;
}

impl SecretSource for kube::Client {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Arc<Secret>>, kube::Error> {
        Ok(Api::<Secret>::namespaced(self.clone(), namespace).get_opt(name).await?.map(Arc::new))
    }
}

impl SecretSource for super::Context {
    async fn secret(&self, namespace: &str, name: &str) -> Result<Option<Arc<Secret>>, kube::Error> {
        self.stores.secrets.get(&self.client, namespace, name).await
    }
}

/// Everything a pass reads from the cluster for one ConnectorInstance, before any check and any
/// platform call.
#[derive(Debug)]
pub struct Dereferenced {
    /// Its platform, with credentials.
    pub platform: ResolvedPlatform,
    /// Its token Secret, if it exists (not read when its name is invalid).
    pub token_secret: Option<Arc<Secret>>,
    /// The configuration sent to the platform, secret values included.
    pub configuration: BTreeMap<String, SecretString>,
    /// The binding of an approval to the Secrets the configuration comes from.
    pub binding: String,
    /// The grant codes of the authorization-code flow.
    pub grants: super::grants::Grants,
    /// What this process remembers of the instance.
    pub memory: super::context::Memory,
}

impl Dereferenced {
    /// The values that must never be shown: the platform's credentials, every configuration value
    /// not written in the manifest itself (from Secrets, OAuth), the token, the grant code.
    pub fn secret_values(&self, spec: &ConnectorInstanceSpec) -> Vec<SecretString> {
        let mut values: Vec<SecretString> = self.platform.credentials().into_iter().cloned().collect();
        values.extend(
            self.configuration
                .iter()
                .filter(|(key, _)| !spec.configuration.contains_key(*key))
                .map(|(_, v)| v.clone()),
        );
        values.extend(self.token_secret.as_deref().and_then(super::token_secret::stored_token));
        values.extend(self.grants.code.as_ref().map(|(code, ..)| code.clone()));
        values
    }
}

/// Reads what `ci` points at: its platform and credentials, its token Secret, the configuration
/// from Secrets, and (authorization-code flow) the grant codes; with what this process remembers
/// of it. `status` is the status the pass starts from.
pub async fn dereference(
    ctx: &super::Context,
    ci: &crate::api::ConnectorInstance,
    status: &crate::api::ConnectorInstanceStatus,
    now: &k8s_openapi::jiff::Timestamp,
) -> Result<Dereferenced, Error> {
    let namespace = ci.namespace().unwrap_or_default();
    let uid = ci.uid().unwrap_or_default();
    let platform = resolve_platform(ctx, &namespace, &ci.spec.platform_ref).await?;
    let secret_name = super::token_secret::token_secret_name(ci);
    let token_secret = match super::token_secret::check_secret_name(&secret_name) {
        Ok(()) => super::writes::token_secret(ctx, &uid, &namespace, &secret_name).await?,
        Err(_) => None,
    };
    let default_callback = ctx.settings.oauth_callback_url.as_deref();
    let (configuration, binding) = resolve_configuration(ctx, &namespace, &ci.spec, default_callback).await?;
    let memory = ctx.memory(&uid);
    let grants = match super::core::desired::auth_mode(ci) {
        super::core::step::AuthMode::Code => {
            let mut used = memory.used_grants().to_vec();
            used.extend(token_secret.as_deref().and_then(super::token_secret::stored_grant_digest));
            super::grants::gather(ctx, ci, status, &used, now).await?
        }
        _ => super::grants::Grants::default(),
    };
    Ok(Dereferenced { platform, token_secret, configuration, binding, grants, memory })
}

/// Reads a Secret; `None` when it does not exist.
pub async fn get_secret(
    client: &impl SecretSource,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>, Error> {
    Ok(client.secret(namespace, name).await?)
}

/// What binds an approval to the inputs a plan was shown for: 8 hex digits of a digest of the
/// name and resourceVersion of every Secret the instance's configuration comes from (`secrets`,
/// by name; a change of one gives another value). Derived from versions, never from values: it
/// is shown in status, which readers of Secrets need not be.
fn approval_binding(secrets: &HashMap<String, Secret>) -> String {
    let mut names: Vec<&String> = secrets.keys().collect();
    names.sort_unstable();
    let mut text = String::new();
    for name in names {
        text.push_str(&format!("{name}={}\n", super::resource_version(&secrets[name])));
    }
    let digest = sha2::Sha256::digest(text.as_bytes());
    digest.iter().take(4).map(|b| format!("{b:02x}")).collect()
}

/// A text value of a Secret, or an error that names the Secret and key.
pub fn secret_text(secret: &Secret, key: &str, purpose: &str) -> Result<SecretString, Error> {
    let name = secret.name_any();
    let ns = secret.namespace().unwrap_or_default();
    let bytes = secret
        .data
        .as_ref()
        .and_then(|data| data.get(key))
        .map(|b| b.0.clone())
        .or_else(|| secret.string_data.as_ref().and_then(|d| d.get(key)).map(|s| s.clone().into_bytes()))
        .ok_or_else(|| {
            Error::invalid(
                "SecretKeyMissing",
                format!(
                    "Secret `{ns}/{name}` has no key `{key}` ({purpose}); add the key or fix the reference"
                ),
            )
        })?;
    let text = String::from_utf8(bytes).map_err(|_| {
        Error::invalid(
            "SecretValueInvalid",
            format!("Secret `{ns}/{name}` key `{key}` ({purpose}) is not UTF-8 text"),
        )
    })?;
    Ok(SecretString::from(text))
}

/// Resolves the platform an instance in `namespace` refers to, checks that the namespace may use
/// it, and reads its credentials.
pub async fn resolve_platform(
    ctx: &super::Context,
    namespace: &str,
    platform_ref: &PlatformRef,
) -> Result<ResolvedPlatform, Error> {
    let client = &ctx.client;
    let name = &platform_ref.name;
    let (settings, platform_namespace, generation_id) = match platform_ref.kind {
        PlatformKind::ConnectorPlatform => {
            // The watch cache; a read when it does not have the object (yet).
            let cached = ctx.stores.platforms.get(&ObjectRef::new(name).within(namespace));
            let platform = match cached {
                Some(platform) => Some(ConnectorPlatform::clone(&platform)),
                None => Api::<ConnectorPlatform>::namespaced(client.clone(), namespace).get_opt(name).await?,
            };
            let platform = platform
                .ok_or_else(|| {
                    Error::invalid(
                        "PlatformNotFound",
                        format!("ConnectorPlatform `{name}` not found in namespace `{namespace}`; create it or fix spec.platformRef"),
                    )
                })?;
            let id = object_version(&platform);
            (platform.spec.settings, Some(namespace.to_string()), id)
        }
        PlatformKind::ClusterConnectorPlatform if !ctx.settings.cluster_platforms => {
            return Err(Error::invalid(
                "ClusterPlatformsDisabled",
                format!(
                    "ClusterConnectorPlatform `{name}` cannot be used: this operator runs without cluster platforms (--cluster-platforms=false); use a ConnectorPlatform in namespace `{namespace}`"
                ),
            ));
        }
        PlatformKind::ClusterConnectorPlatform => {
            let cached = ctx.stores.cluster_platforms.get(&ObjectRef::new(name));
            let platform = match cached {
                Some(platform) => Some(ClusterConnectorPlatform::clone(&platform)),
                None => Api::<ClusterConnectorPlatform>::all(client.clone()).get_opt(name).await?,
            };
            let platform = platform.ok_or_else(|| {
                Error::invalid(
                    "PlatformNotFound",
                    format!("ClusterConnectorPlatform `{name}` not found; create it or fix spec.platformRef"),
                )
            })?;
            let ns = Api::<Namespace>::all(client.clone()).get(namespace).await?;
            let allowed = platform
                .spec
                .namespace_selector
                .as_ref()
                .is_some_and(|selector| selector_matches(selector, ns.metadata.labels.as_ref()));
            if !allowed {
                return Err(Error::invalid(
                    "NamespaceNotAllowed",
                    format!(
                        "ClusterConnectorPlatform `{name}` does not allow namespace `{namespace}`: its spec.namespaceSelector {}",
                        if platform.spec.namespace_selector.is_some() {
                            "does not match the namespace's labels"
                        } else {
                            "is empty, which allows no namespace"
                        }
                    ),
                ));
            }
            let id = object_version(&platform);
            (platform.spec.settings, None, id)
        }
    };
    resolve_credentials(ctx, platform_ref, platform_namespace.as_deref(), settings, &generation_id).await
}

/// Checks a platform's base URL and reads its credentials Secret (and its CA bundle Secret, if
/// it names one).
pub async fn resolve_credentials(
    client: &impl SecretSource,
    platform_ref: &PlatformRef,
    platform_namespace: Option<&str>,
    settings: PlatformSettings,
    generation_id: &str,
) -> Result<ResolvedPlatform, Error> {
    let name = &platform_ref.name;
    check_base_url(&settings, platform_ref)?;
    let creds = &settings.credentials_secret_ref;
    let creds_namespace = secret_namespace(
        platform_ref,
        platform_namespace,
        creds.namespace.as_deref(),
        "spec.credentialsSecretRef",
        "credentials",
    )?;
    let secret = get_secret(client, &creds_namespace, &creds.name).await?.ok_or_else(|| {
        Error::invalid(
            "CredentialsNotFound",
            format!(
                "credentials Secret `{creds_namespace}/{}` of {} `{name}` not found; create it with keys `{}` and `{}`",
                creds.name,
                platform_ref.kind,
                creds.user_secret_key(),
                creds.organization_secret_key()
            ),
        )
    })?;
    let user_secret = secret_text(&secret, creds.user_secret_key(), "the platform user secret")?;
    check_header_secret(&user_secret, &secret, creds.user_secret_key(), "the platform user secret")?;
    let organization_secret =
        secret_text(&secret, creds.organization_secret_key(), "the platform organization secret")?;
    check_header_secret(
        &organization_secret,
        &secret,
        creds.organization_secret_key(),
        "the platform organization secret",
    )?;
    let mut fingerprint = format!(
        "{}#{generation_id}#{}",
        platform_identity(platform_ref.kind, platform_namespace, name),
        secret.resource_version().unwrap_or_default()
    );
    let ca_bundle_pem = match &settings.ca_bundle_secret_ref {
        None => None,
        Some(reference) => {
            let ca_namespace = secret_namespace(
                platform_ref,
                platform_namespace,
                reference.namespace.as_deref(),
                "spec.caBundleSecretRef",
                "CA bundle",
            )?;
            let ca_secret = get_secret(client, &ca_namespace, &reference.name).await?.ok_or_else(|| {
                Error::invalid(
                    "CaBundleNotFound",
                    format!(
                        "CA bundle Secret `{ca_namespace}/{}` of {} `{name}` not found; create it with the PEM CA certificate(s) under key `{}`, or remove spec.caBundleSecretRef",
                        reference.name,
                        platform_ref.kind,
                        reference.key()
                    ),
                )
            })?;
            let owner = format!("{} `{name}`", platform_ref.kind);
            let pem = ca_bundle_pem(&ca_secret, reference.key(), &owner)?;
            fingerprint.push_str(&format!("#ca:{}", ca_secret.resource_version().unwrap_or_default()));
            Some(pem)
        }
    };
    Ok(ResolvedPlatform {
        kind: platform_ref.kind,
        name: name.clone(),
        namespace: platform_namespace.map(str::to_string),
        settings,
        user_secret,
        organization_secret,
        ca_bundle_pem,
        fingerprint,
    })
}

/// The namespace of a Secret a platform refers to (`field`, e.g. `spec.credentialsSecretRef`): a
/// ConnectorPlatform may only use its own namespace, a ClusterConnectorPlatform must name one.
fn secret_namespace(
    platform_ref: &PlatformRef,
    platform_namespace: Option<&str>,
    requested: Option<&str>,
    field: &str,
    what: &str,
) -> Result<String, Error> {
    let name = &platform_ref.name;
    match (platform_namespace, requested) {
        (Some(own), None) => Ok(own.to_string()),
        (Some(own), Some(other)) if own == other => Ok(own.to_string()),
        (Some(own), Some(other)) => Err(Error::invalid(
            "CrossNamespaceReference",
            format!(
                "ConnectorPlatform `{name}` refers to its {what} Secret in namespace `{other}` ({field}.namespace); a ConnectorPlatform may only use Secrets of its own namespace `{own}` (use a ClusterConnectorPlatform instead)"
            ),
        )),
        (None, Some(ns)) if !ns.is_empty() => Ok(ns.to_string()),
        (None, _) => Err(Error::invalid(
            if what == "credentials" { "CredentialsNamespaceMissing" } else { "SecretNamespaceMissing" },
            format!(
                "ClusterConnectorPlatform `{name}` must name the namespace of its {what} Secret ({field}.namespace)"
            ),
        )),
    }
}

/// The PEM CA bundle under `key` of `secret`, checked to hold at least one certificate that
/// parses as a trust anchor. `owner` names the platform object in errors.
pub fn ca_bundle_pem(secret: &Secret, key: &str, owner: &str) -> Result<Vec<u8>, Error> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;

    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let pem = secret_text(secret, key, &format!("the CA bundle of {owner}"))?;
    let pem = pem.expose_secret().as_bytes().to_vec();
    let invalid = |problem: String| {
        Error::invalid(
            "CaBundleInvalid",
            format!(
                "Secret `{ns}/{name}` key `{key}` (the CA bundle of {owner}) {problem}; put the PEM-encoded CA certificate(s) (`-----BEGIN CERTIFICATE-----`) there"
            ),
        )
    };
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in CertificateDer::pem_slice_iter(&pem).enumerate() {
        let cert = cert.map_err(|e| invalid(format!("is not valid PEM ({e})")))?;
        roots.add(cert).map_err(|e| {
            invalid(format!("holds a certificate (#{}) that cannot be used as a CA: {e}", index + 1))
        })?;
    }
    if roots.is_empty() {
        return Err(invalid("holds no PEM certificate".into()));
    }
    Ok(pem)
}

/// `uid@generation` of an object: changes with every spec change.
pub fn object_version<K: Resource>(object: &K) -> String {
    format!("{}@{}", object.meta().uid.as_deref().unwrap_or(""), object.meta().generation.unwrap_or(0))
}

/// Refuses plain http unless the platform allows it, and base URLs that are not a plain
/// `https://host[:port]/path`, before any connection is made.
pub fn check_base_url(settings: &PlatformSettings, platform_ref: &PlatformRef) -> Result<(), Error> {
    let text = settings.base_url.trim();
    let name = &platform_ref.name;
    let kind = platform_ref.kind;
    let invalid = |problem: &str| {
        Error::invalid(
            "InvalidPlatformUrl",
            format!(
                "{kind} `{name}` spec.baseUrl {problem}; use the platform's API URL, e.g. https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2"
            ),
        )
    };
    let url = reqwest::Url::parse(text).map_err(|e| invalid(&format!("is not a valid URL ({e})")))?;
    match url.scheme() {
        "https" => {}
        "http" if settings.insecure_allow_http => {}
        "http" => {
            return Err(Error::invalid(
                "InsecurePlatformUrl",
                format!(
                    "{kind} `{name}` has a plain http base URL, which would send the platform secrets unencrypted; use https, or set insecureAllowHttp: true (local simulators only)"
                ),
            ));
        }
        _ => return Err(invalid("must start with https://")),
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid("has no host"));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("must not contain user info (credentials belong in spec.credentialsSecretRef)"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("must not contain a query or a fragment"));
    }
    Ok(())
}

/// Refuses a platform secret that cannot travel in an `Authorization` header, naming the Secret
/// and key but never showing the value.
fn check_header_secret(value: &SecretString, secret: &Secret, key: &str, purpose: &str) -> Result<(), Error> {
    let ns = secret.namespace().unwrap_or_default();
    let name = secret.name_any();
    let text = value.expose_secret();
    let problem = if text.trim().is_empty() {
        "is empty"
    } else if !text.bytes().all(|b| b.is_ascii_graphic()) {
        "contains characters that cannot be sent in an HTTP header (spaces, line breaks, control characters or non-ASCII)"
    } else {
        return Ok(());
    };
    Err(Error::invalid(
        "CredentialsInvalid",
        format!(
            "Secret `{ns}/{name}` key `{key}` ({purpose}) {problem}; put the secret exactly as the platform shows it"
        ),
    ))
}

/// Whether a label selector matches a set of labels (`matchLabels` and `matchExpressions` with
/// `In`, `NotIn`, `Exists`, `DoesNotExist`). An empty selector matches everything; an unknown
/// operator matches nothing.
pub fn selector_matches(selector: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let empty = BTreeMap::new();
    let labels = labels.unwrap_or(&empty);
    let match_labels = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
    let match_expressions = selector.match_expressions.iter().flatten().all(|expr| {
        let value = labels.get(&expr.key);
        let values = expr.values.as_deref().unwrap_or_default();
        match expr.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        }
    });
    match_labels && match_expressions
}

/// The platform's `event.*` configuration for an events spec.
pub fn events_configuration(events: &EventsSpec) -> Vec<(&'static str, String)> {
    let mut entries = vec![("event.notification.enabled", events.enabled.to_string())];
    if let Some(vendor) = events.vendor_type {
        let value = match vendor {
            EventVendorType::Polling => "polling",
            EventVendorType::Webhook => "webhook",
        };
        entries.push(("event.vendor.type", value.to_string()));
    }
    if let Some(url) = &events.callback_url {
        entries.push(("event.notification.callback.url", url.clone()));
    }
    if let Some(minutes) = events.poller_refresh_interval_minutes {
        entries.push(("event.poller.refresh_interval", minutes.to_string()));
    }
    entries
}

/// The full configuration sent to the platform: `configuration`, then `configurationFrom`, then
/// `events`, then `oauth`. A key set in two places is an error (which one wins would be a guess).
/// `default_callback_url` is the operator's OAuth callback URL, for `oauth` without its own.
/// With it, the binding of an approval to the Secrets it was read from (see
/// [`approval_binding`]).
pub async fn resolve_configuration(
    client: &impl SecretSource,
    namespace: &str,
    spec: &ConnectorInstanceSpec,
    default_callback_url: Option<&str>,
) -> Result<(BTreeMap<String, SecretString>, String), Error> {
    let mut secrets: HashMap<String, Secret> = HashMap::new();
    // Copies: merge_configuration works on plain Secrets.
    let mut wanted: Vec<(&str, &str)> = Vec::new();
    for source in &spec.configuration_from {
        let name = match (&source.secret_key_ref, &source.secret_ref) {
            (Some(selector), None) => &selector.name,
            (None, Some(reference)) => &reference.name,
            _ => {
                return Err(Error::invalid(
                    "InvalidConfigurationFrom",
                    "each configurationFrom entry needs exactly one of secretKeyRef and secretRef",
                ));
            }
        };
        wanted.push((name, "configurationFrom"));
    }
    if let Some(oauth) = &spec.oauth {
        wanted.push((&oauth.client_secret_ref.name, "spec.oauth.clientSecretRef"));
        if let Some(refresh) = &oauth.refresh_token_secret_ref {
            wanted.push((&refresh.name, "spec.oauth.refreshTokenSecretRef"));
        }
    }
    for (name, field) in wanted {
        if !secrets.contains_key(name) {
            let secret = get_secret(client, namespace, name).await?.ok_or_else(|| {
                Error::invalid(
                    "ConfigurationSecretNotFound",
                    format!("Secret `{namespace}/{name}` referenced by {field} not found; create it or fix the reference"),
                )
            })?;
            secrets.insert(name.to_string(), Secret::clone(&secret));
        }
    }
    Ok((merge_configuration(spec, &secrets, default_callback_url)?, approval_binding(&secrets)))
}

/// The OAuth callback URL of an instance: `spec.oauth.callbackUrl`, else the operator's.
pub fn callback_url<'a>(spec: &'a ConnectorInstanceSpec, default: Option<&'a str>) -> Option<&'a str> {
    spec.oauth
        .as_ref()
        .and_then(|o| o.callback_url.as_deref())
        .or(default)
        .map(str::trim)
        .filter(|u| !u.is_empty())
}

/// Pure part of [`resolve_configuration`], given the referenced Secrets by name.
pub fn merge_configuration(
    spec: &ConnectorInstanceSpec,
    secrets: &HashMap<String, Secret>,
    default_callback_url: Option<&str>,
) -> Result<BTreeMap<String, SecretString>, Error> {
    let mut merged = Merged::default();
    for (key, value) in &spec.configuration {
        merged.insert(key.clone(), SecretString::from(value.clone()), "spec.configuration".into())?;
    }
    for (index, source) in spec.configuration_from.iter().enumerate() {
        merge_source(&mut merged, index, source, secrets)?;
    }
    if let Some(events) = &spec.events {
        for (key, value) in events_configuration(events) {
            merged.insert(key.to_string(), SecretString::from(value), "spec.events".into())?;
        }
    }
    if let Some(oauth) = &spec.oauth {
        merge_oauth(&mut merged, spec, oauth, secrets, default_callback_url)?;
    }
    Ok(merged.config)
}

/// A configuration being merged, with where each key came from.
#[derive(Default)]
struct Merged {
    config: BTreeMap<String, SecretString>,
    origin: BTreeMap<String, String>,
}

impl Merged {
    /// Adds `key` from `from`: refused when empty, with control characters, too large, or set
    /// already elsewhere.
    fn insert(&mut self, key: String, value: SecretString, from: String) -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid(
                "InvalidConfiguration",
                format!("an empty configuration key comes from {from}"),
            ));
        }
        if key.chars().any(char::is_control) {
            return Err(Error::invalid(
                "InvalidConfiguration",
                format!(
                    "configuration key `{}` from {from} contains control characters; use the connector's key names, e.g. `zendesk.subdomain`",
                    key.escape_debug()
                ),
            ));
        }
        let size = value.expose_secret().len();
        if size > MAX_CONFIGURATION_VALUE_BYTES {
            return Err(Error::invalid(
                "ConfigurationValueTooLarge",
                format!(
                    "the value of configuration key `{}` from {from} has {size} bytes; at most {MAX_CONFIGURATION_VALUE_BYTES} are accepted",
                    key.escape_debug()
                ),
            ));
        }
        if let Some(first) = self.origin.get(&key) {
            return Err(Error::invalid(
                "DuplicateConfigurationKey",
                format!(
                    "configuration key `{}` is set twice ({first} and {from}); set it in one place",
                    key.escape_debug()
                ),
            ));
        }
        self.origin.insert(key.clone(), from);
        self.config.insert(key, value);
        Ok(())
    }
}

/// Adds the keys of `spec.configurationFrom[index]`.
fn merge_source(
    merged: &mut Merged,
    index: usize,
    source: &crate::api::ConfigurationSource,
    secrets: &HashMap<String, Secret>,
) -> Result<(), Error> {
    let from = format!("spec.configurationFrom[{index}]");
    match (&source.secret_key_ref, &source.secret_ref) {
        (Some(selector), None) => {
            let key = source.key.clone().ok_or_else(|| {
                Error::invalid(
                    "InvalidConfigurationFrom",
                    format!("{from}: `key` is required with secretKeyRef"),
                )
            })?;
            let secret = secrets.get(&selector.name).ok_or_else(|| {
                Error::invalid(
                    "ConfigurationSecretNotFound",
                    format!("{from}: Secret `{}` not found", selector.name),
                )
            })?;
            let value = secret_text(secret, &selector.key, &format!("configuration `{key}`"))?;
            merged.insert(key, value, from)?;
        }
        (None, Some(reference)) => {
            let secret = secrets.get(&reference.name).ok_or_else(|| {
                Error::invalid(
                    "ConfigurationSecretNotFound",
                    format!("{from}: Secret `{}` not found", reference.name),
                )
            })?;
            let prefix = source.prefix.as_deref().unwrap_or("");
            let keys: Vec<String> = secret
                .data
                .iter()
                .flat_map(|d| d.keys().cloned())
                .chain(secret.string_data.iter().flat_map(|d| d.keys().cloned()))
                .collect();
            for secret_key in keys {
                let value = secret_text(secret, &secret_key, "configuration from secretRef")?;
                merged.insert(format!("{prefix}{secret_key}"), value, from.clone())?;
            }
        }
        _ => {
            return Err(Error::invalid(
                "InvalidConfigurationFrom",
                format!("{from}: set exactly one of secretKeyRef and secretRef"),
            ));
        }
    }
    Ok(())
}

/// Adds the keys `spec.oauth` sets: client id and secret, callback URL, scope, refresh token.
fn merge_oauth(
    merged: &mut Merged,
    spec: &ConnectorInstanceSpec,
    oauth: &crate::api::OAuthSpec,
    secrets: &HashMap<String, Secret>,
    default_callback_url: Option<&str>,
) -> Result<(), Error> {
    let from_secret = |selector: &crate::api::SecretKeySelector, field: &str| {
        let secret = secrets.get(&selector.name).ok_or_else(|| {
            Error::invalid(
                "ConfigurationSecretNotFound",
                format!("{field}: Secret `{}` not found", selector.name),
            )
        })?;
        let value = secret_text(secret, &selector.key, field)?;
        if value.expose_secret().trim().is_empty() {
            return Err(Error::invalid(
                "SecretValueInvalid",
                format!("Secret `{}` key `{}` ({field}) is empty", selector.name, selector.key),
            ));
        }
        Ok(value)
    };
    merged.insert(
        "oauth.api.key".into(),
        SecretString::from(oauth.client_id.trim().to_string()),
        "spec.oauth.clientId".into(),
    )?;
    let secret = from_secret(&oauth.client_secret_ref, "spec.oauth.clientSecretRef")?;
    merged.insert("oauth.api.secret".into(), secret, "spec.oauth.clientSecretRef".into())?;
    if let Some(url) = callback_url(spec, default_callback_url) {
        merged.insert(
            "oauth.callback.url".into(),
            SecretString::from(url.to_string()),
            "spec.oauth.callbackUrl".into(),
        )?;
    }
    if let Some(scope) = &oauth.scope {
        merged.insert("oauth.scope".into(), SecretString::from(scope.clone()), "spec.oauth.scope".into())?;
    }
    if let Some(refresh) = &oauth.refresh_token_secret_ref {
        let token = from_secret(refresh, "spec.oauth.refreshTokenSecretRef")?;
        merged.insert("oauth.user.refresh_token".into(), token, "spec.oauth.refreshTokenSecretRef".into())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{ConfigurationSource, SecretKeySelector, SecretReference};
    use k8s_openapi::ByteString;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelectorRequirement;
    use secrecy::ExposeSecret;

    fn spec() -> ConnectorInstanceSpec {
        serde_json::from_value(serde_json::json!({
            "platformRef": {"name": "p"},
            "connector": "zendesk",
            "configuration": {"zendesk.subdomain": "acme"}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    fn secret(name: &str, entries: &[(&str, &[u8])]) -> (String, Secret) {
        let mut s = Secret::default();
        s.metadata.name = Some(name.into());
        s.metadata.namespace = Some("ns".into());
        s.data = Some(entries.iter().map(|(k, v)| (k.to_string(), ByteString(v.to_vec()))).collect());
        (name.to_string(), s)
    }

    fn exposed(config: &BTreeMap<String, SecretString>) -> BTreeMap<String, String> {
        config.iter().map(|(k, v)| (k.clone(), v.expose_secret().to_string())).collect()
    }

    #[test]
    fn merges_plain_secret_and_event_configuration() -> Result<(), Error> {
        let mut spec = spec();
        spec.configuration_from = vec![
            ConfigurationSource {
                key: Some("password".into()),
                secret_key_ref: Some(SecretKeySelector { name: "creds".into(), key: "pw".into() }),
                secret_ref: None,
                prefix: None,
            },
            ConfigurationSource {
                key: None,
                secret_key_ref: None,
                secret_ref: Some(SecretReference { name: "bulk".into() }),
                prefix: Some("x.".into()),
            },
        ];
        spec.events = Some(Box::new(EventsSpec {
            enabled: true,
            vendor_type: Some(EventVendorType::Polling),
            callback_url: Some("https://hooks.example/oc".into()),
            poller_refresh_interval_minutes: Some(15),
        }));
        let secrets: HashMap<_, _> =
            [secret("creds", &[("pw", b"s3cret")]), secret("bulk", &[("a", b"1"), ("b", b"2")])].into();
        let config = exposed(&merge_configuration(&spec, &secrets, None)?);
        let expected: BTreeMap<String, String> = [
            ("zendesk.subdomain", "acme"),
            ("password", "s3cret"),
            ("x.a", "1"),
            ("x.b", "2"),
            ("event.notification.enabled", "true"),
            ("event.vendor.type", "polling"),
            ("event.notification.callback.url", "https://hooks.example/oc"),
            ("event.poller.refresh_interval", "15"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(config, expected);
        Ok(())
    }

    #[test]
    fn missing_key_names_the_secret_and_key_but_not_values() {
        let mut spec = spec();
        spec.configuration_from = vec![ConfigurationSource {
            key: Some("password".into()),
            secret_key_ref: Some(SecretKeySelector { name: "creds".into(), key: "pw".into() }),
            secret_ref: None,
            prefix: None,
        }];
        let secrets: HashMap<_, _> = [secret("creds", &[("other", b"hunter2")])].into();
        let err = merge_configuration(&spec, &secrets, None).err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("`ns/creds`") && err.contains("`pw`"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[test]
    fn duplicate_keys_and_non_utf8_values_are_rejected() {
        let mut spec = spec();
        spec.configuration_from = vec![ConfigurationSource {
            key: Some("zendesk.subdomain".into()),
            secret_key_ref: Some(SecretKeySelector { name: "creds".into(), key: "pw".into() }),
            secret_ref: None,
            prefix: None,
        }];
        let secrets: HashMap<_, _> = [secret("creds", &[("pw", b"x")])].into();
        assert!(matches!(
            merge_configuration(&spec, &secrets, None),
            Err(Error::Invalid { reason: "DuplicateConfigurationKey", .. })
        ));
        spec.configuration_from[0].key = Some("password".into());
        let secrets: HashMap<_, _> = [secret("creds", &[("pw", &[0xff, 0xfe])])].into();
        assert!(matches!(
            merge_configuration(&spec, &secrets, None),
            Err(Error::Invalid { reason: "SecretValueInvalid", .. })
        ));
    }

    #[test]
    fn label_selectors() {
        let labels: BTreeMap<String, String> = [("team".to_string(), "a".to_string())].into();
        let by_label = LabelSelector { match_labels: Some(labels.clone()), match_expressions: None };
        assert!(selector_matches(&by_label, Some(&labels)));
        assert!(!selector_matches(&by_label, None));
        let expr = |op: &str, values: Option<Vec<&str>>| LabelSelector {
            match_labels: None,
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: "team".into(),
                operator: op.into(),
                values: values.map(|v| v.into_iter().map(String::from).collect()),
            }]),
        };
        assert!(selector_matches(&expr("In", Some(vec!["a", "b"])), Some(&labels)));
        assert!(!selector_matches(&expr("NotIn", Some(vec!["a"])), Some(&labels)));
        assert!(selector_matches(&expr("Exists", None), Some(&labels)));
        assert!(!selector_matches(&expr("DoesNotExist", None), Some(&labels)));
        assert!(!selector_matches(&expr("Bogus", None), Some(&labels)));
        assert!(selector_matches(&LabelSelector::default(), None));
    }

    #[test]
    fn garbage_ca_bundles_are_refused_with_the_secret_and_key_named() {
        let owner = "ConnectorPlatform `p`";
        let cases: [(&[u8], &str, &str); 4] = [
            (b"not a certificate at all", "CaBundleInvalid", "holds no PEM certificate"),
            (
                b"-----BEGIN CERTIFICATE-----\n!!!not base64!!!\n-----END CERTIFICATE-----\n",
                "CaBundleInvalid",
                "is not valid PEM",
            ),
            (
                b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
                "CaBundleInvalid",
                "cannot be used as a CA",
            ),
            (&[0xff, 0xfe, 0x00], "SecretValueInvalid", "not UTF-8"),
        ];
        for (pem, reason, says) in cases {
            let (_, secret) = secret("platform-ca", &[("ca.crt", pem)]);
            match ca_bundle_pem(&secret, "ca.crt", owner) {
                Err(Error::Invalid { reason: got, message }) => {
                    assert_eq!(got, reason, "{message}");
                    assert!(message.contains(says), "{message}");
                    assert!(
                        message.contains("`ns/platform-ca`") && message.contains("`ca.crt`"),
                        "{message}"
                    );
                }
                other => panic!("a garbage CA bundle must be refused: {other:?}"),
            }
        }
        let (_, secret) = secret("platform-ca", &[("other", b"x")]);
        assert!(matches!(
            ca_bundle_pem(&secret, "ca.crt", owner),
            Err(Error::Invalid { reason: "SecretKeyMissing", .. })
        ));
    }

    #[test]
    fn secret_namespaces_follow_the_platform_kind() {
        let namespaced = PlatformRef { kind: PlatformKind::ConnectorPlatform, name: "p".into() };
        let cluster = PlatformRef { kind: PlatformKind::ClusterConnectorPlatform, name: "c".into() };
        let field = "spec.caBundleSecretRef";
        assert_eq!(
            secret_namespace(&namespaced, Some("a"), None, field, "CA bundle").ok().as_deref(),
            Some("a")
        );
        assert_eq!(
            secret_namespace(&namespaced, Some("a"), Some("a"), field, "CA bundle").ok().as_deref(),
            Some("a")
        );
        let cross = secret_namespace(&namespaced, Some("a"), Some("b"), field, "CA bundle");
        assert!(
            matches!(&cross, Err(Error::Invalid { reason: "CrossNamespaceReference", message }) if message.contains(field)),
            "{cross:?}"
        );
        assert_eq!(
            secret_namespace(&cluster, None, Some("b"), field, "CA bundle").ok().as_deref(),
            Some("b")
        );
        for missing in [None, Some("")] {
            let err = secret_namespace(&cluster, None, missing, field, "CA bundle");
            assert!(
                matches!(&err, Err(Error::Invalid { reason: "SecretNamespaceMissing", message }) if message.contains(field)),
                "{err:?}"
            );
        }
        assert!(matches!(
            secret_namespace(&cluster, None, None, "spec.credentialsSecretRef", "credentials"),
            Err(Error::Invalid { reason: "CredentialsNamespaceMissing", .. })
        ));
    }

    #[test]
    fn plain_http_is_refused_unless_allowed() {
        let reference = PlatformRef { kind: PlatformKind::ConnectorPlatform, name: "p".into() };
        let mut settings: PlatformSettings = serde_json::from_value(serde_json::json!({
            "baseUrl": "http://127.0.0.1:1/elements/api-v2",
            "credentialsSecretRef": {"name": "c"}
        }))
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(
            check_base_url(&settings, &reference),
            Err(Error::Invalid { reason: "InsecurePlatformUrl", .. })
        ));
        settings.insecure_allow_http = true;
        assert!(check_base_url(&settings, &reference).is_ok());
        settings.base_url = "ftp://x".into();
        assert!(check_base_url(&settings, &reference).is_err());
    }

    #[test]
    fn an_approval_binding_names_secret_versions_not_values() {
        let secret = |name: &str, rv: &str, value: &str| {
            let mut s = Secret::default();
            s.metadata.name = Some(name.into());
            s.metadata.resource_version = Some(rv.into());
            s.string_data = Some([("k".to_string(), value.to_string())].into());
            s
        };
        let of = |list: &[Secret]| {
            approval_binding(&list.iter().map(|s| (s.metadata.name.clone().unwrap(), s.clone())).collect())
        };
        let base = of(&[secret("a", "10", "x"), secret("b", "20", "y")]);
        assert_eq!(base.len(), 8);
        assert_eq!(of(&[secret("b", "20", "y"), secret("a", "10", "x")]), base, "order does not matter");
        assert_eq!(of(&[secret("a", "10", "other"), secret("b", "20", "y")]), base, "values are not read");
        assert_ne!(
            of(&[secret("a", "11", "x"), secret("b", "20", "y")]),
            base,
            "a new version, a new binding"
        );
        assert_ne!(of(&[secret("a", "10", "x")]), base, "another set of Secrets, a new binding");
    }
}
