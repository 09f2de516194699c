//! Load generator of `bench/load.sh`: requests many tenants' exports at once, over HTTP and signed
//! NATS events, with duplicates; waits until every accepted export is terminal while sampling
//! `GET /v1/exports/{id}` latency; prints what it saw and writes it as JSON for the script to
//! check against the database and the storage.

#![allow(clippy::print_stdout, clippy::print_stderr, reason = "a command-line report")]

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::sync::Mutex;

#[derive(Debug, Parser)]
struct Args {
    /// Base URL of the API.
    #[arg(long)]
    api: String,
    /// NATS server; without it every request goes over HTTP.
    #[arg(long)]
    nats: Option<String>,
    #[arg(long, default_value = "userexport.export-requested")]
    subject: String,
    #[arg(long, default_value = "USEREXPORT_EVENTS")]
    stream: String,
    #[arg(long, default_value = "userexport-api")]
    consumer: String,
    /// JSON file: `[{"scope": "t00/prod", "key": "...", "secret": "..."}, ...]`.
    #[arg(long)]
    tenants: PathBuf,
    /// Distinct export requests, spread round-robin over the tenants.
    #[arg(long, default_value_t = 1000)]
    exports: usize,
    /// Repeats of earlier requests (same Idempotency-Key or event ID), sent among them.
    #[arg(long, default_value_t = 100)]
    duplicates: usize,
    /// Percentage of the requests sent as NATS events.
    #[arg(long, default_value_t = 30)]
    nats_percent: usize,
    /// Requests in flight at once while sending.
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Give up waiting for the exports after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_s: u64,
    /// Where the JSON summary goes.
    #[arg(long)]
    out: PathBuf,
}

#[derive(Debug, Clone, Deserialize)]
struct Tenant {
    scope: String,
    key: String,
    secret: String,
}

#[derive(Debug, Clone)]
enum Channel {
    Http,
    Nats,
}

#[derive(Debug, Clone)]
struct Request {
    tenant: usize,
    channel: Channel,
    /// Idempotency-Key over HTTP, event ID over NATS.
    key: String,
    body: Value,
}

/// What one HTTP request was answered.
#[derive(Debug, Default)]
struct Answers {
    by_status: BTreeMap<u16, usize>,
    by_problem: BTreeMap<String, usize>,
    /// Export IDs answered per (tenant, idempotency key): every answer must name one export.
    ids: HashMap<(usize, String), Vec<String>>,
    nats_published: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let tenants: Vec<Tenant> =
        serde_json::from_slice(&std::fs::read(&args.tenants)?).context("reading the tenants file")?;
    if tenants.is_empty() {
        bail!("the tenants file lists no tenant");
    }
    // A workspace build gives reqwest TLS without a provider of its own (see adapters::tls).
    let _ = rustls::crypto::ring::default_provider().install_default();
    let http = reqwest::Client::builder().pool_max_idle_per_host(args.concurrency).build()?;
    let nats = match &args.nats {
        Some(url) => Some(async_nats::jetstream::new(async_nats::connect(url).await?)),
        None => None,
    };
    let plan = plan(&args, &tenants, nats.is_some());

    let started = Instant::now();
    let answers = Arc::new(Mutex::new(Answers::default()));
    futures::stream::iter(plan)
        .for_each_concurrent(args.concurrency, |request| {
            let (http, nats, tenants, answers, args) = (&http, &nats, &tenants, &answers, &args);
            async move {
                let outcome = send(http, nats.as_ref(), args, &tenants[request.tenant], &request).await;
                record(&mut *answers.lock().await, &request, outcome);
            }
        })
        .await;
    let sent_s = started.elapsed().as_secs_f64();
    let answers = Arc::into_inner(answers).expect("all senders finished").into_inner();
    println!(
        "sent {} HTTP requests and {} NATS events in {sent_s:.2} s",
        answers.by_status.values().sum::<usize>(),
        answers.nats_published
    );

    let known: Vec<(usize, String)> = answers
        .ids
        .iter()
        .filter_map(|((tenant, _), ids)| ids.first().map(|id| (*tenant, id.clone())))
        .collect();
    let done = Arc::new(AtomicBool::new(false));
    let samplers: Vec<_> = (0..8)
        .map(|n| {
            tokio::spawn(sample_gets(
                http.clone(),
                args.api.clone(),
                tenants.clone(),
                known.clone(),
                n,
                done.clone(),
            ))
        })
        .collect();
    let waited =
        wait_all_terminal(&http, nats.as_ref(), &args, &tenants, Duration::from_secs(args.timeout_s)).await;
    done.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    let mut sampler_statuses = BTreeMap::<u16, usize>::new();
    for sampler in samplers {
        let (lat, statuses) = sampler.await?;
        latencies.extend(lat);
        for (status, n) in statuses {
            *sampler_statuses.entry(status).or_default() += n;
        }
    }
    let total_s = started.elapsed().as_secs_f64();
    let records = waited?;
    summarise(&answers, &records, latencies, &sampler_statuses, sent_s, total_s, &args.out)
}

