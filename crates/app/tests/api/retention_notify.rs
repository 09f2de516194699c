//! Retention (`retention_days`, `expires_at`, expired downloads answer 410) and completion
//! emails through a real SMTP server (the testkit's sink).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::contract::smtp_sink::SmtpSink;
use http::StatusCode;
use ports::{ExportRepository, ExportStorage};
use serde_json::json;
use service::RetentionSweeper;

use crate::helpers::{ACME_KEY, TestApp, csv_body};

#[tokio::test]
async fn an_email_with_the_download_link_arrives_and_the_export_records_it() {
    let sink = SmtpSink::start().await;
    let url = sink.url();
    let app = TestApp::builder()
        .config(move |c| {
            c.notify.smtp_url = Some(url);
            c.notify.public_url = "https://exports.example.test".to_owned();
        })
        .spawn()
        .await;
    let body = json!({"format": "csv", "email_notify": true, "notify_email": "ops@acme.com"});
    let export = app.create_completed(&body).await;
    let id = export["id"].as_str().unwrap();

    let mail = sink.wait_for(1, Duration::from_secs(10)).await.remove(0);
    assert_eq!(mail.rcpt_to, ["ops@acme.com"]);
    assert!(mail.header("Subject").unwrap().contains(id));
    let link = format!("https://exports.example.test/v1/exports/{id}/download");
    assert!(mail.text().contains(&link), "{}", mail.text());
    let recorded = app.wait_for(id, "notified", |e| e["notification"]["status"] == "sent").await;
    assert_eq!(recorded["notification"]["attempts"], 1);
    assert_eq!(recorded["status"], "completed");
}

#[tokio::test]
async fn an_unreachable_mail_server_is_retried_recorded_and_never_fails_the_export() {
    let sink = SmtpSink::start().await;
    sink.fail_next(10);
    let url = sink.url();
    let app = TestApp::builder().config(move |c| c.notify.smtp_url = Some(url)).spawn().await;
    let body = json!({"format": "csv", "email_notify": true, "notify_email": "ops@acme.com"});
    let export = app.create_completed(&body).await;
    let id = export["id"].as_str().unwrap();

    let recorded = app.wait_for(id, "notified", |e| !e["notification"].is_null()).await;
    assert_eq!(recorded["status"], "completed");
    assert_eq!(recorded["notification"]["status"], "failed");
    assert_eq!(recorded["notification"]["attempts"], 3);
    let last_error = recorded["notification"]["last_error"].as_str().unwrap();
    assert!(last_error.contains("mail server"), "{recorded}");
    assert!(!last_error.contains("451"), "the SMTP server's own words stay in the logs: {recorded}");
    assert!(sink.delivered().is_empty());
}

#[tokio::test]
async fn an_expired_export_keeps_its_record_but_its_download_is_gone() {
    type Captured = Arc<Mutex<Option<(Arc<dyn ExportRepository>, Arc<dyn ExportStorage>)>>>;
    let captured: Captured = Arc::default();
    let keep = Arc::clone(&captured);
    let app = TestApp::builder()
        .adapters(move |adapters| {
            *keep.lock().unwrap() = Some((Arc::clone(&adapters.exports), Arc::clone(&adapters.storage)));
            adapters
        })
        .spawn()
        .await;
    let export = app.create_completed(&json!({"format": "csv", "retention_days": 2})).await;
    let id = export["id"].as_str().unwrap();
    let finished: chrono::DateTime<chrono::Utc> = export["finished_at"].as_str().unwrap().parse().unwrap();
    let expires: chrono::DateTime<chrono::Utc> = export["expires_at"].as_str().unwrap().parse().unwrap();
    assert_eq!(expires - finished, chrono::TimeDelta::days(2));
    assert_eq!(export["retention_days"], 2);

    let (exports, storage) = captured.lock().unwrap().clone().unwrap();
    let report = RetentionSweeper::new(exports, storage)
        .sweep(expires + chrono::TimeDelta::seconds(1), 100)
        .await
        .unwrap();
    assert_eq!(report.expired, 1);

    let gone = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}/download")).await;
    gone.assert_problem(StatusCode::GONE, "export-expired");
    let record = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}")).await.json();
    assert_eq!(record["status"], "expired");
    assert!(record["links"]["download"].is_null(), "{record}");
    assert_eq!(record["record_count"], export["record_count"]);
}

#[tokio::test]
async fn a_retention_above_the_cap_is_a_validation_problem() {
    let app = TestApp::spawn().await;
    let mut body = csv_body();
    body["retention_days"] = json!(31);
    let problem = app.create(&body).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(problem["errors"][0]["field"], "retention_days", "{problem}");
    body["retention_days"] = json!(0);
    let problem = app.create(&body).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(problem["errors"][0]["field"], "retention_days", "{problem}");
}
