//! The simulator's fake OAuth2 provider: the parameters of `/elements/{key}/oauth/url`, the
//! provider's authorization page (`/_sim/oauth/authorize`) and its redirect, grant codes (random,
//! bound to a client id and redirect URI, single use, short-lived) and revoked refresh tokens.
//! No I/O and no clock: callers pass the time in.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::error::ApiError;

/// How long a grant code stays valid after it was issued.
pub(crate) const CODE_LIFETIME: Duration = Duration::from_secs(10 * 60);
/// Length of a grant code.
const CODE_LEN: usize = 40;

/// Platform message of a refused code exchange.
pub(crate) const CODE_EXCHANGE_FAILED: &str = "Failed to exchange the OAuth code with the provider";
/// Provider message for a code that is unknown, expired or already used.
pub(crate) const INVALID_CODE: &str = "invalid_grant: authorization code is invalid, expired or already used";
/// Provider message for a code issued to another client id.
pub(crate) const CODE_CLIENT_MISMATCH: &str =
    "invalid_grant: authorization code was issued to another client (oauth.api.key)";
/// Provider message for a code issued for another redirect URI.
pub(crate) const CODE_REDIRECT_MISMATCH: &str =
    "invalid_grant: redirect_uri (oauth.callback.url) does not match the one the code was issued for";
/// Platform message of a refused refresh token.
pub(crate) const REFRESH_FAILED: &str = "Failed to refresh the OAuth token with the provider";
/// Provider message for a revoked refresh token.
pub(crate) const REVOKED_REFRESH_TOKEN: &str = "invalid_grant: refresh token expired or revoked";
/// `error_description` of a denied authorization.
const DENIED_DESCRIPTION: &str = "The user denied access";

/// Percent-encodes `s` for a URL query value: everything but RFC 3986's unreserved characters
/// (`A-Z a-z 0-9 - . _ ~`) becomes `%XX` of its UTF-8 bytes (a space is `%20`, never `+`).
pub(crate) fn percent_encode(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 0xF)] as char);
        }
    }
    out
}

/// Whether `s` is an absolute `http`/`https` URL with a host, no whitespace or control
/// characters and no fragment (a redirect URI must not carry one, RFC 6749 §3.1.2).
pub(crate) fn is_absolute_http_url(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    if !(scheme.eq_ignore_ascii_case("http") || scheme.eq_ignore_ascii_case("https"))
        || rest.is_empty()
        || rest.starts_with('/')
        || s.contains('#')
        || s.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return false;
    }
    reqwest::Url::parse(s).is_ok_and(|u| u.host_str().is_some_and(|h| !h.is_empty()))
}

/// `base` with `params` appended as a query: `?` first, or `&` when `base` already has a query
/// (nothing when it ends in `?` or `&`). Values are percent-encoded.
pub(crate) fn with_query(base: &str, params: &[(&str, &str)]) -> String {
    let mut out = String::from(base);
    let mut sep = match base.rfind('?') {
        None => "?",
        Some(_) if base.ends_with('?') || base.ends_with('&') => "",
        Some(_) => "&",
    };
    for (k, v) in params {
        out.push_str(sep);
        out.push_str(k);
        out.push('=');
        out.push_str(&percent_encode(v));
        sep = "&";
    }
    out
}

/// The parameters of `GET|POST /elements/{key}/oauth/url`. The client secret is only checked
/// for presence and never shown (not even in `Debug`).
#[derive(Clone, Default)]
pub(crate) struct OAuthUrlParams {
    pub api_key: Option<String>,
    pub api_secret: Option<String>,
    pub callback_url: Option<String>,
    pub scope: Option<String>,
    pub state: Option<String>,
    pub site_address: Option<String>,
}

impl std::fmt::Debug for OAuthUrlParams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OAuthUrlParams")
            .field("api_key", &self.api_key)
            .field("api_secret", &self.api_secret.as_ref().map(|_| "<redacted>"))
            .field("callback_url", &self.callback_url)
            .field("scope", &self.scope)
            .field("state", &self.state)
            .field("site_address", &self.site_address)
            .finish()
    }
}

