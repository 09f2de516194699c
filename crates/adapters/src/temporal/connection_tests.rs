#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::path::Path;

use super::*;

/// A directory with an empty profile file, so the developer's own `temporal.toml` stays out.
struct World {
    dir: tempfile::TempDir,
    env: HashMap<String, String>,
}

impl World {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("temporal.toml");
        std::fs::write(&file, "").unwrap();
        let env = HashMap::from([("TEMPORAL_CONFIG_FILE".to_owned(), file.display().to_string())]);
        Self { dir, env }
    }

    fn set(mut self, var: &str, value: &str) -> Self {
        self.env.insert(var.to_owned(), value.to_owned());
        self
    }

    fn file(&self, name: &str, content: &str) -> String {
        let path = self.dir.path().join(name);
        std::fs::write(&path, content).unwrap();
        path.display().to_string()
    }

    fn profile(self, toml: &str) -> Self {
        std::fs::write(Path::new(&self.env["TEMPORAL_CONFIG_FILE"]), toml).unwrap();
        self
    }

    fn load(&self) -> anyhow::Result<TemporalConnection> {
        TemporalConnection::from_env_map(&ConnectionOverrides::default(), &self.env)
    }

    /// The error, checked to be one line.
    fn error(&self) -> String {
        let err = format!("{:#}", self.load().unwrap_err());
        assert!(!err.contains('\n'), "{err}");
        err
    }
}

