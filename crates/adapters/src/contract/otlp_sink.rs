//! A real OTLP/HTTP trace receiver for tests: it answers `POST /v1/traces` with protobuf bodies
//! as a collector does and keeps every span it is sent, so a test reads the traces a process
//! exported through its own exporter, configured by the standard `OTEL_*` variables.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::routing::post;
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use prost::Message;
use tokio::net::TcpListener;
use tokio_util::task::AbortOnDropHandle;

/// One received span, with IDs in lowercase hex as W3C `traceparent` writes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    /// `service.name` of the resource that sent it.
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// `None` for a root span.
    pub parent_span_id: Option<String>,
    /// String, integer and boolean attributes, as text.
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// The receiver; it stops when dropped.
#[derive(Debug)]
pub struct OtlpSink {
    endpoint: String,
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    _server: AbortOnDropHandle<()>,
}

impl OtlpSink {
    /// Listens on a free port of 127.0.0.1.
    pub async fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let app = Router::new().route("/v1/traces", post(receive)).with_state(Arc::clone(&spans));
        let server = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Self { endpoint, spans, _server: AbortOnDropHandle::new(server) }
    }

    /// The value for `OTEL_EXPORTER_OTLP_ENDPOINT` (the exporter appends `/v1/traces`).
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// Every span received so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.spans.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Waits until `done` holds for the spans received, and returns them; panics after `within`
    /// with `what` and the names received.
    pub async fn wait_until(
        &self,
        what: &str,
        within: Duration,
        done: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> Vec<ReceivedSpan> {
        let started = Instant::now();
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            if started.elapsed() > within {
                let names: Vec<String> = spans.iter().map(|s| format!("{}:{}", s.service, s.name)).collect();
                panic!("no {what} within {within:?}; spans received: {names:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

/// The spans of `trace_id` by span ID.
pub fn by_span_id(spans: &[ReceivedSpan], trace_id: &str) -> HashMap<String, ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace_id).map(|s| (s.span_id.clone(), s.clone())).collect()
}

/// The names of `span` and its ancestors, from `span` up to the root (or the first ancestor
/// not received), each as `service:name`.
pub fn lineage(span: &ReceivedSpan, trace: &HashMap<String, ReceivedSpan>) -> Vec<String> {
    let mut names = vec![format!("{}:{}", span.service, span.name)];
    let mut parent = span.parent_span_id.clone();
    while let Some(id) = parent {
        match trace.get(&id) {
            Some(p) => {
                names.push(format!("{}:{}", p.service, p.name));
                parent = p.parent_span_id.clone();
            }
            None => {
                names.push(format!("<missing {id}>"));
                break;
            }
        }
    }
    names
}

async fn receive(
    State(spans): State<Arc<Mutex<Vec<ReceivedSpan>>>>,
    headers: HeaderMap,
    body: Bytes,
) -> (StatusCode, [(header::HeaderName, &'static str); 1], Vec<u8>) {
    let protobuf = headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/x-protobuf"));
    let content_type = [(header::CONTENT_TYPE, "application/x-protobuf")];
    if !protobuf || headers.contains_key(header::CONTENT_ENCODING) {
        return (StatusCode::UNSUPPORTED_MEDIA_TYPE, content_type, Vec::new());
    }
    let Ok(request) = ExportTraceServiceRequest::decode(body) else {
        return (StatusCode::BAD_REQUEST, content_type, Vec::new());
    };
    let mut received = Vec::new();
    for resource_spans in request.resource_spans {
        let service = resource_spans
            .resource
            .iter()
            .flat_map(|r| &r.attributes)
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| text(kv.value.as_ref()))
            .unwrap_or_default();
        for span in resource_spans.scope_spans.into_iter().flat_map(|s| s.spans) {
            received.push(ReceivedSpan {
                service: service.clone(),
                name: span.name,
                trace_id: hex::encode(&span.trace_id),
                span_id: hex::encode(&span.span_id),
                parent_span_id: (!span.parent_span_id.is_empty()).then(|| hex::encode(&span.parent_span_id)),
                attributes: span.attributes.iter().filter_map(attribute).collect(),
            });
        }
    }
    spans.lock().unwrap_or_else(PoisonError::into_inner).extend(received);
    // An empty ExportTraceServiceResponse: everything accepted.
    (StatusCode::OK, content_type, Vec::new())
}

fn attribute(kv: &KeyValue) -> Option<(String, String)> {
    text(kv.value.as_ref()).map(|v| (kv.key.clone(), v))
}

fn text(value: Option<&AnyValue>) -> Option<String> {
    match value?.value.as_ref()? {
        any_value::Value::StringValue(s) => Some(s.clone()),
        any_value::Value::IntValue(i) => Some(i.to_string()),
        any_value::Value::BoolValue(b) => Some(b.to_string()),
        any_value::Value::DoubleValue(d) => Some(d.to_string()),
        _ => None,
    }
}
