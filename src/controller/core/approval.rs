//! Approvals of `spec.reauthentication: Manual`: the value of annotation
//! `openconnectors.io/approve` that approves the plan in effect, the plan shown in status, and the
//! Warning for a value that approves nothing ([`review`] after the steps of a pass).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::Note;
use super::desired::DesiredRemote;
use super::outcome::Report;
use super::status;
use super::step::reauthentication_held;
use crate::api::{PlannedAction, PlannedActionType};
use crate::controller::events::EventType;

/// out already (`last_approved`: a referenced Secret changed again, which does not bump the
/// generation), the generation with the next `.N` (`3.2`, `3.3`, ...). No value is ever used
/// twice, and one written before its plan was shown (or for inputs that changed since) approves
/// nothing.
pub fn approval_value(
    generation: i64,
    binding: &str,
    planned: Option<&str>,
    last_approved: Option<&str>,
) -> String {
    let prefix = generation.to_string();
    let base_of = |value: &str| value.split_once('-').map_or(value, |(base, _)| base).to_string();
    let of_generation = |value: &str| base_of(value).split('.').next() == Some(prefix.as_str());
    let bound = |value: &str| value.split_once('-').is_some_and(|(_, b)| b == binding);
    if let Some(planned) = planned.filter(|p| of_generation(p) && bound(p) && Some(*p) != last_approved) {
        return planned.to_string();
    }
    let base = match last_approved.filter(|last| of_generation(last)) {
        None => prefix,
        Some(last) => {
            let carried_out =
                base_of(last).split_once('.').and_then(|(_, n)| n.parse::<u32>().ok()).unwrap_or(1);
            format!("{prefix}.{}", carried_out.saturating_add(1))
        }
    };
    format!("{base}-{binding}")
}

/// The plan to show while a re-authentication is held: the one shown already (with its time) if
/// its approval value is the same, else a new one planned `now`.
pub fn planned_action(
    previous: Option<&PlannedAction>,
    approval: String,
    changed_inputs: Vec<String>,
    now: &Time,
) -> PlannedAction {
    let planned_time =
        previous.filter(|p| p.approval == approval).map_or_else(|| now.clone(), |p| p.planned_time.clone());
    PlannedAction { type_: PlannedActionType::ReAuthenticate, changed_inputs, planned_time, approval }
}

/// The Warning to give once for an approval annotation that approves nothing: not the plan's
/// value (`approval`, when a plan waits) and not the value carried out last.
pub fn ignored_approval(
    annotation: Option<&str>,
    approval: Option<&str>,
    last_approved: Option<&str>,
) -> Option<String> {
    let given = annotation?;
    if Some(given) == approval || Some(given) == last_approved {
        return None;
    }
    let given: String = given.chars().take(64).collect();
    Some(match approval {
        Some(approval) => format!(
            "openconnectors.io/approve `{given}` does not approve the planned re-authentication; its value is `{approval}` (status.plannedAction.approval)"
        ),
        None => format!("openconnectors.io/approve `{given}` names no planned action; nothing is done"),
    })
}

/// What [`review`] looks at besides the pass.
#[derive(Debug)]
pub struct Review<'a> {
    /// The remote instance the manifest wants.
    pub desired: &'a DesiredRemote,
    /// The approval value of the plan in effect.
    pub approval: &'a str,
    /// The `openconnectors.io/approve` annotation.
    pub annotation: Option<&'a str>,
    /// The plan shown in status before the pass.
    pub shown: Option<&'a PlannedAction>,
    /// `status.lastApproved` before the pass.
    pub last_approved: Option<&'a str>,
    /// The annotation value warned about already (once is enough).
    pub warned: Option<&'a str>,
    /// The resource's name (for the command in the message).
    pub name: &'a str,
    /// The pass's time.
    pub now: &'a Time,
}

