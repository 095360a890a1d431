//! Every simulator answer is checked against the Swagger's `ElementInstance` (and friends), and
//! every client request body against the Swagger's request schema, by walking
//! `tests/data/instances-swagger.json` (the published document, vendored: see `tests/data/README.md`).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support_platform;

use connector_operator::platform::{ElementInstance, InstanceRequest, patch_body};
use secrecy::SecretString;
use serde_json::{Value, json};
use support_platform::swagger::{Allowance, Allowances, Swagger};
use support_platform::*;

/// Fields the platform really returns that the (2019) Swagger omits.
const RESPONSE_EXTRAS: &[Allowance] = &[
    Allowance {
        definition: "ElementInstance",
        field: "elementId",
        reason: "returned by current SAP hosts (API.md §3, [H-acct-inst])",
    },
    Allowance {
        definition: "ElementInstance",
        field: "eventsEnabled",
        reason: "returned by the platform (API.md §3 response example, [DP-oauth-tmpl])",
    },
    Allowance {
        definition: "ElementInstance",
        field: "externalAuthentication",
        reason: "returned by the platform (API.md §3 response example)",
    },
];

/// Request deviations.
const REQUEST_EXTRAS: &[Allowance] = &[Allowance {
    definition: "ElementInstance",
    field: "externalAuthentication",
    reason: "documented create-from-refresh-token flag (API.md §6.3, [CE-refresh-token])",
}];
const REQUEST_MISSING: &[Allowance] = &[Allowance {
    definition: "ElementInstance",
    field: "cachingEnabled",
    reason: "the Swagger marks it required, but clients leave it out of create bodies \
             (API.md §3, [H-api]); sending false would switch off a cache a user turned on",
}];

fn responses() -> Allowances {
    Allowances { extra_fields: RESPONSE_EXTRAS, missing_required: &[] }
}

fn requests() -> Allowances {
    Allowances { extra_fields: REQUEST_EXTRAS, missing_required: REQUEST_MISSING }
}

struct Checker {
    swagger: Swagger,
    http: reqwest::Client,
    base: String,
    auth: String,
    checked: usize,
}

impl Checker {
    fn request(&mut self, method: &str, path: &str, body: &Value) {
        let schema = self
            .swagger
            .request_schema(method, path)
            .unwrap_or_else(|| panic!("{method} {path} has no body in the Swagger"));
        let errors = self.swagger.check(&schema, body, requests());
        assert!(errors.is_empty(), "request {method} {path}:\n{}", errors.join("\n"));
        self.checked += 1;
    }

    /// Sends a call and checks the answer against the Swagger's 200 schema.
    async fn call(
        &mut self,
        method: &str,
        template: &str,
        url_path: &str,
        query: &[(&str, &str)],
        body: Option<&Value>,
    ) -> Value {
        if let Some(body) = body {
            self.request(method, template, body);
        }
        let mut req = self
            .http
            .request(method.parse().unwrap(), format!("{}{url_path}", self.base))
            .header("Authorization", &self.auth)
            .query(query);
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 200, "{method} {url_path}");
        let bytes = resp.bytes().await.unwrap();
        let value: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("answers are JSON")
        };
        if let Some(schema) = self.swagger.response_schema(method, template) {
            let errors = self.swagger.check(&schema, &value, responses());
            assert!(errors.is_empty(), "answer of {method} {url_path}:\n{}", errors.join("\n"));
            self.checked += 1;
        }
        value
    }

    async fn error(&mut self, method: &str, url_path: &str, body: Option<&Value>, auth: bool) {
        let mut req = self.http.request(method.parse().unwrap(), format!("{}{url_path}", self.base));
        if auth {
            req = req.header("Authorization", &self.auth);
        }
        if let Some(body) = body {
            req = req.json(body);
        }
        let resp = req.send().await.unwrap();
        assert!(resp.status().is_client_error(), "{method} {url_path}");
        let value: Value = resp.json().await.unwrap();
        // The platform's error body (API.md §7); the Swagger gives no schema for errors.
        let schema = json!({"type": "object", "required": ["requestId", "message"], "properties": {
            "requestId": {"type": "string"}, "message": {"type": "string"},
            "providerMessage": {"type": "string"}}});
        let errors = self.swagger.check(&schema, &value, Allowances::default());
        assert!(errors.is_empty(), "error body of {method} {url_path}:\n{}", errors.join("\n"));
        self.checked += 1;
    }
}

