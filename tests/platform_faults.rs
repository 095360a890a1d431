//! Retries, Retry-After, rate limiting, and no replay of POST / re-authenticating PUT once they
//! may have reached the platform — checked with the simulator's fault injection and call counts.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support_platform;

use std::time::{Duration, Instant};

use connector_operator::platform::{DeleteOutcome, PlatformClient, PlatformError, RetryPolicy};
use connector_operator::sim::{FailNext, Faults, LatencyRange, OperationDelay};
use support_platform::*;

#[tokio::test]
async fn get_is_retried_on_5xx() {
    let sim = start_sim().await;
    let client = sim.client();
    let created = client.create_instance(&echo("x", &[])).await.unwrap();
    sim.control.fail_next(FailNext::status(2, 500).only("GET /instances/{id}")).await.unwrap();
    client.get_instance(created.id).await.unwrap();
    assert_eq!(sim.control.calls().await.unwrap().count("GET /instances/{id}"), 3);
}

#[tokio::test]
async fn retries_are_bounded_and_end_transient() {
    let sim = start_sim().await;
    let client = sim.client();
    sim.control.fail_next(FailNext::status(10, 502)).await.unwrap();
    let err = client.get_instance(1).await.unwrap_err();
    assert!(matches!(err, PlatformError::Transient { .. }), "{err:?}");
    assert!(err.is_transient());
    assert!(err.to_string().contains("502"));
    assert_eq!(sim.control.calls().await.unwrap().count("GET /instances/{id}"), 3);
}

#[tokio::test]
async fn retry_waits_for_retry_after() {
    let sim = start_sim().await;
    let client = sim.client();
    let created = client.create_instance(&echo("x", &[])).await.unwrap();
    sim.control
        .set_faults(&Faults {
            retry_after_seconds: Some(1),
            fail_next: vec![FailNext::status(1, 429).only("GET /instances/{id}")],
            ..Faults::default()
        })
        .await
        .unwrap();
    let started = Instant::now();
    client.get_instance(created.id).await.unwrap();
    let waited = started.elapsed();
    assert!(waited >= Duration::from_secs(1), "waited only {waited:?}");
    assert!(waited < Duration::from_secs(3), "waited {waited:?}");
    assert_eq!(sim.control.calls().await.unwrap().count("GET /instances/{id}"), 2);

    // 503 with Retry-After is honoured too.
    sim.control.fail_next(FailNext::status(1, 503).only("GET /instances/{id}")).await.unwrap();
    let started = Instant::now();
    client.get_instance(created.id).await.unwrap();
    assert!(started.elapsed() >= Duration::from_secs(1));
}

#[tokio::test]
async fn rate_limited_error_carries_retry_after() {
    let sim = start_sim().await;
    let client = sim.client().with_retry_policy(RetryPolicy { max_attempts: 1, ..fast_retries() });
    sim.control
        .set_faults(&Faults { rate_limit_share: 1.0, retry_after_seconds: Some(2), ..Faults::default() })
        .await
        .unwrap();
    let err = client.check_credentials().await.unwrap_err();
    assert_eq!(err, PlatformError::RateLimited { retry_after: Some(Duration::from_secs(2)) });
    assert_eq!(err.retry_after(), Some(Duration::from_secs(2)));
    assert_eq!(err.metric_label(), "rate_limited");

    // A Retry-After beyond the policy's cap is handed to the caller instead of slept on.
    sim.control
        .set_faults(&Faults { rate_limit_share: 1.0, retry_after_seconds: Some(60), ..Faults::default() })
        .await
        .unwrap();
    let started = Instant::now();
    let err = sim.client().check_credentials().await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(1));
    assert_eq!(err.retry_after(), Some(Duration::from_secs(60)));
    sim.control.clear_faults().await.unwrap();
    sim.client().check_credentials().await.unwrap();
}

#[tokio::test]
async fn post_is_not_retried_after_a_5xx() {
    let sim = start_sim().await;
    let client = sim.client();
    sim.control.fail_next(FailNext::status(1, 500).only("POST /instances")).await.unwrap();
    let err = client.create_instance(&echo("x", &["t"])).await.unwrap_err();
    assert!(err.is_transient());
    assert_eq!(sim.control.calls().await.unwrap().count("POST /instances"), 1);
    // A 5xx injected before handling does not apply the change.
    assert!(sim.control.instances().await.unwrap().is_empty());
}

