//! Retry and timeout policy as values, applied identically by every orchestrator.

use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum PolicyError {
    #[error("maximum_attempts must be at least 1")]
    NoAttempts,
    #[error("backoff_coefficient must be a finite number >= 1.0")]
    BadBackoff,
    #[error("initial_interval must be positive and not above maximum_interval")]
    BadInterval,
    #[error("timeouts must be positive")]
    BadTimeout,
    #[error("retention days must be at least 1 and the default not above the maximum")]
    BadRetention,
}

/// When a failed attempt is retried. Same meaning as Temporal's `RetryPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    pub initial_interval: Duration,
    pub backoff_coefficient: f64,
    pub maximum_interval: Duration,
    pub maximum_attempts: u32,
}

impl Default for RetryPolicy {
    /// The seed's defaults: 1 s, x2.0, at most 2 min apart, 3 attempts.
    fn default() -> Self {
        Self {
            initial_interval: Duration::from_secs(1),
            backoff_coefficient: 2.0,
            maximum_interval: Duration::from_secs(120),
            maximum_attempts: 3,
        }
    }
}

impl RetryPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.maximum_attempts == 0 {
            return Err(PolicyError::NoAttempts);
        }
        if !self.backoff_coefficient.is_finite() || self.backoff_coefficient < 1.0 {
            return Err(PolicyError::BadBackoff);
        }
        if self.initial_interval.is_zero() || self.initial_interval > self.maximum_interval {
            return Err(PolicyError::BadInterval);
        }
        Ok(())
    }

    /// Whether `attempt` (1-based) may run at all.
    pub fn allows(&self, attempt: u32) -> bool {
        attempt <= self.maximum_attempts
    }

    /// The wait before `attempt` (1-based): zero for the first, then
    /// `initial * coefficient^(attempt-2)`, capped at the maximum interval.
    pub fn delay_before(&self, attempt: u32) -> Duration {
        if attempt <= 1 {
            return Duration::ZERO;
        }
        let exponent = i32::try_from(attempt - 2).unwrap_or(i32::MAX);
        let secs = self.initial_interval.as_secs_f64() * self.backoff_coefficient.powi(exponent);
        let max = self.maximum_interval.as_secs_f64();
        Duration::from_secs_f64(if secs.is_finite() { secs.min(max) } else { max })
    }
}

/// What kind of failure ended an attempt; it decides what happens next, identically in every
/// orchestrator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureClass {
    /// The request itself is at fault: retrying cannot help, the export fails at once.
    Request,
    /// A dependency (database, storage, Temporal, SMTP) is unreachable or timed out: retried
    /// with capped backoff until the export's deadline, consuming no attempt.
    Infrastructure,
    /// The attempt was interrupted (graceful shutdown, lost worker): it resumes, consuming
    /// nothing.
    Interruption,
    /// Anything else (a bug, a corrupt row): consumes one of the export's attempts.
    Defect,
}

impl FailureClass {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Request => "request",
            Self::Infrastructure => "infrastructure",
            Self::Interruption => "interruption",
            Self::Defect => "defect",
        }
    }

    /// Whether a failure of this class uses up one of `RetryPolicy::maximum_attempts`.
    pub fn consumes_attempt(self) -> bool {
        self == Self::Defect
    }
}

/// What an orchestrator does after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextStep {
    /// Run another attempt after this wait.
    RetryAfter(Duration),
    /// Stop: the export fails for good.
    GiveUp(GiveUpReason),
}

/// Why an export stops being retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GiveUpReason {
    /// The request is at fault.
    Request,
    /// Every attempt `maximum_attempts` allows has failed.
    AttemptsExhausted,
    /// The export's deadline has passed.
    DeadlineExceeded,
}

/// Everything an orchestrator needs to run one export the same way on any backend.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ExecutionPolicy {
    pub retry: RetryPolicy,
    /// Bound on the whole export, from its creation to its last attempt. No per-attempt limit
    /// exists: a live attempt is recognised by its heartbeats, so export size is not capped.
    #[serde(alias = "start_to_close")]
    pub deadline: Duration,
    /// A running attempt that reports no progress for this long is considered lost.
    pub heartbeat_timeout: Duration,
}

impl Default for ExecutionPolicy {
    /// 8 hours per export (as Auth0's export jobs), a 30 s heartbeat.
    fn default() -> Self {
        Self {
            retry: RetryPolicy::default(),
            deadline: Duration::from_secs(8 * 3600),
            heartbeat_timeout: Duration::from_secs(30),
        }
    }
}

impl ExecutionPolicy {
    pub fn validate(&self) -> Result<(), PolicyError> {
        self.retry.validate()?;
        if self.deadline.is_zero() || self.heartbeat_timeout.is_zero() {
            return Err(PolicyError::BadTimeout);
        }
        Ok(())
    }

