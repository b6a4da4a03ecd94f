//! `GET` and `POST …/activities`: history pages passed through scrubbed, posted activities
//! with `from` bound to the token's user.

use std::sync::Arc;

use http::{Method, Request, Response};
use hyper::body::Incoming;

use super::answer::{credential_needles, passthrough};
use super::context::RequestContext;
use super::request_body::{read_limited, require_json_content_type};
use crate::activity_body;
use crate::body::Body;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::rewrite;
use crate::seal::ClientToken;
use crate::upstream::call::Credential;

pub async fn get_activities(
    gateway: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, GatewayError> {
    let watermark = rewrite::query_watermark(request.uri().query())?;
    let path = format!(
        "/v3/directline/conversations/{conversation}/activities{}",
        rewrite::watermark_query(watermark.as_deref())
    );
    let timeout = ctx.live.config.timeouts.default;
    let reply = ctx
        .upstream(
            Method::GET,
            &path,
            Credential::SecretThenToken(&token.upstream_token),
            timeout,
        )
        .send(&gateway.metrics)
        .await?;
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

pub async fn post_activity(
    gateway: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    require_json_content_type(&parts.headers)?;
    let bytes = read_limited(
        body,
        &parts.headers,
        ctx.live.config.limits.activity_body_bytes,
        ctx,
    )
    .await?;
    let name = if ctx.bot.identity.is_some() {
        activity_body::SenderName::Verified(token.name.as_deref())
    } else {
        activity_body::SenderName::Caller
    };
    let body = activity_body::bind_sender_named(&bytes, &token.user_id, name)?;
    let path = format!("/v3/directline/conversations/{conversation}/activities");
    let reply = ctx
        .upstream(
            Method::POST,
            &path,
            Credential::SecretThenToken(&token.upstream_token),
            ctx.live.config.timeouts.activities,
        )
        .json(body)
        .send(&gateway.metrics)
        .await?;
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
