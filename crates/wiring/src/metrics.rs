//! Prometheus exposition: the `metrics` recorder installed once per process, and a small HTTP
//! listener for `USEREXPORT_METRICS_LISTEN` (the worker's endpoint, and the API's when it should
//! not serve `/metrics` on its own port).
//!
//! The code where things happen records through the `metrics` facade (`service::meters` names
//! every metric); only this module knows the exporter.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::OnceLock;
use std::time::Duration;

use clap::Args;
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::CONTENT_TYPE;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use service::meters;
use tokio::net::TcpListener;
use tracing::{info, warn};

/// The text exposition format's content type.
pub const CONTENT_TYPE_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How often histograms are drained into their buckets between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// Where Prometheus metrics are served from.
#[derive(Debug, Clone, Default, Args)]
pub struct MetricsArgs {
    /// Address of a listener serving Prometheus metrics on `GET /metrics` (e.g. `0.0.0.0:9464`).
    /// Worker: unset means no metrics endpoint. API: unset serves `/metrics` on the API's own
    /// port; set moves it to this address only.
    #[arg(long, env = "USEREXPORT_METRICS_LISTEN")]
    pub metrics_listen: Option<SocketAddr>,
}

/// The process's Prometheus recorder, installed at the first call. Every later call returns
/// the same handle, so tests building several applications in one process share it.
pub fn handle() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = builder().unwrap_or_else(|err| {
            warn!(error = %err, "invalid histogram buckets; histograms are exported as summaries");
            PrometheusBuilder::new()
        });
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        if ::metrics::set_global_recorder(recorder).is_err() {
            warn!("another metrics recorder was installed first; /metrics shows nothing of ours");
        }
        meters::describe();
        let upkeep = handle.clone();
        // A thread rather than a task: the recorder outlives any one tokio runtime (tests).
        let spawned = std::thread::Builder::new().name("metrics-upkeep".into()).spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_EVERY);
                upkeep.run_upkeep();
            }
        });
        if let Err(err) = spawned {
            warn!(error = %err, "no metrics upkeep thread; histograms drain at each scrape only");
        }
        handle
    })
}

fn builder() -> Result<PrometheusBuilder, BuildError> {
    PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(meters::EXPORT_DURATION.into()),
            meters::EXPORT_SECONDS_BUCKETS,
        )?
        .set_buckets_for_metric(Matcher::Full(meters::EXPORT_QUEUE.into()), meters::EXPORT_SECONDS_BUCKETS)?
        .set_buckets_for_metric(Matcher::Full(meters::HTTP_DURATION.into()), meters::HTTP_SECONDS_BUCKETS)
}

/// Our metrics in the text exposition format.
pub fn render() -> String {
    handle().render()
}

/// Serves `GET /metrics` on `listener` until the task is dropped: our metrics, followed by
/// those of the Prometheus endpoint `also` (the Temporal SDK's own exporter, on loopback), so
/// one scrape gets both.
pub async fn serve(listener: TcpListener, also: Option<SocketAddr>) {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap_or_default();
    if let Ok(addr) = listener.local_addr() {
        info!(%addr, "serving Prometheus metrics on /metrics");
    }
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(err) => {
                warn!(error = %err, "accepting a metrics connection failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let client = client.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request: Request<Incoming>| {
                let client = client.clone();
                async move { Ok::<_, Infallible>(answer(&request, &client, also).await) }
            });
            let connection =
                hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
            if let Err(err) = connection.await {
                warn!(error = %err, "serving a metrics connection failed");
            }
        });
    }
}

async fn answer(
    request: &Request<Incoming>,
    client: &reqwest::Client,
    also: Option<SocketAddr>,
) -> Response<Full<Bytes>> {
    if request.method() != hyper::Method::GET || request.uri().path() != "/metrics" {
        return plain(StatusCode::NOT_FOUND, "not found: metrics are on GET /metrics\n".to_owned());
    }
    let mut text = render();
    if let Some(addr) = also {
        match scrape(client, addr).await {
            Ok(more) => text.push_str(&more),
            // Ours are still worth serving; the gap shows as missing temporal_* series.
            Err(err) => warn!(error = %err, %addr, "the Temporal SDK's metrics endpoint did not answer"),
        }
    }
    plain(StatusCode::OK, text)
}

async fn scrape(client: &reqwest::Client, addr: SocketAddr) -> reqwest::Result<String> {
    client.get(format!("http://{addr}/metrics")).send().await?.error_for_status()?.text().await
}

fn plain(status: StatusCode, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response.headers_mut().insert(CONTENT_TYPE, hyper::header::HeaderValue::from_static(CONTENT_TYPE_TEXT));
    response
}
