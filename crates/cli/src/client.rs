//! The HTTP side: one base URL and one key, JSON in and out, error answers as [`CliError`]s.

use std::error::Error as _;
use std::time::Duration;

use reqwest::header::{HeaderMap, LOCATION, RETRY_AFTER};
use reqwest::{Method, RequestBuilder, Response, StatusCode, Url};
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::CliError;
use crate::problem::Problem;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest silence between two reads of one answer.
const READ_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one API call; downloads have none, they take as long as the file does.
const CALL_TIMEOUT: Duration = Duration::from_secs(60);
/// Most of an error body read: problems are small, and a misbehaving server must not fill memory.
const MAX_ERROR_BODY: usize = 64 * 1024;
const IDEMPOTENCY_KEY: &str = "Idempotency-Key";

/// The API at one base URL, called with one key.
pub struct Client {
    http: reqwest::Client,
    base: String,
    key: String,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client").field("base", &self.base).finish_non_exhaustive()
    }
}

/// A successful answer: the JSON as sent (what `--json` prints) and the part this client reads.
#[derive(Debug)]
pub struct Fetched<T> {
    pub raw: Value,
    pub item: T,
    pub status: StatusCode,
    /// Seconds the API asks a poller to wait (`Retry-After`), while something is unfinished.
    pub retry_after: Option<Duration>,
}

