//! The Temporal worker: configuration, and [`run`].
//!
//! Users, export records and storage come from [`wiring`], with the same settings (flags and
//! environment variables) as the API, so a worker and an API started from one environment work
//! on the same records and files. The retry policy uses the API's variable names too.
//!
//! A worker serves the workloads it is told (`--queues exports,control,batch`, default all):
//! one SDK worker per task queue ([`adapters::temporal::TaskQueues`]), each with its own slot
//! limits, sharing the runtime, the client and the per-tenant running count.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adapters::temporal::{
    TaskQueues, TemporalOrchestrator, WorkerDeps, Workload, connect_client_metered,
    ensure_reconcile_schedule, ensure_retention_schedule, ensure_search_attributes, workload_options,
};
use anyhow::{Context, bail};
use clap::Parser;
use domain::{ExecutionPolicy, Scope};
use ports::Orchestrator;
use service::{ExportRunner, Reconciler};
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

mod metrics_endpoint;

/// Local activity slots: `NotifyExport` runs as one after every export.
const LOCAL_ACTIVITY_SLOTS: usize = 8;
pub use wiring::{
    Adapters, BackendArgs, ExportsBackend, LogFormat, MetricsArgs, NotifyArgs, PolicyArgs, QuotaArgs,
    StorageKind, TemporalArgs, TenantArgs, UsersBackend,
};

/// userexport's Temporal worker. Every flag falls back to the environment variable shown in
/// `--help`; `RUST_LOG` sets the log filter (default `info`).
#[derive(Debug, Clone, Parser)]
#[command(name = "userexport-worker", version, about)]
pub struct WorkerConfig {
    /// Temporal server, namespace and task queue: the same settings as the API's.
    #[command(flatten)]
    pub temporal: TemporalArgs,

    /// Users, export records and storage: the same settings as the API's.
    #[command(flatten)]
    pub backends: BackendArgs,

    /// Scopes (`tenant/environment`, comma-separated) seeded with demo users when users are in
    /// `memory`.
    #[arg(long, env = "USEREXPORT_DEMO_SCOPES", value_delimiter = ',', default_value = "demo/dev")]
    pub demo_scopes: Vec<String>,

    /// Workloads this worker serves, each on its own task queue named from
    /// `USEREXPORT_TASK_QUEUE`: `exports` (`{prefix}-exports`: export attempts), `control`
    /// (`{prefix}`: export workflows and their bookkeeping, retention, reconcile), `batch`
    /// (`{prefix}-batch`: batch parents).
    #[arg(long, env = "USEREXPORT_QUEUES", value_delimiter = ',', default_value = "exports,control,batch")]
    pub queues: Vec<Workload>,

    /// Export attempts (`ExportUserData`) run at the same time by this worker (exports queue);
    /// more wait on the queue, for this or another worker.
    #[arg(long, env = "USEREXPORT_MAX_CONCURRENT_EXPORTS", default_value_t = 4)]
    pub max_concurrent_exports: usize,

    /// Bookkeeping activities run at the same time by this worker (control queue: prepare,
    /// finish, status reads, retention sweeps, reconcile passes).
    #[arg(long, env = "USEREXPORT_CONTROL_MAX_ACTIVITIES", default_value_t = 16)]
    pub control_max_activities: usize,

    /// Workflow tasks processed at the same time by this worker (control queue).
    #[arg(long, env = "USEREXPORT_WORKER_MAX_WORKFLOW_TASKS", default_value_t = 10)]
    pub max_workflow_tasks: usize,

    /// Workflow tasks of batch parents processed at the same time by this worker (batch queue).
    #[arg(long, env = "USEREXPORT_BATCH_MAX_WORKFLOW_TASKS", default_value_t = 4)]
    pub batch_max_workflow_tasks: usize,

    /// On SIGINT/SIGTERM: how long running exports may take to finish before they are
    /// interrupted (they then fail retryably and run again on another worker).
    #[arg(long, env = "USEREXPORT_SHUTDOWN_GRACE_S", default_value_t = 30)]
    pub shutdown_grace_s: u64,

    /// Policy of workflows started without one (the API always sends its own), and retention.
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Known tenants (their notification addresses): the same setting as the API's.
    #[command(flatten)]
    pub tenants: TenantArgs,

    /// Per-tenant quotas: the same settings as the API's (`max_running` is per worker here).
    #[command(flatten)]
    pub quotas: QuotaArgs,

