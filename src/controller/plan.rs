//! What to do next: a pure function from the desired state and what is known of the remote
//! instance to one platform step. The reconciler calls it repeatedly, executing each step and
//! recording its result, until it answers [`Step::Done`]. Every row of the reconcile table in the
//! design is a path through this function, tested below without any server.

use std::collections::BTreeSet;

use sha2::{Digest, Sha256};

/// The remote instance as the manifest wants it (no secret values: those only enter the
/// `auth_hash`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredRemote {
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
    /// The remote instance was read in this pass (or is due to be read: see `resync_due`).
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

/// The next step towards `desired`.
pub fn next_step(desired: &DesiredRemote, known: &Known) -> Step {
    let Some(_) = known.instance_id else {
        return match &known.tag_search {
            None => Step::SearchByTag,
            Some(found) => match found.first() {
                Some(id) => Step::Adopt(*id),
                None if known.lost => Step::Recreate,
                None => Step::Create,
            },
        };
    };
    if !known.read && (known.resync_due || !known.has_token) {
        return Step::Read;
    }
    if known.metadata_hash.as_deref() != Some(desired.metadata_hash.as_str()) {
        return Step::Patch;
    }
    if known.enabled != Some(desired.enabled) {
        return Step::SetEnabled(desired.enabled);
    }
    if known.reauthenticated {
        return Step::Done;
    }
    if known.auth_hash.as_deref() != Some(desired.auth_hash.as_str()) {
        return Step::ReAuthenticate;
    }
    if known.invalid && known.reauth_without_browser {
        return Step::ReAuthenticate;
    }
    Step::Done
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
}
