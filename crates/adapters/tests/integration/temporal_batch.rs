//! `UserBatchExportWorkflow` on a real Temporal server (`TEST_TEMPORAL_ADDRESS`): a worker runs
//! in the test, and the memory adapters are shared between it and the test's checks. Each test
//! has its own task queue and batch IDs.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use adapters::temporal::testkit::{FailingScopeUsers, test_client, unique_task_queue, with_queue_workers};
use adapters::temporal::{
    BatchWorkflowInput, BatchWorkflowOutput, TaskQueues, TemporalOrchestrator, UserBatchExportWorkflow,
    WorkerDeps, Workload, failure_type,
};
use async_trait::async_trait;
use domain::{
    Batch, BatchId, BatchRequest, ExecutionPolicy, Export, ExportId, ExportSpec, ExportStatus, RetryPolicy,
    Scope, UserFilter, UserId,
};
use futures::StreamExt;
use ports::{ExportRepository, ExportStorage, Orchestrator, PortError, UserRepository, UserStream};
use serde_json::json;
use service::{ExportRunner, RunnerConfig};
use temporalio_client::{Client, WorkflowDescribeOptions, WorkflowExecutionStatus, WorkflowStartOptions};
use tokio::sync::Semaphore;
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
        let memory_users = seeded(targets);
        let users: Arc<dyn UserRepository> = match failing {
            Some(failing) => Arc::new(FailingScopeUsers { inner: Arc::new(memory_users), failing }),
            None => Arc::new(memory_users),
        };
        Self::with_users(test, users).await
    }

    /// With the exports of `gated` held until the returned gate opens.
    async fn gated(test: &str, targets: &[Scope], gated: &Scope) -> (Self, Arc<Semaphore>) {
        let gate = Arc::new(Semaphore::new(0));
        let users =
            GatedUsers { inner: Arc::new(seeded(targets)), gated: gated.clone(), gate: Arc::clone(&gate) };
        (Self::with_users(test, Arc::new(users)).await, gate)
    }

    async fn with_users(test: &str, users: Arc<dyn UserRepository>) -> Self {
        let client = test_client().await;
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
            export_threads: Default::default(),
            admission: None,
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
        let queues = TaskQueues::new(self.task_queue.as_str());
        with_queue_workers(&self.client, &queues, &self.deps, body).await
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

fn seeded(targets: &[Scope]) -> MemoryUserRepository {
    let users = MemoryUserRepository::new();
    for scope in targets {
        users.seed_synthetic(scope, USERS);
    }
    users
}

/// Users from `inner`; the streams of `gated` start only once `gate` has a permit (a test opens
/// it with `add_permits`), so that scope's export stays running until then.
struct GatedUsers {
    inner: Arc<dyn UserRepository>,
    gated: Scope,
    gate: Arc<Semaphore>,
}

#[async_trait]
impl UserRepository for GatedUsers {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        let users = self.inner.stream(scope, filter, after, limit);
        if *scope != self.gated {
            return users;
        }
        let gate = Arc::clone(&self.gate);
        futures::stream::once(async move {
            let _permit = gate.acquire().await;
            users
        })
        .flatten()
        .boxed()
    }
    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        self.inner.count(scope, filter).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Waits until `scope`'s export in `batch` has `status` (30 s at most).
async fn wait_for(h: &Harness, batch: BatchId, scope: &Scope, status: ExportStatus) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let current = h.status_of(batch, scope).await;
        if current == Some(status) {
            return;
        }
        assert!(Instant::now() < deadline, "{scope}: {current:?}, never {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
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
            let queue = TaskQueues::new(h.task_queue.as_str()).name(Workload::Batch);
            let options = WorkflowStartOptions::new(queue, batch.id.workflow_id()).build();
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

#[tokio::test]
async fn a_finished_child_frees_its_place_at_once_for_the_next_target() {
    let targets = scopes(4);
    let (h, gate) = Harness::gated("batch-window", &targets, &targets[0]).await;
    let batch = batch_of(targets.clone(), 2);
    let orchestrator = TemporalOrchestrator::new(h.client.clone(), h.task_queue.clone(), policy());

    let output = h
        .with_worker(async {
            orchestrator.start_batch(&batch).await.unwrap();
            // Target 0 holds one of the two places; the other serves targets 1, 2 and 3 in turn
            // (in chunks of two, 2 and 3 would wait for 0).
            for scope in &targets[1..] {
                wait_for(&h, batch.id, scope, ExportStatus::Completed).await;
            }
            assert_eq!(h.status_of(batch.id, &targets[0]).await, Some(ExportStatus::Running));
            gate.add_permits(100);
            h.result(batch.id).await
        })
        .await;

    assert_eq!((output.total, output.completed, output.failed), (4, 4, 0), "{output:?}");
    assert_eq!(h.status_of(batch.id, &targets[0]).await, Some(ExportStatus::Completed));
}

#[tokio::test]
async fn a_target_already_running_is_joined_and_counted_with_its_outcome() {
    let targets = scopes(2);
    let (h, gate) = Harness::gated("batch-join", &targets, &targets[0]).await;
    let batch = batch_of(targets.clone(), 2);
    let orchestrator = TemporalOrchestrator::new(h.client.clone(), h.task_queue.clone(), policy());
    // Target 0's export runs already, under the workflow ID the batch derives (as if started
    // through the API, or by an earlier run of this batch).
    let id = ExportId::for_batch(batch.id, &targets[0]);
    let spec = ExportSpec::from_json(&json!({"format": "csv"})).unwrap();
    let running = Export::new(id, targets[0].clone(), spec, None, chrono::Utc::now());
    h.exports.create_if_absent(&running).await.unwrap();

    let (output, batch_status_while_joined) = h
        .with_worker(async {
            orchestrator.start(&running).await.unwrap();
            wait_for(&h, batch.id, &targets[0], ExportStatus::Running).await;
            orchestrator.start_batch(&batch).await.unwrap();
            wait_for(&h, batch.id, &targets[1], ExportStatus::Completed).await;
            // The batch waits for the joined export rather than counting it failed.
            tokio::time::sleep(Duration::from_secs(2)).await;
            let handle = h.client.get_workflow_handle::<UserBatchExportWorkflow>(batch.id.workflow_id());
            let status = handle.describe(WorkflowDescribeOptions::default()).await.unwrap().status();
            gate.add_permits(100);
            (h.result(batch.id).await, status)
        })
        .await;

    assert_eq!(batch_status_while_joined, WorkflowExecutionStatus::Running);
    assert_eq!((output.total, output.completed, output.failed), (2, 2, 0), "{output:?}");
    assert!(output.results.is_empty(), "{output:?}");
    assert_eq!(h.status_of(batch.id, &targets[0]).await, Some(ExportStatus::Completed));
}
