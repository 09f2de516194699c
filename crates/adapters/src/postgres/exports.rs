use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{
    Export, ExportFailure, ExportId, ExportOutcome, ExportParts, ExportSpec, ExportStatus, IdempotencyKey,
    NotificationRecord, ObjectKey, Progress, Scope,
};
use ports::{
    CreateOutcome, ExportPage, ExportQuery, ExportRepository, PortError, QuotaCreateOutcome, UpdateOutcome,
};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};

use super::{lock_scope, to_i64, to_u64, translate};

/// The record's columns, in [`decode`]'s and [`push_values`]' order.
macro_rules! record_columns {
    () => {
        "tenant_id, environment_id, id, idempotency_key, request_fingerprint, spec, object_key, \
    status, attempt, rows_written, total_rows, record_count, bytes, sha256, error_kind, error_message, \
    created_at, started_at, finished_at, updated_at, expires_at, notification, consumed_attempts, workflow_id, \
    callback, notify_due, checkpoint, resumed_from_row, delete_attempts, next_delete_at"
    };
}
/// What an update writes: every column but `admitted_at`, which only
/// [`ExportRepository::admit_waiting`] sets, so a record read before its admission never clears it.
const COLUMNS: &str = record_columns!();
/// What is read and inserted.
const ALL_COLUMNS: &str = concat!(record_columns!(), ", admitted_at");

/// Export records in PostgreSQL. Status changes are `UPDATE ... WHERE status = $expected`, so
/// concurrent writers cannot both win.
#[derive(Debug, Clone)]
pub struct PgExportRepository {
    pool: PgPool,
}

impl PgExportRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }

    async fn fetch(&self, scope: &Scope, id: ExportId) -> Result<Option<Export>, PortError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALL_COLUMNS} FROM exports WHERE tenant_id = $1 AND environment_id = $2 AND id = $3"
        )))
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(translate)?;
        row.as_ref().map(decode).transpose()
    }
}

fn bad(what: &str, value: impl std::fmt::Debug) -> PortError {
    PortError::Other(anyhow::anyhow!("stored export has an invalid {what}: {value:?}"))
}

fn decode(row: &PgRow) -> Result<Export, PortError> {
    let get_str = |i: usize| row.try_get::<String, _>(i).map_err(translate);
    let opt_i64 = |i: usize| row.try_get::<Option<i64>, _>(i).map_err(translate);
    let tenant = get_str(0)?;
    let environment = get_str(1)?;
    let scope = Scope::parse(&format!("{tenant}/{environment}"))
        .map_err(|_| bad("scope", (&tenant, &environment)))?;
    let idempotency_key = row
        .try_get::<Option<String>, _>(3)
        .map_err(translate)?
        .map(|k| IdempotencyKey::parse(&k).map_err(|_| bad("idempotency key", k)))
        .transpose()?;
    let Json(spec) = row.try_get::<Json<ExportSpec>, _>(5).map_err(translate)?;
    let status = get_str(7)?;
    let status: ExportStatus = status.parse().map_err(|()| bad("status", &status))?;
    let attempt: i32 = row.try_get(8).map_err(translate)?;
    let outcome = match (opt_i64(11)?, opt_i64(12)?, row.try_get::<Option<String>, _>(13).map_err(translate)?)
    {
        (Some(records), Some(bytes), Some(sha256)) => Some(ExportOutcome {
            record_count: to_u64(records, "record_count")?,
            bytes: to_u64(bytes, "bytes")?,
            sha256,
        }),
        _ => None,
    };
    let error = match row.try_get::<Option<String>, _>(14).map_err(translate)? {
        Some(kind) => Some(ExportFailure {
            kind: serde_json::from_value(serde_json::Value::String(kind.clone()))
                .map_err(|_| bad("error kind", kind))?,
            message: row.try_get::<Option<String>, _>(15).map_err(translate)?.unwrap_or_default(),
        }),
        None => None,
    };
    Ok(Export::restore(ExportParts {
        id: ExportId::from_uuid(row.try_get(2).map_err(translate)?),
        scope,
        spec,
        idempotency_key,
        request_fingerprint: get_str(4)?,
        object_key: ObjectKey::from_stored(get_str(6)?),
        status,
        attempt: u32::try_from(attempt).map_err(|_| bad("attempt", attempt))?,
        progress: Progress {
            rows_written: to_u64(row.try_get(9).map_err(translate)?, "rows_written")?,
            total_rows: opt_i64(10)?.map(|n| to_u64(n, "total_rows")).transpose()?,
        },
        outcome,
        error,
        created_at: row.try_get(16).map_err(translate)?,
        started_at: row.try_get(17).map_err(translate)?,
        finished_at: row.try_get(18).map_err(translate)?,
        updated_at: row.try_get(19).map_err(translate)?,
        expires_at: row.try_get(20).map_err(translate)?,
        notification: row
            .try_get::<Option<Json<NotificationRecord>>, _>(21)
            .map_err(translate)?
            .map(|Json(n)| n),
        consumed_attempts: {
            let consumed: i32 = row.try_get(22).map_err(translate)?;
            u32::try_from(consumed).map_err(|_| bad("consumed_attempts", consumed))?
        },
        workflow_id: row.try_get(23).map_err(translate)?,
        callback: row.try_get::<Option<Json<NotificationRecord>>, _>(24).map_err(translate)?.map(|Json(n)| n),
        notify_due: row.try_get(25).map_err(translate)?,
        // A checkpoint this build cannot read is only lost work, never a reason to fail.
        checkpoint: row
            .try_get::<Option<Json<serde_json::Value>>, _>(26)
            .map_err(translate)?
            .and_then(|Json(v)| serde_json::from_value(v).ok()),
        resumed_from_row: opt_i64(27)?.map(|n| to_u64(n, "resumed_from_row")).transpose()?,
        delete_attempts: {
            let attempts: i32 = row.try_get(28).map_err(translate)?;
            u32::try_from(attempts).map_err(|_| bad("delete_attempts", attempts))?
        },
        next_delete_at: row.try_get(29).map_err(translate)?,
        admitted_at: row.try_get(30).map_err(translate)?,
    }))
}

