//! The simulator's state: instances, tag index, the fake OAuth provider, call counts, faults.
//! One lock, no I/O.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value, json};

use super::catalog::{self, AuthKind, ElementDef};
use super::control::{CallCounts, FailNext, Faults, InstanceFlags, OperationDelay, SimInstance};
use super::error::ApiError;
use super::oauth::{self, OAuthUrlParams, Provider};

/// What the platform masks secrets with.
pub(crate) const MASK: &str = "********";
/// Default and largest page size of `GET /instances`.
pub(crate) const MAX_PAGE_SIZE: usize = 200;

fn bad_request(message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message)
}

fn element_not_found(key: &str) -> ApiError {
    ApiError::new(404, format!("No element found with key '{key}'"))
}

fn not_found(id: i64) -> ApiError {
    ApiError::new(404, format!("No element instance found with id {id}"))
}

struct Instance {
    id: i64,
    name: String,
    token: String,
    element: usize,
    configuration: BTreeMap<String, String>,
    tags: Vec<String>,
    valid: bool,
    disabled: bool,
    external_authentication: String,
    created_date: String,
    updated_ms: i64,
}

impl Instance {
    fn events_enabled(&self) -> bool {
        self.configuration.get("event.notification.enabled").is_some_and(|v| v.eq_ignore_ascii_case("true"))
    }
}

/// A validated create or re-provision body.
struct Provision {
    element: usize,
    name: Option<String>,
    configuration: BTreeMap<String, String>,
    tags: Option<Vec<String>>,
    external_authentication: String,
    /// `providerData.code`, when given (not blank).
    code: Option<String>,
}

/// How the provider authenticated an OAuth2 instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProviderAuth {
    /// Not an OAuth2 connector.
    NotOAuth,
    /// A grant code was exchanged: the provider issued new access and refresh tokens.
    Code,
    /// `externalAuthentication: "initial"` with the caller's refresh token.
    RefreshToken,
}

/// What the fault layer decided for one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FaultAction {
    Proceed,
    Drop,
    Fail { status: u16, retry_after: Option<u64>, message: Option<String> },
}

/// Faults for one call.
#[derive(Debug, Clone)]
pub(crate) struct FaultPlan {
    pub latency: Option<Duration>,
    pub action: FaultAction,
    pub delay_after: Option<Duration>,
}

/// Query of `GET /instances`.
#[derive(Debug, Default)]
pub(crate) struct ListQuery {
    pub tags: Vec<String>,
    pub search_text: Option<String>,
    pub page_size: usize,
    pub next_page: Option<String>,
    pub hydrate: bool,
}

/// All simulator state.
pub(crate) struct SimState {
    user_secret: String,
    organization_secret: String,
    catalog: Vec<ElementDef>,
    instances: BTreeMap<i64, Instance>,
    by_tag: HashMap<String, BTreeSet<i64>>,
    next_id: i64,
    rng: fastrand::Rng,
    counts: CallCounts,
    faults: Faults,
    provider: Provider,
}

/// Whether an `Authorization` header carries these user and organization secrets: `User <s>,
/// Organization <s>` in any order, with extra whitespace and an extra `Element <token>` pair
/// allowed (the platform's own leniency). A missing header never matches.
pub fn authorization_matches(header: Option<&str>, user_secret: &str, organization_secret: &str) -> bool {
    let Some(header) = header else {
        return false;
    };
    let (mut user, mut org) = (None, None);
    for pair in header.split(',') {
        let pair = pair.trim();
        let Some((kind, value)) = pair.split_once(char::is_whitespace) else {
            continue;
        };
        let value = value.trim();
        if kind.eq_ignore_ascii_case("user") {
            user = Some(value);
        } else if kind.eq_ignore_ascii_case("organization") {
            org = Some(value);
        }
    }
    user == Some(user_secret) && org == Some(organization_secret)
}

impl SimState {
    pub fn new(user_secret: String, organization_secret: String, seed: u64) -> Self {
        let mut rng = fastrand::Rng::with_seed(seed);
        let next_id = 100_000 + rng.i64(0..900_000);
        SimState {
            user_secret,
            organization_secret,
            catalog: catalog::builtin(),
            instances: BTreeMap::new(),
            by_tag: HashMap::new(),
            next_id,
            rng,
            counts: CallCounts::default(),
            faults: Faults::default(),
            provider: Provider::default(),
        }
    }

    // ---- auth ----

    /// Checks an `Authorization` header: `User <s>, Organization <s>` in any order, extra
    /// whitespace and an extra `Element <token>` pair allowed.
    pub fn authorized(&self, header: Option<&str>) -> bool {
        authorization_matches(header, &self.user_secret, &self.organization_secret)
    }

    pub fn set_credentials(&mut self, user_secret: String, organization_secret: String) {
        self.user_secret = user_secret;
        self.organization_secret = organization_secret;
    }

    // ---- counts and faults ----

