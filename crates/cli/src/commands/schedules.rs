//! `uex schedule ...`

use serde_json::json;

use crate::args::ScheduleCommand;
use crate::client::Client;
use crate::commands::exports::follow;
use crate::commands::{Ctx, Listing, list};
use crate::error::CliError;
use crate::model::{Export, Schedule};
use crate::problem::printable;
use crate::render;
use crate::request::{list_query, segment};

pub async fn run(ctx: &Ctx, command: ScheduleCommand) -> Result<(), CliError> {
    let client = ctx.tenant()?;
    match command {
        ScheduleCommand::Create(args) => {
            let body = args.to_body();
            let created = client
                .post::<Schedule>("/v1/export-schedules", Some(&body), args.idempotency_key.as_deref())
                .await?;
            ctx.out.object(&created.raw, || render::schedule(&created.item))
        }
        ScheduleCommand::List(page) => {
            let listing = Listing {
                noun: "schedules",
                command: "uex schedule list",
                header: render::schedule_header(),
                line: render::schedule_line,
            };
            let query = |cursor: Option<&str>| {
                format!("/v1/export-schedules{}", list_query(None, page.limit, cursor))
            };
            list(ctx, &client, query, &page, listing).await
        }
        ScheduleCommand::Get { id } => {
            let schedule = client.get::<Schedule>(&path(&id)).await?;
            ctx.out.object(&schedule.raw, || render::schedule(&schedule.item))
        }
        ScheduleCommand::Pause { id } => set_paused(ctx, &client, &id, true).await,
        ScheduleCommand::Resume { id } => set_paused(ctx, &client, &id, false).await,
        ScheduleCommand::Trigger { id, wait } => {
            let export = client.post::<Export>(&format!("{}/trigger", path(&id)), None, None).await?;
            if wait {
                return follow(ctx, &client, export).await;
            }
            ctx.out.object(&export.raw, || format!("Triggered.\n{}", render::export(&export.item)))
        }
        ScheduleCommand::Delete { id } => {
            client.delete(&path(&id)).await?;
            ctx.out.object(&json!({"id": &id, "deleted": true}), || {
                format!("Deleted schedule {}.", printable(&id))
            })
        }
    }
}

fn path(id: &str) -> String {
    format!("/v1/export-schedules/{}", segment(id))
}

async fn set_paused(ctx: &Ctx, client: &Client, id: &str, paused: bool) -> Result<(), CliError> {
    let schedule = client.patch::<Schedule>(&path(id), &json!({ "paused": paused })).await?;
    ctx.out.object(&schedule.raw, || render::schedule(&schedule.item))
}
