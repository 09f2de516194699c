//! The embedded scheduler: one tokio timer per schedule, firing at the cron's times in the
//! schedule's time zone, with the semantics of the Temporal Schedules the distributed mode uses:
//! overlap policy skip, a trigger that runs now (paused or not, overlapping or not), and each
//! fire an ordinary export whose ID is derived from the schedule and the scheduled time.
//!
//! It keeps no state of its own: the API rebuilds it from the schedule records at start-up
//! (`ScheduleService::reconcile`). Fires missed while no process ran are not caught up.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Export, ExportId, ExportSchedule, ScheduleId, Scope};
use ports::{PortError, Presence, Scheduler};
use service::{FireError, ScheduledExports, meters};
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

type Key = (Scope, ScheduleId);

struct Entry {
    schedule: ExportSchedule,
    /// Stops this entry's timer task.
    timer: CancellationToken,
    /// The export of the last fire, for the overlap check.
    last_export: Option<ExportId>,
}

/// What [`InProcessScheduler::fire`] did.
#[derive(Debug, Clone, PartialEq)]
pub enum FireOutcome {
    /// The fire's export (created now, or found when the fire was a duplicate).
    Fired(Box<Export>),
    /// Overlap policy skip: the previous fire's export is still running.
    Skipped { running: ExportId },
    /// The schedule is paused.
    Paused,
    /// No such schedule (deleted meanwhile).
    Unknown,
}

struct Inner {
    fires: Arc<ScheduledExports>,
    entries: Mutex<HashMap<Key, Entry>>,
    /// Parent of every timer: cancelled at shutdown.
    stop: CancellationToken,
    closing: AtomicBool,
}

/// Tokio timers for schedules. Cheap to clone.
#[derive(Clone)]
pub struct InProcessScheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for InProcessScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessScheduler").finish_non_exhaustive()
    }
}

impl InProcessScheduler {
    pub fn new(fires: Arc<ScheduledExports>) -> Self {
        Self {
            inner: Arc::new(Inner {
                fires,
                entries: Mutex::default(),
                stop: CancellationToken::new(),
                closing: AtomicBool::new(false),
            }),
        }
    }

