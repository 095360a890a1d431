//! The executor of a ConnectorInstance reconcile: the only place that sequences I/O. It asks the
//! pure core ([`plan`]) which path to take and which step comes next, performs the step (a
//! platform call, or a Kubernetes write through [`writes`]), and feeds the answer back; the core
//! decides what the answer means and how the pass ends.

use secrecy::ExposeSecret;
use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::Action;
use kube::{Resource, ResourceExt};

use super::context::Context;
use super::core::Note;
use super::core::approval;
use super::core::deletion::{DeleteAnswer, DeleteStep, Deletion};
use super::core::desired::{self, DesiredRemote};
use super::core::entry::{self, Entry, EntryFacts};
use super::core::outcome::{self, Next};
use super::core::reads;
use super::core::status;
use super::core::step::{self, Answer, AuthMode, Given, Known, Pass, Step};
use super::error::Error;
use super::events::EventType;
use super::grants;
use super::inputs::{self, ResolvedPlatform};
use super::rollout;
use super::token_secret;
use super::writes::{self, current_status, write_status};
use crate::api::{
    ANNOTATION_ABANDON, ANNOTATION_APPROVE, ANNOTATION_PAUSED, ANNOTATION_RECONCILE_REQUESTED_AT,
    ANNOTATION_TEST_REQUESTED_AT, ConnectorInstance, ConnectorInstanceStatus, ConsumerCredentialsPolicy,
    FINALIZER, PlatformStatusRef, ReauthenticationPolicy, ownership_tag,
};
use crate::platform::{DeleteOutcome, OAuthUrlRequest, PlatformClient, PlatformError};

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
            released(&ci, &ctx, &uid, EventType::Warning, "Abandoned", note).await
        }
        Entry::Orphan => {
            let note = format!("deletionPolicy Orphan: remote instance {:?} kept", old_status.instance_id);
            released(&ci, &ctx, &uid, EventType::Normal, "Orphaned", note).await
        }
        Entry::Delete => delete(&ci, &ctx, &uid, old_status).await,
        Entry::Paused => {
            let mut new_status = old_status.clone();
            new_status.observed_generation = ci.metadata.generation;
            status::paused(&mut new_status, &now());
            write_status(&ci, &ctx, &old_status, &new_status).await.map(|_| Action::await_change())
        }
        Entry::Run { forced } => run(&ci, &ctx, &uid, forced, old_status).await,
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

/// The `Run` path: one pass, then the status and Event the core decides on.
async fn run(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    forced: bool,
    old_status: ConnectorInstanceStatus,
) -> Result<Action, Error> {
    let mut new_status = old_status.clone();
    new_status.observed_generation = ci.metadata.generation;
    // No "in progress" write on first sight: until the operator's first status write, the CRD's
    // status default (`observedGeneration: -1`) keeps kstatus at InProgress.
    let meta = ci;
    // The finalizer guards only what may exist remotely: a recorded instance here, or (in the
    // pass) one about to be created or adopted. A resource whose inputs never allowed a platform
    // write has none, so `kubectl delete` removes it at once.
    if old_status.instance_id.is_some() {
        writes::ensure_finalizer(meta, ctx).await?;
    }
    let mut pass = Pass::default();
    let mut platform = None;
    let mut secrets = Vec::new();
    let start = Start { ci, meta, forced, status: &old_status };
    let outcome = run_pass(ctx, uid, &start, &mut pass, &mut platform, &mut secrets, &mut new_status).await;
    // What a platform or provider said goes into status, Events and logs without the secret
    // values it was sent; redacted before the platform's shared health keeps it, since other
    // instances (other namespaces, for a cluster platform) report the first failure's words.
    let shown: Vec<&str> = secrets.iter().map(ExposeSecret::expose_secret).collect();
    let outcome = outcome.map_err(|err| err.redact(&shown));
    let outcome = match &platform {
        Some(platform) => ctx.platform_outcome(platform, outcome, pass.called),
        None => outcome,
    };
    if outcome.is_ok() || pass.known.instance_id.is_some() {
        status::record(&mut new_status, &pass, &token_secret::token_secret_name(ci), &now());
    }
    if outcome.is_ok() {
        new_status.last_handled_reconcile_at =
            ci.annotations().get(ANNOTATION_RECONCILE_REQUESTED_AT).cloned();
        ctx.remember(uid, |m| m.failures = 0);
    }
    status::reauthentication_pending(&mut new_status, &ci.name_any(), &now());
    let decision = outcome::decide(
        new_status,
        &outcome,
        &token_secret::token_secret_name(ci),
        ctx.settings.max_backoff,
        &now(),
    );
    conclude(ci, ctx, &old_status, decision, outcome.err()).await
}

