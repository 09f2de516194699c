//! `uex export ...`

use crate::args::{CreateExport, Download, ExportCommand, ListExports};
use crate::client::{Client, Fetched};
use crate::commands::{Ctx, Listing, list};
use crate::download::{self, Destination};
use crate::error::CliError;
use crate::model::{Export, Status};
use crate::problem::printable;
use crate::render;
use crate::request::{list_query, segment};
use crate::units;
use crate::wait;

pub async fn run(ctx: &Ctx, command: ExportCommand) -> Result<(), CliError> {
    let client = ctx.tenant()?;
    match command {
        ExportCommand::Create(args) => create(ctx, &client, args).await,
        ExportCommand::Get { id } => {
            let export = client.get::<Export>(&path(&id)).await?;
            ctx.out.object(&export.raw, || render::export(&export.item))
        }
        ExportCommand::List(args) => list_exports(ctx, &client, args).await,
        ExportCommand::Wait { id } => {
            let export = client.get::<Export>(&path(&id)).await?;
            follow(ctx, &client, export).await
        }
        ExportCommand::Cancel { id } => {
            let export = client.post::<Export>(&format!("{}/cancel", path(&id)), None, None).await?;
            ctx.out.object(&export.raw, || format!("Cancelled.\n{}", render::export(&export.item)))
        }
        ExportCommand::Download(args) => download(ctx, &client, args).await,
    }
}

fn path(id: &str) -> String {
    format!("/v1/exports/{}", segment(id))
}

async fn create(ctx: &Ctx, client: &Client, args: CreateExport) -> Result<(), CliError> {
    let body = args.request.to_body();
    let export = client.post::<Export>("/v1/exports", Some(&body), args.idempotency_key.as_deref()).await?;
    if export.status == 200 {
        eprintln!(
            "uex: this Idempotency-Key already requested export {}; showing that one",
            printable(&export.item.id)
        );
    }
    if args.wait {
        return follow(ctx, client, export).await;
    }
    ctx.out.object(&export.raw, || render::export(&export.item))
}

/// Waits for the export to finish, shows it, and ends as it ended: a failed or cancelled
/// export is an error with its own exit code.
pub async fn follow(ctx: &Ctx, client: &Client, export: Fetched<Export>) -> Result<(), CliError> {
    let finished = wait::until_finished(client, export, ctx.terminal).await?;
    ctx.out.object(&finished.raw, || render::export(&finished.item))?;
    outcome(&finished.item)
}

/// A finished export as the command's result.
fn outcome(export: &Export) -> Result<(), CliError> {
    let id = export.id.clone();
    match export.status {
        Status::Failed => {
            let reason = export
                .error
                .as_ref()
                .map_or_else(|| "no reason given".to_owned(), |e| format!("{}: {}", e.kind, e.message));
            Err(CliError::ExportFailed { id, reason })
        }
        Status::Cancelled => Err(CliError::ExportCancelled { id }),
        _ => Ok(()),
    }
}

async fn list_exports(ctx: &Ctx, client: &Client, args: ListExports) -> Result<(), CliError> {
    let listing = Listing {
        noun: "exports",
        command: "uex export list",
        header: render::export_header(),
        line: render::export_line,
    };
    let query =
        |cursor: Option<&str>| format!("/v1/exports{}", list_query(args.status, args.page.limit, cursor));
    list(ctx, client, query, &args.page, listing).await
}

async fn download(ctx: &Ctx, client: &Client, args: Download) -> Result<(), CliError> {
    let export = client.get::<Export>(&path(&args.id)).await?.item;
    let destination = Destination::choose(args.output.as_deref(), &export.file_name());
    let saved = download::download(client, &export, &destination, ctx.terminal.bars()).await?;
    if let Some(host) = &saved.storage {
        eprintln!("uex: followed the API's redirect (307) to the storage at {}", printable(host));
    }
    let size = units::bytes(saved.bytes);
    match &saved.path {
        // stdout carries the file: the verdict goes to stderr.
        None => {
            eprintln!("uex: {size} written to stdout; SHA-256 verified: {}", saved.sha256);
            Ok(())
        }
        Some(path) => {
            let raw = serde_json::json!({
                "id": export.id,
                "path": path.display().to_string(),
                "bytes": saved.bytes,
                "sha256": saved.sha256,
                "sha256_verified": true,
            });
            ctx.out.object(&raw, || {
                format!("Saved {} ({size}); SHA-256 verified: {}", path.display(), saved.sha256)
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn export(status: &str, error: serde_json::Value) -> Export {
        serde_json::from_value(json!({
            "id": "e1", "status": status, "format": "csv", "compression": "none",
            "created_at": "t", "finished_at": null, "expires_at": null,
            "progress": {"rows_written": 0, "total_rows": null, "percent": null},
            "record_count": null, "bytes": null, "sha256": null, "error": error, "links": {}
        }))
        .unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn a_finished_export_ends_the_command_as_it_ended() {
        assert!(outcome(&export("completed", json!(null))).is_ok());
        assert!(outcome(&export("expired", json!(null))).is_ok());
        let failed =
            outcome(&export("failed", json!({"type": "source", "message": "reading the users failed"})));
        let Err(error) = failed else { panic!("a failed export succeeded") };
        assert_eq!(error.exit() as u8, 3);
        assert_eq!(error.to_string(), "export e1 failed: source: reading the users failed");
        let cancelled = outcome(&export("cancelled", json!(null)));
        assert_eq!(cancelled.err().map(|e| e.exit() as u8), Some(4));
    }
}
