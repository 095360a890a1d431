//! The pure core of a ConnectorInstance reconcile: which path a pass takes ([`entry`]), which
//! platform step comes next ([`next_step`]), what a step's answer means ([`Pass::after`]: a 404,
//! an adopt, a create), when the next periodic read is due ([`next_read_at`]), and what the
//! outcome is on status, Events and requeue ([`decide`]). The executor (`reconcile.rs`) performs
//! the effects these functions ask for and feeds their results back; every row of the design's
//! reconcile table is a path through them, tested below with scripted answers and no server.
//!
//! OAuth and adoption are paths of the same machine: an instance on the authorization-code flow
//! asks for an authorization URL ([`Step::Authorize`]) where it would create or re-authenticate
//! without a grant code ([`awaiting_authorization`]); one that names `spec.adopt` reads that
//! instance ([`Step::AdoptById`]) where it would create, and never posts.
//!
//! `spec.reauthentication: Manual` holds a re-authentication for changed inputs until the
//! approval annotation names the plan ([`reauthentication_held`], [`approval_value`]); creates,
//! recreates, renames, the enabled flag and the repair of an instance the platform reports as
//! broken (`valid: false`: its token no longer works, so there is nothing to keep) are not held.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use secrecy::SecretString;
use sha2::{Digest, Sha256};

use super::error::{Class, Error};
use super::events::EventType;
use super::status;
use crate::api::{
    ActionType, AuthorizationStatus, ConnectorInstanceStatus, DeletionPolicy, LastAction,
    OWNERSHIP_TAG_PREFIX, PlannedAction, PlannedActionType, RemoteStatus,
};
use crate::platform::{ElementInstance, PlatformError};

/// The remote instance as the manifest wants it (no secret values: those only enter the
/// `auth_hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRemote {
    /// The connector (element) key.
    pub connector: String,
    /// This resource's ownership tag (also in `tags`).
    pub own_tag: String,
    /// Remote instance name.
    pub name: String,
    /// Full tag list, ownership tag included.
    pub tags: Vec<String>,
    /// Enabled flag.
    pub enabled: bool,
    /// Hash of name and tags (see [`metadata_hash`]).
    pub metadata_hash: String,
    /// Hash of every authentication-relevant input, secret values included (see [`AuthHasher`]).
    pub auth_hash: String,
}

/// What is known of the remote instance at this point of the reconcile.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Known {
    /// The remote instance id (from status, or from a create/adopt in this pass).
    pub instance_id: Option<i64>,
    /// Hash of the name and tags the remote instance is known to carry.
    pub metadata_hash: Option<String>,
    /// Whether the remote instance is known to be enabled.
    pub enabled: Option<bool>,
    /// Auth hash last applied (annotation of the token Secret).
    pub auth_hash: Option<String>,
    /// The token is known (the token Secret holds it, or a response of this pass carried it).
    pub has_token: bool,
    /// The remote instance was read (or created, adopted) in this pass; false until then, also
    /// when a periodic read is due (`resync_due`).
    pub read: bool,
    /// A periodic re-read of the remote instance is due.
    pub resync_due: bool,
    /// The platform reported the authentication as broken (`valid: false`).
    pub invalid: bool,
    /// The instance id recorded in status no longer exists on the platform.
    pub lost: bool,
    /// Result of the search by ownership tag, once made: ids found, lowest first.
    pub tag_search: Option<Vec<i64>>,
    /// A re-authentication was already made in this pass.
    pub reauthenticated: bool,
    /// The connector can be re-authenticated without a person in a browser.
    pub reauth_without_browser: bool,
    /// Where a create or re-authentication gets its grant from.
    pub auth: AuthMode,
    /// A grant code not used before is at hand (authorization-code flow).
    pub grant: bool,
    /// `status.authorization` shows a request that is still good: asked for this generation,
    /// not about to expire, issued under the operator's current key.
    pub authorization_pending: bool,
    /// `spec.adopt.instanceId`: the remote instance to take over instead of creating one.
    pub adopt: Option<i64>,
    /// `spec.reauthentication: Manual`: a re-authentication for changed inputs waits for an
    /// approval.
    pub manual: bool,
    /// The approval annotation names the plan in effect (see [`approval_value`]).
    pub approved: bool,
}

/// How an instance authenticates.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum AuthMode {
    /// With configuration values alone (or a refresh token: `externalAuthentication: initial`).
    #[default]
    Values,
    /// OAuth 2.0 with a refresh token from a Secret: no browser step.
    RefreshToken,
    /// OAuth 2.0 authorization-code flow: each create or re-authentication needs a fresh code.
    Code,
}

/// One step of a reconcile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// `GET /instances?tags[]=<ownership tag>`: find what this resource created before a crash.
    SearchByTag,
    /// `POST /instances`.
    Create,
    /// Take over an instance found by its ownership tag.
    Adopt(i64),
    /// `GET /instances/{id}` of the instance named in `spec.adopt`, to take it over.
    AdoptById(i64),
    /// `POST /elements/{key}/oauth/url`: a new authorization URL for a person to open.
    Authorize,
    /// `POST /instances` again after the remote instance was deleted out of band.
    Recreate,
    /// `GET /instances/{id}`.
    Read,
    /// `PATCH /instances/{id}` with name and the full tag list.
    Patch,
    /// `PUT` / `DELETE /instances/{id}/enabled`.
    SetEnabled(bool),
    /// `PUT /instances/{id}` with the full body.
    ReAuthenticate,
    /// Nothing left to do.
    Done,
}

/// The next step towards `desired`. A create or re-authentication of an instance on the
/// authorization-code flow needs a fresh grant code; without one the step is [`Step::Authorize`]
/// (or nothing, while a published authorization is still good).
pub fn next_step(desired: &DesiredRemote, known: &Known) -> Step {
    match wanted_step(desired, known) {
        Step::Create | Step::Recreate | Step::ReAuthenticate if needs_grant(known) => {
            if known.authorization_pending { Step::Done } else { Step::Authorize }
        }
        step => step,
    }
}

/// Whether the instance waits for a person to authorize it: it needs a create or
/// re-authentication, and has no grant code for it.
pub fn awaiting_authorization(desired: &DesiredRemote, known: &Known) -> bool {
    matches!(wanted_step(desired, known), Step::Create | Step::Recreate | Step::ReAuthenticate)
        && needs_grant(known)
}

fn needs_grant(known: &Known) -> bool {
    known.auth == AuthMode::Code && !known.grant
}

/// Whether a re-authentication for changed inputs waits for an approval: it is the step that
/// would come next if approved, and it is not the step that comes next.
pub fn reauthentication_held(desired: &DesiredRemote, known: &Known) -> bool {
    held(known)
        && wanted_step(desired, known) != Step::ReAuthenticate
        && wanted_step(desired, &Known { approved: true, ..known.clone() }) == Step::ReAuthenticate
}

fn held(known: &Known) -> bool {
    known.manual && !known.approved
}

/// The value of annotation `openconnectors.io/approve` that approves the plan of a pass at
/// `generation` over the inputs `binding` names (see [`super::inputs::resolve_configuration`]):
/// `<base>-<binding>`. The plan's own (`planned`, as shown in status) while it is of this
/// generation and binding; else the base is the generation, or, when a value of it was carried
/// out already (`last_approved`: a referenced Secret changed again, which does not bump the
/// generation), the generation with the next `.N` (`3.2`, `3.3`, ...). No value is ever used
/// twice, and one written before its plan was shown (or for inputs that changed since) approves
/// nothing.
pub fn approval_value(
    generation: i64,
    binding: &str,
    planned: Option<&str>,
    last_approved: Option<&str>,
) -> String {
    let prefix = generation.to_string();
    let base_of = |value: &str| value.split_once('-').map_or(value, |(base, _)| base).to_string();
    let of_generation = |value: &str| base_of(value).split('.').next() == Some(prefix.as_str());
    let bound = |value: &str| value.split_once('-').is_some_and(|(_, b)| b == binding);
    if let Some(planned) = planned.filter(|p| of_generation(p) && bound(p) && Some(*p) != last_approved) {
        return planned.to_string();
    }
    let base = match last_approved.filter(|last| of_generation(last)) {
        None => prefix,
        Some(last) => {
            let carried_out =
                base_of(last).split_once('.').and_then(|(_, n)| n.parse::<u32>().ok()).unwrap_or(1);
            format!("{prefix}.{}", carried_out.saturating_add(1))
        }
    };
    format!("{base}-{binding}")
}

/// The plan to show while a re-authentication is held: the one shown already (with its time) if
/// its approval value is the same, else a new one planned `now`.
pub fn planned_action(
    previous: Option<&PlannedAction>,
    approval: String,
    changed_inputs: Vec<String>,
    now: &Time,
) -> PlannedAction {
    let planned_time =
        previous.filter(|p| p.approval == approval).map_or_else(|| now.clone(), |p| p.planned_time.clone());
    PlannedAction { type_: PlannedActionType::ReAuthenticate, changed_inputs, planned_time, approval }
}

/// The Warning to give once for an approval annotation that approves nothing: not the plan's
/// value (`approval`, when a plan waits) and not the value carried out last.
pub fn ignored_approval(
    annotation: Option<&str>,
    approval: Option<&str>,
    last_approved: Option<&str>,
) -> Option<String> {
    let given = annotation?;
    if Some(given) == approval || Some(given) == last_approved {
        return None;
    }
    let given: String = given.chars().take(64).collect();
    Some(match approval {
        Some(approval) => format!(
            "openconnectors.io/approve `{given}` does not approve the planned re-authentication; its value is `{approval}` (status.plannedAction.approval)"
        ),
        None => format!("openconnectors.io/approve `{given}` names no planned action; nothing is done"),
    })
}

