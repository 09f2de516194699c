use async_trait::async_trait;
use domain::{Batch, BatchId, ExportSpec, IdempotencyKey, Scope};
use ports::{BatchCreateOutcome, BatchRepository, PortError};
use sqlx::postgres::{PgPool, PgRow};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, Row};

use super::translate;

const COLUMNS: &str =
    "id, targets, all_targets, spec, concurrency, idempotency_key, request_fingerprint, created_at";

/// Batch records in PostgreSQL (`export_batches`); rows are written once and never updated.
#[derive(Debug, Clone)]
pub struct PgBatchRepository {
    pool: PgPool,
}

impl PgBatchRepository {
    pub fn new(pool: PgPool) -> Self {
        Self { pool }
    }
}

fn bad(what: &str, value: impl std::fmt::Debug) -> PortError {
    PortError::Other(anyhow::anyhow!("stored batch has an invalid {what}: {value:?}"))
}

fn decode(row: &PgRow) -> Result<Batch, PortError> {
    let Json(targets) = row.try_get::<Json<Vec<Scope>>, _>(1).map_err(translate)?;
    let Json(spec) = row.try_get::<Json<ExportSpec>, _>(3).map_err(translate)?;
    let concurrency: i32 = row.try_get(4).map_err(translate)?;
    let idempotency_key = row
        .try_get::<Option<String>, _>(5)
        .map_err(translate)?
        .map(|k| IdempotencyKey::parse(&k).map_err(|_| bad("idempotency key", k)))
        .transpose()?;
    Ok(Batch {
        id: BatchId::from_uuid(row.try_get(0).map_err(translate)?),
        targets,
        all_targets: row.try_get(2).map_err(translate)?,
        spec,
        concurrency: u32::try_from(concurrency).map_err(|_| bad("concurrency", concurrency))?,
        idempotency_key,
        request_fingerprint: row.try_get(6).map_err(translate)?,
        created_at: row.try_get(7).map_err(translate)?,
    })
}

#[async_trait]
impl BatchRepository for PgBatchRepository {
    async fn create_if_absent(&self, batch: &Batch) -> Result<BatchCreateOutcome, PortError> {
        let concurrency =
            i32::try_from(batch.concurrency).map_err(|_| bad("concurrency", batch.concurrency))?;
        let inserted = sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO export_batches ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) ON CONFLICT DO NOTHING"
        )))
        .bind(batch.id.as_uuid())
        .bind(Json(&batch.targets))
        .bind(batch.all_targets)
        .bind(Json(&batch.spec))
        .bind(concurrency)
        .bind(batch.idempotency_key.as_ref().map(IdempotencyKey::as_str))
        .bind(&batch.request_fingerprint)
        .bind(batch.created_at)
        .execute(&self.pool)
        .await
        .map_err(translate)?
        .rows_affected();
        if inserted == 1 {
            return Ok(BatchCreateOutcome::Created);
        }
        match self.get(batch.id).await? {
            Some(existing) => Ok(BatchCreateOutcome::Existing(Box::new(existing))),
            None => {
                Err(PortError::Other(anyhow::anyhow!("batch {} conflicted but cannot be read", batch.id)))
            }
        }
    }

    async fn get(&self, id: BatchId) -> Result<Option<Batch>, PortError> {
        let row = sqlx::query(AssertSqlSafe(format!("SELECT {COLUMNS} FROM export_batches WHERE id = $1")))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(translate)?;
        row.as_ref().map(decode).transpose()
    }
}
