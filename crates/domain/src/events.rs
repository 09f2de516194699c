//! `ExportRequested`: the event that asks for an export from outside the HTTP API (NATS JetStream
//! or the signed webhook), parsed and validated once into [`ExportRequested`].
//!
//! ```json
//! {"event_id": "evt-42", "tenant_id": "acme", "environment_id": "prod",
//!  "occurred_at": "2026-11-25T10:00:00Z", "request": {"format": "csv"}}
//! ```
//!
//! The event ID is the export's idempotency key (`event:{event_id}`): the same event delivered
//! twice, or once over NATS and once over the webhook, always names the same export.

use chrono::{DateTime, Utc};
use serde_json::{Map, Value};

use crate::ids::{EnvironmentId, IdempotencyKey, Scope, TenantId};
use crate::request::ExportSpec;
use crate::signature::{self, SignatureError};
use crate::tenants::TenantDirectory;
use crate::validation::ValidationErrors;

/// Longest accepted `event_id` (the idempotency key adds a prefix and is capped at 255).
pub const EVENT_ID_MAX_LEN: usize = 200;
const IDEMPOTENCY_PREFIX: &str = "event:";
const FIELDS: &str = "event_id, tenant_id, environment_id, occurred_at or request";

/// A validated `ExportRequested` event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRequested {
    /// The producer's ID of this event, as sent.
    pub event_id: String,
    pub scope: Scope,
    pub spec: ExportSpec,
    pub occurred_at: Option<DateTime<Utc>>,
    key: IdempotencyKey,
}

/// Why an event was rejected. All of these are permanent: redelivering the same bytes cannot help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EventError {
    /// The payload is not a JSON document.
    #[error("the event is not valid JSON: {0}")]
    InvalidJson(String),
    /// The envelope (`event_id`, `tenant_id`, `environment_id`, `occurred_at`, unknown fields) is
    /// invalid; every failing field is listed, the request's included (as `request.…`).
    #[error("invalid event: {0}")]
    InvalidEvent(ValidationErrors),
    /// The envelope is valid, the export request in it is not (fields as `request.…`).
    #[error("invalid export request in event: {0}")]
    InvalidRequest(ValidationErrors),
}

impl EventError {
    /// Stable machine-readable reason (`invalid_json`, `invalid_event`, `invalid_request`).
    pub fn code(&self) -> &'static str {
        match self {
            Self::InvalidJson(_) => "invalid_json",
            Self::InvalidEvent(_) => "invalid_event",
            Self::InvalidRequest(_) => "invalid_request",
        }
    }

    /// The field errors, when the payload was JSON.
    pub fn validation_errors(&self) -> Option<&ValidationErrors> {
        match self {
            Self::InvalidJson(_) => None,
            Self::InvalidEvent(errors) | Self::InvalidRequest(errors) => Some(errors),
        }
    }
}

impl ExportRequested {
    /// Parses and validates an event from its raw bytes, reporting every failing field.
    ///
    /// # Errors
    /// [`EventError`], telling apart bad JSON, a bad envelope and a bad export request.
    pub fn from_slice(raw: &[u8]) -> Result<Self, EventError> {
        let value: Value = serde_json::from_slice(raw).map_err(|e| EventError::InvalidJson(e.to_string()))?;
        Self::from_json(&value)
    }

