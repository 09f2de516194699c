use std::collections::HashSet;

use http::StatusCode;
use serde_json::json;

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, csv_body};

#[tokio::test]
async fn an_unfinished_export_says_when_to_poll_again() {
    let app = TestApp::builder().gated_after(0).spawn().await;
    let id = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();

    let response = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}")).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("retry-after"), Some("1"));
    assert_eq!(response.json()["id"], id);
}

#[tokio::test]
async fn a_finished_export_has_no_retry_after() {
    let app = TestApp::spawn().await;
    let export = app.create_completed(&csv_body()).await;

    let response = app.get(Some(ACME_KEY), export["links"]["self"].as_str().unwrap()).await;

    assert_eq!(response.status, StatusCode::OK);
    assert_eq!(response.header("retry-after"), None);
    assert_eq!(response.json(), export);
}

#[tokio::test]
async fn a_malformed_or_unknown_export_id_is_the_same_404() {
    let app = TestApp::spawn().await;

    let malformed = app.get(Some(ACME_KEY), "/v1/exports/not-a-uuid").await;
    let unknown = app.get(Some(ACME_KEY), "/v1/exports/0190f5c3-0000-7000-8000-000000000001").await;
    let bad_escape = app.get(Some(ACME_KEY), "/v1/exports/%FF%FE").await;

    let problem = malformed.assert_problem(StatusCode::NOT_FOUND, "not-found");
    assert_eq!(unknown.assert_problem(StatusCode::NOT_FOUND, "not-found"), problem);
    assert_eq!(bad_escape.assert_problem(StatusCode::NOT_FOUND, "not-found"), problem);
}

#[tokio::test]
async fn listing_pages_through_exports_newest_first_without_duplicates() {
    let app = TestApp::spawn().await;
    let mut created = Vec::new();
    for _ in 0..5 {
        created.push(app.create_completed(&csv_body()).await["id"].as_str().unwrap().to_owned());
    }

    let mut pages = Vec::new();
    let mut uri = "/v1/exports?limit=2".to_owned();
    loop {
        let page = app.get(Some(ACME_KEY), &uri).await;
        assert_eq!(page.status, StatusCode::OK, "{}", page.text());
        let page = page.json();
        let ids: Vec<String> =
            page["items"].as_array().unwrap().iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
        pages.push(ids);
        match page["next_cursor"].as_str() {
            Some(cursor) => uri = format!("/v1/exports?limit=2&cursor={cursor}"),
            None => {
                assert!(page["next_cursor"].is_null(), "{page}");
                break;
            }
        }
        assert!(pages.len() <= 3, "too many pages: {pages:?}");
    }

    assert_eq!(pages.iter().map(Vec::len).collect::<Vec<_>>(), [2, 2, 1]);
    let listed: Vec<String> = pages.concat();
    created.reverse();
    assert_eq!(listed, created, "newest first");
    assert_eq!(listed.iter().collect::<HashSet<_>>().len(), 5);
}

#[tokio::test]
async fn listing_defaults_to_twenty_items_per_page() {
    let app = TestApp::builder().users(1).spawn().await;
    for _ in 0..21 {
        app.create(&csv_body()).await;
    }

    let page = app.get(Some(ACME_KEY), "/v1/exports").await.json();

    assert_eq!(page["items"].as_array().unwrap().len(), 20);
    assert!(page["next_cursor"].is_string());
}

#[tokio::test]
async fn listing_filters_by_status() {
    // Exports of at most 5 rows pass the gate; unlimited ones wait at it.
    let app = TestApp::builder().gated_after(5).spawn().await;
    let small = json!({"format": "csv", "limit": 5});
    let completed: Vec<String> = {
        let mut ids = Vec::new();
        for _ in 0..2 {
            ids.push(app.create_completed(&small).await["id"].as_str().unwrap().to_owned());
        }
        ids
    };
    let running = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();
    app.wait_for_status(&running, "running").await;
    let cancelled = app.create(&csv_body()).await.json()["id"].as_str().unwrap().to_owned();
    app.post(Some(ACME_KEY), &format!("/v1/exports/{cancelled}/cancel")).await;
    app.wait_for_status(&cancelled, "cancelled").await;

    let ids = |status: &'static str| {
        let app = &app;
        async move {
            let page = app.get(Some(ACME_KEY), &format!("/v1/exports?status={status}")).await.json();
            let items = page["items"].as_array().unwrap().clone();
            assert!(items.iter().all(|e| e["status"] == status), "{page}");
            let mut ids: Vec<String> = items.iter().map(|e| e["id"].as_str().unwrap().to_owned()).collect();
            ids.sort();
            ids
        }
    };

    let mut expected_completed = completed.clone();
    expected_completed.sort();
    assert_eq!(ids("completed").await, expected_completed);
    assert_eq!(ids("running").await, [running]);
    assert_eq!(ids("cancelled").await, [cancelled]);
    assert!(ids("failed").await.is_empty());
    assert!(ids("pending").await.is_empty());
}

#[tokio::test]
async fn listing_shows_only_the_callers_tenant() {
    let app = TestApp::spawn().await;
    let acme = app.create_completed(&csv_body()).await;

    let globex = app.get(Some(GLOBEX_KEY), "/v1/exports").await.json();
    let mine = app.get(Some(ACME_KEY), "/v1/exports").await.json();

    assert_eq!(globex["items"], json!([]));
    assert_eq!(mine["items"][0]["id"], acme["id"]);
}

#[tokio::test]
async fn listing_rejects_a_bad_status_limit_or_cursor_naming_each() {
    let app = TestApp::spawn().await;

    let all = app.get(Some(ACME_KEY), "/v1/exports?status=done&limit=0&cursor=garbage").await;
    assert_eq!(all.error_fields(), ["status", "limit", "cursor"]);
    for (query, field) in [
        ("limit=101", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("status=COMPLETED", "status"),
        ("cursor=bm9waXBl", "cursor"),
    ] {
        let response = app.get(Some(ACME_KEY), &format!("/v1/exports?{query}")).await;
        assert_eq!(response.error_fields(), [field], "{query}");
    }
    let max = app.get(Some(ACME_KEY), "/v1/exports?limit=100").await;
    assert_eq!(max.status, StatusCode::OK);
}
