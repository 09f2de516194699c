//! Operator keys (`USEREXPORT_OPERATOR_KEYS`): keys for cross-tenant operations, each with a
//! set of permissions (`key=batch`, `key=batch+other`). An operator key belongs to no tenant and
//! opens no tenant route; a tenant key never holds an operator permission.
//!
//! As for tenant keys, only SHA-256 digests are kept and a presented key is compared with every
//! configured digest in constant time.

use std::collections::BTreeSet;

use axum::extract::FromRequestParts;
use http::request::Parts;
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

use super::{ApiKeys, KeyDigest, digest};
use crate::problem::ApiError;
use crate::state::AppState;

/// What an operator key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Permission {
    /// `POST /v1/exports/batch` and `GET /v1/exports/batch/{id}`.
    Batch,
}

impl Permission {
    pub const ALL: [Permission; 1] = [Self::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Batch => "batch",
        }
    }
}

/// Why `USEREXPORT_OPERATOR_KEYS` was rejected. Messages never contain a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OperatorKeysError {
    #[error("entry {index}: expected key=permission[+permission...]")]
    Malformed { index: usize },
    #[error("entry {index}: the key must be printable ASCII without spaces or commas")]
    BadKey { index: usize },
    #[error("entry {index}: unknown permission {permission:?}; expected batch")]
    UnknownPermission { index: usize, permission: String },
    #[error("entry {index}: the same key is configured twice")]
    Duplicate { index: usize },
    #[error("entry {index}: this key is also a tenant key (USEREXPORT_API_KEYS); use separate keys")]
    AlsoTenantKey { index: usize },
    #[error("entry {index}: the key {reason}")]
    Weak { index: usize, reason: domain::WeakSecret },
}

/// The configured operator keys, as digests, each with its permissions.
#[derive(Clone, Default)]
pub struct OperatorKeys {
    entries: Vec<(KeyDigest, BTreeSet<Permission>)>,
}

impl std::fmt::Debug for OperatorKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OperatorKeys").field("keys", &self.entries.len()).finish_non_exhaustive()
    }
}

