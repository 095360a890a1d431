//! The OAuth inputs of a pass on the authorization-code flow: which grant code is at hand (from
//! the callback's grant Secret, or from `spec.oauth.codeSecretRef`), whether the published
//! authorization is still good, and the new authorization request when one is needed. Also the
//! messages that tell a person what to do.

use std::time::Duration;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use secrecy::SecretString;

use super::Context;
use super::context::Settings;
use super::error::Error;
use super::inputs::{self, secret_text};
use crate::api::{
    ANNOTATION_REAUTHENTICATE_REQUESTED_AT, AuthorizationStatus, ConnectorInstance, ConnectorInstanceStatus,
};
use crate::oauth::{self, AuthorizationRequest, GrantResult};

/// A published authorization is replaced this long before it expires (so that no one opens a
/// URL that stops working while they log in at the provider).
pub const RENEW_BEFORE: Duration = Duration::from_secs(120);

/// Where the grant code at hand comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GrantSource {
    /// The callback's grant Secret (deleted once used).
    Callback,
    /// `spec.oauth.codeSecretRef` (recognised by its digest once used).
    CodeSecret,
}

/// The OAuth inputs of a pass.
#[derive(Debug, Default)]
pub struct Grants {
    /// A grant code not used before, and where it comes from.
    pub code: Option<(SecretString, String, GrantSource)>,
    /// The provider denied the published authorization: its error, in words.
    pub denied: Option<String>,
    /// The callback's grant Secret exists (it is deleted once used, stale or denied).
    pub callback_secret: Option<String>,
    /// `status.authorization` is still good.
    pub pending: bool,
}

/// Gathers the OAuth inputs of `ci` on the authorization-code flow. `used` is the digest of the
/// grant code last used (token Secret annotation) and the digests remembered as used.
pub async fn gather(
    ctx: &Context,
    ci: &ConnectorInstance,
    status: &ConnectorInstanceStatus,
    used: &[String],
    now: &Timestamp,
) -> Result<Grants, Error> {
    let namespace = ci.namespace().unwrap_or_default();
    let uid = ci.uid().unwrap_or_default();
    let mut grants = Grants::default();
    let current = status.authorization.as_ref();
    let name = oauth::grant_secret_name(&uid);
    if let Some(secret) = ctx.cached_token_secret(&namespace, &name).flatten() {
        grants.callback_secret = Some(name);
        match oauth::read_grant_secret(&secret) {
            Some((id, result)) if current.is_some_and(|c| c.id == id) => match result {
                GrantResult::Code(code) => {
                    let digest = oauth::code_digest(&code);
                    grants.code = Some((code, digest, GrantSource::Callback));
                }
                GrantResult::Denied { error } => grants.denied = Some(error),
            },
            _ => {}
        }
    }
    let reference = ci.spec.oauth.as_ref().and_then(|o| o.code_secret_ref.as_ref());
    if grants.code.is_none()
        && let Some(reference) = reference
        && let Some(secret) = inputs::get_secret(ctx, &namespace, &reference.name).await?
        && secret_has(&secret, &reference.key)
    {
        let code = secret_text(&secret, &reference.key, "spec.oauth.codeSecretRef")?;
        let digest = oauth::code_digest(&code);
        if !used.contains(&digest) {
            grants.code = Some((code, digest, GrantSource::CodeSecret));
        }
    }
    grants.pending = grants.denied.is_none() && current.is_some_and(|c| is_good(&ctx.settings, ci, c, now));
    Ok(grants)
}

fn secret_has(secret: &Secret, key: &str) -> bool {
    secret.data.as_ref().and_then(|d| d.get(key)).is_some_and(|v| !v.0.iter().all(u8::is_ascii_whitespace))
}

/// Whether a published authorization still holds: asked for this generation, not about to
/// expire, and signed with the current key (a key that changed, e.g. a random one after a
/// restart, makes every published URL useless).
fn is_good(
    settings: &Settings,
    ci: &ConnectorInstance,
    published: &AuthorizationStatus,
    now: &Timestamp,
) -> bool {
    let expires = published.expires_at.0.as_second();
    if Some(published.generation) != ci.metadata.generation
        || now.as_second() + RENEW_BEFORE.as_secs() as i64 >= expires
    {
        return false;
    }
    let request = request_for(ci, &published.id, expires);
    published.url.contains(&request.state(&settings.oauth_state_key))
}

fn request_for(ci: &ConnectorInstance, id: &str, expires_unix: i64) -> AuthorizationRequest {
    AuthorizationRequest {
        namespace: ci.namespace().unwrap_or_default(),
        name: ci.name_any(),
        uid: ci.uid().unwrap_or_default(),
        generation: ci.metadata.generation.unwrap_or_default(),
        id: id.to_string(),
        expires_unix,
    }
}

