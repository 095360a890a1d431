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

/// Callback requests served per second, by the whole process (a person follows a link now and
/// then); above it and its burst, a request is answered 429 at once: no state check, no API call,
/// no log line.
pub const REQUESTS_PER_SECOND: u32 = 10;
/// Requests served at once above [`REQUESTS_PER_SECOND`].
pub const BURST: u32 = 20;

/// What the callback needs.
pub struct CallbackState {
    /// Reads instances, creates grant Secrets.
    pub client: kube::Client,
    /// Verifies `state`.
    pub key: StateKey,
    /// Bounds what a flood of requests costs (API calls, log lines).
    pub limiter: governor::DefaultDirectRateLimiter,
}

impl CallbackState {
    /// The callback's state with the default limit ([`REQUESTS_PER_SECOND`], [`BURST`]).
    pub fn new(client: kube::Client, key: StateKey) -> CallbackState {
        let nonzero = |n| std::num::NonZeroU32::new(n).unwrap_or(std::num::NonZeroU32::MIN);
        let quota = governor::Quota::per_second(nonzero(REQUESTS_PER_SECOND)).allow_burst(nonzero(BURST));
        CallbackState { client, key, limiter: governor::RateLimiter::direct(quota) }
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
    error_description: Option<String>,
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

/// Serves the callback on `addr` until `shutdown` completes. Returns the bound address and the
/// server task.
pub async fn serve(
    addr: SocketAddr,
    state: CallbackState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = router(state);
    let task = tokio::spawn(async move {
        if let Err(err) = axum::serve(listener, app).with_graceful_shutdown(shutdown).await {
            tracing::error!(%err, "OAuth callback server failed");
        }
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
    if state.limiter.check().is_err() {
        return page(
            StatusCode::TOO_MANY_REQUESTS,
            "Please try again",
            "The operator is answering many requests right now. Nothing was changed; reload this page in a moment.",
        );
    }
    let outcome = handle(&state, redirect).await;
    tracing::info!(outcome = outcome.label, instance = %outcome.instance, "OAuth callback");
    page(outcome.status, outcome.title, &outcome.text)
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
        (_, Some(error)) if !error.is_empty() => GrantResult::Denied {
            error: error.chars().take(200).collect(),
            description: redirect.error_description.as_ref().map(|d| d.chars().take(500).collect()),
        },
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
        let redirect = Redirect {
            code: Some("the-secret-code".into()),
            state: Some("the-state".into()),
            error: None,
            error_description: None,
        };
        let shown = format!("{redirect:?}");
        assert!(!shown.contains("the-secret-code") && !shown.contains("the-state"), "{shown}");
    }
}
