//! What every reconcile shares: clients, the event publisher, metrics, platform clients (one per
//! platform configuration, so its rate limit is shared), the connector catalog cache, and what the
//! operator remembers between passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::runtime::reflector::{ObjectRef, Store};
use prometheus_client::metrics::gauge::Gauge;

use super::Error;
use super::inputs::ResolvedPlatform;
use crate::metrics::Metrics;
use crate::platform::{ElementConfig, PlatformClient, PlatformConfig, PlatformError};

/// Settings of the controller.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Resync interval when a ConnectorInstance does not set one.
    pub default_resync: Duration,
    /// Timeout of every platform request.
    pub platform_timeout: Duration,
    /// Default platform request rate when the platform object does not set one.
    pub default_requests_per_second: u32,
    /// How long a connector's configuration catalog is cached.
    pub catalog_ttl: Duration,
    /// Largest retry delay after transient errors.
    pub max_backoff: Duration,
    /// ClusterConnectorPlatforms are watched and may be used.
    pub cluster_platforms: bool,
    /// Which ClusterConnectorPlatforms this run writes the status of.
    pub cluster_platform_status: ClusterPlatformStatus,
    /// This process writes the status of platform objects, both kinds (`--platform-status`;
    /// `false` in all shards but one: they only check the platforms their instances use). Over
    /// `cluster_platform_status`.
    pub platform_status: bool,
    /// This run watches the instances of a label selector (`--watch-label-selector`; set by the
    /// run): one may be handed over while another process, alive, creates it.
    pub sharded: bool,
    /// The OAuth callback URL (the redirect URI registered at providers) for instances whose
    /// `spec.oauth` names none.
    pub oauth_callback_url: Option<String>,
    /// Signs the OAuth `state` of authorization requests.
    pub oauth_state_key: crate::oauth::StateKey,
    /// How long a published authorization URL is accepted.
    pub oauth_authorization_ttl: Duration,
    /// Workloads named in `spec.tokenSecret.rolloutRestart` may be restarted (the operator has
    /// the RBAC to patch Deployments, StatefulSets and DaemonSets).
    pub rollout_restart: bool,
    /// The namespace this run watches (`None`: all); set by the run itself.
    pub watched_namespace: Option<String>,
    /// The hosts a platform's base URL may name (`--allowed-platform-hosts`); any other is
    /// refused before a connection (`PlatformHostNotAllowed`).
    pub allowed_platform_hosts: crate::platform::AllowedHosts,
    /// The cluster id (`--cluster-id`, by default the `kube-system` namespace UID): remote
    /// instances carry it in their cluster tag and, with namespace and name, in their reference
    /// tag, so that a re-created resource adopts its remote instance. `None`: neither tag is set
    /// and a re-created resource gets a new remote instance.
    pub cluster_id: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            default_resync: Duration::from_secs(600),
            platform_timeout: Duration::from_secs(30),
            default_requests_per_second: 50,
            catalog_ttl: Duration::from_secs(600),
            max_backoff: Duration::from_secs(300),
            cluster_platforms: true,
            cluster_platform_status: ClusterPlatformStatus::All,
            platform_status: true,
            sharded: false,
            oauth_callback_url: None,
            oauth_state_key: crate::oauth::StateKey::random(),
            oauth_authorization_ttl: Duration::from_secs(3600),
            rollout_restart: false,
            watched_namespace: None,
            allowed_platform_hosts: crate::platform::AllowedHosts::default(),
            cluster_id: None,
        }
    }
}

/// Which ClusterConnectorPlatforms a run writes the status of. A cluster platform is shared by
/// every operator that watches it, and its status says whether the platform works for the
/// namespaces it serves: so it is written by the runs that serve one of them, and by one run per
/// process (all of them check it: the probe of their own platform health).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPlatformStatus {
    /// None: another run of this process writes them.
    Off,
    /// Every one: this run watches all namespaces.
    All,
    /// Those whose `namespaceSelector` matches this run's namespace, when it is the first of
    /// these namespaces (the ones this process watches, in the order given) that the selector
    /// matches: one run per process writes, and an operator for other namespaces does not
    /// overwrite what the platform's own users' operator found.
    Selecting(Vec<String>),
}

