//! The OAuth 2.0 authorization-code flow on the operator's side: the `state` that binds a
//! provider's redirect to one ConnectorInstance's authorization request, the grant Secret through
//! which the callback hands a code to the reconcile, and the callback endpoint ([`callback`]).
//!
//! The `state` is `<payload>.<mac>`, both base64url: the payload names the instance (namespace,
//! name, UID), the generation it was asked for, the request id and its expiry; the MAC is
//! HMAC-SHA256 under a key only the operator knows. The state is not secret (it is part of the
//! URL published in status); the key is, and never leaves the process. A state is single use:
//! the callback accepts it only while the instance's status shows that same request, and the
//! reconcile clears the request once the code is used.

pub mod callback;

use std::collections::BTreeMap;
use std::path::Path;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use ring::hmac;
use ring::rand::{SecureRandom, SystemRandom};
use secrecy::SecretString;

use crate::api::{ANNOTATION_AUTHORIZATION_ID, LABEL_INSTANCE, LABEL_MANAGED_BY, MANAGED_BY};

/// Path of the callback endpoint.
pub const CALLBACK_PATH: &str = "/oauth/callback";
/// Key of the grant code in a grant Secret (and the default key of `codeSecretRef`).
pub const KEY_CODE: &str = "code";
/// Key of the provider's error code in a grant Secret (a denied authorization).
pub const KEY_ERROR: &str = "error";

/// How long after a rotation the previous key still signs: longer than a mounted Secret takes to
/// reach every pod (the kubelet's sync period and cache, about two minutes at most) plus the
/// reload interval, so that a process that signs (the operator) never publishes a URL that a
/// process that verifies (the callback Deployment) cannot check yet.
pub const SIGN_WITH_NEW_KEY_AFTER: std::time::Duration = std::time::Duration::from_secs(150);

/// The keys of `state`: a state signed with the current key or the one before it verifies, so
/// that a rotation of the key (a new Secret rendered, processes reloading at different moments)
/// does not break the authorization URLs published meanwhile. After a rotation the previous key
/// goes on signing for [`SIGN_WITH_NEW_KEY_AFTER`], until every process holds the new one.
/// Clones share the keys: a reload reaches every holder. Its `Debug` shows nothing of them.
#[derive(Clone)]
pub struct StateKey(std::sync::Arc<std::sync::RwLock<KeyRing>>);

struct KeyRing {
    current: hmac::Key,
    previous: Option<hmac::Key>,
    /// When the current key took over (`None`: it was the first, and signs at once).
    rotated_at: Option<std::time::Instant>,
    /// How long the previous key signs after a rotation.
    sign_delay: std::time::Duration,
    /// SHA-256 of the current key's bytes, to tell a changed file from the same one.
    digest: [u8; 32],
}

impl std::fmt::Debug for StateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateKey(..)")
    }
}

impl Default for StateKey {
    fn default() -> Self {
        Self::random()
    }
}

impl StateKey {
    /// A fresh random key (for a process without a configured one: its authorization URLs are
    /// replaced after a restart).
    pub fn random() -> Self {
        let mut bytes = [0u8; 32];
        // The system CSPRNG; should it ever fail, fall back to a key no one can guess either.
        if SystemRandom::new().fill(&mut bytes).is_err() {
            let fallback = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
            bytes.copy_from_slice(
                &ring::digest::digest(&ring::digest::SHA256, fallback.as_bytes()).as_ref()[..32],
            );
        }
        Self::from_bytes(&bytes)
    }

