//! [`TemporalOrchestrator`]: the `Orchestrator` port on a Temporal cluster. Exports run as
//! `UserDataExportWorkflow`s on `userexport-worker` processes; this side only starts, waits for
//! and cancels them.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, anyhow};
use async_trait::async_trait;
use chrono::Utc;
use domain::{Batch, ExecutionPolicy, Export, ExportId, ExportOrigin, QuotaBook, Scope, fairness_key};
use ports::{CancelOutcome, ExportRepository, Orchestrator, PortError, RunClosure, RunState, WaitOutcome};
use temporalio_client::errors::{WorkflowGetResultError, WorkflowInteractionError, WorkflowStartError};
use temporalio_client::tonic::{Code, IntoRequest, Status};
use temporalio_client::{
    Client, Priority, RetryOptions, RpcOptions, WorkflowCancelOptions, WorkflowDescribeOptions,
    WorkflowExecutionStatus, WorkflowGetResultOptions, WorkflowIdConflictPolicy, WorkflowIdReusePolicy,
    WorkflowStartOptions,
};
use temporalio_common::protos::temporal::api::workflowservice::v1::GetSystemInfoRequest;
use temporalio_common::search_attributes::SearchAttributes;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::batch::{BatchWorkflowInput, UserBatchExportWorkflow};
use super::connect_client;
use super::queues::{TaskQueues, Workload};
use super::search::{
    FORMAT_ATTRIBUTE, ORIGIN_ATTRIBUTE, export_memo, export_search_attributes, request_format,
};
use super::types::ExportWorkflowInput;
use super::workflow::UserDataExportWorkflow;

/// Bound on one RPC (start, cancel, ping), retries included. Past it, Temporal counts as
/// unavailable.
pub(super) const RPC_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the Temporal cluster is and how exports run on it.
#[derive(Debug, Clone)]
pub struct TemporalSettings {
    /// Address, namespace and credentials (Temporal's environment configuration).
    pub connection: super::TemporalConnection,
    /// The task queue prefix (`USEREXPORT_TASK_QUEUE`): export workflows start on it, batch
    /// parents on its `-batch` queue (see [`super::TaskQueues`]).
    pub task_queue: String,
    /// Sent with every workflow, so exports run with the API's policy whatever the worker's.
    pub policy: ExecutionPolicy,
}

/// Starts exports as workflows with the deterministic ID [`ExportId::workflow_id`], so a
/// duplicate start finds the first run instead of running the export twice. Cheap to clone.
///
/// With admission ([`TemporalOrchestrator::with_admission`]), a scope has at most its
/// `max_running` export workflows at once, cluster-wide: its other exports wait as
/// `pending` records ([`RunState::Queued`]) and start, oldest first, as its running ones end
/// (the worker's activities call [`Orchestrator::admit_waiting`]; the reconciler too). A burst
/// of requests is then rows in the database, not workflows the Temporal server takes in, in
/// order, ahead of every other tenant's.
#[derive(Clone)]
pub struct TemporalOrchestrator {
    client: Client,
    task_queue: String,
    policy: ExecutionPolicy,
    admission: Option<Admission>,
}

/// Where admission counts and marks a scope's started exports.
#[derive(Clone)]
struct Admission {
    exports: Arc<dyn ExportRepository>,
    quotas: Arc<QuotaBook>,
}

/// How often a synchronous wait reads the record of an export that waits for its turn.
const ADMISSION_POLL: Duration = Duration::from_millis(100);

impl std::fmt::Debug for TemporalOrchestrator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalOrchestrator")
            .field("namespace", &self.client.options().namespace)
            .field("task_queue", &self.task_queue)
            .field("admission", &self.admission.is_some())
            .finish_non_exhaustive()
    }
}

