//! Settings both binaries share besides the backends: retry policy, Temporal, signals.

use std::time::Duration;

use anyhow::Context;
use clap::Args;
use domain::{ExecutionPolicy, PolicyError, RetentionPolicy, RetryPolicy};

/// The retry and timeout policy of exports (the domain's `ExecutionPolicy`), applied the same
/// way by the in-process orchestrator and by Temporal.
#[derive(Debug, Clone, Args)]
pub struct PolicyArgs {
    /// Attempts per export that failures of the export itself may use up (a bug, a corrupt
    /// row). Infrastructure trouble and interruptions use none: they are retried until the
    /// export's deadline.
    #[arg(long, env = "USEREXPORT_RETRY_MAX_ATTEMPTS", default_value_t = 3)]
    pub retry_max_attempts: u32,

    /// Wait before the first retry, in milliseconds.
    #[arg(long, env = "USEREXPORT_RETRY_INITIAL_INTERVAL_MS", default_value_t = 1000)]
    pub retry_initial_interval_ms: u64,

    /// Factor between consecutive retry waits (>= 1.0).
    #[arg(long, env = "USEREXPORT_RETRY_BACKOFF", default_value_t = 2.0)]
    pub retry_backoff: f64,

    /// Longest wait between retries, in seconds.
    #[arg(long, env = "USEREXPORT_RETRY_MAX_INTERVAL_S", default_value_t = 120)]
    pub retry_max_interval_s: u64,

    /// Bound on a whole export, from its request to its last attempt, in seconds (8 hours by
    /// default). No per-attempt limit exists: a live attempt is known by its heartbeats.
    #[arg(long, env = "USEREXPORT_EXPORT_DEADLINE_S", default_value_t = 28_800)]
    pub export_deadline_s: u64,

    /// A running attempt silent for this long is considered lost, in seconds (Temporal).
    #[arg(long, env = "USEREXPORT_HEARTBEAT_TIMEOUT_S", default_value_t = 30)]
    pub heartbeat_timeout_s: u64,

    /// Days a completed export's file is kept, unless the request says `retention_days`.
    #[arg(long, env = "USEREXPORT_RETENTION_DAYS", default_value_t = 7)]
    pub retention_days: u32,

    /// The most `retention_days` a request may ask for.
    #[arg(long, env = "USEREXPORT_RETENTION_MAX_DAYS", default_value_t = 30)]
    pub retention_max_days: u32,

    /// How often the retention sweep deletes expired files, in seconds.
    #[arg(long, env = "USEREXPORT_RETENTION_SWEEP_S", default_value_t = 3600)]
    pub retention_sweep_s: u64,

    /// How often the reconciler starts or settles exports left unfinished and sends missed
    /// notifications, in seconds.
    #[arg(long, env = "USEREXPORT_RECONCILE_INTERVAL_S", default_value_t = 60)]
    pub reconcile_interval_s: u64,

    /// Whether running exports checkpoint, so an interrupted export resumes where it was rather
    /// than from row 0. Turn off only to measure what checkpoints cost.
    #[arg(long, env = "USEREXPORT_CHECKPOINTS", default_value_t = true, action = clap::ArgAction::Set)]
    pub checkpoints: bool,

    /// How much lower than the rest of the process the CPU priority of export attempts is, as a
    /// nice increment (0 to 19; 0 keeps the process's): exports use every idle CPU but give way
    /// to the API's answers and the Temporal polls and workflow tasks on the same host; a
    /// tenant's further running exports go 5 lower still (Linux).
    #[arg(long, env = "USEREXPORT_EXPORT_NICE", default_value_t = adapters::export_threads::DEFAULT_NICE)]
    pub export_nice: u8,
}