    /// A key from its bytes.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        StateKey(std::sync::Arc::new(std::sync::RwLock::new(KeyRing {
            current: hmac::Key::new(hmac::HMAC_SHA256, bytes),
            previous: None,
            rotated_at: None,
            sign_delay: SIGN_WITH_NEW_KEY_AFTER,
            digest: digest(bytes),
        })))
    }

    /// The same keys with another delay before a new key signs (tests).
    pub fn with_sign_delay(self, delay: std::time::Duration) -> Self {
        if let Ok(mut ring) = self.0.write() {
            ring.sign_delay = delay;
        }
        self
    }

    /// The key in a file (surrounding whitespace trimmed); at least 32 bytes.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        Ok(Self::from_bytes(&read_key_file(path)?))
    }

    /// Takes `bytes` as the new current key if they differ from it; the current one becomes the
    /// previous (the one before is forgotten) and signs for [`SIGN_WITH_NEW_KEY_AFTER`] more.
    /// Returns whether the key changed.
    pub fn rotate_to(&self, bytes: &[u8]) -> bool {
        let Ok(mut ring) = self.0.write() else { return false };
        let new_digest = digest(bytes);
        if new_digest == ring.digest {
            return false;
        }
        let current = std::mem::replace(&mut ring.current, hmac::Key::new(hmac::HMAC_SHA256, bytes));
        ring.previous = Some(current);
        ring.rotated_at = Some(std::time::Instant::now());
        ring.digest = new_digest;
        true
    }

    /// Reads the key file again and rotates to it if it changed (see [`StateKey::rotate_to`]).
    pub fn reload(&self, path: &Path) -> Result<bool, String> {
        Ok(self.rotate_to(&read_key_file(path)?))
    }

    fn sign(&self, payload: &[u8]) -> Vec<u8> {
        match self.0.read() {
            Ok(ring) => {
                let settling = ring.rotated_at.is_some_and(|at| at.elapsed() < ring.sign_delay);
                let key = match &ring.previous {
                    Some(previous) if settling => previous,
                    _ => &ring.current,
                };
                hmac::sign(key, payload).as_ref().to_vec()
            }
            Err(_) => Vec::new(),
        }
    }

    fn verify(&self, payload: &[u8], tag: &[u8]) -> bool {
        let Ok(ring) = self.0.read() else { return false };
        hmac::verify(&ring.current, payload, tag).is_ok()
            || ring.previous.as_ref().is_some_and(|previous| hmac::verify(previous, payload, tag).is_ok())
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// The bytes of a key file (surrounding whitespace trimmed); at least 32.
fn read_key_file(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path)
        .map_err(|e| format!("cannot read the OAuth state key file {}: {e}", path.display()))?;
    let text = bytes.trim_ascii();
    if text.len() < 32 {
        return Err(format!(
            "the OAuth state key file {} holds {} bytes; use at least 32 random bytes",
            path.display(),
            text.len()
        ));
    }
    Ok(text.to_vec())
}

/// A random id of 128 bits, hex.
pub fn random_id() -> String {
    let mut bytes = [0u8; 16];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes = fastrand::u128(..).to_be_bytes();
    }
    hex::encode(bytes)
}

/// What a `state` binds: one authorization request of one ConnectorInstance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuthorizationRequest {
    /// Namespace of the instance.
    pub namespace: String,
    /// Name of the instance.
    pub name: String,
    /// UID of the instance (a deleted and recreated instance of the same name is another one).
    pub uid: String,
    /// The generation the authorization was asked for.
    pub generation: i64,
    /// The request id (`status.authorization.id`).
    pub id: String,
    /// Expiry, seconds since the epoch.
    pub expires_unix: i64,
}

/// Why a `state` is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateError {
    /// Not a state this operator issued (malformed, or its MAC does not verify).
    Forged,
    /// Issued by this operator, but past its expiry.
    Expired,
}

impl AuthorizationRequest {
    fn payload(&self) -> String {
        format!(
            "v1\n{}\n{}\n{}\n{}\n{}\n{}",
            self.namespace, self.name, self.uid, self.generation, self.id, self.expires_unix
        )
    }

    /// The `state` of this request, signed with `key`.
    pub fn state(&self, key: &StateKey) -> String {
        let payload = self.payload();
        let tag = key.sign(payload.as_bytes());
        format!("{}.{}", URL_SAFE_NO_PAD.encode(payload), URL_SAFE_NO_PAD.encode(tag))
    }

    /// The request a `state` binds, if `key` signed it and it has not expired at `now_unix`.
    pub fn verify(state: &str, key: &StateKey, now_unix: i64) -> Result<Self, StateError> {
        let (payload, tag) = state.split_once('.').ok_or(StateError::Forged)?;
        let payload = URL_SAFE_NO_PAD.decode(payload).map_err(|_| StateError::Forged)?;
        let tag = URL_SAFE_NO_PAD.decode(tag).map_err(|_| StateError::Forged)?;
        if !key.verify(&payload, &tag) {
            return Err(StateError::Forged);
        }
        let payload = String::from_utf8(payload).map_err(|_| StateError::Forged)?;
        let fields: Vec<&str> = payload.split('\n').collect();
        let [version, namespace, name, uid, generation, id, expires] = fields.as_slice() else {
            return Err(StateError::Forged);
        };
        if *version != "v1" {
            return Err(StateError::Forged);
        }
        let request = AuthorizationRequest {
            namespace: namespace.to_string(),
            name: name.to_string(),
            uid: uid.to_string(),
            generation: generation.parse().map_err(|_| StateError::Forged)?,
            id: id.to_string(),
            expires_unix: expires.parse().map_err(|_| StateError::Forged)?,
        };
        if now_unix >= request.expires_unix {
            return Err(StateError::Expired);
        }
        Ok(request)
    }
}

/// Name of the grant Secret of the instance with this UID (always a valid Secret name).
pub fn grant_secret_name(uid: &str) -> String {
    format!("oauth-grant-{uid}")
}

