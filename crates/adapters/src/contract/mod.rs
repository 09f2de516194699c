//! Contract test suites shared by every adapter of a port: the in-memory adapters run them in
//! this crate's tests, and each real backend runs the same functions against its server, so
//! "same contract" is checked, not assumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod batches;
pub mod exports;
pub mod fakes;
pub mod fault_proxy;
pub mod grpc_tls_proxy;
pub mod otlp_sink;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod private_pg;
#[cfg(feature = "s3")]
pub mod s3;
pub mod schedules;
pub mod smtp_sink;
pub mod users;

/// A plain reqwest client for tests. reqwest needs the process's crypto provider installed before
/// any client is built (see [`crate::tls`]); these helpers do it first.
pub fn http_client() -> reqwest::Client {
    http_client_builder().build().expect("a default reqwest client builds")
}

/// [`http_client`]'s builder, for tests that configure the client.
pub fn http_client_builder() -> reqwest::ClientBuilder {
    crate::tls::install_crypto_provider();
    reqwest::Client::builder()
}

/// `reqwest::get` with [`http_client`].
pub async fn http_get(url: impl reqwest::IntoUrl) -> reqwest::Result<reqwest::Response> {
    http_client().get(url).send().await
}
