//! The Helm chart (`charts/connector-operator`): lint, render, server-side dry run against the
//! local API server, and least privilege proven end to end — the real operator binary runs as the
//! chart's ServiceAccount (impersonated) with exactly the chart's RBAC, through a
//! ConnectorInstance's whole life.
//!
//! helm v3.18.0 and kubectl 1.33 come from `tests/cluster/helm.sh` (run when they are missing).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::collections::BTreeSet;

use futures::StreamExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use connector_operator::api::{ConnectorInstance, RECONCILING, find_condition};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use serde::Deserialize;
use serde_json::{Value, json};
use support::eventually;
use support::operator::{Env, echo_spec, zendesk_spec};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/connector-operator");
const HELM_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/helm.sh");
/// The local control plane's version, without the `v` (what `--kube-version` tells helm: `helm
/// template` does not ask a cluster, and helm 3.18 assumes 1.33, below the chart's range).
fn kube_version() -> String {
    connector_operator::local::kube_version().trim_start_matches('v').to_string()
}
/// The command that makes the chart's CRDs copies of the generated ones.
const SYNC_CRDS: &str = "cp crds/*.yaml charts/connector-operator/crd-manifests/";

/// The directory holding helm and kubectl; runs `tests/cluster/helm.sh` once when they are missing.
fn tools() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let cached = connector_operator::local::cache_dir().join("helm-v3.18.0");
        if cached.join("helm").is_file() && cached.join("kubectl").is_file() {
            return cached;
        }
        eprintln!("helm/kubectl missing: running {HELM_SCRIPT} (first run only)");
        let output = Command::new("bash").arg(HELM_SCRIPT).stderr(Stdio::inherit()).output().unwrap();
        assert!(output.status.success(), "{HELM_SCRIPT} failed with {}", output.status);
        let stdout = String::from_utf8(output.stdout).unwrap();
        PathBuf::from(stdout.lines().last().expect("helm.sh prints the directory last").trim())
    })
}

/// Runs a tool; `Ok(stdout)` or `Err(stderr)`.
fn run(tool: &str, args: &[&str], stdin: Option<&str>) -> Result<String, String> {
    let mut command = Command::new(tools().join(tool));
    command.args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    if tool == "kubectl" {
        command.env("KUBECONFIG", support::control_plane().kubeconfig_path());
    }
    command.stdin(if stdin.is_some() { Stdio::piped() } else { Stdio::null() });
    let mut child = command.spawn().unwrap();
    if let Some(input) = stdin {
        use std::io::Write as _;
        child.stdin.take().unwrap().write_all(input.as_bytes()).unwrap();
    }
    let output = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    if output.status.success() { Ok(stdout) } else { Err(format!("{tool} {args:?}: {stderr}{stdout}")) }
}

/// The chart's `appVersion` (the image tag it renders by default).
fn app_version() -> String {
    std::fs::read_to_string(Path::new(CHART).join("Chart.yaml"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("appVersion:").map(|v| v.trim().trim_matches('"').to_string()))
        .unwrap()
}

/// Named sets of `--set` values; `NS` stands for the test's namespace.
const VALUE_SETS: &[(&str, &[&str])] = &[
    ("defaults", &[]),
    ("namespaced RBAC", &["rbac.namespaced=true", "watchNamespaces={NS}"]),
    (
        "everything on",
        &[
            "replicaCount=2",
            "leaderElection.enabled=true",
            "metrics.serviceMonitor.enabled=true",
            "metrics.prometheusRule.enabled=true",
            "metrics.dashboard.enabled=true",
            "networkPolicy.enabled=true",
            "rbac.namespaced=true",
            "watchNamespaces={NS}",
            "rbac.credentialsNamespaces={kube-system}",
            "logFormat=json",
            "oauth.callback.enabled=true",
            "oauth.callback.url=https://connectors.example.com/oauth/callback",
            "oauth.callback.ingress.enabled=true",
            "oauth.callback.ingress.host=connectors.example.com",
            "oauth.stateKeySecret=oauth-state-key",
            "allowedPlatformHosts={api.cloud-elements.com,*.corp.example}",
        ],
    ),
    (
        "one namespace, cluster RBAC, no leader election",
        &["watchNamespaces={NS}", "leaderElection.enabled=false"],
    ),
    ("OpenShift and the common values", COMMON_VALUES),
    ("tenant", TENANT),
    ("two namespaces, a Role in each", &["rbac.namespaced=true", "watchNamespaces={NS,default}"]),
    (
        "rollout restarts, namespaced RBAC",
        &["rbac.namespaced=true", "watchNamespaces={NS}", "rolloutRestart.enabled=true"],
    ),
];

/// The install of a tenant without cluster rights.
const TENANT: &[&str] =
    &["rbac.namespaced=true", "watchNamespaces={NS}", "clusterPlatforms=false", "crds.enabled=false"];

/// OpenShift, and the values every chart user reaches for.
const COMMON_VALUES: &[&str] = &[
    "openshift=true",
    "podSecurityContext.fsGroup=2000",
    "extraArgs={--concurrency=8}",
    "commonLabels.team=platform",
    "revisionHistoryLimit=3",
    "extraVolumes[0].name=ca",
    "extraVolumes[0].configMap.name=corporate-ca",
    "extraVolumeMounts[0].name=ca",
    "extraVolumeMounts[0].mountPath=/etc/corporate-ca",
    "extraVolumeMounts[0].readOnly=true",
    "topologySpreadConstraints[0].maxSkew=1",
    "topologySpreadConstraints[0].topologyKey=topology.kubernetes.io/zone",
    "topologySpreadConstraints[0].whenUnsatisfiable=ScheduleAnyway",
    "topologySpreadConstraints[0].labelSelector.matchLabels.app\\.kubernetes\\.io/name=connector-operator",
];

fn sets_for(sets: &[&str], namespace: &str) -> Vec<String> {
    sets.iter().map(|s| s.replace("NS", namespace)).collect()
}

/// `helm template` of the chart; the manifests as JSON values.
/// `helm template` of the chart, for the local control plane's Kubernetes version unless `extra`
/// names another.
fn template(release: &str, namespace: &str, sets: &[String], extra: &[&str]) -> Result<Vec<Value>, String> {
    let mut args = vec!["template", release, CHART, "--namespace", namespace];
    for set in sets {
        args.extend(["--set", set.as_str()]);
    }
    args.extend(extra);
    let version = kube_version();
    if !extra.contains(&"--kube-version") {
        args.extend(["--kube-version", version.as_str()]);
    }
    let yaml = run("helm", &args, None)?;
    let mut docs = Vec::new();
    for document in serde_norway::Deserializer::from_str(&yaml) {
        let value = Value::deserialize(document).unwrap();
        if !value.is_null() {
            docs.push(value);
        }
    }
    Ok(docs)
}

fn to_yaml(docs: &[&Value]) -> String {
    docs.iter().map(|d| format!("---\n{}", serde_norway::to_string(d).unwrap())).collect()
}

/// Whether a manifest is one of the ClusterRoles aggregated into the built-in `edit` / `view`.
fn is_aggregated(doc: &Value) -> bool {
    doc["metadata"]["labels"]
        .as_object()
        .is_some_and(|labels| labels.keys().any(|k| k.starts_with("rbac.authorization.k8s.io/aggregate-to-")))
}

/// The operator's own ClusterRole (the one its ClusterRoleBinding grants).
fn operator_cluster_role(docs: &[Value]) -> &Value {
    let roles: Vec<&Value> = of_kind(docs, "ClusterRole").into_iter().filter(|d| !is_aggregated(d)).collect();
    assert_eq!(roles.len(), 1, "one ClusterRole for the operator");
    roles[0]
}

/// Whether a manifest belongs to the OAuth callback's own Deployment (its ServiceAccount, roles,
/// Service, NetworkPolicy, Ingress): named `<release>-connector-operator-oauth-callback`.
fn is_callback(doc: &Value) -> bool {
    doc["metadata"]["name"].as_str().is_some_and(|name| name.ends_with("-oauth-callback"))
}

/// The operator's manifests of one kind (the OAuth callback's are apart: [`callback_of_kind`]).
fn of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind && !is_callback(d)).collect()
}

/// The OAuth callback's manifests of one kind.
fn callback_of_kind<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind && is_callback(d)).collect()
}

fn one<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = of_kind(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind}");
    found[0]
}

/// RBAC rules flattened to `group/resource: verb` lines.
fn permissions(role: &Value) -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for rule in role["rules"].as_array().unwrap() {
        for group in rule["apiGroups"].as_array().unwrap() {
            for resource in rule["resources"].as_array().unwrap() {
                for verb in rule["verbs"].as_array().unwrap() {
                    lines.insert(format!(
                        "{}/{}: {}",
                        group.as_str().unwrap(),
                        resource.as_str().unwrap(),
                        verb.as_str().unwrap()
                    ));
                }
            }
        }
    }
    lines
}

fn lines(items: &[&str]) -> BTreeSet<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// What the operator calls in the namespaces it watches (read from src/controller; the least
/// privilege tests below show that it needs no more).
const NAMESPACED_PERMISSIONS: &[&str] = &[
    "openconnectors.io/connectorinstances: list",
    "openconnectors.io/connectorinstances: watch",
    "openconnectors.io/connectorinstances: patch",
    "openconnectors.io/connectorinstances/status: patch",
    "openconnectors.io/connectorplatforms: get",
    "openconnectors.io/connectorplatforms: list",
    "openconnectors.io/connectorplatforms: watch",
    "openconnectors.io/connectorplatforms/status: patch",
    "/secrets: get",
    "/secrets: list",
    "/secrets: watch",
    "/secrets: create",
    "/secrets: patch",
    "/secrets: delete",
    "/namespaces: get",
    "events.k8s.io/events: create",
];
/// What `rolloutRestart.enabled` adds: restarting the workloads of `spec.tokenSecret.rolloutRestart`.
const ROLLOUT_PERMISSIONS: &[&str] = &[
    "apps/deployments: list",
    "apps/deployments: patch",
    "apps/statefulsets: list",
    "apps/statefulsets: patch",
    "apps/daemonsets: list",
    "apps/daemonsets: patch",
];
/// What it calls on cluster-scoped objects.
const CLUSTER_PERMISSIONS: &[&str] = &[
    "openconnectors.io/clusterconnectorplatforms: get",
    "openconnectors.io/clusterconnectorplatforms: list",
    "openconnectors.io/clusterconnectorplatforms: watch",
    "openconnectors.io/clusterconnectorplatforms/status: patch",
];
/// What the OAuth callback calls: it reads the instance a redirect names and hands the code over
/// in a Secret it creates.
const CALLBACK_PERMISSIONS: &[&str] = &["openconnectors.io/connectorinstances: get", "/secrets: create"];
const LEASE_PERMISSIONS: &[&str] = &[
    "coordination.k8s.io/leases: get",
    "coordination.k8s.io/leases: create",
    "coordination.k8s.io/leases: patch",
];

#[test]
fn chart_crds_are_copies_of_the_generated_crds() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let names = |dir: &Path| -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    };
    let generated = names(&root.join("crds"));
    let copies = names(&root.join("charts/connector-operator/crd-manifests"));
    assert!(!generated.is_empty());
    let differing: Vec<&String> = generated
        .iter()
        .filter(|name| {
            std::fs::read(root.join("crds").join(name)).ok()
                != std::fs::read(root.join("charts/connector-operator/crd-manifests").join(name)).ok()
        })
        .collect();
    assert!(
        generated == copies && differing.is_empty(),
        "charts/connector-operator/crd-manifests/ differs from crds/ (differing: {differing:?}, chart has {copies:?}); \
         crds/ is the source: run `rm charts/connector-operator/crd-manifests/*.yaml && {SYNC_CRDS}`"
    );
}

#[test]
fn helm_lint_passes_for_every_value_set() {
    for (name, sets) in VALUE_SETS {
        let mut args = vec!["lint", "--strict", CHART, "--namespace", "ops"];
        let sets = sets_for(sets, "team-a");
        for set in &sets {
            args.extend(["--set", set.as_str()]);
        }
        let output = run("helm", &args, None).unwrap_or_else(|e| panic!("helm lint with {name}: {e}"));
        assert!(output.contains("1 chart(s) linted, 0 chart(s) failed"), "{name}: {output}");
    }
}

