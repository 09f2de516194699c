//! S3 storage against a real S3-compatible server (moto, patched by scripts/moto_server.py to
//! answer unknown uploads as S3 does), started by scripts/test-all.sh.

use std::time::Duration;

use adapters::contract::s3;
use adapters::storage::ObjectStorage;
use bytes::Bytes;
use domain::{ExportId, ObjectKey, Scope, UploadLocation};
use ports::ExportStorage;
use sha2::{Digest, Sha256};

use crate::uploads::{
    MIB, assert_resumed_upload_is_identical, through_json, upload_with_background_cuts,
    upload_with_interruptions, varied_bytes, write_and_checkpoint,
};

fn key(scope: &str) -> ObjectKey {
    ObjectKey::for_export(&Scope::parse(scope).unwrap(), ExportId::from_uuid(uuid::Uuid::now_v7()), "csv")
}

#[tokio::test]
async fn a_large_export_goes_up_in_parts_and_its_presigned_url_returns_the_exact_bytes() {
    let settings = s3::fresh_bucket().await;
    let storage = ObjectStorage::s3(&settings).unwrap();
    let key = key("acme/prod");
    let mut writer = storage.writer(&key).await.unwrap();
    let mut hasher = Sha256::new();
    // 26 MiB in 256 KiB chunks: four 8 MiB parts plus a tail.
    for i in 0..104u32 {
        let chunk = Bytes::from(format!("{i:08}").repeat(32 * 1024));
        hasher.update(&chunk);
        writer.write(chunk).await.unwrap();
    }
    assert!(s3::keys(&settings).await.is_empty(), "nothing visible before finish");
    let stored = writer.finish().await.unwrap();
    assert_eq!(stored.bytes, 26 * 1024 * 1024);
    assert_eq!(stored.sha256, hex::encode(hasher.finalize()));
    assert_eq!(s3::keys(&settings).await, vec![key.as_str().to_owned()]);

    let url = storage.signed_url(&key, Duration::from_secs(900)).await.unwrap().expect("S3 signs URLs");
    assert!(url.query().unwrap_or_default().contains("X-Amz-Signature"), "{url}");
    let body =
        adapters::contract::http_get(url).await.unwrap().error_for_status().unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(Sha256::digest(&body)), stored.sha256);
    assert_eq!(s3::open_multipart_uploads(&settings).await, 0);
}

#[tokio::test]
async fn an_aborted_multipart_upload_leaves_no_object_and_no_parts() {
    let settings = s3::fresh_bucket().await;
    let storage = ObjectStorage::s3(&settings).unwrap();
    let key = key("acme/prod");
    let mut writer = storage.writer(&key).await.unwrap();
    for _ in 0..5 {
        writer.write(Bytes::from(vec![b'x'; 4 * 1024 * 1024])).await.unwrap();
    }
    assert!(s3::open_multipart_uploads(&settings).await >= 1, "the upload went multipart");
    writer.abort().await.unwrap();
    assert!(s3::keys(&settings).await.is_empty());
    assert_eq!(s3::open_multipart_uploads(&settings).await, 0);
    assert!(storage.open(&key).await.unwrap().is_none());
}

/// The server in tests (moto) does not enforce expiry unless IAM auth is switched on, so this
/// checks what we control: every URL is signed afresh, now, for exactly the requested lifetime.
#[tokio::test]
async fn presigned_urls_carry_the_requested_expiry_and_are_signed_afresh() {
    let settings = s3::fresh_bucket().await;
    let storage = ObjectStorage::s3(&settings).unwrap();
    let key = key("acme/prod");
    let mut writer = storage.writer(&key).await.unwrap();
    writer.write(Bytes::from_static(b"id,email\n")).await.unwrap();
    writer.finish().await.unwrap();
    let param =
        |url: &url::Url, name: &str| url.query_pairs().find(|(k, _)| k == name).map(|(_, v)| v.into_owned());
    let short = storage.signed_url(&key, Duration::from_secs(60)).await.unwrap().unwrap();
    assert_eq!(param(&short, "X-Amz-Expires").as_deref(), Some("60"));
    let signed_at =
        chrono::NaiveDateTime::parse_from_str(&param(&short, "X-Amz-Date").unwrap(), "%Y%m%dT%H%M%SZ")
            .unwrap();
    assert!((chrono::Utc::now().naive_utc() - signed_at).num_seconds().abs() < 5, "signed now");
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    let later = storage.signed_url(&key, Duration::from_secs(900)).await.unwrap().unwrap();
    assert_eq!(param(&later, "X-Amz-Expires").as_deref(), Some("900"));
    assert_ne!(param(&short, "X-Amz-Signature"), param(&later, "X-Amz-Signature"));
    assert_eq!(
        adapters::contract::http_get(later).await.unwrap().bytes().await.unwrap().as_ref(),
        b"id,email\n"
    );
}

