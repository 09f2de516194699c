//! The file's segments on their way to storage: compressed on every core (one gzip member
//! each, as pigz does) and written strictly in order, with a cut asked for after each segment.
//! The storage makes cuts durable in the background (S3 parts go up while encoding goes on) and
//! reports each once its bytes are stored, by byte offset: the pipeline remembers where each
//! segment ended, so a reported cut becomes the checkpoint of the segment that ended there.

use std::collections::VecDeque;

use bytes::Bytes;
use domain::encode::gzip_member;
use domain::{CHECKPOINT_VERSION, Checkpoint, Compression, EncoderState, UserId};
use ports::{ObjectWriter, PortError};
use tokio::task::JoinHandle;
use tracing::warn;

/// Segment ends remembered while their cuts are on their way. A storage reports cuts a few
/// parts behind, a few dozen segments at most; this only bounds a storage that never reports.
const MAX_UNREPORTED_CUTS: usize = 4096;

/// Where a segment ends: what a checkpoint taken right after it must record.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Boundary {
    pub after: UserId,
    pub encoder: EncoderState,
}

/// Why writing segments stopped.
#[derive(Debug)]
pub(crate) enum SegmentError {
    Compress(std::io::Error),
    Storage(PortError),
}

enum Pending {
    Plain(Vec<u8>),
    Compressing(JoinHandle<std::io::Result<Vec<u8>>>),
}

/// Segments in flight, oldest first. At most `max_in_flight` are held (compressing or waiting
/// to be written), so memory stays at about `max_in_flight` segments whatever the export's size.
pub(crate) struct SegmentPipeline {
    compression: Compression,
    segment_bytes: u64,
    checkpoints: bool,
    max_in_flight: usize,
    queue: VecDeque<(Pending, Option<Boundary>)>,
    /// Bytes of the upload so far (a resumed upload starts at its checkpoint's).
    written: u64,
    /// Where segments ended whose cuts the storage has not reported, oldest first.
    unreported: VecDeque<(u64, Boundary)>,
}

impl SegmentPipeline {
    /// A pipeline writing on after the first `written` bytes of the upload.
    pub fn new(
        compression: Compression,
        segment_bytes: u64,
        checkpoints: bool,
        max_in_flight: usize,
        written: u64,
    ) -> Self {
        // Plain segments have nothing to wait for: they are written at once.
        let max_in_flight = if compression == Compression::None { 0 } else { max_in_flight.max(1) };
        Self {
            compression,
            segment_bytes,
            checkpoints,
            max_in_flight,
            queue: VecDeque::new(),
            written,
            unreported: VecDeque::new(),
        }
    }

    /// Queues one segment (`boundary` is `None` for the file's last one, after which no
    /// checkpoint is needed). When the queue is full, first writes the oldest segment; returns
    /// the checkpoint that write made, if any.
    pub async fn push(
        &mut self,
        plain: Vec<u8>,
        boundary: Option<Boundary>,
        writer: &mut dyn ObjectWriter,
    ) -> Result<Option<Checkpoint>, SegmentError> {
        let pending = match self.compression {
            Compression::None => Pending::Plain(plain),
            Compression::Gzip => {
                Pending::Compressing(tokio::task::spawn_blocking(move || gzip_member(&plain)))
            }
        };
        self.queue.push_back((pending, boundary));
        let mut latest = None;
        while self.queue.len() > self.max_in_flight {
            latest = self.write_oldest(writer).await?.or(latest);
        }
        Ok(latest)
    }

    /// Writes every queued segment; returns the newest checkpoint made on the way.
    pub async fn flush(&mut self, writer: &mut dyn ObjectWriter) -> Result<Option<Checkpoint>, SegmentError> {
        let mut latest = None;
        while !self.queue.is_empty() {
            latest = self.write_oldest(writer).await?.or(latest);
        }
        Ok(latest)
    }

    async fn write_oldest(
        &mut self,
        writer: &mut dyn ObjectWriter,
    ) -> Result<Option<Checkpoint>, SegmentError> {
        let Some((pending, boundary)) = self.queue.pop_front() else { return Ok(None) };
        let bytes = match pending {
            Pending::Plain(bytes) => bytes,
            Pending::Compressing(task) => task
                .await
                .map_err(|e| SegmentError::Compress(std::io::Error::other(e)))?
                .map_err(SegmentError::Compress)?,
        };
        self.written += bytes.len() as u64;
        if !bytes.is_empty() {
            writer.write(Bytes::from(bytes)).await.map_err(SegmentError::Storage)?;
        }
        let Some(boundary) = boundary.filter(|_| self.checkpoints) else { return Ok(None) };
        if self.unreported.len() == MAX_UNREPORTED_CUTS {
            self.unreported.pop_front();
        }
        self.unreported.push_back((self.written, boundary));
        let Some(upload) = writer.cut().await.map_err(SegmentError::Storage)? else { return Ok(None) };
        Ok(self.checkpoint_at(upload))
    }

