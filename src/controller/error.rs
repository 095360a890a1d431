//! Errors of a reconcile, classified the way the status and the retry policy need them.

use std::time::Duration;

use crate::platform::PlatformError;

/// Why a reconcile could not finish.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The user must change something (the manifest, a referenced object); retrying alone will
    /// not help. `reason` is the condition reason.
    #[error("{message}")]
    Invalid {
        /// Condition reason, PascalCase.
        reason: &'static str,
        /// What is wrong and what to do, without secret values.
        message: String,
    },
    /// Nothing is wrong, but a person must act (authorize the connector in a browser, or put a
    /// new grant code or refresh token in place). `retry` is when to look again by itself.
    #[error("{message}")]
    Awaiting {
        /// Condition reason, PascalCase.
        reason: &'static str,
        /// What to do, without secret values.
        message: String,
        /// When to look again (the published authorization's expiry).
        retry: Duration,
    },
    /// The user or an administrator must change something that may be outside Kubernetes'
    /// view (RBAC); looked at again after a while.
    #[error("{message}")]
    Recheck {
        /// Condition reason, PascalCase.
        reason: &'static str,
        /// What is wrong and what to do, without secret values.
        message: String,
    },
    /// A platform call failed.
    #[error("{0}")]
    Platform(#[from] PlatformError),
    /// A Kubernetes API call failed.
    #[error("Kubernetes API: {}", kube_message(.0))]
    Kube(#[from] kube::Error),
    /// The operator itself failed (a reconcile task that panicked); retried like a transient error.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// The pass stops before a search by tag, writing nothing, and looks again `after` this: the
    /// resource has the finalizer another process added and records no remote instance, so that
    /// process may still have its create in flight (see `execute::handover_wait`).
    #[error("a create another process may have under way is waited for ({after:?})")]
    Deferred {
        /// How long is left to wait.
        after: Duration,
    },
}

/// The API server's own message for an API error (not the whole status object), else the error.
fn kube_message(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("{} (HTTP {})", status.message, status.code),
        other => other.to_string(),
    }
}

/// How an error is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    /// `Stalled=True`; wait for a change of the resource or of what it references.
    Stalled,
    /// `Stalled=True`, and look again after a while: the cause may be fixed outside Kubernetes
    /// (credentials rotated on the platform).
    StalledRecheck,
    /// `Reconciling=True`; retry with backoff (honouring `retry_after`).
    Transient,
    /// `Reconciling=True`, `Ready=False`: waiting for a person; look again at the given time.
    Waiting,
}

impl Error {
    /// The same error with `secrets` redacted from the words a platform or provider put in it
    /// (see [`PlatformError::redact`]); the operator's own messages never carry secret values.
    pub fn redact(self, secrets: &[&str]) -> Self {
        match self {
            Error::Platform(err) => Error::Platform(err.redact(secrets)),
            other => other,
        }
    }

    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(reason: &'static str, message: impl Into<String>) -> Self {
        Self::Invalid { reason, message: message.into() }
    }

    /// How to handle this error.
    pub fn class(&self) -> Class {
        match self {
            Self::Invalid { .. } => Class::Stalled,
            Self::Awaiting { .. } => Class::Waiting,
            Self::Recheck { .. } => Class::StalledRecheck,
            Self::Platform(err) => match err {
                PlatformError::InvalidInput { .. } | PlatformError::NotFound { .. } => Class::Stalled,
                PlatformError::Unauthorized { .. } | PlatformError::Forbidden { .. } => Class::StalledRecheck,
                PlatformError::RateLimited { .. }
                | PlatformError::Transient { .. }
                | PlatformError::Protocol { .. }
                | PlatformError::Withdrawn => Class::Transient,
            },
            Self::Kube(_) | Self::Internal(_) => Class::Transient,
            Self::Deferred { .. } => Class::Waiting,
        }
    }

    /// Condition reason.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Invalid { reason, .. } | Self::Awaiting { reason, .. } | Self::Recheck { reason, .. } => {
                reason
            }
            Self::Platform(err) => match err {
                PlatformError::InvalidInput { status: 0, .. } => "InvalidPlatformRequest",
                PlatformError::InvalidInput { .. } => "PlatformRejected",
                PlatformError::NotFound { .. } => "PlatformNotFound",
                PlatformError::Unauthorized { .. } => "Unauthorized",
                PlatformError::Forbidden { .. } => "Forbidden",
                PlatformError::RateLimited { .. } => "RateLimited",
                PlatformError::Transient { .. } => "PlatformUnavailable",
                PlatformError::Protocol { .. } => "PlatformProtocolError",
                PlatformError::Withdrawn => "HandedOver",
            },
            Self::Kube(_) => "KubernetesError",
            Self::Internal(_) => "InternalError",
            Self::Deferred { .. } => "CreateMayBeUnderWay",
        }
    }

    /// Whether a Kubernetes write failed its precondition (HTTP 409 `Conflict`, not
    /// `AlreadyExists`): for the finalizer patch's resourceVersion, the pass started from a copy
    /// of the resource older than the API server's.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::Kube(kube::Error::Api(status)) if status.code == 409 && status.reason == "Conflict")
    }

    /// The wait the platform asked for, if any.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Platform(err) => err.retry_after(),
            Self::Deferred { after } => Some(*after),
            _ => None,
        }
    }

    /// A short, fixed label for metrics.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Self::Invalid { .. } | Self::Recheck { .. } => "invalid",
            Self::Awaiting { .. } => "awaiting",
            Self::Platform(err) => err.metric_label(),
            Self::Kube(_) => "kubernetes",
            Self::Internal(_) => "internal",
            Self::Deferred { .. } => "deferred",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, reason: &str) -> Error {
        Error::Kube(kube::Error::Api(kube::core::Status::failure("refused", reason).with_code(code).boxed()))
    }

    #[test]
    fn only_a_failed_precondition_is_a_conflict() {
        let cases = [
            (api(409, "Conflict"), true, "the resourceVersion precondition failed"),
            (api(409, "AlreadyExists"), false, "a create of a name taken"),
            (api(404, "NotFound"), false, "gone"),
            (api(422, "Invalid"), false, "refused by validation"),
            (Error::Internal("x"), false, "not the API server's answer"),
            (Error::Deferred { after: std::time::Duration::from_secs(1) }, false, "a wait"),
        ];
        for (err, conflict, case) in cases {
            assert_eq!(err.is_conflict(), conflict, "{case}");
        }
    }
}
