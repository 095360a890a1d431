//! End-to-end: the real operator binary against a real kube-apiserver + etcd and the platform
//! simulator. Each test has its own namespace, simulator and operator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use connector_operator::api::{ActionType, ConnectorInstance, ownership_tag};
use connector_operator::sim::{self, Faults, OperationDelay};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::eventually;
use support::operator::{Env, echo_spec, zendesk_spec};

async fn ready_zendesk(env: &Env, name: &str) -> ConnectorInstance {
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    env.create_instance(name, zendesk_spec()).await;
    env.wait_ready(name).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_makes_one_post_and_a_ready_token_secret() {
    let env = Env::start("create").await;
    let ci = ready_zendesk(&env, "desk").await;
    let status = ci.status.clone().unwrap();
    let id = status.instance_id.expect("instance id in status");
    assert_eq!(status.token_secret_name.as_deref(), Some("desk-token"));
    assert_eq!(status.last_action.as_ref().map(|a| a.type_), Some(ActionType::Created));
    let token = env.secret_token("desk-token").await.expect("token in Secret");
    assert_eq!(Some(token.clone()), env.sim_token(id).await, "the Secret holds the platform's token");
    assert!(status.token_sha256.as_deref().is_some_and(|p| p.len() == 12 && !token.contains(p)));

    let secret = env.secrets().get("desk-token").await.unwrap();
    let data = secret.data.clone().unwrap();
    assert_eq!(String::from_utf8(data["instanceId"].0.clone()).unwrap(), id.to_string());
    assert_eq!(String::from_utf8(data["connector"].0.clone()).unwrap(), "zendesk");
    assert_eq!(String::from_utf8(data["baseUrl"].0.clone()).unwrap(), env.sim.base_url());
    assert_eq!(secret.labels()["app.kubernetes.io/managed-by"], "connector-operator");
    assert!(secret.owner_references().iter().any(|o| o.controller == Some(true) && o.name == "desk"));

    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.name, format!("{}/desk", env.ns));
    assert!(remote.tags.contains(&ownership_tag(&ci.uid().unwrap())));
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "exactly one POST: {calls:?}");
    env.assert_no_secret_leaks(&["correct-horse-battery"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn name_and_tag_changes_patch_without_reauthentication() {
    let env = Env::start("patch").await;
    let ci = ready_zendesk(&env, "desk").await;
    let id = ci.status.unwrap().instance_id.unwrap();
    let token = env.secret_token("desk-token").await.unwrap();
    env.control.reset_calls().await.unwrap();

    env.patch_spec("desk", json!({ "displayName": "Support desk", "tags": ["team-support"] })).await;
    let ci = env.wait_ready("desk").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PATCH /instances/{id}"), 1, "{calls:?}");
    assert_eq!(calls.count("PUT /instances/{id}"), 0, "{calls:?}");
    assert_eq!(calls.count("POST /instances"), 0, "{calls:?}");
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.name, "Support desk");
    assert!(remote.tags.contains(&"team-support".to_string()));
    assert!(remote.tags.contains(&ownership_tag(&ci.uid().unwrap())), "ownership tag kept");
    assert_eq!(env.secret_token("desk-token").await.unwrap(), token, "token unchanged");
    assert_eq!(ci.status.unwrap().last_action.map(|a| a.type_), Some(ActionType::Updated));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configuration_events_and_referenced_secret_changes_reauthenticate() {
    let env = Env::start("reauth").await;
    let ci = ready_zendesk(&env, "desk").await;
    let id = ci.status.unwrap().instance_id.unwrap();
    let mut token = env.secret_token("desk-token").await.unwrap();

    let changes: Vec<(&str, serde_json::Value)> = vec![
        ("configuration value", json!({ "configuration": { "zendesk.subdomain": "acme-eu" } })),
        (
            "events",
            json!({ "events": { "enabled": true, "vendorType": "polling", "callbackUrl": "https://hooks.example.com/oc", "pollerRefreshIntervalMinutes": 15 } }),
        ),
        ("referenced Secret value", serde_json::Value::Null),
    ];
    for (what, patch) in changes {
        env.control.reset_calls().await.unwrap();
        if patch.is_null() {
            env.put_secret("zendesk-login", &[("password", "new-horse-battery")]).await;
        } else {
            env.patch_spec("desk", patch).await;
        }
        let new_token =
            eventually(&format!("a new token after a change of {what}"), Duration::from_secs(20), || {
                let env = &env;
                let token = token.clone();
                async move { env.secret_token("desk-token").await.filter(|t| *t != token) }
            })
            .await;
        let ci = env.wait_ready_with_token("desk", &new_token).await;
        let calls = env.control.calls().await.unwrap();
        assert_eq!(calls.count("PUT /instances/{id}"), 1, "one re-authentication for {what}: {calls:?}");
        assert_eq!(calls.count("POST /instances"), 0, "{calls:?}");
        assert_eq!(Some(new_token.clone()), env.sim_token(id).await, "the Secret holds the new token");
        assert_eq!(ci.status.unwrap().last_action.map(|a| a.type_), Some(ActionType::ReAuthenticated));
        token = new_token;
    }
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.configuration.get("event.poller.refresh_interval").map(String::as_str), Some("15"));
    assert!(remote.events_enabled);
    env.assert_no_secret_leaks(&["correct-horse-battery", "new-horse-battery"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enabled_toggle_uses_only_the_enabled_endpoint() {
    let env = Env::start("enabled").await;
    let ci = ready_zendesk(&env, "desk").await;
    let id = ci.status.unwrap().instance_id.unwrap();
    for enabled in [false, true] {
        env.control.reset_calls().await.unwrap();
        env.patch_spec("desk", json!({ "enabled": enabled })).await;
        env.wait_ready("desk").await;
        let remote = eventually("the remote enabled flag", Duration::from_secs(10), || {
            let env = &env;
            async move { env.control.instance(id).await.unwrap().filter(|r| r.disabled != enabled) }
        })
        .await;
        assert_eq!(remote.disabled, !enabled);
        let calls = env.control.calls().await.unwrap();
        let endpoint = if enabled { "PUT /instances/{id}/enabled" } else { "DELETE /instances/{id}/enabled" };
        assert_eq!(calls.count(endpoint), 1, "{calls:?}");
        assert_eq!(calls.writes, 1, "nothing but the enabled endpoint: {calls:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_secret_is_restored_after_delete_or_edit() {
    let env = Env::start("restore").await;
    ready_zendesk(&env, "desk").await;
    let token = env.secret_token("desk-token").await.unwrap();
    env.control.reset_calls().await.unwrap();

    env.secrets().delete("desk-token", &DeleteParams::default()).await.unwrap();
    let restored = eventually("the deleted Secret to be recreated", Duration::from_secs(5), || {
        let env = &env;
        async move { env.secret_token("desk-token").await }
    })
    .await;
    assert_eq!(restored, token, "recreated with the same token");

    let edit = json!({ "stringData": { "token": "tampered" } });
    env.secrets().patch("desk-token", &PatchParams::default(), &Patch::Merge(edit)).await.unwrap();
    eventually("the edited Secret to be restored", Duration::from_secs(5), || {
        let env = &env;
        let token = token.clone();
        async move { (env.secret_token("desk-token").await == Some(token)).then_some(()) }
    })
    .await;
    assert_eq!(env.platform_writes().await, 0, "restoring the Secret needs no platform write");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn remote_deleted_out_of_band_is_recreated_on_resync() {
    let env = Env::start("recreate").await;
    env.create_instance(
        "echo",
        json!({ "platformRef": { "name": "sim" }, "connector": "echo", "resyncInterval": "10s" }),
    )
    .await;
    let ci = env.wait_ready("echo").await;
    let old_id = ci.status.unwrap().instance_id.unwrap();
    assert!(env.control.delete_instance(old_id).await.unwrap());

    let ci = eventually("a recreated remote instance", Duration::from_secs(30), || {
        let env = &env;
        async move {
            let ci = env.instances().get("echo").await.ok()?;
            let status = ci.status.clone()?;
            (status.instance_id != Some(old_id)
                && status.last_action.as_ref()?.type_ == ActionType::Recreated)
                .then_some(ci)
        }
    })
    .await;
    let new_id = ci.status.unwrap().instance_id.unwrap();
    let token = eventually("the Secret to carry the new instance", Duration::from_secs(10), || {
        let env = &env;
        async move {
            let secret = env.secrets().get("echo-token").await.ok()?;
            let id = String::from_utf8(secret.data?.get("instanceId")?.0.clone()).ok()?;
            (id == new_id.to_string()).then_some(())?;
            env.secret_token("echo-token").await
        }
    })
    .await;
    assert_eq!(Some(token), env.sim_token(new_id).await);
    let events: kube::Api<k8s_openapi::api::events::v1::Event> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    // Events are published in the background: shortly after the status says so.
    let event = eventually("a Recreated event", Duration::from_secs(5), || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.ok()?;
            list.items.into_iter().find(|e| e.reason.as_deref() == Some("Recreated"))
        }
    })
    .await;
    assert_eq!(event.type_.as_deref(), Some("Normal"));
    assert_eq!(event.regarding.and_then(|r| r.name).as_deref(), Some("echo"));
    assert_eq!(event.reporting_controller.as_deref(), Some("openconnectors.io/connector-operator"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_between_post_and_status_adopts_instead_of_posting_again() {
    let mut env = Env::start("crash").await;
    // The platform commits the POST, then waits 5 s before answering: the operator is killed
    // in between.
    let faults = Faults {
        delay_after: Some(OperationDelay { ms: 5000, operation: Some("POST /instances".into()) }),
        ..Faults::default()
    };
    env.control.set_faults(&faults).await.unwrap();
    env.create_instance("echo", echo_spec()).await;
    eventually("the POST to reach the platform", Duration::from_secs(20), || {
        let env = &env;
        async move { (env.control.instances().await.unwrap().len() == 1).then_some(()) }
    })
    .await;
    env.operator.kill();
    env.control.clear_faults().await.unwrap();
    let before = env.instances().get("echo").await.unwrap();
    assert!(before.status.and_then(|s| s.instance_id).is_none(), "status was not written before the crash");

    env.operator.restart();
    let ci = env.wait_ready("echo").await;
    let status = ci.status.unwrap();
    let remote = env.control.instances().await.unwrap();
    assert_eq!(remote.len(), 1, "still exactly one remote instance");
    assert_eq!(status.instance_id, Some(remote[0].id));
    assert_eq!(status.last_action.map(|a| a.type_), Some(ActionType::Adopted));
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 1);
    assert_eq!(env.secret_token("echo-token").await, Some(remote[0].token.clone()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletion_policies_and_blocked_deletion() {
    let env = Env::start("delete").await;
    for name in ["gone", "kept", "vanished", "blocked"] {
        let mut spec = echo_spec();
        if name == "kept" {
            spec["deletionPolicy"] = json!("Orphan");
        }
        env.create_instance(name, spec).await;
    }
    let mut ids = std::collections::BTreeMap::new();
    for name in ["gone", "kept", "vanished", "blocked"] {
        ids.insert(name, env.wait_ready(name).await.status.unwrap().instance_id.unwrap());
    }
    let gone_after = |name: &'static str| {
        let env = &env;
        async move {
            eventually(&format!("{name} to be deleted"), Duration::from_secs(20), || async move {
                env.instances().get_opt(name).await.unwrap().is_none().then_some(())
            })
            .await
        }
    };

    // Delete: one DELETE, finalizer released, Secret garbage-collected.
    env.control.reset_calls().await.unwrap();
    env.instances().delete("gone", &DeleteParams::default()).await.unwrap();
    gone_after("gone").await;
    assert_eq!(env.control.calls().await.unwrap().count("DELETE /instances/{id}"), 1);
    assert!(env.control.instance(ids["gone"]).await.unwrap().is_none());
    eventually("the token Secret to be garbage-collected", Duration::from_secs(30), || {
        let env = &env;
        async move { env.secrets().get_opt("gone-token").await.unwrap().is_none().then_some(()) }
    })
    .await;

    // Orphan: no DELETE.
    env.control.reset_calls().await.unwrap();
    env.instances().delete("kept", &DeleteParams::default()).await.unwrap();
    gone_after("kept").await;
    assert_eq!(env.control.calls().await.unwrap().count("DELETE /instances/{id}"), 0);
    assert!(env.control.instance(ids["kept"]).await.unwrap().is_some(), "orphaned instance kept");

    // Remote already gone: deletion still completes.
    env.control.delete_instance(ids["vanished"]).await.unwrap();
    env.instances().delete("vanished", &DeleteParams::default()).await.unwrap();
    gone_after("vanished").await;

    // Credentials gone: deletion is blocked and says why; the abandon annotation releases it.
    env.secrets().delete(support::operator::CREDENTIALS, &DeleteParams::default()).await.unwrap();
    env.instances().delete("blocked", &DeleteParams::default()).await.unwrap();
    let (reason, message) = env.wait_stalled("blocked").await;
    assert_eq!(reason, "DeletionBlocked");
    assert!(
        message.contains("platform-credentials") && message.contains("openconnectors.io/abandon"),
        "{message}"
    );
    env.annotate("blocked", json!({ "openconnectors.io/abandon": "true" })).await;
    gone_after("blocked").await;
    assert!(env.control.instance(ids["blocked"]).await.unwrap().is_some(), "abandoned, not deleted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_stalls_without_platform_writes_and_recovers_when_fixed() {
    let env = Env::start("invalid").await;
    let client = env.client.clone();
    // A cluster platform whose selector does not allow this namespace.
    let cluster_name = format!("{}-cluster", env.ns);
    let cluster_platforms: kube::Api<connector_operator::api::ClusterConnectorPlatform> =
        kube::Api::all(client.clone());
    let cluster = json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
        "metadata": { "name": cluster_name },
        "spec": { "baseUrl": env.sim.base_url(), "insecureAllowHttp": true,
                  "credentialsSecretRef": { "name": support::operator::CREDENTIALS, "namespace": env.ns },
                  "namespaceSelector": { "matchLabels": { "connectors": "allowed" } } },
    });
    cluster_platforms
        .patch(&cluster_name, &PatchParams::apply("e2e-test").force(), &Patch::Apply(&cluster))
        .await
        .unwrap();
    // A Secret of the token's name that belongs to somebody else.
    env.put_secret("foreign-token", &[("token", "not-ours")]).await;

    let cases: Vec<(&str, serde_json::Value, &str, &str)> = vec![
        (
            "unknown-platform",
            json!({ "platformRef": { "name": "nope" }, "connector": "echo" }),
            "PlatformNotFound",
            "nope",
        ),
        ("missing-secret", zendesk_spec(), "ConfigurationSecretNotFound", "zendesk-login"),
        (
            "unknown-connector",
            json!({ "platformRef": { "name": "sim" }, "connector": "nosuchthing" }),
            "UnknownConnector",
            "nosuchthing",
        ),
        (
            "missing-config",
            json!({ "platformRef": { "name": "sim" }, "connector": "zendesk", "configuration": { "username": "u" } }),
            "ConfigurationMissing",
            "zendesk.subdomain",
        ),
        (
            "forbidden-ns",
            json!({ "platformRef": { "kind": "ClusterConnectorPlatform", "name": cluster_name }, "connector": "echo" }),
            "NamespaceNotAllowed",
            "namespaceSelector",
        ),
        (
            "foreign",
            json!({ "platformRef": { "name": "sim" }, "connector": "echo" }),
            "SecretConflict",
            "foreign-token",
        ),
    ];
    for (name, spec, _, _) in &cases {
        env.create_instance(name, spec.clone()).await;
    }
    for (name, _, reason, mentions) in &cases {
        let (got_reason, message) = env.wait_stalled(name).await;
        assert_eq!(&got_reason, reason, "{name}: {message}");
        assert!(message.contains(mentions), "{name}: message names the problem: {message}");
    }
    // Missing key of an existing Secret and missing credentials key, on a second pass.
    env.put_secret("zendesk-login", &[("wrong-key", "x")]).await;
    let (_, message) = env.wait_stalled_with("missing-secret", Some("SecretKeyMissing")).await;
    assert!(message.contains("`password`"), "{message}");
    assert_eq!(env.platform_writes().await, 0, "no platform writes for invalid input");

    // Stays quiet: no hot loop (the operator waits for a change).
    let reconciles =
        || env.operator.metric("connector_operator_reconciles_total", "kind=\"ConnectorInstance\"");
    let before = reconciles().await;
    assert!(before >= 6.0, "the reconcile counter is read: {before}");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let during = reconciles().await - before;
    assert!(during <= 2.0, "no hot loop: {during} reconciles of 6 stalled instances in 5 s");
    assert_eq!(env.platform_writes().await, 0, "no platform writes for invalid input");

    // Fixing the input makes each one Ready without a restart.
    env.put_secret("zendesk-login", &[("password", "pw")]).await;
    // `connector` is immutable (a CEL rule the API server enforces): the fix is a new instance.
    let refused = env
        .instances()
        .patch(
            "unknown-connector",
            &PatchParams::default(),
            &Patch::Merge(json!({ "spec": { "connector": "echo" } })),
        )
        .await;
    assert!(
        matches!(&refused, Err(kube::Error::Api(s)) if s.code == 422),
        "connector is immutable: {refused:?}"
    );
    env.instances().delete("unknown-connector", &DeleteParams::default()).await.unwrap();
    eventually("the unknown-connector instance to go", Duration::from_secs(20), || async {
        env.instances().get_opt("unknown-connector").await.unwrap().is_none().then_some(())
    })
    .await;
    env.create_instance(
        "unknown-connector",
        json!({ "platformRef": { "name": "sim" }, "connector": "echo" }),
    )
    .await;
    env.patch_spec(
        "missing-config",
        json!({ "configuration": { "zendesk.subdomain": "acme", "password": "pw" } }),
    )
    .await;
    env.secrets().delete("foreign-token", &DeleteParams::default()).await.unwrap();
    let platforms: kube::Api<connector_operator::api::ConnectorPlatform> =
        kube::Api::namespaced(client.clone(), &env.ns);
    let mut nope = platforms.get("sim").await.unwrap();
    nope.metadata = kube::api::ObjectMeta { name: Some("nope".into()), ..Default::default() };
    nope.status = None;
    platforms.create(&Default::default(), &nope).await.unwrap();
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "connectors": "allowed" } } });
    namespaces.patch(&env.ns, &PatchParams::default(), &Patch::Merge(label)).await.unwrap();
    // A namespace label change is not watched; the platform object is: touch it.
    let touch = json!({ "metadata": { "annotations": { "touched": "1" } } });
    cluster_platforms.patch(&cluster_name, &PatchParams::default(), &Patch::Merge(touch)).await.unwrap();
    for (name, _, _, _) in &cases {
        env.wait_ready(name).await;
    }
    cluster_platforms.delete(&cluster_name, &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steady_state_makes_no_writes() {
    let env = Env::start("steady").await;
    for i in 0..20 {
        let mut spec = echo_spec();
        spec["resyncInterval"] = json!("10s");
        env.create_instance(&format!("echo-{i}"), spec).await;
    }
    for i in 0..20 {
        env.wait_ready(&format!("echo-{i}")).await;
    }
    // Let the creation settle (the watch echoes of the operator's own writes).
    tokio::time::sleep(Duration::from_secs(3)).await;
    let plane = support::control_plane();
    // Creation took exactly the necessary writes per instance, none refused (no conflicts), and
    // the platform object's one status write.
    let mut creation: std::collections::BTreeMap<String, usize> = Default::default();
    for e in plane.audit_events().iter().filter(|e| {
        e.user == connector_operator::local::OPERATOR_USER
            && e.is_write()
            && e.namespace.as_deref() == Some(&env.ns)
    }) {
        assert!(e.code.is_some_and(|c| c < 300), "a refused write during creation: {e:?}");
        let sub = e.subresource.as_deref().map(|s| format!("/{s}")).unwrap_or_default();
        *creation.entry(format!("{} {}{sub}", e.verb, e.resource)).or_default() += 1;
    }
    // One status write each (the CRD's status default keeps kstatus at InProgress until then).
    let expected: std::collections::BTreeMap<String, usize> =
        ["create events", "create secrets", "patch connectorinstances", "patch connectorinstances/status"]
            .into_iter()
            .map(|k| (k.to_string(), 20))
            .chain([("patch connectorplatforms/status".to_string(), 1)])
            .collect();
    assert_eq!(creation, expected, "writes of creating 20 instances");
    let writes_before = support::operator::operator_writes(&env.ns);
    env.control.reset_calls().await.unwrap();

    tokio::time::sleep(Duration::from_secs(31)).await;
    let writes = support::operator::operator_writes(&env.ns) - writes_before;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(writes, 0, "Kubernetes writes in steady state");
    assert_eq!(calls.writes, 0, "platform writes in steady state: {calls:?}");
    let gets = calls.count("GET /instances/{id}");
    assert!((40..=80).contains(&gets), "about one GET per instance per resync (3 periods x 20): {gets}");
    assert_eq!(calls.reads, gets, "nothing but the periodic GETs: {calls:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_leak_into_logs_events_or_status() {
    let env = Env::start("leaks").await;
    ready_zendesk(&env, "desk").await;
    env.put_secret("zendesk-login", &[("password", "second-secret-pw")]).await;
    env.patch_spec("desk", json!({ "configuration": { "zendesk.subdomain": "other" } })).await;
    env.wait_ready("desk").await;
    // A failure path too: the platform rejects the credentials.
    env.control
        .set_credentials(&sim::Credentials {
            user_secret: "rotated-user".into(),
            organization_secret: "rotated-org".into(),
        })
        .await
        .unwrap();
    env.patch_spec("desk", json!({ "configuration": { "zendesk.subdomain": "third" } })).await;
    let (reason, message) = env.wait_stalled("desk").await;
    assert_eq!(reason, "Unauthorized", "{message}");
    // The platform object says so too, without waiting for its periodic check.
    let platforms: kube::Api<connector_operator::api::ConnectorPlatform> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    eventually("the platform to report the rejected credentials", Duration::from_secs(10), || {
        let platforms = platforms.clone();
        async move {
            let platform = platforms.get("sim").await.ok()?;
            let ready =
                connector_operator::api::find_condition(&platform.status?.conditions, "Ready")?.clone();
            (ready.status == "False" && ready.reason == "Unauthorized").then_some(())
        }
    })
    .await;
    let secret: Secret = env.secrets().get("desk-token").await.unwrap();
    assert!(secret.data.is_some());
    env.assert_no_secret_leaks(&["correct-horse-battery", "second-secret-pw", "rotated-user", "rotated-org"])
        .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_remote_is_reauthenticated_on_resync() {
    let env = Env::start("invalid-remote").await;
    let mut spec = echo_spec();
    spec["resyncInterval"] = json!("10s");
    env.create_instance("echo", spec).await;
    let id = env.wait_ready("echo").await.status.unwrap().instance_id.unwrap();
    let token = env.secret_token("echo-token").await.unwrap();
    env.control.set_valid(id, false).await.unwrap();
    let new_token = eventually("re-authentication of the invalid instance", Duration::from_secs(30), || {
        let env = &env;
        let token = token.clone();
        async move { env.secret_token("echo-token").await.filter(|t| *t != token) }
    })
    .await;
    let status = env.wait_ready_with_token("echo", &new_token).await.status.unwrap();
    assert_eq!(status.last_action.map(|a| a.type_), Some(ActionType::ReAuthenticated));
    assert_eq!(status.remote.and_then(|r| r.valid), Some(true));
    assert_eq!(Some(new_token), env.sim_token(id).await);
    assert_eq!(env.control.calls().await.unwrap().count("PUT /instances/{id}"), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paused_instances_make_no_platform_calls_and_reconcile_requests_are_echoed() {
    let env = Env::start("paused").await;
    env.create_instance("echo", echo_spec()).await;
    env.wait_ready("echo").await;

    env.annotate("echo", json!({ "openconnectors.io/paused": "true" })).await;
    let (reason, _) = eventually("the Paused condition", Duration::from_secs(10), || {
        let env = &env;
        async move {
            let ci = env.instances().get("echo").await.ok()?;
            let ready = connector_operator::api::find_condition(&ci.status?.conditions, "Ready")?.clone();
            (ready.reason == "Paused").then_some((ready.reason, ready.message))
        }
    })
    .await;
    assert_eq!(reason, "Paused");
    env.control.reset_calls().await.unwrap();
    env.patch_spec("echo", json!({ "displayName": "changed while paused" })).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.control.calls().await.unwrap().total, 0, "no platform call while paused");

    env.annotate("echo", json!({ "openconnectors.io/paused": null })).await;
    env.wait_ready("echo").await;
    assert_eq!(
        env.control.calls().await.unwrap().count("PATCH /instances/{id}"),
        1,
        "the change is applied after resuming"
    );

    // A reconcile request re-reads the remote instance now and is echoed, annotation kept.
    env.control.reset_calls().await.unwrap();
    env.annotate("echo", json!({ "openconnectors.io/reconcile-requested-at": "2026-11-28T10:00:00Z" })).await;
    let ci = eventually("the reconcile request to be echoed", Duration::from_secs(10), || {
        let env = &env;
        async move {
            let ci = env.instances().get("echo").await.ok()?;
            (ci.status.as_ref()?.last_handled_reconcile_at.as_deref() == Some("2026-11-28T10:00:00Z"))
                .then_some(ci)
        }
    })
    .await;
    assert!(
        ci.annotations().contains_key("openconnectors.io/reconcile-requested-at"),
        "the annotation is left alone"
    );
    assert_eq!(
        env.control.calls().await.unwrap().count("GET /instances/{id}"),
        1,
        "the remote instance was re-read"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn probes_answer_and_sigterm_stops_the_operator_cleanly() {
    let mut env = Env::start("probes").await;
    env.create_instance("echo", echo_spec()).await;
    env.wait_ready("echo").await;
    for path in ["healthz", "readyz"] {
        let body = env.operator.get(path).await;
        assert_eq!(body, (200, "ok".to_string()), "/{path}");
    }
    let (code, metrics) = env.operator.get("metrics").await;
    assert_eq!(code, 200);
    assert!(metrics.contains("connector_operator_remote_actions_total{action=\"Created\"} 1"), "{metrics}");
    let status = env.operator.terminate(Duration::from_secs(15));
    assert!(status.success(), "exit status after SIGTERM: {status}");
    assert!(env.operator.logs().contains("controllers stopped"));
}

/// A platform that answers tag searches with every instance and without their tags (the
/// simulator's `untagged_search`): the operator adopts none of another team's instances, creates
/// its own, and on deletion deletes only that one, proven by the platform's answer for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_untagged_is_adopted_or_deleted() {
    use connector_operator::platform::{InstanceRequest, PlatformClient, PlatformConfig};
    use secrecy::SecretString;
    let env = Env::start("untagged").await;
    let mut config = PlatformConfig::new(
        env.sim.base_url(),
        SecretString::from(sim::DEFAULT_USER_SECRET.to_string()),
        SecretString::from(sim::DEFAULT_ORGANIZATION_SECRET.to_string()),
    );
    config.allow_http = true;
    let other_team = PlatformClient::new(config).unwrap();
    let mut foreign = Vec::new();
    for tags in [vec!["team-b".to_string()], vec![]] {
        let request = InstanceRequest {
            element_key: "echo".into(),
            name: "team-b".into(),
            tags,
            ..InstanceRequest::default()
        };
        foreign.push(other_team.create_instance(&request).await.unwrap().id);
    }
    env.control.set_faults(&Faults { untagged_search: true, ..Faults::default() }).await.unwrap();
    env.control.reset_calls().await.unwrap();

    env.create_instance("ours", echo_spec()).await;
    let ci = env.wait_ready("ours").await;
    let ours = ci.status.as_ref().and_then(|s| s.instance_id).unwrap();
    assert!(!foreign.contains(&ours), "adopted another team's instance {ours}");
    assert_eq!(ci.status.unwrap().last_action.map(|a| a.type_), Some(ActionType::Created));
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 1);

    env.instances().delete("ours", &DeleteParams::default()).await.unwrap();
    eventually("ours to be deleted", Duration::from_secs(20), || async {
        env.instances().get_opt("ours").await.unwrap().is_none().then_some(())
    })
    .await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("DELETE /instances/{id}"), 1, "{calls:?}");
    assert!(env.control.instance(ours).await.unwrap().is_none(), "its own instance is deleted");
    for id in foreign {
        assert!(env.control.instance(id).await.unwrap().is_some(), "another team's instance {id} survives");
    }
}

/// Memory is bounded by what is referenced: a thousand unrelated Secrets created and deleted
/// (Helm release Secrets, rotations) leave the Secret cache as it was, and an instance paused from
/// the start and then deleted leaves no memory of it behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unrelated_secret_churn_and_deleted_instances_leave_no_memory_behind() {
    use futures::StreamExt;
    use kube::api::{Api, PostParams};
    let env = Env::start("memory").await;
    env.create_instance("echo", zendesk_spec()).await;
    env.put_secret("zendesk-login", &[("password", "pw")]).await;
    env.wait_ready("echo").await;
    let gauge = |name: &'static str| {
        let env = &env;
        async move { env.operator.metric(&format!("connector_operator_{name}"), "").await }
    };
    let cache_before = gauge("secret_cache_entries").await;
    let memories_before = gauge("instance_memories").await;
    assert!(cache_before >= 2.0, "the credentials and the login Secret are tracked: {cache_before}");

    futures::stream::iter(0..1000)
        .for_each_concurrent(16, |i| {
            let secrets = env.secrets();
            async move {
                let secret: Secret =
                    serde_json::from_value(json!({ "metadata": { "name": format!("churn-{i}") },
                                                                   "stringData": { "k": "v" } }))
                    .unwrap();
                secrets.create(&PostParams::default(), &secret).await.unwrap();
                secrets.delete(&format!("churn-{i}"), &DeleteParams::default()).await.unwrap();
            }
        })
        .await;

    let paused: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "paused", "annotations": { "openconnectors.io/paused": "true" } },
        "spec": echo_spec(),
    }))
    .unwrap();
    let instances: Api<ConnectorInstance> = env.instances();
    instances.create(&PostParams::default(), &paused).await.unwrap();
    eventually("the paused instance to be remembered", Duration::from_secs(20), || async {
        (gauge("instance_memories").await > memories_before).then_some(())
    })
    .await;
    instances.delete("paused", &DeleteParams::default()).await.unwrap();
    eventually("the paused instance to be gone", Duration::from_secs(10), || async {
        instances.get_opt("paused").await.unwrap().is_none().then_some(())
    })
    .await;
    eventually("its memory to be forgotten", Duration::from_secs(10), || async {
        (gauge("instance_memories").await == memories_before).then_some(())
    })
    .await;
    // By now the watch has shown every churned Secret's deletion too.
    let cache_after = gauge("secret_cache_entries").await;
    eprintln!("Secret cache entries: {cache_before} before, {cache_after} after 1000 unrelated Secrets");
    assert_eq!(cache_after, cache_before, "unrelated Secrets are not tracked");
}

/// Wrong platform credentials from the first day: the instance says `Unauthorized`, never got a
/// finalizer (nothing could have been created), and `kubectl delete` removes it at once; another
/// goes Ready, without a restart, once the credentials Secret is fixed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_instance_that_never_reached_the_platform_is_deleted_at_once() {
    let env = Env::start("never-created").await;
    let wrong = sim::Credentials { user_secret: "not-ours".into(), organization_secret: "not-ours".into() };
    env.control.set_credentials(&wrong).await.unwrap();
    env.create_instance("typo", echo_spec()).await;
    let (reason, message) = env.wait_stalled("typo").await;
    assert_eq!(reason, "Unauthorized", "{message}");
    let ci = env.instances().get("typo").await.unwrap();
    assert!(ci.finalizers().is_empty(), "no finalizer without anything remote: {:?}", ci.finalizers());
    env.instances().delete("typo", &DeleteParams::default()).await.unwrap();
    eventually("the instance to be gone", Duration::from_secs(5), || async {
        env.instances().get_opt("typo").await.unwrap().is_none().then_some(())
    })
    .await;
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 0);

    env.create_instance("fixme", echo_spec()).await;
    let (reason, message) = env.wait_stalled("fixme").await;
    assert_eq!(reason, "Unauthorized", "{message}");
    let fixed = [("userSecret", "not-ours"), ("organizationSecret", "not-ours")];
    env.put_secret(support::operator::CREDENTIALS, &fixed).await;
    env.wait_ready("fixme").await;
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 1);
}