#[tokio::test]
async fn keys_live_under_the_configured_prefix_and_objects_can_be_streamed_and_deleted() {
    let mut settings = s3::fresh_bucket().await;
    settings.key_prefix = Some("exports/v1".into());
    let storage = ObjectStorage::s3(&settings).unwrap();
    let key = key("globex/prod");
    let mut writer = storage.writer(&key).await.unwrap();
    writer.write(Bytes::from_static(b"hello")).await.unwrap();
    writer.finish().await.unwrap();
    assert_eq!(s3::keys(&settings).await, vec![format!("exports/v1/{key}")]);
    let reader = storage.open(&key).await.unwrap().unwrap();
    assert_eq!(reader.size, 5);
    storage.ping().await.unwrap();
    storage.delete(&key).await.unwrap();
    assert!(s3::keys(&settings).await.is_empty());
}

#[tokio::test]
async fn an_unreachable_s3_endpoint_is_retryable() {
    let settings = adapters::storage::S3Settings {
        bucket: "nowhere".into(),
        endpoint: Some("http://127.0.0.1:1".into()),
        region: Some("us-east-1".into()),
        access_key_id: Some("x".into()),
        secret_access_key: Some("x".into()),
        ..Default::default()
    };
    let storage = ObjectStorage::s3(&settings).unwrap();
    let started = std::time::Instant::now();
    let err = storage.ping().await.unwrap_err();
    assert!(err.is_retryable(), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(30));
}

// Resumable uploads. The server must answer parts of unknown uploads as S3 does (404
// NoSuchUpload): scripts/moto_server.py starts moto patched to.

#[tokio::test]
async fn an_s3_upload_interrupted_once_or_twice_stores_the_bytes_of_an_uninterrupted_one() {
    for interrupt_at in [&[9 * MIB][..], &[8 * MIB, 16 * MIB]] {
        let settings = s3::fresh_bucket().await;
        let storage = ObjectStorage::s3(&settings).unwrap();
        assert_resumed_upload_is_identical(&storage, (key("acme/prod"), key("acme/prod")), interrupt_at)
            .await;
        assert_eq!(s3::open_multipart_uploads(&settings).await, 0, "the resumed upload was completed");
    }
}

#[tokio::test]
async fn a_resumed_s3_upload_keeps_the_configured_server_side_encryption() {
    let mut settings = s3::fresh_bucket().await;
    settings.server_side_encryption = Some("AES256".into());
    let storage = ObjectStorage::s3(&settings).unwrap();
    let key = key("acme/prod");
    let data = varied_bytes(12 * MIB, 5);
    let interrupted = upload_with_interruptions(&storage, &key, &data, &[7 * MIB]).await;
    assert_eq!(interrupted.resumed_from.len(), 1);
    let url = format!("{}/{}/{key}", s3::endpoint(), settings.bucket);
    let head = adapters::contract::http_client().head(url).send().await.unwrap().error_for_status().unwrap();
    let sse = head.headers().get("x-amz-server-side-encryption").and_then(|v| v.to_str().ok());
    assert_eq!(sse, Some("AES256"));
}

