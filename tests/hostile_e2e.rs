//! End-to-end: a corpus of malformed and hostile manifests against the real API server, the real
//! operator binary and the platform simulator. Every case is either refused by the CRD schema on
//! create (the API server's message names the field) or ends `Stalled=True` with a message that
//! names the problem — with no panic, no hot loop and no platform write.
//!
//! The local API server (v1.34 by default) applies the CRDs' OpenAPI validation (types, enums,
//! patterns, lengths, required) and their CEL rules (`x-kubernetes-validations`); a test proves
//! each CEL rule refused on create and on update with its own message. The operator checks what
//! the CEL rules say at run time too, for objects written before a rule existed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::time::Duration;

use connector_operator::api::{
    ClusterConnectorPlatform, ConnectorInstance, ConnectorPlatform, READY, STALLED, find_condition,
};
use connector_operator::sim::{self, SimConfig};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::ResourceExt;
use kube::api::{Api, ApiResource, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use serde_json::{Value, json};
use support::eventually;
use support::operator::{CREDENTIALS, Env, PLATFORM};

const GROUP_VERSION: &str = "openconnectors.io/v1alpha1";

fn resource(kind: &str) -> ApiResource {
    match kind {
        "ConnectorInstance" => ApiResource::erase::<ConnectorInstance>(&()),
        "ConnectorPlatform" => ApiResource::erase::<ConnectorPlatform>(&()),
        "ClusterConnectorPlatform" => ApiResource::erase::<ClusterConnectorPlatform>(&()),
        other => panic!("no such kind {other}"),
    }
}

fn dynamic_api(client: &kube::Client, kind: &str, ns: &str) -> Api<DynamicObject> {
    let ar = resource(kind);
    if kind == "ClusterConnectorPlatform" {
        Api::all_with(client.clone(), &ar)
    } else {
        Api::namespaced_with(client.clone(), ns, &ar)
    }
}

/// Creates an object from raw JSON (wrong types included), as `kubectl create` would.
async fn create_raw(
    client: &kube::Client,
    ns: &str,
    kind: &str,
    name: &str,
    spec: Value,
) -> Result<(), kube::Error> {
    let object: DynamicObject = serde_json::from_value(json!({
        "apiVersion": GROUP_VERSION, "kind": kind, "metadata": { "name": name }, "spec": spec,
    }))
    .unwrap();
    dynamic_api(client, kind, ns).create(&PostParams::default(), &object).await.map(|_| ())
}

/// Creates a Secret with raw bytes.
async fn put_raw_secret(client: &kube::Client, ns: &str, name: &str, data: &[(&str, Vec<u8>)]) {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.data = Some(data.iter().map(|(k, v)| (k.to_string(), ByteString(v.clone()))).collect());
    Api::<Secret>::namespaced(client.clone(), ns).create(&PostParams::default(), &secret).await.unwrap();
}

fn platform_spec(base_url: &str) -> Value {
    json!({ "baseUrl": base_url, "insecureAllowHttp": true, "credentialsSecretRef": { "name": CREDENTIALS } })
}

fn instance_on(platform: &str) -> Value {
    json!({ "platformRef": { "name": platform }, "connector": "echo" })
}

fn instance_on_cluster(platform: &str) -> Value {
    json!({ "platformRef": { "kind": "ClusterConnectorPlatform", "name": platform }, "connector": "echo" })
}

fn with(mut spec: Value, patch: Value) -> Value {
    if let (Value::Object(spec), Value::Object(patch)) = (&mut spec, patch) {
        spec.extend(patch);
    }
    spec
}

/// Manifests the CRD schema must refuse: (kind, name, spec, field the API server's message names).
fn schema_cases() -> Vec<(&'static str, String, Value, &'static str)> {
    let echo = instance_on(PLATFORM);
    let one_mib = "x".repeat(1024 * 1024);
    let tags: Vec<String> = (0..51).map(|i| format!("tag-{i}")).collect();
    let events =
        |patch: Value| with(echo.clone(), json!({ "events": with(json!({ "enabled": true }), patch) }));
    let from = |source: Value| with(echo.clone(), json!({ "configurationFrom": [source] }));
    let ci = "ConnectorInstance";
    let cp = "ConnectorPlatform";
    let ccp = "ClusterConnectorPlatform";
    let good_platform = json!({ "baseUrl": "https://platform.example/elements/api-v2", "credentialsSecretRef": { "name": "creds" } });
    vec![
        (ci, "no-connector".into(), json!({ "platformRef": { "name": PLATFORM } }), "spec.connector"),
        (ci, "no-platform-ref".into(), json!({ "connector": "echo" }), "spec.platformRef"),
        (ci, "empty-connector".into(), with(echo.clone(), json!({ "connector": "" })), "spec.connector"),
        (ci, "number-connector".into(), with(echo.clone(), json!({ "connector": 42 })), "spec.connector"),
        (ci, "spec-is-a-string".into(), json!("connector: echo"), "spec"),
        (
            ci,
            "platform-kind".into(),
            with(echo.clone(), json!({ "platformRef": { "kind": "Foo", "name": "x" } })),
            "spec.platformRef.kind",
        ),
        (
            ci,
            "platform-name".into(),
            with(echo.clone(), json!({ "platformRef": { "name": "../../etc" } })),
            "spec.platformRef.name",
        ),
        (ci, "tags-51".into(), with(echo.clone(), json!({ "tags": tags })), "spec.tags"),
        (ci, "tags-string".into(), with(echo.clone(), json!({ "tags": "a,b" })), "spec.tags"),
        (ci, "tag-empty".into(), with(echo.clone(), json!({ "tags": [""] })), "spec.tags"),
        (ci, "tag-control".into(), with(echo.clone(), json!({ "tags": ["ok\u{0}\u{1b}[31m"] })), "spec.tags"),
        (
            ci,
            "display-markup".into(),
            with(echo.clone(), json!({ "displayName": "<a href=\"#\" onclick=\"x()\">desk</a>" })),
            "spec.displayName",
        ),
        (
            ci,
            "display-control".into(),
            with(echo.clone(), json!({ "displayName": "desk\n\u{1b}[2Jowned" })),
            "spec.displayName",
        ),
        (
            ci,
            "display-long".into(),
            with(echo.clone(), json!({ "displayName": "d".repeat(300) })),
            "spec.displayName",
        ),
        (
            ci,
            "config-number".into(),
            with(echo.clone(), json!({ "configuration": { "port": 5 } })),
            "spec.configuration",
        ),
        (
            ci,
            "config-list".into(),
            with(echo.clone(), json!({ "configuration": ["a=b"] })),
            "spec.configuration",
        ),
        (
            ci,
            "config-1mib".into(),
            with(echo.clone(), json!({ "configuration": { "big": one_mib } })),
            "spec.configuration",
        ),
        (ci, "enabled-string".into(), with(echo.clone(), json!({ "enabled": "yes" })), "spec.enabled"),
        (
            ci,
            "events-vendor".into(),
            events(json!({ "vendorType": "carrier-pigeon" })),
            "spec.events.vendorType",
        ),
        (ci, "events-url".into(), events(json!({ "callbackUrl": "not a url" })), "spec.events.callbackUrl"),
        (
            ci,
            "events-js-url".into(),
            events(json!({ "callbackUrl": "javascript:alert(1)" })),
            "spec.events.callbackUrl",
        ),
        (
            ci,
            "events-poll-0".into(),
            events(json!({ "pollerRefreshIntervalMinutes": 0 })),
            "spec.events.pollerRefreshIntervalMinutes",
        ),
        (
            ci,
            "events-no-enabled".into(),
            with(echo.clone(), json!({ "events": { "vendorType": "polling" } })),
            "spec.events.enabled",
        ),
        (
            ci,
            "resync-abc".into(),
            with(echo.clone(), json!({ "resyncInterval": "abc" })),
            "spec.resyncInterval",
        ),
        (
            ci,
            "resync-number".into(),
            with(echo.clone(), json!({ "resyncInterval": 10 })),
            "spec.resyncInterval",
        ),
        (
            ci,
            "deletion-policy".into(),
            with(echo.clone(), json!({ "deletionPolicy": "Shred" })),
            "spec.deletionPolicy",
        ),
        (
            ci,
            "token-name".into(),
            with(echo.clone(), json!({ "tokenSecret": { "name": "Not_A/Name" } })),
            "spec.tokenSecret.name",
        ),
        (
            ci,
            "from-name".into(),
            from(json!({ "key": "k", "secretKeyRef": { "name": "../x", "key": "k" } })),
            "spec.configurationFrom",
        ),
        (
            ci,
            "from-key".into(),
            from(json!({ "key": "k", "secretKeyRef": { "name": "s", "key": "a/b" } })),
            "spec.configurationFrom",
        ),
        (ci, "ünïcode-näme".into(), echo.clone(), "metadata.name"),
        (
            cp,
            "ftp-url".into(),
            with(good_platform.clone(), json!({ "baseUrl": "ftp://files.example.com/api" })),
            "spec.baseUrl",
        ),
        (
            cp,
            "garbage-url".into(),
            with(good_platform.clone(), json!({ "baseUrl": "garbage" })),
            "spec.baseUrl",
        ),
        (cp, "number-url".into(), with(good_platform.clone(), json!({ "baseUrl": 12345 })), "spec.baseUrl"),
        (
            cp,
            "no-credentials".into(),
            json!({ "baseUrl": "https://platform.example/elements/api-v2" }),
            "spec.credentialsSecretRef",
        ),
        (
            cp,
            "empty-credentials".into(),
            with(good_platform.clone(), json!({ "credentialsSecretRef": { "name": "" } })),
            "spec.credentialsSecretRef.name",
        ),
        (
            cp,
            "rps-0".into(),
            with(good_platform.clone(), json!({ "requestsPerSecond": 0 })),
            "spec.requestsPerSecond",
        ),
        (
            cp,
            "rps-string".into(),
            with(good_platform.clone(), json!({ "requestsPerSecond": "fast" })),
            "spec.requestsPerSecond",
        ),
        (
            cp,
            "creds-namespace".into(),
            with(
                good_platform.clone(),
                json!({ "credentialsSecretRef": { "name": "c", "namespace": "Other_Tenant" } }),
            ),
            "spec.credentialsSecretRef.namespace",
        ),
        (
            cp,
            "creds-key".into(),
            with(
                good_platform.clone(),
                json!({ "credentialsSecretRef": { "name": "c", "userSecretKey": "user secret\n" } }),
            ),
            "spec.credentialsSecretRef.userSecretKey",
        ),
        (
            cp,
            "ca-name".into(),
            with(good_platform.clone(), json!({ "caBundleSecretRef": { "name": "" } })),
            "spec.caBundleSecretRef.name",
        ),
        (
            ccp,
            "selector-string".into(),
            with(good_platform.clone(), json!({ "namespaceSelector": "all" })),
            "spec.namespaceSelector",
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_schema_refuses_malformed_manifests_naming_the_field() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "schema").await;
    let mut failures = Vec::new();
    let cases = schema_cases();
    for (kind, name, spec, field) in &cases {
        // Cluster-scoped names are shared by all tests: make them unique.
        let name = if *kind == "ClusterConnectorPlatform" { format!("{ns}-{name}") } else { name.clone() };
        match create_raw(&client, &ns, kind, &name, spec.clone()).await {
            Ok(()) => failures.push(format!("{kind} {name}: accepted")),
            Err(kube::Error::Api(status)) if status.code == 422 || status.code == 400 => {
                if !status.message.contains(field) {
                    failures
                        .push(format!("{kind} {name}: message does not name {field}: {}", status.message));
                }
            }
            Err(other) => failures.push(format!("{kind} {name}: unexpected error {other}")),
        }
    }
    assert!(failures.is_empty(), "{} of {} cases:\n{}", failures.len(), cases.len(), failures.join("\n"));
}

/// Every `(rule, message)` of the `x-kubernetes-validations` in the generated CRDs.
fn cel_rules() -> Vec<(String, String)> {
    fn walk(value: &Value, found: &mut Vec<(String, String)>) {
        match value {
            Value::Object(map) => {
                for rule in
                    map.get("x-kubernetes-validations").and_then(Value::as_array).into_iter().flatten()
                {
                    let text = |key: &str| rule[key].as_str().unwrap_or_default().to_string();
                    found.push((text("rule"), text("message")));
                }
                map.values().for_each(|v| walk(v, found));
            }
            Value::Array(items) => items.iter().for_each(|v| walk(v, found)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    for crd in connector_operator::api::crd::all() {
        walk(&serde_json::to_value(crd).unwrap(), &mut found);
    }
    found
}

/// The CRD's rule on `spec.tags`: the prefixes of the operator's own tags are refused.
const RESERVED_TAGS_RULE: &str =
    "self.all(t, !t.startsWith('k8s-uid-') && !t.startsWith('k8s-ref-') && !t.startsWith('k8s-cluster-'))";

/// The API server enforces every CEL rule of the CRDs, on create and on update (a merge patch, as
/// `kubectl apply` sends), and refuses with the rule's own message; ordinary updates still pass.
/// A rule in the CRDs without a case here fails the test.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_server_enforces_every_cel_rule_on_create_and_update() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "cel").await;
    let api = dynamic_api(&client, "ConnectorInstance", &ns);
    let echo = instance_on(PLATFORM);
    let from = |source: Value| json!({ "configurationFrom": [source] });
    let both = json!({ "key": "k", "secretKeyRef": { "name": "login", "key": "password" }, "secretRef": { "name": "login" } });
    let neither = json!({ "prefix": "x." });
    let no_key = json!({ "secretKeyRef": { "name": "login", "key": "password" } });
    let valid_from = json!({ "key": "password", "secretKeyRef": { "name": "login", "key": "password" } });
    let two_grants = json!({ "oauth": {
        "clientId": "client", "clientSecretRef": { "name": "oauth", "key": "secret" },
        "refreshTokenSecretRef": { "name": "oauth", "key": "refresh" }, "codeSecretRef": { "name": "oauth", "key": "code" },
    } });
    let restart = |target: Value| json!({ "tokenSecret": { "rolloutRestart": [target] } });
    let both_targets =
        json!({ "kind": "Deployment", "name": "web", "selector": { "matchLabels": { "app": "web" } } });
    let no_target = json!({ "kind": "Deployment" });
    // (rule, spec patch refused on create or None for a transition rule, spec patch refused on update)
    let cases: Vec<(&str, Option<Value>, Value)> = vec![
        ("self == oldSelf", None, json!({ "connector": "zendesk" })),
        (
            "self.kind == oldSelf.kind && self.name == oldSelf.name",
            None,
            json!({ "platformRef": { "name": "another-platform" } }),
        ),
        ("has(self.secretKeyRef) != has(self.secretRef)", Some(from(both.clone())), from(both)),
        ("has(self.secretKeyRef) != has(self.secretRef)", Some(from(neither.clone())), from(neither)),
        ("!has(self.secretKeyRef) || has(self.key)", Some(from(no_key.clone())), from(no_key)),
        (
            RESERVED_TAGS_RULE,
            Some(json!({ "tags": ["k8s-uid-0b7e6a2c-another-resource"] })),
            json!({ "tags": ["team-a", "k8s-uid-0b7e6a2c-another-resource"] }),
        ),
        (
            RESERVED_TAGS_RULE,
            Some(json!({ "tags": ["k8s-ref-0123456789abcdef0123456789abcdef"] })),
            json!({ "tags": ["team-a", "k8s-cluster-another-cluster"] }),
        ),
        (
            "!(has(self.refreshTokenSecretRef) && has(self.codeSecretRef))",
            Some(two_grants.clone()),
            two_grants,
        ),
        ("has(self.name) != has(self.selector)", Some(restart(both_targets.clone())), restart(both_targets)),
        ("has(self.name) != has(self.selector)", Some(restart(no_target.clone())), restart(no_target)),
    ];
    let rules = cel_rules();
    let untested: Vec<&String> =
        rules.iter().map(|(rule, _)| rule).filter(|rule| !cases.iter().any(|(r, ..)| r == rule)).collect();
    assert!(untested.is_empty(), "CEL rules without a case: {untested:?}");

    let refused = |what: String, result: Result<(), kube::Error>, message: &str| match result {
        Err(kube::Error::Api(status)) if status.code == 422 && status.message.contains(message) => {
            eprintln!("{what}: refused: {}", status.message);
            None
        }
        Err(other) => Some(format!("{what}: expected 422 with {message:?}, got {other}")),
        Ok(()) => Some(format!("{what}: accepted")),
    };
    let mut failures = Vec::new();
    for (index, (rule, create, update)) in cases.iter().enumerate() {
        let message = &rules.iter().find(|(r, _)| r == rule).unwrap().1;
        if let Some(patch) = create {
            let result = create_raw(
                &client,
                &ns,
                "ConnectorInstance",
                &format!("create-{index}"),
                with(echo.clone(), patch.clone()),
            )
            .await;
            failures.extend(refused(format!("create breaking `{rule}`"), result, message));
        }
        // A valid object, an ordinary update of it, then the update that breaks the rule.
        let name = format!("update-{index}");
        create_raw(&client, &ns, "ConnectorInstance", &name, with(echo.clone(), from(valid_from.clone())))
            .await
            .unwrap();
        let merge = |spec: Value| Patch::Merge(json!({ "spec": spec }));
        api.patch(&name, &PatchParams::default(), &merge(json!({ "displayName": "still valid" })))
            .await
            .unwrap();
        let result = api.patch(&name, &PatchParams::default(), &merge(update.clone())).await.map(|_| ());
        failures.extend(refused(format!("update breaking `{rule}`"), result, message));
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));
}

/// An instance that must stall: (name, spec, reason, what the message must name).
struct Stall {
    name: String,
    spec: Value,
    reason: &'static str,
    mentions: Vec<String>,
}

fn stall(name: &str, spec: Value, reason: &'static str, mentions: &[&str]) -> Stall {
    Stall { name: name.into(), spec, reason, mentions: mentions.iter().map(|m| m.to_string()).collect() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_references_and_values_stall_without_platform_calls_panics_or_hot_loops() {
    let env = Env::start("hostile").await;
    let client = env.client.clone();
    let ns = env.ns.clone();
    // A second simulator that the plain-http platforms point at: it must never hear from them.
    let untouched = sim::start(SimConfig::default()).await.unwrap();
    let untouched_calls = untouched.control().unwrap();
    // Another tenant, with a Secret of its own.
    let tenant = support::namespace(&client, "tenant-b").await;
    put_raw_secret(&client, &tenant, "tenant-secret", &[("password", b"tenant-b-password".to_vec())]).await;
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "hostile-test": ns.clone() } } });
    namespaces.patch(&ns, &PatchParams::default(), &Patch::Merge(label)).await.unwrap();

    // Secrets the cases refer to.
    put_raw_secret(
        &client,
        &ns,
        "creds-no-org",
        &[("userSecret", sim::DEFAULT_USER_SECRET.as_bytes().to_vec())],
    )
    .await;
    put_raw_secret(
        &client,
        &ns,
        "creds-unicode",
        &[("userSecret", "пароль-\u{202e}\n".as_bytes().to_vec()), ("organizationSecret", b"org".to_vec())],
    )
    .await;
    put_raw_secret(
        &client,
        &ns,
        "garbage-ca",
        &[("ca.crt", b"-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".to_vec())],
    )
    .await;
    put_raw_secret(&client, &ns, "binary", &[("password", vec![0xff, 0xfe, 0x00, 0xc3])]).await;
    put_raw_secret(&client, &ns, "huge", &[("password", vec![b'x'; 1_000_000])]).await;
    put_raw_secret(&client, &ns, "login", &[("password", b"pw".to_vec())]).await;
    env.put_secret("someone-elses", &[("token", "not-the-operators")]).await;

    // Platforms the cases refer to.
    let https_closed = "https://127.0.0.1:1/elements/api-v2";
    let mut plain = platform_spec(&untouched.base_url());
    plain.as_object_mut().unwrap().remove("insecureAllowHttp");
    let namespaced: Vec<(&str, Value)> = vec![
        ("plain-http", plain.clone()),
        ("no-host", with(platform_spec("https://"), json!({ "insecureAllowHttp": false }))),
        ("userinfo-url", platform_spec("https://admin:hunter2@127.0.0.1:1/elements/api-v2")),
        ("space-url", platform_spec("https://exa mple.com/elements/api-v2")),
        (
            "cross-ns-creds",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": "tenant-secret", "namespace": tenant } }),
        ),
        (
            "cross-ns-ca",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": CREDENTIALS },
                                "caBundleSecretRef": { "name": "tenant-secret", "namespace": tenant } }),
        ),
        (
            "garbage-ca",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": CREDENTIALS },
                               "caBundleSecretRef": { "name": "garbage-ca" } }),
        ),
        (
            "absent-ca",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": CREDENTIALS },
                              "caBundleSecretRef": { "name": "no-such-ca" } }),
        ),
        (
            "creds-absent",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": "no-such-creds" } }),
        ),
        (
            "creds-no-org",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": "creds-no-org" } }),
        ),
        (
            "creds-unicode",
            json!({ "baseUrl": https_closed, "credentialsSecretRef": { "name": "creds-unicode" } }),
        ),
    ];
    for (name, spec) in &namespaced {
        create_raw(&client, &ns, "ConnectorPlatform", name, spec.clone()).await.unwrap();
    }
    let cluster = |suffix: &str| format!("{ns}-{suffix}");
    let ours = json!({ "matchLabels": { "hostile-test": ns.clone() } });
    let theirs = json!({ "matchLabels": { "kubernetes.io/metadata.name": tenant.clone() } });
    let cluster_platforms: Vec<(String, Value)> = vec![
        (
            cluster("no-selector"),
            json!({ "baseUrl": env.sim.base_url(), "insecureAllowHttp": true,
                                          "credentialsSecretRef": { "name": CREDENTIALS, "namespace": ns } }),
        ),
        (
            cluster("no-creds-ns"),
            json!({ "baseUrl": env.sim.base_url(), "insecureAllowHttp": true,
                                          "credentialsSecretRef": { "name": CREDENTIALS }, "namespaceSelector": ours }),
        ),
        (
            cluster("other-tenant"),
            json!({ "baseUrl": env.sim.base_url(), "insecureAllowHttp": true,
                                           "credentialsSecretRef": { "name": "tenant-secret", "namespace": tenant },
                                           "namespaceSelector": theirs }),
        ),
        (
            cluster("plain-http"),
            with(
                plain.clone(),
                json!({ "credentialsSecretRef": { "name": CREDENTIALS, "namespace": ns },
                                                           "namespaceSelector": ours }),
            ),
        ),
    ];
    for (name, spec) in &cluster_platforms {
        create_raw(&client, &ns, "ClusterConnectorPlatform", name, spec.clone()).await.unwrap();
    }

    let echo = instance_on(PLATFORM);
    let from = |source: Value| with(echo.clone(), json!({ "configurationFrom": [source] }));
    let cases = vec![
        stall("platform-missing", instance_on("no-such-platform"), "PlatformNotFound", &["no-such-platform"]),
        stall(
            "plain-http",
            instance_on("plain-http"),
            "InsecurePlatformUrl",
            &["plain-http", "insecureAllowHttp"],
        ),
        stall(
            "plain-http-cluster",
            instance_on_cluster(&cluster("plain-http")),
            "InsecurePlatformUrl",
            &["plain http"],
        ),
        stall("no-host", instance_on("no-host"), "InvalidPlatformUrl", &["no-host", "spec.baseUrl"]),
        stall("userinfo-url", instance_on("userinfo-url"), "InvalidPlatformUrl", &["user info"]),
        stall("space-url", instance_on("space-url"), "InvalidPlatformUrl", &["not a valid URL"]),
        stall(
            "cross-ns-creds",
            instance_on("cross-ns-creds"),
            "CrossNamespaceReference",
            &[&tenant, "credentialsSecretRef"],
        ),
        stall(
            "cross-ns-ca",
            instance_on("cross-ns-ca"),
            "CrossNamespaceReference",
            &[&tenant, "caBundleSecretRef"],
        ),
        stall("garbage-ca", instance_on("garbage-ca"), "CaBundleInvalid", &["garbage-ca", "ca.crt", "PEM"]),
        stall("absent-ca", instance_on("absent-ca"), "CaBundleNotFound", &["no-such-ca"]),
        stall("creds-absent", instance_on("creds-absent"), "CredentialsNotFound", &["no-such-creds"]),
        stall(
            "creds-no-org",
            instance_on("creds-no-org"),
            "SecretKeyMissing",
            &["creds-no-org", "organizationSecret"],
        ),
        stall(
            "creds-unicode",
            instance_on("creds-unicode"),
            "CredentialsInvalid",
            &["creds-unicode", "userSecret", "HTTP header"],
        ),
        stall(
            "cluster-no-selector",
            instance_on_cluster(&cluster("no-selector")),
            "NamespaceNotAllowed",
            &["allows no namespace"],
        ),
        stall(
            "cluster-no-creds-ns",
            instance_on_cluster(&cluster("no-creds-ns")),
            "CredentialsNamespaceMissing",
            &["credentialsSecretRef.namespace"],
        ),
        stall(
            "cluster-other-tenant",
            instance_on_cluster(&cluster("other-tenant")),
            "NamespaceNotAllowed",
            &["does not match"],
        ),
        stall(
            "unknown-connector",
            with(echo.clone(), json!({ "connector": "no-such-connector" })),
            "UnknownConnector",
            &["no-such-connector"],
        ),
        stall(
            "missing-config",
            with(echo.clone(), json!({ "connector": "zendesk", "configuration": { "username": "u" } })),
            "ConfigurationMissing",
            &["zendesk.subdomain"],
        ),
        stall(
            "resync-0s",
            with(echo.clone(), json!({ "resyncInterval": "0s" })),
            "InvalidResyncInterval",
            &["0s", "10s"],
        ),
        stall(
            "resync-1ms",
            with(echo.clone(), json!({ "resyncInterval": "1ms" })),
            "InvalidResyncInterval",
            &["1ms"],
        ),
        stall(
            "resync-huge",
            with(echo.clone(), json!({ "resyncInterval": "9999999h" })),
            "InvalidResyncInterval",
            &["9999999h", "168h"],
        ),
        stall(
            "duplicate-key",
            with(
                from(json!({ "key": "password", "secretKeyRef": { "name": "login", "key": "password" } })),
                json!({ "configuration": { "password": "inline" } }),
            ),
            "DuplicateConfigurationKey",
            &["password", "spec.configurationFrom[0]"],
        ),
        stall(
            "non-utf8",
            from(json!({ "key": "password", "secretKeyRef": { "name": "binary", "key": "password" } })),
            "SecretValueInvalid",
            &["binary", "UTF-8"],
        ),
        stall(
            "huge-value",
            from(json!({ "key": "password", "secretKeyRef": { "name": "huge", "key": "password" } })),
            "ConfigurationValueTooLarge",
            &["password", "1000000 bytes"],
        ),
        stall(
            "control-key",
            with(echo.clone(), json!({ "configuration": { "bad\u{7}key\u{202e}": "v" } })),
            "InvalidConfiguration",
            &["control characters", "bad\\u{7}key"],
        ),
        stall(
            "empty-key",
            with(echo.clone(), json!({ "configuration": { "": "v" } })),
            "InvalidConfiguration",
            &["empty configuration key"],
        ),
        stall(
            "prefix-control",
            from(json!({ "secretRef": { "name": "login" }, "prefix": "x\n" })),
            "InvalidConfiguration",
            &["control characters"],
        ),
        stall(
            "other-tenant-secret",
            from(
                json!({ "key": "password", "secretKeyRef": { "name": "tenant-secret", "key": "password", "namespace": tenant } }),
            ),
            "ConfigurationSecretNotFound",
            &[&format!("{ns}/tenant-secret")],
        ),
        stall(
            "wrong-key",
            from(json!({ "key": "password", "secretKeyRef": { "name": "login", "key": "passwort" } })),
            "SecretKeyMissing",
            &["login", "passwort"],
        ),
        stall(
            "foreign-token",
            with(echo.clone(), json!({ "tokenSecret": { "name": "someone-elses" } })),
            "SecretConflict",
            &["someone-elses"],
        ),
    ];
    for case in &cases {
        create_raw(&client, &ns, "ConnectorInstance", &case.name, case.spec.clone()).await.unwrap();
    }
    let mut failures = Vec::new();
    for case in &cases {
        let api = env.instances();
        let name = case.name.clone();
        // Stalled, or (after the deadline) whatever the instance says.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(45);
        let outcome = loop {
            let seen = api.get(&name).await.ok().and_then(|ci| {
                let status = ci.status.clone()?;
                let current = status.observed_generation == ci.metadata.generation;
                let stalled = find_condition(&status.conditions, STALLED).filter(|c| c.status == "True");
                match stalled {
                    Some(c) if current => Some(Ok((c.reason.clone(), c.message.clone()))),
                    _ => Some(Err(format!("{:?}", status.conditions))),
                }
            });
            match seen {
                Some(Ok(stalled)) => break Ok(stalled),
                seen if tokio::time::Instant::now() >= deadline => {
                    break Err(seen.and_then(Result::err).unwrap_or_else(|| "no status".into()));
                }
                _ => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        match outcome {
            Ok((reason, message)) => {
                if reason != case.reason {
                    failures
                        .push(format!("{}: reason {reason}, expected {}: {message}", case.name, case.reason));
                }
                for mention in &case.mentions {
                    if !message.contains(mention.as_str()) {
                        failures.push(format!("{}: message does not name `{mention}`: {message}", case.name));
                    }
                }
                for secret in ["tenant-b-password", "hunter2", "пароль", sim::DEFAULT_USER_SECRET] {
                    if message.contains(secret) {
                        failures.push(format!("{}: a secret value in the message", case.name));
                    }
                }
            }
            Err(conditions) => failures.push(format!("{}: not Stalled: {conditions}", case.name)),
        }
    }
    assert!(failures.is_empty(), "{} problems:\n{}", failures.len(), failures.join("\n"));

    // The platform objects say what is wrong with them too, without calling anything.
    let platforms: Api<ConnectorPlatform> = Api::namespaced(client.clone(), &ns);
    let (reason, message) =
        eventually("the plain-http platform to be refused", Duration::from_secs(30), || {
            let platforms = platforms.clone();
            async move {
                let platform = platforms.get("plain-http").await.ok()?;
                let ready = find_condition(&platform.status?.conditions, READY)?.clone();
                (ready.status == "False").then_some((ready.reason, ready.message))
            }
        })
        .await;
    assert_eq!(reason, "InsecurePlatformUrl", "{message}");

    // Quiet: no hot loop, no write, no call to the plain-http target, no panic.
    let reconciles =
        || env.operator.metric("connector_operator_reconciles_total", "kind=\"ConnectorInstance\"");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = reconciles().await;
    let window = Duration::from_secs(10);
    tokio::time::sleep(window).await;
    let during = reconciles().await - before;
    eprintln!("{during} reconciles of {} stalled instances in {window:?}", cases.len());
    assert!(
        during <= 3.0,
        "no hot loop: {during} reconciles of {} stalled instances in {window:?}",
        cases.len()
    );
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.writes, 0, "no platform writes for hostile input: {calls:?}");
    let plain_calls = untouched_calls.calls().await.unwrap();
    assert_eq!(plain_calls.total, 0, "plain http is refused before any connection: {plain_calls:?}");
    let logs = env.operator.logs();
    assert!(!logs.contains("panicked"), "the operator panicked");
    for secret in ["tenant-b-password", "hunter2", "пароль"] {
        assert!(!env.observable_text().await.contains(secret), "a secret value in logs, events or status");
    }

    // None of them could have created anything remote, so none carries the finalizer: each goes
    // at once with a plain delete, no annotation.
    let api = env.instances();
    for case in &cases {
        let ci = api.get(&case.name).await.unwrap();
        assert!(ci.finalizers().is_empty(), "{}: a finalizer without anything remote", case.name);
        api.delete(&case.name, &DeleteParams::default()).await.unwrap();
    }
    eventually("every hostile instance to be gone", Duration::from_secs(10), || {
        let api = api.clone();
        async move { api.list(&Default::default()).await.unwrap().items.is_empty().then_some(()) }
    })
    .await;

    let cluster_api: Api<ClusterConnectorPlatform> = Api::all(client.clone());
    for (name, _) in &cluster_platforms {
        cluster_api.delete(name, &DeleteParams::default()).await.unwrap();
    }
}