impl Client {
    /// A client of the API at `base` (`http://` or `https://`, possibly with a path prefix).
    pub fn new(base: &str, key: String) -> Result<Self, CliError> {
        let url =
            Url::parse(base).map_err(|e| CliError::Usage(format!("the API URL {base:?} is invalid: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(CliError::Usage(format!("the API URL {base:?} must start with http:// or https://")));
        }
        // reqwest is built without a provider of its own (ring is the tree's only one) and panics
        // without a process-wide one. Err means one is already installed.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let http = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            // A stalled connection (a download included) ends rather than hanging for ever.
            .read_timeout(READ_TIMEOUT)
            // A download's 307 is followed by hand, without the API key: it leads to the storage.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("uex/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| CliError::Other(anyhow::Error::new(e).context("building the HTTP client")))?;
        Ok(Self { http, base: base.trim_end_matches('/').to_owned(), key })
    }

    pub async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<Fetched<T>, CliError> {
        self.call(self.request(Method::GET, path)).await
    }

    pub async fn post<T: DeserializeOwned>(
        &self,
        path: &str,
        body: Option<&Value>,
        idempotency_key: Option<&str>,
    ) -> Result<Fetched<T>, CliError> {
        let mut request = self.request(Method::POST, path);
        if let Some(body) = body {
            request = request.json(body);
        }
        if let Some(key) = idempotency_key {
            request = request.header(IDEMPOTENCY_KEY, key);
        }
        self.call(request).await
    }

    pub async fn patch<T: DeserializeOwned>(&self, path: &str, body: &Value) -> Result<Fetched<T>, CliError> {
        self.call(self.request(Method::PATCH, path).json(body)).await
    }

    pub async fn delete(&self, path: &str) -> Result<(), CliError> {
        self.call::<Value>(self.request(Method::DELETE, path)).await.map(drop)
    }

    /// The export file's response, and the storage host when the API redirected there (`307` to
    /// a signed URL, fetched without the API key: the signature is the credential).
    pub async fn download(&self, path: &str) -> Result<(Response, Option<String>), CliError> {
        let url = self.url(path);
        let response = self.send(&url, self.http.get(&url).bearer_auth(&self.key)).await?;
        if !response.status().is_redirection() {
            return Ok((response, None));
        }
        let location = response
            .headers()
            .get(LOCATION)
            .and_then(|value| value.to_str().ok())
            .ok_or_else(|| CliError::Unexpected(format!("{} without a Location", response.status())))?;
        let target = Url::parse(&url)
            .and_then(|base| base.join(location))
            .map_err(|e| CliError::Unexpected(format!("a redirect to an invalid URL: {e}")))?;
        let host = target.host_str().unwrap_or_default().to_owned();
        let shown = format!("storage at {host}");
        // The storage's errors are not the API's problems: an expired signature (403) is no
        // wrong key, and S3's XML is no problem document.
        let response = self.http.get(target).send().await.map_err(|e| unreachable(&shown, &e))?;
        let status = response.status();
        if status.is_redirection() {
            return Err(CliError::Unexpected("the storage redirected the download again".to_owned()));
        }
        if !status.is_success() {
            return Err(CliError::Unexpected(format!(
                "the {shown} answered {status} to the signed download URL"
            )));
        }
        Ok((response, Some(host)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http.request(method, self.url(path)).bearer_auth(&self.key).timeout(CALL_TIMEOUT)
    }

    async fn call<T: DeserializeOwned>(&self, request: RequestBuilder) -> Result<Fetched<T>, CliError> {
        let response = self.send(&self.base, request).await?;
        let status = response.status();
        let retry_after = retry_after(response.headers());
        let body = response.bytes().await.map_err(|e| unreachable(&self.base, &e))?;
        let raw = if body.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&body)
                .map_err(|e| CliError::Unexpected(format!("{status} with a body that is not JSON: {e}")))?
        };
        let item = serde_json::from_value(raw.clone()).map_err(|e| {
            CliError::Unexpected(format!("{status} with a body this client cannot read: {e}"))
        })?;
        Ok(Fetched { raw, item, status, retry_after })
    }

    /// Sends `request`; an error status becomes [`CliError::Api`], no answer [`CliError::Unreachable`].
    async fn send(&self, target: &str, request: RequestBuilder) -> Result<Response, CliError> {
        let response = request.send().await.map_err(|e| unreachable(target, &e))?;
        let status = response.status();
        if status.is_success() || status.is_redirection() {
            return Ok(response);
        }
        let retry_after = retry_after(response.headers());
        let body = read_capped(response).await;
        let problem = Problem::from_body(status.canonical_reason().unwrap_or("Error"), &body);
        Err(CliError::Api { status: status.as_u16(), problem, retry_after })
    }
}

/// At most [`MAX_ERROR_BODY`] bytes of `response`'s body; a body cut short is read as far as it came.
async fn read_capped(mut response: Response) -> Vec<u8> {
    let mut body = Vec::new();
    while let Ok(Some(chunk)) = response.chunk().await {
        body.extend_from_slice(&chunk);
        if body.len() >= MAX_ERROR_BODY {
            body.truncate(MAX_ERROR_BODY);
            break;
        }
    }
    body
}

/// A request that got no answer, with the innermost causes ("Connection refused").
pub fn unreachable(target: &str, error: &reqwest::Error) -> CliError {
    let mut reason = if error.is_timeout() { "timed out".to_owned() } else { error.to_string() };
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !reason.contains(&text) {
            reason.push_str(": ");
            reason.push_str(&text);
        }
        source = cause.source();
    }
    CliError::Unreachable { url: target.to_owned(), reason }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    headers.get(RETRY_AFTER).and_then(|value| value.to_str().ok()).and_then(parse_retry_after)
}

/// `Retry-After` in seconds; the HTTP-date form, which this API never sends, counts as absent.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_read_in_seconds() {
        assert_eq!(parse_retry_after("1"), Some(Duration::from_secs(1)));
        assert_eq!(parse_retry_after(" 30 "), Some(Duration::from_secs(30)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
        assert_eq!(parse_retry_after("-1"), None);
    }

    #[test]
    fn only_http_urls_are_accepted() {
        assert!(Client::new("http://127.0.0.1:8080", "k".into()).is_ok());
        assert!(Client::new("https://api.example.com/userexport/", "k".into()).is_ok());
        for bad in ["127.0.0.1:8080", "ftp://host", "not a url"] {
            let Err(error) = Client::new(bad, "k".into()) else { panic!("{bad} accepted") };
            assert_eq!(error.exit() as u8, 2, "{bad}");
        }
    }

    #[test]
    fn paths_are_joined_to_the_base_with_its_prefix() {
        let client = Client::new("https://host/prefix/", "k".into()).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(client.url("/v1/exports"), "https://host/prefix/v1/exports");
    }
}
