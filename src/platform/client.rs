//! The HTTP client: auth header, timeouts, retries with backoff and `Retry-After`, a shared
//! client-side rate limit, paging, body size caps.

use std::fmt;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use governor::clock::Clock;
use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use reqwest::header::{ACCEPT, AUTHORIZATION, CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::{Method, Url};
use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, debug_span, warn};

use super::error::{PlatformError, parse_retry_after, truncate};
use super::install_crypto_provider;
use super::model::{
    DeleteOutcome, Element, ElementConfig, ElementConfigList, ElementInstance, InstanceRequest,
    OAuthRedirect, OAuthUrlRequest, patch_body,
};

/// Largest response body accepted. The instances API answers in kilobytes; a page of 200
/// hydrated instances stays well under it. Whatever a platform (any URL a namespace editor names)
/// sends beyond it is refused unread.
pub const MAX_RESPONSE_BYTES: usize = 2 * 1024 * 1024;
/// Response bodies held at once by every client of the process together: a body's share is
/// reserved before it is read (its `Content-Length`, else [`MAX_RESPONSE_BYTES`]) and released
/// once it is parsed. With more in flight, a read waits for its share (within the request's
/// timeout), so the memory hostile platforms can cost is bounded however many answer at once.
pub const RESPONSE_BUDGET_BYTES: usize = 48 * 1024 * 1024;
/// The unit of [`RESPONSE_BUDGET_BYTES`] reservations.
const BUDGET_UNIT: usize = 64 * 1024;
/// Largest error body read; the rest is dropped unread.
const MAX_ERROR_BODY_BYTES: usize = 64 * 1024;
/// Response header carrying the cursor of the next page of `GET /instances`.
pub const NEXT_PAGE_HEADER: &str = "elements-next-page-token";
/// Page size the platform allows at most (and the default).
pub const MAX_PAGE_SIZE: u32 = 200;
/// A tag search stops (with a protocol error) after this many pages (10,000 instances at the
/// largest page size: an ownership tag is on one instance, a search that pages on and on comes
/// from a platform that ignores the tag filter, or a hostile one).
pub const MAX_SEARCH_PAGES: usize = 50;
/// ... or after this many bytes of answers in all.
pub const MAX_SEARCH_BYTES: usize = 32 * 1024 * 1024;
/// A scan of a cluster's instances (one search by the cluster tag) stops (with a protocol error)
/// after this many pages (50,000 instances at the largest page size) ...
pub const MAX_SCAN_PAGES: usize = 250;
/// ... or after this many bytes of answers in all (each page is dropped once read).
pub const MAX_SCAN_BYTES: usize = 160 * 1024 * 1024;

/// The process-wide budget of response bytes (see [`RESPONSE_BUDGET_BYTES`]).
fn response_budget() -> Arc<tokio::sync::Semaphore> {
    static BUDGET: std::sync::LazyLock<Arc<tokio::sync::Semaphore>> = std::sync::LazyLock::new(|| {
        Arc::new(tokio::sync::Semaphore::new(RESPONSE_BUDGET_BYTES / BUDGET_UNIT))
    });
    BUDGET.clone()
}

/// What a tag search keeps of each instance found: its id and tags, nothing else (the rest of a
/// page is skipped while it is parsed).
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Tagged {
    /// Instance id.
    #[serde(deserialize_with = "super::model::de_id")]
    pub id: i64,
    /// Tags (accepted as strings or as `{id, name}` objects).
    #[serde(default, deserialize_with = "super::model::de_tags")]
    pub tags: Vec<String>,
}

/// Sees every HTTP exchange with the platform and every wait for the client's rate limiter (the
/// operator's metrics). It gets the operation (`GET /instances/{id}`: a route, never an id), the
/// HTTP status (`None` when no answer came: timeout, connection error) and durations, nothing else.
pub trait CallObserver: Send + Sync + fmt::Debug {
    /// One HTTP exchange ended.
    fn exchange(&self, operation: &'static str, status: Option<u16>, elapsed: Duration);
    /// A call waited `waited` for the client-side rate limiter.
    fn throttled(&self, waited: Duration);
}

/// Where and as whom to call the platform.
#[derive(Clone)]
pub struct PlatformConfig {
    /// Base URL, e.g. `https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2`.
    pub base_url: String,
    /// The user secret (`Authorization: User <secret>, ...`).
    pub user_secret: SecretString,
    /// The organization secret (`Authorization: ..., Organization <secret>`).
    pub organization_secret: SecretString,
    /// Client-side rate limit shared by all clones of the client; `<= 0` means unlimited.
    pub requests_per_second: f64,
    /// How many requests may go at once before the rate limit applies (at least 1).
    pub burst: u32,
    /// Timeout of every single request (connect, send, and read of the whole answer).
    pub timeout: Duration,
    /// Allow `http://` base URLs (tests and the local simulator only).
    pub allow_http: bool,
    /// Extra CA certificates (PEM bundle) trusted on top of the system roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
    /// Told of every exchange and rate-limiter wait (metrics).
    pub observer: Option<Arc<dyn CallObserver>>,
}

impl PlatformConfig {
    /// A configuration with defaults: 10 requests per second, burst 20, 30 s timeout, https only.
    pub fn new(
        base_url: impl Into<String>,
        user_secret: SecretString,
        organization_secret: SecretString,
    ) -> Self {
        PlatformConfig {
            base_url: base_url.into(),
            user_secret,
            organization_secret,
            requests_per_second: 10.0,
            burst: 20,
            timeout: Duration::from_secs(30),
            allow_http: false,
            ca_bundle_pem: None,
            observer: None,
        }
    }
}

impl fmt::Debug for PlatformConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformConfig")
            .field("base_url", &self.base_url)
            .field("requests_per_second", &self.requests_per_second)
            .field("burst", &self.burst)
            .field("timeout", &self.timeout)
            .field("allow_http", &self.allow_http)
            .field("ca_bundle_pem_bytes", &self.ca_bundle_pem.as_ref().map(Vec::len))
            .finish_non_exhaustive()
    }
}

