//! What the operator knows of each platform configuration's health, shared by every instance on
//! it, so that a broken platform (wrong credentials, no permission, down) costs one probe per
//! backoff period instead of a call per instance per retry.
//!
//! The rules, for one platform configuration (base URL, credentials, CA bundle: a change of any
//! makes a new, healthy one):
//! - an instance's call that fails with 401, 403 or a transient failure (5xx, timeout, connection
//!   error) makes the platform *suspect*: a probe is requested (once) and, until it answers, the
//!   other instances make no calls and report the same error;
//! - the probe (the platform controller's `GET /instances?pageSize=1`) settles it: accepted →
//!   healthy; refused → *broken*, probed again after `base · 2^(n-1)` (capped), and meanwhile no
//!   instance calls;
//! - every instance reports the error that first made the platform suspect, word for word, until
//!   the platform's health changes: repeated failures write nothing;
//! - a 429 makes the platform *throttled* until its `Retry-After` (5 s without one, at most 5
//!   minutes): no instance calls until then, and then one instance tries (the others wait for
//!   its answer, for up to [`TRIAL_WAIT`]); a success makes it healthy, another 429 throttles it
//!   again. No probe: a platform that says 429 answers.
//!
//! Pure state transitions on [`Health`], with the time passed in; [`PlatformHealth`] holds them
//! per platform configuration.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::platform::PlatformError;

/// First wait before a broken platform is probed again.
pub const FIRST_RETRY: Duration = Duration::from_secs(5);
/// Longest a 429 throttles the platform, whatever its `Retry-After` says.
pub const MAX_THROTTLE: Duration = Duration::from_secs(300);
/// How long the other instances wait for the answer of the one that tries a throttled platform
/// again (longer than a request may take).
pub const TRIAL_WAIT: Duration = Duration::from_secs(30);

/// The health of one platform configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Health {
    /// Calls go through.
    #[default]
    Healthy,
    /// A call failed in a way that may concern the whole platform; a probe is on its way.
    Suspect {
        /// The failure, as every instance reports it.
        error: PlatformError,
    },
    /// The probe failed too: nothing calls until `retry_at`, when the probe tries again.
    Broken {
        /// The failure, as every instance reports it.
        error: PlatformError,
        /// Probes failed in a row.
        failures: u32,
        /// When the next probe may call.
        retry_at: Instant,
    },
    /// The platform answered 429: nothing calls until `until`; then one instance tries.
    Throttled {
        /// The 429, as every instance reports it.
        error: PlatformError,
        /// When the next call may go.
        until: Instant,
    },
}

/// Whether a failure may concern the whole platform rather than one call: wrong credentials,
/// no permission, or the platform not answering.
pub fn concerns_platform(err: &PlatformError) -> bool {
    matches!(
        err,
        PlatformError::Unauthorized { .. }
            | PlatformError::Forbidden { .. }
            | PlatformError::Transient { .. }
    )
}

/// The wait before probe `failures + 1`: `FIRST_RETRY · 2^(failures-1)`, capped.
pub fn retry_delay(failures: u32, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    FIRST_RETRY.saturating_mul(1 << exponent).min(cap).max(FIRST_RETRY.min(cap))
}

/// How long a 429 throttles the platform.
fn throttle_for(err: &PlatformError) -> Duration {
    err.retry_after().unwrap_or(FIRST_RETRY).clamp(Duration::from_secs(1), MAX_THROTTLE)
}

impl Health {
    /// Before an instance's call: the error to report instead of calling, if the platform is
    /// suspect or broken. A throttled platform is [`Health::admit`]'s to decide (it needs the time
    /// and lets one call through).
    pub fn gate(&self) -> Option<&PlatformError> {
        match self {
            Health::Healthy | Health::Throttled { .. } => None,
            Health::Suspect { error } | Health::Broken { error, .. } => Some(error),
        }
    }

    /// Before an instance's call at `now`: the error to report instead of calling. A throttled
    /// platform admits one call once its wait is over (the others then wait for that call's
    /// answer); `admitted`: this pass made a call already, so it may go on.
    pub fn admit(&mut self, now: Instant, admitted: bool) -> Option<PlatformError> {
        match self {
            Health::Throttled { .. } if admitted => None,
            Health::Throttled { error, until } if now < *until => Some(error.clone()),
            Health::Throttled { until, .. } => {
                *until = now + TRIAL_WAIT;
                None
            }
            other => other.gate().cloned(),
        }
    }

