//! Liveness and readiness probes. Neither needs an API key.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use http::header::{CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderValue, StatusCode};
use ports::PortError;
use tracing::warn;

use crate::dto::{CheckStatus, Health, NotReadyProblem, Readiness};
use crate::problem::{PROBLEM_JSON, Problem};
use crate::state::AppState;

/// Bound on each dependency's answer to a readiness ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "Alive.", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned() })
}

/// Readiness: every dependency answers (user store, export store, file storage, orchestrator, and
/// the NATS connection of the event consumer when one runs).
#[utoipa::path(
    get, path = "/readyz", tag = "health", security(()),
    responses(
        (status = 200, description = "Ready to serve.", body = Readiness),
        (status = 503, description = "A dependency does not answer; `checks` says which.",
         body = NotReadyProblem, content_type = "application/problem+json", headers(("Retry-After" = u32))),
    )
)]
pub async fn readyz(State(state): State<AppState>) -> Response {
    let deps = &state.dependencies;
    let (users, exports, storage, orchestrator) = tokio::join!(
        check("users", deps.users.ping()),
        check("exports", deps.exports.ping()),
        check("storage", deps.storage.ping()),
        check("orchestrator", deps.orchestrator.ping()),
    );
    let mut checks: BTreeMap<String, CheckStatus> =
        [users, exports, storage, orchestrator].into_iter().map(|(name, s)| (name.to_owned(), s)).collect();
    if let Some(events) = &deps.events {
        let (name, status) = check("events", events.ping()).await;
        checks.insert(name.to_owned(), status);
    }
    if checks.values().all(|s| *s == CheckStatus::Ok) {
        return Json(Readiness { status: "ready".to_owned(), checks }).into_response();
    }
    let problem = Problem::new(
        "not-ready",
        "Not ready",
        StatusCode::SERVICE_UNAVAILABLE,
        "A dependency of the service does not answer; see checks.",
    );
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, Json(NotReadyProblem { problem, checks })).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Pings one dependency; failures are logged here, never returned to the (unauthenticated) caller.
async fn check(
    name: &'static str,
    ping: impl Future<Output = Result<(), PortError>>,
) -> (&'static str, CheckStatus) {
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(())) => (name, CheckStatus::Ok),
        Ok(Err(err)) => {
            warn!(dependency = name, error = %format!("{err:#}"), "readiness check failed");
            (name, CheckStatus::Unavailable)
        }
        Err(_) => {
            warn!(
                dependency = name,
                timeout_ms = PING_TIMEOUT.as_millis() as u64,
                "readiness check timed out"
            );
            (name, CheckStatus::Unavailable)
        }
    }
}
