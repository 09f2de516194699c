//! The adapters' integration tests, in one test binary: every binary links the whole SDK, so
//! one binary instead of seven saves minutes of linking and gigabytes of disk.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod callback;
mod fairness;
mod faults;
mod inprocess;
mod inprocess_batch;
mod memory;
mod nats;
mod postgres;
mod s3;
mod schedules;
mod smtp;
mod storage;
#[cfg(feature = "temporal")]
mod temporal_activities;
#[cfg(feature = "temporal")]
mod temporal_batch;
#[cfg(feature = "temporal")]
mod temporal_replay;
#[cfg(feature = "temporal")]
mod temporal_retention;
#[cfg(feature = "temporal")]
mod temporal_schedules;
#[cfg(feature = "temporal")]
mod temporal_search;
mod temporal_tls;
#[cfg(feature = "temporal")]
mod temporal_workflows;
mod uploads;
