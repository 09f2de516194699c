//! A `TestApp` built with `Application::build_with` (in-memory or temp-dir storage), driven
//! through `router().oneshot(..)` without a socket, plus adapter wrappers that make slow
//! exports and failing dependencies deterministic.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use app::{Adapters, Application, Config};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use bytes::Bytes;
use domain::{Export, ExportId, ExportStatus, ObjectKey, Scope, UploadCheckpoint, UserFilter, UserId};
use futures::StreamExt;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use ports::{
    CreateOutcome, ExportPage, ExportQuery, ExportRepository, ExportStorage, ObjectReader, ObjectWriter,
    PortError, UpdateOutcome, UserRepository, UserStream,
};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;
use tower::ServiceExt;
use url::Url;

use crate::contract_check::Contract;

pub const ACME_KEY: &str = "acme-test-key-4f1c9a7d20b3e8";
pub const GLOBEX_KEY: &str = "globex-test-key-77b2e0";
pub const API_KEYS: &str = "acme-test-key-4f1c9a7d20b3e8=acme/prod,globex-test-key-77b2e0=globex/prod";
/// Users seeded per scope unless a test asks for another number.
pub const USERS: u64 = 100;
pub const PROBLEM_BASE: &str = "https://userexport.dev/problems/";

pub fn acme() -> Scope {
    Scope::parse("acme/prod").unwrap()
}

type Customize = Box<dyn FnOnce(Adapters) -> Adapters>;

pub struct TestApp {
    router: Router,
    /// The served `/openapi.json`, fetched at the first request; every response is checked
    /// against it.
    contract: tokio::sync::OnceCell<Contract>,
    /// The temporary data directory, when storage is local.
    pub data_dir: Option<TempDir>,
    /// The storage the application writes to (to remove objects behind its back).
    pub storage: Arc<dyn ExportStorage>,
    gate: Option<watch::Sender<bool>>,
}

pub struct TestAppBuilder {
    config: Config,
    data_dir: Option<TempDir>,
    gate: Option<(u64, watch::Sender<bool>)>,
    wrappers: Vec<Customize>,
}

impl TestApp {
    /// Two tenants (acme/prod, globex/prod) with [`USERS`] users each, in-memory storage.
    pub async fn spawn() -> Self {
        Self::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            config: Config::for_tests(API_KEYS),
            data_dir: None,
            gate: None,
            wrappers: Vec::new(),
        }
    }

    /// Lets gated exports go past their gate.
    pub fn open_gate(&self) {
        if let Some(gate) = &self.gate {
            gate.send_replace(true);
        }
    }

    /// Sends `request` and checks the response against the served OpenAPI document: a status,
    /// body or header it does not describe fails the test.
    pub async fn send(&self, request: Request<Body>) -> TestResponse {
        let (method, path) = (request.method().clone(), request.uri().path().to_owned());
        let response = self.send_unchecked(request).await;
        self.contract().await.check(&method, &path, response.status, &response.headers, &response.body);
        response
    }

    /// Sends `request` without checking the response.
    pub async fn send_unchecked(&self, request: Request<Body>) -> TestResponse {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        TestResponse { status, headers, body }
    }

    /// The served OpenAPI document, with its schemas compiled as needed.
    pub async fn contract(&self) -> &Contract {
        self.contract
            .get_or_init(|| async {
                let request = Request::get("/openapi.json").body(Body::empty()).unwrap();
                let response = self.send_unchecked(request).await;
                assert_eq!(response.status, StatusCode::OK, "{}", response.text());
                Contract::new(response.json())
            })
            .await
    }

    pub async fn get(&self, key: Option<&str>, uri: &str) -> TestResponse {
        self.send(with_key(Request::get(uri), key).body(Body::empty()).unwrap()).await
    }

    pub async fn post(&self, key: Option<&str>, uri: &str) -> TestResponse {
        self.send(with_key(Request::post(uri), key).body(Body::empty()).unwrap()).await
    }

    pub async fn post_json(&self, key: Option<&str>, uri: &str, body: &Value) -> TestResponse {
        let request = with_key(Request::post(uri), key)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        self.send(request).await
    }

    /// `POST /v1/exports` as acme.
    pub async fn create(&self, body: &Value) -> TestResponse {
        self.post_json(Some(ACME_KEY), "/v1/exports", body).await
    }

    /// `POST /v1/exports/sync` as acme; returns the export, which must have completed.
    pub async fn create_completed(&self, body: &Value) -> Value {
        let response = self.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=30", body).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let export = response.json();
        assert_eq!(export["status"], "completed", "{export}");
        export
    }

    /// Polls acme's export `id` until `done` holds for it (at most 20 s).
    pub async fn wait_for(&self, id: &str, what: &str, done: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let export = self.get(Some(ACME_KEY), &format!("/v1/exports/{id}")).await.json();
            if done(&export) {
                return export;
            }
            assert!(tokio::time::Instant::now() < deadline, "export never became {what}: {export}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub async fn wait_for_status(&self, id: &str, status: &str) -> Value {
        self.wait_for(id, status, |e| e["status"] == status).await
    }

    /// Regular files under the data directory.
    pub fn files_in_data_dir(&self) -> Vec<std::path::PathBuf> {
        fn walk(dir: &std::path::Path, out: &mut Vec<std::path::PathBuf>) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if path.is_dir() {
                    walk(&path, out);
                } else {
                    out.push(path);
                }
            }
        }
        let mut files = Vec::new();
        if let Some(dir) = &self.data_dir {
            walk(dir.path(), &mut files);
        }
        files
    }
}