/// Waits until every one of `names` is not Ready with `reason`, and returns the distinct messages.
async fn wait_all_failing(env: &Env, names: &[String], reason: &str) -> std::collections::BTreeSet<String> {
    let mut messages = std::collections::BTreeSet::new();
    for name in names {
        let message = eventually(&format!("{name} to say {reason}"), Duration::from_secs(60), || async {
            let ci = env.instances().get(name).await.ok()?;
            let ready = connector_operator::api::find_condition(&ci.status?.conditions, "Ready")?.clone();
            (ready.status == "False" && ready.reason == reason).then_some(ready.message)
        })
        .await;
        messages.insert(message);
    }
    messages
}

/// The platform object's `Ready` condition: (status, reason).
async fn platform_ready(env: &Env) -> Option<(String, String)> {
    let platforms: kube::Api<connector_operator::api::ConnectorPlatform> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let platform = platforms.get(support::operator::PLATFORM).await.ok()?;
    let ready = connector_operator::api::find_condition(&platform.status?.conditions, "Ready")?.clone();
    Some((ready.status, ready.reason))
}

/// Wrong platform credentials and 50 instances (finding: 3,001 platform calls and 5,912
/// Kubernetes writes a minute). After the first pass: one probe per backoff period (5, 10, 20 s,
/// ... for the fleet, not per instance) and no Kubernetes writes; every instance and the platform
/// say `Unauthorized` in the same words; the fix of the credentials Secret makes all of them
/// Ready without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_credentials_with_fifty_instances_cost_what_one_costs() {
    let env = Env::start("storm-401").await;
    let wrong = sim::Credentials { user_secret: "rotated-u".into(), organization_secret: "rotated-o".into() };
    env.control.set_credentials(&wrong).await.unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("echo-{i}")).collect();
    for name in &names {
        env.create_instance(name, echo_spec()).await;
    }
    let messages = wait_all_failing(&env, &names, "Unauthorized").await;
    assert_eq!(messages.len(), 1, "one wording for the fleet: {messages:?}");
    eventually("the platform to say Unauthorized", Duration::from_secs(10), || async {
        (platform_ready(&env).await? == ("False".to_string(), "Unauthorized".to_string())).then_some(())
    })
    .await;

    let (calls, writes) = env.quiet_window(Duration::from_secs(60)).await;
    eprintln!(
        "wrong credentials, 50 instances, 60 s: {} platform calls {calls:?}, {writes} Kubernetes writes",
        calls.total
    );
    assert!(calls.total <= 10, "platform calls in 60 s: {calls:?}");
    assert_eq!(calls.total, calls.count("GET /instances"), "only the probe calls: {calls:?}");
    assert!(writes <= 5, "Kubernetes writes in 60 s: {writes}");
    assert_eq!(wait_all_failing(&env, &names, "Unauthorized").await, messages, "nothing rewritten");

    let fixed = [("userSecret", "rotated-u"), ("organizationSecret", "rotated-o")];
    env.put_secret(support::operator::CREDENTIALS, &fixed).await;
    for name in &names {
        env.wait_ready(name).await;
    }
    eventually("the platform to be Ready", Duration::from_secs(10), || async {
        (platform_ready(&env).await?.0 == "True").then_some(())
    })
    .await;
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 50);
}

