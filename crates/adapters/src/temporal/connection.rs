//! How this process reaches Temporal: Temporal's own environment configuration (the SDK's
//! `envconfig`: the `TEMPORAL_*` variables and the TOML profile file the `temporal` CLI reads),
//! with the command line's `--temporal-address` / `--temporal-namespace` on top. Everything is
//! read and checked once, at start-up, so a setting that is present but unusable stops the
//! process with an error naming it instead of surfacing as a vague connection failure later
//! (envconfig itself skips a missing profile file, a non-boolean `TEMPORAL_TLS` or a codec).

use std::collections::{BTreeMap, HashMap};

use anyhow::{anyhow, bail, ensure};
use rustls::RootCertStore;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use temporalio_client::{ClientTlsOptions, ConnectionOptions, TlsOptions, Url};
use temporalio_common::envconfig::{
    ClientConfigProfile, ConfigError, DataSource, LoadClientConfigProfileOptions, load_client_config_profile,
};

/// Where the `temporal` CLI's dev server listens; used when nothing says otherwise.
const DEFAULT_ADDRESS: &str = "127.0.0.1:7233";
const DEFAULT_NAMESPACE: &str = "default";

/// Values from the command line: each one wins over the environment and the profile.
#[derive(Debug, Clone, Default)]
pub struct ConnectionOverrides {
    pub address: Option<String>,
    pub namespace: Option<String>,
}

/// A checked Temporal connection setup: address, namespace and how to authenticate. Build it
/// with [`TemporalConnection::from_environment`] (or [`TemporalConnection::plain`] in tests),
/// then connect with [`super::connect_client`].
#[derive(Clone)]
pub struct TemporalConnection {
    address: String,
    url: Url,
    namespace: String,
    api_key: Option<String>,
    tls: Option<Tls>,
    headers: BTreeMap<String, String>,
    /// Which settings made this, for start-up logs and connection errors.
    summary: String,
}

#[derive(Clone)]
struct Tls {
    server_ca_pem: Option<Vec<u8>>,
    server_name: Option<String>,
    client_pem: Option<(Vec<u8>, Vec<u8>)>,
}

impl std::fmt::Debug for TemporalConnection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The API key and gRPC metadata are credentials: never in logs.
        f.debug_struct("TemporalConnection")
            .field("address", &self.address)
            .field("namespace", &self.namespace)
            .field("settings", &self.summary)
            .finish_non_exhaustive()
    }
}

impl TemporalConnection {
    /// Plain text, no credentials (the dev server of tests and benchmarks).
    ///
    /// # Errors
    /// When `address` is not `host:port` or an `http://` URL.
    pub fn plain(address: &str, namespace: &str) -> anyhow::Result<Self> {
        let env = HashMap::from([
            ("TEMPORAL_ADDRESS".to_owned(), address.to_owned()),
            ("TEMPORAL_NAMESPACE".to_owned(), namespace.to_owned()),
            ("TEMPORAL_TLS".to_owned(), "false".to_owned()),
        ]);
        Self::load(&ConnectionOverrides::default(), &env, false)
    }

    /// From this process's `TEMPORAL_*` variables and the profile file they (or the default
    /// location, `~/.config/temporalio/temporal.toml`) name, with `overrides` on top. Empty
    /// variables count as unset.
    ///
    /// # Errors
    /// One line naming the first setting that is present but unusable.
    pub fn from_environment(overrides: &ConnectionOverrides) -> anyhow::Result<Self> {
        let env: HashMap<String, String> = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter(|(k, _)| k.starts_with("TEMPORAL_"))
            .collect();
        Self::from_env_map(overrides, &env)
    }

    /// As [`Self::from_environment`], with the variables given (tests).
    ///
    /// # Errors
    /// One line naming the first setting that is present but unusable.
    pub fn from_env_map(
        overrides: &ConnectionOverrides,
        env: &HashMap<String, String>,
    ) -> anyhow::Result<Self> {
        Self::load(overrides, env, true)
    }

