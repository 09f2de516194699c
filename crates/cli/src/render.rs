//! The text output of each object. Every value that came from the API goes through
//! [`printable`], so data cannot drive the terminal.

use crate::model::{Batch, Export, Schedule, Status};
use crate::problem::printable;
use crate::units;

/// An export, one `label value` line per known fact, then what to run next.
pub fn export(export: &Export) -> String {
    let id = printable(&export.id);
    let mut lines = vec![format!("Export {id}  {}", export.status.as_str())];
    let mut field = |label: &str, value: String| lines.push(format!("  {label:<10} {value}"));
    field("format", printable(&export.kind()));
    if !export.fields.is_empty() {
        field("fields", printable(&export.fields.join(", ")));
    }
    field("rows", rows(export));
    if export.attempt > 1 || export.consumed_attempts > 0 {
        field("attempt", format!("{} ({} used up by failures)", export.attempt, export.consumed_attempts));
    }
    if let Some(size) = export.bytes {
        field("size", units::bytes(size));
    }
    if let Some(sha256) = &export.sha256 {
        field("sha256", printable(sha256));
    }
    field("created", printable(&export.created_at));
    if let Some(at) = &export.finished_at {
        field("finished", printable(at));
    }
    if let Some(at) = &export.expires_at {
        field("expires", printable(at));
    }
    if let Some(error) = &export.error {
        let label = if export.status.is_terminal() { "error" } else { "retrying" };
        field(label, format!("{}: {}", printable(&error.kind), printable(&error.message)));
    }
    match export.status {
        Status::Completed => field("download", format!("uex export download {id}")),
        status if !status.is_terminal() => field("follow", format!("uex export wait {id}")),
        _ => {}
    }
    lines.join("\n")
}

/// Rows written, of the total once known.
fn rows(export: &Export) -> String {
    let progress = export.progress;
    if let Some(count) = export.record_count {
        return units::count(count);
    }
    match (progress.total_rows, progress.percent) {
        (Some(total), Some(percent)) => {
            format!("{} of {} ({percent}%)", units::count(progress.rows_written), units::count(total))
        }
        (Some(total), None) => format!("{} of {}", units::count(progress.rows_written), units::count(total)),
        _ => units::count(progress.rows_written),
    }
}

/// The heading of [`export_line`]s.
pub fn export_header() -> String {
    export_columns("ID", "STATUS", "FORMAT", "ROWS", "CREATED")
}

/// An export in a list.
pub fn export_line(export: &Export) -> String {
    export_columns(
        &printable(&export.id),
        export.status.as_str(),
        &printable(&export.kind()),
        &rows(export),
        &printable(&export.created_at),
    )
}

fn export_columns(id: &str, status: &str, format: &str, rows: &str, created: &str) -> String {
    format!("{id:<36}  {status:<9}  {format:<12}  {rows:<22}  {created}")
}

pub fn schedule(schedule: &Schedule) -> String {
    let state = if schedule.paused { "paused" } else { "active" };
    let mut lines = vec![format!("Schedule {}  {state}", printable(&schedule.id))];
    let mut field = |label: &str, value: String| lines.push(format!("  {label:<10} {value}"));
    field("cron", format!("{} ({})", printable(&schedule.cron), printable(&schedule.timezone)));
    field("next fire", schedule.next_fire_at.as_deref().map_or_else(|| "-".to_owned(), printable));
    let request = &schedule.request;
    let gz = if request.compression == "gzip" { " (gzip)" } else { "" };
    field("exports", format!("{}{gz}", printable(&request.format)));
    if let Some(note) = &schedule.note {
        field("note", printable(note));
    }
    field("temporal", printable(&schedule.temporal_schedule_id));
    lines.join("\n")
}

/// The heading of [`schedule_line`]s.
pub fn schedule_header() -> String {
    schedule_columns("ID", "STATE", "CRON", "TIME ZONE", "NEXT FIRE")
}

/// A schedule in a list.
pub fn schedule_line(schedule: &Schedule) -> String {
    schedule_columns(
        &printable(&schedule.id),
        if schedule.paused { "paused" } else { "active" },
        &printable(&schedule.cron),
        &printable(&schedule.timezone),
        &schedule.next_fire_at.as_deref().map_or_else(|| "-".to_owned(), printable),
    )
}

