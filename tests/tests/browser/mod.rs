//! Headless Chromium over WebDriver (Debian's `chromium` and `chromium-driver`), and the real API
//! binary for it to talk to. Each test gets its own chromedriver, browser and API process; a
//! failing test leaves a screenshot and the page's text behind and says where.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fantoccini::elements::Element;
use fantoccini::wd::WebDriverCompatibleCommand;
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use serde_json::{Value, json};

use crate::common::{Running, free_port, userexport_binary, wait_ready};

/// How long the page gets to show what a step expects.
pub const PATIENCE: Duration = Duration::from_secs(15);

/// A tenant key (32 hex characters: 128 bits, the minimum the API accepts).
pub const ACME_KEY: &str = "3f9a0c7e1b5d4f2a8c6e0b9d7f1a3c5e";
pub const GLOBEX_KEY: &str = "7c1e5a9f3b0d2e4a6c8f0b1d3e5a7c9f";
pub const OPERATOR_KEY: &str = "b04e8c2a6f1d9e3b7a5c0f4e2d8b6a1c";

/// Where an executable is on `PATH`, or a loud failure naming the package to install.
fn executable(name: &str, package: &str) -> PathBuf {
    std::env::var_os("PATH")
        .into_iter()
        .flat_map(|path| std::env::split_paths(&path).collect::<Vec<_>>())
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
        .unwrap_or_else(|| {
            panic!("`{name}` is missing: apt-get install -y {package} (scripts/test-all.sh installs it)")
        })
}

/// The API binary with tenants `acme/prod` and `globex/prod`, an operator key, local storage in
/// a temporary directory, and the extra environment `env`.
pub struct Api {
    pub base: String,
    _process: Running,
    _data: tempfile::TempDir,
}

impl Api {
    pub async fn start(env: &[(&str, &str)]) -> Self {
        let data = tempfile::tempdir().unwrap();
        let port = free_port();
        let log = std::fs::File::create(data.path().join("api.log")).unwrap();
        let mut command = Command::new(userexport_binary());
        command
            .env_clear()
            .env("PATH", std::env::var("PATH").unwrap_or_default())
            .env("USEREXPORT_LISTEN", format!("127.0.0.1:{port}"))
            .env("USEREXPORT_DATA_DIR", data.path().join("files"))
            .env("USEREXPORT_API_KEYS", format!("{ACME_KEY}=acme/prod,{GLOBEX_KEY}=globex/prod"))
            .env("USEREXPORT_OPERATOR_KEYS", format!("{OPERATOR_KEY}=batch"))
            .stdout(Stdio::null())
            .stderr(log);
        for (name, value) in env {
            command.env(name, value);
        }
        let mut process = Running(command.spawn().unwrap());
        let base = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{base}/healthz"), &mut process).await;
        Self { base, _process: process, _data: data }
    }

    /// `GET path` with `key`, as JSON.
    pub async fn get(&self, key: &str, path: &str) -> Value {
        let response =
            reqwest::Client::new().get(format!("{}{path}", self.base)).bearer_auth(key).send().await;
        response.unwrap().error_for_status().unwrap().json().await.unwrap()
    }
}

/// One chromedriver and its headless Chromium session.
pub struct Browser {
    pub client: Client,
    pub downloads: tempfile::TempDir,
    name: String,
    _driver: Running,
}

/// A chromedriver command fantoccini has no method for: `POST /session/{id}/{path}`.
#[derive(Debug)]
struct SessionPost {
    path: &'static str,
    body: Value,
}

impl WebDriverCompatibleCommand for SessionPost {
    fn endpoint(&self, base: &url::Url, session: Option<&str>) -> Result<url::Url, url::ParseError> {
        base.join(&format!("session/{}/{}", session.unwrap_or_default(), self.path))
    }

    fn method_and_body(&self, _: &url::Url) -> (http::Method, Option<String>) {
        (http::Method::POST, Some(self.body.to_string()))
    }
}

