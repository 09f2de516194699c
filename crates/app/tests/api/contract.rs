//! Requests generated from the served OpenAPI document. For every operation that takes input, a
//! valid request is built from its schema's example; then every property and parameter in turn
//! gets values from a pool and from its own constraints (bounds, lengths, enums, one past each).
//! The document decides what each request should get: a request it allows must succeed, one it
//! forbids must be a 4xx problem naming the field. Every answer is also checked against the
//! document by `TestApp::send`, and none may be a 5xx.

use std::sync::atomic::{AtomicU64, Ordering};

use axum::body::Body;
use chrono::Utc;
use domain::signature::{SIGNATURE_HEADER, TIMESTAMP_HEADER, sign};
use http::{HeaderValue, Request, StatusCode};
use serde_json::{Value, json};

use crate::contract_check::Contract;
use crate::helpers::{ACME_KEY, TestApp, TestResponse};

const OPERATOR_KEY: &str = "operator-contract-key-90c2e1";
const ACME_SECRET: &str = "acme-webhook-secret-contract-3e8a";

/// Fields whose values the server checks further than a schema can say; a value the schema
/// allows may still be refused (never with a 5xx): IANA zone names, cron field values, mail
/// domains, tenants that exist, `created_after` before `created_before`, the webhook's tenant,
/// which must own the signing secret, and cursors, which only the server makes.
const CHECKED_FURTHER: &[&str] = &[
    "cron",
    "timezone",
    "notify_email",
    "targets",
    "created_after",
    "created_before",
    "tenant_id",
    "environment_id",
    "cursor",
];

static UNIQUE: AtomicU64 = AtomicU64::new(0);

fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", UNIQUE.fetch_add(1, Ordering::Relaxed))
}

/// Where a mutated value goes.
#[derive(Debug, Clone)]
enum Place {
    /// Nothing: the request as built.
    Nothing,
    /// A dotted path in the JSON body (`request.user_filters.status`); empty: the whole body.
    Body(String),
    Query(String),
    Header(String),
}

/// One operation under test.
struct Operation {
    method: http::Method,
    template: String,
    uri_path: String,
    spec: Value,
    body_schema: Option<Value>,
    example: Option<Value>,
}

struct Fixture {
    app: TestApp,
    export_id: String,
    schedule_id: String,
}

