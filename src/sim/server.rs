//! HTTP side of the simulator: routes, the fault/auth layer, the control API, the accept loop.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::http::header::{AUTHORIZATION, RETRY_AFTER};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{Next, from_fn_with_state};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::{Notify, oneshot};
use tokio::task::JoinSet;
use tower::ServiceExt;
use tracing::{debug, info, warn};

use super::control::{Credentials, FailNext, Faults, InstanceFlags};
use super::state::{ApiError, FaultAction, ListQuery, MAX_PAGE_SIZE, SimState};

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
        .route("/elements/{key}/configuration", get(element_configuration))
        .route_layer(from_fn_with_state(shared.clone(), platform_layer))
        .fallback(unknown_route)
        .with_state(shared.clone());
    let control = Router::new()
        .route("/instances", get(control_instances))
        .route("/instances/{id}", get(control_instance).delete(control_delete).patch(control_flags))
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
    (
        status,
        [(axum::http::header::CONTENT_TYPE, HeaderValue::from_static("application/json"))],
        body.to_string(),
    )
        .into_response()
}

/// The platform's error body: `{"requestId": "...", "message": "..."}`.
fn error_response(shared: &Shared, status: u16, message: &str) -> Response {
    let request_id = shared.lock().request_id();
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    json_response(status, &json!({ "requestId": request_id, "message": message }))
}

fn api_error(shared: &Shared, e: ApiError) -> Response {
    error_response(shared, e.status, &e.message)
}

fn respond(shared: &Shared, result: Result<Value, ApiError>) -> Response {
    match result {
        Ok(v) => json_response(StatusCode::OK, &v),
        Err(e) => api_error(shared, e),
    }
}

/// Counts the call, applies faults, checks the `Authorization` header.
async fn platform_layer(State(shared): State<Arc<Shared>>, req: Request, next: Next) -> Response {
    let operation = format!("{} {}", req.method(), route_template(req.uri().path()));
    let is_write = !matches!(*req.method(), Method::GET | Method::HEAD);
    let header = req.headers().get(AUTHORIZATION).and_then(|v| v.to_str().ok());
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
        FaultAction::Fail { status, retry_after } => {
            info!(operation = %operation, status, "simulator: failing the call (injected fault)");
            let mut resp = error_response(
                &shared,
                status,
                &format!("Injected failure (HTTP {status}) from the platform simulator"),
            );
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
        ["elements", _, "configuration"] => "/elements/{key}/configuration".to_string(),
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
             /instances/{{id}}/enabled and /elements/{{key}}/configuration)",
            req.method(),
            req.uri().path()
        ),
    )
}

async fn list_instances(
    State(shared): State<Arc<Shared>>,
    Query(params): Query<Vec<(String, String)>>,
) -> Response {
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
        Err(e) => api_error(&shared, e),
    }
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

async fn element_configuration(State(shared): State<Arc<Shared>>, Path(key): Path<String>) -> Response {
    let result = shared.lock().element_configuration(&key);
    respond(&shared, result)
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
