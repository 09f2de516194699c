//! PostgreSQL adapters (sqlx): users and export records. SQL is parameterised only; sqlx errors
//! are translated to `PortError` here and never cross a port.

mod batches;
mod binary_copy;
mod exports;
mod schedules;
mod seed;
mod users;

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context;
use ports::PortError;
use sqlx::SqlStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};
pub use sqlx::postgres::PgPool;
use sqlx::postgres::PgPoolOptions;

pub use batches::PgBatchRepository;
pub use exports::PgExportRepository;
pub use schedules::PgScheduleRepository;
pub use seed::seed_synthetic_users;
pub use users::PgUserRepository;

include!(concat!(env!("OUT_DIR"), "/migrations.rs"));

/// The schema, embedded in the binary (by build.rs, with `sqlx::migrate!`'s rules: same versions,
/// descriptions, checksums and `-- no-transaction` marker).
pub static MIGRATOR: LazyLock<Migrator> = LazyLock::new(|| {
    Migrator::with_migrations(
        EMBEDDED_MIGRATIONS
            .iter()
            .map(|&(version, description, sql)| {
                let no_tx = sql.starts_with("-- no-transaction");
                Migration::new(
                    version,
                    description.into(),
                    MigrationType::Simple,
                    SqlStr::from_static(sql),
                    no_tx,
                )
            })
            .collect(),
    )
});

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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use sqlx::migrate::Migrator;

    /// The embedded migrations are what sqlx itself reads from the directory (which is what
    /// `sqlx::migrate!` embedded): a database migrated by an older build sees no change.
    #[tokio::test]
    async fn embedded_migrations_are_sqlx_s_reading_of_the_directory() {
        let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/migrations"));
        let read = Migrator::new(dir).await.expect("sqlx reads migrations/");
        let described = |m: &Migrator| {
            m.iter()
                .map(|m| {
                    (m.version, m.description.to_string(), m.checksum.to_vec(), m.no_tx, m.migration_type)
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(described(&super::MIGRATOR), described(&read));
        assert!(read.iter().next().is_some(), "migrations/ has migrations");
    }
}