    /// Completion notifications: the same settings as the API's.
    #[command(flatten)]
    pub notify: NotifyArgs,

    /// Log line format on stderr.
    #[arg(long, env = "USEREXPORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Prometheus metrics (ours and the Temporal SDK's) on `USEREXPORT_METRICS_LISTEN`; none
    /// when unset.
    #[command(flatten)]
    pub metrics: MetricsArgs,
}

impl WorkerConfig {
    /// The policy of workflows started without one, validated.
    ///
    /// # Errors
    /// One line naming the setting that makes the policy invalid.
    pub fn execution_policy(&self) -> anyhow::Result<ExecutionPolicy> {
        self.policy.execution_policy()
    }

    /// Checks the settings no type can express.
    ///
    /// # Errors
    /// One line naming the offending setting.
    pub fn check(&self) -> anyhow::Result<()> {
        if self.max_concurrent_exports == 0 {
            bail!("invalid USEREXPORT_MAX_CONCURRENT_EXPORTS: must be at least 1");
        }
        if self.max_workflow_tasks < 2 {
            bail!("invalid USEREXPORT_WORKER_MAX_WORKFLOW_TASKS: must be at least 2");
        }
        if self.control_max_activities == 0 {
            bail!("invalid USEREXPORT_CONTROL_MAX_ACTIVITIES: must be at least 1");
        }
        if self.batch_max_workflow_tasks < 2 {
            bail!("invalid USEREXPORT_BATCH_MAX_WORKFLOW_TASKS: must be at least 2");
        }
        if self.queues.is_empty() {
            bail!("invalid USEREXPORT_QUEUES: name at least one of exports, control, batch");
        }
        self.demo_scopes()?;
        self.execution_policy()?;
        self.policy.retention_policy()?;
        self.policy.retention_sweep_interval()?;
        self.quotas.quota_book(&self.tenants.directory()?)?;
        Ok(())
    }

    pub fn demo_scopes(&self) -> anyhow::Result<Vec<Scope>> {
        self.demo_scopes
            .iter()
            .filter(|raw| !raw.trim().is_empty())
            .map(|raw| {
                Scope::parse(raw.trim()).with_context(|| {
                    format!("invalid USEREXPORT_DEMO_SCOPES entry {raw:?} (tenant/environment)")
                })
            })
            .collect()
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }

    /// The workloads to serve, each once, in a fixed order.
    pub fn workloads(&self) -> Vec<Workload> {
        let mut workloads = self.queues.clone();
        workloads.sort_unstable();
        workloads.dedup();
        workloads
    }

    /// Slot limits of `workload`'s SDK worker. Every kind of slot needs a supplier; a kind the
    /// queue's worker does not poll gets the least one.
    fn tuner(&self, workload: Workload) -> TunerHolder {
        let (workflow_tasks, activities, local_activities) = match workload {
            Workload::Exports => (2, self.max_concurrent_exports, 1),
            // NotifyExport runs as a local activity after every export.
            Workload::Control => (self.max_workflow_tasks, self.control_max_activities, LOCAL_ACTIVITY_SLOTS),
            Workload::Batch => (self.batch_max_workflow_tasks, 1, 1),
        };
        TunerHolder::builder()
            .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(workflow_tasks))
            .activity_task_slot_supplier(FixedSizeSlotSupplier::new(activities))
            .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(local_activities))
            .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
            .build()
    }
}

/// Runs the worker until `stop` resolves, then shuts down gracefully: polling stops at once,
/// running exports get [`WorkerConfig::shutdown_grace`] to finish, and whatever still runs is
/// interrupted (its record is left for the retry, which Temporal schedules on another worker).
///
/// # Errors
/// Invalid configuration, an unreachable store or Temporal server, or a worker failure.
pub async fn run(config: WorkerConfig, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    config.check()?;
    let mut adapters = wiring::build_adapters(&config.backends, &config.demo_scopes()?).await?;
    let tenants = config.tenants.directory()?;
    adapters.notifier = config.notify.notifier(&tenants)?;
    adapters.callbacks = config.tenants.callbacks.sender(&tenants)?;
    run_with(config, adapters, stop).await
}

