//! `crds/` holds exactly what the Rust types generate (regenerate with
//! `cargo run --bin connector-operator -- crd --out-dir crds`).

use std::path::Path;

#[test]
fn crds_directory_matches_the_rust_types() -> Result<(), Box<dyn std::error::Error>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("crds");
    let generated = connector_operator::api::crd::crd_documents()?;
    let mut stale = Vec::new();
    for (file, yaml) in &generated {
        let on_disk = std::fs::read_to_string(dir.join(file)).unwrap_or_default();
        if &on_disk != yaml {
            stale.push(file.clone());
        }
    }
    let files =
        std::fs::read_dir(&dir)?.filter_map(|e| e.ok()).map(|e| e.file_name().to_string_lossy().into_owned());
    let extra: Vec<String> = files.filter(|f| !generated.iter().any(|(g, _)| g == f)).collect();
    assert!(
        stale.is_empty() && extra.is_empty(),
        "crds/ is out of date (stale: {stale:?}, not generated: {extra:?}); run `cargo run --bin connector-operator -- crd --out-dir crds`"
    );
    Ok(())
}

#[test]
fn crds_have_printer_columns_short_names_and_status_subresource() -> Result<(), Box<dyn std::error::Error>> {
    let [crd, _, _] = connector_operator::api::crd::all();
    assert_eq!(crd.spec.names.short_names.as_deref(), Some(&["conn".to_string()][..]));
    assert_eq!(crd.spec.names.categories.as_deref(), Some(&["connectors".to_string()][..]));
    let version = &crd.spec.versions[0];
    assert!(version.subresources.as_ref().and_then(|s| s.status.as_ref()).is_some());
    let columns: Vec<&str> =
        version.additional_printer_columns.iter().flatten().map(|c| c.name.as_str()).collect();
    for expected in ["Ready", "Connector", "Instance-ID", "Secret", "Age"] {
        assert!(columns.contains(&expected), "missing printer column {expected}: {columns:?}");
    }
    let schema = serde_json::to_string(&version.schema)?;
    assert!(schema.contains("self == oldSelf"), "connector is immutable by a CEL rule");
    Ok(())
}
