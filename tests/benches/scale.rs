//! Scale benchmark: the real operator binary (release build) against the local kube-apiserver and
//! the platform simulator (its own process). Prints one table of figures; asserts nothing about
//! speed (figures are for reading), but fails on wrong results (duplicates, leftovers, writes in
//! steady state, PUT count of the rotation storm).
//!
//! `cargo bench --bench scale` — N from `SCALE_N` (default "1000,10000"), concurrency from
//! `SCALE_CONCURRENCY` (default 64), resync interval from `SCALE_RESYNC` (default 60s), shards
//! from `SCALE_SHARDS` (default 1: one operator; K: K operator processes, each with the label
//! selector of its shard, the instances labeled round-robin; CPU and peak RSS are their sums).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use connector_operator::api::{ConnectorInstance, FIELD_MANAGER, READY, find_condition};
use connector_operator::local::{self, LocalControlPlane, OPERATOR_USER, Options};
use connector_operator::platform::{InstanceRequest, PlatformClient, PlatformConfig};
use connector_operator::sim;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use secrecy::SecretString;
use serde_json::json;

const ROTATION_GROUP: usize = 1000;

/// Counts the bench process's live heap bytes, for the breakdown of what the operator's caches
/// hold ([`heap_breakdown`]).
struct Counting;

static LIVE_BYTES: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(0);

// SAFETY: every call is passed on to the system allocator unchanged; only a counter is kept.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract is passed on.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// The heap bytes per item of what `build` makes and keeps, which must hold `n` items (`len`).
fn bytes_per_item<T>(n: usize, build: impl FnOnce() -> T, len: impl Fn(&T) -> usize) -> f64 {
    let before = LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed);
    let kept = build();
    let bytes = LIVE_BYTES.load(std::sync::atomic::Ordering::Relaxed) - before;
    assert_eq!(len(&kept), n);
    drop(kept);
    bytes as f64 / n.max(1) as f64
}

/// The heap bytes per object of `items` held in a reflector store like the operator's, each in the
/// form `cached` makes of it (the form the operator's watch keeps).
fn store_bytes<K, C>(items: &[K], cached: impl Fn(&K) -> C) -> f64
where
    C: kube::Resource + Clone + std::fmt::Debug + Send + Sync + 'static,
    C::DynamicType: Default + Eq + std::hash::Hash + Clone,
{
    let build = || {
        let (store, mut writer) = kube::runtime::reflector::store::<C>();
        for item in items {
            writer.apply_watcher_event(&watcher::Event::Apply(cached(item)));
        }
        (store, writer)
    };
    bytes_per_item(items.len(), build, |(store, _)| store.len())
}

/// The heap bytes per Secret of `secrets` held in the operator's cache of owned Secrets.
fn owned_bytes(secrets: &[Secret]) -> f64 {
    let build = || {
        let store = connector_operator::controller::OwnedSecrets::default();
        for secret in secrets {
            store.apply(&watcher::Event::Apply(secret.clone()));
        }
        store
    };
    bytes_per_item(secrets.len(), build, connector_operator::controller::OwnedSecrets::len)
}

/// What the operator's two large caches hold per instance, measured on the objects as the API
/// server serves them at the end of the create phase: typed as served, and as the operator keeps
/// them.
async fn heap_breakdown(client: &kube::Client, ns: &str) -> Vec<(String, String)> {
    use connector_operator::controller::CachedInstance;
    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let served = instances.list(&ListParams::default()).await.unwrap().items;
    let tokens = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=connector-operator"))
        .await
        .unwrap()
        .items;
    let kib = |bytes: f64| format!("{:.2} KiB", bytes / 1024.0);
    let json = |bytes: usize, n: usize| kib(bytes as f64 / n.max(1) as f64);
    vec![
        (
            "ConnectorInstance cache / instance".into(),
            format!(
                "{} typed as served, {} as cached (JSON {} as served)",
                kib(store_bytes(&served, ConnectorInstance::clone)),
                kib(store_bytes(&served, CachedInstance::new)),
                json(serde_json::to_vec(&served).unwrap().len(), served.len()),
            ),
        ),
        (
            "token Secret cache / instance".into(),
            format!(
                "{} typed as served, {} as cached (JSON {} as served)",
                kib(store_bytes(&tokens, Secret::clone)),
                kib(owned_bytes(&tokens)),
                json(serde_json::to_vec(&tokens).unwrap().len(), tokens.len()),
            ),
        ),
    ]
}

/// The fixed floor's Kubernetes writes per instance, Events apart: finalizer, Secret, status.
const FLOOR_WRITES: f64 = 3.0;
/// The fixed floor's platform calls per instance: the POST.
const FLOOR_CALLS: f64 = 1.0;
/// The names of the create phase's figures of the fixed floor's throughput and the operator's
/// ratio to it (completed once the floor has run again, after the operator's run). The ratio is
/// printed to three decimals: its target is a threshold (0.95) that two would round onto.
const FLOOR_RATE: &str = "fixed floor instances/s";
const FLOOR_RATIO: &str = "operator / fixed floor";

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

/// Samples a process's RSS (peak per phase) and CPU time.
#[derive(Clone)]
struct ProcessProbe {
    pid: u32,
    /// Peak since the last `take_peak_mib`.
    peak_kib: Arc<Mutex<u64>>,
    /// Peak of the whole run.
    run_peak_kib: Arc<Mutex<u64>>,
}

