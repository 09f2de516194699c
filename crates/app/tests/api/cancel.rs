use std::time::Duration;

use http::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_KEY, TestApp, csv_body};

#[tokio::test]
async fn cancelling_a_running_export_ends_it_cancelled_with_no_file_left() {
    // Enough rows past the 8 MiB upload buffer that a partial upload exists on disk.
    let app = TestApp::builder().local_storage().users(70_000).gated_after(65_000).spawn().await;
    let id = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.files_in_data_dir().is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "no partial upload appeared");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(app.get(Some(ACME_KEY), &format!("/v1/exports/{id}")).await.json()["status"], "running");

    let asked = tokio::time::Instant::now();
    let response = app.post(Some(ACME_KEY), &format!("/v1/exports/{id}/cancel")).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    assert_eq!(response.json()["id"], id);
    assert_eq!(response.json()["status"], "cancelled", "the record is cancelled before the answer");
    let export = app.wait_for_status(&id, "cancelled").await;
    assert!(export["finished_at"].is_string());
    assert!(export["links"].get("cancel").is_none() && export["links"].get("download").is_none());
    // The attempt stops and removes its partial upload within a second.
    while !app.files_in_data_dir().is_empty() {
        assert!(asked.elapsed() < Duration::from_secs(1), "left behind: {:?}", app.files_in_data_dir());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn cancelling_a_pending_export_ends_it_cancelled() {
    let app = TestApp::builder().gated_after(0).config(|c| c.max_concurrent_exports = 1).spawn().await;
    let running = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&running, "running").await;
    let queued = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();

    let response = app.post(Some(ACME_KEY), &format!("/v1/exports/{queued}/cancel")).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    app.wait_for_status(&queued, "cancelled").await;
    assert_eq!(app.get(Some(ACME_KEY), &format!("/v1/exports/{running}")).await.json()["status"], "running");
}

#[tokio::test]
async fn cancelling_a_finished_export_is_a_409() {
    let app = TestApp::spawn().await;
    let export = app.create_completed(&csv_body()).await;
    let id = export["id"].as_str().unwrap();

    let response = app.post(Some(ACME_KEY), &format!("/v1/exports/{id}/cancel")).await;

    let problem = response.assert_problem(StatusCode::CONFLICT, "export-already-finished");
    assert!(problem["detail"].as_str().unwrap().contains("completed"), "{problem}");
    let again = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}")).await.json();
    assert_eq!(again["status"], "completed");
    assert_eq!(again["links"]["download"], json!(format!("/v1/exports/{id}/download")));
}

#[tokio::test]
async fn cancelling_an_unknown_export_is_a_404() {
    let app = TestApp::spawn().await;

    let unknown = app.post(Some(ACME_KEY), "/v1/exports/0190f5c3-0000-7000-8000-000000000001/cancel").await;
    let malformed = app.post(Some(ACME_KEY), "/v1/exports/nope/cancel").await;

    unknown.assert_problem(StatusCode::NOT_FOUND, "not-found");
    malformed.assert_problem(StatusCode::NOT_FOUND, "not-found");
}