impl TemporalOrchestrator {
    /// Connects to the cluster (failing within a few seconds when it is unreachable).
    ///
    /// # Errors
    /// An invalid address, or a cluster that cannot be reached.
    pub async fn connect(settings: TemporalSettings) -> anyhow::Result<Self> {
        settings.policy.validate().context("invalid execution policy")?;
        let client = connect_client(&settings.connection, "userexport-api").await?;
        let connection = &settings.connection;
        info!(address = %connection.address(), namespace = %connection.namespace(), task_queue = %settings.task_queue,
              settings = %connection.summary(), "connected to Temporal");
        Ok(Self::new(client, settings.task_queue, settings.policy))
    }

    /// On an existing client (shared with a worker, or a test's).
    pub fn new(client: Client, task_queue: impl Into<String>, policy: ExecutionPolicy) -> Self {
        Self { client, task_queue: task_queue.into(), policy, admission: None }
    }

    /// Admits each scope's exports a few at a time (its `max_running` in `quotas`), counted on
    /// the records in `exports`.
    #[must_use]
    pub fn with_admission(mut self, exports: Arc<dyn ExportRepository>, quotas: Arc<QuotaBook>) -> Self {
        self.admission = Some(Admission { exports, quotas });
        self
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn task_queue(&self) -> &str {
        &self.task_queue
    }
}

#[async_trait]
impl Orchestrator for TemporalOrchestrator {
    async fn start(&self, export: &Export) -> Result<(), PortError> {
        self.start_from(export, ExportOrigin::Api).await
    }

    async fn start_from(&self, export: &Export, origin: ExportOrigin) -> Result<(), PortError> {
        if export.status().is_terminal() {
            return Ok(());
        }
        match &self.admission {
            Some(admission) if export.awaits_admission() => {
                self.admit(admission, &export.scope, Some((export.id, origin))).await.map(|_| ())
            }
            _ => self.start_workflow(export, origin).await,
        }
    }

    async fn admit_waiting(&self, scope: &Scope) -> Result<usize, PortError> {
        match &self.admission {
            Some(admission) => self.admit(admission, scope, None).await,
            None => Ok(0),
        }
    }

    async fn start_batch(&self, batch: &Batch) -> Result<(), PortError> {
        let mut input = BatchWorkflowInput::for_batch(batch, Some(self.policy));
        let workflow_id = batch.id.workflow_id();
        // The batch itself: its origin and format (its targets are many scopes; each child
        // carries its own).
        let format = request_format(&input.request).map(str::to_owned);
        let memo = export_memo(&input.request);
        // Batch parents have a queue of their own; their children run on `task_queue`.
        let task_queue = TaskQueues::new(self.task_queue.as_str()).name(Workload::Batch);
        let options = |attributes: bool| {
            let attributes = attributes.then(|| {
                SearchAttributes::new([
                    ORIGIN_ATTRIBUTE.value_set(ExportOrigin::Api.as_str().to_owned()),
                    FORMAT_ATTRIBUTE.value_set(format.clone().unwrap_or_default()),
                ])
            });
            WorkflowStartOptions::new(task_queue.clone(), workflow_id.clone())
                // As for exports: a duplicate start finds the running batch, a completed batch is
                // never run again, a failed or terminated one may be (its exports' records decide).
                .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicateFailedOnly)
                .maybe_search_attributes(attributes)
                .memo(memo.clone())
                .rpc_options(rpc_options())
                .build()
        };
        let start = |input: &BatchWorkflowInput, options| {
            let input = serde_json::to_value(input)
                .map_err(|e| PortError::Other(anyhow!(e).context("encoding the batch workflow input")));
            async move {
                bounded(
                    "starting the batch workflow",
                    self.client.start_workflow(UserBatchExportWorkflow::run, input?, options),
                )
                .await
            }
        };
        // The children get the attributes only when the namespace has them: an unknown attribute
        // on a child would fail the batch's workflow tasks, not just one start.
        input.search_attributes = true;
        let mut started = start(&input, options(true)).await?;
        if matches!(&started, Err(WorkflowStartError::Rpc(status)) if lacks_search_attributes(status)) {
            warn_unregistered();
            input.search_attributes = false;
            started = start(&input, options(false)).await?;
        }
        match started {
            Ok(handle) => {
                info!(batch_id = %batch.id, workflow_id, run_id = handle.run_id(), targets = batch.targets.len(),
                      "batch workflow started");
                Ok(())
            }
            Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(WorkflowStartError::Rpc(status)) => Err(status_error(status, "starting the batch workflow")),
            Err(err) => Err(PortError::Other(anyhow!(err).context("starting the batch workflow"))),
        }
    }

