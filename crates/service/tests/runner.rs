//! The ExportUserData use case against the in-memory adapters, with `mockall` for failures.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use chrono::Utc;
use domain::{
    ExecutionPolicy, Export, ExportFormat, ExportId, ExportSpec, ExportStatus, FailureClass, FailureKind,
    NotificationStatus, Scope, UserStatus,
};
use futures::{StreamExt, TryStreamExt};
use ports::mocks::{MockExportStorage, MockNotifier, MockObjectWriter, MockUserRepository};
use ports::{ExportRepository, ExportStorage, Notifier, PortError, UserRepository};
use service::{AttemptControl, ExportRunner, Notified, NotifyRetry, RunError, RunnerConfig};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

fn scope() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

struct Fixture {
    users: MemoryUserRepository,
    exports: Arc<MemoryExportRepository>,
    storage: Arc<ObjectStorage>,
}

impl Fixture {
    fn new(users: u64) -> Self {
        let repo = MemoryUserRepository::new();
        repo.seed_synthetic(&scope(), users);
        repo.seed_synthetic(&Scope::parse("globex/prod").unwrap(), 7);
        Self {
            users: repo,
            exports: Arc::new(MemoryExportRepository::new()),
            storage: Arc::new(ObjectStorage::in_memory()),
        }
    }

    fn runner_with(&self, users: Arc<dyn UserRepository>, storage: Arc<dyn ExportStorage>) -> ExportRunner {
        self.runner_notifying(users, storage, Arc::new(LogNotifier))
    }

    fn runner_notifying(
        &self,
        users: Arc<dyn UserRepository>,
        storage: Arc<dyn ExportStorage>,
        notifier: Arc<dyn Notifier>,
    ) -> ExportRunner {
        let config = RunnerConfig {
            segment_bytes: 4096,
            progress_interval: Duration::ZERO,
            notify: NotifyRetry { attempts: 3, initial_backoff: Duration::from_millis(10) },
            ..RunnerConfig::default()
        };
        ExportRunner::new(users, self.exports.clone(), storage, notifier, config)
    }

    fn runner(&self) -> ExportRunner {
        self.runner_with(Arc::new(self.users.clone()), self.storage.clone())
    }

    async fn pending(&self, spec: ExportSpec) -> Export {
        let export = Export::new(ExportId::from_uuid(uuid::Uuid::now_v7()), scope(), spec, None, Utc::now());
        self.exports.create_if_absent(&export).await.unwrap();
        export
    }

    async fn record(&self, export: &Export) -> Export {
        self.exports.get(&scope(), export.id).await.unwrap().unwrap()
    }

    /// The completed export's object, or any object an attempt of it left behind.
    async fn object(&self, export: &Export) -> Option<Vec<u8>> {
        let record = self.record(export).await;
        for key in [record.object_key.clone()].into_iter().chain((1..=5).map(|n| record.attempt_key(n))) {
            if let Some(bytes) = self.object_at(&key).await {
                return Some(bytes);
            }
        }
        None
    }

    async fn object_at(&self, key: &domain::ObjectKey) -> Option<Vec<u8>> {
        let reader = self.storage.open(key).await.unwrap()?;
        let chunks: Vec<bytes::Bytes> = reader.body.try_collect().await.unwrap();
        Some(chunks.concat())
    }
}

fn control(attempt: u32) -> AttemptControl {
    AttemptControl {
        attempt,
        cancel: CancellationToken::new(),
        shutdown: CancellationToken::new(),
        policy: ExecutionPolicy { deadline: Duration::from_secs(30), ..ExecutionPolicy::default() },
        resume: None,
    }
}

/// A control whose policy allows `attempts` attempts, or whose export deadline is `deadline`.
fn control_with(attempt: u32, attempts: u32, deadline: Duration) -> AttemptControl {
    let mut ctl = control(attempt);
    ctl.policy.retry.maximum_attempts = attempts;
    ctl.policy.deadline = deadline;
    ctl
}

