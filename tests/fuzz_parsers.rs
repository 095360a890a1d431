//! Property tests of every parser of outside data: platform answers (instances, configuration
//! catalogs, error bodies, `Retry-After`, paging headers — the last through the real client
//! against a scripted loopback server), the simulator's `Authorization` parser, configuration from
//! Secrets, durations and label selectors.
//!
//! Arbitrary input must never panic, results stay bounded (error messages capped, parsed
//! collections no larger than the input), and generated valid input round-trips. Case counts keep
//! the whole file well under 20 s in the dev profile.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, SystemTime};

use connector_operator::api::{
    ConfigurationSource, ConnectorInstanceSpec, EventVendorType, EventsSpec, SecretKeySelector,
    SecretReference,
};
use connector_operator::controller::inputs::{merge_configuration, secret_text, selector_matches};
use connector_operator::controller::{Error, parse_duration};
use connector_operator::platform::{
    ElementConfig, ElementInstance, ErrorBody, MAX_MESSAGE_BYTES, NEXT_PAGE_HEADER, PlatformClient,
    PlatformConfig, PlatformError, RetryPolicy, parse_retry_after,
};
use connector_operator::sim::authorization_matches;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement};
use proptest::collection::{btree_map, hash_map, vec};
use proptest::prelude::*;
use secrecy::ExposeSecret;
use serde_json::{Map, Value, json};

/// Bytes of the `…` that marks a cut message.
const ELLIPSIS: usize = '…'.len_utf8();

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig { cases, failure_persistence: None, ..ProptestConfig::default() }
}

// ---------------------------------------------------------------------------------------------
// Strategies
// ---------------------------------------------------------------------------------------------

/// Any text, including control characters, unicode and the empty string.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        any::<String>(),
        Just(String::new()),
        "[ \\t\\r\\n\\x00\\x7f\\u{200b}\\u{feff}]{0,6}",
    ]
}

