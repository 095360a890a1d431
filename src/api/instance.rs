//! `ConnectorInstance`: one remote connector instance and the Secret holding its token.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

/// Schema pattern of a Kubernetes object name (DNS-1123 subdomain); with a length of at most 253.
pub const OBJECT_NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";
/// Schema pattern of a key of a Secret's data.
pub const SECRET_KEY_PATTERN: &str = r"^[-._a-zA-Z0-9]+$";
/// Schema pattern of text without control characters (names and tags sent to the platform).
pub const NO_CONTROL_CHARACTERS_PATTERN: &str = r"^[^\x00-\x1f\x7f]*$";
/// Schema pattern of a display name: no control characters, and no `<` or `>` (the platform strips
/// markup from names, so a name with markup would read back different on every resync).
pub const DISPLAY_NAME_PATTERN: &str = r"^[^\x00-\x1f\x7f<>]*$";
/// Longest configuration value accepted (bytes), inline or from a Secret: well above any real
/// setting (certificates and keys included), far below what would make a request body absurd.
pub const MAX_CONFIGURATION_VALUE_BYTES: usize = 64 * 1024;

/// A connector instance on the Open Connectors platform, authenticated by the operator, whose
/// instance token is kept in a Secret of the same namespace.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "openconnectors.io",
    version = "v1alpha1",
    kind = "ConnectorInstance",
    doc = "A connector instance on the Open Connectors platform; its token is kept in a Secret.",
    namespaced,
    status = "ConnectorInstanceStatus",
    shortname = "conn",
    category = "connectors",
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Connector","type":"string","jsonPath":".spec.connector"}"#,
    printcolumn = r#"{"name":"Instance-ID","type":"integer","jsonPath":".status.instanceId"}"#,
    printcolumn = r#"{"name":"Secret","type":"string","jsonPath":".status.tokenSecretName"}"#,
    printcolumn = r#"{"name":"Reason","type":"string","priority":1,"jsonPath":".status.conditions[?(@.type==\"Ready\")].reason"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorInstanceSpec {
    /// The platform (where and as whom to call Open Connectors) this instance lives on.
    /// Immutable: the remote instance lives on that platform.
    #[x_kube(validation = kube::core::Rule::new("self.kind == oldSelf.kind && self.name == oldSelf.name").message("platformRef is immutable; create a new ConnectorInstance instead"))]
    pub platform_ref: PlatformRef,

    /// The connector (element) key, e.g. `sfdc`, `hubspot`, `zendesk`. Immutable: a different
    /// connector is a different instance.
    #[x_kube(validation = kube::core::Rule::new("self == oldSelf").message("connector is immutable; create a new ConnectorInstance instead"))]
    #[schemars(length(min = 1, max = 253))]
    pub connector: String,

    /// Name of the remote instance. Defaults to `<namespace>/<name>`. Surrounding whitespace is
    /// trimmed; `<` and `>` are refused (the platform strips markup from names).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255), regex(pattern = DISPLAY_NAME_PATTERN))]
    pub display_name: Option<String>,

    /// Extra tags of the remote instance. The operator adds its own ownership, reference and
    /// cluster tags; tags starting with `k8s-uid-`, `k8s-ref-` or `k8s-cluster-` are reserved for
    /// them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(validation = kube::core::Rule::new("self.all(t, !t.startsWith('k8s-uid-') && !t.startsWith('k8s-ref-') && !t.startsWith('k8s-cluster-'))").message("tags starting with k8s-uid-, k8s-ref- or k8s-cluster- are reserved for the operator's own tags"))]
    #[schemars(length(max = 50), inner(length(min = 1, max = 255), regex(pattern = NO_CONTROL_CHARACTERS_PATTERN)))]
    pub tags: Vec<String>,

    /// Whether the remote instance is enabled. Default true.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,

    /// Non-secret configuration values of the connector, e.g. `base.url`. Put secret values in
    /// `configurationFrom`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": MAX_CONFIGURATION_VALUE_BYTES}))]
    pub configuration: BTreeMap<String, String>,

    /// Configuration values taken from Secrets of this namespace.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configuration_from: Vec<ConfigurationSource>,

    /// Event delivery settings (translated into the platform's `event.*` configuration).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<Box<EventsSpec>>,

    /// What happens to the remote instance when this resource is deleted. Default `Delete`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deletion_policy: Option<DeletionPolicy>,

    /// How often the remote instance is re-read to correct drift, as a duration such as `10m`,
    /// `90s` or `1h`. Default `10m`; at least `10s`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(\.[0-9]+)?(ms|s|m|h))+$"))]
    pub resync_interval: Option<String>,

    /// The Secret that receives the instance token. Default name `<metadata.name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<Box<TokenSecretSpec>>,

    /// OAuth settings, for connectors that authenticate with OAuth 2.0 (`sfdc`, `hubspot`, ...):
    /// the client, and where the grant comes from (a refresh token, or a person authorizing in a
    /// browser through the URL the operator publishes in `status.authorization`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub oauth: Option<Box<OAuthSpec>>,

    /// Take over a remote instance that already exists (created in the platform's UI, by another
    /// tool, or through an OAuth flow done by hand) instead of creating one. Only where the
    /// platform object allows it (`spec.adoption: Allow`). `deletionPolicy` then defaults to
    /// `Orphan`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub adopt: Option<AdoptSpec>,

    /// Whether a change that needs a re-authentication (`PUT /instances/{id}`: configuration,
    /// configurationFrom values, events, OAuth inputs) runs at once (`Automatic`, the default) or
    /// waits for an approval (`Manual`: see `status.plannedAction`). Changes that need only a
    /// `PATCH` or the enabled endpoint run at once either way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reauthentication: Option<ReauthenticationPolicy>,
}

