//! `POST /v1/events/export-requested`: signed webhook events, and the same event over NATS.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::Duration;

use axum::body::Body;
use chrono::Utc;
use domain::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ACME_KEY, TestApp, TestResponse};

const URI: &str = "/v1/events/export-requested";
const ACME_SECRET: &str = "acme-webhook-secret-0123456789";
const OPERATOR_KEY: &str = "operator-events-key-3c9d";
const TENANT_HEADER: &str = "X-Userexport-Tenant";

/// acme/prod has a webhook secret; globex/prod (an API key's scope) has none.
async fn spawn() -> TestApp {
    spawn_with(|_| {}).await
}

async fn spawn_with(configure: impl FnOnce(&mut app::Config)) -> TestApp {
    TestApp::builder()
        .config(|c| {
            c.tenants.tenants =
                Some(format!(r#"[{{"scope":"acme/prod","webhook_secret":"{ACME_SECRET}"}}]"#));
            configure(c);
        })
        .spawn()
        .await
}

fn event(event_id: &str, tenant: &str) -> Value {
    json!({"event_id": event_id, "tenant_id": tenant, "environment_id": "prod", "request": {"format": "csv"}})
}

/// Sends `body` with the given timestamp and signature headers (either may be left out), and
/// `X-Userexport-Tenant` naming the scope the body names, if it names one.
async fn post_raw(
    app: &TestApp,
    body: &[u8],
    timestamp: Option<i64>,
    signature: Option<&str>,
) -> TestResponse {
    let mut request = Request::post(URI).header("content-type", "application/json");
    if let Some(scope) = domain::events::claimed_scope(body) {
        request = request.header(TENANT_HEADER, scope.to_string());
    }
    if let Some(timestamp) = timestamp {
        request = request.header(TIMESTAMP_HEADER, timestamp.to_string());
    }
    if let Some(signature) = signature {
        request = request.header(SIGNATURE_HEADER, signature);
    }
    app.send(request.body(Body::from(body.to_vec())).unwrap()).await
}

/// Sends `event` signed with `secret` at `timestamp`.
async fn post_signed(app: &TestApp, event: &Value, secret: &str, timestamp: i64) -> TestResponse {
    let body = serde_json::to_vec(event).unwrap();
    let signature = sign(secret.as_bytes(), timestamp, &body);
    post_raw(app, &body, Some(timestamp), Some(&signature)).await
}

async fn acme_exports(app: &TestApp) -> Vec<Value> {
    let list = app.get(Some(ACME_KEY), "/v1/exports").await;
    assert_eq!(list.status, StatusCode::OK, "{}", list.text());
    list.json()["items"].as_array().unwrap().clone()
}

#[track_caller]
fn assert_refused(response: &TestResponse) -> Value {
    let problem = response.assert_problem(StatusCode::UNAUTHORIZED, "invalid-signature");
    assert!(problem["hint"].as_str().is_some_and(|h| h.contains("HMAC-SHA256")), "{problem}");
    assert!(response.header("www-authenticate").is_some());
    problem
}

#[tokio::test]
async fn a_correctly_signed_event_starts_an_export() {
    let app = spawn().await;
    let response = post_signed(&app, &event("evt-1", "acme"), ACME_SECRET, Utc::now().timestamp()).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let export = response.json();
    let id = export["id"].as_str().unwrap();
    assert_eq!(response.header("location"), Some(format!("/v1/exports/{id}").as_str()));
    assert_eq!(export["format"], "csv");
    assert_eq!(app.wait_for_status(id, "completed").await["id"], id);
}

#[tokio::test]
async fn the_same_event_twice_gives_one_export() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let first = post_signed(&app, &event("evt-dup", "acme"), ACME_SECRET, now).await;
    let second = post_signed(&app, &event("evt-dup", "acme"), ACME_SECRET, now + 1).await;

    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    assert_eq!(second.status, StatusCode::OK, "{}", second.text());
    assert_eq!(second.header("idempotent-replayed"), Some("true"));
    assert_eq!(first.json()["id"], second.json()["id"]);
    assert_eq!(acme_exports(&app).await.len(), 1);
}

#[tokio::test]
async fn a_bad_signature_is_refused_and_starts_nothing() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let body = serde_json::to_vec(&event("evt-bad", "acme")).unwrap();
    let wrong_secret = sign(b"not-the-secret-of-acme-0000", now, &body);
    let other_body = sign(ACME_SECRET.as_bytes(), now, b"{}");

    for signature in [wrong_secret.as_str(), other_body.as_str(), "v1=00", "sha256=abc"] {
        assert_refused(&post_raw(&app, &body, Some(now), Some(signature)).await);
    }
    assert_refused(&post_raw(&app, &body, Some(now), None).await);
    assert_refused(&post_raw(&app, &body, None, Some(&wrong_secret)).await);
    assert!(acme_exports(&app).await.is_empty());
}

#[tokio::test]
async fn a_stale_or_future_timestamp_is_refused_and_starts_nothing() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    for timestamp in [now - 301, now + 301, 0] {
        let problem =
            assert_refused(&post_signed(&app, &event("evt-stale", "acme"), ACME_SECRET, timestamp).await);
        assert!(problem["detail"].as_str().unwrap().contains("replay window"), "{problem}");
    }
    assert!(acme_exports(&app).await.is_empty());
}

