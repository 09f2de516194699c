//! The worker's per-tenant bound on running exports: at most `max_running` `ExportUserData`
//! attempts of one tenant scope at once in this worker. An attempt over the bound does not wait
//! in its activity slot (that would hold the slot other tenants' tasks need): it fails at once
//! as `TenantBusy`, retryably, and Temporal offers it again after a short, growing delay.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use domain::{QuotaBook, Scope};

/// First wait after a `TenantBusy` attempt; it doubles per busy attempt up to [`BUSY_MAX_DELAY`].
const BUSY_FIRST_DELAY: Duration = Duration::from_millis(250);
/// Longest wait between two tries of a busy tenant's export.
const BUSY_MAX_DELAY: Duration = Duration::from_secs(4);

/// Counts the running attempts of each scope in this worker.
#[derive(Debug)]
pub(crate) struct TenantSlots {
    running: Mutex<HashMap<Scope, u32>>,
    quotas: Arc<QuotaBook>,
}

/// One running attempt of a scope; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct TenantSlot {
    slots: Arc<TenantSlots>,
    scope: Scope,
}

impl TenantSlots {
    pub(crate) fn new(quotas: Arc<QuotaBook>) -> Arc<Self> {
        Arc::new(Self { running: Mutex::default(), quotas })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Scope, u32>> {
        self.running.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more attempt of `scope`, or `None` when it runs `max_running` already.
    pub(crate) fn try_acquire(self: &Arc<Self>, scope: &Scope) -> Option<TenantSlot> {
        let limit = self.quotas.for_scope(scope).max_running.max(1);
        let mut running = self.lock();
        let count = running.entry(scope.clone()).or_default();
        if *count >= limit {
            return None;
        }
        *count += 1;
        Some(TenantSlot { slots: Arc::clone(self), scope: scope.clone() })
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let mut running = self.slots.lock();
        if let Some(count) = running.get_mut(&self.scope) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                running.remove(&self.scope);
            }
        }
    }
}

/// How long a busy attempt waits before Temporal offers it again: doubling with the activity's
/// attempt number, capped, and spread by `salt` (e.g. the export ID) so a tenant's backlog does
/// not come back all at once.
pub(crate) fn busy_delay(activity_attempt: u32, salt: u128) -> Duration {
    let doublings = activity_attempt.saturating_sub(1).min(5);
    let base = (BUSY_FIRST_DELAY * 2u32.pow(doublings)).min(BUSY_MAX_DELAY);
    // 75..=100 % of the base, picked by the salt and the attempt.
    let spread = ((salt ^ u128::from(activity_attempt)).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 64) % 26;
    base.mul_f64(0.75 + spread as f64 / 100.0)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use domain::TenantQuotas;

    use super::*;

    #[test]
    fn a_scope_gets_at_most_its_max_running_and_others_are_unaffected() {
        let quotas = QuotaBook::uniform(TenantQuotas { max_running: 2, ..TenantQuotas::default() });
        let slots = TenantSlots::new(Arc::new(quotas));
        let (a, b) = (Scope::parse("a/p").unwrap(), Scope::parse("b/p").unwrap());
        let first = slots.try_acquire(&a).unwrap();
        let _second = slots.try_acquire(&a).unwrap();
        assert!(slots.try_acquire(&a).is_none());
        assert!(slots.try_acquire(&b).is_some());
        drop(first);
        assert!(slots.try_acquire(&a).is_some());
    }

    #[test]
    fn busy_delays_grow_and_stay_bounded() {
        let first = busy_delay(1, 7);
        assert!(first >= BUSY_FIRST_DELAY.mul_f64(0.75) && first <= BUSY_FIRST_DELAY, "{first:?}");
        assert!(busy_delay(3, 7) > busy_delay(1, 7));
        for attempt in [6, 50, u32::MAX] {
            assert!(busy_delay(attempt, 7) <= BUSY_MAX_DELAY);
            assert!(busy_delay(attempt, 7) >= BUSY_MAX_DELAY.mul_f64(0.75));
        }
    }
}
