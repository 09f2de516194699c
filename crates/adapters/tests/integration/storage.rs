//! Export storage over object_store: local filesystem and in-memory, resumable uploads included
//! (the S3 tests are in `s3.rs`).

use std::path::Path;

use adapters::storage::ObjectStorage;
use bytes::Bytes;
use domain::{ExportId, ObjectKey, Scope, UploadLocation};
use futures::TryStreamExt;
use ports::ExportStorage;
use sha2::{Digest, Sha256};

use crate::uploads::{
    MIB, assert_invisible, assert_resumed_upload_is_identical, through_json, upload_with_background_cuts,
    varied_bytes, write_and_checkpoint,
};

fn key(ext: &str) -> ObjectKey {
    ObjectKey::for_export(&Scope::parse("acme/prod").unwrap(), ExportId::from_uuid(uuid::Uuid::now_v7()), ext)
}

/// Every file under `dir`, recursively (to spot staging leftovers).
fn files(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() { stack.push(path) } else { out.push(path.display().to_string()) }
        }
    }
    out
}

async fn read_all(storage: &ObjectStorage, key: &ObjectKey) -> Option<Vec<u8>> {
    let reader = storage.open(key).await.unwrap()?;
    let chunks: Vec<Bytes> = reader.body.try_collect().await.unwrap();
    Some(chunks.concat())
}

/// 20 MiB of varied bytes: many parts, so the upload goes multipart.
fn big_payload() -> Vec<Bytes> {
    (0..80u32).map(|i| Bytes::from(vec![(i % 251) as u8; 256 * 1024])).collect()
}

#[tokio::test]
async fn a_multipart_local_write_is_invisible_until_finished_and_checksummed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(dir.path()).unwrap();
    let key = key("csv");
    let mut writer = storage.writer(&key).await.unwrap();
    let mut hasher = Sha256::new();
    for chunk in big_payload() {
        hasher.update(&chunk);
        writer.write(chunk).await.unwrap();
    }
    assert!(storage.open(&key).await.unwrap().is_none(), "nothing visible before finish");
    let stored = writer.finish().await.unwrap();

    assert_eq!(stored.bytes, 20 * 1024 * 1024);
    assert_eq!(stored.sha256, hex::encode(hasher.finalize()));
    let body = read_all(&storage, &key).await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&body)), stored.sha256);
    assert_eq!(storage.open(&key).await.unwrap().unwrap().size, stored.bytes);
    let listing = files(dir.path());
    assert_eq!(listing.len(), 1, "no staging files left: {listing:?}");
    assert!(listing[0].ends_with(key.as_str()));
}

#[tokio::test]
async fn a_finished_local_write_is_whole_on_disk_in_a_data_directory_storage_created() {
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("fresh").join("data");
    let storage = ObjectStorage::local(&data).unwrap();
    // One buffered put and one multipart upload: the two ways a file reaches its place.
    for payload in [vec![Bytes::from_static(b"id,email\n1,a@example.com\n")], big_payload()] {
        let key = key("csv");
        let mut writer = storage.writer(&key).await.unwrap();
        for chunk in &payload {
            writer.write(chunk.clone()).await.unwrap();
        }
        let stored = writer.finish().await.unwrap();
        let on_disk = std::fs::read(data.join(key.as_str())).unwrap();
        assert_eq!(on_disk.len() as u64, stored.bytes);
        assert_eq!(hex::encode(Sha256::digest(&on_disk)), stored.sha256);
        assert_eq!(on_disk, payload.concat());
    }
    assert_eq!(files(&data).len(), 2, "no staging files left");
}

#[tokio::test]
async fn an_aborted_write_leaves_no_object_and_no_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(dir.path()).unwrap();
    for (chunks, size) in [(1usize, 100usize), (3, 4 * 1024 * 1024)] {
        // 100 bytes stay in the buffer; 3 x 4 MiB has started a multipart upload.
        let key = key("json");
        let mut writer = storage.writer(&key).await.unwrap();
        for _ in 0..chunks {
            writer.write(Bytes::from(vec![b'x'; size])).await.unwrap();
        }
        writer.abort().await.unwrap();
        assert!(storage.open(&key).await.unwrap().is_none());
    }
    assert_eq!(files(dir.path()), Vec::<String>::new());
}

#[tokio::test]
async fn a_dropped_writer_leaves_no_object_only_its_unlisted_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(dir.path()).unwrap();
    let key = key("csv");
    let mut writer = storage.writer(&key).await.unwrap();
    for chunk in big_payload().into_iter().take(40) {
        writer.write(chunk).await.unwrap();
    }
    drop(writer);
    assert!(storage.open(&key).await.unwrap().is_none());
    // Kept for a resume (no cleanup on drop), under a name object_store never lists.
    let listing = files(dir.path());
    assert_eq!(listing.len(), 1, "{listing:?}");
    let (object, id) = listing[0].rsplit_once('#').unwrap();
    assert!(object.ends_with(key.as_str()) && id.bytes().all(|b| b.is_ascii_digit()), "{listing:?}");
    let store = object_store::local::LocalFileSystem::new_with_prefix(dir.path()).unwrap();
    let listed: Vec<_> = object_store::ObjectStore::list(&store, None).try_collect().await.unwrap();
    assert!(listed.is_empty(), "{listed:?}");
}

