//! `connector-operator`: runs the controllers, serves the OAuth callback alone, or prints the CRDs.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use connector_operator::controller::{self, RunOptions, Settings};
use connector_operator::leader::{self, LeaderOptions};
use connector_operator::metrics::Metrics;
use connector_operator::oauth::{self, StateKey};
use connector_operator::{api, http, platform};
use tracing_subscriber::EnvFilter;

/// How often the OAuth state key file is read again.
const STATE_KEY_RELOAD: std::time::Duration = std::time::Duration::from_secs(5);

/// Manages SAP Open Connectors connector instances declared as Kubernetes resources.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Option<Command>,
    #[command(flatten)]
    run: RunArgs,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the controllers (the default).
    Run,
    /// Serve only the OAuth callback (`/oauth/callback`, and `/healthz`): the public endpoint,
    /// run on its own with rights of its own (read ConnectorInstances, create grant Secrets), so
    /// that what faces the internet holds none of the operator's rights. It verifies the `state`
    /// with the key the operator signs with (the same file).
    OauthCallback(CallbackArgs),
    /// Print the CustomResourceDefinitions as YAML (what `crds/` holds).
    Crd {
        /// Write one file per CRD into this directory instead of printing.
        #[arg(long)]
        out_dir: Option<std::path::PathBuf>,
    },
}

#[derive(Debug, clap::Args)]
struct CallbackArgs {
    /// Address to serve the callback on.
    #[arg(long, env = "OAUTH_CALLBACK_ADDR", default_value = "0.0.0.0:8082")]
    addr: SocketAddr,
    /// The file holding the operator's OAuth state key (read again every 5 s).
    #[arg(long, env = "OAUTH_STATE_KEY_FILE")]
    state_key_file: std::path::PathBuf,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, clap::Args)]
