//! Prometheus metrics of the use cases, through the `metrics` facade (a recorder is installed
//! once per binary by `wiring::metrics`; without one every call here is a no-op).
//!
//! Names follow Prometheus conventions (`_total`, `_seconds`, `_bytes`, base units) and every
//! label value comes from a closed set (format, compression, error code, outcome, reason):
//! never a tenant, an export ID or free text.
//!
//! An export's status changes are counted by [`MeteredExports`], a decorator of the
//! `ExportRepository` port: the record's compare-and-set is the one place every transition
//! happens exactly once, whichever process (API, worker, reconciler, retention) writes it.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Compression, Export, ExportId, ExportStatus, Scope};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use ports::{
    CreateOutcome, ExportPage, ExportQuery, ExportRepository, PortError, QuotaCreateOutcome, UpdateOutcome,
};

pub const EXPORTS_REQUESTED: &str = "userexport_exports_requested_total";
pub const EXPORTS_STARTED: &str = "userexport_exports_started_total";
pub const EXPORTS_COMPLETED: &str = "userexport_exports_completed_total";
pub const EXPORTS_FAILED: &str = "userexport_exports_failed_total";
pub const EXPORTS_CANCELLED: &str = "userexport_exports_cancelled_total";
pub const EXPORTS_EXPIRED: &str = "userexport_exports_expired_total";
pub const EXPORT_DURATION: &str = "userexport_export_duration_seconds";
pub const EXPORT_QUEUE: &str = "userexport_export_queue_seconds";
pub const EXPORT_ROWS: &str = "userexport_export_rows_total";
pub const EXPORT_BYTES: &str = "userexport_export_bytes_total";
pub const EXPORTS_RUNNING: &str = "userexport_exports_running";
pub const EXPORTS_QUEUED: &str = "userexport_exports_queued";
pub const HTTP_REQUESTS: &str = "userexport_http_requests_total";
pub const HTTP_DURATION: &str = "userexport_http_request_duration_seconds";
pub const EVENTS_CONSUMED: &str = "userexport_events_consumed_total";
pub const DEAD_LETTERS: &str = "userexport_dead_letters_total";
pub const WEBHOOK_REJECTIONS: &str = "userexport_webhook_rejections_total";
pub const NOTIFICATIONS: &str = "userexport_notifications_total";
pub const RETENTION_DELETIONS: &str = "userexport_retention_deletions_total";
pub const RETENTION_FAILURES: &str = "userexport_retention_failures_total";
pub const SCHEDULE_FIRES: &str = "userexport_schedule_fires_total";
pub const SCHEDULE_SKIPS: &str = "userexport_schedule_skips_total";

/// Bucket bounds of the export duration and time-in-queue histograms (seconds): exports take
/// from a fraction of a second to the 8 h deadline.
pub const EXPORT_SECONDS_BUCKETS: &[f64] =
    &[0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0, 7200.0, 14400.0, 28800.0];

/// Bucket bounds of the HTTP request duration histogram (seconds).
pub const HTTP_SECONDS_BUCKETS: &[f64] =
    &[0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];

/// Registers the help text and unit of every metric above (the exporter's `# HELP` lines).
pub fn describe() {
    describe_counter!(EXPORTS_REQUESTED, "Exports accepted (a new record), by format and compression.");
    describe_counter!(EXPORTS_STARTED, "Exports whose first attempt started, by format and compression.");
    describe_counter!(EXPORTS_COMPLETED, "Exports completed, by format and compression.");
    describe_counter!(EXPORTS_FAILED, "Exports failed for good, by error code.");
    describe_counter!(EXPORTS_CANCELLED, "Exports cancelled.");
    describe_counter!(EXPORTS_EXPIRED, "Completed exports whose file retention deleted.");
    describe_histogram!(
        EXPORT_DURATION,
        Unit::Seconds,
        "From the first attempt's start (the request, if none started) to the end, by outcome."
    );
    describe_histogram!(EXPORT_QUEUE, Unit::Seconds, "From the request to the first attempt's start.");
    describe_counter!(EXPORT_ROWS, "Rows in completed exports' files, by format.");
    describe_counter!(
        EXPORT_BYTES,
        Unit::Bytes,
        "Bytes of completed exports' files, by format and compression."
    );
    describe_gauge!(EXPORTS_RUNNING, "Export attempts streaming in this process.");
    describe_gauge!(EXPORTS_QUEUED, "Exports waiting for a slot of this process's in-process orchestrator.");
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route template, method and status.");
    describe_histogram!(HTTP_DURATION, Unit::Seconds, "HTTP request duration until the response head.");
    describe_counter!(EVENTS_CONSUMED, "ExportRequested events handled, by source and outcome.");
    describe_counter!(DEAD_LETTERS, "ExportRequested events dead-lettered, by reason.");
    describe_counter!(WEBHOOK_REJECTIONS, "ExportRequested webhook calls refused, by reason.");
    describe_counter!(NOTIFICATIONS, "Completion notifications, by channel and outcome.");
    describe_counter!(RETENTION_DELETIONS, "Export files deleted by retention.");
    describe_counter!(
        RETENTION_FAILURES,
        "Export file deletions by retention that failed (tried again later)."
    );
    describe_counter!(SCHEDULE_FIRES, "In-process schedule fires and triggers, by outcome.");
    describe_counter!(SCHEDULE_SKIPS, "Schedule fires skipped, by reason.");
}

