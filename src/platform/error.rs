//! Errors of platform calls, and the parsers that turn an HTTP answer into one.

use std::time::{Duration, SystemTime};

use serde::Deserialize;

/// Longest platform message kept in an error (bytes); longer ones are cut at a char boundary.
pub const MAX_MESSAGE_BYTES: usize = 1024;

/// What went wrong with a platform call.
///
/// Messages carry the platform's own `message` (and `providerMessage`) and the operation
/// (`POST /instances`, `GET /instances/{id}`, ...), never request bodies or headers.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlatformError {
    /// The platform (or this client, with `status` 0, before sending anything) rejected the
    /// input: fix the configuration. HTTP 400, and the other 4xx that mean the same (405, 406,
    /// 409, 413, 415, 422).
    #[error("{}", invalid_input_text(*status, message))]
    InvalidInput {
        /// HTTP status, or 0 when the client refused the input before sending anything.
        status: u16,
        /// What the platform said.
        message: String,
    },
    /// HTTP 404: the instance or element does not exist (any more).
    #[error("not found on the platform (HTTP 404): {message}")]
    NotFound {
        /// What the platform said.
        message: String,
    },
    /// HTTP 401: the user/organization secrets are wrong or were rotated.
    #[error(
        "the platform rejected the user/organization secrets (HTTP 401): {message}; check the \
         credentials Secret (the secrets may have been rotated)"
    )]
    Unauthorized {
        /// What the platform said.
        message: String,
    },
    /// HTTP 403: the credentials are valid but not allowed to do this.
    #[error("the platform refused access (HTTP 403): {message}")]
    Forbidden {
        /// What the platform said.
        message: String,
    },
    /// HTTP 429: slow down; retry after `retry_after` if given.
    #[error("the platform is rate limiting requests (HTTP 429){}", fmt_retry_after(*retry_after))]
    RateLimited {
        /// The platform's `Retry-After`, if it sent one.
        retry_after: Option<Duration>,
    },
    /// A failure worth retrying later: 5xx, timeouts, connection and body read errors.
    #[error("temporary platform failure, will retry: {message}")]
    Transient {
        /// What happened.
        message: String,
        /// The platform's `Retry-After` (e.g. on 503), if it sent one.
        retry_after: Option<Duration>,
    },
    /// The platform answered something this client cannot understand (e.g. a 2xx with a body
    /// that is not an instance).
    #[error("unexpected answer from the platform: {message}")]
    Protocol {
        /// What was wrong with the answer.
        message: String,
    },
    /// Not sent: the caller withdrew the call before it went out (see
    /// [`crate::platform::PlatformClient::create_instance_while`]).
    #[error("not sent: the call was withdrawn before it went out")]
    Withdrawn,
}

fn invalid_input_text(status: u16, message: &str) -> String {
    match status {
        0 => format!("refused before calling the platform: {message}"),
        status => format!("the platform rejected the request (HTTP {status}): {message}"),
    }
}

fn fmt_retry_after(retry_after: Option<Duration>) -> String {
    match retry_after {
        Some(d) => format!("; retry after {:.1}s", d.as_secs_f64()),
        None => String::new(),
    }
}

impl PlatformError {
    /// How long the platform asked us to wait before trying again, if it said so.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            PlatformError::RateLimited { retry_after } => *retry_after,
            PlatformError::Transient { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// True for failures that may go away by themselves (429, 5xx, timeouts, connection errors).
    pub fn is_transient(&self) -> bool {
        matches!(self, PlatformError::RateLimited { .. } | PlatformError::Transient { .. })
    }

    /// The same error with every one of `secrets` (longest first, non-empty) replaced by
    /// `[redacted]` in its message: a platform or provider may echo what it was sent.
    pub fn redact(self, secrets: &[&str]) -> PlatformError {
        let clean = |message: String| redact_text(message, secrets);
        match self {
            PlatformError::InvalidInput { status, message } => {
                PlatformError::InvalidInput { status, message: clean(message) }
            }
            PlatformError::NotFound { message } => PlatformError::NotFound { message: clean(message) },
            PlatformError::Unauthorized { message } => {
                PlatformError::Unauthorized { message: clean(message) }
            }
            PlatformError::Forbidden { message } => PlatformError::Forbidden { message: clean(message) },
            PlatformError::RateLimited { retry_after } => PlatformError::RateLimited { retry_after },
            PlatformError::Transient { message, retry_after } => {
                PlatformError::Transient { message: clean(message), retry_after }
            }
            PlatformError::Protocol { message } => PlatformError::Protocol { message: clean(message) },
            PlatformError::Withdrawn => PlatformError::Withdrawn,
        }
    }

    /// A short, fixed label for metrics (never contains data).
    pub fn metric_label(&self) -> &'static str {
        match self {
            PlatformError::InvalidInput { .. } => "invalid_input",
            PlatformError::NotFound { .. } => "not_found",
            PlatformError::Unauthorized { .. } => "unauthorized",
            PlatformError::Forbidden { .. } => "forbidden",
            PlatformError::RateLimited { .. } => "rate_limited",
            PlatformError::Transient { .. } => "transient",
            PlatformError::Protocol { .. } => "protocol",
            PlatformError::Withdrawn => "withdrawn",
        }
    }