struct RunArgs {
    /// Watch only these namespaces, comma-separated (default: all namespaces). Each is watched on
    /// its own, so that each needs only a Role in it.
    #[arg(long, alias = "namespaces", env = "WATCH_NAMESPACE", value_delimiter = ',')]
    namespace: Vec<String>,
    /// ConnectorInstance reconciles running at once.
    #[arg(long, env = "CONCURRENCY", default_value_t = 64)]
    concurrency: u16,
    /// Reconcile only the ConnectorInstances this label selector matches (Kubernetes syntax, e.g.
    /// `sharding.openconnectors.io/key=shard-1`, or `!sharding.openconnectors.io/key` for the
    /// default shard): one shard of several, each a release with its own lease. An instance
    /// relabeled into another shard is handed over to it (see "Scale out" in the README).
    #[arg(long, env = "WATCH_LABEL_SELECTOR")]
    watch_label_selector: Option<String>,
    /// Write the status of ConnectorPlatforms and ClusterConnectorPlatforms. Every shard checks
    /// the platforms its instances use; one shard (the default one) writes their status, the
    /// others run with `--platform-status=false`.
    #[arg(long, env = "PLATFORM_STATUS", default_value_t = true, action = clap::ArgAction::Set)]
    platform_status: bool,
    /// Identifies this cluster to the platform (default: the `kube-system` namespace UID): remote
    /// instances carry it in a tag, and a resource re-created with the same namespace and name
    /// (restored from Git or a backup) adopts its remote instance instead of creating another.
    /// Set the same id to restore into a new cluster. An operator of some namespaces
    /// (`--namespace`) reads no `kube-system`: without this, its re-created resources get new
    /// remote instances.
    #[arg(long, env = "CLUSTER_ID")]
    cluster_id: Option<String>,
    /// Resync interval of instances that set none (e.g. `10m`).
    #[arg(long, env = "DEFAULT_RESYNC_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    default_resync: Duration,
    /// Timeout of each platform request.
    #[arg(long, env = "PLATFORM_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    platform_timeout: Duration,
    /// Platform requests per second when a platform object sets none.
    #[arg(long, env = "DEFAULT_REQUESTS_PER_SECOND", default_value_t = 50)]
    default_requests_per_second: u32,
    /// Address of /healthz, /readyz and /metrics.
    #[arg(long, env = "PROBE_ADDR", default_value = "0.0.0.0:8080")]
    probe_addr: SocketAddr,
    /// Log format.
    #[arg(long, env = "LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// Name of this replica in Events and in the leader lease (the pod name in a cluster).
    #[arg(long, env = "POD_NAME")]
    instance_name: Option<String>,
    /// Run the controllers only while holding the leader lease (for more than one replica).
    #[arg(long, env = "LEADER_ELECT")]
    leader_elect: bool,
    /// Namespace of the leader lease (default: the pod's namespace, else `default`).
    #[arg(long, env = "LEADER_ELECTION_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// Name of the leader lease.
    #[arg(long, env = "LEADER_ELECTION_LEASE_NAME", default_value = "connector-operator")]
    leader_election_lease_name: String,
    /// How long the lease is valid without renewal: the longest a standby waits after the
    /// leader died.
    #[arg(long, env = "LEADER_ELECTION_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// Watch and use ClusterConnectorPlatforms. `false` for an install without cluster rights:
    /// nothing cluster-scoped is read, and an instance naming a ClusterConnectorPlatform is
    /// Stalled (`ClusterPlatformsDisabled`).
    #[arg(long, env = "CLUSTER_PLATFORMS", default_value_t = true, action = clap::ArgAction::Set)]
    cluster_platforms: bool,
    /// Serve the OAuth callback (`/oauth/callback`) in this process too, on this address, e.g.
    /// `0.0.0.0:8082` (a single-process install; the chart runs `oauth-callback` on its own
    /// instead). Off when not set. Every replica serves it.
    #[arg(long, env = "OAUTH_CALLBACK_ADDR")]
    oauth_callback_addr: Option<SocketAddr>,
    /// The public URL of the OAuth callback, as registered at the providers (e.g.
    /// `https://connectors.example.com/oauth/callback`): the redirect URI of instances whose
    /// spec.oauth names none.
    #[arg(long, env = "OAUTH_CALLBACK_URL")]
    oauth_callback_url: Option<String>,
    /// A file holding the key (at least 32 bytes) that signs the OAuth `state`; shared by all
    /// replicas. It is read again every 5 s: after a change the new key signs, and URLs signed
    /// with the one before are still accepted. Without it each process draws a random key, and
    /// the authorization URLs published before a restart are replaced after it.
    #[arg(long, env = "OAUTH_STATE_KEY_FILE")]
    oauth_state_key_file: Option<std::path::PathBuf>,
    /// After the state key file changed, how long the previous key still signs (it verifies
    /// either way): the time every process verifying states (replicas, the callback Deployment)
    /// needs to see the new file.
    #[arg(long, env = "OAUTH_STATE_KEY_SIGN_DELAY", default_value = "150s", value_parser = parse_duration, hide = true)]
    oauth_state_key_sign_delay: Duration,
    /// Export one `instance_condition` series per condition of each ConnectorInstance (with its
    /// namespace and name): alerting per object, at a cardinality that grows with the instances.
    #[arg(long, env = "METRICS_PER_INSTANCE", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    metrics_per_instance: bool,
    /// How long a published OAuth authorization URL is accepted.
    #[arg(long, env = "OAUTH_AUTHORIZATION_TTL", default_value = "1h", value_parser = parse_duration)]
    oauth_authorization_ttl: Duration,
    /// Hosts a platform's base URL may name besides the SAP Open Connectors hosts
    /// (`*.openconnectors.*.ondemand.com`), comma-separated: host names, IP addresses, or
    /// patterns where `*` stands for one or more labels (`*.example.com`). A platform on any other
    /// host is Stalled (`PlatformHostNotAllowed`) without a call.
    #[arg(long, env = "ALLOWED_PLATFORM_HOSTS", value_delimiter = ',')]
    allowed_platform_hosts: Vec<String>,
    /// Restart the workloads a ConnectorInstance names in `spec.tokenSecret.rolloutRestart` when
    /// its token Secret changes. The operator then needs to list and patch Deployments,
    /// StatefulSets and DaemonSets (chart value `rolloutRestart.enabled`).
    #[arg(long, env = "ROLLOUT_RESTART", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    rollout_restart: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    controller::parse_duration(text).ok_or_else(|| format!("`{text}` is not a duration like 90s, 10m or 1h"))
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Some(Command::Crd { out_dir }) => print_crds(out_dir),
        Some(Command::OauthCallback(args)) => {
            init_logging(args.log_format);
            block_on(serve_callback(args))
        }
        Some(Command::Run) | None => {
            init_logging(cli.run.log_format);
            block_on(run(cli.run))
        }
    }
}

fn block_on(main: impl std::future::Future<Output = Result<(), Box<dyn std::error::Error>>>) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err}");
            ExitCode::FAILURE
        }
    }
}

