//! End-to-end: OAuth connectors and adoption, with the real operator binary, a real
//! kube-apiserver + etcd and the platform simulator (which plays the OAuth provider too). Each
//! test has its own namespace, simulator and operator.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use connector_operator::api::{
    ActionType, ConnectorInstance, ConnectorPlatform, READY, RECONCILING, find_condition,
};
use connector_operator::sim;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde_json::json;
use support::eventually;
use support::operator::{Env, PLATFORM};

const CLIENT_ID: &str = "sfdc-client-4711";
const CLIENT_SECRET: &str = "client-secret-9f8e7d6c5b";

/// The instance's Ready condition once it is False with `reason` for its generation: (message,
/// instance).
async fn wait_not_ready(env: &Env, name: &str, reason: &str) -> (String, ConnectorInstance) {
    eventually(&format!("{name} to say {reason}"), Duration::from_secs(30), || async {
        let ci = env.instances().get(name).await.ok()?;
        let status = ci.status.as_ref()?;
        let ready = find_condition(&status.conditions, READY)?;
        (ready.status == "False"
            && ready.reason == reason
            && status.observed_generation == ci.metadata.generation)
            .then(|| (ready.message.clone(), ci.clone()))
    })
    .await
}

fn sfdc_spec(oauth: serde_json::Value) -> serde_json::Value {
    json!({ "platformRef": { "name": PLATFORM }, "connector": "sfdc", "oauth": oauth })
}

/// Everything a user can read (log, Events, statuses) holds none of `secrets`.
async fn assert_none_shows(env: &Env, secrets: &[&str]) {
    let text = env.observable_text().await;
    assert!(text.len() > 1000, "the scanned text is substantial ({} bytes)", text.len());
    let mut all: Vec<String> = vec![sim::DEFAULT_USER_SECRET.into(), sim::DEFAULT_ORGANIZATION_SECRET.into()];
    all.extend(env.control.instances().await.unwrap().into_iter().map(|i| i.token));
    all.extend(secrets.iter().map(|s| s.to_string()));
    for secret in all {
        assert!(!text.contains(&secret), "a secret value appears in logs, events or status");
    }
}

/// A refresh token from a Secret: one POST with `externalAuthentication: initial`; a new refresh
/// token: one PUT; an expired one (the platform auto-disables the instance): the instance says
/// why and what to do, costs nothing while it waits, and recovers when the Secret is replaced.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refresh_token_creates_without_a_browser_rotates_and_recovers_from_expiry() {
    let env = Env::start("oauth-refresh").await;
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET), ("refreshToken", "refresh-token-one")])
        .await;
    let spec = sfdc_spec(json!({
        "clientId": CLIENT_ID,
        "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" },
        "scope": "api refresh_token",
        "callbackUrl": "https://connectors.example.com/oauth/callback",
        "refreshTokenSecretRef": { "name": "sfdc-oauth", "key": "refreshToken" },
    }));
    env.create_instance("crm", spec).await;
    let ci = env.wait_ready("crm").await;
    let id = ci.status.as_ref().unwrap().instance_id.unwrap();
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "{calls:?}");
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.external_authentication, "initial");
    assert_eq!(remote.configuration["oauth.user.refresh_token"], "refresh-token-one");
    assert_eq!(remote.configuration["oauth.api.key"], CLIENT_ID);
    assert_eq!(remote.configuration["oauth.scope"], "api refresh_token");
    assert_eq!(env.secret_token("crm-token").await.as_deref(), Some(remote.token.as_str()));

    // Rotation: exactly one PUT, and the new token reaches the Secret.
    env.control.reset_calls().await.unwrap();
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET), ("refreshToken", "refresh-token-two")])
        .await;
    let rotated = eventually("the re-authentication", Duration::from_secs(30), || async {
        let remote = env.control.instance(id).await.ok()??;
        (remote.configuration["oauth.user.refresh_token"] == "refresh-token-two").then_some(remote)
    })
    .await;
    env.wait_ready_with_token("crm", &rotated.token).await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 1, "{calls:?}");
    assert_eq!(calls.count("POST /instances"), 0, "{calls:?}");

    // The provider stops accepting the refresh token: the platform disables the instance.
    assert!(env.control.expire_refresh_token(id).await.unwrap());
    env.annotate("crm", json!({ "openconnectors.io/reconcile-requested-at": "look-now" })).await;
    let (message, _) = wait_not_ready(&env, "crm", "AuthorizationExpired").await;
    assert!(message.contains("sfdc-oauth") && message.contains("refreshToken"), "{message}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(10)).await;
    assert_eq!((calls.total, writes), (0, 0), "waiting for a new refresh token costs nothing: {calls:?}");
    assert_eq!(env.secret_token("crm-token").await.as_deref(), Some(rotated.token.as_str()), "token kept");

    // A new refresh token: re-authenticated and re-enabled, without a restart.
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET), ("refreshToken", "refresh-token-three")])
        .await;
    let recovered = eventually("the recovery", Duration::from_secs(30), || async {
        let remote = env.control.instance(id).await.ok()??;
        (remote.valid
            && !remote.disabled
            && remote.configuration["oauth.user.refresh_token"] == "refresh-token-three")
            .then_some(remote)
    })
    .await;
    env.wait_ready_with_token("crm", &recovered.token).await;

    assert_none_shows(
        &env,
        &[CLIENT_SECRET, "refresh-token-one", "refresh-token-two", "refresh-token-three"],
    )
    .await;
    env.instances().delete("crm", &DeleteParams::default()).await.unwrap();
    eventually("the instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("crm").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_none(), "the remote instance is deleted");
}

