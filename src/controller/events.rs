//! Kubernetes Events (`events.k8s.io/v1`) about ConnectorInstances, published off the reconcile's
//! critical path. The operator publishes only on state changes, so it keeps no cache for event
//! series (unlike kube's `Recorder`, whose cache grows with every object).
//!
//! Events are informational and come last: they wait in a bounded queue drained by
//! [`PUBLISHERS`] worker, as client-go's event broadcaster does (one writer, a bounded queue that
//! drops when full). A burst of thousands of new instances thus gets its tokens first and its
//! `Created` Events right after, instead of Events taking a share of the API server while
//! instances wait. A full queue drops the newest Event and counts it.

use std::sync::Arc;

use futures::StreamExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Resource;
use kube::api::PostParams;
use tokio::sync::mpsc;

use crate::metrics::{EventLabels, Metrics};

/// Reporting controller name in every Event.
pub const REPORTING_CONTROLLER: &str = "openconnectors.io/connector-operator";

/// Events waiting at most (about 300 bytes each).
pub const QUEUE_CAPACITY: usize = 16_384;

/// Events being written at once (one, as client-go's event sink).
pub const PUBLISHERS: usize = 1;

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A state change.
    Normal,
    /// Something that needs attention.
    Warning,
}

/// An Event waiting in the queue: only what varies (the Event is built when it is written), its
/// strings as one JSON text ([`Parts`]): a burst of creates queues thousands, and a typed
/// `ObjectReference` alone is seven allocations.
#[derive(Debug)]
struct Pending {
    parts: Box<str>,
    type_: EventType,
    time: Timestamp,
}

/// The strings of a queued Event.
#[derive(Debug, serde::Serialize, serde::Deserialize)]
struct Parts {
    regarding: ObjectReference,
    reason: String,
    note: String,
}

/// Queues Events for publication; cheap to clone.
#[derive(Clone)]
pub struct EventPublisher {
    queue: mpsc::Sender<Pending>,
    metrics: Metrics,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher").finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher reporting as `instance` (the pod name). Starts its workers on the current
    /// runtime; they end when every clone of the publisher is dropped and the queue is empty.
    pub fn new(client: kube::Client, instance: String, metrics: Metrics) -> Self {
        let (queue, receiver) = mpsc::channel::<Pending>(QUEUE_CAPACITY);
        let worker_metrics = metrics.clone();
        let instance: Arc<str> = instance.chars().take(128).collect::<String>().into();
        let pending = futures::stream::unfold(receiver, |mut receiver| async move {
            receiver.recv().await.map(|event| (event, receiver))
        });
        tokio::spawn(pending.for_each_concurrent(PUBLISHERS, move |pending| {
            let (client, metrics, instance) = (client.clone(), worker_metrics.clone(), instance.clone());
            async move {
                metrics.events_queued.dec();
                let Some(event) = render(pending, &instance) else {
                    metrics.events.get_or_create(&EventLabels { outcome: "failed" }).inc();
                    return;
                };
                let namespace = event.metadata.namespace.clone().unwrap_or_default();
                // The answer (the Event back) is not read.
                let request = serde_json::to_vec(&event).map_err(kube::Error::SerdeError).and_then(|body| {
                    let events = kube::core::Request::new(Event::url_path(&(), Some(&namespace)));
                    events.create(&PostParams::default(), body).map_err(kube::Error::BuildRequest)
                });
                let sent = match request {
                    Ok(request) => client.request_text(request).await,
                    Err(err) => Err(err),
                };
                let outcome = match sent {
                    Ok(_) => "published",
                    Err(err) => {
                        tracing::warn!(%err, reason = event.reason.as_deref().unwrap_or(""), "could not publish event");
                        "failed"
                    }
                };
                metrics.events.get_or_create(&EventLabels { outcome }).inc();
            }
        }));
        Self { queue, metrics }
    }

    /// Queues an Event about `regarding`; a full queue drops it (counted, logged now and then).
    pub fn publish(&self, regarding: ObjectReference, type_: EventType, reason: &str, note: &str) {
        let parts = Parts {
            regarding,
            reason: reason.chars().take(128).collect(),
            note: note.chars().take(1000).collect(),
        };
        let pending = Pending {
            parts: serde_json::to_string(&parts).unwrap_or_default().into_boxed_str(),
            type_,
            time: Timestamp::now(),
        };
        // Counted before sending, so that the worker's decrement never runs first.
        self.metrics.events_queued.inc();
        if let Err(err) = self.queue.try_send(pending) {
            self.metrics.events_queued.dec();
            let dropped = self.metrics.events.get_or_create(&EventLabels { outcome: "dropped" }).inc() + 1;
            if dropped.is_power_of_two() {
                let why = match err {
                    mpsc::error::TrySendError::Full(_) => "the event queue is full",
                    mpsc::error::TrySendError::Closed(_) => "the event publisher has stopped",
                };
                tracing::warn!(dropped, reason, "{why}; event dropped");
            }
        }
    }
}

