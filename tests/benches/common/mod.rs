//! What the benchmark commands share: the platform simulator in a process of its own.

use std::io::BufRead;
use std::process::{Command, Stdio};

use connector_operator::local::{self, LocalControlPlane, ManagedChild};
use connector_operator::sim::SimControl;

/// The simulator binary on a free loopback port, recorded in the control plane's pid file.
/// Returns the process, the platform base URL and a control client.
pub fn start_simulator(plane: &LocalControlPlane) -> (ManagedChild, String, SimControl) {
    let mut command = Command::new(env!("CARGO_BIN_EXE_platform-simulator"));
    command.args(["--listen", "127.0.0.1:0"]).stdout(Stdio::piped()).stderr(Stdio::null());
    let mut simulator = local::process::spawn("platform-simulator", command, &plane.pid_file()).unwrap();
    let stdout = simulator.take_stdout().unwrap();
    let mut lines = std::io::BufReader::new(stdout).lines().map_while(Result::ok);
    let line = lines.by_ref().find(|l| l.contains("listening on")).unwrap();
    // Keep reading: a closed pipe would kill the simulator at its next line of output.
    std::thread::spawn(move || lines.for_each(drop));
    let base_url = line.rsplit(' ').next().unwrap().to_string();
    let control = SimControl::new(base_url.replace("/elements/api-v2", "/_sim")).unwrap();
    (simulator, base_url, control)
}

/// Creates namespace `ns` with Secret `creds` (the simulator's credentials), any `extra` Secrets
/// (name, string data), and ConnectorPlatform `sim` pointing at the simulator.
pub async fn platform_namespace(
    client: &kube::Client,
    ns: &str,
    base_url: &str,
    requests_per_second: u32,
    extra: &[(&str, serde_json::Value)],
) {
    use kube::api::{Api, Patch, PatchParams, PostParams};
    use serde_json::json;
    let namespace: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(json!({ "metadata": { "name": ns } })).unwrap();
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &namespace)
        .await
        .unwrap();
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), ns);
    let creds = json!({ "userSecret": connector_operator::sim::DEFAULT_USER_SECRET,
                        "organizationSecret": connector_operator::sim::DEFAULT_ORGANIZATION_SECRET });
    for (name, data) in std::iter::once(("creds", &creds)).chain(extra.iter().map(|(n, d)| (*n, d))) {
        let secret =
            json!({ "apiVersion": "v1", "kind": "Secret", "metadata": { "name": name }, "stringData": data });
        secrets.patch(name, &PatchParams::apply("bench").force(), &Patch::Apply(&secret)).await.unwrap();
    }
    let platforms: Api<connector_operator::api::ConnectorPlatform> = Api::namespaced(client.clone(), ns);
    let platform = json!({ "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorPlatform",
        "metadata": { "name": "sim" },
        "spec": { "baseUrl": base_url, "insecureAllowHttp": true, "credentialsSecretRef": { "name": "creds" },
                  "requestsPerSecond": requests_per_second } });
    platforms.patch("sim", &PatchParams::apply("bench").force(), &Patch::Apply(&platform)).await.unwrap();
}
