//! Load shedding and the request timeout, as middleware over the API routes (not the probes).

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::Semaphore;

use crate::problem::ApiError;

/// Middleware: at most as many requests at once as the semaphore has permits; one more is
/// answered `503` with `Retry-After` at once rather than queued behind the others. A response
/// whose body streams (a download) gives its permit back once its headers are out.
pub async fn shed_load(State(in_flight): State<Arc<Semaphore>>, request: Request, next: Next) -> Response {
    let Ok(permit) = in_flight.try_acquire_owned() else {
        return ApiError::Overloaded.into_response();
    };
    let response = next.run(request).await;
    drop(permit);
    response
}

/// Middleware: a request (reading its body included) that has no response within the limit
/// is abandoned and answered `503`. Work it started in the background (an export) goes on; a
/// retry with the same `Idempotency-Key` finds it.
pub async fn time_limit(State(limit): State<Duration>, request: Request, next: Next) -> Response {
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => {
            tracing::warn!(timeout_ms = limit.as_millis() as u64, "request timed out");
            ApiError::TimedOut { after: limit }.into_response()
        }
    }
}
