use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use domain::ObjectKey;
use futures::stream::BoxStream;
use url::Url;

use crate::PortError;

/// What a finished write stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredObject {
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the stored bytes.
    pub sha256: String,
}

/// A stored object opened for reading.
pub struct ObjectReader {
    pub size: u64,
    pub body: BoxStream<'static, Result<Bytes, PortError>>,
}

impl std::fmt::Debug for ObjectReader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ObjectReader").field("size", &self.size).finish_non_exhaustive()
    }
}

/// An upload in progress. Nothing is visible under the key until [`ObjectWriter::finish`]
/// succeeds: a write that is aborted, fails, or is dropped leaves no object (and no orphaned
/// parts) behind.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends `chunk`. Buffers are bounded: large objects go up in parts as they are written.
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError>;

    /// Makes the object visible atomically and returns its size and SHA-256. `Ok` means the
    /// object is durable, so the caller may record it as stored: local storage returns only once
    /// the file's data and the directory entries leading to it are fsynced (it survives a crash of
    /// the process or the machine), S3 once the upload is acknowledged; in-memory storage keeps
    /// nothing past the process. An `Err` (a failed fsync included) stores no object.
    async fn finish(self: Box<Self>) -> Result<StoredObject, PortError>;

    /// Discards everything written so far.
    async fn abort(self: Box<Self>) -> Result<(), PortError>;
}

/// Where export files are kept.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ExportStorage: Send + Sync {
    /// Starts a streaming write to `key`, replacing any object there once finished.
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError>;

    /// Opens `key` for streaming; `None` when there is no such object.
    async fn open(&self, key: &ObjectKey) -> Result<Option<ObjectReader>, PortError>;

    /// A presigned GET URL valid for `ttl`, or `None` when this storage cannot sign (the API
    /// then streams the object itself).
    async fn signed_url(&self, key: &ObjectKey, ttl: Duration) -> Result<Option<Url>, PortError>;

    /// Removes `key`; removing a missing object is not an error.
    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError>;

    /// Checks that the storage is reachable (for readiness).
    async fn ping(&self) -> Result<(), PortError>;
}
