use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{ExportId, ExportSchedule, ScheduleId, Scope};

use crate::PortError;

/// Result of [`ScheduleRepository::create_if_absent`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleCreateOutcome {
    Created,
    /// A schedule with that ID already exists in the scope; here it is, unchanged.
    Existing(Box<ExportSchedule>),
}

/// Result of [`ScheduleRepository::create_within_quota`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleQuotaOutcome {
    Created,
    /// A schedule with that ID already exists in the scope; here it is, unchanged.
    Existing(Box<ExportSchedule>),
    /// Nothing was stored: the scope already has `count` (at least the limit) schedules.
    QuotaExceeded {
        count: u64,
    },
}

/// Result of [`ScheduleRepository::update_if_revision`].
#[derive(Debug, Clone, PartialEq)]
pub enum ScheduleUpdateOutcome {
    Updated,
    NotFound,
    /// The stored schedule is not at the expected revision; nothing was written.
    Conflict(Box<ExportSchedule>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ScheduleQuery {
    /// 1..=100; adapters clamp.
    pub limit: usize,
    /// Only schedules with a greater ID (the previous page's `next`).
    pub after: Option<ScheduleId>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct SchedulePage {
    /// Ascending by ID (UUIDv7, so oldest first for generated IDs).
    pub items: Vec<ExportSchedule>,
    /// Present when more items may follow: pass it as `after`.
    pub next: Option<ScheduleId>,
}

/// Export schedule records: the source of truth for what should be scheduled. The scheduler's
/// timers are rebuilt or reconciled from them.
#[async_trait]
pub trait ScheduleRepository: Send + Sync {
    /// Stores `schedule` unless one with the same scope and ID exists.
    ///
    /// Returns `Created`, or `Existing(stored)` with the stored record untouched. Concurrent
    /// calls with the same ID create exactly one record.
    async fn create_if_absent(&self, schedule: &ExportSchedule) -> Result<ScheduleCreateOutcome, PortError>;

    /// As [`ScheduleRepository::create_if_absent`], but stores `schedule` only while its scope
    /// has fewer than `max_schedules` schedules; the count and the insert are one atomic step
    /// where the records are. An existing schedule with the same ID is returned as `Existing`
    /// even when the scope is at its limit.
    async fn create_within_quota(
        &self,
        schedule: &ExportSchedule,
        max_schedules: u32,
    ) -> Result<ScheduleQuotaOutcome, PortError>;

    /// The schedule `id` of `scope`; `None` when missing or when it belongs to another scope.
    async fn get(&self, scope: &Scope, id: ScheduleId) -> Result<Option<ExportSchedule>, PortError>;

    /// `scope`'s schedules in ascending ID order, after `query.after`.
    async fn list(&self, scope: &Scope, query: &ScheduleQuery) -> Result<SchedulePage, PortError>;

    /// Every schedule of every scope (for reconciling the scheduler at start-up).
    async fn list_all(&self) -> Result<Vec<ExportSchedule>, PortError>;

    /// Replaces the stored record with `schedule` only if the stored revision is `expected`
    /// (a compare-and-set, so two concurrent updates cannot both win).
    ///
    /// Returns `NotFound` when absent and `Conflict(stored)` when the revision differs.
    async fn update_if_revision(
        &self,
        schedule: &ExportSchedule,
        expected: u64,
    ) -> Result<ScheduleUpdateOutcome, PortError>;

    /// Deletes the schedule; `false` when there was none in that scope.
    async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<bool, PortError>;

    /// Checks that the store is reachable (for readiness).
    async fn ping(&self) -> Result<(), PortError>;
}

/// Where the scheduler knows a schedule from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Presence {
    Found,
    /// The scheduler has no timer for that schedule (the caller may `upsert` it).
    Missing,
}

/// The timers behind schedules: fires a schedule's export at each cron time in the schedule's
/// time zone, with overlap policy *skip* (no fire while the schedule's previous fire is still
/// running). Each fire is an ordinary export whose ID is derived from the schedule and the
/// scheduled time (`ExportId::for_schedule_fire`), so a retried or duplicated fire produces one
/// export.
///
/// Implementations: in-process (tokio timers) and Temporal Schedules.
#[async_trait]
pub trait Scheduler: Send + Sync {
    /// Creates the schedule's timer, or replaces its cron, time zone, request, note and paused
    /// state. Idempotent.
    ///
    /// # Errors
    /// `Unavailable` when the scheduler cannot be reached.
    async fn upsert(&self, schedule: &ExportSchedule) -> Result<(), PortError>;

    /// Pauses (no fires) or resumes the schedule's timer.
    async fn set_paused(&self, scope: &Scope, id: ScheduleId, paused: bool) -> Result<Presence, PortError>;

    /// Removes the schedule's timer; `Ok` when there was none. Fires already running go on.
    async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<(), PortError>;

    /// Fires the schedule now, as if scheduled at `scheduled_at` (whole seconds; it names the
    /// fire, so its export is `ExportId::for_schedule_fire(scope, id, scheduled_at)` and a second
    /// trigger for the same time is the same fire). Runs also when paused, and whatever is still
    /// running. `Missing` when the scheduler has no timer for the schedule.
    async fn trigger(
        &self,
        schedule: &ExportSchedule,
        scheduled_at: DateTime<Utc>,
    ) -> Result<Presence, PortError>;

    /// The export of the fire of this schedule that may still run, if any: what the overlap
    /// rule (skip) waits for; the caller checks the export's record. In-process: the last fire's
    /// export while unfinished; Temporal: a running workflow of the schedule, else its latest
    /// action's. `None` also when there is no timer.
    async fn running_fire(&self, scope: &Scope, id: ScheduleId) -> Result<Option<ExportId>, PortError>;

    /// The schedules the scheduler has timers for, in any scope.
    async fn list(&self) -> Result<Vec<(Scope, ScheduleId)>, PortError>;

    /// Checks that the scheduler is reachable (for readiness).
    async fn ping(&self) -> Result<(), PortError>;
}
