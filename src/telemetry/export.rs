//! From an ended span to the collector: the SDK's batch processor on its own thread, the
//! OTLP/HTTP exporter over [`super::transport`], and the counting around both that the
//! gateway's metrics need (`trace_spans_exported_total`, `trace_spans_dropped_total`).
//!
//! The SDK's processor drops spans when its queue is full but keeps that count to itself.
//! [`Bounded`] therefore keeps its own count of spans handed over and not yet exported (or
//! given up on), refuses spans past the same limit before the processor sees them, and
//! counts each refusal. Since the processor's queue is never fuller than that count, it
//! never drops a span on its own. A refusal costs one atomic increment and decrement: a slow
//! or absent collector never blocks a request.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{
    BatchConfigBuilder, BatchSpanProcessor, Sampler, SdkTracerProvider, Span, SpanData,
    SpanExporter, SpanProcessor,
};
use prometheus::IntCounter;

use super::transport::Transport;
use crate::config::TracingConfig;
use crate::metrics::Metrics;

/// Spans per export request (the OpenTelemetry default), fewer when the queue is smaller.
const MAX_BATCH: usize = 512;

/// The tracer provider for `config`, exporting from threads of its own.
pub fn provider(config: &TracingConfig, metrics: &Metrics) -> Result<SdkTracerProvider, String> {
    let transport = Transport::start(config.export_timeout)
        .map_err(|e| format!("cannot start the export thread: {e}"))?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_http_client(transport)
        .with_protocol(Protocol::HttpBinary)
        .with_endpoint(config.traces_url.as_str())
        .with_timeout(config.export_timeout)
        .build()
        .map_err(|e| e.to_string())?;
    let pending = Arc::new(AtomicUsize::new(0));
    let exporter = Counted {
        inner: exporter,
        pending: pending.clone(),
        exported: metrics.trace_spans_exported.clone(),
        failed: metrics
            .trace_spans_dropped
            .with_label_values(&["export_failed"]),
    };
    let batch = BatchConfigBuilder::default()
        .with_max_queue_size(config.queue_size)
        .with_max_export_batch_size(MAX_BATCH.min(config.queue_size))
        .with_scheduled_delay(config.export_interval)
        .build();
    let processor = Bounded {
        inner: BatchSpanProcessor::builder(exporter)
            .with_batch_config(batch)
            .build(),
        pending,
        limit: config.queue_size,
        dropped: metrics
            .trace_spans_dropped
            .with_label_values(&["queue_full"]),
    };
    let resource = Resource::builder()
        .with_service_name(config.service_name.clone())
        .with_attribute(opentelemetry::KeyValue::new(
            "service.version",
            env!("CARGO_PKG_VERSION"),
        ))
        .build();
    Ok(SdkTracerProvider::builder()
        .with_span_processor(processor)
        .with_sampler(Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(
            config.sampling_ratio,
        ))))
        .with_resource(resource)
        .build())
}

/// The batch processor behind a bound of its own, counted.
#[derive(Debug)]
struct Bounded {
    inner: BatchSpanProcessor,
    /// Spans handed to `inner` and not yet through an export.
    pending: Arc<AtomicUsize>,
    limit: usize,
    dropped: IntCounter,
}

impl SpanProcessor for Bounded {
    fn on_start(&self, span: &mut Span, cx: &Context) {
        self.inner.on_start(span, cx);
    }

    fn on_end(&self, span: SpanData) {
        if self.pending.fetch_add(1, Ordering::AcqRel) >= self.limit {
            self.pending.fetch_sub(1, Ordering::AcqRel);
            self.dropped.inc();
            return;
        }
        self.inner.on_end(span);
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}

/// The OTLP exporter, counting what each batch came to and releasing its place in
/// [`Bounded`]'s count.
#[derive(Debug)]
struct Counted<E> {
    inner: E,
    pending: Arc<AtomicUsize>,
    exported: IntCounter,
    failed: IntCounter,
}

/// Gives a batch's places back however its export ends (also if its future is dropped).
struct Release<'a>(&'a AtomicUsize, usize);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(self.1, Ordering::AcqRel);
    }
}

impl<E: SpanExporter> SpanExporter for Counted<E> {
    async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
        let spans = batch.len();
        let _release = Release(&self.pending, spans);
        let result = self.inner.export(batch).await;
        match &result {
            Ok(()) => self.exported.inc_by(spans as u64),
            Err(error) => {
                self.failed.inc_by(spans as u64);
                tracing::debug!(spans, error = %error, "trace export failed");
            }
        }
        result
    }

    fn shutdown_with_timeout(&self, timeout: Duration) -> OTelSdkResult {
        self.inner.shutdown_with_timeout(timeout)
    }

    fn force_flush(&self) -> OTelSdkResult {
        self.inner.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        self.inner.set_resource(resource);
    }
}
