use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Scope, User, UserFilter, UserId};
use futures::StreamExt;
use futures::stream;
use ports::{PortError, UserRepository, UserStream};
use sqlx::postgres::{PgConnection, PgPool};
use sqlx::{Postgres, QueryBuilder};
use tokio::sync::mpsc;
use tracing::{Instrument, Span, field, info_span};

use super::binary_copy::UserCopyDecoder;
use super::{to_i64, translate};

/// Users per message between the reading task and the export; with the channel bound this caps
/// what is held in memory at about `BATCH * CHANNEL_BATCHES` users.
const BATCH: usize = 256;
const CHANNEL_BATCHES: usize = 8;

/// Users stored in PostgreSQL, streamed out with binary `COPY` (a server-side stream: rows flow
/// as they are produced and TCP back-pressure bounds what is in flight).
#[derive(Debug, Clone)]
pub struct PgUserRepository {
    pool: PgPool,
}

impl PgUserRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

/// A value for one `%L` of the COPY template.
enum Arg {
    Text(String),
    Texts(Vec<String>),
    Time(DateTime<Utc>),
    Int(i64),
}

/// The filter as SQL fragments, each with its values. Fragments are constants: only values vary.
fn conditions(scope: &Scope, filter: &UserFilter) -> Vec<(&'static str, Arg)> {
    let mut out = vec![
        (" WHERE tenant_id = {}", Arg::Text(scope.tenant.as_str().to_owned())),
        (" AND environment_id = {}", Arg::Text(scope.environment.as_str().to_owned())),
    ];
    if let Some(statuses) = &filter.status {
        out.push((
            " AND status = ANY({}::text[])",
            Arg::Texts(statuses.iter().map(|s| s.as_str().to_owned()).collect()),
        ));
    }
    if let Some(after) = filter.created_after {
        out.push((" AND created_at > {}::timestamptz", Arg::Time(after)));
    }
    if let Some(before) = filter.created_before {
        out.push((" AND created_at < {}::timestamptz", Arg::Time(before)));
    }
    if let Some(domain) = &filter.email_domain {
        // The part after the last '@', compared case-insensitively, like `UserFilter::matches`.
        out.push((
            " AND position('@' in email) > 0 AND lower(substring(email from '[^@]*$')) = {}",
            Arg::Text(domain.clone()),
        ));
    }
    out
}

fn bind(q: &mut QueryBuilder<Postgres>, arg: Arg) {
    match arg {
        Arg::Text(v) => q.push_bind(v),
        Arg::Texts(v) => q.push_bind(v),
        Arg::Time(v) => q.push_bind(v),
        Arg::Int(v) => q.push_bind(v),
    };
}

/// The export's `COPY ... TO STDOUT (FORMAT binary)` statement. COPY takes no bind parameters,
/// so the server assembles it: `format()` receives a template made only of the constant
/// fragments above and quotes every value with `%L` itself. No request value is spliced into
/// SQL text by us.
async fn copy_statement(
    conn: &mut PgConnection,
    scope: &Scope,
    filter: &UserFilter,
    after: Option<UserId>,
    limit: Option<u64>,
) -> Result<String, PortError> {
    let mut template =
        String::from("COPY (SELECT id, email, name, status, created_at, updated_at, metadata FROM users");
    let mut args = Vec::new();
    for (fragment, arg) in conditions(scope, filter) {
        template.push_str(&fragment.replace("{}", "%L"));
        args.push(arg);
    }
    if let Some(after) = after {
        // The primary key's order, so a resumed export reads on from an index position.
        template.push_str(" AND id > %L::uuid");
        args.push(Arg::Text(after.to_string()));
    }
    template.push_str(" ORDER BY id");
    if let Some(limit) = limit {
        template.push_str(" LIMIT %L::bigint");
        args.push(Arg::Int(to_i64(limit, "limit")?));
    }
    template.push_str(") TO STDOUT (FORMAT binary)");
    let mut q = QueryBuilder::new("SELECT format(");
    q.push_bind(template);
    for arg in args {
        // format() takes `variadic "any"`: every parameter needs its type spelled out.
        let cast = match arg {
            Arg::Text(_) => "::text",
            Arg::Texts(_) => "::text[]",
            Arg::Time(_) => "::timestamptz",
            Arg::Int(_) => "::bigint",
        };
        q.push(", ");
        bind(&mut q, arg);
        q.push(cast);
    }
    q.push(")");
    q.build_query_scalar().fetch_one(conn).await.map_err(translate)
}

