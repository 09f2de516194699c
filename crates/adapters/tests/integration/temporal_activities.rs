//! The Temporal activities in the SDK's `ActivityEnvironment` (no server): progress heartbeats,
//! cancellation, interruption, failure mapping, and the record bookkeeping of `PrepareExport`
//! and `FinishExport`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{BreakingUsers, FlakyStorage, SlowUsers, read_object};
use adapters::temporal::{
    ExportActivities, ExportHeartbeat, ExportRef, ExportUserDataInput, FinishInput, FinishOutcome,
    PrepareInput, failure_type,
};
use chrono::Utc;
use domain::{
    ExecutionPolicy, Export, ExportFailure, ExportFormat, ExportId, ExportSpec, ExportStatus, FailureKind,
    RetryPolicy, Scope,
};
use ports::{CreateOutcome, ExportRepository, ExportStorage, UserRepository};
use serde_json::{Map, Value, json};
use service::{ExportRunner, RunnerConfig};
use temporalio_sdk::ApplicationFailure;
use temporalio_sdk::activities::ActivityError;
use temporalio_sdk::testing::{ActivityEnvironment, ActivityEnvironmentError, TestActivityInfoOptions};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

fn policy() -> ExecutionPolicy {
    ExecutionPolicy {
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(1),
            maximum_attempts: 3,
        },
        deadline: Duration::from_secs(60),
        heartbeat_timeout: Duration::from_secs(3),
    }
}

/// Activities on the memory adapters, with small chunks so progress is reported often.
struct Fixture {
    exports: Arc<MemoryExportRepository>,
    storage: Arc<dyn ExportStorage>,
    shutdown: CancellationToken,
    activities: Option<ExportActivities>,
}

impl Fixture {
    fn new(users: Arc<dyn UserRepository>, storage: Arc<dyn ExportStorage>) -> Self {
        Self::sharing(users, storage, Arc::new(MemoryExportRepository::new()))
    }

    /// Activities of another worker on the same records and storage.
    fn sharing(
        users: Arc<dyn UserRepository>,
        storage: Arc<dyn ExportStorage>,
        exports: Arc<MemoryExportRepository>,
    ) -> Self {
        let runner = Arc::new(ExportRunner::new(
            users,
            exports.clone(),
            storage.clone(),
            Arc::new(LogNotifier),
            RunnerConfig {
                segment_bytes: 1024,
                progress_interval: Duration::ZERO,
                ..RunnerConfig::default()
            },
        ));
        let shutdown = CancellationToken::new();
        let activities = ExportActivities::new(runner, exports.clone(), policy(), shutdown.clone());
        Self { exports, storage, shutdown, activities: Some(activities) }
    }

    fn with_users(count: u64) -> Self {
        let users = MemoryUserRepository::new();
        users.seed_synthetic(&scope(), count);
        Self::new(Arc::new(users), Arc::new(ObjectStorage::in_memory()))
    }

    fn environment(&mut self, on_heartbeat: impl Fn(u64) + Send + Sync + 'static) -> ActivityEnvironment {
        self.environment_after(None, move |beat| on_heartbeat(beat.rows_written))
    }

    /// An environment whose attempt follows one that heartbeat `previous`; `on_heartbeat` sees
    /// every heartbeat's details.
    fn environment_after(
        &mut self,
        previous: Option<ExportHeartbeat>,
        on_heartbeat: impl Fn(&ExportHeartbeat) + Send + Sync + 'static,
    ) -> ActivityEnvironment {
        let builder = ActivityEnvironment::builder_with_default();
        let builder = match previous {
            Some(details) => builder.heartbeat_details(details).unwrap(),
            None => builder,
        };
        builder
            .register_activities(self.activities.take().expect("one environment per fixture"))
            .on_heartbeat(move |details| {
                let beat =
                    details.downcast_ref::<ExportHeartbeat>().expect("heartbeats carry ExportHeartbeat");
                on_heartbeat(beat);
            })
            .info(
                TestActivityInfoOptions::builder()
                    .attempt(1)
                    .heartbeat_timeout(Duration::from_millis(300))
                    .deadline(None)
                    .build(),
            )
            .build()
    }

