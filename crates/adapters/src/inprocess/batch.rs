//! Batches on the in-process orchestrator: one driver task per batch creates each target's
//! export (ID derived from batch and scope) and runs it, at most `batch.concurrency` at a time,
//! waiting for each before starting more; a failing target does not stop the others.
//!
//! A driver lives only in this process. After a restart, [`InProcessOrchestrator::recover`]
//! resumes the targets' exports that were already created; targets the batch had not reached
//! yet start when the batch is started again (repeating `POST /v1/exports/batch` with the same
//! `Idempotency-Key` does that), and nothing runs twice, since every target's export ID is
//! derived.

use std::collections::HashSet;
use std::sync::atomic::Ordering;
use std::sync::{MutexGuard, PoisonError};

use chrono::Utc;
use domain::{Batch, BatchId, Export, ExportId, ExportSpec, ExportStatus, Scope};
use futures::StreamExt;
use ports::{CreateOutcome, Orchestrator, PortError};
use tracing::{Instrument, info, info_span, warn};

use super::InProcessOrchestrator;

impl InProcessOrchestrator {
    /// Spawns the batch's driver unless this process already runs it.
    pub(super) fn spawn_batch(&self, batch: &Batch) -> Result<(), PortError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(PortError::unavailable(anyhow::anyhow!("the orchestrator is shutting down")));
        }
        if !self.lock_batches().insert(batch.id) {
            return Ok(());
        }
        let span = info_span!("batch", batch_id = %batch.id, targets = batch.targets.len());
        let (this, batch) = (self.clone(), batch.clone());
        self.inner.tasks.spawn(
            async move {
                this.drive_batch(&batch).await;
                this.lock_batches().remove(&batch.id);
            }
            .instrument(span),
        );
        Ok(())
    }

    fn lock_batches(&self) -> MutexGuard<'_, HashSet<BatchId>> {
        self.inner.batches.lock().unwrap_or_else(PoisonError::into_inner)
    }

    async fn drive_batch(&self, batch: &Batch) {
        info!(concurrency = batch.concurrency, "batch started");
        let limit = usize::try_from(batch.concurrency).unwrap_or(1).max(1);
        // Owned futures: a spawned task's future must not borrow from its own locals.
        let targets: Vec<(Scope, ExportId)> =
            batch.exports().map(|(scope, id)| (scope.clone(), id)).collect();
        let outcomes: Vec<Option<ExportStatus>> = futures::stream::iter(targets)
            .map(|(scope, id)| {
                let (this, spec) = (self.clone(), batch.spec.clone());
                async move { this.run_target(spec, scope, id).await }
            })
            .buffer_unordered(limit)
            .collect()
            .await;
        let count = |status| outcomes.iter().filter(|o| **o == Some(status)).count();
        info!(
            total = outcomes.len(),
            completed = count(ExportStatus::Completed),
            failed = count(ExportStatus::Failed),
            cancelled = count(ExportStatus::Cancelled),
            "batch finished"
        );
    }

    /// Creates (if absent) and runs one target's export and waits for it; returns its final
    /// status, or `None` when it was left unfinished (shutdown, or its record could not be
    /// created).
    async fn run_target(&self, spec: ExportSpec, scope: Scope, id: ExportId) -> Option<ExportStatus> {
        let export = self.create_target(Export::new(id, scope.clone(), spec, None, Utc::now())).await?;
        if !export.status().is_terminal() {
            // Fails only while shutting down: the target is left for the next start.
            self.start(&export).await.ok()?;
            let done = self.lock_runs().get(&(scope.clone(), id)).map(|run| run.done.clone());
            if let Some(mut done) = done {
                tokio::select! {
                    _ = done.wait_for(|finished| *finished) => {}
                    _ = self.inner.interrupt.cancelled() => return None,
                }
            }
        }
        match self.inner.exports.get(&scope, id).await {
            Ok(record) => record.map(|e| e.status()),
            Err(err) => {
                warn!(export_id = %id, error = %err, "could not read a batch target's export");
                None
            }
        }
    }

    /// Stores the target's export `pending` unless it exists, retrying while the store is
    /// unavailable (per the execution policy's backoff, until shutdown).
    async fn create_target(&self, export: Export) -> Option<Export> {
        let mut attempt = 1;
        loop {
            match self.inner.exports.create_if_absent(&export).await {
                Ok(CreateOutcome::Created) => return Some(export),
                Ok(CreateOutcome::Existing(existing)) => return Some(*existing),
                Err(err) if err.is_retryable() && !self.inner.closing.load(Ordering::SeqCst) => {
                    attempt += 1;
                    let delay = self.inner.policy.retry.delay_before(attempt);
                    warn!(export_id = %export.id, tenant = %export.scope.tenant, error = %err,
                          retry_in_ms = delay.as_millis() as u64, "could not create a batch target's export");
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = self.inner.interrupt.cancelled() => return None,
                    }
                }
                Err(err) => {
                    warn!(export_id = %export.id, tenant = %export.scope.tenant, error = %err,
                          "could not create a batch target's export; the target is skipped");
                    return None;
                }
            }
        }
    }
}
