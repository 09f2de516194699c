//! Faults under the in-process orchestrator, black-box: the real `userexport` binary on
//! PostgreSQL users and records, while the test stops its database, cuts its storage, kills it,
//! or cancels its exports mid-flight.
//!
//! Every test ends with the same check: exactly one completed export, whose downloaded file has
//! the recorded SHA-256 and size and one row per seeded user; no other object in the bucket (or
//! data directory) than that export's winning `…attempt-N.csv`; every record terminal; and no
//! attempt used up by the fault (`consumed_attempts == 0`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adapters::contract::fault_proxy::FaultProxy;
use adapters::contract::private_pg::PrivatePostgres;
use common::{
    Running, TestDb, bucket_keys, create_bucket, free_port, s3_endpoint, userexport_binary, wait_ready,
};
use serde_json::{Value, json};
use sha2::Digest;

const SCOPE: &str = "acme/prod";
const API_KEY: &str = "key-a-0123456789abcdefghijklmn";
/// Users behind the outage tests: the debug binary exports them in several seconds, so a fault
/// lands well inside the export.
const FAULT_USERS: u64 = 600_000;
/// Users behind the cancel test: enough that 90 % still leaves over a second of export to cancel.
const CANCEL_USERS: u64 = 1_000_000;
/// How long a dependency stays down.
const OUTAGE: Duration = Duration::from_secs(20);

/// Where the API keeps export files.
enum Files {
    /// A bucket on the S3 test server, which the API reaches at `endpoint` (moto itself, or a
    /// fault proxy in front of it); the test lists it on moto directly.
    S3 { bucket: String, endpoint: String },
    /// A data directory.
    Local { dir: tempfile::TempDir },
}

impl Files {
    async fn s3(tag: &str, endpoint: String) -> Self {
        let bucket = format!("fault-ip-{tag}-{}", std::process::id());
        create_bucket(&bucket).await;
        Self::S3 { bucket, endpoint }
    }

    fn local() -> Self {
        Self::Local { dir: tempfile::Builder::new().prefix("userexport-faults.").tempdir().unwrap() }
    }

    /// Every object stored: bucket keys, or files under the data directory (staging files of
    /// unfinished uploads included).
    async fn objects(&self) -> Vec<String> {
        match self {
            Self::S3 { bucket, .. } => bucket_keys(bucket).await,
            Self::Local { dir } => files_under(dir.path()),
        }
    }
}

/// Files under `root`, as sorted `/`-separated relative paths.
fn files_under(root: &Path) -> Vec<String> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let path = entry.path();
            if path.is_dir() {
                dirs.push(path);
            } else {
                files.push(path.strip_prefix(root).unwrap().to_string_lossy().into_owned());
            }
        }
    }
    files.sort();
    files
}

/// The API binary, built once per test process: the tests run in parallel, and each cargo
/// invocation may wait on the build lock.
fn api_binary() -> String {
    static BINARY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BINARY.get_or_init(userexport_binary).clone()
}

/// One deployment of the API: its database (seeded), its storage, its logs. The API process
/// itself is started (and restarted) with [`Deployment::serve`].
struct Deployment {
    /// Names the test in what it prints.
    tag: String,
    started: Instant,
    bin: String,
    database_url: String,
    files: Files,
    users: u64,
    logs: tempfile::TempDir,
}

impl Deployment {
    /// Seeds `users` synthetic users of [`SCOPE`] into `database_url` (migrating it first).
    fn seed(tag: &str, database_url: String, files: Files, users: u64) -> Self {
        let started = Instant::now();
        let logs = tempfile::Builder::new().prefix("userexport-faults-logs.").tempdir().unwrap();
        let tag = tag.to_owned();
        let d = Self { tag, started, bin: api_binary(), database_url, files, users, logs };
        let mut seed = d.command();
        let count = users.to_string();
        let status = seed.args(["seed", "--scope", SCOPE, "--count", &count]).status().unwrap();
        assert!(status.success(), "seeding {users} users failed");
        eprintln!("{}: seeded {users} users in {:?}", d.tag, started.elapsed());
        d
    }

