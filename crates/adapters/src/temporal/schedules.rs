//! [`TemporalScheduler`]: the `Scheduler` port on Temporal Schedules (not the legacy
//! `CronSchedule` start option). Each schedule is a Temporal schedule named
//! [`ScheduleId::temporal_schedule_id`], with overlap policy skip, whose action starts
//! `UserDataExportWorkflow` with the seed-shaped input and the workflow ID prefix
//! [`ScheduleId::workflow_id_prefix`]. Temporal names each run `{prefix}-{scheduled time}` and
//! the workflow derives its export from that ID, which is the export
//! `ExportId::for_schedule_fire` names: the in-process scheduler and Temporal agree.
//! The action also carries the export search attributes (origin `schedule`) and memo, so the
//! schedule is written with raw `CreateSchedule`/`UpdateSchedule` requests.

use std::time::SystemTime;

use anyhow::anyhow;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{ExecutionPolicy, ExportId, ExportOrigin, ExportSchedule, ScheduleId, Scope};
use futures::StreamExt;
use ports::{PortError, Presence, Scheduler};
use serde_json::{Map, Value};
use temporalio_client::schedules::{
    DeleteScheduleOptions, ListSchedulesOptions, PauseScheduleOptions, ScheduleError, UnpauseScheduleOptions,
};
use temporalio_client::tonic::{Code, IntoRequest, Status};
use temporalio_client::{Client, NamespacedClient};
use temporalio_common::protos::temporal::api::common::v1::{Payloads, WorkflowType};
use temporalio_common::protos::temporal::api::enums::v1::ScheduleOverlapPolicy as ProtoOverlapPolicy;
use temporalio_common::protos::temporal::api::schedule::v1::schedule_action::Action;
use temporalio_common::protos::temporal::api::schedule::v1::{
    Schedule as ProtoSchedule, ScheduleAction as ProtoScheduleAction, SchedulePatch, SchedulePolicies,
    ScheduleSpec as ProtoScheduleSpec, ScheduleState, TriggerImmediatelyRequest,
};
use temporalio_common::protos::temporal::api::taskqueue::v1::TaskQueue;
use temporalio_common::protos::temporal::api::workflow::v1::NewWorkflowExecutionInfo;
use temporalio_common::protos::temporal::api::workflowservice::v1::{
    CreateScheduleRequest, DescribeScheduleRequest, GetSystemInfoRequest, PatchScheduleRequest,
    UpdateScheduleRequest,
};
use tracing::{info, warn};

use super::orchestrator::{RPC_TIMEOUT, bounded, rpc_options, status_error};
use super::search::{export_memo_proto, export_search_attributes, json_payload, request_format};
use super::types::{ExportWorkflowInput, WORKFLOW_TYPE};

/// Schedules on a Temporal cluster; fires run on the workers polling `task_queue`. Cheap to
/// clone.
#[derive(Clone)]
pub struct TemporalScheduler {
    client: Client,
    task_queue: String,
    policy: ExecutionPolicy,
}

impl std::fmt::Debug for TemporalScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TemporalScheduler")
            .field("namespace", &self.client.options().namespace)
            .field("task_queue", &self.task_queue)
            .finish_non_exhaustive()
    }
}

impl TemporalScheduler {
    /// On an existing client (the orchestrator's, so both share one connection and namespace).
    /// `policy` is sent with every fire, as the orchestrator sends it with every export.
    pub fn new(client: Client, task_queue: impl Into<String>, policy: ExecutionPolicy) -> Self {
        Self { client, task_queue: task_queue.into(), policy }
    }

