//! The embedded orchestrator: runs exports on tokio tasks in this process. What follows a failed
//! attempt is the runner's decision (the domain's `ExecutionPolicy`, as under Temporal); this
//! only waits and runs the next attempt, and runs the notification step once the export slot
//! is released.
//!
//! Durability comes from the export repository: every accepted export is recorded `pending`
//! before it is started, [`InProcessOrchestrator::recover`] resumes at start-up whatever a dead
//! process left `pending` or `running`, and the reconciler (`service::Reconciler`, run on an
//! interval by the API) starts any unfinished record this process has no run for. Batches: see
//! [`batch`]. Slots are shared fairly between tenant scopes: see [`fair`].

mod batch;
mod fair;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Batch, BatchId, ExecutionPolicy, Export, ExportId, QuotaBook, Scope};
use ports::{CancelOutcome, ExportRepository, Orchestrator, PortError, RunState, WaitOutcome};
use service::meters::{self, InProgress};
use service::{AttemptControl, ExportRunner, RunError};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, info, info_span, warn};

use crate::export_threads::ExportThreads;

type RunKey = (Scope, ExportId);

/// A run this process owns: its cancel switch and a flag that flips once it is over.
struct Run {
    cancel: CancellationToken,
    done: watch::Receiver<bool>,
}

struct Inner {
    runner: Arc<ExportRunner>,
    exports: Arc<dyn ExportRepository>,
    policy: ExecutionPolicy,
    slots: Arc<fair::FairSlots>,
    runs: Mutex<HashMap<RunKey, Run>>,
    /// Batches whose driver runs in this process.
    batches: Mutex<HashSet<BatchId>>,
    tasks: TaskTracker,
    closing: AtomicBool,
    /// Cancelled when shutdown's grace period is over: attempts stop without touching records.
    interrupt: CancellationToken,
    /// Where attempts run (see [`ExportThreads`]).
    threads: ExportThreads,
}

/// Runs exports on tokio tasks with bounded concurrency, shared fairly between tenant scopes.
#[derive(Clone)]
pub struct InProcessOrchestrator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessOrchestrator").field("policy", &self.inner.policy).finish_non_exhaustive()
    }
}

impl InProcessOrchestrator {
    /// `max_concurrency` exports at once, at most the default `max_running` (2) of one scope.
    pub fn new(
        runner: Arc<ExportRunner>,
        exports: Arc<dyn ExportRepository>,
        policy: ExecutionPolicy,
        max_concurrency: usize,
    ) -> Self {
        Self::with_quotas(runner, exports, policy, max_concurrency, Arc::default())
    }