fn with_key(builder: http::request::Builder, key: Option<&str>) -> http::request::Builder {
    match key {
        Some(key) => builder.header("authorization", format!("Bearer {key}")),
        None => builder,
    }
}

impl TestAppBuilder {
    pub fn config(mut self, configure: impl FnOnce(&mut Config)) -> Self {
        configure(&mut self.config);
        self
    }

    pub fn users(self, count: u64) -> Self {
        self.config(|c| c.backends.demo_users = count)
    }

    /// Files in a fresh temporary directory instead of memory.
    pub fn local_storage(mut self) -> Self {
        let dir = tempfile::tempdir().unwrap();
        self.config.backends.storage = app::config::StorageKind::Local;
        self.config.backends.data_dir = dir.path().to_owned();
        self.data_dir = Some(dir);
        self
    }

    /// Exports stop after `rows` users until [`TestApp::open_gate`].
    pub fn gated_after(mut self, rows: u64) -> Self {
        self.gate = Some((rows, watch::channel(false).0));
        self
    }

    pub fn adapters(mut self, wrap: impl FnOnce(Adapters) -> Adapters + 'static) -> Self {
        self.wrappers.push(Box::new(wrap));
        self
    }

    pub async fn spawn(self) -> TestApp {
        let gate = self.gate.as_ref().map(|(rows, tx)| (*rows, tx.subscribe()));
        let storage = Arc::new(std::sync::Mutex::new(None));
        let seen = Arc::clone(&storage);
        let app = Application::build_with(self.config, move |mut adapters| {
            if let Some((open_after, gate)) = gate {
                adapters.users = Arc::new(GatedUsers { inner: adapters.users, open_after, gate });
            }
            for wrap in self.wrappers {
                adapters = wrap(adapters);
            }
            *seen.lock().unwrap() = Some(Arc::clone(&adapters.storage));
            adapters
        })
        .await
        .unwrap();
        let storage = storage.lock().unwrap().take().unwrap();
        TestApp {
            router: app.router(),
            contract: tokio::sync::OnceCell::new(),
            data_dir: self.data_dir,
            storage,
            gate: self.gate.map(|(_, tx)| tx),
        }
    }
}

#[derive(Debug)]
pub struct TestResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl TestResponse {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.text()))
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(|v| v.to_str().unwrap())
    }

    /// Asserts an RFC 9457 problem of `status` and type `…/problems/{slug}`; returns its body.
    #[track_caller]
    pub fn assert_problem(&self, status: StatusCode, slug: &str) -> Value {
        assert_eq!(self.status, status, "{}", self.text());
        assert_eq!(self.header("content-type"), Some("application/problem+json"), "{}", self.text());
        let problem = self.json();
        assert_eq!(problem["type"], format!("{PROBLEM_BASE}{slug}"), "{problem}");
        assert_eq!(problem["status"], status.as_u16(), "{problem}");
        assert!(problem["title"].as_str().is_some_and(|t| !t.is_empty()), "{problem}");
        assert!(problem["detail"].as_str().is_some_and(|d| !d.is_empty()), "{problem}");
        problem
    }

    /// The `field` of every entry of a validation problem's `errors`.
    pub fn error_fields(&self) -> Vec<String> {
        let problem = self.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        problem["errors"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| e["field"].as_str().unwrap().to_owned())
            .collect()
    }
}

pub fn csv_body() -> Value {
    json!({"format": "csv"})
}

/// Users that stop flowing after `open_after` rows until the gate opens.
struct GatedUsers {
    inner: Arc<dyn UserRepository>,
    open_after: u64,
    gate: watch::Receiver<bool>,
}

#[async_trait]
impl UserRepository for GatedUsers {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        let (gate, open_after) = (self.gate.clone(), self.open_after);
        self.inner
            .stream(scope, filter, after, limit)
            .enumerate()
            .then(move |(i, user)| {
                let mut gate = gate.clone();
                async move {
                    if i as u64 >= open_after {
                        let _ = gate.wait_for(|open| *open).await;
                    }
                    user
                }
            })
            .boxed()
    }

    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        self.inner.count(scope, filter).await
    }

    async fn ping(&self) -> Result<(), PortError> {
        self.inner.ping().await
    }
}

