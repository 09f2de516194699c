//! `/v1/exports`: request, wait for, read, list, download and cancel exports.
//!
//! Handlers only translate: HTTP in (validated into domain values), a service call, HTTP out.
//! Errors go through [`ApiError`], mapped in one place.

use std::time::Duration;

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use domain::ValidationErrors;
use domain::{
    Compression, Export, ExportId, ExportSpec, ExportStatus, IdParseError, IdempotencyKey, ListCursor,
};
use futures::TryStreamExt;
use http::header::{CACHE_CONTROL, CONTENT_DISPOSITION, CONTENT_LENGTH, CONTENT_TYPE, LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ports::ExportQuery;
use serde_json::Value;
use service::DownloadContent;
use tracing::{Span, warn};

use crate::auth::Authenticated;
use crate::dto::{CreateExportRequest, DownloadLinkResource, ExportList, ExportResource, export_path};
use crate::problem::{ApiError, Problem};
use crate::state::{AppState, SyncLimits};

const IDEMPOTENCY_KEY: &str = "Idempotency-Key";
const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
const CHECKSUM_SHA256: HeaderName = HeaderName::from_static("x-checksum-sha256");
/// Seconds a client should wait before polling an unfinished export again.
const POLL_AFTER_S: &str = "1";
pub(crate) const LIST_LIMIT_DEFAULT: usize = 20;
const LIST_LIMIT_MAX: usize = 100;

/// Request an export; it runs in the background.
///
/// With an `Idempotency-Key`, repeating the same request returns the same export (`200`,
/// `Idempotent-Replayed: true`) instead of starting another; reusing the key for a different
/// request is rejected.
#[utoipa::path(
    post, path = "/v1/exports", tag = "exports",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "Client-chosen key (printable ASCII, at most 255 characters) that makes retries safe.")),
    request_body(content = CreateExportRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the export runs in the background; poll `Location`.",
         body = ExportResource, headers(
            ("Location" = String, description = "The export's URL."),
            ("Retry-After" = u32, description = "Present while the export is unfinished: seconds before polling."))),
        (status = 200, description = "Replay: an earlier request with the same Idempotency-Key and body.",
         body = ExportResource, headers(
            ("Location" = String, description = "The export's URL."),
            ("Idempotent-Replayed" = String, description = "`true`."),
            ("Retry-After" = u32, description = "Present while the export is unfinished: seconds before polling."))),
        (status = 422, description = "Invalid fields or Idempotency-Key (`validation`, all listed in `errors`), \
         or an Idempotency-Key reused for a different request (`idempotency-key-reused`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_export(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let mut errors = ValidationErrors::new();
    let key = idempotency_key(&headers, &mut errors);
    let spec = errors.absorb(ExportSpec::from_json(&body));
    let spec = valid(spec, errors)?;
    let requested = state.service.request(&scope, spec, key).await?;
    record_export_id(requested.export.id);
    let status = if requested.created { StatusCode::ACCEPTED } else { StatusCode::OK };
    Ok(export_response(status, &requested.export, !requested.created))
}