fn schedule_columns(id: &str, state: &str, cron: &str, timezone: &str, next: &str) -> String {
    format!("{id:<36}  {state:<6}  {cron:<15}  {timezone:<16}  {next}")
}

/// A batch: its counts, then a line per target tenant.
pub fn batch(batch: &Batch) -> String {
    let mut lines = vec![
        format!("Batch {}  {}", printable(&batch.id), printable(&batch.status)),
        format!(
            "  {} targets: {} completed, {} failed, {} cancelled, {} running, {} pending (at most {} at once)",
            batch.total,
            batch.completed,
            batch.failed,
            batch.cancelled,
            batch.running,
            batch.pending,
            batch.concurrency
        ),
    ];
    for target in &batch.results {
        let scope = format!("{}/{}", printable(&target.tenant_id), printable(&target.environment_id));
        let mut line = format!("  {scope:<24} {}  {}", printable(&target.export_id), target.status.as_str());
        if let Some(error) = &target.error {
            line.push_str(&format!(": {}: {}", printable(&error.kind), printable(&error.message)));
        }
        lines.push(line);
    }
    lines.join("\n")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn sample(overrides: serde_json::Value) -> Export {
        let mut raw = json!({
            "id": "e1", "status": "running", "format": "csv", "compression": "none", "fields": [],
            "created_at": "2026-01-01T00:00:00Z", "finished_at": null, "expires_at": null,
            "attempt": 1, "consumed_attempts": 0,
            "progress": {"rows_written": 1500, "total_rows": 6000, "percent": 25},
            "record_count": null, "bytes": null, "sha256": null, "error": null, "links": {}
        });
        if let (Some(raw), Some(overrides)) = (raw.as_object_mut(), overrides.as_object()) {
            raw.extend(overrides.clone());
        }
        serde_json::from_value(raw).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_running_export_shows_its_progress_and_how_to_follow_it() {
        let text = export(&sample(json!({})));
        assert!(text.starts_with("Export e1  running"), "{text}");
        assert!(text.contains("rows       1,500 of 6,000 (25%)"), "{text}");
        assert!(text.contains("follow     uex export wait e1"), "{text}");
        assert!(!text.contains("attempt"), "{text}");
    }

    #[test]
    fn a_retried_export_shows_its_attempt_and_last_error() {
        let text = export(&sample(json!({
            "attempt": 2, "consumed_attempts": 1,
            "error": {"type": "storage", "message": "writing the export file failed"}
        })));
        assert!(text.contains("attempt    2 (1 used up by failures)"), "{text}");
        assert!(text.contains("retrying   storage: writing the export file failed"), "{text}");
    }

    #[test]
    fn a_completed_export_shows_its_file() {
        let text = export(&sample(json!({
            "status": "completed", "compression": "gzip", "record_count": 6000, "bytes": 2048,
            "sha256": "ab12", "finished_at": "2026-01-01T00:01:00Z", "expires_at": "2026-01-08T00:01:00Z"
        })));
        for expected in [
            "format     csv (gzip)",
            "rows       6,000",
            "size       2.0 KiB",
            "sha256     ab12",
            "expires    2026-01-08T00:01:00Z",
            "download   uex export download e1",
        ] {
            assert!(text.contains(expected), "{expected} in {text}");
        }
    }

    #[test]
    fn list_lines_line_up_with_the_header() {
        let line = export_line(&sample(json!({"id": "0193a2b4-0000-7000-8000-000000000001"})));
        let header = export_header();
        assert_eq!(line.find("running"), header.find("STATUS"), "{header}\n{line}");
        assert_eq!(line.find("1,500 of 6,000"), header.find("ROWS"), "{header}\n{line}");
        assert_eq!(line.find("2026-"), header.find("CREATED"), "{header}\n{line}");
    }

    #[test]
    fn data_cannot_drive_the_terminal() {
        let text = export(&sample(json!({"id": "e1\u{1b}[2J"})));
        assert!(!text.contains('\u{1b}'), "{text:?}");
    }
}
