//! The pure core of a ConnectorInstance reconcile: functions of their inputs, with the time passed
//! in; no I/O, so each is tested with plain values.
//!
//! - [`entry`]: which path a pass takes (run, pause, delete, orphan, abandon, forget);
//! - [`desired`]: what the manifest wants of the remote instance, and every check of the inputs;
//! - [`step`]: the step machine (which platform step comes next, what its answer means);
//! - [`approval`]: the approval values of `spec.reauthentication: Manual`;
//! - [`reads`]: when the remote instance is read again;
//! - [`outcome`]: how a pass ends (status conditions, Event, requeue) per error class;
//! - [`status`]: the only place that assigns status fields;
//! - [`deletion`]: what is deleted remotely when the resource goes;
//! - [`health`]: each platform's health, shared by its instances.

pub mod approval;
pub mod deletion;
pub mod desired;
pub mod entry;
pub mod health;
pub mod outcome;
pub mod reads;
pub mod status;
pub mod step;

use crate::controller::events::EventType;

/// An Event the pass asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// Event reason.
    pub reason: &'static str,
    /// Event note (no secret values).
    pub message: String,
    /// It records an action on the remote instance (counted in the actions metric).
    pub action: bool,
}

/// The one reading of the clock a pass makes: every time it writes and every deadline it
/// computes come from it.
#[derive(Debug, Clone)]
pub struct Now {
    /// Wall-clock time, for status and Events.
    pub time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time,
    /// Monotonic time, for deadlines in this process.
    pub instant: std::time::Instant,
}

impl Now {
    /// Reads the clock.
    pub fn read() -> Self {
        Now {
            time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
            instant: std::time::Instant::now(),
        }
    }
}
