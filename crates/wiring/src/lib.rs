//! Which backends to run on, and the one function that builds them: shared by the API and the
//! worker so both processes of a deployment wire the same adapters from the same settings.

use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use adapters::memory::{
    MemoryBatchRepository, MemoryExportRepository, MemoryScheduleRepository, MemoryUserRepository,
};
use adapters::notify::{LogNotifier, NoCallbacks};
use adapters::postgres::{
    self, PgBatchRepository, PgExportRepository, PgScheduleRepository, PgUserRepository,
};
use adapters::storage::{ObjectStorage, S3Settings};
use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use domain::Scope;
use ports::{
    BatchRepository, CallbackSender, ExportRepository, ExportStorage, Notifier, ScheduleRepository,
    UserRepository,
};
use tracing::info;

pub mod metrics;
mod quotas;
mod schedule_settings;
mod settings;
pub mod telemetry;

pub use metrics::MetricsArgs;
pub use quotas::QuotaArgs;
pub use schedule_settings::ScheduleArgs;
pub use settings::{CallbackArgs, NotifyArgs, PolicyArgs, TemporalArgs, TenantArgs, shutdown_signal};
pub use telemetry::{LogFormat, Telemetry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UsersBackend {
    /// Synthetic users in process memory (`USEREXPORT_DEMO_USERS` per tenant).
    Memory,
    /// The `users` table of `DATABASE_URL`.
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ExportsBackend {
    /// Export records in process memory; lost on exit.
    Memory,
    /// The `exports` table of `DATABASE_URL`; required when API and worker are separate processes.
    Postgres,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StorageKind {
    /// Files under the data directory.
    Local,
    /// Process memory; lost on exit.
    Memory,
    /// An S3 bucket or S3-compatible server.
    S3,
}

/// A database URL; may carry a password, so `Debug` hides it.
#[derive(Clone)]
pub struct DatabaseUrl(String);

impl DatabaseUrl {
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `host:port/database` without credentials, for messages.
    pub fn redacted(&self) -> String {
        match url::Url::parse(&self.0) {
            Ok(u) => format!("{}:{}{}", u.host_str().unwrap_or("?"), u.port().unwrap_or(5432), u.path()),
            Err(_) => "<unparseable URL>".to_owned(),
        }
    }
}

impl From<String> for DatabaseUrl {
    fn from(raw: String) -> Self {
        Self(raw)
    }
}

impl fmt::Debug for DatabaseUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "DatabaseUrl({})", self.redacted())
    }
}

/// Backend settings: flags with environment fallbacks, flattened into each binary's `Config`.
#[derive(Debug, Clone, Args)]
pub struct BackendArgs {
    /// Where users are read from.
    #[arg(long, env = "USEREXPORT_USERS", value_enum, default_value_t = UsersBackend::Memory)]
    pub users: UsersBackend,

    /// Where export records are kept.
    #[arg(long, env = "USEREXPORT_EXPORTS", value_enum, default_value_t = ExportsBackend::Memory)]
    pub exports: ExportsBackend,

    /// Where export files are kept.
    #[arg(long, env = "USEREXPORT_STORAGE", value_enum, default_value_t = StorageKind::Local)]
    pub storage: StorageKind,

    /// PostgreSQL URL, for `postgres` users or exports.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<DatabaseUrl>,

    /// Connections in the PostgreSQL pool.
    #[arg(long, env = "USEREXPORT_DB_MAX_CONNECTIONS", default_value_t = 10)]
    pub db_max_connections: u32,

    /// Apply pending database migrations at start-up (`false`: run `userexport migrate` instead).
    #[arg(long, env = "USEREXPORT_MIGRATE", default_value_t = true, action = clap::ArgAction::Set)]
    pub migrate: bool,

    /// Directory for export files when storage is `local`.
    #[arg(long, env = "USEREXPORT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,

    /// Synthetic users seeded into the in-memory user store for each configured tenant scope.
    #[arg(long, env = "USEREXPORT_DEMO_USERS", default_value_t = 1000)]
    pub demo_users: u64,

    /// S3 bucket, when storage is `s3`.
    #[arg(long, env = "USEREXPORT_S3_BUCKET")]
    pub s3_bucket: Option<String>,

    /// S3 endpoint for S3-compatible servers (path-style requests; `http://` allowed).
    #[arg(long, env = "AWS_ENDPOINT_URL")]
    pub s3_endpoint: Option<String>,

    /// S3 region.
    #[arg(long, env = "AWS_REGION")]
    pub s3_region: Option<String>,

    /// Prefix for every object key in the bucket.
    #[arg(long, env = "USEREXPORT_S3_KEY_PREFIX")]
    pub s3_key_prefix: Option<String>,