/// Writes the status the core decided on, publishes its Warning only if the status changed (a
/// failure is reported once, not per retry), and turns its `next` into the controller's action;
/// `failure` goes to the error policy when the core asks for backoff.
async fn conclude(
    ci: &ConnectorInstance,
    ctx: &Context,
    old_status: &ConnectorInstanceStatus,
    decision: outcome::Decision,
    failure: Option<Error>,
) -> Result<Action, Error> {
    let changed = write_status(ci, ctx, old_status, &decision.status).await?.is_some();
    if let (Some((type_, reason, message)), true) = (decision.event, changed) {
        publish(ctx, ci, type_, reason, message);
    }
    match (decision.next, failure) {
        (Next::Requeue(after), _) => Ok(Action::requeue(after)),
        (Next::AwaitChange, _) => Ok(Action::await_change()),
        (Next::Backoff, Some(err)) => Err(err),
        (Next::Backoff, None) => Ok(Action::await_change()),
    }
}

/// What a pass starts from.
struct Start<'a> {
    /// The resource as the pass was started for.
    ci: &'a ConnectorInstance,
    /// Its newest metadata (after this pass's first status write, if any).
    meta: &'a ConnectorInstance,
    /// A read is due regardless of the resync interval.
    forced: bool,
    /// The status the pass starts from.
    status: &'a ConnectorInstanceStatus,
}

