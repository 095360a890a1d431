//! The simulator's OAuth2 flow over HTTP, as a client without a browser sees it: the platform's
//! `oauth/url`, the fake provider's authorization page and its redirect, the code exchange on
//! create and re-authentication, and an expired refresh token.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use connector_operator::sim::{
    self, DEFAULT_ORGANIZATION_SECRET, DEFAULT_USER_SECRET, SimConfig, SimControl, SimHandle,
};
use reqwest::StatusCode;
use reqwest::header::LOCATION;
use serde_json::{Value, json};

const CLIENT_ID: &str = "client-id 123";
const CLIENT_SECRET: &str = "client-secret-456";
const CALLBACK: &str = "https://app.example/oauth/cb";
const INVALID_CODE: &str = "invalid_grant: authorization code is invalid, expired or already used";

struct Sim {
    handle: SimHandle,
    control: SimControl,
    http: reqwest::Client,
    no_redirects: reqwest::Client,
}

async fn start() -> Sim {
    let handle = sim::start(SimConfig::default()).await.unwrap();
    // The control client installs the TLS crypto provider the plain clients need too.
    let control = handle.control().unwrap();
    let no_redirects =
        reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    Sim { handle, control, http: reqwest::Client::new(), no_redirects }
}

fn auth() -> String {
    format!("User {DEFAULT_USER_SECRET}, Organization {DEFAULT_ORGANIZATION_SECRET}")
}

impl Sim {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.base_url())
    }

    async fn send(&self, req: reqwest::RequestBuilder) -> (StatusCode, Value) {
        let resp = req.header("Authorization", auth()).send().await.unwrap();
        let status = resp.status();
        let bytes = resp.bytes().await.unwrap();
        let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap() };
        (status, body)
    }

    async fn oauth_url_get(&self, key: &str, query: &[(&str, &str)]) -> (StatusCode, Value) {
        self.send(self.http.get(self.url(&format!("/elements/{key}/oauth/url"))).query(query)).await
    }

    async fn oauth_url_post(&self, key: &str, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url(&format!("/elements/{key}/oauth/url"))).json(body)).await
    }

    async fn create(&self, body: &Value) -> (StatusCode, Value) {
        self.send(self.http.post(self.url("/instances")).json(body)).await
    }

    async fn put(&self, id: i64, body: &Value) -> (StatusCode, Value) {
        self.send(
            self.http
                .put(self.url(&format!("/instances/{id}")))
                .query(&[("reAuthenticate", "true")])
                .json(body),
        )
        .await
    }

    async fn get(&self, id: i64) -> Value {
        let (status, body) = self.send(self.http.get(self.url(&format!("/instances/{id}")))).await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Opens an authorization URL like a browser would, without following the redirect.
    async fn authorize(&self, url: &str) -> reqwest::Response {
        self.no_redirects.get(url).send().await.unwrap()
    }

    /// The query parameters of the redirect `resp` answers with (which must go to `CALLBACK`).
    fn redirect_params(resp: &reqwest::Response) -> Vec<(String, String)> {
        assert_eq!(resp.status(), StatusCode::FOUND);
        let location = resp.headers()[LOCATION].to_str().unwrap();
        assert!(location.starts_with(&format!("{CALLBACK}?")), "{location}");
        reqwest::Url::parse(location)
            .unwrap()
            .query_pairs()
            .map(|(k, v)| (k.into_owned(), v.into_owned()))
            .collect()
    }
}

fn param<'a>(params: &'a [(String, String)], name: &str) -> Option<&'a str> {
    params.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

fn sfdc(code: Option<&str>, refresh_token: Option<&str>) -> Value {
    let mut body = json!({"element": {"key": "sfdc"}, "name": "crm", "tags": ["oauth"], "configuration": {
        "oauth.api.key": CLIENT_ID, "oauth.api.secret": CLIENT_SECRET, "oauth.callback.url": CALLBACK}});
    if let Some(code) = code {
        body["providerData"] = json!({"code": code});
    }
    if let Some(rt) = refresh_token {
        body["externalAuthentication"] = json!("initial");
        body["configuration"]["oauth.user.refresh_token"] = json!(rt);
    }
    body
}

fn assert_provider_error(status: StatusCode, body: &Value, message: &str, provider_message: &str) {
    assert_eq!(status, 400, "{body}");
    assert!(body["requestId"].is_string(), "{body}");
    assert_eq!(body["message"], message, "{body}");
    assert_eq!(body["providerMessage"], provider_message, "{body}");
}

