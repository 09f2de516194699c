//! HTTP body types of `/v1/export-schedules`, separate from the domain like [`crate::dto`].

use chrono::{DateTime, Utc};
use domain::{ExportSchedule, ExportSpec};
use serde::Serialize;
use utoipa::ToSchema;
use uuid::Uuid;

use crate::dto::{CompressionBody, CreateExportRequest, ExportFormatBody, UserFieldBody, UserFiltersBody};

/// The body of `POST /v1/export-schedules`. Unknown fields are rejected; the scope comes from
/// the API key. `null` means "absent" for every optional field.
#[derive(Debug, Clone, ToSchema)]
#[schema(example = json!({"cron": "0 3 * * *", "timezone": "Europe/Paris",
    "request": {"format": "csv", "compression": "gzip"}, "note": "nightly backup"}))]
pub struct CreateScheduleRequest {
    /// Five fields: `minute hour day_of_month month day_of_week`, with `*`, lists (`1,15`),
    /// ranges (`9-17`), steps (`*/15`) and names (`JAN`, `MON-FRI`).
    #[schema(pattern = r"^\s*\S+(\s+\S+){4}\s*$", example = "0 3 * * *")]
    pub cron: String,
    /// IANA time zone the cron is read in (`Europe/Paris`, exact case); default `UTC`.
    #[schema(min_length = 1)]
    pub timezone: Option<String>,
    /// The export each fire runs, as for `POST /v1/exports`.
    pub request: CreateExportRequest,
    /// Create it paused; default false.
    pub paused: Option<bool>,
    /// Free text, at most 256 characters, no control characters.
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub note: Option<String>,
}

/// The body of `PATCH /v1/export-schedules/{id}`: only the fields present change (at least
/// one). `{"paused": true}` pauses, `{"paused": false}` resumes. Only `timezone` and `note` may
/// be `null`.
#[derive(Debug, Clone, ToSchema)]
// `minProperties: 1` is set by `openapi::finish`: utoipa 5.5 writes `min_properties` as `maxProperties`.
#[schema(example = json!({"paused": true}))]
pub struct PatchScheduleRequest {
    /// As for creation.
    #[schema(nullable = false, pattern = r"^\s*\S+(\s+\S+){4}\s*$")]
    pub cron: Option<String>,
    /// `null` resets it to UTC.
    #[schema(min_length = 1)]
    pub timezone: Option<String>,
    /// Replaces the whole request.
    #[schema(nullable = false)]
    pub request: Option<CreateExportRequest>,
    #[schema(nullable = false)]
    pub paused: Option<bool>,
    /// `null` clears it.
    #[schema(max_length = 256, pattern = r"^[^\x00-\x1F\x7F-\x9F]*$")]
    pub note: Option<String>,
}

/// The export request a schedule runs, with defaults filled in.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduledRequestBody {
    pub format: ExportFormatBody,
    pub compression: CompressionBody,
    pub fields: Vec<UserFieldBody>,
    pub user_filters: UserFiltersBody,
    pub limit: Option<u64>,
    pub email_notify: bool,
    pub notify_email: Option<String>,
}

impl From<&ExportSpec> for ScheduledRequestBody {
    fn from(spec: &ExportSpec) -> Self {
        Self {
            format: spec.format.into(),
            compression: spec.compression.into(),
            fields: spec.fields.fields().iter().copied().map(UserFieldBody::from).collect(),
            user_filters: (&spec.user_filters).into(),
            limit: spec.limit,
            email_notify: spec.email_notify,
            notify_email: spec.notify_email.clone(),
        }
    }
}

/// Where to go next.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct ScheduleLinks {
    #[serde(rename = "self")]
    pub self_: String,
    /// `POST` here to run it now.
    pub trigger: String,
}

/// A schedule as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleResource {
    pub id: Uuid,
    pub cron: String,
    pub timezone: String,
    pub paused: bool,
    pub note: Option<String>,
    pub request: ScheduledRequestBody,
    /// The next time it fires (absent while paused).
    pub next_fire_at: Option<DateTime<Utc>>,
    /// The Temporal schedule behind it in distributed mode (`temporal schedule describe -s ...`).
    pub temporal_schedule_id: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub links: ScheduleLinks,
}

/// Path of a schedule resource.
pub fn schedule_path(id: impl std::fmt::Display) -> String {
    format!("/v1/export-schedules/{id}")
}

impl ScheduleResource {
    pub fn new(schedule: &ExportSchedule, now: DateTime<Utc>) -> Self {
        let path = schedule_path(schedule.id);
        Self {
            id: schedule.id.as_uuid(),
            cron: schedule.cron.to_string(),
            timezone: schedule.timezone.to_string(),
            paused: schedule.paused,
            note: schedule.note.clone(),
            request: (&schedule.spec).into(),
            next_fire_at: schedule.next_fire_after(now),
            temporal_schedule_id: schedule.id.temporal_schedule_id(&schedule.scope),
            created_at: schedule.created_at,
            updated_at: schedule.updated_at,
            links: ScheduleLinks { trigger: format!("{path}/trigger"), self_: path },
        }
    }
}

/// A page of schedules, oldest first.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
pub struct ScheduleList {
    pub items: Vec<ScheduleResource>,
    /// Pass as `?cursor=` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The body of `POST /v1/export-schedules/preview`: a schedule's timing, judged as a create
/// would judge it. Unknown fields are rejected.
#[derive(Debug, Clone, ToSchema)]
#[schema(example = json!({"cron": "0 3 * * MON-FRI", "timezone": "Europe/Paris", "count": 5}))]
pub struct SchedulePreviewRequest {
    /// As for `POST /v1/export-schedules`.
    #[schema(pattern = r"^\s*\S+(\s+\S+){4}\s*$", example = "0 3 * * *")]
    pub cron: String,
    /// IANA time zone the cron is read in; default `UTC`.
    #[schema(min_length = 1)]
    pub timezone: Option<String>,
    /// How many upcoming fires to list; default 5.
    #[schema(minimum = 1, maximum = 20)]
    pub count: Option<u32>,
}

/// The next fires of a cron in a time zone, as a schedule with that timing would have them.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct SchedulePreview {
    /// The cron as it would be stored (single spaces).
    pub cron: String,
    pub timezone: String,
    /// The next fires, oldest first; fewer than `count` only when none follow within five years.
    pub next_fires: Vec<DateTime<Utc>>,
}
