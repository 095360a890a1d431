//! The compact forms in which the watch caches keep ConnectorInstances and token Secrets.
//!
//! A typed object costs several times its JSON in memory: every map is a B-tree whose first node
//! alone is over half a KiB, and every optional field of `ObjectMeta` and of the spec is inline.
//! With 10,000 instances the two caches were most of the operator's heap. The instance cache (the
//! controller's reflector store) keeps the metadata the controller reads on every event (name,
//! namespace, UID, resourceVersion, generation, deletion time; a digest of the annotations) typed,
//! and the rest (annotations and labels among it) as its JSON text, LZ4-compressed against a
//! dictionary of what such text usually holds ([`Packed`]), which a reconcile unpacks and parses
//! back (microseconds) when it takes the object. What the mappers read of every cached instance
//! on every event of a Secret or a platform (the platform reference, the Secrets it names) is kept
//! typed beside it. The cache of owned Secrets ([`OwnedSecrets`]) is not a reflector store: only
//! the passes read it, by namespace and name, so each Secret is kept packed whole.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::{Arc, OnceLock, RwLock};

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::api::{ConnectorInstance, ConnectorInstanceSpec, ConnectorInstanceStatus, PlatformRef};

/// JSON text kept LZ4-compressed against a dictionary of what such text usually holds (field
/// names, the operator's labels, annotations, reasons and messages), the uncompressed length
/// first. At 10,000 instances the bodies were most of the two caches: a Ready instance's spec and
/// status pack to about a quarter of their text, a token Secret's body (hashes, token and data,
/// which LZ4 hardly compresses) to about half.
#[derive(Clone)]
struct Packed(Box<[u8]>);

impl Packed {
    fn new(text: &[u8], dictionary: &[u8]) -> Self {
        Packed(lz4_flex::block::compress_prepend_size_with_dict(text, dictionary).into_boxed_slice())
    }

    /// The text; an error only if the bytes are not what [`Packed::new`] made with `dictionary`.
    fn unpack(&self, dictionary: &[u8]) -> Result<Vec<u8>, serde_json::Error> {
        lz4_flex::block::decompress_size_prepended_with_dict(&self.0, dictionary)
            .map_err(|err| serde::de::Error::custom(format_args!("a packed cache entry: {err}")))
    }

    /// The bytes kept.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.0.len()
    }
}

/// Never the content (a token Secret's data): only its size.
impl std::fmt::Debug for Packed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Packed({} bytes)", self.0.len())
    }
}

/// The dictionary of instance bodies: a Ready instance's spec and status as the cache writes them,
/// after the words of other states. Built once, from the types (so that it follows their field
/// names and order).
fn instance_dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let words = "\"Reconciling\",\"Stalled\",\"ReAuthenticationPending\",\"False\",\"Unknown\",\
                     \"Updated\",\"Adopted\",\"ReAuthenticated\",\"ClusterConnectorPlatform\",\"oauth\",\
                     \"events\",\"tags\",\"adopt\",\"plannedAction\",\"authorization\",\"rolloutRestart\"";
        let sample = instance_sample();
        let body = serde_json::from_value::<InstanceBody>(sample.clone())
            .and_then(|body| {
                let body =
                    InstanceBodyRef { metadata: &body.metadata, spec: &body.spec, status: &body.status };
                serde_json::to_vec(&body)
            })
            .unwrap_or_else(|_| sample.to_string().into_bytes());
        [words.as_bytes(), &body].concat()
    })
}

