//! The controllers: ConnectorInstance (the product) and the two platform kinds (their `Ready`).
//!
//! A ConnectorInstance pass is a pipeline; each stage names its file:
//!
//! 0. `turns.rs`: instance changes queue in order; a pass waits for one of `--concurrency` permits.
//! 1. `reconcile.rs`: read the clock once ([`core::Now`]); the path from metadata ([`core::entry`]).
//! 2. [`inputs`]`::dereference`: everything the resource points at, read from the cluster.
//! 3. [`core::desired`]`::validate`: every check of those inputs, before any platform call.
//! 4. `execute.rs`: the steps the core chooses ([`core::step`]) on the platform (`ports.rs`:
//!    `Platform`), then the token Secret ([`token_secret`]), restarts, the token test (`Cluster`).
//! 5. [`core::outcome`]`::conclude`: the pass's report → the status ([`core::status`], the only
//!    module that assigns its fields), its Event and the next look.
//! 6. `execute.rs`: the status write (`settle`); `reconcile.rs`: Events, the requeue.
//!
//! Deletion runs [`core::deletion`] in `reconcile.rs`. A platform that fails for every instance
//! is probed once per backoff period for all of them ([`core::health`], `platforms.rs`).

mod cache;
mod context;
pub mod core;
mod error;
pub mod events;
mod execute;
mod grants;
pub mod inputs;
mod platforms;
mod ports;
mod reconcile;
mod rollout;
mod secret_cache;
mod template;
pub mod token_secret;
mod turns;
mod unclaimed;
mod wakeups;
mod writes;

use std::sync::Arc;
use std::time::Duration;

use futures::{FutureExt, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Secret;
use kube::api::Api;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{Controller, WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};

pub use cache::{CachedInstance, OwnedSecrets};
pub use context::{ClusterPlatformStatus, Context, Settings, resource_version};
pub use error::{Class, Error};
pub use reconcile::backoff;
pub use secret_cache::SecretCache;

use crate::api::{
    ClusterConnectorPlatform, ConnectorInstance, ConnectorPlatform, LABEL_MANAGED_BY, MANAGED_BY,
    PlatformKind,
};
use crate::metrics::Metrics;

/// Options of [`run`].
#[derive(Debug, Clone)]
pub struct RunOptions {
    /// Watch only this namespace (all namespaces when `None`).
    pub namespace: Option<String>,
    /// Reconcile only the instances this label selector matches (one shard of several).
    pub label_selector: Option<String>,
    /// ConnectorInstance reconciles running at once.
    pub concurrency: u16,
    /// Controller settings.
    pub settings: Settings,
    /// Name of this operator instance in Events.
    pub instance_name: Option<String>,
    /// Platform clients, health and catalogs, shared by the runs of one process.
    pub platforms: context::PlatformState,
}

impl Default for RunOptions {
    fn default() -> Self {
        Self {
            namespace: None,
            label_selector: None,
            concurrency: 64,
            settings: Settings::default(),
            instance_name: None,
            platforms: context::PlatformState::default(),
        }
    }
}

/// Runs the controllers for several namespaces in one process: one [`run`] per namespace, each
/// with its own watches (so that each needs only a Role in its namespace), sharing the metrics
/// and what is known of each platform (its client and rate limit, health, catalogs: see
/// [`context::PlatformState`]).
/// The status of a ClusterConnectorPlatform is written by one run only: that of the first of
/// `namespaces` its selector allows (see [`ClusterPlatformStatus::Selecting`]). Ready once every
/// run is.
/// An empty list means all namespaces (one [`run`]).
pub async fn run_namespaces(
    client: kube::Client,
    options: RunOptions,
    namespaces: &[String],
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ready: tokio::sync::watch::Sender<bool>,
) {
    if namespaces.len() <= 1 {
        let options = RunOptions { namespace: namespaces.first().cloned(), ..options };
        return run(client, options, metrics, shutdown, ready).await;
    }
    let shutdown = shutdown.shared();
    let mut runs = Vec::new();
    let mut readiness = Vec::new();
    for namespace in namespaces {
        let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
        readiness.push(ready_rx);
        let mut options = RunOptions { namespace: Some(namespace.clone()), ..options.clone() };
        options.settings.cluster_platform_status = match options.settings.cluster_platform_status {
            ClusterPlatformStatus::Off => ClusterPlatformStatus::Off,
            _ => ClusterPlatformStatus::Selecting(namespaces.to_vec()),
        };
        runs.push(run(client.clone(), options, metrics.clone(), shutdown.clone(), ready_tx));
    }
    let all_ready = async move {
        for mut rx in readiness {
            if rx.wait_for(|ready| *ready).await.is_err() {
                return futures::future::pending::<()>().await;
            }
        }
        let _ = ready.send(true);
        futures::future::pending::<()>().await
    };
    tokio::select! {
        _ = futures::future::join_all(runs) => {}
        _ = all_ready => {}
    }
}

/// Parses a duration such as `90s`, `10m`, `1h30m` or `500ms`.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(rest.len());
        let value: f64 = rest[..digits].parse().ok()?;
        rest = &rest[digits..];
        let (unit, len) = if rest.starts_with("ms") {
            (0.001, 2)
        } else if rest.starts_with('s') {
            (1.0, 1)
        } else if rest.starts_with('m') {
            (60.0, 1)
        } else if rest.starts_with('h') {
            (3600.0, 1)
        } else {
            return None;
        };
        rest = &rest[len..];
        total = total.checked_add(Duration::try_from_secs_f64(value * unit).ok()?)?;
    }
    Some(total)
}

