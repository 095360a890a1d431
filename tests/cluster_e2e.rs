//! Proves the test harness runs a real control plane: CRD registration by server-side apply,
//! watches, finalizers, ownerReference garbage collection, and clean-up of killed runs.

mod support;

use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::api::{Api, DeleteParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, conditions, wait::await_condition, watcher};
use kube::{CustomResource, CustomResourceExt, Resource, ResourceExt};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A throw-away resource type that exists only in this test.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, JsonSchema)]
#[kube(group = "harness.openconnectors.io", version = "v1", kind = "Widget", namespaced)]
struct WidgetSpec {
    size: u32,
}

const FINALIZER: &str = "harness.openconnectors.io/cleanup";

#[tokio::test]
async fn crd_watch_finalizer_and_owner_garbage_collection() -> Result<(), Box<dyn std::error::Error>> {
    let client = support::client().await;

    // Register the CRD by server-side apply and wait until it is established.
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crd_name = Widget::crd_name();
    crds.patch(crd_name, &PatchParams::apply("harness-test").force(), &Patch::Apply(Widget::crd())).await?;
    tokio::time::timeout(
        Duration::from_secs(20),
        await_condition(crds.clone(), crd_name, conditions::is_crd_established()),
    )
    .await??;

    let ns = support::namespace(&client, "harness").await;
    let widgets: Api<Widget> = Api::namespaced(client.clone(), &ns);

    // A watcher sees the object once it is created.
    let mut seen = watcher(widgets.clone(), watcher::Config::default()).applied_objects().boxed();
    let mut widget = Widget::new("w1", WidgetSpec { size: 3 });
    widget.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let created = widgets.create(&PostParams::default(), &widget).await?;
    let observed = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(event) = seen.next().await {
            if let Ok(object) = event
                && object.name_any() == "w1"
            {
                return Some(object);
            }
        }
        None
    })
    .await?
    .ok_or("watch stream ended before the widget was seen")?;
    assert_eq!(observed.spec.size, 3);
    assert_eq!(observed.uid(), created.uid());

    // A Secret owned by the widget.
    let secrets: Api<Secret> = Api::namespaced(client.clone(), &ns);
    let owner = created.controller_owner_ref(&()).ok_or("no owner reference")?;
    let secret = Secret {
        metadata: ObjectMeta {
            name: Some("w1-child".into()),
            owner_references: Some(vec![OwnerReference { block_owner_deletion: Some(true), ..owner }]),
            ..Default::default()
        },
        string_data: Some([("k".to_string(), "v".to_string())].into()),
        ..Default::default()
    };
    secrets.create(&PostParams::default(), &secret).await?;

    // Deleting holds the object while the finalizer is on it.
    widgets.delete("w1", &DeleteParams::default()).await?;
    let held = widgets.get("w1").await?;
    assert!(held.meta().deletion_timestamp.is_some(), "deletion is pending on the finalizer");
    assert!(secrets.get_opt("w1-child").await?.is_some(), "the child survives while its owner exists");

    // Removing the finalizer lets the deletion finish; the owned Secret is garbage-collected.
    let release = serde_json::json!({ "metadata": { "finalizers": null } });
    widgets.patch("w1", &PatchParams::default(), &Patch::Merge(&release)).await?;
    support::eventually("the widget to be gone", Duration::from_secs(10), || {
        let widgets = widgets.clone();
        async move { matches!(widgets.get_opt("w1").await, Ok(None)).then_some(()) }
    })
    .await;
    // The garbage collector learns of a CRD registered after it started at its next discovery,
    // which kube-controller-manager runs every 30 s: allow for one of those, and the collection.
    support::eventually("the owned Secret to be garbage-collected", Duration::from_secs(75), || {
        let secrets = secrets.clone();
        async move { matches!(secrets.get_opt("w1-child").await, Ok(None)).then_some(()) }
    })
    .await;
    Ok(())
}

/// SIGKILL of a process running a control plane leaves no etcd / kube-apiserver behind, and the
/// next start removes the dead run's directory.
#[tokio::test]
async fn killed_owner_leaves_no_control_plane_processes() -> Result<(), Box<dyn std::error::Error>> {
    use std::io::BufRead;

    let state = tempfile::tempdir()?;
    let mut owner = std::process::Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(["--cluster-only"])
        .env("CONNECTOR_OPERATOR_STATE", state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()?;
    let stdout = owner.stdout.take().ok_or("no stdout")?;
    // The binary prints `control-plane-pids: <pid> <pid> …` once the API server is ready.
    let pids = tokio::task::spawn_blocking(move || {
        std::io::BufReader::new(stdout).lines().map_while(Result::ok).find_map(|line| {
            line.strip_prefix("control-plane-pids:")
                .map(|rest| rest.split_whitespace().filter_map(|p| p.parse::<u32>().ok()).collect::<Vec<_>>())
        })
    })
    .await?
    .ok_or("the cluster-only run never reported its pids")?;
    assert!(pids.len() >= 2, "etcd and kube-apiserver at least: {pids:?}");
    assert!(pids.iter().all(|pid| std::path::Path::new(&format!("/proc/{pid}")).exists()));

    owner.kill()?;
    owner.wait()?;
    support::eventually("the control plane processes to end", Duration::from_secs(10), || {
        let pids = pids.clone();
        async move { pids.iter().all(|pid| !is_running(*pid)).then_some(()) }
    })
    .await;

    // The dead run's directory is still there until the next start cleans it up.
    let leftover = std::fs::read_dir(state.path())?.count();
    assert_eq!(leftover, 1, "one run directory left by the killed owner");
    let killed = connector_operator::local::state::clean_stale_runs(state.path());
    assert_eq!(killed, 0, "nothing left to kill: the parent-death signal already ended them");
    assert_eq!(std::fs::read_dir(state.path())?.count(), 0, "the stale run directory is removed");
    Ok(())
}

fn is_running(pid: u32) -> bool {
    // A zombie (already dead, not yet reaped by init) counts as ended.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|stat| stat.rsplit(')').next().is_some_and(|rest| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}