#[tokio::test]
async fn an_export_streams_every_user_of_the_tenant_and_records_the_checksum() {
    let fx = Fixture::new(2_500);
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let reported = Arc::new(AtomicUsize::new(0));
    let seen = reported.clone();
    let done = fx
        .runner()
        .run_attempt(&scope(), export.id, &control(1), &move |rows, _| {
            seen.store(rows as usize, Ordering::SeqCst)
        })
        .await
        .unwrap();

    assert_eq!(done.status(), ExportStatus::Completed);
    let bytes = fx.object(&export).await.expect("object stored");
    let outcome = done.outcome().unwrap();
    assert_eq!(outcome.record_count, 2_500);
    assert_eq!(outcome.bytes, bytes.len() as u64);
    assert_eq!(outcome.sha256, hex::encode(Sha256::digest(&bytes)));
    assert_eq!(reported.load(Ordering::SeqCst), 2_500);
    let rows = csv::Reader::from_reader(bytes.as_slice()).records().count();
    assert_eq!(rows, 2_500, "only acme's users, each once");
    assert_eq!(fx.record(&export).await, done);
}

#[tokio::test]
async fn filters_and_limit_select_the_users() {
    let fx = Fixture::new(1_000);
    let spec = ExportSpec::from_json(&serde_json::json!({
        "format": "ndjson", "user_filters": {"status": "suspended", "email_domain": "example.org"}, "limit": 20
    }))
    .unwrap();
    let expected: Vec<_> =
        fx.users.stream(&scope(), &spec.user_filters, None, Some(20)).try_collect().await.unwrap();
    assert_eq!(expected.len(), 20);
    assert!(expected.iter().all(|u| u.status == UserStatus::Suspended && u.email.ends_with("@example.org")));

    let export = fx.pending(spec).await;
    fx.runner().run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap();
    let body = String::from_utf8(fx.object(&export).await.unwrap()).unwrap();
    let ids: Vec<String> = body
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(ids, expected.iter().map(|u| u.id.to_string()).collect::<Vec<_>>());
}

/// A writer that accepts two chunks and fails the third. After a final failure it must be
/// aborted; after a retryable one it is left for the next attempt to resume.
fn writer_failing_on_third_chunk(aborted: Arc<AtomicUsize>, retryable: bool) -> MockObjectWriter {
    let mut writer = MockObjectWriter::new();
    writer.expect_cut().returning(|| Ok(None));
    let mut calls = 0;
    writer.expect_write().returning(move |_| {
        calls += 1;
        match (calls, retryable) {
            (..3, _) => Ok(()),
            (_, true) => Err(PortError::unavailable(anyhow::anyhow!("503 slow down"))),
            (_, false) => Err(PortError::Other(anyhow::anyhow!("access denied"))),
        }
    });
    writer.expect_finish().never();
    writer.expect_abort().times(usize::from(!retryable)).returning(move || {
        aborted.fetch_add(1, Ordering::SeqCst);
        Ok(())
    });
    writer
}

#[tokio::test]
async fn storage_failing_mid_stream_aborts_the_upload_and_fails_the_record() {
    let fx = Fixture::new(2_000);
    let aborted = Arc::new(AtomicUsize::new(0));
    let mut storage = MockExportStorage::new();
    let aborts = aborted.clone();
    storage
        .expect_writer()
        .times(1)
        .returning(move |_| Ok(Box::new(writer_failing_on_third_chunk(aborts.clone(), false))));
    let runner = fx.runner_with(Arc::new(fx.users.clone()), Arc::new(storage));
    let export = fx.pending(ExportSpec::new(ExportFormat::Json)).await;

    // A refusal that is not infrastructure trouble uses up an attempt: with one allowed, it fails.
    let err = runner
        .run_attempt(&scope(), export.id, &control_with(1, 1, Duration::from_secs(30)), &|_, _| {})
        .await
        .unwrap_err();
    assert!(matches!(err, RunError::Failed { .. }), "{err:?}");
    assert_eq!(aborted.load(Ordering::SeqCst), 1);
    let record = fx.record(&export).await;
    assert_eq!(record.status(), ExportStatus::Failed);
    assert_eq!(record.error().unwrap().kind, FailureKind::Storage);
    assert_eq!(record.error().unwrap().message, FailureKind::Storage.public_message());
    assert!(!record.error().unwrap().message.contains("access denied"));
}

