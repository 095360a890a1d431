//! The platform's error answer, shared by the simulator's state, its OAuth provider and its
//! server.

/// A platform error answer: status, message and, when the connector's provider refused, the
/// provider's own message (the body adds a `requestId`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ApiError {
    pub status: u16,
    pub message: String,
    pub provider_message: Option<String>,
}

impl ApiError {
    /// An answer with `status` and `message`.
    pub fn new(status: u16, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), provider_message: None }
    }

    /// A 400 with `message`.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(400, message)
    }

    /// A 400 the provider caused: the platform's `message` plus the provider's `providerMessage`.
    pub fn provider(message: impl Into<String>, provider_message: impl Into<String>) -> ApiError {
        ApiError { provider_message: Some(provider_message.into()), ..ApiError::bad_request(message) }
    }
}
