//! Task queues per workload, named from one prefix:
//!
//! | workload  | task queue         | runs                                                        |
//! |-----------|--------------------|-------------------------------------------------------------|
//! | `control` | `{prefix}`         | `UserDataExportWorkflow` (where the seed's clients start it), `PrepareExport`, `FinishExport`, `NotifyExport` (local), `ExportStatus`, retention and reconcile workflows and activities |
//! | `exports` | `{prefix}-exports` | `ExportUserData`: the long, heavy attempts                  |
//! | `batch`   | `{prefix}-batch`   | `UserBatchExportWorkflow` parents                           |
//!
//! Workflow code picks its activities' and children's queues from the queue it runs on (part of
//! its history, so replay agrees), never from configuration. A worker serves the workloads it
//! is told, one SDK worker per queue ([`workload_options`]), so a backlog of exports never holds
//! up the bookkeeping that records cancellations and failures, nor retention.

use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use temporalio_sdk::activities::{ActivityDefinitions, ActivityImplementer};
use temporalio_sdk::{WorkerOptions, WorkflowRegistrationError};

use super::activities::ExportActivities;
use super::{WorkerDeps, batch};

const EXPORTS_SUFFIX: &str = "-exports";
const BATCH_SUFFIX: &str = "-batch";

/// The kinds of work, each on its own task queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Workload {
    /// `ExportUserData` attempts.
    Exports,
    /// Export workflows and their bookkeeping, retention, reconcile.
    Control,
    /// Batch parent workflows.
    Batch,
}

impl Workload {
    pub const ALL: [Self; 3] = [Self::Exports, Self::Control, Self::Batch];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Exports => "exports",
            Self::Control => "control",
            Self::Batch => "batch",
        }
    }
}

impl fmt::Display for Workload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A name that is no [`Workload`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown queue {0:?} (expected exports, control or batch)")]
pub struct UnknownWorkload(String);

impl FromStr for Workload {
    type Err = UnknownWorkload;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::ALL
            .into_iter()
            .find(|w| w.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| UnknownWorkload(s.to_owned()))
    }
}

/// The task queues of one deployment, named from its prefix (`USEREXPORT_TASK_QUEUE`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TaskQueues {
    prefix: String,
}

impl TaskQueues {
    pub fn new(prefix: impl Into<String>) -> Self {
        Self { prefix: prefix.into() }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The task queue of `workload`.
    pub fn name(&self, workload: Workload) -> String {
        match workload {
            Workload::Control => self.prefix.clone(),
            Workload::Exports => exports_queue_of(&self.prefix),
            Workload::Batch => format!("{}{BATCH_SUFFIX}", self.prefix),
        }
    }
}

/// Where an export workflow running on `workflow_queue` sends its `ExportUserData` attempts.
pub(crate) fn exports_queue_of(workflow_queue: &str) -> String {
    format!("{workflow_queue}{EXPORTS_SUFFIX}")
}

/// The control queue of a batch parent running on `batch_queue`; `None` when that is not a batch
/// queue (a batch started on the control queue, as before queues per workload: its children
/// stay on its queue).
pub(crate) fn control_queue_of_batch(batch_queue: &str) -> Option<&str> {
    batch_queue.strip_suffix(BATCH_SUFFIX).filter(|prefix| !prefix.is_empty())
}

/// One [`WorkerOptions`] per workload, on its queue, with what that queue runs registered:
/// - control: every workflow and activity (as [`super::register`]), so work started on the one
///   queue of earlier versions (an `ExportUserData` attempt already scheduled there, a batch
///   started there) still runs;
/// - exports: the export activities only (the worker polls no workflow tasks there);
/// - batch: the batch workflow only (no activity polling).
///
/// The export activities are built once and shared by every queue, so the per-tenant running
/// count (`max_running`) is one per process. Set each options' `tuner` before building workers.
///
/// # Errors
/// When a workflow cannot be registered (a duplicate registration).
pub fn workload_options(
    queues: &TaskQueues,
    workloads: &[Workload],
    deps: &WorkerDeps,
) -> Result<Vec<(Workload, WorkerOptions)>, WorkflowRegistrationError> {
    let export_activities = Arc::new(ExportActivities::from_deps(deps));
    let mut all = Vec::with_capacity(workloads.len());
    for &workload in workloads {
        let mut options = WorkerOptions::new(queues.name(workload)).build();
        match workload {
            Workload::Control => super::register_with(&mut options, deps, &export_activities)?,
            Workload::Exports => {
                options.register_activities(Shared(Arc::clone(&export_activities)));
            }
            Workload::Batch => batch::register(&mut options, deps)?,
        }
        all.push((workload, options));
    }
    Ok(all)
}

/// Registers the activities of one shared instance (the SDK wraps what it is given in an `Arc`
/// of its own; this hands it the same one every time).
pub(crate) struct Shared<A>(pub(crate) Arc<A>);

impl<A: ActivityImplementer> ActivityImplementer for Shared<A> {
    fn register_all(self: Arc<Self>, defs: &mut ActivityDefinitions) {
        Arc::clone(&self.0).register_all(defs);
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[test]
    fn queues_are_named_from_the_prefix() {
        let queues = TaskQueues::new("user-export");
        assert_eq!(queues.name(Workload::Control), "user-export");
        assert_eq!(queues.name(Workload::Exports), "user-export-exports");
        assert_eq!(queues.name(Workload::Batch), "user-export-batch");
        assert_eq!(control_queue_of_batch(&queues.name(Workload::Batch)), Some("user-export"));
        assert_eq!(control_queue_of_batch("user-export"), None);
        assert_eq!(control_queue_of_batch("-batch"), None);
        assert_eq!(exports_queue_of(queues.prefix()), queues.name(Workload::Exports));
    }

    #[test]
    fn workloads_parse_from_their_names() {
        assert_eq!(" Exports".parse::<Workload>().unwrap(), Workload::Exports);
        for workload in Workload::ALL {
            assert_eq!(workload.to_string().parse::<Workload>().unwrap(), workload);
        }
        assert!("export".parse::<Workload>().is_err());
    }
}
