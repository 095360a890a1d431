//! The reconcile of a ConnectorInstance: the only place that sequences I/O. It reads what the
//! resource references, asks the plan for one step at a time, executes it, and writes the token
//! Secret and the status only when they change.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::events::EventType;
use futures::FutureExt;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};
use secrecy::{ExposeSecret, SecretString};
use serde_json::json;

use super::context::{Context, resource_version};
use super::error::{Class, Error};
use super::inputs::{self, ResolvedPlatform};
use super::plan::{self, AuthHasher, DesiredRemote, Known, Step};
use super::secret::{self, TokenSecretContent};
use super::status;
use crate::api::{
    ANNOTATION_ABANDON, ANNOTATION_PAUSED, ANNOTATION_RECONCILE_REQUESTED_AT, ActionType, ConnectorInstance,
    ConnectorInstanceStatus, DeletionPolicy, FIELD_MANAGER, FINALIZER, LastAction, OWNERSHIP_TAG_PREFIX,
    PlatformStatusRef, RemoteStatus, ownership_tag,
};
use crate::platform::{DeleteOutcome, ElementInstance, InstanceRequest, PlatformClient, PlatformError};

/// Steps one pass may take at most (a guard; a real pass needs at most five).
const MAX_STEPS: usize = 12;

/// Reconciles one ConnectorInstance, in a task of its own: the controller's own task then only
/// schedules and keeps reading its watches, while reconciles run on every worker thread.
pub async fn reconcile(ci: Arc<ConnectorInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Aborted if the controller drops it, so a reconcile given up on does not run on unseen.
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(reconcile_here(ci, ctx)));
    match task.await {
        Ok(result) => result,
        Err(err) => {
            tracing::error!(%err, "reconcile task failed");
            Err(Error::Internal("the reconcile task failed; it is retried"))
        }
    }
}

#[tracing::instrument(skip_all, fields(namespace = ci.namespace().unwrap_or_default(), name = ci.name_any()))]
async fn reconcile_here(ci: Arc<ConnectorInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let result = if ci.meta().deletion_timestamp.is_some() {
        cleanup(&ci, &ctx).await
    } else {
        apply(&ci, &ctx).await
    };
    ctx.metrics
        .outcome("ConnectorInstance", result.as_ref().map(|_| "ok").unwrap_or_else(Error::metric_label));
    result
}

/// Retry policy after a failed reconcile: exponential backoff with jitter per object, capped,
/// honouring the platform's `Retry-After`.
pub fn error_policy(ci: Arc<ConnectorInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = ci.uid().unwrap_or_default();
    let mut failures = 0;
    ctx.remember(&uid, |m| {
        m.failures = m.failures.saturating_add(1);
        failures = m.failures;
    });
    let delay = backoff(failures, ctx.settings.max_backoff);
    let delay = err.retry_after().map_or(delay, |after| after.min(ctx.settings.max_backoff).max(delay / 4));
    tracing::info!(error = %err, retry_in = ?delay, "reconcile failed; will retry");
    Action::requeue(delay)
}

/// `min(cap, 1 s · 2^(n-1))`, scaled by a random factor in [0.5, 1.5).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = Duration::from_secs(1u64 << exponent).min(cap);
    base.mul_f64(0.5 + fastrand::f64()).min(cap)
}

fn now() -> Time {
    Time(Timestamp::now())
}

/// What one pass learned and did, kept even when a later step fails so that it is recorded.
#[derive(Debug, Default)]
struct Pass {
    known: Known,
    token: Option<SecretString>,
    remote: Option<RemoteStatus>,
    action: Option<ActionType>,
    authenticated: bool,
    /// The platform the pass talks to, once resolved.
    platform: Option<ResolvedPlatform>,
    /// The pass made a platform call.
    called: bool,
}

impl Pass {
    /// Takes in an instance body the platform returned.
    fn absorb(&mut self, instance: &ElementInstance) {
        self.known.instance_id = Some(instance.id);
        self.known.metadata_hash =
            Some(plan::metadata_hash(instance.name.as_deref().unwrap_or_default(), &instance.tags));
        self.known.enabled = Some(!instance.disabled.unwrap_or(false));
        self.known.invalid = instance.valid == Some(false);
        self.remote = Some(RemoteStatus { valid: instance.valid, disabled: instance.disabled });
        if let Some(token) = &instance.token {
            self.token = Some(token.clone());
            self.known.has_token = true;
        }
    }
}