    async fn pending_export(&self) -> Export {
        let export = Export::new(
            ExportId::from_uuid(Uuid::new_v4()),
            scope(),
            ExportSpec::new(ExportFormat::Csv),
            None,
            Utc::now(),
        );
        assert_eq!(self.exports.create_if_absent(&export).await.unwrap(), CreateOutcome::Created);
        export
    }

    async fn record(&self, export: &Export) -> Export {
        self.exports.get(&export.scope, export.id).await.unwrap().expect("the record exists")
    }
}

fn attempt_input(export: &Export) -> ExportUserDataInput {
    ExportUserDataInput { export: ExportRef::new(&export.scope, export.id), attempt_offset: 0, policy: None }
}

/// The application failure an activity returned.
fn application_failure(
    result: Result<impl std::fmt::Debug, ActivityEnvironmentError>,
) -> Box<ApplicationFailure> {
    match result {
        Err(ActivityEnvironmentError::Activity(ActivityError::Application(failure))) => failure,
        other => panic!("expected an application failure, got {other:?}"),
    }
}

#[tokio::test]
async fn an_attempt_reports_progress_as_heartbeats_and_returns_the_outcome() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 3000);
    let yielding = SlowUsers { inner: Arc::new(users), per_user: Duration::ZERO };
    let mut fixture = Fixture::new(Arc::new(yielding), Arc::new(ObjectStorage::in_memory()));
    let export = fixture.pending_export().await;
    let beats = Arc::new(Mutex::new(Vec::new()));
    let seen = beats.clone();
    let env = fixture.environment(move |rows| seen.lock().unwrap().push(rows));

    let output = env.run(ExportActivities::export_user_data, attempt_input(&export)).await.unwrap();

    assert_eq!((output.status, output.record_count), (ExportStatus::Completed, 3000));
    assert_eq!(output.export_id, export.id.to_string());
    let key = domain::ObjectKey::from_stored(output.object_key.clone());
    assert_eq!(key, export.attempt_key(1), "the attempt's own key");
    let object = read_object(fixture.storage.as_ref(), &key).await.expect("the object");
    assert_eq!(output.bytes, object.len() as u64);
    assert_eq!(csv::Reader::from_reader(object.as_slice()).records().count(), 3000);

    let beats = beats.lock().unwrap().clone();
    assert!(beats.iter().any(|&rows| rows > 0 && rows < 3000), "progress while running: {beats:?}");
    assert!(beats.windows(2).all(|w| w[0] <= w[1]), "rows only grow: {beats:?}");
    assert!(beats.iter().all(|&rows| rows <= 3000));
    let record = fixture.record(&export).await;
    assert_eq!((record.status(), record.attempt()), (ExportStatus::Completed, 1));
}

/// Temporal's own way to resume: the next attempt reads the last heartbeat's details and goes on
/// from their checkpoint (here the record's is removed first, so the heartbeat is the only
/// source), and the file is the uninterrupted one's.
#[tokio::test]
async fn a_retried_attempt_resumes_from_the_checkpoint_in_its_heartbeat_details() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 3000);
    let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());

    let mut whole = Fixture::new(Arc::new(users.clone()), storage.clone());
    let export = whole.pending_export().await;
    let env = whole.environment(|_| {});
    let uninterrupted = env.run(ExportActivities::export_user_data, attempt_input(&export)).await.unwrap();

    let breaking: Arc<dyn UserRepository> = Arc::new(BreakingUsers::new(users, [2_000]));
    let mut fixture = Fixture::new(breaking.clone(), storage.clone());
    let export = fixture.pending_export().await;
    let beats = Arc::new(Mutex::new(Vec::new()));
    let seen = beats.clone();
    let env = fixture.environment_after(None, move |beat| seen.lock().unwrap().push(beat.clone()));
    let err = env.run(ExportActivities::export_user_data, attempt_input(&export)).await.unwrap_err();
    let err = format!("{err:?}");
    assert!(
        err.contains(domain::FailureKind::Source.public_message()) && !err.contains("connection reset"),
        "{err}"
    );
    let last = beats.lock().unwrap().last().cloned().expect("heartbeats");
    let checkpoint = last.checkpoint.clone().expect("a checkpoint in the heartbeat");
    assert!(checkpoint.rows > 1_000 && checkpoint.rows <= 2_000, "{checkpoint:?}");

    let mut record = fixture.record(&export).await;
    record.clear_checkpoint();
    fixture.exports.update_if_status(&record, ExportStatus::Running).await.unwrap();
    let mut second = Fixture::sharing(breaking, storage, fixture.exports.clone());
    let env = second.environment_after(Some(last), |_| {});
    let input = ExportUserDataInput { attempt_offset: 1, ..attempt_input(&export) };
    let resumed = env.run(ExportActivities::export_user_data, input).await.unwrap();
    let record = fixture.record(&export).await;
    assert_eq!(record.resumed_from_row(), Some(checkpoint.rows));
    assert_eq!((resumed.sha256, resumed.bytes), (uninterrupted.sha256, uninterrupted.bytes));
}

