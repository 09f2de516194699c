//! The span of one upload, from the writer's opening to its `finish` or `abort`: every call on the
//! writer runs in it, so the work an upload does (S3 parts, fsyncs) shows in the export's trace.

use async_trait::async_trait;
use bytes::Bytes;
use domain::UploadCheckpoint;
use ports::{ObjectWriter, PortError, StoredObject};
use tracing::{Instrument, Span, field, info_span};

pub(super) struct TracedWriter {
    inner: Box<dyn ObjectWriter>,
    span: Span,
}

impl TracedWriter {
    /// `inner` in a span that is a child of the caller's; `resumed` is where a resumed upload
    /// goes on from.
    pub(super) fn wrap(
        inner: Box<dyn ObjectWriter>,
        storage: &'static str,
        key: &str,
        resumed: Option<u64>,
    ) -> Box<dyn ObjectWriter> {
        let span = info_span!(
            "storage.upload",
            otel.kind = "client",
            storage,
            key,
            resumed_from_bytes = resumed,
            bytes = field::Empty,
            otel.status_code = field::Empty
        );
        Box::new(Self { inner, span })
    }

    fn noted<T>(&self, result: Result<T, PortError>) -> Result<T, PortError> {
        if result.is_err() {
            self.span.record("otel.status_code", "ERROR");
        }
        result
    }
}

#[async_trait]
impl ObjectWriter for TracedWriter {
    async fn write(&mut self, chunk: Bytes) -> Result<(), PortError> {
        let result = self.inner.write(chunk).instrument(self.span.clone()).await;
        self.noted(result)
    }

    async fn finish(self: Box<Self>) -> Result<StoredObject, PortError> {
        let Self { inner, span } = *self;
        let result = inner.finish().instrument(span.clone()).await;
        match &result {
            Ok(stored) => span.record("bytes", stored.bytes),
            Err(_) => span.record("otel.status_code", "ERROR"),
        };
        result
    }

    async fn checkpoint(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        let result = self.inner.checkpoint().instrument(self.span.clone()).await;
        self.noted(result)
    }

    async fn cut(&mut self) -> Result<Option<UploadCheckpoint>, PortError> {
        let result = self.inner.cut().instrument(self.span.clone()).await;
        self.noted(result)
    }

    async fn abort(self: Box<Self>) -> Result<(), PortError> {
        let Self { inner, span } = *self;
        inner.abort().instrument(span).await
    }
}
