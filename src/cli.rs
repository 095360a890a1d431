//! What `kubectl connector` shows and says, without I/O: the one-screen status of an instance, the
//! annotations each command sets, what a command waits for, and the errors in the operator's words.
//! The binary (`src/bin/kubectl-connector.rs`) reads the cluster and calls these.

use k8s_openapi::api::core::v1::Event;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::ResourceExt;
use serde_json::json;

use crate::api::{
    ANNOTATION_ABANDON, ANNOTATION_PAUSED, ANNOTATION_REAUTHENTICATE_REQUESTED_AT,
    ANNOTATION_RECONCILE_REQUESTED_AT, ANNOTATION_TEST_REQUESTED_AT, ConnectorInstance,
    ConnectorInstanceStatus, READY, REAUTHENTICATION_PENDING, TOKEN_VERIFIED, find_condition,
};

/// Events shown at most by `status`.
pub const EVENTS_SHOWN: usize = 5;

/// A command that asks the operator for something by annotation, and the echo it waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Reconcile now (`reconcile-requested-at`, echoed in `lastHandledReconcileAt`).
    Reconcile,
    /// Test the token (`test-requested-at`, echoed in `lastHandledTestAt`).
    Test,
    /// Re-authenticate (`reauthenticate-requested-at`, echoed in `lastHandledReauthenticateAt`).
    Reauthenticate,
}

impl Request {
    /// The annotation the request sets.
    pub fn annotation(self) -> &'static str {
        match self {
            Request::Reconcile => ANNOTATION_RECONCILE_REQUESTED_AT,
            Request::Test => ANNOTATION_TEST_REQUESTED_AT,
            Request::Reauthenticate => ANNOTATION_REAUTHENTICATE_REQUESTED_AT,
        }
    }

    /// The operator's echo of the request in `status`.
    pub fn echo(self, status: &ConnectorInstanceStatus) -> Option<&str> {
        match self {
            Request::Reconcile => status.last_handled_reconcile_at.as_deref(),
            Request::Test => status.last_handled_test_at.as_deref(),
            Request::Reauthenticate => status.last_handled_reauthenticate_at.as_deref(),
        }
    }

    /// What a request handled with `value` did, in one line.
    pub fn outcome(self, ci: &ConnectorInstance) -> String {
        let status = ci.status.clone().unwrap_or_default();
        let condition = |type_: &str| {
            find_condition(&status.conditions, type_)
                .map(|c| format!("{} {} ({}): {}", c.type_, c.status, c.reason, c.message))
                .unwrap_or_else(|| format!("{type_}: not reported"))
        };
        match self {
            Request::Reconcile => format!("reconciled: {}", condition(READY)),
            Request::Test => format!("tested: {}", condition(TOKEN_VERIFIED)),
            Request::Reauthenticate => format!(
                "re-authenticated remote instance {}: the token Secret `{}` holds token sha256 {}",
                status.instance_id.map_or("?".into(), |id| id.to_string()),
                status.token_secret_name.as_deref().unwrap_or("?"),
                status.token_sha256.as_deref().unwrap_or("?"),
            ),
        }
    }
}

/// Why an instance cannot show what a command needs, if it cannot: no status from the operator.
pub fn not_reconciled(ci: &ConnectorInstance) -> Option<String> {
    let status = ci.status.as_ref();
    let observed = status.and_then(|s| s.observed_generation);
    if observed.is_some_and(|g| g >= 0) {
        return None;
    }
    Some(format!(
        "ConnectorInstance {}/{} has no status from the operator yet: the operator is not running, or does not watch namespace `{}` (its --namespace flag, chart value watchNamespaces); if it was created a moment ago, try again",
        ci.namespace().unwrap_or_default(),
        ci.name_any(),
        ci.namespace().unwrap_or_default()
    ))
}

/// A Kubernetes refusal in plain words: which verb on which resource is missing.
pub fn forbidden(verb: &str, resource: &str, namespace: &str) -> String {
    format!(
        "you may not {verb} {resource} in namespace `{namespace}`: ask for a Role with verb `{verb}` on `{resource}` (kubectl auth can-i {verb} {resource} -n {namespace})"
    )
}

