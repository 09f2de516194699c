//! Helpers shared by the system tests: the real binary, free ports, the real servers.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// The API binary, built if needed.
pub fn userexport_binary() -> String {
    binary("app", "userexport")
}

/// The worker binary, built if needed.
pub fn worker_binary() -> String {
    binary("worker", "userexport-worker")
}

/// The `uex` command-line client, built once per test binary (its tests run it many times).
pub fn cli_binary() -> String {
    static PATH: OnceLock<String> = OnceLock::new();
    PATH.get_or_init(|| binary("cli", "uex")).clone()
}

/// Builds `bin` of `package` (a no-op when it is fresh) and returns its path, as cargo reports it.
fn binary(package: &str, bin: &str) -> String {
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", package, "--bin", bin, "--message-format=json"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build");
    assert!(output.status.success(), "cargo build failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|msg| {
            msg["executable"].as_str().filter(|p| p.ends_with(&format!("/{bin}"))).map(str::to_owned)
        })
        .unwrap_or_else(|| panic!("cargo reported no {bin} executable"))
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process killed when the test ends, however it ends.
pub struct Running(pub Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `url` until it answers 200, or panics with the process's fate.
pub async fn wait_ready(url: &str, process: &mut Running) {
    for _ in 0..200 {
        if let Ok(r) = adapters::contract::http_get(url).await
            && r.status().is_success()
        {
            return;
        }
        if let Some(status) = process.0.try_wait().unwrap() {
            panic!("the process exited with {status} before {url} was ready");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("{url} not ready after 20 s");
}

/// The PostgreSQL server tests run against (fails loudly when unreachable, at first use).
pub fn admin_database_url() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// The S3-compatible server tests run against; scripts/test-all.sh starts one.
pub fn s3_endpoint() -> String {
    std::env::var("TEST_S3_ENDPOINT").expect(
        "TEST_S3_ENDPOINT is not set: run scripts/test-all.sh, or start `moto_server -p PORT` and set it",
    )
}

/// Runs `psql` against `url` with `sql`, panicking on failure.
pub fn psql(url: &str, sql: &str) {
    let status = Command::new("psql").args([url, "-qc", sql]).status().expect("psql is required");
    assert!(status.success(), "psql failed: {sql}");
}

/// The Temporal server tests run against; scripts/test-all.sh starts one.
pub fn temporal_address() -> String {
    std::env::var("TEST_TEMPORAL_ADDRESS")
        .expect("TEST_TEMPORAL_ADDRESS is not set: run scripts/test-all.sh, or start `temporal server start-dev` and set it")
}

/// A throwaway database on the test server, dropped with the value.
pub struct TestDb {
    pub url: String,
    name: String,
}

impl TestDb {
    pub fn create(tag: &str) -> Self {
        let admin = admin_database_url();
        let name = format!("userexport_sys_{tag}_{}", std::process::id());
        psql(&admin, &format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
        psql(&admin, &format!("CREATE DATABASE {name}"));
        Self { url: format!("{}/{name}", admin.rsplit_once('/').unwrap().0), name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        psql(&admin_database_url(), &format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name));
    }
}

/// Creates a bucket on the S3 test server.
pub async fn create_bucket(name: &str) {
    let created =
        adapters::contract::http_client().put(format!("{}/{name}", s3_endpoint())).send().await.unwrap();
    assert!(created.status().is_success(), "creating bucket {name}: {}", created.status());
}

/// Keys in `bucket` (S3 ListObjectsV2).
pub async fn bucket_keys(bucket: &str) -> Vec<String> {
    let url = format!("{}/{bucket}?list-type=2", s3_endpoint());
    let body = adapters::contract::http_get(&url).await.unwrap().text().await.unwrap();
    body.split("<Key>").skip(1).filter_map(|s| s.split("</Key>").next()).map(str::to_owned).collect()
}

/// The JSON answer of `request` (sent with `key` as bearer), whatever its status.
pub async fn json_of(request: reqwest::RequestBuilder, key: &str) -> serde_json::Value {
    request.bearer_auth(key).send().await.unwrap().json().await.unwrap()
}
