//! Fair dispatch on both orchestrators: tenant A queues a backlog of big exports, then tenant
//! B's small synchronous export must finish about as fast as it does alone, and long before A's
//! backlog is done. The quotas in the memory repository are checked here too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::export_threads::{DEFAULT_NICE, ExportThreads};
use adapters::inprocess::InProcessOrchestrator;
use adapters::memory::{MemoryExportRepository, MemoryUserRepository};
use adapters::notify::LogNotifier;
use adapters::storage::ObjectStorage;
use domain::{
    ExecutionPolicy, ExportFormat, ExportSpec, ExportStatus, IdempotencyKey, Quota, QuotaBook, Scope,
    TenantQuotas,
};
use ports::{ExportRepository, ExportStorage, Orchestrator};
use service::{ExportRunner, ExportService, RequestError, RunnerConfig};

/// A's backlog and the size of its exports; B's export.
const BACKLOG: usize = 40;
const A_USERS: u64 = 20_000;
const B_USERS: u64 = 1_000;

fn tenant_a() -> Scope {
    Scope::parse("tenant-a/prod").unwrap()
}

fn tenant_b() -> Scope {
    Scope::parse("tenant-b/prod").unwrap()
}

fn quotas() -> Arc<QuotaBook> {
    Arc::new(QuotaBook::uniform(TenantQuotas { max_unfinished: 1_000, ..TenantQuotas::default() }))
}

/// Users of both tenants, the records, storage and the runner every orchestrator shares.
struct World {
    exports: Arc<MemoryExportRepository>,
    storage: Arc<dyn ExportStorage>,
    runner: Arc<ExportRunner>,
}

fn world() -> World {
    let users = MemoryUserRepository::new();
    users.seed_synthetic(&tenant_a(), A_USERS);
    users.seed_synthetic(&tenant_b(), B_USERS);
    let exports = Arc::new(MemoryExportRepository::new());
    let storage: Arc<dyn ExportStorage> = Arc::new(ObjectStorage::in_memory());
    let runner = Arc::new(ExportRunner::new(
        Arc::new(users),
        exports.clone(),
        storage.clone(),
        Arc::new(LogNotifier),
        RunnerConfig::default(),
    ));
    World { exports, storage, runner }
}

impl World {
    fn service(&self, orchestrator: Arc<dyn Orchestrator>) -> ExportService {
        ExportService::new(
            self.exports.clone(),
            self.storage.clone(),
            orchestrator,
            self.runner.clone(),
            Duration::from_secs(60),
        )
        .with_quotas(quotas())
    }

    async fn unfinished(&self, scope: &Scope) -> usize {
        let all = self.exports.list_unfinished().await.unwrap();
        all.iter().filter(|e| &e.scope == scope).count()
    }
}

/// B's synchronous export: how long it took, after checking it completed.
async fn b_sync_export(service: &ExportService) -> Duration {
    let started = Instant::now();
    let done = service
        .request_and_wait(&tenant_b(), ExportSpec::new(ExportFormat::Csv), None, Duration::from_secs(60))
        .await
        .unwrap();
    let took = started.elapsed();
    assert_eq!(done.export.status(), ExportStatus::Completed, "{:?}", done.export);
    assert_eq!(done.export.outcome().unwrap().record_count, B_USERS);
    took
}

/// Queues A's backlog, then times B; returns (B alone, B behind A's backlog, A's exports still
/// unfinished when B completed).
async fn measure(world: &World, service: &ExportService) -> (Duration, Duration, usize) {
    let alone = b_sync_export(service).await;
    for _ in 0..BACKLOG {
        service.request(&tenant_a(), ExportSpec::new(ExportFormat::Csv), None).await.unwrap();
    }
    let behind = b_sync_export(service).await;
    let a_left = world.unfinished(&tenant_a()).await;
    eprintln!("B alone {alone:?}, behind A's {BACKLOG} exports {behind:?}; A had {a_left} unfinished");
    (alone, behind, a_left)
}

