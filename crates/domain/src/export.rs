//! The export record and its state machine:
//! `pending -> running -> completed | failed | cancelled` (plus `pending -> failed | cancelled`,
//! `running -> running` for a retry with a higher attempt number, and `completed -> expired`
//! when retention deletes the file).

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};

use crate::checkpoint::Checkpoint;
use crate::ids::{ExportId, IdempotencyKey, ObjectKey, Scope};
use crate::request::ExportSpec;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExportStatus {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    /// Completed, then its file was deleted when its retention ran out.
    Expired,
}

impl ExportStatus {
    pub const ALL: [ExportStatus; 6] =
        [Self::Pending, Self::Running, Self::Completed, Self::Failed, Self::Cancelled, Self::Expired];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled | Self::Expired)
    }

    fn may_become(self, next: ExportStatus) -> bool {
        use ExportStatus::*;
        matches!(
            (self, next),
            (Pending, Running | Failed | Cancelled)
                | (Running, Running | Completed | Failed | Cancelled)
                | (Completed, Expired)
        )
    }
}

impl FromStr for ExportStatus {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        Self::ALL.into_iter().find(|v| v.as_str() == s).ok_or(())
    }
}

impl fmt::Display for ExportStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A transition the state machine does not allow, e.g. completing a cancelled export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("an export cannot go from {from} to {to}")]
pub struct IllegalTransition {
    pub from: ExportStatus,
    pub to: ExportStatus,
}

/// Why an export failed, as a stable type plus a human message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureKind {
    /// The request itself is invalid; retrying cannot help.
    Validation,
    /// Reading users failed.
    Source,
    /// Writing the file failed.
    Storage,
    /// The export did not finish before its deadline.
    Timeout,
    /// Its tenant already had as many unfinished exports as its quota allows (a schedule fire
    /// is recorded failed with this rather than dropped).
    QuotaExceeded,
    /// Anything else.
    Internal,
}

impl FailureKind {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Validation => "validation",
            Self::Source => "source",
            Self::Storage => "storage",
            Self::Timeout => "timeout",
            Self::QuotaExceeded => "quota_exceeded",
            Self::Internal => "internal",
        }
    }

    /// What tenants are told for a failure of this kind when the cause is infrastructure: a
    /// fixed text per stable code. The cause (database, storage or SMTP text) stays in the logs,
    /// with the export ID.
    pub fn public_message(self) -> &'static str {
        match self {
            Self::Validation => "the request is invalid",
            Self::Source => "reading the users failed",
            Self::Storage => "writing the export file failed",
            Self::Timeout => "the export did not finish before its deadline",
            Self::QuotaExceeded => "the tenant already had as many unfinished exports as its quota allows",
            Self::Internal => "an internal error stopped the export",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportFailure {
    pub kind: FailureKind,
    pub message: String,
}

impl ExportFailure {
    /// A failure with a message of our own words. Never pass infrastructure error text: tenants
    /// read this message; use [`ExportFailure::public`] and log the cause instead.
    pub fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        Self { kind, message: message.into() }
    }

    /// A failure with the kind's public message ([`FailureKind::public_message`]).
    pub fn public(kind: FailureKind) -> Self {
        Self::new(kind, kind.public_message())
    }
}

/// Rows written by the current attempt and, once counted, how many there will be.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub rows_written: u64,
    pub total_rows: Option<u64>,
}

impl Progress {
    /// Percent done (0..=100), known once the total is.
    pub fn percent(&self) -> Option<u8> {
        let total = self.total_rows?;
        if total == 0 {
            return Some(100);
        }
        let pct = self.rows_written.min(total).saturating_mul(100) / total;
        Some(u8::try_from(pct).unwrap_or(100))
    }
}

/// What a completed export produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportOutcome {
    pub record_count: u64,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the stored object.
    pub sha256: String,
}

/// How delivering the completion notification went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotificationStatus {
    Sent,
    /// Every attempt failed; `last_error` says why.
    Failed,
}

impl NotificationStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Sent => "sent",
            Self::Failed => "failed",
        }
    }
}

