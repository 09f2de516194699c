//! What every handler can reach: built once at start-up, cloned per request (all `Arc`s).

use std::sync::Arc;
use std::time::Duration;

use domain::TenantDirectory;
use ports::{ExportRepository, ExportStorage, Orchestrator, UserRepository};
use service::{BatchService, ExportService, ScheduleService};

use crate::auth::{ApiKeys, OperatorKeys};
use crate::limits::Limits;
use crate::readiness::ReadinessCache;

/// The dependencies `/readyz` checks.
#[derive(Clone)]
pub struct Dependencies {
    pub users: Arc<dyn UserRepository>,
    pub exports: Arc<dyn ExportRepository>,
    pub storage: Arc<dyn ExportStorage>,
    pub orchestrator: Arc<dyn Orchestrator>,
    /// The NATS connection of the event consumer, when one runs.
    pub events: Option<adapters::nats::NatsHealth>,
}

impl std::fmt::Debug for Dependencies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dependencies").field("events", &self.events.is_some()).finish_non_exhaustive()
    }
}

/// Bounds of `POST /v1/exports/sync?timeout_s=`.
#[derive(Debug, Clone, Copy)]
pub struct SyncLimits {
    pub default_wait: Duration,
    pub max_wait: Duration,
}

#[derive(Clone)]
pub struct AppState {
    pub service: Arc<ExportService>,
    pub schedules: Arc<ScheduleService>,
    pub keys: Arc<ApiKeys>,
    /// Operator keys (cross-tenant operations such as batches).
    pub operators: Arc<OperatorKeys>,
    pub batches: Arc<BatchService>,
    /// Known scopes and their settings (the API keys' scopes included).
    pub tenants: Arc<TenantDirectory>,
    pub dependencies: Dependencies,
    pub sync: SyncLimits,
    /// The longest `retention_days` a request may ask for here.
    pub retention_max_days: u32,
    /// How far a webhook's signed timestamp may be from now, either way.
    pub webhook_replay_window: Duration,
    /// Rate limits, the in-flight bound and the request timeout.
    pub limits: Arc<Limits>,
    /// `/readyz`'s last dependency checks.
    pub readiness: Arc<ReadinessCache>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState").field("keys", &self.keys).field("sync", &self.sync).finish_non_exhaustive()
    }
}
