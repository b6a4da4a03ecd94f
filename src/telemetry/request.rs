//! The server span of one client request, continued from the caller's W3C `traceparent`
//! (and `tracestate`) or the root of a new trace.

use std::borrow::Cow;
use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Method};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{
    Link, SpanContext, SpanKind, Status, TraceContextExt, TraceId, TraceState, Tracer as _,
};
use opentelemetry::{Context, KeyValue};

use super::setup::Telemetry;
use super::stream::Origin;
use super::upstream::{Parent, Scope, method_name, method_value};
use crate::endpoint::{ConversationId, Route};
use crate::metrics::status_class;

/// What a request's phases need of its trace; ended by [`RequestTrace::finish`] or, when
/// the client goes away mid-request, when dropped.
pub struct RequestTrace {
    /// Holds the server span.
    scope: Arc<Scope>,
    /// The caller sent a valid `traceparent`: its trace id is worth logging even when
    /// this gateway does not record the request.
    continued: bool,
}

/// What the access log and the server span share once the response exists.
pub struct Finish<'a> {
    pub method: &'a Method,
    pub route: Route,
    pub status: u16,
    pub bot: &'a str,
    pub request_id: &'a HeaderValue,
    pub upstream_status: Option<u16>,
}

/// Reads only the two W3C headers; the propagator asks for nothing else.
struct W3cHeaders<'a>(&'a HeaderMap);

/// The longest `tracestate` taken from a caller (W3C Trace Context asks vendors to pass on
/// at least 512 characters); a longer one is dropped whole rather than copied into every
/// span and held in the export queue.
const MAX_TRACESTATE: usize = 512;

impl Extractor for W3cHeaders<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let value = self.0.get(key)?;
        if key == "tracestate" && value.len() > MAX_TRACESTATE {
            return None;
        }
        value.to_str().ok()
    }

    fn keys(&self) -> Vec<&str> {
        ["traceparent", "tracestate"]
            .into_iter()
            .filter(|key| self.0.contains_key(*key))
            .collect()
    }
}

impl Telemetry {
    /// The server span of a request with `headers`, started now.
    pub fn server_span(self: &Arc<Self>, headers: &HeaderMap, method: &Method) -> RequestTrace {
        let caller = self
            .propagator
            .extract_with_context(&Context::new(), &W3cHeaders(headers));
        let valid = caller.span().span_context().is_valid();
        let builder = self
            .tracer
            .span_builder(method_name(method))
            .with_kind(SpanKind::Server)
            .with_attributes([KeyValue::new("http.request.method", method_value(method))]);
        if self.trust_incoming_context {
            let span = builder.start_with_context(&self.tracer, &caller);
            return RequestTrace {
                scope: Arc::new(Scope {
                    telemetry: self.clone(),
                    cx: caller.with_span(span),
                }),
                continued: valid,
            };
        }
        // Untrusted: a new trace, sampled by our ratio; the caller's span only as a link
        // (without its tracestate), so its trace can still be found.
        let builder = if valid {
            let linked = caller.span().span_context().clone();
            let linked = SpanContext::new(
                linked.trace_id(),
                linked.span_id(),
                linked.trace_flags(),
                linked.is_remote(),
                TraceState::default(),
            );
            builder.with_links(vec![Link::with_context(linked)])
        } else {
            builder
        };
        let root = Context::new();
        let span = builder.start_with_context(&self.tracer, &root);
        RequestTrace {
            scope: Arc::new(Scope {
                telemetry: self.clone(),
                cx: root.with_span(span),
            }),
            continued: false,
        }
    }
}

impl RequestTrace {
    /// The conversation the request is about, on the span only when
    /// `tracing.include_conversation_ids` allows it.
    pub fn conversation(&self, conversation: Option<&ConversationId>) {
        if let Some(id) = conversation
            && self.scope.telemetry.include_conversation_ids
        {
            self.scope.cx.span().set_attribute(KeyValue::new(
                "directline.conversation_id",
                id.as_str().to_owned(),
            ));
        }
    }

    /// What the request's upstream calls are started under.
    pub fn parent(&self) -> Parent {
        Parent(self.scope.clone())
    }

    /// What a conversation's hub keeps to link its stream spans to this request.
    pub fn origin(&self) -> Origin {
        Origin(self.scope.clone())
    }

    /// The trace id for log lines: of a recorded request, or of the caller's trace.
    pub fn log_id(&self) -> Option<TraceId> {
        let span = self.scope.cx.span();
        let context = span.span_context();
        (context.is_sampled() || self.continued).then(|| context.trace_id())
    }