fn api<K>(client: &kube::Client, namespace: Option<&str>) -> Api<K>
where
    K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// Runs the controllers until `shutdown` resolves. Readiness is signalled through `ready` once
/// the caches are filled.
pub async fn run(
    client: kube::Client,
    options: RunOptions,
    metrics: Metrics,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let events = events::EventPublisher::new(
        client.clone(),
        options.instance_name.clone().unwrap_or_else(|| "connector-operator".into()),
        metrics.clone(),
    );
    let namespace = options.namespace.as_deref();

    let memory = context::Memories::with_gauge(metrics.instance_memories.clone());
    let token_secrets = OwnedSecrets::default();
    let owned_secrets = owned_secrets(&client, namespace, memory.clone(), token_secrets.clone());
    let (instances, instance_writer) = reflector::store::<CachedInstance>();
    let instance_changes = instance_changes(
        &client,
        namespace,
        options.label_selector.as_deref(),
        memory.clone(),
        instance_writer,
        instances.clone(),
    );
    metrics.add_census(Arc::new(InstanceCensus(instances.clone())));
    let secret_cache = SecretCache::with_gauge(metrics.secret_cache_entries.clone());
    let (platform_store, platform_writer) = reflector::store::<ConnectorPlatform>();
    let (cluster_store, cluster_writer) = reflector::store::<ClusterConnectorPlatform>();
    let (namespaced_checks, namespaced_check_requests) = futures::channel::mpsc::unbounded();
    let (cluster_checks, cluster_check_requests) = futures::channel::mpsc::unbounded();
    let checks = context::PlatformChecks { namespaced: namespaced_checks, cluster: cluster_checks };
    let referenced_secrets = referenced_secrets(
        &client,
        namespace,
        secret_cache.clone(),
        checks.clone(),
        (platform_store.clone(), cluster_store.clone()),
    );
    let platforms = watcher(api::<ConnectorPlatform>(&client, namespace), watcher::Config::default())
        .default_backoff()
        .reflect(platform_writer)
        .touched_objects();
    // Without cluster platforms nothing cluster-scoped is watched (an install without cluster
    // rights): the store stays empty and the stream never yields.
    let cluster_platforms = if options.settings.cluster_platforms {
        watcher(Api::<ClusterConnectorPlatform>::all(client.clone()), watcher::Config::default())
            .default_backoff()
            .reflect(cluster_writer)
            .touched_objects()
            .boxed()
    } else {
        futures::stream::pending().boxed()
    };

    let due_passes = wakeups::due_passes(memory.clone(), instances.clone());
    let ctx = Arc::new(Context::new(
        client.clone(),
        events,
        metrics,
        settings_of_run(&options.settings, namespace, options.label_selector.is_some()),
        context::Stores {
            instances: instances.clone(),
            token_secrets: token_secrets.clone(),
            platforms: platform_store.clone(),
            cluster_platforms: cluster_store.clone(),
            secrets: secret_cache.clone(),
        },
        checks,
        memory,
        options.platforms.clone(),
        options.concurrency,
    ));

    // The instance watch's changes reach the controller in order, a bounded number under way; the
    // controller's own limit is off: every pass waits for its turn in `reconcile` (`turns.rs`).
    let instance_changes = turns::fifo(instance_changes.boxed(), ctx.turns.clone());
    let controller = Controller::for_stream(futures::stream::pending(), instances.clone())
        .reconcile_on(instance_changes)
        .reconcile_on(due_passes)
        .with_config(kube::runtime::controller::Config::default().concurrency(0));
    let shutdown = shutdown.shared();
    // No pass starts once shutting down; those running finish (within the grace period).
    let turns = ctx.turns.clone();
    let close_passes = shutdown.clone().map(move |()| turns.close());
    let instance_controller = controller
        .owns_stream(owned_secrets)
        .watches_stream(referenced_secrets, secret_mapper(&instances, &platform_store, &cluster_store))
        .watches_stream(
            platforms,
            platform_mapper::<ConnectorPlatform>(&instances, PlatformKind::ConnectorPlatform),
        )
        .watches_stream(
            cluster_platforms,
            platform_mapper::<ClusterConnectorPlatform>(&instances, PlatformKind::ClusterConnectorPlatform),
        )
        .graceful_shutdown_on(shutdown.clone())
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(err) = result {
                tracing::debug!(%err, "controller event");
            }
        });

    let requests = (namespaced_check_requests, cluster_check_requests);
    let platform_controllers = platform_controllers(&client, namespace, &ctx, requests, shutdown);

    let readiness = ready_once_listed(instances, token_secrets, platform_store, ready);
    tokio::select! {
        _ = async { futures::join!(instance_controller, platform_controllers, close_passes) } => {}
        _ = readiness => {}
    }
    tracing::info!("controllers stopped");
}

