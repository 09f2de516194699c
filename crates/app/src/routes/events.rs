//! `POST /v1/events/export-requested`: the `ExportRequested` event over HTTP, for producers that
//! cannot reach NATS. No API key: the HMAC signature with the tenant's webhook secret is the
//! authentication, checked before anything is parsed beyond the tenant or started.

use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::response::Response;
use chrono::Utc;
use domain::events::{claimed_event_id, claimed_scope};
use domain::signature::{self, SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER};
use domain::{EventError, ExportRequested};
use http::{HeaderMap, StatusCode};
use service::RequestError;
use tracing::{Span, info, warn};
use utoipa::ToSchema;

use crate::dto::{CreateExportRequest, ExportResource};
use crate::problem::{ApiError, Problem};
use crate::routes::exports::{export_response, nested, record_export_id};
use crate::state::AppState;

/// Stands in for the secret of a tenant that has none, so that an unknown tenant costs the same
/// work and gets the same answer as a wrong signature. Never accepted (see below).
const NO_SECRET: &[u8] = b"userexport: no webhook secret for this tenant";

/// An `ExportRequested` event (the same document as on NATS).
/// Only documents the API: the handler validates the raw body with `ExportRequested`.
#[derive(Debug, ToSchema)]
#[allow(dead_code)]
#[schema(example = json!({"event_id": "evt-2026-11-25-0001", "tenant_id": "acme", "environment_id": "prod",
                          "occurred_at": "2026-11-25T10:00:00Z", "request": {"format": "csv"}}))]
pub struct ExportRequestedEvent {
    /// The producer's unique ID of the event (1 to 200 printable ASCII characters, no spaces);
    /// the export's idempotency key is `event:{event_id}`.
    #[schema(pattern = "^[!-~]{1,200}$")]
    pub event_id: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub tenant_id: String,
    #[schema(pattern = "^[a-z0-9][a-z0-9_-]{0,62}$")]
    pub environment_id: String,
    /// When the producer emitted the event (RFC 3339); informational.
    #[schema(format = DateTime)]
    pub occurred_at: Option<String>,
    /// The export request, as for `POST /v1/exports`.
    pub request: CreateExportRequest,
}

/// Request an export with a signed `ExportRequested` event.
///
/// Sign the raw body: `X-Userexport-Timestamp: <unix seconds>` and
/// `X-Userexport-Signature: v1=<hex HMAC-SHA256(tenant webhook secret, "{timestamp}.{body}")>`
/// (several comma-separated `v1=` values are accepted while a secret is rotated). Timestamps more
/// than the replay window (default 300 s) from the server's clock are refused. The same event ID
/// always gives the same export: `202` when this call created it, `200` with
/// `Idempotent-Replayed: true` when an earlier delivery (webhook or NATS) did.
#[utoipa::path(
    post, path = "/v1/events/export-requested", tag = "events", security(()),
    params(
        ("X-Userexport-Timestamp" = i64, Header, description = "Unix seconds when the request was signed."),
        ("X-Userexport-Signature" = String, Header,
         description = "`v1=<hex>`, comma-separated for rotation."),
    ),
    request_body(content = ExportRequestedEvent, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the export runs in the background; poll `Location` with an API key.",
         body = ExportResource, headers(
            ("Location" = String, description = "The export's URL."),
            ("Retry-After" = u32, description = "Present while the export is unfinished: seconds before polling."))),
        (status = 200, description = "Replay: this event ID already requested this export.",
         body = ExportResource, headers(
            ("Location" = String, description = "The export's URL."),
            ("Idempotent-Replayed" = String, description = "`true`."),
            ("Retry-After" = u32, description = "Present while the export is unfinished: seconds before polling."))),
        (status = 401, description = "Signature headers missing or malformed, timestamp outside the replay window, \
         or no matching signature (also for unknown tenants and malformed bodies). Nothing was started.",
         body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String, description = "The `Userexport-Signature` challenge."))),
        (status = 422, description = "Invalid event fields or export request (all listed in `errors`, the request's \
         as `request.…`), or an event ID already used for a different request (`idempotency-key-reused`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn export_requested(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::UnreadableBody(rejection.body_text())
        }
    })?;
    authenticate(&state, &headers, &body)?;
    let event = ExportRequested::from_slice(&body).map_err(|err| match err {
        EventError::InvalidJson(detail) => ApiError::MalformedJson(detail),
        EventError::InvalidEvent(errors) | EventError::InvalidRequest(errors) => ApiError::Validation(errors),
    })?;
    let key = event.idempotency_key();
    let requested =
        state.service.request(&event.scope, event.spec, Some(key)).await.map_err(|err| match err {
            // The service's limits (retention) name fields of the export request: here `request.…`.
            RequestError::Invalid(errors) => ApiError::Validation(nested("request", &errors)),
            other => other.into(),
        })?;
    record_export_id(requested.export.id);
    info!(event_id = %event.event_id, export_id = %requested.export.id, created = requested.created,
          "ExportRequested webhook accepted");
    let status = if requested.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok(export_response(status, &requested.export, !requested.created))
}

/// Verifies the signature with the secret of the tenant the body names. Every failure, including
/// a body naming no tenant or an unknown one, is a `401` that tells nothing about which tenants exist.
fn authenticate(state: &AppState, headers: &HeaderMap, body: &[u8]) -> Result<(), ApiError> {
    let scope = claimed_scope(body);
    if let Some(scope) = &scope {
        let span = Span::current();
        span.record("tenant", tracing::field::display(&scope.tenant));
        span.record("environment", tracing::field::display(&scope.environment));
    }
    let secret = scope.as_ref().and_then(|s| state.tenants.get(s)).and_then(|t| t.webhook_secret.as_ref());
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok());
    let verified = signature::verify(
        secret.map_or(NO_SECRET, |s| s.expose()),
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        body,
        Utc::now().timestamp(),
        state.webhook_replay_window,
    );
    let verified = match verified {
        // Anyone can sign with NO_SECRET: it proves nothing.
        Ok(()) if secret.is_none() => Err(SignatureError::Mismatch),
        other => other,
    };
    verified.map_err(|reason| {
        let scope = scope.map(|s| s.to_string()).unwrap_or_default();
        let event_id = claimed_event_id(body).unwrap_or_default();
        warn!(%scope, event_id, known_secret = secret.is_some(), reason = %reason, "ExportRequested webhook refused");
        ApiError::InvalidSignature(reason)
    })
}
