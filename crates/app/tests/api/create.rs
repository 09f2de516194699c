use http::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, USERS, csv_body};

#[tokio::test]
async fn creating_an_export_answers_202_with_its_location_and_resource() {
    let app = TestApp::builder().gated_after(0).spawn().await;

    let response = app.create(&csv_body()).await;

    assert_eq!(response.status, StatusCode::ACCEPTED, "{}", response.text());
    let export = response.json();
    let id = export["id"].as_str().unwrap();
    assert_eq!(response.header("location"), Some(format!("/v1/exports/{id}").as_str()));
    assert_eq!(response.header("retry-after"), Some("1"));
    assert!(matches!(export["status"].as_str(), Some("pending" | "running")), "{export}");
    assert_eq!(export["format"], "csv");
    assert_eq!(export["compression"], "none");
    assert_eq!(
        export["fields"],
        json!(["id", "email", "name", "status", "created_at", "updated_at", "metadata"])
    );
    assert_eq!(export["workflow_id"], format!("user-export:acme:prod:{id}"));
    assert_eq!(export["links"]["self"], format!("/v1/exports/{id}"));
    assert_eq!(export["links"]["cancel"], format!("/v1/exports/{id}/cancel"));
    assert!(export["links"].get("download").is_none(), "{export}");
    assert!(export["error"].is_null() && export["record_count"].is_null() && export["sha256"].is_null());
    assert!(export.get("object_key").is_none() && export.get("scope").is_none(), "internals leak: {export}");
}

#[tokio::test]
async fn an_accepted_export_completes_in_the_background() {
    let app = TestApp::spawn().await;
    let id = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();

    let export = app.wait_for_status(&id, "completed").await;

    assert_eq!(export["record_count"], USERS);
    assert_eq!(export["progress"], json!({"rows_written": USERS, "total_rows": USERS, "percent": 100}));
    assert_eq!(export["attempt"], 1);
    assert_eq!(export["links"]["download"], format!("/v1/exports/{id}/download"));
    assert!(export["links"].get("cancel").is_none(), "{export}");
    assert!(export["bytes"].as_u64().unwrap() > 0);
    assert_eq!(export["sha256"].as_str().unwrap().len(), 64);
    for stamp in ["created_at", "started_at", "finished_at", "updated_at"] {
        assert!(export[stamp].is_string(), "{stamp}: {export}");
    }
}

#[tokio::test]
async fn the_request_options_are_echoed_in_the_resource() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let body = json!({
        "format": "ndjson", "compression": "gzip", "fields": ["email", "id"],
        "user_filters": {"status": ["active"], "email_domain": "Example.com"},
        "limit": 10, "email_notify": true, "notify_email": "ops@example.com"
    });

    let export = app.create(&body).await.json();

    assert_eq!(export["format"], "ndjson");
    assert_eq!(export["compression"], "gzip");
    assert_eq!(export["fields"], json!(["email", "id"]));
    assert_eq!(export["user_filters"], json!({"status": ["active"], "email_domain": "example.com"}));
    assert_eq!(export["limit"], 10);
    assert_eq!(export["email_notify"], true);
    assert_eq!(export["notify_email"], "ops@example.com");
}

