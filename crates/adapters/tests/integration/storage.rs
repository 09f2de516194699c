//! Export storage over object_store: local filesystem and in-memory.

use std::path::Path;

use adapters::storage::ObjectStorage;
use bytes::Bytes;
use domain::{ExportId, ObjectKey, Scope};
use futures::TryStreamExt;
use ports::ExportStorage;
use sha2::{Digest, Sha256};

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
async fn a_dropped_writer_leaves_no_object() {
    let dir = tempfile::tempdir().unwrap();
    let storage = ObjectStorage::local(dir.path()).unwrap();
    let key = key("csv");
    let mut writer = storage.writer(&key).await.unwrap();
    for chunk in big_payload().into_iter().take(40) {
        writer.write(chunk).await.unwrap();
    }
    drop(writer);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await; // cleanup runs on a blocking thread
    assert!(storage.open(&key).await.unwrap().is_none());
    assert_eq!(files(dir.path()), Vec::<String>::new());
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
