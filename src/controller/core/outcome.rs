//! How a pass ends: the status it leaves, the Event that goes with it, and when to look again,
//! for every class of error.

use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::status;
use crate::api::ConnectorInstanceStatus;
use crate::controller::error::{Class, Error};
use crate::controller::events::EventType;

/// How a pass ends: the status to write (if it differs), the Event to publish with it, and when
/// to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new status.
    pub status: ConnectorInstanceStatus,
    /// An Event to publish if the status changed (a failure is reported once, not per retry): a
    /// Warning for a failure, a Normal one for a wait for a person.
    pub event: Option<(EventType, &'static str, String)>,
    /// When to look again.
    pub next: Next,
}

/// When to look at a resource again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After this delay.
    Requeue(Duration),
    /// On a change of the resource or of what it references.
    AwaitChange,
    /// After the error policy's per-object backoff.
    Backoff,
}

impl Next {
    /// After a failure of `class`: wait for a change (the user must fix something), look again
    /// after `recheck` (it may be fixed outside Kubernetes), or back off (it may pass by itself).
    pub fn after_failure(class: Class, recheck: Duration) -> Next {
        match class {
            Class::Stalled => Next::AwaitChange,
            Class::StalledRecheck => Next::Requeue(recheck),
            Class::Transient => Next::Backoff,
            Class::Waiting => Next::Requeue(recheck),
        }
    }
}

/// The outcome of a pass: `Ok(resync)` (Ready, read again after `resync`) or the error.
/// `recheck` is when a stall that may be fixed outside Kubernetes is looked at again.
pub fn decide(
    mut status: ConnectorInstanceStatus,
    outcome: &Result<Duration, Error>,
    secret_name: &str,
    recheck: Duration,
    now: &Time,
) -> Decision {
    match outcome {
        Ok(resync) => {
            status::ready(&mut status, secret_name, now);
            status.authorization = None;
            Decision { status, event: None, next: Next::Requeue(*resync) }
        }
        Err(Error::Awaiting { reason, message, retry }) => {
            let err = Error::Awaiting { reason, message: message.clone(), retry: *retry };
            status::failed(&mut status, &err, Class::Waiting, now);
            Decision {
                status,
                event: Some((EventType::Normal, reason, message.clone())),
                next: Next::Requeue(*retry),
            }
        }
        Err(err) => {
            let class = err.class();
            status::failed(&mut status, err, class, now);
            let next = Next::after_failure(class, recheck);
            Decision { status, event: Some((EventType::Warning, err.reason(), err.to_string())), next }
        }
    }
}

/// The outcome of a deletion that could not finish.
pub fn decide_deletion_blocked(
    mut status: ConnectorInstanceStatus,
    err: &Error,
    recheck: Duration,
    now: &Time,
) -> Decision {
    let class = err.class();
    let id = status.instance_id;
    status::deletion_blocked(&mut status, err, class, id, now);
    let next = Next::after_failure(class, recheck);
    Decision { status, event: Some((EventType::Warning, "DeletionBlocked", err.to_string())), next }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::platform::PlatformError;

    // ---- Outcome: every error class, and deletion blocked. ----

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn outcome_per_error_class() {
        let recheck = Duration::from_secs(300);
        // (outcome, next, the condition that is True, the Warning's reason)
        type Case<'a> = (Result<Duration, Error>, Next, &'a str, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (Ok(Duration::from_secs(600)), Next::Requeue(Duration::from_secs(600)), "Ready", None),
            (
                Err(Error::invalid("PlatformNotFound", "no platform")),
                Next::AwaitChange,
                "Stalled",
                Some("PlatformNotFound"),
            ),
            (
                Err(Error::Platform(PlatformError::Unauthorized { message: "bad".into() })),
                Next::Requeue(recheck),
                "Stalled",
                Some("Unauthorized"),
            ),
            (
                Err(Error::Platform(PlatformError::Forbidden { message: "no".into() })),
                Next::Requeue(recheck),
                "Stalled",
                Some("Forbidden"),
            ),
            (
                Err(Error::Platform(PlatformError::RateLimited { retry_after: None })),
                Next::Backoff,
                "Reconciling",
                Some("RateLimited"),
            ),
            (
                Err(Error::Platform(PlatformError::Transient { message: "502".into(), retry_after: None })),
                Next::Backoff,
                "Reconciling",
                Some("PlatformUnavailable"),
            ),
            (Err(Error::Internal("boom")), Next::Backoff, "Reconciling", Some("InternalError")),
            (
                Err(Error::Awaiting {
                    reason: "AwaitingAuthorization",
                    message: "open the URL".into(),
                    retry: Duration::from_secs(3000),
                }),
                Next::Requeue(Duration::from_secs(3000)),
                "Reconciling",
                Some("AwaitingAuthorization"),
            ),
        ];
        for (outcome, next, condition, warning) in cases {
            let status = ConnectorInstanceStatus { observed_generation: Some(2), ..Default::default() };
            let decision = decide(status, &outcome, "demo-token", recheck, &t(1));
            assert_eq!(decision.next, next, "{outcome:?}");
            assert!(crate::api::is_condition_true(&decision.status.conditions, condition), "{outcome:?}");
            assert_eq!(decision.event.as_ref().map(|w| w.1), warning, "{outcome:?}");
            // A wait for a person is news, not a failure.
            let normal = matches!(outcome, Err(Error::Awaiting { .. }));
            assert_eq!(
                decision.event.as_ref().map(|w| w.0 == EventType::Normal),
                warning.map(|_| normal),
                "{outcome:?}"
            );
            if outcome.is_err() {
                assert!(!crate::api::is_condition_true(&decision.status.conditions, "Ready"), "{outcome:?}");
            }
        }
    }

    #[test]
    fn deletion_blocked_says_how_to_release_and_waits_or_retries_by_class() {
        let status = ConnectorInstanceStatus { instance_id: Some(5), ..Default::default() };
        let gone = Error::invalid("CredentialsNotFound", "credentials Secret `ns/c` not found");
        let decision = decide_deletion_blocked(status.clone(), &gone, Duration::from_secs(300), &t(1));
        assert_eq!(decision.next, Next::AwaitChange);
        let stalled = crate::api::find_condition(&decision.status.conditions, crate::api::STALLED).unwrap();
        assert!(
            stalled.message.contains("openconnectors.io/abandon")
                && stalled.message.contains("remote instance 5")
        );
        let down = Error::Platform(PlatformError::Transient { message: "503".into(), retry_after: None });
        assert_eq!(
            decide_deletion_blocked(status, &down, Duration::from_secs(300), &t(1)).next,
            Next::Backoff
        );
    }
}