/// When a change that needs a re-authentication is applied.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum ReauthenticationPolicy {
    /// At once.
    #[default]
    Automatic,
    /// Once approved by annotation `openconnectors.io/approve: <status.plannedAction.approval>`;
    /// until then the old token stays in the Secret and keeps working.
    Manual,
}

/// OAuth 2.0 settings of an instance. They become the platform's `oauth.*` configuration keys.
/// Without `refreshTokenSecretRef` the operator runs the authorization-code flow.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("!(has(self.refreshTokenSecretRef) && has(self.codeSecretRef))").message("set at most one of refreshTokenSecretRef and codeSecretRef"))]
pub struct OAuthSpec {
    /// The client id of the app registered at the provider (`oauth.api.key`).
    #[schemars(length(min = 1, max = 1024), regex(pattern = NO_CONTROL_CHARACTERS_PATTERN))]
    pub client_id: String,
    /// The client secret of that app (`oauth.api.secret`), from a Secret of this namespace.
    pub client_secret_ref: SecretKeySelector,
    /// Scopes to ask for, as the provider spells them (`oauth.scope`), e.g. `api refresh_token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 2048), regex(pattern = NO_CONTROL_CHARACTERS_PATTERN))]
    pub scope: Option<String>,
    /// The redirect URI registered at the provider (`oauth.callback.url`). Default: the
    /// operator's callback URL (`--oauth-callback-url`, chart value `oauth.callback.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url, length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub callback_url: Option<String>,
    /// A refresh token issued by the provider: the instance is created without a browser step
    /// (`externalAuthentication: initial`). Replacing it re-authenticates the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token_secret_ref: Option<SecretKeySelector>,
    /// A grant code obtained by hand (for clusters whose callback endpoint the provider cannot
    /// reach). Each code is used once; put a new one there when a new authorization is asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code_secret_ref: Option<SecretKeySelector>,
}

/// A remote instance to take over.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AdoptSpec {
    /// Id of the remote instance. It must be an instance of `spec.connector`, and not owned by
    /// another ConnectorInstance.
    #[schemars(range(min = 1))]
    pub instance_id: i64,
}

/// Which platform object an instance uses.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformRef {
    /// `ConnectorPlatform` (same namespace, the default) or `ClusterConnectorPlatform`.
    #[serde(default)]
    pub kind: PlatformKind,
    /// Name of the platform object.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Kind of a platform object.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Hash, Default, schemars::JsonSchema)]
pub enum PlatformKind {
    /// A namespaced `ConnectorPlatform` in the instance's namespace.
    #[default]
    ConnectorPlatform,
    /// A cluster-scoped `ClusterConnectorPlatform`.
    ClusterConnectorPlatform,
}

