//! HTTP body types. They mirror the domain but are separate from it: the wire format changes
//! only here, and conversions happen at the edge.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use domain::{
    Compression, Export, ExportFormat, ExportStatus, FailureKind, NotificationStatus, UserField, UserFilter,
    UserStatus,
};
use serde::Serialize;
use utoipa::{PartialSchema, ToSchema};
use uuid::Uuid;

/// Declares a wire enum mirroring a domain enum variant for variant.
macro_rules! wire_enum {
    ($(#[$meta:meta])* $name:ident from $domain:ident { $($variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name {
            $($variant),+
        }

        impl From<$domain> for $name {
            fn from(value: $domain) -> Self {
                match value {
                    $($domain::$variant => Self::$variant),+
                }
            }
        }
    };
}

wire_enum!(
    /// `pending -> running -> completed | failed | cancelled`.
    ExportStatusBody from ExportStatus { Pending, Running, Completed, Failed, Cancelled, Expired }
);
wire_enum!(
    /// File format of the export.
    ExportFormatBody from ExportFormat { Csv, Json, Ndjson }
);
wire_enum!(
    /// `gzip` produces a `.gz` file (served as `application/gzip`, not as a content encoding).
    CompressionBody from Compression { None, Gzip }
);
wire_enum!(
    /// A user column.
    UserFieldBody from UserField { Id, Email, Name, Status, CreatedAt, UpdatedAt, Metadata }
);
wire_enum!(
    /// A user's status.
    UserStatusBody from UserStatus { Active, Inactive, Suspended }
);
wire_enum!(
    /// Why an export failed.
    FailureKindBody from FailureKind { Validation, Source, Storage, Timeout, QuotaExceeded, Internal }
);
wire_enum!(
    /// How delivering the completion notification went.
    NotificationStatusBody from NotificationStatus { Sent, Failed }
);

/// The completion notification (`email_notify`), once attempted.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NotificationBody {
    pub status: NotificationStatusBody,
    pub attempts: u32,
    /// Why the last attempt failed.
    pub last_error: Option<String>,
    pub at: DateTime<Utc>,
}

impl From<&domain::NotificationRecord> for NotificationBody {
    fn from(n: &domain::NotificationRecord) -> Self {
        Self { status: n.status.into(), attempts: n.attempts, last_error: n.last_error.clone(), at: n.at }
    }
}

/// Which users an export contains; every condition present must hold.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct UserFiltersBody {
    /// Only users in one of these statuses.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<Vec<UserStatusBody>>,
    /// Only users created strictly after this instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_after: Option<DateTime<Utc>>,
    /// Only users created strictly before this instant.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub created_before: Option<DateTime<Utc>>,
    /// Only users with an email address at exactly this domain.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub email_domain: Option<String>,
}

impl From<&UserFilter> for UserFiltersBody {
    fn from(filter: &UserFilter) -> Self {
        Self {
            status: filter.status.as_ref().map(|set| set.iter().copied().map(UserStatusBody::from).collect()),
            created_after: filter.created_after,
            created_before: filter.created_before,
            email_domain: filter.email_domain.clone(),
        }
    }
}

/// The body of `POST /v1/exports` and `POST /v1/exports/sync`. Unknown fields are rejected, and
/// so are `tenant_id`/`environment_id`: the scope comes from the API key. `null` means "absent"
/// for every optional field.
#[derive(Debug, Clone, ToSchema)]
#[schema(example = json!({"format": "csv", "compression": "gzip", "fields": ["id", "email"],
    "user_filters": {"status": ["active"], "created_after": "2024-01-01T00:00:00Z"}}))]
pub struct CreateExportRequest {
    pub format: ExportFormatBody,
    /// Default `none`.
    pub compression: Option<CompressionBody>,
    /// Columns in order, without repeats; default all.
    #[schema(schema_with = field_selection_schema)]
    pub fields: Option<Vec<UserFieldBody>>,
    /// Default: every user.
    pub user_filters: Option<UserFiltersRequest>,
    /// At most this many users.
    #[schema(minimum = 1, maximum = 100_000_000)]
    pub limit: Option<u64>,
    /// Send a notification when the export finishes. Default false.
    pub email_notify: Option<bool>,
    /// Address for that notification; default the tenant's.
    #[schema(format = Email, max_length = 254)]
    pub notify_email: Option<String>,
    /// Days the file is kept after completion; default the service's. `maximum` is this
    /// server's limit (`USEREXPORT_RETENTION_MAX_DAYS`).
    #[schema(minimum = 1, maximum = 3650)]
    pub retention_days: Option<u32>,
}

