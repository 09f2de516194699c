//! Trace context through Temporal: when the process exports traces, every client it connects
//! carries the SDK's OpenTelemetry plugin. The plugin puts the W3C trace context of the caller
//! into the Temporal headers of a workflow start, and the worker's copy of it (workers inherit the
//! client's plugins) opens the workflow and activity spans as children of that context, so one
//! export is one trace from the HTTP request to the activity's COPY and upload.

use std::sync::atomic::{AtomicBool, Ordering};

use temporalio_client::ClientOptions;
use temporalio_sdk::opentelemetry::OpenTelemetryPlugin;

/// Span and trace IDs that come out the same when a workflow is replayed, so a replay does not
/// invent spans; the tracer provider of a process that runs workflows must use it.
pub use temporalio_sdk::opentelemetry::{WorkflowIdGenerator, WorkflowSpanProcessor};

/// Off by default: without an exporter, clients carry no plugin and Temporal calls no headers.
static PROPAGATE: AtomicBool = AtomicBool::new(false);

/// Makes every client connected from now on carry trace context (the process exports traces).
pub fn enable_trace_propagation() {
    PROPAGATE.store(true, Ordering::SeqCst);
}

/// The options of a client bound to `namespace`, with the plugin when traces are exported.
pub(super) fn client_options(namespace: &str) -> ClientOptions {
    let options = ClientOptions::new(namespace);
    if PROPAGATE.load(Ordering::SeqCst) {
        // The global tracer and the W3C propagator: the ones wiring installs.
        options.plugin(OpenTelemetryPlugin::builder().build()).build()
    } else {
        options.build()
    }
}
