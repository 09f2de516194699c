use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Export, ExportId, ExportStatus, ListCursor, Scope};
use ports::{
    CreateOutcome, ExportPage, ExportQuery, ExportRepository, PortError, QuotaCreateOutcome, UpdateOutcome,
};

/// Export records held in memory. One mutex makes every operation atomic, which is what the
/// compare-and-set contract needs.
#[derive(Debug, Clone, Default)]
pub struct MemoryExportRepository {
    records: Arc<Mutex<HashMap<(Scope, ExportId), Export>>>,
}

impl MemoryExportRepository {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(Scope, ExportId), Export>> {
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl ExportRepository for MemoryExportRepository {
    async fn create_if_absent(&self, export: &Export) -> Result<CreateOutcome, PortError> {
        let mut records = self.lock();
        let key = (export.scope.clone(), export.id);
        if let Some(existing) = records.get(&key) {
            return Ok(CreateOutcome::Existing(Box::new(existing.clone())));
        }
        records.insert(key, export.clone());
        Ok(CreateOutcome::Created)
    }

    async fn create_within_quota(
        &self,
        export: &Export,
        max_unfinished: u32,
    ) -> Result<QuotaCreateOutcome, PortError> {
        // Under the one lock, so the count cannot change before the insert.
        let mut records = self.lock();
        let key = (export.scope.clone(), export.id);
        if let Some(existing) = records.get(&key) {
            return Ok(QuotaCreateOutcome::Existing(Box::new(existing.clone())));
        }
        let unfinished =
            records.values().filter(|e| e.scope == export.scope && !e.status().is_terminal()).count() as u64;
        if !export.status().is_terminal() && unfinished >= u64::from(max_unfinished) {
            return Ok(QuotaCreateOutcome::QuotaExceeded { unfinished });
        }
        records.insert(key, export.clone());
        Ok(QuotaCreateOutcome::Created)
    }

    async fn admit_waiting(
        &self,
        scope: &Scope,
        max_started: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Export>, PortError> {
        let mut records = self.lock();
        let in_scope = || records.values().filter(|e| &e.scope == scope);
        let started = in_scope().filter(|e| !e.status().is_terminal() && e.admitted_at().is_some()).count();
        let room = (max_started as usize).saturating_sub(started);
        let mut waiting: Vec<ExportId> = in_scope().filter(|e| e.awaits_admission()).map(|e| e.id).collect();
        waiting.sort_by_key(|id| {
            let e = &records[&(scope.clone(), *id)];
            (e.created_at, e.id)
        });
        let mut admitted = Vec::new();
        for id in waiting.into_iter().take(room) {
            if let Some(export) = records.get_mut(&(scope.clone(), id)) {
                export.mark_admitted(now);
                admitted.push(export.clone());
            }
        }
        Ok(admitted)
    }

    async fn get(&self, scope: &Scope, id: ExportId) -> Result<Option<Export>, PortError> {
        Ok(self.lock().get(&(scope.clone(), id)).cloned())
    }

    async fn update_if_status(
        &self,
        export: &Export,
        expected: ExportStatus,
    ) -> Result<UpdateOutcome, PortError> {
        let mut records = self.lock();
        let Some(stored) = records.get_mut(&(export.scope.clone(), export.id)) else {
            return Ok(UpdateOutcome::NotFound);
        };
        if stored.status() != expected || stored.attempt() > export.attempt() {
            return Ok(UpdateOutcome::Conflict(Box::new(stored.clone())));
        }
        let admitted_at = stored.admitted_at();
        *stored = export.clone();
        // Only `admit_waiting` sets it; a record read before its admission never clears it.
        if let Some(admitted_at) = admitted_at {
            stored.mark_admitted(admitted_at);
        }
        Ok(UpdateOutcome::Updated)
    }

    async fn list(&self, scope: &Scope, query: &ExportQuery) -> Result<ExportPage, PortError> {
        let limit = query.limit.clamp(1, 100);
        let records = self.lock();
        let mut items: Vec<&Export> = records
            .values()
            .filter(|e| &e.scope == scope)
            .filter(|e| query.status.is_none_or(|s| e.status() == s))
            .filter(|e| query.after.is_none_or(|c| c.precedes(e.created_at, e.id)))
            .collect();
        items.sort_by_key(|e| std::cmp::Reverse((e.created_at, e.id)));
        let more = items.len() > limit;
        let items: Vec<Export> = items.into_iter().take(limit).cloned().collect();
        let next =
            if more { items.last().map(|e| ListCursor { created_at: e.created_at, id: e.id }) } else { None };
        Ok(ExportPage { items, next })
    }

    async fn list_unfinished(&self) -> Result<Vec<Export>, PortError> {
        let mut items: Vec<Export> =
            self.lock().values().filter(|e| !e.status().is_terminal()).cloned().collect();
        items.sort_by_key(|e| (e.created_at, e.id));
        Ok(items)
    }

    async fn list_notify_due(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError> {
        let mut items: Vec<Export> =
            self.lock().values().filter(|e| e.notify_due() && e.updated_at() <= before).cloned().collect();
        items.sort_by(|a, b| (a.updated_at(), &a.scope, a.id).cmp(&(b.updated_at(), &b.scope, b.id)));
        items.truncate(limit);
        Ok(items)
    }

    async fn list_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError> {
        let mut items: Vec<Export> =
            self.lock().values().filter(|e| e.is_deletion_due(now)).cloned().collect();
        items.sort_by(|a, b| {
            (a.deletion_due_at(), &a.scope, a.id).cmp(&(b.deletion_due_at(), &b.scope, b.id))
        });
        items.truncate(limit);
        Ok(items)
    }

    async fn ping(&self) -> Result<(), PortError> {
        Ok(())
    }
}
