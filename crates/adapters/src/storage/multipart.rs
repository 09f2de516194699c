//! Resumable uploads over a multipart API (S3, in-memory).
//!
//! Writes are buffered; a full buffer goes up as a part of exactly the part size, and a cut
//! (a checkpoint asked for) puts up what is buffered as a part of its own. The upload is created
//! with its first part, so an object that never needed a part (small, empty) is stored with one
//! `put`.
//!
//! Parts go up in the background, a few at once (`parts_in_flight`; a write waits for a slot, so
//! memory stays under `parts_in_flight + 1` parts), and the writer goes on meanwhile: the export
//! keeps encoding while its parts travel. A cut becomes a checkpoint once every part before it is
//! up, in whatever order they finished; [`ObjectWriter::cut`] reports the newest such, so a
//! checkpoint never names a part that is not stored. A part that fails fails the writer: the
//! upload goes on only by resuming it from a checkpoint.
//!
//! A resumed writer puts its parts at the indices after the checkpoint's, over any that a dropped
//! writer put there. S3 completes only the parts listed; `InMemory` completes every part it holds,
//! so there a dropped writer's later parts are replaced only by a resumed writer that writes as
//! many bytes past the checkpoint, which resuming an export does (it writes the same bytes).

use std::collections::VecDeque;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use domain::{ObjectKey, ResumableSha256, Sha256State, UploadCheckpoint, UploadLocation};
use object_store::multipart::{MultipartStore, PartId};
use object_store::path::Path as StorePath;
use object_store::{MultipartId, ObjectStore, ObjectStoreExt, PutPayload};
use ports::{ObjectWriter, PortError, StoredObject};
use tokio::task::{JoinError, JoinSet};

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
    /// Parts going up at once; each holds its bytes until it is stored.
    parts_in_flight: usize,
}

