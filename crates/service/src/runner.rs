//! One attempt of an export: users -> encoder -> storage, with progress, cancellation, the
//! export's deadline, and a record that always ends in the status that happened.
//!
//! What follows a failure is decided here, by the domain's [`ExecutionPolicy::after_failure`],
//! so every orchestrator applies the same rules: the orchestrator only waits and runs the next
//! attempt when told to ([`RunError::Retry`]).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use domain::encode::ExportEncoder;
use domain::{
    ExecutionPolicy, Export, ExportFailure, ExportId, ExportOutcome, ExportStatus, FailureClass, FailureKind,
    GiveUpReason, IllegalTransition, NextStep, ObjectKey, RetentionPolicy, Scope,
};
use futures::{FutureExt, StreamExt};
use ports::{
    CallbackSender, ExportRepository, ExportStorage, Notifier, ObjectWriter, PortError, UpdateOutcome,
    UserRepository,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::notify::NotifyRetry;

/// Tuning of the streaming loop.
#[derive(Debug, Clone, Copy)]
pub struct RunnerConfig {
    /// Encoded bytes buffered before they are handed to storage.
    pub chunk_bytes: usize,
    /// Minimum time between progress writes to the export record. Each write also tells the
    /// attempt whether the export was cancelled, so this bounds how long a cancel takes.
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
            Err(err) => return Err(unrecorded_retry(&control.policy, control.attempt, store_failure(&err))),
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
            Err(err) => return Err(unrecorded_retry(&control.policy, control.attempt, store_failure(&err))),
        }
        info!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment,
              attempt = control.attempt, consumed = export.consumed_attempts(), "export attempt started");

        let deadline = Instant::now() + remaining(&control.policy, &export);
        let key = export.attempt_key(control.attempt);
        let mut writer = match self.storage.writer(&key).await {
            Ok(writer) => writer,
            Err(err) => return self.handle_stop(export, storage_stop(&err), control).await,
        };
        let streamed = tokio::select! {
            biased;
            () = control.cancel.cancelled() => Err(Stop::Cancelled),
            () = control.shutdown.cancelled() => Err(Stop::Interrupted),
            () = tokio::time::sleep_until(deadline) => Err(Stop::DeadlineExceeded),
            r = self.stream_into(&mut export, writer.as_mut(), progress) => r,
        };
        match streamed {
            Ok(rows) => self.finish_completed(export, writer, key, rows, deadline, control).await,
            Err(stop) => {
                if let Err(err) = writer.abort().await {
                    warn!(export_id = %id, error = %err, "aborting the upload failed");
                }
                self.handle_stop(export, stop, control).await
            }
        }
    }

    async fn load(&self, scope: &Scope, id: ExportId) -> Result<Export, RunError> {
        match self.exports.get(scope, id).await {
            Ok(Some(export)) => Ok(export),
            Ok(None) => Err(RunError::NotFound),
            Err(err) => Err(RunError::Store(err)),
        }
    }

    /// Streams every matching user into `writer`; returns the number of rows.
    ///
    /// The loop hands its thread back to the runtime regularly (`consume_budget`): a source that
    /// always has a row ready would otherwise hold a worker thread for the whole export, and
    /// cancels, deadlines, shutdown and every other request on that thread would wait.
    async fn stream_into(
        &self,
        export: &mut Export,
        writer: &mut dyn ObjectWriter,
        progress: &ProgressFn,
    ) -> Result<u64, Stop> {
        /// Rows between two looks at the clock for a progress write.
        const CLOCK_EVERY_ROWS: u64 = 16;
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
            let user = user.map_err(|e| Stop::Failed(source_failure(&e), class_of(&e)))?;
            encoder.write_user(&user).map_err(encode_failure)?;
            if encoder.buffered_len() >= self.config.chunk_bytes {
                write_chunk(writer, encoder.take_output()).await?;
                progress(encoder.rows_written());
            }
            if encoder.rows_written().is_multiple_of(CLOCK_EVERY_ROWS)
                && last_saved.elapsed() >= self.config.progress_interval
            {
                export.record_progress(encoder.rows_written(), total_rows, Utc::now());
                self.save_progress(export).await?;
                progress(encoder.rows_written());
                last_saved = Instant::now();
            }
            tokio::task::consume_budget().await;
        }
        let rows = encoder.rows_written();
        write_chunk(writer, encoder.finish().map_err(encode_failure)?).await?;
        progress(rows);
        Ok(rows)
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
                return self.handle_stop(export, Stop::DeadlineExceeded, control).await;
            }
            finished = writer.finish() => match finished {
                Ok(stored) => stored,
                Err(err) => return self.handle_stop(export, storage_stop(&err), control).await,
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
                    self.delete_object(&export, &key).await;
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
                    let stop = Stop::Failed(store_failure(&err), class_of(&err));
                    return self.handle_stop(export, stop, control).await;
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

    async fn handle_stop(
        &self,
        mut export: Export,
        stop: Stop,
        control: &AttemptControl,
    ) -> Result<Export, RunError> {
        let owner = Some(export.attempt());
        match stop {
            Stop::Cancelled => self.finish_cancelled(export, owner).await,
            Stop::Interrupted => Err(RunError::Interrupted),
            Stop::Abandon(err) => Err(err),
            Stop::DeadlineExceeded => {
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
                              error = %failure.message, "export attempt failed");
                        // Best effort: if the store is down, the failure is simply not shown.
                        if let Err(err) = self.exports.update_if_status(&export, ExportStatus::Running).await
                        {
                            warn!(export_id = %export.id, error = %err, "could not record the attempt failure");
                        }
                        Err(RunError::Retry { failure, class, after })
                    }
                    NextStep::GiveUp(reason) => {
                        let failure = give_up_failure(reason, Some(failure));
                        self.finish_failed(export, failure, owner, control).await
                    }
                }
            }
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
            Err(RunError::Store(err)) => Err(unrecorded_retry(&control.policy, run, store_failure(&err))),
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
            if apply(&mut export).is_err() {
                return Ok(None);
            }
            match self.exports.update_if_status(&export, previous).await {
                Ok(UpdateOutcome::Updated) => return Ok(Some(export)),
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

async fn write_chunk(writer: &mut dyn ObjectWriter, chunk: Vec<u8>) -> Result<(), Stop> {
    if chunk.is_empty() {
        return Ok(());
    }
    writer.write(Bytes::from(chunk)).await.map_err(|e| storage_stop(&e))
}

/// Unreachable or overloaded dependencies are infrastructure; anything else a defect.
fn class_of(err: &PortError) -> FailureClass {
    if err.is_retryable() { FailureClass::Infrastructure } else { FailureClass::Defect }
}

fn storage_stop(err: &PortError) -> Stop {
    match err {
        PortError::Cancelled => Stop::Cancelled,
        e => Stop::Failed(ExportFailure::new(FailureKind::Storage, format!("{e:#}")), class_of(e)),
    }
}

fn encode_failure(err: std::io::Error) -> Stop {
    let failure = ExportFailure::new(FailureKind::Internal, format!("encoding failed: {err}"));
    Stop::Failed(failure, FailureClass::Defect)
}

fn source_failure(err: &PortError) -> ExportFailure {
    ExportFailure::new(FailureKind::Source, format!("reading users failed: {err:#}"))
}

fn store_failure(err: &PortError) -> ExportFailure {
    ExportFailure::new(FailureKind::Internal, format!("export record: {err:#}"))
}
