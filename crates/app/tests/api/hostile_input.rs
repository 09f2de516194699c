//! Hostile input at the edge (issue 10): bounded validation answers, `notify_email` rules and
//! per-tenant domains, cron expressions that never fire or fire too often, weak keys refused at
//! start-up.

use app::{Application, Config};
use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ACME_KEY, API_KEYS, TestApp};

async fn start_up_error(config: Config) -> String {
    match Application::build(config).await {
        Ok(_) => panic!("start-up should have failed"),
        Err(err) => format!("{err:#}"),
    }
}

/// The `(field, code)` of every entry of a validation problem.
fn field_codes(problem: &Value) -> Vec<(String, String)> {
    problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| (e["field"].as_str().unwrap().to_owned(), e["code"].as_str().unwrap().to_owned()))
        .collect()
}

#[tokio::test]
async fn a_64_kib_body_of_bad_fields_gets_a_small_answer() {
    let app = TestApp::spawn().await;
    // As many zeros as fit in the 64 KiB body limit.
    let zeros = vec![0; 32_736];
    let body = json!({"format": "csv", "fields": zeros});
    let size = body.to_string().len();
    assert!((63 * 1024..=64 * 1024).contains(&size), "the body is the issue's 64 KiB: {size}");
    let response = app.create(&body).await;
    let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let errors = problem["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 21, "20 listed and one saying how many more");
    assert_eq!(errors[20]["code"], "more_errors");
    assert_eq!(errors[20]["message"], "and 32716 more errors, not listed");
    assert!(response.body.len() < 4 * 1024, "{} bytes", response.body.len());
}

#[tokio::test]
async fn hostile_notify_addresses_are_a_422_naming_notify_email() {
    let app = TestApp::spawn().await;
    for (email, code) in [
        ("a@[10.0.0.5]", "ip_literal"),
        ("root@localhost", "single_label_domain"),
        ("ops@printer.local", "reserved_domain"),
        ("ops@db.internal", "reserved_domain"),
        ("ops@acme.com\r\nBcc: everyone@acme.com", "control_character"),
        ("ops@acme.com, other@acme.com", "invalid_value"),
    ] {
        let body = json!({"format": "csv", "email_notify": true, "notify_email": email});
        let problem = app.create(&body).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(field_codes(&problem), [("notify_email".to_owned(), code.to_owned())], "{email:?}");
        assert!(problem["detail"].as_str().unwrap().contains("notify_email"), "{problem}");
    }
    let ok = app.create(&json!({"format": "csv", "notify_email": "ops@acme.com"})).await;
    assert_eq!(ok.status, StatusCode::ACCEPTED, "{}", ok.text());
}

#[tokio::test]
async fn a_tenant_s_notify_domains_bound_its_requests_and_schedules() {
    let app = TestApp::builder()
        .config(|c| {
            c.tenants.tenants = Some(r#"[{"scope":"acme/prod","notify_domains":["acme.com"]}]"#.to_owned());
        })
        .spawn()
        .await;
    let allowed = app.create(&json!({"format": "csv", "notify_email": "ops@eu.acme.com"})).await;
    assert_eq!(allowed.status, StatusCode::ACCEPTED, "{}", allowed.text());
    let refused = app.create(&json!({"format": "csv", "notify_email": "ops@elsewhere.com"})).await;
    let problem = refused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(field_codes(&problem), [("notify_email".to_owned(), "domain_not_allowed".to_owned())]);
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("acme.com"), "{problem}");
    // Globex has no list: any public domain.
    let globex = app
        .post_json(
            Some(crate::helpers::GLOBEX_KEY),
            "/v1/exports",
            &json!({"format": "csv", "notify_email": "a@b.io"}),
        )
        .await;
    assert_eq!(globex.status, StatusCode::ACCEPTED, "{}", globex.text());

    let schedule =
        json!({"cron": "0 3 * * *", "request": {"format": "csv", "notify_email": "ops@elsewhere.com"}});
    let problem = app
        .post_json(Some(ACME_KEY), "/v1/export-schedules", &schedule)
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(field_codes(&problem), [("request.notify_email".to_owned(), "domain_not_allowed".to_owned())]);
}

async fn patch(app: &TestApp, location: &str, body: &Value) -> crate::helpers::TestResponse {
    let request = Request::patch(location)
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .header("content-type", "application/json")
        .body(Body::from(body.to_string()))
        .unwrap();
    app.send(request).await
}

#[tokio::test]
async fn a_cron_that_never_fires_is_a_422_at_create_and_at_patch() {
    let app = TestApp::spawn().await;
    for never in ["0 0 31 2 *", "0 0 30 2 *"] {
        let body = json!({"cron": never, "request": {"format": "csv"}});
        let response = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &body).await;
        let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(field_codes(&problem), [("cron".to_owned(), "cron_never_fires".to_owned())]);
    }
    let created = app
        .post_json(
            Some(ACME_KEY),
            "/v1/export-schedules",
            &json!({"cron": "0 3 * * *", "request": {"format": "csv"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let location = created.header("location").unwrap().to_owned();
    let problem = patch(&app, &location, &json!({"cron": "0 0 31 2 *"}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(field_codes(&problem), [("cron".to_owned(), "cron_never_fires".to_owned())]);
    // The schedule kept its cron, and pausing it still works.
    let paused = patch(&app, &location, &json!({"paused": true})).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
    assert_eq!(paused.json()["cron"], "0 3 * * *");
}

#[tokio::test]
async fn a_cron_that_fires_too_often_is_a_422_naming_cron() {
    let app = TestApp::builder().config(|c| c.schedules.schedule_min_interval_s = 300).spawn().await;
    let body = |cron: &str| json!({"cron": cron, "timezone": "Europe/Berlin", "request": {"format": "csv"}});
    for too_often in ["* * * * *", "0,1 3 * * *", "*/2 * * * *"] {
        let response = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &body(too_often)).await;
        let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(
            field_codes(&problem),
            [("cron".to_owned(), "cron_too_frequent".to_owned())],
            "{too_often}"
        );
        assert!(problem["errors"][0]["message"].as_str().unwrap().contains("300s"), "{problem}");
    }
    let ok = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &body("*/5 * * * *")).await;
    assert_eq!(ok.status, StatusCode::CREATED, "{}", ok.text());
    let location = ok.header("location").unwrap().to_owned();
    let problem = patch(&app, &location, &json!({"cron": "*/4 * * * *"}))
        .await
        .assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(field_codes(&problem), [("cron".to_owned(), "cron_too_frequent".to_owned())]);
}

#[tokio::test]
async fn at_the_default_minimum_every_minute_is_allowed_and_a_seconds_field_is_not() {
    let app = TestApp::spawn().await;
    let every_minute = json!({"cron": "* * * * *", "request": {"format": "csv"}});
    let created = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &every_minute).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());
    let every_second = json!({"cron": "* * * * * *", "request": {"format": "csv"}});
    let response = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &every_second).await;
    assert_eq!(response.error_fields(), ["cron"]);
}

#[tokio::test]
async fn weak_keys_and_secrets_fail_start_up_naming_the_setting_but_not_the_key() {
    let weak_api = Config::for_tests(&format!("{API_KEYS},key-b=initech/prod"));
    let err = start_up_error(weak_api).await;
    assert!(err.contains("USEREXPORT_API_KEYS") && err.contains("128 bits"), "{err}");
    assert!(!err.contains("key-b"), "{err}");

    let mut weak_operator = Config::for_tests(API_KEYS);
    weak_operator.operator_keys = Some("op-short=batch".into());
    let err = start_up_error(weak_operator).await;
    assert!(err.contains("USEREXPORT_OPERATOR_KEYS") && err.contains("128 bits"), "{err}");
    assert!(!err.contains("op-short"), "{err}");

    let mut weak_secret = Config::for_tests(API_KEYS);
    weak_secret.tenants.tenants =
        Some(r#"[{"scope":"acme/prod","webhook_secret":"0123456789abcdef"}]"#.to_owned());
    let err = start_up_error(weak_secret).await;
    assert!(
        err.contains("USEREXPORT_TENANTS") && err.contains("webhook_secret") && err.contains("128 bits"),
        "{err}"
    );
    assert!(!err.contains("0123456789abcdef"), "{err}");
    assert!(!err.contains('\n'), "one line: {err}");
}
