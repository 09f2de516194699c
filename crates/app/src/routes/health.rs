//! Liveness and readiness probes. Neither needs an API key, and neither is subject to load
//! shedding or the request timeout.

use axum::Json;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::header::{AUTHORIZATION, CONTENT_TYPE, RETRY_AFTER};
use http::request::Parts;
use http::{HeaderValue, StatusCode};

use crate::auth::bearer_token;
use crate::dto::{CheckStatus, Health, NotReadyProblem, Readiness};
use crate::problem::{ApiError, PROBLEM_JSON, Problem};
use crate::state::AppState;

/// Liveness: the process is up and serving HTTP.
#[utoipa::path(
    get, path = "/healthz", tag = "health", security(()),
    responses((status = 200, description = "Alive.", body = Health))
)]
pub async fn healthz() -> Json<Health> {
    Json(Health { status: "ok".to_owned() })
}

/// Readiness: every dependency answers (user store, export store, file storage, orchestrator, and
/// the NATS connection of the event consumer when one runs), as of the last check (at most
/// `USEREXPORT_READYZ_CACHE_S` old). Anyone gets the status; the per-dependency `checks` only
/// come with an operator key (`Authorization: Bearer <operator key>`).
#[utoipa::path(
    get, path = "/readyz", tag = "health", security((), ("bearer" = [])),
    responses(
        (status = 200, description = "Ready to serve; `checks` with an operator key only.", body = Readiness),
        (status = 401, description = "An `Authorization` header with a key that is neither an operator nor a tenant key.",
         body = Problem, content_type = "application/problem+json", headers(("WWW-Authenticate" = String))),
        (status = 429, description = "This address failed authentication too often (`auth-throttled`).",
         body = Problem, content_type = "application/problem+json", headers(("Retry-After" = u32))),
        (status = 503, description = "A dependency does not answer; `checks` (operator key only) says which.",
         body = NotReadyProblem, content_type = "application/problem+json", headers(("Retry-After" = u32))),
    )
)]
pub async fn readyz(State(state): State<AppState>, request: Request) -> Response {
    let (parts, _) = request.into_parts();
    let details = match operator_asks(&state, &parts) {
        Ok(details) => details,
        Err(err) => return err.into_response(),
    };
    let checks = state.readiness.checks(&state.dependencies).await;
    let ready = checks.values().all(|s| *s == CheckStatus::Ok);
    let checks = details.then_some(checks);
    if ready {
        return Json(Readiness { status: "ready".to_owned(), checks }).into_response();
    }
    let problem = Problem::new(
        "not-ready",
        "Not ready",
        StatusCode::SERVICE_UNAVAILABLE,
        "A dependency of the service does not answer.",
    );
    let mut response =
        (StatusCode::SERVICE_UNAVAILABLE, Json(NotReadyProblem { problem, checks })).into_response();
    response.headers_mut().insert(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON));
    response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static("5"));
    response
}

/// Whether the caller may see the checks: an operator key, yes; no key or a tenant key, no; any
/// other key is a failed authentication (throttled per address like every other).
fn operator_asks(state: &AppState, parts: &Parts) -> Result<bool, ApiError> {
    if !parts.headers.contains_key(AUTHORIZATION) {
        return Ok(false);
    }
    let limits = &state.limits;
    limits.admit(&parts.extensions)?;
    let token = bearer_token(parts).map_err(|err| limits.failed(&parts.extensions, err))?;
    if state.operators.authenticate(token).is_some() {
        Ok(true)
    } else if state.keys.authenticate(token).is_some() {
        Ok(false)
    } else {
        Err(limits.failed(&parts.extensions, ApiError::Unauthenticated { presented: true }))
    }
}
