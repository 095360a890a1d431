//! The simulator's control API (under `/_sim/`, no platform auth): its JSON types and a typed
//! client, [`SimControl`], for tests and other processes.
//!
//! Routes:
//! - `GET /_sim/instances`, `GET|DELETE|PATCH /_sim/instances/{id}`: instances with their real
//!   tokens; out-of-band delete; `valid`/`disabled` flags.
//! - `POST /_sim/instances/{id}/expire-refresh-token`: the platform's auto-disable after failed
//!   refreshes (invalid, disabled, refresh token revoked at the provider).
//! - `GET /_sim/oauth/authorize?client_id=..&redirect_uri=..[&state=..][&decision=deny]`: the
//!   fake OAuth2 provider's authorization page, where the platform's `oauthUrl` points; answers
//!   `302 Found` to `redirect_uri` with `code` and `state` (or `error=access_denied`).
//! - `POST /_sim/oauth/codes` with [`CodeRequest`]: a grant code as the page issues it, for tests
//!   without a browser ([`IssuedCode`]).
//! - `GET|DELETE /_sim/calls`, `GET|PUT|DELETE /_sim/faults`, `POST /_sim/faults/fail-next`,
//!   `PUT /_sim/credentials`, `POST /_sim/reset`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

/// An instance as the simulator holds it, with its real token and unmasked configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SimInstance {
    /// Instance id.
    pub id: i64,
    /// Display name.
    pub name: String,
    /// The current instance token.
    pub token: String,
    /// Connector key.
    pub element_key: String,
    /// Configuration as sent (secrets in clear) plus defaults.
    pub configuration: BTreeMap<String, String>,
    /// Tags.
    pub tags: Vec<String>,
    /// The platform's `valid` flag.
    pub valid: bool,
    /// The platform's `disabled` flag.
    pub disabled: bool,
    /// Whether events are on.
    pub events_enabled: bool,
    /// `none` or `initial`.
    pub external_authentication: String,
}

/// Calls received, by operation (`"POST /instances"`, `"GET /instances/{id}"`, ...).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CallCounts {
    /// Count per `METHOD /route/{template}`.
    pub operations: BTreeMap<String, u64>,
    /// Calls with GET.
    pub reads: u64,
    /// Calls with any other method.
    pub writes: u64,
    /// All calls.
    pub total: u64,
}

impl CallCounts {
    /// Count of one operation, e.g. `count("POST /instances")`.
    pub fn count(&self, operation: &str) -> u64 {
        self.operations.get(operation).copied().unwrap_or(0)
    }
}

/// A random latency added before a call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct LatencyRange {
    /// Smallest added latency.
    pub min_ms: u64,
    /// Largest added latency.
    pub max_ms: u64,
}

/// A fixed delay of one operation's calls (or all): before the call is handled (its change takes
/// effect after it), or after the call took effect, before the answer is sent (a client that
/// gives up meanwhile never learns that its change was applied).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationDelay {
    /// The delay.
    pub ms: u64,
    /// Only this operation (e.g. `"POST /instances"`); all when absent.
    #[serde(default)]
    pub operation: Option<String>,
}

/// Fail the next `count` calls (of `operation`, or any), before they are handled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FailNext {
    /// How many calls.
    pub count: u32,
    /// The status to answer with (ignored when `drop_connection`).
    #[serde(default = "default_fail_status")]
    pub status: u16,
    /// Only this operation; all when absent.
    #[serde(default)]
    pub operation: Option<String>,
    /// Close the connection without any answer instead.
    #[serde(default)]
    pub drop_connection: bool,
    /// The `message` of the error body, instead of the simulator's own words (a platform that
    /// echoes what it was sent, say).
    #[serde(default)]
    pub message: Option<String>,
}

fn default_fail_status() -> u16 {
    500
}

impl FailNext {
    /// Fail the next `count` calls of any operation with `status`.
    pub fn status(count: u32, status: u16) -> Self {
        FailNext { count, status, operation: None, drop_connection: false, message: None }
    }