/// How failed calls are retried. Only calls safe to repeat are retried after they may have
/// reached the platform; `POST /instances` and the re-authenticating `PUT` only after a connect
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per call, the first included (1 = no retries).
    pub max_attempts: u32,
    /// First backoff; doubled on every retry, with full jitter in its upper half.
    pub base_delay: Duration,
    /// Largest backoff.
    pub max_delay: Duration,
    /// Longest `Retry-After` waited for inside a call; longer ones return the error so the
    /// caller can requeue.
    pub max_retry_after: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            base_delay: Duration::from_millis(200),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(30),
        }
    }
}

impl RetryPolicy {
    /// Delay before attempt `attempt + 1`, or `None` when the platform asked for a longer wait
    /// than `max_retry_after`.
    fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Option<Duration> {
        let exp =
            self.base_delay.saturating_mul(1u32 << attempt.saturating_sub(1).min(16)).min(self.max_delay);
        let half = exp / 2;
        let jittered = half + half.mul_f64(fastrand::f64());
        match retry_after {
            Some(ra) if ra > self.max_retry_after => None,
            Some(ra) => Some(ra.max(jittered)),
            None => Some(jittered),
        }
    }
}

/// May a failed call be sent again?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Replay {
    /// Repeating it has the same effect as sending it once.
    Safe,
    /// Creates or re-provisions: repeat only if it surely never reached the platform.
    OnlyIfNeverSent,
    /// Never repeated: its caller decides when to try again (the platform health probe).
    Once,
}

/// A client for one Open Connectors platform (base URL + credentials).
///
/// Cheap to clone; clones share the HTTP connection pool and the rate limiter.
#[derive(Clone)]
pub struct PlatformClient {
    inner: Arc<Inner>,
    retry: RetryPolicy,
    page_size: u32,
}

struct Inner {
    http: reqwest::Client,
    base: Url,
    authorization: HeaderValue,
    limiter: Option<DefaultDirectRateLimiter>,
    observer: Option<Arc<dyn CallObserver>>,
}

impl fmt::Debug for PlatformClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformClient")
            .field("base_url", &self.inner.base.as_str())
            .field("retry", &self.retry)
            .field("page_size", &self.page_size)
            .field("rate_limited", &self.inner.limiter.is_some())
            .finish()
    }
}

/// A 2xx answer.
struct Answer {
    body: Vec<u8>,
    next_page: Option<String>,
    /// The body's share of the response budget, released with the answer.
    _budget: tokio::sync::OwnedSemaphorePermit,
}

/// A failed attempt, and whether the request may have reached the platform.
struct Failure {
    error: PlatformError,
    maybe_sent: bool,
}

fn invalid_config(message: impl Into<String>) -> PlatformError {
    PlatformError::InvalidInput { status: 0, message: message.into() }
}

fn header_secret(what: &str, secret: &SecretString) -> Result<(), PlatformError> {
    let value = secret.expose_secret();
    if value.trim().is_empty() {
        return Err(invalid_config(format!("the {what} is empty")));
    }
    if !value.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid_config(format!(
            "the {what} contains characters that cannot be sent in an HTTP header \
             (spaces, line breaks or non-ASCII); check the credentials Secret"
        )));
    }
    Ok(())
}