/// Within 3x of B alone (plus a second: at this size B takes a few hundred milliseconds, and a
/// loaded test machine's scheduling noise is of that order), and never behind A's whole queue
/// (which takes several seconds).
fn assert_fair(alone: Duration, behind: Duration, a_left: usize) {
    let bound = alone * 3 + Duration::from_secs(1);
    assert!(behind <= bound, "B took {behind:?} behind A's backlog, {alone:?} alone");
    assert!(a_left >= BACKLOG / 2, "B finished only after most of A's backlog ({a_left} left)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_process_a_tenants_backlog_does_not_hold_up_another_tenant() {
    let world = world();
    let orchestrator = InProcessOrchestrator::with_quotas(
        world.runner.clone(),
        world.exports.clone(),
        ExecutionPolicy::default(),
        4,
        quotas(),
    )
    .with_export_threads(ExportThreads::start(DEFAULT_NICE).unwrap());
    let service = world.service(Arc::new(orchestrator.clone()));
    let (alone, behind, a_left) = measure(&world, &service).await;
    assert_fair(alone, behind, a_left);
    orchestrator.shutdown(Duration::ZERO).await;
}

#[tokio::test]
async fn the_unfinished_quota_refuses_new_exports_but_not_retries() {
    let world = world();
    // An orchestrator that never runs anything keeps every export pending.
    let service = ExportService::new(
        world.exports.clone(),
        world.storage.clone(),
        Arc::new(IdleOrchestrator),
        world.runner.clone(),
        Duration::from_secs(60),
    )
    .with_quotas(Arc::new(QuotaBook::uniform(TenantQuotas { max_unfinished: 3, ..TenantQuotas::default() })));
    let key = IdempotencyKey::parse("first-request").unwrap();
    let csv = || ExportSpec::new(ExportFormat::Csv);
    let first = service.request(&tenant_a(), csv(), Some(key.clone())).await.unwrap();
    for _ in 0..2 {
        service.request(&tenant_a(), csv(), None).await.unwrap();
    }
    match service.request(&tenant_a(), csv(), None).await {
        Err(RequestError::QuotaExceeded { quota: Quota::MaxUnfinished, limit: 3 }) => {}
        other => panic!("expected the max_unfinished quota, got {other:?}"),
    }
    // The retried first request still finds its export; another tenant is not affected.
    let again = service.request(&tenant_a(), csv(), Some(key)).await.unwrap();
    assert_eq!((again.export.id, again.created), (first.export.id, false));
    assert!(service.request(&tenant_b(), csv(), None).await.unwrap().created);
    assert_eq!(world.unfinished(&tenant_a()).await, 3);
}

/// Accepts every export and runs none.
struct IdleOrchestrator;

#[async_trait::async_trait]
impl Orchestrator for IdleOrchestrator {
    async fn start(&self, _: &domain::Export) -> Result<(), ports::PortError> {
        Ok(())
    }
    async fn start_batch(&self, _: &domain::Batch) -> Result<(), ports::PortError> {
        Ok(())
    }
    async fn wait(
        &self,
        _: &Scope,
        _: domain::ExportId,
        _: Duration,
    ) -> Result<ports::WaitOutcome, ports::PortError> {
        Ok(ports::WaitOutcome::StillRunning)
    }
    async fn cancel(&self, _: &domain::Export) -> Result<ports::CancelOutcome, ports::PortError> {
        Ok(ports::CancelOutcome::NotRunning)
    }
    async fn inspect(&self, _: &domain::Export) -> Result<ports::RunState, ports::PortError> {
        Ok(ports::RunState::Live)
    }
    async fn ping(&self) -> Result<(), ports::PortError> {
        Ok(())
    }
}

#[cfg(feature = "temporal")]
mod temporal {
    use adapters::temporal::testkit::{test_client, unique_task_queue, with_workers};
    use adapters::temporal::{TaskQueues, TemporalOrchestrator, WorkerDeps, Workload, workload_options};
    use temporalio_sdk::WorkerOptions;
    use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A worker as the binary builds it: 4 export slots, at most `max_running` (2) of a tenant,
    /// its bookkeeping on the control queue's own slots, attempts on the export threads.
    fn worker_options(world: &World, task_queue: &str) -> Vec<WorkerOptions> {
        let deps = WorkerDeps {
            runner: world.runner.clone(),
            exports: world.exports.clone(),
            storage: world.storage.clone(),
            default_policy: ExecutionPolicy::default(),
            shutdown: CancellationToken::new(),
            reconciler: None,
            quotas: quotas(),
            export_threads: ExportThreads::start(DEFAULT_NICE).unwrap(),
        };
        let queues = TaskQueues::new(task_queue);
        let all = workload_options(&queues, &Workload::ALL, &deps).unwrap();
        all.into_iter()
            .map(|(workload, mut options)| {
                let activities = if workload == Workload::Exports { 4 } else { 16 };
                options.tuner = TunerHolder::builder()
                    .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(10))
                    .activity_task_slot_supplier(FixedSizeSlotSupplier::new(activities))
                    .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(8))
                    .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
                    .build()
                    .into();
                options
            })
            .collect()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn temporal_a_tenants_backlog_does_not_hold_up_another_tenant() {
        let world = world();
        let client = test_client().await;
        let task_queue = unique_task_queue("fairness");
        let orchestrator =
            TemporalOrchestrator::new(client.clone(), task_queue.clone(), ExecutionPolicy::default());
        let service = world.service(Arc::new(orchestrator));
        let options = worker_options(&world, &task_queue);
        let (alone, behind, a_left) = with_workers(&client, options, measure(&world, &service)).await;
        assert_fair(alone, behind, a_left);
    }
}
