//! The in-process orchestrator with the export service on the in-memory adapters: retries,
//! timeouts, concurrency, cancellation, recovery and graceful shutdown.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::contract::fakes::{FlakyStorage, SlowUsers};
use adapters::inprocess::InProcessOrchestrator;
use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use chrono::Utc;
use domain::{
    ExecutionPolicy, Export, ExportFormat, ExportId, ExportSpec, ExportStatus, FailureKind, IdempotencyKey,
    RetentionPolicy, RetryPolicy, Scope,
};
use ports::{ExportRepository, ExportStorage, Orchestrator, UserRepository, WaitOutcome};
use service::{
    DownloadError, ExportRunner, ExportService, ReconcileSettings, Reconciler, RequestError,
    RetentionSweeper, RunnerConfig,
};

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

fn fast_policy(max_attempts: u32) -> ExecutionPolicy {
    ExecutionPolicy {
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(10),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_millis(50),
            maximum_attempts: max_attempts,
        },
        deadline: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(5),
    }
}

struct System {
    runner: Arc<ExportRunner>,
    exports: Arc<MemoryExportRepository>,
    storage: Arc<dyn ExportStorage>,
    orchestrator: InProcessOrchestrator,
    service: ExportService,
}

fn system_with(
    users: Arc<dyn UserRepository>,
    storage: Arc<dyn ExportStorage>,
    exports: Arc<MemoryExportRepository>,
    policy: ExecutionPolicy,
    concurrency: usize,
) -> System {
    let runner = Arc::new(ExportRunner::new(
        users,
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig {
            segment_bytes: 4096,
            progress_interval: Duration::from_millis(20),
            ..RunnerConfig::default()
        },
    ));
    let orchestrator = InProcessOrchestrator::new(runner.clone(), exports.clone(), policy, concurrency);
    let service = ExportService::new(
        exports.clone(),
        storage.clone(),
        Arc::new(orchestrator.clone()),
        runner.clone(),
        Duration::from_secs(900),
    );
    System { runner, exports, storage, orchestrator, service }
}

fn users(count: u64) -> MemoryUserRepository {
    let repo = MemoryUserRepository::new();
    repo.seed_synthetic(&scope(), count);
    repo
}

fn slow_users(count: u64) -> Arc<SlowUsers> {
    Arc::new(SlowUsers { inner: Arc::new(users(count)), per_user: Duration::from_millis(1) })
}

fn system(users: Arc<dyn UserRepository>, policy: ExecutionPolicy, concurrency: usize) -> System {
    system_with(
        users,
        Arc::new(ObjectStorage::in_memory()),
        Arc::new(MemoryExportRepository::new()),
        policy,
        concurrency,
    )
}

fn csv() -> ExportSpec {
    ExportSpec::new(ExportFormat::Csv)
}

impl System {
    async fn record(&self, id: ExportId) -> Export {
        self.exports.get(&scope(), id).await.unwrap().unwrap()
    }
    /// Whether the completed export's object, or any object one of its attempts made, exists.
    async fn has_object(&self, export: &Export) -> bool {
        let attempts = (1..=export.attempt().max(1)).map(|n| export.attempt_key(n));
        for key in std::iter::once(export.object_key.clone()).chain(attempts) {
            if self.storage.open(&key).await.unwrap().is_some() {
                return true;
            }
        }
        false
    }
    async fn settle(&self, id: ExportId) -> Export {
        let outcome = self.orchestrator.wait(&scope(), id, Duration::from_secs(20)).await.unwrap();
        assert_eq!(outcome, WaitOutcome::Finished);
        self.record(id).await
    }
}