    fn load(
        overrides: &ConnectionOverrides,
        env: &HashMap<String, String>,
        file: bool,
    ) -> anyhow::Result<Self> {
        let env: HashMap<String, String> =
            env.iter().filter(|(_, v)| !v.trim().is_empty()).map(|(k, v)| (k.clone(), v.clone())).collect();
        let names = Names::new(&env);
        if let Some(path) = env.get("TEMPORAL_CONFIG_FILE") {
            std::fs::metadata(path).map_err(|e| anyhow!("TEMPORAL_CONFIG_FILE={path}: {e}"))?;
        }
        for var in ["TEMPORAL_TLS", "TEMPORAL_TLS_DISABLE_HOST_VERIFICATION"] {
            if let Some(value) = env.get(var) {
                ensure!(boolean(value).is_some(), "{var}={value}: expected true or false");
            }
        }
        let options = LoadClientConfigProfileOptions::builder()
            // Unknown keys are typos here, not settings of a newer CLI: better stop than ignore.
            .config_file_strict(true)
            .disable_file(!file)
            .build();
        let profile = load_client_config_profile(options, Some(&env)).map_err(|e| names.load_error(e))?;
        Self::from_profile(overrides, profile, &names)
    }

    fn from_profile(
        overrides: &ConnectionOverrides,
        profile: ClientConfigProfile,
        names: &Names<'_>,
    ) -> anyhow::Result<Self> {
        if let Some(codec) = &profile.codec
            && (codec.endpoint.is_some() || codec.auth.is_some())
        {
            bail!(
                "{}: remote codecs are not supported (userexport's payloads are plain JSON)",
                names.of("TEMPORAL_CODEC_ENDPOINT", "codec.endpoint")
            );
        }
        let (address, address_name) = match &overrides.address {
            Some(address) => (address.trim().to_owned(), "--temporal-address / TEMPORAL_ADDRESS".to_owned()),
            None => (
                profile.address.clone().unwrap_or_else(|| DEFAULT_ADDRESS.to_owned()),
                names.of("TEMPORAL_ADDRESS", "address"),
            ),
        };
        let namespace = overrides.namespace.clone().or(profile.namespace.clone());
        let namespace = namespace.map_or_else(|| DEFAULT_NAMESPACE.to_owned(), |n| n.trim().to_owned());
        ensure!(!namespace.is_empty(), "--temporal-namespace / TEMPORAL_NAMESPACE is empty");
        let api_key = profile.api_key.clone();

        let tls_name = names.of("TEMPORAL_TLS", "tls.disabled");
        let scheme = address.split_once("://").map(|(scheme, _)| scheme.to_ascii_lowercase());
        let explicit = profile.tls.as_ref().and_then(|t| t.disabled).map(|disabled| !disabled);
        // envconfig's rule: TLS settings or an API key turn TLS on unless it is switched off.
        // An `https://` address does too; a contradiction is an error, not a guess.
        let tls_on = match (explicit, scheme.as_deref()) {
            (Some(true), Some("http")) | (None, Some("http"))
                if profile.tls.is_some() || api_key.is_some() =>
            {
                bail!(
                    "{address_name}={address} is plain http, but TLS is on ({tls_name}, TLS settings or an API key)"
                )
            }
            (Some(false), Some("https")) => {
                bail!("{address_name}={address} is https, but {tls_name} turns TLS off")
            }
            (Some(on), _) => on,
            (None, Some("https")) => true,
            (None, _) => profile.tls.is_some() || api_key.is_some(),
        };
        let url = parse_address(&address, tls_on).map_err(|e| anyhow!("{address_name}={address}: {e}"))?;

        let mut summary = vec![if tls_on { "TLS".to_owned() } else { "plain text".to_owned() }];
        let tls = match profile.tls {
            Some(tls) if !tls_on => {
                let set = [
                    (tls.client_cert.is_some(), ("TEMPORAL_TLS_CLIENT_CERT_PATH", "tls.client_cert_path")),
                    (tls.client_key.is_some(), ("TEMPORAL_TLS_CLIENT_KEY_PATH", "tls.client_key_path")),
                    (
                        tls.server_ca_cert.is_some(),
                        ("TEMPORAL_TLS_SERVER_CA_CERT_PATH", "tls.server_ca_cert_path"),
                    ),
                    (tls.server_name.is_some(), ("TEMPORAL_TLS_SERVER_NAME", "tls.server_name")),
                ];
                if let Some((_, (var, key))) = set.into_iter().find(|(is_set, _)| *is_set) {
                    bail!("{} is set, but {tls_name} turns TLS off", names.of(var, key));
                }
                None
            }
            Some(tls) => {
                ensure!(
                    !tls.disable_host_verification,
                    "{}: turning off server verification is not supported",
                    names.of("TEMPORAL_TLS_DISABLE_HOST_VERIFICATION", "tls.disable_host_verification")
                );
                let server_ca_pem = match tls.server_ca_cert {
                    Some(source) => {
                        let name = names.source(&source, "TEMPORAL_TLS_SERVER_CA_CERT", "tls.server_ca_cert");
                        let pem = read_source(source, &name)?;
                        check_certificates(&pem, &name)?;
                        summary.push(format!("server CA from {name}"));
                        Some(pem)
                    }
                    None => {
                        summary.push("system CAs".to_owned());
                        None
                    }
                };
                let client_pem = match (tls.client_cert, tls.client_key) {
                    (Some(cert), Some(key)) => {
                        let cert_name = names.source(&cert, "TEMPORAL_TLS_CLIENT_CERT", "tls.client_cert");
                        let key_name = names.source(&key, "TEMPORAL_TLS_CLIENT_KEY", "tls.client_key");
                        let cert = read_source(cert, &cert_name)?;
                        check_certificates(&cert, &cert_name)?;
                        let key = read_source(key, &key_name)?;
                        PrivateKeyDer::from_pem_slice(&key)
                            .map_err(|e| anyhow!("{key_name}: no PEM private key in it ({e})"))?;
                        summary.push(format!("client certificate from {cert_name}"));
                        Some((cert, key))
                    }
                    (Some(cert), None) => {
                        let cert = names.source(&cert, "TEMPORAL_TLS_CLIENT_CERT", "tls.client_cert");
                        let key =
                            Names::missing(&cert, "TEMPORAL_TLS_CLIENT_KEY_PATH", "tls.client_key_path");
                        bail!("{cert} is set without {key}")
                    }
                    (None, Some(key)) => {
                        let key = names.source(&key, "TEMPORAL_TLS_CLIENT_KEY", "tls.client_key");
                        let cert =
                            Names::missing(&key, "TEMPORAL_TLS_CLIENT_CERT_PATH", "tls.client_cert_path");
                        bail!("{key} is set without {cert}")
                    }
                    (None, None) => None,
                };
                if let Some(server_name) = &tls.server_name {
                    summary.push(format!("server name {server_name}"));
                }
                Some(Tls { server_ca_pem, server_name: tls.server_name, client_pem })
            }
            // An API key alone: TLS with the system's CAs, as Temporal Cloud expects.
            None if tls_on => {
                summary.push("system CAs".to_owned());
                Some(Tls { server_ca_pem: None, server_name: None, client_pem: None })
            }
            None => None,
        };
        if api_key.is_some() {
            summary.push(format!("API key from {}", names.of("TEMPORAL_API_KEY", "api_key")));
        }
        if let Some(profile) = names.profile_label() {
            summary.push(profile);
        }
        Ok(Self {
            address,
            url,
            namespace,
            api_key,
            tls,
            headers: profile.grpc_meta.into_iter().collect(),
            summary: summary.join(", "),
        })
    }