#[tokio::test]
async fn heartbeats_keep_coming_while_rows_come_slowly() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 3);
    let slow = SlowUsers { inner: Arc::new(users), per_user: Duration::from_millis(400) };
    let mut fixture = Fixture::new(Arc::new(slow), Arc::new(ObjectStorage::in_memory()));
    let export = fixture.pending_export().await;
    let beats = Arc::new(Mutex::new(0_usize));
    let seen = beats.clone();
    // Heartbeat timeout 300 ms: the ticker beats every 100 ms although no chunk is written.
    let env = fixture.environment(move |_| *seen.lock().unwrap() += 1);

    env.run(ExportActivities::export_user_data, attempt_input(&export)).await.unwrap();

    let beats = *beats.lock().unwrap();
    assert!(beats >= 8, "about 12 heartbeats in 1.2 s expected, saw {beats}");
}

#[tokio::test]
async fn cancelling_the_activity_stops_it_without_an_object_and_leaves_the_record_to_the_workflow() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 2000);
    let slow = SlowUsers { inner: Arc::new(users), per_user: Duration::from_millis(2) };
    let mut fixture = Fixture::new(Arc::new(slow), Arc::new(ObjectStorage::in_memory()));
    let export = fixture.pending_export().await;
    let progressed = Arc::new(Notify::new());
    let notify = progressed.clone();
    let env = fixture.environment(move |rows| {
        if rows > 0 {
            notify.notify_one();
        }
    });

    let (result, ()) =
        tokio::join!(env.run(ExportActivities::export_user_data, attempt_input(&export)), async {
            progressed.notified().await;
            env.cancel();
        });

    assert!(
        matches!(result, Err(ActivityEnvironmentError::Activity(ActivityError::Cancelled { .. }))),
        "{result:?}"
    );
    assert_eq!(read_object(fixture.storage.as_ref(), &export.object_key).await, None);
    // The SDK does not say why an activity is cancelled (a missed heartbeat looks the same as a
    // user's cancel), so the attempt only stops; the workflow records a cancel itself.
    let record = fixture.record(&export).await;
    assert_eq!(record.status(), ExportStatus::Running);
    assert!(record.progress().rows_written < 2000);
}

#[tokio::test]
async fn a_worker_shutdown_interrupts_the_attempt_retryably_and_leaves_the_record_running() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 2000);
    let slow = SlowUsers { inner: Arc::new(users), per_user: Duration::from_millis(2) };
    let mut fixture = Fixture::new(Arc::new(slow), Arc::new(ObjectStorage::in_memory()));
    let export = fixture.pending_export().await;
    let progressed = Arc::new(Notify::new());
    let notify = progressed.clone();
    let env = fixture.environment(move |rows| {
        if rows > 0 {
            notify.notify_one();
        }
    });
    let shutdown = fixture.shutdown.clone();

    let (result, ()) =
        tokio::join!(env.run(ExportActivities::export_user_data, attempt_input(&export)), async {
            progressed.notified().await;
            shutdown.cancel();
        });

    let failure = application_failure(result);
    assert_eq!(failure.type_name(), Some(failure_type::INTERRUPTED));
    assert!(!failure.is_non_retryable());
    assert_eq!(read_object(fixture.storage.as_ref(), &export.object_key).await, None);
    let record = fixture.record(&export).await;
    assert_eq!((record.status(), record.attempt()), (ExportStatus::Running, 1), "left for the next attempt");
}