#[tokio::test]
async fn in_memory_storage_round_trips_and_deletes() {
    let storage = ObjectStorage::in_memory();
    let key = key("ndjson.gz");
    let mut writer = storage.writer(&key).await.unwrap();
    writer.write(Bytes::from_static(b"hello ")).await.unwrap();
    writer.write(Bytes::from_static(b"world")).await.unwrap();
    let stored = writer.finish().await.unwrap();
    assert_eq!(stored.bytes, 11);
    assert_eq!(read_all(&storage, &key).await.unwrap(), b"hello world");
    assert_eq!(storage.signed_url(&key, std::time::Duration::from_secs(60)).await.unwrap(), None);
    storage.delete(&key).await.unwrap();
    storage.delete(&key).await.unwrap(); // deleting a missing object is fine
    assert!(storage.open(&key).await.unwrap().is_none());
    storage.ping().await.unwrap();
}

// Resumable uploads: every storage stores an interrupted upload exactly as an uninterrupted one.

fn local(dir: &Path) -> ObjectStorage {
    ObjectStorage::local(dir).unwrap()
}

#[tokio::test]
async fn a_local_upload_interrupted_once_or_twice_stores_the_bytes_of_an_uninterrupted_one() {
    for interrupt_at in [&[9 * MIB][..], &[6 * MIB, 15 * MIB]] {
        let dir = tempfile::tempdir().unwrap();
        let storage = local(dir.path());
        assert_resumed_upload_is_identical(&storage, (key("csv"), key("csv")), interrupt_at).await;
        assert_eq!(files(dir.path()).len(), 2, "only the two objects, no staging file left");
    }
}

#[tokio::test]
async fn an_in_memory_upload_interrupted_once_or_twice_stores_the_bytes_of_an_uninterrupted_one() {
    // Three chunks past a checkpoint exceed a part: the dropped writer left parts the resumed
    // one must replace.
    for interrupt_at in [&[9 * MIB][..], &[6 * MIB, 15 * MIB]] {
        let storage = ObjectStorage::in_memory();
        assert_resumed_upload_is_identical(&storage, (key("csv"), key("csv")), interrupt_at).await;
    }
}

#[tokio::test]
async fn an_aborted_discarded_or_finished_upload_cannot_be_resumed() {
    let dir = tempfile::tempdir().unwrap();
    for storage in [local(dir.path()), ObjectStorage::in_memory()] {
        let kind = storage.kind();
        let key = key("csv");
        let mut writer = storage.writer(&key).await.unwrap();
        let checkpoint = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
        writer.abort().await.unwrap();
        assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "{kind}: aborted");
        assert_invisible(&storage, &key).await;

        let mut writer = storage.writer(&key).await.unwrap();
        let checkpoint = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
        drop(writer);
        storage.discard(&checkpoint).await.unwrap();
        assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "{kind}: discarded");
        storage.discard(&checkpoint).await.unwrap(); // already gone is fine
        assert_invisible(&storage, &key).await;

        let mut writer = storage.writer(&key).await.unwrap();
        let checkpoint = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
        writer.finish().await.unwrap();
        assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "{kind}: finished");
        storage.delete(&key).await.unwrap();
    }
    assert_eq!(files(dir.path()), Vec::<String>::new(), "no staging file left");
}

#[tokio::test]
async fn a_local_upload_whose_staging_file_was_removed_or_cut_short_cannot_be_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local(dir.path());
    let mut writer = storage.writer(&key("csv")).await.unwrap();
    let checkpoint = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
    drop(writer);
    let UploadLocation::Staging { file } = &checkpoint.location else { panic!("{checkpoint:?}") };
    let staging = dir.path().join(file);

    let short = std::fs::OpenOptions::new().write(true).open(&staging).unwrap();
    short.set_len(checkpoint.bytes - 1).unwrap();
    assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "shorter than the checkpoint");
    std::fs::remove_file(&staging).unwrap();
    assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "removed");
}

#[tokio::test]
async fn resuming_a_local_upload_drops_whatever_follows_its_checkpoint_in_the_staging_file() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local(dir.path()).with_checkpoint_bytes(1);
    let key = key("csv");
    let data = varied_bytes(3 * MIB + 77, 11);
    let (head, rest) = data.split_at(2 * MIB + 5);
    let mut writer = storage.writer(&key).await.unwrap();
    writer.write(Bytes::copy_from_slice(head)).await.unwrap();
    let checkpoint = writer.checkpoint().await.unwrap().expect("a checkpoint every byte");
    drop(writer);
    let UploadLocation::Staging { file } = &checkpoint.location else { panic!("{checkpoint:?}") };
    let mut staging = std::fs::OpenOptions::new().append(true).open(dir.path().join(file)).unwrap();
    std::io::Write::write_all(&mut staging, b"garbage a crashed writer left behind").unwrap();

    let mut writer = storage.resume(&checkpoint).await.unwrap().expect("resumable");
    writer.write(Bytes::copy_from_slice(rest)).await.unwrap();
    let stored = writer.finish().await.unwrap();
    assert_eq!(stored.bytes, data.len() as u64);
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
    assert!(read_all(&storage, &key).await.unwrap() == data);
}