/// Says the run is ready once its caches of instances, token Secrets and platforms are listed;
/// never returns.
async fn ready_once_listed(
    instances: Store<CachedInstance>,
    token_secrets: OwnedSecrets,
    platforms: Store<ConnectorPlatform>,
    ready: tokio::sync::watch::Sender<bool>,
) {
    let (a, (), c) =
        futures::join!(instances.wait_until_ready(), token_secrets.listed(), platforms.wait_until_ready());
    if a.is_ok() && c.is_ok() {
        let _ = ready.send(true);
    }
    futures::future::pending::<()>().await;
}

/// The settings of one run: those of the process, for the namespace it watches (a run for one
/// namespace writes the status of the cluster platforms that serve it), and whether it is a shard
/// (it watches the instances of a label selector).
fn settings_of_run(settings: &Settings, namespace: Option<&str>, sharded: bool) -> Settings {
    let mut settings = settings.clone();
    settings.watched_namespace = namespace.map(str::to_string);
    settings.sharded = sharded;
    if let (Some(namespace), ClusterPlatformStatus::All) = (namespace, &settings.cluster_platform_status) {
        settings.cluster_platform_status = ClusterPlatformStatus::Selecting(vec![namespace.to_string()]);
    }
    settings
}

/// The controllers of the two platform kinds: a platform object is checked when it changes, and
/// when asked (`requests`: from its instances and from changes of its Secrets). Without cluster
/// platforms only the namespaced one runs.
async fn platform_controllers(
    client: &kube::Client,
    namespace: Option<&str>,
    ctx: &Arc<Context>,
    requests: (
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<ConnectorPlatform>>,
        futures::channel::mpsc::UnboundedReceiver<ObjectRef<ClusterConnectorPlatform>>,
    ),
    shutdown: impl std::future::Future<Output = ()> + Clone + Send + Sync + 'static,
) {
    let (namespaced_requests, cluster_requests) = requests;
    let namespaced = Controller::new(api::<ConnectorPlatform>(client, namespace), watcher::Config::default())
        .reconcile_on(namespaced_requests)
        .graceful_shutdown_on(shutdown.clone())
        .run(platforms::reconcile_namespaced, platforms::error_policy, ctx.clone())
        .for_each(|_| async {});
    let cluster = if ctx.settings.cluster_platforms {
        Controller::new(Api::<ClusterConnectorPlatform>::all(client.clone()), watcher::Config::default())
            .reconcile_on(cluster_requests)
            .graceful_shutdown_on(shutdown)
            .run(platforms::reconcile_cluster, platforms::error_policy, ctx.clone())
            .for_each(|_| async {})
            .boxed()
    } else {
        drop(cluster_requests);
        futures::future::ready(()).boxed()
    };
    futures::join!(namespaced, cluster);
}

