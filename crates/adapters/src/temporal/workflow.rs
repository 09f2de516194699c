//! `UserDataExportWorkflow`: prepare the record, run `ExportUserData` under the export's policy,
//! and never leave the record unfinished when the run ends otherwise.
//!
//! Workflow code is deterministic: it decodes its input, derives IDs and chooses options; every
//! read or write of a port happens in an activity.

// The macros generate marker types (one per activity or handler) without `Debug`.
#![allow(missing_debug_implementations)]

use std::time::Duration;

use domain::{
    EnvironmentId, ExecutionPolicy, ExportFailure, ExportStatus, FailureKind, Scope, TenantId, fairness_key,
};
use serde_json::Value;
use temporalio_common::error::IncomingError;
use temporalio_common::{Priority, RetryPolicy};
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::{
    ActivityCancellationType, ActivityExecutionError, ActivityOptions, ApplicationFailure,
    LocalActivityOptions, WorkflowCancellationToken, WorkflowContext, WorkflowResult, WorkflowTermination,
};
use tracing::{info, warn};

use super::activities::ExportActivities;
use super::queues::exports_queue_of;
use super::types::{
    ExportRef, ExportUserDataInput, ExportUserDataOutput, ExportWorkflowInput, FinishInput, FinishOutcome,
    PrepareInput, PrepareOutput, derived_export_id, failure_type,
};

/// Registers `UserDataExportWorkflow` and its activities (one instance per process, shared
/// with the exports queue's worker).
pub(super) fn register(
    options: &mut temporalio_sdk::WorkerOptions,
    activities: &std::sync::Arc<ExportActivities>,
) -> Result<(), temporalio_sdk::WorkflowRegistrationError> {
    options.register_workflow::<UserDataExportWorkflow>()?;
    options.register_activities(super::queues::Shared(std::sync::Arc::clone(activities)));
    Ok(())
}

/// Bound on one bookkeeping activity (prepare, finish).
const BOOKKEEPING_TIMEOUT: Duration = Duration::from_secs(30);
/// Marks workflow runs that have the notification step.
const NOTIFY_PATCH: &str = "notify-export-step";
/// Bound on one try of the notification step (an SMTP delivery is bounded by 10 s, retried).
const NOTIFY_TIMEOUT: Duration = Duration::from_secs(60);
/// Attempts of `PrepareExport` before the workflow gives up (about five minutes of backoff).
const PREPARE_ATTEMPTS: u32 = 10;
/// Attempts of `FinishExport`: it is the last word on the record, so it keeps trying (with
/// backoff capped at a minute) for about three quarters of an hour.
const FINISH_ATTEMPTS: u32 = 50;

/// Exports a tenant's users (the seed's `UserDataExportWorkflow`). Input: the seed's JSON
/// ([`ExportWorkflowInput`]); output: [`ExportUserDataOutput`].
///
/// - A bad request fails the workflow at once (`ValidationFailed`, no retries).
/// - Attempts follow the export's `ExecutionPolicy`: heartbeat timeout, the deadline as
///   schedule-to-close, and the runner's decision after each failure (only failures that count
///   use up attempts; the wait is the policy's, sent as `next_retry_delay`).
/// - Once the record is final, `NotifyExport` (a local activity) sends the email and callback.
/// - Exhausted attempts and timeouts fail the workflow after `FinishExport` has marked the
///   record `failed` with the reason; a cancellation ends it `cancelled` after `FinishExport`
///   (run on a token detached from the workflow's cancellation) has marked the record.
#[workflow]
#[derive(Debug, Default)]
pub struct UserDataExportWorkflow;