/// One pass: resolve the inputs, run platform steps until the plan is done, write the token
/// Secret. Returns the delay until the next resync.
async fn run_pass(
    ctx: &Context,
    uid: &str,
    start: &Start<'_>,
    pass: &mut Pass,
    resolved: &mut Option<ResolvedPlatform>,
    secrets: &mut Vec<secrecy::SecretString>,
    new_status: &mut ConnectorInstanceStatus,
) -> Result<Duration, Error> {
    let Start { ci, meta, forced, status } = *start;
    let namespace = ci.namespace().unwrap_or_default();
    let resync = desired::resync_interval(ci, ctx.settings.default_resync)?;
    desired::check_tags(&ci.spec.tags)?;
    desired::check_display_name(ci.spec.display_name.as_deref())?;
    let platform = inputs::resolve_platform(ctx, &namespace, &ci.spec.platform_ref).await?;
    let secret_name = token_secret::token_secret_name(ci);
    token_secret::check_secret_name(&secret_name)
        .map_err(|message| Error::invalid("InvalidTokenSecretName", message))?;
    let existing_secret = writes::token_secret(ctx, uid, &namespace, &secret_name).await?;
    if let Some(existing) = &existing_secret
        && !token_secret::is_owned_by(existing, ci)
    {
        return Err(Error::invalid(
            "SecretConflict",
            format!(
                "Secret `{secret_name}` already exists and is not owned by this ConnectorInstance; delete or rename it, or set spec.tokenSecret.name"
            ),
        ));
    }
    let base_url = platform.settings.base_url.trim().to_string();
    let recorded_connector = existing_secret.as_deref().and_then(token_secret::stored_connector);
    desired::check_unmoved(ci, status, &base_url, recorded_connector.as_deref())?;
    new_status.platform = Some(Box::new(PlatformStatusRef {
        kind: platform.kind,
        name: platform.name.clone(),
        base_url: base_url.clone(),
    }));
    let client = ctx.platform_client(&platform)?;
    *resolved = Some(platform.clone());
    let default_callback = ctx.settings.oauth_callback_url.as_deref();
    let (configuration, binding) =
        inputs::resolve_configuration(ctx, &namespace, &ci.spec, default_callback).await?;
    // The values that must never be shown: the credentials, every configuration value not written
    // in the manifest itself (from Secrets, OAuth), and the token.
    secrets.extend(platform.credentials().map(Clone::clone));
    secrets.extend(
        configuration
            .iter()
            .filter(|(key, _)| !ci.spec.configuration.contains_key(*key))
            .map(|(_, v)| v.clone()),
    );
    secrets.extend(existing_secret.as_deref().and_then(token_secret::stored_token));
    let desired = desired::remote(ci, &configuration);
    let auth = desired::auth_mode(ci);
    desired::check_adoption(ci, status, platform.settings.adoption)?;
    // The token Secret's shape is checked before any platform call: a template that does not
    // render, a value the platform owner does not allow, or restarts this operator may not make
    // stop the pass with nothing sent and nothing written.
    let wants_authorization = token_secret::wants_authorization(ci);
    if let Err(err) =
        check_token_secret_inputs(ctx, ci, &platform, wants_authorization, existing_secret.as_deref())
    {
        if err.reason() == "ConsumerCredentialsNotAllowed" {
            writes::withhold_authorization(ci, ctx, existing_secret.as_deref()).await?;
        }
        return Err(err);
    }
    // The grant codes of the authorization-code flow, and whether the published URL still holds.
    let mut used_grants = ctx.recall(uid, |m| m.used_grants.clone());
    let recorded_grant = existing_secret.as_deref().and_then(token_secret::stored_grant_digest);
    used_grants.extend(recorded_grant.clone());
    let grants = match auth {
        AuthMode::Code => grants::gather(ctx, ci, status, &used_grants).await?,
        _ => grants::Grants::default(),
    };
    secrets.extend(grants.code.as_ref().map(|(code, ..)| code.clone()));

    // What is known: status, the token Secret, and this process's memory (the newest record).
    let memory = ctx.memory(uid);
    let pending = memory.pending_token.clone().filter(|(id, ..)| Some(*id) == status.instance_id);
    pass.token = match &pending {
        Some((_, token, _)) => Some(token.clone()),
        None => existing_secret.as_deref().and_then(token_secret::stored_token),
    };
    pass.remote = status.remote.clone();
    let settled = status.observed_generation == ci.metadata.generation
        && status.instance_id.is_some()
        && crate::api::is_condition_true(&status.conditions, crate::api::READY);
    let (due, read_plan) =
        reads::next_read_at(memory.next_read, resync, settled, Instant::now(), fastrand::f64());
    ctx.remember(uid, |m| m.next_read = read_plan);
    // The approval value of the plan in effect; the annotation approves it if it names it.
    let approval = approval::approval_value(
        ci.metadata.generation.unwrap_or_default(),
        &binding,
        status.planned_action.as_ref().map(|p| p.approval.as_str()),
        status.last_approved.as_deref(),
    );
    let approve = ci.annotations().get(ANNOTATION_APPROVE).map(String::as_str);
    pass.known = Known {
        instance_id: status.instance_id,
        metadata_hash: status.applied_metadata_hash.clone(),
        enabled: status.remote.as_ref().and_then(|r| r.disabled).map(|d| !d),
        auth_hash: pending
            .as_ref()
            .map(|(_, _, hash)| hash.clone())
            .or(memory.auth_hash)
            .or_else(|| existing_secret.as_deref().and_then(token_secret::stored_auth_hash)),
        has_token: pass.token.is_some(),
        invalid: status.remote.as_ref().and_then(|r| r.valid) == Some(false),
        // The finalizer goes on before the first create: a resource that never had it (as
        // far as the cache or this process knows) and records no instance has nothing remote,
        // so there is nothing to search for by tag.
        tag_search: (status.instance_id.is_none()
            && !meta.finalizers().iter().any(|f| f == FINALIZER)
            && memory.finalizer_added == 0)
            .then(Vec::new),
        ..Known::default()
    };
    pass.given = Given {
        auth,
        adopt: ci.spec.adopt.as_ref().map(|a| a.instance_id),
        manual: ci.spec.reauthentication() == ReauthenticationPolicy::Manual,
        approved: approve == Some(approval.as_str()),
        resync_due: forced || due,
        reauth_without_browser: false,
        grant: grants.code.is_some(),
        authorization_pending: grants.pending,
    };

    let effects = Effects {
        ci,
        meta,
        ctx,
        client: &client,
        desired: &desired,
        configuration: &configuration,
        grant: grants.code.as_ref().map(|(code, ..)| code),
    };
    for _ in 0..MAX_STEPS {
        let step = step::next_step(&desired, &pass.given, &pass.known);
        tracing::debug!(?step, "plan");
        if step == Step::Done {
            break;
        }
        // A broken platform is not called: every instance on it reports the same error.
        ctx.platform_gate(&platform, pass.called)?;
        pass.called = true;
        let answer = effects.perform(step, &pass.known, uid).await?;
        let outcome = pass.after(step, &desired, answer);
        for note in pass.notes.drain(..) {
            announce(ctx, ci, note);
        }
        outcome?;
        if let Some(range) = pass.plan_read.take() {
            ctx.remember(uid, |m| m.next_read = Some((next_read(resync, range), resync)));
        }
        if pass.known.invalid
            && auth == AuthMode::Values
            && !pass.known.reauthenticated
            && !pass.given.reauth_without_browser
        {
            let catalog = ctx.catalog(&client, &ci.spec.connector).await?;
            pass.given.reauth_without_browser = !catalog.iter().any(|c| c.key.starts_with("oauth."));
        }
    }
    if let Some(published) = pass.authorization.take() {
        new_status.authorization = Some(Box::new(published));
    }

    // A re-authentication held for an approval shows as a plan naming the changed keys; one
    // carried out uses up its approval value.
    let current_inputs = desired::input_digests(uid, &configuration);
    let applied_inputs = existing_secret.as_deref().and_then(token_secret::stored_applied_inputs);
    if pass.given.approved && pass.known.reauthenticated {
        new_status.last_approved = Some(approval.clone());
    }
    new_status.planned_action = step::reauthentication_held(&desired, &pass.given, &pass.known).then(|| {
        let applied: Option<std::collections::BTreeMap<String, String>> =
            applied_inputs.as_deref().and_then(|json| serde_json::from_str(json).ok());
        let changed = applied.map(|a| desired::changed_inputs(&a, &current_inputs)).unwrap_or_default();
        Box::new(approval::planned_action(
            status.planned_action.as_deref(),
            approval.clone(),
            changed,
            &now(),
        ))
    });
    let new_plan = new_status.planned_action.as_ref();
    if let Some(plan) =
        new_plan.filter(|p| status.planned_action.as_ref().map(|o| &o.approval) != Some(&p.approval))
    {
        let message = status::plan_message(plan, &ci.name_any(), pass.known.instance_id);
        announce(
            ctx,
            ci,
            Note { type_: EventType::Normal, reason: "ReAuthenticationPending", message, action: false },
        );
    }
    let ignored = approval::ignored_approval(
        approve,
        new_plan.map(|p| p.approval.as_str()),
        new_status.last_approved.as_deref(),
    );
    match ignored {
        Some(message) if ctx.recall(uid, |m| m.ignored_approval.as_deref() != approve) => {
            ctx.remember(uid, |m| m.ignored_approval = approve.map(str::to_string));
            publish(ctx, ci, EventType::Warning, "ApprovalIgnored", message);
        }
        _ => {}
    }

    // A grant code is used once: the callback's grant Secret goes once used, stale or denied; a
    // code from codeSecretRef is remembered by its digest.
    let mut grant_digest = recorded_grant;
    if let Some((_, digest, source)) = grants.code.as_ref().filter(|_| pass.grant_used) {
        grant_digest = Some(digest.clone());
        if *source == grants::GrantSource::CodeSecret {
            let digest = digest.clone();
            ctx.remember(uid, |m| m.used_grants.push(digest));
        }
    }

    // The token reaches the Secret, or is kept to be written by the next pass: a new token is
    // never lost to a failed write.
    let auth_hash = pass.known.auth_hash.clone().unwrap_or_else(|| desired.auth_hash.clone());
    // The content digest of the Secret as it now is (written by this pass, or already so).
    let mut secret_content = None;
    let current_inputs_json = serde_json::to_string(&current_inputs).ok();
    if let (Some(token), Some(id)) = (&pass.token, pass.known.instance_id) {
        let authorization = wants_authorization.then(|| {
            token_secret::authorization_header(&platform.user_secret, &platform.organization_secret, token)
        });
        let content = token_secret::TokenSecretContent {
            token,
            instance_id: id,
            base_url: base_url.trim(),
            connector: &ci.spec.connector,
            auth_hash: &auth_hash,
            grant_sha256: grant_digest.as_deref(),
            authorization: authorization.as_ref(),
            // The digests recorded with the token are those of the inputs it was issued for.
            applied_inputs: if auth_hash == desired.auth_hash {
                current_inputs_json.as_deref()
            } else {
                applied_inputs.as_deref()
            },
        };
        let written = match token_secret::render(ci, &content) {
            Ok(Some(desired)) => writes::write_token_secret(ci, ctx, &desired, existing_secret.as_deref())
                .await
                .map(|_| token_secret::stored_content_digest(&desired)),
            Ok(None) => Ok(None),
            Err(err) => Err(err),
        };
        match written {
            Ok(digest) => secret_content = digest,
            Err(err) => {
                if pass.authenticated || pending.is_some() {
                    let kept = (id, token.clone(), auth_hash.clone());
                    ctx.remember(uid, |m| m.pending_token = Some(kept));
                }
                // The status describes the token the Secret holds, which is still the old one.
                pass.token = None;
                return Err(err);
            }
        }
    }
    ctx.remember(uid, |m| {
        m.auth_hash = Some(auth_hash);
        m.pending_token = None;
    });
    // The steps are done and their token is in place: the callback's answer was used, or is not
    // needed (any more). A failure to delete it costs nothing but a retry by a later pass (with
    // the authorization it answers gone from status, it is never used again).
    if let Some(name) = &grants.callback_secret
        && let Err(err) = writes::delete_grant_secret(ctx, &namespace, name).await
    {
        tracing::warn!(error = %err, "the used OAuth grant Secret could not be deleted; a later pass retries");
    }
    // The workloads that use the Secret roll once its new content is in place.
    if let Some(digest) = &secret_content {
        rollout_restart(ctx, ci, status, existing_secret.as_deref(), digest, new_status).await?;
    }
    // The token as a workload uses it: tested after every create and re-authentication, and on
    // request (a new test-requested-at value); never in steady state.
    let requested = ci.annotations().get(ANNOTATION_TEST_REQUESTED_AT);
    let test_requested = requested.is_some() && requested != status.last_handled_test_at.as_ref();
    if let (Some(token), Some(id), true) =
        (&pass.token, pass.known.instance_id, pass.authenticated || test_requested)
        && ctx.platform_gate(&platform, pass.called).is_ok()
    {
        pass.called = true;
        let answer = client.verify_token(token).await;
        status::token_tested(new_status, id, answer.map(|i| i.id), &now());
        new_status.last_handled_test_at = requested.cloned();
    }
    if step::awaiting_authorization(&desired, &pass.given, &pass.known) {
        let published = new_status.authorization.as_deref();
        let shown: Vec<&str> = secrets.iter().map(ExposeSecret::expose_secret).collect();
        let refused = pass.grant_refused.clone().map(|text| crate::platform::redact_text(text, &shown));
        let facts = grants::WaitFacts {
            instance_id: pass.known.instance_id,
            invalid: pass.known.invalid,
            published,
            denied: grants.denied.as_deref(),
            refused: refused.as_deref(),
        };
        let (reason, message) = grants::waiting(ci, status, &facts);
        // Look again when the published URL is due for renewal, or when the periodic read of an
        // existing remote instance is due, whichever comes first.
        let mut retry = grants::recheck(published, ctx.settings.max_backoff);
        if pass.known.instance_id.is_some() {
            retry = retry.min(next_read_in(ctx, uid, resync));
        }
        return Err(Error::Awaiting { reason, message, retry });
    }
    if pass.known.invalid {
        return Err(match (auth, ci.spec.oauth.as_ref().and_then(|o| o.refresh_token_secret_ref.as_ref())) {
            (AuthMode::RefreshToken, Some(reference)) => Error::invalid(
                "AuthorizationExpired",
                format!(
                    "the platform reports the authorization of remote instance {} as broken (valid: false): the provider no longer accepts its refresh token, and the platform disables such an instance; put a new refresh token in Secret `{}` key `{}`, and the operator re-authenticates and re-enables it",
                    pass.known.instance_id.unwrap_or_default(),
                    reference.name,
                    reference.key
                ),
            ),
            _ => Error::invalid(
                "RemoteInvalid",
                "the platform reports the instance's authentication as invalid and it cannot be renewed without a person \
                 (OAuth); provide new credentials in the configuration, or set spec.oauth",
            ),
        });
    }
    Ok(next_read_in(ctx, uid, resync))
}

