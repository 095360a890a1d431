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
    /// Events published, by outcome (`published`, `failed`, `dropped` when the queue was full).
    pub events: Family<EventLabels, Counter>,
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
        let events = Family::<EventLabels, Counter>::default();
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
        Self {
            reconciles,
            reconcile_duration,
            actions,
            in_flight,
            runtime_tasks,
            events_queued,
            secret_cache_entries,
            instance_memories,
            events,
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
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
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
