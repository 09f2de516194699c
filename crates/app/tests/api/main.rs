//! Black-box tests of the HTTP API: one binary, a module per area, each test on its own
//! `TestApp` (two tenants, in-memory ports) driven with `router().oneshot(..)`.

#![allow(clippy::unwrap_used)]

mod auth;
mod batches;
mod cancel;
mod create;
mod download;
mod errors;
mod events;
mod health;
mod helpers;
mod lifecycle;
mod openapi;
mod quotas;
mod read;
mod retention_notify;
mod schedules;
mod sync;