#[tokio::test]
async fn a_retryable_failure_then_success_completes_once() {
    let fx = Fixture::new(2_000);
    let aborted = Arc::new(AtomicUsize::new(0));
    let real = fx.storage.clone();
    let mut storage = MockExportStorage::new();
    let aborts = aborted.clone();
    let mut writers = 0;
    storage.expect_writer().times(2).returning(move |key| {
        writers += 1;
        if writers == 1 {
            return Ok(Box::new(writer_failing_on_third_chunk(aborts.clone(), true)));
        }
        let real = real.clone();
        let key = key.clone();
        futures::executor::block_on(async move { real.writer(&key).await })
    });
    let runner = fx.runner_with(Arc::new(fx.users.clone()), Arc::new(storage));
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;

    let first = runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap_err();
    assert!(
        matches!(first, RunError::Retry { class: FailureClass::Infrastructure, after, .. } if after == Duration::from_secs(1)),
        "{first:?}"
    );
    let between = fx.record(&export).await;
    assert_eq!(between.status(), ExportStatus::Running, "a retryable failure leaves the export running");
    assert_eq!(between.error().unwrap().kind, FailureKind::Storage, "the last transient error shows");
    assert_eq!(between.consumed_attempts(), 0, "infrastructure trouble uses up no attempt");
    assert!(fx.object(&export).await.is_none(), "the failed attempt left no object");

    let done = runner.run_attempt(&scope(), export.id, &control(2), &|_, _| {}).await.unwrap();
    assert_eq!((done.status(), done.attempt()), (ExportStatus::Completed, 2));
    assert_eq!(done.outcome().unwrap().record_count, 2_000);
    assert_eq!(done.error(), None);

    // A late duplicate of either attempt changes nothing.
    let again = runner.run_attempt(&scope(), export.id, &control(2), &|_, _| {}).await.unwrap();
    assert_eq!(again, done);
    let again = runner.run_attempt(&scope(), export.id, &control(3), &|_, _| {}).await.unwrap();
    assert_eq!(again, done);
    assert_eq!(aborted.load(Ordering::SeqCst), 0, "an upload a retry may resume is kept");
}

/// Users that trickle in forever, so an export is still running when the test acts on it.
fn endless_users() -> MockUserRepository {
    let mut users = MockUserRepository::new();
    users.expect_count().returning(|_, _| Ok(1_000_000));
    users.expect_stream().returning(|scope, _, _, _| {
        let scope = scope.clone();
        futures::stream::iter(0..)
            .then(move |i| {
                let user = domain::synthetic::user(&scope, i);
                async move {
                    tokio::time::sleep(Duration::from_micros(200)).await;
                    Ok(user)
                }
            })
            .boxed()
    });
    users.expect_ping().returning(|| Ok(()));
    users
}

#[tokio::test]
async fn cancelling_a_running_export_leaves_no_object() {
    let fx = Fixture::new(0);
    let runner = Arc::new(fx.runner_with(Arc::new(endless_users()), fx.storage.clone()));
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let ctl = control(1);
    let task = {
        let (runner, ctl) = (runner.clone(), ctl.clone());
        tokio::spawn(async move { runner.run_attempt(&scope(), export.id, &ctl, &|_, _| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Running);
    assert!(fx.record(&export).await.progress().rows_written > 0, "progress is recorded while running");
    ctl.cancel.cancel();

    assert!(matches!(task.await.unwrap(), Err(RunError::Cancelled)));
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Cancelled);
    assert!(fx.object(&export).await.is_none());
}

#[tokio::test]
async fn an_export_past_its_deadline_fails_for_good_and_leaves_no_object() {
    let fx = Fixture::new(0);
    let runner = fx.runner_with(Arc::new(endless_users()), fx.storage.clone());
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let ctl = control_with(1, 3, Duration::from_millis(300));

    let err = runner.run_attempt(&scope(), export.id, &ctl, &|_, _| {}).await.unwrap_err();
    match err {
        RunError::Failed { failure } => assert_eq!(failure.kind, FailureKind::Timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Failed);
    assert!(fx.object(&export).await.is_none());
    // A later run (a resumed or duplicated one) does not start past the deadline either.
    let later = control_with(2, 3, Duration::from_millis(300));
    let again = runner.run_attempt(&scope(), export.id, &later, &|_, _| {}).await.unwrap();
    assert_eq!(again.status(), ExportStatus::Failed);
}

#[tokio::test]
async fn defects_use_up_attempts_and_a_run_after_the_last_one_fails_at_once() {
    let fx = Fixture::new(0);
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let mut record = fx.record(&export).await;
    for n in 1..=3 {
        record.start_attempt(n, Utc::now()).unwrap();
        record.note_attempt_failure(
            domain::ExportFailure::new(FailureKind::Source, "corrupt row 7"),
            true,
            Utc::now(),
        );
    }
    let previous = fx.record(&export).await.status();
    fx.exports.update_if_status(&record, previous).await.unwrap();
    // As after a crash that lost the last word: the next run honours the policy.
    let err = fx.runner().run_attempt(&scope(), export.id, &control(4), &|_, _| {}).await.unwrap_err();
    assert!(matches!(err, RunError::Failed { ref failure } if failure.message == "corrupt row 7"), "{err:?}");
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Failed);
}

#[tokio::test]
async fn shutdown_interrupts_without_finishing_the_record() {
    let fx = Fixture::new(0);
    let runner = fx.runner_with(Arc::new(endless_users()), fx.storage.clone());
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let ctl = control(1);
    ctl.shutdown.cancel();

    let err = runner.run_attempt(&scope(), export.id, &ctl, &|_, _| {}).await.unwrap_err();
    assert!(matches!(err, RunError::Interrupted), "{err:?}");
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Running, "left for recovery");
    assert!(fx.object(&export).await.is_none());
}

#[tokio::test]
async fn a_cancel_recorded_through_the_repository_stops_a_running_attempt() {
    let fx = Fixture::new(0);
    let runner = Arc::new(fx.runner_with(Arc::new(endless_users()), fx.storage.clone()));
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let task = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another process (no shared token) cancels the record: the attempt notices at its next
    // progress write.
    runner.cancel_unfinished(&scope(), export.id).await.unwrap_err();

    assert!(matches!(task.await.unwrap(), Err(RunError::Cancelled)));
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Cancelled);
    assert!(fx.object(&export).await.is_none());
}

