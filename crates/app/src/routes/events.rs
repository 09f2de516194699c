//! `POST /v1/events/export-requested`: the `ExportRequested` event over HTTP, for producers that
//! cannot reach NATS. No API key: the HMAC signature with the tenant's webhook secret is the
//! authentication. The headers (tenant, timestamp window, signature format) are checked before
//! the body is read, so an unauthenticated sender cannot make the server read 64 KiB; then the
//! body (at most 64 KiB), then its signature, before anything is parsed or started.
//!
//! Refusing an unknown tenant before reading the body shows, by timing, which tenants exist;
//! tenant IDs are not secrets, and failed attempts are throttled per address like every 401.

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use chrono::Utc;
use domain::events::claimed_event_id;
use domain::signature::{SIGNATURE_HEADER, SignatureError, SignedHeaders, TIMESTAMP_HEADER};
use domain::{EventError, ExportOrigin, ExportRequested, Scope, ValidationErrors};
use http::{HeaderMap, StatusCode};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use service::{RequestError, meters};
use tracing::{Span, info, warn};
use utoipa::ToSchema;

use crate::dto::{CreateExportRequest, ExportResource};
use crate::problem::{ApiError, Problem};
use crate::routes::BODY_LIMIT_BYTES;
use crate::routes::exports::{export_response, nested, record_export_id};
use crate::state::AppState;

