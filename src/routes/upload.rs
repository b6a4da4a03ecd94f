//! `POST …/upload`: attachments streamed upstream as they arrive, bounded, uploader bound.

use std::sync::Arc;

use http::{Method, Request, Response, header};
use http_body_util::Limited;
use hyper::body::Incoming;

use super::answer::{credential_needles, passthrough};
use super::context::RequestContext;
use super::request_body::content_length;
use crate::body::{self, Body};
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::seal::ClientToken;
use crate::upstream::call::Credential;

pub async fn upload(
    gateway: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    let limit = ctx.live.config.limits.upload_body_bytes;
    if content_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    // The uploader is the bound user, whatever `userId` the caller put in the query.
    let user: String = form_urlencoded::byte_serialize(token.user_id.as_bytes()).collect();
    let path = format!("/v3/directline/conversations/{conversation}/upload?userId={user}");
    // The secret: a body streamed once cannot take the enhanced-auth fallback. A bot
    // without one (a Copilot Studio token endpoint) uploads with the conversation token.
    let mut call = ctx.upstream(
        Method::POST,
        &path,
        Credential::SecretElseToken(&token.upstream_token),
        ctx.live.config.timeouts.upload,
    );
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_DISPOSITION,
        header::CONTENT_LENGTH,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            call = call.header(name, value.clone());
        }
    }
    // Streamed as it arrives, never buffered whole; the limit cuts it off mid-way.
    let reply = call
        .streamed(body::stream(body::Deadline::new(
            Limited::new(body, limit as usize),
            ctx.live.config.limits.upload_read_timeout,
        )))
        .send(&gateway.metrics)
        .await
        .map_err(|e| match e {
            GatewayError::BodyTooLarge { .. } => GatewayError::BodyTooLarge { limit },
            other => other,
        })?;
    ctx.saw(&reply);
    let needles = credential_needles(ctx, token.upstream_token);
    passthrough(
        gateway,
        reply.answer,
        ctx,
        ctx.live.config.timeouts.default,
        needles,
    )
    .await
}