/// The Event of a queued entry (`None` only if its parts are not what `publish` wrote).
fn render(pending: Pending, instance: &str) -> Option<Event> {
    let Pending { parts, type_, time } = pending;
    let Parts { regarding, reason, note } = serde_json::from_str(&parts)
        .inspect_err(|err| tracing::error!(%err, "a queued event could not be read back"))
        .ok()?;
    let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
    let name = format!(
        "{}.{:x}{:04x}",
        regarding.name.as_deref().unwrap_or("object"),
        time.as_nanosecond(),
        fastrand::u16(..)
    );
    let mut event = Event {
        action: Some("Reconcile".into()),
        event_time: Some(MicroTime(time)),
        note: Some(note),
        reason: Some(reason),
        regarding: Some(regarding),
        reporting_controller: Some(REPORTING_CONTROLLER.into()),
        reporting_instance: Some(instance.to_string()),
        type_: Some(match type_ {
            EventType::Normal => "Normal".into(),
            EventType::Warning => "Warning".into(),
        }),
        ..Event::default()
    };
    event.metadata.name = Some(name);
    event.metadata.namespace = Some(namespace);
    Some(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client whose every request fails at once (nothing listens on the port).
    fn unreachable_client() -> kube::Client {
        let port = crate::local::free_port().unwrap_or(1);
        let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
        kube::Client::try_from(config).unwrap()
    }

    fn regarding() -> ObjectReference {
        ObjectReference {
            name: Some("ci".into()),
            namespace: Some("ns".into()),
            ..ObjectReference::default()
        }
    }

    fn count(metrics: &Metrics, outcome: &'static str) -> u64 {
        metrics.events.get_or_create(&EventLabels { outcome }).get()
    }

    #[tokio::test]
    async fn queued_events_are_written_and_a_full_queue_drops() {
        let metrics = Metrics::default();
        let publisher = EventPublisher::new(unreachable_client(), "test".into(), metrics.clone());
        // Every write fails (nothing listens): the events still leave the queue, as `failed`.
        for _ in 0..10 {
            publisher.publish(regarding(), EventType::Normal, "Created", "created remote instance 1");
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        while count(&metrics, "failed") < 10 {
            assert!(std::time::Instant::now() < deadline, "queued events were not attempted");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert_eq!(metrics.events_queued.get(), 0);
        assert_eq!(count(&metrics, "dropped"), 0);

        // A queue nobody drains fills up, then drops (and counts) the newest.
        let (queue, _receiver) = mpsc::channel::<Pending>(2);
        let full = EventPublisher { queue, metrics: Metrics::default() };
        for _ in 0..5 {
            full.publish(regarding(), EventType::Warning, "Failed", "x");
        }
        assert_eq!(count(&full.metrics, "dropped"), 3);
        assert_eq!(full.metrics.events_queued.get(), 2);
    }

    #[tokio::test]
    async fn a_queued_event_is_written_as_published() {
        let (queue, mut receiver) = mpsc::channel::<Pending>(4);
        let publisher = EventPublisher { queue, metrics: Metrics::default() };
        let mut regarding = regarding();
        regarding.uid = Some("u-1".into());
        regarding.kind = Some("ConnectorInstance".into());
        publisher.publish(regarding.clone(), EventType::Warning, "Failed", &"n".repeat(2000));
        let event = render(receiver.recv().await.unwrap(), "pod-1").unwrap();
        assert_eq!(event.regarding, Some(regarding));
        assert_eq!((event.reason.as_deref(), event.type_.as_deref()), (Some("Failed"), Some("Warning")));
        assert_eq!(event.note.map(|n| n.len()), Some(1000), "the note is cut at 1000 characters");
        assert_eq!(event.reporting_instance.as_deref(), Some("pod-1"));
        assert_eq!(event.metadata.namespace.as_deref(), Some("ns"));
        assert!(event.metadata.name.unwrap().starts_with("ci."));
        let damaged = Pending { parts: "{".into(), type_: EventType::Normal, time: Timestamp::now() };
        assert!(render(damaged, "pod-1").is_none());
    }
}
