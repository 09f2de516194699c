//! The dependency checks behind `/readyz`, cached: `/readyz` is open to anyone, so however often
//! it is called the dependencies are pinged at most once per cache period, and callers that
//! arrive while a check runs wait for that one instead of starting their own.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use ports::PortError;
use tokio::sync::Mutex;
use tokio::time::Instant;
use tracing::warn;

use crate::dto::CheckStatus;
use crate::state::Dependencies;

/// Bound on each dependency's answer to a readiness ping.
const PING_TIMEOUT: Duration = Duration::from_secs(2);

/// Each dependency's state by name (`users`, `exports`, `storage`, `orchestrator`, `events`).
pub type Checks = BTreeMap<String, CheckStatus>;

#[derive(Debug)]
pub struct ReadinessCache {
    max_age: Duration,
    /// When the last check finished, and what it found. Held across a check: the single flight.
    last: Mutex<Option<(Instant, Checks)>>,
}

impl ReadinessCache {
    pub fn new(max_age: Duration) -> Self {
        Self { max_age, last: Mutex::new(None) }
    }

    /// The latest checks: cached while at most `max_age` old or finished after this call began,
    /// fresh otherwise.
    pub async fn checks(&self, deps: &Dependencies) -> Checks {
        let called = Instant::now();
        let mut last = self.last.lock().await;
        if let Some((at, checks)) = &*last
            && (*at >= called || at.elapsed() <= self.max_age)
        {
            return checks.clone();
        }
        let checks = check_all(deps).await;
        *last = Some((Instant::now(), checks.clone()));
        checks
    }
}

async fn check_all(deps: &Dependencies) -> Checks {
    let (users, exports, storage, orchestrator) = tokio::join!(
        check("users", deps.users.ping()),
        check("exports", deps.exports.ping()),
        check("storage", deps.storage.ping()),
        check("orchestrator", deps.orchestrator.ping()),
    );
    let mut checks: Checks =
        [users, exports, storage, orchestrator].into_iter().map(|(name, s)| (name.to_owned(), s)).collect();
    if let Some(events) = &deps.events {
        let (name, status) = check("events", events.ping()).await;
        checks.insert(name.to_owned(), status);
    }
    checks
}

/// Pings one dependency; failures are logged here, never returned to the (unauthenticated) caller.
async fn check(
    name: &'static str,
    ping: impl Future<Output = Result<(), PortError>>,
) -> (&'static str, CheckStatus) {
    match tokio::time::timeout(PING_TIMEOUT, ping).await {
        Ok(Ok(())) => (name, CheckStatus::Ok),
        Ok(Err(err)) => {
            warn!(dependency = name, error = %format!("{err:#}"), "readiness check failed");
            (name, CheckStatus::Unavailable)
        }
        Err(_) => {
            warn!(
                dependency = name,
                timeout_ms = PING_TIMEOUT.as_millis() as u64,
                "readiness check timed out"
            );
            (name, CheckStatus::Unavailable)
        }
    }
}