/// A value that counts as given: present and not blank.
fn given(v: Option<&String>) -> Option<&str> {
    v.map(String::as_str).filter(|s| !s.trim().is_empty())
}

impl OAuthUrlParams {
    /// From the query of the GET variant (`apiKey`, `apiSecret`, `callbackUrl`, `scope`, `state`,
    /// `siteAddress`; the first of repeated names wins, others are ignored).
    pub fn from_query(pairs: &[(String, String)]) -> Self {
        let first = |name: &str| pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
        OAuthUrlParams {
            api_key: first("apiKey"),
            api_secret: first("apiSecret"),
            callback_url: first("callbackUrl"),
            scope: first("scope"),
            state: first("state"),
            site_address: first("siteAddress"),
        }
    }

    /// From the JSON body of the POST variant (the SDK's `OAuthInfo`; other fields ignored,
    /// `null` counts as absent).
    pub fn from_json(body: &Value) -> Result<Self, ApiError> {
        let obj = body.as_object().ok_or_else(|| {
            ApiError::bad_request(
                "request body must be a JSON object: {\"apiKey\", \"apiSecret\", \"callbackUrl\", ...}",
            )
        })?;
        let field = |name: &str| -> Result<Option<String>, ApiError> {
            match obj.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(ApiError::bad_request(format!("{name} must be a string"))),
            }
        };
        Ok(OAuthUrlParams {
            api_key: field("apiKey")?,
            api_secret: field("apiSecret")?,
            callback_url: field("callbackUrl")?,
            scope: field("scope")?,
            state: field("state")?,
            site_address: field("siteAddress")?,
        })
    }

    /// Checks the required parameters and builds the fake provider's authorization URL on
    /// `authorize_base` (e.g. `http://127.0.0.1:8089/_sim/oauth/authorize`).
    pub fn authorize_url(&self, authorize_base: &str) -> Result<String, ApiError> {
        let api_key = given(self.api_key.as_ref()).ok_or_else(|| {
            ApiError::bad_request("Missing required parameter apiKey (the OAuth client id)")
        })?;
        if given(self.api_secret.as_ref()).is_none() {
            return Err(ApiError::bad_request(
                "Missing required parameter apiSecret (the OAuth client secret)",
            ));
        }
        let callback_url = given(self.callback_url.as_ref()).ok_or_else(|| {
            ApiError::bad_request(
                "Missing required parameter callbackUrl (the redirect URI registered with the provider)",
            )
        })?;
        if !is_absolute_http_url(callback_url) {
            return Err(ApiError::bad_request(
                "callbackUrl must be an absolute http(s) URL (without a fragment)",
            ));
        }
        let mut params =
            vec![("response_type", "code"), ("client_id", api_key), ("redirect_uri", callback_url)];
        if let Some(scope) = given(self.scope.as_ref()) {
            params.push(("scope", scope));
        }
        if let Some(state) = given(self.state.as_ref()) {
            params.push(("state", state));
        }
        Ok(with_query(authorize_base, &params))
    }
}

/// What the user decides on the fake provider's page.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Decision {
    Allow,
    Deny,
}

/// A checked request of the authorization page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub state: Option<String>,
    pub decision: Decision,
}

impl AuthorizeRequest {
    /// From the page's query; the error is the plain-text 400 answer.
    pub fn from_query(pairs: &[(String, String)]) -> Result<Self, String> {
        let first = |name: &str| {
            pairs.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone()).filter(|v| !v.trim().is_empty())
        };
        let client_id = first("client_id").ok_or("client_id is required")?;
        let redirect_uri = first("redirect_uri").ok_or("redirect_uri is required")?;
        if !is_absolute_http_url(&redirect_uri) {
            return Err("redirect_uri must be an absolute http(s) URL (without a fragment)".into());
        }
        let decision = match first("decision").as_deref() {
            None | Some("allow") => Decision::Allow,
            Some("deny") => Decision::Deny,
            Some(_) => return Err("decision must be \"allow\" or \"deny\"".into()),
        };
        Ok(AuthorizeRequest { client_id, redirect_uri, state: first("state"), decision })
    }

    /// The `Location` of the provider's redirect after the user allowed access: `code` (and
    /// `state`).
    pub fn granted_location(&self, code: &str) -> String {
        self.location(vec![("code", code)])
    }

    /// The `Location` of the provider's redirect after the user denied access:
    /// `error=access_denied` with a description (and `state`).
    pub fn denied_location(&self) -> String {
        self.location(vec![("error", "access_denied"), ("error_description", DENIED_DESCRIPTION)])
    }

    fn location<'a>(&'a self, mut params: Vec<(&'a str, &'a str)>) -> String {
        if let Some(state) = &self.state {
            params.push(("state", state));
        }
        with_query(&self.redirect_uri, &params)
    }
}

