//! A real, local Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager) on
//! loopback, for the end-to-end tests and the quick start.
//!
//! The binaries come from `tests/cluster/provision.sh`, which builds etcd, kube-apiserver and
//! kube-controller-manager from the Go module proxy and caches them. Every process is
//! started through [`process::spawn`], so none outlives the process that started it, and runs left
//! behind by a killed process are cleaned up through their pid files ([`state`]).

pub mod process;
pub mod state;

use std::fmt::Write as _;
use std::fs;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use kube::config::{KubeConfigOptions, Kubeconfig};

pub use process::ManagedChild;

/// Kubernetes version of the locally built control plane, unless `CONNECTOR_OPERATOR_KUBE_VERSION`
/// names another one that `tests/cluster/provision.sh` has a build module for.
pub const KUBE_VERSION: &str = "v1.34.4";

/// Where `tests/cluster/provision.sh` keeps the Go build modules of the control plane.
pub const BUILD_MODULES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/build");

/// The Kubernetes version the local control plane runs: `CONNECTOR_OPERATOR_KUBE_VERSION`, else
/// [`KUBE_VERSION`].
pub fn kube_version() -> String {
    std::env::var("CONNECTOR_OPERATOR_KUBE_VERSION")
        .ok()
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| KUBE_VERSION.into())
}

/// The etcd version that goes with [`kube_version`] (`etcd-version` of its build module), or
/// `unknown` when there is no such build module (the provision script then says so).
pub fn etcd_version() -> String {
    let file = Path::new(BUILD_MODULES).join(format!("kube-{}", kube_version())).join("etcd-version");
    fs::read_to_string(file).map(|v| v.trim().to_string()).unwrap_or_else(|_| "unknown".into())
}

/// Errors of the local control plane.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    /// A binary is not installed or not built yet.
    #[error(
        "{what} not found at {path}: run `tests/cluster/provision.sh` (it installs etcd and builds the control plane), or set {env}"
    )]
    MissingBinary {
        /// Which binary.
        what: &'static str,
        /// Where it was looked for.
        path: PathBuf,
        /// Environment variable that overrides the location.
        env: &'static str,
    },
    /// A file or process operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: String,
        /// The cause.
        source: std::io::Error,
    },
    /// A component did not become ready in time or exited.
    #[error("{component} did not become ready: {reason} (log: {log})")]
    NotReady {
        /// Which component.
        component: &'static str,
        /// Why.
        reason: String,
        /// Its log file.
        log: PathBuf,
    },
    /// The operator's CRDs could not be installed.
    #[error("install the CRDs: {0}")]
    Crds(String),
    /// The generated kubeconfig could not be loaded.
    #[error("kubeconfig: {0}")]
    Kubeconfig(String),
}