    /// `max_concurrency` exports at once, at most `max_running` of one scope (from `quotas`),
    /// the slots going round-robin between the scopes with exports waiting.
    pub fn with_quotas(
        runner: Arc<ExportRunner>,
        exports: Arc<dyn ExportRepository>,
        policy: ExecutionPolicy,
        max_concurrency: usize,
        quotas: Arc<QuotaBook>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                runner,
                exports,
                policy,
                slots: fair::FairSlots::new(max_concurrency, quotas),
                runs: Mutex::default(),
                batches: Mutex::default(),
                tasks: TaskTracker::new(),
                closing: AtomicBool::new(false),
                interrupt: CancellationToken::new(),
                threads: ExportThreads::inline(),
            }),
        }
    }

    /// Runs attempts on `threads` (by default, on the caller's runtime). Before any export starts.
    #[must_use]
    pub fn with_export_threads(mut self, threads: ExportThreads) -> Self {
        match Arc::get_mut(&mut self.inner) {
            Some(inner) => inner.threads = threads,
            None => warn!("export threads set on an orchestrator already shared; attempts stay inline"),
        }
        self
    }

    /// Resumes every export a previous process left unfinished, and the notification step of
    /// finished ones it left unnotified. Returns how many exports it resumed.
    pub async fn recover(&self) -> Result<usize, PortError> {
        let unfinished = self.inner.exports.list_unfinished().await?;
        for export in &unfinished {
            info!(export_id = %export.id, tenant = %export.scope.tenant, status = %export.status(),
                  "resuming unfinished export");
            self.start(export).await?;
        }
        let unnotified = self.inner.exports.list_notify_due(chrono::Utc::now(), 1000).await?;
        for export in unnotified {
            self.spawn_notify(export.scope, export.id);
        }
        Ok(unfinished.len())
    }

    /// Runs the notification step of a finished export on a task of its own (never in an export
    /// slot); a failure is left to the reconciler.
    fn spawn_notify(&self, scope: Scope, id: ExportId) {
        let runner = Arc::clone(&self.inner.runner);
        let span = info_span!("notify", export_id = %id, tenant = %scope.tenant);
        self.inner.tasks.spawn(
            async move {
                if let Err(err) = runner.notify(&scope, id).await {
                    warn!(error = %err, "notification step failed; the reconciler runs it again");
                }
            }
            .instrument(span),
        );
    }

    /// Stops accepting exports and lets running ones finish within `grace`. Whatever is still
    /// running then is interrupted and left `pending`/`running` for the next start's recovery.
    pub async fn shutdown(&self, grace: Duration) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.tasks.close();
        if tokio::time::timeout(grace, self.inner.tasks.wait()).await.is_err() {
            warn!(running = self.inner.tasks.len(), "shutdown grace expired; interrupting running exports");
            self.inner.interrupt.cancel();
            let _ = tokio::time::timeout(Duration::from_secs(10), self.inner.tasks.wait()).await;
        }
    }

    fn lock_runs(&self) -> std::sync::MutexGuard<'_, HashMap<RunKey, Run>> {
        self.inner.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Orchestrator for InProcessOrchestrator {
    async fn start(&self, export: &Export) -> Result<(), PortError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(PortError::unavailable(anyhow::anyhow!("the orchestrator is shutting down")));
        }
        if export.status().is_terminal() {
            return Ok(());
        }
        let key = (export.scope.clone(), export.id);
        let mut runs = self.lock_runs();
        if runs.contains_key(&key) {
            return Ok(());
        }
        let cancel = CancellationToken::new();
        let (done_tx, done) = watch::channel(false);
        runs.insert(key.clone(), Run { cancel: cancel.clone(), done });
        drop(runs);

        let span = info_span!("export", export_id = %export.id, tenant = %export.scope.tenant,
                              environment = %export.scope.environment,
                              workflow_id = %export.id.workflow_id(&export.scope));
        let this = self.clone();
        let first_attempt = export.attempt() + 1;
        self.inner.tasks.spawn(
            async move {
                this.drive(&key, first_attempt, &cancel).await;
                this.lock_runs().remove(&key);
                let _ = done_tx.send(true);
                // The slot is free again: an SMTP or receiver outage never holds one.
                if !this.inner.interrupt.is_cancelled() {
                    let (scope, id) = key;
                    this.spawn_notify(scope, id);
                }
            }
            .instrument(span),
        );
        Ok(())
    }

    async fn start_batch(&self, batch: &Batch) -> Result<(), PortError> {
        self.spawn_batch(batch)
    }

    async fn wait(&self, scope: &Scope, id: ExportId, timeout: Duration) -> Result<WaitOutcome, PortError> {
        // Take the flag before reading the record, so a run ending in between is still seen.
        let done = self.lock_runs().get(&(scope.clone(), id)).map(|run| run.done.clone());
        match self.inner.exports.get(scope, id).await? {
            None => return Ok(WaitOutcome::Finished),
            Some(export) if export.status().is_terminal() => return Ok(WaitOutcome::Finished),
            Some(_) => {}
        }
        let Some(mut done) = done else { return Ok(WaitOutcome::StillRunning) };
        match tokio::time::timeout(timeout, done.wait_for(|finished| *finished)).await {
            Ok(_) => Ok(WaitOutcome::Finished),
            Err(_) => Ok(WaitOutcome::StillRunning),
        }
    }

    async fn cancel(&self, export: &Export) -> Result<CancelOutcome, PortError> {
        match self.lock_runs().get(&(export.scope.clone(), export.id)) {
            Some(run) => {
                run.cancel.cancel();
                Ok(CancelOutcome::Requested)
            }
            None => Ok(CancelOutcome::NotRunning),
        }
    }

    async fn inspect(&self, export: &Export) -> Result<RunState, PortError> {
        // Runs live only in this process: a record it does not run has none.
        let live = self.lock_runs().contains_key(&(export.scope.clone(), export.id));
        Ok(if live { RunState::Live } else { RunState::Missing })
    }

    async fn ping(&self) -> Result<(), PortError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(PortError::unavailable(anyhow::anyhow!("the orchestrator is shutting down")));
        }
        Ok(())
    }
}

impl InProcessOrchestrator {
    /// Runs attempts until one settles the export, waiting between them as the runner says.
    async fn drive(&self, (scope, id): &RunKey, first_attempt: u32, cancel: &CancellationToken) {
        let inner = &self.inner;
        let queued = InProgress::enter(meters::EXPORTS_QUEUED);
        let _slot = tokio::select! {
            slot = inner.slots.acquire(scope) => slot,
            () = cancel.cancelled() => return self.cancel_record(scope, *id).await,
            () = inner.interrupt.cancelled() => return,
        };
        drop(queued);
        let mut attempt = first_attempt;
        loop {
            let control = AttemptControl {
                attempt,
                cancel: cancel.clone(),
                shutdown: inner.interrupt.clone(),
                policy: inner.policy,
                // The record keeps the checkpoint in this mode; the runner reads it there.
                resume: None,
            };
            let (runner, run_scope, run_id) = (Arc::clone(&inner.runner), scope.clone(), *id);
            let run = async move { runner.run_attempt(&run_scope, run_id, &control, &|_, _| {}).await };
            let after = match inner.threads.run(scope, run).await {
                Err(RunError::Retry { after, class, .. }) => {
                    info!(
                        attempt,
                        class = class.as_str(),
                        retry_in_ms = after.as_millis() as u64,
                        "retrying export"
                    );
                    after
                }
                Ok(_) | Err(_) => return,
            };
            tokio::select! {
                () = tokio::time::sleep(after) => {}
                () = cancel.cancelled() => return self.cancel_record(scope, *id).await,
                () = inner.interrupt.cancelled() => return,
            }
            attempt += 1;
        }
    }

    async fn cancel_record(&self, scope: &Scope, id: ExportId) {
        match self.inner.runner.cancel_unfinished(scope, id).await {
            Ok(_) | Err(RunError::Cancelled) => {}
            Err(err) => warn!(error = %err, "could not mark the export cancelled"),
        }
    }
}