#[test]
fn defaults_render_a_restricted_deployment_and_exactly_the_needed_cluster_role() {
    let docs = template("co", "ops", &[], &[]).unwrap();
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "CustomResourceDefinition",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
        .into_iter()
        .collect(),
        "no PodDisruptionBudget over one replica, no optional objects by default"
    );
    let app_version = app_version();

    let deployment = one(&docs, "Deployment");
    assert_eq!(deployment["metadata"]["namespace"], "ops");
    assert_eq!(deployment["spec"]["replicas"], 1);
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "co-connector-operator");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    assert_eq!(pod["securityContext"]["seccompProfile"]["type"], "RuntimeDefault");
    let container = &pod["containers"][0];
    assert_eq!(container["image"], format!("connector-operator:{app_version}"));
    let security = &container["securityContext"];
    assert_eq!(security["allowPrivilegeEscalation"], false);
    assert_eq!(security["readOnlyRootFilesystem"], true);
    assert_eq!(security["runAsNonRoot"], true);
    assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
    assert_eq!(security["seccompProfile"]["type"], "RuntimeDefault");
    for kind in ["requests", "limits"] {
        for resource in ["cpu", "memory"] {
            assert!(container["resources"][kind][resource].is_string(), "resources.{kind}.{resource}");
        }
    }
    assert_eq!(container["ports"], json!([{ "name": "http", "containerPort": 8080, "protocol": "TCP" }]));
    assert_eq!(container["livenessProbe"]["httpGet"], json!({ "path": "/healthz", "port": "http" }));
    assert_eq!(container["readinessProbe"]["httpGet"], json!({ "path": "/readyz", "port": "http" }));
    assert_eq!(
        container["args"],
        json!([
            "--leader-elect",
            "--leader-election-lease-name=co-connector-operator",
            "--leader-election-namespace=ops"
        ])
    );
    let env: Vec<(String, Value)> = container["env"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().to_string(),
                e.get("value").cloned().unwrap_or(e["valueFrom"].clone()),
            )
        })
        .collect();
    let get = |name: &str| env.iter().find(|(n, _)| n == name).map(|(_, v)| v.clone());
    assert_eq!(get("WATCH_NAMESPACE"), None, "all namespaces by default");
    assert_eq!(get("CONCURRENCY"), Some(json!("64")));
    assert_eq!(get("DEFAULT_RESYNC_INTERVAL"), Some(json!("10m")));
    assert_eq!(get("DEFAULT_REQUESTS_PER_SECOND"), Some(json!("50")));
    assert_eq!(get("PROBE_ADDR"), Some(json!("0.0.0.0:8080")));
    assert_eq!(get("LOG_FORMAT"), Some(json!("text")));
    assert_eq!(get("RUST_LOG"), Some(json!("info,kube=warn")));
    assert_eq!(get("POD_NAME"), Some(json!({ "fieldRef": { "fieldPath": "metadata.name" } })));

    let expected: BTreeSet<String> =
        NAMESPACED_PERMISSIONS.iter().chain(CLUSTER_PERMISSIONS).map(|s| s.to_string()).collect();
    assert_eq!(permissions(operator_cluster_role(&docs)), expected, "the ClusterRole grants exactly this");
    let lease_role = one(&docs, "Role");
    assert_eq!(lease_role["metadata"]["namespace"], "ops");
    assert_eq!(permissions(lease_role), lines(LEASE_PERMISSIONS));
    let binding = one(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "co-connector-operator", "namespace": "ops" }])
    );
    let service = one(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["targetPort"], "http");
    assert_eq!(service["spec"]["selector"], deployment["spec"]["selector"]["matchLabels"]);
}