    async fn wait(&self, scope: &Scope, id: ExportId, timeout: Duration) -> Result<WaitOutcome, PortError> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(outcome) = self.wait_workflow(scope, id, deadline).await? {
                return Ok(outcome);
            }
            // No workflow (yet): with admission, the export may wait for its scope's turn.
            let Some(admission) = &self.admission else { return Ok(WaitOutcome::StillRunning) };
            match admission.exports.get(scope, id).await? {
                Some(export) if export.status().is_terminal() => return Ok(WaitOutcome::Finished),
                Some(_) if Instant::now() < deadline => {
                    tokio::time::sleep(ADMISSION_POLL.min(deadline - Instant::now())).await;
                }
                // Never started here: nothing will finish it (the in-process orchestrator
                // answers the same for an export it does not run).
                _ => return Ok(WaitOutcome::StillRunning),
            }
        }
    }

    async fn cancel(&self, export: &Export) -> Result<CancelOutcome, PortError> {
        // The record's workflow ID: a scheduled run's is its own.
        let handle = self.client.get_workflow_handle::<UserDataExportWorkflow>(export.workflow_id());
        if self.describe(export).await? != RunState::Live {
            return Ok(CancelOutcome::NotRunning);
        }
        let options = WorkflowCancelOptions::builder()
            .reason("cancelled through the API")
            .rpc_options(rpc_options())
            .build();
        match bounded("cancelling the workflow", handle.cancel(options)).await? {
            Ok(()) => Ok(CancelOutcome::Requested),
            // No such workflow, or its run already closed.
            Err(WorkflowInteractionError::NotFound(_)) => Ok(CancelOutcome::NotRunning),
            Err(WorkflowInteractionError::Rpc(status))
                if status.code() == Code::FailedPrecondition || status.code() == Code::AlreadyExists =>
            {
                Ok(CancelOutcome::NotRunning)
            }
            Err(WorkflowInteractionError::Rpc(status)) => {
                Err(status_error(status, "cancelling the workflow"))
            }
            Err(err) => Err(PortError::Other(anyhow!(err).context("cancelling the workflow"))),
        }
    }

    async fn inspect(&self, export: &Export) -> Result<RunState, PortError> {
        self.describe(export).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        let mut service = self.client.connection().workflow_service();
        let mut request = GetSystemInfoRequest::default().into_request();
        request.set_timeout(RPC_TIMEOUT);
        match bounded("pinging Temporal", service.get_system_info(request)).await? {
            Ok(_) => Ok(()),
            Err(status) => Err(status_error(status, "pinging Temporal")),
        }
    }
}

impl TemporalOrchestrator {
    /// Admits `scope`'s oldest waiting exports while it has room and starts their workflows.
    /// `requested` is the export (and its origin) a request just stored: only its own start's
    /// failure is the caller's error; the others' are logged (the reconciler starts them).
    async fn admit(
        &self,
        admission: &Admission,
        scope: &Scope,
        requested: Option<(ExportId, ExportOrigin)>,
    ) -> Result<usize, PortError> {
        // As many workflows as the scope may run exports: each admitted one runs at once (a
        // second queued behind it at the worker only adds `TenantBusy` churn on the server).
        let limit = admission.quotas.for_scope(scope).max_running;
        let admitted = admission.exports.admit_waiting(scope, limit, Utc::now()).await?;
        let mut failed = None;
        for export in &admitted {
            // A waiting export's origin is not on its record: it starts as an API request's.
            let origin = match requested {
                Some((id, origin)) if id == export.id => origin,
                _ => ExportOrigin::Api,
            };
            if let Err(err) = self.start_workflow(export, origin).await {
                warn!(export_id = %export.id, tenant = %scope.tenant, environment = %scope.environment, error = %err,
                      "an admitted export's workflow did not start; the reconciler starts it");
                if requested.is_none_or(|(id, _)| id == export.id) {
                    failed.get_or_insert(err);
                }
            }
        }
        if !admitted.is_empty() {
            debug!(tenant = %scope.tenant, environment = %scope.environment, admitted = admitted.len(), limit,
                   "admitted waiting exports");
        }
        failed.map_or(Ok(admitted.len()), Err)
    }

