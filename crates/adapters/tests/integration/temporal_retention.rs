//! `ExportRetentionWorkflow` on a real Temporal server: a worker in the test runs it against
//! in-memory records and storage; and the system schedule that runs it is created idempotently.

use std::sync::Arc;

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{test_client, unique_task_queue, with_worker};
use adapters::temporal::{
    ExportRetentionWorkflow, RETENTION_SCHEDULE_ID, RetentionInput, RetentionOutput, WorkerDeps,
    ensure_retention_schedule, register,
};
use bytes::Bytes;
use chrono::{TimeDelta, Utc};
use domain::{
    ExecutionPolicy, Export, ExportFormat, ExportId, ExportOutcome, ExportSpec, ExportStatus, Scope,
};
use ports::{ExportRepository, ExportStorage};
use service::{ExportRunner, RunnerConfig};
use temporalio_client::WorkflowStartOptions;
use temporalio_sdk::WorkerOptions;
use tokio_util::sync::CancellationToken;

/// A completed export with a stored file, expiring `expires_in` from now (negative: due).
async fn completed(
    exports: &MemoryExportRepository,
    storage: &ObjectStorage,
    expires_in: TimeDelta,
) -> Export {
    let scope = Scope::parse("acme/prod").unwrap();
    let mut export = Export::new(
        ExportId::from_uuid(uuid::Uuid::now_v7()),
        scope,
        ExportSpec::new(ExportFormat::Csv),
        None,
        Utc::now(),
    );
    exports.create_if_absent(&export).await.unwrap();
    let mut writer = storage.writer(&export.attempt_key(1)).await.unwrap();
    writer.write(Bytes::from_static(b"id,email\n")).await.unwrap();
    let stored = writer.finish().await.unwrap();
    export.start_attempt(1, Utc::now()).unwrap();
    exports.update_if_status(&export, ExportStatus::Pending).await.unwrap();
    let outcome = ExportOutcome { record_count: 0, bytes: stored.bytes, sha256: stored.sha256 };
    export.complete(outcome, export.attempt_key(1), expires_in, Utc::now()).unwrap();
    exports.update_if_status(&export, ExportStatus::Running).await.unwrap();
    export
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_workflow_expires_due_exports_in_batches_and_keeps_the_rest() {
    let client = test_client().await;
    let task_queue = unique_task_queue("retention");
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(ObjectStorage::in_memory());
    let due_a = completed(&exports, &storage, TimeDelta::seconds(-10)).await;
    let due_b = completed(&exports, &storage, TimeDelta::seconds(-5)).await;
    let kept = completed(&exports, &storage, TimeDelta::days(7)).await;

    let runner = Arc::new(ExportRunner::new(
        Arc::new(MemoryUserRepository::new()),
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig::default(),
    ));
    let deps = WorkerDeps {
        quotas: Default::default(),
        export_threads: Default::default(),
        admission: None,
        runner,
        exports: exports.clone(),
        storage: storage.clone(),
        default_policy: ExecutionPolicy::default(),
        shutdown: CancellationToken::new(),
        reconciler: None,
    };
    let mut options = WorkerOptions::new(task_queue.clone()).build();
    register(&mut options, &deps).unwrap();

    let workflow_id = format!("retention-test-{}", uuid::Uuid::new_v4());
    let output: RetentionOutput = with_worker(&client, options, async {
        let input = RetentionInput { batch_limit: 1, max_batches: 10 };
        let start = WorkflowStartOptions::new(task_queue.clone(), workflow_id.clone()).build();
        let handle = client.start_workflow(ExportRetentionWorkflow::run, input, start).await.unwrap();
        handle.get_result(Default::default()).await.unwrap()
    })
    .await;

    assert_eq!(
        output,
        RetentionOutput { expired: 2, failed: 0, batches: 3 },
        "one per batch, then none left"
    );
    for due in [&due_a, &due_b] {
        let record = exports.get(&due.scope, due.id).await.unwrap().unwrap();
        assert_eq!(record.status(), ExportStatus::Expired);
        assert!(storage.open(&due.object_key).await.unwrap().is_none(), "file deleted");
    }
    assert_eq!(exports.get(&kept.scope, kept.id).await.unwrap().unwrap().status(), ExportStatus::Completed);
    assert!(storage.open(&kept.object_key).await.unwrap().is_some());
}

#[tokio::test]
async fn the_retention_schedule_is_created_once_and_updated_in_place() {
    let client = test_client().await;
    let task_queue = unique_task_queue("retention-schedule");
    ensure_retention_schedule(&client, &task_queue, std::time::Duration::from_secs(3600)).await.unwrap();
    // A second worker (or a restart with another interval) finds it and updates it.
    ensure_retention_schedule(&client, &task_queue, std::time::Duration::from_secs(1800)).await.unwrap();
    let described =
        client.get_schedule_handle(RETENTION_SCHEDULE_ID).describe(Default::default()).await.unwrap();
    assert!(!described.paused());
}