#[tokio::test]
async fn post_is_not_retried_when_the_answer_is_lost_and_tag_search_recovers() {
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.timeout = Duration::from_millis(300);
    let client = PlatformClient::new(cfg).unwrap().with_retry_policy(fast_retries());
    sim.control
        .set_faults(&Faults {
            delay_after: Some(OperationDelay { ms: 1500, operation: Some("POST /instances".into()) }),
            ..Faults::default()
        })
        .await
        .unwrap();
    let err = client.create_instance(&echo("x", &["owner-uid-1"])).await.unwrap_err();
    assert!(matches!(err, PlatformError::Transient { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert_eq!(sim.control.calls().await.unwrap().count("POST /instances"), 1);
    // The platform committed it: the controller's tag search finds it.
    let found = client.find_instances_by_tag("owner-uid-1").await.unwrap();
    assert_eq!(found.len(), 1);
    assert_eq!(sim.control.instances().await.unwrap().len(), 1);
}

#[tokio::test]
async fn post_is_not_retried_after_a_dropped_connection() {
    let sim = start_sim().await;
    let client = sim.client();
    sim.control.fail_next(FailNext::drop_connection(1).only("POST /instances")).await.unwrap();
    let err = client.create_instance(&echo("x", &[])).await.unwrap_err();
    assert!(err.is_transient(), "{err:?}");
    assert_eq!(sim.control.calls().await.unwrap().count("POST /instances"), 1);
    assert!(sim.control.instances().await.unwrap().is_empty());
    // The connection pool recovers.
    client.create_instance(&echo("y", &[])).await.unwrap();
}

#[tokio::test]
async fn reauthentication_is_not_retried_once_sent() {
    let sim = start_sim().await;
    let client = sim.client();
    let created = client.create_instance(&zendesk("x", &[])).await.unwrap();
    for fail in [FailNext::status(1, 503), FailNext::drop_connection(1), FailNext::status(1, 429)] {
        sim.control.reset_calls().await.unwrap();
        sim.control.fail_next(fail.only("PUT /instances/{id}")).await.unwrap();
        let err = client.reauthenticate_instance(created.id, &zendesk("x", &[])).await.unwrap_err();
        assert!(err.is_transient(), "{err:?}");
        assert_eq!(sim.control.calls().await.unwrap().count("PUT /instances/{id}"), 1);
    }
    let real = sim.control.instance(created.id).await.unwrap().unwrap();
    assert_eq!(
        Some(real.token.as_str()),
        created.token.as_ref().map(secrecy::ExposeSecret::expose_secret),
        "failed re-authentications did not apply"
    );
}

#[tokio::test]
async fn post_is_retried_after_a_connect_error() {
    // Nothing listens on this port: every attempt is a connect error, which proves the POST
    // never reached a server, so it may be retried.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.base_url = format!("http://127.0.0.1:{port}/elements/api-v2");
    let client = PlatformClient::new(cfg).unwrap().with_retry_policy(RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(100),
        max_delay: Duration::from_millis(100),
        max_retry_after: Duration::from_secs(1),
    });
    let started = Instant::now();
    let err = client.create_instance(&echo("x", &[])).await.unwrap_err();
    assert!(err.is_transient());
    assert!(err.to_string().contains("connect"), "{err}");
    // Two backoffs of at least 50 ms each: the call was attempted three times.
    assert!(started.elapsed() >= Duration::from_millis(100));
}

#[tokio::test]
async fn idempotent_writes_are_retried() {
    let sim = start_sim().await;
    let client = sim.client();
    let created = client.create_instance(&echo("x", &[])).await.unwrap();
    for (op, call) in [
        ("PATCH /instances/{id}", 0),
        ("DELETE /instances/{id}/enabled", 1),
        ("PUT /instances/{id}/enabled", 2),
    ] {
        sim.control.reset_calls().await.unwrap();
        sim.control.fail_next(FailNext::status(1, 503).only(op)).await.unwrap();
        match call {
            0 => drop(client.patch_instance(created.id, "y", &[]).await.unwrap()),
            1 => client.set_enabled(created.id, false).await.unwrap(),
            _ => client.set_enabled(created.id, true).await.unwrap(),
        }
        assert_eq!(sim.control.calls().await.unwrap().count(op), 2, "{op}");
    }
}

#[tokio::test]
async fn delete_retried_after_a_lost_answer_counts_as_done() {
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.timeout = Duration::from_millis(300);
    let client = PlatformClient::new(cfg).unwrap().with_retry_policy(fast_retries());
    let created = client.create_instance(&echo("x", &[])).await.unwrap();
    sim.control
        .set_faults(&Faults {
            delay_after: Some(OperationDelay { ms: 1000, operation: Some("DELETE /instances/{id}".into()) }),
            ..Faults::default()
        })
        .await
        .unwrap();
    // Once the first DELETE has arrived (and is being held), let the retry through undelayed.
    let control = sim.control.clone();
    let unblock = tokio::spawn(async move {
        while control.calls().await.unwrap().count("DELETE /instances/{id}") == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        control.clear_faults().await.unwrap();
    });
    let outcome = client.delete_instance(created.id).await.unwrap();
    unblock.await.unwrap();
    assert_eq!(outcome, DeleteOutcome::AlreadyGone);
    assert_eq!(sim.control.calls().await.unwrap().count("DELETE /instances/{id}"), 2);
    assert!(sim.control.instances().await.unwrap().is_empty());
}

#[tokio::test]
async fn share_faults_and_latency() {
    let sim = start_sim().await;
    let client = sim.client();
    sim.control
        .set_faults(&Faults { server_error_share: 1.0, server_error_status: Some(500), ..Faults::default() })
        .await
        .unwrap();
    assert!(client.find_instances_by_tag("k8s-uid-x").await.unwrap_err().is_transient());
    assert_eq!(sim.control.calls().await.unwrap().count("GET /instances"), 3, "a search is retried");
    assert!(client.check_credentials().await.unwrap_err().is_transient());
    assert_eq!(
        sim.control.calls().await.unwrap().count("GET /instances"),
        4,
        "the health probe is not: its caller backs off"
    );
    assert_eq!(sim.control.faults().await.unwrap().server_error_share, 1.0);

    sim.control
        .set_faults(&Faults { latency: Some(LatencyRange { min_ms: 150, max_ms: 150 }), ..Faults::default() })
        .await
        .unwrap();
    let started = Instant::now();
    client.check_credentials().await.unwrap();
    assert!(started.elapsed() >= Duration::from_millis(150));

    sim.control.set_faults(&Faults { drop_share: 1.0, ..Faults::default() }).await.unwrap();
    assert!(client.check_credentials().await.unwrap_err().is_transient());
    sim.control.reset().await.unwrap();
    client.check_credentials().await.unwrap();
}

#[tokio::test]
async fn rate_limit_is_shared_by_clones() {
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.requests_per_second = 10.0;
    cfg.burst = 1;
    let client = PlatformClient::new(cfg).unwrap();
    let started = Instant::now();
    let calls = (0..8).map(|_| {
        let c = client.clone();
        async move { c.check_credentials().await.unwrap() }
    });
    futures::future::join_all(calls).await;
    // 8 calls, 1 at once, 10 per second: at least 7 gaps of 100 ms.
    assert!(started.elapsed() >= Duration::from_millis(650), "{:?}", started.elapsed());

    let mut unlimited = sim.config();
    unlimited.requests_per_second = 0.0;
    let client = PlatformClient::new(unlimited).unwrap();
    let started = Instant::now();
    for _ in 0..20 {
        client.check_credentials().await.unwrap();
    }
    assert!(started.elapsed() < Duration::from_secs(2));
}

/// A create goes out only while its caller still wants it, asked once the rate limiter let it go:
/// one withdrawn while it waited (its resource relabeled into another shard) never reaches the
/// platform.
#[tokio::test]
async fn a_create_withdrawn_while_it_waits_for_the_rate_limiter_is_never_sent() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};
    let sim = start_sim().await;
    let mut cfg = sim.config();
    cfg.requests_per_second = 2.0;
    cfg.burst = 1;
    let client = PlatformClient::new(cfg).unwrap();
    client.create_instance(&echo("first", &[])).await.unwrap();
    let wanted = Arc::new(AtomicBool::new(true));
    let flag = wanted.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        flag.store(false, Ordering::SeqCst);
    });
    let started = Instant::now();
    let err = client
        .create_instance_while(&echo("second", &[]), &|| wanted.load(Ordering::SeqCst))
        .await
        .unwrap_err();
    assert!(matches!(err, PlatformError::Withdrawn), "{err:?}");
    assert_eq!(err.metric_label(), "withdrawn");
    assert!(started.elapsed() >= Duration::from_millis(300), "asked after the rate limiter's wait");
    assert_eq!(sim.control.calls().await.unwrap().count("POST /instances"), 1, "the second never sent");
    assert_eq!(sim.control.instances().await.unwrap().len(), 1);

    client.create_instance_while(&echo("third", &[]), &|| true).await.unwrap();
    assert_eq!(sim.control.calls().await.unwrap().count("POST /instances"), 2);
}