    /// An instance's call failed with `err` at `now`. Returns the error the instance is to report
    /// (the first one, if the platform is already suspect) and whether a probe must be requested.
    pub fn instance_failed(&mut self, err: PlatformError, now: Instant) -> (PlatformError, bool) {
        if matches!(err, PlatformError::RateLimited { .. }) {
            return match self {
                Health::Suspect { error } | Health::Broken { error, .. } => (error.clone(), false),
                // Throttled again: the first 429's words, the new wait.
                Health::Throttled { error, until } => {
                    *until = now + throttle_for(&err);
                    (error.clone(), false)
                }
                Health::Healthy => {
                    *self = Health::Throttled { error: err.clone(), until: now + throttle_for(&err) };
                    (err, false)
                }
            };
        }
        if !concerns_platform(&err) {
            return (err, false);
        }
        match self {
            Health::Healthy | Health::Throttled { .. } => {
                *self = Health::Suspect { error: err.clone() };
                (err, true)
            }
            Health::Suspect { error } | Health::Broken { error, .. } => (error.clone(), false),
        }
    }

    /// A call succeeded: the platform answers. Returns whether it was suspect or broken before
    /// (its status is then out of date; a throttle says nothing about the platform object).
    pub fn succeeded(&mut self) -> bool {
        let changed = matches!(self, Health::Suspect { .. } | Health::Broken { .. });
        *self = Health::Healthy;
        changed
    }

    /// Before the probe at `now`: `Some((error, wait))` when it must not call yet. Otherwise the
    /// probe is claimed (the next may go only after [`TRIAL_WAIT`], unless this one's answer comes
    /// first), so that of several runs sharing the platform one probes per backoff step.
    pub fn claim_probe(&mut self, now: Instant) -> Option<(PlatformError, Duration)> {
        match self {
            Health::Broken { error, retry_at, .. } if now < *retry_at => {
                Some((error.clone(), retry_at.saturating_duration_since(now)))
            }
            Health::Broken { retry_at, .. } => {
                *retry_at = now + TRIAL_WAIT;
                None
            }
            Health::Suspect { error } => {
                *self = Health::Broken { error: error.clone(), failures: 0, retry_at: now + TRIAL_WAIT };
                None
            }
            Health::Healthy | Health::Throttled { .. } => None,
        }
    }

    /// The probe failed with `err`. Returns the error to report and the wait before the next
    /// probe. A failure that does not concern the platform (a 404 of the probe) leaves it healthy.
    pub fn probe_failed(
        &mut self,
        err: PlatformError,
        now: Instant,
        cap: Duration,
    ) -> (PlatformError, Duration) {
        if matches!(err, PlatformError::RateLimited { .. }) {
            let wait = throttle_for(&err);
            *self = Health::Throttled { error: err.clone(), until: now + wait };
            return (err, wait);
        }
        if !concerns_platform(&err) {
            *self = Health::Healthy;
            return (err, cap);
        }
        let (error, failures) = match std::mem::take(self) {
            // The same kind of failure keeps its first wording, so nothing is rewritten.
            Health::Suspect { error } if same_kind(&error, &err) => (error, 1),
            Health::Broken { error, failures, .. } if same_kind(&error, &err) => {
                (error, failures.saturating_add(1))
            }
            _ => (err, 1),
        };
        let wait = retry_delay(failures, cap);
        *self = Health::Broken { error: error.clone(), failures, retry_at: now + wait };
        (error, wait)
    }
}

fn same_kind(a: &PlatformError, b: &PlatformError) -> bool {
    std::mem::discriminant(a) == std::mem::discriminant(b)
}

/// The health of every platform configuration in use, by its fingerprint; cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct PlatformHealth(Arc<Mutex<HashMap<String, Health>>>);

impl PlatformHealth {
    /// Runs `f` on the health of `key` (healthy if unknown). Only unhealthy ones are kept, and a
    /// healthy one that stays so (every call of every instance, in steady state) is not stored.
    pub fn with<R>(&self, key: &str, f: impl FnOnce(&mut Health) -> R) -> R {
        let Ok(mut map) = self.0.lock() else {
            return f(&mut Health::Healthy);
        };
        match map.get_mut(key) {
            Some(health) => {
                let result = f(health);
                if *health == Health::Healthy {
                    map.remove(key);
                }
                result
            }
            None => {
                let mut health = Health::Healthy;
                let result = f(&mut health);
                if health != Health::Healthy {
                    map.insert(key.to_string(), health);
                }
                result
            }
        }
    }

    /// The health of `key` (a copy).
    pub fn get(&self, key: &str) -> Health {
        self.0.lock().ok().and_then(|map| map.get(key).cloned()).unwrap_or_default()
    }

    /// Forgets every configuration of the platform whose fingerprint starts with `prefix#`
    /// except `keep` (the platform object or its Secrets changed).
    pub fn forget_others(&self, prefix: &str, keep: &str) {
        if let Ok(mut map) = self.0.lock() {
            map.retain(|key, _| key == keep || !key.starts_with(&format!("{prefix}#")));
        }
    }

