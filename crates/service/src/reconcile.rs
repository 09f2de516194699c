//! The reconciler: every record settles. It finds unfinished exports with no live run and starts
//! them (a `pending` record whose start failed, a `running` one whose process died), admits the
//! waiting exports of scopes that have room (when the step that should have did not), settles
//! those whose run closed without a word (terminated, timed out), and runs the notification step
//! of finished exports that missed it. Both orchestrators run it on an interval (in-process: a
//! task; Temporal: `ExportReconcileWorkflow` on a system schedule).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{TimeDelta, Utc};
use domain::{Export, ExportFailure, FailureKind};
use ports::{ExportRepository, Orchestrator, PortError, RunClosure, RunState};
use tracing::{info, warn};

use crate::runner::{ExportRunner, RunError};

/// Finished exports whose notifications are handled per pass, at most.
const NOTIFY_BATCH: usize = 100;

/// What one pass did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReconcileReport {
    /// Unfinished exports with a live run: left alone.
    pub live: usize,
    /// Pending exports waiting for their scope's turn ([`RunState::Queued`]).
    pub queued: usize,
    /// Unfinished exports with no run, started (or resumed) again, and waiting ones admitted.
    pub started: usize,
    /// Unfinished exports whose run closed without settling them, now settled.
    pub settled: usize,
    /// Finished exports whose notification step ran here.
    pub notified: usize,
    /// Exports this pass could not handle (tried again on the next).
    pub errors: usize,
}

#[derive(Debug, Clone, Copy)]
pub struct ReconcileSettings {
    /// Records changed more recently than this are left alone: a start or a notification step
    /// may still be under way.
    pub start_grace: Duration,
    /// The same for finished exports whose notification step is due.
    pub notify_grace: Duration,
}

/// Settles what orchestration left unfinished. Holds only ports.
pub struct Reconciler {
    exports: Arc<dyn ExportRepository>,
    orchestrator: Arc<dyn Orchestrator>,
    runner: Arc<ExportRunner>,
    settings: ReconcileSettings,
}

impl std::fmt::Debug for Reconciler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reconciler").field("settings", &self.settings).finish_non_exhaustive()
    }
}

impl Reconciler {
    pub fn new(
        exports: Arc<dyn ExportRepository>,
        orchestrator: Arc<dyn Orchestrator>,
        runner: Arc<ExportRunner>,
        settings: ReconcileSettings,
    ) -> Self {
        Self { exports, orchestrator, runner, settings }
    }

    /// One pass over every unfinished export and the finished ones whose notification is due.
    ///
    /// # Errors
    /// The records could not be listed; a single export's trouble only counts in `errors`.
    pub async fn reconcile_once(&self) -> Result<ReconcileReport, PortError> {
        let mut report = ReconcileReport::default();
        let now = Utc::now();
        let settled_before = now - delta(self.settings.start_grace);
        let mut queued = BTreeSet::new();
        for export in self.exports.list_unfinished().await? {
            if export.updated_at() > settled_before {
                continue;
            }
            match self.reconcile(&export, &mut report).await {
                Ok(RunState::Queued) => {
                    report.queued += 1;
                    queued.insert(export.scope);
                }
                Ok(_) => {}
                Err(err) => {
                    report.errors += 1;
                    warn!(export_id = %export.id, tenant = %export.scope.tenant, error = %err, "could not reconcile the export");
                }
            }
        }
        // The step that admits a scope's next exports when one ends may have been lost (a
        // worker killed in between): scopes with room take their waiting exports now.
        for scope in queued {
            match self.orchestrator.admit_waiting(&scope).await {
                Ok(admitted) => report.started += admitted,
                Err(err) => {
                    report.errors += 1;
                    warn!(tenant = %scope.tenant, environment = %scope.environment, error = %err,
                          "could not admit the scope's waiting exports");
                }
            }
        }
        let notify_before = now - delta(self.settings.notify_grace);
        for export in self.exports.list_notify_due(notify_before, NOTIFY_BATCH).await? {
            match self.runner.notify(&export.scope, export.id).await {
                Ok(_) => report.notified += 1,
                Err(err) => {
                    report.errors += 1;
                    warn!(export_id = %export.id, error = %err, "could not run the notification step");
                }
            }
        }
        if report != ReconcileReport::default() {
            info!(
                live = report.live,
                queued = report.queued,
                started = report.started,
                settled = report.settled,
                notified = report.notified,
                errors = report.errors,
                "reconciled exports"
            );
        }
        Ok(report)
    }

    /// Handles one unfinished export; returns what the orchestrator said of its run.
    async fn reconcile(
        &self,
        export: &Export,
        report: &mut ReconcileReport,
    ) -> Result<RunState, anyhow::Error> {
        let state = self.orchestrator.inspect(export).await?;
        let closure = match state {
            RunState::Live => {
                report.live += 1;
                return Ok(state);
            }
            // Admitted by scope, after the pass.
            RunState::Queued => return Ok(state),
            RunState::Missing => {
                info!(export_id = %export.id, status = %export.status(), "starting an export that has no run");
                self.orchestrator.start(export).await?;
                report.started += 1;
                return Ok(state);
            }
            RunState::Closed(closure) => closure,
        };
        let (scope, id) = (&export.scope, export.id);
        let outcome = match closure {
            // A failed run may run again: the record's attempts and deadline decide.
            RunClosure::Failed => {
                info!(export_id = %id, "resuming an export whose run failed without settling it");
                self.orchestrator.start(export).await?;
                report.started += 1;
                return Ok(state);
            }
            RunClosure::Cancelled => self.runner.cancel_unfinished(scope, id).await,
            RunClosure::Terminated => {
                let failure = ExportFailure::new(FailureKind::Internal, "the export's run was terminated");
                self.runner.give_up(scope, id, failure).await
            }
            RunClosure::TimedOut => {
                let failure =
                    ExportFailure::new(FailureKind::Timeout, "the export did not finish before its deadline");
                self.runner.give_up(scope, id, failure).await
            }
            RunClosure::Completed => {
                let failure = ExportFailure::new(
                    FailureKind::Internal,
                    "the export's run ended without recording its outcome",
                );
                self.runner.give_up(scope, id, failure).await
            }
        };
        match outcome {
            Ok(_) | Err(RunError::Cancelled | RunError::Failed { .. }) => {
                info!(export_id = %id, closure = ?closure, "settled an export whose run closed");
                report.settled += 1;
                Ok(state)
            }
            Err(err) => Err(err.into()),
        }
    }
}

fn delta(d: Duration) -> TimeDelta {
    TimeDelta::from_std(d).unwrap_or(TimeDelta::MAX)
}
