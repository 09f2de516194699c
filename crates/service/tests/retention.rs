//! Retention against the in-memory record store and a storage whose deletes fail for some keys:
//! files that fail go behind the others with a growing backoff, and never stop newer exports
//! from expiring.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::memory::MemoryExportRepository;
use adapters::storage::ObjectStorage;
use async_trait::async_trait;
use chrono::{DateTime, TimeDelta, TimeZone, Utc};
use domain::{
    Export, ExportFormat, ExportId, ExportOutcome, ExportSpec, ExportStatus, ObjectKey, Scope,
    UploadCheckpoint,
};
use ports::{ExportRepository, ExportStorage, ObjectReader, ObjectWriter, PortError};
use service::{DELETE_RETRY_INITIAL, DELETE_RETRY_MAX, RetentionSweeper, delete_retry_after};
use url::Url;

/// Storage whose `delete` fails for the keys in `failing` (the rest goes to `inner`).
struct FailingDeletes {
    inner: ObjectStorage,
    failing: Mutex<HashSet<ObjectKey>>,
}

#[async_trait]
impl ExportStorage for FailingDeletes {
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError> {
        self.inner.writer(key).await
    }
    async fn resume(
        &self,
        checkpoint: &UploadCheckpoint,
    ) -> Result<Option<Box<dyn ObjectWriter>>, PortError> {
        self.inner.resume(checkpoint).await
    }
    async fn discard(&self, checkpoint: &UploadCheckpoint) -> Result<(), PortError> {
        self.inner.discard(checkpoint).await
    }
    async fn open(&self, key: &ObjectKey) -> Result<Option<ObjectReader>, PortError> {
        self.inner.open(key).await
    }
    async fn signed_url(&self, key: &ObjectKey, ttl: Duration) -> Result<Option<Url>, PortError> {
        self.inner.signed_url(key, ttl).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        if self.failing.lock().unwrap().contains(key) {
            return Err(PortError::Other(anyhow::anyhow!("injected: access denied deleting {key}")));
        }
        self.inner.delete(key).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}

fn t0() -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 25, 0, 0, 0).unwrap()
}

/// A completed export of `scope` whose file expires at `expires`.
async fn completed(repo: &MemoryExportRepository, scope: &Scope, n: u32, expires: DateTime<Utc>) -> Export {
    let id = ExportId::for_workflow_id(&format!("retention-test-{scope}-{n}"));
    let created = expires - TimeDelta::days(1);
    let mut export = Export::new(id, scope.clone(), ExportSpec::new(ExportFormat::Csv), None, created);
    export.start_attempt(1, created).unwrap();
    let outcome = ExportOutcome { record_count: 1, bytes: 1, sha256: "00".into() };
    export.complete(outcome, export.attempt_key(1), TimeDelta::days(1), created).unwrap();
    repo.create_if_absent(&export).await.unwrap();
    export
}

#[tokio::test]
async fn a_full_batch_of_undeletable_files_never_keeps_newer_exports_from_expiring() {
    let repo = Arc::new(MemoryExportRepository::new());
    let stuck_scope = Scope::parse("stuck/prod").unwrap();
    let mut stuck = Vec::new();
    for n in 0..500 {
        stuck.push(completed(&repo, &stuck_scope, n, t0()).await);
    }
    let acme = Scope::parse("acme/prod").unwrap();
    let mut newer = Vec::new();
    for n in 0..5 {
        newer.push(completed(&repo, &acme, n, t0() + TimeDelta::hours(1)).await);
    }
    let storage = Arc::new(FailingDeletes {
        inner: ObjectStorage::in_memory(),
        failing: Mutex::new(stuck.iter().map(|e| e.object_key.clone()).collect()),
    });
    let sweeper = RetentionSweeper::new(repo.clone(), storage.clone());
    let now = t0() + TimeDelta::hours(2);

    // The 500 oldest fill the first batch and all fail: counted, and put behind the others.
    let first = sweeper.sweep(now, 500).await.unwrap();
    assert_eq!((first.expired, first.failed, first.more), (0, 500, true));
    // The next sweep, at the same time, reaches the newer ones.
    let second = sweeper.sweep(now, 500).await.unwrap();
    assert_eq!((second.expired, second.failed, second.more), (5, 0, false));
    for export in &newer {
        assert_eq!(repo.get(&acme, export.id).await.unwrap().unwrap().status(), ExportStatus::Expired);
    }
    let stored = repo.get(&stuck_scope, stuck[0].id).await.unwrap().unwrap();
    assert_eq!((stored.status(), stored.delete_attempts()), (ExportStatus::Completed, 1));
    assert_eq!(stored.deletion_due_at(), Some(now + TimeDelta::from_std(DELETE_RETRY_INITIAL).unwrap()));

    // After the backoff they are tried again; still failing, they wait twice as long.
    let retry = now + TimeDelta::from_std(DELETE_RETRY_INITIAL).unwrap();
    assert_eq!(sweeper.sweep(retry - TimeDelta::seconds(1), 500).await.unwrap().failed, 0, "not yet due");
    assert_eq!(sweeper.sweep(retry, 500).await.unwrap().failed, 500);
    let stored = repo.get(&stuck_scope, stuck[0].id).await.unwrap().unwrap();
    assert_eq!(stored.delete_attempts(), 2);
    assert_eq!(stored.deletion_due_at(), Some(retry + TimeDelta::from_std(delete_retry_after(2)).unwrap()));

    // Once the store lets go, they expire.
    storage.failing.lock().unwrap().clear();
    let later = retry + TimeDelta::from_std(DELETE_RETRY_MAX).unwrap();
    let last = sweeper.sweep(later, 1000).await.unwrap();
    assert_eq!((last.expired, last.failed), (500, 0));
}

#[test]
fn the_deletion_backoff_doubles_up_to_its_cap() {
    let waits: Vec<u64> = (1..=12).map(|n| delete_retry_after(n).as_secs()).collect();
    assert_eq!(&waits[..4], [60, 120, 240, 480]);
    assert_eq!(waits[11], DELETE_RETRY_MAX.as_secs());
    assert_eq!(delete_retry_after(u32::MAX), DELETE_RETRY_MAX);
    assert_eq!(delete_retry_after(0), DELETE_RETRY_INITIAL);
}
