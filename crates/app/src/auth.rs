//! API-key authentication: `Authorization: Bearer <key>`, each key bound to one scope.
//!
//! Only SHA-256 digests of the keys are kept. A presented key is hashed and compared with every
//! configured digest in constant time, without stopping at a match, so neither timing nor the
//! position of a key in the configuration tells anything about the others.

use axum::extract::FromRequestParts;
use http::header::AUTHORIZATION;
use http::request::Parts;
use sha2::{Digest, Sha256};
use subtle::{Choice, ConditionallySelectable, ConstantTimeEq};

mod operator;

pub use operator::{BatchOperator, OperatorKeys};

use crate::problem::ApiError;
use crate::state::AppState;
use domain::Scope;

pub(crate) type KeyDigest = [u8; 32];

/// Why `USEREXPORT_API_KEYS` was rejected. Messages never contain a key.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ApiKeysError {
    #[error("no keys configured; expected key=tenant/environment[,key=tenant/environment...]")]
    Empty,
    #[error("entry {index}: expected key=tenant/environment")]
    Malformed { index: usize },
    #[error("entry {index}: the key must be printable ASCII without spaces or commas")]
    BadKey { index: usize },
    #[error("entry {index}: scope {scope:?}: {reason}")]
    BadScope { index: usize, scope: String, reason: domain::IdParseError },
    #[error("entry {index}: the same key is configured twice")]
    Duplicate { index: usize },
    #[error("entry {index}: the key {reason}")]
    Weak { index: usize, reason: domain::WeakSecret },
}

/// The configured keys, as digests, each with its scope.
#[derive(Clone)]
pub struct ApiKeys {
    entries: Vec<(KeyDigest, Scope)>,
}

impl std::fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiKeys").field("keys", &self.entries.len()).finish_non_exhaustive()
    }
}

pub(crate) fn digest(key: &str) -> KeyDigest {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// Parses `key1=acme/prod,key2=globex/prod` (entries are 1-based in errors). Every key must
    /// carry at least 128 bits ([`domain::secrets`]): configured keys are the non-demo mode.
    pub fn parse(raw: &str) -> Result<Self, ApiKeysError> {
        let mut entries: Vec<(KeyDigest, Scope)> = Vec::new();
        for (i, entry) in raw.split(',').map(str::trim).enumerate().filter(|(_, e)| !e.is_empty()) {
            let index = i + 1;
            // A scope never contains '=', a key might (base64 padding).
            let (key, scope) = entry.rsplit_once('=').ok_or(ApiKeysError::Malformed { index })?;
            if key.is_empty() || !key.chars().all(|c| c.is_ascii_graphic()) {
                return Err(ApiKeysError::BadKey { index });
            }
            domain::secrets::check_strength(key).map_err(|reason| ApiKeysError::Weak { index, reason })?;
            let scope = Scope::parse(scope.trim()).map_err(|reason| ApiKeysError::BadScope {
                index,
                scope: scope.to_owned(),
                reason,
            })?;
            let key = digest(key);
            if entries.iter().any(|(known, _)| known == &key) {
                return Err(ApiKeysError::Duplicate { index });
            }
            entries.push((key, scope));
        }
        if entries.is_empty() {
            return Err(ApiKeysError::Empty);
        }
        Ok(Self { entries })
    }

    /// One key for one scope.
    pub fn single(key: &str, scope: Scope) -> Self {
        Self { entries: vec![(digest(key), scope)] }
    }

    /// Every scope that has a key, without repeats.
    pub fn scopes(&self) -> Vec<Scope> {
        let mut scopes: Vec<Scope> = self.entries.iter().map(|(_, s)| s.clone()).collect();
        scopes.sort();
        scopes.dedup();
        scopes
    }

    /// Whether a key with this digest is configured (start-up checks only: not constant-time).
    fn has_digest(&self, key: &KeyDigest) -> bool {
        self.entries.iter().any(|(known, _)| known == key)
    }

    /// The scope of `presented`, if it is a configured key.
    pub fn authenticate(&self, presented: &str) -> Option<Scope> {
        let presented = digest(presented);
        let mut found = Choice::from(0);
        let mut index = 0_u64;
        for (i, (known, _)) in self.entries.iter().enumerate() {
            let equal = known.ct_eq(&presented);
            index = u64::conditional_select(&index, &(i as u64), equal);
            found |= equal;
        }
        if bool::from(found) {
            self.entries.get(usize::try_from(index).ok()?).map(|(_, s)| s.clone())
        } else {
            None
        }
    }
}