/// Names the API server accepts for a ConnectorInstance but not for its default token Secret:
/// `<name>-token` beyond 253 characters, and the `openconnectors.io/connector-instance` label value
/// beyond 63. Regression test: the operator used to create the remote instance and then retry the
/// refused Secret write for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_instance_names_are_handled_before_any_platform_write() {
    let env = Env::start("longname").await;
    let label_sized = format!("l{}", "n".repeat(63));
    let too_long = format!("l{}", "n".repeat(249));
    env.create_instance(&label_sized, instance_on(PLATFORM)).await;
    env.create_instance(&too_long, instance_on(PLATFORM)).await;
    env.wait_ready(&label_sized).await;
    let (_, message) = env.wait_stalled(&too_long).await;
    assert!(message.contains("spec.tokenSecret.name"), "says how to fix it: {message}");
    assert!(message.len() < 1000, "a short message: {} bytes", message.len());
    let calls = env.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "only the first instance is created: {calls:?}");
}

/// The chart's memory limit for the operator container (`resources.limits.memory`).
const CHART_MEMORY_LIMIT: u64 = 256 * 1024 * 1024;

/// Issue 25, finding 1: a namespace editor's platform that answers the tag search with endless
/// pages just under the size cap, for eight instances at once, while the same process serves
/// another namespace. (A new instance is created without a search once its platform is scanned;
/// the attacker forces searches by creating its instances with the operator's finalizer, as after
/// a crash, and one new instance, whose platform's scan by cluster tag gets endless pages too: the
/// scan gives up within its bounds and the instance searches.) The operator's peak
/// memory stays under the chart's limit, the other namespace's instance goes Ready during the
/// attack, and each attacking instance says what is wrong. Deleting them needs the tag search
/// too, which their platform never ends: they say so (`DeletionBlocked`), and
/// `openconnectors.io/abandon` releases them. Then nothing more is called or written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_platform_endless_pages_cost_bounded_memory_and_spare_other_tenants() {
    use connector_operator::platform::{MAX_RESPONSE_BYTES, MAX_SEARCH_BYTES};
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let victim = support::namespace(&client, "tenant").await;
    let attacker = support::namespace(&client, "attacker").await;
    let good = sim::start(SimConfig::default()).await.unwrap();
    let hostile = sim::start(SimConfig::default()).await.unwrap();
    let hostile_control = hostile.control().unwrap();
    let page = MAX_RESPONSE_BYTES - 64 * 1024;
    hostile_control
        .set_faults(&sim::Faults { hostile_search_page_bytes: Some(page), ..Default::default() })
        .await
        .unwrap();
    support::operator::create_platform(&client, &victim, &good.base_url()).await;
    support::operator::create_platform(&client, &attacker, &hostile.base_url()).await;
    let list = format!("{victim},{attacker}");
    let operator =
        support::operator::Operator::start(&victim, &["--namespace", &list, "--cluster-id", "shared"]);
    let before = operator_rss_after_start(&operator).await;

    let attacking: Api<ConnectorInstance> = Api::namespaced(client.clone(), &attacker);
    // A new instance: its platform's first scan (by the cluster tag) gets endless pages too.
    let scanned: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": GROUP_VERSION, "kind": "ConnectorInstance", "metadata": { "name": "flood-new" },
        "spec": { "platformRef": { "name": PLATFORM }, "connector": "echo" },
    }))
    .unwrap();
    attacking.create(&PostParams::default(), &scanned).await.unwrap();
    let names: Vec<String> = (0..8).map(|i| format!("flood-{i}")).collect();
    for name in &names {
        let ci: ConnectorInstance = serde_json::from_value(json!({
            "apiVersion": GROUP_VERSION, "kind": "ConnectorInstance",
            "metadata": { "name": name, "finalizers": ["openconnectors.io/remote-instance"] },
            "spec": { "platformRef": { "name": PLATFORM }, "connector": "echo" },
        }))
        .unwrap();
        attacking.create(&PostParams::default(), &ci).await.unwrap();
    }
    // The attack is under way (pages being served) when the other tenant creates its instance.
    eventually("the hostile platform to serve pages", Duration::from_secs(30), || async {
        (hostile_control.calls().await.ok()?.count("GET /instances") >= 8).then_some(())
    })
    .await;
    let tenant: Api<ConnectorInstance> = Api::namespaced(client.clone(), &victim);
    let ci: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": GROUP_VERSION, "kind": "ConnectorInstance", "metadata": { "name": "desk" },
        "spec": { "platformRef": { "name": PLATFORM }, "connector": "echo" },
    }))
    .unwrap();
    tenant.create(&PostParams::default(), &ci).await.unwrap();
    support::operator::wait_ready_in(&tenant, "desk", Duration::from_secs(60)).await;

    // Each attacking instance says why it is stuck: its platform does not end its search.
    for name in &names {
        let message = eventually("the attacking instance to say why", Duration::from_secs(60), || async {
            let status = attacking.get(name).await.ok()?.status?;
            let ready = find_condition(&status.conditions, READY)?;
            (ready.reason == "PlatformProtocolError").then(|| ready.message.clone())
        })
        .await;
        assert!(message.contains("does not seem to filter by tag"), "{message}");
    }
    // The scan gave up within its bounds; the new instance searched meanwhile, and says why it
    // is stuck like the others. It created nothing (no finalizer): a plain delete removes it.
    eventually("the scan to give up", Duration::from_secs(60), || async {
        operator.logs().contains("could not scan the platform for this cluster's instances").then_some(())
    })
    .await;
    let stuck = eventually("the new attacking instance to say why", Duration::from_secs(60), || async {
        let status = attacking.get("flood-new").await.ok()?.status?;
        let ready = find_condition(&status.conditions, READY)?;
        (ready.reason == "PlatformProtocolError").then(|| ready.message.clone())
    })
    .await;
    assert!(stuck.contains("does not seem to filter by tag"), "{stuck}");
    attacking.delete("flood-new", &DeleteParams::default()).await.unwrap();
    eventually("the new attacking instance to go", Duration::from_secs(30), || async {
        attacking.get_opt("flood-new").await.ok()?.is_none().then_some(())
    })
    .await;
    let calls = hostile_control.calls().await.unwrap();
    let served = calls.count("GET /instances") as u64 * page as u64;
    let peak = operator.peak_rss_bytes();
    eprintln!(
        "hostile platform: {} pages served ({} MiB), operator peak RSS {} MiB (at start {} MiB, limit {} MiB)",
        calls.count("GET /instances"),
        served / (1024 * 1024),
        peak / (1024 * 1024),
        before / (1024 * 1024),
        CHART_MEMORY_LIMIT / (1024 * 1024)
    );
    assert!(
        served >= 4 * MAX_SEARCH_BYTES as u64,
        "the attack was real: {} MiB served",
        served / (1024 * 1024)
    );
    assert!(peak < CHART_MEMORY_LIMIT, "peak RSS {} MiB over the chart's limit", peak / (1024 * 1024));

    // Deleted: the search for what they own never ends, which they say; abandoned, they go, and
    // then the hostile platform hears nothing more and nothing is written for them.
    for name in &names {
        attacking.delete(name, &DeleteParams::default()).await.unwrap();
    }
    eventually("the deletion to say why it waits", Duration::from_secs(60), || async {
        let status = attacking.get(&names[0]).await.ok()?.status?;
        let ready = find_condition(&status.conditions, READY)?;
        ready.message.contains("does not seem to filter by tag").then_some(())
    })
    .await;
    for name in &names {
        let patch = json!({ "metadata": { "annotations": { "openconnectors.io/abandon": "true" } } });
        attacking.patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }
    eventually("the attacking instances to go", Duration::from_secs(30), || async {
        attacking.list(&Default::default()).await.ok()?.items.is_empty().then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    hostile_control.reset_calls().await.unwrap();
    let writes_before = support::operator::operator_writes(&attacker);
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(hostile_control.calls().await.unwrap().total, 0, "the hostile platform is left alone");
    assert_eq!(support::operator::operator_writes(&attacker) - writes_before, 0);
    let desk = tenant.get("desk").await.unwrap();
    let ready = find_condition(&desk.status.as_ref().unwrap().conditions, READY).unwrap();
    assert_eq!(ready.status, "True", "the other tenant stays Ready");
    drop(operator);
}

/// The operator's resident memory once it is up (its probes answer).
async fn operator_rss_after_start(operator: &support::operator::Operator) -> u64 {
    eventually("the operator to be ready", Duration::from_secs(30), || async {
        if !operator.logs().contains("bound=") {
            return None;
        }
        (operator.get("readyz").await.0 == 200).then_some(())
    })
    .await;
    operator.peak_rss_bytes()
}

/// Issue 25, finding 1: a platform whose host is not among the allowed platform hosts (here
/// `localhost`, the same simulator under a name the administrator did not allow) is never
/// called: the platform object and its instances are Stalled `PlatformHostNotAllowed`, nothing
/// is called or written while they wait, a base URL on an allowed host makes the instance Ready
/// without a restart, and a plain delete removes one that never got further.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_platform_outside_the_allowed_hosts_is_never_called() {
    let env = Env::start("host-not-allowed").await;
    let platforms: Api<ConnectorPlatform> = Api::namespaced(env.client.clone(), &env.ns);
    let allowed_url = env.sim.base_url();
    let elsewhere = allowed_url.replace("127.0.0.1", "localhost");
    assert_ne!(allowed_url, elsewhere);
    let patch = json!({ "spec": { "baseUrl": elsewhere } });
    platforms.patch(PLATFORM, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    env.control.reset_calls().await.unwrap();
    for name in ["desk", "doomed"] {
        env.create_instance(name, support::operator::echo_spec()).await;
    }
    for name in ["desk", "doomed"] {
        let (reason, message) = env.wait_stalled(name).await;
        assert_eq!(reason, "PlatformHostNotAllowed", "{message}");
        assert!(message.contains("`localhost`") && message.contains("--allowed-platform-hosts"), "{message}");
    }
    let platform_stalled = eventually("the platform to say why", Duration::from_secs(30), || async {
        let status = platforms.get(PLATFORM).await.ok()?.status?;
        find_condition(&status.conditions, STALLED).filter(|c| c.reason == "PlatformHostNotAllowed").cloned()
    })
    .await;
    assert_eq!(platform_stalled.status, "True");
    assert_eq!(env.control.calls().await.unwrap().total, 0, "not one call to a host not allowed");
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "waiting costs nothing");

    // Deleted as it is: no finalizer, nothing remote.
    env.instances().delete("doomed", &DeleteParams::default()).await.unwrap();
    eventually("the stalled instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("doomed").await.ok()?.is_none().then_some(())
    })
    .await;
    // Fixed: the platform on an allowed host.
    let patch = json!({ "spec": { "baseUrl": allowed_url } });
    platforms.patch(PLATFORM, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    env.wait_ready("desk").await;
    assert_eq!(env.control.calls().await.unwrap().count("POST /instances"), 1);
}

