//! Batch exports (seed pattern 5): an operator runs one export request for many scopes.

use std::sync::Arc;

use chrono::Utc;
use domain::{
    Batch, BatchId, BatchRequest, BatchSummary, IdempotencyKey, Scope, TargetSelection, TenantDirectory,
    ValidationErrors,
};
use futures::{StreamExt, TryStreamExt};
use ports::{BatchCreateOutcome, BatchRepository, ExportRepository, Orchestrator, PortError};
use tracing::info;
use uuid::Uuid;

/// Export records read at the same time when summarising a batch.
const SUMMARY_READS: usize = 16;

#[derive(Debug, thiserror::Error)]
pub enum BatchRequestError {
    /// Targets that are not in the tenant directory (each listed as `targets[i]`), or "all" of
    /// an empty directory.
    #[error(transparent)]
    UnknownTargets(ValidationErrors),
    /// The idempotency key was used before with a different batch request.
    #[error("idempotency key {key:?} was already used for a different batch (batch {existing})")]
    IdempotencyMismatch { key: String, existing: BatchId },
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum BatchGetError {
    #[error("batch not found")]
    NotFound,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

/// A requested batch and whether this request created it.
#[derive(Debug, Clone)]
pub struct RequestedBatch {
    pub batch: Batch,
    /// False when an idempotency key matched an earlier request.
    pub created: bool,
}

/// A batch and what its targets' exports show now.
#[derive(Debug, Clone)]
pub struct BatchView {
    pub batch: Batch,
    pub summary: BatchSummary,
}

/// The batch use cases behind the operator API.
pub struct BatchService {
    batches: Arc<dyn BatchRepository>,
    exports: Arc<dyn ExportRepository>,
    orchestrator: Arc<dyn Orchestrator>,
}

impl std::fmt::Debug for BatchService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchService").finish_non_exhaustive()
    }
}

impl BatchService {
    pub fn new(
        batches: Arc<dyn BatchRepository>,
        exports: Arc<dyn ExportRepository>,
        orchestrator: Arc<dyn Orchestrator>,
    ) -> Self {
        Self { batches, exports, orchestrator }
    }

    /// Resolves the targets against `tenants`, the directory as it is now ("all" is every scope
    /// it knows),
    /// stores the batch and starts it. With an idempotency key, a repeat of the same request
    /// returns the existing batch (and makes sure it runs); a different request is an error.
    pub async fn request(
        &self,
        request: BatchRequest,
        idempotency_key: Option<IdempotencyKey>,
        tenants: &TenantDirectory,
    ) -> Result<RequestedBatch, BatchRequestError> {
        let targets = resolve(&request.targets, tenants)?;
        let id = match &idempotency_key {
            Some(key) => BatchId::for_idempotency_key(key),
            // v7: time-ordered, so IDs sort like creation.
            None => BatchId::from_uuid(Uuid::now_v7()),
        };
        let batch = Batch::new(id, &request, targets, idempotency_key, Utc::now());
        let (batch, created) = match self.batches.create_if_absent(&batch).await? {
            BatchCreateOutcome::Created => {
                info!(batch_id = %id, targets = batch.targets.len(), all = batch.all_targets,
                      workflow_id = %id.workflow_id(), "batch accepted");
                (batch, true)
            }
            BatchCreateOutcome::Existing(existing) => {
                if existing.request_fingerprint != batch.request_fingerprint {
                    let key = batch.idempotency_key.map(String::from).unwrap_or_default();
                    return Err(BatchRequestError::IdempotencyMismatch { key, existing: existing.id });
                }
                (*existing, false)
            }
        };
        // Also on a repeat: the first request may have stored the batch and died before starting
        // it, and starting is idempotent.
        self.orchestrator.start_batch(&batch).await?;
        Ok(RequestedBatch { batch, created })
    }

    /// The batch and the current state of every target's export.
    pub async fn get(&self, id: BatchId) -> Result<BatchView, BatchGetError> {
        let batch = self.batches.get(id).await?.ok_or(BatchGetError::NotFound)?;
        // Owned futures (no borrow of the iterator's items), so the handler's future is `Send`
        // for any lifetime.
        let reads: Vec<_> = batch
            .exports()
            .map(|(scope, export_id)| {
                let (exports, scope) = (Arc::clone(&self.exports), scope.clone());
                async move { exports.get(&scope, export_id).await }
            })
            .collect();
        let records: Vec<_> = futures::stream::iter(reads).buffered(SUMMARY_READS).try_collect().await?;
        let summary = BatchSummary::compute(&batch, &records);
        Ok(BatchView { batch, summary })
    }
}

fn resolve(selection: &TargetSelection, tenants: &TenantDirectory) -> Result<Vec<Scope>, BatchRequestError> {
    match selection {
        TargetSelection::All => {
            let scopes: Vec<Scope> = tenants.scopes().take(domain::batch::MAX_TARGETS).cloned().collect();
            if scopes.is_empty() {
                return Err(BatchRequestError::UnknownTargets(ValidationErrors::single(
                    "targets",
                    "no_tenants",
                    "\"all\" selects no tenant: the tenant directory is empty",
                )));
            }
            Ok(scopes)
        }
        TargetSelection::Scopes(scopes) => {
            let mut errors = ValidationErrors::new();
            for (i, scope) in scopes.iter().enumerate() {
                if !tenants.contains(scope) {
                    errors.add(
                        format!("targets[{i}]"),
                        "unknown_tenant",
                        format!("{scope} is not a known tenant"),
                    );
                }
            }
            errors.into_result(scopes.clone()).map_err(BatchRequestError::UnknownTargets)
        }
    }
}