impl Default for PolicyArgs {
    fn default() -> Self {
        let policy = ExecutionPolicy::default();
        Self {
            retry_max_attempts: policy.retry.maximum_attempts,
            retry_initial_interval_ms: u64::try_from(policy.retry.initial_interval.as_millis())
                .unwrap_or(1000),
            retry_backoff: policy.retry.backoff_coefficient,
            retry_max_interval_s: policy.retry.maximum_interval.as_secs(),
            export_deadline_s: policy.deadline.as_secs(),
            heartbeat_timeout_s: policy.heartbeat_timeout.as_secs(),
            retention_days: RetentionPolicy::default().default_days,
            retention_max_days: RetentionPolicy::default().max_days,
            retention_sweep_s: 3600,
            reconcile_interval_s: 60,
            checkpoints: true,
            export_nice: adapters::export_threads::DEFAULT_NICE,
        }
    }
}

impl PolicyArgs {
    /// The policy, validated.
    ///
    /// # Errors
    /// One line naming the setting that makes the policy invalid.
    pub fn execution_policy(&self) -> anyhow::Result<ExecutionPolicy> {
        let policy = ExecutionPolicy {
            retry: RetryPolicy {
                initial_interval: Duration::from_millis(self.retry_initial_interval_ms),
                backoff_coefficient: self.retry_backoff,
                maximum_interval: Duration::from_secs(self.retry_max_interval_s),
                maximum_attempts: self.retry_max_attempts,
            },
            deadline: Duration::from_secs(self.export_deadline_s),
            heartbeat_timeout: Duration::from_secs(self.heartbeat_timeout_s),
        };
        let setting = match policy.validate() {
            Ok(()) => return Ok(policy),
            Err(PolicyError::NoAttempts) => "USEREXPORT_RETRY_MAX_ATTEMPTS",
            Err(PolicyError::BadBackoff) => "USEREXPORT_RETRY_BACKOFF",
            Err(PolicyError::BadInterval) => {
                "USEREXPORT_RETRY_INITIAL_INTERVAL_MS / USEREXPORT_RETRY_MAX_INTERVAL_S"
            }
            Err(PolicyError::BadTimeout) => "USEREXPORT_EXPORT_DEADLINE_S / USEREXPORT_HEARTBEAT_TIMEOUT_S",
            Err(PolicyError::BadRetention) => "USEREXPORT_RETENTION_DAYS / USEREXPORT_RETENTION_MAX_DAYS",
        };
        policy.validate().with_context(|| format!("invalid {setting}"))?;
        Ok(policy)
    }

    /// How export attempts run: retention and checkpoints from these settings, the rest default.
    ///
    /// # Errors
    /// When the retention settings disagree.
    pub fn runner_config(&self) -> anyhow::Result<service::RunnerConfig> {
        Ok(service::RunnerConfig {
            retention: self.retention_policy()?,
            checkpoints: self.checkpoints,
            ..service::RunnerConfig::default()
        })
    }

    /// The threads export attempts run on, at `USEREXPORT_EXPORT_NICE`.
    ///
    /// # Errors
    /// A nice increment above 19, or threads that cannot be started.
    pub fn export_threads(&self) -> anyhow::Result<adapters::export_threads::ExportThreads> {
        if self.export_nice > adapters::export_threads::MAX_NICE {
            anyhow::bail!("invalid USEREXPORT_EXPORT_NICE: {} (0 to 19)", self.export_nice);
        }
        adapters::export_threads::ExportThreads::start(self.export_nice)
            .context("starting the export threads")
    }

    /// The retention policy, validated.
    ///
    /// # Errors
    /// One line naming the retention settings when they disagree.
    pub fn retention_policy(&self) -> anyhow::Result<RetentionPolicy> {
        let policy = RetentionPolicy { default_days: self.retention_days, max_days: self.retention_max_days };
        policy.validate().context("invalid USEREXPORT_RETENTION_DAYS / USEREXPORT_RETENTION_MAX_DAYS")?;
        Ok(policy)
    }

    /// Interval of the retention sweep.
    ///
    /// # Errors
    /// When it is zero.
    pub fn retention_sweep_interval(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(self.retention_sweep_s > 0, "USEREXPORT_RETENTION_SWEEP_S must be at least 1");
        Ok(Duration::from_secs(self.retention_sweep_s))
    }

    /// Interval of the reconciler.
    ///
    /// # Errors
    /// When it is zero.
    pub fn reconcile_interval(&self) -> anyhow::Result<Duration> {
        anyhow::ensure!(self.reconcile_interval_s > 0, "USEREXPORT_RECONCILE_INTERVAL_S must be at least 1");
        Ok(Duration::from_secs(self.reconcile_interval_s))
    }

