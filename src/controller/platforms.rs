//! Reconcile of ConnectorPlatform and ClusterConnectorPlatform: a cheap credentials check
//! (`GET /instances?pageSize=1`) sets their `Ready` condition. It is also the probe of a platform
//! that an instance found broken (see [`super::health`]): while broken, it checks once per
//! backoff period and no instance calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use secrecy::ExposeSecret;
use serde_json::json;

use super::context::{ClusterPlatformStatus, Context};
use super::core::health::Health;
use super::error::{Class, Error};
use super::inputs;
use crate::api::{
    ClusterConnectorPlatform, ConnectorPlatform, FIELD_MANAGER, PlatformKind, PlatformRef, PlatformSettings,
    PlatformStatus, READY, RECONCILING, STALLED, remove_condition, set_condition,
};

/// How often a healthy platform's credentials are checked again.
const RECHECK: Duration = Duration::from_secs(300);

/// Reconciles a namespaced platform.
pub async fn reconcile_namespaced(
    platform: Arc<ConnectorPlatform>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let namespace = platform.namespace().unwrap_or_default();
    let api: Api<ConnectorPlatform> = Api::namespaced(ctx.client.clone(), &namespace);
    let reference = PlatformRef { kind: PlatformKind::ConnectorPlatform, name: platform.name_any() };
    let status = platform.status.clone().unwrap_or_default();
    let version = inputs::object_version(platform.as_ref());
    let generation = platform.meta().generation;
    let settings = platform.spec.settings.clone();
    let (outcome, retry) = check(&ctx, &reference, Some(&namespace), settings, &version).await;
    let api_version = ConnectorPlatform::api_version(&());
    let target = Target {
        name: &platform.name_any(),
        api_version: api_version.as_ref(),
        kind: "ConnectorPlatform",
        writes: ctx.settings.platform_status,
    };
    finish(&ctx, api, target, status, generation, outcome, retry).await
}

/// Reconciles a cluster platform.
pub async fn reconcile_cluster(
    platform: Arc<ClusterConnectorPlatform>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let api: Api<ClusterConnectorPlatform> = Api::all(ctx.client.clone());
    let reference = PlatformRef { kind: PlatformKind::ClusterConnectorPlatform, name: platform.name_any() };
    let status = platform.status.clone().unwrap_or_default();
    let version = inputs::object_version(platform.as_ref());
    let generation = platform.meta().generation;
    let settings = platform.spec.settings.clone();
    let selector = platform.spec.namespace_selector.as_ref();
    if let Some(namespace) = &ctx.settings.watched_namespace
        && !allows(&ctx, selector, namespace).await
    {
        // The namespace this run watches may not use it: no instance here needs its health, so
        // neither its credentials Secret (perhaps in a namespace this operator may not read) nor
        // the platform is called; the operators of the namespaces it serves check it.
        return Ok(Action::await_change());
    }
    // A run of one namespace (just found allowed) writes when no namespace before its own in the
    // process's list is allowed too; a run of all namespaces writes them all; a shard that leaves
    // platform status to another, none.
    let serving = ctx.settings.platform_status
        && match (&ctx.settings.watched_namespace, &ctx.settings.cluster_platform_status) {
            (Some(own), ClusterPlatformStatus::Selecting(namespaces)) => {
                let mut before = Vec::new();
                for name in namespaces.iter().take_while(|name| *name != own) {
                    before.push((name.as_str(), allows(&ctx, selector, name).await));
                }
                writer(&before, own, namespaces) == Some(own.as_str())
            }
            _ => serves(&ctx, selector).await,
        };
    let (outcome, retry) = check(&ctx, &reference, None, settings, &version).await;
    let api_version = ClusterConnectorPlatform::api_version(&());
    // This operator's own lack of rights (a Secret it may not read) says nothing about the
    // platform: the operators of the namespaces it serves report on it.
    let own_rbac = matches!(&outcome, Err(Error::Kube(kube::Error::Api(status))) if status.code == 403);
    let writes = !own_rbac && serving;
    let target = Target {
        name: &platform.name_any(),
        api_version: api_version.as_ref(),
        kind: "ClusterConnectorPlatform",
        writes,
    };
    finish(&ctx, api, target, status, generation, outcome, retry).await
}

/// Which run of a process writes a cluster platform's status, given whether each namespace
/// before `own` in the process's list (`namespaces`, in order) is allowed; `own` itself is known
/// to be allowed. The first allowed namespace's run writes, so exactly one run does wherever the
/// allowed namespaces stand in the list. `own` not in the list: nobody here.
fn writer<'a>(before: &[(&'a str, bool)], own: &'a str, namespaces: &[String]) -> Option<&'a str> {
    if !namespaces.iter().any(|name| name == own) {
        return None;
    }
    Some(before.iter().find(|(_, allowed)| *allowed).map_or(own, |(name, _)| *name))
}

/// Whether this run writes the status of a cluster platform with `selector` (see
/// [`ClusterPlatformStatus`]): it watches all namespaces, or one of its namespaces is allowed.
async fn serves(ctx: &Context, selector: Option<&LabelSelector>) -> bool {
    let namespaces = match &ctx.settings.cluster_platform_status {
        ClusterPlatformStatus::Off => return false,
        ClusterPlatformStatus::All => return true,
        ClusterPlatformStatus::Selecting(namespaces) => namespaces,
    };
    for name in namespaces {
        if allows(ctx, selector, name).await {
            return true;
        }
    }
    false
}

