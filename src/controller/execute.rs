//! The executor of a pass: performs the steps the core asks for on a [`Platform`], writes what
//! they produced through a [`Cluster`] (the token Secret, restarts, the status), and fills in the
//! pass's [`Report`]. It decides nothing the core can decide: which step comes next and what an
//! answer means are [`step`]'s, what the status becomes is [`outcome::conclude`]'s.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use secrecy::{ExposeSecret, SecretString};

use super::context::Settings;
use super::core::approval::{self, Review};
use super::core::desired::{self, CONSUMER_CREDENTIALS_NOT_ALLOWED, Checked};
use super::core::outcome::{Decision, Next, Report, TokenTest};
use super::core::reads::{self, ReadPlan};
use super::core::step::{self, Answer, AuthMode, Given, Known, Step};
use super::core::{Note, Now};
use super::error::Error;
use super::events::EventType;
use super::grants;
use super::inputs::Dereferenced;
use super::ports::{Cluster, Platform};
use super::rollout;
use super::token_secret;
use crate::api::{
    ANNOTATION_APPROVE, ANNOTATION_REAUTHENTICATE_REQUESTED_AT, ANNOTATION_TEST_REQUESTED_AT,
    ConnectorInstance, ConnectorInstanceStatus, FINALIZER, ReauthenticationPolicy,
};
use crate::platform::{OAuthUrlRequest, PlatformError};

/// Steps one pass may take at most (a guard; a real pass needs at most five).
const MAX_STEPS: usize = 12;

/// What a search by tag for a create another process may have in flight waits beyond one
/// platform timeout: the time that process's watch may take to see the resource leave it.
const HANDOVER_MARGIN: Duration = Duration::from_secs(10);

/// What a pass works from.
pub struct Input<'a> {
    /// The resource.
    pub ci: &'a ConnectorInstance,
    /// Its status as the pass starts.
    pub status: &'a ConnectorInstanceStatus,
    /// A read is due regardless of the resync interval.
    pub forced: bool,
    /// What was read for it.
    pub read: &'a Dereferenced,
    /// What the checks found.
    pub checked: &'a Checked,
    /// The operator's settings.
    pub settings: &'a Settings,
    /// The values no message may show.
    pub hidden: &'a [SecretString],
    /// The pass's time.
    pub now: &'a Now,
}

/// One pass over checked inputs: the steps, the approval's review, the token Secret, the used
/// grant, the restarts, the token test. Returns when to read the remote instance again, or why
/// the pass cannot be done; the report holds what it did either way.
pub async fn pass(
    platform: &impl Platform,
    cluster: &impl Cluster,
    input: &Input<'_>,
    report: &mut Report,
) -> Result<Duration, Error> {
    start(platform, input, report);
    steps(platform, cluster, input, report).await?;
    reauthenticated(input, report);
    review(input, report);
    let content = write_token(cluster, input, report).await?;
    delete_used_grant(cluster, input).await;
    if let Some(digest) = &content {
        rollout_restart(cluster, input, report, digest).await?;
    }
    test_token(platform, input, report).await;
    finish(input, report)
}

/// A pass its checks refused. The one write it makes: the keys rendered from the
/// `authorization` value leave the token Secret once the platform no longer allows them.
pub async fn refused(cluster: &impl Cluster, existing: Option<&Secret>, err: Error) -> Error {
    if err.reason() == CONSUMER_CREDENTIALS_NOT_ALLOWED
        && let Err(failed) = cluster.withhold_authorization(existing).await
    {
        return failed;
    }
    err
}

/// What is to be done after the status write.
#[derive(Debug)]
pub enum Then {
    /// Look again after this delay.
    Requeue(Duration),
    /// Look again on a change.
    AwaitChange,
    /// Hand the failure to the error policy (per-object backoff).
    Backoff(Error),
}

/// Writes the status the core decided on. Its Event is returned to be published only if the
/// status changed (a failure is reported once, not per retry); `failure` goes to the error policy
/// when the core asks for backoff. A failed status write fails the pass (it is retried).
pub async fn settle(
    cluster: &impl Cluster,
    old: &ConnectorInstanceStatus,
    decision: Decision,
    failure: Option<Error>,
) -> Result<(Then, Option<Note>), Error> {
    let changed = cluster.write_status(old, &decision.status).await?;
    let event = decision.event.filter(|_| changed).map(|(type_, reason, message)| Note {
        type_,
        reason,
        message,
        action: false,
    });
    let then = match (decision.next, failure) {
        (Next::Requeue(after), _) => Then::Requeue(after),
        (Next::AwaitChange, _) | (Next::Backoff, None) => Then::AwaitChange,
        (Next::Backoff, Some(err)) => Then::Backoff(err),
    };
    Ok((then, event))
}

/// What the pass knows before its first step: the token (a pending one first), what status and
/// the token Secret record of the remote instance, whether a tag search may find anything, and
/// whether the periodic read is due.
fn start(platform: &impl Platform, input: &Input<'_>, report: &mut Report) {
    let Input { ci, status, read, checked, now, .. } = *input;
    let secret = read.token_secret.as_deref();
    let pending = pending_token(input);
    let pass = &mut report.pass;
    pass.token = match &pending {
        Some((_, token, _)) => Some(token.clone()),
        None => secret.and_then(token_secret::stored_token),
    };
    pass.remote = status.remote.clone();
    if status.instance_id.is_some() && read.memory.inherited_at().is_some() {
        report.remember.inherited_at = Some(None);
    }
    let settled = status.observed_generation == ci.metadata.generation
        && status.instance_id.is_some()
        && crate::api::is_condition_true(&status.conditions, crate::api::READY);
    let (due, read_plan) =
        reads::next_read_at(read.memory.next_read, checked.resync, settled, now.instant, fastrand::f64());
    report.remember.next_read = Some(read_plan);
    let approve = ci.annotations().get(ANNOTATION_APPROVE);
    pass.known = Known {
        instance_id: status.instance_id,
        metadata_hash: status.applied_metadata_hash.clone(),
        enabled: status.remote.as_ref().and_then(|r| r.disabled).map(|d| !d),
        auth_hash: pending
            .map(|(_, _, hash)| hash)
            .or_else(|| read.memory.auth_hash.clone())
            .or_else(|| secret.and_then(token_secret::stored_auth_hash)),
        has_token: pass.token.is_some(),
        invalid: status.remote.as_ref().and_then(|r| r.valid) == Some(false),
        // The finalizer goes on before the first create: a resource that never had it (as far
        // as the cache or this process knows) and records no instance created nothing remote.
        // Only a resource of the same namespace and name before it may have left one, which
        // the platform's index of this cluster's instances tells (see `unclaimed`); else there
        // is nothing to search for by tag.
        tag_search: (status.instance_id.is_none()
            && !has_finalizer(ci)
            && read.memory.finalizer_added == 0
            && !checked.desired.reference_tag.as_deref().is_some_and(|tag| platform.may_hold(tag)))
        .then(Vec::new),
        ..Known::default()
    };
    pass.given = Given {
        auth: checked.auth,
        adopt: ci.spec.adopt.as_ref().map(|a| a.instance_id),
        manual: ci.spec.reauthentication() == ReauthenticationPolicy::Manual,
        approved: approve == Some(&checked.approval),
        resync_due: input.forced || due,
        reauth_without_browser: false,
        grant: read.grants.code.is_some(),
        authorization_pending: read.grants.pending,
        reauthenticate: reauthentication_requested(input).is_some(),
    };
}

/// The `reauthenticate-requested-at` value not carried out yet (as status or, if its write
/// failed, this process remembers).
fn reauthentication_requested<'a>(input: &Input<'a>) -> Option<&'a String> {
    let requested = input.ci.annotations().get(ANNOTATION_REAUTHENTICATE_REQUESTED_AT)?;
    let handled =
        [input.status.last_handled_reauthenticate_at.as_ref(), input.read.memory.reauthenticated_for()];
    (!handled.contains(&Some(requested))).then_some(requested)
}

/// A requested re-authentication is carried out once the pass authenticated (re-authenticated,
/// or created the instance): its value is echoed, and remembered. One this process carried out
/// whose echo has not reached the status yet (its write failed) is echoed now.
fn reauthenticated(input: &Input<'_>, report: &mut Report) {
    let Some(requested) = input.ci.annotations().get(ANNOTATION_REAUTHENTICATE_REQUESTED_AT) else {
        return;
    };
    let echoed = input.status.last_handled_reauthenticate_at.as_ref() == Some(requested);
    let carried_out = input.read.memory.reauthenticated_for() == Some(requested)
        || (report.pass.given.reauthenticate && report.pass.authenticated);
    if carried_out && !echoed {
        report.reauthenticated_for = Some(requested.clone());
        report.remember.reauthenticated_for = Some(requested.clone());
    }
}

/// A token issued to the recorded instance that an earlier pass could not write to the Secret.
fn pending_token(input: &Input<'_>) -> Option<(i64, SecretString, String)> {
    input.read.memory.pending_token().cloned().filter(|(id, ..)| Some(*id) == input.status.instance_id)
}

