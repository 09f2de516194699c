//! Drives resumable uploads for the storage tests (local, in-memory, S3): varied bytes, uploads
//! interrupted and resumed from their checkpoints, and the one-shot upload to compare them with.

use adapters::contract::fakes::read_object;
use bytes::Bytes;
use domain::{ObjectKey, UploadCheckpoint};
use ports::{ExportStorage, ObjectWriter, StoredObject};
use sha2::{Digest, Sha256};

pub const MIB: usize = 1024 * 1024;

/// `len` bytes that never repeat a pattern (xorshift), so a part misplaced, lost or written
/// twice changes the digest.
pub fn varied_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut state = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The length of the `i`th chunk: small to larger than a part, never a round number, so parts
/// and checkpoints fall anywhere. Any three in a row exceed 1 MiB (the in-memory part size).
fn chunk_len(i: usize) -> usize {
    const CYCLE: [usize; 5] =
        [96 * 1024 + 1, 1300 * 1024 + 7, 700 * 1024 - 3, 2600 * 1024 + 11, 450 * 1024 + 5];
    CYCLE[i % CYCLE.len()]
}

/// What an interrupted upload stored, and the checkpoint offsets it resumed from.
pub struct Interrupted {
    pub stored: StoredObject,
    pub resumed_from: Vec<u64>,
}

/// Uploads `data` to `key` in chunks, asking for a checkpoint after each. Once past each offset in
/// `interrupt_at` it writes three more chunks without checkpoints, drops the writer, and resumes
/// from the last checkpoint (after a trip through JSON, as checkpoints travel), writing on from
/// the checkpoint's offset. Nothing may be visible under `key` before `finish`.
pub async fn upload_with_interruptions(
    storage: &dyn ExportStorage,
    key: &ObjectKey,
    data: &[u8],
    interrupt_at: &[usize],
) -> Interrupted {
    let mut writer = storage.writer(key).await.unwrap();
    let mut interrupts = interrupt_at.iter().copied().peekable();
    let mut last: Option<UploadCheckpoint> = None;
    let mut resumed_from = Vec::new();
    let (mut pos, mut chunk) = (0, 0);
    while pos < data.len() {
        pos = write_chunk(writer.as_mut(), data, pos, chunk).await;
        chunk += 1;
        if interrupts.next_if(|&at| pos >= at).is_some() {
            for _ in 0..3 {
                pos = write_chunk(writer.as_mut(), data, pos, chunk).await;
                chunk += 1;
            }
            drop(writer);
            assert_invisible(storage, key).await;
            let checkpoint = last.clone().expect("a checkpoint before the interruption");
            assert!(pos as u64 > checkpoint.bytes, "bytes were written past the checkpoint");
            let checkpoint = through_json(&checkpoint);
            writer = storage.resume(&checkpoint).await.unwrap().expect("the upload is still there");
            assert_invisible(storage, key).await;
            pos = usize::try_from(checkpoint.bytes).unwrap();
            resumed_from.push(checkpoint.bytes);
            continue;
        }
        if let Some(checkpoint) = writer.checkpoint().await.unwrap() {
            assert_eq!(checkpoint.bytes, pos as u64, "a checkpoint covers every byte written");
            assert_eq!(&checkpoint.key, key);
            last = Some(checkpoint);
        }
    }
    assert!(interrupts.next().is_none(), "every interruption happened");
    assert_invisible(storage, key).await;
    let stored = writer.finish().await.unwrap();
    Interrupted { stored, resumed_from }
}

async fn write_chunk(writer: &mut dyn ObjectWriter, data: &[u8], pos: usize, chunk: usize) -> usize {
    let end = (pos + chunk_len(chunk)).min(data.len());
    writer.write(Bytes::copy_from_slice(&data[pos..end])).await.unwrap();
    end
}

/// Uploads `data` to `key` in 1 MiB chunks, no checkpoints, no interruptions.
pub async fn upload_at_once(storage: &dyn ExportStorage, key: &ObjectKey, data: &[u8]) -> StoredObject {
    let mut writer = storage.writer(key).await.unwrap();
    for chunk in data.chunks(MIB) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
    }
    writer.finish().await.unwrap()
}

