//! End-to-end: what workloads get. Token Secret templates, the `authorization` value under the
//! platform owner's opt-in, and rollout restarts, with the real operator binary against a real
//! kube-apiserver + etcd and the platform simulator. Each test has its own namespace, simulator
//! and operator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use connector_operator::sim;
use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use serde_json::json;
use support::eventually;
use support::operator::{CREDENTIALS, Env, PLATFORM, echo_spec, operator_write_events};

fn text(secret: &Secret, key: &str) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()[key].0.clone()).unwrap()
}

fn keys(secret: &Secret) -> Vec<String> {
    secret.data.as_ref().map(|d| d.keys().cloned().collect()).unwrap_or_default()
}

/// Waits for the instance's Secret to satisfy `check`.
async fn wait_secret(env: &Env, name: &str, what: &str, check: impl Fn(&Secret) -> bool) -> Secret {
    eventually(what, Duration::from_secs(30), || async {
        let secret = env.secrets().get_opt(name).await.ok()??;
        check(&secret).then_some(secret)
    })
    .await
}

fn with_token_secret(token_secret: serde_json::Value) -> serde_json::Value {
    let mut spec = echo_spec();
    spec["tokenSecret"] = token_secret;
    spec
}

/// A template with custom keys, labels, annotations and a type gives exactly those; a broken one
/// stalls naming the key and the line, with nothing written and nothing sent, and goes Ready once
/// fixed; template changes (a removed label, `Replace`) are one Secret write and no platform call;
/// the token is still found after a restart when only a template key holds it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_shape_the_secret_and_a_broken_one_writes_nothing() {
    let env = Env::start("templates").await;
    let template = json!({
        "metadata": {
            "labels": { "team": "payments", "example.com/tier": "gold" },
            "annotations": { "reloader.stakater.com/match": "true" },
        },
        "type": "example.com/connector-token",
        "data": {
            "config.json": "{\"token\": {{ token | tojson }}, \"instanceId\": {{ instanceId }}, \"baseUrl\": {{ baseUrl | tojson }}}",
            "app.properties": "connector={{ connector }}\ninstance={{ namespace }}/{{ name }}\n",
            "TOKEN_B64": "{{ token | b64encode }}",
        },
    });
    env.create_instance("desk", with_token_secret(json!({ "template": template }))).await;
    let ci = env.wait_ready("desk").await;
    let id = ci.status.as_ref().unwrap().instance_id.unwrap();
    let token = env.sim_token(id).await.unwrap();
    let secret = env.secrets().get("desk-token").await.unwrap();
    assert_eq!(
        keys(&secret),
        ["TOKEN_B64", "app.properties", "baseUrl", "config.json", "connector", "instanceId", "token"],
        "the default keys and the template's (mergePolicy Merge)"
    );
    let config: serde_json::Value = serde_json::from_str(&text(&secret, "config.json")).unwrap();
    assert_eq!(config, json!({ "token": token, "instanceId": id, "baseUrl": env.sim.base_url() }));
    assert_eq!(text(&secret, "app.properties"), format!("connector=echo\ninstance={}/desk\n", env.ns));
    assert_eq!(text(&secret, "TOKEN_B64"), base64_encode(&token));
    assert_eq!(secret.type_.as_deref(), Some("example.com/connector-token"));
    let labels: BTreeMap<String, String> = secret.labels().clone();
    assert_eq!(
        labels.keys().map(String::as_str).collect::<Vec<_>>(),
        ["app.kubernetes.io/managed-by", "example.com/tier", "openconnectors.io/connector-instance", "team"],
        "exactly the operator's labels and the template's"
    );
    let annotations: Vec<&str> = secret.annotations().keys().map(String::as_str).collect();
    assert_eq!(
        annotations,
        [
            "openconnectors.io/applied-auth-hash",
            "openconnectors.io/applied-inputs",
            "openconnectors.io/content-sha256",
            "openconnectors.io/template-metadata-keys",
            "openconnectors.io/template-sha256",
            "openconnectors.io/token-sha256",
            "reloader.stakater.com/match",
        ],
        "exactly the operator's annotations and the template's"
    );

    // A broken template: Stalled, naming the key and the line; no Secret, no POST; quiet after.
    env.control.reset_calls().await.unwrap();
    let broken = json!({ "data": { "good": "{{ token }}", "settings.ini": "[auth]\ntoken = {{ tokn }}\n" } });
    env.create_instance("broken", with_token_secret(json!({ "template": broken }))).await;
    let (reason, message) = env.wait_stalled_with("broken", Some("InvalidTokenSecretTemplate")).await;
    assert_eq!(reason, "InvalidTokenSecretTemplate");
    assert!(message.contains("data[`settings.ini`] line 2") && message.contains("undefined"), "{message}");
    assert!(env.secrets().get_opt("broken-token").await.unwrap().is_none(), "nothing written");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 0, "nothing sent to the platform: {calls:?}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "a broken template is quiet: {calls:?}");
    // Fixed: Ready without a restart.
    env.patch_spec("broken", json!({ "tokenSecret": { "template": { "data": { "settings.ini": "[auth]\ntoken = {{ token }}\n" } } } }))
        .await;
    env.wait_ready("broken").await;
    let fixed = env.secrets().get("broken-token").await.unwrap();
    assert!(text(&fixed, "settings.ini").starts_with("[auth]\ntoken = "));
    // Reserved metadata is refused, with nothing written to the Secret.
    env.patch_spec("broken", json!({ "tokenSecret": { "template": { "metadata": { "labels": { "app.kubernetes.io/instance": "argo-app" } } } } }))
        .await;
    let (_, message) = env.wait_stalled_with("broken", Some("InvalidTokenSecretTemplate")).await;
    assert!(message.contains("app.kubernetes.io/instance") && message.contains("reserved"), "{message}");
    assert!(
        !env.secrets().get("broken-token").await.unwrap().labels().contains_key("app.kubernetes.io/instance")
    );
    // And deleted: gone at once.
    env.instances().delete("broken", &DeleteParams::default()).await.unwrap();
    eventually("broken to go", Duration::from_secs(20), || async {
        env.instances().get_opt("broken").await.unwrap().is_none().then_some(())
    })
    .await;

    // Template changes: a label removed and a key replaced are one Secret write, no platform call.
    env.control.reset_calls().await.unwrap();
    let writes_before = operator_write_events(&env.ns).len();
    env.patch_spec("desk", json!({ "tokenSecret": { "template": { "metadata": { "labels": { "team": null } }, "data": { "TOKEN_B64": null, "TOKEN": "{{ token }}" } } } }))
        .await;
    let secret = wait_secret(&env, "desk-token", "the template change", |s| {
        s.data.as_ref().is_some_and(|d| d.contains_key("TOKEN"))
    })
    .await;
    assert!(!secret.labels().contains_key("team"), "a label removed from the template goes");
    assert!(!keys(&secret).contains(&"TOKEN_B64".to_string()));
    env.wait_ready("desk").await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let secret_writes =
        operator_write_events(&env.ns)[writes_before..].iter().filter(|e| e.resource == "secrets").count();
    assert_eq!(secret_writes, 1, "one Secret write for the template change");
    assert_eq!(env.control.calls().await.unwrap().writes, 0, "no platform write for a template change");

    // Replace: only the template's keys; after a restart the token is found in them (no new token).
    env.patch_spec("desk", json!({ "tokenSecret": { "template": { "mergePolicy": "Replace" } } })).await;
    let secret = wait_secret(&env, "desk-token", "only the template's keys", |s| {
        !keys(s).contains(&"token".to_string())
    })
    .await;
    assert_eq!(keys(&secret), ["TOKEN", "app.properties", "config.json"]);
    assert_eq!(text(&secret, "TOKEN"), token);
    env.wait_ready("desk").await;
    let mut env = env;
    env.control.reset_calls().await.unwrap();
    env.operator.restart();
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!(calls.writes, 0, "the token is found in the Secret after a restart: {calls:?}");
    assert_eq!(writes, 0, "nothing rewritten after a restart");
    assert_eq!(text(&env.secrets().get("desk-token").await.unwrap(), "TOKEN"), token);

    // A type the template cannot satisfy is refused before anything is written, and the Secret
    // stays.
    env.patch_spec("desk", json!({ "tokenSecret": { "template": { "type": "kubernetes.io/tls" } } })).await;
    let (_, message) = env.wait_stalled_with("desk", Some("InvalidTokenSecretTemplate")).await;
    assert!(message.contains("tls.crt"), "says which keys it needs: {message}");
    let kept = env.secrets().get("desk-token").await.unwrap();
    assert_eq!(kept.type_.as_deref(), Some("example.com/connector-token"), "the old Secret is kept");
    assert_eq!(text(&kept, "TOKEN"), token);
    // Changing the type replaces the Secret (a Secret's type cannot change in place).
    env.patch_spec("desk", json!({ "tokenSecret": { "template": { "type": null } } })).await;
    let secret =
        wait_secret(&env, "desk-token", "the Opaque Secret", |s| s.type_.as_deref() == Some("Opaque")).await;
    assert_eq!(text(&secret, "TOKEN"), token);
    env.wait_ready("desk").await;
    env.assert_no_secret_leaks(&[]).await;
}

