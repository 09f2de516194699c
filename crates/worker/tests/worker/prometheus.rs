//! The worker's metrics endpoint (`USEREXPORT_METRICS_LISTEN`): after a real export it shows our
//! counters and histograms and the Temporal SDK's metrics on one scrape, and `promtool check
//! metrics` accepts the whole output.

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use adapters::temporal::testkit::{test_address, test_client, unique_task_queue};
use domain::ExportStatus;
use uuid::Uuid;

use super::{result, start_seed_workflow};

/// `promtool check metrics` on `text`; a machine without promtool fails the test.
fn promtool_check_metrics(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("promtool is required ({err}): apt-get install prometheus, or run scripts/test-all.sh")
        });
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The value of the first sample line starting with `series` (name and labels as rendered).
fn value(text: &str, prefix: &str) -> Option<f64> {
    text.lines().find(|line| line.starts_with(prefix))?.rsplit_once(' ')?.1.parse().ok()
}

#[tokio::test]
async fn the_metrics_endpoint_shows_a_real_exports_metrics_beside_the_sdks() {
    let client = test_client().await;
    let task_queue = unique_task_queue("metrics");
    let data_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _worker = tokio::process::Command::new(env!("CARGO_BIN_EXE_userexport-worker"))
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("TEMPORAL_ADDRESS", test_address())
        .env("USEREXPORT_TASK_QUEUE", &task_queue)
        .env("USEREXPORT_DEMO_SCOPES", "acme/prod")
        .env("USEREXPORT_DEMO_USERS", "300")
        .env("USEREXPORT_DATA_DIR", data_dir.path())
        .env("USEREXPORT_METRICS_LISTEN", format!("127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();

    let workflow_id = format!("metrics-{}", Uuid::new_v4());
    start_seed_workflow(&client, &task_queue, &workflow_id).await;
    let output = result(&client, &workflow_id).await;
    assert_eq!(output.status, ExportStatus::Completed);

    let url = format!("http://127.0.0.1:{port}/metrics");
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        // The SDK records some metrics after the task completes: wait until they are there.
        if let Ok(response) = adapters::contract::http_get(&url).await {
            let text = response.text().await.unwrap();
            if text.contains("temporal_activity_schedule_to_start_latency_seconds_bucket")
                && text.contains("userexport_exports_completed_total")
            {
                break text;
            }
        }
        assert!(Instant::now() < deadline, "the worker's /metrics never showed the export");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };

    let completed = value(&text, "userexport_exports_completed_total{").expect("the completed counter");
    assert!(completed >= 1.0, "{text}");
    assert!(value(&text, "userexport_export_rows_total{").unwrap_or_default() >= output.record_count as f64);
    assert!(text.contains("# TYPE userexport_export_duration_seconds histogram"), "{text}");
    assert!(text.contains("userexport_export_queue_seconds_bucket"), "{text}");
    // The Temporal SDK's own metrics: slots, schedule-to-start latency, client requests.
    for name in [
        "temporal_worker_task_slots_available",
        "temporal_activity_schedule_to_start_latency_seconds_bucket",
        "temporal_workflow_task_schedule_to_start_latency_seconds_bucket",
        "temporal_long_request_total",
    ] {
        assert!(text.contains(name), "{name} is missing:\n{text}");
    }
    assert!(!text.contains(&workflow_id), "no workflow or export ID in a label");
    promtool_check_metrics(&text);
}