/// Checks what the token Secret needs before anything is sent: the `authorization` value only
/// where the platform allows it, restarts only where this operator may make them, and a template
/// that renders (tried with the token at hand, or a stand-in before the first one).
fn check_token_secret_inputs(
    ctx: &Context,
    ci: &ConnectorInstance,
    platform: &ResolvedPlatform,
    wants_authorization: bool,
    existing: Option<&k8s_openapi::api::core::v1::Secret>,
) -> Result<(), Error> {
    if wants_authorization && platform.settings.consumer_credentials != Some(ConsumerCredentialsPolicy::Allow)
    {
        return Err(Error::invalid(
            "ConsumerCredentialsNotAllowed",
            format!(
                "spec.tokenSecret.template uses `authorization`, which holds the credentials of {} `{}`; that platform does not allow it (its owner may set spec.consumerCredentials: Allow); or use `token` and pass the user and organization secrets another way",
                platform.kind, platform.name
            ),
        ));
    }
    let spec = ci.spec.token_secret.as_ref();
    if spec.is_some_and(|t| !t.rollout_restart.is_empty()) && !ctx.settings.rollout_restart {
        return Err(Error::invalid(
            "RolloutRestartDisabled",
            "spec.tokenSecret.rolloutRestart names workloads, but this operator does not restart workloads: install the chart with rolloutRestart.enabled=true (it grants patching Deployments, StatefulSets and DaemonSets), or remove rolloutRestart",
        ));
    }
    if spec.is_some_and(|t| t.template.is_some()) {
        let stand_in = secrecy::SecretString::from("stand-in-for-the-first-token");
        let token = existing.and_then(token_secret::stored_token).unwrap_or(stand_in);
        let authorization = wants_authorization.then(|| {
            token_secret::authorization_header(&platform.user_secret, &platform.organization_secret, &token)
        });
        let content = token_secret::TokenSecretContent {
            token: &token,
            instance_id: 0,
            base_url: platform.settings.base_url.trim(),
            connector: &ci.spec.connector,
            auth_hash: "",
            grant_sha256: None,
            authorization: authorization.as_ref(),
            applied_inputs: None,
        };
        token_secret::render(ci, &content)?;
    }
    Ok(())
}

