//! Adapters: one module per technology. Infrastructure errors are translated here into
//! `PortError`; no driver or SDK type crosses a port.

pub mod inprocess;
pub mod memory;
pub mod notify;
pub mod storage;