/// Whether a statement writes the admission time ([`ALL_COLUMNS`]) or keeps the stored one
/// ([`COLUMNS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Admission {
    Written,
    Kept,
}

/// Binds every column of `export`, in [`COLUMNS`] order, as one parenthesised tuple.
fn push_values(
    q: &mut QueryBuilder<Postgres>,
    export: &Export,
    admission: Admission,
) -> Result<(), PortError> {
    let p = export.to_parts();
    let outcome = p.outcome.as_ref();
    let opt = |n: Option<u64>, what: &str| n.map(|n| to_i64(n, what)).transpose();
    let attempt = i32::try_from(p.attempt).map_err(|_| bad("attempt", p.attempt))?;
    let mut t = q.separated(", ");
    t.push_unseparated("(");
    t.push_bind(p.scope.tenant.as_str().to_owned());
    t.push_bind(p.scope.environment.as_str().to_owned());
    t.push_bind(p.id.as_uuid());
    t.push_bind(p.idempotency_key.map(String::from));
    t.push_bind(p.request_fingerprint);
    t.push_bind(Json(p.spec));
    t.push_bind(p.object_key.as_str().to_owned());
    t.push_bind(p.status.as_str());
    t.push_bind(attempt);
    t.push_bind(to_i64(p.progress.rows_written, "rows_written")?);
    t.push_bind(opt(p.progress.total_rows, "total_rows")?);
    t.push_bind(opt(outcome.map(|o| o.record_count), "record_count")?);
    t.push_bind(opt(outcome.map(|o| o.bytes), "bytes")?);
    t.push_bind(outcome.map(|o| o.sha256.clone()));
    t.push_bind(p.error.as_ref().map(|e| e.kind.as_str()));
    t.push_bind(p.error.map(|e| e.message));
    t.push_bind(p.created_at);
    t.push_bind(p.started_at);
    t.push_bind(p.finished_at);
    t.push_bind(p.updated_at);
    t.push_bind(p.expires_at);
    t.push_bind(p.notification.map(Json));
    t.push_bind(
        i32::try_from(p.consumed_attempts).map_err(|_| bad("consumed_attempts", p.consumed_attempts))?,
    );
    t.push_bind(p.workflow_id);
    t.push_bind(p.callback.map(Json));
    t.push_bind(p.notify_due);
    t.push_bind(p.checkpoint.map(Json));
    t.push_bind(opt(p.resumed_from_row, "resumed_from_row")?);
    t.push_bind(i32::try_from(p.delete_attempts).unwrap_or(i32::MAX));
    t.push_bind(p.next_delete_at);
    if admission == Admission::Written {
        t.push_bind(p.admitted_at);
    }
    t.push_unseparated(")");
    Ok(())
}