/// Why the fake provider refused a grant code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CodeRejection {
    /// Unknown, expired or already used.
    Invalid,
    /// Issued to another client id.
    OtherClient,
    /// Issued for another redirect URI.
    OtherRedirect,
}

impl CodeRejection {
    /// The provider's message (`providerMessage` of the platform's answer).
    pub fn provider_message(self) -> &'static str {
        match self {
            CodeRejection::Invalid => INVALID_CODE,
            CodeRejection::OtherClient => CODE_CLIENT_MISMATCH,
            CodeRejection::OtherRedirect => CODE_REDIRECT_MISMATCH,
        }
    }
}

struct Grant {
    client_id: String,
    redirect_uri: String,
    issued_at: Instant,
}

impl Grant {
    fn expired(&self, now: Instant) -> bool {
        now.saturating_duration_since(self.issued_at) >= CODE_LIFETIME
    }
}

/// The fake provider's memory: outstanding grant codes and revoked refresh tokens.
#[derive(Default)]
pub(crate) struct Provider {
    codes: HashMap<String, Grant>,
    revoked: HashSet<String>,
}

impl Provider {
    /// Issues a fresh code for `client_id` and `redirect_uri`, valid for [`CODE_LIFETIME`] from
    /// `now`. Drops codes that have expired meanwhile.
    pub fn issue_code(
        &mut self,
        rng: &mut fastrand::Rng,
        client_id: &str,
        redirect_uri: &str,
        now: Instant,
    ) -> String {
        self.codes.retain(|_, g| !g.expired(now));
        let code = loop {
            let candidate: String = (0..CODE_LEN).map(|_| rng.alphanumeric()).collect();
            if !self.codes.contains_key(&candidate) {
                break candidate;
            }
        };
        let grant = Grant {
            client_id: client_id.to_string(),
            redirect_uri: redirect_uri.to_string(),
            issued_at: now,
        };
        self.codes.insert(code.clone(), grant);
        code
    }

    /// Exchanges `code` for tokens: it must be outstanding, not expired, and issued for this
    /// client id and redirect URI. A successful exchange uses the code up; a code refused for the
    /// wrong client or redirect URI stays usable, an expired one is forgotten.
    pub fn exchange_code(
        &mut self,
        code: &str,
        client_id: &str,
        redirect_uri: &str,
        now: Instant,
    ) -> Result<(), CodeRejection> {
        let grant = self.codes.get(code).ok_or(CodeRejection::Invalid)?;
        if grant.expired(now) {
            self.codes.remove(code);
            return Err(CodeRejection::Invalid);
        }
        if grant.client_id != client_id {
            return Err(CodeRejection::OtherClient);
        }
        if grant.redirect_uri != redirect_uri {
            return Err(CodeRejection::OtherRedirect);
        }
        self.codes.remove(code);
        Ok(())
    }

    /// Records a refresh token as revoked: the provider refuses it from now on.
    pub fn revoke_refresh_token(&mut self, token: &str) {
        self.revoked.insert(token.to_string());
    }

    /// Whether a refresh token was revoked.
    pub fn is_revoked(&self, token: &str) -> bool {
        self.revoked.contains(token)
    }

