use async_trait::async_trait;
use chrono::{DateTime, Utc};
use domain::{Export, ExportId, ExportStatus, ListCursor, Scope};

use crate::PortError;

/// Result of [`ExportRepository::create_if_absent`].
#[derive(Debug, Clone, PartialEq)]
pub enum CreateOutcome {
    Created,
    /// An export with that ID already exists in the scope; here it is, unchanged.
    Existing(Box<Export>),
}

/// Result of [`ExportRepository::create_within_quota`].
#[derive(Debug, Clone, PartialEq)]
pub enum QuotaCreateOutcome {
    Created,
    /// An export with that ID already exists in the scope; here it is, unchanged (whatever the
    /// quota: a retried request finds its export).
    Existing(Box<Export>),
    /// Nothing was stored: the scope already holds `unfinished` (at least the limit) exports
    /// that are `pending` or `running`.
    QuotaExceeded {
        unfinished: u64,
    },
}

/// Result of [`ExportRepository::update_if_status`].
#[derive(Debug, Clone, PartialEq)]
pub enum UpdateOutcome {
    Updated,
    NotFound,
    /// The stored export was not in the expected status; nothing was written.
    Conflict(Box<Export>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportQuery {
    pub status: Option<ExportStatus>,
    /// 1..=100; adapters may clamp.
    pub limit: usize,
    pub after: Option<ListCursor>,
}

#[derive(Debug, Clone, PartialEq)]
pub struct ExportPage {
    pub items: Vec<Export>,
    /// Present when more items may follow.
    pub next: Option<ListCursor>,
}

/// Export records: the source of truth for an export's status, shared by API and workers.
#[cfg_attr(feature = "mocks", mockall::automock)]
#[async_trait]
pub trait ExportRepository: Send + Sync {
    /// Stores `export` unless one with the same scope and ID exists.
    ///
    /// Returns `Created`, or `Existing(stored)` (the stored record is left untouched, whatever
    /// `export` holds). Concurrent calls with the same ID create exactly one record.
    async fn create_if_absent(&self, export: &Export) -> Result<CreateOutcome, PortError>;

    /// As [`ExportRepository::create_if_absent`], but stores `export` only while its scope has
    /// fewer than `max_unfinished` exports `pending` or `running`. The count and the insert are
    /// one atomic step where the records are (every API replica sees the same count), so
    /// concurrent requests never take a scope past its limit. An existing export with the same
    /// ID is returned as `Existing` even when the scope is at its limit.
    async fn create_within_quota(
        &self,
        export: &Export,
        max_unfinished: u32,
    ) -> Result<QuotaCreateOutcome, PortError>;

    /// Admits `scope`'s oldest `pending` exports that await admission
    /// ([`Export::awaits_admission`]), oldest first (`created_at`, then `id`), as many as keep
    /// the scope's admitted unfinished exports at or under `max_started`, marks them admitted
    /// at `now` and returns them. One atomic step where the records are: concurrent calls (any
    /// replica) never admit past the limit, nor one export twice.
    async fn admit_waiting(
        &self,
        scope: &Scope,
        max_started: u32,
        now: DateTime<Utc>,
    ) -> Result<Vec<Export>, PortError>;

    /// The export `id` of `scope`; `None` when missing or when it belongs to another scope.
    async fn get(&self, scope: &Scope, id: ExportId) -> Result<Option<Export>, PortError>;

    /// Replaces the stored record with `export` only if the stored status is `expected` and the
    /// stored attempt is not higher than `export`'s (a compare-and-set, so a retried or duplicated
    /// worker cannot move a finished export backwards or double-count). The stored admission
    /// time is kept: only [`ExportRepository::admit_waiting`] sets it.
    ///
    /// Returns `NotFound` when absent and `Conflict(stored)` when the condition fails.
    async fn update_if_status(
        &self,
        export: &Export,
        expected: ExportStatus,
    ) -> Result<UpdateOutcome, PortError>;

    /// `scope`'s exports, newest first (`created_at`, then `id`, descending), starting after
    /// `query.after`, optionally only those in `query.status`.
    async fn list(&self, scope: &Scope, query: &ExportQuery) -> Result<ExportPage, PortError>;

    /// Every export in any scope still `pending` or `running`, oldest first: what a restarted
    /// orchestrator must resume so that no accepted export is lost.
    async fn list_unfinished(&self) -> Result<Vec<Export>, PortError>;

    /// At most `limit` exports in any scope whose notifications are due
    /// ([`Export::notify_due`]) and that were last updated at or before `before`, oldest first:
    /// what the reconciler notifies when the step that should have did not.
    async fn list_notify_due(&self, before: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError>;

    /// At most `limit` exports in any scope that are `completed` and due for deletion at `now`
    /// ([`domain::Export::deletion_due_at`]: `expires_at`, or the retry time after a failed
    /// delete), soonest due first: what the retention sweep deletes next.
    async fn list_expired(&self, now: DateTime<Utc>, limit: usize) -> Result<Vec<Export>, PortError>;

    /// Checks that the store is reachable (for readiness).
    async fn ping(&self) -> Result<(), PortError>;
}