/// What the operator remembers of one ConnectorInstance between passes (lost on restart, which
/// only costs an extra read).
#[derive(Debug, Clone, Default)]
pub struct Memory {
    /// When the remote instance is to be read again (resync), and for which interval.
    pub next_read: Option<super::core::reads::ReadPlan>,
    /// The auth hash last applied and written to the token Secret, in case the Secret (which
    /// records it) is deleted.
    pub auth_hash: Option<String>,
    /// Consecutive transient failures (for backoff).
    pub failures: u32,
    /// The search by ownership tag alone (for an instance created before reference tags) was
    /// made in this process: it is not made again.
    pub own_tag_searched: bool,
    /// The status last written, with the resourceVersion the write produced: the watch cache may
    /// not have it yet when the next pass starts. Boxed: it is rarely there, and inline it would
    /// triple the size of every instance's memory.
    pub written_status: Option<Box<(u64, crate::api::ConnectorInstanceStatus)>>,
    /// The resourceVersion of the status this operator wrote last; kept when the copy above is
    /// dropped, to tell that a pass started from an older version of the instance.
    pub written_status_rv: u64,
    /// The resourceVersion of the token Secret this operator wrote last.
    pub written_secret: u64,
    /// The resourceVersion this operator's finalizer patch produced: a cached copy older than that
    /// lacks the finalizer only because the watch has not caught up.
    pub finalizer_added: u64,
    /// What few instances need remembered, boxed: inline it would double the size of every
    /// instance's memory.
    pub rare: Option<Box<Rare>>,
    /// The digest of the instance's generation and annotations the watch last passed on
    /// ([`Memories::changed`]).
    pub changes: Option<std::num::NonZeroU64>,
    /// The second its next pass is due in, when that is a long wait (`wakeups.rs`).
    pub wake: Option<std::num::NonZeroU32>,
}

/// What the operator remembers of few ConnectorInstances (see [`Memory::rare`]).
#[derive(Debug, Clone, Default)]
pub struct Rare {
    /// A token the platform issued (create, re-authentication) that has not reached the token
    /// Secret yet because the write failed: (instance id, token, auth hash). The next pass writes
    /// it without asking the platform again.
    pub pending_token: Option<(i64, secrecy::SecretString, String)>,
    /// Digests of the grant codes from `spec.oauth.codeSecretRef` already sent to the platform
    /// (a code is used once, also when the platform refused it).
    pub used_grants: Vec<String>,
    /// The `openconnectors.io/approve` value last warned about as approving nothing (warned once).
    pub ignored_approval: Option<String>,
    /// The `openconnectors.io/reauthenticate-requested-at` value last carried out.
    pub reauthenticated_for: Option<String>,
    /// When this process first found the instance with the finalizer another process added and
    /// no remote instance recorded (a create that process may still have in flight).
    pub inherited_at: Option<Instant>,
}

impl Rare {
    /// Whether nothing is remembered (the box can go).
    fn is_empty(&self) -> bool {
        self.pending_token.is_none()
            && self.used_grants.is_empty()
            && self.ignored_approval.is_none()
            && self.reauthenticated_for.is_none()
            && self.inherited_at.is_none()
    }
}

impl Memory {
    /// Takes in what a pass asks to remember.
    pub fn apply(&mut self, remember: super::core::outcome::Remember) {
        if let Some(plan) = remember.next_read {
            self.next_read = plan;
        }
        if let Some(pending) = remember.pending_token
            && (pending.is_some() || self.rare.is_some())
        {
            self.rare_mut().pending_token = pending;
        }
        if let Some(hash) = remember.auth_hash {
            self.auth_hash = Some(hash);
        }
        if let Some(used) = remember.used_grant {
            self.rare_mut().used_grants.push(used);
        }
        if let Some(value) = remember.ignored_approval {
            self.rare_mut().ignored_approval = Some(value);
        }
        if let Some(value) = remember.reauthenticated_for {
            self.rare_mut().reauthenticated_for = Some(value);
        }
        match remember.inherited_at {
            Some(Some(at)) => {
                self.rare_mut().inherited_at.get_or_insert(at);
            }
            Some(None) => {
                if let Some(rare) = self.rare.as_deref_mut() {
                    rare.inherited_at = None;
                }
            }
            None => {}
        }
        if remember.succeeded {
            self.failures = 0;
        }
        self.own_tag_searched |= remember.own_tag_searched;
        if self.rare.as_deref().is_some_and(Rare::is_empty) {
            self.rare = None;
        }
    }

    fn rare_mut(&mut self) -> &mut Rare {
        self.rare.get_or_insert_default()
    }

    /// A token issued that has not reached the token Secret yet: (instance id, token, auth hash).
    pub fn pending_token(&self) -> Option<&(i64, secrecy::SecretString, String)> {
        self.rare.as_deref().and_then(|rare| rare.pending_token.as_ref())
    }

    /// Digests of the grant codes from `spec.oauth.codeSecretRef` already sent to the platform.
    pub fn used_grants(&self) -> &[String] {
        self.rare.as_deref().map(|rare| rare.used_grants.as_slice()).unwrap_or_default()
    }

    /// The `openconnectors.io/approve` value last warned about as approving nothing.
    pub fn ignored_approval(&self) -> Option<&str> {
        self.rare.as_deref().and_then(|rare| rare.ignored_approval.as_deref())
    }

    /// The `openconnectors.io/reauthenticate-requested-at` value last carried out.
    pub fn reauthenticated_for(&self) -> Option<&String> {
        self.rare.as_deref().and_then(|rare| rare.reauthenticated_for.as_ref())
    }