async fn fixture() -> Fixture {
    let app = TestApp::builder()
        .users(5)
        .config(|c| {
            c.operator_keys = Some(format!("{OPERATOR_KEY}=batch").as_str().into());
            c.tenants.tenants =
                Some(format!(r#"[{{"scope":"acme/prod","webhook_secret":"{ACME_SECRET}"}}]"#));
        })
        .spawn()
        .await;
    let export = app.create_completed(&json!({"format": "csv"})).await;
    let schedule = app
        .post_json(
            Some(ACME_KEY),
            "/v1/export-schedules",
            &json!({"cron": "0 3 * * *", "request": {"format": "csv"}}),
        )
        .await;
    assert_eq!(schedule.status, StatusCode::CREATED, "{}", schedule.text());
    Fixture {
        export_id: export["id"].as_str().unwrap().to_owned(),
        schedule_id: schedule.json()["id"].as_str().unwrap().to_owned(),
        app,
    }
}

/// `schema` with its `$ref` followed.
fn resolve<'a>(doc: &'a Value, schema: &'a Value) -> &'a Value {
    match schema.get("$ref").and_then(Value::as_str).and_then(|r| r.strip_prefix('#')) {
        Some(pointer) => doc.pointer(pointer).map_or(schema, |s| resolve(doc, s)),
        None => schema,
    }
}

/// The operations that take a body or query and header parameters.
fn operations(fixture: &Fixture, doc: &Value) -> Vec<Operation> {
    let mut operations = Vec::new();
    for (template, item) in doc["paths"].as_object().unwrap() {
        for (method, spec) in item.as_object().unwrap() {
            let params = spec["parameters"].as_array().into_iter().flatten();
            let takes_input = spec.get("requestBody").is_some() || params.clone().any(|p| p["in"] != "path");
            if !takes_input {
                continue;
            }
            let id = if template.starts_with("/v1/export-schedules/") {
                &fixture.schedule_id
            } else {
                &fixture.export_id
            };
            let body_schema = spec.pointer("/requestBody/content/application~1json/schema").cloned();
            let example = body_schema.as_ref().map(|s| resolve(doc, s)["example"].clone());
            if let Some(example) = &example {
                assert!(!example.is_null(), "{method} {template}: its request body schema has no example");
            }
            operations.push(Operation {
                method: method.to_uppercase().parse().unwrap(),
                template: template.clone(),
                uri_path: template.replace("{id}", id),
                spec: spec.clone(),
                body_schema,
                example,
            });
        }
    }
    operations
}

/// Values worth trying anywhere.
fn pool() -> Vec<Value> {
    json!([null, true, 0, -1, 1, 1.5, "", "x", "x y", "not valid!", "ACTIVE", "2030-01-01T00:00:00Z",
           "ops@example.com", "example.com", "0 3 * * *", "UTC", [], ["x"], {}, {"x": 1}])
    .as_array()
    .unwrap()
    .clone()
}

/// Values at and one past each constraint of `schema` (and of its alternatives).
fn edges(doc: &Value, schema: &Value, out: &mut Vec<Value>) {
    let schema = resolve(doc, schema);
    for key in ["oneOf", "anyOf", "allOf"] {
        for alternative in schema[key].as_array().into_iter().flatten() {
            edges(doc, alternative, out);
        }
    }
    for value in schema["enum"].as_array().into_iter().flatten() {
        out.push(value.clone());
        out.push(json!([value]));
        out.push(json!([value, value]));
    }
    out.extend(schema.get("example").cloned());
    out.extend(schema["examples"].as_array().into_iter().flatten().cloned());
    for (bound, step) in [("minimum", -1), ("maximum", 1)] {
        if let Some(n) = schema[bound].as_i64() {
            out.extend([json!(n), json!(n + step)]);
        }
    }
    for (bound, step) in [("minLength", -1), ("maxLength", 1)] {
        if let Some(n) = schema[bound].as_i64() {
            for len in [n, n + step] {
                out.extend(usize::try_from(len).ok().map(|len| json!("a".repeat(len))));
            }
        }
    }
    if let Some(items) = schema.get("items") {
        let mut inner = Vec::new();
        edges(doc, items, &mut inner);
        out.extend(inner.into_iter().take(3).map(|item| json!([item])));
    }
}

/// Dotted paths of every property of `schema`, depth first, with the property's schema.
fn properties(doc: &Value, schema: &Value, prefix: &str, out: &mut Vec<(String, Value)>) {
    let schema = resolve(doc, schema);
    for alternative in schema["oneOf"].as_array().into_iter().flatten() {
        properties(doc, alternative, prefix, out);
    }
    for (name, property) in schema["properties"].as_object().into_iter().flatten() {
        let path = if prefix.is_empty() { name.clone() } else { format!("{prefix}.{name}") };
        out.push((path.clone(), property.clone()));
        if prefix.matches('.').count() < 2 {
            properties(doc, property, &path, out);
        }
    }
}

/// Sets the property at the dotted `path`, creating the objects on the way; `None` removes it
/// (and creates nothing).
fn set_path(body: &mut Value, path: &str, value: Option<Value>) {
    if value.is_none() {
        let (parent, name) = path.rsplit_once('.').unwrap_or(("", path));
        let pointer =
            if parent.is_empty() { String::new() } else { format!("/{}", parent.replace('.', "/")) };
        if let Some(map) = body.pointer_mut(&pointer).and_then(Value::as_object_mut) {
            map.remove(name);
        }
        return;
    }
    let mut target = body;
    let mut parts = path.split('.').peekable();
    while let Some(part) = parts.next() {
        if !target.is_object() {
            *target = json!({});
        }
        let map = target.as_object_mut().unwrap();
        if parts.peek().is_none() {
            match value {
                Some(value) => map.insert(part.to_owned(), value),
                None => map.remove(part),
            };
            return;
        }
        target = map.entry(part).or_insert_with(|| json!({}));
    }
}

/// What a field is called in a problem's `errors`.
fn names(problem: &Value, place: &Place) -> bool {
    let field = match place {
        Place::Nothing => return true,
        Place::Body(path) if path.is_empty() => return true,
        Place::Body(path) => path.clone(),
        Place::Query(name) | Place::Header(name) => name.clone(),
    };
    problem["errors"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|e| e["field"].as_str())
        .any(|f| f == field || f.starts_with(&format!("{field}.")) || f.starts_with(&format!("{field}[")))
}

impl Fixture {
    /// Sends `body` and the extra `query` and `headers` to `operation`, with the credentials it
    /// needs (a webhook gets a unique event ID unless the body names one, and is signed).
    async fn send(
        &self,
        operation: &Operation,
        query: &[(String, String)],
        headers: &[(String, HeaderValue)],
        body: Option<&Value>,
    ) -> TestResponse {
        let mut uri = operation.uri_path.clone();
        if !query.is_empty() {
            let encoded = url::form_urlencoded::Serializer::new(String::new()).extend_pairs(query).finish();
            uri = format!("{uri}?{encoded}");
        }
        let mut request = Request::builder().method(operation.method.clone()).uri(uri);
        let bytes = body.map(|b| serde_json::to_vec(b).unwrap()).unwrap_or_default();
        if operation.template == "/v1/events/export-requested" {
            let timestamp = Utc::now().timestamp();
            request = request
                .header("X-Userexport-Tenant", "acme/prod")
                .header(TIMESTAMP_HEADER, timestamp.to_string())
                .header(SIGNATURE_HEADER, sign(ACME_SECRET.as_bytes(), timestamp, &bytes));
        } else if operation.template.starts_with("/v1/exports/batch") {
            request = request.header("authorization", format!("Bearer {OPERATOR_KEY}"));
        } else {
            request = request.header("authorization", format!("Bearer {ACME_KEY}"));
        }
        if body.is_some() {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(name.as_str(), value.clone());
        }
        self.app.send(request.body(Body::from(bytes)).unwrap()).await
    }

    /// The base body of `operation` with `place` set to `value` (removed when `None`).
    fn body_with(&self, operation: &Operation, place: &Place, value: Option<Value>) -> Option<Value> {
        let mut body = operation.example.clone()?;
        if operation.template == "/v1/events/export-requested" {
            body["event_id"] = json!(unique("evt-contract"));
        }
        match place {
            Place::Body(path) if path.is_empty() => return value,
            Place::Body(path) => set_path(&mut body, path, value),
            Place::Nothing | Place::Query(_) | Place::Header(_) => {}
        }
        Some(body)
    }

    /// Sends one generated request and checks the verdict the document gives it.
    async fn attempt(&self, contract: &Contract, operation: &Operation, place: &Place, value: Option<Value>) {
        // A property whose parent the example lacks would be tried inside an incomplete parent
        // (whose own required fields are then missing): other operations try it.
        if let (Place::Body(path), Some(example)) = (place, &operation.example)
            && let Some((parent, _)) = path.rsplit_once('.')
            && example.pointer(&format!("/{}", parent.replace('.', "/"))).is_none_or(|p| !p.is_object())
        {
            return;
        }
        let mut query = Vec::new();
        let mut headers = Vec::new();
        let (body, valid) = match place {
            Place::Nothing | Place::Body(_) => {
                let body = self.body_with(operation, place, value.clone());
                let valid = match (&operation.body_schema, &body) {
                    (Some(schema), Some(body)) => contract.is_valid(schema, body),
                    (schema, _) => schema.is_none(),
                };
                (body, valid)
            }
            Place::Query(name) | Place::Header(name) => {
                let parameter = operation.spec["parameters"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .find(|p| p["name"] == name.as_str())
                    .unwrap();
                let raw = match &value {
                    Some(Value::String(s)) => Some(s.clone()),
                    Some(Value::Null) | None => None,
                    Some(other) => Some(other.to_string()),
                };
                let valid = match &raw {
                    None => parameter["required"] != true,
                    Some(raw) => {
                        let typed = match parameter["schema"]["type"].as_str() {
                            Some("integer") => {
                                raw.parse::<i64>().map(Value::from).unwrap_or_else(|_| json!(raw))
                            }
                            _ => json!(raw),
                        };
                        contract.is_valid(&parameter["schema"], &typed)
                    }
                };
                match (place, raw) {
                    (Place::Query(_), Some(raw)) => query.push((name.clone(), raw)),
                    (Place::Header(_), Some(raw)) => match HeaderValue::from_bytes(raw.as_bytes()) {
                        Ok(value) => headers.push((name.clone(), value)),
                        Err(_) => return,
                    },
                    _ => {}
                }
                (self.body_with(operation, &Place::Nothing, None), valid)
            }
        };
        let response = self.send(operation, &query, &headers, body.as_ref()).await;
        let what = format!("{} {} with {place:?} = {value:?}", operation.method, operation.template);
        assert!(!response.status.is_server_error(), "{what}: {}", response.text());
        let field = match place {
            Place::Nothing => String::new(),
            Place::Body(path) => path.rsplit('.').next().unwrap_or_default().to_owned(),
            Place::Query(name) | Place::Header(name) => name.clone(),
        };
        if valid {
            let further = CHECKED_FURTHER.contains(&field.as_str())
                || matches!(place, Place::Body(path) if path.starts_with("targets"));
            if !further {
                assert!(
                    response.status.is_success(),
                    "{what}: the document allows it, but: {}",
                    response.text()
                );
            }
        } else {
            assert!(
                response.status.is_client_error(),
                "{what}: the document forbids it, but: {}",
                response.text()
            );
            if response.status == StatusCode::UNPROCESSABLE_ENTITY {
                let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
                // Leaving out the only field of a PATCH leaves nothing to change: the body is at fault.
                let body_named = value.is_none()
                    && names(&problem, &Place::Body(String::new()))
                    && problem["errors"].as_array().is_some_and(|e| e.iter().any(|e| e["field"] == ""));
                assert!(
                    names(&problem, place) || body_named,
                    "{what}: the problem does not name the field: {problem}"
                );
            } else {
                // The webhook cannot check the signature of a body whose tenant it cannot read.
                assert!(
                    operation.template == "/v1/events/export-requested"
                        && response.status == StatusCode::UNAUTHORIZED,
                    "{what}: {}",
                    response.text()
                );
            }
        }
        self.settle(&response).await;
    }

    /// Keeps the tenant's quotas free: waits for an export to finish, deletes a new schedule.
    async fn settle(&self, response: &TestResponse) {
        let Some(location) = response.header("location").filter(|_| response.status.is_success()) else {
            return;
        };
        if location.starts_with("/v1/export-schedules/") && response.status == StatusCode::CREATED {
            if location != format!("/v1/export-schedules/{}", self.schedule_id) {
                let request = Request::delete(location)
                    .header("authorization", format!("Bearer {ACME_KEY}"))
                    .body(Body::empty())
                    .unwrap();
                assert_eq!(self.app.send(request).await.status, StatusCode::NO_CONTENT);
            }
        } else if let Some(id) = location.strip_prefix("/v1/exports/").filter(|id| !id.starts_with("batch")) {
            self.app
                .wait_for(id, "finished", |e| {
                    matches!(e["status"].as_str(), Some("completed" | "failed" | "cancelled"))
                })
                .await;
        }
    }
}

#[tokio::test]
async fn requests_generated_from_the_document_get_the_answers_it_promises() {
    let fixture = fixture().await;
    let contract = fixture.app.contract().await;
    let doc = contract.doc.clone();
    let mut attempts = 0;
    for operation in operations(&fixture, &doc) {
        // The valid request as built, then each parameter and property in turn.
        fixture.attempt(contract, &operation, &Place::Nothing, None).await;
        for parameter in operation.spec["parameters"].as_array().into_iter().flatten() {
            let name = parameter["name"].as_str().unwrap().to_owned();
            let place = match parameter["in"].as_str() {
                Some("query") => Place::Query(name),
                Some("header") if !name.starts_with("X-Userexport-") => Place::Header(name),
                _ => continue,
            };
            let mut values = pool();
            edges(&doc, &parameter["schema"], &mut values);
            values.push(json!("é"));
            for value in values {
                fixture.attempt(contract, &operation, &place, Some(value)).await;
                attempts += 1;
            }
        }
        let Some(schema) = &operation.body_schema else { continue };
        for whole in [json!([]), json!("x"), json!(null), json!({"unexpected_field": 1})] {
            fixture.attempt(contract, &operation, &Place::Body(String::new()), Some(whole)).await;
        }
        let mut fields = Vec::new();
        properties(&doc, schema, "", &mut fields);
        for (path, property) in fields {
            let mut values = pool();
            edges(&doc, &property, &mut values);
            let place = Place::Body(path.clone());
            fixture.attempt(contract, &operation, &place, None).await;
            for value in values {
                fixture.attempt(contract, &operation, &place, Some(value)).await;
                attempts += 1;
            }
            if resolve(&doc, &property).get("properties").is_some() {
                let unknown = Place::Body(format!("{path}.unexpected_field"));
                fixture.attempt(contract, &operation, &unknown, Some(json!(1))).await;
            }
        }
    }
    assert!(attempts > 500, "only {attempts} requests were generated");
}
