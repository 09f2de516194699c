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
    match worker::run(config, shutdown_signal()).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            error!("{err:#}");
            ExitCode::FAILURE
        }
    }
}

/// Resolves on the first SIGINT or SIGTERM.
async fn shutdown_signal() {
    let interrupt = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            error!(error = %err, "cannot listen for SIGINT");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                error!(error = %err, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = interrupt => {}
        () = terminate => {}
    }
}