    /// When this process first found the instance as a create another process may have in flight.
    pub fn inherited_at(&self) -> Option<Instant> {
        self.rare.as_deref().and_then(|rare| rare.inherited_at)
    }
}

/// What the operator remembers of every ConnectorInstance, by UID; cheap to clone. Shared by the
/// reconciles and the watch of token Secrets (which skips the echo of the operator's own writes).
/// Its gauge says how many instances it remembers.
#[derive(Debug, Clone, Default)]
pub struct Memories(Arc<Mutex<HashMap<String, Memory>>>, Gauge);

impl Memories {
    /// What is remembered of an instance (a copy).
    pub fn get(&self, uid: &str) -> Memory {
        self.read(uid, Memory::clone)
    }

    /// Reads what is remembered of an instance without copying all of it.
    pub fn read<R>(&self, uid: &str, read: impl FnOnce(&Memory) -> R) -> R {
        let empty = Memory::default();
        match self.0.lock() {
            Ok(memory) => read(memory.get(uid).unwrap_or(&empty)),
            Err(_) => read(&empty),
        }
    }

    /// Memories whose gauge is `gauge` (the operator's `instance_memories`).
    pub fn with_gauge(gauge: Gauge) -> Self {
        Memories(Arc::default(), gauge)
    }

    /// Updates what is remembered of an instance.
    pub fn update(&self, uid: &str, update: impl FnOnce(&mut Memory)) {
        if let Ok(mut memory) = self.0.lock() {
            update(memory.entry(uid.to_string()).or_default());
            self.count(&memory);
        }
    }

    /// Sets the gauge to how many instances are remembered.
    fn count(&self, memory: &HashMap<String, Memory>) {
        self.1.set(i64::try_from(memory.len()).unwrap_or(i64::MAX));
    }

    /// Keeps only the instances whose UID `keep` accepts.
    pub fn retain(&self, keep: impl Fn(&str) -> bool) {
        if let Ok(mut memory) = self.0.lock() {
            memory.retain(|uid, _| keep(uid));
            self.count(&memory);
        }
    }

    /// Forgets an instance (after its deletion).
    pub fn remove(&self, uid: &str) {
        if let Ok(mut memory) = self.0.lock() {
            memory.remove(uid);
            self.count(&memory);
        }
    }

    /// Whether the watch's copy of instance `uid`, whose generation and annotations digest to
    /// `changes` ([`super::CachedInstance::changes`]), is news for the controller: the first copy
    /// seen of it or one that differs; remembered for the next. What kube's predicate filter
    /// does, without a second map of instance keys (three strings per instance in it).
    pub fn changed(&self, uid: &str, changes: u64) -> bool {
        let changes = std::num::NonZeroU64::new(changes).unwrap_or(std::num::NonZeroU64::MIN);
        let Ok(mut memory) = self.0.lock() else { return true };
        if let Some(known) = memory.get_mut(uid) {
            let news = known.changes != Some(changes);
            known.changes = Some(changes);
            return news;
        }
        memory.insert(uid.to_string(), Memory { changes: Some(changes), ..Memory::default() });
        self.count(&memory);
        true
    }

    /// The watch's next copy of instance `uid` is news whatever changed in it (also the echo of
    /// this operator's own status write, which [`Self::changed`] otherwise passes over): a pass
    /// that failed on an outdated copy runs again once a newer one is cached. Nothing is added for
    /// an instance not remembered (its first copy is news anyway).
    pub fn pass_on_next_copy(&self, uid: &str) {
        if let Ok(mut memory) = self.0.lock()
            && let Some(known) = memory.get_mut(uid)
        {
            known.changes = None;
        }
    }

    /// The UIDs of the instances whose wake-up second (`wakeups.rs`) is `second` or earlier, their
    /// wake-ups cleared.
    pub fn take_due(&self, second: u32) -> std::collections::HashSet<String> {
        let Ok(mut memory) = self.0.lock() else { return Default::default() };
        memory
            .iter_mut()
            .filter(|(_, m)| m.wake.is_some_and(|wake| wake.get() <= second))
            .map(|(uid, m)| {
                m.wake = None;
                uid.clone()
            })
            .collect()
    }

    /// Sets instance `uid`'s wake-up (`None` clears it), if it is remembered (not deleted).
    pub fn set_wake(&self, uid: &str, wake: Option<std::num::NonZeroU32>) {
        if let Ok(mut memory) = self.0.lock()
            && let Some(memory) = memory.get_mut(uid)
        {
            memory.wake = wake;
        }
    }