#[test]
fn namespaced_rbac_renders_roles_in_the_watched_namespace_and_a_cluster_role_only_for_cluster_objects() {
    let sets = sets_for(
        &["rbac.namespaced=true", "watchNamespaces={team-a}", "rbac.credentialsNamespaces={creds,team-a}"],
        "",
    );
    let docs = template("co", "ops", &sets, &[]).unwrap();
    assert_eq!(permissions(operator_cluster_role(&docs)), lines(CLUSTER_PERMISSIONS));
    let roles = of_kind(&docs, "Role");
    let role_in = |ns: &str, name: &str| {
        *roles
            .iter()
            .find(|r| r["metadata"]["namespace"] == ns && r["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("Role {ns}/{name}"))
    };
    assert_eq!(permissions(role_in("team-a", "co-connector-operator")), lines(NAMESPACED_PERMISSIONS));
    assert_eq!(permissions(role_in("creds", "co-connector-operator-credentials")), lines(&["/secrets: get"]));
    assert_eq!(
        permissions(role_in("ops", "co-connector-operator-leader-election")),
        lines(LEASE_PERMISSIONS)
    );
    assert_eq!(roles.len(), 3, "no credentials Role in the watched namespace itself");
    assert_eq!(of_kind(&docs, "RoleBinding").len(), 3);
    let env = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    assert!(env.as_array().unwrap().contains(&json!({ "name": "WATCH_NAMESPACE", "value": "team-a" })));
}

#[test]
fn configurations_the_operator_cannot_run_fail_the_render_with_a_reason() {
    let cases: &[(&[&str], &str)] = &[
        (&["watchNamespaces={a,b,a}"], "lists a namespace twice"),
        (&["rbac.namespaced=true"], "needs the namespaces to grant access in"),
        (
            &["rbac.namespaced=true", "watchNamespaces={a}", "clusterPlatforms=false"],
            "cannot create CRDs, which are cluster-scoped: set crds.enabled=false",
        ),
        (&["replicaCount=2", "leaderElection.enabled=false"], "needs leaderElection.enabled=true"),
        (
            &[
                "replicaCount=2",
                "oauth.callback.enabled=true",
                "oauth.callback.url=https://connectors.example.com/oauth/callback",
            ],
            "set oauth.stateKeySecret",
        ),
        (
            &["metrics.serviceMonitor.enabled=true", "metrics.service.enabled=false"],
            "needs metrics.service.enabled",
        ),
        (&["oauth.callback.enabled=true"], "oauth.callback.url is required"),
    ];
    for (sets, message) in cases {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        let err = template("co", "ops", &sets, &[]).expect_err(&format!("{sets:?} must fail"));
        assert!(err.contains(message), "{sets:?}: {err}");
    }
}

/// The OAuth callback: off by default; on, it runs as a Deployment of its own (`oauth-callback`
/// subcommand, its own ServiceAccount with only `get` ConnectorInstances and `create` Secrets,
/// its own port, Service and NetworkPolicy, an Ingress for the callback path only if asked); the
/// operator's pods keep only the state key (they sign) and the callback URL; extra volumes still
/// mount there. The two Deployments' selectors match none of each other's pods.
#[test]
fn the_oauth_callback_is_served_only_when_enabled() {
    let defaults = template("co", "ops", &[], &[]).unwrap();
    assert!(defaults.iter().all(|d| !is_callback(d)), "off by default");
    assert!(defaults.iter().all(|d| d["kind"] != "Ingress"));
    let sets: Vec<String> = [
        "oauth.callback.enabled=true",
        "oauth.callback.url=https://connectors.example.com/oauth/callback",
        "oauth.callback.ingress.enabled=true",
        "oauth.callback.ingress.host=connectors.example.com",
        "oauth.callback.ingress.className=nginx",
        "networkPolicy.enabled=true",
        "extraVolumes[0].name=ca",
        "extraVolumes[0].configMap.name=corporate-ca",
        "extraVolumeMounts[0].name=ca",
        "extraVolumeMounts[0].mountPath=/etc/corporate-ca",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let docs = template("co", "ops", &sets, &[]).unwrap();

    // The operator: signs states, serves no callback.
    let operator = one(&docs, "Deployment");
    let pod = &operator["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let env = container["env"].as_array().unwrap();
    for (name, value) in [
        ("OAUTH_CALLBACK_URL", "https://connectors.example.com/oauth/callback"),
        ("OAUTH_STATE_KEY_FILE", "/etc/connector-operator/oauth-state/key"),
        ("OAUTH_AUTHORIZATION_TTL", "1h"),
    ] {
        assert!(env.contains(&json!({ "name": name, "value": value })), "{name}: {env:?}");
    }
    assert!(!container.to_string().contains("OAUTH_CALLBACK_ADDR"), "the operator serves no callback");
    assert!(!container["ports"].to_string().contains("oauth-callback"), "{}", container["ports"]);
    let mounts: Vec<&str> =
        container["volumeMounts"].as_array().unwrap().iter().map(|m| m["name"].as_str().unwrap()).collect();
    assert_eq!(mounts, ["oauth-state", "ca"]);
    let volumes = pod["volumes"].as_array().unwrap();
    assert_eq!(volumes[0]["secret"]["secretName"], "co-connector-operator-oauth-state");
    assert_eq!(volumes.len(), 2);

    // The callback: its own Deployment, account and rights.
    let deployments = callback_of_kind(&docs, "Deployment");
    assert_eq!(deployments.len(), 1);
    let callback = deployments[0];
    assert_eq!(callback["metadata"]["name"], "co-connector-operator-oauth-callback");
    assert_eq!(callback["spec"]["replicas"], 1);
    let pod = &callback["spec"]["template"]["spec"];
    assert_eq!(pod["serviceAccountName"], "co-connector-operator-oauth-callback");
    assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
    let container = &pod["containers"][0];
    assert_eq!(container["args"], json!(["oauth-callback"]));
    let env = container["env"].as_array().unwrap();
    for (name, value) in [
        ("OAUTH_CALLBACK_ADDR", "0.0.0.0:8082"),
        ("OAUTH_STATE_KEY_FILE", "/etc/connector-operator/oauth-state/key"),
    ] {
        assert!(env.contains(&json!({ "name": name, "value": value })), "{name}: {env:?}");
    }
    assert_eq!(
        container["ports"],
        json!([{"name": "oauth-callback", "containerPort": 8082, "protocol": "TCP"}])
    );
    assert_eq!(
        container["readinessProbe"]["httpGet"],
        json!({ "path": "/healthz", "port": "oauth-callback" })
    );
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "co-connector-operator-oauth-state");
    assert_eq!(pod["volumes"].as_array().unwrap().len(), 1, "no extra volumes of the operator's");
    let (selector, labels) = (&callback["spec"]["selector"]["matchLabels"], &pod_labels(callback));
    let operator_selector = &operator["spec"]["selector"]["matchLabels"];
    assert!(
        !matches(operator_selector, labels),
        "the operator's selector does not match the callback's pods"
    );
    assert!(!matches(selector, &pod_labels(operator)), "nor the other way round");
    let accounts = callback_of_kind(&docs, "ServiceAccount");
    assert_eq!(accounts.len(), 1);
    let role = callback_of_kind(&docs, "ClusterRole");
    assert_eq!(role.len(), 1);
    assert_eq!(permissions(role[0]), lines(CALLBACK_PERMISSIONS));
    let binding = callback_of_kind(&docs, "ClusterRoleBinding");
    assert_eq!(
        binding[0]["subjects"],
        json!([{ "kind": "ServiceAccount", "name": "co-connector-operator-oauth-callback", "namespace": "ops" }])
    );
    assert_eq!(binding[0]["roleRef"]["name"], "co-connector-operator-oauth-callback");
    assert!(
        !permissions(operator_cluster_role(&docs)).contains("openconnectors.io/connectorinstances: get"),
        "the operator reads no single instance"
    );

    let service = callback_of_kind(&docs, "Service");
    assert_eq!(service[0]["spec"]["ports"][0]["targetPort"], "oauth-callback");
    assert!(matches(&service[0]["spec"]["selector"], labels), "the Service reaches the callback's pods");
    assert!(!matches(&service[0]["spec"]["selector"], &pod_labels(operator)), "and not the operator's");
    let ingress = callback_of_kind(&docs, "Ingress");
    assert_eq!(ingress[0]["spec"]["ingressClassName"], "nginx");
    let rule = &ingress[0]["spec"]["rules"][0];
    assert_eq!(rule["host"], "connectors.example.com");
    assert_eq!(rule["http"]["paths"].as_array().unwrap().len(), 1, "only the callback is exposed");
    assert_eq!(rule["http"]["paths"][0]["path"], "/oauth/callback");
    assert_eq!(
        rule["http"]["paths"][0]["backend"]["service"]["name"],
        "co-connector-operator-oauth-callback"
    );
    let key = one(&docs, "Secret")["data"]["key"].as_str().unwrap().to_string();
    assert!(key.len() >= 64, "at least 48 random characters, base64: {key}");
    let policy = one(&docs, "NetworkPolicy");
    assert!(!policy["spec"]["ingress"].to_string().contains("oauth-callback"), "{policy}");
    let policy = callback_of_kind(&docs, "NetworkPolicy");
    assert!(matches(&policy[0]["spec"]["podSelector"]["matchLabels"], labels));
    assert_eq!(
        policy[0]["spec"]["ingress"],
        json!([{ "ports": [{ "port": "oauth-callback", "protocol": "TCP" }] }])
    );

    // Namespaced RBAC: a Role in each watched namespace, no ClusterRole.
    let mut namespaced = sets.clone();
    namespaced.extend(["rbac.namespaced=true".into(), "watchNamespaces={team-a,team-b}".into()]);
    let docs = template("co", "ops", &namespaced, &[]).unwrap();
    assert!(callback_of_kind(&docs, "ClusterRole").is_empty());
    let roles = callback_of_kind(&docs, "Role");
    let in_namespaces: BTreeSet<&str> =
        roles.iter().map(|r| r["metadata"]["namespace"].as_str().unwrap()).collect();
    assert_eq!(in_namespaces, ["team-a", "team-b"].into_iter().collect());
    assert!(roles.iter().all(|r| permissions(r) == lines(CALLBACK_PERMISSIONS)));

    // A state key Secret of one's own (GitOps renders without lookup): the chart makes none.
    let mut own = sets.clone();
    own.push("oauth.stateKeySecret=my-oauth-key".into());
    let docs = template("co", "ops", &own, &[]).unwrap();
    assert!(of_kind(&docs, "Secret").is_empty());
    let pod = &one(&docs, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "my-oauth-key");
    let pod = &callback_of_kind(&docs, "Deployment")[0]["spec"]["template"]["spec"];
    assert_eq!(pod["volumes"][0]["secret"]["secretName"], "my-oauth-key");
}

/// The labels of a Deployment's pods.
fn pod_labels(deployment: &Value) -> Value {
    deployment["spec"]["template"]["metadata"]["labels"].clone()
}

/// Whether a `matchLabels` selector matches `labels`.
fn matches(selector: &Value, labels: &Value) -> bool {
    selector.as_object().unwrap().iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The allowed platform hosts reach the binary as one comma-separated variable, only when set;
/// the schema refuses what is no host pattern.
#[test]
fn allowed_platform_hosts_reach_the_binary_and_are_checked() {
    let env_of =
        |docs: &[Value]| one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"].clone();
    let defaults = template("co", "ops", &[], &[]).unwrap();
    assert!(!env_of(&defaults).to_string().contains("ALLOWED_PLATFORM_HOSTS"), "the default needs none");
    let sets = vec!["allowedPlatformHosts={api.cloud-elements.com,*.corp.example,10.0.0.7}".to_string()];
    let docs = template("co", "ops", &sets, &[]).unwrap();
    let expected = json!({ "name": "ALLOWED_PLATFORM_HOSTS", "value": "api.cloud-elements.com,*.corp.example,10.0.0.7" });
    assert!(env_of(&docs).as_array().unwrap().contains(&expected), "{}", env_of(&docs));
    let err = template("co", "ops", &["allowedPlatformHosts={https://api.example.com}".to_string()], &[])
        .unwrap_err();
    assert!(err.contains("allowedPlatformHosts"), "{err}");
}

#[test]
fn pod_disruption_budget_only_for_several_replicas() {
    let two = vec!["replicaCount=2".to_string()];
    let docs = template("co", "ops", &two, &[]).unwrap();
    assert_eq!(one(&docs, "PodDisruptionBudget")["apiVersion"], "policy/v1");
    assert_eq!(one(&docs, "PodDisruptionBudget")["spec"]["maxUnavailable"], 1);
    assert!(of_kind(&template("co", "ops", &[], &[]).unwrap(), "PodDisruptionBudget").is_empty());
}

/// The chart's `kubeVersion` is the supported range the README states and CI tests at both ends
/// (1.34 and 1.37): it renders at the ends and refuses a version below.
#[test]
fn chart_renders_for_the_supported_kubernetes_range_only() {
    for version in ["1.34.0", "1.37.2", "1.38.0"] {
        template("co", "ops", &[], &["--kube-version", version]).unwrap_or_else(|e| panic!("{version}: {e}"));
    }
    let err = template("co", "ops", &[], &["--kube-version", "1.33.6"]).unwrap_err();
    assert!(err.contains("kubeVersion: >=1.34.0-0"), "{err}");
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    assert!(readme.contains("Kubernetes 1.34 to 1.37"), "the README states the supported range");
}

/// Every flag and environment variable the chart passes is one the binary knows (the callback
/// Deployment's, its `oauth-callback` subcommand).
#[test]
fn chart_flags_and_env_are_known_to_the_binary() {
    let help_of = |args: &[&str]| {
        let help = Command::new(env!("CARGO_BIN_EXE_connector-operator")).args(args).output().unwrap();
        String::from_utf8(help.stdout).unwrap()
    };
    let (help, callback_help) = (help_of(&["--help"]), help_of(&["oauth-callback", "--help"]));
    let mut callbacks = 0;
    for (name, sets) in VALUE_SETS {
        let docs = template("co", "ops", &sets_for(sets, "team-a"), &[]).unwrap();
        let operator = one(&docs, "Deployment");
        let callback = callback_of_kind(&docs, "Deployment");
        callbacks += callback.len();
        for (deployment, help) in
            std::iter::once((operator, &help)).chain(callback.into_iter().map(|d| (d, &callback_help)))
        {
            let container = &deployment["spec"]["template"]["spec"]["containers"][0];
            let args = container["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap());
            for arg in args.filter(|a| *a != "oauth-callback") {
                let flag = arg.split('=').next().unwrap();
                let known = help.lines().any(|line| line.split([' ', ',']).any(|word| word == flag));
                assert!(known, "{name}: unknown flag {flag}");
            }
            for env in container["env"].as_array().unwrap() {
                let var = env["name"].as_str().unwrap();
                // RUST_LOG is read by the log filter, not by the command line.
                assert!(
                    var == "RUST_LOG" || help.contains(&format!("[env: {var}=")),
                    "{name}: unknown env {var}"
                );
            }
        }
    }
    assert!(callbacks > 0, "a value set renders the callback Deployment");
}

/// The Prometheus Operator's ServiceMonitor and PrometheusRule kinds, as far as a dry run needs them.
const MONITORING_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: servicemonitors.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: { kind: ServiceMonitor, plural: servicemonitors, singular: servicemonitor, listKind: ServiceMonitorList }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true }
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: prometheusrules.monitoring.coreos.com
spec:
  group: monitoring.coreos.com
  scope: Namespaced
  names: { kind: PrometheusRule, plural: prometheusrules, singular: prometheusrule, listKind: PrometheusRuleList }
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema: { type: object, x-kubernetes-preserve-unknown-fields: true }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rendered_manifests_pass_a_server_side_dry_run() {
    let client = support::client().await;
    let ns = support::namespace(&client, "dryrun").await;
    run("kubectl", &["apply", "-f", "-"], Some(MONITORING_CRDS)).unwrap();
    run(
        "kubectl",
        &[
            "wait",
            "--for=condition=established",
            "--timeout=30s",
            "crd/servicemonitors.monitoring.coreos.com",
            "crd/prometheusrules.monitoring.coreos.com",
        ],
        None,
    )
    .unwrap();
    for (name, sets) in VALUE_SETS {
        let release = format!("dry-{:06x}", fastrand::u32(..0xff_ffff));
        let docs = template(&release, &ns, &sets_for(sets, &ns), &[]).unwrap();
        let all: Vec<&Value> = docs.iter().collect();
        let output = run("kubectl", &["apply", "--dry-run=server", "-f", "-"], Some(&to_yaml(&all)))
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        let accepted = output.lines().filter(|l| l.ends_with("(server dry run)")).count();
        assert_eq!(accepted, docs.len(), "{name}: every object accepted:\n{output}");
    }
}

/// A test's own install of the chart's ServiceAccount and RBAC.
struct Rbac {
    namespace: String,
    service_account: String,
    /// The rendered manifests.
    docs: Vec<Value>,
}

impl Rbac {
    /// Renders the chart for a unique release in `namespace` (cluster-scoped names are unique).
    fn render(namespace: &str, sets: &[&str]) -> Rbac {
        let release = format!("rbac-{:06x}", fastrand::u32(..0xff_ffff));
        let docs = template(&release, namespace, &sets_for(sets, namespace), &[]).unwrap();
        let service_account = one(&docs, "ServiceAccount")["metadata"]["name"].as_str().unwrap().to_string();
        Rbac { namespace: namespace.to_string(), service_account, docs }
    }

    /// Applies the ServiceAccount, (Cluster)Roles and bindings for real.
    fn install(&self) {
        let rbac: Vec<&Value> = self
            .docs
            .iter()
            .filter(|d| {
                ["ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"]
                    .contains(&d["kind"].as_str().unwrap())
                    && !is_aggregated(d)
            })
            .collect();
        assert!(rbac.len() >= 3, "a ServiceAccount, a (Cluster)Role and its binding at least");
        run("kubectl", &["apply", "-f", "-"], Some(&to_yaml(&rbac))).unwrap();
    }

    fn user(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    /// The OAuth callback's ServiceAccount (rendered with `oauth.callback.enabled`).
    fn callback_user(&self) -> String {
        let account = callback_of_kind(&self.docs, "ServiceAccount")[0]["metadata"]["name"].as_str().unwrap();
        format!("system:serviceaccount:{}:{account}", self.namespace)
    }

    /// A kubeconfig that acts as the OAuth callback's ServiceAccount.
    fn callback_kubeconfig(&self) -> PathBuf {
        self.kubeconfig_of(&self.callback_user())
    }

    /// A kubeconfig that acts as the ServiceAccount (the admin impersonates it).
    fn kubeconfig(&self) -> PathBuf {
        self.kubeconfig_of(&self.user())
    }

    /// A kubeconfig that acts as `user`, a ServiceAccount of the release's namespace.
    fn kubeconfig_of(&self, user: &str) -> PathBuf {
        let group = format!("system:serviceaccounts:{}", self.namespace);
        support::control_plane()
            .impersonating_kubeconfig(user, &["system:serviceaccounts", &group, "system:authenticated"])
            .unwrap()
    }

    /// The operator's arguments from the rendered Deployment (leader election).
    fn args(&self) -> Vec<String> {
        let container = &one(&self.docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
        container["args"].as_array().into_iter().flatten().map(|a| a.as_str().unwrap().to_string()).collect()
    }

    /// Every request the ServiceAccount made, from the API server's audit log:
    /// (`verb group/resource[/subresource]`, HTTP code).
    fn requests(&self) -> Vec<(String, u16)> {
        requests_of(&self.user())
    }

    /// Stops the operator (gracefully: it releases its lease) and returns each request the
    /// ServiceAccount made, once; panics on any it was refused. The API server logs a watch only
    /// when it ends, hence the stop.
    async fn stop_and_assert_never_forbidden(&self, env: &mut Env) -> BTreeSet<String> {
        let exit = env.operator.terminate(Duration::from_secs(15));
        assert!(exit.success(), "the operator stopped cleanly under the chart's RBAC: {exit}");
        let used = eventually("the operator's watches in the audit log", Duration::from_secs(10), || async {
            let used = self.assert_never_forbidden();
            used.iter().any(|call| call.ends_with(": watch")).then_some(used)
        })
        .await;
        eprintln!("requests of {}: {used:#?}", self.user());
        used
    }

    /// Each request of the ServiceAccount so far, once; panics on any it was refused.
    fn assert_never_forbidden(&self) -> BTreeSet<String> {
        let requests = self.requests();
        let forbidden: BTreeSet<&String> =
            requests.iter().filter(|(_, code)| *code == 403).map(|(r, _)| r).collect();
        assert!(forbidden.is_empty(), "{} was refused: {forbidden:?}", self.user());
        requests.into_iter().map(|(r, _)| r).collect()
    }
}

/// Every request `user` made, from the API server's audit log: (`group/resource[/subresource]:
/// verb`, HTTP code).
fn requests_of(user: &str) -> Vec<(String, u16)> {
    let audit = std::fs::read_to_string(support::control_plane().dir().join("audit.log")).unwrap_or_default();
    audit
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter(|e| e["impersonatedUser"]["username"] == user && e["stage"] != "RequestReceived")
        .map(|e| {
            let object = &e["objectRef"];
            let mut resource = format!(
                "{}/{}",
                object["apiGroup"].as_str().unwrap_or(""),
                object["resource"].as_str().unwrap_or("")
            );
            if let Some(sub) = object["subresource"].as_str() {
                resource = format!("{resource}/{sub}");
            }
            (
                format!("{resource}: {}", e["verb"].as_str().unwrap_or("")),
                e["responseStatus"]["code"].as_u64().unwrap_or(0) as u16,
            )
        })
        .collect()
}

/// Create → update (PATCH) → re-authenticate (PUT) → delete, with the operator acting as the
/// chart's ServiceAccount. Returns the environment for further checks.
async fn full_lifecycle(env: &Env) {
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    env.create_instance("desk", zendesk_spec()).await;
    let ci = env.wait_ready("desk").await;
    let id = ci.status.unwrap().instance_id.unwrap();
    let token = env.secret_token("desk-token").await.expect("the token Secret was written");
    assert_eq!(Some(token.clone()), env.sim_token(id).await);

    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "displayName": "Support desk" })).await;
    eventually("the rename to reach the platform", Duration::from_secs(20), || async {
        let remote = env.control.instance(id).await.unwrap()?;
        (remote.name == "Support desk").then_some(())
    })
    .await;
    env.wait_ready("desk").await;
    assert_eq!(env.control.calls().await.unwrap().count("PATCH /instances/{id}"), 1);

    env.control.reset_calls().await.unwrap();
    env.patch_spec("desk", json!({ "configuration": { "zendesk.subdomain": "acme-eu" } })).await;
    let new_token = eventually("a new token after re-authentication", Duration::from_secs(20), || {
        let token = token.clone();
        async move { env.secret_token("desk-token").await.filter(|t| *t != token) }
    })
    .await;
    env.wait_ready_with_token("desk", &new_token).await;
    assert_eq!(env.control.calls().await.unwrap().count("PUT /instances/{id}"), 1);
    assert_eq!(Some(new_token), env.sim_token(id).await);

    env.instances().delete("desk", &DeleteParams::default()).await.unwrap();
    eventually("the ConnectorInstance to be deleted", Duration::from_secs(20), || async {
        env.instances().get_opt("desk").await.unwrap().is_none().then_some(())
    })
    .await;
    assert!(env.control.instance(id).await.unwrap().is_none(), "the remote instance was deleted");
}

fn assert_core_calls_made(used: &BTreeSet<String>) {
    for call in [
        "openconnectors.io/connectorinstances: patch",
        "openconnectors.io/connectorinstances/status: patch",
        "/secrets: patch",
        "/secrets: get",
        "/secrets: watch",
        "openconnectors.io/connectorinstances: watch",
        "openconnectors.io/connectorplatforms: watch",
        "openconnectors.io/clusterconnectorplatforms: watch",
        "coordination.k8s.io/leases: create",
        "coordination.k8s.io/leases: patch",
    ] {
        assert!(used.contains(call), "the operator made `{call}`: {used:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_cluster_role_runs_the_whole_lifecycle() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "rbac-cluster").await;
    // A ClusterRole, but one watched namespace, so that other tests' objects stay out of it.
    let rbac = Rbac::render(&ns, &["watchNamespaces={NS}", "leaderElection.enabled=true"]);
    operator_cluster_role(&rbac.docs);
    rbac.install();
    let args = rbac.args();
    let mut env =
        Env::start_in(&ns, &rbac.kubeconfig(), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    full_lifecycle(&env).await;

    let used = rbac.stop_and_assert_never_forbidden(&mut env).await;
    assert_core_calls_made(&used);
    assert!(env.operator.logs().contains("became the leader"), "leader election ran under the chart's Role");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_privilege_namespaced_roles_run_the_whole_lifecycle_and_a_cluster_platform() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "rbac-ns").await;
    let rbac =
        Rbac::render(&ns, &["rbac.namespaced=true", "watchNamespaces={NS}", "leaderElection.enabled=true"]);
    rbac.install();
    // Another team's cluster platform, for namespaces this operator does not watch, with its
    // credentials where this operator may not read: it is none of this operator's business (no
    // Secret read, no refused request).
    let foreign = format!("foreign-{}", &ns[ns.len() - 8..]);
    let foreign_platform = json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
        "metadata": { "name": foreign },
        "spec": { "baseUrl": "http://127.0.0.1:9/elements/api-v2", "insecureAllowHttp": true,
                  "credentialsSecretRef": { "name": "their-credentials", "namespace": "kube-system" },
                  "namespaceSelector": { "matchLabels": { "team": format!("not-{foreign}") } } },
    });
    let all_cluster_platforms: Api<connector_operator::api::ClusterConnectorPlatform> =
        Api::all(client.clone());
    all_cluster_platforms
        .patch(&foreign, &PatchParams::apply("e2e-test").force(), &Patch::Apply(&foreign_platform))
        .await
        .unwrap();
    let args = rbac.args();
    let mut env =
        Env::start_in(&ns, &rbac.kubeconfig(), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    full_lifecycle(&env).await;
    all_cluster_platforms.delete(&foreign, &DeleteParams::default()).await.unwrap();

    // A ClusterConnectorPlatform selecting this namespace by label: reading the namespace (a
    // Role in it grants `get` on the namespace object itself) and the cluster platform's status.
    let label = format!("rbac-{}", &ns[ns.len() - 8..]);
    let cluster_platform = format!("{label}-shared");
    let cluster_platforms = cluster_platform_selecting(&env, &client, &label, &cluster_platform).await;
    let mut spec = echo_spec();
    spec["platformRef"] = json!({ "kind": "ClusterConnectorPlatform", "name": cluster_platform });
    env.create_instance("shared", spec).await;
    env.wait_ready("shared").await;
    eventually("the ClusterConnectorPlatform to be Ready", Duration::from_secs(20), || async {
        let platform = cluster_platforms.get(&cluster_platform).await.ok()?;
        let conditions = platform.status?.conditions;
        find_condition(&conditions, connector_operator::api::READY).filter(|c| c.status == "True").map(|_| ())
    })
    .await;
    env.instances().delete("shared", &DeleteParams::default()).await.unwrap();
    eventually("the cluster-platform instance to be deleted", Duration::from_secs(20), || async {
        env.instances().get_opt("shared").await.unwrap().is_none().then_some(())
    })
    .await;
    cluster_platforms.delete(&cluster_platform, &DeleteParams::default()).await.unwrap();

    let used = rbac.stop_and_assert_never_forbidden(&mut env).await;
    assert_core_calls_made(&used);
    for call in ["/namespaces: get", "openconnectors.io/clusterconnectorplatforms/status: patch"] {
        assert!(used.contains(call), "the operator made `{call}`: {used:?}");
    }
}

/// The negative: without `patch` on Secrets the token Secret cannot be written, and the
/// operator says so — Forbidden in its log and in the instance's status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_missing_permission_is_reported_as_forbidden() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "rbac-neg").await;
    let mut rbac = Rbac::render(&ns, &["watchNamespaces={NS}", "leaderElection.enabled=false"]);
    let role = rbac.docs.iter_mut().find(|d| d["kind"] == "ClusterRole" && !is_aggregated(d)).unwrap();
    let mut removed = false;
    for rule in role["rules"].as_array_mut().unwrap() {
        if rule["resources"] == json!(["secrets"]) {
            let verbs = rule["verbs"].as_array_mut().unwrap();
            // The first write of a token Secret is a create (later ones are patches).
            verbs.retain(|v| v != "create");
            removed = true;
        }
    }
    assert!(removed, "the ClusterRole has a Secrets rule");
    rbac.install();
    let env = Env::start_in(&ns, &rbac.kubeconfig(), &[]).await;
    env.create_instance("desk", echo_spec()).await;
    let message =
        eventually("the instance to report the refused Secret write", Duration::from_secs(30), || async {
            let ci: ConnectorInstance = env.instances().get("desk").await.ok()?;
            let reconciling = find_condition(&ci.status?.conditions, RECONCILING)?.clone();
            (reconciling.status == "True" && reconciling.reason == "KubernetesError")
                .then_some(reconciling.message)
        })
        .await;
    assert!(message.contains("forbidden") && message.contains("secrets"), "{message}");
    eventually("the operator's log to say forbidden", Duration::from_secs(10), || {
        let logs = env.operator.logs();
        async move { logs.contains("forbidden").then_some(()) }
    })
    .await;
    assert!(env.secrets().get_opt("desk-token").await.unwrap().is_none(), "no token Secret was written");
    let refused: Vec<String> =
        rbac.requests().into_iter().filter(|(_, code)| *code == 403).map(|(r, _)| r).collect();
    assert!(!refused.is_empty() && refused.iter().all(|r| r == "/secrets: create"), "{refused:?}");
}

/// The chart's OAuth install, run for real: the operator as its ServiceAccount (it signs the
/// state), the callback Deployment's process (`oauth-callback`) as its own, both with the key
/// file, the callback URL and the RBAC the chart renders.
struct CallbackInstall {
    rbac: Rbac,
    env: Env,
    callback: support::operator::CallbackProcess,
    _key: tempfile::TempDir,
}

impl CallbackInstall {
    /// Renders and installs the RBAC (after `edit` has changed the rendered manifests), starts both.
    async fn start(prefix: &str, edit: impl FnOnce(&mut Vec<Value>)) -> CallbackInstall {
        let client = support::client().await;
        connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
        let ns = support::namespace(&client, prefix).await;
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let (addr, url) = (format!("127.0.0.1:{port}"), format!("http://127.0.0.1:{port}/oauth/callback"));
        let url_set = format!("oauth.callback.url={url}");
        let mut rbac = Rbac::render(
            &ns,
            &[
                "watchNamespaces={NS}",
                "leaderElection.enabled=false",
                "oauth.callback.enabled=true",
                &url_set,
            ],
        );
        edit(&mut rbac.docs);
        rbac.install();
        let key = tempfile::tempdir().unwrap();
        let key_file = key.path().join("key");
        std::fs::write(&key_file, "chart-state-key-0123456789abcdef0123456789abcdef").unwrap();
        let key_path = key_file.to_string_lossy().into_owned();
        let env = Env::start_in(
            &ns,
            &rbac.kubeconfig(),
            &["--oauth-callback-url", &url, "--oauth-state-key-file", &key_path],
        )
        .await;
        let callback =
            support::operator::CallbackProcess::start(&addr, &key_file, &rbac.callback_kubeconfig());
        eventually("the callback to listen", Duration::from_secs(20), || async {
            reqwest::get(format!("http://{addr}/healthz")).await.ok()?.status().is_success().then_some(())
        })
        .await;
        env.put_secret("sfdc-oauth", &[("clientSecret", "client-secret-5e4d3c2b1a")]).await;
        CallbackInstall { rbac, env, callback, _key: key }
    }

    /// Creates a code-flow instance and returns its authorization URL.
    async fn authorization_url(&self, name: &str) -> String {
        let spec = json!({ "platformRef": { "name": support::operator::PLATFORM }, "connector": "sfdc",
                           "oauth": { "clientId": "sfdc-client-rbac", "clientSecretRef": { "name": "sfdc-oauth", "key": "clientSecret" } } });
        self.env.create_instance(name, spec).await;
        eventually("the authorization URL", Duration::from_secs(30), || async {
            Some(self.env.instances().get(name).await.ok()?.status?.authorization?.url)
        })
        .await
    }

    /// A browser follows the URL: the provider (simulator) approves and sends it to the callback.
    /// The callback's answer: (status, page).
    async fn approve(url: &str) -> (u16, String) {
        let browser =
            reqwest::Client::builder().redirect(reqwest::redirect::Policy::limited(3)).build().unwrap();
        let page = browser.get(url).send().await.unwrap();
        (page.status().as_u16(), page.text().await.unwrap())
    }

    /// Deletes the instance with a plain delete and waits until it is gone.
    async fn delete(&self, name: &str) {
        self.env.instances().delete(name, &DeleteParams::default()).await.unwrap();
        eventually("the instance to go", Duration::from_secs(20), || async {
            self.env.instances().get_opt(name).await.unwrap().is_none().then_some(())
        })
        .await;
    }
}

/// Labels the environment's namespace `connector-operator-test=<label>` and applies the
/// ClusterConnectorPlatform `name` (the simulator, the namespace's credentials) that selects it.
async fn cluster_platform_selecting(
    env: &Env,
    client: &kube::Client,
    label: &str,
    name: &str,
) -> Api<connector_operator::api::ClusterConnectorPlatform> {
    Api::<Namespace>::all(client.clone())
        .patch(
            &env.ns,
            &PatchParams::default(),
            &Patch::Merge(json!({ "metadata": { "labels": { "connector-operator-test": label } } })),
        )
        .await
        .unwrap();
    let platform = json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
        "metadata": { "name": name },
        "spec": { "baseUrl": env.sim.base_url(), "insecureAllowHttp": true,
                  "credentialsSecretRef": { "name": support::operator::CREDENTIALS, "namespace": env.ns },
                  "namespaceSelector": { "matchLabels": { "connector-operator-test": label } } },
    });
    let cluster_platforms = Api::all(client.clone());
    cluster_platforms
        .patch(name, &PatchParams::apply("e2e-test").force(), &Patch::Apply(&platform))
        .await
        .unwrap();
    cluster_platforms
}

/// Polls `check` every 100 ms until it returns `Some`; `Err(what)` after `limit`.
async fn within<T, Fut>(what: &str, limit: Duration, mut check: impl FnMut() -> Fut) -> Result<T, String>
where
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(what.to_string());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Every step of an instance's life that needs one of the operator's rights, in order; the first
/// that does not happen within `limit`, as `Err`. Creates the instance (credentials Secret,
/// leader lease, finalizer, token Secret, status, Event, its platform's status), re-authenticates
/// it after its referenced Secret changed (the token Secret rewritten), changes its Secret's type
/// (the old one deleted), runs a second instance through a ClusterConnectorPlatform that selects
/// the namespace by label, and deletes both.
async fn every_right_in_turn(env: &Env, client: &kube::Client, limit: Duration) -> Result<(), String> {
    let ready = |name: &'static str| async move {
        within(&format!("{name} Ready"), limit, || async {
            let ci: ConnectorInstance = env.instances().get(name).await.ok()?;
            let status = ci.status?;
            (status.observed_generation == ci.metadata.generation
                && find_condition(&status.conditions, connector_operator::api::READY)?.status == "True")
                .then_some(())
        })
        .await
    };
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery")]).await;
    env.create_instance("desk", zendesk_spec()).await;
    ready("desk").await?;
    let token = env.secret_token("desk-token").await.ok_or("no token Secret")?;
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(client.clone(), &env.ns);
    within("the Created Event", limit, || async {
        let list = events.list(&Default::default()).await.ok()?;
        list.items.iter().any(|e| e.reason.as_deref() == Some("Created")).then_some(())
    })
    .await?;

    let platforms: Api<connector_operator::api::ConnectorPlatform> = Api::namespaced(client.clone(), &env.ns);
    within("the ConnectorPlatform Ready", limit, || async {
        let conditions = platforms.get(support::operator::PLATFORM).await.ok()?.status?.conditions;
        find_condition(&conditions, connector_operator::api::READY).filter(|c| c.status == "True").map(|_| ())
    })
    .await?;

    // A referenced Secret changes: the watch of Secrets tells, and the instance re-authenticates.
    env.put_secret("zendesk-login", &[("password", "correct-horse-battery-2")]).await;
    within("the re-authenticated token in the Secret", limit, || {
        let token = token.clone();
        async move { env.secret_token("desk-token").await.filter(|t| *t != token) }
    })
    .await?;
    env.patch_spec("desk", json!({ "tokenSecret": { "template": { "type": "example.com/token" } } })).await;
    within("the token Secret of the new type", limit, || async {
        let secret = env.secrets().get_opt("desk-token").await.ok()??;
        (secret.type_.as_deref() == Some("example.com/token")).then_some(())
    })
    .await?;

    let label = format!("verbs-{}", &env.ns[env.ns.len() - 8..]);
    let cluster_platforms = cluster_platform_selecting(env, client, &label, &label).await;
    let mut spec = echo_spec();
    spec["platformRef"] = json!({ "kind": "ClusterConnectorPlatform", "name": label });
    env.create_instance("shared", spec).await;
    let shared = ready("shared").await;
    let platform_ready = within("the ClusterConnectorPlatform Ready", limit, || async {
        let conditions = cluster_platforms.get(&label).await.ok()?.status?.conditions;
        find_condition(&conditions, connector_operator::api::READY).filter(|c| c.status == "True").map(|_| ())
    })
    .await;
    let mut deleted = Ok(());
    for name in ["desk", "shared"] {
        let _ = env.instances().delete(name, &DeleteParams::default()).await;
        let gone = within(&format!("{name} deleted"), limit, || async {
            env.instances().get_opt(name).await.ok()?.is_none().then_some(())
        })
        .await;
        deleted = deleted.and(gone);
    }
    let _ = cluster_platforms.delete(&label, &DeleteParams::default()).await;
    shared.and(platform_ready).and(deleted)
}