    /// Forgets every code and revoked token.
    pub fn clear(&mut self) {
        self.codes.clear();
        self.revoked.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pairs(items: &[(&str, &str)]) -> Vec<(String, String)> {
        items.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn percent_encoding() {
        for (raw, encoded) in [
            ("abcXYZ019-._~", "abcXYZ019-._~"),
            ("a b", "a%20b"),
            ("https://app.example/cb?x=1&y=2", "https%3A%2F%2Fapp.example%2Fcb%3Fx%3D1%26y%3D2"),
            ("a+b/c", "a%2Bb%2Fc"),
            ("é", "%C3%A9"),
            ("", ""),
        ] {
            assert_eq!(percent_encode(raw), encoded, "{raw}");
        }
    }

    #[test]
    fn absolute_http_urls() {
        for (url, ok) in [
            ("https://app.example/cb", true),
            ("http://127.0.0.1:8080/callback?x=1", true),
            ("HTTPS://APP.EXAMPLE", true),
            ("ftp://app.example/cb", false),
            ("/relative/cb", false),
            ("app.example/cb", false),
            ("http:app.example", false),
            ("https://", false),
            ("https:///path", false),
            ("https://app.example/cb#frag", false),
            ("https://app example/cb", false),
            ("", false),
        ] {
            assert_eq!(is_absolute_http_url(url), ok, "{url}");
        }
    }

    #[test]
    fn query_appending() {
        for (base, expected) in [
            ("https://a.example/cb", "https://a.example/cb?code=c%201&state=s"),
            ("https://a.example/cb?x=1", "https://a.example/cb?x=1&code=c%201&state=s"),
            ("https://a.example/cb?", "https://a.example/cb?code=c%201&state=s"),
            ("https://a.example/cb?x=1&", "https://a.example/cb?x=1&code=c%201&state=s"),
        ] {
            assert_eq!(with_query(base, &[("code", "c 1"), ("state", "s")]), expected, "{base}");
        }
        assert_eq!(with_query("https://a.example/cb", &[]), "https://a.example/cb");
    }

    #[test]
    fn oauth_url_parameters() {
        let base = "http://h:1/_sim/oauth/authorize";
        let full = pairs(&[
            ("apiKey", "id 1"),
            ("apiSecret", "s3cret"),
            ("callbackUrl", "https://app.example/cb"),
            ("scope", "api refresh_token"),
            ("state", "xyz"),
        ]);
        let url = OAuthUrlParams::from_query(&full).authorize_url(base).unwrap();
        assert_eq!(
            url,
            "http://h:1/_sim/oauth/authorize?response_type=code&client_id=id%201\
             &redirect_uri=https%3A%2F%2Fapp.example%2Fcb&scope=api%20refresh_token&state=xyz"
        );
        let minimal = pairs(&[("apiKey", "id"), ("apiSecret", "s"), ("callbackUrl", "http://x.example")]);
        assert_eq!(
            OAuthUrlParams::from_query(&minimal).authorize_url(base).unwrap(),
            "http://h:1/_sim/oauth/authorize?response_type=code&client_id=id&redirect_uri=http%3A%2F%2Fx.example"
        );
        for (without, named) in
            [("apiKey", "apiKey"), ("apiSecret", "apiSecret"), ("callbackUrl", "callbackUrl")]
        {
            let mut missing = minimal.clone();
            missing.retain(|(k, _)| k != without);
            let err = OAuthUrlParams::from_query(&missing).authorize_url(base).unwrap_err();
            assert_eq!(err.status, 400);
            assert!(err.message.contains(named), "{}", err.message);
            let mut blank = minimal.clone();
            blank.iter_mut().filter(|(k, _)| k == without).for_each(|(_, v)| *v = "  ".into());
            assert!(
                OAuthUrlParams::from_query(&blank).authorize_url(base).unwrap_err().message.contains(named)
            );
        }
        let relative = pairs(&[("apiKey", "id"), ("apiSecret", "s"), ("callbackUrl", "/cb")]);
        let err = OAuthUrlParams::from_query(&relative).authorize_url(base).unwrap_err();
        assert!(err.message.contains("absolute http(s) URL"), "{}", err.message);
    }

    #[test]
    fn oauth_url_json_body() {
        let p = OAuthUrlParams::from_json(&json!({"apiKey": "id", "apiSecret": "s", "callbackUrl":
            "https://app.example/cb", "scope": null, "isOAuthProxy": false}))
        .unwrap();
        assert_eq!(p.api_key.as_deref(), Some("id"));
        assert_eq!(p.scope, None);
        for (body, message) in [
            (json!([]), "JSON object"),
            (json!({"apiKey": 5}), "apiKey must be a string"),
            (json!({"state": {"a": 1}}), "state must be a string"),
        ] {
            assert!(OAuthUrlParams::from_json(&body).unwrap_err().message.contains(message), "{body}");
        }
    }

    #[test]
    fn debug_hides_the_secret() {
        let p = OAuthUrlParams { api_secret: Some("very-secret-value".into()), ..OAuthUrlParams::default() };
        let shown = format!("{p:?}");
        assert!(!shown.contains("very-secret-value") && shown.contains("<redacted>"), "{shown}");
    }

    #[test]
    fn authorize_requests_and_redirects() {
        let ok = AuthorizeRequest::from_query(&pairs(&[
            ("client_id", "id"),
            ("redirect_uri", "https://app.example/cb?tenant=a"),
            ("state", "st 1"),
        ]))
        .unwrap();
        assert_eq!(ok.decision, Decision::Allow);
        assert_eq!(ok.granted_location("C0DE"), "https://app.example/cb?tenant=a&code=C0DE&state=st%201");
        let deny = AuthorizeRequest::from_query(&pairs(&[
            ("client_id", "id"),
            ("redirect_uri", "https://app.example/cb"),
            ("decision", "deny"),
        ]))
        .unwrap();
        assert_eq!(
            deny.denied_location(),
            "https://app.example/cb?error=access_denied&error_description=The%20user%20denied%20access"
        );
        for (query, message) in [
            (vec![("redirect_uri", "https://app.example/cb")], "client_id is required"),
            (vec![("client_id", "id")], "redirect_uri is required"),
            (vec![("client_id", ""), ("redirect_uri", "https://app.example/cb")], "client_id is required"),
            (vec![("client_id", "id"), ("redirect_uri", "cb")], "absolute http(s) URL"),
            (
                vec![("client_id", "id"), ("redirect_uri", "https://app.example/cb"), ("decision", "maybe")],
                "decision must be",
            ),
        ] {
            let err = AuthorizeRequest::from_query(&pairs(&query)).unwrap_err();
            assert!(err.contains(message), "{query:?}: {err}");
        }
    }

    #[test]
    fn codes_are_single_use_bound_and_short_lived() {
        let mut rng = fastrand::Rng::with_seed(3);
        let mut p = Provider::default();
        let t0 = Instant::now();
        let cb = "https://app.example/cb";
        let a = p.issue_code(&mut rng, "id", cb, t0);
        let b = p.issue_code(&mut rng, "id", cb, t0);
        assert_ne!(a, b);
        assert_eq!(a.len(), CODE_LEN);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()), "{a}");

        let just_before = t0 + CODE_LIFETIME - Duration::from_secs(1);
        for (code, client, redirect, at, expected) in [
            ("unknown", "id", cb, t0, Err(CodeRejection::Invalid)),
            (a.as_str(), "other", cb, t0, Err(CodeRejection::OtherClient)),
            (a.as_str(), "id", "https://app.example/other", t0, Err(CodeRejection::OtherRedirect)),
            // Refused for the wrong client or redirect URI: still usable once.
            (a.as_str(), "id", cb, just_before, Ok(())),
            (a.as_str(), "id", cb, just_before, Err(CodeRejection::Invalid)),
            // Expired exactly CODE_LIFETIME after issue, and forgotten.
            (b.as_str(), "id", cb, t0 + CODE_LIFETIME, Err(CodeRejection::Invalid)),
            (b.as_str(), "id", cb, t0, Err(CodeRejection::Invalid)),
        ] {
            assert_eq!(p.exchange_code(code, client, redirect, at), expected, "{code} {client} {redirect}");
        }

        // Expired codes are dropped when the next one is issued.
        p.issue_code(&mut rng, "id", cb, t0);
        p.issue_code(&mut rng, "id", cb, t0 + CODE_LIFETIME);
        assert_eq!(p.codes.len(), 1);

        p.revoke_refresh_token("rt");
        assert!(p.is_revoked("rt") && !p.is_revoked("rt2"));
        p.clear();
        assert!(p.codes.is_empty() && !p.is_revoked("rt"));
    }
}