/// The next step, as if every grant were at hand.
fn wanted_step(desired: &DesiredRemote, known: &Known) -> Step {
    let Some(_) = known.instance_id else {
        return match &known.tag_search {
            None => Step::SearchByTag,
            Some(found) => match (found.first(), known.adopt) {
                (Some(id), _) => Step::Adopt(*id),
                (None, Some(id)) => Step::AdoptById(id),
                (None, None) if known.lost => Step::Recreate,
                (None, None) => Step::Create,
            },
        };
    };
    if !known.read && (known.resync_due || !known.has_token) {
        return Step::Read;
    }
    if known.metadata_hash.as_deref() != Some(desired.metadata_hash.as_str()) {
        return Step::Patch;
    }
    let auth_changed = known.auth_hash.as_deref() != Some(desired.auth_hash.as_str());
    if known.invalid && !known.reauthenticated {
        // A broken authentication is renewed where something can renew it: changed inputs, a
        // connector that needs no browser, or a new grant code. It is not enabled before (the
        // platform disables an instance whose token refreshes failed until it is renewed).
        return if auth_changed || known.reauth_without_browser || known.auth == AuthMode::Code {
            Step::ReAuthenticate
        } else {
            Step::Done
        };
    }
    if known.enabled != Some(desired.enabled) {
        return Step::SetEnabled(desired.enabled);
    }
    if known.reauthenticated {
        return Step::Done;
    }
    if auth_changed && !held(known) {
        return Step::ReAuthenticate;
    }
    Step::Done
}

/// Which path a pass takes, from the resource's metadata and status alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Entry {
    /// Deleted and no finalizer of this operator on it: nothing to do but forget it.
    Forget,
    /// Deleted with `openconnectors.io/abandon: "true"`: release the finalizer, keep the remote.
    Abandon,
    /// Deleted with `deletionPolicy: Orphan`: release the finalizer, keep the remote.
    Orphan,
    /// Deleted: delete the remote instances it owns, then release the finalizer.
    Delete,
    /// `openconnectors.io/paused: "true"`: no platform calls.
    Paused,
    /// Reconcile; `forced` when a new `reconcile-requested-at` token asks for a read now.
    Run {
        /// A read of the remote instance is due regardless of the resync interval.
        forced: bool,
    },
}

/// What [`entry`] looks at.
#[derive(Debug, Clone, Copy, Default)]
pub struct EntryFacts<'a> {
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// The operator's finalizer is on the resource.
    pub has_finalizer: bool,
    /// The abandon annotation is `"true"`.
    pub abandon: bool,
    /// The paused annotation is `"true"`.
    pub paused: bool,
    /// `spec.deletionPolicy`.
    pub policy: DeletionPolicy,
    /// The `reconcile-requested-at` annotation.
    pub requested: Option<&'a str>,
    /// `status.lastHandledReconcileAt`.
    pub handled: Option<&'a str>,
}

/// The path of a pass. Deletion wins over pause (a paused resource can still be deleted).
pub fn entry(facts: EntryFacts<'_>) -> Entry {
    if facts.deleting {
        return match () {
            () if !facts.has_finalizer => Entry::Forget,
            () if facts.abandon => Entry::Abandon,
            () if facts.policy == DeletionPolicy::Orphan => Entry::Orphan,
            () => Entry::Delete,
        };
    }
    if facts.paused {
        return Entry::Paused;
    }
    Entry::Run { forced: facts.requested.is_some() && facts.requested != facts.handled }
}

/// An Event the pass asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    /// Normal or Warning.
    pub type_: EventType,
    /// Event reason.
    pub reason: &'static str,
    /// Event note (no secret values).
    pub message: String,
    /// It records an action on the remote instance (counted in the actions metric).
    pub action: bool,
}

/// A platform step's answer, as the core needs it.
#[derive(Debug)]
pub enum Answer {
    /// The tag search: the ids of the instances that carry this resource's ownership tag.
    Found(Vec<i64>),
    /// An instance body (create, adopt, read, patch, re-authenticate).
    Instance(Box<ElementInstance>),
    /// The call succeeded without a body (the enabled endpoints).
    Accepted,
    /// A new authorization request, with the provider's URL.
    Authorization(Box<AuthorizationStatus>),
}

/// What a pass learned and did so far: the state of the step machine.
#[derive(Debug, Default)]
pub struct Pass {
    /// What is known of the remote instance.
    pub known: Known,
    /// The token, once known (from the token Secret or a response).
    pub token: Option<SecretString>,
    /// The remote flags last seen.
    pub remote: Option<RemoteStatus>,
    /// The last action taken on the remote instance.
    pub action: Option<ActionType>,
    /// A create or re-authentication happened: the token is new.
    pub authenticated: bool,
    /// The next periodic read is to be planned, spread over `[from, to)` intervals.
    pub plan_read: Option<(f64, f64)>,
    /// Events to publish.
    pub notes: Vec<Note>,
    /// The pass made a platform call.
    pub called: bool,
    /// The authorization request published in this pass, if a new one was made.
    pub authorization: Option<AuthorizationStatus>,
    /// The grant code at hand was sent to the platform (it is used up, whatever the answer).
    pub grant_used: bool,
    /// The platform refused the grant code: its message.
    pub grant_refused: Option<String>,
}

impl Pass {
    /// Takes in an instance body the platform returned.
    fn absorb(&mut self, instance: &ElementInstance) {
        self.known.instance_id = Some(instance.id);
        self.known.metadata_hash =
            Some(metadata_hash(instance.name.as_deref().unwrap_or_default(), &instance.tags));
        self.known.enabled = Some(!instance.disabled.unwrap_or(false));
        self.known.invalid = instance.valid == Some(false);
        self.remote = Some(RemoteStatus { valid: instance.valid, disabled: instance.disabled });
        if let Some(token) = &instance.token {
            self.token = Some(token.clone());
            self.known.has_token = true;
        }
    }

    fn note(&mut self, type_: EventType, reason: &'static str, message: String, action: bool) {
        self.notes.push(Note { type_, reason, message, action });
    }

    /// Records an action of the pass with its Event. A plain update (the tag PATCH after an
    /// adoption, say) is the pass's recorded action only when nothing weightier happened in it.
    fn acted(&mut self, action: ActionType, message: String) {
        if action != ActionType::Updated || self.action.is_none() {
            self.action = Some(action);
        }
        self.note(EventType::Normal, action_reason(action), message, true);
    }

    /// The recorded remote instance is gone (a 404 about it): forget it; the plan searches by tag
    /// and recreates.
    fn lost(&mut self) {
        self.known = Known {
            lost: true,
            resync_due: self.known.resync_due,
            reauth_without_browser: self.known.reauth_without_browser,
            auth: self.known.auth,
            grant: self.known.grant,
            authorization_pending: self.known.authorization_pending,
            adopt: self.known.adopt,
            manual: self.known.manual,
            approved: self.known.approved,
            ..Known::default()
        };
    }

