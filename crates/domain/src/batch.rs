//! Batch exports (seed pattern 5): one export request run for many tenant scopes.
//!
//! A batch request is validated once into [`BatchRequest`]; the service resolves its targets into
//! a [`Batch`] record. Every target's export has an ID derived from the batch ID and its scope
//! ([`ExportId::for_batch`]), so re-driving a batch (a retried start, a continued workflow run)
//! finds the exports it already created instead of creating more. What a batch achieved is read
//! back from those export records as a [`BatchSummary`].

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, DurationRound, TimeDelta, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use crate::export::{Export, ExportFailure, ExportStatus};
use crate::ids::{ExportId, IdParseError, IdempotencyKey, Scope};
use crate::request::ExportSpec;
use crate::validation::ValidationErrors;

/// Most targets one batch may have.
pub const MAX_TARGETS: usize = 10_000;
/// Exports of one batch running at the same time, unless the request says otherwise.
pub const DEFAULT_CONCURRENCY: u32 = 10;
/// Highest `concurrency` a request may ask for.
pub const MAX_CONCURRENCY: u32 = 100;

/// Namespace of batch IDs derived from idempotency keys (fixed; never change it).
const BATCH_IDEMPOTENCY_NAMESPACE: Uuid = Uuid::from_u128(0x9a0e_51c2_7d43_4f8b_b6e1_2c90_4d7a_e318);
/// Namespace of the per-target export IDs of a batch (fixed; never change it, or a re-driven
/// batch would create a second export per target).
const BATCH_EXPORT_NAMESPACE: Uuid = Uuid::from_u128(0x54d2_e8a1_0b3f_4c67_8e25_f1a9_6c0d_7b42);

/// A batch's identifier (UUIDv7, or UUIDv5 of an `Idempotency-Key`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct BatchId(Uuid);

impl BatchId {
    pub fn from_uuid(id: Uuid) -> Self {
        Self(id)
    }

    pub fn parse(raw: &str) -> Result<Self, IdParseError> {
        Uuid::parse_str(raw).map(Self).map_err(|_| IdParseError::NotUuid)
    }

    pub fn as_uuid(&self) -> Uuid {
        self.0
    }

    /// The batch an operator's idempotency key stands for: a retried POST finds the first batch.
    pub fn for_idempotency_key(key: &IdempotencyKey) -> Self {
        Self(Uuid::new_v5(&BATCH_IDEMPOTENCY_NAMESPACE, key.as_str().as_bytes()))
    }

    /// The Temporal workflow ID of the batch; derived, so a duplicate start finds the first run.
    pub fn workflow_id(&self) -> String {
        format!("user-export-batch:{self}")
    }
}

impl fmt::Display for BatchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.hyphenated().fmt(f)
    }
}

impl ExportId {
    /// The export a batch runs for `scope`: the same batch and scope always give the same
    /// export, so a batch that is started again never exports a target twice.
    pub fn for_batch(batch: BatchId, scope: &Scope) -> Self {
        let name = format!("{batch}/{}/{}", scope.tenant, scope.environment);
        Self::from_uuid(Uuid::new_v5(&BATCH_EXPORT_NAMESPACE, name.as_bytes()))
    }
}

/// Which scopes a batch request names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TargetSelection {
    /// Every scope of the tenant directory, resolved when the batch is requested.
    All,
    /// These scopes, in request order, without repeats.
    Scopes(Vec<Scope>),
}

/// A validated batch request: `{"targets": [...] | "all", "export": {...}, "concurrency": n}`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchRequest {
    pub targets: TargetSelection,
    pub spec: ExportSpec,
    pub concurrency: u32,
}