    /// As [`ExportRequested::from_slice`], from a parsed JSON value.
    ///
    /// # Errors
    /// As [`ExportRequested::from_slice`] (never `InvalidJson`).
    pub fn from_json(value: &Value) -> Result<Self, EventError> {
        let mut errors = ValidationErrors::new();
        let Some(obj) = value.as_object() else {
            errors.add("", "invalid_type", "the event must be a JSON object");
            return Err(EventError::InvalidEvent(errors));
        };
        for key in obj.keys() {
            if !matches!(
                key.as_str(),
                "event_id" | "tenant_id" | "environment_id" | "occurred_at" | "request"
            ) {
                errors.add(key.as_str(), "unknown_field", format!("unknown field; expected {FIELDS}"));
            }
        }
        let event_id = event_id(obj, &mut errors);
        let tenant = slug(obj, "tenant_id", TenantId::parse, &mut errors);
        let environment = slug(obj, "environment_id", EnvironmentId::parse, &mut errors);
        let occurred_at = match obj.get("occurred_at") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match DateTime::parse_from_rfc3339(s) {
                Ok(t) => Some(t.with_timezone(&Utc)),
                Err(_) => {
                    errors.add("occurred_at", "invalid_value", "occurred_at must be an RFC 3339 timestamp");
                    None
                }
            },
            Some(_) => {
                errors.add("occurred_at", "invalid_type", "occurred_at must be an RFC 3339 timestamp string");
                None
            }
        };
        let envelope_ok = errors.is_empty();
        let spec = match obj.get("request") {
            None | Some(Value::Null) => {
                errors.add(
                    "request",
                    "required",
                    "request is required: the export request, as for POST /v1/exports",
                );
                None
            }
            Some(request) => match ExportSpec::from_json(request) {
                Ok(spec) => Some(spec),
                Err(invalid) => {
                    errors.extend_nested("request", invalid);
                    None
                }
            },
        };
        match (event_id, tenant, environment, spec) {
            (Some((event_id, key)), Some(tenant), Some(environment), Some(spec)) if errors.is_empty() => {
                Ok(Self { event_id, scope: Scope::new(tenant, environment), spec, occurred_at, key })
            }
            _ if envelope_ok && obj.get("request").is_some_and(|r| !r.is_null()) => {
                Err(EventError::InvalidRequest(errors))
            }
            _ => Err(EventError::InvalidEvent(errors)),
        }
    }

    /// The export's idempotency key: `event:{event_id}`.
    pub fn idempotency_key(&self) -> IdempotencyKey {
        self.key.clone()
    }
}

/// Reads just `tenant_id` and `environment_id` from a payload, without validating the rest: the
/// webhook needs the tenant (to find its secret) before it may trust anything else in the body.
pub fn claimed_scope(raw: &[u8]) -> Option<Scope> {
    let value: Value = serde_json::from_slice(raw).ok()?;
    let tenant = TenantId::parse(value.get("tenant_id")?.as_str()?).ok()?;
    let environment = EnvironmentId::parse(value.get("environment_id")?.as_str()?).ok()?;
    Some(Scope::new(tenant, environment))
}

/// Stands in for the secret of a tenant that has none, so that an unknown tenant costs the same
/// work and gets the same answer as a wrong signature. Never accepted (see [`verify_signed`]).
const NO_SECRET: &[u8] = b"userexport: no webhook secret for this tenant";

/// Checks that a raw event is signed ([`crate::signature`]) with the webhook secret of the
/// tenant it names, before anything else in it is trusted. A payload naming no tenant, an
/// unknown one or one without a secret fails like a wrong signature (`Mismatch`), after the
/// same work, so the answer tells nothing about which tenants exist. Returns the proven scope.
///
/// # Errors
/// [`SignatureError`]: missing or malformed headers, a stale timestamp, or no matching signature.
pub fn verify_signed(
    tenants: &TenantDirectory,
    timestamp: Option<&str>,
    signature: Option<&str>,
    raw: &[u8],
    now: i64,
    window: std::time::Duration,
) -> Result<Scope, SignatureError> {
    let scope = claimed_scope(raw);
    let secret = scope.as_ref().and_then(|s| tenants.get(s)).and_then(|t| t.webhook_secret.as_ref());
    signature::verify(secret.map_or(NO_SECRET, |s| s.expose()), timestamp, signature, raw, now, window)?;
    match (scope, secret) {
        (Some(scope), Some(_)) => Ok(scope),
        // Anyone can sign with NO_SECRET: it proves nothing.
        _ => Err(SignatureError::Mismatch),
    }
}

