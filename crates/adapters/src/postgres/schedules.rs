use async_trait::async_trait;
use domain::{CronExpr, ExportSchedule, ExportSpec, ScheduleId, ScheduleTimezone, Scope};
use ports::{
    PortError, ScheduleCreateOutcome, SchedulePage, ScheduleQuery, ScheduleQuotaOutcome, ScheduleRepository,
    ScheduleUpdateOutcome,
};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Postgres, QueryBuilder, Row};

use super::{lock_scope, to_i64, to_u64, translate};

const COLUMNS: &str =
    "tenant_id, environment_id, id, cron, timezone, spec, paused, note, revision, created_at, updated_at";

/// Schedule records in PostgreSQL; updates are `UPDATE ... WHERE revision = $expected`.
#[derive(Debug, Clone)]
pub struct PgScheduleRepository {
    pool: PgPool,
}

impl PgScheduleRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn bad(what: &str, value: impl std::fmt::Debug) -> PortError {
    PortError::Other(anyhow::anyhow!("stored schedule has an invalid {what}: {value:?}"))
}

fn decode(row: &PgRow) -> Result<ExportSchedule, PortError> {
    let get_str = |i: usize| row.try_get::<String, _>(i).map_err(translate);
    let (tenant, environment) = (get_str(0)?, get_str(1)?);
    let scope = Scope::parse(&format!("{tenant}/{environment}"))
        .map_err(|_| bad("scope", (&tenant, &environment)))?;
    let cron = get_str(3)?;
    let timezone = get_str(4)?;
    let Json(spec) = row.try_get::<Json<ExportSpec>, _>(5).map_err(translate)?;
    Ok(ExportSchedule {
        id: ScheduleId::from_uuid(row.try_get(2).map_err(translate)?),
        scope,
        cron: CronExpr::parse(&cron).map_err(|_| bad("cron", &cron))?,
        timezone: ScheduleTimezone::parse(&timezone).map_err(|_| bad("timezone", &timezone))?,
        spec,
        paused: row.try_get(6).map_err(translate)?,
        note: row.try_get(7).map_err(translate)?,
        revision: to_u64(row.try_get(8).map_err(translate)?, "revision")?,
        created_at: row.try_get(9).map_err(translate)?,
        updated_at: row.try_get(10).map_err(translate)?,
    })
}

/// Binds every column of `s`, in [`COLUMNS`] order, as one parenthesised tuple.
fn push_values(q: &mut QueryBuilder<Postgres>, s: &ExportSchedule) -> Result<(), PortError> {
    let mut t = q.separated(", ");
    t.push_unseparated("(");
    t.push_bind(s.scope.tenant.as_str().to_owned());
    t.push_bind(s.scope.environment.as_str().to_owned());
    t.push_bind(s.id.as_uuid());
    t.push_bind(s.cron.as_str().to_owned());
    t.push_bind(s.timezone.name());
    t.push_bind(Json(s.spec.clone()));
    t.push_bind(s.paused);
    t.push_bind(s.note.clone());
    t.push_bind(to_i64(s.revision, "revision")?);
    t.push_bind(s.created_at);
    t.push_bind(s.updated_at);
    t.push_unseparated(")");
    Ok(())
}

#[async_trait]
impl ScheduleRepository for PgScheduleRepository {
    async fn create_if_absent(&self, schedule: &ExportSchedule) -> Result<ScheduleCreateOutcome, PortError> {
        let mut q = QueryBuilder::new(format!("INSERT INTO export_schedules ({COLUMNS}) VALUES "));
        push_values(&mut q, schedule)?;
        q.push(" ON CONFLICT DO NOTHING");
        if q.build().execute(&self.pool).await.map_err(translate)?.rows_affected() == 1 {
            return Ok(ScheduleCreateOutcome::Created);
        }
        match self.get(&schedule.scope, schedule.id).await? {
            Some(existing) => Ok(ScheduleCreateOutcome::Existing(Box::new(existing))),
            None => Err(PortError::Other(anyhow::anyhow!(
                "schedule {} conflicted but cannot be read (deleted meanwhile)",
                schedule.id
            ))),
        }
    }

