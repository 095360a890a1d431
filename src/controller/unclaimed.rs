//! This process's index of the remote instances that may have no ConnectorInstance recording
//! them, so that a resource re-created from the same manifest (restored from Git or a backup: a
//! new UID) adopts its remote instance, while a new resource is created without a search.
//!
//! What it holds, per platform object: the reference tags (see [`crate::api::reference_tag`]) of
//! the instances one scan found (one paged search by this cluster's tag, the first time a
//! resource without the finalizer needs the platform, in the background), and of those this
//! process orphaned since (`deletionPolicy: Orphan`, the abandon annotation). A resource without
//! the finalizer searches by its reference tag only where the index may hold it: the tag is there,
//! or the platform's scan is not done (running, failed, or the index is full). Tags are kept as
//! 8-byte keys under a per-process random hash (a collision costs one search, never an adoption:
//! the search and the platform's answer decide that).
//!
//! What it does not know: instances another process orphans after this one's scan (another shard,
//! another cluster with the same `--cluster-id`). A re-created resource in that case gets a new
//! remote instance, as before the index (the README says so).

use std::collections::{HashMap, HashSet};
use std::hash::{BuildHasher, RandomState};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::metrics::gauge::Gauge;

/// A failed (or incomplete) scan is tried again after this long, at a lookup.
pub const SCAN_RETRY: Duration = Duration::from_secs(300);
/// Keys the index holds at most, every platform together (a platform's answers, or a namespace
/// editor's many platform objects, cannot grow it further): about 4 MiB at worst. A scan that
/// would pass it leaves its platform unscanned (every resource without the finalizer searches).
pub const MAX_KEYS: usize = 200_000;
/// Platform objects whose scan state is kept at most; beyond, the oldest ones are dropped (their
/// resources search).
pub const MAX_PLATFORMS: usize = 10_000;

/// The answer of [`Unclaimed::lookup`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// The platform's scan is done and found no instance with this reference tag, and this
    /// process orphaned none since: nothing to search for.
    Absent,
    /// An instance with this reference tag may exist: search.
    Maybe,
    /// As `Maybe`, and the platform has no scan under way: the caller starts one and reports it
    /// with [`Unclaimed::scanned`].
    MaybeScan,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scan {
    Running,
    Done,
    Failed(Instant),
}

#[derive(Debug, Default)]
struct Inner {
    scans: HashMap<String, Scan>,
    keys: HashSet<u64>,
}

/// The index (see the module documentation). Shared by every run of the process.
#[derive(Debug, Default)]
pub struct Unclaimed {
    hasher: RandomState,
    inner: Mutex<Inner>,
    /// Shows the number of keys held (the first gauge given is kept).
    gauge: OnceLock<Gauge>,
}

impl Unclaimed {
    /// Shows the number of keys held on `gauge` from now on (the first gauge given is kept).
    pub fn observe(&self, gauge: Gauge) {
        gauge.set(i64::try_from(self.len()).unwrap_or(i64::MAX));
        let _ = self.gauge.set(gauge);
    }

    fn show(&self, inner: &Inner) {
        if let Some(gauge) = self.gauge.get() {
            gauge.set(i64::try_from(inner.keys.len()).unwrap_or(i64::MAX));
        }
    }

    /// The key of `reference` (a reference tag) on `platform` (a platform object's identity).
    pub fn key(&self, platform: &str, reference: &str) -> u64 {
        self.hasher.hash_one((platform, reference))
    }