/// After the steps: a re-authentication carried out uses up its approval value; one held shows
/// as a plan naming the changed input keys (`changed`, asked only then) with a Normal Event when
/// the plan is new; an annotation that approves nothing gets one Warning.
pub fn review(report: &mut Report, facts: &Review<'_>, changed: impl FnOnce() -> Vec<String>) {
    let pass = &report.pass;
    if pass.given.approved && pass.known.reauthenticated {
        report.approved = Some(facts.approval.to_string());
    }
    let held = reauthentication_held(facts.desired, &pass.given, &pass.known);
    let plan =
        held.then(|| Box::new(planned_action(facts.shown, facts.approval.to_string(), changed(), facts.now)));
    let mut notes = Vec::new();
    if let Some(plan) = plan.as_ref().filter(|p| facts.shown.map(|o| &o.approval) != Some(&p.approval)) {
        let message = status::plan_message(plan, facts.name, pass.known.instance_id);
        notes.push(Note {
            type_: EventType::Normal,
            reason: "ReAuthenticationPending",
            message,
            action: false,
        });
    }
    let last_approved = report.approved.as_deref().or(facts.last_approved);
    let ignored =
        ignored_approval(facts.annotation, plan.as_ref().map(|p| p.approval.as_str()), last_approved);
    if let Some(message) = ignored
        && facts.warned != facts.annotation
    {
        report.remember.ignored_approval = facts.annotation.map(str::to_string);
        notes.push(Note { type_: EventType::Warning, reason: "ApprovalIgnored", message, action: false });
    }
    report.pass.notes.extend(notes);
    report.planned_action = Some(plan);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn approval_values_name_one_plan_each_and_are_never_used_twice() {
        // (generation, binding of the inputs, plan shown, value carried out last, expected)
        let cases = [
            (3, "b", None, None, "3-b"),
            (3, "b", Some("3-b"), None, "3-b"),
            (4, "b", Some("3-b"), None, "4-b"),
            (3, "b", None, Some("3-b"), "3.2-b"),
            (3, "b", None, Some("3.2-b"), "3.3-b"),
            (3, "b", Some("3.2-b"), Some("3-b"), "3.2-b"),
            (3, "b", Some("3-b"), Some("3-b"), "3.2-b"),
            (4, "b", None, Some("3.5-b"), "4-b"),
            (31, "b", None, Some("3-b"), "31-b"),
            (3, "b", None, Some("3.x-b"), "3.2-b"),
            // A referenced Secret changed after the plan was shown: another value.
            (3, "c", Some("3-b"), None, "3-c"),
            (3, "c", Some("3.2-b"), Some("3-a"), "3.2-c"),
            // Values of before (no binding) are of their generation still.
            (3, "b", None, Some("3"), "3.2-b"),
            (3, "b", Some("3"), None, "3-b"),
        ];
        for (generation, binding, planned, last, expected) in cases {
            assert_eq!(
                approval_value(generation, binding, planned, last),
                expected,
                "{generation} {binding} {planned:?} {last:?}"
            );
        }
    }

    #[test]
    fn an_approval_that_approves_nothing_is_warned_about_and_a_carried_out_one_is_not() {
        assert_eq!(ignored_approval(None, Some("3"), None), None);
        assert_eq!(ignored_approval(Some("3"), Some("3"), None), None);
        assert_eq!(ignored_approval(Some("3"), Some("4"), Some("3")), None, "the last one stays set");
        let wrong = ignored_approval(Some("2"), Some("3"), None).unwrap();
        assert!(wrong.contains("`2`") && wrong.contains("`3`"), "{wrong}");
        let nothing = ignored_approval(Some(&"9".repeat(500)), None, None).unwrap();
        assert!(nothing.contains("names no planned action") && nothing.len() < 200, "{nothing}");
    }

    #[test]
    fn a_plan_keeps_its_time_while_its_approval_value_stays() {
        let first = planned_action(None, "3".into(), vec!["a".into()], &t(1));
        assert_eq!((first.planned_time.clone(), first.approval.as_str()), (t(1), "3"));
        let again = planned_action(Some(&first), "3".into(), vec!["a".into(), "b".into()], &t(2));
        assert_eq!(again.planned_time, t(1));
        assert_eq!(again.changed_inputs, ["a", "b"]);
        assert_eq!(planned_action(Some(&first), "4".into(), vec![], &t(2)).planned_time, t(2));
    }
}
