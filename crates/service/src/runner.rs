//! One attempt of an export: users -> encoder -> storage, with progress, cancellation, a
//! deadline, and a record that always ends in the status that happened.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use domain::encode::ExportEncoder;
use domain::{
    Export, ExportFailure, ExportId, ExportOutcome, ExportStatus, FailureKind, IllegalTransition,
    RetentionPolicy, Scope,
};
use futures::{FutureExt, StreamExt};
use ports::{
    ExportRepository, ExportStorage, Notifier, ObjectWriter, PortError, UpdateOutcome, UserRepository,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::notify::{NotifyRetry, notify_finished};

/// Tuning of the streaming loop.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Encoded bytes buffered before they are handed to storage.
    pub chunk_bytes: usize,
    /// Minimum time between progress writes to the export record.
    pub progress_interval: Duration,
    /// How long completed exports keep their file.
    pub retention: RetentionPolicy,
    /// Retries of the completion notification.
    pub notify: NotifyRetry,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            chunk_bytes: 256 * 1024,
            progress_interval: Duration::from_millis(500),
            retention: RetentionPolicy::default(),
            notify: NotifyRetry::default(),
        }
    }
}

/// How an orchestrator controls one attempt.
#[derive(Debug, Clone)]
pub struct AttemptControl {
    /// 1-based attempt number; must exceed the attempt stored on the record.
    pub attempt: u32,
    /// Cancelled by the user: the export ends `cancelled`.
    pub cancel: CancellationToken,
    /// The process is stopping: the attempt is abandoned and the record left for recovery.
    pub shutdown: CancellationToken,
    /// Bound on this attempt (start-to-close).
    pub timeout: Duration,
}

/// Rows written so far, reported to the orchestrator (Temporal heartbeats carry it).
pub type ProgressFn = dyn Fn(u64) + Send + Sync;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("export not found")]
    NotFound,
    /// The export was cancelled; its record says so and no object remains.
    #[error("export cancelled")]
    Cancelled,
    /// The process is shutting down; the record stays unfinished for recovery.
    #[error("attempt interrupted by shutdown")]
    Interrupted,
    /// Another attempt owns the export (a duplicate or stale delivery); nothing was done.
    #[error("export is owned by attempt {current}")]
    Superseded { current: u32 },
    /// The attempt failed. When `retryable`, the record stays `running` with the failure noted;
    /// otherwise the record is already `failed`.
    #[error("{}: {}", failure.kind.as_str(), failure.message)]
    Failed { failure: ExportFailure, retryable: bool },
}

impl RunError {
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Failed { retryable: true, .. })
    }
}

/// Runs export attempts. Holds only ports, so every orchestrator shares it.
pub struct ExportRunner {
    users: Arc<dyn UserRepository>,
    exports: Arc<dyn ExportRepository>,
    storage: Arc<dyn ExportStorage>,
    notifier: Arc<dyn Notifier>,
    config: RunnerConfig,
}

impl std::fmt::Debug for ExportRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportRunner").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Why the streaming part stopped early.
enum Stop {
    Cancelled,
    Interrupted,
    TimedOut,
    Failed(ExportFailure, bool),
    /// The record moved on without us (taken over, deleted): give up without touching it.
    Abandon(RunError),
}

impl ExportRunner {
    pub fn new(
        users: Arc<dyn UserRepository>,
        exports: Arc<dyn ExportRepository>,
        storage: Arc<dyn ExportStorage>,
        notifier: Arc<dyn Notifier>,
        config: RunnerConfig,
    ) -> Self {
        Self { users, exports, storage, notifier, config }
    }

    /// Runs attempt `control.attempt` of export `id`. Returns the finished record, or the record
    /// as it already was when the export had finished before (duplicate deliveries are no-ops).
    pub async fn run_attempt(
        &self,
        scope: &Scope,
        id: ExportId,
        control: &AttemptControl,
        progress: &ProgressFn,
    ) -> Result<Export, RunError> {
        let mut export = self.load(scope, id).await?;
        if export.status().is_terminal() {
            return Ok(export);
        }
        if control.cancel.is_cancelled() {
            return self.finish_cancelled(export, None).await;
        }
        let previous = export.status();
        if export.start_attempt(control.attempt, Utc::now()).is_err() {
            return Err(RunError::Superseded { current: export.attempt() });
        }
        match self.exports.update_if_status(&export, previous).await.map_err(store_failure)? {
            UpdateOutcome::Updated => {}
            UpdateOutcome::NotFound => return Err(RunError::NotFound),
            UpdateOutcome::Conflict(stored) if stored.status().is_terminal() => return Ok(*stored),
            UpdateOutcome::Conflict(stored) => {
                return Err(RunError::Superseded { current: stored.attempt() });
            }
        }
        info!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment,
              attempt = control.attempt, "export attempt started");

