use std::time::Duration;

use async_trait::async_trait;
use domain::{Batch, Export, ExportId, ExportOrigin, Scope};

use crate::PortError;

/// Result of [`Orchestrator::wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WaitOutcome {
    /// The export reached a terminal status; read the record for which.
    Finished,
    /// Still pending or running when the bound expired.
    StillRunning,
}

/// Result of [`Orchestrator::cancel`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// Cancellation was requested; the export ends `cancelled` and leaves no object.
    Requested,
    /// The orchestrator knows no unfinished run of that export.
    NotRunning,
}

/// Whether an export has a live run, as [`Orchestrator::inspect`] sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunState {
    /// A run is queued, running or waiting to retry.
    Live,
    /// No run exists (never started, or its process is gone).
    Missing,
    /// No run yet: the export waits for its scope's turn, and the orchestrator starts it when
    /// the scope has room ([`Orchestrator::admit_waiting`]).
    Queued,
    /// The run ended without settling the record; how it ended.
    Closed(RunClosure),
}

/// How a run that left its record unfinished ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunClosure {
    Completed,
    Failed,
    Cancelled,
    /// Stopped from outside (e.g. `temporal workflow terminate`).
    Terminated,
    /// Its execution timeout (the export's deadline) passed.
    TimedOut,
}

/// Runs exports durably: retries, timeouts and cancellation per the domain's `ExecutionPolicy`.
#[async_trait]
pub trait Orchestrator: Send + Sync {
    /// Starts running a `pending` export asynchronously. Idempotent: starting an export that is
    /// already started returns `Ok` and does not run it a second time. An orchestrator that
    /// admits a scope's exports a few at a time may instead leave it waiting for its turn
    /// ([`RunState::Queued`]): it then runs, in order, as the scope's earlier exports finish.
    ///
    /// # Errors
    /// `Unavailable` when the orchestrator cannot accept work (unreachable, shutting down).
    async fn start(&self, export: &Export) -> Result<(), PortError>;

    /// [`Orchestrator::start`] for an export requested through `origin`. Orchestrators that record
    /// where runs come from (Temporal, as a search attribute) override it; `start` is the same
    /// with [`ExportOrigin::Api`].
    ///
    /// # Errors
    /// As [`Orchestrator::start`].
    async fn start_from(&self, export: &Export, origin: ExportOrigin) -> Result<(), PortError> {
        let _ = origin;
        self.start(export).await
    }

    /// Starts running `batch` asynchronously: the export [`ExportId::for_batch`] of every target
    /// is created `pending` if absent and run, at most `batch.concurrency` at a time, each
    /// waited for before more start; a failing target does not stop the others. Idempotent:
    /// starting a batch that is already started returns `Ok` and runs nothing twice (targets
    /// whose export exists are not created again, and finished ones are not run again).
    ///
    /// # Errors
    /// `Unavailable` when the orchestrator cannot accept work (unreachable, shutting down).
    async fn start_batch(&self, batch: &Batch) -> Result<(), PortError>;

    /// Waits at most `timeout` for the export to reach a terminal status.
    async fn wait(&self, scope: &Scope, id: ExportId, timeout: Duration) -> Result<WaitOutcome, PortError>;

    /// Asks a running or queued export to stop (the caller has already marked its record
    /// cancelled; this only makes the run notice sooner).
    async fn cancel(&self, export: &Export) -> Result<CancelOutcome, PortError>;

    /// Whether `export` has a live run; what the reconciler checks before it starts or settles
    /// an unfinished record.
    async fn inspect(&self, export: &Export) -> Result<RunState, PortError>;

    /// Starts runs for `scope`'s exports that wait for their turn, as many as the scope has room
    /// for, and returns how many it started. Orchestrators that start every export at once
    /// (in-process: its own queue orders them) have none waiting.
    ///
    /// # Errors
    /// `Unavailable` when the records or the orchestrator cannot be reached.
    async fn admit_waiting(&self, scope: &Scope) -> Result<usize, PortError> {
        let _ = scope;
        Ok(0)
    }

    /// Checks that the orchestrator can accept work (for readiness).
    async fn ping(&self) -> Result<(), PortError>;
}