#[tokio::test]
async fn a_requested_export_runs_to_completion() {
    let sys = system(Arc::new(users(300)), fast_policy(3), 2);
    let requested = sys.service.request(&scope(), csv(), None).await.unwrap();
    assert!(requested.created);
    assert_eq!(requested.export.status(), ExportStatus::Pending);
    let done = sys.settle(requested.export.id).await;
    assert_eq!(done.status(), ExportStatus::Completed);
    assert_eq!(done.outcome().unwrap().record_count, 300);
    assert!(sys.has_object(&done).await);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_same_export_and_rejects_a_different_request() {
    let sys = system(Arc::new(users(50)), fast_policy(3), 2);
    let key = IdempotencyKey::parse("nightly-2024-05-01").unwrap();
    let first = sys.service.request(&scope(), csv(), Some(key.clone())).await.unwrap();
    let again = sys.service.request(&scope(), csv(), Some(key.clone())).await.unwrap();
    assert!(first.created && !again.created);
    assert_eq!(first.export.id, again.export.id);

    let mut other = csv();
    other.limit = Some(1);
    match sys.service.request(&scope(), other, Some(key)).await {
        Err(RequestError::IdempotencyMismatch { existing, .. }) => assert_eq!(existing, first.export.id),
        other => panic!("expected a mismatch, got {other:?}"),
    }
    assert_eq!(sys.settle(first.export.id).await.attempt(), 1, "ran once");
}

#[tokio::test]
async fn retryable_failures_are_retried_with_backoff_then_complete_once() {
    let storage = Arc::new(FlakyStorage::new(Arc::new(ObjectStorage::in_memory()), 2, true));
    let sys = system_with(Arc::new(users(100)), storage.clone(), Arc::default(), fast_policy(3), 2);
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let done = sys.settle(id).await;
    assert_eq!((done.status(), done.attempt()), (ExportStatus::Completed, 3));
    assert_eq!(storage.writers(), 3);
    assert!(sys.has_object(&done).await);
}

#[tokio::test]
async fn infrastructure_trouble_uses_up_no_attempt() {
    // Ten storage outages in a row, three attempts allowed: outages are not failures of the
    // export, so it completes.
    let storage = Arc::new(FlakyStorage::new(Arc::new(ObjectStorage::in_memory()), 10, true));
    let sys = system_with(Arc::new(users(100)), storage.clone(), Arc::default(), fast_policy(3), 2);
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let done = sys.settle(id).await;
    assert_eq!((done.status(), done.attempt(), done.consumed_attempts()), (ExportStatus::Completed, 11, 0));
    assert_eq!(storage.writers(), 11);
    assert!(sys.has_object(&done).await);
}

#[tokio::test]
async fn an_export_fails_with_the_last_reason_once_its_attempts_are_used_up() {
    // A refusal that is not an outage (a defect) uses up an attempt each time.
    let storage = Arc::new(FlakyStorage::new(Arc::new(ObjectStorage::in_memory()), 10, false));
    let sys = system_with(Arc::new(users(100)), storage.clone(), Arc::default(), fast_policy(3), 2);
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let done = sys.settle(id).await;
    assert_eq!((done.status(), done.attempt(), done.consumed_attempts()), (ExportStatus::Failed, 3, 3));
    assert_eq!(done.error().unwrap().kind, FailureKind::Storage);
    // Tenants read the public text; the storage's own words stay in the logs.
    assert_eq!(done.error().unwrap().message, FailureKind::Storage.public_message());
    assert!(!done.error().unwrap().message.contains("injected"));
    assert_eq!(storage.writers(), 3);
}

#[tokio::test]
async fn an_export_that_outlives_its_deadline_fails_with_a_timeout() {
    let policy = ExecutionPolicy { deadline: Duration::from_millis(300), ..fast_policy(2) };
    let sys = system(slow_users(1_000), policy, 2);
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let done = sys.settle(id).await;
    assert_eq!((done.status(), done.attempt()), (ExportStatus::Failed, 1));
    assert_eq!(done.error().unwrap().kind, FailureKind::Timeout);
    assert!(!sys.has_object(&done).await);
}

#[tokio::test]
async fn concurrency_is_bounded_and_queued_exports_can_be_cancelled() {
    let sys = system(slow_users(400), fast_policy(3), 1);
    let first = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let second = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(sys.record(first).await.status(), ExportStatus::Running);
    assert_eq!(sys.record(second).await.status(), ExportStatus::Pending, "waits for a free slot");

    let cancelled = sys.service.cancel(&scope(), second).await.unwrap();
    let cancelled = if cancelled.status().is_terminal() { cancelled } else { sys.settle(second).await };
    assert_eq!(cancelled.status(), ExportStatus::Cancelled);
    assert_eq!(sys.settle(first).await.status(), ExportStatus::Completed);
}

#[tokio::test]
async fn cancelling_a_running_export_ends_it_cancelled_without_an_object() {
    let sys = system(slow_users(2_000), fast_policy(3), 2);
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    tokio::time::sleep(Duration::from_millis(200)).await;
    sys.service.cancel(&scope(), id).await.unwrap();
    let done = sys.settle(id).await;
    assert_eq!(done.status(), ExportStatus::Cancelled);
    assert!(!sys.has_object(&done).await);
    assert!(matches!(sys.service.cancel(&scope(), id).await, Err(service::CancelError::AlreadyFinished(_))));
}

#[tokio::test]
async fn waiting_is_bounded() {
    let sys = system(slow_users(2_000), fast_policy(3), 2);
    let started = std::time::Instant::now();
    let requested =
        sys.service.request_and_wait(&scope(), csv(), None, Duration::from_millis(150)).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(2));
    assert!(!requested.export.status().is_terminal());
    let quick = system(Arc::new(users(10)), fast_policy(3), 2);
    let requested =
        quick.service.request_and_wait(&scope(), csv(), None, Duration::from_secs(10)).await.unwrap();
    assert_eq!(requested.export.status(), ExportStatus::Completed);
}

