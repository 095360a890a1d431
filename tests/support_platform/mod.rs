//! Shared helpers of the `platform_*` contract tests: an in-process simulator and clients for it.
#![allow(dead_code)]

pub mod swagger;

use std::collections::BTreeMap;
use std::time::Duration;

use connector_operator::platform::{InstanceRequest, PlatformClient, PlatformConfig, RetryPolicy};
use connector_operator::sim::{self, SimConfig, SimControl, SimHandle};
use secrecy::SecretString;

/// A running simulator with a control client.
pub struct Sim {
    pub handle: SimHandle,
    pub control: SimControl,
    pub cfg: SimConfig,
}

pub async fn start_sim() -> Sim {
    let cfg = SimConfig::default();
    let handle = sim::start(cfg.clone()).await.expect("simulator starts");
    let control = handle.control().expect("control client");
    Sim { handle, control, cfg }
}

impl Sim {
    /// A platform config for this simulator: plain http allowed, no rate limit, 5 s timeout.
    pub fn config(&self) -> PlatformConfig {
        let mut cfg = PlatformConfig::new(
            self.handle.base_url(),
            SecretString::from(self.cfg.user_secret.clone()),
            SecretString::from(self.cfg.organization_secret.clone()),
        );
        cfg.allow_http = true;
        cfg.requests_per_second = 0.0;
        cfg.timeout = Duration::from_secs(5);
        cfg
    }

    /// A client with fast retries (3 attempts, 10..50 ms backoff).
    pub fn client(&self) -> PlatformClient {
        PlatformClient::new(self.config()).expect("client").with_retry_policy(fast_retries())
    }
}

pub fn fast_retries() -> RetryPolicy {
    RetryPolicy {
        max_attempts: 3,
        base_delay: Duration::from_millis(10),
        max_delay: Duration::from_millis(50),
        max_retry_after: Duration::from_secs(5),
    }
}

pub fn secrets(pairs: &[(&str, &str)]) -> BTreeMap<String, SecretString> {
    pairs.iter().map(|(k, v)| (k.to_string(), SecretString::from(v.to_string()))).collect()
}

pub const ZENDESK_PASSWORD: &str = "zd-Pa55word-9c1e";

/// A valid zendesk (basic auth) create request.
pub fn zendesk(name: &str, tags: &[&str]) -> InstanceRequest {
    InstanceRequest {
        element_key: "zendesk".into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        configuration: secrets(&[
            ("username", "agent@example.com"),
            ("password", ZENDESK_PASSWORD),
            ("zendesk.subdomain", "acme"),
        ]),
        provider_data: BTreeMap::new(),
        external_authentication: None,
    }
}

/// A valid request for the no-configuration `echo` connector.
pub fn echo(name: &str, tags: &[&str]) -> InstanceRequest {
    InstanceRequest {
        element_key: "echo".into(),
        name: name.into(),
        tags: tags.iter().map(|t| t.to_string()).collect(),
        ..InstanceRequest::default()
    }
}
