//! `UserBatchExportWorkflow` (seed pattern 5): one export request run for many tenant scopes.
//!
//! Each target runs as a child `UserDataExportWorkflow` whose workflow ID is its export's
//! ([`ExportId::for_batch`] of the batch and scope), started with the export ID and the request
//! so its `PrepareExport` creates the record if absent. At most `concurrency` children run at
//! once in a sliding window: a finished child frees its place at once for the next target. A
//! target whose export already runs under that workflow ID (started through the API, by an
//! earlier run of this batch, by hand) is joined: the batch follows its record (`ExportStatus`,
//! on the control queue) and counts its outcome. A failing child is counted with its reason and
//! the batch goes on. After `targets_per_run` targets the workflow continues as new, carrying
//! the offset, the counts and the failures, so its history stays bounded however many targets
//! there are.
//!
//! The parent runs on the batch queue; its children on the control queue
//! ([`super::TaskQueues`]). Runs begun before the window (no `batch-sliding-window` marker in
//! their history) replay as they ran: chunks of `concurrency` (`join_all`), a running target
//! counted as failed.
//!
//! Workflow code is deterministic: it decodes its input, derives IDs, starts children and reads
//! records through an activity; the children's activities touch the ports.

// The macros generate marker types (one per workflow handler) without `Debug`.
#![allow(missing_debug_implementations)]

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use domain::batch::MAX_CONCURRENCY;
use domain::{
    Batch, BatchId, ExecutionPolicy, ExportFailure, ExportId, ExportOrigin, ExportStatus, FailureKind, Scope,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use temporalio_common::RetryPolicy;
use temporalio_common::error::IncomingError;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflows::join_all;
use temporalio_sdk::{
    ActivityOptions, ApplicationFailure, ChildWorkflowExecutionError, ChildWorkflowOptions,
    ChildWorkflowStartError, ContinueAsNewOptions, ParentClosePolicy, StartChildWorkflowExecutionFailedCause,
    WorkflowContext, WorkflowResult,
};
use tracing::info;

use super::activities::ExportActivities;
use super::queues::control_queue_of_batch;
use super::search::{export_search_attributes, request_format};
use super::types::{ExportRef, ExportState, ExportWorkflowInput, failure_type};
use super::workflow::UserDataExportWorkflow;

/// Registered name of the batch workflow.
pub const BATCH_WORKFLOW_TYPE: &str = "UserBatchExportWorkflow";
/// Targets one workflow run handles before it continues as new.
pub const DEFAULT_TARGETS_PER_RUN: u32 = 500;
/// Failures reported with their reason; beyond this many only the count grows, so the result
/// (and the input carried across runs) stays far below Temporal's payload limits.
pub const MAX_REPORTED_FAILURES: usize = 1000;
/// Longest failure reason kept, in bytes.
const MAX_REASON_LEN: usize = 500;
/// Marks runs with the sliding window and joining of running targets.
const SLIDING_WINDOW_PATCH: &str = "batch-sliding-window";
/// First and longest wait between two reads of a joined export's record.
const JOIN_FIRST_WAIT: Duration = Duration::from_secs(1);
const JOIN_MAX_WAIT: Duration = Duration::from_secs(120);
/// How long past its policy's deadline a joined export may stay unfinished before the batch
/// counts it as timed out (the room its workflow has for bookkeeping after the last attempt).
const JOIN_MARGIN: Duration = Duration::from_secs(15 * 60);

/// Registers `UserBatchExportWorkflow` (its children are `UserDataExportWorkflow`s, registered
/// by their own module).
pub(super) fn register(
    options: &mut temporalio_sdk::WorkerOptions,
    _deps: &super::WorkerDeps,
) -> Result<(), temporalio_sdk::WorkflowRegistrationError> {
    options.register_workflow::<UserBatchExportWorkflow>()?;
    Ok(())
}

fn default_targets_per_run() -> u32 {
    DEFAULT_TARGETS_PER_RUN
}

/// Input of `UserBatchExportWorkflow`. Plain JSON, so any client can start one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BatchWorkflowInput {
    pub batch_id: String,
    /// `tenant/environment` of every target, in order.
    pub targets: Vec<String>,
    /// The export request every target runs (the fields of `POST /v1/exports`).
    pub request: Map<String, Value>,
    /// Children run with this policy; absent: the worker's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ExecutionPolicy>,
    /// Children running at the same time (1..=100).
    pub concurrency: u32,
    /// Targets per workflow run before continuing as new.
    #[serde(default = "default_targets_per_run")]
    pub targets_per_run: u32,
    /// What earlier runs did; empty on the first run.
    #[serde(default)]
    pub progress: BatchProgress,
    /// Whether children get the export search attributes: set by the orchestrator when the
    /// namespace accepted them on the batch's own start (an unknown attribute on a child would
    /// fail the batch's workflow tasks). Absent in batches started before they existed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub search_attributes: bool,
}

