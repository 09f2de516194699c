//! The commands: each reads its flags, calls the API and prints the answer.

mod batches;
mod exports;
mod schedules;

use serde::de::DeserializeOwned;
use serde_json::{Value, json};

use crate::args::{Cli, Command, Global, PageArgs};
use crate::client::Client;
use crate::error::CliError;
use crate::model::Page;
use crate::output::Out;
use crate::problem::printable;
use crate::terminal::Terminal;

/// What every command gets: the global options, stdout and who is watching.
#[derive(Debug)]
pub struct Ctx {
    pub global: Global,
    pub out: Out,
    pub terminal: Terminal,
}

impl Ctx {
    /// A client with the tenant's API key.
    pub fn tenant(&self) -> Result<Client, CliError> {
        let key = non_empty(self.global.api_key.as_deref())
            .ok_or(CliError::MissingKey("no API key: set USEREXPORT_API_KEY or pass --api-key"))?;
        Client::new(&self.global.url, key.to_owned())
    }

    /// A client with the operator key, for batches.
    pub fn operator(&self) -> Result<Client, CliError> {
        let key = non_empty(self.global.operator_key.as_deref()).ok_or(CliError::MissingKey(
            "batch commands need an operator key: set USEREXPORT_OPERATOR_KEY or pass --operator-key",
        ))?;
        Client::new(&self.global.url, key.to_owned())
    }
}

fn non_empty(key: Option<&str>) -> Option<&str> {
    key.map(str::trim).filter(|k| !k.is_empty())
}

pub async fn run(cli: Cli) -> Result<(), CliError> {
    let ctx = Ctx { out: Out { json: cli.global.json }, global: cli.global, terminal: Terminal::detect() };
    match cli.command {
        Command::Export(command) => exports::run(&ctx, command).await,
        Command::Schedule(command) => schedules::run(&ctx, command).await,
        Command::Batch(command) => batches::run(&ctx, command).await,
    }
}

/// How a list is shown: its name, its heading and one line per item.
struct Listing<T> {
    /// `exports`, `schedules`: for "No exports." and the hint to the next page.
    noun: &'static str,
    /// The command that lists the next page, e.g. `uex export list`.
    command: &'static str,
    header: String,
    line: fn(&T) -> String,
}

/// Prints one page of a list, or with `--all` every page, following `next_cursor`. With
/// `--json`: the API's page, or for `--all` one page holding every item.
async fn list<T: DeserializeOwned>(
    ctx: &Ctx,
    client: &Client,
    query: impl Fn(Option<&str>) -> String,
    page_args: &PageArgs,
    listing: Listing<T>,
) -> Result<(), CliError> {
    let mut cursor = page_args.cursor.clone();
    let mut all_items = Vec::new();
    let mut shown = 0_usize;
    loop {
        let page = client.get::<Page<T>>(&query(cursor.as_deref())).await?;
        if ctx.out.json && !page_args.all {
            return ctx.out.json_value(&page.raw);
        }
        if let Some(items) = page.raw.get("items").and_then(Value::as_array) {
            all_items.extend(items.iter().cloned());
        }
        if shown == 0 && !page.item.items.is_empty() {
            ctx.out.text(&listing.header)?;
        }
        for item in &page.item.items {
            ctx.out.text(&(listing.line)(item))?;
        }
        shown += page.item.items.len();
        match page.item.next_cursor {
            Some(next) if page_args.all => cursor = Some(next),
            Some(next) => {
                if !ctx.out.json {
                    eprintln!("next page: {} --cursor {}", listing.command, printable(&next));
                }
                break;
            }
            None => break,
        }
    }
    if ctx.out.json {
        return ctx.out.json_value(&json!({"items": all_items, "next_cursor": null}));
    }
    if shown == 0 {
        ctx.out.text(&format!("No {}.", listing.noun))?;
    }
    Ok(())
}
