//! A bucket on the real S3-compatible server that tests run against.

use crate::storage::S3Settings;

/// `TEST_S3_ENDPOINT` (the README test command starts `scripts/moto_server.py` and sets it). Tests fail,
/// never skip, without it.
pub fn endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").unwrap_or_else(|_| {
        panic!(
            "TEST_S3_ENDPOINT is not set: run scripts/test-all.sh, or start `scripts/moto_server.py -p PORT` and set it"
        )
    })
}

/// Creates a fresh bucket and returns settings for it.
pub async fn fresh_bucket() -> S3Settings {
    let endpoint = endpoint();
    let bucket = format!("test-{}", uuid::Uuid::new_v4().simple());
    let url = format!("{endpoint}/{bucket}");
    let response = super::http_client()
        .put(&url)
        .send()
        .await
        .unwrap_or_else(|e| panic!("the S3 server at {endpoint} is required for this test: {e}"));
    assert!(response.status().is_success(), "creating bucket {bucket}: {}", response.status());
    S3Settings {
        bucket,
        endpoint: Some(endpoint),
        region: Some("us-east-1".into()),
        // The test server accepts any credentials.
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        ..S3Settings::default()
    }
}

/// Multipart uploads still open in `bucket` (should be none after an abort).
pub async fn open_multipart_uploads(settings: &S3Settings) -> usize {
    let url = format!("{}/{}?uploads", endpoint(), settings.bucket);
    let body = super::http_get(&url).await.unwrap().text().await.unwrap();
    body.matches("<Upload>").count()
}

/// Keys in `bucket`.
pub async fn keys(settings: &S3Settings) -> Vec<String> {
    let url = format!("{}/{}?list-type=2", endpoint(), settings.bucket);
    let body = super::http_get(&url).await.unwrap().text().await.unwrap();
    body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect()
}

/// Fails fast unless the server answers a part for an unknown upload with 404 NoSuchUpload, as S3
/// does (plain moto answers 500, which the client retries for a minute before failing); resumed
/// uploads rely on that answer. `scripts/moto_server.py` gives it.
pub async fn assert_answers_no_such_upload(settings: &S3Settings) {
    let url = format!("{}/{}/probe?partNumber=1&uploadId=no-such-upload", endpoint(), settings.bucket);
    let response = super::http_client().put(&url).body("").send().await.unwrap();
    assert_eq!(
        response.status(),
        reqwest::StatusCode::NOT_FOUND,
        "the S3 server must answer UploadPart for an unknown upload with 404 NoSuchUpload, as AWS \
         does: start it with scripts/moto_server.py rather than moto_server"
    );
}
