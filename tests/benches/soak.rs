//! Soak: steady churn of ConnectorInstances (creates, updates that re-authenticate or patch,
//! deletes) and of Secrets nobody references (five created and five deleted a second, as Helm
//! releases and rotations do) for `SOAK_MINUTES` (default 30). Samples the operator's RSS, open
//! file descriptors (sockets included), live async tasks and the sizes of its Secret cache and
//! per-instance memory every 10 s, prints the curve per minute, and fails if RSS grew by 10% or
//! more over the last ten minutes, if descriptors or tasks kept growing, or if the Secret cache or
//! the memory outgrew what is referenced.
//!
//! `cargo bench --bench soak`; `SOAK_MINUTES=12 cargo bench --bench soak` for a shorter run.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::process::Command;
use std::time::{Duration, Instant};

use connector_operator::api::ConnectorInstance;
use connector_operator::local::{self, LocalControlPlane, Options};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;

const NS: &str = "soak";
const POPULATION: usize = 200;

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0)
}

fn probe_addr(log: &std::path::Path) -> Option<String> {
    let text = std::fs::read_to_string(log).ok()?;
    text.lines()
        .find_map(|l| l.split("bound=").nth(1).map(|r| r.split_whitespace().next().unwrap_or("").to_string()))
}

async fn runtime_tasks(addr: &str) -> f64 {
    gauge(addr, "connector_operator_runtime_tasks").await
}

/// One unlabelled gauge of the operator's `/metrics`.
async fn gauge(addr: &str, name: &str) -> f64 {
    let Ok(response) = reqwest::get(format!("http://{addr}/metrics")).await else { return f64::NAN };
    let text = response.text().await.unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(&format!("{name} ")))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// A Secret nothing references (an unrelated application's).
fn unrelated(name: &str) -> k8s_openapi::api::core::v1::Secret {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": "unrelated" } },
        "stringData": { "value": "not the operator's business" },
    }))
    .unwrap()
}

fn instance(name: &str, generation: usize) -> ConnectorInstance {
    serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": name },
        "spec": { "platformRef": { "name": "sim" }, "connector": "echo",
                  "configuration": { "echo.greeting": format!("hello {generation}") }, "resyncInterval": "60s" },
    }))
    .unwrap()
}

