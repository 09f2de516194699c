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
//!
//! The names and the input's JSON shape are a contract shared with the seed (Go) guide: a
//! workflow started by any client with `{"tenant_id","environment_id","user_filters","format",
//! "email_notify"}` runs here.

mod activities;
mod batch;
mod orchestrator;
mod reconcile;
mod retention;
mod schedules;
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
use temporalio_client::{Client, Connection, ConnectionOptions, Url};
use temporalio_sdk::{WorkerOptions, WorkflowRegistrationError};
use tokio_util::sync::CancellationToken;

pub use activities::ExportActivities;
pub use batch::{
    BATCH_WORKFLOW_TYPE, BatchProgress, BatchTargetFailure, BatchWorkflowInput, BatchWorkflowOutput,
    DEFAULT_TARGETS_PER_RUN, UserBatchExportWorkflow,
};
pub use orchestrator::{TemporalOrchestrator, TemporalSettings};
pub use reconcile::{
    ExportReconcileWorkflow, RECONCILE_SCHEDULE_ID, ReconcileOutput, ensure_reconcile_schedule,
};
pub use retention::{
    ExportRetentionWorkflow, RETENTION_SCHEDULE_ID, RetentionInput, RetentionOutput,
    ensure_retention_schedule,
};
pub use schedules::{TemporalScheduler, fire_input};
pub use trace_context::{WorkflowIdGenerator, WorkflowSpanProcessor, enable_trace_propagation};
pub use types::{
    EXPORT_ACTIVITY, ExportHeartbeat, ExportRef, ExportUserDataInput, ExportUserDataOutput,
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
}

impl std::fmt::Debug for WorkerDeps {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WorkerDeps").field("default_policy", &self.default_policy).finish_non_exhaustive()
    }
}

/// Registers every workflow and activity on a worker's options. The only place they are
/// registered, so API-less workers, tests and the binary all run the same set. A new workflow
/// module adds one line here.
///
/// # Errors
/// When a workflow cannot be registered (a duplicate registration).
pub fn register(options: &mut WorkerOptions, deps: &WorkerDeps) -> Result<(), WorkflowRegistrationError> {
    workflow::register(options, deps)?;
    retention::register(options, deps)?;
    reconcile::register(options, deps)?;
    batch::register(options, deps)?;
    Ok(())
}

/// The server URL of a Temporal address as the `temporal` CLI and envconfig accept it:
/// `host:port` means `http://host:port`; a URL is taken as it is.
///
/// # Errors
/// When the result is not a URL.
pub fn server_url(address: &str) -> anyhow::Result<Url> {
    let address = address.trim();
    let full = if address.contains("://") { address.to_owned() } else { format!("http://{address}") };
    Url::parse(&full).with_context(|| format!("invalid Temporal address {address:?}"))
}

/// A client bound to `namespace`, failing within a few seconds when the server is unreachable.
/// `identity` names this process in Temporal's history (the process ID is appended).
///
/// # Errors
/// An invalid address, an unreachable server, or a rejected namespace name.
pub async fn connect_client(address: &str, namespace: &str, identity: &str) -> anyhow::Result<Client> {
    let options = ConnectionOptions::new(server_url(address)?)
        .identity(format!("{identity}-{}", std::process::id()))
        .connect_timeout(CONNECT_TIMEOUT)
        .build();
    let connection = tokio::time::timeout(CONNECT_TIMEOUT * 2, Connection::connect(options))
        .await
        .map_err(|_| anyhow!("no answer within {:?}", CONNECT_TIMEOUT * 2))
        .and_then(|connected| connected.map_err(anyhow::Error::from))
        .with_context(|| format!("connecting to Temporal at {address} (TEMPORAL_ADDRESS)"))?;
    Client::new(connection, trace_context::client_options(namespace))
        .with_context(|| format!("Temporal namespace {namespace:?} (TEMPORAL_NAMESPACE)"))
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
        assert_eq!(EXPORT_ACTIVITY, "ExportUserData");
    }

    #[test]
    fn bare_addresses_are_plain_http() {
        assert_eq!(server_url("127.0.0.1:7233").unwrap().as_str(), "http://127.0.0.1:7233/");
        assert_eq!(server_url("https://t.example:7233").unwrap().as_str(), "https://t.example:7233/");
        assert!(server_url("http://exa mple:1").is_err());
    }
}
