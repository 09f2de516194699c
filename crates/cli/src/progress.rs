//! The progress bar of an export being waited for: indicatif on stderr, fed by the API's
//! progress at each poll. A spinner until the total is known, then a bar with percent,
//! throughput, time left and the attempt when the export is retried.

use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::model::{Export, Status};
use crate::problem::printable;
use crate::rate::RateMeter;
use crate::units;

/// Redraws between polls, so the spinner and elapsed time move while the API is quiet.
const TICK: Duration = Duration::from_millis(120);
const SPINNER: &str = "{spinner:.green} {prefix:.bold} {human_pos} rows  {msg}";
const BAR: &str =
    "{spinner:.green} {prefix:.bold} [{bar:30.cyan/blue}] {percent:>3}% {human_pos}/{human_len} rows  {msg}";
/// The bar as files download: bytes, speed and time left, from indicatif's own estimate.
const BYTES: &str =
    "{spinner:.green} {prefix:.bold} [{bar:30.cyan/blue}] {bytes}/{total_bytes}  {bytes_per_sec}  ETA {eta}";

#[derive(Debug)]
pub struct ExportBar {
    bar: ProgressBar,
    meter: RateMeter,
    started: Instant,
    sized: bool,
}

impl ExportBar {
    /// A bar drawn on stderr when `visible`, else one that records and draws nothing.
    pub fn new(visible: bool) -> Self {
        let bar = ProgressBar::with_draw_target(None, target(visible)).with_style(style(SPINNER));
        if visible {
            bar.enable_steady_tick(TICK);
        }
        Self { bar, meter: RateMeter::default(), started: Instant::now(), sized: false }
    }

    /// Shows what the API said at the last poll.
    pub fn update(&mut self, export: &Export) {
        let progress = export.progress;
        self.meter.observe(self.started.elapsed(), progress.rows_written);
        if let Some(total) = progress.total_rows {
            if !self.sized {
                self.bar.set_style(style(BAR));
                self.sized = true;
            }
            self.bar.set_length(total);
        }
        // Text first, position last: a redraw in between shows the new numbers with their words.
        let eta = progress.total_rows.and_then(|total| self.meter.eta(progress.rows_written, total));
        self.bar.set_prefix(export.status.as_str());
        self.bar.set_message(message(export, self.meter.rows_per_sec(), eta));
        self.bar.set_position(progress.rows_written);
    }

    /// A passing remark in place of the rate, e.g. while the API is unreachable.
    pub fn note(&self, text: String) {
        self.bar.set_message(text);
    }

    /// Stops drawing and leaves the last rendering, with how long the wait took.
    pub fn finish(&self, export: &Export) {
        self.bar.set_message(format!(
            "{} after {}",
            export.status.as_str(),
            units::duration(self.started.elapsed())
        ));
        if export.status == Status::Completed { self.bar.finish() } else { self.bar.abandon() }
    }

    /// Stops drawing where it is (an interruption or an error follows).
    pub fn abandon(&self) {
        self.bar.abandon();
    }
}

/// A bar of bytes for a download of `total` bytes (when known).
pub fn bytes_bar(visible: bool, total: Option<u64>, label: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(total, target(visible)).with_style(style(BYTES));
    bar.set_prefix(label.to_owned());
    bar
}

fn target(visible: bool) -> ProgressDrawTarget {
    if visible { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() }
}

/// The templates are constants, checked by a test; a bad one would fall back to the default.
fn style(template: &str) -> ProgressStyle {
    ProgressStyle::with_template(template)
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

/// What follows the bar: the rate and time left while running, the attempt when retried.
pub fn message(export: &Export, rows_per_sec: Option<f64>, eta: Option<Duration>) -> String {
    let mut parts = Vec::new();
    match export.status {
        Status::Pending => parts.push("waiting for a slot".to_owned()),
        Status::Running => {
            if let Some(rate) = rows_per_sec {
                parts.push(units::rate(rate));
            }
            if let Some(eta) = eta {
                parts.push(format!("ETA {}", units::duration(eta)));
            }
        }
        _ => {}
    }
    if export.attempt > 1 {
        parts.push(format!("attempt {}", export.attempt));
    }
    if let Some(error) = export.error.as_ref().filter(|_| !export.status.is_terminal()) {
        parts.push(format!("retrying after {}: {}", printable(&error.kind), printable(&error.message)));
    }
    parts.join(" · ")
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn export(status: &str, attempt: u32, error: serde_json::Value) -> Export {
        serde_json::from_value(json!({
            "id": "e1", "status": status, "format": "csv", "compression": "none",
            "created_at": "t", "finished_at": null, "expires_at": null, "attempt": attempt,
            "progress": {"rows_written": 10, "total_rows": 100, "percent": 10},
            "record_count": null, "bytes": null, "sha256": null, "error": error, "links": {}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn the_templates_parse() {
        for template in [SPINNER, BAR, BYTES] {
            assert!(ProgressStyle::with_template(template).is_ok(), "{template}");
        }
    }

    #[test]
    fn a_running_export_shows_rate_and_eta() {
        let text = message(&export("running", 1, json!(null)), Some(12_345.0), Some(Duration::from_secs(65)));
        assert_eq!(text, "12.3k rows/s · ETA 1m 05s");
    }

    #[test]
    fn a_retried_export_shows_its_attempt_and_why() {
        let error = json!({"type": "storage", "message": "writing the export file failed"});
        let text = message(&export("running", 3, error), None, None);
        assert_eq!(text, "attempt 3 · retrying after storage: writing the export file failed");
    }

    #[test]
    fn a_pending_export_waits_for_a_slot() {
        assert_eq!(message(&export("pending", 0, json!(null)), Some(5.0), None), "waiting for a slot");
    }

    #[test]
    fn a_hidden_bar_takes_updates() {
        let mut bar = ExportBar::new(false);
        bar.update(&export("running", 1, json!(null)));
        assert!(bar.sized);
        assert_eq!(bar.bar.position(), 10);
        assert_eq!(bar.bar.length(), Some(100));
    }
}