    /// Whether an instance with the reference tag `reference` may exist on `platform`
    /// unrecorded. Marks a scan as running when it answers [`Lookup::MaybeScan`].
    pub fn lookup(&self, platform: &str, reference: &str, now: Instant) -> Lookup {
        let key = self.key(platform, reference);
        let Ok(mut inner) = self.inner.lock() else { return Lookup::Maybe };
        let start = match inner.scans.get(platform) {
            Some(Scan::Done) if !inner.keys.contains(&key) => return Lookup::Absent,
            Some(Scan::Done | Scan::Running) => false,
            Some(Scan::Failed(at)) => now.duration_since(*at) >= SCAN_RETRY,
            None => true,
        };
        if !start {
            return Lookup::Maybe;
        }
        if inner.scans.len() >= MAX_PLATFORMS && !inner.scans.contains_key(platform) {
            // Bounded: the scan states of platforms not running are dropped first.
            inner.scans.retain(|_, scan| *scan == Scan::Running);
            if inner.scans.len() >= MAX_PLATFORMS {
                return Lookup::Maybe;
            }
        }
        inner.scans.insert(platform.to_string(), Scan::Running);
        Lookup::MaybeScan
    }

    /// Takes in the end of `platform`'s scan: the keys of the reference tags it found, or its
    /// failure (the platform then stays unscanned until a lookup after [`SCAN_RETRY`]).
    pub fn scanned(&self, platform: &str, found: Result<Vec<u64>, ()>, now: Instant) {
        let Ok(mut inner) = self.inner.lock() else { return };
        let scan = match found {
            Ok(keys) if inner.keys.len().saturating_add(keys.len()) <= MAX_KEYS => {
                inner.keys.extend(keys);
                Scan::Done
            }
            Ok(_) | Err(()) => Scan::Failed(now),
        };
        inner.scans.insert(platform.to_string(), scan);
        self.show(&inner);
    }

    /// This process orphaned the instance of `reference` on `platform` (its resource is gone, the
    /// instance stays): a resource re-created from the same manifest searches for it. When the
    /// index is full, the platform counts as unscanned instead (every resource searches).
    pub fn orphaned(&self, platform: &str, reference: &str, now: Instant) {
        let key = self.key(platform, reference);
        let Ok(mut inner) = self.inner.lock() else { return };
        if inner.keys.len() < MAX_KEYS {
            inner.keys.insert(key);
        } else if inner.scans.get(platform).is_some_and(|scan| *scan == Scan::Done) {
            inner.scans.insert(platform.to_string(), Scan::Failed(now));
        }
        self.show(&inner);
    }

    /// The instance of `reference` on `platform` was deleted with its resource: nothing to look
    /// for any more.
    pub fn deleted(&self, platform: &str, reference: &str) {
        let key = self.key(platform, reference);
        if let Ok(mut inner) = self.inner.lock() {
            inner.keys.remove(&key);
            self.show(&inner);
        }
    }

