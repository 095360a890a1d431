//! The custom resources of `openconnectors.io/v1alpha1` and the names the operator shares with
//! its users (finalizer, annotations, labels, field manager).

mod conditions;
pub mod crd;
mod instance;
mod platform;

pub use conditions::*;
pub use instance::*;
pub use platform::*;

use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};

/// API group of every resource of this operator.
pub const GROUP: &str = "openconnectors.io";
/// API version served.
pub const VERSION: &str = "v1alpha1";
/// The one field manager of every server-side apply the operator makes.
pub const FIELD_MANAGER: &str = "openconnectors.io/connector-operator";
/// Finalizer that guards the deletion of the remote instance.
pub const FINALIZER: &str = "openconnectors.io/remote-instance";

/// Annotation: `"true"` stops all platform calls for the instance (deletion is still honoured).
pub const ANNOTATION_PAUSED: &str = "openconnectors.io/paused";
/// Annotation: any new value asks for a reconcile now; echoed in `status.lastHandledReconcileAt`.
pub const ANNOTATION_RECONCILE_REQUESTED_AT: &str = "openconnectors.io/reconcile-requested-at";
/// Annotation: any new value asks for a test of the token now (the call a workload makes);
/// echoed in `status.lastHandledTestAt`, never removed by the operator.
pub const ANNOTATION_TEST_REQUESTED_AT: &str = "openconnectors.io/test-requested-at";
/// Annotation: any new value asks for a re-authentication of the remote instance now, with
/// nothing changed (a token the provider revoked, a security rotation): one re-authenticating
/// `PUT` (or, on the OAuth code flow, a new authorization URL), held for an approval under
/// `spec.reauthentication: Manual`. Echoed in `status.lastHandledReauthenticateAt` once carried
/// out; never removed by the operator.
pub const ANNOTATION_REAUTHENTICATE_REQUESTED_AT: &str = "openconnectors.io/reauthenticate-requested-at";
/// Annotation: `"true"` releases the finalizer when the remote instance cannot be deleted.
pub const ANNOTATION_ABANDON: &str = "openconnectors.io/abandon";
/// Annotation: approves the planned action whose `status.plannedAction.approval` it equals
/// (`spec.reauthentication: Manual`); never removed by the operator.
pub const ANNOTATION_APPROVE: &str = "openconnectors.io/approve";

/// Label on every Secret the operator writes.
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "connector-operator";
/// Label naming the ConnectorInstance a token Secret belongs to.
pub const LABEL_INSTANCE: &str = "openconnectors.io/connector-instance";
/// Annotation on the token Secret: sha256 (hex) of the token, so consumers can see a rotation.
pub const ANNOTATION_TOKEN_SHA256: &str = "openconnectors.io/token-sha256";
/// Annotation on the token Secret: SHA-256 (not keyed) of the authentication inputs last applied,
/// secret values included. It lives on the token Secret, which only those who may read the token
/// can read, and never in status.
pub const ANNOTATION_APPLIED_AUTH_HASH: &str = "openconnectors.io/applied-auth-hash";
/// Annotation on the token Secret: sha256 (hex, first 16 digits) of the last OAuth grant code
/// used, so that a code from `spec.oauth.codeSecretRef` is used once.
pub const ANNOTATION_GRANT_SHA256: &str = "openconnectors.io/grant-sha256";
/// Annotation on the token Secret: sha256 (hex) of what workloads read from it (type, keys and
/// values); the same digest goes on the pod template of `rolloutRestart` workloads.
pub const ANNOTATION_CONTENT_SHA256: &str = "openconnectors.io/content-sha256";
/// Annotation on the token Secret: digest of the `spec.tokenSecret.template` it was rendered from.
pub const ANNOTATION_TEMPLATE_SHA256: &str = "openconnectors.io/template-sha256";
/// Annotation on the token Secret: the label and annotation keys its template added (JSON), so
/// that those the template drops are removed, and no one else's.
pub const ANNOTATION_TEMPLATE_KEYS: &str = "openconnectors.io/template-metadata-keys";
/// Pod template annotation of `rolloutRestart` workloads: the token Secret's content digest; a
/// new value rolls the workload.
pub const POD_ANNOTATION_TOKEN_SHA256: &str = "openconnectors.io/token-sha256";
/// Annotation on the token Secret: JSON object of the configuration keys last applied, each with
/// 16 hex digits of the sha256 of (instance UID, key, value), so that a planned re-authentication
/// can name the keys that changed. Like the auth hash, never in status.
pub const ANNOTATION_APPLIED_INPUTS: &str = "openconnectors.io/applied-inputs";
/// Annotation of a grant Secret written by the OAuth callback: the authorization it answers.
pub const ANNOTATION_AUTHORIZATION_ID: &str = "openconnectors.io/authorization-id";

