//! What the pipeline's phases and a route share about one request.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};

use crate::auth::OpenedTokens;
use crate::endpoint::{ConversationId, Route};
use crate::error::GatewayError;
use crate::gateway::{Bot, Live};
use crate::seal::ClientToken;
use crate::telemetry::RequestTrace;
use crate::upstream::call::{Credential, Forwarding, Reply, UpstreamCall};

/// Per-request facts the phases share.
pub struct RequestContext {
    pub route: Route,
    pub peer: SocketAddr,
    pub forwarded_for: HeaderValue,
    /// The caller: the peer, or the client a trusted proxy forwarded for.
    pub client_ip: IpAddr,
    pub local: SocketAddr,
    pub request_id: HeaderValue,
    /// The status of the last upstream answer, for the access log.
    pub upstream_status: Option<u16>,
    /// Whether the caller sent `Accept-Encoding: gzip`; upstream gzip is decoded otherwise.
    pub accepts_gzip: bool,
    /// The settings this request runs with from start to end, even across a reload.
    pub live: Arc<Live>,
    /// The bot the request's host and path chose, from `live`.
    pub bot: Arc<Bot>,
    /// The connection's last opened client token.
    pub opened: Arc<OpenedTokens>,
    /// The request's server span while tracing is on.
    pub trace: Option<RequestTrace>,
}

impl RequestContext {
    /// Opens the caller's token for this request's bot and, when given, `conversation`.
    pub fn authorize(
        &self,
        headers: &http::HeaderMap,
        conversation: Option<&ConversationId>,
    ) -> Result<ClientToken, GatewayError> {
        crate::auth::authorize(
            &self.live.sealer,
            &self.opened,
            &self.bot.name,
            headers,
            conversation,
        )
    }

    /// An upstream call for this request's bot, measured under its route and carrying its
    /// request id and client address.
    pub fn upstream<'a>(
        &'a self,
        method: Method,
        path: &'a str,
        credential: Credential<'a>,
        timeout: Duration,
    ) -> UpstreamCall<'a> {
        UpstreamCall::new(
            &self.bot,
            method,
            path,
            credential,
            self.route.as_str(),
            timeout,
            self.live.config.limits.upstream_error_body_bytes,
        )
        .forwarding(Forwarding {
            request_id: &self.request_id,
            forwarded_for: &self.forwarded_for,
            trace: self.trace.as_ref().map(RequestTrace::parent),
        })
    }

    /// Notes the upstream status of `reply` for the access log.
    pub fn saw(&mut self, reply: &Reply) {
        self.upstream_status = Some(reply.answer.status().as_u16());
    }
}
