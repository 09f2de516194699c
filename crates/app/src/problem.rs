//! The API's one error type and its RFC 9457 `application/problem+json` rendering. Every service
//! error is mapped to HTTP here and nowhere else.

use std::any::Any;
use std::time::Duration;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use domain::signature::{SIGNATURE_HEADER, SignatureError, TIMESTAMP_HEADER};
use domain::{BatchId, ExportId, ExportStatus, Quota, ScheduleId, ValidationErrors};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, RETRY_AFTER, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode};
use ports::PortError;
use serde::{Deserialize, Serialize};
use service::{
    BatchGetError, BatchRequestError, CancelError, CreateScheduleError, DeleteScheduleError, DownloadError,
    GetError, GetScheduleError, ListError, ListSchedulesError, RequestError, TriggerScheduleError,
    UpdateScheduleError,
};
use tracing::{error, warn};
use utoipa::ToSchema;

pub const PROBLEM_JSON: &str = "application/problem+json";
const TYPE_BASE: &str = "https://userexport.dev/problems/";
/// Seconds a client should wait before retrying after a `503`.
const UNAVAILABLE_RETRY_AFTER_S: &str = "5";
/// Seconds a client should wait before retrying after load shedding: slots free up fast.
const OVERLOADED_RETRY_AFTER_S: &str = "1";
/// Seconds a client should wait before retrying after a `429` of the `max_unfinished` quota:
/// about as long as a few exports take to finish.
const QUOTA_RETRY_AFTER_S: &str = "30";

/// An RFC 9457 problem document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "type": "https://userexport.dev/problems/validation",
    "title": "Invalid request",
    "status": 422,
    "detail": "2 fields are invalid",
    "errors": [{"field": "format", "code": "invalid_value", "message": "format must be one of csv, json, ndjson"}]
}))]
pub struct Problem {
    /// Stable URI identifying the kind of problem; switch on this, not on `title` or `detail`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Short summary of the kind of problem.
    pub title: String,
    /// The HTTP status code.
    pub status: u16,
    /// What went wrong with this request.
    pub detail: String,
    /// What to do about it, where there is something to do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
    /// For `validation`: every field that failed, not only the first.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<FieldErrorBody>>,
    /// For `quota-exceeded`: the quota reached (`max_unfinished`, `max_schedules`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<String>,
    /// For `quota-exceeded`: the tenant's limit of that quota.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
}

/// One invalid field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub struct FieldErrorBody {
    /// Dotted path of the field (`user_filters.status[1]`), or a header or query parameter name.
    pub field: String,
    /// Stable machine-readable reason (`required`, `invalid_value`, `unknown_field`...).
    pub code: String,
    pub message: String,
}

impl Problem {
    pub fn new(slug: &str, title: &str, status: StatusCode, detail: impl Into<String>) -> Self {
        Self {
            kind: format!("{TYPE_BASE}{slug}"),
            title: title.to_owned(),
            status: status.as_u16(),
            detail: detail.into(),
            hint: None,
            errors: None,
            quota: None,
            limit: None,
        }
    }

    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// A generic problem for a status produced outside the handlers (a layer or the router).
    pub fn for_status(status: StatusCode) -> Self {
        let generic = |slug, title, detail: &str| Self::new(slug, title, status, detail);
        let problem = match status {
            StatusCode::BAD_REQUEST => {
                generic("bad-request", "Bad request", "The request could not be read.")
            }
            StatusCode::UNAUTHORIZED => unauthenticated_problem(false),
            StatusCode::NOT_FOUND => generic("not-found", "Not found", "There is nothing at this URL."),
            StatusCode::METHOD_NOT_ALLOWED => method_not_allowed_problem(),
            StatusCode::PAYLOAD_TOO_LARGE => payload_too_large_problem(),
            StatusCode::UNSUPPORTED_MEDIA_TYPE => unsupported_media_type_problem(status),
            StatusCode::REQUEST_TIMEOUT => {
                generic("request-timeout", "Request timeout", "The request took too long to arrive.")
            }
            StatusCode::SERVICE_UNAVAILABLE => unavailable_problem(),
            s if s.is_server_error() => internal_problem(),
            s => Self {
                kind: "about:blank".to_owned(),
                title: s.canonical_reason().unwrap_or("Error").to_owned(),
                status: s.as_u16(),
                detail: s.canonical_reason().unwrap_or("The request failed.").to_owned(),
                hint: None,
                errors: None,
                quota: None,
                limit: None,
            },
        };
        // The body's status always matches the response's, whichever shared problem was used.
        Self { status: status.as_u16(), ..problem }
    }