#[tokio::test]
async fn a_checkpoint_naming_a_file_outside_the_key_s_staging_files_is_not_resumed_or_removed() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local(dir.path());
    let mut writer = storage.writer(&key("csv")).await.unwrap();
    let checkpoint = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
    drop(writer);
    std::fs::write(dir.path().join("victim#1"), b"keep me").unwrap();
    for file in ["../victim#1", "/etc/passwd", "victim#1", "acme/prod/exports/other.csv#1"] {
        let mut tampered = checkpoint.clone();
        tampered.location = UploadLocation::Staging { file: file.into() };
        assert!(storage.resume(&tampered).await.unwrap().is_none(), "{file}");
        storage.discard(&tampered).await.unwrap();
    }
    assert_eq!(std::fs::read(dir.path().join("victim#1")).unwrap(), b"keep me");
    assert!(storage.resume(&checkpoint).await.unwrap().is_some(), "the real one still resumes");
}

#[tokio::test]
async fn a_checkpoint_of_the_other_kind_of_upload_is_not_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (local, memory) = (local(dir.path()), ObjectStorage::in_memory());
    let mut writer = local.writer(&key("csv")).await.unwrap();
    let staging = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
    let mut writer = memory.writer(&key("csv")).await.unwrap();
    let multipart = write_and_checkpoint(writer.as_mut(), 3 * MIB).await;
    assert!(memory.resume(&staging).await.unwrap().is_none());
    assert!(local.resume(&multipart).await.unwrap().is_none());
    memory.discard(&staging).await.unwrap();
    local.discard(&multipart).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cuts_made_in_the_background_resume_to_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let data = varied_bytes(12 * MIB + 333, 5);
    for storage in [local(dir.path()), local(dir.path()).with_checkpoint_bytes(1), ObjectStorage::in_memory()]
    {
        upload_with_background_cuts(&storage, &key("csv"), &data).await;
    }
}

#[tokio::test]
async fn checkpoints_come_once_the_minimum_was_written_since_the_last() {
    let dir = tempfile::tempdir().unwrap();
    let storage = local(dir.path());
    let mut writer = storage.writer(&key("csv")).await.unwrap();
    writer.write(Bytes::from(varied_bytes(MIB, 1))).await.unwrap();
    assert_eq!(writer.checkpoint().await.unwrap(), None, "local: 1 MiB is under 2 MiB");
    writer.write(Bytes::from(varied_bytes(MIB, 2))).await.unwrap();
    let first = writer.checkpoint().await.unwrap().expect("2 MiB since the start");
    assert_eq!(first.bytes, 2 * MIB as u64);
    assert_eq!(writer.checkpoint().await.unwrap(), None, "nothing since");
    writer.abort().await.unwrap();

    // In memory, every call checkpoints, even before the first byte.
    let storage = ObjectStorage::in_memory();
    let key = key("csv");
    let mut writer = storage.writer(&key).await.unwrap();
    let empty = writer.checkpoint().await.unwrap().expect("in memory: always");
    assert_eq!(empty.bytes, 0);
    writer.write(Bytes::from_static(b"x")).await.unwrap();
    assert_eq!(writer.checkpoint().await.unwrap().expect("in memory: always").bytes, 1);
    drop(writer);
    let writer = storage.resume(&through_json(&empty)).await.unwrap().expect("resumable at 0 bytes");
    let stored = writer.finish().await.unwrap();
    assert_eq!((stored.bytes, stored.sha256.as_str()), (0, EMPTY_SHA256));
    assert_eq!(read_all(&storage, &key).await.unwrap(), b"");
}

const EMPTY_SHA256: &str = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

#[tokio::test]
async fn empty_and_small_files_are_stored_without_a_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    for storage in [local(dir.path()), ObjectStorage::in_memory()] {
        for body in [&b""[..], b"id,email\n1,a@example.com\n"] {
            let key = key("csv");
            let mut writer = storage.writer(&key).await.unwrap();
            if !body.is_empty() {
                writer.write(Bytes::copy_from_slice(body)).await.unwrap();
            }
            assert_invisible(&storage, &key).await;
            let stored = writer.finish().await.unwrap();
            assert_eq!(stored.bytes, body.len() as u64, "{}", storage.kind());
            assert_eq!(stored.sha256, hex::encode(Sha256::digest(body)));
            assert_eq!(read_all(&storage, &key).await.unwrap(), body);
        }
    }
    assert_eq!(files(dir.path()).len(), 2, "two objects, no staging file");
}
