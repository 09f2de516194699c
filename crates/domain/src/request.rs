//! An export request, validated once at the edge into [`ExportSpec`].
//!
//! Requests are parsed from a JSON value by hand rather than with `#[serde(deny_unknown_fields)]`,
//! because serde stops at the first problem and we report every failing field by name.

use std::collections::BTreeSet;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use crate::email::check_notify_email;
use crate::user::{User, UserField, UserStatus};
use crate::validation::ValidationErrors;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ExportFormat {
    Csv,
    Json,
    Ndjson,
}

impl ExportFormat {
    pub const ALL: [ExportFormat; 3] = [Self::Csv, Self::Json, Self::Ndjson];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Csv => "csv",
            Self::Json => "json",
            Self::Ndjson => "ndjson",
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Self::Csv => "text/csv; charset=utf-8",
            Self::Json => "application/json",
            Self::Ndjson => "application/x-ndjson",
        }
    }
}

impl FromStr for ExportFormat {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|f| f.as_str() == s).ok_or(())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

/// The exported columns, in the order the client asked for. Never empty, never repeated.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct FieldSelection(Vec<UserField>);

impl FieldSelection {
    pub fn all() -> Self {
        Self(UserField::ALL.to_vec())
    }
    pub fn fields(&self) -> &[UserField] {
        &self.0
    }
}

impl Default for FieldSelection {
    fn default() -> Self {
        Self::all()
    }
}

/// Which of a tenant's users an export contains. Every condition present must hold.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UserFilter {
    /// Allowed statuses; `None` means any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<BTreeSet<UserStatus>>,
    /// Users created strictly after this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Users created strictly before this instant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    /// Users whose email address is at exactly this domain (lowercase).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
}

impl UserFilter {
    pub fn matches(&self, user: &User) -> bool {
        self.status.as_ref().is_none_or(|s| s.contains(&user.status))
            && self.created_after.is_none_or(|t| user.created_at > t)
            && self.created_before.is_none_or(|t| user.created_at < t)
            && self.email_domain.as_deref().is_none_or(|d| {
                user.email.rsplit_once('@').is_some_and(|(_, host)| host.eq_ignore_ascii_case(d))
            })
    }
}

/// A validated export request: what to export and how. Tenant and environment are not part of
/// it; they come from authentication.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ExportSpec {
    pub format: ExportFormat,
    #[serde(default)]
    pub compression: Compression,
    #[serde(default)]
    pub fields: FieldSelection,
    #[serde(default)]
    pub user_filters: UserFilter,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u64>,
    #[serde(default)]
    pub email_notify: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notify_email: Option<String>,
    /// Days the file is kept after completion; absent: the service's default. The service caps
    /// it with its configured maximum.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

impl ExportSpec {
    /// The largest `limit` a request may ask for.
    pub const MAX_LIMIT: u64 = 100_000_000;
    /// The longest retention any request may name; deployments cap it lower.
    pub const MAX_RETENTION_DAYS: u32 = 3650;

    pub fn new(format: ExportFormat) -> Self {
        Self {
            format,
            compression: Compression::None,
            fields: FieldSelection::all(),
            user_filters: UserFilter::default(),
            limit: None,
            email_notify: false,
            notify_email: None,
            retention_days: None,
        }
    }

    /// File extension of the exported object (`csv`, `ndjson.gz`...).
    pub fn extension(&self) -> String {
        match self.compression {
            Compression::None => self.format.as_str().to_owned(),
            Compression::Gzip => format!("{}.gz", self.format.as_str()),
        }
    }

    /// A stable digest of the request, so a reused idempotency key with a different request can
    /// be told apart from a retry of the same one.
    pub fn fingerprint(&self) -> String {
        let canonical = serde_json::to_vec(self).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }

