//! The in-memory adapters against the shared port contracts.

use std::sync::Arc;

use adapters::contract;
use adapters::memory::{MemoryBatchRepository, MemoryExportRepository, MemoryUserRepository};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_export_repository_honours_the_contract() {
    contract::exports::run_all(Arc::new(MemoryExportRepository::new())).await;
}

#[tokio::test]
async fn memory_user_repository_honours_the_contract() {
    let repo = MemoryUserRepository::new();
    for (scope, users) in contract::users::fixture() {
        repo.insert(&scope, users);
    }
    contract::users::run_all(&repo).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_batch_repository_honours_the_contract() {
    contract::batches::run_all(Arc::new(MemoryBatchRepository::new())).await;
}
