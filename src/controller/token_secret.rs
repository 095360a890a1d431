//! The token Secret: rendering, ownership check, and "does it need a write" comparison.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use super::error::Error;
use super::template;
use crate::api::{
    ANNOTATION_APPLIED_AUTH_HASH, ANNOTATION_APPLIED_INPUTS, ANNOTATION_CONTENT_SHA256,
    ANNOTATION_GRANT_SHA256, ANNOTATION_TEMPLATE_KEYS, ANNOTATION_TEMPLATE_SHA256, ANNOTATION_TOKEN_SHA256,
    ConnectorInstance, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY, MergePolicy, TokenSecretTemplate,
};
use crate::api::{instance_label, token_sha256};

/// Secret key: the instance token.
pub const KEY_TOKEN: &str = "token";
/// Secret key: the remote instance id.
pub const KEY_INSTANCE_ID: &str = "instanceId";
/// Secret key: the platform base URL.
pub const KEY_BASE_URL: &str = "baseUrl";
/// Secret key: the connector key.
pub const KEY_CONNECTOR: &str = "connector";

/// Name of the token Secret of an instance.
pub fn token_secret_name(ci: &ConnectorInstance) -> String {
    ci.spec
        .token_secret
        .as_ref()
        .and_then(|t| t.name.clone())
        .unwrap_or_else(|| format!("{}-token", ci.name_any()))
}

/// Checks that a Secret name is a valid DNS subdomain (what the API server accepts).
pub fn check_secret_name(name: &str) -> Result<(), String> {
    let valid_chars =
        name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
    let valid_ends = name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    if name.is_empty() || name.len() > 253 || !valid_chars || !valid_ends {
        return Err(format!(
            "token Secret name `{}` is not a valid Secret name (lowercase letters, digits, `-` and `.`, at most 253 characters); set spec.tokenSecret.name",
            name.chars().take(80).collect::<String>()
        ));
    }
    Ok(())
}

/// What the token Secret holds.
#[derive(Debug)]
pub struct TokenSecretContent<'a> {
    /// The instance token.
    pub token: &'a SecretString,
    /// Remote instance id.
    pub instance_id: i64,
    /// Platform base URL.
    pub base_url: &'a str,
    /// Connector key.
    pub connector: &'a str,
    /// Hash of the authentication inputs the token was issued for.
    pub auth_hash: &'a str,
    /// Digest of the OAuth grant code last used, if any.
    pub grant_sha256: Option<&'a str>,
    /// The full `Authorization` header value, where the platform allows it and the template asks
    /// for it.
    pub authorization: Option<&'a SecretString>,
    /// Per-key digests of the configuration the token was issued for (JSON), if known.
    pub applied_inputs: Option<&'a str>,
}