#[tokio::test]
async fn a_retryable_failure_is_retryable_and_carries_the_reason() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 10);
    let storage = FlakyStorage::new(Arc::new(ObjectStorage::in_memory()), 1, true);
    let mut fixture = Fixture::new(Arc::new(users), Arc::new(storage));
    let export = fixture.pending_export().await;
    let env = fixture.environment(|_| {});

    let failure =
        application_failure(env.run(ExportActivities::export_user_data, attempt_input(&export)).await);

    assert_eq!(failure.type_name(), Some(failure_type::ATTEMPT_FAILED));
    assert!(!failure.is_non_retryable());
    assert!(failure.to_string().contains(domain::FailureKind::Storage.public_message()), "{failure}");
    assert!(!failure.to_string().contains("injected"), "{failure}");
    let record = fixture.record(&export).await;
    assert_eq!(record.status(), ExportStatus::Running, "waits for the retry");
    assert_eq!(record.error().map(|e| e.kind), Some(FailureKind::Storage), "the failure is noted");

    // The same attempt delivered again does not restart the export.
    let failure =
        application_failure(env.run(ExportActivities::export_user_data, attempt_input(&export)).await);
    assert_eq!(failure.type_name(), Some(failure_type::EXPORT_SUPERSEDED));
    assert!(failure.is_non_retryable());
}

#[tokio::test]
async fn a_failure_that_uses_up_the_last_attempt_fails_the_record_at_once() {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&scope(), 10);
    let storage = FlakyStorage::new(Arc::new(ObjectStorage::in_memory()), 1, false);
    let mut fixture = Fixture::new(Arc::new(users), Arc::new(storage));
    let export = fixture.pending_export().await;
    let env = fixture.environment(|_| {});

    let mut last_attempt = policy();
    last_attempt.retry.maximum_attempts = 1;
    let input = ExportUserDataInput { policy: Some(last_attempt), ..attempt_input(&export) };
    let failure = application_failure(env.run(ExportActivities::export_user_data, input).await);

    assert_eq!(failure.type_name(), Some(failure_type::EXPORT_FAILED));
    assert!(failure.is_non_retryable());
    let record = fixture.record(&export).await;
    assert_eq!(record.status(), ExportStatus::Failed);
    assert_eq!(record.error().map(|e| e.kind), Some(FailureKind::Storage));
}

#[tokio::test]
async fn an_unknown_export_is_not_found_and_not_retried() {
    let mut fixture = Fixture::with_users(1);
    let env = fixture.environment(|_| {});
    let export = Export::new(
        ExportId::from_uuid(Uuid::new_v4()),
        scope(),
        ExportSpec::new(ExportFormat::Csv),
        None,
        Utc::now(),
    );

    let failure =
        application_failure(env.run(ExportActivities::export_user_data, attempt_input(&export)).await);

    assert_eq!(failure.type_name(), Some(failure_type::EXPORT_NOT_FOUND));
    assert!(failure.is_non_retryable());
}

fn seed_request() -> Map<String, Value> {
    match json!({"user_filters": {"status": "active"}, "format": "csv", "email_notify": false}) {
        Value::Object(map) => map,
        _ => unreachable!(),
    }
}

fn new_ref() -> ExportRef {
    ExportRef::new(&scope(), ExportId::from_uuid(Uuid::new_v4()))
}

#[tokio::test]
async fn prepare_creates_a_pending_record_for_a_seed_request_once() {
    let mut fixture = Fixture::with_users(1);
    let env = fixture.environment(|_| {});
    let export = new_ref();
    let input =
        PrepareInput { export: export.clone(), request: seed_request(), policy: None, workflow_id: None };

    let first = env.run(ExportActivities::prepare, input.clone()).await.unwrap();
    let again = env.run(ExportActivities::prepare, input).await.unwrap();

    assert_eq!((first.status, first.attempt, first.policy), (ExportStatus::Pending, 0, policy()));
    assert_eq!(again, first);
    let id = ExportId::parse(&export.export_id).unwrap();
    let record = fixture.exports.get(&scope(), id).await.unwrap().expect("created");
    assert_eq!(record.spec.format, ExportFormat::Csv);
    assert_eq!(record.spec.user_filters.status.map(|s| s.len()), Some(1));
}