/// Arbitrary JSON, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        any_text().prop_map(Value::String),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            vec(inner.clone(), 0..6).prop_map(Value::Array),
            btree_map(any_text(), inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A JSON value of the platform's instance shape, with each field sometimes of a wrong type.
fn instance_like() -> impl Strategy<Value = Value> {
    let field = |name: &'static str| (Just(name), proptest::option::of(any_json()));
    (
        prop_oneof![any::<i64>().prop_map(Value::from), any_json()],
        vec(
            prop_oneof![
                field("name"),
                field("token"),
                field("element"),
                field("elementId"),
                field("configuration"),
                field("tags"),
                field("valid"),
                field("disabled"),
                field("eventsEnabled"),
                field("externalAuthentication"),
                field("createdDate"),
                field("user"),
            ],
            0..10,
        ),
    )
        .prop_map(|(id, fields)| {
            let mut object = Map::new();
            object.insert("id".into(), id);
            for (name, value) in fields {
                if let Some(value) = value {
                    object.insert(name.into(), value);
                }
            }
            Value::Object(object)
        })
}

/// A well-formed instance as the platform sends it, and what it should parse to.
#[derive(Debug, Clone)]
struct WellFormed {
    id: i64,
    name: String,
    token: String,
    tags: Vec<String>,
    configuration: BTreeMap<String, String>,
    valid: bool,
    disabled: bool,
}

fn well_formed() -> impl Strategy<Value = WellFormed> {
    (
        any::<i64>(),
        any::<String>(),
        "[A-Za-z0-9+/=]{1,40}",
        vec(any::<String>(), 0..6),
        btree_map(any::<String>(), any::<String>(), 0..6),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(|(id, name, token, tags, configuration, valid, disabled)| WellFormed {
            id,
            name,
            token,
            tags,
            configuration,
            valid,
            disabled,
        })
}

// ---------------------------------------------------------------------------------------------
// Platform bodies
// ---------------------------------------------------------------------------------------------

/// Elements of a JSON array field, 0 when it is not an array.
fn array_len(value: &Value, field: &str) -> usize {
    value.get(field).and_then(Value::as_array).map_or(0, Vec::len)
}

/// Entries of a JSON object field, 0 when it is not an object.
fn object_len(value: &Value, field: &str) -> usize {
    value.get(field).and_then(Value::as_object).map_or(0, Map::len)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn element_instance_from_arbitrary_bytes_never_panics(bytes in vec(any::<u8>(), 0..256)) {
        let _ = serde_json::from_slice::<ElementInstance>(&bytes);
        let _ = serde_json::from_slice::<Vec<ElementInstance>>(&bytes);
        let _ = serde_json::from_slice::<ElementConfig>(&bytes);
    }

    #[test]
    fn element_instance_from_arbitrary_json_is_bounded(value in instance_like()) {
        if let Ok(instance) = serde_json::from_value::<ElementInstance>(value.clone()) {
            prop_assert!(instance.tags.len() <= array_len(&value, "tags"));
            prop_assert!(instance.configuration.len() <= object_len(&value, "configuration"));
            prop_assert!(instance.token.as_ref().is_none_or(|t| !t.expose_secret().is_empty()));
            // The token never shows in Debug output.
            if let Some(token) = value.get("token").and_then(Value::as_str).filter(|t| t.len() >= 8) {
                let debug = format!("{instance:?}");
                prop_assert!(!debug.contains(token), "the token shows in Debug output");
            }
        }
        // Any JSON at all, also not an object.
        let _ = serde_json::from_value::<ElementInstance>(value.get("tags").cloned().unwrap_or(Value::Null));
    }

    #[test]
    fn well_formed_instances_round_trip(expected in well_formed()) {
        let body = json!({
            "id": expected.id, "name": expected.name, "token": expected.token,
            "tags": expected.tags, "configuration": expected.configuration,
            "valid": expected.valid, "disabled": expected.disabled,
            "element": {"id": 7, "key": "zendesk"}, "unknownField": {"x": [1, 2]},
        });
        let bytes = serde_json::to_vec(&body).unwrap();
        let instance: ElementInstance = serde_json::from_slice(&bytes).unwrap();
        prop_assert_eq!(instance.id, expected.id);
        prop_assert_eq!(instance.name.as_deref(), Some(expected.name.as_str()));
        prop_assert_eq!(instance.token.as_ref().map(|t| t.expose_secret().to_string()), Some(expected.token.clone()));
        prop_assert_eq!(&instance.tags, &expected.tags);
        let configuration: BTreeMap<String, String> =
            instance.configuration.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
        prop_assert_eq!(&configuration, &expected.configuration);
        prop_assert_eq!(instance.valid, Some(expected.valid));
        prop_assert_eq!(instance.disabled, Some(expected.disabled));
        let element_key = instance.element.and_then(|e| e.key);
        prop_assert_eq!(element_key.as_deref(), Some("zendesk"));
    }

    #[test]
    fn ids_parse_from_integers_integral_floats_and_numeric_strings(id in any::<i32>()) {
        let id = i64::from(id);
        for raw in [json!(id), json!(id as f64), json!(id.to_string()), json!(format!(" {id} "))] {
            let instance: ElementInstance = serde_json::from_value(json!({ "id": raw })).unwrap();
            prop_assert_eq!(instance.id, id);
        }
        let fraction = json!({ "id": id as f64 + 0.5 });
        prop_assert!(serde_json::from_value::<ElementInstance>(fraction).is_err());
    }

    #[test]
    fn element_config_from_arbitrary_json_never_panics(value in any_json()) {
        if let Ok(entry) = serde_json::from_value::<ElementConfig>(value.clone()) {
            // `required` comes only from `required` or `mandatory`.
            let flag = |f: &str| matches!(value.get(f), Some(Value::Bool(true)))
                || value.get(f).and_then(Value::as_str).is_some_and(|s| s.eq_ignore_ascii_case("true"));
            prop_assert!(!entry.required || flag("required") || flag("mandatory"));
            prop_assert!(!entry.needs_user_value() || entry.required);
        }
    }

    #[test]
    fn element_config_required_and_mandatory(
        key in "[a-z.]{1,20}",
        required in proptest::option::of(any::<bool>()),
        mandatory in proptest::option::of(any::<bool>()),
        hidden in any::<bool>(),
        default in proptest::option::of("[a-z]{0,5}"),
    ) {
        let mut body = json!({ "key": key, "hideFromConsole": hidden });
        if let Some(r) = required { body["required"] = json!(r); }
        if let Some(m) = mandatory { body["mandatory"] = json!(m.to_string()); }
        if let Some(d) = &default { body["defaultValue"] = json!(d); }
        let entry: ElementConfig = serde_json::from_value(body).unwrap();
        let expected = required.or(mandatory).unwrap_or(false);
        prop_assert_eq!(&entry.key, &key);
        prop_assert_eq!(entry.required, expected);
        prop_assert_eq!(entry.needs_user_value(), expected && !hidden && default.is_none());
    }
}

// ---------------------------------------------------------------------------------------------
// Error bodies and Retry-After
// ---------------------------------------------------------------------------------------------

fn check_error_body(body: &ErrorBody) -> Result<(), TestCaseError> {
    for field in [&body.request_id, &body.message, &body.provider_message].into_iter().flatten() {
        prop_assert!(field.len() <= MAX_MESSAGE_BYTES + ELLIPSIS, "field of {} bytes", field.len());
        prop_assert!(!field.trim().is_empty());
    }
    if let Some(raw) = &body.raw {
        prop_assert!(raw.len() <= 256 + ELLIPSIS, "raw of {} bytes", raw.len());
        prop_assert!(!raw.chars().any(char::is_control), "raw text without control characters");
    }
    let described = body.describe();
    prop_assert!(described.len() <= 3 * (MAX_MESSAGE_BYTES + ELLIPSIS) + 64, "{} bytes", described.len());
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn error_body_from_arbitrary_bytes_is_bounded(bytes in vec(any::<u8>(), 0..2048)) {
        check_error_body(&ErrorBody::parse(&bytes))?;
    }

    #[test]
    fn error_body_from_arbitrary_json_is_bounded(
        message in any_json(),
        provider in any_json(),
        request_id in any_json(),
        padding in 0usize..3000,
    ) {
        let mut body = json!({ "message": message, "providerMessage": provider, "requestId": request_id });
        if let Value::String(s) = &mut body["message"] { s.push_str(&"é".repeat(padding)); }
        let parsed = ErrorBody::parse(&serde_json::to_vec(&body).unwrap());
        check_error_body(&parsed)?;
    }

    #[test]
    fn error_body_keeps_a_short_message(message in "\\PC{1,200}") {
        prop_assume!(!message.trim().is_empty());
        let parsed = ErrorBody::parse(&serde_json::to_vec(&json!({ "message": message })).unwrap());
        prop_assert_eq!(parsed.message.as_deref(), Some(message.trim()));
    }

    #[test]
    fn retry_after_never_panics(value in any_text()) {
        let now = SystemTime::now();
        if parse_retry_after(&value, now).is_some() {
            prop_assert!(!value.trim().is_empty());
        }
    }

    #[test]
    fn retry_after_seconds_and_dates_round_trip(seconds in 0u64..100_000_000, past in any::<bool>()) {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        prop_assert_eq!(parse_retry_after(&seconds.to_string(), now), Some(Duration::from_secs(seconds)));
        prop_assert_eq!(parse_retry_after(&format!("  {seconds}\t"), now), Some(Duration::from_secs(seconds)));
        let seconds = seconds % 10_000_000;
        let (when, expected) = if past {
            (now - Duration::from_secs(seconds), Duration::ZERO)
        } else {
            (now + Duration::from_secs(seconds), Duration::from_secs(seconds))
        };
        prop_assert_eq!(parse_retry_after(&httpdate::fmt_http_date(when), now), Some(expected));
        prop_assert_eq!(parse_retry_after(&format!("-{}", seconds.max(1)), now), None);
    }
}

// ---------------------------------------------------------------------------------------------
// The client against a scripted loopback server: status, body, Retry-After and paging headers
// ---------------------------------------------------------------------------------------------

/// One scripted answer.
#[derive(Debug, Clone)]
struct Scripted {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Vec<u8>>,
    next_page: Option<Vec<u8>>,
}

/// A loopback HTTP server that answers each request with the next scripted answer (404 when the
/// script is empty), shared by all cases of this file.
struct ScriptServer {
    script: Arc<Mutex<VecDeque<Scripted>>>,
    /// One case at a time: the tests of this file run in parallel and share the server.
    serial: Mutex<()>,
    client: PlatformClient,
    runtime: tokio::runtime::Runtime,
}

fn script_server() -> &'static ScriptServer {
    static SERVER: OnceLock<ScriptServer> = OnceLock::new();
    SERVER.get_or_init(|| {
        let runtime =
            tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        let script: Arc<Mutex<VecDeque<Scripted>>> = Arc::default();
        let served = script.clone();
        let listener = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
        let addr = listener.local_addr().unwrap();
        let app = axum::Router::new().fallback(move || {
            let next = served.lock().unwrap().pop_front();
            async move {
                let Some(answer) = next else {
                    return http::Response::builder().status(404).body(axum::body::Body::empty()).unwrap();
                };
                let mut response = http::Response::builder().status(answer.status);
                if let Some(value) = answer.retry_after.and_then(|v| http::HeaderValue::from_bytes(&v).ok()) {
                    response = response.header(http::header::RETRY_AFTER, value);
                }
                if let Some(value) = answer.next_page.and_then(|v| http::HeaderValue::from_bytes(&v).ok()) {
                    response = response.header(NEXT_PAGE_HEADER, value);
                }
                response.body(axum::body::Body::from(answer.body)).unwrap()
            }
        });
        runtime.spawn(async move { axum::serve(listener, app).await });
        ScriptServer { script, serial: Mutex::new(()), client: client(addr, 2), runtime }
    })
}

fn client(addr: SocketAddr, page_size: u32) -> PlatformClient {
    let mut cfg = PlatformConfig::new(
        format!("http://{addr}/elements/api-v2"),
        "fuzz-user".to_string().into(),
        "fuzz-org".to_string().into(),
    );
    cfg.allow_http = true;
    cfg.requests_per_second = 0.0;
    cfg.timeout = Duration::from_secs(5);
    PlatformClient::new(cfg)
        .unwrap()
        .with_retry_policy(RetryPolicy { max_attempts: 1, ..RetryPolicy::default() })
        .with_page_size(page_size)
}

impl ScriptServer {
    /// Runs `call` with `script` loaded; the script must be used up or the call failed.
    fn run<T>(&self, script: Vec<Scripted>, call: impl AsyncFnOnce(PlatformClient) -> T) -> T {
        let _serial = self.serial.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut queue = self.script.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        queue.clear();
        queue.extend(script);
        drop(queue);
        self.runtime.block_on(call(self.client.clone()))
    }
}

/// Header bytes: text, visible ASCII, obs-text and separators.
fn header_bytes() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        "[ -~]{0,40}".prop_map(String::into_bytes),
        vec(prop_oneof![0x20u8..0x7f, 0x80u8..=0xff, Just(b'\t')], 0..40),
        Just(b"   ".to_vec()),
    ]
}

