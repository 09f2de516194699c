//! `ExportRetentionWorkflow`: deletes the files of expired exports and marks their records
//! `expired`, in bounded batches (activity `ExpireExports`). A system schedule
//! ([`ensure_retention_schedule`]) runs it; the sweep is idempotent, so overlapping or repeated
//! runs are harmless.

// The macros generate marker types (one per activity or handler) without `Debug`.
#![allow(missing_debug_implementations)]

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use chrono::Utc;
use serde::{Deserialize, Serialize};
use service::{RetentionSweeper, SweepError, SweepReport};
use temporalio_client::Client;
use temporalio_client::schedules::{
    CreateScheduleOptions, ScheduleAction, ScheduleError, ScheduleOverlapPolicy, ScheduleSpec,
};
use temporalio_client::tonic::Code;
use temporalio_common::RetryPolicy;
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{ActivityOptions, ApplicationFailure, WorkflowContext, WorkflowResult};
use tracing::info;

/// The system schedule's ID (one per namespace).
pub const RETENTION_SCHEDULE_ID: &str = "userexport-retention";
const RETENTION_WORKFLOW_ID_PREFIX: &str = "userexport-retention";

/// Registers `ExportRetentionWorkflow` and its activities.
pub(super) fn register(
    options: &mut temporalio_sdk::WorkerOptions,
    deps: &super::WorkerDeps,
) -> Result<(), temporalio_sdk::WorkflowRegistrationError> {
    options.register_workflow::<ExportRetentionWorkflow>()?;
    options.register_activities(RetentionActivities {
        sweeper: RetentionSweeper::new(Arc::clone(&deps.exports), Arc::clone(&deps.storage)),
    });
    Ok(())
}

/// Input of `ExportRetentionWorkflow`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionInput {
    /// Exports expired per activity call.
    pub batch_limit: usize,
    /// Activity calls per run; what is left waits for the next run (bounds the history).
    pub max_batches: u32,
}

impl Default for RetentionInput {
    fn default() -> Self {
        Self { batch_limit: 500, max_batches: 20 }
    }
}

/// What a run expired.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionOutput {
    pub expired: u64,
    pub failed: u64,
    pub batches: u32,
}

#[workflow]
#[derive(Debug, Default)]
pub struct ExportRetentionWorkflow;

#[workflow_methods]
impl ExportRetentionWorkflow {
    #[run(name = "ExportRetentionWorkflow")]
    pub async fn run(
        ctx: &mut WorkflowContext<Self>,
        input: RetentionInput,
    ) -> WorkflowResult<RetentionOutput> {
        let mut output = RetentionOutput::default();
        while output.batches < input.max_batches.max(1) {
            let report: SweepReport = ctx
                .execute_activity(RetentionActivities::expire_exports, input.batch_limit, sweep_options())
                .await?;
            output.batches += 1;
            output.expired += report.expired;
            output.failed += report.failed;
            if !report.more {
                break;
            }
        }
        if !ctx.is_replaying() {
            info!(
                expired = output.expired,
                failed = output.failed,
                batches = output.batches,
                "retention run done"
            );
        }
        Ok(output)
    }
}

fn sweep_options() -> ActivityOptions {
    ActivityOptions::with_start_to_close_timeout(Duration::from_secs(300))
        .retry_policy(
            RetryPolicy::builder()
                .initial_interval(Duration::from_secs(1))
                .backoff_coefficient(2.0)
                .maximum_interval(Duration::from_secs(60))
                .maximum_attempts(5)
                .build(),
        )
        .build()
}

/// The retention activities: one bounded sweep per call.
pub struct RetentionActivities {
    sweeper: RetentionSweeper,
}

#[activities]
impl RetentionActivities {
    /// Expires at most `limit` due exports (files first, then records).
    #[activity(name = "ExpireExports")]
    pub async fn expire_exports(
        self: Arc<Self>,
        _ctx: ActivityContext,
        limit: usize,
    ) -> Result<SweepReport, ActivityError> {
        self.sweeper.sweep(Utc::now(), limit.clamp(1, 10_000)).await.map_err(|err| {
            let retryable = match &err {
                SweepError::Port(port) => port.is_retryable(),
                SweepError::Unknown(_) => true,
            };
            ApplicationFailure::builder(format!("retention sweep: {err:#}"))
                .type_name("RetentionSweepFailed".to_owned())
                .non_retryable(!retryable)
                .build()
                .into()
        })
    }
}

/// Creates the system schedule that runs `ExportRetentionWorkflow` every `every` on
/// `task_queue`, or moves an existing one to that interval. Overlapping runs are skipped.
///
/// # Errors
/// When Temporal refuses or cannot be reached.
pub async fn ensure_retention_schedule(
    client: &Client,
    task_queue: &str,
    every: Duration,
) -> anyhow::Result<()> {
    let action = || {
        ScheduleAction::start_workflow(
            ExportRetentionWorkflow::run,
            RetentionInput::default(),
            task_queue,
            RETENTION_WORKFLOW_ID_PREFIX,
        )
    };
    ensure_system_schedule(
        client,
        RETENTION_SCHEDULE_ID,
        action,
        every,
        "userexport: deletes expired export files",
    )
    .await
}

/// Creates system schedule `id` running `action` every `every`, or brings an existing one (made
/// by another worker or an earlier version) up to date. Overlapping runs are skipped.
pub(super) async fn ensure_system_schedule(
    client: &Client,
    id: &str,
    action: impl Fn() -> ScheduleAction,
    every: Duration,
    note: &str,
) -> anyhow::Result<()> {
    let options = CreateScheduleOptions::builder()
        .action(action())
        .spec(ScheduleSpec::from_interval(every))
        .overlap_policy(ScheduleOverlapPolicy::Skip)
        .note(note)
        .build();
    match client.create_schedule(id, options).await {
        Ok(_) => {
            info!(schedule_id = id, every_s = every.as_secs(), "system schedule created");
            Ok(())
        }
        Err(ScheduleError::Rpc(status)) if status.code() == Code::AlreadyExists => {
            let action = action();
            client
                .get_schedule_handle(id)
                .update(
                    move |u| {
                        u.set_spec(ScheduleSpec::from_interval(every)).set_action(action);
                    },
                    Default::default(),
                )
                .await
                .with_context(|| format!("updating the system schedule {id}"))?;
            Ok(())
        }
        Err(err) => Err(anyhow::Error::from(err).context(format!("creating the system schedule {id}"))),
    }
}