/// The scope the request claims to come from, `tenant/environment`: its webhook secret is the
/// key of the signature, so it is known before the body is read.
pub const TENANT_HEADER: &str = "X-Userexport-Tenant";

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
/// Name the tenant in `X-Userexport-Tenant: <tenant>/<environment>` (the body must name the same)
/// and sign the raw body: `X-Userexport-Timestamp: <unix seconds>` and
/// `X-Userexport-Signature: v1=<hex HMAC-SHA256(tenant webhook secret, "{timestamp}.{body}")>`
/// (several comma-separated `v1=` values are accepted while a secret is rotated). Timestamps more
/// than the replay window (default 300 s) from the server's clock are refused. The same event ID
/// always gives the same export: `202` when this call created it, `200` with
/// `Idempotent-Replayed: true` when an earlier delivery (webhook or NATS) did.
#[utoipa::path(
    post, path = "/v1/events/export-requested", tag = "events", security(()),
    params(
        ("X-Userexport-Tenant" = String, Header, description = "`tenant/environment` of the event, as in its body."),
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
        (status = 401, description = "Tenant or signature headers missing or malformed, timestamp outside the replay window, \
         or no matching signature (also for unknown tenants and malformed bodies). Nothing was started.",
         body = Problem, content_type = "application/problem+json",
         headers(("WWW-Authenticate" = String, description = "The `Userexport-Signature` challenge."))),
        (status = 422, description = "Invalid event fields or export request (all listed in `errors`, the request's \
         as `request.…`), a body naming another scope than `X-Userexport-Tenant`, or an event ID already used for a different request (`idempotency-key-reused`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn export_requested(State(state): State<AppState>, request: Request) -> Result<Response, ApiError> {
    let (parts, body) = request.into_parts();
    let limits = &state.limits;
    limits.admit(&parts.extensions)?;
    let refuse = |reason: SignatureError, scope: Option<&Scope>| {
        warn!(scope = %scope.map(Scope::to_string).unwrap_or_default(), reason = %reason,
              "ExportRequested webhook refused");
        rejected(signature_reason(&reason));
        limits.failed(&parts.extensions, ApiError::InvalidSignature(reason))
    };
    // Everything the headers can prove wrong is refused before a byte of the body is read.
    let scope = claimed_tenant(&parts.headers).map_err(|reason| refuse(reason, None))?;
    record_scope(&scope);
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
    let signed = SignedHeaders::parse(
        header(TIMESTAMP_HEADER),
        header(SIGNATURE_HEADER),
        Utc::now().timestamp(),
        state.webhook_replay_window,
    )
    .map_err(|reason| refuse(reason, Some(&scope)))?;
    // An unknown tenant, or one without a secret, is answered as a wrong signature is.
    let secret = state.tenants.get(&scope).and_then(|t| t.webhook_secret.as_ref());
    let secret = secret.ok_or_else(|| refuse(SignatureError::Mismatch, Some(&scope)))?;
    let body = read_body(body).await?;
    signed.verify(secret.expose(), &body).map_err(|reason| {
        let event_id = claimed_event_id(&body).unwrap_or_default();
        warn!(event_id, "ExportRequested webhook signature does not match");
        refuse(reason, Some(&scope))
    })?;
    limits.per_tenant(&parts.extensions, &scope)?;
    let event = ExportRequested::from_slice(&body).inspect_err(|err| rejected(err.code()));
    let event = event.map_err(|err| match err {
        EventError::InvalidJson(detail) => ApiError::MalformedJson(detail),
        EventError::InvalidEvent(errors) | EventError::InvalidRequest(errors) => ApiError::Validation(errors),
    })?;
    if event.scope != scope {
        let mut errors = ValidationErrors::new();
        errors.add(
            "tenant_id",
            "invalid_value",
            format!("tenant_id and environment_id must name the {TENANT_HEADER} header's scope, {scope}"),
        );
        rejected("scope_mismatch");
        return Err(ApiError::Validation(errors));
    }
    let key = event.idempotency_key();
    let requested =
        state.service.request_from(ExportOrigin::Event, &event.scope, event.spec, Some(key)).await.map_err(
            |err| match err {
                // The service's limits (retention) name fields of the export request: here `request.…`.
                RequestError::Invalid(errors) => ApiError::Validation(nested("request", &errors)),
                other => other.into(),
            },
        )?;
    record_export_id(requested.export.id);
    info!(event_id = %event.event_id, export_id = %requested.export.id, created = requested.created,
          "ExportRequested webhook accepted");
    let outcome = if requested.created { "started" } else { "duplicate" };
    metrics::counter!(meters::EVENTS_CONSUMED, "source" => "webhook", "outcome" => outcome).increment(1);
    let status = if requested.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok(export_response(status, &requested.export, !requested.created))
}

fn rejected(reason: &'static str) {
    metrics::counter!(meters::WEBHOOK_REJECTIONS, "reason" => reason).increment(1);
}

/// A bounded label for why a signature check failed.
fn signature_reason(err: &SignatureError) -> &'static str {
    match err {
        SignatureError::MissingHeader(_) => "missing_header",
        SignatureError::Malformed(_) => "malformed_header",
        SignatureError::Stale { .. } => "stale_timestamp",
        SignatureError::Mismatch => "signature_mismatch",
    }
}

/// The scope of `X-Userexport-Tenant: tenant/environment`.
fn claimed_tenant(headers: &HeaderMap) -> Result<Scope, SignatureError> {
    let value = headers.get(TENANT_HEADER).ok_or(SignatureError::MissingHeader(TENANT_HEADER))?;
    value
        .to_str()
        .ok()
        .and_then(|raw| Scope::parse(raw.trim()).ok())
        .ok_or(SignatureError::Malformed(TENANT_HEADER))
}

fn record_scope(scope: &Scope) {
    let span = Span::current();
    span.record("tenant", tracing::field::display(&scope.tenant));
    span.record("environment", tracing::field::display(&scope.environment));
}

/// The body, up to [`BODY_LIMIT_BYTES`] (`413` beyond, before reading it when `Content-Length`
/// says so already).
async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    use axum::body::HttpBody as _;
    if body.size_hint().lower() > BODY_LIMIT_BYTES as u64 {
        return Err(ApiError::PayloadTooLarge);
    }
    match Limited::new(body, BODY_LIMIT_BYTES).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.is::<LengthLimitError>() => Err(ApiError::PayloadTooLarge),
        Err(err) => Err(ApiError::UnreadableBody(err.to_string())),
    }
}