/// The notification of a finished export, recorded on it (a failure never fails the export).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NotificationRecord {
    pub status: NotificationStatus,
    pub attempts: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    pub at: DateTime<Utc>,
}

/// Timestamps are kept at microsecond precision, as databases store them, so a record reads back
/// exactly as it was written.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// Every field of a stored record, for adapters that persist records column by column.
/// Only stores hand these back; anything else changes a record through its transitions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportParts {
    pub id: ExportId,
    pub scope: Scope,
    pub spec: ExportSpec,
    pub idempotency_key: Option<IdempotencyKey>,
    pub request_fingerprint: String,
    pub object_key: ObjectKey,
    pub created_at: DateTime<Utc>,
    pub status: ExportStatus,
    pub progress: Progress,
    pub attempt: u32,
    pub outcome: Option<ExportOutcome>,
    pub error: Option<ExportFailure>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
    pub notification: Option<NotificationRecord>,
    pub callback: Option<NotificationRecord>,
    pub notify_due: bool,
    pub consumed_attempts: u32,
    pub workflow_id: Option<String>,
    pub checkpoint: Option<Checkpoint>,
    pub resumed_from_row: Option<u64>,
    pub delete_attempts: u32,
    pub next_delete_at: Option<DateTime<Utc>>,
    pub admitted_at: Option<DateTime<Utc>>,
}

/// The record of one export. Identity and request are public; everything the state machine
/// governs changes only through its methods.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Export {
    pub id: ExportId,
    pub scope: Scope,
    pub spec: ExportSpec,
    pub idempotency_key: Option<IdempotencyKey>,
    /// [`ExportSpec::fingerprint`] of the request that created the export.
    pub request_fingerprint: String,
    pub object_key: ObjectKey,
    pub created_at: DateTime<Utc>,
    status: ExportStatus,
    progress: Progress,
    attempt: u32,
    outcome: Option<ExportOutcome>,
    error: Option<ExportFailure>,
    started_at: Option<DateTime<Utc>>,
    finished_at: Option<DateTime<Utc>>,
    updated_at: DateTime<Utc>,
    /// When retention deletes the file; set on completion.
    expires_at: Option<DateTime<Utc>>,
    notification: Option<NotificationRecord>,
    /// How delivering the tenant's signed callback went.
    #[serde(default)]
    callback: Option<NotificationRecord>,
    /// Finished (completed or failed) and its notifications not yet handled.
    #[serde(default)]
    notify_due: bool,
    /// Attempts used up by failures that count ([`crate::FailureClass::consumes_attempt`]);
    /// `attempt` counts every run, interruptions and infrastructure trouble included.
    #[serde(default)]
    consumed_attempts: u32,
    /// The workflow the export runs under when it is not [`ExportId::workflow_id`] (a run
    /// started by a Temporal Schedule has an ID of its own).
    #[serde(default)]
    workflow_id: Option<String>,
    /// Where the next attempt goes on from; only while the export is unfinished.
    #[serde(default)]
    checkpoint: Option<Checkpoint>,
    /// The row the current attempt resumed from (0: it started over); `None` before any attempt.
    #[serde(default)]
    resumed_from_row: Option<u64>,
    /// Failed attempts of retention to delete the file.
    #[serde(default)]
    delete_attempts: u32,
    /// When retention tries to delete the file again after a failure; `None`: at `expires_at`.
    #[serde(default)]
    next_delete_at: Option<DateTime<Utc>>,
    /// When a run was started for the export under its scope's admission limit (Temporal mode:
    /// `max_running` of the scope's exports have runs at once); `None` while it waits for its
    /// turn, and always with the in-process orchestrator, whose own queue decides.
    #[serde(default)]
    admitted_at: Option<DateTime<Utc>>,
}