impl std::fmt::Display for PlatformKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::ConnectorPlatform => "ConnectorPlatform",
            Self::ClusterConnectorPlatform => "ClusterConnectorPlatform",
        })
    }
}

/// Configuration values from a Secret: either one value (`key` + `secretKeyRef`) or every key of
/// a Secret (`secretRef`, optionally with a `prefix` put before each key).
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.secretKeyRef) != has(self.secretRef)").message("set exactly one of secretKeyRef and secretRef"))]
#[x_kube(validation = kube::core::Rule::new("!has(self.secretKeyRef) || has(self.key)").message("key is required with secretKeyRef"))]
pub struct ConfigurationSource {
    /// The configuration key that receives the value (with `secretKeyRef`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// One key of a Secret in this namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_key_ref: Option<SecretKeySelector>,
    /// Every key of a Secret in this namespace becomes a configuration key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret_ref: Option<SecretReference>,
    /// Put before every key taken from `secretRef`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,
}

/// A key of a Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeySelector {
    /// Secret name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
    /// Key within the Secret.
    #[schemars(length(min = 1, max = 253), regex(pattern = SECRET_KEY_PATTERN))]
    pub key: String,
}

/// A Secret in the same namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretReference {
    /// Secret name.
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: String,
}

/// Event delivery of the remote instance.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsSpec {
    /// Turns events on (`event.notification.enabled`).
    pub enabled: bool,
    /// `polling` or `webhook` (`event.vendor.type`); needed when the connector supports both.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor_type: Option<EventVendorType>,
    /// Where the platform delivers events (`event.notification.callback.url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(url, length(max = 2048), regex(pattern = r"^https?://[^\s/?#]+[^\s]*$"))]
    pub callback_url: Option<String>,
    /// Polling period in minutes (`event.poller.refresh_interval`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1440))]
    pub poller_refresh_interval_minutes: Option<u32>,
}

/// How the platform learns of events.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventVendorType {
    /// The platform polls the provider.
    Polling,
    /// The provider calls the platform.
    Webhook,
}

/// What happens to the remote instance when the resource is deleted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum DeletionPolicy {
    /// Delete the remote instance.
    #[default]
    Delete,
    /// Keep the remote instance.
    Orphan,
}

/// The Secret that receives the token: its name, its shape, and the workloads restarted when
/// its content changes.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretSpec {
    /// Secret name. Default `<metadata.name>-token`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: Option<String>,
    /// Extra labels and annotations, the Secret's type, and keys rendered from templates.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TokenSecretTemplate>,
    /// Workloads of this namespace whose pods use the Secret: when its content changes (a new
    /// token, a template change, rotated platform credentials), their pod template gets the
    /// annotation `openconnectors.io/token-sha256` with the new content's digest, which rolls
    /// them as `kubectl rollout restart` does. Needs the operator's `--rollout-restart` (chart
    /// value `rolloutRestart.enabled`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 50))]
    pub rollout_restart: Vec<RolloutTarget>,
}

/// The shape of the token Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TokenSecretTemplate {
    /// Labels and annotations added to the Secret. Keys of `openconnectors.io`, the operator's
    /// own labels and GitOps tracking keys (Argo CD, Flux) are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metadata: Option<TemplateMetadata>,
    /// The Secret's type. Default `Opaque`; also `kubernetes.io/basic-auth` (with a `username` or
    /// `password` key), `kubernetes.io/tls` (with `tls.crt` and `tls.key`), or a type of your
    /// own domain (`example.com/token`); other Kubernetes types are refused. A change replaces
    /// the Secret (the API server does not allow changing a Secret's type in place).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = r"^[-._a-zA-Z0-9/]+$"))]
    pub type_: Option<String>,
    /// Keys of the Secret, each rendered from a Jinja template (sandboxed: no file, environment
    /// or network access). Values: `token`, `instanceId`, `baseUrl`, `connector`, `name` (of the
    /// ConnectorInstance), `namespace`, and `authorization` (the full `Authorization` header
    /// value, only where the platform object allows it: `spec.consumerCredentials: Allow`).
    /// Filters beyond Jinja's own: `b64encode`, `b64decode`, `quote`, `squote`, and `tojson`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("additionalProperties" = {"type": "string", "maxLength": 16384}, "maxProperties" = 64))]
    pub data: BTreeMap<String, String>,
    /// `Merge` (default): the default keys (`token`, `instanceId`, `baseUrl`, `connector`) plus
    /// the template's, a template key replacing a default one. `Replace`: only the template's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub merge_policy: Option<MergePolicy>,
}