#[tokio::test]
async fn simulator_answers_and_client_bodies_match_the_swagger() {
    let sim = start_sim().await;
    let mut c = Checker {
        swagger: Swagger::load(),
        http: reqwest::Client::new(),
        base: sim.handle.base_url(),
        auth: format!("User {}, Organization {}", sim.cfg.user_secret, sim.cfg.organization_secret),
        checked: 0,
    };

    // Create: basic auth, OAuth2 with a code, OAuth2 from a refresh token, events on.
    let mut bodies = vec![zendesk("swagger", &["sw"]).to_body()];
    let code = sim.control.issue_code("id", "https://app.example/cb").await.unwrap();
    let oauth = InstanceRequest {
        element_key: "sfdc".into(),
        name: "swagger-oauth".into(),
        tags: vec!["sw".into()],
        configuration: secrets(&[
            ("oauth.api.key", "id"),
            ("oauth.api.secret", "secret"),
            ("oauth.callback.url", "https://app.example/cb"),
        ]),
        provider_data: secrets(&[("code", &code)]),
        external_authentication: None,
    };
    bodies.push(oauth.to_body());
    let mut refresh = oauth.clone();
    refresh.provider_data.clear();
    refresh.external_authentication = Some("initial".into());
    refresh.configuration.insert("oauth.user.refresh_token".into(), SecretString::from("rt".to_string()));
    bodies.push(refresh.to_body());
    let mut events = echo("swagger-events", &["sw"]);
    events.configuration = secrets(&[
        ("event.notification.enabled", "true"),
        ("event.vendor.type", "webhook"),
        ("event.notification.callback.url", "https://hooks.example/oc"),
    ]);
    bodies.push(events.to_body());
    let mut ids = Vec::new();
    for body in &bodies {
        let created = c.call("POST", "/instances", "/instances", &[], Some(body)).await;
        let parsed: ElementInstance = serde_json::from_value(created).unwrap();
        ids.push(parsed.id);
    }
    let id = ids[0].to_string();
    let one = format!("/instances/{id}");

    c.call("GET", "/instances/{id}", &one, &[], None).await;
    let listed =
        c.call("GET", "/instances", "/instances", &[("tags[]", "sw"), ("hydrate", "true")], None).await;
    assert_eq!(listed.as_array().unwrap().len(), 4);
    c.call("GET", "/instances", "/instances", &[("pageSize", "1"), ("hydrate", "false")], None).await;
    c.call(
        "PATCH",
        "/instances/{id}",
        &one,
        &[],
        Some(&patch_body("renamed", &["sw".to_string(), "x".to_string()])),
    )
    .await;
    c.call(
        "PUT",
        "/instances/{id}",
        &one,
        &[("reAuthenticate", "true")],
        Some(&zendesk("renamed", &["sw"]).to_body()),
    )
    .await;
    c.call("DELETE", "/instances/{id}/enabled", &format!("{one}/enabled"), &[], None).await;
    c.call("PUT", "/instances/{id}/enabled", &format!("{one}/enabled"), &[], None).await;
    c.call("DELETE", "/instances/{id}", &one, &[], None).await;

    // Error bodies.
    c.error("GET", &one, None, true).await;
    c.error("GET", &one, None, false).await;
    c.error("POST", "/instances", Some(&json!({"element": {"key": "zendesk"}, "name": "x"})), true).await;
    c.error("GET", "/elements/nope/configuration", None, true).await;
    // The grant code was used up by the create: the provider's refusal adds `providerMessage`.
    c.error("POST", "/instances", Some(&bodies[1]), true).await;
    assert_eq!(c.checked, 20, "every request body and answer was checked");
}

#[test]
fn the_client_only_uses_query_parameters_the_swagger_declares() {
    let swagger = Swagger::load();
    let declared = swagger.query_parameters("GET", "/instances");
    for used in ["tags[]", "pageSize", "hydrate", "nextPage"] {
        assert!(declared.iter().any(|d| d == used), "{used} not in {declared:?}");
    }
    // `reAuthenticate` on PUT /instances/{id} is the one undeclared parameter: it comes from the
    // platform's re-authentication KB article (API.md §5), not from the Swagger.
    assert!(swagger.query_parameters("PUT", "/instances/{id}").is_empty());
}

#[test]
fn the_walker_reports_mismatches_with_their_path() {
    let swagger = Swagger::load();
    let schema = swagger.response_schema("GET", "/instances/{id}").unwrap();
    let bad = json!({"id": "12", "cachingEnabled": false, "tags": ["ok", 3],
        "configuration": {"a": "x", "b": 1}, "element": {"key": 5}, "surprise": true});
    let errors = swagger.check(&schema, &bad, responses());
    for expected in [
        "$.id: expected number, got string",
        "$.tags[1]: expected string, got number",
        "$.configuration.b: expected string, got number",
        "$.element.key: expected string, got number",
        "$.surprise: field not in the Swagger definition ElementInstance",
    ] {
        assert!(errors.iter().any(|e| e == expected), "missing `{expected}` in {errors:#?}");
    }
    assert_eq!(errors.len(), 5, "{errors:#?}");
    let missing = swagger.check(&schema, &json!({"id": 1}), responses());
    assert_eq!(missing, vec!["$.cachingEnabled: required by the Swagger but missing"]);
    // Tags as {id, name} objects (seen in one old example, API.md §3) are parsed by the client
    // but would not pass the Swagger: the simulator sends strings.
    let objects = swagger.check(
        &schema,
        &json!({"id": 1, "cachingEnabled": false, "tags": [{"id": 1, "name": "t"}]}),
        responses(),
    );
    assert_eq!(objects, vec!["$.tags[0]: expected string, got object"]);
}

/// The vendored document is the published one, unchanged (its digest is in `tests/data/README.md`).
#[test]
fn the_vendored_swagger_is_the_published_document() {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(Swagger::path()).unwrap();
    let digest: String = Sha256::digest(&bytes).iter().map(|b| format!("{b:02x}")).collect();
    let notes = std::fs::read_to_string(Swagger::path().with_file_name("README.md")).unwrap();
    assert!(
        notes.contains(&format!("SHA-256: `{digest}`")),
        "tests/data/README.md names another digest than {digest}"
    );
    assert_eq!(digest, "4f27d584ab7982cec5c446e700cb35c4dbe94cdde366316e988e6d2ed349a239");
}
