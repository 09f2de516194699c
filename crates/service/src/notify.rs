//! Delivering the notification of a finished export: retried on transient failures, and
//! recorded on the export either way. A failed notification never fails the export.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{Export, NotificationRecord, NotificationStatus};
use ports::{ExportRepository, Notifier, PortError, UpdateOutcome};
use tracing::{info, warn};

/// How hard to try.
#[derive(Debug, Clone, Copy)]
pub struct NotifyRetry {
    /// Attempts, the first included (at least 1).
    pub attempts: u32,
    /// Wait before the second attempt; doubled after each further failure.
    pub initial_backoff: Duration,
}

impl Default for NotifyRetry {
    fn default() -> Self {
        Self { attempts: 3, initial_backoff: Duration::from_secs(1) }
    }
}

/// Sends the notification of the finished `export` (when it asked for one) and records the
/// result on the stored record.
pub(crate) async fn notify_finished(
    notifier: &Arc<dyn Notifier>,
    exports: &Arc<dyn ExportRepository>,
    retry: NotifyRetry,
    export: &Export,
) {
    if !export.spec.email_notify {
        return;
    }
    let (status, attempts, last_error) = deliver(notifier.as_ref(), retry, export).await;
    let record = NotificationRecord { status, attempts, last_error, at: Utc::now() };
    record_on(exports.as_ref(), export, record).await;
}

async fn deliver(
    notifier: &dyn Notifier,
    retry: NotifyRetry,
    export: &Export,
) -> (NotificationStatus, u32, Option<String>) {
    let mut backoff = retry.initial_backoff;
    let attempts = retry.attempts.max(1);
    for attempt in 1..=attempts {
        match notifier.export_finished(export).await {
            Ok(()) => {
                info!(export_id = %export.id, attempt, "notification sent");
                return (NotificationStatus::Sent, attempt, None);
            }
            Err(err) => {
                let transient = matches!(err, PortError::Unavailable(_));
                warn!(export_id = %export.id, attempt, transient, error = %err,
                      "notification failed; the export is unaffected");
                if !transient || attempt == attempts {
                    return (NotificationStatus::Failed, attempt, Some(err.to_string()));
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    }
    (NotificationStatus::Failed, attempts, Some("no attempt was made".to_owned()))
}

/// Writes `record` onto the stored export without changing anything else the store holds
/// (re-reading it when a concurrent write won the compare-and-set).
async fn record_on(exports: &dyn ExportRepository, export: &Export, record: NotificationRecord) {
    let mut current = export.clone();
    for _ in 0..3 {
        current.record_notification(record.clone(), Utc::now());
        match exports.update_if_status(&current, current.status()).await {
            Ok(UpdateOutcome::Updated) => return,
            Ok(UpdateOutcome::Conflict(stored)) => current = *stored,
            Ok(UpdateOutcome::NotFound) => return,
            Err(err) => {
                warn!(export_id = %export.id, error = %err, "could not record the notification on the export");
                return;
            }
        }
    }
    warn!(export_id = %export.id, "could not record the notification: the record kept changing");
}
