//! Where an export request came from: recorded with its run (on Temporal, the
//! `UserexportOrigin` search attribute), so operators can find every scheduled run, every run
//! of a batch, and so on.

use std::fmt;

/// Who asked for an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ExportOrigin {
    /// `POST /v1/exports` (and runs restarted for a record, whose first start is not known).
    #[default]
    Api,
    /// A schedule's fire.
    Schedule,
    /// An `ExportRequested` event (NATS or the signed webhook).
    Event,
    /// A target of a batch.
    Batch,
    /// Started by hand (`temporal workflow start`), which sets it itself when it wants to.
    Cli,
}

impl ExportOrigin {
    pub const ALL: [Self; 5] = [Self::Api, Self::Schedule, Self::Event, Self::Batch, Self::Cli];

    /// The wire name (`api`, `schedule`, `event`, `batch`, `cli`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Api => "api",
            Self::Schedule => "schedule",
            Self::Event => "event",
            Self::Batch => "batch",
            Self::Cli => "cli",
        }
    }
}

impl fmt::Display for ExportOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_names_are_lowercase_and_distinct() {
        let names: std::collections::BTreeSet<_> = ExportOrigin::ALL.iter().map(|o| o.as_str()).collect();
        assert_eq!(names.len(), ExportOrigin::ALL.len());
        assert_eq!(ExportOrigin::default().to_string(), "api");
    }
}