/// The token Secrets this operator owns: label-filtered, kept in [`OwnedSecrets`] (they are
/// compared before writes). The echo of the operator's own write (the version it wrote last)
/// triggers nothing: the pass that wrote it already finished the work; any other change (an edit,
/// a deletion) does.
fn owned_secrets(
    client: &kube::Client,
    namespace: Option<&str>,
    own_writes: context::Memories,
    store: OwnedSecrets,
) -> impl futures::Stream<Item = Result<Secret, watcher::Error>> + Send + 'static {
    let owned_filter = watcher::Config::default().labels(&format!("{LABEL_MANAGED_BY}={MANAGED_BY}"));
    watcher(api::<Secret>(client, namespace), owned_filter)
        .default_backoff()
        .modify(token_secret::strip_unless_controlled)
        .inspect_ok(move |event| store.apply(event))
        .try_filter_map(move |event| {
            futures::future::ready(Ok(match event {
                watcher::Event::Apply(secret) if own_writes.is_own_write(&secret) => None,
                watcher::Event::Apply(secret)
                | watcher::Event::InitApply(secret)
                | watcher::Event::Delete(secret) => Some(secret),
                watcher::Event::Init | watcher::Event::InitDone => None,
            }))
        })
}

/// The ConnectorInstances to reconcile: on a change of spec (generation), annotations (pause,
/// reconcile request, abandon) or deletion (which bumps the generation), not on the operator's own
/// status writes (the digest of generation and annotations last passed on is remembered with the
/// instance: [`context::Memories::changed`]). What is remembered of an instance goes with it: at
/// its deletion (one without a finalizer is never reconciled again), and after a relist for those
/// deleted while the watch was away. With a label selector (a shard), only the instances it
/// matches: one relabeled out of it leaves this watch like a deleted one (nothing remote is
/// touched) and the shard it now matches takes it up.
fn instance_changes(
    client: &kube::Client,
    namespace: Option<&str>,
    label_selector: Option<&str>,
    forgetful: context::Memories,
    writer: reflector::store::Writer<CachedInstance>,
    existing: Store<CachedInstance>,
) -> impl futures::Stream<Item = Result<CachedInstance, watcher::Error>> + Send + 'static {
    let mut config = watcher::Config::default().any_semantic();
    if let Some(selector) = label_selector {
        config = config.labels(selector);
    }
    let news = forgetful.clone();
    watcher(api::<ConnectorInstance>(client, namespace), config)
        .default_backoff()
        .map_ok(|event| cache::map_event(&event, CachedInstance::new))
        .reflect(writer)
        .inspect(move |event| match event {
            Ok(watcher::Event::Apply(ci) | watcher::Event::InitApply(ci)) => {
                forgetful.seen(&ci.uid().unwrap_or_default(), resource_version(ci))
            }
            Ok(watcher::Event::Delete(ci)) => forgetful.remove(&ci.uid().unwrap_or_default()),
            Ok(watcher::Event::InitDone) => {
                let uids: std::collections::HashSet<String> =
                    existing.state().iter().filter_map(|ci| ci.uid()).collect();
                forgetful.retain(|uid| uids.contains(uid));
            }
            _ => {}
        })
        .applied_objects()
        .try_filter(move |ci| std::future::ready(news.changed(&ci.uid().unwrap_or_default(), ci.changes())))
}