/// A free loopback port for the operator's callback (bound and released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// The published authorization of an instance that awaits one, once it differs from `previous`.
async fn wait_authorization(env: &Env, name: &str, reason: &str, previous: Option<&str>) -> (String, String) {
    eventually(&format!("{name} to publish an authorization URL"), Duration::from_secs(30), || async {
        let (message, ci) = wait_not_ready(env, name, reason).await;
        let authorization = ci.status?.authorization?;
        (Some(authorization.id.as_str()) != previous).then_some((authorization.url, message))
    })
    .await
}

/// Follows an authorization URL like a browser: the simulator's provider page redirects to the
/// operator's callback; returns (the callback URL visited, its status, its page).
async fn follow(url: &str) -> (String, u16, String) {
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(3)).build().unwrap();
    let response = browser.get(url).send().await.unwrap();
    let landed = response.url().to_string();
    let status = response.status().as_u16();
    (landed, status, response.text().await.unwrap())
}

/// The authorization-code flow: the URL in status, a person (a plain HTTP client) through the
/// provider to the operator's callback, Ready with one POST. A forged or replayed state changes
/// nothing; a configuration change asks for a new authorization instead of failing; a denial
/// says so. Waiting costs nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn code_flow_from_the_published_url_through_the_callback_to_ready() {
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let callback = format!("http://127.0.0.1:{port}/oauth/callback");
    // A state key of our own, so that the scan below can look for it.
    let key_dir = tempfile::tempdir().unwrap();
    let state_key = "state-key-0f1e2d3c4b5a69788796a5b4c3d2e1f0";
    let key_file = key_dir.path().join("key");
    std::fs::write(&key_file, state_key).unwrap();
    let key_path = key_file.to_string_lossy().into_owned();
    let env = Env::start_with(
        "oauth-code",
        &[
            "--oauth-callback-addr",
            &addr,
            "--oauth-callback-url",
            &callback,
            "--oauth-state-key-file",
            &key_path,
        ],
    )
    .await;
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET)]).await;
    let spec = sfdc_spec(json!({
        "clientId": CLIENT_ID,
        "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" },
        "scope": "api",
    }));
    env.create_instance("crm", spec).await;
    let (url, message) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;
    assert!(message.contains("status.authorization.url"), "{message}");
    let ci = env.instances().get("crm").await.unwrap();
    let status = ci.status.as_ref().unwrap();
    assert!(
        find_condition(&status.conditions, RECONCILING).is_some_and(|c| c.status == "True"),
        "kstatus: in progress"
    );
    assert_eq!(status.authorization.as_ref().unwrap().callback_url, callback);
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 0, "{calls:?}");
    assert_eq!(calls.count("POST /elements/{key}/oauth/url"), 1, "{calls:?}");
    assert!(
        env.events().await.iter().any(|e| e.reason.as_deref() == Some("AwaitingAuthorization")),
        "an Event tells the person"
    );
    let (calls, writes) = env.quiet_window(Duration::from_secs(10)).await;
    assert_eq!((calls.total, writes), (0, 0), "waiting for a person costs nothing: {calls:?}");

    // A forged state changes nothing.
    let forged = reqwest::get(format!("{callback}?code=stolen&state=forged.state")).await.unwrap();
    assert_eq!(forged.status().as_u16(), 400);
    assert!(forged.text().await.unwrap().contains("not issued"));

    // The person opens the URL and approves.
    let (landed, code_status, page) = follow(&url).await;
    assert!(landed.starts_with(&callback), "the provider redirects to the callback: {landed}");
    assert_eq!(code_status, 200, "{page}");
    assert!(page.contains("Authorization received"), "{page}");
    let ready = env.wait_ready("crm").await;
    let status = ready.status.as_ref().unwrap();
    assert!(status.authorization.is_none(), "the authorization is done");
    let id = status.instance_id.unwrap();
    let token = env.sim_token(id).await.unwrap();
    env.wait_ready_with_token("crm", &token).await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "{calls:?}");
    let grant = connector_operator::oauth::grant_secret_name(&ready.uid().unwrap());
    eventually("the grant Secret to go", Duration::from_secs(10), || async {
        env.secrets().get_opt(&grant).await.unwrap().is_none().then_some(())
    })
    .await;
    let code = reqwest::Url::parse(&landed)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == "code")
        .map(|(_, v)| v.to_string())
        .unwrap();

    // The same redirect again (a replay): refused, nothing changes.
    let replay = reqwest::get(&landed).await.unwrap();
    assert_eq!(replay.status().as_u16(), 409);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("POST /instances"), calls.count("PUT /instances/{id}")), (1, 0), "{calls:?}");
    env.wait_ready("crm").await;

    // A scope change needs a new authorization: said so, not a 400; a rename still patches.
    env.patch_spec("crm", json!({ "displayName": "CRM (prod)", "oauth": { "scope": "api refresh_token" } }))
        .await;
    let (second, message) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;
    assert_ne!(second, url, "a fresh URL");
    assert!(message.contains(&format!("remote instance {id}")), "{message}");
    assert_eq!(
        env.control.instance(id).await.unwrap().unwrap().name,
        "CRM (prod)",
        "renamed without approval"
    );
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 0, "{calls:?}");
    assert_eq!(env.secret_token("crm-token").await.as_deref(), Some(token.as_str()), "the old token stays");

    // The person denies: the status says so, with a new URL to try again.
    let (_, _, page) = follow(&format!("{second}&decision=deny")).await;
    assert!(page.contains("denied"), "{page}");
    let (third, message) = wait_authorization(&env, "crm", "AuthorizationDenied", None).await;
    assert!(message.contains("access_denied"), "{message}");
    assert_ne!(third, second);
    // Then approves: one PUT with the code, a new token.
    let (_, _, page) = follow(&third).await;
    assert!(page.contains("Authorization received"), "{page}");
    let reauthenticated = eventually("the re-authentication", Duration::from_secs(30), || async {
        let remote = env.control.instance(id).await.ok()??;
        (remote.configuration.get("oauth.scope").map(String::as_str) == Some("api refresh_token"))
            .then_some(remote)
    })
    .await;
    env.wait_ready_with_token("crm", &reauthenticated.token).await;
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("PUT /instances/{id}"), 1, "{calls:?}");

    assert_none_shows(&env, &[CLIENT_SECRET, &code, state_key]).await;
    env.instances().delete("crm", &DeleteParams::default()).await.unwrap();
    eventually("the instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("crm").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_none());
}