impl BatchRequest {
    /// Validates a request body, reporting every failing field (`targets[2]`,
    /// `export.format`...). A target is `"tenant/environment"` or
    /// `{"tenant_id": "...", "environment_id": "..."}`.
    pub fn from_json(body: &Value) -> Result<Self, ValidationErrors> {
        let mut errors = ValidationErrors::new();
        let Some(obj) = body.as_object() else {
            errors.add("", "invalid_type", "the request body must be a JSON object");
            return Err(errors);
        };
        for key in obj.keys() {
            if !matches!(key.as_str(), "targets" | "export" | "concurrency") {
                errors.add(
                    key.as_str(),
                    "unknown_field",
                    "unknown field; expected targets, export or concurrency",
                );
            }
        }
        let targets = parse_targets(obj.get("targets"), &mut errors);
        let spec = match obj.get("export") {
            None | Some(Value::Null) => {
                errors.add(
                    "export",
                    "required",
                    "export is required: the export request to run for every target",
                );
                None
            }
            Some(export) => match ExportSpec::from_json(export) {
                Ok(spec) => Some(spec),
                Err(invalid) => {
                    errors.extend_nested("export", invalid);
                    None
                }
            },
        };
        let concurrency = match obj.get("concurrency") {
            None | Some(Value::Null) => DEFAULT_CONCURRENCY,
            Some(v) => match v.as_u64().and_then(|n| u32::try_from(n).ok()) {
                Some(n) if (1..=MAX_CONCURRENCY).contains(&n) => n,
                _ => {
                    errors.add(
                        "concurrency",
                        "invalid_value",
                        format!("concurrency must be an integer from 1 to {MAX_CONCURRENCY}"),
                    );
                    DEFAULT_CONCURRENCY
                }
            },
        };
        match (targets, spec) {
            (Some(targets), Some(spec)) if errors.is_empty() => Ok(Self { targets, spec, concurrency }),
            _ => Err(errors),
        }
    }

    /// A stable digest of the request, so a reused idempotency key with a different request can
    /// be told apart from a retry of the same one.
    pub fn fingerprint(&self) -> String {
        let canonical =
            serde_json::to_vec(&(&self.targets, &self.spec, self.concurrency)).unwrap_or_default();
        hex::encode(Sha256::digest(canonical))
    }
}

fn parse_targets(value: Option<&Value>, errors: &mut ValidationErrors) -> Option<TargetSelection> {
    let items = match value {
        None | Some(Value::Null) => {
            errors.add(
                "targets",
                "required",
                "targets is required: a list of \"tenant/environment\" or \"all\"",
            );
            return None;
        }
        Some(Value::String(s)) if s == "all" => return Some(TargetSelection::All),
        Some(Value::Array(items)) if items.is_empty() => {
            errors.add("targets", "invalid_value", "targets must not be empty");
            return None;
        }
        Some(Value::Array(items)) if items.len() > MAX_TARGETS => {
            errors.add("targets", "too_many", format!("a batch has at most {MAX_TARGETS} targets"));
            return None;
        }
        Some(Value::Array(items)) => items,
        Some(_) => {
            errors.add(
                "targets",
                "invalid_type",
                "targets must be \"all\" or an array of \"tenant/environment\"",
            );
            return None;
        }
    };
    let mut seen = BTreeSet::new();
    let mut scopes = Vec::with_capacity(items.len());
    let before = errors.len();
    for (i, item) in items.iter().enumerate() {
        let path = format!("targets[{i}]");
        let parsed = match item {
            Value::String(s) => Scope::parse(s),
            Value::Object(o) => match (o.get("tenant_id"), o.get("environment_id"), o.len()) {
                (Some(Value::String(t)), Some(Value::String(e)), 2) => Scope::parse(&format!("{t}/{e}")),
                _ => Err(IdParseError::BadCharacters),
            },
            _ => Err(IdParseError::BadCharacters),
        };
        match parsed {
            Ok(scope) if !seen.insert(scope.clone()) => {
                errors.add(path, "duplicate", format!("{scope} is listed twice"))
            }
            Ok(scope) => scopes.push(scope),
            Err(e) => errors.add(
                path,
                "invalid_value",
                format!("expected \"tenant/environment\" or {{\"tenant_id\",\"environment_id\"}}: {e}"),
            ),
        }
    }
    (errors.len() == before).then_some(TargetSelection::Scopes(scopes))
}

/// Timestamps at microsecond precision, as databases store them.
fn micros(t: DateTime<Utc>) -> DateTime<Utc> {
    t.duration_trunc(TimeDelta::microseconds(1)).unwrap_or(t)
}

/// A batch as stored: its resolved targets and the request they all run.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub id: BatchId,
    /// Resolved scopes, in order; never empty, never repeated, at most [`MAX_TARGETS`].
    pub targets: Vec<Scope>,
    /// Whether the targets were "every scope of the directory" when requested.
    pub all_targets: bool,
    pub spec: ExportSpec,
    pub concurrency: u32,
    pub idempotency_key: Option<IdempotencyKey>,
    /// [`BatchRequest::fingerprint`] of the request that created the batch.
    pub request_fingerprint: String,
    pub created_at: DateTime<Utc>,
}