/// The desired token Secret (for server-side apply): the default keys and the keys of
/// `spec.tokenSecret.template` (as its `mergePolicy` says), the operator's labels and annotations
/// and the template's. Nothing is copied from the ConnectorInstance (no GitOps tracking labels).
/// `None` for an instance without a UID (never stored); an error for a template that does not
/// render.
pub fn render(ci: &ConnectorInstance, content: &TokenSecretContent<'_>) -> Result<Option<Secret>, Error> {
    let Some(owner) = ci.controller_owner_ref(&()) else { return Ok(None) };
    let template = ci.spec.token_secret.as_ref().and_then(|t| t.template.as_ref());
    let mut data: BTreeMap<String, String> = BTreeMap::new();
    if template.and_then(|t| t.merge_policy).unwrap_or_default() == MergePolicy::Merge {
        data.extend(
            [
                (KEY_TOKEN, content.token.expose_secret().to_string()),
                (KEY_INSTANCE_ID, content.instance_id.to_string()),
                (KEY_BASE_URL, content.base_url.to_string()),
                (KEY_CONNECTOR, content.connector.to_string()),
            ]
            .map(|(k, v)| (k.to_string(), v)),
        );
    }
    let mut labels: BTreeMap<String, String> = BTreeMap::new();
    let mut annotations: BTreeMap<String, String> = BTreeMap::new();
    let type_ = match template {
        Some(template) => {
            template::check_metadata(template)?;
            let (name, namespace) = (ci.name_any(), ci.namespace().unwrap_or_default());
            let values = template::Values {
                token: content.token,
                instance_id: content.instance_id,
                base_url: content.base_url,
                connector: content.connector,
                name: &name,
                namespace: &namespace,
                authorization: content.authorization,
            };
            data.extend(template::render(template, &values)?);
            if let Some(metadata) = &template.metadata {
                labels.extend(metadata.labels.clone());
                annotations.extend(metadata.annotations.clone());
                let keys = TemplateKeys {
                    labels: metadata.labels.keys().cloned().collect(),
                    annotations: metadata.annotations.keys().cloned().collect(),
                };
                if !keys.labels.is_empty() || !keys.annotations.is_empty() {
                    annotations.insert(
                        ANNOTATION_TEMPLATE_KEYS.to_string(),
                        serde_json::to_string(&keys).unwrap_or_default(),
                    );
                }
            }
            annotations.insert(ANNOTATION_TEMPLATE_SHA256.to_string(), template_sha256(template));
            template.type_.clone().unwrap_or_else(|| "Opaque".into())
        }
        None => "Opaque".into(),
    };
    template::check_type(&type_, data.keys())?;
    let data: BTreeMap<String, ByteString> =
        data.into_iter().map(|(k, v)| (k, ByteString(v.into_bytes()))).collect();
    labels.insert(LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string());
    labels.insert(LABEL_INSTANCE.to_string(), instance_label(&ci.name_any()));
    annotations.insert(ANNOTATION_TOKEN_SHA256.to_string(), token_sha256(content.token));
    annotations.insert(ANNOTATION_CONTENT_SHA256.to_string(), content_sha256(&type_, &data));
    annotations.insert(ANNOTATION_APPLIED_AUTH_HASH.to_string(), content.auth_hash.to_string());
    if let Some(digest) = content.grant_sha256 {
        annotations.insert(ANNOTATION_GRANT_SHA256.to_string(), digest.to_string());
    }
    if let Some(inputs) = content.applied_inputs {
        annotations.insert(ANNOTATION_APPLIED_INPUTS.to_string(), inputs.to_string());
    }
    let mut secret = Secret { type_: Some(type_), data: Some(data), ..Default::default() };
    secret.metadata.name = Some(token_secret_name(ci));
    secret.metadata.namespace = ci.namespace();
    secret.metadata.labels = Some(labels);
    secret.metadata.annotations = Some(annotations);
    secret.metadata.owner_references = Some(vec![owner]);
    Ok(Some(secret))
}

/// sha256 (hex) of what a workload reads from the Secret: its type and every key and value.
pub fn content_sha256(type_: &str, data: &BTreeMap<String, ByteString>) -> String {
    let mut hasher = Sha256::new();
    for field in
        std::iter::once(type_.as_bytes()).chain(data.iter().flat_map(|(k, v)| [k.as_bytes(), &v.0[..]]))
    {
        hasher.update((field.len() as u64).to_be_bytes());
        hasher.update(field);
    }
    hex::encode(hasher.finalize())
}

/// sha256 (hex, first 16 digits) of a template as written (its metadata, type, data templates and
/// merge policy): a change, a removed label included, makes the Secret be applied again.
fn template_sha256(template: &TokenSecretTemplate) -> String {
    let text = serde_json::to_string(template).unwrap_or_default();
    hex::encode(Sha256::digest(text.as_bytes()))[..16].to_string()
}

/// The label and annotation keys a template added (recorded on the Secret, so that those the
/// template no longer has are removed, and no one else's).
#[derive(serde::Serialize, serde::Deserialize, Default)]
struct TemplateKeys {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    labels: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    annotations: Vec<String>,
}