#[tokio::test]
async fn prepare_rejects_a_bad_request_without_retries_naming_every_field() {
    let mut fixture = Fixture::with_users(1);
    let env = fixture.environment(|_| {});
    let export = new_ref();
    let mut request = seed_request();
    request.insert("format".into(), json!("xml"));
    request.insert("user_filters".into(), json!({"country": "NL"}));

    let input = PrepareInput { export: export.clone(), request, policy: None, workflow_id: None };
    let failure = application_failure(env.run(ExportActivities::prepare, input).await);

    assert_eq!(failure.type_name(), Some(failure_type::VALIDATION_FAILED));
    assert!(failure.is_non_retryable());
    let message = failure.to_string();
    assert!(message.contains("format") && message.contains("user_filters.country"), "{message}");
    let id = ExportId::parse(&export.export_id).unwrap();
    assert_eq!(fixture.exports.get(&scope(), id).await.unwrap(), None, "no record for a bad request");

    let bad_scope = ExportRef { tenant_id: "Acme".into(), ..new_ref() };
    let input = PrepareInput { export: bad_scope, request: seed_request(), policy: None, workflow_id: None };
    let failure = application_failure(env.run(ExportActivities::prepare, input).await);
    assert_eq!(failure.type_name(), Some(failure_type::VALIDATION_FAILED));
    assert!(failure.to_string().contains("tenant_id"), "{failure}");

    let mut bad_policy = policy();
    bad_policy.retry.maximum_attempts = 0;
    let input = PrepareInput {
        export: new_ref(),
        request: seed_request(),
        policy: Some(bad_policy),
        workflow_id: None,
    };
    let failure = application_failure(env.run(ExportActivities::prepare, input).await);
    assert_eq!(failure.type_name(), Some(failure_type::VALIDATION_FAILED));
}

#[tokio::test]
async fn prepare_reports_a_finished_export_with_its_outcome() {
    let mut fixture = Fixture::with_users(5);
    let export = fixture.pending_export().await;
    let env = fixture.environment(|_| {});
    env.run(ExportActivities::export_user_data, attempt_input(&export)).await.unwrap();

    let input = PrepareInput {
        export: ExportRef::new(&export.scope, export.id),
        request: Map::new(),
        policy: None,
        workflow_id: None,
    };
    let prepared = env.run(ExportActivities::prepare, input).await.unwrap();

    assert_eq!((prepared.status, prepared.attempt), (ExportStatus::Completed, 1));
    assert_eq!(prepared.result.map(|r| r.record_count), Some(5));
}

#[tokio::test]
async fn finish_records_failure_or_cancellation_once_and_ignores_unknown_exports() {
    let mut fixture = Fixture::with_users(1);
    let failed = fixture.pending_export().await;
    let cancelled = fixture.pending_export().await;
    let env = fixture.environment(|_| {});
    let reason = ExportFailure::new(FailureKind::Timeout, "the export attempt timed out");

    for _ in 0..2 {
        let input = FinishInput {
            export: ExportRef::new(&failed.scope, failed.id),
            outcome: FinishOutcome::Failed { failure: reason.clone() },
        };
        let out = env.run(ExportActivities::finish, input).await.unwrap();
        assert_eq!(out.status, Some(ExportStatus::Failed));
    }
    assert_eq!(fixture.record(&failed).await.error(), Some(&reason));

    let input = FinishInput {
        export: ExportRef::new(&cancelled.scope, cancelled.id),
        outcome: FinishOutcome::Cancelled,
    };
    assert_eq!(env.run(ExportActivities::finish, input).await.unwrap().status, Some(ExportStatus::Cancelled));
    // A finished record is not changed by a later finish.
    let input = FinishInput {
        export: ExportRef::new(&cancelled.scope, cancelled.id),
        outcome: FinishOutcome::Failed { failure: reason },
    };
    assert_eq!(env.run(ExportActivities::finish, input).await.unwrap().status, Some(ExportStatus::Cancelled));

    let input = FinishInput { export: new_ref(), outcome: FinishOutcome::Cancelled };
    assert_eq!(env.run(ExportActivities::finish, input).await.unwrap().status, None);
}