/// Labels and annotations of the token Secret.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TemplateMetadata {
    /// Labels added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub labels: BTreeMap<String, String>,
    /// Annotations added to the Secret.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(extend("maxProperties" = 64))]
    pub annotations: BTreeMap<String, String>,
}

/// Whether the default keys stay next to the template's.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, schemars::JsonSchema)]
pub enum MergePolicy {
    /// The default keys and the template's.
    #[default]
    Merge,
    /// Only the template's keys.
    Replace,
}

/// Workloads restarted when the token Secret's content changes.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = kube::core::Rule::new("has(self.name) != has(self.selector)").message("set exactly one of name and selector"))]
pub struct RolloutTarget {
    /// `Deployment`, `StatefulSet` or `DaemonSet`.
    pub kind: WorkloadKind,
    /// The workload's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), regex(pattern = OBJECT_NAME_PATTERN))]
    pub name: Option<String>,
    /// Every workload of this kind in the namespace whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector>,
}

/// Kinds of workloads that can be restarted.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum WorkloadKind {
    /// `apps/v1` Deployment.
    Deployment,
    /// `apps/v1` StatefulSet.
    StatefulSet,
    /// `apps/v1` DaemonSet.
    DaemonSet,
}

impl std::fmt::Display for WorkloadKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Deployment => "Deployment",
            Self::StatefulSet => "StatefulSet",
            Self::DaemonSet => "DaemonSet",
        })
    }
}

/// Observed state, written by the operator only.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConnectorInstanceStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Id of the remote instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<i64>,
    /// Name of the Secret holding the token.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret_name: Option<String>,
    /// First 12 hex digits of the token's sha256 (never the token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_sha256: Option<String>,
    /// When the instance was last authenticated (created or re-authenticated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_authenticated_time: Option<Time>,
    /// What the platform last said about the instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<RemoteStatus>,
    /// The platform the instance lives on (kept so deletion works if the platform object is gone).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<Box<PlatformStatusRef>>,
    /// The last change the operator made to the remote instance.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_action: Option<LastAction>,
    /// Hash of the last-applied name and tags (no secret inputs; `enabled` is kept in `remote`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub applied_metadata_hash: Option<String>,
    /// The OAuth authorization a person must complete in a browser, while one is awaited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub authorization: Option<Box<AuthorizationStatus>>,
    /// When the token was last tested (see the `TokenVerified` condition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_tested_time: Option<Time>,
    /// The last `openconnectors.io/test-requested-at` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_test_at: Option<String>,
    /// The last `openconnectors.io/reauthenticate-requested-at` value carried out (the remote
    /// instance was re-authenticated, or created, for it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reauthenticate_at: Option<String>,
    /// The token Secret content (its `openconnectors.io/content-sha256`) the workloads of
    /// `spec.tokenSecret.rolloutRestart` were last restarted for, or found running with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout_restart: Option<Box<RolloutStatus>>,
    /// The last `openconnectors.io/reconcile-requested-at` value handled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_handled_reconcile_at: Option<String>,
    /// A change that waits for an approval (`spec.reauthentication: Manual`), while one waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub planned_action: Option<Box<PlannedAction>>,
    /// The last `openconnectors.io/approve` value that was carried out: that value approves
    /// nothing more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_approved: Option<String>,
    /// `Ready`, and the kstatus pair `Reconciling` / `Stalled` while true.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}

/// The last rollout restart for the token Secret's content.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RolloutStatus {
    /// The content digest (first 12 hex digits) the workloads were restarted for.
    pub content_sha256: String,
    /// When; absent when nothing had to be restarted (the content was already in place).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<Time>,
    /// The workloads restarted then, as `Kind/name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub restarted: Vec<String>,
}