/// The token of `Authorization: Bearer <token>`: `401` without the header, `401` (presented)
/// when it is not a bearer token.
pub(crate) fn bearer_token(parts: &Parts) -> Result<&str, ApiError> {
    let header = parts.headers.get(AUTHORIZATION).ok_or(ApiError::Unauthenticated { presented: false })?;
    header
        .to_str()
        .ok()
        .and_then(|value| value.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or(ApiError::Unauthenticated { presented: true })
}

/// The scope of an authenticated request. Extracting it rejects requests without a valid key
/// with `401` (counted against the client's address, `429` once it failed too often), applies
/// the key's rate limit (`429`), and records the tenant on the request's span.
#[derive(Debug, Clone)]
pub struct Authenticated(pub Scope);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let limits = &state.limits;
        limits.admit(&parts.extensions)?;
        let token = bearer_token(parts).map_err(|err| limits.failed(&parts.extensions, err))?;
        let scope = state
            .keys
            .authenticate(token)
            .ok_or_else(|| limits.failed(&parts.extensions, ApiError::Unauthenticated { presented: true }))?;
        limits.per_key(&parts.extensions, &digest(token))?;
        let span = tracing::Span::current();
        span.record("tenant", tracing::field::display(&scope.tenant));
        span.record("environment", tracing::field::display(&scope.environment));
        Ok(Self(scope))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scope(raw: &str) -> Scope {
        Scope::parse(raw).unwrap_or_else(|e| panic!("{raw}: {e}"))
    }

    const KEY1: &str = "key1-0123456789abcdefghijklmn";
    const KEY2: &str = "key2-0123456789abcdefghijklmn";

    #[test]
    fn keys_map_to_their_scope() {
        let raw = format!(" {KEY1}=acme/prod, {KEY2}=globex/prod ,");
        let keys = ApiKeys::parse(&raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.authenticate(KEY1), Some(scope("acme/prod")));
        assert_eq!(keys.authenticate(KEY2), Some(scope("globex/prod")));
        assert_eq!(keys.authenticate("key3"), None);
        assert_eq!(keys.authenticate(""), None);
        assert_eq!(keys.scopes(), vec![scope("acme/prod"), scope("globex/prod")]);
    }

    #[test]
    fn keys_may_contain_equals_signs() {
        let keys = ApiKeys::parse(&format!("{KEY1}==acme/prod")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(keys.authenticate(&format!("{KEY1}=")), Some(scope("acme/prod")));
    }

    #[test]
    fn bad_configuration_is_rejected_without_echoing_keys() {
        assert_eq!(ApiKeys::parse("").err(), Some(ApiKeysError::Empty));
        assert_eq!(ApiKeys::parse(" , ").err(), Some(ApiKeysError::Empty));
        assert_eq!(
            ApiKeys::parse(&format!("{KEY1}=acme/prod,nokey")).err(),
            Some(ApiKeysError::Malformed { index: 2 })
        );
        assert_eq!(ApiKeys::parse("=acme/prod").err(), Some(ApiKeysError::BadKey { index: 1 }));
        assert_eq!(
            ApiKeys::parse(&format!("{KEY1}=a/b,{KEY1}=c/d")).err(),
            Some(ApiKeysError::Duplicate { index: 2 })
        );
        let err = ApiKeys::parse(&format!("s3cret{KEY1}=Acme/prod")).err().map(|e| e.to_string());
        let err = err.unwrap_or_default();
        assert!(err.contains("Acme/prod") && !err.contains("s3cret"), "{err}");
    }

    #[test]
    fn short_keys_are_refused_without_echoing_them() {
        for weak in ["k1", "key-a", "0123456789abcdef", "0123456789abcdef0123456789abcde"] {
            let err = ApiKeys::parse(&format!("{KEY1}=a/b,{weak}=acme/prod")).err();
            assert!(matches!(err, Some(ApiKeysError::Weak { index: 2, .. })), "{weak}: {err:?}");
            let text = err.map(|e| e.to_string()).unwrap_or_default();
            assert!(text.contains("128 bits") && !text.contains(weak), "{text}");
        }
        assert!(ApiKeys::parse("0123456789abcdef0123456789abcdef=acme/prod").is_ok());
    }

    proptest::proptest! {
        /// Any setting: keys or a typed error, never a panic, and no error text repeats a key.
        #[test]
        fn any_setting_gets_a_typed_answer(raw in ".{0,120}", key in "[ -~]{20,40}") {
            let _ = ApiKeys::parse(&raw).map(|keys| keys.scopes());
            let with_key = format!("{key}=acme/prod,{raw}");
            if let Err(err) = ApiKeys::parse(&with_key) {
                proptest::prop_assert!(!err.to_string().contains(&key), "{}", err);
            }
        }
    }
}
