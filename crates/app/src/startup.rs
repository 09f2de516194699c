//! Builds the application once, for `main` and for the tests alike: configuration in, ports
//! wired, listener bound.

use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use adapters::inprocess::InProcessOrchestrator;
use adapters::nats::EventConsumer;
use adapters::scheduler::InProcessScheduler;
use adapters::temporal::{TemporalOrchestrator, TemporalScheduler, TemporalSettings};
use anyhow::Context;
use axum::Router;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use domain::{EnvironmentId, Scope, TenantId};
use ports::{Orchestrator, Scheduler};
use rand::Rng;
use service::{
    BatchService, ExportRunner, ExportService, Reconciler, RetentionSweeper, ScheduleService,
    ScheduledExports,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use tracing::{info, warn};
pub use wiring::Adapters;

use crate::auth::{ApiKeys, OperatorKeys};
use crate::config::{Config, OrchestratorKind};
use crate::limits::Limits;
use crate::readiness::ReadinessCache;
use crate::routes;
use crate::serve::{self, ServeSettings};
use crate::state::{AppState, Dependencies, SyncLimits};

/// The `demo/dev` tenant created when no API key is configured.
#[derive(Clone)]
pub struct DemoTenant {
    pub scope: Scope,
    /// Valid until the process stops.
    pub api_key: String,
}

impl fmt::Debug for DemoTenant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DemoTenant").field("scope", &self.scope).field("api_key", &"<redacted>").finish()
    }
}

impl DemoTenant {
    fn generate() -> anyhow::Result<Self> {
        let scope = Scope::new(TenantId::parse("demo")?, EnvironmentId::parse("dev")?);
        let mut secret = [0_u8; 32];
        rand::rng().fill_bytes(&mut secret);
        Ok(Self { scope, api_key: format!("uex_{}", URL_SAFE_NO_PAD.encode(secret)) })
    }
}

/// The orchestrator this process uses. The in-process one also needs start-up recovery and a
/// graceful shutdown; Temporal keeps its own state.
#[derive(Clone)]
enum Orchestration {
    /// With the retention sweep and the reconciler, which stop when this is dropped.
    InProcess(InProcessOrchestrator, Arc<(AbortOnDropHandle<()>, AbortOnDropHandle<()>)>),
    Temporal(TemporalOrchestrator),
}

/// Sweeps expired exports every `every` (the first sweep right away), in batches.
fn spawn_retention_sweep(sweeper: RetentionSweeper, every: Duration) -> AbortOnDropHandle<()> {
    const BATCH: usize = 500;
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            loop {
                match sweeper.sweep(chrono::Utc::now(), BATCH).await {
                    Ok(report) if report.more && report.expired > 0 => continue,
                    Ok(_) => break,
                    Err(err) => {
                        warn!(error = %err, "retention sweep failed; retrying at the next interval");
                        break;
                    }
                }
            }
        }
    }))
}

/// Runs the reconciler every `every` (the first pass one interval after start-up, which has just
/// resumed everything itself).
fn spawn_reconciler(reconciler: Reconciler, every: Duration) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut ticks = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            if let Err(err) = reconciler.reconcile_once().await {
                warn!(error = %err, "reconcile pass failed; retrying at the next interval");
            }
        }
    }))
}

impl Orchestration {
    fn port(&self) -> Arc<dyn Orchestrator> {
        match self {
            Self::InProcess(o, _) => Arc::new(o.clone()),
            Self::Temporal(o) => Arc::new(o.clone()),
        }
    }

    async fn shutdown(&self, grace: Duration) {
        match self {
            Self::InProcess(o, background) => {
                let (sweeping, reconciling) = &**background;
                sweeping.abort();
                reconciling.abort();
                o.shutdown(grace).await;
            }
            // Workflows run in worker processes and outlive this one.
            Self::Temporal(_) => {}
        }
    }
}

