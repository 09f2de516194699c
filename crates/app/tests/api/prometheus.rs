//! Prometheus metrics: `GET /metrics` after real exports (counters and histograms moved), its
//! output checked by `promtool check metrics`, and the alert rules and their unit tests by
//! `promtool`. The recorder is one per process, shared by every test of this binary running at
//! once: assertions compare before and after, and expect at least what this test did.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use app::{Application, Config};
use axum::body::Body;
use http::{Request, StatusCode};
use service::meters;

use crate::helpers::{ACME_KEY, API_KEYS, TestApp, csv_body};

/// Runs promtool; a machine without it fails the test (scripts/test-all.sh installs it).
pub fn promtool(args: &[&str], stdin: Option<&str>) -> String {
    let mut child = Command::new("promtool")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|err| {
            panic!("promtool is required ({err}): apt-get install prometheus, or run scripts/test-all.sh")
        });
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.unwrap_or_default().as_bytes()).unwrap();
    drop(input);
    let output = child.wait_with_output().unwrap();
    let text =
        format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

/// The sum of the samples of `name` whose labels include `labels`.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, "}"));
            if metric != name {
                return None;
            }
            let found: BTreeMap<&str, &str> = rest
                .trim_end_matches('}')
                .split("\",")
                .filter_map(|pair| pair.split_once('='))
                .map(|(k, v)| (k.trim_matches(','), v.trim_matches('"')))
                .collect();
            labels.iter().all(|(k, v)| found.get(k) == Some(v)).then(|| value.parse::<f64>().ok()).flatten()
        })
        .sum()
}

async fn scrape(app: &TestApp) -> String {
    let response = app.send_unchecked(Request::get("/metrics").body(Body::empty()).unwrap()).await;
    assert_eq!(response.status, StatusCode::OK, "/metrics needs no key");
    let content_type = response.headers["content-type"].to_str().unwrap();
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    response.text()
}

#[tokio::test]
async fn a_real_export_moves_the_counters_and_histograms_and_promtool_accepts_the_output() {
    let app = TestApp::spawn().await;
    let before = scrape(&app).await;
    app.create_completed(&csv_body()).await;
    let after = scrape(&app).await;
    let moved =
        |name: &str, labels: &[(&str, &str)]| sample(&after, name, labels) - sample(&before, name, labels);

    let csv = [("format", "csv"), ("compression", "none")];
    assert!(moved(meters::EXPORTS_REQUESTED, &csv) >= 1.0, "{after}");
    assert!(moved(meters::EXPORTS_STARTED, &csv) >= 1.0, "{after}");
    assert!(moved(meters::EXPORTS_COMPLETED, &csv) >= 1.0, "{after}");
    assert!(moved(meters::EXPORT_ROWS, &[("format", "csv")]) >= 100.0, "every user is a row");
    assert!(moved(meters::EXPORT_BYTES, &csv) > 100.0);
    let completed = [("outcome", "completed")];
    assert!(moved("userexport_export_duration_seconds_count", &completed) >= 1.0);
    assert!(
        moved("userexport_export_duration_seconds_bucket", &[("outcome", "completed"), ("le", "+Inf")])
            >= 1.0
    );
    assert!(moved("userexport_export_queue_seconds_count", &[]) >= 1.0);
    let sync = [("route", "/v1/exports/sync"), ("method", "POST"), ("status", "200")];
    assert!(moved(meters::HTTP_REQUESTS, &sync) >= 1.0, "{after}");
    assert!(moved("userexport_http_request_duration_seconds_bucket", &[("le", "+Inf")]) >= 1.0);
    assert!(after.contains("# TYPE userexport_export_duration_seconds histogram"), "{after}");
    assert!(after.contains("# HELP userexport_exports_completed_total "), "{after}");

    promtool(&["check", "metrics"], Some(&after));
}

#[tokio::test]
async fn a_cancelled_export_is_counted_and_a_running_one_shows_in_the_gauge() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let before = scrape(&app).await;
    let id = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&id, "running").await;
    assert!(sample(&scrape(&app).await, meters::EXPORTS_RUNNING, &[]) >= 1.0);
    assert_eq!(
        app.post(Some(ACME_KEY), &format!("/v1/exports/{id}/cancel")).await.status,
        StatusCode::ACCEPTED
    );
    app.wait_for_status(&id, "cancelled").await;
    let after = scrape(&app).await;
    assert!(
        sample(&after, meters::EXPORTS_CANCELLED, &[]) - sample(&before, meters::EXPORTS_CANCELLED, &[])
            >= 1.0
    );
    let cancelled = [("outcome", "cancelled"), ("le", "+Inf")];
    let durations = "userexport_export_duration_seconds_bucket";
    assert!(sample(&after, durations, &cancelled) - sample(&before, durations, &cancelled) >= 1.0);
}