/// `reauthentication: Manual` on the code flow: a scope change asks nobody for anything until it
/// is approved (no authorization URL, Ready with the old token, quiet); the approval publishes
/// the URL, and the person's authorization then re-authenticates once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manual_reauthentication_on_the_code_flow_asks_for_a_browser_only_once_approved() {
    let port = free_port();
    let (addr, callback) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}/oauth/callback"));
    let env =
        Env::start_with("oauth-manual", &["--oauth-callback-addr", &addr, "--oauth-callback-url", &callback])
            .await;
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET)]).await;
    let mut spec = sfdc_spec(json!({
        "clientId": CLIENT_ID,
        "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" },
        "scope": "api",
    }));
    spec["reauthentication"] = json!("Manual");
    env.create_instance("crm", spec).await;
    // The first authorization is a create: never held.
    let (url, _) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;
    let (_, code_status, page) = follow(&url).await;
    assert_eq!(code_status, 200, "{page}");
    let ready = env.wait_ready("crm").await;
    let id = ready.status.as_ref().unwrap().instance_id.unwrap();
    let token = env.sim_token(id).await.unwrap();
    env.wait_ready_with_token("crm", &token).await;

    // A scope change: a plan, no URL, Ready with the old token, and nothing called or written.
    env.control.reset_calls().await.unwrap();
    env.patch_spec("crm", json!({ "oauth": { "scope": "api refresh_token" } })).await;
    let plan = eventually("the plan", Duration::from_secs(30), || async {
        let ci = env.instances().get("crm").await.ok()?;
        let status = ci.status.clone()?;
        let ready = find_condition(&status.conditions, "Ready")?;
        (ready.status == "True" && status.observed_generation == ci.metadata.generation)
            .then_some(status.planned_action?)
    })
    .await;
    assert_eq!(plan.changed_inputs, ["oauth.scope"]);
    let ci = env.instances().get("crm").await.unwrap();
    assert!(ci.status.as_ref().unwrap().authorization.is_none(), "no URL before the approval");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "a held plan costs nothing: {calls:?}");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /elements/{key}/oauth/url"), 0, "{calls:?}");
    assert_eq!(env.secret_token("crm-token").await.as_deref(), Some(token.as_str()));

    // Approved: now the URL, and the person's authorization re-authenticates once.
    env.annotate("crm", json!({ "openconnectors.io/approve": plan.approval })).await;
    let (second, _) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;
    assert_ne!(second, url);
    let (_, code_status, page) = follow(&second).await;
    assert_eq!(code_status, 200, "{page}");
    let remote = eventually("the re-authentication", Duration::from_secs(30), || async {
        let remote = env.control.instance(id).await.ok()??;
        (remote.configuration.get("oauth.scope").map(String::as_str) == Some("api refresh_token"))
            .then_some(remote)
    })
    .await;
    let ci = env.wait_ready_with_token("crm", &remote.token).await;
    let status = ci.status.as_ref().unwrap();
    assert!(status.planned_action.is_none(), "the plan is carried out");
    assert_eq!(status.last_approved.as_deref(), Some(plan.approval.as_str()));
    assert!(find_condition(&status.conditions, "ReAuthenticationPending").is_none_or(|c| c.status != "True"));
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("PUT /instances/{id}"), calls.count("POST /instances")), (1, 0), "{calls:?}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "quiet after: {calls:?}");
    env.instances().delete("crm", &DeleteParams::default()).await.unwrap();
    eventually("the instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("crm").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_none());
    env.assert_no_secret_leaks(&[CLIENT_SECRET]).await;
}

