//! Secrets never reach logs: TRACE-level tracing output of the client and the simulator during
//! a full create / re-authenticate / delete flow (with failures and retries) holds none of the
//! user secret, organization secret, instance tokens or PASSWORD configuration values.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support_platform;

use std::io::Write;
use std::sync::{Arc, Mutex};

use connector_operator::platform::{PlatformClient, PlatformError};
use connector_operator::sim::FailNext;
use secrecy::{ExposeSecret, SecretString};
use support_platform::*;

#[derive(Clone, Default)]
struct Buffer(Arc<Mutex<Vec<u8>>>);

impl Write for Buffer {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(data);
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

// current_thread runtime: the simulator's tasks run on this thread, under the same subscriber.
#[tokio::test(flavor = "current_thread")]
async fn tracing_output_never_contains_secrets() {
    let buffer = Buffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let sim = start_sim().await;
    let client = sim.client();
    let mut leaks: Vec<String> =
        vec![sim.cfg.user_secret.clone(), sim.cfg.organization_secret.clone(), ZENDESK_PASSWORD.to_string()];

    let req = zendesk("secret-flow", &["secret-flow"]);
    tracing::info!(?req, "request under test");
    // First POST fails before handling (5xx, no retry), the second succeeds.
    sim.control.fail_next(FailNext::status(1, 500).only("POST /instances")).await.unwrap();
    let err = client.create_instance(&req).await.unwrap_err();
    tracing::error!(?err, %err, "expected failure");
    let created = client.create_instance(&req).await.unwrap();
    leaks.push(created.token.as_ref().unwrap().expose_secret().to_string());
    tracing::info!(?created, "created");

    sim.control.fail_next(FailNext::status(1, 503).only("GET /instances/{id}")).await.unwrap();
    let got = client.get_instance(created.id).await.unwrap();
    tracing::info!(?got, "read back");
    client.find_instances_by_tag("secret-flow").await.unwrap();
    client.patch_instance(created.id, "renamed", &["secret-flow".to_string()]).await.unwrap();

    let mut reauth = zendesk("renamed", &["secret-flow"]);
    let new_password = "n3w-Pa55word-after-rotation";
    leaks.push(new_password.to_string());
    reauth.configuration.insert("password".into(), SecretString::from(new_password.to_string()));
    let reauthed = client.reauthenticate_instance(created.id, &reauth).await.unwrap();
    leaks.push(reauthed.token.as_ref().unwrap().expose_secret().to_string());
    tracing::info!(?reauthed, "re-authenticated");

    // Failures whose messages come from the platform.
    let mut missing = reauth.clone();
    missing.configuration.remove("username");
    let err = client.reauthenticate_instance(created.id, &missing).await.unwrap_err();
    tracing::warn!(?err, %err, "expected invalid input");
    let mut cfg = sim.config();
    let wrong = "wrong-organization-secret-xyz";
    leaks.push(wrong.to_string());
    cfg.organization_secret = SecretString::from(wrong.to_string());
    let err = PlatformClient::new(cfg).unwrap().check_credentials().await.unwrap_err();
    assert!(matches!(err, PlatformError::Unauthorized { .. }));
    tracing::warn!(?err, %err, "expected unauthorized");

    client.set_enabled(created.id, false).await.unwrap();
    client.delete_instance(created.id).await.unwrap();
    client.delete_instance(created.id).await.unwrap();
    sim.handle.shutdown().await;

    let output = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    // The capture works: client and simulator both logged.
    assert!(output.contains("platform call succeeded"), "{output}");
    assert!(output.contains("retrying"), "{output}");
    assert!(output.contains("simulator: handled call"), "{output}");
    assert!(output.contains("injected fault"), "{output}");
    for leak in &leaks {
        assert!(!output.contains(leak.as_str()), "tracing output leaks `{leak}`:\n{output}");
    }
}
