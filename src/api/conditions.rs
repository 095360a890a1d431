//! `metav1.Condition` helpers with kstatus semantics (`Ready`, `Reconciling`, `Stalled`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition type: the resource is in its desired state.
pub const READY: &str = "Ready";
/// Condition type: the token works for the call a workload makes (`GET /instances` with
/// `Element <token>`), as last tested after a create or re-authentication, or on request.
pub const TOKEN_VERIFIED: &str = "TokenVerified";
/// Condition type: a re-authentication waits for an approval (`spec.reauthentication: Manual`);
/// present while it waits. `Ready` stays `True`: the token in the Secret still works.
pub const REAUTHENTICATION_PENDING: &str = "ReAuthenticationPending";
/// Condition type (kstatus): the operator is working towards the desired state.
pub const RECONCILING: &str = "Reconciling";
/// Condition type (kstatus): progress is impossible until the user changes something.
pub const STALLED: &str = "Stalled";

/// Sets a condition in `conditions`, keeping `lastTransitionTime` unless the status changed.
pub fn set_condition(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let status = if status { "True" } else { "False" };
    set_condition_status(conditions, type_, status, reason, message, observed_generation, now);
}

/// Like [`set_condition`], with the status as text (`"True"`, `"False"`, `"Unknown"`).
pub fn set_condition_status(
    conditions: &mut Vec<Condition>,
    type_: &str,
    status: &str,
    reason: &str,
    message: &str,
    observed_generation: Option<i64>,
    now: &Time,
) {
    let status = status.to_string();
    match conditions.iter_mut().find(|c| c.type_ == type_) {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = now.clone();
            }
            existing.status = status;
            existing.reason = reason.to_string();
            existing.message = message.to_string();
            existing.observed_generation = observed_generation;
        }
        None => conditions.push(Condition {
            type_: type_.to_string(),
            status,
            reason: reason.to_string(),
            message: message.to_string(),
            observed_generation,
            last_transition_time: now.clone(),
        }),
    }
}

/// Removes a condition (kstatus wants `Reconciling` and `Stalled` present only while true).
pub fn remove_condition(conditions: &mut Vec<Condition>, type_: &str) {
    conditions.retain(|c| c.type_ != type_);
}

/// The condition of a type, if present.
pub fn find_condition<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// Whether the condition of a type is present with status `True`.
pub fn is_condition_true(conditions: &[Condition], type_: &str) -> bool {
    find_condition(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap_or_default())
    }

    #[test]
    fn transition_time_changes_only_on_status_change() {
        let mut conditions = Vec::new();
        set_condition(&mut conditions, READY, false, "Creating", "creating", Some(1), &at(100));
        set_condition(&mut conditions, READY, false, "Creating", "still creating", Some(2), &at(200));
        assert_eq!(conditions[0].last_transition_time, at(100));
        assert_eq!(conditions[0].message, "still creating");
        assert_eq!(conditions[0].observed_generation, Some(2));
        set_condition(&mut conditions, READY, true, "Ready", "ok", Some(2), &at(300));
        assert_eq!(conditions[0].last_transition_time, at(300));
        assert!(is_condition_true(&conditions, READY));
        remove_condition(&mut conditions, READY);
        assert!(find_condition(&conditions, READY).is_none());
    }
}