/// All other Secrets, metadata only: a change maps to the instances that use the Secret, and keeps
/// the cache of referenced Secrets (credentials, configurationFrom) current. The token Secrets are
/// left out by the API server (the owned watch has them), so each token write is sent to this
/// process once, not twice. A changed or deleted credentials (or CA) Secret is checked by its
/// platform objects at once: a broken platform's next probe may be minutes away. Not on a
/// (re)list: the platform controllers check every platform when they start.
fn referenced_secrets(
    client: &kube::Client,
    namespace: Option<&str>,
    cache: SecretCache,
    checks: context::PlatformChecks,
    (platforms, cluster_platforms): (Store<ConnectorPlatform>, Store<ClusterConnectorPlatform>),
) -> impl futures::Stream<Item = Result<PartialObjectMeta<Secret>, watcher::Error>> + Send + 'static {
    let referenced_filter =
        watcher::Config::default().any_semantic().labels(&format!("{LABEL_MANAGED_BY}!={MANAGED_BY}"));
    let metadata_api: Api<PartialObjectMeta<Secret>> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    watcher(metadata_api, referenced_filter)
        .default_backoff()
        .inspect(move |event| {
            let Ok(event) = event else { return };
            cache.observe(event);
            if let watcher::Event::Apply(secret) | watcher::Event::Delete(secret) = event {
                for (kind, name, namespace) in platforms_using_secret(secret, &platforms, &cluster_platforms)
                {
                    let reference = crate::api::PlatformRef { kind, name };
                    checks.request(namespace.as_deref().unwrap_or_default(), &reference);
                }
            }
        })
        .touched_objects()
}

/// Maps a referenced Secret to the instances that use it (directly or through their platform).
fn secret_mapper(
    instances: &Store<CachedInstance>,
    platforms: &Store<ConnectorPlatform>,
    cluster_platforms: &Store<ClusterConnectorPlatform>,
) -> impl Fn(PartialObjectMeta<Secret>) -> Vec<ObjectRef<CachedInstance>> + Send + Sync + 'static {
    let (instances, platforms, cluster_platforms) =
        (instances.clone(), platforms.clone(), cluster_platforms.clone());
    move |secret| instances_using_secret(&secret, &instances, &platforms, &cluster_platforms)
}

/// Maps a platform object of kind `kind` to the instances that use it.
fn platform_mapper<K: Resource>(
    instances: &Store<CachedInstance>,
    kind: PlatformKind,
) -> impl Fn(K) -> Vec<ObjectRef<CachedInstance>> + Send + Sync + 'static {
    let instances = instances.clone();
    move |platform| instances_using_platform(&instances, kind, &platform.name_any(), platform.namespace())
}

/// The census of the ConnectorInstances of one run, from its cache.
struct InstanceCensus(Store<CachedInstance>);

impl crate::metrics::Census for InstanceCensus {
    fn census(&self) -> Vec<(crate::metrics::InstanceLabels, i64)> {
        census(&self.0)
    }

    fn conditions(&self) -> Vec<crate::metrics::InstanceConditionLabels> {
        let mut series = Vec::new();
        for ci in self.0.state() {
            let (namespace, name) = (ci.namespace().unwrap_or_default(), ci.name_any());
            let status = ci.status();
            let conditions = status.as_ref().map(|s| s.conditions.as_slice()).unwrap_or_default();
            if conditions.is_empty() {
                series.push(crate::metrics::InstanceConditionLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    condition: crate::api::READY.into(),
                    status: "Unknown".into(),
                    reason: "NotObserved".into(),
                });
            }
            for c in conditions {
                series.push(crate::metrics::InstanceConditionLabels {
                    namespace: namespace.clone(),
                    name: name.clone(),
                    condition: c.type_.clone(),
                    status: c.status.clone(),
                    reason: c.reason.clone(),
                });
            }
        }
        series
    }
}

/// ConnectorInstances by namespace, Ready status and reason.
fn census(instances: &Store<CachedInstance>) -> Vec<(crate::metrics::InstanceLabels, i64)> {
    let mut counts: std::collections::BTreeMap<(String, String, String), i64> = Default::default();
    for ci in instances.state() {
        let status = ci.status();
        let ready =
            status.as_ref().and_then(|s| crate::api::find_condition(&s.conditions, crate::api::READY));
        let (status, reason) = match ready {
            Some(c) => (c.status.clone(), c.reason.clone()),
            None => ("Unknown".to_string(), "NotObserved".to_string()),
        };
        *counts.entry((ci.namespace().unwrap_or_default(), status, reason)).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|((namespace, ready, reason), n)| {
            (crate::metrics::InstanceLabels { namespace, ready, reason }, n)
        })
        .collect()
}

