//! The HTTP callback sender against a real HTTP receiver on 127.0.0.1 (so the sender runs with
//! `allow_private`, except where the refusal of private addresses is what is tested).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::callback::{CallbackSettings, EVENT_ID_HEADER, HttpCallbackSender};
use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::post;
use chrono::{TimeDelta, Utc};
use domain::signature::{self, SIGNATURE_HEADER, TIMESTAMP_HEADER};
use domain::{
    Export, ExportFailure, ExportFormat, ExportId, ExportOutcome, ExportSpec, FailureKind, Scope,
    TenantDirectory,
};
use ports::{CallbackSender, PortError};
use tokio::net::TcpListener;

const SECRET: &str = "whsec-0123456789abcdef";

/// One request the receiver got.
#[derive(Debug, Clone)]
struct Received {
    headers: HeaderMap,
    body: Bytes,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
}

impl Receiver {
    /// Serves `/ok`, `/status/{code}`, `/slow`, `/moved` (a 307 to `/ok`) and `/endless` (a 200
    /// whose body never ends); returns its base URL.
    async fn start(&self) -> String {
        let router = Router::new()
            .route("/ok", post(record))
            .route("/status/{code}", post(with_status))
            .route("/slow", post(slow))
            .route("/moved", post(|| async { Redirect::temporary("/ok") }))
            .route("/endless", post(endless))
            .with_state(self.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
        format!("http://{addr}")
    }

    fn received(&self) -> Vec<Received> {
        self.got.lock().unwrap().clone()
    }
}

async fn record(State(r): State<Receiver>, headers: HeaderMap, body: Bytes) -> StatusCode {
    r.got.lock().unwrap().push(Received { headers, body });
    StatusCode::NO_CONTENT
}

async fn with_status(
    State(r): State<Receiver>,
    axum::extract::Path(code): axum::extract::Path<u16>,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    record(State(r), headers, body).await;
    StatusCode::from_u16(code).unwrap()
}

async fn slow() -> StatusCode {
    tokio::time::sleep(Duration::from_secs(5)).await;
    StatusCode::OK
}

async fn endless() -> Response {
    let chunk = Bytes::from(vec![b'x'; 16 * 1024]);
    let stream = futures::stream::repeat_with(move || Ok::<_, std::io::Error>(chunk.clone()));
    ([(header::CONTENT_TYPE, "text/plain")], Body::from_stream(stream)).into_response()
}

fn tenants(callback_url: &str) -> TenantDirectory {
    let json =
        format!(r#"[{{"scope":"acme/prod","webhook_secret":"{SECRET}","callback_url":"{callback_url}"}}]"#);
    // Parsed leniently: some tests check that the sender refuses what a stricter directory would.
    TenantDirectory::parse_json_with(&json, true).unwrap()
}

fn sender(callback_url: &str, allow_private: bool) -> HttpCallbackSender {
    let settings = CallbackSettings {
        allow_private,
        timeout: Duration::from_millis(1500),
        ..CallbackSettings::default()
    };
    HttpCallbackSender::new(tenants(callback_url), settings).unwrap()
}

fn running() -> Export {
    let id = ExportId::from_uuid(uuid::Uuid::now_v7());
    let mut export = Export::new(
        id,
        Scope::parse("acme/prod").unwrap(),
        ExportSpec::new(ExportFormat::Csv),
        None,
        Utc::now(),
    );
    export.start_attempt(1, Utc::now()).unwrap();
    export
}

fn completed() -> Export {
    let mut export = running();
    let outcome = ExportOutcome { record_count: 42, bytes: 1234, sha256: "ab".repeat(32) };
    export.complete(outcome, export.attempt_key(1), TimeDelta::days(7), Utc::now()).unwrap();
    export
}

fn header<'a>(got: &'a Received, name: &str) -> Option<&'a str> {
    got.headers.get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn a_completed_export_is_posted_as_a_signed_event_the_receiver_can_verify() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let sender = sender(&format!("{base}/ok"), true);
    let export = completed();
    assert!(sender.wants(&export.scope));
    assert!(!sender.wants(&Scope::parse("globex/prod").unwrap()));

