//! Export schedules (seed pattern 3): the use cases behind `/v1/export-schedules`, and what one
//! fire of a schedule does ([`ScheduledExports`]).
//!
//! The record is the source of truth and the scheduler follows it: a schedule is stored before
//! its timer is created (and removed again if that fails), its timer is deleted after its record,
//! and [`ScheduleService::reconcile`] at start-up recreates every timer from the records and
//! removes timers without one. So a schedule and its record never outlive each other for long.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::{DateTime, SubsecRound, Utc};
use domain::{
    CronPreview, Export, ExportFailure, ExportId, ExportOrigin, ExportSchedule, ExportStatus, FailureKind,
    IdempotencyKey, NewSchedule, Quota, QuotaBook, ScheduleId, SchedulePatch, ScheduleRules, Scope,
    TenantDirectory, ValidationErrors,
};
use ports::{
    CreateOutcome, ExportRepository, Orchestrator, PortError, Presence, QuotaCreateOutcome, SchedulePage,
    ScheduleQuery, ScheduleQuotaOutcome, ScheduleRepository, ScheduleUpdateOutcome, Scheduler,
};
use tracing::{info, warn};
use uuid::Uuid;

use crate::meters;

#[derive(Debug, thiserror::Error)]
pub enum CreateScheduleError {
    /// The schedule breaks the service's rules (`cron` never fires or fires too often, a
    /// `notify_email` outside the tenant's domains).
    #[error(transparent)]
    Invalid(ValidationErrors),
    /// The idempotency key was used before with a different schedule.
    #[error("idempotency key {key:?} was already used for a different schedule ({existing})")]
    IdempotencyMismatch { key: String, existing: ScheduleId },
    /// The tenant scope already keeps as many schedules as its `max_schedules` quota allows.
    #[error("the tenant already has {limit} schedules ({quota})")]
    QuotaExceeded { quota: Quota, limit: u32 },
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum GetScheduleError {
    #[error("schedule not found")]
    NotFound,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum ListSchedulesError {
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum UpdateScheduleError {
    #[error("schedule not found")]
    NotFound,
    /// The changed schedule would break the service's rules (as for create).
    #[error(transparent)]
    Invalid(ValidationErrors),
    /// Another update changed the schedule meanwhile (after a few retries).
    #[error("the schedule was changed concurrently; retry")]
    Conflict,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum DeleteScheduleError {
    #[error("schedule not found")]
    NotFound,
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum TriggerScheduleError {
    #[error("schedule not found")]
    NotFound,
    /// The overlap rule (skip): the previous fire's export is still pending or running.
    #[error("the schedule's previous fire (export {running}) is still unfinished")]
    Overlap { running: ExportId },
    #[error(transparent)]
    Port(#[from] PortError),
    #[error(transparent)]
    Unknown(#[from] anyhow::Error),
}

#[derive(Debug, thiserror::Error)]
pub enum FireError {
    /// The fire's export exists with a different request (its ID was reused): nothing started.
    #[error("export {0} of this fire already exists with a different request")]
    Mismatch(ExportId),
    #[error(transparent)]
    Port(#[from] PortError),
}

/// A created schedule and whether this call created it.
#[derive(Debug, Clone)]
pub struct CreatedSchedule {
    pub schedule: ExportSchedule,
    /// False when an idempotency key matched an earlier create.
    pub created: bool,
}

/// What [`ScheduleService::reconcile`] did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reconciled {
    /// Timers created or refreshed from records.
    pub upserted: usize,
    /// Timers removed because their record is gone.
    pub removed: usize,
}

/// What one fire of a schedule does, whoever fires it: request the export whose ID is derived
/// from the schedule and the scheduled time. Used by the in-process scheduler for every fire and
/// by the service for Temporal triggers (where the worker may not have created the record yet).
pub struct ScheduledExports {
    exports: Arc<dyn ExportRepository>,
    orchestrator: Arc<dyn Orchestrator>,
    quotas: Arc<QuotaBook>,
}

impl std::fmt::Debug for ScheduledExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduledExports").finish_non_exhaustive()
    }
}

impl ScheduledExports {
    pub fn new(exports: Arc<dyn ExportRepository>, orchestrator: Arc<dyn Orchestrator>) -> Self {
        Self { exports, orchestrator, quotas: Arc::default() }
    }

    /// Fires count against each scope's `max_unfinished` quota (default 100).
    #[must_use]
    pub fn with_quotas(mut self, quotas: Arc<QuotaBook>) -> Self {
        self.quotas = quotas;
        self
    }

    /// The fire of `schedule` at `scheduled_at`: stores its export `pending` unless it exists
    /// (so a duplicated fire finds the first one) and, when `start` is set, makes sure it runs.
    /// A fire over the scope's `max_unfinished` quota is not dropped: its export is recorded
    /// `failed` with the kind `quota_exceeded` (and notified as failures are).
    pub async fn fire(
        &self,
        schedule: &ExportSchedule,
        scheduled_at: DateTime<Utc>,
        start: bool,
    ) -> Result<Export, FireError> {
        let id = ExportId::for_schedule_fire(&schedule.scope, schedule.id, scheduled_at);
        let export = Export::new(id, schedule.scope.clone(), schedule.spec.clone(), None, Utc::now());
        let limit = self.quotas.for_scope(&schedule.scope).max_unfinished;
        let export = match self.exports.create_within_quota(&export, limit).await? {
            QuotaCreateOutcome::Created => {
                info!(export_id = %id, schedule_id = %schedule.id, tenant = %schedule.scope.tenant,
                      environment = %schedule.scope.environment, %scheduled_at, "scheduled export accepted");
                metrics::counter!(meters::SCHEDULE_FIRES, "outcome" => "started").increment(1);
                export
            }
            QuotaCreateOutcome::QuotaExceeded { unfinished } => {
                warn!(export_id = %id, schedule_id = %schedule.id, tenant = %schedule.scope.tenant,
                      environment = %schedule.scope.environment, unfinished, limit,
                      "scheduled export refused by the max_unfinished quota; recorded as failed");
                metrics::counter!(meters::SCHEDULE_FIRES, "outcome" => "refused_quota").increment(1);
                return self.record_refused(export, limit).await;
            }
            QuotaCreateOutcome::Existing(existing) => {
                if existing.request_fingerprint != export.request_fingerprint {
                    return Err(FireError::Mismatch(id));
                }
                *existing
            }
        };
        // Starting is idempotent; a duplicate fire of an unfinished export joins it.
        if start && export.status() == ExportStatus::Pending {
            self.orchestrator.start_from(&export, ExportOrigin::Schedule).await?;
        }
        Ok(export)
    }

    /// Stores a fire refused by the quota as a `failed` export, so the tenant sees it.
    async fn record_refused(&self, mut export: Export, limit: u32) -> Result<Export, FireError> {
        let message =
            format!("not run: the tenant already had {limit} unfinished exports (quota max_unfinished)");
        export
            .fail(ExportFailure::new(FailureKind::QuotaExceeded, message), Utc::now())
            .map_err(|e| PortError::Other(anyhow::anyhow!("recording a refused fire: {e}")))?;
        match self.exports.create_if_absent(&export).await? {
            CreateOutcome::Created => Ok(export),
            CreateOutcome::Existing(existing) => Ok(*existing),
        }
    }

    /// Whether the export `id` of `scope` exists and has not finished (overlap policy skip).
    pub async fn is_unfinished(&self, scope: &Scope, id: ExportId) -> Result<bool, PortError> {
        Ok(self.exports.get(scope, id).await?.is_some_and(|e| !e.status().is_terminal()))
    }
}

/// The schedule use cases behind the API.
pub struct ScheduleService {
    schedules: Arc<dyn ScheduleRepository>,
    scheduler: Arc<dyn Scheduler>,
    fires: Arc<ScheduledExports>,
    rules: ScheduleRules,
    tenants: Arc<TenantDirectory>,
    quotas: Arc<QuotaBook>,
}

impl std::fmt::Debug for ScheduleService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduleService").finish_non_exhaustive()
    }
}

/// Attempts of an update's read-modify-write before answering `Conflict`.
const UPDATE_ATTEMPTS: usize = 3;

impl ScheduleService {
    pub fn new(
        schedules: Arc<dyn ScheduleRepository>,
        scheduler: Arc<dyn Scheduler>,
        fires: Arc<ScheduledExports>,
    ) -> Self {
        Self {
            schedules,
            scheduler,
            fires,
            rules: ScheduleRules::default(),
            tenants: Arc::default(),
            quotas: Arc::default(),
        }
    }

    /// The limits every created or changed schedule must keep (minimum interval).
    #[must_use]
    pub fn with_rules(mut self, rules: ScheduleRules) -> Self {
        self.rules = rules;
        self
    }

    /// Applies the tenants' request rules to each schedule's request (`notify_domains`).
    #[must_use]
    pub fn with_tenants(mut self, tenants: Arc<TenantDirectory>) -> Self {
        self.tenants = tenants;
        self
    }

    /// Limits each tenant scope's schedules to its `max_schedules` (default 20).
    #[must_use]
    pub fn with_quotas(mut self, quotas: Arc<QuotaBook>) -> Self {
        self.quotas = quotas;
        self
    }

    /// The next fires a schedule with this timing would have from `now` on, or the errors its
    /// create would get for its `cron` and `timezone` (the rules judged at create and `PATCH`).
    pub fn preview(
        &self,
        preview: &CronPreview,
        now: DateTime<Utc>,
    ) -> Result<Vec<DateTime<Utc>>, ValidationErrors> {
        self.rules.upcoming(&preview.cron, &preview.timezone, now, preview.count)
    }

    /// The rules a schedule must keep from `now` on, every error on its field.
    fn check(&self, schedule: &ExportSchedule, now: DateTime<Utc>) -> Result<(), ValidationErrors> {
        let mut errors = ValidationErrors::new();
        errors.absorb(self.rules.check(&schedule.cron, &schedule.timezone, now));
        if let Err(invalid) = self.tenants.check_notify_email(&schedule.scope, &schedule.spec) {
            errors.extend_nested("request", invalid);
        }
        errors.into_result(())
    }

    /// Stores the schedule, then creates its timer; if the timer cannot be created the record
    /// is removed again and the error returned, so neither exists without the other. With an
    /// idempotency key, a repeat of the same create returns the existing schedule.
    pub async fn create(
        &self,
        scope: &Scope,
        new: NewSchedule,
        idempotency_key: Option<IdempotencyKey>,
    ) -> Result<CreatedSchedule, CreateScheduleError> {
        let id = match &idempotency_key {
            Some(key) => ScheduleId::for_idempotency_key(scope, key),
            None => ScheduleId::from_uuid(Uuid::now_v7()),
        };
        let now = Utc::now();
        let schedule = ExportSchedule::new(id, scope.clone(), new, now);
        self.check(&schedule, now).map_err(CreateScheduleError::Invalid)?;
        let limit = self.quotas.for_scope(scope).max_schedules;
        match self.schedules.create_within_quota(&schedule, limit).await? {
            ScheduleQuotaOutcome::Created => {}
            ScheduleQuotaOutcome::QuotaExceeded { count } => {
                info!(tenant = %scope.tenant, environment = %scope.environment, count, limit,
                      "schedule refused: max_schedules quota reached");
                return Err(CreateScheduleError::QuotaExceeded { quota: Quota::MaxSchedules, limit });
            }
            ScheduleQuotaOutcome::Existing(existing) => {
                let same = existing.cron == schedule.cron
                    && existing.timezone == schedule.timezone
                    && existing.spec == schedule.spec
                    && existing.note == schedule.note;
                if !same {
                    let key = idempotency_key.map(String::from).unwrap_or_default();
                    return Err(CreateScheduleError::IdempotencyMismatch { key, existing: existing.id });
                }
                // The first create may have died between record and timer: upserting is
                // idempotent, so make sure the timer exists.
                self.scheduler.upsert(&existing).await?;
                return Ok(CreatedSchedule { schedule: *existing, created: false });
            }
        }
        if let Err(err) = self.scheduler.upsert(&schedule).await {
            warn!(schedule_id = %id, error = %err, "creating the schedule's timer failed; removing its record");
            if let Err(cleanup) = self.schedules.delete(scope, id).await {
                // Reconcile at the next start creates the timer for the orphaned record.
                warn!(schedule_id = %id, error = %cleanup, "removing the record failed too");
            }
            return Err(err.into());
        }
        info!(schedule_id = %id, tenant = %scope.tenant, environment = %scope.environment,
              cron = %schedule.cron, timezone = %schedule.timezone, "schedule created");
        Ok(CreatedSchedule { schedule, created: true })
    }

    pub async fn get(&self, scope: &Scope, id: ScheduleId) -> Result<ExportSchedule, GetScheduleError> {
        self.schedules.get(scope, id).await?.ok_or(GetScheduleError::NotFound)
    }

    pub async fn list(
        &self,
        scope: &Scope,
        query: &ScheduleQuery,
    ) -> Result<SchedulePage, ListSchedulesError> {
        Ok(self.schedules.list(scope, query).await?)
    }

    /// Applies `patch` to the record (compare-and-set on its revision), then to the timer. If
    /// the timer cannot follow, the error is returned and the record keeps the change; the
    /// next update or start-up reconcile brings the timer in line.
    pub async fn update(
        &self,
        scope: &Scope,
        id: ScheduleId,
        patch: SchedulePatch,
    ) -> Result<ExportSchedule, UpdateScheduleError> {
        for _ in 0..UPDATE_ATTEMPTS {
            let current = self.schedules.get(scope, id).await?.ok_or(UpdateScheduleError::NotFound)?;
            let now = Utc::now();
            let next = current.patched(patch.clone(), now);
            // Only what the patch changes is judged: a stored schedule admitted under older
            // rules can still be paused, resumed or renamed.
            if patch.cron.is_some() || patch.timezone.is_some() || patch.spec.is_some() {
                self.check(&next, now).map_err(UpdateScheduleError::Invalid)?;
            }
            match self.schedules.update_if_revision(&next, current.revision).await? {
                ScheduleUpdateOutcome::Updated => {}
                ScheduleUpdateOutcome::NotFound => return Err(UpdateScheduleError::NotFound),
                ScheduleUpdateOutcome::Conflict(_) => continue,
            }
            let only_pause = !patch.changes_timer_or_request();
            let presence = match patch.paused {
                Some(paused) if only_pause => self.scheduler.set_paused(scope, id, paused).await?,
                _ => Presence::Missing,
            };
            if presence == Presence::Missing {
                self.scheduler.upsert(&next).await?;
            }
            info!(schedule_id = %id, paused = next.paused, cron = %next.cron, revision = next.revision,
                  "schedule updated");
            return Ok(next);
        }
        Err(UpdateScheduleError::Conflict)
    }

    /// Deletes the record, then the timer (fires already running go on). A timer left behind
    /// by a failure here is removed by the next start-up reconcile.
    pub async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<(), DeleteScheduleError> {
        if !self.schedules.delete(scope, id).await? {
            return Err(DeleteScheduleError::NotFound);
        }
        self.scheduler.delete(scope, id).await?;
        info!(schedule_id = %id, tenant = %scope.tenant, environment = %scope.environment, "schedule deleted");
        Ok(())
    }

    /// Fires the schedule now and returns the export of that fire, unless the previous fire is
    /// unfinished: a trigger honours the schedule's overlap rule (skip) like its timer does, in
    /// both modes. The scheduler names the running fire (Temporal: its running workflow); its
    /// export record decides, so both modes answer alike. A trigger racing a fire that starts
    /// at the same moment may still overlap it once; a loop of triggers cannot.
    pub async fn trigger(&self, scope: &Scope, id: ScheduleId) -> Result<Export, TriggerScheduleError> {
        let schedule = self.schedules.get(scope, id).await?.ok_or(TriggerScheduleError::NotFound)?;
        // Whole seconds, as Temporal names a fire: two triggers within a second are one fire.
        let scheduled_at = Utc::now().trunc_subsecs(0);
        let this_fire = ExportId::for_schedule_fire(scope, id, scheduled_at);
        // A repeat of this very fire is not an overlap: it finds the same export.
        if let Some(running) = self.scheduler.running_fire(scope, id).await?
            && running != this_fire
            && self.fires.is_unfinished(scope, running).await?
        {
            info!(schedule_id = %id, %running, "trigger refused: the previous fire is unfinished");
            metrics::counter!(meters::SCHEDULE_SKIPS, "reason" => "overlap").increment(1);
            return Err(TriggerScheduleError::Overlap { running });
        }
        if self.scheduler.trigger(&schedule, scheduled_at).await? == Presence::Missing {
            self.scheduler.upsert(&schedule).await?;
            if self.scheduler.trigger(&schedule, scheduled_at).await? == Presence::Missing {
                return Err(
                    anyhow::anyhow!("the scheduler lost schedule {id} right after creating it").into()
                );
            }
        }
        // The scheduler started the fire (in-process: already recorded; Temporal: the worker
        // records it when it picks the run up). Recording it here too is idempotent and lets
        // the caller see the export at once; the running fire does the starting.
        match self.fires.fire(&schedule, scheduled_at, false).await {
            Ok(export) => Ok(export),
            Err(FireError::Port(err)) => Err(err.into()),
            Err(err @ FireError::Mismatch(_)) => Err(anyhow::Error::from(err).into()),
        }
    }

    /// Brings the scheduler in line with the records: every record's timer is upserted, and
    /// timers without a record are deleted. Run at start-up.
    pub async fn reconcile(&self) -> Result<Reconciled, PortError> {
        let records = self.schedules.list_all().await?;
        let known: HashSet<(Scope, ScheduleId)> = records.iter().map(|s| (s.scope.clone(), s.id)).collect();
        let mut done = Reconciled::default();
        for schedule in &records {
            self.scheduler.upsert(schedule).await?;
            done.upserted += 1;
        }
        for (scope, id) in self.scheduler.list().await? {
            if !known.contains(&(scope.clone(), id)) {
                info!(schedule_id = %id, tenant = %scope.tenant, "removing a timer without a schedule record");
                self.scheduler.delete(&scope, id).await?;
                done.removed += 1;
            }
        }
        Ok(done)
    }
}