impl Batch {
    /// The batch of `request` over `targets` (the request's scopes, or the directory's for
    /// "all"), already checked against the directory by the caller.
    pub fn new(
        id: BatchId,
        request: &BatchRequest,
        targets: Vec<Scope>,
        idempotency_key: Option<IdempotencyKey>,
        now: DateTime<Utc>,
    ) -> Self {
        Self {
            id,
            targets,
            all_targets: request.targets == TargetSelection::All,
            spec: request.spec.clone(),
            concurrency: request.concurrency,
            idempotency_key,
            request_fingerprint: request.fingerprint(),
            created_at: micros(now),
        }
    }

    /// Every target with the ID of its export.
    pub fn exports(&self) -> impl Iterator<Item = (&Scope, ExportId)> {
        self.targets.iter().map(|scope| (scope, ExportId::for_batch(self.id, scope)))
    }
}

/// One target of a batch as its export record shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TargetResult {
    pub scope: Scope,
    pub export_id: ExportId,
    /// `pending` also while the batch has not reached the target (no record yet).
    pub status: ExportStatus,
    pub started: bool,
    pub error: Option<ExportFailure>,
}

/// What a batch has achieved so far, computed from its targets' export records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BatchSummary {
    pub total: usize,
    /// Completed exports, including those whose file has since expired.
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub running: usize,
    /// Targets whose export is pending or not created yet.
    pub pending: usize,
    pub results: Vec<TargetResult>,
}

impl BatchSummary {
    /// The summary of `batch`, given each target's export record (`records[i]` belongs to
    /// `batch.targets[i]`; `None` when the batch has not created it yet).
    pub fn compute(batch: &Batch, records: &[Option<Export>]) -> Self {
        let mut summary = Self {
            total: batch.targets.len(),
            completed: 0,
            failed: 0,
            cancelled: 0,
            running: 0,
            pending: 0,
            results: Vec::with_capacity(batch.targets.len()),
        };
        for (i, (scope, export_id)) in batch.exports().enumerate() {
            let record = records.get(i).and_then(Option::as_ref).filter(|e| e.id == export_id);
            let status = record.map_or(ExportStatus::Pending, Export::status);
            match status {
                ExportStatus::Pending => summary.pending += 1,
                ExportStatus::Running => summary.running += 1,
                // It did complete; its file has since reached the end of its retention.
                ExportStatus::Completed | ExportStatus::Expired => summary.completed += 1,
                ExportStatus::Failed => summary.failed += 1,
                ExportStatus::Cancelled => summary.cancelled += 1,
            }
            summary.results.push(TargetResult {
                scope: scope.clone(),
                export_id,
                status,
                started: record.is_some(),
                error: record.and_then(|e| e.error().cloned()).filter(|_| status != ExportStatus::Completed),
            });
        }
        summary
    }