/// Restarts the `rolloutRestart` workloads if the token Secret's content (`digest`) is new to
/// them, and records it in `status.rolloutRestart` (cleared when none are named).
async fn rollout_restart(
    ctx: &Context,
    ci: &ConnectorInstance,
    status: &ConnectorInstanceStatus,
    existing: Option<&k8s_openapi::api::core::v1::Secret>,
    digest: &str,
    new_status: &mut ConnectorInstanceStatus,
) -> Result<(), Error> {
    let targets = ci.spec.token_secret.as_ref().map(|t| t.rollout_restart.as_slice()).unwrap_or_default();
    if targets.is_empty() {
        new_status.rollout_restart = None;
        return Ok(());
    }
    let short = &digest[..digest.len().min(rollout::DIGEST_DIGITS)];
    let before = || {
        existing.map(|e| {
            let empty = std::collections::BTreeMap::new();
            let content = token_secret::content_sha256(
                e.type_.as_deref().unwrap_or("Opaque"),
                e.data.as_ref().unwrap_or(&empty),
            );
            content[..rollout::DIGEST_DIGITS].to_string()
        })
    };
    match rollout::due(targets, status.rollout_restart.as_deref(), before, short) {
        rollout::Due::Nothing => {}
        rollout::Due::Record => {
            new_status.rollout_restart = Some(Box::new(rollout::record(short, Vec::new(), None)))
        }
        rollout::Due::Restart => {
            let namespace = ci.namespace().unwrap_or_default();
            let restarted = rollout::restart(ctx, &namespace, targets, short).await?;
            if !restarted.is_empty() {
                ctx.metrics.action("RolloutRestarted");
                publish(
                    ctx,
                    ci,
                    EventType::Normal,
                    "RolloutRestarted",
                    format!("the token Secret changed (content {short}); restarted {}", restarted.join(", ")),
                );
            }
            new_status.rollout_restart = Some(Box::new(rollout::record(short, restarted, Some(now()))));
        }
    }
    Ok(())
}