    /// The whole Temporal schedule of `schedule`, built here rather than with the SDK's types,
    /// whose action cannot carry search attributes or a memo: every fire is then found by
    /// `UserexportOrigin='schedule'` and its scope.
    fn definition(&self, schedule: &ExportSchedule, with_attributes: bool) -> ProtoSchedule {
        let input = fire_input(schedule, self.policy);
        let request = input.as_object().cloned().unwrap_or_default();
        let search_attributes = with_attributes.then(|| {
            let scope = schedule.scope.to_string();
            export_search_attributes(&scope, request_format(&request), ExportOrigin::Schedule).into_proto()
        });
        let start = NewWorkflowExecutionInfo {
            workflow_id: schedule.id.workflow_id_prefix(&schedule.scope),
            workflow_type: Some(WorkflowType { name: WORKFLOW_TYPE.to_owned() }),
            task_queue: Some(TaskQueue { name: self.task_queue.clone(), ..TaskQueue::default() }),
            input: Some(Payloads { payloads: vec![json_payload(&input)] }),
            memo: Some(export_memo_proto(&request)),
            search_attributes,
            ..NewWorkflowExecutionInfo::default()
        };
        #[allow(deprecated)]
        let spec = ProtoScheduleSpec {
            cron_string: vec![schedule.cron.as_str().to_owned()],
            timezone_name: schedule.timezone.name().to_owned(),
            ..ProtoScheduleSpec::default()
        };
        ProtoSchedule {
            spec: Some(spec),
            action: Some(ProtoScheduleAction { action: Some(Action::StartWorkflow(start)) }),
            policies: Some(SchedulePolicies {
                overlap_policy: ProtoOverlapPolicy::Skip as i32,
                ..SchedulePolicies::default()
            }),
            state: Some(ScheduleState {
                paused: schedule.paused,
                notes: schedule.note.clone().unwrap_or_default(),
                ..ScheduleState::default()
            }),
        }
    }

    /// Creates the schedule, or replaces the definition of an existing one.
    async fn put(&self, schedule: &ExportSchedule, with_attributes: bool) -> Result<(), Status> {
        let schedule_id = schedule.id.temporal_schedule_id(&schedule.scope);
        let mut service = self.client.connection().workflow_service();
        let mut create = CreateScheduleRequest {
            namespace: self.client.namespace(),
            schedule_id: schedule_id.clone(),
            schedule: Some(self.definition(schedule, with_attributes)),
            identity: self.client.identity(),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..CreateScheduleRequest::default()
        }
        .into_request();
        create.set_timeout(RPC_TIMEOUT);
        let Err(status) = timed(service.create_schedule(create)).await else {
            info!(schedule_id, cron = %schedule.cron, timezone = %schedule.timezone, "Temporal schedule created");
            return Ok(());
        };
        if status.code() != Code::AlreadyExists {
            return Err(status);
        }
        let mut update = UpdateScheduleRequest {
            namespace: self.client.namespace(),
            schedule_id,
            schedule: Some(self.definition(schedule, with_attributes)),
            identity: self.client.identity(),
            request_id: uuid::Uuid::new_v4().to_string(),
            ..UpdateScheduleRequest::default()
        }
        .into_request();
        update.set_timeout(RPC_TIMEOUT);
        timed(service.update_schedule(update)).await.map(|_| ())
    }
}

/// An RPC bounded a little past [`RPC_TIMEOUT`]; past it, a `DeadlineExceeded` status.
async fn timed<T>(call: impl Future<Output = Result<T, Status>>) -> Result<T, Status> {
    tokio::time::timeout(RPC_TIMEOUT + std::time::Duration::from_secs(1), call)
        .await
        .unwrap_or_else(|_| Err(Status::deadline_exceeded("Temporal did not answer in time")))
}

/// The workflow input of every fire: the seed's shape (`tenant_id`, `environment_id` and the
/// request fields) plus the policy; no export ID, so the workflow derives it from its run's ID.
pub fn fire_input(schedule: &ExportSchedule, policy: ExecutionPolicy) -> Value {
    let request = match serde_json::to_value(&schedule.spec) {
        Ok(Value::Object(map)) => map,
        _ => Map::new(),
    };
    let input = ExportWorkflowInput {
        tenant_id: schedule.scope.tenant.to_string(),
        environment_id: schedule.scope.environment.to_string(),
        export_id: None,
        policy: Some(policy),
        attempt_offset: None,
        request,
    };
    serde_json::to_value(input).unwrap_or(Value::Null)
}

