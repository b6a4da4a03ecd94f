//! The client span of one call to Direct Line (or a Copilot Studio environment): route,
//! status, Direct Line's `x-ms-request-id`, the credential fallback as an event.

use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use opentelemetry::propagation::{Injector, TextMapPropagator};
use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::Span;

use super::setup::Telemetry;

/// A span (in its context) and the tracer its children are started with; shared behind one
/// `Arc`, so what the request and stream code hold stays one pointer wide.
pub(super) struct Scope {
    pub(super) telemetry: Arc<Telemetry>,
    pub(super) cx: Context,
}

/// What a child span is started under: a request's server span or a stream span.
#[derive(Clone)]
pub struct Parent(pub(super) Arc<Scope>);

/// A call's span; ends when dropped (also when the call's future is).
pub struct UpstreamSpan {
    span: Span,
    attempts: i64,
}

static X_MS_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-request-id");

impl Parent {
    /// Starts the span of a call labelled `route` (the upstream metrics' label) to `host`.
    /// With `tracing.propagate_upstream`, the `traceparent` (and `tracestate`) the call must
    /// carry are pushed onto `headers`.
    pub fn upstream(
        &self,
        route: &'static str,
        method: &Method,
        host: &str,
        bot: &str,
        headers: &mut Vec<(HeaderName, HeaderValue)>,
    ) -> Option<UpstreamSpan> {
        let Scope { telemetry, cx } = &*self.0;
        if !cx.span().span_context().is_sampled() {
            // Not recorded here, but Direct Line may still learn the caller's decision.
            if telemetry.propagate_upstream {
                telemetry
                    .propagator
                    .inject_context(cx, &mut HeaderList(headers));
            }
            return None;
        }
        let tracer = &telemetry.tracer;
        let span = tracer
            .span_builder(format!("{method} {route}"))
            .with_kind(SpanKind::Client)
            .with_attributes([
                KeyValue::new("http.request.method", method_value(method)),
                KeyValue::new("server.address", host.to_owned()),
                KeyValue::new("directline.route", route),
                KeyValue::new("directline.bot", bot.to_owned()),
            ])
            .start_with_context(tracer, cx);
        if telemetry.propagate_upstream {
            let cx = Context::new().with_remote_span_context(span.span_context().clone());
            telemetry
                .propagator
                .inject_context(&cx, &mut HeaderList(headers));
        }
        Some(UpstreamSpan { span, attempts: 0 })
    }
}

struct HeaderList<'a>(&'a mut Vec<(HeaderName, HeaderValue)>);

impl Injector for HeaderList<'_> {
    fn set(&mut self, key: &str, value: String) {
        // The propagator writes `tracestate` even when there is none.
        if value.is_empty() {
            return;
        }
        if let (Ok(name), Ok(value)) = (HeaderName::try_from(key), HeaderValue::try_from(value)) {
            self.0.push((name, value));
        }
    }
}

impl UpstreamSpan {
    /// One attempt's outcome: its status and Direct Line's request id, or why there was no
    /// answer (the error's kind only: its text may hold addresses).
    pub fn attempt(&mut self, answer: Result<(u16, Option<&HeaderValue>), &'static str>) {
        self.attempts += 1;
        self.span
            .set_attribute(KeyValue::new("directline.attempts", self.attempts));
        match answer {
            Ok((status, request_id)) => {
                self.span.set_attribute(KeyValue::new(
                    "http.response.status_code",
                    i64::from(status),
                ));
                if let Some(id) = request_id.and_then(|v| v.to_str().ok()) {
                    self.span.set_attribute(KeyValue::new(
                        "http.response.header.x-ms-request-id",
                        id.to_owned(),
                    ));
                }
                self.span.set_status(if status >= 500 {
                    Status::error("upstream 5xx")
                } else {
                    Status::Unset
                });
            }
            Err(kind) => {
                self.span.set_attribute(KeyValue::new("error.type", kind));
                self.span.set_status(Status::error(kind));
            }
        }
    }

    /// The secret was refused with `400 MissingProperty` (enhanced authentication): the
    /// call is sent again with the conversation token.
    pub fn fallback(&mut self) {
        self.span.add_event(
            "credential_fallback",
            vec![KeyValue::new("reason", "MissingProperty")],
        );
    }

    /// The response header Direct Line's request id comes in.
    pub fn request_id_header() -> &'static HeaderName {
        &X_MS_REQUEST_ID
    }
}

/// A method as a span name or attribute value, without copying the common ones.
pub(super) fn method_name(method: &Method) -> std::borrow::Cow<'static, str> {
    match *method {
        Method::GET => "GET".into(),
        Method::POST => "POST".into(),
        Method::OPTIONS => "OPTIONS".into(),
        _ => method.as_str().to_owned().into(),
    }
}

pub(super) fn method_value(method: &Method) -> opentelemetry::Value {
    match method_name(method) {
        std::borrow::Cow::Borrowed(name) => name.into(),
        std::borrow::Cow::Owned(name) => name.into(),
    }
}
