//! PostgreSQL adapters (sqlx): users and export records. SQL is parameterised only; sqlx errors
//! are translated to `PortError` here and never cross a port.

mod batches;
mod binary_copy;
mod exports;
mod schedules;
mod seed;
mod users;

use std::time::Duration;

use anyhow::Context;
use ports::PortError;
use sqlx::migrate::Migrator;
pub use sqlx::postgres::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use batches::PgBatchRepository;
pub use exports::PgExportRepository;
pub use schedules::PgScheduleRepository;
pub use seed::seed_synthetic_users;
pub use users::PgUserRepository;

/// The schema, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!("./migrations");

/// Opens a pool. Fails fast (a few seconds) when the server is unreachable, so a bad
/// `DATABASE_URL` stops start-up with one clear line instead of hanging.
pub async fn connect(url: &str, max_connections: u32) -> anyhow::Result<PgPool> {
    PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(Duration::from_secs(5))
        .connect(url)
        .await
        .context("connecting to PostgreSQL (DATABASE_URL)")
}

/// Applies pending migrations; safe to run from several processes at once (sqlx takes an
/// advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await.context("applying database migrations")
}

/// Connection trouble is retryable; everything else (constraint, decoding, SQL) is not.
pub(crate) fn translate(err: sqlx::Error) -> PortError {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => PortError::unavailable(err),
        sqlx::Error::Database(ref db) if is_transient(db.code().as_deref()) => PortError::unavailable(err),
        other => PortError::Other(other.into()),
    }
}

/// SQLSTATE classes a retry can fix: connection exceptions (08), serialization failures and
/// deadlocks (40001, 40P01), insufficient resources (53), operator intervention (57P0x).
fn is_transient(code: Option<&str>) -> bool {
    code.is_some_and(|c| {
        c.starts_with("08") || c.starts_with("53") || c.starts_with("57P") || c == "40001" || c == "40P01"
    })
}

/// Takes the transaction-scoped advisory lock of `scope`'s `what` (exports, schedules): quota
/// checks of one scope queue behind it, on every replica, until the transaction ends.
pub(crate) async fn lock_scope(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    what: &str,
    scope: &domain::Scope,
) -> Result<(), PortError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
        .bind(format!("userexport.quota.{what}:{scope}"))
        .execute(&mut **tx)
        .await
        .map_err(translate)?;
    Ok(())
}

pub(crate) fn to_i64(n: u64, what: &str) -> Result<i64, PortError> {
    i64::try_from(n).map_err(|_| PortError::Other(anyhow::anyhow!("{what} {n} does not fit a bigint")))
}

pub(crate) fn to_u64(n: i64, what: &str) -> Result<u64, PortError> {
    u64::try_from(n).map_err(|_| PortError::Other(anyhow::anyhow!("stored {what} {n} is negative")))
}