fn certificate_pem() -> (String, String) {
    let key = rcgen::KeyPair::generate().unwrap();
    let cert =
        rcgen::CertificateParams::new(vec!["temporal.test".to_owned()]).unwrap().self_signed(&key).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn tls_of(connection: &TemporalConnection) -> &Tls {
    connection.tls.as_ref().unwrap()
}

#[test]
fn nothing_set_means_the_local_dev_server() {
    let c = World::new().load().unwrap();
    assert_eq!((c.url.as_str(), c.namespace()), ("http://127.0.0.1:7233/", "default"));
    assert!(c.tls.is_none() && c.api_key.is_none());
    assert!(c.summary().starts_with("plain text"), "{}", c.summary());
}

#[test]
fn empty_variables_count_as_unset() {
    let c = World::new().set("TEMPORAL_ADDRESS", "").set("TEMPORAL_API_KEY", " ").load().unwrap();
    assert_eq!(c.address(), "127.0.0.1:7233");
    assert!(c.tls.is_none() && c.api_key.is_none());
}

#[test]
fn an_api_key_turns_tls_on_with_the_system_cas() {
    let c = World::new()
        .set("TEMPORAL_ADDRESS", "acme.a1b2c.tmprl.cloud:7233")
        .set("TEMPORAL_NAMESPACE", "acme.a1b2c")
        .set("TEMPORAL_API_KEY", "secret-key")
        .load()
        .unwrap();
    assert_eq!(c.url.as_str(), "https://acme.a1b2c.tmprl.cloud:7233/");
    assert!(tls_of(&c).server_ca_pem.is_none() && tls_of(&c).client_pem.is_none());
    assert_eq!(c.api_key.as_deref(), Some("secret-key"));
    assert!(c.summary().contains("API key from TEMPORAL_API_KEY"), "{}", c.summary());
    assert!(!format!("{c:?}").contains("secret-key"), "never the key in logs: {c:?}");
    // Plain text with a key is still possible, when said (a local sidecar proxy).
    let c = World::new().set("TEMPORAL_API_KEY", "k").set("TEMPORAL_TLS", "false").load().unwrap();
    assert!(c.tls.is_none() && c.url.scheme() == "http");
}

#[test]
fn flags_win_over_the_environment_and_the_profile() {
    let world = World::new()
        .profile("[profile.default]\naddress = \"file:7233\"\nnamespace = \"file-ns\"\n")
        .set("TEMPORAL_NAMESPACE", "env-ns");
    let c = world.load().unwrap();
    assert_eq!((c.address(), c.namespace()), ("file:7233", "env-ns"));
    let flags =
        ConnectionOverrides { address: Some("flag:7233".to_owned()), namespace: Some("flag-ns".to_owned()) };
    let c = TemporalConnection::from_env_map(&flags, &world.env).unwrap();
    assert_eq!((c.address(), c.namespace()), ("flag:7233", "flag-ns"));
}

#[test]
fn a_profile_file_gives_address_namespace_key_and_mtls() {
    let world = World::new();
    let (cert, key) = certificate_pem();
    let cert_path = world.file("client.pem", &cert);
    let key_path = world.file("client.key", &key);
    let ca_path = world.file("ca.pem", &cert);
    let world = world
        .profile(&format!(
            r#"
[profile.default]
address = "localhost:7233"

[profile.prod]
address = "prod.example:7233"
namespace = "exports"
api_key = "prod-key"

[profile.prod.tls]
client_cert_path = "{cert_path}"
client_key_path = "{key_path}"
server_ca_cert_path = "{ca_path}"
server_name = "temporal.test"

[profile.prod.grpc_meta]
x-team = "exports"
"#
        ))
        .set("TEMPORAL_PROFILE", "prod");
    let c = world.load().unwrap();
    assert_eq!((c.url.as_str(), c.namespace()), ("https://prod.example:7233/", "exports"));
    assert_eq!(c.api_key.as_deref(), Some("prod-key"));
    let tls = tls_of(&c);
    assert_eq!(tls.server_ca_pem.as_deref(), Some(cert.as_bytes()));
    assert_eq!(tls.client_pem, Some((cert.clone().into_bytes(), key.into_bytes())));
    assert_eq!(tls.server_name.as_deref(), Some("temporal.test"));
    assert_eq!(c.headers.get("x-team").map(String::as_str), Some("exports"));
    assert!(c.summary().contains("profile \"prod\""), "{}", c.summary());

    // The default profile when none is named; variables on top of either.
    let mut env = world.env.clone();
    env.remove("TEMPORAL_PROFILE");
    env.insert("TEMPORAL_NAMESPACE".to_owned(), "from-env".to_owned());
    let c = TemporalConnection::from_env_map(&ConnectionOverrides::default(), &env).unwrap();
    assert_eq!((c.url.as_str(), c.namespace()), ("http://localhost:7233/", "from-env"));
}

#[test]
fn an_unusable_profile_setting_is_named_with_its_profile_and_file() {
    let world = World::new().profile(
        "[profile.prod]\naddress = \"x:1\"\n[profile.prod.tls]\nserver_ca_cert_path = \"/nonexistent/ca.pem\"\n",
    );
    let err = world.set("TEMPORAL_PROFILE", "prod").error();
    assert!(err.contains("`tls.server_ca_cert_path` of profile \"prod\""), "{err}");
    assert!(err.contains("TEMPORAL_CONFIG_FILE=") && err.contains("/nonexistent/ca.pem"), "{err}");
}

#[test]
fn present_but_unusable_settings_stop_start_up_naming_them() {
    let world = World::new();
    let (cert, key) = certificate_pem();
    let cert_path = world.file("cert.pem", &cert);
    let key_path = world.file("key.pem", &key);
    let garbage = world.file("garbage.pem", "-----BEGIN CERTIFICATE-----\nnot base64 at all!\n");
    let no_pem = world.file("empty.pem", "hello");
    let cases: Vec<(World, &[&str])> = vec![
        (World::new().set("TEMPORAL_CONFIG_FILE", "/nonexistent/temporal.toml"), &["TEMPORAL_CONFIG_FILE"]),
        (World::new().set("TEMPORAL_PROFILE", "staging"), &["TEMPORAL_PROFILE=staging"]),
        (
            World::new().profile("[profile.default]\nadress = \"typo:1\"\n"),
            &["TEMPORAL_CONFIG_FILE", "adress"],
        ),
        (World::new().profile("[profile.default\n"), &["TEMPORAL_CONFIG_FILE"]),
        (World::new().set("TEMPORAL_TLS", "yes"), &["TEMPORAL_TLS=yes"]),
        (World::new().set("TEMPORAL_ADDRESS", "http://[::1"), &["TEMPORAL_ADDRESS"]),
        (World::new().set("TEMPORAL_ADDRESS", "ftp://x:1"), &["TEMPORAL_ADDRESS"]),
        (
            World::new().set("TEMPORAL_ADDRESS", "http://x:1").set("TEMPORAL_API_KEY", "k"),
            &["TEMPORAL_ADDRESS=http://x:1", "TLS is on"],
        ),
        (
            World::new().set("TEMPORAL_ADDRESS", "https://x:1").set("TEMPORAL_TLS", "false"),
            &["TEMPORAL_ADDRESS=https://x:1", "TEMPORAL_TLS"],
        ),
        (
            World::new().set("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "/nonexistent/ca.pem"),
            &["TEMPORAL_TLS_SERVER_CA_CERT_PATH=/nonexistent/ca.pem", "No such file"],
        ),
        (
            World::new().set("TEMPORAL_TLS_SERVER_CA_CERT_PATH", &garbage),
            &["TEMPORAL_TLS_SERVER_CA_CERT_PATH"],
        ),
        (
            World::new().set("TEMPORAL_TLS_SERVER_CA_CERT_PATH", &no_pem),
            &["TEMPORAL_TLS_SERVER_CA_CERT_PATH"],
        ),
        (
            World::new().set("TEMPORAL_TLS_CLIENT_CERT_PATH", &cert_path),
            &["TEMPORAL_TLS_CLIENT_CERT_PATH", "without TEMPORAL_TLS_CLIENT_KEY_PATH"],
        ),
        (
            World::new()
                .set("TEMPORAL_TLS_CLIENT_CERT_PATH", &cert_path)
                .set("TEMPORAL_TLS_CLIENT_KEY_PATH", &cert_path),
            &["TEMPORAL_TLS_CLIENT_KEY_PATH", "private key"],
        ),
        (
            World::new()
                .set("TEMPORAL_TLS_CLIENT_CERT_PATH", &key_path)
                .set("TEMPORAL_TLS_CLIENT_KEY_PATH", &key_path),
            &["TEMPORAL_TLS_CLIENT_CERT_PATH"],
        ),
        (
            World::new().set("TEMPORAL_TLS", "false").set("TEMPORAL_TLS_SERVER_CA_CERT_PATH", &cert_path),
            &["TEMPORAL_TLS_SERVER_CA_CERT_PATH is set", "TEMPORAL_TLS turns TLS off"],
        ),
        (
            World::new().set("TEMPORAL_TLS", "0").set("TEMPORAL_TLS_SERVER_NAME", "t.example"),
            &["TEMPORAL_TLS_SERVER_NAME is set"],
        ),
        (
            World::new().set("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "true"),
            &["TEMPORAL_TLS_DISABLE_HOST_VERIFICATION"],
        ),
        (World::new().set("TEMPORAL_CODEC_ENDPOINT", "http://codec:8080"), &["TEMPORAL_CODEC_ENDPOINT"]),
        (
            World::new()
                .set("TEMPORAL_TLS_SERVER_CA_CERT_PATH", &cert_path)
                .set("TEMPORAL_TLS_SERVER_CA_CERT_DATA", &cert),
            &["TEMPORAL_TLS_SERVER_CA_CERT_PATH", "TEMPORAL_TLS_SERVER_CA_CERT_DATA"],
        ),
    ];
    for (world, names) in cases {
        let err = world.error();
        for name in names {
            assert!(err.contains(name), "{name} in {err}");
        }
    }
    // Not a secret in any of them.
    let err = World::new().set("TEMPORAL_API_KEY", "secret-key").set("TEMPORAL_TLS", "on").error();
    assert!(!err.contains("secret-key"), "{err}");
}

#[test]
fn certificates_given_as_data_work_like_files() {
    let (cert, key) = certificate_pem();
    let c = World::new()
        .set("TEMPORAL_TLS_CLIENT_CERT_DATA", &cert)
        .set("TEMPORAL_TLS_CLIENT_KEY_DATA", &key)
        .set("TEMPORAL_TLS_SERVER_CA_CERT_DATA", &cert)
        .load()
        .unwrap();
    assert!(tls_of(&c).client_pem.is_some() && tls_of(&c).server_ca_pem.is_some());
    assert!(c.summary().contains("TEMPORAL_TLS_SERVER_CA_CERT_DATA"), "{}", c.summary());
    assert_eq!(c.url.scheme(), "https");
}

#[test]
fn plain_connections_take_bare_addresses_and_http_urls() {
    assert_eq!(
        TemporalConnection::plain("127.0.0.1:7233", "default").unwrap().url.as_str(),
        "http://127.0.0.1:7233/"
    );
    assert!(TemporalConnection::plain("http://127.0.0.1:7233", "default").is_ok());
    assert!(TemporalConnection::plain("https://127.0.0.1:7233", "default").is_err());
    assert!(TemporalConnection::plain("http://exa mple:1", "default").is_err());
}