    fn status_code(&self) -> StatusCode {
        StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let status = self.status_code();
        match serde_json::to_vec(&self) {
            Ok(body) => {
                (status, [(CONTENT_TYPE, HeaderValue::from_static(PROBLEM_JSON))], body).into_response()
            }
            Err(_) => status.into_response(),
        }
    }
}

fn unauthenticated_problem(presented: bool) -> Problem {
    let detail = if presented {
        "The API key is not valid."
    } else {
        "This endpoint needs an API key: send `Authorization: Bearer <key>`."
    };
    Problem::new("unauthenticated", "Authentication required", StatusCode::UNAUTHORIZED, detail)
}

fn method_not_allowed_problem() -> Problem {
    Problem::new(
        "method-not-allowed",
        "Method not allowed",
        StatusCode::METHOD_NOT_ALLOWED,
        "This URL does not support that method; the Allow header lists the ones it does.",
    )
}

fn payload_too_large_problem() -> Problem {
    Problem::new(
        "payload-too-large",
        "Request body too large",
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("The request body is larger than {} KiB.", crate::routes::BODY_LIMIT_BYTES / 1024),
    )
}

fn unsupported_media_type_problem(status: StatusCode) -> Problem {
    Problem::new(
        "unsupported-media-type",
        "Unsupported content type",
        status,
        "The request body must be JSON sent with `Content-Type: application/json`.",
    )
}

fn unavailable_problem() -> Problem {
    Problem::new(
        "service-unavailable",
        "Service unavailable",
        StatusCode::SERVICE_UNAVAILABLE,
        "A dependency of the service is temporarily unavailable.",
    )
    .with_hint(format!("Retry after {UNAVAILABLE_RETRY_AFTER_S} seconds, with the same Idempotency-Key."))
}