    /// Answer with this `message` in the error body.
    pub fn saying(mut self, message: impl Into<String>) -> Self {
        self.message = Some(message.into());
        self
    }

    /// Restrict to one operation, e.g. `"POST /instances"`.
    pub fn only(mut self, operation: impl Into<String>) -> Self {
        self.operation = Some(operation.into());
        self
    }

    /// Drop the connection of the next `count` calls without answering.
    pub fn drop_connection(count: u32) -> Self {
        FailNext { drop_connection: true, ..FailNext::status(count, 500) }
    }
}

/// The injected faults. Shares are probabilities in `0.0..=1.0`, drawn from the seeded RNG.
/// Faults decided before handling (drops, 5xx, 429) never apply the call's change.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct Faults {
    /// Latency before handling.
    pub latency: Option<LatencyRange>,
    /// Delay before handling (added to `latency`), of one operation or all.
    pub delay_before: Option<OperationDelay>,
    /// Delay after the change took effect, before answering.
    pub delay_after: Option<OperationDelay>,
    /// Share of calls answered with `server_error_status` (default 500).
    pub server_error_share: f64,
    /// Status of injected server errors.
    pub server_error_status: Option<u16>,
    /// Share of calls answered with 429.
    pub rate_limit_share: f64,
    /// `Retry-After` seconds on injected 429s (default 1); also sent on injected 503s when set.
    pub retry_after_seconds: Option<u64>,
    /// Share of calls whose connection is closed without an answer.
    pub drop_share: f64,
    /// Queued "fail the next N calls" entries, consumed in order.
    pub fail_next: Vec<FailNext>,
    /// `GET /instances` ignores its `tags[]` filter and answers every instance without its tags,
    /// as a platform that cannot search by tag might: a client must not take what it finds for
    /// its own.
    pub untagged_search: bool,
    /// `GET /instances` answers as a hostile server would: endless pages (a new next-page token
    /// each time), each about this many bytes of instances that all echo the searched tags.
    pub hostile_search_page_bytes: Option<usize>,
}

/// Flags to set on an instance out of band (`PATCH /_sim/instances/{id}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceFlags {
    /// New `valid` flag.
    #[serde(default)]
    pub valid: Option<bool>,
    /// New `disabled` flag.
    #[serde(default)]
    pub disabled: Option<bool>,
}

/// New platform credentials (simulates a user-secret reset: old ones stop working at once).
#[derive(Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Credentials {
    /// New user secret.
    pub user_secret: String,
    /// New organization secret.
    pub organization_secret: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Credentials { .. }")
    }
}

/// Asks the fake OAuth2 provider for a grant code (`POST /_sim/oauth/codes`), as if a user had
/// approved access on its authorization page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CodeRequest {
    /// The OAuth client id the code is issued to (the instance's `oauth.api.key`).
    pub client_id: String,
    /// The redirect URI the code is issued for (the instance's `oauth.callback.url`).
    pub redirect_uri: String,
}

/// A grant code of the fake OAuth2 provider: single use, valid for ten minutes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IssuedCode {
    /// The code, for `providerData.code`.
    pub code: String,
}

/// Failure of a control call.
#[derive(Debug, thiserror::Error)]
pub enum SimControlError {
    /// The simulator could not be reached or answered garbage.
    #[error("simulator control call {what} failed: {message}")]
    Http {
        /// Which call.
        what: String,
        /// What happened.
        message: String,
    },
    /// The simulator answered with an error status.
    #[error("simulator control call {what} answered HTTP {status}: {body}")]
    Status {
        /// Which call.
        what: String,
        /// HTTP status.
        status: u16,
        /// Answer body (cut short).
        body: String,
    },
}

/// Typed client of the simulator's control API.
#[derive(Debug, Clone)]
pub struct SimControl {
    http: reqwest::Client,
    base: String,
}

