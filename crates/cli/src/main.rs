//! `uex`: the command-line client of the userexport API.

mod args;
mod client;
mod commands;
mod download;
mod error;
mod model;
mod output;
mod problem;
mod progress;
mod rate;
mod render;
mod request;
mod terminal;
mod units;
mod wait;

use std::process::ExitCode;

use clap::Parser;

use crate::error::{CliError, Exit};

fn main() -> ExitCode {
    // Bad flags exit here with clap's message and code 2 (invalid input).
    let cli = args::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => return fail(&CliError::Other(anyhow::Error::new(e).context("starting the async runtime"))),
    };
    let result = runtime.block_on(commands::run(cli));
    // A read of stdin still blocked (an unanswered question) must not hold up the exit.
    runtime.shutdown_background();
    match result {
        Ok(()) => Exit::Success.into(),
        Err(error) => fail(&error),
    }
}

fn fail(error: &CliError) -> ExitCode {
    eprintln!("{}", error.report());
    error.exit().into()
}
