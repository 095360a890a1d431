//! The reconcile of a ConnectorInstance: the path the core chooses ([`entry`]), and the `Run`
//! path as a pipeline over the live platform and cluster (see `run`). Deletion, abandon and
//! orphan release the finalizer here.

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::Duration;

use kube::runtime::controller::Action;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::cache::CachedInstance;
use super::context::Context;
use super::core::deletion::{DeleteAnswer, DeleteStep, Deletion};
use super::core::entry::{self, Entry, EntryFacts};
use super::core::outcome::{self, Facts, Report};
use super::core::{Note, Now, desired, status};
use super::error::Error;
use super::events::EventType;
use super::execute::{self, Input, Then};
use super::inputs;
use super::ports::{Cluster, LiveCluster, LivePlatform};
use super::token_secret;
use super::writes::{self, current_status};
use crate::api::{
    ANNOTATION_ABANDON, ANNOTATION_PAUSED, ANNOTATION_RECONCILE_REQUESTED_AT, ConnectorInstance,
    ConnectorInstanceStatus, FINALIZER, PlatformKind, ownership_tag, reference_tag,
};
use crate::platform::{DeleteOutcome, PlatformClient, PlatformError};

/// Deletion steps one pass may take at most (a guard).
const MAX_STEPS: usize = 12;

/// Reconciles one ConnectorInstance, in a task of its own: the controller's own task then only
/// schedules and keeps reading its watches, while reconciles run on every worker thread.
///
/// The controller starts every request it has at once (the instance watch feeds it in order, a
/// bounded number at a time: `turns.rs`); the passes run in the order they started,
/// `--concurrency` at a time (a fair semaphore). A pass takes the newest version in the cache when
/// its turn comes, as the controller would have.
pub async fn reconcile(cached: Arc<CachedInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let under_way = ctx.turns.enter();
    let Some(_permit) = under_way.permit().await else {
        // Shutting down: no new pass starts.
        return Ok(Action::await_change());
    };
    let Some(cached) = ctx.stores.instances.get(&ObjectRef::from_obj(cached.as_ref())) else {
        // Gone while it waited: nothing is left to reconcile.
        return Ok(Action::await_change());
    };
    ctx.clear_wake(cached.meta().uid.as_deref().unwrap_or_default());
    let ci = match cached.instance() {
        Ok(ci) => Arc::new(ci),
        Err(err) => {
            tracing::error!(%err, "a cached ConnectorInstance could not be read back");
            return Err(Error::Internal("a cached ConnectorInstance could not be read back; it is retried"));
        }
    };
    // Aborted if the controller drops it, so a reconcile given up on does not run on unseen.
    let task = tokio_util::task::AbortOnDropHandle::new(tokio::spawn(reconcile_here(ci, ctx.clone())));
    match task.await {
        Ok(Err(err)) if err.is_conflict() => after_conflict(err, &cached, &ctx),
        Ok(result) => result,
        Err(err) => {
            tracing::error!(%err, "reconcile task failed");
            Err(Error::Internal("the reconcile task failed; it is retried"))
        }
    }
}

/// After a write failed its resourceVersion precondition (the pass started from `used`, a copy
/// older than the API server's): the pass runs again from the newer copy, not after the error
/// backoff, which may be long for an instance that failed often. The newer copy may be the echo
/// of this operator's own status write, which the watch passes on only now; if the cache has it
/// already, the pass runs again at once. Each rerun needs a newer copy, so they are as many as the
/// resource's versions at most. The error's backoff stays the fallback.
fn after_conflict(err: Error, used: &CachedInstance, ctx: &Context) -> Result<Action, Error> {
    if ctx.newer_copy_cached(used) {
        tracing::debug!(error = %err, "the pass started from an outdated copy; it runs again from the newer one");
        return Ok(Action::requeue(Duration::ZERO));
    }
    Err(err)
}

