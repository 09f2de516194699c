//! What a service admits as a schedule beyond a valid cron expression: one that fires within
//! the next five years, and never twice within the minimum interval
//! (`USEREXPORT_SCHEDULE_MIN_INTERVAL_S`), judged in the schedule's time zone.

use chrono::{DateTime, TimeDelta, Utc};

use crate::schedule::{CronExpr, ScheduleTimezone};
use crate::validation::ValidationErrors;

/// How far ahead a schedule must fire at least once.
pub const FIRE_HORIZON_YEARS: i64 = 5;
/// Upcoming fires compared for the minimum interval: more than one day of every-minute fires,
/// so every gap within a firing day and across midnight is seen.
const INTERVAL_SAMPLE: usize = 1500;
/// The minimum interval unless configured: every-minute schedules stay possible.
pub const DEFAULT_MIN_INTERVAL_S: u64 = 60;

/// The limits a schedule's cron and time zone must keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScheduleRules {
    /// The shortest time allowed between two consecutive fires.
    pub min_interval: TimeDelta,
}

impl Default for ScheduleRules {
    fn default() -> Self {
        Self::with_min_interval_s(DEFAULT_MIN_INTERVAL_S)
    }
}

impl ScheduleRules {
    pub fn with_min_interval_s(seconds: u64) -> Self {
        let seconds = i64::try_from(seconds).unwrap_or(i64::MAX);
        Self { min_interval: TimeDelta::try_seconds(seconds).unwrap_or(TimeDelta::MAX) }
    }

    /// Checks `cron` in `timezone` from `now` on: a fire within [`FIRE_HORIZON_YEARS`], and no
    /// two of a bounded sample of upcoming fires closer than the minimum interval. Errors are on
    /// `cron`. The work is bounded: at most [`INTERVAL_SAMPLE`] fires, none past the horizon.
    pub fn check(
        &self,
        cron: &CronExpr,
        timezone: &ScheduleTimezone,
        now: DateTime<Utc>,
    ) -> Result<(), ValidationErrors> {
        let horizon = now + TimeDelta::days(FIRE_HORIZON_YEARS * 366);
        let Some(mut previous) = cron.next_after(timezone, now).filter(|first| *first <= horizon) else {
            return Err(ValidationErrors::single(
                "cron",
                "cron_never_fires",
                format!(
                    "cron {cron:?} has no fire in the next {FIRE_HORIZON_YEARS} years in {timezone} \
                     (a day that does not exist in the chosen months, such as 30 or 31 February?)"
                ),
            ));
        };
        for _ in 0..INTERVAL_SAMPLE {
            let Some(next) = cron.next_after(timezone, previous).filter(|next| *next <= horizon) else {
                break;
            };
            if next - previous < self.min_interval {
                return Err(ValidationErrors::single(
                    "cron",
                    "cron_too_frequent",
                    format!(
                        "cron {cron:?} fires at {previous} and again {}s later ({timezone}); this \
                         service allows at least {}s between fires (USEREXPORT_SCHEDULE_MIN_INTERVAL_S)",
                        (next - previous).num_seconds(),
                        self.min_interval.num_seconds()
                    ),
                ));
            }
            previous = next;
        }
        Ok(())
    }

    /// The next `count` fires of `cron` in `timezone` after `now`, once [`Self::check`] admits
    /// it (else its errors): what a schedule with this timing would do. Fewer than `count` only
    /// when the horizon ends the list.
    pub fn upcoming(
        &self,
        cron: &CronExpr,
        timezone: &ScheduleTimezone,
        now: DateTime<Utc>,
        count: usize,
    ) -> Result<Vec<DateTime<Utc>>, ValidationErrors> {
        self.check(cron, timezone, now)?;
        let horizon = now + TimeDelta::days(FIRE_HORIZON_YEARS * 366);
        let mut fires = Vec::with_capacity(count);
        let mut after = now;
        while fires.len() < count {
            let Some(next) = cron.next_after(timezone, after).filter(|next| *next <= horizon) else { break };
            fires.push(next);
            after = next;
        }
        Ok(fires)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Instant;

    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-03-01T10:00:00Z").unwrap().with_timezone(&Utc)
    }

