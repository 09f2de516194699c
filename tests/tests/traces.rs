//! Traces, black-box: the real binaries export OpenTelemetry spans to an OTLP/HTTP receiver named
//! by the standard `OTEL_EXPORTER_OTLP_ENDPOINT`, and one export is one trace, from the HTTP
//! request through the workflow start, the workflow and its activity to the COPY and the upload.
//! Log lines carry the trace's ID.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adapters::contract::otlp_sink::{OtlpSink, ReceivedSpan, by_span_id, lineage};
use common::{
    Running, TestDb, create_bucket, free_port, s3_endpoint, temporal_address, userexport_binary, wait_ready,
    worker_binary,
};
use serde_json::{Value, json};

const KEY: &str = "key-a-0123456789abcdefghijklmn";

/// What a process of the deployment is given: PostgreSQL users (the COPY), traces to `sink`
/// within a tenth of a second, JSON logs at `info` into `log`.
fn env(cmd: &mut Command, db: &TestDb, sink: &OtlpSink, log: &Path) {
    cmd.env("DATABASE_URL", &db.url)
        .env("USEREXPORT_USERS", "postgres")
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", sink.endpoint())
        .env("OTEL_BSP_SCHEDULE_DELAY", "100")
        .env_remove("OTEL_SERVICE_NAME")
        .env("USEREXPORT_LOG_FORMAT", "json")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
}

