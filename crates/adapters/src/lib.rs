//! Adapters: one module per technology. Infrastructure errors are translated here into
//! `PortError`; no driver or SDK type crosses a port.

#[cfg(feature = "callback")]
pub mod callback;
#[cfg(feature = "testkit")]
pub mod contract;
pub mod export_threads;
pub mod inprocess;
pub mod memory;
#[cfg(feature = "nats")]
pub mod nats;
pub mod notify;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod scheduler;
#[cfg(feature = "smtp")]
pub mod smtp;
pub mod storage;
#[cfg(feature = "temporal")]
pub mod temporal;
#[cfg(any(feature = "s3", feature = "callback", feature = "testkit"))]
pub mod tls;