/// Each verb of the operator's role is needed: with any one of them removed from the chart's
/// ClusterRole (or its lease Role), the operator is refused exactly that call, and an instance's
/// life (see [`every_right_in_turn`]) does not complete; with all of them it does, refused nothing.
/// Three verbs serve as fallbacks and are checked for what they do instead (see below): `get` on
/// either platform kind and `watch` on ConnectorPlatforms. The local API server runs the
/// OwnerReferencesPermissionEnforcement admission plugin, as hardened clusters do.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verb_of_the_operators_role_is_needed() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let verbs: Vec<Option<&str>> = std::iter::once(None)
        .chain(
            NAMESPACED_PERMISSIONS
                .iter()
                .chain(CLUSTER_PERMISSIONS)
                .chain(LEASE_PERMISSIONS)
                .map(|verb| Some(*verb)),
        )
        .collect();
    /// The verb removed, how the life went, and the calls refused.
    type Run<'a> = (Option<&'a str>, Result<(), String>, BTreeSet<String>);
    let results: Vec<Run> = futures::stream::iter(verbs)
        .map(|missing| {
            let client = client.clone();
            async move {
                let ns = support::namespace(&client, "rbac-verb").await;
                let mut rbac = Rbac::render(&ns, &["watchNamespaces={NS}", "leaderElection.enabled=true"]);
                if let Some(missing) = missing {
                    let (resource, verb) = missing.split_once(": ").unwrap();
                    let (group, resource) = resource.split_once('/').unwrap();
                    for role in rbac.docs.iter_mut().filter(|d| {
                        (d["kind"] == "ClusterRole" || d["kind"] == "Role") && !is_aggregated(d) && !is_callback(d)
                    }) {
                        let rules = role["rules"].as_array_mut().unwrap();
                        for rule in rules.iter_mut().filter(|rule| {
                            rule["apiGroups"] == json!([group])
                                && rule["resources"].as_array().unwrap().contains(&json!(resource))
                        }) {
                            // Only this resource loses the verb; others in the same rule keep it.
                            let others: Vec<Value> = rule["resources"]
                                .as_array()
                                .unwrap()
                                .iter()
                                .filter(|r| **r != json!(resource))
                                .cloned()
                                .collect();
                            let verbs: Vec<Value> =
                                rule["verbs"].as_array().unwrap().iter().filter(|v| **v != json!(verb)).cloned().collect();
                            let mut split = vec![];
                            if !others.is_empty() {
                                split.push(json!({ "apiGroups": [group], "resources": others, "verbs": rule["verbs"] }));
                            }
                            if !verbs.is_empty() {
                                split.push(json!({ "apiGroups": [group], "resources": [resource], "verbs": verbs }));
                            }
                            *rule = json!(split);
                        }
                        let flat: Vec<Value> = rules
                            .drain(..)
                            .flat_map(|rule| match rule {
                                Value::Array(split) => split,
                                rule => vec![rule],
                            })
                            .collect();
                        *rules = flat;
                    }
                }
                rbac.install();
                let args = rbac.args();
                let mut env =
                    Env::start_in(&ns, &rbac.kubeconfig(), &args.iter().map(String::as_str).collect::<Vec<_>>())
                        .await;
                let outcome = every_right_in_turn(&env, &client, Duration::from_secs(20)).await;
                let _ = env.operator.terminate(Duration::from_secs(10));
                tokio::time::sleep(Duration::from_secs(2)).await;
                let refused: BTreeSet<String> =
                    rbac.requests().into_iter().filter(|(_, code)| *code == 403).map(|(call, _)| call).collect();
                (missing, outcome, refused)
            }
        })
        .buffer_unordered(4)
        .collect()
        .await;
    let mut wrong = Vec::new();
    for (missing, outcome, refused) in &results {
        eprintln!("without {missing:?}: {outcome:?}, refused {refused:?}");
        let expected: BTreeSet<String> = missing.iter().map(|m| m.to_string()).collect();
        let right = match missing {
            None => outcome.is_ok() && refused.is_empty(),
            // A platform object is read directly only when the watch has not shown it yet (an
            // instance applied together with its platform): without `get` such an instance says
            // PlatformNotFound until the watch catches up, then goes on. Not needed for the life
            // to complete, but for it to complete without a false failure in that race.
            Some(verb) if verb.ends_with("connectorplatforms: get") => {
                outcome.is_ok() && refused.is_subset(&expected)
            }
            // Without `watch` the watch of platforms falls back to listing again and again (with
            // a backoff of up to 30 s): a platform created or changed is seen late, at the cost of
            // a LIST each time. The platform here exists before the operator starts, so its life
            // may complete; the refused watch shows the operator relies on it.
            Some("openconnectors.io/connectorplatforms: watch") => *refused == expected,
            Some(_) => outcome.is_err() && *refused == expected,
        };
        if !right {
            wrong.push(format!("without {missing:?}: {outcome:?}, refused {refused:?}"));
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
}

/// The OAuth authorization-code flow under the chart's RBAC: the callback (its own Deployment's
/// process, as its own ServiceAccount) reads the instance and writes the grant Secret, the
/// operator uses the code and deletes that Secret; neither is refused, the callback makes exactly
/// its two calls and the operator never reads a single instance.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_oauth_code_flow_runs_under_the_charts_rbac() {
    let mut install = CallbackInstall::start("rbac-oauth", |_| {}).await;
    let url = install.authorization_url("crm").await;
    let (status, page) = CallbackInstall::approve(&url).await;
    assert_eq!(status, 200, "the callback took the code: {page}");
    let env = &install.env;
    let ci = env.wait_ready("crm").await;
    assert!(env.secret_token("crm-token").await.is_some(), "the token Secret was written");
    let grant = format!("oauth-grant-{}", ci.metadata.uid.clone().unwrap());
    eventually("the used grant Secret to be deleted", Duration::from_secs(20), || async {
        env.secrets().get_opt(&grant).await.unwrap().is_none().then_some(())
    })
    .await;
    install.delete("crm").await;

    assert!(install.callback.terminate(Duration::from_secs(10)).success(), "the callback stopped cleanly");
    let callback_user = install.rbac.callback_user();
    let calls = eventually("the callback's requests in the audit log", Duration::from_secs(10), || async {
        let calls = requests_of(&callback_user);
        (calls.len() >= 2).then_some(calls)
    })
    .await;
    assert!(calls.iter().all(|(_, code)| *code < 400), "the callback was never refused: {calls:?}");
    let made: BTreeSet<String> = calls.into_iter().map(|(call, _)| call).collect();
    assert_eq!(made, lines(CALLBACK_PERMISSIONS), "the callback makes exactly the calls its role grants");
    let rbac = &install.rbac;
    let used = rbac.stop_and_assert_never_forbidden(&mut install.env).await;
    for call in ["/secrets: delete", "/secrets: create"] {
        assert!(used.contains(call), "the operator made `{call}`: {used:?}");
    }
    assert!(!used.contains("openconnectors.io/connectorinstances: get"), "{used:?}");
}