    /// The watch shows instance `uid` at resourceVersion `rv`: a status this operator wrote at or
    /// before it is in the cache now, and its copy is dropped (a status-only change starts no
    /// pass that would drop it, and 10,000 copies of statuses are megabytes). A pass that started
    /// from an older version reads the status from the cache instead (`written_status_rv`).
    pub fn seen(&self, uid: &str, rv: u64) {
        if let Ok(mut memory) = self.0.lock()
            && let Some(memory) = memory.get_mut(uid)
            && memory.written_status.as_ref().is_some_and(|written| written.0 <= rv)
        {
            memory.written_status = None;
        }
    }

    /// Whether `secret` is exactly the token Secret this operator wrote last for its owner: the
    /// watch showing it back is no news.
    pub fn is_own_write(&self, secret: &impl kube::Resource) -> bool {
        let rv = resource_version(secret);
        let Some(owner) =
            secret.meta().owner_references.iter().flatten().find(|o| o.controller == Some(true))
        else {
            return false;
        };
        rv != 0 && self.read(&owner.uid, |memory| memory.written_secret == rv)
    }
}

/// Whether `instances` holds a newer copy of `used` than `used`; in any case the next copy the
/// watch brings is news for the controller ([`Memories::pass_on_next_copy`]), marked first so that
/// a copy arriving meanwhile is not passed over.
fn outdated(
    memory: &Memories,
    instances: &Store<super::CachedInstance>,
    used: &super::CachedInstance,
) -> bool {
    memory.pass_on_next_copy(&kube::ResourceExt::uid(used).unwrap_or_default());
    instances
        .get(&ObjectRef::from_obj(used))
        .is_some_and(|cached| resource_version(cached.as_ref()) > resource_version(used))
}

/// An object's resourceVersion as a number, to tell which of two versions is newer (0 when it
/// has none). The API server's versions are etcd revisions.
pub fn resource_version<K: kube::Resource>(object: &K) -> u64 {
    object.meta().resource_version.as_deref().and_then(|rv| rv.parse().ok()).unwrap_or(0)
}

/// What the controllers read from memory instead of the API server.
#[derive(Debug, Clone)]
pub struct Stores {
    /// The ConnectorInstances (the controller's own cache).
    pub instances: Store<super::CachedInstance>,
    /// The token Secrets the operator owns (label-filtered watch).
    pub token_secrets: super::OwnedSecrets,
    /// ConnectorPlatforms.
    pub platforms: Store<crate::api::ConnectorPlatform>,
    /// ClusterConnectorPlatforms.
    pub cluster_platforms: Store<crate::api::ClusterConnectorPlatform>,
    /// Referenced Secrets (credentials, configurationFrom).
    pub secrets: super::SecretCache,
}

/// Senders that make the platform controllers check a platform object now.
#[derive(Debug, Clone)]
pub struct PlatformChecks {
    /// Namespaced platforms.
    pub namespaced: futures::channel::mpsc::UnboundedSender<ObjectRef<crate::api::ConnectorPlatform>>,
    /// Cluster platforms.
    pub cluster: futures::channel::mpsc::UnboundedSender<ObjectRef<crate::api::ClusterConnectorPlatform>>,
}

impl PlatformChecks {
    /// Asks for a check of the platform an instance in `namespace` refers to.
    pub fn request(&self, namespace: &str, platform: &crate::api::PlatformRef) {
        match platform.kind {
            crate::api::PlatformKind::ConnectorPlatform => {
                let _ = self.namespaced.unbounded_send(ObjectRef::new(&platform.name).within(namespace));
            }
            crate::api::PlatformKind::ClusterConnectorPlatform => {
                let _ = self.cluster.unbounded_send(ObjectRef::new(&platform.name));
            }
        }
    }
}

/// Base URL and connector key.
type CatalogKey = (String, String);
/// The most catalogs cached at once (platforms × connectors in use): both are named by
/// namespace editors, so the cache is bounded; past it, the expired and then the oldest go.
const CATALOG_MAX_ENTRIES: usize = 512;
/// The most configuration keys a connector's catalog may list (real connectors list dozens).
const CATALOG_MAX_KEYS: usize = 1_000;
/// When a connector's configuration catalog was read, and what it said.
type CatalogEntry = (Instant, Arc<Vec<ElementConfig>>);

/// Inserts a catalog read at `entry.0`, first making room: expired entries go, then the oldest
/// while the cache is full.
fn insert_bounded(
    catalog: &mut HashMap<CatalogKey, CatalogEntry>,
    key: CatalogKey,
    entry: CatalogEntry,
    ttl: Duration,
) {
    let now = entry.0;
    if catalog.len() >= CATALOG_MAX_ENTRIES && !catalog.contains_key(&key) {
        catalog.retain(|_, (at, _)| now.saturating_duration_since(*at) < ttl);
        while catalog.len() >= CATALOG_MAX_ENTRIES {
            let Some(oldest) = catalog.iter().min_by_key(|(_, (at, _))| *at).map(|(k, _)| k.clone()) else {
                break;
            };
            catalog.remove(&oldest);
        }
    }
    catalog.insert(key, entry);
}