#[tracing::instrument(skip_all, fields(namespace = ci.namespace().unwrap_or_default(), name = ci.name_any()))]
async fn reconcile_here(ci: Arc<ConnectorInstance>, ctx: Arc<Context>) -> Result<Action, Error> {
    let _timer = ctx.metrics.reconcile_timer();
    let now = Now::read();
    let uid = ci.uid().unwrap_or_default();
    let old_status = current_status(&ci, &ctx, &uid);
    let annotation = |key: &str| ci.annotations().get(key).map(String::as_str);
    let is_true = |key: &str| annotation(key).is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let entry = entry::entry(EntryFacts {
        deleting: ci.meta().deletion_timestamp.is_some(),
        has_finalizer: ci.finalizers().iter().any(|f| f == FINALIZER),
        abandon: is_true(ANNOTATION_ABANDON),
        paused: is_true(ANNOTATION_PAUSED),
        policy: ci.spec.deletion_policy(),
        requested: annotation(ANNOTATION_RECONCILE_REQUESTED_AT),
        handled: old_status.last_handled_reconcile_at.as_deref(),
    });
    let result = match entry {
        Entry::Forget => {
            // Nothing of ours holds it (paused from the start, never created anything, or already
            // released): it goes now, and so does what is remembered of it.
            ctx.forget(&uid);
            Ok(Action::await_change())
        }
        Entry::Abandon => {
            let note = match old_status.instance_id {
                Some(id) => format!(
                    "finalizer released by annotation {ANNOTATION_ABANDON}; remote instance {id} was not deleted"
                ),
                None => format!("finalizer released by annotation {ANNOTATION_ABANDON}"),
            };
            orphaned(&ci, &ctx);
            released(&ci, &ctx, &uid, EventType::Warning, "Abandoned", note).await
        }
        Entry::Orphan => {
            let note = format!("deletionPolicy Orphan: remote instance {:?} kept", old_status.instance_id);
            orphaned(&ci, &ctx);
            released(&ci, &ctx, &uid, EventType::Normal, "Orphaned", note).await
        }
        Entry::Delete => delete(&ci, &ctx, &uid, old_status, &now).await,
        Entry::Paused => {
            let new_status = status::paused(&old_status, ci.metadata.generation, &now.time);
            let cluster = LiveCluster::new(&ctx, &ci);
            cluster.write_status(&old_status, &new_status).await.map(|_| Action::await_change())
        }
        Entry::Run { forced } => run(&ci, &ctx, forced, old_status, &now).await,
    };
    ctx.metrics
        .outcome("ConnectorInstance", result.as_ref().map(|_| "ok").unwrap_or_else(Error::metric_label));
    result
}

/// Retry policy after a failed reconcile: exponential backoff with jitter per object, capped,
/// honouring the platform's `Retry-After`.
pub fn error_policy(ci: Arc<CachedInstance>, err: &Error, ctx: Arc<Context>) -> Action {
    let uid = ci.uid().unwrap_or_default();
    let mut failures = 0;
    ctx.remember(&uid, |m| {
        m.failures = m.failures.saturating_add(1);
        failures = m.failures;
    });
    let delay = backoff(failures, ctx.settings.max_backoff);
    let delay = err.retry_after().map_or(delay, |after| after.min(ctx.settings.max_backoff).max(delay / 4));
    tracing::info!(error = %err, retry_in = ?delay, "reconcile failed; will retry");
    ctx.later(&uid, delay)
}

/// `min(cap, 1 s · 2^(n-1))`, scaled by a random factor in [0.5, 1.5).
pub fn backoff(failures: u32, cap: Duration) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    let base = Duration::from_secs(1u64 << exponent).min(cap);
    base.mul_f64(0.5 + fastrand::f64()).min(cap)
}