/// A built application: listener bound, routes wired, exports ready to run.
pub struct Application {
    listener: TcpListener,
    local_addr: SocketAddr,
    router: Router,
    /// `USEREXPORT_METRICS_LISTEN`: metrics served there rather than on the API's port.
    metrics_listener: Option<TcpListener>,
    orchestrator: Orchestration,
    /// The in-process scheduler's timers, stopped at shutdown (Temporal's live on).
    scheduler: Option<InProcessScheduler>,
    /// The NATS consumer of `ExportRequested` events, when `USEREXPORT_NATS_URL` is set.
    events: Option<EventConsumer>,
    shutdown_grace: Duration,
    serve: ServeSettings,
    demo: Option<DemoTenant>,
}

impl fmt::Debug for Application {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Application").field("local_addr", &self.local_addr).finish_non_exhaustive()
    }
}

impl Application {
    /// Builds the application on the embedded adapters.
    ///
    /// # Errors
    /// Invalid configuration (the message names the setting), or a port that cannot be bound.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        Self::build_with(config, |adapters| adapters).await
    }

    /// Like [`Application::build`], with a chance to replace or wrap the embedded adapters (tests
    /// inject failures this way).
    ///
    /// # Errors
    /// As [`Application::build`].
    pub async fn build_with(
        config: Config,
        customize: impl FnOnce(Adapters) -> Adapters,
    ) -> anyhow::Result<Self> {
        config.check()?;
        let policy = config.execution_policy()?;
        let (keys, demo) = match &config.api_keys {
            Some(raw) => (ApiKeys::parse(raw.expose()).context("invalid USEREXPORT_API_KEYS")?, None),
            None => {
                let demo = DemoTenant::generate()?;
                (ApiKeys::single(&demo.api_key, demo.scope.clone()), Some(demo))
            }
        };
        let operators = match &config.operator_keys {
            Some(raw) => OperatorKeys::parse(raw.expose()).context("invalid USEREXPORT_OPERATOR_KEYS")?,
            None => OperatorKeys::default(),
        };
        operators.check_disjoint(&keys).context("invalid USEREXPORT_OPERATOR_KEYS")?;
        if operators.is_empty() {
            info!("no operator keys (USEREXPORT_OPERATOR_KEYS): the batch endpoints are closed");
        }
        let mut tenants = config.tenants.directory()?;
        for scope in keys.scopes() {
            tenants.include(scope);
        }
        // Every known tenant gets demo users (memory users), so a batch over "all" exports some.
        let known: Vec<Scope> = tenants.scopes().cloned().collect();
        let quotas = config.quotas.quota_book(&tenants)?;
        let mut adapters = customize(wiring::build_adapters(&config.backends, &known).await?).metered();
        wiring::metrics::handle();
        adapters.notifier = config.notify.notifier(&tenants)?;
        adapters.callbacks = config.tenants.callbacks.sender(&tenants)?;
        let runner = Arc::new(
            ExportRunner::new(
                Arc::clone(&adapters.users),
                Arc::clone(&adapters.exports),
                Arc::clone(&adapters.storage),
                Arc::clone(&adapters.notifier),
                config.policy.runner_config()?,
            )
            .with_callbacks(Arc::clone(&adapters.callbacks)),
        );
        let orchestrator = match config.orchestrator {
            OrchestratorKind::Inprocess => {
                let orchestrator = InProcessOrchestrator::with_quotas(
                    Arc::clone(&runner),
                    Arc::clone(&adapters.exports),
                    policy,
                    config.max_concurrent_exports,
                    Arc::clone(&quotas),
                )
                .with_export_threads(config.policy.export_threads()?);
                let resumed = orchestrator.recover().await.context("resuming unfinished exports")?;
                if resumed > 0 {
                    info!(resumed, "resumed unfinished exports");
                }
                // In Temporal mode the worker's system schedules run both instead.
                let sweeper =
                    RetentionSweeper::new(Arc::clone(&adapters.exports), Arc::clone(&adapters.storage));
                let sweeping = spawn_retention_sweep(sweeper, config.policy.retention_sweep_interval()?);
                let reconciler = Reconciler::new(
                    Arc::clone(&adapters.exports),
                    Arc::new(orchestrator.clone()),
                    Arc::clone(&runner),
                    config.policy.reconcile_settings(),
                );
                let reconciling = spawn_reconciler(reconciler, config.policy.reconcile_interval()?);
                Orchestration::InProcess(orchestrator, Arc::new((sweeping, reconciling)))
            }
            OrchestratorKind::Temporal => Orchestration::Temporal(
                TemporalOrchestrator::connect(TemporalSettings {
                    connection: config.temporal.connection()?,
                    task_queue: config.temporal.task_queue.clone(),
                    policy,
                })
                .await?
                // A scope's burst waits as records; its workflows start a few at a time.
                .with_admission(Arc::clone(&adapters.exports), Arc::clone(&quotas)),
            ),
        };
        let dyn_orchestrator = orchestrator.port();
        let tenants = Arc::new(tenants);
        let (schedules, scheduler) =
            build_schedules(&orchestrator, &adapters, Arc::clone(&dyn_orchestrator), policy, &quotas).await?;
        let schedules = schedules.with_rules(config.schedules.rules()).with_tenants(Arc::clone(&tenants));
        let service = ExportService::new(
            Arc::clone(&adapters.exports),
            Arc::clone(&adapters.storage),
            Arc::clone(&dyn_orchestrator),
            runner,
            config.backends.download_url_ttl(),
        )
        .with_retention(config.policy.retention_policy()?)
        .with_tenants(Arc::clone(&tenants))
        .with_quotas(quotas);
        let batches = BatchService::new(
            Arc::clone(&adapters.batches),
            Arc::clone(&adapters.exports),
            Arc::clone(&dyn_orchestrator),
        );
        let service = Arc::new(service);

        let listener = TcpListener::bind(config.listen)
            .await
            .with_context(|| format!("cannot listen on USEREXPORT_LISTEN {}", config.listen))?;
        let local_addr = listener.local_addr().context("reading the bound address")?;
        let metrics_listener = match config.metrics.metrics_listen {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .with_context(|| format!("cannot listen on USEREXPORT_METRICS_LISTEN {addr}"))?,
            ),
            None => None,
        };
        // Both orchestrators: the consumer only stores the record and starts the export.
        let events = match config.events.nats_settings() {
            Some(settings) => Some(
                EventConsumer::start(settings, Arc::clone(&service), Arc::clone(&tenants))
                    .await
                    .context("USEREXPORT_NATS_URL: cannot start the ExportRequested consumer")?,
            ),
            None => None,
        };
        let state = AppState {
            service: Arc::clone(&service),
            schedules: Arc::new(schedules),
            keys: Arc::new(keys),
            operators: Arc::new(operators),
            batches: Arc::new(batches),
            tenants: Arc::clone(&tenants),
            dependencies: Dependencies {
                users: adapters.users,
                exports: adapters.exports,
                storage: adapters.storage,
                orchestrator: dyn_orchestrator,
                events: events.as_ref().map(EventConsumer::health),
            },
            sync: SyncLimits {
                default_wait: config.sync_timeout_default(),
                max_wait: config.sync_timeout_max(),
            },
            retention_max_days: config.policy.retention_policy()?.max_days,
            webhook_replay_window: config.events.replay_window(),
            limits: Arc::new(Limits::new(&config.limits)),
            readiness: Arc::new(ReadinessCache::new(config.limits.readyz_cache())),
        };
        Ok(Self {
            listener,
            local_addr,
            router: routes::router(state, metrics_listener.is_none()),
            metrics_listener,
            orchestrator,
            scheduler,
            events,
            shutdown_grace: config.shutdown_grace(),
            serve: ServeSettings {
                header_read_timeout: config.limits.header_read_timeout(),
                max_connections: config.limits.max_connections,
            },
            demo,
        })
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Where `USEREXPORT_METRICS_LISTEN` serves metrics, when set.
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener.as_ref().and_then(|listener| listener.local_addr().ok())
    }

    pub fn port(&self) -> u16 {
        self.local_addr.port()
    }

    /// The routes with every layer, for `router().oneshot(request)` without a socket.
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The demo tenant, when no API key was configured.
    pub fn demo_tenant(&self) -> Option<&DemoTenant> {
        self.demo.as_ref()
    }

    /// Serves HTTP until `shutdown` completes, then stops accepting connections, lets open
    /// requests finish (at most the grace period), and gives running exports the grace period
    /// to finish before interrupting them (they are resumed at the next start).
    ///
    /// # Errors
    /// None today; kept for servers that can fail.
    pub async fn run_until_stopped(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let Self {
            listener,
            local_addr,
            router,
            metrics_listener,
            orchestrator,
            scheduler,
            events,
            shutdown_grace,
            serve,
            ..
        } = self;
        info!(%local_addr, "listening");
        let _metrics = metrics_listener
            .map(|listener| AbortOnDropHandle::new(tokio::spawn(wiring::metrics::serve(listener, None))));
        let stopping = CancellationToken::new();
        let signal = {
            let stopping = stopping.clone();
            async move {
                shutdown.await;
                info!("shutting down: no longer accepting connections");
                stopping.cancel();
            }
        };
        let _signal = AbortOnDropHandle::new(tokio::spawn(signal));
        let server = serve::serve(listener, router, serve, stopping.clone());
        let drain_deadline = async {
            stopping.cancelled().await;
            tokio::time::sleep(shutdown_grace).await;
        };
        tokio::select! {
            () = server => {}
            () = drain_deadline => warn!(grace_s = shutdown_grace.as_secs(), "open requests did not finish within the grace period; closing them"),
        }
        // No new exports from schedules or events once HTTP stopped taking them.
        if let Some(scheduler) = &scheduler {
            scheduler.shutdown();
        }
        // No new exports from events once HTTP stopped taking them; then let exports finish.
        if let Some(events) = events {
            events.shutdown(shutdown_grace).await;
        }
        info!(grace_s = shutdown_grace.as_secs(), "HTTP stopped; letting running exports finish");
        orchestrator.shutdown(shutdown_grace).await;
        info!("stopped");
        Ok(())
    }
}