/// What is known of each platform configuration, shared by every run of a process (one per
/// watched namespace): its client (and so its rate limit), its health (so one probe and one
/// backoff serve them all) and its connector catalogs. A ClusterConnectorPlatform used from
/// several namespaces costs what it costs from one.
#[derive(Clone, Default)]
pub struct PlatformState {
    health: super::core::health::PlatformHealth,
    clients: Arc<Mutex<HashMap<String, PlatformClient>>>,
    catalog: Arc<Mutex<HashMap<CatalogKey, CatalogEntry>>>,
    unclaimed: Arc<super::unclaimed::Unclaimed>,
}

impl std::fmt::Debug for PlatformState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PlatformState").finish_non_exhaustive()
    }
}

/// Shared state of the controllers.
#[derive(Clone)]
pub struct Context {
    /// Kubernetes client.
    pub client: kube::Client,
    /// Publishes Events.
    pub events: super::events::EventPublisher,
    /// Metrics.
    pub metrics: Metrics,
    /// Settings.
    pub settings: Settings,
    /// Watch caches and the Secret cache.
    pub stores: Stores,
    /// Asks the platform controllers to check a platform now (after a 401 seen by an instance).
    pub platform_checks: PlatformChecks,
    /// The health of every platform configuration in use, shared by its instances.
    pub health: super::core::health::PlatformHealth,
    /// The passes under way and their permits, handed out in the order asked for.
    pub turns: Arc<super::turns::Turns>,
    /// The remote instances of this cluster that may have no resource (see [`super::unclaimed`]).
    pub unclaimed: Arc<super::unclaimed::Unclaimed>,
    platforms: Arc<Mutex<HashMap<String, PlatformClient>>>,
    catalog: Arc<Mutex<HashMap<CatalogKey, CatalogEntry>>>,
    memory: Memories,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Context {
    /// A new context: one per run; `shared` is the process's, common to all its runs.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        client: kube::Client,
        events: super::events::EventPublisher,
        metrics: Metrics,
        settings: Settings,
        stores: Stores,
        platform_checks: PlatformChecks,
        memory: Memories,
        shared: PlatformState,
        concurrency: u16,
    ) -> Self {
        shared.unclaimed.observe(metrics.restore_index_keys.clone());
        Self {
            client,
            events,
            metrics,
            settings,
            stores,
            platform_checks,
            health: shared.health,
            turns: super::turns::Turns::new(concurrency),
            unclaimed: shared.unclaimed,
            platforms: shared.clients,
            catalog: shared.catalog,
            memory,
        }
    }

    /// The client of a platform configuration, created on first use and shared afterwards. A
    /// change of the platform object or its credentials makes a new one.
    pub fn platform_client(&self, platform: &ResolvedPlatform) -> Result<PlatformClient, Error> {
        let mut clients = self.platforms.lock().map_err(|_| poisoned())?;
        if let Some(client) = clients.get(&platform.fingerprint) {
            return Ok(client.clone());
        }
        // A cached client's host was allowed when it was made (its fingerprint names the
        // platform object's version, and so its base URL; the allowed hosts are fixed).
        self.check_platform_host(&platform.settings.base_url)?;
        let prefix = platform.fingerprint.split('#').next().unwrap_or_default().to_string();
        clients.retain(|key, _| !key.starts_with(&format!("{prefix}#")));
        self.health.forget_others(&prefix, &platform.fingerprint);
        let settings = &platform.settings;
        let rps = settings.requests_per_second.unwrap_or(self.settings.default_requests_per_second);
        let mut config = PlatformConfig::new(
            settings.base_url.trim(),
            platform.user_secret.clone(),
            platform.organization_secret.clone(),
        );
        config.requests_per_second = f64::from(rps);
        config.burst = settings.burst.unwrap_or(rps.saturating_mul(2)).max(1);
        config.timeout = self.settings.platform_timeout;
        config.allow_http = settings.insecure_allow_http;
        config.ca_bundle_pem = platform.ca_bundle_pem.clone();
        config.observer = Some(Arc::new(self.metrics.clone()));
        let client = PlatformClient::new(config)?;
        clients.insert(platform.fingerprint.clone(), client.clone());
        Ok(client)
    }

    /// Before an instance's platform call: fails with the error every instance on `platform`
    /// reports while the platform is suspect, broken or throttled (see [`super::health`]),
    /// without calling. `admitted`: the pass made a call already (a throttled platform lets the
    /// one instance that tries it finish its pass).
    pub fn platform_gate(&self, platform: &ResolvedPlatform, admitted: bool) -> Result<(), Error> {
        // The platform's health is shared state with its own clock: a throttle or a backoff runs
        // from the moment of the call that caused it, not from the start of a pass.
        let now = Instant::now();
        match self.health.with(&platform.fingerprint, |h| h.admit(now, admitted)) {
            Some(err) => Err(Error::Platform(err)),
            None => Ok(()),
        }
    }