    /// Takes in the answer to `step`. A 404 about the recorded instance (read, patch, enabled,
    /// re-authenticate) means it is gone; a 404 of the adopt read means the instance found went
    /// away since the search; any other failure ends the pass.
    pub fn after(
        &mut self,
        step: Step,
        desired: &DesiredRemote,
        answer: Result<Answer, PlatformError>,
    ) -> Result<(), Error> {
        let id = self.known.instance_id.unwrap_or_default();
        let answer = match (step, answer) {
            (
                Step::Read | Step::Patch | Step::SetEnabled(_) | Step::ReAuthenticate,
                Err(PlatformError::NotFound { .. }),
            ) => {
                tracing::info!(id, ?step, "remote instance is gone; it will be recreated");
                self.lost();
                return Ok(());
            }
            (Step::Adopt(found), Err(PlatformError::NotFound { .. })) => {
                if let Some(ids) = &mut self.known.tag_search {
                    ids.retain(|i| *i != found);
                }
                return Ok(());
            }
            (Step::AdoptById(wanted), Err(PlatformError::NotFound { .. })) => {
                return Err(Error::invalid(
                    "AdoptedInstanceNotFound",
                    format!(
                        "remote instance {wanted} named in spec.adopt.instanceId does not exist on the platform; fix the id, or remove spec.adopt to let the operator create a new instance"
                    ),
                ));
            }
            (
                Step::Create | Step::Recreate | Step::ReAuthenticate,
                Err(PlatformError::InvalidInput { status, message, .. }),
            ) if self.known.grant && status != 0 => {
                // The code is used up: a new authorization is asked for, in this pass.
                self.grant_used = true;
                self.known.grant = false;
                self.known.authorization_pending = false;
                self.grant_refused = Some(message);
                return Ok(());
            }
            (_, Err(err)) => return Err(err.into()),
            (_, Ok(answer)) => answer,
        };
        match (step, answer) {
            (Step::SearchByTag, Answer::Found(mut ids)) => {
                ids.sort_unstable();
                ids.dedup();
                if ids.len() > 1 {
                    let message = format!(
                        "{} remote instances carry this resource's tag: {ids:?}; adopting the oldest",
                        ids.len()
                    );
                    self.note(EventType::Warning, "DuplicateRemoteInstances", message, false);
                }
                self.known.tag_search = Some(ids);
            }
            (Step::Create | Step::Recreate, Answer::Instance(created)) => {
                let created = *created;
                self.grant_used |= self.known.grant;
                self.absorb(&created);
                self.known.metadata_hash = Some(desired.metadata_hash.clone());
                self.known.auth_hash = Some(desired.auth_hash.clone());
                self.known.read = true;
                self.authenticated = true;
                // The first read is one interval after the create at least (a wave of creates
                // reads nothing while it lasts), and instances created together spread their
                // reads over the interval after that.
                self.plan_read = Some(FIRST_READ_AFTER_CREATE);
                let action = if step == Step::Create { ActionType::Created } else { ActionType::Recreated };
                self.acted(action, format!("created remote instance {}", created.id));
            }
            (Step::Adopt(found), Answer::Instance(adopted)) => {
                self.absorb(&adopted);
                // Created from this resource moments before a crash; without a record of other
                // inputs, take it as created from the current ones.
                self.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                self.known.read = true;
                self.plan_read = Some(NEXT_READ_AFTER_READ);
                self.acted(
                    ActionType::Adopted,
                    format!("adopted remote instance {found} found by its ownership tag"),
                );
            }
            (Step::AdoptById(wanted), Answer::Instance(found)) => {
                let key = found.element.as_ref().and_then(|e| e.key.as_deref());
                if key.is_some_and(|key| key != desired.connector) {
                    return Err(Error::invalid(
                        "AdoptionConnectorMismatch",
                        format!(
                            "remote instance {wanted} named in spec.adopt.instanceId is a `{}` instance, not `{}`; fix the id or spec.connector",
                            key.unwrap_or_default(),
                            desired.connector
                        ),
                    ));
                }
                if let Some(other) =
                    found.tags.iter().find(|t| t.starts_with(OWNERSHIP_TAG_PREFIX) && **t != desired.own_tag)
                {
                    return Err(Error::invalid(
                        "AdoptionConflict",
                        format!(
                            "remote instance {wanted} carries the ownership tag `{other}` of another ConnectorInstance (its UID follows the prefix); it is not taken over. If that ConnectorInstance is gone or should give it up, remove the tag `{other}` from the remote instance on the platform (deleting the ConnectorInstance, even with deletionPolicy Orphan, leaves the tag), then request a reconcile of this one (annotation `openconnectors.io/reconcile-requested-at`)"
                        ),
                    ));
                }
                self.absorb(&found);
                // Created elsewhere, from inputs the operator never saw: taken as it is; a later
                // change of the inputs re-authenticates it.
                self.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                self.known.read = true;
                self.plan_read = Some(NEXT_READ_AFTER_READ);
                self.acted(
                    ActionType::Adopted,
                    format!("adopted remote instance {wanted} named in spec.adopt.instanceId"),
                );
            }
            (Step::Authorize, Answer::Authorization(published)) => {
                self.known.authorization_pending = true;
                self.authorization = Some(*published);
            }
            (Step::Read, Answer::Instance(instance)) => {
                // Another ConnectorInstance's tag and not ours: it was taken over (two adopters
                // of one instance). Never tagged back: that would take turns forever.
                if let Some(other) = foreign_owner(&instance.tags, &desired.own_tag) {
                    return Err(ownership_lost(id, other));
                }
                self.absorb(&instance);
                self.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                self.known.read = true;
                self.plan_read = Some(NEXT_READ_AFTER_READ);
            }
            (Step::Patch, Answer::Instance(patched)) => {
                if let Some(other) = foreign_owner(&patched.tags, &desired.own_tag) {
                    return Err(ownership_lost(id, other));
                }
                if let Some(token) = &patched.token {
                    self.token = Some(token.clone());
                }
                self.known.metadata_hash = Some(desired.metadata_hash.clone());
                if self.action == Some(ActionType::Adopted) {
                    // The tag of an adoption is read back: another adopter may have tagged it
                    // meanwhile (the read refuses it then).
                    self.known.read = false;
                    self.known.resync_due = true;
                }
                self.acted(ActionType::Updated, format!("updated name and tags of remote instance {id}"));
            }
            (Step::SetEnabled(enabled), Answer::Accepted) => {
                self.known.enabled = Some(enabled);
                self.remote.get_or_insert_with(RemoteStatus::default).disabled = Some(!enabled);
                let verb = if enabled { "enabled" } else { "disabled" };
                self.acted(ActionType::Updated, format!("{verb} remote instance {id}"));
            }
            (Step::ReAuthenticate, Answer::Instance(instance)) => {
                self.grant_used |= self.known.grant;
                self.absorb(&instance);
                self.known.metadata_hash = Some(desired.metadata_hash.clone());
                self.known.auth_hash = Some(desired.auth_hash.clone());
                self.known.reauthenticated = true;
                self.authenticated = true;
                self.acted(ActionType::ReAuthenticated, format!("re-authenticated remote instance {id}"));
            }
            (step, answer) => {
                tracing::error!(?step, ?answer, "an answer that does not belong to the step");
                return Err(Error::Internal("a platform answer did not match its step"));
            }
        }
        Ok(())
    }

    /// Copies what the pass learned into the status.
    pub fn record(&self, status: &mut ConnectorInstanceStatus, secret_name: &str, now: &Time) {
        status.instance_id = self.known.instance_id;
        status.applied_metadata_hash = self.known.metadata_hash.clone();
        if self.remote.is_some() {
            status.remote = self.remote.clone();
        }
        if let Some(token) = &self.token {
            status.token_secret_name = Some(secret_name.to_string());
            status.token_sha256 = Some(crate::api::token_sha256(token)[..12].to_string());
        }
        if let Some(action) = self.action {
            status.last_action = Some(LastAction { type_: action, time: now.clone() });
        }
        if self.authenticated {
            status.last_authenticated_time = Some(now.clone());
        }
    }
}

/// An ownership tag of another ConnectorInstance among `tags`, when ours is not there.
fn foreign_owner<'a>(tags: &'a [String], own: &str) -> Option<&'a str> {
    if tags.iter().any(|t| t == own) {
        return None;
    }
    tags.iter().find(|t| t.starts_with(OWNERSHIP_TAG_PREFIX)).map(String::as_str)
}

fn ownership_lost(id: i64, other: &str) -> Error {
    Error::invalid(
        "OwnershipLost",
        format!(
            "remote instance {id} now carries the ownership tag `{other}` of another ConnectorInstance instead of this one's (two resources adopted it); it is left alone: not tagged back, not deleted. Delete this ConnectorInstance (its remote instance stays), or remove that tag on the platform and request a reconcile to take it back"
        ),
    )
}

/// The Event reason of an action.
pub fn action_reason(action: ActionType) -> &'static str {
    match action {
        ActionType::Created => "Created",
        ActionType::Adopted => "Adopted",
        ActionType::Updated => "Updated",
        ActionType::ReAuthenticated => "ReAuthenticated",
        ActionType::Recreated => "Recreated",
    }
}

/// When the first periodic read of a created instance falls, in intervals after the create.
pub const FIRST_READ_AFTER_CREATE: (f64, f64) = (1.0, 2.0);
/// When the next periodic read falls after a read, an adoption or another write, in intervals.
pub const NEXT_READ_AFTER_READ: (f64, f64) = (0.9, 1.1);

/// When the next periodic read is planned, and for which interval.
pub type ReadPlan = (Instant, Duration);

/// Whether the periodic read is due now, and the plan to remember. `planned` is what is
/// remembered; `settled` says the status shows the instance Ready for its generation (after a
/// restart, its first read is then spread over one interval instead of all instances reading at
/// start-up); `spread` is a random number in `[0, 1)`. A changed interval is planned again from
/// now, so a shorter one applies at once.
pub fn next_read_at(
    planned: Option<ReadPlan>,
    interval: Duration,
    settled: bool,
    now: Instant,
    spread: f64,
) -> (bool, Option<ReadPlan>) {
    match planned {
        Some((at, planned_for)) if planned_for == interval => (now >= at, Some((at, interval))),
        Some((at, _)) => {
            let replanned = now + interval.mul_f64(spread);
            (false, Some((at.min(replanned), interval)))
        }
        None if settled => (false, Some((now + interval.mul_f64(spread), interval))),
        None => (true, None),
    }
}

/// How a pass ends: the status to write (if it differs), the Event to publish with it, and when
/// to look again.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The new status.
    pub status: ConnectorInstanceStatus,
    /// An Event to publish if the status changed (a failure is reported once, not per retry): a
    /// Warning for a failure, a Normal one for a wait for a person.
    pub event: Option<(EventType, &'static str, String)>,
    /// When to look again.
    pub next: Next,
}

/// When to look at a resource again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// After this delay.
    Requeue(Duration),
    /// On a change of the resource or of what it references.
    AwaitChange,
    /// After the error policy's per-object backoff.
    Backoff,
}

impl Next {
    /// After a failure of `class`: wait for a change (the user must fix something), look again
    /// after `recheck` (it may be fixed outside Kubernetes), or back off (it may pass by itself).
    pub fn after_failure(class: Class, recheck: Duration) -> Next {
        match class {
            Class::Stalled => Next::AwaitChange,
            Class::StalledRecheck => Next::Requeue(recheck),
            Class::Transient => Next::Backoff,
            Class::Waiting => Next::Requeue(recheck),
        }
    }
}

/// The outcome of a pass: `Ok(resync)` (Ready, read again after `resync`) or the error.
/// `recheck` is when a stall that may be fixed outside Kubernetes is looked at again.
pub fn decide(
    mut status: ConnectorInstanceStatus,
    outcome: &Result<Duration, Error>,
    secret_name: &str,
    recheck: Duration,
    now: &Time,
) -> Decision {
    match outcome {
        Ok(resync) => {
            status::ready(&mut status, secret_name, now);
            status.authorization = None;
            Decision { status, event: None, next: Next::Requeue(*resync) }
        }
        Err(Error::Awaiting { reason, message, retry }) => {
            let err = Error::Awaiting { reason, message: message.clone(), retry: *retry };
            status::failed(&mut status, &err, Class::Waiting, now);
            Decision {
                status,
                event: Some((EventType::Normal, reason, message.clone())),
                next: Next::Requeue(*retry),
            }
        }
        Err(err) => {
            let class = err.class();
            status::failed(&mut status, err, class, now);
            let next = Next::after_failure(class, recheck);
            Decision { status, event: Some((EventType::Warning, err.reason(), err.to_string())), next }
        }
    }
}