#[workflow_methods]
impl UserDataExportWorkflow {
    #[run(name = "UserDataExportWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: Value) -> WorkflowResult<ExportUserDataOutput> {
        let input: ExportWorkflowInput = serde_json::from_value(input).map_err(|e| {
            let message = format!("invalid workflow input: {e}");
            workflow_failure(
                failure_type::VALIDATION_FAILED,
                ExportFailure::new(FailureKind::Validation, message),
            )
        })?;
        let started_for_record = input.export_id.is_some();
        let export = ExportRef {
            tenant_id: input.tenant_id,
            environment_id: input.environment_id,
            export_id: input.export_id.unwrap_or_else(|| derived_export_id(ctx.workflow_id()).to_string()),
        };
        if !ctx.is_replaying() {
            info!(workflow_id = ctx.workflow_id(), export_id = %export.export_id, tenant = %export.tenant_id,
                  environment = %export.environment_id, "export workflow started");
        }

        let prepared = match (input.policy, input.attempt_offset) {
            // Started by the API for a record it stored: nothing to prepare, one round trip saved.
            (Some(policy), Some(attempt)) if started_for_record => {
                PrepareOutput { status: ExportStatus::Pending, attempt, policy, result: None, error: None }
            }
            _ => {
                let prepare = PrepareInput {
                    export: export.clone(),
                    request: input.request,
                    policy: input.policy,
                    workflow_id: Some(ctx.workflow_id().to_owned()),
                };
                match ctx.execute_activity(ExportActivities::prepare, prepare, prepare_options()).await {
                    Ok(prepared) => prepared,
                    Err(err) => return Err(end_unfinished(ctx, &export, &err).await),
                }
            }
        };
        match prepared.status {
            ExportStatus::Pending | ExportStatus::Running => {}
            // Already finished (a re-run of a finished export): report it, run nothing.
            ExportStatus::Completed | ExportStatus::Expired => {
                return prepared.result.ok_or_else(|| {
                    let failure = ExportFailure::new(FailureKind::Internal, "completed without an outcome");
                    workflow_failure(failure_type::EXPORT_FAILED, failure)
                });
            }
            ExportStatus::Failed => {
                let failure = prepared
                    .error
                    .unwrap_or_else(|| ExportFailure::new(FailureKind::Internal, "the export failed"));
                return Err(workflow_failure(failure_type::EXPORT_FAILED, failure));
            }
            ExportStatus::Cancelled => {
                let failure = ExportFailure::new(FailureKind::Internal, "the export was cancelled");
                return Err(workflow_failure(failure_type::EXPORT_CANCELLED, failure));
            }
        }

        let attempt = ExportUserDataInput {
            export: export.clone(),
            attempt_offset: prepared.attempt,
            policy: Some(prepared.policy),
        };
        let mut options = export_options(&prepared.policy);
        options.priority = export_priority(&export);
        // Attempts run on the exports queue beside this workflow's queue, so they never take the
        // slots bookkeeping needs. The queue is named from this run's own (in its history); the
        // SDK matches a scheduled activity by ID and type only, so earlier histories replay.
        options.task_queue = Some(exports_queue_of(ctx.task_queue()));
        match ctx.execute_activity(ExportActivities::export_user_data, attempt, options).await {
            Ok(output) => {
                if !ctx.is_replaying() {
                    info!(export_id = %export.export_id, rows = output.record_count, "export workflow completed");
                }
                // Most exports ask for no email and have no callback: no step to run then.
                if output.notify_due {
                    notify(ctx, &export).await;
                }
                Ok(output)
            }
            Err(err) => {
                let ending = end_unfinished(ctx, &export, &err).await;
                notify(ctx, &export).await;
                Err(ending)
            }
        }
    }
}