    /// The address as configured (for logs).
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// How the connection is secured and where that came from, e.g. `TLS, server CA from
    /// TEMPORAL_TLS_SERVER_CA_CERT_PATH=/etc/ca.pem, API key from TEMPORAL_API_KEY`; no secrets.
    pub fn summary(&self) -> &str {
        &self.summary
    }

    /// The SDK's options for this connection.
    pub(super) fn options(
        &self,
        identity: String,
        connect_timeout: std::time::Duration,
        meter: Option<temporalio_common::telemetry::metrics::TemporalMeter>,
    ) -> ConnectionOptions {
        let tls = self.tls.as_ref().map(|tls| {
            let client = tls.client_pem.as_ref().map(|(cert, key)| {
                ClientTlsOptions::builder().client_cert(cert.clone()).client_private_key(key.clone()).build()
            });
            TlsOptions::builder()
                .maybe_server_root_ca_cert(tls.server_ca_pem.clone())
                .maybe_domain(tls.server_name.clone())
                .maybe_client_tls_options(client)
                .build()
        });
        let headers = (!self.headers.is_empty()).then(|| self.headers.clone().into_iter().collect());
        ConnectionOptions::new(self.url.clone())
            .identity(identity)
            .connect_timeout(connect_timeout)
            .maybe_api_key(self.api_key.clone())
            .maybe_tls_options(tls)
            .maybe_headers(headers)
            .maybe_metrics_meter(meter)
            .build()
    }
}

/// `host:port` gets the scheme TLS calls for; a URL is taken as it is.
fn parse_address(address: &str, tls: bool) -> anyhow::Result<Url> {
    let full = if address.contains("://") {
        address.to_owned()
    } else {
        format!("{}://{address}", if tls { "https" } else { "http" })
    };
    let url = Url::parse(&full)?;
    ensure!(matches!(url.scheme(), "http" | "https"), "the scheme must be http or https");
    ensure!(url.host().is_some() && url.port_or_known_default().is_some(), "expected host:port");
    Ok(url)
}