/// A platform that answers 503 to everything, and 50 instances created meanwhile: after the first
/// pass, one probe per backoff period and no Kubernetes writes; once the platform is back, the
/// next probe finds it and every instance goes Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_that_is_down_costs_one_probe_per_backoff_period() {
    let env = Env::start("storm-503").await;
    let down = Faults { server_error_share: 1.0, server_error_status: Some(503), ..Faults::default() };
    env.control.set_faults(&down).await.unwrap();
    let names: Vec<String> = (0..50).map(|i| format!("echo-{i}")).collect();
    for name in &names {
        env.create_instance(name, echo_spec()).await;
    }
    let messages = wait_all_failing(&env, &names, "PlatformUnavailable").await;
    assert_eq!(messages.len(), 1, "one wording for the fleet: {messages:?}");

    let (calls, writes) = env.quiet_window(Duration::from_secs(60)).await;
    eprintln!(
        "platform down, 50 instances, 60 s: {} platform calls {calls:?}, {writes} Kubernetes writes",
        calls.total
    );
    assert!(calls.total <= 10, "platform calls in 60 s: {calls:?}");
    assert!(writes <= 5, "Kubernetes writes in 60 s: {writes}");

    env.control.clear_faults().await.unwrap();
    // The next probe is at most 80 s away (the fifth wait).
    for name in &names {
        support::operator::wait_ready_in(&env.instances(), name, Duration::from_secs(120)).await;
    }
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 50);
}