impl OperatorKeys {
    /// Parses `key1=batch,key2=batch+other` (entries are 1-based in errors). Empty: no operator.
    pub fn parse(raw: &str) -> Result<Self, OperatorKeysError> {
        let mut entries: Vec<(KeyDigest, BTreeSet<Permission>)> = Vec::new();
        for (i, entry) in raw.split(',').map(str::trim).enumerate().filter(|(_, e)| !e.is_empty()) {
            let index = i + 1;
            // Permissions never contain '=', a key might (base64 padding).
            let (key, permissions) = entry.rsplit_once('=').ok_or(OperatorKeysError::Malformed { index })?;
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err(OperatorKeysError::BadKey { index });
            }
            let mut granted = BTreeSet::new();
            for name in permissions.split('+').map(str::trim) {
                let permission =
                    Permission::ALL.into_iter().find(|p| p.as_str() == name).ok_or_else(|| {
                        OperatorKeysError::UnknownPermission { index, permission: name.to_owned() }
                    })?;
                granted.insert(permission);
            }
            // Operator keys are never generated (no demo mode): always at least 128 bits.
            domain::secrets::check_strength(key)
                .map_err(|reason| OperatorKeysError::Weak { index, reason })?;
            let key = digest(key);
            if entries.iter().any(|(known, _)| known == &key) {
                return Err(OperatorKeysError::Duplicate { index });
            }
            entries.push((key, granted));
        }
        Ok(Self { entries })
    }

    /// Rejects a key that is also a tenant key, so a tenant can never act as an operator.
    pub fn check_disjoint(&self, tenants: &ApiKeys) -> Result<(), OperatorKeysError> {
        match self.entries.iter().position(|(key, _)| tenants.has_digest(key)) {
            Some(i) => Err(OperatorKeysError::AlsoTenantKey { index: i + 1 }),
            None => Ok(()),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The permissions of `presented`, if it is a configured operator key.
    pub fn authenticate(&self, presented: &str) -> Option<&BTreeSet<Permission>> {
        let presented = digest(presented);
        let mut found = Choice::from(0);
        let mut index = 0_u64;
        for (i, (known, _)) in self.entries.iter().enumerate() {
            let equal = known.ct_eq(&presented);
            index = u64::conditional_select(&index, &(i as u64), equal);
            found |= equal;
        }
        if bool::from(found) { self.entries.get(usize::try_from(index).ok()?).map(|(_, p)| p) } else { None }
    }
}

/// A request made with an operator key holding the `batch` permission. No key: `401` (throttled
/// per address as for tenant keys); a tenant key, or an operator key without `batch`: `403`
/// with a hint. Either key's rate limit applies.
#[derive(Debug, Clone, Copy)]
pub struct BatchOperator;

impl FromRequestParts<AppState> for BatchOperator {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let limits = &state.limits;
        limits.admit(&parts.extensions)?;
        let token = super::bearer_token(parts).map_err(|err| limits.failed(&parts.extensions, err))?;
        // A tenant key is a valid key without the permission: 403, not an authentication failure.
        let permitted = match state.operators.authenticate(token) {
            Some(granted) => granted.contains(&Permission::Batch),
            None if state.keys.authenticate(token).is_some() => false,
            None => {
                return Err(limits.failed(&parts.extensions, ApiError::Unauthenticated { presented: true }));
            }
        };
        limits.per_key(&parts.extensions, &digest(token))?;
        if permitted { Ok(Self) } else { Err(ApiError::Forbidden { needs: Permission::Batch.as_str() }) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const OP1: &str = "op1-0123456789abcdefghijklmn";
    const OP2: &str = "op2-0123456789abcdefghijklmn";

    #[test]
    fn operator_keys_carry_their_permissions() {
        let keys = OperatorKeys::parse(&format!(" {OP1}=batch , {OP2}==batch+batch,")).unwrap_or_default();
        assert_eq!(keys.authenticate(OP1).map(|p| p.contains(&Permission::Batch)), Some(true));
        assert_eq!(keys.authenticate(&format!("{OP2}=")).map(|p| p.len()), Some(1));
        assert!(keys.authenticate("op3").is_none());
        assert!(OperatorKeys::parse("").is_ok_and(|k| k.is_empty()));
    }

    #[test]
    fn bad_configuration_is_rejected_without_echoing_keys() {
        assert_eq!(
            OperatorKeys::parse(&format!("{OP1}=batch,nope")).err(),
            Some(OperatorKeysError::Malformed { index: 2 })
        );
        assert_eq!(OperatorKeys::parse("=batch").err(), Some(OperatorKeysError::BadKey { index: 1 }));
        assert_eq!(
            OperatorKeys::parse(&format!("{OP1}=batch,{OP1}=batch")).err(),
            Some(OperatorKeysError::Duplicate { index: 2 })
        );
        let err = OperatorKeys::parse("s3cret=admin").err().map(|e| e.to_string()).unwrap_or_default();
        assert!(err.contains("\"admin\"") && !err.contains("s3cret"), "{err}");
        let err = OperatorKeys::parse("s3cret=batch").err();
        assert!(matches!(err, Some(OperatorKeysError::Weak { index: 1, .. })), "{err:?}");
        assert!(!err.map(|e| e.to_string()).unwrap_or_default().contains("s3cret"));
    }

    #[test]
    fn a_tenant_key_cannot_also_be_an_operator_key() {
        let shared = "shared-0123456789abcdefghijklmn";
        let tenants = ApiKeys::parse(&format!("{shared}=acme/prod")).unwrap_or_else(|e| panic!("{e}"));
        let operators = OperatorKeys::parse(&format!("{OP1}=batch,{shared}=batch")).unwrap_or_default();
        assert_eq!(operators.check_disjoint(&tenants), Err(OperatorKeysError::AlsoTenantKey { index: 2 }));
        assert!(
            OperatorKeys::parse(&format!("{OP1}=batch")).unwrap_or_default().check_disjoint(&tenants).is_ok()
        );
    }
}