/// The `Run` path, as a pipeline: dereference what the resource points at, check it all, run the
/// steps and writes over the live platform and cluster, then one pure function turns the report
/// into the status, its Event and the next look.
async fn run(
    ci: &ConnectorInstance,
    ctx: &Context,
    forced: bool,
    old_status: ConnectorInstanceStatus,
    now: &Now,
) -> Result<Action, Error> {
    let cluster = LiveCluster::new(ctx, ci);
    let mut report = Report::default();
    let mut hidden = Vec::new();
    let mut resolved = None;
    let outcome = async {
        // The finalizer guards what may exist remotely: a recorded instance here, or (in the
        // steps) one about to be created or adopted.
        if old_status.instance_id.is_some() {
            cluster.ensure_finalizer().await?;
        }
        let read = inputs::dereference(ctx, ci, &old_status, &now.time.0).await?;
        hidden = read.secret_values(&ci.spec);
        let platform = resolved.insert(read.platform.clone());
        let checked = match desired::validate(ci, &old_status, &read, &ctx.settings) {
            Ok(checked) => checked,
            Err(err) => return Err(execute::refused(&cluster, read.token_secret.as_deref(), err).await),
        };
        report.platform = Some(checked.platform_ref(platform));
        let live = LivePlatform::new(ctx, platform, now.instant)?;
        let input = Input {
            ci,
            status: &old_status,
            forced,
            read: &read,
            checked: &checked,
            settings: &ctx.settings,
            hidden: &hidden,
            now,
        };
        execute::pass(&live, &cluster, &input, &mut report).await
    }
    .await;
    let uid = ci.uid().unwrap_or_default();
    match &outcome {
        // Neither writes anything: the resource is another process's now, or may be soon
        // (a create it has in flight).
        Err(Error::Platform(PlatformError::Withdrawn)) => {
            tracing::info!("the resource left this process before its create went out; nothing was sent");
            return Ok(Action::await_change());
        }
        Err(Error::Deferred { after }) => {
            tracing::info!(
                wait = ?after,
                "the finalizer is another process's and no remote instance is recorded: the search by tag waits for a create it may have in flight"
            );
            ctx.remember(&uid, |m| m.apply(std::mem::take(&mut report.remember)));
            return Ok(ctx.later(&uid, *after));
        }
        _ => {}
    }
    let outcome = reported(ctx, ci, &mut report, outcome, &hidden, resolved.as_ref());
    let facts = Facts {
        generation: ci.metadata.generation,
        name: &ci.name_any(),
        secret_name: &token_secret::token_secret_name(ci),
        reconcile_requested: ci.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT).map(String::as_str),
        recheck: ctx.settings.max_backoff,
        now: &now.time,
    };
    let decision = outcome::conclude(&old_status, &report, &outcome, &facts);
    let settled = execute::settle(&cluster, &old_status, decision, outcome.err()).await;
    then(ctx, ci, settled)
}

/// Takes in what a pass reported: its failure without the secret values it was sent (redacted
/// before the platform's shared health keeps it, since other instances, in other namespaces for a
/// cluster platform, report the first failure's words) and through that health; what to
/// remember; its Events.
fn reported(
    ctx: &Context,
    ci: &ConnectorInstance,
    report: &mut Report,
    outcome: Result<Duration, Error>,
    hidden: &[secrecy::SecretString],
    platform: Option<&inputs::ResolvedPlatform>,
) -> Result<Duration, Error> {
    let shown: Vec<&str> = hidden.iter().map(ExposeSecret::expose_secret).collect();
    let mut outcome = outcome.map_err(|err| err.redact(&shown));
    if let Some(platform) = platform {
        outcome = ctx.platform_outcome(platform, outcome, report.pass.called);
    }
    report.remember.succeeded = outcome.is_ok();
    ctx.remember(&ci.uid().unwrap_or_default(), |m| m.apply(std::mem::take(&mut report.remember)));
    for note in report.pass.notes.drain(..) {
        announce(ctx, ci, note);
    }
    outcome
}

/// The controller's action after the status write, publishing the Event that goes with it.
fn then(
    ctx: &Context,
    ci: &ConnectorInstance,
    settled: Result<(Then, Option<Note>), Error>,
) -> Result<Action, Error> {
    let (then, event) = settled?;
    if let Some(event) = event {
        announce(ctx, ci, event);
    }
    match then {
        Then::Requeue(after) => Ok(ctx.later(&ci.uid().unwrap_or_default(), after)),
        Then::AwaitChange => Ok(Action::await_change()),
        Then::Backoff(err) => Err(err),
    }
}

/// The `Delete` path: delete what the resource owns remotely, then release the finalizer; or say
/// why deletion is blocked.
async fn delete(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    old_status: ConnectorInstanceStatus,
    now: &Now,
) -> Result<Action, Error> {
    let unclaimed = unclaimed_key(ci, ctx);
    let reference = unclaimed.as_ref().map(|(_, reference)| reference.as_str());
    match delete_remote(ci, ctx, uid, reference, &old_status).await {
        Ok(deleted) => {
            if let Some((platform, reference)) = &unclaimed {
                ctx.unclaimed.deleted(platform, reference);
            }
            let note = if deleted.is_empty() {
                "no remote instance existed".to_string()
            } else {
                format!(
                    "deleted remote instance {}",
                    deleted.iter().map(i64::to_string).collect::<Vec<_>>().join(", ")
                )
            };
            released(ci, ctx, uid, EventType::Normal, "Deleted", note).await
        }
        Err(err) => {
            let recheck = ctx.settings.max_backoff;
            let decision = outcome::decide_deletion_blocked(
                &old_status,
                ci.metadata.generation,
                &err,
                recheck,
                &now.time,
            );
            let settled = execute::settle(&LiveCluster::new(ctx, ci), &old_status, decision, Some(err)).await;
            then(ctx, ci, settled)
        }
    }
}