fn io_err(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> LocalError {
    let context = context.into();
    move |source| LocalError::Io { context, source }
}

/// Where the control-plane binaries are.
#[derive(Debug, Clone)]
pub struct Binaries {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// kube-controller-manager.
    pub kube_controller_manager: PathBuf,
}

/// The cache directory of `tests/cluster/provision.sh`.
pub fn cache_dir() -> PathBuf {
    std::env::var_os("CONNECTOR_OPERATOR_CACHE").map(PathBuf::from).unwrap_or_else(|| {
        let home = std::env::var_os("HOME").map(PathBuf::from).unwrap_or_else(|| "/root".into());
        home.join(".cache").join("connector-operator")
    })
}

/// The script that installs etcd and builds the control plane (part of this repository).
pub const PROVISION_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/cluster/provision.sh");

impl Binaries {
    /// Finds the binaries; when they are missing, runs [`PROVISION_SCRIPT`] once (it builds etcd
    /// and the control plane for [`kube_version`], about 5 minutes on 2 cores) and looks again.
    pub fn locate_or_provision() -> Result<Self, LocalError> {
        if let Ok(found) = Self::locate() {
            return Ok(found);
        }
        eprintln!("control plane binaries missing: running {PROVISION_SCRIPT} (first run only)");
        let status = Command::new("bash")
            .arg(PROVISION_SCRIPT)
            .stdout(Stdio::null())
            .status()
            .map_err(io_err(format!("run {PROVISION_SCRIPT}")))?;
        if !status.success() {
            return Err(LocalError::Kubeconfig(format!("{PROVISION_SCRIPT} failed with {status}")));
        }
        Self::locate()
    }

    /// Finds the binaries: `KUBE_BIN_DIR` (else the provision cache for [`kube_version`]) and
    /// `ETCD_BIN` (else the provision cache's etcd).
    pub fn locate() -> Result<Self, LocalError> {
        let kube_dir = std::env::var_os("KUBE_BIN_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join(format!("kube-{}", kube_version())).join("bin"));
        let etcd = std::env::var_os("ETCD_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| cache_dir().join(format!("etcd-{}", etcd_version())).join("bin").join("etcd"));
        let found = |what, path: PathBuf, env| {
            if path.is_file() { Ok(path) } else { Err(LocalError::MissingBinary { what, path, env }) }
        };
        Ok(Self {
            etcd: found("etcd", etcd, "ETCD_BIN")?,
            kube_apiserver: found("kube-apiserver", kube_dir.join("kube-apiserver"), "KUBE_BIN_DIR")?,
            kube_controller_manager: found(
                "kube-controller-manager",
                kube_dir.join("kube-controller-manager"),
                "KUBE_BIN_DIR",
            )?,
        })
    }
}

/// User name of the operator's own credentials (see [`LocalControlPlane::operator_kubeconfig_path`]),
/// so that its requests can be told apart in the audit log.
pub const OPERATOR_USER: &str = "connector-operator";

/// One request recorded in the API server's audit log.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct AuditEvent {
    /// `get`, `list`, `watch`, `create`, `update`, `patch`, `delete`, ...
    pub verb: String,
    /// Who made the request.
    pub user: String,
    /// Resource (`secrets`, `connectorinstances`, ...).
    pub resource: String,
    /// Subresource (`status`), if any.
    pub subresource: Option<String>,
    /// Namespace, if any.
    pub namespace: Option<String>,
    /// Object name, if any.
    pub name: Option<String>,
    /// HTTP status code of the answer.
    pub code: Option<u16>,
}

impl AuditEvent {
    /// Whether the request writes (create, update, patch, delete).
    pub fn is_write(&self) -> bool {
        matches!(self.verb.as_str(), "create" | "update" | "patch" | "delete" | "deletecollection")
    }
}

/// Options of [`LocalControlPlane::start`].
#[derive(Debug, Clone)]
pub struct Options {
    /// Also run kube-controller-manager (garbage collector, namespace controller, and the
    /// aggregation of ClusterRoles into `edit` / `view`).
    pub controller_manager: bool,
    /// Prefix of the run directory name.
    pub name: String,
    /// How long to wait for readiness.
    pub ready_timeout: Duration,
    /// Record every request (metadata level) in `audit.log` of the run directory.
    pub audit: bool,
    /// Serve the API server's `/debug/pprof` endpoints (for profiling benchmarks).
    pub profiling: bool,
    /// Install the operator's CRDs before kube-controller-manager starts, so that its garbage
    /// collector knows them from its first discovery (it looks again only every 30 s, and until
    /// then does not collect the token Secrets of deleted ConnectorInstances).
    pub crds: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            controller_manager: true,
            name: "cluster".into(),
            ready_timeout: Duration::from_secs(60),
            audit: true,
            profiling: false,
            crds: true,
        }
    }
}

/// A running local control plane. Dropping it stops every process and removes its directory.
#[derive(Debug)]
pub struct LocalControlPlane {
    dir: PathBuf,
    server: String,
    token: String,
    operator_token: String,
    kubeconfig: PathBuf,
    children: Vec<ManagedChild>,
    started_in: Duration,
    /// The API server's own `gitVersion` (from `/version`).
    version: String,
    /// Program and arguments of kube-apiserver, to restart it.
    apiserver_command: Option<(std::ffi::OsString, Vec<std::ffi::OsString>)>,
}