    async fn create_within_quota(
        &self,
        schedule: &ExportSchedule,
        max_schedules: u32,
    ) -> Result<ScheduleQuotaOutcome, PortError> {
        let scope = &schedule.scope;
        // As exports: the scope's advisory lock makes count-then-insert atomic across replicas.
        let mut tx = self.pool.begin().await.map_err(translate)?;
        lock_scope(&mut tx, "schedules", scope).await?;
        let existing = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM export_schedules WHERE tenant_id = $1 AND environment_id = $2 AND id = $3"
        )))
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(schedule.id.as_uuid())
        .fetch_optional(&mut *tx)
        .await
        .map_err(translate)?;
        if let Some(row) = existing {
            return Ok(ScheduleQuotaOutcome::Existing(Box::new(decode(&row)?)));
        }
        let count: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM (SELECT 1 FROM export_schedules WHERE tenant_id = $1 \
             AND environment_id = $2 LIMIT $3) AS kept",
        )
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(i64::from(max_schedules))
        .fetch_one(&mut *tx)
        .await
        .map_err(translate)?;
        if count >= i64::from(max_schedules) {
            return Ok(ScheduleQuotaOutcome::QuotaExceeded { count: to_u64(count, "count")? });
        }
        let mut q = QueryBuilder::new(format!("INSERT INTO export_schedules ({COLUMNS}) VALUES "));
        push_values(&mut q, schedule)?;
        q.push(" ON CONFLICT DO NOTHING");
        let inserted = q.build().execute(&mut *tx).await.map_err(translate)?.rows_affected();
        tx.commit().await.map_err(translate)?;
        if inserted == 1 {
            return Ok(ScheduleQuotaOutcome::Created);
        }
        match self.get(scope, schedule.id).await? {
            Some(existing) => Ok(ScheduleQuotaOutcome::Existing(Box::new(existing))),
            None => Err(PortError::Other(anyhow::anyhow!(
                "schedule {} conflicted but cannot be read (deleted meanwhile)",
                schedule.id
            ))),
        }
    }

    async fn get(&self, scope: &Scope, id: ScheduleId) -> Result<Option<ExportSchedule>, PortError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM export_schedules WHERE tenant_id = $1 AND environment_id = $2 AND id = $3"
        )))
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(id.as_uuid())
        .fetch_optional(&self.pool)
        .await
        .map_err(translate)?;
        row.as_ref().map(decode).transpose()
    }

    async fn list(&self, scope: &Scope, query: &ScheduleQuery) -> Result<SchedulePage, PortError> {
        let limit = query.limit.clamp(1, 100);
        let mut q = QueryBuilder::new(format!("SELECT {COLUMNS} FROM export_schedules WHERE tenant_id = "));
        q.push_bind(scope.tenant.as_str());
        q.push(" AND environment_id = ").push_bind(scope.environment.as_str());
        if let Some(after) = query.after {
            q.push(" AND id > ").push_bind(after.as_uuid());
        }
        q.push(" ORDER BY id LIMIT ").push_bind(to_i64(limit as u64 + 1, "limit")?);
        let rows = q.build().fetch_all(&self.pool).await.map_err(translate)?;
        let mut items = rows.iter().map(decode).collect::<Result<Vec<_>, _>>()?;
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(|s| s.id) } else { None };
        Ok(SchedulePage { items, next })
    }

    async fn list_all(&self) -> Result<Vec<ExportSchedule>, PortError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM export_schedules ORDER BY tenant_id, environment_id, id"
        )))
        .fetch_all(&self.pool)
        .await
        .map_err(translate)?;
        rows.iter().map(decode).collect()
    }

    async fn update_if_revision(
        &self,
        schedule: &ExportSchedule,
        expected: u64,
    ) -> Result<ScheduleUpdateOutcome, PortError> {
        let mut q = QueryBuilder::new(format!("UPDATE export_schedules SET ({COLUMNS}) = "));
        push_values(&mut q, schedule)?;
        q.push(" WHERE tenant_id = ").push_bind(schedule.scope.tenant.as_str());
        q.push(" AND environment_id = ").push_bind(schedule.scope.environment.as_str());
        q.push(" AND id = ").push_bind(schedule.id.as_uuid());
        q.push(" AND revision = ").push_bind(to_i64(expected, "revision")?);
        if q.build().execute(&self.pool).await.map_err(translate)?.rows_affected() == 1 {
            return Ok(ScheduleUpdateOutcome::Updated);
        }
        Ok(match self.get(&schedule.scope, schedule.id).await? {
            Some(stored) => ScheduleUpdateOutcome::Conflict(Box::new(stored)),
            None => ScheduleUpdateOutcome::NotFound,
        })
    }

    async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<bool, PortError> {
        let deleted = sqlx::query(
            "DELETE FROM export_schedules WHERE tenant_id = $1 AND environment_id = $2 AND id = $3",
        )
        .bind(scope.tenant.as_str())
        .bind(scope.environment.as_str())
        .bind(id.as_uuid())
        .execute(&self.pool)
        .await
        .map_err(translate)?
        .rows_affected();
        Ok(deleted == 1)
    }

    async fn ping(&self) -> Result<(), PortError> {
        sqlx::query("SELECT 1").execute(&self.pool).await.map_err(translate)?;
        Ok(())
    }
}