/// `fields`: a non-empty list of distinct columns, or `null`.
fn field_selection_schema() -> utoipa::openapi::Array {
    use utoipa::openapi::schema::{ArrayBuilder, SchemaType, Type};
    ArrayBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Array, Type::Null]))
        .items(UserFieldBody::schema())
        .min_items(Some(1))
        .unique_items(true)
        .description(Some("Columns in order, without repeats; default all."))
        .build()
}

/// User filters of a request. Unlike the fields of the request, a filter present must not be
/// `null`; leave it out instead.
#[derive(Debug, Clone, ToSchema)]
pub struct UserFiltersRequest {
    /// One status or a non-empty array of them.
    #[schema(schema_with = status_filter_schema)]
    pub status: Option<Vec<UserStatusBody>>,
    /// Only users created strictly after this instant.
    #[schema(nullable = false)]
    pub created_after: Option<DateTime<Utc>>,
    /// Must be later than `created_after`.
    #[schema(nullable = false)]
    pub created_before: Option<DateTime<Utc>>,
    /// A domain such as `example.com`, without `@` (any case).
    #[schema(
        nullable = false,
        max_length = 253,
        pattern = r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$"
    )]
    pub email_domain: Option<String>,
}

/// `user_filters.status`: one status, or a non-empty array of them.
fn status_filter_schema() -> utoipa::openapi::RefOr<utoipa::openapi::Schema> {
    use utoipa::openapi::schema::{ArrayBuilder, OneOfBuilder, Schema};
    let status = OneOfBuilder::new()
        .item(UserStatusBody::schema())
        .item(ArrayBuilder::new().items(UserStatusBody::schema()).min_items(Some(1)))
        .description(Some("One status or a non-empty array of them."))
        .build();
    Schema::OneOf(status).into()
}

/// How far the current attempt got.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
pub struct ProgressBody {
    pub rows_written: u64,
    /// Known once the users are counted.
    pub total_rows: Option<u64>,
    /// 0..=100, known once `total_rows` is.
    pub percent: Option<u8>,
}

/// Why the export failed (or why its last attempt did, while it waits for a retry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExportErrorBody {
    #[serde(rename = "type")]
    pub kind: FailureKindBody,
    pub message: String,
}

/// Where to go next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ExportLinks {
    #[serde(rename = "self")]
    pub self_: String,
    /// Present once the export is completed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub download: Option<String>,
    /// Present while the export is unfinished.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel: Option<String>,
}

/// A short-lived signed URL of a completed export's file: fetched without a key, from the
/// storage, so a page can hand it to the browser.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct DownloadLinkResource {
    /// The signed URL. Anyone holding it can read the file until `expires_at`: keep it private.
    pub url: String,
    pub expires_at: DateTime<Utc>,
    /// The name the file is saved under (`export-{id}.{ext}`).
    pub filename: String,
    /// Lowercase hex SHA-256 of the file, to verify what was downloaded.
    pub sha256: Option<String>,
    pub size_bytes: Option<u64>,
}

