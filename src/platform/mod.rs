//! Open Connectors platform client.
//!
//! [`PlatformClient`] speaks the instances API as published (Swagger 2.0, base path
//! `/elements/api-v2`): `Authorization: User <secret>, Organization <secret>` on every call,
//! timeouts, retries with backoff and jitter for calls safe to repeat, `Retry-After`, a
//! client-side rate limit shared by all clones, tag search with paging, and errors classified
//! into [`PlatformError`] without secrets in them.

mod client;
mod error;
mod hosts;
mod model;

pub use client::{
    CallObserver, MAX_PAGE_SIZE, MAX_RESPONSE_BYTES, MAX_SEARCH_BYTES, MAX_SEARCH_PAGES, NEXT_PAGE_HEADER,
    PlatformClient, PlatformConfig, RESPONSE_BUDGET_BYTES, RetryPolicy, Tagged,
};
pub use error::{ErrorBody, MAX_MESSAGE_BYTES, PlatformError, parse_retry_after, redact_text};
pub use hosts::{AllowedHosts, DEFAULT_PATTERN as DEFAULT_ALLOWED_HOSTS};
pub use model::{
    DeleteOutcome, Element, ElementConfig, ElementInstance, InstanceRequest, OAuthRedirect, OAuthUrlRequest,
    User, patch_body,
};

/// Installs rustls's `ring` crypto provider as the process default, unless one is installed
/// already. Idempotent and safe to call from many threads; [`PlatformClient::new`] calls it.
pub fn install_crypto_provider() {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Losing a race against another installer is fine: a provider is installed either way.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
}