#[tokio::test]
async fn giving_up_marks_the_export_failed_with_the_reason() {
    let fx = Fixture::new(10);
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let failure = domain::ExportFailure::new(FailureKind::Source, "database down");
    let err = fx.runner().give_up(&scope(), export.id, failure.clone()).await.unwrap_err();
    assert!(matches!(err, RunError::Failed { .. }));
    let record = fx.record(&export).await;
    assert_eq!(record.status(), ExportStatus::Failed);
    assert_eq!(record.error(), Some(&failure));
}

#[tokio::test]
async fn an_unknown_export_is_not_found() {
    let fx = Fixture::new(1);
    let missing = ExportId::from_uuid(uuid::Uuid::now_v7());
    assert!(matches!(
        fx.runner().run_attempt(&scope(), missing, &control(1), &|_, _| {}).await,
        Err(RunError::NotFound)
    ));
}

#[tokio::test]
async fn storage_refusing_to_open_or_finish_an_upload_fails_the_record_instead_of_leaving_it_running() {
    let fx = Fixture::new(100);
    let mut storage = MockExportStorage::new();
    let mut opened = 0;
    storage.expect_writer().times(2).returning(move |_| {
        opened += 1;
        if opened == 1 {
            return Err(PortError::Other(anyhow::anyhow!("bucket does not exist")));
        }
        let mut writer = MockObjectWriter::new();
        writer.expect_cut().returning(|| Ok(None));
        writer.expect_write().returning(|_| Ok(()));
        writer
            .expect_finish()
            .times(1)
            .returning(|| Err(PortError::Other(anyhow::anyhow!("complete refused"))));
        Ok(Box::new(writer))
    });
    let runner = fx.runner_with(Arc::new(fx.users.clone()), Arc::new(storage));
    for expected in ["bucket does not exist", "complete refused"] {
        let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
        let ctl = control_with(1, 1, Duration::from_secs(30));
        let err = runner.run_attempt(&scope(), export.id, &ctl, &|_, _| {}).await.unwrap_err();
        assert!(matches!(err, RunError::Failed { .. }), "{err:?}");
        let record = fx.record(&export).await;
        assert_eq!(record.status(), ExportStatus::Failed);
        let message = &record.error().unwrap().message;
        assert!(!message.contains(expected), "the storage's words stay in the logs: {message}");
        assert_eq!(message, FailureKind::Storage.public_message());
    }
}