/// A Ready instance's spec and status, for [`instance_dictionary`].
fn instance_sample() -> serde_json::Value {
    serde_json::json!({
        "metadata": {
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "finalizers": [crate::api::FINALIZER],
            "labels": { "app.kubernetes.io/instance": "example" },
        },
        "spec": {
            "platformRef": { "kind": "ConnectorPlatform", "name": "platform" },
            "connector": "connector", "displayName": "", "enabled": true,
            "configuration": { "": "" },
            "configurationFrom": [{ "key": "", "secretKeyRef": { "name": "", "key": "" } }],
            "deletionPolicy": "Delete",
            "tokenSecret": { "name": "", "template": {
                "metadata": { "labels": { "app.kubernetes.io/name": "" }, "annotations": { "": "" } },
                "type": "Opaque",
                "data": { "config.json": "{\"token\": {{ token | tojson }}, \"instanceId\": {{ instanceId }}, \"baseUrl\": {{ baseUrl | tojson }}}" },
            } },
        },
        "status": {
            "observedGeneration": 1, "instanceId": 100000, "tokenSecretName": "example-token",
            "tokenSha256": "000000000000", "lastAuthenticatedTime": "2026-01-01T00:00:00Z",
            "remote": { "valid": true, "disabled": false },
            "platform": { "kind": "ConnectorPlatform", "name": "platform", "baseUrl": "https://api.openconnectors.ext.hanatrial.ondemand.com/elements/api-v2" },
            "lastAction": { "type": "Created", "time": "2026-01-01T00:00:00Z" },
            "appliedMetadataHash": "000000000000000000000000",
            "tokenTestedTime": "2026-01-01T00:00:00Z",
            "conditions": [
                { "lastTransitionTime": "2026-01-01T00:00:00Z",
                  "message": "GET /instances with the instance token answered with remote instance 100000",
                  "observedGeneration": 1, "reason": "TokenAccepted", "status": "True", "type": "TokenVerified" },
                { "lastTransitionTime": "2026-01-01T00:00:00Z",
                  "message": "remote instance 100000 is authenticated; its token is in Secret `example-token`",
                  "observedGeneration": 1, "reason": "Ready", "status": "True", "type": "Ready" },
            ],
        },
    })
}

/// The dictionary of owned Secrets: a token Secret as the cache writes it.
fn secret_dictionary() -> &'static [u8] {
    static DICTIONARY: OnceLock<Vec<u8>> = OnceLock::new();
    DICTIONARY.get_or_init(|| {
        let sample = secret_sample();
        serde_json::from_value::<Secret>(sample.clone())
            .and_then(|secret| serde_json::to_vec(&secret))
            .unwrap_or_else(|_| sample.to_string().into_bytes())
    })
}

/// A token Secret, for [`secret_dictionary`].
fn secret_sample() -> serde_json::Value {
    use crate::api::*;
    let hash = "0".repeat(64);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Secret",
        "metadata": {
            "creationTimestamp": "2026-01-01T00:00:00Z",
            "labels": { LABEL_MANAGED_BY: "connector-operator", LABEL_INSTANCE: "example" },
            "annotations": {
                ANNOTATION_APPLIED_AUTH_HASH: hash, ANNOTATION_APPLIED_INPUTS: "{\"\":\"0000000000000000\"}",
                ANNOTATION_CONTENT_SHA256: hash, ANNOTATION_GRANT_SHA256: hash,
                ANNOTATION_TEMPLATE_KEYS: "{\"labels\":[\"\"],\"annotations\":[\"\"]}",
                ANNOTATION_TEMPLATE_SHA256: "0000000000000000", ANNOTATION_TOKEN_SHA256: hash,
            },
            "ownerReferences": [{
                "apiVersion": ConnectorInstance::api_version(&()), "kind": "ConnectorInstance",
                "name": "example", "uid": "00000000-0000-0000-0000-000000000000",
                "controller": true, "blockOwnerDeletion": true,
            }],
            "resourceVersion": "1000000", "uid": "00000000-0000-0000-0000-000000000000",
        },
        "data": { "baseUrl": "aHR0cHM6Ly9hcGkub3BlbmNvbm5lY3RvcnM=", "config.json": "eyJ0b2tlbiI6ICI=",
                  "connector": "", "instanceId": "", "token": "" },
        "type": "Opaque",
    })
}

