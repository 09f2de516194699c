//! One attempt of an export: users -> encoder -> storage, with progress, cancellation, the
//! export's deadline, and a record that always ends in the status that happened.
//!
//! What follows a failure is decided here, by the domain's [`ExecutionPolicy::after_failure`],
//! so every orchestrator applies the same rules: the orchestrator only waits and runs the next
//! attempt when told to ([`RunError::Retry`]).

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::encode::ExportEncoder;
use domain::{
    Checkpoint, EncoderState, ExecutionPolicy, Export, ExportFailure, ExportId, ExportOutcome, ExportStatus,
    FailureClass, FailureKind, GiveUpReason, IllegalTransition, NextStep, ObjectKey, RetentionPolicy, Scope,
    UserId,
};
use futures::{FutureExt, StreamExt};
use ports::{
    CallbackSender, ExportRepository, ExportStorage, Notifier, ObjectWriter, PortError, UpdateOutcome,
    UserRepository,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::meters::{self, InProgress};
use crate::notify::NotifyRetry;
use crate::segments::{Boundary, SegmentError, SegmentPipeline};

/// How long an attempt that stops on a failed source waits for its parts on their way.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);

/// Tuning of the streaming loop.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Minimum time between progress writes to the export record. Each write also tells the
    /// attempt whether the export was cancelled, so this bounds how long a cancel takes.
    pub progress_interval: Duration,
    /// How long completed exports keep their file.
    pub retention: RetentionPolicy,
    /// Retries of the completion notification.
    pub notify: NotifyRetry,
    /// Whether attempts checkpoint, so the next one resumes rather than starting over. Off only
    /// to measure what checkpoints cost.
    pub checkpoints: bool,
    /// Plain bytes per segment (and gzip member) of new exports; a resumed export keeps the
    /// size it began with.
    pub segment_bytes: u64,
    /// Segments compressing at once per export (one per core is what pays).
    pub compress_parallelism: usize,
}

impl Default for RunnerConfig {
    fn default() -> Self {
        Self {
            progress_interval: Duration::from_millis(500),
            retention: RetentionPolicy::default(),
            notify: NotifyRetry::default(),
            checkpoints: true,
            segment_bytes: domain::encode::DEFAULT_SEGMENT_BYTES,
            compress_parallelism: std::thread::available_parallelism().map_or(2, usize::from),
        }
    }
}

/// How an orchestrator controls one attempt.
#[derive(Debug, Clone)]
pub struct AttemptControl {
    /// 1-based run number; must exceed the attempt stored on the record. Every run counts here
    /// (it fences stale attempts); only some failures use up an attempt of the policy.
    pub attempt: u32,
    /// Cancelled by the user: the export ends `cancelled`. The record is the authority; this
    /// token only makes the attempt notice at once.
    pub cancel: CancellationToken,
    /// The process is stopping: the attempt is abandoned and the record left to be resumed.
    pub shutdown: CancellationToken,
    /// Retries and the export's deadline.
    pub policy: ExecutionPolicy,
    /// A checkpoint the orchestrator kept (Temporal: the last heartbeat's details). The attempt
    /// goes on from the furthest of this and the record's own.
    pub resume: Option<Checkpoint>,
}

/// Rows written so far and, when there is a new one, the checkpoint to resume from, reported to
/// the orchestrator (Temporal heartbeats carry both).
pub type ProgressFn = dyn Fn(u64, Option<&Checkpoint>) + Send + Sync;

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("export not found")]
    NotFound,
    /// The export was cancelled; its record says so and no object remains.
    #[error("export cancelled")]
    Cancelled,
    /// The process is shutting down; the record stays unfinished, to be resumed.
    #[error("attempt interrupted by shutdown")]
    Interrupted,
    /// Another attempt owns the export (a duplicate or stale delivery); nothing was done.
    #[error("export is owned by attempt {current}")]
    Superseded { current: u32 },
    /// The attempt failed and the policy says run another one after `after`; the record stays
    /// unfinished with the failure noted.
    #[error("{}: {} (retrying in {after:?})", failure.kind.as_str(), failure.message)]
    Retry { failure: ExportFailure, class: FailureClass, after: Duration },
    /// The export failed for good; its record says `failed`.
    #[error("{}: {}", failure.kind.as_str(), failure.message)]
    Failed { failure: ExportFailure },
    /// The export record could not be read or written.
    #[error("export record: {0}")]
    Store(#[source] PortError),
}

