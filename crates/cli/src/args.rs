//! The command line: global options, then `export`, `schedule` and `batch` subcommands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use crate::model::Status as ExportStatus;

/// Where `--help` lists the options every command takes.
const GLOBAL: &str = "Global options";
/// The API's default listen address (`USEREXPORT_LISTEN` of `userexport`).
const DEFAULT_URL: &str = "http://127.0.0.1:8080";

/// Command-line client of the userexport API: request exports, follow them with a progress bar,
/// download them with their checksum verified, and manage schedules and batches.
#[derive(Debug, Parser)]
#[command(name = "uex", version, propagate_version = true)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Base URL of the API.
    #[arg(long, env = "USEREXPORT_URL", default_value = DEFAULT_URL, global = true, help_heading = GLOBAL)]
    pub url: String,
    /// Tenant API key (prefer the environment variable: flags show in `ps`).
    #[arg(long, env = "USEREXPORT_API_KEY", hide_env_values = true, global = true, help_heading = GLOBAL)]
    pub api_key: Option<String>,
    /// Operator key with the `batch` permission, for `batch` commands.
    #[arg(long, env = "USEREXPORT_OPERATOR_KEY", hide_env_values = true, global = true, help_heading = GLOBAL)]
    pub operator_key: Option<String>,
    /// Print the API's JSON objects on stdout instead of text, for scripts.
    #[arg(long, global = true, help_heading = GLOBAL)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Request, follow, list, cancel and download exports.
    #[command(subcommand)]
    Export(ExportCommand),
    /// Exports that run on a cron schedule.
    #[command(subcommand)]
    Schedule(ScheduleCommand),
    /// One export for many tenants (operator key).
    #[command(subcommand)]
    Batch(BatchCommand),
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// Request an export.
    Create(CreateExport),
    /// Show an export.
    Get { id: String },
    /// List exports, newest first.
    List(ListExports),
    /// Follow an export until it finishes, with a progress bar on a terminal.
    Wait { id: String },
    /// Cancel an unfinished export.
    Cancel { id: String },
    /// Download a completed export and verify its SHA-256.
    Download(Download),
}

#[derive(Debug, Args)]
pub struct CreateExport {
    #[command(flatten)]
    pub request: ExportRequestArgs,
    /// Makes a retry safe: the same key and request give the same export.
    #[arg(long)]
    pub idempotency_key: Option<String>,
    /// Follow the export until it finishes.
    #[arg(long)]
    pub wait: bool,
}