#[tokio::test]
async fn exports_left_unfinished_by_a_dead_process_are_resumed_at_start_up() {
    let exports = Arc::new(MemoryExportRepository::new());
    let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
    // What a crashed process leaves: one export accepted but never started, one mid-attempt.
    let pending = Export::new(ExportId::from_uuid(uuid::Uuid::now_v7()), scope(), csv(), None, Utc::now());
    let mut running =
        Export::new(ExportId::from_uuid(uuid::Uuid::now_v7()), scope(), csv(), None, Utc::now());
    exports.create_if_absent(&pending).await.unwrap();
    exports.create_if_absent(&running).await.unwrap();
    running.start_attempt(1, Utc::now()).unwrap();
    exports.update_if_status(&running, ExportStatus::Pending).await.unwrap();

    let sys = system_with(Arc::new(users(120)), storage, exports, fast_policy(3), 2);
    assert_eq!(sys.orchestrator.recover().await.unwrap(), 2);
    let a = sys.settle(pending.id).await;
    let b = sys.settle(running.id).await;
    assert_eq!((a.status(), a.attempt()), (ExportStatus::Completed, 1));
    assert_eq!((b.status(), b.attempt()), (ExportStatus::Completed, 2));
    assert_eq!(b.outcome().unwrap().record_count, 120);
}

#[tokio::test]
async fn shutdown_lets_short_exports_finish_and_leaves_long_ones_for_recovery() {
    let exports = Arc::new(MemoryExportRepository::new());
    let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
    let sys = system_with(slow_users(5_000), storage.clone(), exports.clone(), fast_policy(3), 2);
    let long = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    tokio::time::sleep(Duration::from_millis(100)).await;
    sys.orchestrator.shutdown(Duration::from_millis(200)).await;

    let left = sys.record(long).await;
    assert_eq!(left.status(), ExportStatus::Running, "interrupted, not cancelled or failed");
    assert!(!sys.has_object(&left).await);
    let refused = sys.service.request(&scope(), csv(), None).await;
    assert!(matches!(refused, Err(RequestError::Port(ref e)) if e.is_retryable()), "{refused:?}");
    assert!(sys.orchestrator.ping().await.is_err());

    // The next process picks it up.
    let next = system_with(Arc::new(users(5_000)), storage, exports, fast_policy(3), 2);
    next.orchestrator.recover().await.unwrap();
    let done = next.settle(long).await;
    assert_eq!((done.status(), done.attempt()), (ExportStatus::Completed, 2));

    let quick = system(Arc::new(users(10)), fast_policy(3), 2);
    let id = quick.service.request(&scope(), csv(), None).await.unwrap().export.id;
    quick.orchestrator.shutdown(Duration::from_secs(10)).await;
    assert_eq!(quick.record(id).await.status(), ExportStatus::Completed, "grace lets it finish");
}

