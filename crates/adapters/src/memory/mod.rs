//! In-memory adapters: real adapters for the embedded mode and the unit tests.

mod batches;
mod exports;
mod users;

pub use batches::MemoryBatchRepository;
pub use exports::MemoryExportRepository;
pub use users::MemoryUserRepository;
