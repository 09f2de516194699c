//! Per-tenant quotas: how many unfinished exports and schedules a tenant scope may hold and how
//! many of its exports run at once. Set globally, overridable per scope in the tenant directory
//! (`"quotas": {"max_unfinished": 500}` in `USEREXPORT_TENANTS`).

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::ids::Scope;
use crate::tenants::TenantDirectory;

/// Which quota a request ran into; its name is part of the API (`quota` in the problem).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Quota {
    /// Exports `pending` or `running` at once.
    MaxUnfinished,
    /// Exports running at once (dispatch waits; requests are never refused for it).
    MaxRunning,
    /// Export schedules kept.
    MaxSchedules,
}

impl Quota {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MaxUnfinished => "max_unfinished",
            Self::MaxRunning => "max_running",
            Self::MaxSchedules => "max_schedules",
        }
    }
}

impl fmt::Display for Quota {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The limits of one tenant scope. Every limit is at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TenantQuotas {
    pub max_unfinished: u32,
    pub max_running: u32,
    pub max_schedules: u32,
}

impl Default for TenantQuotas {
    fn default() -> Self {
        Self { max_unfinished: 100, max_running: 2, max_schedules: 20 }
    }
}

impl TenantQuotas {
    /// The limit named `quota`.
    pub fn limit(&self, quota: Quota) -> u32 {
        match quota {
            Quota::MaxUnfinished => self.max_unfinished,
            Quota::MaxRunning => self.max_running,
            Quota::MaxSchedules => self.max_schedules,
        }
    }

    /// The first limit that is zero, if any (a zero limit would refuse everything).
    pub fn zero_limit(&self) -> Option<Quota> {
        [Quota::MaxUnfinished, Quota::MaxRunning, Quota::MaxSchedules]
            .into_iter()
            .find(|q| self.limit(*q) == 0)
    }

    fn overridden(self, by: &QuotaOverrides) -> Self {
        Self {
            max_unfinished: by.max_unfinished.unwrap_or(self.max_unfinished),
            max_running: by.max_running.unwrap_or(self.max_running),
            max_schedules: by.max_schedules.unwrap_or(self.max_schedules),
        }
    }
}

/// One scope's overrides of the global limits, as written in `USEREXPORT_TENANTS`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaOverrides {
    #[serde(default)]
    pub max_unfinished: Option<u32>,
    #[serde(default)]
    pub max_running: Option<u32>,
    #[serde(default)]
    pub max_schedules: Option<u32>,
}

impl QuotaOverrides {
    /// The first override that is zero, if any.
    pub fn zero_limit(&self) -> Option<Quota> {
        [
            (Quota::MaxUnfinished, self.max_unfinished),
            (Quota::MaxRunning, self.max_running),
            (Quota::MaxSchedules, self.max_schedules),
        ]
        .into_iter()
        .find_map(|(quota, limit)| (limit == Some(0)).then_some(quota))
    }
}

/// The limits of every scope: the global ones, with the tenant directory's overrides.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct QuotaBook {
    defaults: TenantQuotas,
    overrides: BTreeMap<Scope, QuotaOverrides>,
}

impl QuotaBook {
    /// `defaults` for every scope, except where `tenants` overrides them.
    pub fn new(defaults: TenantQuotas, tenants: &TenantDirectory) -> Self {
        let overrides = tenants
            .scopes()
            .filter_map(|scope| tenants.get(scope).map(|s| (scope.clone(), s.quotas)))
            .filter(|(_, quotas)| *quotas != QuotaOverrides::default())
            .collect();
        Self { defaults, overrides }
    }

    /// The same limits for every scope.
    pub fn uniform(defaults: TenantQuotas) -> Self {
        Self { defaults, overrides: BTreeMap::new() }
    }

    pub fn for_scope(&self, scope: &Scope) -> TenantQuotas {
        match self.overrides.get(scope) {
            Some(overrides) => self.defaults.overridden(overrides),
            None => self.defaults,
        }
    }
}

/// Longest fairness key Temporal accepts, in bytes.
const FAIRNESS_KEY_MAX: usize = 64;

/// The key that shares dispatch fairly between scopes (Temporal's `fairness_key`): the scope
/// itself when it fits in 64 bytes, else its start and a stable hash of the whole, so two long
/// scopes never share a key by their common prefix.
pub fn fairness_key(scope: &Scope) -> String {
    let full = scope.to_string();
    if full.len() <= FAIRNESS_KEY_MAX {
        return full;
    }
    // FNV-1a: stable across builds and platforms, unlike `DefaultHasher`.
    let hash =
        full.bytes().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3));
    // Scopes are ASCII, so any byte index is a char boundary.
    format!("{}~{hash:016x}", &full[..FAIRNESS_KEY_MAX - 17])
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn overrides_replace_only_the_limits_they_name() {
        let raw = r#"[{"scope":"acme/prod","quotas":{"max_running":5}},{"scope":"globex/prod"}]"#;
        let tenants = TenantDirectory::parse_json(raw).unwrap();
        let book = QuotaBook::new(TenantQuotas::default(), &tenants);
        let acme = book.for_scope(&Scope::parse("acme/prod").unwrap());
        assert_eq!(acme, TenantQuotas { max_running: 5, ..TenantQuotas::default() });
        assert_eq!(book.for_scope(&Scope::parse("globex/prod").unwrap()), TenantQuotas::default());
        assert_eq!(book.for_scope(&Scope::parse("unknown/prod").unwrap()), TenantQuotas::default());
        assert_eq!(acme.limit(Quota::MaxRunning), 5);
        assert_eq!(Quota::MaxUnfinished.to_string(), "max_unfinished");
    }

    #[test]
    fn zero_limits_are_found() {
        assert_eq!(TenantQuotas::default().zero_limit(), None);
        let zero = TenantQuotas { max_schedules: 0, ..TenantQuotas::default() };
        assert_eq!(zero.zero_limit(), Some(Quota::MaxSchedules));
        let overrides = QuotaOverrides { max_running: Some(0), ..QuotaOverrides::default() };
        assert_eq!(overrides.zero_limit(), Some(Quota::MaxRunning));
    }

    #[test]
    fn fairness_keys_fit_temporal_and_stay_distinct() {
        assert_eq!(fairness_key(&Scope::parse("acme/prod").unwrap()), "acme/prod");
        let long_a = Scope::parse(&format!("{}/a", "t".repeat(63))).unwrap();
        let long_b = Scope::parse(&format!("{}/b", "t".repeat(63))).unwrap();
        let (a, b) = (fairness_key(&long_a), fairness_key(&long_b));
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert_eq!(a, fairness_key(&long_a));
    }
}
