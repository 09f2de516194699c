//! The `uex` client against the real API binary (embedded mode, a free port, known keys): each
//! command's effect, its text for people and its `--json` for scripts, its exit codes, and the
//! progress bar and Ctrl-C question in a pseudo-terminal (util-linux `script`).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Running, cli_binary, create_bucket, free_port, s3_endpoint, userexport_binary, wait_ready};
use serde_json::Value;
use sha2::Digest;

const KEY: &str = "uex-cli-tenant-key-0123456789abcdefgh";
const OPERATOR_KEY: &str = "uex-cli-operator-key-0123456789abcdefgh";
/// Users of an export that runs for several seconds in a debug build: long enough to watch, cancel
/// or interrupt it.
const MANY_USERS: &str = "400000";

/// The API binary in its embedded mode, tenant `acme/prod` with [`KEY`], operator [`OPERATOR_KEY`].
struct Api {
    url: String,
    _data: tempfile::TempDir,
    _process: Running,
}

async fn api(users: &str) -> Api {
    api_with(users, &[]).await
}

async fn api_with(users: &str, env: &[(&str, String)]) -> Api {
    let data = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut command = Command::new(userexport_binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"))
        .env("USEREXPORT_DATA_DIR", data.path())
        .env("USEREXPORT_API_KEYS", format!("{KEY}=acme/prod"))
        .env("USEREXPORT_OPERATOR_KEYS", format!("{OPERATOR_KEY}=batch"))
        .env("USEREXPORT_DEMO_USERS", users)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    for (name, value) in env {
        command.env(name, value);
    }
    let mut process = Running(command.spawn().unwrap());
    let url = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{url}/readyz"), &mut process).await;
    Api { url, _data: data, _process: process }
}

/// What a run of `uex` left behind.
struct Run {
    code: i32,
    stdout: Vec<u8>,
    stderr: String,
}

impl Run {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout)
            .unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {}\nstderr: {}", self.text(), self.stderr))
    }

    /// Asserts the exit code, showing the output when it differs.
    fn expect(self, code: i32) -> Self {
        assert_eq!(self.code, code, "stdout: {}\nstderr: {}", self.text(), self.stderr);
        self
    }
}

/// `uex` configured for `api` with the tenant key, stdin closed.
fn uex_command(api: &Api) -> Command {
    let mut command = Command::new(cli_binary());
    command
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USEREXPORT_URL", &api.url)
        .env("USEREXPORT_API_KEY", KEY)
        .stdin(Stdio::null());
    command
}

fn run(command: &mut Command, args: &[&str]) -> Run {
    let output = command.args(args).output().unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: output.stdout,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn uex(api: &Api, args: &[&str]) -> Run {
    run(&mut uex_command(api), args)
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(bytes))
}

