//! `userexport-worker`: runs export workflows from a Temporal task queue until SIGINT/SIGTERM.
//! Every flag has an environment-variable fallback (see `--help`); `RUST_LOG` sets the log
//! filter (default `info`), `OTEL_EXPORTER_OTLP_ENDPOINT` turns on traces.

use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use worker::WorkerConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    let telemetry = match wiring::telemetry::init(config.log_format, "userexport-worker") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("userexport-worker: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = worker::run(config, wiring::shutdown_signal()).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