impl SimControl {
    /// A client for the control API at `control_url` (e.g. `http://127.0.0.1:8089/_sim`).
    pub fn new(control_url: impl Into<String>) -> Result<Self, SimControlError> {
        crate::platform::install_crypto_provider();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| SimControlError::Http { what: "client setup".into(), message: e.to_string() })?;
        Ok(SimControl { http, base: control_url.into().trim_end_matches('/').to_string() })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<serde_json::Value>,
    ) -> Result<Option<T>, SimControlError> {
        let what = format!("{method} /_sim{path}");
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(body) = body {
            req = req.json(&body);
        }
        let http_err = |e: reqwest::Error| SimControlError::Http {
            what: what.clone(),
            message: e.without_url().to_string(),
        };
        let resp = req.send().await.map_err(http_err)?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        let bytes = resp.bytes().await.map_err(http_err)?;
        if !status.is_success() {
            return Err(SimControlError::Status {
                what,
                status: status.as_u16(),
                body: crate::platform::ErrorBody::parse(&bytes).describe(),
            });
        }
        let bytes = if bytes.is_empty() { &b"null"[..] } else { &bytes[..] };
        serde_json::from_slice(bytes)
            .map(Some)
            .map_err(|e| SimControlError::Http { what, message: format!("bad answer: {e}") })
    }

    fn missing(what: &str) -> SimControlError {
        SimControlError::Status { what: what.to_string(), status: 404, body: "not found".into() }
    }

    /// `GET /_sim/instances`: every instance with its real token.
    pub async fn instances(&self) -> Result<Vec<SimInstance>, SimControlError> {
        Ok(self.call(reqwest::Method::GET, "/instances", None).await?.unwrap_or_default())
    }

    /// `GET /_sim/instances/{id}`; `None` if it does not exist.
    pub async fn instance(&self, id: i64) -> Result<Option<SimInstance>, SimControlError> {
        self.call(reqwest::Method::GET, &format!("/instances/{id}"), None).await
    }

    /// `DELETE /_sim/instances/{id}`: deletes out of band; `false` if it did not exist.
    pub async fn delete_instance(&self, id: i64) -> Result<bool, SimControlError> {
        Ok(self
            .call::<serde_json::Value>(reqwest::Method::DELETE, &format!("/instances/{id}"), None)
            .await?
            .is_some())
    }

    /// `PATCH /_sim/instances/{id}` with flags.
    pub async fn set_flags(&self, id: i64, flags: InstanceFlags) -> Result<(), SimControlError> {
        let path = format!("/instances/{id}");
        let body = serde_json::to_value(flags)
            .map_err(|e| SimControlError::Http { what: path.clone(), message: e.to_string() })?;
        self.call::<serde_json::Value>(reqwest::Method::PATCH, &path, Some(body))
            .await?
            .ok_or_else(|| Self::missing(&path))
            .map(|_| ())
    }

    /// Marks an instance valid or invalid (as if its provider authentication broke).
    pub async fn set_valid(&self, id: i64, valid: bool) -> Result<(), SimControlError> {
        self.set_flags(id, InstanceFlags { valid: Some(valid), disabled: None }).await
    }

    /// Disables or enables an instance out of band (as the platform's auto-disable does).
    pub async fn set_disabled(&self, id: i64, disabled: bool) -> Result<(), SimControlError> {
        self.set_flags(id, InstanceFlags { valid: None, disabled: Some(disabled) }).await
    }

    /// `POST /_sim/instances/{id}/revoke-token`: the instance gets a new token out of band; calls
    /// with the old one are refused (401). `false` if there is no such instance.
    pub async fn revoke_token(&self, id: i64) -> Result<bool, SimControlError> {
        let revoked: Option<SimInstance> =
            self.call(reqwest::Method::POST, &format!("/instances/{id}/revoke-token"), None).await?;
        Ok(revoked.is_some())
    }

    /// `POST /_sim/instances/{id}/expire-refresh-token`: the instance's refresh token expires as
    /// after the platform's failed refreshes: the instance becomes invalid and disabled, and a
    /// create or re-authentication with that refresh token is refused from now on. A later
    /// successful re-authentication makes it valid again; it stays disabled until enabled.
    /// `false` if the instance does not exist; an error for one without a refresh token.
    pub async fn expire_refresh_token(&self, id: i64) -> Result<bool, SimControlError> {
        Ok(self
            .call::<serde_json::Value>(
                reqwest::Method::POST,
                &format!("/instances/{id}/expire-refresh-token"),
                None,
            )
            .await?
            .is_some())
    }

    /// `POST /_sim/oauth/codes`: a fresh grant code of the fake OAuth2 provider, issued to
    /// `client_id` for `redirect_uri` exactly as its authorization page would (single use,
    /// valid for ten minutes).
    pub async fn issue_code(&self, client_id: &str, redirect_uri: &str) -> Result<String, SimControlError> {
        let what = "POST /_sim/oauth/codes";
        let body = serde_json::to_value(CodeRequest {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
        })
        .map_err(|e| SimControlError::Http { what: what.into(), message: e.to_string() })?;
        self.call::<IssuedCode>(reqwest::Method::POST, "/oauth/codes", Some(body))
            .await?
            .map(|issued| issued.code)
            .ok_or_else(|| Self::missing(what))
    }

    /// `GET /_sim/calls`: calls received since start or the last reset.
    pub async fn calls(&self) -> Result<CallCounts, SimControlError> {
        Ok(self.call(reqwest::Method::GET, "/calls", None).await?.unwrap_or_default())
    }

    /// `DELETE /_sim/calls`: resets the call counts.
    pub async fn reset_calls(&self) -> Result<(), SimControlError> {
        self.call::<serde_json::Value>(reqwest::Method::DELETE, "/calls", None).await.map(|_| ())
    }

    /// `GET /_sim/faults`.
    pub async fn faults(&self) -> Result<Faults, SimControlError> {
        Ok(self.call(reqwest::Method::GET, "/faults", None).await?.unwrap_or_default())
    }

    /// `PUT /_sim/faults`: replaces all fault settings.
    pub async fn set_faults(&self, faults: &Faults) -> Result<(), SimControlError> {
        let body = serde_json::to_value(faults)
            .map_err(|e| SimControlError::Http { what: "PUT /_sim/faults".into(), message: e.to_string() })?;
        self.call::<serde_json::Value>(reqwest::Method::PUT, "/faults", Some(body)).await.map(|_| ())
    }

    /// `DELETE /_sim/faults`: no more faults.
    pub async fn clear_faults(&self) -> Result<(), SimControlError> {
        self.call::<serde_json::Value>(reqwest::Method::DELETE, "/faults", None).await.map(|_| ())
    }

    /// `POST /_sim/faults/fail-next`: queues a "fail the next N calls" entry.
    pub async fn fail_next(&self, fail: FailNext) -> Result<(), SimControlError> {
        let body = serde_json::to_value(fail).map_err(|e| SimControlError::Http {
            what: "POST /_sim/faults/fail-next".into(),
            message: e.to_string(),
        })?;
        self.call::<serde_json::Value>(reqwest::Method::POST, "/faults/fail-next", Some(body))
            .await
            .map(|_| ())
    }

    /// `PUT /_sim/credentials`: rotates the platform secrets.
    pub async fn set_credentials(&self, credentials: &Credentials) -> Result<(), SimControlError> {
        let body = serde_json::to_value(credentials).map_err(|e| SimControlError::Http {
            what: "PUT /_sim/credentials".into(),
            message: e.to_string(),
        })?;
        self.call::<serde_json::Value>(reqwest::Method::PUT, "/credentials", Some(body)).await.map(|_| ())
    }

    /// `POST /_sim/reset`: deletes every instance, clears faults and call counts, forgets issued
    /// grant codes and revoked refresh tokens (credentials and the id sequence stay).
    pub async fn reset(&self) -> Result<(), SimControlError> {
        self.call::<serde_json::Value>(reqwest::Method::POST, "/reset", None).await.map(|_| ())
    }
}
