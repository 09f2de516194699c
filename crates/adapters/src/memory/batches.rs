use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use domain::{Batch, BatchId};
use ports::{BatchCreateOutcome, BatchRepository, PortError};

/// Batch records held in memory; one mutex makes create-if-absent atomic.
#[derive(Debug, Clone, Default)]
pub struct MemoryBatchRepository {
    records: Arc<Mutex<HashMap<BatchId, Batch>>>,
}

impl MemoryBatchRepository {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl BatchRepository for MemoryBatchRepository {
    async fn create_if_absent(&self, batch: &Batch) -> Result<BatchCreateOutcome, PortError> {
        let mut records = self.records.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(existing) = records.get(&batch.id) {
            return Ok(BatchCreateOutcome::Existing(Box::new(existing.clone())));
        }
        records.insert(batch.id, batch.clone());
        Ok(BatchCreateOutcome::Created)
    }

    async fn get(&self, id: BatchId) -> Result<Option<Batch>, PortError> {
        Ok(self.records.lock().unwrap_or_else(PoisonError::into_inner).get(&id).cloned())
    }
}
