//! Client ↔ simulator contract: every client operation, error classes, paging, masking,
//! token rotation, out-of-band changes.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support_platform;

use std::collections::BTreeMap;

use connector_operator::platform::{
    DeleteOutcome, InstanceRequest, PlatformClient, PlatformConfig, PlatformError,
};
use connector_operator::sim::Credentials;
use secrecy::{ExposeSecret, SecretString};
use support_platform::*;

#[tokio::test]
async fn full_lifecycle_covers_every_operation() {
    let sim = start_sim().await;
    let client = sim.client();
    client.check_credentials().await.unwrap();

    let created = client.create_instance(&zendesk("ns/one", &["owner-1", "team-a"])).await.unwrap();
    let token1 = created.token.clone().unwrap();
    assert_eq!(created.name.as_deref(), Some("ns/one"));
    assert_eq!(created.tags, vec!["owner-1", "team-a"]);
    assert_eq!(created.valid, Some(true));
    assert_eq!(created.disabled, Some(false));
    assert_eq!(created.element.as_ref().unwrap().key.as_deref(), Some("zendesk"));
    assert_eq!(token1.expose_secret().len(), 44);
    // Secrets masked in the answer, plain values kept.
    assert_eq!(created.configuration["password"].as_deref(), Some("********"));
    assert_eq!(created.configuration["username"].as_deref(), Some("agent@example.com"));
    let real = sim.control.instance(created.id).await.unwrap().unwrap();
    assert_eq!(real.token, token1.expose_secret());
    assert_eq!(real.configuration["password"], ZENDESK_PASSWORD);

    let got = client.get_instance(created.id).await.unwrap();
    assert_eq!(got.id, created.id);
    assert_eq!(got.token.unwrap().expose_secret(), token1.expose_secret());

    // PATCH: name and tags replaced (not merged), token kept.
    let patched = client.patch_instance(created.id, "ns/renamed", &["owner-1".to_string()]).await.unwrap();
    assert_eq!(patched.name.as_deref(), Some("ns/renamed"));
    assert_eq!(patched.tags, vec!["owner-1"]);
    assert_eq!(patched.token.unwrap().expose_secret(), token1.expose_secret());
    assert!(client.find_instances_by_tag("team-a").await.unwrap().is_empty());

    // PUT ?reAuthenticate=true: new token, new configuration, same id.
    let mut reauth = zendesk("ns/renamed", &["owner-1"]);
    reauth.configuration.insert("password".into(), SecretString::from("rotated-pw-77".to_string()));
    let reauthed = client.reauthenticate_instance(created.id, &reauth).await.unwrap();
    assert_eq!(reauthed.id, created.id);
    let token2 = reauthed.token.unwrap();
    assert_ne!(token2.expose_secret(), token1.expose_secret());
    assert_eq!(reauthed.configuration["password"].as_deref(), Some("********"));
    let real = sim.control.instance(created.id).await.unwrap().unwrap();
    assert_eq!(real.configuration["password"], "rotated-pw-77");
    assert_eq!(real.token, token2.expose_secret());

    // Enable / disable.
    client.set_enabled(created.id, false).await.unwrap();
    assert_eq!(client.get_instance(created.id).await.unwrap().disabled, Some(true));
    client.set_enabled(created.id, true).await.unwrap();
    assert_eq!(client.get_instance(created.id).await.unwrap().disabled, Some(false));

    // Tag search.
    let found = client.find_instances_by_tag("owner-1").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(found[0].id, created.id);

    // Delete, then 404, then AlreadyGone.
    assert_eq!(client.delete_instance(created.id).await.unwrap(), DeleteOutcome::Deleted);
    assert!(matches!(client.get_instance(created.id).await, Err(PlatformError::NotFound { .. })));
    assert_eq!(client.delete_instance(created.id).await.unwrap(), DeleteOutcome::AlreadyGone);

    let calls = sim.control.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1);
    assert_eq!(calls.count("PUT /instances/{id}"), 1);
    assert_eq!(calls.count("PATCH /instances/{id}"), 1);
    assert_eq!(calls.count("DELETE /instances/{id}"), 2);
    assert_eq!(calls.count("PUT /instances/{id}/enabled"), 1);
    assert_eq!(calls.count("DELETE /instances/{id}/enabled"), 1);
    assert_eq!(calls.writes, 7);
    sim.control.reset_calls().await.unwrap();
    assert_eq!(sim.control.calls().await.unwrap().total, 0);
    sim.handle.shutdown().await;
}

