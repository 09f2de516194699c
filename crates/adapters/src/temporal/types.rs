//! What travels through Temporal: the workflow input (the seed's shape plus our optional
//! additions), the activities' inputs and outputs, and the failure type names workflows and
//! retry policies match on.
//!
//! Every payload is plain JSON, so workflows can be started (and results read) from any SDK or
//! the `temporal` CLI.

use domain::{ExecutionPolicy, Export, ExportFailure, ExportId, ExportStatus, Scope};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Registered name of the workflow (the seed's `types.UserDataExportWorkflow`).
pub const WORKFLOW_TYPE: &str = "UserDataExportWorkflow";
/// Registered name of the activity that runs one export attempt (the seed's `ExportUserData`).
pub const EXPORT_ACTIVITY: &str = "ExportUserData";
/// Registered name of the activity that creates (if absent) and validates the export record.
pub const PREPARE_ACTIVITY: &str = "PrepareExport";
/// Registered name of the activity that records a failure or cancellation on the record.
pub const FINISH_ACTIVITY: &str = "FinishExport";
/// Registered name of the local activity that sends the email and the callback of a final export.
pub const NOTIFY_ACTIVITY: &str = "NotifyExport";

/// `ApplicationFailure` type names. The non-retryable ones are also listed in the retry
/// policies' `non_retryable_error_types`, so they stop retries whatever the flag says.
pub mod failure_type {
    /// The request (spec, identifiers or policy) is invalid; retrying cannot help.
    pub const VALIDATION_FAILED: &str = "ValidationFailed";
    /// The export failed for good; its record already says `failed`.
    pub const EXPORT_FAILED: &str = "ExportFailed";
    /// No export record with that ID in that scope.
    pub const EXPORT_NOT_FOUND: &str = "ExportNotFound";
    /// Another attempt owns the export; this one did nothing.
    pub const EXPORT_SUPERSEDED: &str = "ExportSuperseded";
    /// The record was cancelled outside this workflow (e.g. through the API).
    pub const EXPORT_CANCELLED: &str = "ExportCancelled";
    /// The export ran out of time (its deadline as schedule-to-close).
    pub const EXPORT_TIMED_OUT: &str = "ExportTimedOut";
    /// A retryable failure (of an attempt, or of a record operation); details carry the
    /// `ExportFailure`.
    pub const ATTEMPT_FAILED: &str = "ExportAttemptFailed";
    /// The worker stopped during the attempt; it is retried elsewhere.
    pub const INTERRUPTED: &str = "ExportInterrupted";
    /// The worker already runs `max_running` exports of the tenant: the attempt did nothing
    /// and is offered again after a short delay (retryable, using up no attempt of the export).
    pub const TENANT_BUSY: &str = "TenantBusy";

    /// Types that must never be retried.
    pub const NON_RETRYABLE: [&str; 5] =
        [VALIDATION_FAILED, EXPORT_FAILED, EXPORT_NOT_FOUND, EXPORT_SUPERSEDED, EXPORT_CANCELLED];
}

/// The export ID of a workflow started without one (e.g. by the `temporal` CLI with the seed's
/// fields only, or by a Temporal Schedule): a UUIDv5 of the workflow ID, so every replay and
/// retry finds the same export. Defined in the domain ([`ExportId::for_workflow_id`]) so the
/// in-process scheduler derives the same export for the same fire.
pub fn derived_export_id(workflow_id: &str) -> ExportId {
    ExportId::for_workflow_id(workflow_id)
}

/// Input of `UserDataExportWorkflow`: the seed's
/// `{"tenant_id","environment_id","user_filters","format","email_notify"}` plus our optional
/// additions. Everything but the two scope fields is optional on the wire.
///
/// The request part (`format`, `compression`, `fields`, `user_filters`, `limit`, `email_notify`,
/// `notify_email`) is kept as raw JSON and validated by [`domain::ExportSpec::from_json`] in the
/// prepare activity, so a bad request is reported field by field (and unknown keys are rejected)
/// instead of failing to decode.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportWorkflowInput {
    pub tenant_id: String,
    pub environment_id: String,
    /// The export to run. Absent: derived from the workflow ID ([`derived_export_id`]) and the
    /// record is created `pending` by the prepare activity.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub export_id: Option<String>,
    /// Retry and timeout policy. Absent: the worker's configured policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ExecutionPolicy>,
    /// The record's attempt counter when the run was started. The API sends it with the export
    /// ID and policy for a record it has just stored, which lets the run skip `PrepareExport`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt_offset: Option<u32>,
    /// The request fields, as sent.
    #[serde(flatten)]
    pub request: Map<String, Value>,
}

impl ExportWorkflowInput {
    /// The input that runs an existing export record.
    pub fn for_export(export: &Export, policy: Option<ExecutionPolicy>) -> Self {
        let request = match serde_json::to_value(&export.spec) {
            Ok(Value::Object(map)) => map,
            _ => Map::new(),
        };
        Self {
            tenant_id: export.scope.tenant.to_string(),
            environment_id: export.scope.environment.to_string(),
            export_id: Some(export.id.to_string()),
            attempt_offset: Some(export.attempt()),
            policy,
            request,
        }
    }
}

/// Which export an activity works on, as strings (validated by the activity).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportRef {
    pub tenant_id: String,
    pub environment_id: String,
    pub export_id: String,
}

impl ExportRef {
    pub fn new(scope: &Scope, id: ExportId) -> Self {
        Self {
            tenant_id: scope.tenant.to_string(),
            environment_id: scope.environment.to_string(),
            export_id: id.to_string(),
        }
    }
}