/// A schedule operation's error as a `PortError` (transport trouble is `Unavailable`).
fn schedule_error(err: ScheduleError, what: &str) -> PortError {
    match err {
        ScheduleError::Rpc(status) => status_error(status, what),
        other => PortError::Other(anyhow!(other).context(what.to_owned())),
    }
}

fn is_not_found(err: &ScheduleError) -> bool {
    matches!(err, ScheduleError::Rpc(status) if status.code() == Code::NotFound)
}

#[async_trait]
impl Scheduler for TemporalScheduler {
    async fn upsert(&self, schedule: &ExportSchedule) -> Result<(), PortError> {
        match self.put(schedule, true).await {
            Ok(()) => Ok(()),
            Err(status)
                if status.code() == Code::InvalidArgument
                    && status.message().to_ascii_lowercase().contains("search attribute") =>
            {
                warn!(reason = status.message(), "schedule fires run without the export search attributes");
                self.put(schedule, false)
                    .await
                    .map_err(|status| status_error(status, "creating the schedule"))
            }
            Err(status) => Err(status_error(status, "creating or updating the schedule")),
        }
    }

    async fn set_paused(&self, scope: &Scope, id: ScheduleId, paused: bool) -> Result<Presence, PortError> {
        let handle = self.client.get_schedule_handle(id.temporal_schedule_id(scope));
        let result = if paused {
            let options = PauseScheduleOptions::builder().rpc_options(rpc_options()).build();
            bounded("pausing the schedule", handle.pause(Some("paused through the API"), options)).await?
        } else {
            let options = UnpauseScheduleOptions::builder().rpc_options(rpc_options()).build();
            bounded("resuming the schedule", handle.unpause(Some("resumed through the API"), options)).await?
        };
        match result {
            Ok(()) => Ok(Presence::Found),
            Err(err) if is_not_found(&err) => Ok(Presence::Missing),
            Err(err) => Err(schedule_error(err, "pausing or resuming the schedule")),
        }
    }

    async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<(), PortError> {
        let handle = self.client.get_schedule_handle(id.temporal_schedule_id(scope));
        let options = DeleteScheduleOptions::builder().rpc_options(rpc_options()).build();
        match bounded("deleting the schedule", handle.delete(options)).await? {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(schedule_error(err, "deleting the schedule")),
        }
    }

    async fn trigger(
        &self,
        schedule: &ExportSchedule,
        scheduled_at: DateTime<Utc>,
    ) -> Result<Presence, PortError> {
        // Raw PatchSchedule: the SDK's `trigger` cannot set the scheduled time, and that time
        // names the run (and so its export).
        let mut request = PatchScheduleRequest {
            namespace: self.client.namespace(),
            schedule_id: schedule.id.temporal_schedule_id(&schedule.scope),
            patch: Some(SchedulePatch {
                trigger_immediately: Some(TriggerImmediatelyRequest {
                    // A trigger runs whatever is still running, as in-process.
                    overlap_policy: ProtoOverlapPolicy::AllowAll as i32,
                    scheduled_time: Some(SystemTime::from(scheduled_at).into()),
                }),
                ..SchedulePatch::default()
            }),
            identity: self.client.identity(),
            request_id: uuid::Uuid::new_v4().to_string(),
        }
        .into_request();
        request.set_timeout(RPC_TIMEOUT);
        let mut service = self.client.connection().workflow_service();
        match bounded("triggering the schedule", service.patch_schedule(request)).await? {
            Ok(_) => Ok(Presence::Found),
            Err(status) if status.code() == Code::NotFound => Ok(Presence::Missing),
            Err(status) => Err(status_error(status, "triggering the schedule")),
        }
    }

