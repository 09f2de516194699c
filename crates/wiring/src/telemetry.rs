//! Logs and traces of both binaries, set up in one place.
//!
//! Logs: stderr, text or JSON lines, filtered by `RUST_LOG` (default `info`).
//!
//! Traces: only when an OTLP endpoint is configured (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, the standard variables, with the exporter's other
//! `OTEL_*` settings: headers, timeout, `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER`, `OTEL_BSP_*`). Spans go out over OTLP/HTTP with protobuf bodies;
//! `tracing` spans of INFO and above become OpenTelemetry spans, independently of `RUST_LOG`,
//! and log lines carry the ID of the trace they belong to. Without an endpoint nothing of this
//! is installed: no exporter, no extra layer, no Temporal headers.

use std::fmt;

use anyhow::{Context as _, bail};
use clap::ValueEnum;
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_otlp::SpanExporter;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{BatchSpanProcessor, SdkTracerProvider};
use tracing::Subscriber;
use tracing::level_filters::LevelFilter;
use tracing_subscriber::fmt::format::{Format, Full, Json, JsonFields, Writer};
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::{LookupSpan, Registry};
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, filter::Targets};

/// The only OTLP protocol exported: HTTP with protobuf bodies (no second gRPC stack).
const PROTOCOL: &str = "http/protobuf";

/// How log lines are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// What [`init`] installed. [`Telemetry::shutdown`] exports the spans still buffered: call it
/// before the process exits.
#[derive(Debug)]
#[must_use = "spans buffered at exit are lost unless `shutdown` is called"]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Whether spans are exported (an OTLP endpoint is configured).
    pub fn traces_enabled(&self) -> bool {
        self.provider.is_some()
    }

    /// Exports buffered spans and stops the exporter; a no-op without traces.
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(err) = provider.shutdown()
        {
            tracing::warn!(error = %err, "exporting the last spans failed");
        }
    }
}

/// Installs rustls's crypto provider (ring), the global `tracing` subscriber and, with an OTLP
/// endpoint configured, the tracer provider and trace propagation through Temporal. `service`
/// names the process in traces unless `OTEL_SERVICE_NAME` does. Call once, first thing in `main`.
///
/// # Errors
/// An unusable `OTEL_*` setting (named), or a global subscriber already installed.
pub fn init(format: LogFormat, service: &str) -> anyhow::Result<Telemetry> {
    // Before any HTTP client exists (the OTLP exporter's is the first): reqwest takes the
    // process-wide rustls provider and panics without one.
    adapters::tls::install_crypto_provider();
    let provider = tracer_provider(service)?;
    let traced = provider.is_some();
    let logs = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let stderr = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let log_layer = match (format, traced) {
        (LogFormat::Text, false) => stderr.with_filter(logs).boxed(),
        // The trace ID goes at the end of the line, which the text format has no field for;
        // colours would come and go with it, so there are none.
        (LogFormat::Text, true) => {
            stderr.with_ansi(false).event_format(WithTraceId(Format::default())).with_filter(logs).boxed()
        }
        (LogFormat::Json, _) => {
            let json = Format::default().json().with_current_span(true).with_span_list(true);
            stderr.fmt_fields(JsonFields::new()).event_format(WithTraceId(json)).with_filter(logs).boxed()
        }
    };
    let mut layers: Vec<Box<dyn Layer<Registry> + Send + Sync>> = vec![log_layer];
    if let Some(provider) = &provider {
        let tracer = provider.tracer("userexport");
        // The Temporal SDK's own `tracing` spans would start traces of their own beside the
        // plugin's spans (which carry the context), and the exporter's logs would loop back.
        let spans = Targets::new()
            .with_default(LevelFilter::INFO)
            .with_target("temporalio", LevelFilter::OFF)
            .with_target("opentelemetry", LevelFilter::OFF);
        layers.push(
            tracing_opentelemetry::layer()
                .with_tracer(tracer)
                .with_tracked_inactivity(false)
                .with_filter(spans)
                .boxed(),
        );
        opentelemetry::global::set_tracer_provider(provider.clone());
        adapters::temporal::enable_trace_propagation();
    }
    tracing_subscriber::registry()
        .with(layers)
        .try_init()
        .map_err(|e| anyhow::anyhow!("installing the log subscriber: {e}"))?;
    Ok(Telemetry { provider })
}

/// A set, non-empty environment variable.
fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().map(|v| v.trim().to_owned()).filter(|v| !v.is_empty())
}