    /// Validates a request body, reporting every failing field.
    pub fn from_json(body: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let Some(obj) = body.as_object() else {
            errors.add("", "invalid_type", "the request body must be a JSON object");
            return Err(errors);
        };
        for key in obj.keys() {
            match key.as_str() {
                "format" | "compression" | "fields" | "user_filters" | "limit" | "email_notify"
                | "notify_email" | "retention_days" => {}
                "tenant_id" | "environment_id" => errors.add(
                    key.as_str(),
                    "forbidden_field",
                    "tenant and environment come from the API key, not from the request body",
                ),
                other => errors.add(
                    other,
                    "unknown_field",
                    "unknown field; expected format, compression, fields, user_filters, limit, email_notify, notify_email or retention_days",
                ),
            }
        }

        let format = match obj.get("format") {
            None | Some(Value::Null) => {
                errors.add("format", "required", "format is required: one of csv, json, ndjson");
                None
            }
            Some(v) => enum_value(v, "format", "one of csv, json, ndjson", &mut errors),
        };
        let compression = match obj.get("compression") {
            None | Some(Value::Null) => Some(Compression::None),
            Some(Value::String(s)) if s == "none" => Some(Compression::None),
            Some(Value::String(s)) if s == "gzip" => Some(Compression::Gzip),
            Some(_) => {
                errors.add("compression", "invalid_value", "compression must be \"none\" or \"gzip\"");
                None
            }
        };
        let fields = parse_fields(obj.get("fields"), &mut errors);
        let user_filters = match obj.get("user_filters") {
            None | Some(Value::Null) => UserFilter::default(),
            Some(Value::Object(f)) => parse_filter(f, &mut errors),
            Some(_) => {
                errors.add("user_filters", "invalid_type", "user_filters must be a JSON object");
                UserFilter::default()
            }
        };
        let limit = match obj.get("limit") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64() {
                Some(n) if (1..=Self::MAX_LIMIT).contains(&n) => Some(n),
                _ => {
                    errors.add(
                        "limit",
                        "invalid_value",
                        format!("limit must be an integer from 1 to {}", Self::MAX_LIMIT),
                    );
                    None
                }
            },
        };
        let email_notify = match obj.get("email_notify") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                errors.add("email_notify", "invalid_type", "email_notify must be true or false");
                false
            }
        };
        let notify_email = match obj.get("notify_email") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => match check_notify_email(s) {
                Ok(_) => Some(s.clone()),
                Err(e) => {
                    errors.add("notify_email", e.code(), format!("notify_email {e}"));
                    None
                }
            },
            Some(_) => {
                errors.add(
                    "notify_email",
                    "invalid_type",
                    "notify_email must be a string such as \"ops@acme.com\"",
                );
                None
            }
        };
        let retention_days = match obj.get("retention_days") {
            None | Some(Value::Null) => None,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=Self::MAX_RETENTION_DAYS).contains(&n) => Some(n),
                _ => {
                    errors.add(
                        "retention_days",
                        "invalid_value",
                        format!("retention_days must be an integer from 1 to {}", Self::MAX_RETENTION_DAYS),
                    );
                    None
                }
            },
        };

        match (format, compression) {
            (Some(format), Some(compression)) if errors.is_empty() => Ok(Self {
                format,
                compression,
                fields,
                user_filters,
                limit,
                email_notify,
                notify_email,
                retention_days,
            }),
            _ => Err(errors),
        }
    }
}

fn enum_value<T: FromStr>(v: &Value, field: &str, allowed: &str, errors: &mut ValidationErrors) -> Option<T> {
    let parsed = v.as_str().and_then(|s| s.parse().ok());
    if parsed.is_none() {
        errors.add(field, "invalid_value", format!("{field} must be {allowed}"));
    }
    parsed
}

fn parse_fields(value: Option<&Value>, errors: &mut ValidationErrors) -> FieldSelection {
    let items = match value {
        None | Some(Value::Null) => return FieldSelection::all(),
        Some(Value::Array(items)) if !items.is_empty() => items,
        Some(_) => {
            errors.add("fields", "invalid_value", "fields must be a non-empty array of field names");
            return FieldSelection::all();
        }
    };
    let allowed = UserField::ALL.map(UserField::as_str).join(", ");
    let mut seen = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let path = format!("fields[{i}]");
        match item.as_str().map(UserField::from_str) {
            Some(Ok(field)) if seen.contains(&field) => {
                errors.add(path, "duplicate", format!("{field} is listed twice"));
            }
            Some(Ok(field)) => seen.push(field),
            _ => errors.add(path, "unknown_field", format!("unknown field; expected one of {allowed}")),
        }
    }
    FieldSelection(seen)
}