/// The outcome of a deletion that could not finish.
pub fn decide_deletion_blocked(
    mut status: ConnectorInstanceStatus,
    err: &Error,
    recheck: Duration,
    now: &Time,
) -> Decision {
    let class = err.class();
    let id = status.instance_id;
    status::deletion_blocked(&mut status, err, class, id, now);
    let next = Next::after_failure(class, recheck);
    Decision { status, event: Some((EventType::Warning, "DeletionBlocked", err.to_string())), next }
}

/// One step of deleting what a resource owns remotely.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeleteStep {
    /// `GET /instances?tags[]=<ownership tag>`.
    Search,
    /// `GET /instances/{id}` of the instance recorded in status, which the search did not find:
    /// does the platform's answer show the ownership tag?
    ReadRecorded(i64),
    /// `DELETE /instances/{id}`.
    Delete(i64),
    /// Nothing left.
    Done,
}

/// A deletion step's answer.
#[derive(Debug)]
pub enum DeleteAnswer {
    /// The ids the tag search answered (instances that carry the ownership tag).
    Found(Vec<i64>),
    /// The tags the platform shows on the recorded instance.
    Tags(Vec<String>),
    /// The instance was deleted (`true`), or was already gone (`false`: a 404 counts as done).
    Deleted(bool),
}

/// The state of a deletion: only instances the platform's own answer shows with this resource's
/// ownership tag are deleted.
#[derive(Debug, Clone, Default)]
pub struct Deletion {
    tag: String,
    recorded: Option<i64>,
    found: Option<Vec<i64>>,
    recorded_checked: bool,
    done: Vec<i64>,
    /// Instances deleted.
    pub deleted: Vec<i64>,
    /// Events to publish.
    pub notes: Vec<Note>,
}

impl Deletion {
    /// A deletion of what carries `tag`, with `recorded` the id in status.
    pub fn new(tag: &str, recorded: Option<i64>) -> Self {
        Deletion { tag: tag.to_string(), recorded, ..Deletion::default() }
    }

    /// The next step.
    pub fn next_step(&self) -> DeleteStep {
        let Some(found) = &self.found else {
            return DeleteStep::Search;
        };
        if let Some(recorded) = self.recorded
            && !found.contains(&recorded)
            && !self.recorded_checked
        {
            return DeleteStep::ReadRecorded(recorded);
        }
        match found.iter().find(|id| !self.done.contains(id)) {
            Some(id) => DeleteStep::Delete(*id),
            None => DeleteStep::Done,
        }
    }

    /// Takes in a step's answer. A 404 of the recorded instance means it is gone already.
    pub fn after(
        &mut self,
        step: DeleteStep,
        answer: Result<DeleteAnswer, PlatformError>,
    ) -> Result<(), Error> {
        match (step, answer) {
            (DeleteStep::ReadRecorded(_), Err(PlatformError::NotFound { .. })) => {
                self.recorded_checked = true
            }
            (_, Err(err)) => return Err(err.into()),
            (DeleteStep::Search, Ok(DeleteAnswer::Found(mut ids))) => {
                ids.sort_unstable();
                ids.dedup();
                self.found = Some(ids);
            }
            (DeleteStep::ReadRecorded(id), Ok(DeleteAnswer::Tags(tags))) => {
                self.recorded_checked = true;
                if tags.contains(&self.tag) {
                    self.found.get_or_insert_with(Vec::new).push(id);
                } else {
                    let message = format!(
                        "remote instance {id} does not carry this resource's ownership tag; it is not deleted"
                    );
                    self.notes.push(Note {
                        type_: EventType::Warning,
                        reason: "RemoteNotOwned",
                        message,
                        action: false,
                    });
                }
            }
            (DeleteStep::Delete(id), Ok(DeleteAnswer::Deleted(was_there))) => {
                self.done.push(id);
                if was_there {
                    self.deleted.push(id);
                }
            }
            (step, answer) => {
                tracing::error!(?step, ?answer, "an answer that does not belong to the deletion step");
                return Err(Error::Internal("a platform answer did not match its deletion step"));
            }
        }
        Ok(())
    }
}

/// Hash of a remote name and tag set (order and duplicates of tags do not matter).
pub fn metadata_hash(name: &str, tags: &[String]) -> String {
    let tags: BTreeSet<&str> = tags.iter().map(String::as_str).collect();
    let mut hasher = Sha256::new();
    hasher.update(name.as_bytes());
    for tag in tags {
        hasher.update([0u8]);
        hasher.update(tag.as_bytes());
    }
    hex::encode(&hasher.finalize()[..12])
}

/// Hashes the authentication-relevant inputs: connector key and every configuration entry. Each
/// field is length-prefixed so that no two different inputs hash alike.
#[derive(Debug, Default)]
pub struct AuthHasher(Sha256);

impl AuthHasher {
    /// Adds one field.
    pub fn field(&mut self, value: &[u8]) -> &mut Self {
        self.0.update((value.len() as u64).to_be_bytes());
        self.0.update(value);
        self
    }