/// Runs the core's steps until it is done: a broken platform is not called (every instance on
/// it reports the same error), each answer goes back to the core, failures included.
async fn steps(
    platform: &impl Platform,
    cluster: &impl Cluster,
    input: &Input<'_>,
    report: &mut Report,
) -> Result<(), Error> {
    let Checked { desired, resync, auth, .. } = input.checked;
    for _ in 0..MAX_STEPS {
        let pass = &mut report.pass;
        let step = step::next_step(desired, &pass.given, &pass.known);
        tracing::debug!(?step, "plan");
        if step == Step::Done {
            break;
        }
        if step == Step::SearchByTag
            && let Some(after) = handover_wait(input, report)
        {
            return Err(Error::Deferred { after });
        }
        let pass = &mut report.pass;
        platform.gate(pass.called)?;
        pass.called = true;
        let answer = perform(platform, cluster, input, step, &pass.known).await?;
        if let Err(PlatformError::Withdrawn) = answer {
            // The resource left this process before the create went out: the one that holds it
            // now goes on; nothing more is done or written here.
            return Err(PlatformError::Withdrawn.into());
        }
        if step == Step::SearchByTag && answer.is_ok() && has_finalizer(input.ci) {
            report.remember.own_tag_searched = true;
        }
        let pass = &mut report.pass;
        pass.after(step, desired, answer)?;
        if let Some(range) = pass.plan_read.take() {
            report.remember.next_read = Some(Some((next_read(*resync, range, input.now.instant), *resync)));
        }
        let pass = &mut report.pass;
        if pass.known.invalid
            && *auth == AuthMode::Values
            && !pass.known.reauthenticated
            && !pass.given.reauth_without_browser
        {
            let catalog = platform.catalog(&input.ci.spec.connector).await?;
            pass.given.reauth_without_browser = !catalog.iter().any(|c| c.key.starts_with("oauth."));
        }
    }
    Ok(())
}

/// How long a shard's search by tag waits for a create another process may have in flight: the
/// resource has the finalizer, which this process did not add, and records no remote instance (it
/// was relabeled from another shard, or this shard restarted). That process sends a create only
/// while it still holds the resource (see [`Cluster::holder`]), so one of its creates is in
/// flight for one platform timeout at most after it lets go; the search waits that long, and
/// [`HANDOVER_MARGIN`] more, from when this process first found the resource so, and then finds
/// what that create made instead of creating a second instance. `None`: no wait (not a shard:
/// no other process takes instances over while alive; this process added the finalizer; the
/// wait is over).
fn handover_wait(input: &Input<'_>, report: &mut Report) -> Option<Duration> {
    let Input { ci, status, read, settings, now, .. } = *input;
    if !settings.sharded
        || status.instance_id.is_some()
        || !has_finalizer(ci)
        || read.memory.finalizer_added != 0
    {
        return None;
    }
    let since = read.memory.inherited_at().unwrap_or_else(|| {
        report.remember.inherited_at = Some(Some(now.instant));
        now.instant
    });
    let until = since + settings.platform_timeout + HANDOVER_MARGIN;
    Some(until.saturating_duration_since(now.instant)).filter(|left| !left.is_zero())
}

/// Performs one step. What must hold before it is checked first (a failure there ends the pass):
/// a complete configuration before one is sent, the finalizer before anything may exist
/// remotely. The platform's answer goes back to the core, failures included.
async fn perform(
    platform: &impl Platform,
    cluster: &impl Cluster,
    input: &Input<'_>,
    step: Step,
    known: &Known,
) -> Result<Result<Answer, PlatformError>, Error> {
    let Input { ci, read, checked, .. } = *input;
    if matches!(step, Step::Create | Step::Recreate | Step::ReAuthenticate | Step::Authorize) {
        check_required_configuration(platform, input).await?;
    }
    if matches!(step, Step::Create | Step::Recreate | Step::Adopt(_) | Step::AdoptById(_)) {
        cluster.ensure_finalizer().await?;
    }
    let id = known.instance_id.unwrap_or_default();
    let grant = read.grants.code.as_ref().map(|(code, ..)| code);
    let body = || desired::request(ci, &checked.desired, &read.configuration, grant);
    let instance = |result: Result<_, PlatformError>| result.map(|i| Answer::Instance(Box::new(i)));
    Ok(match step {
        Step::SearchByTag => search(platform, input).await.map(Answer::Found),
        Step::Create | Step::Recreate => instance(platform.create(&body(), &*cluster.holder()).await),
        Step::Adopt(found) | Step::AdoptById(found) => instance(platform.get(found).await),
        Step::Authorize => authorize(platform, input).await?,
        Step::Read => instance(platform.get(id).await),
        Step::Patch => instance(platform.patch(id, &checked.desired.name, &checked.desired.tags).await),
        Step::SetEnabled(enabled) => platform.set_enabled(id, enabled).await.map(|()| Answer::Accepted),
        Step::ReAuthenticate => instance(platform.reauthenticate(id, &body()).await),
        Step::Done => Ok(Answer::Accepted),
    })
}

/// The tag search: by the reference tag (what this resource, or one of the same namespace and
/// name before it, created); where that finds nothing and the resource has the finalizer, by its
/// ownership tag, once per process (an instance created before reference tags, or without a
/// cluster id, carries only that).
async fn search(platform: &impl Platform, input: &Input<'_>) -> Result<Vec<i64>, PlatformError> {
    let desired = &input.checked.desired;
    let found = match &desired.reference_tag {
        Some(reference) => platform.find_by_tag(reference).await?,
        None => Vec::new(),
    };
    let legacy =
        desired.reference_tag.is_none() || (has_finalizer(input.ci) && !input.read.memory.own_tag_searched);
    if !found.is_empty() || !legacy {
        return Ok(found);
    }
    platform.find_by_tag(&desired.own_tag).await
}

fn has_finalizer(ci: &ConnectorInstance) -> bool {
    ci.finalizers().iter().any(|f| f == FINALIZER)
}

/// Asks the platform for a new authorization URL (authorization-code flow).
async fn authorize(
    platform: &impl Platform,
    input: &Input<'_>,
) -> Result<Result<Answer, PlatformError>, Error> {
    let Input { ci, read, settings, now, .. } = *input;
    let callback_url = grants::require_callback_url(ci, settings.oauth_callback_url.as_deref())?;
    let (mut published, state) = grants::new_request(settings, ci, callback_url, &now.time.0)?;
    let oauth = ci.spec.oauth.as_ref().ok_or(Error::Internal("an authorization without spec.oauth"))?;
    let request = OAuthUrlRequest {
        api_key: oauth.client_id.trim().to_string(),
        api_secret: read
            .configuration
            .get("oauth.api.secret")
            .cloned()
            .ok_or(Error::Internal("an authorization without a client secret"))?,
        callback_url: callback_url.to_string(),
        scope: oauth.scope.clone(),
        state,
    };
    Ok(platform.oauth_url(&ci.spec.connector, &request).await.map(|url| {
        published.url = url;
        Answer::Authorization(Box::new(published))
    }))
}

