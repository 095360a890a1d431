//! `ConnectorPlatform` and `ClusterConnectorPlatform`: where and as whom to call the platform.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, LabelSelector};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::{OBJECT_NAME_PATTERN, SECRET_KEY_PATTERN};

/// Schema pattern of a namespace name (DNS-1123 label); with a length of at most 63.
pub const NAMESPACE_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// Default key of the user secret in the credentials Secret.
pub const DEFAULT_USER_SECRET_KEY: &str = "userSecret";
/// Default key of the organization secret in the credentials Secret.
pub const DEFAULT_ORGANIZATION_SECRET_KEY: &str = "organizationSecret";
/// Default key of the PEM bundle in the CA bundle Secret.
pub const DEFAULT_CA_BUNDLE_KEY: &str = "ca.crt";

/// An Open Connectors platform endpoint and the credentials to call it, usable by the
/// ConnectorInstances of its own namespace.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openconnectors.io",
    version = "v1alpha1",
    kind = "ConnectorPlatform",
    doc = "An Open Connectors platform and its credentials, for the ConnectorInstances of its namespace.",
    namespaced,
    status = "PlatformStatus",
    shortname = "connplat",
    category = "connectors",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Base-URL","type":"string","jsonPath":".spec.baseUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorPlatformSpec {
    #[serde(flatten)]
    #[allow(missing_docs)]
    pub settings: PlatformSettings,
}

/// An Open Connectors platform endpoint usable by the ConnectorInstances of the namespaces its
/// `namespaceSelector` allows (none when the selector is absent).
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openconnectors.io",
    version = "v1alpha1",
    kind = "ClusterConnectorPlatform",
    doc = "An Open Connectors platform and its credentials, for the namespaces its selector allows.",
    status = "PlatformStatus",
    shortname = "cconnplat",
    category = "connectors",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Base-URL","type":"string","jsonPath":".spec.baseUrl"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ClusterConnectorPlatformSpec {
    #[serde(flatten)]
    #[allow(missing_docs)]
    pub settings: PlatformSettings,
    /// Namespaces whose ConnectorInstances may use this platform. Absent: none may.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,
}

/// Settings shared by both platform kinds.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformSettings {
    /// Base URL of the platform API, e.g.
    /// `https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2`.
    #[schemars(length(min = 8, max = 2048), regex(pattern = r"^https?://"))]
    pub base_url: String,
    /// Allow a plain `http://` base URL (local simulators and tests only).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub insecure_allow_http: bool,
    /// The Secret holding the user secret and the organization secret.
    pub credentials_secret_ref: CredentialsSecretRef,
    /// Client-side limit of platform requests per second, shared by all instances of this
    /// platform. Default 50.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 10000))]
    pub requests_per_second: Option<u32>,
    /// Requests allowed at once above the rate. Default twice `requestsPerSecond`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 20000))]
    pub burst: Option<u32>,
    /// A Secret holding extra CA certificates (PEM) trusted for the platform's TLS certificate,
    /// on top of the system roots: for a platform behind a private CA or a TLS-inspecting proxy.
    /// Certificates are always verified; this only adds trust anchors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<CaBundleSecretRef>,
    /// Whether ConnectorInstances may take over remote instances created elsewhere
    /// (`spec.adopt`). Adoption hands the instance's token to whoever may create a
    /// ConnectorInstance here, so it is the platform owner's choice. Default `Deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adoption: Option<AdoptionPolicy>,
    /// Whether ConnectorInstances may put the full `Authorization` header value (user secret,
    /// organization secret and instance token) in their token Secret (the `authorization` value
    /// of `spec.tokenSecret.template`). That hands this platform's credentials to whoever may
    /// read those Secrets, so it is the platform owner's choice. On a ClusterConnectorPlatform it
    /// holds for the namespaces its `namespaceSelector` allows. Default `Deny`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consumer_credentials: Option<ConsumerCredentialsPolicy>,
}

/// Whether a platform's credentials may reach its instances' token Secrets.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum ConsumerCredentialsPolicy {
    /// The `authorization` value is refused.
    #[default]
    Deny,
    /// Instances may ask for the `authorization` value.
    Allow,
}

/// Whether a platform lets instances adopt remote instances.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum AdoptionPolicy {
    /// `spec.adopt` is refused.
    #[default]
    Deny,
    /// `spec.adopt` may take over a remote instance not owned by another ConnectorInstance.
    Allow,
}

/// Where the extra CA certificates of a platform are.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CaBundleSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key of the PEM bundle (one or more `CERTIFICATE` blocks). Default `ca.crt`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: Option<String>,
    /// Namespace of the Secret: required for a ClusterConnectorPlatform; a ConnectorPlatform may
    /// only use its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAMESPACE_PATTERN))]
    pub namespace: Option<String>,
}

impl CaBundleSecretRef {
    /// The key of the PEM bundle.
    pub fn key(&self) -> &str {
        self.key.as_deref().unwrap_or(DEFAULT_CA_BUNDLE_KEY)
    }
}

/// Where the platform credentials are.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct CredentialsSecretRef {
    /// Secret name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Namespace of the Secret: required for a ClusterConnectorPlatform; a ConnectorPlatform may
    /// only use its own namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 63), regex(pattern = NAMESPACE_PATTERN))]
    pub namespace: Option<String>,
    /// Key of the user secret. Default `userSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub user_secret_key: Option<String>,
    /// Key of the organization secret. Default `organizationSecret`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub organization_secret_key: Option<String>,
}

impl CredentialsSecretRef {
    /// The key of the user secret.
    pub fn user_secret_key(&self) -> &str {
        self.user_secret_key.as_deref().unwrap_or(DEFAULT_USER_SECRET_KEY)
    }

    /// The key of the organization secret.
    pub fn organization_secret_key(&self) -> &str {
        self.organization_secret_key.as_deref().unwrap_or(DEFAULT_ORGANIZATION_SECRET_KEY)
    }
}

/// Observed state of a platform object.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready` from a cheap credentials check.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
