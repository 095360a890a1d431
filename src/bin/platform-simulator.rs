//! `platform-simulator`: the in-memory Open Connectors platform, for the local quick start and
//! end-to-end tests. Control API under `/_sim/`.

use std::net::SocketAddr;

use clap::Parser;
use connector_operator::sim::{self, DEFAULT_ORGANIZATION_SECRET, DEFAULT_USER_SECRET, SimConfig};

/// Runs a simulated SAP Open Connectors platform API on loopback.
#[derive(Parser)]
#[command(version)]
struct Args {
    /// Address to listen on (keep it on loopback: the control API needs no credentials).
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:8089")]
    listen: SocketAddr,
    /// User secret callers must send (`Authorization: User <secret>, ...`).
    #[arg(long, env = "SIM_USER_SECRET", default_value = DEFAULT_USER_SECRET, hide_env_values = true)]
    user_secret: String,
    /// Organization secret callers must send (`Authorization: ..., Organization <secret>`).
    #[arg(long, env = "SIM_ORGANIZATION_SECRET", default_value = DEFAULT_ORGANIZATION_SECRET, hide_env_values = true)]
    organization_secret: String,
    /// Seed of instance ids, tokens and fault draws.
    #[arg(long, env = "SIM_SEED", default_value_t = 0x5EED)]
    seed: u64,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> std::io::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Args::parse();
    let handle = sim::start(SimConfig {
        listen: args.listen,
        user_secret: args.user_secret,
        organization_secret: args.organization_secret,
        seed: args.seed,
    })
    .await?;
    println!("platform simulator listening on {}", handle.base_url());
    println!("control API on {}", handle.control_url());
    shutdown_signal().await;
    handle.shutdown().await;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
