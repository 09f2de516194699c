//! [`BatchRepository`] contract. Each check uses fresh batch IDs, so the suite can run against a
//! shared database.

use std::sync::Arc;

use chrono::Utc;
use domain::{Batch, BatchId, BatchRequest, IdempotencyKey, Scope};
use ports::{BatchCreateOutcome, BatchRepository};
use serde_json::json;
use uuid::Uuid;

fn new_batch() -> Batch {
    let request = BatchRequest::from_json(&json!({
        "targets": ["acme/prod", "globex/dev", "initech/prod"],
        "export": {"format": "ndjson", "compression": "gzip", "user_filters": {"status": "active"}},
        "concurrency": 2
    }))
    .unwrap();
    let targets = ["initech/prod", "acme/prod", "globex/dev"].map(|s| Scope::parse(s).unwrap()).to_vec();
    let key = IdempotencyKey::parse(&format!("batch-{}", Uuid::new_v4())).unwrap();
    Batch::new(BatchId::from_uuid(Uuid::now_v7()), &request, targets, Some(key), Utc::now())
}

pub async fn run_all(repo: Arc<dyn BatchRepository>) {
    a_created_batch_reads_back_unchanged(repo.as_ref()).await;
    create_is_idempotent_and_keeps_the_first(repo.as_ref()).await;
    concurrent_creates_make_one_record(repo.clone()).await;
    assert_eq!(repo.get(BatchId::from_uuid(Uuid::now_v7())).await.unwrap(), None, "unknown batch");
}

async fn a_created_batch_reads_back_unchanged(repo: &dyn BatchRepository) {
    let batch = new_batch();
    assert_eq!(repo.create_if_absent(&batch).await.unwrap(), BatchCreateOutcome::Created);
    assert_eq!(repo.get(batch.id).await.unwrap(), Some(batch), "targets keep their order");
}

async fn create_is_idempotent_and_keeps_the_first(repo: &dyn BatchRepository) {
    let first = new_batch();
    repo.create_if_absent(&first).await.unwrap();
    let mut second = first.clone();
    second.targets.truncate(1);
    second.concurrency = 9;
    match repo.create_if_absent(&second).await.unwrap() {
        BatchCreateOutcome::Existing(stored) => assert_eq!(*stored, first),
        other => panic!("expected Existing, got {other:?}"),
    }
    assert_eq!(repo.get(first.id).await.unwrap(), Some(first));
}

async fn concurrent_creates_make_one_record(repo: Arc<dyn BatchRepository>) {
    let batch = new_batch();
    let tasks: Vec<_> = (0..16)
        .map(|_| {
            let (repo, batch) = (repo.clone(), batch.clone());
            tokio::spawn(async move { repo.create_if_absent(&batch).await.unwrap() })
        })
        .collect();
    let mut created = 0;
    for task in tasks {
        if task.await.unwrap() == BatchCreateOutcome::Created {
            created += 1;
        }
    }
    assert_eq!(created, 1);
}
