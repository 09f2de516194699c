//! Stdout: text for people, or with `--json` the API's objects as it sent them.

use std::io::{ErrorKind, Write};

use serde_json::Value;

use crate::error::CliError;

#[derive(Debug, Clone, Copy)]
pub struct Out {
    pub json: bool,
}

impl Out {
    /// `raw` as JSON, or else the text `render` makes.
    pub fn object(self, raw: &Value, render: impl FnOnce() -> String) -> Result<(), CliError> {
        if self.json { self.json_value(raw) } else { line(&render()) }
    }

    /// Text for people; nothing in `--json` mode.
    pub fn text(self, text: &str) -> Result<(), CliError> {
        if self.json { Ok(()) } else { line(text) }
    }

    pub fn json_value(self, value: &Value) -> Result<(), CliError> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Other(anyhow::Error::new(e).context("writing JSON")))?;
        line(&text)
    }
}

/// Writes `text` and a line break. A closed pipe (`uex export list | head`) is not an error.
fn line(text: &str) -> Result<(), CliError> {
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{text}").and_then(|()| stdout.flush()) {
        Err(e) if e.kind() != ErrorKind::BrokenPipe => {
            Err(CliError::Other(anyhow::Error::new(e).context("writing to stdout")))
        }
        _ => Ok(()),
    }
}