/// Each verb of the callback's role is needed: without it the callback is refused at that step,
/// its page says an administrator must act, nothing changes (no grant Secret, the instance still
/// awaits authorization); once the role is whole again, the same link completes the instance
/// without a restart, and a plain delete removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_verb_of_the_callbacks_role_is_needed() {
    for missing in CALLBACK_PERMISSIONS {
        let (resource, verb) = missing.split_once(": ").unwrap();
        let resource = resource.rsplit('/').next().unwrap();
        let mut whole = Vec::new();
        let install = CallbackInstall::start("rbac-cb-verb", |docs| {
            whole = docs.clone();
            for role in docs.iter_mut().filter(|d| d["kind"] == "ClusterRole" && is_callback(d)) {
                let rules = role["rules"].as_array_mut().unwrap();
                for rule in rules.iter_mut().filter(|rule| rule["resources"] == json!([resource])) {
                    rule["verbs"].as_array_mut().unwrap().retain(|v| v != verb);
                }
                rules.retain(|rule| !rule["verbs"].as_array().unwrap().is_empty());
                assert!(!permissions(role).contains(*missing), "{missing} removed");
            }
        })
        .await;
        let env = &install.env;
        let url = install.authorization_url("crm").await;
        let (status, page) = CallbackInstall::approve(&url).await;
        assert_eq!(status, 500, "without `{missing}` the callback cannot complete: {page}");
        assert!(page.contains("may not") && page.contains("Nothing was changed"), "{page}");
        let callback_user = install.rbac.callback_user();
        let refused = eventually("the refused call in the audit log", Duration::from_secs(10), || async {
            let refused: Vec<String> = requests_of(&callback_user)
                .into_iter()
                .filter(|(_, code)| *code == 403)
                .map(|(c, _)| c)
                .collect();
            (!refused.is_empty()).then_some(refused)
        })
        .await;
        assert!(refused.iter().all(|call| call == missing), "only `{missing}` was refused: {refused:?}");
        let ci = env.instances().get("crm").await.unwrap();
        let status = ci.status.clone().unwrap();
        assert!(status.authorization.is_some(), "still awaiting authorization");
        let grant = format!("oauth-grant-{}", ci.metadata.uid.clone().unwrap());
        assert!(env.secrets().get_opt(&grant).await.unwrap().is_none(), "no grant Secret");

        // The administrator installs the chart's role as rendered: the same link now completes.
        let roles: Vec<&Value> =
            whole.iter().filter(|d| d["kind"] == "ClusterRole" && is_callback(d)).collect();
        run("kubectl", &["apply", "-f", "-"], Some(&to_yaml(&roles))).unwrap();
        eventually("the repaired role to let the link complete", Duration::from_secs(30), || async {
            let (status, _) = CallbackInstall::approve(&url).await;
            (status == 200).then_some(())
        })
        .await;
        env.wait_ready("crm").await;
        install.delete("crm").await;
    }
}

/// `rolloutRestart.enabled` grants exactly list and patch on the three workload kinds, and that is
/// enough: the operator, as the chart's ServiceAccount, restarts a Deployment by name and a
/// StatefulSet by selector on a token rotation, and is never refused. Without the value, the same
/// operator (started with `--rollout-restart` by hand) is refused and says
/// `RolloutRestartForbidden`, after the token Secret is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rollout_restart_rbac_is_granted_only_when_enabled_and_is_enough() {
    use k8s_openapi::api::apps::v1::{Deployment, StatefulSet};
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    for enabled in [true, false] {
        let ns = support::namespace(&client, if enabled { "rbac-roll" } else { "rbac-noroll" }).await;
        let mut sets = vec!["watchNamespaces={NS}", "leaderElection.enabled=false"];
        if enabled {
            sets.push("rolloutRestart.enabled=true");
        }
        let rbac = Rbac::render(&ns, &sets);
        let granted = permissions(operator_cluster_role(&rbac.docs));
        let rollout = lines(ROLLOUT_PERMISSIONS);
        if enabled {
            assert!(rollout.is_subset(&granted), "{granted:?}");
            let env_names: Vec<&str> =
                one(&rbac.docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|e| e["name"].as_str().unwrap())
                    .collect();
            assert!(env_names.contains(&"ROLLOUT_RESTART"), "{env_names:?}");
        } else {
            assert!(rollout.is_disjoint(&granted), "nothing on workloads by default: {granted:?}");
        }
        rbac.install();
        let env = Env::start_in(&ns, &rbac.kubeconfig(), &["--rollout-restart"]).await;
        let workload = |kind: &str, name: &str| {
            let mut spec = json!({
                "selector": { "matchLabels": { "app": name } },
                "template": { "metadata": { "labels": { "app": name } },
                              "spec": { "containers": [{ "name": "app", "image": "example.invalid/app:1" }] } },
            });
            if kind == "StatefulSet" {
                spec["serviceName"] = json!(name);
            }
            json!({ "apiVersion": "apps/v1", "kind": kind, "metadata": { "name": name, "labels": { "tier": "sync" } }, "spec": spec })
        };
        let deployments: Api<Deployment> = Api::namespaced(client.clone(), &ns);
        let stateful_sets: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);
        deployments
            .create(&Default::default(), &serde_json::from_value(workload("Deployment", "web")).unwrap())
            .await
            .unwrap();
        stateful_sets
            .create(&Default::default(), &serde_json::from_value(workload("StatefulSet", "db")).unwrap())
            .await
            .unwrap();
        let mut spec = echo_spec();
        spec["configuration"] = json!({ "echo.greeting": "hello" });
        spec["tokenSecret"] = json!({ "rolloutRestart": [
            { "kind": "Deployment", "name": "web" },
            { "kind": "StatefulSet", "selector": { "matchLabels": { "tier": "sync" } } },
        ] });
        env.create_instance("desk", spec).await;
        env.wait_ready("desk").await;
        let token = env.secret_token("desk-token").await.unwrap();
        env.patch_spec("desk", json!({ "configuration": { "echo.greeting": "hi" } })).await;
        if enabled {
            eventually("both workloads to roll", Duration::from_secs(30), || async {
                let web = deployments.get("web").await.ok()?.metadata.generation;
                let db = stateful_sets.get("db").await.ok()?.metadata.generation;
                (web == Some(2) && db == Some(2)).then_some(())
            })
            .await;
            env.wait_ready("desk").await;
            let used = rbac.assert_never_forbidden();
            for call in ["apps/deployments: patch", "apps/statefulsets: list", "apps/statefulsets: patch"] {
                assert!(used.contains(call), "the operator made `{call}`: {used:?}");
            }
        } else {
            let message = eventually("RolloutRestartForbidden", Duration::from_secs(30), || async {
                let ci: ConnectorInstance = env.instances().get("desk").await.ok()?;
                let stalled = find_condition(&ci.status?.conditions, "Stalled")?.clone();
                (stalled.reason == "RolloutRestartForbidden").then_some(stalled.message)
            })
            .await;
            assert!(message.contains("rolloutRestart.enabled=true"), "{message}");
            assert_ne!(
                env.secret_token("desk-token").await.unwrap(),
                token,
                "the new token is in the Secret"
            );
            assert_eq!(deployments.get("web").await.unwrap().metadata.generation, Some(1));
        }
    }
}

/// The `sh` code blocks of one `## <heading>` section of the README, in order.
fn readme_blocks(heading: &str) -> Vec<String> {
    let readme = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let start =
        readme.find(&format!("\n## {heading}\n")).unwrap_or_else(|| panic!("README has no `## {heading}`"));
    let section = &readme[start + 1..];
    let section = &section[..section[3..].find("\n## ").map_or(section.len(), |end| end + 3)];
    let blocks: Vec<String> =
        section.split("```sh\n").skip(1).map(|rest| rest[..rest.find("```").unwrap()].to_string()).collect();
    assert!(!blocks.is_empty(), "`## {heading}` has no sh block");
    blocks
}

