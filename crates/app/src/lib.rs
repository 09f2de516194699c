//! userexport's HTTP API: authentication, routes, problem documents, OpenAPI, and the wiring of
//! the ports into one [`Application`] used by `main` and by the tests.

mod auth;
pub mod banner;
pub mod config;
pub mod console;
pub mod dto;
pub mod dto_schedules;
pub mod events;
mod http_metrics;
pub mod limits;
pub mod openapi;
pub mod ops;
pub mod problem;
mod readiness;
mod routes;
mod serve;
pub mod startup;
mod state;

pub use config::Config;
pub use routes::BODY_LIMIT_BYTES;
pub use startup::{Adapters, Application, DemoTenant};
pub use wiring::shutdown_signal;