/// envconfig's booleans.
fn boolean(value: &str) -> Option<bool> {
    match value.trim().to_ascii_lowercase().as_str() {
        "true" | "1" => Some(true),
        "false" | "0" => Some(false),
        _ => None,
    }
}

fn read_source(source: DataSource, name: &str) -> anyhow::Result<Vec<u8>> {
    match source {
        DataSource::Path(path) => std::fs::read(&path).map_err(|e| anyhow!("{name}: {e}")),
        DataSource::Data(data) => Ok(data),
        _ => bail!("{name}: unsupported kind of value"),
    }
}

/// At least one PEM certificate, each a parsable X.509 certificate (the TLS stack would skip
/// a bad one silently and fail later with an unknown issuer).
fn check_certificates(pem: &[u8], name: &str) -> anyhow::Result<()> {
    let certificates = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| anyhow!("{name}: not PEM certificates ({e})"))?;
    ensure!(!certificates.is_empty(), "{name}: no PEM certificate (BEGIN CERTIFICATE) in it");
    let mut store = RootCertStore::empty();
    for certificate in certificates {
        store.add(certificate).map_err(|e| anyhow!("{name}: not a valid certificate ({e})"))?;
    }
    Ok(())
}

/// Names a setting the way its user wrote it: the environment variable when set, else the key
/// in the profile file.
struct Names<'a> {
    env: &'a HashMap<String, String>,
}

impl<'a> Names<'a> {
    fn new(env: &'a HashMap<String, String>) -> Self {
        Self { env }
    }

    fn file(&self) -> String {
        match self.env.get("TEMPORAL_CONFIG_FILE") {
            Some(path) => format!("TEMPORAL_CONFIG_FILE={path}"),
            None => "the default profile file (~/.config/temporalio/temporal.toml)".to_owned(),
        }
    }

    fn profile(&self) -> &str {
        self.env.get("TEMPORAL_PROFILE").map_or("default", String::as_str)
    }

    fn profile_label(&self) -> Option<String> {
        let file = self.env.get("TEMPORAL_CONFIG_FILE");
        (file.is_some() || self.env.contains_key("TEMPORAL_PROFILE")).then(|| {
            format!("profile {:?} of {}", self.profile(), file.map_or("the default file", String::as_str))
        })
    }

    fn of(&self, var: &str, key: &str) -> String {
        match self.env.get(var) {
            Some(_) => var.to_owned(),
            None => format!("`{key}` of profile {:?} in {}", self.profile(), self.file()),
        }
    }

    /// The setting missing beside `present`, named the same way (variable or profile key).
    fn missing(present: &str, var: &str, key: &str) -> String {
        if present.starts_with("TEMPORAL_") { var.to_owned() } else { format!("`{key}`") }
    }

    /// A certificate or key: `<prefix>_PATH=<path>` / `<prefix>_DATA`, or `<key>_path` / `<key>_data`.
    fn source(&self, source: &DataSource, prefix: &str, key: &str) -> String {
        match source {
            DataSource::Path(path) => {
                format!("{}={path}", self.of(&format!("{prefix}_PATH"), &format!("{key}_path")))
            }
            _ => self.of(&format!("{prefix}_DATA"), &format!("{key}_data")),
        }
    }

    fn load_error(&self, err: ConfigError) -> anyhow::Error {
        match err {
            ConfigError::ProfileNotFound(profile) => {
                anyhow!("TEMPORAL_PROFILE={profile}: no such profile in {}", self.file())
            }
            ConfigError::InvalidConfig(message) => anyhow!("Temporal settings: {message}"),
            // Boxed without Send + Sync, so only its text travels, on one line: TOML errors
            // come with a multi-line excerpt of the file, whose position line is enough.
            ConfigError::LoadError(err) => {
                let text = err.to_string();
                let lines = text.lines().map(str::trim).filter(|line| {
                    let excerpt = line.trim_start_matches(|c: char| c.is_ascii_digit()).trim_start();
                    !line.is_empty() && !excerpt.starts_with('|')
                });
                anyhow!("{}: {}", self.file(), lines.collect::<Vec<_>>().join(": "))
            }
        }
    }
}

#[cfg(test)]
#[path = "connection_tests.rs"]
mod tests;
