//! Per-tenant quota settings (`USEREXPORT_TENANT_MAX_*`), overridable per scope in
//! `USEREXPORT_TENANTS` (`"quotas": {...}`).

use std::sync::Arc;

use anyhow::bail;
use clap::Args;
use domain::{Quota, QuotaBook, TenantDirectory, TenantQuotas};

/// The global limits of every tenant scope.
#[derive(Debug, Clone, Args)]
pub struct QuotaArgs {
    /// Exports a tenant scope may have `pending` or `running` at once; a request beyond it is
    /// answered `429` (quota `max_unfinished`).
    #[arg(long, env = "USEREXPORT_TENANT_MAX_UNFINISHED", default_value_t = 100)]
    pub tenant_max_unfinished: u32,

    /// Exports of one tenant scope running at once (per API process in-process, per worker
    /// under Temporal); the others wait their turn while other tenants use the free slots.
    #[arg(long, env = "USEREXPORT_TENANT_MAX_RUNNING", default_value_t = 2)]
    pub tenant_max_running: u32,

    /// Export schedules a tenant scope may keep; one more is answered `409` (quota
    /// `max_schedules`).
    #[arg(long, env = "USEREXPORT_TENANT_MAX_SCHEDULES", default_value_t = 20)]
    pub tenant_max_schedules: u32,
}

impl Default for QuotaArgs {
    fn default() -> Self {
        let defaults = TenantQuotas::default();
        Self {
            tenant_max_unfinished: defaults.max_unfinished,
            tenant_max_running: defaults.max_running,
            tenant_max_schedules: defaults.max_schedules,
        }
    }
}

impl QuotaArgs {
    /// The limits of every scope: these, with `tenants`' overrides.
    ///
    /// # Errors
    /// One line naming a setting that is zero.
    pub fn quota_book(&self, tenants: &TenantDirectory) -> anyhow::Result<Arc<QuotaBook>> {
        let defaults = TenantQuotas {
            max_unfinished: self.tenant_max_unfinished,
            max_running: self.tenant_max_running,
            max_schedules: self.tenant_max_schedules,
        };
        if let Some(quota) = defaults.zero_limit() {
            let setting = match quota {
                Quota::MaxUnfinished => "USEREXPORT_TENANT_MAX_UNFINISHED",
                Quota::MaxRunning => "USEREXPORT_TENANT_MAX_RUNNING",
                Quota::MaxSchedules => "USEREXPORT_TENANT_MAX_SCHEDULES",
            };
            bail!("invalid {setting}: must be at least 1");
        }
        Ok(Arc::new(QuotaBook::new(defaults, tenants)))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use clap::Parser;

    use super::*;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        quotas: QuotaArgs,
    }

    #[test]
    fn defaults_are_100_unfinished_2_running_20_schedules() {
        let cli = Cli::try_parse_from(["t"]).unwrap();
        let book = cli.quotas.quota_book(&TenantDirectory::default()).unwrap();
        let scope = domain::Scope::parse("a/b").unwrap();
        assert_eq!(book.for_scope(&scope), TenantQuotas::default());
        assert_eq!(
            TenantQuotas::default(),
            TenantQuotas { max_unfinished: 100, max_running: 2, max_schedules: 20 }
        );
    }

    #[test]
    fn a_zero_limit_is_refused_by_name() {
        let cli = Cli::try_parse_from(["t", "--tenant-max-running", "0"]).unwrap();
        let err = cli.quotas.quota_book(&TenantDirectory::default()).unwrap_err().to_string();
        assert!(err.contains("USEREXPORT_TENANT_MAX_RUNNING"), "{err}");
    }
}