/// The status of `ci`, or the one this operator wrote last if the watch cache has not caught up.
fn current_status(ci: &ConnectorInstance, ctx: &Context, uid: &str) -> ConnectorInstanceStatus {
    let seen = resource_version(ci);
    match ctx.recall(uid, |m| m.written_status.clone()) {
        Some((written, status)) if written > seen => status,
        Some(_) => {
            // The cache has caught up: no need to keep a copy.
            ctx.remember(uid, |m| m.written_status = None);
            ci.status.clone().unwrap_or_default()
        }
        None => ci.status.clone().unwrap_or_default(),
    }
}

async fn apply(ci: &ConnectorInstance, ctx: &Context) -> Result<Action, Error> {
    let uid = ci.uid().unwrap_or_default();
    let old_status = current_status(ci, ctx, &uid);
    let mut new_status = old_status.clone();
    new_status.observed_generation = ci.metadata.generation;
    let requested = ci.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT).cloned();

    if is_true(ci, ANNOTATION_PAUSED) {
        status::paused(&mut new_status, &now());
        write_status(ci, ctx, &old_status, &new_status).await?;
        return Ok(Action::await_change());
    }
    // The finalizer guards only what may exist remotely: a recorded instance here, or (in the
    // pass) one about to be created or adopted. A resource whose inputs never allowed a platform
    // write has none, so `kubectl delete` removes it at once.
    if old_status.instance_id.is_some() {
        ensure_finalizer(ci, ctx).await?;
    }

    let forced = requested.is_some() && requested != old_status.last_handled_reconcile_at;
    let mut pass = Pass::default();
    let outcome = run_pass(ci, ctx, &uid, forced, &mut pass, &mut new_status).await;
    let outcome = match pass.platform.take() {
        Some(platform) => ctx.platform_outcome(&platform, outcome, pass.called),
        None => outcome,
    };
    if outcome.is_ok() || pass.known.instance_id.is_some() {
        record_pass(ci, &pass, &mut new_status);
    }
    if outcome.is_ok() {
        new_status.last_handled_reconcile_at = requested;
    }
    let action = match &outcome {
        Ok(resync) => {
            status::ready(&mut new_status, &secret::token_secret_name(ci), &now());
            ctx.remember(&uid, |m| m.failures = 0);
            Ok(Action::requeue(*resync))
        }
        Err(err) => {
            let class = err.class();
            status::failed(&mut new_status, err, class, &now());
            match class {
                Class::Stalled => Ok(Action::await_change()),
                Class::StalledRecheck => Ok(Action::requeue(ctx.settings.max_backoff)),
                Class::Transient => Err(()),
            }
        }
    };
    let changed = write_status(ci, ctx, &old_status, &new_status).await?;
    if let (Err(err), true) = (&outcome, changed) {
        publish(ctx, ci, EventType::Warning, err.reason(), err.to_string());
    }
    match (action, outcome) {
        (Ok(action), _) => Ok(action),
        (Err(()), Err(err)) => Err(err),
        (Err(()), Ok(_)) => Ok(Action::await_change()),
    }
}