    /// Keys held.
    pub fn len(&self) -> usize {
        self.inner.lock().map(|inner| inner.keys.len()).unwrap_or_default()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const P: &str = "ConnectorPlatform/team-a/sim";

    #[test]
    fn a_platform_is_scanned_once_and_then_answers_without_a_search() {
        let index = Unclaimed::default();
        let now = Instant::now();
        assert_eq!(index.lookup(P, "k8s-ref-a", now), Lookup::MaybeScan, "the first lookup starts the scan");
        assert_eq!(index.lookup(P, "k8s-ref-b", now), Lookup::Maybe, "one scan at a time; meanwhile, search");
        index.scanned(P, Ok(vec![index.key(P, "k8s-ref-a")]), now);
        assert_eq!(index.lookup(P, "k8s-ref-a", now), Lookup::Maybe, "found by the scan");
        assert_eq!(index.lookup(P, "k8s-ref-b", now), Lookup::Absent);
        assert_eq!(index.lookup("ClusterConnectorPlatform//other", "k8s-ref-b", now), Lookup::MaybeScan);
    }

    #[test]
    fn keys_are_per_platform() {
        let index = Unclaimed::default();
        let now = Instant::now();
        let other = "ConnectorPlatform/team-b/sim";
        for platform in [P, other] {
            index.lookup(platform, "x", now);
            index.scanned(platform, Ok(Vec::new()), now);
        }
        index.orphaned(other, "k8s-ref-a", now);
        assert_eq!(
            index.lookup(P, "k8s-ref-a", now),
            Lookup::Absent,
            "another platform's orphan is not this one's"
        );
        assert_eq!(index.lookup(other, "k8s-ref-a", now), Lookup::Maybe);
    }

    #[test]
    fn orphans_are_searched_for_until_deleted() {
        let index = Unclaimed::default();
        let now = Instant::now();
        index.orphaned(P, "k8s-ref-a", now);
        index.lookup(P, "x", now);
        index.scanned(P, Ok(Vec::new()), now);
        assert_eq!(
            index.lookup(P, "k8s-ref-a", now),
            Lookup::Maybe,
            "an orphan from before the scan ended stays"
        );
        let gauge = Gauge::default();
        index.observe(gauge.clone());
        assert_eq!(gauge.get(), 1, "the gauge shows the keys");
        index.deleted(P, "k8s-ref-a");
        assert_eq!(gauge.get(), 0);
        assert_eq!(index.lookup(P, "k8s-ref-a", now), Lookup::Absent);
        index.orphaned(P, "k8s-ref-a", now);
        assert_eq!(index.lookup(P, "k8s-ref-a", now), Lookup::Maybe);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn a_failed_scan_means_searching_and_is_tried_again_later() {
        let index = Unclaimed::default();
        let now = Instant::now();
        assert_eq!(index.lookup(P, "k8s-ref-a", now), Lookup::MaybeScan);
        index.scanned(P, Err(()), now);
        assert_eq!(index.lookup(P, "k8s-ref-a", now + SCAN_RETRY / 2), Lookup::Maybe);
        assert_eq!(index.lookup(P, "k8s-ref-a", now + SCAN_RETRY), Lookup::MaybeScan);
        assert_eq!(index.lookup(P, "k8s-ref-a", now + SCAN_RETRY), Lookup::Maybe);
    }

    #[test]
    fn the_index_is_bounded_and_a_scan_past_the_bound_leaves_its_platform_unscanned() {
        let index = Unclaimed::default();
        let now = Instant::now();
        index.lookup(P, "x", now);
        index.scanned(P, Ok((0..MAX_KEYS as u64).collect()), now);
        assert_eq!(index.len(), MAX_KEYS);
        let other = "ConnectorPlatform/team-b/sim";
        index.lookup(other, "x", now);
        index.scanned(other, Ok(vec![u64::MAX]), now);
        assert_eq!(index.len(), MAX_KEYS, "not one key more");
        assert_eq!(
            index.lookup(other, "k8s-ref-a", now),
            Lookup::Maybe,
            "unscanned: every resource searches"
        );
        // An orphan that does not fit makes its platform unscanned: never a create without a search.
        let fresh = Unclaimed::default();
        fresh.lookup(P, "x", now);
        fresh.scanned(P, Ok((0..MAX_KEYS as u64).collect()), now);
        let reference =
            (0..).map(|i| format!("k8s-ref-{i}")).find(|r| fresh.lookup(P, r, now) == Lookup::Absent);
        let reference = reference.expect("a reference tag outside the keys");
        fresh.orphaned(P, &reference, now);
        assert_eq!(fresh.lookup(P, &reference, now), Lookup::Maybe);
    }

    #[test]
    fn platform_states_are_bounded() {
        let index = Unclaimed::default();
        let now = Instant::now();
        for i in 0..MAX_PLATFORMS {
            let platform = format!("ConnectorPlatform/ns-{i}/p");
            index.lookup(&platform, "x", now);
            index.scanned(&platform, Ok(Vec::new()), now);
        }
        assert_eq!(index.lookup("ConnectorPlatform/new/p", "x", now), Lookup::MaybeScan);
        assert!(index.inner.lock().unwrap().scans.len() <= MAX_PLATFORMS);
    }
}
