//! Restarting the workloads of `spec.tokenSecret.rolloutRestart` when the token Secret's content
//! changes: whether a restart is due ([`due`], pure), and the patches that perform it.
//!
//! A restart sets the pod template annotation `openconnectors.io/token-sha256` to the Secret's
//! content digest, which rolls the workload the way `kubectl rollout restart` does. What was
//! restarted for which content is recorded in `status.rolloutRestart`, so a restart happens once
//! per content change: not again on a resync, and again after a crash between the Secret write
//! and the patches.

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde::de::DeserializeOwned;
use serde_json::json;

use super::context::Context;
use super::error::Error;
use super::inputs::selector_matches;
use crate::api::{FIELD_MANAGER, POD_ANNOTATION_TOKEN_SHA256, RolloutStatus, RolloutTarget, WorkloadKind};

/// Digits of the content digest kept in status and put on pod templates.
pub const DIGEST_DIGITS: usize = 12;

/// What to do about the workloads after the token Secret holds content `digest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Due {
    /// Nothing: they were restarted for this content already (or none are named).
    Nothing,
    /// Record the content without restarting: the workloads started with it (the Secret was just
    /// created, or restarts were only now asked for and the content did not change).
    Record,
    /// Restart them.
    Restart,
}

/// Whether the workloads need a restart. `recorded` is `status.rolloutRestart`; `before` gives
/// the content digest of the Secret as this pass found it (`None`: it did not exist), asked for
/// only when nothing is recorded.
pub fn due(
    targets: &[RolloutTarget],
    recorded: Option<&RolloutStatus>,
    before: impl FnOnce() -> Option<String>,
    digest: &str,
) -> Due {
    if targets.is_empty() {
        return Due::Nothing;
    }
    match recorded {
        Some(r) if r.content_sha256 == digest => Due::Nothing,
        // A record of other content: the content changed since the last restart (perhaps in a
        // pass that failed before restarting).
        Some(_) => Due::Restart,
        None => match before() {
            Some(before) if before != digest => Due::Restart,
            _ => Due::Record,
        },
    }
}

/// Restarts every workload `targets` names in `namespace`. Named workloads that do not exist are
/// skipped (they start with the new content when they are created). Returns `Kind/name` of each.
pub async fn restart(
    ctx: &Context,
    namespace: &str,
    targets: &[RolloutTarget],
    digest: &str,
) -> Result<Vec<String>, Error> {
    let mut restarted = Vec::new();
    for target in targets {
        let names = match target.kind {
            WorkloadKind::Deployment => restart_kind::<Deployment>(ctx, namespace, target, digest).await?,
            WorkloadKind::StatefulSet => restart_kind::<StatefulSet>(ctx, namespace, target, digest).await?,
            WorkloadKind::DaemonSet => restart_kind::<DaemonSet>(ctx, namespace, target, digest).await?,
        };
        for name in names {
            let shown = format!("{}/{name}", target.kind);
            if !restarted.contains(&shown) {
                restarted.push(shown);
            }
        }
    }
    Ok(restarted)
}

/// The status record after a restart (or a record without one) for content `digest`.
pub fn record(digest: &str, restarted: Vec<String>, now: Option<Time>) -> RolloutStatus {
    RolloutStatus { content_sha256: digest.to_string(), time: now, restarted }
}

async fn restart_kind<K>(
    ctx: &Context,
    namespace: &str,
    target: &RolloutTarget,
    digest: &str,
) -> Result<Vec<String>, Error>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
{
    let api: Api<K> = Api::namespaced(ctx.client.clone(), namespace);
    let names = match (&target.name, &target.selector) {
        (Some(name), _) => vec![name.clone()],
        (None, Some(selector)) => api
            .list_metadata(&ListParams::default())
            .await
            .map_err(|err| forbidden_or(err, target.kind, "list", namespace))?
            .items
            .into_iter()
            .filter(|w| selector_matches(selector, w.metadata.labels.as_ref()))
            .map(|w| w.name_any())
            .collect(),
        (None, None) => Vec::new(),
    };
    let patch = json!({ "spec": { "template": { "metadata": { "annotations": { POD_ANNOTATION_TOKEN_SHA256: digest } } } } });
    let params = PatchParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PatchParams::default() };
    let mut restarted = Vec::new();
    for name in names {
        match api.patch(&name, &params, &Patch::Merge(&patch)).await {
            Ok(_) => restarted.push(name),
            Err(kube::Error::Api(status)) if status.code == 404 => {}
            Err(err) => return Err(forbidden_or(err, target.kind, "patch", namespace)),
        }
    }
    Ok(restarted)
}

/// A 403 says what RBAC is missing (looked at again after a while: a chart upgrade may grant it);
/// any other error is retried with backoff.
fn forbidden_or(err: kube::Error, kind: WorkloadKind, verb: &str, namespace: &str) -> Error {
    match err {
        kube::Error::Api(status) if status.code == 403 => Error::Recheck {
            reason: "RolloutRestartForbidden",
            message: format!(
                "the token Secret was written, but the operator may not {verb} {kind}s in namespace `{namespace}` to restart them (spec.tokenSecret.rolloutRestart); install the chart with rolloutRestart.enabled=true, or grant get, list and patch on deployments, statefulsets and daemonsets"
            ),
        },
        other => other.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target() -> RolloutTarget {
        RolloutTarget { kind: WorkloadKind::Deployment, name: Some("web".into()), selector: None }
    }

    #[test]
    fn restarts_once_per_content_change() {
        let targets = [target()];
        let rec = |d: &str| record(d, vec![], None);
        // (targets, recorded, content before this pass, content now) → due
        type Row<'a> = (&'a [RolloutTarget], Option<RolloutStatus>, Option<&'a str>, &'a str, Due);
        let rows: [Row<'_>; 8] = [
            (&[], None, Some("a"), "b", Due::Nothing),
            (&targets, Some(rec("b")), Some("b"), "b", Due::Nothing),
            (&targets, Some(rec("b")), Some("a"), "b", Due::Nothing),
            (&targets, Some(rec("a")), Some("b"), "b", Due::Restart),
            (&targets, Some(rec("a")), Some("a"), "b", Due::Restart),
            (&targets, None, Some("a"), "b", Due::Restart),
            (&targets, None, Some("b"), "b", Due::Record),
            (&targets, None, None, "b", Due::Record),
        ];
        for (targets, recorded, before, now, want) in rows {
            let found = || before.map(str::to_string);
            assert_eq!(due(targets, recorded.as_ref(), found, now), want, "{recorded:?} {before:?} {now}");
        }
    }
}