    /// Counts a call and decides its faults.
    pub fn begin_call(&mut self, operation: &str, is_write: bool) -> FaultPlan {
        *self.counts.operations.entry(operation.to_string()).or_insert(0) += 1;
        self.counts.total += 1;
        if is_write {
            self.counts.writes += 1;
        } else {
            self.counts.reads += 1;
        }
        let faults = &self.faults;
        let latency = faults.latency.map(|r| {
            let (lo, hi) = (r.min_ms.min(r.max_ms), r.max_ms.max(r.min_ms));
            Duration::from_millis(self.rng.u64(lo..=hi))
        });
        let delay = |delay: &Option<OperationDelay>| {
            delay
                .as_ref()
                .filter(|d| d.operation.as_deref().is_none_or(|op| op == operation))
                .map(|d| Duration::from_millis(d.ms))
        };
        let latency = match (latency, delay(&faults.delay_before)) {
            (Some(random), Some(fixed)) => Some(random + fixed),
            (random, fixed) => random.or(fixed),
        };
        let delay_after = delay(&faults.delay_after);
        let retry_after_429 = Some(self.faults.retry_after_seconds.unwrap_or(1));
        let action = if let Some(pos) = self
            .faults
            .fail_next
            .iter()
            .position(|f| f.count > 0 && f.operation.as_deref().is_none_or(|op| op == operation))
        {
            let entry: &mut FailNext = &mut self.faults.fail_next[pos];
            entry.count -= 1;
            let action = if entry.drop_connection {
                FaultAction::Drop
            } else {
                FaultAction::Fail {
                    status: entry.status,
                    retry_after: if entry.status == 429 {
                        retry_after_429
                    } else {
                        self.faults.retry_after_seconds
                    },
                    message: entry.message.clone(),
                }
            };
            if entry.count == 0 {
                self.faults.fail_next.remove(pos);
            }
            action
        } else if self.draw(self.faults.drop_share) {
            FaultAction::Drop
        } else if self.draw(self.faults.server_error_share) {
            let status = self.faults.server_error_status.unwrap_or(500);
            FaultAction::Fail {
                status,
                retry_after: self.faults.retry_after_seconds.filter(|_| status == 503),
                message: None,
            }
        } else if self.draw(self.faults.rate_limit_share) {
            FaultAction::Fail { status: 429, retry_after: retry_after_429, message: None }
        } else {
            FaultAction::Proceed
        };
        FaultPlan { latency, action, delay_after }
    }

    fn draw(&mut self, share: f64) -> bool {
        share > 0.0 && self.rng.f64() < share
    }

    pub fn calls(&self) -> CallCounts {
        self.counts.clone()
    }

    pub fn reset_calls(&mut self) {
        self.counts = CallCounts::default();
    }

    pub fn faults(&self) -> Faults {
        self.faults.clone()
    }

    pub fn set_faults(&mut self, faults: Faults) {
        self.faults = faults;
    }

    pub fn push_fail_next(&mut self, fail: FailNext) {
        if fail.count > 0 {
            self.faults.fail_next.push(fail);
        }
    }

    /// Deletes every instance, clears counts and faults, forgets issued grant codes and revoked
    /// refresh tokens.
    pub fn reset(&mut self) {
        self.instances.clear();
        self.by_tag.clear();
        self.counts = CallCounts::default();
        self.faults = Faults::default();
        self.provider.clear();
    }

    pub fn request_id(&mut self) -> String {
        format!("{:016x}{:08x}", self.rng.u64(..), self.rng.u32(..))
    }

    // ---- platform operations ----

    /// `POST /instances`.
    pub fn create(&mut self, body: &Value) -> Result<Value, ApiError> {
        self.create_at(body, Instant::now())
    }

    /// `POST /instances` at `now` (the time grant codes are checked against).
    pub fn create_at(&mut self, body: &Value, now: Instant) -> Result<Value, ApiError> {
        let p = self.validate(body, None)?;
        let name = p
            .name
            .clone()
            .ok_or_else(|| bad_request("name is required: give the instance a display name"))?;
        let auth = self.authenticate_with_provider(&p, now)?;
        let id = self.next_id;
        self.next_id += 1;
        let (created_date, updated_ms) = now_stamps();
        let mut instance = Instance {
            id,
            name,
            token: self.token(),
            element: p.element,
            configuration: p.configuration,
            tags: p.tags.unwrap_or_default(),
            valid: true,
            disabled: false,
            external_authentication: p.external_authentication,
            created_date,
            updated_ms,
        };
        self.after_provider_exchange(&mut instance, auth);
        self.index_tags(id, &instance.tags);
        let rendered = self.render(&instance, true);
        self.instances.insert(id, instance);
        Ok(rendered)
    }

    /// `GET /instances` with an `Element` token: the instance that owns it, else the platform's
    /// 401.
    pub fn get_by_token(&self, token: &str) -> Result<Value, ApiError> {
        self.instances.values().find(|i| i.token == token).map(|i| self.render(i, true)).ok_or_else(|| {
            ApiError {
                status: 401,
                message: "Invalid Organization or User secret, or invalid Element token provided.".into(),
                provider_message: None,
            }
        })
    }

    /// Gives an instance a new token out of band: the old one is refused from then on.
    pub fn revoke_token(&mut self, id: i64) -> Option<SimInstance> {
        let token = self.token();
        self.instances.get_mut(&id)?.token = token;
        self.sim_instance_by_id(id)
    }

    pub fn get(&self, id: i64) -> Result<Value, ApiError> {
        let instance = self.instances.get(&id).ok_or_else(|| not_found(id))?;
        Ok(self.render(instance, true))
    }

    /// `PUT /instances/{id}`: validates like create, replaces the configuration, issues a new
    /// token. A successful re-authentication makes the instance valid again; it stays disabled
    /// until enabled (`PUT /instances/{id}/enabled`).
    pub fn reprovision(&mut self, id: i64, body: &Value) -> Result<Value, ApiError> {
        self.reprovision_at(id, body, Instant::now())
    }