/// Runs a README block as written (placeholders filled in) with bash in the repository root, with
/// helm and kubectl of [`tools`] first on the PATH and `kubeconfig` as the cluster.
fn run_readme_block(heading: &str, kubeconfig: &Path) {
    let app_version = app_version();
    for block in readme_blocks(heading) {
        let script = block
            .replace("<registry>", "registry.example")
            .replace("<version>", &app_version)
            .replace("<kubernetes version>", &kube_version());
        assert!(!script.contains('<'), "a placeholder left in `{heading}`: {script}");
        let path = format!("{}:{}", tools().display(), std::env::var("PATH").unwrap_or_default());
        let output = Command::new("bash")
            .args(["-euo", "pipefail", "-c", &script])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .env("PATH", path)
            .env("KUBECONFIG", kubeconfig)
            .env("HELM_CACHE_HOME", kubeconfig.with_file_name("helm-cache"))
            .env("HELM_CONFIG_HOME", kubeconfig.with_file_name("helm-config"))
            .env("HELM_DATA_HOME", kubeconfig.with_file_name("helm-data"))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let text =
            format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        eprintln!("README `{heading}`:\n{script}{text}");
        assert!(output.status.success(), "README `{heading}` failed as written:\n{script}\n{text}");
    }
}

/// A control plane of a test's own, without the CRDs (and without kube-controller-manager).
async fn bare_control_plane(name: &str) -> connector_operator::local::LocalControlPlane {
    use connector_operator::local::{LocalControlPlane, Options};
    let options = Options {
        name: name.into(),
        audit: false,
        controller_manager: false,
        crds: false,
        ..Options::default()
    };
    LocalControlPlane::start(options).await.unwrap()
}

/// The README's install, upgrade and uninstall commands work as written, on a control plane of
/// their own (they install and delete the CRDs, which the other tests of this binary use): the
/// Helm path (install, then upgrade, then uninstall, leaving no CRD and no release object), and
/// the plain kubectl path (namespace, CRDs by server-side apply, `helm template | kubectl apply`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_install_upgrade_and_uninstall_commands_work_as_written() {
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::ListParams;
    let crd_names = ["connectorinstances", "connectorplatforms", "clusterconnectorplatforms"]
        .map(|plural| format!("{plural}.openconnectors.io"));
    let ours = |crds: &[CustomResourceDefinition]| -> Vec<String> {
        crds.iter().filter_map(|c| c.metadata.name.clone()).filter(|n| crd_names.contains(n)).collect()
    };

    // Helm: install, upgrade, uninstall.
    let plane = bare_control_plane("readme-helm").await;
    let client = plane.client().await.unwrap();
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "connector-operator");
    run_readme_block("Install with Helm", plane.kubeconfig_path());
    assert_eq!(
        ours(&crds.list(&ListParams::default()).await.unwrap().items).len(),
        3,
        "helm installs the CRDs"
    );
    assert!(deployments.get_opt("connector-operator").await.unwrap().is_some(), "the Deployment");
    // An instance to delete first (no operator runs here, so it has no finalizer).
    let instances: Api<ConnectorInstance> = Api::namespaced(client.clone(), "connector-operator");
    let instance: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "readme" }, "spec": { "platformRef": { "name": "p" }, "connector": "echo" },
    }))
    .unwrap();
    instances.create(&Default::default(), &instance).await.unwrap();
    // Serve each kind once before the CRDs are deleted, as a running operator would have: the API
    // server creates a CRD's storage on first use, and a CRD deleted while its storage is still
    // initializing can stay Terminating for minutes ("could not list instances: storage is
    // (re)initializing", seen on 1.37).
    let listed = |result: Result<(), kube::Error>| result.is_ok().then_some(());
    eventually("every kind to be served", Duration::from_secs(30), || {
        let client = client.clone();
        async move {
            // From the watch cache (resourceVersion 0), which answers only once it is initialized.
            let params = ListParams::default().match_any();
            listed(Api::<ConnectorInstance>::all(client.clone()).list(&params).await.map(|_| ()))?;
            listed(
                Api::<connector_operator::api::ConnectorPlatform>::all(client.clone())
                    .list(&params)
                    .await
                    .map(|_| ()),
            )?;
            listed(
                Api::<connector_operator::api::ClusterConnectorPlatform>::all(client)
                    .list(&params)
                    .await
                    .map(|_| ()),
            )
        }
    })
    .await;
    run_readme_block("Upgrade", plane.kubeconfig_path());
    for name in &crd_names {
        let crd = crds.get(name).await.unwrap();
        let labels = crd.metadata.labels.clone().unwrap_or_default();
        assert_eq!(labels.get("app.kubernetes.io/managed-by").map(String::as_str), Some("Helm"), "{name}");
        let keep = crd.metadata.annotations.clone().unwrap_or_default();
        assert_eq!(keep.get("helm.sh/resource-policy").map(String::as_str), Some("keep"), "{name}");
    }
    run_readme_block("Uninstall", plane.kubeconfig_path());
    assert!(ours(&crds.list(&ListParams::default()).await.unwrap().items).is_empty(), "the CRDs are gone");
    assert!(deployments.get_opt("connector-operator").await.unwrap().is_none(), "the release is gone");
    drop(plane);

    // Plain kubectl.
    let plane = bare_control_plane("readme-kubectl").await;
    let client = plane.client().await.unwrap();
    run_readme_block("Install with plain kubectl", plane.kubeconfig_path());
    let crds: Api<CustomResourceDefinition> = Api::all(client.clone());
    assert_eq!(
        ours(&crds.list(&ListParams::default()).await.unwrap().items).len(),
        3,
        "kubectl applied the CRDs"
    );
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "connector-operator");
    assert!(deployments.get_opt("connector-operator").await.unwrap().is_some(), "the Deployment");
}

/// The ClusterRoles aggregated into the built-in `edit` / `admin` and `view`: exactly these
/// rules, on by default, each off with its value.
#[test]
fn aggregated_roles_give_namespace_users_the_operators_kinds() {
    let docs = template("co", "ops", &[], &[]).unwrap();
    let aggregated: Vec<&Value> =
        of_kind(&docs, "ClusterRole").into_iter().filter(|d| is_aggregated(d)).collect();
    let by_name = |name: &str| *aggregated.iter().find(|d| d["metadata"]["name"] == name).unwrap();
    let edit = by_name("co-connector-operator-edit");
    assert_eq!(
        permissions(edit),
        ["connectorinstances", "connectorplatforms"]
            .iter()
            .flat_map(|r| {
                ["create", "delete", "deletecollection", "patch", "update"]
                    .map(|verb| format!("openconnectors.io/{r}: {verb}"))
            })
            .collect::<BTreeSet<String>>()
    );
    let labels = |doc: &Value| -> BTreeSet<String> {
        doc["metadata"]["labels"]
            .as_object()
            .unwrap()
            .keys()
            .filter(|k| k.contains("aggregate-to"))
            .cloned()
            .collect()
    };
    assert_eq!(
        labels(edit),
        lines(&[
            "rbac.authorization.k8s.io/aggregate-to-admin",
            "rbac.authorization.k8s.io/aggregate-to-edit"
        ])
    );
    let view = by_name("co-connector-operator-view");
    let verbs: BTreeSet<String> =
        permissions(view).iter().map(|p| p.rsplit(' ').next().unwrap().to_string()).collect();
    assert_eq!(verbs, lines(&["get", "list", "watch"]), "view only reads");
    assert!(labels(view).contains("rbac.authorization.k8s.io/aggregate-to-view"));
    for (set, gone) in [("rbac.aggregateToEdit=false", "-edit"), ("rbac.aggregateToView=false", "-view")] {
        let docs = template("co", "ops", &[set.to_string()], &[]).unwrap();
        let names: Vec<&str> =
            of_kind(&docs, "ClusterRole").iter().map(|d| d["metadata"]["name"].as_str().unwrap()).collect();
        assert!(!names.iter().any(|n| n.ends_with(gone)), "{set}: {names:?}");
        assert_eq!(names.len(), 2, "{set}: the operator's and the other aggregated role");
    }
}

/// A namespace user bound only to the built-in `edit` ClusterRole creates a ConnectorInstance;
/// one bound to `view` reads it but may not create one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn users_with_the_built_in_edit_role_create_connector_instances() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "edit-role").await;
    let release = format!("agg-{:06x}", fastrand::u32(..0xff_ffff));
    let docs = template(&release, &ns, &[], &[]).unwrap();
    let aggregated: Vec<&Value> =
        of_kind(&docs, "ClusterRole").into_iter().filter(|d| is_aggregated(d)).collect();
    assert_eq!(aggregated.len(), 2);
    run("kubectl", &["apply", "-f", "-"], Some(&to_yaml(&aggregated))).unwrap();
    let (alice, bob) = (format!("alice-{release}"), format!("bob-{release}"));
    for (user, role) in [(&alice, "edit"), (&bob, "view")] {
        run(
            "kubectl",
            &[
                "-n",
                &ns,
                "create",
                "rolebinding",
                &format!("{user}-{role}"),
                "--clusterrole",
                role,
                "--user",
                user,
            ],
            None,
        )
        .unwrap();
    }
    let plane = support::control_plane();
    let as_alice = plane.impersonating_kubeconfig(&alice, &["system:authenticated"]).unwrap();
    let as_bob = plane.impersonating_kubeconfig(&bob, &["system:authenticated"]).unwrap();
    let manifest = format!(
        "apiVersion: openconnectors.io/v1alpha1\nkind: ConnectorInstance\nmetadata:\n  name: desk\n  namespace: {ns}\n\
         spec:\n  platformRef:\n    name: sim\n  connector: echo\n"
    );
    let as_user = |kubeconfig: &Path, args: &[&str], stdin: Option<&str>| {
        let mut all = vec!["--kubeconfig", kubeconfig.to_str().unwrap()];
        all.extend(args);
        run("kubectl", &all, stdin)
    };
    // The aggregation controller merges the rules into `edit` within moments.
    eventually("alice to be allowed to create a ConnectorInstance", Duration::from_secs(30), || async {
        as_user(&as_alice, &["create", "-f", "-"], Some(&manifest)).ok()
    })
    .await;
    as_user(
        &as_alice,
        &[
            "-n",
            &ns,
            "patch",
            "connectorinstance",
            "desk",
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"displayName":"desk"}}"#,
        ],
        None,
    )
    .unwrap();
    let listed = eventually("bob to read it", Duration::from_secs(30), || async {
        as_user(&as_bob, &["-n", &ns, "get", "connectorinstances", "-o", "name"], None).ok()
    })
    .await;
    assert!(listed.contains("connectorinstance.openconnectors.io/desk"), "{listed}");
    let refused = as_user(&as_bob, &["-n", &ns, "delete", "connectorinstance", "desk"], None).unwrap_err();
    assert!(refused.contains("forbidden"), "{refused}");
    as_user(&as_alice, &["-n", &ns, "delete", "connectorinstance", "desk"], None).unwrap();
    let names: Vec<String> =
        aggregated.iter().map(|d| d["metadata"]["name"].as_str().unwrap().to_string()).collect();
    for name in names {
        run("kubectl", &["delete", "clusterrole", &name], None).unwrap();
    }
}

/// OpenShift leaves the uid and gid to the namespace's range and keeps everything else of the
/// restricted profile; the common values land where they belong, and by default nothing of them
/// is rendered.
#[test]
fn openshift_and_the_common_values_render_where_they_belong() {
    let docs = template("co", "ops", &sets_for(COMMON_VALUES, ""), &[]).unwrap();
    let deployment = one(&docs, "Deployment");
    let pod = &deployment["spec"]["template"]["spec"];
    assert_eq!(
        pod["securityContext"],
        json!({ "runAsNonRoot": true, "seccompProfile": { "type": "RuntimeDefault" } }),
        "no runAsUser / runAsGroup / fsGroup on OpenShift, the rest kept"
    );
    let container = &pod["containers"][0];
    assert_eq!(container["securityContext"]["readOnlyRootFilesystem"], true);
    assert_eq!(container["securityContext"]["capabilities"], json!({ "drop": ["ALL"] }));
    let args: Vec<&str> = container["args"].as_array().unwrap().iter().map(|a| a.as_str().unwrap()).collect();
    assert_eq!(args.last(), Some(&"--concurrency=8"), "{args:?}");
    assert!(args.contains(&"--leader-elect"), "extra arguments come after the chart's own: {args:?}");
    assert_eq!(container["volumeMounts"][0]["mountPath"], "/etc/corporate-ca");
    assert_eq!(pod["volumes"][0]["configMap"]["name"], "corporate-ca");
    assert_eq!(pod["topologySpreadConstraints"][0]["topologyKey"], "topology.kubernetes.io/zone");
    assert_eq!(deployment["spec"]["revisionHistoryLimit"], 3);
    for doc in &docs {
        assert_eq!(doc["metadata"]["labels"]["team"], "platform", "commonLabels on {}", doc["kind"]);
    }

    let defaults = template("co", "ops", &[], &[]).unwrap();
    let pod = &one(&defaults, "Deployment")["spec"]["template"]["spec"];
    assert_eq!(pod["securityContext"]["runAsUser"], 65532, "a fixed non-root uid by default");
    for key in ["volumes", "topologySpreadConstraints"] {
        assert!(pod.get(key).is_none(), "no {key} by default");
    }
    assert!(pod["containers"][0].get("volumeMounts").is_none());
    // A pod security context emptied on purpose renders none at all.
    let docs = template("co", "ops", &["podSecurityContext=null".to_string()], &[]).unwrap();
    assert!(one(&docs, "Deployment")["spec"]["template"]["spec"].get("securityContext").is_none());
}

/// `values.schema.json` refuses a misspelt value and a value of the wrong type, naming it.
#[test]
fn the_values_schema_refuses_typos_and_wrong_types() {
    let cases = [
        ("replicaCunt=2", "Additional property replicaCunt is not allowed"),
        ("rbac.namespace=true", "Additional property namespace is not allowed"),
        ("concurrency=lots", "concurrency: Invalid type. Expected: integer"),
        ("logFormat=xml", "logFormat: logFormat must be one of the following"),
        ("defaultResyncInterval=ten minutes", "defaultResyncInterval: Does not match pattern"),
        ("openshift=maybe", "openshift: Invalid type. Expected: boolean"),
    ];
    for (set, message) in cases {
        let err = template("co", "ops", &[set.to_string()], &[]).unwrap_err();
        assert!(err.contains(message), "{set}: {err}");
    }
}