    /// Records how an instance's calls on `platform` ended, and returns the outcome to report: a
    /// failure that concerns the whole platform is reported in the words of the first one, and
    /// asks the platform controller for a probe (once). A success after a failure asks for one
    /// too, so that the platform object's status catches up. `called`: the pass made a call, so
    /// its success says the platform answers, and its failure is news (a pass the gate stopped
    /// says nothing new, and does not renew a throttle).
    pub fn platform_outcome<T>(
        &self,
        platform: &ResolvedPlatform,
        outcome: Result<T, Error>,
        called: bool,
    ) -> Result<T, Error> {
        let probe = |ctx: &Self| {
            let reference = crate::api::PlatformRef { kind: platform.kind, name: platform.name.clone() };
            ctx.platform_checks.request(platform.namespace.as_deref().unwrap_or_default(), &reference);
        };
        match outcome {
            // Refused by the gate (no call): the platform's own error already, nothing learnt.
            Err(Error::Platform(err)) if !called => Err(Error::Platform(err)),
            Err(Error::Platform(err)) => {
                let (reported, request) =
                    self.health.with(&platform.fingerprint, |h| h.instance_failed(err, Instant::now()));
                if request {
                    probe(self);
                }
                Err(Error::Platform(reported))
            }
            Ok(value) => {
                if called && self.health.with(&platform.fingerprint, super::core::health::Health::succeeded) {
                    probe(self);
                }
                Ok(value)
            }
            other => other,
        }
    }

    /// Refuses a base URL whose host is not among the allowed platform hosts (a URL that does
    /// not parse is left to the client, which says why).
    fn check_platform_host(&self, base_url: &str) -> Result<(), Error> {
        let Ok(url) = reqwest::Url::parse(base_url.trim()) else {
            return Ok(());
        };
        let Some(host) = url.host_str() else {
            return Ok(());
        };
        let allowed = &self.settings.allowed_platform_hosts;
        if allowed.allows(host) {
            return Ok(());
        }
        Err(Error::invalid(
            "PlatformHostNotAllowed",
            format!(
                "the platform host `{host}` is not one this operator may call (allowed: {}); use your Open Connectors API host, or ask the operator's administrator to allow it (flag --allowed-platform-hosts, chart value allowedPlatformHosts)",
                allowed.describe()
            ),
        ))
    }

    /// The configuration catalog of a connector, cached for `catalog_ttl` (`now`: the time of
    /// the pass).
    pub async fn catalog(
        &self,
        client: &PlatformClient,
        connector: &str,
        now: Instant,
    ) -> Result<Arc<Vec<ElementConfig>>, Error> {
        let key = (client.base_url().to_string(), connector.to_string());
        if let Some((at, entries)) = self.catalog.lock().map_err(|_| poisoned())?.get(&key)
            && now.saturating_duration_since(*at) < self.settings.catalog_ttl
        {
            return Ok(entries.clone());
        }
        let entries = match client.element_configuration(connector).await {
            Ok(entries) => Arc::new(entries),
            Err(PlatformError::NotFound { .. }) => {
                return Err(Error::invalid(
                    "UnknownConnector",
                    format!(
                        "connector `{connector}` is not known to the platform at {}; check spec.connector",
                        client.base_url()
                    ),
                ));
            }
            Err(err) => return Err(err.into()),
        };
        if entries.len() > CATALOG_MAX_KEYS {
            return Err(PlatformError::Protocol {
                message: format!(
                    "GET /elements/{{key}}/configuration: the platform lists {} configuration keys for `{connector}`, more than the {CATALOG_MAX_KEYS} any connector has",
                    entries.len()
                ),
            }
            .into());
        }
        let mut catalog = self.catalog.lock().map_err(|_| poisoned())?;
        insert_bounded(&mut catalog, key, (now, entries.clone()), self.settings.catalog_ttl);
        Ok(entries)
    }

    /// What is remembered of an instance (a copy).
    pub fn memory(&self, uid: &str) -> Memory {
        self.memory.get(uid)
    }

    /// Reads what is remembered of an instance without copying all of it.
    pub fn recall<R>(&self, uid: &str, read: impl FnOnce(&Memory) -> R) -> R {
        self.memory.read(uid, read)
    }

    /// Updates what is remembered of an instance.
    pub fn remember(&self, uid: &str, update: impl FnOnce(&mut Memory)) {
        self.memory.update(uid, update);
    }

    /// The controller's action for the next pass of instance `uid`, due `after` from now: a long
    /// wait is remembered as its wake-up, a short one goes to the controller's scheduler
    /// (`wakeups.rs`).
    pub fn later(&self, uid: &str, after: std::time::Duration) -> kube::runtime::controller::Action {
        super::wakeups::later(&self.memory, uid, after, tokio::time::Instant::now())
    }

