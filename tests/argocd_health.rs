//! The chart's Argo CD health checks (`charts/connector-operator/argocd/**/health.lua`), run the
//! way Argo CD runs them: the resource as a Lua table `obj`, the script returning
//! `{status, message}`. Every case of each `health_test.yaml` (Argo CD's upstream format) must
//! give exactly the expected status and message; every case of `actions/action_test.yaml` exactly
//! the expected resource actions and their results.
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

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionTests {
    discovery_tests: Vec<DiscoveryTest>,
    action_tests: Vec<ActionTest>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct DiscoveryTest {
    input_path: String,
    result: Vec<Discovered>,
}

#[derive(Debug, Deserialize, PartialEq, Eq, PartialOrd, Ord)]
struct Discovered {
    name: String,
    disabled: bool,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct ActionTest {
    action: String,
    input_path: String,
    expected_output_path: String,
}

/// Runs `script` with `obj` set to the resource at `input` and returns what it returns, as JSON.
fn run_lua(script: &str, input: &Path) -> serde_json::Value {
    let yaml = std::fs::read_to_string(input).unwrap_or_else(|e| panic!("{}: {e}", input.display()));
    let resource: serde_json::Value = serde_norway::from_str(&yaml).unwrap();
    let lua = Lua::new();
    let options = SerializeOptions::new().serialize_none_to_null(false).serialize_unit_to_null(false);
    lua.globals().set("obj", lua.to_value_with(&resource, options).unwrap()).unwrap();
    let result: mlua::Value =
        lua.load(script).eval().unwrap_or_else(|e| panic!("on {}: {e}", input.display()));
    lua.from_value(result).unwrap()
}

/// The resource actions (`refresh`, `reauthenticate`, `test`, `approve`, `pause`, `resume`):
/// discovery offers each where it makes
/// sense, and each action changes exactly its annotation. Every case of `actions/action_test.yaml`
/// (Argo CD's upstream format) must hold.
#[test]
fn connector_instance_actions_match_every_case() {
    let dir = argocd_dir().join("actions");
    let tests: ActionTests =
        serde_norway::from_str(&std::fs::read_to_string(dir.join("action_test.yaml")).unwrap()).unwrap();
    let discovery = std::fs::read_to_string(dir.join("discovery.lua")).unwrap();
    for case in &tests.discovery_tests {
        let result = run_lua(&discovery, &dir.join(&case.input_path));
        let mut offered: Vec<Discovered> = result
            .as_object()
            .unwrap()
            .iter()
            .map(|(name, spec)| Discovered {
                name: name.clone(),
                disabled: spec["disabled"].as_bool().unwrap(),
            })
            .collect();
        offered.sort();
        let mut expected: Vec<&Discovered> = case.result.iter().collect();
        expected.sort();
        assert_eq!(offered.iter().collect::<Vec<_>>(), expected, "discovery on {}", case.input_path);
    }
    let mut actions: Vec<&str> = tests.action_tests.iter().map(|t| t.action.as_str()).collect();
    for case in &tests.action_tests {
        let script = std::fs::read_to_string(dir.join(&case.action).join("action.lua")).unwrap();
        let mut output = run_lua(&script, &dir.join(&case.input_path));
        for requested in ["reconcile", "reauthenticate", "test"] {
            let pointer = format!("/metadata/annotations/openconnectors.io~1{requested}-requested-at");
            if let Some(stamp) = output.pointer_mut(&pointer).filter(|v| v.is_string()) {
                let text = stamp.as_str().unwrap_or_default().to_string();
                let at: k8s_openapi::jiff::Timestamp = text.parse().unwrap_or_else(|e| panic!("{text}: {e}"));
                let age = k8s_openapi::jiff::Timestamp::now().duration_since(at);
                assert!(age.as_secs() < 60, "the {requested} token is the time the action ran: {text}");
                *stamp = "<timestamp>".into();
            }
        }
        let expected: serde_json::Value =
            serde_norway::from_str(&std::fs::read_to_string(dir.join(&case.expected_output_path)).unwrap())
                .unwrap();
        assert_eq!(output, expected, "{} on {}", case.action, case.input_path);
    }
    actions.sort();
    assert_eq!(
        actions,
        ["approve", "pause", "reauthenticate", "refresh", "resume", "test"],
        "a case per action"
    );
}
