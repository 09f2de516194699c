//! The activities: the only workflow steps that touch ports. `ExportUserData` is one attempt of
//! [`ExportRunner::run_attempt`]; `PrepareExport` and `FinishExport` keep the export record the
//! source of truth before and after it.

// The macros generate marker types (one per activity or handler) without `Debug`.
#![allow(missing_debug_implementations)]

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use domain::{
    Checkpoint, EnvironmentId, ExecutionPolicy, Export, ExportFailure, ExportId, ExportSpec, ExportStatus,
    FailureClass, FailureKind, QuotaBook, Scope, TenantId,
};
use ports::{CreateOutcome, ExportRepository, Orchestrator, PortError, QuotaCreateOutcome, UpdateOutcome};
use serde_json::Value;
use service::{AttemptControl, ExportRunner, RunError};
use temporalio_macros::activities;
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{Instrument, debug, info, info_span, warn};

use super::tenant_slots::TenantSlots;
use super::types::{
    ExportHeartbeat, ExportRef, ExportState, ExportUserDataInput, ExportUserDataOutput, FinishInput,
    FinishOutcome, FinishOutput, PrepareInput, PrepareOutput, failure_type,
};
use crate::export_threads::ExportThreads;

/// Fastest heartbeat ticker, whatever the heartbeat timeout.
const MIN_HEARTBEAT_EVERY: Duration = Duration::from_millis(100);
/// Shortest wait Temporal is asked for before the next attempt (zero would mean "use the retry
/// policy's backoff").
const MIN_RETRY_DELAY: Duration = Duration::from_millis(10);

/// Everything the activities need. Registered once per worker by [`super::register`].
pub struct ExportActivities {
    runner: Arc<ExportRunner>,
    exports: Arc<dyn ExportRepository>,
    default_policy: ExecutionPolicy,
    shutdown: CancellationToken,
    quotas: Arc<QuotaBook>,
    /// This worker's running attempts per tenant scope (`max_running`).
    tenant_slots: Arc<TenantSlots>,
    /// Where `ExportUserData` attempts run.
    threads: ExportThreads,
    /// Starts a scope's waiting exports when one of its exports ends (admission).
    admission: Option<Arc<dyn Orchestrator>>,
}

impl std::fmt::Debug for ExportActivities {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExportActivities")
            .field("default_policy", &self.default_policy)
            .finish_non_exhaustive()
    }
}

impl ExportActivities {
    /// `default_policy` runs workflows started without a policy (e.g. from the CLI).
    /// Cancelling `shutdown` interrupts running attempts without touching their records (they
    /// fail retryably and run again elsewhere); the worker cancels it when its shutdown grace
    /// period is over.
    pub fn new(
        runner: Arc<ExportRunner>,
        exports: Arc<dyn ExportRepository>,
        default_policy: ExecutionPolicy,
        shutdown: CancellationToken,
    ) -> Self {
        let quotas = Arc::<QuotaBook>::default();
        let tenant_slots = TenantSlots::new(Arc::clone(&quotas));
        Self {
            runner,
            exports,
            default_policy,
            shutdown,
            quotas,
            tenant_slots,
            threads: ExportThreads::inline(),
            admission: None,
        }
    }

    /// When an export ends, `orchestrator` starts its scope's waiting exports
    /// ([`Orchestrator::admit_waiting`]).
    #[must_use]
    pub fn with_admission(mut self, orchestrator: Arc<dyn Orchestrator>) -> Self {
        self.admission = Some(orchestrator);
        self
    }

    /// Runs attempts on `threads` (by default, on the worker's runtime).
    #[must_use]
    pub fn with_export_threads(mut self, threads: ExportThreads) -> Self {
        self.threads = threads;
        self
    }