fn parse_filter(obj: &Map<String, Value>, errors: &mut ValidationErrors) -> UserFilter {
    let mut filter = UserFilter::default();
    for (key, value) in obj {
        let path = format!("user_filters.{key}");
        match key.as_str() {
            "status" => filter.status = parse_statuses(value, &path, errors),
            "created_after" => filter.created_after = parse_instant(value, &path, errors),
            "created_before" => filter.created_before = parse_instant(value, &path, errors),
            "email_domain" => filter.email_domain = parse_domain(value, &path, errors),
            _ => errors.add(
                path,
                "unknown_filter",
                "unknown filter; expected status, created_after, created_before or email_domain",
            ),
        }
    }
    if let (Some(after), Some(before)) = (filter.created_after, filter.created_before)
        && after >= before
    {
        errors.add(
            "user_filters.created_after",
            "invalid_range",
            "created_after must be earlier than created_before",
        );
    }
    filter
}

fn parse_statuses(value: &Value, path: &str, errors: &mut ValidationErrors) -> Option<BTreeSet<UserStatus>> {
    let items: Vec<&Value> = match value {
        Value::String(_) => vec![value],
        Value::Array(items) if !items.is_empty() => items.iter().collect(),
        _ => {
            errors.add(path, "invalid_value", "status must be a status or a non-empty array of statuses");
            return None;
        }
    };
    let mut set = BTreeSet::new();
    for (i, item) in items.into_iter().enumerate() {
        match item.as_str().map(UserStatus::from_str) {
            Some(Ok(status)) => {
                set.insert(status);
            }
            _ => errors.add(
                if value.is_array() { format!("{path}[{i}]") } else { path.to_owned() },
                "invalid_value",
                "status must be one of active, inactive, suspended",
            ),
        }
    }
    Some(set)
}

fn parse_instant(value: &Value, path: &str, errors: &mut ValidationErrors) -> Option<DateTime<Utc>> {
    let parsed = value.as_str().and_then(|s| DateTime::parse_from_rfc3339(s).ok());
    if parsed.is_none() {
        errors.add(path, "invalid_value", "must be an RFC 3339 timestamp, e.g. 2024-01-31T00:00:00Z");
    }
    parsed.map(|t| t.with_timezone(&Utc))
}