/// Input of `PrepareExport`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareInput {
    #[serde(flatten)]
    pub export: ExportRef,
    /// The request fields; used only when the record does not exist yet.
    #[serde(default)]
    pub request: Map<String, Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ExecutionPolicy>,
    /// The workflow running the export, recorded on it (a scheduled run's ID is its own, and the
    /// API cancels through the record).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workflow_id: Option<String>,
}

/// Output of `PrepareExport`: the record as found (or created) and the policy to run it with.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrepareOutput {
    pub status: ExportStatus,
    /// The record's attempt counter; this run's attempts are numbered after it.
    pub attempt: u32,
    pub policy: ExecutionPolicy,
    /// Present when the export had already completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<ExportUserDataOutput>,
    /// Present when the export had already failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExportFailure>,
}

/// Output of `ExportStatus`: where an export's record stands.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportState {
    pub status: ExportStatus,
    /// Present when the export failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ExportFailure>,
}

/// Input of `ExportUserData`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportUserDataInput {
    #[serde(flatten)]
    pub export: ExportRef,
    /// Added to Temporal's attempt number (which restarts at 1 in every workflow run), so a
    /// record already attempted `n` times continues with attempt `n + 1`.
    #[serde(default)]
    pub attempt_offset: u32,
    /// Retries and deadline the attempt applies when it fails. Absent: the worker's policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<ExecutionPolicy>,
}

/// Details of `ExportUserData`'s heartbeats: progress, and the checkpoint a retried attempt
/// goes on from (`ActivityContext::heartbeat_details` hands the last one to the next attempt).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportHeartbeat {
    pub rows_written: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<domain::Checkpoint>,
}

/// Result of `ExportUserData` and of the workflow: the seed's
/// `{"export_id","record_count","status"}` plus where and what was written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExportUserDataOutput {
    pub export_id: String,
    pub status: ExportStatus,
    pub record_count: u64,
    pub object_key: String,
    pub bytes: u64,
    /// Lowercase hex SHA-256 of the object.
    pub sha256: String,
    /// Whether the notification step has something to send (an email or a callback).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub notify_due: bool,
}

impl ExportUserDataOutput {
    /// The output of a completed record; `None` when it has no outcome.
    pub fn from_export(export: &Export) -> Option<Self> {
        let outcome = export.outcome()?;
        Some(Self {
            export_id: export.id.to_string(),
            status: export.status(),
            record_count: outcome.record_count,
            object_key: export.object_key.to_string(),
            bytes: outcome.bytes,
            sha256: outcome.sha256.clone(),
            notify_due: export.notify_due(),
        })
    }
}

/// How an unfinished export ends when the workflow cannot finish it normally.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
pub enum FinishOutcome {
    /// The workflow was cancelled.
    Cancelled,
    /// Attempts exhausted, timed out, or a non-retryable failure.
    Failed { failure: ExportFailure },
}

/// Input of `FinishExport`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishInput {
    #[serde(flatten)]
    pub export: ExportRef,
    #[serde(flatten)]
    pub outcome: FinishOutcome,
}

/// Output of `FinishExport`: the record's status afterwards (`None`: no such record).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct FinishOutput {
    pub status: Option<ExportStatus>,
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use chrono::Utc;
    use domain::{ExportFormat, ExportSpec, FailureKind};
    use serde_json::json;

    use super::*;

    #[test]
    fn the_seed_input_decodes_with_defaults() {
        let input: ExportWorkflowInput = serde_json::from_value(json!({
            "tenant_id": "acme", "environment_id": "prod", "user_filters": {"status": "active"},
            "format": "csv", "email_notify": false
        }))
        .unwrap();
        assert_eq!((input.tenant_id.as_str(), input.environment_id.as_str()), ("acme", "prod"));
        assert_eq!((input.export_id, input.policy), (None, None));
        let spec = ExportSpec::from_json(&Value::Object(input.request)).unwrap();
        assert_eq!(spec.format, ExportFormat::Csv);
    }

    #[test]
    fn an_export_round_trips_through_the_workflow_input() {
        let scope = Scope::parse("acme/prod").unwrap();
        let spec = ExportSpec::from_json(&json!({
            "format": "ndjson", "compression": "gzip", "fields": ["email", "id"], "limit": 7,
            "user_filters": {"status": ["active", "suspended"], "created_after": "2024-01-01T00:00:00Z",
                             "email_domain": "example.com"},
            "email_notify": true, "notify_email": "ops@example.com"
        }))
        .unwrap();
        let export = Export::new(derived_export_id("w"), scope, spec.clone(), None, Utc::now());
        let input = ExportWorkflowInput::for_export(&export, Some(ExecutionPolicy::default()));
        let wire = serde_json::to_value(&input).unwrap();
        let back: ExportWorkflowInput = serde_json::from_value(wire).unwrap();
        assert_eq!(back, input);
        assert_eq!(ExportSpec::from_json(&Value::Object(back.request)).unwrap(), spec);
        assert_eq!(back.export_id, Some(export.id.to_string()));
    }

    #[test]
    fn derived_export_ids_are_stable_per_workflow_id() {
        assert_eq!(derived_export_id("a"), derived_export_id("a"));
        assert_ne!(derived_export_id("a"), derived_export_id("b"));
    }

    #[test]
    fn finish_inputs_are_flat_json() {
        let input = FinishInput {
            export: ExportRef {
                tenant_id: "acme".into(),
                environment_id: "prod".into(),
                export_id: "x".into(),
            },
            outcome: FinishOutcome::Failed { failure: ExportFailure::new(FailureKind::Storage, "503") },
        };
        let wire = serde_json::to_value(&input).unwrap();
        assert_eq!(wire["outcome"], "failed");
        assert_eq!(wire["failure"]["kind"], "storage");
        assert_eq!(serde_json::from_value::<FinishInput>(wire).unwrap(), input);
    }
}
