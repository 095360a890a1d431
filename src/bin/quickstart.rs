//! Quick start: a local control plane, the platform simulator, the operator and the example
//! manifests, ending with the token Secret on screen. Ctrl-C stops everything it started.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use connector_operator::api::{self, ConnectorInstance, READY, find_condition};
use connector_operator::controller::{self, RunOptions};
use connector_operator::local::{LocalControlPlane, Options};
use connector_operator::metrics::Metrics;
use connector_operator::sim::{self, SimConfig};
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::GroupVersionKind;
use kube::discovery::pinned_kind;

/// Runs connector-operator end to end on this machine, on embedded defaults.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Start only the local control plane (etcd + kube-apiserver + kube-controller-manager) and
    /// wait for Ctrl-C.
    #[arg(long)]
    cluster_only: bool,
    /// Manifests to apply (files or directories of .yaml files).
    #[arg(long, default_value = concat!(env!("CARGO_MANIFEST_DIR"), "/examples"))]
    manifests: PathBuf,
    /// Where the platform simulator listens (loopback).
    #[arg(long, default_value = "127.0.0.1:8089")]
    simulator_listen: std::net::SocketAddr,
    /// Stop everything and exit once the token Secret is shown (instead of waiting for Ctrl-C).
    #[arg(long)]
    exit: bool,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,kube=error,kube_client=off"));
    tracing_subscriber::fmt().with_env_filter(filter).init();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("quickstart: {err}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    let started = Instant::now();
    println!(
        "==> starting a local Kubernetes control plane (etcd {} + kube-apiserver {})",
        connector_operator::local::etcd_version(),
        connector_operator::local::kube_version()
    );
    let mut plane =
        LocalControlPlane::start(Options { name: "quickstart".into(), audit: false, ..Options::default() })
            .await?;
    println!(
        "    Kubernetes {} ready in {:.1} s at {}",
        plane.version(),
        plane.started_in().as_secs_f64(),
        plane.server()
    );
    let pids: Vec<String> = plane.pids().iter().map(u32::to_string).collect();
    println!("control-plane-pids: {}", pids.join(" "));
    if args.cluster_only {
        println!("export KUBECONFIG={}", plane.kubeconfig_path().display());
        println!("press Ctrl-C to stop");
        wait_for_shutdown_signal().await;
        plane.stop();
        return Ok(());
    }
    let client = plane.client().await?;

    println!("==> installing the CRDs");
    api::crd::install(&client, Duration::from_secs(30)).await?;

    println!("==> starting the Open Connectors platform simulator");
    let listen = if std::net::TcpListener::bind(args.simulator_listen).is_ok() {
        args.simulator_listen
    } else {
        std::net::SocketAddr::from(([127, 0, 0, 1], 0))
    };
    let simulator = sim::start(SimConfig { listen, ..SimConfig::default() }).await?;
    println!("    {}", simulator.base_url());

    println!("==> starting the operator");
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let (ready_tx, _ready_rx) = tokio::sync::watch::channel(false);
    let mut stop = stop_rx.clone();
    let operator = tokio::spawn(controller::run(
        client.clone(),
        RunOptions {
            instance_name: Some("quickstart".into()),
            settings: controller::Settings {
                // The simulator listens on loopback.
                allowed_platform_hosts: connector_operator::platform::AllowedHosts::with(&[
                    "127.0.0.1".into()
                ])?,
                ..controller::Settings::default()
            },
            ..RunOptions::default()
        },
        Metrics::default(),
        async move {
            let _ = stop.wait_for(|s| *s).await;
        },
        ready_tx,
    ));

    println!("==> applying {}", args.manifests.display());
    let instances = apply_manifests(&client, &args.manifests, &simulator.base_url()).await?;

    for (namespace, name) in &instances {
        println!("==> waiting for ConnectorInstance {namespace}/{name} to be Ready");
        let ci = wait_ready(&client, namespace, name, Duration::from_secs(60)).await?;
        show(&client, &ci).await?;
    }
    println!("\nquick start done in {:.1} s", started.elapsed().as_secs_f64());
    println!("try it:  export KUBECONFIG={}", plane.kubeconfig_path().display());
    println!("         kubectl get connectors -A     # ConnectorInstances and platforms");
    println!("         kubectl describe conn support-desk");
    if let Some((namespace, name)) = instances.first() {
        println!("         cargo install --path . --bin kubectl-connector   # the kubectl plugin, once");
        println!(
            "         kubectl connector status {name} -n {namespace}  # one screen: token, test, plan, Events"
        );
    }

    if !args.exit {
        println!("\npress Ctrl-C to stop the operator, the simulator and the control plane");
        wait_for_shutdown_signal().await;
    }
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(10), operator).await;
    simulator.shutdown().await;
    plane.stop();
    println!("stopped everything the quick start started");
    Ok(())
}