/// Runs export attempts and the notification step. Holds only ports, so every orchestrator
/// shares it.
pub struct ExportRunner {
    users: Arc<dyn UserRepository>,
    pub(crate) exports: Arc<dyn ExportRepository>,
    storage: Arc<dyn ExportStorage>,
    pub(crate) notifier: Arc<dyn Notifier>,
    pub(crate) callbacks: Option<Arc<dyn CallbackSender>>,
    pub(crate) config: RunnerConfig,
}

impl std::fmt::Debug for ExportRunner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportRunner").field("config", &self.config).finish_non_exhaustive()
    }
}

/// Where an attempt's stream begins: at row 0 under its own key, or after a checkpoint in the
/// upload it names.
struct Start {
    key: ObjectKey,
    after: Option<UserId>,
    encoder: EncoderState,
    segment_bytes: u64,
    /// Bytes already in the upload.
    upload_bytes: u64,
}

impl Start {
    fn fresh(key: ObjectKey, segment_bytes: u64) -> Self {
        Self { key, after: None, encoder: EncoderState::default(), segment_bytes, upload_bytes: 0 }
    }

    fn after(checkpoint: &Checkpoint) -> Self {
        Self {
            key: checkpoint.upload.key.clone(),
            after: Some(checkpoint.after),
            encoder: checkpoint.encoder,
            segment_bytes: checkpoint.segment_bytes,
            upload_bytes: checkpoint.upload.bytes,
        }
    }
}

