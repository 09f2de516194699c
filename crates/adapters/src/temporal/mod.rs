//! Temporal: exports as durable workflows (feature `temporal`).
//!
//! - [`UserDataExportWorkflow`] (registered as `UserDataExportWorkflow`) runs one export:
//!   `PrepareExport` (create the record if absent, validate), `ExportUserData` (one attempt of
//!   [`service::ExportRunner::run_attempt`], retried per the export's `ExecutionPolicy`), and
//!   `FinishExport` when the run ends by failure, timeout or cancellation, so the record never
//!   stays unfinished.
//! - [`ExportRetentionWorkflow`] (activity `ExpireExports`) deletes expired exports' files; the
//!   worker keeps a system schedule running it ([`ensure_retention_schedule`]).
//! - [`TemporalOrchestrator`] implements `ports::Orchestrator` for the API.
//! - [`TemporalScheduler`] implements `ports::Scheduler` on Temporal Schedules.
//! - [`register`] is the one place a worker gets its workflows and activities: one line per
//!   workflow module, each module registering its workflow and building its activities from
//!   the shared [`WorkerDeps`].
//! - [`UserBatchExportWorkflow`] (registered as `UserBatchExportWorkflow`) runs one export
//!   request for many scopes as child `UserDataExportWorkflow`s.
//! - [`TaskQueues`] names the task queue of each [`Workload`] (exports, control, batch) from one
//!   prefix; [`workload_options`] gives a worker one SDK worker per queue.
//!
//! The names and the input's JSON shape are a contract shared with the seed (Go) guide: a
//! workflow started by any client with `{"tenant_id","environment_id","user_filters","format",
//! "email_notify"}` runs here.

mod activities;
mod batch;
mod connection;
mod orchestrator;
mod queues;
mod reconcile;
mod retention;
mod schedules;
mod search;
mod tenant_slots;
#[cfg(feature = "testkit")]
pub mod testkit;
mod trace_context;
mod types;
mod workflow;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use domain::{ExecutionPolicy, QuotaBook};
use ports::{ExportRepository, ExportStorage};
use service::ExportRunner;
use temporalio_client::{Client, Connection};
use temporalio_common::telemetry::metrics::TemporalMeter;
use temporalio_sdk::{WorkerOptions, WorkflowRegistrationError};
use tokio_util::sync::CancellationToken;

pub use activities::ExportActivities;
pub use batch::{
    BATCH_WORKFLOW_TYPE, BatchProgress, BatchTargetFailure, BatchWorkflowInput, BatchWorkflowOutput,
    DEFAULT_TARGETS_PER_RUN, UserBatchExportWorkflow,
};
pub use connection::{ConnectionOverrides, TemporalConnection};
pub use orchestrator::{TemporalOrchestrator, TemporalSettings};
pub use queues::{TaskQueues, UnknownWorkload, Workload, workload_options};
pub use reconcile::{
    ExportReconcileWorkflow, RECONCILE_SCHEDULE_ID, ReconcileOutput, ensure_reconcile_schedule,
};
pub use retention::{
    ExportRetentionWorkflow, RETENTION_SCHEDULE_ID, RetentionInput, RetentionOutput,
    ensure_retention_schedule,
};
pub use schedules::{TemporalScheduler, fire_input};
pub use search::{
    FORMAT_ATTRIBUTE, ORIGIN_ATTRIBUTE, SearchAttributeRegistration, TENANT_ATTRIBUTE,
    ensure_search_attributes,
};
pub use trace_context::{WorkflowIdGenerator, WorkflowSpanProcessor, enable_trace_propagation};
pub use types::{
    EXPORT_ACTIVITY, ExportHeartbeat, ExportRef, ExportState, ExportUserDataInput, ExportUserDataOutput,
    ExportWorkflowInput, FINISH_ACTIVITY, FinishInput, FinishOutcome, FinishOutput, NOTIFY_ACTIVITY,
    PREPARE_ACTIVITY, PrepareInput, PrepareOutput, WORKFLOW_TYPE, derived_export_id, failure_type,
};
pub use workflow::UserDataExportWorkflow;