impl Browser {
    /// Starts chromedriver on a free port and a 1280×900 headless Chromium through it.
    pub async fn start(name: &str) -> Self {
        let chromedriver = executable("chromedriver", "chromium-driver");
        let chromium = executable("chromium", "chromium");
        let port = free_port();
        let mut driver = Running(
            Command::new(chromedriver)
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let url = format!("http://127.0.0.1:{port}");
        wait_ready(&format!("{url}/status"), &mut driver).await;
        let downloads = tempfile::tempdir().unwrap();
        let capabilities = json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": chromium,
                // No sandbox: tests run as root in CI, where Chromium's sandbox refuses to start.
                "args": ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                         "--window-size=1280,900", "--lang=en-US", "--no-first-run"],
                "prefs": {"download.default_directory": downloads.path(), "download.prompt_for_download": false},
            },
            "goog:loggingPrefs": {"browser": "ALL"},
        });
        let Value::Object(capabilities) = capabilities else { unreachable!() };
        let client = ClientBuilder::new(HttpConnector::new())
            .capabilities(capabilities)
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("starting Chromium through chromedriver: {e}"));
        let browser = Self { client, downloads, name: name.to_owned(), _driver: driver };
        // Headless Chromium saves downloads only where it is told to, whatever the preferences say.
        let allow = json!({"cmd": "Browser.setDownloadBehavior",
                           "params": {"behavior": "allow", "downloadPath": browser.downloads.path()}});
        browser.client.issue_cmd(SessionPost { path: "goog/cdp/execute", body: allow }).await.unwrap();
        browser
    }

    /// Ends the session; on `Err`, first saves a screenshot and the page's text, then panics with
    /// the error and where they are.
    pub async fn finish(self, outcome: Result<()>) {
        if let Err(error) = outcome {
            let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("console-failures");
            let saved = self.save_evidence(&dir).await;
            let _ = self.client.close().await;
            panic!("{}: {error:#}\n{saved}", self.name);
        }
        let _ = self.client.close().await;
    }

    async fn save_evidence(&self, dir: &Path) -> String {
        let _ = std::fs::create_dir_all(dir);
        let shot = dir.join(format!("{}.png", self.name));
        let text = dir.join(format!("{}.txt", self.name));
        let mut said = Vec::new();
        match self.client.screenshot().await {
            Ok(png) if std::fs::write(&shot, &png).is_ok() => {
                said.push(format!("screenshot: {}", shot.display()))
            }
            _ => said.push("no screenshot could be taken".to_owned()),
        }
        let page = self.client.execute("return document.body.innerText", vec![]).await;
        let logs = self.console().await.unwrap_or_default();
        let dump = format!(
            "{}\n\n--- browser console ---\n{logs:#?}",
            page.unwrap_or_default().as_str().unwrap_or("")
        );
        if std::fs::write(&text, dump).is_ok() {
            said.push(format!("page text and console: {}", text.display()));
        }
        said.join("\n")
    }

    /// The browser console's entries since the last call (`level`, `source`, `message`).
    pub async fn console(&self) -> Result<Vec<Value>> {
        let log =
            self.client.issue_cmd(SessionPost { path: "se/log", body: json!({"type": "browser"}) }).await?;
        Ok(log.as_array().cloned().unwrap_or_default())
    }

    /// Fails on any console error or warning that no `expected` fragment accounts for (an API
    /// answer the test provoked shows up as "the server responded with a status of 422").
    pub async fn assert_clean_console(&self, expected: &[&str]) -> Result<()> {
        let unexpected: Vec<Value> = self
            .console()
            .await?
            .into_iter()
            .filter(|entry| entry["level"] == "SEVERE" || entry["level"] == "WARNING")
            .filter(|entry| {
                let message = entry["message"].as_str().unwrap_or_default();
                !expected.iter().any(|fragment| message.contains(fragment))
            })
            .collect();
        if !unexpected.is_empty() {
            bail!("the browser console has errors: {unexpected:#?}");
        }
        Ok(())
    }

    pub async fn goto(&self, url: &str) -> Result<()> {
        Ok(self.client.goto(url).await?)
    }

    /// The first element matching `css`, waiting for it to exist.
    pub async fn find(&self, css: &str) -> Result<Element> {
        self.client
            .wait()
            .at_most(PATIENCE)
            .for_element(Locator::Css(css))
            .await
            .with_context(|| format!("no element {css} within {PATIENCE:?}"))
    }

    pub async fn click(&self, css: &str) -> Result<()> {
        self.find(css).await?.click().await.with_context(|| format!("clicking {css}"))
    }

    /// Replaces the text of the input `css` with `text`.
    pub async fn type_into(&self, css: &str, text: &str) -> Result<()> {
        let input = self.find(css).await?;
        input.clear().await?;
        Ok(input.send_keys(text).await?)
    }

    /// Runs `script` (a function body; `arguments[i]` are `args`) and returns its value.
    pub async fn js(&self, script: &str, args: Vec<Value>) -> Result<Value> {
        Ok(self.client.execute(script, args).await?)
    }

    /// The text of the first element matching `css`, or "" when there is none.
    pub async fn text(&self, css: &str) -> Result<String> {
        let text = self.js(
            "const e = document.querySelector(arguments[0]); return e ? e.textContent : ''",
            vec![json!(css)],
        );
        Ok(text.await?.as_str().unwrap_or_default().to_owned())
    }

    /// How many elements match `css` now.
    pub async fn count(&self, css: &str) -> Result<usize> {
        let n = self.js("return document.querySelectorAll(arguments[0]).length", vec![json!(css)]).await?;
        Ok(usize::try_from(n.as_u64().unwrap_or(0)).unwrap_or(0))
    }

    /// Waits until `check` is true (polled every 100 ms), failing with `what` after `within`.
    pub async fn wait_until<F, Fut>(&self, what: &str, within: Duration, mut check: F) -> Result<()>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<bool>>,
    {
        let started = Instant::now();
        loop {
            if check().await? {
                return Ok(());
            }
            if started.elapsed() > within {
                bail!("timed out after {within:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits until the text of `css` contains `fragment`; returns the whole text.
    pub async fn wait_for_text(&self, css: &str, fragment: &str) -> Result<String> {
        let started = Instant::now();
        loop {
            let text = self.text(css).await?;
            if text.contains(fragment) {
                return Ok(text);
            }
            if started.elapsed() > PATIENCE {
                bail!("{css} did not say {fragment:?} within {PATIENCE:?}; it says {text:?}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Fails if the page raised an alert (data run as script would).
    pub async fn assert_no_alert(&self) -> Result<()> {
        match self.client.get_alert_text().await {
            Ok(text) => bail!("the page raised an alert: {text:?}"),
            Err(_) => Ok(()),
        }
    }
}