fn base64_encode(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// Patches the test's ConnectorPlatform spec.
async fn patch_platform(env: &Env, spec: serde_json::Value) {
    let platforms: Api<connector_operator::api::ConnectorPlatform> =
        Api::namespaced(env.client.clone(), &env.ns);
    platforms.patch(PLATFORM, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec }))).await.unwrap();
}

/// Calls the simulator's instance-scoped endpoint exactly as a workload does: `GET /instances`
/// with the `Authorization` header taken from the Secret. Returns (status, instance id).
async fn call_as_workload(env: &Env, authorization: &str) -> (u16, Option<i64>) {
    let response = reqwest::Client::new()
        .get(format!("{}/instances", env.sim.base_url()))
        .header("Authorization", authorization)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body: serde_json::Value = response.json().await.unwrap_or_default();
    let id = body.as_array().and_then(|a| a.first()).unwrap_or(&body).get("id").and_then(|v| v.as_i64());
    (status, id)
}

/// `authorization` without the platform's opt-in stalls with nothing sent; with it, the value is
/// exactly the header the platform accepts; rotated platform credentials reach every Secret
/// (one write each, no platform call about the instances). Restarts asked of an operator that
/// does not make them stall too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_authorization_value_needs_the_platform_owner_and_follows_rotation() {
    let env = Env::start("authorization").await;
    let template =
        json!({ "template": { "data": { "OPENCONNECTORS_AUTHORIZATION": "{{ authorization }}" } } });
    let names = ["app-0", "app-1", "app-2"];
    for name in names {
        env.create_instance(name, with_token_secret(template.clone())).await;
    }
    for name in names {
        let (_, message) = env.wait_stalled_with(name, Some("ConsumerCredentialsNotAllowed")).await;
        assert!(message.contains("consumerCredentials: Allow") && message.contains(PLATFORM), "{message}");
    }
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 0, "nothing created without the opt-in: {calls:?}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "quiet while refused: {calls:?}");

    // The platform owner opts in: Ready, and the value is the header the platform accepts.
    patch_platform(&env, json!({ "consumerCredentials": "Allow" })).await;
    let mut ids = Vec::new();
    for name in names {
        let ci = env.wait_ready(name).await;
        let id = ci.status.unwrap().instance_id.unwrap();
        let secret = env.secrets().get(&format!("{name}-token")).await.unwrap();
        let authorization = text(&secret, "OPENCONNECTORS_AUTHORIZATION");
        let token = env.sim_token(id).await.unwrap();
        assert_eq!(
            authorization,
            format!(
                "User {}, Organization {}, Element {token}",
                sim::DEFAULT_USER_SECRET,
                sim::DEFAULT_ORGANIZATION_SECRET
            )
        );
        assert_eq!(call_as_workload(&env, &authorization).await, (200, Some(id)), "the platform accepts it");
        ids.push(id);
    }

    // The platform credentials rotate: every Secret carries the new header, one write each.
    let rotated = sim::Credentials {
        user_secret: "rotated-user-7f3a".into(),
        organization_secret: "rotated-org-91c2".into(),
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = operator_write_events(&env.ns).len();
    env.control.set_credentials(&rotated).await.unwrap();
    env.control.reset_calls().await.unwrap();
    env.put_secret(
        CREDENTIALS,
        &[("userSecret", &rotated.user_secret), ("organizationSecret", &rotated.organization_secret)],
    )
    .await;
    let mut rotated_headers = Vec::new();
    for name in names {
        let secret = wait_secret(&env, &format!("{name}-token"), "the rotated header", |s| {
            text(s, "OPENCONNECTORS_AUTHORIZATION")
                .starts_with("User rotated-user-7f3a, Organization rotated-org-91c2, Element ")
        })
        .await;
        rotated_headers.push(text(&secret, "OPENCONNECTORS_AUTHORIZATION"));
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let secret_writes: Vec<_> = operator_write_events(&env.ns)[writes_before..]
        .iter()
        .filter(|e| e.resource == "secrets")
        .map(|e| e.name.clone().unwrap_or_default())
        .collect();
    assert_eq!(secret_writes.len(), names.len(), "one Secret write per instance: {secret_writes:?}");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.writes, 0, "no platform write: {calls:?}");
    assert_eq!(calls.count("GET /instances/{id}"), 0, "no platform call about the instances: {calls:?}");
    assert_eq!(calls.count("GET /instances (Element)"), 0, "{calls:?}");
    for (header, id) in rotated_headers.iter().zip(&ids) {
        assert_eq!(
            call_as_workload(&env, header).await,
            (200, Some(*id)),
            "the platform accepts the new header"
        );
    }

    // The opt-in withdrawn (issue 25, finding 8): the instances stall, and their Secrets lose the
    // organisation's credentials (one write each) and keep the rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let writes_before = operator_write_events(&env.ns).len();
    patch_platform(&env, json!({ "consumerCredentials": "Deny" })).await;
    for name in names {
        env.wait_stalled_with(name, Some("ConsumerCredentialsNotAllowed")).await;
        let secret = wait_secret(&env, &format!("{name}-token"), "the credentials withheld", |s| {
            !keys(s).contains(&"OPENCONNECTORS_AUTHORIZATION".to_string())
        })
        .await;
        assert!(keys(&secret).contains(&"token".to_string()), "the token stays: {:?}", keys(&secret));
        let shown = serde_json::to_string(&secret.data).unwrap();
        assert!(!shown.contains("rotated-org-91c2") && !shown.contains(&base64_encode("rotated-org-91c2")));
    }
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "quiet once withheld: {calls:?}");
    let secret_writes =
        operator_write_events(&env.ns)[writes_before..].iter().filter(|e| e.resource == "secrets").count();
    assert_eq!(secret_writes, names.len(), "one Secret write per instance");
    // Restarts asked of an operator without --rollout-restart stall, with nothing sent.
    env.control.reset_calls().await.unwrap();
    env.create_instance(
        "restarts",
        with_token_secret(json!({ "rolloutRestart": [{ "kind": "Deployment", "name": "web" }] })),
    )
    .await;
    let (_, message) = env.wait_stalled_with("restarts", Some("RolloutRestartDisabled")).await;
    assert!(message.contains("rolloutRestart.enabled=true"), "{message}");
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 0);
    for name in names.iter().chain(&["restarts"]) {
        env.instances().delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("all deleted", Duration::from_secs(30), || async {
        env.instances().list(&Default::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;
    assert!(env.control.instances().await.unwrap().is_empty(), "the remote instances are deleted");
    env.assert_no_secret_leaks(&["rotated-user-7f3a", "rotated-org-91c2"]).await;
}

fn deployment(name: &str, labels: serde_json::Value) -> Deployment {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1" }] },
            },
        },
    }))
    .unwrap()
}

