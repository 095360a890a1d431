//! Kubernetes Events (`events.k8s.io/v1`) about ConnectorInstances, published off the reconcile's
//! critical path. The operator publishes only on state changes, so it keeps no cache for event
//! series (unlike kube's `Recorder`, whose cache grows with every object).

use std::sync::Arc;

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::events::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::Semaphore;

/// Reporting controller name in every Event.
pub const REPORTING_CONTROLLER: &str = "openconnectors.io/connector-operator";

/// Severity of an Event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    /// A state change.
    Normal,
    /// Something that needs attention.
    Warning,
}

/// Publishes Events in the background, at most 32 at a time.
#[derive(Clone)]
pub struct EventPublisher {
    client: kube::Client,
    instance: String,
    in_flight: Arc<Semaphore>,
}

impl std::fmt::Debug for EventPublisher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventPublisher").field("instance", &self.instance).finish_non_exhaustive()
    }
}

impl EventPublisher {
    /// A publisher reporting as `instance` (the pod name).
    pub fn new(client: kube::Client, instance: String) -> Self {
        Self { client, instance, in_flight: Arc::new(Semaphore::new(32)) }
    }

    /// Publishes an Event about `regarding`; a failure is logged, never fatal.
    pub fn publish(&self, regarding: ObjectReference, type_: EventType, reason: &str, note: &str) {
        let namespace = regarding.namespace.clone().unwrap_or_else(|| "default".into());
        let now = Timestamp::now();
        let name = format!(
            "{}.{:x}{:04x}",
            regarding.name.as_deref().unwrap_or("object"),
            now.as_nanosecond(),
            fastrand::u16(..)
        );
        let mut event = Event {
            action: Some("Reconcile".into()),
            event_time: Some(MicroTime(now)),
            note: Some(note.chars().take(1000).collect()),
            reason: Some(reason.chars().take(128).collect()),
            regarding: Some(regarding),
            reporting_controller: Some(REPORTING_CONTROLLER.into()),
            reporting_instance: Some(self.instance.chars().take(128).collect()),
            type_: Some(match type_ {
                EventType::Normal => "Normal".into(),
                EventType::Warning => "Warning".into(),
            }),
            ..Event::default()
        };
        event.metadata.name = Some(name);
        event.metadata.namespace = Some(namespace.clone());
        let api: Api<Event> = Api::namespaced(self.client.clone(), &namespace);
        let in_flight = self.in_flight.clone();
        tokio::spawn(async move {
            let Ok(_permit) = in_flight.acquire_owned().await else { return };
            if let Err(err) = api.create(&PostParams::default(), &event).await {
                tracing::warn!(%err, reason = event.reason.as_deref().unwrap_or(""), "could not publish event");
            }
        });
    }
}
