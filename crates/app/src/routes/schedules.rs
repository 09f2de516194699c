//! `/v1/export-schedules`: create, read, list, change, delete and trigger export schedules
//! (seed pattern 3). Handlers only translate; errors go through [`ApiError`].

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, RawQuery, State};
use axum::response::{IntoResponse, Response};
use chrono::Utc;
use domain::{CronPreview, NewSchedule, ScheduleId, SchedulePatch, ValidationErrors};
use http::header::{LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use ports::ScheduleQuery;
use tracing::Span;

use super::exports::{check_retention, idempotency_key, json_body, page_params, valid};
use crate::auth::Authenticated;
use crate::dto::{ExportResource, export_path};
use crate::dto_schedules::{
    CreateScheduleRequest, PatchScheduleRequest, ScheduleList, SchedulePreview, SchedulePreviewRequest,
    ScheduleResource, schedule_path,
};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// Create a schedule: at each time its cron names (in its time zone) it runs the export in
/// `request`. A bad cron is a `422` whose `errors` point at `cron` and name the cron field.
#[utoipa::path(
    post, path = "/v1/export-schedules", tag = "schedules",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "Makes retries safe: the same key and body return the same schedule.")),
    request_body(content = CreateScheduleRequest, content_type = "application/json"),
    responses(
        (status = 201, description = "Created.", body = ScheduleResource,
         headers(("Location" = String, description = "The schedule's URL."))),
        (status = 200, description = "Replay of an earlier create with the same Idempotency-Key.",
         body = ScheduleResource, headers(
            ("Location" = String, description = "The schedule's URL."),
            ("Idempotent-Replayed" = String, description = "`true`."))),
        (status = 422, description = "Invalid fields (`validation`, all listed in `errors`; cron errors name \
         the cron field), or an Idempotency-Key reused for a different schedule (`idempotency-key-reused`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "The tenant already keeps `max_schedules` schedules \
         (`quota-exceeded`, `quota` and `limit` in the body); delete one first.", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn create_schedule(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let mut errors = ValidationErrors::new();
    let key = idempotency_key(&headers, &mut errors);
    let new = errors.absorb(NewSchedule::from_json(&body));
    if let Some(new) = &new {
        check_retention(&new.spec, state.retention_max_days, "request.retention_days", &mut errors);
    }
    let new = valid(new, errors)?;
    let created = state.schedules.create(&scope, new, key).await?;
    record_schedule_id(created.schedule.id);
    let status = if created.created { StatusCode::CREATED } else { StatusCode::OK };
    let mut response = (status, Json(ScheduleResource::new(&created.schedule, Utc::now()))).into_response();
    let response_headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&schedule_path(created.schedule.id)) {
        response_headers.insert(LOCATION, location);
    }
    if !created.created {
        response_headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// List schedules, oldest first, a page at a time.
#[utoipa::path(
    get, path = "/v1/export-schedules", tag = "schedules",
    params(
        ("limit" = Option<u32>, Query, minimum = 1, maximum = 100, description = "Page size, default 20."),
        ("cursor" = Option<Uuid>, Query,
         description = "`next_cursor` of the previous page (leave the parameter out for the first page)."),
    ),
    responses(
        (status = 200, description = "A page of schedules.", body = ScheduleList),
        (status = 422, description = "Invalid `limit` or `cursor` (`validation`).", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn list_schedules(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    RawQuery(query): RawQuery,
) -> Result<Json<ScheduleList>, ApiError> {
    let query = list_query(query.as_deref())?;
    let page = state.schedules.list(&scope, &query).await?;
    let now = Utc::now();
    Ok(Json(ScheduleList {
        items: page.items.iter().map(|s| ScheduleResource::new(s, now)).collect(),
        next_cursor: page.next.map(|id| id.to_string()),
    }))
}

/// Read a schedule.
#[utoipa::path(
    get, path = "/v1/export-schedules/{id}", tag = "schedules",
    params(("id" = Uuid, Path, description = "Schedule ID")),
    responses(
        (status = 200, description = "The schedule.", body = ScheduleResource),
        (status = 404, description = "No such schedule for this API key (including other tenants').",
         body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_schedule(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Json<ScheduleResource>, ApiError> {
    let id = schedule_id(id)?;
    let schedule = state.schedules.get(&scope, id).await?;
    Ok(Json(ScheduleResource::new(&schedule, Utc::now())))
}

/// Change a schedule: pause (`{"paused": true}`), resume, or change its cron, time zone,
/// request or note. Only the fields present change.
#[utoipa::path(
    patch, path = "/v1/export-schedules/{id}", tag = "schedules",
    params(("id" = Uuid, Path, description = "Schedule ID")),
    request_body(content = PatchScheduleRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The changed schedule.", body = ScheduleResource),
        (status = 404, description = "No such schedule for this API key.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "Changed concurrently by another request; retry (`schedule-conflict`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid or no fields (`validation`, all listed in `errors`).", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn patch_schedule(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<ScheduleResource>, ApiError> {
    let id = schedule_id(id)?;
    let body = json_body(&headers, body)?;
    let patch = SchedulePatch::from_json(&body).map_err(ApiError::Validation)?;
    let mut errors = ValidationErrors::new();
    if let Some(spec) = &patch.spec {
        check_retention(spec, state.retention_max_days, "request.retention_days", &mut errors);
    }
    let patch = valid(Some(patch), errors)?;
    let schedule = state.schedules.update(&scope, id, patch).await?;
    Ok(Json(ScheduleResource::new(&schedule, Utc::now())))
}

/// Delete a schedule. Exports it already started go on.
#[utoipa::path(
    delete, path = "/v1/export-schedules/{id}", tag = "schedules",
    params(("id" = Uuid, Path, description = "Schedule ID")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 404, description = "No such schedule for this API key.", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn delete_schedule(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<StatusCode, ApiError> {
    let id = schedule_id(id)?;
    state.schedules.delete(&scope, id).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// Run a schedule now (also when paused): answers with the export this fire started. Like the
/// schedule's own fires, a trigger honours its overlap rule (skip): while the previous fire's
/// export is pending or running, it is refused with `409`.
#[utoipa::path(
    post, path = "/v1/export-schedules/{id}/trigger", tag = "schedules",
    params(("id" = Uuid, Path, description = "Schedule ID")),
    responses(
        (status = 202, description = "The fire's export; poll `Location`.", body = ExportResource,
         headers(
            ("Location" = String, description = "The export's URL."),
            ("Retry-After" = u32, description = "Present while the export is unfinished: seconds before polling."))),
        (status = 404, description = "No such schedule for this API key.", body = Problem,
         content_type = "application/problem+json"),
        (status = 409, description = "The schedule's previous fire is still pending or running \
         (`schedule-fire-running`; `detail` names its export). Nothing was started.", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn trigger_schedule(
    State(state): State<AppState>,
    Authenticated(scope): Authenticated,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let id = schedule_id(id)?;
    let export = state.schedules.trigger(&scope, id).await?;
    Span::current().record("export_id", tracing::field::display(export.id));
    let mut response = (StatusCode::ACCEPTED, Json(ExportResource::from(&export))).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&export_path(export.id)) {
        headers.insert(LOCATION, location);
    }
    if !export.status().is_terminal() {
        headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
    }
    Ok(response)
}

/// The next fires of a cron in a time zone, before any schedule exists: what a create with this
/// `cron` and `timezone` would schedule, or the `422` it would get for them (a cron that never
/// fires or fires too often included). Nothing is stored.
#[utoipa::path(
    post, path = "/v1/export-schedules/preview", tag = "schedules",
    request_body(content = SchedulePreviewRequest, content_type = "application/json"),
    responses(
        (status = 200, description = "The next fires.", body = SchedulePreview),
        (status = 422, description = "Invalid fields (`validation`, all listed in `errors`; cron errors name \
         the cron field), as a create would answer.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn preview_schedule(
    State(state): State<AppState>,
    Authenticated(_scope): Authenticated,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Json<SchedulePreview>, ApiError> {
    let body = json_body(&headers, body)?;
    let preview = CronPreview::from_json(&body).map_err(ApiError::Validation)?;
    let next_fires = state.schedules.preview(&preview, Utc::now()).map_err(ApiError::Validation)?;
    Ok(Json(SchedulePreview {
        cron: preview.cron.to_string(),
        timezone: preview.timezone.to_string(),
        next_fires,
    }))
}

fn record_schedule_id(id: ScheduleId) {
    Span::current().record("schedule_id", tracing::field::display(id));
}

/// The schedule ID of the path. Anything that is not one is "not found", like an unknown ID.
fn schedule_id(path: Result<Path<String>, PathRejection>) -> Result<ScheduleId, ApiError> {
    let Path(raw) = path.map_err(|_| ApiError::ScheduleNotFound)?;
    let id = ScheduleId::parse(&raw).map_err(|_| ApiError::ScheduleNotFound)?;
    record_schedule_id(id);
    Ok(id)
}

fn list_query(query: Option<&str>) -> Result<ScheduleQuery, ApiError> {
    let mut errors = ValidationErrors::new();
    let (limit, after) = page_params(query, &mut errors, |raw| ScheduleId::parse(raw).ok());
    valid(Some(ScheduleQuery { limit, after }), errors)
}