pub fn compression_label(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "none",
        Compression::Gzip => "gzip",
    }
}

/// Adds one to `name` while alive: a gauge of things in progress in this process.
#[derive(Debug)]
pub struct InProgress(&'static str);

impl InProgress {
    pub fn enter(name: &'static str) -> Self {
        gauge!(name).increment(1.0);
        Self(name)
    }
}

impl Drop for InProgress {
    fn drop(&mut self) {
        gauge!(self.0).decrement(1.0);
    }
}

/// An `ExportRepository` that counts every status change it stores. Wrap the repository once
/// per process (the binaries' build functions do), or transitions count twice.
pub struct MeteredExports {
    inner: Arc<dyn ExportRepository>,
}

impl std::fmt::Debug for MeteredExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeteredExports").finish_non_exhaustive()
    }
}

impl MeteredExports {
    pub fn wrap(inner: Arc<dyn ExportRepository>) -> Arc<dyn ExportRepository> {
        Arc::new(Self { inner })
    }
}

fn seconds_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).to_std().unwrap_or(Duration::ZERO).as_secs_f64()
}

fn created(export: &Export) {
    let (format, compression) = (export.spec.format.as_str(), compression_label(export.spec.compression));
    counter!(EXPORTS_REQUESTED, "format" => format, "compression" => compression).increment(1);
    // A record may be born final (a schedule fire refused by the quota is stored failed).
    if export.status() != ExportStatus::Pending {
        transition(ExportStatus::Pending, export);
    }
}

/// Counts the change from `from` to `export`'s status, just stored.
fn transition(from: ExportStatus, export: &Export) {
    let to = export.status();
    if from == to {
        return;
    }
    let (format, compression) = (export.spec.format.as_str(), compression_label(export.spec.compression));
    let now = Utc::now();
    let began = export.started_at().unwrap_or(export.created_at);
    let ended = export.finished_at().unwrap_or(now);
    match to {
        ExportStatus::Pending => {}
        ExportStatus::Running => {
            counter!(EXPORTS_STARTED, "format" => format, "compression" => compression).increment(1);
            histogram!(EXPORT_QUEUE).record(seconds_between(export.created_at, began));
        }
        ExportStatus::Completed => {
            counter!(EXPORTS_COMPLETED, "format" => format, "compression" => compression).increment(1);
            if let Some(outcome) = export.outcome() {
                counter!(EXPORT_ROWS, "format" => format).increment(outcome.record_count);
                counter!(EXPORT_BYTES, "format" => format, "compression" => compression)
                    .increment(outcome.bytes);
            }
            histogram!(EXPORT_DURATION, "outcome" => "completed").record(seconds_between(began, ended));
        }
        ExportStatus::Failed => {
            let code = export.error().map_or("internal", |failure| failure.kind.as_str());
            counter!(EXPORTS_FAILED, "error_code" => code).increment(1);
            histogram!(EXPORT_DURATION, "outcome" => "failed").record(seconds_between(began, ended));
        }
        ExportStatus::Cancelled => {
            counter!(EXPORTS_CANCELLED).increment(1);
            histogram!(EXPORT_DURATION, "outcome" => "cancelled").record(seconds_between(began, ended));
        }
        ExportStatus::Expired => counter!(EXPORTS_EXPIRED).increment(1),
    }
}

#[async_trait]
impl ExportRepository for MeteredExports {
    async fn create_if_absent(&self, export: &Export) -> Result<CreateOutcome, PortError> {
        let outcome = self.inner.create_if_absent(export).await?;
        if matches!(outcome, CreateOutcome::Created) {
            created(export);
        }
        Ok(outcome)
    }

    async fn create_within_quota(
        &self,
        export: &Export,
        max_unfinished: u32,
    ) -> Result<QuotaCreateOutcome, PortError> {
        let outcome = self.inner.create_within_quota(export, max_unfinished).await?;
        if matches!(outcome, QuotaCreateOutcome::Created) {
            created(export);
        }
        Ok(outcome)
    }

    async fn admit_waiting(
        &self,
        scope: &Scope,
        max_started: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Export>, PortError> {
        self.inner.admit_waiting(scope, max_started, now).await
    }

    async fn get(&self, scope: &Scope, id: ExportId) -> Result<Option<Export>, PortError> {
        self.inner.get(scope, id).await
    }

    async fn update_if_status(
        &self,
        export: &Export,
        expected: ExportStatus,
    ) -> Result<UpdateOutcome, PortError> {
        let outcome = self.inner.update_if_status(export, expected).await?;
        if matches!(outcome, UpdateOutcome::Updated) {
            transition(expected, export);
        }
        Ok(outcome)
    }

    async fn list(&self, scope: &Scope, query: &ExportQuery) -> Result<ExportPage, PortError> {
        self.inner.list(scope, query).await
    }

    async fn list_unfinished(&self) -> Result<Vec<Export>, PortError> {
        self.inner.list_unfinished().await
    }

    async fn list_notify_due(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError> {
        self.inner.list_notify_due(before, limit).await
    }

    async fn list_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError> {
        self.inner.list_expired(now, limit).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}
