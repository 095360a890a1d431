//! In-memory simulator of the Open Connectors platform API.
//!
//! Speaks the published instances API under `/elements/api-v2` (auth header, required-config
//! validation with the platform's error body, masked secrets, token rotation on
//! re-authentication, tag search with paging, `enabled` endpoints, the OAuth2 flow of
//! `/elements/{key}/oauth/url` with grant codes that are checked on create and re-authentication)
//! and offers a control API under `/_sim/` to inspect instances with their real tokens, delete or
//! break them out of band (including an expired refresh token), play the OAuth2 provider's
//! authorization page, read call counts and inject faults. Start it in-process with [`start`], or
//! run the `platform-simulator` binary.

mod catalog;
mod control;
mod error;
mod oauth;
mod server;
mod state;

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use control::{
    CallCounts, CodeRequest, Credentials, FailNext, Faults, InstanceFlags, IssuedCode, LatencyRange,
    OperationDelay, SimControl, SimControlError, SimInstance,
};
pub use server::{BASE_PATH, CONTROL_PATH};
pub use state::authorization_matches;

/// Default user secret of the simulator (local quick start and tests).
pub const DEFAULT_USER_SECRET: &str = "sim-user-4f9c2a7e1b";
/// Default organization secret of the simulator (local quick start and tests).
pub const DEFAULT_ORGANIZATION_SECRET: &str = "sim-org-8d3b6e0c5a";

/// How to run a simulator.
#[derive(Clone)]
pub struct SimConfig {
    /// Listen address; default `127.0.0.1:0` (a free loopback port).
    pub listen: SocketAddr,
    /// The user secret callers must send.
    pub user_secret: String,
    /// The organization secret callers must send.
    pub organization_secret: String,
    /// Seed of ids, tokens and fault draws.
    pub seed: u64,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            user_secret: DEFAULT_USER_SECRET.to_string(),
            organization_secret: DEFAULT_ORGANIZATION_SECRET.to_string(),
            seed: 0x5EED,
        }
    }
}

impl std::fmt::Debug for SimConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimConfig")
            .field("listen", &self.listen)
            .field("seed", &self.seed)
            .finish_non_exhaustive()
    }
}

/// A running simulator. Dropping it (or [`SimHandle::shutdown`]) stops the server.
#[derive(Debug)]
pub struct SimHandle {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

/// Starts a simulator on the current tokio runtime.
pub async fn start(cfg: SimConfig) -> std::io::Result<SimHandle> {
    let listener = TcpListener::bind(cfg.listen).await?;
    let addr = listener.local_addr()?;
    let shared =
        server::Shared::new(state::SimState::new(cfg.user_secret, cfg.organization_secret, cfg.seed));
    let (stop, stopped) = oneshot::channel();
    let task = tokio::spawn(server::serve(listener, server::router(shared), stopped));
    tracing::info!(%addr, "platform simulator started");
    Ok(SimHandle { addr, stop: Some(stop), task: Some(task) })
}

impl SimHandle {
    /// The address the simulator listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the simulated platform API, e.g. `http://127.0.0.1:8089/elements/api-v2`.
    pub fn base_url(&self) -> String {
        format!("http://{}{BASE_PATH}", self.addr)
    }

    /// URL of the control API, e.g. `http://127.0.0.1:8089/_sim`.
    pub fn control_url(&self) -> String {
        format!("http://{}{CONTROL_PATH}", self.addr)
    }

    /// A control client for this simulator.
    pub fn control(&self) -> Result<SimControl, SimControlError> {
        SimControl::new(self.control_url())
    }

    /// Stops accepting, closes open connections and waits for the server task.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for SimHandle {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}
