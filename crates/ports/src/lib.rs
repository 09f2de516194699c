//! The ports userexport's service is written against, used as `Arc<dyn Port>`.
//! Each trait's doc comment is its contract; every adapter must honour it, and the contract
//! test suites in `adapters` check that they do.

mod batches;
mod callbacks;
mod error;
mod exports;
mod notifier;
mod orchestrator;
mod schedules;
mod storage;
mod users;

pub use batches::{BatchCreateOutcome, BatchRepository};
pub use callbacks::CallbackSender;
pub use error::PortError;
pub use exports::{
    CreateOutcome, ExportPage, ExportQuery, ExportRepository, QuotaCreateOutcome, UpdateOutcome,
};
pub use notifier::Notifier;
pub use orchestrator::{CancelOutcome, Orchestrator, RunClosure, RunState, WaitOutcome};
pub use schedules::{
    Presence, ScheduleCreateOutcome, SchedulePage, ScheduleQuery, ScheduleQuotaOutcome, ScheduleRepository,
    ScheduleUpdateOutcome, Scheduler,
};
pub use storage::{ExportStorage, ObjectReader, ObjectWriter, StoredObject};
pub use users::{UserRepository, UserStream};

#[cfg(feature = "mocks")]
pub mod mocks {
    //! `mockall` doubles for failure injection in tests; the in-memory adapters are the fakes.
    pub use crate::callbacks::MockCallbackSender;
    pub use crate::exports::MockExportRepository;
    pub use crate::notifier::MockNotifier;
    pub use crate::storage::{MockExportStorage, MockObjectWriter};
    pub use crate::users::MockUserRepository;
}
