//! The OpenAPI 3.1 description of the API, generated from the handlers and body types.

use std::collections::BTreeSet;
use std::sync::LazyLock;

use axum::Json;
use axum::extract::State;
use serde_json::Value;
use utoipa::openapi::header::Header;
use utoipa::openapi::path::Operation;
use utoipa::openapi::response::{Response, ResponseBuilder};
use utoipa::openapi::schema::{Object, Type};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{ContentBuilder, Ref, RefOr};
use utoipa::{Modify, OpenApi};

use crate::dto;
use crate::dto_schedules;
use crate::problem;
use crate::routes::{batches, events, exports, health, schedules};
use crate::state::AppState;

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
        exports::download_link,
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
        schedules::preview_schedule,
        health::healthz,
        health::readyz,
        openapi_json,
    ),
    components(schemas(problem::Problem, problem::FieldErrorBody, dto::ExportResource, dto::ExportList, dto::DownloadLinkResource,
                       dto_schedules::ScheduleResource, dto_schedules::ScheduleList)),
    modifiers(&BearerAuth, &CommonResponses),
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

/// The answers any operation can give, declared here once rather than on every route: `401`
/// where an API key is needed, `400`/`413` where a body is read, and everywhere `429`
/// (rate limit, failed authentications or quota), `500` and `503` (load shedding, timeout or a dependency down). Every response
/// carries `X-Request-Id`. An answer a route declares itself is kept as it is.
#[derive(Debug)]
struct CommonResponses;

impl Modify for CommonResponses {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        for item in openapi.paths.paths.values_mut() {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.options,
                &mut item.head,
                &mut item.patch,
                &mut item.trace,
            ];
            for operation in operations.into_iter().flatten() {
                add_common_responses(operation);
            }
        }
    }
}

fn add_common_responses(operation: &mut Operation) {
    // `security(())` (one empty requirement) opens an operation to anyone; otherwise the
    // document's bearer requirement applies.
    let secured = operation
        .security
        .as_ref()
        .is_none_or(|requirements| requirements.iter().any(|r| *r != SecurityRequirement::default()));
    let mut common = Vec::new();
    if operation.request_body.is_some() {
        common.push((
            "400",
            problem_response(
                "Malformed JSON, or not `Content-Type: application/json` \
            (`bad-request`, `malformed-json`, `unsupported-media-type`).",
            ),
            None,
        ));
        common.push((
            "413",
            problem_response("Request body larger than 64 KiB (`payload-too-large`)."),
            None,
        ));
    }
    if secured {
        common.push((
            "401",
            problem_response("Missing or invalid API key (`unauthenticated`)."),
            Some(("WWW-Authenticate", "The `Bearer` challenge.", Type::String)),
        ));
    }
    common.extend([
        (
            "429",
            problem_response(
                "Too many requests for this API key or, on the webhook, this tenant (`rate-limited`); \
                 too many failed authentications from this address (`auth-throttled`); or a tenant \
                 quota is full (`quota-exceeded`: the tenant's unfinished exports).",
            ),
            Some(("Retry-After", "Seconds to wait before trying again.", Type::Integer)),
        ),
        ("500", problem_response("Unexpected failure; details are logged, not returned (`internal`)."), None),
        (
            "503",
            problem_response(
                "The server is handling as many requests as it takes and shed this one (`overloaded`), \
                 the request was not answered in time (`timeout`), or a dependency is temporarily \
                 unavailable (`service-unavailable`); retry, with the same Idempotency-Key.",
            ),
            Some(("Retry-After", "Seconds to wait before trying again.", Type::Integer)),
        ),
    ]);
    for (status, mut response, header) in common {
        if let Some((name, description, kind)) = header {
            response.headers.insert(name.to_owned(), header_of(kind, description));
        }
        if status == "429" {
            response.headers.insert(
                "RateLimit".to_owned(),
                header_of(
                    Type::String,
                    "Present for `rate-limited`: the limit's remaining quota and reset \
                    (IETF `RateLimit` header, e.g. `\"default\";r=0;t=1`).",
                ),
            );
            response.headers.insert(
                "RateLimit-Policy".to_owned(),
                header_of(
                    Type::String,
                    "Present for `rate-limited`: the policy applied \
                    (IETF `RateLimit-Policy` header, e.g. `\"default\";q=50;w=1`).",
                ),
            );
        }
        operation.responses.responses.entry(status.to_owned()).or_insert(RefOr::T(response));
    }
    for response in operation.responses.responses.values_mut() {
        if let RefOr::T(response) = response {
            response.headers.insert(
                "X-Request-Id".to_owned(),
                header_of(
                    Type::String,
                    "This request's ID, as sent in `X-Request-Id` or made up; it is in the logs.",
                ),
            );
        }
    }
}