/// Distinct requests round-robin over tenants, then duplicates of earlier ones interleaved.
fn plan(args: &Args, tenants: &[Tenant], nats: bool) -> Vec<Request> {
    let formats = ["csv", "ndjson", "json"];
    let originals: Vec<Request> = (0..args.exports)
        .map(|i| Request {
            tenant: i % tenants.len(),
            channel: if nats && i % 100 < args.nats_percent { Channel::Nats } else { Channel::Http },
            key: format!("load-{i:05}"),
            body: json!({
                "format": formats[i % formats.len()],
                "compression": if i % 4 == 0 { "gzip" } else { "none" },
            }),
        })
        .collect();
    let mut all = Vec::with_capacity(args.exports + args.duplicates);
    let every = (args.exports / args.duplicates.max(1)).max(1);
    let mut duplicated = 0;
    for (i, request) in originals.iter().enumerate() {
        all.push(request.clone());
        if i % every == every - 1 && duplicated < args.duplicates {
            // Repeat one sent a while ago, so some repeats race their original and some follow it.
            all.push(originals[(i * 7919) % (i + 1)].clone());
            duplicated += 1;
        }
    }
    all
}

enum Outcome {
    Http { status: u16, id: Option<String>, problem: Option<String> },
    Published,
    Failed(String),
}

async fn send(
    http: &reqwest::Client,
    nats: Option<&async_nats::jetstream::Context>,
    args: &Args,
    tenant: &Tenant,
    request: &Request,
) -> Outcome {
    match request.channel {
        Channel::Http => {
            let answer = http
                .post(format!("{}/v1/exports", args.api))
                .bearer_auth(&tenant.key)
                .header("Idempotency-Key", &request.key)
                .json(&request.body)
                .send()
                .await;
            match answer {
                Ok(answer) => {
                    let status = answer.status().as_u16();
                    let body: Value = answer.json().await.unwrap_or(Value::Null);
                    Outcome::Http {
                        status,
                        id: body["id"].as_str().map(str::to_owned),
                        problem: body["type"].as_str().map(str::to_owned),
                    }
                }
                Err(err) => Outcome::Failed(format!("HTTP: {err}")),
            }
        }
        Channel::Nats => {
            let (tenant_id, environment_id) = tenant.scope.split_once('/').unwrap_or((&tenant.scope, ""));
            let event = json!({
                "event_id": request.key, "tenant_id": tenant_id, "environment_id": environment_id,
                "request": request.body,
            });
            let payload = serde_json::to_vec(&event).expect("a JSON value serialises");
            let now = unix_now();
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(domain::signature::TIMESTAMP_HEADER, now.to_string().as_str());
            headers.insert(
                domain::signature::SIGNATURE_HEADER,
                domain::signature::sign(tenant.secret.as_bytes(), now, &payload).as_str(),
            );
            let Some(nats) = nats else { return Outcome::Failed("no NATS".into()) };
            match nats.publish_with_headers(args.subject.clone(), headers, payload.into()).await {
                Ok(ack) => match ack.await {
                    Ok(_) => Outcome::Published,
                    Err(err) => Outcome::Failed(format!("NATS ack: {err}")),
                },
                Err(err) => Outcome::Failed(format!("NATS: {err}")),
            }
        }
    }
}

fn record(answers: &mut Answers, request: &Request, outcome: Outcome) {
    match outcome {
        Outcome::Http { status, id, problem } => {
            *answers.by_status.entry(status).or_default() += 1;
            if let Some(problem) = problem {
                *answers.by_problem.entry(problem).or_default() += 1;
            }
            if let Some(id) = id {
                answers.ids.entry((request.tenant, request.key.clone())).or_default().push(id);
            }
        }
        Outcome::Published => answers.nats_published += 1,
        Outcome::Failed(why) => {
            eprintln!("request {} failed: {why}", request.key);
            *answers.by_status.entry(0).or_default() += 1;
        }
    }
}