fn any_status() -> impl Strategy<Value = u16> {
    prop_oneof![
        3 => prop::sample::select(vec![200u16, 201, 204, 400, 401, 403, 404, 408, 409, 429, 500, 502, 503]),
        1 => 300u16..400,
        1 => 400u16..600,
    ]
}

fn scripted() -> impl Strategy<Value = Scripted> {
    (
        any_status(),
        prop_oneof![
            vec(any::<u8>(), 0..512),
            any_json().prop_map(|v| serde_json::to_vec(&v).unwrap()),
            instance_like().prop_map(|v| serde_json::to_vec(&v).unwrap()),
        ],
        proptest::option::of(header_bytes()),
        proptest::option::of(header_bytes()),
    )
        .prop_map(|(status, body, retry_after, next_page)| Scripted {
            status,
            body,
            retry_after,
            next_page,
        })
}

/// Longest error text the client may produce: the capped platform message plus fixed wording.
const MAX_ERROR_TEXT: usize = MAX_MESSAGE_BYTES + ELLIPSIS + 400;

fn check_platform_error(error: &PlatformError) -> Result<(), TestCaseError> {
    let text = error.to_string();
    prop_assert!(
        text.len() <= MAX_ERROR_TEXT,
        "error text of {} bytes: {}",
        text.len(),
        text.chars().take(200).collect::<String>()
    );
    prop_assert!(!text.contains("fuzz-user") && !text.contains("fuzz-org"), "no credentials in errors");
    if let Some(wait) = error.retry_after() {
        let retryable = matches!(error, PlatformError::RateLimited { .. } | PlatformError::Transient { .. });
        prop_assert!(retryable, "only 429 and transient errors carry a wait");
        prop_assert!(wait <= Duration::from_secs(u64::MAX / 2));
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn client_answers_of_any_status_body_and_headers(answer in scripted()) {
        let server = script_server();
        let status = answer.status;
        let result = server.run(vec![answer.clone()], async |client| client.get_instance(42).await);
        match result {
            Ok(instance) => prop_assert!((200..300).contains(&status), "accepted HTTP {status}: {instance:?}"),
            Err(error) => {
                check_platform_error(&error)?;
                let expected = match status {
                    200..=299 => "protocol",
                    401 => "unauthorized",
                    403 => "forbidden",
                    404 => "not_found",
                    429 => "rate_limited",
                    408 | 500..=599 => "transient",
                    400..=499 => "invalid_input",
                    _ => "protocol",
                };
                prop_assert_eq!(error.metric_label(), expected, "HTTP {}", status);
            }
        }
        let result = server.run(vec![answer], async |client| client.element_configuration("zendesk").await);
        match result {
            Ok(entries) => prop_assert!(entries.iter().all(|e| !e.key.is_empty())),
            Err(error) => check_platform_error(&error)?,
        }
    }

    #[test]
    fn paging_terminates_and_never_returns_more_than_was_served(
        pages in vec((vec(instance_like(), 0..4), proptest::option::of(header_bytes()), any::<bool>()), 1..6),
        tag in "[a-z0-9-]{1,12}",
    ) {
        let server = script_server();
        let mut served = 0usize;
        let script: Vec<Scripted> = pages
            .into_iter()
            .map(|(items, next_page, tagged)| {
                let items: Vec<Value> = items
                    .into_iter()
                    .map(|mut item| {
                        if tagged { item["tags"] = json!([tag.clone()]); }
                        item
                    })
                    .collect();
                served += items.len();
                Scripted { status: 200, body: serde_json::to_vec(&items).unwrap(), retry_after: None, next_page }
            })
            .collect();
        let result = server.run(script, async |client| client.find_instances_by_tag(&tag).await);
        match result {
            Ok(found) => {
                prop_assert!(found.len() <= served, "{} found, {served} served", found.len());
                // Only what the answer shows to carry the tag: untagged items are never taken.
                prop_assert!(found.iter().all(|i| i.tags.contains(&tag)));
            }
            // The script ran out (404 from the server), an item did not parse, or a cursor repeated.
            Err(error) => check_platform_error(&error)?,
        }
    }

    #[test]
    fn well_formed_pages_are_all_followed(
        counts in vec(0usize..4, 1..6),
        tag in "[a-z0-9-]{1,12}",
        cursor_noise in "[A-Za-z0-9=_-]{1,16}",
    ) {
        let server = script_server();
        let last = counts.len() - 1;
        let mut next_id = 1i64;
        let script: Vec<Scripted> = counts
            .iter()
            .enumerate()
            .map(|(index, count)| {
                let items: Vec<Value> = (0..*count)
                    .map(|_| { next_id += 1; json!({ "id": next_id, "tags": [tag.clone(), "other"] }) })
                    .collect();
                let next_page = (index < last).then(|| format!(" {cursor_noise}-{index} ").into_bytes());
                Scripted { status: 200, body: serde_json::to_vec(&items).unwrap(), retry_after: None, next_page }
            })
            .collect();
        let found = server.run(script, async |client| client.find_instances_by_tag(&tag).await).unwrap();
        prop_assert_eq!(found.len(), counts.iter().sum::<usize>());
    }
}

// ---------------------------------------------------------------------------------------------
// The simulator's Authorization header
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn authorization_header_of_any_text_never_panics(header in any_text(), user in "[!-~]{1,20}", org in "[!-~]{1,20}") {
        let _ = authorization_matches(Some(&header), &user, &org);
        prop_assert!(!authorization_matches(None, &user, &org));
    }

    #[test]
    fn authorization_accepts_any_order_spacing_case_and_an_element_pair(
        user in "[!-+\\--~]{1,20}",
        org in "[!-+\\--~]{1,20}",
        user_first in any::<bool>(),
        element in proptest::option::of("[!-+\\--~]{1,20}"),
        space in "[ \t]{1,3}",
        upper in any::<bool>(),
    ) {
        let (u, o) = if upper { ("USER", "ORGANIZATION") } else { ("User", "Organization") };
        let mut pairs = vec![format!("{u}{space}{user}"), format!("{o}{space}{org}")];
        if !user_first { pairs.reverse(); }
        if let Some(token) = element { pairs.push(format!("Element {token}")); }
        let header = pairs.join(&format!("{space},{space}"));
        prop_assert!(authorization_matches(Some(&header), &user, &org), "{header}");
        // One changed character in either secret is refused.
        let wrong_user = format!("{user}x");
        prop_assert!(!authorization_matches(Some(&header), &wrong_user, &org));
        let user_only = format!("User {user}");
        prop_assert!(!authorization_matches(Some(&user_only), &user, &org), "no organization");
    }
}

