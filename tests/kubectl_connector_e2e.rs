//! End-to-end: the `kubectl-connector` plugin, built, run as a user runs it (a kubeconfig, a
//! namespace) against a real kube-apiserver + etcd, the real operator and the platform simulator.
//! Every subcommand; what each costs on the platform is counted by the simulator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::process::{Command, Output};
use std::time::Duration;

use connector_operator::api::{ConnectorInstance, READY, TOKEN_VERIFIED, find_condition};
use kube::api::{Api, DeleteParams};
use serde_json::json;
use support::control_plane;
use support::operator::{Env, echo_spec};

/// Runs the plugin with `args` in `ns`; stdin is not a terminal, so nothing asks.
fn plugin(ns: &str, args: &[&str]) -> Output {
    plugin_as(control_plane().kubeconfig_path(), ns, args)
}

/// Runs the plugin with `kubeconfig` (another user's) in `ns`.
fn plugin_as(kubeconfig: &std::path::Path, ns: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_kubectl-connector"))
        .args(["--kubeconfig", kubeconfig.to_str().unwrap(), "-n", ns])
        .args(args)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap()
}

fn ok(output: &Output) -> String {
    let (stdout, stderr) =
        (String::from_utf8_lossy(&output.stdout).to_string(), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "exit {:?}\nstdout: {stdout}\nstderr: {stderr}", output.status);
    stdout
}

fn failed(output: &Output) -> String {
    assert!(!output.status.success(), "should fail: {}", String::from_utf8_lossy(&output.stdout));
    String::from_utf8_lossy(&output.stderr).to_string()
}

async fn status(env: &Env, name: &str) -> connector_operator::api::ConnectorInstanceStatus {
    env.instances().get(name).await.unwrap().status.unwrap()
}