    /// `PUT /instances/{id}` at `now` (the time grant codes are checked against).
    pub fn reprovision_at(&mut self, id: i64, body: &Value, now: Instant) -> Result<Value, ApiError> {
        let existing = self.instances.get(&id).map(|i| i.element).ok_or_else(|| not_found(id))?;
        let p = self.validate(body, Some(existing))?;
        let auth = self.authenticate_with_provider(&p, now)?;
        let token = self.token();
        let old_tags = self.instances.get(&id).map(|i| i.tags.clone());
        let Some(mut instance) = self.instances.remove(&id) else {
            return Err(not_found(id));
        };
        if let Some(name) = p.name {
            instance.name = name;
        }
        if let Some(tags) = p.tags {
            instance.tags = tags;
        }
        instance.configuration = p.configuration;
        instance.external_authentication = p.external_authentication;
        instance.token = token;
        instance.valid = true;
        instance.updated_ms = now_stamps().1;
        self.after_provider_exchange(&mut instance, auth);
        if let Some(old) = old_tags {
            self.unindex_tags(id, &old);
        }
        self.index_tags(id, &instance.tags);
        let rendered = self.render(&instance, true);
        self.instances.insert(id, instance);
        Ok(rendered)
    }

    /// `PATCH /instances/{id}`: name and tags only (tags replaced); the token stays.
    pub fn patch(&mut self, id: i64, body: &Value) -> Result<Value, ApiError> {
        let obj = body.as_object().ok_or_else(|| bad_request("request body must be a JSON object"))?;
        if !self.instances.contains_key(&id) {
            return Err(not_found(id));
        }
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !sanitize_name(s).is_empty() => Some(sanitize_name(s)),
            Some(_) => return Err(bad_request("name must be a non-empty string")),
        };
        let tags = match obj.get("tags") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_tags(v)?),
        };
        let Some(mut instance) = self.instances.remove(&id) else {
            return Err(not_found(id));
        };
        if let Some(name) = name {
            instance.name = name;
        }
        if let Some(tags) = tags {
            self.unindex_tags(id, &instance.tags);
            instance.tags = tags;
            self.index_tags(id, &instance.tags);
        }
        instance.updated_ms = now_stamps().1;
        let rendered = self.render(&instance, true);
        self.instances.insert(id, instance);
        Ok(rendered)
    }

    pub fn delete(&mut self, id: i64) -> Result<(), ApiError> {
        let instance = self.instances.remove(&id).ok_or_else(|| not_found(id))?;
        self.unindex_tags(id, &instance.tags);
        Ok(())
    }

    pub fn set_enabled(&mut self, id: i64, enabled: bool) -> Result<Value, ApiError> {
        let instance = self.instances.get_mut(&id).ok_or_else(|| not_found(id))?;
        instance.disabled = !enabled;
        instance.updated_ms = now_stamps().1;
        let instance = self.instances.get(&id).ok_or_else(|| not_found(id))?;
        Ok(self.render(instance, true))
    }

    /// `GET /instances`: returns the page and the next-page cursor, if more remain.
    pub fn list(&self, q: &ListQuery) -> Result<(Vec<Value>, Option<String>), ApiError> {
        if let Some(bytes) = self.faults.hostile_search_page_bytes {
            return Ok(hostile_page(q, bytes));
        }
        let after = match &q.next_page {
            None => i64::MIN,
            Some(c) => decode_cursor(c).ok_or_else(|| {
                bad_request("nextPage is not a cursor returned by this API (elements-next-page-token)")
            })?,
        };
        let search = q.search_text.as_ref().map(|s| s.to_lowercase());
        let untagged = self.faults.untagged_search;
        let matches = |i: &Instance| {
            (untagged || q.tags.iter().all(|t| i.tags.contains(t)))
                && search.as_ref().is_none_or(|s| {
                    i.name.to_lowercase().contains(s) || self.catalog[i.element].key.contains(s.as_str())
                })
        };
        let mut page = Vec::with_capacity(q.page_size.min(MAX_PAGE_SIZE));
        let mut more = false;
        let mut last = None;
        let mut visit = |i: &Instance| -> bool {
            if !matches(i) {
                return true;
            }
            if page.len() == q.page_size {
                more = true;
                return false;
            }
            let mut rendered = self.render(i, q.hydrate);
            if untagged && let Some(tags) = rendered.get_mut("tags") {
                *tags = json!([]);
            }
            page.push(rendered);
            last = Some(i.id);
            true
        };
        if let Some(ids) = self.smallest_tag_set(&q.tags).filter(|_| !untagged) {
            for id in ids.range(after.saturating_add(1)..) {
                if let Some(i) = self.instances.get(id)
                    && !visit(i)
                {
                    break;
                }
            }
        } else if q.tags.is_empty() || untagged {
            for i in self.instances.range(after.saturating_add(1)..).map(|(_, i)| i) {
                if !visit(i) {
                    break;
                }
            }
        }
        let cursor = if more { last.map(encode_cursor) } else { None };
        Ok((page, cursor))
    }

    /// `GET|POST /elements/{keyOrId}/oauth/url`: the fake provider's authorization URL, on
    /// `authorize_base` (e.g. `http://127.0.0.1:8089/_sim/oauth/authorize`).
    pub fn oauth_url(
        &self,
        key_or_id: &str,
        params: &OAuthUrlParams,
        authorize_base: &str,
    ) -> Result<Value, ApiError> {
        let key = self.oauth_element(key_or_id)?;
        let url = params.authorize_url(authorize_base)?;
        Ok(json!({ "element": key, "oauthUrl": url }))
    }

    /// The key of an OAuth2 element given by key or numeric id: 404 for an unknown one, 400 for
    /// one that does not use OAuth.
    pub fn oauth_element(&self, key_or_id: &str) -> Result<&'static str, ApiError> {
        let def = self
            .catalog
            .iter()
            .find(|e| e.key == key_or_id)
            .or_else(|| key_or_id.parse::<i64>().ok().and_then(|id| self.catalog.iter().find(|e| e.id == id)))
            .ok_or_else(|| element_not_found(key_or_id))?;
        if def.auth != AuthKind::OAuth2 {
            return Err(bad_request(format!(
                "Element '{}' does not use OAuth (its authentication type is {})",
                def.key,
                def.auth.as_str()
            )));
        }
        Ok(def.key)
    }

    /// A fresh grant code of the fake provider for `client_id` and `redirect_uri` (what the
    /// authorization page puts in its redirect), valid for ten minutes and once.
    pub fn issue_code(&mut self, client_id: &str, redirect_uri: &str) -> String {
        self.issue_code_at(client_id, redirect_uri, Instant::now())
    }

    /// [`SimState::issue_code`] at `now`.
    pub fn issue_code_at(&mut self, client_id: &str, redirect_uri: &str, now: Instant) -> String {
        self.provider.issue_code(&mut self.rng, client_id, redirect_uri, now)
    }

    /// `GET /elements`: the catalog, a page of `page_size` from the cursor `next` (an index).
    pub fn elements(
        &self,
        page_size: usize,
        next: Option<&str>,
    ) -> Result<(Vec<Value>, Option<String>), ApiError> {
        let start = match next {
            None => 0,
            Some(cursor) => cursor
                .strip_prefix("e")
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|n| *n <= self.catalog.len())
                .ok_or_else(|| ApiError::bad_request("nextPage is not a cursor this platform gave"))?,
        };
        let end = (start + page_size.max(1)).min(self.catalog.len());
        let page = self.catalog[start..end].iter().map(catalog::element_json).collect();
        Ok((page, (end < self.catalog.len()).then(|| format!("e{end}"))))
    }

    pub fn element_configuration(&self, key: &str) -> Result<Value, ApiError> {
        self.catalog
            .iter()
            .find(|e| e.key == key)
            .map(catalog::configuration_json)
            .ok_or_else(|| element_not_found(key))
    }

    // ---- control ----

    pub fn sim_instances(&self) -> Vec<SimInstance> {
        self.instances.values().map(|i| self.sim_instance(i)).collect()
    }

    pub fn sim_instance_by_id(&self, id: i64) -> Option<SimInstance> {
        self.instances.get(&id).map(|i| self.sim_instance(i))
    }

    pub fn set_flags(&mut self, id: i64, flags: InstanceFlags) -> Option<SimInstance> {
        let instance = self.instances.get_mut(&id)?;
        if let Some(valid) = flags.valid {
            instance.valid = valid;
        }
        if let Some(disabled) = flags.disabled {
            instance.disabled = disabled;
        }
        self.sim_instance_by_id(id)
    }

    /// The platform's auto-disable after failed refreshes: the instance becomes invalid and
    /// disabled, and the provider refuses its current refresh token from now on. 404 for an
    /// unknown id, 409 for an instance without a refresh token.
    pub fn expire_refresh_token(&mut self, id: i64) -> Result<SimInstance, ApiError> {
        let instance = self.instances.get_mut(&id).ok_or_else(|| not_found(id))?;
        let token = instance.configuration.get("oauth.user.refresh_token").cloned().ok_or_else(|| {
            ApiError::new(409, format!("instance {id} has no OAuth refresh token (oauth.user.refresh_token)"))
        })?;
        instance.valid = false;
        instance.disabled = true;
        instance.updated_ms = now_stamps().1;
        self.provider.revoke_refresh_token(&token);
        self.sim_instance_by_id(id).ok_or_else(|| not_found(id))
    }

    fn sim_instance(&self, i: &Instance) -> SimInstance {
        SimInstance {
            id: i.id,
            name: i.name.clone(),
            token: i.token.clone(),
            element_key: self.catalog[i.element].key.to_string(),
            configuration: i.configuration.clone(),
            tags: i.tags.clone(),
            valid: i.valid,
            disabled: i.disabled,
            events_enabled: i.events_enabled(),
            external_authentication: i.external_authentication.clone(),
        }
    }

    // ---- helpers ----

    fn smallest_tag_set(&self, tags: &[String]) -> Option<&BTreeSet<i64>> {
        static EMPTY: BTreeSet<i64> = BTreeSet::new();
        if tags.is_empty() {
            return None;
        }
        let mut best: Option<&BTreeSet<i64>> = None;
        for t in tags {
            let set = self.by_tag.get(t).unwrap_or(&EMPTY);
            if best.is_none_or(|b| set.len() < b.len()) {
                best = Some(set);
            }
        }
        best
    }

    fn index_tags(&mut self, id: i64, tags: &[String]) {
        for t in tags {
            self.by_tag.entry(t.clone()).or_default().insert(id);
        }
    }

    fn unindex_tags(&mut self, id: i64, tags: &[String]) {
        for t in tags {
            if let Some(set) = self.by_tag.get_mut(t) {
                set.remove(&id);
                if set.is_empty() {
                    self.by_tag.remove(t);
                }
            }
        }
    }

    /// A base64-looking 44-character token (32 random bytes, padded).
    fn token(&mut self) -> String {
        const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        const LAST: &[u8] = b"AEIMQUYcgkosw048";
        let mut t = String::with_capacity(44);
        for _ in 0..42 {
            t.push(B64[self.rng.usize(..B64.len())] as char);
        }
        t.push(LAST[self.rng.usize(..LAST.len())] as char);
        t.push('=');
        t
    }

    /// The provider's side of a create or re-provision of an OAuth2 instance: exchanges the
    /// grant code (which must be one the fake provider issued for `oauth.api.key` and
    /// `oauth.callback.url`, unused and unexpired; the exchange uses it up), or checks the
    /// refresh token of `externalAuthentication: "initial"` is not revoked. Changes nothing
    /// else, so a refused call leaves the instance as it was.
    fn authenticate_with_provider(&mut self, p: &Provision, now: Instant) -> Result<ProviderAuth, ApiError> {
        if self.catalog[p.element].auth != AuthKind::OAuth2 {
            return Ok(ProviderAuth::NotOAuth);
        }
        let config = |key: &str| p.configuration.get(key).map(String::as_str).unwrap_or_default();
        if let Some(code) = &p.code {
            return self
                .provider
                .exchange_code(code, config("oauth.api.key"), config("oauth.callback.url"), now)
                .map(|()| ProviderAuth::Code)
                .map_err(|r| ApiError::provider(oauth::CODE_EXCHANGE_FAILED, r.provider_message()));
        }
        if self.provider.is_revoked(config("oauth.user.refresh_token")) {
            return Err(ApiError::provider(oauth::REFRESH_FAILED, oauth::REVOKED_REFRESH_TOKEN));
        }
        Ok(ProviderAuth::RefreshToken)
    }

    /// After the provider authenticated an OAuth2 instance the platform holds provider tokens
    /// (masked in answers): a new access token, and a new refresh token after a code exchange.
    fn after_provider_exchange(&mut self, instance: &mut Instance, auth: ProviderAuth) {
        if auth == ProviderAuth::NotOAuth {
            return;
        }
        let access = self.token();
        instance.configuration.insert("oauth.user.token".into(), access);
        if auth == ProviderAuth::Code || !instance.configuration.contains_key("oauth.user.refresh_token") {
            let refresh = self.token();
            instance.configuration.insert("oauth.user.refresh_token".into(), refresh);
        }
    }

    fn validate(&self, body: &Value, existing: Option<usize>) -> Result<Provision, ApiError> {
        let obj = body
            .as_object()
            .ok_or_else(|| bad_request("request body must be a JSON object (an ElementInstance)"))?;
        let element = match (obj.get("element"), existing) {
            (None | Some(Value::Null), Some(e)) => e,
            (None | Some(Value::Null), None) => {
                return Err(bad_request(
                    "element is required: send {\"element\": {\"key\": \"<connector key>\"}}",
                ));
            }
            (Some(v), _) => {
                let found = self.find_element(v)?;
                if let Some(e) = existing
                    && e != found
                {
                    return Err(bad_request(
                        "an instance cannot change its element (connector); delete it and create a new one",
                    ));
                }
                found
            }
        };
        let def = &self.catalog[element];
        let name = match obj.get("name") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) if !sanitize_name(s).is_empty() => Some(sanitize_name(s)),
            Some(_) => return Err(bad_request("name must be a non-empty string")),
        };
        let mut configuration = string_map(obj.get("configuration"), "configuration")?;
        let provider_data = string_map(obj.get("providerData"), "providerData")?;
        let external_authentication = match obj.get("externalAuthentication") {
            None | Some(Value::Null) => "none".to_string(),
            Some(Value::String(s)) if s == "none" || s == "initial" => s.clone(),
            Some(_) => {
                return Err(bad_request("externalAuthentication must be \"none\" or \"initial\""));
            }
        };
        let tags = match obj.get("tags") {
            None | Some(Value::Null) => None,
            Some(v) => Some(parse_tags(v)?),
        };

        let missing: Vec<&str> = def
            .config
            .iter()
            .filter(|c| c.needs_value())
            .filter(|c| configuration.get(c.key).is_none_or(|v| v.trim().is_empty()))
            .map(|c| c.key)
            .collect();
        if !missing.is_empty() {
            return Err(bad_request(format!(
                "Missing required configuration for element '{}': {}",
                def.key,
                missing.join(", ")
            )));
        }
        let code = provider_data.get("code").filter(|c| !c.trim().is_empty()).cloned();
        if def.auth == AuthKind::OAuth2 {
            let has_code = code.is_some();
            let has_refresh = external_authentication == "initial"
                && configuration.get("oauth.user.refresh_token").is_some_and(|t| !t.trim().is_empty());
            if !has_code && !has_refresh {
                return Err(bad_request(format!(
                    "Element '{}' uses OAuth2: send providerData.code (the grant code from the \
                     OAuth redirect), or externalAuthentication \"initial\" with configuration \
                     oauth.user.refresh_token",
                    def.key
                )));
            }
        }
        if configuration.get("event.notification.enabled").is_some_and(|v| v.eq_ignore_ascii_case("true"))
            && configuration.get("event.notification.callback.url").is_none_or(|v| v.trim().is_empty())
        {
            return Err(bad_request(
                "Events are enabled (event.notification.enabled=true) but \
                 event.notification.callback.url is missing",
            ));
        }
        if let Some(kind) = configuration.get("event.vendor.type")
            && !matches!(kind.as_str(), "polling" | "webhook" | "webhooks")
        {
            return Err(bad_request("event.vendor.type must be \"polling\" or \"webhook\""));
        }
        for c in &def.config {
            if let Some(default) = c.default_value {
                configuration.entry(c.key.to_string()).or_insert_with(|| default.to_string());
            }
        }
        Ok(Provision { element, name, configuration, tags, external_authentication, code })
    }

    fn find_element(&self, v: &Value) -> Result<usize, ApiError> {
        let obj = v
            .as_object()
            .ok_or_else(|| bad_request("element must be an object: {\"key\": \"<connector key>\"}"))?;
        if let Some(key) = obj.get("key").and_then(Value::as_str) {
            return self.catalog.iter().position(|e| e.key == key).ok_or_else(|| {
                bad_request(format!(
                    "No element found with key '{key}'; known keys: {}",
                    self.catalog.iter().map(|e| e.key).collect::<Vec<_>>().join(", ")
                ))
            });
        }
        if let Some(id) = obj.get("id").and_then(Value::as_i64) {
            return self
                .catalog
                .iter()
                .position(|e| e.id == id)
                .ok_or_else(|| bad_request(format!("No element found with id {id}")));
        }
        Err(bad_request("element needs a key (or an id)"))
    }

    /// The Swagger's `ElementInstance`, secrets masked. Without `hydrate`, no configuration.
    fn render(&self, i: &Instance, hydrate: bool) -> Value {
        let def = &self.catalog[i.element];
        let mut m = Map::with_capacity(20);
        m.insert("id".into(), json!(i.id));
        m.insert("name".into(), json!(i.name));
        m.insert("token".into(), json!(i.token));
        m.insert("element".into(), catalog::element_json(def));
        m.insert("elementId".into(), json!(def.id));
        if hydrate {
            let configuration: Map<String, Value> = i
                .configuration
                .iter()
                .map(|(k, v)| {
                    let masked =
                        k.starts_with("oauth.") || def.config.iter().any(|c| c.key == k && c.is_masked());
                    let value = if masked { MASK } else { v.as_str() };
                    (k.clone(), Value::String(value.to_string()))
                })
                .collect();
            m.insert("configuration".into(), Value::Object(configuration));
        }
        m.insert("tags".into(), json!(i.tags));
        m.insert("valid".into(), json!(i.valid));
        m.insert("disabled".into(), json!(i.disabled));
        m.insert("eventsEnabled".into(), json!(i.events_enabled()));
        m.insert("traceLoggingEnabled".into(), json!(false));
        m.insert("cachingEnabled".into(), json!(false));
        m.insert("cacheTimeToLive".into(), json!(0));
        m.insert("maxCacheSize".into(), json!(0));
        m.insert("externalAuthentication".into(), json!(i.external_authentication));
        m.insert("createdDate".into(), json!(i.created_date));
        m.insert("updatedDate".into(), json!(i.updated_ms));
        m.insert(
            "user".into(),
            json!({"id": 1, "emailAddress": "simulator@example.com", "firstName": "Platform", "lastName": "Simulator"}),
        );
        Value::Object(m)
    }
}