    /// Tenant quotas: `max_running` attempts of one scope at once in this worker, and
    /// `max_unfinished` for records this worker creates (schedule fires, CLI starts).
    #[must_use]
    pub fn with_quotas(mut self, quotas: Arc<QuotaBook>) -> Self {
        self.tenant_slots = TenantSlots::new(Arc::clone(&quotas));
        self.quotas = quotas;
        self
    }

    pub fn from_deps(deps: &super::WorkerDeps) -> Self {
        let activities = Self::new(
            Arc::clone(&deps.runner),
            Arc::clone(&deps.exports),
            deps.default_policy,
            deps.shutdown.clone(),
        )
        .with_quotas(Arc::clone(&deps.quotas))
        .with_export_threads(deps.export_threads.clone());
        match &deps.admission {
            Some(orchestrator) => activities.with_admission(Arc::clone(orchestrator)),
            None => activities,
        }
    }
}

#[activities]
impl ExportActivities {
    /// Validates the request and makes sure a record exists: an export started through the API
    /// already has one; one started with the seed's fields only (a schedule fire, the CLI) gets
    /// a `pending` record here, or a `failed` one (`quota_exceeded`) when its scope is at its
    /// `max_unfinished` quota. Returns the record's status (a finished export is not run again)
    /// and the policy.
    #[activity(name = "PrepareExport")]
    pub async fn prepare(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: PrepareInput,
    ) -> Result<PrepareOutput, ActivityError> {
        let (scope, id) = parse_ref(&input.export)?;
        let policy = input.policy.unwrap_or(self.default_policy);
        policy.validate().map_err(|e| validation_failed(format!("invalid policy: {e}")))?;
        let export = match self.exports.get(&scope, id).await.map_err(port_failure)? {
            Some(existing) => self.record_workflow_id(existing, input.workflow_id).await?,
            None => {
                let spec = ExportSpec::from_json(&Value::Object(input.request))
                    .map_err(|errors| validation_failed(errors.to_string()))?;
                let mut export = Export::new(id, scope.clone(), spec, None, Utc::now());
                if let Some(workflow_id) = input.workflow_id {
                    export.set_workflow_id(workflow_id);
                }
                // This workflow is its run: it counts against the scope's started exports.
                export.mark_admitted(Utc::now());
                let limit = self.quotas.for_scope(&scope).max_unfinished;
                match self.exports.create_within_quota(&export, limit).await.map_err(port_failure)? {
                    QuotaCreateOutcome::Created => {
                        info!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment,
                              "export record created for a workflow started without one");
                        export
                    }
                    QuotaCreateOutcome::Existing(existing) => *existing,
                    QuotaCreateOutcome::QuotaExceeded { unfinished } => {
                        warn!(export_id = %id, tenant = %scope.tenant, environment = %scope.environment,
                              unfinished, limit, "export refused by the max_unfinished quota; recorded as failed");
                        self.record_refused(export, limit).await?
                    }
                }
            }
        };
        Ok(PrepareOutput {
            status: export.status(),
            attempt: export.attempt(),
            policy,
            result: ExportUserDataOutput::from_export(&export),
            error: export.error().cloned(),
        })
    }

    /// One attempt of the export. Progress goes out as heartbeats (rows written), and a ticker
    /// heartbeats every third of the heartbeat timeout even when rows come slowly, so a dead
    /// worker is noticed within the heartbeat timeout. A cancel through the API reaches the
    /// attempt through the record at its next progress write (every 500 ms), not only with a
    /// heartbeat response, which the SDK throttles. A Temporal cancellation aborts the upload
    /// and leaves the record to the workflow.
    ///
    /// Failures follow the runner's decision: a retry is a retryable failure whose
    /// `next_retry_delay` is the policy's wait (the activity's own retry policy sets no attempt
    /// limit: only failures that count use up attempts, and the record counts them).
    #[activity(name = "ExportUserData")]
    pub async fn export_user_data(
        self: Arc<Self>,
        ctx: ActivityContext,
        input: ExportUserDataInput,
    ) -> Result<ExportUserDataOutput, ActivityError> {
        let (scope, id) = parse_ref(&input.export)?;
        let info = ctx.info();
        // Checked before anything else: a busy attempt touches neither record nor storage.
        let waiter = format!("{}/{}", info.workflow_id.as_deref().unwrap_or(""), info.activity_id);
        let _tenant_slot = match self.tenant_slots.try_acquire(&scope, &waiter) {
            Ok(slot) => slot,
            Err(retry_in) => {
                debug!(export_id = %id, tenant = %scope.tenant, retry_in_ms = retry_in.as_millis(),
                       "tenant at max_running in this worker; retrying later");
                return Err(tenant_busy(retry_in));
            }
        };
        let attempt = input.attempt_offset.saturating_add(info.attempt);
        let span = info_span!("export_attempt", export_id = %id, tenant = %scope.tenant,
                              environment = %scope.environment, attempt,
                              workflow_id = info.workflow_id.as_deref().unwrap_or(""),
                              activity_id = %info.activity_id);
        let heartbeat_timeout = info.heartbeat_timeout.unwrap_or(self.default_policy.heartbeat_timeout);
        let resume = match ctx.heartbeat_details().deserialize::<ExportHeartbeat>() {
            Ok(details) => details.and_then(|d| d.checkpoint),
            Err(err) => {
                // An older worker's heartbeat (a bare row count): nothing to resume from.
                debug!(error = %err, "previous heartbeat carries no checkpoint");
                None
            }
        };
        let control = AttemptControl {
            attempt,
            cancel: CancellationToken::new(),
            shutdown: self.shutdown.child_token(),
            policy: input.policy.unwrap_or(self.default_policy),
            resume,
        };
        let attempt = Attempt { runner: Arc::clone(&self.runner), scope, id, control };
        let result =
            run_with_heartbeats(&self.threads, attempt, &ctx, heartbeat_timeout).instrument(span).await;
        // A final record frees the scope's place for its next waiting export.
        if result.as_ref().is_ok_and(|export| export.status().is_terminal()) {
            self.admit_next(&input.export).await;
        }
        match result {
            Ok(export) => match export.status() {
                ExportStatus::Completed => ExportUserDataOutput::from_export(&export).ok_or_else(|| {
                    non_retryable(failure_type::EXPORT_FAILED, "completed without an outcome")
                }),
                ExportStatus::Cancelled => Err(cancelled_error(&ctx)),
                status => {
                    let message = export
                        .error()
                        .map_or_else(|| format!("the export is {status}"), |f| f.message.clone());
                    Err(non_retryable(failure_type::EXPORT_FAILED, message))
                }
            },
            Err(err) => Err(run_error(err, &ctx)),
        }
    }

    /// The notification step of a final export: the email and the tenant's callback, each
    /// recorded on the export; a repeat sends nothing twice once recorded. Run as a local
    /// activity after the export settled, so it holds no export slot.
    #[activity(name = "NotifyExport")]
    pub async fn notify(
        self: Arc<Self>,
        _ctx: ActivityContext,
        export: ExportRef,
    ) -> Result<(), ActivityError> {
        let (scope, id) = parse_ref(&export)?;
        self.runner.notify(&scope, id).await.map_err(port_failure)?;
        Ok(())
    }

    /// The record's status (and error), or `None` when there is no record yet: how a batch
    /// follows an export that already runs under its target's workflow ID.
    #[activity(name = "ExportStatus")]
    pub async fn status(
        self: Arc<Self>,
        _ctx: ActivityContext,
        export: ExportRef,
    ) -> Result<Option<ExportState>, ActivityError> {
        let (scope, id) = parse_ref(&export)?;
        let record = self.exports.get(&scope, id).await.map_err(port_failure)?;
        Ok(record.map(|e| ExportState { status: e.status(), error: e.error().cloned() }))
    }

    /// Ends an unfinished export when the workflow cannot: `cancelled` after a workflow
    /// cancellation, `failed` (with the reason) after the last attempt failed or timed out.
    /// A finished record is left as it is. Confirms by reading the record back.
    #[activity(name = "FinishExport")]
    pub async fn finish(
        self: Arc<Self>,
        _ctx: ActivityContext,
        input: FinishInput,
    ) -> Result<FinishOutput, ActivityError> {
        let (scope, id) = parse_ref(&input.export)?;
        let outcome = match &input.outcome {
            FinishOutcome::Cancelled => self.runner.cancel_unfinished(&scope, id).await,
            FinishOutcome::Failed { failure } => self.runner.give_up(&scope, id, failure.clone()).await,
        };
        // The runner reports the transition it just stored as an error (`Cancelled`, `Failed`),
        // and store trouble the same way, so the record read back tells what happened.
        if let Err(RunError::NotFound) = outcome {
            return Ok(FinishOutput { status: None });
        }
        let export = self.exports.get(&scope, id).await.map_err(port_failure)?;
        if export.as_ref().is_some_and(|e| e.status().is_terminal()) {
            self.admit_next(&input.export).await;
        }
        match export {
            None => Ok(FinishOutput { status: None }),
            Some(export) if export.status().is_terminal() => {
                info!(export_id = %id, status = %export.status(), "export record finished by the workflow");
                Ok(FinishOutput { status: Some(export.status()) })
            }
            Some(export) => Err(ApplicationFailure::new(format!(
                "could not finish export {id}: it is still {}",
                export.status()
            ))
            .into()),
        }
    }
}

