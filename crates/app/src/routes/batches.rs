//! `/v1/exports/batch`: an operator runs one export request for many tenants (seed pattern 5),
//! then follows every tenant's export.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection};
use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use domain::{Batch, BatchId, BatchRequest, BatchSummary, TargetResult, ValidationErrors};
use http::header::{LOCATION, RETRY_AFTER};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde::Serialize;
use serde_json::Value;
use utoipa::ToSchema;
use uuid::Uuid;

use super::exports::{check_retention, idempotency_key, json_body, valid};
use crate::auth::BatchOperator;
use crate::dto::{CreateExportRequest, ExportErrorBody, ExportStatusBody};
use crate::problem::{ApiError, Problem};
use crate::state::AppState;

const IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");
/// Seconds an operator should wait before polling an unfinished batch again.
const POLL_AFTER_S: &str = "2";

/// The body of `POST /v1/exports/batch`. Documents the body only: it is validated by
/// `domain::BatchRequest::from_json`, which reports every failing field.
#[allow(dead_code)]
#[derive(Debug, Clone, ToSchema)]
#[schema(example = json!({"targets": ["acme/prod", "globex/prod"], "export": {"format": "csv"}, "concurrency": 4}))]
pub struct CreateBatchRequest {
    /// `"all"` (every tenant scope the service knows), or a non-empty list (at most 10 000, no
    /// repeats) of `"tenant/environment"` or `{"tenant_id": "...", "environment_id": "..."}`.
    /// Unknown tenants, and one scope named twice in two spellings, are refused too.
    #[schema(schema_with = targets_schema)]
    pub targets: Value,
    /// The export every target runs, as for `POST /v1/exports`.
    pub export: CreateExportRequest,
    /// Exports of this batch running at the same time, 1..=100; default 10.
    #[schema(minimum = 1, maximum = 100)]
    pub concurrency: Option<u32>,
}

/// A tenant or environment ID.
const SLUG_PATTERN: &str = "^[a-z0-9][a-z0-9_-]{0,62}$";

/// `targets`: `"all"`, or 1 to 10 000 distinct scopes, each `"tenant/environment"` or an object.
fn targets_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{
        AdditionalProperties, ArrayBuilder, ObjectBuilder, OneOfBuilder, Schema, Type,
    };
    let slug = || ObjectBuilder::new().schema_type(Type::String).pattern(Some(SLUG_PATTERN));
    let scope_string = ObjectBuilder::new()
        .schema_type(Type::String)
        .pattern(Some("^[a-z0-9][a-z0-9_-]{0,62}/[a-z0-9][a-z0-9_-]{0,62}$"))
        .examples(["acme/prod"]);
    let scope_object = ObjectBuilder::new()
        .property("tenant_id", slug())
        .property("environment_id", slug())
        .required("tenant_id")
        .required("environment_id")
        .additional_properties(Some(AdditionalProperties::FreeForm(false)));
    let scope = OneOfBuilder::new().item(scope_string).item(scope_object);
    let targets = OneOfBuilder::new()
        .item(ObjectBuilder::new().schema_type(Type::String).enum_values(Some(["all"])))
        .item(ArrayBuilder::new().items(scope).min_items(Some(1)).max_items(Some(10_000)).unique_items(true))
        .description(Some(
            "`\"all\"` (every tenant scope the service knows), or a non-empty list (at most 10 000, no \
             repeats) of `\"tenant/environment\"` or `{\"tenant_id\": \"...\", \"environment_id\": \"...\"}`.",
        ))
        .build();
    Schema::OneOf(targets).into()
}

/// One tenant scope of a batch and its export.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BatchTargetBody {
    pub tenant_id: String,
    pub environment_id: String,
    /// The target's export (`GET /v1/exports/{id}` with that tenant's key).
    pub export_id: Uuid,
    /// `pending` also while the batch has not reached this target yet.
    pub status: ExportStatusBody,
    /// Why the export failed.
    pub error: Option<ExportErrorBody>,
}

impl From<&TargetResult> for BatchTargetBody {
    fn from(result: &TargetResult) -> Self {
        Self {
            tenant_id: result.scope.tenant.to_string(),
            environment_id: result.scope.environment.to_string(),
            export_id: result.export_id.as_uuid(),
            status: result.status.into(),
            error: result
                .error
                .as_ref()
                .map(|e| ExportErrorBody { kind: e.kind.into(), message: e.message.clone() }),
        }
    }
}

/// `running` until every target's export has finished.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum BatchStatusBody {
    Running,
    Finished,
}

/// A batch and what its targets' exports show now.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct BatchResource {
    pub id: Uuid,
    pub status: BatchStatusBody,
    /// Whether the targets were "all" tenants (resolved when the batch was requested).
    pub all_targets: bool,
    pub concurrency: u32,
    /// The export request every target runs.
    #[schema(value_type = Object)]
    pub export: Value,
    pub created_at: DateTime<Utc>,
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub running: usize,
    /// Targets whose export is pending or not created yet.
    pub pending: usize,
    /// Every target, in request order.
    pub results: Vec<BatchTargetBody>,
    /// The durable workflow running this batch (Temporal mode).
    pub workflow_id: String,
    pub links: BatchLinks,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct BatchLinks {
    #[serde(rename = "self")]
    pub self_: String,
}

