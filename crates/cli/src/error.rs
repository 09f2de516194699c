//! Everything a command can end with, and the exit code of each (the README's table).

use std::process::ExitCode;
use std::time::Duration;

use crate::problem::{Problem, printable};

/// Exit codes: one per outcome a script may want to tell apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    Success = 0,
    /// Anything not listed below: a server error, an unexpected answer, a local I/O error.
    Error = 1,
    /// Bad flags (clap's own code), or the API refused the request as invalid (400, 413, 415, 422).
    InvalidInput = 2,
    ExportFailed = 3,
    ExportCancelled = 4,
    /// 404, or 410 (the file expired or is gone).
    NotFound = 5,
    /// 401 or 403, or no key to send.
    Unauthorised = 6,
    /// No answer (connection refused, DNS, TLS, timeout), or 503 from the API.
    Unreachable = 7,
    /// 429: the key's rate limit, the tenant's quota of unfinished exports, or throttled logins.
    RateLimited = 8,
    /// 409: not ready to download, already finished, a schedule's fire still running.
    Conflict = 9,
    /// The downloaded file does not match the export's SHA-256; nothing was kept.
    ChecksumMismatch = 10,
    /// Ctrl-C while waiting, and the export was left running (128 + SIGINT, as shells do).
    Interrupted = 130,
}

impl From<Exit> for ExitCode {
    fn from(exit: Exit) -> Self {
        Self::from(exit as u8)
    }
}

/// Why a command did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// The API answered with an error status.
    #[error("{}", .problem.lines(*.status).join("\n"))]
    Api { status: u16, problem: Problem, retry_after: Option<Duration> },
    /// The request got no answer.
    #[error("cannot reach the API at {url}: {reason}")]
    Unreachable { url: String, reason: String },
    /// No key to authenticate with.
    #[error("{0}")]
    MissingKey(&'static str),
    /// Input refused before anything was sent.
    #[error("{0}")]
    Usage(String),
    #[error("export {id} failed: {reason}")]
    ExportFailed { id: String, reason: String },
    #[error("export {id} was cancelled")]
    ExportCancelled { id: String },
    #[error("interrupted: export {id} is still running; follow it with `uex export wait {id}`")]
    Interrupted { id: String },
    #[error("interrupted: the download of export {id} stopped; no file was written")]
    DownloadInterrupted { id: String },
    #[error(
        "SHA-256 mismatch for export {id}: the export says {expected}, the download has {actual}; {outcome}"
    )]
    ChecksumMismatch { id: String, expected: String, actual: String, outcome: &'static str },
    /// The API answered something this client cannot read.
    #[error("unexpected answer from the API: {0}")]
    Unexpected(String),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

impl CliError {
    pub fn exit(&self) -> Exit {
        match self {
            Self::Api { status, .. } => exit_for_status(*status),
            Self::Unreachable { .. } => Exit::Unreachable,
            Self::MissingKey(_) => Exit::Unauthorised,
            Self::Usage(_) => Exit::InvalidInput,
            Self::ExportFailed { .. } => Exit::ExportFailed,
            Self::ExportCancelled { .. } => Exit::ExportCancelled,
            Self::Interrupted { .. } | Self::DownloadInterrupted { .. } => Exit::Interrupted,
            Self::ChecksumMismatch { .. } => Exit::ChecksumMismatch,
            Self::Unexpected(_) | Self::Other(_) => Exit::Error,
        }
    }

    /// Worth polling again after a pause: the API is busy or briefly away, not refusing.
    pub fn is_transient(&self) -> bool {
        matches!(self.exit(), Exit::Unreachable | Exit::RateLimited)
    }

    /// The `Retry-After` of an error answer.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Self::Api { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    /// What to print on stderr, each line prefixed with the program's name on the first.
    pub fn report(&self) -> String {
        let mut text = format!("uex: {}", printable_lines(&self.to_string()));
        if let Some(after) = self.retry_after() {
            text.push_str(&format!("\n  retry after {} s", after.as_secs()));
        }
        text
    }
}

/// Keeps the line breaks this client put in a message, and nothing else that controls a terminal.
fn printable_lines(text: &str) -> String {
    text.lines().map(printable).collect::<Vec<_>>().join("\n")
}

/// The exit code of an error status.
pub fn exit_for_status(status: u16) -> Exit {
    match status {
        400 | 413 | 415 | 422 => Exit::InvalidInput,
        401 | 403 => Exit::Unauthorised,
        404 | 410 => Exit::NotFound,
        409 => Exit::Conflict,
        429 => Exit::RateLimited,
        503 => Exit::Unreachable,
        _ => Exit::Error,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_their_exit_codes() {
        let cases = [
            (400, 2),
            (413, 2),
            (415, 2),
            (422, 2),
            (401, 6),
            (403, 6),
            (404, 5),
            (410, 5),
            (409, 9),
            (429, 8),
            (503, 7),
            (500, 1),
            (502, 1),
            (418, 1),
        ];
        for (status, code) in cases {
            assert_eq!(exit_for_status(status) as u8, code, "{status}");
        }
    }

    #[test]
    fn each_outcome_has_its_own_code() {
        let id = || "e1".to_owned();
        let cases = [
            (CliError::ExportFailed { id: id(), reason: "r".into() }, 3),
            (CliError::ExportCancelled { id: id() }, 4),
            (CliError::Unreachable { url: "u".into(), reason: "r".into() }, 7),
            (CliError::MissingKey("no key"), 6),
            (CliError::Usage("bad".into()), 2),
            (
                CliError::ChecksumMismatch {
                    id: id(),
                    expected: "a".into(),
                    actual: "b".into(),
                    outcome: "nothing was written",
                },
                10,
            ),
            (CliError::Interrupted { id: id() }, 130),
            (CliError::DownloadInterrupted { id: id() }, 130),
            (CliError::Unexpected("x".into()), 1),
        ];
        for (error, code) in cases {
            assert_eq!(error.exit() as u8, code, "{error}");
        }
    }

    #[test]
    fn rate_limits_and_outages_are_transient_and_refusals_are_not() {
        let api = |status| CliError::Api { status, problem: Problem::default(), retry_after: None };
        assert!(api(429).is_transient());
        assert!(api(503).is_transient());
        assert!(CliError::Unreachable { url: "u".into(), reason: "r".into() }.is_transient());
        assert!(!api(404).is_transient());
        assert!(!api(401).is_transient());
        assert!(!api(500).is_transient());
    }

    #[test]
    fn the_report_names_the_program_and_the_wait() {
        let error = CliError::Api {
            status: 429,
            problem: Problem { title: Some("Too many requests".into()), ..Problem::default() },
            retry_after: Some(Duration::from_secs(3)),
        };
        assert_eq!(error.report(), "uex: Too many requests (429)\n  retry after 3 s");
    }
}
