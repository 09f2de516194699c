//! Notifiers. The default one only logs; SMTP arrives with its issue. Also the callback sender
//! of deployments without callbacks.

use async_trait::async_trait;
use domain::{Export, Scope};
use ports::{CallbackSender, Notifier, PortError};
use tracing::info;

/// Logs a line per finished export instead of sending anything.
#[derive(Debug, Clone, Copy, Default)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    async fn export_finished(&self, export: &Export) -> Result<(), PortError> {
        info!(
            export_id = %export.id,
            tenant = %export.scope.tenant,
            environment = %export.scope.environment,
            status = %export.status(),
            to = export.spec.notify_email.as_deref().unwrap_or("(tenant default)"),
            "notification: export finished"
        );
        Ok(())
    }
}

/// The callback sender when no tenant has a `callback_url` (or the `callback` feature is off):
/// it wants nothing, so nothing is delivered.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoCallbacks;

#[async_trait]
impl CallbackSender for NoCallbacks {
    fn wants(&self, _scope: &Scope) -> bool {
        false
    }

    async fn deliver(&self, export: &Export) -> Result<(), PortError> {
        Err(PortError::Other(anyhow::anyhow!("callbacks are not configured (export {})", export.id)))
    }
}
