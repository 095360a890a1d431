//! The status of a ConnectorInstance: the only module that assigns its fields. What a pass found
//! and did ([`after_pass`]), and the conditions of each outcome (kstatus: `Ready`, and
//! `Reconciling` / `Stalled` only while true). Pure functions, tested below.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::outcome::{Facts, Report};
use super::step::Pass;
use crate::api::{
    ANNOTATION_ABANDON, ANNOTATION_APPROVE, ANNOTATION_PAUSED, ANNOTATION_REAUTHENTICATE_REQUESTED_AT,
    ConnectorInstanceStatus, LastAction, PlannedAction, READY, REAUTHENTICATION_PENDING, RECONCILING,
    STALLED, TOKEN_VERIFIED, remove_condition, set_condition,
};
use crate::controller::error::{Class, Error};

/// The status after a pass, before its outcome's conditions: what the report says the pass
/// found and did, on top of `old`. `ok`: the pass succeeded (what it learnt of the remote
/// instance is recorded then, or whenever it knows one).
pub fn after_pass(
    old: &ConnectorInstanceStatus,
    report: &Report,
    ok: bool,
    facts: &Facts<'_>,
) -> ConnectorInstanceStatus {
    let now = facts.now;
    let mut status = old.clone();
    status.observed_generation = facts.generation;
    if let Some(platform) = &report.platform {
        status.platform = Some(Box::new(platform.clone()));
    }
    if let Some(published) = &report.pass.authorization {
        status.authorization = Some(Box::new(published.clone()));
    }
    if let Some(approved) = &report.approved {
        status.last_approved = Some(approved.clone());
    }
    if let Some(planned) = &report.planned_action {
        status.planned_action = planned.clone();
    }
    if let Some(rollout) = &report.rollout {
        status.rollout_restart = rollout.clone();
    }
    if let Some(requested) = &report.reauthenticated_for {
        status.last_handled_reauthenticate_at = Some(requested.clone());
    }
    if let Some(test) = &report.token_test {
        token_tested(&mut status, test.instance_id, test.answer.as_ref().copied(), now);
        status.last_handled_test_at = test.requested.clone();
    }
    if ok || report.pass.known.instance_id.is_some() {
        record(&mut status, &report.pass, facts.secret_name, now);
    }
    if ok {
        status.last_handled_reconcile_at = facts.reconcile_requested.map(str::to_string);
    }
    reauthentication_pending(&mut status, facts.name, now);
    status
}

/// Copies what a pass learned of the remote instance into the status: its id, the name and tags
/// it carries, its flags, the token's digest, the action taken and when it authenticated.
pub fn record(status: &mut ConnectorInstanceStatus, pass: &Pass, secret_name: &str, now: &Time) {
    status.instance_id = pass.known.instance_id;
    status.applied_metadata_hash = pass.known.metadata_hash.clone();
    if pass.remote.is_some() {
        status.remote = pass.remote.clone();
    }
    if let Some(token) = &pass.token {
        status.token_secret_name = Some(secret_name.to_string());
        status.token_sha256 = Some(crate::api::token_sha256(token)[..12].to_string());
    }
    if let Some(action) = pass.action {
        status.last_action = Some(LastAction { type_: action, time: now.clone() });
    }
    if pass.authenticated {
        status.last_authenticated_time = Some(now.clone());
    }
}

/// The instance is authenticated and its token is in the Secret.
pub fn ready(status: &mut ConnectorInstanceStatus, secret_name: &str, now: &Time) {
    let generation = status.observed_generation;
    let mut message = match status.instance_id {
        Some(id) => format!("remote instance {id} is authenticated; its token is in Secret `{secret_name}`"),
        None => format!("token is in Secret `{secret_name}`"),
    };
    if status.planned_action.is_some() {
        message.push_str("; a re-authentication waits for approval (condition ReAuthenticationPending)");
    }
    set_condition(&mut status.conditions, READY, true, "Ready", &message, generation, now);
    remove_condition(&mut status.conditions, RECONCILING);
    remove_condition(&mut status.conditions, STALLED);
    // Authorized: no URL waits for a person any more.
    status.authorization = None;
}

/// `ReAuthenticationPending=True` while `status.plannedAction` shows a plan, saying what changed
/// and how to approve it; removed when no plan waits.
pub fn reauthentication_pending(status: &mut ConnectorInstanceStatus, name: &str, now: &Time) {
    match &status.planned_action {
        Some(plan) => {
            let message = plan_message(plan, name, status.instance_id);
            let generation = status.observed_generation;
            set_condition(
                &mut status.conditions,
                REAUTHENTICATION_PENDING,
                true,
                REAUTHENTICATION_PENDING,
                &message,
                generation,
                now,
            );
        }
        None => remove_condition(&mut status.conditions, REAUTHENTICATION_PENDING),
    }
}