/// The state key in `path`, read again every [`STATE_KEY_RELOAD`]: a mounted Secret changes in
/// place, and the new key takes over (the one before still verifies the URLs published
/// meanwhile, by this process or another).
fn watched_state_key(path: &std::path::Path, sign_delay: Duration) -> Result<StateKey, String> {
    let key = StateKey::from_file(path)?.with_sign_delay(sign_delay);
    let (reloaded, path) = (key.clone(), path.to_path_buf());
    tokio::spawn(async move {
        let mut every = tokio::time::interval(STATE_KEY_RELOAD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            every.tick().await;
            match reloaded.reload(&path) {
                Ok(true) => tracing::info!(
                    "the OAuth state key changed; states signed with it or the previous key are accepted"
                ),
                Ok(false) => {}
                Err(err) => {
                    tracing::warn!(%err, "cannot reload the OAuth state key; the current one stays")
                }
            }
        }
    });
    Ok(key)
}

/// The `oauth-callback` subcommand: the callback alone, until SIGTERM.
async fn serve_callback(args: CallbackArgs) -> Result<(), Box<dyn std::error::Error>> {
    platform::install_crypto_provider();
    let client = kube::Client::try_default().await?;
    let key = watched_state_key(&args.state_key_file, Duration::ZERO)?;
    let state = oauth::callback::CallbackState::new(client, key);
    let (callback_addr, task) = oauth::callback::serve(args.addr, state, shutdown_signal()).await?;
    tracing::info!(%callback_addr, path = oauth::CALLBACK_PATH, "serving the OAuth callback");
    task.await?;
    tracing::info!("shutting down");
    Ok(())
}

fn print_crds(out_dir: Option<std::path::PathBuf>) -> ExitCode {
    let result = match out_dir {
        None => api::crd::crds_yaml().map_err(|e| e.to_string()).map(|yaml| print!("{yaml}")),
        Some(dir) => api::crd::crd_documents().map_err(|e| e.to_string()).and_then(|docs| {
            docs.into_iter()
                .try_for_each(|(file, yaml)| std::fs::write(dir.join(file), yaml).map_err(|e| e.to_string()))
        }),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("cannot write the CRDs: {err}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info,kube=warn"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stdout());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_ansi(ansi);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(args: RunArgs) -> Result<(), Box<dyn std::error::Error>> {
    platform::install_crypto_provider();
    let client = kube::Client::try_default().await?;
    let metrics = Metrics::default();
    metrics.set_per_instance(args.metrics_per_instance);
    let (ready_tx, ready_rx) = tokio::sync::watch::channel(false);
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let stopped = move || {
        let mut rx = stop_rx.clone();
        async move {
            let _ = rx.wait_for(|stop| *stop).await;
        }
    };
    let (bound, server) = http::serve(args.probe_addr, metrics.clone(), ready_rx, stopped()).await?;
    tracing::info!(%bound, "serving /healthz, /readyz and /metrics");
    let state_key = match &args.oauth_state_key_file {
        Some(path) => watched_state_key(path, args.oauth_state_key_sign_delay)?,
        None => StateKey::random(),
    };
    if let Some(callback_url) = &args.oauth_callback_url
        && !(callback_url.starts_with("https://") || callback_url.starts_with("http://"))
    {
        return Err(format!("--oauth-callback-url `{callback_url}` is not an http(s) URL").into());
    }
    let given_cluster_id = args.cluster_id.as_deref().map(str::trim).filter(|id| !id.is_empty());
    if let Some(id) = given_cluster_id {
        api::check_cluster_id(id).map_err(|e| format!("--cluster-id: {e}"))?;
    }
    if let Some(addr) = args.oauth_callback_addr {
        let state = oauth::callback::CallbackState::new(client.clone(), state_key.clone());
        let (callback_addr, _task) = oauth::callback::serve(addr, state, stopped()).await?;
        tracing::info!(%callback_addr, path = oauth::CALLBACK_PATH, "serving the OAuth callback");
    }

    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!("shutting down");
        let _ = stop_tx.send(true);
    });

    let mut leadership = None;
    if args.leader_elect {
        // A standby is healthy and ready; it starts reconciling only once it holds the lease.
        let _ = ready_tx.send(true);
        let options = LeaderOptions {
            lease_name: args.leader_election_lease_name.clone(),
            namespace: args
                .leader_election_namespace
                .clone()
                .or_else(|| std::env::var("POD_NAMESPACE").ok())
                .unwrap_or_else(|| "default".into()),
            identity: args
                .instance_name
                .clone()
                .unwrap_or_else(|| format!("connector-operator-{:08x}", fastrand::u32(..))),
            duration: args.leader_election_lease_duration,
        };
        match leader::acquire(client.clone(), &options, stopped()).await? {
            Some(held) => leadership = Some(held),
            None => {
                let _ = server.await;
                return Ok(());
            }
        }
        let _ = ready_tx.send(false);
    }

    // Each namespace once, in the order given.
    let mut namespaces: Vec<String> = Vec::new();
    for namespace in args.namespace.iter().map(|n| n.trim()).filter(|n| !n.is_empty()) {
        if !namespaces.iter().any(|n| n == namespace) {
            namespaces.push(namespace.to_string());
        }
    }
    let label_selector = args.watch_label_selector.filter(|s| !s.trim().is_empty());
    if let Some(selector) = &label_selector {
        check_label_selector(&client, selector, namespaces.first().map(String::as_str)).await?;
    }
    let cluster_id = cluster_id(&client, given_cluster_id, !namespaces.is_empty()).await;
    let options = RunOptions {
        namespace: None,
        label_selector,
        concurrency: args.concurrency,
        instance_name: args.instance_name,
        platforms: Default::default(),
        settings: Settings {
            default_resync: args.default_resync,
            platform_timeout: args.platform_timeout,
            default_requests_per_second: args.default_requests_per_second,
            cluster_platforms: args.cluster_platforms,
            platform_status: args.platform_status,
            oauth_callback_url: args.oauth_callback_url.clone(),
            oauth_state_key: state_key,
            oauth_authorization_ttl: args.oauth_authorization_ttl,
            rollout_restart: args.rollout_restart,
            allowed_platform_hosts: connector_operator::platform::AllowedHosts::with(
                &args.allowed_platform_hosts,
            )
            .map_err(|e| format!("--allowed-platform-hosts: {e}"))?,
            cluster_id,
            ..Settings::default()
        },
    };
    // From here on this replica runs the controllers (it holds the lease, or needs none).
    metrics.leader.set(1);
    let controllers =
        controller::run_namespaces(client, options, &namespaces, metrics.clone(), stopped(), ready_tx);
    tokio::pin!(controllers);
    let lost = async {
        match leadership.as_mut() {
            Some(held) => held.lost().await,
            None => futures::future::pending().await,
        }
    };
    tokio::select! {
        _ = &mut controllers => {}
        _ = async { stopped().await; tokio::time::sleep(controller::SHUTDOWN_GRACE).await } => {
            tracing::warn!("reconciles did not finish within the shutdown grace period");
        }
        _ = lost => {
            // Another replica may be reconciling already: stop at once, without finishing work.
            return Err("lost the leader lease; exiting so that only one replica reconciles".into());
        }
    }
    metrics.leader.set(0);
    if let Some(held) = leadership {
        held.release().await;
    }
    let _ = server.await;
    Ok(())
}