    /// The hex digest.
    pub fn finish(self) -> String {
        hex::encode(self.0.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn desired() -> DesiredRemote {
        let tags = vec!["team-a".to_string(), "k8s-uid-1".to_string()];
        DesiredRemote {
            connector: "sfdc".into(),
            own_tag: "k8s-uid-1".into(),
            name: "ns/demo".into(),
            metadata_hash: metadata_hash("ns/demo", &tags),
            tags,
            enabled: true,
            auth_hash: "auth-1".into(),
        }
    }

    /// What is known of an instance in steady state, as recorded in status and Secret.
    fn in_sync(d: &DesiredRemote) -> Known {
        Known {
            instance_id: Some(7),
            metadata_hash: Some(d.metadata_hash.clone()),
            enabled: Some(true),
            auth_hash: Some(d.auth_hash.clone()),
            has_token: true,
            reauth_without_browser: true,
            ..Known::default()
        }
    }

    #[test]
    fn new_resource_searches_by_tag_then_creates() {
        let d = desired();
        let mut k = Known::default();
        assert_eq!(next_step(&d, &k), Step::SearchByTag);
        k.tag_search = Some(vec![]);
        assert_eq!(next_step(&d, &k), Step::Create);
    }

    #[test]
    fn crash_after_post_adopts_the_tagged_instance_instead_of_posting_again() {
        let d = desired();
        let k = Known { tag_search: Some(vec![41, 42]), ..Known::default() };
        assert_eq!(next_step(&d, &k), Step::Adopt(41));
    }

    #[test]
    fn steady_state_does_nothing_and_reads_only_when_resync_is_due() {
        let d = desired();
        let mut k = in_sync(&d);
        assert_eq!(next_step(&d, &k), Step::Done);
        k.resync_due = true;
        assert_eq!(next_step(&d, &k), Step::Read);
        k.read = true;
        assert_eq!(next_step(&d, &k), Step::Done);
    }

    #[test]
    fn name_or_tag_change_patches_without_reauthentication() {
        let d = desired();
        let mut k = in_sync(&d);
        k.metadata_hash = Some(metadata_hash("ns/old-name", &d.tags));
        assert_eq!(next_step(&d, &k), Step::Patch);
        k.metadata_hash = Some(d.metadata_hash.clone());
        assert_eq!(next_step(&d, &k), Step::Done, "after the patch nothing else");
    }

    #[test]
    fn tag_order_does_not_matter() {
        let a = metadata_hash("n", &["x".into(), "y".into()]);
        let b = metadata_hash("n", &["y".into(), "x".into(), "x".into()]);
        assert_eq!(a, b);
        assert_ne!(a, metadata_hash("n", &["x".into()]));
        assert_ne!(metadata_hash("ab", &[]), metadata_hash("a", &["b".into()]));
    }

    #[test]
    fn enabled_change_uses_the_enabled_endpoint_only() {
        let mut d = desired();
        d.enabled = false;
        let k = in_sync(&desired());
        assert_eq!(next_step(&d, &k), Step::SetEnabled(false));
        let k = Known { enabled: Some(false), ..in_sync(&d) };
        assert_eq!(next_step(&d, &k), Step::Done);
    }

    #[test]
    fn configuration_change_reauthenticates_once() {
        let d = desired();
        let mut k = in_sync(&d);
        k.auth_hash = Some("auth-0".into());
        assert_eq!(next_step(&d, &k), Step::ReAuthenticate);
        k.auth_hash = Some(d.auth_hash.clone());
        k.reauthenticated = true;
        assert_eq!(next_step(&d, &k), Step::Done);
    }

    #[test]
    fn remote_deleted_out_of_band_searches_then_recreates() {
        let d = desired();
        // The reconciler records a 404 on read as: id forgotten, lost.
        let k = Known { lost: true, ..Known::default() };
        assert_eq!(next_step(&d, &k), Step::SearchByTag);
        let k = Known { lost: true, tag_search: Some(vec![]), ..Known::default() };
        assert_eq!(next_step(&d, &k), Step::Recreate);
        let k = Known { lost: true, tag_search: Some(vec![9]), ..Known::default() };
        assert_eq!(next_step(&d, &k), Step::Adopt(9), "a recreate that crashed before status is adopted");
    }

    #[test]
    fn remote_drift_found_on_resync_is_corrected() {
        let d = desired();
        let mut k = in_sync(&d);
        k.resync_due = true;
        assert_eq!(next_step(&d, &k), Step::Read);
        // The read shows other tags and a disabled instance.
        k.read = true;
        k.metadata_hash = Some(metadata_hash(&d.name, &["team-a".into()]));
        k.enabled = Some(false);
        assert_eq!(next_step(&d, &k), Step::Patch);
        k.metadata_hash = Some(d.metadata_hash.clone());
        assert_eq!(next_step(&d, &k), Step::SetEnabled(true));
        k.enabled = Some(true);
        assert_eq!(next_step(&d, &k), Step::Done);
    }

    #[test]
    fn invalid_remote_is_reauthenticated_only_where_no_browser_is_needed() {
        let d = desired();
        let mut k = in_sync(&d);
        k.invalid = true;
        assert_eq!(next_step(&d, &k), Step::ReAuthenticate);
        k.reauthenticated = true;
        assert_eq!(next_step(&d, &k), Step::Done, "at most once per pass");
        let k = Known { invalid: true, reauth_without_browser: false, ..in_sync(&d) };
        assert_eq!(next_step(&d, &k), Step::Done);
    }

    #[test]
    fn missing_token_secret_reads_the_token_back_without_reauthenticating() {
        let d = desired();
        let mut k = in_sync(&d);
        k.has_token = false;
        // The auth hash lives on the token Secret: without it, it is unknown too.
        k.auth_hash = None;
        assert_eq!(next_step(&d, &k), Step::Read);
    }

    #[test]
    fn auth_hash_is_length_prefixed() {
        let mut a = AuthHasher::default();
        a.field(b"ab").field(b"c");
        let mut b = AuthHasher::default();
        b.field(b"a").field(b"bc");
        assert_ne!(a.finish(), b.finish());
    }

    // ---- The core driven by scripted answers: one test per row of the design's table. ----

    fn remote(id: i64, name: &str, tags: &[String], token: &str) -> ElementInstance {
        serde_json::from_value(serde_json::json!({
            "id": id, "name": name, "tags": tags, "token": token, "valid": true, "disabled": false,
        }))
        .unwrap()
    }

    fn body(instance: ElementInstance) -> Result<Answer, PlatformError> {
        Ok(Answer::Instance(Box::new(instance)))
    }

    fn gone() -> Result<Answer, PlatformError> {
        Err(PlatformError::NotFound { message: "no such instance".into() })
    }

    /// Runs the step machine from `known`, answering each step with `answer`; returns the pass,
    /// the steps taken and how it ended.
    fn drive(
        desired: &DesiredRemote,
        known: Known,
        mut answer: impl FnMut(Step, &Known) -> Result<Answer, PlatformError>,
    ) -> (Pass, Vec<Step>, Result<(), Error>) {
        let mut pass = Pass { known, ..Pass::default() };
        let mut steps = Vec::new();
        for _ in 0..12 {
            let step = next_step(desired, &pass.known);
            if step == Step::Done {
                return (pass, steps, Ok(()));
            }
            steps.push(step);
            let reply = answer(step, &pass.known);
            if let Err(err) = pass.after(step, desired, reply) {
                return (pass, steps, Err(err));
            }
        }
        panic!("no end after 12 steps: {steps:?}");
    }

    fn reasons(pass: &Pass) -> Vec<&'static str> {
        pass.notes.iter().map(|n| n.reason).collect()
    }

    #[test]
    fn row_new_resource_searches_then_creates_once_and_takes_the_token() {
        let d = desired();
        let (pass, steps, end) = drive(&d, Known::default(), |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            Step::Create => body(remote(7, &d.name, &d.tags, "tok-1")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::SearchByTag, Step::Create]);
        assert_eq!(pass.known.instance_id, Some(7));
        assert_eq!(pass.action, Some(ActionType::Created));
        assert!(pass.authenticated && pass.token.is_some());
        assert_eq!(reasons(&pass), ["Created"]);
        assert_eq!(
            pass.plan_read,
            Some((1.0, 2.0)),
            "the first read one interval after, spread over the next"
        );
    }

    #[test]
    fn row_crash_after_post_adopts_and_never_posts_again() {
        let d = desired();
        let (pass, steps, end) = drive(&d, Known::default(), |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![42, 41, 42])),
            Step::Adopt(41) => body(remote(41, &d.name, &d.tags, "tok")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::SearchByTag, Step::Adopt(41)], "the oldest of the duplicates");
        assert_eq!(pass.action, Some(ActionType::Adopted));
        assert_eq!(reasons(&pass), ["DuplicateRemoteInstances", "Adopted"]);
        assert_eq!(pass.known.auth_hash.as_deref(), Some(d.auth_hash.as_str()));
    }

    #[test]
    fn an_instance_found_by_tag_that_vanishes_before_the_adopt_read_is_not_adopted() {
        let d = desired();
        let (pass, steps, end) = drive(&d, Known::default(), |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![41])),
            Step::Adopt(41) => gone(),
            Step::Create => body(remote(50, &d.name, &d.tags, "tok")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::SearchByTag, Step::Adopt(41), Step::Create]);
        assert_eq!(pass.known.instance_id, Some(50));
    }

    #[test]
    fn row_name_or_tags_changed_patches_only() {
        let d = desired();
        let known = Known { metadata_hash: Some("old".into()), ..in_sync(&d) };
        let (pass, steps, end) = drive(&d, known, |_, _| body(remote(7, &d.name, &d.tags, "tok")));
        end.unwrap();
        assert_eq!(steps, [Step::Patch]);
        assert!(!pass.authenticated);
        assert_eq!(reasons(&pass), ["Updated"]);
    }

    #[test]
    fn row_enabled_changed_uses_the_enabled_endpoint_only() {
        let mut d = desired();
        d.enabled = false;
        let (pass, steps, end) = drive(&d, in_sync(&desired()), |_, _| Ok(Answer::Accepted));
        end.unwrap();
        assert_eq!(steps, [Step::SetEnabled(false)]);
        assert_eq!(pass.remote.unwrap().disabled, Some(true));
    }

    #[test]
    fn row_configuration_changed_reauthenticates_once_and_takes_the_new_token() {
        let d = desired();
        let known = Known { auth_hash: Some("auth-0".into()), ..in_sync(&d) };
        let (pass, steps, end) = drive(&d, known, |_, _| body(remote(7, &d.name, &d.tags, "tok-2")));
        end.unwrap();
        assert_eq!(steps, [Step::ReAuthenticate]);
        assert!(pass.authenticated);
        assert_eq!(pass.token.as_ref().map(secrecy::ExposeSecret::expose_secret), Some("tok-2"));
        assert_eq!(pass.known.auth_hash.as_deref(), Some(d.auth_hash.as_str()));
    }

    #[test]
    fn row_remote_deleted_out_of_band_is_recreated_on_resync() {
        let d = desired();
        let known = Known { resync_due: true, ..in_sync(&d) };
        let (pass, steps, end) = drive(&d, known, |step, _| match step {
            Step::Read => gone(),
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            Step::Recreate => body(remote(8, &d.name, &d.tags, "tok-3")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::Read, Step::SearchByTag, Step::Recreate]);
        assert_eq!((pass.known.instance_id, pass.action), (Some(8), Some(ActionType::Recreated)));
        assert_eq!(reasons(&pass), ["Recreated"]);
    }

    /// Finding 5: a 404 on any call about the recorded instance means it is gone, as on resync.
    #[test]
    fn a_404_on_patch_enabled_or_reauthenticate_recreates_like_a_404_on_read() {
        let d = desired();
        let starts = [
            ("patch", Known { metadata_hash: Some("old".into()), ..in_sync(&d) }, Step::Patch),
            ("enabled", Known { enabled: Some(false), ..in_sync(&d) }, Step::SetEnabled(true)),
            (
                "reauthenticate",
                Known { auth_hash: Some("auth-0".into()), ..in_sync(&d) },
                Step::ReAuthenticate,
            ),
            ("read", Known { resync_due: true, ..in_sync(&d) }, Step::Read),
        ];
        for (what, known, first) in starts {
            let (pass, steps, end) = drive(&d, known, |step, _| match step {
                Step::SearchByTag => Ok(Answer::Found(vec![])),
                Step::Recreate => body(remote(9, &d.name, &d.tags, "tok")),
                _ => gone(),
            });
            end.unwrap();
            assert_eq!(steps, [first, Step::SearchByTag, Step::Recreate], "{what}");
            assert_eq!(pass.action, Some(ActionType::Recreated), "{what}");
        }
    }

    #[test]
    fn a_404_of_a_create_is_an_error_not_a_lost_instance() {
        let d = desired();
        let (_, steps, end) = drive(&d, Known::default(), |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            _ => gone(),
        });
        assert_eq!(steps, [Step::SearchByTag, Step::Create]);
        assert_eq!(end.unwrap_err().reason(), "PlatformNotFound");
    }

    #[test]
    fn row_drift_found_on_resync_is_corrected() {
        let d = desired();
        let known = Known { resync_due: true, ..in_sync(&d) };
        let mut drifted = remote(7, "renamed on the platform", &["team-a".to_string()], "tok");
        drifted.disabled = Some(true);
        let (_, steps, end) = drive(&d, known, |step, _| match step {
            Step::Read => body(drifted.clone()),
            Step::Patch => body(remote(7, &d.name, &d.tags, "tok")),
            Step::SetEnabled(true) => Ok(Answer::Accepted),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::Read, Step::Patch, Step::SetEnabled(true)]);
    }

    #[test]
    fn row_invalid_remote_is_reauthenticated_only_without_a_browser() {
        let d = desired();
        let mut invalid = remote(7, &d.name, &d.tags, "tok");
        invalid.valid = Some(false);
        for (browser_needed, expected) in
            [(false, vec![Step::Read, Step::ReAuthenticate]), (true, vec![Step::Read])]
        {
            let known = Known { resync_due: true, reauth_without_browser: !browser_needed, ..in_sync(&d) };
            let (pass, steps, end) = drive(&d, known, |step, _| match step {
                Step::Read => body(invalid.clone()),
                Step::ReAuthenticate => body(remote(7, &d.name, &d.tags, "tok-new")),
                other => panic!("unexpected {other:?}"),
            });
            end.unwrap();
            assert_eq!(steps, expected, "browser needed: {browser_needed}");
            // The executor reports `RemoteInvalid` when the pass ends with `invalid` still set.
            assert_eq!(pass.known.invalid, browser_needed);
        }
    }

    #[test]
    fn a_platform_failure_ends_the_pass_with_what_was_learned_kept() {
        let d = desired();
        let (pass, steps, end) = drive(&d, Known::default(), |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            _ => Err(PlatformError::Transient { message: "POST /instances: 502".into(), retry_after: None }),
        });
        assert_eq!(steps, [Step::SearchByTag, Step::Create]);
        assert_eq!(end.unwrap_err().reason(), "PlatformUnavailable");
        assert_eq!(pass.known.tag_search, Some(vec![]));
    }

    #[test]
    fn an_answer_that_does_not_fit_its_step_is_an_internal_error() {
        let mut pass = Pass::default();
        let err = pass.after(Step::SearchByTag, &desired(), Ok(Answer::Accepted)).unwrap_err();
        assert_eq!(err.reason(), "InternalError");
    }

    // ---- Entry: deletion rows, pause and reconcile requests. ----

    #[test]
    fn entry_decides_the_path_from_metadata() {
        let base = EntryFacts { has_finalizer: true, ..EntryFacts::default() };
        let deleting = EntryFacts { deleting: true, ..base };
        let orphan = DeletionPolicy::Orphan;
        let cases: Vec<(&str, EntryFacts<'_>, Entry)> = vec![
            ("plain", base, Entry::Run { forced: false }),
            (
                "reconcile requested",
                EntryFacts { requested: Some("t1"), ..base },
                Entry::Run { forced: true },
            ),
            (
                "request already handled",
                EntryFacts { requested: Some("t1"), handled: Some("t1"), ..base },
                Entry::Run { forced: false },
            ),
            (
                "new request token",
                EntryFacts { requested: Some("t2"), handled: Some("t1"), ..base },
                Entry::Run { forced: true },
            ),
            ("paused", EntryFacts { paused: true, requested: Some("t2"), ..base }, Entry::Paused),
            ("deleted, Delete policy", deleting, Entry::Delete),
            ("deleted while paused", EntryFacts { paused: true, ..deleting }, Entry::Delete),
            ("deleted, Orphan policy", EntryFacts { policy: orphan, ..deleting }, Entry::Orphan),
            ("deleted, abandoned", EntryFacts { abandon: true, policy: orphan, ..deleting }, Entry::Abandon),
            (
                "deleted, never created anything",
                EntryFacts { has_finalizer: false, abandon: true, ..deleting },
                Entry::Forget,
            ),
        ];
        for (what, facts, expected) in cases {
            assert_eq!(entry(facts), expected, "{what}");
        }
    }

    // ---- Outcome: every error class, and deletion blocked. ----

    fn t(secs: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn outcome_per_error_class() {
        let recheck = Duration::from_secs(300);
        // (outcome, next, the condition that is True, the Warning's reason)
        type Case<'a> = (Result<Duration, Error>, Next, &'a str, Option<&'a str>);
        let cases: Vec<Case> = vec![
            (Ok(Duration::from_secs(600)), Next::Requeue(Duration::from_secs(600)), "Ready", None),
            (
                Err(Error::invalid("PlatformNotFound", "no platform")),
                Next::AwaitChange,
                "Stalled",
                Some("PlatformNotFound"),
            ),
            (
                Err(Error::Platform(PlatformError::Unauthorized { message: "bad".into() })),
                Next::Requeue(recheck),
                "Stalled",
                Some("Unauthorized"),
            ),
            (
                Err(Error::Platform(PlatformError::Forbidden { message: "no".into() })),
                Next::Requeue(recheck),
                "Stalled",
                Some("Forbidden"),
            ),
            (
                Err(Error::Platform(PlatformError::RateLimited { retry_after: None })),
                Next::Backoff,
                "Reconciling",
                Some("RateLimited"),
            ),
            (
                Err(Error::Platform(PlatformError::Transient { message: "502".into(), retry_after: None })),
                Next::Backoff,
                "Reconciling",
                Some("PlatformUnavailable"),
            ),
            (Err(Error::Internal("boom")), Next::Backoff, "Reconciling", Some("InternalError")),
            (
                Err(Error::Awaiting {
                    reason: "AwaitingAuthorization",
                    message: "open the URL".into(),
                    retry: Duration::from_secs(3000),
                }),
                Next::Requeue(Duration::from_secs(3000)),
                "Reconciling",
                Some("AwaitingAuthorization"),
            ),
        ];
        for (outcome, next, condition, warning) in cases {
            let status = ConnectorInstanceStatus { observed_generation: Some(2), ..Default::default() };
            let decision = decide(status, &outcome, "demo-token", recheck, &t(1));
            assert_eq!(decision.next, next, "{outcome:?}");
            assert!(crate::api::is_condition_true(&decision.status.conditions, condition), "{outcome:?}");
            assert_eq!(decision.event.as_ref().map(|w| w.1), warning, "{outcome:?}");
            // A wait for a person is news, not a failure.
            let normal = matches!(outcome, Err(Error::Awaiting { .. }));
            assert_eq!(
                decision.event.as_ref().map(|w| w.0 == EventType::Normal),
                warning.map(|_| normal),
                "{outcome:?}"
            );
            if outcome.is_err() {
                assert!(!crate::api::is_condition_true(&decision.status.conditions, "Ready"), "{outcome:?}");
            }
        }
    }

    #[test]
    fn deletion_blocked_says_how_to_release_and_waits_or_retries_by_class() {
        let status = ConnectorInstanceStatus { instance_id: Some(5), ..Default::default() };
        let gone = Error::invalid("CredentialsNotFound", "credentials Secret `ns/c` not found");
        let decision = decide_deletion_blocked(status.clone(), &gone, Duration::from_secs(300), &t(1));
        assert_eq!(decision.next, Next::AwaitChange);
        let stalled = crate::api::find_condition(&decision.status.conditions, crate::api::STALLED).unwrap();
        assert!(
            stalled.message.contains("openconnectors.io/abandon")
                && stalled.message.contains("remote instance 5")
        );
        let down = Error::Platform(PlatformError::Transient { message: "503".into(), retry_after: None });
        assert_eq!(
            decide_deletion_blocked(status, &down, Duration::from_secs(300), &t(1)).next,
            Next::Backoff
        );
    }

    // ---- Resync timing (finding 9). ----

    #[test]
    fn the_next_read_follows_the_interval_in_force() {
        let now = Instant::now();
        let ten_minutes = Duration::from_secs(600);
        let ten_seconds = Duration::from_secs(10);
        // Nothing planned: due now, unless the status says Ready (after a restart): spread.
        assert_eq!(next_read_at(None, ten_minutes, false, now, 0.5), (true, None));
        assert_eq!(
            next_read_at(None, ten_minutes, true, now, 0.5),
            (false, Some((now + Duration::from_secs(300), ten_minutes)))
        );
        // Planned for the same interval: due when its time has come.
        let planned = Some((now + ten_minutes, ten_minutes));
        assert_eq!(next_read_at(planned, ten_minutes, true, now, 0.5), (false, planned));
        assert!(next_read_at(planned, ten_minutes, true, now + ten_minutes, 0.5).0);
        // 10m changed to 10s: planned again within the new interval, not after the old one.
        let (due, replanned) = next_read_at(planned, ten_seconds, true, now, 0.5);
        assert!(!due);
        assert_eq!(replanned, Some((now + Duration::from_secs(5), ten_seconds)));
        // 10s changed to 10m: the read already planned stays (no longer wait than it was).
        let soon = Some((now + ten_seconds, ten_seconds));
        assert_eq!(
            next_read_at(soon, ten_minutes, true, now, 0.5),
            (false, Some((now + ten_seconds, ten_minutes)))
        );
    }

    // ---- Deletion: Delete, remote already gone, not owned. ----

    fn delete_all(
        mut deletion: Deletion,
        mut answer: impl FnMut(DeleteStep) -> Result<DeleteAnswer, PlatformError>,
    ) -> (Deletion, Vec<DeleteStep>, Result<(), Error>) {
        let mut steps = Vec::new();
        for _ in 0..12 {
            let step = deletion.next_step();
            if step == DeleteStep::Done {
                return (deletion, steps, Ok(()));
            }
            steps.push(step);
            if let Err(err) = deletion.after(step, answer(step)) {
                return (deletion, steps, Err(err));
            }
        }
        panic!("no end: {steps:?}");
    }

    #[test]
    fn deletion_deletes_every_tagged_instance_and_the_recorded_one_if_it_shows_the_tag() {
        let tag = "k8s-uid-1";
        let (d, steps, end) = delete_all(Deletion::new(tag, Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![9, 8, 9])),
            DeleteStep::ReadRecorded(7) => Ok(DeleteAnswer::Tags(vec!["team-a".into(), tag.into()])),
            DeleteStep::Delete(_) => Ok(DeleteAnswer::Deleted(true)),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        let expected = [
            DeleteStep::Search,
            DeleteStep::ReadRecorded(7),
            DeleteStep::Delete(8),
            DeleteStep::Delete(9),
            DeleteStep::Delete(7),
        ];
        assert_eq!(steps, expected);
        assert_eq!(d.deleted, [8, 9, 7]);
    }

    #[test]
    fn deletion_of_a_remote_already_gone_is_done() {
        let (d, steps, end) = delete_all(Deletion::new("k8s-uid-1", Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![])),
            DeleteStep::ReadRecorded(7) => Err(PlatformError::NotFound { message: "gone".into() }),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::ReadRecorded(7)]);
        assert!(d.deleted.is_empty());
        // A 404 of the DELETE itself counts as done too.
        let (d, _, end) = delete_all(Deletion::new("k8s-uid-1", Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![7])),
            DeleteStep::Delete(7) => Ok(DeleteAnswer::Deleted(false)),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert!(d.deleted.is_empty());
    }

    #[test]
    fn deletion_never_touches_an_instance_without_the_ownership_tag() {
        let (d, steps, end) = delete_all(Deletion::new("k8s-uid-1", Some(7)), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![])),
            DeleteStep::ReadRecorded(7) => Ok(DeleteAnswer::Tags(vec!["k8s-uid-2".into()])),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::ReadRecorded(7)]);
        assert!(d.deleted.is_empty());
        assert_eq!(d.notes.iter().map(|n| n.reason).collect::<Vec<_>>(), ["RemoteNotOwned"]);
    }

    #[test]
    fn deletion_stops_at_a_platform_failure() {
        let (_, steps, end) = delete_all(Deletion::new("k8s-uid-1", None), |step| match step {
            DeleteStep::Search => Ok(DeleteAnswer::Found(vec![3])),
            _ => Err(PlatformError::Unauthorized { message: "rotated".into() }),
        });
        assert_eq!(steps, [DeleteStep::Search, DeleteStep::Delete(3)]);
        assert_eq!(end.unwrap_err().reason(), "Unauthorized");
    }

    fn instance(id: i64, tags: &[&str], key: &str, valid: bool, disabled: bool) -> Answer {
        Answer::Instance(Box::new(
            serde_json::from_value(serde_json::json!({
                "id": id, "name": "ns/demo", "token": "tok", "tags": tags, "valid": valid, "disabled": disabled,
                "element": {"key": key},
            }))
            .unwrap(),
        ))
    }

    #[test]
    fn oauth_code_flow_authorizes_before_creating_and_creates_once_with_the_grant() {
        let d = desired();
        let mut k = Known { auth: AuthMode::Code, tag_search: Some(vec![]), ..Known::default() };
        assert_eq!(next_step(&d, &k), Step::Authorize, "no grant yet: ask for an authorization URL");
        assert!(awaiting_authorization(&d, &k));
        let mut pass = Pass { known: k.clone(), ..Pass::default() };
        let published = AuthorizationStatus {
            url: "https://idp/authorize".into(),
            expires_at: Time(k8s_openapi::jiff::Timestamp::from_second(3600).unwrap()),
            callback_url: "https://cb".into(),
            id: "r-1".into(),
            generation: 1,
        };
        pass.after(Step::Authorize, &d, Ok(Answer::Authorization(Box::new(published.clone())))).unwrap();
        assert_eq!(next_step(&d, &pass.known), Step::Done, "one URL per pass");
        assert_eq!(pass.authorization, Some(published));
        // The URL is still good on the next pass: nothing to call.
        k.authorization_pending = true;
        assert_eq!(next_step(&d, &k), Step::Done);
        // The grant arrives: create, once, with it.
        k.grant = true;
        assert_eq!(next_step(&d, &k), Step::Create);
        assert!(!awaiting_authorization(&d, &k));
        let mut pass = Pass { known: k, ..Pass::default() };
        pass.after(Step::Create, &d, Ok(instance(7, &["k8s-uid-1"], "sfdc", true, false))).unwrap();
        assert!(pass.grant_used && pass.authenticated);
        assert_eq!(next_step(&d, &pass.known), Step::Done);
    }

    #[test]
    fn a_refused_grant_is_used_up_and_a_new_authorization_is_asked_for_in_the_same_pass() {
        let d = desired();
        let k = Known { auth: AuthMode::Code, grant: true, tag_search: Some(vec![]), ..Known::default() };
        let mut pass = Pass { known: k, ..Pass::default() };
        let refused = PlatformError::InvalidInput { status: 400, message: "invalid_grant".into() };
        pass.after(Step::Create, &d, Err(refused)).unwrap();
        assert!(pass.grant_used);
        assert_eq!(pass.grant_refused.as_deref(), Some("invalid_grant"));
        assert_eq!(next_step(&d, &pass.known), Step::Authorize);
        // Without a grant a 400 is the user's to fix, as for any connector.
        let mut pass =
            Pass { known: Known { tag_search: Some(vec![]), ..Known::default() }, ..Pass::default() };
        let refused = PlatformError::InvalidInput { status: 400, message: "missing".into() };
        assert!(pass.after(Step::Create, &d, Err(refused)).is_err());
    }

    #[test]
    fn oauth_reauthentication_needs_a_new_grant_and_renames_still_patch() {
        let d = desired();
        let mut k = Known { auth: AuthMode::Code, ..in_sync(&d) };
        k.reauth_without_browser = false;
        k.auth_hash = Some("auth-0".into());
        k.metadata_hash = Some(metadata_hash("ns/old", &d.tags));
        assert_eq!(next_step(&d, &k), Step::Patch, "a rename needs no authorization");
        k.metadata_hash = Some(d.metadata_hash.clone());
        assert_eq!(next_step(&d, &k), Step::Authorize);
        k.grant = true;
        assert_eq!(next_step(&d, &k), Step::ReAuthenticate);
        // A refresh token changes the auth hash: one PUT, no browser.
        let k = Known { auth: AuthMode::RefreshToken, auth_hash: Some("auth-0".into()), ..in_sync(&d) };
        assert_eq!(next_step(&d, &k), Step::ReAuthenticate);
    }

    #[test]
    fn an_auto_disabled_oauth_instance_is_renewed_then_enabled_never_enabled_while_broken() {
        let d = desired();
        // Refresh token flow, same refresh token: nothing can renew it; it is not re-enabled.
        let broken = Known {
            auth: AuthMode::RefreshToken,
            invalid: true,
            enabled: Some(false),
            reauth_without_browser: false,
            ..in_sync(&d)
        };
        assert_eq!(next_step(&d, &broken), Step::Done);
        // A new refresh token: re-authenticate, then enable.
        let mut k = Known { auth_hash: Some("old-refresh-token".into()), ..broken.clone() };
        assert_eq!(next_step(&d, &k), Step::ReAuthenticate);
        let mut pass = Pass { known: k.clone(), ..Pass::default() };
        pass.after(Step::ReAuthenticate, &d, Ok(instance(7, &["k8s-uid-1"], "sfdc", true, true))).unwrap();
        assert_eq!(next_step(&d, &pass.known), Step::SetEnabled(true));
        // Code flow: a broken instance asks for a new authorization.
        k = Known { auth: AuthMode::Code, ..broken };
        assert_eq!(next_step(&d, &k), Step::Authorize);
        assert!(awaiting_authorization(&d, &k));
    }

    #[test]
    fn adoption_by_id_reads_checks_and_never_posts() {
        let d = desired();
        let k = Known { adopt: Some(55), tag_search: Some(vec![]), ..Known::default() };
        assert_eq!(next_step(&d, &k), Step::AdoptById(55));
        // Taken over once already (tag added before a crash): found by its tag.
        let found = Known { adopt: Some(55), tag_search: Some(vec![55]), ..Known::default() };
        assert_eq!(next_step(&d, &found), Step::Adopt(55));
        // Adopted: the tag is added by a PATCH, the token read; no POST, no PUT.
        let mut pass = Pass { known: k.clone(), ..Pass::default() };
        pass.after(Step::AdoptById(55), &d, Ok(instance(55, &["by-hand"], "sfdc", true, false))).unwrap();
        assert_eq!(pass.action, Some(ActionType::Adopted));
        assert!(pass.token.is_some() && !pass.authenticated);
        assert_eq!(next_step(&d, &pass.known), Step::Patch);
        let tagged: Vec<&str> = d.tags.iter().map(String::as_str).collect();
        pass.after(Step::Patch, &d, Ok(instance(55, &tagged, "sfdc", true, false))).unwrap();
        assert_eq!(pass.action, Some(ActionType::Adopted), "the tag PATCH does not hide the adoption");
        assert_eq!(reasons(&pass), ["Adopted", "Updated"], "each act has its Event");
        // The tag is read back: another adopter may have tagged it meanwhile.
        assert_eq!(next_step(&d, &pass.known), Step::Read);
        let mut raced = Pass { known: pass.known.clone(), ..Pass::default() };
        pass.after(Step::Read, &d, Ok(instance(55, &tagged, "sfdc", true, false))).unwrap();
        assert_eq!(next_step(&d, &pass.known), Step::Done);
        let err = raced
            .after(Step::Read, &d, Ok(instance(55, &["k8s-uid-other"], "sfdc", true, false)))
            .unwrap_err();
        assert_eq!((err.reason(), err.class()), ("OwnershipLost", Class::Stalled));
        // (what the platform answers, the reason it is refused with)
        let refusals = [
            (Err(PlatformError::NotFound { message: "no".into() }), "AdoptedInstanceNotFound"),
            (Ok(instance(55, &["k8s-uid-other"], "sfdc", true, false)), "AdoptionConflict"),
            (Ok(instance(55, &[], "zendesk", true, false)), "AdoptionConnectorMismatch"),
        ];
        for (answer, reason) in refusals {
            let mut pass = Pass { known: k.clone(), ..Pass::default() };
            let err = pass.after(Step::AdoptById(55), &d, answer).unwrap_err();
            assert_eq!((err.reason(), err.class()), (reason, Class::Stalled));
            assert!(err.to_string().contains("55"), "{err}");
            assert!(pass.token.is_none(), "{reason}: the token is not taken");
        }
        // An adopted instance deleted out of band is not recreated: the manifest names it.
        let mut pass = Pass { known: Known { instance_id: Some(55), ..k }, ..Pass::default() };
        pass.after(Step::Read, &d, Err(PlatformError::NotFound { message: "gone".into() })).unwrap();
        assert_eq!(next_step(&d, &pass.known), Step::SearchByTag);
        pass.known.tag_search = Some(vec![]);
        assert_eq!(next_step(&d, &pass.known), Step::AdoptById(55));
    }

    #[test]
    fn a_remote_instance_tagged_by_another_resource_is_left_alone() {
        let d = desired();
        let own: &str = &d.own_tag;
        // (tags the platform answers, whether this resource still owns it)
        let cases: &[(&[&str], bool)] = &[
            (&[own], true),
            (&[own, "k8s-uid-other"], true),
            (&["team-a"], true),
            (&[], true),
            (&["k8s-uid-other"], false),
            (&["team-a", "k8s-uid-other"], false),
        ];
        for (tags, owned) in cases {
            for step in [Step::Read, Step::Patch] {
                let mut pass = Pass { known: in_sync(&d), ..Pass::default() };
                pass.known.read = false;
                pass.known.metadata_hash = Some("old".into());
                let result = pass.after(step, &d, Ok(instance(7, tags, "sfdc", true, false)));
                match (owned, result) {
                    (true, Ok(())) => {}
                    (false, Err(err)) => {
                        assert_eq!((err.reason(), err.class()), ("OwnershipLost", Class::Stalled));
                        assert!(err.to_string().contains("k8s-uid-other"), "{err}");
                        assert!(pass.token.is_none() && pass.action.is_none(), "nothing taken from it");
                    }
                    (owned, result) => panic!("{step:?} with {tags:?}: owned {owned}, got {result:?}"),
                }
            }
        }
    }

    // ---- spec.reauthentication: Manual. ----

    /// In steady state, with `Manual`, and the inputs changed since the token was issued.
    fn manual_changed(d: &DesiredRemote) -> Known {
        Known { manual: true, auth_hash: Some("auth-0".into()), ..in_sync(d) }
    }

    #[test]
    fn manual_holds_a_configuration_change_and_lets_renames_and_the_enabled_flag_through() {
        let d = desired();
        let held = manual_changed(&d);
        assert_eq!(next_step(&d, &held), Step::Done, "no PUT without approval");
        assert!(reauthentication_held(&d, &held));
        assert!(!awaiting_authorization(&d, &held));
        // A rename while held: one PATCH, the plan still waits.
        let renamed = Known { metadata_hash: Some("old".into()), ..held.clone() };
        let (pass, steps, end) = drive(&d, renamed, |_, _| body(remote(7, &d.name, &d.tags, "tok")));
        end.unwrap();
        assert_eq!(steps, [Step::Patch]);
        assert!(reauthentication_held(&d, &pass.known) && !pass.authenticated);
        // The enabled flag while held: the enabled endpoint, the plan still waits.
        let mut off = d.clone();
        off.enabled = false;
        let (pass, steps, end) = drive(&off, held.clone(), |_, _| Ok(Answer::Accepted));
        end.unwrap();
        assert_eq!(steps, [Step::SetEnabled(false)]);
        assert!(reauthentication_held(&off, &pass.known));
        // A periodic read while held reads, and holds.
        let (pass, steps, _) =
            drive(&d, Known { resync_due: true, ..held }, |_, _| body(remote(7, &d.name, &d.tags, "tok")));
        assert_eq!(steps, [Step::Read]);
        assert!(reauthentication_held(&d, &pass.known));
    }

    #[test]
    fn manual_approved_reauthenticates_once_and_the_plan_is_gone() {
        let d = desired();
        let approved = Known { approved: true, ..manual_changed(&d) };
        assert!(!reauthentication_held(&d, &approved));
        let (pass, steps, end) = drive(&d, approved, |_, _| body(remote(7, &d.name, &d.tags, "tok-2")));
        end.unwrap();
        assert_eq!(steps, [Step::ReAuthenticate]);
        assert!(pass.authenticated && !reauthentication_held(&d, &pass.known));
        assert_eq!(reasons(&pass), ["ReAuthenticated"]);
        // Reverted: nothing to hold, nothing to call.
        let reverted = Known { manual: true, ..in_sync(&d) };
        assert_eq!(next_step(&d, &reverted), Step::Done);
        assert!(!reauthentication_held(&d, &reverted));
        // Automatic (the default) does not hold.
        assert_eq!(next_step(&d, &Known { manual: false, ..manual_changed(&d) }), Step::ReAuthenticate);
    }

    #[test]
    fn manual_never_holds_a_create_a_recreate_an_adoption_or_a_broken_instance() {
        let d = desired();
        let fresh = Known { manual: true, ..Known::default() };
        let (pass, steps, end) = drive(&d, fresh, |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            Step::Create => body(remote(7, &d.name, &d.tags, "tok-1")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::SearchByTag, Step::Create]);
        assert!(!reauthentication_held(&d, &pass.known));
        // Deleted out of band while a plan waits: created again from the current inputs.
        let lost = Known { resync_due: true, ..manual_changed(&d) };
        let (pass, steps, end) = drive(&d, lost, |step, _| match step {
            Step::Read => gone(),
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            Step::Recreate => body(remote(8, &d.name, &d.tags, "tok-3")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::Read, Step::SearchByTag, Step::Recreate]);
        assert!(!reauthentication_held(&d, &pass.known), "the plan is gone with the old instance");
        // Found by its tag after a crash: adopted, never re-authenticated for it.
        let crashed = Known { manual: true, tag_search: Some(vec![41]), ..Known::default() };
        let (_, steps, end) = drive(&d, crashed, |_, _| body(remote(41, &d.name, &d.tags, "tok")));
        end.unwrap();
        assert_eq!(steps, [Step::Adopt(41)]);
        // Reported broken (valid: false): its token no longer works, so the repair is not held;
        // it sends the current inputs (the only ones the operator has).
        let broken = Known { invalid: true, ..manual_changed(&d) };
        assert_eq!(next_step(&d, &broken), Step::ReAuthenticate);
        assert!(!reauthentication_held(&d, &broken));
    }

    #[test]
    fn manual_on_the_code_flow_asks_for_a_browser_only_once_approved() {
        let d = desired();
        let held = Known { auth: AuthMode::Code, reauth_without_browser: false, ..manual_changed(&d) };
        assert_eq!(next_step(&d, &held), Step::Done);
        assert!(reauthentication_held(&d, &held) && !awaiting_authorization(&d, &held));
        let approved = Known { approved: true, ..held };
        assert_eq!(next_step(&d, &approved), Step::Authorize);
        assert!(awaiting_authorization(&d, &approved));
    }

    #[test]
    fn approval_values_name_one_plan_each_and_are_never_used_twice() {
        // (generation, binding of the inputs, plan shown, value carried out last, expected)
        let cases = [
            (3, "b", None, None, "3-b"),
            (3, "b", Some("3-b"), None, "3-b"),
            (4, "b", Some("3-b"), None, "4-b"),
            (3, "b", None, Some("3-b"), "3.2-b"),
            (3, "b", None, Some("3.2-b"), "3.3-b"),
            (3, "b", Some("3.2-b"), Some("3-b"), "3.2-b"),
            (3, "b", Some("3-b"), Some("3-b"), "3.2-b"),
            (4, "b", None, Some("3.5-b"), "4-b"),
            (31, "b", None, Some("3-b"), "31-b"),
            (3, "b", None, Some("3.x-b"), "3.2-b"),
            // A referenced Secret changed after the plan was shown: another value.
            (3, "c", Some("3-b"), None, "3-c"),
            (3, "c", Some("3.2-b"), Some("3-a"), "3.2-c"),
            // Values of before (no binding) are of their generation still.
            (3, "b", None, Some("3"), "3.2-b"),
            (3, "b", Some("3"), None, "3-b"),
        ];
        for (generation, binding, planned, last, expected) in cases {
            assert_eq!(
                approval_value(generation, binding, planned, last),
                expected,
                "{generation} {binding} {planned:?} {last:?}"
            );
        }
    }

    #[test]
    fn an_approval_that_approves_nothing_is_warned_about_and_a_carried_out_one_is_not() {
        assert_eq!(ignored_approval(None, Some("3"), None), None);
        assert_eq!(ignored_approval(Some("3"), Some("3"), None), None);
        assert_eq!(ignored_approval(Some("3"), Some("4"), Some("3")), None, "the last one stays set");
        let wrong = ignored_approval(Some("2"), Some("3"), None).unwrap();
        assert!(wrong.contains("`2`") && wrong.contains("`3`"), "{wrong}");
        let nothing = ignored_approval(Some(&"9".repeat(500)), None, None).unwrap();
        assert!(nothing.contains("names no planned action") && nothing.len() < 200, "{nothing}");
    }

    #[test]
    fn a_plan_keeps_its_time_while_its_approval_value_stays() {
        let first = planned_action(None, "3".into(), vec!["a".into()], &t(1));
        assert_eq!((first.planned_time.clone(), first.approval.as_str()), (t(1), "3"));
        let again = planned_action(Some(&first), "3".into(), vec!["a".into(), "b".into()], &t(2));
        assert_eq!(again.planned_time, t(1));
        assert_eq!(again.changed_inputs, ["a", "b"]);
        assert_eq!(planned_action(Some(&first), "4".into(), vec![], &t(2)).planned_time, t(2));
    }
}
