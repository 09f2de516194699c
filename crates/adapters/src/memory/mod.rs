//! In-memory adapters: real adapters for the embedded mode and the unit tests.

mod exports;
mod users;

pub use exports::MemoryExportRepository;
pub use users::MemoryUserRepository;
