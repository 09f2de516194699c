//! `/console`: the embedded web console is served without a key, with a strict
//! Content-Security-Policy, validators for caching, and every file the page loads.

use axum::body::Body;
use http::{Request, StatusCode};

use crate::helpers::{TestApp, TestResponse};

async fn get(app: &TestApp, uri: &str, etag: Option<&str>) -> TestResponse {
    let mut request = Request::get(uri);
    if let Some(etag) = etag {
        request = request.header("if-none-match", etag);
    }
    app.send_unchecked(request.body(Body::empty()).unwrap()).await
}

fn assert_hardened(response: &TestResponse, uri: &str) {
    let policy = response.header("content-security-policy").unwrap_or_default();
    for directive in [
        "default-src 'self'",
        "script-src 'self'",
        "object-src 'none'",
        "frame-ancestors 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "require-trusted-types-for 'script'",
    ] {
        assert!(policy.contains(directive), "{uri}: {directive} missing from {policy:?}");
    }
    assert!(!policy.contains("unsafe-"), "{uri}: {policy}");
    assert_eq!(response.header("x-content-type-options"), Some("nosniff"), "{uri}");
    assert_eq!(response.header("referrer-policy"), Some("no-referrer"), "{uri}");
    assert!(response.header("etag").is_some_and(|e| e.starts_with('"')), "{uri}");
}

/// The `/console/...` paths `text` refers to: quoted absolute paths, and relative `./x.js`
/// imports resolved against `base`.
fn references(text: &str, base: &str) -> Vec<String> {
    let mut found = Vec::new();
    for quote in ['"', '\''] {
        for (start, _) in text.match_indices(quote) {
            let rest = &text[start + 1..];
            let Some(end) = rest.find(quote) else { continue };
            let quoted = &rest[..end];
            if quoted.starts_with("/console/") {
                found.push(quoted.to_owned());
            } else if let Some(name) = quoted.strip_prefix("./").filter(|n| n.ends_with(".js")) {
                found.push(format!("{base}{name}"));
            }
        }
    }
    found
}

#[tokio::test]
async fn the_console_and_every_file_it_loads_are_served_without_a_key_under_a_strict_policy() {
    let app = TestApp::spawn().await;
    for uri in ["/console", "/console/"] {
        let page = get(&app, uri, None).await;
        assert_eq!(page.status, StatusCode::OK, "{uri}");
        assert_eq!(page.header("content-type"), Some("text/html; charset=utf-8"));
        assert_hardened(&page, uri);
    }
    let page = get(&app, "/console", None).await;
    let mut pending = references(&page.text(), "/console/");
    assert!(pending.iter().any(|p| p.ends_with(".css")) && pending.iter().any(|p| p.ends_with("main.js")));
    let mut seen = Vec::new();
    while let Some(uri) = pending.pop() {
        if seen.contains(&uri) {
            continue;
        }
        let file = get(&app, &uri, None).await;
        assert_eq!(file.status, StatusCode::OK, "{uri} is referenced but not served");
        assert_hardened(&file, &uri);
        let expected = match uri.rsplit('.').next() {
            Some("js") => "text/javascript; charset=utf-8",
            Some("css") => "text/css; charset=utf-8",
            Some("svg") => "image/svg+xml",
            other => panic!("{uri}: unexpected kind {other:?}"),
        };
        assert_eq!(file.header("content-type"), Some(expected), "{uri}");
        if uri.ends_with(".js") {
            let base = &uri[..=uri.rfind('/').unwrap()];
            pending.extend(references(&file.text(), base));
        }
        seen.push(uri);
    }
    assert!(seen.len() >= 8, "only {seen:?}");
}

#[tokio::test]
async fn the_console_revalidates_with_its_etag_and_is_not_rate_limited() {
    let app = TestApp::spawn().await;
    let first = get(&app, "/console/console.css", None).await;
    let etag = first.header("etag").unwrap().to_owned();
    let again = get(&app, "/console/console.css", Some(&etag)).await;
    assert_eq!(again.status, StatusCode::NOT_MODIFIED);
    assert!(again.body.is_empty());
    assert_eq!(again.header("etag"), Some(etag.as_str()));
    assert_eq!(again.header("cache-control"), Some("no-cache"));
    let changed = get(&app, "/console/console.css", Some("\"something-else\"")).await;
    assert_eq!(changed.status, StatusCode::OK);

    // Well past the burst of a key's rate limit: the files take no key and so no limit.
    for _ in 0..60 {
        let page = get(&app, "/console", None).await;
        assert_eq!(page.status, StatusCode::OK);
        assert!(page.header("ratelimit").is_none());
    }
}

#[tokio::test]
async fn an_unknown_console_file_is_a_404_problem() {
    let app = TestApp::spawn().await;
    for uri in ["/console/nope.js", "/console/js/../index.html", "/console/js/"] {
        let response = get(&app, uri, None).await;
        response.assert_problem(StatusCode::NOT_FOUND, "not-found");
    }
}