/// The notification step, once the record is final: a local activity (short bookkeeping, no
/// task-queue round trip) on a token of its own, so it runs after a cancellation too (it sends
/// nothing for a cancelled export). Its failure is logged; the reconciler catches what it
/// missed.
async fn notify(ctx: &WorkflowContext<UserDataExportWorkflow>, export: &ExportRef) {
    // Runs begun before this step existed replay without it (the reconciler notifies them).
    if !ctx.patched(NOTIFY_PATCH) {
        return;
    }
    let options = LocalActivityOptions::builder()
        .start_to_close_timeout(NOTIFY_TIMEOUT)
        .schedule_to_close_timeout(NOTIFY_TIMEOUT * 3)
        .retry_policy(bookkeeping_retry(3))
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    if let Err(err) = ctx.execute_local_activity(ExportActivities::notify, export.clone(), options).await
        && !ctx.is_replaying()
    {
        warn!(export_id = %export.export_id, error = %err, "notification step failed; the reconciler runs it again");
    }
}

/// Records how an unfinished export ends and returns how the workflow ends.
async fn end_unfinished(
    ctx: &WorkflowContext<UserDataExportWorkflow>,
    export: &ExportRef,
    err: &ActivityExecutionError,
) -> WorkflowTermination {
    if ctx.cancellation_token().is_cancelled() {
        finish(ctx, export, FinishOutcome::Cancelled).await;
        if !ctx.is_replaying() {
            info!(export_id = %export.export_id, "export workflow cancelled");
        }
        return WorkflowTermination::cancelled();
    }
    let ending = Ending::of(err);
    if let Some(outcome) = ending.record.clone() {
        finish(ctx, export, outcome).await;
    }
    // Cancelled through the API: the attempt saw the record before the workflow's cancel request
    // arrived. The export was cancelled, so the run ends cancelled, as it would a moment later.
    if ending.type_name == failure_type::EXPORT_CANCELLED {
        if !ctx.is_replaying() {
            info!(export_id = %export.export_id, "export workflow cancelled (through its record)");
        }
        return WorkflowTermination::cancelled();
    }
    if !ctx.is_replaying() {
        warn!(export_id = %export.export_id, failure_type = ending.type_name, error = %ending.failure.message,
              "export workflow failed");
    }
    workflow_failure(ending.type_name, ending.failure)
}

/// Runs `FinishExport` on a cancellation token of its own, so it runs even after the workflow
/// was cancelled. Its own failure is logged: the workflow ends the same way either way.
async fn finish(ctx: &WorkflowContext<UserDataExportWorkflow>, export: &ExportRef, outcome: FinishOutcome) {
    let input = FinishInput { export: export.clone(), outcome };
    let options = ActivityOptions::with_start_to_close_timeout(BOOKKEEPING_TIMEOUT)
        .retry_policy(bookkeeping_retry(FINISH_ATTEMPTS))
        .cancellation_token(WorkflowCancellationToken::new())
        .build();
    if let Err(err) = ctx.execute_activity(ExportActivities::finish, input, options).await
        && !ctx.is_replaying()
    {
        warn!(export_id = %export.export_id, error = %err, "could not record how the export ended");
    }
}

/// How a failed activity ends the workflow and the record.
struct Ending {
    type_name: &'static str,
    failure: ExportFailure,
    /// What to record; `None` when the record is not this workflow's to change.
    record: Option<FinishOutcome>,
}

