//! Checks a response against the served OpenAPI document: the operation is found by method and
//! path template, the response by status (an undocumented status fails), its body is validated
//! against the documented schema of its media type, and its headers against theirs (a `required`
//! header must be there). `TestApp::send` runs it on every response an API test receives.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use http::{HeaderMap, Method, StatusCode};
use jsonschema::{Draft, Validator};
use serde_json::{Value, json};

/// The served document and the validators compiled from it so far.
pub struct Contract {
    pub doc: Value,
    validators: Mutex<HashMap<String, Arc<Validator>>>,
}

impl Contract {
    pub fn new(doc: Value) -> Self {
        Self { doc, validators: Mutex::new(HashMap::new()) }
    }

    /// The path template and operation that `method path` (no query) is, preferring templates
    /// with more literal segments (`/v1/exports/batch` over `/v1/exports/{id}`).
    pub fn operation(&self, method: &Method, path: &str) -> Option<(&str, &Value)> {
        let (template, item) = self.path_item(path)?;
        Some((template, item.get(method.as_str().to_ascii_lowercase())?))
    }

    /// The path template `path` is an instance of, and its path item.
    fn path_item(&self, path: &str) -> Option<(&str, &Value)> {
        let segments: Vec<&str> = path.split('/').collect();
        self.doc["paths"]
            .as_object()?
            .iter()
            .filter_map(|(template, item)| {
                let parts: Vec<&str> = template.split('/').collect();
                if parts.len() != segments.len() {
                    return None;
                }
                let mut literal = 0;
                for (part, segment) in parts.iter().zip(&segments) {
                    if part.starts_with('{') {
                        if segment.is_empty() {
                            return None;
                        }
                    } else if part == segment {
                        literal += 1;
                    } else {
                        return None;
                    }
                }
                Some((literal, template.as_str(), item))
            })
            .max_by_key(|(literal, ..)| *literal)
            .map(|(_, template, item)| (template, item))
    }

    /// `schema` (which may refer to `#/components/...`) compiled once.
    pub fn validator(&self, schema: &Value) -> Arc<Validator> {
        let key = schema.to_string();
        let mut validators = self.validators.lock().unwrap();
        if let Some(validator) = validators.get(&key) {
            return Arc::clone(validator);
        }
        let root = json!({"components": self.doc["components"], "allOf": [schema]});
        let validator = jsonschema::options()
            .with_draft(Draft::Draft202012)
            .should_validate_formats(true)
            .build(&root)
            .unwrap_or_else(|e| panic!("the document's schema {schema} does not compile: {e}"));
        let validator = Arc::new(validator);
        validators.insert(key, Arc::clone(&validator));
        validator
    }

    /// Every way `instance` breaks `schema`, one line each (empty: valid).
    pub fn violations(&self, schema: &Value, instance: &Value) -> Vec<String> {
        self.validator(schema)
            .iter_errors(instance)
            .map(|e| format!("at `{}`: {e}", e.instance_path()))
            .collect()
    }

    pub fn is_valid(&self, schema: &Value, instance: &Value) -> bool {
        self.validator(schema).is_valid(instance)
    }

    /// Fails the test unless the document describes this response to `method path`.
    #[track_caller]
    pub fn check(&self, method: &Method, path: &str, status: StatusCode, headers: &HeaderMap, body: &[u8]) {
        let text = || String::from_utf8_lossy(body).chars().take(2000).collect::<String>();
        let Some((template, operation)) = self.operation(method, path) else {
            // Not an operation of the API: the router's own 404, or 405 for a path it has.
            let expected = if self.path_item(path).is_some() { 405 } else { 404 };
            assert!(
                status.as_u16() == expected,
                "{method} {path} is not in the document, yet answered {status}: {}",
                text()
            );
            self.check_json(
                &json!({"$ref": "#/components/schemas/Problem"}),
                body,
                "router fallback",
                &text(),
            );
            return;
        };
        let what = format!("{method} {template} answered {status}");
        let Some(response) = operation["responses"].get(status.as_str()) else {
            panic!("{what}, a status the document does not list for it: {}", text());
        };
        let content_type = headers
            .get(http::header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .map(|v| v.trim().to_ascii_lowercase());
        match (response.get("content").and_then(Value::as_object), content_type) {
            (None, _) => {
                assert!(body.is_empty(), "{what} with a body the document does not describe: {}", text())
            }
            (Some(_), None) => panic!("{what} without Content-Type: {}", text()),
            (Some(content), Some(content_type)) => {
                let Some(media) = content.get(&content_type) else {
                    panic!("{what} as {content_type}, not one of {:?}", content.keys().collect::<Vec<_>>());
                };
                let is_json = content_type == "application/json" || content_type.ends_with("+json");
                if let (true, Some(schema)) = (is_json, media.get("schema")) {
                    self.check_json(schema, body, &what, &text());
                }
            }
        }
        for (name, header) in response.get("headers").and_then(Value::as_object).into_iter().flatten() {
            let value = headers
                .get(name.as_str())
                .map(|v| v.to_str().unwrap_or_else(|_| panic!("{what}: {name} is not text")));
            let Some(value) = value else {
                assert!(header["required"] != true, "{what} without its required header {name}: {}", text());
                continue;
            };
            let typed = match header["schema"]["type"].as_str() {
                Some("integer") => {
                    value.parse::<i64>().map(Value::from).unwrap_or_else(|_| Value::from(value))
                }
                _ => Value::from(value),
            };
            let violations = self.violations(&header["schema"], &typed);
            assert!(
                violations.is_empty(),
                "{what}: header {name}: {value:?} breaks its schema: {violations:?}"
            );
        }
    }

    #[track_caller]
    fn check_json(&self, schema: &Value, body: &[u8], what: &str, text: &str) {
        let instance: Value = serde_json::from_slice(body)
            .unwrap_or_else(|e| panic!("{what} with a body that is not JSON ({e}): {text}"));
        let violations = self.violations(schema, &instance);
        assert!(
            violations.is_empty(),
            "{what} with a body that breaks its schema:\n{}\nbody: {text}",
            violations.join("\n")
        );
    }
}
