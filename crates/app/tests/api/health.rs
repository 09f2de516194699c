use std::sync::Arc;

use http::StatusCode;
use serde_json::json;

use crate::helpers::{FailingStorage, TestApp};

#[tokio::test]
async fn healthz_says_ok() {
    let app = TestApp::spawn().await;

    let response = app.get(None, "/healthz").await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_reports_every_dependency() {
    let app = TestApp::builder().local_storage().spawn().await;

    let response = app.get(None, "/readyz").await;

    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(
        response.json(),
        json!({"status": "ready", "checks": {"users": "ok", "exports": "ok", "storage": "ok", "orchestrator": "ok"}})
    );
}

#[tokio::test]
async fn readyz_is_a_503_naming_the_dependency_that_is_down() {
    let app = TestApp::builder()
        .adapters(|mut adapters| {
            adapters.storage =
                Arc::new(FailingStorage { ping_fails: true, ..FailingStorage::wrap(adapters.storage) });
            adapters
        })
        .spawn()
        .await;

    let response = app.get(None, "/readyz").await;

    let problem = response.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    assert_eq!(
        problem["checks"],
        json!({"users": "ok", "exports": "ok", "storage": "unavailable", "orchestrator": "ok"})
    );
    assert!(response.header("retry-after").is_some());
    assert!(!response.text().contains("db-7"), "internal detail leaked");
}