/// Samples of a Prometheus text exposition: (metric name, labels, value).
fn samples(text: &str) -> Vec<(String, std::collections::BTreeMap<String, String>, f64)> {
    let mut out = Vec::new();
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let Ok(value) = value.parse::<f64>() else { continue };
        let (name, labels) = match series.split_once('{') {
            Some((name, rest)) => (name, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        let labels = labels
            .split("\",")
            .filter(|pair| !pair.is_empty())
            .filter_map(|pair| {
                let (key, value) = pair.split_once('=')?;
                Some((key.to_string(), value.trim_matches('"').to_string()))
            })
            .collect();
        out.push((name.to_string(), labels, value));
    }
    out
}

/// Evaluates the instant-vector subset of PromQL the alerts on gauges use (selectors with `=` /
/// `!=` matchers, `sum by (...)`, parentheses, a comparison with a number) against samples.
fn evaluate(
    expr: &promql_parser::parser::Expr,
    samples: &[(String, std::collections::BTreeMap<String, String>, f64)],
) -> Vec<(std::collections::BTreeMap<String, String>, f64)> {
    use promql_parser::label::MatchOp;
    use promql_parser::parser::{Expr, LabelModifier};
    match expr {
        Expr::VectorSelector(selector) => samples
            .iter()
            .filter(|(name, labels, _)| {
                Some(name) == selector.name.as_ref()
                    && selector.matchers.matchers.iter().all(|m| {
                        let have = labels.get(&m.name).map(String::as_str).unwrap_or("");
                        match &m.op {
                            MatchOp::Equal => have == m.value,
                            MatchOp::NotEqual => have != m.value,
                            other => panic!("matcher {other} is not evaluated here"),
                        }
                    })
            })
            .map(|(_, labels, value)| (labels.clone(), *value))
            .collect(),
        Expr::Paren(inner) => evaluate(&inner.expr, samples),
        Expr::Aggregate(aggregate) if aggregate.op.to_string() == "sum" => {
            let by: Vec<String> = match &aggregate.modifier {
                Some(LabelModifier::Include(labels)) => labels.labels.clone(),
                None => Vec::new(),
                Some(other) => panic!("{other:?} is not evaluated here"),
            };
            let mut groups: std::collections::BTreeMap<std::collections::BTreeMap<String, String>, f64> =
                Default::default();
            for (labels, value) in evaluate(&aggregate.expr, samples) {
                let key = by.iter().filter_map(|l| Some((l.clone(), labels.get(l)?.clone()))).collect();
                *groups.entry(key).or_default() += value;
            }
            groups.into_iter().collect()
        }
        Expr::Binary(binary) if binary.op.to_string() == ">" => {
            let Expr::NumberLiteral(threshold) = binary.rhs.as_ref() else { panic!("a number on the right") };
            evaluate(&binary.lhs, samples).into_iter().filter(|(_, value)| *value > threshold.val).collect()
        }
        other => panic!("not evaluated here: {other:?}"),
    }
}

/// The PrometheusRule's alerts: every expression parses as PromQL, and the Unauthorized and
/// not-Ready alerts fire on what a real operator exposes when a platform rejects its
/// credentials, for that namespace only; they do not fire while everything is Ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_alerts_parse_and_fire_on_what_the_operator_exposes() {
    let docs = template("co", "ops", &["metrics.prometheusRule.enabled=true".to_string()], &[]).unwrap();
    let rule = one(&docs, "PrometheusRule");
    let rules = rule["spec"]["groups"][0]["rules"].as_array().unwrap();
    let mut exprs = std::collections::BTreeMap::new();
    for r in rules {
        let (alert, expr) = (r["alert"].as_str().unwrap(), r["expr"].as_str().unwrap());
        let parsed = promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{alert}: {e}"));
        exprs.insert(alert.to_string(), parsed);
    }
    assert_eq!(exprs.len(), 4, "{:?}", exprs.keys());

    let env = Env::start("alerts").await;
    env.create_instance("desk", echo_spec()).await;
    env.wait_ready("desk").await;
    let quiet = samples(&env.operator.metrics_text().await);
    for alert in ["ConnectorPlatformUnauthorized", "ConnectorInstanceNotReady"] {
        assert!(evaluate(&exprs[alert], &quiet).is_empty(), "{alert} fires while all is Ready");
    }
    let wrong =
        connector_operator::sim::Credentials { user_secret: "u2".into(), organization_secret: "o2".into() };
    env.control.set_credentials(&wrong).await.unwrap();
    env.create_instance("broken", echo_spec()).await;
    env.wait_stalled_with("broken", Some("Unauthorized")).await;
    let broken = samples(&env.operator.metrics_text().await);
    let firing = evaluate(&exprs["ConnectorPlatformUnauthorized"], &broken);
    assert_eq!(firing.len(), 1, "{firing:?}");
    assert_eq!(firing[0].0.get("namespace"), Some(&env.ns));
    let not_ready = evaluate(&exprs["ConnectorInstanceNotReady"], &broken);
    assert_eq!(
        not_ready.iter().map(|(l, v)| (l["reason"].as_str(), *v)).collect::<Vec<_>>(),
        [("Unauthorized", 1.0)]
    );
}

/// The metric names an expression reads.
fn metric_names(expr: &promql_parser::parser::Expr, names: &mut BTreeSet<String>) {
    use promql_parser::parser::Expr;
    match expr {
        Expr::VectorSelector(vs) => names.extend(vs.name.clone()),
        Expr::MatrixSelector(ms) => names.extend(ms.vs.name.clone()),
        Expr::Aggregate(a) => {
            metric_names(&a.expr, names);
            if let Some(param) = &a.param {
                metric_names(param, names);
            }
        }
        Expr::Binary(b) => {
            metric_names(&b.lhs, names);
            metric_names(&b.rhs, names);
        }
        Expr::Unary(u) => metric_names(&u.expr, names),
        Expr::Paren(p) => metric_names(&p.expr, names),
        Expr::Subquery(s) => metric_names(&s.expr, names),
        Expr::Call(c) => c.args.args.iter().for_each(|a| metric_names(a, names)),
        _ => {}
    }
}

/// Every series name the operator exposes (`_total`, `_bucket`, `_count`, `_sum` included), with
/// one sample in each labelled family (a family without samples is not exposed at all).
fn exposed_series() -> BTreeSet<String> {
    use connector_operator::metrics::{EventLabels, InstanceLabels, Metrics};
    use connector_operator::platform::CallObserver;
    let metrics = Metrics::default();
    metrics.outcome("ConnectorInstance", "ok");
    metrics.action("Created");
    metrics.events.get_or_create(&EventLabels { outcome: "published" }).inc();
    metrics.exchange("POST /instances", Some(200), Duration::from_millis(5));
    let labels = InstanceLabels { namespace: "ns".into(), ready: "True".into(), reason: "Ready".into() };
    metrics.add_census(std::sync::Arc::new(move || vec![(labels.clone(), 1)]));
    let text = metrics.encode();
    let mut names = BTreeSet::new();
    for line in text.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
        let mut parts = line.split_whitespace();
        let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
        match kind {
            "counter" => names.extend([format!("{name}_total")]),
            "histogram" => names.extend(["_bucket", "_count", "_sum"].map(|s| format!("{name}{s}"))),
            _ => names.extend([name.to_string()]),
        }
    }
    names
}

/// The Grafana dashboard: the ConfigMap holds the file as is, the JSON has what Grafana needs
/// (title, uid, a Prometheus data source variable, panels with unique ids and a place on the
/// grid), and every panel query parses as PromQL and reads only series the operator exposes.
/// The alert expressions read only exposed series too.
#[test]
fn the_dashboard_and_the_alerts_read_only_what_the_operator_exposes() {
    let sets =
        ["metrics.dashboard.enabled=true".to_string(), "metrics.prometheusRule.enabled=true".to_string()];
    let docs = template("co", "ops", &sets, &[]).unwrap();
    let config_map = one(&docs, "ConfigMap");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let text = config_map["data"]["connector-operator.json"].as_str().unwrap();
    let file = std::fs::read_to_string(Path::new(CHART).join("dashboards/connector-operator.json")).unwrap();
    assert_eq!(text.trim(), file.trim(), "the ConfigMap holds the dashboard file");
    let dashboard: Value = serde_json::from_str(text).unwrap();
    assert_eq!(dashboard["uid"], "connector-operator");
    assert!(dashboard["title"].as_str().is_some_and(|t| !t.is_empty()));
    let variables = dashboard["templating"]["list"].as_array().unwrap();
    assert!(variables.iter().any(|v| v["type"] == "datasource" && v["query"] == "prometheus"));

    let exposed = exposed_series();
    let mut ids = BTreeSet::new();
    let mut read = BTreeSet::new();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8, "{} panels", panels.len());
    for panel in panels {
        let title = panel["title"].as_str().unwrap();
        assert!(ids.insert(panel["id"].as_i64().unwrap()), "{title}: duplicate panel id");
        for key in ["x", "y", "w", "h"] {
            assert!(panel["gridPos"][key].is_u64(), "{title}: gridPos.{key}");
        }
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "{title}: no query");
        for target in targets {
            let expr = target["expr"].as_str().unwrap();
            let parsed =
                promql_parser::parser::parse(expr).unwrap_or_else(|e| panic!("{title}: {expr}: {e}"));
            metric_names(&parsed, &mut read);
        }
    }
    for rule in one(&docs, "PrometheusRule")["spec"]["groups"][0]["rules"].as_array().unwrap() {
        let parsed = promql_parser::parser::parse(rule["expr"].as_str().unwrap()).unwrap();
        metric_names(&parsed, &mut read);
    }
    let unknown: Vec<&String> = read.iter().filter(|name| !exposed.contains(*name)).collect();
    assert!(unknown.is_empty(), "series the operator does not expose: {unknown:?} (exposed: {exposed:?})");
    assert!(read.len() >= 8, "the dashboard covers the operator's metrics: {read:?}");
}

/// The tenant install renders nothing cluster-scoped and tells the operator to leave cluster
/// platforms alone.
#[test]
fn the_tenant_install_renders_nothing_cluster_scoped() {
    let docs = template("co", "team-a", &sets_for(TENANT, "team-a"), &[]).unwrap();
    let kinds: BTreeSet<&str> = docs.iter().map(|d| d["kind"].as_str().unwrap()).collect();
    assert_eq!(
        kinds,
        lines(&["Deployment", "Role", "RoleBinding", "Service", "ServiceAccount"])
            .iter()
            .map(String::as_str)
            .collect()
    );
    for doc in &docs {
        assert_eq!(doc["metadata"]["namespace"], "team-a", "{} {}", doc["kind"], doc["metadata"]["name"]);
    }
    let container = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0];
    assert!(container["args"].as_array().unwrap().contains(&json!("--cluster-platforms=false")));
    let role = of_kind(&docs, "Role")
        .into_iter()
        .find(|r| r["metadata"]["name"] == "co-connector-operator")
        .unwrap();
    assert!(!permissions(role).iter().any(|p| p.contains("clusterconnectorplatforms")));
}

/// A tenant without cluster rights installs the chart and runs create → update →
/// re-authenticate → delete, with no ClusterRole present and no request refused; an instance that
/// names a ClusterConnectorPlatform says it cannot be used and is deleted at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_tenant_install_runs_the_whole_lifecycle_without_cluster_rights() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = support::namespace(&client, "tenant").await;
    let mut sets = TENANT.to_vec();
    sets.push("leaderElection.enabled=true");
    let rbac = Rbac::render(&ns, &sets);
    assert!(
        of_kind(&rbac.docs, "ClusterRole").is_empty() && of_kind(&rbac.docs, "ClusterRoleBinding").is_empty()
    );
    rbac.install();
    let args = rbac.args();
    let mut env =
        Env::start_in(&ns, &rbac.kubeconfig(), &args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    full_lifecycle(&env).await;
    let mut spec = echo_spec();
    spec["platformRef"] = json!({ "kind": "ClusterConnectorPlatform", "name": "shared" });
    env.create_instance("shared", spec).await;
    let (reason, message) = env.wait_stalled("shared").await;
    assert_eq!(reason, "ClusterPlatformsDisabled", "{message}");
    assert!(message.contains("ConnectorPlatform in namespace"), "{message}");
    env.instances().delete("shared", &DeleteParams::default()).await.unwrap();
    eventually("the instance to be gone", Duration::from_secs(10), || async {
        env.instances().get_opt("shared").await.unwrap().is_none().then_some(())
    })
    .await;
    let used = rbac.stop_and_assert_never_forbidden(&mut env).await;
    assert!(!used.iter().any(|call| call.contains("clusterconnectorplatforms")), "{used:?}");
}