/// Request an export and wait for it, at most `timeout_s` seconds.
///
/// Answers `200` with the finished export (completed, failed or cancelled: check `status`), or
/// `202` with `Location` when it is still running at the deadline. A `timeout_s` above the
/// server's maximum is refused rather than silently shortened.
#[utoipa::path(
    post, path = "/v1/exports/sync", tag = "exports",
    params(
        ("timeout_s" = Option<u64>, Query, minimum = 0, maximum = 60,
         description = "Seconds to wait (default 30); `maximum` is this server's limit \
                        (`USEREXPORT_SYNC_TIMEOUT_MAX_S`), above it the answer is a `422`."),
        ("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
         description = "As for `POST /v1/exports`."),
    ),
    request_body(content = CreateExportRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The export finished within the wait (any terminal status).",
         body = ExportResource, headers(
            ("Location" = String, description = "The export's URL."),
            ("Idempotent-Replayed" = String, description = "Present on a replay of an earlier request: `true`."))),
        (status = 202, description = "Still running at the deadline; poll `Location`.", body = ExportResource,
         headers(
            ("Location" = String, description = "The export's URL."),
            ("Retry-After" = u32, description = "Seconds before polling."),
            ("Idempotent-Replayed" = String, description = "Present on a replay of an earlier request: `true`."))),
        (status = 422, description = "Invalid fields, `timeout_s` or Idempotency-Key (`validation`, all listed \
         in `errors`), or an Idempotency-Key reused for a different request (`idempotency-key-reused`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn create_export_sync(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let mut errors = ValidationErrors::new();
    let wait = sync_wait(query.as_deref(), state.sync, &mut errors);
    let key = idempotency_key(&headers, &mut errors);
    let spec = errors.absorb(ExportSpec::from_json(&body));
    let spec = valid(spec, errors)?;
    let requested = state.service.request_and_wait(&scope, spec, key, wait).await?;
    let export = &requested.export;
    record_export_id(export.id);
    if export.status().is_terminal() {
        Ok(export_response(StatusCode::OK, export, !requested.created))
    } else {
        Ok(export_response(StatusCode::ACCEPTED, export, !requested.created))
    }
}

