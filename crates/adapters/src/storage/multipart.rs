//! Resumable uploads over a multipart API (S3, in-memory).
//!
//! Writes are buffered; a full buffer goes up as a part of exactly the part size, and a
//! checkpoint puts up what is buffered as a part of its own and lists every part so far. The
//! upload is created with its first part, so an object that never needed a part (small, empty)
//! is stored with one `put`. Parts go up one at a time, in order.
//!
//! A resumed writer puts its parts at the indices after the checkpoint's, over any that a dropped
//! writer put there. S3 completes only the parts listed; `InMemory` completes every part it holds,
//! so there a dropped writer's later parts are replaced only by a resumed writer that writes as
//! many bytes past the checkpoint, which resuming an export does (it writes the same bytes).

use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use domain::{ObjectKey, ResumableSha256, UploadCheckpoint, UploadLocation};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as StorePath;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use ports::{ObjectWriter, PortError, StoredObject};

use super::translate;

/// Where multipart uploads go, and how they are cut.
#[derive(Clone)]
pub(super) struct MultipartUploads {
    parts: Arc<dyn MultipartStore>,
    /// The same store, for the single `put` of an object that never needed a part.
    objects: Arc<dyn ObjectStore>,
    /// A full buffer goes up as a part of this size (at least `checkpoint_bytes`).
    part_bytes: usize,
    min_checkpoint_bytes: usize,
    checkpoint_bytes: usize,
}

impl MultipartUploads {
    /// Checkpoints come no oftener than every `min_checkpoint_bytes` (a store's minimum part).
    pub(super) fn new(
        parts: Arc<dyn MultipartStore>,
        objects: Arc<dyn ObjectStore>,
        part_bytes: usize,
        min_checkpoint_bytes: usize,
    ) -> Self {
        Self {
            parts,
            objects,
            part_bytes: part_bytes.max(min_checkpoint_bytes),
            min_checkpoint_bytes,
            checkpoint_bytes: min_checkpoint_bytes,
        }
    }

    pub(super) fn with_checkpoint_bytes(mut self, bytes: usize) -> Self {
        self.checkpoint_bytes = bytes.max(self.min_checkpoint_bytes);
        self.part_bytes = self.part_bytes.max(self.checkpoint_bytes);
        self
    }

    pub(super) fn writer(&self, key: &ObjectKey, path: StorePath) -> MultipartWriter {
        MultipartWriter {
            uploads: self.clone(),
            key: key.clone(),
            path,
            upload: None,
            parts: Vec::new(),
            buffer: BytesMut::new(),
            bytes: 0,
            checkpointed_bytes: 0,
            hasher: ResumableSha256::new(),
            failed: false,
        }
    }

    pub(super) async fn resume(
        &self,
        checkpoint: &UploadCheckpoint,
        path: StorePath,
    ) -> Result<Option<MultipartWriter>, PortError> {
        let UploadLocation::Multipart { upload_id, parts } = &checkpoint.location else {
            return Ok(None);
        };
        let Some(hasher) =
            ResumableSha256::restore(&checkpoint.sha256).filter(|h| h.len() == checkpoint.bytes)
        else {
            return Ok(None);
        };
        if checkpoint.bytes > 0 && parts.is_empty() {
            return Ok(None);
        }
        // The stores have no cheap "does this upload exist": put an empty part where the next one
        // goes. A real part replaces it; if none follows, completion lists only the real parts
        // (S3 drops the rest; InMemory keeps it, but it is empty).
        match self.parts.put_part(&path, upload_id, parts.len(), PutPayload::new()).await {
            Ok(_) => {}
            Err(err) if is_upload_gone(&err) => return Ok(None),
            Err(err) => return Err(translate(err)),
        }
        let mut writer = self.writer(&checkpoint.key, path);
        writer.upload = Some(upload_id.clone());
        writer.parts = parts.iter().map(|content_id| PartId { content_id: content_id.clone() }).collect();
        writer.bytes = checkpoint.bytes;
        writer.checkpointed_bytes = checkpoint.bytes;
        writer.hasher = hasher;
        Ok(Some(writer))
    }

    pub(super) async fn discard(
        &self,
        checkpoint: &UploadCheckpoint,
        path: &StorePath,
    ) -> Result<(), PortError> {
        match &checkpoint.location {
            UploadLocation::Multipart { upload_id, .. } => abort(self.parts.as_ref(), path, upload_id).await,
            // Not an upload of this storage: nothing of it is here.
            UploadLocation::Staging { .. } => Ok(()),
        }
    }
}

