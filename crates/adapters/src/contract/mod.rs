//! Contract test suites shared by every adapter of a port: the in-memory adapters run them in
//! this crate's tests, and each real backend runs the same functions against its server, so
//! "same contract" is checked, not assumed.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod batches;
pub mod exports;
pub mod fakes;
pub mod fault_proxy;
pub mod grpc_tls_proxy;
pub mod otlp_sink;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod private_pg;
#[cfg(feature = "s3")]
pub mod s3;
pub mod schedules;
pub mod smtp_sink;
pub mod users;
