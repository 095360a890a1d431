//! The OAuth callback endpoint: where the provider sends the person's browser after they
//! approved (or denied) the access. It checks the `state`, and hands the code to the reconcile
//! through the instance's grant Secret. Every replica serves it (it needs no leadership): the
//! reconcile, wherever it runs, picks the Secret up from its watch.
//!
//! The page says in plain words what happened; it never shows the code, the state or an
//! internal error. Nothing is written for a state this operator did not issue, an expired one,
//! or one that was used or replaced already.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, PostParams};
use kube::{Resource, ResourceExt};
use secrecy::SecretString;
use serde::Deserialize;

use super::{AuthorizationRequest, CALLBACK_PATH, GrantResult, StateError, StateKey, grant_secret};
use crate::api::ConnectorInstance;

/// Callback requests with a valid state served per second, by the whole process (a person
/// follows a link now and then); above it and its burst, such a request is answered 429 at once,
/// with no API call and no log line. A state this operator did not issue (or an expired one) is
/// refused before any limit is spent: a flood of forged requests cannot keep genuine ones out.
pub const REQUESTS_PER_SECOND: u32 = 10;
/// Requests served at once above [`REQUESTS_PER_SECOND`].
pub const BURST: u32 = 20;
/// Requests with a valid state of one instance served per second (a replayed link throttles only
/// its own instance), and at once above that.
pub const PER_INSTANCE_PER_SECOND: u32 = 1;
/// See [`PER_INSTANCE_PER_SECOND`].
pub const PER_INSTANCE_BURST: u32 = 3;
/// A provider's error answer (`?error=...`, which needs no provider login) is taken for one
/// instance at most once per this many seconds: each resets the authorization, so anyone who can
/// read the URL could otherwise keep resetting it.
pub const DENIAL_INTERVAL_SECONDS: u64 = 60;
/// How long a client may take to send a request's headers before its connection is closed.
pub const HEADER_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// Connections served at once; more wait to be accepted.
pub const MAX_CONNECTIONS: usize = 256;
/// How many instances the per-instance limits remember before the idle ones are forgotten.
const MAX_REMEMBERED_INSTANCES: usize = 4096;

/// The error codes of RFC 6749 §4.1.2.1: a provider's error is shown as one of these (any other
/// as `unknown_error`), never as the text of the redirect.
pub const OAUTH_ERROR_CODES: [&str; 7] = [
    "invalid_request",
    "unauthorized_client",
    "access_denied",
    "unsupported_response_type",
    "invalid_scope",
    "server_error",
    "temporarily_unavailable",
];

/// The allow-listed code of a provider's error (see [`OAUTH_ERROR_CODES`]).
pub fn oauth_error_code(error: &str) -> &'static str {
    OAUTH_ERROR_CODES.iter().find(|code| **code == error.trim()).copied().unwrap_or("unknown_error")
}

/// What the callback needs.
pub struct CallbackState {
    /// Reads instances, creates grant Secrets.
    pub client: kube::Client,
    /// Verifies `state`.
    pub key: StateKey,
    /// What requests with a valid state may cost.
    pub limits: Limits,
}

impl CallbackState {
    /// The callback's state with the default limits.
    pub fn new(client: kube::Client, key: StateKey) -> CallbackState {
        CallbackState { client, key, limits: Limits::default() }
    }
}

/// The limits on requests with a valid state: in all, per instance, and of error answers.
#[derive(Debug)]
pub struct Limits {
    /// Bounds what valid requests cost together (API calls, log lines).
    pub limiter: governor::DefaultDirectRateLimiter,
    /// Bounds the valid requests of one instance (keyed by its UID).
    pub per_instance: governor::DefaultKeyedRateLimiter<String>,
    /// One provider error per instance per [`DENIAL_INTERVAL_SECONDS`].
    pub denials: governor::DefaultKeyedRateLimiter<String>,
}

impl Default for Limits {
    fn default() -> Self {
        let nonzero = |n| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(nonzero(REQUESTS_PER_SECOND)).allow_burst(nonzero(BURST));
        let per_instance = governor::Quota::per_second(nonzero(PER_INSTANCE_PER_SECOND))
            .allow_burst(nonzero(PER_INSTANCE_BURST));
        let denials = governor::Quota::with_period(std::time::Duration::from_secs(DENIAL_INTERVAL_SECONDS))
            .unwrap_or(governor::Quota::per_minute(nonzero(1)));
        Limits {
            limiter: governor::RateLimiter::direct(quota),
            per_instance: governor::RateLimiter::keyed(per_instance),
            denials: governor::RateLimiter::keyed(denials),
        }
    }
}

