//! The worker's per-tenant bound on running exports: at most `max_running` `ExportUserData`
//! attempts of one tenant scope at once in this worker. An attempt over the bound does not wait
//! in its activity slot (that would hold the slot other tenants' tasks need): it fails at once
//! as `TenantBusy`, retryably, and Temporal offers it again when its turn is likely due.
//!
//! That delay is the point: a fixed backoff sends a large backlog back to the server many times
//! a second (every try is a dispatch, a start and a failure in the history), and that churn
//! slows every other tenant's tasks. The delay is instead the time the scope's waiting attempts
//! need to drain through its `max_running` places, from the attempts' recent run time, spread
//! so that tries come back at about the pace places free up.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use domain::{QuotaBook, Scope};

/// Shortest wait after a `TenantBusy` attempt.
const BUSY_MIN_DELAY: Duration = Duration::from_millis(250);
/// Longest wait: a place that frees up is never left idle longer than this by a waiting try.
const BUSY_MAX_DELAY: Duration = Duration::from_secs(30);
/// The run time assumed for a scope until one of its attempts has finished here.
const ASSUMED_RUN: Duration = Duration::from_millis(500);
/// A waiting attempt not seen again this long after its due time is no longer counted.
const WAITER_GRACE: Duration = Duration::from_secs(10);

/// Counts the running and waiting attempts of each scope in this worker.
#[derive(Debug)]
pub(crate) struct TenantSlots {
    scopes: Mutex<HashMap<Scope, ScopeState>>,
    quotas: Arc<QuotaBook>,
}

#[derive(Debug, Default)]
struct ScopeState {
    running: u32,
    /// Attempts told to come back, by activity, with the instant after which they are forgotten.
    waiting: HashMap<String, Instant>,
    /// Moving average of how long this scope's attempts ran here.
    mean_run: Option<Duration>,
}

/// One running attempt of a scope; dropping it frees its place.
#[derive(Debug)]
pub(crate) struct TenantSlot {
    slots: Arc<TenantSlots>,
    scope: Scope,
    started: Instant,
}

