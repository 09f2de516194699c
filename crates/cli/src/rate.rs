//! Throughput and time left, from the rows the API reports at each poll.

use std::collections::VecDeque;
use std::time::Duration;

/// Samples further apart than this are not averaged: the rate follows the export's current pace.
const WINDOW: Duration = Duration::from_secs(10);
/// Below this span a rate is noise (two polls answered from one progress write).
const MIN_SPAN: Duration = Duration::from_millis(500);

/// Rows per second over a sliding window of `(time since start, rows written)` samples.
#[derive(Debug, Default)]
pub struct RateMeter {
    samples: VecDeque<(Duration, u64)>,
}

impl RateMeter {
    /// Records that `rows` were written by `at` (time since waiting began).
    pub fn observe(&mut self, at: Duration, rows: u64) {
        if self.samples.back().is_some_and(|&(last, _)| at < last) {
            return;
        }
        self.samples.push_back((at, rows));
        // Keep one sample at or before the window's start, so the window is always spanned.
        while self.samples.len() > 2
            && self.samples.get(1).is_some_and(|&(t, _)| at.saturating_sub(t) >= WINDOW)
        {
            self.samples.pop_front();
        }
    }

    /// Rows per second, once two samples far enough apart exist.
    pub fn rows_per_sec(&self) -> Option<f64> {
        let (&(t0, r0), &(t1, r1)) = (self.samples.front()?, self.samples.back()?);
        let span = t1.saturating_sub(t0);
        (span >= MIN_SPAN).then(|| r1.saturating_sub(r0) as f64 / span.as_secs_f64())
    }

    /// Time left to reach `total` at the current rate; none while the rate is unknown or zero.
    pub fn eta(&self, rows: u64, total: u64) -> Option<Duration> {
        let rate = self.rows_per_sec().filter(|r| *r > 0.0)?;
        Some(Duration::from_secs_f64(total.saturating_sub(rows) as f64 / rate))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(secs: f64) -> Duration {
        Duration::from_secs_f64(secs)
    }

    #[test]
    fn no_rate_from_one_sample_or_a_too_short_span() {
        let mut meter = RateMeter::default();
        assert_eq!(meter.rows_per_sec(), None);
        meter.observe(s(0.0), 0);
        assert_eq!(meter.rows_per_sec(), None);
        meter.observe(s(0.2), 100);
        assert_eq!(meter.rows_per_sec(), None);
    }

    #[test]
    fn rate_and_eta_from_the_samples() {
        let mut meter = RateMeter::default();
        meter.observe(s(0.0), 0);
        meter.observe(s(1.0), 1_000);
        meter.observe(s(2.0), 2_000);
        assert_eq!(meter.rows_per_sec(), Some(1_000.0));
        assert_eq!(meter.eta(2_000, 10_000), Some(s(8.0)));
        assert_eq!(meter.eta(12_000, 10_000), Some(Duration::ZERO), "past the total: nothing left");
    }

    #[test]
    fn the_rate_follows_the_recent_pace() {
        let mut meter = RateMeter::default();
        meter.observe(s(0.0), 0);
        // 100 rows/s for 20 s, then 1 000 rows/s for 10 s.
        meter.observe(s(20.0), 2_000);
        for i in 1..=10_u32 {
            meter.observe(s(20.0 + f64::from(i)), 2_000 + 1_000 * u64::from(i));
        }
        assert_eq!(meter.rows_per_sec(), Some(1_000.0));
    }

    #[test]
    fn a_stalled_export_has_a_zero_rate_and_no_eta() {
        let mut meter = RateMeter::default();
        meter.observe(s(0.0), 500);
        meter.observe(s(3.0), 500);
        assert_eq!(meter.rows_per_sec(), Some(0.0));
        assert_eq!(meter.eta(500, 1_000), None);
    }

    #[test]
    fn samples_out_of_order_are_ignored() {
        let mut meter = RateMeter::default();
        meter.observe(s(2.0), 2_000);
        meter.observe(s(1.0), 9_999);
        meter.observe(s(3.0), 3_000);
        assert_eq!(meter.rows_per_sec(), Some(1_000.0));
    }
}