/// Issue 25, finding 7: a flood of requests to the callback cannot keep a genuine one out. A state
/// this operator did not issue is refused at once (400) before any limit is spent, with no API
/// call and no log line; replays of one instance's valid link are limited per instance (429, no
/// log line); meanwhile another instance's genuine callback is served and it goes Ready. A client
/// that never sends its headers is disconnected.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_callback_requests_cannot_keep_a_genuine_one_out() {
    let port = free_port();
    let (addr, callback) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}/oauth/callback"));
    let env =
        Env::start_with("oauth-flood", &["--oauth-callback-addr", &addr, "--oauth-callback-url", &callback])
            .await;
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET)]).await;
    let code_flow =
        json!({ "clientId": CLIENT_ID, "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" } });
    for name in ["replayed", "genuine"] {
        env.create_instance(name, sfdc_spec(code_flow.clone())).await;
    }
    let (replayed_url, _) = wait_authorization(&env, "replayed", "AwaitingAuthorization", None).await;
    let (genuine_url, _) = wait_authorization(&env, "genuine", "AwaitingAuthorization", None).await;
    let client = reqwest::Client::new();

    // Forged states: every one refused for what it is, none limited, none logged.
    let logged_before = env.operator.logs().matches("OAuth callback").count();
    let started = std::time::Instant::now();
    let mut statuses = std::collections::BTreeMap::<u16, usize>::new();
    for i in 0..300 {
        let response = client.get(format!("{callback}?code=c{i}&state=forged.{i}")).send().await.unwrap();
        *statuses.entry(response.status().as_u16()).or_default() += 1;
    }
    eprintln!("300 forged requests in {:.2} s: {statuses:?}", started.elapsed().as_secs_f64());
    assert_eq!(statuses.get(&400).copied(), Some(300), "{statuses:?}");

    // One instance's link, answered and then replayed 30 times at once: limited per instance.
    let (landed, status, page) = follow(&replayed_url).await;
    assert_eq!(status, 200, "{page}");
    let mut replays = std::collections::BTreeMap::<u16, usize>::new();
    for _ in 0..30 {
        let response = client.get(&landed).send().await.unwrap();
        *replays.entry(response.status().as_u16()).or_default() += 1;
    }
    eprintln!("30 replays of a valid link: {replays:?}");
    assert!(replays.get(&429).copied().unwrap_or(0) >= 25, "replays hit their instance's limit: {replays:?}");
    assert_eq!(replays.values().sum::<usize>(), 30);

    // The genuine callback of the other instance, during all this: served, and it goes Ready.
    let (_, status, page) = follow(&genuine_url).await;
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("Authorization received"), "{page}");
    env.wait_ready("genuine").await;
    env.wait_ready("replayed").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let logged = env.operator.logs().matches("OAuth callback").count() - logged_before;
    assert!(logged <= 2 + 5, "only served valid requests leave a log line: {logged}");

    // Headers that never come: the connection is closed by the server.
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut slow = tokio::net::TcpStream::connect(&addr).await.unwrap();
    slow.write_all(b"GET /oauth/callback?state=x HTTP/1.1\r\nHost: a\r\n").await.unwrap();
    let mut buf = [0u8; 256];
    let closed = tokio::time::timeout(Duration::from_secs(20), slow.read(&mut buf)).await;
    assert!(closed.is_ok(), "the server closes a connection whose headers do not arrive");
}

