//! The operational subcommands: `migrate` and `seed`.

use std::time::Instant;

use adapters::postgres;
use anyhow::Context;
use domain::Scope;
use tracing::info;
use wiring::BackendArgs;

/// Applies pending migrations to `DATABASE_URL`.
///
/// # Errors
/// `DATABASE_URL` missing or unreachable, or a migration failing.
pub async fn migrate(backends: &BackendArgs) -> anyhow::Result<()> {
    let pool = backends.database().await?;
    postgres::migrate(&pool).await?;
    info!("migrations applied");
    Ok(())
}

/// Replaces `scope`'s users with `count` synthetic users.
///
/// # Errors
/// A bad scope, `DATABASE_URL` missing or unreachable, or COPY failing.
pub async fn seed(backends: &BackendArgs, scope: &str, count: u64) -> anyhow::Result<()> {
    let scope = Scope::parse(scope)
        .with_context(|| format!("invalid --scope {scope:?} (expected tenant/environment)"))?;
    let pool = backends.database().await?;
    if backends.migrate {
        postgres::migrate(&pool).await?;
    }
    let started = Instant::now();
    let written = postgres::seed_synthetic_users(&pool, &scope, count).await?;
    info!(%scope, users = written, elapsed_ms = started.elapsed().as_millis() as u64, "seeded synthetic users");
    Ok(())
}
