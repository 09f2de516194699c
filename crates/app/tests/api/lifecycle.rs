use std::net::SocketAddr;
use std::time::Duration;

use app::{Application, Config};
use http::StatusCode;

use crate::helpers::API_KEYS;

fn error_of(result: anyhow::Result<Application>) -> String {
    match result {
        Ok(_) => panic!("start-up should have failed"),
        Err(err) => format!("{err:#}"),
    }
}

#[tokio::test]
async fn without_api_keys_a_demo_tenant_gets_a_fresh_random_key() {
    let config = Config { api_keys: None, ..Config::for_tests("") };
    let first = Application::build(config.clone()).await.unwrap();
    let second = Application::build(config).await.unwrap();

    let demo = first.demo_tenant().unwrap();

    assert_eq!(demo.scope.to_string(), "demo/dev");
    assert!(demo.api_key.len() >= 43, "{}", demo.api_key.len());
    assert_ne!(demo.api_key, second.demo_tenant().unwrap().api_key);
    assert!(!format!("{demo:?}").contains(&demo.api_key), "Debug shows the key");
    let request = http::Request::post("/v1/exports/sync")
        .header("authorization", format!("Bearer {}", demo.api_key))
        .header("content-type", "application/json")
        .body(axum::body::Body::from(r#"{"format":"csv"}"#))
        .unwrap();
    let response = tower::ServiceExt::oneshot(first.router(), request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn configured_api_keys_create_no_demo_tenant() {
    let app = Application::build(Config::for_tests(API_KEYS)).await.unwrap();

    assert!(app.demo_tenant().is_none());
}

#[tokio::test]
async fn the_demo_banner_has_ready_to_paste_curl_lines() {
    let config = Config { api_keys: None, ..Config::for_tests("") };
    let app = Application::build(config).await.unwrap();
    let demo = app.demo_tenant().unwrap();

    let banner = app::banner::demo_banner("0.0.0.0:8080".parse::<SocketAddr>().unwrap(), demo);

    let auth = format!("-H 'Authorization: Bearer {}'", demo.api_key);
    assert!(banner.contains(&format!(
        "curl -s -X POST http://127.0.0.1:8080/v1/exports/sync {auth} -H 'Content-Type: application/json' -d '{{\"format\":\"csv\"}}'"
    )), "{banner}");
    assert!(banner.contains("http://127.0.0.1:8080/v1/exports/<id>/download"), "{banner}");
    assert!(banner.contains("open http://127.0.0.1:8080/console"), "{banner}");
    assert!(banner.contains("demo/dev"));
}

#[tokio::test]
async fn invalid_api_keys_fail_start_up_naming_the_setting_but_not_the_key() {
    for keys in ["", "no-scope", "s3cret=Acme/prod", "s3cret=acme", "k=acme/prod,k=globex/prod"] {
        let err = error_of(Application::build(Config::for_tests(keys)).await);
        assert!(err.contains("USEREXPORT_API_KEYS"), "{keys}: {err}");
        assert!(!err.contains("s3cret"), "{keys}: {err}");
        assert!(!err.contains('\n'), "one line: {err}");
    }
}

#[tokio::test]
async fn an_invalid_retry_policy_fails_start_up_naming_the_setting() {
    let mut config = Config::for_tests(API_KEYS);
    config.policy.retry_backoff = 0.5;

    let err = error_of(Application::build(config).await);

    assert!(err.contains("USEREXPORT_RETRY_BACKOFF"), "{err}");
}

#[tokio::test]
async fn an_address_in_use_fails_start_up_naming_the_setting() {
    let first = Application::build(Config::for_tests(API_KEYS)).await.unwrap();
    let config = Config { listen: first.local_addr(), ..Config::for_tests(API_KEYS) };

    let err = error_of(Application::build(config).await);

    assert!(err.contains("USEREXPORT_LISTEN"), "{err}");
}

#[tokio::test]
async fn the_server_serves_on_its_port_and_stops_gracefully() {
    let app = Application::build(Config::for_tests(API_KEYS)).await.unwrap();
    let port = app.port();
    assert_ne!(port, 0);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(app.run_until_stopped(async move {
        let _ = stopped.await;
    }));
    let client = adapters::contract::http_client();

    let health = client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), reqwest::StatusCode::OK);
    stop.send(()).unwrap();

    let finished = tokio::time::timeout(Duration::from_secs(10), server).await;
    assert!(matches!(finished, Ok(Ok(Ok(())))), "{finished:?}");
    assert!(client.get(format!("http://127.0.0.1:{port}/healthz")).send().await.is_err(), "still accepting");
}
