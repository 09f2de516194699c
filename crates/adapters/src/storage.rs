//! Export storage over `object_store`: local filesystem and in-memory now, S3 with its issue.
//! `object_store` is the abstraction; this adapter adds checksums, atomicity and error mapping.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use bytes::Bytes;
use domain::ObjectKey;
use futures::StreamExt;
use object_store::buffered::BufWriter;
use object_store::local::LocalFileSystem;
use object_store::memory::InMemory;
use object_store::path::Path as StorePath;
use object_store::{ObjectStore, ObjectStoreExt};
use ports::{ExportStorage, ObjectReader, ObjectWriter, PortError, StoredObject};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

/// Bytes buffered before an upload switches to multipart, and the size of each part.
const PART_BYTES: usize = 8 * 1024 * 1024;
/// Parts in flight at once; bounds memory to about `PART_BYTES * (MAX_PARTS_IN_FLIGHT + 1)`.
const MAX_PARTS_IN_FLIGHT: usize = 2;

/// Storage for export files backed by an [`ObjectStore`].
#[derive(Debug, Clone)]
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
}

impl ObjectStorage {
    /// Files under `dir` (created if missing). Writes go to a staging file renamed into place
    /// on completion, so readers never see a partial export.
    pub fn local(dir: impl AsRef<Path>) -> anyhow::Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).with_context(|| format!("creating data directory {}", dir.display()))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .with_context(|| format!("opening data directory {}", dir.display()))?;
        Ok(Self { store: Arc::new(store) })
    }

    /// Objects in process memory, lost on exit.
    pub fn in_memory() -> Self {
        Self { store: Arc::new(InMemory::new()) }
    }

    pub fn from_store(store: Arc<dyn ObjectStore>) -> Self {
        Self { store }
    }
}

fn path(key: &ObjectKey) -> StorePath {
    StorePath::from(key.as_str())
}

/// Maps `object_store` errors onto the port: transport-level trouble is retryable.
fn translate(err: object_store::Error) -> PortError {
    match err {
        object_store::Error::Generic { .. } | object_store::Error::JoinError { .. } => PortError::unavailable(err),
        other => PortError::Other(other.into()),
    }
}

#[async_trait]
impl ExportStorage for ObjectStorage {
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError> {
        let inner = BufWriter::with_capacity(Arc::clone(&self.store), path(key), PART_BYTES)
            .with_max_concurrency(MAX_PARTS_IN_FLIGHT);
        Ok(Box::new(ChecksummingWriter { inner: Some(inner), hasher: Sha256::new(), bytes: 0 }))
    }

    async fn open(&self, key: &ObjectKey) -> Result<Option<ObjectReader>, PortError> {
        match self.store.get(&path(key)).await {
            Ok(result) => {
                let size = result.meta.size;
                let body = result.into_stream().map(|chunk| chunk.map_err(translate)).boxed();
                Ok(Some(ObjectReader { size, body }))
            }
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(err) => Err(translate(err)),
        }
    }

    async fn signed_url(&self, _key: &ObjectKey, _ttl: Duration) -> Result<Option<Url>, PortError> {
        // Local and in-memory stores cannot sign; the API streams instead.
        Ok(None)
    }

    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        match self.store.delete(&path(key)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(err) => Err(translate(err)),
        }
    }

    async fn ping(&self) -> Result<(), PortError> {
        // Listing one entry proves the store answers without reading any tenant's data.
        let mut entries = self.store.list(Some(&StorePath::from("_readiness")));
        match entries.next().await {
            None | Some(Ok(_)) | Some(Err(object_store::Error::NotFound { .. })) => Ok(()),
            Some(Err(err)) => Err(translate(err)),
        }
    }
}

/// Streams through `BufWriter` (multipart once past one part) while hashing.
struct ChecksummingWriter {
    /// `None` once finished or aborted.
    inner: Option<BufWriter>,
    hasher: Sha256,
    bytes: u64,
}

#[async_trait]
impl ObjectWriter for ChecksummingWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
        let inner = self.inner.as_mut().ok_or_else(|| PortError::Other(anyhow::anyhow!("writer is closed")))?;
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        inner.put(chunk).await.map_err(translate)
    }

    async fn finish(mut self: Box<Self>) -> Result<StoredObject, PortError> {
        let mut inner = self.inner.take().ok_or_else(|| PortError::Other(anyhow::anyhow!("writer is closed")))?;
        // On failure the upload is dropped, which removes a local staging file; `abort` cannot be
        // called on a writer that began shutting down.
        inner.shutdown().await.map_err(PortError::unavailable)?;
        Ok(StoredObject { bytes: self.bytes, sha256: hex::encode(self.hasher.clone().finalize()) })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), PortError> {
        match self.inner.take() {
            Some(mut inner) => inner.abort().await.map_err(translate),
            None => Ok(()),
        }
    }
}