/// One pass: resolve, plan and execute steps, write the token Secret. Returns the delay until the
/// next resync.
async fn run_pass(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    forced: bool,
    pass: &mut Pass,
    new_status: &mut ConnectorInstanceStatus,
) -> Result<Duration, Error> {
    let namespace = ci.namespace().unwrap_or_default();
    let resync = resync_interval(ci, ctx)?;
    check_tags(&ci.spec.tags)?;
    let platform = inputs::resolve_platform(ctx, &namespace, &ci.spec.platform_ref).await?;
    new_status.platform = Some(PlatformStatusRef {
        kind: platform.kind,
        name: platform.name.clone(),
        base_url: platform.settings.base_url.trim().to_string(),
    });
    let client = ctx.platform_client(&platform)?;
    pass.platform = Some(platform.clone());
    let configuration = inputs::resolve_configuration(ctx, &namespace, &ci.spec).await?;

    let secret_name = secret::token_secret_name(ci);
    secret::check_secret_name(&secret_name)
        .map_err(|message| Error::invalid("InvalidTokenSecretName", message))?;
    let existing_secret = token_secret(ctx, uid, &namespace, &secret_name).await?;
    if let Some(existing) = &existing_secret
        && !secret::is_owned_by(existing, ci)
    {
        return Err(Error::invalid(
            "SecretConflict",
            format!(
                "Secret `{secret_name}` already exists and is not owned by this ConnectorInstance; delete or rename it, or set spec.tokenSecret.name"
            ),
        ));
    }

    let desired = desired_remote(ci, &configuration);
    let memory = ctx.memory(uid);
    let status = current_status(ci, ctx, uid);
    pass.token = existing_secret.as_deref().and_then(secret::stored_token);
    pass.remote = status.remote.clone();
    pass.known = Known {
        instance_id: status.instance_id,
        metadata_hash: status.applied_metadata_hash.clone(),
        enabled: status.remote.as_ref().and_then(|r| r.disabled).map(|d| !d),
        // This process's own record is the newest; the Secret's annotation survives restarts.
        auth_hash: memory
            .auth_hash
            .clone()
            .or_else(|| existing_secret.as_deref().and_then(secret::stored_auth_hash)),
        has_token: pass.token.is_some(),
        resync_due: forced || resync_due(ctx, uid, &memory, &status, ci.metadata.generation, resync),
        invalid: status.remote.as_ref().and_then(|r| r.valid) == Some(false),
        ..Known::default()
    };

    let tag = ownership_tag(uid);
    for _ in 0..MAX_STEPS {
        let step = plan::next_step(&desired, &pass.known);
        tracing::debug!(?step, "plan");
        if step != Step::Done {
            // A broken platform is not called: every instance on it reports the same error.
            ctx.platform_gate(&platform)?;
            pass.called = true;
        }
        match step {
            Step::Done => break,
            Step::SearchByTag => {
                let mut ids: Vec<i64> =
                    client.find_instances_by_tag(&tag).await?.iter().map(|i| i.id).collect();
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > 1 {
                    let note = format!(
                        "{} remote instances carry this resource's tag: {ids:?}; adopting the oldest",
                        ids.len()
                    );
                    publish(ctx, ci, EventType::Warning, "DuplicateRemoteInstances", note);
                }
                pass.known.tag_search = Some(ids);
            }
            Step::Create | Step::Recreate => {
                check_required_configuration(ctx, &client, &ci.spec.connector, &configuration).await?;
                ensure_finalizer(ci, ctx).await?;
                let request = instance_request(ci, &desired, &configuration);
                let created = client.create_instance(&request).await?;
                pass.absorb(&created);
                pass.known.metadata_hash = Some(desired.metadata_hash.clone());
                pass.known.auth_hash = Some(desired.auth_hash.clone());
                pass.known.read = true;
                pass.authenticated = true;
                let action = if step == Step::Create { ActionType::Created } else { ActionType::Recreated };
                pass.action = Some(action);
                // Instances created together spread their reads over an interval.
                ctx.remember(uid, |m| m.next_read = Some(next_read(resync, 0.5)));
                record_action(ctx, ci, action, format!("created remote instance {}", created.id));
            }
            Step::Adopt(id) => {
                ensure_finalizer(ci, ctx).await?;
                let adopted = client.get_instance(id).await?;
                pass.absorb(&adopted);
                // The instance was created from this resource moments before a crash; without a
                // record of other inputs, take it as created from the current ones.
                pass.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                pass.known.read = true;
                pass.action = Some(ActionType::Adopted);
                ctx.remember(uid, |m| m.next_read = Some(next_read(resync, 0.9)));
                record_action(
                    ctx,
                    ci,
                    ActionType::Adopted,
                    format!("adopted remote instance {id} found by its ownership tag"),
                );
            }
            Step::Read => {
                let id = pass.known.instance_id.unwrap_or_default();
                match client.get_instance(id).await {
                    Ok(instance) => {
                        pass.absorb(&instance);
                        pass.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                        pass.known.read = true;
                        ctx.remember(uid, |m| m.next_read = Some(next_read(resync, 0.9)));
                    }
                    Err(crate::platform::PlatformError::NotFound { .. }) => {
                        tracing::info!(id, "remote instance is gone; it will be recreated");
                        pass.known =
                            Known { lost: true, resync_due: pass.known.resync_due, ..Known::default() };
                    }
                    Err(err) => return Err(err.into()),
                }
            }
            Step::Patch => {
                let id = pass.known.instance_id.unwrap_or_default();
                let patched = client.patch_instance(id, &desired.name, &desired.tags).await?;
                if let Some(token) = &patched.token {
                    pass.token = Some(token.clone());
                }
                pass.known.metadata_hash = Some(desired.metadata_hash.clone());
                pass.action = Some(ActionType::Updated);
                record_action(
                    ctx,
                    ci,
                    ActionType::Updated,
                    format!("updated name and tags of remote instance {id}"),
                );
            }
            Step::SetEnabled(enabled) => {
                let id = pass.known.instance_id.unwrap_or_default();
                client.set_enabled(id, enabled).await?;
                pass.known.enabled = Some(enabled);
                pass.remote.get_or_insert_with(RemoteStatus::default).disabled = Some(!enabled);
                pass.action = Some(ActionType::Updated);
                let verb = if enabled { "enabled" } else { "disabled" };
                record_action(ctx, ci, ActionType::Updated, format!("{verb} remote instance {id}"));
            }
            Step::ReAuthenticate => {
                let id = pass.known.instance_id.unwrap_or_default();
                check_required_configuration(ctx, &client, &ci.spec.connector, &configuration).await?;
                let request = instance_request(ci, &desired, &configuration);
                let instance = client.reauthenticate_instance(id, &request).await?;
                pass.absorb(&instance);
                pass.known.metadata_hash = Some(desired.metadata_hash.clone());
                pass.known.auth_hash = Some(desired.auth_hash.clone());
                pass.known.reauthenticated = true;
                pass.authenticated = true;
                pass.action = Some(ActionType::ReAuthenticated);
                record_action(
                    ctx,
                    ci,
                    ActionType::ReAuthenticated,
                    format!("re-authenticated remote instance {id}"),
                );
            }
        }
        if pass.known.invalid && !pass.known.reauthenticated && !pass.known.reauth_without_browser {
            let catalog = ctx.catalog(&client, &ci.spec.connector).await?;
            pass.known.reauth_without_browser = !catalog.iter().any(|c| c.key.starts_with("oauth."));
        }
    }

    let auth_hash = pass.known.auth_hash.clone().unwrap_or_else(|| desired.auth_hash.clone());
    ctx.remember(uid, |m| m.auth_hash = Some(auth_hash.clone()));
    write_token_secret(ci, ctx, pass, &platform, existing_secret.as_deref(), &auth_hash).await?;
    if pass.known.invalid {
        return Err(Error::invalid(
            "RemoteInvalid",
            "the platform reports the instance's authentication as invalid and it cannot be renewed without a person \
             (OAuth); provide new credentials in the configuration",
        ));
    }
    let due_in =
        ctx.recall(uid, |m| m.next_read).map_or(resync, |at| at.saturating_duration_since(Instant::now()));
    Ok(due_in + Duration::from_millis(50))
}

