//! Limits on export schedules (`USEREXPORT_SCHEDULE_MIN_INTERVAL_S`), applied where schedules
//! are created and changed.

use clap::Args;
use domain::ScheduleRules;
use domain::schedule_rules::DEFAULT_MIN_INTERVAL_S;

/// What a schedule may ask for.
#[derive(Debug, Clone, Args)]
pub struct ScheduleArgs {
    /// Shortest time between two fires of one schedule, in seconds, judged on its upcoming fires
    /// in its time zone; a cron that fires more often is refused with `422` on `cron`. The
    /// default keeps every-minute schedules possible; 0 allows any.
    #[arg(long, env = "USEREXPORT_SCHEDULE_MIN_INTERVAL_S", default_value_t = DEFAULT_MIN_INTERVAL_S)]
    pub schedule_min_interval_s: u64,
}

impl Default for ScheduleArgs {
    fn default() -> Self {
        Self { schedule_min_interval_s: DEFAULT_MIN_INTERVAL_S }
    }
}

impl ScheduleArgs {
    pub fn rules(&self) -> ScheduleRules {
        ScheduleRules::with_min_interval_s(self.schedule_min_interval_s)
    }
}
