//! Identifiers and the deterministic names derived from them.

use std::fmt;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Why an identifier was rejected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdParseError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {max} characters")]
    TooLong { max: usize },
    #[error("must start with a lowercase letter or digit and contain only a-z, 0-9, '-' and '_'")]
    BadCharacters,
    #[error("must be a UUID")]
    NotUuid,
    #[error("must be printable ASCII")]
    NotPrintable,
}

const SLUG_MAX: usize = 63;

/// Tenant and environment names end up in object keys and workflow IDs, so they are restricted
/// to a slug alphabet that cannot contain a separator.
fn parse_slug(raw: &str) -> Result<String, IdParseError> {
    if raw.is_empty() {
        return Err(IdParseError::Empty);
    }
    if raw.len() > SLUG_MAX {
        return Err(IdParseError::TooLong { max: SLUG_MAX });
    }
    let mut chars = raw.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_');
    if first_ok && rest_ok { Ok(raw.to_owned()) } else { Err(IdParseError::BadCharacters) }
}

macro_rules! slug_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            pub fn parse(raw: &str) -> Result<Self, IdParseError> {
                parse_slug(raw).map(Self)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }
        impl TryFrom<String> for $name {
            type Error = IdParseError;
            fn try_from(raw: String) -> Result<Self, Self::Error> {
                Self::parse(&raw)
            }
        }
        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

slug_id!(
    /// A tenant: the unit of isolation. No export ever reads or returns another tenant's data.
    TenantId
);
slug_id!(
    /// An environment of a tenant (`prod`, `staging`...).
    EnvironmentId
);

/// Tenant plus environment: every user and export belongs to exactly one scope, which comes from
/// authentication and never from a request body.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Scope {
    pub tenant: TenantId,
    pub environment: EnvironmentId,
}

impl Scope {
    pub fn new(tenant: TenantId, environment: EnvironmentId) -> Self {
        Self { tenant, environment }
    }

    /// Parses `tenant/environment`, the form used in configuration.
    pub fn parse(raw: &str) -> Result<Self, IdParseError> {
        let (tenant, environment) = raw.split_once('/').ok_or(IdParseError::BadCharacters)?;
        Ok(Self::new(TenantId::parse(tenant)?, EnvironmentId::parse(environment)?))
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.tenant, self.environment)
    }
}

macro_rules! uuid_id {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(transparent)]
        pub struct $name(Uuid);

        impl $name {
            pub fn from_uuid(id: Uuid) -> Self {
                Self(id)
            }
            pub fn parse(raw: &str) -> Result<Self, IdParseError> {
                Uuid::parse_str(raw).map(Self).map_err(|_| IdParseError::NotUuid)
            }
            pub fn as_uuid(&self) -> Uuid {
                self.0
            }
        }
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.hyphenated().fmt(f)
            }
        }
    };
}

uuid_id!(
    /// A user record's identifier; exports stream users in ascending order of it.
    UserId
);
uuid_id!(
    /// An export's identifier, unique within its scope.
    ExportId
);

/// Namespace for export IDs derived from idempotency keys (a fixed random UUID; never change it,
/// or retried requests would get new exports).
const IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x6b1c_3f0e_8d6a_4b5e_9c2f_7a41_d0e3_5a17);

impl ExportId {
    /// The export ID an idempotency key stands for: the same key in the same scope always maps to
    /// the same export, so a retried POST finds the export the first one created.
    pub fn for_idempotency_key(scope: &Scope, key: &IdempotencyKey) -> Self {
        let name = format!("{}/{}/{}", scope.tenant, scope.environment, key.as_str());
        Self(Uuid::new_v5(&IDEMPOTENCY_NAMESPACE, name.as_bytes()))
    }

    /// The Temporal workflow ID of this export. Derived, not time-based, so two starts of the same
    /// export collide (and are deduplicated) instead of running twice.
    pub fn workflow_id(&self, scope: &Scope) -> String {
        format!("user-export:{}:{}:{}", scope.tenant, scope.environment, self)
    }
}

/// A client-chosen `Idempotency-Key` (printable ASCII, 1..=255 characters).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct IdempotencyKey(String);

