//! `UserBatchExportWorkflow` (seed pattern 5): one export request run for many tenant scopes.
//!
//! Each target runs as a child `UserDataExportWorkflow` whose workflow ID is its export's
//! ([`ExportId::for_batch`] of the batch and scope), started with the export ID and the request
//! so its `PrepareExport` creates the record if absent. Children run in chunks of `concurrency`
//! (`join_all`, deterministic); a failing child is counted with its reason and the batch goes
//! on. After `targets_per_run` targets the workflow continues as new, carrying the offset, the
//! counts and the failures, so its history stays bounded however many targets there are.
//!
//! Workflow code is deterministic: it decodes its input, derives IDs and starts children; the
//! children's activities touch the ports. No activities of its own.

// The macros generate marker types (one per workflow handler) without `Debug`.
#![allow(missing_debug_implementations)]

use domain::batch::MAX_CONCURRENCY;
use domain::{
    Batch, BatchId, ExecutionPolicy, ExportFailure, ExportId, ExportOrigin, ExportStatus, FailureKind, Scope,
};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use temporalio_common::error::IncomingError;
use temporalio_macros::{workflow, workflow_methods};
use temporalio_sdk::workflows::join_all;
use temporalio_sdk::{
    ApplicationFailure, ChildWorkflowExecutionError, ChildWorkflowOptions, ContinueAsNewOptions,
    ParentClosePolicy, WorkflowContext, WorkflowResult,
};
use tracing::info;

use super::search::{export_search_attributes, request_format};
use super::types::{ExportWorkflowInput, failure_type};
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
        for chunk in input.targets[start..end].chunks(concurrency) {
            let runs = chunk.iter().map(|target| run_target(view, batch_id, target, &input));
            for outcome in join_all(runs).await {
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

/// Runs one target's export as a child workflow; `None` when it completed.
async fn run_target(
    ctx: &WorkflowContext<UserBatchExportWorkflow>,
    batch_id: BatchId,
    target: &str,
    input: &BatchWorkflowInput,
) -> Option<BatchTargetFailure> {
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
    let options = ChildWorkflowOptions::builder()
        .workflow_id(export_id.workflow_id(&scope))
        // A cancelled or terminated batch asks its running exports to stop (they end cancelled).
        .parent_close_policy(ParentClosePolicy::RequestCancel)
        .maybe_search_attributes(input.search_attributes.then(|| {
            export_search_attributes(&scope.to_string(), request_format(&input.request), ExportOrigin::Batch)
        }))
        .build();
    let started = match ctx.start_child_workflow(UserDataExportWorkflow::run, child, options).await {
        Ok(started) => started,
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
