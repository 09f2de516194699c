//! The `RateLimit-Policy` and `RateLimit` response fields of draft-ietf-httpapi-ratelimit-headers
//! (-10, September 2025; unchanged in -11, May 2026): Structured Field lists of a quoted policy
//! name with parameters, `q` the quota and `w` its window in seconds for the policy,
//! `r` the quota remaining and `t` the seconds until it is restored for the current state:
//!
//! ```text
//! RateLimit-Policy: "api-key";q=40;w=2
//! RateLimit: "api-key";r=12;t=1
//! ```
//!
//! A GCRA bucket of `burst` refilling at `rate` is advertised as `q=burst` per `w=burst/rate`.
//! The limiter runs inside extractors, after routing; a [`ReportSlot`] placed in the request's
//! extensions by [`rate_limit_headers`] carries its decision out to the response.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::Request;
use axum::middleware::Next;
use axum::response::Response;
use http::{Extensions, HeaderName, HeaderValue};

use super::gcra::{Decision, Quota};

pub static RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
pub static RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");

/// The limiter that answered, named in both fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// Requests per API key (tenant and operator keys).
    ApiKey,
    /// Authenticated webhook requests per tenant.
    Webhook,
    /// Failed authentications per client address.
    AuthFailures,
}

impl Policy {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ApiKey => "api-key",
            Self::Webhook => "webhook",
            Self::AuthFailures => "auth-failures",
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Report {
    policy: Policy,
    quota: Quota,
    decision: Decision,
}

/// Where the limiter leaves its last decision for the response.
#[derive(Debug, Clone, Default)]
pub struct ReportSlot(Arc<Mutex<Option<Report>>>);

impl ReportSlot {
    /// Records `decision` for the response of the request holding `extensions`, if the request
    /// went through [`rate_limit_headers`].
    pub fn record(extensions: &Extensions, policy: Policy, quota: Quota, decision: Decision) {
        if let Some(slot) = extensions.get::<Self>() {
            *slot.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner) =
                Some(Report { policy, quota, decision });
        }
    }

    fn take(&self) -> Option<Report> {
        self.0.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take()
    }
}

/// Middleware: adds the two fields to the response of every request a limiter counted.
pub async fn rate_limit_headers(mut request: Request, next: Next) -> Response {
    let slot = ReportSlot::default();
    request.extensions_mut().insert(slot.clone());
    let mut response = next.run(request).await;
    if let Some(report) = slot.take() {
        let (policy, state) = fields(&report);
        let headers = response.headers_mut();
        if let (Ok(policy), Ok(state)) = (HeaderValue::from_str(&policy), HeaderValue::from_str(&state)) {
            headers.insert(RATELIMIT_POLICY.clone(), policy);
            headers.insert(RATELIMIT.clone(), state);
        }
    }
    response
}

fn fields(report: &Report) -> (String, String) {
    let name = report.policy.as_str();
    let window = ceil_secs(report.quota.refill()).max(1);
    let policy = format!("\"{name}\";q={};w={window}", report.quota.burst);
    let state = format!("\"{name}\";r={};t={}", report.decision.remaining, ceil_secs(report.decision.reset));
    (policy, state)
}

/// Whole seconds, rounded up (a client waiting that long is never early).
pub fn ceil_secs(duration: Duration) -> u64 {
    duration.as_secs() + u64::from(duration.subsec_nanos() > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_follow_the_draft_syntax() {
        let report = Report {
            policy: Policy::ApiKey,
            quota: Quota::per_second(20, 40),
            decision: Decision {
                allowed: true,
                remaining: 12,
                reset: Duration::from_millis(1_400),
                retry_after: Duration::ZERO,
            },
        };
        assert_eq!(fields(&report), ("\"api-key\";q=40;w=2".to_owned(), "\"api-key\";r=12;t=2".to_owned()));
        assert_eq!(ceil_secs(Duration::from_secs(3)), 3);
        assert_eq!(ceil_secs(Duration::from_millis(1)), 1);
    }
}
