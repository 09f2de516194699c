//! `userexport-worker`: runs export workflows from a Temporal task queue until SIGINT/SIGTERM.
//! Every flag has an environment-variable fallback (see `--help`); `RUST_LOG` sets the log
//! filter (default `info`).

use std::process::ExitCode;

use clap::Parser;
use tracing::error;
use worker::WorkerConfig;

#[tokio::main]
async fn main() -> ExitCode {
    let config = WorkerConfig::parse();
    if let Err(err) = wiring::init_logging(config.log_format) {
        eprintln!("userexport-worker: {err:#}");
        return ExitCode::FAILURE;
    }
    match worker::run(config, wiring::shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}