/// Why the streaming part stopped early.
enum Stop {
    Cancelled,
    Interrupted,
    DeadlineExceeded,
    Failed(ExportFailure, FailureClass),
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
        Self { users, exports, storage, notifier, callbacks: None, config }
    }

    /// Delivers tenants' signed callbacks in the notification step.
    #[must_use]
    pub fn with_callbacks(mut self, callbacks: Arc<dyn CallbackSender>) -> Self {
        self.callbacks = Some(callbacks);
        self
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
        let mut export = match self.exports.get(scope, id).await {
            Ok(Some(export)) => export,
            Ok(None) => return Err(RunError::NotFound),
            Err(err) => {
                return Err(unrecorded_retry(&control.policy, control.attempt, store_failure(id, &err)));
            }
        };
        if export.status().is_terminal() {
            return Ok(export);
        }
        if control.cancel.is_cancelled() {
            return self.finish_cancelled(export, None).await;
        }
        // A run resumed after its predecessor's last word was lost (a crash, a store outage)
        // still honours the policy.
        if let Some(reason) = exhausted(&control.policy, &export) {
            let failure = give_up_failure(reason, export.error().cloned());
            return self.finish_failed(export, failure, None, control).await;
        }
        let previous = export.status();
        if export.start_attempt(control.attempt, Utc::now()).is_err() {
            return Err(RunError::Superseded { current: export.attempt() });
        }
        match self.exports.update_if_status(&export, previous).await {
            Ok(UpdateOutcome::Updated) => {}
            Ok(UpdateOutcome::NotFound) => return Err(RunError::NotFound),
            Ok(UpdateOutcome::Conflict(stored)) if stored.status().is_terminal() => return Ok(*stored),
            Ok(UpdateOutcome::Conflict(stored)) => {
                return Err(RunError::Superseded { current: stored.attempt() });
            }
            Err(err) => {
                return Err(unrecorded_retry(&control.policy, control.attempt, store_failure(id, &err)));
            }
        }
        info!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment,
              attempt = control.attempt, consumed = export.consumed_attempts(), "export attempt started");
        let _running = InProgress::enter(meters::EXPORTS_RUNNING);

        let deadline = Instant::now() + remaining(&control.policy, &export);
        let (mut writer, start) = match self.open_upload(&mut export, control, progress).await {
            Ok(opened) => opened,
            Err(err) => return self.handle_stop(export, None, storage_stop(id, &err), control).await,
        };
        let streamed = tokio::select! {
            biased;
            () = control.cancel.cancelled() => Err(Stop::Cancelled),
            () = control.shutdown.cancelled() => Err(Stop::Interrupted),
            () = tokio::time::sleep_until(deadline) => Err(Stop::DeadlineExceeded),
            r = self.stream_into(&mut export, writer.as_mut(), &start, progress) => r,
        };
        match streamed {
            Ok(rows) => self.finish_completed(export, writer, start.key, rows, deadline, control).await,
            Err(stop) => self.handle_stop(export, Some(writer), stop, control).await,
        }
    }

    /// Opens the upload the attempt writes: the one its furthest checkpoint describes, or a
    /// new one under the attempt's own key when there is none or its upload is gone.
    async fn open_upload(
        &self,
        export: &mut Export,
        control: &AttemptControl,
        progress: &ProgressFn,
    ) -> Result<(Box<dyn ObjectWriter>, Start), PortError> {
        let candidates = [control.resume.as_ref(), export.checkpoint()];
        let checkpoint = candidates
            .into_iter()
            .flatten()
            .filter(|c| c.is_resumable() && export.owns_upload(&c.upload.key))
            .max_by_key(|c| c.rows)
            .cloned();
        if let Some(checkpoint) = checkpoint {
            if let Some(writer) = self.storage.resume(&checkpoint.upload).await? {
                info!(export_id = %export.id, attempt = control.attempt, from_row = checkpoint.rows,
                      bytes = checkpoint.upload.bytes, "export attempt resumes from its checkpoint");
                export.resume_from(&checkpoint);
                export.record_checkpoint(checkpoint.clone(), Utc::now());
                // Reported at once, so an orchestrator that keeps checkpoints (heartbeats) never
                // replaces this one with nothing.
                progress(checkpoint.rows, Some(&checkpoint));
                self.save_resume_point(export).await;
                return Ok((writer, Start::after(&checkpoint)));
            }
            warn!(export_id = %export.id, attempt = control.attempt, from_row = checkpoint.rows,
                  "the checkpoint's upload is gone (aborted or removed); starting over from row 0");
            export.clear_checkpoint();
            self.save_resume_point(export).await;
        }
        let key = export.attempt_key(control.attempt);
        let writer = self.storage.writer(&key).await?;
        Ok((writer, Start::fresh(key, self.config.segment_bytes)))
    }

    /// Shows where the attempt starts. Best effort: the first progress write says it too.
    async fn save_resume_point(&self, export: &Export) {
        if let Err(err) = self.exports.update_if_status(export, ExportStatus::Running).await {
            warn!(export_id = %export.id, error = %err, "could not record where the attempt starts");
        }
    }

    async fn load(&self, scope: &Scope, id: ExportId) -> Result<Export, RunError> {
        match self.exports.get(scope, id).await {
            Ok(Some(export)) => Ok(export),
            Ok(None) => Err(RunError::NotFound),
            Err(err) => Err(RunError::Store(err)),
        }
    }

    /// Streams every matching user after `start` into `writer`; returns the number of rows in
    /// the file. Segments end where the data says ([`ExportEncoder::segment_full`]), never by
    /// the clock, so an attempt that resumes from a checkpoint writes the same bytes.
    ///
    /// The loop hands its thread back to the runtime regularly (`consume_budget`): a source that
    /// always has a row ready would otherwise hold a worker thread for the whole export, and
    /// cancels, deadlines, shutdown and every other request on that thread would wait.
    async fn stream_into(
        &self,
        export: &mut Export,
        writer: &mut dyn ObjectWriter,
        start: &Start,
        progress: &ProgressFn,
    ) -> Result<u64, Stop> {
        /// Rows between two looks at the clock for a progress write.
        const CLOCK_EVERY_ROWS: u64 = 16;
        let spec = export.spec.clone();
        let id = export.id;
        let mut encoder = ExportEncoder::resume(spec.format, spec.fields.clone(), start.encoder);
        let limit = spec.limit.map(|limit| limit.saturating_sub(start.encoder.rows_written));
        let mut users = self.users.stream(&export.scope, &spec.user_filters, start.after, limit);
        // Counting runs beside the stream rather than before it: it only feeds the percentage.
        let counting = (Arc::clone(&self.users), export.scope.clone(), spec.user_filters.clone(), spec.limit);
        let mut total = Box::pin(async move {
            let (users, scope, filter, limit) = counting;
            let total = users.count(&scope, &filter).await?;
            Ok(limit.map_or(total, |limit| total.min(limit)))
        })
        .fuse();
        let mut segments = SegmentPipeline::new(
            spec.compression,
            start.segment_bytes,
            self.config.checkpoints,
            self.config.compress_parallelism,
            start.upload_bytes,
        );
        let mut total_rows = None;
        let mut last_saved = Instant::now();
        while let Some(user) = next_user(&mut users, &mut total, &mut total_rows).await {
            let user = match user {
                Ok(user) => user,
                Err(err) => {
                    // Only an attempt that may be retried keeps its parts on their way; a cancel
                    // or takeover the record reveals meanwhile is the stop that counts.
                    if err.is_retryable() {
                        self.settle_checkpoint(export, &mut segments, writer, &encoder, total_rows, progress)
                            .await?;
                    }
                    return Err(Stop::Failed(source_failure(id, &err), class_of(&err)));
                }
            };
            encoder.write_user(&user).map_err(|e| encode_failure(id, &e))?;
            if encoder.segment_full(start.segment_bytes) {
                let boundary = Boundary { after: user.id, encoder: encoder.state() };
                let made = segments.push(encoder.take_output(), Some(boundary), writer).await;
                if let Some(checkpoint) = made.map_err(|e| segment_stop(id, e))? {
                    export.record_checkpoint(checkpoint, Utc::now());
                    export.record_progress(encoder.rows_written(), total_rows, Utc::now());
                    // Saved at once: the next attempt re-reads at most one segment's rows.
                    self.save_progress(export).await?;
                    progress(encoder.rows_written(), export.checkpoint());
                    last_saved = Instant::now();
                }
            }
            if encoder.rows_written().is_multiple_of(CLOCK_EVERY_ROWS)
                && last_saved.elapsed() >= self.config.progress_interval
            {
                export.record_progress(encoder.rows_written(), total_rows, Utc::now());
                self.save_progress(export).await?;
                progress(encoder.rows_written(), None);
                last_saved = Instant::now();
            }
            tokio::task::consume_budget().await;
        }
        let rows = encoder.rows_written();
        let last = encoder.finish().map_err(|e| encode_failure(id, &e))?;
        segments.push(last, None, writer).await.map_err(|e| segment_stop(id, e))?;
        segments.flush(writer).await.map_err(|e| segment_stop(id, e))?;
        progress(rows, None);
        Ok(rows)
    }

    /// Before an attempt stops on a failed source, keeps what the storage already has: the cuts
    /// on their way become the record's checkpoint (and the heartbeat's), so the retry re-reads
    /// only rows that never reached the storage. Bounded by [`SETTLE_TIMEOUT`]; a storage that
    /// fails or stalls here only leaves the older checkpoint. `Err` when saving it found the
    /// export cancelled or taken over.
    async fn settle_checkpoint(
        &self,
        export: &mut Export,
        segments: &mut SegmentPipeline,
        writer: &mut dyn ObjectWriter,
        encoder: &ExportEncoder,
        total_rows: Option<u64>,
        progress: &ProgressFn,
    ) -> Result<(), Stop> {
        match tokio::time::timeout(SETTLE_TIMEOUT, segments.settle(writer)).await {
            Ok(Ok(Some(checkpoint))) => {
                export.record_checkpoint(checkpoint, Utc::now());
                export.record_progress(encoder.rows_written(), total_rows, Utc::now());
                self.save_progress(export).await?;
                progress(encoder.rows_written(), export.checkpoint());
            }
            Ok(Ok(None)) => {}
            Ok(Err(err)) => warn!(export_id = %export.id, error = ?err, "could not settle the checkpoint"),
            Err(_) => {
                warn!(export_id = %export.id, "settling the checkpoint timed out; the retry starts from the older one")
            }
        }
        Ok(())
    }

    /// Persists progress and learns whether the export was cancelled or taken over meanwhile.
    /// A write that fails is logged and tried again at the next tick: progress is not worth an
    /// attempt.
    async fn save_progress(&self, export: &Export) -> Result<(), Stop> {
        match self.exports.update_if_status(export, ExportStatus::Running).await {
            Ok(UpdateOutcome::Updated) => Ok(()),
            Ok(UpdateOutcome::NotFound) => Err(Stop::Abandon(RunError::NotFound)),
            Ok(UpdateOutcome::Conflict(stored)) if stored.status() == ExportStatus::Cancelled => {
                Err(Stop::Cancelled)
            }
            Ok(UpdateOutcome::Conflict(stored)) => {
                Err(Stop::Abandon(RunError::Superseded { current: stored.attempt() }))
            }
            Err(err) => {
                warn!(export_id = %export.id, error = %err, "could not save progress; trying again at the next tick");
                Ok(())
            }
        }
    }

    /// Publishes the upload under this attempt's own key, then names it on the record. The
    /// record's compare-and-set is the fence: only the attempt that still owns a running export
    /// completes it, and any other attempt deletes the object it made.
    async fn finish_completed(
        &self,
        mut export: Export,
        writer: Box<dyn ObjectWriter>,
        key: ObjectKey,
        rows: u64,
        deadline: Instant,
        control: &AttemptControl,
    ) -> Result<Export, RunError> {
        // Completing a large upload takes a while: a cancel meanwhile stops it too (the
        // unfinished upload is never visible).
        let stored = tokio::select! {
            biased;
            () = control.shutdown.cancelled() => return Err(RunError::Interrupted),
            () = self.cancelled_meanwhile(&export, control) => {
                let owner = Some(export.attempt());
                return self.finish_cancelled(export, owner).await;
            }
            () = tokio::time::sleep_until(deadline) => {
                return self.handle_stop(export, None, Stop::DeadlineExceeded, control).await;
            }
            finished = writer.finish() => match finished {
                Ok(stored) => stored,
                Err(err) => {
                    let stop = storage_stop(export.id, &err);
                    return self.handle_stop(export, None, stop, control).await;
                }
            },
        };
        let outcome = ExportOutcome { record_count: rows, bytes: stored.bytes, sha256: stored.sha256 };
        let retention = self.config.retention.retention_for(&export.spec);
        if export.complete(outcome, key.clone(), retention, Utc::now()).is_err() {
            self.delete_object(&export, &key).await;
            return Err(RunError::Superseded { current: export.attempt() });
        }
        self.skip_unwanted_notifications(&mut export);
        // The object is safe: keep trying to record it through a store outage rather than
        // throwing the whole export's work away.
        let mut wait = Duration::from_millis(200);
        loop {
            match self.exports.update_if_status(&export, ExportStatus::Running).await {
                Ok(UpdateOutcome::Updated) => {
                    info!(export_id = %export.id, tenant = %export.scope.tenant, rows, key = %key, "export completed");
                    return Ok(export);
                }
                Ok(UpdateOutcome::Conflict(stored)) => {
                    // An attempt that resumed this upload shares its key: never delete its file.
                    let shared = (stored.status() == ExportStatus::Completed && stored.object_key == key)
                        || stored.checkpoint().is_some_and(|c| c.upload.key == key);
                    if !shared {
                        self.delete_object(&export, &key).await;
                    }
                    return Err(match stored.status() {
                        // Cancelled while the object was being finished: a cancelled export
                        // leaves no object.
                        ExportStatus::Cancelled => RunError::Cancelled,
                        _ => RunError::Superseded { current: stored.attempt() },
                    });
                }
                Ok(UpdateOutcome::NotFound) => {
                    self.delete_object(&export, &key).await;
                    return Err(RunError::NotFound);
                }
                Err(err) if err.is_retryable() && Instant::now() + wait < deadline => {
                    warn!(export_id = %export.id, error = %err, retry_in_ms = wait.as_millis() as u64,
                          "could not record the completed export; its file is kept and the write retried");
                    tokio::select! {
                        () = control.shutdown.cancelled() => return Err(RunError::Interrupted),
                        () = tokio::time::sleep(wait) => {}
                    }
                    wait = (wait * 2).min(Duration::from_secs(5));
                }
                Err(err) => {
                    self.delete_object(&export, &key).await;
                    let stop = Stop::Failed(store_failure(export.id, &err), class_of(&err));
                    return self.handle_stop(export, None, stop, control).await;
                }
            }
        }
    }

    /// Resolves once the export is cancelled: by the token, or on its record (read every
    /// progress interval, as the streaming loop's progress writes would have noticed).
    async fn cancelled_meanwhile(&self, export: &Export, control: &AttemptControl) {
        let every = self.config.progress_interval.max(Duration::from_millis(100));
        loop {
            tokio::select! {
                () = control.cancel.cancelled() => return,
                () = tokio::time::sleep(every) => {}
            }
            if let Ok(Some(stored)) = self.exports.get(&export.scope, export.id).await
                && stored.status() == ExportStatus::Cancelled
            {
                return;
            }
        }
    }

    /// Ends an attempt that stopped early. The upload (`upload`, when the attempt still holds
    /// it) is aborted only when no attempt will go on from it: a retry or a resume after
    /// shutdown continues it from the checkpoint, and an abandoned attempt may share it with the
    /// attempt that took over.
    async fn handle_stop(
        &self,
        mut export: Export,
        upload: Option<Box<dyn ObjectWriter>>,
        stop: Stop,
        control: &AttemptControl,
    ) -> Result<Export, RunError> {
        let owner = Some(export.attempt());
        match stop {
            Stop::Cancelled => {
                self.abort_upload(&export, upload).await;
                self.finish_cancelled(export, owner).await
            }
            Stop::Interrupted => Err(RunError::Interrupted),
            Stop::Abandon(err) => Err(err),
            Stop::DeadlineExceeded => {
                self.abort_upload(&export, upload).await;
                let failure = give_up_failure(GiveUpReason::DeadlineExceeded, None);
                self.finish_failed(export, failure, owner, control).await
            }
            Stop::Failed(failure, class) => {
                export.note_attempt_failure(failure.clone(), class.consumes_attempt(), Utc::now());
                let elapsed = elapsed(&export);
                match control.policy.after_failure(
                    class,
                    control.attempt,
                    export.consumed_attempts(),
                    elapsed,
                ) {
                    NextStep::RetryAfter(after) => {
                        warn!(export_id = %export.id, attempt = export.attempt(), class = class.as_str(),
                              consumed = export.consumed_attempts(), retry_in_ms = after.as_millis() as u64,
                              kept_rows = export.checkpoint().map_or(0, |c| c.rows),
                              error = %failure.message, "export attempt failed");
                        // Best effort: if the store is down, the failure is simply not shown.
                        if let Err(err) = self.exports.update_if_status(&export, ExportStatus::Running).await
                        {
                            warn!(export_id = %export.id, error = %err, "could not record the attempt failure");
                        }
                        Err(RunError::Retry { failure, class, after })
                    }
                    NextStep::GiveUp(reason) => {
                        self.abort_upload(&export, upload).await;
                        let failure = give_up_failure(reason, Some(failure));
                        self.finish_failed(export, failure, owner, control).await
                    }
                }
            }
        }
    }

    /// Removes an upload no attempt will go on from: the one in hand, else the one the record's
    /// checkpoint names.
    async fn abort_upload(&self, export: &Export, upload: Option<Box<dyn ObjectWriter>>) {
        let result = match (upload, export.checkpoint()) {
            (Some(writer), _) => writer.abort().await,
            (None, Some(checkpoint)) => self.storage.discard(&checkpoint.upload).await,
            (None, None) => Ok(()),
        };
        if let Err(err) = result {
            warn!(export_id = %export.id, error = %err, "could not remove the unfinished upload");
        }
    }

    /// Marks an unfinished export `failed` (a run that cannot go on).
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
        let fail = |e: &mut Export| {
            e.fail(failure.clone(), Utc::now())?;
            self.skip_unwanted_notifications(e);
            Ok(())
        };
        match self.finish_with(export, None, fail).await? {
            Some(export) => {
                warn!(export_id = %export.id, tenant = %export.scope.tenant, kind = failure.kind.as_str(),
                      error = %failure.message, "export failed");
                Err(RunError::Failed { failure })
            }
            None => self.load(scope, id).await,
        }
    }

    /// Marks an unfinished export `cancelled`. Returns `Err(Cancelled)` when this call (or an
    /// earlier one) cancelled it, and the record when it had already finished otherwise.
    pub async fn cancel_unfinished(&self, scope: &Scope, id: ExportId) -> Result<Export, RunError> {
        let export = self.load(scope, id).await?;
        if export.status() == ExportStatus::Cancelled {
            return Err(RunError::Cancelled);
        }
        if export.status().is_terminal() {
            return Ok(export);
        }
        match self.finish_with(export, None, |e| e.cancel(Utc::now())).await? {
            Some(export) => {
                info!(export_id = %export.id, tenant = %export.scope.tenant, "export cancelled");
                Err(RunError::Cancelled)
            }
            // Finished some other way while we tried.
            None => match self.load(scope, id).await? {
                export if export.status() == ExportStatus::Cancelled => Err(RunError::Cancelled),
                export => Ok(export),
            },
        }
    }

    /// Fails the export for good. A store that is down turns this into a retry: the record must
    /// say how the export ended, and the next run will find the policy exhausted and say it.
    async fn finish_failed(
        &self,
        export: Export,
        failure: ExportFailure,
        owner: Option<u32>,
        control: &AttemptControl,
    ) -> Result<Export, RunError> {
        let run = export.attempt();
        let failure_id = export.id;
        let fail = |e: &mut Export| {
            e.fail(failure.clone(), Utc::now())?;
            self.skip_unwanted_notifications(e);
            Ok(())
        };
        match self.finish_with(export, owner, fail).await {
            Ok(Some(export)) => {
                warn!(export_id = %export.id, tenant = %export.scope.tenant, kind = failure.kind.as_str(),
                      error = %failure.message, "export failed");
                Err(RunError::Failed { failure })
            }
            Ok(None) => Err(RunError::Failed { failure }),
            Err(RunError::Store(err)) => {
                Err(unrecorded_retry(&control.policy, run, store_failure(failure_id, &err)))
            }
            Err(err) => Err(err),
        }
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
        for _ in 0..5 {
            let previous = export.status();
            // The unfinished upload the record keeps for a resume; nobody resumes it after this.
            let upload = export.checkpoint().map(|c| c.upload.clone());
            if apply(&mut export).is_err() {
                return Ok(None);
            }
            match self.exports.update_if_status(&export, previous).await {
                Ok(UpdateOutcome::Updated) => {
                    if let Some(upload) = upload
                        && let Err(err) = self.storage.discard(&upload).await
                    {
                        warn!(export_id = %export.id, error = %err, "could not remove the unfinished upload");
                    }
                    return Ok(Some(export));
                }
                Ok(UpdateOutcome::NotFound) => return Err(RunError::NotFound),
                Ok(UpdateOutcome::Conflict(stored)) if owner.is_some_and(|n| stored.attempt() > n) => {
                    return Err(RunError::Superseded { current: stored.attempt() });
                }
                Ok(UpdateOutcome::Conflict(stored)) => export = *stored,
                Err(err) => return Err(RunError::Store(err)),
            }
        }
        Err(RunError::Superseded { current: export.attempt() })
    }

    /// Marks a finished export's notifications handled in the same write that finishes it when
    /// there is nothing to send (no email asked, no callback URL), so no step runs for it.
    fn skip_unwanted_notifications(&self, export: &mut Export) {
        let callback = self.callbacks.as_ref().is_some_and(|c| c.wants(&export.scope));
        if !export.spec.email_notify && !callback {
            export.notifications_done(Utc::now());
        }
    }

    async fn delete_object(&self, export: &Export, key: &ObjectKey) {
        if let Err(err) = self.storage.delete(key).await {
            warn!(export_id = %export.id, key = %key, error = %err, "could not delete the object of an attempt that lost");
        }
    }
}