/// A code from a Secret instead of the callback: used once; a new authorization asks for a new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_code_from_a_secret_is_used_once() {
    let env = Env::start("oauth-code-secret").await;
    let redirect = "https://connectors.example.com/oauth/callback";
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET)]).await;
    let spec = sfdc_spec(json!({
        "clientId": CLIENT_ID,
        "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" },
        "callbackUrl": redirect,
        "codeSecretRef": { "name": "sfdc-code", "key": "code" },
    }));
    env.create_instance("crm", spec).await;
    let (_, message) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;
    assert!(message.contains("sfdc-code"), "{message}");
    let code = env.control.issue_code(CLIENT_ID, redirect).await.unwrap();
    env.put_secret("sfdc-code", &[("code", &code)]).await;
    let ready = env.wait_ready("crm").await;
    let id = ready.status.as_ref().unwrap().instance_id.unwrap();
    // A change that needs a new authorization: the used code is not sent again.
    env.patch_spec("crm", json!({ "oauth": { "scope": "api" } })).await;
    let (_, message) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;
    assert!(message.contains(&format!("remote instance {id}")), "{message}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");
    let code = env.control.issue_code(CLIENT_ID, redirect).await.unwrap();
    env.put_secret("sfdc-code", &[("code", &code)]).await;
    env.wait_ready("crm").await;
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(remote.configuration.get("oauth.scope").map(String::as_str), Some("api"));
    assert_none_shows(&env, &[CLIENT_SECRET, &code]).await;
}

