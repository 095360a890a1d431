//! Shards: three operator processes on one namespace, split by `--watch-label-selector` (two
//! shards and the default one). Each instance is reconciled by exactly one; relabeling hands an
//! instance over without a remote call of its own; deletion works from whichever shard holds it.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use connector_operator::api::ConnectorInstance;
use connector_operator::sim::{Faults, OperationDelay};
use futures::StreamExt;
use kube::api::{DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::eventually;
use support::operator::{Env, Operator, echo_spec, refused_start, wait_ready_in, zendesk_spec};

const KEY: &str = "sharding.openconnectors.io/key";
/// Instances across the three processes.
const N: usize = 300;

/// Which process's log (0: default, 1: shard-0, 2: shard-1) names the instance in a pass.
fn reconciled_by(logs: &[String], name: &str) -> Vec<usize> {
    let span = format!(" name=\"{name}\"}}");
    logs.iter().enumerate().filter(|(_, log)| log.contains(&span)).map(|(i, _)| i).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_split_the_instances_and_hand_over_a_relabeled_one() {
    let default_selector = format!("!{KEY}");
    let env = Env::start_with("shard", &["--watch-label-selector", &default_selector]).await;
    let shard = |n: usize| {
        let selector = format!("{KEY}=shard-{n}");
        Operator::start(&env.ns, &["--watch-label-selector", &selector, "--platform-status=false"])
    };
    let shards = [shard(0), shard(1)];
    let processes = || [&env.operator, &shards[0], &shards[1]];
    let logs = || processes().map(|p| p.logs()).to_vec();

    // 300 instances: 100 without the label (default), 100 in shard-0, 100 in shard-1.
    let owner = |i: usize| i % 3;
    let creates = futures::stream::iter(0..N).map(|i| {
        let instances = env.instances();
        async move {
            let mut metadata = json!({ "name": format!("ci-{i}") });
            if owner(i) > 0 {
                metadata["labels"] = json!({ KEY: format!("shard-{}", owner(i) - 1) });
            }
            let ci = serde_json::from_value(json!({
                "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                "metadata": metadata, "spec": echo_spec(),
            }))
            .unwrap();
            instances.create(&PostParams::default(), &ci).await.unwrap();
        }
    });
    creates.buffer_unordered(16).collect::<Vec<()>>().await;
    for i in 0..N {
        wait_ready_in(&env.instances(), &format!("ci-{i}"), Duration::from_secs(120)).await;
    }
    let seen = logs();
    for i in 0..N {
        assert_eq!(reconciled_by(&seen, &format!("ci-{i}")), [owner(i)], "ci-{i}: exactly its shard");
    }
    assert_eq!(env.control.instances().await.unwrap().len(), N, "one remote instance each");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.writes, writes), (0, 0), "quiet once Ready, all three processes: {calls:?}");

    // Hand 50 of shard-0's to shard-1, then ask each for a pass: shard-1 runs it, with no remote
    // write; shard-0 does not touch them again.
    let before: Vec<usize> = logs().iter().map(String::len).collect();
    env.control.reset_calls().await.unwrap();
    let moved: Vec<String> = (0..N).filter(|i| owner(*i) == 1).take(50).map(|i| format!("ci-{i}")).collect();
    for name in &moved {
        let patch = json!({ "metadata": { "labels": { KEY: "shard-1" } } });
        env.instances().patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }
    for name in &moved {
        env.annotate(name, json!({ "openconnectors.io/reconcile-requested-at": "handover" })).await;
    }
    for name in &moved {
        eventually(&format!("{name} to be reconciled by shard-1"), Duration::from_secs(60), || async {
            let ci = env.instances().get(name).await.unwrap();
            let status = ci.status.unwrap_or_default();
            (status.last_handled_reconcile_at.as_deref() == Some("handover")).then_some(())
        })
        .await;
    }
    let after: Vec<String> = logs().iter().zip(&before).map(|(log, from)| log[*from..].to_string()).collect();
    for name in &moved {
        assert_eq!(reconciled_by(&after, name), [2], "{name}: handed over to shard-1 alone");
    }
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 0, "no new remote instance: {calls:?}");
    assert_eq!(calls.writes, 0, "no remote write for a hand-over: {calls:?}");
    assert_eq!(env.control.instances().await.unwrap().len(), N, "no duplicate remote instance");

    // Bad input in a shard: it stalls there, in that shard alone, with no platform call; fixed, it
    // goes Ready without a restart.
    let before: Vec<usize> = logs().iter().map(String::len).collect();
    env.control.reset_calls().await.unwrap();
    let bad: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "bad", "labels": { KEY: "shard-1" } }, "spec": zendesk_spec(),
    }))
    .unwrap();
    env.instances().create(&PostParams::default(), &bad).await.unwrap();
    let (reason, message) = env.wait_stalled("bad").await;
    assert_eq!(reason, "ConfigurationSecretNotFound", "{message}");
    let stalling = env.control.calls().await.unwrap().total;
    let (quiet, writes) = env.quiet_window(Duration::from_secs(3)).await;
    assert_eq!((stalling, quiet.total, writes), (0, 0, 0), "no platform call to stall, then quiet");
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    env.wait_ready("bad").await;
    let after: Vec<String> = logs().iter().zip(&before).map(|(log, from)| log[*from..].to_string()).collect();
    assert_eq!(reconciled_by(&after, "bad"), [2], "shard-1 alone");

    // Plain deletion of everything: each shard removes its own finalizers, nothing is left.
    env.instances().delete_collection(&DeleteParams::default(), &Default::default()).await.unwrap();
    eventually("every instance gone", Duration::from_secs(120), || async {
        env.instances().list(&Default::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;
    assert!(env.control.instances().await.unwrap().is_empty(), "no remote instance left");
}

/// An instance relabeled while the shard it leaves has its create in flight (the platform slow to
/// take the POST): the shard it enters finds the finalizer it did not add and no remote instance
/// recorded, waits for that create instead of making a second instance, and takes up the one it
/// made. Quiet afterwards; a plain delete leaves nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relabel_during_a_create_waits_for_it_and_makes_no_second_instance() {
    let default_selector = format!("!{KEY}");
    // The POST held 6 s (below the timeout): shard-0 sees the relabel and starts its pass well
    // within that, also on a loaded machine.
    let timeout = ["--platform-timeout", "10s"];
    let env =
        Env::start_with("handover", &["--watch-label-selector", &default_selector, timeout[0], timeout[1]])
            .await;
    let selector = format!("{KEY}=shard-0");
    let shard = Operator::start(
        &env.ns,
        &["--watch-label-selector", &selector, "--platform-status=false", timeout[0], timeout[1]],
    );
    // The platform takes 6 s before it handles a POST (and makes the instance).
    let slow_post = Faults {
        delay_before: Some(OperationDelay { ms: 6000, operation: Some("POST /instances".into()) }),
        ..Faults::default()
    };
    env.control.set_faults(&slow_post).await.unwrap();
    env.control.reset_calls().await.unwrap();
    env.create_instance("moving", echo_spec()).await;
    eventually("the default process's POST under way", Duration::from_secs(30), || async {
        (env.control.calls().await.unwrap().count("POST /instances") == 1).then_some(())
    })
    .await;
    assert!(env.control.instances().await.unwrap().is_empty(), "the POST has not taken effect yet");
    let patch = json!({ "metadata": { "labels": { KEY: "shard-0" } } });
    env.instances().patch("moving", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();

    // A pass asked for now is shard-0's: it runs once the instance records its remote instance.
    env.annotate("moving", json!({ "openconnectors.io/reconcile-requested-at": "handover" })).await;
    let ci = eventually("shard-0 to take the instance up", Duration::from_secs(60), || async {
        let ci = env.instances().get("moving").await.unwrap();
        let status = ci.status.clone().unwrap_or_default();
        let ready = connector_operator::api::is_condition_true(&status.conditions, "Ready");
        (ready && status.last_handled_reconcile_at.as_deref() == Some("handover")).then_some(ci)
    })
    .await;
    env.control.clear_faults().await.unwrap();
    let remote = env.control.instances().await.unwrap();
    assert_eq!(remote.len(), 1, "one remote instance: {remote:?}");
    assert_eq!(ci.status.unwrap().instance_id, Some(remote[0].id));
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "no second create: {calls:?}");
    assert_eq!(env.secret_token("moving-token").await, Some(remote[0].token.clone()));
    assert!(
        shard.logs().contains("waits for a create it may have in flight"),
        "shard-0 waited for the create under way"
    );
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.writes, writes), (0, 0), "quiet once Ready: {calls:?}");

    env.instances().delete("moving", &DeleteParams::default()).await.unwrap();
    eventually("the instance gone", Duration::from_secs(60), || async {
        env.instances().get_opt("moving").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instances().await.unwrap().is_empty(), "no remote instance left");
    env.assert_no_secret_leaks(&[]).await;
}

/// A selector the API server refuses ends the start with an error that names it, instead of a
/// watch retried for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_label_selector_the_api_server_refuses_stops_the_start() {
    let text =
        refused_start("shard-bad", &["--watch-label-selector", "sharding.openconnectors.io/key in (shard-1"])
            .await;
    assert!(text.contains("--watch-label-selector `sharding.openconnectors.io/key in (shard-1`"), "{text}");
}
