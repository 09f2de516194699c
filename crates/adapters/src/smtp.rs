//! Email notifications over SMTP (feature `smtp`, lettre): one plain-text message per finished
//! export, to the address in the request or the tenant's configured one.

use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use domain::{Export, ExportStatus, TenantDirectory};
use lettre::message::Mailbox;
use lettre::message::header::ContentType;
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};
use ports::{Notifier, PortError};
use url::Url;

/// Bound on one delivery (connect, dialogue, data).
const SEND_TIMEOUT: Duration = Duration::from_secs(30);

/// Where and as whom to send.
#[derive(Clone)]
pub struct SmtpSettings {
    /// `smtp://host:port` (plain, or STARTTLS with `?tls=required`), `smtps://host:465`;
    /// credentials as `smtp://user:password@host`.
    pub url: String,
    /// The `From:` address.
    pub from: String,
    /// Base URL of the API, for the download link (`{base}/v1/exports/{id}/download`).
    pub public_url: Url,
}

impl std::fmt::Debug for SmtpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password.
        let shown = Url::parse(&self.url).map_or_else(
            |_| "<invalid>".to_owned(),
            |mut u| {
                if u.password().is_some() {
                    let _ = u.set_password(Some("redacted"));
                }
                u.to_string()
            },
        );
        f.debug_struct("SmtpSettings")
            .field("url", &shown)
            .field("from", &self.from)
            .field("public_url", &self.public_url.as_str())
            .finish()
    }
}

/// Sends export notifications through an SMTP server.
pub struct SmtpNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: Mailbox,
    public_url: Url,
    tenants: TenantDirectory,
}

impl std::fmt::Debug for SmtpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpNotifier").field("from", &self.from.to_string()).finish_non_exhaustive()
    }
}

impl SmtpNotifier {
    /// # Errors
    /// An invalid URL or `From:` address (nothing is contacted yet).
    pub fn new(settings: &SmtpSettings, tenants: TenantDirectory) -> anyhow::Result<Self> {
        let transport = AsyncSmtpTransport::<Tokio1Executor>::from_url(&settings.url)
            .context(
                "USEREXPORT_SMTP_URL: expected smtp://host:port, smtp://host?tls=required or smtps://host",
            )?
            .timeout(Some(SEND_TIMEOUT))
            .build();
        let from = settings.from.parse().context("USEREXPORT_SMTP_FROM: not an email address")?;
        Ok(Self { transport, from, public_url: settings.public_url.clone(), tenants })
    }

    fn recipient(&self, export: &Export) -> Option<String> {
        export
            .spec
            .notify_email
            .clone()
            .or_else(|| self.tenants.get(&export.scope).and_then(|t| t.notify_email.clone()))
    }

    fn message(&self, export: &Export, to: Mailbox) -> Result<Message, PortError> {
        let status = export.status();
        let mut body = format!(
            "Export {id} for {scope} is {status}.\n\nFormat: {format}\n",
            id = export.id,
            scope = export.scope,
            format = export.spec.extension(),
        );
        if let Some(outcome) = export.outcome() {
            body.push_str(&format!(
                "Records: {}\nBytes: {}\nSHA-256: {}\n",
                outcome.record_count, outcome.bytes, outcome.sha256
            ));
        }
        if status == ExportStatus::Completed {
            let link = self
                .public_url
                .join(&format!("v1/exports/{}/download", export.id))
                .map_err(|e| PortError::Other(anyhow::anyhow!("download link: {e}")))?;
            body.push_str(&format!("\nDownload (with your API key): {link}\n"));
            if let Some(expires) = export.expires_at() {
                body.push_str(&format!("Available until: {}\n", expires.to_rfc3339()));
            }
        }
        if let Some(error) = export.error() {
            body.push_str(&format!("\nError ({}): {}\n", error.kind.as_str(), error.message));
        }
        Message::builder()
            .from(self.from.clone())
            .to(to)
            .subject(format!("userexport: export {} {}", export.id, status))
            .header(ContentType::TEXT_PLAIN)
            .body(body)
            .map_err(|e| PortError::Other(anyhow::anyhow!("building the message: {e}")))
    }
}

#[async_trait]
impl Notifier for SmtpNotifier {
    async fn export_finished(&self, export: &Export) -> Result<(), PortError> {
        let Some(to) = self.recipient(export) else {
            return Err(PortError::Other(anyhow::anyhow!(
                "no recipient: the request has no notify_email and the tenant no notify_email in USEREXPORT_TENANTS"
            )));
        };
        let to: Mailbox = to
            .parse()
            .map_err(|e| PortError::Other(anyhow::anyhow!("recipient {to:?} is not an address: {e}")))?;
        let message = self.message(export, to)?;
        self.transport.send(message).await.map_err(|e| {
            // 4xx replies and connection trouble may pass; 5xx replies will not.
            if e.is_permanent() {
                PortError::Other(anyhow::anyhow!("SMTP refused the message: {e}"))
            } else {
                PortError::Unavailable(anyhow::anyhow!("SMTP delivery failed: {e}"))
            }
        })?;
        Ok(())
    }
}