    /// The binary with this deployment's settings: PostgreSQL users and records, quick retries
    /// and reconciliation.
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.env("DATABASE_URL", &self.database_url)
            .env("USEREXPORT_USERS", "postgres")
            .env("USEREXPORT_EXPORTS", "postgres")
            .env("USEREXPORT_API_KEYS", format!("{API_KEY}={SCOPE}"))
            // Polls every 20-50 ms: above the default rate limit of one key.
            .env("USEREXPORT_RATE_LIMIT_PER_S", "1000")
            .env("USEREXPORT_RATE_LIMIT_BURST", "1000")
            .env("USEREXPORT_RECONCILE_INTERVAL_S", "5")
            .env("USEREXPORT_RETRY_INITIAL_INTERVAL_MS", "200")
            .env("USEREXPORT_RETRY_MAX_INTERVAL_S", "2")
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        match &self.files {
            Files::S3 { bucket, endpoint } => cmd
                .env("USEREXPORT_STORAGE", "s3")
                .env("USEREXPORT_S3_BUCKET", bucket)
                .env("AWS_ENDPOINT_URL", endpoint)
                .env("AWS_REGION", "us-east-1")
                .env("AWS_ACCESS_KEY_ID", "test")
                .env("AWS_SECRET_ACCESS_KEY", "test"),
            Files::Local { dir } => {
                cmd.env("USEREXPORT_STORAGE", "local").env("USEREXPORT_DATA_DIR", dir.path())
            }
        };
        cmd
    }

    /// Starts an API process (the `n`th of this deployment) and waits until it is ready.
    async fn serve(&self, n: u32) -> Api {
        let port = free_port();
        let log = self.logs.path().join(format!("api-{n}.log"));
        let mut cmd = self.command();
        cmd.env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"))
            .stderr(std::fs::File::create(&log).unwrap());
        let mut process = Running(cmd.spawn().unwrap());
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/readyz"), &mut process).await;
        Api { url, process, log, http: http_client() }
    }

    /// The end of every test: `id` is the one completed export, its file is exactly what its
    /// record says and holds every user, it is the only object stored, every record is terminal,
    /// and no attempt was used up.
    async fn assert_one_completed_export(&self, api: &Api, id: &str) {
        let export = api.get(id).await;
        assert_eq!(export["status"], "completed", "{export}");
        assert_eq!(export["record_count"], self.users, "{export}");
        assert_eq!(export["consumed_attempts"], 0, "no attempt used up: {export}");

        let body = api.download(id).await;
        assert_eq!(hex::encode(sha2::Sha256::digest(&body)), export["sha256"].as_str().unwrap());
        assert_eq!(body.len() as u64, export["bytes"].as_u64().unwrap());
        let rows = csv::Reader::from_reader(body.as_slice()).records().count() as u64;
        assert_eq!(rows, self.users, "one row per seeded user");

        // The key of the attempt that began the upload: a resumed attempt finishes it.
        let objects = self.files.objects().await;
        let attempts = 1..=export["attempt"].as_u64().unwrap();
        assert!(
            objects.len() == 1
                && attempts
                    .into_iter()
                    .any(|n| objects[0] == format!("{SCOPE}/exports/{id}.attempt-{n}.csv")),
            "exactly one attempt's object: {objects:?}"
        );

        let all = api.list().await;
        for record in &all {
            assert!(is_terminal(record), "every record settles: {record}");
        }
        let completed: Vec<&Value> = all.iter().filter(|e| e["status"] == "completed").collect();
        assert_eq!(completed.len(), 1, "one completed export: {all:?}");
        assert_eq!(completed[0]["id"], id);
        eprintln!("{}: settled; the test took {:?}", self.tag, self.started.elapsed());
    }
}

fn http_client() -> reqwest::Client {
    adapters::contract::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap()
}

fn is_terminal(export: &Value) -> bool {
    matches!(export["status"].as_str(), Some("completed" | "failed" | "cancelled"))
}

/// The work done before a fault was kept: an attempt after the first went on from at least the
/// checkpoint the record showed just before the fault (and the first attempt, if it carried on,
/// lost nothing). Returns the row the last attempt resumed from.
fn assert_work_kept(tag: &str, before: &Value, done: &Value) -> u64 {
    let checkpoint = before["checkpoint_rows"].as_u64().unwrap_or(0);
    let resumed = done["resumed_from_row"].as_u64().unwrap_or(0);
    eprintln!(
        "{tag}: checkpoint at the fault {checkpoint} rows (progress {}); the last attempt ({}) resumed from row {resumed}",
        before["progress"]["rows_written"], done["attempt"]
    );
    if done["attempt"].as_u64() > Some(1) {
        assert!(checkpoint > 0, "{tag}: a checkpoint existed before the fault: {before}");
        assert!(resumed >= checkpoint, "{tag}: resumed from {resumed}, checkpoint was {checkpoint}: {done}");
    }
    resumed
}