/// Read an export. While it is unfinished the response carries `Retry-After`.
#[utoipa::path(
    get, path = "/v1/exports/{id}", tag = "exports",
    params(("id" = Uuid, Path, description = "Export ID")),
    responses(
        (status = 200, description = "The export.", body = ExportResource,
         headers(("Retry-After" = u32, description = "Present while the export is unfinished: seconds before polling."))),
        (status = 404, description = "No such export for this API key (including malformed IDs and other \
         tenants' exports).", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_export(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = export_id(id)?;
    let export = state.service.get(&scope, id).await?;
    let mut response = Json(ExportResource::from(&export)).into_response();
    if !export.status().is_terminal() {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(POLL_AFTER_S));
    }
    Ok(response)
}

/// List exports, newest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/exports", tag = "exports",
    params(
        ("status" = Option<crate::dto::ExportStatusBody>, Query, description = "Only exports in this status."),
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size, default 20."),
        ("cursor" = Option<String>, Query, min_length = 1, pattern = "^[A-Za-z0-9_-]+$",
         description = "`next_cursor` of the previous page, unchanged (leave the parameter out for the first page)."),
    ),
    responses(
        (status = 200, description = "A page of exports.", body = ExportList),
        (status = 422, description = "Invalid `status`, `limit` or `cursor` (`validation`, all listed in `errors`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn list_exports(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<ExportList>, ApiError> {
    let query = list_query(query.as_deref())?;
    let page = state.service.list(&scope, &query).await?;
    Ok(Json(ExportList {
        items: page.items.iter().map(ExportResource::from).collect(),
        next_cursor: page.next.map(|cursor| cursor.encode()),
    }))
}

/// Download a completed export's file.
///
/// Streams the file (`.gz` files are `application/gzip`, without `Content-Encoding`), or
/// redirects to a short-lived URL when the storage can sign one.
#[utoipa::path(
    get, path = "/v1/exports/{id}/download", tag = "exports",
    params(("id" = Uuid, Path, description = "Export ID")),
    responses(
        (status = 200, description = "The file.", content(
            (String = "text/csv"), (String = "application/json"), (String = "application/x-ndjson"),
            (String = "application/gzip")),
         headers(
            ("Content-Disposition" = String, description = "attachment; filename=\"export-{id}.{ext}\""),
            ("Content-Length" = u64, description = "Size of the file in bytes."),
            ("Cache-Control" = String, description = "`private, no-store`."),
            ("X-Checksum-Sha256" = String, description = "Lowercase hex SHA-256 of the file."))),
        (status = 307, description = "Download from the URL in `Location` (valid for a short time).",
         headers(
            ("Location" = String, description = "A short-lived signed URL of the file."),
            ("Cache-Control" = String, description = "`no-store`."))),
        (status = 404, description = "No such export for this API key.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The export is not completed (`export-not-ready`).", body = Problem,
         content_type = "application/problem+json"),
        (status = 410, description = "The file is gone: retention deleted it (`export-expired`), or it vanished (`export-gone`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn download_export(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = export_id(id)?;
    let download = state.service.download(&scope, id).await?;
    let reader = match download.content {
        DownloadContent::Redirect(url) => {
            let location = HeaderValue::from_str(url.as_str()).map_err(|e| {
                ApiError::Internal(anyhow::Error::new(e).context("signed URL is not a header value"))
            })?;
            return Ok((
                StatusCode::TEMPORARY_REDIRECT,
                [(LOCATION, location), (CACHE_CONTROL, HeaderValue::from_static("no-store"))],
            )
                .into_response());
        }
        DownloadContent::Stream(reader) => reader,
    };
    let export = &download.export;
    let content_type = match export.spec.compression {
        Compression::Gzip => "application/gzip",
        Compression::None => export.spec.format.content_type(),
    };
    let disposition = format!("attachment; filename=\"export-{}.{}\"", export.id, export.spec.extension());
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(CONTENT_LENGTH, HeaderValue::from(reader.size));
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("private, no-store"));
    if let Ok(value) = HeaderValue::from_str(&disposition) {
        headers.insert(CONTENT_DISPOSITION, value);
    }
    if let Some(sha256) = export.outcome().and_then(|o| HeaderValue::from_str(&o.sha256).ok()) {
        headers.insert(CHECKSUM_SHA256, sha256);
    }
    let body = reader.body.inspect_err(move |err| {
        warn!(export_id = %id, error = %format!("{err:#}"), "download stream failed; the response is cut short");
    });
    Ok((headers, Body::from_stream(body)).into_response())
}

/// A signed link to a completed export's file.
///
/// For clients that cannot follow the download's `307` with their key, such as a web page
/// (the link is on the storage's origin): fetch the file from `url` without any key before
/// `expires_at`, and check it against `sha256`. Storages that cannot sign (local files) have
/// no links: their files come from `GET /v1/exports/{id}/download`.
#[utoipa::path(
    get, path = "/v1/exports/{id}/download-link", tag = "exports",
    params(("id" = Uuid, Path, description = "Export ID")),
    responses(
        (status = 200, description = "A signed link, valid until `expires_at`.", body = DownloadLinkResource,
         headers(("Cache-Control" = String, description = "`no-store`."))),
        (status = 404, description = "No such export for this API key.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The export is not completed (`export-not-ready`), or the storage cannot sign links (`download-link-unavailable`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 410, description = "Retention deleted the file (`export-expired`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn download_link(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = export_id(id)?;
    let link = state.service.download_link(&scope, id).await?.ok_or(ApiError::DownloadLinkUnavailable)?;
    let export = &link.export;
    let body = DownloadLinkResource {
        url: link.url.to_string(),
        expires_at: link.expires_at,
        filename: format!("export-{}.{}", export.id, export.spec.extension()),
        sha256: export.outcome().map(|o| o.sha256.clone()),
        size_bytes: export.outcome().map(|o| o.bytes),
    };
    Ok(([(CACHE_CONTROL, HeaderValue::from_static("no-store"))], Json(body)).into_response())
}

/// Cancel an unfinished export. It ends `cancelled` and leaves no file; the response may still
/// show it `running` for a moment.
#[utoipa::path(
    post, path = "/v1/exports/{id}/cancel", tag = "exports",
    params(("id" = Uuid, Path, description = "Export ID")),
    responses(
        (status = 202, description = "Cancellation requested.", body = ExportResource),
        (status = 404, description = "No such export for this API key.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The export already finished (`export-already-finished`).",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn cancel_export(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = export_id(id)?;
    let export = state.service.cancel(&scope, id).await?;
    Ok((StatusCode::ACCEPTED, Json(ExportResource::from(&export))).into_response())
}

/// `status` with the export as body and `Location`; `Retry-After` while unfinished.
pub(super) fn export_response(status: StatusCode, export: &Export, replayed: bool) -> Response {
    let mut response = (status, Json(ExportResource::from(export))).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&export_path(export.id)) {
        headers.insert(LOCATION, location);
    }
    if !export.status().is_terminal() {
        headers.insert(RETRY_AFTER, HeaderValue::from_static(POLL_AFTER_S));
    }
    if replayed {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    response
}

pub(super) fn record_export_id(id: ExportId) {
    Span::current().record("export_id", tracing::field::display(id));
}

/// The export ID of the path. Anything that is not one is "not found", like an unknown ID.
fn export_id(path: Result<Path<String>, PathRejection>) -> Result<ExportId, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::NotFound)?;
    let id = ExportId::parse(&raw).map_err(|_| ApiError::NotFound)?;
    record_export_id(id);
    Ok(id)
}

/// The body as a JSON value: `413` when too large, `400` when not JSON.
pub(crate) fn json_body(headers: &HeaderMap, body: Result<Bytes, BytesRejection>) -> Result<Value, ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::UnreadableBody(rejection.body_text())
        }
    })?;
    let is_json = headers
        .get(CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|essence| essence.trim().eq_ignore_ascii_case("application/json"));
    if !is_json {
        return Err(ApiError::UnsupportedMediaType);
    }
    serde_json::from_slice(&body).map_err(|e| ApiError::MalformedJson(e.to_string()))
}

/// `value` when nothing failed validation, else every recorded error.
pub(crate) fn valid<T>(value: Option<T>, errors: ValidationErrors) -> Result<T, ApiError> {
    match value {
        Some(value) if errors.is_empty() => Ok(value),
        _ => Err(ApiError::Validation(errors)),
    }
}

pub(crate) fn idempotency_key(headers: &HeaderMap, errors: &mut ValidationErrors) -> Option<IdempotencyKey> {
    let mut values = headers.get_all(IDEMPOTENCY_KEY).iter();
    let value = values.next()?;
    if values.next().is_some() {
        errors.add(IDEMPOTENCY_KEY, "duplicate", "send the Idempotency-Key header once");
        return None;
    }
    let parsed = value.to_str().map_err(|_| IdParseError::NotPrintable).and_then(IdempotencyKey::parse);
    match parsed {
        Ok(key) => Some(key),
        Err(err) => {
            let code = match err {
                IdParseError::Empty => "empty",
                IdParseError::TooLong { .. } => "too_long",
                _ => "invalid_value",
            };
            errors.add(IDEMPOTENCY_KEY, code, format!("Idempotency-Key {err}"));
            None
        }
    }
}

/// Adds an error when `spec` keeps its file longer than this server allows: checked where a
/// request is stored to run later (a schedule, a batch), as `POST /v1/exports` checks it at once.
pub(crate) fn check_retention(spec: &ExportSpec, max_days: u32, field: &str, errors: &mut ValidationErrors) {
    if spec.retention_days.is_some_and(|days| days > max_days) {
        errors.add(field, "too_long", format!("retention_days may be at most {max_days} on this service"));
    }
}

/// `errors` about an export request, renamed for a request nested under `prefix` (an event's
/// `request`), so that a problem names the field where the client sent it.
pub(crate) fn nested(prefix: &str, errors: &ValidationErrors) -> ValidationErrors {
    let mut nested = ValidationErrors::new();
    for e in errors.errors() {
        let field = if e.field.is_empty() { prefix.to_owned() } else { format!("{prefix}.{}", e.field) };
        nested.add(field, e.code, e.message.clone());
    }
    nested
}

/// The last value of query parameter `name`, decoded.
pub(crate) fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    url::form_urlencoded::parse(query.unwrap_or_default().as_bytes())
        .filter(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
        .last()
}

fn sync_wait(query: Option<&str>, limits: SyncLimits, errors: &mut ValidationErrors) -> Duration {
    let Some(raw) = query_param(query, "timeout_s") else { return limits.default_wait };
    let max = limits.max_wait.as_secs();
    match raw.parse::<u64>() {
        Ok(secs) if secs <= max => Duration::from_secs(secs),
        _ => {
            errors.add(
                "timeout_s",
                "invalid_value",
                format!("timeout_s must be a whole number of seconds from 0 to {max}"),
            );
            limits.default_wait
        }
    }
}

/// `?limit=` and `?cursor=` of a list route; each bad one is added to `errors`.
pub(crate) fn page_params<C>(
    query: Option<&str>,
    errors: &mut ValidationErrors,
    decode_cursor: impl FnOnce(&str) -> Option<C>,
) -> (usize, Option<C>) {
    let limit = match query_param(query, "limit") {
        None => LIST_LIMIT_DEFAULT,
        Some(raw) => match raw.parse::<usize>() {
            Ok(limit) if (1..=LIST_LIMIT_MAX).contains(&limit) => limit,
            _ => {
                errors.add(
                    "limit",
                    "invalid_value",
                    format!("limit must be an integer from 1 to {LIST_LIMIT_MAX}"),
                );
                LIST_LIMIT_DEFAULT
            }
        },
    };
    let after = query_param(query, "cursor").and_then(|raw| {
        let cursor = decode_cursor(&raw);
        if cursor.is_none() {
            errors.add(
                "cursor",
                "invalid_value",
                "cursor must be the next_cursor of a previous page, unchanged",
            );
        }
        cursor
    });
    (limit, after)
}

fn list_query(query: Option<&str>) -> Result<ExportQuery, ApiError> {
    let mut errors = ValidationErrors::new();
    let status = query_param(query, "status").and_then(|raw| {
        let status = raw.parse::<ExportStatus>().ok();
        if status.is_none() {
            errors.add(
                "status",
                "invalid_value",
                "status must be one of pending, running, completed, failed, cancelled, expired",
            );
        }
        status
    });
    let (limit, after) = page_params(query, &mut errors, |raw| ListCursor::decode(raw).ok());
    valid(Some(ExportQuery { status, limit, after }), errors)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_query_reports_every_bad_parameter() {
        let Err(ApiError::Validation(errors)) = list_query(Some("status=done&limit=0&cursor=%21")) else {
            panic!("expected a validation error");
        };
        let fields: Vec<&str> = errors.errors().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["status", "limit", "cursor"]);
    }

    #[test]
    fn list_query_defaults() {
        let query = list_query(None).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(query, ExportQuery { status: None, limit: LIST_LIMIT_DEFAULT, after: None });
    }

    #[test]
    fn sync_wait_is_bounded_and_validated() {
        let limits = SyncLimits { default_wait: Duration::from_secs(30), max_wait: Duration::from_secs(60) };
        let mut errors = ValidationErrors::new();
        assert_eq!(sync_wait(None, limits, &mut errors), Duration::from_secs(30));
        assert_eq!(sync_wait(Some("timeout_s=5"), limits, &mut errors), Duration::from_secs(5));
        assert_eq!(sync_wait(Some("timeout_s=60"), limits, &mut errors), Duration::from_secs(60));
        assert!(errors.is_empty());
        for bad in ["timeout_s=-1", "timeout_s=abc", "timeout_s=1.5", "timeout_s=", "timeout_s=61"] {
            let mut errors = ValidationErrors::new();
            sync_wait(Some(bad), limits, &mut errors);
            assert_eq!(errors.errors().len(), 1, "{bad}");
        }
    }
}