/// Issue 25, finding 11: a platform that echoes what it was sent (a password from a Secret, the
/// organisation's credentials) in its error message: the status, the Events and the log show the
/// message with those values `[redacted]`; once the platform accepts it, the instance goes Ready
/// when asked again, and deletes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn platform_messages_are_shown_without_the_secret_values_they_echo() {
    let env = Env::start("echoed-secrets").await;
    let password = "hunter2-correct-horse";
    env.put_secret("zendesk-login", &[("password", password)]).await;
    let echo = format!(
        "login failed for agent@example.com with password {password} (Authorization: User {}, Organization {})",
        sim::DEFAULT_USER_SECRET,
        sim::DEFAULT_ORGANIZATION_SECRET
    );
    // Every create is refused so (a Secret event may start a second pass at once).
    env.control
        .fail_next(sim::FailNext::status(100, 400).only("POST /instances").saying(echo))
        .await
        .unwrap();
    env.create_instance("desk", support::operator::zendesk_spec()).await;
    let (reason, message) = env.wait_stalled("desk").await;
    assert_eq!(reason, "PlatformRejected", "{message}");
    assert!(message.contains("login failed for agent@example.com with password [redacted]"), "{message}");
    assert!(!message.contains(password), "{message}");
    env.assert_no_secret_leaks(&[password]).await;
    let (calls, writes) = env.quiet_window(Duration::from_secs(5)).await;
    assert_eq!((calls.total, writes), (0, 0), "a refused create waits for a change: {calls:?}");
    env.control.clear_faults().await.unwrap();
    env.annotate("desk", json!({ "openconnectors.io/reconcile-requested-at": "again" })).await;
    env.wait_ready("desk").await;
    env.assert_no_secret_leaks(&[password]).await;
    env.instances().delete("desk", &DeleteParams::default()).await.unwrap();
    eventually("the instance to go", Duration::from_secs(30), || async {
        env.instances().get_opt("desk").await.ok()?.is_none().then_some(())
    })
    .await;
}
