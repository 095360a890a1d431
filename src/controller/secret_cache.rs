//! A cache of the Secrets the operator reads (platform credentials, `configurationFrom`), kept
//! correct by the metadata-only watch of Secrets (all but the operator's token Secrets): an entry
//! is used only while no newer version of its Secret has been seen. Only Secrets that something
//! references are ever cached or tracked: memory is bounded by what is referenced, however many
//! other Secrets come and go.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;
use prometheus_client::metrics::gauge::Gauge;

use super::context::resource_version;

type Key = (String, String);

impl State {
    /// How many Secrets are tracked: every cached one is also in `seen`.
    fn tracked(&self) -> i64 {
        i64::try_from(self.seen.len()).unwrap_or(i64::MAX)
    }
}

#[derive(Debug, Default)]
struct State {
    cached: HashMap<Key, (u64, Option<Arc<Secret>>)>,
    /// The newest resourceVersion the watch has shown per cached Secret (`u64::MAX` once deleted,
    /// until it is read again: a read that finds it gone forgets it).
    seen: HashMap<Key, u64>,
    /// Names of every Secret in the watched scope (names only), once the first list is complete.
    names: HashSet<Key>,
    /// Names gathered during a (re)list, swapped in at its end.
    listing: HashSet<Key>,
    names_ready: bool,
}

/// The cache; cheap to clone. Its gauge says how many Secrets it tracks.
#[derive(Debug, Clone, Default)]
pub struct SecretCache(Arc<Mutex<State>>, Gauge);

fn key(meta: &PartialObjectMeta<Secret>) -> Key {
    (meta.namespace().unwrap_or_default(), meta.name_any())
}

impl SecretCache {
    /// Takes in one event of the metadata watch of Secrets.
    pub fn observe(&self, event: &Event<PartialObjectMeta<Secret>>) {
        let Ok(mut guard) = self.0.lock() else { return };
        let state = &mut *guard;
        let (key, rv) = match event {
            Event::Init => return state.listing.clear(),
            Event::InitDone => {
                state.names = std::mem::take(&mut state.listing);
                state.names_ready = true;
                return;
            }
            Event::InitApply(meta) => {
                state.listing.insert(key(meta));
                (key(meta), resource_version(meta))
            }
            Event::Apply(meta) => {
                state.names.insert(key(meta));
                (key(meta), resource_version(meta))
            }
            Event::Delete(meta) => {
                state.names.remove(&key(meta));
                (key(meta), u64::MAX)
            }
        };
        // Only Secrets that were read are tracked: the deletion of any other Secret is no news.
        if state.cached.contains_key(&key) || state.seen.contains_key(&key) {
            state.seen.insert(key.clone(), rv);
        }
        if state.cached.get(&key).is_some_and(|(cached_rv, _)| *cached_rv < rv) {
            state.cached.remove(&key);
        }
        self.1.set(state.tracked());
    }

    /// A cache whose gauge is `gauge` (the operator's `secret_cache_entries`).
    pub fn with_gauge(gauge: Gauge) -> Self {
        SecretCache(Arc::default(), gauge)
    }

    /// Whether a Secret of this name may exist: `false` only when the watch has listed every
    /// Secret and has not seen this one (a Secret created a moment ago may still be missed; writes
    /// that rely on this create rather than overwrite).
    pub fn may_exist(&self, namespace: &str, name: &str) -> bool {
        self.0.lock().map_or(true, |state| {
            !state.names_ready || state.names.contains(&(namespace.to_string(), name.to_string()))
        })
    }

    /// A Secret, from the cache when nothing newer has been seen, else read (and cached).
    pub async fn get(
        &self,
        client: &kube::Client,
        namespace: &str,
        name: &str,
    ) -> Result<Option<Arc<Secret>>, kube::Error> {
        let key = (namespace.to_string(), name.to_string());
        if let Ok(state) = self.0.lock()
            && let Some((rv, secret)) = state.cached.get(&key)
            && state.seen.get(&key).is_none_or(|seen| seen <= rv)
        {
            return Ok(secret.clone());
        }
        let read = Api::<Secret>::namespaced(client.clone(), namespace).get_opt(name).await?.map(Arc::new);
        if let Ok(mut state) = self.0.lock() {
            let rv = read.as_deref().map_or(0, resource_version);
            // Cache what exists and is at least as new as anything the watch has shown; a missing
            // Secret is not cached (its creation must be seen at once).
            let seen = state.seen.get(&key).copied().unwrap_or(0);
            if read.is_none() {
                // Gone: nothing to keep or guard any more (its creation is read afresh).
                state.seen.remove(&key);
                state.cached.remove(&key);
            } else if rv >= seen || seen == u64::MAX {
                state.seen.insert(key.clone(), rv);
                state.cached.insert(key, (rv, read.clone()));
            }
            self.1.set(state.tracked());
        }
        Ok(read)
    }