#[tokio::test]
async fn starting_twice_runs_once() {
    let sys = system(Arc::new(users(100)), fast_policy(3), 2);
    let requested = sys.service.request(&scope(), csv(), None).await.unwrap();
    sys.orchestrator.start(&requested.export).await.unwrap();
    sys.orchestrator.start(&requested.export).await.unwrap();
    let done = sys.settle(requested.export.id).await;
    assert_eq!((done.status(), done.attempt()), (ExportStatus::Completed, 1));
}

#[tokio::test]
async fn other_tenants_cannot_see_or_cancel_an_export() {
    let sys = system(Arc::new(users(10)), fast_policy(3), 2);
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let globex = Scope::parse("globex/prod").unwrap();
    assert!(matches!(sys.service.get(&globex, id).await, Err(service::GetError::NotFound)));
    assert!(matches!(sys.service.cancel(&globex, id).await, Err(service::CancelError::NotFound)));
    assert!(matches!(sys.service.download(&globex, id).await, Err(service::DownloadError::NotFound)));
    sys.settle(id).await;
}

#[tokio::test]
async fn retention_deletes_due_files_marks_them_expired_and_downloads_answer_gone() {
    let sys = system(Arc::new(users(50)), fast_policy(3), 2);
    let mut short = csv();
    short.retention_days = Some(1);
    let kept = sys.service.request(&scope(), csv(), None).await.unwrap().export;
    let due = sys.service.request(&scope(), short, None).await.unwrap().export;
    let kept = sys.settle(kept.id).await;
    let due = sys.settle(due.id).await;
    let finished = due.finished_at().unwrap();
    assert_eq!(due.expires_at(), Some(finished + chrono::TimeDelta::days(1)));
    assert_eq!(kept.expires_at(), Some(kept.finished_at().unwrap() + chrono::TimeDelta::days(7)));

    let sweeper = RetentionSweeper::new(sys.exports.clone(), sys.storage.clone());
    let two_days_later = Utc::now() + chrono::TimeDelta::days(2);
    let report = sweeper.sweep(two_days_later, 100).await.unwrap();
    assert_eq!((report.expired, report.failed, report.more), (1, 0, false));

    let expired = sys.record(due.id).await;
    assert_eq!(expired.status(), ExportStatus::Expired);
    assert_eq!(expired.finished_at(), due.finished_at(), "expiry keeps the completion time");
    assert_eq!(expired.outcome(), due.outcome(), "the record keeps what was exported");
    assert!(!sys.has_object(&due).await, "the file is deleted");
    assert!(matches!(sys.service.download(&scope(), due.id).await, Err(DownloadError::Expired)));
    assert_eq!(sys.record(kept.id).await.status(), ExportStatus::Completed);
    assert!(sys.has_object(&kept).await);

    // Idempotent: nothing is due twice.
    assert_eq!(sweeper.sweep(two_days_later, 100).await.unwrap().expired, 0);
}

#[tokio::test]
async fn a_retention_above_the_cap_is_refused_when_requested() {
    let sys = system(Arc::new(users(5)), fast_policy(3), 1);
    let service = sys.service.with_retention(RetentionPolicy { default_days: 7, max_days: 30 });
    let mut long = csv();
    long.retention_days = Some(31);
    match service.request(&scope(), long, None).await {
        Err(RequestError::Invalid(errors)) => assert_eq!(errors.errors()[0].field, "retention_days"),
        other => panic!("expected a validation error, got {other:?}"),
    }
    let mut allowed = csv();
    allowed.retention_days = Some(30);
    service.request(&scope(), allowed, None).await.unwrap();
}