impl BatchWorkflowInput {
    /// The input that runs `batch` with `policy`.
    pub fn for_batch(batch: &Batch, policy: Option<ExecutionPolicy>) -> Self {
        let request = match serde_json::to_value(&batch.spec) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Self {
            batch_id: batch.id.to_string(),
            targets: batch.targets.iter().map(ToString::to_string).collect(),
            request,
            policy,
            concurrency: batch.concurrency,
            targets_per_run: DEFAULT_TARGETS_PER_RUN,
            progress: BatchProgress::default(),
            search_attributes: false,
        }
    }
}

/// What the runs so far did, carried across continue-as-new.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchProgress {
    /// Targets before this index are done.
    pub offset: usize,
    pub completed: u64,
    /// Targets that did not complete (failed or cancelled).
    pub failed: u64,
    /// The first [`MAX_REPORTED_FAILURES`] of them, with their reasons.
    pub failures: Vec<BatchTargetFailure>,
}

/// A target whose export did not complete, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchTargetFailure {
    pub tenant_id: String,
    pub environment_id: String,
    /// Absent when the target itself is invalid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    /// `failed` or `cancelled`.
    pub status: ExportStatus,
    /// The failure type of the child (`ExportFailed`, `ValidationFailed`...), when it had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_type: Option<String>,
    pub error: String,
}

/// Result of `UserBatchExportWorkflow`: `{results, total, failed}` (plus `completed`), where
/// `results` lists the targets that did not complete with their reasons (at most
/// [`MAX_REPORTED_FAILURES`]); every target's export ID and status can be read from
/// `GET /v1/exports/batch/{id}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchWorkflowOutput {
    pub batch_id: String,
    pub total: u64,
    pub completed: u64,
    pub failed: u64,
    pub results: Vec<BatchTargetFailure>,
}

/// Runs one export request for many scopes (see the module documentation).
#[workflow]
#[derive(Debug, Default)]
pub struct UserBatchExportWorkflow;

#[workflow_methods]
impl UserBatchExportWorkflow {
    #[run(name = "UserBatchExportWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: Value) -> WorkflowResult<BatchWorkflowOutput> {
        let mut input: BatchWorkflowInput = serde_json::from_value(input)
            .map_err(|e| invalid_input(format!("invalid batch workflow input: {e}")))?;
        let batch_id = BatchId::parse(&input.batch_id)
            .map_err(|e| invalid_input(format!("invalid batch_id {:?}: {e}", input.batch_id)))?;
        let total = input.targets.len();
        let start = input.progress.offset.min(total);
        let end = start.saturating_add(input.targets_per_run.max(1) as usize).min(total);
        let concurrency = input.concurrency.clamp(1, MAX_CONCURRENCY) as usize;
        if !ctx.is_replaying() {
            info!(batch_id = %batch_id, total, from = start, to = end, "batch workflow run started");
        }

        let view: &WorkflowContext<Self> = ctx;
        let targets = &input.targets[start..end];
        let outcomes = if view.patched(SLIDING_WINDOW_PATCH) {
            run_window(view, batch_id, targets, concurrency, &input).await
        } else {
            let mut outcomes = Vec::with_capacity(targets.len());
            for chunk in targets.chunks(concurrency) {
                let runs = chunk.iter().map(|target| run_target(view, batch_id, target, &input, false));
                outcomes.extend(join_all(runs).await);
            }
            outcomes
        };
        for outcome in outcomes {
            match outcome {
                None => input.progress.completed += 1,
                Some(failure) => {
                    input.progress.failed += 1;
                    if input.progress.failures.len() < MAX_REPORTED_FAILURES {
                        input.progress.failures.push(failure);
                    }
                }
            }
        }
        input.progress.offset = end;

