//! The real operator binary, the platform simulator and fixtures for end-to-end tests.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use connector_operator::api::{ConnectorInstance, ConnectorPlatform, READY, STALLED, find_condition};
use connector_operator::local::{self, ManagedChild};
use connector_operator::sim::{self, SimConfig, SimControl, SimHandle};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::{client, control_plane, eventually, namespace};

/// The operator binary running against the local control plane, scoped to one namespace.
#[derive(Debug)]
pub struct Operator {
    child: Option<ManagedChild>,
    namespace: String,
    log: PathBuf,
    extra_args: Vec<String>,
    /// The operator's kubeconfig; `None`: the control plane's operator user.
    kubeconfig: Option<PathBuf>,
    _dir: tempfile::TempDir,
}

/// `connector-operator oauth-callback`: the callback alone, as the chart runs it.
#[derive(Debug)]
pub struct CallbackProcess {
    child: Option<ManagedChild>,
    /// Where it listens (`127.0.0.1:PORT`).
    pub addr: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl CallbackProcess {
    /// Starts the callback on `addr`, verifying states with the key in `key_file`, with the
    /// credentials of `kubeconfig`.
    pub fn start(addr: &str, key_file: &std::path::Path, kubeconfig: &std::path::Path) -> CallbackProcess {
        let dir = tempfile::tempdir().unwrap();
        let log_path = dir.path().join("callback.log");
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_connector-operator"));
        command
            .args(["oauth-callback", "--addr", addr, "--state-key-file"])
            .arg(key_file)
            .env("KUBECONFIG", kubeconfig)
            .env("RUST_LOG", "info,connector_operator=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        let child = local::process::spawn("oauth-callback", command, &control_plane().pid_file()).unwrap();
        CallbackProcess { child: Some(child), addr: addr.to_string(), log: log_path, _dir: dir }
    }

    /// Its log so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// SIGTERM, and wait up to `grace` for the exit.
    pub fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        self.child.take().expect("running").stop(grace).unwrap()
    }
}

/// Starts `connector-operator` on a namespace of its own (named after `prefix`) with
/// `extra_args`, expecting it to refuse to start: its output (stdout and stderr), once it has
/// exited with a failure (within 30 s).
pub async fn refused_start(prefix: &str, extra_args: &[&str]) -> String {
    let client = client().await;
    connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
    let ns = namespace(&client, prefix).await;
    let child = tokio::process::Command::new(env!("CARGO_BIN_EXE_connector-operator"))
        .args(["--namespace", &ns, "--probe-addr", "127.0.0.1:0"])
        .args(extra_args)
        .env("KUBECONFIG", control_plane().operator_kubeconfig_path())
        .env("LOG_FORMAT", "text")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), child).await.expect("exits").unwrap();
    let text = String::from_utf8_lossy(&output.stdout).to_string() + &String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{text}");
    text
}

impl Operator {
    /// Starts `connector-operator` watching `namespace`, logging at debug level into a file.
    pub fn start(namespace: &str, extra_args: &[&str]) -> Operator {
        Self::start_as(namespace, None, extra_args)
    }

    /// Like [`Operator::start`], with the operator's credentials from `kubeconfig` (e.g. one that
    /// impersonates a ServiceAccount, to run it with exactly that account's permissions).
    pub fn start_with_kubeconfig(
        namespace: &str,
        kubeconfig: &std::path::Path,
        extra_args: &[&str],
    ) -> Operator {
        Self::start_as(namespace, Some(kubeconfig.to_path_buf()), extra_args)
    }

    fn start_as(namespace: &str, kubeconfig: Option<PathBuf>, extra_args: &[&str]) -> Operator {
        let dir = tempfile::tempdir().unwrap();
        let mut operator = Operator {
            child: None,
            namespace: namespace.to_string(),
            log: dir.path().join("operator.log"),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            kubeconfig,
            _dir: dir,
        };
        operator.restart();
        operator
    }

