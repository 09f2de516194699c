//! An in-process rate limiter: GCRA (the generic cell rate algorithm), a token bucket that keeps
//! one instant per key, the "theoretical arrival time" (TAT) at which the key's bucket would be
//! full again.
//!
//! Memory is bounded: a key whose TAT has passed has a full bucket, exactly like a key never
//! seen, so it is forgotten at the next sweep; when `max_keys` keys are still active, new keys
//! share one overflow bucket (throttled together rather than not at all).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How often idle keys are swept out even when the table is not full.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

/// `burst` requests at once, then one every `interval`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub interval: Duration,
    pub burst: u32,
}

impl Quota {
    /// `per_s` requests per second sustained (at least 1), `burst` at once (at least 1).
    pub fn per_second(per_s: u32, burst: u32) -> Self {
        Self { interval: Duration::from_secs(1) / per_s.max(1), burst: burst.max(1) }
    }

    /// `per_min` requests per minute sustained (at least 1), `burst` at once (at least 1).
    pub fn per_minute(per_min: u32, burst: u32) -> Self {
        Self { interval: Duration::from_secs(60) / per_min.max(1), burst: burst.max(1) }
    }

    /// How long an empty bucket takes to fill up again.
    pub fn refill(&self) -> Duration {
        self.interval * self.burst
    }
}

/// The answer to one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// Requests still allowed right now after this one.
    pub remaining: u32,
    /// Until the bucket is full again.
    pub reset: Duration,
    /// When refused: until one request is allowed again.
    pub retry_after: Duration,
}

#[derive(Debug)]
struct Table<K> {
    tats: HashMap<K, Instant>,
    overflow: Option<Instant>,
    last_sweep: Instant,
}

#[derive(Debug)]
pub struct RateLimiter<K> {
    quota: Quota,
    max_keys: usize,
    table: Mutex<Table<K>>,
}

impl<K: Hash + Eq + Clone> RateLimiter<K> {
    pub fn new(quota: Quota, max_keys: usize) -> Self {
        let table = Table { tats: HashMap::new(), overflow: None, last_sweep: Instant::now() };
        Self { quota, max_keys: max_keys.max(1), table: Mutex::new(table) }
    }

    pub fn quota(&self) -> Quota {
        self.quota
    }

    /// Takes one request from `key`'s bucket, if there is one left.
    pub fn check(&self, key: &K, now: Instant) -> Decision {
        self.decide(key, now, true)
    }

    /// Whether `key` has a request left, without taking it.
    pub fn peek(&self, key: &K, now: Instant) -> Decision {
        self.decide(key, now, false)
    }

    /// Keys currently remembered (for tests of the memory bound).
    #[cfg(test)]
    pub fn tracked_keys(&self) -> usize {
        self.lock().tats.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table<K>> {
        // A panic while holding the lock leaves the table consistent (every write is one insert).
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn decide(&self, key: &K, now: Instant, take: bool) -> Decision {
        let mut table = self.lock();
        if now.saturating_duration_since(table.last_sweep) >= SWEEP_EVERY {
            table.sweep(now);
        }
        let known = table.tats.get(key).copied();
        let tat = match known {
            Some(tat) => Some(tat),
            None if table.tats.len() < self.max_keys => None,
            None => {
                table.sweep(now);
                if table.tats.len() < self.max_keys { None } else { table.overflow }
            }
        };
        let (decision, next) = gcra(self.quota, tat, now);
        if take && let Some(next) = next {
            if known.is_some() || table.tats.len() < self.max_keys {
                table.tats.insert(key.clone(), next);
            } else {
                table.overflow = Some(next);
            }
        }
        decision
    }
}

impl<K: Hash + Eq> Table<K> {
    /// Forgets every key whose bucket is full again.
    fn sweep(&mut self, now: Instant) {
        self.tats.retain(|_, tat| *tat > now);
        if self.overflow.is_some_and(|tat| tat <= now) {
            self.overflow = None;
        }
        self.last_sweep = now;
    }
}

/// One GCRA step: the decision, and the new TAT when the request is allowed.
fn gcra(quota: Quota, tat: Option<Instant>, now: Instant) -> (Decision, Option<Instant>) {
    let tat = tat.map_or(now, |t| t.max(now));
    let next = tat + quota.interval;
    let horizon = now + quota.refill();
    if next > horizon {
        let decision =
            Decision { allowed: false, remaining: 0, reset: tat - now, retry_after: next - horizon };
        return (decision, None);
    }
    let left = (horizon - next).as_nanos() / quota.interval.as_nanos().max(1);
    let decision = Decision {
        allowed: true,
        remaining: u32::try_from(left).unwrap_or(u32::MAX),
        reset: next - now,
        retry_after: Duration::ZERO,
    };
    (decision, Some(next))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[test]
    fn a_burst_then_one_per_interval() {
        let limiter = RateLimiter::new(Quota::per_second(1, 3), 10);
        let t0 = Instant::now();
        let remaining: Vec<u32> = (0..3).map(|_| limiter.check(&"k", t0).remaining).collect();
        assert_eq!(remaining, [2, 1, 0]);
        let refused = limiter.check(&"k", t0);
        assert!(!refused.allowed);
        assert_eq!(refused.retry_after, SECOND);
        assert_eq!(refused.reset, 3 * SECOND);
        assert!(limiter.check(&"k", t0 + SECOND).allowed, "one more after an interval");
        assert!(!limiter.check(&"k", t0 + SECOND).allowed);
        assert!(limiter.check(&"other", t0).allowed, "keys have their own buckets");
    }

    #[test]
    fn peeking_takes_nothing() {
        let limiter = RateLimiter::new(Quota::per_minute(1, 1), 10);
        let t0 = Instant::now();
        assert!(limiter.peek(&1, t0).allowed);
        assert!(limiter.peek(&1, t0).allowed);
        assert!(limiter.check(&1, t0).allowed);
        assert!(!limiter.peek(&1, t0).allowed);
        assert_eq!(limiter.peek(&1, t0).retry_after, 60 * SECOND);
    }

    #[test]
    fn memory_is_bounded_and_idle_keys_are_forgotten() {
        let limiter = RateLimiter::new(Quota::per_second(1, 2), 3);
        let t0 = Instant::now();
        for key in 0..3 {
            assert!(limiter.check(&key, t0).allowed);
        }
        // The table is full of active keys: newcomers share one overflow bucket.
        assert!(limiter.check(&10, t0).allowed);
        assert!(limiter.check(&11, t0).allowed);
        assert!(!limiter.check(&12, t0).allowed, "the overflow bucket is shared");
        assert_eq!(limiter.tracked_keys(), 3);
        // Once their buckets are full again the keys are forgotten and newcomers get their own.
        let later = t0 + 2 * SECOND;
        assert!(limiter.check(&12, later).allowed);
        assert_eq!(limiter.tracked_keys(), 1);
        let much_later = later + SWEEP_EVERY;
        assert!(limiter.peek(&0, much_later).allowed);
        assert_eq!(limiter.tracked_keys(), 0, "swept without a full table");
    }
}
