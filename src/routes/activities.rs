//! `GET` and `POST …/activities`: history pages passed through scrubbed, posted activities
//! with `from` bound to the token's user.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
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
    let mut watermark = rewrite::query_watermark(request.uri().query())?;
    if ctx.live.config.polling.enabled() {
        // Held polls (`[polling] hold`): served from the conversation's hub.
        let held = crate::stream::poll::serve(
            gateway,
            &ctx.bot.name,
            conversation,
            ctx.client_ip,
            watermark.clone(),
            &token.upstream_token,
        )
        .await?;
        match held {
            Some(body) => {
                return Ok(poll_response(body));
            }
            // Not held: passed through, from the upstream watermark the gateway's own holds.
            None => {
                watermark = crate::stream::poll::upstream_watermark(&ctx.live.sealer, watermark)?
            }
        }
    }
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

/// A held poll's answer: an ActivitySet the gateway wrote itself.
fn poll_response(body: String) -> Response<Body> {
    let mut response = Response::new(crate::body::full(body.into_bytes()));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/json; charset=utf-8"),
    );
    headers.insert(
        http::header::CACHE_CONTROL,
        http::HeaderValue::from_static("no-cache"),
    );
    response
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
    let body = activity_body::bind_sender_with_mode(
        &bytes,
        &token.user_id,
        ctx.bot.settings.delivery_mode.default_for_activities(),
    )?;
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
