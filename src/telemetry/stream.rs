//! Spans of a conversation's stream: the hub's upstream resume, a client's resume, a slow
//! client's close. Each links to the request that created the conversation's hub on this
//! replica instead of being its child, and each is one span per event, never per activity.

use std::sync::Arc;

use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::{Context, KeyValue};

use super::upstream::{Parent, Scope};
use crate::endpoint::ConversationId;

/// The request a hub was created by (its server span, ended or not).
#[derive(Clone)]
pub struct Origin(pub(super) Arc<Scope>);

/// A stream lifecycle span; ends with [`StreamSpan::finish`] or when dropped.
pub struct StreamSpan(Arc<Scope>);

impl Origin {
    fn sampled(&self) -> bool {
        self.0.cx.span().span_context().is_sampled()
    }

    /// The trace the hub's session log lines point to.
    pub fn trace_id(&self) -> Option<TraceId> {
        self.sampled()
            .then(|| self.0.cx.span().span_context().trace_id())
    }

    fn start(
        &self,
        name: &'static str,
        parent: &Context,
        link_to: &Origin,
        bot: &str,
        conversation: &ConversationId,
    ) -> StreamSpan {
        let telemetry = &self.0.telemetry;
        let tracer = &telemetry.tracer;
        let mut attributes = vec![KeyValue::new("directline.bot", bot.to_owned())];
        if telemetry.include_conversation_ids {
            attributes.push(KeyValue::new(
                "directline.conversation_id",
                conversation.as_str().to_owned(),
            ));
        }
        let span = tracer
            .span_builder(name)
            .with_kind(SpanKind::Internal)
            .with_attributes(attributes)
            .with_links(vec![Link::with_context(
                link_to.0.cx.span().span_context().clone(),
            )])
            .start_with_context(tracer, parent);
        StreamSpan(Arc::new(Scope {
            telemetry: telemetry.clone(),
            cx: parent.with_span(span),
        }))
    }

    /// The hub reconnecting upstream after a drop: a trace of its own (the request that
    /// created the hub ended long ago), linked to that request.
    pub fn upstream_resume(&self, bot: &str, conversation: &ConversationId) -> Option<StreamSpan> {
        self.sampled().then(|| {
            self.start(
                "stream upstream_resume",
                &Context::new(),
                self,
                bot,
                conversation,
            )
        })
    }

    /// A client resuming at its watermark: a child of the stream request it came with
    /// (`self`), linked to the hub's origin when the hub was made by another request.
    pub fn client_resume(
        &self,
        hub: Option<&Origin>,
        bot: &str,
        conversation: &ConversationId,
    ) -> Option<StreamSpan> {
        self.sampled().then(|| {
            self.start(
                "stream client_resume",
                &self.0.cx,
                hub.unwrap_or(self),
                bot,
                conversation,
            )
        })
    }

    /// A client closed with 1013 for falling `lag_frames` behind.
    pub fn slow_client_closed(&self, bot: &str, conversation: &ConversationId, lag_frames: usize) {
        if let Some(span) = self.sampled().then(|| {
            self.start(
                "stream slow_client_closed",
                &Context::new(),
                self,
                bot,
                conversation,
            )
        }) {
            span.0.cx.span().set_attribute(KeyValue::new(
                "directline.client_lag_frames",
                lag_frames as i64,
            ));
        }
    }
}

impl StreamSpan {
    /// What the span's upstream calls are started under.
    pub fn parent(&self) -> Parent {
        Parent(self.0.clone())
    }

    pub fn finish(self, result: &'static str, attributes: &[(&'static str, i64)]) {
        let span = self.0.cx.span();
        span.set_attribute(KeyValue::new("directline.result", result));
        span.set_attributes(
            attributes
                .iter()
                .map(|(key, value)| KeyValue::new(*key, *value)),
        );
        span.end();
    }
}

impl Drop for StreamSpan {
    fn drop(&mut self) {
        // `finish` ended it already; a span dropped unfinished (its task was cancelled)
        // ends here rather than when the last clone of its context goes.
        self.0.cx.span().end();
    }
}