/// An upload interrupted at `interrupt_at` stores what one uninterrupted upload of the same bytes
/// stores: the same bytes, size and SHA-256 (the SHA-256 of the bytes).
pub async fn assert_resumed_upload_is_identical(
    storage: &dyn ExportStorage,
    keys: (ObjectKey, ObjectKey),
    interrupt_at: &[usize],
) {
    let (resumed_key, whole_key) = keys;
    let data = varied_bytes(20 * MIB + 12_345, interrupt_at.len() as u64 + 7);
    let interrupted = upload_with_interruptions(storage, &resumed_key, &data, interrupt_at).await;
    assert_eq!(interrupted.resumed_from.len(), interrupt_at.len());
    let whole = upload_at_once(storage, &whole_key, &data).await;

    assert_eq!(interrupted.stored, whole);
    assert_eq!(whole.bytes, data.len() as u64);
    assert_eq!(whole.sha256, hex::encode(Sha256::digest(&data)));
    for key in [&resumed_key, &whole_key] {
        assert_eq!(storage.open(key).await.unwrap().expect("stored").size, whole.bytes);
        let body = read_object(storage, key).await.unwrap();
        assert!(body == data, "{key}: the stored bytes differ ({} vs {} bytes)", body.len(), data.len());
    }
}

pub async fn assert_invisible(storage: &dyn ExportStorage, key: &ObjectKey) {
    assert!(storage.open(key).await.unwrap().is_none(), "nothing visible under {key} before finish");
}

pub fn through_json(checkpoint: &UploadCheckpoint) -> UploadCheckpoint {
    let json = serde_json::to_string(checkpoint).unwrap();
    let back: UploadCheckpoint = serde_json::from_str(&json).unwrap();
    assert_eq!(&back, checkpoint, "the checkpoint round-trips through JSON: {json}");
    back
}

/// Writes `len` varied bytes in 512 KiB chunks, asking for a checkpoint after each; the last one.
pub async fn write_and_checkpoint(writer: &mut dyn ObjectWriter, len: usize) -> UploadCheckpoint {
    let data = varied_bytes(len, 3);
    let mut last = None;
    for chunk in data.chunks(512 * 1024) {
        writer.write(Bytes::copy_from_slice(chunk)).await.unwrap();
        last = writer.checkpoint().await.unwrap().or(last);
    }
    last.expect("a checkpoint")
}

/// Uploads `data` to `key` in 512 KiB chunks, asking for a cut ([`ObjectWriter::cut`], which
/// does not wait) after each. Every reported checkpoint is of a cut asked for earlier. Halfway
/// the writer is dropped and the upload resumed from the newest reported checkpoint; the stored
/// object must be `data`, whole. Returns how many checkpoints were reported after a later write.
pub async fn upload_with_background_cuts(storage: &dyn ExportStorage, key: &ObjectKey, data: &[u8]) -> usize {
    let mut writer = storage.writer(key).await.unwrap();
    let (mut asked, mut last, mut late) = (Vec::new(), None::<UploadCheckpoint>, 0);
    let (mut pos, mut interrupted) = (0, false);
    while pos < data.len() {
        let end = (pos + 512 * 1024).min(data.len());
        writer.write(Bytes::copy_from_slice(&data[pos..end])).await.unwrap();
        pos = end;
        asked.push(pos as u64);
        if let Some(checkpoint) = writer.cut().await.unwrap() {
            assert!(asked.contains(&checkpoint.bytes), "{} is not where a cut was asked", checkpoint.bytes);
            assert!(last.as_ref().is_none_or(|l| l.bytes < checkpoint.bytes), "reported in order, once");
            late += usize::from((checkpoint.bytes as usize) < pos);
            last = Some(checkpoint);
        }
        if !interrupted && pos >= data.len() / 2 {
            // Give a cut still on its way (a slow fsync, a part) the time to arrive.
            for _ in 0..500 {
                if last.is_some() {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                last = writer.cut().await.unwrap();
            }
            let checkpoint = last.clone().expect("a checkpoint reported within 10 s");
            assert!(asked.contains(&checkpoint.bytes), "{} is not where a cut was asked", checkpoint.bytes);
            interrupted = true;
            drop(writer);
            assert_invisible(storage, key).await;
            writer =
                storage.resume(&through_json(&checkpoint)).await.unwrap().expect("the upload is still there");
            pos = usize::try_from(checkpoint.bytes).unwrap();
            asked.retain(|&a| a <= checkpoint.bytes);
        }
    }
    let stored = writer.finish().await.unwrap();
    assert_eq!(stored.bytes, data.len() as u64);
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(data)));
    let body = read_object(storage, key).await.unwrap();
    assert!(body == data, "{key}: the stored bytes differ ({} vs {} bytes)", body.len(), data.len());
    late
}