    /// Starts the operator again (after [`Operator::kill`]), appending to the same log.
    pub fn restart(&mut self) {
        let plane = control_plane();
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log).unwrap();
        let mut command = Command::new(env!("CARGO_BIN_EXE_connector-operator"));
        command
            .args(["--namespace", &self.namespace, "--probe-addr", "127.0.0.1:0", "--concurrency", "16"])
            .args(&self.extra_args)
            .env("KUBECONFIG", self.kubeconfig.clone().unwrap_or_else(|| plane.operator_kubeconfig_path()))
            .env("RUST_LOG", "info,connector_operator=debug")
            .env_remove("WATCH_NAMESPACE")
            // The simulator listens on loopback, outside the default allowed platform hosts.
            .env("ALLOWED_PLATFORM_HOSTS", "127.0.0.1")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        self.child = Some(local::process::spawn("connector-operator", command, &plane.pid_file()).unwrap());
    }

    /// The operator process's peak resident memory so far (`VmHWM`), in bytes.
    pub fn peak_rss_bytes(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").pid();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmHWM:")).expect("VmHWM in /proc/PID/status");
        let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        kib * 1024
    }

    /// SIGKILL, at once.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().unwrap();
        }
    }

    /// The address of /healthz, /readyz and /metrics (from the operator's log).
    fn probe_addr(&self) -> String {
        self.logs()
            .lines()
            .rev()
            .find_map(|line| {
                line.split("bound=")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
            })
            .expect("the operator logs its probe address")
    }

    /// GET one of the operator's endpoints: (status, body).
    pub async fn get(&self, path: &str) -> (u16, String) {
        let response = reqwest::get(format!("http://{}/{path}", self.probe_addr())).await.unwrap();
        (response.status().as_u16(), response.text().await.unwrap())
    }

    /// SIGTERM, and wait up to `grace` for the exit.
    pub fn terminate(&mut self, grace: Duration) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        child.stop(grace).unwrap()
    }

    /// The operator's whole `/metrics` text.
    pub async fn metrics_text(&self) -> String {
        let logs = self.logs();
        let addr = logs
            .lines()
            .rev()
            .find_map(|line| {
                line.split("bound=")
                    .nth(1)
                    .map(|rest| rest.split_whitespace().next().unwrap_or("").to_string())
            })
            .expect("the operator logs its probe address");
        reqwest::get(format!("http://{addr}/metrics")).await.unwrap().text().await.unwrap()
    }

    /// A counter of the operator's /metrics, summed over label sets whose labels contain `filter`.
    pub async fn metric(&self, name: &str, filter: &str) -> f64 {
        let text = self.metrics_text().await;
        text.lines()
            .filter(|line| line.starts_with(name) && line.contains(filter))
            .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Everything the operator logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Operator {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!("---- operator log ({}) ----\n{}", self.namespace, self.logs());
        }
    }
}

/// One end-to-end environment: a namespace, a simulator, a platform in that namespace, the operator.
pub struct Env {
    pub client: kube::Client,
    pub ns: String,
    pub sim: SimHandle,
    pub control: SimControl,
    pub operator: Operator,
}

/// The credentials Secret and ConnectorPlatform every test uses.
pub const PLATFORM: &str = "sim";
pub const CREDENTIALS: &str = "platform-credentials";

impl Env {
    /// Installs the CRDs, starts a simulator, creates a namespace with a platform pointing at it,
    /// and starts the operator on that namespace.
    pub async fn start(prefix: &str) -> Env {
        Self::start_with(prefix, &[]).await
    }

    /// An environment in the existing namespace `ns` (CRDs already installed), with the operator
    /// on `kubeconfig` (see [`Operator::start_with_kubeconfig`]).
    pub async fn start_in(ns: &str, kubeconfig: &std::path::Path, operator_args: &[&str]) -> Env {
        let client = client().await;
        let sim = sim::start(SimConfig::default()).await.unwrap();
        let control = sim.control().unwrap();
        create_platform(&client, ns, &sim.base_url()).await;
        let operator = Operator::start_with_kubeconfig(ns, kubeconfig, operator_args);
        Env { client, ns: ns.to_string(), sim, control, operator }
    }

    /// Like [`Env::start`], with extra operator arguments.
    pub async fn start_with(prefix: &str, operator_args: &[&str]) -> Env {
        let client = client().await;
        connector_operator::api::crd::install(&client, Duration::from_secs(30)).await.unwrap();
        let ns = namespace(&client, prefix).await;
        let sim = sim::start(SimConfig::default()).await.unwrap();
        let control = sim.control().unwrap();
        create_platform(&client, &ns, &sim.base_url()).await;
        let operator = Operator::start(&ns, operator_args);
        Env { client, ns, sim, control, operator }
    }