impl ProcessProbe {
    fn start(pid: u32) -> Self {
        let probe = ProcessProbe::unsampled(pid);
        let sampler = probe.clone();
        std::thread::spawn(move || {
            loop {
                let Some(rss) = sampler.rss_kib() else { return };
                for peak in [&sampler.peak_kib, &sampler.run_peak_kib] {
                    let mut peak = peak.lock().unwrap();
                    *peak = (*peak).max(rss);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        probe
    }

    /// A probe of `pid`'s CPU time; its RSS is sampled only when made by [`ProcessProbe::start`].
    fn unsampled(pid: u32) -> Self {
        ProcessProbe { pid, peak_kib: Arc::default(), run_peak_kib: Arc::default() }
    }

    fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid)).ok()?;
        status.lines().find(|l| l.starts_with("VmRSS:"))?.split_whitespace().nth(1)?.parse().ok()
    }

    fn cpu_seconds(&self) -> f64 {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).unwrap_or_default();
        let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
        let ticks: u64 = fields.get(11).and_then(|f| f.parse().ok()).unwrap_or(0)
            + fields.get(12).and_then(|f| f.parse().ok()).unwrap_or(0);
        ticks as f64 / 100.0
    }

    /// Peak RSS since the last call (MiB), and resets it.
    fn take_peak_mib(&self) -> f64 {
        let mut peak = self.peak_kib.lock().unwrap();
        let value = *peak as f64 / 1024.0;
        *peak = self.rss_kib().unwrap_or(0);
        value
    }
}

/// The operator processes of a run (one, or one per shard): CPU summed, RSS per process.
struct Fleet {
    probes: Vec<ProcessProbe>,
}

impl Fleet {
    fn cpu_seconds(&self) -> f64 {
        self.probes.iter().map(ProcessProbe::cpu_seconds).sum()
    }

    /// The sum of each process's peak RSS since the last call (MiB), and resets them.
    fn take_peak_mib(&self) -> f64 {
        self.probes.iter().map(ProcessProbe::take_peak_mib).sum()
    }

    /// Each process's peak RSS over the whole run (MiB).
    fn run_peaks_mib(&self) -> Vec<f64> {
        self.probes.iter().map(|p| *p.run_peak_kib.lock().unwrap() as f64 / 1024.0).collect()
    }
}

struct Phase {
    name: String,
    seconds: f64,
    figures: Vec<(String, String)>,
    cpu: f64,
    peak_mib: f64,
}

/// Records a phase, printing it at once (a later failure still leaves its figures).
fn push(phases: &mut Vec<Phase>, phase: Phase) {
    print_phase(&phase);
    phases.push(phase);
}

