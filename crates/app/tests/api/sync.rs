use std::time::{Duration, Instant};

use http::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_KEY, FailingStorage, TestApp, USERS, csv_body};

#[tokio::test]
async fn a_sync_export_answers_200_with_a_completed_export_whose_csv_has_every_user() {
    let app = TestApp::spawn().await;

    let response = app.post_json(Some(ACME_KEY), "/v1/exports/sync", &csv_body()).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let export = response.json();
    assert_eq!(export["status"], "completed");
    assert_eq!(export["record_count"], USERS);
    assert_eq!(response.header("retry-after"), None);
    let download = app.get(Some(ACME_KEY), export["links"]["download"].as_str().unwrap()).await;
    assert_eq!(download.status, StatusCode::OK);
    let mut reader = csv::Reader::from_reader(download.body.as_ref());
    assert_eq!(
        reader.headers().unwrap().iter().collect::<Vec<_>>(),
        ["id", "email", "name", "status", "created_at", "updated_at", "metadata"]
    );
    let rows: Vec<csv::StringRecord> = reader.records().collect::<Result<_, _>>().unwrap();
    assert_eq!(rows.len() as u64, USERS);
}

#[tokio::test]
async fn a_sync_export_still_running_at_the_deadline_answers_202_with_its_location() {
    let app = TestApp::builder().gated_after(10).spawn().await;

    let response = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=0", &csv_body()).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let export = response.json();
    let id = export["id"].as_str().unwrap();
    assert_eq!(response.header("location"), Some(format!("/v1/exports/{id}").as_str()));
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(matches!(export["status"].as_str(), Some("pending" | "running")), "{export}");
    app.open_gate();
    app.wait_for_status(id, "completed").await;
}

#[tokio::test]
async fn a_sync_wait_up_to_the_maximum_is_kept_and_above_it_is_a_422() {
    let app = TestApp::builder().gated_after(0).config(|c| c.sync_timeout_max_s = 1).spawn().await;
    let started = Instant::now();

    let response = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=1", &csv_body()).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(900) && waited < Duration::from_secs(10), "waited {waited:?}");
    let above = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=2", &csv_body()).await;
    assert_eq!(above.error_fields(), ["timeout_s"]);
    let doc = app.get(None, "/openapi.json").await.json();
    let parameters = doc["paths"]["/v1/exports/sync"]["post"]["parameters"].as_array().unwrap();
    let timeout = parameters.iter().find(|p| p["name"] == "timeout_s").unwrap();
    assert_eq!(timeout["schema"]["maximum"], 1, "the document states this server's maximum");
}

#[tokio::test]
async fn an_invalid_sync_timeout_is_a_422_naming_timeout_s() {
    let app = TestApp::spawn().await;

    for query in ["timeout_s=abc", "timeout_s=-1", "timeout_s=1.5", "timeout_s="] {
        let response = app.post_json(Some(ACME_KEY), &format!("/v1/exports/sync?{query}"), &csv_body()).await;
        assert_eq!(response.error_fields(), ["timeout_s"], "{query}");
    }
    let both = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=x", &json!({"format": "pdf"})).await;
    assert_eq!(both.error_fields(), ["timeout_s", "format"]);
}

#[tokio::test]
async fn a_sync_export_that_fails_answers_200_with_the_failed_export() {
    let app = TestApp::builder()
        .config(|c| {
            // Storage is down: outages are retried without using up attempts, until the deadline.
            c.policy.export_deadline_s = 2;
            c.policy.retry_initial_interval_ms = 10;
            c.policy.retry_max_interval_s = 1;
        })
        .adapters(|mut adapters| {
            let storage = FailingStorage { writes_fail: true, ..FailingStorage::wrap(adapters.storage) };
            adapters.storage = std::sync::Arc::new(storage);
            adapters
        })
        .spawn()
        .await;

    let response = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=10", &csv_body()).await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let export = response.json();
    assert_eq!(export["status"], "failed", "{export}");
    assert!(export["attempt"].as_u64().unwrap() >= 2, "{export}");
    assert_eq!(export["error"]["type"], "timeout");
    let message = export["error"]["message"].as_str().unwrap();
    assert!(message.contains("deadline") && message.contains("last error"), "{message}");
    // The storage's own words ("connection refused by db-7.internal") stay in the logs.
    assert!(message.contains("writing the export file failed"), "{message}");
    assert!(
        !export.to_string().contains("db-7.internal"),
        "infrastructure text reached the tenant: {export}"
    );
    let read = app.get(Some(ACME_KEY), &format!("/v1/exports/{}", export["id"].as_str().unwrap())).await;
    assert!(!read.text().contains("db-7.internal"), "{}", read.text());
    assert!(export["links"].get("download").is_none() && export["links"].get("cancel").is_none());
}
