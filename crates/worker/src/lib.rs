//! The Temporal worker: configuration, and [`run`].
//!
//! Users, export records and storage come from [`wiring`], with the same settings (flags and
//! environment variables) as the API, so a worker and an API started from one environment work
//! on the same records and files. The retry policy uses the API's variable names too.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use adapters::temporal::{
    TemporalOrchestrator, WorkerDeps, connect_client, ensure_reconcile_schedule, ensure_retention_schedule,
    register,
};
use anyhow::{Context, bail};
use clap::Parser;
use domain::{ExecutionPolicy, Scope};
use service::{ExportRunner, Reconciler};
use temporalio_sdk::runtime::worker_tuner::{FixedSizeSlotSupplier, TunerHolder};
use temporalio_sdk::{Runtime, Worker, WorkerOptions};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Local activity slots: `NotifyExport` runs as one after every export.
const LOCAL_ACTIVITY_SLOTS: usize = 8;
pub use wiring::{
    Adapters, BackendArgs, ExportsBackend, LogFormat, NotifyArgs, PolicyArgs, QuotaArgs, StorageKind,
    TemporalArgs, TenantArgs, UsersBackend,
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

    /// Activities run at the same time by this worker (export attempts and the short record
    /// bookkeeping); more wait on the task queue, for this or another worker.
    #[arg(long, env = "USEREXPORT_MAX_CONCURRENT_EXPORTS", default_value_t = 4)]
    pub max_concurrent_exports: usize,

    /// Workflow tasks processed at the same time by this worker.
    #[arg(long, env = "USEREXPORT_WORKER_MAX_WORKFLOW_TASKS", default_value_t = 10)]
    pub max_workflow_tasks: usize,

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
    let client = connect_client(&connection, "userexport-worker").await?;
    ensure_retention_schedule(
        &client,
        &config.temporal.task_queue,
        config.policy.retention_sweep_interval()?,
    )
    .await?;
    ensure_reconcile_schedule(&client, &config.temporal.task_queue, config.policy.reconcile_interval()?)
        .await?;
    // The reconciler inspects and starts workflows on this cluster, as the API would.
    let orchestrator = TemporalOrchestrator::new(client.clone(), config.temporal.task_queue.clone(), policy);
    let reconciler = Reconciler::new(
        Arc::clone(&adapters.exports),
        Arc::new(orchestrator),
        Arc::clone(&runner),
        config.policy.reconcile_settings(),
    );
    let runtime = Runtime::from_current_tokio(Default::default()).context("starting the Temporal runtime")?;

    let interrupt = CancellationToken::new();
    let mut options = WorkerOptions::new(config.temporal.task_queue.clone())
        .tuner(
            TunerHolder::builder()
                .workflow_task_slot_supplier(FixedSizeSlotSupplier::new(config.max_workflow_tasks))
                .activity_task_slot_supplier(FixedSizeSlotSupplier::new(config.max_concurrent_exports))
                // NotifyExport runs as a local activity after every export.
                .local_activity_task_slot_supplier(FixedSizeSlotSupplier::new(LOCAL_ACTIVITY_SLOTS))
                .nexus_task_slot_supplier(FixedSizeSlotSupplier::new(1))
                .build(),
        )
        .build();
    let quotas = config.quotas.quota_book(&config.tenants.directory()?)?;
    let deps = WorkerDeps {
        quotas,
        runner,
        exports: adapters.exports,
        storage: adapters.storage,
        default_policy: policy,
        shutdown: interrupt.clone(),
        reconciler: Some(Arc::new(reconciler)),
    };
    register(&mut options, &deps).context("registering the workflows and activities")?;
    let mut worker = Worker::new(&runtime, client, options).context("creating the Temporal worker")?;
    let shutdown = worker.shutdown_handle();
    info!(address = %connection.address(), namespace = %connection.namespace(), settings = %connection.summary(),
          task_queue = %config.temporal.task_queue, max_concurrent_exports = config.max_concurrent_exports,
          "worker started");

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
    tokio::select! {
        result = worker.run() => result.context("the Temporal worker failed")?,
        () = stopping => {}
    }
    info!("worker stopped");
    Ok(())
}
