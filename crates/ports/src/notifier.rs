use async_trait::async_trait;
use domain::Export;

use crate::PortError;

/// Tells people an export finished (completed or failed).
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Sends one notification about the terminal `export`. A failure never fails the export;
    /// the caller records it.
    async fn export_finished(&self, export: &Export) -> Result<(), PortError>;
}