/// When `existing` holds what `desired` no longer has (data keys, or labels and annotations an
/// earlier template added), the JSON merge patch that makes it `desired`: a Secret created by
/// POST is not the apply's to prune. `None` when nothing is to be removed (an apply does it all).
pub fn removal_patch(existing: &Secret, desired: &Secret) -> Option<serde_json::Value> {
    let empty = BTreeMap::new();
    let desired_data = desired.data.as_ref().unwrap_or(&empty);
    let removed_data: Vec<&str> = existing
        .data
        .iter()
        .flatten()
        .map(|(k, _)| k.as_str())
        .filter(|k| !desired_data.contains_key(*k))
        .collect();
    let added: TemplateKeys = existing
        .annotations()
        .get(ANNOTATION_TEMPLATE_KEYS)
        .and_then(|text| serde_json::from_str(text).ok())
        .unwrap_or_default();
    let removed_labels: Vec<&str> =
        added.labels.iter().map(String::as_str).filter(|k| !desired.labels().contains_key(*k)).collect();
    // The template's annotations, and the operator's own records of a template, that go.
    let removed_annotations: Vec<&str> = added
        .annotations
        .iter()
        .map(String::as_str)
        .chain(
            [ANNOTATION_TEMPLATE_KEYS, ANNOTATION_TEMPLATE_SHA256]
                .into_iter()
                .filter(|k| existing.annotations().contains_key(*k)),
        )
        .filter(|k| !desired.annotations().contains_key(*k))
        .collect();
    if removed_data.is_empty() && removed_labels.is_empty() && removed_annotations.is_empty() {
        return None;
    }
    fn as_json(value: impl serde::Serialize) -> serde_json::Value {
        serde_json::to_value(value).unwrap_or_default()
    }
    let with_nulls = |desired: serde_json::Value, removed: &[&str]| {
        let mut map = desired.as_object().cloned().unwrap_or_default();
        for key in removed {
            map.insert((*key).to_string(), serde_json::Value::Null);
        }
        serde_json::Value::Object(map)
    };
    let mut patch = serde_json::json!({
        "metadata": {
            "labels": with_nulls(as_json(desired.labels()), &removed_labels),
            "annotations": with_nulls(as_json(desired.annotations()), &removed_annotations),
        },
        "data": with_nulls(as_json(desired_data), &removed_data),
        "type": desired.type_,
    });
    if !desired.owner_references().iter().all(|o| existing.owner_references().contains(o)) {
        patch["metadata"]["ownerReferences"] = as_json(desired.owner_references());
    }
    Some(patch)
}

/// Whether the token Secret's template uses the `authorization` value.
pub fn wants_authorization(ci: &ConnectorInstance) -> bool {
    ci.spec.token_secret.as_ref().and_then(|t| t.template.as_ref()).is_some_and(template::uses_authorization)
}

/// The `Authorization` header value a workload sends to call the connector API:
/// `User <userSecret>, Organization <organizationSecret>, Element <token>` (API.md §1).
pub fn authorization_header(
    user: &SecretString,
    organization: &SecretString,
    token: &SecretString,
) -> SecretString {
    SecretString::from(format!(
        "User {}, Organization {}, Element {}",
        user.expose_secret(),
        organization.expose_secret(),
        token.expose_secret()
    ))
}

/// Empties a Secret that carries the operator's label but no ConnectorInstance controls: anyone
/// who may create Secrets can set the label, so of those only the name is kept in the watch cache
/// (enough to tell a conflict), never their data (up to 1 MiB each) or annotations.
pub fn strip_unless_controlled(secret: &mut Secret) {
    let controlled = secret.metadata.owner_references.iter().flatten().any(|o| {
        o.controller == Some(true)
            && o.kind == "ConnectorInstance"
            && o.api_version.starts_with(&format!("{}/", crate::api::GROUP))
    });
    if !controlled {
        secret.data = None;
        secret.string_data = None;
        secret.metadata.annotations = None;
        secret.metadata.labels = None;
    }
}