async fn run(minutes: u64) -> bool {
    let plane = LocalControlPlane::start(Options { name: "soak".into(), audit: false, ..Options::default() })
        .await
        .unwrap();
    let client = plane.client().await.unwrap();
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let (mut simulator, base_url, control) = common::start_simulator(&plane);

    common::platform_namespace(&client, NS, &base_url, 1000, &[]).await;

    let log = plane.dir().join("operator.log");
    let log_file = std::fs::File::create(&log).unwrap();
    let mut command = Command::new(env!("CARGO_BIN_EXE_connector-operator"));
    command
        .args(["--namespace", NS, "--probe-addr", "127.0.0.1:0", "--cluster-id", "soak"])
        .env("KUBECONFIG", plane.operator_kubeconfig_path())
        .env("ALLOWED_PLATFORM_HOSTS", "127.0.0.1")
        .env("RUST_LOG", "info")
        .stdout(log_file.try_clone().unwrap())
        .stderr(log_file);
    let operator = local::process::spawn("connector-operator", command, &plane.pid_file()).unwrap();
    let pid = operator.pid();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let addr = probe_addr(&log).expect("the operator logs its probe address");

    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), NS);
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), NS);
    let mut caches: Vec<(f64, f64, f64)> = Vec::new();
    let mut unrelated_churned = 0usize;
    for i in 0..POPULATION {
        instances.create(&PostParams::default(), &instance(&format!("ci-{i}"), 0)).await.unwrap();
    }
    // Churn: each second one create, one delete, one re-authenticating update, one rename.
    let started = Instant::now();
    let mut samples: Vec<(f64, u64, usize, f64)> = Vec::new();
    let mut next_sample = Instant::now();
    let (mut oldest, mut newest, mut tick) = (0usize, POPULATION, 0usize);
    while started.elapsed() < Duration::from_secs(minutes * 60) {
        tick += 1;
        let _ = instances.create(&PostParams::default(), &instance(&format!("ci-{newest}"), 0)).await;
        newest += 1;
        let _ = instances.delete(&format!("ci-{oldest}"), &DeleteParams::default()).await;
        oldest += 1;
        let live = oldest + fastrand::usize(..newest - oldest);
        let update = json!({ "spec": { "configuration": { "echo.greeting": format!("hello {tick}") } } });
        let _ = instances.patch(&format!("ci-{live}"), &PatchParams::default(), &Patch::Merge(&update)).await;
        let live = oldest + fastrand::usize(..newest - oldest);
        let rename = json!({ "spec": { "displayName": format!("renamed {tick}") } });
        let _ = instances.patch(&format!("ci-{live}"), &PatchParams::default(), &Patch::Merge(&rename)).await;
        for k in 0..5 {
            let _ = secrets.create(&PostParams::default(), &unrelated(&format!("app-{tick}-{k}"))).await;
            if tick > 3 {
                let _ = secrets.delete(&format!("app-{}-{k}", tick - 3), &DeleteParams::default()).await;
                unrelated_churned += 1;
            }
        }
        if Instant::now() >= next_sample {
            caches.push((
                started.elapsed().as_secs_f64() / 60.0,
                gauge(&addr, "connector_operator_secret_cache_entries").await,
                gauge(&addr, "connector_operator_instance_memories").await,
            ));
            samples.push((
                started.elapsed().as_secs_f64() / 60.0,
                rss_kib(pid),
                open_fds(pid),
                runtime_tasks(&addr).await,
            ));
            next_sample += Duration::from_secs(10);
        }
        tokio::time::sleep(Duration::from_millis(1000)).await;
    }
    let calls = control.calls().await.unwrap();
    println!("\n== soak, {minutes} min, population {POPULATION}, {tick} churn ticks (4 changes each)");
    println!(
        "platform calls: {} ({} writes); remote instances now: {}",
        calls.total,
        calls.writes,
        control.instances().await.unwrap().len()
    );
    println!("{:>7} {:>10} {:>6} {:>7}", "minute", "RSS MiB", "fds", "tasks");
    for sample in samples.iter().filter(|s| ((s.0 * 6.0).round() as u64).is_multiple_of(6)) {
        println!("{:>7.1} {:>10.1} {:>6} {:>7}", sample.0, sample.1 as f64 / 1024.0, sample.2, sample.3);
    }
    println!("unrelated Secrets created and deleted: {unrelated_churned}");
    println!("{:>7} {:>14} {:>18}", "minute", "Secret cache", "instance memories");
    for sample in caches.iter().filter(|s| ((s.0 * 6.0).round() as u64).is_multiple_of(6)) {
        println!("{:>7.1} {:>14} {:>18}", sample.0, sample.1, sample.2);
    }
    let most_cached = caches.iter().map(|s| s.1).fold(0.0, f64::max);
    let most_remembered = caches.iter().map(|s| s.2).fold(0.0, f64::max);
    // Referenced: the credentials Secret (and the token Secrets, cached apart); remembered: the
    // live population (200) plus those created or deleted within a sample.
    let bounded = most_cached <= 8.0 && most_remembered <= (POPULATION + 20) as f64;
    println!(
        "largest Secret cache {most_cached}, largest instance memory {most_remembered}: bounded {bounded}"
    );
    let window_start = (minutes.saturating_sub(10)) as f64;
    let window: Vec<_> = samples.iter().filter(|s| s.0 >= window_start).collect();
    let first = window.first().unwrap();
    let last = window.last().unwrap();
    let rss_growth = (last.1 as f64 - first.1 as f64) / first.1 as f64;
    let fd_growth = last.2 as i64 - first.2 as i64;
    let task_growth = last.3 - first.3;
    println!(
        "last {:.0} min: RSS {:.1} -> {:.1} MiB ({:+.1}%), fds {} -> {} ({fd_growth:+}), tasks {} -> {} ({task_growth:+})",
        last.0 - first.0,
        first.1 as f64 / 1024.0,
        last.1 as f64 / 1024.0,
        rss_growth * 100.0,
        first.2,
        last.2,
        first.3,
        last.3
    );
    drop(operator);
    let _ = simulator.kill();
    // Tasks and descriptors fluctuate with in-flight work; growth beyond that is a leak.
    rss_growth < 0.10 && fd_growth <= 16 && task_growth <= 64.0 && bounded
}

fn main() {
    let minutes: u64 = std::env::var("SOAK_MINUTES").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    connector_operator::platform::install_crypto_provider();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let stable = runtime.block_on(run(minutes));
    assert!(stable, "the operator's resources grew during the soak");
    println!("stable: RSS growth < 10% over the last 10 minutes, no growth in descriptors or tasks");
}