impl TenantSlots {
    pub(crate) fn new(quotas: Arc<QuotaBook>) -> Arc<Self> {
        Arc::new(Self { scopes: Mutex::default(), quotas })
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<Scope, ScopeState>> {
        self.scopes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A place for one more attempt of `scope`, or, when it runs `max_running` already, how long
    /// the attempt `waiter` (an activity's unique key) should wait before it tries again.
    pub(crate) fn try_acquire(self: &Arc<Self>, scope: &Scope, waiter: &str) -> Result<TenantSlot, Duration> {
        let limit = self.quotas.for_scope(scope).max_running.max(1);
        let now = Instant::now();
        let mut scopes = self.lock();
        let state = scopes.entry(scope.clone()).or_default();
        state.waiting.retain(|_, forget_after| *forget_after > now);
        if state.running < limit {
            state.running += 1;
            state.waiting.remove(waiter);
            return Ok(TenantSlot { slots: Arc::clone(self), scope: scope.clone(), started: now });
        }
        let waiting = u32::try_from(state.waiting.len() + usize::from(!state.waiting.contains_key(waiter)))
            .unwrap_or(u32::MAX);
        let delay = busy_delay(waiting, limit, state.mean_run.unwrap_or(ASSUMED_RUN), salt(waiter));
        state.waiting.insert(waiter.to_owned(), now + delay + WAITER_GRACE);
        Err(delay)
    }
}

impl Drop for TenantSlot {
    fn drop(&mut self) {
        let ran = self.started.elapsed();
        let mut scopes = self.slots.lock();
        let Some(state) = scopes.get_mut(&self.scope) else { return };
        state.running = state.running.saturating_sub(1);
        state.mean_run = Some(match state.mean_run {
            Some(mean) => mean.mul_f64(0.8) + ran.mul_f64(0.2),
            None => ran,
        });
        if state.running == 0 && state.waiting.is_empty() {
            scopes.remove(&self.scope);
        }
    }
}

/// How long a busy attempt waits before Temporal offers it again: the time `waiting` attempts
/// take to run through `max_running` places at `mean_run` each, bounded, and spread by `salt`
/// over half to one and a half times that, so the backlog comes back about one try per freed
/// place rather than all at once.
pub(crate) fn busy_delay(waiting: u32, max_running: u32, mean_run: Duration, salt: u64) -> Duration {
    let drain = mean_run.mul_f64(f64::from(waiting.max(1)) / f64::from(max_running.max(1)));
    // 50..=150 % of the drain time, picked by the salt.
    let spread = salt.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 32;
    let factor = 0.5 + (spread % 1001) as f64 / 1000.0;
    drain.mul_f64(factor).clamp(BUSY_MIN_DELAY, BUSY_MAX_DELAY)
}

/// A stable spread for one waiting attempt (FNV-1a of its key).
fn salt(waiter: &str) -> u64 {
    waiter.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, b| (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use domain::TenantQuotas;

    use super::*;

    fn slots(max_running: u32) -> Arc<TenantSlots> {
        let quotas = QuotaBook::uniform(TenantQuotas { max_running, ..TenantQuotas::default() });
        TenantSlots::new(Arc::new(quotas))
    }

    #[test]
    fn a_scope_gets_at_most_its_max_running_and_others_are_unaffected() {
        let slots = slots(2);
        let (a, b) = (Scope::parse("a/p").unwrap(), Scope::parse("b/p").unwrap());
        let first = slots.try_acquire(&a, "a1").unwrap();
        let _second = slots.try_acquire(&a, "a2").unwrap();
        assert!(slots.try_acquire(&a, "a3").is_err());
        assert!(slots.try_acquire(&b, "b1").is_ok());
        drop(first);
        assert!(slots.try_acquire(&a, "a3").is_ok());
    }

    #[test]
    fn a_longer_backlog_waits_longer_and_one_waiter_is_counted_once() {
        let slots = slots(1);
        let a = Scope::parse("a/p").unwrap();
        let _running = slots.try_acquire(&a, "a0").unwrap();
        // Each new waiter sees the ones before it; the same waiter again adds nothing.
        let first = slots.try_acquire(&a, "a1").unwrap_err();
        let again = slots.try_acquire(&a, "a1").unwrap_err();
        assert_eq!(first, again);
        let delays: Vec<_> = (2..200).map(|i| slots.try_acquire(&a, &format!("a{i}")).unwrap_err()).collect();
        let mean_late = delays[150..].iter().sum::<Duration>() / 48;
        let mean_early = delays[..10].iter().sum::<Duration>() / 10;
        assert!(mean_late > mean_early * 5, "{mean_early:?} then {mean_late:?}");
        assert!(delays.iter().all(|d| *d <= BUSY_MAX_DELAY && *d >= BUSY_MIN_DELAY));
    }

    #[test]
    fn busy_delays_follow_the_drain_time_within_bounds() {
        let second = Duration::from_secs(1);
        // 40 waiting through 2 places at 1 s each: about 20 s, spread over 10..=30 s.
        for salt in 0..100 {
            let delay = busy_delay(40, 2, second, salt);
            assert!(delay >= Duration::from_secs(10) && delay <= Duration::from_secs(30), "{delay:?}");
        }
        assert_eq!(busy_delay(1, 2, Duration::from_millis(10), 7), BUSY_MIN_DELAY);
        assert_eq!(busy_delay(u32::MAX, 1, Duration::from_secs(3600), 7), BUSY_MAX_DELAY);
        assert_eq!(busy_delay(0, 0, Duration::ZERO, 0), BUSY_MIN_DELAY);
        // The spread covers the range rather than a few values.
        let distinct: std::collections::HashSet<_> =
            (0..100).map(|s| busy_delay(40, 2, second, salt(&s.to_string()))).collect();
        assert!(distinct.len() > 50);
    }
}
