//! How a pass ends: the status it leaves, the Event that goes with it, and when to look again,
//! for every class of error.

use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use secrecy::SecretString;

use super::reads::ReadPlan;
use super::status;
use super::step::Pass;
use crate::api::{ConnectorInstanceStatus, PlannedAction, PlatformStatusRef, RolloutStatus};
use crate::controller::error::{Class, Error};
use crate::controller::events::EventType;
use crate::platform::PlatformError;

/// What a pass did and learnt, filled in as it goes (a pass that stops early leaves the rest
/// unset), for [`conclude`].
#[derive(Debug, Default)]
pub struct Report {
    /// The step machine's state: what is known, the token, the action, the Events.
    pub pass: Pass,
    /// Where the remote instance lives, once the inputs passed their checks.
    pub platform: Option<PlatformStatusRef>,
    /// The plan shown while a re-authentication waits for approval (`Some(None)`: none waits).
    pub planned_action: Option<Option<Box<PlannedAction>>>,
    /// The approval value carried out by this pass.
    pub approved: Option<String>,
    /// The workloads restarted for the token Secret's content (`Some(None)`: none are named).
    pub rollout: Option<Option<Box<RolloutStatus>>>,
    /// The token test, if one was made.
    pub token_test: Option<TokenTest>,
    /// The `reauthenticate-requested-at` value this pass carried out.
    pub reauthenticated_for: Option<String>,
    /// What this process remembers of the instance after the pass.
    pub remember: Remember,
}

/// A test of the token as a workload uses it.
#[derive(Debug)]
pub struct TokenTest {
    /// The remote instance the token should belong to.
    pub instance_id: i64,
    /// The platform's answer: the id of the instance the token belongs to.
    pub answer: Result<i64, PlatformError>,
    /// The `test-requested-at` value it answers.
    pub requested: Option<String>,
}

/// Changes to what the process remembers of an instance (see `context::Memory`).
#[derive(Debug, Default)]
pub struct Remember {
    /// When the remote instance is read next (`Some(None)`: at the next pass).
    pub next_read: Option<Option<ReadPlan>>,
    /// A token not yet in the Secret (`Some(None)`: it is there now).
    pub pending_token: Option<Option<(i64, SecretString, String)>>,
    /// The auth hash of the token now in the Secret.
    pub auth_hash: Option<String>,
    /// The digest of a grant code from `spec.oauth.codeSecretRef` now used.
    pub used_grant: Option<String>,
    /// The approval value just warned about as approving nothing.
    pub ignored_approval: Option<String>,
    /// The `reauthenticate-requested-at` value just carried out (in case the status write that
    /// echoes it fails: never a second PUT for one request).
    pub reauthenticated_for: Option<String>,
    /// The pass succeeded: the backoff starts again.
    pub succeeded: bool,
    /// The pass searched by the ownership tag alone (see [`crate::controller::Memory`]).
    pub own_tag_searched: bool,
    /// When the pass first found the instance as a create another process may have in flight
    /// (`Some(None)`: it records its remote instance now).
    pub inherited_at: Option<Option<Instant>>,
}

/// What [`conclude`] needs besides the report.
#[derive(Debug, Clone, Copy)]
pub struct Facts<'a> {
    /// `metadata.generation`.
    pub generation: Option<i64>,
    /// The resource's name (for the commands in messages).
    pub name: &'a str,
    /// The token Secret's name.
    pub secret_name: &'a str,
    /// The `reconcile-requested-at` annotation.
    pub reconcile_requested: Option<&'a str>,
    /// When a stall that may be fixed outside Kubernetes is looked at again.
    pub recheck: Duration,
    /// The pass's time.
    pub now: &'a Time,
}

/// The one function from a pass's report and outcome to the status to write, the Event that goes
/// with it, and when to look again.
pub fn conclude(
    old: &ConnectorInstanceStatus,
    report: &Report,
    outcome: &Result<Duration, Error>,
    facts: &Facts<'_>,
) -> Decision {
    let status = status::after_pass(old, report, outcome.is_ok(), facts);
    decide(status, outcome, facts.secret_name, facts.recheck, facts.now)
}

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

/// The outcome of a deletion that could not finish, for the resource at `generation`.
pub fn decide_deletion_blocked(
    old: &ConnectorInstanceStatus,
    generation: Option<i64>,
    err: &Error,
    recheck: Duration,
    now: &Time,
) -> Decision {
    let class = err.class();
    let status = status::deletion_blocked(old, generation, err, class, now);
    let next = Next::after_failure(class, recheck);
    Decision { status, event: Some((EventType::Warning, "DeletionBlocked", err.to_string())), next }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let decision = decide_deletion_blocked(&status, Some(3), &gone, Duration::from_secs(300), &t(1));
        assert_eq!(decision.next, Next::AwaitChange);
        assert_eq!(decision.status.observed_generation, Some(3));
        let stalled = crate::api::find_condition(&decision.status.conditions, crate::api::STALLED).unwrap();
        assert!(
            stalled.message.contains("openconnectors.io/abandon")
                && stalled.message.contains("remote instance 5")
        );
        let down = Error::Platform(PlatformError::Transient { message: "503".into(), retry_after: None });
        assert_eq!(
            decide_deletion_blocked(&status, Some(3), &down, Duration::from_secs(300), &t(1)).next,
            Next::Backoff
        );
    }
}