    /// What the reconciler leaves alone: records changed within a quarter interval (at least
    /// 5 s: a start may be in flight), and notifications younger than the step's own retries.
    pub fn reconcile_settings(&self) -> service::ReconcileSettings {
        let interval = Duration::from_secs(self.reconcile_interval_s.max(1));
        service::ReconcileSettings {
            start_grace: (interval / 4).max(Duration::from_secs(5)),
            notify_grace: (interval * 2).max(Duration::from_secs(120)),
        }
    }
}

/// Where the Temporal server is and which task queue exports run on. Credentials, TLS and
/// profiles come from Temporal's own environment configuration (`TEMPORAL_API_KEY`,
/// `TEMPORAL_TLS_*`, `TEMPORAL_PROFILE`, `TEMPORAL_CONFIG_FILE`), as for the `temporal` CLI.
#[derive(Debug, Clone, Args)]
pub struct TemporalArgs {
    /// Temporal frontend, `host:port` or a URL; overrides the profile's `address`
    /// [default: 127.0.0.1:7233].
    #[arg(long, env = "TEMPORAL_ADDRESS")]
    pub temporal_address: Option<String>,

    /// Temporal namespace; overrides the profile's `namespace` [default: default].
    #[arg(long, env = "TEMPORAL_NAMESPACE")]
    pub temporal_namespace: Option<String>,

    /// Task queue of export workflows: the API starts them on it, workers poll it.
    #[arg(long, env = "USEREXPORT_TASK_QUEUE", default_value = "user-export")]
    pub task_queue: String,
}

impl TemporalArgs {
    /// The connection: these flags over Temporal's environment configuration.
    ///
    /// # Errors
    /// One line naming the first Temporal setting that is present but unusable.
    pub fn connection(&self) -> anyhow::Result<adapters::temporal::TemporalConnection> {
        adapters::temporal::TemporalConnection::from_environment(&adapters::temporal::ConnectionOverrides {
            address: self.temporal_address.clone(),
            namespace: self.temporal_namespace.clone(),
        })
    }
}