/// How long until the periodic read of the remote instance is due (a little after, so that it
/// is due when the pass runs).
fn next_read_in(ctx: &Context, uid: &str, resync: Duration) -> Duration {
    let due_in = ctx
        .recall(uid, |m| m.next_read)
        .map_or(resync, |(at, _)| at.saturating_duration_since(Instant::now()));
    due_in + Duration::from_millis(50)
}

/// When to read again: `resync` scaled by a random factor in `[from, to)`, so that instances
/// created together do not all resync together.
fn next_read(resync: Duration, (from, to): (f64, f64)) -> Instant {
    Instant::now() + resync.mul_f64(from + fastrand::f64() * (to - from))
}

/// What a step needs to be performed.
struct Effects<'a> {
    ci: &'a ConnectorInstance,
    meta: &'a ConnectorInstance,
    ctx: &'a Context,
    client: &'a PlatformClient,
    desired: &'a DesiredRemote,
    configuration: &'a std::collections::BTreeMap<String, secrecy::SecretString>,
    /// The grant code at hand (authorization-code flow).
    grant: Option<&'a secrecy::SecretString>,
}

impl Effects<'_> {
    /// Performs one step. What must hold before it is checked first (a failure there ends the
    /// pass): a complete configuration before one is sent, the finalizer before anything may
    /// exist remotely. The platform's answer goes back to the core, failures included.
    async fn perform(
        &self,
        step: Step,
        known: &Known,
        uid: &str,
    ) -> Result<Result<Answer, PlatformError>, Error> {
        let (ci, client) = (self.ci, self.client);
        if matches!(step, Step::Create | Step::Recreate | Step::ReAuthenticate | Step::Authorize) {
            self.check_required_configuration().await?;
        }
        if matches!(step, Step::Create | Step::Recreate | Step::Adopt(_) | Step::AdoptById(_)) {
            writes::ensure_finalizer(self.meta, self.ctx).await?;
        }
        let id = known.instance_id.unwrap_or_default();
        let instance = |result: Result<_, PlatformError>| result.map(|i| Answer::Instance(Box::new(i)));
        Ok(match step {
            Step::SearchByTag => client
                .find_instances_by_tag(&ownership_tag(uid))
                .await
                .map(|found| Answer::Found(found.iter().map(|i| i.id).collect())),
            Step::Create | Step::Recreate => instance(
                client
                    .create_instance(&desired::request(ci, self.desired, self.configuration, self.grant))
                    .await,
            ),
            Step::Adopt(found) | Step::AdoptById(found) => instance(client.get_instance(found).await),
            Step::Authorize => {
                let callback_url =
                    grants::require_callback_url(ci, self.ctx.settings.oauth_callback_url.as_deref())?;
                let (mut published, state) = grants::new_request(self.ctx, ci, callback_url)?;
                let oauth =
                    ci.spec.oauth.as_ref().ok_or(Error::Internal("an authorization without spec.oauth"))?;
                let request = OAuthUrlRequest {
                    api_key: oauth.client_id.trim().to_string(),
                    api_secret: self
                        .configuration
                        .get("oauth.api.secret")
                        .cloned()
                        .ok_or(Error::Internal("an authorization without a client secret"))?,
                    callback_url: callback_url.to_string(),
                    scope: oauth.scope.clone(),
                    state,
                };
                client.oauth_url(&ci.spec.connector, &request).await.map(|url| {
                    published.url = url;
                    Answer::Authorization(Box::new(published))
                })
            }
            Step::Read => instance(client.get_instance(id).await),
            Step::Patch => instance(client.patch_instance(id, &self.desired.name, &self.desired.tags).await),
            Step::SetEnabled(enabled) => client.set_enabled(id, enabled).await.map(|()| Answer::Accepted),
            Step::ReAuthenticate => instance(
                client
                    .reauthenticate_instance(
                        id,
                        &desired::request(ci, self.desired, self.configuration, self.grant),
                    )
                    .await,
            ),
            Step::Done => Ok(Answer::Accepted),
        })
    }

    /// Refuses to send a configuration the connector's catalog says is incomplete.
    async fn check_required_configuration(&self) -> Result<(), Error> {
        let connector = &self.ci.spec.connector;
        let catalog = self.ctx.catalog(self.client, connector).await?;
        let missing: Vec<&str> = catalog
            .iter()
            .filter(|entry| entry.needs_user_value() && !self.configuration.contains_key(&entry.key))
            .map(|entry| entry.key.as_str())
            .collect();
        if missing.is_empty() {
            return Ok(());
        }
        if self.ci.spec.oauth.is_some() && missing.contains(&"oauth.callback.url") {
            // Set through spec.oauth or the operator, not spec.configuration: say where.
            grants::require_callback_url(self.ci, self.ctx.settings.oauth_callback_url.as_deref())?;
        }
        if self.ci.spec.oauth.is_none() && missing.iter().any(|k| k.starts_with("oauth.")) {
            return Err(Error::invalid(
                "OAuthRequired",
                format!(
                    "connector `{connector}` authenticates with OAuth: set spec.oauth (clientId, clientSecretRef, and refreshTokenSecretRef — or nothing more, to authorize in a browser through the URL the operator publishes)"
                ),
            ));
        }
        Err(Error::invalid(
            "ConfigurationMissing",
            format!(
                "connector `{connector}` requires configuration {}: set them in spec.configuration, or in spec.configurationFrom for secret values",
                missing.iter().map(|k| format!("`{k}`")).collect::<Vec<_>>().join(", ")
            ),
        ))
    }
}