/// A platform that answers 429 (`Retry-After: 10`) to everything, and 30 instances that all want
/// to read it: after the first calls, the fleet makes one call per `Retry-After` (the one that
/// tries again), not one per instance, and writes nothing; once the platform lets calls through
/// again, every instance finishes without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limiting_platform_costs_one_call_per_retry_after_for_the_fleet() {
    let env = Env::start("storm-429").await;
    let names: Vec<String> = (0..30).map(|i| format!("echo-{i}")).collect();
    for name in &names {
        env.create_instance(name, echo_spec()).await;
    }
    for name in &names {
        env.wait_ready(name).await;
    }
    let limited = Faults { rate_limit_share: 1.0, retry_after_seconds: Some(10), ..Faults::default() };
    env.control.set_faults(&limited).await.unwrap();
    for name in &names {
        env.annotate(name, json!({ "openconnectors.io/reconcile-requested-at": "read-now" })).await;
    }
    for name in &names {
        eventually(&format!("{name} to say RateLimited"), Duration::from_secs(60), || async {
            let ci = env.instances().get(name).await.ok()?;
            let c = connector_operator::api::find_condition(&ci.status?.conditions, "Reconciling")?.clone();
            (c.status == "True" && c.reason == "RateLimited").then_some(())
        })
        .await;
    }
    let (calls, writes) = env.quiet_window(Duration::from_secs(30)).await;
    eprintln!("429 for everything, 30 instances, 30 s: {calls:?}, {writes} Kubernetes writes");
    assert!(
        calls.total <= 5,
        "about one call per Retry-After for the fleet, not one per instance: {calls:?}"
    );
    assert_eq!(writes, 0, "nothing rewritten while throttled");

    env.control.clear_faults().await.unwrap();
    for name in &names {
        eventually(&format!("{name} to finish"), Duration::from_secs(60), || async {
            let ci = env.instances().get(name).await.ok()?;
            let status = ci.status?;
            let reconciling = connector_operator::api::find_condition(&status.conditions, "Reconciling");
            (status.last_handled_reconcile_at.as_deref() == Some("read-now")
                && reconciling.is_none_or(|c| c.status != "True"))
            .then_some(())
        })
        .await;
    }
}

/// The instance's id and token Secret once the remote instance is no longer `old_id` and the
/// Secret carries the new one.
async fn wait_recreated(env: &Env, name: &str, old_id: i64) -> i64 {
    let id = eventually(&format!("{name} to be recreated"), Duration::from_secs(30), || async {
        let ci = env.instances().get(name).await.ok()?;
        let status = ci.status.clone()?;
        let ready = connector_operator::api::is_condition_true(&status.conditions, "Ready");
        let current = status.observed_generation == ci.metadata.generation;
        (ready && current && status.instance_id != Some(old_id)).then_some(status.instance_id?)
    })
    .await;
    eventually("the Secret to carry the recreated instance's token", Duration::from_secs(10), || async {
        let token = env.secret_token(&format!("{name}-token")).await?;
        (Some(token) == env.sim_token(id).await).then_some(())
    })
    .await;
    id
}

/// A 404 on PATCH, on the enabled endpoints or on the re-authenticating PUT means the remote
/// instance is gone, exactly as a 404 on the resync read: it is recreated (finding 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_on_any_call_about_the_instance_recreates_it() {
    let env = Env::start("gone-404").await;
    env.create_instance("echo", echo_spec()).await;
    let mut id = env.wait_ready("echo").await.status.unwrap().instance_id.unwrap();
    let changes = [
        ("PATCH /instances/{id}", json!({ "displayName": "renamed" })),
        ("DELETE /instances/{id}/enabled", json!({ "enabled": false })),
        ("PUT /instances/{id}", json!({ "configuration": { "echo.greeting": "hello" } })),
    ];
    for (posts, (operation, change)) in (2..).zip(changes) {
        assert!(env.control.delete_instance(id).await.unwrap());
        env.control.reset_calls().await.unwrap();
        env.patch_spec("echo", change).await;
        id = wait_recreated(&env, "echo", id).await;
        let calls = env.control.calls().await.unwrap();
        // The one that met the 404; a disabled instance is created enabled, then disabled again.
        let expected = if operation.contains("enabled") { 2 } else { 1 };
        assert_eq!(calls.count(operation), expected, "{operation}: {calls:?}");
        assert_eq!(calls.count("POST /instances"), 1, "one recreate after {operation}: {calls:?}");
        assert_eq!(env.control.instances().await.unwrap().len(), 1, "no duplicate after {posts} creates");
    }
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.name, "renamed", "the recreated instance is the desired one");
}

