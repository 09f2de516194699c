//! Rate limits, failed-authentication throttling, load shedding and the request timeout, through
//! the router; the header-read timeout and the connection limit against the real server.
//! (`Config::for_tests` relaxes the limits; each test here sets the ones it checks.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use futures::stream;
use http::{Request, StatusCode};
use serde_json::json;

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, TestResponse, csv_body};

fn from(addr: &str, key: Option<&str>, uri: &str) -> Request<Body> {
    let peer: SocketAddr = addr.parse().unwrap();
    let mut request = Request::get(uri).extension(ConnectInfo(peer));
    if let Some(key) = key {
        request = request.header("authorization", format!("Bearer {key}"));
    }
    request.body(Body::empty()).unwrap()
}

#[track_caller]
fn assert_rate_headers(response: &TestResponse, policy: &str, remaining: u32) {
    let state = response.header("ratelimit").unwrap_or_else(|| panic!("no RateLimit: {response:?}"));
    assert!(state.starts_with(&format!("\"{policy}\";r={remaining};t=")), "{state}");
    assert!(response.header("ratelimit-policy").is_some_and(|p| p.starts_with(&format!("\"{policy}\";q="))));
}

#[tokio::test]
async fn a_key_past_its_burst_gets_429_with_retry_after_and_the_ratelimit_headers() {
    let app = TestApp::builder()
        .config(|c| {
            c.limits.rate_limit_per_s = 1;
            c.limits.rate_limit_burst = 3;
        })
        .spawn()
        .await;

    for remaining in [2, 1, 0] {
        let response = app.get(Some(ACME_KEY), "/v1/exports").await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        assert_rate_headers(&response, "api-key", remaining);
        assert_eq!(response.header("ratelimit-policy"), Some("\"api-key\";q=3;w=3"));
    }
    let limited = app.get(Some(ACME_KEY), "/v1/exports").await;
    let problem = limited.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert!(problem["hint"].as_str().is_some_and(|h| h.contains("RateLimit")), "{problem}");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_rate_headers(&limited, "api-key", 0);

    // Another key has its own bucket; the probes have none.
    assert_eq!(app.get(Some(GLOBEX_KEY), "/v1/exports").await.status, StatusCode::OK);
    let health = app.get(None, "/healthz").await;
    assert!(health.header("ratelimit").is_none());

    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        app.get(Some(ACME_KEY), "/v1/exports").await.status,
        StatusCode::OK,
        "one more a second later"
    );
}

#[tokio::test]
async fn failed_authentications_are_throttled_per_client_address() {
    let app = TestApp::builder()
        .config(|c| {
            c.limits.auth_failures_per_min = 1;
            c.limits.auth_failures_burst = 2;
        })
        .spawn()
        .await;
    let guesser = "192.0.2.10:40000";

    for remaining in [1, 0] {
        let response = app.send(from(guesser, Some("guess"), "/v1/exports")).await;
        response.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
        assert_rate_headers(&response, "auth-failures", remaining);
    }
    // Now even the right key from that address is not checked: a guess that hits learns nothing.
    for key in [Some("guess"), Some(ACME_KEY), None] {
        let response = app.send(from(guesser, key, "/v1/exports")).await;
        response.assert_problem(StatusCode::TOO_MANY_REQUESTS, "auth-throttled");
        let retry_after: u64 = response.header("retry-after").unwrap().parse().unwrap();
        assert!((55..=60).contains(&retry_after), "{retry_after}");
    }
    // The operator routes and the webhook share the address's bucket.
    let operator = app.send(from(guesser, Some("guess"), "/v1/exports/batch/x")).await;
    operator.assert_problem(StatusCode::TOO_MANY_REQUESTS, "auth-throttled");
    let mut webhook = from(guesser, None, "/v1/events/export-requested");
    *webhook.method_mut() = http::Method::POST;
    app.send(webhook).await.assert_problem(StatusCode::TOO_MANY_REQUESTS, "auth-throttled");

    // Other addresses are not affected (IPv6 by /64).
    let other = app.send(from("[2001:db8:1:2::7]:1", Some(ACME_KEY), "/v1/exports")).await;
    assert_eq!(other.status, StatusCode::OK, "{}", other.text());
    for _ in 0..2 {
        let guess = app.send(from("[2001:db8:1:2::8]:1", Some("guess"), "/v1/exports")).await;
        assert_eq!(guess.status, StatusCode::UNAUTHORIZED);
    }
    let same_64 = app.send(from("[2001:db8:1:2::9]:1", Some("guess"), "/v1/exports")).await;
    same_64.assert_problem(StatusCode::TOO_MANY_REQUESTS, "auth-throttled");
}

#[tokio::test]
async fn a_full_in_flight_limit_sheds_load_with_503_while_the_probes_answer() {
    let app =
        Arc::new(TestApp::builder().gated_after(1).config(|c| c.limits.max_in_flight = 1).spawn().await);
    // A synchronous export waiting on the gate holds the one slot.
    let waiting = {
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=30", &csv_body()).await
        })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let shed = loop {
        let response = app.get(Some(GLOBEX_KEY), "/v1/exports").await;
        if response.status == StatusCode::SERVICE_UNAVAILABLE {
            break response;
        }
        assert!(tokio::time::Instant::now() < deadline, "never shed: {}", response.text());
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    shed.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "overloaded");
    assert_eq!(shed.header("retry-after"), Some("1"));
    assert_eq!(app.get(None, "/healthz").await.status, StatusCode::OK);
    assert_eq!(app.get(None, "/readyz").await.status, StatusCode::OK);

    app.open_gate();
    let done = waiting.await.unwrap();
    assert_eq!(done.status, StatusCode::OK, "{}", done.text());
    assert_eq!(
        app.get(Some(GLOBEX_KEY), "/v1/exports").await.status,
        StatusCode::OK,
        "the slot is free again"
    );
}

#[tokio::test]
async fn a_request_past_the_timeout_is_a_503_but_the_sync_wait_is_not_cut_short() {
    let app = TestApp::builder().gated_after(1).config(|c| c.limits.request_timeout_s = 1).spawn().await;

    // A body that never arrives.
    let request = Request::post("/v1/exports")
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from_stream(stream::pending::<Result<bytes::Bytes, std::io::Error>>()))
        .unwrap();
    let started = tokio::time::Instant::now();
    let response = tokio::time::timeout(Duration::from_secs(5), app.send(request)).await.expect("no hang");
    let problem = response.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "timeout");
    assert!(problem["detail"].as_str().unwrap().contains("1 s"), "{problem}");
    assert_eq!(response.header("retry-after"), Some("5"));
    assert!(started.elapsed() >= Duration::from_millis(900));

    // The synchronous wait runs its own `timeout_s` (2 s here), past the request timeout.
    let response = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=2", &csv_body()).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let status = response.json()["status"].clone();
    assert!(status == json!("running") || status == json!("pending"), "{status}");
    app.open_gate();
}