    /// Starts `export`'s workflow (or finds the one already started).
    async fn start_workflow(&self, export: &Export, origin: ExportOrigin) -> Result<(), PortError> {
        let input = ExportWorkflowInput::for_export(export, Some(self.policy));
        let attributes =
            export_search_attributes(&export.scope.to_string(), request_format(&input.request), origin);
        let memo = export_memo(&input.request);
        let input = serde_json::to_value(input)
            .map_err(|e| PortError::Other(anyhow!(e).context("encoding the workflow input")))?;
        let workflow_id = export.workflow_id();
        let options = |attributes: Option<SearchAttributes>| {
            WorkflowStartOptions::new(self.task_queue.clone(), workflow_id.clone())
                // A running export: the duplicate start returns the running workflow.
                .id_conflict_policy(WorkflowIdConflictPolicy::UseExisting)
                // A completed export is never run again; one whose run failed, was cancelled or
                // terminated may be started again (its record decides whether anything runs).
                .id_reuse_policy(WorkflowIdReusePolicy::AllowDuplicateFailedOnly)
                // The export's deadline bounds the run; the reconciler settles a run that timed out.
                .execution_timeout(self.policy.deadline + EXECUTION_TIMEOUT_MARGIN)
                // The tenant scope is the fairness key of the workflow's tasks (its activities set
                // theirs too): one tenant's backlog gets its share of dispatch, not all of it.
                .priority(Priority::builder().fairness_key(fairness_key(&export.scope)).build())
                .maybe_search_attributes(attributes)
                .memo(memo.clone())
                .rpc_options(rpc_options())
                .build()
        };
        let start = |options| {
            bounded(
                "starting the workflow",
                self.client.start_workflow(UserDataExportWorkflow::run, input.clone(), options),
            )
        };
        let mut started = start(options(Some(attributes))).await?;
        if matches!(&started, Err(WorkflowStartError::Rpc(status)) if lacks_search_attributes(status)) {
            warn_unregistered();
            started = start(options(None)).await?;
        }
        match started {
            Ok(handle) => {
                info!(export_id = %export.id, workflow_id, run_id = handle.run_id(), %origin, "export workflow started");
                Ok(())
            }
            // Rejected by the reuse policy: the export's workflow already completed.
            Err(WorkflowStartError::AlreadyStarted { .. }) => Ok(()),
            Err(WorkflowStartError::Rpc(status)) => Err(status_error(status, "starting the workflow")),
            Err(err) => Err(PortError::Other(anyhow!(err).context("starting the workflow"))),
        }
    }

    /// Waits until `deadline` for the workflow of export `id` to close; `None` when there is
    /// no such workflow.
    async fn wait_workflow(
        &self,
        scope: &Scope,
        id: ExportId,
        deadline: Instant,
    ) -> Result<Option<WaitOutcome>, PortError> {
        let handle = self.client.get_workflow_handle::<UserDataExportWorkflow>(id.workflow_id(scope));
        let result =
            match tokio::time::timeout_at(deadline, handle.get_result(WorkflowGetResultOptions::default()))
                .await
            {
                Err(_) => return Ok(Some(WaitOutcome::StillRunning)),
                Ok(result) => result,
            };
        match result {
            // However the run ended, it ended; the record says how.
            Ok(_)
            | Err(
                WorkflowGetResultError::Failed(_)
                | WorkflowGetResultError::Cancelled { .. }
                | WorkflowGetResultError::Terminated { .. }
                | WorkflowGetResultError::TimedOut
                | WorkflowGetResultError::PayloadConversion(_),
            ) => Ok(Some(WaitOutcome::Finished)),
            Err(WorkflowGetResultError::NotFound(_)) => Ok(None),
            Err(WorkflowGetResultError::Rpc(status)) => Err(status_error(status, "waiting for the workflow")),
            Err(err) => Err(PortError::Other(anyhow!(err).context("waiting for the workflow"))),
        }
    }