/// The annotation `kubectl apply` (client-side) keeps a whole copy of the manifest in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// A ConnectorInstance as the controller's cache keeps it: typed, the metadata the watch and the
/// controller read on every event (name, namespace, UID, resourceVersion, generation, deletion
/// time) and a digest of its annotations (what the watch compares); packed, the rest of the
/// metadata (annotations, labels, finalizers, creation time, owner references), spec and status;
/// and what the mappers look up. Without what no reconcile reads (managedFields; the copy of the
/// manifest `kubectl apply` keeps in an annotation). An annotation map kept typed was a B-tree
/// node of half a KiB per instance (GitOps tools annotate every object they apply).
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "ConnectorInstance")]
pub struct CachedInstance {
    metadata: ObjectMeta,
    /// `{"metadata": …, "spec": …, "status": …}`, packed with [`instance_dictionary`].
    body: Packed,
    /// `spec.platformRef`.
    platform: PlatformRef,
    /// The name of its token Secret.
    token_secret: Box<str>,
    /// The Secrets its spec names (configuration, OAuth).
    referenced: Box<[Box<str>]>,
    /// A digest of its annotations (but the copy of the manifest `kubectl apply` keeps): which
    /// annotation changes start a pass ([`CachedInstance::changes`]).
    annotations: u64,
}

#[derive(Serialize)]
struct InstanceBodyRef<'a> {
    /// The metadata not kept typed.
    #[serde(skip_serializing_if = "is_empty")]
    metadata: &'a ObjectMeta,
    spec: &'a ConnectorInstanceSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<ConnectorInstanceStatus>,
}

fn is_empty(metadata: &&ObjectMeta) -> bool {
    **metadata == ObjectMeta::default()
}

#[derive(Deserialize)]
struct InstanceBody {
    #[serde(default)]
    metadata: ObjectMeta,
    spec: ConnectorInstanceSpec,
    #[serde(default)]
    status: Option<ConnectorInstanceStatus>,
}

#[derive(Deserialize)]
struct StatusOnly {
    #[serde(default)]
    status: Option<ConnectorInstanceStatus>,
}

impl From<ConnectorInstance> for CachedInstance {
    fn from(ci: ConnectorInstance) -> Self {
        CachedInstance::new(&ci)
    }
}

impl CachedInstance {
    /// The compact form of `ci`.
    pub fn new(ci: &ConnectorInstance) -> Self {
        let mut rest = ci.metadata.clone();
        slim_metadata(&mut rest);
        let mut metadata = ObjectMeta::default();
        move_typed(&mut rest, &mut metadata);
        let annotations = digest(&rest.annotations);
        let body = InstanceBodyRef { metadata: &rest, spec: &ci.spec, status: &ci.status };
        CachedInstance {
            metadata,
            body: Packed::new(&serde_json::to_vec(&body).unwrap_or_default(), instance_dictionary()),
            platform: ci.spec.platform_ref.clone(),
            token_secret: super::token_secret::token_secret_name(ci).into_boxed_str(),
            referenced: ci.spec.referenced_secrets().map(Box::from).collect(),
            annotations,
        }
    }

    /// A digest of what a pass is started for when it changes: the generation (spec, deletion)
    /// and the annotations (pause, reconcile request, abandon, approval); not the status.
    pub fn changes(&self) -> u64 {
        digest(&(self.metadata.generation, self.annotations))
    }

    /// The ConnectorInstance (parsed from the kept JSON). An error only if the text kept is not
    /// what [`CachedInstance::new`] wrote.
    pub fn instance(&self) -> Result<ConnectorInstance, serde_json::Error> {
        let body: InstanceBody = serde_json::from_slice(&self.body.unpack(instance_dictionary())?)?;
        let mut metadata = body.metadata;
        move_typed(&mut self.metadata.clone(), &mut metadata);
        Ok(ConnectorInstance { metadata, spec: body.spec, status: body.status })
    }

    /// Its status, if it has one.
    pub fn status(&self) -> Option<ConnectorInstanceStatus> {
        let text = self.body.unpack(instance_dictionary()).ok()?;
        serde_json::from_slice::<StatusOnly>(&text).ok().and_then(|body| body.status)
    }

    /// `spec.platformRef`.
    pub fn platform(&self) -> &PlatformRef {
        &self.platform
    }

    /// The name of its token Secret.
    pub fn token_secret_name(&self) -> &str {
        &self.token_secret
    }

    /// The Secrets its spec names.
    pub fn referenced_secrets(&self) -> impl Iterator<Item = &str> {
        self.referenced.iter().map(|name| &**name)
    }
}

