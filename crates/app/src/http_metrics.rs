//! HTTP request metrics, and `GET /metrics` (Prometheus text exposition).
//!
//! Requests are labelled by the matched route template (`/v1/exports/{id}`, never the path
//! with its IDs), the method and the status, so the label sets stay bounded whatever clients
//! send; a path no route matches is `unmatched`.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::Method;
use http::header::CONTENT_TYPE;
use metrics::{counter, histogram};
use service::meters;

/// Counts the request and times it until its response head.
pub async fn record(matched: Option<MatchedPath>, request: Request, next: Next) -> Response {
    let route = matched.as_ref().map_or("unmatched", MatchedPath::as_str).to_owned();
    let method = method_label(request.method());
    let started = Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16().to_string();
    counter!(meters::HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.clone())
        .increment(1);
    histogram!(meters::HTTP_DURATION, "route" => route, "method" => method, "status" => status)
        .record(started.elapsed().as_secs_f64());
    response
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// `GET /metrics`: open like the probes (no key, no rate limit, outside the in-flight bound);
/// it shows counts by route, status, format and error code, never a tenant or an ID. Deployments
/// that must keep it off the API's port set `USEREXPORT_METRICS_LISTEN`.
pub async fn metrics() -> impl IntoResponse {
    ([(CONTENT_TYPE, wiring::metrics::CONTENT_TYPE_TEXT)], wiring::metrics::render())
}