/// Whether `existing` is controlled by this ConnectorInstance.
pub fn is_owned_by(existing: &Secret, ci: &ConnectorInstance) -> bool {
    let uid = ci.uid();
    existing.owner_references().iter().any(|o| o.controller == Some(true) && Some(&o.uid) == uid.as_ref())
}

/// Whether `existing` already has everything `desired` sets (so no write is needed).
pub fn is_up_to_date(existing: &Secret, desired: &Secret) -> bool {
    let contains = |have: Option<&BTreeMap<String, String>>, want: Option<&BTreeMap<String, String>>| {
        want.iter().flat_map(|m| m.iter()).all(|(k, v)| have.and_then(|h| h.get(k)) == Some(v))
    };
    existing.data == desired.data
        && existing.type_.as_deref().unwrap_or("Opaque") == desired.type_.as_deref().unwrap_or("Opaque")
        && contains(existing.metadata.labels.as_ref(), desired.metadata.labels.as_ref())
        && contains(existing.metadata.annotations.as_ref(), desired.metadata.annotations.as_ref())
        && desired.owner_references().iter().all(|o| existing.owner_references().contains(o))
        // A template removed since: what it added goes (the apply drops the fields it owned).
        && (existing.annotations().get(ANNOTATION_TEMPLATE_SHA256).is_none()
            || desired.annotations().contains_key(ANNOTATION_TEMPLATE_SHA256))
}

/// The token stored in a Secret, if any and if it is the one the operator wrote there: its sha256
/// must match the annotation written with it (an edited token is not trusted). It is the `token`
/// key, or — with a template that replaces the default keys — any key holding exactly the token.
pub fn stored_token(secret: &Secret) -> Option<SecretString> {
    let recorded = secret.annotations().get(ANNOTATION_TOKEN_SHA256)?;
    let data = secret.data.as_ref()?;
    let matches = |bytes: &ByteString| {
        let text = String::from_utf8(bytes.0.clone()).ok()?;
        let token = SecretString::from(text);
        (!token.expose_secret().is_empty() && *recorded == token_sha256(&token)).then_some(token)
    };
    match data.get(KEY_TOKEN) {
        Some(bytes) => matches(bytes),
        None => data.values().find_map(matches),
    }
}

/// The content digest recorded on a token Secret, if any.
pub fn stored_content_digest(secret: &Secret) -> Option<String> {
    secret.annotations().get(ANNOTATION_CONTENT_SHA256).cloned()
}

/// The connector key recorded in a token Secret, if any.
pub fn stored_connector(secret: &Secret) -> Option<String> {
    let bytes = secret.data.as_ref()?.get(KEY_CONNECTOR)?;
    String::from_utf8(bytes.0.clone()).ok()
}

/// The digest of the grant code recorded on a token Secret, if any.
pub fn stored_grant_digest(secret: &Secret) -> Option<String> {
    secret.annotations().get(ANNOTATION_GRANT_SHA256).cloned()
}

/// The per-key input digests recorded on a token Secret (JSON), if any.
pub fn stored_applied_inputs(secret: &Secret) -> Option<String> {
    secret.annotations().get(ANNOTATION_APPLIED_INPUTS).cloned()
}