    /// A pass of instance `uid` starts: the wake-up planned for it is cleared (the pass plans the
    /// next).
    pub fn clear_wake(&self, uid: &str) {
        self.memory.set_wake(uid, None);
    }

    /// After a write of a pass failed its resourceVersion precondition: whether the watch cache
    /// already has a newer copy of the instance than `used`, the copy the pass started from. If
    /// not, the watch's next copy of it is passed on to the controller whatever changed in it
    /// (see [`outdated`]).
    pub fn newer_copy_cached(&self, used: &super::CachedInstance) -> bool {
        outdated(&self.memory, &self.stores.instances, used)
    }

    /// Forgets an instance (after its deletion).
    pub fn forget(&self, uid: &str) {
        self.memory.remove(uid);
    }

    /// The watch cache's copy of the instance `ci` names (by namespace and name: it may be newer
    /// than `ci`, or another object of the same name).
    pub fn cached_instance(&self, ci: &crate::api::ConnectorInstance) -> Option<Arc<super::CachedInstance>> {
        let key = ObjectRef::new(&kube::ResourceExt::name_any(ci))
            .within(&kube::ResourceExt::namespace(ci).unwrap_or_default());
        self.stores.instances.get(&key)
    }

    /// A Secret from the watch cache of owned Secrets (token and grant Secrets): `None` if it is
    /// not there, `Some(None)` if it is but cannot be taken from it (then it is to be read).
    pub fn cached_token_secret(&self, namespace: &str, name: &str) -> Option<Option<Arc<Secret>>> {
        let cached = self.stores.token_secrets.get(namespace, name)?;
        Some(match cached {
            Ok(secret) => Some(Arc::new(secret)),
            Err(err) => {
                tracing::error!(%err, "a cached Secret could not be read back");
                None
            }
        })
    }
}