impl PlatformClient {
    /// Builds a client. Refuses `http://` unless `allow_http`, and bad URLs, secrets or CA
    /// bundles, with [`PlatformError::InvalidInput`] (status 0), before any connection.
    pub fn new(cfg: PlatformConfig) -> Result<Self, PlatformError> {
        install_crypto_provider();
        let base = Url::parse(cfg.base_url.trim()).map_err(|e| {
            invalid_config(format!("platform base URL `{}` is not a valid URL: {e}", cfg.base_url))
        })?;
        match base.scheme() {
            "https" => {}
            "http" if cfg.allow_http => {}
            "http" => {
                return Err(invalid_config(format!(
                    "platform base URL `{base}` uses plain http, which would send the secrets \
                     unencrypted; use https (or allow http explicitly for tests and the local \
                     simulator)"
                )));
            }
            other => {
                return Err(invalid_config(format!(
                    "platform base URL `{base}` has scheme `{other}`; use https"
                )));
            }
        }
        if base.cannot_be_a_base() || base.host_str().is_none() {
            return Err(invalid_config(format!("platform base URL `{base}` has no host")));
        }
        if base.query().is_some() || !base.username().is_empty() || base.password().is_some() {
            return Err(invalid_config("platform base URL must not contain a query or user info"));
        }
        header_secret("user secret", &cfg.user_secret)?;
        header_secret("organization secret", &cfg.organization_secret)?;
        let mut authorization = HeaderValue::from_str(&format!(
            "User {}, Organization {}",
            cfg.user_secret.expose_secret(),
            cfg.organization_secret.expose_secret()
        ))
        .map_err(|_| invalid_config("the credentials cannot be sent in an HTTP header"))?;
        authorization.set_sensitive(true);

        let mut headers = HeaderMap::new();
        headers.insert(ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        let mut builder = reqwest::Client::builder()
            .default_headers(headers)
            .timeout(cfg.timeout)
            .connect_timeout(cfg.timeout.min(Duration::from_secs(10)))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("connector-operator/", env!("CARGO_PKG_VERSION")))
            .tcp_nodelay(true)
            .https_only(!cfg.allow_http);
        if let Some(pem) = &cfg.ca_bundle_pem {
            let certs = reqwest::Certificate::from_pem_bundle(pem)
                .map_err(|e| invalid_config(format!("the CA bundle is not valid PEM: {e}")))?;
            if certs.is_empty() {
                return Err(invalid_config("the CA bundle holds no certificate"));
            }
            builder = builder.tls_certs_merge(certs);
        }
        let http =
            builder.build().map_err(|e| invalid_config(format!("cannot build the HTTP client: {e}")))?;

        let limiter = if cfg.requests_per_second > 0.0 && cfg.requests_per_second.is_finite() {
            let period = Duration::from_secs_f64(1.0 / cfg.requests_per_second);
            let burst = NonZeroU32::new(cfg.burst.max(1)).unwrap_or(NonZeroU32::MIN);
            Quota::with_period(period.max(Duration::from_nanos(1)))
                .map(|q| RateLimiter::direct(q.allow_burst(burst)))
        } else {
            None
        };

        Ok(PlatformClient {
            inner: Arc::new(Inner { http, base, authorization, limiter, observer: cfg.observer }),
            retry: RetryPolicy::default(),
            page_size: MAX_PAGE_SIZE,
        })
    }

    /// Replaces the retry policy (of this handle and clones made from it afterwards).
    pub fn with_retry_policy(mut self, retry: RetryPolicy) -> Self {
        self.retry = retry;
        self
    }

    /// Sets the page size of tag searches (1..=200; tests use small pages).
    pub fn with_page_size(mut self, page_size: u32) -> Self {
        self.page_size = page_size.clamp(1, MAX_PAGE_SIZE);
        self
    }

    /// The base URL calls go to.
    pub fn base_url(&self) -> &str {
        self.inner.base.as_str()
    }

    /// `POST /instances`: creates (authenticates) an instance. Never repeated once it may have
    /// reached the platform; after a timeout or a lost answer, search by tag to find out.
    pub async fn create_instance(&self, req: &InstanceRequest) -> Result<ElementInstance, PlatformError> {
        self.create_instance_while(req, &|| true).await
    }

    /// [`Self::create_instance`], sent only while `wanted()` holds: it is asked right before each
    /// attempt goes out (after the rate limiter's wait, however long), and a create it withdraws
    /// ends with [`PlatformError::Withdrawn`] without reaching the platform. So once `wanted()`
    /// turns false, a create of this client's is in flight for one [`PlatformConfig::timeout`]
    /// at most.
    pub async fn create_instance_while(
        &self,
        req: &InstanceRequest,
        wanted: &(dyn Fn() -> bool + Sync),
    ) -> Result<ElementInstance, PlatformError> {
        let span = debug_span!("platform.create_instance", element = %req.element_key);
        async {
            let body = serde_json::to_vec(&req.to_body()).map_err(body_error)?;
            let answer = self
                .execute_as(
                    Method::POST,
                    "POST /instances",
                    &["instances"],
                    &[],
                    Some(body),
                    Replay::OnlyIfNeverSent,
                    None,
                    Some(wanted),
                )
                .await?;
            parse_json("POST /instances", &answer.body)
        }
        .instrument(span)
        .await
    }

    /// `GET /instances/{id}`.
    pub async fn get_instance(&self, id: i64) -> Result<ElementInstance, PlatformError> {
        let id_text = id.to_string();
        let answer = self
            .execute(Method::GET, "GET /instances/{id}", &["instances", &id_text], &[], None, Replay::Safe)
            .instrument(debug_span!("platform.get_instance", id))
            .await?;
        parse_json("GET /instances/{id}", &answer.body)
    }