/// Moves the metadata a cached instance keeps typed (name, namespace, UID, resourceVersion,
/// generation, deletion time) from `from` to `into`; the rest is packed.
fn move_typed(from: &mut ObjectMeta, into: &mut ObjectMeta) {
    into.name = from.name.take();
    into.namespace = from.namespace.take();
    into.uid = from.uid.take();
    into.resource_version = from.resource_version.take();
    into.generation = from.generation.take();
    into.deletion_timestamp = from.deletion_timestamp.take();
}

/// A digest of `value`, the same for equal values within one process.
fn digest(value: &impl std::hash::Hash) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(value)
}

/// Drops from an instance's metadata what no reconcile reads and what may be most of its bytes.
fn slim_metadata(metadata: &mut ObjectMeta) {
    metadata.managed_fields = None;
    if let Some(annotations) = metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED);
        if annotations.is_empty() {
            metadata.annotations = None;
        }
    }
}

/// A cached instance is a ConnectorInstance to kube: its requests, references and owner
/// references are those of the kind.
impl Resource for CachedInstance {
    type DynamicType = ();
    type Scope = NamespaceResourceScope;

    fn kind(dt: &()) -> Cow<'_, str> {
        ConnectorInstance::kind(dt)
    }

    fn group(dt: &()) -> Cow<'_, str> {
        ConnectorInstance::group(dt)
    }

    fn version(dt: &()) -> Cow<'_, str> {
        ConnectorInstance::version(dt)
    }

    fn plural(dt: &()) -> Cow<'_, str> {
        ConnectorInstance::plural(dt)
    }

    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }

    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

/// The watch cache of the Secrets the operator owns (token and OAuth grant Secrets), by namespace
/// and name: each Secret whole but for its managedFields, packed (name and namespace are its key).
/// Kube's reflector store kept, beside each body, a typed `ObjectMeta` and a key of four strings:
/// about 1 KiB per Secret, now left out. Cheap to clone.
#[derive(Clone, Debug)]
pub struct OwnedSecrets(Arc<OwnedState>);

#[derive(Debug)]
struct OwnedState {
    listing: RwLock<Listing>,
    /// Whether a first list is complete.
    listed: tokio::sync::watch::Sender<bool>,
}

/// Namespace → name → packed Secret.
type SecretMap = HashMap<Box<str>, HashMap<Box<str>, Packed>>;

#[derive(Debug, Default)]
struct Listing {
    secrets: SecretMap,
    /// What a (re)list gathers, swapped in at its end.
    relisting: Option<SecretMap>,
}

impl Default for OwnedSecrets {
    fn default() -> Self {
        OwnedSecrets(Arc::new(OwnedState {
            listing: RwLock::default(),
            listed: tokio::sync::watch::Sender::new(false),
        }))
    }
}

impl OwnedSecrets {
    /// Takes in one event of the watch of owned Secrets (as kube's reflector store does: a relist
    /// replaces the whole content at its end).
    pub fn apply(&self, event: &watcher::Event<Secret>) {
        let Ok(mut listing) = self.0.listing.write() else { return };
        let listing = &mut *listing;
        match event {
            watcher::Event::Init => listing.relisting = Some(SecretMap::new()),
            watcher::Event::InitApply(secret) => {
                if let Some(relisting) = listing.relisting.as_mut() {
                    insert(relisting, secret);
                }
            }
            watcher::Event::InitDone => {
                if let Some(relisted) = listing.relisting.take() {
                    listing.secrets = relisted;
                }
                self.0.listed.send_replace(true);
            }
            watcher::Event::Apply(secret) => insert(&mut listing.secrets, secret),
            watcher::Event::Delete(secret) => {
                let (namespace, name) = key(secret);
                if let Some(names) = listing.secrets.get_mut(namespace) {
                    names.remove(name);
                    if names.is_empty() {
                        listing.secrets.remove(namespace);
                    }
                }
            }
        }
    }

    /// The Secret `namespace`/`name`, if the cache has it; an error only if what is kept cannot be
    /// read back (not what [`OwnedSecrets::apply`] wrote).
    pub fn get(&self, namespace: &str, name: &str) -> Option<Result<Secret, serde_json::Error>> {
        let listing = self.0.listing.read().ok()?;
        let packed = listing.secrets.get(namespace)?.get(name)?;
        Some(packed.unpack(secret_dictionary()).and_then(|text| {
            let mut secret: Secret = serde_json::from_slice(&text)?;
            secret.metadata.name = Some(name.to_string());
            secret.metadata.namespace = Some(namespace.to_string());
            Ok(secret)
        }))
    }