impl Ending {
    fn of(err: &ActivityExecutionError) -> Self {
        if let Some(timeout) = err.as_timeout() {
            let message = format!("the export attempt timed out ({:?} timeout)", timeout.timeout_type());
            return Self::failed(
                failure_type::EXPORT_TIMED_OUT,
                ExportFailure::new(FailureKind::Timeout, message),
            );
        }
        if let ActivityExecutionError::Cancelled(_) = err {
            let failure = ExportFailure::new(FailureKind::Internal, "the export was cancelled");
            return Self {
                type_name: failure_type::EXPORT_CANCELLED,
                failure,
                record: Some(FinishOutcome::Cancelled),
            };
        }
        // Without our own `ExportFailure` in the details, the message is someone else's words
        // (the SDK's, a panic's): tenants get the public one; the history keeps the cause.
        let Some(IncomingError::Application(app)) = err.cause() else {
            return Self::failed(failure_type::EXPORT_FAILED, ExportFailure::public(FailureKind::Internal));
        };
        let failure = app
            .details::<ExportFailure>()
            .ok()
            .flatten()
            .unwrap_or_else(|| ExportFailure::public(FailureKind::Internal));
        match app.type_name() {
            Some(failure_type::VALIDATION_FAILED) => Self::failed(failure_type::VALIDATION_FAILED, failure),
            Some(failure_type::EXPORT_CANCELLED) => Self {
                type_name: failure_type::EXPORT_CANCELLED,
                failure,
                record: Some(FinishOutcome::Cancelled),
            },
            // Not this workflow's record to change.
            Some(failure_type::EXPORT_NOT_FOUND) => {
                Self { type_name: failure_type::EXPORT_NOT_FOUND, failure, record: None }
            }
            Some(failure_type::EXPORT_SUPERSEDED) => {
                Self { type_name: failure_type::EXPORT_SUPERSEDED, failure, record: None }
            }
            // The last retryable failure, or a final one (its record is already failed).
            _ => Self::failed(failure_type::EXPORT_FAILED, failure),
        }
    }

    fn failed(type_name: &'static str, failure: ExportFailure) -> Self {
        Self { type_name, record: Some(FinishOutcome::Failed { failure: failure.clone() }), failure }
    }
}

/// A non-retryable workflow failure carrying the `ExportFailure` as details.
fn workflow_failure(type_name: &str, failure: ExportFailure) -> WorkflowTermination {
    ApplicationFailure::builder(failure.message.clone())
        .type_name(type_name.to_owned())
        .non_retryable(true)
        .details(failure)
        .build()
        .into()
}

fn bookkeeping_retry(maximum_attempts: u32) -> RetryPolicy {
    RetryPolicy::builder()
        .initial_interval(Duration::from_secs(1))
        .backoff_coefficient(2.0)
        .maximum_interval(Duration::from_secs(60))
        .maximum_attempts(maximum_attempts)
        .non_retryable_error_types(failure_type::NON_RETRYABLE)
        .build()
}

fn prepare_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(BOOKKEEPING_TIMEOUT)
        .retry_policy(bookkeeping_retry(PREPARE_ATTEMPTS))
        .build()
}

/// The attempt's place on the task queue: its tenant scope is its fairness key, so the server
/// dispatches each tenant's attempts in turn (with `matching.enableFairness`) rather than a
/// tenant's whole backlog first. `None` for a reference that is no scope (its attempt fails
/// validation anyway).
fn export_priority(export: &ExportRef) -> Option<Priority> {
    let tenant = TenantId::parse(&export.tenant_id).ok()?;
    let environment = EnvironmentId::parse(&export.environment_id).ok()?;
    let key = fairness_key(&Scope::new(tenant, environment));
    Some(Priority::builder().fairness_key(key).build())
}

/// `ExportUserData`'s options: the export's deadline as schedule-to-close and no start-to-close
/// (a live attempt is known by its heartbeats, so no per-attempt limit caps an export's size),
/// no attempt limit (the runner counts the failures that use up attempts and fails the record
/// itself), and a cancellation that waits for the attempt to stop (upload aborted, record
/// cancelled) before the workflow goes on.
pub(crate) fn export_options(policy: &ExecutionPolicy) -> ActivityOptions {
    let retry = RetryPolicy::builder()
        .initial_interval(policy.retry.initial_interval)
        .backoff_coefficient(policy.retry.backoff_coefficient)
        .maximum_interval(policy.retry.maximum_interval)
        .maximum_attempts(0)
        .non_retryable_error_types(failure_type::NON_RETRYABLE)
        .build();
    ActivityOptions::with_schedule_to_close_timeout(policy.deadline)
        .heartbeat_timeout(policy.heartbeat_timeout)
        .retry_policy(retry)
        .cancellation_type(ActivityCancellationType::WaitCancellationCompleted)
        .build()
}
