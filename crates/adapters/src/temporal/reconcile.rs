//! `ExportReconcileWorkflow`: every record settles. A system schedule
//! ([`ensure_reconcile_schedule`]) runs it every reconcile interval; its one activity,
//! `ReconcileExports`, is a pass of [`Reconciler`] with this cluster as the orchestrator: it
//! starts unfinished records that have no workflow, settles those whose workflow closed without
//! a word (terminated, timed out) and runs the notification step that a finished export missed.

// The macros generate marker types (one per activity or handler) without `Debug`.
#![allow(missing_debug_implementations)]

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use service::{ReconcileReport, Reconciler};
use temporalio_client::Client;
use temporalio_client::schedules::ScheduleAction;
use temporalio_common::RetryPolicy;
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{ActivityOptions, ApplicationFailure, WorkflowContext, WorkflowResult};
use tracing::info;

use super::retention::ensure_system_schedule;

/// The system schedule's ID (one per namespace).
pub const RECONCILE_SCHEDULE_ID: &str = "userexport-reconcile";
const RECONCILE_WORKFLOW_ID_PREFIX: &str = "userexport-reconcile";

/// Registers `ExportReconcileWorkflow` and its activity, when the worker has a reconciler.
pub(super) fn register(
    options: &mut temporalio_sdk::WorkerOptions,
    deps: &super::WorkerDeps,
) -> Result<(), temporalio_sdk::WorkflowRegistrationError> {
    if let Some(reconciler) = &deps.reconciler {
        options.register_workflow::<ExportReconcileWorkflow>()?;
        options.register_activities(ReconcileActivities { reconciler: Arc::clone(reconciler) });
    }
    Ok(())
}

/// What one run did (the [`ReconcileReport`] of its pass).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReconcileOutput {
    pub live: usize,
    /// Waiting for their scope's turn (admission); absent from runs recorded before it existed.
    #[serde(default)]
    pub queued: usize,
    pub started: usize,
    pub settled: usize,
    pub notified: usize,
    pub errors: usize,
}

impl From<ReconcileReport> for ReconcileOutput {
    fn from(r: ReconcileReport) -> Self {
        Self {
            live: r.live,
            queued: r.queued,
            started: r.started,
            settled: r.settled,
            notified: r.notified,
            errors: r.errors,
        }
    }
}

#[workflow]
#[derive(Debug, Default)]
pub struct ExportReconcileWorkflow;

#[workflow_methods]
impl ExportReconcileWorkflow {
    #[run(name = "ExportReconcileWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, _input: ()) -> WorkflowResult<ReconcileOutput> {
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(300))
            .retry_policy(
                RetryPolicy::builder()
                    .initial_interval(Duration::from_secs(1))
                    .backoff_coefficient(2.0)
                    .maximum_interval(Duration::from_secs(30))
                    .maximum_attempts(3)
                    .build(),
            )
            .build();
        let output = ctx.execute_activity(ReconcileActivities::reconcile_exports, (), options).await?;
        if !ctx.is_replaying() && output != ReconcileOutput::default() {
            info!(
                started = output.started,
                settled = output.settled,
                notified = output.notified,
                errors = output.errors,
                "reconcile run done"
            );
        }
        Ok(output)
    }
}

pub struct ReconcileActivities {
    reconciler: Arc<Reconciler>,
}

#[activities]
impl ReconcileActivities {
    /// One reconcile pass over every unfinished export.
    #[activity(name = "ReconcileExports")]
    pub async fn reconcile_exports(
        self: Arc<Self>,
        _ctx: ActivityContext,
        _input: (),
    ) -> Result<ReconcileOutput, ActivityError> {
        let report = self.reconciler.reconcile_once().await.map_err(|err| {
            ApplicationFailure::builder(format!("reconcile: {err:#}"))
                .type_name("ReconcileFailed".to_owned())
                .non_retryable(!err.is_retryable())
                .build()
        })?;
        Ok(report.into())
    }
}

/// Creates (or updates) the system schedule that runs `ExportReconcileWorkflow` every `every`.
///
/// # Errors
/// When Temporal refuses or cannot be reached.
pub async fn ensure_reconcile_schedule(
    client: &Client,
    task_queue: &str,
    every: Duration,
) -> anyhow::Result<()> {
    let action = || {
        ScheduleAction::start_workflow(
            ExportReconcileWorkflow::run,
            (),
            task_queue,
            RECONCILE_WORKFLOW_ID_PREFIX,
        )
    };
    ensure_system_schedule(
        client,
        RECONCILE_SCHEDULE_ID,
        action,
        every,
        "userexport: starts or settles exports left unfinished, sends missed notifications",
    )
    .await
}
