//! Request limits: rate limits per API key and per webhook tenant, throttling of failed
//! authentications per client address, and the in-flight bound and request timeout (`load`).
//!
//! All in this process's memory: with N API replicas behind a load balancer a key may make N
//! times the configured rate. That is the usual trade-off of local limiters (no shared store on
//! the hot path); the limits exist to stop runaway clients and key guessing, not to bill.

mod client;
pub(crate) mod gcra;
pub(crate) mod headers;
pub(crate) mod load;
mod settings;

use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::Scope;
use http::Extensions;
use tokio::sync::Semaphore;

pub use client::ClientAddr;
use gcra::{Quota, RateLimiter};
pub use headers::{Policy, ReportSlot};
pub use settings::LimitArgs;

use crate::problem::ApiError;

/// Keys each limiter remembers at most (about 100 bytes each).
const MAX_TRACKED_KEYS: usize = 100_000;

/// The limiters and bounds, built once from [`LimitArgs`].
#[derive(Debug)]
pub struct Limits {
    keys: RateLimiter<[u8; 32]>,
    webhooks: RateLimiter<Scope>,
    failures: RateLimiter<ClientAddr>,
    pub(crate) in_flight: Arc<Semaphore>,
    pub(crate) request_timeout: Duration,
}

impl Limits {
    pub fn new(args: &LimitArgs) -> Self {
        Self {
            keys: RateLimiter::new(args.request_quota(), MAX_TRACKED_KEYS),
            webhooks: RateLimiter::new(args.request_quota(), MAX_TRACKED_KEYS),
            failures: RateLimiter::new(args.auth_failure_quota(), MAX_TRACKED_KEYS),
            in_flight: Arc::new(Semaphore::new(args.max_in_flight)),
            request_timeout: args.request_timeout(),
        }
    }

    /// Before any credential is looked at: `429` while the client's address has used up its
    /// failed authentications, so a guesser learns nothing, valid key or not.
    pub fn admit(&self, extensions: &Extensions) -> Result<(), ApiError> {
        let client = ClientAddr::of(extensions);
        let decision = self.failures.peek(&client, Instant::now());
        if decision.allowed {
            return Ok(());
        }
        ReportSlot::record(extensions, Policy::AuthFailures, self.failures.quota(), decision);
        // Debug only: under a guessing attack this would be one line per request.
        tracing::debug!(%client, "authentication failures throttled");
        Err(ApiError::AuthThrottled { retry_after: decision.retry_after })
    }

    /// A failed authentication: counted against the client's address; returns `error`.
    pub fn failed(&self, extensions: &Extensions, error: ApiError) -> ApiError {
        let decision = self.failures.check(&ClientAddr::of(extensions), Instant::now());
        ReportSlot::record(extensions, Policy::AuthFailures, self.failures.quota(), decision);
        error
    }

    /// One request of the API key with this digest.
    pub fn per_key(&self, extensions: &Extensions, key: &[u8; 32]) -> Result<(), ApiError> {
        Self::take(&self.keys, Policy::ApiKey, extensions, key)
    }

    /// One authenticated webhook request of `scope`.
    pub fn per_tenant(&self, extensions: &Extensions, scope: &Scope) -> Result<(), ApiError> {
        Self::take(&self.webhooks, Policy::Webhook, extensions, scope)
    }

    fn take<K: std::hash::Hash + Eq + Clone>(
        limiter: &RateLimiter<K>,
        policy: Policy,
        extensions: &Extensions,
        key: &K,
    ) -> Result<(), ApiError> {
        let quota: Quota = limiter.quota();
        let decision = limiter.check(key, Instant::now());
        ReportSlot::record(extensions, policy, quota, decision);
        if decision.allowed {
            Ok(())
        } else {
            Err(ApiError::RateLimited { retry_after: decision.retry_after })
        }
    }
}
