//! `UserBatchExportWorkflow` on a real Temporal server (`TEST_TEMPORAL_ADDRESS`): a worker runs
//! in the test, and the memory adapters are shared between it and the test's checks. Each test
//! has its own task queue and batch IDs.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{FailingScopeUsers, test_client, unique_task_queue, with_worker};
use adapters::temporal::{
    BatchWorkflowInput, BatchWorkflowOutput, TemporalOrchestrator, UserBatchExportWorkflow, WorkerDeps,
    failure_type, register,
};
use domain::{Batch, BatchId, BatchRequest, ExecutionPolicy, ExportId, ExportStatus, RetryPolicy, Scope};
use ports::{ExportRepository, ExportStorage, Orchestrator, UserRepository};
use serde_json::json;
use service::{ExportRunner, RunnerConfig};
use temporalio_client::{Client, WorkflowDescribeOptions, WorkflowStartOptions};
use temporalio_sdk::WorkerOptions;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const USERS: u64 = 40;

fn policy() -> ExecutionPolicy {
    ExecutionPolicy {
        retry: RetryPolicy {
            initial_interval: Duration::from_millis(100),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(1),
            maximum_attempts: 2,
        },
        deadline: Duration::from_secs(30),
        heartbeat_timeout: Duration::from_secs(5),
    }
}

fn scopes(n: usize) -> Vec<Scope> {
    (0..n).map(|i| Scope::parse(&format!("tenant{i}/prod")).unwrap()).collect()
}

/// A worker's worth of wiring on memory adapters the test also reads.
struct Harness {
    client: Client,
    task_queue: String,
    exports: Arc<MemoryExportRepository>,
    deps: WorkerDeps,
}

impl Harness {
    async fn new(test: &str, targets: &[Scope], failing: Option<Scope>) -> Self {
        let client = test_client().await;
        let memory_users = MemoryUserRepository::new();
        for scope in targets {
            memory_users.seed_synthetic(scope, USERS);
        }
        let users: Arc<dyn UserRepository> = match failing {
            Some(failing) => Arc::new(FailingScopeUsers { inner: Arc::new(memory_users), failing }),
            None => Arc::new(memory_users),
        };
        let exports = Arc::new(MemoryExportRepository::new());
        let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
        let runner = Arc::new(ExportRunner::new(
            users,
            exports.clone(),
            storage.clone(),
            Arc::new(LogNotifier),
            RunnerConfig {
                segment_bytes: 4096,
                progress_interval: Duration::ZERO,
                ..RunnerConfig::default()
            },
        ));
        let deps = WorkerDeps {
            quotas: Default::default(),
            runner,
            exports: exports.clone(),
            storage,
            default_policy: policy(),
            shutdown: CancellationToken::new(),
            reconciler: None,
        };
        Self { client, task_queue: unique_task_queue(test), exports, deps }
    }

    async fn with_worker<F: Future>(&self, body: F) -> F::Output {
        let mut options = WorkerOptions::new(self.task_queue.clone()).build();
        register(&mut options, &self.deps).unwrap();
        with_worker(&self.client, options, body).await
    }

    async fn result(&self, batch: BatchId) -> BatchWorkflowOutput {
        let handle = self.client.get_workflow_handle::<UserBatchExportWorkflow>(batch.workflow_id());
        tokio::time::timeout(Duration::from_secs(60), handle.get_result(Default::default()))
            .await
            .expect("the batch workflow did not finish within 60 s")
            .expect("the batch workflow completes, whatever its targets do")
    }

    async fn status_of(&self, batch: BatchId, scope: &Scope) -> Option<ExportStatus> {
        let record = self.exports.get(scope, ExportId::for_batch(batch, scope)).await.unwrap();
        record.map(|e| e.status())
    }
}

fn batch_of(targets: Vec<Scope>, concurrency: u32) -> Batch {
    let request = BatchRequest::from_json(&json!({
        "targets": targets.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "export": {"format": "csv"},
        "concurrency": concurrency
    }))
    .unwrap();
    Batch::new(BatchId::from_uuid(Uuid::now_v7()), &request, targets, None, chrono::Utc::now())
}

