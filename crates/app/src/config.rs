//! Start-up configuration: command-line flags, each with an environment-variable fallback.
//!
//! Nothing here is required: with no configuration at all the binary starts the embedded default
//! (in-memory users and export records, files under `./data`, a `demo/dev` tenant with a fresh key).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::bail;
use clap::{Parser, Subcommand, ValueEnum};
use domain::ExecutionPolicy;
pub use wiring::{
    BackendArgs, LogFormat, MetricsArgs, NotifyArgs, PolicyArgs, QuotaArgs, ScheduleArgs, StorageKind,
    TemporalArgs, TenantArgs,
};

const DEFAULT_LISTEN: &str = "127.0.0.1:8080";
const DEFAULT_MAX_CONCURRENT_EXPORTS: usize = 4;
const DEFAULT_SYNC_TIMEOUT_MAX_S: u64 = 60;
const DEFAULT_SYNC_TIMEOUT_S: u64 = 30;
const DEFAULT_SHUTDOWN_GRACE_S: u64 = 30;

/// Which orchestrator runs exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OrchestratorKind {
    /// Tokio tasks in this process (the embedded default).
    Inprocess,
    /// Temporal workflows, run by `userexport-worker` processes.
    Temporal,
}

/// The raw `USEREXPORT_API_KEYS` value. It holds secrets, so its `Debug` never shows them; it is
/// parsed (and only hashes kept) when the application is built.
#[derive(Clone)]
pub struct ApiKeysSetting(String);

impl ApiKeysSetting {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<String> for ApiKeysSetting {
    fn from(raw: String) -> Self {
        Self(raw)
    }
}

impl From<&str> for ApiKeysSetting {
    fn from(raw: &str) -> Self {
        Self(raw.to_owned())
    }
}

impl fmt::Debug for ApiKeysSetting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKeysSetting(<redacted>)")
    }
}

/// userexport's HTTP API. Every flag falls back to the environment variable shown in `--help`;
/// `RUST_LOG` sets the log filter (default `info`).
#[derive(Debug, Clone, Parser)]
#[command(name = "userexport", version, about)]
pub struct Config {
    /// Address to listen on; port 0 picks a free one.
    #[arg(long, env = "USEREXPORT_LISTEN", default_value = DEFAULT_LISTEN)]
    pub listen: SocketAddr,

    /// API keys as `key=tenant/environment`, comma-separated. Unset: a `demo/dev` tenant with a
    /// fresh random key printed at start-up.
    #[arg(long, env = "USEREXPORT_API_KEYS", hide_env_values = true)]
    pub api_keys: Option<ApiKeysSetting>,

    /// Operator keys as `key=permission[+permission]`, comma-separated (permission: `batch`).
    /// Unset: no operator, so the batch endpoints answer 401/403.
    #[arg(long, env = "USEREXPORT_OPERATOR_KEYS", hide_env_values = true)]
    pub operator_keys: Option<ApiKeysSetting>,

    /// Users, export records and storage.
    #[command(flatten)]
    pub backends: BackendArgs,

    /// Known tenants and their settings; the API keys' scopes are always known.
    #[command(flatten)]
    pub tenants: TenantArgs,

    /// Per-tenant quotas (overridable per tenant in `USEREXPORT_TENANTS`).
    #[command(flatten)]
    pub quotas: QuotaArgs,

    /// `ExportRequested` events: the NATS consumer and the webhook.
    #[command(flatten)]
    pub events: crate::events::EventArgs,
    /// Completion notifications.
    #[command(flatten)]
    pub notify: NotifyArgs,

    /// Exports run at the same time; more wait in line.
    #[arg(long, env = "USEREXPORT_MAX_CONCURRENT_EXPORTS", default_value_t = DEFAULT_MAX_CONCURRENT_EXPORTS)]
    pub max_concurrent_exports: usize,

    /// Upper bound for `?timeout_s` of `POST /v1/exports/sync`.
    #[arg(long, env = "USEREXPORT_SYNC_TIMEOUT_MAX_S", default_value_t = DEFAULT_SYNC_TIMEOUT_MAX_S)]
    pub sync_timeout_max_s: u64,

    /// Wait of `POST /v1/exports/sync` without `?timeout_s` (capped by the maximum).
    #[arg(long, env = "USEREXPORT_SYNC_TIMEOUT_DEFAULT_S", default_value_t = DEFAULT_SYNC_TIMEOUT_S)]
    pub sync_timeout_default_s: u64,

    /// On SIGINT/SIGTERM: how long open requests, then running exports, may take to finish.
    #[arg(long, env = "USEREXPORT_SHUTDOWN_GRACE_S", default_value_t = DEFAULT_SHUTDOWN_GRACE_S)]
    pub shutdown_grace_s: u64,

    /// Retry and timeout policy of exports.
    #[command(flatten)]
    pub policy: PolicyArgs,

    /// Limits on export schedules.
    #[command(flatten)]
    pub schedules: ScheduleArgs,

    /// Rate limits, timeouts, connection and in-flight bounds, the readiness cache.
    #[command(flatten)]
    pub limits: crate::limits::LimitArgs,