impl IdempotencyKey {
    pub const MAX_LEN: usize = 255;

    pub fn parse(raw: &str) -> Result<Self, IdParseError> {
        if raw.is_empty() {
            return Err(IdParseError::Empty);
        }
        if raw.len() > Self::MAX_LEN {
            return Err(IdParseError::TooLong { max: Self::MAX_LEN });
        }
        if !raw.chars().all(|c| c.is_ascii_graphic() || c == ' ') {
            return Err(IdParseError::NotPrintable);
        }
        Ok(Self(raw.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}
impl TryFrom<String> for IdempotencyKey {
    type Error = IdParseError;
    fn try_from(raw: String) -> Result<Self, Self::Error> {
        Self::parse(&raw)
    }
}
impl From<IdempotencyKey> for String {
    fn from(key: IdempotencyKey) -> String {
        key.0
    }
}

/// Where an export's file lives in storage: `{tenant}/{environment}/exports/{export_id}.{ext}`.
/// Every component is validated, so a key can never escape its tenant's prefix.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ObjectKey(String);

impl ObjectKey {
    /// A key read back from a store that persisted [`ObjectKey::as_str`].
    pub fn from_stored(key: String) -> Self {
        Self(key)
    }

    pub fn for_export(scope: &Scope, id: ExportId, extension: &str) -> Self {
        Self(format!("{}/{}/exports/{}.{}", scope.tenant, scope.environment, id, extension))
    }

    /// The key attempt `attempt` of an export uploads to. Each attempt has its own, and the
    /// record names the winner's at completion, so a stale attempt that finishes its upload late
    /// can never replace the object the record describes (fencing without conditional writes).
    pub fn for_attempt(scope: &Scope, id: ExportId, attempt: u32, extension: &str) -> Self {
        Self(format!(
            "{}/{}/exports/{}.attempt-{}.{}",
            scope.tenant, scope.environment, id, attempt, extension
        ))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ObjectKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(t: &str, e: &str) -> Scope {
        Scope::new(TenantId::parse(t).unwrap(), EnvironmentId::parse(e).unwrap())
    }

    #[test]
    fn slugs_reject_separators_and_uppercase() {
        for bad in ["", "Acme", "a/b", "a:b", "-a", "a b", "ä", &"a".repeat(64)] {
            assert!(TenantId::parse(bad).is_err(), "{bad:?} accepted");
        }
        for good in ["acme", "a", "acme-2_x", "9lives"] {
            assert!(TenantId::parse(good).is_ok(), "{good:?} rejected");
        }
    }

    #[test]
    fn idempotency_key_maps_to_one_export_per_scope() {
        let key = IdempotencyKey::parse("order-42").unwrap();
        let a = ExportId::for_idempotency_key(&scope("acme", "prod"), &key);
        assert_eq!(a, ExportId::for_idempotency_key(&scope("acme", "prod"), &key));
        assert_ne!(a, ExportId::for_idempotency_key(&scope("globex", "prod"), &key));
        assert_ne!(a, ExportId::for_idempotency_key(&scope("acme", "staging"), &key));
    }

    #[test]
    fn names_are_derived_from_scope_and_id() {
        let id = ExportId::parse("0190f5c3-0000-7000-8000-000000000001").unwrap();
        let s = scope("acme", "prod");
        assert_eq!(
            ObjectKey::for_export(&s, id, "csv.gz").as_str(),
            "acme/prod/exports/0190f5c3-0000-7000-8000-000000000001.csv.gz"
        );
        assert_eq!(id.workflow_id(&s), "user-export:acme:prod:0190f5c3-0000-7000-8000-000000000001");
    }

    #[test]
    fn idempotency_keys_are_bounded_printable_ascii() {
        assert!(IdempotencyKey::parse("").is_err());
        assert!(IdempotencyKey::parse("a\nb").is_err());
        assert!(IdempotencyKey::parse(&"k".repeat(256)).is_err());
        assert!(IdempotencyKey::parse("8e03978e-40d5-43e8-bc93-6894a57f9324").is_ok());
    }
}