#[tokio::test]
async fn a_batch_of_three_tenants_with_one_failing_reports_total_failed_and_the_reason() {
    let targets = scopes(3);
    let h = Harness::new("batch-three", &targets, Some(targets[1].clone())).await;
    let batch = batch_of(targets.clone(), 2);
    let orchestrator = TemporalOrchestrator::new(h.client.clone(), h.task_queue.clone(), policy());

    let output = h
        .with_worker(async {
            orchestrator.start_batch(&batch).await.unwrap();
            // A duplicate start finds the running batch instead of starting another.
            orchestrator.start_batch(&batch).await.unwrap();
            h.result(batch.id).await
        })
        .await;

    assert_eq!((output.total, output.completed, output.failed), (3, 2, 1), "{output:?}");
    assert_eq!(output.batch_id, batch.id.to_string());
    let [failure] = output.results.as_slice() else { panic!("one failure expected: {output:?}") };
    assert_eq!((failure.tenant_id.as_str(), failure.environment_id.as_str()), ("tenant1", "prod"));
    assert_eq!(failure.export_id, Some(ExportId::for_batch(batch.id, &targets[1]).to_string()));
    assert_eq!(failure.status, ExportStatus::Failed);
    assert_eq!(failure.failure_type.as_deref(), Some(failure_type::EXPORT_FAILED));
    assert_eq!(failure.error, domain::FailureKind::Source.public_message(), "the public reason: {failure:?}");
    assert!(!failure.error.contains(FailingScopeUsers::MESSAGE), "no database text: {failure:?}");

    // Every target's export record tells the same story, under the derived export ID.
    assert_eq!(h.status_of(batch.id, &targets[0]).await, Some(ExportStatus::Completed));
    assert_eq!(h.status_of(batch.id, &targets[1]).await, Some(ExportStatus::Failed));
    assert_eq!(h.status_of(batch.id, &targets[2]).await, Some(ExportStatus::Completed));
    let record =
        h.exports.get(&targets[2], ExportId::for_batch(batch.id, &targets[2])).await.unwrap().unwrap();
    assert_eq!(record.outcome().map(|o| o.record_count), Some(USERS));
}

#[tokio::test]
async fn a_large_batch_continues_as_new_and_still_reports_every_target() {
    let targets = scopes(5);
    let h = Harness::new("batch-can", &targets, Some(targets[3].clone())).await;
    let batch = batch_of(targets.clone(), 2);
    let input =
        BatchWorkflowInput { targets_per_run: 2, ..BatchWorkflowInput::for_batch(&batch, Some(policy())) };

    let (output, first_run, last_run) = h
        .with_worker(async {
            let options = WorkflowStartOptions::new(h.task_queue.clone(), batch.id.workflow_id()).build();
            let started = h
                .client
                .start_workflow(UserBatchExportWorkflow::run, serde_json::to_value(&input).unwrap(), options)
                .await
                .unwrap();
            let first_run = started.run_id().map(str::to_owned);
            let output = h.result(batch.id).await;
            let handle = h.client.get_workflow_handle::<UserBatchExportWorkflow>(batch.id.workflow_id());
            let last = handle.describe(WorkflowDescribeOptions::default()).await.unwrap();
            (output, first_run, last.run_id().to_owned())
        })
        .await;

    assert_eq!((output.total, output.completed, output.failed), (5, 4, 1), "{output:?}");
    assert_eq!(output.results.len(), 1);
    assert_eq!(output.results[0].tenant_id, "tenant3", "a failure in a later run is carried to the end");
    assert_ne!(first_run.as_deref(), Some(last_run.as_str()), "the batch continued as new");
    for (i, scope) in targets.iter().enumerate() {
        let expected = if i == 3 { ExportStatus::Failed } else { ExportStatus::Completed };
        assert_eq!(h.status_of(batch.id, scope).await, Some(expected), "{scope}");
    }
}
