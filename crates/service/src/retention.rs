//! Retention: completed exports past their `expires_at` lose their file and become `expired`.
//! The sweep is idempotent, so a schedule may run it as often as it likes and a crashed sweep
//! is finished by the next one.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use domain::{Export, ExportStatus};
use ports::{ExportRepository, ExportStorage, PortError, UpdateOutcome};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

/// What one sweep did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SweepReport {
    /// Exports whose file was deleted and record marked `expired`.
    pub expired: u64,
    /// Exports left for the next sweep (their file could not be deleted).
    pub failed: u64,
    /// True when more may be due than this sweep's limit allowed.
    pub more: bool,
}

/// Deletes expired exports' files and marks their records.
pub struct RetentionSweeper {
    exports: Arc<dyn ExportRepository>,
    storage: Arc<dyn ExportStorage>,
}

impl std::fmt::Debug for RetentionSweeper {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RetentionSweeper").finish_non_exhaustive()
    }
}

impl RetentionSweeper {
    pub fn new(exports: Arc<dyn ExportRepository>, storage: Arc<dyn ExportStorage>) -> Self {
        Self { exports, storage }
    }

    /// Expires at most `limit` exports due at `now`, soonest first.
    ///
    /// # Errors
    /// When the due exports cannot be listed; a single export that fails is counted and left
    /// for the next sweep instead.
    pub async fn sweep(&self, now: DateTime<Utc>, limit: usize) -> Result<SweepReport, SweepError> {
        let due = self.exports.list_expired(now, limit).await?;
        let mut report = SweepReport { more: due.len() >= limit, ..SweepReport::default() };
        for export in due {
            match self.expire(export, now).await {
                Ok(true) => report.expired += 1,
                Ok(false) => {}
                Err(err) => {
                    report.failed += 1;
                    warn!(error = %err, "could not expire an export; the next sweep retries it");
                }
            }
        }
        if report.expired > 0 || report.failed > 0 {
            info!(expired = report.expired, failed = report.failed, "retention sweep");
        }
        Ok(report)
    }

    /// File first, then the record: a crash in between leaves a `completed` record whose file
    /// is gone, which the next sweep finishes; the other order could keep a file forever.
    async fn expire(&self, mut export: Export, now: DateTime<Utc>) -> Result<bool, PortError> {
        self.storage.delete(&export.object_key).await?;
        if export.expire(now).is_err() {
            return Ok(false);
        }
        match self.exports.update_if_status(&export, ExportStatus::Completed).await? {
            UpdateOutcome::Updated => {
                info!(export_id = %export.id, tenant = %export.scope.tenant,
                      environment = %export.scope.environment, "export expired: file deleted");
                Ok(true)
            }
            // Expired by a concurrent sweep, or gone.
            UpdateOutcome::Conflict(_) | UpdateOutcome::NotFound => Ok(false),
        }
    }
}