// ---------------------------------------------------------------------------------------------
// Configuration from Secrets
// ---------------------------------------------------------------------------------------------

/// A secret value no message may contain.
fn secret_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => "[a-z0-9]{6}".prop_map(|s| format!("zz-secret-{s}").into_bytes()),
        1 => vec(any::<u8>(), 0..16).prop_map(|mut b| { b.extend_from_slice(b"\xffzz-secret-raw"); b }),
    ]
}

fn secret_of(name: &str, data: BTreeMap<String, Vec<u8>>, string_data: BTreeMap<String, String>) -> Secret {
    let mut secret = Secret::default();
    secret.metadata.name = Some(name.into());
    secret.metadata.namespace = Some("tenant".into());
    secret.data = Some(data.into_iter().map(|(k, v)| (k, ByteString(v))).collect());
    if !string_data.is_empty() {
        secret.string_data = Some(string_data);
    }
    secret
}

fn config_key() -> impl Strategy<Value = String> {
    prop_oneof![4 => "[a-z.]{1,8}", 1 => any_text()]
}

fn source() -> impl Strategy<Value = ConfigurationSource> {
    let secret_name = "s[0-3]";
    prop_oneof![
        4 => (proptest::option::of(config_key()), secret_name, config_key()).prop_map(|(key, name, secret_key)| {
            ConfigurationSource { key, secret_key_ref: Some(SecretKeySelector { name, key: secret_key }), secret_ref: None, prefix: None }
        }),
        3 => (secret_name, proptest::option::of(any_text())).prop_map(|(name, prefix)| {
            ConfigurationSource { key: None, secret_key_ref: None, secret_ref: Some(SecretReference { name }), prefix }
        }),
        1 => Just(ConfigurationSource { key: None, secret_key_ref: None, secret_ref: None, prefix: None }),
        1 => (secret_name, secret_name).prop_map(|(a, b)| ConfigurationSource {
            key: Some("k".into()),
            secret_key_ref: Some(SecretKeySelector { name: a, key: "k".into() }),
            secret_ref: Some(SecretReference { name: b }),
            prefix: None,
        }),
    ]
}

