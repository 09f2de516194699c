use std::fmt::Write as _;

use anyhow::Context;
use domain::{Scope, User, synthetic};
use sqlx::postgres::PgPool;

/// Bytes of CSV sent per COPY message.
const COPY_CHUNK: usize = 1 << 20;

/// Replaces `scope`'s users with `count` deterministic synthetic users, through `COPY` in one
/// transaction (about a second per 500,000 users). Returns how many were written.
pub async fn seed_synthetic_users(pool: &PgPool, scope: &Scope, count: u64) -> anyhow::Result<u64> {
    let mut tx = pool.begin().await.context("starting the seed transaction")?;
    sqlx::query("DELETE FROM users WHERE tenant_id = $1 AND environment_id = $2")
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .execute(&mut *tx)
        .await
        .context("clearing the scope's users")?;
    let mut copy = tx
        .copy_in_raw(
            "COPY users (tenant_id, environment_id, id, email, name, status, created_at, updated_at, metadata) \
             FROM STDIN WITH (FORMAT csv)",
        )
        .await
        .context("starting COPY")?;
    let mut buf = String::with_capacity(COPY_CHUNK + 4096);
    for i in 0..count {
        push_row(&mut buf, scope, &synthetic::user(scope, i));
        if buf.len() >= COPY_CHUNK {
            copy.send(buf.as_bytes()).await.context("sending COPY data")?;
            buf.clear();
        }
    }
    if !buf.is_empty() {
        copy.send(buf.as_bytes()).await.context("sending COPY data")?;
    }
    let written = copy.finish().await.context("finishing COPY")?;
    tx.commit().await.context("committing the seed")?;
    Ok(written)
}

fn push_row(buf: &mut String, scope: &Scope, u: &User) {
    let metadata = serde_json::Value::Object(u.metadata.clone()).to_string();
    let _ = writeln!(
        buf,
        "{},{},{},{},{},{},{},{},{}",
        scope.tenant,
        scope.environment,
        u.id,
        quote(&u.email),
        quote(&u.name),
        u.status.as_str(),
        u.created_at.to_rfc3339(),
        u.updated_at.to_rfc3339(),
        quote(&metadata)
    );
}

/// CSV quoting for COPY: always quoted, inner quotes doubled.
fn quote(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}