/// Why a run must not start at all: the deadline passed, or the attempts are used up.
fn exhausted(policy: &ExecutionPolicy, export: &Export) -> Option<GiveUpReason> {
    if remaining(policy, export).is_zero() {
        return Some(GiveUpReason::DeadlineExceeded);
    }
    (!policy.retry.allows(export.consumed_attempts().saturating_add(1)))
        .then_some(GiveUpReason::AttemptsExhausted)
}

/// Time since the export was created.
fn elapsed(export: &Export) -> Duration {
    (Utc::now() - export.created_at).to_std().unwrap_or_default()
}

/// Time left before the export's deadline.
fn remaining(policy: &ExecutionPolicy, export: &Export) -> Duration {
    policy.deadline.saturating_sub(elapsed(export))
}

/// The failure a run gives up with: the last failure, said in the words of the reason.
fn give_up_failure(reason: GiveUpReason, last: Option<ExportFailure>) -> ExportFailure {
    match (reason, last) {
        (GiveUpReason::DeadlineExceeded, last) => {
            let why = last.map(|f| format!(" (last error: {})", f.message)).unwrap_or_default();
            ExportFailure::new(
                FailureKind::Timeout,
                format!("the export did not finish before its deadline{why}"),
            )
        }
        (_, Some(last)) => last,
        (GiveUpReason::AttemptsExhausted, None) => {
            ExportFailure::new(FailureKind::Internal, "every attempt the retry policy allows has failed")
        }
        (GiveUpReason::Request, None) => {
            ExportFailure::new(FailureKind::Validation, "the request is invalid")
        }
    }
}