/// Runs kstatus's rules for a custom resource (cli-utils `pkg/kstatus/status`: deletion →
/// Terminating; `status.observedGeneration` behind `metadata.generation` → InProgress;
/// `Reconciling=True` → InProgress; `Stalled=True` → Failed; otherwise Current).
fn kstatus(ci: &ConnectorInstance) -> &'static str {
    if ci.metadata.deletion_timestamp.is_some() {
        return "Terminating";
    }
    let Some(status) = &ci.status else {
        return "Current";
    };
    if status.observed_generation.is_some() && status.observed_generation != ci.metadata.generation {
        return "InProgress";
    }
    let is_true = |t| connector_operator::api::is_condition_true(&status.conditions, t);
    if is_true("Reconciling") {
        return "InProgress";
    }
    if is_true("Stalled") {
        return "Failed";
    }
    "Current"
}

#[test]
fn the_kstatus_helper_follows_the_rules() {
    let mut ci: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "a", "generation": 2 }, "spec": echo_spec(),
    }))
    .unwrap();
    assert_eq!(kstatus(&ci), "Current", "no status at all reads as Current");
    ci.status = Some(serde_json::from_str(connector_operator::api::crd::UNOBSERVED_STATUS).unwrap());
    assert_eq!(kstatus(&ci), "InProgress", "the CRD's status default reads as InProgress");
    let condition = |type_: &str, status: &str| k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition {
        type_: type_.into(),
        status: status.into(),
        reason: "R".into(),
        message: String::new(),
        observed_generation: Some(2),
        last_transition_time: k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
        ),
    };
    let mut status = connector_operator::api::ConnectorInstanceStatus {
        observed_generation: Some(1),
        ..Default::default()
    };
    ci.status = Some(status.clone());
    assert_eq!(kstatus(&ci), "InProgress");
    status.observed_generation = Some(2);
    status.conditions = vec![condition("Ready", "Unknown"), condition("Reconciling", "True")];
    ci.status = Some(status.clone());
    assert_eq!(kstatus(&ci), "InProgress");
    status.conditions = vec![condition("Ready", "False"), condition("Stalled", "True")];
    ci.status = Some(status.clone());
    assert_eq!(kstatus(&ci), "Failed");
    status.conditions = vec![condition("Ready", "False")];
    ci.status = Some(status);
    assert_eq!(kstatus(&ci), "Current", "kstatus ignores Ready");
}

/// A burst of 200 creates: kstatus never computes Current for an instance before its token
/// Secret exists, in any version of it a watch shows, although the operator writes each status
/// once only (no "in progress" write first): until that write the API server shows the CRD's
/// status default, whose `observedGeneration: -1` is no generation's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_of_creates_is_never_current_before_its_token_secret_exists() {
    use futures::StreamExt;
    use kube::runtime::{WatchStreamExt, watcher};
    const BURST: usize = 200;
    let env = Env::start("kstatus").await;
    let seen: std::sync::Arc<std::sync::Mutex<Vec<ConnectorInstance>>> = Default::default();
    let sink = seen.clone();
    let watch = tokio::spawn(
        watcher(env.instances(), watcher::Config::default()).applied_objects().for_each(move |ci| {
            if let Ok(ci) = ci {
                sink.lock().unwrap().push(ci);
            }
            futures::future::ready(())
        }),
    );
    let names: Vec<String> = (0..BURST).map(|i| format!("echo-{i}")).collect();
    futures::stream::iter(&names)
        .for_each_concurrent(16, |name| async { drop(env.create_instance(name, echo_spec()).await) })
        .await;
    for name in &names {
        env.wait_ready(name).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    watch.abort();
    let seen = seen.lock().unwrap().clone();
    let mut before_secret = 0;
    for name in &names {
        let secret = env.secrets().get(&format!("{name}-token")).await.unwrap();
        let secret_created = connector_operator::controller::resource_version(&secret);
        let versions: Vec<&ConnectorInstance> =
            seen.iter().filter(|ci| ci.metadata.name.as_deref() == Some(name.as_str())).collect();
        assert!(!versions.is_empty(), "{name}: the watch showed it");
        assert!(versions.iter().all(|ci| ci.status.is_some()), "{name}: every version has a status");
        let before: Vec<(u64, &str)> = versions
            .iter()
            .map(|ci| (connector_operator::controller::resource_version(*ci), kstatus(ci)))
            .filter(|(rv, _)| *rv < secret_created)
            .collect();
        assert!(!before.is_empty(), "{name}: the watch showed it before its Secret existed");
        assert!(before.iter().all(|(_, s)| *s == "InProgress"), "{name}: {before:?}");
        before_secret += before.len();
        assert_eq!(kstatus(versions.last().unwrap()), "Current", "{name}: Current once Ready");
    }
    eprintln!("{BURST} instances: {before_secret} versions seen before their token Secret, all InProgress");
    let status_writes = support::operator::operator_write_events(&env.ns)
        .iter()
        .filter(|e| e.resource == "connectorinstances" && e.subresource.as_deref() == Some("status"))
        .count();
    assert_eq!(status_writes, BURST, "one status write per instance");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), BURST as u64, "{calls:?}");
}

/// A failed token Secret write after a re-authentication does not lose the new token: the next
/// pass writes it, without another PUT (finding 7). The write is refused by a
/// ValidatingAdmissionPolicy on the token Secret.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_token_reaches_the_secret_after_a_failed_write() {
    use k8s_openapi::api::admissionregistration::v1::{
        ValidatingAdmissionPolicy, ValidatingAdmissionPolicyBinding,
    };
    let env = Env::start("lost-token").await;
    env.create_instance("echo", echo_spec()).await;
    let id = env.wait_ready("echo").await.status.unwrap().instance_id.unwrap();
    let before = env.secret_token("echo-token").await.unwrap();

    let policy_name = format!("refuse-token-writes-{}", env.ns);
    let policies: kube::Api<ValidatingAdmissionPolicy> = kube::Api::all(env.client.clone());
    let bindings: kube::Api<ValidatingAdmissionPolicyBinding> = kube::Api::all(env.client.clone());
    let policy: ValidatingAdmissionPolicy = serde_json::from_value(json!({
        "metadata": { "name": policy_name },
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": { "resourceRules": [{
                "apiGroups": [""], "apiVersions": ["v1"], "operations": ["UPDATE"], "resources": ["secrets"] }] },
            "validations": [{ "expression": "object.metadata.name != 'echo-token'", "message": "refused by the test" }],
        },
    }))
    .unwrap();
    let binding: ValidatingAdmissionPolicyBinding = serde_json::from_value(json!({
        "metadata": { "name": policy_name },
        "spec": { "policyName": policy_name, "validationActions": ["Deny"],
                  "matchResources": { "namespaceSelector": { "matchLabels": { "kubernetes.io/metadata.name": env.ns } } } },
    }))
    .unwrap();
    policies.create(&Default::default(), &policy).await.unwrap();
    bindings.create(&Default::default(), &binding).await.unwrap();
    // The policy takes effect once the API server has loaded it: a dry-run write shows when.
    let dry_run = PatchParams { dry_run: true, ..PatchParams::default() };
    eventually("the policy to refuse token Secret writes", Duration::from_secs(30), || async {
        let touch = json!({ "metadata": { "annotations": { "probe": "1" } } });
        env.secrets().patch("echo-token", &dry_run, &Patch::Merge(touch)).await.is_err().then_some(())
    })
    .await;

    env.control.reset_calls().await.unwrap();
    env.patch_spec("echo", json!({ "configuration": { "echo.greeting": "hello" } })).await;
    eventually("the refused Secret write to show", Duration::from_secs(30), || async {
        let ci = env.instances().get("echo").await.ok()?;
        let reconciling =
            connector_operator::api::find_condition(&ci.status?.conditions, "Reconciling")?.clone();
        (reconciling.reason == "KubernetesError" && reconciling.message.contains("refused by the test"))
            .then_some(())
    })
    .await;
    let new_token = env.sim_token(id).await.unwrap();
    assert_ne!(new_token, before, "the PUT issued a new token");
    assert_eq!(env.secret_token("echo-token").await.unwrap(), before, "the write was refused");
    let status = env.instances().get("echo").await.unwrap().status.unwrap();
    let recorded = connector_operator::api::token_sha256(&secrecy::SecretString::from(before.clone()));
    assert_eq!(status.token_sha256.as_deref(), Some(&recorded[..12]), "status describes the Secret's token");
    // Retries meanwhile keep the new token and make no second PUT.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(env.control.calls().await.unwrap().count("PUT /instances/{id}"), 1);

    bindings.delete(&policy_name, &Default::default()).await.unwrap();
    policies.delete(&policy_name, &Default::default()).await.unwrap();
    env.wait_ready_with_token("echo", &new_token).await;
    assert_eq!(env.secret_token("echo-token").await.unwrap(), new_token);
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 1, "the kept token was written, no second PUT: {calls:?}");
}

/// `status.platform` says where the instance lives: after the platform object's `baseUrl` moves
/// to another host, the instance says so (`PlatformMoved`) and makes no call there, and deleting
/// it deletes the remote instance where it was created (finding 6).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_base_url_change_then_delete_leaks_nothing() {
    let env = Env::start("moved").await;
    env.create_instance("echo", echo_spec()).await;
    let id = env.wait_ready("echo").await.status.unwrap().instance_id.unwrap();
    let other = sim::start(sim::SimConfig::default()).await.unwrap();
    let other_control = other.control().unwrap();
    let platforms: kube::Api<connector_operator::api::ConnectorPlatform> =
        kube::Api::namespaced(env.client.clone(), &env.ns);
    let moved = json!({ "spec": { "baseUrl": other.base_url() } });
    platforms
        .patch(support::operator::PLATFORM, &PatchParams::default(), &Patch::Merge(moved))
        .await
        .unwrap();
    let (reason, message) = env.wait_stalled_with("echo", Some("PlatformMoved")).await;
    assert!(
        message.contains(&env.sim.base_url()) && message.contains(&other.base_url()),
        "{reason}: {message}"
    );
    let secret = env.secrets().get("echo-token").await.unwrap();
    let base_url = String::from_utf8(secret.data.unwrap()["baseUrl"].0.clone()).unwrap();
    assert_eq!(base_url, env.sim.base_url(), "the Secret still points where the instance lives");
    let calls = other_control.calls().await.unwrap();
    assert_eq!(
        calls.total,
        calls.count("GET /instances"),
        "only the platform check on the new host: {calls:?}"
    );

    env.instances().delete("echo", &DeleteParams::default()).await.unwrap();
    eventually("the instance to be gone", Duration::from_secs(20), || async {
        env.instances().get_opt("echo").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_none(), "deleted where it was created");
    assert_eq!(other_control.calls().await.unwrap().writes, 0, "nothing written on the new host");
}

