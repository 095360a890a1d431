//! The token Secret: rendering, ownership check, and "does it need a write" comparison.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

use crate::api::{
    ANNOTATION_APPLIED_AUTH_HASH, ANNOTATION_APPLIED_INPUTS, ANNOTATION_GRANT_SHA256,
    ANNOTATION_TOKEN_SHA256, ConnectorInstance, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY,
};

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
        .map(|t| t.name.clone())
        .unwrap_or_else(|| format!("{}-token", ci.name_any()))
}

/// The value of [`LABEL_INSTANCE`]: the instance name, or — when it is longer than a label value
/// may be (63) — its first 50 characters, `-` and 12 hex digits of its sha256.
pub fn instance_label(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let head: String = name.chars().take(50).collect();
    format!("{}-{}", head.trim_end_matches(['-', '.']), &digest[..12])
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

/// sha256 of a token, hex.
pub fn token_sha256(token: &SecretString) -> String {
    hex::encode(Sha256::digest(token.expose_secret().as_bytes()))
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
    /// Per-key digests of the configuration the token was issued for (JSON), if known.
    pub applied_inputs: Option<&'a str>,
}

/// The desired token Secret (for server-side apply). Only the operator's own labels and
/// annotations: nothing is copied from the ConnectorInstance (no GitOps tracking labels).
pub fn render(ci: &ConnectorInstance, content: &TokenSecretContent<'_>) -> Option<Secret> {
    let owner = ci.controller_owner_ref(&())?;
    let mut secret = Secret {
        type_: Some("Opaque".into()),
        data: Some(
            [
                (KEY_TOKEN, content.token.expose_secret().to_string()),
                (KEY_INSTANCE_ID, content.instance_id.to_string()),
                (KEY_BASE_URL, content.base_url.to_string()),
                (KEY_CONNECTOR, content.connector.to_string()),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), ByteString(v.into_bytes())))
            .collect(),
        ),
        ..Default::default()
    };
    secret.metadata.name = Some(token_secret_name(ci));
    secret.metadata.namespace = ci.namespace();
    secret.metadata.labels = Some(
        [
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_INSTANCE.to_string(), instance_label(&ci.name_any())),
        ]
        .into(),
    );
    let mut annotations: BTreeMap<String, String> = [
        (ANNOTATION_TOKEN_SHA256.to_string(), token_sha256(content.token)),
        (ANNOTATION_APPLIED_AUTH_HASH.to_string(), content.auth_hash.to_string()),
    ]
    .into();
    if let Some(digest) = content.grant_sha256 {
        annotations.insert(ANNOTATION_GRANT_SHA256.to_string(), digest.to_string());
    }
    if let Some(inputs) = content.applied_inputs {
        annotations.insert(ANNOTATION_APPLIED_INPUTS.to_string(), inputs.to_string());
    }
    secret.metadata.annotations = Some(annotations);
    secret.metadata.owner_references = Some(vec![owner]);
    Some(secret)
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
        && existing.type_ == desired.type_
        && contains(existing.metadata.labels.as_ref(), desired.metadata.labels.as_ref())
        && contains(existing.metadata.annotations.as_ref(), desired.metadata.annotations.as_ref())
        && desired.owner_references().iter().all(|o| existing.owner_references().contains(o))
}

/// The token stored in a Secret, if any and if it is the one the operator wrote there: its sha256
/// must match the annotation written with it (an edited token is not trusted).
pub fn stored_token(secret: &Secret) -> Option<SecretString> {
    let bytes = secret.data.as_ref()?.get(KEY_TOKEN)?;
    let text = String::from_utf8(bytes.0.clone()).ok()?;
    let token = SecretString::from(text);
    let recorded = secret.annotations().get(ANNOTATION_TOKEN_SHA256)?;
    (!token.expose_secret().is_empty() && *recorded == token_sha256(&token)).then_some(token)
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
        let content = TokenSecretContent {
            token: &token,
            instance_id: 42,
            base_url: "https://api/elements/api-v2",
            connector: "zendesk",
            auth_hash: "h",
            grant_sha256: None,
            applied_inputs: None,
        };
        let secret = render(&ci, &content).unwrap();
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
        assert_eq!(annotations.len(), 2);
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
}
