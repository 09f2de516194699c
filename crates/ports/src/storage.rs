use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use domain::{ObjectKey, UploadCheckpoint};
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
/// succeeds: a write that is aborted, fails, or is dropped leaves no object behind.
///
/// Uploads can be resumed. [`ObjectWriter::checkpoint`] makes what was written durable and
/// describes it; [`ObjectWriter::cut`] does the same without waiting for it. A writer dropped
/// without `finish` or `abort` (a crash, a retry) leaves its upload as its last durable cut left
/// it, for [`ExportStorage::resume`]. `abort` and [`ExportStorage::discard`] remove such an upload.
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

    /// Makes every byte written so far durable (local: flushed and fsynced; S3: uploaded as a
    /// part) and returns how to go on from exactly here, with the SHA-256 state of those bytes.
    /// `None` when the upload cannot be cut here yet (an S3 part must hold at least 5 MiB): the
    /// caller writes on and asks again later. Waits for the cuts [`cut`](Self::cut) made before,
    /// and returns the newest of them when this call cannot cut. Bytes written after the last
    /// durable cut are lost if the writer is dropped.
    async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError>;

    /// [`checkpoint`](Self::checkpoint) without the wait: cuts the upload after every byte
    /// written so far (when it can be cut here, as `checkpoint` would) and lets those bytes
    /// become durable in the background while the caller writes on. Returns the newest cut
    /// whose bytes are all durable that no call returned before: this call's own, or an earlier
    /// call's while its bytes are still on their way (S3 parts going up). A checkpoint's `bytes`
    /// says which cut it is: the bytes written when that call was made. `None` when no new cut is
    /// durable yet. A writer whose failure loses bytes of a cut fails every later call, so a
    /// returned checkpoint only ever names durable bytes. Storage that makes bytes durable at
    /// once (local files) returns this call's cut, as `checkpoint` does.
    async fn cut(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        self.checkpoint().await
    }

    /// Discards everything written so far, checkpointed parts included.
    async fn abort(self: Box<Self>) -> Result<(), PortError>;
}

/// Where export files are kept.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ExportStorage: Send + Sync {
    /// Starts a streaming write to `key`, replacing any object there once finished.
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError>;

    /// Reopens the unfinished upload `checkpoint` describes, positioned right after its
    /// checkpointed bytes (anything stored after them is dropped) and hashing on from its
    /// SHA-256 state. `Ok(None)` when that upload is gone (aborted, completed, its staging file
    /// removed, or the checkpoint is of another storage): the caller starts over.
    async fn resume(&self, checkpoint: &UploadCheckpoint)
    -> Result<Option<Box<dyn ObjectWriter>>, PortError>;

    /// Removes the unfinished upload `checkpoint` describes (an export that will never resume it).
    /// Removing an upload that is already gone is not an error.
    async fn discard(&self, checkpoint: &UploadCheckpoint) -> Result<(), PortError>;

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
