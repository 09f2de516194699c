//! Events, black-box: the API binary in distributed mode (Temporal orchestrator, a worker process,
//! PostgreSQL records) consuming `ExportRequested` from NATS JetStream, and the signed webhook
//! for the same event. Published with the plain NATS protocol, as the README shows.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{Running, TestDb, free_port, temporal_address, userexport_binary, wait_ready, worker_binary};
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};

const SECRET: &str = "system-test-webhook-secret-0123";

fn nats_address() -> String {
    let url = std::env::var("TEST_NATS_URL")
        .expect("TEST_NATS_URL is not set: run scripts/test-all.sh, or start `nats-server -js` and set it");
    url.trim_start_matches("nats://").to_owned()
}

/// Publishes `payload` on `subject` with the plain NATS protocol (`HPUB`, with `headers`) and
/// waits for the server's PONG.
fn nats_publish(subject: &str, headers: &[(&str, &str)], payload: &[u8]) {
    let mut stream = TcpStream::connect(nats_address()).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut header_block = String::from("NATS/1.0\r\n");
    for (name, value) in headers {
        header_block.push_str(&format!("{name}: {value}\r\n"));
    }
    header_block.push_str("\r\n");
    let total = header_block.len() + payload.len();
    let mut frame = format!(
        "CONNECT {{\"verbose\":false,\"headers\":true}}\r\nHPUB {subject} {} {total}\r\n{header_block}",
        header_block.len()
    )
    .into_bytes();
    frame.extend_from_slice(payload);
    frame.extend_from_slice(b"\r\nPING\r\n");
    stream.write_all(&frame).unwrap();
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    loop {
        line.clear();
        reader.read_line(&mut line).unwrap();
        assert!(!line.starts_with("-ERR"), "NATS refused the publish: {line}");
        if line.starts_with("PONG") {
            return;
        }
    }
}

fn signed(body: &[u8]) -> (String, String) {
    let timestamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs();
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(SECRET.as_bytes()).unwrap();
    mac.update(format!("{timestamp}.").as_bytes());
    mac.update(body);
    (timestamp.to_string(), format!("v1={}", hex::encode(mac.finalize().into_bytes())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_from_nats_and_the_webhook_runs_once_on_a_temporal_worker() {
    let db = TestDb::create("events");
    let data = std::env::temp_dir().join(format!("userexport-events-{}", std::process::id()));
    let tag = format!("{}-{}", std::process::id(), free_port());
    let subject = format!("sys-events.{tag}.export-requested");
    let env = |cmd: &mut Command| {
        cmd.env("DATABASE_URL", &db.url)
            .env("USEREXPORT_EXPORTS", "postgres")
            .env("USEREXPORT_STORAGE", "local")
            .env("USEREXPORT_DATA_DIR", &data)
            .env("USEREXPORT_DEMO_USERS", "300")
            .env("USEREXPORT_DEMO_SCOPES", "acme/prod")
            .env("TEMPORAL_ADDRESS", temporal_address())
            .env("USEREXPORT_TASK_QUEUE", format!("sys-events-{tag}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
    };
    let port = free_port();
    let mut api = Command::new(userexport_binary());
    env(&mut api);
    api.env("USEREXPORT_ORCHESTRATOR", "temporal")
        .env("USEREXPORT_API_KEYS", "key-a-0123456789abcdefghijklmn=acme/prod")
        .env("USEREXPORT_TENANTS", format!(r#"[{{"scope":"acme/prod","webhook_secret":"{SECRET}"}}]"#))
        .env("USEREXPORT_NATS_URL", format!("nats://{}", nats_address()))
        .env("USEREXPORT_NATS_STREAM", format!("SYS_EVENTS_{}", tag.replace('-', "_")))
        .env("USEREXPORT_NATS_SUBJECT", &subject)
        .env("USEREXPORT_NATS_DLQ_SUBJECT", format!("sys-events.{tag}.dlq"))
        .env("USEREXPORT_NATS_CONSUMER", format!("sys-events-{tag}"))
        .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"));
    let mut api = Running(api.spawn().unwrap());
    let base = format!("http://127.0.0.1:{port}");
    wait_ready(&format!("{base}/readyz"), &mut api).await;
    let mut worker = Command::new(worker_binary());
    env(&mut worker);
    let _worker = Running(worker.spawn().unwrap());
    let http = adapters::contract::http_client();

    let event_id = format!("evt-sys-{tag}");
    let body =
        serde_json::to_vec(&json!({"event_id": event_id, "tenant_id": "acme", "environment_id": "prod",
                                          "request": {"format": "csv"}}))
        .unwrap();
    // An unsigned event naming the tenant is dead-lettered and starts nothing.
    let forged = serde_json::to_vec(&json!({"event_id": format!("evt-forged-{tag}"), "tenant_id": "acme",
                                   "environment_id": "prod", "request": {"format": "csv"}}))
    .unwrap();
    nats_publish(&subject, &[], &forged);
    for _ in 0..2 {
        let (timestamp, signature) = signed(&body);
        let headers =
            [("X-Userexport-Timestamp", timestamp.as_str()), ("X-Userexport-Signature", signature.as_str())];
        nats_publish(&subject, &headers, &body);
    }

    let started = Instant::now();
    let export = loop {
        let list =
            common::json_of(http.get(format!("{base}/v1/exports")), "key-a-0123456789abcdefghijklmn").await;
        let items = list["items"].as_array().unwrap().clone();
        assert!(items.len() <= 1, "one event, one export: {list}");
        if let Some(export) = items.first().filter(|e| e["status"] == "completed") {
            break export.clone();
        }
        assert!(started.elapsed() < Duration::from_secs(60), "the event never completed an export: {list}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(export["record_count"], 300, "{export}");

    // The same event over the webhook is the same export; a bad signature is refused.
    let (timestamp, signature) = signed(&body);
    let url = format!("{base}/v1/events/export-requested");
    let replay = http
        .post(&url)
        .header("content-type", "application/json")
        .header("X-Userexport-Tenant", "acme/prod")
        .header("X-Userexport-Timestamp", &timestamp)
        .header("X-Userexport-Signature", &signature)
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(replay.status(), 200);
    assert_eq!(replay.json::<Value>().await.unwrap()["id"], export["id"]);
    let refused = http
        .post(&url)
        .header("X-Userexport-Tenant", "acme/prod")
        .header("X-Userexport-Timestamp", &timestamp)
        .header("X-Userexport-Signature", format!("v1={}", "0".repeat(64)))
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    let list: Value = http
        .get(format!("{base}/v1/exports"))
        .bearer_auth("key-a-0123456789abcdefghijklmn")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
    let _ = std::fs::remove_dir_all(&data);
}
