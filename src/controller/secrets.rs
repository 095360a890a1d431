//! A cache of the Secrets the operator reads (platform credentials, `configurationFrom`), kept
//! correct by the metadata-only watch of Secrets: an entry is used only while no newer version of
//! its Secret has been seen. Only Secrets that something references are ever cached.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::watcher::Event;

type Key = (String, String);

#[derive(Debug, Default)]
struct State {
    cached: HashMap<Key, (u64, Option<Arc<Secret>>)>,
    /// The newest resourceVersion the watch has shown per Secret (`u64::MAX` once deleted, until
    /// a new one appears).
    seen: HashMap<Key, u64>,
}

/// The cache; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct SecretCache(Arc<Mutex<State>>);

fn version(secret_rv: Option<String>) -> u64 {
    secret_rv.and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

impl SecretCache {
    /// Takes in one event of the metadata watch of Secrets.
    pub fn observe(&self, event: &Event<PartialObjectMeta<Secret>>) {
        let Ok(mut state) = self.0.lock() else { return };
        let mut note = |meta: &PartialObjectMeta<Secret>, deleted: bool| {
            let key = (meta.namespace().unwrap_or_default(), meta.name_any());
            let rv = if deleted { u64::MAX } else { version(meta.resource_version()) };
            if state.cached.contains_key(&key) || deleted {
                state.seen.insert(key.clone(), rv);
            }
            if state.cached.get(&key).is_some_and(|(cached_rv, _)| *cached_rv < rv) {
                state.cached.remove(&key);
            }
        };
        match event {
            Event::Apply(meta) | Event::InitApply(meta) => note(meta, false),
            Event::Delete(meta) => note(meta, true),
            Event::Init | Event::InitDone => {}
        }
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
            let rv = read.as_ref().map_or(0, |s| version(s.resource_version()));
            // Cache what exists and is at least as new as anything the watch has shown; a missing
            // Secret is not cached (its creation must be seen at once).
            let seen = state.seen.get(&key).copied().unwrap_or(0);
            if read.is_some() && (rv >= seen || seen == u64::MAX) {
                state.seen.insert(key.clone(), rv);
                state.cached.insert(key, (rv, read.clone()));
            }
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
}