/// Completes on SIGINT (Ctrl-C) or, on Unix, SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::warn!(error = %err, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received SIGINT"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_invalid_policy_names_its_setting() {
        let base = PolicyArgs::default();
        assert!(base.execution_policy().is_ok());
        for (args, setting) in [
            (PolicyArgs { retry_backoff: 0.5, ..base.clone() }, "USEREXPORT_RETRY_BACKOFF"),
            (PolicyArgs { retry_max_attempts: 0, ..base.clone() }, "USEREXPORT_RETRY_MAX_ATTEMPTS"),
            (
                PolicyArgs { retry_initial_interval_ms: 0, ..base.clone() },
                "USEREXPORT_RETRY_INITIAL_INTERVAL_MS",
            ),
            (PolicyArgs { export_deadline_s: 0, ..base.clone() }, "USEREXPORT_EXPORT_DEADLINE_S"),
        ] {
            let err = format!("{:#}", args.execution_policy().unwrap_err());
            assert!(err.contains(setting) && !err.contains('\n'), "{setting}: {err}");
        }
    }

    #[test]
    fn an_export_nice_above_19_is_refused_by_name_and_the_default_starts() {
        let err = PolicyArgs { export_nice: 20, ..PolicyArgs::default() }.export_threads().unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("USEREXPORT_EXPORT_NICE") && !err.contains('\n'), "{err}");
        assert!(PolicyArgs::default().export_threads().is_ok());
    }

    fn tenants_with(url: &str, allow_private: bool) -> TenantArgs {
        let json = format!(
            r#"[{{"scope":"acme/prod","webhook_secret":"0123456789abcdef0123456789abcdef","callback_url":"{url}"}}]"#
        );
        TenantArgs {
            tenants: Some(json),
            callbacks: CallbackArgs { callback_allow_private: allow_private, ..CallbackArgs::default() },
        }
    }

    #[test]
    fn private_callback_urls_need_the_allow_private_setting() {
        let err = format!("{:#}", tenants_with("http://127.0.0.1:9/hook", false).directory().unwrap_err());
        assert!(err.starts_with("USEREXPORT_TENANTS:") && err.contains("[0].callback_url"), "{err}");
        assert!(!err.contains("0123456789abcdef"), "never the secret: {err}");
        assert!(tenants_with("http://127.0.0.1:9/hook", true).directory().is_ok());
    }

    #[test]
    fn the_callback_sender_wants_only_tenants_with_a_callback_url() {
        let acme = domain::Scope::parse("acme/prod").unwrap();
        let none = CallbackArgs::default().sender(&domain::TenantDirectory::default()).unwrap();
        assert!(!none.wants(&acme));

        let args = tenants_with("https://hooks.acme.test/x", false);
        let mut directory = args.directory().unwrap();
        directory.include(domain::Scope::parse("globex/prod").unwrap());
        let sender = args.callbacks.sender(&directory).unwrap();
        assert!(sender.wants(&acme));
        assert!(!sender.wants(&domain::Scope::parse("globex/prod").unwrap()));

        let zero = CallbackArgs { callback_timeout_s: 0, ..CallbackArgs::default() };
        let err = format!("{:#}", zero.sender(&directory).err().unwrap());
        assert!(err.contains("USEREXPORT_CALLBACK_TIMEOUT_S"), "{err}");
    }

    #[test]
    fn callback_settings_default_to_public_https_and_ten_seconds() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            tenants: TenantArgs,
        }
        let cli = Cli::try_parse_from(["t"]).unwrap();
        assert!(!cli.tenants.callbacks.callback_allow_private);
        assert_eq!(cli.tenants.callbacks.callback_timeout_s, 10);
        let cli = Cli::try_parse_from(["t", "--callback-allow-private", "true", "--callback-timeout-s", "3"])
            .unwrap();
        assert!(cli.tenants.callbacks.callback_allow_private);
        assert_eq!(cli.tenants.callbacks.callback_timeout_s, 3);
    }
}

/// The tenant directory (`domain::TenantDirectory`): known scopes and per-tenant settings.
#[derive(Clone, Default, Args)]
pub struct TenantArgs {
    /// Tenants as a JSON array, or `@path` to a JSON file:
    /// `[{"scope":"acme/prod","notify_email":"ops@acme.test","webhook_secret":"…",
    /// "callback_url":"https://…","notify_domains":["acme.com"]}]`; webhook secrets carry at
    /// least 128 bits (e.g. `openssl rand -base64 32`).
    #[arg(long, env = "USEREXPORT_TENANTS", hide_env_values = true)]
    pub tenants: Option<String>,

    /// Delivery of the tenants' export callbacks; here because it also decides which
    /// `callback_url`s the directory accepts.
    #[command(flatten)]
    pub callbacks: CallbackArgs,
}

impl std::fmt::Debug for TenantArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Webhook secrets live in the value.
        f.debug_struct("TenantArgs")
            .field("tenants", &self.tenants.as_ref().map(|_| "<set>"))
            .field("callbacks", &self.callbacks)
            .finish()
    }
}

/// Export callbacks to the tenants' `callback_url`s.
#[derive(Debug, Clone, Args)]
pub struct CallbackArgs {
    /// Allow `http` callback URLs and loopback, private or link-local callback addresses
    /// (tests, private deployments); off, only public `https` endpoints are called.
    #[arg(long, env = "USEREXPORT_CALLBACK_ALLOW_PRIVATE", default_value_t = false, action = clap::ArgAction::Set)]
    pub callback_allow_private: bool,

    /// Bound on one callback delivery, in seconds.
    #[arg(long, env = "USEREXPORT_CALLBACK_TIMEOUT_S", default_value_t = 10)]
    pub callback_timeout_s: u64,
}

impl Default for CallbackArgs {
    fn default() -> Self {
        Self { callback_allow_private: false, callback_timeout_s: 10 }
    }
}