/// When to read again: `resync` scaled by a random factor in `[low, 2 - low)`, so that instances
/// created together do not all resync together.
fn next_read(resync: Duration, low: f64) -> Instant {
    Instant::now() + resync.mul_f64(low + fastrand::f64() * 2.0 * (1.0 - low))
}

/// Whether the periodic read is due. An instance this process has not read yet is due at once,
/// unless its status says it is Ready for its generation (after a restart): then its first read
/// is spread over one interval instead of all instances reading at start-up.
fn resync_due(
    ctx: &Context,
    uid: &str,
    memory: &super::context::Memory,
    status: &ConnectorInstanceStatus,
    generation: Option<i64>,
    resync: Duration,
) -> bool {
    if let Some(at) = memory.next_read {
        return Instant::now() >= at;
    }
    let settled = status.observed_generation == generation
        && status.instance_id.is_some()
        && crate::api::is_condition_true(&status.conditions, crate::api::READY);
    if settled {
        ctx.remember(uid, |m| m.next_read = Some(next_read(resync, 0.0)));
        return false;
    }
    true
}

/// The remote instance as the resource wants it.
fn desired_remote(
    ci: &ConnectorInstance,
    configuration: &std::collections::BTreeMap<String, SecretString>,
) -> DesiredRemote {
    let name = ci
        .spec
        .display_name
        .clone()
        .unwrap_or_else(|| format!("{}/{}", ci.namespace().unwrap_or_default(), ci.name_any()));
    let own_tag = ownership_tag(&ci.uid().unwrap_or_default());
    let mut tags: Vec<String> = Vec::with_capacity(ci.spec.tags.len() + 1);
    for tag in ci.spec.tags.iter().chain(std::iter::once(&own_tag)) {
        if !tags.contains(tag) {
            tags.push(tag.clone());
        }
    }
    let mut hasher = AuthHasher::default();
    hasher.field(ci.spec.connector.as_bytes());
    for (key, value) in configuration {
        hasher.field(key.as_bytes()).field(value.expose_secret().as_bytes());
    }
    DesiredRemote {
        metadata_hash: plan::metadata_hash(&name, &tags),
        name,
        tags,
        enabled: ci.spec.enabled(),
        auth_hash: hasher.finish(),
    }
}