/// The schedule service on the scheduler that matches the orchestrator (in-process timers, or
/// Temporal Schedules on the orchestrator's client and task queue), reconciled with the
/// schedule records: in-process, the timers are rebuilt from them.
async fn build_schedules(
    orchestration: &Orchestration,
    adapters: &Adapters,
    orchestrator: Arc<dyn Orchestrator>,
    policy: domain::ExecutionPolicy,
    quotas: &Arc<domain::QuotaBook>,
) -> anyhow::Result<(ScheduleService, Option<InProcessScheduler>)> {
    let fires = Arc::new(
        ScheduledExports::new(Arc::clone(&adapters.exports), orchestrator).with_quotas(Arc::clone(quotas)),
    );
    let (scheduler, in_process): (Arc<dyn Scheduler>, _) = match orchestration {
        Orchestration::InProcess(..) => {
            let scheduler = InProcessScheduler::new(Arc::clone(&fires));
            (Arc::new(scheduler.clone()), Some(scheduler))
        }
        Orchestration::Temporal(o) => {
            (Arc::new(TemporalScheduler::new(o.client().clone(), o.task_queue(), policy)), None)
        }
    };
    let service = ScheduleService::new(Arc::clone(&adapters.schedules), scheduler, fires)
        .with_quotas(Arc::clone(quotas));
    let reconciled = service.reconcile().await.context("reconciling export schedules with the scheduler")?;
    if reconciled.upserted + reconciled.removed > 0 {
        info!(scheduled = reconciled.upserted, removed = reconciled.removed, "export schedules reconciled");
    }
    Ok((service, in_process))
}