/// The auth hash recorded on a Secret, if any.
pub fn stored_auth_hash(secret: &Secret) -> Option<String> {
    secret.annotations().get(ANNOTATION_APPLIED_AUTH_HASH).cloned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::ConnectorInstanceSpec;

    fn instance() -> ConnectorInstance {
        let spec: ConnectorInstanceSpec = serde_json::from_value(serde_json::json!({
            "platformRef": {"name": "p"}, "connector": "zendesk"
        }))
        .unwrap();
        let mut ci = ConnectorInstance::new("demo", spec);
        ci.metadata.namespace = Some("ns".into());
        ci.metadata.uid = Some("uid-1".into());
        ci.metadata.labels = Some([("argocd.argoproj.io/instance".to_string(), "app".to_string())].into());
        ci.metadata.annotations =
            Some([("argocd.argoproj.io/tracking-id".to_string(), "x".to_string())].into());
        ci
    }

    /// What instance 42 of zendesk holds, with `token` (and `authorization`).
    fn content<'a>(
        token: &'a SecretString,
        authorization: Option<&'a SecretString>,
    ) -> TokenSecretContent<'a> {
        TokenSecretContent {
            token,
            instance_id: 42,
            base_url: "https://api/elements/api-v2",
            connector: "zendesk",
            auth_hash: "h",
            grant_sha256: None,
            authorization,
            applied_inputs: None,
        }
    }

    #[test]
    fn long_names_get_a_valid_label_and_a_name_check() {
        let long = "a".repeat(200);
        let label = instance_label(&long);
        assert!(label.len() <= 63, "{label}");
        assert_ne!(instance_label(&format!("{long}x")), label, "distinct names stay distinct");
        assert_eq!(instance_label("short"), "short");
        assert!(check_secret_name(&format!("{}-token", "a".repeat(248))).is_err());
        assert!(check_secret_name(&format!("{}-token", "a".repeat(247))).is_ok());
        assert!(check_secret_name("desk-token").is_ok());
        assert!(check_secret_name("Desk").is_err());
    }

    #[test]
    fn renders_the_documented_format_without_copying_tracking_metadata() {
        let ci = instance();
        let token = SecretString::from("tok");
        let content = content(&token, None);
        let secret = render(&ci, &content).unwrap().unwrap();
        assert_eq!(secret.metadata.name.as_deref(), Some("demo-token"));
        let data = secret.data.as_ref().unwrap();
        assert_eq!(data[KEY_TOKEN].0, b"tok");
        assert_eq!(data[KEY_INSTANCE_ID].0, b"42");
        assert_eq!(data[KEY_BASE_URL].0, b"https://api/elements/api-v2");
        assert_eq!(data[KEY_CONNECTOR].0, b"zendesk");
        assert_eq!(secret.type_.as_deref(), Some("Opaque"));
        let labels = secret.metadata.labels.as_ref().unwrap();
        assert_eq!(labels.len(), 2);
        assert_eq!(labels[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(labels[LABEL_INSTANCE], "demo");
        let annotations = secret.metadata.annotations.as_ref().unwrap();
        assert_eq!(annotations.len(), 3);
        assert_eq!(annotations[ANNOTATION_CONTENT_SHA256], content_sha256("Opaque", data));
        assert_eq!(annotations[ANNOTATION_TOKEN_SHA256], token_sha256(&token));
        assert!(is_owned_by(&secret, &ci));
        assert!(is_up_to_date(&secret, &secret));
        assert_eq!(stored_token(&secret).map(|t| t.expose_secret().to_string()), Some("tok".into()));
        assert_eq!(stored_auth_hash(&secret).as_deref(), Some("h"));

        let mut edited = secret.clone();
        edited.data.as_mut().unwrap().insert(KEY_TOKEN.into(), ByteString(b"other".to_vec()));
        assert!(!is_up_to_date(&edited, &secret));
        assert!(stored_token(&edited).is_none(), "an edited token is not trusted");
        let mut foreign = secret.clone();
        foreign.metadata.owner_references = None;
        assert!(!is_owned_by(&foreign, &ci));
    }

    #[test]
    fn templates_add_keys_metadata_and_type_and_the_token_is_still_found() {
        use crate::api::{TemplateMetadata, TokenSecretSpec};
        let token = SecretString::from("tok");
        let authorization = SecretString::from("User u, Organization o, Element tok");
        let content = content(&token, Some(&authorization));
        let with_template = |template: TokenSecretTemplate| {
            let mut ci = instance();
            ci.spec.token_secret =
                Some(Box::new(TokenSecretSpec { template: Some(template), ..TokenSecretSpec::default() }));
            ci
        };
        let template = TokenSecretTemplate {
            metadata: Some(TemplateMetadata {
                labels: [("team".to_string(), "a".to_string())].into(),
                annotations: [("reloader.stakater.com/match".to_string(), "true".to_string())].into(),
            }),
            type_: Some("example.com/connector".into()),
            data: [("OPENCONNECTORS_AUTHORIZATION".to_string(), "{{ authorization }}".to_string())].into(),
            merge_policy: None,
        };
        let merged = render(&with_template(template.clone()), &content).unwrap().unwrap();
        let data = merged.data.as_ref().unwrap();
        assert_eq!(
            data.keys().collect::<Vec<_>>(),
            ["OPENCONNECTORS_AUTHORIZATION", "baseUrl", "connector", "instanceId", "token"]
        );
        assert_eq!(data["OPENCONNECTORS_AUTHORIZATION"].0, b"User u, Organization o, Element tok");
        assert_eq!(merged.type_.as_deref(), Some("example.com/connector"));
        assert_eq!(merged.labels()["team"], "a");
        assert_eq!(merged.labels()[LABEL_MANAGED_BY], MANAGED_BY);
        assert_eq!(merged.annotations()["reloader.stakater.com/match"], "true");
        assert_eq!(
            merged.annotations()[ANNOTATION_CONTENT_SHA256],
            content_sha256("example.com/connector", data),
            "the digest covers the type and every key"
        );

        let replaced = render(
            &with_template(TokenSecretTemplate {
                data: [
                    ("TOKEN".to_string(), "{{ token }}".to_string()),
                    ("id".to_string(), "{{ instanceId }}".to_string()),
                ]
                .into(),
                merge_policy: Some(MergePolicy::Replace),
                ..TokenSecretTemplate::default()
            }),
            &content,
        )
        .unwrap()
        .unwrap();
        assert_eq!(replaced.data.as_ref().unwrap().keys().collect::<Vec<_>>(), ["TOKEN", "id"]);
        assert_eq!(stored_token(&replaced).map(|t| t.expose_secret().to_string()), Some("tok".into()));
        assert_ne!(
            replaced.annotations()[ANNOTATION_CONTENT_SHA256],
            merged.annotations()[ANNOTATION_CONTENT_SHA256]
        );

        // Removing the template is a change even though every default key is still in place,
        // and what it added goes; a label someone else put there stays.
        let plain = render(&instance(), &content).unwrap().unwrap();
        assert!(!is_up_to_date(&merged, &plain));
        let mut live = merged.clone();
        live.metadata.labels.as_mut().unwrap().insert("someone-else".into(), "x".into());
        let patch = removal_patch(&live, &plain).expect("keys to remove");
        assert_eq!(patch["metadata"]["labels"]["team"], serde_json::Value::Null);
        assert!(patch["metadata"]["labels"].get("someone-else").is_none(), "not ours to remove");
        assert_eq!(patch["metadata"]["annotations"]["reloader.stakater.com/match"], serde_json::Value::Null);
        assert_eq!(patch["metadata"]["annotations"][ANNOTATION_TEMPLATE_SHA256], serde_json::Value::Null);
        assert_eq!(patch["data"]["OPENCONNECTORS_AUTHORIZATION"], serde_json::Value::Null);
        assert_eq!(patch["data"][KEY_TOKEN], "dG9r", "the kept keys are written as they should be (base64)");
        assert_eq!(patch["type"], "Opaque");
        assert!(removal_patch(&plain, &plain).is_none(), "nothing to remove: a plain apply");
        assert!(is_up_to_date(&merged, &merged));
        // A broken template or reserved metadata is an error, not a Secret.
        let broken = TokenSecretTemplate {
            data: [("k".to_string(), "{{ nope }}".to_string())].into(),
            ..TokenSecretTemplate::default()
        };
        assert!(render(&with_template(broken), &content).is_err());
    }
}