    sender.deliver(&export).await.unwrap();

    let got = receiver.received().remove(0);
    assert_eq!(header(&got, "content-type"), Some("application/json"));
    signature::verify(
        SECRET.as_bytes(),
        header(&got, TIMESTAMP_HEADER),
        header(&got, SIGNATURE_HEADER),
        &got.body,
        Utc::now().timestamp(),
        signature::DEFAULT_REPLAY_WINDOW,
    )
    .unwrap();
    let event: serde_json::Value = serde_json::from_slice(&got.body).unwrap();
    assert_eq!(event["type"], "export.completed");
    assert_eq!(event["data"]["export_id"], export.id.to_string());
    assert_eq!(event["data"]["record_count"], 42);
    assert_eq!(header(&got, EVENT_ID_HEADER), event["id"].as_str());
}

#[tokio::test]
async fn a_failed_export_is_posted_as_export_failed_and_an_unfinished_one_not_at_all() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let sender = sender(&format!("{base}/ok"), true);
    let mut export = running();

    let err = sender.deliver(&export).await.unwrap_err();
    assert!(matches!(err, PortError::Other(_)), "{err:?}");
    assert!(receiver.received().is_empty());

    export.fail(ExportFailure::new(FailureKind::Storage, "writing the file failed"), Utc::now()).unwrap();
    sender.deliver(&export).await.unwrap();
    let event: serde_json::Value = serde_json::from_slice(&receiver.received()[0].body).unwrap();
    assert_eq!(event["type"], "export.failed");
    assert_eq!(event["data"]["error"]["code"], "storage");
}

#[tokio::test]
async fn server_errors_throttling_and_timeouts_may_pass_other_client_errors_will_not() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    for (path, retryable) in [
        ("status/500", true),
        ("status/503", true),
        ("status/429", true),
        ("status/408", true),
        ("slow", true),
        ("status/400", false),
        ("status/404", false),
        ("status/410", false),
    ] {
        let err = sender(&format!("{base}/{path}"), true).deliver(&completed()).await.unwrap_err();
        assert_eq!(err.is_retryable(), retryable, "{path}: {err:#}");
        assert!(!format!("{err:#}").contains(SECRET));
    }
}

#[tokio::test]
async fn a_refused_connection_may_pass() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    let err = sender(&format!("http://{addr}/ok"), true).deliver(&completed()).await.unwrap_err();
    assert!(matches!(err, PortError::Unavailable(_)), "{err:#}");
}

#[tokio::test]
async fn redirects_are_not_followed() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let err = sender(&format!("{base}/moved"), true).deliver(&completed()).await.unwrap_err();
    assert!(matches!(err, PortError::Other(_)), "{err:#}");
    assert!(receiver.received().is_empty(), "the redirect's target was called");
}

#[tokio::test]
async fn an_endless_answer_is_read_only_up_to_a_bound() {
    let receiver = Receiver::default();
    let base = receiver.start().await;
    let started = std::time::Instant::now();
    sender(&format!("{base}/endless"), true).deliver(&completed()).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(1), "read for {:?}", started.elapsed());
}

#[tokio::test]
async fn private_addresses_are_refused_without_connecting_unless_allowed() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    for url in [
        format!("http://127.0.0.1:{port}/ok"),
        format!("https://127.0.0.1:{port}/ok"),
        format!("https://[::ffff:127.0.0.1]:{port}/ok"),
        // A name resolving to loopback: refused by the resolver, before any connection.
        format!("https://localhost:{port}/ok"),
    ] {
        let err = sender(&url, false).deliver(&completed()).await.unwrap_err();
        assert!(matches!(err, PortError::Other(_)), "{url}: {err:#}");
        let accepted = tokio::time::timeout(Duration::from_millis(200), listener.accept()).await;
        assert!(accepted.is_err(), "{url}: a connection reached the receiver");
    }
    let err = sender(&format!("https://localhost:{port}/ok"), false).deliver(&completed()).await.unwrap_err();
    assert!(format!("{err:#}").contains("non-public"), "{err:#}");
}
