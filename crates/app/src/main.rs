//! `userexport`: the HTTP API. With no configuration it starts the embedded default.

use std::process::ExitCode;

use app::config::Command;
use app::{Application, Config, banner, shutdown_signal};
use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let config = Config::parse();
    let telemetry = match wiring::telemetry::init(config.log_format, "userexport-api") {
        Ok(telemetry) => telemetry,
        Err(err) => {
            eprintln!("userexport: {err:#}");
            return ExitCode::FAILURE;
        }
    };
    let result = run(config).await;
    telemetry.shutdown();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            // One line, naming the setting when configuration is at fault.
            eprintln!("userexport: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: Config) -> anyhow::Result<()> {
    match &config.command {
        None | Some(Command::Serve) => {}
        Some(Command::Migrate) => return app::ops::migrate(&config.backends).await,
        Some(Command::Seed { scope, count }) => return app::ops::seed(&config.backends, scope, *count).await,
    }
    let app = Application::build(config).await?;
    if let Some(demo) = app.demo_tenant() {
        banner::print_demo_banner(app.local_addr(), demo);
    }
    app.run_until_stopped(shutdown_signal()).await
}