fn stateful_set(name: &str, labels: serde_json::Value) -> StatefulSet {
    serde_json::from_value(json!({
        "apiVersion": "apps/v1", "kind": "StatefulSet",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "serviceName": name,
            "selector": { "matchLabels": { "app": name } },
            "template": {
                "metadata": { "labels": { "app": name } },
                "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1" }] },
            },
        },
    }))
    .unwrap()
}

fn pod_annotation(template: Option<&k8s_openapi::api::core::v1::PodTemplateSpec>) -> Option<String> {
    template?.metadata.as_ref()?.annotations.as_ref()?.get("openconnectors.io/token-sha256").cloned()
}

/// Workloads named in `rolloutRestart` (by name and by label selector) get a new pod template
/// annotation once per token rotation, after the new Secret is written, and never in steady state
/// (their generation counted over 3 resync periods); a workload not named is never touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_restart_rolls_the_named_workloads_once_per_rotation() {
    let env = Env::start_with("rollout", &["--rollout-restart"]).await;
    let deployments: Api<Deployment> = Api::namespaced(env.client.clone(), &env.ns);
    let stateful_sets: Api<StatefulSet> = Api::namespaced(env.client.clone(), &env.ns);
    deployments.create(&PostParams::default(), &deployment("web", json!({}))).await.unwrap();
    deployments.create(&PostParams::default(), &deployment("other", json!({ "tier": "db" }))).await.unwrap();
    stateful_sets.create(&PostParams::default(), &stateful_set("db", json!({ "tier": "db" }))).await.unwrap();
    let mut spec = with_token_secret(json!({ "rolloutRestart": [
        { "kind": "Deployment", "name": "web" },
        { "kind": "StatefulSet", "selector": { "matchLabels": { "tier": "db" } } },
        { "kind": "Deployment", "name": "not-there-yet" },
    ] }));
    spec["resyncInterval"] = json!("10s");
    spec["configuration"] = json!({ "echo.greeting": "hello" });
    env.create_instance("desk", spec).await;
    let ci = env.wait_ready("desk").await;
    let first = ci.status.unwrap().rollout_restart.expect("the content is recorded");
    assert!(first.time.is_none() && first.restarted.is_empty(), "creation restarts nothing: {first:?}");
    let generation = |name: &'static str| {
        let deployments = deployments.clone();
        async move { deployments.get(name).await.unwrap().metadata.generation.unwrap() }
    };
    assert_eq!(generation("web").await, 1);

    // A token rotation (a configuration change re-authenticates): one restart of each target.
    let old_token = env.secret_token("desk-token").await.unwrap();
    env.patch_spec("desk", json!({ "configuration": { "echo.greeting": "hi" } })).await;
    let ci = eventually("the restart", Duration::from_secs(30), || async {
        let ci = env.instances().get("desk").await.ok()?;
        ci.status.as_ref()?.rollout_restart.as_ref()?.time.as_ref()?;
        Some(ci)
    })
    .await;
    let record = ci.status.as_ref().unwrap().rollout_restart.clone().unwrap();
    assert_eq!(record.restarted, ["Deployment/web", "StatefulSet/db"]);
    let secret = env.secrets().get("desk-token").await.unwrap();
    assert_ne!(text(&secret, "token"), old_token, "a new token");
    let content = &secret.annotations()["openconnectors.io/content-sha256"];
    assert_eq!(&content[..12], record.content_sha256, "the Secret's digest");
    let web = deployments.get("web").await.unwrap();
    assert_eq!(pod_annotation(Some(&web.spec.template)).as_deref(), Some(record.content_sha256.as_str()));
    assert_eq!(web.metadata.generation, Some(2), "one rollout of web");
    let db = stateful_sets.get("db").await.unwrap();
    assert_eq!(db.metadata.generation, Some(2), "one rollout of the StatefulSet the selector matches");
    let other = deployments.get("other").await.unwrap();
    assert_eq!(other.metadata.generation, Some(1), "a Deployment not named is not touched");
    assert!(pod_annotation(Some(&other.spec.template)).is_none());

    // Steady state over 3 resync periods: no restart, no write at all.
    let writes_before = operator_write_events(&env.ns).len();
    tokio::time::sleep(Duration::from_secs(32)).await;
    assert_eq!(generation("web").await, 2, "never restarted in steady state");
    assert_eq!(stateful_sets.get("db").await.unwrap().metadata.generation, Some(2));
    let writes: Vec<_> = operator_write_events(&env.ns)[writes_before..].to_vec();
    assert!(writes.is_empty(), "no Kubernetes writes in steady state: {writes:?}");
    let calls = env.control.calls().await.unwrap();
    assert!(calls.count("GET /instances/{id}") >= 2, "the resyncs did run: {calls:?}");

    // A second rotation: a second restart.
    env.patch_spec("desk", json!({ "configuration": { "echo.greeting": "hey" } })).await;
    eventually("the second restart", Duration::from_secs(30), || async {
        (deployments.get("web").await.ok()?.metadata.generation == Some(3)).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(generation("web").await, 3, "exactly one more");
    env.instances().delete("desk", &DeleteParams::default()).await.unwrap();
    eventually("desk to go", Duration::from_secs(20), || async {
        env.instances().get_opt("desk").await.unwrap().is_none().then_some(())
    })
    .await;
    env.assert_no_secret_leaks(&[]).await;
}

/// Issue 25, finding 3: a template cannot make the operator write a Secret Kubernetes acts on. A
/// `kubernetes.io/service-account-token` type with the `kubernetes.io/service-account.name`
/// annotation (which would have a token minted for that ServiceAccount, written with the
/// operator's rights) is Stalled before any platform call or write; so is the annotation alone;
/// the fixed template goes Ready without a restart, and the instance deletes plainly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_cannot_mint_service_account_tokens() {
    let env = Env::start("sa-token").await;
    let mut spec = echo_spec();
    spec["tokenSecret"] = json!({ "template": {
        "type": "kubernetes.io/service-account-token",
        "metadata": { "annotations": { "kubernetes.io/service-account.name": "default" } },
        "data": { "token": "{{ token }}" },
    } });
    env.create_instance("minted", spec).await;
    let (reason, message) = env.wait_stalled("minted").await;
    assert_eq!(reason, "InvalidTokenSecretTemplate", "{message}");
    assert!(message.contains("reserved by Kubernetes") || message.contains("template.type"), "{message}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");
    assert_eq!(env.control.calls().await.unwrap().writes, 0);

    // The type alone, with a plain annotation.
    let type_only = json!({ "template": {
        "type": "kubernetes.io/service-account-token",
        "metadata": { "annotations": { "kubernetes.io/service-account.name": null, "team": "crm" } },
    } });
    env.patch_spec("minted", json!({ "tokenSecret": type_only })).await;
    let message = eventually("the type to be refused", Duration::from_secs(30), || async {
        let (_, message) = env.wait_stalled("minted").await;
        message.contains("spec.tokenSecret.template.type").then_some(message)
    })
    .await;
    assert!(message.contains("example.com/token"), "says what is allowed: {message}");

    // Fixed: a type of the user's own domain.
    env.patch_spec(
        "minted",
        json!({ "tokenSecret": { "template": { "type": "example.com/connector-token" } } }),
    )
    .await;
    env.wait_ready("minted").await;
    let secret = env.secrets().get("minted-token").await.unwrap();
    assert_eq!(secret.type_.as_deref(), Some("example.com/connector-token"));
    assert!(!secret.annotations().keys().any(|k| k.contains("kubernetes.io/")), "{:?}", secret.annotations());
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 1);
    env.instances().delete("minted", &DeleteParams::default()).await.unwrap();
    eventually("the instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("minted").await.ok()?.is_none().then_some(())
    })
    .await;
}