    /// How many Secrets are cached.
    pub fn len(&self) -> usize {
        self.0.lock().map(|s| s.cached.len()).unwrap_or(0)
    }

    /// Whether nothing is cached.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(name: &str, rv: &str) -> PartialObjectMeta<Secret> {
        let mut meta = PartialObjectMeta::<Secret>::default();
        meta.metadata.name = Some(name.into());
        meta.metadata.namespace = Some("ns".into());
        meta.metadata.resource_version = Some(rv.into());
        meta
    }

    fn insert(cache: &SecretCache, name: &str, rv: u64) {
        let mut secret = Secret::default();
        secret.metadata.resource_version = Some(rv.to_string());
        let mut state = cache.0.lock().unwrap();
        state.cached.insert(("ns".into(), name.into()), (rv, Some(Arc::new(secret))));
        state.seen.insert(("ns".into(), name.into()), rv);
    }

    fn is_cached(cache: &SecretCache, name: &str) -> bool {
        cache.0.lock().unwrap().cached.contains_key(&("ns".to_string(), name.to_string()))
    }

    #[test]
    fn newer_versions_and_deletions_invalidate() {
        let cache = SecretCache::default();
        insert(&cache, "a", 5);
        cache.observe(&Event::Apply(meta("a", "5")));
        assert!(is_cached(&cache, "a"), "the same version keeps the entry");
        cache.observe(&Event::Apply(meta("a", "6")));
        assert!(!is_cached(&cache, "a"), "a newer version drops it");
        insert(&cache, "b", 7);
        cache.observe(&Event::Delete(meta("b", "7")));
        assert!(!is_cached(&cache, "b"), "a deletion drops it");
        cache.observe(&Event::Apply(meta("unrelated", "9")));
        assert_eq!(cache.0.lock().unwrap().seen.len(), 2, "unreferenced Secrets are not tracked");
    }

    #[test]
    fn churn_of_unreferenced_secrets_leaves_nothing_behind() {
        let gauge = Gauge::default();
        let cache = SecretCache::with_gauge(gauge.clone());
        insert(&cache, "referenced", 3);
        for i in 0..10_000 {
            let name = format!("helm-release-{i}");
            cache.observe(&Event::Apply(meta(&name, "10")));
            cache.observe(&Event::Delete(meta(&name, "11")));
        }
        let state = cache.0.lock().unwrap();
        assert_eq!((state.cached.len(), state.seen.len()), (1, 1), "only the referenced Secret is tracked");
        assert_eq!(gauge.get(), 1);
    }

    #[tokio::test]
    async fn a_deleted_referenced_secret_is_forgotten_once_read_as_gone() {
        let cache = SecretCache::default();
        insert(&cache, "login", 3);
        cache.observe(&Event::Delete(meta("login", "4")));
        assert!(!is_cached(&cache, "login"));
        assert_eq!(cache.0.lock().unwrap().seen.len(), 1, "the deletion is remembered until read");
        // A client whose every request fails fast: the read below is of a Secret that is gone.
        let client = gone_client();
        assert!(cache.get(&client, "ns", "login").await.unwrap().is_none());
        assert!(cache.0.lock().unwrap().seen.is_empty(), "forgotten once read as gone");
    }

    /// A kube client whose API server answers every request with 404.
    fn gone_client() -> kube::Client {
        let service = tower::service_fn(|_request: http::Request<kube::client::Body>| async {
            let body = serde_json::json!({ "kind": "Status", "apiVersion": "v1", "status": "Failure",
                                           "reason": "NotFound", "code": 404, "message": "not found" });
            http::Response::builder()
                .status(404)
                .header("content-type", "application/json")
                .body(kube::client::Body::from(serde_json::to_vec(&body).unwrap()))
        });
        kube::Client::new(service, "default")
    }

    #[test]
    fn names_are_known_after_the_first_list() {
        let cache = SecretCache::default();
        assert!(cache.may_exist("ns", "x"), "before the list completes anything may exist");
        cache.observe(&Event::Init);
        cache.observe(&Event::InitApply(meta("listed", "1")));
        cache.observe(&Event::InitDone);
        assert!(cache.may_exist("ns", "listed"));
        assert!(!cache.may_exist("ns", "x"));
        cache.observe(&Event::Apply(meta("x", "2")));
        assert!(cache.may_exist("ns", "x"));
        cache.observe(&Event::Delete(meta("listed", "3")));
        assert!(!cache.may_exist("ns", "listed"));
    }
}