async fn set_adoption(env: &Env, policy: &str) {
    let platforms: Api<ConnectorPlatform> = Api::namespaced(env.client.clone(), &env.ns);
    let patch = json!({ "spec": { "adoption": policy } });
    platforms.patch(PLATFORM, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
}

/// Adoption by id: refused (token not read) unless the platform allows it; then no POST, the
/// Secret holds the remote token, the ownership tag is added, and deleting the resource leaves
/// the remote instance (Orphan by default). An instance owned by another resource is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adoption_takes_over_by_id_only_where_allowed_and_never_posts() {
    let env = Env::start("adopt").await;
    // An instance created elsewhere, through the platform's API.
    let client = env.platform_client();
    let made = env.create_remote("made by hand", &["by-hand"]).await;
    let id = made.id;
    let mut spec =
        json!({ "platformRef": { "name": PLATFORM }, "connector": "echo", "adopt": { "instanceId": id } });
    env.control.reset_calls().await.unwrap();
    env.create_instance("taken", spec.clone()).await;
    let (reason, message) = env.wait_stalled("taken").await;
    assert_eq!(reason, "AdoptionNotAllowed", "{message}");
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("GET /instances/{id}"), 0, "the token is not read: {calls:?}");
    assert!(env.secrets().get_opt("taken-token").await.unwrap().is_none());
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");

    // The platform's owner allows it: taken over, no POST.
    set_adoption(&env, "Allow").await;
    env.annotate("taken", json!({ "openconnectors.io/reconcile-requested-at": "allowed" })).await;
    let ready = env.wait_ready("taken").await;
    assert_eq!(ready.status.as_ref().unwrap().instance_id, Some(id));
    let last_action = ready.status.as_ref().unwrap().last_action.as_ref().map(|a| a.type_);
    assert_eq!(last_action, Some(ActionType::Adopted), "the tag PATCH does not hide the adoption");
    let remote = env.control.instance(id).await.unwrap().unwrap();
    assert_eq!(env.secret_token("taken-token").await.as_deref(), Some(remote.token.as_str()));
    assert!(
        remote.tags.contains(&connector_operator::api::ownership_tag(&ready.uid().unwrap())),
        "{:?}",
        remote.tags
    );
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("POST /instances"), calls.count("PUT /instances/{id}")), (0, 0), "{calls:?}");

    // Another resource adopting the same instance is refused; so is the wrong connector.
    env.create_instance("second", spec.clone()).await;
    let (reason, message) = env.wait_stalled("second").await;
    assert_eq!(reason, "AdoptionConflict", "{message}");
    spec["connector"] = json!("hubspot");
    env.create_instance("wrong-kind", spec).await;
    let (reason, message) = env.wait_stalled("wrong-kind").await;
    assert_eq!(reason, "AdoptionConnectorMismatch", "{message}");

    // The conflict's advice, followed: the first adopter goes (Orphan: the remote instance and its
    // tag stay, so the conflict stays), the tag is removed on the platform, a reconcile is asked
    // for: the second takes it over.
    let (_, advice) = env.wait_stalled("second").await;
    let own_tag = connector_operator::api::ownership_tag(&ready.uid().unwrap());
    assert!(advice.contains(&format!("remove the tag `{own_tag}`")), "{advice}");
    env.instances().delete("taken", &DeleteParams::default()).await.unwrap();
    eventually("the first adopter to go", Duration::from_secs(30), || async {
        env.instances().get_opt("taken").await.unwrap().is_none().then_some(())
    })
    .await;
    env.control.reset_calls().await.unwrap();
    env.annotate("second", json!({ "openconnectors.io/reconcile-requested-at": "orphaned" })).await;
    eventually("the remote instance to be read again", Duration::from_secs(30), || async {
        (env.control.calls().await.ok()?.count("GET /instances/{id}") > 0).then_some(())
    })
    .await;
    let (reason, _) = env.wait_stalled("second").await;
    assert_eq!(reason, "AdoptionConflict", "an orphaned instance keeps its tag");
    client.patch_instance(id, "made by hand", &["by-hand".to_string()]).await.unwrap();
    env.annotate("second", json!({ "openconnectors.io/reconcile-requested-at": "untagged" })).await;
    let second = env.wait_ready("second").await;
    let status = second.status.as_ref().unwrap();
    assert_eq!(status.instance_id, Some(id));
    assert_eq!(status.last_action.as_ref().map(|a| a.type_), Some(ActionType::Adopted));

    // Deleting the adopter leaves the remote instance; the refused one goes at once.
    for name in ["second", "wrong-kind"] {
        env.instances().delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("all three to go", Duration::from_secs(30), || async {
        env.instances().list(&Default::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_some(), "Orphan by default for an adopted instance");
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("POST /instances"), calls.count("DELETE /instances/{id}")), (0, 0), "{calls:?}");
}

