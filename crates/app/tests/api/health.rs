use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use domain::{Scope, UserFilter, UserId};
use http::StatusCode;
use ports::{PortError, UserRepository, UserStream};
use serde_json::json;

use crate::helpers::{ACME_KEY, FailingStorage, TestApp};

const OPERATOR_KEY: &str = "operator-health-key-0b7e";

fn with_operator(config: &mut app::Config) {
    config.operator_keys = Some(format!("{OPERATOR_KEY}=batch").as_str().into());
}

#[tokio::test]
async fn healthz_says_ok() {
    let app = TestApp::spawn().await;

    let response = app.get(None, "/healthz").await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("content-type"), Some("application/json"));
    assert_eq!(response.json(), json!({"status": "ok"}));
}

#[tokio::test]
async fn readyz_tells_anyone_the_status_and_an_operator_every_dependency() {
    let app = TestApp::builder().local_storage().config(with_operator).spawn().await;

    let anyone = app.get(None, "/readyz").await;
    assert_eq!(anyone.status, StatusCode::OK, "{}", anyone.text());
    assert_eq!(anyone.json(), json!({"status": "ready"}));
    let tenant = app.get(Some(ACME_KEY), "/readyz").await;
    assert_eq!(tenant.json(), json!({"status": "ready"}), "a tenant key sees no details");

    let operator = app.get(Some(OPERATOR_KEY), "/readyz").await;
    assert_eq!(
        operator.json(),
        json!({"status": "ready", "checks": {"users": "ok", "exports": "ok", "storage": "ok", "orchestrator": "ok"}})
    );
    app.get(Some("not-a-key"), "/readyz").await.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn readyz_is_a_503_naming_the_dependency_that_is_down_to_an_operator_only() {
    let app = TestApp::builder()
        .config(with_operator)
        .adapters(|mut adapters| {
            adapters.storage =
                Arc::new(FailingStorage { ping_fails: true, ..FailingStorage::wrap(adapters.storage) });
            adapters
        })
        .spawn()
        .await;

    let anyone = app.get(None, "/readyz").await;
    let problem = anyone.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    assert!(problem.get("checks").is_none(), "{problem}");
    assert!(anyone.header("retry-after").is_some());

    let operator = app.get(Some(OPERATOR_KEY), "/readyz").await;
    let problem = operator.assert_problem(StatusCode::SERVICE_UNAVAILABLE, "not-ready");
    assert_eq!(
        problem["checks"],
        json!({"users": "ok", "exports": "ok", "storage": "unavailable", "orchestrator": "ok"})
    );
    assert!(!operator.text().contains("db-7"), "internal detail leaked");
}

/// Users whose readiness pings are counted, each taking `delay`.
struct CountedPings {
    inner: Arc<dyn UserRepository>,
    pings: Arc<AtomicUsize>,
    delay: Duration,
}

#[async_trait]
impl UserRepository for CountedPings {
    fn stream(
        &self,
        scope: &Scope,
        filter: &UserFilter,
        after: Option<UserId>,
        limit: Option<u64>,
    ) -> UserStream {
        self.inner.stream(scope, filter, after, limit)
    }
    async fn count(&self, scope: &Scope, filter: &UserFilter) -> Result<u64, PortError> {
        self.inner.count(scope, filter).await
    }
    async fn ping(&self) -> Result<(), PortError> {
        self.pings.fetch_add(1, Ordering::SeqCst);
        tokio::time::sleep(self.delay).await;
        self.inner.ping().await
    }
}

async fn spawn_counting(cache_s: u64, delay: Duration) -> (Arc<TestApp>, Arc<AtomicUsize>) {
    let pings = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&pings);
    let app = TestApp::builder()
        .config(|c| c.limits.readyz_cache_s = cache_s)
        .adapters(move |mut adapters| {
            adapters.users = Arc::new(CountedPings { inner: adapters.users, pings: counter, delay });
            adapters
        })
        .spawn()
        .await;
    (Arc::new(app), pings)
}

async fn hammer_readyz(app: &Arc<TestApp>, calls: usize) {
    let calls = (0..calls).map(|_| {
        let app = Arc::clone(app);
        tokio::spawn(async move { app.get(None, "/readyz").await.status })
    });
    for status in futures::future::join_all(calls).await {
        assert_eq!(status.unwrap(), StatusCode::OK);
    }
}

#[tokio::test]
async fn hammering_readyz_checks_the_dependencies_once_per_cache_period() {
    let (app, pings) = spawn_counting(3600, Duration::ZERO).await;
    let before = pings.load(Ordering::SeqCst);

    hammer_readyz(&app, 100).await;
    for _ in 0..50 {
        assert_eq!(app.get(None, "/readyz").await.status, StatusCode::OK);
    }

    assert_eq!(pings.load(Ordering::SeqCst) - before, 1, "150 calls, one check");
}

#[tokio::test]
async fn without_a_cache_concurrent_readyz_calls_still_share_checks() {
    let (app, pings) = spawn_counting(0, Duration::from_millis(50)).await;
    let before = pings.load(Ordering::SeqCst);

    hammer_readyz(&app, 100).await;

    let checks = pings.load(Ordering::SeqCst) - before;
    assert!((1..=2).contains(&checks), "{checks} checks for 100 concurrent calls");
    assert_eq!(app.get(None, "/readyz").await.status, StatusCode::OK);
    assert_eq!(pings.load(Ordering::SeqCst) - before, checks + 1, "a later call checks afresh");
}