/// A map of string values; numbers and booleans are turned into strings, `null`s dropped.
fn string_map(v: Option<&Value>, field: &str) -> Result<BTreeMap<String, String>, ApiError> {
    let obj = match v {
        None | Some(Value::Null) => return Ok(BTreeMap::new()),
        Some(Value::Object(obj)) => obj,
        Some(_) => {
            return Err(bad_request(format!("{field} must be an object of string values")));
        }
    };
    let mut out = BTreeMap::new();
    for (k, v) in obj {
        let text = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            _ => {
                return Err(bad_request(format!("{field}.{k} must be a string, not an object or array")));
            }
        };
        out.insert(k.clone(), text);
    }
    Ok(out)
}

/// What the platform stores of an instance name: markup stripped (as the platform strips HTML
/// from names: `<a href="#">x</a>` reads back as `x`), then surrounding whitespace.
pub fn sanitize_name(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_tag = false;
    for c in name.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => in_tag = false,
            _ if !in_tag => out.push(c),
            _ => {}
        }
    }
    out.trim().to_string()
}

fn parse_tags(v: &Value) -> Result<Vec<String>, ApiError> {
    let items = v.as_array().ok_or_else(|| bad_request("tags must be an array of strings"))?;
    let mut tags: Vec<String> = Vec::with_capacity(items.len());
    for item in items {
        let tag = match item {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("name")
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| bad_request("a tag object needs a name"))?,
            _ => return Err(bad_request("tags must be an array of strings")),
        };
        if !tags.contains(&tag) {
            tags.push(tag);
        }
    }
    Ok(tags)
}

