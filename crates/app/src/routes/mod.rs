//! The HTTP surface: routes, fallbacks and the layers every request goes through.

pub(crate) mod batches;
pub(crate) mod events;
pub(crate) mod exports;
pub(crate) mod health;
pub(crate) mod schedules;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use http::{Method, Request, Uri};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::{DefaultOnResponse, TraceLayer};
use tracing::{Level, Span};

use crate::http_metrics;
use crate::limits::{headers, load};
use crate::openapi;
use crate::problem::{self, ApiError};
use crate::state::AppState;

/// Largest request body accepted (`413` above).
pub const BODY_LIMIT_BYTES: usize = 64 * 1024;

/// Longest path echoed back in a `404` problem.
const MAX_ECHOED_PATH: usize = 200;

/// Every route; `/metrics` too unless metrics are served on a listener of their own.
pub fn router(state: AppState, serve_metrics: bool) -> Router {
    let limits = &state.limits;
    // Everything but the two routes below must answer within the request timeout.
    let bounded = Router::new()
        .route("/v1/exports", post(exports::create_export).get(exports::list_exports))
        .route("/v1/exports/batch", post(batches::create_batch))
        .route("/v1/exports/batch/{id}", get(batches::get_batch))
        .route("/v1/exports/{id}", get(exports::get_export))
        .route("/v1/exports/{id}/cancel", post(exports::cancel_export))
        .route("/v1/export-schedules", post(schedules::create_schedule).get(schedules::list_schedules))
        .route(
            "/v1/export-schedules/{id}",
            get(schedules::get_schedule).patch(schedules::patch_schedule).delete(schedules::delete_schedule),
        )
        .route("/v1/exports/{id}/download-link", get(exports::download_link))
        .route("/v1/export-schedules/preview", post(schedules::preview_schedule))
        .route("/v1/export-schedules/{id}/trigger", post(schedules::trigger_schedule))
        .route("/v1/events/export-requested", post(events::export_requested))
        .route("/openapi.json", get(openapi::openapi_json))
        .fallback(route_not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(from_fn_with_state(limits.request_timeout, load::time_limit));
    // The synchronous export waits up to its own bound (`?timeout_s`), then answers like any
    // request; a download answers once its stream or redirect is ready and streams untimed.
    let sync = Router::new()
        .route("/v1/exports/sync", post(exports::create_export_sync))
        .layer(from_fn_with_state(limits.request_timeout + state.sync.max_wait, load::time_limit));
    let download = Router::new().route("/v1/exports/{id}/download", get(exports::download_export));
    // Probes skip the in-flight bound: they must answer while the API sheds load.
    let mut probes =
        Router::new().route("/healthz", get(health::healthz)).route("/readyz", get(health::readyz));
    if serve_metrics {
        probes = probes.route("/metrics", get(http_metrics::metrics));
    }
    bounded
        .merge(sync)
        .merge(download)
        // The console's files: no key, so no rate limit; the page's API calls are limited as any.
        .merge(crate::console::router())
        .layer(from_fn_with_state(Arc::clone(&limits.in_flight), load::shed_load))
        .merge(probes)
        // Per route, so the matched route template is known.
        .layer(axum::middleware::from_fn(http_metrics::record))
        .layer(DefaultBodyLimit::max(BODY_LIMIT_BYTES))
        .with_state(state)
        .layer(
            ServiceBuilder::new()
                .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
                .layer(
                    TraceLayer::new_for_http()
                        .make_span_with(request_span)
                        .on_response(DefaultOnResponse::new().level(Level::INFO)),
                )
                .layer(PropagateRequestIdLayer::x_request_id())
                .layer(CatchPanicLayer::custom(problem::panic_response))
                .layer(axum::middleware::map_response(problem::problem_for_bare_errors))
                .layer(axum::middleware::from_fn(headers::rate_limit_headers)),
        )
}

/// One span per request; handlers fill in `tenant`, `environment` and `export_id`. In traces it
/// is the server span named after the method (the route is not known yet here), the root of
/// what the request starts.
fn request_span(request: &Request<Body>) -> Span {
    let request_id = request.headers().get("x-request-id").and_then(|v| v.to_str().ok()).unwrap_or_default();
    tracing::info_span!(
        "request",
        otel.name = %request.method(),
        otel.kind = "server",
        request_id,
        method = %request.method(),
        path = %request.uri().path(),
        tenant = tracing::field::Empty,
        environment = tracing::field::Empty,
        export_id = tracing::field::Empty,
        schedule_id = tracing::field::Empty,
    )
}

async fn route_not_found(method: Method, uri: Uri) -> ApiError {
    let mut path = uri.path().to_owned();
    if path.len() > MAX_ECHOED_PATH {
        let cut = (0..=MAX_ECHOED_PATH).rev().find(|i| path.is_char_boundary(*i)).unwrap_or(0);
        path.truncate(cut);
        path.push('…');
    }
    ApiError::RouteNotFound { method: method.to_string(), path }
}

async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}
