//! The CRDs as YAML, generated from the Rust types (`connector-operator crd` prints them; `crds/`
//! holds the output, kept in sync by a test).

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::{CustomResourceDefinition, JSON};
use kube::CustomResourceExt;

use super::{ClusterConnectorPlatform, ConnectorInstance, ConnectorPlatform};

/// What the API server shows as an object's `status` until the operator first writes one: an
/// `observedGeneration` no generation has. kstatus (Flux, kpt, Argo CD's generic checks) then reads
/// a new instance or platform as InProgress, never Current, until the operator's first status
/// write, which costs no write of its own. The API server applies a schema default whenever it
/// reads the object (get, list, watch), so objects created before the CRD had the default get it
/// too.
pub const UNOBSERVED_STATUS: &str = r#"{"observedGeneration":-1}"#;

/// Every CRD of the operator, in file-name order: the generated ones, with the status default
/// [`UNOBSERVED_STATUS`].
pub fn all() -> [CustomResourceDefinition; 3] {
    let mut crds = [ConnectorInstance::crd(), ConnectorPlatform::crd(), ClusterConnectorPlatform::crd()];
    for version in crds.iter_mut().flat_map(|crd| crd.spec.versions.iter_mut()) {
        let status = version
            .schema
            .as_mut()
            .and_then(|schema| schema.open_api_v3_schema.as_mut())
            .and_then(|root| root.properties.as_mut())
            .and_then(|properties| properties.get_mut("status"));
        if let Some(status) = status {
            status.default = serde_json::from_str(UNOBSERVED_STATUS).ok().map(JSON);
        }
    }
    crds
}

/// Every CRD of the operator, in file-name order, as `(file name, YAML)`.
pub fn crd_documents() -> Result<Vec<(String, String)>, serde_norway::Error> {
    all()
        .into_iter()
        .map(|crd| {
            let name = crd.metadata.name.clone().unwrap_or_default();
            Ok((format!("{name}.yaml"), serde_norway::to_string(&crd)?))
        })
        .collect()
}

/// All CRDs as one multi-document YAML stream.
pub fn crds_yaml() -> Result<String, serde_norway::Error> {
    Ok(crd_documents()?.into_iter().map(|(_, yaml)| format!("---\n{yaml}")).collect())
}

/// Installs (server-side apply) every CRD and waits until the API server serves them.
pub async fn install(client: &kube::Client, timeout: std::time::Duration) -> Result<(), InstallError> {
    use kube::api::{Api, Patch, PatchParams};
    use kube::runtime::{conditions, wait::await_condition};

    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    for crd in all() {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(super::FIELD_MANAGER).force(), &Patch::Apply(&crd)).await?;
        tokio::time::timeout(timeout, await_condition(api.clone(), &name, conditions::is_crd_established()))
            .await
            .map_err(|_| InstallError::NotEstablished(name.clone()))?
            .map_err(|e| InstallError::Wait(e.to_string()))?;
    }
    Ok(())
}

/// Why the CRDs could not be installed.
#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    /// The API server refused the CRD.
    #[error("apply CRD: {0}")]
    Kube(#[from] kube::Error),
    /// The CRD was not established in time.
    #[error("CRD {0} was not established in time")]
    NotEstablished(String),
    /// Watching for the condition failed.
    #[error("waiting for CRDs: {0}")]
    Wait(String),
}
