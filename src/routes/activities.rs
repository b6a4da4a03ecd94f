//! `GET` and `POST …/activities`: history pages passed through scrubbed, posted activities
//! with `from` bound to the token's user.

use std::sync::Arc;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::context::RequestContext;
use super::request_body::{read_limited, require_json_content_type};
use crate::activity_body;
use crate::boxed_body::Body;
use crate::endpoint::ConversationId;
use crate::error::{Cause, GatewayError, Refusal};
use crate::gateway::Gateway;
use crate::policy::{Policy, Subject};
use crate::rewrite;
use crate::seal::ClientToken;
use crate::upstream::answer_body::MAX_UPSTREAM_JSON;
use crate::upstream::call::Credential;

pub async fn get_activities(
    gateway: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, Refusal> {
    let mut watermark = rewrite::query_watermark(request.uri().query())?;
    if ctx.config().polling.enabled() {
        // Held polls (`[polling] hold`): served from the conversation's hub.
        let held = crate::stream::poll::serve(
            gateway,
            &ctx.bot.name,
            conversation,
            ctx.client_ip,
            watermark.clone(),
            &token.upstream_token,
            &token.user_id,
        )
        .await?;
        match held {
            Some(body) => {
                let response = poll_response(body);
                return match ctx.bot.policy.clone() {
                    None => Ok(response),
                    // The ring holds what the relay screened; a page read by REST for
                    // the poll is screened here (verdicts are remembered by id: no
                    // activity is asked about twice).
                    Some(policy) => {
                        let subject = Subject {
                            bot: &ctx.bot.name,
                            conversation: conversation.as_str(),
                            user: &token.user_id,
                        };
                        screened_page(gateway, Some(&policy), subject, response).await
                    }
                };
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
    let timeout = ctx.config().timeouts.default;
    let credential = Credential::SecretThenToken(&token.upstream_token);
    let reply = ctx
        .send(gateway, Method::GET, &path, credential, timeout)
        .await?;
    let policy = ctx.bot.policy.clone();
    if policy.is_some() || gateway.record.is_some() {
        // Screened as decoded JSON: the answer is rebuilt anyway when something is withheld.
        ctx.accepts_gzip = false;
    }
    let response = ctx
        .pass_on(gateway, reply.answer, token.upstream_token)
        .await?;
    if policy.is_none() && gateway.record.is_none() {
        return Ok(response);
    }
    let subject = Subject {
        bot: &ctx.bot.name,
        conversation: conversation.as_str(),
        user: &token.user_id,
    };
    screened_page(gateway, policy.as_deref(), subject, response).await
}

/// A history page (a success: refusals never get here) with the bot's activities screened: withheld ones left out (the page's
/// watermark still moves past them), replaced ones swapped; then, with `[record]`, the page
/// as delivered offered to the record.
async fn screened_page(
    gateway: &Gateway,
    policy: Option<&Policy>,
    subject: Subject<'_>,
    response: Response<Body>,
) -> Result<Response<Body>, Refusal> {
    let (mut parts, body) = response.into_parts();
    let bytes = read_page(body).await?;
    let screened = match policy {
        Some(policy) => crate::policy::screen_set(policy, &gateway.metrics, subject, &bytes).await,
        None => None,
    };
    let bytes = match screened {
        Some(screened) => {
            parts.headers.remove(header::CONTENT_LENGTH);
            bytes::Bytes::from(screened)
        }
        None => bytes,
    };
    if let Some(record) = &gateway.record {
        record.bot_set(subject, bytes.clone());
    }
    Ok(Response::from_parts(parts, crate::boxed_body::full(bytes)))
}

/// The page's bytes, bounded as every upstream JSON answer is. A plain frame loop: a
/// `Limited` collect here makes the handler's future not `Send` for every lifetime.
async fn read_page(mut body: Body) -> Result<bytes::Bytes, GatewayError> {
    let mut bytes = bytes::BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|error| GatewayError::UpstreamUnreadable {
            cause: Cause::boxed(error),
        })?;
        if let Ok(data) = frame.into_data() {
            if bytes.len() + data.len() > MAX_UPSTREAM_JSON {
                return Err(GatewayError::upstream_invalid(
                    "an activities page over the size a Direct Line answer can have",
                ));
            }
            bytes.extend_from_slice(&data);
        }
    }
    Ok(bytes.freeze())
}

/// A held poll's answer: an ActivitySet the gateway wrote itself.
fn poll_response(body: String) -> Response<Body> {
    let mut response = Response::new(crate::boxed_body::full(body.into_bytes()));
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
) -> Result<Response<Body>, Refusal> {
    let (parts, body) = request.into_parts();
    require_json_content_type(&parts.headers)?;
    let bytes = read_limited(
        body,
        &parts.headers,
        ctx.config().limits.activity_body_bytes,
        ctx,
    )
    .await?;
    let name = if ctx.bot.identity.is_some() {
        activity_body::SenderName::Verified(token.name.as_deref())
    } else {
        activity_body::SenderName::Caller
    };
    let mut body = activity_body::bind_sender_as(
        &bytes,
        &token.user_id,
        name,
        ctx.bot.settings.delivery_mode.default_for_activities(),
    )?;
    if let Some(policy) = &ctx.bot.policy {
        // Before anything goes upstream: a refusal here leaves Direct Line untouched.
        let subject = Subject {
            bot: &ctx.bot.name,
            conversation: conversation.as_str(),
            user: &token.user_id,
        };
        body = policy.screen_user(&gateway.metrics, subject, body).await?;
    }
    // The record keeps what went upstream, once Direct Line took it.
    let recorded = gateway
        .record
        .as_ref()
        .map(|_| bytes::Bytes::copy_from_slice(&body));
    let path = format!("/v3/directline/conversations/{conversation}/activities");
    let credential = Credential::SecretThenToken(&token.upstream_token);
    let timeout = ctx.config().timeouts.activities;
    let reply = ctx
        .send_shaped(gateway, Method::POST, &path, credential, timeout, |call| {
            call.json(body)
        })
        .await?;
    if let (Some(record), Some(activity)) = (&gateway.record, recorded)
        && reply.answer.status().is_success()
    {
        let subject = Subject {
            bot: &ctx.bot.name,
            conversation: conversation.as_str(),
            user: &token.user_id,
        };
        record.user(subject, activity);
    }
    ctx.pass_on(gateway, reply.answer, token.upstream_token)
        .await
}
