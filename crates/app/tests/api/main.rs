//! Black-box tests of the HTTP API: one binary, a module per area, each test on its own
//! `TestApp` (two tenants, in-memory ports) driven with `router().oneshot(..)`.

#![allow(clippy::unwrap_used)]

mod auth;
mod batches;
mod cancel;
mod console;
mod contract;
mod contract_check;
mod create;
mod download;
mod errors;
mod events;
mod health;
mod helpers;
mod hostile_input;
mod lifecycle;
mod limits;
mod openapi;
mod prometheus;
mod quotas;
mod read;
mod retention_notify;
mod schedules;
mod server;
mod sync;
