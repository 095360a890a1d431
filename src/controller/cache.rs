//! The compact forms in which the watch caches keep ConnectorInstances and token Secrets.
//!
//! A typed object costs several times its JSON in memory: every map is a B-tree whose first node
//! alone is over half a KiB, and every optional field of `ObjectMeta` and of the spec is inline.
//! With 10,000 instances the two caches were most of the operator's heap. The caches keep the
//! metadata the controller reads on every event (name, namespace, UID, resourceVersion,
//! generation, finalizers, deletion time; an instance's own annotations and labels) typed, and
//! the rest as its JSON text, which a reconcile parses back (microseconds) when it takes the
//! object. What the mappers read of every cached instance on every event of a Secret or a
//! platform (the platform reference, the Secrets it names) is kept typed beside it.

use std::borrow::Cow;

use k8s_openapi::NamespaceResourceScope;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::runtime::watcher;
use serde::{Deserialize, Serialize};

use crate::api::{ConnectorInstance, ConnectorInstanceSpec, ConnectorInstanceStatus, PlatformRef};

/// The annotation `kubectl apply` (client-side) keeps a whole copy of the manifest in.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Implements `Resource` for a cached form (`$cached`, with a `metadata` field) as the kind it
/// caches (`$of`): its requests, ObjectRefs and owner references are those of the kind.
macro_rules! cached_resource {
    ($cached:ty, $of:ty) => {
        impl Resource for $cached {
            type DynamicType = ();
            type Scope = NamespaceResourceScope;

            fn kind(dt: &()) -> Cow<'_, str> {
                <$of>::kind(dt)
            }

            fn group(dt: &()) -> Cow<'_, str> {
                <$of>::group(dt)
            }

            fn version(dt: &()) -> Cow<'_, str> {
                <$of>::version(dt)
            }

            fn plural(dt: &()) -> Cow<'_, str> {
                <$of>::plural(dt)
            }

            fn meta(&self) -> &ObjectMeta {
                &self.metadata
            }

            fn meta_mut(&mut self) -> &mut ObjectMeta {
                &mut self.metadata
            }
        }
    };
}

/// A ConnectorInstance as the controller's cache keeps it: typed metadata without what no
/// reconcile reads (managedFields; the copy of the manifest `kubectl apply` keeps in an
/// annotation), spec and status as JSON text, and what the mappers look up.
#[derive(Clone, Debug, Deserialize)]
#[serde(from = "ConnectorInstance")]
pub struct CachedInstance {
    metadata: ObjectMeta,
    /// `{"spec": …, "status": …}`.
    body: Box<str>,
    /// `spec.platformRef`.
    platform: PlatformRef,
    /// The name of its token Secret.
    token_secret: Box<str>,
    /// The Secrets its spec names (configuration, OAuth).
    referenced: Box<[Box<str>]>,
}

#[derive(Serialize)]
struct InstanceBodyRef<'a> {
    spec: &'a ConnectorInstanceSpec,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: &'a Option<ConnectorInstanceStatus>,
}