/// The tracer provider the `OTEL_*` variables describe; `None` without an endpoint.
fn tracer_provider(service: &str) -> anyhow::Result<Option<SdkTracerProvider>> {
    let endpoint_var = ["OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"]
        .into_iter()
        .find(|name| env(name).is_some());
    let Some(endpoint_var) = endpoint_var else { return Ok(None) };
    if env("OTEL_SDK_DISABLED").is_some_and(|v| v.eq_ignore_ascii_case("true"))
        || env("OTEL_TRACES_EXPORTER").is_some_and(|v| v == "none")
    {
        return Ok(None);
    }
    // The signal's own variable wins, as the exporter reads them; it would fall back to
    // http/protobuf on a value it cannot serve, so such a value stops start-up instead.
    for name in ["OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"] {
        if let Some(protocol) = env(name) {
            if protocol != PROTOCOL {
                bail!("{name}={protocol} is not supported: traces are exported over OTLP/HTTP ({PROTOCOL})");
            }
            break;
        }
    }
    let exporter = SpanExporter::builder()
        .with_http()
        .build()
        .with_context(|| format!("{endpoint_var} does not configure a usable OTLP/HTTP exporter"))?;
    let mut resource = Resource::builder();
    let named = env("OTEL_SERVICE_NAME").is_some()
        || env("OTEL_RESOURCE_ATTRIBUTES").is_some_and(|attrs| attrs.contains("service.name="));
    if !named {
        resource = resource.with_service_name(service.to_owned());
    }
    // Workflow spans need IDs that a replay reproduces, and no span started during a replay
    // may be exported a second time: the Temporal SDK's generator and processor see to both.
    let processor =
        adapters::temporal::WorkflowSpanProcessor::new(BatchSpanProcessor::builder(exporter).build());
    Ok(Some(
        SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_id_generator(adapters::temporal::WorkflowIdGenerator::default())
            .with_resource(resource.build())
            .build(),
    ))
}

/// Adds the current trace and span IDs to each log line written inside a trace: the first
/// fields of a JSON object, or `trace_id=…` at the end of a text line.
struct WithTraceId<F>(F);

impl<S, N, F> FormatEvent<S, N> for WithTraceId<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N> + TraceFormat,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> fmt::Result {
        let context = opentelemetry::Context::current();
        let span = context.span();
        let ids = span.span_context();
        if !ids.is_valid() {
            return self.0.format_event(ctx, writer, event);
        }
        let mut line = String::with_capacity(256);
        self.0.format_event(ctx, Writer::new(&mut line), event)?;
        F::splice(&mut writer, &line, &ids.trace_id().to_string(), &ids.span_id().to_string())
    }
}

/// Where a line format puts the IDs.
trait TraceFormat {
    fn splice(out: &mut Writer<'_>, line: &str, trace_id: &str, span_id: &str) -> fmt::Result;
}

impl TraceFormat for Format<Json> {
    fn splice(out: &mut Writer<'_>, line: &str, trace_id: &str, span_id: &str) -> fmt::Result {
        match line.strip_prefix('{') {
            Some(rest) => write!(out, r#"{{"trace_id":"{trace_id}","span_id":"{span_id}",{rest}"#),
            None => out.write_str(line),
        }
    }
}

impl TraceFormat for Format<Full> {
    fn splice(out: &mut Writer<'_>, line: &str, trace_id: &str, _span_id: &str) -> fmt::Result {
        let body = line.strip_suffix('\n').unwrap_or(line);
        writeln!(out, "{body} trace_id={trace_id}")
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn spliced<F: TraceFormat>(line: &str) -> String {
        let mut out = String::new();
        F::splice(&mut Writer::new(&mut out), line, "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331")
            .unwrap();
        out
    }

    #[test]
    fn json_lines_get_the_ids_as_their_first_fields() {
        let line = spliced::<Format<Json>>("{\"timestamp\":\"t\",\"level\":\"INFO\"}\n");
        assert_eq!(
            line,
            "{\"trace_id\":\"0af7651916cd43dd8448eb211c80319c\",\"span_id\":\"b7ad6b7169203331\",\
             \"timestamp\":\"t\",\"level\":\"INFO\"}\n"
        );
    }

    #[test]
    fn text_lines_end_with_the_trace_id() {
        let line = spliced::<Format<Full>>("2026-01-01T00:00:00Z  INFO request: done\n");
        assert_eq!(
            line,
            "2026-01-01T00:00:00Z  INFO request: done trace_id=0af7651916cd43dd8448eb211c80319c\n"
        );
    }
}
