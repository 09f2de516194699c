use axum::body::Body;
use http::{Request, StatusCode};

use crate::helpers::{ACME_KEY, GLOBEX_KEY, TestApp, csv_body};

const PROTECTED: [(&str, &str); 6] = [
    ("POST", "/v1/exports"),
    ("POST", "/v1/exports/sync"),
    ("GET", "/v1/exports"),
    ("GET", "/v1/exports/0190f5c3-0000-7000-8000-000000000001"),
    ("GET", "/v1/exports/0190f5c3-0000-7000-8000-000000000001/download"),
    ("POST", "/v1/exports/0190f5c3-0000-7000-8000-000000000001/cancel"),
];

async fn send(
    app: &TestApp,
    method: &str,
    uri: &str,
    authorization: Option<&str>,
) -> crate::helpers::TestResponse {
    let mut request = Request::builder().method(method).uri(uri).header("content-type", "application/json");
    if let Some(value) = authorization {
        request = request.header("authorization", value);
    }
    app.send(request.body(Body::from(csv_body().to_string())).unwrap()).await
}

#[tokio::test]
async fn every_export_route_without_an_api_key_is_a_401_with_a_bearer_challenge() {
    let app = TestApp::spawn().await;

    for (method, uri) in PROTECTED {
        let response = send(&app, method, uri, None).await;
        response.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
        let challenge = response.header("www-authenticate").unwrap_or_default();
        assert!(challenge.starts_with("Bearer"), "{method} {uri}: {challenge:?}");
    }
}

#[tokio::test]
async fn an_unknown_or_malformed_api_key_is_a_401() {
    let app = TestApp::spawn().await;

    for authorization in [
        "Bearer not-a-configured-key",
        "Bearer ",
        "Bearer",
        &format!("Basic {ACME_KEY}"),
        ACME_KEY,
        &format!("Bearer {ACME_KEY}x"),
    ] {
        for (method, uri) in PROTECTED {
            let response = send(&app, method, uri, Some(authorization)).await;
            response.assert_problem(StatusCode::UNAUTHORIZED, "unauthenticated");
            assert!(response.header("www-authenticate").unwrap().starts_with("Bearer"));
        }
    }
}

#[tokio::test]
async fn the_bearer_scheme_is_case_insensitive() {
    let app = TestApp::spawn().await;

    let response = send(&app, "GET", "/v1/exports", Some(&format!("bearer {ACME_KEY}"))).await;

    assert_eq!(response.status, StatusCode::OK);
}

#[tokio::test]
async fn another_tenants_export_is_not_found_and_never_shown() {
    let app = TestApp::spawn().await;
    let export = app.create_completed(&csv_body()).await;
    let id = export["id"].as_str().unwrap();
    let missing = app.get(Some(GLOBEX_KEY), "/v1/exports/0190f5c3-0000-7000-8000-000000000001").await;

    let get = app.get(Some(GLOBEX_KEY), &format!("/v1/exports/{id}")).await;
    let download = app.get(Some(GLOBEX_KEY), &format!("/v1/exports/{id}/download")).await;
    let cancel = app.post(Some(GLOBEX_KEY), &format!("/v1/exports/{id}/cancel")).await;

    let not_found = missing.assert_problem(StatusCode::NOT_FOUND, "not-found");
    for response in [get, download, cancel] {
        assert_eq!(response.assert_problem(StatusCode::NOT_FOUND, "not-found"), not_found);
        assert!(!response.text().contains(id));
    }
    let own = app.get(Some(ACME_KEY), &format!("/v1/exports/{id}/download")).await;
    assert_eq!(own.status, StatusCode::OK);
}

#[tokio::test]
async fn probes_and_the_api_description_need_no_key() {
    let app = TestApp::spawn().await;

    for uri in ["/healthz", "/readyz", "/openapi.json"] {
        assert_eq!(app.get(None, uri).await.status, StatusCode::OK, "{uri}");
    }
}