fn batch_path(id: BatchId) -> String {
    format!("/v1/exports/batch/{id}")
}

impl BatchResource {
    fn new(batch: &Batch, summary: &BatchSummary) -> Self {
        Self {
            id: batch.id.as_uuid(),
            status: if summary.is_finished() { BatchStatusBody::Finished } else { BatchStatusBody::Running },
            all_targets: batch.all_targets,
            concurrency: batch.concurrency,
            export: serde_json::to_value(&batch.spec).unwrap_or(Value::Null),
            created_at: batch.created_at,
            total: summary.total,
            completed: summary.completed,
            failed: summary.failed,
            cancelled: summary.cancelled,
            running: summary.running,
            pending: summary.pending,
            results: summary.results.iter().map(BatchTargetBody::from).collect(),
            workflow_id: batch.id.workflow_id(),
            links: BatchLinks { self_: batch_path(batch.id) },
        }
    }
}

/// Run one export request for many tenants (operator key with the `batch` permission).
///
/// Every target gets its own export (its ID is derived from the batch and the scope, so a
/// retried batch never exports a tenant twice); at most `concurrency` run at a time, and a
/// failing tenant does not stop the others. With an `Idempotency-Key`, repeating the request
/// returns the same batch (`200`, `Idempotent-Replayed: true`).
#[utoipa::path(
    post, path = "/v1/exports/batch", tag = "batches",
    params(("Idempotency-Key" = Option<String>, Header, min_length = 1, max_length = 255, pattern = "^[ -~]+$",
            description = "Operator-chosen key (printable ASCII) that makes retries safe.")),
    request_body(content = CreateBatchRequest, content_type = "application/json"),
    responses(
        (status = 202, description = "Accepted: the batch runs in the background; poll `Location`.",
         body = BatchResource, headers(
            ("Location" = String, description = "The batch's URL."),
            ("Retry-After" = u32, description = "Present while the batch runs: seconds before polling."))),
        (status = 200, description = "Replay of an earlier request with the same Idempotency-Key.",
         body = BatchResource, headers(
            ("Location" = String, description = "The batch's URL."),
            ("Idempotent-Replayed" = String, description = "`true`."),
            ("Retry-After" = u32, description = "Present while the batch runs: seconds before polling."))),
        (status = 403, description = "Not an operator key with the `batch` permission (`forbidden`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "Invalid fields or unknown tenants (`validation`, all listed in `errors`), \
         or an Idempotency-Key reused for a different batch (`idempotency-key-reused`).", body = Problem,
         content_type = "application/problem+json"),
    )
)]
pub async fn create_batch(
    State(state): State<AppState>,
    _operator: BatchOperator,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = json_body(&headers, body)?;
    let mut errors = ValidationErrors::new();
    let key = idempotency_key(&headers, &mut errors);
    let request = errors.absorb(BatchRequest::from_json(&body));
    if let Some(request) = &request {
        check_retention(&request.spec, state.retention_max_days, "export.retention_days", &mut errors);
    }
    let request = valid(request, errors)?;
    let requested = state.batches.request(request, key, &state.tenants).await?;
    let (status, resource) = if requested.created {
        // Nothing has run yet: every target is pending, no need to read the records.
        (
            StatusCode::ACCEPTED,
            BatchResource::new(&requested.batch, &BatchSummary::compute(&requested.batch, &[])),
        )
    } else {
        let view = state.batches.get(requested.batch.id).await?;
        (StatusCode::OK, BatchResource::new(&view.batch, &view.summary))
    };
    let mut response = (status, Json(&resource)).into_response();
    let headers = response.headers_mut();
    if let Ok(location) = HeaderValue::from_str(&resource.links.self_) {
        headers.insert(LOCATION, location);
    }
    if resource.status == BatchStatusBody::Running {
        headers.insert(RETRY_AFTER, HeaderValue::from_static(POLL_AFTER_S));
    }
    if !requested.created {
        headers.insert(IDEMPOTENT_REPLAYED, HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// A batch's progress: counts, and every target's export ID and status (with the reason of each
/// failure). While it runs the response carries `Retry-After`.
#[utoipa::path(
    get, path = "/v1/exports/batch/{id}", tag = "batches",
    params(("id" = Uuid, Path, description = "Batch ID")),
    responses(
        (status = 200, description = "The batch.", body = BatchResource,
         headers(("Retry-After" = u32, description = "Present while the batch runs: seconds before polling."))),
        (status = 403, description = "Not an operator key with the `batch` permission (`forbidden`).",
         body = Problem, content_type = "application/problem+json"),
        (status = 404, description = "No such batch.", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn get_batch(
    State(state): State<AppState>,
    _operator: BatchOperator,
    id: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let Path(raw) = id.map_err(|_| ApiError::BatchNotFound)?;
    let id = BatchId::parse(&raw).map_err(|_| ApiError::BatchNotFound)?;
    let view = state.batches.get(id).await?;
    let resource = BatchResource::new(&view.batch, &view.summary);
    let mut response = Json(&resource).into_response();
    if resource.status == BatchStatusBody::Running {
        response.headers_mut().insert(RETRY_AFTER, HeaderValue::from_static(POLL_AFTER_S));
    }
    Ok(response)
}