/// Requests an export of every user without waiting and returns its ID.
fn start_export(api: &Api) -> String {
    let started = uex(api, &["export", "create", "--json"]).expect(0).json();
    assert_eq!(started["status"], "pending", "{started}");
    started["id"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_export_is_created_waited_for_and_downloaded_with_its_checksum_verified() {
    let api = api("1000").await;
    let done =
        uex(&api, &["export", "create", "--fields", "id,email", "--status", "active", "--wait", "--json"])
            .expect(0)
            .json();
    assert_eq!(done["status"], "completed", "{done}");
    assert_eq!(done["fields"], serde_json::json!(["id", "email"]));
    assert_eq!(done["user_filters"]["status"], serde_json::json!(["active"]));
    let id = done["id"].as_str().unwrap();
    let sha256 = done["sha256"].as_str().unwrap();

    // To a named file: written whole under its name, checksum verified and said so.
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("users.csv");
    let saved = uex(&api, &["export", "download", id, "-o", target.to_str().unwrap()]).expect(0);
    assert!(saved.text().contains("SHA-256 verified"), "{}", saved.text());
    let file = std::fs::read(&target).unwrap();
    assert_eq!(sha256_hex(&file), sha256);
    assert!(file.starts_with(b"id,email\r\n"), "a CSV of the two fields");
    let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["users.csv"], "no temporary file left behind");

    // To stdout: the same bytes, the verdict on stderr.
    let piped = uex(&api, &["export", "download", id, "-o", "-"]).expect(0);
    assert_eq!(piped.stdout, file);
    assert!(piped.stderr.contains("SHA-256 verified"), "{}", piped.stderr);

    // No -o: the API's file name, in the working directory; --json says where.
    let here = tempfile::tempdir().unwrap();
    let json =
        run(uex_command(&api).current_dir(here.path()), &["export", "download", id, "--json"]).expect(0);
    let json = json.json();
    assert_eq!(json["sha256_verified"], true);
    assert_eq!(std::fs::read(here.path().join(format!("export-{id}.csv"))).unwrap(), file);

    // Text for people.
    let shown = uex(&api, &["export", "get", id]).expect(0).text();
    assert!(shown.contains(&format!("Export {id}  completed")), "{shown}");
    assert!(shown.contains(sha256) && shown.contains("uex export download"), "{shown}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_list_pages_through_the_cursor() {
    let api = api("50").await;
    let ids: BTreeSet<String> = (0..3).map(|_| start_export(&api)).collect();

    let everything = uex(&api, &["export", "list", "--limit", "1", "--all", "--json"]).expect(0).json();
    let listed: BTreeSet<String> = everything["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(listed, ids);
    assert_eq!(everything["next_cursor"], Value::Null);

    let first = uex(&api, &["export", "list", "--limit", "2"]).expect(0);
    assert_eq!(first.text().lines().count(), 3, "a heading and two exports: {}", first.text());
    assert!(first.text().starts_with("ID "), "{}", first.text());
    let cursor = first.stderr.split("--cursor ").nth(1).expect("a hint to the next page").trim().to_owned();
    let second =
        uex(&api, &["export", "list", "--limit", "2", "--cursor", &cursor, "--json"]).expect(0).json();
    assert_eq!(second["items"].as_array().unwrap().len(), 1);

    let none = uex(&api, &["export", "list", "--status", "failed"]).expect(0);
    assert_eq!(none.text().trim(), "No exports.");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_export_ends_cancelled_with_its_exit_code() {
    let api = api(MANY_USERS).await;
    let id = start_export(&api);
    let cancelled = uex(&api, &["export", "cancel", &id]).expect(0);
    assert!(cancelled.text().starts_with("Cancelled."), "{}", cancelled.text());

    let waited = uex(&api, &["export", "wait", &id, "--json"]).expect(4);
    assert_eq!(waited.json()["status"], "cancelled");
    assert!(waited.stderr.contains(&format!("export {id} was cancelled")), "{}", waited.stderr);

    // Nothing to download, nothing more to cancel: conflicts.
    let download = uex(&api, &["export", "download", &id]).expect(9);
    assert!(download.stderr.contains("Export not ready (409)"), "{}", download.stderr);
    let again = uex(&api, &["export", "cancel", &id]).expect(9);
    assert!(again.stderr.contains("Export already finished (409)"), "{}", again.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn problems_are_printed_one_line_per_field_and_exit_with_their_codes() {
    let api = api("10").await;

    // 422: every invalid field on its own line, named.
    let invalid = uex(
        &api,
        &["export", "create", "--retention-days", "9999", "--email-domain", "not a domain", "--limit", "0"],
    )
    .expect(2);
    let lines: Vec<&str> = invalid.stderr.lines().collect();
    assert!(lines[0].starts_with("uex: Invalid request (422)"), "{}", invalid.stderr);
    for field in ["retention_days: ", "user_filters.email_domain: ", "limit: "] {
        assert_eq!(
            lines.iter().filter(|l| l.trim_start().starts_with(field)).count(),
            1,
            "{field} in {}",
            invalid.stderr
        );
    }
    assert!(invalid.stdout.is_empty());

    // Refused by the client itself: clap's usage error, the same code.
    uex(&api, &["export", "create", "--format", "xml"]).expect(2);

    // Keys: a wrong one, none at all.
    let wrong = run(uex_command(&api).env("USEREXPORT_API_KEY", "wrong-key"), &["export", "list"]).expect(6);
    assert!(wrong.stderr.contains("Authentication required (401)"), "{}", wrong.stderr);
    let missing = run(uex_command(&api).env_remove("USEREXPORT_API_KEY"), &["export", "list"]).expect(6);
    assert!(missing.stderr.contains("USEREXPORT_API_KEY"), "{}", missing.stderr);

    // Not found, and an API that is not there.
    let unknown = uex(&api, &["export", "get", "0193a2b4-0000-7000-8000-000000000001"]).expect(5);
    assert!(unknown.stderr.contains("Export not found (404)"), "{}", unknown.stderr);
    let nobody = format!("http://127.0.0.1:{}", free_port());
    let unreachable = run(uex_command(&api).env("USEREXPORT_URL", &nobody), &["export", "list"]).expect(7);
    assert!(
        unreachable.stderr.contains(&format!("cannot reach the API at {nobody}")),
        "{}",
        unreachable.stderr
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schedules_are_created_listed_paused_triggered_and_deleted() {
    let api = api("100").await;
    let created = uex(
        &api,
        &[
            "schedule",
            "create",
            "--cron",
            "0 3 * * MON-FRI",
            "--timezone",
            "Europe/Paris",
            "--note",
            "nightly",
        ],
    )
    .expect(0);
    assert!(created.text().contains("cron       0 3 * * MON-FRI (Europe/Paris)"), "{}", created.text());
    let schedule = uex(&api, &["schedule", "list", "--json"]).expect(0).json();
    let items = schedule["items"].as_array().unwrap();
    assert_eq!(items.len(), 1);
    let id = items[0]["id"].as_str().unwrap().to_owned();
    assert_eq!(items[0]["note"], "nightly");

    let paused = uex(&api, &["schedule", "pause", &id, "--json"]).expect(0).json();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next_fire_at"], Value::Null);
    let listed = uex(&api, &["schedule", "list"]).expect(0).text();
    assert!(listed.lines().any(|l| l.starts_with(&id) && l.contains("paused")), "{listed}");
    let resumed = uex(&api, &["schedule", "resume", &id, "--json"]).expect(0).json();
    assert_eq!(resumed["paused"], false);

    let fired = uex(&api, &["schedule", "trigger", &id, "--wait", "--json"]).expect(0).json();
    assert_eq!(fired["status"], "completed", "{fired}");
    assert_eq!(fired["record_count"], 100);

    uex(&api, &["schedule", "delete", &id]).expect(0);
    uex(&api, &["schedule", "get", &id]).expect(5);
    let bad = uex(&api, &["schedule", "create", "--cron", "0 25 * * *"]).expect(2);
    assert!(bad.stderr.lines().any(|l| l.trim_start().starts_with("cron: ")), "{}", bad.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_runs_with_the_operator_key() {
    let api = api("100").await;
    let operator = || {
        let mut command = uex_command(&api);
        command.env("USEREXPORT_OPERATOR_KEY", OPERATOR_KEY);
        command
    };
    let created =
        run(&mut operator(), &["batch", "create", "--targets", "acme/prod", "--gzip", "--json"]).expect(0);
    let id = created.json()["id"].as_str().unwrap().to_owned();

    let deadline = Instant::now() + Duration::from_secs(60);
    let batch = loop {
        let batch = run(&mut operator(), &["batch", "get", &id, "--json"]).expect(0).json();
        if batch["status"] == "finished" {
            break batch;
        }
        assert!(Instant::now() < deadline, "batch not finished: {batch}");
        std::thread::sleep(Duration::from_millis(300));
    };
    assert_eq!(batch["completed"], 1, "{batch}");
    let export_id = batch["results"][0]["export_id"].as_str().unwrap();
    let text = run(&mut operator(), &["batch", "get", &id]).expect(0).text();
    assert!(
        text.lines().any(|l| l.contains("acme/prod") && l.contains(export_id) && l.ends_with("completed")),
        "{text}"
    );

    // The tenant reads its export of the batch with its own key.
    let export = uex(&api, &["export", "get", export_id, "--json"]).expect(0).json();
    assert_eq!(export["compression"], "gzip");

    // A tenant key is not an operator key; no operator key at all is refused before sending.
    let forbidden = uex(&api, &["batch", "get", &id, "--operator-key", KEY]).expect(6);
    assert!(forbidden.stderr.contains("Forbidden (403)"), "{}", forbidden.stderr);
    let missing = uex(&api, &["batch", "get", &id]).expect(6);
    assert!(missing.stderr.contains("USEREXPORT_OPERATOR_KEY"), "{}", missing.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_download_follows_the_307_to_the_storage() {
    let bucket = format!("uex-cli-{}", std::process::id());
    create_bucket(&bucket).await;
    let env = [
        ("USEREXPORT_STORAGE", "s3".to_owned()),
        ("USEREXPORT_S3_BUCKET", bucket),
        ("AWS_ENDPOINT_URL", s3_endpoint()),
        ("AWS_REGION", "us-east-1".to_owned()),
        ("AWS_ACCESS_KEY_ID", "test".to_owned()),
        ("AWS_SECRET_ACCESS_KEY", "test".to_owned()),
    ];
    let api = api_with("500", &env).await;
    let done = uex(&api, &["export", "create", "--format", "ndjson", "--wait", "--json"]).expect(0).json();
    let id = done["id"].as_str().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let saved = uex(&api, &["export", "download", id, "-o", dir.path().to_str().unwrap()]).expect(0);
    assert!(saved.stderr.contains("redirect (307) to the storage at 127.0.0.1"), "{}", saved.stderr);
    let file = std::fs::read(dir.path().join(format!("export-{id}.ndjson"))).unwrap();
    assert_eq!(sha256_hex(&file), done["sha256"].as_str().unwrap());
    assert_eq!(file.iter().filter(|b| **b == b'\n').count(), 500);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_terminal_there_is_no_bar_and_ctrl_c_leaves_the_export_running() {
    let api = api(MANY_USERS).await;
    let id = start_export(&api);
    let waiting = uex_command(&api)
        .args(["export", "wait", &id])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let pid = waiting.id().to_string();
    assert!(Command::new("kill").args(["-INT", &pid]).status().unwrap().success());
    let output = waiting.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(130), "{stderr}");
    assert!(stderr.contains(&format!("still running; follow it with `uex export wait {id}`")), "{stderr}");
    assert!(!stderr.contains('\r') && !stderr.contains('\u{1b}'), "no bar drawn: {stderr:?}");
    assert!(output.stdout.is_empty());
    let export = uex(&api, &["export", "get", &id, "--json"]).expect(0).json();
    assert!(["running", "completed"].contains(&export["status"].as_str().unwrap()), "{export}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_terminal_the_progress_bar_moves_to_completion() {
    let api = api(MANY_USERS).await;
    let pty = Pty::spawn(&api, &["export", "create", "--format", "ndjson", "--wait"]);
    let (code, screen) = pty.finish(Duration::from_secs(300));
    assert_eq!(code, 0, "{screen}");
    let percents = percents(&screen);
    let partial: Vec<_> = percents.iter().filter(|p| **p < 100).collect();
    assert!(partial.len() >= 2, "at least two renderings before the end, saw {percents:?}:\n{screen}");
    assert!(percents.contains(&100), "{screen}");
    assert!(screen.contains("rows/s") && screen.contains("ETA"), "throughput and ETA shown:\n{screen}");
    assert!(screen.contains("400,000/400,000 rows"), "{screen}");
    assert!(screen.contains("completed"), "{screen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_terminal_ctrl_c_asks_and_cancels_the_export() {
    let api = api(MANY_USERS).await;
    let mut pty = Pty::spawn(&api, &["export", "create", "--format", "ndjson", "--wait"]);
    pty.wait_for("the bar", Duration::from_secs(60), |screen| !percents(screen).is_empty());
    pty.send(b"\x03");
    pty.wait_for("the question", Duration::from_secs(10), |screen| screen.contains("[y/N]"));
    pty.send(b"y\n");
    let (code, screen) = pty.finish(Duration::from_secs(30));
    assert_eq!(code, 4, "{screen}");
    assert!(screen.contains("was cancelled"), "{screen}");
    let id = screen.split("Cancel export ").nth(1).and_then(|s| s.split('?').next()).expect("the question");
    let export = uex(&api, &["export", "get", id, "--json"]).expect(0).json();
    assert_eq!(export["status"], "cancelled");
}

/// Every `N%` the screen showed.
fn percents(screen: &str) -> BTreeSet<u32> {
    screen
        .match_indices('%')
        .filter_map(|(at, _)| {
            let digits: String = screen[..at]
                .chars()
                .rev()
                .take_while(char::is_ascii_digit)
                .collect::<Vec<_>>()
                .into_iter()
                .rev()
                .collect();
            digits.parse().ok()
        })
        .collect()
}

/// `uex` in a pseudo-terminal: util-linux `script` gives it one (every Debian has it: it is
/// Essential), forwards what the test writes as keystrokes and copies the screen's bytes out.
struct Pty {
    child: Child,
    stdin: ChildStdin,
    screen: Arc<Mutex<Vec<u8>>>,
}

impl Pty {
    fn spawn(api: &Api, args: &[&str]) -> Self {
        let uex = cli_binary();
        let line: Vec<String> =
            std::iter::once(uex.as_str()).chain(args.iter().copied()).map(shell_quote).collect();
        let mut child = Command::new("script")
            .args(["-qefc", &format!("stty cols 160 rows 40 && exec {}", line.join(" ")), "/dev/null"])
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("TERM", "xterm-256color")
            .env("USEREXPORT_URL", &api.url)
            .env("USEREXPORT_API_KEY", KEY)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("util-linux `script`");
        let stdin = child.stdin.take().unwrap();
        let mut stdout = child.stdout.take().unwrap();
        let screen = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&screen);
        std::thread::spawn(move || {
            let mut buf = [0_u8; 4096];
            while let Ok(n @ 1..) = stdout.read(&mut buf) {
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Self { child, stdin, screen }
    }

    /// What the terminal showed so far, escape sequences removed, each redraw on its own line.
    fn screen(&self) -> String {
        strip_escapes(&String::from_utf8_lossy(&self.screen.lock().unwrap())).replace('\r', "\n")
    }

    fn wait_for(&self, what: &str, timeout: Duration, seen: impl Fn(&str) -> bool) {
        let deadline = Instant::now() + timeout;
        while !seen(&self.screen()) {
            assert!(Instant::now() < deadline, "no {what} within {timeout:?}:\n{}", self.screen());
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn send(&mut self, keys: &[u8]) {
        self.stdin.write_all(keys).unwrap();
        self.stdin.flush().unwrap();
    }

    /// The exit code and the whole screen, once `uex` has exited.
    fn finish(mut self, timeout: Duration) -> (i32, String) {
        let deadline = Instant::now() + timeout;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("uex still running after {timeout:?}:\n{}", self.screen());
            }
            std::thread::sleep(Duration::from_millis(100));
        };
        // The reader thread may still be copying the last bytes.
        std::thread::sleep(Duration::from_millis(300));
        (status.code().unwrap_or(-1), self.screen())
    }
}

fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', r"'\''"))
}

/// `text` without ANSI escape sequences (CSI `ESC [ ... final`, and two-byte `ESC x`).
fn strip_escapes(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
            continue;
        }
        if chars.next_if_eq(&'[').is_some() {
            // Parameters and intermediates, up to the final byte (@ to ~).
            for c in chars.by_ref() {
                if ('@'..='~').contains(&c) {
                    break;
                }
            }
        } else {
            chars.next();
        }
    }
    out
}

#[test]
fn escapes_and_percents_are_read_from_a_screen() {
    let screen =
        strip_escapes("\u{1b}[2K\r\u{1b}[32m⠁\u{1b}[0m running [==>  ]  5% 1/20 rows\r 45% x\u{1b}7");
    assert_eq!(screen, "\r⠁ running [==>  ]  5% 1/20 rows\r 45% x");
    assert_eq!(percents(&screen), BTreeSet::from([5, 45]));
}