        if end < total {
            if !ctx.is_replaying() {
                info!(batch_id = %batch_id, done = end, total, "batch continues as new");
            }
            let next = serde_json::to_value(&input).map_err(|e| invalid_input(e.to_string()))?;
            return match ctx.continue_as_new(next, ContinueAsNewOptions::default()) {
                Err(termination) => Err(termination),
                Ok(never) => match never {},
            };
        }
        if !ctx.is_replaying() {
            info!(batch_id = %batch_id, total, completed = input.progress.completed,
                  failed = input.progress.failed, "batch workflow finished");
        }
        Ok(BatchWorkflowOutput {
            batch_id: input.batch_id,
            total: total as u64,
            completed: input.progress.completed,
            failed: input.progress.failed,
            results: input.progress.failures,
        })
    }
}

/// What one target's export ended with: `None` when it completed.
type Outcome = Option<BatchTargetFailure>;
type TargetRun<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// Runs `targets` with at most `concurrency` at once, starting the next target as soon as any
/// run finishes. Outcomes come back in target order.
///
/// Deterministic: finished runs are taken in the order they were started, and which runs have
/// finished when the workflow wakes comes from the history, so a replay starts the same children
/// at the same points.
async fn run_window<'a>(
    ctx: &'a WorkflowContext<UserBatchExportWorkflow>,
    batch_id: BatchId,
    targets: &'a [String],
    concurrency: usize,
    input: &'a BatchWorkflowInput,
) -> Vec<Outcome> {
    let mut outcomes: Vec<Option<Outcome>> = vec![None; targets.len()];
    let mut next = targets.iter().enumerate();
    let mut running: Vec<(usize, TargetRun<'a>)> = Vec::with_capacity(concurrency);
    loop {
        while running.len() < concurrency {
            let Some((index, target)) = next.next() else { break };
            let run: TargetRun<'a> = Box::pin(run_target(ctx, batch_id, target, input, true));
            running.push((index, run));
        }
        if running.is_empty() {
            break;
        }
        // The SDK futures are polled with the workflow's own waker: no wake of ours.
        let (slot, outcome) = std::future::poll_fn(|cx| {
            running
                .iter_mut()
                .enumerate()
                .find_map(|(slot, (_, run))| match run.as_mut().poll(cx) {
                    Poll::Ready(outcome) => Some((slot, outcome)),
                    Poll::Pending => None,
                })
                .map_or(Poll::Pending, Poll::Ready)
        })
        .await;
        let (index, _) = running.remove(slot);
        outcomes[index] = Some(outcome);
    }
    outcomes.into_iter().map(Option::flatten).collect()
}

/// Runs one target's export as a child workflow; `None` when it completed. With `join`, a
/// target whose workflow ID already runs is followed to its end instead of counted as failed.
async fn run_target(
    ctx: &WorkflowContext<UserBatchExportWorkflow>,
    batch_id: BatchId,
    target: &str,
    input: &BatchWorkflowInput,
    join: bool,
) -> Outcome {
    let scope = match Scope::parse(target) {
        Ok(scope) => scope,
        Err(e) => {
            let (tenant, environment) = target.split_once('/').unwrap_or((target, ""));
            return Some(BatchTargetFailure {
                tenant_id: tenant.to_owned(),
                environment_id: environment.to_owned(),
                export_id: None,
                status: ExportStatus::Failed,
                failure_type: Some(failure_type::VALIDATION_FAILED.to_owned()),
                error: format!("invalid target {target:?}: {e}"),
            });
        }
    };
    let export_id = ExportId::for_batch(batch_id, &scope);
    let failure = |status, failure_type: Option<&str>, error: String| {
        Some(BatchTargetFailure {
            tenant_id: scope.tenant.to_string(),
            environment_id: scope.environment.to_string(),
            export_id: Some(export_id.to_string()),
            status,
            failure_type: failure_type.map(str::to_owned),
            error: truncate(error),
        })
    };
    let child = ExportWorkflowInput {
        tenant_id: scope.tenant.to_string(),
        environment_id: scope.environment.to_string(),
        export_id: Some(export_id.to_string()),
        policy: input.policy,
        // No attempt offset: the child's `PrepareExport` creates the record if absent.
        attempt_offset: None,
        request: input.request.clone(),
    };
    let child = match serde_json::to_value(child) {
        Ok(child) => child,
        Err(e) => return failure(ExportStatus::Failed, None, format!("encoding the export's input: {e}")),
    };
    let mut options = ChildWorkflowOptions::builder()
        .workflow_id(export_id.workflow_id(&scope))
        // A cancelled or terminated batch asks its running exports to stop (they end cancelled).
        .parent_close_policy(ParentClosePolicy::RequestCancel)
        .maybe_search_attributes(input.search_attributes.then(|| {
            export_search_attributes(&scope.to_string(), request_format(&input.request), ExportOrigin::Batch)
        }))
        .build();
    // Exports run on the control queue; a batch on that queue (older starts) keeps them there.
    options.task_queue = control_queue_of_batch(ctx.task_queue()).map(str::to_owned);
    let started = match ctx.start_child_workflow(UserDataExportWorkflow::run, child, options).await {
        Ok(started) => started,
        Err(ChildWorkflowStartError::StartFailed {
            cause: StartChildWorkflowExecutionFailedCause::WorkflowAlreadyExists,
            ..
        }) if join => {
            let export = ExportRef {
                tenant_id: scope.tenant.to_string(),
                environment_id: scope.environment.to_string(),
                export_id: export_id.to_string(),
            };
            return match join_running(ctx, export, input.policy.unwrap_or_default().deadline).await {
                Joined::Completed => None,
                Joined::Ended { status, failure_type, reason } => failure(status, Some(failure_type), reason),
            };
        }
        Err(e) => return failure(ExportStatus::Failed, None, format!("the export could not start: {e}")),
    };
    match started.result().await {
        Ok(_) => None,
        Err(err) if err.as_cancelled().is_some() => failure(
            ExportStatus::Cancelled,
            Some(failure_type::EXPORT_CANCELLED),
            "the export was cancelled".into(),
        ),
        Err(err) => {
            let (kind, reason) = child_failure(&err);
            let status = if kind.as_deref() == Some(failure_type::EXPORT_CANCELLED) {
                ExportStatus::Cancelled
            } else {
                ExportStatus::Failed
            };
            failure(status, kind.as_deref(), reason)
        }
    }
}

/// How a joined export ended.
enum Joined {
    Completed,
    Ended { status: ExportStatus, failure_type: &'static str, reason: String },
}

/// Follows an export that already runs under the target's workflow ID, through its record, until
/// the record is final: reads it (`ExportStatus` on the control queue), then waits on a timer,
/// longer each time. An export still unfinished well past its `deadline` counts as timed out.
async fn join_running(
    ctx: &WorkflowContext<UserBatchExportWorkflow>,
    export: ExportRef,
    deadline: Duration,
) -> Joined {
    if !ctx.is_replaying() {
        info!(export_id = %export.export_id, tenant = %export.tenant_id, environment = %export.environment_id,
              "batch target already running; joining it");
    }
    let mut options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(30))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(30))
                .maximum_attempts(10)
                .non_retryable_error_types(failure_type::NON_RETRYABLE)
                .build(),
        )
        .build();
    options.task_queue = control_queue_of_batch(ctx.task_queue()).map(str::to_owned);
    let (mut wait, mut waited) = (JOIN_FIRST_WAIT, Duration::ZERO);
    loop {
        match ctx.execute_activity(ExportActivities::status, export.clone(), options.clone()).await {
            Ok(Some(state)) => {
                if let Some(joined) = joined_outcome(state) {
                    return joined;
                }
            }
            // No record yet: its workflow has not prepared it.
            Ok(None) => {}
            Err(_) => {
                return Joined::Ended {
                    status: ExportStatus::Failed,
                    failure_type: failure_type::EXPORT_FAILED,
                    reason: "the running export's record could not be read".to_owned(),
                };
            }
        }
        if waited >= deadline + JOIN_MARGIN {
            return Joined::Ended {
                status: ExportStatus::Failed,
                failure_type: failure_type::EXPORT_TIMED_OUT,
                reason: "the running export did not finish within its deadline".to_owned(),
            };
        }
        ctx.timer(wait).await;
        waited += wait;
        wait = (wait * 2).min(JOIN_MAX_WAIT);
    }
}