    /// Server-side encryption: `AES256` or `aws:kms`.
    #[arg(long, env = "USEREXPORT_S3_SSE")]
    pub s3_sse: Option<String>,

    /// KMS key for `aws:kms` server-side encryption.
    #[arg(long, env = "USEREXPORT_S3_SSE_KMS_KEY_ID")]
    pub s3_sse_kms_key_id: Option<String>,

    /// Lifetime of presigned download URLs (S3), in seconds.
    #[arg(long, env = "USEREXPORT_DOWNLOAD_URL_TTL_S", default_value_t = 900)]
    pub download_url_ttl_s: u64,
}

impl BackendArgs {
    /// The embedded default: memory users and records, files under `data_dir`.
    pub fn embedded(data_dir: PathBuf, demo_users: u64) -> Self {
        Self {
            users: UsersBackend::Memory,
            exports: ExportsBackend::Memory,
            storage: StorageKind::Local,
            database_url: None,
            db_max_connections: 10,
            migrate: true,
            data_dir,
            demo_users,
            s3_bucket: None,
            s3_endpoint: None,
            s3_region: None,
            s3_key_prefix: None,
            s3_sse: None,
            s3_sse_kms_key_id: None,
            download_url_ttl_s: 900,
        }
    }

    pub fn download_url_ttl(&self) -> Duration {
        Duration::from_secs(self.download_url_ttl_s)
    }

    fn needs_database(&self) -> bool {
        self.users == UsersBackend::Postgres || self.exports == ExportsBackend::Postgres
    }

    /// Connects to `DATABASE_URL` (and migrates when asked).
    ///
    /// # Errors
    /// One line naming `DATABASE_URL` when it is missing or unreachable.
    pub async fn database(&self) -> anyhow::Result<postgres::PgPool> {
        let Some(url) = &self.database_url else {
            bail!("DATABASE_URL is required when USEREXPORT_USERS or USEREXPORT_EXPORTS is postgres");
        };
        let pool = postgres::connect(url.expose(), self.db_max_connections.max(1))
            .await
            .with_context(|| format!("DATABASE_URL ({}) is unreachable", url.redacted()))?;
        Ok(pool)
    }

    fn s3_settings(&self) -> anyhow::Result<S3Settings> {
        let Some(bucket) = self.s3_bucket.clone().filter(|b| !b.is_empty()) else {
            bail!("USEREXPORT_S3_BUCKET is required when USEREXPORT_STORAGE=s3");
        };
        Ok(S3Settings {
            bucket,
            endpoint: self.s3_endpoint.clone(),
            region: self.s3_region.clone(),
            key_prefix: self.s3_key_prefix.clone(),
            server_side_encryption: self.s3_sse.clone(),
            sse_kms_key_id: self.s3_sse_kms_key_id.clone(),
            access_key_id: None,
            secret_access_key: None,
        })
    }
}

/// The ports a process runs on, other than the orchestrator.
#[derive(Clone)]
pub struct Adapters {
    pub users: Arc<dyn UserRepository>,
    pub exports: Arc<dyn ExportRepository>,
    pub storage: Arc<dyn ExportStorage>,
    pub notifier: Arc<dyn Notifier>,
    /// Export callbacks; none until the caller sets the tenants' sender
    /// ([`CallbackArgs::sender`]), as it does the notifier.
    pub callbacks: Arc<dyn CallbackSender>,
    /// Batch records, kept where export records are.
    pub batches: Arc<dyn BatchRepository>,
    /// Export schedules; kept where export records are (`USEREXPORT_EXPORTS`).
    pub schedules: Arc<dyn ScheduleRepository>,
}

impl Adapters {
    /// The same adapters, export records counted by [`service::meters::MeteredExports`]. Each
    /// binary calls this once, on the adapters it finally runs with.
    #[must_use]
    pub fn metered(mut self) -> Self {
        self.exports = service::meters::MeteredExports::wrap(self.exports);
        self
    }
}

impl fmt::Debug for Adapters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Adapters").finish_non_exhaustive()
    }
}