    /// Builds the error for a non-2xx answer of operation `operation` (e.g. `POST /instances`).
    pub(crate) fn from_status(
        operation: &str,
        status: u16,
        body: &[u8],
        retry_after: Option<Duration>,
    ) -> PlatformError {
        let detail = ErrorBody::parse(body).describe();
        let message = truncate(&format!("{operation}: {detail}"), MAX_MESSAGE_BYTES);
        match status {
            401 => PlatformError::Unauthorized { message },
            403 => PlatformError::Forbidden { message },
            404 => PlatformError::NotFound { message },
            429 => PlatformError::RateLimited { retry_after },
            408 | 500..=599 => {
                PlatformError::Transient { message: format!("{message} (HTTP {status})"), retry_after }
            }
            400..=499 => PlatformError::InvalidInput { status, message },
            _ => PlatformError::Protocol { message: format!("{message} (unexpected HTTP {status})") },
        }
    }
}

/// `text` with every one of `secrets` replaced by `[redacted]`, the longest first (so that a
/// secret containing another is replaced whole). Empty and very short values (under 4 bytes,
/// which would blank out ordinary words) are left alone.
pub fn redact_text(text: String, secrets: &[&str]) -> String {
    let mut secrets: Vec<&str> = secrets.iter().copied().filter(|s| s.len() >= 4).collect();
    secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    secrets.iter().fold(
        text,
        |text, secret| if text.contains(secret) { text.replace(secret, "[redacted]") } else { text },
    )
}

/// The platform's error body: `{"requestId": "...", "message": "...", "providerMessage": "..."}`.
/// Anything else (HTML from a proxy, empty body) is kept as short text.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ErrorBody {
    /// The platform's request id, handy when talking to SAP support.
    pub request_id: Option<String>,
    /// The platform's message.
    pub message: Option<String>,
    /// The message of the connector's provider, when it caused the failure.
    pub provider_message: Option<String>,
    /// A body that was not the platform's JSON error shape, cut short.
    pub raw: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawErrorBody {
    #[serde(default)]
    request_id: Option<serde_json::Value>,
    #[serde(default)]
    message: Option<serde_json::Value>,
    #[serde(default)]
    provider_message: Option<serde_json::Value>,
}

fn value_text(value: Option<serde_json::Value>) -> Option<String> {
    match value? {
        serde_json::Value::Null => None,
        serde_json::Value::String(s) if s.trim().is_empty() => None,
        serde_json::Value::String(s) => Some(truncate(s.trim(), MAX_MESSAGE_BYTES)),
        other => Some(truncate(&other.to_string(), MAX_MESSAGE_BYTES)),
    }
}

impl ErrorBody {
    /// Parses an error body; never fails.
    pub fn parse(body: &[u8]) -> ErrorBody {
        if let Ok(raw) = serde_json::from_slice::<RawErrorBody>(body) {
            let parsed = ErrorBody {
                request_id: value_text(raw.request_id),
                message: value_text(raw.message),
                provider_message: value_text(raw.provider_message),
                raw: None,
            };
            if parsed.message.is_some() || parsed.provider_message.is_some() {
                return parsed;
            }
        }
        let text = String::from_utf8_lossy(body);
        let text: String = text.chars().map(|c| if c.is_control() { ' ' } else { c }).collect();
        let text = text.split_whitespace().collect::<Vec<_>>().join(" ");
        ErrorBody { raw: (!text.is_empty()).then(|| truncate(&text, 256)), ..ErrorBody::default() }
    }

