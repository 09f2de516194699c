//! Settings of the HTTP limits: rate limits, timeouts, connection and in-flight bounds, and the
//! readiness cache. Defaults are what one API replica on a small machine can take; see the
//! README's "Limits" section for why each is what it is.

use std::time::Duration;

use anyhow::bail;
use clap::Args;

use super::gcra::Quota;

const DEFAULT_RATE_LIMIT_PER_S: u32 = 20;
const DEFAULT_RATE_LIMIT_BURST: u32 = 40;
const DEFAULT_AUTH_FAILURES_PER_MIN: u32 = 10;
const DEFAULT_AUTH_FAILURES_BURST: u32 = 10;
const DEFAULT_HEADER_READ_TIMEOUT_S: u64 = 10;
const DEFAULT_REQUEST_TIMEOUT_S: u64 = 30;
const DEFAULT_MAX_CONNECTIONS: usize = 512;
const DEFAULT_MAX_IN_FLIGHT: usize = 256;
const DEFAULT_READYZ_CACHE_S: u64 = 2;

#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Requests per second per API key (and per tenant on the webhook), sustained.
    #[arg(long, env = "USEREXPORT_RATE_LIMIT_PER_S", default_value_t = DEFAULT_RATE_LIMIT_PER_S)]
    pub rate_limit_per_s: u32,

    /// Requests per API key (and per tenant on the webhook) allowed at once, above the rate.
    #[arg(long, env = "USEREXPORT_RATE_LIMIT_BURST", default_value_t = DEFAULT_RATE_LIMIT_BURST)]
    pub rate_limit_burst: u32,

    /// Failed authentications (401) per minute per client address, sustained; beyond, `429`.
    #[arg(long, env = "USEREXPORT_AUTH_FAILURES_PER_MIN", default_value_t = DEFAULT_AUTH_FAILURES_PER_MIN)]
    pub auth_failures_per_min: u32,

    /// Failed authentications per client address allowed at once.
    #[arg(long, env = "USEREXPORT_AUTH_FAILURES_BURST", default_value_t = DEFAULT_AUTH_FAILURES_BURST)]
    pub auth_failures_burst: u32,

    /// A connection that does not send a request's headers within this closes (idle keep-alive
    /// connections too).
    #[arg(long, env = "USEREXPORT_HEADER_READ_TIMEOUT_S", default_value_t = DEFAULT_HEADER_READ_TIMEOUT_S)]
    pub header_read_timeout_s: u64,

    /// A request (body included) not answered within this gets `503`; downloads are exempt and
    /// the synchronous export adds its wait to it.
    #[arg(long, env = "USEREXPORT_REQUEST_TIMEOUT_S", default_value_t = DEFAULT_REQUEST_TIMEOUT_S)]
    pub request_timeout_s: u64,

    /// Open connections; beyond, new ones wait in the listen backlog.
    #[arg(long, env = "USEREXPORT_MAX_CONNECTIONS", default_value_t = DEFAULT_MAX_CONNECTIONS)]
    pub max_connections: usize,

    /// Requests handled at once (the probes excepted); beyond, `503` at once.
    #[arg(long, env = "USEREXPORT_MAX_IN_FLIGHT", default_value_t = DEFAULT_MAX_IN_FLIGHT)]
    pub max_in_flight: usize,

    /// Age up to which `/readyz` answers from its last dependency check; 0: a fresh check per
    /// call (concurrent calls still share one).
    #[arg(long, env = "USEREXPORT_READYZ_CACHE_S", default_value_t = DEFAULT_READYZ_CACHE_S)]
    pub readyz_cache_s: u64,
}

impl Default for LimitArgs {
    fn default() -> Self {
        Self {
            rate_limit_per_s: DEFAULT_RATE_LIMIT_PER_S,
            rate_limit_burst: DEFAULT_RATE_LIMIT_BURST,
            auth_failures_per_min: DEFAULT_AUTH_FAILURES_PER_MIN,
            auth_failures_burst: DEFAULT_AUTH_FAILURES_BURST,
            header_read_timeout_s: DEFAULT_HEADER_READ_TIMEOUT_S,
            request_timeout_s: DEFAULT_REQUEST_TIMEOUT_S,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_in_flight: DEFAULT_MAX_IN_FLIGHT,
            readyz_cache_s: DEFAULT_READYZ_CACHE_S,
        }
    }
}

impl LimitArgs {
    /// Limits high enough that tests sending many requests from one "address" never meet them;
    /// the tests of the limits set their own.
    pub fn relaxed() -> Self {
        Self {
            rate_limit_per_s: 100_000,
            rate_limit_burst: 100_000,
            auth_failures_per_min: 1_000_000,
            auth_failures_burst: 100_000,
            ..Self::default()
        }
    }

    pub fn request_quota(&self) -> Quota {
        Quota::per_second(self.rate_limit_per_s, self.rate_limit_burst)
    }

    pub fn auth_failure_quota(&self) -> Quota {
        Quota::per_minute(self.auth_failures_per_min, self.auth_failures_burst)
    }

    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_s)
    }

    pub fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_s)
    }

    pub fn readyz_cache(&self) -> Duration {
        Duration::from_secs(self.readyz_cache_s)
    }

    /// Checks what no type expresses.
    ///
    /// # Errors
    /// One line naming the offending setting.
    pub fn check(&self) -> anyhow::Result<()> {
        let at_least_one: [(&str, u64); 8] = [
            ("USEREXPORT_RATE_LIMIT_PER_S", self.rate_limit_per_s.into()),
            ("USEREXPORT_RATE_LIMIT_BURST", self.rate_limit_burst.into()),
            ("USEREXPORT_AUTH_FAILURES_PER_MIN", self.auth_failures_per_min.into()),
            ("USEREXPORT_AUTH_FAILURES_BURST", self.auth_failures_burst.into()),
            ("USEREXPORT_HEADER_READ_TIMEOUT_S", self.header_read_timeout_s),
            ("USEREXPORT_REQUEST_TIMEOUT_S", self.request_timeout_s),
            ("USEREXPORT_MAX_CONNECTIONS", self.max_connections as u64),
            ("USEREXPORT_MAX_IN_FLIGHT", self.max_in_flight as u64),
        ];
        if let Some((setting, _)) = at_least_one.iter().find(|(_, value)| *value == 0) {
            bail!("invalid {setting}: must be at least 1");
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zero_limit_is_named() {
        assert!(LimitArgs::default().check().is_ok());
        let err = LimitArgs { max_in_flight: 0, ..LimitArgs::default() }.check().err().map(|e| e.to_string());
        assert_eq!(err.as_deref(), Some("invalid USEREXPORT_MAX_IN_FLIGHT: must be at least 1"));
    }
}