/// Builds the adapters `args` selects and checks each is reachable, so a bad setting stops
/// start-up with one line naming it. `demo_scopes` get synthetic users in the memory user store.
///
/// # Errors
/// Missing, invalid or unreachable backend settings.
pub async fn build_adapters(args: &BackendArgs, demo_scopes: &[Scope]) -> anyhow::Result<Adapters> {
    let pool = if args.needs_database() {
        let pool = args.database().await?;
        if args.migrate {
            postgres::migrate(&pool).await.context("DATABASE_URL: applying migrations failed")?;
        }
        Some(pool)
    } else {
        None
    };
    let users: Arc<dyn UserRepository> = match (args.users, &pool) {
        (UsersBackend::Postgres, Some(pool)) => Arc::new(PgUserRepository::new(pool.clone())),
        _ => {
            let users = MemoryUserRepository::new();
            for scope in demo_scopes {
                users.seed_synthetic(scope, args.demo_users);
            }
            Arc::new(users)
        }
    };
    let (exports, batches): (Arc<dyn ExportRepository>, Arc<dyn BatchRepository>) =
        match (args.exports, &pool) {
            (ExportsBackend::Postgres, Some(pool)) => (
                Arc::new(PgExportRepository::new(pool.clone())),
                Arc::new(PgBatchRepository::new(pool.clone())),
            ),
            _ => (Arc::new(MemoryExportRepository::new()), Arc::new(MemoryBatchRepository::new())),
        };
    let schedules: Arc<dyn ScheduleRepository> = match (args.exports, &pool) {
        (ExportsBackend::Postgres, Some(pool)) => Arc::new(PgScheduleRepository::new(pool.clone())),
        _ => Arc::new(MemoryScheduleRepository::new()),
    };
    let storage = match args.storage {
        StorageKind::Local => ObjectStorage::local(&args.data_dir)
            .with_context(|| format!("USEREXPORT_DATA_DIR {} is not usable", args.data_dir.display()))?,
        StorageKind::Memory => ObjectStorage::in_memory(),
        StorageKind::S3 => {
            let settings = args.s3_settings()?;
            let storage =
                ObjectStorage::s3(&settings).context("invalid S3 settings (USEREXPORT_S3_BUCKET, AWS_*)")?;
            ports::ExportStorage::ping(&storage).await.with_context(|| {
                let at = settings.endpoint.as_deref().unwrap_or("AWS");
                format!("USEREXPORT_S3_BUCKET {} is unreachable at {at}", settings.bucket)
            })?;
            storage
        }
    };
    info!(users = ?args.users, exports = ?args.exports, storage = storage.kind(), "backends ready");
    Ok(Adapters {
        users,
        exports,
        storage: Arc::new(storage),
        notifier: Arc::new(LogNotifier),
        callbacks: Arc::new(NoCallbacks),
        batches,
        schedules,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(err: anyhow::Error) -> String {
        format!("{err:#}")
    }

    #[tokio::test]
    async fn postgres_without_a_database_url_is_named() {
        let args = BackendArgs { users: UsersBackend::Postgres, ..BackendArgs::embedded("./data".into(), 0) };
        let err = message(build_adapters(&args, &[]).await.unwrap_err());
        assert!(err.contains("DATABASE_URL is required"), "{err}");
    }

    #[tokio::test]
    async fn an_unreachable_database_is_named_without_its_password() {
        let args = BackendArgs {
            exports: ExportsBackend::Postgres,
            database_url: Some(DatabaseUrl::from("postgres://u:hunter2@127.0.0.1:1/db".to_owned())),
            ..BackendArgs::embedded("./data".into(), 0)
        };
        let err = message(build_adapters(&args, &[]).await.unwrap_err());
        assert!(err.starts_with("DATABASE_URL (127.0.0.1:1/db) is unreachable"), "{err}");
        assert!(!err.contains("hunter2"));
    }

    #[tokio::test]
    async fn s3_without_a_bucket_or_with_an_unreachable_endpoint_is_named() {
        let mut args = BackendArgs { storage: StorageKind::S3, ..BackendArgs::embedded("./data".into(), 0) };
        let err = message(build_adapters(&args, &[]).await.unwrap_err());
        assert!(err.contains("USEREXPORT_S3_BUCKET is required"), "{err}");
        args.s3_bucket = Some("exports".into());
        args.s3_endpoint = Some("http://127.0.0.1:1".into());
        args.s3_region = Some("us-east-1".into());
        let err = message(build_adapters(&args, &[]).await.unwrap_err());
        assert!(
            err.starts_with("USEREXPORT_S3_BUCKET exports is unreachable at http://127.0.0.1:1"),
            "{err}"
        );
    }

    #[tokio::test]
    async fn postgres_backends_connect_and_migrate() {
        let db = adapters::contract::pg::TestDatabase::create().await;
        let args = BackendArgs {
            users: UsersBackend::Postgres,
            exports: ExportsBackend::Postgres,
            database_url: Some(DatabaseUrl::from(db.url.clone())),
            storage: StorageKind::Memory,
            ..BackendArgs::embedded("./data".into(), 0)
        };
        let adapters = build_adapters(&args, &[]).await.unwrap();
        adapters.users.ping().await.unwrap();
        adapters.exports.ping().await.unwrap();
        adapters.schedules.ping().await.unwrap();
        db.drop_now().await;
    }
}