/// What the provider's redirect brought.
#[derive(Clone, Debug)]
pub enum GrantResult {
    /// A grant code (single use).
    Code(SecretString),
    /// The provider's error: an RFC 6749 code such as `access_denied` (its free-text
    /// description is never taken: anyone holding the link can send one).
    Denied {
        /// OAuth error code.
        error: String,
    },
}

/// The grant Secret the callback writes for the reconcile: labelled and controlled by the
/// instance (so that its creation wakes the instance up), annotated with the request it answers.
pub fn grant_secret(
    request: &AuthorizationRequest,
    result: &GrantResult,
    owner: k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference,
) -> Secret {
    use secrecy::ExposeSecret;
    let mut data: BTreeMap<String, ByteString> = BTreeMap::new();
    match result {
        GrantResult::Code(code) => {
            data.insert(KEY_CODE.into(), ByteString(code.expose_secret().as_bytes().to_vec()));
        }
        GrantResult::Denied { error } => {
            data.insert(KEY_ERROR.into(), ByteString(error.as_bytes().to_vec()));
        }
    }
    let mut secret = Secret { type_: Some("Opaque".into()), data: Some(data), ..Secret::default() };
    secret.metadata.name = Some(grant_secret_name(&request.uid));
    secret.metadata.namespace = Some(request.namespace.clone());
    secret.metadata.labels = Some(
        [
            (LABEL_MANAGED_BY.to_string(), MANAGED_BY.to_string()),
            (LABEL_INSTANCE.to_string(), crate::api::instance_label(&request.name)),
        ]
        .into(),
    );
    secret.metadata.annotations =
        Some([(ANNOTATION_AUTHORIZATION_ID.to_string(), request.id.clone())].into());
    secret.metadata.owner_references = Some(vec![owner]);
    secret
}

/// Reads a grant Secret: the request id it answers and what the redirect brought. `None` when it
/// holds neither a code nor an error.
pub fn read_grant_secret(secret: &Secret) -> Option<(String, GrantResult)> {
    let id = secret.metadata.annotations.as_ref()?.get(ANNOTATION_AUTHORIZATION_ID)?.clone();
    let data = secret.data.as_ref()?;
    let text =
        |key: &str| data.get(key).and_then(|b| String::from_utf8(b.0.clone()).ok()).filter(|t| !t.is_empty());
    if let Some(code) = text(KEY_CODE) {
        return Some((id, GrantResult::Code(SecretString::from(code))));
    }
    // Anyone who may create Secrets in the namespace could write one: only an RFC 6749 error
    // code is taken from it, never free text.
    let error = text(KEY_ERROR)?;
    let error = callback::oauth_error_code(&error).to_string();
    Some((id, GrantResult::Denied { error }))
}