impl ExportActivities {
    /// Starts the waiting exports of `export`'s scope now that it has ended. A failure only
    /// delays them: the reconciler admits them on its next pass.
    async fn admit_next(&self, export: &ExportRef) {
        let Some(orchestrator) = &self.admission else { return };
        let Ok((scope, _)) = parse_ref(export) else { return };
        match orchestrator.admit_waiting(&scope).await {
            Ok(0) => {}
            Ok(admitted) => {
                debug!(tenant = %scope.tenant, environment = %scope.environment, admitted, "started waiting exports");
            }
            Err(err) => {
                warn!(tenant = %scope.tenant, environment = %scope.environment, error = %err,
                      "could not start the scope's waiting exports; the reconciler starts them");
            }
        }
    }

    /// Stores an export refused by the quota as `failed`, so its tenant sees it.
    async fn record_refused(&self, mut export: Export, limit: u32) -> Result<Export, ActivityError> {
        let message =
            format!("not run: the tenant already had {limit} unfinished exports (quota max_unfinished)");
        export
            .fail(ExportFailure::new(FailureKind::QuotaExceeded, message), Utc::now())
            .map_err(|e| non_retryable(failure_type::EXPORT_FAILED, e.to_string()))?;
        match self.exports.create_if_absent(&export).await.map_err(port_failure)? {
            CreateOutcome::Created => Ok(export),
            CreateOutcome::Existing(existing) => Ok(*existing),
        }
    }