impl Export {
    pub fn new(
        id: ExportId,
        scope: Scope,
        spec: ExportSpec,
        idempotency_key: Option<IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> Self {
        let now = micros(now);
        let object_key = ObjectKey::for_export(&scope, id, &spec.extension());
        Self {
            id,
            request_fingerprint: spec.fingerprint(),
            scope,
            spec,
            idempotency_key,
            object_key,
            created_at: now,
            status: ExportStatus::Pending,
            progress: Progress::default(),
            attempt: 0,
            outcome: None,
            error: None,
            started_at: None,
            finished_at: None,
            updated_at: now,
            expires_at: None,
            notification: None,
            callback: None,
            notify_due: false,
            consumed_attempts: 0,
            workflow_id: None,
            checkpoint: None,
            resumed_from_row: None,
            delete_attempts: 0,
            next_delete_at: None,
            admitted_at: None,
        }
    }

    /// Rebuilds a record a store persisted.
    pub fn restore(p: ExportParts) -> Self {
        Self {
            id: p.id,
            scope: p.scope,
            spec: p.spec,
            idempotency_key: p.idempotency_key,
            request_fingerprint: p.request_fingerprint,
            object_key: p.object_key,
            created_at: p.created_at,
            status: p.status,
            progress: p.progress,
            attempt: p.attempt,
            outcome: p.outcome,
            error: p.error,
            started_at: p.started_at,
            finished_at: p.finished_at,
            updated_at: p.updated_at,
            expires_at: p.expires_at,
            notification: p.notification,
            callback: p.callback,
            notify_due: p.notify_due,
            consumed_attempts: p.consumed_attempts,
            workflow_id: p.workflow_id,
            checkpoint: p.checkpoint,
            resumed_from_row: p.resumed_from_row,
            delete_attempts: p.delete_attempts,
            next_delete_at: p.next_delete_at,
            admitted_at: p.admitted_at,
        }
    }

    /// Every field, for a store to persist.
    pub fn to_parts(&self) -> ExportParts {
        ExportParts {
            id: self.id,
            scope: self.scope.clone(),
            spec: self.spec.clone(),
            idempotency_key: self.idempotency_key.clone(),
            request_fingerprint: self.request_fingerprint.clone(),
            object_key: self.object_key.clone(),
            created_at: self.created_at,
            status: self.status,
            progress: self.progress,
            attempt: self.attempt,
            outcome: self.outcome.clone(),
            error: self.error.clone(),
            started_at: self.started_at,
            finished_at: self.finished_at,
            updated_at: self.updated_at,
            expires_at: self.expires_at,
            notification: self.notification.clone(),
            callback: self.callback.clone(),
            notify_due: self.notify_due,
            consumed_attempts: self.consumed_attempts,
            workflow_id: self.workflow_id.clone(),
            checkpoint: self.checkpoint.clone(),
            resumed_from_row: self.resumed_from_row,
            delete_attempts: self.delete_attempts,
            next_delete_at: self.next_delete_at,
            admitted_at: self.admitted_at,
        }
    }

    pub fn status(&self) -> ExportStatus {
        self.status
    }
    pub fn progress(&self) -> Progress {
        self.progress
    }
    /// The attempt currently or last running; 0 before the first.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }
    pub fn outcome(&self) -> Option<&ExportOutcome> {
        self.outcome.as_ref()
    }
    pub fn error(&self) -> Option<&ExportFailure> {
        self.error.as_ref()
    }
    pub fn started_at(&self) -> Option<DateTime<Utc>> {
        self.started_at
    }
    pub fn finished_at(&self) -> Option<DateTime<Utc>> {
        self.finished_at
    }
    pub fn updated_at(&self) -> DateTime<Utc> {
        self.updated_at
    }
    pub fn expires_at(&self) -> Option<DateTime<Utc>> {
        self.expires_at
    }
    pub fn notification(&self) -> Option<&NotificationRecord> {
        self.notification.as_ref()
    }
    pub fn callback(&self) -> Option<&NotificationRecord> {
        self.callback.as_ref()
    }
    /// Whether the export finished and its notifications (email, callback) still wait.
    pub fn notify_due(&self) -> bool {
        self.notify_due
    }
    /// Attempts used up by failures that count against `maximum_attempts`.
    pub fn consumed_attempts(&self) -> u32 {
        self.consumed_attempts
    }
    /// The workflow ID the export runs under.
    pub fn workflow_id(&self) -> String {
        self.workflow_id.clone().unwrap_or_else(|| self.id.workflow_id(&self.scope))
    }
    /// Records the workflow ID the export actually runs under (a scheduled run's own).
    pub fn set_workflow_id(&mut self, workflow_id: String) {
        self.workflow_id = (workflow_id != self.id.workflow_id(&self.scope)).then_some(workflow_id);
    }
    /// When a run was started for the export under its scope's admission limit; `None` while it
    /// waits (or when the orchestrator admits nothing).
    pub fn admitted_at(&self) -> Option<DateTime<Utc>> {
        self.admitted_at
    }
    /// Whether the export is `pending` and no run was started for it yet: it waits for its
    /// scope's turn.
    pub fn awaits_admission(&self) -> bool {
        self.status == ExportStatus::Pending && self.admitted_at.is_none()
    }
    /// Records that a run was started for the export (a workflow that creates its own record
    /// runs already). Kept once set: stores never clear it.
    pub fn mark_admitted(&mut self, now: DateTime<Utc>) {
        self.admitted_at.get_or_insert(micros(now));
    }
    /// The key attempt `attempt` uploads to.
    pub fn attempt_key(&self, attempt: u32) -> ObjectKey {
        ObjectKey::for_attempt(&self.scope, self.id, attempt, &self.spec.extension())
    }

    fn move_to(&mut self, to: ExportStatus, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        if !self.status.may_become(to) {
            return Err(IllegalTransition { from: self.status, to });
        }
        let now = micros(now);
        self.status = to;
        self.updated_at = now;
        // Expiry comes after the export finished; it keeps the completion time.
        if to.is_terminal() && self.finished_at.is_none() {
            self.finished_at = Some(now);
        }
        if to.is_terminal() {
            self.checkpoint = None;
        }
        // People hear of completions and failures; a cancel was their own doing.
        if matches!(to, ExportStatus::Completed | ExportStatus::Failed) {
            self.notify_due = true;
        }
        Ok(())
    }

    /// Begins attempt `attempt`. A retry must carry a higher attempt number than the last one, so
    /// a duplicated delivery of an old attempt cannot restart the export.
    pub fn start_attempt(&mut self, attempt: u32, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        if attempt <= self.attempt {
            return Err(IllegalTransition { from: self.status, to: ExportStatus::Running });
        }
        self.move_to(ExportStatus::Running, now)?;
        self.attempt = attempt;
        self.started_at.get_or_insert(micros(now));
        // Progress is kept: the attempt resumes from the checkpoint, or it catches up before
        // `rows_written` moves again, so what the API shows never goes backwards.
        self.resumed_from_row = Some(0);
        // `error` keeps the last transient failure, so a retrying export shows why.
        Ok(())
    }

    /// The current attempt goes on from `checkpoint` (its rows are kept).
    pub fn resume_from(&mut self, checkpoint: &Checkpoint) {
        self.resumed_from_row = Some(checkpoint.rows);
    }

    /// Whether `key` is where one of this export's attempts uploads (a checkpoint read from a
    /// heartbeat or a record must name one).
    pub fn owns_upload(&self, key: &ObjectKey) -> bool {
        (1..=self.attempt).any(|n| self.attempt_key(n) == *key)
    }

    /// Where the next attempt would go on from.
    pub fn checkpoint(&self) -> Option<&Checkpoint> {
        self.checkpoint.as_ref()
    }

    /// The row the current attempt resumed from; 0 when it started from the beginning.
    pub fn resumed_from_row(&self) -> Option<u64> {
        self.resumed_from_row
    }

    /// Saves a checkpoint of the running attempt (ignored once the export is finished).
    pub fn record_checkpoint(&mut self, checkpoint: Checkpoint, now: DateTime<Utc>) {
        if self.status.is_terminal() {
            return;
        }
        self.progress.rows_written = self.progress.rows_written.max(checkpoint.rows);
        self.checkpoint = Some(checkpoint);
        self.updated_at = micros(now);
    }

    /// Forgets the checkpoint (its upload is gone; the next attempt starts over).
    pub fn clear_checkpoint(&mut self) {
        self.checkpoint = None;
    }

    /// Records rows written so far; the total once it is known. Rows never go backwards: an
    /// attempt that starts over shows the furthest any attempt got until it passes it.
    pub fn record_progress(&mut self, rows_written: u64, total_rows: Option<u64>, now: DateTime<Utc>) {
        self.progress.rows_written = self.progress.rows_written.max(rows_written);
        if total_rows.is_some() {
            self.progress.total_rows = total_rows;
        }
        self.updated_at = micros(now);
    }

    /// Notes why the last attempt failed while the export waits for a retry; a failure that
    /// counts ([`crate::FailureClass::consumes_attempt`]) uses up one attempt.
    pub fn note_attempt_failure(
        &mut self,
        failure: ExportFailure,
        consumes_attempt: bool,
        now: DateTime<Utc>,
    ) {
        self.error = Some(failure);
        if consumes_attempt {
            self.consumed_attempts = self.consumed_attempts.saturating_add(1);
        }
        self.updated_at = micros(now);
    }

    /// Completes the export with the object at `object_key` (the winning attempt's upload); the
    /// file is kept for `retention` from now.
    pub fn complete(
        &mut self,
        outcome: ExportOutcome,
        object_key: ObjectKey,
        retention: TimeDelta,
        now: DateTime<Utc>,
    ) -> Result<(), IllegalTransition> {
        self.move_to(ExportStatus::Completed, now)?;
        self.object_key = object_key;
        self.expires_at = Some(micros(now + retention));
        self.progress =
            Progress { rows_written: outcome.record_count, total_rows: Some(outcome.record_count) };
        self.outcome = Some(outcome);
        self.error = None;
        Ok(())
    }

    pub fn fail(&mut self, failure: ExportFailure, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.move_to(ExportStatus::Failed, now)?;
        self.error = Some(failure);
        Ok(())
    }

    pub fn cancel(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.move_to(ExportStatus::Cancelled, now)
    }

    /// Whether retention is due: completed and past its expiry at `now`.
    pub fn is_expired_at(&self, now: DateTime<Utc>) -> bool {
        self.status == ExportStatus::Completed && self.expires_at.is_some_and(|at| at <= now)
    }

    /// When retention should (next) delete the file: `expires_at`, or after a failed delete the
    /// retry time. `None` unless the export is completed with an expiry.
    pub fn deletion_due_at(&self) -> Option<DateTime<Utc>> {
        if self.status != ExportStatus::Completed {
            return None;
        }
        let expires_at = self.expires_at?;
        Some(self.next_delete_at.map_or(expires_at, |retry| retry.max(expires_at)))
    }

    /// Whether retention should try to delete the file at `now` (expired, and any retry due).
    pub fn is_deletion_due(&self, now: DateTime<Utc>) -> bool {
        self.deletion_due_at().is_some_and(|at| at <= now)
    }

    /// Failed attempts of retention to delete the file.
    pub fn delete_attempts(&self) -> u32 {
        self.delete_attempts
    }

    /// Records that deleting the file failed at `now`: the next try waits `backoff` for this
    /// many failures, so a file that keeps failing goes behind the others instead of before them.
    /// Returns when it is tried again.
    pub fn defer_deletion(&mut self, now: DateTime<Utc>, backoff: impl Fn(u32) -> Duration) -> DateTime<Utc> {
        self.delete_attempts = self.delete_attempts.saturating_add(1);
        let wait = TimeDelta::from_std(backoff(self.delete_attempts)).unwrap_or(TimeDelta::days(1));
        let next = micros(now.checked_add_signed(wait).unwrap_or(now));
        self.next_delete_at = Some(next);
        self.updated_at = micros(now);
        next
    }

    /// Marks a completed export whose file retention deleted. Its outcome stays for the record.
    pub fn expire(&mut self, now: DateTime<Utc>) -> Result<(), IllegalTransition> {
        self.move_to(ExportStatus::Expired, now)
    }

    /// Records how the notification of this finished export went; the status does not change.
    pub fn record_notification(&mut self, record: NotificationRecord, now: DateTime<Utc>) {
        self.notification = Some(NotificationRecord { at: micros(record.at), ..record });
        self.updated_at = micros(now);
    }

    /// Records how delivering the tenant's callback went; the status does not change.
    pub fn record_callback(&mut self, record: NotificationRecord, now: DateTime<Utc>) {
        self.callback = Some(NotificationRecord { at: micros(record.at), ..record });
        self.updated_at = micros(now);
    }

    /// Marks this finished export's notifications as handled (whatever their outcome).
    pub fn notifications_done(&mut self, now: DateTime<Utc>) {
        self.notify_due = false;
        self.updated_at = micros(now);
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::ids::{EnvironmentId, TenantId};
    use crate::request::ExportFormat;

    fn export() -> Export {
        let scope = Scope::new(TenantId::parse("acme").unwrap(), EnvironmentId::parse("prod").unwrap());
        let id = ExportId::parse("0190f5c3-0000-7000-8000-000000000001").unwrap();
        Export::new(id, scope, ExportSpec::new(ExportFormat::Csv), None, t(0))
    }

    fn t(s: i64) -> DateTime<Utc> {
        Utc.timestamp_opt(1_700_000_000 + s, 0).unwrap()
    }

    fn outcome() -> ExportOutcome {
        ExportOutcome { record_count: 3, bytes: 10, sha256: "ab".into() }
    }

    #[test]
    fn a_failed_deletion_is_retried_later_with_backoff() {
        let mut e = export();
        assert_eq!(e.deletion_due_at(), None, "only completed exports are deleted");
        e.start_attempt(1, t(1)).unwrap();
        e.complete(outcome(), e.attempt_key(1), TimeDelta::seconds(10), t(2)).unwrap();
        assert_eq!(e.deletion_due_at(), Some(t(12)));
        assert!(!e.is_deletion_due(t(11)) && e.is_deletion_due(t(12)));
        let backoff = |n: u32| Duration::from_secs(60 * u64::from(n));
        assert_eq!(e.defer_deletion(t(20), backoff), t(80));
        assert_eq!((e.delete_attempts(), e.deletion_due_at()), (1, Some(t(80))));
        assert!(!e.is_deletion_due(t(79)) && e.is_deletion_due(t(80)));
        assert_eq!(e.defer_deletion(t(80), backoff), t(200));
        assert_eq!(e.delete_attempts(), 2);
        assert!(e.is_expired_at(t(100)), "still expired, only not due");
        let restored = Export::restore(e.to_parts());
        assert_eq!(restored, e, "the retry state is stored");
        e.expire(t(200)).unwrap();
        assert_eq!(e.deletion_due_at(), None);
    }

    #[test]
    fn happy_path_records_everything() {
        let mut e = export();
        assert_eq!(e.status(), ExportStatus::Pending);
        assert_eq!(e.object_key.as_str(), "acme/prod/exports/0190f5c3-0000-7000-8000-000000000001.csv");
        e.start_attempt(1, t(1)).unwrap();
        e.record_progress(2, Some(3), t(2));
        assert_eq!(e.progress().percent(), Some(66));
        e.complete(outcome(), e.attempt_key(1), TimeDelta::days(7), t(3)).unwrap();
        assert_eq!(e.status(), ExportStatus::Completed);
        assert_eq!(e.expires_at(), Some(t(3) + TimeDelta::days(7)));
        assert_eq!(e.progress().percent(), Some(100));
        assert_eq!((e.started_at(), e.finished_at()), (Some(t(1)), Some(t(3))));
    }

    #[test]
    fn terminal_states_are_final() {
        for finish in [
            |e: &mut Export| e.complete(outcome(), e.attempt_key(1), TimeDelta::days(1), t(2)),
            |e: &mut Export| e.fail(ExportFailure::new(FailureKind::Storage, "x"), t(2)),
            |e: &mut Export| e.cancel(t(2)),
        ] {
            let mut e = export();
            e.start_attempt(1, t(1)).unwrap();
            finish(&mut e).unwrap();
            let before = e.clone();
            assert!(e.start_attempt(2, t(3)).is_err());
            assert!(e.complete(outcome(), e.attempt_key(2), TimeDelta::days(1), t(3)).is_err());
            assert!(e.fail(ExportFailure::new(FailureKind::Internal, "y"), t(3)).is_err());
            assert!(e.cancel(t(3)).is_err());
            assert_eq!(e, before, "a rejected transition must not change the record");
        }
    }

    #[test]
    fn pending_cannot_complete_but_can_be_cancelled_or_failed() {
        let mut e = export();
        assert_eq!(
            e.complete(outcome(), e.attempt_key(1), TimeDelta::days(1), t(1)),
            Err(IllegalTransition { from: ExportStatus::Pending, to: ExportStatus::Completed })
        );
        e.clone().cancel(t(1)).unwrap();
        e.fail(ExportFailure::new(FailureKind::Validation, "bad"), t(1)).unwrap();
    }

    #[test]
    fn retries_need_a_higher_attempt_and_progress_never_goes_backwards() {
        let mut e = export();
        e.start_attempt(1, t(1)).unwrap();
        e.record_progress(50, Some(100), t(2));
        assert!(e.start_attempt(1, t(3)).is_err(), "a duplicated attempt must not restart");
        e.note_attempt_failure(ExportFailure::new(FailureKind::Storage, "503"), false, t(3));
        e.start_attempt(2, t(4)).unwrap();
        assert_eq!(e.attempt(), 2);
        assert_eq!(e.consumed_attempts(), 0, "a transient failure uses up no attempt");
        assert_eq!(e.progress().rows_written, 50, "an attempt that starts over shows the furthest yet");
        assert_eq!(e.resumed_from_row(), Some(0));
        e.record_progress(10, Some(100), t(4));
        assert_eq!(e.progress().rows_written, 50);
        assert_eq!(e.progress().total_rows, Some(100));
        assert_eq!(e.error().map(|f| f.message.as_str()), Some("503"), "the last transient error shows");
        e.note_attempt_failure(ExportFailure::new(FailureKind::Source, "corrupt row"), true, t(5));
        assert_eq!(e.consumed_attempts(), 1);
        assert_eq!(e.started_at(), Some(t(1)));
    }

    #[test]
    fn parts_round_trip_and_times_are_microsecond_precise() {
        let mut e = export();
        e.start_attempt(1, t(1) + chrono::Duration::nanoseconds(1_234_567)).unwrap();
        assert_eq!(e.started_at().unwrap().timestamp_subsec_nanos(), 1_234_000);
        assert_eq!(Export::restore(e.to_parts()), e);
    }

    #[test]
    fn completed_exports_expire_once_due_and_keep_their_outcome() {
        let mut e = export();
        assert!(e.expire(t(1)).is_err(), "only a completed export can expire");
        e.start_attempt(1, t(1)).unwrap();
        e.complete(outcome(), e.attempt_key(1), TimeDelta::seconds(10), t(2)).unwrap();
        assert!(!e.is_expired_at(t(11)));
        assert!(e.is_expired_at(t(12)));
        e.expire(t(20)).unwrap();
        assert_eq!(e.status(), ExportStatus::Expired);
        assert_eq!(e.finished_at(), Some(t(2)));
        assert_eq!(e.outcome(), Some(&outcome()));
        assert!(!e.is_expired_at(t(30)), "an expired export is not due again");
        assert!(e.expire(t(21)).is_err());
    }

    #[test]
    fn notifications_are_recorded_without_changing_the_status() {
        let mut e = export();
        e.start_attempt(1, t(1)).unwrap();
        e.fail(ExportFailure::new(FailureKind::Source, "db down"), t(2)).unwrap();
        let record = NotificationRecord {
            status: NotificationStatus::Failed,
            attempts: 3,
            last_error: Some("x".into()),
            at: t(3),
        };
        e.record_notification(record.clone(), t(3));
        assert_eq!(e.status(), ExportStatus::Failed);
        assert_eq!(e.notification(), Some(&record));
        assert_eq!(Export::restore(e.to_parts()), e);
    }

    #[test]
    fn completion_names_the_winning_attempts_object_and_makes_notifications_due() {
        let mut e = export();
        e.start_attempt(1, t(1)).unwrap();
        e.start_attempt(2, t(2)).unwrap();
        assert!(!e.notify_due());
        let key = e.attempt_key(2);
        assert_eq!(key.as_str(), "acme/prod/exports/0190f5c3-0000-7000-8000-000000000001.attempt-2.csv");
        e.complete(outcome(), key.clone(), TimeDelta::days(1), t(3)).unwrap();
        assert_eq!(e.object_key, key);
        assert!(e.notify_due());
        e.notifications_done(t(4));
        assert!(!e.notify_due());
        let mut cancelled = export();
        cancelled.cancel(t(1)).unwrap();
        assert!(!cancelled.notify_due(), "a cancel is not announced");
    }

    #[test]
    fn a_checkpoint_is_kept_while_unfinished_and_dropped_when_the_export_ends() {
        use crate::checkpoint::*;
        let mut e = export();
        e.start_attempt(1, t(1)).unwrap();
        let checkpoint = Checkpoint {
            version: CHECKPOINT_VERSION,
            after: crate::UserId::from_uuid(uuid::Uuid::from_u128(7)),
            rows: 70,
            segment_bytes: 1024,
            encoder: EncoderState { preamble_written: true, rows_written: 70 },
            upload: UploadCheckpoint {
                key: e.attempt_key(1),
                bytes: 4096,
                sha256: ResumableSha256::new().state(),
                location: UploadLocation::Multipart { upload_id: "u1".into(), parts: vec!["e1".into()] },
            },
        };
        assert!(checkpoint.is_resumable());
        e.record_checkpoint(checkpoint.clone(), t(2));
        assert_eq!(e.progress().rows_written, 70);
        e.start_attempt(2, t(3)).unwrap();
        e.resume_from(&checkpoint);
        assert_eq!((e.checkpoint(), e.resumed_from_row()), (Some(&checkpoint), Some(70)));
        let restored = Export::restore(e.to_parts());
        assert_eq!(restored, e);
        e.cancel(t(4)).unwrap();
        assert_eq!(e.checkpoint(), None);
        e.record_checkpoint(checkpoint, t(5));
        assert_eq!(e.checkpoint(), None, "a finished export takes no checkpoint");
    }

    #[test]
    fn a_scheduled_runs_own_workflow_id_is_kept() {
        let mut e = export();
        let derived = e.id.workflow_id(&e.scope);
        assert_eq!(e.workflow_id(), derived);
        e.set_workflow_id("user-export-scheduled:acme:prod:s1-2026-11-28T00:00:00Z".into());
        assert_eq!(e.workflow_id(), "user-export-scheduled:acme:prod:s1-2026-11-28T00:00:00Z");
        assert_eq!(Export::restore(e.to_parts()), e);
        e.set_workflow_id(derived.clone());
        assert_eq!(e.to_parts().workflow_id, None);
    }

    #[test]
    fn admission_is_marked_once_and_only_a_pending_export_awaits_it() {
        let mut e = export();
        assert!(e.awaits_admission());
        let first = e.created_at + TimeDelta::seconds(1);
        e.mark_admitted(first);
        e.mark_admitted(first + TimeDelta::seconds(5));
        assert_eq!(e.admitted_at(), Some(first));
        assert!(!e.awaits_admission());
        assert_eq!(Export::restore(e.to_parts()), e);

        let mut cancelled = export();
        cancelled.cancel(cancelled.created_at).unwrap();
        assert!(!cancelled.awaits_admission(), "only pending exports wait for a run");
    }

    #[test]
    fn percent_of_empty_export_is_complete() {
        assert_eq!(Progress { rows_written: 0, total_rows: Some(0) }.percent(), Some(100));
        assert_eq!(Progress { rows_written: 5, total_rows: None }.percent(), None);
    }
}