/// The value of annotation `openconnectors.io/approve` that approves the plan shown, with the
/// plan in words; an error when no plan waits.
pub fn approval(ci: &ConnectorInstance) -> Result<(String, String), String> {
    let status = ci.status.clone().unwrap_or_default();
    let Some(plan) = status.planned_action.as_deref() else {
        return Err(format!(
            "no re-authentication waits for approval on {}/{} (status.plannedAction is empty): nothing to approve",
            ci.namespace().unwrap_or_default(),
            ci.name_any()
        ));
    };
    let words = find_condition(&status.conditions, REAUTHENTICATION_PENDING)
        .map(|c| c.message.clone())
        .unwrap_or_else(|| format!("re-authentication for changed inputs {:?}", plan.changed_inputs));
    Ok((plan.approval.clone(), words))
}

/// What abandoning leaves behind, for the question asked before it.
pub fn abandon_warning(ci: &ConnectorInstance) -> String {
    let status = ci.status.clone().unwrap_or_default();
    let remote = status
        .instance_id
        .map_or("any remote instance it created".to_string(), |id| format!("remote instance {id}"));
    format!(
        "{ANNOTATION_ABANDON}=true: when {}/{} is deleted, the operator releases it without deleting {remote} on the platform. The remote instance and its token keep working and are no longer managed by anyone; delete them on the platform yourself if they are not needed.",
        ci.namespace().unwrap_or_default(),
        ci.name_any()
    )
}

