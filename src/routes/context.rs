//! What the pipeline's phases and a route share about one request, and the shape every
//! forwarding route shares: send a call ([`RequestContext::send`]), note its status, pass
//! the answer on scrubbed ([`RequestContext::pass_on`]).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Method};

use crate::auth::OpenedTokens;
use crate::config::Config;
use crate::endpoint::{ConversationId, Route};
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::live::{Bot, Live};
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
            self.config().limits.upstream_error_body_bytes,
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

    /// The settings this request runs with.
    pub fn config(&self) -> &Config {
        &self.live.config
    }

    /// Sends one upstream call ([`Self::upstream`]) and notes its status for the access log.
    pub async fn send(
        &mut self,
        gateway: &Gateway,
        method: Method,
        path: &str,
        credential: Credential<'_>,
        timeout: Duration,
    ) -> Result<Reply, GatewayError> {
        self.send_shaped(gateway, method, path, credential, timeout, |call| call)
            .await
    }

    /// [`Self::send`] with what the route adds to the call (a body, headers).
    pub async fn send_shaped(
        &mut self,
        gateway: &Gateway,
        method: Method,
        path: &str,
        credential: Credential<'_>,
        timeout: Duration,
        shape: impl for<'c> FnOnce(UpstreamCall<'c>) -> UpstreamCall<'c>,
    ) -> Result<Reply, GatewayError> {
        let call = shape(self.upstream(method, path, credential, timeout));
        let reply = call.send(&gateway.metrics).await?;
        self.saw(&reply);
        Ok(reply)
    }
}