fn problem_response(description: &str) -> Response {
    ResponseBuilder::new()
        .description(description)
        .content(
            crate::problem::PROBLEM_JSON,
            ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build(),
        )
        .build()
}

fn header_of(kind: Type, description: &str) -> RefOr<Header> {
    let mut header = Header::new(Object::with_type(kind));
    header.description = Some(description.to_owned());
    header.into()
}

/// The document as served: what utoipa builds, finished with what its model cannot say (see
/// [`finish`]). Built once; [`document`] only fills in the configuration.
static DOCUMENT: LazyLock<Value> = LazyLock::new(|| {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or(Value::Null);
    finish(&mut document);
    document
});

/// The document for a server whose `POST /v1/exports/sync` waits at most `sync_max_wait_s` and
/// that keeps files at most `retention_max_days`.
pub fn document(sync_max_wait_s: u64, retention_max_days: u32) -> Value {
    let mut document = DOCUMENT.clone();
    let retention = "/components/schemas/CreateExportRequest/properties/retention_days/maximum";
    if let Some(maximum) = document.pointer_mut(retention) {
        *maximum = retention_max_days.into();
    }
    let parameters = document.pointer_mut("/paths/~1v1~1exports~1sync/post/parameters");
    for parameter in parameters.and_then(Value::as_array_mut).into_iter().flatten() {
        if parameter["name"] == "timeout_s" {
            parameter["schema"]["maximum"] = sync_max_wait_s.into();
        }
    }
    document
}

/// What utoipa's model cannot carry: a response header is `required` (always sent) unless its
/// description says when it is present ("Present ..."); and request bodies are closed
/// (`additionalProperties: false`): every request parser refuses unknown fields.
fn finish(document: &mut Value) {
    let mut request_schemas = Vec::new();
    for item in document["paths"].as_object_mut().into_iter().flat_map(|paths| paths.values_mut()) {
        for operation in item.as_object_mut().into_iter().flat_map(|item| item.values_mut()) {
            if let Some(reference) = operation.pointer("/requestBody/content/application~1json/schema/$ref") {
                request_schemas.extend(reference.as_str().map(str::to_owned));
            }
            let responses = operation.get_mut("responses").and_then(Value::as_object_mut);
            for response in responses.into_iter().flat_map(|responses| responses.values_mut()) {
                let headers = response.get_mut("headers").and_then(Value::as_object_mut);
                for header in headers.into_iter().flat_map(|headers| headers.values_mut()) {
                    let optional = header["description"].as_str().is_some_and(|d| d.starts_with("Present "));
                    header["required"] = Value::Bool(!optional);
                }
            }
        }
    }
    let Some(schemas) = document.pointer_mut("/components/schemas") else { return };
    // A PATCH must change something (utoipa 5.5 writes a `min_properties` attribute as `maxProperties`).
    if let Some(patch) = schemas.get_mut("PatchScheduleRequest").and_then(Value::as_object_mut) {
        patch.insert("minProperties".to_owned(), Value::from(1));
    }
    let mut seen = BTreeSet::new();
    while let Some(reference) = request_schemas.pop() {
        let Some(name) = reference.strip_prefix("#/components/schemas/") else { continue };
        if !seen.insert(name.to_owned()) {
            continue;
        }
        if let Some(schema) = schemas.get_mut(name) {
            close_objects(schema, &mut request_schemas);
        }
    }
}

/// Sets `additionalProperties: false` on every object schema in `schema` that lists its
/// properties, and collects the references to follow.
fn close_objects(schema: &mut Value, references: &mut Vec<String>) {
    match schema {
        Value::Object(map) => {
            if map.contains_key("properties") && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".to_owned(), Value::Bool(false));
            }
            if let Some(Value::String(reference)) = map.get("$ref") {
                references.push(reference.clone());
            }
            for value in map.values_mut() {
                close_objects(value, references);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(|item| close_objects(item, references)),
        _ => {}
    }
}

/// This document.
#[utoipa::path(
    get, path = "/openapi.json", tag = "health", security(()),
    responses((status = 200, description = "The OpenAPI 3.1 description of this API.", content_type = "application/json"))
)]
pub async fn openapi_json(State(state): State<AppState>) -> Json<Value> {
    Json(document(state.sync.max_wait.as_secs(), state.retention_max_days))
}