fn parse_domain(value: &Value, path: &str, errors: &mut ValidationErrors) -> Option<String> {
    let domain = value.as_str().map(str::to_ascii_lowercase);
    let valid = domain.as_deref().is_some_and(|d| {
        d.len() <= 253
            && d.split('.').all(|label| {
                !label.is_empty()
                    && label.len() <= 63
                    && !label.starts_with('-')
                    && !label.ends_with('-')
                    && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            })
    });
    if !valid {
        errors.add(path, "invalid_value", "must be a domain name such as example.com (without '@')");
        return None;
    }
    domain
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn codes(body: Value) -> Vec<(String, &'static str)> {
        let err = ExportSpec::from_json(&body).expect_err("should be rejected");
        err.errors().iter().map(|e| (e.field.clone(), e.code)).collect()
    }

    #[test]
    fn minimal_request_gets_defaults() {
        let spec = ExportSpec::from_json(&json!({"format": "csv"})).unwrap();
        assert_eq!(spec, ExportSpec::new(ExportFormat::Csv));
        assert_eq!(spec.extension(), "csv");
    }

    #[test]
    fn full_request_is_parsed() {
        let spec = ExportSpec::from_json(&json!({
            "format": "ndjson",
            "compression": "gzip",
            "fields": ["email", "id"],
            "user_filters": {
                "status": ["active", "suspended"],
                "created_after": "2024-01-01T00:00:00Z",
                "created_before": "2024-02-01T00:00:00+01:00",
                "email_domain": "Example.COM"
            },
            "limit": 10,
            "email_notify": true,
            "notify_email": "ops@example.com"
        }))
        .unwrap();
        assert_eq!(spec.fields.fields(), &[UserField::Email, UserField::Id]);
        assert_eq!(spec.user_filters.email_domain.as_deref(), Some("example.com"));
        assert_eq!(spec.user_filters.status.as_ref().map(BTreeSet::len), Some(2));
        assert_eq!(spec.extension(), "ndjson.gz");
        assert_eq!(spec.limit, Some(10));
    }

    #[test]
    fn every_failing_field_is_reported() {
        let got = codes(json!({
            "format": "xml",
            "compression": "zip",
            "fields": ["email", "password", "email"],
            "user_filters": {"status": ["active", "gone"], "country": "NL", "created_after": "yesterday"},
            "limit": 0,
            "email_notify": "yes",
            "notify_email": "not-an-email",
            "tenant_id": "globex",
            "extra": 1
        }));
        for expected in [
            ("format", "invalid_value"),
            ("compression", "invalid_value"),
            ("fields[1]", "unknown_field"),
            ("fields[2]", "duplicate"),
            ("user_filters.status[1]", "invalid_value"),
            ("user_filters.country", "unknown_filter"),
            ("user_filters.created_after", "invalid_value"),
            ("limit", "invalid_value"),
            ("email_notify", "invalid_type"),
            ("notify_email", "invalid_value"),
            ("tenant_id", "forbidden_field"),
            ("extra", "unknown_field"),
        ] {
            assert!(got.contains(&(expected.0.to_owned(), expected.1)), "missing {expected:?} in {got:?}");
        }
        assert_eq!(got.len(), 12, "{got:?}");
    }

    #[test]
    fn format_is_required_and_body_must_be_an_object() {
        assert_eq!(codes(json!({})), vec![("format".to_owned(), "required")]);
        assert_eq!(codes(json!([1])), vec![(String::new(), "invalid_type")]);
    }

    #[test]
    fn created_after_must_precede_created_before() {
        let got = codes(json!({"format": "csv", "user_filters": {
            "created_after": "2024-02-01T00:00:00Z", "created_before": "2024-02-01T00:00:00Z"}}));
        assert_eq!(got, vec![("user_filters.created_after".to_owned(), "invalid_range")]);
    }

    #[test]
    fn email_domain_must_be_a_domain() {
        for bad in [json!("@example.com"), json!("exa mple.com"), json!(""), json!(3), json!("a..b")] {
            let got = codes(json!({"format": "csv", "user_filters": {"email_domain": bad}}));
            assert_eq!(got, vec![("user_filters.email_domain".to_owned(), "invalid_value")]);
        }
    }

    #[test]
    fn fingerprint_tells_requests_apart() {
        let a = ExportSpec::new(ExportFormat::Csv);
        let mut b = a.clone();
        b.limit = Some(5);
        assert_eq!(a.fingerprint(), ExportSpec::new(ExportFormat::Csv).fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    fn arbitrary_json() -> impl proptest::strategy::Strategy<Value = Value> {
        use proptest::prelude::*;
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            prop_oneof![
                Just("csv".to_owned()),
                Just("gzip".to_owned()),
                Just("active".to_owned()),
                Just("2024-01-01T00:00:00Z".to_owned()),
                ".{0,12}"
            ]
            .prop_map(Value::from),
        ];
        leaf.prop_recursive(3, 32, 6, |inner| {
            let keys = prop_oneof![
                Just("format".to_owned()),
                Just("compression".to_owned()),
                Just("fields".to_owned()),
                Just("user_filters".to_owned()),
                Just("status".to_owned()),
                Just("created_after".to_owned()),
                Just("email_domain".to_owned()),
                Just("limit".to_owned()),
                "[a-z_]{1,8}"
            ];
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::btree_map(keys, inner, 0..5)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest::proptest! {
        /// Whatever arrives, validation answers: a spec, or errors that each name a field.
        #[test]
        fn any_json_is_accepted_or_rejected_with_named_fields(body in arbitrary_json()) {
            match ExportSpec::from_json(&body) {
                Ok(spec) => {
                    let again = ExportSpec::from_json(&serde_json::to_value(&spec).unwrap());
                    proptest::prop_assert_eq!(again.ok(), Some(spec));
                }
                Err(errors) => {
                    proptest::prop_assert!(!errors.is_empty());
                    for e in errors.errors() {
                        proptest::prop_assert!(!e.message.is_empty());
                        proptest::prop_assert!(body.is_object() || e.field.is_empty());
                    }
                }
            }
        }
    }

    #[test]
    fn spec_round_trips_through_serde() {
        let spec = ExportSpec::from_json(&json!({
            "format": "json", "fields": ["name"], "user_filters": {"status": "inactive"}
        }))
        .unwrap();
        let back: ExportSpec = serde_json::from_value(serde_json::to_value(&spec).unwrap()).unwrap();
        assert_eq!(back, spec);
    }
}