fn spec_with(
    configuration: BTreeMap<String, String>,
    configuration_from: Vec<ConfigurationSource>,
    events: Option<EventsSpec>,
) -> ConnectorInstanceSpec {
    let mut spec: ConnectorInstanceSpec =
        serde_json::from_value(json!({ "platformRef": { "name": "p" }, "connector": "echo" })).unwrap();
    spec.configuration = configuration;
    spec.configuration_from = configuration_from;
    spec.events = events.map(Box::new);
    spec
}

fn events() -> impl Strategy<Value = Option<EventsSpec>> {
    proptest::option::of(
        (
            any::<bool>(),
            proptest::option::of(prop_oneof![Just(EventVendorType::Polling), Just(EventVendorType::Webhook)]),
            proptest::option::of(any_text()),
            proptest::option::of(any::<u32>()),
        )
            .prop_map(|(enabled, vendor_type, callback_url, poller_refresh_interval_minutes)| {
                EventsSpec { enabled, vendor_type, callback_url, poller_refresh_interval_minutes }
            }),
    )
}

proptest! {
    #![proptest_config(config(384))]

    #[test]
    fn merge_configuration_is_bounded_and_never_leaks(
        configuration in btree_map(config_key(), "[ -~]{0,12}", 0..5),
        sources in vec(source(), 0..5),
        secrets in hash_map("s[0-3]", (btree_map(config_key(), secret_value(), 0..4), btree_map(config_key(), "[a-z]{0,4}", 0..2)), 0..4),
        events in events(),
    ) {
        let values: Vec<Vec<u8>> = secrets.values().flat_map(|(data, _)| data.values().cloned()).collect();
        let entries_in_secrets: usize = secrets.values().map(|(d, s)| d.len() + s.len()).sum();
        let secrets: HashMap<String, Secret> = secrets
            .into_iter()
            .map(|(name, (data, string_data))| (name.clone(), secret_of(&name, data, string_data)))
            .collect();
        let spec = spec_with(configuration.clone(), sources.clone(), events);
        match merge_configuration(&spec, &secrets, None) {
            Ok(merged) => {
                let bound = configuration.len() + sources.len() * entries_in_secrets.max(1) + 4;
                prop_assert!(merged.len() <= bound, "{} keys from at most {bound}", merged.len());
                prop_assert!(merged.keys().all(|k| !k.is_empty()));
                for (key, value) in &configuration {
                    prop_assert_eq!(merged.get(key).map(|v| v.expose_secret()), Some(value.as_str()));
                }
            }
            Err(error) => {
                prop_assert!(matches!(error, Error::Invalid { .. }), "{error:?}");
                let text = format!("{error} {error:?}");
                for value in &values {
                    let marker = String::from_utf8_lossy(value);
                    if let Some(at) = marker.find("zz-secret-") {
                        prop_assert!(!text.contains(&marker[at..]), "a secret value in: {text}");
                    }
                }
            }
        }
    }

    #[test]
    fn a_key_set_twice_is_always_refused(key in "[a-z.]{1,8}", value in "[a-z]{0,6}", cut in 0usize..8) {
        let (prefix, secret_key) = key.split_at(cut % key.len());
        let (prefix, secret_key) = (prefix.to_string(), secret_key.to_string());
        let secrets: HashMap<String, Secret> = [(
            "s0".to_string(),
            secret_of("s0", [(secret_key.clone(), b"v".to_vec())].into(), BTreeMap::new()),
        )]
        .into();
        let by_key = ConfigurationSource {
            key: Some(key.clone()),
            secret_key_ref: Some(SecretKeySelector { name: "s0".into(), key: secret_key }),
            secret_ref: None,
            prefix: None,
        };
        let by_secret = ConfigurationSource {
            key: None, secret_key_ref: None,
            secret_ref: Some(SecretReference { name: "s0".into() }),
            prefix: Some(prefix),
        };
        for sources in [vec![by_key.clone()], vec![by_secret.clone()], vec![by_key, by_secret]] {
            let mut configuration = BTreeMap::new();
            let twice_in_sources = sources.len() == 2;
            if !twice_in_sources { configuration.insert(key.clone(), value.clone()); }
            let result = merge_configuration(&spec_with(configuration, sources, None), &secrets, None);
            prop_assert!(
                matches!(&result, Err(Error::Invalid { reason: "DuplicateConfigurationKey", message }) if message.contains(&key)),
                "{:?}", result.err()
            );
        }
    }

    #[test]
    fn secret_text_reads_utf8_and_names_but_never_shows_values(
        data in btree_map(config_key(), secret_value(), 0..4),
        string_data in btree_map(config_key(), "[a-z]{0,6}", 0..3),
        key in config_key(),
    ) {
        let secret = secret_of("creds", data.clone(), string_data.clone());
        let expected: Option<Vec<u8>> =
            data.get(&key).cloned().or_else(|| string_data.get(&key).map(|s| s.clone().into_bytes()));
        match (secret_text(&secret, &key, "a test"), expected) {
            (Ok(value), Some(bytes)) => prop_assert_eq!(value.expose_secret().as_bytes(), &bytes[..]),
            (Err(Error::Invalid { reason: "SecretKeyMissing", message }), None) => {
                prop_assert!(message.contains("`tenant/creds`"), "{message}");
            }
            (Err(Error::Invalid { reason: "SecretValueInvalid", message }), Some(bytes)) => {
                prop_assert!(std::str::from_utf8(&bytes).is_err());
                prop_assert!(!message.contains("zz-secret"), "{message}");
            }
            (other, expected) => prop_assert!(false, "{:?} for {:?}", other.map(|_| "value"), expected.map(|_| "value")),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Durations
// ---------------------------------------------------------------------------------------------

fn duration_part() -> impl Strategy<Value = (String, Duration)> {
    (0u64..1_000_000, prop_oneof![Just("ms"), Just("s"), Just("m"), Just("h")]).prop_map(|(n, unit)| {
        let value = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n * 60),
            _ => Duration::from_secs(n * 3600),
        };
        (format!("{n}{unit}"), value)
    })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn parse_duration_of_any_text_never_panics(text in any_text()) {
        let _ = parse_duration(&text);
    }

    #[test]
    fn parse_duration_of_near_misses_never_panics(text in "[0-9.a-z ]{0,12}") {
        let _ = parse_duration(&text);
    }

    #[test]
    fn parse_duration_of_generated_durations_equals_their_value(parts in vec(duration_part(), 1..4)) {
        let text: String = parts.iter().map(|(t, _)| t.as_str()).collect();
        let expected: Duration = parts.iter().map(|(_, d)| *d).sum();
        prop_assert_eq!(parse_duration(&text), Some(expected), "{}", text);
        prop_assert_eq!(parse_duration(&format!(" {text}\n")), Some(expected));
    }

    #[test]
    fn parse_duration_with_a_fraction(whole in 0u64..100_000, tenths in 0u64..10) {
        let text = format!("{whole}.{tenths}s");
        let expected = Duration::from_millis(whole * 1000 + tenths * 100);
        let parsed = parse_duration(&text).unwrap();
        let error = parsed.abs_diff(expected);
        prop_assert!(error <= Duration::from_micros(1), "{text} parsed as {parsed:?}");
    }

    #[test]
    fn parse_duration_refuses_numbers_without_units_and_unknown_units(n in 0u64..1_000_000, unit in "[a-z]{1,2}") {
        prop_assert_eq!(parse_duration(&n.to_string()), None);
        prop_assume!(!["ms", "s", "m", "h"].contains(&unit.as_str()) && !unit.starts_with(['s', 'm', 'h']));
        prop_assert_eq!(parse_duration(&format!("{n}{unit}")), None);
    }
}

// ---------------------------------------------------------------------------------------------
// Label selectors
// ---------------------------------------------------------------------------------------------

fn labels() -> impl Strategy<Value = BTreeMap<String, String>> {
    btree_map("[a-d]", "[x-z]", 0..4)
}

fn requirement() -> impl Strategy<Value = LabelSelectorRequirement> {
    (
        "[a-d]",
        prop_oneof![
            Just("In"),
            Just("NotIn"),
            Just("Exists"),
            Just("DoesNotExist"),
            Just("in"),
            Just("Bogus")
        ],
        proptest::option::of(vec("[x-z]", 0..3)),
    )
        .prop_map(|(key, operator, values)| LabelSelectorRequirement {
            key,
            operator: operator.into(),
            values,
        })
}

fn selector() -> impl Strategy<Value = LabelSelector> {
    (proptest::option::of(labels()), proptest::option::of(vec(requirement(), 0..3)))
        .prop_map(|(match_labels, match_expressions)| LabelSelector { match_labels, match_expressions })
}

proptest! {
    #![proptest_config(config(1024))]

    #[test]
    fn an_empty_selector_matches_everything(labels in proptest::option::of(labels()), empty_maps in any::<bool>()) {
        let selector = if empty_maps {
            LabelSelector { match_labels: Some(BTreeMap::new()), match_expressions: Some(Vec::new()) }
        } else {
            LabelSelector::default()
        };
        prop_assert!(selector_matches(&selector, labels.as_ref()));
    }

    #[test]
    fn selectors_match_as_their_definition_says(selector in selector(), labels in labels()) {
        let labels_match = selector.match_labels.iter().flatten().all(|(k, v)| labels.get(k) == Some(v));
        let each_expression = selector.match_expressions.iter().flatten().all(|r| {
            let one = LabelSelector { match_labels: None, match_expressions: Some(vec![r.clone()]) };
            selector_matches(&one, Some(&labels))
        });
        prop_assert_eq!(selector_matches(&selector, Some(&labels)), labels_match && each_expression);
    }

    #[test]
    fn each_operator_means_what_it_says(requirement in requirement(), labels in labels()) {
        let value = labels.get(&requirement.key);
        let values = requirement.values.clone().unwrap_or_default();
        let expected = match requirement.operator.as_str() {
            "In" => value.is_some_and(|v| values.contains(v)),
            "NotIn" => value.is_none_or(|v| !values.contains(v)),
            "Exists" => value.is_some(),
            "DoesNotExist" => value.is_none(),
            _ => false,
        };
        let selector = LabelSelector { match_labels: None, match_expressions: Some(vec![requirement.clone()]) };
        prop_assert_eq!(selector_matches(&selector, Some(&labels)), expected);
        // In and NotIn on the same values always disagree.
        if requirement.operator == "In" {
            let mut negated = requirement;
            negated.operator = "NotIn".into();
            let not = LabelSelector { match_labels: None, match_expressions: Some(vec![negated]) };
            prop_assert_ne!(selector_matches(&selector, Some(&labels)), selector_matches(&not, Some(&labels)));
        }
    }

    #[test]
    fn no_labels_equals_empty_labels(selector in selector()) {
        prop_assert_eq!(selector_matches(&selector, None), selector_matches(&selector, Some(&BTreeMap::new())));
    }
}

/// A tag search answer that mixes the tagged instance with untagged ones (no tags, an empty list,
/// another tag) yields the tagged one only: nothing untagged is taken for the caller's.
#[test]
fn tag_search_keeps_only_instances_whose_answer_shows_the_tag() {
    let tag = "k8s-uid-3f2a";
    let page = json!([
        { "id": 1, "tags": [tag, "team-a"] },
        { "id": 2 },
        { "id": 3, "tags": [] },
        { "id": 4, "tags": ["team-b"] },
        { "id": 5, "tags": [{ "id": 9, "name": tag }] },
    ]);
    let script = vec![Scripted {
        status: 200,
        body: serde_json::to_vec(&page).unwrap(),
        retry_after: None,
        next_page: None,
    }];
    let found = script_server().run(script, async |client| client.find_instances_by_tag(tag).await).unwrap();
    let ids: Vec<i64> = found.iter().map(|i| i.id).collect();
    assert_eq!(ids, vec![1, 5], "tags as strings and as {{id, name}} objects both count");
}