/// sha256 of a grant code, hex, first 16 digits (to recognise a code already used).
pub fn code_digest(code: &SecretString) -> String {
    crate::api::token_sha256(code)[..16].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn request() -> AuthorizationRequest {
        AuthorizationRequest {
            namespace: "team-a".into(),
            name: "crm".into(),
            uid: "0b7e-uid".into(),
            generation: 3,
            id: random_id(),
            expires_unix: 2_000,
        }
    }

    #[test]
    fn a_state_verifies_under_its_key_only_and_until_it_expires() {
        let key = StateKey::random();
        let request = request();
        let state = request.state(&key);
        assert!(state.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b)), "URL-safe: {state}");
        assert_eq!(AuthorizationRequest::verify(&state, &key, 1_999), Ok(request.clone()));
        assert_eq!(AuthorizationRequest::verify(&state, &key, 2_000), Err(StateError::Expired));
        assert_eq!(AuthorizationRequest::verify(&state, &StateKey::random(), 1_000), Err(StateError::Forged));
    }

    #[test]
    fn tampered_or_garbage_states_are_forged() {
        let key = StateKey::random();
        let state = request().state(&key);
        let (payload, tag) = state.split_once('.').unwrap();
        // Another instance's name under the same MAC.
        let other = AuthorizationRequest { name: "other".into(), ..request() };
        let other_payload = other.state(&key).split_once('.').unwrap().0.to_string();
        let cases = [
            format!("{other_payload}.{tag}"),
            format!("{payload}.{}", URL_SAFE_NO_PAD.encode([0u8; 32])),
            payload.to_string(),
            String::new(),
            "a.b.c".into(),
            format!("{payload}.{tag}x"),
        ];
        for forged in cases {
            assert_eq!(AuthorizationRequest::verify(&forged, &key, 0), Err(StateError::Forged), "{forged}");
        }
    }

    #[test]
    fn ids_are_random_and_keys_never_show() {
        assert_ne!(random_id(), random_id());
        assert_eq!(random_id().len(), 32);
        assert_eq!(
            format!("{:?}", StateKey::from_bytes(b"0123456789abcdef0123456789abcdef")),
            "StateKey(..)"
        );
    }

    #[test]
    fn grant_secrets_round_trip_and_carry_the_request_id() {
        let request = request();
        let owner = k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference {
            api_version: "openconnectors.io/v1alpha1".into(),
            kind: "ConnectorInstance".into(),
            name: "crm".into(),
            uid: request.uid.clone(),
            controller: Some(true),
            ..Default::default()
        };
        let secret =
            grant_secret(&request, &GrantResult::Code(SecretString::from("the-code")), owner.clone());
        assert_eq!(secret.metadata.name.as_deref(), Some("oauth-grant-0b7e-uid"));
        match read_grant_secret(&secret) {
            Some((id, GrantResult::Code(code))) => {
                assert_eq!(id, request.id);
                assert_eq!(code_digest(&code), code_digest(&SecretString::from("the-code")));
            }
            other => panic!("{other:?}"),
        }
        let denied = GrantResult::Denied { error: "access_denied".into() };
        let secret = grant_secret(&request, &denied, owner);
        assert!(
            matches!(read_grant_secret(&secret), Some((_, GrantResult::Denied { error, .. })) if error == "access_denied")
        );
    }

    #[test]
    fn a_rotated_key_still_verifies_the_states_of_the_one_before_and_no_older() {
        let request = request();
        let key = StateKey::from_bytes(b"key-a-0123456789abcdef0123456789").with_sign_delay(Duration::ZERO);
        let holder = key.clone();
        let signed_a = request.state(&key);
        assert!(!key.rotate_to(b"key-a-0123456789abcdef0123456789"), "the same key is no rotation");
        assert!(key.rotate_to(b"key-b-0123456789abcdef0123456789"));
        let signed_b = request.state(&holder);
        assert_eq!(
            AuthorizationRequest::verify(&signed_a, &holder, 0),
            Ok(request.clone()),
            "the previous key verifies"
        );
        assert_eq!(
            AuthorizationRequest::verify(&signed_b, &key, 0),
            Ok(request.clone()),
            "clones share the keys"
        );
        assert!(key.rotate_to(b"key-c-0123456789abcdef0123456789"));
        assert_eq!(
            AuthorizationRequest::verify(&signed_a, &key, 0),
            Err(StateError::Forged),
            "two back: refused"
        );
        assert_eq!(AuthorizationRequest::verify(&signed_b, &key, 0), Ok(request.clone()));
    }

    #[test]
    fn after_a_rotation_the_previous_key_signs_until_every_process_can_hold_the_new_one() {
        let request = request();
        let key = StateKey::from_bytes(b"key-a-0123456789abcdef0123456789");
        let only_a = StateKey::from_bytes(b"key-a-0123456789abcdef0123456789");
        let only_b = StateKey::from_bytes(b"key-b-0123456789abcdef0123456789");
        assert!(key.rotate_to(b"key-b-0123456789abcdef0123456789"));
        // A verifier that has not reloaded yet (it knows only A) checks what is signed now.
        let settling = request.state(&key);
        assert_eq!(AuthorizationRequest::verify(&settling, &only_a, 0), Ok(request.clone()));
        assert_eq!(AuthorizationRequest::verify(&settling, &key, 0), Ok(request.clone()));
        // Once the delay has passed, the new key signs.
        let key = key.with_sign_delay(Duration::ZERO);
        let settled = request.state(&key);
        assert_eq!(AuthorizationRequest::verify(&settled, &only_b, 0), Ok(request.clone()));
        assert_eq!(AuthorizationRequest::verify(&settled, &only_a, 0), Err(StateError::Forged));
        // The first key of a process signs at once.
        let first = request.state(&only_b);
        assert_eq!(AuthorizationRequest::verify(&first, &only_b, 0), Ok(request.clone()));
    }

    #[test]
    fn a_key_file_is_reloaded_when_it_changes() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "first-key-0123456789abcdef0123456789\n").unwrap();
        let request = request();
        let key = StateKey::from_file(&path).unwrap();
        let signed = request.state(&key);
        assert_eq!(key.reload(&path), Ok(false), "unchanged");
        std::fs::write(&path, "second-key-0123456789abcdef0123456789").unwrap();
        assert_eq!(key.reload(&path), Ok(true));
        assert_eq!(AuthorizationRequest::verify(&signed, &key, 0), Ok(request.clone()));
        std::fs::write(&path, "short").unwrap();
        assert!(key.reload(&path).unwrap_err().contains("at least 32"), "a bad file keeps the keys");
        assert_eq!(AuthorizationRequest::verify(&signed, &key, 0), Ok(request.clone()));
    }
}
