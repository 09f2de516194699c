//! Benchmark (issue 4): N tiny exports through API -> Temporal -> worker, beside N bare
//! one-activity workflows on the same server, in the same process; prints throughput, p50/p99
//! latency and the ratios. Driven by bench/temporal-overhead.sh, which starts the server, the
//! worker and the API.
//!
//! Arguments: `--temporal ADDR --api URL --key KEY [-n N] [-c CONCURRENCY]`.

#![allow(clippy::print_stdout, missing_debug_implementations)]

use std::time::{Duration, Instant};

use adapters::temporal::{TemporalConnection, connect_client};
use anyhow::{Context, bail};
use futures::StreamExt;
use temporalio_client::{Client, WorkflowGetResultOptions, WorkflowStartOptions};
use temporalio_macros::{activities, workflow, workflow_methods};
use temporalio_sdk::activities::{ActivityContext, ActivityError};
use temporalio_sdk::{ActivityOptions, Runtime, Worker, WorkerOptions, WorkflowContext, WorkflowResult};

/// The baseline's one activity: returns its input.
pub struct BareActivities;

#[activities]
impl BareActivities {
    #[activity(name = "BareNoop")]
    pub async fn noop(_ctx: ActivityContext, input: u32) -> Result<u32, ActivityError> {
        Ok(input)
    }
}

/// The baseline: one workflow, one activity.
#[workflow]
#[derive(Default)]
pub struct BareWorkflow;

#[workflow_methods]
impl BareWorkflow {
    #[run(name = "BareWorkflow")]
    pub async fn run(ctx: &mut WorkflowContext<Self>, input: u32) -> WorkflowResult<u32> {
        let options = ActivityOptions::with_start_to_close_timeout(Duration::from_secs(10)).build();
        Ok(ctx.execute_activity(BareActivities::noop, input, options).await?)
    }
}

struct Args {
    temporal: String,
    api: String,
    key: String,
    n: usize,
    concurrency: usize,
}

fn parse_args() -> anyhow::Result<Args> {
    let mut args =
        Args { temporal: String::new(), api: String::new(), key: String::new(), n: 200, concurrency: 8 };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--temporal" => args.temporal = value()?,
            "--api" => args.api = value()?,
            "--key" => args.key = value()?,
            "-n" => args.n = value()?.parse()?,
            "-c" => args.concurrency = value()?.parse()?,
            "--bench" => {}
            other => bail!("unknown argument {other}"),
        }
    }
    if args.temporal.is_empty() || args.api.is_empty() || args.key.is_empty() {
        bail!("usage: temporal_overhead --temporal ADDR --api URL --key KEY [-n N] [-c CONCURRENCY]");
    }
    Ok(args)
}

/// Latencies of one run and its wall time.
struct Run {
    latencies: Vec<Duration>,
    wall: Duration,
}

impl Run {
    fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.latencies.clone();
        sorted.sort();
        let index = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
        sorted[index]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.wall.as_secs_f64()
    }

    fn print(&self, name: &str) {
        println!(
            "{name:<34} {:>7.1}/s   p50 {:>7.1} ms   p99 {:>7.1} ms",
            self.throughput(),
            self.percentile(0.50).as_secs_f64() * 1e3,
            self.percentile(0.99).as_secs_f64() * 1e3
        );
    }
}

/// Runs `n` jobs, `concurrency` at a time, timing each.
async fn measure<F, Fut>(n: usize, concurrency: usize, job: F) -> anyhow::Result<Run>
where
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let started = Instant::now();
    let results: Vec<anyhow::Result<Duration>> = futures::stream::iter(0..n)
        .map(|i| {
            let job = job(i);
            async move {
                let t = Instant::now();
                job.await?;
                Ok(t.elapsed())
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let latencies = results.into_iter().collect::<anyhow::Result<Vec<_>>>()?;
    Ok(Run { latencies, wall: started.elapsed() })
}

async fn bare_workflows(
    client: &Client,
    task_queue: &str,
    n: usize,
    concurrency: usize,
) -> anyhow::Result<Run> {
    let tag = format!("{}-{}", std::process::id(), Instant::now().elapsed().as_nanos());
    measure(n, concurrency, |i| {
        let id = format!("bench-bare-{tag}-{i}");
        async move {
            let options = WorkflowStartOptions::new(task_queue.to_owned(), id).build();
            let handle = client.start_workflow(BareWorkflow::run, i as u32, options).await?;
            handle.get_result(WorkflowGetResultOptions::default()).await?;
            Ok(())
        }
    })
    .await
}

async fn api_exports(args: &Args, n: usize) -> anyhow::Result<Run> {
    let http = adapters::contract::http_client();
    measure(n, args.concurrency, |_| {
        let request = http
            .post(format!("{}/v1/exports/sync?timeout_s=60", args.api))
            .bearer_auth(&args.key)
            .json(&serde_json::json!({"format": "csv"}));
        async move {
            let export: serde_json::Value = request.send().await?.error_for_status()?.json().await?;
            if export["status"] != "completed" {
                bail!("export did not complete: {export}");
            }
            Ok(())
        }
    })
    .await
}

fn main() -> anyhow::Result<()> {
    let args = parse_args()?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let client =
            connect_client(&TemporalConnection::plain(&args.temporal, "default")?, "userexport-bench")
                .await?;
        let task_queue = format!("bench-bare-{}", std::process::id());
        let temporal_runtime = Runtime::from_current_tokio(Default::default())?;
        let mut options = WorkerOptions::new(task_queue.clone()).build();
        options.register_workflow::<BareWorkflow>()?;
        options.register_activities(BareActivities);
        let mut worker = Worker::new(&temporal_runtime, client.clone(), options)?;
        let shutdown = worker.shutdown_handle();

        let bench = async {
            // Warm up both paths (connections, caches, the worker's first poll).
            bare_workflows(&client, &task_queue, args.concurrency, args.concurrency).await?;
            api_exports(&args, args.concurrency).await?;
            let bare = bare_workflows(&client, &task_queue, args.n, args.concurrency).await?;
            let ours = api_exports(&args, args.n).await?;
            println!("\n{} runs, {} in flight", args.n, args.concurrency);
            bare.print("bare one-activity workflow");
            ours.print("export via API -> Temporal -> worker");
            println!(
                "ratio (ours / bare): p50 {:.2}x   p99 {:.2}x   throughput {:.2}x (goal: cost <= 1.3x)",
                ours.percentile(0.5).as_secs_f64() / bare.percentile(0.5).as_secs_f64(),
                ours.percentile(0.99).as_secs_f64() / bare.percentile(0.99).as_secs_f64(),
                bare.throughput() / ours.throughput(),
            );
            anyhow::Ok(())
        };
        let (ran, result) = tokio::join!(worker.run(), async {
            let result = bench.await;
            shutdown();
            result
        });
        ran?;
        result
    })
}
