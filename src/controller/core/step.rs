//! The step machine of a pass: which platform step comes next ([`next_step`]) and what its
//! answer means ([`Pass::after`]: a 404, an adopt, a create). The executor performs the steps and
//! feeds the answers back; every row of the design's reconcile table is a path through these two,
//! tested below with scripted answers and no server.
//!
//! OAuth and adoption are paths of the same machine: an instance on the authorization-code flow
//! asks for an authorization URL ([`Step::Authorize`]) where it would create or re-authenticate
//! without a grant code ([`awaiting_authorization`]); one that names `spec.adopt` reads that
//! instance ([`Step::AdoptById`]) where it would create, and never posts. Under
//! `spec.reauthentication: Manual` a re-authentication for changed inputs is held until approved
//! ([`reauthentication_held`]; the approval values are in [`super::approval`]); creates,
//! recreates, renames, the enabled flag and the repair of an instance the platform reports as
//! broken (`valid: false`: its token no longer works, so there is nothing to keep) are not held.

use secrecy::SecretString;

use super::Note;
use super::desired::{DesiredRemote, metadata_hash};
use super::reads::{FIRST_READ_AFTER_CREATE, NEXT_READ_AFTER_READ};
use crate::api::{ActionType, AuthorizationStatus, OWNERSHIP_TAG_PREFIX, RemoteStatus};
use crate::controller::error::Error;
use crate::controller::events::EventType;
use crate::platform::{ElementInstance, PlatformError};

/// What the pass is given: the spec's policy and annotations, and facts about the grant, the
/// connector and the read timing. Not facts about the remote instance: a 404 keeps them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Given {
    /// Where a create or re-authentication gets its grant from.
    pub auth: AuthMode,
    /// `spec.adopt.instanceId`: the remote instance to take over instead of creating one.
    pub adopt: Option<i64>,
    /// `spec.reauthentication: Manual`: a re-authentication for changed inputs waits for an
    /// approval.
    pub manual: bool,
    /// The approval annotation names the plan in effect (see [`super::approval::approval_value`]).
    pub approved: bool,
    /// A periodic re-read of the remote instance is due (also set by the pass to read back the
    /// tag of an adoption).
    pub resync_due: bool,
    /// The connector can be re-authenticated without a person in a browser (learnt from its
    /// catalog when the instance is reported broken).
    pub reauth_without_browser: bool,
    /// A grant code not used before is at hand (authorization-code flow; used up once sent).
    pub grant: bool,
    /// `status.authorization` shows a request that is still good: asked for this generation,
    /// not about to expire, issued under the operator's current key.
    pub authorization_pending: bool,
    /// A re-authentication is requested by annotation and not carried out yet: wanted as if the
    /// inputs had changed.
    pub reauthenticate: bool,
}

/// What is known of the remote instance at this point of the pass. A 404 about it resets all of
/// it but `lost`.
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
    /// The platform reported the authentication as broken (`valid: false`).
    pub invalid: bool,
    /// The instance id recorded in status no longer exists on the platform.
    pub lost: bool,
    /// Result of the search by reference (or ownership) tag, once made: ids found, lowest first.
    pub tag_search: Option<Vec<i64>>,
    /// A re-authentication was already made in this pass.
    pub reauthenticated: bool,
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
    /// `GET /instances?tags[]=<reference tag>` (then by the ownership tag, see
    /// `execute::search`): find what this resource created before a crash, or a resource of the
    /// same namespace and name before it.
    SearchByTag,
    /// `POST /instances`.
    Create,
    /// Take over an instance found by its tag (the answer must show the tag and the connector).
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
pub fn next_step(desired: &DesiredRemote, given: &Given, known: &Known) -> Step {
    match wanted_step(desired, given, known) {
        Step::Create | Step::Recreate | Step::ReAuthenticate if needs_grant(given) => {
            if given.authorization_pending { Step::Done } else { Step::Authorize }
        }
        step => step,
    }
}

/// Whether the instance waits for a person to authorize it: it needs a create or
/// re-authentication, and has no grant code for it.
pub fn awaiting_authorization(desired: &DesiredRemote, given: &Given, known: &Known) -> bool {
    matches!(wanted_step(desired, given, known), Step::Create | Step::Recreate | Step::ReAuthenticate)
        && needs_grant(given)
}

fn needs_grant(given: &Given) -> bool {
    given.auth == AuthMode::Code && !given.grant
}