    /// Which orchestrator runs exports.
    #[arg(long, env = "USEREXPORT_ORCHESTRATOR", value_enum, default_value_t = OrchestratorKind::Inprocess)]
    pub orchestrator: OrchestratorKind,

    /// Temporal server and task queue, when the orchestrator is `temporal`.
    #[command(flatten)]
    pub temporal: TemporalArgs,

    /// Log line format on stderr.
    #[arg(long, env = "USEREXPORT_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Prometheus metrics: `GET /metrics` on the API's port, or on a listener of its own.
    #[command(flatten)]
    pub metrics: MetricsArgs,

    /// What to do; serving the API when omitted.
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Operational commands besides serving.
#[derive(Debug, Clone, Subcommand)]
pub enum Command {
    /// Serve the HTTP API (the default).
    Serve,
    /// Apply pending database migrations to `DATABASE_URL` and exit.
    Migrate,
    /// Replace a tenant's users in `DATABASE_URL` with N deterministic synthetic users (COPY).
    Seed {
        /// The tenant scope, `tenant/environment`.
        #[arg(long)]
        scope: String,
        /// How many users.
        #[arg(long)]
        count: u64,
    },
}

impl Config {
    /// The defaults with the given API keys, listening on a free loopback port with in-memory
    /// storage and 100 users per scope, and limits relaxed ([`LimitArgs::relaxed`]). Reads no
    /// environment variable.
    ///
    /// [`LimitArgs::relaxed`]: crate::limits::LimitArgs::relaxed
    pub fn for_tests(api_keys: &str) -> Self {
        Self {
            listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
            api_keys: Some(ApiKeysSetting::from(api_keys)),
            operator_keys: None,
            backends: BackendArgs {
                storage: StorageKind::Memory,
                ..BackendArgs::embedded(PathBuf::from("./data"), 100)
            },
            tenants: TenantArgs::default(),
            quotas: QuotaArgs::default(),
            events: crate::events::EventArgs::default(),
            notify: NotifyArgs::default(),
            max_concurrent_exports: DEFAULT_MAX_CONCURRENT_EXPORTS,
            sync_timeout_max_s: DEFAULT_SYNC_TIMEOUT_MAX_S,
            sync_timeout_default_s: DEFAULT_SYNC_TIMEOUT_S,
            shutdown_grace_s: DEFAULT_SHUTDOWN_GRACE_S,
            policy: PolicyArgs::default(),
            schedules: ScheduleArgs::default(),
            // Tests fire many requests from one (unspecified) address; the limits' own tests
            // lower them again.
            limits: crate::limits::LimitArgs::relaxed(),
            orchestrator: OrchestratorKind::Inprocess,
            temporal: TemporalArgs {
                temporal_address: None,
                temporal_namespace: None,
                task_queue: "user-export".to_owned(),
            },
            log_format: LogFormat::Text,
            metrics: MetricsArgs::default(),
            command: None,
        }
    }

    /// The retry and timeout policy, validated.
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
        self.execution_policy()?;
        self.events.check()?;
        self.limits.check()?;
        self.policy.retention_policy()?;
        self.policy.retention_sweep_interval()?;
        Ok(())
    }

    /// The wait used by `POST /v1/exports/sync` when the client names none.
    pub fn sync_timeout_default(&self) -> Duration {
        Duration::from_secs(self.sync_timeout_default_s.min(self.sync_timeout_max_s))
    }

    pub fn sync_timeout_max(&self) -> Duration {
        Duration::from_secs(self.sync_timeout_max_s)
    }

    pub fn shutdown_grace(&self) -> Duration {
        Duration::from_secs(self.shutdown_grace_s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_setting_has_a_default() {
        let config = Config::try_parse_from(["userexport"]);
        assert!(config.is_ok(), "{config:?}");
    }

    fn check_error(config: &Config) -> String {
        config.check().err().map(|e| format!("{e:#}")).unwrap_or_default()
    }

    #[test]
    fn an_invalid_setting_is_named_in_the_error() {
        let base = Config::for_tests("k=acme/prod");
        assert_eq!(check_error(&base), "");
        let cases = [
            (
                Config { policy: PolicyArgs { retry_backoff: 0.5, ..PolicyArgs::default() }, ..base.clone() },
                "USEREXPORT_RETRY_BACKOFF",
            ),
            (
                Config {
                    policy: PolicyArgs { export_deadline_s: 0, ..PolicyArgs::default() },
                    ..base.clone()
                },
                "USEREXPORT_EXPORT_DEADLINE_S",
            ),
            (Config { max_concurrent_exports: 0, ..base.clone() }, "USEREXPORT_MAX_CONCURRENT_EXPORTS"),
        ];
        for (config, setting) in cases {
            let err = check_error(&config);
            assert!(err.contains(setting), "{setting}: {err}");
            assert!(!err.contains('\n'), "one line: {err}");
        }
    }

    #[test]
    fn api_keys_are_not_shown_by_debug() {
        let config = Config::for_tests("s3cret=acme/prod");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn the_default_sync_wait_is_capped_by_the_maximum() {
        let config = Config { sync_timeout_max_s: 5, ..Config::for_tests("k=acme/prod") };
        assert_eq!(config.sync_timeout_default(), Duration::from_secs(5));
    }
}
