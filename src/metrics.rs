//! Prometheus metrics. Labels are fixed vocabularies (operation, result, error class), never data
//! from a resource or a secret.

use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// Labels of a reconcile outcome.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// `ConnectorInstance`, `ConnectorPlatform`, `ClusterConnectorPlatform`.
    pub kind: &'static str,
    /// `ok` or an error class label.
    pub result: &'static str,
}

/// Labels of a remote action.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabels {
    /// `Created`, `Adopted`, `Updated`, `ReAuthenticated`, `Recreated`, `Deleted`, ...
    pub action: &'static str,
}

/// Labels of an Event's fate.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabels {
    /// `published`, `failed` or `dropped`.
    pub outcome: &'static str,
}

/// Labels of a platform request.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PlatformRequestLabels {
    /// The route, e.g. `GET /instances/{id}` (never an id or any other data).
    pub operation: &'static str,
    /// `2xx`, `3xx`, `429`, `4xx`, `5xx`, or `none` when no answer came (timeout, connection).
    pub status: &'static str,
}

/// Labels of a platform request's duration.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    /// The route, e.g. `POST /instances`.
    pub operation: &'static str,
}

/// The status label of a platform answer.
pub fn status_class(status: Option<u16>) -> &'static str {
    match status {
        None => "none",
        Some(429) => "429",
        Some(200..=299) => "2xx",
        Some(300..=399) => "3xx",
        Some(400..=499) => "4xx",
        Some(_) => "5xx",
    }
}

/// Labels of the instance census.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceLabels {
    /// The instances' namespace.
    pub namespace: String,
    /// Their `Ready` status: `True`, `False` or `Unknown` (no status yet).
    pub ready: String,
    /// The `Ready` reason (a fixed vocabulary: `Ready`, `Unauthorized`, `Paused`, ...).
    pub reason: String,
}

/// Labels of the opt-in per-instance series (one per condition of each ConnectorInstance).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct InstanceConditionLabels {
    /// The instance's namespace.
    pub namespace: String,
    /// The instance's name.
    pub name: String,
    /// The condition type (`Ready`, `Reconciling`, `Stalled`).
    pub condition: String,
    /// Its status (`True`, `False`, `Unknown`).
    pub status: String,
    /// Its reason.
    pub reason: String,
}

/// What `/metrics` takes from a run of the controllers when it is scraped: the census of
/// ConnectorInstances by (namespace, Ready status, reason), and — when per-instance series are
/// on — the conditions of each instance.
pub trait Census: Send + Sync {
    /// ConnectorInstances by (namespace, Ready status, reason).
    fn census(&self) -> Vec<(InstanceLabels, i64)>;
    /// Every condition of every ConnectorInstance.
    fn conditions(&self) -> Vec<InstanceConditionLabels>;
}

/// A census from a function (no per-instance conditions).
impl<F: Fn() -> Vec<(InstanceLabels, i64)> + Send + Sync> Census for F {
    fn census(&self) -> Vec<(InstanceLabels, i64)> {
        self()
    }

    fn conditions(&self) -> Vec<InstanceConditionLabels> {
        Vec::new()
    }
}

/// Where the census is taken from, once the controllers run.
#[derive(Clone, Default)]
struct CensusSlot(Arc<std::sync::Mutex<Vec<Arc<dyn Census>>>>);

impl std::fmt::Debug for CensusSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("CensusSlot")
    }
}

type DurationHistograms = Family<OperationLabels, Histogram, fn() -> Histogram>;

fn platform_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 14))
}