/// A display name with surrounding whitespace reads back as sent: the operator sends it trimmed,
/// as the platform stores it, so resyncs make no PATCH (finding 11).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_are_sent_as_the_platform_stores_them() {
    let env = Env::start("names").await;
    let mut spec = echo_spec();
    spec["displayName"] = json!("  billing desk  ");
    spec["resyncInterval"] = json!("10s");
    env.create_instance("echo", spec).await;
    let id = env.wait_ready("echo").await.status.unwrap().instance_id.unwrap();
    assert_eq!(env.control.instance(id).await.unwrap().unwrap().name, "billing desk");
    env.control.reset_calls().await.unwrap();
    tokio::time::sleep(Duration::from_secs(25)).await;
    let calls = env.control.calls().await.unwrap();
    assert!(calls.count("GET /instances/{id}") >= 1, "resyncs happened: {calls:?}");
    assert_eq!(calls.writes, 0, "no PATCH per resync: {calls:?}");
}

/// `/metrics` tells what the platform costs and how the instances are: requests by operation and
/// status class with their durations, the leader gauge, and the instance census by namespace,
/// Ready status and reason, which is what the PrometheusRule's alerts read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_platform_requests_and_the_instance_census() {
    let env = Env::start("metrics").await;
    env.create_instance("desk", echo_spec()).await;
    env.wait_ready("desk").await;
    let op = &env.operator;
    let metric = |name: &'static str, filter: &'static str| op.metric(name, filter);
    let posts = r#"operation="POST /instances",status="2xx""#;
    assert_eq!(metric("connector_operator_platform_requests_total", posts).await, 1.0);
    assert_eq!(
        metric(
            "connector_operator_platform_request_duration_seconds_count",
            r#"operation="POST /instances""#
        )
        .await,
        1.0
    );
    assert_eq!(metric("connector_operator_leader", "").await, 1.0);
    let ready = format!(r#"namespace="{}",ready="True",reason="Ready""#, env.ns);
    assert_eq!(op.metric("connector_operator_instances", &ready).await, 1.0);

    // Wrong credentials: the census shows the instance Unauthorized, and the 401s are counted.
    let wrong = sim::Credentials { user_secret: "rotated-u".into(), organization_secret: "rotated-o".into() };
    env.control.set_credentials(&wrong).await.unwrap();
    env.create_instance("broken", echo_spec()).await;
    env.wait_stalled_with("broken", Some("Unauthorized")).await;
    let unauthorized = format!(r#"namespace="{}",ready="False",reason="Unauthorized""#, env.ns);
    assert_eq!(op.metric("connector_operator_instances", &unauthorized).await, 1.0);
    assert!(metric("connector_operator_platform_requests_total", r#"status="4xx""#).await >= 1.0);
    let text = env.operator.metrics_text().await;
    for secret in ["rotated-u", "rotated-o", sim::DEFAULT_USER_SECRET, sim::DEFAULT_ORGANIZATION_SECRET] {
        assert!(!text.contains(secret), "a secret value in /metrics");
    }
    assert!(!text.contains("desk"), "no per-object series");
}

/// With `--metrics-per-instance`, each instance's conditions are series of their own (for alerts
/// per object); they follow the status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_instance_series_are_opt_in_and_follow_the_status() {
    let env = Env::start_with("per-instance", &["--metrics-per-instance"]).await;
    env.create_instance("desk", echo_spec()).await;
    env.wait_ready("desk").await;
    let ready =
        format!(r#"namespace="{}",name="desk",condition="Ready",status="True",reason="Ready""#, env.ns);
    assert_eq!(env.operator.metric("connector_operator_instance_condition", &ready).await, 1.0);
    env.annotate("desk", json!({ "openconnectors.io/paused": "true" })).await;
    let paused =
        format!(r#"namespace="{}",name="desk",condition="Ready",status="False",reason="Paused""#, env.ns);
    eventually("the paused series", Duration::from_secs(30), || async {
        (env.operator.metric("connector_operator_instance_condition", &paused).await == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        env.operator.metric("connector_operator_instance_condition", &ready).await,
        0.0,
        "the old series is gone"
    );
}

/// One operator process watching two namespaces of three reconciles exactly those two, each with
/// its own platform; the third is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_process_watches_exactly_the_namespaces_it_is_given() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let simulator = sim::start(sim::SimConfig::default()).await.unwrap();
    let control = simulator.control().unwrap();
    let mut namespaces = Vec::new();
    for prefix in ["watched-a", "watched-b", "unwatched"] {
        let ns = support::namespace(&client, prefix).await;
        support::operator::create_platform(&client, &ns, &simulator.base_url()).await;
        namespaces.push(ns);
    }
    let list = format!("{},{}", namespaces[0], namespaces[1]);
    let operator = support::operator::Operator::start(&namespaces[0], &["--namespace", &list]);
    for ns in &namespaces {
        let api: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), ns);
        let ci: ConnectorInstance = serde_json::from_value(json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "echo" }, "spec": echo_spec(),
        }))
        .unwrap();
        api.create(&Default::default(), &ci).await.unwrap();
    }
    for ns in &namespaces[..2] {
        let api: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), ns);
        support::operator::wait_ready_in(&api, "echo", Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let unwatched: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), &namespaces[2]);
    let untouched = unwatched.get("echo").await.unwrap();
    // The API server shows the CRD's status default until an operator writes one.
    let unobserved = untouched
        .status
        .as_ref()
        .is_none_or(|s| s.observed_generation == Some(-1) && s.conditions.is_empty());
    assert!(unobserved && untouched.finalizers().is_empty(), "{:?}", untouched.status);
    assert_eq!(
        control.calls().await.unwrap().count("POST /instances"),
        2,
        "one create per watched namespace"
    );
    let census = operator.metric("connector_operator_instances", r#"ready="True""#).await;
    assert_eq!(census, 2.0, "the census counts both namespaces");

    // A ClusterConnectorPlatform used from the second namespace, whose run does not write cluster
    // platform status (the first run does, for all the namespaces of the process). No fault is
    // injected here: every operator of this test binary's parallel tests checks every cluster
    // platform of the shared API server, and during a fault their views of its health differ.
    let namespaces_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "shared-platform": namespaces[1] } } });
    namespaces_api.patch(&namespaces[1], &PatchParams::default(), &Patch::Merge(label)).await.unwrap();
    let cluster_platforms: kube::Api<connector_operator::api::ClusterConnectorPlatform> =
        kube::Api::all(client.clone());
    let shared = format!("shared-{}", namespaces[1]);
    let platform: connector_operator::api::ClusterConnectorPlatform = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
        "metadata": { "name": shared },
        "spec": { "baseUrl": simulator.base_url(), "insecureAllowHttp": true, "requestsPerSecond": 1000,
                  "credentialsSecretRef": { "name": support::operator::CREDENTIALS, "namespace": namespaces[1] },
                  "namespaceSelector": { "matchLabels": { "shared-platform": namespaces[1] } } },
    }))
    .unwrap();
    cluster_platforms.create(&Default::default(), &platform).await.unwrap();
    let api: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), &namespaces[1]);
    let mut spec = echo_spec();
    spec["platformRef"] = json!({ "kind": "ClusterConnectorPlatform", "name": shared });
    let ci: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "on-shared" }, "spec": spec,
    }))
    .unwrap();
    api.create(&Default::default(), &ci).await.unwrap();
    support::operator::wait_ready_in(&api, "on-shared", Duration::from_secs(30)).await;
    cluster_platforms.delete(&shared, &Default::default()).await.unwrap();
    drop(operator);
}

/// One process watching three namespaces writes the status of a ClusterConnectorPlatform that
/// allows only one of them, wherever that one stands in `--namespace a,b,c` (it used to be
/// written only when it was the first: the first namespace's run alone could write, and it does
/// not look at a platform its namespace may not use).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_platform_status_is_written_whichever_watched_namespace_it_allows() {
    use connector_operator::api::{ClusterConnectorPlatform, READY, find_condition};
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let simulator = sim::start(sim::SimConfig::default()).await.unwrap();
    let namespaces_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let mut namespaces = Vec::new();
    for position in 0..3 {
        let ns = support::namespace(&client, &format!("position-{position}")).await;
        support::operator::create_platform(&client, &ns, &simulator.base_url()).await;
        let label = json!({ "metadata": { "labels": { "admitted-by": ns } } });
        namespaces_api.patch(&ns, &PatchParams::default(), &Patch::Merge(label)).await.unwrap();
        namespaces.push(ns);
    }
    let list = namespaces.join(",");
    let operator = support::operator::Operator::start(&namespaces[0], &["--namespace", &list]);
    let platforms: kube::Api<ClusterConnectorPlatform> = kube::Api::all(client.clone());
    let names: Vec<String> = namespaces.iter().map(|ns| format!("admits-{ns}")).collect();
    for (ns, name) in namespaces.iter().zip(&names) {
        let platform: ClusterConnectorPlatform = serde_json::from_value(json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
            "metadata": { "name": name },
            "spec": { "baseUrl": simulator.base_url(), "insecureAllowHttp": true,
                      "credentialsSecretRef": { "name": support::operator::CREDENTIALS, "namespace": ns },
                      "namespaceSelector": { "matchLabels": { "admitted-by": ns } } },
        }))
        .unwrap();
        platforms.create(&Default::default(), &platform).await.unwrap();
    }
    for (position, name) in names.iter().enumerate() {
        eventually(
            &format!("the status of the platform of position {position}"),
            Duration::from_secs(30),
            || async {
                let status = platforms.get(name).await.ok()?.status?;
                find_condition(&status.conditions, READY).filter(|c| c.status == "True").map(|_| ())
            },
        )
        .await;
    }
    for name in &names {
        platforms.delete(name, &Default::default()).await.unwrap();
    }
    drop(operator);
}

