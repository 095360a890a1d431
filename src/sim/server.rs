//! HTTP side of the simulator: routes, the fault/auth layer, the control API, the accept loop.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, CONTENT_TYPE, HOST, LOCATION, RETRY_AFTER};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::control::{CodeRequest, Credentials, FailNext, Faults, InstanceFlags, IssuedCode};
use super::error::ApiError;
use super::oauth::{self, AuthorizeRequest, Decision, OAuthUrlParams};
use super::state::{FaultAction, ListQuery, MAX_PAGE_SIZE, SimState};

/// Base path of the simulated platform API.
pub const BASE_PATH: &str = "/elements/api-v2";
/// Path of the control API.
pub const CONTROL_PATH: &str = "/_sim";
/// Response header carrying the next-page cursor.
const NEXT_PAGE_HEADER: &str = "elements-next-page-token";

/// Shared state behind one lock (never held across an `.await`).
pub(crate) struct Shared {
    state: Mutex<SimState>,
}

impl Shared {
    pub fn new(state: SimState) -> Arc<Self> {
        Arc::new(Shared { state: Mutex::new(state) })
    }

    fn lock(&self) -> MutexGuard<'_, SimState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Lets a handler close its connection without answering (the "dropped connection" fault).
#[derive(Clone)]
struct ConnectionKill(Arc<Notify>);

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    let api = Router::new()
        .route("/instances", get(list_instances).post(create_instance))
        .route(
            "/instances/{id}",
            get(get_instance).put(put_instance).patch(patch_instance).delete(delete_instance),
        )
        .route("/instances/{id}/enabled", put(enable).delete(disable))
        .route("/elements", get(elements))
        .route("/elements/{key}/configuration", get(element_configuration))
        .route("/elements/{key}/oauth/url", get(oauth_url_get).post(oauth_url_post))
        .route_layer(from_fn_with_state(shared.clone(), platform_layer))
        .fallback(unknown_route)
        .with_state(shared.clone());
    let control = Router::new()
        .route("/instances", get(control_instances))
        .route("/instances/{id}", get(control_instance).delete(control_delete).patch(control_flags))
        .route("/instances/{id}/revoke-token", post(control_revoke_token))
        .route("/instances/{id}/expire-refresh-token", post(control_expire_refresh_token))
        .route("/oauth/authorize", get(control_authorize))
        .route("/oauth/codes", post(control_issue_code))
        .route("/calls", get(control_calls).delete(control_reset_calls))
        .route("/faults", get(control_faults).put(control_set_faults).delete(control_clear_faults))
        .route("/faults/fail-next", post(control_fail_next))
        .route("/credentials", put(control_credentials))
        .route("/reset", post(control_reset))
        .with_state(shared);
    Router::new().nest(BASE_PATH, api).nest(CONTROL_PATH, control)
}

/// Serves `router` on `listener` until `shutdown` fires (or its sender is dropped).
pub(crate) async fn serve(listener: TcpListener, router: Router, mut shutdown: oneshot::Receiver<()>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
            accepted = listener.accept() => {
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        warn!(error = %e, "simulator: accept failed");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let kill = Arc::new(Notify::new());
                let router = router.clone();
                let kill_for_requests = kill.clone();
                let service = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
                    req.extensions_mut().insert(ConnectionKill(kill_for_requests.clone()));
                    let router = router.clone();
                    async move { router.oneshot(req).await }
                });
                connections.spawn(async move {
                    let connection = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! {
                        _ = connection => {}
                        // Dropping the connection closes the socket with no answer.
                        _ = kill.notified() => {}
                    }
                });
            }
        }
    }
    connections.abort_all();
    while connections.join_next().await.is_some() {}
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    (status, [(CONTENT_TYPE, HeaderValue::from_static("application/json"))], body.to_string()).into_response()
}

/// The platform's error body: `{"requestId": "...", "message": "..."}`.
fn error_response(shared: &Shared, status: u16, message: &str) -> Response {
    let request_id = shared.lock().request_id();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &json!({ "requestId": request_id, "message": message }))
}

/// The platform's error body of `e`, with `providerMessage` when the provider refused.
fn api_error(shared: &Shared, e: ApiError) -> Response {
    let Some(provider_message) = e.provider_message else {
        return error_response(shared, e.status, &e.message);
    };
    let request_id = shared.lock().request_id();
    let status = StatusCode::from_u16(e.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(
        status,
        &json!({ "requestId": request_id, "message": e.message, "providerMessage": provider_message }),
    )
}

fn respond(shared: &Shared, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => api_error(shared, e),
    }
}