/// What a planned re-authentication changes (key names only) and how to approve it.
pub fn plan_message(plan: &PlannedAction, name: &str, instance_id: Option<i64>) -> String {
    let what = instance_id.map_or("the remote instance".to_string(), |id| format!("remote instance {id}"));
    let requested = plan.changed_inputs.iter().any(|k| k == ANNOTATION_REAUTHENTICATE_REQUESTED_AT);
    let keys: Vec<String> = plan
        .changed_inputs
        .iter()
        .filter(|k| *k != ANNOTATION_REAUTHENTICATE_REQUESTED_AT)
        .map(|k| format!("`{k}`"))
        .collect();
    let changed = match (requested, keys.is_empty()) {
        (true, true) => {
            format!("a re-authentication was requested (annotation {ANNOTATION_REAUTHENTICATE_REQUESTED_AT})")
        }
        (true, false) => format!(
            "a re-authentication was requested (annotation {ANNOTATION_REAUTHENTICATE_REQUESTED_AT}) and configuration {} changed",
            keys.join(", ")
        ),
        (false, true) => "the configuration changed".to_string(),
        (false, false) => format!("configuration {} changed", keys.join(", ")),
    };
    format!(
        "{changed}: re-authenticating {what} waits for approval (spec.reauthentication: Manual; the current token keeps working); approve with `kubectl annotate connectorinstance {name} {ANNOTATION_APPROVE}={} --overwrite`",
        plan.approval
    )
}

/// Reconciliation of the resource at `generation` is paused by annotation.
pub fn paused(old: &ConnectorInstanceStatus, generation: Option<i64>, now: &Time) -> ConnectorInstanceStatus {
    let mut status = old.clone();
    status.observed_generation = generation;
    let message =
        format!("reconciliation is paused by annotation {ANNOTATION_PAUSED}; no platform calls are made");
    set_condition(&mut status.conditions, READY, false, "Paused", &message, generation, now);
    remove_condition(&mut status.conditions, RECONCILING);
    remove_condition(&mut status.conditions, STALLED);
    status
}

/// The outcome of a token test: the platform answered `answer` to the call a workload makes with
/// the token of remote instance `id`.
pub fn token_tested(
    status: &mut ConnectorInstanceStatus,
    id: i64,
    answer: Result<i64, &crate::platform::PlatformError>,
    now: &Time,
) {
    let generation = status.observed_generation;
    let (ok, reason, message) = match answer {
        Ok(owner) if owner == id => (
            true,
            "TokenAccepted",
            format!("GET /instances with the instance token answered with remote instance {id}"),
        ),
        Ok(owner) => (
            false,
            "TokenMismatch",
            format!("the token in the Secret belongs to remote instance {owner}, not {id}"),
        ),
        Err(err) => (false, "TokenRejected", format!("GET /instances with the instance token failed: {err}")),
    };
    set_condition(&mut status.conditions, TOKEN_VERIFIED, ok, reason, &message, generation, now);
    status.token_tested_time = Some(now.clone());
}

/// A pass failed.
pub fn failed(status: &mut ConnectorInstanceStatus, err: &Error, class: Class, now: &Time) {
    let generation = status.observed_generation;
    let reason = err.reason();
    let message = err.to_string();
    match class {
        Class::Stalled | Class::StalledRecheck => {
            set_condition(&mut status.conditions, READY, false, reason, &message, generation, now);
            set_condition(&mut status.conditions, STALLED, true, reason, &message, generation, now);
            remove_condition(&mut status.conditions, RECONCILING);
        }
        Class::Waiting => {
            set_condition(&mut status.conditions, READY, false, reason, &message, generation, now);
            set_condition(&mut status.conditions, RECONCILING, true, reason, &message, generation, now);
            remove_condition(&mut status.conditions, STALLED);
        }
        Class::Transient => {
            set_condition(&mut status.conditions, RECONCILING, true, reason, &message, generation, now);
            remove_condition(&mut status.conditions, STALLED);
            // A Ready instance stays Ready while a transient failure is retried: its token works.
            let ready =
                crate::api::find_condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
            if !ready {
                set_condition(&mut status.conditions, READY, false, reason, &message, generation, now);
            }
        }
    }
}