impl Limits {
    /// Whether a valid request of instance `uid` may be served now (per instance, then in all).
    fn admit(&self, uid: &str) -> bool {
        if self.per_instance.len() > MAX_REMEMBERED_INSTANCES {
            self.per_instance.retain_recent();
        }
        self.per_instance.check_key(&uid.to_string()).is_ok() && self.limiter.check().is_ok()
    }

    /// Whether a provider error for instance `uid` may be taken now.
    fn admit_denial(&self, uid: &str) -> bool {
        if self.denials.len() > MAX_REMEMBERED_INSTANCES {
            self.denials.retain_recent();
        }
        self.denials.check_key(&uid.to_string()).is_ok()
    }
}

impl std::fmt::Debug for CallbackState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CallbackState").finish_non_exhaustive()
    }
}

/// The query of the provider's redirect.
#[derive(Deserialize)]
pub struct Redirect {
    code: Option<String>,
    state: Option<String>,
    error: Option<String>,
}

impl std::fmt::Debug for Redirect {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redirect")
            .field("code", &self.code.as_ref().map(|_| "…"))
            .field("state", &self.state.as_ref().map(|_| "…"))
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

/// The callback's router (`GET /oauth/callback`).
pub fn router(state: CallbackState) -> Router {
    Router::new()
        .route(CALLBACK_PATH, get(callback))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(Arc::new(state))
}

/// Serves the callback on `addr` until `shutdown` completes (HTTP/1.1; a client that does not
/// send its headers within [`HEADER_READ_TIMEOUT`] is disconnected, headers are limited to 16 KiB,
/// and at most [`MAX_CONNECTIONS`] connections are served at once). Returns the bound address and
/// the server task.
pub async fn serve(
    addr: SocketAddr,
    state: CallbackState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    use tower::ServiceExt as _;
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(state);
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    let task = tokio::spawn(async move {
        let mut connections = tokio::task::JoinSet::new();
        tokio::pin!(shutdown);
        loop {
            // Waiting for a free slot (all connections busy) still ends with `shutdown`.
            let slot = tokio::select! {
                () = &mut shutdown => break,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => break,
                },
            };
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => continue,
                accepted = listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(err) => {
                    tracing::warn!(%err, "OAuth callback: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            };
            let app = app.clone();
            let service =
                hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    app.clone().oneshot(request)
                });
            connections.spawn(async move {
                let _slot = slot;
                let connection = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(HEADER_READ_TIMEOUT)
                    .max_buf_size(16 * 1024)
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                if let Err(err) = connection.await {
                    tracing::debug!(%err, "OAuth callback connection ended");
                }
            });
        }
        connections.abort_all();
        while connections.join_next().await.is_some() {}
    });
    Ok((bound, task))
}

fn now_unix() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default()
}