fn instance_request(
    ci: &ConnectorInstance,
    desired: &DesiredRemote,
    configuration: &std::collections::BTreeMap<String, SecretString>,
) -> InstanceRequest {
    InstanceRequest {
        element_key: ci.spec.connector.clone(),
        name: desired.name.clone(),
        tags: desired.tags.clone(),
        configuration: configuration.clone(),
        ..InstanceRequest::default()
    }
}

/// Refuses to send a configuration the connector's catalog says is incomplete.
async fn check_required_configuration(
    ctx: &Context,
    client: &PlatformClient,
    connector: &str,
    configuration: &std::collections::BTreeMap<String, SecretString>,
) -> Result<(), Error> {
    let catalog = ctx.catalog(client, connector).await?;
    let missing: Vec<&str> = catalog
        .iter()
        .filter(|entry| entry.needs_user_value() && !configuration.contains_key(&entry.key))
        .map(|entry| entry.key.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::invalid(
        "ConfigurationMissing",
        format!(
            "connector `{connector}` requires configuration {}: set them in spec.configuration, or in spec.configurationFrom for secret values",
            missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// Writes the token Secret if it is missing or differs from what it should hold.
async fn write_token_secret(
    ci: &ConnectorInstance,
    ctx: &Context,
    pass: &Pass,
    platform: &ResolvedPlatform,
    existing: Option<&Secret>,
    auth_hash: &str,
) -> Result<(), Error> {
    let (Some(token), Some(instance_id)) = (&pass.token, pass.known.instance_id) else {
        return Ok(());
    };
    let content = TokenSecretContent {
        token,
        instance_id,
        base_url: platform.settings.base_url.trim(),
        connector: &ci.spec.connector,
        auth_hash,
    };
    let Some(desired) = secret::render(ci, &content) else {
        return Ok(());
    };
    if existing.is_some_and(|e| secret::is_up_to_date(e, &desired)) {
        return Ok(());
    }
    let name = secret::token_secret_name(ci);
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ci.namespace().unwrap_or_default());
    if existing.is_none() {
        // Create, never overwrite: a Secret of this name that appeared since it was checked
        // makes this fail (409), and the next pass looks at whose it is.
        let params = PostParams { field_manager: Some(FIELD_MANAGER.to_string()), ..PostParams::default() };
        let created = api.create(&params, &desired).await?;
        let rv = resource_version(&created);
        ctx.remember(&ci.uid().unwrap_or_default(), |m| m.written_secret = rv);
        return Ok(());
    }
    let mut body =
        serde_json::to_value(&desired).map_err(|e| Error::invalid("InternalError", e.to_string()))?;
    body["apiVersion"] = json!("v1");
    body["kind"] = json!("Secret");
    let written = api.patch(&name, &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&body)).await?;
    let rv = resource_version(&written);
    ctx.remember(&ci.uid().unwrap_or_default(), |m| m.written_secret = rv);
    Ok(())
}

/// The token Secret: from the watch cache, or read when the cache does not have it or has not
/// caught up with this operator's last write.
async fn token_secret(
    ctx: &Context,
    uid: &str,
    namespace: &str,
    name: &str,
) -> Result<Option<Arc<Secret>>, Error> {
    let written = ctx.recall(uid, |m| m.written_secret);
    if let Some(cached) = ctx.cached_token_secret(namespace, name)
        && resource_version(cached.as_ref()) >= written
    {
        return Ok(Some(cached));
    }
    // Never written by this process and no Secret of that name listed (token Secrets by the watch
    // of owned Secrets, any other by the metadata watch): nothing to read (the write then creates,
    // and fails rather than overwrite one that appeared meanwhile).
    let owned_listed = ctx.stores.token_secrets.wait_until_ready().now_or_never().is_some_and(|r| r.is_ok());
    if written == 0 && owned_listed && !ctx.stores.secrets.may_exist(namespace, name) {
        return Ok(None);
    }
    inputs::get_secret(&ctx.client, namespace, name).await
}

/// Copies what the pass learned into the status.
fn record_pass(ci: &ConnectorInstance, pass: &Pass, status: &mut ConnectorInstanceStatus) {
    status.instance_id = pass.known.instance_id;
    status.applied_metadata_hash = pass.known.metadata_hash.clone();
    if pass.remote.is_some() {
        status.remote = pass.remote.clone();
    }
    if let Some(token) = &pass.token {
        status.token_secret_name = Some(secret::token_secret_name(ci));
        status.token_sha256 = Some(secret::token_sha256(token)[..12].to_string());
    }
    if let Some(action) = pass.action {
        status.last_action = Some(LastAction { type_: action, time: now() });
    }
    if pass.authenticated {
        status.last_authenticated_time = Some(now());
    }
}

async fn cleanup(ci: &ConnectorInstance, ctx: &Context) -> Result<Action, Error> {
    let uid = ci.uid().unwrap_or_default();
    if !ci.finalizers().iter().any(|f| f == FINALIZER) {
        // Nothing of ours holds it (paused from the start, or already released): it goes now,
        // and so does what is remembered of it.
        ctx.forget(&uid);
        return Ok(Action::await_change());
    }
    let old_status = current_status(ci, ctx, &uid);
    if is_true(ci, ANNOTATION_ABANDON) {
        let note = match old_status.instance_id {
            Some(id) => format!(
                "finalizer released by annotation {ANNOTATION_ABANDON}; remote instance {id} was not deleted"
            ),
            None => format!("finalizer released by annotation {ANNOTATION_ABANDON}"),
        };
        publish(ctx, ci, EventType::Warning, "Abandoned", note);
        ctx.metrics.action("Abandoned");
        return release(ci, ctx, &uid).await;
    }
    if ci.spec.deletion_policy() == DeletionPolicy::Orphan {
        let note = format!("deletionPolicy Orphan: remote instance {:?} kept", old_status.instance_id);
        publish(ctx, ci, EventType::Normal, "Orphaned", note);
        ctx.metrics.action("Orphaned");
        return release(ci, ctx, &uid).await;
    }
    match delete_remote(ci, ctx, &uid).await {
        Ok(deleted) => {
            let note = if deleted.is_empty() {
                "no remote instance existed".to_string()
            } else {
                format!(
                    "deleted remote instance {}",
                    deleted.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                )
            };
            publish(ctx, ci, EventType::Normal, "Deleted", note);
            ctx.metrics.action("Deleted");
            release(ci, ctx, &uid).await
        }
        Err(err) => {
            let mut new_status = old_status.clone();
            new_status.observed_generation = ci.metadata.generation;
            let class = err.class();
            status::deletion_blocked(&mut new_status, &err, class, old_status.instance_id, &now());
            if write_status(ci, ctx, &old_status, &new_status).await? {
                publish(ctx, ci, EventType::Warning, "DeletionBlocked", err.to_string());
            }
            match class {
                Class::Stalled => Ok(Action::await_change()),
                Class::StalledRecheck => Ok(Action::requeue(ctx.settings.max_backoff)),
                Class::Transient => Err(err),
            }
        }
    }
}

/// Deletes the remote instances this resource provably owns: every one the platform's tag search
/// answers with its ownership tag, and the one recorded in status if the platform's own answer
/// for it shows that tag. An instance without the tag is never deleted: it may be somebody
/// else's (a platform that answers a search without tags, or an id from another host).
async fn delete_remote(ci: &ConnectorInstance, ctx: &Context, uid: &str) -> Result<Vec<i64>, Error> {
    let namespace = ci.namespace().unwrap_or_default();
    let platform = inputs::resolve_platform(ctx, &namespace, &ci.spec.platform_ref).await?;
    let client = ctx.platform_client(&platform)?;
    ctx.platform_gate(&platform)?;
    let deleted = delete_owned(ci, ctx, uid, &client).await;
    ctx.platform_outcome(&platform, deleted, true)
}

async fn delete_owned(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    client: &PlatformClient,
) -> Result<Vec<i64>, Error> {
    let tag = ownership_tag(uid);
    let mut ids: Vec<i64> = client.find_instances_by_tag(&tag).await?.iter().map(|i| i.id).collect();
    if let Some(recorded) = current_status(ci, ctx, uid).instance_id
        && !ids.contains(&recorded)
    {
        match client.get_instance(recorded).await {
            Ok(remote) if remote.tags.contains(&tag) => ids.push(recorded),
            Ok(_) => {
                let note = format!(
                    "remote instance {recorded} does not carry this resource's ownership tag; it is not deleted"
                );
                publish(ctx, ci, EventType::Warning, "RemoteNotOwned", note);
            }
            Err(PlatformError::NotFound { .. }) => {}
            Err(err) => return Err(err.into()),
        }
    }
    ids.sort_unstable();
    ids.dedup();
    let mut deleted = Vec::new();
    for id in ids {
        if client.delete_instance(id).await? == DeleteOutcome::Deleted {
            deleted.push(id);
        }
    }
    Ok(deleted)
}

async fn release(ci: &ConnectorInstance, ctx: &Context, uid: &str) -> Result<Action, Error> {
    let remaining: Vec<&String> = ci.finalizers().iter().filter(|f| *f != FINALIZER).collect();
    patch_finalizers(ci, ctx, json!(remaining)).await?;
    ctx.forget(uid);
    Ok(Action::await_change())
}

async fn ensure_finalizer(ci: &ConnectorInstance, ctx: &Context) -> Result<(), Error> {
    if ci.finalizers().iter().any(|f| f == FINALIZER) {
        return Ok(());
    }
    let uid = ci.uid().unwrap_or_default();
    if ctx.recall(&uid, |m| m.finalizer_added) > resource_version(ci) {
        // This process added it; the cached copy predates that write.
        return Ok(());
    }
    let mut finalizers = ci.finalizers().to_vec();
    finalizers.push(FINALIZER.to_string());
    if let Some(rv) = patch_finalizers(ci, ctx, json!(finalizers)).await? {
        ctx.remember(&uid, |m| m.finalizer_added = rv);
    }
    Ok(())
}

/// Sets the finalizer list, guarded by the resourceVersion read (a conflict retries the pass).
/// Returns the resourceVersion written (none when the resource is gone).
async fn patch_finalizers(
    ci: &ConnectorInstance,
    ctx: &Context,
    finalizers: serde_json::Value,
) -> Result<Option<u64>, Error> {
    let api: Api<ConnectorInstance> =
        Api::namespaced(ctx.client.clone(), &ci.namespace().unwrap_or_default());
    let patch = json!({ "metadata": { "finalizers": finalizers, "resourceVersion": ci.resource_version() } });
    match api.patch(&ci.name_any(), &PatchParams::default(), &Patch::Merge(&patch)).await {
        Ok(written) => Ok(Some(resource_version(&written))),
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(None),
        Err(err) => Err(err.into()),
    }
}

/// Writes the status by server-side apply if it changed. Returns whether it wrote.
async fn write_status(
    ci: &ConnectorInstance,
    ctx: &Context,
    old: &ConnectorInstanceStatus,
    new: &ConnectorInstanceStatus,
) -> Result<bool, Error> {
    if old == new {
        return Ok(false);
    }
    let uid = ci.uid().unwrap_or_default();
    let api: Api<ConnectorInstance> =
        Api::namespaced(ctx.client.clone(), &ci.namespace().unwrap_or_default());
    let patch = json!({
        "apiVersion": ConnectorInstance::api_version(&()),
        "kind": ConnectorInstance::kind(&()),
        "status": new,
    });
    match api
        .patch_status(&ci.name_any(), &PatchParams::apply(FIELD_MANAGER).force(), &Patch::Apply(&patch))
        .await
    {
        Ok(written) => {
            let rv = resource_version(&written);
            ctx.remember(&uid, |m| m.written_status = Some((rv, new.clone())));
            Ok(true)
        }
        Err(kube::Error::Api(status)) if status.code == 404 => Ok(false),
        Err(err) => Err(err.into()),
    }
}

/// `spec.tags` may not use the ownership tag's prefix: that tag is what proves which resource owns
/// a remote instance. The CRD's CEL rule refuses such tags; this covers objects stored without it.
fn check_tags(tags: &[String]) -> Result<(), Error> {
    match tags.iter().find(|t| t.starts_with(OWNERSHIP_TAG_PREFIX)) {
        Some(tag) => Err(Error::invalid(
            "ReservedTag",
            format!(
                "spec.tags entry `{tag}` starts with `{OWNERSHIP_TAG_PREFIX}`, which is reserved for the operator's ownership tag; remove it"
            ),
        )),
        None => Ok(()),
    }
}

fn resync_interval(ci: &ConnectorInstance, ctx: &Context) -> Result<Duration, Error> {
    let Some(text) = &ci.spec.resync_interval else {
        return Ok(ctx.settings.default_resync);
    };
    let interval = super::parse_duration(text).ok_or_else(|| {
        Error::invalid(
            "InvalidResyncInterval",
            format!("resyncInterval `{text}` is not a duration like `90s`, `10m` or `1h`"),
        )
    })?;
    if !(Duration::from_secs(10)..=Duration::from_secs(7 * 24 * 3600)).contains(&interval) {
        return Err(Error::invalid(
            "InvalidResyncInterval",
            format!("resyncInterval `{text}` is out of range: use between 10s and 168h"),
        ));
    }
    Ok(interval)
}

fn is_true(ci: &ConnectorInstance, annotation: &str) -> bool {
    ci.annotations().get(annotation).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}

fn record_action(ctx: &Context, ci: &ConnectorInstance, action: ActionType, note: String) {
    let reason = match action {
        ActionType::Created => "Created",
        ActionType::Adopted => "Adopted",
        ActionType::Updated => "Updated",
        ActionType::ReAuthenticated => "ReAuthenticated",
        ActionType::Recreated => "Recreated",
    };
    ctx.metrics.action(reason);
    publish(ctx, ci, EventType::Normal, reason, note);
}

/// Queues an Event about the instance; a failure to publish is logged, never fatal.
fn publish(ctx: &Context, ci: &ConnectorInstance, type_: EventType, reason: &str, note: String) {
    ctx.events.publish(ci.object_ref(&()), type_, reason, &note);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_with_the_ownership_prefix_are_refused_naming_the_tag() {
        let tags = |list: &[&str]| list.iter().map(|t| t.to_string()).collect::<Vec<_>>();
        assert!(check_tags(&tags(&[])).is_ok());
        assert!(check_tags(&tags(&["team-a", "k8s-uidx", "uid-k8s-uid-1"])).is_ok());
        let stolen = format!("{OWNERSHIP_TAG_PREFIX}0b7e6a2c-another-resource");
        let err = check_tags(&tags(&["team-a", &stolen])).unwrap_err();
        assert_eq!(err.reason(), "ReservedTag");
        assert_eq!(err.class(), Class::Stalled);
        assert!(err.to_string().contains(&stolen), "{err}");
    }
}
