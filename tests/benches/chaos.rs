//! Chaos run: ConnectorInstances created and deleted while the platform simulator injects faults
//! (5xx, 429 with Retry-After, latency, dropped connections), the operator is SIGKILLed at random
//! moments and restarted, and the API server is restarted once. Bounded in time; prints its
//! figures and fails when any of duplicates, orphans, stuck resources, token mismatches or leaked
//! secrets is not zero.
//!
//! `cargo bench --bench chaos` — size from `CHAOS_N` (default 500).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::collections::HashMap;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use connector_operator::api::{ConnectorInstance, READY, find_condition, ownership_tag};
use connector_operator::local::{self, LocalControlPlane, ManagedChild, Options};
use connector_operator::sim::{self, Faults, LatencyRange};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::json;
use tokio::sync::Mutex;

const NS: &str = "chaos";
const PASSWORD: &str = "chaos-password-5d1e8a";

struct OperatorProcess {
    child: Option<ManagedChild>,
    kubeconfig: std::path::PathBuf,
    pid_file: std::path::PathBuf,
    log: std::path::PathBuf,
}

impl OperatorProcess {
    fn start(&mut self) {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_connector-operator"));
        command
            .args([
                "--namespace",
                NS,
                "--probe-addr",
                "127.0.0.1:0",
                "--concurrency",
                "32",
                "--default-resync",
                "30s",
                // Restore without duplicates is on: its searches and scan run under the faults.
                "--cluster-id",
                "chaos",
            ])
            .env("KUBECONFIG", &self.kubeconfig)
            .env("ALLOWED_PLATFORM_HOSTS", "127.0.0.1")
            .env("RUST_LOG", "info,connector_operator=debug")
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(local::process::spawn("connector-operator", command, &self.pid_file).unwrap());
    }

    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
        }
    }
}

fn instance(i: usize) -> ConnectorInstance {
    let spec = if i.is_multiple_of(10) {
        json!({ "platformRef": { "name": "sim" }, "connector": "zendesk",
                "configuration": { "username": format!("agent{i}@example.com"), "zendesk.subdomain": "acme" },
                "configurationFrom": [{ "key": "password", "secretKeyRef": { "name": "zendesk-login", "key": "password" } }] })
    } else {
        json!({ "platformRef": { "name": "sim" }, "connector": "echo" })
    };
    serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": format!("ci-{i}") }, "spec": spec,
    }))
    .unwrap()
}

fn chaos_faults() -> Faults {
    Faults {
        latency: Some(LatencyRange { min_ms: 50, max_ms: 300 }),
        server_error_share: 0.10,
        rate_limit_share: 0.05,
        retry_after_seconds: Some(1),
        drop_share: 0.01,
        ..Faults::default()
    }
}

async fn all_ready(api: &Api<ConnectorInstance>, n: usize) -> usize {
    let Ok(list) = api.list(&ListParams::default()).await else { return 0 };
    let ready = list
        .items
        .iter()
        .filter(|ci| {
            ci.status.as_ref().is_some_and(|s| {
                s.observed_generation == ci.metadata.generation
                    && find_condition(&s.conditions, READY).is_some_and(|c| c.status == "True")
            })
        })
        .count();
    ready.min(n)
}

async fn wait_until(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while !check().await {
        if Instant::now() > deadline {
            eprintln!("timed out waiting for {what}");
            return false;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    true
}

/// SIGKILLs and restarts the operator every 5–15 s while `running`; returns the kill count.
fn chaos_monkey(operator: Arc<Mutex<OperatorProcess>>, running: Arc<AtomicBool>, kills: Arc<AtomicUsize>) {
    tokio::spawn(async move {
        while running.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(5000 + fastrand::u64(..10_000))).await;
            if !running.load(Ordering::SeqCst) {
                break;
            }
            let mut operator = operator.lock().await;
            operator.kill();
            kills.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(fastrand::u64(..1500))).await;
            operator.start();
        }
    });
}