/// A new authorization request of `ci`: its status (without the URL yet) and its `state`.
pub fn new_request(
    settings: &Settings,
    ci: &ConnectorInstance,
    callback_url: &str,
    now: &Timestamp,
) -> Result<(AuthorizationStatus, String), Error> {
    let ttl = settings.oauth_authorization_ttl.max(RENEW_BEFORE * 2);
    let expires = now.as_second() + ttl.as_secs() as i64;
    let id = oauth::random_id();
    let state = request_for(ci, &id, expires).state(&settings.oauth_state_key);
    let expires_at = Timestamp::from_second(expires)
        .map_err(|_| Error::Internal("an authorization expiry out of range"))?;
    let published = AuthorizationStatus {
        url: String::new(),
        expires_at: Time(expires_at),
        callback_url: callback_url.to_string(),
        id,
        generation: ci.metadata.generation.unwrap_or_default(),
    };
    Ok((published, state))
}

/// When to look again at an instance awaiting `published`: shortly before it expires.
pub fn recheck(published: Option<&AuthorizationStatus>, fallback: Duration, now: &Timestamp) -> Duration {
    let Some(published) = published else { return fallback };
    let left = published.expires_at.0.as_second() - now.as_second() - RENEW_BEFORE.as_secs() as i64;
    Duration::from_secs(left.max(1) as u64)
}

/// Why an instance waits for a person, for its condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Wait {
    /// No remote instance yet.
    Create,
    /// Its inputs changed.
    ReAuthenticate,
    /// The platform reports its authorization as broken.
    Expired,
}

/// The reasons of an instance that waits for a person (see [`awaiting`]).
pub const AWAITING_REASONS: [&str; 4] =
    ["AwaitingAuthorization", "AuthorizationDenied", "AuthorizationFailed", "AuthorizationExpired"];

/// What a pass that ends waiting for a person knows.
#[derive(Debug, Clone, Copy)]
pub struct WaitFacts<'a> {
    /// The remote instance, if there is one.
    pub instance_id: Option<i64>,
    /// The platform reports its authorization as broken.
    pub invalid: bool,
    /// The authorization request in force (new in this pass, or the one the status shows).
    pub published: Option<&'a AuthorizationStatus>,
    /// The provider denied the last request: its error, in words.
    pub denied: Option<&'a str>,
    /// The platform refused the grant code in this pass: its message.
    pub refused: Option<&'a str>,
    /// A re-authentication was requested by annotation (nothing changed).
    pub requested: bool,
}

/// The condition reason and message of an instance that waits for a person. While it is still
/// the wait the status shows (same request, nothing new refused or denied), it is said in the
/// same words, so that nothing is rewritten.
pub fn waiting(
    ci: &ConnectorInstance,
    old: &ConnectorInstanceStatus,
    facts: &WaitFacts<'_>,
) -> (&'static str, String) {
    let same_request = old.authorization.as_ref().map(|a| &a.id) == facts.published.map(|a| &a.id);
    let fresh = facts.refused.is_some() || facts.denied.is_some();
    let shown = crate::api::find_condition(&old.conditions, crate::api::READY).and_then(|ready| {
        AWAITING_REASONS.iter().find(|r| **r == ready.reason).map(|r| (*r, ready.message.clone()))
    });
    match shown {
        Some(shown) if same_request && !fresh => shown,
        _ => awaiting(ci, facts),
    }
}

