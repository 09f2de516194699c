//! The notification step: once an export is final, the email (when the request asked for one)
//! and the tenant's signed callback (when it has a `callback_url`), each retried on transient
//! failures and recorded on the export. It runs apart from the export's attempts (after the
//! export slot is released, or as its own Temporal activity), so an SMTP or receiver outage
//! never holds an export slot, and a failed notification never fails the export.

use std::future::Future;
use std::time::Duration;

use chrono::Utc;
use domain::{Export, ExportId, NotificationRecord, NotificationStatus, Scope};
use ports::{PortError, UpdateOutcome};
use tracing::{info, warn};

use crate::meters;
use crate::runner::ExportRunner;

/// How hard to try each channel within one run of the step.
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

/// What the notification step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notified {
    /// Both channels handled (sent, failed for good, or not wanted) and recorded.
    Done,
    /// Nothing was due: not finished yet, cancelled, or handled before (a duplicate).
    NothingDue,
}

impl ExportRunner {
    /// Runs the notification step of export `id`. Safe to repeat: a channel already recorded is
    /// not sent again, and an export whose notifications are handled is left alone, so a
    /// retried or duplicated step sends nothing twice once its outcome is recorded.
    ///
    /// # Errors
    /// The record could not be read or the outcome not be recorded; the step should run again.
    pub async fn notify(&self, scope: &Scope, id: ExportId) -> Result<Notified, PortError> {
        let Some(export) = self.exports.get(scope, id).await? else { return Ok(Notified::NothingDue) };
        if !export.notify_due() {
            return Ok(Notified::NothingDue);
        }
        let email = if export.spec.email_notify && export.notification().is_none() {
            Some(
                deliver("email", &export, self.config.notify, || self.notifier.export_finished(&export))
                    .await,
            )
        } else {
            None
        };
        let callback = match &self.callbacks {
            Some(callbacks) if export.callback().is_none() && callbacks.wants(scope) => {
                Some(deliver("callback", &export, self.config.notify, || callbacks.deliver(&export)).await)
            }
            _ => None,
        };
        self.record(export, email, callback).await
    }

    /// Writes the outcomes onto the stored export without changing anything else it holds
    /// (re-reading it when a concurrent write won the compare-and-set).
    async fn record(
        &self,
        export: Export,
        email: Option<NotificationRecord>,
        callback: Option<NotificationRecord>,
    ) -> Result<Notified, PortError> {
        let mut current = export;
        for _ in 0..5 {
            let now = Utc::now();
            if let Some(record) = &email {
                current.record_notification(record.clone(), now);
            }
            if let Some(record) = &callback {
                current.record_callback(record.clone(), now);
            }
            current.notifications_done(now);
            match self.exports.update_if_status(&current, current.status()).await? {
                UpdateOutcome::Updated | UpdateOutcome::NotFound => return Ok(Notified::Done),
                UpdateOutcome::Conflict(stored) => current = *stored,
            }
        }
        Err(PortError::unavailable(anyhow::anyhow!(
            "the export record kept changing while recording its notification"
        )))
    }
}

/// What the record says of a failed delivery: a fixed text per channel and kind, never the
/// mail server's or receiver's own words.
fn public_delivery_error(channel: &str, transient: bool) -> String {
    let why = if transient { "unreachable or busy; retries ran out" } else { "refused it" };
    match channel {
        "email" => format!("the email could not be delivered: the mail server was {why}"),
        _ => format!("the {channel} could not be delivered: the receiver was {why}"),
    }
}

/// Sends through one channel, retrying transient failures, and says how it went.
async fn deliver<F, Fut>(channel: &str, export: &Export, retry: NotifyRetry, send: F) -> NotificationRecord
where
    F: Fn() -> Fut,
    Fut: Future<Output = Result<(), PortError>>,
{
    let mut backoff = retry.initial_backoff;
    let attempts = retry.attempts.max(1);
    let mut attempt = 0;
    let (status, last_error) = loop {
        attempt += 1;
        match send().await {
            Ok(()) => {
                info!(export_id = %export.id, channel, attempt, "notification sent");
                metrics::counter!(meters::NOTIFICATIONS, "channel" => channel.to_owned(), "outcome" => "sent")
                    .increment(1);
                break (NotificationStatus::Sent, None);
            }
            Err(err) => {
                let transient = err.is_retryable();
                warn!(export_id = %export.id, channel, attempt, transient, error = %err,
                      "notification failed; the export is unaffected");
                if !transient || attempt >= attempts {
                    metrics::counter!(meters::NOTIFICATIONS, "channel" => channel.to_owned(), "outcome" => "failed")
                        .increment(1);
                    // Tenants read this; the cause (SMTP or HTTP text) is in the log line above.
                    break (NotificationStatus::Failed, Some(public_delivery_error(channel, transient)));
                }
                tokio::time::sleep(backoff).await;
                backoff = backoff.saturating_mul(2);
            }
        }
    };
    NotificationRecord { status, attempts: attempt, last_error, at: Utc::now() }
}
