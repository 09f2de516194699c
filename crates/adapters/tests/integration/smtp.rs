//! The SMTP notifier against a real SMTP server (the test sink speaks the protocol over TCP).

use std::time::Duration;

use adapters::contract::smtp_sink::SmtpSink;
use adapters::smtp::{SmtpNotifier, SmtpSettings};
use chrono::{TimeDelta, Utc};
use domain::{
    Export, ExportFailure, ExportFormat, ExportId, ExportOutcome, ExportSpec, FailureKind, Scope,
    TenantDirectory,
};
use ports::{Notifier, PortError};

fn settings(sink: &SmtpSink) -> SmtpSettings {
    SmtpSettings {
        url: sink.url(),
        from: "userexport@example.test".to_owned(),
        public_url: "https://exports.example.test/".parse().unwrap(),
    }
}

fn export(scope: &str, notify_email: Option<&str>) -> Export {
    let mut spec = ExportSpec::new(ExportFormat::Csv);
    spec.email_notify = true;
    spec.notify_email = notify_email.map(str::to_owned);
    let id = ExportId::from_uuid(uuid::Uuid::now_v7());
    Export::new(id, Scope::parse(scope).unwrap(), spec, None, Utc::now())
}

fn completed(mut export: Export) -> Export {
    export.start_attempt(1, Utc::now()).unwrap();
    let outcome = ExportOutcome { record_count: 42, bytes: 1234, sha256: "ab".repeat(32) };
    export.complete(outcome, export.attempt_key(1), TimeDelta::days(7), Utc::now()).unwrap();
    export
}

#[tokio::test]
async fn a_completed_export_mails_its_counts_and_download_link_to_the_requested_address() {
    let sink = SmtpSink::start().await;
    let notifier = SmtpNotifier::new(&settings(&sink), TenantDirectory::default()).unwrap();
    let export = completed(export("acme/prod", Some("ops@acme.test")));

    notifier.export_finished(&export).await.unwrap();

    let mail = sink.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(mail.mail_from, "userexport@example.test");
    assert_eq!(mail.rcpt_to, ["ops@acme.test"]);
    let subject = mail.header("Subject").unwrap();
    assert!(subject.contains(&export.id.to_string()) && subject.contains("completed"), "{subject}");
    let text = mail.text();
    assert!(text.contains("Records: 42"), "{text}");
    let link = format!("https://exports.example.test/v1/exports/{}/download", export.id);
    assert!(text.contains(&link), "{text}");
    assert!(text.contains("Available until:"), "{text}");
}

#[tokio::test]
async fn a_failed_export_mails_the_reason_to_the_tenants_configured_address() {
    let sink = SmtpSink::start().await;
    let tenants =
        TenantDirectory::parse_json(r#"[{"scope":"globex/prod","notify_email":"data@globex.test"}]"#)
            .unwrap();
    let notifier = SmtpNotifier::new(&settings(&sink), tenants).unwrap();
    let mut export = export("globex/prod", None);
    export.fail(ExportFailure::new(FailureKind::Source, "database unreachable"), Utc::now()).unwrap();

    notifier.export_finished(&export).await.unwrap();

    let mail = sink.wait_for(1, Duration::from_secs(5)).await.remove(0);
    assert_eq!(mail.rcpt_to, ["data@globex.test"]);
    assert!(mail.header("Subject").unwrap().contains("failed"));
    let text = mail.text();
    assert!(text.contains("Error (source): database unreachable"), "{text}");
    assert!(!text.contains("Download"), "a failed export has no link: {text}");
}

#[tokio::test]
async fn delivery_failures_say_whether_a_retry_can_help() {
    let sink = SmtpSink::start().await;
    let notifier = SmtpNotifier::new(&settings(&sink), TenantDirectory::default()).unwrap();

    sink.fail_next(1);
    let err = notifier.export_finished(&completed(export("acme/prod", Some("ops@acme.test")))).await;
    assert!(matches!(err, Err(PortError::Unavailable(_))), "451 is temporary: {err:?}");
    notifier.export_finished(&completed(export("acme/prod", Some("ops@acme.test")))).await.unwrap();
    assert_eq!(sink.delivered().len(), 1);

    let nobody = notifier.export_finished(&completed(export("acme/prod", None))).await;
    assert!(matches!(nobody, Err(PortError::Other(_))), "no address is not retryable: {nobody:?}");

    let closed = SmtpSink::start().await;
    let url = closed.url();
    drop(closed);
    let unreachable = SmtpSettings { url, ..settings(&sink) };
    let notifier = SmtpNotifier::new(&unreachable, TenantDirectory::default()).unwrap();
    let err = notifier.export_finished(&completed(export("acme/prod", Some("ops@acme.test")))).await;
    assert!(matches!(err, Err(PortError::Unavailable(_))), "a server that is down may come back: {err:?}");
}

#[test]
fn bad_settings_are_refused_and_passwords_are_not_shown() {
    let settings = SmtpSettings {
        url: "smtp://mailer:hunter2@smtp.example.test:587?tls=required".to_owned(),
        from: "userexport@example.test".to_owned(),
        public_url: "https://exports.example.test/".parse().unwrap(),
    };
    assert!(!format!("{settings:?}").contains("hunter2"));
    assert!(SmtpNotifier::new(&settings, TenantDirectory::default()).is_ok());
    let bad_url = SmtpSettings { url: "http://nope".to_owned(), ..settings.clone() };
    assert!(SmtpNotifier::new(&bad_url, TenantDirectory::default()).is_err());
    let bad_from = SmtpSettings { from: "not an address".to_owned(), ..settings };
    assert!(SmtpNotifier::new(&bad_from, TenantDirectory::default()).is_err());
}