/// The condition reason and message of an instance that waits for a person.
fn awaiting(ci: &ConnectorInstance, facts: &WaitFacts<'_>) -> (&'static str, String) {
    let WaitFacts { instance_id, invalid, published, denied, refused, requested } = *facts;
    let wait = match (instance_id, invalid) {
        (None, _) => Wait::Create,
        (Some(_), true) => Wait::Expired,
        (Some(_), false) => Wait::ReAuthenticate,
    };
    let open = match published {
        Some(p) => format!(
            "open the URL in status.authorization.url in a browser and approve the access at the provider before {} (kubectl describe shows it)",
            p.expires_at.0
        ),
        None => "an authorization URL is published in status.authorization.url once the platform can be asked for one".into(),
    };
    let by_hand = ci
        .spec
        .oauth
        .as_ref()
        .and_then(|o| o.code_secret_ref.as_ref())
        .map(|r| {
            format!(
                ", or put a new grant code in Secret `{}` key `{}` (each code is used once)",
                r.name, r.key
            )
        })
        .unwrap_or_default();
    let remote = instance_id.map_or("the remote instance".to_string(), |id| format!("remote instance {id}"));
    let (reason, what) = match (denied, refused, wait) {
        (Some(denied), _, _) => (
            "AuthorizationDenied",
            format!("the provider denied the authorization ({denied}); to try again, "),
        ),
        (None, Some(refused), _) => (
            "AuthorizationFailed",
            format!("the platform refused the grant code ({refused}); to authorize again, "),
        ),
        (None, None, Wait::Create) => (
            "AwaitingAuthorization",
            format!("connector `{}` authenticates with OAuth: to create the instance, ", ci.spec.connector),
        ),
        (None, None, Wait::ReAuthenticate) if requested => (
            "AwaitingAuthorization",
            format!(
                "the requested re-authentication (annotation {ANNOTATION_REAUTHENTICATE_REQUESTED_AT}) needs a new OAuth authorization of {remote} (it keeps its current token until then): "
            ),
        ),
        (None, None, Wait::ReAuthenticate) => (
            "AwaitingAuthorization",
            format!(
                "the changed inputs need a new OAuth authorization of {remote} (it keeps its current token until then): "
            ),
        ),
        (None, None, Wait::Expired) => (
            "AuthorizationExpired",
            format!(
                "the platform reports the authorization of {remote} as broken (its token refreshes failed, and the platform disables such an instance): to renew it, "
            ),
        ),
    };
    (reason, format!("{what}{open}{by_hand}"))
}

/// Whether the callback URL of an OAuth instance is known, else the error that says where to
/// set one.
pub fn require_callback_url<'a>(
    ci: &'a ConnectorInstance,
    default: Option<&'a str>,
) -> Result<&'a str, Error> {
    inputs::callback_url(&ci.spec, default).ok_or_else(|| {
        Error::invalid(
            "OAuthCallbackUrlMissing",
            "spec.oauth.callbackUrl is not set and the operator has no callback URL (--oauth-callback-url, chart value oauth.callback.url); set one of them to the redirect URI registered at the provider",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::set_condition;

    fn published(id: &str) -> AuthorizationStatus {
        AuthorizationStatus {
            url: format!("https://idp/authorize?state={id}"),
            expires_at: Time(Timestamp::from_second(7200).unwrap()),
            callback_url: "https://cb".into(),
            id: id.into(),
            generation: 1,
        }
    }

    #[test]
    fn a_wait_keeps_its_words_until_something_new_happens() {
        let ci: ConnectorInstance = serde_json::from_value(serde_json::json!({
            "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorInstance",
            "metadata": { "name": "crm", "namespace": "ns", "uid": "u", "generation": 1 },
            "spec": { "platformRef": { "name": "p" }, "connector": "sfdc",
                      "oauth": { "clientId": "c", "clientSecretRef": { "name": "s", "key": "k" } } },
        }))
        .unwrap();
        let first = published("r-1");
        let facts = WaitFacts {
            instance_id: None,
            invalid: false,
            published: Some(&first),
            denied: None,
            refused: None,
            requested: false,
        };
        let (reason, message) = waiting(&ci, &ConnectorInstanceStatus::default(), &facts);
        assert_eq!(reason, "AwaitingAuthorization");
        assert!(message.contains("to create the instance"), "{message}");
        // The status shows that wait in words of an earlier day: kept as they are.
        let mut old =
            ConnectorInstanceStatus { authorization: Some(Box::new(first.clone())), ..Default::default() };
        let now = Time(Timestamp::from_second(1).unwrap());
        set_condition(&mut old.conditions, crate::api::READY, false, reason, "earlier words", Some(1), &now);
        assert_eq!(waiting(&ci, &old, &facts), (reason, "earlier words".to_string()));
        // A denial, a refused code, or a new request: new words.
        let denied = WaitFacts { denied: Some("access_denied"), ..facts };
        assert_eq!(waiting(&ci, &old, &denied).0, "AuthorizationDenied");
        let refused = WaitFacts { refused: Some("invalid_grant"), ..facts };
        assert_eq!(waiting(&ci, &old, &refused).0, "AuthorizationFailed");
        let second = published("r-2");
        let renewed = WaitFacts { published: Some(&second), ..facts };
        assert_ne!(waiting(&ci, &old, &renewed).1, "earlier words");
        let expired = WaitFacts { instance_id: Some(7), invalid: true, published: Some(&second), ..facts };
        let (reason, message) = waiting(&ci, &old, &expired);
        assert_eq!(reason, "AuthorizationExpired");
        assert!(message.contains("remote instance 7"), "{message}");
    }
}
