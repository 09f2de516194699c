//! `/v1/export-schedules`: create, read, list, change, delete and trigger, validation problems
//! that name the bad cron field, and tenant isolation.

use axum::body::Body;
use http::{Request, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, TestResponse};

const SCHEDULES: &str = "/v1/export-schedules";

fn body() -> Value {
    json!({"cron": "0 3 * * *", "timezone": "Europe/Paris", "request": {"format": "csv", "compression": "gzip"},
           "note": "nightly"})
}

async fn create(app: &TestApp, body: &Value) -> Value {
    let response = app.post_json(Some(ACME_KEY), SCHEDULES, body).await;
    assert_eq!(response.status, StatusCode::CREATED, "{}", response.text());
    let schedule = response.json();
    let location = format!("{SCHEDULES}/{}", schedule["id"].as_str().unwrap());
    assert_eq!(response.header("location"), Some(location.as_str()));
    schedule
}

async fn send_json(app: &TestApp, method: &str, key: &str, uri: &str, body: Option<&Value>) -> TestResponse {
    let builder = Request::builder().method(method).uri(uri).header("authorization", format!("Bearer {key}"));
    let request = match body {
        Some(body) => builder.header("content-type", "application/json").body(Body::from(body.to_string())),
        None => builder.body(Body::empty()),
    };
    app.send(request.unwrap()).await
}

#[tokio::test]
async fn a_schedule_is_created_read_and_listed() {
    let app = TestApp::spawn().await;
    let schedule = create(&app, &body()).await;
    assert_eq!(schedule["cron"], "0 3 * * *");
    assert_eq!(schedule["timezone"], "Europe/Paris");
    assert_eq!(schedule["paused"], false);
    assert_eq!(schedule["note"], "nightly");
    assert_eq!(schedule["request"]["format"], "csv");
    assert_eq!(schedule["request"]["compression"], "gzip");
    let next = schedule["next_fire_at"].as_str().unwrap();
    assert!(next.ends_with(":00:00Z"), "03:00 Paris is a whole UTC hour: {next}");
    let id = schedule["id"].as_str().unwrap();
    assert!(schedule["temporal_schedule_id"].as_str().unwrap().ends_with(&format!("acme:prod:{id}")));

    let read = app.get(Some(ACME_KEY), &format!("{SCHEDULES}/{id}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.json(), schedule);

    let second = create(&app, &json!({"cron": "*/5 * * * *", "request": {"format": "json"}})).await;
    assert_eq!(second["timezone"], "UTC", "the default time zone");
    let page = app.get(Some(ACME_KEY), &format!("{SCHEDULES}?limit=1")).await.json();
    assert_eq!(page["items"].as_array().unwrap().len(), 1);
    assert_eq!(page["items"][0]["id"], schedule["id"], "oldest first");
    let cursor = page["next_cursor"].as_str().unwrap();
    let rest = app.get(Some(ACME_KEY), &format!("{SCHEDULES}?limit=1&cursor={cursor}")).await.json();
    assert_eq!(rest["items"][0]["id"], second["id"]);
    let last = rest["next_cursor"].as_str().map(|c| format!("{SCHEDULES}?limit=1&cursor={c}"));
    if let Some(uri) = last {
        assert!(app.get(Some(ACME_KEY), &uri).await.json()["items"].as_array().unwrap().is_empty());
    }
}

#[tokio::test]
async fn a_bad_cron_is_a_422_naming_the_cron_field() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(Some(ACME_KEY), SCHEDULES, &json!({"cron": "0 25 * * *", "request": {"format": "csv"}}))
        .await;
    let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    let error = &problem["errors"][0];
    assert_eq!(error["field"], "cron");
    let message = error["message"].as_str().unwrap();
    assert!(message.contains("hour") && message.contains("0-23") && message.contains("25"), "{message}");

    let response = app
        .post_json(Some(ACME_KEY), SCHEDULES, &json!({"cron": "0 3 * *", "request": {"format": "csv"}}))
        .await;
    let problem = response.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert_eq!(problem["errors"][0]["code"], "cron_field_count");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("found 4"), "{problem}");
}

#[tokio::test]
async fn every_invalid_field_is_reported() {
    let app = TestApp::spawn().await;
    let response = app
        .post_json(
            Some(ACME_KEY),
            SCHEDULES,
            &json!({"cron": "x * * * 9", "timezone": "Moon/Base", "request": {"format": "pdf"}, "paused": 1,
                    "tenant_id": "globex"}),
        )
        .await;
    let fields = response.error_fields();
    assert_eq!(fields, ["tenant_id", "cron", "cron", "timezone", "request.format", "paused"]);
    let missing = app.post_json(Some(ACME_KEY), SCHEDULES, &json!({})).await.error_fields();
    assert_eq!(missing, ["cron", "request"]);
}