    /// What follows a failure of `class` in run `run` (1-based: every attempt started, whatever
    /// ended it), when `consumed` attempts (this one included) have been used up and `elapsed`
    /// has passed since the export was created.
    pub fn after_failure(&self, class: FailureClass, run: u32, consumed: u32, elapsed: Duration) -> NextStep {
        if class == FailureClass::Request {
            return NextStep::GiveUp(GiveUpReason::Request);
        }
        if class.consumes_attempt() && !self.retry.allows(consumed.saturating_add(1)) {
            return NextStep::GiveUp(GiveUpReason::AttemptsExhausted);
        }
        let Some(left) = self.deadline.checked_sub(elapsed).filter(|left| !left.is_zero()) else {
            return NextStep::GiveUp(GiveUpReason::DeadlineExceeded);
        };
        let wait = match class {
            // Resumes at once: nothing failed.
            FailureClass::Interruption => Duration::ZERO,
            _ => self.retry.delay_before(run.saturating_add(1)),
        };
        NextStep::RetryAfter(wait.min(left))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seed_defaults_back_off_exponentially_up_to_the_cap() {
        let p = RetryPolicy::default();
        assert!(p.validate().is_ok());
        let delays: Vec<u64> = (1..=10).map(|a| p.delay_before(a).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 32, 64, 120, 120]);
        assert!(p.allows(3) && !p.allows(4));
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        assert_eq!(RetryPolicy::default().delay_before(u32::MAX), Duration::from_secs(120));
    }

    #[test]
    fn invalid_policies_are_rejected() {
        let base = RetryPolicy::default();
        assert_eq!(RetryPolicy { maximum_attempts: 0, ..base }.validate(), Err(PolicyError::NoAttempts));
        assert_eq!(RetryPolicy { backoff_coefficient: 0.5, ..base }.validate(), Err(PolicyError::BadBackoff));
        assert_eq!(
            RetryPolicy { backoff_coefficient: f64::NAN, ..base }.validate(),
            Err(PolicyError::BadBackoff)
        );
        assert_eq!(
            RetryPolicy { initial_interval: Duration::from_secs(500), ..base }.validate(),
            Err(PolicyError::BadInterval)
        );
        let exec = ExecutionPolicy { deadline: Duration::ZERO, ..ExecutionPolicy::default() };
        assert_eq!(exec.validate(), Err(PolicyError::BadTimeout));
    }

    #[test]
    fn only_defects_consume_attempts_and_the_deadline_bounds_everything() {
        let p = ExecutionPolicy::default();
        let hour = Duration::from_secs(3600);
        // Infrastructure trouble is retried far past maximum_attempts, with capped backoff.
        for run in [1, 3, 50, 10_000] {
            assert_eq!(
                p.after_failure(FailureClass::Infrastructure, run, 0, hour),
                NextStep::RetryAfter(p.retry.delay_before(run + 1))
            );
        }
        assert_eq!(
            p.after_failure(FailureClass::Interruption, 7, 2, hour),
            NextStep::RetryAfter(Duration::ZERO)
        );
        // Defects: three allowed by default.
        assert!(matches!(p.after_failure(FailureClass::Defect, 5, 2, hour), NextStep::RetryAfter(_)));
        assert_eq!(
            p.after_failure(FailureClass::Defect, 5, 3, hour),
            NextStep::GiveUp(GiveUpReason::AttemptsExhausted)
        );
        assert_eq!(
            p.after_failure(FailureClass::Request, 1, 0, hour),
            NextStep::GiveUp(GiveUpReason::Request)
        );
        assert_eq!(
            p.after_failure(FailureClass::Infrastructure, 1, 0, p.deadline),
            NextStep::GiveUp(GiveUpReason::DeadlineExceeded)
        );
        // A wait never runs past the deadline.
        let almost = p.deadline - Duration::from_millis(300);
        assert_eq!(
            p.after_failure(FailureClass::Infrastructure, 20, 0, almost),
            NextStep::RetryAfter(Duration::from_millis(300))
        );
    }

    #[test]
    fn policies_sent_with_the_old_field_name_still_decode() {
        let old = r#"{"retry":{"initial_interval":{"secs":1,"nanos":0},"backoff_coefficient":2.0,
            "maximum_interval":{"secs":120,"nanos":0},"maximum_attempts":3},
            "start_to_close":{"secs":600,"nanos":0},"heartbeat_timeout":{"secs":30,"nanos":0}}"#;
        let p: ExecutionPolicy = serde_json::from_str(old).unwrap();
        assert_eq!(p.deadline, Duration::from_secs(600));
    }
}

/// How long completed exports keep their file: a default, and a cap on per-request overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RetentionPolicy {
    pub default_days: u32,
    pub max_days: u32,
}

impl Default for RetentionPolicy {
    /// 7 days by default, at most 30 on request.
    fn default() -> Self {
        Self { default_days: 7, max_days: 30 }
    }
}

impl RetentionPolicy {
    /// # Errors
    /// When a bound is zero or the default exceeds the cap.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.default_days == 0 || self.default_days > self.max_days {
            return Err(PolicyError::BadRetention);
        }
        Ok(())
    }

    /// Rejects a request whose `retention_days` exceeds the cap.
    ///
    /// # Errors
    /// A `retention_days` field error naming the cap.
    pub fn check(&self, spec: &crate::ExportSpec) -> Result<(), crate::ValidationErrors> {
        match spec.retention_days {
            Some(days) if days > self.max_days => Err(crate::ValidationErrors::single(
                "retention_days",
                "too_long",
                format!("retention_days may be at most {} on this service", self.max_days),
            )),
            _ => Ok(()),
        }
    }

    /// The retention of an export of `spec` (its override within the cap, else the default).
    pub fn retention_for(&self, spec: &crate::ExportSpec) -> chrono::TimeDelta {
        let days = spec.retention_days.unwrap_or(self.default_days).min(self.max_days);
        chrono::TimeDelta::days(i64::from(days))
    }
}