    /// Stops every timer; fires already started go on as ordinary exports.
    pub fn shutdown(&self) {
        self.inner.closing.store(true, Ordering::SeqCst);
        self.inner.stop.cancel();
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Key, Entry>> {
        self.inner.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One fire of the schedule at `scheduled_at`, as its timer does it: skipped while paused
    /// or while the previous fire's export is unfinished; otherwise the export derived from the
    /// schedule and `scheduled_at` is requested (a second fire for the same time finds it).
    /// Public so tests need not wait for the clock.
    ///
    /// # Errors
    /// When the export cannot be recorded or started.
    pub async fn fire(
        &self,
        scope: &Scope,
        id: ScheduleId,
        scheduled_at: DateTime<Utc>,
    ) -> Result<FireOutcome, PortError> {
        self.fire_with(scope, id, scheduled_at, false).await
    }

    /// `forced`: a trigger, which runs whatever the pause and overlap state.
    async fn fire_with(
        &self,
        scope: &Scope,
        id: ScheduleId,
        scheduled_at: DateTime<Utc>,
        forced: bool,
    ) -> Result<FireOutcome, PortError> {
        let key = (scope.clone(), id);
        let (schedule, last) = match self.lock().get(&key) {
            Some(entry) => (entry.schedule.clone(), entry.last_export),
            None => return Ok(FireOutcome::Unknown),
        };
        let this_export = ExportId::for_schedule_fire(scope, id, scheduled_at);
        if !forced {
            if schedule.paused {
                metrics::counter!(meters::SCHEDULE_SKIPS, "reason" => "paused").increment(1);
                return Ok(FireOutcome::Paused);
            }
            if let Some(previous) = last.filter(|p| *p != this_export)
                && self.inner.fires.is_unfinished(scope, previous).await?
            {
                info!(schedule_id = %id, running = %previous, %scheduled_at, "fire skipped: the previous one is still running");
                metrics::counter!(meters::SCHEDULE_SKIPS, "reason" => "overlap").increment(1);
                return Ok(FireOutcome::Skipped { running: previous });
            }
        }
        let export = match self.inner.fires.fire(&schedule, scheduled_at, true).await {
            Ok(export) => export,
            Err(FireError::Port(err)) => return Err(err),
            Err(err @ FireError::Mismatch(_)) => return Err(PortError::Other(err.into())),
        };
        if let Some(entry) = self.lock().get_mut(&key) {
            entry.last_export = Some(export.id);
        }
        Ok(FireOutcome::Fired(Box::new(export)))
    }

    /// The timer of one schedule: sleeps until each next fire time and fires, until replaced,
    /// deleted, paused or shut down.
    fn spawn_timer(&self, schedule: &ExportSchedule, timer: CancellationToken) {
        let this = self.clone();
        let schedule = schedule.clone();
        // A root span: the timer outlives the request that created it.
        let span = info_span!(parent: None, "schedule", schedule_id = %schedule.id, tenant = %schedule.scope.tenant,
                              environment = %schedule.scope.environment);
        tokio::spawn(
            async move {
                let mut after = Utc::now();
                while let Some(next) = schedule.next_fire_after(after) {
                    let wait = (next - Utc::now()).to_std().unwrap_or_default();
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = timer.cancelled() => return,
                    }
                    match this.fire(&schedule.scope, schedule.id, next).await {
                        Ok(FireOutcome::Fired(export)) => {
                            info!(export_id = %export.id, scheduled_at = %next, "schedule fired");
                        }
                        Ok(_) => {}
                        Err(err) => warn!(error = %err, scheduled_at = %next, "schedule fire failed"),
                    }
                    after = next;
                }
            }
            .instrument(span),
        );
    }
}

#[async_trait]
impl Scheduler for InProcessScheduler {
    async fn upsert(&self, schedule: &ExportSchedule) -> Result<(), PortError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(PortError::unavailable(anyhow::anyhow!("the scheduler is shutting down")));
        }
        let timer = self.inner.stop.child_token();
        let key = (schedule.scope.clone(), schedule.id);
        let previous = self.lock().insert(
            key.clone(),
            Entry { schedule: schedule.clone(), timer: timer.clone(), last_export: None },
        );
        if let Some(previous) = previous {
            previous.timer.cancel();
            if let Some(entry) = self.lock().get_mut(&key) {
                entry.last_export = previous.last_export;
            }
        }
        self.spawn_timer(schedule, timer);
        Ok(())
    }

    async fn set_paused(&self, scope: &Scope, id: ScheduleId, paused: bool) -> Result<Presence, PortError> {
        let schedule = match self.lock().get(&(scope.clone(), id)) {
            Some(entry) => ExportSchedule { paused, ..entry.schedule.clone() },
            None => return Ok(Presence::Missing),
        };
        self.upsert(&schedule).await?;
        Ok(Presence::Found)
    }

    async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<(), PortError> {
        if let Some(entry) = self.lock().remove(&(scope.clone(), id)) {
            entry.timer.cancel();
        }
        Ok(())
    }

    async fn trigger(
        &self,
        schedule: &ExportSchedule,
        scheduled_at: DateTime<Utc>,
    ) -> Result<Presence, PortError> {
        match self.fire_with(&schedule.scope, schedule.id, scheduled_at, true).await? {
            FireOutcome::Unknown => Ok(Presence::Missing),
            _ => Ok(Presence::Found),
        }
    }

    async fn running_fire(&self, scope: &Scope, id: ScheduleId) -> Result<Option<ExportId>, PortError> {
        let last = self.lock().get(&(scope.clone(), id)).and_then(|entry| entry.last_export);
        match last {
            Some(previous) if self.inner.fires.is_unfinished(scope, previous).await? => Ok(Some(previous)),
            _ => Ok(None),
        }
    }

    async fn list(&self) -> Result<Vec<(Scope, ScheduleId)>, PortError> {
        Ok(self.lock().keys().cloned().collect())
    }

    async fn ping(&self) -> Result<(), PortError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(PortError::unavailable(anyhow::anyhow!("the scheduler is shutting down")));
        }
        Ok(())
    }
}