#[tokio::test]
async fn ids_increase_and_tokens_differ() {
    let sim = start_sim().await;
    let client = sim.client();
    let a = client.create_instance(&echo("a", &[])).await.unwrap();
    let b = client.create_instance(&echo("b", &[])).await.unwrap();
    assert!(b.id > a.id);
    assert_ne!(a.token.unwrap().expose_secret(), b.token.unwrap().expose_secret());
}

#[tokio::test]
async fn tag_search_follows_three_small_pages() {
    let sim = start_sim().await;
    let client = sim.client().with_page_size(3);
    for n in 0..8 {
        client.create_instance(&echo(&format!("i{n}"), &["shared", &format!("own-{n}")])).await.unwrap();
    }
    client.create_instance(&echo("other", &["other"])).await.unwrap();
    sim.control.reset_calls().await.unwrap();
    let found = client.find_instances_by_tag("shared").await.unwrap();
    assert_eq!(found.len(), 8);
    let mut ids: Vec<i64> = found.iter().map(|i| i.id).collect();
    ids.dedup();
    assert_eq!(ids.len(), 8, "no instance twice across pages");
    assert_eq!(sim.control.calls().await.unwrap().count("GET /instances"), 3);
    // An instance must carry every tag asked for.
    assert_eq!(client.find_instances_by_tag("own-3").await.unwrap().len(), 1);
    assert!(client.find_instances_by_tag("nobody").await.unwrap().is_empty());
}

#[tokio::test]
async fn tag_search_with_platform_page_size_spans_three_pages() {
    let sim = start_sim().await;
    let client = sim.client();
    let creates = (0..450).map(|n| {
        let client = client.clone();
        async move { client.create_instance(&echo(&format!("bulk-{n}"), &["bulk"])).await.unwrap() }
    });
    futures::future::join_all(creates).await;
    sim.control.reset_calls().await.unwrap();
    let found = client.find_instances_by_tag("bulk").await.unwrap();
    assert_eq!(found.len(), 450);
    assert_eq!(sim.control.calls().await.unwrap().count("GET /instances"), 3);
}

#[tokio::test]
async fn the_catalog_is_listed_across_pages() {
    let sim = start_sim().await;
    let whole = sim.client().list_elements().await.unwrap();
    let paged = sim.client().with_page_size(1).list_elements().await.unwrap();
    let keys = |elements: &[connector_operator::platform::Element]| -> Vec<String> {
        elements.iter().filter_map(|e| e.key.clone()).collect()
    };
    assert!(whole.len() >= 4, "the built-in catalog: {:?}", keys(&whole));
    assert_eq!(keys(&paged), keys(&whole), "one element per page, every page followed");
    let zendesk = whole.iter().find(|e| e.key.as_deref() == Some("zendesk")).unwrap();
    assert_eq!(zendesk.authentication_type.as_deref(), Some("basic"));
    assert!(sim.control.calls().await.unwrap().count("GET /elements") > whole.len() as u64);
}

#[tokio::test]
async fn element_configuration_lists_required_and_secret_keys() {
    let sim = start_sim().await;
    let client = sim.client();
    let config = client.element_configuration("zendesk").await.unwrap();
    let by_key: BTreeMap<_, _> = config.iter().map(|c| (c.key.as_str(), c)).collect();
    assert!(by_key["username"].required && !by_key["username"].is_secret());
    assert!(by_key["password"].required && by_key["password"].is_secret());
    assert!(by_key["zendesk.subdomain"].needs_user_value());
    assert!(!by_key["event.notification.enabled"].required);
    assert!(by_key["event.poller.configuration"].hide_from_console);
    let hubspot = client.element_configuration("hubspot").await.unwrap();
    assert!(hubspot.iter().any(|c| c.key == "hubspot.authorization.apikey" && c.is_secret()));
    let sfdc = client.element_configuration("sfdc").await.unwrap();
    assert!(sfdc.iter().any(|c| c.key == "oauth.api.secret" && c.is_secret()));
    assert!(matches!(
        client.element_configuration("no-such-connector").await,
        Err(PlatformError::NotFound { .. })
    ));
}