/// Whether a cluster platform with `selector` allows namespace `name` (read for its labels; an
/// unreadable namespace is not allowed).
async fn allows(ctx: &Context, selector: Option<&LabelSelector>, name: &str) -> bool {
    let Some(selector) = selector else {
        return false;
    };
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    match api.get_opt(name).await {
        Ok(Some(namespace)) => inputs::selector_matches(selector, namespace.metadata.labels.as_ref()),
        Ok(None) => false,
        Err(err) => {
            tracing::debug!(%err, namespace = %name, "cannot read a watched namespace's labels");
            false
        }
    }
}

/// The platform object whose status a check ends in, and whether this run writes it.
struct Target<'a> {
    name: &'a str,
    api_version: &'a str,
    kind: &'static str,
    writes: bool,
}

/// Backoff for platform objects after a transient failure.
pub fn error_policy<K>(_platform: Arc<K>, err: &Error, _ctx: Arc<Context>) -> Action {
    Action::requeue(err.retry_after().unwrap_or(Duration::from_secs(30)))
}

/// Checks the platform's credentials, at most once per backoff period while it is broken (see
/// [`super::health`]). Returns the outcome and, after a failure, when to check again.
async fn check(
    ctx: &Context,
    reference: &PlatformRef,
    namespace: Option<&str>,
    settings: PlatformSettings,
    version: &str,
) -> (Result<String, Error>, Option<Duration>) {
    let resolved = match inputs::resolve_credentials(ctx, reference, namespace, settings, version).await {
        Ok(resolved) => resolved,
        Err(err) => return (Err(err), None),
    };
    let client = match ctx.platform_client(&resolved) {
        Ok(client) => client,
        Err(err) => return (Err(err), None),
    };
    let key = &resolved.fingerprint;
    if let Some((err, wait)) = ctx.health.with(key, |h| h.claim_probe(Instant::now())) {
        return (Err(err.into()), Some(wait));
    }
    let secrets = resolved.credentials().map(ExposeSecret::expose_secret);
    match client.check_credentials().await.map_err(|err| err.redact(&secrets)) {
        Ok(()) => {
            ctx.health.with(key, Health::succeeded);
            (Ok(format!("credentials accepted by {}", client.base_url())), None)
        }
        Err(err) => {
            let cap = ctx.settings.max_backoff;
            let (reported, wait) = ctx.health.with(key, |h| h.probe_failed(err, Instant::now(), cap));
            (Err(reported.into()), Some(wait))
        }
    }
}

async fn finish<K>(
    ctx: &Context,
    api: Api<K>,
    target: Target<'_>,
    old: PlatformStatus,
    generation: Option<i64>,
    outcome: Result<String, Error>,
    retry: Option<Duration>,
) -> Result<Action, Error>
where
    K: Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    let Target { name, api_version, kind, writes } = target;
    let now = Time(Timestamp::now());
    let mut new = old.clone();
    new.observed_generation = generation;
    let conditions = &mut new.conditions;
    let result = match &outcome {
        Ok(message) => {
            set_condition(conditions, READY, true, "CredentialsAccepted", message, generation, &now);
            remove_condition(conditions, STALLED);
            remove_condition(conditions, RECONCILING);
            Ok(Action::requeue(RECHECK))
        }
        Err(err) => {
            let message = err.to_string();
            set_condition(conditions, READY, false, err.reason(), &message, generation, &now);
            match err.class() {
                Class::Stalled | Class::StalledRecheck => {
                    set_condition(conditions, STALLED, true, err.reason(), &message, generation, &now);
                    remove_condition(conditions, RECONCILING);
                    Ok(Action::requeue(retry.unwrap_or(RECHECK)))
                }
                Class::Transient | Class::Waiting => {
                    set_condition(conditions, RECONCILING, true, err.reason(), &message, generation, &now);
                    remove_condition(conditions, STALLED);
                    // The platform's health says when to probe again; other failures back off.
                    retry.map(Action::requeue).ok_or(())
                }
            }
        }
    };
    ctx.metrics.outcome(kind, outcome.as_ref().map(|_| "ok").unwrap_or_else(Error::metric_label));
    if new != old && writes {
        let patch = json!({ "apiVersion": api_version, "kind": kind, "status": new });
        api.patch_status(name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch)).await?;
    }
    match (result, outcome) {
        (Ok(action), _) => Ok(action),
        (Err(()), Err(err)) => Err(err),
        (Err(()), Ok(_)) => Ok(Action::requeue(RECHECK)),
    }
}

#[cfg(test)]
mod tests {
    use super::writer;

    #[test]
    fn the_first_allowed_namespace_of_the_process_writes_wherever_it_stands() {
        let list: Vec<String> = ["a", "b", "c"].iter().map(|s| s.to_string()).collect();
        // (allowed namespaces, the run asking, what it is told writes)
        let cases: &[(&[&str], &str, Option<&str>)] = &[
            (&["a"], "a", Some("a")),
            (&["b"], "b", Some("b")),
            (&["c"], "c", Some("c")),
            (&["a", "c"], "c", Some("a")),
            (&["b", "c"], "c", Some("b")),
            (&["b", "c"], "b", Some("b")),
            (&["a", "b", "c"], "b", Some("a")),
            (&["c"], "x", None),
        ];
        for (allowed, own, expected) in cases {
            let before: Vec<(&str, bool)> = list
                .iter()
                .take_while(|name| name.as_str() != *own)
                .map(|name| (name.as_str(), allowed.contains(&name.as_str())))
                .collect();
            assert_eq!(writer(&before, own, &list), *expected, "allowed {allowed:?}, run {own}");
        }
    }
}