    /// The state of the workflow `export` runs under.
    async fn describe(&self, export: &Export) -> Result<RunState, PortError> {
        if self.admission.is_some() && export.awaits_admission() {
            return Ok(RunState::Queued);
        }
        let handle = self.client.get_workflow_handle::<UserDataExportWorkflow>(export.workflow_id());
        let options = WorkflowDescribeOptions::builder().rpc_options(rpc_options()).build();
        let status = match bounded("describing the workflow", handle.describe(options)).await? {
            Ok(description) => description.status(),
            Err(WorkflowInteractionError::NotFound(_)) => return Ok(RunState::Missing),
            Err(WorkflowInteractionError::Rpc(status)) => {
                return Err(status_error(status, "describing the workflow"));
            }
            Err(err) => return Err(PortError::Other(anyhow!(err).context("describing the workflow"))),
        };
        Ok(match status {
            WorkflowExecutionStatus::Completed => RunState::Closed(RunClosure::Completed),
            WorkflowExecutionStatus::Failed => RunState::Closed(RunClosure::Failed),
            WorkflowExecutionStatus::Canceled => RunState::Closed(RunClosure::Cancelled),
            WorkflowExecutionStatus::Terminated => RunState::Closed(RunClosure::Terminated),
            WorkflowExecutionStatus::TimedOut => RunState::Closed(RunClosure::TimedOut),
            // Running, or continued as new (its next run is live), or not yet known.
            _ => RunState::Live,
        })
    }
}

/// Whether the server refused a start for naming search attributes the namespace lacks.
fn lacks_search_attributes(status: &Status) -> bool {
    status.code() == Code::InvalidArgument
        && status.message().to_ascii_lowercase().contains("search attribute")
}

fn warn_unregistered() {
    warn!(
        "the namespace lacks the export search attributes (UserexportTenant, UserexportFormat, \
           UserexportOrigin): starting without them; the worker registers them at start-up, or add \
           them by hand on Temporal Cloud (README, Operating)"
    );
}

/// Room after the export's deadline for the bookkeeping that follows its last attempt.
const EXECUTION_TIMEOUT_MARGIN: Duration = Duration::from_secs(15 * 60);

/// Per-call RPC options: a deadline and retries that give up within [`RPC_TIMEOUT`].
pub(super) fn rpc_options() -> RpcOptions {
    let retry = RetryOptions::builder()
        .initial_interval(Duration::from_millis(100))
        .max_interval(Duration::from_secs(1))
        .max_elapsed_time(Some(RPC_TIMEOUT))
        .max_retries(5)
        .build();
    RpcOptions::builder().timeout(RPC_TIMEOUT).retry_options(retry).build()
}

/// Runs `call` for at most a little longer than [`RPC_TIMEOUT`]; past that, Temporal is
/// unavailable (whatever the client's own retries are doing).
pub(super) async fn bounded<T>(what: &str, call: impl Future<Output = T>) -> Result<T, PortError> {
    tokio::time::timeout(RPC_TIMEOUT + Duration::from_secs(1), call).await.map_err(|_| {
        PortError::unavailable(anyhow!("{what}: Temporal did not answer within {RPC_TIMEOUT:?}"))
    })
}

/// Transport trouble and overload are retryable (`Unavailable`); the rest is not.
pub(super) fn status_error(status: Status, what: &str) -> PortError {
    let err = anyhow!("{what}: {} ({:?})", status.message(), status.code());
    match status.code() {
        Code::Unavailable
        | Code::DeadlineExceeded
        | Code::ResourceExhausted
        | Code::Aborted
        | Code::Cancelled
        | Code::Unknown => PortError::unavailable(err),
        _ => PortError::Other(err),
    }
}