#[tokio::test]
async fn invalid_input_names_the_missing_keys() {
    let sim = start_sim().await;
    let client = sim.client();
    let mut req = zendesk("x", &[]);
    req.configuration.remove("password");
    req.configuration.remove("zendesk.subdomain");
    let err = client.create_instance(&req).await.unwrap_err();
    match &err {
        PlatformError::InvalidInput { status: 400, message } => {
            assert!(message.contains("password"), "{message}");
            assert!(message.contains("zendesk.subdomain"), "{message}");
            assert!(message.starts_with("POST /instances: "), "{message}");
        }
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert!(!err.is_transient());
    assert_eq!(err.metric_label(), "invalid_input");
    assert!(err.to_string().contains("requestId"));

    let mut unknown = echo("x", &[]);
    unknown.element_key = "nope".into();
    let err = client.create_instance(&unknown).await.unwrap_err();
    assert!(matches!(err, PlatformError::InvalidInput { status: 400, .. }));
    assert!(err.to_string().contains("nope"));

    // Events need a callback URL.
    let mut events = echo("x", &[]);
    events.configuration = secrets(&[("event.notification.enabled", "true")]);
    let err = client.create_instance(&events).await.unwrap_err();
    assert!(err.to_string().contains("event.notification.callback.url"));
    events.configuration = secrets(&[
        ("event.notification.enabled", "true"),
        ("event.vendor.type", "polling"),
        ("event.notification.callback.url", "https://hooks.example/oc"),
    ]);
    let ok = client.create_instance(&events).await.unwrap();
    assert_eq!(ok.events_enabled, Some(true));

    // Re-authentication validates like create.
    let mut bad = zendesk("x", &[]);
    let created = client.create_instance(&bad).await.unwrap();
    bad.configuration.remove("username");
    let err = client.reauthenticate_instance(created.id, &bad).await.unwrap_err();
    assert!(err.to_string().contains("username"));
    assert_eq!(sim.control.instances().await.unwrap().len(), 2);
}

#[tokio::test]
async fn oauth2_needs_a_code_or_a_refresh_token() {
    let sim = start_sim().await;
    let client = sim.client();
    let mut req = InstanceRequest {
        element_key: "sfdc".into(),
        name: "crm".into(),
        tags: vec![],
        configuration: secrets(&[
            ("oauth.api.key", "client-id-123"),
            ("oauth.api.secret", "client-secret-456"),
            ("oauth.callback.url", "https://app.example/cb"),
        ]),
        ..InstanceRequest::default()
    };
    let err = client.create_instance(&req).await.unwrap_err();
    assert!(err.to_string().contains("providerData.code"), "{err}");

    // A made-up code is refused by the provider; one it issued for this client id and redirect
    // URI is exchanged.
    req.provider_data = secrets(&[("code", "grant-code-789")]);
    let err = client.create_instance(&req).await.unwrap_err();
    assert!(matches!(err, PlatformError::InvalidInput { status: 400, .. }), "{err:?}");
    assert!(err.to_string().contains("(provider: invalid_grant"), "{err}");
    let code = sim.control.issue_code("client-id-123", "https://app.example/cb").await.unwrap();
    req.provider_data = secrets(&[("code", &code)]);
    let created = client.create_instance(&req).await.unwrap();
    for key in ["oauth.api.key", "oauth.api.secret", "oauth.user.token"] {
        assert_eq!(created.configuration[key].as_deref(), Some("********"), "{key}");
    }

    req.provider_data.clear();
    req.external_authentication = Some("initial".into());
    req.configuration
        .insert("oauth.user.refresh_token".into(), SecretString::from("refresh-abc".to_string()));
    let created = client.create_instance(&req).await.unwrap();
    assert_eq!(created.external_authentication.as_deref(), Some("initial"));
}

#[tokio::test]
async fn wrong_or_rotated_secrets_are_unauthorized() {
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.organization_secret = SecretString::from("wrong-org".to_string());
    let bad = PlatformClient::new(cfg).unwrap();
    let err = bad.check_credentials().await.unwrap_err();
    assert!(matches!(err, PlatformError::Unauthorized { .. }));
    assert!(err.to_string().contains("rotated"));
    assert!(!err.to_string().contains("wrong-org"));

    let good = sim.client();
    good.check_credentials().await.unwrap();
    sim.control
        .set_credentials(&Credentials {
            user_secret: "new-user".into(),
            organization_secret: "new-org".into(),
        })
        .await
        .unwrap();
    assert!(matches!(good.create_instance(&echo("x", &[])).await, Err(PlatformError::Unauthorized { .. })));
    // 401 is not retried.
    assert_eq!(sim.control.calls().await.unwrap().count("POST /instances"), 1);
}

#[tokio::test]
async fn out_of_band_delete_and_flags() {
    let sim = start_sim().await;
    let client = sim.client();
    let created = client.create_instance(&echo("x", &["t"])).await.unwrap();

    sim.control.set_valid(created.id, false).await.unwrap();
    sim.control.set_disabled(created.id, true).await.unwrap();
    let got = client.get_instance(created.id).await.unwrap();
    assert_eq!((got.valid, got.disabled), (Some(false), Some(true)));

    assert!(sim.control.delete_instance(created.id).await.unwrap());
    assert!(!sim.control.delete_instance(created.id).await.unwrap());
    assert!(sim.control.instance(created.id).await.unwrap().is_none());
    let err = client.get_instance(created.id).await.unwrap_err();
    assert!(matches!(err, PlatformError::NotFound { .. }));
    assert_eq!(err.metric_label(), "not_found");
    assert!(matches!(client.patch_instance(created.id, "n", &[]).await, Err(PlatformError::NotFound { .. })));
    assert_eq!(client.delete_instance(created.id).await.unwrap(), DeleteOutcome::AlreadyGone);
    assert!(client.find_instances_by_tag("t").await.unwrap().is_empty());
}

#[tokio::test]
async fn plain_http_is_refused_unless_allowed() {
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.allow_http = false;
    let err = PlatformClient::new(cfg).unwrap_err();
    assert!(matches!(err, PlatformError::InvalidInput { status: 0, .. }));
    assert_eq!(sim.control.calls().await.unwrap().total, 0);
    let https = PlatformConfig::new(
        "https://api.openconnectors.us2.ext.hana.ondemand.com/elements/api-v2",
        SecretString::from("u".to_string()),
        SecretString::from("o".to_string()),
    );
    assert!(PlatformClient::new(https).is_ok());
}

#[tokio::test]
async fn raw_protocol_details() {
    // Things the typed client hides: header order/whitespace, hydrate, paging header, 401 body.
    let sim = start_sim().await;
    let client = sim.client();
    client.create_instance(&zendesk("raw", &["raw"])).await.unwrap();
    client.create_instance(&zendesk("raw2", &["raw"])).await.unwrap();
    let http = reqwest::Client::new();
    let auth = format!("  Organization {} ,User   {}", sim.cfg.organization_secret, sim.cfg.user_secret);
    let url = format!("{}/instances", sim.handle.base_url());
    let resp = http
        .get(&url)
        .header("Authorization", &auth)
        .query(&[("tags[]", "raw"), ("pageSize", "1"), ("hydrate", "false")])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let cursor = resp.headers().get("elements-next-page-token").unwrap().to_str().unwrap().to_string();
    let page: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);
    assert!(page[0].get("configuration").is_none(), "hydrate=false omits configuration");
    let resp = http
        .get(&url)
        .header("Authorization", &auth)
        .query(&[("tags[]", "raw"), ("pageSize", "1"), ("nextPage", &cursor)])
        .send()
        .await
        .unwrap();
    assert!(resp.headers().get("elements-next-page-token").is_none());
    let page: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(page[0]["name"], "raw2");

    let resp =
        http.get(&url).query(&[("searchText", "raw2")]).header("Authorization", &auth).send().await.unwrap();
    let page: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(page.as_array().unwrap().len(), 1);

    let resp = http.get(&url).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body["requestId"].is_string() && body["message"].is_string());
}