impl MultipartUploads {
    /// Checkpoints come no oftener than every `min_checkpoint_bytes` (a store's minimum part);
    /// up to `parts_in_flight` parts (at least one) go up at once.
    pub(super) fn new(
        parts: Arc<dyn MultipartStore>,
        objects: Arc<dyn ObjectStore>,
        part_bytes: usize,
        min_checkpoint_bytes: usize,
        parts_in_flight: usize,
    ) -> Self {
        Self {
            parts,
            objects,
            part_bytes: part_bytes.max(min_checkpoint_bytes),
            min_checkpoint_bytes,
            checkpoint_bytes: min_checkpoint_bytes,
            parts_in_flight: parts_in_flight.max(1),
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
            stored_parts: 0,
            in_flight: JoinSet::new(),
            cuts: VecDeque::new(),
            ready: None,
            buffer: BytesMut::new(),
            bytes: 0,
            last_cut: None,
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
        writer.parts =
            parts.iter().map(|content_id| Some(PartId { content_id: content_id.clone() })).collect();
        writer.stored_parts = parts.len();
        writer.bytes = checkpoint.bytes;
        writer.last_cut = Some(checkpoint.bytes);
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

/// Where the upload was cut: what a checkpoint of it says once its parts are stored.
struct Cut {
    upload_id: MultipartId,
    /// Parts before the cut.
    parts: usize,
    bytes: u64,
    sha256: Sha256State,
}

/// What a part's upload task gives back: its index and the store's answer.
type PartDone = (usize, object_store::Result<PartId>);

/// A multipart upload in progress, hashing as it goes.
pub(super) struct MultipartWriter {
    uploads: MultipartUploads,
    key: ObjectKey,
    path: StorePath,
    /// Created with the first part (or the first cut before any).
    upload: Option<MultipartId>,
    /// Every part put up or going up, in order: `None` until it is stored.
    parts: Vec<Option<PartId>>,
    /// How many parts, from the first, are stored.
    stored_parts: usize,
    /// The parts going up; dropping the writer stops them.
    in_flight: JoinSet<PartDone>,
    /// Cuts waiting for their parts, oldest first.
    cuts: VecDeque<Cut>,
    /// The newest cut whose parts are all stored, not reported yet.
    ready: Option<Cut>,
    buffer: BytesMut,
    /// Written so far, buffered bytes included.
    bytes: u64,
    /// `bytes` at the last cut (a resumed writer: at its checkpoint).
    last_cut: Option<u64>,
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

    /// Marks the writer failed and stops its other parts: none of them can be completed now.
    fn fail(&mut self, err: PortError) -> PortError {
        self.failed = true;
        self.in_flight.abort_all();
        err
    }

    async fn upload_id(&mut self) -> Result<MultipartId, PortError> {
        if let Some(id) = &self.upload {
            return Ok(id.clone());
        }
        match self.uploads.parts.create_multipart(&self.path).await {
            Ok(id) => {
                self.upload = Some(id.clone());
                Ok(id)
            }
            Err(err) => Err(self.fail(translate(err))),
        }
    }

    /// Starts `data` going up as the next part, once fewer than `parts_in_flight` are.
    async fn start_part(&mut self, data: Bytes) -> Result<(), PortError> {
        while self.in_flight.len() >= self.uploads.parts_in_flight {
            self.wait_for_a_part().await?;
        }
        let id = self.upload_id().await?;
        let index = self.parts.len();
        self.parts.push(None);
        let (store, path) = (Arc::clone(&self.uploads.parts), self.path.clone());
        self.in_flight.spawn(async move { (index, store.put_part(&path, &id, index, data.into()).await) });
        Ok(())
    }

    /// Waits until a part going up is stored (or fails).
    async fn wait_for_a_part(&mut self) -> Result<(), PortError> {
        match self.in_flight.join_next().await {
            Some(done) => self.part_done(done),
            None => Ok(()),
        }
    }

    /// Takes in the parts stored meanwhile, without waiting.
    fn collect_parts(&mut self) -> Result<(), PortError> {
        while let Some(done) = self.in_flight.try_join_next() {
            self.part_done(done)?;
        }
        Ok(())
    }

    fn part_done(&mut self, done: Result<PartDone, JoinError>) -> Result<(), PortError> {
        let (index, part) = match done {
            Ok((index, Ok(part))) => (index, part),
            Ok((_, Err(err))) => return Err(self.fail(translate(err))),
            Err(err) => {
                return Err(self.fail(PortError::Other(anyhow::anyhow!("a part upload stopped: {err}"))));
            }
        };
        if let Some(slot) = self.parts.get_mut(index) {
            *slot = Some(part);
        }
        while self.parts.get(self.stored_parts).is_some_and(Option::is_some) {
            self.stored_parts += 1;
        }
        self.promote_cuts();
        Ok(())
    }

    /// Cuts whose parts are all stored become the one to report (the newest of them).
    fn promote_cuts(&mut self) {
        while self.cuts.front().is_some_and(|cut| cut.parts <= self.stored_parts) {
            self.ready = self.cuts.pop_front();
        }
    }

    /// Cuts the upload after every byte written, when it can be cut here: what is buffered goes
    /// up as a part of its own.
    async fn cut_here(&mut self) -> Result<(), PortError> {
        if self.last_cut == Some(self.bytes) {
            return Ok(());
        }
        let min = self.uploads.checkpoint_bytes;
        let since = self.bytes - self.last_cut.unwrap_or(0);
        // A buffer shorter than the minimum cannot go up: on S3 only the last part may be small.
        if self.buffer.len() < min && !(self.buffer.is_empty() && since >= min as u64) {
            return Ok(());
        }
        if !self.buffer.is_empty() {
            let part = self.buffer.split().freeze();
            self.start_part(part).await?;
        }
        // Before any part (in-memory, at no bytes), the checkpoint still needs an upload to name.
        let upload_id = self.upload_id().await?;
        self.last_cut = Some(self.bytes);
        self.cuts.push_back(Cut {
            upload_id,
            parts: self.parts.len(),
            bytes: self.bytes,
            sha256: self.hasher.state(),
        });
        self.promote_cuts();
        Ok(())
    }

    /// The checkpoint of the newest cut whose parts are all stored, once per cut.
    fn take_ready(&mut self) -> Option<UploadCheckpoint> {
        let cut = self.ready.take()?;
        // Every part before a ready cut is stored (`stored_parts` counts them).
        let parts = self.parts[..cut.parts].iter().flatten().map(|p| p.content_id.clone()).collect();
        Some(UploadCheckpoint {
            key: self.key.clone(),
            bytes: cut.bytes,
            sha256: cut.sha256,
            location: UploadLocation::Multipart { upload_id: cut.upload_id, parts },
        })
    }

    /// Waits for every part going up; the parts, in order, once all are stored.
    async fn all_parts(&mut self) -> Result<Vec<PartId>, PortError> {
        while !self.in_flight.is_empty() {
            self.wait_for_a_part().await?;
        }
        let parts: Option<Vec<PartId>> = std::mem::take(&mut self.parts).into_iter().collect();
        parts.ok_or_else(|| PortError::Other(anyhow::anyhow!("a part of the upload was never stored")))
    }
}

#[async_trait]
impl ObjectWriter for MultipartWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
        self.usable()?;
        self.collect_parts()?;
        self.hasher.update(&chunk);
        self.bytes += chunk.len() as u64;
        self.buffer.extend_from_slice(&chunk);
        // Parts of exactly the part size: see the module docs on why a resumed writer relies on it.
        while self.buffer.len() >= self.uploads.part_bytes {
            let part = self.buffer.split_to(self.uploads.part_bytes).freeze();
            self.start_part(part).await?;
        }
        Ok(())
    }

    async fn cut(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        self.usable()?;
        self.collect_parts()?;
        self.cut_here().await?;
        Ok(self.take_ready())
    }

    async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        self.usable()?;
        self.cut_here().await?;
        while !self.cuts.is_empty() && !self.in_flight.is_empty() {
            self.wait_for_a_part().await?;
        }
        Ok(self.take_ready())
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
                    self.start_part(part).await?;
                }
                let parts = self.all_parts().await?;
                // On failure the upload stays as it is, resumable from the last checkpoint.
                self.uploads.parts.complete_multipart(&self.path, &id, parts).await.map_err(translate)?;
            }
        }
        let this = *self;
        Ok(StoredObject { bytes: this.bytes, sha256: this.hasher.finalize_hex() })
    }

    async fn abort(mut self: Box<Self>) -> Result<(), PortError> {
        // Parts still going up must not land after the upload is gone.
        self.in_flight.abort_all();
        while self.in_flight.join_next().await.is_some() {}
        match &self.upload {
            Some(id) => abort(self.uploads.parts.as_ref(), &self.path, id).await,
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::sync::Mutex;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::time::Duration;

    use object_store::PutResult;
    use object_store::memory::InMemory;
    use sha2::{Digest, Sha256};

    use super::*;

    /// In-memory parts that take a while to go up (even parts twice as long, so they finish out
    /// of order), counting how many go up at once; the part `fail` is refused once.
    #[derive(Debug)]
    struct SlowParts {
        inner: Arc<InMemory>,
        fail: Option<usize>,
        failed: AtomicBool,
        now: AtomicUsize,
        most: AtomicUsize,
        /// Indices of the parts stored.
        stored: Mutex<Vec<usize>>,
    }

    impl SlowParts {
        fn new(inner: &Arc<InMemory>, fail: Option<usize>) -> Arc<Self> {
            Arc::new(Self {
                inner: Arc::clone(inner),
                fail,
                failed: AtomicBool::new(false),
                now: AtomicUsize::new(0),
                most: AtomicUsize::new(0),
                stored: Mutex::new(Vec::new()),
            })
        }

        fn stored(&self) -> Vec<usize> {
            self.stored.lock().unwrap().clone()
        }
    }

    #[async_trait]
    impl MultipartStore for SlowParts {
        async fn create_multipart(&self, path: &StorePath) -> object_store::Result<MultipartId> {
            self.inner.create_multipart(path).await
        }

        async fn put_part(
            &self,
            path: &StorePath,
            id: &MultipartId,
            part_idx: usize,
            data: PutPayload,
        ) -> object_store::Result<PartId> {
            let now = self.now.fetch_add(1, Ordering::SeqCst) + 1;
            self.most.fetch_max(now, Ordering::SeqCst);
            let millis = if part_idx.is_multiple_of(2) { 60 } else { 30 };
            tokio::time::sleep(Duration::from_millis(millis)).await;
            self.now.fetch_sub(1, Ordering::SeqCst);
            if self.fail == Some(part_idx) && !self.failed.swap(true, Ordering::SeqCst) {
                return Err(object_store::Error::Generic {
                    store: "SlowParts",
                    source: "part refused".into(),
                });
            }
            self.inner.put_part(path, id, part_idx, data).await?;
            self.stored.lock().unwrap().push(part_idx);
            Ok(PartId { content_id: format!("part-{part_idx}") })
        }

        async fn complete_multipart(
            &self,
            path: &StorePath,
            id: &MultipartId,
            parts: Vec<PartId>,
        ) -> object_store::Result<PutResult> {
            self.inner.complete_multipart(path, id, parts).await
        }

        async fn abort_multipart(&self, path: &StorePath, id: &MultipartId) -> object_store::Result<()> {
            self.inner.abort_multipart(path, id).await
        }
    }

    const KIB: usize = 1024;
    const IN_FLIGHT: usize = 3;

    fn uploads(parts: &Arc<SlowParts>, inner: &Arc<InMemory>) -> MultipartUploads {
        // Parts of 64 KiB, a cut wherever asked.
        MultipartUploads::new(Arc::clone(parts) as _, Arc::clone(inner) as _, 64 * KIB, 0, IN_FLIGHT)
    }

    fn data() -> Vec<u8> {
        (0..2_000_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect()
    }

    fn key() -> ObjectKey {
        ObjectKey::from_stored("acme/prod/exports/slow.csv".to_owned())
    }

    /// A reported checkpoint names exactly the parts before its cut, each one already stored.
    fn assert_only_stored_parts(checkpoint: &UploadCheckpoint, stored: &[usize]) {
        let UploadLocation::Multipart { parts, .. } = &checkpoint.location else { panic!("{checkpoint:?}") };
        for (index, part) in parts.iter().enumerate() {
            assert_eq!(part, &format!("part-{index}"), "in order");
            assert!(stored.contains(&index), "part {index} is named before it is stored");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_go_up_a_few_at_once_and_a_cut_is_reported_once_its_parts_are_stored() {
        let inner = Arc::new(InMemory::new());
        let parts = SlowParts::new(&inner, None);
        let mut writer = uploads(&parts, &inner).writer(&key(), StorePath::from("slow.csv"));
        let data = data();
        let (mut asked, mut late) = (Vec::new(), 0);
        let mut pos = 0;
        for chunk in data.chunks(100 * KIB) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
            pos += chunk.len() as u64;
            asked.push(pos);
            if let Some(checkpoint) = writer.cut().await.unwrap() {
                assert!(asked.contains(&checkpoint.bytes), "a cut where one was asked for");
                assert_only_stored_parts(&checkpoint, &parts.stored());
                late += usize::from(checkpoint.bytes < pos);
            }
        }
        let most = parts.most.load(Ordering::SeqCst);
        assert!((2..=IN_FLIGHT).contains(&most), "{most} parts went up at once");
        assert!(late > 0, "the writer went on while parts went up");
        let last = writer.checkpoint().await.unwrap().expect("the last cut, once stored");
        assert_eq!(last.bytes, pos, "checkpoint waits for every cut");
        assert_only_stored_parts(&last, &parts.stored());

        let stored = Box::new(writer).finish().await.unwrap();
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
        let body = inner.get(&StorePath::from("slow.csv")).await.unwrap().bytes().await.unwrap();
        assert!(body == data, "the stored bytes differ");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_part_that_fails_fails_the_writer_and_no_checkpoint_names_it() {
        let inner = Arc::new(InMemory::new());
        let parts = SlowParts::new(&inner, Some(5));
        let uploads = uploads(&parts, &inner);
        let mut writer = uploads.writer(&key(), StorePath::from("slow.csv"));
        let data = data();
        let mut last = None;
        let mut pos = 0;
        for chunk in data.chunks(100 * KIB) {
            if writer.write(Bytes::copy_from_slice(chunk)).await.is_err() {
                break;
            }
            pos += chunk.len();
            match writer.cut().await {
                Ok(checkpoint) => last = checkpoint.or(last),
                Err(_) => break,
            }
        }
        assert!(pos < data.len(), "the failed part stopped the writer before the end");
        assert!(writer.checkpoint().await.is_err(), "the writer stays failed");
        assert!(writer.write(Bytes::from_static(b"more")).await.is_err());
        drop(writer);
        let last = last.expect("checkpoints before the failed part");
        let UploadLocation::Multipart { parts: named, .. } = &last.location else { panic!("{last:?}") };
        assert!(named.len() <= 5, "{} parts named: the fifth part never went up", named.len());
        assert_only_stored_parts(&last, &parts.stored());

        // The upload goes on from that checkpoint, to the bytes of an upload that never failed.
        let mut writer =
            uploads.resume(&last, StorePath::from("slow.csv")).await.unwrap().expect("resumable");
        let from = usize::try_from(last.bytes).unwrap();
        for chunk in data[from..].chunks(100 * KIB) {
            writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
            writer.cut().await.unwrap();
        }
        let stored = Box::new(writer).finish().await.unwrap();
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
        let body = inner.get(&StorePath::from("slow.csv")).await.unwrap().bytes().await.unwrap();
        assert!(body == data, "the stored bytes differ");
    }
}