fn instances_using_platform(
    instances: &Store<CachedInstance>,
    kind: PlatformKind,
    name: &str,
    namespace: Option<String>,
) -> Vec<ObjectRef<CachedInstance>> {
    instances
        .state()
        .iter()
        .filter(|ci| {
            ci.platform().kind == kind
                && ci.platform().name == name
                && (namespace.is_none() || ci.namespace() == namespace)
        })
        .map(|ci| turns::reference(ci.as_ref()))
        .collect()
}

/// The platform objects whose credentials or CA bundle `secret` is: (kind, name, namespace).
fn platforms_using_secret(
    secret: &PartialObjectMeta<Secret>,
    platforms: &Store<ConnectorPlatform>,
    cluster_platforms: &Store<ClusterConnectorPlatform>,
) -> Vec<(PlatformKind, String, Option<String>)> {
    let name = secret.name_any();
    let namespace = secret.namespace().unwrap_or_default();
    platforms
        .state()
        .iter()
        .filter(|p| {
            let settings = &p.spec.settings;
            let ca = settings.ca_bundle_secret_ref.as_ref().is_some_and(|ca| ca.name == name);
            (settings.credentials_secret_ref.name == name || ca)
                && p.namespace().as_deref() == Some(namespace.as_str())
        })
        .map(|p| (PlatformKind::ConnectorPlatform, p.name_any(), p.namespace()))
        .chain(
            cluster_platforms
                .state()
                .iter()
                .filter(|p| {
                    let creds = &p.spec.settings.credentials_secret_ref;
                    let uses_creds =
                        creds.name == name && creds.namespace.as_deref() == Some(namespace.as_str());
                    let uses_ca = p.spec.settings.ca_bundle_secret_ref.as_ref().is_some_and(|ca| {
                        ca.name == name && ca.namespace.as_deref() == Some(namespace.as_str())
                    });
                    uses_creds || uses_ca
                })
                .map(|p| (PlatformKind::ClusterConnectorPlatform, p.name_any(), None)),
        )
        .collect()
}

fn instances_using_secret(
    secret: &PartialObjectMeta<Secret>,
    instances: &Store<CachedInstance>,
    platforms: &Store<ConnectorPlatform>,
    cluster_platforms: &Store<ClusterConnectorPlatform>,
) -> Vec<ObjectRef<CachedInstance>> {
    if secret.labels().get(LABEL_MANAGED_BY).is_some_and(|v| v == MANAGED_BY) {
        return Vec::new();
    }
    let name = secret.name_any();
    let namespace = secret.namespace().unwrap_or_default();
    let credential_of = platforms_using_secret(secret, platforms, cluster_platforms);
    instances
        .state()
        .iter()
        .filter(|ci| {
            let same_namespace = ci.namespace().as_deref() == Some(namespace.as_str());
            // A Secret of the token's name that is not ours (a conflict) going away, or ours being
            // deleted, matters too.
            let token_name = same_namespace && ci.token_secret_name() == name;
            let referenced = same_namespace && ci.referenced_secrets().any(|s| s == name);
            let credentials = credential_of.iter().any(|(kind, platform, platform_ns)| {
                ci.platform().kind == *kind
                    && &ci.platform().name == platform
                    && (platform_ns.is_none() || ci.namespace() == *platform_ns)
            });
            token_name || referenced || credentials
        })
        .map(|ci| turns::reference(ci.as_ref()))
        .collect()
}

/// How long the operator waits for in-flight reconciles on shutdown before it exits anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(20);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("1h30m"), Some(Duration::from_secs(5400)));
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_duration(""), None);
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("10d"), None);
        assert_eq!(parse_duration("99999999999999999999h"), None);
    }

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(300);
        for _ in 0..50 {
            let first = backoff(1, cap);
            assert!(first >= Duration::from_millis(500) && first < Duration::from_millis(1500));
            assert!(backoff(30, cap) <= cap);
        }
    }
}