/// A page of a hostile server's endless answer to a search: about `bytes` bytes of instances
/// that carry the searched tags, and a next-page token that is new each time.
fn hostile_page(q: &ListQuery, bytes: usize) -> (Vec<Value>, Option<String>) {
    let page_number = q.next_page.as_deref().and_then(decode_cursor).unwrap_or(0);
    let per_instance = 16 * 1024;
    let padding = "x".repeat(per_instance);
    let count = (bytes / per_instance).max(1);
    let page = (0..count)
        .map(|n| {
            let id = page_number.saturating_mul(1_000_000).saturating_add(n as i64 + 1);
            json!({ "id": id, "name": padding, "tags": q.tags, "element": { "key": "echo" } })
        })
        .collect();
    (page, Some(encode_cursor(page_number.saturating_add(1))))
}

fn encode_cursor(last_id: i64) -> String {
    format!("c{last_id:x}")
}

fn decode_cursor(cursor: &str) -> Option<i64> {
    i64::from_str_radix(cursor.strip_prefix('c')?, 16).ok()
}

/// `createdDate` (ISO-8601, UTC) and `updatedDate` (epoch millis) for now.
fn now_stamps() -> (String, i64) {
    let now = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = now.as_secs() as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    let iso = format!("{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z", rem / 3600, (rem % 3600) / 60, rem % 60);
    (iso, now.as_millis() as i64)
}