    /// Waits for the cuts already on their way (S3 parts going up) and returns the checkpoint
    /// of the newest, if it is newer than any returned before. Segments still compressing are
    /// dropped: an attempt that stops on a failed source keeps every segment it already wrote,
    /// so its retry re-reads only the rows that never reached the storage.
    pub async fn settle(
        &mut self,
        writer: &mut dyn ObjectWriter,
    ) -> Result<Option<Checkpoint>, SegmentError> {
        if !self.checkpoints || self.unreported.is_empty() {
            return Ok(None);
        }
        let Some(upload) = writer.checkpoint().await.map_err(SegmentError::Storage)? else { return Ok(None) };
        Ok(self.checkpoint_at(upload))
    }

    /// The checkpoint of the segment that ended where the storage reported `upload`'s cut.
    fn checkpoint_at(&mut self, upload: domain::UploadCheckpoint) -> Option<Checkpoint> {
        // Older ends will never be reported: the storage reports only its newest durable cut.
        while self.unreported.front().is_some_and(|(end, _)| *end < upload.bytes) {
            self.unreported.pop_front();
        }
        let Some((_, boundary)) = self.unreported.pop_front().filter(|(end, _)| *end == upload.bytes) else {
            warn!(bytes = upload.bytes, "the storage reported a cut where no segment ended; not kept");
            return None;
        };
        Some(Checkpoint {
            version: CHECKPOINT_VERSION,
            after: boundary.after,
            rows: boundary.encoder.rows_written,
            segment_bytes: self.segment_bytes,
            encoder: boundary.encoder,
            upload,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use async_trait::async_trait;
    use domain::{ExportId, ObjectKey, ResumableSha256, Scope, UploadCheckpoint, UploadLocation};
    use ports::StoredObject;

    use super::*;

    /// A storage whose cuts are all still on their way: `cut` reports nothing, `checkpoint`
    /// waits for them and reports the newest (as the multipart writer does with parts).
    #[derive(Default)]
    struct PartsInFlight {
        written: u64,
    }

    #[async_trait]
    impl ObjectWriter for PartsInFlight {
        async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
            self.written += chunk.len() as u64;
            Ok(())
        }
        async fn finish(self: Box<Self>) -> Result<StoredObject, PortError> {
            unreachable!("the test never finishes the upload")
        }
        async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
            let scope = Scope::parse("acme/prod").unwrap();
            let key = ObjectKey::for_attempt(&scope, ExportId::from_uuid(uuid::Uuid::nil()), 1, "csv");
            let location = UploadLocation::Multipart { upload_id: "u".into(), parts: vec![] };
            Ok(Some(UploadCheckpoint {
                key,
                bytes: self.written,
                sha256: ResumableSha256::new().state(),
                location,
            }))
        }
        async fn cut(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
            Ok(None)
        }
        async fn abort(self: Box<Self>) -> Result<(), PortError> {
            Ok(())
        }
    }

    fn boundary(rows: u64) -> Boundary {
        Boundary {
            after: UserId::from_uuid(uuid::Uuid::from_u128(u128::from(rows))),
            encoder: EncoderState { preamble_written: true, rows_written: rows },
        }
    }

    #[tokio::test]
    async fn settling_keeps_the_newest_segment_written_and_drops_those_still_queued() {
        let mut writer = PartsInFlight::default();
        // Two compress at once: the third push writes the first, the fourth the second.
        let mut segments = SegmentPipeline::new(Compression::Gzip, 100, true, 2, 0);
        for rows in [10, 20, 30, 40] {
            let made = segments.push(vec![b'x'; 100], Some(boundary(rows)), &mut writer).await.unwrap();
            assert!(made.is_none(), "no cut is reported while the parts are on their way");
        }
        let settled = segments.settle(&mut writer).await.unwrap().expect("a checkpoint");
        // Rows 30 and 40 were still compressing: the retry reads them again.
        assert_eq!(settled.rows, 20);
        assert_eq!(settled.after, boundary(20).after);
        assert_eq!(settled.upload.bytes, writer.written);
        // Nothing newer is left to settle.
        assert!(segments.settle(&mut writer).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn without_checkpoints_nothing_is_settled() {
        let mut writer = PartsInFlight::default();
        let mut segments = SegmentPipeline::new(Compression::None, 100, false, 2, 0);
        segments.push(vec![b'x'; 100], Some(boundary(10)), &mut writer).await.unwrap();
        assert!(segments.settle(&mut writer).await.unwrap().is_none());
    }
}