/// An HTML page with a title and one paragraph (both escaped).
fn page(status: StatusCode, title: &str, text: &str) -> Response {
    let body = format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>{title}</title></head>\
         <body style=\"font-family: sans-serif; max-width: 40em; margin: 3em auto\">\
         <h1>{title}</h1><p>{text}</p></body></html>\n",
        title = escape(title),
        text = escape(text)
    );
    (
        status,
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
        ],
        body,
    )
        .into_response()
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '&' => out.push_str("&amp;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

async fn callback(State(state): State<Arc<CallbackState>>, Query(redirect): Query<Redirect>) -> Response {
    let outcome = handle(&state, redirect).await;
    // A request whose state this operator did not issue, or one over a limit, leaves no log line.
    if !outcome.instance.is_empty() && outcome.status != StatusCode::TOO_MANY_REQUESTS {
        tracing::info!(outcome = outcome.label, instance = %outcome.instance, "OAuth callback");
    }
    page(outcome.status, outcome.title, &outcome.text)
}

fn too_many(text: &str) -> Outcome {
    outcome(StatusCode::TOO_MANY_REQUESTS, "limited", "Please try again", text.into())
}

/// The outcome of one redirect.
struct Outcome {
    status: StatusCode,
    label: &'static str,
    instance: String,
    title: &'static str,
    text: String,
}

fn outcome(status: StatusCode, label: &'static str, title: &'static str, text: String) -> Outcome {
    Outcome { status, label, instance: String::new(), title, text }
}

/// The operator's RBAC refuses what the callback needs (get ConnectorInstances, create Secrets):
/// an administrator must act, reloading will not help.
fn forbidden(who: &str) -> Outcome {
    outcome(
        StatusCode::INTERNAL_SERVER_ERROR,
        "forbidden",
        "The operator may not complete this",
        format!(
            "The operator's permissions do not allow it to read ConnectorInstance {who} or to store the authorization (get connectorinstances, create secrets). Nothing was changed. Ask the cluster's administrator to install the chart's RBAC, then start the authorization again from the URL in the instance's status."
        ),
    )
}

async fn handle(state: &CallbackState, redirect: Redirect) -> Outcome {
    let Some(raw_state) = redirect.state.as_deref().filter(|s| !s.is_empty()) else {
        return outcome(
            StatusCode::BAD_REQUEST,
            "no_state",
            "This link is incomplete",
            "The provider's redirect carries no state, so it cannot be matched to a connector instance. Nothing was changed. Start the authorization again from the URL in the instance's status.".into(),
        );
    };
    let request = match AuthorizationRequest::verify(raw_state, &state.key, now_unix()) {
        Ok(request) => request,
        Err(StateError::Forged) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "forged",
                "This link was not issued here",
                "The state of this redirect was not issued by this operator, or it was altered. Nothing was changed.".into(),
            );
        }
        Err(StateError::Expired) => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "expired",
                "This link has expired",
                "The authorization link you used has expired. Nothing was changed. The instance's status (kubectl describe) shows a new link.".into(),
            );
        }
    };
    let who = format!("{}/{}", request.namespace, request.name);
    if !state.limits.admit(&request.uid) {
        let mut limited = too_many(
            "The operator is answering many requests for this connector instance right now. Nothing was changed; reload this page in a moment.",
        );
        limited.instance = who;
        return limited;
    }
    let mut result = decide(state, &request, &redirect, &who).await;
    result.instance = who;
    result
}

