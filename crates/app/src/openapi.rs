//! The OpenAPI 3.1 description of the API, generated from the handlers and body types.

use std::sync::LazyLock;

use axum::Json;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi};

use crate::dto;
use crate::dto_schedules;
use crate::problem;
use crate::routes::{batches, events, exports, health, schedules};

#[derive(Debug, OpenApi)]
#[openapi(
    info(
        title = "userexport",
        description = "Exports a tenant's user records to CSV, JSON or NDJSON files. Every error is an \
                       RFC 9457 `application/problem+json` document with a stable `type` URI."
    ),
    paths(
        exports::create_export,
        exports::create_export_sync,
        exports::list_exports,
        exports::get_export,
        exports::download_export,
        exports::cancel_export,
        events::export_requested,
        batches::create_batch,
        batches::get_batch,
        schedules::create_schedule,
        schedules::list_schedules,
        schedules::get_schedule,
        schedules::patch_schedule,
        schedules::delete_schedule,
        schedules::trigger_schedule,
        health::healthz,
        health::readyz,
        openapi_json,
    ),
    components(schemas(problem::Problem, problem::FieldErrorBody, dto::ExportResource, dto::ExportList,
                       dto_schedules::ScheduleResource, dto_schedules::ScheduleList)),
    modifiers(&BearerAuth),
    security(("bearer" = [])),
    tags(
        (name = "exports", description = "Request, follow, download and cancel exports."),
        (name = "events", description = "Start exports from events (also consumed from NATS JetStream)."),
        (name = "batches", description = "Operators: run one export for many tenants and follow it."),
        (name = "schedules", description = "Run exports on a cron schedule; pause, change, trigger."),
        (name = "health", description = "Probes for orchestrators and load balancers."),
    )
)]
pub struct ApiDoc;

/// The error responses every authenticated route can give, declared once. Only documents the
/// API: handlers answer with `ApiError`.
#[derive(utoipa::IntoResponses)]
#[allow(dead_code)]
pub(crate) enum CommonErrors {
    #[response(status = 401, description = "Missing or invalid API key.",
               content_type = "application/problem+json", headers(("WWW-Authenticate" = String)))]
    Unauthenticated(problem::Problem),
    #[response(
        status = 500,
        description = "Unexpected failure; details are logged, not returned.",
        content_type = "application/problem+json"
    )]
    Internal(problem::Problem),
    #[response(status = 503, description = "A dependency is temporarily unavailable.",
               content_type = "application/problem+json", headers(("Retry-After" = u32)))]
    Unavailable(problem::Problem),
}

/// Adds the `bearer` security scheme: `Authorization: Bearer <API key>`.
#[derive(Debug)]
struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .description(Some("An API key; each key belongs to one tenant and environment."))
                    .build(),
            ),
        );
    }
}

static SPEC: LazyLock<utoipa::openapi::OpenApi> = LazyLock::new(ApiDoc::openapi);

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", content_type = "application/json"))
)]
pub async fn openapi_json() -> Json<utoipa::openapi::OpenApi> {
    Json(SPEC.clone())
}