type Batch = Vec<Result<User, PortError>>;

/// Runs the COPY and decodes it into `tx` until done or the receiver is gone.
async fn pump(
    pool: PgPool,
    scope: Scope,
    filter: UserFilter,
    after: Option<UserId>,
    limit: Option<u64>,
    tx: mpsc::Sender<Batch>,
) {
    let mut conn = match pool.acquire().await {
        Ok(conn) => conn,
        Err(err) => return drop(tx.send(vec![Err(translate(err))]).await),
    };
    if let Err(err) = copy_into(&mut conn, &scope, &filter, after, limit, &tx).await {
        if !matches!(err, PortError::Cancelled) {
            Span::current().record("otel.status_code", "ERROR");
        }
        let _ = tx.send(vec![Err(err)]).await;
        // The COPY may be half-read: such a connection must never go back to the pool.
        drop(conn.detach());
    }
}

/// Sends every user of the COPY to `tx`; an error when the COPY did not run to its end
/// (including the receiver going away).
async fn copy_into(
    conn: &mut PgConnection,
    scope: &Scope,
    filter: &UserFilter,
    after: Option<UserId>,
    limit: Option<u64>,
    tx: &mpsc::Sender<Batch>,
) -> Result<(), PortError> {
    let statement = copy_statement(conn, scope, filter, after, limit).await?;
    let mut chunks = conn.copy_out_raw(&statement).await.map_err(translate)?;
    let mut decoder = UserCopyDecoder::default();
    let mut batch = Vec::with_capacity(BATCH);
    let mut rows = 0u64;
    let gone = || PortError::Cancelled;
    while let Some(chunk) = chunks.next().await {
        decoder.push(&chunk.map_err(translate)?);
        while let Some(user) = decoder.next_user().map_err(|e| PortError::Other(e.into()))? {
            rows += 1;
            batch.push(Ok(user));
            if batch.len() == BATCH {
                tx.send(std::mem::replace(&mut batch, Vec::with_capacity(BATCH)))
                    .await
                    .map_err(|_| gone())?;
            }
        }
    }
    // A connection that ends mid-stream must never make a short export look complete.
    decoder.finish().map_err(PortError::unavailable)?;
    if !batch.is_empty() {
        tx.send(batch).await.map_err(|_| gone())?;
    }
    Span::current().record("db.rows", rows);
    Ok(())
}

#[async_trait]
impl UserRepository for PgUserRepository {
    /// A task runs the COPY into a bounded channel, so decoding overlaps with encoding on another
    /// core while memory stays bounded; dropping the stream stops the task.
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        let (tx, rx) = mpsc::channel(CHANNEL_BATCHES);
        // The task's span, a child of the caller's, keeps the COPY in the export's trace.
        let span = info_span!("users.copy", otel.kind = "client", db.system = "postgresql",
                              db.operation = "COPY", tenant = %scope.tenant, db.rows = field::Empty,
                              otel.status_code = field::Empty);
        tokio::spawn(
            pump(self.pool.clone(), scope.clone(), filter.clone(), after, limit, tx).instrument(span),
        );
        stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|batch| (stream::iter(batch), rx)) })
            .flatten()
            .boxed()
    }

    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        let mut q = QueryBuilder::new("SELECT count(*) FROM users");
        for (fragment, arg) in conditions(scope, filter) {
            let (before, after) = fragment.split_once("{}").unwrap_or((fragment, ""));
            q.push(before);
            bind(&mut q, arg);
            q.push(after);
        }
        let n: i64 = q.build_query_scalar().fetch_one(&self.pool).await.map_err(translate)?;
        super::to_u64(n, "count")
    }

    async fn ping(&self) -> Result<(), PortError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(translate)?;
        Ok(())
    }
}
