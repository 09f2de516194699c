//! The web console at `/console`: static HTML, CSS and ES modules, embedded in the binary (no
//! build step, nothing fetched from elsewhere) and served without a key. The page signs in with
//! an API key the user pastes and then calls the public API like any client; it has no route of
//! its own beyond these files.
//!
//! Every file goes out with a strict Content-Security-Policy: scripts only from these files (no
//! inline script, no `eval`), and Trusted Types required, so assigning a string to `innerHTML`
//! throws in browsers that enforce them: data can only ever reach the page as text.

use std::sync::LazyLock;

use axum::Router;
use axum::extract::Path;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use http::header::{
    CACHE_CONTROL, CONTENT_SECURITY_POLICY, CONTENT_TYPE, ETAG, IF_NONE_MATCH, REFERRER_POLICY,
    X_CONTENT_TYPE_OPTIONS, X_FRAME_OPTIONS,
};
use http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use sha2::{Digest, Sha256};

use crate::problem::ApiError;

/// Only this origin's files and API; no inline code, no plugins, no framing, no `<base>`, and
/// no string may become HTML (Trusted Types with no policy).
pub const POLICY: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; \
     connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'; \
     require-trusted-types-for 'script'; trusted-types 'none'";

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";
const SVG: &str = "image/svg+xml";

/// One embedded file, by its path under `/console/`.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $content_type:expr) => {
        Asset {
            path: $path,
            content_type: $content_type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $path)),
        }
    };
}

const INDEX: usize = 0;

static ASSETS: &[Asset] = &[
    asset!("index.html", HTML),
    asset!("console.css", CSS),
    asset!("favicon.svg", SVG),
    asset!("js/main.js", JS),
    asset!("js/api.js", JS),
    asset!("js/dom.js", JS),
    asset!("js/format.js", JS),
    asset!("js/poller.js", JS),
    asset!("js/forms.js", JS),
    asset!("js/exports.js", JS),
    asset!("js/export_row.js", JS),
    asset!("js/files.js", JS),
    asset!("js/schedules.js", JS),
    asset!("js/batches.js", JS),
];

/// A strong validator per file: its SHA-256, so a new binary with changed files is refetched.
static ETAGS: LazyLock<Vec<HeaderValue>> = LazyLock::new(|| {
    ASSETS
        .iter()
        .map(|asset| {
            let digest = hex::encode(&Sha256::digest(asset.body)[..16]);
            HeaderValue::from_str(&format!("\"{digest}\""))
                .unwrap_or_else(|_| HeaderValue::from_static("\"\""))
        })
        .collect()
});

/// `/console`, `/console/` and the files under it; anything else under it is a `404` problem.
pub(crate) fn router<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/console", get(index))
        .route("/console/", get(index))
        .route("/console/{*path}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve(INDEX, &headers)
}

async fn file(Path(path): Path<String>, headers: HeaderMap, uri: Uri) -> Response {
    match ASSETS.iter().position(|asset| asset.path == path) {
        Some(i) => serve(i, &headers),
        None => ApiError::RouteNotFound { method: Method::GET.to_string(), path: uri.path().to_owned() }
            .into_response(),
    }
}

fn serve(i: usize, request: &HeaderMap) -> Response {
    let (Some(asset), Some(etag)) = (ASSETS.get(i), ETAGS.get(i)) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let fresh = request
        .get_all(IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|tag| tag.trim().trim_start_matches("W/") == etag.to_str().unwrap_or_default());
    let mut response = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(CONTENT_TYPE, HeaderValue::from_static(asset.content_type))], asset.body).into_response()
    };
    let headers = response.headers_mut();
    headers.insert(ETAG, etag.clone());
    // Revalidated on every load (cheap with the ETag), so an upgraded binary's files are used at once.
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(CONTENT_SECURITY_POLICY, HeaderValue::from_static(POLICY));
    headers.insert(X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(REFERRER_POLICY, HeaderValue::from_static("no-referrer"));
    headers.insert(X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(
        HeaderName::from_static("cross-origin-opener-policy"),
        HeaderValue::from_static("same-origin"),
    );
    headers.insert(
        HeaderName::from_static("cross-origin-resource-policy"),
        HeaderValue::from_static("same-origin"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_file_is_non_empty_and_named_once() {
        let mut paths: Vec<&str> = ASSETS.iter().map(|a| a.path).collect();
        paths.sort_unstable();
        paths.dedup();
        assert_eq!(paths.len(), ASSETS.len());
        assert!(ASSETS.iter().all(|a| !a.body.is_empty()));
        assert_eq!(ASSETS[INDEX].path, "index.html");
    }

    /// The files never build HTML from strings: no `innerHTML`, `outerHTML`,
    /// `insertAdjacentHTML`, `document.write` or `eval`, and no inline script or handler.
    #[test]
    fn no_file_turns_strings_into_markup() {
        for asset in ASSETS {
            let text = String::from_utf8_lossy(asset.body);
            for sink in
                ["innerHTML", "outerHTML", "insertAdjacentHTML", "document.write", "eval(", "new Function"]
            {
                assert!(!text.contains(sink), "{} uses {sink}", asset.path);
            }
            if asset.content_type == HTML {
                assert!(!has_handler(&text), "{}: inline event handler", asset.path);
                assert!(!text.contains("<script>"), "{}: inline script", asset.path);
            }
        }
    }

    /// An attribute such as `onclick=`.
    fn has_handler(html: &str) -> bool {
        html.split(char::is_whitespace).any(|word| {
            word.strip_prefix("on")
                .and_then(|rest| rest.split_once('='))
                .is_some_and(|(name, _)| !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase()))
        })
    }
}