#[async_trait]
impl ExportRepository for PgExportRepository {
    async fn create_if_absent(&self, export: &Export) -> Result<CreateOutcome, PortError> {
        let mut q = QueryBuilder::new(format!("INSERT INTO exports ({ALL_COLUMNS}) VALUES "));
        push_values(&mut q, export, Admission::Written)?;
        q.push(" ON CONFLICT DO NOTHING");
        let inserted = q.build().execute(&self.pool).await.map_err(translate)?.rows_affected();
        if inserted == 1 {
            return Ok(CreateOutcome::Created);
        }
        match self.fetch(&export.scope, export.id).await? {
            Some(existing) => Ok(CreateOutcome::Existing(Box::new(existing))),
            None => {
                Err(PortError::Other(anyhow::anyhow!("export {} conflicted but cannot be read", export.id)))
            }
        }
    }

    async fn create_within_quota(
        &self,
        export: &Export,
        max_unfinished: u32,
    ) -> Result<QuotaCreateOutcome, PortError> {
        let scope = &export.scope;
        // One transaction holding the scope's advisory lock: every replica's count-then-insert
        // for the scope runs one at a time, so none sees a count another is about to raise.
        let mut tx = self.pool.begin().await.map_err(translate)?;
        lock_scope(&mut tx, "exports", scope).await?;
        let existing = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALL_COLUMNS} FROM exports WHERE tenant_id = $1 AND environment_id = $2 AND id = $3"
        )))
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(export.id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(translate)?;
        if let Some(row) = existing {
            return Ok(QuotaCreateOutcome::Existing(Box::new(decode(&row)?)));
        }
        if !export.status().is_terminal() {
            // Counting stops at the limit: the answer is the same and the cost bounded.
            let unfinished: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM (SELECT 1 FROM exports WHERE tenant_id = $1 AND environment_id = $2 \
                 AND status IN ('pending', 'running') LIMIT $3) AS unfinished",
            )
            .bind(scope.tenant.as_str())
            .bind(scope.environment.as_str())
            .bind(i64::from(max_unfinished))
            .fetch_one(&mut *tx)
            .await
            .map_err(translate)?;
            if unfinished >= i64::from(max_unfinished) {
                return Ok(QuotaCreateOutcome::QuotaExceeded { unfinished: to_u64(unfinished, "count")? });
            }
        }
        let mut q = QueryBuilder::new(format!("INSERT INTO exports ({ALL_COLUMNS}) VALUES "));
        push_values(&mut q, export, Admission::Written)?;
        q.push(" ON CONFLICT DO NOTHING");
        let inserted = q.build().execute(&mut *tx).await.map_err(translate)?.rows_affected();
        tx.commit().await.map_err(translate)?;
        if inserted == 1 {
            return Ok(QuotaCreateOutcome::Created);
        }
        // Created meanwhile by a way in that takes no quota (a batch, a workflow's own record).
        match self.fetch(scope, export.id).await? {
            Some(existing) => Ok(QuotaCreateOutcome::Existing(Box::new(existing))),
            None => {
                Err(PortError::Other(anyhow::anyhow!("export {} conflicted but cannot be read", export.id)))
            }
        }
    }

    async fn admit_waiting(
        &self,
        scope: &Scope,
        max_started: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Export>, PortError> {
        // The scope's lock makes count-then-admit one step for every replica and worker.
        let mut tx = self.pool.begin().await.map_err(translate)?;
        lock_scope(&mut tx, "admission", scope).await?;
        let started: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM exports WHERE tenant_id = $1 AND environment_id = $2 \
             AND status IN ('pending', 'running') AND admitted_at IS NOT NULL LIMIT $3) AS started",
        )
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(i64::from(max_started))
        .fetch_one(&mut *tx)
        .await
        .map_err(translate)?;
        let room = i64::from(max_started) - started;
        if room <= 0 {
            return Ok(Vec::new());
        }
        let rows = sqlx::query(AssertSqlSafe(format!(
            // `status` again outside: a cancel committed meanwhile is re-checked on the new row.
            "UPDATE exports SET admitted_at = $3 WHERE tenant_id = $1 AND environment_id = $2 \
             AND status = 'pending' AND admitted_at IS NULL AND id IN (SELECT id FROM exports \
             WHERE tenant_id = $1 AND environment_id = $2 AND status = 'pending' AND admitted_at IS NULL \
             ORDER BY created_at, id LIMIT $4) RETURNING {ALL_COLUMNS}"
        )))
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(now)
        .bind(room)
        .fetch_all(&mut *tx)
        .await
        .map_err(translate)?;
        tx.commit().await.map_err(translate)?;
        let mut admitted = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        admitted.sort_by_key(|e| (e.created_at, e.id));
        Ok(admitted)
    }

    async fn get(&self, scope: &Scope, id: ExportId) -> Result<Option<Export>, PortError> {
        self.fetch(scope, id).await
    }

    async fn update_if_status(
        &self,
        export: &Export,
        expected: ExportStatus,
    ) -> Result<UpdateOutcome, PortError> {
        // Row-valued SET keeps the column list in one place ([`COLUMNS`]).
        let mut q = QueryBuilder::new(format!("UPDATE exports SET ({COLUMNS}) = "));
        push_values(&mut q, export, Admission::Kept)?;
        q.push(" WHERE tenant_id = ").push_bind(export.scope.tenant.as_str());
        q.push(" AND environment_id = ").push_bind(export.scope.environment.as_str());
        q.push(" AND id = ").push_bind(export.id.as_uuid());
        q.push(" AND status = ").push_bind(expected.as_str());
        q.push(" AND attempt <= ")
            .push_bind(i32::try_from(export.attempt()).map_err(|_| bad("attempt", export.attempt()))?);
        let updated = q.build().execute(&self.pool).await.map_err(translate)?.rows_affected();
        if updated == 1 {
            return Ok(UpdateOutcome::Updated);
        }
        Ok(match self.fetch(&export.scope, export.id).await? {
            Some(stored) => UpdateOutcome::Conflict(Box::new(stored)),
            None => UpdateOutcome::NotFound,
        })
    }

    async fn list(&self, scope: &Scope, query: &ExportQuery) -> Result<ExportPage, PortError> {
        let limit = query.limit.clamp(1, 100);
        let mut q = QueryBuilder::new(format!("SELECT {ALL_COLUMNS} FROM exports WHERE tenant_id = "));
        q.push_bind(scope.tenant.as_str());
        q.push(" AND environment_id = ").push_bind(scope.environment.as_str());
        if let Some(status) = query.status {
            q.push(" AND status = ").push_bind(status.as_str());
        }
        if let Some(after) = query.after {
            q.push(" AND (created_at, id) < (")
                .push_bind(after.created_at)
                .push(", ")
                .push_bind(after.id.as_uuid())
                .push(")");
        }
        q.push(" ORDER BY created_at DESC, id DESC LIMIT ").push_bind(to_i64(limit as u64 + 1, "limit")?);
        let rows = q.build().fetch_all(&self.pool).await.map_err(translate)?;
        let mut items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more {
            items.last().map(|e| domain::ListCursor { created_at: e.created_at, id: e.id })
        } else {
            None
        };
        Ok(ExportPage { items, next })
    }

    async fn list_unfinished(&self) -> Result<Vec<Export>, PortError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALL_COLUMNS} FROM exports WHERE status IN ('pending', 'running') ORDER BY created_at, id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter().map(decode).collect()
    }

    async fn list_notify_due(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALL_COLUMNS} FROM exports WHERE notify_due AND updated_at <= $1 \
             ORDER BY updated_at, tenant_id, environment_id, id LIMIT $2"
        )))
        .bind(before)
        .bind(to_i64(limit as u64, "limit")?)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter().map(decode).collect()
    }

    async fn list_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {ALL_COLUMNS} FROM exports \
             WHERE status = 'completed' AND GREATEST(expires_at, next_delete_at) <= $1 \
             ORDER BY GREATEST(expires_at, next_delete_at), tenant_id, environment_id, id LIMIT $2"
        )))
        .bind(now)
        .bind(to_i64(limit as u64, "limit")?)
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter().map(decode).collect()
    }

    async fn ping(&self) -> Result<(), PortError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(translate)?;
        Ok(())
    }
}