    /// True once every target's export has finished, one way or another.
    pub fn is_finished(&self) -> bool {
        self.running == 0 && self.pending == 0
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use serde_json::json;

    use super::*;
    use crate::export::FailureKind;
    use crate::request::ExportFormat;

    fn fields(body: Value) -> Vec<(String, &'static str)> {
        let err = BatchRequest::from_json(&body).expect_err("should be rejected");
        err.errors().iter().map(|e| (e.field.clone(), e.code)).collect()
    }

    #[test]
    fn a_list_of_scopes_and_an_export_request_is_accepted() {
        let request = BatchRequest::from_json(&json!({
            "targets": ["acme/prod", {"tenant_id": "globex", "environment_id": "dev"}],
            "export": {"format": "csv"}
        }))
        .unwrap();
        let expected = vec![Scope::parse("acme/prod").unwrap(), Scope::parse("globex/dev").unwrap()];
        assert_eq!(request.targets, TargetSelection::Scopes(expected));
        assert_eq!(request.spec, ExportSpec::new(ExportFormat::Csv));
        assert_eq!(request.concurrency, DEFAULT_CONCURRENCY);
    }

    #[test]
    fn all_selects_the_directory() {
        let request = BatchRequest::from_json(&json!({"targets": "all", "export": {"format": "json"},
                                                      "concurrency": 3}))
        .unwrap();
        assert_eq!(request.targets, TargetSelection::All);
        assert_eq!(request.concurrency, 3);
    }

    #[test]
    fn every_failing_field_is_reported() {
        let got = fields(json!({
            "targets": ["acme/prod", "Bad", "acme/prod", 7, {"tenant_id": "a"}],
            "export": {"format": "xml", "limit": 0},
            "concurrency": 0,
            "extra": true
        }));
        for expected in [
            ("extra", "unknown_field"),
            ("targets[1]", "invalid_value"),
            ("targets[2]", "duplicate"),
            ("targets[3]", "invalid_value"),
            ("targets[4]", "invalid_value"),
            ("export.format", "invalid_value"),
            ("export.limit", "invalid_value"),
            ("concurrency", "invalid_value"),
        ] {
            assert!(got.contains(&(expected.0.to_owned(), expected.1)), "missing {expected:?} in {got:?}");
        }
        assert_eq!(got.len(), 8, "{got:?}");
    }

    #[test]
    fn targets_and_export_are_required_and_bounded() {
        assert_eq!(
            fields(json!({})),
            [("targets".to_owned(), "required"), ("export".to_owned(), "required")]
        );
        assert_eq!(
            fields(json!({"targets": [], "export": {"format": "csv"}})),
            [("targets".to_owned(), "invalid_value")]
        );
        assert_eq!(
            fields(json!({"targets": "some", "export": {"format": "csv"}})),
            [("targets".to_owned(), "invalid_type")]
        );
        let many: Vec<String> = (0..=MAX_TARGETS).map(|i| format!("t{i}/prod")).collect();
        assert_eq!(
            fields(json!({"targets": many, "export": {"format": "csv"}})),
            [("targets".to_owned(), "too_many")]
        );
        assert_eq!(fields(json!({"targets": "all", "export": []})), [("export".to_owned(), "invalid_type")]);
        assert_eq!(fields(json!([])), [(String::new(), "invalid_type")]);
    }

    #[test]
    fn export_ids_are_derived_from_batch_and_scope() {
        let batch = BatchId::parse("0190f5c3-0000-7000-8000-000000000001").unwrap();
        let other = BatchId::parse("0190f5c3-0000-7000-8000-000000000002").unwrap();
        let acme = Scope::parse("acme/prod").unwrap();
        let globex = Scope::parse("globex/prod").unwrap();
        assert_eq!(ExportId::for_batch(batch, &acme), ExportId::for_batch(batch, &acme));
        assert_ne!(ExportId::for_batch(batch, &acme), ExportId::for_batch(batch, &globex));
        assert_ne!(ExportId::for_batch(batch, &acme), ExportId::for_batch(other, &acme));
        assert_eq!(batch.workflow_id(), "user-export-batch:0190f5c3-0000-7000-8000-000000000001");
        let key = IdempotencyKey::parse("nightly-2026-11-25").unwrap();
        assert_eq!(BatchId::for_idempotency_key(&key), BatchId::for_idempotency_key(&key));
    }

    #[test]
    fn the_fingerprint_tells_requests_apart() {
        let a = BatchRequest::from_json(&json!({"targets": "all", "export": {"format": "csv"}})).unwrap();
        let mut b = a.clone();
        b.concurrency = 2;
        assert_eq!(a.fingerprint(), a.clone().fingerprint());
        assert_ne!(a.fingerprint(), b.fingerprint());
    }

    #[test]
    fn the_summary_counts_every_target_by_its_record() {
        let request =
            BatchRequest::from_json(&json!({"targets": "all", "export": {"format": "csv"}})).unwrap();
        let scopes: Vec<Scope> =
            ["a/p", "b/p", "c/p", "d/p"].into_iter().map(|s| Scope::parse(s).unwrap()).collect();
        let now = Utc::now();
        let batch = Batch::new(BatchId::from_uuid(Uuid::now_v7()), &request, scopes.clone(), None, now);
        assert!(batch.all_targets);
        let record = |i: usize| {
            Export::new(
                ExportId::for_batch(batch.id, &scopes[i]),
                scopes[i].clone(),
                request.spec.clone(),
                None,
                now,
            )
        };
        let mut failed = record(1);
        failed.fail(ExportFailure::new(FailureKind::Source, "users unavailable"), now).unwrap();
        let mut running = record(2);
        running.start_attempt(1, now).unwrap();
        let summary = BatchSummary::compute(&batch, &[None, Some(failed), Some(running), Some(record(3))]);
        assert_eq!(
            (summary.total, summary.completed, summary.failed, summary.running, summary.pending),
            (4, 0, 1, 1, 2)
        );
        assert!(!summary.is_finished());
        assert!(!summary.results[0].started);
        assert_eq!(summary.results[1].status, ExportStatus::Failed);
        assert_eq!(summary.results[1].error.as_ref().unwrap().message, "users unavailable");
        assert_eq!(summary.results[3].export_id, ExportId::for_batch(batch.id, &scopes[3]));
    }
}