        let deadline = Instant::now() + control.timeout;
        let mut writer = match self.storage.writer(&export.object_key).await {
            Ok(writer) => writer,
            Err(err) => return self.handle_stop(export, storage_stop(&err)).await,
        };
        let streamed = tokio::select! {
            biased;
            _ = control.cancel.cancelled() => Err(Stop::Cancelled),
            _ = control.shutdown.cancelled() => Err(Stop::Interrupted),
            _ = tokio::time::sleep_until(deadline) => Err(Stop::TimedOut),
            r = self.stream_into(&mut export, writer.as_mut(), progress) => r,
        };
        match streamed {
            Ok(rows) => self.finish_completed(export, writer, rows, deadline).await,
            Err(stop) => {
                if let Err(err) = writer.abort().await {
                    warn!(export_id = %id, error = %err, "aborting the upload failed");
                }
                self.handle_stop(export, stop).await
            }
        }
    }

    async fn load(&self, scope: &Scope, id: ExportId) -> Result<Export, RunError> {
        self.exports.get(scope, id).await.map_err(store_failure)?.ok_or(RunError::NotFound)
    }

    /// Streams every matching user into `writer`; returns the number of rows.
    async fn stream_into(
        &self,
        export: &mut Export,
        writer: &mut dyn ObjectWriter,
        progress: &ProgressFn,
    ) -> Result<u64, Stop> {
        let spec = &export.spec;
        let mut encoder = ExportEncoder::new(spec.format, spec.compression, spec.fields.clone());
        let mut users = self.users.stream(&export.scope, &spec.user_filters, spec.limit);
        // Counting runs beside the stream rather than before it: it only feeds the percentage.
        let counting = (Arc::clone(&self.users), export.scope.clone(), spec.user_filters.clone(), spec.limit);
        let mut total = Box::pin(async move {
            let (users, scope, filter, limit) = counting;
            let total = users.count(&scope, &filter).await?;
            Ok(limit.map_or(total, |limit| total.min(limit)))
        })
        .fuse();
        let mut total_rows = None;
        let mut last_saved = Instant::now();
        while let Some(user) = next_user(&mut users, &mut total, &mut total_rows).await {
            let user = user.map_err(|e| Stop::Failed(source_failure(&e), e.is_retryable()))?;
            encoder.write_user(&user).map_err(encode_failure)?;
            if encoder.buffered_len() >= self.config.chunk_bytes {
                write_chunk(writer, encoder.take_output()).await?;
                progress(encoder.rows_written());
                if last_saved.elapsed() >= self.config.progress_interval {
                    export.record_progress(encoder.rows_written(), total_rows, Utc::now());
                    self.save_progress(export).await.map_err(Stop::from)?;
                    last_saved = Instant::now();
                }
            }
        }
        let rows = encoder.rows_written();
        write_chunk(writer, encoder.finish().map_err(encode_failure)?).await?;
        progress(rows);
        Ok(rows)
    }

    /// Persists progress; a record that left `running` meanwhile (cancelled through the API)
    /// stops the attempt.
    async fn save_progress(&self, export: &mut Export) -> Result<(), RunError> {
        match self.exports.update_if_status(export, ExportStatus::Running).await.map_err(store_failure)? {
            UpdateOutcome::Updated => Ok(()),
            UpdateOutcome::NotFound => Err(RunError::NotFound),
            UpdateOutcome::Conflict(stored) if stored.status() == ExportStatus::Cancelled => {
                Err(RunError::Cancelled)
            }
            UpdateOutcome::Conflict(stored) => Err(RunError::Superseded { current: stored.attempt() }),
        }
    }

    async fn finish_completed(
        &self,
        mut export: Export,
        writer: Box<dyn ObjectWriter>,
        rows: u64,
        deadline: Instant,
    ) -> Result<Export, RunError> {
        // Every attempt writes the same key: make sure this one still owns the export before its
        // object replaces whatever is there (a stale attempt must not overwrite the winner's).
        export.record_progress(rows, None, Utc::now());
        if let Err(err) = self.save_progress(&mut export).await {
            if let Err(abort) = writer.abort().await {
                warn!(export_id = %export.id, error = %abort, "aborting the upload failed");
            }
            return self.handle_stop(export, Stop::from(err)).await;
        }
        // Completing a multipart upload is part of the attempt: the deadline bounds it too.
        let stored = match tokio::time::timeout_at(deadline, writer.finish()).await {
            Ok(Ok(stored)) => stored,
            Ok(Err(err)) => return self.handle_stop(export, storage_stop(&err)).await,
            Err(_) => return self.handle_stop(export, Stop::TimedOut).await,
        };
        let outcome = ExportOutcome { record_count: rows, bytes: stored.bytes, sha256: stored.sha256 };
        let retention = self.config.retention.retention_for(&export.spec);
        if export.complete(outcome, retention, Utc::now()).is_err() {
            return Err(RunError::Superseded { current: export.attempt() });
        }
        match self.exports.update_if_status(&export, ExportStatus::Running).await.map_err(store_failure)? {
            UpdateOutcome::Updated => {
                info!(export_id = %export.id, tenant = %export.scope.tenant, rows, "export completed");
                self.notify(&export).await;
                Ok(export)
            }
            UpdateOutcome::Conflict(stored) if stored.status() == ExportStatus::Completed => Ok(*stored),
            // Cancelled while the object was being finished: a cancelled export leaves no object.
            UpdateOutcome::Conflict(stored) if stored.status() == ExportStatus::Cancelled => {
                self.delete_object(&export).await;
                Err(RunError::Cancelled)
            }
            // Taken over by a newer attempt: the object is (or will be) the newer attempt's.
            UpdateOutcome::Conflict(stored) => Err(RunError::Superseded { current: stored.attempt() }),
            UpdateOutcome::NotFound => {
                self.delete_object(&export).await;
                Err(RunError::NotFound)
            }
        }
    }

    async fn handle_stop(&self, mut export: Export, stop: Stop) -> Result<Export, RunError> {
        match stop {
            Stop::Cancelled => {
                let owner = export.attempt();
                self.finish_cancelled(export, Some(owner)).await
            }
            Stop::Interrupted => Err(RunError::Interrupted),
            Stop::Abandon(err) => Err(err),
            Stop::TimedOut => {
                let failure = ExportFailure::new(
                    FailureKind::Timeout,
                    "the attempt exceeded its start-to-close timeout",
                );
                self.note_retryable(&mut export, failure).await
            }
            Stop::Failed(failure, true) => self.note_retryable(&mut export, failure).await,
            Stop::Failed(failure, false) => {
                let owner = export.attempt();
                self.finish_failed(export, failure, Some(owner)).await
            }
        }
    }

    async fn note_retryable(&self, export: &mut Export, failure: ExportFailure) -> Result<Export, RunError> {
        warn!(export_id = %export.id, attempt = export.attempt(), error = %failure.message, "export attempt failed");
        export.note_attempt_failure(failure.clone(), Utc::now());
        // Best effort: the orchestrator's retry or give_up sets the final state either way.
        if let Err(err) = self.exports.update_if_status(export, ExportStatus::Running).await {
            warn!(export_id = %export.id, error = %err, "could not record the attempt failure");
        }
        Err(RunError::Failed { failure, retryable: true })
    }

    /// Marks an unfinished export `failed` (no attempts left, or a non-retryable failure).
    pub async fn give_up(
        &self,
        scope: &Scope,
        id: ExportId,
        failure: ExportFailure,
    ) -> Result<Export, RunError> {
        let export = self.load(scope, id).await?;
        if export.status().is_terminal() {
            return Ok(export);
        }
        self.finish_failed(export, failure, None).await
    }

    /// Marks an unfinished export `cancelled` (cancelled before or between attempts).
    pub async fn cancel_unfinished(&self, scope: &Scope, id: ExportId) -> Result<Export, RunError> {
        let export = self.load(scope, id).await?;
        if export.status().is_terminal() {
            return Ok(export);
        }
        self.finish_cancelled(export, None).await
    }

    async fn finish_failed(
        &self,
        export: Export,
        failure: ExportFailure,
        owner: Option<u32>,
    ) -> Result<Export, RunError> {
        let failed = self.finish_with(export, owner, |e| e.fail(failure.clone(), Utc::now())).await?;
        if let Some(export) = failed {
            warn!(export_id = %export.id, tenant = %export.scope.tenant, kind = failure.kind.as_str(),
                  error = %failure.message, "export failed");
            self.notify(&export).await;
        }
        Err(RunError::Failed { failure, retryable: false })
    }

    async fn finish_cancelled(&self, export: Export, owner: Option<u32>) -> Result<Export, RunError> {
        if let Some(export) = self.finish_with(export, owner, |e| e.cancel(Utc::now())).await? {
            info!(export_id = %export.id, tenant = %export.scope.tenant, "export cancelled");
        }
        Err(RunError::Cancelled)
    }

    /// Applies a terminal transition and stores it. On a concurrent change (a progress write or
    /// a new attempt racing a cancel) it re-applies the transition to the fresh record, so the
    /// record never stays unfinished; but an attempt (`owner`) only ever finishes its own run,
    /// never one a newer attempt has taken over. Returns the record when this call finished it,
    /// `None` when it had already finished.
    async fn finish_with(
        &self,
        mut export: Export,
        owner: Option<u32>,
        apply: impl Fn(&mut Export) -> Result<(), IllegalTransition>,
    ) -> Result<Option<Export>, RunError> {
        for _ in 0..3 {
            let previous = export.status();
            if apply(&mut export).is_err() {
                return Ok(None);
            }
            match self.exports.update_if_status(&export, previous).await.map_err(store_failure)? {
                UpdateOutcome::Updated => return Ok(Some(export)),
                UpdateOutcome::NotFound => return Err(RunError::NotFound),
                UpdateOutcome::Conflict(stored) if owner.is_some_and(|n| stored.attempt() > n) => {
                    return Err(RunError::Superseded { current: stored.attempt() });
                }
                UpdateOutcome::Conflict(stored) => export = *stored,
            }
        }
        Err(RunError::Superseded { current: export.attempt() })
    }

    async fn delete_object(&self, export: &Export) {
        if let Err(err) = self.storage.delete(&export.object_key).await {
            warn!(export_id = %export.id, error = %err, "could not delete the object of a cancelled export");
        }
    }

    async fn notify(&self, export: &Export) {
        notify_finished(&self.notifier, &self.exports, self.config.notify, export).await;
    }
}