    /// Names the span after its route (`POST /v3/directline/conversations/{conversationId}/activities`,
    /// the OpenTelemetry HTTP convention), records the outcome and ends it.
    pub fn finish(self, done: Finish<'_>) {
        let span = self.scope.cx.span();
        if !span.is_recording() {
            return;
        }
        let template = route_template(done.route);
        span.update_name(match (span_name(done.method, done.route), template) {
            (Some(name), _) => Cow::Borrowed(name),
            (None, Some(template)) => Cow::Owned(format!("{} {template}", done.method)),
            (None, None) => method_name(done.method),
        });
        let mut attributes = vec![
            KeyValue::new("directline.route", done.route.as_str()),
            KeyValue::new("http.response.status_code", i64::from(done.status)),
            KeyValue::new("directline.status_class", status_class(done.status)),
            KeyValue::new("directline.bot", done.bot.to_owned()),
            KeyValue::new(
                "directline.request_id",
                done.request_id.to_str().unwrap_or("").to_owned(),
            ),
        ];
        if let Some(template) = template {
            attributes.push(KeyValue::new("http.route", template));
        }
        if let Some(upstream) = done.upstream_status {
            attributes.push(KeyValue::new(
                "directline.upstream_status",
                i64::from(upstream),
            ));
        }
        span.set_attributes(attributes);
        // Server spans are errors for 5xx only: a 4xx is the caller's (HTTP conventions).
        if done.status >= 500 {
            span.set_status(Status::error(status_class(done.status)));
        }
        span.end();
    }
}

/// The name of the span of a route called with its usual method, without formatting one.
fn span_name(method: &Method, route: Route) -> Option<&'static str> {
    Some(match (route, method.as_str()) {
        (Route::TokensGenerate, "POST") => "POST /v3/directline/tokens/generate",
        (Route::TokensRefresh, "POST") => "POST /v3/directline/tokens/refresh",
        (Route::StartConversation, "POST") => "POST /v3/directline/conversations",
        (Route::Reconnect, "GET") => "GET /v3/directline/conversations/{conversationId}",
        (Route::GetActivities, "GET") => {
            "GET /v3/directline/conversations/{conversationId}/activities"
        }
        (Route::PostActivity, "POST") => {
            "POST /v3/directline/conversations/{conversationId}/activities"
        }
        (Route::Upload, "POST") => "POST /v3/directline/conversations/{conversationId}/upload",
        (Route::Stream, "GET") => "GET /v3/directline/conversations/{conversationId}/stream",
        (Route::SessionId, "GET") => "GET /v3/directline/session/getsessionid",
        (Route::Demo, "GET") => "GET /",
        _ => return None,
    })
}

/// The route as a path template: the conversation id is a placeholder, never its value.
fn route_template(route: Route) -> Option<&'static str> {
    Some(match route {
        Route::TokensGenerate => "/v3/directline/tokens/generate",
        Route::TokensRefresh => "/v3/directline/tokens/refresh",
        Route::StartConversation => "/v3/directline/conversations",
        Route::Reconnect => "/v3/directline/conversations/{conversationId}",
        Route::GetActivities | Route::PostActivity => {
            "/v3/directline/conversations/{conversationId}/activities"
        }
        Route::Upload => "/v3/directline/conversations/{conversationId}/upload",
        Route::Stream => "/v3/directline/conversations/{conversationId}/stream",
        Route::SessionId => "/v3/directline/session/getsessionid",
        Route::Demo => "/",
        Route::Preflight | Route::Unknown => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The fixed names are what formatting would give.
    #[test]
    fn span_names_are_method_and_template() {
        for route in [
            Route::TokensGenerate,
            Route::TokensRefresh,
            Route::StartConversation,
            Route::Reconnect,
            Route::GetActivities,
            Route::PostActivity,
            Route::Upload,
            Route::Stream,
            Route::SessionId,
            Route::Demo,
            Route::Preflight,
        ] {
            for method in [Method::GET, Method::POST, Method::OPTIONS] {
                if let (Some(name), Some(template)) =
                    (span_name(&method, route), route_template(route))
                {
                    assert_eq!(name, format!("{method} {template}"));
                }
            }
        }
        assert!(route_template(Route::Unknown).is_none());
        assert!(span_name(&Method::DELETE, Route::PostActivity).is_none());
    }
}