/// The `Delete` path: delete what the resource owns remotely, then release the finalizer; or say
/// why deletion is blocked.
async fn delete(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    old_status: ConnectorInstanceStatus,
) -> Result<Action, Error> {
    match delete_remote(ci, ctx, uid, &old_status).await {
        Ok(deleted) => {
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
            let mut new_status = old_status.clone();
            new_status.observed_generation = ci.metadata.generation;
            let decision =
                outcome::decide_deletion_blocked(new_status, &err, ctx.settings.max_backoff, &now());
            conclude(ci, ctx, &old_status, decision, Some(err)).await
        }
    }
}

/// Deletes the remote instances this resource provably owns, on the platform they live on: the
/// base URL recorded in `status.platform` (where the instance was created), with the platform
/// object's credentials, even if its `baseUrl` changed since.
async fn delete_remote(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
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
    let deleted = delete_owned(ci, ctx, uid, status, &client).await;
    let secrets = platform.credentials().map(ExposeSecret::expose_secret);
    ctx.platform_outcome(&platform, deleted.map_err(|err| err.redact(&secrets)), true)
}

/// Runs the core's deletion steps: only what the platform's own answer shows with this
/// resource's ownership tag is deleted.
async fn delete_owned(
    ci: &ConnectorInstance,
    ctx: &Context,
    uid: &str,
    status: &ConnectorInstanceStatus,
    client: &PlatformClient,
) -> Result<Vec<i64>, Error> {
    let tag = ownership_tag(uid);
    let mut deletion = Deletion::new(&tag, status.instance_id);
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
