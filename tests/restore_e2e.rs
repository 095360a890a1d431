//! Restore without duplicates: a ConnectorInstance deleted with `deletionPolicy: Orphan` and
//! applied again (a new UID, as a restore from Git or a backup makes it) adopts its remote
//! instance by its reference tag (cluster id, namespace, name), with no POST, whether the
//! operator orphaned it itself or found it in its start-up scan; an operator with another
//! `--cluster-id` does not adopt it, and neither does a resource of the same name for another
//! connector. A new instance costs no search once the platform is scanned.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use connector_operator::api::{ActionType, ConnectorInstance, cluster_tag, ownership_tag, reference_tag};
use kube::ResourceExt;
use kube::api::DeleteParams;
use serde_json::json;
use support::eventually;
use support::operator::{Env, Operator, echo_spec, refused_start, zendesk_spec};

fn orphan_spec() -> serde_json::Value {
    let mut spec = echo_spec();
    spec["deletionPolicy"] = json!("Orphan");
    spec
}

/// Deletes `name` as `kubectl delete` does and waits until it is gone.
async fn delete(env: &Env, name: &str) {
    env.instances().delete(name, &DeleteParams::default()).await.unwrap();
    eventually(&format!("{name} to be deleted"), Duration::from_secs(30), || async move {
        env.instances().get_opt(name).await.unwrap().is_none().then_some(())
    })
    .await;
}

/// Applies a manifest with `deletionPolicy: Orphan` and waits for Ready; the resource and its
/// remote instance's id.
async fn ready_orphaning(env: &Env, name: &str) -> (ConnectorInstance, i64) {
    env.create_instance(name, orphan_spec()).await;
    let ci = env.wait_ready(name).await;
    let id = ci.status.as_ref().unwrap().instance_id.unwrap();
    (ci, id)
}

/// Applies the manifest again and waits for Ready; the new resource.
async fn reapply(env: &Env, name: &str) -> ConnectorInstance {
    ready_orphaning(env, name).await.0
}

fn last_action(ci: &ConnectorInstance) -> Option<ActionType> {
    ci.status.as_ref().and_then(|s| s.last_action.as_ref()).map(|a| a.type_)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reapplied_manifest_adopts_its_remote_instance_and_another_cluster_id_does_not() {
    let mut env = Env::start_with("restore", &["--cluster-id", "east"]).await;
    let (first, id) = ready_orphaning(&env, "crm").await;
    let remote = env.control.instance(id).await.unwrap().unwrap();
    let reference = reference_tag("east", &env.ns, "crm");
    for tag in [ownership_tag(&first.uid().unwrap()), reference.clone(), cluster_tag("east")] {
        assert!(remote.tags.contains(&tag), "{tag} in {:?}", remote.tags);
    }
    let token = remote.token.clone();

    // Deleted with Orphan and applied again (new UID): adopted, 0 POSTs, same id and token.
    delete(&env, "crm").await;
    assert!(env.control.instance(id).await.unwrap().is_some(), "orphaned, not deleted");
    env.control.reset_calls().await.unwrap();
    let second = reapply(&env, "crm").await;
    assert_ne!(second.uid(), first.uid());
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 0, "{calls:?}");
    assert_eq!(second.status.as_ref().unwrap().instance_id, Some(id));
    assert_eq!(last_action(&second), Some(ActionType::Adopted));
    let adopted = env.control.instance(id).await.unwrap().unwrap();
    assert!(adopted.tags.contains(&ownership_tag(&second.uid().unwrap())), "re-tagged: {:?}", adopted.tags);
    assert!(!adopted.tags.contains(&ownership_tag(&first.uid().unwrap())), "{:?}", adopted.tags);
    assert!(adopted.tags.contains(&reference));
    assert_eq!(adopted.token, token, "the same instance, not re-authenticated");
    assert_eq!(env.secret_token("crm-token").await, Some(token.clone()), "its token in the new token Secret");
    assert_eq!(env.control.instances().await.unwrap().len(), 1, "no duplicate");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "quiet once adopted: {calls:?}");

    // The same after a restart: the operator learns of the orphan from its scan of the platform,
    // which the first new instance starts (that one searches by tag while the scan runs).
    delete(&env, "crm").await;
    env.operator.kill();
    env.operator.restart();
    env.create_instance("billing", echo_spec()).await;
    env.wait_ready("billing").await;
    eventually("the scan of the platform", Duration::from_secs(30), || async {
        env.operator.logs().contains("scanned the platform for this cluster's instances").then_some(())
    })
    .await;
    let indexed = env.operator.metric("connector_operator_restore_index_keys", "").await;
    assert!(indexed >= 1.0, "the orphan is in the index: {indexed}");
    env.control.reset_calls().await.unwrap();
    let third = reapply(&env, "crm").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("GET /instances"), calls.count("POST /instances")), (1, 0), "{calls:?}");
    assert_eq!(third.status.as_ref().unwrap().instance_id, Some(id));
    assert_eq!(last_action(&third), Some(ActionType::Adopted));
    assert_eq!(env.control.instances().await.unwrap().len(), 2, "crm's and billing's, no duplicate");

    // A new instance once the platform is scanned: created without any search.
    env.control.reset_calls().await.unwrap();
    env.create_instance("billing-2", echo_spec()).await;
    env.wait_ready("billing-2").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("GET /instances"), calls.count("POST /instances")), (0, 1), "{calls:?}");

    // Another cluster id: the manifest of the same name is not this cluster's; a new instance.
    delete(&env, "crm").await;
    env.operator.terminate(Duration::from_secs(15));
    env.operator = Operator::start(&env.ns, &["--cluster-id", "west"]);
    env.control.reset_calls().await.unwrap();
    let elsewhere = reapply(&env, "crm").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "{calls:?}");
    let new_id = elsewhere.status.as_ref().unwrap().instance_id.unwrap();
    assert_ne!(new_id, id);
    assert_eq!(last_action(&elsewhere), Some(ActionType::Created));
    let left = env.control.instance(id).await.unwrap().unwrap();
    let east_tags = [ownership_tag(&third.uid().unwrap()), reference.clone(), cluster_tag("east")];
    assert_eq!(left.tags, east_tags, "east's instance is left as it was");
    assert_eq!(left.token, token);
    let created = env.control.instance(new_id).await.unwrap().unwrap();
    assert!(
        created.tags.contains(&reference_tag("west", &env.ns, "crm"))
            && created.tags.contains(&cluster_tag("west"))
    );

    // Cleanup through the operator: deleted with Delete, only its own.
    env.patch_spec("crm", json!({ "deletionPolicy": "Delete" })).await;
    for name in ["crm", "billing", "billing-2"] {
        delete(&env, name).await;
    }
    assert!(env.control.instance(new_id).await.unwrap().is_none());
    assert!(env.control.instance(id).await.unwrap().is_some(), "east's orphan is not west's to delete");
    env.assert_no_secret_leaks(&[]).await;
}

