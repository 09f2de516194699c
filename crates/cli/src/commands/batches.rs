//! `uex batch ...`, with the operator key.

use crate::args::BatchCommand;
use crate::commands::Ctx;
use crate::error::CliError;
use crate::model::Batch;
use crate::render;
use crate::request::segment;

pub async fn run(ctx: &Ctx, command: BatchCommand) -> Result<(), CliError> {
    let client = ctx.operator()?;
    let batch = match command {
        BatchCommand::Create(args) => {
            let body = args.to_body();
            client.post::<Batch>("/v1/exports/batch", Some(&body), args.idempotency_key.as_deref()).await?
        }
        BatchCommand::Get { id } => {
            client.get::<Batch>(&format!("/v1/exports/batch/{}", segment(&id))).await?
        }
    };
    ctx.out.object(&batch.raw, || render::batch(&batch.item))
}
