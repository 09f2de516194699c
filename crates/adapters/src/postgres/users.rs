use async_trait::async_trait;
use domain::{Scope, User, UserFilter, UserId, UserStatus};
use futures::StreamExt;
use futures::stream;
use ports::{PortError, UserRepository, UserStream};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{Postgres, QueryBuilder, Row};
use tokio::sync::mpsc;
use uuid::Uuid;

use super::{to_i64, translate};

/// Rows per keyset page: large enough to amortise the query, small enough to keep each query short.
const PAGE_ROWS: u64 = 10_000;
/// Users per message between the reading task and the export; with the channel bound this caps
/// what is held in memory at about `BATCH * CHANNEL_BATCHES` users.
const BATCH: usize = 256;
const CHANNEL_BATCHES: usize = 8;

/// Users stored in PostgreSQL, read with keyset pagination on the primary key.
#[derive(Debug, Clone)]
pub struct PgUserRepository {
    pool: PgPool,
}

impl PgUserRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// `WHERE` clause shared by stream and count; every value is a bind parameter.
fn push_filter<'a>(q: &mut QueryBuilder<'a, Postgres>, scope: &'a Scope, filter: &'a UserFilter) {
    q.push(" WHERE tenant_id = ").push_bind(scope.tenant.as_str());
    q.push(" AND environment_id = ").push_bind(scope.environment.as_str());
    if let Some(statuses) = &filter.status {
        let names: Vec<&'static str> = statuses.iter().map(|s| s.as_str()).collect();
        q.push(" AND status = ANY(").push_bind(names).push(")");
    }
    if let Some(after) = filter.created_after {
        q.push(" AND created_at > ").push_bind(after);
    }
    if let Some(before) = filter.created_before {
        q.push(" AND created_at < ").push_bind(before);
    }
    if let Some(domain) = &filter.email_domain {
        // The part after the last '@', compared case-insensitively, like `UserFilter::matches`.
        q.push(" AND position('@' in email) > 0 AND lower(substring(email from '[^@]*$')) = ")
            .push_bind(domain.as_str());
    }
}

fn decode(row: &PgRow) -> Result<User, PortError> {
    let status: &str = row.try_get(3).map_err(translate)?;
    let status: UserStatus = status
        .parse()
        .map_err(|()| PortError::Other(anyhow::anyhow!("unknown user status {status:?} in database")))?;
    let Json(metadata) =
        row.try_get::<Json<serde_json::Map<String, serde_json::Value>>, _>(6).map_err(translate)?;
    Ok(User {
        id: UserId::from_uuid(row.try_get(0).map_err(translate)?),
        email: row.try_get(1).map_err(translate)?,
        name: row.try_get(2).map_err(translate)?,
        status,
        created_at: row.try_get(4).map_err(translate)?,
        updated_at: row.try_get(5).map_err(translate)?,
        metadata,
    })
}

/// Reads pages into `tx` until done, the limit is reached, or the receiver is gone.
async fn pump(
    pool: PgPool,
    scope: Scope,
    filter: UserFilter,
    limit: Option<u64>,
    tx: mpsc::Sender<Vec<Result<User, PortError>>>,
) {
    let mut remaining = limit.unwrap_or(u64::MAX);
    let mut after: Option<Uuid> = None;
    while remaining > 0 {
        let page = remaining.min(PAGE_ROWS);
        let Ok(page_limit) = to_i64(page, "page") else { return };
        let mut q =
            QueryBuilder::new("SELECT id, email, name, status, created_at, updated_at, metadata FROM users");
        push_filter(&mut q, &scope, &filter);
        if let Some(last) = after {
            q.push(" AND id > ").push_bind(last);
        }
        q.push(" ORDER BY id LIMIT ").push_bind(page_limit);
        let mut rows = q.build().fetch(&pool);
        let mut batch = Vec::with_capacity(BATCH);
        let mut read = 0u64;
        while let Some(row) = rows.next().await {
            let user = row.map_err(translate).and_then(|r| decode(&r));
            let failed = user.is_err();
            if let Ok(u) = &user {
                after = Some(u.id.as_uuid());
            }
            batch.push(user);
            read += 1;
            if (batch.len() == BATCH || failed)
                && tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH))).await.is_err()
            {
                return;
            }
            if failed {
                return;
            }
        }
        if !batch.is_empty() && tx.send(batch).await.is_err() {
            return;
        }
        if read < page {
            return;
        }
        remaining -= read;
    }
}

#[async_trait]
impl UserRepository for PgUserRepository {
    /// Pages are read by a task into a bounded channel, so decoding overlaps with encoding on
    /// another core while memory stays bounded; dropping the stream stops the task.
    fn stream(&self, scope: &Scope, filter: &UserFilter, limit: Option<u64>) -> UserStream {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        tokio::spawn(pump(self.pool.clone(), scope.clone(), filter.clone(), limit, tx));
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|batch| (stream::iter(batch), rx)) })
            .flatten()
            .boxed()
    }

    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        let mut q = QueryBuilder::new("SELECT count(*) FROM users");
        push_filter(&mut q, scope, filter);
        let n: i64 = q.build_query_scalar().fetch_one(&self.pool).await.map_err(translate)?;
        super::to_u64(n, "count")
    }

    async fn ping(&self) -> Result<(), PortError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(translate)?;
        Ok(())
    }
}