#[tokio::test]
async fn patch_pauses_resumes_and_changes_a_schedule() {
    let app = TestApp::spawn().await;
    let schedule = create(&app, &body()).await;
    let uri = format!("{SCHEDULES}/{}", schedule["id"].as_str().unwrap());

    let paused = send_json(&app, "PATCH", ACME_KEY, &uri, Some(&json!({"paused": true}))).await;
    assert_eq!(paused.status, StatusCode::OK, "{}", paused.text());
    let paused = paused.json();
    assert_eq!(paused["paused"], true);
    assert_eq!(paused["next_fire_at"], Value::Null, "a paused schedule does not fire");
    assert_eq!(paused["cron"], schedule["cron"], "only what the patch names changes");

    let changed = send_json(
        &app,
        "PATCH",
        ACME_KEY,
        &uri,
        Some(
            &json!({"paused": false, "cron": "15 * * * *", "timezone": null, "request": {"format": "ndjson"},
                     "note": null}),
        ),
    )
    .await
    .json();
    assert_eq!(changed["paused"], false);
    assert_eq!((changed["cron"].as_str(), changed["timezone"].as_str()), (Some("15 * * * *"), Some("UTC")));
    assert_eq!(changed["request"]["format"], "ndjson");
    assert_eq!(changed["request"]["compression"], "none", "the request is replaced as a whole");
    assert_eq!(changed["note"], Value::Null);
    assert!(changed["next_fire_at"].as_str().unwrap().contains(":15:00"));
    assert_eq!(app.get(Some(ACME_KEY), &uri).await.json(), changed);

    let bad = send_json(&app, "PATCH", ACME_KEY, &uri, Some(&json!({"cron": "0 0 32 * *"}))).await;
    let problem = bad.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
    assert!(problem["errors"][0]["message"].as_str().unwrap().contains("day_of_month"), "{problem}");
    let empty = send_json(&app, "PATCH", ACME_KEY, &uri, Some(&json!({}))).await;
    empty.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
}

#[tokio::test]
async fn delete_removes_a_schedule() {
    let app = TestApp::spawn().await;
    let schedule = create(&app, &body()).await;
    let uri = format!("{SCHEDULES}/{}", schedule["id"].as_str().unwrap());
    let deleted = send_json(&app, "DELETE", ACME_KEY, &uri, None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT, "{}", deleted.text());
    assert!(deleted.body.is_empty());
    app.get(Some(ACME_KEY), &uri).await.assert_problem(StatusCode::NOT_FOUND, "not-found");
    send_json(&app, "DELETE", ACME_KEY, &uri, None).await.assert_problem(StatusCode::NOT_FOUND, "not-found");
}

#[tokio::test]
async fn trigger_starts_an_export_that_completes() {
    let app = TestApp::spawn().await;
    let schedule =
        create(&app, &json!({"cron": "0 0 1 1 *", "request": {"format": "csv"}, "paused": true})).await;
    let uri = format!("{SCHEDULES}/{}/trigger", schedule["id"].as_str().unwrap());
    let triggered = app.post(Some(ACME_KEY), &uri).await;
    assert_eq!(triggered.status, StatusCode::ACCEPTED, "{}", triggered.text());
    let export = triggered.json();
    let id = export["id"].as_str().unwrap();
    assert_eq!(triggered.header("location"), Some(format!("/v1/exports/{id}").as_str()));
    assert_eq!(export["format"], "csv");
    let done = app.wait_for_status(id, "completed").await;
    assert_eq!(done["record_count"], 100);
    // Each fire is an ordinary export of the tenant.
    let listed = app.get(Some(ACME_KEY), "/v1/exports").await.json();
    assert_eq!(listed["items"][0]["id"], export["id"]);
}

