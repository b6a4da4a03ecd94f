//! Distributed tracing: OpenTelemetry spans for client requests, the upstream
//! calls they make and the stream's lifecycle, exported by OTLP/HTTP.
//!
//! Off unless `[tracing]` (or `OTEL_EXPORTER_OTLP_ENDPOINT`) names a collector; then the
//! gateway holds one [`Telemetry`] and every hook is `if let Some(..)` on it, so with tracing
//! off nothing is built, parsed or allocated per request.
//!
//! Map: `setup` (the tracer and its shutdown), `request` (the server span of a client
//! request, the caller's `traceparent`, the trace id of log lines), `upstream` (the client
//! span of a call to Direct Line), `stream` (resume and slow-client spans linked to the
//! request that created a conversation's hub), `export` (batching, dropping, counting),
//! `transport` (the hyper-util client on its own small runtime).
//!
//! It sits with the cores: it imports the configuration, metrics and endpoint types only;
//! the pipeline, routes, stream and upstream layers call it.

mod export;
mod request;
mod setup;
mod stream;
mod transport;
mod upstream;

pub use request::{Finish, RequestTrace};
pub use setup::Telemetry;
pub use stream::{Origin, StreamSpan};
pub use upstream::{Parent, UpstreamSpan};