/// Prefix of the ownership tag every remote instance carries; the CR's UID follows.
pub const OWNERSHIP_TAG_PREFIX: &str = "k8s-uid-";

/// The ownership tag of the remote instance that belongs to the CR with this UID.
pub fn ownership_tag(uid: &str) -> String {
    format!("{OWNERSHIP_TAG_PREFIX}{uid}")
}

/// Prefix of the reference tag: 32 hex digits of the sha256 of the cluster id, namespace and name
/// follow (see [`reference_tag`]). It names the resource by what survives its re-creation, so that
/// a manifest applied again (restored from Git or a backup, a new UID) finds its remote instance.
pub const REFERENCE_TAG_PREFIX: &str = "k8s-ref-";

/// Prefix of the cluster tag: the cluster id follows (see [`cluster_tag`]).
pub const CLUSTER_TAG_PREFIX: &str = "k8s-cluster-";

/// The prefixes of the tags the operator sets: `spec.tags` may not use them.
pub const RESERVED_TAG_PREFIXES: [&str; 3] = [OWNERSHIP_TAG_PREFIX, REFERENCE_TAG_PREFIX, CLUSTER_TAG_PREFIX];

/// The reference tag of the resource `namespace`/`name` in the cluster `cluster_id`.
pub fn reference_tag(cluster_id: &str, namespace: &str, name: &str) -> String {
    let mut hasher = Sha256::new();
    for part in [cluster_id, namespace, name] {
        hasher.update((part.len() as u64).to_be_bytes());
        hasher.update(part.as_bytes());
    }
    format!("{REFERENCE_TAG_PREFIX}{}", &hex::encode(hasher.finalize())[..32])
}

/// The tag every remote instance created from the cluster `cluster_id` carries: one search by it
/// lists them all.
pub fn cluster_tag(cluster_id: &str) -> String {
    format!("{CLUSTER_TAG_PREFIX}{cluster_id}")
}

/// Checks a `--cluster-id`: 1 to 63 letters, digits, `-`, `.` or `_` (it goes into a tag as it
/// is; the `kube-system` namespace UID fits).
pub fn check_cluster_id(id: &str) -> Result<(), String> {
    let fits = (1..=63).contains(&id.len())
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'));
    if fits {
        Ok(())
    } else {
        Err(format!(
            "cluster id `{}` must be 1 to 63 letters, digits, `-`, `.` or `_`",
            id.chars().take(80).collect::<String>()
        ))
    }
}

/// The value of [`LABEL_INSTANCE`] (token Secrets, grant Secrets): the instance name, or — when it is longer than a label value
/// may be (63) — its first 50 characters, `-` and 12 hex digits of its sha256.
pub fn instance_label(name: &str) -> String {
    if name.len() <= 63 {
        return name.to_string();
    }
    let digest = hex::encode(Sha256::digest(name.as_bytes()));
    let head: String = name.chars().take(50).collect();
    format!("{}-{}", head.trim_end_matches(['-', '.']), &digest[..12])
}

/// sha256 of a secret value (a token, a grant code), hex: what status, annotations and logs may
/// show of it.
pub fn token_sha256(token: &SecretString) -> String {
    hex::encode(Sha256::digest(token.expose_secret().as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_ids_fit_a_tag_and_the_kube_system_uid_is_one() {
        for good in ["0b7e6a2c-1111-4222-8333-944455556666", "prod.eu-1", "a", &"x".repeat(63)] {
            assert!(check_cluster_id(good).is_ok(), "{good}");
            assert!(cluster_tag(good).starts_with(CLUSTER_TAG_PREFIX));
        }
        for bad in ["", "two words", "ä", "a/b", &"x".repeat(64)] {
            let err = check_cluster_id(bad).unwrap_err();
            assert!(err.contains("1 to 63"), "{bad}: {err}");
        }
    }
}