/// A retry after trouble with the store itself, when the record cannot say so.
fn unrecorded_retry(policy: &ExecutionPolicy, run: u32, failure: ExportFailure) -> RunError {
    let after = policy.retry.delay_before(run.saturating_add(1));
    RunError::Retry { failure, class: FailureClass::Infrastructure, after }
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

fn segment_stop(id: ExportId, err: SegmentError) -> Stop {
    match err {
        SegmentError::Compress(err) => encode_failure(id, &err),
        SegmentError::Storage(err) => storage_stop(id, &err),
    }
}

/// Unreachable or overloaded dependencies are infrastructure; anything else a defect.
fn class_of(err: &PortError) -> FailureClass {
    if err.is_retryable() { FailureClass::Infrastructure } else { FailureClass::Defect }
}

// Infrastructure errors become a failure with the kind's public message (what tenants read on
// the record, in mails, callbacks and batch results); the cause chain is logged here, with the
// export ID that the API's request log also carries.

fn storage_stop(id: ExportId, err: &PortError) -> Stop {
    match err {
        PortError::Cancelled => Stop::Cancelled,
        e => Stop::Failed(public_failure(id, FailureKind::Storage, e), class_of(e)),
    }
}

fn encode_failure(id: ExportId, err: &std::io::Error) -> Stop {
    Stop::Failed(public_failure(id, FailureKind::Internal, err), FailureClass::Defect)
}

fn source_failure(id: ExportId, err: &PortError) -> ExportFailure {
    public_failure(id, FailureKind::Source, err)
}

fn store_failure(id: ExportId, err: &PortError) -> ExportFailure {
    public_failure(id, FailureKind::Internal, err)
}

fn public_failure(
    id: ExportId,
    kind: FailureKind,
    cause: &(dyn std::error::Error + 'static),
) -> ExportFailure {
    let mut chain = cause.to_string();
    let mut source = cause.source();
    while let Some(next) = source {
        chain.push_str(": ");
        chain.push_str(&next.to_string());
        source = next.source();
    }
    warn!(export_id = %id, code = kind.as_str(), error = %chain, "export attempt failed; cause");
    ExportFailure::public(kind)
}
