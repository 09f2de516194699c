//! In-memory adapters: real adapters for the embedded mode and the unit tests.

mod batches;
mod exports;
mod schedules;
mod users;

pub use batches::MemoryBatchRepository;
pub use exports::MemoryExportRepository;
pub use schedules::MemoryScheduleRepository;
pub use users::MemoryUserRepository;