/// Several watched namespaces: one WATCH_NAMESPACE list, and with namespaced RBAC one Role and
/// binding in each (credentials namespaces among them get no second Role).
#[test]
fn several_namespaces_get_a_role_each() {
    let sets = sets_for(
        &[
            "rbac.namespaced=true",
            "watchNamespaces={team-a,team-b}",
            "rbac.credentialsNamespaces={team-b,creds}",
        ],
        "",
    );
    let docs = template("co", "ops", &sets, &[]).unwrap();
    let env = &one(&docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"];
    let watch = env.as_array().unwrap().iter().find(|e| e["name"] == "WATCH_NAMESPACE").unwrap();
    assert_eq!(watch["value"], "team-a,team-b");
    let in_namespace = |kind: &str, ns: &str| -> Vec<String> {
        of_kind(&docs, kind)
            .into_iter()
            .filter(|d| d["metadata"]["namespace"] == ns)
            .map(|d| d["metadata"]["name"].as_str().unwrap().to_string())
            .collect()
    };
    for ns in ["team-a", "team-b"] {
        assert_eq!(in_namespace("Role", ns), ["co-connector-operator"], "{ns}");
        assert_eq!(in_namespace("RoleBinding", ns), ["co-connector-operator"], "{ns}");
        let role = of_kind(&docs, "Role").into_iter().find(|d| d["metadata"]["namespace"] == ns).unwrap();
        assert_eq!(permissions(role), lines(NAMESPACED_PERMISSIONS), "{ns}");
    }
    assert_eq!(in_namespace("Role", "creds"), ["co-connector-operator-credentials"]);
}

/// One process watching two namespaces under the chart's RBAC for them (a Role in each, no
/// ClusterRole for the namespaced kinds): instances in both go Ready and no request is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_namespaces_run_on_a_role_in_each() {
    let client = support::client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let first = support::namespace(&client, "two-a").await;
    let second = support::namespace(&client, "two-b").await;
    let watch = format!("watchNamespaces={{{first},{second}}}");
    let rbac = Rbac::render(&first, &["rbac.namespaced=true", &watch, "leaderElection.enabled=false"]);
    assert!(!permissions(operator_cluster_role(&rbac.docs)).iter().any(|p| p.contains("connectorinstances")));
    rbac.install();
    let list = format!("{first},{second}");
    let env = Env::start_in(&first, &rbac.kubeconfig(), &["--namespace", &list]).await;
    support::operator::create_platform(&client, &second, &env.sim.base_url()).await;
    env.create_instance("echo", echo_spec()).await;
    env.wait_ready("echo").await;
    let other: Api<ConnectorInstance> = Api::namespaced(client.clone(), &second);
    let ci: ConnectorInstance = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
        "metadata": { "name": "echo" }, "spec": echo_spec(),
    }))
    .unwrap();
    other.create(&Default::default(), &ci).await.unwrap();
    support::operator::wait_ready_in(&other, "echo", Duration::from_secs(30)).await;
    let mut env = env;
    rbac.stop_and_assert_never_forbidden(&mut env).await;
}

/// The CRDs are templates (so `helm upgrade` upgrades them): exactly the generated ones, with the
/// chart's labels and, with `crds.keep` (the default), the keep policy; none with
/// `crds.enabled=false`.
#[test]
fn the_crds_are_templates_equal_to_the_generated_ones() {
    let docs = template("co", "ops", &[], &[]).unwrap();
    let rendered = of_kind(&docs, "CustomResourceDefinition");
    let generated = connector_operator::api::crd::all().map(|crd| serde_json::to_value(crd).unwrap());
    assert_eq!(rendered.len(), generated.len());
    for crd in &generated {
        let name = &crd["metadata"]["name"];
        let ours = rendered.iter().find(|r| r["metadata"]["name"] == *name).unwrap();
        // Helm's YAML round trip writes 1440.0 as 1440: numbers compare by value.
        assert_eq!(
            by_value(&ours["spec"]),
            by_value(&crd["spec"]),
            "{name}: the rendered CRD is the generated one"
        );
        assert_eq!(ours["metadata"]["annotations"]["helm.sh/resource-policy"], "keep", "{name}");
        assert_eq!(ours["metadata"]["labels"]["app.kubernetes.io/managed-by"], "Helm", "{name}");
    }
    let unkept = template("co", "ops", &["crds.keep=false".to_string()], &[]).unwrap();
    for crd in of_kind(&unkept, "CustomResourceDefinition") {
        assert!(crd["metadata"]["annotations"].get("helm.sh/resource-policy").is_none());
    }
    let none = template("co", "ops", &["crds.enabled=false".to_string()], &[]).unwrap();
    assert!(of_kind(&none, "CustomResourceDefinition").is_empty());
}

/// `value` with every number as a float, so that `1440` and `1440.0` compare equal.
fn by_value(value: &Value) -> Value {
    match value {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(items) => Value::Array(items.iter().map(by_value).collect()),
        Value::Object(map) => Value::Object(map.iter().map(|(k, v)| (k.clone(), by_value(v))).collect()),
        other => other.clone(),
    }
}

/// The ServiceMonitor can live in the monitoring namespace and carry relabelings, and still
/// selects the release's Service in the release namespace.
#[test]
fn the_service_monitor_takes_its_namespace_and_relabelings() {
    let sets = [
        "metrics.serviceMonitor.enabled=true",
        "metrics.serviceMonitor.namespace=monitoring",
        "metrics.serviceMonitor.relabelings[0].targetLabel=cluster",
        "metrics.serviceMonitor.relabelings[0].replacement=prod-eu",
        "metrics.serviceMonitor.metricRelabelings[0].action=drop",
        "metrics.serviceMonitor.metricRelabelings[0].regex=connector_operator_runtime_tasks",
        "metrics.serviceMonitor.metricRelabelings[0].sourceLabels={__name__}",
    ]
    .map(String::from);
    let docs = template("co", "ops", &sets, &[]).unwrap();
    let monitor = one(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["namespace"], "monitoring");
    assert_eq!(monitor["spec"]["namespaceSelector"]["matchNames"], json!(["ops"]));
    let endpoint = &monitor["spec"]["endpoints"][0];
    assert_eq!(endpoint["interval"], "30s");
    assert_eq!(endpoint["relabelings"][0]["targetLabel"], "cluster");
    assert_eq!(endpoint["metricRelabelings"][0]["sourceLabels"], json!(["__name__"]));
    let plain = template("co", "ops", &["metrics.serviceMonitor.enabled=true".to_string()], &[]).unwrap();
    let endpoint = &one(&plain, "ServiceMonitor")["spec"]["endpoints"][0];
    assert!(endpoint.get("relabelings").is_none() && endpoint.get("metricRelabelings").is_none());
}

/// A ClusterConnectorPlatform's status is written by the operators of the namespaces it serves,
/// not by every operator that watches it: a namespaced install for another namespace, which
/// cannot even read the platform's credentials Secret, checks the platform but never overwrites
/// its status (it used to write its own `forbidden`, and the owners' operator wrote `Ready` back:
/// a fight of status writes for as long as both ran).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_operators_of_the_namespaces_a_cluster_platform_serves_write_its_status() {
    use connector_operator::api::{ClusterConnectorPlatform, READY};
    let owners = Env::start("serves").await;
    let client = owners.client.clone();
    let namespaces: Api<Namespace> = Api::all(client.clone());
    let label = json!({ "metadata": { "labels": { "served-by": owners.ns } } });
    namespaces.patch(&owners.ns, &PatchParams::default(), &Patch::Merge(label)).await.unwrap();
    let name = format!("served-{}", owners.ns);
    let platforms: Api<ClusterConnectorPlatform> = Api::all(client.clone());
    let platform: ClusterConnectorPlatform = serde_json::from_value(json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ClusterConnectorPlatform",
        "metadata": { "name": name },
        "spec": { "baseUrl": owners.sim.base_url(), "insecureAllowHttp": true,
                  "credentialsSecretRef": { "name": support::operator::CREDENTIALS, "namespace": owners.ns },
                  "namespaceSelector": { "matchLabels": { "served-by": owners.ns } } },
    }))
    .unwrap();
    platforms.create(&Default::default(), &platform).await.unwrap();
    let ready = || async {
        let platform = platforms.get(&name).await.ok()?;
        find_condition(&platform.status?.conditions, READY).filter(|c| c.status == "True").cloned()
    };
    let written = eventually("the owners' operator to write Ready", Duration::from_secs(30), ready).await;

    // Another team's namespaced install: it watches cluster platforms but may not read Secrets
    // outside its namespace, and its namespace is not one the platform serves.
    let other = support::namespace(&client, "serves-other").await;
    let rbac = Rbac::render(
        &other,
        &["rbac.namespaced=true", "watchNamespaces={NS}", "leaderElection.enabled=false"],
    );
    rbac.install();
    let mut env = Env::start_in(&other, &rbac.kubeconfig(), &[]).await;
    // It sees the platform (its namespace's labels are read to know whether it may use it) ...
    eventually("the other operator to look at the platform", Duration::from_secs(30), || async {
        rbac.requests().iter().any(|(call, _)| call == "/namespaces: get").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    // ... and leaves it alone: it reads no Secret of another namespace, and nothing is refused.
    let refused: Vec<String> =
        rbac.requests().into_iter().filter(|(_, code)| *code == 403).map(|(call, _)| call).collect();
    assert!(refused.is_empty(), "the other operator was refused {refused:?}");
    let writes: Vec<String> = rbac
        .requests()
        .into_iter()
        .filter(|(call, _)| call.starts_with("openconnectors.io/clusterconnectorplatforms/status"))
        .map(|(call, code)| format!("{call} ({code})"))
        .collect();
    assert!(
        writes.is_empty(),
        "the other operator wrote the status of a platform it does not serve: {writes:?}"
    );
    let still = ready().await.expect("still Ready");
    assert_eq!(
        (still.reason.as_str(), still.last_transition_time.0),
        (written.reason.as_str(), written.last_transition_time.0),
        "unchanged"
    );
    let _ = env.operator.terminate(Duration::from_secs(15));
    platforms.delete(&name, &DeleteParams::default()).await.unwrap();
}

/// The single-file manifest for an install without Helm.
const MANIFEST: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/connector-operator.yaml");

/// `deploy/connector-operator.yaml` as the chart renders it with its defaults (CRDs included), in
/// the `connector-operator` namespace, which it creates.
fn single_file_manifest() -> String {
    let args = [
        "template",
        "connector-operator",
        CHART,
        "--namespace",
        "connector-operator",
        "--kube-version",
        "1.34.0",
    ];
    let rendered = run("helm", &args, None).unwrap();
    format!(
        "# connector-operator in one file: the Helm chart rendered with its default values, CRDs\n\
         # included, in namespace connector-operator. Generated; do not edit. Regenerate with\n\
         #   UPDATE_MANIFEST=1 cargo test --test chart the_single_file_manifest\n\
         # Apply with `kubectl apply --server-side -f deploy/connector-operator.yaml`, then point the\n\
         # Deployment at your image (see \"Install with plain kubectl\" in the README).\n\
         ---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: connector-operator\n{rendered}"
    )
}

/// The single-file manifest is the chart's rendering, kept in sync (a chart change that forgets
/// it fails here, saying how to regenerate it), and the API server accepts every object of it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_single_file_manifest_is_the_rendered_chart_and_applies() {
    let expected = single_file_manifest();
    if std::env::var_os("UPDATE_MANIFEST").is_some() {
        std::fs::write(MANIFEST, &expected).unwrap();
    }
    let committed = std::fs::read_to_string(MANIFEST).unwrap_or_default();
    assert!(
        committed == expected,
        "deploy/connector-operator.yaml is not the chart's current rendering; regenerate it with \
         `UPDATE_MANIFEST=1 cargo test --test chart the_single_file_manifest`"
    );
    // A server-side dry run of every object, in a namespace of the test's own.
    let client = support::client().await;
    let ns = support::namespace(&client, "manifest").await;
    let mut docs = Vec::new();
    for document in serde_norway::Deserializer::from_str(&committed) {
        let mut value = Value::deserialize(document).unwrap();
        if value.is_null() || value["kind"] == "Namespace" {
            continue;
        }
        if value["metadata"]["namespace"].is_string() {
            value["metadata"]["namespace"] = json!(ns);
        }
        docs.push(value);
    }
    let all: Vec<&Value> = docs.iter().collect();
    let output =
        run("kubectl", &["apply", "--server-side", "--dry-run=server", "-f", "-"], Some(&to_yaml(&all)))
            .unwrap_or_else(|e| panic!("{e}"));
    let accepted = output.lines().filter(|l| l.contains("(server dry run)")).count();
    assert_eq!(accepted, docs.len(), "every object accepted:\n{output}");
}

/// The README's shard pattern: a default release and a shard release in one namespace pass their
/// selectors and the platform-status switch to the operator, and no object of one has the name
/// (and kind) of an object of the other.
#[test]
fn shard_releases_render_their_selector_and_do_not_collide() {
    let env_of = |docs: &[Value]| -> std::collections::BTreeMap<String, String> {
        one(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]
            .as_array()
            .unwrap()
            .iter()
            .filter_map(|e| Some((e["name"].as_str()?.to_string(), e["value"].as_str()?.to_string())))
            .collect()
    };
    let default_sets = vec!["sharding.watchLabelSelector=!sharding.openconnectors.io/key".to_string()];
    let shard_sets = vec![
        "crds.enabled=false".to_string(),
        "sharding.watchLabelSelector=sharding.openconnectors.io/key=shard-1".to_string(),
        "sharding.platformStatus=false".to_string(),
    ];
    let default = template("co", "ops", &default_sets, &[]).unwrap();
    let shard = template("co-shard-1", "ops", &shard_sets, &[]).unwrap();
    let (default_env, shard_env) = (env_of(&default), env_of(&shard));
    assert_eq!(default_env["WATCH_LABEL_SELECTOR"], "!sharding.openconnectors.io/key");
    assert!(!default_env.contains_key("PLATFORM_STATUS"), "the default release writes platform status");
    assert_eq!(shard_env["WATCH_LABEL_SELECTOR"], "sharding.openconnectors.io/key=shard-1");
    assert_eq!(shard_env["PLATFORM_STATUS"], "false");
    let plain = template("co", "ops", &[], &[]).unwrap();
    assert!(!env_of(&plain).contains_key("WATCH_LABEL_SELECTOR"), "no selector by default");
    let names = |docs: &[Value]| -> BTreeSet<String> {
        docs.iter()
            .map(|d| {
                format!(
                    "{}/{}",
                    d["kind"].as_str().unwrap_or(""),
                    d["metadata"]["name"].as_str().unwrap_or("")
                )
            })
            .collect()
    };
    let shared: Vec<String> = names(&default).intersection(&names(&shard)).cloned().collect();
    assert!(shared.is_empty(), "objects both releases would own: {shared:?}");
}