fn poisoned() -> Error {
    Error::Internal("an internal lock was poisoned by a panic")
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

    #[test]
    fn the_watch_passes_on_a_first_sight_and_a_change_only() {
        let memories = Memories::default();
        let cases = [
            ("u-1", 7, true, "first sight"),
            ("u-1", 7, false, "the same (a status write)"),
            ("u-2", 7, true, "another instance"),
            ("u-1", 8, true, "a new generation or annotation"),
            ("u-1", 8, false, "the same again"),
            ("u-1", 7, true, "back to what it was"),
            ("u-3", 0, true, "a zero digest is a digest too"),
            ("u-3", 0, false, "and remembered"),
        ];
        for (uid, digest, news, case) in cases {
            assert_eq!(memories.changed(uid, digest), news, "{case}");
        }
        memories.remove("u-1");
        assert!(memories.changed("u-1", 7), "forgotten at its deletion: a re-created one is news");
    }

    #[test]
    fn after_a_conflict_the_next_copy_is_news_once_whatever_changed() {
        let memories = Memories::default();
        assert!(memories.changed("u-1", 7), "first sight");
        assert!(!memories.changed("u-1", 7), "its own status write is no news");
        memories.pass_on_next_copy("u-1");
        assert!(memories.changed("u-1", 7), "the next copy, its own status write too, is news");
        assert!(!memories.changed("u-1", 7), "once");
        memories.pass_on_next_copy("u-2");
        assert_eq!(memories.0.lock().unwrap().len(), 1, "nothing is added for an instance not remembered");
        assert!(memories.changed("u-2", 7), "its first copy is news anyway");
    }

    #[test]
    fn a_conflict_runs_the_pass_again_from_a_newer_cached_copy_else_from_the_next_one() {
        use kube::runtime::{reflector, watcher};
        let copy = |rv: &str| -> super::super::CachedInstance {
            let ci: crate::api::ConnectorInstance = serde_json::from_value(serde_json::json!({
                "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                "metadata": { "name": "a", "namespace": "n", "uid": "u-1", "resourceVersion": rv },
                "spec": { "platformRef": { "name": "p" }, "connector": "echo" },
            }))
            .unwrap();
            super::super::CachedInstance::new(&ci)
        };
        let (store, mut writer) = reflector::store::<super::super::CachedInstance>();
        let memories = Memories::default();
        assert!(memories.changed("u-1", 7));
        let used = copy("10");
        writer.apply_watcher_event(&watcher::Event::Apply(copy("10")));
        assert!(!outdated(&memories, &store, &used), "the cache has nothing newer: wait for it");
        assert!(memories.changed("u-1", 7), "and the next copy, whatever changed, runs the pass");
        writer.apply_watcher_event(&watcher::Event::Apply(copy("12")));
        assert!(outdated(&memories, &store, &used), "a newer copy is cached: the pass runs again now");
        writer.apply_watcher_event(&watcher::Event::Delete(copy("12")));
        assert!(!outdated(&memories, &store, &used), "gone: nothing to run again from");
    }

    #[test]
    fn what_few_instances_need_is_boxed_only_while_there_is_some() {
        use super::super::core::outcome::Remember;
        let pending = || Some(Some((7, secrecy::SecretString::from("t"), "h".to_string())));
        let cases: Vec<(&str, Vec<Remember>, bool)> = vec![
            ("nothing rare", vec![Remember { succeeded: true, ..Remember::default() }], false),
            ("a pending token", vec![Remember { pending_token: pending(), ..Remember::default() }], true),
            (
                "a pending token, then written",
                vec![
                    Remember { pending_token: pending(), ..Remember::default() },
                    Remember { pending_token: Some(None), ..Remember::default() },
                ],
                false,
            ),
            (
                "written without one pending",
                vec![Remember { pending_token: Some(None), ..Remember::default() }],
                false,
            ),
            ("a used grant", vec![Remember { used_grant: Some("d".into()), ..Remember::default() }], true),
            (
                "an ignored approval",
                vec![Remember { ignored_approval: Some("a".into()), ..Remember::default() }],
                true,
            ),
            (
                "a re-authentication",
                vec![Remember { reauthenticated_for: Some("r".into()), ..Remember::default() }],
                true,
            ),
        ];
        for (case, passes, boxed) in cases {
            let mut memory = Memory::default();
            for remember in passes {
                memory.apply(remember);
            }
            assert_eq!(memory.rare.is_some(), boxed, "{case}");
        }
        let mut memory = Memory::default();
        memory.apply(Remember {
            pending_token: pending(),
            used_grant: Some("d1".into()),
            ..Remember::default()
        });
        memory.apply(Remember {
            used_grant: Some("d2".into()),
            ignored_approval: Some("a".into()),
            ..Remember::default()
        });
        memory.apply(Remember {
            pending_token: Some(None),
            reauthenticated_for: Some("r".into()),
            ..Remember::default()
        });
        assert!(memory.pending_token().is_none());
        assert_eq!(memory.used_grants(), ["d1", "d2"]);
        assert_eq!(memory.ignored_approval(), Some("a"));
        assert_eq!(memory.reauthenticated_for().map(String::as_str), Some("r"));
        assert!(std::mem::size_of::<Memory>() <= 128, "{} bytes per instance", std::mem::size_of::<Memory>());
    }

    fn token_secret(owner_uid: &str, rv: &str, controller: bool) -> Secret {
        let mut secret = Secret::default();
        secret.metadata.resource_version = Some(rv.into());
        secret.metadata.owner_references = Some(vec![OwnerReference {
            uid: owner_uid.into(),
            controller: Some(controller),
            ..OwnerReference::default()
        }]);
        secret
    }

    #[test]
    fn only_the_exact_version_written_last_is_an_echo() {
        let memories = Memories::default();
        assert!(!memories.is_own_write(&token_secret("a", "7", true)), "nothing written yet");
        memories.update("a", |m| m.written_secret = 7);
        assert!(memories.is_own_write(&token_secret("a", "7", true)));
        assert!(!memories.is_own_write(&token_secret("a", "8", true)), "a later change (an edit) is news");
        assert!(!memories.is_own_write(&token_secret("b", "7", true)), "another owner");
        assert!(!memories.is_own_write(&token_secret("a", "7", false)), "not its controller");
        assert!(!memories.is_own_write(&Secret::default()), "no version, no owner");
    }

    #[test]
    fn the_catalog_cache_is_bounded_and_drops_the_expired_then_the_oldest() {
        let ttl = Duration::from_secs(600);
        let mut catalog = HashMap::new();
        let base = Instant::now();
        let empty = || Arc::new(Vec::new());
        // Entry n was read at base + 500 + n s; "now" is base + 1000 s.
        for n in 0..CATALOG_MAX_ENTRIES {
            let at = base + Duration::from_secs(n as u64 + 500);
            catalog.insert((format!("https://p{n}"), "echo".to_string()), (at, empty()));
        }
        let now = base + Duration::from_secs(1000);
        // Full, nothing expired: the oldest (p0) makes room.
        insert_bounded(&mut catalog, ("https://new".into(), "echo".into()), (now, empty()), ttl);
        assert_eq!(catalog.len(), CATALOG_MAX_ENTRIES);
        assert!(!catalog.contains_key(&("https://p0".into(), "echo".into())));
        assert!(catalog.contains_key(&("https://p1".into(), "echo".into())));
        // A refresh of a cached key needs no room.
        insert_bounded(&mut catalog, ("https://new".into(), "echo".into()), (now, empty()), ttl);
        assert_eq!(catalog.len(), CATALOG_MAX_ENTRIES);
        // Later, every expired entry goes at once: those read more than 600 s before.
        let later = base + Duration::from_secs(1500);
        insert_bounded(&mut catalog, ("https://newer".into(), "echo".into()), (later, empty()), ttl);
        assert_eq!(catalog.len(), 2 + (CATALOG_MAX_ENTRIES - 401), "p401.. and the two new ones");
    }
}
