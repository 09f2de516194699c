//! The README quickstart, black-box: the real `userexport` binary with no configuration serves
//! the demo tenant, exports it to CSV, serves the download, and stops cleanly on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use common::{Running, free_port, userexport_binary};

#[tokio::test]
async fn the_zero_configuration_binary_exports_the_demo_tenant_and_stops_gracefully() {
    let data = std::env::temp_dir().join(format!("userexport-quickstart-{}", std::process::id()));
    let port = free_port();
    let mut child = Command::new(userexport_binary())
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"))
        .env("USEREXPORT_DATA_DIR", &data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = BufReader::new(child.stdout.take().unwrap());
    let mut running = Running(child);

    // The banner prints the demo key on the line after its heading.
    let mut lines = stdout.lines().map_while(Result::ok);
    lines.by_ref().find(|l| l.contains("API key")).expect("banner with the demo key");
    let key = lines.next().unwrap().trim().to_owned();
    assert!(key.starts_with("uex_"), "{key}");

    let base = format!("http://127.0.0.1:{port}");
    let http = adapters::contract::http_client();
    let export: serde_json::Value = http
        .post(format!("{base}/v1/exports/sync"))
        .bearer_auth(&key)
        .json(&serde_json::json!({"format": "csv"}))
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(export["status"], "completed", "{export}");
    assert_eq!(export["record_count"], 1000);

    let download = http
        .get(format!("{base}/v1/exports/{}/download", export["id"].as_str().unwrap()))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    assert!(download.headers()["content-type"].to_str().unwrap().starts_with("text/csv"));
    let body = download.bytes().await.unwrap();
    let rows = csv::Reader::from_reader(body.as_ref()).records().collect::<Result<Vec<_>, _>>().unwrap();
    assert_eq!(rows.len(), 1000);
    use sha2::Digest;
    assert_eq!(hex::encode(sha2::Sha256::digest(&body)), export["sha256"].as_str().unwrap());

    let unauthorised = http.get(format!("{base}/v1/exports")).send().await.unwrap();
    assert_eq!(unauthorised.status(), 401);

    // SIGTERM: graceful stop, exit code 0.
    let pid = running.0.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let mut status = None;
    for _ in 0..100 {
        if let Some(s) = running.0.try_wait().unwrap() {
            status = Some(s);
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(status.expect("exits within 10 s of SIGTERM").success());
    let _ = std::fs::remove_dir_all(&data);
}
