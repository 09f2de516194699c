use std::io::Read;
use std::sync::Arc;

use domain::{ExportId, ObjectKey};
use http::StatusCode;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{ACME_KEY, FailingStorage, TestApp, USERS, acme, csv_body};

fn download_uri(export: &Value) -> String {
    format!("/v1/exports/{}/download", export["id"].as_str().unwrap())
}

#[tokio::test]
async fn a_completed_csv_export_downloads_with_type_length_filename_and_checksum() {
    let app = TestApp::builder().local_storage().spawn().await;
    let export = app.create_completed(&csv_body()).await;
    let id = export["id"].as_str().unwrap();

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("text/csv; charset=utf-8"));
    assert_eq!(response.header("content-length"), Some(response.body.len().to_string().as_str()));
    assert_eq!(
        response.header("content-disposition"),
        Some(format!("attachment; filename=\"export-{id}.csv\"").as_str())
    );
    assert_eq!(response.header("content-encoding"), None);
    let sha256 = hex::encode(Sha256::digest(&response.body));
    assert_eq!(response.header("x-checksum-sha256"), Some(sha256.as_str()));
    assert_eq!(export["sha256"], sha256);
    assert_eq!(export["bytes"], response.body.len());
}

#[tokio::test]
async fn a_gzip_export_downloads_as_a_gz_file_that_gunzips_to_valid_csv() {
    let app = TestApp::spawn().await;
    let export = app.create_completed(&json!({"format": "csv", "compression": "gzip"})).await;
    let id = export["id"].as_str().unwrap();

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/gzip"));
    assert_eq!(response.header("content-encoding"), None, "a .gz file, not a transfer encoding");
    assert_eq!(
        response.header("content-disposition"),
        Some(format!("attachment; filename=\"export-{id}.csv.gz\"").as_str())
    );
    let mut csv_text = String::new();
    flate2::read::GzDecoder::new(response.body.as_ref()).read_to_string(&mut csv_text).unwrap();
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(reader.records().collect::<Result<Vec<_>, _>>().unwrap().len() as u64, USERS);
}

#[tokio::test]
async fn an_ndjson_export_honours_fields_filters_and_limit() {
    let app = TestApp::spawn().await;
    let body = json!({"format": "ndjson", "fields": ["email", "status"],
                      "user_filters": {"status": "active"}, "limit": 10});
    let export = app.create_completed(&body).await;

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    assert_eq!(response.header("content-type"), Some("application/x-ndjson"));
    let lines: Vec<Value> = response.text().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 10);
    assert_eq!(export["record_count"], 10);
    for line in lines {
        assert_eq!(line.as_object().unwrap().keys().collect::<Vec<_>>(), ["email", "status"], "{line}");
        assert_eq!(line["status"], "active");
    }
}

#[tokio::test]
async fn downloading_an_unfinished_export_is_a_409() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let export = app.create(&csv_body()).await.json();

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    let problem = response.assert_problem(StatusCode::CONFLICT, "export-not-ready");
    assert!(problem["hint"].as_str().unwrap().contains("Poll"), "{problem}");
}

#[tokio::test]
async fn downloading_a_cancelled_export_is_a_409() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let export = app.create(&csv_body()).await.json();
    let id = export["id"].as_str().unwrap();
    app.post(Some(ACME_KEY), &format!("/v1/exports/{id}/cancel")).await;
    app.wait_for_status(id, "cancelled").await;

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    let problem = response.assert_problem(StatusCode::CONFLICT, "export-not-ready");
    assert!(problem["detail"].as_str().unwrap().contains("cancelled"), "{problem}");
}

#[tokio::test]
async fn downloading_an_export_whose_file_is_gone_is_a_410() {
    let app = TestApp::spawn().await;
    let export = app.create_completed(&csv_body()).await;
    let id = ExportId::parse(export["id"].as_str().unwrap()).unwrap();
    // The first attempt's object is the one the record names.
    app.storage.delete(&ObjectKey::for_attempt(&acme(), id, 1, "csv")).await.unwrap();

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    response.assert_problem(StatusCode::GONE, "export-gone");
}

/// An API whose storage signs URLs, as S3 does.
async fn signing_app() -> TestApp {
    TestApp::builder()
        .adapters(|mut adapters| {
            adapters.storage =
                Arc::new(FailingStorage { signs: true, ..FailingStorage::wrap(adapters.storage) });
            adapters
        })
        .spawn()
        .await
}

#[tokio::test]
async fn a_storage_that_signs_urls_gets_a_307_redirect() {
    let app = signing_app().await;
    let export = app.create_completed(&csv_body()).await;

    let response = app.get(Some(ACME_KEY), &download_uri(&export)).await;

    assert_eq!(response.status, StatusCode::TEMPORARY_REDIRECT);
    let location = response.header("location").unwrap();
    assert!(location.starts_with("https://bucket.example.com/acme/prod/exports/"), "{location}");
    assert!(response.body.is_empty());
}

#[tokio::test]
async fn a_storage_that_signs_urls_gives_a_download_link_with_its_checksum() {
    let app = signing_app().await;
    let export = app.create_completed(&csv_body()).await;
    let id = export["id"].as_str().unwrap();

    let response = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}/download-link")).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("cache-control"), Some("no-store"));
    let link = response.json();
    let url = link["url"].as_str().unwrap();
    assert!(url.starts_with("https://bucket.example.com/acme/prod/exports/"), "{url}");
    assert_eq!(link["filename"], format!("export-{id}.csv"));
    assert_eq!(link["sha256"], export["sha256"]);
    assert_eq!(link["size_bytes"], export["bytes"]);
    let expires_at = chrono::DateTime::parse_from_rfc3339(link["expires_at"].as_str().unwrap()).unwrap();
    assert!(expires_at > chrono::Utc::now(), "{expires_at}");
}

#[tokio::test]
async fn a_storage_that_cannot_sign_has_no_download_link_and_unfinished_exports_neither() {
    let app = TestApp::spawn().await;
    let export = app.create_completed(&csv_body()).await;
    let id = export["id"].as_str().unwrap();

    let response = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}/download-link")).await;
    response.assert_problem(StatusCode::CONFLICT, "download-link-unavailable");

    let unknown = ExportId::from_uuid(uuid::Uuid::now_v7());
    let response = app.get(Some(ACME_KEY), &format!("/v1/exports/{unknown}/download-link")).await;
    response.assert_problem(StatusCode::NOT_FOUND, "not-found");
}