    pub fn instances(&self) -> Api<ConnectorInstance> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    pub fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), &self.ns)
    }

    /// Creates a Secret (string data).
    pub async fn put_secret(&self, name: &str, data: &[(&str, &str)]) {
        let secret = json!({
            "apiVersion": "v1", "kind": "Secret",
            "metadata": { "name": name },
            "stringData": data.iter().map(|(k, v)| (k.to_string(), json!(v))).collect::<serde_json::Map<_, _>>(),
        });
        self.secrets()
            .patch(name, &PatchParams::apply("e2e-test").force(), &Patch::Apply(&secret))
            .await
            .unwrap();
    }

    /// Creates a ConnectorInstance from a JSON spec.
    pub async fn create_instance(&self, name: &str, spec: serde_json::Value) -> ConnectorInstance {
        let ci: ConnectorInstance = serde_json::from_value(json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": name }, "spec": spec,
        }))
        .unwrap();
        self.instances().create(&PostParams::default(), &ci).await.unwrap()
    }

    /// Merge-patches a ConnectorInstance's spec.
    pub async fn patch_spec(&self, name: &str, spec: serde_json::Value) {
        self.instances()
            .patch(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": spec })))
            .await
            .unwrap();
    }

    /// Merge-patches a ConnectorInstance's annotations.
    pub async fn annotate(&self, name: &str, annotations: serde_json::Value) {
        let patch = json!({ "metadata": { "annotations": annotations } });
        self.instances().patch(name, &PatchParams::default(), &Patch::Merge(patch)).await.unwrap();
    }

    /// Waits until the instance is Ready for its current generation.
    pub async fn wait_ready(&self, name: &str) -> ConnectorInstance {
        wait_ready_in(&self.instances(), name, Duration::from_secs(30)).await
    }

    /// Waits until the instance is Ready and its status records `token` (the pass that wrote the
    /// token Secret writes the status right after).
    pub async fn wait_ready_with_token(&self, name: &str, token: &str) -> ConnectorInstance {
        let prefix =
            connector_operator::api::token_sha256(&secrecy::SecretString::from(token))[..12].to_string();
        eventually(
            &format!("ConnectorInstance {name} to record its new token"),
            Duration::from_secs(30),
            || {
                let prefix = prefix.clone();
                async move {
                    let ci = self.wait_ready(name).await;
                    (ci.status.as_ref()?.token_sha256.as_deref() == Some(prefix.as_str())).then_some(ci)
                }
            },
        )
        .await
    }

    /// Waits until the instance is Stalled for its current generation; returns (reason, message).
    pub async fn wait_stalled(&self, name: &str) -> (String, String) {
        self.wait_stalled_with(name, None).await
    }

    /// Waits until the instance is Stalled with `reason` (any reason when `None`).
    pub async fn wait_stalled_with(&self, name: &str, reason: Option<&str>) -> (String, String) {
        let api = self.instances();
        eventually(&format!("ConnectorInstance {name} to be Stalled"), Duration::from_secs(30), || {
            let api = api.clone();
            async move {
                let ci = api.get(name).await.ok()?;
                let status = ci.status.as_ref()?;
                let stalled = find_condition(&status.conditions, STALLED).filter(|c| c.status == "True")?;
                if reason.is_some_and(|r| r != stalled.reason) {
                    return None;
                }
                let ready = find_condition(&status.conditions, READY)?;
                (ready.status == "False" && status.observed_generation == ci.metadata.generation)
                    .then(|| (stalled.reason.clone(), stalled.message.clone()))
            }
        })
        .await
    }

    /// The token stored in an instance's Secret.
    pub async fn secret_token(&self, secret: &str) -> Option<String> {
        let secret = self.secrets().get_opt(secret).await.unwrap()?;
        let bytes = secret.data?.get("token")?.0.clone();
        String::from_utf8(bytes).ok()
    }

    /// The simulator's current token of an instance.
    pub async fn sim_token(&self, id: i64) -> Option<String> {
        self.control.instance(id).await.unwrap().map(|i| i.token)
    }

    /// A client of this environment's simulator with the default credentials, as another tool
    /// (or the platform's UI) would call it.
    pub fn platform_client(&self) -> connector_operator::platform::PlatformClient {
        let mut config = connector_operator::platform::PlatformConfig::new(
            self.sim.base_url(),
            sim::DEFAULT_USER_SECRET.into(),
            sim::DEFAULT_ORGANIZATION_SECRET.into(),
        );
        config.allow_http = true;
        connector_operator::platform::PlatformClient::new(config).unwrap()
    }

    /// Creates an `echo` instance on the platform directly (not through the operator).
    pub async fn create_remote(
        &self,
        name: &str,
        tags: &[&str],
    ) -> connector_operator::platform::ElementInstance {
        self.platform_client()
            .create_instance(&connector_operator::platform::InstanceRequest {
                element_key: "echo".into(),
                name: name.into(),
                tags: tags.iter().map(|t| t.to_string()).collect(),
                ..Default::default()
            })
            .await
            .unwrap()
    }

    /// Platform writes so far (simulator's count).
    pub async fn platform_writes(&self) -> u64 {
        self.control.calls().await.unwrap().writes
    }

    /// The Events of the test's namespace.
    pub async fn events(&self) -> Vec<k8s_openapi::api::events::v1::Event> {
        let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(self.client.clone(), &self.ns);
        events.list(&Default::default()).await.unwrap().items
    }

    /// Everything that can carry text a user reads: operator log, Events and instance statuses.
    pub async fn observable_text(&self) -> String {
        let events = self.events().await;
        let instances = self.instances().list(&Default::default()).await.unwrap();
        let mut text = self.operator.logs();
        text.push_str(&serde_json::to_string(&events).unwrap());
        for ci in instances {
            text.push_str(&serde_json::to_string(&ci.status).unwrap());
            text.push_str(&serde_json::to_string(&ci.annotations()).unwrap());
        }
        text
    }
}

