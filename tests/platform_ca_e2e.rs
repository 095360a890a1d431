//! End-to-end: a platform behind a TLS certificate from a private CA. A CA and a server
//! certificate for 127.0.0.1 are made with `openssl`; a TLS-terminating proxy in this test puts
//! them in front of the simulator. Without `caBundleSecretRef` the operator refuses the
//! certificate (and nothing reaches the platform); with the CA in a Secret it becomes Ready.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod support;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use connector_operator::api::{ConnectorPlatform, READY, RECONCILING, STALLED, find_condition};
use connector_operator::sim::{self, SimConfig};
use kube::api::{Api, Patch, PatchParams};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use support::eventually;
use support::operator::{CREDENTIALS, Env};

/// Runs openssl in `dir`, failing the test with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl").args(args).current_dir(dir).output().expect("openssl is installed");
    assert!(output.status.success(), "openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
}

/// A CA and a server certificate for 127.0.0.1 signed by it (X.509 v3: rustls refuses v1).
/// Returns (CA PEM, server certificate PEM, server key PEM).
fn make_certificates(dir: &Path) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    let mut ca = vec!["req", "-x509", "-days", "2", "-subj", "/CN=connector-operator test CA"];
    ca.extend(ec);
    ca.extend(["-keyout", "ca.key", "-out", "ca.crt"]);
    ca.extend([
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
    ]);
    openssl(dir, &ca);
    let mut csr = vec!["req", "-subj", "/CN=127.0.0.1", "-keyout", "server.key", "-out", "server.csr"];
    csr.extend(ec);
    openssl(dir, &csr);
    std::fs::write(
        dir.join("server.ext"),
        "basicConstraints=CA:FALSE\nsubjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\nkeyUsage=digitalSignature\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-out",
            "server.crt",
            "-extfile",
            "server.ext",
        ],
    );
    let read = |file: &str| std::fs::read(dir.join(file)).unwrap();
    (read("ca.crt"), read("server.crt"), read("server.key"))
}

/// A TLS-terminating proxy on a free loopback port in front of `upstream`; returns its address.
async fn tls_proxy(cert_pem: &[u8], key_pem: &[u8], upstream: SocketAddr) -> SocketAddr {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert_pem).collect::<Result<_, _>>().unwrap();
    let key = PrivateKeyDer::from_pem_slice(key_pem).unwrap();
    let config =
        rustls::ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(certs, key)
            .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                // A refused handshake (an untrusting client) just ends the connection.
                let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                let Ok(mut plain) = tokio::net::TcpStream::connect(upstream).await else { return };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_refused_until_its_bundle_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let (ca_pem, cert_pem, key_pem) = make_certificates(dir.path());
    let env = Env::start("ca-bundle").await;
    // A simulator of its own behind the proxy: its call counts are this platform's alone.
    let upstream = sim::start(SimConfig::default()).await.unwrap();
    let upstream_calls = upstream.control().unwrap();
    let proxy = tls_proxy(&cert_pem, &key_pem, upstream.addr()).await;
    let base_url = format!("https://127.0.0.1:{}/elements/api-v2", proxy.port());

    let platforms: Api<ConnectorPlatform> = Api::namespaced(env.client.clone(), &env.ns);
    let platform = json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorPlatform", "metadata": { "name": "tls" },
        "spec": { "baseUrl": base_url, "credentialsSecretRef": { "name": CREDENTIALS } },
    });
    platforms.patch("tls", &PatchParams::apply("e2e-test").force(), &Patch::Apply(&platform)).await.unwrap();
    env.create_instance("desk", json!({ "platformRef": { "name": "tls" }, "connector": "echo" })).await;

    // Untrusted: the instance says why (the certificate), and no call reaches the platform.
    let api = env.instances();
    let message = eventually("a certificate error on the instance", Duration::from_secs(30), || {
        let api = api.clone();
        async move {
            let status = api.get("desk").await.ok()?.status?;
            let condition = find_condition(&status.conditions, RECONCILING)
                .or_else(|| find_condition(&status.conditions, STALLED))?;
            let ready = find_condition(&status.conditions, READY)?;
            (ready.status == "False" && condition.message.contains("certificate"))
                .then(|| condition.message.clone())
        }
    })
    .await;
    assert!(message.contains("UnknownIssuer") && message.contains("caBundleSecretRef"), "{message}");
    eprintln!("untrusted platform certificate: {message}");
    let calls = upstream_calls.calls().await.unwrap();
    assert_eq!(calls.total, 0, "nothing passes an untrusted TLS connection: {calls:?}");

    // Trusted through the CA bundle Secret: Ready, with one POST through the proxy.
    let ca = String::from_utf8(ca_pem).unwrap();
    env.put_secret("platform-ca", &[("ca.crt", &ca)]).await;
    let with_ca = json!({
        "apiVersion": "openconnectors.io/v1alpha1", "kind": "ConnectorPlatform", "metadata": { "name": "tls" },
        "spec": { "baseUrl": base_url, "credentialsSecretRef": { "name": CREDENTIALS },
                  "caBundleSecretRef": { "name": "platform-ca" } },
    });
    platforms.patch("tls", &PatchParams::apply("e2e-test").force(), &Patch::Apply(&with_ca)).await.unwrap();
    let ci = env.wait_ready("desk").await;
    assert!(ci.status.unwrap().instance_id.is_some());
    let calls = upstream_calls.calls().await.unwrap();
    assert_eq!(calls.count("POST /instances"), 1, "{calls:?}");
    let secret = env.secrets().get("desk-token").await.unwrap();
    assert_eq!(String::from_utf8(secret.data.unwrap()["baseUrl"].0.clone()).unwrap(), base_url);

    // The platform object's own check passes through the CA too.
    eventually("the tls platform to be Ready", Duration::from_secs(30), || {
        let platforms = platforms.clone();
        async move {
            let platform = platforms.get("tls").await.ok()?;
            find_condition(&platform.status?.conditions, READY).filter(|c| c.status == "True").map(|_| ())
        }
    })
    .await;
}
