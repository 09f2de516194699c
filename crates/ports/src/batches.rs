use async_trait::async_trait;
use domain::{Batch, BatchId};

use crate::PortError;

/// Result of [`BatchRepository::create_if_absent`].
#[derive(Debug, Clone, PartialEq)]
pub enum BatchCreateOutcome {
    Created,
    /// A batch with that ID exists; here it is, unchanged.
    Existing(Box<Batch>),
}

/// Batch records: what a batch was asked to do (its resolved targets and export request). What
/// it achieved lives in its targets' export records, so a batch record never changes.
#[async_trait]
pub trait BatchRepository: Send + Sync {
    /// Stores `batch` unless one with the same ID exists.
    ///
    /// Returns `Created`, or `Existing(stored)` (the stored record is left untouched, whatever
    /// `batch` holds). Concurrent calls with the same ID create exactly one record. The stored
    /// record reads back equal to `batch` (targets in order, timestamps at microseconds).
    async fn create_if_absent(&self, batch: &Batch) -> Result<BatchCreateOutcome, PortError>;

    /// The batch `id`; `None` when there is none.
    async fn get(&self, id: BatchId) -> Result<Option<Batch>, PortError>;
}