/// The OAuth inputs a user gets wrong, many at once on one platform: an OAuth connector without
/// `spec.oauth`, and the code flow without any callback URL. Each says what to fix, costs nothing
/// while it waits (no platform call, no Kubernetes write), goes Ready or awaits a person once
/// fixed, and a plain delete removes it at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth_mistakes_say_what_to_fix_cost_nothing_and_recover() {
    let env = Env::start("oauth-mistakes").await;
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET), ("refreshToken", "refresh-token-x")])
        .await;
    let no_oauth: Vec<String> = (0..10).map(|i| format!("no-oauth-{i}")).collect();
    let no_callback: Vec<String> = (0..10).map(|i| format!("no-callback-{i}")).collect();
    for name in &no_oauth {
        env.create_instance(name, json!({ "platformRef": { "name": PLATFORM }, "connector": "sfdc" })).await;
    }
    let code_flow =
        json!({ "clientId": CLIENT_ID, "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" } });
    for name in &no_callback {
        env.create_instance(name, sfdc_spec(code_flow.clone())).await;
    }
    for name in &no_oauth {
        let (reason, message) = env.wait_stalled(name).await;
        assert_eq!(reason, "OAuthRequired", "{message}");
        assert!(message.contains("spec.oauth"), "{message}");
    }
    for name in &no_callback {
        let (reason, message) = env.wait_stalled(name).await;
        assert_eq!(reason, "OAuthCallbackUrlMissing", "{message}");
        assert!(message.contains("spec.oauth.callbackUrl"), "{message}");
    }
    let (calls, writes) = env.quiet_window(Duration::from_secs(10)).await;
    assert_eq!((calls.total, writes), (0, 0), "20 mistaken instances cost nothing: {calls:?}");

    // Fixed: a refresh token for one kind, a callback URL for the other.
    env.patch_spec(
        &no_oauth[0],
        json!({ "oauth": {
            "clientId": CLIENT_ID, "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" },
            "callbackUrl": "https://connectors.example.com/oauth/callback",
            "refreshTokenSecretRef": { "name": "sfdc-oauth", "key": "refreshToken" } } }),
    )
    .await;
    env.wait_ready(&no_oauth[0]).await;
    env.patch_spec(
        &no_callback[0],
        json!({ "oauth": { "callbackUrl": "https://connectors.example.com/oauth/callback" } }),
    )
    .await;
    wait_authorization(&env, &no_callback[0], "AwaitingAuthorization", None).await;

    // A plain delete removes every one at once (the unfixed ones never reached the platform).
    for name in no_oauth.iter().chain(&no_callback) {
        env.instances().delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("all of them to go", Duration::from_secs(30), || async {
        env.instances().list(&Default::default()).await.unwrap().items.is_empty().then_some(())
    })
    .await;
    assert!(env.control.instances().await.unwrap().is_empty(), "the fixed one's remote instance is deleted");
    assert_none_shows(&env, &[CLIENT_SECRET, "refresh-token-x"]).await;
}

