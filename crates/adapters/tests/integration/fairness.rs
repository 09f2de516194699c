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

/// Workflows a scope has at once in Temporal mode: the default `max_running`.
const MAX_STARTED: u32 = 2;

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

    /// `scope`'s unfinished exports that have a run (admitted).
    async fn started(&self, scope: &Scope) -> u32 {
        let all = self.exports.list_unfinished().await.unwrap();
        let started = all.iter().filter(|e| &e.scope == scope && e.admitted_at().is_some()).count();
        u32::try_from(started).unwrap()
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

    /// The orchestrator as the API and the worker build it: a scope's exports admitted a few
    /// at a time.
    fn orchestrator(
        world: &World,
        client: &temporalio_client::Client,
        task_queue: &str,
    ) -> TemporalOrchestrator {
        TemporalOrchestrator::new(client.clone(), task_queue, ExecutionPolicy::default())
            .with_admission(world.exports.clone(), quotas())
    }

    /// A worker as the binary builds it: 4 export slots, at most `max_running` (2) of a tenant,
    /// its bookkeeping on the control queue's own slots, attempts on the export threads, the
    /// scope's next waiting export admitted when one ends.
    fn worker_options(world: &World, orchestrator: &TemporalOrchestrator) -> Vec<WorkerOptions> {
        let deps = WorkerDeps {
            runner: world.runner.clone(),
            exports: world.exports.clone(),
            storage: world.storage.clone(),
            default_policy: ExecutionPolicy::default(),
            shutdown: CancellationToken::new(),
            reconciler: None,
            quotas: quotas(),
            export_threads: ExportThreads::start(DEFAULT_NICE).unwrap(),
            admission: Some(Arc::new(orchestrator.clone())),
        };
        let queues = TaskQueues::new(orchestrator.task_queue());
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
        let orchestrator = orchestrator(&world, &client, &task_queue);
        let service = world.service(Arc::new(orchestrator.clone()));
        let options = worker_options(&world, &orchestrator);
        let measured = async {
            let measured = measure(&world, &service).await;
            // A's backlog waits as records: only `max_running` of its exports have workflows.
            assert!(world.started(&tenant_a()).await <= MAX_STARTED, "A has more workflows than admitted");
            measured
        };
        let (alone, behind, a_left) = with_workers(&client, options, measured).await;
        assert_fair(alone, behind, a_left);
    }

    /// A scope's burst waits as records and runs in order, a few workflows at a time; a waiting
    /// export can be waited for and cancelled; the reconciler admits what a lost step left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn temporal_admission_runs_a_burst_a_few_workflows_at_a_time() {
        const BURST: usize = 10;
        let world = world();
        let client = test_client().await;
        let task_queue = unique_task_queue("admission");
        let orchestrator = orchestrator(&world, &client, &task_queue);
        let service = world.service(Arc::new(orchestrator.clone()));
        let csv = || ExportSpec::new(ExportFormat::Csv);

        // Before any worker polls: the first `max_running` have workflows, the rest wait.
        let mut burst = Vec::new();
        for _ in 0..BURST {
            burst.push(service.request(&tenant_a(), csv(), None).await.unwrap().export);
        }
        assert_eq!(world.started(&tenant_a()).await, MAX_STARTED);
        let has_workflow = |export: &domain::Export| {
            let handle = client
                .get_workflow_handle::<adapters::temporal::UserDataExportWorkflow>(export.workflow_id());
            async move { handle.describe(Default::default()).await.is_ok() }
        };
        for (i, export) in burst.iter().enumerate() {
            let stored = world.exports.get(&tenant_a(), export.id).await.unwrap().unwrap();
            assert_eq!(stored.awaits_admission(), i >= MAX_STARTED as usize, "export {i}");
            assert_eq!(has_workflow(export).await, i < MAX_STARTED as usize, "export {i}'s workflow");
        }
        let waiting = burst[BURST - 2].clone();
        assert_eq!(orchestrator.inspect(&waiting).await.unwrap(), ports::RunState::Queued);
        // Cancelling a waiting export only changes its record: it never gets a workflow.
        let cancelled = service.cancel(&tenant_a(), burst[BURST - 1].id).await.unwrap();
        assert_eq!(cancelled.status(), ExportStatus::Cancelled);

        let options = worker_options(&world, &orchestrator);
        with_workers(&client, options, async {
            // A synchronous wait on a waiting export lasts until it ran.
            let outcome = orchestrator.wait(&tenant_a(), waiting.id, Duration::from_secs(120)).await.unwrap();
            assert_eq!(outcome, ports::WaitOutcome::Finished);
            let deadline = Instant::now() + Duration::from_secs(120);
            while world.unfinished(&tenant_a()).await > 0 {
                assert!(Instant::now() < deadline, "the burst did not finish");
                assert!(world.started(&tenant_a()).await <= MAX_STARTED, "admitted past the limit");
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        })
        .await;
        let mut stored = Vec::new();
        for export in &burst {
            stored.push(world.exports.get(&tenant_a(), export.id).await.unwrap().unwrap());
        }
        let (ran, last) = stored.split_at(BURST - 1);
        assert!(ran.iter().all(|e| e.status() == ExportStatus::Completed), "{ran:?}");
        assert_eq!(last[0].status(), ExportStatus::Cancelled);
        assert!(!has_workflow(&last[0]).await, "a cancelled waiting export got a workflow");
        // Admitted oldest first.
        let admitted: Vec<_> = ran.iter().map(|e| e.admitted_at().unwrap()).collect();
        assert!(admitted.is_sorted(), "{admitted:?}");

        // Waiting exports whose admitting step was lost: the reconciler admits them.
        let lost: Vec<_> = (0..MAX_STARTED + 2)
            .map(|_| {
                let created = chrono::Utc::now() - chrono::TimeDelta::minutes(5);
                domain::Export::new(
                    domain::ExportId::from_uuid(uuid::Uuid::now_v7()),
                    tenant_b(),
                    csv(),
                    None,
                    created,
                )
            })
            .collect();
        for export in &lost {
            world.exports.create_if_absent(export).await.unwrap();
        }
        let reconciler = service::Reconciler::new(
            world.exports.clone(),
            Arc::new(orchestrator.clone()),
            world.runner.clone(),
            service::ReconcileSettings {
                start_grace: Duration::from_secs(60),
                notify_grace: Duration::from_secs(60),
            },
        );
        let report = reconciler.reconcile_once().await.unwrap();
        assert_eq!(
            (report.queued, report.started, report.errors),
            (lost.len(), MAX_STARTED as usize, 0),
            "{report:?}"
        );
        assert_eq!(world.started(&tenant_b()).await, MAX_STARTED);
        for export in &lost {
            service.cancel(&tenant_b(), export.id).await.unwrap();
        }
    }
}