/// Cancels a fresh export once it has written `percent` % of `total` rows, and returns how long
/// its run took to stop after the cancel was asked. Asserts what a 202 promises: the record is
/// `cancelled` at once and stays so, and no attempt left an object.
async fn cancel_at(sys: &System, total: u64, percent: u64) -> Duration {
    let id = sys.service.request(&scope(), csv(), None).await.unwrap().export.id;
    let target = total * percent / 100;
    let deadline = Instant::now() + Duration::from_secs(60);
    while sys.record(id).await.progress().rows_written < target {
        assert!(!sys.record(id).await.status().is_terminal(), "finished before {percent} %");
        assert!(Instant::now() < deadline, "no progress to {percent} %");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let asked = Instant::now();
    let cancelled = sys.service.cancel(&scope(), id).await.unwrap();
    assert_eq!(cancelled.status(), ExportStatus::Cancelled, "cancelled before the answer");
    // The run is over once the orchestrator no longer holds it.
    while sys.orchestrator.inspect(&cancelled).await.unwrap() == ports::RunState::Live {
        assert!(asked.elapsed() < Duration::from_secs(10), "the run did not stop");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let stopped = asked.elapsed();
    let record = sys.record(id).await;
    assert_eq!(record.status(), ExportStatus::Cancelled);
    assert!(record.progress().rows_written < total, "stopped early");
    assert!(!sys.has_object(&record).await, "a cancelled export leaves no object");
    eprintln!("cancel at {percent} % (row {}): the run stopped {stopped:?} after the request", target);
    stopped
}

async fn cancels_stop_within_a_second(users: Arc<dyn UserRepository>, total: u64) {
    // An always-ready source: the encoding loop must yield for the cancel to be seen at all.
    let sys = system(users, fast_policy(3), 2);
    for percent in [10, 50, 90] {
        let stopped = cancel_at(&sys, total, percent).await;
        assert!(stopped < Duration::from_secs(1), "cancel at {percent} % took {stopped:?}");
    }
    // After completion, a cancel is a conflict that names the final status.
    let done = sys.service.request(&scope(), ExportSpec { limit: Some(10), ..csv() }, None).await.unwrap();
    assert_eq!(sys.settle(done.export.id).await.status(), ExportStatus::Completed);
    let refused = sys.service.cancel(&scope(), done.export.id).await;
    assert!(
        matches!(refused, Err(service::CancelError::AlreadyFinished(ExportStatus::Completed))),
        "{refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_at_10_50_and_90_percent_stop_within_a_second_with_memory_users() {
    cancels_stop_within_a_second(Arc::new(users(300_000)), 300_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_at_10_50_and_90_percent_stop_within_a_second_with_postgres_users() {
    let db = adapters::contract::pg::TestDatabase::create().await;
    adapters::postgres::seed_synthetic_users(&db.pool, &scope(), 300_000).await.unwrap();
    let users = Arc::new(adapters::postgres::PgUserRepository::new(db.pool.clone()));
    cancels_stop_within_a_second(users, 300_000).await;
    db.drop_now().await;
}

#[tokio::test]
async fn the_reconciler_starts_a_record_nobody_runs_and_sends_a_missed_notification() {
    let sys = system(Arc::new(users(100)), fast_policy(3), 2);
    // A pending record whose start was lost (stored, then the process died before starting it).
    let orphan = Export::new(ExportId::from_uuid(uuid::Uuid::now_v7()), scope(), csv(), None, Utc::now());
    sys.exports.create_if_absent(&orphan).await.unwrap();
    // A finished export whose notification step never ran.
    let spec = ExportSpec::from_json(&serde_json::json!({"format": "csv", "email_notify": true})).unwrap();
    let mut unnotified =
        Export::new(ExportId::from_uuid(uuid::Uuid::now_v7()), scope(), spec, None, Utc::now());
    sys.exports.create_if_absent(&unnotified).await.unwrap();
    unnotified.fail(domain::ExportFailure::new(FailureKind::Source, "corrupt row"), Utc::now()).unwrap();
    sys.exports.update_if_status(&unnotified, ExportStatus::Pending).await.unwrap();

    let settings = ReconcileSettings { start_grace: Duration::ZERO, notify_grace: Duration::ZERO };
    let reconciler = Reconciler::new(
        sys.exports.clone(),
        Arc::new(sys.orchestrator.clone()),
        sys.runner.clone(),
        settings,
    );
    let report = reconciler.reconcile_once().await.unwrap();

    assert_eq!((report.started, report.notified, report.errors), (1, 1, 0), "{report:?}");
    assert_eq!(sys.settle(orphan.id).await.status(), ExportStatus::Completed);
    let notified = sys.record(unnotified.id).await;
    assert_eq!(notified.notification().map(|n| n.status), Some(domain::NotificationStatus::Sent));
    assert!(!notified.notify_due());
    // A second pass finds nothing to do: the completed export's own step ran after its run.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let again = reconciler.reconcile_once().await.unwrap();
    assert_eq!((again.started, again.settled, again.notified), (0, 0, 0), "{again:?}");
}