/// Exports per tenant once none is pending or running and the event consumer has nothing left.
async fn wait_all_terminal(
    http: &reqwest::Client,
    nats: Option<&async_nats::jetstream::Context>,
    args: &Args,
    tenants: &[Tenant],
    timeout: Duration,
) -> anyhow::Result<Vec<Value>> {
    let deadline = Instant::now() + timeout;
    loop {
        let drained = match nats {
            Some(nats) => {
                let mut consumer: async_nats::jetstream::consumer::PullConsumer =
                    nats.get_consumer_from_stream(&args.consumer, &args.stream).await?;
                let info = consumer.info().await?;
                info.num_pending == 0 && info.num_ack_pending == 0
            }
            None => true,
        };
        let mut records = Vec::new();
        for tenant in tenants {
            records.extend(list_all(http, &args.api, tenant).await?);
        }
        let unfinished =
            records.iter().filter(|r| matches!(r["status"].as_str(), Some("pending" | "running"))).count();
        if drained && unfinished == 0 {
            return Ok(records);
        }
        if Instant::now() > deadline {
            bail!("after {timeout:?}: {unfinished} exports unfinished, event consumer drained: {drained}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn list_all(http: &reqwest::Client, api: &str, tenant: &Tenant) -> anyhow::Result<Vec<Value>> {
    let mut items = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut url = format!("{api}/v1/exports?limit=100");
        if let Some(cursor) = &cursor {
            url.push_str(&format!("&cursor={cursor}"));
        }
        let answer = http.get(&url).bearer_auth(&tenant.key).send().await?;
        if answer.status() == 429 {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let page: Value = answer.error_for_status()?.json().await?;
        items.extend(page["items"].as_array().cloned().unwrap_or_default());
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_owned()),
            None => return Ok(items),
        }
    }
}

/// GETs known exports one after another until `done`; latencies in ms and statuses.
async fn sample_gets(
    http: reqwest::Client,
    api: String,
    tenants: Vec<Tenant>,
    known: Vec<(usize, String)>,
    offset: usize,
    done: Arc<AtomicBool>,
) -> (Vec<f64>, BTreeMap<u16, usize>) {
    let mut latencies = Vec::new();
    let mut statuses = BTreeMap::new();
    if known.is_empty() {
        return (latencies, statuses);
    }
    let mut n = offset;
    while !done.load(Ordering::Relaxed) {
        let (tenant, id) = &known[n % known.len()];
        n += 8;
        let t0 = Instant::now();
        let status = match http
            .get(format!("{api}/v1/exports/{id}"))
            .bearer_auth(&tenants[*tenant].key)
            .send()
            .await
        {
            Ok(answer) => {
                let status = answer.status().as_u16();
                let _ = answer.bytes().await;
                status
            }
            Err(_) => 0,
        };
        latencies.push(t0.elapsed().as_secs_f64() * 1000.0);
        *statuses.entry(status).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (latencies, statuses)
}

fn summarise(
    answers: &Answers,
    records: &[Value],
    mut latencies: Vec<f64>,
    sampler_statuses: &BTreeMap<u16, usize>,
    sent_s: f64,
    total_s: f64,
    out: &PathBuf,
) -> anyhow::Result<()> {
    let inconsistent = answers.ids.values().filter(|ids| ids.iter().any(|id| id != &ids[0])).count();
    let mut by_status = BTreeMap::<String, usize>::new();
    for record in records {
        *by_status.entry(record["status"].as_str().unwrap_or("?").to_owned()).or_default() += 1;
    }
    latencies.sort_by(f64::total_cmp);
    let pct = |p: f64| {
        latencies
            .get(((latencies.len() as f64 * p).ceil() as usize).saturating_sub(1))
            .copied()
            .unwrap_or(f64::NAN)
    };
    let summary = json!({
        "http_answers": answers.by_status, "problems": answers.by_problem,
        "nats_published": answers.nats_published, "http_keys_accepted": answers.ids.len(),
        "http_keys_with_two_ids": inconsistent, "records": records.len(), "records_by_status": by_status,
        "get_samples": latencies.len(), "get_statuses": sampler_statuses,
        "get_ms": {"p50": pct(0.5), "p99": pct(0.99), "max": latencies.last()},
        "sent_s": sent_s, "total_s": total_s,
    });
    println!("{}", serde_json::to_string_pretty(&summary)?);
    std::fs::write(out, serde_json::to_vec_pretty(&summary)?)?;
    Ok(())
}

fn unix_now() -> i64 {
    let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    i64::try_from(since.as_secs()).unwrap_or(i64::MAX)
}