async fn decide(
    state: &CallbackState,
    request: &AuthorizationRequest,
    redirect: &Redirect,
    who: &str,
) -> Outcome {
    let instances: Api<ConnectorInstance> = Api::namespaced(state.client.clone(), &request.namespace);
    let ci = match instances.get_opt(&request.name).await {
        Ok(Some(ci)) if ci.uid().as_deref() == Some(request.uid.as_str()) => ci,
        Ok(_) => {
            return outcome(
                StatusCode::GONE,
                "gone",
                "This connector instance no longer exists",
                format!(
                    "ConnectorInstance {who} was deleted (or replaced by a new one of the same name) since this link was issued. Nothing was changed."
                ),
            );
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(error = %status.message, instance = %who, "OAuth callback: may not read the instance");
            return forbidden(who);
        }
        Err(err) => {
            tracing::warn!(error = %err, instance = %who, "OAuth callback: cannot read the instance");
            return outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Please try again",
                "The operator cannot reach the Kubernetes API right now. Nothing was changed; reload this page in a moment.".into(),
            );
        }
    };
    let pending = ci.status.as_ref().and_then(|s| s.authorization.as_ref());
    let current = pending.is_some_and(|p| p.id == request.id && p.generation == request.generation)
        && ci.metadata.generation == Some(request.generation)
        && ci.metadata.deletion_timestamp.is_none();
    if !current {
        return outcome(
            StatusCode::CONFLICT,
            "replaced",
            "This link was already used",
            format!(
                "This authorization link of ConnectorInstance {who} was already used, or a newer one replaced it. Nothing was changed. The instance's status shows whether a new authorization is needed."
            ),
        );
    }
    let result = match (&redirect.code, &redirect.error) {
        (Some(code), _) if !code.is_empty() => GrantResult::Code(SecretString::from(code.clone())),
        (_, Some(error)) if !error.is_empty() => {
            if !state.limits.admit_denial(&request.uid) {
                return too_many(
                    "An error answer for this connector instance was received less than a minute ago. Nothing was changed; the instance's status shows the current authorization link.",
                );
            }
            // The redirect's text is anyone's (no provider login is needed to send it): only the
            // error code of RFC 6749 travels on, never the description.
            GrantResult::Denied { error: oauth_error_code(error).to_string() }
        }
        _ => {
            return outcome(
                StatusCode::BAD_REQUEST,
                "no_code",
                "The provider sent no code",
                "The provider's redirect carries neither a code nor an error. Nothing was changed. Start the authorization again from the URL in the instance's status.".into(),
            );
        }
    };
    let Some(owner) = ci.controller_owner_ref(&()) else {
        return outcome(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "Please try again",
            "The instance cannot be referenced. Nothing was changed.".into(),
        );
    };
    let secret = grant_secret(request, &result, owner);
    let secrets: Api<Secret> = Api::namespaced(state.client.clone(), &request.namespace);
    match secrets
        .create(
            &PostParams { field_manager: Some(crate::api::FIELD_MANAGER.into()), ..PostParams::default() },
            &secret,
        )
        .await
    {
        Ok(_) => {}
        Err(kube::Error::Api(status)) if status.code == 409 => {
            return outcome(
                StatusCode::CONFLICT,
                "replaced",
                "This link was already used",
                format!(
                    "An answer to this authorization of ConnectorInstance {who} was received already. Nothing was changed."
                ),
            );
        }
        Err(kube::Error::Api(status)) if status.code == 403 => {
            tracing::warn!(error = %status.message, instance = %who, "OAuth callback: may not store the grant");
            return forbidden(who);
        }
        Err(err) => {
            tracing::warn!(error = %err, instance = %who, "OAuth callback: cannot store the grant");
            return outcome(
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Please try again",
                "The operator cannot store the authorization right now. Nothing was changed; reload this page in a moment.".into(),
            );
        }
    }
    match result {
        GrantResult::Code(_) => outcome(
            StatusCode::OK,
            "accepted",
            "Authorization received",
            format!(
                "Thank you. The operator is now completing ConnectorInstance {who}; you can close this page. `kubectl get connectorinstance -n {} {}` shows it Ready in a few seconds.",
                request.namespace, request.name
            ),
        ),
        GrantResult::Denied { error, .. } => outcome(
            StatusCode::OK,
            "denied",
            "Authorization denied",
            format!(
                "The provider reports that the access was not granted ({error}). ConnectorInstance {who} stays without an authorization; its status says so and shows a new link to try again."
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_escape_what_they_echo() {
        assert_eq!(
            escape("<script>\"x\" & 'y'</script>\n"),
            "&lt;script&gt;&quot;x&quot; &amp; &#39;y&#39;&lt;/script&gt; "
        );
    }

    #[test]
    fn the_debug_of_a_redirect_hides_code_and_state() {
        let redirect =
            Redirect { code: Some("the-secret-code".into()), state: Some("the-state".into()), error: None };
        let shown = format!("{redirect:?}");
        assert!(!shown.contains("the-secret-code") && !shown.contains("the-state"), "{shown}");
    }

    #[test]
    fn provider_errors_are_reduced_to_the_rfc_codes() {
        assert_eq!(oauth_error_code("access_denied"), "access_denied");
        assert_eq!(oauth_error_code(" server_error "), "server_error");
        assert_eq!(oauth_error_code("<script>alert(1)</script>"), "unknown_error");
        assert_eq!(oauth_error_code(&"x".repeat(700)), "unknown_error");
        for code in OAUTH_ERROR_CODES {
            assert_eq!(oauth_error_code(code), code);
        }
    }

    #[test]
    fn valid_requests_are_limited_per_instance_and_denials_once_a_minute() {
        let state = Limits::default();
        let served = (0..10).filter(|_| state.admit("uid-a")).count();
        assert_eq!(served, PER_INSTANCE_BURST as usize, "one instance's replays hit its own limit");
        assert!(state.admit("uid-b"), "another instance is served meanwhile");
        assert!(state.admit_denial("uid-a"));
        assert!(!state.admit_denial("uid-a"), "a second error answer within the minute is refused");
        assert!(state.admit_denial("uid-b"));
    }
}