    /// How many platform configurations are not healthy.
    pub fn unhealthy(&self) -> usize {
        self.0.lock().map(|map| map.len()).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CAP: Duration = Duration::from_secs(300);

    fn unauthorized(request: &str) -> PlatformError {
        PlatformError::Unauthorized {
            message: format!("GET /instances: Invalid secrets [requestId {request}]"),
        }
    }

    fn down() -> PlatformError {
        PlatformError::Transient { message: "GET /instances: connection refused".into(), retry_after: None }
    }

    #[test]
    fn only_credentials_permission_and_availability_concern_the_platform() {
        let cases = [
            (unauthorized("1"), true),
            (PlatformError::Forbidden { message: "no".into() }, true),
            (down(), true),
            (PlatformError::NotFound { message: "gone".into() }, false),
            (PlatformError::InvalidInput { status: 400, message: "bad".into() }, false),
            (PlatformError::Protocol { message: "odd".into() }, false),
        ];
        for (err, expected) in cases {
            assert_eq!(concerns_platform(&err), expected, "{err:?}");
            let mut health = Health::Healthy;
            let (reported, probe) = health.instance_failed(err.clone(), Instant::now());
            assert_eq!(reported, err);
            assert_eq!(probe, expected, "a probe only for platform-wide failures: {err:?}");
            assert_eq!(health.gate().is_some(), expected);
        }
    }

    #[test]
    fn a_429_throttles_the_fleet_until_retry_after_then_lets_one_instance_try() {
        let t0 = Instant::now();
        let limited = |secs| PlatformError::RateLimited { retry_after: Some(Duration::from_secs(secs)) };
        let mut health = Health::Healthy;
        let (first, probe) = health.instance_failed(limited(7), t0);
        assert!(!probe, "no probe: a platform that says 429 answers");
        // Until Retry-After, nobody calls, and everybody reports the first 429.
        for i in 0..50 {
            let now = t0 + Duration::from_millis(100 * i);
            assert_eq!(health.admit(now, false), Some(first.clone()));
        }
        // A call already in flight that gets a 429 too keeps the words and renews the wait.
        let (reported, _) = health.instance_failed(limited(7), t0 + Duration::from_secs(1));
        assert_eq!(reported, first);
        assert!(health.admit(t0 + Duration::from_secs(7), false).is_some(), "renewed to 8 s");
        // Then exactly one instance tries; the others wait for its answer.
        let after = t0 + Duration::from_secs(8);
        assert_eq!(health.admit(after, false), None, "one tries");
        assert_eq!(health.admit(after, false), Some(first.clone()), "the others wait");
        assert_eq!(health.admit(after, true), None, "the one that tries finishes its pass");
        // Another 429: throttled again; a success: healthy, with no news for the platform object.
        health.instance_failed(limited(3), after);
        assert!(health.admit(after + Duration::from_secs(2), false).is_some());
        assert!(health.admit(after + Duration::from_secs(3), false).is_none());
        assert!(!health.succeeded(), "a throttle is no news for the platform's status");
        assert_eq!(health, Health::Healthy);
        // A trial that never answers: another instance tries after TRIAL_WAIT.
        health.instance_failed(limited(1), t0);
        assert!(health.admit(t0 + Duration::from_secs(1), false).is_none());
        assert!(health.admit(t0 + Duration::from_secs(2), false).is_some());
        assert!(health.admit(t0 + Duration::from_secs(1) + TRIAL_WAIT, false).is_none());
        // Without Retry-After: 5 s; an absurd one: at most MAX_THROTTLE.
        let mut health = Health::Healthy;
        health.instance_failed(PlatformError::RateLimited { retry_after: None }, t0);
        assert!(health.admit(t0 + Duration::from_secs(4), false).is_some());
        assert!(health.admit(t0 + FIRST_RETRY, false).is_none());
        let mut health = Health::Healthy;
        health.instance_failed(limited(86_400), t0);
        assert!(health.admit(t0 + MAX_THROTTLE, false).is_none());
        // A platform-wide failure while throttled takes over (and asks for a probe).
        let mut health = Health::Healthy;
        health.instance_failed(limited(5), t0);
        let (_, probe) = health.instance_failed(unauthorized("z"), t0);
        assert!(probe);
        assert_eq!(health.admit(t0 + Duration::from_secs(60), false), Some(unauthorized("z")));
        // The probe meeting a 429 throttles instead of calling the platform healthy.
        let mut health = Health::Healthy;
        health.instance_failed(down(), t0);
        let (_, wait) = health.probe_failed(limited(9), t0, CAP);
        assert_eq!(wait, Duration::from_secs(9));
        assert!(matches!(health, Health::Throttled { .. }));
    }

    #[test]
    fn a_fleet_failing_together_requests_one_probe_and_reports_the_first_error() {
        let mut health = Health::Healthy;
        let (first, probe) = health.instance_failed(unauthorized("a"), Instant::now());
        assert!(probe);
        for i in 0..50 {
            let (reported, probe) = health.instance_failed(unauthorized(&i.to_string()), Instant::now());
            assert!(!probe, "one probe for the fleet");
            assert_eq!(reported, first, "word for word the first error: no status rewrites");
        }
        assert_eq!(health.gate(), Some(&first), "the others do not call");
    }

    #[test]
    fn a_failed_probe_backs_off_exponentially_to_the_cap_keeping_the_first_wording() {
        let t0 = Instant::now();
        let mut health = Health::Healthy;
        let (first, _) = health.instance_failed(unauthorized("a"), t0);
        let mut now = t0;
        let mut waits = Vec::new();
        for i in 0..10 {
            assert_eq!(health.claim_probe(now), None, "a probe is due");
            let (reported, wait) = health.probe_failed(unauthorized(&format!("p{i}")), now, CAP);
            assert_eq!(reported, first);
            assert!(health.claim_probe(now + wait / 2).is_some(), "no probe before the wait is over");
            waits.push(wait.as_secs());
            now += wait;
        }
        assert_eq!(waits, [5, 10, 20, 40, 80, 160, 300, 300, 300, 300]);
        // Over the first minute: probes at 0, 5, 15 and 35 s.
        assert_eq!(retry_delay(1, CAP) + retry_delay(2, CAP) + retry_delay(3, CAP), Duration::from_secs(35));
    }

    #[test]
    fn a_successful_call_or_probe_heals_and_says_whether_that_is_news() {
        let now = Instant::now();
        let mut health = Health::Healthy;
        assert!(!health.succeeded(), "healthy stays healthy quietly");
        health.instance_failed(down(), now);
        health.probe_failed(down(), now, CAP);
        assert!(health.succeeded());
        assert_eq!(health, Health::Healthy);
        assert_eq!(health.gate(), None);
    }

    #[test]
    fn a_different_failure_replaces_the_wording_and_restarts_the_backoff() {
        let now = Instant::now();
        let mut health = Health::Healthy;
        health.instance_failed(down(), now);
        health.probe_failed(down(), now, CAP);
        health.probe_failed(down(), now, CAP);
        let (reported, wait) = health.probe_failed(unauthorized("x"), now, CAP);
        assert_eq!(reported, unauthorized("x"));
        assert_eq!(wait, FIRST_RETRY);
    }

    #[test]
    fn a_probe_failure_of_another_kind_leaves_the_platform_healthy() {
        let now = Instant::now();
        let mut health = Health::Healthy;
        health.instance_failed(down(), now);
        let (_, _) = health.probe_failed(PlatformError::NotFound { message: "?".into() }, now, CAP);
        assert_eq!(health, Health::Healthy);
    }

    #[test]
    fn health_is_kept_per_configuration_and_forgotten_when_the_configuration_changes() {
        let store = PlatformHealth::default();
        store.with("ConnectorPlatform/ns/sim#1#10", |h| h.instance_failed(unauthorized("a"), Instant::now()));
        store.with("ConnectorPlatform/ns/other#1#3", |h| h.instance_failed(down(), Instant::now()));
        assert!(store.get("ConnectorPlatform/ns/sim#1#11").gate().is_none(), "new credentials: healthy");
        assert_eq!(store.unhealthy(), 2);
        store.forget_others("ConnectorPlatform/ns/sim", "ConnectorPlatform/ns/sim#1#11");
        assert_eq!(store.unhealthy(), 1, "the old credentials' entry is gone, the other platform's kept");
        store.with("ConnectorPlatform/ns/other#1#3", Health::succeeded);
        assert_eq!(store.unhealthy(), 0, "healthy entries are not kept");
    }

    #[test]
    fn of_several_runs_sharing_a_platform_one_probes_per_step() {
        let t0 = Instant::now();
        let mut health = Health::Healthy;
        health.instance_failed(unauthorized("a"), t0);
        assert_eq!(health.claim_probe(t0), None, "the first run probes");
        assert!(health.claim_probe(t0).is_some(), "the second waits for its answer");
        let (_, wait) = health.probe_failed(unauthorized("p"), t0, CAP);
        assert_eq!(wait, FIRST_RETRY, "the first probe's failure waits the first step");
        let due = t0 + wait;
        assert_eq!(health.claim_probe(due), None, "one run probes when the step is over");
        assert!(health.claim_probe(due).is_some(), "the other does not");
        // A claimed probe that never answers frees the slot after TRIAL_WAIT.
        assert_eq!(health.claim_probe(due + TRIAL_WAIT), None);
        assert!(health.gate().is_some(), "instances keep waiting meanwhile");
    }
}