    /// One line for an error message.
    pub fn describe(&self) -> String {
        let mut out = match (&self.message, &self.raw) {
            (Some(m), _) => m.clone(),
            (None, Some(raw)) => format!("non-JSON error body: {raw}"),
            (None, None) => "no error message in the response".to_string(),
        };
        if let Some(p) = &self.provider_message {
            out.push_str(&format!(" (provider: {p})"));
        }
        if let Some(r) = &self.request_id {
            out.push_str(&format!(" [requestId {r}]"));
        }
        out
    }
}

/// Parses a `Retry-After` header value: delay seconds (`"2"`) or an HTTP-date
/// (`"Wed, 21 Oct 2015 07:28:00 GMT"`, relative to `now`; a past date means no wait).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let value = value.trim();
    if value.is_empty() {
        return None;
    }
    if value.bytes().all(|b| b.is_ascii_digit()) {
        return value.parse::<u64>().ok().map(Duration::from_secs);
    }
    if let Ok(secs) = value.parse::<f64>()
        && secs.is_finite()
        && secs >= 0.0
    {
        return Duration::try_from_secs_f64(secs).ok();
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

/// Cuts `s` to at most `max` bytes at a char boundary, marking the cut with `…`.
pub(crate) fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while end > 0 && !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_seconds_and_dates() {
        let now = httpdate::parse_http_date("Wed, 21 Oct 2015 07:28:00 GMT").unwrap();
        assert_eq!(parse_retry_after("3", now), Some(Duration::from_secs(3)));
        assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("1.5", now), Some(Duration::from_millis(1500)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:10 GMT", now), Some(Duration::from_secs(10)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:27:00 GMT", now), Some(Duration::ZERO));
        assert_eq!(parse_retry_after("soon", now), None);
        assert_eq!(parse_retry_after("", now), None);
        assert_eq!(parse_retry_after("-1", now), None);
        assert_eq!(parse_retry_after("99999999999999999999999", now), None);
    }

    #[test]
    fn error_body_json_and_not_json() {
        let b = ErrorBody::parse(
            br#"{"requestId":"5b04","message":"Missing required configuration: password","providerMessage":"nope"}"#,
        );
        assert_eq!(
            b.describe(),
            "Missing required configuration: password (provider: nope) [requestId 5b04]"
        );
        let b = ErrorBody::parse(b"<html>\n<body>Bad Gateway</body></html>");
        assert_eq!(b.describe(), "non-JSON error body: <html> <body>Bad Gateway</body></html>");
        assert_eq!(ErrorBody::parse(b"").describe(), "no error message in the response");
        assert_eq!(
            ErrorBody::parse(br#"{"message": null}"#).describe(),
            "non-JSON error body: {\"message\": null}"
        );
        let long = "x".repeat(10_000);
        let b = ErrorBody::parse(format!(r#"{{"message":"{long}"}}"#).as_bytes());
        assert!(b.describe().len() <= MAX_MESSAGE_BYTES + 4);
    }

    #[test]
    fn status_classification() {
        let e = PlatformError::from_status("POST /instances", 400, br#"{"message":"bad"}"#, None);
        assert_eq!(e, PlatformError::InvalidInput { status: 400, message: "POST /instances: bad".into() });
        for (status, label) in [
            (401, "unauthorized"),
            (403, "forbidden"),
            (404, "not_found"),
            (405, "invalid_input"),
            (409, "invalid_input"),
            (415, "invalid_input"),
            (422, "invalid_input"),
            (429, "rate_limited"),
            (500, "transient"),
            (502, "transient"),
            (503, "transient"),
            (302, "protocol"),
        ] {
            let e = PlatformError::from_status("GET /instances/{id}", status, b"oops", None);
            assert_eq!(e.metric_label(), label, "status {status}");
        }
        let e = PlatformError::from_status("GET /x", 429, b"", Some(Duration::from_secs(2)));
        assert!(e.is_transient());
        assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        assert!(e.to_string().contains("retry after 2.0s"));
    }

    #[test]
    fn truncate_respects_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h…");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
