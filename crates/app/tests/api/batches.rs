//! `POST /v1/exports/batch` and `GET /v1/exports/batch/{id}` on the in-process orchestrator:
//! operator keys only, every target its own export, failures reported per target.

use std::sync::Arc;
use std::time::Duration;

use adapters::contract::fakes::FailingScopeUsers;
use domain::Scope;
use http::StatusCode;
use serde_json::{Value, json};

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, TestAppBuilder, USERS};

const OPERATOR_KEY: &str = "operator-test-key-5d1e";

/// acme/prod and globex/prod (tenant keys) plus initech/prod (directory only), an operator key
/// with the `batch` permission.
fn builder() -> TestAppBuilder {
    TestApp::builder().config(|c| {
        c.operator_keys = Some(format!("{OPERATOR_KEY}=batch").as_str().into());
        c.tenants.tenants = Some(r#"[{"scope":"initech/prod"}]"#.to_owned());
    })
}

/// globex/prod's user store is broken, so its export fails and the others complete.
async fn app_with_a_failing_tenant() -> TestApp {
    builder()
        .adapters(|mut adapters| {
            let failing = Scope::parse("globex/prod").unwrap();
            adapters.users = Arc::new(FailingScopeUsers { inner: adapters.users, failing });
            adapters
        })
        .spawn()
        .await
}

async fn wait_until_finished(app: &TestApp, location: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let response = app.get(Some(OPERATOR_KEY), location).await;
        assert_eq!(response.status, StatusCode::OK, "{}", response.text());
        let batch = response.json();
        if batch["status"] == "finished" {
            assert!(response.header("retry-after").is_none());
            return batch;
        }
        assert!(tokio::time::Instant::now() < deadline, "the batch never finished: {batch}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn result_for<'a>(batch: &'a Value, tenant: &str) -> &'a Value {
    batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["tenant_id"] == tenant)
        .unwrap_or_else(|| panic!("no result for {tenant}: {batch}"))
}

#[tokio::test]
async fn a_batch_over_three_tenants_reports_the_failing_one_with_its_reason() {
    let app = app_with_a_failing_tenant().await;
    let body = json!({"targets": ["acme/prod", "globex/prod", "initech/prod"], "export": {"format": "csv"},
                      "concurrency": 2});

    let response = app.post_json(Some(OPERATOR_KEY), "/v1/exports/batch", &body).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let accepted = response.json();
    let location = response.header("location").unwrap().to_owned();
    assert_eq!(location, format!("/v1/exports/batch/{}", accepted["id"].as_str().unwrap()));
    assert_eq!((accepted["total"].as_u64(), accepted["concurrency"].as_u64()), (Some(3), Some(2)));
    assert_eq!(accepted["workflow_id"], format!("user-export-batch:{}", accepted["id"].as_str().unwrap()));

    let batch = wait_until_finished(&app, &location).await;
    assert_eq!(
        (batch["total"].as_u64(), batch["completed"].as_u64(), batch["failed"].as_u64()),
        (Some(3), Some(2), Some(1))
    );
    let tenants: Vec<&str> =
        batch["results"].as_array().unwrap().iter().map(|r| r["tenant_id"].as_str().unwrap()).collect();
    assert_eq!(tenants, ["acme", "globex", "initech"], "request order");
    let globex = result_for(&batch, "globex");
    assert_eq!(globex["status"], "failed");
    assert_eq!(globex["error"]["type"], "source");
    // The public reason; the user store's own words stay in the logs.
    assert_eq!(globex["error"]["message"], "reading the users failed", "{globex}");
    assert!(!globex.to_string().contains(FailingScopeUsers::MESSAGE), "{globex}");
    assert_eq!(result_for(&batch, "initech")["status"], "completed");

    // Each target's export is an ordinary export of its tenant, with its rows.
    let acme = result_for(&batch, "acme");
    assert_eq!(acme["status"], "completed");
    let export =
        app.get(Some(ACME_KEY), &format!("/v1/exports/{}", acme["export_id"].as_str().unwrap())).await;
    assert_eq!(export.status, StatusCode::OK, "{}", export.text());
    assert_eq!(export.json()["record_count"].as_u64(), Some(USERS));
    let failed =
        app.get(Some(GLOBEX_KEY), &format!("/v1/exports/{}", globex["export_id"].as_str().unwrap())).await;
    assert_eq!(failed.json()["status"], "failed");
}

#[tokio::test]
async fn all_resolves_to_every_tenant_of_the_directory() {
    let app = builder().spawn().await;

    let response = app
        .post_json(
            Some(OPERATOR_KEY),
            "/v1/exports/batch",
            &json!({"targets": "all", "export": {"format": "ndjson"}}),
        )
        .await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let batch = wait_until_finished(&app, response.header("location").unwrap()).await;
    assert_eq!(batch["all_targets"], true);
    let scopes: Vec<String> = batch["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| format!("{}/{}", r["tenant_id"].as_str().unwrap(), r["environment_id"].as_str().unwrap()))
        .collect();
    assert_eq!(scopes, ["acme/prod", "globex/prod", "initech/prod"]);
    assert_eq!((batch["completed"].as_u64(), batch["failed"].as_u64()), (Some(3), Some(0)));
}

#[tokio::test]
async fn without_a_key_it_is_401_and_with_a_tenant_key_403_with_a_hint() {
    let app = builder().spawn().await;
    let body = json!({"targets": "all", "export": {"format": "csv"}});
    let get = "/v1/exports/batch/0190f5c3-0000-7000-8000-000000000001";

    app.post_json(None, "/v1/exports/batch", &body)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    app.get(None, get).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
    app.post_json(Some("not-a-key"), "/v1/exports/batch", &body)
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");

    for response in
        [app.post_json(Some(ACME_KEY), "/v1/exports/batch", &body).await, app.get(Some(ACME_KEY), get).await]
    {
        let problem = response.assert_problem(StatusCode::FORBIDDEN, "forbidden");
        assert!(problem["hint"].as_str().unwrap().contains("USEREXPORT_OPERATOR_KEYS"), "{problem}");
    }
    // An operator key opens no tenant route.
    app.get(Some(OPERATOR_KEY), "/v1/exports")
        .await
        .assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn invalid_fields_and_unknown_tenants_are_all_reported() {
    let app = builder().spawn().await;

    let response = app
        .post_json(
            Some(OPERATOR_KEY),
            "/v1/exports/batch",
            &json!({"targets": ["acme/prod", "acme/prod", "Nope"], "export": {"format": "xml"}, "concurrency": 0}),
        )
        .await;
    assert_eq!(response.error_fields(), ["targets[1]", "targets[2]", "export.format", "concurrency"]);

    let response = app
        .post_json(
            Some(OPERATOR_KEY),
            "/v1/exports/batch",
            &json!({"targets": ["acme/prod", "umbrella/prod"], "export": {"format": "csv"}}),
        )
        .await;
    assert_eq!(response.error_fields(), ["targets[1]"]);
    assert!(response.text().contains("unknown_tenant"), "{}", response.text());
}

#[tokio::test]
async fn an_idempotency_key_returns_the_first_batch_and_rejects_a_different_request() {
    let app = builder().spawn().await;
    let body = json!({"targets": ["acme/prod"], "export": {"format": "csv"}});
    let send = |body: Value| {
        let app = &app;
        async move {
            let request = http::Request::post("/v1/exports/batch")
                .header("authorization", format!("Bearer {OPERATOR_KEY}"))
                .header("content-type", "application/json")
                .header("idempotency-key", "nightly-2026-11-25")
                .body(axum::body::Body::from(body.to_string()))
                .unwrap();
            app.send(request).await
        }
    };

    let first = send(body.clone()).await;
    let again = send(body).await;
    let other = send(json!({"targets": ["globex/prod"], "export": {"format": "csv"}})).await;

    assert_eq!(first.status, StatusCode::ACCEPTED, "{}", first.text());
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    assert_eq!(again.json()["results"][0]["export_id"], first.json()["results"][0]["export_id"]);
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
}

#[tokio::test]
async fn an_unknown_or_malformed_batch_id_is_not_found() {
    let app = builder().spawn().await;
    for uri in ["/v1/exports/batch/0190f5c3-0000-7000-8000-000000000001", "/v1/exports/batch/nope"] {
        app.get(Some(OPERATOR_KEY), uri).await.assert_problem(StatusCode::NOT_FOUND, "not-found");
    }
}