/// The same name applied again for another connector: its reference tag finds the first one's
/// orphan, which is read and not adopted (a Warning `RemoteNotAdopted` naming both connectors); a
/// new instance is created, the orphan is left exactly as it was (no write reaches it, also not
/// when the new one is deleted), and nothing is searched again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_name_for_another_connector_leaves_the_orphan_alone() {
    let env = Env::start_with("restore-other", &["--cluster-id", "east"]).await;
    let (_, orphan_id) = ready_orphaning(&env, "crm").await;
    delete(&env, "crm").await;
    let orphan = env.control.instance(orphan_id).await.unwrap().unwrap();

    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    env.control.reset_calls().await.unwrap();
    env.create_instance("crm", zendesk_spec()).await;
    let second = env.wait_ready("crm").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(
        (calls.count("GET /instances"), calls.count("GET /instances/{id}"), calls.count("POST /instances")),
        (1, 1, 1),
        "searched by the reference tag, read the orphan, created: {calls:?}"
    );
    assert_eq!(calls.writes, 1, "the POST is the only write: {calls:?}");
    let new_id = second.status.as_ref().unwrap().instance_id.unwrap();
    assert_ne!(new_id, orphan_id);
    assert_eq!(last_action(&second), Some(ActionType::Created));
    let note = eventually("the RemoteNotAdopted Event", Duration::from_secs(30), || async {
        env.events().await.into_iter().find_map(|e| {
            let about_crm = e.regarding.as_ref().and_then(|r| r.uid.as_deref()) == second.uid().as_deref();
            (about_crm
                && e.reason.as_deref() == Some("RemoteNotAdopted")
                && e.type_.as_deref() == Some("Warning"))
            .then(|| e.note.unwrap_or_default())
        })
    })
    .await;
    assert!(
        note.contains(&format!("remote instance {orphan_id}"))
            && note.contains("`echo`")
            && note.contains("`zendesk`"),
        "{note}"
    );
    assert_eq!(
        env.control.instance(orphan_id).await.unwrap().unwrap(),
        orphan,
        "the orphan is left as it was"
    );
    assert_eq!(env.control.instances().await.unwrap().len(), 2);
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "quiet once Ready: {calls:?}");
    env.assert_no_secret_leaks(&["correct-horse-battery"]).await;

    // Deleted as `kubectl delete` does: its own instance goes, the orphan stays.
    delete(&env, "crm").await;
    assert!(env.control.instance(new_id).await.unwrap().is_none());
    assert_eq!(
        env.control.instance(orphan_id).await.unwrap().unwrap(),
        orphan,
        "not this resource's to delete"
    );
}