impl CallbackArgs {
    /// The callback sender: HTTP when a tenant of `tenants` has a `callback_url`, else one that
    /// wants nothing.
    ///
    /// # Errors
    /// One line naming the bad setting.
    pub fn sender(
        &self,
        tenants: &domain::TenantDirectory,
    ) -> anyhow::Result<std::sync::Arc<dyn ports::CallbackSender>> {
        anyhow::ensure!(self.callback_timeout_s > 0, "USEREXPORT_CALLBACK_TIMEOUT_S must be at least 1");
        let wanted = tenants.scopes().filter_map(|s| tenants.get(s)).any(|t| t.callback_url.is_some());
        if !wanted {
            return Ok(std::sync::Arc::new(adapters::notify::NoCallbacks));
        }
        let settings = adapters::callback::CallbackSettings {
            allow_private: self.callback_allow_private,
            timeout: Duration::from_secs(self.callback_timeout_s),
            ..Default::default()
        };
        Ok(std::sync::Arc::new(adapters::callback::HttpCallbackSender::new(tenants.clone(), settings)?))
    }
}

impl TenantArgs {
    /// The directory, validated; empty when unset.
    ///
    /// # Errors
    /// One line naming `USEREXPORT_TENANTS` and every bad entry (never a secret).
    pub fn directory(&self) -> anyhow::Result<domain::TenantDirectory> {
        let Some(raw) = self.tenants.as_deref().map(str::trim).filter(|r| !r.is_empty()) else {
            return Ok(domain::TenantDirectory::default());
        };
        let json = match raw.strip_prefix('@') {
            Some(path) => std::fs::read_to_string(path)
                .with_context(|| format!("USEREXPORT_TENANTS: reading {path}"))?,
            None => raw.to_owned(),
        };
        domain::TenantDirectory::parse_json_with(&json, self.callbacks.callback_allow_private)
            .map_err(|e| anyhow::anyhow!("USEREXPORT_TENANTS: {e}"))
    }
}

/// Completion notifications (`email_notify`).
#[derive(Clone, Args)]
pub struct NotifyArgs {
    /// SMTP server for notifications: `smtp://host:port`, `smtp://user:pass@host?tls=required`,
    /// `smtps://host`. Unset: notifications are only logged.
    #[arg(long, env = "USEREXPORT_SMTP_URL", hide_env_values = true)]
    pub smtp_url: Option<String>,

    /// `From:` address of notification emails.
    #[arg(long, env = "USEREXPORT_SMTP_FROM", default_value = "userexport@localhost")]
    pub smtp_from: String,

    /// The API's public base URL, for download links in notifications.
    #[arg(long, env = "USEREXPORT_PUBLIC_URL", default_value = "http://127.0.0.1:8080")]
    pub public_url: String,
}

impl std::fmt::Debug for NotifyArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NotifyArgs")
            .field("smtp_url", &self.smtp_url.as_ref().map(|_| "<set>"))
            .field("smtp_from", &self.smtp_from)
            .field("public_url", &self.public_url)
            .finish()
    }
}

impl Default for NotifyArgs {
    fn default() -> Self {
        Self {
            smtp_url: None,
            smtp_from: "userexport@localhost".to_owned(),
            public_url: "http://127.0.0.1:8080".to_owned(),
        }
    }
}

impl NotifyArgs {
    /// The notifier: SMTP when `USEREXPORT_SMTP_URL` is set, else one that logs.
    ///
    /// # Errors
    /// One line naming the bad setting.
    pub fn notifier(
        &self,
        tenants: &domain::TenantDirectory,
    ) -> anyhow::Result<std::sync::Arc<dyn ports::Notifier>> {
        let Some(url) = self.smtp_url.as_deref().filter(|u| !u.trim().is_empty()) else {
            return Ok(std::sync::Arc::new(adapters::notify::LogNotifier));
        };
        let public_url = url::Url::parse(&self.public_url)
            .with_context(|| format!("USEREXPORT_PUBLIC_URL {:?} is not a URL", self.public_url))?;
        let settings =
            adapters::smtp::SmtpSettings { url: url.to_owned(), from: self.smtp_from.clone(), public_url };
        Ok(std::sync::Arc::new(adapters::smtp::SmtpNotifier::new(&settings, tenants.clone())?))
    }
}
