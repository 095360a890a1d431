//! The README's quick start, run the way a newcomer runs it (with `--exit` so it stops by itself).

use std::process::Command;

#[test]
fn quickstart_ends_with_the_token_secret_and_stops_everything() -> Result<(), Box<dyn std::error::Error>> {
    let state = tempfile::tempdir()?;
    let output = Command::new(env!("CARGO_BIN_EXE_quickstart"))
        .args(["--exit", "--simulator-listen", "127.0.0.1:0"])
        .env("CONNECTOR_OPERATOR_STATE", state.path())
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "quickstart failed:\n{stdout}\n{stderr}");
    for expected in [
        "ConnectorInstance default/support-desk",
        "Ready=True",
        "==> token Secret default/support-desk-token (type Opaque)",
        "connector   zendesk",
        "token       <44 bytes",
        "connector.properties <",
        ", last action: Created",
        "ConnectorInstance default/crm",
        "==> token Secret default/crm-token (type Opaque)",
        "connector   sfdc",
        "stopped everything the quick start started",
    ] {
        assert!(stdout.contains(expected), "missing `{expected}` in:\n{stdout}");
    }
    assert!(!stdout.contains("Some("), "no Rust debug text on screen:\n{stdout}");
    for secret in
        [connector_operator::sim::DEFAULT_USER_SECRET, connector_operator::sim::DEFAULT_ORGANIZATION_SECRET]
    {
        assert!(!stdout.contains(secret) && !stderr.contains(secret), "a platform secret was printed");
    }
    assert!(stdout.contains("control-plane-pids:"));
    // Every control-plane process names its run directory (under the state dir) on its command line.
    let state_path = state.path().to_string_lossy().into_owned();
    for entry in std::fs::read_dir("/proc")?.filter_map(Result::ok) {
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        assert!(!cmdline.contains(&state_path), "still running after the quick start exited: {cmdline}");
    }
    assert_eq!(std::fs::read_dir(state.path())?.count(), 0, "the run directory is removed");
    Ok(())
}
