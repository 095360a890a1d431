//! `kubectl connector`: the platform UI's card actions from the command line. A kubectl plugin
//! (on PATH as `kubectl-connector`), using the user's kubeconfig and context; every command reads
//! or annotates a ConnectorInstance, never the platform. What it shows is `connector_operator::cli`.

use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand, ValueEnum};
use k8s_openapi::api::core::v1::{Event, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, ResourceExt};
use serde_json::json;

use connector_operator::api::{
    ANNOTATION_ABANDON, ANNOTATION_APPROVE, ANNOTATION_PAUSED, ClusterConnectorPlatform, ConnectorInstance,
    ConnectorPlatform, PlatformKind, PlatformRef, READY, find_condition,
};
use connector_operator::cli::{self, Request};
use connector_operator::controller::inputs::resolve_credentials;
use connector_operator::platform::{PlatformClient, PlatformConfig, PlatformError};

/// The platform UI's card actions for ConnectorInstances: status, token, test, re-authenticate,
/// approve, pause; and a connector's configuration keys, and a token Secret template rendered.
#[derive(Debug, Parser)]
#[command(name = "kubectl-connector", version, about)]
struct Args {
    /// Namespace (default: the context's).
    #[arg(short, long, global = true)]
    namespace: Option<String>,
    /// All namespaces (`status` without a name).
    #[arg(short = 'A', long, global = true)]
    all_namespaces: bool,
    /// Kubeconfig context (default: the current one).
    #[arg(long, global = true)]
    context: Option<String>,
    /// Kubeconfig file (default: $KUBECONFIG, then ~/.kube/config).
    #[arg(long, global = true)]
    kubeconfig: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// One screen: conditions, remote instance, token and its test, plan, restarts, Events. Without
    /// a name: a line per instance.
    Status {
        /// The ConnectorInstance.
        name: Option<String>,
        /// `text` or `json`.
        #[arg(short, long, value_enum, default_value_t = Output::Text)]
        output: Output,
    },
    /// Prints the token from the token Secret (refused on a terminal without --show).
    Token {
        /// The ConnectorInstance.
        name: String,
        /// The ready `Authorization` header value instead (where the platform allows it).
        #[arg(long)]
        header: bool,
        /// Print it on a terminal too.
        #[arg(long)]
        show: bool,
    },
    /// Tests the token the way a workload uses it.
    Test(Act),
    /// Re-authenticates the remote instance now, with nothing changed.
    Reauthenticate(Act),
    /// Reconciles now, reading the remote instance again.
    Reconcile(Act),
    /// Approves the planned re-authentication (spec.reauthentication: Manual).
    Approve {
        #[command(flatten)]
        act: Act,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Lets a deletion release the resource without deleting its remote instance.
    Abandon {
        /// The ConnectorInstance.
        name: String,
        /// Do not ask.
        #[arg(short, long)]
        yes: bool,
    },
    /// Renders a token Secret template for NAME offline, with the operator's engine and limits
    /// and a stand-in for the token.
    Render {
        /// The ConnectorInstance.
        name: String,
        /// The template (a spec.tokenSecret.template, YAML).
        #[arg(short = 'f', long = "filename")]
        file: PathBuf,
    },
    /// The platform's connector catalog; for one connector, its configuration keys (required,
    /// secret). Through a platform object's credentials.
    Connectors {
        /// A connector key, e.g. `zendesk`: its configuration keys.
        key: Option<String>,
        /// The ConnectorPlatform (in the namespace) whose platform and credentials to use.
        #[arg(long)]
        platform: String,
        /// `--platform` names a ClusterConnectorPlatform.
        #[arg(long)]
        cluster_platform: bool,
    },
    /// Pauses reconciliation (no platform calls; deletion still works).
    Pause(Act),
    /// Resumes reconciliation.
    Resume(Act),
}

/// A command on one instance that the operator answers.
#[derive(Debug, clap::Args)]
struct Act {
    /// The ConnectorInstance.
    name: String,
    /// Wait for the operator's answer and print it.
    #[arg(short, long)]
    wait: bool,
    /// How long to wait.
    #[arg(long, default_value = "2m", value_parser = parse_duration)]
    timeout: Duration,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Output {
    Text,
    Json,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    connector_operator::controller::parse_duration(text)
        .ok_or_else(|| format!("`{text}` is not a duration like 30s or 2m"))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The cluster as the user's kubeconfig reaches it.
struct Kube {
    client: Client,
    namespace: String,
}

impl Kube {
    async fn connect(args: &Args) -> Result<Kube, String> {
        let options = KubeConfigOptions { context: args.context.clone(), ..KubeConfigOptions::default() };
        let config = match &args.kubeconfig {
            Some(path) => {
                let kubeconfig =
                    Kubeconfig::read_from(path).map_err(|e| format!("{}: {e}", path.display()))?;
                Config::from_custom_kubeconfig(kubeconfig, &options).await
            }
            None => Config::from_kubeconfig(&options).await,
        }
        .map_err(|e| format!("no usable kubeconfig: {e}"))?;
        let namespace = args.namespace.clone().unwrap_or_else(|| config.default_namespace.clone());
        let client = Client::try_from(config).map_err(|e| format!("cannot reach the cluster: {e}"))?;
        Ok(Kube { client, namespace })
    }

    fn instances(&self) -> Api<ConnectorInstance> {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    /// The error of a call that `verb`s `resource`, in plain words.
    fn explain(&self, verb: &str, resource: &str, name: &str, err: kube::Error) -> String {
        match err {
            kube::Error::Api(status) if status.code == 403 => cli::forbidden(verb, resource, &self.namespace),
            kube::Error::Api(status) if status.code == 404 => {
                format!("{resource} `{name}` not found in namespace `{}`", self.namespace)
            }
            other => format!("{verb} {resource} `{name}`: {other}"),
        }
    }

    async fn instance(&self, name: &str) -> Result<ConnectorInstance, String> {
        self.instances().get(name).await.map_err(|e| self.explain("get", "connectorinstances", name, e))
    }

    /// Sets (or, with `None`, removes) annotations of the instance.
    async fn annotate(
        &self,
        name: &str,
        annotations: serde_json::Value,
    ) -> Result<ConnectorInstance, String> {
        let patch = json!({ "metadata": { "annotations": annotations } });
        self.instances()
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| self.explain("patch", "connectorinstances", name, e))
    }

    /// The `Ready` condition of the instance's platform object, if it can be read.
    async fn platform_ready(
        &self,
        ci: &ConnectorInstance,
    ) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition> {
        let recorded = ci.status.as_ref()?.platform.as_deref()?;
        let status = match recorded.kind {
            PlatformKind::ConnectorPlatform => {
                let api: Api<ConnectorPlatform> = Api::namespaced(self.client.clone(), &self.namespace);
                api.get(&recorded.name).await.ok()?.status
            }
            PlatformKind::ClusterConnectorPlatform => {
                let api: Api<ClusterConnectorPlatform> = Api::all(self.client.clone());
                api.get(&recorded.name).await.ok()?.status
            }
        };
        find_condition(&status?.conditions, READY).cloned()
    }

    /// The newest Events about the instance, oldest first.
    async fn events(&self, ci: &ConnectorInstance) -> Vec<Event> {
        let api: Api<Event> = Api::namespaced(self.client.clone(), &self.namespace);
        let selector = format!("involvedObject.uid={}", ci.uid().unwrap_or_default());
        let mut events =
            api.list(&ListParams::default().fields(&selector)).await.map(|l| l.items).unwrap_or_default();
        events.sort_by_key(|e| {
            e.event_time.as_ref().map(|t| t.0).or(e.last_timestamp.as_ref().map(|t| t.0)).or(e
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0))
        });
        events
    }

    /// Waits until `done` holds for the instance, with a progress line on stderr.
    async fn wait_for(
        &self,
        name: &str,
        what: &str,
        timeout: Duration,
        done: impl Fn(&ConnectorInstance) -> bool,
    ) -> Result<ConnectorInstance, String> {
        let start = Instant::now();
        let progress = std::io::stderr().is_terminal();
        loop {
            let ci = self.instance(name).await?;
            if done(&ci) {
                if progress {
                    eprintln!();
                }
                return Ok(ci);
            }
            if start.elapsed() > timeout {
                let ready = ci
                    .status
                    .as_ref()
                    .and_then(|s| find_condition(&s.conditions, READY))
                    .map(|c| format!("; Ready is {} ({}): {}", c.status, c.reason, c.message))
                    .unwrap_or_default();
                let why = cli::not_reconciled(&ci).unwrap_or_else(|| format!("no answer yet{ready}"));
                return Err(format!("waited {timeout:?} for the operator to {what}: {why}"));
            }
            if progress {
                eprint!("\rwaiting for the operator to {what} ({} s)", start.elapsed().as_secs());
                let _ = std::io::stderr().flush();
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    }
}

async fn run(args: Args) -> Result<(), String> {
    let kube = Kube::connect(&args).await?;
    match args.command {
        Command::Status { name: Some(name), output } => {
            let ci = kube.instance(&name).await?;
            let events = kube.events(&ci).await;
            let platform = kube.platform_ready(&ci).await;
            match output {
                Output::Text => print!("{}", cli::status_text(&ci, platform.as_ref(), &events)),
                Output::Json => println!("{:#}", cli::status_json(&ci, platform.as_ref(), &events)),
            }
        }
        Command::Status { name: None, .. } => list(&kube, args.all_namespaces).await?,
        Command::Token { name, header, show } => token(&kube, &name, header, show).await?,
        Command::Test(act) => request(&kube, &act, Request::Test).await?,
        Command::Reauthenticate(act) => request(&kube, &act, Request::Reauthenticate).await?,
        Command::Reconcile(act) => request(&kube, &act, Request::Reconcile).await?,
        Command::Approve { act, yes } => approve(&kube, &act, yes).await?,
        Command::Abandon { name, yes } => {
            let ci = kube.instance(&name).await?;
            if !confirm(&cli::abandon_warning(&ci), yes)? {
                return Err("not abandoned".into());
            }
            kube.annotate(&name, json!({ ANNOTATION_ABANDON: "true" })).await?;
            println!(
                "{}/{} is abandoned: `kubectl delete connectorinstance {name}` now leaves its remote instance",
                kube.namespace, name
            );
        }
        Command::Render { name, file } => {
            let ci = kube.instance(&name).await?;
            let template = std::fs::read_to_string(&file).map_err(|e| format!("{}: {e}", file.display()))?;
            print!("{}", cli::render_text(&ci, &template)?);
        }
        Command::Connectors { key, platform, cluster_platform } => {
            connectors(&kube, key.as_deref(), &platform, cluster_platform).await?
        }
        Command::Pause(act) => pause(&kube, &act, true).await?,
        Command::Resume(act) => pause(&kube, &act, false).await?,
    }
    Ok(())
}

/// A line per instance.
async fn list(kube: &Kube, all: bool) -> Result<(), String> {
    let api: Api<ConnectorInstance> = if all { Api::all(kube.client.clone()) } else { kube.instances() };
    let items = api
        .list(&ListParams::default())
        .await
        .map_err(|e| kube.explain("list", "connectorinstances", "", e))?
        .items;
    println!("{:<20} {:<28} {:<7} {:<24} INSTANCE", "NAMESPACE", "NAME", "READY", "REASON");
    for ci in items {
        let status = ci.status.clone().unwrap_or_default();
        let ready = find_condition(&status.conditions, READY);
        println!(
            "{:<20} {:<28} {:<7} {:<24} {}",
            ci.namespace().unwrap_or_default(),
            ci.name_any(),
            ready.map_or("-", |c| c.status.as_str()),
            ready.map_or("-", |c| c.reason.as_str()),
            status.instance_id.map_or("-".into(), |id| id.to_string())
        );
    }
    Ok(())
}

/// Prints the token (or the `Authorization` value) from the token Secret.
async fn token(kube: &Kube, name: &str, header: bool, show: bool) -> Result<(), String> {
    if std::io::stdout().is_terminal() && !show {
        return Err("the token would be shown on the terminal: pipe it, or pass --show".into());
    }
    let ci = kube.instance(name).await?;
    if let Some(why) = cli::not_reconciled(&ci) {
        return Err(why);
    }
    let status = ci.status.clone().unwrap_or_default();
    let secret_name = status.token_secret_name.ok_or_else(|| {
        format!("{}/{name} has no token yet (see `kubectl connector status {name}`)", kube.namespace)
    })?;
    let secrets: Api<Secret> = Api::namespaced(kube.client.clone(), &kube.namespace);
    let secret =
        secrets.get(&secret_name).await.map_err(|e| kube.explain("get", "secrets", &secret_name, e))?;
    let key = if header { "authorization" } else { "token" };
    let value = secret.data.as_ref().and_then(|d| d.get(key)).ok_or_else(|| {
        if header {
            format!(
                "Secret `{secret_name}` has no `authorization` key: it holds one only where the platform object allows it (spec.consumerCredentials: Allow) and spec.tokenSecret.template renders it"
            )
        } else {
            format!("Secret `{secret_name}` has no `token` key (spec.tokenSecret.template replaced the default keys)")
        }
    })?;
    let text = String::from_utf8(value.0.clone())
        .map_err(|_| format!("Secret `{secret_name}` key `{key}` is not text"))?;
    println!("{text}");
    Ok(())
}

/// Sets a `*-requested-at` annotation to a new value and, with --wait, waits for its echo.
async fn request(kube: &Kube, act: &Act, request: Request) -> Result<(), String> {
    let ci = kube.instance(&act.name).await?;
    if cli::is_paused(&ci) {
        return Err(format!(
            "{}/{} is paused: resume it first (kubectl connector resume {})",
            kube.namespace, act.name, act.name
        ));
    }
    let value = k8s_openapi::jiff::Timestamp::now().to_string();
    kube.annotate(&act.name, json!({ request.annotation(): value })).await?;
    if !act.wait {
        println!(
            "requested: {}={value} (the operator echoes it in status once handled; --wait waits)",
            request.annotation()
        );
        return Ok(());
    }
    let what = format!("handle {}", request.annotation());
    let ci = kube
        .wait_for(&act.name, &what, act.timeout, |ci| {
            ci.status.as_ref().and_then(|s| request.echo(s)) == Some(value.as_str())
        })
        .await?;
    println!("{}", request.outcome(&ci));
    Ok(())
}

/// Approves the plan shown, after showing it.
async fn approve(kube: &Kube, act: &Act, yes: bool) -> Result<(), String> {
    let ci = kube.instance(&act.name).await?;
    let (value, words) = cli::approval(&ci)?;
    if !confirm(&format!("{words}\nApprove {} ({}={value})?", act.name, ANNOTATION_APPROVE), yes)? {
        return Err("not approved".into());
    }
    kube.annotate(&act.name, json!({ ANNOTATION_APPROVE: value })).await?;
    if !act.wait {
        println!("approved: {}={value}", ANNOTATION_APPROVE);
        return Ok(());
    }
    let ci = kube
        .wait_for(&act.name, "carry out the approved re-authentication", act.timeout, |ci| {
            ci.status.as_ref().and_then(|s| s.last_approved.as_deref()) == Some(value.as_str())
        })
        .await?;
    println!("{}", Request::Reauthenticate.outcome(&ci));
    Ok(())
}

/// Pauses or resumes, and with --wait waits until the status says so.
async fn pause(kube: &Kube, act: &Act, paused: bool) -> Result<(), String> {
    let value = if paused { json!("true") } else { serde_json::Value::Null };
    kube.annotate(&act.name, json!({ ANNOTATION_PAUSED: value })).await?;
    let word = if paused { "paused" } else { "resumed" };
    if act.wait {
        let reason_paused = |ci: &ConnectorInstance| {
            ci.status
                .as_ref()
                .and_then(|s| find_condition(&s.conditions, READY))
                .is_some_and(|c| c.reason == "Paused")
        };
        kube.wait_for(&act.name, &format!("show it {word}"), act.timeout, |ci| reason_paused(ci) == paused)
            .await?;
    }
    println!("{}/{} {word}", kube.namespace, act.name);
    Ok(())
}

/// Prints the catalog of the platform `name` points at, or connector `key`'s configuration keys.
async fn connectors(kube: &Kube, key: Option<&str>, name: &str, cluster: bool) -> Result<(), String> {
    let (settings, namespace, kind) = if cluster {
        let api: Api<ClusterConnectorPlatform> = Api::all(kube.client.clone());
        let platform =
            api.get(name).await.map_err(|e| kube.explain("get", "clusterconnectorplatforms", name, e))?;
        (platform.spec.settings, None, PlatformKind::ClusterConnectorPlatform)
    } else {
        let api: Api<ConnectorPlatform> = Api::namespaced(kube.client.clone(), &kube.namespace);
        let platform = api.get(name).await.map_err(|e| kube.explain("get", "connectorplatforms", name, e))?;
        (platform.spec.settings, Some(kube.namespace.clone()), PlatformKind::ConnectorPlatform)
    };
    let reference = PlatformRef { kind, name: name.to_string() };
    let resolved =
        resolve_credentials(&kube.client, &reference, namespace.as_deref(), settings, "kubectl-connector")
            .await
            .map_err(|e| e.to_string())?;
    let mut config = PlatformConfig::new(
        resolved.settings.base_url.trim(),
        resolved.user_secret.clone(),
        resolved.organization_secret.clone(),
    );
    config.allow_http = resolved.settings.insecure_allow_http;
    config.ca_bundle_pem = resolved.ca_bundle_pem.clone();
    let client = PlatformClient::new(config).map_err(|e| e.to_string())?;
    let Some(key) = key else {
        let elements = client.list_elements().await.map_err(|e| e.to_string())?;
        print!("{}", cli::elements_text(&elements));
        return Ok(());
    };
    let entries = client.element_configuration(key).await.map_err(|e| match e {
        PlatformError::NotFound { .. } => {
            format!("connector `{key}` is not known to the platform at {}", resolved.settings.base_url.trim())
        }
        other => other.to_string(),
    })?;
    print!("{}", cli::catalog_text(key, &entries));
    Ok(())
}

/// Asks `question` (y/N) on the terminal, unless `yes`.
fn confirm(question: &str, yes: bool) -> Result<bool, String> {
    if yes {
        return Ok(true);
    }
    if !std::io::stdin().is_terminal() {
        return Err(format!("{question}\nno terminal to ask on: pass --yes"));
    }
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut answer = String::new();
    std::io::stdin().lock().read_line(&mut answer).map_err(|e| e.to_string())?;
    Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
}
