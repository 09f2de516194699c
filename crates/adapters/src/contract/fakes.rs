//! Test doubles shared by the adapters' tests: users that arrive slowly, storage that fails on
//! demand and counts its writers.
#![allow(clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{ObjectKey, Scope, UploadCheckpoint, UserFilter, UserId};
use futures::{StreamExt, TryStreamExt};
use ports::{ExportStorage, ObjectReader, ObjectWriter, PortError, StoredObject, UserRepository, UserStream};
use url::Url;

/// Users from `inner`, each delayed by `per_user`, so an export stays running while a test acts
/// on it (or, with a long delay, hangs until its attempt times out). A zero delay still yields
/// between users, as a stream from a real database does.
#[derive(Clone)]
pub struct SlowUsers {
    pub inner: Arc<dyn UserRepository>,
    pub per_user: Duration,
}

impl std::fmt::Debug for SlowUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SlowUsers").field("per_user", &self.per_user).finish_non_exhaustive()
    }
}

#[async_trait]
impl UserRepository for SlowUsers {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        let delay = self.per_user;
        self.inner
            .stream(scope, filter, after, limit)
            .then(move |user| async move {
                if delay.is_zero() {
                    // Like a database-backed stream: gives other tasks a turn between rows.
                    tokio::task::yield_now().await;
                } else {
                    tokio::time::sleep(delay).await;
                }
                user
            })
            .boxed()
    }
    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        self.inner.count(scope, filter).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Users whose streams break: each `stream` call takes the next planned row count, yields that
/// many users and then fails as an unreachable database would (a call with no plan left streams
/// them all). Counts every user it yields, so a test can tell how many were read twice.
#[derive(Debug)]
pub struct BreakingUsers<R> {
    pub inner: R,
    plan: std::sync::Mutex<std::collections::VecDeque<usize>>,
    yielded: Arc<std::sync::atomic::AtomicU64>,
}

impl<R> BreakingUsers<R> {
    pub fn new(inner: R, breaks_after: impl IntoIterator<Item = usize>) -> Self {
        let plan = std::sync::Mutex::new(breaks_after.into_iter().collect());
        Self { inner, plan, yielded: Arc::default() }
    }

    /// Users yielded so far, over every stream.
    pub fn yielded(&self) -> u64 {
        self.yielded.load(Ordering::SeqCst)
    }
}

#[async_trait]
impl<R: UserRepository> UserRepository for BreakingUsers<R> {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        let breaks_after = self.plan.lock().unwrap_or_else(std::sync::PoisonError::into_inner).pop_front();
        let yielded = Arc::clone(&self.yielded);
        let users = self.inner.stream(scope, filter, after, limit).inspect(move |_| {
            yielded.fetch_add(1, Ordering::SeqCst);
        });
        match breaks_after {
            None => users.boxed(),
            Some(n) => users
                .take(n)
                .chain(futures::stream::once(async {
                    Err(PortError::unavailable(anyhow::anyhow!("connection reset")))
                }))
                .boxed(),
        }
    }
    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        self.inner.count(scope, filter).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}

/// Storage that counts the writers it hands out; the first `failures` of them fail on their
/// first chunk, retryably (`Unavailable`) or not.
pub struct FlakyStorage {
    inner: Arc<dyn ExportStorage>,
    failures: usize,
    retryable: bool,
    writers: AtomicUsize,
}

impl std::fmt::Debug for FlakyStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FlakyStorage")
            .field("failures", &self.failures)
            .field("writers", &self.writers())
            .finish_non_exhaustive()
    }
}

impl FlakyStorage {
    pub fn new(inner: Arc<dyn ExportStorage>, failures: usize, retryable: bool) -> Self {
        Self { inner, failures, retryable, writers: AtomicUsize::new(0) }
    }

    /// Storage that never fails and only counts.
    pub fn counting(inner: Arc<dyn ExportStorage>) -> Self {
        Self::new(inner, 0, true)
    }

    /// Writers handed out so far, resumed ones included (one per attempt that reached storage).
    pub fn writers(&self) -> usize {
        self.writers.load(Ordering::SeqCst)
    }

    /// Counts a writer handed out; whether it is one of the failing ones.
    fn next_fails(&self) -> bool {
        self.writers.fetch_add(1, Ordering::SeqCst) < self.failures
    }
}

struct FailingWriter {
    retryable: bool,
}

impl FailingWriter {
    fn failure(&self) -> PortError {
        let err = anyhow::anyhow!("injected storage failure");
        if self.retryable { PortError::unavailable(err) } else { PortError::Other(err) }
    }
}

#[async_trait]
impl ObjectWriter for FailingWriter {
    async fn write(&mut self, _chunk: Bytes) -> Result<(), PortError> {
        Err(self.failure())
    }
    async fn finish(self: Box<Self>) -> Result<StoredObject, PortError> {
        Err(PortError::Other(anyhow::anyhow!("injected storage failure")))
    }
    async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        Err(self.failure())
    }
    async fn abort(self: Box<Self>) -> Result<(), PortError> {
        Ok(())
    }
}

#[async_trait]
impl ExportStorage for FlakyStorage {
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError> {
        if self.next_fails() {
            return Ok(Box::new(FailingWriter { retryable: self.retryable }));
        }
        self.inner.writer(key).await
    }
    async fn resume(
        &self,
        checkpoint: &UploadCheckpoint,
    ) -> Result<Option<Box<dyn ObjectWriter>>, PortError> {
        if self.next_fails() {
            return Ok(Some(Box::new(FailingWriter { retryable: self.retryable })));
        }
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
        self.inner.delete(key).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}

/// The whole object at `key`, or `None` when there is none.
pub async fn read_object(storage: &dyn ExportStorage, key: &ObjectKey) -> Option<Vec<u8>> {
    let reader = storage.open(key).await.expect("opening the object")?;
    let chunks: Vec<Bytes> = reader.body.try_collect().await.expect("reading the object");
    Some(chunks.concat())
}

/// Users from `inner`, except that reading `failing`'s users fails at once and for good
/// (`PortError::Other`), so that scope's exports fail while every other scope's succeed.
#[derive(Clone)]
pub struct FailingScopeUsers {
    pub inner: Arc<dyn UserRepository>,
    pub failing: Scope,
}

impl std::fmt::Debug for FailingScopeUsers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FailingScopeUsers").field("failing", &self.failing).finish_non_exhaustive()
    }
}

impl FailingScopeUsers {
    /// The error every read of the failing scope gets.
    pub const MESSAGE: &str = "injected failure: this tenant's user store is broken";
}

#[async_trait]
impl UserRepository for FailingScopeUsers {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        if *scope == self.failing {
            return futures::stream::once(async { Err(PortError::Other(anyhow::anyhow!(Self::MESSAGE))) })
                .boxed();
        }
        self.inner.stream(scope, filter, after, limit)
    }
    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        if *scope == self.failing {
            return Err(PortError::Other(anyhow::anyhow!(Self::MESSAGE)));
        }
        self.inner.count(scope, filter).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}