/// The event ID from a payload that may be invalid otherwise (for logging a rejected event).
pub fn claimed_event_id(raw: &[u8]) -> Option<String> {
    let value: Value = serde_json::from_slice(raw).ok()?;
    let id = value.get("event_id")?.as_str()?;
    (id.len() <= EVENT_ID_MAX_LEN).then(|| id.to_owned())
}

fn idempotency_key(event_id: &str) -> Option<IdempotencyKey> {
    IdempotencyKey::parse(&format!("{IDEMPOTENCY_PREFIX}{event_id}")).ok()
}

fn event_id(obj: &Map<String, Value>, errors: &mut ValidationErrors) -> Option<(String, IdempotencyKey)> {
    match obj.get("event_id") {
        None | Some(Value::Null) => {
            errors.add(
                "event_id",
                "required",
                "event_id is required: the producer's unique ID of this event",
            );
            None
        }
        Some(Value::String(id))
            if !id.is_empty() && id.len() <= EVENT_ID_MAX_LEN && id.chars().all(|c| c.is_ascii_graphic()) =>
        {
            match idempotency_key(id) {
                Some(key) => Some((id.clone(), key)),
                None => {
                    errors.add("event_id", "invalid_value", "event_id cannot be an idempotency key");
                    None
                }
            }
        }
        Some(_) => {
            errors.add(
                "event_id",
                "invalid_value",
                format!("event_id must be 1 to {EVENT_ID_MAX_LEN} printable ASCII characters without spaces"),
            );
            None
        }
    }
}