/// Picks a free loopback port (the OS's choice of an ephemeral port, released at once).
pub fn free_port() -> std::io::Result<u16> {
    Ok(TcpListener::bind(("127.0.0.1", 0))?.local_addr()?.port())
}

impl LocalControlPlane {
    /// Starts etcd, kube-apiserver and (optionally) kube-controller-manager on free loopback
    /// ports, and waits until the API server is ready. Retries once on a port clash.
    pub async fn start(options: Options) -> Result<Self, LocalError> {
        let binaries = Binaries::locate_or_provision()?;
        let mut last_error = None;
        for _ in 0..3 {
            match Self::start_once(&binaries, &options).await {
                Ok(plane) => return Ok(plane),
                Err(err) => {
                    tracing::warn!(%err, "local control plane failed to start; retrying on new ports");
                    last_error = Some(err);
                }
            }
        }
        Err(last_error.unwrap_or_else(|| LocalError::Kubeconfig("no attempt made".into())))
    }

    async fn start_once(binaries: &Binaries, options: &Options) -> Result<Self, LocalError> {
        let began = Instant::now();
        let dir = state::new_run_dir(&options.name).map_err(io_err("create run directory"))?;
        let mut plane = Self {
            server: String::new(),
            token: format!("admin-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            operator_token: format!("operator-{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..)),
            kubeconfig: dir.join("kubeconfig"),
            dir,
            children: Vec::new(),
            started_in: Duration::ZERO,
            version: String::new(),
            apiserver_command: None,
        };
        let etcd_port = free_port().map_err(io_err("pick etcd port"))?;
        let peer_port = free_port().map_err(io_err("pick etcd peer port"))?;
        let api_port = free_port().map_err(io_err("pick apiserver port"))?;
        plane.server = format!("https://127.0.0.1:{api_port}");

        plane.write_credentials()?;
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let mut etcd = Command::new(&binaries.etcd);
        etcd.args(["--name", "local", "--data-dir"])
            .arg(plane.dir.join("etcd"))
            .args(["--listen-client-urls", &etcd_url, "--advertise-client-urls", &etcd_url])
            .args(["--listen-peer-urls", &peer_url, "--initial-advertise-peer-urls", &peer_url])
            .args(["--initial-cluster", &format!("local={peer_url}"), "--unsafe-no-fsync"])
            .args(["--quota-backend-bytes", &(8u64 << 30).to_string()]);
        plane.spawn("etcd", etcd)?;

        let mut apiserver = Command::new(&binaries.kube_apiserver);
        apiserver
            .args(["--etcd-servers", &etcd_url, "--bind-address", "127.0.0.1"])
            .args(["--secure-port", &api_port.to_string()])
            // No `kubernetes` Service endpoints: nothing in-cluster needs them, and from 1.37 on
            // the endpoint reconciler refuses a loopback advertise address.
            .args(["--advertise-address", "127.0.0.1", "--endpoint-reconciler-type", "none", "--cert-dir"])
            .arg(plane.dir.join("certs"))
            .arg("--token-auth-file")
            .arg(plane.dir.join("tokens.csv"))
            .args(["--authorization-mode", "RBAC"])
            // As OpenShift and hardened clusters run it: setting `blockOwnerDeletion` on an owner
            // reference needs `update` on the owner's `finalizers`.
            .args(["--enable-admission-plugins", "OwnerReferencesPermissionEnforcement"])
            .args(["--service-account-issuer", "https://kubernetes.default.svc"])
            .arg("--service-account-key-file")
            .arg(plane.dir.join("sa.pub"))
            .arg("--service-account-signing-key-file")
            .arg(plane.dir.join("sa.key"))
            .args(["--service-cluster-ip-range", "10.0.0.0/24"])
            .arg(format!("--profiling={}", options.profiling))
            .args(["--max-requests-inflight", "2000", "--max-mutating-requests-inflight", "1000"]);
        if options.audit {
            fs::write(
                plane.dir.join("audit-policy.yaml"),
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n",
            )
            .map_err(io_err("write audit policy"))?;
            apiserver
                .arg("--audit-policy-file")
                .arg(plane.dir.join("audit-policy.yaml"))
                .arg("--audit-log-path")
                .arg(plane.dir.join("audit.log"))
                .args(["--audit-log-format", "json", "--audit-log-maxsize", "100000"]);
        }
        plane.apiserver_command =
            Some((apiserver.get_program().to_owned(), apiserver.get_args().map(|a| a.to_owned()).collect()));
        plane.spawn("kube-apiserver", apiserver)?;
        plane.wait_ready(options.ready_timeout).await?;
        let client = plane.client().await?;
        plane.version = client
            .apiserver_version()
            .await
            .map_err(|e| LocalError::NotReady {
                component: "kube-apiserver",
                reason: format!("/version: {e}"),
                log: plane.dir.join("kube-apiserver.log"),
            })?
            .git_version;
        if options.crds {
            crate::api::crd::install(&client, options.ready_timeout)
                .await
                .map_err(|e| LocalError::Crds(e.to_string()))?;
        }

        if options.controller_manager {
            let mut kcm = Command::new(&binaries.kube_controller_manager);
            kcm.arg("--kubeconfig")
                .arg(&plane.kubeconfig)
                .args([
                    "--controllers=garbagecollector,namespace,clusterrole-aggregation",
                    "--leader-elect=false",
                ])
                .args(["--secure-port=0", "--kube-api-qps=200", "--kube-api-burst=400"]);
            plane.spawn("kube-controller-manager", kcm)?;
        }
        plane.started_in = began.elapsed();
        Ok(plane)
    }