/// The operator's metrics.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Reconciles by kind and result.
    pub reconciles: Family<OutcomeLabels, Counter>,
    /// Reconcile duration in seconds.
    pub reconcile_duration: Histogram,
    /// Changes made to remote instances, by action.
    pub actions: Family<ActionLabels, Counter>,
    /// Reconciles running now.
    pub in_flight: Gauge,
    /// Tasks alive in the async runtime (read at scrape time; a leak shows as growth).
    pub runtime_tasks: Gauge,
    /// Events waiting to be published.
    pub events_queued: Gauge,
    /// Secrets the Secret cache tracks (referenced ones only; growth with unrelated Secret churn
    /// would be a leak).
    pub secret_cache_entries: Gauge,
    /// ConnectorInstances the operator keeps a memory of (existing ones only).
    pub instance_memories: Gauge,
    /// Reference tags in the restore index (remote instances of this cluster that may have no
    /// ConnectorInstance; see `controller::unclaimed`).
    pub restore_index_keys: Gauge,
    /// Events published, by outcome (`published`, `failed`, `dropped` when the queue was full).
    pub events: Family<EventLabels, Counter>,
    /// Platform HTTP exchanges by operation and status class (every attempt, retries included).
    pub platform_requests: Family<PlatformRequestLabels, Counter>,
    /// Platform HTTP exchange durations by operation.
    pub platform_request_duration: DurationHistograms,
    /// Seconds platform calls waited for the client-side rate limiter (`requestsPerSecond`).
    pub platform_throttled_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    /// 1 while this replica runs the controllers (holds the leader lease, or runs without
    /// leader election), else 0.
    pub leader: Gauge,
    /// ConnectorInstances by namespace, Ready status and reason (no per-object series).
    pub instances: Family<InstanceLabels, Gauge>,
    census: CensusSlot,
    /// The opt-in per-instance series (filled only when [`Metrics::per_instance`] is on).
    pub instance_conditions: Family<InstanceConditionLabels, Gauge>,
    per_instance: Arc<std::sync::atomic::AtomicBool>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("connector_operator");
        let reconciles = Family::<OutcomeLabels, Counter>::default();
        let reconcile_duration = Histogram::new(exponential_buckets(0.005, 2.0, 14));
        let actions = Family::<ActionLabels, Counter>::default();
        let in_flight = Gauge::default();
        let runtime_tasks = Gauge::default();
        let events_queued = Gauge::default();
        let secret_cache_entries = Gauge::default();
        let instance_memories = Gauge::default();
        let restore_index_keys = Gauge::default();
        let events = Family::<EventLabels, Counter>::default();
        let platform_requests = Family::<PlatformRequestLabels, Counter>::default();
        let platform_request_duration: DurationHistograms = Family::new_with_constructor(platform_histogram);
        let platform_throttled_seconds = Counter::<f64, std::sync::atomic::AtomicU64>::default();
        let leader = Gauge::default();
        let instances = Family::<InstanceLabels, Gauge>::default();
        let instance_conditions = Family::<InstanceConditionLabels, Gauge>::default();
        registry.register(
            "instance_condition",
            "1 for each condition of each ConnectorInstance (namespace, name, condition, status, reason); \
             empty unless --metrics-per-instance",
            instance_conditions.clone(),
        );
        registry.register(
            "instances",
            "ConnectorInstances by namespace, Ready status and reason",
            instances.clone(),
        );
        registry.register(
            "platform_requests",
            "Platform HTTP exchanges by operation and status class (2xx, 3xx, 429, 4xx, 5xx, none)",
            platform_requests.clone(),
        );
        registry.register(
            "platform_request_duration_seconds",
            "Duration of platform HTTP exchanges by operation",
            platform_request_duration.clone(),
        );
        registry.register(
            "platform_throttled_seconds",
            "Seconds platform calls waited for the client-side rate limit",
            platform_throttled_seconds.clone(),
        );
        registry.register("leader", "1 while this replica runs the controllers", leader.clone());
        registry.register("events_queued", "Events waiting to be published", events_queued.clone());
        registry.register("events", "Events by outcome (published, failed, dropped)", events.clone());
        registry.register("reconciles", "Reconciles by kind and result", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Duration of ConnectorInstance reconciles",
            reconcile_duration.clone(),
        );
        registry.register("remote_actions", "Changes made to remote instances", actions.clone());
        registry.register("reconciles_in_flight", "Reconciles running now", in_flight.clone());
        registry.register("runtime_tasks", "Tasks alive in the async runtime", runtime_tasks.clone());
        registry.register(
            "secret_cache_entries",
            "Referenced Secrets the Secret cache tracks",
            secret_cache_entries.clone(),
        );
        registry.register(
            "instance_memories",
            "ConnectorInstances the operator keeps a memory of",
            instance_memories.clone(),
        );
        registry.register(
            "restore_index_keys",
            "Reference tags in the restore index (remote instances of this cluster that may have no ConnectorInstance)",
            restore_index_keys.clone(),
        );
        Self {
            reconciles,
            reconcile_duration,
            actions,
            in_flight,
            runtime_tasks,
            events_queued,
            secret_cache_entries,
            instance_memories,
            restore_index_keys,
            events,
            platform_requests,
            platform_request_duration,
            platform_throttled_seconds,
            leader,
            instances,
            census: CensusSlot::default(),
            instance_conditions,
            per_instance: Arc::default(),
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn encode(&self) -> String {
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            self.runtime_tasks.set(i64::try_from(handle.metrics().num_alive_tasks()).unwrap_or(i64::MAX));
        }
        let censuses = self.census.0.lock().map(|c| c.clone()).unwrap_or_default();
        if !censuses.is_empty() {
            self.instances.clear();
            for census in &censuses {
                for (labels, count) in census.census() {
                    self.instances.get_or_create(&labels).inc_by(count);
                }
            }
            if self.per_instance.load(std::sync::atomic::Ordering::Relaxed) {
                self.instance_conditions.clear();
                for census in &censuses {
                    for labels in census.conditions() {
                        self.instance_conditions.get_or_create(&labels).set(1);
                    }
                }
            }
        }
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }

    /// Adds a source of the instance census (the cache of ConnectorInstances of one run of the
    /// controllers; several runs in one process add up).
    pub fn add_census(&self, census: Arc<dyn Census>) {
        if let Ok(mut slot) = self.census.0.lock() {
            slot.push(census);
        }
    }

    /// Turns the per-instance series (`instance_condition`) on: one series per condition of each
    /// ConnectorInstance, so its cardinality grows with the number of instances.
    pub fn set_per_instance(&self, on: bool) {
        self.per_instance.store(on, std::sync::atomic::Ordering::Relaxed);
    }

    /// Counts a reconcile and its duration when dropped.
    pub fn reconcile_timer(&self) -> ReconcileTimer {
        self.in_flight.inc();
        ReconcileTimer { metrics: self.clone(), started: Instant::now() }
    }

    /// Counts one remote action.
    pub fn action(&self, action: &'static str) {
        self.actions.get_or_create(&ActionLabels { action }).inc();
    }

    /// Counts one reconcile outcome.
    pub fn outcome(&self, kind: &'static str, result: &'static str) {
        self.reconciles.get_or_create(&OutcomeLabels { kind, result }).inc();
    }
}

impl crate::platform::CallObserver for Metrics {
    fn exchange(&self, operation: &'static str, status: Option<u16>, elapsed: std::time::Duration) {
        let status = status_class(status);
        self.platform_requests.get_or_create(&PlatformRequestLabels { operation, status }).inc();
        self.platform_request_duration
            .get_or_create(&OperationLabels { operation })
            .observe(elapsed.as_secs_f64());
    }

    fn throttled(&self, waited: std::time::Duration) {
        self.platform_throttled_seconds.inc_by(waited.as_secs_f64());
    }
}

/// Records the duration of a reconcile on drop (also when the reconcile is cancelled).
#[derive(Debug)]
pub struct ReconcileTimer {
    metrics: Metrics,
    started: Instant,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        self.metrics.in_flight.dec();
        self.metrics.reconcile_duration.observe(self.started.elapsed().as_secs_f64());
    }
}
