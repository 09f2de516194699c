//! Retention: completed exports past their `expires_at` lose their file and become `expired`.
//! The sweep is idempotent, so a schedule may run it as often as it likes and a crashed sweep
//! is finished by the next one. A file that fails to delete is tried again later, with a
//! backoff that grows per failure ([`delete_retry_after`]); meanwhile the sweep goes on to the
//! others, so one stuck file (or 500) never keeps newer exports from expiring.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use domain::{Export, ExportStatus};
use ports::{ExportRepository, ExportStorage, PortError, UpdateOutcome};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::meters;

/// Wait before retrying a file that failed to delete once; doubled per further failure.
pub const DELETE_RETRY_INITIAL: Duration = Duration::from_secs(60);
/// Longest wait between two tries of one file.
pub const DELETE_RETRY_MAX: Duration = Duration::from_secs(6 * 3600);

/// How long after its `attempts`-th failed delete a file is tried again.
pub fn delete_retry_after(attempts: u32) -> Duration {
    let doublings = attempts.saturating_sub(1).min(20);
    DELETE_RETRY_INITIAL.saturating_mul(1 << doublings).min(DELETE_RETRY_MAX)
}

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
    /// Exports whose file could not be deleted: each is tried again after its backoff.
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

    /// Expires at most `limit` exports due at `now`, soonest due first.
    ///
    /// # Errors
    /// When the due exports cannot be listed; a single export that fails is counted, given its
    /// next try after a backoff, and the sweep goes on.
    pub async fn sweep(&self, now: DateTime<Utc>, limit: usize) -> Result<SweepReport, SweepError> {
        let due = self.exports.list_expired(now, limit).await?;
        let mut report = SweepReport { more: due.len() >= limit, ..SweepReport::default() };
        for export in due {
            match self.expire(export.clone(), now).await {
                Ok(true) => report.expired += 1,
                Ok(false) => {}
                Err(err) => {
                    report.failed += 1;
                    metrics::counter!(meters::RETENTION_FAILURES).increment(1);
                    self.defer(export, now, &err).await;
                }
            }
        }
        if report.expired > 0 || report.failed > 0 {
            info!(expired = report.expired, failed = report.failed, "retention sweep");
        }
        Ok(report)
    }

    /// Puts a file that failed to delete behind the others until its backoff has passed. If
    /// even that write fails, the export stays due and the next sweep tries it again.
    async fn defer(&self, mut export: Export, now: DateTime<Utc>, cause: &PortError) {
        let retry_at = export.defer_deletion(now, delete_retry_after);
        warn!(export_id = %export.id, tenant = %export.scope.tenant, key = %export.object_key,
              delete_attempts = export.delete_attempts(), %retry_at, error = %cause,
              "retention could not delete an export's file; it is tried again later");
        if let Err(err) = self.exports.update_if_status(&export, ExportStatus::Completed).await {
            warn!(export_id = %export.id, error = %err, "could not record the retry of a failed deletion");
        }
    }

    /// File first, then the record: a crash in between leaves a `completed` record whose file
    /// is gone, which the next sweep finishes; the other order could keep a file forever.
    async fn expire(&self, mut export: Export, now: DateTime<Utc>) -> Result<bool, PortError> {
        self.storage.delete(&export.object_key).await?;
        metrics::counter!(meters::RETENTION_DELETIONS).increment(1);
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