fn internal_problem() -> Problem {
    Problem::new(
        "internal",
        "Internal server error",
        StatusCode::INTERNAL_SERVER_ERROR,
        "The server failed to process the request; the failure has been logged.",
    )
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// No API key, or one that is not configured.
    #[error("unauthenticated")]
    Unauthenticated { presented: bool },
    /// A webhook whose signature is missing, malformed, stale or does not match. An unknown
    /// tenant, or one without a webhook secret, is a mismatch: callers cannot tell which.
    #[error("webhook signature rejected: {0}")]
    InvalidSignature(SignatureError),
    /// A valid key without the permission the route needs (a tenant key on an operator route).
    #[error("forbidden: needs an operator key with the {needs} permission")]
    Forbidden { needs: &'static str },
    /// The resource does not exist in the caller's scope (or at all: callers cannot tell).
    #[error("export not found")]
    NotFound,
    #[error("batch not found")]
    BatchNotFound,
    #[error("idempotency key reused for a different batch (batch {existing})")]
    BatchIdempotencyKeyReused { existing: BatchId },
    /// No route matches the path.
    #[error("no route for {method} {path}")]
    RouteNotFound { method: String, path: String },
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The body is not `application/json`.
    #[error("unsupported content type")]
    UnsupportedMediaType,
    /// The body is not syntactically valid JSON.
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    /// The body could not be read (other than for its size).
    #[error("unreadable body: {0}")]
    UnreadableBody(String),
    #[error("request body too large")]
    PayloadTooLarge,
    /// Fields, headers or query parameters failed validation; all of them are listed.
    #[error(transparent)]
    Validation(ValidationErrors),
    #[error("idempotency key reused for a different request (export {existing})")]
    IdempotencyKeyReused { existing: ExportId },
    /// Download of an export that has not completed.
    #[error("export is {0}, not completed")]
    ExportNotReady(ExportStatus),
    /// A signed link asked of a storage that cannot sign (the API streams its files).
    #[error("the storage cannot sign download links")]
    DownloadLinkUnavailable,
    /// Cancel of an export that already finished.
    #[error("export already {0}")]
    ExportFinished(ExportStatus),
    /// The record says completed but its file is gone.
    #[error("export file gone")]
    ExportGone,
    /// No such export schedule in the caller's scope.
    #[error("schedule not found")]
    ScheduleNotFound,
    /// Two updates of one schedule raced; this one lost.
    #[error("schedule changed concurrently")]
    ScheduleConflict,
    #[error("idempotency key reused for a different schedule ({existing})")]
    ScheduleIdempotencyKeyReused { existing: ScheduleId },
    /// `/trigger` while the schedule's previous fire is unfinished (overlap rule: skip).
    #[error("the schedule's previous fire is unfinished (export {running})")]
    ScheduleFireRunning { running: ExportId },
    /// Retention deleted the export's file.
    #[error("export expired")]
    ExportExpired,
    /// The tenant is at one of its quotas: `429` for `max_unfinished` (it frees as exports
    /// finish), `409` for `max_schedules` (it frees only when a schedule is deleted).
    #[error("quota {quota} reached (limit {limit})")]
    QuotaExceeded { quota: Quota, limit: u32 },
    /// A dependency failed in a way that may pass (`PortError::is_retryable`).
    #[error("dependency unavailable: {0:#}")]
    Unavailable(#[source] PortError),
    /// Anything else: logged in full, answered with an opaque 500.
    #[error(transparent)]
    Internal(anyhow::Error),
    /// The API key (or the webhook's tenant) used up its request rate.
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// The client's address failed authentication too often; its credentials are not checked.
    #[error("authentication failures throttled")]
    AuthThrottled { retry_after: Duration },
    /// Every in-flight slot is taken.
    #[error("overloaded")]
    Overloaded,
    /// No response within the request timeout.
    #[error("request timed out after {after:?}")]
    TimedOut { after: Duration },
}

impl ApiError {
    pub fn problem(&self) -> Problem {
        match self {
            Self::Unauthenticated { presented } => unauthenticated_problem(*presented),
            Self::InvalidSignature(reason) => invalid_signature_problem(reason),
            Self::Forbidden { needs } => Problem::new(
                "forbidden",
                "Forbidden",
                StatusCode::FORBIDDEN,
                format!("This endpoint needs an operator key with the `{needs}` permission."),
            )
            .with_hint(format!(
                "Tenant API keys cannot run cross-tenant operations; use a key configured in \
                 USEREXPORT_OPERATOR_KEYS as key={needs}."
            )),
            Self::BatchNotFound => Problem::new(
                "not-found",
                "Batch not found",
                StatusCode::NOT_FOUND,
                "No batch with this ID exists.",
            ),
            Self::BatchIdempotencyKeyReused { existing } => Problem::new(
                "idempotency-key-reused",
                "Idempotency key reused",
                StatusCode::UNPROCESSABLE_ENTITY,
                format!(
                    "This Idempotency-Key was already used for a different batch request (batch {existing})."
                ),
            )
            .with_hint(
                "Resend the original request unchanged, or use a new Idempotency-Key for a new batch.",
            ),
            Self::NotFound => Problem::new(
                "not-found",
                "Export not found",
                StatusCode::NOT_FOUND,
                "No export with this ID exists for your API key's tenant and environment.",
            ),
            Self::RouteNotFound { method, path } => Problem::new(
                "not-found",
                "Not found",
                StatusCode::NOT_FOUND,
                format!("There is no route for {method} {path}."),
            )
            .with_hint("See /openapi.json for the routes of this API."),
            Self::MethodNotAllowed => method_not_allowed_problem(),
            Self::UnsupportedMediaType => unsupported_media_type_problem(StatusCode::BAD_REQUEST)
                .with_hint("Send the body with the header `Content-Type: application/json`."),
            Self::MalformedJson(detail) => Problem::new(
                "malformed-json",
                "Malformed JSON",
                StatusCode::BAD_REQUEST,
                format!("The request body is not valid JSON: {detail}."),
            ),
            Self::UnreadableBody(detail) => Problem::new(
                "bad-request",
                "Bad request",
                StatusCode::BAD_REQUEST,
                format!("The request body could not be read: {detail}."),
            ),
            Self::PayloadTooLarge => payload_too_large_problem(),
            Self::Validation(errors) => validation_problem(errors),
            Self::IdempotencyKeyReused { existing } => Problem::new(
                "idempotency-key-reused",
                "Idempotency key reused",
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("This Idempotency-Key was already used for a different request (export {existing})."),
            )
            .with_hint(
                "Resend the original request unchanged, or use a new Idempotency-Key for a new request.",
            ),
            Self::DownloadLinkUnavailable => Problem::new(
                "download-link-unavailable",
                "No download link",
                StatusCode::CONFLICT,
                "This server's storage cannot sign links: the API streams export files itself.",
            )
            .with_hint("Download the file with GET /v1/exports/{id}/download and your key."),
            Self::ExportNotReady(status) => {
                let problem = Problem::new(
                    "export-not-ready",
                    "Export not ready",
                    StatusCode::CONFLICT,
                    format!("The export is {status}; only completed exports can be downloaded."),
                );
                if status.is_terminal() {
                    problem.with_hint("This export will not complete; request a new one.")
                } else {
                    problem.with_hint("Poll GET /v1/exports/{id} until its status is completed.")
                }
            }
            Self::ExportFinished(status) => Problem::new(
                "export-already-finished",
                "Export already finished",
                StatusCode::CONFLICT,
                format!("The export is already {status} and can no longer be cancelled."),
            ),
            Self::ExportGone => Problem::new(
                "export-gone",
                "Export file gone",
                StatusCode::GONE,
                "The export completed, but its file is no longer available.",
            )
            .with_hint("Request a new export."),
            Self::ScheduleNotFound => Problem::new(
                "not-found",
                "Schedule not found",
                StatusCode::NOT_FOUND,
                "No export schedule with this ID exists for your API key's tenant and environment.",
            ),
            Self::ScheduleConflict => Problem::new(
                "schedule-conflict",
                "Schedule changed concurrently",
                StatusCode::CONFLICT,
                "Another update changed this schedule at the same time.",
            )
            .with_hint("Read the schedule again and retry the change."),
            Self::ScheduleIdempotencyKeyReused { existing } => Problem::new(
                "idempotency-key-reused",
                "Idempotency key reused",
                StatusCode::UNPROCESSABLE_ENTITY,
                format!("This Idempotency-Key was already used for a different schedule ({existing})."),
            )
            .with_hint("Resend the original request unchanged, or use a new Idempotency-Key."),
            Self::ScheduleFireRunning { running } => Problem::new(
                "schedule-fire-running",
                "Previous fire still running",
                StatusCode::CONFLICT,
                format!(
                    "The schedule's previous fire (export {running}) is still pending or running; \
                     its overlap rule skips a new fire until it finishes."
                ),
            )
            .with_hint(format!(
                "Wait until GET /v1/exports/{running} shows it finished, then trigger again."
            )),
            Self::ExportExpired => Problem::new(
                "export-expired",
                "Export expired",
                StatusCode::GONE,
                "The export's retention ran out and its file was deleted.",
            )
            .with_hint("Request a new export; `retention_days` in the request keeps a file longer."),
            Self::QuotaExceeded { quota, limit } => quota_problem(*quota, *limit),
            Self::Unavailable(_) => unavailable_problem(),
            Self::Internal(_) => internal_problem(),
            Self::RateLimited { retry_after } => Problem::new(
                "rate-limited",
                "Too many requests",
                StatusCode::TOO_MANY_REQUESTS,
                "This API key (or, on the webhook, this tenant) sent more requests than its rate limit.",
            )
            .with_hint(format!(
                "Retry after {} s; the RateLimit and RateLimit-Policy headers tell the quota and what is left.",
                retry_after_secs(*retry_after)
            )),
            Self::AuthThrottled { retry_after } => Problem::new(
                "auth-throttled",
                "Too many failed authentications",
                StatusCode::TOO_MANY_REQUESTS,
                "Requests from this address failed authentication too often; credentials are not checked for now.",
            )
            .with_hint(format!("Fix the API key or signature, then retry after {} s.", retry_after_secs(*retry_after))),
            Self::Overloaded => Problem::new(
                "overloaded",
                "Overloaded",
                StatusCode::SERVICE_UNAVAILABLE,
                "The server is handling as many requests as it takes at once.",
            )
            .with_hint(format!("Retry after {OVERLOADED_RETRY_AFTER_S} s, with the same Idempotency-Key.")),
            Self::TimedOut { after } => Problem::new(
                "timeout",
                "Request timed out",
                StatusCode::SERVICE_UNAVAILABLE,
                format!("The request was not answered within {} s.", after.as_secs()),
            )
            .with_hint(format!(
                "Retry after {UNAVAILABLE_RETRY_AFTER_S} s with the same Idempotency-Key: work the request started goes on."
            )),
        }
    }
}

/// `Retry-After` in whole seconds, rounded up and at least 1.
fn retry_after_secs(wait: Duration) -> u64 {
    crate::limits::headers::ceil_secs(wait).max(1)
}

fn quota_problem(quota: Quota, limit: u32) -> Problem {
    let (status, detail, hint) = match quota {
        Quota::MaxSchedules => (
            StatusCode::CONFLICT,
            format!("Your tenant already has {limit} export schedules, the most it may keep."),
            "Delete a schedule you no longer need, or ask the operator to raise max_schedules.".to_owned(),
        ),
        _ => (
            StatusCode::TOO_MANY_REQUESTS,
            format!("Your tenant already has {limit} exports pending or running, the most it may have."),
            format!(
                "Retry after {QUOTA_RETRY_AFTER_S} seconds, when some have finished; the same Idempotency-Key \
                 finds an export already accepted."
            ),
        ),
    };
    Problem {
        quota: Some(quota.as_str().to_owned()),
        limit: Some(limit),
        ..Problem::new("quota-exceeded", "Quota exceeded", status, detail).with_hint(hint)
    }
}

fn invalid_signature_problem(reason: &SignatureError) -> Problem {
    let detail = match reason {
        SignatureError::MissingHeader(header) => format!("The {header} header is missing."),
        SignatureError::Malformed(header) => format!("The {header} header is malformed."),
        SignatureError::Stale { .. } => {
            format!("The {TIMESTAMP_HEADER} is outside the replay window around the server's clock.")
        }
        SignatureError::Mismatch => {
            format!("No signature in {SIGNATURE_HEADER} matches this body, timestamp and tenant.")
        }
    };
    Problem::new("invalid-signature", "Invalid webhook signature", StatusCode::UNAUTHORIZED, detail)
        .with_hint(format!(
            "Send {TIMESTAMP_HEADER}: <current unix seconds> and {SIGNATURE_HEADER}: v1=<hex HMAC-SHA256 of \
             \"{{timestamp}}.{{raw body}}\" keyed with the tenant's webhook secret>."
        ))
}

/// The `errors` entry that stands for those not listed (`ValidationErrors` keeps the first 20).
pub const MORE_ERRORS_CODE: &str = "more_errors";

fn validation_problem(invalid: &ValidationErrors) -> Problem {
    let mut errors: Vec<FieldErrorBody> = invalid
        .errors()
        .iter()
        .map(|e| FieldErrorBody {
            field: e.field.clone(),
            code: e.code.to_owned(),
            message: e.message.clone(),
        })
        .collect();
    let detail = match errors.as_slice() {
        [one] if one.field.is_empty() => one.message.clone(),
        [one] => format!("{} is invalid: {}", one.field, one.message),
        _ if invalid.omitted() > 0 => {
            format!("{} errors; the first {} are listed in errors.", invalid.len(), errors.len())
        }
        many => format!("{} fields are invalid; see errors.", many.len()),
    };
    if invalid.omitted() > 0 {
        // One last entry says how many more, so the answer stays small whatever the body held.
        errors.push(FieldErrorBody {
            field: String::new(),
            code: MORE_ERRORS_CODE.to_owned(),
            message: format!("and {} more errors, not listed", invalid.omitted()),
        });
    }
    let problem = Problem {
        errors: Some(errors),
        ..Problem::new("validation", "Invalid request", StatusCode::UNPROCESSABLE_ENTITY, detail)
    };
    if invalid.omitted() > 0 {
        problem.with_hint("Fix the listed fields and resend; any errors left are listed then.")
    } else {
        problem
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(err) => error!(error = %format!("{err:#}"), "request failed"),
            Self::Unavailable(err) => warn!(error = %format!("{err:#}"), "dependency unavailable"),
            _ => {}
        }
        let mut response = self.problem().into_response();
        let headers = response.headers_mut();
        match self {
            Self::Unauthenticated { presented } => {
                let challenge = if presented {
                    r#"Bearer realm="userexport", error="invalid_token""#
                } else {
                    r#"Bearer realm="userexport""#
                };
                headers.insert(WWW_AUTHENTICATE, HeaderValue::from_static(challenge));
            }
            Self::InvalidSignature(_) => {
                headers.insert(
                    WWW_AUTHENTICATE,
                    HeaderValue::from_static(r#"Userexport-Signature realm="userexport""#),
                );
            }
            Self::Unavailable(_) | Self::TimedOut { .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(UNAVAILABLE_RETRY_AFTER_S));
            }
            Self::Overloaded => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(OVERLOADED_RETRY_AFTER_S));
            }
            Self::RateLimited { retry_after } | Self::AuthThrottled { retry_after } => {
                headers.insert(RETRY_AFTER, HeaderValue::from(retry_after_secs(retry_after)));
            }
            Self::QuotaExceeded { quota: Quota::MaxUnfinished, .. } => {
                headers.insert(RETRY_AFTER, HeaderValue::from_static(QUOTA_RETRY_AFTER_S));
            }
            _ => {}
        }
        response
    }
}

