//! The worker's metrics endpoint on `USEREXPORT_METRICS_LISTEN`: ours (`wiring::metrics`) and
//! the Temporal SDK's (task slots, schedule-to-start latencies, poll and request failures).
//! The SDK exports its metrics through its own Prometheus exporter, which insists on its own
//! listener: it gets a loopback port, and our endpoint appends its text, so one scrape gets
//! both.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use anyhow::Context;
use temporalio_common::telemetry::metrics::{CoreMeter, TemporalMeter};
use temporalio_common::telemetry::{
    PrometheusExporterOptions, TelemetryOptions, start_prometheus_metric_exporter, telemetry_init,
};
use temporalio_sdk::runtime::RuntimeOptions;
use tokio::net::TcpListener;
use tokio::task::AbortHandle;
use tokio_util::task::AbortOnDropHandle;
use wiring::MetricsArgs;

/// The running endpoint (nothing when metrics are off); dropping it stops both listeners.
pub(crate) struct Telemetry {
    meter: Option<Arc<dyn CoreMeter>>,
    sdk_exporter: Option<AbortHandle>,
    _serving: Option<AbortOnDropHandle<()>>,
}

/// Starts the endpoint when `USEREXPORT_METRICS_LISTEN` is set.
///
/// # Errors
/// The address cannot be bound, or the SDK's exporter cannot start.
pub(crate) async fn start(args: &MetricsArgs) -> anyhow::Result<Telemetry> {
    let Some(addr) = args.metrics_listen else {
        return Ok(Telemetry { meter: None, sdk_exporter: None, _serving: None });
    };
    wiring::metrics::handle();
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on USEREXPORT_METRICS_LISTEN {addr}"))?;
    // Prometheus conventions: `_total` counters, durations in seconds with the unit in the name.
    let options = PrometheusExporterOptions::builder()
        .socket_addr(SocketAddr::from((Ipv4Addr::LOCALHOST, 0)))
        .counters_total_suffix(true)
        .unit_suffix(true)
        .use_seconds_for_durations(true)
        .build();
    let sdk = start_prometheus_metric_exporter(options)
        .context("starting the Temporal SDK's Prometheus exporter")?;
    let serving = tokio::spawn(wiring::metrics::serve(listener, Some(sdk.bound_addr)));
    Ok(Telemetry {
        meter: Some(sdk.meter as Arc<dyn CoreMeter>),
        sdk_exporter: Some(sdk.abort_handle),
        _serving: Some(AbortOnDropHandle::new(serving)),
    })
}

impl Telemetry {
    /// The SDK runtime's options: its metrics go to the SDK's exporter when the endpoint runs.
    pub(crate) fn runtime_options(&self) -> anyhow::Result<RuntimeOptions> {
        let telemetry = TelemetryOptions::builder().maybe_metrics(self.meter.clone()).build();
        RuntimeOptions::builder().telemetry_options(telemetry).build().map_err(anyhow::Error::msg)
    }

    /// The meter of the worker's client connection (poll and request failures and latencies),
    /// with the SDK's `temporal_` prefix and labels.
    pub(crate) fn client_meter(&self) -> Option<TemporalMeter> {
        let meter = self.meter.clone()?;
        telemetry_init(TelemetryOptions::builder().metrics(meter).build()).ok()?.get_temporal_metric_meter()
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(exporter) = &self.sdk_exporter {
            exporter.abort();
        }
    }
}