/// Like [`run`], on adapters built by the caller (tests wrap or inject them this way).
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: WorkerConfig,
    adapters: Adapters,
    stop: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    config.check()?;
    let adapters = adapters.metered();
    let telemetry = metrics_endpoint::start(&config.metrics).await?;
    let policy = config.execution_policy()?;
    if config.backends.exports == ExportsBackend::Memory {
        warn!(
            "export records are in this process's memory: exports started through the API are invisible \
             here (set USEREXPORT_EXPORTS=postgres to share them)"
        );
    }
    let runner = Arc::new(
        ExportRunner::new(
            adapters.users,
            Arc::clone(&adapters.exports),
            Arc::clone(&adapters.storage),
            adapters.notifier,
            config.policy.runner_config()?,
        )
        .with_callbacks(adapters.callbacks),
    );
    let connection = config.temporal.connection()?;
    let client = connect_client_metered(&connection, "userexport-worker", telemetry.client_meter()).await?;
    // Before anything starts export workflows with them; refused (Temporal Cloud) is a warning.
    ensure_search_attributes(&client).await.context("registering the export search attributes")?;
    let queues = TaskQueues::new(config.temporal.task_queue.as_str());
    let workloads = config.workloads();
    let quotas = config.quotas.quota_book(&config.tenants.directory()?)?;
    // Starts workflows as the API does, admitting a scope's waiting exports as others end.
    let orchestrator: Arc<dyn Orchestrator> = Arc::new(
        TemporalOrchestrator::new(client.clone(), config.temporal.task_queue.clone(), policy)
            .with_admission(Arc::clone(&adapters.exports), Arc::clone(&quotas)),
    );
    // The system schedules and the reconciler go with the control queue, where their workflows run.
    let reconciler = if workloads.contains(&Workload::Control) {
        ensure_retention_schedule(
            &client,
            &config.temporal.task_queue,
            config.policy.retention_sweep_interval()?,
        )
        .await?;
        ensure_reconcile_schedule(&client, &config.temporal.task_queue, config.policy.reconcile_interval()?)
            .await?;
        // The reconciler inspects and starts workflows on this cluster, as the API would.
        Some(Arc::new(Reconciler::new(
            Arc::clone(&adapters.exports),
            Arc::clone(&orchestrator),
            Arc::clone(&runner),
            config.policy.reconcile_settings(),
        )))
    } else {
        None
    };
    let runtime =
        Runtime::from_current_tokio(telemetry.runtime_options()?).context("starting the Temporal runtime")?;

    let interrupt = CancellationToken::new();
    let deps = WorkerDeps {
        quotas,
        runner,
        exports: adapters.exports,
        storage: adapters.storage,
        default_policy: policy,
        shutdown: interrupt.clone(),
        reconciler,
        export_threads: config.policy.export_threads()?,
        admission: Some(orchestrator),
    };
    let mut workers = Vec::with_capacity(workloads.len());
    for (workload, mut options) in
        workload_options(&queues, &workloads, &deps).context("registering the workflows and activities")?
    {
        options.tuner = config.tuner(workload).into();
        let worker = Worker::new(&runtime, client.clone(), options)
            .with_context(|| format!("creating the Temporal worker of the {workload} queue"))?;
        info!(queue = %workload, task_queue = %queues.name(workload), "polling");
        workers.push((workload, worker));
    }
    let shutdowns: Vec<_> = workers.iter().map(|(_, worker)| worker.shutdown_handle()).collect();
    let shutdown = move || shutdowns.iter().for_each(|shutdown| shutdown());
    info!(address = %connection.address(), namespace = %connection.namespace(), settings = %connection.summary(),
          task_queue = %config.temporal.task_queue, queues = ?workloads,
          max_concurrent_exports = config.max_concurrent_exports, "worker started");

    let grace = config.shutdown_grace();
    let stopping = async move {
        stop.await;
        info!(
            grace_s = grace.as_secs(),
            "stopping: no new tasks; running exports may finish within the grace period"
        );
        shutdown();
        tokio::time::sleep(grace).await;
        warn!("grace period over: interrupting running exports (they are retried on another worker)");
        interrupt.cancel();
        std::future::pending::<()>().await;
    };
    // Each worker stops after the shutdown, once its own running tasks are done; the first
    // failure stops them all.
    let running = futures::future::try_join_all(workers.iter_mut().map(|(workload, worker)| async move {
        worker.run().await.with_context(|| format!("the Temporal worker of the {workload} queue failed"))
    }));
    tokio::select! {
        result = running => { result?; }
        () = stopping => {}
    }
    info!("worker stopped");
    Ok(())
}