/// Whether a re-authentication for changed inputs waits for an approval: it is the step that
/// would come next if approved, and it is not the step that comes next.
pub fn reauthentication_held(desired: &DesiredRemote, given: &Given, known: &Known) -> bool {
    held(given)
        && wanted_step(desired, given, known) != Step::ReAuthenticate
        && wanted_step(desired, &Given { approved: true, ..given.clone() }, known) == Step::ReAuthenticate
}

fn held(given: &Given) -> bool {
    given.manual && !given.approved
}

/// The value of annotation `openconnectors.io/approve` that approves the plan of a pass at
/// `generation` over the inputs `binding` names (see [`super::inputs::resolve_configuration`]):
/// `<base>-<binding>`. The plan's own (`planned`, as shown in status) while it is of this
/// generation and binding; else the base is the generation, or, when a value of it was carried
/// The next step, as if every grant were at hand.
fn wanted_step(desired: &DesiredRemote, given: &Given, known: &Known) -> Step {
    let Some(_) = known.instance_id else {
        return match &known.tag_search {
            None => Step::SearchByTag,
            Some(found) => match (found.first(), given.adopt) {
                (Some(id), _) => Step::Adopt(*id),
                (None, Some(id)) => Step::AdoptById(id),
                (None, None) if known.lost => Step::Recreate,
                (None, None) => Step::Create,
            },
        };
    };
    if !known.read && (given.resync_due || !known.has_token) {
        return Step::Read;
    }
    if known.metadata_hash.as_deref() != Some(desired.metadata_hash.as_str()) {
        return Step::Patch;
    }
    let auth_changed = known.auth_hash.as_deref() != Some(desired.auth_hash.as_str()) || given.reauthenticate;
    if known.invalid && !known.reauthenticated {
        // A broken authentication is renewed where something can renew it: changed inputs, a
        // connector that needs no browser, or a new grant code. It is not enabled before (the
        // platform disables an instance whose token refreshes failed until it is renewed).
        return if auth_changed || given.reauth_without_browser || given.auth == AuthMode::Code {
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
    if auth_changed && !held(given) {
        return Step::ReAuthenticate;
    }
    Step::Done
}

/// A platform step's answer, as the core needs it.
#[derive(Debug)]
pub enum Answer {
    /// The tag search: the ids of the instances that carry this resource's reference or
    /// ownership tag.
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
    /// What the pass is given (and learnt of the grant and the connector).
    pub given: Given,
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
        self.known = Known { lost: true, ..Known::default() };
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
            ) if self.given.grant && status != 0 => {
                // The code is used up: a new authorization is asked for, in this pass.
                self.grant_used = true;
                self.given.grant = false;
                self.given.authorization_pending = false;
                self.grant_refused = Some(message);
                return Ok(());
            }
            (_, Err(err)) => return Err(err.into()),
            (_, Ok(answer)) => answer,
        };
        self.take(step, desired, answer)
    }

    /// Takes in a successful answer to `step`.
    fn take(&mut self, step: Step, desired: &DesiredRemote, answer: Answer) -> Result<(), Error> {
        let id = self.known.instance_id.unwrap_or_default();
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
                self.grant_used |= self.given.grant;
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
                // The platform's own answer must show the tag searched for, and the connector.
                let key = adopted.element.as_ref().and_then(|e| e.key.as_deref());
                let other_connector = key.filter(|key| *key != desired.connector);
                if !is_ours(&adopted.tags, desired) || other_connector.is_some() {
                    if let Some(ids) = &mut self.known.tag_search {
                        ids.retain(|i| *i != found);
                    }
                    let message = match other_connector {
                        Some(key) => format!(
                            "remote instance {found} carries this resource's tag but is a `{key}` instance, not `{}`; it is not adopted",
                            desired.connector
                        ),
                        None => format!(
                            "remote instance {found} was found by this resource's tag but its answer does not show the tag; it is not adopted"
                        ),
                    };
                    self.note(EventType::Warning, "RemoteNotAdopted", message, false);
                    return Ok(());
                }
                let by = if adopted.tags.contains(&desired.own_tag) {
                    "its ownership tag"
                } else {
                    "its reference tag (a resource of the same namespace and name created it)"
                };
                self.absorb(&adopted);
                // Created from this resource moments before a crash, or from the same manifest
                // before the resource was re-created; without a record of other inputs, take it
                // as created from the current ones.
                self.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                self.known.read = true;
                self.plan_read = Some(NEXT_READ_AFTER_READ);
                self.acted(ActionType::Adopted, format!("adopted remote instance {found} found by {by}"));
            }
            (Step::AdoptById(wanted), Answer::Instance(found)) => {
                self.adopt_named(wanted, desired, &found)?
            }
            (Step::Authorize, Answer::Authorization(published)) => {
                self.given.authorization_pending = true;
                self.authorization = Some(*published);
            }
            (Step::Read, Answer::Instance(instance)) => {
                // Another ConnectorInstance's tag and not ours: it was taken over (two adopters
                // of one instance). Never tagged back: that would take turns forever.
                if let Some(other) = foreign_owner(&instance.tags, desired) {
                    return Err(ownership_lost(id, other));
                }
                self.absorb(&instance);
                self.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
                self.known.read = true;
                self.plan_read = Some(NEXT_READ_AFTER_READ);
            }
            (Step::Patch, Answer::Instance(patched)) => {
                if let Some(other) = foreign_owner(&patched.tags, desired) {
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
                    self.given.resync_due = true;
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
                self.grant_used |= self.given.grant;
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

    /// Takes over the instance named in `spec.adopt` (`found`, as read): refused when it is
    /// another connector's or carries another resource's ownership tag.
    fn adopt_named(
        &mut self,
        wanted: i64,
        desired: &DesiredRemote,
        found: &ElementInstance,
    ) -> Result<(), Error> {
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
        if let Some(other) = foreign_owner(&found.tags, desired) {
            return Err(Error::invalid(
                "AdoptionConflict",
                format!(
                    "remote instance {wanted} carries the ownership tag `{other}` of another ConnectorInstance (its UID follows the prefix); it is not taken over. If that ConnectorInstance is gone or should give it up, remove the tag `{other}` from the remote instance on the platform (deleting the ConnectorInstance, even with deletionPolicy Orphan, leaves the tag), then request a reconcile of this one (annotation `openconnectors.io/reconcile-requested-at`)"
                ),
            ));
        }
        self.absorb(found);
        // Created elsewhere, from inputs the operator never saw: taken as it is; a later
        // change of the inputs re-authenticates it.
        self.known.auth_hash.get_or_insert_with(|| desired.auth_hash.clone());
        self.known.read = true;
        self.plan_read = Some(NEXT_READ_AFTER_READ);
        self.acted(
            ActionType::Adopted,
            format!("adopted remote instance {wanted} named in spec.adopt.instanceId"),
        );
        Ok(())
    }
}

/// Whether `tags` show that the instance is this resource's: its ownership tag, or its reference
/// tag (an instance of a resource of the same cluster, namespace and name before this one: it
/// carries that resource's ownership tag until this one's replaces it).
fn is_ours(tags: &[String], desired: &DesiredRemote) -> bool {
    tags.iter().any(|t| *t == desired.own_tag || Some(t) == desired.reference_tag.as_ref())
}

/// An ownership tag of another ConnectorInstance among `tags`, when they do not show the instance
/// is ours.
fn foreign_owner<'a>(tags: &'a [String], desired: &DesiredRemote) -> Option<&'a str> {
    if is_ours(tags, desired) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::error::Class;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    /// A row of the design's table: what the pass is given and what it knows of the remote
    /// instance, written flat as the table lists them.
    #[derive(Debug, Clone, Default)]
    struct Row {
        instance_id: Option<i64>,
        metadata_hash: Option<String>,
        enabled: Option<bool>,
        auth_hash: Option<String>,
        has_token: bool,
        read: bool,
        invalid: bool,
        lost: bool,
        tag_search: Option<Vec<i64>>,
        reauthenticated: bool,
        auth: AuthMode,
        adopt: Option<i64>,
        manual: bool,
        approved: bool,
        resync_due: bool,
        reauth_without_browser: bool,
        grant: bool,
        authorization_pending: bool,
        reauthenticate: bool,
    }

    impl Row {
        fn split(&self) -> (Given, Known) {
            let r = self.clone();
            let given = Given {
                auth: r.auth,
                adopt: r.adopt,
                manual: r.manual,
                approved: r.approved,
                resync_due: r.resync_due,
                reauth_without_browser: r.reauth_without_browser,
                grant: r.grant,
                authorization_pending: r.authorization_pending,
                reauthenticate: r.reauthenticate,
            };
            let known = Known {
                instance_id: r.instance_id,
                metadata_hash: r.metadata_hash,
                enabled: r.enabled,
                auth_hash: r.auth_hash,
                has_token: r.has_token,
                read: r.read,
                invalid: r.invalid,
                lost: r.lost,
                tag_search: r.tag_search,
                reauthenticated: r.reauthenticated,
            };
            (given, known)
        }

        fn pass(&self) -> Pass {
            let (given, known) = self.split();
            Pass { given, known, ..Pass::default() }
        }
    }

    fn row_step(d: &DesiredRemote, row: &Row) -> Step {
        let (given, known) = row.split();
        next_step(d, &given, &known)
    }

    fn row_held(d: &DesiredRemote, row: &Row) -> bool {
        let (given, known) = row.split();
        reauthentication_held(d, &given, &known)
    }

    fn row_awaiting(d: &DesiredRemote, row: &Row) -> bool {
        let (given, known) = row.split();
        awaiting_authorization(d, &given, &known)
    }

    fn desired() -> DesiredRemote {
        let tags = vec!["team-a".to_string(), "k8s-uid-1".to_string()];
        DesiredRemote {
            connector: "sfdc".into(),
            own_tag: "k8s-uid-1".into(),
            reference_tag: None,
            name: "ns/demo".into(),
            metadata_hash: metadata_hash("ns/demo", &tags),
            tags,
            enabled: true,
            auth_hash: "auth-1".into(),
        }
    }

    /// What is known of an instance in steady state, as recorded in status and Secret.
    fn in_sync(d: &DesiredRemote) -> Row {
        Row {
            instance_id: Some(7),
            metadata_hash: Some(d.metadata_hash.clone()),
            enabled: Some(true),
            auth_hash: Some(d.auth_hash.clone()),
            has_token: true,
            reauth_without_browser: true,
            ..Row::default()
        }
    }

    #[test]
    fn new_resource_searches_by_tag_then_creates() {
        let d = desired();
        let mut k = Row::default();
        assert_eq!(row_step(&d, &k), Step::SearchByTag);
        k.tag_search = Some(vec![]);
        assert_eq!(row_step(&d, &k), Step::Create);
    }

    #[test]
    fn crash_after_post_adopts_the_tagged_instance_instead_of_posting_again() {
        let d = desired();
        let k = Row { tag_search: Some(vec![41, 42]), ..Row::default() };
        assert_eq!(row_step(&d, &k), Step::Adopt(41));
    }

    #[test]
    fn steady_state_does_nothing_and_reads_only_when_resync_is_due() {
        let d = desired();
        let mut k = in_sync(&d);
        assert_eq!(row_step(&d, &k), Step::Done);
        k.resync_due = true;
        assert_eq!(row_step(&d, &k), Step::Read);
        k.read = true;
        assert_eq!(row_step(&d, &k), Step::Done);
    }

    #[test]
    fn name_or_tag_change_patches_without_reauthentication() {
        let d = desired();
        let mut k = in_sync(&d);
        k.metadata_hash = Some(metadata_hash("ns/old-name", &d.tags));
        assert_eq!(row_step(&d, &k), Step::Patch);
        k.metadata_hash = Some(d.metadata_hash.clone());
        assert_eq!(row_step(&d, &k), Step::Done, "after the patch nothing else");
    }

    #[test]
    fn enabled_change_uses_the_enabled_endpoint_only() {
        let mut d = desired();
        d.enabled = false;
        let k = in_sync(&desired());
        assert_eq!(row_step(&d, &k), Step::SetEnabled(false));
        let k = Row { enabled: Some(false), ..in_sync(&d) };
        assert_eq!(row_step(&d, &k), Step::Done);
    }

    #[test]
    fn configuration_change_reauthenticates_once() {
        let d = desired();
        let mut k = in_sync(&d);
        k.auth_hash = Some("auth-0".into());
        assert_eq!(row_step(&d, &k), Step::ReAuthenticate);
        k.auth_hash = Some(d.auth_hash.clone());
        k.reauthenticated = true;
        assert_eq!(row_step(&d, &k), Step::Done);
    }

    #[test]
    fn remote_deleted_out_of_band_searches_then_recreates() {
        let d = desired();
        // The reconciler records a 404 on read as: id forgotten, lost.
        let k = Row { lost: true, ..Row::default() };
        assert_eq!(row_step(&d, &k), Step::SearchByTag);
        let k = Row { lost: true, tag_search: Some(vec![]), ..Row::default() };
        assert_eq!(row_step(&d, &k), Step::Recreate);
        let k = Row { lost: true, tag_search: Some(vec![9]), ..Row::default() };
        assert_eq!(row_step(&d, &k), Step::Adopt(9), "a recreate that crashed before status is adopted");
    }

    #[test]
    fn remote_drift_found_on_resync_is_corrected() {
        let d = desired();
        let mut k = in_sync(&d);
        k.resync_due = true;
        assert_eq!(row_step(&d, &k), Step::Read);
        // The read shows other tags and a disabled instance.
        k.read = true;
        k.metadata_hash = Some(metadata_hash(&d.name, &["team-a".into()]));
        k.enabled = Some(false);
        assert_eq!(row_step(&d, &k), Step::Patch);
        k.metadata_hash = Some(d.metadata_hash.clone());
        assert_eq!(row_step(&d, &k), Step::SetEnabled(true));
        k.enabled = Some(true);
        assert_eq!(row_step(&d, &k), Step::Done);
    }

    #[test]
    fn invalid_remote_is_reauthenticated_only_where_no_browser_is_needed() {
        let d = desired();
        let mut k = in_sync(&d);
        k.invalid = true;
        assert_eq!(row_step(&d, &k), Step::ReAuthenticate);
        k.reauthenticated = true;
        assert_eq!(row_step(&d, &k), Step::Done, "at most once per pass");
        let k = Row { invalid: true, reauth_without_browser: false, ..in_sync(&d) };
        assert_eq!(row_step(&d, &k), Step::Done);
    }

    #[test]
    fn missing_token_secret_reads_the_token_back_without_reauthenticating() {
        let d = desired();
        let mut k = in_sync(&d);
        k.has_token = false;
        // The auth hash lives on the token Secret: without it, it is unknown too.
        k.auth_hash = None;
        assert_eq!(row_step(&d, &k), Step::Read);
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
        known: Row,
        mut answer: impl FnMut(Step, &Known) -> Result<Answer, PlatformError>,
    ) -> (Pass, Vec<Step>, Result<(), Error>) {
        let mut pass = known.pass();
        let mut steps = Vec::new();
        for _ in 0..12 {
            let step = next_step(desired, &pass.given, &pass.known);
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
        let (pass, steps, end) = drive(&d, Row::default(), |step, _| match step {
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
        let (pass, steps, end) = drive(&d, Row::default(), |step, _| match step {
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
        let (pass, steps, end) = drive(&d, Row::default(), |step, _| match step {
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
        let known = Row { metadata_hash: Some("old".into()), ..in_sync(&d) };
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
        let known = Row { auth_hash: Some("auth-0".into()), ..in_sync(&d) };
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
        let known = Row { resync_due: true, ..in_sync(&d) };
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
            ("patch", Row { metadata_hash: Some("old".into()), ..in_sync(&d) }, Step::Patch),
            ("enabled", Row { enabled: Some(false), ..in_sync(&d) }, Step::SetEnabled(true)),
            ("reauthenticate", Row { auth_hash: Some("auth-0".into()), ..in_sync(&d) }, Step::ReAuthenticate),
            ("read", Row { resync_due: true, ..in_sync(&d) }, Step::Read),
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
        let (_, steps, end) = drive(&d, Row::default(), |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            _ => gone(),
        });
        assert_eq!(steps, [Step::SearchByTag, Step::Create]);
        assert_eq!(end.unwrap_err().reason(), "PlatformNotFound");
    }

    #[test]
    fn row_drift_found_on_resync_is_corrected() {
        let d = desired();
        let known = Row { resync_due: true, ..in_sync(&d) };
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
            let known = Row { resync_due: true, reauth_without_browser: !browser_needed, ..in_sync(&d) };
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
        let (pass, steps, end) = drive(&d, Row::default(), |step, _| match step {
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
        let mut k = Row { auth: AuthMode::Code, tag_search: Some(vec![]), ..Row::default() };
        assert_eq!(row_step(&d, &k), Step::Authorize, "no grant yet: ask for an authorization URL");
        assert!(row_awaiting(&d, &k));
        let mut pass = k.clone().pass();
        let published = AuthorizationStatus {
            url: "https://idp/authorize".into(),
            expires_at: Time(k8s_openapi::jiff::Timestamp::from_second(3600).unwrap()),
            callback_url: "https://cb".into(),
            id: "r-1".into(),
            generation: 1,
        };
        pass.after(Step::Authorize, &d, Ok(Answer::Authorization(Box::new(published.clone())))).unwrap();
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::Done, "one URL per pass");
        assert_eq!(pass.authorization, Some(published));
        // The URL is still good on the next pass: nothing to call.
        k.authorization_pending = true;
        assert_eq!(row_step(&d, &k), Step::Done);
        // The grant arrives: create, once, with it.
        k.grant = true;
        assert_eq!(row_step(&d, &k), Step::Create);
        assert!(!row_awaiting(&d, &k));
        let mut pass = k.pass();
        pass.after(Step::Create, &d, Ok(instance(7, &["k8s-uid-1"], "sfdc", true, false))).unwrap();
        assert!(pass.grant_used && pass.authenticated);
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::Done);
    }

    #[test]
    fn a_refused_grant_is_used_up_and_a_new_authorization_is_asked_for_in_the_same_pass() {
        let d = desired();
        let k = Row { auth: AuthMode::Code, grant: true, tag_search: Some(vec![]), ..Row::default() };
        let mut pass = k.pass();
        let refused = PlatformError::InvalidInput { status: 400, message: "invalid_grant".into() };
        pass.after(Step::Create, &d, Err(refused)).unwrap();
        assert!(pass.grant_used);
        assert_eq!(pass.grant_refused.as_deref(), Some("invalid_grant"));
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::Authorize);
        // Without a grant a 400 is the user's to fix, as for any connector.
        let mut pass = Row { tag_search: Some(vec![]), ..Row::default() }.pass();
        let refused = PlatformError::InvalidInput { status: 400, message: "missing".into() };
        assert!(pass.after(Step::Create, &d, Err(refused)).is_err());
    }

    #[test]
    fn oauth_reauthentication_needs_a_new_grant_and_renames_still_patch() {
        let d = desired();
        let mut k = Row { auth: AuthMode::Code, ..in_sync(&d) };
        k.reauth_without_browser = false;
        k.auth_hash = Some("auth-0".into());
        k.metadata_hash = Some(metadata_hash("ns/old", &d.tags));
        assert_eq!(row_step(&d, &k), Step::Patch, "a rename needs no authorization");
        k.metadata_hash = Some(d.metadata_hash.clone());
        assert_eq!(row_step(&d, &k), Step::Authorize);
        k.grant = true;
        assert_eq!(row_step(&d, &k), Step::ReAuthenticate);
        // A refresh token changes the auth hash: one PUT, no browser.
        let k = Row { auth: AuthMode::RefreshToken, auth_hash: Some("auth-0".into()), ..in_sync(&d) };
        assert_eq!(row_step(&d, &k), Step::ReAuthenticate);
    }

    #[test]
    fn an_auto_disabled_oauth_instance_is_renewed_then_enabled_never_enabled_while_broken() {
        let d = desired();
        // Refresh token flow, same refresh token: nothing can renew it; it is not re-enabled.
        let broken = Row {
            auth: AuthMode::RefreshToken,
            invalid: true,
            enabled: Some(false),
            reauth_without_browser: false,
            ..in_sync(&d)
        };
        assert_eq!(row_step(&d, &broken), Step::Done);
        // A new refresh token: re-authenticate, then enable.
        let mut k = Row { auth_hash: Some("old-refresh-token".into()), ..broken.clone() };
        assert_eq!(row_step(&d, &k), Step::ReAuthenticate);
        let mut pass = k.clone().pass();
        pass.after(Step::ReAuthenticate, &d, Ok(instance(7, &["k8s-uid-1"], "sfdc", true, true))).unwrap();
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::SetEnabled(true));
        // Code flow: a broken instance asks for a new authorization.
        k = Row { auth: AuthMode::Code, ..broken };
        assert_eq!(row_step(&d, &k), Step::Authorize);
        assert!(row_awaiting(&d, &k));
    }

    #[test]
    fn adoption_by_id_reads_checks_and_never_posts() {
        let d = desired();
        let k = Row { adopt: Some(55), tag_search: Some(vec![]), ..Row::default() };
        assert_eq!(row_step(&d, &k), Step::AdoptById(55));
        // Taken over once already (tag added before a crash): found by its tag.
        let found = Row { adopt: Some(55), tag_search: Some(vec![55]), ..Row::default() };
        assert_eq!(row_step(&d, &found), Step::Adopt(55));
        // Adopted: the tag is added by a PATCH, the token read; no POST, no PUT.
        let mut pass = k.clone().pass();
        pass.after(Step::AdoptById(55), &d, Ok(instance(55, &["by-hand"], "sfdc", true, false))).unwrap();
        assert_eq!(pass.action, Some(ActionType::Adopted));
        assert!(pass.token.is_some() && !pass.authenticated);
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::Patch);
        let tagged: Vec<&str> = d.tags.iter().map(String::as_str).collect();
        pass.after(Step::Patch, &d, Ok(instance(55, &tagged, "sfdc", true, false))).unwrap();
        assert_eq!(pass.action, Some(ActionType::Adopted), "the tag PATCH does not hide the adoption");
        assert_eq!(reasons(&pass), ["Adopted", "Updated"], "each act has its Event");
        // The tag is read back: another adopter may have tagged it meanwhile.
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::Read);
        let mut raced = Pass { given: pass.given.clone(), known: pass.known.clone(), ..Pass::default() };
        pass.after(Step::Read, &d, Ok(instance(55, &tagged, "sfdc", true, false))).unwrap();
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::Done);
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
            let mut pass = k.clone().pass();
            let err = pass.after(Step::AdoptById(55), &d, answer).unwrap_err();
            assert_eq!((err.reason(), err.class()), (reason, Class::Stalled));
            assert!(err.to_string().contains("55"), "{err}");
            assert!(pass.token.is_none(), "{reason}: the token is not taken");
        }
        // An adopted instance deleted out of band is not recreated: the manifest names it.
        let mut pass = Row { instance_id: Some(55), ..k }.pass();
        pass.after(Step::Read, &d, Err(PlatformError::NotFound { message: "gone".into() })).unwrap();
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::SearchByTag);
        pass.known.tag_search = Some(vec![]);
        assert_eq!(next_step(&d, &pass.given, &pass.known), Step::AdoptById(55));
    }

    #[test]
    fn a_remote_instance_tagged_by_another_resource_is_left_alone() {
        let d = DesiredRemote { reference_tag: Some("k8s-ref-mine".into()), ..desired() };
        let own: &str = &d.own_tag;
        // (tags the platform answers, whether this resource still owns it)
        let cases: &[(&[&str], bool)] = &[
            (&[own], true),
            (&[own, "k8s-uid-other"], true),
            (&["team-a"], true),
            (&[], true),
            (&["k8s-uid-other"], false),
            (&["team-a", "k8s-uid-other"], false),
            // Left by a resource of the same namespace and name before this one, not re-tagged yet.
            (&["k8s-uid-before", "k8s-ref-mine"], true),
            (&["k8s-uid-other", "k8s-ref-another"], false),
        ];
        for (tags, owned) in cases {
            for step in [Step::Read, Step::Patch] {
                let mut pass = in_sync(&d).pass();
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
    fn manual_changed(d: &DesiredRemote) -> Row {
        Row { manual: true, auth_hash: Some("auth-0".into()), ..in_sync(d) }
    }

    #[test]
    fn manual_holds_a_configuration_change_and_lets_renames_and_the_enabled_flag_through() {
        let d = desired();
        let held = manual_changed(&d);
        assert_eq!(row_step(&d, &held), Step::Done, "no PUT without approval");
        assert!(row_held(&d, &held));
        assert!(!row_awaiting(&d, &held));
        // A rename while held: one PATCH, the plan still waits.
        let renamed = Row { metadata_hash: Some("old".into()), ..held.clone() };
        let (pass, steps, end) = drive(&d, renamed, |_, _| body(remote(7, &d.name, &d.tags, "tok")));
        end.unwrap();
        assert_eq!(steps, [Step::Patch]);
        assert!(reauthentication_held(&d, &pass.given, &pass.known) && !pass.authenticated);
        // The enabled flag while held: the enabled endpoint, the plan still waits.
        let mut off = d.clone();
        off.enabled = false;
        let (pass, steps, end) = drive(&off, held.clone(), |_, _| Ok(Answer::Accepted));
        end.unwrap();
        assert_eq!(steps, [Step::SetEnabled(false)]);
        assert!(reauthentication_held(&off, &pass.given, &pass.known));
        // A periodic read while held reads, and holds.
        let (pass, steps, _) =
            drive(&d, Row { resync_due: true, ..held }, |_, _| body(remote(7, &d.name, &d.tags, "tok")));
        assert_eq!(steps, [Step::Read]);
        assert!(reauthentication_held(&d, &pass.given, &pass.known));
    }

    #[test]
    fn manual_approved_reauthenticates_once_and_the_plan_is_gone() {
        let d = desired();
        let approved = Row { approved: true, ..manual_changed(&d) };
        assert!(!row_held(&d, &approved));
        let (pass, steps, end) = drive(&d, approved, |_, _| body(remote(7, &d.name, &d.tags, "tok-2")));
        end.unwrap();
        assert_eq!(steps, [Step::ReAuthenticate]);
        assert!(pass.authenticated && !reauthentication_held(&d, &pass.given, &pass.known));
        assert_eq!(reasons(&pass), ["ReAuthenticated"]);
        // Reverted: nothing to hold, nothing to call.
        let reverted = Row { manual: true, ..in_sync(&d) };
        assert_eq!(row_step(&d, &reverted), Step::Done);
        assert!(!row_held(&d, &reverted));
        // Automatic (the default) does not hold.
        assert_eq!(row_step(&d, &Row { manual: false, ..manual_changed(&d) }), Step::ReAuthenticate);
    }

    #[test]
    fn manual_never_holds_a_create_a_recreate_an_adoption_or_a_broken_instance() {
        let d = desired();
        let fresh = Row { manual: true, ..Row::default() };
        let (pass, steps, end) = drive(&d, fresh, |step, _| match step {
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            Step::Create => body(remote(7, &d.name, &d.tags, "tok-1")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::SearchByTag, Step::Create]);
        assert!(!reauthentication_held(&d, &pass.given, &pass.known));
        // Deleted out of band while a plan waits: created again from the current inputs.
        let lost = Row { resync_due: true, ..manual_changed(&d) };
        let (pass, steps, end) = drive(&d, lost, |step, _| match step {
            Step::Read => gone(),
            Step::SearchByTag => Ok(Answer::Found(vec![])),
            Step::Recreate => body(remote(8, &d.name, &d.tags, "tok-3")),
            other => panic!("unexpected {other:?}"),
        });
        end.unwrap();
        assert_eq!(steps, [Step::Read, Step::SearchByTag, Step::Recreate]);
        assert!(
            !reauthentication_held(&d, &pass.given, &pass.known),
            "the plan is gone with the old instance"
        );
        // Found by its tag after a crash: adopted, never re-authenticated for it.
        let crashed = Row { manual: true, tag_search: Some(vec![41]), ..Row::default() };
        let (_, steps, end) = drive(&d, crashed, |_, _| body(remote(41, &d.name, &d.tags, "tok")));
        end.unwrap();
        assert_eq!(steps, [Step::Adopt(41)]);
        // Reported broken (valid: false): its token no longer works, so the repair is not held;
        // it sends the current inputs (the only ones the operator has).
        let broken = Row { invalid: true, ..manual_changed(&d) };
        assert_eq!(row_step(&d, &broken), Step::ReAuthenticate);
        assert!(!row_held(&d, &broken));
    }

    #[test]
    fn manual_on_the_code_flow_asks_for_a_browser_only_once_approved() {
        let d = desired();
        let held = Row { auth: AuthMode::Code, reauth_without_browser: false, ..manual_changed(&d) };
        assert_eq!(row_step(&d, &held), Step::Done);
        assert!(row_held(&d, &held) && !row_awaiting(&d, &held));
        let approved = Row { approved: true, ..held };
        assert_eq!(row_step(&d, &approved), Step::Authorize);
        assert!(row_awaiting(&d, &approved));
    }

    #[test]
    fn a_requested_reauthentication_is_made_once_and_held_under_manual_like_a_change() {
        let d = desired();
        let requested = Row { reauthenticate: true, ..in_sync(&d) };
        let (pass, steps, end) =
            drive(&d, requested.clone(), |_, _| body(remote(7, &d.name, &d.tags, "tok-2")));
        end.unwrap();
        assert_eq!(steps, [Step::ReAuthenticate], "exactly one PUT");
        assert!(pass.authenticated && pass.known.reauthenticated);
        let manual = Row { manual: true, ..requested };
        assert_eq!(row_step(&d, &manual), Step::Done);
        assert!(row_held(&d, &manual));
        assert_eq!(row_step(&d, &Row { approved: true, ..manual.clone() }), Step::ReAuthenticate);
        let code = Row { auth: AuthMode::Code, ..Row { manual: false, ..manual } };
        assert_eq!(row_step(&d, &code), Step::Authorize, "the code flow asks a person");
        let missing = Row { reauthenticate: true, ..Row::default() };
        assert_eq!(row_step(&d, &Row { tag_search: Some(vec![]), ..missing }), Step::Create);
    }
}
