//! Schedules: the repositories against their contract (memory and PostgreSQL), the in-process
//! scheduler with the real in-process orchestrator, and the schedule service's guarantees
//! (record and timer together, reconcile).

use std::sync::Arc;
use std::time::Duration;

use adapters::contract::{self, fakes::SlowUsers, pg::TestDatabase};
use adapters::inprocess::InProcessOrchestrator;
use adapters::memory::{MemoryExportRepository, MemoryScheduleRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::postgres::PgScheduleRepository;
use adapters::scheduler::{FireOutcome, InProcessScheduler};
use adapters::storage::ObjectStorage;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{
    ExecutionPolicy, ExportId, ExportSchedule, ExportStatus, NewSchedule, ScheduleId, SchedulePatch, Scope,
};
use ports::{
    ExportQuery, ExportRepository, Orchestrator, PortError, Presence, ScheduleRepository, Scheduler,
    UserRepository, WaitOutcome,
};
use serde_json::json;
use service::{
    CreateScheduleError, ExportRunner, RunnerConfig, ScheduleService, ScheduledExports, TriggerScheduleError,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_schedule_repository_honours_the_contract() {
    contract::schedules::run_all(Arc::new(MemoryScheduleRepository::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_schedule_repository_honours_the_contract() {
    let db = TestDatabase::create().await;
    contract::schedules::run_all(Arc::new(PgScheduleRepository::new(db.pool.clone()))).await;
    db.drop_now().await;
}

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

fn at(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

struct System {
    exports: Arc<MemoryExportRepository>,
    orchestrator: InProcessOrchestrator,
    scheduler: InProcessScheduler,
    schedules: Arc<MemoryScheduleRepository>,
    service: ScheduleService,
}

fn system(users: Arc<dyn UserRepository>) -> System {
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(ObjectStorage::in_memory());
    let runner = Arc::new(ExportRunner::new(
        users,
        exports.clone(),
        storage,
        Arc::new(LogNotifier),
        RunnerConfig::default(),
    ));
    let orchestrator = InProcessOrchestrator::new(runner, exports.clone(), ExecutionPolicy::default(), 4);
    let fires = Arc::new(ScheduledExports::new(exports.clone(), Arc::new(orchestrator.clone())));
    let scheduler = InProcessScheduler::new(fires.clone());
    let schedules = Arc::new(MemoryScheduleRepository::new());
    let service = ScheduleService::new(schedules.clone(), Arc::new(scheduler.clone()), fires);
    System { exports, orchestrator, scheduler, schedules, service }
}

fn users(count: u64) -> Arc<MemoryUserRepository> {
    let repo = MemoryUserRepository::new();
    repo.seed_synthetic(&scope(), count);
    Arc::new(repo)
}

fn new_schedule(cron: &str) -> NewSchedule {
    NewSchedule::from_json(&json!({"cron": cron, "request": {"format": "csv"}})).unwrap()
}

async fn export_count(exports: &MemoryExportRepository) -> usize {
    exports.list(&scope(), &ExportQuery { status: None, limit: 100, after: None }).await.unwrap().items.len()
}

fn fired(outcome: FireOutcome) -> domain::Export {
    match outcome {
        FireOutcome::Fired(export) => *export,
        other => panic!("expected a fire, got {other:?}"),
    }
}

#[tokio::test]
async fn a_fire_runs_an_export_with_the_derived_id_to_completion() {
    let sys = system(users(50));
    let schedule = sys.service.create(&scope(), new_schedule("0 3 * * *"), None).await.unwrap().schedule;
    let when = at("2026-11-26T03:00:00Z");
    let export = fired(sys.scheduler.fire(&scope(), schedule.id, when).await.unwrap());
    assert_eq!(export.id, ExportId::for_schedule_fire(&scope(), schedule.id, when));
    assert_eq!(export.spec, schedule.spec);
    let waited = sys.orchestrator.wait(&scope(), export.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(waited, WaitOutcome::Finished);
    let done = sys.exports.get(&scope(), export.id).await.unwrap().unwrap();
    assert_eq!(done.status(), ExportStatus::Completed);
    assert_eq!(done.outcome().unwrap().record_count, 50);
}

#[tokio::test]
async fn the_same_fire_twice_is_one_export() {
    let sys = system(users(10));
    let schedule = sys.service.create(&scope(), new_schedule("*/5 * * * *"), None).await.unwrap().schedule;
    let when = at("2026-11-26T03:05:00Z");
    let first = fired(sys.scheduler.fire(&scope(), schedule.id, when).await.unwrap());
    // A duplicated fire, even while the first is still running, finds the first export.
    let second = fired(sys.scheduler.fire(&scope(), schedule.id, when).await.unwrap());
    assert_eq!(first.id, second.id);
    sys.orchestrator.wait(&scope(), first.id, Duration::from_secs(10)).await.unwrap();
    let third = fired(sys.scheduler.fire(&scope(), schedule.id, when).await.unwrap());
    assert_eq!(
        (third.id, third.status()),
        (first.id, ExportStatus::Completed),
        "a finished fire is not rerun"
    );
    assert_eq!(export_count(&sys.exports).await, 1);
}

#[tokio::test]
async fn a_paused_schedule_does_not_fire_until_resumed() {
    let sys = system(users(10));
    let schedule = sys.service.create(&scope(), new_schedule("* * * * *"), None).await.unwrap().schedule;
    let pause = SchedulePatch { paused: Some(true), ..SchedulePatch::default() };
    let paused = sys.service.update(&scope(), schedule.id, pause).await.unwrap();
    assert!(paused.paused);
    let when = at("2026-11-26T03:00:00Z");
    assert_eq!(sys.scheduler.fire(&scope(), schedule.id, when).await.unwrap(), FireOutcome::Paused);
    assert_eq!(export_count(&sys.exports).await, 0);
    let resume = SchedulePatch { paused: Some(false), ..SchedulePatch::default() };
    sys.service.update(&scope(), schedule.id, resume).await.unwrap();
    fired(sys.scheduler.fire(&scope(), schedule.id, when).await.unwrap());
    assert_eq!(export_count(&sys.exports).await, 1);
}

#[tokio::test]
async fn a_fire_is_skipped_while_the_previous_one_runs() {
    let slow = Arc::new(SlowUsers { inner: users(300), per_user: Duration::from_millis(5) });
    let sys = system(slow);
    let schedule = sys.service.create(&scope(), new_schedule("* * * * *"), None).await.unwrap().schedule;
    let first = fired(sys.scheduler.fire(&scope(), schedule.id, at("2026-11-26T03:00:00Z")).await.unwrap());
    let skipped = sys.scheduler.fire(&scope(), schedule.id, at("2026-11-26T03:01:00Z")).await.unwrap();
    assert_eq!(skipped, FireOutcome::Skipped { running: first.id });
    sys.orchestrator.wait(&scope(), first.id, Duration::from_secs(30)).await.unwrap();
    let next = fired(sys.scheduler.fire(&scope(), schedule.id, at("2026-11-26T03:02:00Z")).await.unwrap());
    assert_ne!(next.id, first.id);
    assert_eq!(export_count(&sys.exports).await, 2, "the skipped fire made no export");
}

#[tokio::test]
async fn a_trigger_runs_now_even_when_paused_and_reports_its_export() {
    let sys = system(users(10));
    let new = NewSchedule { paused: true, ..new_schedule("0 0 1 1 *") };
    let schedule = sys.service.create(&scope(), new, None).await.unwrap().schedule;
    let export = sys.service.trigger(&scope(), schedule.id).await.unwrap();
    let waited = sys.orchestrator.wait(&scope(), export.id, Duration::from_secs(10)).await.unwrap();
    assert_eq!(waited, WaitOutcome::Finished);
    assert_eq!(
        sys.exports.get(&scope(), export.id).await.unwrap().unwrap().status(),
        ExportStatus::Completed
    );
    let other = Scope::parse("globex/prod").unwrap();
    assert!(matches!(sys.service.trigger(&other, schedule.id).await, Err(TriggerScheduleError::NotFound)));
}

#[tokio::test]
async fn a_trigger_while_the_previous_fire_runs_is_refused_by_the_overlap_rule() {
    let slow = SlowUsers { inner: users(12), per_user: Duration::from_millis(200) };
    let sys = system(Arc::new(slow));
    let schedule = sys.service.create(&scope(), new_schedule("0 0 1 1 *"), None).await.unwrap().schedule;
    let first = sys.service.trigger(&scope(), schedule.id).await.unwrap();
    // The same second is the same fire: found again, not refused.
    let again = sys.service.trigger(&scope(), schedule.id).await;
    if let Ok(again) = again {
        assert_eq!(again.id, first.id);
    } else {
        assert!(matches!(again, Err(TriggerScheduleError::Overlap { running }) if running == first.id));
    }
    tokio::time::sleep(Duration::from_millis(1100)).await;
    for _ in 0..3 {
        match sys.service.trigger(&scope(), schedule.id).await {
            Err(TriggerScheduleError::Overlap { running }) => assert_eq!(running, first.id),
            other => panic!("expected the overlap refusal, got {other:?}"),
        }
    }
    assert_eq!(export_count(&sys.exports).await, 1, "a refused trigger starts nothing");

    let waited = sys.orchestrator.wait(&scope(), first.id, Duration::from_secs(20)).await.unwrap();
    assert_eq!(waited, WaitOutcome::Finished);
    let next = sys.service.trigger(&scope(), schedule.id).await.unwrap();
    assert_ne!(next.id, first.id, "once the previous fire finished, a trigger runs");
}

#[tokio::test(start_paused = true)]
async fn the_timer_fires_at_the_cron_time() {
    // Tokio's paused clock jumps through sleeps; chrono's clock does not, so the timer sleeps
    // until the next real minute boundary at most, which the paused clock skips at once.
    let sys = system(users(5));
    let schedule = sys.service.create(&scope(), new_schedule("* * * * *"), None).await.unwrap().schedule;
    let expected_after = Utc::now();
    let mut found = None;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let page =
            sys.exports.list(&scope(), &ExportQuery { status: None, limit: 10, after: None }).await.unwrap();
        if let Some(export) = page.items.first() {
            found = Some(export.clone());
            break;
        }
    }
    let export = found.expect("the every-minute schedule fired");
    let next = schedule.next_fire_after(expected_after).unwrap();
    assert_eq!(export.id, ExportId::for_schedule_fire(&scope(), schedule.id, next));
    sys.scheduler.shutdown();
}

#[tokio::test(start_paused = true)]
async fn a_paused_timer_does_not_fire_until_resumed() {
    let sys = system(users(5));
    let new = NewSchedule { paused: true, ..new_schedule("* * * * *") };
    let schedule = sys.service.create(&scope(), new, None).await.unwrap().schedule;
    // Well past the next real minute boundary on tokio's paused clock: nothing fires.
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(export_count(&sys.exports).await, 0);
    let resume = SchedulePatch { paused: Some(false), ..SchedulePatch::default() };
    sys.service.update(&scope(), schedule.id, resume).await.unwrap();
    for _ in 0..200 {
        if export_count(&sys.exports).await > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    assert_eq!(export_count(&sys.exports).await, 1, "the resumed timer fired");
    sys.scheduler.shutdown();
}

#[tokio::test]
async fn reconcile_rebuilds_timers_from_records_and_drops_orphans() {
    let sys = system(users(5));
    let kept = sys.service.create(&scope(), new_schedule("0 1 * * *"), None).await.unwrap().schedule;
    // A record whose timer was lost (e.g. the process restarted) and a timer without a record.
    let lost = ExportSchedule::new(
        ScheduleId::from_uuid(uuid::Uuid::now_v7()),
        scope(),
        new_schedule("0 2 * * *"),
        Utc::now(),
    );
    sys.schedules.create_if_absent(&lost).await.unwrap();
    let orphan = ExportSchedule::new(
        ScheduleId::from_uuid(uuid::Uuid::now_v7()),
        scope(),
        new_schedule("0 3 * * *"),
        Utc::now(),
    );
    sys.scheduler.upsert(&orphan).await.unwrap();

    let done = sys.service.reconcile().await.unwrap();
    assert_eq!((done.upserted, done.removed), (2, 1));
    let mut timers: Vec<ScheduleId> =
        sys.scheduler.list().await.unwrap().into_iter().map(|(_, id)| id).collect();
    timers.sort();
    let mut expected = vec![kept.id, lost.id];
    expected.sort();
    assert_eq!(timers, expected);
}

#[tokio::test]
async fn delete_removes_record_and_timer() {
    let sys = system(users(5));
    let schedule = sys.service.create(&scope(), new_schedule("0 1 * * *"), None).await.unwrap().schedule;
    sys.service.delete(&scope(), schedule.id).await.unwrap();
    assert!(sys.schedules.get(&scope(), schedule.id).await.unwrap().is_none());
    assert!(sys.scheduler.list().await.unwrap().is_empty());
    assert_eq!(sys.scheduler.fire(&scope(), schedule.id, Utc::now()).await.unwrap(), FireOutcome::Unknown);
}

/// A scheduler whose backend is down: every call is `Unavailable`.
struct DownScheduler;

#[async_trait]
impl Scheduler for DownScheduler {
    async fn upsert(&self, _: &ExportSchedule) -> Result<(), PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
    async fn set_paused(&self, _: &Scope, _: ScheduleId, _: bool) -> Result<Presence, PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
    async fn delete(&self, _: &Scope, _: ScheduleId) -> Result<(), PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
    async fn trigger(&self, _: &ExportSchedule, _: DateTime<Utc>) -> Result<Presence, PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
    async fn running_fire(&self, _: &Scope, _: ScheduleId) -> Result<Option<ExportId>, PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
    async fn list(&self) -> Result<Vec<(Scope, ScheduleId)>, PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
    async fn ping(&self) -> Result<(), PortError> {
        Err(PortError::unavailable(anyhow::anyhow!("scheduler down")))
    }
}

#[tokio::test]
async fn a_schedule_whose_timer_cannot_be_created_leaves_no_record() {
    let sys = system(users(5));
    let fires = Arc::new(ScheduledExports::new(sys.exports.clone(), Arc::new(sys.orchestrator.clone())));
    let service = ScheduleService::new(sys.schedules.clone(), Arc::new(DownScheduler), fires);
    match service.create(&scope(), new_schedule("0 1 * * *"), None).await {
        Err(CreateScheduleError::Port(err)) => assert!(err.is_retryable(), "{err:?}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    assert!(sys.schedules.list_all().await.unwrap().is_empty(), "the record was removed again");
}
