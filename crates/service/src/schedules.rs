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
    Export, ExportId, ExportSchedule, ExportStatus, IdempotencyKey, NewSchedule, ScheduleId, SchedulePatch,
    Scope,
};
use ports::{
    CreateOutcome, ExportRepository, Orchestrator, PortError, Presence, ScheduleCreateOutcome, SchedulePage,
    ScheduleQuery, ScheduleRepository, ScheduleUpdateOutcome, Scheduler,
};
use tracing::{info, warn};
use uuid::Uuid;

#[derive(Debug, thiserror::Error)]
pub enum CreateScheduleError {
    /// The idempotency key was used before with a different schedule.
    #[error("idempotency key {key:?} was already used for a different schedule ({existing})")]
    IdempotencyMismatch { key: String, existing: ScheduleId },
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
}

impl std::fmt::Debug for ScheduledExports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ScheduledExports").finish_non_exhaustive()
    }
}

impl ScheduledExports {
    pub fn new(exports: Arc<dyn ExportRepository>, orchestrator: Arc<dyn Orchestrator>) -> Self {
        Self { exports, orchestrator }
    }

    /// The fire of `schedule` at `scheduled_at`: stores its export `pending` unless it exists
    /// (so a duplicated fire finds the first one) and, when `start` is set, makes sure it runs.
    pub async fn fire(
        &self,
        schedule: &ExportSchedule,
        scheduled_at: DateTime<Utc>,
        start: bool,
    ) -> Result<Export, FireError> {
        let id = ExportId::for_schedule_fire(&schedule.scope, schedule.id, scheduled_at);
        let export = Export::new(id, schedule.scope.clone(), schedule.spec.clone(), None, Utc::now());
        let export = match self.exports.create_if_absent(&export).await? {
            CreateOutcome::Created => {
                info!(export_id = %id, schedule_id = %schedule.id, tenant = %schedule.scope.tenant,
                      environment = %schedule.scope.environment, %scheduled_at, "scheduled export accepted");
                export
            }
            CreateOutcome::Existing(existing) => {
                if existing.request_fingerprint != export.request_fingerprint {
                    return Err(FireError::Mismatch(id));
                }
                *existing
            }
        };
        // Starting is idempotent; a duplicate fire of an unfinished export joins it.
        if start && export.status() == ExportStatus::Pending {
            self.orchestrator.start(&export).await?;
        }
        Ok(export)
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
        Self { schedules, scheduler, fires }
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
        let schedule = ExportSchedule::new(id, scope.clone(), new, Utc::now());
        match self.schedules.create_if_absent(&schedule).await? {
            ScheduleCreateOutcome::Created => {}
            ScheduleCreateOutcome::Existing(existing) => {
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
            let next = current.patched(patch.clone(), Utc::now());
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