    /// Stores the workflow running `export` on its record when it is not the derived one.
    async fn record_workflow_id(
        &self,
        mut export: Export,
        workflow_id: Option<String>,
    ) -> Result<Export, ActivityError> {
        let Some(workflow_id) = workflow_id.filter(|w| *w != export.workflow_id()) else { return Ok(export) };
        if export.status().is_terminal() {
            return Ok(export);
        }
        let status = export.status();
        export.set_workflow_id(workflow_id);
        match self.exports.update_if_status(&export, status).await.map_err(port_failure)? {
            UpdateOutcome::Updated => Ok(export),
            UpdateOutcome::Conflict(stored) => Ok(*stored),
            UpdateOutcome::NotFound => Err(non_retryable(failure_type::EXPORT_NOT_FOUND, "export not found")),
        }
    }
}

/// What one attempt needs, owned, to run on the export threads.
struct Attempt {
    runner: Arc<ExportRunner>,
    scope: Scope,
    id: ExportId,
    control: AttemptControl,
}

/// Runs the attempt on `threads` while heartbeating progress and forwarding the activity's
/// cancellation.
///
/// Heartbeats run on a task of their own on the worker's runtime, so an attempt that seldom
/// yields (fast stores, CPU-bound encoding) cannot starve them; the task ends with the attempt.
async fn run_with_heartbeats(
    threads: &ExportThreads,
    attempt: Attempt,
    ctx: &ActivityContext,
    heartbeat_timeout: Duration,
) -> Result<Export, RunError> {
    let Attempt { runner, scope, id, control } = attempt;
    // Starts with the checkpoint being resumed, so no heartbeat replaces it with nothing.
    let first = ExportHeartbeat { rows_written: 0, checkpoint: control.resume.clone() };
    let (rows_tx, rows_rx) = watch::channel(first);
    let progress = move |rows: u64, checkpoint: Option<&Checkpoint>| {
        rows_tx.send_modify(|details| {
            details.rows_written = rows;
            if let Some(checkpoint) = checkpoint {
                details.checkpoint = Some(checkpoint.clone());
            }
        });
    };
    let side_tasks = tokio::spawn(
        heartbeat_and_forward_cancel(ctx.clone(), rows_rx, control.clone(), heartbeat_timeout)
            .in_current_span(),
    );
    let _stop_side_tasks = AbortOnDropHandle::new(side_tasks);
    let run_scope = scope.clone();
    threads.run(&scope, async move { runner.run_attempt(&run_scope, id, &control, &progress).await }).await
}