/// Whether `err` says the multipart upload does not exist (aborted, completed, never made).
/// S3 answers 404 NoSuchUpload (object_store's `NotFound`). `InMemory` answers `Generic`, with a
/// private error type; its part and abort calls fail for no other reason.
fn is_upload_gone(err: &object_store::Error) -> bool {
    match err {
        object_store::Error::NotFound { .. } => true,
        object_store::Error::Generic { store, .. } => *store == "InMemory",
        _ => false,
    }
}

async fn abort(
    store: &dyn MultipartStore,
    path: &StorePath,
    upload_id: &MultipartId,
) -> Result<(), PortError> {
    match store.abort_multipart(path, upload_id).await {
        Ok(()) => Ok(()),
        Err(err) if is_upload_gone(&err) => Ok(()),
        Err(err) => Err(translate(err)),
    }
}

/// A multipart upload in progress, hashing as it goes.
pub(super) struct MultipartWriter {
    uploads: MultipartUploads,
    key: ObjectKey,
    path: StorePath,
    /// Created with the first part (or a checkpoint before any).
    upload: Option<MultipartId>,
    /// Every part put up, in order; the first few are the last checkpoint's.
    parts: Vec<PartId>,
    buffer: BytesMut,
    /// Written so far, buffered bytes included.
    bytes: u64,
    checkpointed_bytes: u64,
    hasher: ResumableSha256,
    /// A part failed to go up: its bytes left the buffer, so the upload cannot go on.
    failed: bool,
}

impl MultipartWriter {
    fn usable(&self) -> Result<(), PortError> {
        if self.failed {
            return Err(PortError::Other(anyhow::anyhow!(
                "an earlier write of this upload failed; resume it from its last checkpoint"
            )));
        }
        Ok(())
    }

    async fn upload_id(&mut self) -> Result<MultipartId, PortError> {
        if let Some(id) = &self.upload {
            return Ok(id.clone());
        }
        let id = self.uploads.parts.create_multipart(&self.path).await.map_err(translate)?;
        self.upload = Some(id.clone());
        Ok(id)
    }

    async fn put_part(&mut self, data: Bytes) -> Result<(), PortError> {
        let result = self.try_put_part(data).await;
        if result.is_err() {
            self.failed = true;
        }
        result
    }

    async fn try_put_part(&mut self, data: Bytes) -> Result<(), PortError> {
        let id = self.upload_id().await?;
        let part = self
            .uploads
            .parts
            .put_part(&self.path, &id, self.parts.len(), data.into())
            .await
            .map_err(translate)?;
        self.parts.push(part);
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for MultipartWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
        self.usable()?;
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        // Parts of exactly the part size: see the module docs on why a resumed writer relies on it.
        while self.buffer.len() >= self.uploads.part_bytes {
            let part = self.buffer.split_to(self.uploads.part_bytes).freeze();
            self.put_part(part).await?;
        }
        Ok(())
    }

    async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        self.usable()?;
        let min = self.uploads.checkpoint_bytes;
        let since = self.bytes - self.checkpointed_bytes;
        // A buffer shorter than the minimum cannot go up: on S3 only the last part may be small.
        let ready = self.buffer.len() >= min || (self.buffer.is_empty() && since >= min as u64);
        if !ready {
            return Ok(None);
        }
        if !self.buffer.is_empty() {
            let part = self.buffer.split().freeze();
            self.put_part(part).await?;
        }
        // Before any part (in-memory, at no bytes), the checkpoint still needs an upload to name.
        let upload_id = self.upload_id().await?;
        self.checkpointed_bytes = self.bytes;
        Ok(Some(UploadCheckpoint {
            key: self.key.clone(),
            bytes: self.bytes,
            sha256: self.hasher.state(),
            location: UploadLocation::Multipart {
                upload_id,
                parts: self.parts.iter().map(|p| p.content_id.clone()).collect(),
            },
        }))
    }

    async fn finish(mut self: Box<Self>) -> Result<StoredObject, PortError> {
        self.usable()?;
        match self.upload.clone() {
            None => {
                let data = self.buffer.split().freeze();
                self.uploads.objects.put(&self.path, data.into()).await.map_err(translate)?;
            }
            Some(id) => {
                if !self.buffer.is_empty() {
                    let part = self.buffer.split().freeze();
                    self.put_part(part).await?;
                }
                // On failure the upload stays as it is, resumable from the last checkpoint.
                let parts = std::mem::take(&mut self.parts);
                self.uploads.parts.complete_multipart(&self.path, &id, parts).await.map_err(translate)?;
            }
        }
        let this = *self;
        Ok(StoredObject { bytes: this.bytes, sha256: this.hasher.finalize_hex() })
    }

    async fn abort(self: Box<Self>) -> Result<(), PortError> {
        match &self.upload {
            Some(id) => abort(self.uploads.parts.as_ref(), &self.path, id).await,
            None => Ok(()),
        }
    }
}
