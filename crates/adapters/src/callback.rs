//! Signed export callbacks over HTTPS (feature `callback`, reqwest + rustls): one POST of the
//! export's `export.completed` / `export.failed` event to its tenant's `callback_url`.
//!
//! The URL comes from tenant configuration, so the sender guards against reaching internal
//! services (SSRF): host names are resolved by [`PublicResolver`], which drops non-public
//! addresses, and the connection goes to an address it returned (no re-resolution that DNS
//! rebinding could exploit); literal IP hosts are checked before sending; redirects are not
//! followed and proxies are not used (a proxy would resolve the name itself).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use chrono::Utc;
use domain::signature::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use domain::{CallbackEvent, CallbackUrl, Export, Scope, TenantDirectory, is_public_address};
use ports::{CallbackSender, PortError};
use reqwest::dns::{Addrs, Name, Resolve, Resolving};
use reqwest::{StatusCode, header};
use tracing::info;

/// Carries the event ID, so a receiver can drop a retried delivery it already handled.
pub const EVENT_ID_HEADER: &str = "X-Userexport-Event-Id";
/// Bytes of a receiver's answer read (then dropped, so the connection can be reused).
const MAX_RESPONSE_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone)]
pub struct CallbackSettings {
    /// Permits `http` and loopback, private and link-local addresses (tests, private
    /// deployments). Off, only public addresses over `https` are reached.
    pub allow_private: bool,
    /// Bound on one delivery: connect, send and the answer.
    pub timeout: Duration,
    pub user_agent: String,
}

impl Default for CallbackSettings {
    fn default() -> Self {
        Self {
            allow_private: false,
            timeout: Duration::from_secs(10),
            user_agent: concat!("userexport-callbacks/", env!("CARGO_PKG_VERSION")).to_owned(),
        }
    }
}

/// Delivers export callbacks to the tenants' `callback_url`s.
pub struct HttpCallbackSender {
    client: reqwest::Client,
    tenants: TenantDirectory,
    allow_private: bool,
}

impl std::fmt::Debug for HttpCallbackSender {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The directory holds webhook secrets; its Debug redacts them, but nothing here needs it.
        f.debug_struct("HttpCallbackSender")
            .field("allow_private", &self.allow_private)
            .finish_non_exhaustive()
    }
}