/// Issue 25, finding 2: two resources adopting one remote instance at once. The platform ends
/// with exactly one ownership tag; the resource it names is Ready, the other is Stalled
/// (`AdoptionConflict` if it saw the other's tag first, `OwnershipLost` if it was tagged over)
/// and never tags it back: no PATCH goes back and forth. Both delete plainly and the remote
/// instance stays (adopted instances are orphaned by default).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_concurrent_adopters_end_with_one_owner_and_no_tag_fight() {
    let env = Env::start("adopt-race").await;
    set_adoption(&env, "Allow").await;
    let made = env.create_remote("shared by hand", &["by-hand"]).await;
    let id = made.id;
    let spec =
        json!({ "platformRef": { "name": PLATFORM }, "connector": "echo", "adopt": { "instanceId": id } });
    let (first, second) =
        tokio::join!(env.create_instance("first", spec.clone()), env.create_instance("second", spec.clone()));
    let uid = |ci: &ConnectorInstance| connector_operator::api::ownership_tag(&ci.uid().unwrap());
    let (first_tag, second_tag) = (uid(&first), uid(&second));
    // Both have run once; then both are asked to look again (the loser of a race that both read
    // back in time sees the winner's tag now).
    eventually("both to have adopted or refused", Duration::from_secs(30), || async {
        let mut settled = 0;
        for name in ["first", "second"] {
            let status = env.instances().get(name).await.ok()?.status?;
            settled += usize::from(find_condition(&status.conditions, READY).is_some_and(|c| {
                c.status == "True" || ["AdoptionConflict", "OwnershipLost"].contains(&c.reason.as_str())
            }));
        }
        (settled == 2).then_some(())
    })
    .await;
    env.control.reset_calls().await.unwrap();
    for name in ["first", "second"] {
        env.annotate(name, json!({ "openconnectors.io/reconcile-requested-at": "look-again" })).await;
    }
    eventually("both to read it again", Duration::from_secs(30), || async {
        (env.control.calls().await.ok()?.count("GET /instances/{id}") >= 2).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;

    let remote = env.control.instance(id).await.unwrap().unwrap();
    let owners: Vec<&String> = remote.tags.iter().filter(|t| t.starts_with("k8s-uid-")).collect();
    assert_eq!(owners.len(), 1, "exactly one ownership tag: {:?}", remote.tags);
    let (winner, loser) = if *owners[0] == first_tag {
        ("first", "second")
    } else {
        assert_eq!(*owners[0], second_tag);
        ("second", "first")
    };
    env.wait_ready(winner).await;
    let (reason, message) = env.wait_stalled(loser).await;
    assert!(["AdoptionConflict", "OwnershipLost"].contains(&reason.as_str()), "{reason}: {message}");
    eprintln!("winner {winner}, loser {loser}: {reason}");
    let (calls, writes) = env.quiet_window(Duration::from_secs(10)).await;
    assert_eq!(calls.count("PATCH /instances/{id}"), 0, "no tag fight: {calls:?}");
    assert_eq!((calls.total, writes), (0, 0), "{calls:?}");

    for name in ["first", "second"] {
        env.instances().delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("both to go", Duration::from_secs(30), || async {
        env.instances().list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_some(), "the remote instance stays");
    let calls = env.control.calls().await.unwrap();
    assert_eq!((calls.count("POST /instances"), calls.count("DELETE /instances/{id}")), (0, 0), "{calls:?}");
}

/// Issue 25, finding 5: two replicas share a state key file, which is rotated while an
/// authorization URL is published. Both reload it; the URL signed with the old key is still
/// accepted by either replica (here: the one that did not publish it), the instance goes Ready,
/// and a URL published after the rotation is signed with the new key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rotated_state_key_keeps_published_urls_valid_on_every_replica() {
    let (port, other_port) = (free_port(), free_port());
    let addr = format!("127.0.0.1:{port}");
    let other_addr = format!("127.0.0.1:{other_port}");
    let callback = format!("http://127.0.0.1:{port}/oauth/callback");
    let key_dir = tempfile::tempdir().unwrap();
    let key_file = key_dir.path().join("key");
    std::fs::write(&key_file, "first-state-key-00112233445566778899aabbccdd").unwrap();
    let key_path = key_file.to_string_lossy().into_owned();
    let lease = format!("oauth-keys-{:08x}", fastrand::u32(..));
    let common = [
        "--leader-elect",
        "--leader-election-lease-name",
        &lease,
        "--oauth-callback-url",
        &callback,
        "--oauth-state-key-sign-delay",
        "0s",
    ];
    let first: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--oauth-callback-addr", &addr, "--oauth-state-key-file", &key_path])
        .collect();
    let second: Vec<&str> = common
        .iter()
        .copied()
        .chain(["--oauth-callback-addr", &other_addr, "--oauth-state-key-file", &key_path])
        .collect();
    let env = Env::start_with("oauth-keys", &first).await;
    let standby = support::operator::Operator::start(&env.ns, &second);
    env.put_secret("sfdc-oauth", &[("clientSecret", CLIENT_SECRET)]).await;
    let code_flow =
        json!({ "clientId": CLIENT_ID, "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" } });
    env.create_instance("crm", sfdc_spec(code_flow.clone())).await;
    let (url, _) = wait_authorization(&env, "crm", "AwaitingAuthorization", None).await;

    // The key rotates (a new Secret rendered): both replicas take it within seconds.
    std::fs::write(&key_file, "second-state-key-ffeeddccbbaa99887766554433").unwrap();
    for replica in [&env.operator, &standby] {
        eventually("the replica to reload the key", Duration::from_secs(30), || async {
            replica.logs().contains("the OAuth state key changed").then_some(())
        })
        .await;
    }
    // The provider sends the browser back; the answer reaches the other replica.
    let browser = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let provider = browser.get(&url).send().await.unwrap();
    let landing = provider.headers()["location"].to_str().unwrap().to_string();
    assert!(landing.starts_with(&callback), "{landing}");
    let elsewhere = landing.replacen(&format!(":{port}/"), &format!(":{other_port}/"), 1);
    let answer = browser.get(&elsewhere).send().await.unwrap();
    assert_eq!(
        answer.status().as_u16(),
        200,
        "the old key's state is accepted: {}",
        answer.text().await.unwrap()
    );
    env.wait_ready("crm").await;

    // A URL published now is signed with the new key only: a process that knows only the old one
    // refuses it.
    env.create_instance("crm-2", sfdc_spec(code_flow)).await;
    let (url, _) = wait_authorization(&env, "crm-2", "AwaitingAuthorization", None).await;
    let state = url.split("state=").nth(1).unwrap().split('&').next().unwrap().to_string();
    let state = state.replace("%2E", ".");
    let old =
        connector_operator::oauth::StateKey::from_bytes(b"first-state-key-00112233445566778899aabbccdd");
    let new = connector_operator::oauth::StateKey::from_bytes(b"second-state-key-ffeeddccbbaa99887766554433");
    let now = 0;
    assert!(connector_operator::oauth::AuthorizationRequest::verify(&state, &new, now).is_ok(), "{state}");
    assert!(connector_operator::oauth::AuthorizationRequest::verify(&state, &old, now).is_err());
    drop(standby);
}