    fn code(rules: ScheduleRules, cron: &str, tz: &str) -> Option<&'static str> {
        let cron = CronExpr::parse(cron).unwrap();
        let tz = ScheduleTimezone::parse(tz).unwrap();
        rules.check(&cron, &tz, now()).err().map(|e| {
            assert_eq!(e.errors()[0].field, "cron");
            e.errors()[0].code
        })
    }

    #[test]
    fn impossible_dates_never_fire_and_are_found_at_once() {
        let started = Instant::now();
        for never in ["0 0 31 2 *", "0 0 30 2 *", "0 0 31 4,6,9,11 *", "0 0 30,31 FEB *"] {
            let cron = CronExpr::parse(never).unwrap();
            assert!(!cron.can_fire(), "{never}");
            assert_eq!(cron.next_after(&ScheduleTimezone::UTC, now()), None);
            assert_eq!(code(ScheduleRules::default(), never, "UTC"), Some("cron_never_fires"), "{never}");
        }
        // croner would search to the year 5000 for each; the structural check takes nothing.
        assert!(started.elapsed().as_millis() < 500, "{:?}", started.elapsed());
    }

    #[test]
    fn rare_dates_fire_if_within_five_years() {
        assert!(CronExpr::parse("0 0 29 2 *").unwrap().can_fire());
        assert_eq!(code(ScheduleRules::default(), "0 0 29 2 *", "UTC"), None, "2028-02-29");
        assert_eq!(code(ScheduleRules::default(), "0 0 31 1-12/2 *", "UTC"), None);
        // 29 February on a Monday: 2044 is the next one.
        assert!(CronExpr::parse("0 0 29 2 MON").unwrap().can_fire());
        assert_eq!(code(ScheduleRules::default(), "0 0 29 2 MON", "UTC"), Some("cron_never_fires"));
    }

    #[test]
    fn fires_closer_than_the_minimum_are_refused() {
        let every_minute = ScheduleRules::with_min_interval_s(60);
        assert_eq!(code(every_minute, "* * * * *", "UTC"), None);
        assert_eq!(code(every_minute, "0,1 3 * * *", "Europe/Paris"), None);
        let five = ScheduleRules::with_min_interval_s(300);
        assert_eq!(code(five, "*/5 * * * *", "UTC"), None);
        assert_eq!(code(five, "* * * * *", "UTC"), Some("cron_too_frequent"));
        assert_eq!(code(five, "0,1 3 * * *", "America/New_York"), Some("cron_too_frequent"));
        // Across midnight: 23:59 then 00:00.
        assert_eq!(code(five, "59 23 * * *", "UTC"), None);
        assert_eq!(code(five, "0,59 0,23 * * *", "UTC"), Some("cron_too_frequent"));
        let hourly = ScheduleRules::with_min_interval_s(3600);
        assert_eq!(code(hourly, "0 * * * *", "Europe/Paris"), None);
        let message = {
            let cron = CronExpr::parse("* * * * *").unwrap();
            five.check(&cron, &ScheduleTimezone::UTC, now()).unwrap_err().errors()[0].message.clone()
        };
        assert!(
            message.contains("USEREXPORT_SCHEDULE_MIN_INTERVAL_S") && message.contains("300s"),
            "{message}"
        );
    }

    proptest::proptest! {
        /// The structural check agrees with the calendar: an expression can fire exactly when
        /// some chosen month has a chosen day, and then croner finds a fire within five years.
        #[test]
        fn can_fire_matches_the_calendar(
            days in proptest::collection::vec(1_u32..=31, 1..4),
            months in proptest::collection::vec(1_u32..=12, 1..4),
        ) {
            let list = |v: &[u32]| v.iter().map(u32::to_string).collect::<Vec<_>>().join(",");
            let cron = CronExpr::parse(&format!("0 0 {} {} *", list(&days), list(&months))).unwrap();
            let month_len = |m: u32| match m { 2 => 29, 4 | 6 | 9 | 11 => 30, _ => 31 };
            let exists = months.iter().any(|&m| days.iter().any(|&d| d <= month_len(m)));
            proptest::prop_assert_eq!(cron.can_fire(), exists);
            if exists {
                proptest::prop_assert_eq!(ScheduleRules::default().check(&cron, &ScheduleTimezone::UTC, now()), Ok(()));
            }
        }
    }

    #[test]
    fn upcoming_lists_the_next_fires_in_the_time_zone() {
        let cron = CronExpr::parse("0 3 * * MON-FRI").unwrap();
        let paris = ScheduleTimezone::parse("Europe/Paris").unwrap();
        // 2026-03-01 is a Sunday; Paris is UTC+1 until 29 March.
        let fires = ScheduleRules::default().upcoming(&cron, &paris, now(), 3).unwrap();
        let expected = ["2026-03-02T02:00:00Z", "2026-03-03T02:00:00Z", "2026-03-04T02:00:00Z"];
        assert_eq!(fires, expected.map(|t| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc)));
        let never = CronExpr::parse("0 0 31 2 *").unwrap();
        let errors = ScheduleRules::default().upcoming(&never, &paris, now(), 3).unwrap_err();
        assert_eq!(errors.errors()[0].code, "cron_never_fires");
    }

    #[test]
    fn a_seconds_field_is_refused() {
        assert!(CronExpr::parse("* * * * * *").is_err());
    }
}