/// The remote instance of the resource at `generation` cannot be deleted.
pub fn deletion_blocked(
    old: &ConnectorInstanceStatus,
    generation: Option<i64>,
    err: &Error,
    class: Class,
    now: &Time,
) -> ConnectorInstanceStatus {
    let mut status = old.clone();
    status.observed_generation = generation;
    let instance_id = status.instance_id;
    let what = instance_id.map_or("the remote instance".to_string(), |id| format!("remote instance {id}"));
    let message = format!(
        "deletion is blocked: cannot delete {what}: {err}. Fix the cause, or set annotation {ANNOTATION_ABANDON}: \"true\" to release the resource without deleting {what}"
    );
    set_condition(&mut status.conditions, READY, false, "DeletionBlocked", &message, generation, now);
    if class == Class::Transient {
        set_condition(
            &mut status.conditions,
            RECONCILING,
            true,
            "DeletionBlocked",
            &message,
            generation,
            now,
        );
        remove_condition(&mut status.conditions, STALLED);
    } else {
        set_condition(&mut status.conditions, STALLED, true, "DeletionBlocked", &message, generation, now);
        remove_condition(&mut status.conditions, RECONCILING);
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{find_condition, is_condition_true};
    use crate::platform::PlatformError;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn invalid_input_stalls_and_fixing_it_clears_stalled() {
        let mut status = ConnectorInstanceStatus { observed_generation: Some(3), ..Default::default() };
        let err = Error::invalid("PlatformNotFound", "ConnectorPlatform `p` not found");
        failed(&mut status, &err, err.class(), &t(1));
        assert!(is_condition_true(&status.conditions, STALLED));
        assert!(!is_condition_true(&status.conditions, READY));
        assert_eq!(find_condition(&status.conditions, READY).unwrap().reason, "PlatformNotFound");
        assert!(find_condition(&status.conditions, RECONCILING).is_none());
        ready(&mut status, "s", &t(2));
        assert!(is_condition_true(&status.conditions, READY));
        assert!(find_condition(&status.conditions, STALLED).is_none());
        assert_eq!(find_condition(&status.conditions, READY).unwrap().observed_generation, Some(3));
    }

    #[test]
    fn transient_failure_keeps_a_ready_instance_ready() {
        let mut status = ConnectorInstanceStatus::default();
        ready(&mut status, "s", &t(1));
        let err = Error::Platform(PlatformError::RateLimited { retry_after: None });
        failed(&mut status, &err, err.class(), &t(2));
        assert!(is_condition_true(&status.conditions, READY));
        let reconciling = find_condition(&status.conditions, RECONCILING).unwrap();
        assert_eq!(reconciling.reason, "RateLimited");
        assert_eq!(find_condition(&status.conditions, READY).unwrap().last_transition_time, t(1));
    }

    #[test]
    fn unauthorized_is_stalled_with_a_recheck_and_says_so() {
        let err = Error::Platform(PlatformError::Unauthorized { message: "bad secrets".into() });
        assert_eq!(err.class(), Class::StalledRecheck);
        let mut status = ConnectorInstanceStatus::default();
        failed(&mut status, &err, err.class(), &t(1));
        let stalled = find_condition(&status.conditions, STALLED).unwrap();
        assert_eq!(stalled.reason, "Unauthorized");
        assert!(stalled.message.contains("credentials"), "{}", stalled.message);
    }

    #[test]
    fn a_planned_reauthentication_keeps_ready_and_says_how_to_approve() {
        let mut status = ConnectorInstanceStatus { instance_id: Some(7), ..Default::default() };
        status.planned_action = Some(Box::new(PlannedAction {
            type_: crate::api::PlannedActionType::ReAuthenticate,
            changed_inputs: vec!["zendesk.subdomain".into(), "password".into()],
            planned_time: t(1),
            approval: "3".into(),
        }));
        reauthentication_pending(&mut status, "desk", &t(1));
        ready(&mut status, "desk-token", &t(1));
        assert!(is_condition_true(&status.conditions, READY));
        assert!(find_condition(&status.conditions, READY).unwrap().message.contains("waits for approval"));
        let pending = find_condition(&status.conditions, REAUTHENTICATION_PENDING).unwrap();
        assert_eq!((pending.status.as_str(), pending.reason.as_str()), ("True", "ReAuthenticationPending"));
        assert!(pending.message.contains("`zendesk.subdomain`, `password`"), "{}", pending.message);
        assert!(
            pending.message.contains("kubectl annotate connectorinstance desk openconnectors.io/approve=3"),
            "{}",
            pending.message
        );
        status.planned_action.as_mut().unwrap().changed_inputs.clear();
        reauthentication_pending(&mut status, "desk", &t(2));
        let pending = find_condition(&status.conditions, REAUTHENTICATION_PENDING).unwrap();
        assert!(pending.message.starts_with("the configuration changed"), "{}", pending.message);
        assert_eq!(pending.last_transition_time, t(1));
        status.planned_action = None;
        reauthentication_pending(&mut status, "desk", &t(3));
        ready(&mut status, "desk-token", &t(3));
        assert!(find_condition(&status.conditions, REAUTHENTICATION_PENDING).is_none());
        assert!(!find_condition(&status.conditions, READY).unwrap().message.contains("approval"));
    }

    #[test]
    fn paused_and_deletion_blocked_conditions() {
        let status = paused(&ConnectorInstanceStatus::default(), Some(2), &t(1));
        assert_eq!(find_condition(&status.conditions, READY).unwrap().reason, "Paused");
        assert_eq!(status.observed_generation, Some(2));
        let status = ConnectorInstanceStatus { instance_id: Some(5), ..status };
        let err = Error::invalid("CredentialsNotFound", "credentials Secret `ns/c` not found");
        let status = deletion_blocked(&status, Some(3), &err, err.class(), &t(2));
        assert_eq!(status.observed_generation, Some(3));
        let stalled = find_condition(&status.conditions, STALLED).unwrap();
        assert!(
            stalled.message.contains(ANNOTATION_ABANDON) && stalled.message.contains("remote instance 5")
        );
    }

    #[test]
    fn a_token_test_records_what_the_platform_answered() {
        let cases: [(Result<i64, PlatformError>, &str, &str); 3] = [
            (Ok(7), "True", "TokenAccepted"),
            (Ok(8), "False", "TokenMismatch"),
            (
                Err(PlatformError::Unauthorized { message: "invalid Element token".into() }),
                "False",
                "TokenRejected",
            ),
        ];
        for (answer, want_status, want_reason) in cases {
            let mut status = ConnectorInstanceStatus { observed_generation: Some(1), ..Default::default() };
            token_tested(&mut status, 7, answer.as_ref().copied(), &t(5));
            let c = find_condition(&status.conditions, TOKEN_VERIFIED).unwrap();
            assert_eq!((c.status.as_str(), c.reason.as_str()), (want_status, want_reason), "{}", c.message);
            assert_eq!(status.token_tested_time, Some(t(5)));
        }
    }

    fn facts<'a>(now: &'a Time, requested: Option<&'a str>) -> Facts<'a> {
        Facts {
            generation: Some(4),
            name: "crm",
            secret_name: "crm-token",
            reconcile_requested: requested,
            recheck: std::time::Duration::from_secs(300),
            now,
        }
    }

    #[test]
    fn after_a_pass_what_it_learnt_is_recorded_when_it_succeeded_or_knows_an_instance() {
        let now = t(9);
        let old = ConnectorInstanceStatus { observed_generation: Some(3), ..Default::default() };
        let mut report = Report::default();
        report.pass.token = Some(secrecy::SecretString::from("token-1"));
        // Failed before anything was known: only the generation moves.
        let failed = after_pass(&old, &report, false, &facts(&now, Some("r1")));
        assert_eq!(failed.observed_generation, Some(4));
        assert_eq!((failed.instance_id, failed.token_sha256.as_deref()), (None, None));
        assert_eq!(failed.last_handled_reconcile_at, None, "a request is handled by a pass that succeeds");
        // Failed after a create: the instance is recorded, so it is never created twice.
        report.pass.known.instance_id = Some(7);
        report.pass.action = Some(crate::api::ActionType::Created);
        let failed = after_pass(&old, &report, false, &facts(&now, Some("r1")));
        assert_eq!(failed.instance_id, Some(7));
        assert_eq!(failed.last_action.as_ref().map(|a| a.time.clone()), Some(now.clone()));
        assert_eq!(failed.token_secret_name.as_deref(), Some("crm-token"));
        // Succeeded: the reconcile request is handled too.
        let done = after_pass(&old, &report, true, &facts(&now, Some("r1")));
        assert_eq!(done.last_handled_reconcile_at.as_deref(), Some("r1"));
    }

    #[test]
    fn after_a_pass_only_what_it_reached_replaces_the_old_values() {
        let now = t(9);
        let old = ConnectorInstanceStatus {
            planned_action: Some(Box::new(PlannedAction {
                type_: crate::api::PlannedActionType::ReAuthenticate,
                changed_inputs: vec!["a".into()],
                planned_time: t(1),
                approval: "3-b".into(),
            })),
            last_approved: Some("2-b".into()),
            ..Default::default()
        };
        // A pass that stopped before the review keeps the plan shown and its condition.
        let kept = after_pass(&old, &Report::default(), false, &facts(&now, None));
        assert_eq!(kept.planned_action, old.planned_action);
        assert!(is_condition_true(&kept.conditions, REAUTHENTICATION_PENDING));
        // One that reviewed it and found nothing held clears both.
        let report = Report { planned_action: Some(None), approved: Some("3-b".into()), ..Report::default() };
        let cleared = after_pass(&old, &report, true, &facts(&now, None));
        assert_eq!((cleared.planned_action, cleared.last_approved.as_deref()), (None, Some("3-b")));
        assert!(find_condition(&cleared.conditions, REAUTHENTICATION_PENDING).is_none());
    }
}