/// Refuses a `--watch-label-selector` the API server does not accept (one list of at most one
/// instance's metadata), rather than retrying a watch that can never start. Other errors (no
/// rights to list everywhere, a server not up yet) are left to the watches.
async fn check_label_selector(
    client: &kube::Client,
    selector: &str,
    namespace: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    let api: kube::Api<api::ConnectorInstance> = match namespace {
        Some(ns) => kube::Api::namespaced(client.clone(), ns),
        None => kube::Api::all(client.clone()),
    };
    match api.list_metadata(&kube::api::ListParams::default().labels(selector).limit(1)).await {
        Err(kube::Error::Api(status)) if status.code == 400 => Err(format!(
            "--watch-label-selector `{selector}` is not a valid label selector: {}",
            status.message
        )
        .into()),
        _ => Ok(()),
    }
}

/// The cluster id: `given` (`--cluster-id`, checked at start), else the `kube-system` namespace
/// UID. An operator of some namespaces (`--namespace`; its Roles do not reach `kube-system`)
/// reads nothing there and has none unless given one; nor has one that cannot read it (a
/// warning). Without one, re-created resources get new remote instances.
async fn cluster_id(client: &kube::Client, given: Option<&str>, namespaced: bool) -> Option<String> {
    if let Some(id) = given {
        return Some(id.to_string());
    }
    if namespaced {
        tracing::info!(
            "no --cluster-id: a re-created ConnectorInstance gets a new remote instance instead of adopting its own"
        );
        return None;
    }
    let namespaces: kube::Api<k8s_openapi::api::core::v1::Namespace> = kube::Api::all(client.clone());
    match namespaces.get_metadata("kube-system").await {
        Ok(ns) => ns.metadata.uid.filter(|uid| api::check_cluster_id(uid).is_ok()),
        Err(err) => {
            tracing::warn!(
                error = %err,
                "cannot read the kube-system namespace for a cluster id; set --cluster-id, else a re-created \
                 ConnectorInstance gets a new remote instance instead of adopting its own"
            );
            None
        }
    }
}

async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => futures::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