#[tokio::test]
async fn a_stale_attempt_taken_over_by_a_newer_one_stops_without_touching_the_record() {
    let fx = Fixture::new(0);
    let runner = Arc::new(fx.runner_with(Arc::new(endless_users()), fx.storage.clone()));
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let stale = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Another worker takes over (as after a missed heartbeat): attempt 2 now owns the export.
    let mut taken = fx.record(&export).await;
    taken.start_attempt(2, Utc::now()).unwrap();
    assert_eq!(
        fx.exports.update_if_status(&taken, ExportStatus::Running).await.unwrap(),
        ports::UpdateOutcome::Updated
    );

    let err = stale.await.unwrap().unwrap_err();
    assert!(matches!(err, RunError::Superseded { current: 2 }), "{err:?}");
    let record = fx.record(&export).await;
    assert_eq!((record.status(), record.attempt()), (ExportStatus::Running, 2), "left to attempt 2");
    assert!(fx.object(&export).await.is_none(), "the stale attempt wrote no object");
}

#[tokio::test]
async fn the_deadline_also_bounds_completing_the_upload() {
    let fx = Fixture::new(50);
    let mut storage = MockExportStorage::new();
    storage.expect_writer().times(1).returning(|_| {
        let mut writer = MockObjectWriter::new();
        writer.expect_cut().returning(|| Ok(None));
        writer.expect_write().returning(|_| Ok(()));
        Ok(Box::new(HangingFinish(writer)))
    });
    let runner = fx.runner_with(Arc::new(fx.users.clone()), Arc::new(storage));
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let ctl = control_with(1, 3, Duration::from_millis(300));
    let started = std::time::Instant::now();
    let err = runner.run_attempt(&scope(), export.id, &ctl, &|_, _| {}).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    match err {
        RunError::Failed { failure } => assert_eq!(failure.kind, FailureKind::Timeout),
        other => panic!("expected a timeout, got {other:?}"),
    }
}

/// Delegates writes, but its `finish` never completes.
struct HangingFinish(MockObjectWriter);

#[async_trait::async_trait]
impl ports::ObjectWriter for HangingFinish {
    async fn write(&mut self, chunk: bytes::Bytes) -> Result<(), PortError> {
        self.0.write(chunk).await
    }
    async fn finish(self: Box<Self>) -> Result<ports::StoredObject, PortError> {
        std::future::pending().await
    }
    async fn checkpoint(&mut self) -> Result<Option<domain::UploadCheckpoint>, PortError> {
        Ok(None)
    }
    async fn abort(self: Box<Self>) -> Result<(), PortError> {
        Ok(())
    }
}

fn notifying_spec() -> ExportSpec {
    ExportSpec::from_json(
        &serde_json::json!({"format": "csv", "email_notify": true, "notify_email": "ops@acme.com"}),
    )
    .unwrap()
}

#[tokio::test]
async fn a_notification_that_fails_transiently_is_retried_and_recorded_as_sent() {
    let fx = Fixture::new(10);
    let export = fx.pending(notifying_spec()).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut notifier = MockNotifier::new();
    let counted = calls.clone();
    notifier.expect_export_finished().returning(move |finished| {
        assert_eq!(finished.status(), ExportStatus::Completed, "notified after completion");
        if counted.fetch_add(1, Ordering::SeqCst) < 2 {
            Err(PortError::unavailable(anyhow::anyhow!("451 try again later")))
        } else {
            Ok(())
        }
    });
    let runner = fx.runner_notifying(Arc::new(fx.users.clone()), fx.storage.clone(), Arc::new(notifier));
    let done = runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap();
    assert_eq!(calls.load(Ordering::SeqCst), 0, "the attempt itself sends nothing");
    assert!(fx.record(&export).await.notify_due());
    assert_eq!(runner.notify(&scope(), export.id).await.unwrap(), Notified::Done);
    // A repeated step (a retried activity, the reconciler) sends nothing twice.
    assert_eq!(runner.notify(&scope(), export.id).await.unwrap(), Notified::NothingDue);

    assert_eq!(done.status(), ExportStatus::Completed);
    assert_eq!(calls.load(Ordering::SeqCst), 3);
    let record = fx.record(&export).await;
    let notification = record.notification().expect("notification recorded");
    assert_eq!((notification.status, notification.attempts), (NotificationStatus::Sent, 3));
    assert_eq!(notification.last_error, None);
    assert_eq!(record.status(), ExportStatus::Completed);
}