/// Instances created before the operator had a cluster id keep working: no PATCH for the new tags
/// alone (not at start, not on a requested pass); their next write of name and tags carries them,
/// and from then on a re-applied manifest adopts them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_from_before_the_cluster_id_take_its_tags_with_their_next_write() {
    let mut env = Env::start("migrate").await;
    let mut spec = orphan_spec();
    spec["tags"] = json!(["team-a"]);
    env.create_instance("crm", spec).await;
    let first = env.wait_ready("crm").await;
    let id = first.status.as_ref().unwrap().instance_id.unwrap();
    let own = ownership_tag(&first.uid().unwrap());
    assert_eq!(env.control.instance(id).await.unwrap().unwrap().tags, ["team-a".to_string(), own.clone()]);

    env.operator.terminate(Duration::from_secs(15));
    env.operator = Operator::start(&env.ns, &["--cluster-id", "east"]);
    env.control.reset_calls().await.unwrap();
    env.annotate("crm", json!({ "openconnectors.io/reconcile-requested-at": "after-upgrade" })).await;
    eventually("the requested pass", Duration::from_secs(30), || async {
        let status = env.instances().get("crm").await.ok()?.status?;
        (status.last_handled_reconcile_at.as_deref() == Some("after-upgrade")).then_some(())
    })
    .await;
    let (quiet, writes) = env.quiet_window(Duration::from_secs(3)).await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.writes, quiet.total, writes), (0, 0, 0), "no write for the new tags alone: {calls:?}");
    assert_eq!(env.control.instance(id).await.unwrap().unwrap().tags, ["team-a".to_string(), own.clone()]);

    // The next change of name or tags: one PATCH, with the new tags.
    env.control.reset_calls().await.unwrap();
    env.patch_spec("crm", json!({ "tags": ["team-a", "team-b"] })).await;
    eventually("the tags to reach the platform", Duration::from_secs(30), || async {
        let tags = env.control.instance(id).await.ok()??.tags;
        tags.contains(&"team-b".to_string()).then_some(tags)
    })
    .await;
    env.wait_ready("crm").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.writes, calls.count("PATCH /instances/{id}")), (1, 1), "{calls:?}");
    let tags = env.control.instance(id).await.unwrap().unwrap().tags;
    let reference = reference_tag("east", &env.ns, "crm");
    assert_eq!(tags, ["team-a".to_string(), "team-b".into(), own, reference, cluster_tag("east")]);

    // Migrated: a re-applied manifest adopts it.
    delete(&env, "crm").await;
    env.control.reset_calls().await.unwrap();
    env.create_instance(
        "crm",
        json!({ "platformRef": { "name": "sim" }, "connector": "echo", "tags": ["team-a", "team-b"] }),
    )
    .await;
    let again = env.wait_ready("crm").await;
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 0);
    assert_eq!(again.status.as_ref().unwrap().instance_id, Some(id));
    assert_eq!(last_action(&again), Some(ActionType::Adopted));
}

/// The deleted resource's token Secret outlives it for a moment (the garbage collector removes it
/// after the resource is gone; here a finalizer of another controller holds it): the re-created
/// resource says `SecretConflict` meanwhile, with no platform call, and goes Ready with its
/// adopted instance, without any other change, once the old Secret is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reapplied_manifest_waits_for_the_old_token_secret_to_go() {
    let env = Env::start_with("restore-gc", &["--cluster-id", "east"]).await;
    let (_, id) = ready_orphaning(&env, "crm").await;
    let hold = json!({ "metadata": { "finalizers": ["example.com/hold"] } });
    let params = kube::api::PatchParams::default();
    env.secrets().patch("crm-token", &params, &kube::api::Patch::Merge(&hold)).await.unwrap();
    delete(&env, "crm").await;
    eventually("the garbage collector to delete the old token Secret", Duration::from_secs(30), || async {
        let secret = env.secrets().get_opt("crm-token").await.ok()??;
        secret.metadata.deletion_timestamp.is_some().then_some(())
    })
    .await;

    env.control.reset_calls().await.unwrap();
    env.create_instance("crm", orphan_spec()).await;
    let (reason, message) = env.wait_stalled("crm").await;
    assert_eq!(reason, "SecretConflict", "{message}");
    assert_eq!(env.control.calls().await.unwrap().total, 0, "nothing called while it waits");

    let release = json!({ "metadata": { "finalizers": null } });
    env.secrets().patch("crm-token", &params, &kube::api::Patch::Merge(&release)).await.unwrap();
    let ready = env.wait_ready("crm").await;
    assert_eq!(ready.status.as_ref().unwrap().instance_id, Some(id));
    assert_eq!(last_action(&ready), Some(ActionType::Adopted));
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 0);
    assert_eq!(
        env.secret_token("crm-token").await,
        Some(env.control.instance(id).await.unwrap().unwrap().token)
    );
}

/// A cluster id that cannot go into a tag ends the start with an error naming it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_id_that_does_not_fit_a_tag_stops_the_start() {
    let text = refused_start("restore-bad", &["--cluster-id", "prod east"]).await;
    assert!(text.contains("--cluster-id: cluster id `prod east` must be 1 to 63"), "{text}");
}