    /// `GET /instances?tags[]=<tag>&pageSize=..&hydrate=true`, following
    /// `elements-next-page-token` until the last page. Returns the ids and tags of only the
    /// instances whose tags, in the platform's answer, include `tag`: one answered without tags
    /// (or outside the filter) is left out, since nothing shows that it is the caller's. Stops
    /// with a protocol error after [`MAX_SEARCH_PAGES`] pages or [`MAX_SEARCH_BYTES`] bytes.
    pub async fn find_instances_by_tag(&self, tag: &str) -> Result<Vec<Tagged>, PlatformError> {
        let span = debug_span!("platform.find_instances_by_tag", tag);
        let bounds = PageBounds {
            pages: MAX_SEARCH_PAGES,
            bytes: MAX_SEARCH_BYTES,
            too_many_bytes: format!(
                "GET /instances: the tag search got more than {} MiB of answers; the platform does not seem to \
                 filter by tag",
                MAX_SEARCH_BYTES / (1024 * 1024)
            ),
            too_many_pages: format!(
                "GET /instances: the tag search did not end after {MAX_SEARCH_PAGES} pages; the platform does \
                 not seem to filter by tag"
            ),
        };
        self.instances_by_tag(tag, bounds, Some).instrument(span).await
    }

    /// Every instance that carries `tag` (a cluster tag: many instances), as `keep` maps it (only
    /// instances whose tags, in the platform's answer, include `tag` are given to it; what it
    /// returns is all that is kept of a page). Like [`Self::find_instances_by_tag`], with the
    /// bounds of a scan: [`MAX_SCAN_PAGES`] pages, [`MAX_SCAN_BYTES`] bytes.
    pub async fn scan_instances_by_tag<U>(
        &self,
        tag: &str,
        keep: impl FnMut(Tagged) -> Option<U>,
    ) -> Result<Vec<U>, PlatformError> {
        let span = debug_span!("platform.scan_instances_by_tag", tag);
        let bounds = PageBounds {
            pages: MAX_SCAN_PAGES,
            bytes: MAX_SCAN_BYTES,
            too_many_bytes: format!(
                "GET /instances: the scan by cluster tag got more than {} MiB of answers",
                MAX_SCAN_BYTES / (1024 * 1024)
            ),
            too_many_pages: format!(
                "GET /instances: the scan by cluster tag did not end after {MAX_SCAN_PAGES} pages"
            ),
        };
        self.instances_by_tag(tag, bounds, keep).instrument(span).await
    }

    /// `GET /instances?tags[]=<tag>&pageSize=..&hydrate=true`, every page within `bounds`: what
    /// `keep` makes of each instance whose tags, in the platform's answer, include `tag`.
    async fn instances_by_tag<U>(
        &self,
        tag: &str,
        bounds: PageBounds,
        mut keep: impl FnMut(Tagged) -> Option<U>,
    ) -> Result<Vec<U>, PlatformError> {
        let query = vec![
            ("tags[]", tag.to_string()),
            ("pageSize", self.page_size.to_string()),
            ("hydrate", "true".to_string()),
        ];
        let tagged = |i: Tagged| if i.tags.iter().any(|t| t == tag) { keep(i) } else { None };
        self.all_pages("GET /instances", &["instances"], query, tagged, bounds).await
    }