#[tokio::test]
async fn a_notification_that_keeps_failing_never_fails_the_export_and_says_why() {
    let fx = Fixture::new(10);
    let export = fx.pending(notifying_spec()).await;
    let mut notifier = MockNotifier::new();
    notifier
        .expect_export_finished()
        .times(1)
        .returning(|_| Err(PortError::Other(anyhow::anyhow!("550 mailbox unavailable"))));
    let runner = fx.runner_notifying(Arc::new(fx.users.clone()), fx.storage.clone(), Arc::new(notifier));
    let done = runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap();
    runner.notify(&scope(), export.id).await.unwrap();

    assert_eq!(done.status(), ExportStatus::Completed, "a permanent refusal is not retried");
    let record = fx.record(&export).await;
    let notification = record.notification().unwrap();
    assert_eq!((notification.status, notification.attempts), (NotificationStatus::Failed, 1));
    let last_error = notification.last_error.as_deref().unwrap();
    assert!(last_error.contains("refused") && !last_error.contains("550"), "{last_error}");
    assert!(fx.object(&export).await.is_some());
}

#[tokio::test]
async fn exports_without_email_notify_send_nothing() {
    let fx = Fixture::new(3);
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let mut notifier = MockNotifier::new();
    notifier.expect_export_finished().never();
    let runner = fx.runner_notifying(Arc::new(fx.users.clone()), fx.storage.clone(), Arc::new(notifier));
    runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap();
    runner.notify(&scope(), export.id).await.unwrap();
    assert_eq!(fx.record(&export).await.notification(), None);
    assert!(!fx.record(&export).await.notify_due(), "handled: nothing to send");
}

#[tokio::test]
async fn a_cancel_while_the_upload_is_being_completed_stops_the_attempt_too() {
    let fx = Fixture::new(50);
    let mut storage = MockExportStorage::new();
    storage.expect_writer().times(1).returning(|_| {
        let mut writer = MockObjectWriter::new();
        writer.expect_cut().returning(|| Ok(None));
        writer.expect_write().returning(|_| Ok(()));
        Ok(Box::new(HangingFinish(writer)))
    });
    let runner = Arc::new(fx.runner_with(Arc::new(fx.users.clone()), Arc::new(storage)));
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let task = {
        let runner = runner.clone();
        tokio::spawn(async move { runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    // Cancelled on the record only (as the API does for a Temporal run): no token.
    let asked = std::time::Instant::now();
    runner.cancel_unfinished(&scope(), export.id).await.unwrap_err();

    assert!(matches!(task.await.unwrap(), Err(RunError::Cancelled)));
    assert!(asked.elapsed() < Duration::from_secs(1), "stopped after {:?}", asked.elapsed());
    assert_eq!(fx.record(&export).await.status(), ExportStatus::Cancelled);
}

#[tokio::test]
async fn the_tenants_callback_is_retried_and_recorded_beside_the_email() {
    let fx = Fixture::new(5);
    let export = fx.pending(ExportSpec::new(ExportFormat::Csv)).await;
    let calls = Arc::new(AtomicUsize::new(0));
    let mut callbacks = ports::mocks::MockCallbackSender::new();
    callbacks.expect_wants().returning(|_| true);
    let counted = calls.clone();
    callbacks.expect_deliver().returning(move |finished| {
        assert_eq!(finished.status(), ExportStatus::Completed);
        if counted.fetch_add(1, Ordering::SeqCst) < 1 {
            Err(PortError::unavailable(anyhow::anyhow!("503 from the receiver")))
        } else {
            Ok(())
        }
    });
    let runner = fx.runner().with_callbacks(Arc::new(callbacks));
    runner.run_attempt(&scope(), export.id, &control(1), &|_, _| {}).await.unwrap();
    assert!(fx.record(&export).await.notify_due(), "a callback is due even without an email");

    assert_eq!(runner.notify(&scope(), export.id).await.unwrap(), Notified::Done);
    assert_eq!(runner.notify(&scope(), export.id).await.unwrap(), Notified::NothingDue);
    let record = fx.record(&export).await;
    let callback = record.callback().expect("callback recorded");
    assert_eq!((callback.status, callback.attempts), (NotificationStatus::Sent, 2));
    assert_eq!(record.notification(), None, "no email was asked for");
    assert_eq!(calls.load(Ordering::SeqCst), 2, "sent once, after one transient failure");
}