/// How long connecting may take before Temporal counts as unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// What every workflow module builds its activities from: the worker's ports and settings.
#[derive(Clone)]
pub struct WorkerDeps {
    pub runner: Arc<ExportRunner>,
    pub exports: Arc<dyn ExportRepository>,
    pub storage: Arc<dyn ExportStorage>,
    /// Runs workflows started without a policy (e.g. from the CLI).
    pub default_policy: ExecutionPolicy,
    /// Cancelled when the worker's shutdown grace period is over: running attempts are
    /// interrupted without touching their records, and run again elsewhere.
    pub shutdown: CancellationToken,
    /// Runs `ExportReconcileWorkflow`; without one, that workflow is not registered here.
    pub reconciler: Option<Arc<service::Reconciler>>,
    /// Tenant quotas: `max_running` exports of one scope at once in this worker, and
    /// `max_unfinished` for the records the worker creates (schedule fires).
    pub quotas: Arc<QuotaBook>,
    /// Where `ExportUserData` attempts run (`Default`: on the worker's runtime).
    pub export_threads: crate::export_threads::ExportThreads,
    /// Starts a scope's waiting exports when one of its exports ends (a
    /// [`TemporalOrchestrator::with_admission`]); `None`: exports are not admitted by scope.
    pub admission: Option<Arc<dyn ports::Orchestrator>>,
}

impl std::fmt::Debug for WorkerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDeps").field("default_policy", &self.default_policy).finish_non_exhaustive()
    }
}

/// Registers every workflow and activity on a worker's options. The only place they are
/// registered, so API-less workers, tests and the binary all run the same set (the control
/// queue's, see [`workload_options`]). A new workflow module adds one line here.
///
/// # Errors
/// When a workflow cannot be registered (a duplicate registration).
pub fn register(options: &mut WorkerOptions, deps: &WorkerDeps) -> Result<(), WorkflowRegistrationError> {
    register_with(options, deps, &Arc::new(ExportActivities::from_deps(deps)))
}

/// [`register`], with export activities shared with the worker's other queues.
fn register_with(
    options: &mut WorkerOptions,
    deps: &WorkerDeps,
    export_activities: &Arc<ExportActivities>,
) -> Result<(), WorkflowRegistrationError> {
    workflow::register(options, export_activities)?;
    retention::register(options, deps)?;
    reconcile::register(options, deps)?;
    batch::register(options, deps)?;
    Ok(())
}

/// A client bound to the connection's namespace, failing within a few seconds when the server
/// is unreachable or refuses the TLS handshake. `identity` names this process in Temporal's
/// history (the process ID is appended).
///
/// # Errors
/// An unreachable server, a failed TLS handshake (with what was configured), or a rejected
/// namespace name.
pub async fn connect_client(connection: &TemporalConnection, identity: &str) -> anyhow::Result<Client> {
    connect_client_metered(connection, identity, None).await
}

/// As [`connect_client`], the connection's request metrics (poll failures, latencies) recorded
/// with `meter` (the worker's SDK metrics).
///
/// # Errors
/// As [`connect_client`].
pub async fn connect_client_metered(
    connection: &TemporalConnection,
    identity: &str,
    meter: Option<TemporalMeter>,
) -> anyhow::Result<Client> {
    let options = connection.options(format!("{identity}-{}", std::process::id()), CONNECT_TIMEOUT, meter);
    let connected = tokio::time::timeout(CONNECT_TIMEOUT * 2, Connection::connect(options))
        .await
        .map_err(|_| anyhow!("no answer within {:?}", CONNECT_TIMEOUT * 2))
        .and_then(|connected| connected.map_err(anyhow::Error::from));
    let connected = match connected {
        Ok(connected) => connected,
        Err(err) => {
            // The TLS cause is deep in the chain; said first, an operator sees it at once.
            let chain = format!("{err:#}");
            let hint = if chain.contains("certificate") || chain.contains("Certificate") {
                "TLS handshake failed (check TEMPORAL_TLS_SERVER_CA_CERT_PATH, TEMPORAL_TLS_SERVER_NAME and the \
                 client certificate): "
            } else {
                ""
            };
            return Err(err.context(format!(
                "{hint}connecting to Temporal at {} (TEMPORAL_ADDRESS; {})",
                connection.address(),
                connection.summary()
            )));
        }
    };
    Client::new(connected, trace_context::client_options(connection.namespace()))
        .with_context(|| format!("Temporal namespace {:?} (TEMPORAL_NAMESPACE)", connection.namespace()))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn registration_names_are_the_contract() {
        assert_eq!(UserDataExportWorkflow::name(), WORKFLOW_TYPE);
        assert_eq!(WORKFLOW_TYPE, "UserDataExportWorkflow");
        assert_eq!(ExportActivities::export_user_data.name(), "ExportUserData");
        assert_eq!(ExportActivities::prepare.name(), PREPARE_ACTIVITY);
        assert_eq!(ExportActivities::finish.name(), FINISH_ACTIVITY);
        assert_eq!(ExportActivities::notify.name(), NOTIFY_ACTIVITY);
        assert_eq!(ExportActivities::status.name(), "ExportStatus");
        assert_eq!(EXPORT_ACTIVITY, "ExportUserData");
    }
}
