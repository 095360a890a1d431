//! The chart's Argo CD health checks (`charts/connector-operator/argocd/**/health.lua`), run the
//! way Argo CD runs them: the resource as a Lua table `obj`, the script returning
//! `{status, message}`. Every case of each `health_test.yaml` (Argo CD's upstream format) must
//! give exactly the expected status and message.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::path::{Path, PathBuf};

use mlua::serde::SerializeOptions;
use mlua::{Lua, LuaSerdeExt};
use serde::Deserialize;

#[derive(Debug, Deserialize)]
struct HealthTests {
    tests: Vec<HealthTest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct HealthTest {
    health_status: HealthStatus,
    input_path: String,
}

#[derive(Debug, Deserialize, PartialEq, Eq)]
struct HealthStatus {
    status: String,
    message: String,
}

fn argocd_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("charts/connector-operator/argocd")
}

/// Runs `script` with `obj` set to the resource in `input` (YAML), as Argo CD does.
fn health(script: &str, input: &Path) -> HealthStatus {
    let yaml = std::fs::read_to_string(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let resource: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    let lua = Lua::new();
    // JSON null is nil to Argo CD's scripts, not a sentinel value.
    let options = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    let obj = lua.to_value_with(&resource, options).unwrap();
    lua.globals().set("obj", obj).unwrap();
    let result: mlua::Table =
        lua.load(script).eval().unwrap_or_else(|e| panic!("health.lua on {}: {e}", input.display()));
    HealthStatus {
        status: result.get("status").unwrap_or_else(|e| panic!("no status for {}: {e}", input.display())),
        message: result.get("message").unwrap_or_else(|e| panic!("no message for {}: {e}", input.display())),
    }
}

/// Runs every case of `<dir>/health_test.yaml` against `<dir>/health.lua`; returns how many
/// cases ran and the statuses they covered.
fn run_cases(dir: &Path) -> (usize, Vec<String>) {
    let script = std::fs::read_to_string(dir.join("health.lua")).unwrap();
    let tests: HealthTests =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("health_test.yaml")).unwrap()).unwrap();
    let mut failures = Vec::new();
    let mut statuses = Vec::new();
    for case in &tests.tests {
        let got = health(&script, &dir.join(&case.input_path));
        if got != case.health_status {
            failures.push(format!("{}: expected {:?}, got {:?}", case.input_path, case.health_status, got));
        }
        statuses.push(case.health_status.status.clone());
    }
    assert!(failures.is_empty(), "health.lua in {}:\n{}", dir.display(), failures.join("\n"));
    // Every testdata file is a case: none is forgotten.
    let files = std::fs::read_dir(dir.join("testdata")).unwrap().count();
    assert_eq!(files, tests.tests.len(), "every file of {}/testdata has a case", dir.display());
    statuses.sort();
    statuses.dedup();
    (tests.tests.len(), statuses)
}

#[test]
fn connector_instance_health_matches_every_case() {
    let (cases, statuses) = run_cases(&argocd_dir());
    assert!(cases >= 8, "at least 8 cases, found {cases}");
    assert_eq!(statuses, ["Degraded", "Healthy", "Progressing", "Suspended"]);
}

#[test]
fn platform_health_matches_every_case() {
    let (cases, statuses) = run_cases(&argocd_dir().join("platforms"));
    assert!(cases >= 5, "at least 5 cases, found {cases}");
    assert_eq!(statuses, ["Degraded", "Healthy", "Progressing"]);
}

/// The same script must not depend on the order of checks in a way the cases miss: a paused
/// instance that is also being deleted is Progressing (deletion is still honoured while paused).
#[test]
fn deletion_wins_over_pause() {
    let script = std::fs::read_to_string(argocd_dir().join("health.lua")).unwrap();
    let mut resource: serde_json::Value =
        serde_norway::from_str(&std::fs::read_to_string(argocd_dir().join("testdata/paused.yaml")).unwrap())
            .unwrap();
    resource["metadata"]["deletionTimestamp"] = "2026-01-12T10:02:11Z".into();
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("paused-deleting.yaml");
    std::fs::write(&input, serde_norway::to_string(&resource).unwrap()).unwrap();
    let got = health(&script, &input);
    assert_eq!(got.status, "Progressing");
    assert!(got.message.starts_with("Deleting: Paused"), "{}", got.message);
}