#[tokio::test]
async fn repeating_a_request_with_the_same_idempotency_key_replays_the_first_export() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let send = || async {
        let request = http::Request::post("/v1/exports")
            .header("authorization", format!("Bearer {ACME_KEY}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "order-42")
            .body(axum::body::Body::from(csv_body().to_string()))
            .unwrap();
        app.send(request).await
    };

    let first = send().await;
    let replay = send().await;

    assert_eq!(first.status, StatusCode::ACCEPTED);
    assert_eq!(first.header("idempotent-replayed"), None);
    assert_eq!(replay.status, StatusCode::OK, "{}", replay.text());
    assert_eq!(replay.header("idempotent-replayed"), Some("true"));
    assert_eq!(replay.json()["id"], first.json()["id"]);
    assert_eq!(replay.header("location"), first.header("location"));
    let list = app.get(Some(ACME_KEY), "/v1/exports").await.json();
    assert_eq!(list["items"].as_array().unwrap().len(), 1, "{list}");
}

async fn create_with_key(
    app: &TestApp,
    key: &str,
    idempotency_key: &str,
    body: &serde_json::Value,
) -> crate::helpers::TestResponse {
    let request = http::Request::post("/v1/exports")
        .header("authorization", format!("Bearer {key}"))
        .header("content-type", "application/json")
        .header("idempotency-key", idempotency_key)
        .body(axum::body::Body::from(body.to_string()))
        .unwrap();
    app.send(request).await
}

#[tokio::test]
async fn reusing_an_idempotency_key_for_a_different_request_is_a_422() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let first = create_with_key(&app, ACME_KEY, "order-43", &csv_body()).await;

    let reused = create_with_key(&app, ACME_KEY, "order-43", &json!({"format": "json"})).await;

    let problem = reused.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
    assert!(problem["detail"].as_str().unwrap().contains(first.json()["id"].as_str().unwrap()), "{problem}");
    assert!(problem["hint"].is_string());
}

#[tokio::test]
async fn the_same_idempotency_key_in_another_tenant_creates_another_export() {
    let app = TestApp::builder().gated_after(0).spawn().await;

    let acme = create_with_key(&app, ACME_KEY, "shared-key", &csv_body()).await;
    let globex = create_with_key(&app, GLOBEX_KEY, "shared-key", &csv_body()).await;

    assert_eq!((acme.status, globex.status), (StatusCode::ACCEPTED, StatusCode::ACCEPTED));
    assert_ne!(acme.json()["id"], globex.json()["id"]);
}

#[tokio::test]
async fn an_invalid_idempotency_key_is_reported_with_every_invalid_field() {
    let app = TestApp::spawn().await;
    let too_long = "k".repeat(256);

    let response = create_with_key(&app, ACME_KEY, &too_long, &json!({"format": "xml"})).await;

    assert_eq!(response.error_fields(), ["Idempotency-Key", "format"]);
    let empty = create_with_key(&app, ACME_KEY, "", &csv_body()).await;
    assert_eq!(empty.error_fields(), ["Idempotency-Key"]);
}

#[tokio::test]
async fn every_invalid_field_of_a_request_is_reported() {
    let app = TestApp::spawn().await;
    let body = json!({
        "format": "xml",
        "compression": "zip",
        "fields": ["email", "password", "email"],
        "user_filters": {"status": ["active", "gone"], "country": "NL", "created_after": "yesterday"},
        "limit": 0,
        "email_notify": "yes",
        "notify_email": "not-an-email",
        "tenant_id": "globex",
        "extra": 1
    });

    let response = app.create(&body).await;

    let mut fields = response.error_fields();
    fields.sort();
    assert_eq!(
        fields,
        [
            "compression",
            "email_notify",
            "extra",
            "fields[1]",
            "fields[2]",
            "format",
            "limit",
            "notify_email",
            "tenant_id",
            "user_filters.country",
            "user_filters.created_after",
            "user_filters.status[1]",
        ]
    );
    let problem = response.json();
    for error in problem["errors"].as_array().unwrap() {
        assert!(error["code"].as_str().is_some_and(|c| !c.is_empty()), "{error}");
        assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{error}");
    }
}

#[tokio::test]
async fn a_request_without_a_format_is_a_422_saying_it_is_required() {
    let app = TestApp::spawn().await;

    let response = app.create(&json!({})).await;

    let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(
        problem["errors"],
        json!([{"field": "format", "code": "required",
        "message": "format is required: one of csv, json, ndjson"}])
    );
}

#[tokio::test]
async fn a_body_that_is_not_a_json_object_is_a_422() {
    let app = TestApp::spawn().await;

    for body in [json!([1, 2]), json!("csv"), json!(null)] {
        let response = app.create(&body).await;
        let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(problem["errors"][0]["code"], "invalid_type", "{body}: {problem}");
    }
}
