//! Notifiers. The default one only logs; SMTP arrives with its issue.

use async_trait::async_trait;
use domain::Export;
use ports::{Notifier, PortError};
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