/// Counts the call, applies faults, checks the `Authorization` header.
async fn platform_layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let mut operation = format!("{} {}", req.method(), route_template(req.uri().path()));
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
    if header.and_then(element_token).is_some() && operation == "GET /instances" {
        // The instance-scoped call a workload makes with its token.
        operation.push_str(" (Element)");
    }
    let is_write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let (plan, authorized) = {
        let mut st = shared.lock();
        (st.begin_call(&operation, is_write), st.authorized(header))
    };
    if let Some(latency) = plan.latency {
        tokio::time::sleep(latency).await;
    }
    match plan.action {
        FaultAction::Proceed => {}
        FaultAction::Drop => {
            info!(operation = %operation, "simulator: dropping the connection (injected fault)");
            if let Some(kill) = req.extensions().get::<ConnectionKill>() {
                kill.0.notify_one();
                return std::future::pending().await;
            }
            return error_response(&shared, 503, "connection drop requested but not possible");
        }
        FaultAction::Fail { status, retry_after, message } => {
            info!(operation = %operation, status, "simulator: failing the call (injected fault)");
            let message = message
                .unwrap_or_else(|| format!("Injected failure (HTTP {status}) from the platform simulator"));
            let mut resp = error_response(&shared, status, &message);
            if let Some(secs) = retry_after
                && let Ok(v) = HeaderValue::from_str(&secs.to_string())
            {
                resp.headers_mut().insert(RETRY_AFTER, v);
            }
            return resp;
        }
    }
    if !authorized {
        debug!(operation = %operation, "simulator: rejected credentials");
        return error_response(
            &shared,
            401,
            "Invalid Organization or User secret, or invalid Element token provided.",
        );
    }
    let resp = next.run(req).await;
    if let Some(delay) = plan.delay_after {
        tokio::time::sleep(delay).await;
    }
    debug!(operation = %operation, status = resp.status().as_u16(), "simulator: handled call");
    resp
}

/// The route template of a platform path (`/instances/123` → `/instances/{id}`), used to name
/// operations in call counts and fault scopes.
fn route_template(path: &str) -> String {
    let route = path.strip_prefix(BASE_PATH).unwrap_or(path);
    let segments: Vec<&str> = route.split('/').filter(|s| !s.is_empty()).collect();
    match segments.as_slice() {
        ["instances"] => "/instances".to_string(),
        ["instances", _] => "/instances/{id}".to_string(),
        ["instances", _, "enabled"] => "/instances/{id}/enabled".to_string(),
        ["elements"] => "/elements".to_string(),
        ["elements", _, "configuration"] => "/elements/{key}/configuration".to_string(),
        ["elements", _, "oauth", "url"] => "/elements/{key}/oauth/url".to_string(),
        _ => route.to_string(),
    }
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse::<i64>().map_err(|_| ApiError::bad_request("instance id must be an integer (/instances/{id})"))
}

fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!(
            "request body is not valid JSON (line {}, column {})",
            e.line(),
            e.column()
        ))
    })
}

async fn unknown_route(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    error_response(
        &shared,
        404,
        &format!(
            "No such resource: {} {} (the simulator implements /instances, /instances/{{id}}, \
             /instances/{{id}}/enabled, /elements/{{key}}/configuration and \
             /elements/{{key}}/oauth/url)",
            req.method(),
            req.uri().path()
        ),
    )
}

/// The `Element <token>` pair of an `Authorization` header, if any.
fn element_token(header: &str) -> Option<&str> {
    header.split(',').find_map(|pair| {
        let (kind, value) = pair.trim().split_once(char::is_whitespace)?;
        kind.eq_ignore_ascii_case("element").then(|| value.trim()).filter(|v| !v.is_empty())
    })
}

async fn list_instances(
    State(shared): State<Arc<Shared>>,
    headers: axum::http::HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    // With an Element token: the operation on the instance that owns it (API.md §2).
    if let Some(token) = headers.get(AUTHORIZATION).and_then(|v| v.to_str().ok()).and_then(element_token) {
        let result = shared.lock().get_by_token(token);
        return respond(&shared, result);
    }
    let mut q = ListQuery { page_size: MAX_PAGE_SIZE, ..ListQuery::default() };
    for (k, v) in params {
        match k.as_str() {
            "tags[]" | "tags" => q.tags.push(v),
            "searchText" => q.search_text = Some(v).filter(|s| !s.is_empty()),
            "nextPage" => q.next_page = Some(v).filter(|s| !s.is_empty()),
            "hydrate" => q.hydrate = v.eq_ignore_ascii_case("true"),
            "pageSize" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => q.page_size = n.min(MAX_PAGE_SIZE),
                _ => {
                    return error_response(&shared, 400, "pageSize must be an integer from 1 to 200");
                }
            },
            _ => {}
        }
    }
    let result = shared.lock().list(&q);
    page_response(&shared, result)
}