fn print_phase(phase: &Phase) {
    println!("{:<26} {:>9.1} {:>9.1} {:>7.1} MiB", phase.name, phase.seconds, phase.cpu, phase.peak_mib);
    for (name, value) in &phase.figures {
        println!("{:<26} {name}: {value}", "");
    }
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

/// How long the floor and the create phase are profiled, from their start: longer than either
/// (with the Events after the last Ready). The machine is saturated meanwhile, so only profiles of
/// the whole work compare (a window of each holds about the same samples, of different work).
fn profile_seconds(n: usize) -> u64 {
    (n as u64 / 90).max(20)
}

/// With `SCALE_PROFILE=<dir>`: a CPU profile of kube-apiserver over `seconds`, starting after
/// `delay`, saved as `<dir>/<name>.pprof`; [`print_profile`] prints its top functions (with
/// `go tool pprof`).
fn profile_apiserver(
    client: &kube::Client,
    name: &str,
    delay: Duration,
    seconds: u64,
) -> Option<tokio::task::JoinHandle<std::path::PathBuf>> {
    let dir = std::path::PathBuf::from(std::env::var_os("SCALE_PROFILE")?);
    std::fs::create_dir_all(&dir).unwrap();
    let (client, path) = (client.clone(), dir.join(format!("{name}.pprof")));
    Some(tokio::spawn(async move {
        use futures::AsyncReadExt;
        tokio::time::sleep(delay).await;
        let request =
            http::Request::get(format!("/debug/pprof/profile?seconds={seconds}")).body(Vec::new()).unwrap();
        let mut body = Vec::new();
        client.request_stream(request).await.unwrap().read_to_end(&mut body).await.unwrap();
        std::fs::write(&path, body).unwrap();
        path
    }))
}

async fn print_profile(
    profile: Option<tokio::task::JoinHandle<std::path::PathBuf>>,
    base: Option<&std::path::Path>,
) -> Option<std::path::PathBuf> {
    let path = profile?.await.unwrap();
    let mut views: Vec<Vec<String>> = vec![vec!["-top".into()], vec!["-top".into(), "-cum".into()]];
    if let Some(base) = base {
        views.push(vec!["-top".into(), "-cum".into(), format!("-diff_base={}", base.display())]);
    }
    for view in views {
        let output = Command::new("go")
            .args(["tool", "pprof", "-nodecount=40"])
            .args(&view)
            .arg(&path)
            .output()
            .unwrap();
        println!(
            "--- kube-apiserver profile {} ({})\n{}",
            path.display(),
            view.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
    }
    Some(path)
}

/// The operator's own counters of reconcile outcomes and Events, from its `/metrics`.
async fn operator_counters(probe_addr: &str) -> String {
    let text = reqwest::get(format!("http://{probe_addr}/metrics")).await.unwrap().text().await.unwrap();
    text.lines()
        .filter(|l| {
            l.starts_with("connector_operator_reconciles_total{kind=\"ConnectorInstance\"")
                || l.starts_with("connector_operator_events_total")
        })
        .map(|l| l.trim_start_matches("connector_operator_").replace("kind=\"ConnectorInstance\",", ""))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Events of namespace `ns` by reason, as "reason: count" (the Event's own count included).
async fn event_reasons(client: &kube::Client, ns: &str) -> String {
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    let mut reasons: std::collections::BTreeMap<String, i32> = Default::default();
    for event in events.list(&ListParams::default()).await.unwrap().items {
        *reasons.entry(event.reason.unwrap_or_default()).or_default() += event.count.unwrap_or(1).max(1);
    }
    reasons.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

/// The operator's requests by verb and resource, as "verb resource[/sub]: count".
fn operator_request_mix(plane: &LocalControlPlane, ns: &str) -> String {
    let mut mix: std::collections::BTreeMap<String, usize> = Default::default();
    for e in plane.audit_events() {
        if e.user == OPERATOR_USER && (e.namespace.as_deref() == Some(ns) || e.namespace.is_none()) {
            let sub = e.subresource.map(|s| format!("/{s}")).unwrap_or_default();
            *mix.entry(format!("{} {}{sub}", e.verb, e.resource)).or_default() += 1;
        }
    }
    mix.iter().map(|(k, v)| format!("{k}: {v}")).collect::<Vec<_>>().join(", ")
}

/// The operator's requests so far: (all, writes other than Events, Event creates).
fn operator_requests(plane: &LocalControlPlane, ns: &str) -> (usize, usize, usize) {
    let events = plane.audit_events();
    let mine: Vec<_> = events
        .iter()
        .filter(|e| e.user == OPERATOR_USER && (e.namespace.as_deref() == Some(ns) || e.namespace.is_none()))
        .collect();
    let is_event = |e: &&&local::AuditEvent| e.resource == "events";
    (
        mine.len(),
        mine.iter().filter(|e| e.is_write() && !is_event(e)).count(),
        mine.iter().filter(|e| e.is_write() && is_event(e)).count(),
    )
}

/// The label that puts an instance in a shard (README "Scale out").
const SHARD_KEY: &str = "sharding.openconnectors.io/key";

fn instance(name: &str, rotation: bool, shard: Option<usize>) -> ConnectorInstance {
    // Every instance's token Secret has a template (a label, an annotation, a rendered file), so
    // that the figures include rendering and comparing it.
    let template = json!({
        "metadata": { "labels": { "team": "bench" }, "annotations": { "example.com/owner": "bench" } },
        "data": { "config.json": "{\"token\": {{ token | tojson }}, \"instanceId\": {{ instanceId }}, \"baseUrl\": {{ baseUrl | tojson }}}" },
    });
    let mut spec = json!({ "platformRef": { "name": "sim" }, "connector": "echo", "tokenSecret": { "template": template } });
    if rotation {
        spec["configurationFrom"] = json!([{ "key": "echo.greeting", "secretKeyRef": { "name": "shared-greeting", "key": "greeting" } }]);
    }
    let mut metadata = json!({ "name": name });
    if let Some(shard) = shard {
        metadata["labels"] = json!({ SHARD_KEY: format!("shard-{shard}") });
    }
    serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": metadata, "spec": spec,
    }))
    .unwrap()
}

/// The fixed floor: what any correct operator must do per instance, whatever its design, made by
/// a straight-line client with the operator's own bodies (its token Secret, its status): the
/// finalizer (before anything remote exists), 1 POST, the Secret, 1 status write and 1 Event.
/// [`FLOOR_WRITES`] Kubernetes writes besides the Event, [`FLOOR_CALLS`] platform call.
async fn floor(client: &kube::Client, ns: &str, base_url: &str, n: usize, concurrency: usize) -> f64 {
    use connector_operator::api::{
        ActionType, ConnectorInstanceStatus, LastAction, PlatformKind, PlatformStatusRef,
    };
    use connector_operator::controller::core::{desired, status};
    use connector_operator::controller::token_secret;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::{Resource, ResourceExt};

    let mut config = PlatformConfig::new(
        base_url,
        SecretString::from(sim::DEFAULT_USER_SECRET),
        SecretString::from(sim::DEFAULT_ORGANIZATION_SECRET),
    );
    config.allow_http = true;
    config.requests_per_second = 0.0;
    let platform = PlatformClient::new(config).unwrap();
    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), ns);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), ns);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (instances, secrets, platform, events) =
                (instances.clone(), secrets.clone(), platform.clone(), events.clone());
            async move {
                let name = format!("floor-{i}");
                let created = instances.create(&PostParams::default(), &instance(&name, false, None)).await.unwrap();
                let uid = created.metadata.uid.clone().unwrap();
                let tag = connector_operator::api::ownership_tag(&uid);
                let patch = json!({ "metadata": { "finalizers": [connector_operator::api::FINALIZER],
                                                  "resourceVersion": created.resource_version() } });
                instances.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.unwrap();
                let request = InstanceRequest {
                    element_key: "echo".into(),
                    name: format!("{ns}/{name}"),
                    tags: vec![tag.clone()],
                    ..InstanceRequest::default()
                };
                let remote = platform.create_instance(&request).await.unwrap();
                let token = remote.token.clone().unwrap();
                let mut hasher = desired::AuthHasher::default();
                hasher.field(b"echo");
                let auth_hash = hasher.finish();
                let content = token_secret::TokenSecretContent {
                    token: &token,
                    instance_id: remote.id,
                    base_url,
                    connector: "echo",
                    auth_hash: &auth_hash,
                    grant_sha256: None,
                    authorization: None,
                    applied_inputs: None,
                };
                let body = token_secret::render(&created, &content).unwrap().unwrap();
                let params = PostParams { field_manager: Some(FIELD_MANAGER.into()), ..PostParams::default() };
                secrets.create(&params, &body).await.unwrap();
                let now = Time(k8s_openapi::jiff::Timestamp::now());
                let mut new_status = ConnectorInstanceStatus {
                    observed_generation: created.metadata.generation,
                    instance_id: Some(remote.id),
                    token_secret_name: Some(token_secret::token_secret_name(&created)),
                    token_sha256: Some(connector_operator::api::token_sha256(&token)[..12].to_string()),
                    last_authenticated_time: Some(now.clone()),
                    remote: Some(connector_operator::api::RemoteStatus {
                        valid: remote.valid,
                        disabled: remote.disabled,
                    }),
                    platform: Some(Box::new(PlatformStatusRef {
                        kind: PlatformKind::ConnectorPlatform,
                        name: "sim".into(),
                        base_url: base_url.into(),
                    })),
                    last_action: Some(LastAction { type_: ActionType::Created, time: now.clone() }),
                    applied_metadata_hash: Some(desired::metadata_hash(&request.name, &request.tags)),
                    ..ConnectorInstanceStatus::default()
                };
                status::ready(&mut new_status, &token_secret::token_secret_name(&created), &now);
                let body = json!({ "apiVersion": ConnectorInstance::api_version(&()),
                                   "kind": ConnectorInstance::kind(&()), "status": new_status });
                instances
                    .patch_status(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body))
                    .await
                    .unwrap();
                let event: k8s_openapi::api::events::v1::Event = serde_json::from_value(json!({
                    "metadata": { "name": format!("{name}.created") },
                    "eventTime": "2026-01-01T00:00:00.000000Z", "action": "Reconcile", "reason": "Created",
                    "note": format!("created remote instance {}", remote.id), "type": "Normal",
                    "reportingController": "openconnectors.io/connector-operator", "reportingInstance": "floor",
                    "regarding": { "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                                   "name": name, "namespace": ns, "uid": uid } }))
                .unwrap();
                events.create(&PostParams::default(), &event).await.unwrap();
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    n as f64 / started.elapsed().as_secs_f64()
}

/// Watches ConnectorInstances of a namespace and records when each first became Ready.
fn track_ready(client: &kube::Client, ns: &str) -> Arc<Mutex<HashMap<String, Instant>>> {
    let ready: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let api: Api<ConnectorInstance> = Api::namespaced(client.clone(), ns);
    let sink = ready.clone();
    tokio::spawn(async move {
        let mut stream = watcher(api, watcher::Config::default()).applied_objects().boxed();
        while let Some(Ok(ci)) = stream.next().await {
            let is_ready = ci.status.as_ref().is_some_and(|s| {
                s.observed_generation == ci.metadata.generation
                    && find_condition(&s.conditions, READY).is_some_and(|c| c.status == "True")
            });
            if is_ready {
                sink.lock().unwrap().entry(ci.metadata.name.clone().unwrap()).or_insert_with(Instant::now);
            }
        }
    });
    ready
}

/// The median time-to-Ready of each tenth of the instances in the order their creates returned,
/// and when the last create returned: how fair the operator is to the early ones in a burst.
fn latency_by_creation_order(
    created: &HashMap<String, Instant>,
    ready: &HashMap<String, Instant>,
    started: Instant,
) -> String {
    let mut order: Vec<(Instant, f64)> = created
        .iter()
        .map(|(name, at)| (*at, ready[name].saturating_duration_since(*at).as_secs_f64()))
        .collect();
    order.sort_by_key(|(at, _)| *at);
    let tenth = order.len().div_ceil(10).max(1);
    let medians: Vec<String> = order
        .chunks(tenth)
        .map(|chunk| {
            let mut latencies: Vec<f64> = chunk.iter().map(|(_, latency)| *latency).collect();
            latencies.sort_by(f64::total_cmp);
            format!("{:.0}", percentile(&latencies, 0.5))
        })
        .collect();
    let last = order.last().map_or(0.0, |(at, _)| at.saturating_duration_since(started).as_secs_f64());
    format!("{} s (the last create returned at {last:.1} s)", medians.join(" / "))
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A fresh control plane with the CRDs, and a fresh simulator.
struct Cluster {
    plane: LocalControlPlane,
    client: kube::Client,
    simulator: local::ManagedChild,
    base_url: String,
    control: connector_operator::sim::SimControl,
    sim_probe: ProcessProbe,
    /// Where the time goes: every process taking part but the operator.
    others: Vec<(&'static str, ProcessProbe)>,
}

impl Cluster {
    async fn start(name: String) -> Self {
        let plane = LocalControlPlane::start(Options {
            name,
            profiling: std::env::var_os("SCALE_PROFILE").is_some(),
            ..Options::default()
        })
        .await
        .unwrap();
        let client = plane.client().await.unwrap();
        connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
        let (simulator, base_url, control) = common::start_simulator(&plane);
        let sim_probe = ProcessProbe::start(simulator.pid());
        let others = plane
            .pids()
            .into_iter()
            .zip(["etcd", "kube-apiserver", "kube-controller-manager"])
            .map(|(pid, name)| (name, ProcessProbe::unsampled(pid)))
            .chain([
                ("simulator", sim_probe.clone()),
                ("bench client", ProcessProbe::unsampled(std::process::id())),
            ])
            .collect();
        Self { plane, client, simulator, base_url, control, sim_probe, others }
    }

    fn cpu_snapshot(&self) -> Vec<f64> {
        self.others.iter().map(|(_, p)| p.cpu_seconds()).collect()
    }

    fn cpu_since(&self, before: &[f64]) -> String {
        self.others
            .iter()
            .zip(before)
            .map(|((name, p), before)| format!("{name} {:.1}", p.cpu_seconds() - before))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// The fixed floor's figures: instances/s and CPU seconds per process.
struct Floors {
    rate: f64,
    cpu: String,
    profile: Option<std::path::PathBuf>,
    strain: Strain,
}

/// Signs of an API server falling behind with the ConnectorInstances, from its `/metrics` (counts
/// since it started). Under a burst it can: it delivers each event to all watchers in turn and,
/// while one watcher's buffer is full, holds the next ones back (closing the watchers it waits for
/// once a budget is spent); its cache of the objects, which every update starts from, lags
/// meanwhile, and an update made from a stale copy fails its commit and is made again. Both vary
/// much from run to run, and so does the time of the create phase with them.
#[derive(Debug, Clone, Copy, Default)]
struct Strain {
    /// Instance watchers closed for falling behind.
    closed_watchers: u64,
    /// Commits of instance updates to etcd, the ones made again included.
    update_commits: u64,
}

impl Strain {
    /// Commits per instance update: each of the `n` instances is updated twice (its finalizer,
    /// its status); above 1.00, updates made again.
    fn commits_per_update(&self, n: usize) -> f64 {
        self.update_commits as f64 / (2 * n) as f64
    }
}

async fn strain(client: &kube::Client) -> Strain {
    let request = http::Request::get("/metrics").body(Vec::new()).unwrap();
    let text = client.request_text(request).await.unwrap();
    let count = |metric: &str, labels: &[&str]| -> u64 {
        text.lines()
            .filter(|line| line.starts_with(metric) && labels.iter().all(|label| line.contains(label)))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum::<f64>() as u64
    };
    let instances = "resource=\"connectorinstances\"";
    Strain {
        closed_watchers: count("apiserver_terminated_watchers_total{", &[instances]),
        update_commits: count("etcd_requests_total{", &[instances, "operation=\"update\""]),
    }
}

/// Runs the fixed floor on a control plane and simulator of their own, stopped afterwards, so
/// that the operator's run starts from the same empty state as the floor's. The benchmark's own
/// observer (the watch that records when instances become Ready) watches the floor too. `name`
/// names the control plane and the profile (`SCALE_PROFILE`) if it is `profiled`.
async fn floors(n: usize, concurrency: usize, name: &str, profiled: bool) -> Floors {
    let mut cluster = Cluster::start(format!("{name}-{n}")).await;
    let client = cluster.client.clone();
    common::platform_namespace(&client, "floor", &cluster.base_url, 10000, &[]).await;
    let observed = track_ready(&client, "floor");
    let profile =
        profiled.then(|| profile_apiserver(&client, name, Duration::ZERO, profile_seconds(n))).flatten();
    let before = cluster.cpu_snapshot();
    let rate = floor(&client, "floor", &cluster.base_url, n, concurrency).await;
    let cpu = cluster.cpu_since(&before);
    let strain = strain(&client).await;
    let profile = print_profile(profile, None).await;
    wait_until("the floor observed", Duration::from_secs(60), async || observed.lock().unwrap().len() >= n)
        .await;
    assert_eq!(cluster.control.instances().await.unwrap().len(), n, "one remote instance per floor instance");
    let _ = cluster.simulator.kill();
    cluster.plane.stop();
    Floors { rate, cpu, profile, strain }
}

async fn run(n: usize, concurrency: usize, resync: Duration, shards: usize) -> Vec<Phase> {
    let floor_before = floors(n, concurrency, "floor", true).await;
    let mut cluster = Cluster::start(format!("bench-{n}")).await;
    let (plane, client, control) = (&cluster.plane, cluster.client.clone(), cluster.control.clone());
    let mut phases = Vec::new();

    let ns = "bench";
    common::platform_namespace(
        &client,
        ns,
        &cluster.base_url,
        10000,
        &[("shared-greeting", json!({ "greeting": "hello" }))],
    )
    .await;
    // One operator, or one per shard (each with its label selector; the first writes the
    // platforms' status).
    let mut operators = Vec::new();
    let mut probe_addrs = Vec::new();
    for shard in 0..shards {
        let probe_addr = format!("127.0.0.1:{}", local::free_port().unwrap());
        let log = plane.dir().join(format!("operator-{shard}.log"));
        let log_file = std::fs::File::create(&log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_connector-operator"));
        command
            .args(["--namespace", ns, "--probe-addr", &probe_addr, "--concurrency", &concurrency.to_string()])
            .args(["--default-resync", &format!("{}s", resync.as_secs())])
            // What a cluster-wide install does by default: the scan and the tags of restore.
            .args(["--cluster-id", "bench"])
            .env("KUBECONFIG", plane.operator_kubeconfig_path())
            .env("ALLOWED_PLATFORM_HOSTS", "127.0.0.1")
            .env("RUST_LOG", "warn")
            .stdout(log_file.try_clone().unwrap())
            .stderr(log_file);
        if shards > 1 {
            command.args(["--watch-label-selector", &format!("{SHARD_KEY}=shard-{shard}")]);
            if shard > 0 {
                command.arg("--platform-status=false");
            }
        }
        operators.push(local::process::spawn("connector-operator", command, &plane.pid_file()).unwrap());
        probe_addrs.push(probe_addr);
    }
    let probe = Fleet { probes: operators.iter().map(|o| ProcessProbe::start(o.pid())).collect() };
    let probe_addr = probe_addrs[0].clone();
    let shard_of = |i: usize| (shards > 1).then_some(i % shards);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let ready = track_ready(&client, ns);
    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), ns);

    // 1. create
    let (k8s_before, writes_before, events_before) = operator_requests(plane, ns);
    probe.take_peak_mib();
    let cpu0 = probe.cpu_seconds();
    let others_cpu0 = cluster.cpu_snapshot();
    let started = Instant::now();
    let profile = profile_apiserver(&client, "operator", Duration::ZERO, profile_seconds(n));
    let created: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    futures::stream::iter(0..n)
        .map(|i| {
            let (instances, created) = (instances.clone(), created.clone());
            async move {
                let name = format!("ci-{i}");
                instances
                    .create(&PostParams::default(), &instance(&name, i < ROTATION_GROUP, shard_of(i)))
                    .await
                    .unwrap();
                created.lock().unwrap().insert(name, Instant::now());
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    wait_until("all instances Ready", Duration::from_secs(1200), async || ready.lock().unwrap().len() >= n)
        .await;
    let create_seconds = started.elapsed().as_secs_f64();
    let strained = strain(&client).await;
    let (k8s_after, writes_after, events_after) = operator_requests(plane, ns);
    let calls = control.calls().await.unwrap();
    let others_cpu = cluster.cpu_since(&others_cpu0);
    let create_cpu = probe.cpu_seconds() - cpu0;
    let mut latencies: Vec<f64> = {
        let ready = ready.lock().unwrap();
        let created = created.lock().unwrap();
        created.iter().map(|(name, at)| ready[name].saturating_duration_since(*at).as_secs_f64()).collect()
    };
    latencies.sort_by(f64::total_cmp);
    let by_order = latency_by_creation_order(&created.lock().unwrap(), &ready.lock().unwrap(), started);
    // Events come after the tokens: how many were out when the last instance was Ready, and how
    // long the rest took.
    let event_count = async || {
        plane
            .audit_events()
            .iter()
            .filter(|e| {
                e.user == OPERATOR_USER
                    && e.verb == "create"
                    && e.resource == "events"
                    && e.namespace.as_deref() == Some(ns)
                    && e.code.is_some_and(|c| c < 300)
            })
            .count()
    };
    let events_at_ready = event_count().await;
    let drain_started = Instant::now();
    wait_until("the Created Events", Duration::from_secs(600), async || {
        tokio::time::sleep(Duration::from_millis(800)).await;
        event_count().await >= n
    })
    .await;
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    print_profile(profile, floor_before.profile.as_deref()).await;
    let events = event_reasons(&client, ns).await;
    let heap = heap_breakdown(&client, ns).await;
    let scrape_started = Instant::now();
    let scraped = reqwest::get(format!("http://{probe_addr}/metrics")).await.unwrap().text().await.unwrap();
    let scrape = format!(
        "{:.0} ms for {} KiB (the census reads every cached instance)",
        scrape_started.elapsed().as_secs_f64() * 1000.0,
        scraped.len() / 1024
    );
    let rate = n as f64 / create_seconds;
    let writes = (writes_after - writes_before) as f64 / n as f64;
    // The periodic reads (`GET /instances/{id}`) are the steady state's cost, measured below: an
    // instance Ready early in a long create window is due for its first one (one resync interval
    // after the create at the earliest) before the window closes. Apart from them, what the
    // creates cost.
    let periodic = calls.count("GET /instances/{id}") as f64 / n as f64;
    let platform = calls.total as f64 / n as f64 - periodic;
    push(
        &mut phases,
        Phase {
            name: "create".into(),
            seconds: create_seconds,
            figures: vec![
                ("instances/s".into(), format!("{rate:.1}")),
                (
                    "time-to-Ready p50 / p99".into(),
                    format!("{:.2} s / {:.2} s", percentile(&latencies, 0.5), percentile(&latencies, 0.99)),
                ),
                ("time-to-Ready p50 by tenth of creation order".into(), by_order),
                (FLOOR_RATE.into(), format!("{:.1}", floor_before.rate)),
                ("operator /metrics scrape".into(), scrape),
                (FLOOR_RATIO.into(), format!("{:.3}", rate / floor_before.rate)),
                (
                    "k8s writes / instance".into(),
                    format!(
                        "{writes:.2} + {:.2} Events (fixed floor {FLOOR_WRITES:.0} + 1 Event: {:.2}x)",
                        (events_after - events_before) as f64 / n as f64,
                        writes / FLOOR_WRITES
                    ),
                ),
                (
                    "k8s requests / instance".into(),
                    format!("{:.2}", (k8s_after - k8s_before) as f64 / n as f64),
                ),
                (
                    "platform requests / instance".into(),
                    format!(
                        "{platform:.2} + {periodic:.2} periodic reads (fixed floor {FLOOR_CALLS:.0}: {:.2}x) {:?}",
                        platform / FLOOR_CALLS,
                        calls.operations
                    ),
                ),
                ("k8s request mix".into(), operator_request_mix(plane, ns)),
                ("Events by reason".into(), events),
                (
                    "Events out when all Ready".into(),
                    format!("{events_at_ready} of {n}; the rest {drain_seconds:.1} s later"),
                ),
                (
                    "API server: instance watchers closed / commits per instance update".into(),
                    format!(
                        "{} / {:.2} (fixed floor {} / {:.2})",
                        strained.closed_watchers,
                        strained.commits_per_update(n),
                        floor_before.strain.closed_watchers,
                        floor_before.strain.commits_per_update(n)
                    ),
                ),
                ("CPU s of the others".into(), others_cpu),
                ("CPU s during the fixed floor".into(), floor_before.cpu.clone()),
            ]
            .into_iter()
            .chain(heap)
            .collect(),
            cpu: create_cpu,
            peak_mib: probe.take_peak_mib(),
        },
    );
    let remote = control.instances().await.unwrap();
    assert_eq!(remote.len(), n, "exactly one remote instance per resource");

    // 3. steady state over 2 resync periods.
    tokio::time::sleep(Duration::from_secs(5)).await;
    control.reset_calls().await.unwrap();
    let writes_before = {
        let (_, writes, events) = operator_requests(plane, ns);
        writes + events
    };
    let cpu0 = probe.cpu_seconds();
    let started = Instant::now();
    let mut buckets = Vec::new();
    let mut last = 0;
    while started.elapsed() < resync * 2 {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let gets = control.calls().await.unwrap().count("GET /instances/{id}");
        buckets.push(gets - last);
        last = gets;
    }
    let calls = control.calls().await.unwrap();
    let writes_after = {
        let (_, writes, events) = operator_requests(plane, ns);
        writes + events
    };
    let mean = buckets.iter().sum::<u64>() as f64 / buckets.len() as f64;
    let max = buckets.iter().copied().max().unwrap_or(0);
    push(
        &mut phases,
        Phase {
            name: format!("steady ({}s x 2)", resync.as_secs()),
            seconds: started.elapsed().as_secs_f64(),
            figures: vec![
                ("k8s writes (Events included)".into(), (writes_after - writes_before).to_string()),
                ("platform writes".into(), calls.writes.to_string()),
                (
                    "platform GETs (per instance per period)".into(),
                    format!(
                        "{} ({:.2})",
                        calls.count("GET /instances/{id}"),
                        calls.count("GET /instances/{id}") as f64 / n as f64 / 2.0
                    ),
                ),
                ("GETs per 5 s: mean / max".into(), format!("{mean:.0} / {max}")),
            ],
            cpu: probe.cpu_seconds() - cpu0,
            peak_mib: probe.take_peak_mib(),
        },
    );
    assert_eq!(writes_after - writes_before, 0, "no Kubernetes writes in steady state");
    assert_eq!(calls.writes, 0, "no platform writes in steady state");

    // 4. rotation storm: the Secret referenced by ROTATION_GROUP instances changes.
    let group = ROTATION_GROUP.min(n);
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let before: HashMap<String, Vec<u8>> = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=connector-operator"))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|s| (s.metadata.name.clone().unwrap(), s.data.unwrap()["token"].0.clone()))
        .collect();
    control.reset_calls().await.unwrap();
    let cpu0 = probe.cpu_seconds();
    let started = Instant::now();
    let greeting = json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": "shared-greeting" },
        "stringData": { "greeting": "hello again" } });
    secrets
        .patch("shared-greeting", &PatchParams::apply("bench").force(), &Patch::Apply(&greeting))
        .await
        .unwrap();
    wait_until("all rotated tokens", Duration::from_secs(600), async || {
        let list = secrets
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=connector-operator"))
            .await
            .unwrap();
        let rotated = list
            .items
            .iter()
            .filter(|s| {
                let name = s.metadata.name.clone().unwrap();
                before.get(&name) != Some(&s.data.as_ref().unwrap()["token"].0)
            })
            .count();
        rotated >= group
    })
    .await;
    let storm_seconds = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = control.calls().await.unwrap();
    push(
        &mut phases,
        Phase {
            name: format!("rotation storm ({group})"),
            seconds: storm_seconds,
            figures: vec![("PUTs".into(), calls.count("PUT /instances/{id}").to_string())],
            cpu: probe.cpu_seconds() - cpu0,
            peak_mib: probe.take_peak_mib(),
        },
    );
    assert_eq!(calls.count("PUT /instances/{id}"), group as u64, "exactly one PUT per instance of the storm");

    // 5. delete all.
    let cpu0 = probe.cpu_seconds();
    let started = Instant::now();
    // One DELETE per instance, as `kubectl delete --all` makes them (a deletecollection of
    // thousands can outlast the API server's request timeout).
    let names: Vec<String> = instances
        .list_metadata(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter_map(|m| m.metadata.name)
        .collect();
    futures::stream::iter(names)
        .map(|name| {
            let instances = instances.clone();
            async move {
                match instances.delete(&name, &DeleteParams::default()).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(status)) if status.code == 404 => {}
                    Err(err) => panic!("delete {name}: {err}"),
                }
            }
        })
        .buffer_unordered(concurrency)
        .collect::<Vec<_>>()
        .await;
    wait_until("all instances gone", Duration::from_secs(1200), async || {
        instances.list_metadata(&ListParams::default().limit(1)).await.unwrap().items.is_empty()
    })
    .await;
    let delete_seconds = started.elapsed().as_secs_f64();
    let left = control.instances().await.unwrap().len();
    push(
        &mut phases,
        Phase {
            name: "delete".into(),
            seconds: delete_seconds,
            figures: vec![
                ("instances/s".into(), format!("{:.1}", n as f64 / delete_seconds)),
                ("remote instances left".into(), left.to_string()),
            ],
            cpu: probe.cpu_seconds() - cpu0,
            peak_mib: probe.take_peak_mib(),
        },
    );
    assert_eq!(left, 0, "no remote instance left after delete");
    let (k8s_total, k8s_writes, k8s_events) = operator_requests(plane, ns);
    push(
        &mut phases,
        Phase {
            name: "whole run".into(),
            seconds: 0.0,
            figures: vec![
                (
                    "k8s requests / instance".into(),
                    format!(
                        "{:.2} ({:.2} writes, {:.2} Events)",
                        k8s_total as f64 / n as f64,
                        k8s_writes as f64 / n as f64,
                        k8s_events as f64 / n as f64
                    ),
                ),
                ("simulator peak RSS".into(), format!("{:.0} MiB", cluster.sim_probe.take_peak_mib())),
                ("operator counters".into(), {
                    let mut counters = Vec::new();
                    for addr in &probe_addrs {
                        counters.push(operator_counters(addr).await);
                    }
                    counters.join(" | ")
                }),
                (
                    "peak RSS per operator process".into(),
                    probe
                        .run_peaks_mib()
                        .iter()
                        .map(|m| format!("{m:.1} MiB"))
                        .collect::<Vec<_>>()
                        .join(" / "),
                ),
            ],
            cpu: probe.cpu_seconds(),
            peak_mib: probe.run_peaks_mib().iter().sum(),
        },
    );
    drop(operators);
    let _ = cluster.simulator.kill();
    drop(cluster);

    // The fixed floor again: the machine's speed drifts by a tenth and more over minutes (the
    // same floor ran 114-132 instances/s in six runs within 40 minutes on one machine), so the
    // operator is compared with the mean of a floor run before its own and one after.
    let floor_after = floors(n, concurrency, "floor-again", false).await;
    let floor_rate = (floor_before.rate + floor_after.rate) / 2.0;
    let create = &mut phases[0];
    for (name, value) in &mut create.figures {
        if name == FLOOR_RATE {
            *value = format!(
                "{floor_rate:.1} (mean of {:.1} before the operator's run, {:.1} after)",
                floor_before.rate, floor_after.rate
            );
        } else if name == FLOOR_RATIO {
            *value = format!("{:.3}", rate / floor_rate);
        }
    }
    println!(
        "{:<26} {FLOOR_RATE} {:.1} after the operator's run: {FLOOR_RATIO} {:.3}",
        "",
        floor_after.rate,
        rate / floor_rate
    );
    phases
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else is taken from the command line.
    let sizes: Vec<usize> =
        env_or("SCALE_N", "1000,10000").split(',').filter_map(|s| s.trim().parse().ok()).collect();
    let concurrency: usize = env_or("SCALE_CONCURRENCY", "64").parse().unwrap();
    let resync = Duration::from_secs(env_or("SCALE_RESYNC", "60").parse().unwrap());
    let shards: usize = env_or("SCALE_SHARDS", "1").parse::<usize>().unwrap().max(1);
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    connector_operator::platform::install_crypto_provider();
    println!(
        "machine: {} cores, {}",
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        env_or("HOSTNAME", "?")
    );
    for n in sizes {
        let started = Instant::now();
        let phases = runtime.block_on(run(n, concurrency, resync, shards));
        let processes = if shards > 1 { format!(", {shards} shards") } else { String::new() };
        println!(
            "\n== N = {n}, concurrency {concurrency}{processes}, total {:.0} s",
            started.elapsed().as_secs_f64()
        );
        println!("{:<26} {:>9} {:>9} {:>10}  figures", "phase", "seconds", "cpu s", "peak RSS");
        for phase in &phases {
            print_phase(phase);
        }
    }
}