/// The next user, polling the count alongside so its result is kept once it arrives.
async fn next_user(
    users: &mut ports::UserStream,
    total: &mut (impl futures::future::FusedFuture<Output = Result<u64, PortError>> + Unpin),
    total_rows: &mut Option<u64>,
) -> Option<Result<domain::User, PortError>> {
    loop {
        // Unbiased: a stream that always has a user ready must not starve the count.
        tokio::select! {
            user = users.next() => return user,
            counted = &mut *total, if !total.is_terminated() => match counted {
                Ok(n) => *total_rows = Some(n),
                Err(err) => warn!(error = %err, "could not count users; progress shows rows only"),
            },
        }
    }
}

async fn write_chunk(writer: &mut dyn ObjectWriter, chunk: Vec<u8>) -> Result<(), Stop> {
    if chunk.is_empty() {
        return Ok(());
    }
    writer.write(Bytes::from(chunk)).await.map_err(|e| storage_stop(&e))
}

impl From<RunError> for Stop {
    /// A failed record write is a failure like any other; a cancelled record stops the attempt;
    /// anything else means the record moved on without this attempt.
    fn from(err: RunError) -> Self {
        match err {
            RunError::Failed { failure, retryable } => Stop::Failed(failure, retryable),
            RunError::Cancelled => Stop::Cancelled,
            other => Stop::Abandon(other),
        }
    }
}

fn storage_stop(err: &PortError) -> Stop {
    match err {
        PortError::Cancelled => Stop::Cancelled,
        e => Stop::Failed(ExportFailure::new(FailureKind::Storage, format!("{e:#}")), e.is_retryable()),
    }
}

fn encode_failure(err: std::io::Error) -> Stop {
    Stop::Failed(ExportFailure::new(FailureKind::Internal, format!("encoding failed: {err}")), false)
}

fn source_failure(err: &PortError) -> ExportFailure {
    ExportFailure::new(FailureKind::Source, format!("reading users failed: {err:#}"))
}

fn store_failure(err: PortError) -> RunError {
    let retryable = err.is_retryable();
    RunError::Failed {
        failure: ExportFailure::new(FailureKind::Internal, format!("export record: {err:#}")),
        retryable,
    }
}