async fn create_instance(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let result = parse_body(&body).and_then(|body| shared.lock().create(&body));
    respond(&shared, result)
}

async fn get_instance(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    let result = parse_id(&id).and_then(|id| shared.lock().get(id));
    respond(&shared, result)
}

async fn put_instance(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let result = parse_id(&id).and_then(|id| {
        let body = parse_body(&body)?;
        shared.lock().reprovision(id, &body)
    });
    respond(&shared, result)
}

async fn patch_instance(State(shared): State<Arc<Shared>>, Path(id): Path<String>, body: Bytes) -> Response {
    let result = parse_id(&id).and_then(|id| {
        let body = parse_body(&body)?;
        shared.lock().patch(id, &body)
    });
    respond(&shared, result)
}

async fn delete_instance(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    match parse_id(&id).and_then(|id| shared.lock().delete(id)) {
        Ok(()) => StatusCode::OK.into_response(),
        Err(e) => api_error(&shared, e),
    }
}

async fn set_enabled(shared: Arc<Shared>, id: String, enabled: bool) -> Response {
    let result = parse_id(&id).and_then(|id| shared.lock().set_enabled(id, enabled));
    respond(&shared, result)
}

async fn enable(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    set_enabled(shared, id, true).await
}

async fn disable(State(shared): State<Arc<Shared>>, Path(id): Path<String>) -> Response {
    set_enabled(shared, id, false).await
}

/// A page of a list answer, with the next page's cursor in its header.
fn page_response(shared: &Arc<Shared>, result: Result<(Vec<Value>, Option<String>), ApiError>) -> Response {
    match result {
        Ok((page, next)) => {
            let mut resp = json_response(StatusCode::OK, &Value::Array(page));
            if let Some(next) = next
                && let Ok(v) = HeaderValue::from_str(&next)
            {
                resp.headers_mut().insert(NEXT_PAGE_HEADER, v);
            }
            resp
        }
        Err(e) => api_error(shared, e),
    }
}

async fn elements(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let (mut page_size, mut next) = (MAX_PAGE_SIZE, None);
    for (k, v) in params {
        match k.as_str() {
            "nextPage" => next = Some(v).filter(|s| !s.is_empty()),
            "pageSize" => match v.parse::<usize>() {
                Ok(n) if n >= 1 => page_size = n.min(MAX_PAGE_SIZE),
                _ => return error_response(&shared, 400, "pageSize must be an integer from 1 to 200"),
            },
            _ => {}
        }
    }
    let result = shared.lock().elements(page_size, next.as_deref());
    page_response(&shared, result)
}

async fn element_configuration(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    let result = shared.lock().element_configuration(&key);
    respond(&shared, result)
}

/// The fake provider's authorization page on the host the caller used:
/// `http://<Host>/_sim/oauth/authorize`.
fn authorize_base(headers: &HeaderMap) -> Result<String, ApiError> {
    headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .filter(|h| !h.contains('@') && h.parse::<axum::http::uri::Authority>().is_ok())
        .map(|host| format!("http://{host}{CONTROL_PATH}/oauth/authorize"))
        .ok_or_else(|| ApiError::bad_request("the request has no usable Host header"))
}

async fn oauth_url_get(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let params = OAuthUrlParams::from_query(&params);
    let result = oauth_url(&shared, &key, &headers, || Ok(params));
    respond(&shared, result)
}

async fn oauth_url_post(
    State(shared): State<Arc<Shared>>,
    Path(key): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let result = oauth_url(&shared, &key, &headers, || OAuthUrlParams::from_json(&parse_body(&body)?));
    respond(&shared, result)
}

/// Both variants of `/elements/{key}/oauth/url`: an unknown or non-OAuth element is refused
/// before the parameters are looked at.
fn oauth_url(
    shared: &Shared,
    key: &str,
    headers: &HeaderMap,
    params: impl FnOnce() -> Result<OAuthUrlParams, ApiError>,
) -> Result<Value, ApiError> {
    shared.lock().oauth_element(key)?;
    let base = authorize_base(headers)?;
    let params = params()?;
    shared.lock().oauth_url(key, &params, &base)
}

// ---- control API ----