#[tokio::test]
async fn the_replay_window_is_configurable() {
    let app = spawn_with(|c| c.events.webhook_replay_window_s = 10).await;
    let now = Utc::now().timestamp();
    assert_refused(&post_signed(&app, &event("evt-w", "acme"), ACME_SECRET, now - 60).await);
    let ok = post_signed(&app, &event("evt-w", "acme"), ACME_SECRET, now - 5).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text());
}

#[tokio::test]
async fn unknown_tenants_and_tenants_without_a_secret_look_like_a_bad_signature() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let bad_signature = {
        let body = serde_json::to_vec(&event("evt-x", "acme")).unwrap();
        assert_refused(
            &post_raw(&app, &body, Some(now), Some(&sign(b"wrong-secret-0123456", now, &body))).await,
        )
    };

    // Unknown tenant, signed with a secret of its own (or with acme's).
    for secret in ["stranger-secret-0123456789", ACME_SECRET] {
        let refused = assert_refused(&post_signed(&app, &event("evt-x", "stranger"), secret, now).await);
        assert_eq!(refused, bad_signature, "the answer must not reveal which tenants exist");
    }
    // A known tenant with no webhook secret: even a signature with the empty key is refused.
    let refused = assert_refused(&post_signed(&app, &event("evt-x", "globex"), "", now).await);
    assert_eq!(refused, bad_signature);
    // A request that names no tenant at all.
    let refused =
        assert_refused(&post_raw(&app, b"not json", Some(now), Some(&sign(b"k", now, b"not json"))).await);
    assert!(refused["detail"].as_str().unwrap().contains(TENANT_HEADER), "{refused}");

    assert!(acme_exports(&app).await.is_empty());
    let globex = app.get(Some(crate::helpers::GLOBEX_KEY), "/v1/exports").await.json();
    assert_eq!(globex["items"], json!([]));
}

#[tokio::test]
async fn a_rotation_list_is_accepted_when_one_signature_matches() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let body = serde_json::to_vec(&event("evt-rot", "acme")).unwrap();
    let header = format!(
        "{}, {}",
        sign(b"the-previous-secret-0000", now, &body),
        sign(ACME_SECRET.as_bytes(), now, &body)
    );
    let response = post_raw(&app, &body, Some(now), Some(&header)).await;
    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
}

#[tokio::test]
async fn a_signed_event_with_an_invalid_request_is_422_listing_every_field() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let bad = json!({"event_id": "evt-422", "tenant_id": "acme", "environment_id": "prod", "colour": "red",
                     "request": {"format": "xml", "limit": 0}});
    let response = post_signed(&app, &bad, ACME_SECRET, now).await;
    assert_eq!(response.error_fields(), ["colour", "request.format", "request.limit"]);

    // The same event ID for a different request is a conflict, not a second export.
    assert_eq!(
        post_signed(&app, &event("evt-reuse", "acme"), ACME_SECRET, now).await.status,
        StatusCode::ACCEPTED
    );
    let mut changed = event("evt-reuse", "acme");
    changed["request"]["format"] = json!("ndjson");
    post_signed(&app, &changed, ACME_SECRET, now)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert_eq!(acme_exports(&app).await.len(), 1);
}

#[tokio::test]
async fn an_event_over_nats_and_the_same_event_over_the_webhook_give_one_export() {
    let url = std::env::var("TEST_NATS_URL").unwrap_or_else(|_| {
        panic!(
            "TEST_NATS_URL is not set: start `nats-server -js` and set TEST_NATS_URL=nats://127.0.0.1:4222"
        )
    });
    let id = uuid::Uuid::new_v4().simple().to_string();
    let (stream, subject) = (format!("UE_API_{id}"), format!("ue-api.{id}.export-requested"));
    let app = spawn_with(|c| {
        c.events.nats_url = Some(url.clone());
        c.events.nats_stream = stream.clone();
        c.events.nats_subject = subject.clone();
        c.events.nats_consumer = format!("ue-api-{id}");
        c.events.nats_dlq_subject = format!("ue-api.{id}.dlq");
        c.operator_keys = Some(format!("{OPERATOR_KEY}=batch").as_str().into());
    })
    .await;

    let ready = app.get(Some(OPERATOR_KEY), "/readyz").await;
    assert_eq!(ready.json()["checks"]["events"], "ok", "{}", ready.text());

    let jetstream = async_nats::jetstream::new(async_nats::connect(url.as_str()).await.unwrap());
    let body = serde_json::to_vec(&event("evt-both-ways", "acme")).unwrap();
    // Signed like the webhook, in message headers: NATS events must prove their tenant too.
    let now = Utc::now().timestamp();
    let mut headers = async_nats::HeaderMap::new();
    headers.insert(TIMESTAMP_HEADER, now.to_string().as_str());
    headers.insert(SIGNATURE_HEADER, sign(ACME_SECRET.as_bytes(), now, &body).as_str());
    jetstream.publish_with_headers(subject, headers, body.into()).await.unwrap().await.unwrap();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    let from_nats = loop {
        if let Some(export) = acme_exports(&app).await.first() {
            break export.clone();
        }
        assert!(tokio::time::Instant::now() < deadline, "the NATS event never became an export");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };

    let response =
        post_signed(&app, &event("evt-both-ways", "acme"), ACME_SECRET, Utc::now().timestamp()).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    assert_eq!(response.json()["id"], from_nats["id"]);
    app.wait_for_status(from_nats["id"].as_str().unwrap(), "completed").await;
    assert_eq!(acme_exports(&app).await.len(), 1);
    let _ = jetstream.delete_stream(&stream).await;
}