fn seed(db: &TestDb, users: u64) {
    let status = Command::new(userexport_binary())
        .env("DATABASE_URL", &db.url)
        .env("USEREXPORT_USERS", "postgres")
        .env("RUST_LOG", "warn")
        .args(["seed", "--scope", "acme/prod", "--count", &users.to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

async fn start_api(cmd: &mut Command) -> (Running, String) {
    let port = free_port();
    cmd.env("USEREXPORT_API_KEYS", format!("{KEY}=acme/prod"))
        .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"));
    let mut process = Running(cmd.spawn().unwrap());
    let api = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{api}/readyz"), &mut process).await;
    (process, api)
}

/// Requests one CSV export and waits for it to complete; returns its ID.
async fn export(api: &str) -> String {
    let http = adapters::contract::http_client();
    let accepted =
        common::json_of(http.post(format!("{api}/v1/exports")).json(&json!({"format": "csv"})), KEY).await;
    let id = accepted["id"].as_str().expect("an export ID").to_owned();
    let started = Instant::now();
    loop {
        let export = common::json_of(http.get(format!("{api}/v1/exports/{id}")), KEY).await;
        match export["status"].as_str() {
            Some("completed") => return id,
            Some("failed" | "cancelled") => panic!("the export did not complete: {export}"),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(60), "export still unfinished: {export}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

/// The span of `name` in the trace of `trace`, exactly one.
fn one<'a>(trace: &'a HashMap<String, ReceivedSpan>, name: &str) -> &'a ReceivedSpan {
    let found: Vec<_> = trace.values().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name} span in the trace: {found:?}");
    found[0]
}

/// The trace ID of the request span of `POST /v1/exports`.
fn request_trace(spans: &[ReceivedSpan]) -> Option<String> {
    spans
        .iter()
        .find(|s| s.name == "POST" && s.attribute("path") == Some("/v1/exports"))
        .map(|s| s.trace_id.clone())
}

/// The trace IDs of `log`'s JSON lines.
fn logged_trace_ids(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log)
        .unwrap()
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .filter_map(|line| line["trace_id"].as_str().map(str::to_owned))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_temporal_export_is_one_trace_from_the_request_to_the_copy_and_the_upload() {
    let sink = OtlpSink::start().await;
    let db = TestDb::create("traces_t");
    seed(&db, 500);
    let bucket = format!("traces-{}", std::process::id());
    create_bucket(&bucket).await;
    let task_queue = format!("user-export-traces-{}", std::process::id());
    let logs = tempfile::tempdir().unwrap();
    let deployment = |cmd: &mut Command, log: &str| {
        env(cmd, &db, &sink, &logs.path().join(log));
        cmd.env("USEREXPORT_EXPORTS", "postgres")
            .env("USEREXPORT_STORAGE", "s3")
            .env("USEREXPORT_S3_BUCKET", &bucket)
            .env("AWS_ENDPOINT_URL", s3_endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("TEMPORAL_ADDRESS", temporal_address())
            .env("USEREXPORT_TASK_QUEUE", &task_queue);
    };
    let mut worker = Command::new(worker_binary());
    deployment(&mut worker, "worker.log");
    let _worker = Running(worker.spawn().unwrap());
    let mut api = Command::new(userexport_binary());
    deployment(&mut api, "api.log");
    api.env("USEREXPORT_ORCHESTRATOR", "temporal");
    let (_api, base) = start_api(&mut api).await;

    export(&base).await;
    let spans = sink
        .wait_until("trace with the COPY and the upload", Duration::from_secs(30), |spans| {
            request_trace(spans).is_some_and(|t| {
                ["users.copy", "storage.upload", "RunWorkflow:UserDataExportWorkflow"]
                    .iter()
                    .all(|name| named(spans, name).iter().any(|s| s.trace_id == t))
            })
        })
        .await;
    let trace_id = request_trace(&spans).unwrap();
    let trace = by_span_id(&spans, &trace_id);
    let activity_to_request = [
        "userexport-worker:export_attempt",
        "userexport-worker:RunActivity:ExportUserData",
        "userexport-worker:StartActivity:ExportUserData",
        "userexport-worker:RunWorkflow:UserDataExportWorkflow",
        "userexport-api:StartWorkflow:UserDataExportWorkflow",
        "userexport-api:POST",
    ];
    for leaf in ["users.copy", "storage.upload"] {
        let chain = lineage(one(&trace, leaf), &trace);
        assert_eq!(chain[0], format!("userexport-worker:{leaf}"));
        assert_eq!(chain[1..], activity_to_request, "{leaf}'s ancestors");
    }
    assert_eq!(one(&trace, "storage.upload").attribute("storage"), Some("s3"));
    // An API-started run has its record already, so it skips PrepareExport.
    assert!(named(&spans, "RunActivity:PrepareExport").is_empty());

    for log in ["api.log", "worker.log"] {
        let ids = logged_trace_ids(&logs.path().join(log));
        assert!(ids.contains(&trace_id), "a line of {log} carries trace {trace_id}: {ids:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_in_process_export_is_one_trace_from_the_request_to_the_copy_and_the_upload() {
    let sink = OtlpSink::start().await;
    let db = TestDb::create("traces_i");
    seed(&db, 300);
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("api.log");
    let mut api = Command::new(userexport_binary());
    env(&mut api, &db, &sink, &log);
    api.env("USEREXPORT_DATA_DIR", dir.path().join("data"));
    let (_api, base) = start_api(&mut api).await;

    export(&base).await;
    let spans = sink
        .wait_until("trace with the COPY and the upload", Duration::from_secs(30), |spans| {
            request_trace(spans).is_some_and(|t| {
                ["users.copy", "storage.upload"]
                    .iter()
                    .all(|name| named(spans, name).iter().any(|s| s.trace_id == t))
            })
        })
        .await;
    let trace_id = request_trace(&spans).unwrap();
    let trace = by_span_id(&spans, &trace_id);
    for leaf in ["users.copy", "storage.upload"] {
        let chain = lineage(one(&trace, leaf), &trace);
        assert_eq!(
            chain,
            [format!("userexport-api:{leaf}"), "userexport-api:export".into(), "userexport-api:POST".into()]
        );
    }
    assert_eq!(one(&trace, "storage.upload").attribute("storage"), Some("local"));
    assert_eq!(one(&trace, "users.copy").attribute("db.rows"), Some("300"));
    let ids = logged_trace_ids(&log);
    assert!(ids.contains(&trace_id), "a log line carries trace {trace_id}: {ids:?}");
}

#[test]
fn an_otlp_protocol_that_is_not_served_stops_start_up_naming_it() {
    let output = Command::new(userexport_binary())
        .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318")
        .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
        .env("USEREXPORT_LISTEN", format!("127.0.0.1:{}", free_port()))
        .output()
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc is not supported"), "{stderr}");
}
