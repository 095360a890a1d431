//! Scale benchmark of the platform simulator: the simulator runs on a single-threaded tokio
//! runtime of its own (one core); the platform client drives it over loopback from another
//! single-threaded runtime with bounded concurrency. Prints creates and gets per second and
//! latency percentiles.
//!
//! `cargo bench --bench simulator` (env: `SIM_BENCH_INSTANCES`, default 10000;
//! `SIM_BENCH_CONCURRENCY`, default 32; `SIM_BENCH_SECONDS`, time cap per phase, default 60).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::time::{Duration, Instant};

use connector_operator::platform::{InstanceRequest, PlatformClient, PlatformConfig};
use connector_operator::sim::{self, SimConfig};
use futures::StreamExt;
use secrecy::SecretString;

fn env_or(name: &str, default: u64) -> u64 {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

struct Phase {
    name: &'static str,
    done: usize,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Phase {
    fn report(&mut self) {
        self.latencies.sort();
        let pct = |p: f64| {
            let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
            self.latencies.get(i).map(|d| d.as_secs_f64() * 1000.0).unwrap_or(0.0)
        };
        println!(
            "{:<14} {:>6} ops in {:>6.2} s = {:>8.0} ops/s   p50 {:>6.2} ms   p99 {:>6.2} ms   max {:>7.2} ms",
            self.name,
            self.done,
            self.elapsed.as_secs_f64(),
            self.done as f64 / self.elapsed.as_secs_f64(),
            pct(0.50),
            pct(0.99),
            pct(1.0),
        );
    }
}

/// Runs `op(i)` for i in 0..count with `concurrency` in flight, stopping after `cap`.
async fn phase<F, Fut>(
    name: &'static str,
    count: usize,
    concurrency: usize,
    cap: Duration,
    op: F,
) -> (Phase, Vec<i64>)
where
    F: Fn(usize) -> Fut,
    Fut: Future<Output = i64>,
{
    let started = Instant::now();
    let mut results = futures::stream::iter(0..count)
        .take_while(|_| futures::future::ready(started.elapsed() < cap))
        .map(|i| {
            let fut = op(i);
            async move {
                let t = Instant::now();
                let id = fut.await;
                (t.elapsed(), id)
            }
        })
        .buffer_unordered(concurrency);
    let mut latencies = Vec::with_capacity(count);
    let mut ids = Vec::with_capacity(count);
    while let Some((latency, id)) = results.next().await {
        latencies.push(latency);
        ids.push(id);
    }
    let elapsed = started.elapsed();
    (Phase { name, done: latencies.len(), elapsed, latencies }, ids)
}

fn main() {
    let instances = env_or("SIM_BENCH_INSTANCES", 10_000) as usize;
    let concurrency = env_or("SIM_BENCH_CONCURRENCY", 32) as usize;
    let cap = Duration::from_secs(env_or("SIM_BENCH_SECONDS", 60));

    // The simulator: one thread, one single-threaded runtime.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let sim_thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            let handle = sim::start(SimConfig::default()).await.unwrap();
            addr_tx.send(handle.base_url()).unwrap();
            let _ = stop_rx.await;
            handle.shutdown().await;
        });
    });
    let base_url = addr_rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async move {
        let defaults = SimConfig::default();
        let mut cfg = PlatformConfig::new(
            base_url.clone(),
            SecretString::from(defaults.user_secret.clone()),
            SecretString::from(defaults.organization_secret.clone()),
        );
        cfg.allow_http = true;
        cfg.requests_per_second = 0.0;
        let client = PlatformClient::new(cfg).unwrap();
        println!(
            "simulator benchmark: {instances} instances, concurrency {concurrency}, simulator on one \
             single-threaded runtime at {base_url}"
        );

        let (mut create, ids) = phase("create", instances, concurrency, cap, |i| {
            let client = client.clone();
            async move {
                let req = InstanceRequest {
                    element_key: "echo".into(),
                    name: format!("bench-{i}"),
                    tags: vec![format!("owner-{i}"), "bench".into()],
                    ..InstanceRequest::default()
                };
                client.create_instance(&req).await.unwrap().id
            }
        })
        .await;
        create.report();

        let (mut get, _) = phase("get", ids.len(), concurrency, cap, |i| {
            let client = client.clone();
            let id = ids[i];
            async move { client.get_instance(id).await.unwrap().id }
        })
        .await;
        get.report();

        let searches = ids.len().min(2_000);
        let (mut search, _) = phase("tag search", searches, concurrency, cap, |i| {
            let client = client.clone();
            async move {
                let found = client.find_instances_by_tag(&format!("owner-{i}")).await.unwrap();
                assert_eq!(found.len(), 1);
                found[0].id
            }
        })
        .await;
        search.report();

        let total = create.done + get.done;
        let secs = (create.elapsed + get.elapsed).as_secs_f64();
        println!("create+get     {total:>6} ops in {secs:>6.2} s = {:>8.0} ops/s", total as f64 / secs);
    });
    let _ = stop_tx.send(());
    sim_thread.join().unwrap();
}
