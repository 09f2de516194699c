//! Helpers shared by the system tests: the real binary, free ports, the real servers.

#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// Builds the binary (a no-op when it is fresh) and returns its path, as cargo reports it.
pub fn userexport_binary() -> String {
    let output = Command::new(env!("CARGO"))
        .args(["build", "--quiet", "-p", "app", "--bin", "userexport", "--message-format=json"])
        .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .stderr(Stdio::inherit())
        .output()
        .expect("running cargo build");
    assert!(output.status.success(), "cargo build failed");
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find_map(|msg| msg["executable"].as_str().filter(|p| p.ends_with("userexport")).map(str::to_owned))
        .expect("cargo reported no userexport executable")
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
        if let Ok(r) = reqwest::get(url).await
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