async fn run(n: usize) -> Vec<(String, String)> {
    let mut figures = Vec::new();
    let mut plane =
        LocalControlPlane::start(Options { name: "chaos".into(), audit: false, ..Options::default() })
            .await
            .unwrap();
    let client = plane.client().await.unwrap();
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();

    let (mut simulator, base_url, control) = common::start_simulator(&plane);

    common::platform_namespace(
        &client,
        NS,
        &base_url,
        500,
        &[("zendesk-login", json!({ "password": PASSWORD }))],
    )
    .await;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), NS);

    control.set_faults(&chaos_faults()).await.unwrap();
    let log = plane.dir().join("operator.log");
    let operator = Arc::new(Mutex::new(OperatorProcess {
        child: None,
        kubeconfig: plane.operator_kubeconfig_path(),
        pid_file: plane.pid_file(),
        log: log.clone(),
    }));
    operator.lock().await.start();
    let running = Arc::new(AtomicBool::new(true));
    let kills = Arc::new(AtomicUsize::new(0));
    chaos_monkey(operator.clone(), running.clone(), kills.clone());

    // Create under chaos, with one API server restart along the way.
    let started = Instant::now();
    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), NS);
    futures::stream::iter(0..n)
        .map(|i| {
            let instances = instances.clone();
            async move {
                loop {
                    match instances.create(&PostParams::default(), &instance(i)).await {
                        Ok(_) => break,
                        Err(kube::Error::Api(e)) if e.code == 409 => break,
                        Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                    }
                }
            }
        })
        .buffer_unordered(16)
        .collect::<Vec<_>>()
        .await;
    tokio::time::sleep(Duration::from_secs(10)).await;
    let restart = plane.restart_apiserver().await.unwrap();
    figures
        .push(("API server restarts".into(), format!("1 (ready again in {:.1} s)", restart.as_secs_f64())));
    let client = plane.client().await.unwrap();
    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), NS);
    let ready = wait_until("all Ready under chaos", Duration::from_secs(900), async || {
        all_ready(&instances, n).await >= n
    })
    .await;
    figures.push((
        "create: all Ready".into(),
        format!("{ready} after {:.0} s", started.elapsed().as_secs_f64()),
    ));

    // Quiesce: stop killing, clear faults, let the last passes settle; then compare.
    running.store(false, Ordering::SeqCst);
    control.clear_faults().await.unwrap();
    {
        let mut operator = operator.lock().await;
        if operator.child.is_none() {
            operator.start();
        }
    }
    let ready = wait_until("all Ready after the chaos", Duration::from_secs(300), async || {
        all_ready(&instances, n).await >= n
    })
    .await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    let remote = control.instances().await.unwrap();
    let list = instances.list(&ListParams::default()).await.unwrap();
    let mut per_tag: HashMap<String, usize> = HashMap::new();
    for instance in &remote {
        for tag in &instance.tags {
            *per_tag.entry(tag.clone()).or_default() += 1;
        }
    }
    let duplicates: usize = list
        .items
        .iter()
        .map(|ci| {
            per_tag
                .get(&ownership_tag(ci.metadata.uid.as_deref().unwrap()))
                .copied()
                .unwrap_or(0)
                .saturating_sub(1)
        })
        .sum();
    let sim_tokens: HashMap<i64, String> = remote.iter().map(|i| (i.id, i.token.clone())).collect();
    let token_secrets = secrets
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=connector-operator"))
        .await
        .unwrap();
    let mut mismatches = 0;
    let mut tokens = Vec::new();
    for ci in &list.items {
        let name = format!("{}-token", ci.metadata.name.as_deref().unwrap());
        let secret = token_secrets.items.iter().find(|s| s.metadata.name.as_deref() == Some(&name));
        let stored = secret
            .and_then(|s| s.data.as_ref())
            .and_then(|d| d.get("token"))
            .map(|t| String::from_utf8_lossy(&t.0).into_owned());
        let id = ci.status.as_ref().and_then(|s| s.instance_id);
        if stored.is_none() || id.and_then(|id| sim_tokens.get(&id)) != stored.as_ref() {
            mismatches += 1;
        }
        tokens.extend(stored);
    }
    figures.push(("all Ready after chaos".into(), ready.to_string()));
    figures.push(("remote instances / resources".into(), format!("{} / {}", remote.len(), list.items.len())));
    figures.push(("duplicates".into(), duplicates.to_string()));
    figures.push(("token mismatches".into(), mismatches.to_string()));
    let calls = control.calls().await.unwrap();
    figures.push((
        "platform calls (POST)".into(),
        format!("{} ({})", calls.total, calls.count("POST /instances")),
    ));

    // Delete all under the same chaos.
    control.set_faults(&chaos_faults()).await.unwrap();
    running.store(true, Ordering::SeqCst);
    chaos_monkey(operator.clone(), running.clone(), kills.clone());
    let started = Instant::now();
    instances.delete_collection(&DeleteParams::default(), &ListParams::default()).await.unwrap();
    let gone = wait_until("all deleted under chaos", Duration::from_secs(600), async || {
        instances.list_metadata(&ListParams::default()).await.map(|l| l.items.is_empty()).unwrap_or(false)
    })
    .await;
    running.store(false, Ordering::SeqCst);
    control.clear_faults().await.unwrap();
    let stuck = instances.list_metadata(&ListParams::default()).await.unwrap().items.len();
    let orphans = control.instances().await.unwrap().len();
    figures
        .push(("delete: all gone".into(), format!("{gone} after {:.0} s", started.elapsed().as_secs_f64())));
    figures.push(("orphans (remote left)".into(), orphans.to_string()));
    figures.push(("stuck resources".into(), stuck.to_string()));
    figures.push(("operator SIGKILLs".into(), kills.load(Ordering::SeqCst).to_string()));

    // Secrets never leak: operator log, Events, metrics.
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), NS);
    let mut text = std::fs::read_to_string(&log).unwrap_or_default();
    text.push_str(&serde_json::to_string(&events.list(&ListParams::default()).await.unwrap().items).unwrap());
    text.push_str(&serde_json::to_string(&list.items).unwrap());
    // The operator's metrics, from the probe address its (last) start logged.
    let probe = text.lines().rev().find_map(|l| {
        l.split("bound=").nth(1).map(|r| r.split_whitespace().next().unwrap_or("").to_string())
    });
    if let Some(addr) = probe
        && let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await
    {
        text.push_str(&response.text().await.unwrap_or_default());
    }
    let mut leaked = 0;
    let mut secrets_checked = vec![
        sim::DEFAULT_USER_SECRET.to_string(),
        sim::DEFAULT_ORGANIZATION_SECRET.to_string(),
        PASSWORD.to_string(),
    ];
    secrets_checked.extend(tokens);
    for secret in &secrets_checked {
        if text.contains(secret.as_str()) {
            leaked += 1;
        }
    }
    figures.push((
        "secret values leaked".into(),
        format!(
            "{leaked} (of {} checked in {} KiB of logs, events, status)",
            secrets_checked.len(),
            text.len() / 1024
        ),
    ));

    operator.lock().await.kill();
    let _ = simulator.kill();
    assert!(
        duplicates == 0 && mismatches == 0 && orphans == 0 && stuck == 0 && leaked == 0,
        "chaos invariants: {figures:?}"
    );
    figures
}

fn main() {
    let n: usize = std::env::var("CHAOS_N").ok().and_then(|v| v.parse().ok()).unwrap_or(500);
    connector_operator::platform::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let started = Instant::now();
    let figures = runtime.block_on(run(n));
    println!("\n== chaos run, N = {n}, {:.0} s", started.elapsed().as_secs_f64());
    for (name, value) in figures {
        println!("{name:<32} {value}");
    }
}