/// Issue 25, finding 9: one process watching two namespaces that both use one
/// ClusterConnectorPlatform knows that platform once: when its credentials stop working, the
/// instances of both namespaces report the first failure, and the credentials are probed once per
/// backoff step for both (each namespace's run used to probe on its own, twice the calls).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_platform_used_from_two_namespaces_is_probed_once_for_both() {
    use connector_operator::api::ClusterConnectorPlatform;
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let simulator = sim::start(sim::SimConfig::default()).await.unwrap();
    let control = simulator.control().unwrap();
    let namespaces_api: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    let mut namespaces = Vec::new();
    for prefix in ["shared-a", "shared-b"] {
        let ns = support::namespace(&client, prefix).await;
        support::operator::create_platform(&client, &ns, &simulator.base_url()).await;
        namespaces.push(ns);
    }
    let selector_value = namespaces[0].clone();
    for ns in &namespaces {
        let label = json!({ "metadata": { "labels": { "uses-platform": selector_value } } });
        namespaces_api.patch(ns, &PatchParams::default(), &Patch::Merge(label)).await.unwrap();
    }
    let list = namespaces.join(",");
    let operator = support::operator::Operator::start(&namespaces[0], &["--namespace", &list]);
    let platforms: kube::Api<ClusterConnectorPlatform> = kube::Api::all(client.clone());
    let name = format!("both-{}", namespaces[0]);
    let platform: ClusterConnectorPlatform = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
        "metadata": { "name": name },
        "spec": { "baseUrl": simulator.base_url(), "insecureAllowHttp": true, "requestsPerSecond": 1000,
                  "credentialsSecretRef": { "name": support::operator::CREDENTIALS, "namespace": namespaces[0] },
                  "namespaceSelector": { "matchLabels": { "uses-platform": selector_value } } },
    }))
    .unwrap();
    platforms.create(&Default::default(), &platform).await.unwrap();
    let mut spec = echo_spec();
    spec["platformRef"] = json!({ "kind": "ClusterConnectorPlatform", "name": name });
    for ns in &namespaces {
        let api: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), ns);
        let ci: ConnectorInstance = serde_json::from_value(json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "desk" }, "spec": spec,
        }))
        .unwrap();
        api.create(&Default::default(), &ci).await.unwrap();
        support::operator::wait_ready_in(&api, "desk", Duration::from_secs(30)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;

    // The organisation's secrets are reset on the platform: every call is refused from now on.
    control
        .set_credentials(&sim::Credentials {
            user_secret: "new-user".into(),
            organization_secret: "new-org".into(),
        })
        .await
        .unwrap();
    control.reset_calls().await.unwrap();
    for ns in &namespaces {
        let api: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), ns);
        let patch =
            json!({ "metadata": { "annotations": { "openconnectors.io/reconcile-requested-at": "now" } } });
        api.patch("desk", &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(12)).await;
    let calls = control.calls().await.unwrap();
    let probes = calls.count("GET /instances");
    let reads = calls.count("GET /instances/{id}");
    eprintln!(
        "12 s of a broken platform shared by two namespaces: {probes} probes, {reads} reads: {calls:?}"
    );
    // Probes at about 0, 5 and 15 s (backoff 5 s, then 10 s): 2 in 12 s for both runs together
    // (each run probing on its own made 4).
    assert!(probes <= 2, "one probe per backoff step for both namespaces: {calls:?}");
    assert!(reads <= 2, "each instance called at most once: {calls:?}");
    for ns in &namespaces {
        let api: kube::Api<ConnectorInstance> = kube::Api::namespaced(client.clone(), ns);
        let status = api.get("desk").await.unwrap().status.unwrap();
        let ready = connector_operator::api::find_condition(&status.conditions, "Ready").unwrap();
        assert_eq!(ready.status, "False", "{ns}: {ready:?}");
    }
    platforms.delete(&name, &Default::default()).await.unwrap();
    drop(operator);
}

/// Issue 22 (a search only where something may exist): a new instance has no finalizer and
/// records no remote instance, so it is created at once, without a search by tag; one that has the
/// finalizer but records no instance (a crash between create and status write) is searched for,
/// and adopted rather than created twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_instance_is_created_without_a_search_and_a_crashed_one_is_searched_for() {
    let env = Env::start("no-search").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    env.control.reset_calls().await.unwrap();
    env.create_instance("fresh", echo_spec()).await;
    env.wait_ready("fresh").await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "{calls:?}");
    assert_eq!(calls.count("GET /instances"), 0, "no search by tag for a new instance: {calls:?}");

    // The state a crash between create and status write leaves: the finalizer, a remote instance
    // with the resource's tag, no instance id in status.
    // (Paused while the remote instance is made.)
    let ci: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": {
            "name": "crashed",
            "finalizers": ["openconnectors.io/remote-instance"],
            "annotations": { "openconnectors.io/paused": "true" },
        },
        "spec": echo_spec(),
    }))
    .unwrap();
    let created = env.instances().create(&Default::default(), &ci).await.unwrap();
    let tag = ownership_tag(&created.uid().unwrap());
    let remote = env.create_remote("crashed", &[&tag]).await;
    env.control.reset_calls().await.unwrap();
    env.annotate("crashed", json!({ "openconnectors.io/paused": null })).await;
    let ready = env.wait_ready("crashed").await;
    assert_eq!(ready.status.as_ref().unwrap().instance_id, Some(remote.id), "adopted, not created again");
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("GET /instances"), calls.count("POST /instances")), (1, 0), "{calls:?}");
}

/// The token is tested the way a workload uses it (`GET /instances` with `Element <token>`):
/// once after the create, then only on request; a token the platform no longer accepts says so
/// with the platform's message, in one call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_tested_after_create_and_on_request() {
    let env = Env::start("token-test").await;
    env.create_instance("desk", echo_spec()).await;
    let ci = env.wait_ready("desk").await;
    let status = ci.status.as_ref().unwrap();
    let id = status.instance_id.unwrap();
    let verified = connector_operator::api::find_condition(&status.conditions, "TokenVerified").unwrap();
    assert_eq!(
        (verified.status.as_str(), verified.reason.as_str()),
        ("True", "TokenAccepted"),
        "{verified:?}"
    );
    assert!(status.token_tested_time.is_some());
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("GET /instances (Element)"), 1, "exactly one instance-scoped call: {calls:?}");

    // The token is made invalid out of band; an on-demand test says so, in one call.
    env.control.reset_calls().await.unwrap();
    assert!(env.control.revoke_token(id).await.unwrap());
    env.annotate("desk", json!({ "openconnectors.io/test-requested-at": "after-revoke" })).await;
    let (message, ci) = eventually("the failed test", Duration::from_secs(30), || async {
        let ci = env.instances().get("desk").await.ok()?;
        let status = ci.status.as_ref()?;
        let c = connector_operator::api::find_condition(&status.conditions, "TokenVerified")?;
        (c.status == "False" && status.last_handled_test_at.as_deref() == Some("after-revoke"))
            .then(|| (c.message.clone(), ci.clone()))
    })
    .await;
    assert!(message.contains("invalid Element token"), "the platform's message: {message}");
    assert_eq!(
        connector_operator::api::find_condition(&ci.status.unwrap().conditions, "TokenVerified")
            .unwrap()
            .reason,
        "TokenRejected"
    );
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("GET /instances (Element)"), 1, "{calls:?}");
    // The same request value again asks for nothing.
    env.annotate("desk", json!({ "openconnectors.io/paused": "false" })).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("GET /instances (Element)"), 1, "{calls:?}");
    env.assert_no_secret_leaks(&[]).await;
}

/// The reasons of the Events about the instance `name`.
async fn event_reasons(env: &Env, name: &str) -> Vec<String> {
    env.events()
        .await
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .filter_map(|e| e.reason)
        .collect()
}

/// Waits until the instance shows a planned re-authentication with `approval` for its current
/// generation (Ready still True); returns it.
/// An approval value without its binding to the inputs (`3.2-1a2b3c4d` → `3.2`).
fn base(approval: &str) -> &str {
    approval.split_once('-').map_or(approval, |(base, _)| base)
}

/// The approval value of the plan `ci` shows.
fn plan_value(ci: &ConnectorInstance) -> String {
    ci.status.as_ref().unwrap().planned_action.as_ref().unwrap().approval.clone()
}

/// Waits for `name` to show a plan whose approval value has the base `approval` (`3`, `3.2`).
async fn wait_planned(env: &Env, name: &str, approval: &str) -> ConnectorInstance {
    eventually(
        &format!("{name} to plan a re-authentication approved by {approval}"),
        Duration::from_secs(20),
        || async move {
            let ci = env.instances().get(name).await.ok()?;
            let status = ci.status.as_ref()?;
            let plan = status.planned_action.as_ref()?;
            (base(&plan.approval) == approval && status.observed_generation == ci.metadata.generation)
                .then(|| ci.clone())
        },
    )
    .await
}