fn control_json<T: serde::Serialize>(value: &T) -> Response {
    match serde_json::to_value(value) {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn control_not_found(id: i64) -> Response {
    json_response(StatusCode::NOT_FOUND, &json!({"message": format!("no instance {id}")}))
}

fn control_error(status: StatusCode, message: &str) -> Response {
    json_response(status, &json!({ "message": message }))
}

async fn control_instances(State(shared): State<Arc<Shared>>) -> Response {
    let list = shared.lock().sim_instances();
    control_json(&list)
}

async fn control_instance(State(shared): State<Arc<Shared>>, Path(id): Path<i64>) -> Response {
    let found = shared.lock().sim_instance_by_id(id);
    match found {
        Some(i) => control_json(&i),
        None => control_not_found(id),
    }
}

async fn control_delete(State(shared): State<Arc<Shared>>, Path(id): Path<i64>) -> Response {
    let result = shared.lock().delete(id);
    match result {
        Ok(()) => control_json(&json!({"deleted": id})),
        Err(_) => control_not_found(id),
    }
}

async fn control_flags(
    State(shared): State<Arc<Shared>>,
    Path(id): Path<i64>,
    axum::Json(flags): axum::Json<InstanceFlags>,
) -> Response {
    let updated = shared.lock().set_flags(id, flags);
    match updated {
        Some(i) => control_json(&i),
        None => control_not_found(id),
    }
}

async fn control_revoke_token(State(shared): State<Arc<Shared>>, Path(id): Path<i64>) -> Response {
    let revoked = shared.lock().revoke_token(id);
    match revoked {
        Some(i) => control_json(&i),
        None => control_not_found(id),
    }
}

async fn control_calls(State(shared): State<Arc<Shared>>) -> Response {
    let calls = shared.lock().calls();
    control_json(&calls)
}

async fn control_reset_calls(State(shared): State<Arc<Shared>>) -> Response {
    shared.lock().reset_calls();
    control_json(&json!({}))
}

async fn control_faults(State(shared): State<Arc<Shared>>) -> Response {
    let faults = shared.lock().faults();
    control_json(&faults)
}

async fn control_set_faults(
    State(shared): State<Arc<Shared>>,
    axum::Json(faults): axum::Json<Faults>,
) -> Response {
    shared.lock().set_faults(faults);
    control_json(&json!({}))
}

async fn control_clear_faults(State(shared): State<Arc<Shared>>) -> Response {
    shared.lock().set_faults(Faults::default());
    control_json(&json!({}))
}

async fn control_fail_next(
    State(shared): State<Arc<Shared>>,
    axum::Json(fail): axum::Json<FailNext>,
) -> Response {
    shared.lock().push_fail_next(fail);
    control_json(&json!({}))
}

async fn control_credentials(
    State(shared): State<Arc<Shared>>,
    axum::Json(c): axum::Json<Credentials>,
) -> Response {
    shared.lock().set_credentials(c.user_secret, c.organization_secret);
    control_json(&json!({}))
}

async fn control_reset(State(shared): State<Arc<Shared>>) -> Response {
    shared.lock().reset();
    control_json(&json!({}))
}

async fn control_expire_refresh_token(State(shared): State<Arc<Shared>>, Path(id): Path<i64>) -> Response {
    let result = shared.lock().expire_refresh_token(id);
    match result {
        Ok(i) => {
            info!(id, "simulator: refresh token expired (instance invalid and disabled)");
            control_json(&i)
        }
        Err(e) if e.status == 404 => control_not_found(id),
        Err(e) => control_error(StatusCode::from_u16(e.status).unwrap_or(StatusCode::CONFLICT), &e.message),
    }
}

/// The fake provider's authorization page: the user "approves" at once and is redirected to
/// `redirect_uri` with a fresh code (or, with `decision=deny`, with `error=access_denied`).
async fn control_authorize(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
    let request = match AuthorizeRequest::from_query(&params) {
        Ok(r) => r,
        Err(message) => return (StatusCode::BAD_REQUEST, message).into_response(),
    };
    let location = match request.decision {
        Decision::Allow => {
            let code = shared.lock().issue_code(&request.client_id, &request.redirect_uri);
            request.granted_location(&code)
        }
        Decision::Deny => request.denied_location(),
    };
    match HeaderValue::from_str(&location) {
        Ok(v) => (StatusCode::FOUND, [(LOCATION, v)]).into_response(),
        Err(_) => (StatusCode::BAD_REQUEST, "redirect_uri must be ASCII (percent-encode it)").into_response(),
    }
}

async fn control_issue_code(
    State(shared): State<Arc<Shared>>,
    axum::Json(req): axum::Json<CodeRequest>,
) -> Response {
    if req.client_id.trim().is_empty() {
        return control_error(StatusCode::BAD_REQUEST, "clientId is required");
    }
    if !oauth::is_absolute_http_url(&req.redirect_uri) {
        return control_error(
            StatusCode::BAD_REQUEST,
            "redirectUri must be an absolute http(s) URL (without a fragment)",
        );
    }
    let code = shared.lock().issue_code(&req.client_id, &req.redirect_uri);
    control_json(&IssuedCode { code })
}