#[derive(Deserialize)]
struct InstanceBody {
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
        let mut metadata = ci.metadata.clone();
        slim_metadata(&mut metadata);
        let body = InstanceBodyRef { spec: &ci.spec, status: &ci.status };
        CachedInstance {
            metadata,
            body: serde_json::to_string(&body).unwrap_or_default().into_boxed_str(),
            platform: ci.spec.platform_ref.clone(),
            token_secret: super::token_secret::token_secret_name(ci).into_boxed_str(),
            referenced: ci.spec.referenced_secrets().map(Box::from).collect(),
        }
    }

    /// The ConnectorInstance (parsed from the kept JSON). An error only if the text kept is not
    /// what [`CachedInstance::new`] wrote.
    pub fn instance(&self) -> Result<ConnectorInstance, serde_json::Error> {
        let body: InstanceBody = serde_json::from_str(&self.body)?;
        Ok(ConnectorInstance { metadata: self.metadata.clone(), spec: body.spec, status: body.status })
    }

    /// Its status, if it has one.
    pub fn status(&self) -> Option<ConnectorInstanceStatus> {
        serde_json::from_str::<StatusOnly>(&self.body).ok().and_then(|body| body.status)
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

cached_resource!(CachedInstance, ConnectorInstance);

/// A token Secret (or OAuth grant Secret) as the cache of owned Secrets keeps it: typed name,
/// namespace, UID, resourceVersion and owner references; labels, annotations, data and type as
/// JSON text.
#[derive(Clone, Debug)]
pub struct CachedSecret {
    metadata: ObjectMeta,
    /// `{"metadata": {"labels", "annotations"}, "data", "type", "immutable"}`.
    body: Box<str>,
}

impl CachedSecret {
    /// The compact form of `secret` (without managedFields).
    pub fn new(secret: &Secret) -> Self {
        let meta = &secret.metadata;
        let metadata = ObjectMeta {
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            owner_references: meta.owner_references.clone(),
            deletion_timestamp: meta.deletion_timestamp.clone(),
            ..ObjectMeta::default()
        };
        let body = Secret {
            metadata: ObjectMeta {
                labels: meta.labels.clone(),
                annotations: meta.annotations.clone(),
                ..ObjectMeta::default()
            },
            data: secret.data.clone(),
            type_: secret.type_.clone(),
            immutable: secret.immutable,
            string_data: None,
        };
        CachedSecret { metadata, body: serde_json::to_string(&body).unwrap_or_default().into_boxed_str() }
    }

    /// The Secret (parsed from the kept JSON). An error only if the text kept is not what
    /// [`CachedSecret::new`] wrote.
    pub fn secret(&self) -> Result<Secret, serde_json::Error> {
        let mut secret: Secret = serde_json::from_str(&self.body)?;
        let (labels, annotations) = (secret.metadata.labels.take(), secret.metadata.annotations.take());
        secret.metadata = ObjectMeta { labels, annotations, ..self.metadata.clone() };
        Ok(secret)
    }
}

cached_resource!(CachedSecret, Secret);

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
    use kube::ResourceExt;
    use serde_json::json;

    fn instance(extra: serde_json::Value) -> ConnectorInstance {
        let mut manifest = json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "a", "namespace": "n", "uid": "u-1", "resourceVersion": "7", "generation": 2,
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
        assert_eq!(
            CachedInstance::new(&ci).annotations().keys().collect::<Vec<_>>(),
            ["openconnectors.io/paused"]
        );
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
        assert_eq!(CachedSecret::api_version(&()), "v1");
        assert_eq!(CachedSecret::plural(&()), "secrets");
        let from_json: CachedInstance =
            serde_json::from_value(serde_json::to_value(instance(json!({}))).unwrap()).unwrap();
        assert_eq!(from_json.name_any(), "a");
    }

    #[test]
    fn a_secret_comes_back_whole_without_managed_fields() {
        let secret: Secret = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": { "name": "a-token", "namespace": "n", "uid": "s-1", "resourceVersion": "9",
                          "labels": { LABEL_MANAGED_BY: "connector-operator" },
                          "annotations": { "openconnectors.io/token-sha256": "abc" },
                          "managedFields": [{ "manager": "connector-operator", "operation": "Apply" }],
                          "ownerReferences": [{ "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                                                "name": "a", "uid": "u-1", "controller": true }] },
            "data": { "token": "dG9rZW4=", "instanceId": "NDI=" },
        }))
        .unwrap();
        let back = CachedSecret::new(&secret).secret().unwrap();
        let mut expected = secret.clone();
        expected.metadata.managed_fields = None;
        assert_eq!(back, expected);
        let bare = Secret {
            metadata: ObjectMeta { name: Some("b".into()), ..Default::default() },
            ..Default::default()
        };
        assert_eq!(CachedSecret::new(&bare).secret().unwrap(), bare);
    }
}