    async fn running_fire(&self, scope: &Scope, id: ScheduleId) -> Result<Option<ExportId>, PortError> {
        let mut request = DescribeScheduleRequest {
            namespace: self.client.namespace(),
            schedule_id: id.temporal_schedule_id(scope),
        }
        .into_request();
        request.set_timeout(RPC_TIMEOUT);
        let mut service = self.client.connection().workflow_service();
        let described = match bounded("describing the schedule", service.describe_schedule(request)).await? {
            Ok(described) => described.into_inner(),
            Err(status) if status.code() == Code::NotFound => return Ok(None),
            Err(status) => return Err(status_error(status, "describing the schedule")),
        };
        // Temporal tracks running runs only where its overlap policy needs them (not the
        // triggers, which allow all), so the latest action counts too; the caller decides on the
        // export's record. Each run's workflow ID names its export, as for every fire.
        let info = described.info.unwrap_or_default();
        let latest = info
            .recent_actions
            .iter()
            .filter_map(|action| {
                let at = action.actual_time.as_ref().map(|t| (t.seconds, t.nanos));
                Some((at, action.start_workflow_result.as_ref()?))
            })
            .max_by_key(|(at, _)| *at)
            .map(|(_, run)| run);
        let run = info.running_workflows.first().or(latest);
        Ok(run.map(|run| ExportId::for_workflow_id(&run.workflow_id)))
    }

    async fn list(&self) -> Result<Vec<(Scope, ScheduleId)>, PortError> {
        let options = ListSchedulesOptions::builder().rpc_options(rpc_options()).build();
        let listing = async {
            let mut found = Vec::new();
            let mut stream = self.client.list_schedules(options);
            while let Some(summary) = stream.next().await {
                let summary = summary.map_err(|e| schedule_error(e, "listing schedules"))?;
                // Other applications' schedules in the namespace are not ours to touch.
                if let Some(named) = ScheduleId::from_temporal_schedule_id(summary.schedule_id()) {
                    found.push(named);
                }
            }
            Ok(found)
        };
        tokio::time::timeout(RPC_TIMEOUT * 6, listing).await.map_err(|_| {
            PortError::unavailable(anyhow!("listing schedules: Temporal did not answer in time"))
        })?
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::TimeZone;
    use domain::{ExportId, NewSchedule};
    use serde_json::json;

    use super::super::types::derived_export_id;
    use super::*;

    #[test]
    fn a_fire_run_by_temporal_is_the_export_the_in_process_scheduler_derives() {
        let scope = Scope::parse("acme/prod").unwrap();
        let id = ScheduleId::from_uuid(uuid::Uuid::now_v7());
        let at = Utc.with_ymd_and_hms(2026, 11, 25, 3, 0, 0).unwrap();
        // What Temporal names the run: the action's prefix, '-', the time in RFC 3339 (Go's
        // time.RFC3339 of a UTC time: whole seconds and "Z").
        let temporal_workflow_id = format!("{}-2026-11-25T03:00:00Z", id.workflow_id_prefix(&scope));
        assert_eq!(derived_export_id(&temporal_workflow_id), ExportId::for_schedule_fire(&scope, id, at));
    }

    #[test]
    fn the_fire_input_has_the_seed_shape_and_no_export_id() {
        let new = NewSchedule::from_json(&json!({"cron": "0 3 * * *", "request": {"format": "csv",
            "user_filters": {"status": "active"}}}))
        .unwrap();
        let schedule = ExportSchedule::new(
            ScheduleId::from_uuid(uuid::Uuid::now_v7()),
            Scope::parse("acme/prod").unwrap(),
            new,
            Utc::now(),
        );
        let input: ExportWorkflowInput =
            serde_json::from_value(fire_input(&schedule, ExecutionPolicy::default())).unwrap();
        assert_eq!((input.tenant_id.as_str(), input.environment_id.as_str()), ("acme", "prod"));
        assert_eq!(input.export_id, None);
        assert_eq!(input.request["format"], "csv");
        assert_eq!(input.request["user_filters"]["status"], json!(["active"]));
        assert_eq!(input.policy, Some(ExecutionPolicy::default()));
    }
}