/// Heartbeats the latest progress and checkpoint on every change and at least every third of
/// the heartbeat timeout, and forwards the activity's cancellation to the attempt. Runs until
/// aborted.
async fn heartbeat_and_forward_cancel(
    ctx: ActivityContext,
    mut rows: watch::Receiver<ExportHeartbeat>,
    control: AttemptControl,
    heartbeat_timeout: Duration,
) {
    let started = Instant::now();
    let heartbeats = async {
        let mut ticker = tokio::time::interval((heartbeat_timeout / 3).max(MIN_HEARTBEAT_EVERY));
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticker.tick() => {}
                changed = rows.changed() => {
                    if changed.is_err() {
                        // The attempt is over; this task is about to be aborted.
                        std::future::pending::<()>().await;
                    }
                }
            }
            let current = rows.borrow_and_update().clone();
            // Throttled by the SDK: only the latest details go out, at most every 0.8 × timeout.
            if let Err(err) = ctx.record_heartbeat(current).await {
                warn!(error = %err, "could not record a heartbeat");
            }
        }
    };
    // The SDK cancels an activity for several reasons it does not pass on: the workflow was
    // cancelled, but also the server already timed the attempt out (a missed heartbeat), a
    // timeout, a pause or a reset. So a cancellation only stops this attempt (upload aborted,
    // record left alone); a user's cancel reaches the record through the workflow, which runs
    // `FinishExport(Cancelled)` once this activity has stopped.
    let forward_cancel = async {
        ctx.cancelled().await;
        info!(
            elapsed_ms = started.elapsed().as_millis() as u64,
            "cancellation received; stopping the attempt"
        );
        control.shutdown.cancel();
    };
    tokio::join!(heartbeats, forward_cancel);
}

fn parse_ref(export: &ExportRef) -> Result<(Scope, ExportId), ActivityError> {
    let mut problems = Vec::new();
    let tenant = TenantId::parse(&export.tenant_id).map_err(|e| problems.push(format!("tenant_id: {e}")));
    let environment = EnvironmentId::parse(&export.environment_id)
        .map_err(|e| problems.push(format!("environment_id: {e}")));
    let id = ExportId::parse(&export.export_id).map_err(|e| problems.push(format!("export_id: {e}")));
    match (tenant, environment, id) {
        (Ok(tenant), Ok(environment), Ok(id)) => Ok((Scope::new(tenant, environment), id)),
        _ => Err(validation_failed(format!("invalid request: {}", problems.join("; ")))),
    }
}