/// Days since 1970-01-01 to (year, month, day) (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> SimState {
        SimState::new("u".into(), "o".into(), 7)
    }

    #[test]
    fn authorization_any_order_and_whitespace() {
        let s = state();
        assert!(s.authorized(Some("User u, Organization o")));
        assert!(s.authorized(Some("Organization o,User u")));
        assert!(s.authorized(Some("  Element tok ,  Organization   o , User u ")));
        assert!(!s.authorized(Some("User u")));
        assert!(!s.authorized(Some("User x, Organization o")));
        assert!(!s.authorized(None));
    }

    #[test]
    fn dates() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(19_723), (2024, 1, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
    }

    #[test]
    fn tokens_look_like_base64() {
        let mut s = state();
        let t = s.token();
        assert_eq!(t.len(), 44);
        assert!(t.ends_with('='));
        assert_ne!(t, s.token());
    }

    #[test]
    fn create_validates_and_masks() {
        let mut s = state();
        let err = s
            .create(&json!({"element": {"key": "zendesk"}, "name": "n", "configuration": {"username": "a"}}))
            .unwrap_err();
        assert_eq!(err.status, 400);
        assert!(err.message.contains("password") && err.message.contains("zendesk.subdomain"));
        let ok = s
            .create(&json!({"element": {"key": "zendesk"}, "name": "n", "tags": ["t"],
                "configuration": {"username": "a", "password": "pw", "zendesk.subdomain": "x"}}))
            .unwrap();
        assert_eq!(ok["configuration"]["password"], MASK);
        assert_eq!(ok["configuration"]["username"], "a");
        let err = s
            .create(&json!({"element": {"key": "sfdc"}, "name": "n", "configuration": {
                "oauth.api.key": "k", "oauth.api.secret": "s", "oauth.callback.url": "u"}}))
            .unwrap_err();
        assert!(err.message.contains("providerData.code"));
    }

    #[test]
    fn paging_by_tag() {
        let mut s = state();
        for n in 0..5 {
            s.create(&json!({"element": {"key": "echo"}, "name": format!("n{n}"), "tags": ["a", if n % 2 == 0 {"even"} else {"odd"}]}))
                .unwrap();
        }
        let mut q = ListQuery {
            tags: vec!["a".into(), "even".into()],
            page_size: 2,
            hydrate: true,
            ..ListQuery::default()
        };
        let (p1, c1) = s.list(&q).unwrap();
        assert_eq!(p1.len(), 2);
        q.next_page = c1;
        let (p2, c2) = s.list(&q).unwrap();
        assert_eq!(p2.len(), 1);
        assert_eq!(c2, None);
        q.next_page = Some("garbage".into());
        assert_eq!(s.list(&q).unwrap_err().status, 400);
    }

    #[test]
    fn fail_next_is_scoped_and_consumed() {
        let mut s = state();
        s.push_fail_next(FailNext::status(2, 503).only("POST /instances"));
        assert_eq!(s.begin_call("GET /instances", false).action, FaultAction::Proceed);
        for _ in 0..2 {
            assert!(matches!(
                s.begin_call("POST /instances", true).action,
                FaultAction::Fail { status: 503, .. }
            ));
        }
        assert_eq!(s.begin_call("POST /instances", true).action, FaultAction::Proceed);
        assert_eq!(s.calls().count("POST /instances"), 3);
        assert_eq!(s.calls().writes, 3);
        assert_eq!(s.calls().reads, 1);
    }

    #[test]
    fn names_are_stored_the_way_the_platform_stores_them() {
        assert_eq!(sanitize_name("<a href=\"#\" onclick=\"alert(1)\">x</a>"), "x");
        assert_eq!(sanitize_name("  team a / billing  "), "team a / billing");
        assert_eq!(sanitize_name("a > b"), "a > b", "a lone `>` is not markup");
        assert_eq!(sanitize_name("<b></b>"), "");
        let mut s = state();
        let created = s.create(&json!({"element": {"key": "echo"}, "name": "<i>demo</i>"})).unwrap();
        assert_eq!(created["name"], "demo");
        let id = created["id"].as_i64().unwrap();
        assert_eq!(s.patch(id, &json!({"name": " <b>bold</b> "})).unwrap()["name"], "bold");
        assert!(s.patch(id, &json!({"name": "<br>"})).is_err(), "nothing left of the name");
    }

    const CB: &str = "https://app.example/cb";

    fn sfdc(code: Option<&str>, refresh_token: Option<&str>) -> Value {
        let mut body = json!({"element": {"key": "sfdc"}, "name": "crm", "configuration": {
            "oauth.api.key": "client-1", "oauth.api.secret": "secret-1", "oauth.callback.url": CB}});
        if let Some(code) = code {
            body["providerData"] = json!({"code": code});
        }
        if let Some(rt) = refresh_token {
            body["externalAuthentication"] = json!("initial");
            body["configuration"]["oauth.user.refresh_token"] = json!(rt);
        }
        body
    }

    fn provider_message(e: &ApiError) -> &str {
        e.provider_message.as_deref().unwrap_or_default()
    }

    #[test]
    fn oauth_url_by_element() {
        let s = state();
        let params = OAuthUrlParams {
            api_key: Some("client-1".into()),
            api_secret: Some("secret-1".into()),
            callback_url: Some(CB.into()),
            state: Some("st".into()),
            ..OAuthUrlParams::default()
        };
        let base = "http://127.0.0.1:1/_sim/oauth/authorize";
        for key in ["sfdc", "23"] {
            let ok = s.oauth_url(key, &params, base).unwrap();
            assert_eq!(ok["element"], "sfdc");
            assert_eq!(
                ok["oauthUrl"],
                "http://127.0.0.1:1/_sim/oauth/authorize?response_type=code&client_id=client-1\
                 &redirect_uri=https%3A%2F%2Fapp.example%2Fcb&state=st"
            );
        }
        for (key, status, message) in [
            ("nope", 404, "No element found with key 'nope'"),
            ("zendesk", 400, "Element 'zendesk' does not use OAuth (its authentication type is basic)"),
            ("echo", 400, "Element 'echo' does not use OAuth (its authentication type is custom)"),
        ] {
            let err = s.oauth_url(key, &params, base).unwrap_err();
            assert_eq!((err.status, err.message.as_str()), (status, message), "{key}");
        }
    }

    #[test]
    fn codes_are_checked_on_create() {
        let mut s = state();
        let t0 = Instant::now();
        let late = t0 + oauth::CODE_LIFETIME + Duration::from_secs(1);
        let expired = s.issue_code_at("client-1", CB, t0);
        let other_client = s.issue_code_at("client-2", CB, t0);
        let other_redirect = s.issue_code_at("client-1", "https://app.example/other", t0);
        for (code, at, expected) in [
            ("made-up-code", t0, oauth::INVALID_CODE),
            (expired.as_str(), late, oauth::INVALID_CODE),
            (other_client.as_str(), t0, oauth::CODE_CLIENT_MISMATCH),
            (other_redirect.as_str(), t0, oauth::CODE_REDIRECT_MISMATCH),
        ] {
            let err = s.create_at(&sfdc(Some(code), None), at).unwrap_err();
            assert_eq!(err.status, 400, "{code}");
            assert_eq!(err.message, oauth::CODE_EXCHANGE_FAILED, "{code}");
            assert_eq!(provider_message(&err), expected, "{code}");
        }
        assert!(s.instances.is_empty(), "nothing created by a refused exchange");

        // A body refused before the exchange leaves the code usable; a successful exchange uses
        // it up.
        let code = s.issue_code("client-1", CB);
        let mut nameless = sfdc(Some(&code), None);
        nameless["name"] = Value::Null;
        assert!(s.create(&nameless).unwrap_err().message.contains("name is required"));
        let created = s.create(&sfdc(Some(&code), None)).unwrap();
        assert_eq!((created["valid"].as_bool(), created["disabled"].as_bool()), (Some(true), Some(false)));
        assert_eq!(created["configuration"]["oauth.user.refresh_token"], MASK);
        let err = s.create(&sfdc(Some(&code), None)).unwrap_err();
        assert_eq!(provider_message(&err), oauth::INVALID_CODE);
        // A code is good until just before its lifetime ends.
        let code = s.issue_code_at("client-1", CB, t0);
        s.create_at(&sfdc(Some(&code), None), t0 + oauth::CODE_LIFETIME - Duration::from_secs(1)).unwrap();
    }

    #[test]
    fn reauthentication_with_a_code_uses_it_up_and_renews_the_refresh_token() {
        let mut s = state();
        let code = s.issue_code("client-1", CB);
        let id = s.create(&sfdc(Some(&code), None)).unwrap()["id"].as_i64().unwrap();
        let before = s.sim_instance_by_id(id).unwrap();
        let err = s.reprovision(id, &sfdc(Some(&code), None)).unwrap_err();
        assert_eq!(provider_message(&err), oauth::INVALID_CODE);
        assert_eq!(s.sim_instance_by_id(id).unwrap(), before, "a refused PUT changes nothing");
        let fresh = s.issue_code("client-1", CB);
        let mut body = sfdc(Some(&fresh), None);
        body["configuration"]["oauth.user.refresh_token"] =
            json!(before.configuration["oauth.user.refresh_token"]);
        s.reprovision(id, &body).unwrap();
        let after = s.sim_instance_by_id(id).unwrap();
        assert_ne!(after.token, before.token);
        assert_ne!(
            after.configuration["oauth.user.refresh_token"], before.configuration["oauth.user.refresh_token"],
            "the provider issues a new refresh token on a code exchange"
        );
        assert_eq!(
            provider_message(&s.reprovision(id, &sfdc(Some(&fresh), None)).unwrap_err()),
            oauth::INVALID_CODE
        );
    }

    #[test]
    fn expired_refresh_token_is_revoked_and_reenabling_is_separate() {
        let mut s = state();
        let id = s.create(&sfdc(None, Some("rt-1"))).unwrap()["id"].as_i64().unwrap();
        let expired = s.expire_refresh_token(id).unwrap();
        assert_eq!((expired.valid, expired.disabled), (false, true));

        let revoked = sfdc(None, Some("rt-1"));
        let err = s.create(&revoked).unwrap_err();
        assert_eq!((err.status, err.message.as_str()), (400, oauth::REFRESH_FAILED));
        assert_eq!(provider_message(&err), oauth::REVOKED_REFRESH_TOKEN);
        let err = s.reprovision(id, &revoked).unwrap_err();
        assert_eq!(provider_message(&err), oauth::REVOKED_REFRESH_TOKEN);
        let still = s.sim_instance_by_id(id).unwrap();
        assert_eq!((still.valid, still.disabled), (false, true));

        // Re-authentication makes it valid, not enabled.
        s.reprovision(id, &sfdc(None, Some("rt-2"))).unwrap();
        let reauthed = s.sim_instance_by_id(id).unwrap();
        assert_eq!((reauthed.valid, reauthed.disabled), (true, true));
        assert_eq!(reauthed.configuration["oauth.user.refresh_token"], "rt-2");
        s.set_enabled(id, true).unwrap();
        let enabled = s.sim_instance_by_id(id).unwrap();
        assert_eq!((enabled.valid, enabled.disabled), (true, false));

        // The same with a code, after the provider-issued refresh token expired.
        s.expire_refresh_token(id).unwrap();
        let code = s.issue_code("client-1", CB);
        s.reprovision(id, &sfdc(Some(&code), None)).unwrap();
        let reauthed = s.sim_instance_by_id(id).unwrap();
        assert_eq!((reauthed.valid, reauthed.disabled), (true, true));

        assert_eq!(s.expire_refresh_token(id + 1000).unwrap_err().status, 404);
        let echo =
            s.create(&json!({"element": {"key": "echo"}, "name": "e"})).unwrap()["id"].as_i64().unwrap();
        assert_eq!(s.expire_refresh_token(echo).unwrap_err().status, 409);
    }

    #[test]
    fn reset_forgets_codes_and_revoked_refresh_tokens() {
        let mut s = state();
        let code = s.issue_code("client-1", CB);
        let id = s.create(&sfdc(None, Some("rt-1"))).unwrap()["id"].as_i64().unwrap();
        s.expire_refresh_token(id).unwrap();
        s.reset();
        assert_eq!(provider_message(&s.create(&sfdc(Some(&code), None)).unwrap_err()), oauth::INVALID_CODE);
        s.create(&sfdc(None, Some("rt-1"))).unwrap();
    }
}