    fn spawn(&mut self, name: &str, mut command: Command) -> Result<(), LocalError> {
        let log = fs::File::create(self.dir.join(format!("{name}.log")))
            .map_err(io_err(format!("create {name}.log")))?;
        let log_err = log.try_clone().map_err(io_err(format!("open {name}.log")))?;
        command.stdin(Stdio::null()).stdout(log).stderr(log_err);
        let child =
            process::spawn(name, command, &self.dir.join("pids")).map_err(io_err(format!("start {name}")))?;
        self.children.push(child);
        Ok(())
    }

    fn write_credentials(&self) -> Result<(), LocalError> {
        fs::create_dir_all(self.dir.join("certs")).map_err(io_err("create certs dir"))?;
        let tokens = format!(
            "{},admin,admin,\"system:masters\"\n{},{OPERATOR_USER},{OPERATOR_USER},\"system:masters\"\n",
            self.token, self.operator_token
        );
        fs::write(self.dir.join("tokens.csv"), tokens).map_err(io_err("write tokens.csv"))?;
        let key = self.dir.join("sa.key");
        let status = Command::new("openssl")
            .args(["genrsa", "-out"])
            .arg(&key)
            .arg("2048")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io_err("run openssl genrsa (is openssl installed?)"))?;
        let status2 = Command::new("openssl")
            .args(["rsa", "-in"])
            .arg(&key)
            .args(["-pubout", "-out"])
            .arg(self.dir.join("sa.pub"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(io_err("run openssl rsa"))?;
        if !status.success() || !status2.success() {
            return Err(LocalError::Kubeconfig(
                "openssl failed to create the service-account key pair".into(),
            ));
        }
        self.write_kubeconfig(&self.kubeconfig, "admin", &self.token)?;
        self.write_kubeconfig(&self.operator_kubeconfig_path(), OPERATOR_USER, &self.operator_token)
    }

    fn write_kubeconfig(&self, path: &Path, user: &str, token: &str) -> Result<(), LocalError> {
        let mut kubeconfig = String::new();
        let _ = write!(
            kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: local\n  context:\n    cluster: local\n    user: {user}\n    namespace: default\n\
             current-context: local\n",
            server = self.server,
            ca = self.dir.join("certs").join("apiserver.crt").display(),
        );
        fs::write(path, kubeconfig).map_err(io_err("write kubeconfig"))
    }

    async fn wait_ready(&mut self, timeout: Duration) -> Result<(), LocalError> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("no answer yet");
        while Instant::now() < deadline {
            for child in &mut self.children {
                if let Ok(Some(status)) = child.try_wait() {
                    return Err(LocalError::NotReady {
                        component: if child.name() == "etcd" { "etcd" } else { "kube-apiserver" },
                        reason: format!("exited with {status}"),
                        log: self.dir.join(format!("{}.log", child.name())),
                    });
                }
            }
            // The serving certificate appears once the API server has started listening.
            if self.dir.join("certs").join("apiserver.crt").is_file() {
                match self.readyz().await {
                    Ok(()) => return Ok(()),
                    Err(err) => last = err,
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(LocalError::NotReady {
            component: "kube-apiserver",
            reason: format!("timed out after {timeout:?}: {last}"),
            log: self.dir.join("kube-apiserver.log"),
        })
    }

    async fn readyz(&self) -> Result<(), String> {
        let client = kube::Client::try_from(self.config().await.map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;
        let request = http_request("/readyz").map_err(|e| e.to_string())?;
        match client.request_text(request).await {
            Ok(body) if body.trim() == "ok" => Ok(()),
            Ok(body) => Err(format!("readyz answered {body:?}")),
            Err(err) => Err(err.to_string()),
        }
    }

    /// A kube client configuration for the admin user.
    pub async fn config(&self) -> Result<kube::Config, LocalError> {
        let kubeconfig =
            Kubeconfig::read_from(&self.kubeconfig).map_err(|e| LocalError::Kubeconfig(e.to_string()))?;
        kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .map_err(|e| LocalError::Kubeconfig(e.to_string()))
    }

    /// A kube client for the admin user, bound to the current tokio runtime.
    pub async fn client(&self) -> Result<kube::Client, LocalError> {
        kube::Client::try_from(self.config().await?).map_err(|e| LocalError::Kubeconfig(e.to_string()))
    }

    /// The kubeconfig file (admin user), for kubectl and the operator binary.
    pub fn kubeconfig_path(&self) -> &Path {
        &self.kubeconfig
    }

    /// A kubeconfig file for the operator's own user ([`OPERATOR_USER`], cluster admin here), so
    /// the audit log tells its requests apart.
    pub fn operator_kubeconfig_path(&self) -> PathBuf {
        self.dir.join("kubeconfig-operator")
    }

    /// Writes a kubeconfig whose requests act as `user` in `groups` (the admin token with
    /// `as` / `as-groups`; the admin is in `system:masters`, so it may impersonate) and returns its
    /// path. For a ServiceAccount: `system:serviceaccount:<ns>:<name>` with the groups
    /// `system:serviceaccounts`, `system:serviceaccounts:<ns>` and `system:authenticated` — its
    /// requests then get exactly the RBAC permissions bound to that ServiceAccount.
    pub fn impersonating_kubeconfig(&self, user: &str, groups: &[&str]) -> Result<PathBuf, LocalError> {
        let file: String =
            user.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
        let path = self.dir.join(format!("kubeconfig-as-{file}"));
        // JSON strings are YAML scalars: quoting through serde_json keeps any name intact.
        let quote = |text: &str| serde_json::Value::from(text).to_string();
        let mut kubeconfig = String::new();
        let _ = write!(
            kubeconfig,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: local\n  cluster:\n    server: {server}\n    certificate-authority: {ca}\n\
             users:\n- name: impersonated\n  user:\n    token: {token}\n    as: {user}\n    as-groups: [{groups}]\n\
             contexts:\n- name: local\n  context:\n    cluster: local\n    user: impersonated\n    namespace: default\n\
             current-context: local\n",
            server = self.server,
            ca = quote(&self.dir.join("certs").join("apiserver.crt").display().to_string()),
            token = self.token,
            user = quote(user),
            groups = groups.iter().map(|g| quote(g)).collect::<Vec<_>>().join(", "),
        );
        fs::write(&path, kubeconfig).map_err(io_err("write impersonating kubeconfig"))?;
        Ok(path)
    }

    /// Every request recorded in the audit log so far (empty without `Options::audit`).
    pub fn audit_events(&self) -> Vec<AuditEvent> {
        #[derive(serde::Deserialize)]
        struct Raw {
            verb: String,
            stage: String,
            user: RawUser,
            #[serde(rename = "objectRef")]
            object_ref: Option<RawRef>,
            #[serde(rename = "responseStatus")]
            response_status: Option<RawStatus>,
        }
        #[derive(serde::Deserialize)]
        struct RawUser {
            username: String,
        }
        #[derive(serde::Deserialize)]
        struct RawRef {
            resource: Option<String>,
            subresource: Option<String>,
            namespace: Option<String>,
            name: Option<String>,
        }
        #[derive(serde::Deserialize)]
        struct RawStatus {
            code: Option<u16>,
        }
        let text = fs::read_to_string(self.dir.join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|line| serde_json::from_str::<Raw>(line).ok())
            .filter(|raw| raw.stage == "ResponseComplete")
            .map(|raw| {
                let object = raw.object_ref.unwrap_or(RawRef {
                    resource: None,
                    subresource: None,
                    namespace: None,
                    name: None,
                });
                AuditEvent {
                    verb: raw.verb,
                    user: raw.user.username,
                    resource: object.resource.unwrap_or_default(),
                    subresource: object.subresource,
                    namespace: object.namespace,
                    name: object.name,
                    code: raw.response_status.and_then(|s| s.code),
                }
            })
            .collect()
    }

    /// The API server URL.
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The run directory (logs, certificates, etcd data).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The pid file children of this run are recorded in; other processes a test starts (the
    /// operator) belong there too, so a crashed run's clean-up finds them.
    pub fn pid_file(&self) -> PathBuf {
        self.dir.join("pids")
    }

    /// How long start-up took, until the API server was ready.
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// The version the API server reports (`gitVersion` of `/version`, e.g. `v1.34.4`).
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The pids of the control-plane processes.
    pub fn pids(&self) -> Vec<u32> {
        self.children.iter().map(ManagedChild::pid).collect()
    }

    /// Restarts kube-apiserver (SIGKILL, then the same command line) and waits until it is ready:
    /// clients see their connections and watches break, as in an API server upgrade or crash.
    pub async fn restart_apiserver(&mut self) -> Result<Duration, LocalError> {
        let began = Instant::now();
        let (program, args) = self.apiserver_command.clone().ok_or_else(|| LocalError::NotReady {
            component: "kube-apiserver",
            reason: "not started by this control plane".into(),
            log: self.dir.join("kube-apiserver.log"),
        })?;
        if let Some(index) = self.children.iter().position(|c| c.name() == "kube-apiserver") {
            let mut old = self.children.remove(index);
            old.kill().map_err(io_err("stop kube-apiserver"))?;
        }
        let mut command = Command::new(program);
        command.args(args);
        self.spawn("kube-apiserver", command)?;
        self.wait_ready(Duration::from_secs(60)).await?;
        Ok(began.elapsed())
    }

    /// Stops every process (SIGTERM, then SIGKILL) and removes the run directory.
    pub fn stop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.stop(Duration::from_secs(5));
        }
        self.children.clear();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

impl Drop for LocalControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http_request(path: &str) -> Result<http::Request<Vec<u8>>, http::Error> {
    http::Request::get(path).body(Vec::new())
}
