use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::body::Body;
use http::{Request, StatusCode};

use crate::helpers::{ACME_KEY, FailingExports, Failure, TestApp, csv_body};

fn post_raw(content_type: Option<&str>, body: impl Into<Body>) -> Request<Body> {
    let mut request = Request::post("/v1/exports").header("authorization", format!("Bearer {ACME_KEY}"));
    if let Some(content_type) = content_type {
        request = request.header("content-type", content_type);
    }
    request.body(body.into()).unwrap()
}

#[tokio::test]
async fn malformed_json_is_a_400_naming_line_and_column() {
    let app = TestApp::spawn().await;

    let response = app.send(post_raw(Some("application/json"), "{\n  \"format\": \"csv\",\n}")).await;

    let problem = response.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");
    let detail = problem["detail"].as_str().unwrap();
    assert!(detail.contains("line 3 column 1"), "{detail}");
    let empty = app.send(post_raw(Some("application/json"), "")).await;
    empty.assert_problem(StatusCode::BAD_REQUEST, "malformed-json");
}

#[tokio::test]
async fn a_body_not_sent_as_json_is_a_400() {
    let app = TestApp::spawn().await;
    let body = csv_body().to_string();

    for content_type in
        [None, Some("text/plain"), Some("application/x-www-form-urlencoded"), Some("application/jsonx")]
    {
        let response = app.send(post_raw(content_type, body.clone())).await;
        let problem = response.assert_problem(StatusCode::BAD_REQUEST, "unsupported-media-type");
        assert!(problem["hint"].as_str().unwrap().contains("application/json"), "{content_type:?}");
    }
    let with_charset = app.send(post_raw(Some("Application/JSON; charset=utf-8"), body)).await;
    assert_eq!(with_charset.status, StatusCode::ACCEPTED, "{}", with_charset.text());
}

#[tokio::test]
async fn a_body_over_64_kib_is_a_413() {
    let app = TestApp::spawn().await;
    let padding = " ".repeat(app::BODY_LIMIT_BYTES);
    let body = format!("{{\"format\": \"csv\"{padding}}}");

    let response = app.send(post_raw(Some("application/json"), body)).await;

    response.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
}

#[tokio::test]
async fn an_unknown_route_is_a_404_problem() {
    let app = TestApp::spawn().await;

    for uri in ["/", "/v2/exports", "/v1/exports/a/b/c"] {
        let response = app.get(Some(ACME_KEY), uri).await;
        let problem = response.assert_problem(StatusCode::NOT_FOUND, "not-found");
        assert!(problem["detail"].as_str().unwrap().contains(uri), "{problem}");
    }
}

#[tokio::test]
async fn a_method_a_route_does_not_support_is_a_405_problem_with_allow() {
    let app = TestApp::spawn().await;

    let response = app.send(Request::delete("/v1/exports").body(Body::empty()).unwrap()).await;

    response.assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
    let allow = response.header("allow").unwrap();
    assert!(allow.contains("GET") && allow.contains("POST"), "{allow}");
    let get_sync = app.get(Some(ACME_KEY), "/v1/exports/sync").await;
    get_sync.assert_problem(StatusCode::METHOD_NOT_ALLOWED, "method-not-allowed");
}

async fn app_with_failing_exports(failure: Failure) -> (TestApp, Arc<AtomicBool>) {
    let failing = Arc::new(AtomicBool::new(false));
    let switch = Arc::clone(&failing);
    let app = TestApp::builder()
        .adapters(move |mut adapters| {
            adapters.exports = Arc::new(FailingExports { inner: adapters.exports, failure, failing: switch });
            adapters
        })
        .spawn()
        .await;
    (app, failing)
}

#[tokio::test]
async fn a_retryable_dependency_failure_is_a_503_with_retry_after() {
    let (app, failing) = app_with_failing_exports(Failure::Unavailable).await;
    failing.store(true, Ordering::SeqCst);

    let response = app.get(Some(ACME_KEY), "/v1/exports").await;

    let problem = response.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "service-unavailable");
    assert_eq!(response.header("retry-after"), Some("5"));
    assert!(!response.text().contains("db-7.internal"), "{problem}");
}

#[tokio::test]
async fn an_unexpected_dependency_failure_is_an_opaque_500() {
    let (app, failing) = app_with_failing_exports(Failure::Other).await;
    let export = app.create_completed(&csv_body()).await;
    failing.store(true, Ordering::SeqCst);

    for uri in ["/v1/exports".to_owned(), format!("/v1/exports/{}", export["id"].as_str().unwrap())] {
        let response = app.get(Some(ACME_KEY), &uri).await;
        response.assert_problem(StatusCode::INTERNAL_SERVER_ERROR, "internal");
        let text = response.text();
        assert!(!text.contains("hunter2") && !text.contains("db-7"), "internal detail leaked: {text}");
    }
}

#[tokio::test]
async fn every_response_carries_a_request_id_and_keeps_the_callers() {
    let app = TestApp::spawn().await;

    let generated = app.get(None, "/healthz").await;
    let failed = app.get(None, "/v1/exports").await;
    let given = app
        .send(Request::get("/healthz").header("x-request-id", "req-123").body(Body::empty()).unwrap())
        .await;

    assert_eq!(generated.header("x-request-id").map(str::len), Some(36));
    assert!(failed.header("x-request-id").is_some());
    assert_eq!(given.header("x-request-id"), Some("req-123"));
}
