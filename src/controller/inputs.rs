//! Dereference: everything a ConnectorInstance points at, read and checked — the platform object,
//! its credentials, and the configuration values from Secrets. Errors name the object and say what
//! to do; no secret value enters an error.

use std::collections::{BTreeMap, HashMap};

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::api::Api;
use kube::{Resource, ResourceExt};
use secrecy::SecretString;

use super::Error;
use crate::api::{
    ClusterConnectorPlatform, ConnectorInstanceSpec, ConnectorPlatform, EventVendorType, EventsSpec,
    PlatformKind, PlatformRef, PlatformSettings,
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
    /// Identifies this platform configuration and credential version (for client reuse).
    pub fingerprint: String,
}

/// Reads a Secret; `None` when it does not exist.
pub async fn get_secret(client: &kube::Client, namespace: &str, name: &str) -> Result<Option<Secret>, Error> {
    Ok(Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await?)
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
    client: &kube::Client,
    namespace: &str,
    platform_ref: &PlatformRef,
) -> Result<ResolvedPlatform, Error> {
    let name = &platform_ref.name;
    let (settings, platform_namespace, generation_id) = match platform_ref.kind {
        PlatformKind::ConnectorPlatform => {
            let platform = Api::<ConnectorPlatform>::namespaced(client.clone(), namespace)
                .get_opt(name)
                .await?
                .ok_or_else(|| {
                    Error::invalid(
                        "PlatformNotFound",
                        format!("ConnectorPlatform `{name}` not found in namespace `{namespace}`; create it or fix spec.platformRef"),
                    )
                })?;
            let id = object_version(&platform);
            (platform.spec.settings, Some(namespace.to_string()), id)
        }
        PlatformKind::ClusterConnectorPlatform => {
            let platform = Api::<ClusterConnectorPlatform>::all(client.clone())
                .get_opt(name)
                .await?
                .ok_or_else(|| {
                    Error::invalid(
                        "PlatformNotFound",
                        format!(
                            "ClusterConnectorPlatform `{name}` not found; create it or fix spec.platformRef"
                        ),
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
    resolve_credentials(client, platform_ref, platform_namespace.as_deref(), settings, &generation_id).await
}

/// Checks a platform's base URL and reads its credentials Secret.
pub async fn resolve_credentials(
    client: &kube::Client,
    platform_ref: &PlatformRef,
    platform_namespace: Option<&str>,
    settings: PlatformSettings,
    generation_id: &str,
) -> Result<ResolvedPlatform, Error> {
    let name = &platform_ref.name;
    check_base_url(&settings, platform_ref)?;
    let creds = &settings.credentials_secret_ref;
    let creds_namespace = match (platform_namespace, &creds.namespace) {
        (Some(own), None) => own.to_string(),
        (Some(own), Some(other)) if own == other => own.to_string(),
        (Some(own), Some(other)) => {
            return Err(Error::invalid(
                "CrossNamespaceReference",
                format!(
                    "ConnectorPlatform `{name}` refers to credentials in namespace `{other}`; a ConnectorPlatform may only use Secrets of its own namespace `{own}` (use a ClusterConnectorPlatform instead)"
                ),
            ));
        }
        (None, Some(ns)) => ns.clone(),
        (None, None) => {
            return Err(Error::invalid(
                "CredentialsNamespaceMissing",
                format!(
                    "ClusterConnectorPlatform `{name}` must name the namespace of its credentials Secret (spec.credentialsSecretRef.namespace)"
                ),
            ));
        }
    };
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
    let organization_secret =
        secret_text(&secret, creds.organization_secret_key(), "the platform organization secret")?;
    let fingerprint = format!(
        "{}/{}/{}#{generation_id}#{}",
        platform_ref.kind,
        platform_namespace.unwrap_or(""),
        name,
        secret.resource_version().unwrap_or_default()
    );
    Ok(ResolvedPlatform {
        kind: platform_ref.kind,
        name: name.clone(),
        namespace: platform_namespace.map(str::to_string),
        settings,
        user_secret,
        organization_secret,
        fingerprint,
    })
}

/// `uid@generation` of an object: changes with every spec change.
pub fn object_version<K: Resource>(object: &K) -> String {
    format!("{}@{}", object.meta().uid.as_deref().unwrap_or(""), object.meta().generation.unwrap_or(0))
}

/// Refuses plain http unless the platform allows it, before any connection is made.
pub fn check_base_url(settings: &PlatformSettings, platform_ref: &PlatformRef) -> Result<(), Error> {
    let url = settings.base_url.trim();
    let name = &platform_ref.name;
    if url.starts_with("https://") {
        return Ok(());
    }
    if url.starts_with("http://") {
        if settings.insecure_allow_http {
            return Ok(());
        }
        return Err(Error::invalid(
            "InsecurePlatformUrl",
            format!(
                "{} `{name}` has a plain http base URL; use https, or set insecureAllowHttp: true (local simulators only)",
                platform_ref.kind
            ),
        ));
    }
    Err(Error::invalid(
        "InvalidPlatformUrl",
        format!("{} `{name}` base URL must start with https://", platform_ref.kind),
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
/// `events`. A key set in two places is an error (which one wins would be a guess).
pub async fn resolve_configuration(
    client: &kube::Client,
    namespace: &str,
    spec: &ConnectorInstanceSpec,
) -> Result<BTreeMap<String, SecretString>, Error> {
    let mut secrets: HashMap<String, Secret> = HashMap::new();
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
        if !secrets.contains_key(name) {
            let secret = get_secret(client, namespace, name).await?.ok_or_else(|| {
                Error::invalid(
                    "ConfigurationSecretNotFound",
                    format!("Secret `{namespace}/{name}` referenced by configurationFrom not found; create it or fix the reference"),
                )
            })?;
            secrets.insert(name.clone(), secret);
        }
    }
    merge_configuration(spec, &secrets)
}

/// Pure part of [`resolve_configuration`], given the referenced Secrets by name.
pub fn merge_configuration(
    spec: &ConnectorInstanceSpec,
    secrets: &HashMap<String, Secret>,
) -> Result<BTreeMap<String, SecretString>, Error> {
    let mut config: BTreeMap<String, SecretString> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    let mut insert = |key: String, value: SecretString, from: String| -> Result<(), Error> {
        if key.is_empty() {
            return Err(Error::invalid(
                "InvalidConfiguration",
                format!("an empty configuration key comes from {from}"),
            ));
        }
        if let Some(first) = origin.get(&key) {
            return Err(Error::invalid(
                "DuplicateConfigurationKey",
                format!("configuration key `{key}` is set twice ({first} and {from}); set it in one place"),
            ));
        }
        origin.insert(key.clone(), from);
        config.insert(key, value);
        Ok(())
    };
    for (key, value) in &spec.configuration {
        insert(key.clone(), SecretString::from(value.clone()), "spec.configuration".into())?;
    }
    for (index, source) in spec.configuration_from.iter().enumerate() {
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
                insert(key, value, from)?;
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
                    insert(format!("{prefix}{secret_key}"), value, from.clone())?;
                }
            }
            _ => {
                return Err(Error::invalid(
                    "InvalidConfigurationFrom",
                    format!("{from}: set exactly one of secretKeyRef and secretRef"),
                ));
            }
        }
    }
    if let Some(events) = &spec.events {
        for (key, value) in events_configuration(events) {
            insert(key.to_string(), SecretString::from(value), "spec.events".into())?;
        }
    }
    Ok(config)
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
        spec.events = Some(EventsSpec {
            enabled: true,
            vendor_type: Some(EventVendorType::Polling),
            callback_url: Some("https://hooks.example/oc".into()),
            poller_refresh_interval_minutes: Some(15),
        });
        let secrets: HashMap<_, _> =
            [secret("creds", &[("pw", b"s3cret")]), secret("bulk", &[("a", b"1"), ("b", b"2")])].into();
        let config = exposed(&merge_configuration(&spec, &secrets)?);
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
        let err = merge_configuration(&spec, &secrets).err().map(|e| e.to_string()).unwrap_or_default();
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
            merge_configuration(&spec, &secrets),
            Err(Error::Invalid { reason: "DuplicateConfigurationKey", .. })
        ));
        spec.configuration_from[0].key = Some("password".into());
        let secrets: HashMap<_, _> = [secret("creds", &[("pw", &[0xff, 0xfe])])].into();
        assert!(matches!(
            merge_configuration(&spec, &secrets),
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
}