#[tokio::test]
async fn oauth_url_by_get_and_post_points_at_the_provider_page() {
    let sim = start().await;
    let query = [
        ("apiKey", CLIENT_ID),
        ("apiSecret", CLIENT_SECRET),
        ("callbackUrl", CALLBACK),
        ("scope", "api refresh_token"),
        ("state", "st/1"),
        ("siteAddress", "https://acme.example"),
    ];
    let expected = format!(
        "http://{}/_sim/oauth/authorize?response_type=code&client_id=client-id%20123\
         &redirect_uri=https%3A%2F%2Fapp.example%2Foauth%2Fcb&scope=api%20refresh_token&state=st%2F1",
        sim.handle.addr()
    );
    let (status, got) = sim.oauth_url_get("sfdc", &query).await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got, json!({"element": "sfdc", "oauthUrl": expected}));

    let body: serde_json::Map<String, Value> = query.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
    let (status, posted) = sim.oauth_url_post("sfdc", &Value::Object(body)).await;
    assert_eq!(status, 200, "{posted}");
    assert_eq!(posted, got);

    // Scope and state are left out when not given.
    let (_, minimal) =
        sim.oauth_url_post("sfdc", &json!({"apiKey": "id", "apiSecret": "s", "callbackUrl": CALLBACK})).await;
    assert_eq!(
        minimal["oauthUrl"],
        format!(
            "http://{}/_sim/oauth/authorize?response_type=code&client_id=id\
             &redirect_uri=https%3A%2F%2Fapp.example%2Foauth%2Fcb",
            sim.handle.addr()
        )
    );

    let calls = sim.control.calls().await.unwrap();
    assert_eq!(calls.count("GET /elements/{key}/oauth/url"), 1);
    assert_eq!(calls.count("POST /elements/{key}/oauth/url"), 2);
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn oauth_url_errors() {
    let sim = start().await;
    let full = [("apiKey", CLIENT_ID), ("apiSecret", CLIENT_SECRET), ("callbackUrl", CALLBACK)];
    let without = |name: &str| full.iter().copied().filter(|(k, _)| *k != name).collect::<Vec<_>>();
    for (key, query, status, message) in [
        ("nope", full.to_vec(), 404, "No element found with key 'nope'"),
        ("zendesk", full.to_vec(), 400, "does not use OAuth"),
        ("sfdc", without("apiKey"), 400, "apiKey"),
        ("sfdc", without("apiSecret"), 400, "apiSecret"),
        ("sfdc", without("callbackUrl"), 400, "callbackUrl"),
        (
            "sfdc",
            vec![("apiKey", CLIENT_ID), ("apiSecret", CLIENT_SECRET), ("callbackUrl", "/oauth/cb")],
            400,
            "callbackUrl must be an absolute http(s) URL",
        ),
    ] {
        let (got, body) = sim.oauth_url_get(key, &query).await;
        assert_eq!(got.as_u16(), status, "{key} {query:?}: {body}");
        assert!(body["requestId"].is_string(), "{body}");
        assert!(body["message"].as_str().unwrap().contains(message), "{key} {query:?}: {body}");
        assert!(!body.to_string().contains(CLIENT_SECRET), "the secret is never echoed");
    }
    let (status, body) =
        sim.oauth_url_post("sfdc", &json!({"apiKey": CLIENT_ID, "callbackUrl": CALLBACK})).await;
    assert_eq!(status, 400);
    assert!(body["message"].as_str().unwrap().contains("apiSecret"), "{body}");
    let (status, _) = sim.oauth_url_post("nope", &json!({})).await;
    assert_eq!(status, 404);

    // Platform auth applies.
    let resp = sim.http.get(sim.url("/elements/sfdc/oauth/url")).query(&full).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn the_code_from_the_redirect_creates_an_instance_once() {
    let sim = start().await;
    let (_, got) = sim
        .oauth_url_get(
            "sfdc",
            &[
                ("apiKey", CLIENT_ID),
                ("apiSecret", CLIENT_SECRET),
                ("callbackUrl", CALLBACK),
                ("state", "s 1"),
            ],
        )
        .await;
    let resp = sim.authorize(got["oauthUrl"].as_str().unwrap()).await;
    let params = Sim::redirect_params(&resp);
    let code = param(&params, "code").unwrap().to_string();
    assert_eq!(param(&params, "state"), Some("s 1"));
    assert!(code.len() >= 20, "{code}");

    let (status, created) = sim.create(&sfdc(Some(&code), None)).await;
    assert_eq!(status, 200, "{created}");
    assert_eq!(created["valid"], true);
    assert_eq!(created["configuration"]["oauth.user.token"], "********");
    assert_eq!(created["configuration"]["oauth.user.refresh_token"], "********");

    let (status, again) = sim.create(&sfdc(Some(&code), None)).await;
    assert_provider_error(
        status,
        &again,
        "Failed to exchange the OAuth code with the provider",
        INVALID_CODE,
    );
    let (status, made_up) = sim.create(&sfdc(Some("grant-code-789"), None)).await;
    assert_provider_error(
        status,
        &made_up,
        "Failed to exchange the OAuth code with the provider",
        INVALID_CODE,
    );
    assert_eq!(sim.control.instances().await.unwrap().len(), 1);

    // A redirect URI that already has a query gets the code appended; no state, none back.
    let resp = sim
        .authorize(&format!(
            "{}/oauth/authorize?client_id=id&redirect_uri={}",
            sim.handle.control_url(),
            "https%3A%2F%2Fapp.example%2Foauth%2Fcb%3Ftenant%3Da"
        ))
        .await;
    let params = Sim::redirect_params(&resp);
    assert_eq!(param(&params, "tenant"), Some("a"));
    assert!(param(&params, "code").is_some() && param(&params, "state").is_none(), "{params:?}");
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn denied_access_and_bad_authorize_requests() {
    let sim = start().await;
    let (_, got) = sim
        .oauth_url_get(
            "sfdc",
            &[
                ("apiKey", CLIENT_ID),
                ("apiSecret", CLIENT_SECRET),
                ("callbackUrl", CALLBACK),
                ("state", "xyz"),
            ],
        )
        .await;
    let resp = sim.authorize(&format!("{}&decision=deny", got["oauthUrl"].as_str().unwrap())).await;
    assert_eq!(resp.status(), StatusCode::FOUND);
    assert_eq!(
        resp.headers()[LOCATION].to_str().unwrap(),
        format!("{CALLBACK}?error=access_denied&error_description=The%20user%20denied%20access&state=xyz")
    );

    let page = format!("{}/oauth/authorize", sim.handle.control_url());
    for (query, message) in [
        (vec![("redirect_uri", CALLBACK)], "client_id is required"),
        (vec![("client_id", CLIENT_ID)], "redirect_uri is required"),
    ] {
        let resp = sim.no_redirects.get(&page).query(&query).send().await.unwrap();
        assert_eq!(resp.status(), 400);
        assert_eq!(resp.text().await.unwrap(), message);
    }
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn a_code_only_works_for_its_client_and_redirect_uri() {
    let sim = start().await;
    let other_redirect = sim.control.issue_code(CLIENT_ID, "https://app.example/other").await.unwrap();
    let (status, body) = sim.create(&sfdc(Some(&other_redirect), None)).await;
    assert_provider_error(
        status,
        &body,
        "Failed to exchange the OAuth code with the provider",
        "invalid_grant: redirect_uri (oauth.callback.url) does not match the one the code was issued for",
    );
    let other_client = sim.control.issue_code("someone-else", CALLBACK).await.unwrap();
    let (status, body) = sim.create(&sfdc(Some(&other_client), None)).await;
    assert_provider_error(
        status,
        &body,
        "Failed to exchange the OAuth code with the provider",
        "invalid_grant: authorization code was issued to another client (oauth.api.key)",
    );
    assert!(sim.control.instances().await.unwrap().is_empty());

    // The control helper refuses what the page would refuse.
    let err = sim.control.issue_code(CLIENT_ID, "not-a-url").await.unwrap_err();
    assert!(err.to_string().contains("absolute http(s) URL"), "{err}");
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn an_expired_refresh_token_needs_reauthentication_and_enabling() {
    let sim = start().await;
    let code = sim.control.issue_code(CLIENT_ID, CALLBACK).await.unwrap();
    let (status, created) = sim.create(&sfdc(Some(&code), None)).await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_i64().unwrap();
    let refresh_token =
        sim.control.instance(id).await.unwrap().unwrap().configuration["oauth.user.refresh_token"].clone();

    assert!(sim.control.expire_refresh_token(id).await.unwrap());
    assert!(!sim.control.expire_refresh_token(id + 1_000_000).await.unwrap());
    let got = sim.get(id).await;
    assert_eq!((got["valid"].as_bool(), got["disabled"].as_bool()), (Some(false), Some(true)));

    // The revoked refresh token is refused, on PUT and on create.
    let (status, body) = sim.put(id, &sfdc(None, Some(&refresh_token))).await;
    assert_provider_error(
        status,
        &body,
        "Failed to refresh the OAuth token with the provider",
        "invalid_grant: refresh token expired or revoked",
    );
    let (status, body) = sim.create(&sfdc(None, Some(&refresh_token))).await;
    assert_eq!(
        (status.as_u16(), body["providerMessage"].as_str()),
        (400, Some("invalid_grant: refresh token expired or revoked"))
    );

    // Re-authenticating with a new code makes it valid; it stays disabled until enabled.
    let fresh = sim.control.issue_code(CLIENT_ID, CALLBACK).await.unwrap();
    let (status, reauthed) = sim.put(id, &sfdc(Some(&fresh), None)).await;
    assert_eq!(status, 200, "{reauthed}");
    assert_eq!((reauthed["valid"].as_bool(), reauthed["disabled"].as_bool()), (Some(true), Some(true)));
    let (status, _) = sim.put(id, &sfdc(Some(&fresh), None)).await;
    assert_eq!(status, 400, "the code was used up by the re-authentication");
    let (status, enabled) = sim.send(sim.http.put(sim.url(&format!("/instances/{id}/enabled")))).await;
    assert_eq!(status, 200);
    assert_eq!((enabled["valid"].as_bool(), enabled["disabled"].as_bool()), (Some(true), Some(false)));

    // Again, this time re-authenticated from another refresh token.
    assert!(sim.control.expire_refresh_token(id).await.unwrap());
    let (status, reauthed) = sim.put(id, &sfdc(None, Some("another-refresh-token"))).await;
    assert_eq!(status, 200, "{reauthed}");
    assert_eq!((reauthed["valid"].as_bool(), reauthed["disabled"].as_bool()), (Some(true), Some(true)));

    // Reset forgets codes and revoked refresh tokens.
    let unused = sim.control.issue_code(CLIENT_ID, CALLBACK).await.unwrap();
    sim.control.reset().await.unwrap();
    let (status, body) = sim.create(&sfdc(Some(&unused), None)).await;
    assert_eq!(body["providerMessage"], INVALID_CODE, "{status} {body}");
    let (status, body) = sim.create(&sfdc(None, Some(&refresh_token))).await;
    assert_eq!(status, 200, "{body}");
    sim.handle.shutdown().await;
}

/// The operator's client against the simulator: `oauth_url` sends its parameters in a body
/// (never the client secret in a URL) and returns the provider page's URL with the state; a
/// non-OAuth connector is refused with the platform's message.
#[tokio::test]
async fn the_operators_client_gets_the_authorization_url_from_a_body() {
    use connector_operator::platform::{OAuthUrlRequest, PlatformClient, PlatformConfig, PlatformError};
    let sim = start().await;
    let mut config = PlatformConfig::new(
        sim.handle.base_url(),
        DEFAULT_USER_SECRET.to_string().into(),
        DEFAULT_ORGANIZATION_SECRET.to_string().into(),
    );
    config.allow_http = true;
    let client = PlatformClient::new(config).unwrap();
    let request = OAuthUrlRequest {
        api_key: "client-1".into(),
        api_secret: CLIENT_SECRET.to_string().into(),
        callback_url: CALLBACK.into(),
        scope: Some("api refresh_token".into()),
        state: "payload.mac".into(),
    };
    let url = client.oauth_url("sfdc", &request).await.unwrap();
    let parsed = reqwest::Url::parse(&url).unwrap();
    let params: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    assert_eq!(param(&params, "state"), Some("payload.mac"));
    assert_eq!(param(&params, "client_id"), Some("client-1"));
    assert_eq!(param(&params, "redirect_uri"), Some(CALLBACK));
    assert!(!url.contains(CLIENT_SECRET), "the client secret stays out of the URL");
    let calls = sim.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /elements/{key}/oauth/url"), 1, "{calls:?}");
    assert!(!format!("{request:?}").contains(CLIENT_SECRET));
    match client.oauth_url("zendesk", &request).await {
        Err(PlatformError::InvalidInput { status: 400, message }) => {
            assert!(message.contains("does not use OAuth"), "{message}")
        }
        other => panic!("{other:?}"),
    }
}