/// The outcome a final record tells; `None` while it is unfinished.
fn joined_outcome(state: ExportState) -> Option<Joined> {
    let reason =
        |fallback: &str| state.error.as_ref().map_or_else(|| fallback.to_owned(), |e| e.message.clone());
    match state.status {
        ExportStatus::Pending | ExportStatus::Running => None,
        ExportStatus::Completed | ExportStatus::Expired => Some(Joined::Completed),
        ExportStatus::Cancelled => Some(Joined::Ended {
            status: ExportStatus::Cancelled,
            failure_type: failure_type::EXPORT_CANCELLED,
            reason: "the export was cancelled".to_owned(),
        }),
        ExportStatus::Failed => {
            let failure_type = match state.error.as_ref().map(|e| e.kind) {
                Some(FailureKind::Validation) => failure_type::VALIDATION_FAILED,
                Some(FailureKind::Timeout) => failure_type::EXPORT_TIMED_OUT,
                _ => failure_type::EXPORT_FAILED,
            };
            Some(Joined::Ended {
                status: ExportStatus::Failed,
                failure_type,
                reason: truncate(reason(FailureKind::Internal.public_message())),
            })
        }
    }
}

/// The failure type and message of a failed child, from its application failure when it has one.
fn child_failure(err: &ChildWorkflowExecutionError) -> (Option<String>, String) {
    if err.as_timeout().is_some() {
        return (Some(failure_type::EXPORT_TIMED_OUT.to_owned()), "the export timed out".to_owned());
    }
    match err.cause() {
        Some(IncomingError::Application(app)) => {
            // The export workflows attach the `ExportFailure`; its message is the reason.
            let message = app
                .details::<ExportFailure>()
                .ok()
                .flatten()
                .map(|failure| failure.message)
                // Anything else is someone else's words: tenants read batch results.
                .unwrap_or_else(|| FailureKind::Internal.public_message().to_owned());
            (app.type_name().map(str::to_owned), message)
        }
        Some(_) | None => (None, FailureKind::Internal.public_message().to_owned()),
    }
}