#[tokio::test]
async fn another_tenants_schedule_is_not_found() {
    let app = TestApp::spawn().await;
    let schedule = create(&app, &body()).await;
    let uri = format!("{SCHEDULES}/{}", schedule["id"].as_str().unwrap());
    app.get(Some(GLOBEX_KEY), &uri).await.assert_problem(StatusCode::NOT_FOUND, "not-found");
    send_json(&app, "PATCH", GLOBEX_KEY, &uri, Some(&json!({"paused": true})))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    send_json(&app, "DELETE", GLOBEX_KEY, &uri, None)
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.post(Some(GLOBEX_KEY), &format!("{uri}/trigger"))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    let theirs = app.get(Some(GLOBEX_KEY), SCHEDULES).await.json();
    assert!(theirs["items"].as_array().unwrap().is_empty());
    // Still there, unchanged, for its owner.
    assert_eq!(app.get(Some(ACME_KEY), &uri).await.json(), schedule);
    app.get(Some(ACME_KEY), &format!("{SCHEDULES}/not-a-uuid"))
        .await
        .assert_problem(StatusCode::NOT_FOUND, "not-found");
    app.get(None, SCHEDULES).await.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_create() {
    let app = TestApp::spawn().await;
    let request = |body: &Value| {
        Request::post(SCHEDULES)
            .header("authorization", format!("Bearer {ACME_KEY}"))
            .header("content-type", "application/json")
            .header("idempotency-key", "nightly-schedule")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let first = app.send(request(&body())).await;
    assert_eq!(first.status, StatusCode::CREATED);
    let again = app.send(request(&body())).await;
    assert_eq!(again.status, StatusCode::OK);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(again.json()["id"], first.json()["id"]);
    let other = app.send(request(&json!({"cron": "1 1 * * *", "request": {"format": "csv"}}))).await;
    other.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "idempotency-key-reused");
}

#[tokio::test]
async fn a_preview_lists_the_next_fires_and_judges_the_cron_as_a_create_would() {
    let app = TestApp::spawn().await;
    let preview = |body: Value| {
        let app = &app;
        async move { app.post_json(Some(ACME_KEY), &format!("{SCHEDULES}/preview"), &body).await }
    };
    let response = preview(json!({"cron": "0  3 * * MON-FRI", "timezone": "Europe/Paris", "count": 7})).await;
    assert_eq!(response.status, StatusCode::OK, "{}", response.text());
    let body = response.json();
    assert_eq!(
        (body["cron"].as_str(), body["timezone"].as_str()),
        (Some("0 3 * * MON-FRI"), Some("Europe/Paris"))
    );
    let fires: Vec<chrono::DateTime<chrono::Utc>> =
        body["next_fires"].as_array().unwrap().iter().map(|t| t.as_str().unwrap().parse().unwrap()).collect();
    assert_eq!(fires.len(), 7);
    assert!(fires.windows(2).all(|w| w[0] < w[1]), "{fires:?}");
    for fire in &fires {
        // 03:00 in Paris is 02:00 UTC in winter, 01:00 in summer: the same weekday.
        assert!(matches!(fire.format("%H:%M").to_string().as_str(), "01:00" | "02:00"), "{fire}");
        assert!(!matches!(fire.format("%a").to_string().as_str(), "Sat" | "Sun"), "{fire}");
    }
    // The same schedule created now fires first at the first previewed time.
    let created = create(
        &app,
        &json!({"cron": "0 3 * * MON-FRI", "timezone": "Europe/Paris",
                                       "request": {"format": "csv"}}),
    )
    .await;
    assert_eq!(
        created["next_fire_at"].as_str().unwrap().parse::<chrono::DateTime<chrono::Utc>>().unwrap(),
        fires[0]
    );

    let defaults = preview(json!({"cron": "*/30 * * * *"})).await.json();
    assert_eq!(
        (defaults["timezone"].as_str(), defaults["next_fires"].as_array().map(Vec::len)),
        (Some("UTC"), Some(5))
    );

    for (body, field, code) in [
        (json!({"cron": "0 25 * * *"}), "cron", "cron_invalid_field"),
        (json!({"cron": "0 0 31 2 *"}), "cron", "cron_never_fires"),
        (json!({"cron": "0 3 * * *", "timezone": "Mars/Olympus"}), "timezone", "invalid_value"),
        (json!({"cron": "0 3 * * *", "count": 21}), "count", "invalid_value"),
        (json!({"cron": "0 3 * * *", "request": {}}), "request", "unknown_field"),
    ] {
        let problem =
            preview(body.clone()).await.assert_problem(StatusCode::UNPROCESSABLE_ENTITY, "validation");
        assert_eq!(
            (problem["errors"][0]["field"].as_str(), problem["errors"][0]["code"].as_str()),
            (Some(field), Some(code)),
            "{body}"
        );
    }
    let anonymous = app.post_json(None, &format!("{SCHEDULES}/preview"), &json!({"cron": "0 3 * * *"})).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
}