/// The requests of the operator that wrote in namespace `ns`, from the API server's audit log.
pub fn operator_write_events(ns: &str) -> Vec<local::AuditEvent> {
    super::control_plane()
        .audit_events()
        .into_iter()
        .filter(|e| e.user == local::OPERATOR_USER && e.is_write())
        .filter(|e| e.namespace.as_deref() == Some(ns))
        .collect()
}

/// How many requests of the operator wrote in namespace `ns`.
pub fn operator_writes(ns: &str) -> usize {
    operator_write_events(ns).len()
}

impl Env {
    /// A quiet window of `window`, after a 2 s pause for the first pass to settle (Events and
    /// status writes still in flight): (platform calls, Kubernetes writes of the operator).
    pub async fn quiet_window(&self, window: Duration) -> (sim::CallCounts, usize) {
        tokio::time::sleep(Duration::from_secs(2)).await;
        let writes_before = operator_writes(&self.ns);
        self.control.reset_calls().await.unwrap();
        tokio::time::sleep(window).await;
        (self.control.calls().await.unwrap(), operator_writes(&self.ns) - writes_before)
    }

    /// No secret value (the platform credentials, every token the simulator issued, `extra`) in
    /// the operator's log, Events, statuses, instance annotations or metrics.
    pub async fn assert_no_secret_leaks(&self, extra: &[&str]) {
        let mut text = self.observable_text().await;
        text.push_str(&self.operator.metrics_text().await);
        let mut secrets: Vec<String> =
            vec![sim::DEFAULT_USER_SECRET.into(), sim::DEFAULT_ORGANIZATION_SECRET.into()];
        secrets.extend(self.control.instances().await.unwrap().into_iter().map(|i| i.token));
        secrets.extend(extra.iter().map(|s| s.to_string()));
        for secret in secrets {
            assert!(!text.contains(&secret), "a secret value appears in logs, events, status or metrics");
        }
        assert!(text.len() > 1000, "the scanned text is substantial ({} bytes)", text.len());
    }
}

/// Waits up to `timeout` until the instance `name` of `api` (any namespace) is Ready for its
/// current generation.
pub async fn wait_ready_in(api: &Api<ConnectorInstance>, name: &str, timeout: Duration) -> ConnectorInstance {
    eventually(&format!("ConnectorInstance {name} to be Ready"), timeout, || {
        let api = api.clone();
        async move {
            let ci = api.get(name).await.ok()?;
            let status = ci.status.as_ref()?;
            let ready = find_condition(&status.conditions, READY).is_some_and(|c| c.status == "True");
            (ready && status.observed_generation == ci.metadata.generation).then_some(ci)
        }
    })
    .await
}

/// Creates the credentials Secret and a ConnectorPlatform pointing at the simulator.
pub async fn create_platform(client: &kube::Client, ns: &str, base_url: &str) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "metadata": { "name": CREDENTIALS },
        "stringData": { "userSecret": sim::DEFAULT_USER_SECRET, "organizationSecret": sim::DEFAULT_ORGANIZATION_SECRET },
    });
    secrets
        .patch(CREDENTIALS, &PatchParams::apply("e2e-test").force(), &Patch::Apply(&secret))
        .await
        .unwrap();
    let platforms: Api<ConnectorPlatform> = Api::namespaced(client.clone(), ns);
    let platform = json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorPlatform", "metadata": { "name": PLATFORM },
        "spec": { "baseUrl": base_url, "insecureAllowHttp": true, "credentialsSecretRef": { "name": CREDENTIALS },
                  "requestsPerSecond": 1000 },
    });
    platforms
        .patch(PLATFORM, &PatchParams::apply("e2e-test").force(), &Patch::Apply(&platform))
        .await
        .unwrap();
}

/// A zendesk instance spec whose password comes from Secret `zendesk-login`.
pub fn zendesk_spec() -> serde_json::Value {
    json!({
        "platformRef": { "name": PLATFORM },
        "connector": "zendesk",
        "configuration": { "username": "agent@example.com", "zendesk.subdomain": "acme" },
        "configurationFrom": [ { "key": "password", "secretKeyRef": { "name": "zendesk-login", "key": "password" } } ],
    })
}

/// The simulator's `echo` connector needs no configuration.
pub fn echo_spec() -> serde_json::Value {
    json!({ "platformRef": { "name": PLATFORM }, "connector": "echo" })
}