/// Whether `ci` is paused by annotation.
pub fn is_paused(ci: &ConnectorInstance) -> bool {
    ci.annotations().get(ANNOTATION_PAUSED).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

/// The stand-in token `render` shows where the real one goes.
pub const STAND_IN_TOKEN: &str = "<token>";

/// Renders `template` (a `spec.tokenSecret.template`, YAML) for `ci` offline, with the
/// operator's own engine and limits, and a stand-in for the token (and for the platform's
/// secrets in `authorization`): the Secret's type, labels, annotations of the template and each
/// key's value, or why it does not render.
pub fn render_text(ci: &ConnectorInstance, template_yaml: &str) -> Result<String, String> {
    let template: crate::api::TokenSecretTemplate = serde_norway::from_str(template_yaml)
        .map_err(|e| format!("the template is not a spec.tokenSecret.template: {e}"))?;
    let mut ci = ci.clone();
    ci.metadata.uid.get_or_insert_with(|| "00000000-0000-0000-0000-000000000000".into());
    ci.spec.token_secret.get_or_insert_with(Default::default).template = Some(template);
    let status = ci.status.clone().unwrap_or_default();
    let token = secrecy::SecretString::from(STAND_IN_TOKEN);
    let authorization = crate::controller::token_secret::wants_authorization(&ci).then(|| {
        secrecy::SecretString::from(format!(
            "User <user secret>, Organization <organization secret>, Element {STAND_IN_TOKEN}"
        ))
    });
    let base_url =
        status.platform.as_ref().map(|p| p.base_url.clone()).unwrap_or_else(|| "<base URL>".into());
    let content = crate::controller::token_secret::TokenSecretContent {
        token: &token,
        instance_id: status.instance_id.unwrap_or_default(),
        base_url: &base_url,
        connector: &ci.spec.connector,
        auth_hash: "",
        grant_sha256: None,
        authorization: authorization.as_ref(),
        applied_inputs: None,
    };
    let secret = crate::controller::token_secret::render(&ci, &content)
        .map_err(|e| e.to_string())?
        .ok_or("the instance has no UID")?;
    let mut out = format!(
        "Secret {} (type {})\n",
        crate::controller::token_secret::token_secret_name(&ci),
        secret.type_.as_deref().unwrap_or("Opaque")
    );
    let operator_keys =
        |key: &str| key.starts_with("openconnectors.io/") || key.starts_with("app.kubernetes.io/");
    for (kind, map) in
        [("label", secret.metadata.labels.as_ref()), ("annotation", secret.metadata.annotations.as_ref())]
    {
        for (key, value) in map.into_iter().flatten().filter(|(k, _)| !operator_keys(k)) {
            out.push_str(&format!("  {kind} {key}: {value}\n"));
        }
    }
    for (key, value) in secret.data.iter().flatten() {
        out.push_str(&format!("  {key}: {}\n", String::from_utf8_lossy(&value.0)));
    }
    Ok(out)
}

/// The platform's connector catalog, a line per connector, sorted by key.
pub fn elements_text(elements: &[crate::platform::Element]) -> String {
    let mut sorted: Vec<&crate::platform::Element> = elements.iter().collect();
    sorted.sort_by(|a, b| a.key.cmp(&b.key));
    let mut out = format!("  {:<28} {:<10} {:<12} {}\n", "KEY", "AUTH", "HUB", "NAME");
    for element in sorted {
        let auth = element
            .authentication_type
            .clone()
            .or_else(|| element.type_oauth.filter(|o| *o).map(|_| "oauth2".to_string()))
            .unwrap_or_else(|| "-".into());
        out.push_str(&format!(
            "  {:<28} {:<10} {:<12} {}\n",
            element.key.as_deref().unwrap_or("?"),
            auth,
            element.hub.as_deref().unwrap_or("-"),
            element.name.as_deref().unwrap_or("")
        ));
    }
    out.push_str("oauth2 connectors need spec.oauth; `kubectl connector connectors KEY --platform P` lists a connector's configuration keys.\n");
    out
}

/// The configuration keys of connector `key` as its catalog lists them, with what goes where.
pub fn catalog_text(key: &str, entries: &[crate::platform::ElementConfig]) -> String {
    let mut out = format!("Connector `{key}`: configuration keys\n");
    out.push_str(&format!("  {:<32} {:<9} {:<7} {}\n", "KEY", "REQUIRED", "SECRET", "NAME"));
    for entry in entries.iter().filter(|e| !e.hide_from_console) {
        out.push_str(&format!(
            "  {:<32} {:<9} {:<7} {}\n",
            entry.key,
            if entry.needs_user_value() { "yes" } else { "no" },
            if entry.is_secret() { "yes" } else { "no" },
            entry.name.as_deref().unwrap_or("")
        ));
    }
    out.push_str(
        "Set the keys in spec.configuration; secret ones (SECRET yes) in a Secret, through spec.configurationFrom; oauth.* keys come from spec.oauth.\n",
    );
    out
}

/// The one-screen status of an instance, in plain words: with its platform object's `Ready`
/// condition (`platform`, if it could be read) and its Events (`events`, newest last).
pub fn status_text(ci: &ConnectorInstance, platform: Option<&Condition>, events: &[Event]) -> String {
    let status = ci.status.clone().unwrap_or_default();
    let mut out = format!("ConnectorInstance {}/{}\n", ci.namespace().unwrap_or_default(), ci.name_any());
    let mut line = |label: &str, text: String| out.push_str(&format!("  {label:<13}{text}\n"));
    let ready = find_condition(&status.conditions, READY);
    line(
        "Ready:",
        ready.map_or("not reported yet".into(), |c| format!("{} ({}): {}", c.status, c.reason, c.message)),
    );
    if is_paused(ci) {
        line("Paused:", format!("yes ({ANNOTATION_PAUSED}): no platform calls until resumed"));
    }
    let remote = match (status.instance_id, status.remote.as_ref()) {
        (Some(id), Some(r)) => format!(
            "instance {id}, {}, {}",
            if r.valid == Some(false) { "authentication broken (valid: false)" } else { "valid" },
            if r.disabled == Some(true) { "disabled" } else { "enabled" }
        ),
        (Some(id), None) => format!("instance {id}"),
        (None, _) => "none yet".into(),
    };
    line("Remote:", remote);
    if let Some(p) = status.platform.as_deref() {
        let health = platform.map_or("health not readable".into(), |c| {
            format!("Ready {} ({}): {}", c.status, c.reason, c.message)
        });
        line("Platform:", format!("{} {} at {}", p.kind, p.name, p.base_url));
        line("", health);
    }
    let token = match (&status.token_secret_name, &status.token_sha256) {
        (Some(secret), Some(sha)) => format!("in Secret {secret} (sha256 {sha})"),
        (Some(secret), None) => format!("Secret {secret}"),
        _ => "no token yet".into(),
    };
    line("Token:", token);
    let tested = find_condition(&status.conditions, TOKEN_VERIFIED).map_or("never".into(), |c| {
        let when = status.token_tested_time.as_ref().map(|t| t.0.to_string()).unwrap_or_default();
        format!(
            "{when} {} ({}): {}",
            if c.status == "True" { "accepted" } else { "failed" },
            c.reason,
            c.message
        )
    });
    line("Token test:", tested);
    let action =
        status.last_action.as_ref().map_or("none".into(), |a| format!("{:?} at {}", a.type_, a.time.0));
    line("Last action:", action);
    let plan = match (
        status.planned_action.as_deref(),
        find_condition(&status.conditions, REAUTHENTICATION_PENDING),
    ) {
        (Some(plan), Some(c)) => format!("{} (approval {})", c.message, plan.approval),
        (Some(plan), None) => format!("re-authentication waits for approval {}", plan.approval),
        (None, _) => "none".into(),
    };
    line("Plan:", plan);
    if let Some(authorization) = status.authorization.as_deref() {
        line("Authorize:", format!("open {} before {}", authorization.url, authorization.expires_at.0));
    }
    if let Some(rollout) = status.rollout_restart.as_deref() {
        let restarted =
            if rollout.restarted.is_empty() { "none restarted".into() } else { rollout.restarted.join(", ") };
        line("Restarts:", format!("for content {}: {restarted}", rollout.content_sha256));
    }
    let shown: Vec<&Event> = events.iter().rev().take(EVENTS_SHOWN).collect();
    if shown.is_empty() {
        out.push_str("  Events:      none\n");
    } else {
        out.push_str("  Events:\n");
        for event in shown.into_iter().rev() {
            out.push_str(&format!(
                "    {:<8} {:<24} {}\n",
                event.type_.as_deref().unwrap_or(""),
                event.reason.as_deref().unwrap_or(""),
                event.message.as_deref().unwrap_or("")
            ));
        }
    }
    out
}

/// The same facts as JSON (`status -o json`).
pub fn status_json(
    ci: &ConnectorInstance,
    platform: Option<&Condition>,
    events: &[Event],
) -> serde_json::Value {
    let status = ci.status.clone().unwrap_or_default();
    let events: Vec<serde_json::Value> = events
        .iter()
        .rev()
        .take(EVENTS_SHOWN)
        .rev()
        .map(|e| json!({ "type": e.type_, "reason": e.reason, "message": e.message }))
        .collect();
    json!({
        "namespace": ci.namespace(),
        "name": ci.name_any(),
        "paused": is_paused(ci),
        "platformReady": platform,
        "status": status,
        "events": events,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The README's example instance, Ready, with a token test and three Events.
    fn support_desk() -> (ConnectorInstance, Vec<Event>) {
        let ci = serde_json::from_value(json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "support-desk", "namespace": "team-a", "generation": 2 },
            "spec": { "platformRef": { "name": "openconnectors" }, "connector": "zendesk" },
            "status": {
                "observedGeneration": 2,
                "instanceId": 4711,
                "tokenSecretName": "support-desk-token",
                "tokenSha256": "3f9a0c2b7e11",
                "platform": { "kind": "ConnectorPlatform", "name": "openconnectors",
                              "baseUrl": "https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2" },
                "remote": { "valid": true, "disabled": false },
                "lastAction": { "type": "ReAuthenticated", "time": "2026-01-12T09:30:04Z" },
                "tokenTestedTime": "2026-01-12T09:30:05Z",
                "conditions": [
                    { "type": "Ready", "status": "True", "reason": "Ready", "observedGeneration": 2,
                      "lastTransitionTime": "2026-01-12T09:30:04Z",
                      "message": "remote instance 4711 is authenticated; its token is in Secret `support-desk-token`" },
                    { "type": "TokenVerified", "status": "True", "reason": "TokenAccepted", "observedGeneration": 2,
                      "lastTransitionTime": "2026-01-12T09:30:05Z",
                      "message": "GET /instances with the instance token answered with remote instance 4711" },
                ],
            },
        }))
        .unwrap();
        let event = |type_: &str, reason: &str, message: &str| -> Event {
            serde_json::from_value(json!({
                "metadata": { "name": "e", "namespace": "team-a" },
                "involvedObject": {}, "type": type_, "reason": reason, "message": message,
            }))
            .unwrap()
        };
        let events = vec![
            event("Normal", "Created", "created remote instance 4711"),
            event("Normal", "ReAuthenticated", "re-authenticated remote instance 4711"),
        ];
        (ci, events)
    }

    /// The README shows `kubectl connector status` for its example; this keeps it honest.
    #[test]
    fn the_status_in_the_readme_is_what_the_plugin_prints() {
        let readme = include_str!("../README.md");
        let command = "$ kubectl connector status support-desk -n team-a";
        let start = readme.find(command).expect("the README shows the status command") + command.len() + 1;
        let shown = &readme[start..start + readme[start..].find("```").unwrap()];
        let (ci, events) = support_desk();
        let platform: Condition = serde_json::from_value(json!({
            "type": "Ready", "status": "True", "reason": "CredentialsAccepted", "lastTransitionTime": "2026-01-12T09:00:00Z",
            "message": "credentials accepted by https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2",
        }))
        .unwrap();
        assert_eq!(shown, status_text(&ci, Some(&platform), &events));
    }

    #[test]
    fn status_says_what_is_missing_and_what_waits() {
        let (mut ci, _) = support_desk();
        assert!(not_reconciled(&ci).is_none());
        let status = ci.status.as_mut().unwrap();
        status.planned_action = Some(Box::new(serde_json::from_value(json!({
            "type": "ReAuthenticate", "changedInputs": ["password"], "plannedTime": "2026-01-13T10:00:00Z",
            "approval": "3-5e0c1a2b",
        })).unwrap()));
        let (value, _) = approval(&ci).unwrap();
        assert_eq!(value, "3-5e0c1a2b");
        assert!(status_text(&ci, None, &[]).contains("approval 3-5e0c1a2b"));
        ci.status = Some(ConnectorInstanceStatus { observed_generation: Some(-1), ..Default::default() });
        let why = not_reconciled(&ci).unwrap();
        assert!(why.contains("does not watch namespace `team-a`"), "{why}");
        assert!(approval(&ci).unwrap_err().contains("nothing to approve"));
        assert!(status_text(&ci, None, &[]).contains("Ready:       not reported yet"));
        assert!(abandon_warning(&ci).contains("any remote instance it created"));
    }

    #[test]
    fn each_request_sets_its_annotation_and_reads_its_echo() {
        let status = ConnectorInstanceStatus {
            last_handled_reconcile_at: Some("a".into()),
            last_handled_test_at: Some("b".into()),
            last_handled_reauthenticate_at: Some("c".into()),
            ..Default::default()
        };
        let cases = [
            (Request::Reconcile, ANNOTATION_RECONCILE_REQUESTED_AT, "a"),
            (Request::Test, ANNOTATION_TEST_REQUESTED_AT, "b"),
            (Request::Reauthenticate, ANNOTATION_REAUTHENTICATE_REQUESTED_AT, "c"),
        ];
        for (request, annotation, echo) in cases {
            assert_eq!((request.annotation(), request.echo(&status)), (annotation, Some(echo)));
        }
    }

    #[test]
    fn render_shows_a_template_with_stand_ins_or_why_it_does_not_render() {
        let (ci, _) = support_desk();
        let text = render_text(&ci, "type: kubernetes.io/basic-auth\ndata:\n  password: \"{{ token }}\"\n  username: \"{{ name }}\"\n").unwrap();
        assert!(text.contains("Secret support-desk-token (type kubernetes.io/basic-auth)"), "{text}");
        assert!(text.contains("  password: <token>") && text.contains("  username: support-desk"), "{text}");
        assert!(text.contains("  instanceId: 4711"), "the default keys are merged: {text}");
        let broken = render_text(&ci, "data:\n  x: \"{{ token | nosuchfilter }}\"\n").unwrap_err();
        assert!(broken.contains("nosuchfilter"), "{broken}");
        let not_a_template = render_text(&ci, "- a list").unwrap_err();
        assert!(not_a_template.contains("not a spec.tokenSecret.template"), "{not_a_template}");
    }

    #[test]
    fn the_catalog_says_what_is_required_and_what_is_secret() {
        let entries: Vec<crate::platform::ElementConfig> = serde_json::from_value(json!([
            { "key": "username", "name": "User name", "required": true, "type": "TEXTFIELD_32" },
            { "key": "password", "name": "Password", "required": true, "type": "PASSWORD" },
            { "key": "base.url", "required": true, "defaultValue": "https://x", "hideFromConsole": true },
        ]))
        .unwrap();
        let text = catalog_text("zendesk", &entries);
        assert!(text.lines().any(|l| l.contains("username") && l.contains("yes       no")), "{text}");
        assert!(text.lines().any(|l| l.contains("password") && l.contains("yes       yes")), "{text}");
        assert!(!text.contains("base.url"), "hidden keys are not the user's: {text}");
    }
}