fn failure(
    type_name: &str,
    message: String,
    retryable: bool,
    details: Option<ExportFailure>,
) -> ActivityError {
    ApplicationFailure::builder(message)
        .type_name(type_name.to_owned())
        .non_retryable(!retryable)
        .maybe_details(details)
        .build()
        .into()
}

/// The tenant is at `max_running` in this worker: retryable, after `retry_in`.
fn tenant_busy(retry_in: Duration) -> ActivityError {
    ApplicationFailure::builder("the tenant already runs its max_running exports on this worker")
        .type_name(failure_type::TENANT_BUSY.to_owned())
        .non_retryable(false)
        .next_retry_delay(retry_in)
        .build()
        .into()
}

fn non_retryable(type_name: &str, message: impl Into<String>) -> ActivityError {
    failure(type_name, message.into(), false, None)
}

fn validation_failed(message: String) -> ActivityError {
    let details = ExportFailure::new(FailureKind::Validation, message.clone());
    failure(failure_type::VALIDATION_FAILED, message, false, Some(details))
}

/// Store trouble: retryable when the store is unavailable, not otherwise. The cause goes to the
/// activity's failure message (Temporal's history, for operators); the details, which become the
/// record's error that tenants read, carry only the public message.
fn port_failure(err: PortError) -> ActivityError {
    let retryable = err.is_retryable();
    let message = format!("export record: {err:#}");
    let details = ExportFailure::public(FailureKind::Internal);
    let type_name = if retryable { failure_type::ATTEMPT_FAILED } else { failure_type::EXPORT_FAILED };
    failure(type_name, message, retryable, Some(details))
}

/// The activity was cancelled by Temporal, or the record was cancelled by someone else (the API
/// cancelling an export whose workflow it cannot see). Temporal accepts a "cancelled" completion
/// only for an activity whose cancellation it requested, so the second case is a failure.
fn cancelled_error(ctx: &ActivityContext) -> ActivityError {
    if ctx.is_cancelled() {
        ActivityError::cancelled()
    } else {
        non_retryable(failure_type::EXPORT_CANCELLED, "the export was cancelled")
    }
}

fn run_error(err: RunError, ctx: &ActivityContext) -> ActivityError {
    match err {
        RunError::Cancelled => cancelled_error(ctx),
        // Stopped by the activity's cancellation: acknowledge it as such.
        RunError::Interrupted if ctx.is_cancelled() => ActivityError::cancelled(),
        RunError::Interrupted => {
            failure(failure_type::INTERRUPTED, "the worker stopped during the attempt".to_owned(), true, None)
        }
        RunError::NotFound => non_retryable(failure_type::EXPORT_NOT_FOUND, "export not found"),
        RunError::Superseded { current } => non_retryable(
            failure_type::EXPORT_SUPERSEDED,
            format!("the export is owned by attempt {current}"),
        ),
        RunError::Retry { failure: f, class, after } => {
            let type_name = match class {
                FailureClass::Interruption => failure_type::INTERRUPTED,
                _ => failure_type::ATTEMPT_FAILED,
            };
            ApplicationFailure::builder(f.message.clone())
                .type_name(type_name.to_owned())
                .non_retryable(false)
                .next_retry_delay(after.max(MIN_RETRY_DELAY))
                .details(f)
                .build()
                .into()
        }
        RunError::Store(err) => port_failure(err),
        RunError::Failed { failure: f } => {
            let type_name = if f.kind == FailureKind::Validation {
                failure_type::VALIDATION_FAILED
            } else {
                failure_type::EXPORT_FAILED
            };
            failure(type_name, f.message.clone(), false, Some(f))
        }
    }
}