/// One API process; its log is shown when the test fails.
struct Api {
    url: String,
    process: Running,
    log: PathBuf,
    http: reqwest::Client,
}

impl Drop for Api {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = std::fs::read_to_string(&self.log).unwrap_or_default();
            let lines: Vec<&str> = log.lines().collect();
            let tail = lines[lines.len().saturating_sub(60)..].join("\n");
            eprintln!("--- last lines of {} ---\n{tail}\n---", self.log.display());
        }
    }
}

impl Api {
    /// Starts a CSV export of every user; returns its ID.
    async fn start_export(&self) -> String {
        let response = self
            .http
            .post(format!("{}/v1/exports", self.url))
            .bearer_auth(API_KEY)
            .json(&json!({"format": "csv"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 202);
        let accepted: Value = response.json().await.unwrap();
        accepted["id"].as_str().unwrap().to_owned()
    }

    /// The export's record, or `null` while the API cannot answer.
    async fn get(&self, id: &str) -> Value {
        let request = self.http.get(format!("{}/v1/exports/{id}", self.url)).bearer_auth(API_KEY);
        match request.send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    }

    /// Every export of the tenant.
    async fn list(&self) -> Vec<Value> {
        let page: Value = self
            .http
            .get(format!("{}/v1/exports?limit=100", self.url))
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        assert!(page["next_cursor"].is_null(), "one page holds them all: {page}");
        page["items"].as_array().unwrap().clone()
    }

    async fn cancel(&self, id: &str) -> (u16, Value) {
        let url = format!("{}/v1/exports/{id}/cancel", self.url);
        let response = self.http.post(url).bearer_auth(API_KEY).send().await.unwrap();
        (response.status().as_u16(), response.json().await.unwrap())
    }

    /// The file of a completed export: through the presigned URL the API redirects to (S3), or
    /// the stream it serves (local storage).
    async fn download(&self, id: &str) -> Vec<u8> {
        let url = format!("{}/v1/exports/{id}/download", self.url);
        let response = self.http.get(url).bearer_auth(API_KEY).send().await.unwrap();
        let response = match response.status().as_u16() {
            307 => {
                let location = response.headers()["location"].to_str().unwrap().to_owned();
                adapters::contract::http_get(location).await.unwrap()
            }
            200 => response,
            other => panic!("download answered {other}"),
        };
        response.error_for_status().unwrap().bytes().await.unwrap().to_vec()
    }

    async fn until(&self, id: &str, done: impl Fn(&Value) -> bool, within: Duration) -> Value {
        let started = Instant::now();
        loop {
            let export = self.get(id).await;
            if done(&export) {
                return export;
            }
            assert!(started.elapsed() < within, "export {id} did not get there in {within:?}: {export}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the export is `percent` % done, and checks it is still running then.
    async fn until_percent(&self, id: &str, percent: u64) -> Value {
        let at = |e: &Value| e["progress"]["percent"].as_u64().is_some_and(|p| p >= percent);
        let export = self.until(id, |e| at(e) || is_terminal(e), Duration::from_secs(120)).await;
        assert_eq!(export["status"], "running", "the export finished before the fault: {export}");
        export
    }
}

/// The S3 test server's `host:port`, for a proxy in front of it.
fn s3_authority() -> String {
    let endpoint = s3_endpoint();
    let rest = endpoint.split_once("://").map_or(endpoint.as_str(), |(_, rest)| rest);
    rest.trim_end_matches('/').to_owned()
}

/// Multipart uploads begun and never completed nor aborted in `bucket` (invisible as objects).
async fn unfinished_uploads(bucket: &str) -> usize {
    let url = format!("{}/{bucket}?uploads", s3_endpoint());
    let body = adapters::contract::http_get(&url).await.unwrap().text().await.unwrap();
    body.matches("<UploadId>").count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_outlives_its_database_stopping_for_20_s_and_uses_up_no_attempt() {
    let pg = PrivatePostgres::start().await.expect("a private PostgreSQL server");
    let files = Files::s3("pgstop", s3_endpoint()).await;
    let d = Deployment::seed("pg-stop", pg.url(), files, FAULT_USERS);
    let api = d.serve(1).await;
    let id = api.start_export().await;

    let before = api.until_percent(&id, 30).await;
    let stopping = Instant::now();
    pg.stop().await.expect("stopping PostgreSQL");
    eprintln!(
        "pg-stop: PostgreSQL stopped at {}% ({} rows) in {:?}; down for {OUTAGE:?}",
        before["progress"]["percent"],
        before["progress"]["rows_written"],
        stopping.elapsed()
    );
    tokio::time::sleep(OUTAGE).await;
    pg.start_again().await.expect("starting PostgreSQL again");
    let back = Instant::now();

    let done = api.until(&id, is_terminal, Duration::from_secs(120)).await;
    eprintln!(
        "pg-stop: {} {:?} after PostgreSQL came back; attempt {}, consumed {}",
        done["status"],
        back.elapsed(),
        done["attempt"],
        done["consumed_attempts"]
    );
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["attempt"].as_u64().unwrap() >= 2, "the outage broke the first run: {done}");
    assert_work_kept("pg-stop", &before, &done);
    d.assert_one_completed_export(&api, &id).await;
}

/// The API reaches moto through a fault proxy, which `fault` breaks for [`OUTAGE`] at 30 %.
async fn storage_outage(tag: &str, fault: impl Fn(&FaultProxy)) {
    let db = TestDb::create(tag);
    let proxy = FaultProxy::start(s3_authority()).await;
    let files = Files::s3(tag, format!("http://127.0.0.1:{}", proxy.port())).await;
    let d = Deployment::seed(tag, db.url.clone(), files, FAULT_USERS);
    let api = d.serve(1).await;
    let id = api.start_export().await;

    let before = api.until_percent(&id, 30).await;
    fault(&proxy);
    eprintln!(
        "{tag}: storage broken at {}% ({} rows); down for {OUTAGE:?}",
        before["progress"]["percent"], before["progress"]["rows_written"]
    );
    tokio::time::sleep(OUTAGE).await;
    let during = api.get(&id).await;
    proxy.restore();
    let back = Instant::now();

    let done = api.until(&id, is_terminal, Duration::from_secs(120)).await;
    eprintln!(
        "{tag}: {} {:?} after storage came back; at the end of the outage: {} at {} rows, error {}; \
         attempt {}, consumed {}; proxy refused {} connections",
        done["status"],
        back.elapsed(),
        during["status"],
        during["progress"]["rows_written"],
        during["error"],
        done["attempt"],
        done["consumed_attempts"],
        proxy.refused()
    );
    assert_eq!(done["status"], "completed", "{done}");
    assert_work_kept(tag, &before, &done);
    d.assert_one_completed_export(&api, &id).await;
    if let Files::S3 { bucket, .. } = &d.files {
        eprintln!(
            "{tag}: unfinished multipart uploads left in the bucket: {}",
            unfinished_uploads(bucket).await
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_outlives_storage_refusing_connections_for_20_s() {
    storage_outage("ipcut", FaultProxy::cut).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_outlives_storage_going_silent_for_20_s() {
    storage_outage("ipblackhole", FaultProxy::blackhole).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_resumes_in_the_next_process_when_the_api_is_killed() {
    let db = TestDb::create("ipkill");
    let files = Files::s3("ipkill", s3_endpoint()).await;
    let d = Deployment::seed("kill", db.url.clone(), files, FAULT_USERS);
    let mut first = d.serve(1).await;
    let id = first.start_export().await;

    let before = first.until_percent(&id, 40).await;
    first.process.0.kill().unwrap(); // SIGKILL
    first.process.0.wait().unwrap();
    let killed = Instant::now();
    eprintln!(
        "kill: API SIGKILLed at {}% ({} rows)",
        before["progress"]["percent"], before["progress"]["rows_written"]
    );

    let second = d.serve(2).await;
    let ready = killed.elapsed();
    let resumed = second
        .until(&id, |e| e["attempt"].as_u64() >= Some(2) || is_terminal(e), Duration::from_secs(30))
        .await;
    let resumed_after = killed.elapsed();
    let done = second.until(&id, is_terminal, Duration::from_secs(120)).await;
    eprintln!(
        "kill: next process ready {ready:?} after the kill, attempt {} running {resumed_after:?} after it, \
         {} {:?} after it; consumed {}",
        resumed["attempt"],
        done["status"],
        killed.elapsed(),
        done["consumed_attempts"]
    );
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["attempt"], 2, "the next process ran the second attempt: {done}");
    let resumed = assert_work_kept("kill", &before, &done);
    assert!(resumed > 0, "the restarted process resumed from the checkpoint, not row 0: {done}");
    d.assert_one_completed_export(&second, &id).await;

    // Byte for byte what an uninterrupted export of the same users gives.
    let again = second.start_export().await;
    let whole = second.until(&again, is_terminal, Duration::from_secs(120)).await;
    assert_eq!((&whole["sha256"], &whole["bytes"]), (&done["sha256"], &done["bytes"]), "{whole}\n{done}");
    assert_eq!(whole["resumed_from_row"], 0);
    if let Files::S3 { bucket, .. } = &d.files {
        eprintln!(
            "kill: unfinished multipart uploads left in the bucket: {}",
            unfinished_uploads(bucket).await
        );
    }
}

/// Backends running the export's `COPY` of users on `database_url`.
async fn copies_running(database_url: &str) -> u64 {
    let out = tokio::process::Command::new("psql")
        .args([database_url, "-Atc"])
        .arg(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() \
             AND state = 'active' AND query LIKE 'COPY (SELECT id, email%'",
        )
        .output()
        .await
        .expect("psql is required");
    assert!(out.status.success(), "psql: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_stops_the_running_attempt_within_a_second_and_leaves_no_object() {
    let db = TestDb::create("ipcancel");
    let d = Deployment::seed("cancel", db.url.clone(), Files::local(), CANCEL_USERS);
    let Files::Local { dir } = &d.files else { unreachable!() };
    let api = d.serve(1).await;

    for percent in [10, 50, 90] {
        let id = api.start_export().await;
        let before = api.until_percent(&id, percent).await;
        let staging = files_under(dir.path());
        assert!(
            staging.iter().any(|f| f.contains(&id) && f.contains('#')),
            "the upload is under way before the cancel: {staging:?}"
        );
        assert_eq!(copies_running(&d.database_url).await, 1, "the users' COPY runs before the cancel");

        let sent = Instant::now();
        let (status, cancelled) = api.cancel(&id).await;
        let answered = Instant::now();
        assert_eq!((status, cancelled["status"].as_str()), (202, Some("cancelled")), "{cancelled}");

        // The attempt has stopped once its upload is aborted (the staging file removed) and its
        // users' COPY has ended.
        let (mut upload_gone, mut copy_gone) = (None, None);
        while upload_gone.is_none() || copy_gone.is_none() {
            if upload_gone.is_none() && !files_under(dir.path()).iter().any(|f| f.contains(&id)) {
                upload_gone = Some(answered.elapsed());
            }
            if copy_gone.is_none() && copies_running(&d.database_url).await == 0 {
                copy_gone = Some(answered.elapsed());
            }
            assert!(answered.elapsed() < Duration::from_secs(10), "the attempt never stopped");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let (upload_gone, copy_gone) = (upload_gone.unwrap(), copy_gone.unwrap());
        eprintln!(
            "cancel at {}% ({} rows): 202 in {:?}; after it, upload aborted in {upload_gone:?}, \
             users' COPY ended in {copy_gone:?}",
            before["progress"]["percent"],
            before["progress"]["rows_written"],
            answered - sent
        );
        assert!(upload_gone.max(copy_gone) < Duration::from_secs(1), "the attempt stops within 1 s");

        // It stays cancelled, and nothing writes to its record any more: a live attempt would
        // try a progress write every 500 ms.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        let after = api.get(&id).await;
        assert_eq!(after["status"], "cancelled", "{after}");
        assert_eq!(after["updated_at"], cancelled["updated_at"], "{after}");
        assert_eq!(after["progress"], cancelled["progress"], "{after}");
        let left: Vec<String> = files_under(dir.path()).into_iter().filter(|f| f.contains(&id)).collect();
        assert!(left.is_empty(), "a cancelled export leaves no object: {left:?}");
    }

    let id = api.start_export().await;
    let done = api.until(&id, is_terminal, Duration::from_secs(120)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let (status, problem) = api.cancel(&id).await;
    assert_eq!(status, 409, "{problem}");
    assert!(problem["detail"].as_str().unwrap().contains("already completed"), "{problem}");
    assert_eq!(api.get(&id).await["status"], "completed");
    d.assert_one_completed_export(&api, &id).await;
}