#[tokio::test]
async fn an_aborted_discarded_or_finished_s3_upload_cannot_be_resumed() {
    let settings = s3::fresh_bucket().await;
    s3::assert_answers_no_such_upload(&settings).await;
    let storage = ObjectStorage::s3(&settings).unwrap();
    let key = key("acme/prod");

    let mut writer = storage.writer(&key).await.unwrap();
    let checkpoint = write_and_checkpoint(writer.as_mut(), 6 * MIB).await;
    writer.abort().await.unwrap();
    assert!(storage.resume(&through_json(&checkpoint)).await.unwrap().is_none(), "aborted");

    let mut writer = storage.writer(&key).await.unwrap();
    let checkpoint = write_and_checkpoint(writer.as_mut(), 6 * MIB).await;
    drop(writer);
    assert_eq!(s3::open_multipart_uploads(&settings).await, 1, "a dropped writer leaves its upload");
    storage.discard(&checkpoint).await.unwrap();
    assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "discarded");
    storage.discard(&checkpoint).await.unwrap(); // already gone is fine

    let mut writer = storage.writer(&key).await.unwrap();
    let checkpoint = write_and_checkpoint(writer.as_mut(), 6 * MIB).await;
    assert!(s3::keys(&settings).await.is_empty(), "nothing visible before finish");
    writer.finish().await.unwrap();
    assert!(storage.resume(&checkpoint).await.unwrap().is_none(), "finished");
    assert_eq!(s3::keys(&settings).await, vec![key.as_str().to_owned()]);
    assert_eq!(s3::open_multipart_uploads(&settings).await, 0);
}

#[tokio::test]
async fn s3_checkpoints_wait_for_5_mib_so_every_part_but_the_last_is_large_enough() {
    let settings = s3::fresh_bucket().await;
    // Clamped to S3's minimum part size.
    let storage = ObjectStorage::s3(&settings).unwrap().with_checkpoint_bytes(1);
    let key = key("acme/prod");
    let data = varied_bytes(14 * MIB + 3, 9);
    let mut writer = storage.writer(&key).await.unwrap();
    writer.write(Bytes::copy_from_slice(&data[..4 * MIB])).await.unwrap();
    assert_eq!(writer.checkpoint().await.unwrap(), None, "4 MiB is under the minimum");
    // 9 MiB: an 8 MiB part went up; the 1 MiB left cannot become a part of its own yet.
    writer.write(Bytes::copy_from_slice(&data[4 * MIB..9 * MIB])).await.unwrap();
    assert_eq!(writer.checkpoint().await.unwrap(), None, "1 MiB buffered is under the minimum");
    writer.write(Bytes::copy_from_slice(&data[9 * MIB..14 * MIB])).await.unwrap();
    let checkpoint = writer.checkpoint().await.unwrap().expect("5 MiB buffered");
    assert_eq!(checkpoint.bytes, 14 * MIB as u64);
    let UploadLocation::Multipart { parts, .. } = &checkpoint.location else { panic!("{checkpoint:?}") };
    assert_eq!(parts.len(), 2);
    writer.write(Bytes::copy_from_slice(&data[14 * MIB..])).await.unwrap();
    assert!(s3::keys(&settings).await.is_empty(), "nothing visible before finish");
    // The server refuses to complete an upload with a small part before the last.
    let stored = writer.finish().await.unwrap();
    assert_eq!(stored.sha256, hex::encode(Sha256::digest(&data)));
    assert_eq!(storage.open(&key).await.unwrap().unwrap().size, data.len() as u64);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_parts_go_up_in_the_background_and_a_resumed_upload_stores_the_same_bytes() {
    let settings = s3::fresh_bucket().await;
    let storage = ObjectStorage::s3(&settings).unwrap();
    let data = varied_bytes(40 * MIB + 17, 13);
    let late = upload_with_background_cuts(&storage, &key("acme/prod"), &data).await;
    assert!(late > 0, "no cut was reported after a later write: parts did not go up in the background");
    assert_eq!(s3::open_multipart_uploads(&settings).await, 0);
}

#[tokio::test]
async fn empty_and_small_s3_files_go_up_in_one_put_once_finished() {
    let settings = s3::fresh_bucket().await;
    let storage = ObjectStorage::s3(&settings).unwrap();
    for body in [&b""[..], b"id,email\n1,a@example.com\n"] {
        let key = key("acme/prod");
        let mut writer = storage.writer(&key).await.unwrap();
        if !body.is_empty() {
            writer.write(Bytes::copy_from_slice(body)).await.unwrap();
        }
        assert_eq!(writer.checkpoint().await.unwrap(), None);
        assert!(storage.open(&key).await.unwrap().is_none(), "nothing visible before finish");
        assert_eq!(s3::open_multipart_uploads(&settings).await, 0, "no multipart upload");
        let stored = writer.finish().await.unwrap();
        assert_eq!(stored.bytes, body.len() as u64);
        assert_eq!(stored.sha256, hex::encode(Sha256::digest(body)));
        assert_eq!(adapters::contract::fakes::read_object(&storage, &key).await.unwrap(), body);
    }
}
