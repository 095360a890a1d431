//! Shared harness of the end-to-end tests: one real local control plane per test binary, started
//! on first use, and a namespace of its own for every test.
//!
//! The control plane lives in a static, so it is never dropped: its processes end with the test
//! binary through the parent-death signal (see `connector_operator::local::process`), and its run
//! directory is removed by the next run's stale-run clean-up.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod operator;

use std::io::Write as _;
use std::sync::OnceLock;

use connector_operator::local::{LocalControlPlane, Options};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, PostParams};

/// The control plane of this test binary. Panics with the reason when it cannot start (a missing
/// binary names the provision script): end-to-end tests fail loudly, they are never skipped.
pub fn control_plane() -> &'static LocalControlPlane {
    static PLANE: OnceLock<Result<LocalControlPlane, String>> = OnceLock::new();
    let plane = PLANE.get_or_init(|| {
        // Started on a runtime of its own: each #[tokio::test] has a runtime that ends with it.
        std::thread::spawn(|| {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .map_err(|e| e.to_string())?;
            let name = std::env::current_exe()
                .ok()
                .and_then(|exe| exe.file_stem().map(|s| s.to_string_lossy().into_owned()))
                .unwrap_or_else(|| "test".into());
            let plane = runtime
                .block_on(LocalControlPlane::start(Options { name, ..Options::default() }))
                .map_err(|e| e.to_string())?;
            // Straight to stderr, past the test harness's capture: every run's log shows the
            // Kubernetes version each test binary ran against.
            let _ = writeln!(
                std::io::stderr(),
                "local control plane {} (Kubernetes {}) ready in {:.1} s (run dir {})",
                plane.server(),
                plane.version(),
                plane.started_in().as_secs_f64(),
                plane.dir().display()
            );
            Ok(plane)
        })
        .join()
        .unwrap_or_else(|_| Err("control-plane start-up thread panicked".into()))
    });
    match plane {
        Ok(plane) => plane,
        Err(err) => panic!("the local control plane could not start: {err}"),
    }
}

/// A kube client for the current test's runtime.
pub async fn client() -> kube::Client {
    match control_plane().client().await {
        Ok(client) => client,
        Err(err) => panic!("kube client for the local control plane: {err}"),
    }
}

/// Creates a namespace of the test's own, `<prefix>-<random>`, and returns its name.
pub async fn namespace(client: &kube::Client, prefix: &str) -> String {
    let name = format!("{prefix}-{:08x}", fastrand::u32(..));
    let ns = Namespace {
        metadata: kube::api::ObjectMeta { name: Some(name.clone()), ..Default::default() },
        ..Default::default()
    };
    if let Err(err) = Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        panic!("create namespace {name}: {err}");
    }
    name
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(what: &str, timeout: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}