/// Applies every document of the manifests (server-side apply), pointing ConnectorPlatforms at
/// the running simulator. Returns the ConnectorInstances applied.
async fn apply_manifests(
    client: &kube::Client,
    path: &Path,
    simulator_url: &str,
) -> Result<Vec<(String, String)>, Box<dyn std::error::Error>> {
    let mut files: Vec<PathBuf> = if path.is_dir() {
        std::fs::read_dir(path)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
            .collect()
    } else {
        vec![path.to_path_buf()]
    };
    // Platforms first, then instances.
    files.sort_by_key(|p| (!p.to_string_lossy().contains("platform"), p.clone()));
    let mut instances = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file)?;
        for document in serde_norway::Deserializer::from_str(&text) {
            let value: serde_json::Value = serde::Deserialize::deserialize(document)?;
            if value.is_null() {
                continue;
            }
            let mut object: DynamicObject = serde_json::from_value(value)?;
            let types = object.types.clone().ok_or("a manifest without apiVersion/kind")?;
            let gvk = GroupVersionKind::try_from(&types)?;
            if gvk.kind == "ConnectorPlatform" {
                object.data["spec"]["baseUrl"] = serde_json::json!(simulator_url);
            }
            let (resource, _) = pinned_kind(client, &gvk).await?;
            let namespace = object.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let name = object.metadata.name.clone().ok_or("a manifest without metadata.name")?;
            let api: Api<DynamicObject> = Api::namespaced_with(client.clone(), &namespace, &resource);
            api.patch(&name, &PatchParams::apply("quickstart").force(), &Patch::Apply(&object)).await?;
            println!("    {} {namespace}/{name}", gvk.kind);
            if gvk.kind == "ConnectorInstance" {
                instances.push((namespace, name));
            }
        }
    }
    Ok(instances)
}

async fn wait_ready(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    timeout: Duration,
) -> Result<ConnectorInstance, Box<dyn std::error::Error>> {
    let api: Api<ConnectorInstance> = Api::namespaced(client.clone(), namespace);
    let deadline = Instant::now() + timeout;
    let mut last = String::new();
    loop {
        let ci = api.get(name).await?;
        if let Some(status) = &ci.status
            && let Some(ready) = find_condition(&status.conditions, READY)
        {
            let line =
                format!("    Ready={} reason={} message={}", ready.status, ready.reason, ready.message);
            if line != last {
                println!("{line}");
                last = line;
            }
            if ready.status == "True" && status.observed_generation == ci.metadata.generation {
                return Ok(ci);
            }
        }
        if Instant::now() > deadline {
            return Err(
                format!("ConnectorInstance {namespace}/{name} was not Ready within {timeout:?}").into()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn show(client: &kube::Client, ci: &ConnectorInstance) -> Result<(), Box<dyn std::error::Error>> {
    let namespace = ci.metadata.namespace.clone().unwrap_or_default();
    let status = ci.status.clone().unwrap_or_default();
    let secret_name = status.token_secret_name.clone().ok_or("no token Secret in status")?;
    let secret: Secret = Api::namespaced(client.clone(), &namespace).get(&secret_name).await?;
    println!("==> token Secret {namespace}/{secret_name} (type {})", secret.type_.as_deref().unwrap_or(""));
    for (key, value) in secret.data.iter().flatten() {
        // The default keys that hold no secret are shown; the token and every template key (which
        // may hold the token) only by their size.
        let shown = match key.as_str() {
            "token" => {
                format!("<{} bytes, sha256 {}…>", value.0.len(), status.token_sha256.as_deref().unwrap_or(""))
            }
            "instanceId" | "baseUrl" | "connector" => String::from_utf8_lossy(&value.0).into_owned(),
            _ => format!("<{} bytes from the template>", value.0.len()),
        };
        println!("    {key:<11} {shown}");
    }
    let last = match status.last_action.map(|a| a.type_) {
        Some(action) => {
            format!(", last action: {}", connector_operator::controller::core::step::action_reason(action))
        }
        None => String::new(),
    };
    println!("    remote instance {}{last}", status.instance_id.map_or("-".to_string(), |id| id.to_string()));
    Ok(())
}

async fn wait_for_shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