/// An export as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExportResource {
    pub id: Uuid,
    pub status: ExportStatusBody,
    pub format: ExportFormatBody,
    pub compression: CompressionBody,
    pub fields: Vec<UserFieldBody>,
    pub user_filters: UserFiltersBody,
    pub limit: Option<u64>,
    pub email_notify: bool,
    pub notify_email: Option<String>,
    /// Days the file is kept after completion, as requested (absent: the service default).
    pub retention_days: Option<u32>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
    /// When retention deletes the file (set on completion); the export is `expired` after.
    pub expires_at: Option<DateTime<Utc>>,
    /// Runs started so far (the one running or last run); 0 before the first. Every run counts
    /// here, interruptions and outages included.
    pub attempt: u32,
    /// Attempts used up by failures of the export itself (at most `USEREXPORT_RETRY_MAX_ATTEMPTS`);
    /// outages and interruptions use none.
    pub consumed_attempts: u32,
    /// The row the current attempt resumed from: the rows before it were kept from earlier
    /// attempts (0: it started from the beginning; absent before the first attempt).
    pub resumed_from_row: Option<u64>,
    /// Rows safely stored at the last checkpoint: what an interrupted attempt keeps. Absent
    /// once the export is finished.
    pub checkpoint_rows: Option<u64>,
    /// Never goes backwards, even when an attempt must start over.
    pub progress: ProgressBody,
    /// Rows in the file, once completed.
    pub record_count: Option<u64>,
    /// Size of the file in bytes, once completed.
    pub bytes: Option<u64>,
    /// Lowercase hex SHA-256 of the file, once completed.
    pub sha256: Option<String>,
    /// Why the export failed; while it is retried, the last transient error.
    pub error: Option<ExportErrorBody>,
    /// The completion email (`email_notify`), once attempted.
    pub notification: Option<NotificationBody>,
    /// The tenant's signed callback (`callback_url`), once attempted.
    pub callback: Option<NotificationBody>,
    /// The durable workflow running this export (a scheduled run's own ID).
    pub workflow_id: String,
    pub links: ExportLinks,
}

/// Path of an export resource.
pub fn export_path(id: impl std::fmt::Display) -> String {
    format!("/v1/exports/{id}")
}

impl From<&Export> for ExportResource {
    fn from(export: &Export) -> Self {
        let status = export.status();
        let path = export_path(export.id);
        let progress = export.progress();
        let outcome = export.outcome();
        Self {
            id: export.id.as_uuid(),
            status: status.into(),
            format: export.spec.format.into(),
            compression: export.spec.compression.into(),
            fields: export.spec.fields.fields().iter().copied().map(UserFieldBody::from).collect(),
            user_filters: (&export.spec.user_filters).into(),
            limit: export.spec.limit,
            email_notify: export.spec.email_notify,
            notify_email: export.spec.notify_email.clone(),
            retention_days: export.spec.retention_days,
            created_at: export.created_at,
            started_at: export.started_at(),
            finished_at: export.finished_at(),
            updated_at: export.updated_at(),
            expires_at: export.expires_at(),
            attempt: export.attempt(),
            consumed_attempts: export.consumed_attempts(),
            resumed_from_row: export.resumed_from_row(),
            checkpoint_rows: export.checkpoint().map(|c| c.rows),
            progress: ProgressBody {
                rows_written: progress.rows_written,
                total_rows: progress.total_rows,
                percent: progress.percent(),
            },
            record_count: outcome.map(|o| o.record_count),
            bytes: outcome.map(|o| o.bytes),
            sha256: outcome.map(|o| o.sha256.clone()),
            error: export
                .error()
                .map(|e| ExportErrorBody { kind: e.kind.into(), message: e.message.clone() }),
            notification: export.notification().map(NotificationBody::from),
            callback: export.callback().map(NotificationBody::from),
            workflow_id: export.workflow_id(),
            links: ExportLinks {
                download: (status == ExportStatus::Completed).then(|| format!("{path}/download")),
                cancel: (!status.is_terminal()).then(|| format!("{path}/cancel")),
                self_: path,
            },
        }
    }
}

/// A page of exports, newest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ExportList {
    pub items: Vec<ExportResource>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `GET /healthz`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: String,
}

/// State of one dependency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CheckStatus {
    Ok,
    Unavailable,
}

/// `GET /readyz` when every dependency answers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct Readiness {
    #[schema(example = "ready")]
    pub status: String,
    /// `users`, `exports`, `storage`, `orchestrator` (and `events` when a NATS consumer runs);
    /// only for an operator key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, CheckStatus>>,
}

/// `GET /readyz` when a dependency does not answer: a problem document with the checks.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct NotReadyProblem {
    #[serde(flatten)]
    pub problem: crate::problem::Problem,
    /// As for `Readiness`: only for an operator key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checks: Option<BTreeMap<String, CheckStatus>>,
}