    /// Whether a first list is complete.
    pub fn is_listed(&self) -> bool {
        *self.0.listed.borrow()
    }

    /// Returns once a first list is complete.
    pub async fn listed(&self) {
        let mut listed = self.0.listed.subscribe();
        // The sender lives as long as `self`: the wait ends only when listed.
        let _ = listed.wait_for(|listed| *listed).await;
    }

    /// How many Secrets are kept.
    pub fn len(&self) -> usize {
        self.0.listing.read().map(|l| l.secrets.values().map(HashMap::len).sum()).unwrap_or(0)
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

fn key(secret: &Secret) -> (&str, &str) {
    (
        secret.metadata.namespace.as_deref().unwrap_or_default(),
        secret.metadata.name.as_deref().unwrap_or_default(),
    )
}

/// Packs `secret` into `map` under its namespace and name.
fn insert(map: &mut SecretMap, secret: &Secret) {
    let (namespace, name) = key(secret);
    let mut kept = secret.clone();
    kept.metadata.managed_fields = None;
    kept.metadata.name = None;
    kept.metadata.namespace = None;
    let packed = Packed::new(&serde_json::to_vec(&kept).unwrap_or_default(), secret_dictionary());
    match map.get_mut(namespace) {
        Some(names) => {
            names.insert(name.into(), packed);
        }
        None => {
            map.insert(namespace.into(), HashMap::from([(Box::from(name), packed)]));
        }
    }
}

/// A watch event with its object in another form.
pub fn map_event<A, B>(event: &watcher::Event<A>, f: impl Fn(&A) -> B) -> watcher::Event<B> {
    match event {
        watcher::Event::Apply(object) => watcher::Event::Apply(f(object)),
        watcher::Event::Delete(object) => watcher::Event::Delete(f(object)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(object) => watcher::Event::InitApply(f(object)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::LABEL_MANAGED_BY;
    use futures::FutureExt;
    use kube::ResourceExt;
    use serde_json::json;

    fn instance(extra: serde_json::Value) -> ConnectorInstance {
        let mut manifest = json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "a", "namespace": "n", "uid": "u-1", "resourceVersion": "7", "generation": 2,
                          "creationTimestamp": "2026-01-01T00:00:00Z", "labels": { "app.kubernetes.io/instance": "a" },
                          "finalizers": ["openconnectors.io/finalizer"],
                          "managedFields": [{ "manager": "kubectl", "operation": "Apply" }],
                          "annotations": { LAST_APPLIED: "{\"spec\":{}}", "openconnectors.io/paused": "true" } },
            "spec": { "platformRef": { "name": "p" }, "connector": "echo",
                      "configuration": { "b": "2", "a": "1" },
                      "configurationFrom": [{ "key": "k", "secretKeyRef": { "name": "from", "key": "x" } }],
                      "tokenSecret": { "template": { "metadata": { "labels": { "team": "t" } },
                                                     "data": { "f": "{{ token }}" } } } },
            "status": { "observedGeneration": 2, "instanceId": 42,
                        "conditions": [{ "type": "Ready", "status": "True", "reason": "Created", "message": "m",
                                         "lastTransitionTime": "2026-01-01T00:00:00Z" }] },
        });
        merge(&mut manifest, extra);
        serde_json::from_value(manifest).unwrap()
    }

    /// JSON merge patch: `null` removes.
    fn merge(target: &mut serde_json::Value, patch: serde_json::Value) {
        let serde_json::Value::Object(patch) = patch else { return *target = patch };
        for (key, value) in patch {
            match (target.get_mut(&key), value) {
                (Some(_), serde_json::Value::Null) => {
                    target.as_object_mut().map(|o| o.remove(&key));
                }
                (Some(existing), value @ serde_json::Value::Object(_)) => merge(existing, value),
                (_, value) => target[key.as_str()] = value,
            }
        }
    }

    #[test]
    fn an_instance_comes_back_whole_but_for_what_no_reconcile_reads() {
        for extra in [json!({}), json!({ "status": null }), json!({ "metadata": { "annotations": null } })] {
            let ci = instance(extra);
            let cached = CachedInstance::new(&ci);
            let back = cached.instance().unwrap();
            assert_eq!(back.spec, ci.spec);
            assert_eq!(back.status, ci.status);
            assert_eq!(cached.status(), ci.status);
            let mut expected = ci.metadata.clone();
            slim_metadata(&mut expected);
            assert_eq!(back.metadata, expected);
            assert!(back.metadata.managed_fields.is_none());
            assert!(!back.annotations().contains_key(LAST_APPLIED));
        }
        let ci = instance(json!({}));
        assert_eq!(ci.annotations().keys().count(), 2);
        let cached = CachedInstance::new(&ci);
        assert!(cached.meta().annotations.is_none(), "the annotations are kept packed");
        assert_eq!(
            cached.instance().unwrap().annotations().keys().collect::<Vec<_>>(),
            ["openconnectors.io/paused"]
        );
    }

    #[test]
    fn a_pass_is_started_for_a_new_generation_or_new_annotations_only() {
        let base = CachedInstance::new(&instance(json!({}))).changes();
        let cases = [
            ("the same", json!({}), false),
            ("a status change", json!({ "status": { "instanceId": 43 } }), false),
            ("a new resourceVersion", json!({ "metadata": { "resourceVersion": "8" } }), false),
            ("a label", json!({ "metadata": { "labels": { "x": "y" } } }), false),
            (
                "kubectl's copy of the manifest",
                json!({ "metadata": { "annotations": { LAST_APPLIED: "{}" } } }),
                false,
            ),
            ("a new generation", json!({ "metadata": { "generation": 3 } }), true),
            (
                "an annotation added",
                json!({ "metadata": { "annotations": { "openconnectors.io/abandon": "true" } } }),
                true,
            ),
            (
                "an annotation changed",
                json!({ "metadata": { "annotations": { "openconnectors.io/paused": "false" } } }),
                true,
            ),
            ("the annotations removed", json!({ "metadata": { "annotations": null } }), true),
        ];
        for (case, extra, changed) in cases {
            assert_eq!(CachedInstance::new(&instance(extra)).changes() != base, changed, "{case}");
        }
    }

    #[test]
    fn the_dictionaries_are_made_from_the_types() {
        // Every field of the samples is one the types know, in their order: the dictionaries hold
        // the text the caches write.
        let body: InstanceBody = serde_json::from_value(instance_sample()).unwrap();
        let written = serde_json::to_vec(&InstanceBodyRef {
            metadata: &body.metadata,
            spec: &body.spec,
            status: &body.status,
        })
        .unwrap();
        assert_eq!(serde_json::from_slice::<serde_json::Value>(&written).unwrap(), instance_sample());
        assert!(instance_dictionary().ends_with(&written));
        let secret: Secret = serde_json::from_value(secret_sample()).unwrap();
        assert_eq!(serde_json::to_value(&secret).unwrap(), secret_sample());
        assert_eq!(secret_dictionary(), serde_json::to_vec(&secret).unwrap());
    }

    /// A Ready instance as the operator leaves it, and its token Secret (values unlike the
    /// dictionaries' samples).
    fn ready_pair() -> (ConnectorInstance, Secret) {
        let ci = instance(json!({ "metadata": { "name": "orders-eu" },
            "spec": { "platformRef": { "name": "sap" }, "connector": "salesforce", "configuration": null,
                      "configurationFrom": [{ "key": "sfdc.api.version", "secretKeyRef": { "name": "sfdc", "key": "version" } }],
                      "tokenSecret": null },
            "status": {
            "observedGeneration": 3, "instanceId": 4711042, "tokenSecretName": "orders-eu-token",
            "tokenSha256": "9f86d081884c", "lastAuthenticatedTime": "2026-12-06T05:01:29Z",
            "remote": { "valid": true, "disabled": false },
            "platform": { "kind": "ConnectorPlatform", "name": "sap", "baseUrl": "https://oc.example.com/elements/api-v2" },
            "lastAction": { "type": "Created", "time": "2026-12-06T05:01:29Z" },
            "appliedMetadataHash": "1c73c0fe2ec1773a4e5bb4a9", "tokenTestedTime": "2026-12-06T05:01:31Z",
            "conditions": [
                { "lastTransitionTime": "2026-12-06T05:01:31Z", "observedGeneration": 3, "reason": "TokenAccepted",
                  "message": "GET /instances with the instance token answered with remote instance 4711042",
                  "status": "True", "type": "TokenVerified" },
                { "lastTransitionTime": "2026-12-06T05:01:31Z", "observedGeneration": 3, "reason": "Ready",
                  "message": "remote instance 4711042 is authenticated; its token is in Secret `orders-eu-token`",
                  "status": "True", "type": "Ready" },
            ] } }));
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": { "name": "orders-eu-token", "namespace": "n", "uid": "s-1", "resourceVersion": "9",
                          "labels": { LABEL_MANAGED_BY: "connector-operator", "openconnectors.io/connector-instance": "orders-eu" },
                          "annotations": {
                              "openconnectors.io/applied-auth-hash": "48c317ebd0cdf296662c760ec1e91c63b16e8de3e09b1939306696a56e62f5ce",
                              "openconnectors.io/content-sha256": "7a4cbe28120fb76ce59d1a8ef26f01d1f304bf6b598a3b4341bdcc726e3367dd",
                              "openconnectors.io/token-sha256": "c1edd6b2b0cf4ab935ef5a4fd238a1d2b6adc8e13c6e57d4117f7b9f1f8dda6c" },
                          "ownerReferences": [{ "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                                                "name": "orders-eu", "uid": "u-1", "controller": true }] },
            "data": { "token": "b3dDb0pGVGUvOHI1cXNWaVp1dHBwTzR3M1BFUkgzaXhkYWdqaCs4Rmw3ST0=",
                      "instanceId": "NDcxMTA0Mg==", "connector": "ZWNobw==",
                      "baseUrl": "aHR0cHM6Ly9vYy5leGFtcGxlLmNvbS9lbGVtZW50cy9hcGktdjI=" },
        }))
        .unwrap();
        (ci, secret)
    }

    #[test]
    fn bodies_are_kept_packed_and_come_back_whole() {
        let (ci, secret) = ready_pair();
        let cached = CachedInstance::new(&ci);
        let mut whole = ci.clone();
        slim_metadata(&mut whole.metadata);
        let text = serde_json::to_vec(&whole).unwrap();
        assert!(
            cached.body.len() * 3 < text.len(),
            "instance: {} bytes packed of {}",
            cached.body.len(),
            text.len()
        );
        assert_eq!(cached.instance().unwrap().status, ci.status);
        assert_eq!(cached.status(), ci.status);

        let store = OwnedSecrets::default();
        store.apply(&watcher::Event::Apply(secret.clone()));
        let packed = store.0.listing.read().unwrap().secrets["n"]["orders-eu-token"].len();
        let text = serde_json::to_vec(&secret).unwrap();
        assert!(packed * 2 < text.len(), "Secret: {packed} bytes packed of {}", text.len());
        assert_eq!(store.get("n", "orders-eu-token").unwrap().unwrap(), secret);
        // Debug output (a log line at debug level) shows sizes, never the token.
        let debug = format!("{store:?}");
        assert!(!debug.contains("b3dDb0pGVGUvOHI1") && !debug.contains("owCoJFTe"), "{debug}");
    }

    #[test]
    fn a_damaged_entry_is_an_error_not_a_panic() {
        let packed = Packed::new(b"{\"spec\":{}}", instance_dictionary());
        for damaged in [Packed(packed.0[..packed.0.len() - 2].into()), Packed(Box::new([1, 0, 0, 0, 0xff]))] {
            assert!(damaged.unpack(instance_dictionary()).is_err());
        }
        assert_eq!(packed.unpack(instance_dictionary()).unwrap(), b"{\"spec\":{}}");
    }

    #[test]
    fn what_the_mappers_read_is_at_hand() {
        let cached = CachedInstance::new(&instance(json!({})));
        assert_eq!(cached.platform().name, "p");
        assert_eq!(cached.token_secret_name(), "a-token");
        assert_eq!(cached.referenced_secrets().collect::<Vec<_>>(), ["from"]);
        let named = CachedInstance::new(&instance(json!({ "spec": { "tokenSecret": { "name": "own" } } })));
        assert_eq!(named.token_secret_name(), "own");
    }

    #[test]
    fn the_cache_keeps_the_kind_of_what_it_caches() {
        assert_eq!(CachedInstance::kind(&()), "ConnectorInstance");
        assert_eq!(CachedInstance::api_version(&()), ConnectorInstance::api_version(&()));
        assert_eq!(CachedInstance::plural(&()), "connectorinstances");
        let from_json: CachedInstance =
            serde_json::from_value(serde_json::to_value(instance(json!({}))).unwrap()).unwrap();
        assert_eq!(from_json.name_any(), "a");
    }

    fn token_secret(namespace: &str, name: &str, rv: &str) -> Secret {
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": { "name": name, "namespace": namespace, "uid": "s-1", "resourceVersion": rv,
                          "labels": { LABEL_MANAGED_BY: "connector-operator" },
                          "annotations": { "openconnectors.io/token-sha256": "abc" },
                          "managedFields": [{ "manager": "connector-operator", "operation": "Apply" }],
                          "ownerReferences": [{ "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                                                "name": "a", "uid": "u-1", "controller": true }] },
            "data": { "token": "dG9rZW4=", "instanceId": "NDI=" },
        }))
        .unwrap()
    }

