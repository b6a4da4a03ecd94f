//! `POST …/upload`: attachments streamed upstream as they arrive, bounded, uploader bound; the
//! multipart activity part rewritten and screened as a posted activity (PROTOCOL §4.3).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use super::context::RequestContext;
use super::request_body::content_length;
use crate::activity_body;
use crate::boxed_body::{self, Body, BoxError};
use crate::endpoint::ConversationId;
use crate::error::{GatewayError, Refusal};
use crate::gateway::Gateway;
use crate::policy::Subject;
use crate::seal::ClientToken;
use crate::upload_activity::{self, First, Watcher};
use crate::upstream::call::Credential;

type ClientBody = boxed_body::Deadline<Limited<Incoming>>;

pub async fn upload(
    gateway: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, Refusal> {
    let (parts, body) = request.into_parts();
    let limit = ctx.config().limits.upload_body_bytes;
    if content_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit }.into());
    }
    let boundary = match parts.headers.get(header::CONTENT_TYPE) {
        None => None,
        Some(value) => match value.to_str().map(upload_activity::boundary) {
            Ok(Ok(boundary)) => boundary,
            // A multipart without a boundary, or a type that is not text: Direct Line could
            // read parts the gateway cannot see.
            _ => return Err(GatewayError::MalformedUpload.into()),
        },
    };
    let mut client_body = boxed_body::Deadline::new(
        Limited::new(body, limit as usize),
        ctx.config().limits.upload_read_timeout,
    );
    let bot = Arc::clone(&ctx.bot);
    let subject = Subject {
        bot: &bot.name,
        conversation: conversation.as_str(),
        user: &token.user_id,
    };
    // The activity part is rewritten before anything goes upstream, so a refusal leaves
    // Direct Line untouched; a raw file (not multipart) has no activity and streams as is.
    let (streamed, recorded, same_length) = match &boundary {
        None => (boxed_body::stream(client_body), None, true),
        Some(boundary) => {
            let head = read_first_part(&mut client_body, boundary, ctx).await?;
            let mut watcher = Watcher::new(boundary);
            let (head, recorded, same_length) = match head {
                Head::File { head, resume } => {
                    watcher
                        .observe(&head[resume..])
                        .map_err(|_| GatewayError::MalformedUpload)?;
                    (Bytes::from(head), None, true)
                }
                Head::Activity { head, range } => {
                    let activity =
                        bound_activity(gateway, ctx, &token, subject, &head[range.clone()]).await?;
                    watcher
                        .observe(&head[range.end..])
                        .map_err(|_| GatewayError::MalformedUpload)?;
                    let recorded = gateway
                        .record
                        .as_ref()
                        .map(|_| Bytes::copy_from_slice(&activity));
                    let head = upload_activity::replace_activity(&head, range, &activity);
                    (head, recorded, false)
                }
            };
            let continued = upload_activity::Continued::new(head, client_body, watcher);
            (boxed_body::stream(continued), recorded, same_length)
        }
    };
    // The uploader is the bound user, whatever `userId` the caller put in the query.
    let user: String = form_urlencoded::byte_serialize(token.user_id.as_bytes()).collect();
    let path = format!("/v3/directline/conversations/{conversation}/upload?userId={user}");
    // The secret: a body streamed once cannot take the enhanced-auth fallback. A bot
    // without one (a Copilot Studio token endpoint) uploads with the conversation token.
    let credential = Credential::SecretElseToken(&token.upstream_token);
    let timeout = ctx.config().timeouts.upload;
    let reply = ctx
        .send_shaped(
            gateway,
            Method::POST,
            &path,
            credential,
            timeout,
            |mut call| {
                for name in [
                    header::CONTENT_TYPE,
                    header::CONTENT_DISPOSITION,
                    header::CONTENT_LENGTH,
                ] {
                    // A rewritten activity changes the length: the call goes chunked instead.
                    if name == header::CONTENT_LENGTH && !same_length {
                        continue;
                    }
                    if let Some(value) = parts.headers.get(&name) {
                        call = call.header(name, value.clone());
                    }
                }
                // Streamed as it arrives, never buffered whole; the limit cuts it off mid-way.
                call.streamed(streamed)
            },
        )
        .await
        .map_err(|e| match e {
            GatewayError::BodyTooLarge { .. } => GatewayError::BodyTooLarge { limit },
            other => other,
        })?;
    // The record keeps the activity as it went upstream, once Direct Line took it.
    if let (Some(record), Some(activity)) = (&gateway.record, recorded)
        && reply.answer.status().is_success()
    {
        record.user(subject, activity);
    }
    ctx.pass_on(gateway, reply.answer, token.upstream_token)
        .await
}