/// A body that records whether anyone ever polled it, and never yields a byte.
fn untouchable_body(polled: &Arc<AtomicBool>) -> Body {
    let polled = Arc::clone(polled);
    Body::from_stream(futures::stream::poll_fn(
        move |_| -> Poll<Option<Result<bytes::Bytes, std::io::Error>>> {
            polled.store(true, Ordering::SeqCst);
            Poll::Pending
        },
    ))
}

#[tokio::test]
async fn headers_that_cannot_authenticate_are_refused_before_the_body_is_read() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let well_formed = sign(b"any-secret", now, b"whatever");
    let cases: [(&str, Option<&str>, i64, &str); 6] = [
        ("no tenant", None, now, well_formed.as_str()),
        ("malformed tenant", Some("acme"), now, well_formed.as_str()),
        ("unknown tenant", Some("stranger/prod"), now, well_formed.as_str()),
        ("tenant without a secret", Some("globex/prod"), now, well_formed.as_str()),
        ("stale timestamp", Some("acme/prod"), now - 3600, well_formed.as_str()),
        ("malformed signature", Some("acme/prod"), now, "v1=zz"),
    ];
    for (case, tenant, timestamp, signature) in cases {
        let polled = Arc::new(AtomicBool::new(false));
        let mut request = Request::post(URI)
            .header("content-type", "application/json")
            .header(TIMESTAMP_HEADER, timestamp.to_string())
            .header(SIGNATURE_HEADER, signature);
        if let Some(tenant) = tenant {
            request = request.header(TENANT_HEADER, tenant);
        }
        let request = request.body(untouchable_body(&polled)).unwrap();
        let response = tokio::time::timeout(Duration::from_secs(2), app.send(request))
            .await
            .unwrap_or_else(|_| panic!("{case}: waited for the body"));
        assert_refused(&response);
        assert!(!polled.load(Ordering::SeqCst), "{case}: the body was read");
    }
}

#[tokio::test]
async fn a_body_larger_than_the_limit_is_413_once_the_headers_authenticate() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let body = vec![b' '; 64 * 1024 + 1];
    let request = Request::post(URI)
        .header(TENANT_HEADER, "acme/prod")
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, sign(ACME_SECRET.as_bytes(), now, &body))
        .body(Body::from_stream(futures::stream::iter(
            body.chunks(1024)
                .map(|c| Ok::<_, std::io::Error>(bytes::Bytes::copy_from_slice(c)))
                .collect::<Vec<_>>(),
        )))
        .unwrap();
    app.send(request).await.assert_problem(StatusCode::PAYLOAD_TOO_LARGE, "payload-too-large");
}

#[tokio::test]
async fn an_event_for_another_scope_than_its_tenant_header_is_422() {
    let app = spawn().await;
    let now = Utc::now().timestamp();
    let body = serde_json::to_vec(&event("evt-other", "globex")).unwrap();
    let request = Request::post(URI)
        .header(TENANT_HEADER, "acme/prod")
        .header(TIMESTAMP_HEADER, now.to_string())
        .header(SIGNATURE_HEADER, sign(ACME_SECRET.as_bytes(), now, &body))
        .body(Body::from(body))
        .unwrap();
    assert_eq!(app.send(request).await.error_fields(), ["tenant_id"]);
    assert!(acme_exports(&app).await.is_empty());
}

#[tokio::test]
async fn a_tenant_past_its_webhook_rate_gets_429_with_the_ratelimit_headers() {
    let app = spawn_with(|c| {
        c.limits.rate_limit_per_s = 1;
        c.limits.rate_limit_burst = 2;
    })
    .await;
    let now = Utc::now().timestamp();
    for (i, remaining) in [1, 0].into_iter().enumerate() {
        let response = post_signed(&app, &event(&format!("evt-rate-{i}"), "acme"), ACME_SECRET, now).await;
        assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
        assert!(response.header("ratelimit").unwrap().starts_with(&format!("\"webhook\";r={remaining};")));
    }
    let limited = post_signed(&app, &event("evt-rate-2", "acme"), ACME_SECRET, now).await;
    limited.assert_problem(StatusCode::TOO_MANY_REQUESTS, "rate-limited");
    assert_eq!(limited.header("retry-after"), Some("1"));
    assert_eq!(limited.header("ratelimit-policy"), Some("\"webhook\";q=2;w=2"));
    assert_eq!(acme_exports(&app).await.len(), 2, "the limited event started nothing");
}