impl From<PortError> for ApiError {
    fn from(err: PortError) -> Self {
        if err.is_retryable() { Self::Unavailable(err) } else { Self::Internal(err.into()) }
    }
}

impl From<RequestError> for ApiError {
    fn from(err: RequestError) -> Self {
        match err {
            RequestError::Invalid(errors) => Self::Validation(errors),
            RequestError::IdempotencyMismatch { existing, .. } => Self::IdempotencyKeyReused { existing },
            RequestError::QuotaExceeded { quota, limit } => Self::QuotaExceeded { quota, limit },
            RequestError::Port(err) => err.into(),
            RequestError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<BatchRequestError> for ApiError {
    fn from(err: BatchRequestError) -> Self {
        match err {
            BatchRequestError::UnknownTargets(errors) => Self::Validation(errors),
            BatchRequestError::IdempotencyMismatch { existing, .. } => {
                Self::BatchIdempotencyKeyReused { existing }
            }
            BatchRequestError::Port(err) => err.into(),
            BatchRequestError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<BatchGetError> for ApiError {
    fn from(err: BatchGetError) -> Self {
        match err {
            BatchGetError::NotFound => Self::BatchNotFound,
            BatchGetError::Port(err) => err.into(),
            BatchGetError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<GetError> for ApiError {
    fn from(err: GetError) -> Self {
        match err {
            GetError::NotFound => Self::NotFound,
            GetError::Port(err) => err.into(),
            GetError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<ListError> for ApiError {
    fn from(err: ListError) -> Self {
        match err {
            ListError::Port(err) => err.into(),
            ListError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<CancelError> for ApiError {
    fn from(err: CancelError) -> Self {
        match err {
            CancelError::NotFound => Self::NotFound,
            CancelError::AlreadyFinished(status) => Self::ExportFinished(status),
            CancelError::Port(err) => err.into(),
            CancelError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<DownloadError> for ApiError {
    fn from(err: DownloadError) -> Self {
        match err {
            DownloadError::NotFound => Self::NotFound,
            DownloadError::NotReady(status) => Self::ExportNotReady(status),
            DownloadError::Gone => Self::ExportGone,
            DownloadError::Expired => Self::ExportExpired,
            DownloadError::Port(err) => err.into(),
            DownloadError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<CreateScheduleError> for ApiError {
    fn from(err: CreateScheduleError) -> Self {
        match err {
            CreateScheduleError::Invalid(errors) => Self::Validation(errors),
            CreateScheduleError::IdempotencyMismatch { existing, .. } => {
                Self::ScheduleIdempotencyKeyReused { existing }
            }
            CreateScheduleError::QuotaExceeded { quota, limit } => Self::QuotaExceeded { quota, limit },
            CreateScheduleError::Port(err) => err.into(),
            CreateScheduleError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<GetScheduleError> for ApiError {
    fn from(err: GetScheduleError) -> Self {
        match err {
            GetScheduleError::NotFound => Self::ScheduleNotFound,
            GetScheduleError::Port(err) => err.into(),
            GetScheduleError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<ListSchedulesError> for ApiError {
    fn from(err: ListSchedulesError) -> Self {
        match err {
            ListSchedulesError::Port(err) => err.into(),
            ListSchedulesError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<UpdateScheduleError> for ApiError {
    fn from(err: UpdateScheduleError) -> Self {
        match err {
            UpdateScheduleError::NotFound => Self::ScheduleNotFound,
            UpdateScheduleError::Conflict => Self::ScheduleConflict,
            UpdateScheduleError::Invalid(errors) => Self::Validation(errors),
            UpdateScheduleError::Port(err) => err.into(),
            UpdateScheduleError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<DeleteScheduleError> for ApiError {
    fn from(err: DeleteScheduleError) -> Self {
        match err {
            DeleteScheduleError::NotFound => Self::ScheduleNotFound,
            DeleteScheduleError::Port(err) => err.into(),
            DeleteScheduleError::Unknown(err) => Self::Internal(err),
        }
    }
}

impl From<TriggerScheduleError> for ApiError {
    fn from(err: TriggerScheduleError) -> Self {
        match err {
            TriggerScheduleError::NotFound => Self::ScheduleNotFound,
            TriggerScheduleError::Overlap { running } => Self::ScheduleFireRunning { running },
            TriggerScheduleError::Port(err) => err.into(),
            TriggerScheduleError::Unknown(err) => Self::Internal(err),
        }
    }
}

fn is_problem(headers: &HeaderMap) -> bool {
    headers.get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(PROBLEM_JSON.as_bytes()))
}

/// Middleware: turns an error response that is not a problem document (from the router, a layer
/// or an extractor) into one, keeping its status and headers (`Allow`, `Retry-After`...).
pub async fn problem_for_bare_errors(response: Response) -> Response {
    let status = response.status();
    if !(status.is_client_error() || status.is_server_error()) || is_problem(response.headers()) {
        return response;
    }
    let (mut parts, _) = response.into_parts();
    parts.headers.remove(CONTENT_TYPE);
    parts.headers.remove(CONTENT_LENGTH);
    let mut problem = Problem::for_status(status).into_response();
    problem.headers_mut().extend(parts.headers);
    problem
}

/// `CatchPanicLayer` handler: a panic becomes an opaque 500 problem, logged with its message.
pub fn panic_response(panic: Box<dyn Any + Send + 'static>) -> Response<Body> {
    let message = panic
        .downcast_ref::<String>()
        .map(String::as_str)
        .or_else(|| panic.downcast_ref::<&str>().copied())
        .unwrap_or("(no message)");
    error!(panic = message, "request handler panicked");
    internal_problem().into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_problems_list_every_field() {
        let mut errors = ValidationErrors::new();
        errors.add("format", "required", "format is required");
        errors.add("limit", "invalid_value", "limit must be positive");
        let problem = ApiError::Validation(errors).problem();
        assert_eq!(problem.kind, "https://userexport.dev/problems/validation");
        assert_eq!(problem.status, 422);
        assert_eq!(problem.errors.map(|e| e.len()), Some(2));
    }

    #[test]
    fn validation_problems_list_a_bounded_number_of_errors() {
        let mut errors = ValidationErrors::new();
        for i in 0..32_000 {
            errors.add(format!("fields[{i}]"), "unknown_field", "unknown field; expected one of id, email");
        }
        let problem = ApiError::Validation(errors).problem();
        let listed = problem.errors.clone().unwrap_or_default();
        assert_eq!(listed.len(), domain::validation::MAX_LISTED_ERRORS + 1);
        let last = listed.last().cloned().unwrap_or_else(|| panic!("no entries"));
        assert_eq!(
            (last.code.as_str(), last.message.as_str()),
            (MORE_ERRORS_CODE, "and 31980 more errors, not listed")
        );
        assert!(problem.detail.starts_with("32000 errors"), "{}", problem.detail);
        assert!(problem.hint.is_some());
    }

    #[test]
    fn a_panic_becomes_an_opaque_500_problem() {
        for payload in [Box::new("boom") as Box<dyn Any + Send>, Box::new(String::from("secret boom"))] {
            let response = panic_response(payload);
            assert_eq!(response.status(), StatusCode::INTERNAL_SERVER_ERROR);
            assert_eq!(
                response.headers().get(CONTENT_TYPE).map(HeaderValue::as_bytes),
                Some(PROBLEM_JSON.as_bytes())
            );
        }
    }

    #[test]
    fn bare_error_statuses_get_a_problem_of_their_own() {
        for status in [400, 401, 404, 405, 408, 413, 415, 418, 500, 502, 503] {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::IM_A_TEAPOT);
            let problem = Problem::for_status(status);
            assert_eq!(problem.status, status.as_u16());
            assert!(!problem.title.is_empty() && !problem.detail.is_empty());
        }
    }

    #[test]
    fn retryable_port_errors_are_unavailable_and_others_internal() {
        let retryable = ApiError::from(PortError::unavailable(anyhow::anyhow!("db down")));
        assert_eq!(retryable.problem().status, 503);
        let other = ApiError::from(PortError::Other(anyhow::anyhow!("secret detail")));
        let problem = other.problem();
        assert_eq!(problem.status, 500);
        assert!(!problem.detail.contains("secret"));
    }
}