/// An OAuth authorization awaited from a person.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct AuthorizationStatus {
    /// Open this URL in a browser and approve the access at the provider; the provider then
    /// sends the browser to the callback URL, and the operator completes the instance.
    pub url: String,
    /// When the URL stops being accepted; a new one is published then.
    pub expires_at: Time,
    /// The redirect URI the provider sends the browser to.
    pub callback_url: String,
    /// Identifies this authorization request (bound into its OAuth `state`); not a secret.
    pub id: String,
    /// The generation the authorization was asked for: a spec change asks for a new one.
    pub generation: i64,
}

/// A change of the remote instance that waits for a person's approval.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlannedAction {
    /// What is planned.
    #[serde(rename = "type")]
    pub type_: PlannedActionType,
    /// Names of the configuration keys whose values changed (names only, never values); empty
    /// when the operator has no record of the inputs last applied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changed_inputs: Vec<String>,
    /// When the plan was made (kept while its approval value stays the same).
    pub planned_time: Time,
    /// The value that approves this plan: `kubectl annotate connectorinstance <name>
    /// openconnectors.io/approve=<approval> --overwrite`. `<generation>-<binding>`: the
    /// generation (with `.2`, `.3`, ... for later plans of the same generation), and 8 hex digits
    /// naming the versions of the referenced Secrets, so that a change after the plan was shown
    /// needs a new approval.
    pub approval: String,
}

/// Changes that wait for an approval.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum PlannedActionType {
    /// `PUT /instances/{id}` with the full configuration: a new token.
    ReAuthenticate,
}

/// Remote validity as the platform reports it.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct RemoteStatus {
    /// `false`: the platform regards the authentication as broken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub valid: Option<bool>,
    /// The instance is disabled on the platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disabled: Option<bool>,
}

/// The platform an instance was created on.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct PlatformStatusRef {
    /// Kind of the platform object.
    pub kind: PlatformKind,
    /// Name of the platform object.
    pub name: String,
    /// Base URL of the platform API.
    pub base_url: String,
}

/// A change made to the remote instance.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct LastAction {
    /// What was done.
    #[serde(rename = "type")]
    pub type_: ActionType,
    /// When.
    pub time: Time,
}

/// Changes the operator makes to a remote instance.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, schemars::JsonSchema)]
pub enum ActionType {
    /// Created by `POST /instances`.
    Created,
    /// Taken over: found by its ownership tag after a crash, or named in `spec.adopt`.
    Adopted,
    /// Name, tags or enabled flag updated (no re-authentication).
    Updated,
    /// Re-authenticated by `PUT /instances/{id}` with the full configuration.
    ReAuthenticated,
    /// Created again after it was deleted outside the operator.
    Recreated,
}

impl ConnectorInstanceSpec {
    /// Whether the remote instance should be enabled.
    pub fn enabled(&self) -> bool {
        self.enabled.unwrap_or(true)
    }

    /// The re-authentication policy in force (default `Automatic`).
    pub fn reauthentication(&self) -> ReauthenticationPolicy {
        self.reauthentication.unwrap_or_default()
    }

    /// The deletion policy in force: `spec.deletionPolicy`, else `Orphan` for an adopted
    /// instance (it was created elsewhere) and `Delete` for any other.
    pub fn deletion_policy(&self) -> DeletionPolicy {
        match (self.deletion_policy, &self.adopt) {
            (Some(policy), _) => policy,
            (None, Some(_)) => DeletionPolicy::Orphan,
            (None, None) => DeletionPolicy::Delete,
        }
    }

    /// Names of the Secrets of the instance's namespace its inputs refer to
    /// (`configurationFrom`, `oauth`).
    pub fn referenced_secrets(&self) -> impl Iterator<Item = &str> {
        let from = self.configuration_from.iter().filter_map(|source| {
            source
                .secret_key_ref
                .as_ref()
                .map(|s| s.name.as_str())
                .or(source.secret_ref.as_ref().map(|s| s.name.as_str()))
        });
        let oauth = self.oauth.iter().flat_map(|oauth| {
            std::iter::once(&oauth.client_secret_ref)
                .chain(oauth.refresh_token_secret_ref.as_ref())
                .chain(oauth.code_secret_ref.as_ref())
                .map(|s| s.name.as_str())
        });
        from.chain(oauth)
    }
}