fn truncate(mut reason: String) -> String {
    if reason.len() > MAX_REASON_LEN {
        let cut = (0..=MAX_REASON_LEN).rev().find(|i| reason.is_char_boundary(*i)).unwrap_or(0);
        reason.truncate(cut);
        reason.push('…');
    }
    reason
}

/// A non-retryable failure of the batch workflow itself (its input cannot be run).
fn invalid_input(message: String) -> ApplicationFailure {
    ApplicationFailure::builder(anyhow::anyhow!(message))
        .type_name(failure_type::VALIDATION_FAILED.to_owned())
        .non_retryable(true)
        .build()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;

    #[test]
    fn the_registered_name_is_the_contract() {
        assert_eq!(UserBatchExportWorkflow::name(), BATCH_WORKFLOW_TYPE);
    }

    #[test]
    fn a_minimal_input_decodes_with_defaults() {
        let input: BatchWorkflowInput = serde_json::from_value(json!({
            "batch_id": "0190f5c3-0000-7000-8000-000000000001", "targets": ["acme/prod"],
            "request": {"format": "csv"}, "concurrency": 2
        }))
        .unwrap();
        assert_eq!(input.targets_per_run, DEFAULT_TARGETS_PER_RUN);
        assert_eq!(input.progress, BatchProgress::default());
        let wire = serde_json::to_value(&input).unwrap();
        assert_eq!(serde_json::from_value::<BatchWorkflowInput>(wire).unwrap(), input);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let cut = truncate("é".repeat(400));
        assert!(cut.len() <= MAX_REASON_LEN + '…'.len_utf8() && cut.ends_with('…'));
        assert_eq!(truncate("short".to_owned()), "short");
    }
}