async fn puts(env: &Env) -> u64 {
    env.control.calls().await.unwrap().count("PUT /instances/{id}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_token_test_reconcile_and_reauthenticate_from_the_command_line() {
    let env = Env::start("plugin").await;
    env.create_instance("desk", echo_spec()).await;
    env.wait_ready("desk").await;
    let ns = env.ns.clone();

    // status: one screen, and the same facts as JSON.
    let text = ok(&plugin(&ns, &["status", "desk"]));
    let id = status(&env, "desk").await.instance_id.unwrap();
    assert!(text.contains(&format!("ConnectorInstance {ns}/desk")), "{text}");
    assert!(text.contains("Ready:       True (Ready)"), "{text}");
    assert!(text.contains(&format!("instance {id}, valid, enabled")), "{text}");
    assert!(text.contains("Created"), "the last Events: {text}");
    assert!(text.contains("Ready True (CredentialsAccepted)"), "the platform's health: {text}");
    let as_json: serde_json::Value =
        serde_json::from_str(&ok(&plugin(&ns, &["status", "desk", "-o", "json"]))).unwrap();
    assert_eq!(as_json["status"]["instanceId"], json!(id));
    let listed = ok(&plugin(&ns, &["status"]));
    assert!(listed.lines().any(|l| l.contains("desk") && l.contains("True")), "{listed}");

    // token: what the Secret holds (stdout is a pipe here).
    let token = ok(&plugin(&ns, &["token", "desk"]));
    assert_eq!(token.trim(), env.secret_token("desk-token").await.unwrap());
    let no_header = failed(&plugin(&ns, &["token", "desk", "--header"]));
    assert!(no_header.contains("consumerCredentials"), "{no_header}");

    // test: one token test, echoed; no re-authentication.
    env.control.reset_calls().await.unwrap();
    let tested = ok(&plugin(&ns, &["test", "desk", "--wait"]));
    assert!(tested.contains("TokenVerified True (TokenAccepted)"), "{tested}");
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("PUT /instances/{id}"), calls.writes), (0, 0), "{calls:?}");
    assert!(status(&env, "desk").await.last_handled_test_at.is_some());

    // reconcile: handled and echoed.
    let reconciled = ok(&plugin(&ns, &["reconcile", "desk", "--wait"]));
    assert!(reconciled.contains("Ready True"), "{reconciled}");

    // reauthenticate: exactly one PUT, a new token in the Secret, the echo in status.
    env.control.reset_calls().await.unwrap();
    let before = env.secret_token("desk-token").await.unwrap();
    let done = ok(&plugin(&ns, &["reauthenticate", "desk", "--wait"]));
    assert!(done.contains(&format!("re-authenticated remote instance {id}")), "{done}");
    let after = env.secret_token("desk-token").await.unwrap();
    assert_ne!(before, after, "a new token");
    assert_eq!(env.sim_token(id).await.as_deref(), Some(after.as_str()));
    let st = status(&env, "desk").await;
    assert!(st.last_handled_reauthenticate_at.is_some());
    assert_eq!(puts(&env).await, 1, "exactly one PUT");
    // A quiet window: the annotation stays in place and costs nothing more.
    let (quiet, writes) = env.quiet_window(Duration::from_secs(3)).await;
    assert_eq!((quiet.total, writes), (0, 0), "nothing more once handled: {quiet:?}");
    let tested = find_condition(&st.conditions, TOKEN_VERIFIED).unwrap();
    assert_eq!(tested.reason, "TokenAccepted", "the new token is tested");

    // pause / resume.
    ok(&plugin(&ns, &["pause", "desk", "--wait"]));
    let paused = ok(&plugin(&ns, &["status", "desk"]));
    assert!(paused.contains("Paused:"), "{paused}");
    let refused = failed(&plugin(&ns, &["reauthenticate", "desk"]));
    assert!(refused.contains("is paused"), "{refused}");
    ok(&plugin(&ns, &["resume", "desk", "--wait"]));
    let ready = status(&env, "desk").await;
    assert!(find_condition(&ready.conditions, READY).is_some_and(|c| c.status == "True"));

    // abandon: asks (no terminal here: refuses without --yes), then a plain delete keeps the remote.
    let asked = failed(&plugin(&ns, &["abandon", "desk"]));
    assert!(asked.contains("pass --yes") && asked.contains(&format!("remote instance {id}")), "{asked}");
    ok(&plugin(&ns, &["abandon", "desk", "--yes"]));
    env.instances().delete("desk", &DeleteParams::default()).await.unwrap();
    support::eventually("the abandoned instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("desk").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_some(), "the remote instance stays");
    env.assert_no_secret_leaks(&[&before, &after]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn approve_carries_out_a_manual_plan_once() {
    let env = Env::start("plugin-approve").await;
    let mut spec = echo_spec();
    spec["reauthentication"] = json!("Manual");
    spec["configuration"] = json!({ "echo.greeting": "hello" });
    env.create_instance("desk", spec).await;
    env.wait_ready("desk").await;
    let ns = env.ns.clone();
    let nothing = failed(&plugin(&ns, &["approve", "desk", "--yes"]));
    assert!(nothing.contains("nothing to approve"), "{nothing}");

    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "configuration": { "echo.greeting": "hi" } })).await;
    support::eventually("the plan to show", Duration::from_secs(30), || async {
        status(&env, "desk").await.planned_action.map(|_| ())
    })
    .await;
    let shown = ok(&plugin(&ns, &["status", "desk"]));
    assert!(shown.contains("Plan:") && shown.contains("`echo.greeting`"), "{shown}");
    assert_eq!(puts(&env).await, 0, "0 PUTs before the approval");
    let asked = failed(&plugin(&ns, &["approve", "desk"]));
    assert!(asked.contains("pass --yes") && asked.contains("echo.greeting"), "shows the plan: {asked}");
    assert_eq!(puts(&env).await, 0);

    let done = ok(&plugin(&ns, &["approve", "desk", "--yes", "--wait"]));
    assert!(done.contains("re-authenticated"), "{done}");
    assert_eq!(puts(&env).await, 1, "exactly one PUT after");
    let (quiet, writes) = env.quiet_window(Duration::from_secs(3)).await;
    assert_eq!((quiet.total, writes), (0, 0), "nothing more: {quiet:?}");
    let st = status(&env, "desk").await;
    assert!(st.planned_action.is_none() && st.last_approved.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_plugin_says_why_when_it_cannot_help() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "plugin-alone").await;
    // No operator watches this namespace.
    let api: Api<ConnectorInstance> = Api::namespaced(client.clone(), &ns);
    let ci: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "lonely" }, "spec": echo_spec(),
    }))
    .unwrap();
    api.create(&Default::default(), &ci).await.unwrap();
    let unwatched = failed(&plugin(&ns, &["token", "lonely"]));
    assert!(unwatched.contains("the operator is not running, or does not watch namespace"), "{unwatched}");
    let waited = failed(&plugin(&ns, &["test", "lonely", "--wait", "--timeout", "2s"]));
    assert!(waited.contains("does not watch namespace"), "{waited}");
    let missing = failed(&plugin(&ns, &["status", "nobody"]));
    assert!(missing.contains("connectorinstances `nobody` not found"), "{missing}");

    // A user who may read instances but not annotate them: told which verb is missing.
    let role: k8s_openapi::api::rbac::v1::Role = serde_json::from_value(json!({
        "metadata": { "name": "instance-reader" },
        "rules": [{ "apiGroups": ["openconnectors.io"], "resources": ["connectorinstances"], "verbs": ["get", "list"] }],
    }))
    .unwrap();
    let user = format!("system:serviceaccount:{ns}:reader");
    let binding: k8s_openapi::api::rbac::v1::RoleBinding = serde_json::from_value(json!({
        "metadata": { "name": "instance-reader" },
        "roleRef": { "apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": "instance-reader" },
        "subjects": [{ "kind": "User", "name": user }],
    }))
    .unwrap();
    Api::namespaced(client.clone(), &ns).create(&Default::default(), &role).await.unwrap();
    Api::namespaced(client.clone(), &ns).create(&Default::default(), &binding).await.unwrap();
    let kubeconfig = control_plane().impersonating_kubeconfig(&user, &["system:authenticated"]).unwrap();
    let as_reader = |args: &[&str]| plugin_as(&kubeconfig, &ns, args);
    let refused = support::eventually("the Role to take effect", Duration::from_secs(10), || async {
        let output = as_reader(&["reauthenticate", "lonely"]);
        let stderr = String::from_utf8_lossy(&output.stderr).to_string();
        stderr.contains("you may not patch connectorinstances").then_some(stderr)
    })
    .await;
    assert!(refused.contains("kubectl auth can-i patch connectorinstances"), "{refused}");
    let secrets = failed(&as_reader(&["connectors", "zendesk", "--platform", "nothing"]));
    assert!(secrets.contains("you may not get connectorplatforms"), "{secrets}");
    api.delete("lonely", &DeleteParams::default()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connectors_and_render_from_the_command_line() {
    let env = Env::start("plugin-catalog").await;
    let ns = env.ns.clone();
    // The catalog, through the platform object's credentials: what to put in spec.configuration.
    let catalog = ok(&plugin(&ns, &["connectors", "zendesk", "--platform", support::operator::PLATFORM]));
    assert!(catalog.contains("Connector `zendesk`"), "{catalog}");
    assert!(
        catalog.lines().any(|l| l.trim_start().starts_with("password") && l.contains("yes")),
        "{catalog}"
    );
    assert!(catalog.lines().any(|l| l.trim_start().starts_with("zendesk.subdomain")), "{catalog}");
    let listed = ok(&plugin(&ns, &["connectors", "--platform", support::operator::PLATFORM]));
    assert!(listed.lines().any(|l| l.trim_start().starts_with("zendesk") && l.contains("basic")), "{listed}");
    assert!(listed.lines().any(|l| l.trim_start().starts_with("echo")), "{listed}");
    let unknown =
        failed(&plugin(&ns, &["connectors", "nosuchthing", "--platform", support::operator::PLATFORM]));
    assert!(unknown.contains("not known to the platform"), "{unknown}");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.writes, 0, "reading the catalog writes nothing: {calls:?}");

    // render: the operator's engine, offline, with a stand-in token.
    env.create_instance("desk", echo_spec()).await;
    env.wait_ready("desk").await;
    let dir = tempfile::tempdir().unwrap();
    let template = dir.path().join("template.yaml");
    std::fs::write(&template, "type: kubernetes.io/basic-auth\ndata:\n  password: \"{{ token }}\"\n  username: \"{{ namespace }}\"\n").unwrap();
    let rendered = ok(&plugin(&ns, &["render", "desk", "-f", template.to_str().unwrap()]));
    assert!(rendered.contains("(type kubernetes.io/basic-auth)"), "{rendered}");
    assert!(
        rendered.contains("  password: <token>") && rendered.contains(&format!("  username: {ns}")),
        "{rendered}"
    );
    let token = env.secret_token("desk-token").await.unwrap();
    assert!(!rendered.contains(&token), "never the real token");
    std::fs::write(&template, "data:\n  x: \"{{ token | nosuchfilter }}\"\n").unwrap();
    let refused = failed(&plugin(&ns, &["render", "desk", "-f", template.to_str().unwrap()]));
    assert!(refused.contains("nosuchfilter"), "{refused}");
}