#[tokio::test]
async fn requests_are_labelled_by_route_template_never_by_id_and_webhook_refusals_by_reason() {
    let app = TestApp::spawn().await;
    let id = "0193a5f0-0000-7000-8000-00000000abcd";
    assert_eq!(app.get(Some(ACME_KEY), &format!("/v1/exports/{id}")).await.status, StatusCode::NOT_FOUND);
    let lost = app.send_unchecked(Request::get("/no/such/path-4242").body(Body::empty()).unwrap()).await;
    assert_eq!(lost.status, StatusCode::NOT_FOUND);
    let before = scrape(&app).await;
    let refused =
        app.send_unchecked(Request::post("/v1/events/export-requested").body(Body::empty()).unwrap()).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    let after = scrape(&app).await;

    let by_template = [("route", "/v1/exports/{id}"), ("method", "GET"), ("status", "404")];
    assert!(sample(&after, meters::HTTP_REQUESTS, &by_template) >= 1.0, "{after}");
    assert!(sample(&after, meters::HTTP_REQUESTS, &[("route", "unmatched")]) >= 1.0, "{after}");
    assert!(!after.contains(id) && !after.contains("path-4242"), "no ID or raw path in a label");
    let missing = [("reason", "missing_header")];
    let rejections = sample(&after, meters::WEBHOOK_REJECTIONS, &missing)
        - sample(&before, meters::WEBHOOK_REJECTIONS, &missing);
    assert!(rejections >= 1.0, "{after}");
}

#[tokio::test]
async fn with_a_metrics_listener_the_api_port_no_longer_serves_metrics() {
    let mut config = Config::for_tests(API_KEYS);
    config.metrics.metrics_listen = Some("127.0.0.1:0".parse().unwrap());
    let application = Application::build(config).await.unwrap();
    let addr = application.metrics_addr().expect("a metrics listener");
    let router = application.router();
    let response = tower::ServiceExt::oneshot(router, Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::NOT_FOUND);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let running = tokio::spawn(application.run_until_stopped(async {
        let _ = stopped.await;
    }));
    let text = adapters::contract::http_get(format!("http://{addr}/metrics"))
        .await
        .unwrap()
        .error_for_status()
        .unwrap();
    assert!(text.text().await.unwrap().contains("# TYPE userexport_"));
    stop.send(()).unwrap();
    running.await.unwrap().unwrap();
}

fn deploy(path: &str) -> String {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..").join(path);
    root.to_str().unwrap().to_owned()
}

#[test]
fn alert_rules_and_their_unit_tests_pass_promtool() {
    promtool(&["check", "rules", &deploy("deploy/prometheus/alerts.yml")], None);
    promtool(&["test", "rules", &deploy("deploy/prometheus/alerts_test.yml")], None);
    promtool(&["check", "config", &deploy("deploy/prometheus/prometheus.yml")], None);
}

#[test]
fn alerts_and_dashboard_name_only_metrics_that_exist() {
    let known = [
        meters::EXPORTS_REQUESTED,
        meters::EXPORTS_STARTED,
        meters::EXPORTS_COMPLETED,
        meters::EXPORTS_FAILED,
        meters::EXPORTS_CANCELLED,
        meters::EXPORTS_EXPIRED,
        meters::EXPORT_DURATION,
        meters::EXPORT_QUEUE,
        meters::EXPORT_ROWS,
        meters::EXPORT_BYTES,
        meters::EXPORTS_RUNNING,
        meters::EXPORTS_QUEUED,
        meters::HTTP_REQUESTS,
        meters::HTTP_DURATION,
        meters::EVENTS_CONSUMED,
        meters::DEAD_LETTERS,
        meters::WEBHOOK_REJECTIONS,
        meters::NOTIFICATIONS,
        meters::RETENTION_DELETIONS,
        meters::RETENTION_FAILURES,
        meters::SCHEDULE_FIRES,
        meters::SCHEDULE_SKIPS,
    ];
    let dashboard = std::fs::read_to_string(deploy("deploy/grafana/userexport.json")).unwrap();
    let parsed: serde_json::Value = serde_json::from_str(&dashboard).unwrap();
    assert_eq!(parsed["uid"], "userexport");
    let alerts = std::fs::read_to_string(deploy("deploy/prometheus/alerts.yml")).unwrap();
    let mut used = 0;
    for text in [&dashboard, &alerts] {
        for name in text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("userexport_"))
        {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .fold(name, |n, suffix| n.strip_suffix(suffix).unwrap_or(n));
            assert!(known.contains(&base), "{name} is not a metric userexport exports");
            used += 1;
        }
    }
    assert!(used > 20);
    // Every metric is on the dashboard.
    for name in known {
        assert!(dashboard.contains(name), "{name} is missing from the dashboard");
    }
}