/// TLS of callbacks: ring, and Mozilla's roots compiled in (as reqwest 0.12's `rustls-tls` had
/// them), so a callback is verified the same in a container without a system trust store.
fn tls_config() -> anyhow::Result<rustls::ClientConfig> {
    let roots = rustls::RootCertStore { roots: webpki_roots::TLS_SERVER_ROOTS.to_vec() };
    let mut config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .context("TLS versions of the callback client")?
            .with_root_certificates(roots)
            .with_no_client_auth();
    // reqwest is built for HTTP/1.1 only, and offers just that.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

impl HttpCallbackSender {
    /// # Errors
    /// When the HTTP client cannot be built (nothing is contacted yet).
    pub fn new(tenants: TenantDirectory, settings: CallbackSettings) -> anyhow::Result<Self> {
        let client = reqwest::Client::builder()
            .tls_backend_preconfigured(tls_config()?)
            .dns_resolver(Arc::new(PublicResolver { allow_private: settings.allow_private }))
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .https_only(!settings.allow_private)
            .timeout(settings.timeout)
            .user_agent(settings.user_agent)
            .build()
            .context("building the callback HTTP client")?;
        Ok(Self { client, tenants, allow_private: settings.allow_private })
    }

    fn target(&self, export: &Export) -> Result<(&CallbackUrl, &domain::Secret), PortError> {
        let tenant = self.tenants.get(&export.scope);
        let url = tenant.and_then(|t| t.callback_url.as_ref()).ok_or_else(|| {
            PortError::Other(anyhow!("tenant {} has no callback_url in USEREXPORT_TENANTS", export.scope))
        })?;
        // The directory refuses a callback_url without a secret; this is the same rule, kept here.
        let secret = tenant
            .and_then(|t| t.webhook_secret.as_ref())
            .ok_or_else(|| PortError::Other(anyhow!("tenant {} has no webhook_secret", export.scope)))?;
        // Checked again: the directory may have been parsed under other rules than this sender's.
        if !self.allow_private {
            if url.as_url().scheme() != "https" {
                return Err(PortError::Other(anyhow!("callback to {} is not https", url.host_str())));
            }
            if let Some(ip) = url.literal_ip().filter(|ip| !is_public_address(*ip)) {
                return Err(PortError::Other(anyhow!("callback address {ip} is not public")));
            }
        }
        Ok((url, secret))
    }
}

#[async_trait]
impl CallbackSender for HttpCallbackSender {
    fn wants(&self, scope: &Scope) -> bool {
        self.tenants.get(scope).is_some_and(|t| t.callback_url.is_some())
    }

    async fn deliver(&self, export: &Export) -> Result<(), PortError> {
        let event = CallbackEvent::for_export(export).ok_or_else(|| {
            PortError::Other(anyhow!("export {} is {}: no callback event", export.id, export.status()))
        })?;
        let (url, secret) = self.target(export)?;
        let host = url.host_str();
        let body = serde_json::to_vec(&event).context("serialising the callback event")?;
        let timestamp = Utc::now().timestamp();
        let response = self
            .client
            .post(url.as_url().clone())
            .header(header::CONTENT_TYPE, "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature::sign(secret.expose(), timestamp, &body))
            .header(EVENT_ID_HEADER, event.id.to_string())
            .body(body)
            .send()
            .await
            .map_err(|e| send_error(e, host))?;
        let status = response.status();
        drain(response).await;
        info!(export_id = %export.id, event_id = %event.id, host, status = status.as_u16(), "callback answered");
        classify(status, host)
    }
}

/// Translates a failed send: a refused address will stay refused; a builder error is ours;
/// anything else (connect, timeout, reset) may pass.
fn send_error(err: reqwest::Error, host: &str) -> PortError {
    // Without the URL: its path or query may carry the receiver's token.
    let err = err.without_url();
    let refused = std::iter::successors(Some(&err as &dyn std::error::Error), |e| e.source())
        .find_map(|e| e.downcast_ref::<RefusedAddresses>());
    if let Some(refused) = refused {
        PortError::Other(anyhow!("callback to {host} refused: {refused}"))
    } else if err.is_builder() {
        PortError::Other(anyhow::Error::new(err).context(format!("callback to {host}")))
    } else {
        PortError::unavailable(anyhow::Error::new(err).context(format!("callback to {host} failed")))
    }
}

/// The receiver's answer, per the port's contract.
fn classify(status: StatusCode, host: &str) -> Result<(), PortError> {
    if status.is_success() {
        return Ok(());
    }
    let err = anyhow!("callback to {host} answered {status}");
    if status.is_server_error()
        || status == StatusCode::REQUEST_TIMEOUT
        || status == StatusCode::TOO_MANY_REQUESTS
    {
        Err(PortError::unavailable(err))
    } else if status.is_redirection() {
        Err(PortError::Other(err.context("redirects are not followed")))
    } else {
        Err(PortError::Other(err))
    }
}

/// Reads (and drops) at most [`MAX_RESPONSE_BYTES`] of the answer: a receiver cannot make us
/// buffer an unbounded body.
async fn drain(mut response: reqwest::Response) {
    let mut read = 0;
    while read < MAX_RESPONSE_BYTES {
        match response.chunk().await {
            Ok(Some(chunk)) => read += chunk.len(),
            _ => break,
        }
    }
}

/// Resolves with the system resolver and keeps only public addresses (unless private ones are
/// allowed); the client connects to what this returns, so the check cannot be raced.
#[derive(Debug, Clone, Copy)]
struct PublicResolver {
    allow_private: bool,
}

/// Every address a callback host resolved to is non-public.
#[derive(Debug, thiserror::Error)]
#[error("{host} resolves only to non-public addresses")]
struct RefusedAddresses {
    host: String,
}

impl Resolve for PublicResolver {
    fn resolve(&self, name: Name) -> Resolving {
        let allow_private = self.allow_private;
        let host = name.as_str().to_owned();
        Box::pin(async move {
            // Port 0: the client puts the URL's port on every address.
            let resolved = tokio::net::lookup_host((host.as_str(), 0)).await?;
            let kept: Vec<SocketAddr> =
                resolved.filter(|addr| allow_private || is_public_address(addr.ip())).collect();
            if kept.is_empty() {
                return Err(Box::new(RefusedAddresses { host }) as Box<dyn std::error::Error + Send + Sync>);
            }
            Ok(Box::new(kept.into_iter()) as Addrs)
        })
    }
}
