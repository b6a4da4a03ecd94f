//! The tracer a gateway holds while tracing is on, and its orderly end.

use std::sync::Arc;
use std::time::Duration;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};

use crate::config::TracingConfig;
use crate::metrics::Metrics;

/// How long the last spans get to reach the collector at shutdown.
const FLUSH_AT_SHUTDOWN: Duration = Duration::from_secs(5);

pub struct Telemetry {
    provider: SdkTracerProvider,
    pub(super) tracer: SdkTracer,
    pub(super) propagator: TraceContextPropagator,
    pub(super) propagate_upstream: bool,
    pub(super) include_conversation_ids: bool,
    pub(super) trust_incoming_context: bool,
}

impl Telemetry {
    /// The tracer for `config`, or `None` when tracing is off or cannot start (logged: a
    /// gateway without traces still serves).
    pub fn start(config: Option<&TracingConfig>, metrics: &Metrics) -> Option<Arc<Self>> {
        let config = config?;
        match super::export::provider(config, metrics) {
            Ok(provider) => {
                tracing::info!(
                    endpoint = %config.traces_url,
                    service_name = %config.service_name,
                    sampling_ratio = config.sampling_ratio,
                    "tracing on: spans exported by OTLP/HTTP"
                );
                Some(Arc::new(Self {
                    tracer: provider.tracer("directline-gateway"),
                    provider,
                    propagator: TraceContextPropagator::new(),
                    propagate_upstream: config.propagate_upstream,
                    include_conversation_ids: config.include_conversation_ids,
                    trust_incoming_context: config.trust_incoming_context,
                }))
            }
            Err(error) => {
                tracing::error!(%error, "tracing could not start; serving without it");
                None
            }
        }
    }

    /// Sends what is queued and stops the export threads; blocks for at most a few
    /// seconds, so async callers run it with `spawn_blocking`.
    pub fn shutdown(&self) {
        if let Err(error) = self.provider.shutdown_with_timeout(FLUSH_AT_SHUTDOWN) {
            tracing::debug!(%error, "tracing shutdown");
        }
    }
}
