//! Batches on the in-process orchestrator: bounded concurrency, each target exported once
//! however often the batch is started.

use std::sync::Arc;
use std::time::Duration;

use adapters::contract::fakes::{FlakyStorage, SlowUsers};
use adapters::inprocess::InProcessOrchestrator;
use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use chrono::Utc;
use domain::{Batch, BatchId, BatchRequest, ExecutionPolicy, ExportId, ExportStatus, Scope};
use ports::{ExportRepository, Orchestrator};
use serde_json::json;
use service::{ExportRunner, RunnerConfig};
use uuid::Uuid;

const USERS: u64 = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_each_target_once_at_most_concurrency_at_a_time_even_when_started_again() {
    let targets: Vec<Scope> = (0..6).map(|i| Scope::parse(&format!("t{i}/prod")).unwrap()).collect();
    let users = MemoryUserRepository::new();
    for scope in &targets {
        users.seed_synthetic(scope, USERS);
    }
    let users = Arc::new(SlowUsers { inner: Arc::new(users), per_user: Duration::from_millis(2) });
    let exports = Arc::new(MemoryExportRepository::new());
    let storage = Arc::new(FlakyStorage::counting(Arc::new(ObjectStorage::in_memory())));
    let runner = Arc::new(ExportRunner::new(
        users,
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig {
            segment_bytes: 4096,
            progress_interval: Duration::from_millis(10),
            ..RunnerConfig::default()
        },
    ));
    // More process-wide slots than the batch's concurrency: the batch bounds itself.
    let orchestrator = InProcessOrchestrator::new(runner, exports.clone(), ExecutionPolicy::default(), 8);
    let request = BatchRequest::from_json(&json!({
        "targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "export": {"format": "csv"}, "concurrency": 2
    }))
    .unwrap();
    let batch = Batch::new(BatchId::from_uuid(Uuid::now_v7()), &request, targets.clone(), None, Utc::now());

    orchestrator.start_batch(&batch).await.unwrap();
    orchestrator.start_batch(&batch).await.unwrap();

    let mut most_running = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let mut statuses = Vec::new();
        for scope in &targets {
            let record = exports.get(scope, ExportId::for_batch(batch.id, scope)).await.unwrap();
            statuses.push(record.map(|e| e.status()));
        }
        let running = statuses.iter().filter(|s| **s == Some(ExportStatus::Running)).count();
        most_running = most_running.max(running);
        if statuses.iter().all(|s| *s == Some(ExportStatus::Completed)) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "the batch never finished: {statuses:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(most_running <= 2, "{most_running} targets ran at once with concurrency 2");
    assert!(most_running >= 1);

    // Started again once finished: every export exists and is finished, so nothing runs.
    orchestrator.start_batch(&batch).await.unwrap();
    orchestrator.shutdown(Duration::from_secs(10)).await;
    assert_eq!(storage.writers(), targets.len(), "one attempt per target, however often started");
    for scope in &targets {
        let export = exports.get(scope, ExportId::for_batch(batch.id, scope)).await.unwrap().unwrap();
        assert_eq!((export.attempt(), export.outcome().map(|o| o.record_count)), (1, Some(USERS)));
    }
}