    #[test]
    fn a_secret_comes_back_whole_without_managed_fields() {
        let secret = token_secret("n", "a-token", "9");
        let store = OwnedSecrets::default();
        store.apply(&watcher::Event::Apply(secret.clone()));
        let mut expected = secret.clone();
        expected.metadata.managed_fields = None;
        assert_eq!(store.get("n", "a-token").unwrap().unwrap(), expected);
        let bare = Secret {
            metadata: ObjectMeta {
                name: Some("b".into()),
                namespace: Some("n".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        store.apply(&watcher::Event::Apply(bare.clone()));
        assert_eq!(store.get("n", "b").unwrap().unwrap(), bare);
        assert_eq!(store.get("n", "c").map(|r| r.is_ok()), None);
        assert_eq!(store.get("other", "a-token").map(|r| r.is_ok()), None);
    }

    #[test]
    fn the_owned_secrets_follow_the_watch() {
        type Step = (
            &'static str,
            watcher::Event<Secret>,
            &'static [(&'static str, &'static str, &'static str)],
            bool,
        );
        let s = token_secret;
        let steps: Vec<Step> = vec![
            ("nothing before the first list", watcher::Event::Init, &[], false),
            (
                "a listed Secret waits for the list's end",
                watcher::Event::InitApply(s("n", "a", "1")),
                &[],
                false,
            ),
            ("the list's end", watcher::Event::InitDone, &[("n", "a", "1")], true),
            ("a new one", watcher::Event::Apply(s("m", "b", "2")), &[("n", "a", "1"), ("m", "b", "2")], true),
            ("a change", watcher::Event::Apply(s("n", "a", "3")), &[("n", "a", "3"), ("m", "b", "2")], true),
            (
                "a deletion (its namespace goes too)",
                watcher::Event::Delete(s("m", "b", "4")),
                &[("n", "a", "3")],
                true,
            ),
            ("a relist keeps the old content until its end", watcher::Event::Init, &[("n", "a", "3")], true),
            ("", watcher::Event::InitApply(s("n", "c", "5")), &[("n", "a", "3")], true),
            ("a relist replaces all at its end", watcher::Event::InitDone, &[("n", "c", "5")], true),
        ];
        let store = OwnedSecrets::default();
        for (what, event, expected, listed) in steps {
            store.apply(&event);
            assert_eq!(store.len(), expected.len(), "{what}");
            for (namespace, name, rv) in expected {
                let secret = store.get(namespace, name).unwrap().unwrap();
                assert_eq!(secret.metadata.resource_version.as_deref(), Some(*rv), "{what}");
            }
            assert_eq!(store.is_listed(), listed, "{what}");
        }
        assert!(store.listed().now_or_never().is_some(), "listed: the wait ends at once");
        assert!(OwnedSecrets::default().listed().now_or_never().is_none(), "not listed: the wait goes on");
    }
}