/// The body of an export request, a flag per field.
#[derive(Debug, Clone, Default, Args)]
pub struct ExportRequestArgs {
    /// File format.
    #[arg(long, value_enum, default_value_t = Format::Csv)]
    pub format: Format,
    /// Compress the file with gzip.
    #[arg(long)]
    pub gzip: bool,
    /// Columns in this order (comma-separated); default all.
    #[arg(long, value_enum, value_delimiter = ',')]
    pub fields: Vec<Field>,
    /// Only users in these statuses (comma-separated).
    #[arg(long = "status", value_enum, value_delimiter = ',', value_name = "STATUS")]
    pub user_status: Vec<UserStatus>,
    /// Only users created after this instant (RFC 3339, e.g. 2024-01-01T00:00:00Z).
    #[arg(long, value_name = "TIME")]
    pub created_after: Option<String>,
    /// Only users created before this instant (RFC 3339).
    #[arg(long, value_name = "TIME")]
    pub created_before: Option<String>,
    /// Only users with an email address at exactly this domain.
    #[arg(long, value_name = "DOMAIN")]
    pub email_domain: Option<String>,
    /// At most this many users.
    #[arg(long, value_name = "N")]
    pub limit: Option<u64>,
    /// Email when the export finishes, to the tenant's configured address.
    #[arg(long)]
    pub email_notify: bool,
    /// Email when the export finishes, to this address.
    #[arg(long, value_name = "ADDRESS")]
    pub notify_email: Option<String>,
    /// Days the file is kept after completion; default the service's.
    #[arg(long, value_name = "DAYS")]
    pub retention_days: Option<u32>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum Format {
    #[default]
    Csv,
    Json,
    Ndjson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Field {
    Id,
    Email,
    Name,
    Status,
    #[value(name = "created_at")]
    CreatedAt,
    #[value(name = "updated_at")]
    UpdatedAt,
    Metadata,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UserStatus {
    Active,
    Inactive,
    Suspended,
}

#[derive(Debug, Args)]
pub struct ListExports {
    /// Only exports in this status.
    #[arg(long, value_enum)]
    pub status: Option<ExportStatus>,
    #[command(flatten)]
    pub page: PageArgs,
}

/// Paging of a list: one page from a cursor, or every page.
#[derive(Debug, Clone, Default, Args)]
pub struct PageArgs {
    /// Page size (1-100; the API's default is 20).
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
    /// Start at this page (the `next_cursor` of the previous one).
    #[arg(long, conflicts_with = "all")]
    pub cursor: Option<String>,
    /// Follow the cursor through every page.
    #[arg(long)]
    pub all: bool,
}

#[derive(Debug, Args)]
pub struct Download {
    pub id: String,
    /// Where to write the file (`-` for stdout); default `export-{id}.{ext}` here.
    #[arg(short, long, value_name = "PATH")]
    pub output: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum ScheduleCommand {
    /// Create a schedule.
    Create(Box<CreateSchedule>),
    /// List schedules, oldest first.
    List(PageArgs),
    /// Show a schedule.
    Get { id: String },
    /// Stop a schedule's fires (triggers still run).
    Pause { id: String },
    /// Let a paused schedule fire again.
    Resume { id: String },
    /// Fire a schedule now; shows the export it started.
    Trigger {
        id: String,
        /// Follow the export until it finishes.
        #[arg(long)]
        wait: bool,
    },
    /// Delete a schedule (exports it started go on).
    Delete { id: String },
}

#[derive(Debug, Args)]
pub struct CreateSchedule {
    /// Five-field cron expression: minute hour day-of-month month day-of-week.
    #[arg(long)]
    pub cron: String,
    /// IANA time zone the cron is read in; default UTC.
    #[arg(long, value_name = "ZONE")]
    pub timezone: Option<String>,
    /// Free text shown with the schedule.
    #[arg(long)]
    pub note: Option<String>,
    /// Create it paused.
    #[arg(long)]
    pub paused: bool,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub request: ExportRequestArgs,
}

#[derive(Debug, Subcommand)]
pub enum BatchCommand {
    /// Run one export request for many tenants.
    Create(Box<CreateBatch>),
    /// Show a batch and each tenant's export.
    Get { id: String },
}

#[derive(Debug, Args)]
pub struct CreateBatch {
    /// `all`, or tenant scopes (`acme/prod,globex/prod`).
    #[arg(long, value_delimiter = ',', required = true)]
    pub targets: Vec<String>,
    /// Exports of the batch running at once (1-100; default 10).
    #[arg(long)]
    pub concurrency: Option<u32>,
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub request: ExportRequestArgs,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn list_flags_parse_into_paging() {
        let cli =
            Cli::try_parse_from(["uex", "export", "list", "--status", "running", "--all", "--limit", "5"])
                .unwrap_or_else(|e| panic!("{e}"));
        let Command::Export(ExportCommand::List(list)) = cli.command else { panic!("not a list") };
        assert_eq!(list.status, Some(ExportStatus::Running));
        assert!(list.page.all);
        assert_eq!(list.page.limit, Some(5));
        assert!(Cli::try_parse_from(["uex", "export", "list", "--all", "--cursor", "c"]).is_err());
    }

    #[test]
    fn an_unknown_format_is_refused_before_anything_is_sent() {
        let error = Cli::try_parse_from(["uex", "export", "create", "--format", "xml"]).err();
        assert_eq!(error.map(|e| e.exit_code()), Some(2));
    }
}