/// Deletes the remote instances this resource provably owns, on the platform they live on: the
/// base URL recorded in `status.platform` (where the instance was created), with the platform
/// object's credentials, even if its `baseUrl` changed since. `reference`: the resource's
/// reference tag, if the operator has a cluster id.
async fn delete_remote(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    reference: Option<&str>,
    status: &ConnectorInstanceStatus,
) -> Result<Vec<i64>, Error> {
    let namespace = ci.namespace().unwrap_or_default();
    let mut platform = inputs::resolve_platform(ctx, &namespace, &ci.spec.platform_ref).await?;
    if let Some(recorded) = &status.platform
        && recorded.base_url.trim() != platform.settings.base_url.trim()
    {
        platform = platform.at(&recorded.base_url);
    }
    let client = ctx.platform_client(&platform)?;
    ctx.platform_gate(&platform, false)?;
    let deleted = delete_owned(ci, ctx, uid, reference, status, &client).await;
    let secrets = platform.credentials().map(ExposeSecret::expose_secret);
    ctx.platform_outcome(&platform, deleted.map_err(|err| err.redact(&secrets)), true)
}

/// Runs the core's deletion steps: only what the platform's own answer shows with this
/// resource's ownership tag is deleted.
async fn delete_owned(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    reference: Option<&str>,
    status: &ConnectorInstanceStatus,
    client: &PlatformClient,
) -> Result<Vec<i64>, Error> {
    let tag = ownership_tag(uid);
    let mut deletion =
        Deletion::new(&tag, status.instance_id).or_recorded_with(reference.map(str::to_string));
    for _ in 0..MAX_STEPS {
        let step = deletion.next_step();
        let answer = match step {
            DeleteStep::Done => break,
            DeleteStep::Search => client
                .find_instances_by_tag(&tag)
                .await
                .map(|found| DeleteAnswer::Found(found.iter().map(|i| i.id).collect())),
            DeleteStep::ReadRecorded(id) => {
                client.get_instance(id).await.map(|remote| DeleteAnswer::Tags(remote.tags))
            }
            DeleteStep::Delete(id) => client
                .delete_instance(id)
                .await
                .map(|outcome| DeleteAnswer::Deleted(outcome == DeleteOutcome::Deleted)),
        };
        let outcome = deletion.after(step, answer);
        for note in deletion.notes.drain(..) {
            announce(ctx, ci, note);
        }
        outcome?;
    }
    Ok(deletion.deleted)
}

/// Releases the finalizer and says why in an Event.
async fn released(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    type_: EventType,
    reason: &'static str,
    note: String,
) -> Result<Action, Error> {
    publish(ctx, ci, type_, reason, note);
    ctx.metrics.action(reason);
    writes::release(ci, ctx, uid).await?;
    Ok(Action::await_change())
}

/// The remote instance of `ci` stays while `ci` goes: the same manifest applied again adopts it
/// (see [`super::unclaimed`]).
fn orphaned(ci: &ConnectorInstance, ctx: &Context) {
    if let Some((platform, reference)) = unclaimed_key(ci, ctx) {
        ctx.unclaimed.orphaned(&platform, &reference, std::time::Instant::now());
    }
}

/// The identity of `ci`'s platform object and `ci`'s reference tag, when the operator has a
/// cluster id.
fn unclaimed_key(ci: &ConnectorInstance, ctx: &Context) -> Option<(String, String)> {
    let cluster_id = ctx.settings.cluster_id.as_deref()?;
    let platform = &ci.spec.platform_ref;
    let namespace = ci.namespace().unwrap_or_default();
    let platform_namespace = (platform.kind == PlatformKind::ConnectorPlatform).then_some(namespace.as_str());
    Some((
        inputs::platform_identity(platform.kind, platform_namespace, &platform.name),
        reference_tag(cluster_id, &namespace, &ci.name_any()),
    ))
}

/// Publishes an Event the core asked for (and counts an action).
fn announce(ctx: &Context, ci: &ConnectorInstance, note: Note) {
    if note.action {
        ctx.metrics.action(note.reason);
    }
    publish(ctx, ci, note.type_, note.reason, note.message);
}

/// Queues an Event about the instance; a failure to publish is logged, never fatal.
fn publish(ctx: &Context, ci: &ConnectorInstance, type_: EventType, reason: &str, note: String) {
    ctx.events.publish(ci.object_ref(&()), type_, reason, &note);
}
