//! userexport's use cases, written only against ports.
//!
//! - [`ExportRunner`] is the seed's `ExportUserData`: it runs one attempt of an export, streaming
//!   users through an encoder into storage. Orchestrators (in-process, Temporal) call it.
//! - [`ExportService`] is what the API calls: request, wait, read, list, cancel, download.
//! - [`ScheduleService`] manages export schedules; [`ScheduledExports`] is what one fire does.
//! - [`RetentionSweeper`] deletes the files of expired exports (run on a schedule).
//! - [`BatchService`] runs one export request for many tenants (operators only).
//! - [`Reconciler`] settles what orchestration left unfinished (every record ends terminal).
//! - [`meters`] names the Prometheus metrics and counts export status changes
//!   ([`meters::MeteredExports`]).

mod batches;
mod exports;
pub mod meters;
mod notify;
mod reconcile;
mod retention;
mod runner;
mod schedules;
mod segments;

pub use batches::{BatchGetError, BatchRequestError, BatchService, BatchView, RequestedBatch};
pub use exports::{
    CancelError, Download, DownloadContent, DownloadError, DownloadLink, ExportService, GetError, ListError,
    RequestError, Requested,
};
pub use notify::{Notified, NotifyRetry};
pub use reconcile::{ReconcileReport, ReconcileSettings, Reconciler};
pub use retention::{
    DELETE_RETRY_INITIAL, DELETE_RETRY_MAX, RetentionSweeper, SweepError, SweepReport, delete_retry_after,
};
pub use runner::{AttemptControl, ExportRunner, ProgressFn, RunError, RunnerConfig};
pub use schedules::{
    CreateScheduleError, CreatedSchedule, DeleteScheduleError, FireError, GetScheduleError,
    ListSchedulesError, Reconciled, ScheduleService, ScheduledExports, TriggerScheduleError,
    UpdateScheduleError,
};