/// How a [`FailingExports`] or [`FailingStorage`] fails once switched on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// `PortError::Unavailable`: retryable.
    Unavailable,
    /// `PortError::Other`, with a secret in its message that must never reach a client.
    Other,
}

impl Failure {
    pub fn error(self) -> PortError {
        match self {
            Self::Unavailable => {
                PortError::unavailable(anyhow::anyhow!("connection refused by db-7.internal"))
            }
            Self::Other => PortError::Other(anyhow::anyhow!("password=hunter2 rejected by db-7.internal")),
        }
    }
}

/// Export records whose reads fail while `failing` is set.
pub struct FailingExports {
    pub inner: Arc<dyn ExportRepository>,
    pub failure: Failure,
    pub failing: Arc<AtomicBool>,
}

impl FailingExports {
    fn check(&self) -> Result<(), PortError> {
        if self.failing.load(Ordering::SeqCst) { Err(self.failure.error()) } else { Ok(()) }
    }
}

#[async_trait]
impl ExportRepository for FailingExports {
    async fn create_if_absent(&self, export: &Export) -> Result<CreateOutcome, PortError> {
        self.inner.create_if_absent(export).await
    }
    async fn create_within_quota(
        &self,
        export: &Export,
        max_unfinished: u32,
    ) -> Result<ports::QuotaCreateOutcome, PortError> {
        self.inner.create_within_quota(export, max_unfinished).await
    }
    async fn admit_waiting(
        &self,
        scope: &Scope,
        max_started: u32,
        now: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<Export>, PortError> {
        self.inner.admit_waiting(scope, max_started, now).await
    }
    async fn get(&self, scope: &Scope, id: ExportId) -> Result<Option<Export>, PortError> {
        self.check()?;
        self.inner.get(scope, id).await
    }
    async fn update_if_status(
        &self,
        export: &Export,
        expected: ExportStatus,
    ) -> Result<UpdateOutcome, PortError> {
        self.inner.update_if_status(export, expected).await
    }
    async fn list(&self, scope: &Scope, query: &ExportQuery) -> Result<ExportPage, PortError> {
        self.check()?;
        self.inner.list(scope, query).await
    }
    async fn list_unfinished(&self) -> Result<Vec<Export>, PortError> {
        self.inner.list_unfinished().await
    }
    async fn list_notify_due(
        &self,
        before: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Export>, PortError> {
        self.inner.list_notify_due(before, limit).await
    }
    async fn list_expired(
        &self,
        now: chrono::DateTime<chrono::Utc>,
        limit: usize,
    ) -> Result<Vec<Export>, PortError> {
        self.inner.list_expired(now, limit).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.check()?;
        self.inner.ping().await
    }
}

/// Storage that can fail to ping, fail every write, or pretend to sign URLs.
pub struct FailingStorage {
    pub inner: Arc<dyn ExportStorage>,
    pub ping_fails: bool,
    pub writes_fail: bool,
    pub signs: bool,
}

impl FailingStorage {
    pub fn wrap(inner: Arc<dyn ExportStorage>) -> Self {
        Self { inner, ping_fails: false, writes_fail: false, signs: false }
    }
}

#[async_trait]
impl ExportStorage for FailingStorage {
    async fn writer(&self, key: &ObjectKey) -> Result<Box<dyn ObjectWriter>, PortError> {
        if self.writes_fail {
            return Err(Failure::Unavailable.error());
        }
        self.inner.writer(key).await
    }
    async fn resume(
        &self,
        checkpoint: &UploadCheckpoint,
    ) -> Result<Option<Box<dyn ObjectWriter>>, PortError> {
        if self.writes_fail {
            return Err(Failure::Unavailable.error());
        }
        self.inner.resume(checkpoint).await
    }
    async fn discard(&self, checkpoint: &UploadCheckpoint) -> Result<(), PortError> {
        self.inner.discard(checkpoint).await
    }
    async fn open(&self, key: &ObjectKey) -> Result<Option<ObjectReader>, PortError> {
        self.inner.open(key).await
    }
    async fn signed_url(&self, key: &ObjectKey, ttl: Duration) -> Result<Option<Url>, PortError> {
        if self.signs {
            let url = format!("https://bucket.example.com/{}?expires={}", key.as_str(), ttl.as_secs());
            return Ok(Some(Url::parse(&url).unwrap()));
        }
        self.inner.signed_url(key, ttl).await
    }
    async fn delete(&self, key: &ObjectKey) -> Result<(), PortError> {
        self.inner.delete(key).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        if self.ping_fails {
            return Err(Failure::Unavailable.error());
        }
        self.inner.ping().await
    }
}