fn slug<T>(
    obj: &Map<String, Value>,
    field: &str,
    parse: fn(&str) -> Result<T, crate::ids::IdParseError>,
    errors: &mut ValidationErrors,
) -> Option<T> {
    match obj.get(field) {
        None | Some(Value::Null) => {
            errors.add(field, "required", format!("{field} is required"));
            None
        }
        Some(Value::String(raw)) => match parse(raw) {
            Ok(value) => Some(value),
            Err(e) => {
                errors.add(field, "invalid_value", format!("{field} {e}"));
                None
            }
        },
        Some(_) => {
            errors.add(field, "invalid_type", format!("{field} must be a string"));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::request::ExportFormat;

    fn fields(err: &EventError) -> Vec<String> {
        err.validation_errors().unwrap().errors().iter().map(|e| e.field.clone()).collect()
    }

    #[test]
    fn parses_a_valid_event() {
        let raw = br#"{"event_id":"evt-1","tenant_id":"acme","environment_id":"prod",
                       "occurred_at":"2026-11-25T10:00:00Z","request":{"format":"ndjson"}}"#;
        let event = ExportRequested::from_slice(raw).unwrap();
        assert_eq!(event.event_id, "evt-1");
        assert_eq!(event.scope, Scope::parse("acme/prod").unwrap());
        assert_eq!(event.spec.format, ExportFormat::Ndjson);
        assert!(event.occurred_at.is_some());
        assert_eq!(event.idempotency_key().as_str(), "event:evt-1");
    }

    #[test]
    fn tells_bad_json_from_a_bad_envelope_from_a_bad_request() {
        let err = ExportRequested::from_slice(b"{not json").unwrap_err();
        assert_eq!(err.code(), "invalid_json");

        let err =
            ExportRequested::from_json(&json!({"tenant_id": "Acme", "extra": 1, "occurred_at": "yesterday",
            "environment_id": "prod", "request": {"format": "xml"}}))
            .unwrap_err();
        assert_eq!(err.code(), "invalid_event");
        assert_eq!(fields(&err), ["extra", "event_id", "tenant_id", "occurred_at", "request.format"]);

        let err = ExportRequested::from_json(&json!({"event_id": "e", "tenant_id": "acme",
            "environment_id": "prod", "request": {"format": "xml", "limit": 0}}))
        .unwrap_err();
        assert_eq!(err.code(), "invalid_request");
        assert_eq!(fields(&err), ["request.format", "request.limit"]);

        let err = ExportRequested::from_json(&json!({"event_id": "e", "tenant_id": "acme",
            "environment_id": "prod", "request": "csv"}))
        .unwrap_err();
        assert_eq!(fields(&err), ["request"]);

        let err = ExportRequested::from_json(
            &json!({"event_id": "e", "tenant_id": "acme", "environment_id": "prod"}),
        )
        .unwrap_err();
        assert_eq!(err.code(), "invalid_event");
        assert_eq!(fields(&err), ["request"]);

        assert_eq!(ExportRequested::from_json(&json!([1])).unwrap_err().code(), "invalid_event");
    }

    #[test]
    fn event_ids_are_bounded_printable_ascii() {
        for bad in [json!(""), json!("a b"), json!("é"), json!("x".repeat(EVENT_ID_MAX_LEN + 1)), json!(7)] {
            let err = ExportRequested::from_json(&json!({"event_id": bad, "tenant_id": "acme",
                "environment_id": "prod", "request": {"format": "csv"}}))
            .unwrap_err();
            assert_eq!(fields(&err), ["event_id"], "{bad}");
        }
        let long = "x".repeat(EVENT_ID_MAX_LEN);
        let event = ExportRequested::from_json(&json!({"event_id": long, "tenant_id": "acme",
            "environment_id": "prod", "request": {"format": "csv"}}))
        .unwrap();
        assert_eq!(event.idempotency_key().as_str(), format!("event:{long}"));
    }

    #[test]
    fn the_claimed_scope_and_id_are_read_without_validating_the_rest() {
        let raw =
            br#"{"event_id":"e1","tenant_id":"acme","environment_id":"prod","request":{"format":"xml"}}"#;
        assert_eq!(claimed_scope(raw), Some(Scope::parse("acme/prod").unwrap()));
        assert_eq!(claimed_event_id(raw).as_deref(), Some("e1"));
        assert_eq!(claimed_scope(br#"{"tenant_id":"acme"}"#), None);
        assert_eq!(claimed_scope(b"nope"), None);
    }

    const SECRET: &str = "acme-webhook-secret-0123456789";
    const T: i64 = 1_700_000_000;
    const W: std::time::Duration = signature::DEFAULT_REPLAY_WINDOW;

    fn directory() -> TenantDirectory {
        TenantDirectory::parse_json(&format!(
            r#"[{{"scope":"acme/prod","webhook_secret":"{SECRET}"}},
               {{"scope":"globex/prod","webhook_secret":"globex-webhook-secret-0123"}},
               {{"scope":"initech/prod"}}]"#
        ))
        .unwrap()
    }

    fn event(tenant: &str) -> Vec<u8> {
        format!(r#"{{"event_id":"e1","tenant_id":"{tenant}","environment_id":"prod","request":{{"format":"csv"}}}}"#)
            .into_bytes()
    }

    #[test]
    fn a_signed_event_proves_its_tenant() {
        let raw = event("acme");
        let sig = signature::sign(SECRET.as_bytes(), T, &raw);
        let scope = verify_signed(&directory(), Some(&T.to_string()), Some(&sig), &raw, T, W).unwrap();
        assert_eq!(scope, Scope::parse("acme/prod").unwrap());
    }

    #[test]
    fn unsigned_wrongly_signed_stale_and_unprovable_events_are_refused() {
        let dir = directory();
        let raw = event("acme");
        let ts = T.to_string();
        let check =
            |sig: Option<&str>, raw: &[u8], now: i64| verify_signed(&dir, Some(&ts), sig, raw, now, W);
        assert_eq!(check(None, &raw, T), Err(SignatureError::MissingHeader(signature::SIGNATURE_HEADER)));
        let wrong = signature::sign(b"not-the-secret-at-all-0000", T, &raw);
        assert_eq!(check(Some(&wrong), &raw, T), Err(SignatureError::Mismatch));
        // Another tenant's valid secret proves nothing about acme.
        let other = signature::sign(b"globex-webhook-secret-0123", T, &raw);
        assert_eq!(check(Some(&other), &raw, T), Err(SignatureError::Mismatch));
        let good = signature::sign(SECRET.as_bytes(), T, &raw);
        assert_eq!(check(Some(&good), &raw, T + 301), Err(SignatureError::Stale { age_s: 301 }));
        // No secret (initech) or no such tenant: signing with the stand-in is refused too.
        for tenant in ["initech", "stranger"] {
            let raw = event(tenant);
            let sig = signature::sign(NO_SECRET, T, &raw);
            assert_eq!(check(Some(&sig), &raw, T), Err(SignatureError::Mismatch), "{tenant}");
        }
        let sig = signature::sign(NO_SECRET, T, b"{not json");
        assert_eq!(check(Some(&sig), b"{not json", T), Err(SignatureError::Mismatch));
    }
}

/// Untrusted bytes and structure-aware near-misses: parsing never panics and always answers
/// with an event or a typed error whose code is one of the documented three.
#[cfg(test)]
mod proptests {
    use proptest::prelude::*;
    use serde_json::{Value, json};

    use super::*;

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            any::<f64>().prop_map(Value::from),
            ".{0,40}".prop_map(Value::String),
            Just(json!("acme")),
            Just(json!("prod")),
            Just(json!("csv")),
            Just(json!("2026-11-25T10:00:00Z")),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop_oneof![
                        Just("event_id".to_owned()),
                        Just("tenant_id".to_owned()),
                        Just("environment_id".to_owned()),
                        Just("occurred_at".to_owned()),
                        Just("request".to_owned()),
                        Just("format".to_owned()),
                        ".{0,8}",
                    ],
                    inner,
                    0..6,
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn codes_are_documented(result: &Result<ExportRequested, EventError>) {
        if let Err(err) = result {
            assert!(matches!(err.code(), "invalid_json" | "invalid_event" | "invalid_request"));
            if let Some(errors) = err.validation_errors() {
                assert!(!errors.is_empty(), "a rejection lists at least one field");
            }
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_are_an_event_or_a_typed_error(raw in prop::collection::vec(any::<u8>(), 0..512)) {
            codes_are_documented(&ExportRequested::from_slice(&raw));
            let _ = claimed_scope(&raw);
            let _ = claimed_event_id(&raw);
        }

        #[test]
        fn arbitrary_json_is_an_event_or_a_typed_error(value in arb_json()) {
            codes_are_documented(&ExportRequested::from_json(&value));
            let raw = serde_json::to_vec(&value).unwrap_or_default();
            let _ = claimed_scope(&raw);
        }

        #[test]
        fn near_valid_events_are_an_event_or_a_typed_error(
            event_id in prop_oneof![".{0,210}".prop_map(Value::String), arb_json()],
            tenant in prop_oneof![".{0,70}".prop_map(Value::String), Just(json!("acme"))],
            occurred_at in prop_oneof![Just(Value::Null), ".{0,30}".prop_map(Value::String)],
            request in arb_json(),
        ) {
            let value = json!({"event_id": event_id, "tenant_id": tenant, "environment_id": "prod",
                               "occurred_at": occurred_at, "request": request});
            codes_are_documented(&ExportRequested::from_json(&value));
        }

        #[test]
        fn verifying_arbitrary_headers_never_panics(
            timestamp in prop::option::of(".{0,24}"),
            signature in prop::option::of(".{0,200}"),
            raw in prop::collection::vec(any::<u8>(), 0..200),
            now in any::<i64>(),
        ) {
            let tenants = TenantDirectory::parse_json(
                r#"[{"scope":"acme/prod","webhook_secret":"acme-webhook-secret-0123456789"}]"#,
            ).unwrap_or_default();
            let result = verify_signed(&tenants, timestamp.as_deref(), signature.as_deref(), &raw, now,
                                       signature::DEFAULT_REPLAY_WINDOW);
            prop_assert!(result.is_err(), "nothing arbitrary is signed with acme's secret");
        }
    }
}
