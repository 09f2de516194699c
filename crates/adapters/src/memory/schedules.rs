use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use domain::{ExportSchedule, ScheduleId, Scope};
use ports::{
    PortError, ScheduleCreateOutcome, SchedulePage, ScheduleQuery, ScheduleQuotaOutcome, ScheduleRepository,
    ScheduleUpdateOutcome,
};

/// Schedule records held in memory. One mutex makes every operation atomic, as the
/// compare-and-set contract needs; a `BTreeMap` keeps them in list order.
#[derive(Debug, Clone, Default)]
pub struct MemoryScheduleRepository {
    records: Arc<Mutex<BTreeMap<(Scope, ScheduleId), ExportSchedule>>>,
}

impl MemoryScheduleRepository {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<(Scope, ScheduleId), ExportSchedule>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ScheduleRepository for MemoryScheduleRepository {
    async fn create_if_absent(&self, schedule: &ExportSchedule) -> Result<ScheduleCreateOutcome, PortError> {
        let mut records = self.lock();
        let key = (schedule.scope.clone(), schedule.id);
        if let Some(existing) = records.get(&key) {
            return Ok(ScheduleCreateOutcome::Existing(Box::new(existing.clone())));
        }
        records.insert(key, schedule.clone());
        Ok(ScheduleCreateOutcome::Created)
    }

    async fn create_within_quota(
        &self,
        schedule: &ExportSchedule,
        max_schedules: u32,
    ) -> Result<ScheduleQuotaOutcome, PortError> {
        let mut records = self.lock();
        let key = (schedule.scope.clone(), schedule.id);
        if let Some(existing) = records.get(&key) {
            return Ok(ScheduleQuotaOutcome::Existing(Box::new(existing.clone())));
        }
        let count = records.keys().filter(|(scope, _)| *scope == schedule.scope).count() as u64;
        if count >= u64::from(max_schedules) {
            return Ok(ScheduleQuotaOutcome::QuotaExceeded { count });
        }
        records.insert(key, schedule.clone());
        Ok(ScheduleQuotaOutcome::Created)
    }

    async fn get(&self, scope: &Scope, id: ScheduleId) -> Result<Option<ExportSchedule>, PortError> {
        Ok(self.lock().get(&(scope.clone(), id)).cloned())
    }

    async fn list(&self, scope: &Scope, query: &ScheduleQuery) -> Result<SchedulePage, PortError> {
        let limit = query.limit.clamp(1, 100);
        let records = self.lock();
        let mut items: Vec<ExportSchedule> = records
            .values()
            .filter(|s| &s.scope == scope && query.after.is_none_or(|after| s.id > after))
            .take(limit + 1)
            .cloned()
            .collect();
        let more = items.len() > limit;
        items.truncate(limit);
        let next = if more { items.last().map(|s| s.id) } else { None };
        Ok(SchedulePage { items, next })
    }

    async fn list_all(&self) -> Result<Vec<ExportSchedule>, PortError> {
        Ok(self.lock().values().cloned().collect())
    }

    async fn update_if_revision(
        &self,
        schedule: &ExportSchedule,
        expected: u64,
    ) -> Result<ScheduleUpdateOutcome, PortError> {
        let mut records = self.lock();
        let Some(stored) = records.get_mut(&(schedule.scope.clone(), schedule.id)) else {
            return Ok(ScheduleUpdateOutcome::NotFound);
        };
        if stored.revision != expected {
            return Ok(ScheduleUpdateOutcome::Conflict(Box::new(stored.clone())));
        }
        *stored = schedule.clone();
        Ok(ScheduleUpdateOutcome::Updated)
    }

    async fn delete(&self, scope: &Scope, id: ScheduleId) -> Result<bool, PortError> {
        Ok(self.lock().remove(&(scope.clone(), id)).is_some())
    }

    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}