/// The buffered start of a multipart upload, through its first part's headers, or through
/// the activity part when that comes first.
enum Head {
    File {
        head: Vec<u8>,
        resume: usize,
    },
    Activity {
        head: Vec<u8>,
        range: std::ops::Range<usize>,
    },
}

async fn read_first_part(
    client_body: &mut ClientBody,
    boundary: &[u8],
    ctx: &RequestContext,
) -> Result<Head, GatewayError> {
    let activity_limit = ctx.config().limits.activity_body_bytes;
    // The activity's JSON plus its delimiter and headers; past it the first part cannot be
    // an activity within the limit.
    let bound = activity_limit as usize + 2 * upload_activity::MAX_PART_HEADERS + boundary.len();
    let mut head = Vec::new();
    // Looked at again only once the head has doubled (or ended, or reached the bound): a
    // body trickled a byte at a time costs linear time, not quadratic.
    let mut scanned = 0;
    let mut ended = false;
    loop {
        if ended || head.len() >= 2 * scanned || head.len() > bound {
            scanned = head.len().max(1);
            match upload_activity::first_part(&head, boundary) {
                First::File { resume } => return Ok(Head::File { head, resume }),
                First::Activity { body: range } => {
                    if range.len() as u64 > activity_limit {
                        return Err(GatewayError::BodyTooLarge {
                            limit: activity_limit,
                        });
                    }
                    return Ok(Head::Activity { head, range });
                }
                First::Malformed => return Err(GatewayError::MalformedUpload),
                First::NeedMore { activity } if head.len() > bound => {
                    return Err(if activity {
                        GatewayError::BodyTooLarge {
                            limit: activity_limit,
                        }
                    } else {
                        GatewayError::MalformedUpload
                    });
                }
                First::NeedMore { .. } if ended => return Err(GatewayError::MalformedUpload),
                First::NeedMore { .. } => {}
            }
        }
        match client_body.frame().await {
            None => ended = true,
            Some(Ok(frame)) => {
                if let Ok(data) = frame.into_data() {
                    head.extend_from_slice(&data);
                }
            }
            Some(Err(error)) => return Err(read_error(&error, ctx)),
        }
    }
}

fn read_error(error: &BoxError, ctx: &RequestContext) -> GatewayError {
    if error.is::<http_body_util::LengthLimitError>() {
        GatewayError::BodyTooLarge {
            limit: ctx.config().limits.upload_body_bytes,
        }
    } else if error.is::<boxed_body::DeadlineError>() {
        GatewayError::BodyTimeout
    } else {
        GatewayError::BodyRead
    }
}

/// The activity part as a posted activity goes upstream: sender bound (and named, when
/// signed in), delivery mode added, screened by the bot's policy.
async fn bound_activity(
    gateway: &Arc<Gateway>,
    ctx: &RequestContext,
    token: &ClientToken,
    subject: Subject<'_>,
    json: &[u8],
) -> Result<Vec<u8>, GatewayError> {
    let name = if ctx.bot.identity.is_some() {
        activity_body::SenderName::Verified(token.name.as_deref())
    } else {
        activity_body::SenderName::Caller
    };
    let mut activity = activity_body::bind_sender_as(
        json,
        &token.user_id,
        name,
        ctx.bot.settings.delivery_mode.default_for_activities(),
    )?;
    if let Some(policy) = &ctx.bot.policy {
        activity = policy
            .screen_user(&gateway.metrics, subject, activity)
            .await?;
    }
    Ok(activity)
}