    /// Every page of the paged `operation` on `path` with `query` (its `pageSize` included), following
    /// `elements-next-page-token` until the last page; keeps what `keep` makes of each item. Stops
    /// with a protocol error (in the words of `bounds`) after `bounds.pages` pages or
    /// `bounds.bytes` bytes, and when the platform gives the same next-page token twice.
    async fn all_pages<T: DeserializeOwned, U>(
        &self,
        operation: &'static str,
        path: &[&str],
        query: Vec<(&'static str, String)>,
        mut keep: impl FnMut(T) -> Option<U>,
        bounds: PageBounds,
    ) -> Result<Vec<U>, PlatformError> {
        let mut found = Vec::new();
        let mut cursor: Option<String> = None;
        let mut bytes = 0usize;
        for _ in 0..bounds.pages {
            let mut page_query = query.clone();
            if let Some(c) = &cursor {
                page_query.push(("nextPage", c.clone()));
            }
            let answer = self.execute(Method::GET, operation, path, &page_query, None, Replay::Safe).await?;
            bytes += answer.body.len();
            if bytes > bounds.bytes {
                return Err(PlatformError::Protocol { message: bounds.too_many_bytes });
            }
            let page: Vec<T> = parse_json(operation, &answer.body)?;
            drop(answer.body);
            found.extend(page.into_iter().filter_map(&mut keep));
            match answer.next_page {
                Some(next) if Some(&next) == cursor.as_ref() => {
                    return Err(PlatformError::Protocol {
                        message: format!("{operation}: the platform returned the same next-page token twice"),
                    });
                }
                Some(next) => cursor = Some(next),
                None => return Ok(found),
            }
        }
        Err(PlatformError::Protocol { message: bounds.too_many_pages })
    }

    /// `PATCH /instances/{id}` with `{name, tags}` (tags are replaced). Keeps the token.
    pub async fn patch_instance(
        &self,
        id: i64,
        name: &str,
        tags: &[String],
    ) -> Result<ElementInstance, PlatformError> {
        let id_text = id.to_string();
        let body = serde_json::to_vec(&patch_body(name, tags)).map_err(body_error)?;
        let answer = self
            .execute(
                Method::PATCH,
                "PATCH /instances/{id}",
                &["instances", &id_text],
                &[],
                Some(body),
                Replay::Safe,
            )
            .instrument(debug_span!("platform.patch_instance", id))
            .await?;
        parse_json("PATCH /instances/{id}", &answer.body)
    }

    /// `PUT /instances/{id}?reAuthenticate=true` with the full body: re-provisions the instance.
    /// The answer may carry a new token (and, in theory, id). Not repeated once it may have
    /// reached the platform.
    pub async fn reauthenticate_instance(
        &self,
        id: i64,
        req: &InstanceRequest,
    ) -> Result<ElementInstance, PlatformError> {
        let span = debug_span!("platform.reauthenticate_instance", id, element = %req.element_key);
        async {
            let id_text = id.to_string();
            let body = serde_json::to_vec(&req.to_body()).map_err(body_error)?;
            let answer = self
                .execute(
                    Method::PUT,
                    "PUT /instances/{id}",
                    &["instances", &id_text],
                    &[("reAuthenticate", "true".to_string())],
                    Some(body),
                    Replay::OnlyIfNeverSent,
                )
                .await?;
            parse_json("PUT /instances/{id}", &answer.body)
        }
        .instrument(span)
        .await
    }

    /// `PUT /instances/{id}/enabled` (enable) or `DELETE /instances/{id}/enabled` (disable).
    pub async fn set_enabled(&self, id: i64, enabled: bool) -> Result<(), PlatformError> {
        let id_text = id.to_string();
        let (method, operation) = if enabled {
            (Method::PUT, "PUT /instances/{id}/enabled")
        } else {
            (Method::DELETE, "DELETE /instances/{id}/enabled")
        };
        self.execute(method, operation, &["instances", &id_text, "enabled"], &[], None, Replay::Safe)
            .instrument(debug_span!("platform.set_enabled", id, enabled))
            .await?;
        Ok(())
    }

    /// `DELETE /instances/{id}`; a 404 means it was already gone, which counts as done.
    pub async fn delete_instance(&self, id: i64) -> Result<DeleteOutcome, PlatformError> {
        let id_text = id.to_string();
        let result = self
            .execute(
                Method::DELETE,
                "DELETE /instances/{id}",
                &["instances", &id_text],
                &[],
                None,
                Replay::Safe,
            )
            .instrument(debug_span!("platform.delete_instance", id))
            .await;
        match result {
            Ok(_) => Ok(DeleteOutcome::Deleted),
            Err(PlatformError::NotFound { .. }) => Ok(DeleteOutcome::AlreadyGone),
            Err(e) => Err(e),
        }
    }

    /// `GET /elements`: the connector catalog, every page (bounded like the tag search: a
    /// platform that does not stop paging is an error, not a hang).
    pub async fn list_elements(&self) -> Result<Vec<Element>, PlatformError> {
        let bounds = PageBounds {
            pages: MAX_SEARCH_PAGES,
            bytes: MAX_SEARCH_BYTES,
            too_many_bytes: format!(
                "GET /elements: the catalog is over {} MiB",
                MAX_SEARCH_BYTES / (1024 * 1024)
            ),
            too_many_pages: format!("GET /elements: the catalog did not end after {MAX_SEARCH_PAGES} pages"),
        };
        let query = vec![("pageSize", self.page_size.to_string())];
        self.all_pages("GET /elements", &["elements"], query, |e: Element| Some(e), bounds)
            .instrument(debug_span!("platform.list_elements"))
            .await
    }

    /// `GET /elements/{key}/configuration`: the connector's configuration definitions.
    pub async fn element_configuration(
        &self,
        element_key: &str,
    ) -> Result<Vec<ElementConfig>, PlatformError> {
        if element_key.trim().is_empty() {
            return Err(invalid_config("the connector (element) key is empty"));
        }
        let answer = self
            .execute(
                Method::GET,
                "GET /elements/{key}/configuration",
                &["elements", element_key, "configuration"],
                &[],
                None,
                Replay::Safe,
            )
            .instrument(debug_span!("platform.element_configuration", element_key))
            .await?;
        let list: ElementConfigList = parse_json("GET /elements/{key}/configuration", &answer.body)?;
        Ok(list.into_vec())
    }

    /// `POST /elements/{key}/oauth/url`: the provider's authorization URL for an OAuth 2.0
    /// connector (API.md §6.1). The parameters go in the JSON body (the client secret never sits
    /// in a URL); the call changes nothing, so it is retried like a read.
    pub async fn oauth_url(&self, element_key: &str, req: &OAuthUrlRequest) -> Result<String, PlatformError> {
        if element_key.trim().is_empty() {
            return Err(invalid_config("the connector (element) key is empty"));
        }
        let body = serde_json::to_vec(&req.to_body()).map_err(body_error)?;
        let answer = self
            .execute(
                Method::POST,
                "POST /elements/{key}/oauth/url",
                &["elements", element_key, "oauth", "url"],
                &[],
                Some(body),
                Replay::Safe,
            )
            .instrument(debug_span!("platform.oauth_url", element_key))
            .await?;
        let redirect: OAuthRedirect = parse_json("POST /elements/{key}/oauth/url", &answer.body)?;
        match redirect.oauth_url {
            Some(url) if url.starts_with("https://") || url.starts_with("http://") => Ok(url),
            _ => Err(PlatformError::Protocol {
                message: "POST /elements/{key}/oauth/url answered without an oauthUrl".into(),
            }),
        }
    }

    /// `GET /instances` with the instance token (`User …, Organization …, Element <token>`, the
    /// header a workload sends): the platform answers with the instance that owns the token
    /// (API.md §2). One attempt: it is a test, and its failure is the answer.
    pub async fn verify_token(&self, token: &SecretString) -> Result<ElementInstance, PlatformError> {
        let mut header = HeaderValue::from_str(&format!(
            "{}, Element {}",
            self.inner.authorization.to_str().unwrap_or_default(),
            token.expose_secret()
        ))
        .map_err(|_| invalid_config("the instance token cannot be sent in an HTTP header"))?;
        header.set_sensitive(true);
        let answer = self
            .execute_as(
                Method::GET,
                "GET /instances (Element)",
                &["instances"],
                &[],
                None,
                Replay::Once,
                Some(&header),
                None,
            )
            .instrument(debug_span!("platform.verify_token"))
            .await?;
        parse_json("GET /instances (Element)", &answer.body)
    }

    /// `GET /instances?pageSize=1`: a cheap check that the base URL and credentials work. One
    /// attempt, no retries: the caller backs off between checks.
    pub async fn check_credentials(&self) -> Result<(), PlatformError> {
        let answer = self
            .execute(
                Method::GET,
                "GET /instances",
                &["instances"],
                &[("pageSize", "1".to_string())],
                None,
                Replay::Once,
            )
            .instrument(debug_span!("platform.check_credentials"))
            .await?;
        parse_json::<Vec<serde::de::IgnoredAny>>("GET /instances", &answer.body).map(|_| ())
    }

    fn url(&self, segments: &[&str]) -> Url {
        let mut url = self.inner.base.clone();
        if let Ok(mut path) = url.path_segments_mut() {
            path.pop_if_empty().extend(segments);
        }
        url
    }

    /// Waits for the shared rate limiter (cancel-safe).
    async fn acquire(&self) {
        let Some(limiter) = &self.inner.limiter else {
            return;
        };
        let started = Instant::now();
        let mut waited = false;
        while let Err(not_until) = limiter.check() {
            waited = true;
            let wait = not_until.wait_time_from(limiter.clock().now());
            tokio::time::sleep(wait.max(Duration::from_millis(1))).await;
        }
        if let (true, Some(observer)) = (waited, &self.inner.observer) {
            observer.throttled(started.elapsed());
        }
    }

    /// Sends a call with the retry policy.
    async fn execute(
        &self,
        method: Method,
        operation: &'static str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        replay: Replay,
    ) -> Result<Answer, PlatformError> {
        self.execute_as(method, operation, segments, query, body, replay, None, None).await
    }

    /// [`Self::execute`] with another `Authorization` header (one that adds an `Element` token),
    /// and each attempt sent only if `wanted` (when given) still holds once the rate limiter let
    /// it go ([`PlatformError::Withdrawn`] otherwise).
    #[allow(clippy::too_many_arguments)]
    async fn execute_as(
        &self,
        method: Method,
        operation: &'static str,
        segments: &[&str],
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        replay: Replay,
        authorization: Option<&HeaderValue>,
        wanted: Option<&(dyn Fn() -> bool + Sync)>,
    ) -> Result<Answer, PlatformError> {
        let url = self.url(segments);
        let mut attempt = 1u32;
        loop {
            self.acquire().await;
            if wanted.is_some_and(|wanted| !wanted()) {
                debug!(operation, attempt, "platform call withdrawn before it was sent");
                return Err(PlatformError::Withdrawn);
            }
            let started = Instant::now();
            let failure = match self
                .attempt(method.clone(), operation, url.clone(), query, body.clone(), authorization)
                .await
            {
                Ok(answer) => {
                    debug!(
                        operation,
                        attempt,
                        elapsed_ms = started.elapsed().as_millis() as u64,
                        "platform call succeeded"
                    );
                    return Ok(answer);
                }
                Err(failure) => failure,
            };
            let error = failure.error;
            let may_repeat = match replay {
                Replay::Safe => true,
                Replay::OnlyIfNeverSent => !failure.maybe_sent,
                Replay::Once => false,
            };
            let delay = (may_repeat && error.is_transient() && attempt < self.retry.max_attempts)
                .then(|| self.retry.delay(attempt, error.retry_after()))
                .flatten();
            let Some(delay) = delay else {
                // The kind only: the platform's words may echo what it was sent; the caller,
                // which knows the secret values, reports them redacted.
                debug!(operation, attempt, kind = error.metric_label(), "platform call failed");
                return Err(error);
            };
            warn!(
                operation,
                attempt,
                delay_ms = delay.as_millis() as u64,
                kind = error.metric_label(),
                "platform call failed, retrying"
            );
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// One HTTP exchange, told to the observer.
    async fn attempt(
        &self,
        method: Method,
        operation: &'static str,
        url: Url,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        authorization: Option<&HeaderValue>,
    ) -> Result<Answer, Failure> {
        let started = Instant::now();
        let mut status = None;
        let result = self.exchange(method, operation, url, query, body, authorization, &mut status).await;
        if let Some(observer) = &self.inner.observer {
            observer.exchange(operation, status, started.elapsed());
        }
        result
    }

    /// One HTTP exchange; `status` is set once an answer arrived.
    #[allow(clippy::too_many_arguments)]
    async fn exchange(
        &self,
        method: Method,
        operation: &'static str,
        url: Url,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        authorization: Option<&HeaderValue>,
        status_seen: &mut Option<u16>,
    ) -> Result<Answer, Failure> {
        let authorization = authorization.unwrap_or(&self.inner.authorization).clone();
        let mut request = self.inner.http.request(method, url).header(AUTHORIZATION, authorization);
        if !query.is_empty() {
            request = request.query(query);
        }
        if let Some(body) = body {
            request = request.body(body);
        }
        let mut response = request
            .send()
            .await
            .map_err(|e| Failure { maybe_sent: !e.is_connect(), error: transport_error(operation, &e) })?;
        let status = response.status();
        *status_seen = Some(status.as_u16());
        let sent = |error| Failure { error, maybe_sent: true };
        if !status.is_success() {
            let retry_after = response
                .headers()
                .get(RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let body = read_body(&mut response, MAX_ERROR_BODY_BYTES, true).await.unwrap_or_default();
            return Err(sent(PlatformError::from_status(operation, status.as_u16(), &body, retry_after)));
        }
        let next_page = response
            .headers()
            .get(NEXT_PAGE_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty());
        if response.content_length().is_some_and(|len| len > MAX_RESPONSE_BYTES as u64) {
            return Err(sent(BodyError::TooLarge.in_operation(operation)));
        }
        // The body's share of the budget, reserved before a byte of it is read.
        let share = response.content_length().map_or(MAX_RESPONSE_BYTES, |len| len as usize);
        let units = u32::try_from(share.div_ceil(BUDGET_UNIT).max(1)).unwrap_or(u32::MAX);
        let budget = response_budget().acquire_many_owned(units).await.map_err(|_| {
            sent(PlatformError::Transient {
                message: format!("{operation}: shutting down"),
                retry_after: None,
            })
        })?;
        let body = read_body(&mut response, share.min(MAX_RESPONSE_BYTES), false)
            .await
            .map_err(|e| sent(e.in_operation(operation)))?;
        Ok(Answer { body, next_page, _budget: budget })
    }
}

/// Why reading a body failed (turned into an error with the operation name).
enum BodyError {
    Read(String),
    TooLarge,
}

impl BodyError {
    fn in_operation(self, operation: &str) -> PlatformError {
        match self {
            BodyError::Read(m) => PlatformError::Transient {
                message: format!("{operation}: reading the response failed: {m}"),
                retry_after: None,
            },
            BodyError::TooLarge => PlatformError::Protocol {
                message: format!(
                    "{operation}: response body is larger than {} MiB",
                    MAX_RESPONSE_BYTES / (1024 * 1024)
                ),
            },
        }
    }
}

/// Reads at most `cap` bytes; beyond it, stops (`truncate_ok`) or fails.
async fn read_body(
    response: &mut reqwest::Response,
    cap: usize,
    truncate_ok: bool,
) -> Result<Vec<u8>, BodyError> {
    if !truncate_ok && response.content_length().is_some_and(|len| len > cap as u64) {
        return Err(BodyError::TooLarge);
    }
    let mut buf = Vec::with_capacity(response.content_length().map_or(0, |len| len.min(cap as u64) as usize));
    while let Some(chunk) = response.chunk().await.map_err(|e| BodyError::Read(error_chain(&e)))? {
        if buf.len() + chunk.len() > cap {
            if truncate_ok {
                buf.extend_from_slice(&chunk[..cap - buf.len()]);
                return Ok(buf);
            }
            return Err(BodyError::TooLarge);
        }
        buf.extend_from_slice(&chunk);
    }
    Ok(buf)
}

/// The error and its causes in one line, without the URL.
fn error_chain(error: &reqwest::Error) -> String {
    let mut parts = Vec::new();
    let mut current: Option<&dyn std::error::Error> = Some(error);
    while let Some(e) = current {
        let text = if let Some(r) = e.downcast_ref::<reqwest::Error>() {
            // Without the URL: the message stays short and predictable.
            let mut r_text = String::new();
            if r.is_timeout() {
                r_text.push_str("timed out");
            } else if r.is_connect() {
                r_text.push_str("could not connect");
            } else if r.is_body() || r.is_decode() {
                r_text.push_str("error reading the body");
            } else {
                r_text.push_str("request failed");
            }
            r_text
        } else {
            e.to_string()
        };
        if !text.is_empty() && parts.last() != Some(&text) {
            parts.push(text);
        }
        current = e.source();
    }
    truncate(&parts.join(": "), 512)
}

fn transport_error(operation: &str, error: &reqwest::Error) -> PlatformError {
    let chain = error_chain(error);
    let hint = if chain.contains("certificate") {
        "the platform's TLS certificate is not trusted: if it comes from a private CA, put the CA \
         in a Secret and set spec.caBundleSecretRef of the platform object"
    } else {
        "is the platform base URL reachable?"
    };
    PlatformError::Transient { message: format!("{operation}: {chain} ({hint})"), retry_after: None }
}

fn body_error(error: serde_json::Error) -> PlatformError {
    PlatformError::Protocol { message: format!("cannot encode the request body: {}", error.classify_text()) }
}

trait ClassifyText {
    fn classify_text(&self) -> &'static str;
}

impl ClassifyText for serde_json::Error {
    fn classify_text(&self) -> &'static str {
        match self.classify() {
            serde_json::error::Category::Io => "I/O error",
            serde_json::error::Category::Syntax => "not valid JSON",
            serde_json::error::Category::Data => "JSON of an unexpected shape",
            serde_json::error::Category::Eof => "truncated JSON",
        }
    }
}

/// A paged read's bounds and their words (see `PlatformClient::all_pages`).
struct PageBounds {
    /// Pages read at most.
    pages: usize,
    /// Bytes of answers read at most, in all.
    bytes: usize,
    /// More than `bytes` of answers.
    too_many_bytes: String,
    /// No last page after `pages`.
    too_many_pages: String,
}

/// Parses a 2xx body. The error message names the position only, never the content (the body
/// may hold a token).
fn parse_json<T: DeserializeOwned>(operation: &str, body: &[u8]) -> Result<T, PlatformError> {
    serde_json::from_slice(body).map_err(|e| PlatformError::Protocol {
        message: format!(
            "{operation}: response body is {} (line {}, column {})",
            e.classify_text(),
            e.line(),
            e.column()
        ),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(url: &str) -> PlatformConfig {
        PlatformConfig::new(url, "u".to_string().into(), "o".to_string().into())
    }

    #[test]
    fn refuses_plain_http_and_bad_urls() {
        let err = PlatformClient::new(cfg("http://example.com/elements/api-v2")).unwrap_err();
        assert!(matches!(err, PlatformError::InvalidInput { status: 0, .. }));
        assert!(err.to_string().contains("plain http"));
        let mut ok = cfg("http://127.0.0.1:1/elements/api-v2");
        ok.allow_http = true;
        assert!(PlatformClient::new(ok).is_ok());
        assert!(PlatformClient::new(cfg("ftp://x/y")).is_err());
        assert!(PlatformClient::new(cfg("not a url")).is_err());
        assert!(PlatformClient::new(cfg("https://example.com/elements/api-v2")).is_ok());
    }

    #[test]
    fn refuses_secrets_unfit_for_a_header_without_echoing_them() {
        let bad = PlatformConfig::new(
            "https://example.com",
            "line\nbreak-secret".to_string().into(),
            "o".to_string().into(),
        );
        let err = PlatformClient::new(bad).unwrap_err();
        assert!(!err.to_string().contains("break-secret"));
        let mut empty = cfg("https://example.com");
        empty.organization_secret = String::new().into();
        assert!(PlatformClient::new(empty).is_err());
    }

    #[test]
    fn rejects_bad_ca_bundle() {
        let mut c = cfg("https://example.com");
        c.ca_bundle_pem = Some(b"not pem".to_vec());
        let err = PlatformClient::new(c).unwrap_err();
        assert!(matches!(err, PlatformError::InvalidInput { status: 0, .. }), "{err:?}");
        assert!(err.to_string().contains("CA bundle"), "{err}");
    }

    #[test]
    fn urls_join_segments_under_the_base_path() {
        let client = PlatformClient::new(cfg("https://h.example/elements/api-v2/")).unwrap();
        assert_eq!(
            client.url(&["instances", "12"]).as_str(),
            "https://h.example/elements/api-v2/instances/12"
        );
        assert_eq!(
            client.url(&["elements", "a/b", "configuration"]).as_str(),
            "https://h.example/elements/api-v2/elements/a%2Fb/configuration"
        );
    }

    #[test]
    fn backoff_grows_is_capped_and_honours_retry_after() {
        let p = RetryPolicy::default();
        for attempt in 1..10 {
            let d = p.delay(attempt, None).unwrap();
            assert!(d <= p.max_delay);
            let exp = p.base_delay.saturating_mul(1 << (attempt - 1)).min(p.max_delay);
            assert!(d >= exp / 2);
        }
        assert_eq!(p.delay(1, Some(Duration::from_secs(2))), Some(Duration::from_secs(2)));
        assert_eq!(p.delay(1, Some(Duration::from_secs(120))), None);
    }

    #[test]
    fn debug_never_shows_secrets() {
        let c = PlatformConfig::new(
            "https://h.example",
            "user-secret-xyz".to_string().into(),
            "org-secret-xyz".to_string().into(),
        );
        assert!(!format!("{c:?}").contains("secret-xyz"));
        let client = PlatformClient::new(c).unwrap();
        assert!(!format!("{client:?}").contains("secret-xyz"));
    }
}