/// `spec.reauthentication: Manual` (issue 14, item 4): a configuration change is planned, not
/// applied (0 PUTs, the old token stays and Ready stays True, kstatus Current); a plan costs
/// nothing while it waits (quiet windows: 0 platform calls, 0 Kubernetes writes); a rename still
/// PATCHes; a wrong approval does nothing; the right one makes exactly 1 PUT and a new token;
/// an approval is used once (a later change of a referenced Secret, or of the spec, needs a new
/// one); a reverted change drops the plan; `kubectl delete` deletes at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_reauthentication_waits_for_an_approval_of_exactly_that_plan() {
    let env = Env::start("manual-reauth").await;
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    let mut spec = zendesk_spec();
    spec["reauthentication"] = json!("Manual");
    env.create_instance("desk", spec).await;
    let ci = env.wait_ready("desk").await;
    let id = ci.status.as_ref().unwrap().instance_id.unwrap();
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "a create is never held: {calls:?}");
    let first_token = env.secret_token("desk-token").await.unwrap();
    let secret = env.secrets().get("desk-token").await.unwrap();
    let inputs: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&secret.annotations()["openconnectors.io/applied-inputs"]).unwrap();
    assert_eq!(
        inputs.keys().map(String::as_str).collect::<Vec<_>>(),
        ["password", "username", "zendesk.subdomain"],
        "the token Secret records a digest per key"
    );

    // A configuration change: planned, not applied.
    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "configuration": { "zendesk.subdomain": "acme-eu" } })).await;
    let ci = wait_planned(&env, "desk", "2").await;
    let status = ci.status.as_ref().unwrap();
    let plan = status.planned_action.as_ref().unwrap();
    assert_eq!(plan.type_, connector_operator::api::PlannedActionType::ReAuthenticate);
    assert_eq!(plan.changed_inputs, ["zendesk.subdomain"], "key names only");
    let ready = connector_operator::api::find_condition(&status.conditions, "Ready").unwrap();
    assert_eq!(ready.status, "True", "the old token still works: {ready:?}");
    let pending =
        connector_operator::api::find_condition(&status.conditions, "ReAuthenticationPending").unwrap();
    assert_eq!(pending.status, "True");
    assert!(
        pending.message.contains("`zendesk.subdomain`")
            && pending
                .message
                .contains("kubectl annotate connectorinstance desk openconnectors.io/approve=2"),
        "{}",
        pending.message
    );
    assert_eq!(kstatus(&ci), "Current");
    eventually("the plan's Event", Duration::from_secs(10), || async {
        event_reasons(&env, "desk").await.contains(&"ReAuthenticationPending".to_string()).then_some(())
    })
    .await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 0, "no re-authentication without approval: {calls:?}");
    assert_eq!(env.secret_token("desk-token").await.unwrap(), first_token, "the old token stays");
    // Budget while a plan waits: nothing at all.
    let (calls, writes) = env.quiet_window(Duration::from_secs(8)).await;
    eprintln!("quiet window while planned: {} platform calls, {writes} Kubernetes writes", calls.total);
    assert_eq!((calls.total, writes), (0, 0), "a waiting plan costs nothing: {calls:?}");

    // A rename still goes through (one PATCH); the plan waits on, with the new generation's value.
    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "displayName": "Support desk" })).await;
    let ci = wait_planned(&env, "desk", "3").await;
    assert_eq!(
        ci.status.as_ref().unwrap().planned_action.as_ref().unwrap().changed_inputs,
        ["zendesk.subdomain"]
    );
    eventually("the rename", Duration::from_secs(10), || async {
        let remote = env.control.instance(id).await.unwrap()?;
        (remote.name == "Support desk").then_some(())
    })
    .await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PATCH /instances/{id}"), 1, "{calls:?}");
    assert_eq!(calls.count("PUT /instances/{id}"), 0, "{calls:?}");

    // An approval of another value (the plan's value before the rename) does nothing.
    env.annotate("desk", json!({ "openconnectors.io/approve": "2" })).await;
    eventually("the ignored approval's Warning", Duration::from_secs(10), || async {
        event_reasons(&env, "desk").await.contains(&"ApprovalIgnored".to_string()).then_some(())
    })
    .await;
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "a wrong approval costs nothing: {calls:?}");
    assert_eq!(env.control.calls().await.unwrap().count("PUT /instances/{id}"), 0);
    assert_eq!(env.secret_token("desk-token").await.unwrap(), first_token);

    // The right value: exactly one PUT, a new token, the plan gone.
    env.control.reset_calls().await.unwrap();
    let approved = plan_value(&ci);
    assert_eq!(base(&approved), "3");
    env.annotate("desk", json!({ "openconnectors.io/approve": approved })).await;
    let second_token = eventually("the new token", Duration::from_secs(20), || async {
        env.secret_token("desk-token").await.filter(|t| *t != first_token)
    })
    .await;
    let ci = env.wait_ready_with_token("desk", &second_token).await;
    let status = ci.status.as_ref().unwrap();
    assert_eq!(Some(second_token.clone()), env.sim_token(id).await);
    assert!(status.planned_action.is_none(), "{status:?}");
    assert!(connector_operator::api::find_condition(&status.conditions, "ReAuthenticationPending").is_none());
    assert_eq!(status.last_approved.as_deref(), Some(approved.as_str()));
    assert_eq!(status.last_action.as_ref().map(|a| a.type_), Some(ActionType::ReAuthenticated));
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.configuration.get("zendesk.subdomain").map(String::as_str), Some("acme-eu"));
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 1, "exactly one re-authentication: {calls:?}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(8)).await;
    eprintln!("quiet window after approval: {} platform calls, {writes} Kubernetes writes", calls.total);
    assert_eq!((calls.total, writes), (0, 0), "steady state after the approval: {calls:?}");

    // A referenced Secret changes (no new generation): a new plan, which the approval already
    // used does not approve.
    env.put_secret("zendesk-login", &[("password", "new-horse-battery")]).await;
    let ci = wait_planned(&env, "desk", "3.2").await;
    assert_eq!(ci.status.as_ref().unwrap().planned_action.as_ref().unwrap().changed_inputs, ["password"]);
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");
    assert_eq!(env.secret_token("desk-token").await.unwrap(), second_token);
    // The Secret changes again after the plan was shown (issue 25, finding 10): the value shown
    // before approves nothing; the plan shows a new one.
    let shown = plan_value(&ci);
    env.put_secret("zendesk-login", &[("password", "newer-horse-battery")]).await;
    let ci = eventually("a new value for the changed inputs", Duration::from_secs(20), || async {
        let ci = env.instances().get("desk").await.ok()?;
        let value = ci.status.as_ref()?.planned_action.as_ref()?.approval.clone();
        (value != shown && base(&value) == "3.2").then_some(ci)
    })
    .await;
    env.annotate("desk", json!({ "openconnectors.io/approve": shown })).await;
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!(calls.count("PUT /instances/{id}"), 0, "the stale approval approves nothing: {calls:?}");
    assert!(writes <= 1, "at most the ApprovalIgnored Event: {writes}");
    assert_eq!(env.secret_token("desk-token").await.unwrap(), second_token);
    let approved = plan_value(&ci);
    env.annotate("desk", json!({ "openconnectors.io/approve": approved })).await;
    let third_token = eventually("the token of the second approval", Duration::from_secs(20), || async {
        env.secret_token("desk-token").await.filter(|t| *t != second_token)
    })
    .await;
    let ci = env.wait_ready_with_token("desk", &third_token).await;
    assert_eq!(ci.status.as_ref().unwrap().last_approved.as_deref(), Some(approved.as_str()));

    // A spec change needs a new approval; reverting it drops the plan without a PUT.
    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "configuration": { "username": "lead@example.com" } })).await;
    let ci = wait_planned(&env, "desk", "4").await;
    assert_eq!(ci.status.as_ref().unwrap().planned_action.as_ref().unwrap().changed_inputs, ["username"]);
    env.patch_spec("desk", json!({ "configuration": { "username": "agent@example.com" } })).await;
    let ci = eventually("the plan to go with the revert", Duration::from_secs(20), || async {
        let ci = env.wait_ready("desk").await;
        ci.status.as_ref()?.planned_action.is_none().then_some(ci)
    })
    .await;
    let status = ci.status.as_ref().unwrap();
    assert!(connector_operator::api::find_condition(&status.conditions, "ReAuthenticationPending").is_none());
    assert_eq!(kstatus(&ci), "Current");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");
    assert_eq!(env.control.calls().await.unwrap().count("PUT /instances/{id}"), 0);
    assert_eq!(env.secret_token("desk-token").await.unwrap(), third_token);

    // Nothing secret in logs, Events or status: not the values, not their digests.
    let text = env.observable_text().await;
    let secret = env.secrets().get("desk-token").await.unwrap();
    let inputs: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&secret.annotations()["openconnectors.io/applied-inputs"]).unwrap();
    for digest in inputs.values() {
        assert!(!text.contains(digest.as_str()), "an input digest appears in logs, events or status");
    }
    env.assert_no_secret_leaks(&[
        "correct-horse-battery",
        "new-horse-battery",
        "newer-horse-battery",
        &first_token,
        &second_token,
    ])
    .await;

    // kubectl delete: gone at once, the remote instance deleted.
    env.control.reset_calls().await.unwrap();
    env.instances().delete("desk", &DeleteParams::default()).await.unwrap();
    eventually("desk to be deleted", Duration::from_secs(20), || async {
        env.instances().get_opt("desk").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_none(), "the remote instance is deleted");
    assert_eq!(env.control.calls().await.unwrap().count("DELETE /instances/{id}"), 1);
}

/// `Manual` with a token Secret written before the operator recorded per-key digests: the plan
/// says "the configuration changed"; the enabled flag still goes through while a plan waits (one
/// call to the enabled endpoint, no PUT); switching to `Automatic` applies the plan at once (one
/// PUT) and the Secret gets the record; then nothing is called or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_without_a_record_of_the_inputs_and_switching_back_to_automatic() {
    let env = Env::start("manual-switch").await;
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    let mut spec = zendesk_spec();
    spec["reauthentication"] = json!("Manual");
    env.create_instance("desk", spec).await;
    let id = env.wait_ready("desk").await.status.unwrap().instance_id.unwrap();
    let first_token = env.secret_token("desk-token").await.unwrap();

    // As an earlier version wrote it: no record of the inputs (while paused, so it stays so).
    env.annotate("desk", json!({ "openconnectors.io/paused": "true" })).await;
    eventually("desk to be paused", Duration::from_secs(10), || async {
        let ci = env.instances().get("desk").await.ok()?;
        let ready = connector_operator::api::find_condition(&ci.status?.conditions, "Ready")?.clone();
        (ready.reason == "Paused").then_some(())
    })
    .await;
    let strip = json!({ "metadata": { "annotations": { "openconnectors.io/applied-inputs": null } } });
    env.secrets().patch("desk-token", &PatchParams::default(), &Patch::Merge(&strip)).await.unwrap();
    env.patch_spec("desk", json!({ "configuration": { "zendesk.subdomain": "acme-eu" } })).await;
    env.control.reset_calls().await.unwrap();
    env.annotate("desk", json!({ "openconnectors.io/paused": null })).await;
    let ci = wait_planned(&env, "desk", "2").await;
    let status = ci.status.as_ref().unwrap();
    assert!(status.planned_action.as_ref().unwrap().changed_inputs.is_empty());
    let pending =
        connector_operator::api::find_condition(&status.conditions, "ReAuthenticationPending").unwrap();
    assert!(pending.message.starts_with("the configuration changed"), "{}", pending.message);
    assert!(connector_operator::api::is_condition_true(&status.conditions, "Ready"));
    assert_eq!(kstatus(&ci), "Current");

    // The enabled flag while the plan waits: the enabled endpoint only.
    env.patch_spec("desk", json!({ "enabled": false })).await;
    wait_planned(&env, "desk", "3").await;
    eventually("the instance to be disabled", Duration::from_secs(10), || async {
        env.control.instance(id).await.unwrap().filter(|r| r.disabled)
    })
    .await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("DELETE /instances/{id}/enabled"), 1, "{calls:?}");
    assert_eq!(calls.writes, 1, "nothing but the enabled endpoint: {calls:?}");
    assert_eq!(env.secret_token("desk-token").await.unwrap(), first_token);
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");

    // Back to Automatic: the plan is applied at once.
    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "reauthentication": "Automatic" })).await;
    let new_token = eventually("the new token", Duration::from_secs(20), || async {
        env.secret_token("desk-token").await.filter(|t| *t != first_token)
    })
    .await;
    let ci = env.wait_ready_with_token("desk", &new_token).await;
    let status = ci.status.as_ref().unwrap();
    assert!(status.planned_action.is_none());
    assert!(connector_operator::api::find_condition(&status.conditions, "ReAuthenticationPending").is_none());
    assert_eq!(status.last_approved, None, "nothing was approved");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 1, "{calls:?}");
    let secret = env.secrets().get("desk-token").await.unwrap();
    let inputs: std::collections::BTreeMap<String, String> =
        serde_json::from_str(&secret.annotations()["openconnectors.io/applied-inputs"]).unwrap();
    assert_eq!(inputs.len(), 3, "the record is written with the new token");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");
    env.assert_no_secret_leaks(&["correct-horse-battery", &first_token]).await;
}
