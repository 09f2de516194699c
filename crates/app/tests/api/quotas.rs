//! Per-tenant quotas: `429` + `Retry-After` past `max_unfinished` (a retried request still finds
//! its export), `409` past `max_schedules`, per-tenant overrides in `USEREXPORT_TENANTS`.

use http::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, TestResponse, csv_body};

async fn create_with_key(app: &TestApp, idempotency_key: &str) -> TestResponse {
    let request = http::Request::post("/v1/exports")
        .header("authorization", format!("Bearer {ACME_KEY}"))
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(axum::body::Body::from(csv_body().to_string()))
        .unwrap();
    app.send(request).await
}

#[tokio::test]
async fn past_max_unfinished_new_exports_are_a_429_but_retries_find_theirs() {
    // Gated: every export stays unfinished.
    let app = TestApp::builder().gated_after(0).config(|c| c.quotas.tenant_max_unfinished = 2).spawn().await;
    let first = create_with_key(&app, "order-1").await;
    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(app.create(&csv_body()).await.status, StatusCode::ACCEPTED);

    let refused = app.create(&csv_body()).await;
    let problem = refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded");
    assert_eq!(refused.header("retry-after"), Some("30"));
    assert_eq!((problem["quota"].as_str(), problem["limit"].as_u64()), (Some("max_unfinished"), Some(2)));
    assert!(problem["hint"].as_str().unwrap().contains("Retry after"), "{problem}");
    let sync = app.post_json(Some(ACME_KEY), "/v1/exports/sync?timeout_s=0", &csv_body()).await;
    sync.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded");

    let replay = create_with_key(&app, "order-1").await;
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text());
    assert_eq!(replay.json()["id"], first.json()["id"]);
    // Another tenant has its own quota.
    assert_eq!(
        app.post_json(Some(GLOBEX_KEY), "/v1/exports", &csv_body()).await.status,
        StatusCode::ACCEPTED
    );
    let listed = app.get(Some(ACME_KEY), "/v1/exports").await.json();
    assert_eq!(listed["items"].as_array().unwrap().len(), 2, "{listed}");
}

#[tokio::test]
async fn a_tenants_override_replaces_the_global_limit() {
    let app = TestApp::builder()
        .gated_after(0)
        .config(|c| {
            c.quotas.tenant_max_unfinished = 1;
            c.tenants.tenants = Some(r#"[{"scope":"globex/prod","quotas":{"max_unfinished":3}}]"#.to_owned());
        })
        .spawn()
        .await;
    for _ in 0..3 {
        assert_eq!(
            app.post_json(Some(GLOBEX_KEY), "/v1/exports", &csv_body()).await.status,
            StatusCode::ACCEPTED
        );
    }
    let refused = app.post_json(Some(GLOBEX_KEY), "/v1/exports", &csv_body()).await;
    assert_eq!(refused.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded")["limit"], 3);
    assert_eq!(app.create(&csv_body()).await.status, StatusCode::ACCEPTED);
    app.create(&csv_body()).await.assert_problem(StatusCode::TOO_MANY_REQUESTS, "quota-exceeded");
}

#[tokio::test]
async fn past_max_schedules_a_new_schedule_is_a_409() {
    let app = TestApp::builder().config(|c| c.quotas.tenant_max_schedules = 1).spawn().await;
    let body = json!({"cron": "0 3 * * *", "request": {"format": "csv"}});
    let created = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &body).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.text());

    let refused = app.post_json(Some(ACME_KEY), "/v1/export-schedules", &body).await;
    let problem = refused.assert_problem(StatusCode::CONFLICT, "quota-exceeded");
    assert_eq!((problem["quota"].as_str(), problem["limit"].as_u64()), (Some("max_schedules"), Some(1)));
    assert_eq!(refused.header("retry-after"), None, "waiting frees no schedule");

    // Deleting one makes room again.
    let id = created.json()["id"].as_str().unwrap().to_owned();
    let deleted = app.send(
        http::Request::delete(format!("/v1/export-schedules/{id}"))
            .header("authorization", format!("Bearer {ACME_KEY}"))
            .body(axum::body::Body::empty())
            .unwrap(),
    );
    assert_eq!(deleted.await.status, StatusCode::NO_CONTENT);
    assert_eq!(
        app.post_json(Some(ACME_KEY), "/v1/export-schedules", &body).await.status,
        StatusCode::CREATED
    );
}
