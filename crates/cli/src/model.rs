//! The API's objects, as far as this client reads them (see `/openapi.json`). `--json` prints
//! what the API sent, not these, so a field added to the API reaches scripts at once.

use serde::Deserialize;

/// An export's status: `pending -> running -> completed | failed | cancelled`, then `expired`.
/// Also the value of `export list --status`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Pending,
    Running,
    Completed,
    Failed,
    Cancelled,
    Expired,
    /// A status this client does not know yet; treated as unfinished.
    #[serde(other)]
    #[value(skip)]
    Unknown,
}

impl Status {
    /// Whether the export will change no more (an expired one completed earlier).
    pub fn is_terminal(self) -> bool {
        matches!(self, Self::Completed | Self::Failed | Self::Cancelled | Self::Expired)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Pending => "pending",
            Self::Running => "running",
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Cancelled => "cancelled",
            Self::Expired => "expired",
            Self::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct Progress {
    pub rows_written: u64,
    pub total_rows: Option<u64>,
    pub percent: Option<u8>,
}

/// Why an export failed, or why its last attempt did while it is retried.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ExportError {
    #[serde(rename = "type")]
    pub kind: String,
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Export {
    pub id: String,
    pub status: Status,
    pub format: String,
    pub compression: String,
    #[serde(default)]
    pub fields: Vec<String>,
    pub created_at: String,
    pub finished_at: Option<String>,
    pub expires_at: Option<String>,
    #[serde(default)]
    pub attempt: u32,
    #[serde(default)]
    pub consumed_attempts: u32,
    pub progress: Progress,
    pub record_count: Option<u64>,
    pub bytes: Option<u64>,
    pub sha256: Option<String>,
    pub error: Option<ExportError>,
}

impl Export {
    /// The file name the API gives the download, `export-{id}.{format}[.gz]`, with anything
    /// but letters, digits and `-` left out so that it always names a file here.
    pub fn file_name(&self) -> String {
        let safe = |s: &str| s.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '-').collect::<String>();
        let gz = if self.compression == "gzip" { ".gz" } else { "" };
        format!("export-{}.{}{gz}", safe(&self.id), safe(&self.format))
    }

    /// `csv`, or `csv (gzip)` when compressed.
    pub fn kind(&self) -> String {
        if self.compression == "gzip" { format!("{} (gzip)", self.format) } else { self.format.clone() }
    }
}

/// A page of a list; `next_cursor` is `null` on the last one.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Page<T> {
    pub items: Vec<T>,
    pub next_cursor: Option<String>,
}

/// The export request a schedule runs, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct ScheduledRequest {
    pub format: String,
    pub compression: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Schedule {
    pub id: String,
    pub cron: String,
    pub timezone: String,
    pub paused: bool,
    pub note: Option<String>,
    pub request: ScheduledRequest,
    pub next_fire_at: Option<String>,
    pub temporal_schedule_id: String,
}

/// One target tenant of a batch and its export.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct BatchTarget {
    pub tenant_id: String,
    pub environment_id: String,
    pub export_id: String,
    pub status: Status,
    pub error: Option<ExportError>,
}

#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Batch {
    pub id: String,
    /// `running` or `finished`.
    pub status: String,
    pub concurrency: u32,
    pub total: usize,
    pub completed: usize,
    pub failed: usize,
    pub cancelled: usize,
    pub running: usize,
    pub pending: usize,
    pub results: Vec<BatchTarget>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_export_as_the_api_shows_it_reads() {
        let raw = serde_json::json!({
            "id": "0193", "status": "running", "format": "ndjson", "compression": "gzip",
            "fields": ["id", "email"], "user_filters": {}, "limit": null, "email_notify": false,
            "notify_email": null, "retention_days": null, "created_at": "2026-01-01T00:00:00Z",
            "started_at": null, "finished_at": null, "updated_at": "2026-01-01T00:00:00Z",
            "expires_at": null, "attempt": 2, "consumed_attempts": 1, "resumed_from_row": 0,
            "checkpoint_rows": 10, "progress": {"rows_written": 10, "total_rows": 40, "percent": 25},
            "record_count": null, "bytes": null, "sha256": null,
            "error": {"type": "storage", "message": "writing the export file failed"},
            "notification": null, "callback": null, "workflow_id": "w",
            "links": {"self": "/v1/exports/0193", "cancel": "/v1/exports/0193/cancel"}, "new_field": 1
        });
        let export: Export = serde_json::from_value(raw).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(export.status, Status::Running);
        assert_eq!(export.progress.total_rows, Some(40));
        assert_eq!(export.error.map(|e| e.kind), Some("storage".to_owned()));
    }

    #[test]
    fn file_names_follow_format_and_compression() {
        let raw = |compression| {
            serde_json::json!({"id": "e1", "status": "completed", "format": "csv", "compression": compression,
                "created_at": "t", "finished_at": null, "expires_at": null,
                "progress": {"rows_written": 0, "total_rows": null, "percent": null},
                "record_count": null, "bytes": null, "sha256": null, "error": null, "links": {}})
        };
        let plain: Export = serde_json::from_value(raw("none")).unwrap_or_else(|e| panic!("{e}"));
        let gzip: Export = serde_json::from_value(raw("gzip")).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(plain.file_name(), "export-e1.csv");
        assert_eq!(gzip.file_name(), "export-e1.csv.gz");
        assert_eq!(gzip.kind(), "csv (gzip)");
        let hostile = Export { id: "../../etc/passwd".into(), ..plain };
        assert_eq!(hostile.file_name(), "export-etcpasswd.csv");
    }

    #[test]
    fn an_unknown_status_is_not_terminal() {
        let status: Status = serde_json::from_str("\"paused\"").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(status, Status::Unknown);
        assert!(!status.is_terminal());
        assert!(Status::Expired.is_terminal());
    }
}