/// Refuses to send a configuration the connector's catalog says is incomplete.
async fn check_required_configuration(platform: &impl Platform, input: &Input<'_>) -> Result<(), Error> {
    let Input { ci, read, settings, .. } = *input;
    let connector = &ci.spec.connector;
    let catalog = platform.catalog(connector).await?;
    let missing: Vec<&str> = catalog
        .iter()
        .filter(|entry| entry.needs_user_value() && !read.configuration.contains_key(&entry.key))
        .map(|entry| entry.key.as_str())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    if ci.spec.oauth.is_some() && missing.contains(&"oauth.callback.url") {
        // Set through spec.oauth or the operator, not spec.configuration: say where.
        grants::require_callback_url(ci, settings.oauth_callback_url.as_deref())?;
    }
    if ci.spec.oauth.is_none() && missing.iter().any(|k| k.starts_with("oauth.")) {
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

/// The approval's review after the steps (see [`approval::review`]): the changed input keys are
/// those whose digests differ from the ones recorded with the token.
fn review(input: &Input<'_>, report: &mut Report) {
    let Input { ci, status, read, checked, now, .. } = *input;
    let facts = Review {
        desired: &checked.desired,
        approval: &checked.approval,
        annotation: ci.annotations().get(ANNOTATION_APPROVE).map(String::as_str),
        shown: status.planned_action.as_deref(),
        last_approved: status.last_approved.as_deref(),
        warned: read.memory.ignored_approval(),
        name: &ci.name_any(),
        now: &now.time,
    };
    let requested = report.pass.given.reauthenticate;
    approval::review(report, &facts, || {
        let applied: Option<BTreeMap<String, String>> =
            applied_inputs(read).as_deref().and_then(|json| serde_json::from_str(json).ok());
        let current = current_inputs(input);
        let mut changed = applied.map(|a| desired::changed_inputs(&a, &current)).unwrap_or_default();
        // A requested re-authentication shows as the annotation's name (see status::plan_message).
        changed.extend(requested.then(|| ANNOTATION_REAUTHENTICATE_REQUESTED_AT.to_string()));
        changed
    });
}

fn applied_inputs(read: &Dereferenced) -> Option<String> {
    read.token_secret.as_deref().and_then(token_secret::stored_applied_inputs)
}

fn current_inputs(input: &Input<'_>) -> BTreeMap<String, String> {
    desired::input_digests(&input.ci.uid().unwrap_or_default(), &input.read.configuration)
}

/// Writes the token to the Secret, or keeps it to be written by the next pass: a new token is
/// never lost to a failed write. Returns the content digest of the Secret as it now is (written
/// by this pass, or already so).
async fn write_token(
    cluster: &impl Cluster,
    input: &Input<'_>,
    report: &mut Report,
) -> Result<Option<String>, Error> {
    let Input { ci, read, checked, .. } = *input;
    let secret = read.token_secret.as_deref();
    // A grant code is used once: one from codeSecretRef is remembered by its digest.
    let mut grant_digest = secret.and_then(token_secret::stored_grant_digest);
    if let Some((_, digest, source)) = read.grants.code.as_ref().filter(|_| report.pass.grant_used) {
        grant_digest = Some(digest.clone());
        if *source == grants::GrantSource::CodeSecret {
            report.remember.used_grant = Some(digest.clone());
        }
    }
    let pass = &mut report.pass;
    let auth_hash = pass.known.auth_hash.clone().unwrap_or_else(|| checked.desired.auth_hash.clone());
    let mut content = None;
    if let (Some(token), Some(id)) = (&pass.token, pass.known.instance_id) {
        let authorization = checked.wants_authorization.then(|| {
            let platform = &read.platform;
            token_secret::authorization_header(&platform.user_secret, &platform.organization_secret, token)
        });
        let current = serde_json::to_string(&current_inputs(input)).ok();
        let applied = applied_inputs(read);
        let secret_content = token_secret::TokenSecretContent {
            token,
            instance_id: id,
            base_url: &checked.base_url,
            connector: &ci.spec.connector,
            auth_hash: &auth_hash,
            grant_sha256: grant_digest.as_deref(),
            authorization: authorization.as_ref(),
            // The digests recorded with the token are those of the inputs it was issued for.
            applied_inputs: if auth_hash == checked.desired.auth_hash {
                current.as_deref()
            } else {
                applied.as_deref()
            },
        };
        let written = match token_secret::render(ci, &secret_content) {
            Ok(Some(desired)) => cluster
                .write_token_secret(&desired, secret)
                .await
                .map(|_| token_secret::stored_content_digest(&desired)),
            Ok(None) => Ok(None),
            Err(err) => Err(err),
        };
        match written {
            Ok(digest) => content = digest,
            Err(err) => {
                if pass.authenticated || pending_token(input).is_some() {
                    report.remember.pending_token = Some(Some((id, token.clone(), auth_hash)));
                }
                // The status describes the token the Secret holds, which is still the old one.
                pass.token = None;
                return Err(err);
            }
        }
    }
    report.remember.auth_hash = Some(auth_hash);
    report.remember.pending_token = Some(None);
    Ok(content)
}

/// The steps are done and their token is in place: the callback's answer was used, or is not
/// needed (any more). A failure to delete it costs nothing but a retry by a later pass (with the
/// authorization it answers gone from status, it is never used again).
async fn delete_used_grant(cluster: &impl Cluster, input: &Input<'_>) {
    if let Some(name) = &input.read.grants.callback_secret
        && let Err(err) = cluster.delete_grant_secret(name).await
    {
        tracing::warn!(error = %err, "the used OAuth grant Secret could not be deleted; a later pass retries");
    }
}

/// Restarts the `rolloutRestart` workloads if the token Secret's content (`digest`) is new to
/// them, and records it (cleared when none are named).
async fn rollout_restart(
    cluster: &impl Cluster,
    input: &Input<'_>,
    report: &mut Report,
    digest: &str,
) -> Result<(), Error> {
    let Input { ci, status, read, now, .. } = *input;
    let targets = ci.spec.token_secret.as_ref().map(|t| t.rollout_restart.as_slice()).unwrap_or_default();
    if targets.is_empty() {
        report.rollout = Some(None);
        return Ok(());
    }
    let short = &digest[..digest.len().min(rollout::DIGEST_DIGITS)];
    let before = || {
        read.token_secret.as_deref().map(|e| {
            let empty = BTreeMap::new();
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
            report.rollout = Some(Some(Box::new(rollout::record(short, Vec::new(), None))))
        }
        rollout::Due::Restart => {
            let restarted = cluster.restart(targets, short).await?;
            if !restarted.is_empty() {
                let message =
                    format!("the token Secret changed (content {short}); restarted {}", restarted.join(", "));
                report.pass.notes.push(Note {
                    type_: EventType::Normal,
                    reason: "RolloutRestarted",
                    message,
                    action: true,
                });
            }
            let record = rollout::record(short, restarted, Some(now.time.clone()));
            report.rollout = Some(Some(Box::new(record)));
        }
    }
    Ok(())
}

/// Tests the token as a workload uses it: after every create and re-authentication, and on
/// request (a new `test-requested-at` value); never in steady state, nor while the platform's
/// health forbids calls.
async fn test_token(platform: &impl Platform, input: &Input<'_>, report: &mut Report) {
    let requested = input.ci.annotations().get(ANNOTATION_TEST_REQUESTED_AT);
    let test_requested = requested.is_some() && requested != input.status.last_handled_test_at.as_ref();
    let pass = &mut report.pass;
    if let (Some(token), Some(id), true) =
        (&pass.token, pass.known.instance_id, pass.authenticated || test_requested)
        && platform.gate(pass.called).is_ok()
    {
        pass.called = true;
        let answer = platform.verify_token(token).await;
        report.token_test = Some(TokenTest { instance_id: id, answer, requested: requested.cloned() });
    }
}

/// How the pass ends: waiting for a person (authorization-code flow), stalled on a broken
/// authentication nothing here can renew, or done until the next periodic read.
fn finish(input: &Input<'_>, report: &Report) -> Result<Duration, Error> {
    let Input { ci, status, read, checked, settings, hidden, now, .. } = *input;
    let pass = &report.pass;
    let next_read = next_read_in(report.remember.next_read.flatten(), checked.resync, now.instant);
    if step::awaiting_authorization(&checked.desired, &pass.given, &pass.known) {
        let published = pass.authorization.as_ref().or(status.authorization.as_deref());
        let shown: Vec<&str> = hidden.iter().map(ExposeSecret::expose_secret).collect();
        let refused = pass.grant_refused.clone().map(|text| crate::platform::redact_text(text, &shown));
        let facts = grants::WaitFacts {
            instance_id: pass.known.instance_id,
            invalid: pass.known.invalid,
            published,
            denied: read.grants.denied.as_deref(),
            refused: refused.as_deref(),
            requested: pass.given.reauthenticate,
        };
        let (reason, message) = grants::waiting(ci, status, &facts);
        // Look again when the published URL is due for renewal, or when the periodic read of an
        // existing remote instance is due, whichever comes first.
        let mut retry = grants::recheck(published, settings.max_backoff, &now.time.0);
        if pass.known.instance_id.is_some() {
            retry = retry.min(next_read);
        }
        return Err(Error::Awaiting { reason, message, retry });
    }
    if pass.known.invalid {
        return Err(broken(ci, checked.auth, pass.known.instance_id));
    }
    Ok(next_read)
}

/// The error of an instance the platform reports as broken that this pass could not renew.
fn broken(ci: &ConnectorInstance, auth: AuthMode, id: Option<i64>) -> Error {
    match (auth, ci.spec.oauth.as_ref().and_then(|o| o.refresh_token_secret_ref.as_ref())) {
        (AuthMode::RefreshToken, Some(reference)) => Error::invalid(
            "AuthorizationExpired",
            format!(
                "the platform reports the authorization of remote instance {} as broken (valid: false): the provider no longer accepts its refresh token, and the platform disables such an instance; put a new refresh token in Secret `{}` key `{}`, and the operator re-authenticates and re-enables it",
                id.unwrap_or_default(),
                reference.name,
                reference.key
            ),
        ),
        _ => Error::invalid(
            "RemoteInvalid",
            "the platform reports the instance's authentication as invalid and it cannot be renewed without a person \
             (OAuth); provide new credentials in the configuration, or set spec.oauth",
        ),
    }
}

/// How long until the periodic read of the remote instance is due (a little after, so that it is
/// due when the pass runs).
fn next_read_in(plan: Option<ReadPlan>, resync: Duration, now: Instant) -> Duration {
    let due_in = plan.map_or(resync, |(at, _)| at.saturating_duration_since(now));
    due_in + Duration::from_millis(50)
}

/// When to read again: `resync` scaled by a random factor in `[from, to)`, so that instances
/// created together do not all resync together.
fn next_read(resync: Duration, (from, to): (f64, f64), now: Instant) -> Instant {
    now + resync.mul_f64(from + fastrand::f64() * (to - from))
}

#[cfg(test)]
mod tests {
    //! The executor driven by a scripted platform (a small in-memory one, with failures injected
    //! per call) and a recording cluster; each pass's report goes through the core's `conclude`
    //! and the status write, as in a reconcile, so that passes follow one another.

    use std::cell::{Cell, RefCell};
    use std::collections::{BTreeMap, HashMap};
    use std::sync::Arc;

    use futures::executor::block_on;
    use k8s_openapi::api::core::v1::Secret;
    use secrecy::{ExposeSecret, SecretString};

    use super::*;
    use crate::api::{ANNOTATION_TEST_REQUESTED_AT, TOKEN_VERIFIED, find_condition, is_condition_true};
    use crate::controller::context::Memory;
    use crate::controller::core::outcome::{self, Facts};
    use crate::controller::grants::Grants;
    use crate::controller::inputs::{ResolvedPlatform, merge_configuration};
    use crate::platform::{ElementConfig, ElementInstance, InstanceRequest};

    const UID: &str = "0d2c5a7e-1111-4222-8333-944455556666";

    fn instance_json(id: i64, name: &str, tags: &[String], token: &str) -> ElementInstance {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "tags": tags, "token": token, "valid": true, "disabled": false,
            "element": { "key": "sfdc" },
        }))
        .unwrap()
    }

    /// A small platform: instances by id, tokens issued per create and re-authentication; a
    /// failure can be queued for the next call of a kind ("create", "get", ...).
    #[derive(Default)]
    struct FakePlatform {
        instances: RefCell<BTreeMap<i64, ElementInstance>>,
        issued: Cell<u32>,
        calls: RefCell<Vec<String>>,
        failures: RefCell<HashMap<&'static str, PlatformError>>,
        /// Every instance on the platform fails: the gate refuses.
        broken: Cell<bool>,
        /// What `may_hold` answers: an instance with the reference tag may exist unrecorded.
        unclaimed: Cell<bool>,
        catalog: Vec<ElementConfig>,
    }

    impl FakePlatform {
        fn call(&self, kind: &'static str, what: String) -> Result<(), PlatformError> {
            self.calls.borrow_mut().push(what);
            match self.failures.borrow_mut().remove(kind) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }

        fn fail(&self, kind: &'static str, err: PlatformError) {
            self.failures.borrow_mut().insert(kind, err);
        }

        fn token(&self) -> String {
            self.issued.set(self.issued.get() + 1);
            format!("token-{}", self.issued.get())
        }

        fn calls(&self) -> Vec<String> {
            self.calls.borrow_mut().drain(..).collect()
        }

        fn get_or_404(&self, id: i64) -> Result<ElementInstance, PlatformError> {
            self.instances
                .borrow()
                .get(&id)
                .cloned()
                .ok_or(PlatformError::NotFound { message: format!("no instance {id}") })
        }
    }

    impl Platform for FakePlatform {
        fn gate(&self, _admitted: bool) -> Result<(), Error> {
            if self.broken.get() {
                return Err(Error::Platform(PlatformError::Unauthorized {
                    message: "bad credentials".into(),
                }));
            }
            Ok(())
        }

        fn may_hold(&self, _reference: &str) -> bool {
            self.unclaimed.get()
        }

        async fn find_by_tag(&self, tag: &str) -> Result<Vec<i64>, PlatformError> {
            self.call("find", "GET /instances?tags[]".into())?;
            Ok(self
                .instances
                .borrow()
                .values()
                .filter(|i| i.tags.iter().any(|t| t == tag))
                .map(|i| i.id)
                .collect())
        }

        async fn create(
            &self,
            body: &InstanceRequest,
            wanted: &(dyn Fn() -> bool + Sync),
        ) -> Result<ElementInstance, PlatformError> {
            if !wanted() {
                return Err(PlatformError::Withdrawn);
            }
            self.call("create", "POST /instances".into())?;
            let id = 100 + self.instances.borrow().len() as i64;
            let created = instance_json(id, &body.name, &body.tags, &self.token());
            self.instances.borrow_mut().insert(id, created.clone());
            Ok(created)
        }

        async fn get(&self, id: i64) -> Result<ElementInstance, PlatformError> {
            self.call("get", format!("GET /instances/{id}"))?;
            self.get_or_404(id)
        }

        async fn patch(
            &self,
            id: i64,
            name: &str,
            tags: &[String],
        ) -> Result<ElementInstance, PlatformError> {
            self.call("patch", format!("PATCH /instances/{id}"))?;
            let mut instance = self.get_or_404(id)?;
            instance.name = Some(name.to_string());
            instance.tags = tags.to_vec();
            self.instances.borrow_mut().insert(id, instance.clone());
            Ok(instance)
        }

        async fn set_enabled(&self, id: i64, enabled: bool) -> Result<(), PlatformError> {
            self.call("enabled", format!("PUT /instances/{id}/enabled {enabled}"))?;
            let mut instance = self.get_or_404(id)?;
            instance.disabled = Some(!enabled);
            self.instances.borrow_mut().insert(id, instance);
            Ok(())
        }

        async fn reauthenticate(
            &self,
            id: i64,
            body: &InstanceRequest,
        ) -> Result<ElementInstance, PlatformError> {
            self.call("reauthenticate", format!("PUT /instances/{id}"))?;
            self.get_or_404(id)?;
            let renewed = instance_json(id, &body.name, &body.tags, &self.token());
            self.instances.borrow_mut().insert(id, renewed.clone());
            Ok(renewed)
        }

        async fn oauth_url(
            &self,
            connector: &str,
            request: &OAuthUrlRequest,
        ) -> Result<String, PlatformError> {
            self.call("oauth", format!("POST /elements/{connector}/oauth/url"))?;
            Ok(format!("https://provider.test/authorize?state={}", request.state))
        }

        async fn verify_token(&self, token: &SecretString) -> Result<i64, PlatformError> {
            self.call("verify", "GET /instances (token)".into())?;
            let instances = self.instances.borrow();
            let owner = instances
                .values()
                .find(|i| i.token.as_ref().map(ExposeSecret::expose_secret) == Some(token.expose_secret()));
            owner.map(|i| i.id).ok_or(PlatformError::Unauthorized { message: "invalid token".into() })
        }

        async fn catalog(&self, connector: &str) -> Result<Arc<Vec<ElementConfig>>, Error> {
            self.call("catalog", format!("GET /elements/{connector}/configuration"))?;
            Ok(Arc::new(self.catalog.clone()))
        }
    }

    /// Records the writes; a failure can be queued for the next write of a kind.
    #[derive(Default)]
    struct FakeCluster {
        writes: RefCell<Vec<String>>,
        secret: RefCell<Option<Secret>>,
        failures: RefCell<HashMap<&'static str, Error>>,
        restarted: RefCell<Vec<String>>,
        /// The resource carries the operator's finalizer.
        finalized: Cell<bool>,
        /// The resource left this process's watch (relabeled into another shard).
        left: Arc<std::sync::atomic::AtomicBool>,
    }

    impl FakeCluster {
        fn write(&self, kind: &'static str) -> Result<(), Error> {
            self.writes.borrow_mut().push(kind.to_string());
            match self.failures.borrow_mut().remove(kind) {
                Some(err) => Err(err),
                None => Ok(()),
            }
        }

        fn fail(&self, kind: &'static str, err: Error) {
            self.failures.borrow_mut().insert(kind, err);
        }

        fn writes(&self) -> Vec<String> {
            self.writes.borrow_mut().drain(..).collect()
        }
    }

    impl Cluster for FakeCluster {
        fn holder(&self) -> Box<dyn Fn() -> bool + Send + Sync + '_> {
            let left = self.left.clone();
            Box::new(move || !left.load(std::sync::atomic::Ordering::Relaxed))
        }

        async fn ensure_finalizer(&self) -> Result<(), Error> {
            if self.finalized.get() {
                return Ok(());
            }
            self.write("finalizer")?;
            self.finalized.set(true);
            Ok(())
        }

        async fn write_token_secret(
            &self,
            desired: &Secret,
            existing: Option<&Secret>,
        ) -> Result<bool, Error> {
            if existing.is_some_and(|e| token_secret::is_up_to_date(e, desired)) {
                return Ok(false);
            }
            self.write("secret")?;
            *self.secret.borrow_mut() = Some(desired.clone());
            Ok(true)
        }

        async fn withhold_authorization(&self, _existing: Option<&Secret>) -> Result<bool, Error> {
            self.write("withhold").map(|()| true)
        }

        async fn delete_grant_secret(&self, _name: &str) -> Result<(), Error> {
            self.write("delete grant")
        }

        async fn restart(
            &self,
            targets: &[crate::api::RolloutTarget],
            _digest: &str,
        ) -> Result<Vec<String>, Error> {
            self.write("restart")?;
            let names: Vec<String> =
                targets.iter().map(|t| format!("{}/{}", t.kind, t.name.as_deref().unwrap_or("*"))).collect();
            self.restarted.borrow_mut().extend(names.clone());
            Ok(names)
        }

        async fn write_status(
            &self,
            old: &ConnectorInstanceStatus,
            new: &ConnectorInstanceStatus,
        ) -> Result<bool, Error> {
            if old == new {
                return Ok(false);
            }
            self.write("status").map(|()| true)
        }
    }

    fn conflict() -> Error {
        Error::Kube(kube::Error::Api(
            kube::core::Status::failure("the object has been modified", "Conflict").with_code(409).boxed(),
        ))
    }

    /// One ConnectorInstance with what the executor needs around it, passes in a row.
    struct World {
        ci: ConnectorInstance,
        status: ConnectorInstanceStatus,
        memory: Memory,
        grants: Grants,
        settings: Settings,
        platform: FakePlatform,
        cluster: FakeCluster,
        platform_settings: serde_json::Value,
        /// The Secrets the configuration is read from, by name.
        secrets: HashMap<String, Secret>,
        /// A read of the remote instance is due regardless of the resync interval.
        forced: bool,
    }

    /// What one pass did.
    struct Passed {
        report: Report,
        outcome: Result<Duration, Error>,
        settled: Result<(Then, Option<Note>), Error>,
    }

    impl Passed {
        fn reasons(&self) -> Vec<&'static str> {
            self.report.pass.notes.iter().map(|n| n.reason).collect()
        }
    }

    impl World {
        fn new(spec: serde_json::Value) -> World {
            let ci = serde_json::from_value(serde_json::json!({
                "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
                "metadata": { "name": "crm", "namespace": "team-a", "uid": UID, "generation": 1,
                              "resourceVersion": "10", "finalizers": [FINALIZER] },
                "spec": spec,
            }))
            .unwrap();
            World {
                ci,
                status: ConnectorInstanceStatus { observed_generation: Some(-1), ..Default::default() },
                memory: Memory::default(),
                grants: Grants::default(),
                settings: Settings::default(),
                platform: FakePlatform::default(),
                cluster: FakeCluster::default(),
                platform_settings: serde_json::json!({
                    "baseUrl": "https://oc.test/elements/api-v2",
                    "credentialsSecretRef": { "name": "oc-credentials" },
                }),
                secrets: HashMap::new(),
                forced: false,
            }
        }

        /// An instance on the authorization-code flow (`extra`: more of `spec.oauth`), with its
        /// client secret in Secret `oauth`.
        fn code_flow(extra: serde_json::Value) -> World {
            let mut oauth = serde_json::json!({
                "clientId": "client", "clientSecretRef": { "name": "oauth", "key": "secret" },
                "callbackUrl": "https://callback.test/oauth/callback",
            });
            oauth.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
            let mut w = World::new(serde_json::json!({
                "platformRef": { "name": "oc" }, "connector": "sfdc", "oauth": oauth,
            }));
            let secret: Secret = serde_json::from_value(serde_json::json!({
                "metadata": { "name": "oauth", "namespace": "team-a" },
                "stringData": { "secret": "client-secret-value" },
            }))
            .unwrap();
            let mut secret = secret;
            let data = secret.string_data.take().unwrap().into_iter();
            secret.data = Some(data.map(|(k, v)| (k, k8s_openapi::ByteString(v.into_bytes()))).collect());
            w.secrets.insert("oauth".into(), secret);
            w
        }

        fn plain() -> World {
            World::new(serde_json::json!({
                "platformRef": { "name": "oc" }, "connector": "sfdc",
                "configuration": { "username": "ada" },
            }))
        }

        fn resolved(&self) -> ResolvedPlatform {
            ResolvedPlatform {
                kind: crate::api::PlatformKind::ConnectorPlatform,
                name: "oc".into(),
                namespace: Some("team-a".into()),
                settings: serde_json::from_value(self.platform_settings.clone()).unwrap(),
                user_secret: SecretString::from("user-secret-value"),
                organization_secret: SecretString::from("org-secret-value"),
                ca_bundle_pem: None,
                fingerprint: "oc#1".into(),
            }
        }

        /// One pass: the executor over this world, then the core's conclusion and the status
        /// write, as a reconcile makes them; the status, the Secret and the memory carry over.
        fn pass(&mut self) -> Passed {
            let configuration = merge_configuration(&self.ci.spec, &self.secrets, None).unwrap();
            let read = Dereferenced {
                platform: self.resolved(),
                token_secret: self.cluster.secret.borrow().clone().map(Arc::new),
                configuration,
                binding: "b".into(),
                grants: std::mem::take(&mut self.grants),
                memory: self.memory.clone(),
            };
            let now = Now::read();
            self.cluster.finalized.set(self.ci.finalizers().iter().any(|f| f == FINALIZER));
            let hidden = read.secret_values(&self.ci.spec);
            let mut report = Report::default();
            let outcome = match desired::validate(&self.ci, &self.status, &read, &self.settings) {
                Err(err) => Err(block_on(refused(&self.cluster, read.token_secret.as_deref(), err))),
                Ok(checked) => {
                    report.platform = Some(checked.platform_ref(&read.platform));
                    let input = Input {
                        ci: &self.ci,
                        status: &self.status,
                        forced: self.forced,
                        read: &read,
                        checked: &checked,
                        settings: &self.settings,
                        hidden: &hidden,
                        now: &now,
                    };
                    block_on(pass(&self.platform, &self.cluster, &input, &mut report))
                }
            };
            report.remember.succeeded = outcome.is_ok();
            self.memory.apply(std::mem::take(&mut report.remember));
            // The watch shows the finalizer the pass added.
            if self.cluster.finalized.get() && !self.ci.finalizers().iter().any(|f| f == FINALIZER) {
                self.ci.finalizers_mut().push(FINALIZER.to_string());
            }
            let name = self.ci.name_any();
            let secret_name = token_secret::token_secret_name(&self.ci);
            let facts = Facts {
                generation: self.ci.metadata.generation,
                name: &name,
                secret_name: &secret_name,
                reconcile_requested: None,
                recheck: self.settings.max_backoff,
                now: &now.time,
            };
            let decision = outcome::conclude(&self.status, &report, &outcome, &facts);
            let new_status = decision.status.clone();
            let failure = outcome.as_ref().err().map(|e| Error::invalid(e.reason(), e.to_string()));
            let settled = block_on(settle(&self.cluster, &self.status, decision, failure));
            if settled.is_ok() {
                self.status = new_status;
            }
            Passed { report, outcome, settled }
        }

        fn stored_token(&self) -> Option<String> {
            let secret = self.cluster.secret.borrow();
            secret.as_ref().and_then(token_secret::stored_token).map(|t| t.expose_secret().to_string())
        }

        fn ready(&self) -> bool {
            is_condition_true(&self.status.conditions, crate::api::READY)
        }

        /// Changes the configuration (a re-authentication's cause) and bumps the generation.
        fn reconfigure(&mut self, username: &str) {
            self.ci.spec.configuration.insert("username".into(), username.into());
            self.ci.metadata.generation = Some(self.ci.metadata.generation.unwrap_or(1) + 1);
        }

        fn annotate(&mut self, key: &str, value: &str) {
            self.ci
                .metadata
                .annotations
                .get_or_insert_with(Default::default)
                .insert(key.into(), value.into());
        }
    }

    #[test]
    fn a_new_instance_is_created_once_its_token_written_and_tested() {
        let mut w = World::plain();
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        // The finalizer is on already: a search by tag first (a crash after a POST), then one POST.
        assert_eq!(
            w.platform.calls(),
            [
                "GET /instances?tags[]",
                "GET /elements/sfdc/configuration",
                "POST /instances",
                "GET /instances (token)"
            ]
        );
        assert_eq!(w.cluster.writes(), ["secret", "status"], "the finalizer is there already");
        assert_eq!(w.stored_token().as_deref(), Some("token-1"));
        assert_eq!(passed.reasons(), ["Created"]);
        assert!(w.ready());
        assert_eq!(w.status.instance_id, Some(100));
        assert!(is_condition_true(&w.status.conditions, TOKEN_VERIFIED));
        assert_eq!(
            w.memory.auth_hash.as_deref(),
            Some(passed.report.pass.known.auth_hash.as_deref().unwrap())
        );
    }

    #[test]
    fn without_the_finalizer_nothing_can_exist_remotely_so_nothing_is_searched() {
        let mut w = World::plain();
        w.ci.metadata.finalizers = None;
        w.pass().outcome.unwrap();
        assert_eq!(
            w.platform.calls(),
            ["GET /elements/sfdc/configuration", "POST /instances", "GET /instances (token)"]
        );
        assert_eq!(w.cluster.writes(), ["finalizer", "secret", "status"], "the finalizer before the POST");
    }

    #[test]
    fn steady_state_calls_nothing_and_writes_nothing() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.platform.calls();
        w.cluster.writes();
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert!(w.platform.calls().is_empty());
        assert!(w.cluster.writes().is_empty());
        assert!(passed.reasons().is_empty());
        assert!(matches!(passed.settled, Ok((Then::Requeue(_), None))));
    }

    #[test]
    fn a_failed_secret_write_keeps_the_new_token_and_the_next_pass_writes_it_without_a_call() {
        let mut w = World::plain();
        w.cluster.fail("secret", conflict());
        let passed = w.pass();
        assert_eq!(
            passed.outcome.unwrap_err().reason(),
            "KubernetesError",
            "the write's failure ends the pass"
        );
        assert_eq!(w.status.instance_id, Some(100), "the instance created is recorded");
        let kept = w.memory.pending_token().cloned().expect("the new token is kept");
        assert_eq!((kept.0, kept.1.expose_secret()), (100, "token-1"));
        assert!(w.status.token_sha256.is_none(), "status describes the Secret's token, which is none yet");
        w.platform.calls();
        // The next pass writes the kept token: no POST, no re-authentication.
        w.pass().outcome.unwrap();
        assert_eq!(w.stored_token().as_deref(), Some("token-1"));
        assert!(w.memory.pending_token().is_none());
        assert!(!w.platform.calls().iter().any(|c| c.starts_with("POST") || c.starts_with("PUT")));
        assert_eq!(w.platform.instances.borrow().len(), 1, "never a duplicate");
    }

    #[test]
    fn a_conflict_on_the_status_write_fails_the_pass_and_loses_nothing() {
        let mut w = World::plain();
        w.cluster.fail("status", conflict());
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        let err = passed.settled.unwrap_err();
        assert_eq!(err.class(), crate::controller::error::Class::Transient, "retried with backoff");
        // The token is in the Secret and the process remembers what it was issued for: the retry
        // finds the instance by its tag and adopts it, never posting again.
        assert_eq!(w.stored_token().as_deref(), Some("token-1"));
        w.platform.calls();
        let retry = w.pass();
        retry.outcome.as_ref().unwrap();
        let calls = w.platform.calls();
        assert!(!calls.iter().any(|c| c.starts_with("POST")), "{calls:?}");
        assert_eq!(retry.reasons(), ["Adopted"]);
        assert_eq!(w.status.instance_id, Some(100));
        assert!(w.ready());
    }

    #[test]
    fn a_404_mid_pass_searches_by_tag_and_recreates_once() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.platform.instances.borrow_mut().clear();
        w.platform.calls();
        w.reconfigure("grace");
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert_eq!(
            w.platform.calls(),
            [
                "GET /elements/sfdc/configuration",
                "PUT /instances/100",
                "GET /instances?tags[]",
                "GET /elements/sfdc/configuration",
                "POST /instances",
                "GET /instances (token)"
            ]
        );
        assert_eq!(passed.reasons(), ["Recreated"]);
        assert_eq!(w.stored_token().as_deref(), Some("token-2"));
        assert_eq!(w.status.last_action.as_ref().map(|a| a.type_), Some(crate::api::ActionType::Recreated));
    }

    #[test]
    fn a_configuration_change_reauthenticates_once_and_replaces_the_token() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.platform.calls();
        w.reconfigure("grace");
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert_eq!(
            w.platform.calls(),
            ["GET /elements/sfdc/configuration", "PUT /instances/100", "GET /instances (token)"]
        );
        assert_eq!(passed.reasons(), ["ReAuthenticated"]);
        assert_eq!(w.stored_token().as_deref(), Some("token-2"));
        w.pass().outcome.unwrap();
        assert!(w.platform.calls().is_empty(), "once");
    }

    #[test]
    fn a_platform_every_instance_fails_on_is_not_called() {
        let mut w = World::plain();
        w.platform.broken.set(true);
        let passed = w.pass();
        assert_eq!(passed.outcome.unwrap_err().reason(), "Unauthorized");
        assert!(w.platform.calls().is_empty());
        assert_eq!(w.cluster.writes(), ["status"], "only the status says why");
        assert!(!passed.report.pass.called);
    }

    #[test]
    fn a_platform_failure_mid_pass_keeps_what_was_learnt() {
        let mut w = World::plain();
        w.platform.fail("create", PlatformError::Transient { message: "502".into(), retry_after: None });
        let passed = w.pass();
        assert_eq!(passed.outcome.unwrap_err().reason(), "PlatformUnavailable");
        assert!(w.cluster.secret.borrow().is_none());
        assert!(matches!(passed.settled, Ok((Then::Backoff(_), Some(_)))), "backoff, one Warning");
        w.pass().outcome.unwrap();
        assert_eq!(w.platform.instances.borrow().len(), 1);
    }

    #[test]
    fn a_configuration_the_catalog_calls_incomplete_is_never_sent() {
        let mut w = World::plain();
        w.ci.metadata.finalizers = None;
        let required: ElementConfig =
            serde_json::from_value(serde_json::json!({ "key": "password", "required": true })).unwrap();
        w.platform.catalog = vec![required];
        let passed = w.pass();
        let err = passed.outcome.unwrap_err();
        assert_eq!(err.reason(), "ConfigurationMissing");
        assert!(err.to_string().contains("`password`"), "{err}");
        assert_eq!(w.platform.calls(), ["GET /elements/sfdc/configuration"]);
        assert_eq!(w.cluster.writes(), ["status"], "no finalizer for what was never sent");
    }

    #[test]
    fn manual_holds_a_change_shows_the_plan_once_and_an_approval_carries_it_out_once() {
        let mut w = World::plain();
        w.ci.spec.reauthentication = Some(ReauthenticationPolicy::Manual);
        w.pass().outcome.unwrap();
        w.platform.calls();
        w.reconfigure("grace");
        let held = w.pass();
        held.outcome.as_ref().unwrap();
        assert!(w.platform.calls().is_empty(), "no PUT without approval");
        assert_eq!(held.reasons(), ["ReAuthenticationPending"]);
        let plan = w.status.planned_action.clone().expect("the plan is shown");
        assert_eq!(plan.changed_inputs, ["username"]);
        assert_eq!(w.pass().reasons(), Vec::<&str>::new(), "the same plan is not announced again");
        w.annotate(ANNOTATION_APPROVE, &plan.approval);
        let approved = w.pass();
        approved.outcome.as_ref().unwrap();
        assert_eq!(
            w.platform.calls(),
            ["GET /elements/sfdc/configuration", "PUT /instances/100", "GET /instances (token)"]
        );
        assert_eq!(w.status.last_approved.as_deref(), Some(plan.approval.as_str()));
        assert!(w.status.planned_action.is_none());
        w.pass().outcome.unwrap();
        assert!(w.platform.calls().is_empty(), "an approval is used once");
    }

    #[test]
    fn an_approval_that_approves_nothing_is_warned_about_once() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.annotate(ANNOTATION_APPROVE, "7-x");
        assert_eq!(w.pass().reasons(), ["ApprovalIgnored"]);
        assert_eq!(w.memory.ignored_approval(), Some("7-x"));
        assert!(w.pass().reasons().is_empty());
    }

    #[test]
    fn a_requested_token_test_calls_once_and_records_its_answer() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.platform.calls();
        w.annotate(ANNOTATION_TEST_REQUESTED_AT, "t1");
        w.pass().outcome.unwrap();
        assert_eq!(w.platform.calls(), ["GET /instances (token)"]);
        assert_eq!(w.status.last_handled_test_at.as_deref(), Some("t1"));
        // Revoked at the provider: the test says so, Ready stays (the token is the platform's).
        w.platform.instances.borrow_mut().get_mut(&100).unwrap().token = Some(SecretString::from("other"));
        w.annotate(ANNOTATION_TEST_REQUESTED_AT, "t2");
        w.pass().outcome.unwrap();
        let tested = find_condition(&w.status.conditions, TOKEN_VERIFIED).unwrap();
        assert_eq!(tested.reason, "TokenRejected");
        w.pass().outcome.unwrap();
        assert_eq!(w.platform.calls(), ["GET /instances (token)"], "one test per request");
    }

    #[test]
    fn workloads_restart_once_per_new_token_secret_content() {
        let mut w = World::new(serde_json::json!({
            "platformRef": { "name": "oc" }, "connector": "sfdc", "configuration": { "username": "ada" },
            "tokenSecret": { "rolloutRestart": [{ "kind": "Deployment", "name": "api" }] },
        }));
        w.settings.rollout_restart = true;
        let first = w.pass();
        first.outcome.as_ref().unwrap();
        assert!(w.cluster.restarted.borrow().is_empty(), "started with the first token: recorded only");
        assert!(w.status.rollout_restart.is_some());
        w.reconfigure("grace");
        let second = w.pass();
        second.outcome.as_ref().unwrap();
        assert_eq!(*w.cluster.restarted.borrow(), ["Deployment/api"]);
        assert!(second.reasons().contains(&"RolloutRestarted"));
        w.pass().outcome.unwrap();
        assert_eq!(w.cluster.restarted.borrow().len(), 1, "not again for the same content");
    }

    #[test]
    fn restarts_this_operator_may_not_make_are_refused_before_any_call() {
        let mut w = World::new(serde_json::json!({
            "platformRef": { "name": "oc" }, "connector": "sfdc",
            "tokenSecret": { "rolloutRestart": [{ "kind": "Deployment", "name": "api" }] },
        }));
        let passed = w.pass();
        assert_eq!(passed.outcome.unwrap_err().reason(), "RolloutRestartDisabled");
        assert!(w.platform.calls().is_empty());
        assert_eq!(w.cluster.writes(), ["status"]);
    }

    #[test]
    fn a_withdrawn_consumer_credentials_permission_takes_the_keys_out_of_the_secret() {
        let mut w = World::new(serde_json::json!({
            "platformRef": { "name": "oc" }, "connector": "sfdc",
            "tokenSecret": { "template": { "data": { "auth": "{{ authorization }}" } } },
        }));
        let passed = w.pass();
        assert_eq!(passed.outcome.unwrap_err().reason(), CONSUMER_CREDENTIALS_NOT_ALLOWED);
        assert_eq!(w.cluster.writes(), ["withhold", "status"]);
        assert!(w.platform.calls().is_empty());
        // Any other refusal writes nothing but the status.
        w.ci.spec.tags = vec![format!("{}x", crate::api::OWNERSHIP_TAG_PREFIX)];
        assert_ne!(w.pass().outcome.unwrap_err().reason(), CONSUMER_CREDENTIALS_NOT_ALLOWED);
        assert!(!w.cluster.writes().contains(&"withhold".to_string()));
    }

    #[test]
    fn the_code_flow_publishes_an_authorization_and_waits_for_a_person() {
        let mut w = World::code_flow(serde_json::json!({}));
        w.ci.metadata.finalizers = None;
        let passed = w.pass();
        let err = passed.outcome.unwrap_err();
        assert_eq!(err.reason(), "AwaitingAuthorization");
        assert_eq!(w.platform.calls(), ["GET /elements/sfdc/configuration", "POST /elements/sfdc/oauth/url"]);
        let published = w.status.authorization.clone().expect("the URL is published");
        assert!(published.url.starts_with("https://provider.test/authorize?state="));
        assert!(!err.to_string().contains("client-secret-value"));
        assert!(w.platform.instances.borrow().is_empty(), "nothing created without a grant");
    }

    #[test]
    fn a_broken_instance_nothing_here_can_renew_stalls_with_what_to_do() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.platform.instances.borrow_mut().get_mut(&100).unwrap().valid = Some(false);
        let oauth: ElementConfig =
            serde_json::from_value(serde_json::json!({ "key": "oauth.api.key" })).unwrap();
        w.platform.catalog = vec![oauth];
        w.platform.calls();
        // A periodic read is what finds it (forced here, as a reconcile request does).
        w.forced = true;
        let passed = w.pass();
        assert_eq!(passed.outcome.unwrap_err().reason(), "RemoteInvalid");
        let calls = w.platform.calls();
        assert!(calls.contains(&"GET /instances/100".to_string()), "{calls:?}");
        assert!(
            !calls.iter().any(|c| c.starts_with("PUT")),
            "no browser-less renewal for an OAuth connector"
        );
    }

    #[test]
    fn a_used_grant_code_from_a_secret_is_remembered_and_never_sent_again() {
        let mut w =
            World::code_flow(serde_json::json!({ "codeSecretRef": { "name": "grant", "key": "code" } }));
        let code = SecretString::from("grant-code-value");
        let digest = crate::oauth::code_digest(&code);
        w.grants.code = Some((code, digest.clone(), grants::GrantSource::CodeSecret));
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert!(w.platform.calls().contains(&"POST /instances".to_string()));
        assert!(w.memory.used_grants().contains(&digest));
        let stored = w.cluster.secret.borrow().as_ref().and_then(token_secret::stored_grant_digest);
        assert_eq!(stored.as_deref(), Some(digest.as_str()));
    }

    #[test]
    fn settle_publishes_the_event_only_with_a_changed_status_and_hands_backoff_to_the_error_policy() {
        let cluster = FakeCluster::default();
        let old = ConnectorInstanceStatus::default();
        let err = || Error::Platform(PlatformError::Transient { message: "503".into(), retry_after: None });
        let decision = |status: ConnectorInstanceStatus| Decision {
            status,
            event: Some((EventType::Warning, "PlatformUnavailable", "503".into())),
            next: Next::Backoff,
        };
        let changed = ConnectorInstanceStatus { instance_id: Some(1), ..Default::default() };
        let (then, event) = block_on(settle(&cluster, &old, decision(changed), Some(err()))).unwrap();
        assert!(matches!(then, Then::Backoff(_)) && event.is_some());
        let (then, event) = block_on(settle(&cluster, &old, decision(old.clone()), Some(err()))).unwrap();
        assert!(matches!(then, Then::Backoff(_)) && event.is_none(), "repeated failures write nothing");
        assert_eq!(cluster.writes(), ["status"]);
    }

    #[test]
    fn every_refusal_of_the_inputs_comes_before_any_platform_call() {
        type Change = fn(&mut World);
        let cases: Vec<(&str, Change, &str)> = vec![
            (
                "reserved tag",
                |w| w.ci.spec.tags = vec![format!("{}x", crate::api::OWNERSHIP_TAG_PREFIX)],
                "ReservedTag",
            ),
            ("markup in the name", |w| w.ci.spec.display_name = Some("<b>".into()), "InvalidDisplayName"),
            (
                "resync interval",
                |w| w.ci.spec.resync_interval = Some("forever".into()),
                "InvalidResyncInterval",
            ),
            (
                "token Secret name",
                |w| {
                    let spec = serde_json::json!({ "name": "Not_A_Name" });
                    w.ci.spec.token_secret = Some(serde_json::from_value(spec).unwrap());
                },
                "InvalidTokenSecretName",
            ),
            (
                "someone else's Secret of that name",
                |w| {
                    let foreign =
                        serde_json::json!({ "metadata": { "name": "crm-token", "namespace": "team-a" } });
                    *w.cluster.secret.borrow_mut() = Some(serde_json::from_value(foreign).unwrap());
                },
                "SecretConflict",
            ),
            (
                "adoption the platform does not allow",
                |w| {
                    w.ci.spec.adopt =
                        Some(serde_json::from_value(serde_json::json!({ "instanceId": 5 })).unwrap())
                },
                "AdoptionNotAllowed",
            ),
            (
                "a platform whose baseUrl moved",
                |w| {
                    w.status.instance_id = Some(100);
                    w.status.platform = Some(Box::new(crate::api::PlatformStatusRef {
                        kind: crate::api::PlatformKind::ConnectorPlatform,
                        name: "oc".into(),
                        base_url: "https://elsewhere.test/elements/api-v2".into(),
                    }));
                },
                "PlatformMoved",
            ),
        ];
        for (what, change, reason) in cases {
            let mut w = World::plain();
            change(&mut w);
            let passed = w.pass();
            assert_eq!(passed.outcome.as_ref().map_err(Error::reason).unwrap_err(), reason, "{what}");
            assert!(w.platform.calls().is_empty(), "{what}: nothing sent");
            assert_eq!(w.cluster.writes(), ["status"], "{what}: only the status says why");
            assert!(passed.report.platform.is_none(), "{what}: status.platform is not moved");
        }
    }

    #[test]
    fn an_instance_named_in_spec_adopt_is_read_and_taken_over_never_posted() {
        let mut w = World::plain();
        w.ci.metadata.finalizers = None;
        w.platform_settings["adoption"] = "Allow".into();
        let existing = instance_json(42, "made-elsewhere", &["team-a".into()], "token-elsewhere");
        w.platform.instances.borrow_mut().insert(42, existing);
        w.ci.spec.adopt = Some(serde_json::from_value(serde_json::json!({ "instanceId": 42 })).unwrap());
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert_eq!(
            w.platform.calls(),
            ["GET /instances/42", "PATCH /instances/42", "GET /instances/42"],
            "read, tagged, read back (another adopter may have tagged it meanwhile)"
        );
        assert_eq!(w.cluster.writes(), ["finalizer", "secret", "status"]);
        assert_eq!(passed.reasons(), ["Adopted", "Updated"]);
        assert_eq!(w.stored_token().as_deref(), Some("token-elsewhere"));
        assert_eq!(w.status.last_action.as_ref().map(|a| a.type_), Some(crate::api::ActionType::Adopted));
    }

    /// A world with the cluster id `east` whose resource is new (no finalizer), and a remote
    /// instance 42 a resource of the same namespace and name (another UID) left: `connector` is
    /// its connector.
    fn recreated(connector: &str) -> World {
        let mut w = World::plain();
        w.settings.cluster_id = Some("east".into());
        w.ci.metadata.finalizers = None;
        let tags = [
            "k8s-uid-0ld".to_string(),
            crate::api::reference_tag("east", "team-a", "crm"),
            crate::api::cluster_tag("east"),
        ];
        let mut left = instance_json(42, "team-a/crm", &tags, "token-before");
        left.element.as_mut().unwrap().key = Some(connector.into());
        w.platform.instances.borrow_mut().insert(42, left);
        w
    }

    #[test]
    fn a_resource_recreated_from_the_same_manifest_adopts_its_remote_instance_without_a_post() {
        let mut w = recreated("sfdc");
        w.platform.unclaimed.set(true);
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert_eq!(
            w.platform.calls(),
            ["GET /instances?tags[]", "GET /instances/42", "PATCH /instances/42", "GET /instances/42"],
            "searched by reference tag (no search by ownership tag: no finalizer), read, re-tagged, read back"
        );
        assert_eq!(passed.reasons(), ["Adopted", "Updated"]);
        assert!(
            passed.report.pass.notes[0].message.contains("reference tag"),
            "{:?}",
            passed.report.pass.notes
        );
        assert_eq!(w.status.instance_id, Some(42));
        assert_eq!(w.status.last_action.as_ref().map(|a| a.type_), Some(crate::api::ActionType::Adopted));
        assert_eq!(w.stored_token().as_deref(), Some("token-before"));
        let tags = w.platform.instances.borrow()[&42].tags.clone();
        assert!(tags.contains(&crate::api::ownership_tag(UID)) && !tags.contains(&"k8s-uid-0ld".to_string()));
        assert!(tags.contains(&crate::api::reference_tag("east", "team-a", "crm")));
        // The next passes read nothing new: the instance is this resource's now.
        w.forced = true;
        w.pass().outcome.unwrap();
        assert_eq!(w.platform.calls(), ["GET /instances/42"]);
    }

    /// A create another process may have in flight: the finalizer is on, this process did not
    /// add it, and no remote instance is recorded (relabeled from another shard; a restart). The
    /// search by tag waits one platform timeout and the margin from when this process first found
    /// the resource so, calling nothing; then it finds what that create made and adopts it.
    #[test]
    fn an_inherited_create_is_waited_for_then_found_not_made_again() {
        let mut w = World::plain();
        w.settings.sharded = true;
        let wait = w.settings.platform_timeout + HANDOVER_MARGIN;
        let passed = w.pass();
        match passed.outcome {
            Err(Error::Deferred { after }) => assert!(after <= wait && after + Duration::from_secs(5) > wait),
            other => panic!("{other:?}"),
        }
        assert!(w.platform.calls().is_empty(), "nothing called while it waits");
        let first = w.memory.inherited_at().unwrap();
        // A pass before the wait is over waits for the rest of it, counted from the first sight.
        assert!(matches!(w.pass().outcome, Err(Error::Deferred { .. })));
        assert_eq!(w.memory.inherited_at(), Some(first));
        assert!(w.platform.calls().is_empty());

        // The other process's create reached the platform meanwhile; the wait is over.
        let made = instance_json(7, "team-a/crm", &[crate::api::ownership_tag(UID)], "token-7");
        w.platform.instances.borrow_mut().insert(7, made);
        w.memory.rare.as_mut().unwrap().inherited_at = first.checked_sub(wait);
        w.pass().outcome.unwrap();
        let calls = w.platform.calls();
        assert_eq!(calls.first().map(String::as_str), Some("GET /instances?tags[]"), "{calls:?}");
        assert!(!calls.iter().any(|c| c == "POST /instances"), "{calls:?}");
        assert_eq!(w.status.instance_id, Some(7));
        assert_eq!(w.stored_token().as_deref(), Some("token-7"));
        assert_eq!(w.platform.instances.borrow().len(), 1, "no second remote instance");
        // Recorded now: nothing is waited for any more, and nothing of it is remembered.
        w.pass().outcome.unwrap();
        assert_eq!(w.memory.inherited_at(), None);

        // Not a shard: no process takes instances over while alive; the search is made at once.
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        assert_eq!(w.platform.calls().first().map(String::as_str), Some("GET /instances?tags[]"));
        // A shard's own finalizer: its own create, which it knows has ended.
        let mut w = World::plain();
        w.settings.sharded = true;
        w.memory.finalizer_added = 10;
        w.pass().outcome.unwrap();
        assert_eq!(w.platform.calls().first().map(String::as_str), Some("GET /instances?tags[]"));
    }

    /// A resource that left this process (relabeled into another shard) while its create waited
    /// (for the rate limiter, say): the create is not sent.
    #[test]
    fn a_create_for_a_resource_this_process_no_longer_holds_is_not_sent() {
        let mut w = World::plain();
        w.cluster.left.store(true, std::sync::atomic::Ordering::Relaxed);
        let passed = w.pass();
        assert!(
            matches!(passed.outcome, Err(Error::Platform(PlatformError::Withdrawn))),
            "{:?}",
            passed.outcome
        );
        let calls = w.platform.calls();
        assert!(!calls.iter().any(|c| c == "POST /instances"), "{calls:?}");
        assert!(w.platform.instances.borrow().is_empty());
        assert!(w.cluster.secret.borrow().is_none(), "no token Secret");
    }

    #[test]
    fn a_new_resource_the_index_does_not_know_is_created_without_a_search() {
        let mut w = recreated("sfdc");
        w.platform.unclaimed.set(false);
        w.pass().outcome.unwrap();
        assert_eq!(
            w.platform.calls(),
            ["GET /elements/sfdc/configuration", "POST /instances", "GET /instances (token)"]
        );
        let created = w.platform.instances.borrow()[&w.status.instance_id.unwrap()].tags.clone();
        assert_eq!(
            created,
            [
                crate::api::ownership_tag(UID),
                crate::api::reference_tag("east", "team-a", "crm"),
                crate::api::cluster_tag("east")
            ]
        );
    }

    #[test]
    fn a_left_instance_of_another_connector_is_not_adopted() {
        let mut w = recreated("hubspot");
        w.platform.unclaimed.set(true);
        let passed = w.pass();
        passed.outcome.as_ref().unwrap();
        assert_eq!(
            w.platform.calls(),
            [
                "GET /instances?tags[]",
                "GET /instances/42",
                "GET /elements/sfdc/configuration",
                "POST /instances",
                "GET /instances (token)"
            ]
        );
        assert_eq!(passed.reasons(), ["RemoteNotAdopted", "Created"]);
        assert!(passed.report.pass.notes[0].message.contains("`hubspot`"));
        assert_ne!(w.status.instance_id, Some(42));
        assert!(
            w.platform.instances.borrow()[&42].tags.contains(&"k8s-uid-0ld".to_string()),
            "left as it was"
        );
    }

    #[test]
    fn with_the_finalizer_and_no_record_the_ownership_tag_is_searched_too_once_per_process() {
        let mut w = World::plain();
        w.settings.cluster_id = Some("east".into());
        // Created before reference tags, lost in a crash before its id reached the status.
        let old = instance_json(42, "team-a/crm", &[crate::api::ownership_tag(UID)], "token-before");
        w.platform.instances.borrow_mut().insert(42, old);
        w.pass().outcome.unwrap();
        let calls = w.platform.calls();
        assert_eq!(calls[..3], ["GET /instances?tags[]", "GET /instances?tags[]", "GET /instances/42"]);
        assert_eq!(w.status.instance_id, Some(42));
        // Lost again (deleted out of band, status cleared): the reference tag alone is searched.
        w.platform.instances.borrow_mut().clear();
        w.status.instance_id = None;
        w.pass().outcome.unwrap();
        let calls = w.platform.calls();
        assert_eq!(calls.iter().filter(|c| *c == "GET /instances?tags[]").count(), 1, "{calls:?}");
        assert!(calls.contains(&"POST /instances".to_string()));
    }

    #[test]
    fn a_requested_reauthentication_puts_once_and_is_echoed_even_if_the_echo_must_wait() {
        let mut w = World::plain();
        w.pass().outcome.unwrap();
        w.platform.calls();
        w.annotate(ANNOTATION_REAUTHENTICATE_REQUESTED_AT, "r1");
        w.cluster.fail("status", conflict());
        let first = w.pass();
        assert!(first.settled.is_err(), "the echo's write failed");
        assert_eq!(
            w.platform.calls(),
            ["GET /elements/sfdc/configuration", "PUT /instances/100", "GET /instances (token)"]
        );
        assert_eq!(w.stored_token().as_deref(), Some("token-2"));
        // The retry remembers the request was carried out: no second PUT; the echo is written.
        w.pass().outcome.unwrap();
        assert!(w.platform.calls().is_empty());
        assert_eq!(w.status.last_handled_reauthenticate_at.as_deref(), Some("r1"));
        w.memory = Memory::default();
        w.pass().outcome.unwrap();
        assert!(w.platform.calls().is_empty(), "the echo in status is enough after a restart");
        // A new value asks again.
        w.annotate(ANNOTATION_REAUTHENTICATE_REQUESTED_AT, "r2");
        w.pass().outcome.unwrap();
        assert!(w.platform.calls().contains(&"PUT /instances/100".to_string()));
        assert_eq!(w.status.last_handled_reauthenticate_at.as_deref(), Some("r2"));
    }

    #[test]
    fn under_manual_a_requested_reauthentication_waits_for_its_approval() {
        let mut w = World::plain();
        w.ci.spec.reauthentication = Some(ReauthenticationPolicy::Manual);
        w.pass().outcome.unwrap();
        w.platform.calls();
        w.annotate(ANNOTATION_REAUTHENTICATE_REQUESTED_AT, "r1");
        let held = w.pass();
        held.outcome.as_ref().unwrap();
        assert!(w.platform.calls().is_empty(), "0 PUTs before the approval");
        let plan = w.status.planned_action.clone().expect("the plan is shown");
        let pending = find_condition(&w.status.conditions, crate::api::REAUTHENTICATION_PENDING).unwrap();
        assert!(pending.message.contains("a re-authentication was requested"), "{}", pending.message);
        assert_eq!(w.status.last_handled_reauthenticate_at, None);
        w.annotate(ANNOTATION_APPROVE, &plan.approval);
        w.pass().outcome.unwrap();
        let puts = w.platform.calls().into_iter().filter(|c| c.starts_with("PUT")).count();
        assert_eq!(puts, 1, "exactly one PUT after");
        assert_eq!(w.status.last_handled_reauthenticate_at.as_deref(), Some("r1"));
        assert!(w.status.planned_action.is_none());
    }
}
