//! The REST routes: each one authorises, builds its upstream request, sends it, and rewrites.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use crate::activity_body;
use crate::body::{self, Body};
use crate::clock;
use crate::config::UserIdPolicy;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::{Gateway, RequestContext};
use crate::metrics::status_class;
use crate::rewrite;
use crate::scrub::{Needles, ScrubbedBody};
use crate::seal::{ClientToken, Purpose, StreamTicket};
use crate::secret;
use crate::upstream;

/// Upstream response headers a client may see; everything else stays behind the gateway.
const PASSED_RESPONSE_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::RETRY_AFTER,
    header::CACHE_CONTROL,
    header::PRAGMA,
    header::EXPIRES,
];

const JSON: &str = "application/json; charset=utf-8";

pub async fn generate_token(
    gw: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let (parts, body) = request.into_parts();
    // Signed-in mode: the identity provider's token decides who this is, before any work.
    let signed_in = match &ctx.bot.identity {
        Some(identity) => Some(identity.sign_in(&parts.headers).await?),
        None => None,
    };
    let params = read_optional_json(
        body,
        &parts.headers,
        ctx.live.config.limits.token_body_bytes,
        ctx,
    )
    .await?;
    let caller_user = params.as_ref().and_then(|p| field(p, "user"));
    // Only a display name is taken from the caller, unless the bot's policy lets the
    // (trusted, server-side) caller choose the id.
    let user_id = match (&signed_in, ctx.bot.settings.user_ids) {
        (Some(signed_in), _) => signed_in.user_id.clone(),
        (None, UserIdPolicy::Caller) => caller_user
            .and_then(|u| field(u, "id"))
            .and_then(Value::as_str)
            .filter(|id| is_caller_user_id(id))
            .map_or_else(mint_user_id, str::to_owned),
        (None, UserIdPolicy::Minted) => mint_user_id(),
    };
    let mut user = Map::new();
    user.insert("id".into(), Value::String(user_id.clone()));
    // A signed-in user's name is the issuer's (`name_claim`), never the caller's say-so.
    let name = match &signed_in {
        Some(signed_in) => signed_in.name.as_deref(),
        None => caller_user
            .and_then(|u| field(u, "name"))
            .and_then(Value::as_str),
    };
    if let Some(name) = name {
        user.insert("name".into(), Value::String(name.to_owned()));
    }
    let mut upstream_body = Map::new();
    upstream_body.insert("user".into(), Value::Object(user));
    if !ctx.bot.settings.trusted_origins.is_empty() {
        upstream_body.insert(
            "trustedOrigins".into(),
            json!(ctx.bot.settings.trusted_origins),
        );
    }
    let request = ctx
        .bot
        .upstream
        .request(
            Method::POST,
            "/v3/directline/tokens/generate",
            ctx.bot.secret.bearer_header(),
        )?
        .header(header::CONTENT_TYPE, "application/json");
    let request = forwarded(request, ctx)
        .body(body::full(
            serde_json::to_vec(&upstream_body).map_err(|_| GatewayError::Internal)?,
        ))
        .map_err(|_| GatewayError::Internal)?;
    let response = send(gw, request, ctx.live.config.timeouts.default, ctx).await?;
    let timeout = ctx.live.config.timeouts.default;
    let (status, json) = match read_json_or_error(gw, ctx, response, timeout, "").await? {
        Ok(ok) => ok,
        Err(error_response) => return Ok(error_response),
    };
    let conversation_id = json_str(&json, "conversationId")
        .and_then(|c| ConversationId::parse(c).ok())
        .ok_or(GatewayError::UpstreamInvalid)?;
    let upstream_token = json_str(&json, "token").ok_or(GatewayError::UpstreamInvalid)?;
    let expires_in = upstream_lifetime(gw, ctx, &json);
    let token = ClientToken {
        bot: ctx.bot.name.to_string(),
        conversation_id: conversation_id.to_string(),
        user_id,
        upstream_token: upstream_token.to_owned(),
        expires_at: clock::unix_seconds().saturating_add(expires_in),
    };
    gw.metrics
        .tokens
        .with_label_values(&["generated", &ctx.bot.name])
        .inc();
    let body = json!({
        "conversationId": conversation_id.as_str(),
        "token": ctx.live.sealer.seal(Purpose::ClientToken, &token),
        "expires_in": expires_in,
    });
    Ok(json_response(status, &body))
}

pub async fn refresh_token(
    gw: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let window = ctx.bot.settings.resume_window;
    let resumes = |result: &str, ctx: &RequestContext| {
        gw.metrics
            .token_resumes
            .with_label_values(&[result, &ctx.bot.name])
            .inc();
    };
    let (mut token, expired) = match crate::auth::authorize_refresh(
        &ctx.live.sealer,
        &ctx.bot.name,
        request.headers(),
        window,
    ) {
        Ok(opened) => opened,
        Err(GatewayError::TokenExpired) => {
            resumes("past_window", ctx);
            return Err(GatewayError::TokenExpired);
        }
        Err(error) => return Err(error),
    };
    if expired && let Some(identity) = &ctx.bot.identity {
        // Signed-in mode (DESIGN §12): the expired token proves ownership of the
        // conversation, a current sign-in proves the person is still its owner.
        identity.prove(request.headers(), &token.user_id).await?;
    }
    let now = clock::unix_seconds();
    if expired {
        // The Direct Line token inside expired with it; the conversation lives on upstream,
        // and the secret can reconnect to it (spec §3). The sealed token is the proof that
        // the caller owned it.
        match resume_expired(gw, &mut token, ctx).await {
            Ok(Ok(())) => resumes("ok", ctx),
            Ok(Err(refused)) => {
                resumes(
                    if refused.status() == StatusCode::NOT_FOUND {
                        "gone"
                    } else {
                        "error"
                    },
                    ctx,
                );
                return Ok(refused);
            }
            Err(error) => {
                resumes(
                    if error == GatewayError::ResumeUnavailable {
                        "unavailable"
                    } else {
                        "error"
                    },
                    ctx,
                );
                return Err(error);
            }
        }
    } else if token.expires_at.saturating_sub(now)
        < ctx.live.config.upstream_refresh_before.as_secs()
    {
        let request = ctx.bot.upstream.request(
            Method::POST,
            "/v3/directline/tokens/refresh",
            secret::bearer(&token.upstream_token),
        )?;
        let request = forwarded(request, ctx)
            .body(body::empty())
            .map_err(|_| GatewayError::Internal)?;
        let response = send(gw, request, ctx.live.config.timeouts.default, ctx).await?;
        let timeout = ctx.live.config.timeouts.default;
        let sent = &token.upstream_token;
        let json = match read_json_or_error(gw, ctx, response, timeout, sent).await? {
            Ok((_, json)) => json,
            Err(error_response) => return Ok(error_response),
        };
        let fresh = json_str(&json, "token").ok_or(GatewayError::UpstreamInvalid)?;
        token.upstream_token = fresh.to_owned();
        token.expires_at = now.saturating_add(upstream_lifetime(gw, ctx, &json));
        if let Ok(conversation) = ConversationId::parse(&token.conversation_id) {
            gw.hubs
                .adopt_upstream_token(&ctx.bot.name, &conversation, &token.upstream_token);
        }
    }
    gw.metrics
        .tokens
        .with_label_values(&["refreshed", &ctx.bot.name])
        .inc();
    let body = json!({
        "conversationId": token.conversation_id,
        "token": ctx.live.sealer.seal(Purpose::ClientToken, &token),
        "expires_in": token.expires_at.saturating_sub(now),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// A fresh upstream token for an expired gateway token's conversation, from a reconnect
/// GET with the secret. Under enhanced authentication that GET needs a live conversation
/// token, which an expired one is not: nothing can resume then. Direct Line's refusals
/// (404 for a conversation it no longer knows) come back as the client's answer.
async fn resume_expired(
    gw: &Gateway,
    token: &mut ClientToken,
    ctx: &mut RequestContext,
) -> Result<Result<(), Response<Body>>, GatewayError> {
    let conversation =
        ConversationId::parse(&token.conversation_id).map_err(|_| GatewayError::InvalidToken)?;
    let timeout = ctx.live.config.timeouts.default;
    let path = format!("/v3/directline/conversations/{conversation}");
    let request = ctx
        .bot
        .upstream
        .request(Method::GET, &path, ctx.bot.secret.bearer_header())?;
    let request = forwarded(request, ctx)
        .body(body::empty())
        .map_err(|_| GatewayError::Internal)?;
    let response = send(gw, request, timeout, ctx).await?;
    let (parts, bytes) = upstream::read_body(response, timeout).await?;
    if parts.status == StatusCode::BAD_REQUEST
        && upstream::error_code(&bytes).as_deref() == Some("MissingProperty")
    {
        return Err(GatewayError::ResumeUnavailable);
    }
    let sent = token.upstream_token.clone();
    let answer = Answer::Read(parts, bytes);
    let json = match read_json_or_error(gw, ctx, answer, timeout, &sent).await? {
        Ok((_, json)) => json,
        Err(refused) => return Ok(Err(refused)),
    };
    if json_str(&json, "conversationId").is_some_and(|c| c != conversation.as_str()) {
        return Err(GatewayError::UpstreamInvalid);
    }
    let fresh = json_str(&json, "token").ok_or(GatewayError::UpstreamInvalid)?;
    token.upstream_token = fresh.to_owned();
    token.expires_at = clock::unix_seconds().saturating_add(upstream_lifetime(gw, ctx, &json));
    gw.hubs
        .adopt_upstream_token(&ctx.bot.name, &conversation, &token.upstream_token);
    Ok(Ok(()))
}

pub async fn start_conversation(
    gw: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let token = ctx.authorize(request.headers(), None)?;
    let ws_base = ws_base(&request, ctx);
    let (parts, body) = request.into_parts();
    let mut params = match read_optional_json(
        body,
        &parts.headers,
        ctx.live.config.limits.token_body_bytes,
        ctx,
    )
    .await?
    {
        Some(Value::Object(map)) => map,
        Some(_) => return Err(GatewayError::MalformedJson),
        None => Map::new(),
    };
    // The conversation's user is the one bound into the token, whatever the caller says.
    params.retain(|k, _| !k.eq_ignore_ascii_case("user"));
    params.insert("user".into(), json!({ "id": token.user_id }));
    // The upstream token (not the secret) starts the conversation tokens/generate allocated.
    let request = ctx
        .bot
        .upstream
        .request(
            Method::POST,
            "/v3/directline/conversations",
            secret::bearer(&token.upstream_token),
        )?
        .header(header::CONTENT_TYPE, "application/json");
    let request = forwarded(request, ctx)
        .body(body::full(
            serde_json::to_vec(&params).map_err(|_| GatewayError::Internal)?,
        ))
        .map_err(|_| GatewayError::Internal)?;
    let response = send(gw, request, ctx.live.config.timeouts.default, ctx).await?;
    let timeout = ctx.live.config.timeouts.default;
    let sent = &token.upstream_token;
    let (status, json) = match read_json_or_error(gw, ctx, response, timeout, sent).await? {
        Ok(ok) => ok,
        Err(error_response) => return Ok(error_response),
    };
    let conversation =
        ConversationId::parse(&token.conversation_id).map_err(|_| GatewayError::InvalidToken)?;
    if json_str(&json, "conversationId") != Some(conversation.as_str()) {
        tracing::warn!(
            request_id = ctx.request_id.to_str().unwrap_or(""),
            "upstream started a different conversation than the token's"
        );
        return Err(GatewayError::UpstreamInvalid);
    }
    let body = conversation_response(gw, ctx, json, token, Minted::Start, &ws_base, &conversation)?;
    gw.metrics
        .tokens
        .with_label_values(&["conversation", &ctx.bot.name])
        .inc();
    Ok(json_response(status, &body))
}

pub async fn reconnect(
    gw: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let token = ctx.authorize(request.headers(), Some(conversation))?;
    let watermark = rewrite::query_watermark(request.uri().query())?;
    let ws_base = ws_base(&request, ctx);
    let path = format!(
        "/v3/directline/conversations/{conversation}{}",
        rewrite::watermark_query(watermark.as_deref())
    );
    let (response, via_token) = send_with_token_fallback(
        gw,
        Method::GET,
        &path,
        None,
        Bytes::new(),
        &token,
        ctx.live.config.timeouts.default,
        ctx,
    )
    .await?;
    let timeout = ctx.live.config.timeouts.default;
    let sent = &token.upstream_token;
    let (_, json) = match read_json_or_error(gw, ctx, response, timeout, sent).await? {
        Ok(ok) => ok,
        Err(error_response) => return Ok(error_response),
    };
    if json_str(&json, "conversationId").is_some_and(|c| c != conversation.as_str()) {
        return Err(GatewayError::UpstreamInvalid);
    }
    let minted = Minted::Reconnect {
        via_token,
        watermark,
    };
    let body = conversation_response(gw, ctx, json, token, minted, &ws_base, conversation)?;
    Ok(json_response(StatusCode::OK, &body))
}

pub async fn get_activities(
    gw: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let token = ctx.authorize(request.headers(), Some(conversation))?;
    let watermark = rewrite::query_watermark(request.uri().query())?;
    let path = format!(
        "/v3/directline/conversations/{conversation}/activities{}",
        rewrite::watermark_query(watermark.as_deref())
    );
    let (response, _) = send_with_token_fallback(
        gw,
        Method::GET,
        &path,
        None,
        Bytes::new(),
        &token,
        ctx.live.config.timeouts.default,
        ctx,
    )
    .await?;
    let needles = credential_needles(ctx, token.upstream_token);
    passthrough(gw, response, ctx, ctx.live.config.timeouts.default, needles).await
}

pub async fn post_activity(
    gw: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let token = authorize_sender(gw, conversation, &request, ctx)?;
    let (parts, body) = request.into_parts();
    require_json_content_type(&parts.headers)?;
    let bytes = read_limited(
        body,
        &parts.headers,
        ctx.live.config.limits.activity_body_bytes,
        ctx,
    )
    .await?;
    let body = Bytes::from(activity_body::bind_sender(&bytes, &token.user_id)?);
    let path = format!("/v3/directline/conversations/{conversation}/activities");
    let (response, _) = send_with_token_fallback(
        gw,
        Method::POST,
        &path,
        Some("application/json"),
        body,
        &token,
        ctx.live.config.timeouts.activities,
        ctx,
    )
    .await?;
    let needles = credential_needles(ctx, token.upstream_token);
    passthrough(gw, response, ctx, ctx.live.config.timeouts.default, needles).await
}

pub async fn upload(
    gw: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let token = authorize_sender(gw, conversation, &request, ctx)?;
    let (parts, body) = request.into_parts();
    let limit = ctx.live.config.limits.upload_body_bytes;
    if content_length(&parts.headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    // The uploader is the bound user, whatever `userId` the caller put in the query.
    let user: String = form_urlencoded::byte_serialize(token.user_id.as_bytes()).collect();
    let path = format!("/v3/directline/conversations/{conversation}/upload?userId={user}");
    let mut builder =
        ctx.bot
            .upstream
            .request(Method::POST, &path, ctx.bot.secret.bearer_header())?;
    for name in [
        header::CONTENT_TYPE,
        header::CONTENT_DISPOSITION,
        header::CONTENT_LENGTH,
    ] {
        if let Some(value) = parts.headers.get(&name) {
            builder = builder.header(name, value.clone());
        }
    }
    // Streamed as it arrives, never buffered whole; the limit cuts it off mid-way.
    let request = forwarded(builder, ctx)
        .body(body::stream(body::Deadline::new(
            Limited::new(body, limit as usize),
            ctx.live.config.limits.upload_read_timeout,
        )))
        .map_err(|_| GatewayError::Internal)?;
    let response = send(gw, request, ctx.live.config.timeouts.upload, ctx)
        .await
        .map_err(|e| match e {
            GatewayError::BodyTooLarge { .. } => GatewayError::BodyTooLarge { limit },
            other => other,
        })?;
    let needles = credential_needles(ctx, token.upstream_token);
    passthrough(gw, response, ctx, ctx.live.config.timeouts.default, needles).await
}

pub async fn session_id(
    gw: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let token = ctx.authorize(request.headers(), None)?;
    let mut builder = ctx.bot.upstream.request(
        Method::GET,
        "/v3/directline/session/getsessionid",
        secret::bearer(&token.upstream_token),
    )?;
    if let Some(cookie) = request.headers().get(header::COOKIE) {
        builder = builder.header(header::COOKIE, cookie.clone());
    }
    let request = forwarded(builder, ctx)
        .body(body::empty())
        .map_err(|_| GatewayError::Internal)?;
    let response = send(gw, request, ctx.live.config.timeouts.default, ctx).await?;
    let cookies: Vec<HeaderValue> = response
        .headers()
        .get_all(header::SET_COOKIE)
        .iter()
        .filter_map(strip_cookie_domain)
        .collect();
    let needles = credential_needles(ctx, token.upstream_token);
    let timeout = ctx.live.config.timeouts.default;
    let mut response = passthrough(gw, response, ctx, timeout, needles).await?;
    for cookie in cookies {
        response.headers_mut().append(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// The token of a caller sending into `conversation`, once its bucket had room. The bucket
/// is only charged after the token is checked, so forged calls cannot use up a conversation's
/// rate.
fn authorize_sender(
    gw: &Gateway,
    conversation: &ConversationId,
    request: &Request<Incoming>,
    ctx: &RequestContext,
) -> Result<ClientToken, GatewayError> {
    let token = ctx.authorize(request.headers(), Some(conversation))?;
    gw.limit(
        &gw.activity_limits,
        (ctx.bot.name.clone(), conversation.clone()),
        ctx.bot.settings.rate_limits.activities,
        ctx,
    )?;
    Ok(token)
}

/// What produced a conversation answer.
enum Minted {
    Start,
    /// A reconnect at `watermark`, answered for the secret or (enhanced auth) the token.
    Reconnect {
        via_token: bool,
        watermark: Option<String>,
    },
}

/// Builds the start/reconnect answer: the caller gets a fresh gateway token and a gateway
/// stream URL; the upstream token and stream URL are sealed, never shown.
fn conversation_response(
    gw: &Gateway,
    ctx: &RequestContext,
    mut json: Map<String, Value>,
    mut token: ClientToken,
    minted: Minted,
    ws_base: &str,
    conversation: &ConversationId,
) -> Result<Map<String, Value>, GatewayError> {
    let live = &ctx.live;
    let now = clock::unix_seconds();
    scrub_passed_fields(gw, ctx, &mut json, &token);
    // A secret-reconnect token carries no user claim (spec §0.5): keep the bound one then.
    let (adopt_upstream_token, watermark, from_start) = match minted {
        Minted::Start => (true, None, true),
        Minted::Reconnect {
            via_token,
            watermark,
        } => (via_token, watermark, false),
    };
    if adopt_upstream_token && let Some(fresh) = json_str(&json, "token") {
        token.upstream_token = fresh.to_owned();
        if json.contains_key("expires_in") {
            token.expires_at = now.saturating_add(upstream_lifetime(gw, ctx, &json));
        }
    }
    let upstream_stream_url = match json.remove("streamUrl") {
        Some(Value::String(url)) => match ctx.bot.upstream.stream_pin().read(&url, conversation) {
            Ok(read) => Some((url, read.watermark)),
            Err(refused) => {
                let at = if from_start { "start" } else { "reconnect" };
                upstream::stream_url_refused(&gw.metrics, &ctx.bot.name, &refused, at);
                return Err(GatewayError::UpstreamInvalid);
            }
        },
        Some(Value::Null) => {
            json.insert("streamUrl".into(), Value::Null);
            None
        }
        None => None,
        Some(_) => return Err(GatewayError::UpstreamInvalid),
    };
    if let Some((upstream_url, url_watermark)) = upstream_stream_url {
        let ticket = StreamTicket {
            bot: token.bot.clone(),
            conversation_id: conversation.to_string(),
            user_id: token.user_id.clone(),
            watermark: watermark.or(url_watermark),
            upstream_stream_url: Some(upstream_url),
            upstream_token: token.upstream_token.clone(),
            issued_at_ms: clock::unix_millis(),
            expires_at: now.saturating_add(live.config.stream.ticket_ttl.as_secs()),
            from_start,
        };
        let ticket_watermark = ticket.watermark.clone();
        let sealed = live.sealer.seal(Purpose::StreamTicket, &ticket);
        let url = rewrite::gateway_stream_url(
            ws_base,
            &ctx.bot.settings.path_prefix,
            conversation,
            ticket_watermark.as_deref(),
            &sealed,
        );
        json.insert("streamUrl".into(), Value::String(url));
    }
    json.insert(
        "token".into(),
        Value::String(live.sealer.seal(Purpose::ClientToken, &token)),
    );
    json.insert(
        "expires_in".into(),
        json!(token.expires_at.saturating_sub(now)),
    );
    Ok(json)
}

/// The fields of a start or reconnect answer that reach the client as upstream sent them
/// (`conversationId`, `referenceGrammarId`, whatever else), scrubbed of the secret and of
/// the caller's and the fresh upstream token. `token`, `expires_in` and `streamUrl` are
/// replaced by the gateway's own; everything else is short, so checking it field by field
/// costs next to nothing, where scrubbing the whole answer (sealed token and ticket
/// included) was 12 k instructions per start.
fn scrub_passed_fields(
    gw: &Gateway,
    ctx: &RequestContext,
    json: &mut Map<String, Value>,
    token: &ClientToken,
) {
    let fresh = json_str(json, "token").unwrap_or("");
    // No needle fits in a field shorter than the shortest of them (Direct Line's ids and
    // grammar ids are shorter than secrets and tokens): then nothing is built or searched.
    let shortest = [ctx.bot.secret.expose(), &token.upstream_token, fresh]
        .iter()
        .map(|n| n.len())
        .filter(|&len| len > 0)
        .min()
        .unwrap_or(usize::MAX);
    let could_hold = |key: &str, value: &Value| {
        !matches!(key, "token" | "expires_in" | "streamUrl")
            && (key.len() >= shortest
                || match value {
                    Value::String(text) => text.len() >= shortest,
                    Value::Array(_) | Value::Object(_) => true,
                    _ => false,
                })
    };
    if !json.iter().any(|(key, value)| could_hold(key, value)) {
        return;
    }
    let fresh = fresh.to_owned();
    let mut needles = credential_needles(ctx, token.upstream_token.clone());
    needles.push(fresh);
    let mut scrubbed = false;
    // Fields to drop: a name holding a needle, or a structure that is no JSON once filled.
    let mut dropped: Vec<String> = Vec::new();
    for (key, value) in json.iter_mut() {
        if matches!(key.as_str(), "token" | "expires_in" | "streamUrl") {
            continue;
        }
        if needles.contains_any(key.as_bytes()) {
            dropped.push(key.clone());
            continue;
        }
        match value {
            Value::String(text) => {
                if let Cow::Owned(clean) = needles.scrub_str(text) {
                    *text = clean;
                    scrubbed = true;
                }
            }
            Value::Array(_) | Value::Object(_) => {
                let text = value.to_string();
                if needles.contains_any(text.as_bytes()) {
                    scrubbed = true;
                    match serde_json::from_slice(&needles.scrub(text.as_bytes())) {
                        Ok(clean) => *value = clean,
                        Err(_) => dropped.push(key.clone()),
                    }
                }
            }
            _ => {}
        }
    }
    for key in &dropped {
        json.remove(key);
        scrubbed = true;
    }
    if scrubbed {
        gw.metrics
            .upstream_bodies_scrubbed
            .with_label_values(&["success_scrubbed", &ctx.bot.name])
            .inc();
    }
}

/// An upstream answer: still streaming, or already read (when the gateway had to look
/// inside), or an error body past `limits.upstream_error_body` (left unread).
pub enum Answer {
    Live(Response<Incoming>),
    Read(http::response::Parts, Bytes),
    Oversized(http::response::Parts),
}

impl From<Response<Incoming>> for Answer {
    fn from(response: Response<Incoming>) -> Self {
        Answer::Live(response)
    }
}

/// Sends with the secret; when upstream answers `400 MissingProperty` (enhanced
/// authentication, spec §0.5) the request was refused before reaching the bot, so it is
/// sent once more with the caller's upstream conversation token. Returns whether the token was used.
#[allow(clippy::too_many_arguments)]
async fn send_with_token_fallback(
    gw: &Gateway,
    method: Method,
    path: &str,
    content_type: Option<&'static str>,
    body: Bytes,
    token: &ClientToken,
    timeout: Duration,
    ctx: &mut RequestContext,
) -> Result<(Answer, bool), GatewayError> {
    let build =
        |credential: HeaderValue, ctx: &RequestContext| -> Result<Request<Body>, GatewayError> {
            let mut builder = ctx.bot.upstream.request(method.clone(), path, credential)?;
            if let Some(content_type) = content_type {
                builder = builder.header(header::CONTENT_TYPE, content_type);
            }
            forwarded(builder, ctx)
                .body(body::full(body.clone()))
                .map_err(|_| GatewayError::Internal)
        };
    let request = build(ctx.bot.secret.bearer_header(), ctx)?;
    let response = send(gw, request, timeout, ctx).await?;
    if response.status() != StatusCode::BAD_REQUEST {
        return Ok((Answer::Live(response), false));
    }
    let cap = ctx.live.config.limits.upstream_error_body_bytes;
    let (parts, bytes) = match upstream::read_body_within(response, timeout, cap).await? {
        (parts, Some(bytes)) => (parts, bytes),
        (parts, None) => return Ok((Answer::Oversized(parts), false)),
    };
    if upstream::error_code(&bytes).as_deref() != Some("MissingProperty") {
        return Ok((Answer::Read(parts, bytes), false));
    }
    let request = build(secret::bearer(&token.upstream_token), ctx)?;
    let response = send(gw, request, timeout, ctx).await?;
    Ok((Answer::Live(response), true))
}

/// Sends one request upstream and records its metrics; never retries.
async fn send(
    gw: &Gateway,
    request: Request<Body>,
    timeout: Duration,
    ctx: &mut RequestContext,
) -> Result<Response<Incoming>, GatewayError> {
    let started = std::time::Instant::now();
    let route = ctx.route.as_str();
    let result = ctx.bot.upstream.send(request, timeout).await;
    gw.metrics
        .upstream_duration
        .with_label_values(&[route])
        .observe(started.elapsed().as_secs_f64());
    let status = match &result {
        Ok(response) => {
            ctx.upstream_status = Some(response.status().as_u16());
            status_class(response.status().as_u16())
        }
        Err(GatewayError::UpstreamTimeout) => "timeout",
        Err(_) => "error",
    };
    gw.metrics
        .upstream_requests
        .with_label_values(&[route, status, &ctx.bot.name])
        .inc();
    result
}

/// Reads a JSON object from a successful upstream answer, or turns an upstream error
/// into the response the client gets ([`error_passthrough`]).
async fn read_json_or_error(
    gw: &Gateway,
    ctx: &RequestContext,
    answer: impl Into<Answer>,
    timeout: Duration,
    upstream_token: &str,
) -> Result<Result<(StatusCode, Map<String, Value>), Response<Body>>, GatewayError> {
    // The needles are made only for an error: a success is parsed, and what of it is passed
    // on is checked where it is (`scrub_passed_fields`).
    let needles = || credential_needles(ctx, upstream_token.to_owned());
    let (parts, bytes) = match answer.into() {
        Answer::Live(response) if !response.status().is_success() => {
            return Ok(Err(read_error(gw, ctx, response, timeout, needles()).await?));
        }
        Answer::Live(response) => upstream::read_body(response, timeout).await?,
        Answer::Read(parts, bytes) => (parts, bytes),
        Answer::Oversized(parts) => {
            return Ok(Err(error_passthrough(gw, ctx, parts, None, &needles())));
        }
    };
    if !parts.status.is_success() {
        let needles = with_upstream_host(ctx, needles());
        return Ok(Err(error_passthrough(
            gw,
            ctx,
            parts,
            Some(bytes),
            &needles,
        )));
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Ok((parts.status, map))),
        _ => Err(GatewayError::UpstreamInvalid),
    }
}

/// What a client must never see in an answer from `ctx`'s bot: the bot's secret and the
/// caller's upstream conversation token (moved in, not copied; empty when there is none).
fn credential_needles(ctx: &RequestContext, upstream_token: String) -> Needles {
    let mut needles = Needles::default();
    needles.push(ctx.bot.secret.shared());
    needles.push(upstream_token);
    needles
}

/// `needles` and the upstream host, with and without its port: error pages name it, while
/// success bodies may rightly hold upstream URLs (attachments).
fn with_upstream_host(ctx: &RequestContext, mut needles: Needles) -> Needles {
    let (authority, host) = ctx.bot.upstream.host_names();
    needles.push(authority);
    needles.push(host);
    needles
}

/// An upstream error answer, read up to `limits.upstream_error_body`.
async fn read_error(
    gw: &Gateway,
    ctx: &RequestContext,
    response: Response<Incoming>,
    timeout: Duration,
    needles: Needles,
) -> Result<Response<Body>, GatewayError> {
    let cap = ctx.live.config.limits.upstream_error_body_bytes;
    let (parts, bytes) = upstream::read_body_within(response, timeout, cap).await?;
    let needles = with_upstream_host(ctx, needles);
    Ok(error_passthrough(gw, ctx, parts, bytes, &needles))
}

/// An upstream error answer as the client gets it. Only a Direct Line error's `code` and
/// `message` pass (spec §10.8), rebuilt from their decoded text, so an escaped credential
/// cannot hide in them and nothing else of the body (extra fields) passes; a message naming
/// a needle is scrubbed, a code naming one is not Direct Line's. Anything else (HTML from a
/// load balancer, other JSON, a body past the limit: `None`) is replaced by our own error.
fn error_passthrough(
    gw: &Gateway,
    ctx: &RequestContext,
    parts: http::response::Parts,
    body: Option<Bytes>,
    needles: &Needles,
) -> Response<Body> {
    let scrubbed = |kind: &str| {
        gw.metrics
            .upstream_bodies_scrubbed
            .with_label_values(&[kind, &ctx.bot.name])
            .inc();
    };
    let direct_line = body
        .as_deref()
        .and_then(direct_line_error)
        .filter(|(code, _)| !needles.contains_any(code.as_bytes()));
    if let Some((code, message)) = direct_line {
        let message = needles.scrub_str(&message);
        if matches!(message, Cow::Owned(_)) {
            scrubbed("error_scrubbed");
        }
        let mut response = crate::error::error_response(parts.status, &code, &message);
        copy_passed_headers(&parts.headers, response.headers_mut(), false, needles);
        return response;
    }
    scrubbed("error_replaced");
    let error = if parts.status == StatusCode::GATEWAY_TIMEOUT {
        GatewayError::UpstreamTimeout
    } else if parts.status.is_server_error() {
        GatewayError::UpstreamInvalid
    } else {
        let mut response = crate::error::error_response(
            parts.status,
            "BadArgument",
            "Request refused by Direct Line",
        );
        copy_passed_headers(&parts.headers, response.headers_mut(), false, needles);
        return response;
    };
    let mut response = error.into_response();
    *response.status_mut() = parts.status;
    copy_passed_headers(&parts.headers, response.headers_mut(), false, needles);
    response
}

/// `error.code` and `error.message` of a Direct Line error body. Codes are stable
/// identifiers (spec §1.5); anything else in `code` is not a Direct Line error.
fn direct_line_error(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let code = error.get("code")?.as_str()?;
    let plausible = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !plausible {
        return None;
    }
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or("Request refused by Direct Line");
    Some((code.to_owned(), message.to_owned()))
}

/// Streams an upstream answer to the client with only the allow-listed headers, scrubbed of
/// `needles` on the way ([`crate::scrub`]; errors are read and checked whole). A gzip body
/// is decoded (bounded) to be checked, then goes out as it came when it was clean and the
/// caller accepts gzip, otherwise decoded and scrubbed.
async fn passthrough(
    gw: &Gateway,
    answer: impl Into<Answer>,
    ctx: &RequestContext,
    timeout: Duration,
    needles: Needles,
) -> Result<Response<Body>, GatewayError> {
    let response = match answer.into() {
        Answer::Read(parts, bytes) if parts.status.is_success() => {
            return Ok(scrubbed_read(gw, ctx, parts, bytes, &needles));
        }
        Answer::Read(parts, bytes) => {
            let needles = with_upstream_host(ctx, needles);
            return Ok(error_passthrough(gw, ctx, parts, Some(bytes), &needles));
        }
        Answer::Oversized(parts) => {
            let needles = with_upstream_host(ctx, needles);
            return Ok(error_passthrough(gw, ctx, parts, None, &needles));
        }
        Answer::Live(response) => response,
    };
    if !response.status().is_success() {
        return read_error(gw, ctx, response, timeout, needles).await;
    }
    if upstream::is_gzip(response.headers()) {
        let (mut parts, raw) =
            upstream::read_raw(response, timeout, upstream::MAX_UPSTREAM_JSON).await?;
        let raw = raw.ok_or(GatewayError::UpstreamInvalid)?;
        let decoded = upstream::gunzip(&raw, upstream::MAX_UPSTREAM_JSON)?
            .ok_or(GatewayError::UpstreamInvalid)?;
        if ctx.accepts_gzip && !needles.contains_any(&decoded) {
            let mut response = Response::new(body::full(raw));
            *response.status_mut() = parts.status;
            copy_passed_headers(&parts.headers, response.headers_mut(), true, &needles);
            return Ok(response);
        }
        parts.headers.remove(header::CONTENT_ENCODING);
        return Ok(scrubbed_read(gw, ctx, parts, decoded, &needles));
    }
    let (parts, incoming) = response.into_parts();
    let mut headers = http::HeaderMap::new();
    copy_passed_headers(&parts.headers, &mut headers, true, &needles);
    let metrics = gw.metrics.clone();
    let bot = ctx.bot.name.clone();
    let count = move || {
        metrics
            .upstream_bodies_scrubbed
            .with_label_values(&["success_scrubbed", &bot])
            .inc();
    };
    // A body that declares itself shorter than every needle cannot hold one (Direct Line's
    // POST answer, `{"id":…}`, is shorter than a secret or a token): no scrubbing then.
    let too_short = http_body::Body::size_hint(&incoming)
        .exact()
        .is_some_and(|len| len < needles.shortest() as u64);
    let body = if too_short || needles.is_empty() {
        body::stream(incoming)
    } else {
        body::stream(ScrubbedBody::new(incoming, needles, count))
    };
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A success body already read whole, scrubbed.
fn scrubbed_read(
    gw: &Gateway,
    ctx: &RequestContext,
    parts: http::response::Parts,
    bytes: Bytes,
    needles: &Needles,
) -> Response<Body> {
    let bytes = match needles.scrub(&bytes) {
        Cow::Borrowed(_) => bytes,
        Cow::Owned(clean) => {
            gw.metrics
                .upstream_bodies_scrubbed
                .with_label_values(&["success_scrubbed", &ctx.bot.name])
                .inc();
            Bytes::from(clean)
        }
    };
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = parts.status;
    copy_passed_headers(&parts.headers, response.headers_mut(), true, needles);
    response
}

/// Copies the allow-listed upstream headers; a value holding a needle is dropped (an echo
/// can land in `Retry-After` or `Expires` as well as in a body).
fn copy_passed_headers(
    from: &http::HeaderMap,
    to: &mut http::HeaderMap,
    with_content: bool,
    needles: &Needles,
) {
    for name in PASSED_RESPONSE_HEADERS {
        let is_content = name == header::CONTENT_TYPE || name == header::CONTENT_ENCODING;
        if is_content && !with_content {
            continue;
        }
        for value in from.get_all(&name) {
            if !needles.contains_any(value.as_bytes()) {
                to.append(name.clone(), value.clone());
            }
        }
    }
}

static X_REQUEST_ID: header::HeaderName = header::HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: header::HeaderName = header::HeaderName::from_static("x-forwarded-for");
static X_MS_BOT_AGENT: header::HeaderName = header::HeaderName::from_static("x-ms-bot-agent");
static BOT_AGENT: HeaderValue = HeaderValue::from_static("DirectLine/3.0 (directline-gateway)");

/// Request id and forwarding headers on every upstream request. Every value is made
/// already (per request, per connection, or static), so this only inserts.
fn forwarded(mut builder: http::request::Builder, ctx: &RequestContext) -> http::request::Builder {
    if let Some(headers) = builder.headers_mut() {
        headers.insert(X_REQUEST_ID.clone(), ctx.request_id.clone());
        headers.insert(X_FORWARDED_FOR.clone(), ctx.forwarded_for.clone());
        headers.insert(X_MS_BOT_AGENT.clone(), BOT_AGENT.clone());
    }
    builder
}

fn ws_base(request: &Request<Incoming>, ctx: &RequestContext) -> String {
    rewrite::public_ws_base(
        &ctx.live.config,
        ctx.bot.settings.public_url.as_ref(),
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
        ctx.peer,
        ctx.local,
    )
}

fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(body::full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

fn json_str<'a>(json: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    json.get(key).and_then(Value::as_str)
}

/// The longest life the gateway believes of a Direct Line token: what the service issues
/// (spec §0.4), and tokens cannot be given a longer one (spec §1.3). A gateway token never
/// claims to outlive the Direct Line token it wraps.
pub const MAX_UPSTREAM_TOKEN_LIFETIME: u64 = 3600;

/// The life assumed when upstream gives no usable `expires_in`: the real one (spec §0.4).
pub const DEFAULT_UPSTREAM_TOKEN_LIFETIME: u64 = 3600;

/// `expires_in` of an upstream token answer, within 1..=[`MAX_UPSTREAM_TOKEN_LIFETIME`];
/// every value that was not already there is counted.
fn upstream_lifetime(gw: &Gateway, ctx: &RequestContext, json: &Map<String, Value>) -> u64 {
    let (seconds, clamped) = clamp_lifetime(json.get("expires_in"));
    if clamped {
        gw.metrics
            .lifetimes_clamped
            .with_label_values(&[&ctx.bot.name])
            .inc();
    }
    seconds
}

/// An upstream `expires_in` clamped to Direct Line's range: above the maximum → the
/// maximum; missing, zero, negative, fractional or not a number → the default. The flag
/// says whether the value was changed.
fn clamp_lifetime(value: Option<&Value>) -> (u64, bool) {
    match value.and_then(Value::as_u64) {
        Some(seconds @ 1..=MAX_UPSTREAM_TOKEN_LIFETIME) => (seconds, false),
        Some(0) | None => (DEFAULT_UPSTREAM_TOKEN_LIFETIME, true),
        Some(_) => (MAX_UPSTREAM_TOKEN_LIFETIME, true),
    }
}

/// Property names in TokenParameters match case-insensitively (spec §1.2).
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A caller-chosen id the `caller` policy accepts: `dl_` (Direct Line binds only such ids
/// into tokens, spec §1.1) and a short run of URL-safe characters.
fn is_caller_user_id(id: &str) -> bool {
    id.len() > 3
        && id.len() <= 128
        && id.starts_with("dl_")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// `dl_` + 128 random bits: the prefix Direct Line reserves for server-bound user ids (spec §1.1).
fn mint_user_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("OS random source unavailable");
    format!("dl_{}", URL_SAFE_NO_PAD.encode(bytes))
}

fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

fn require_json_content_type(headers: &http::HeaderMap) -> Result<(), GatewayError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(GatewayError::UnsupportedMediaType);
    };
    let media = value
        .to_str()
        .map_err(|_| GatewayError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

/// Reads a request body up to `limit` bytes: 413 from `Content-Length` before reading,
/// or as soon as the stream passes the limit.
async fn read_limited(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    ctx: &RequestContext,
) -> Result<Bytes, GatewayError> {
    if content_length(headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let within = ctx.live.config.limits.body_read_timeout;
    match tokio::time::timeout(within, Limited::new(body, limit as usize).collect()).await {
        Err(_) => Err(GatewayError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(GatewayError::BodyRead),
    }
}

/// An optional JSON body (tokens/generate and start may have none).
async fn read_optional_json(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    ctx: &RequestContext,
) -> Result<Option<Value>, GatewayError> {
    let bytes = read_limited(body, headers, limit, ctx).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| GatewayError::MalformedJson)
}

/// A `Set-Cookie` from upstream without its `Domain` attribute, so the browser binds it to
/// the gateway's host (the one the client talks to) rather than refusing it.
fn strip_cookie_domain(value: &HeaderValue) -> Option<HeaderValue> {
    let text = value.to_str().ok()?;
    let kept: Vec<&str> = text
        .split(';')
        .filter(|part| {
            !part
                .trim_start()
                .to_ascii_lowercase()
                .starts_with("domain=")
        })
        .collect();
    HeaderValue::from_str(&kept.join(";")).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_lifetimes_are_clamped_to_direct_lines_range() {
        for (value, expected) in [
            (json!(3600), (3600, false)),
            (json!(1), (1, false)),
            (json!(1_000_000_000_000u64), (3600, true)),
            (json!(u64::MAX), (3600, true)),
            (json!(-5), (3600, true)),
            (json!(i64::MIN), (3600, true)),
            (json!(3599.5), (3600, true)),
            (json!(1e300), (3600, true)),
            (json!("3600"), (3600, true)),
            (Value::Null, (3600, true)),
        ] {
            assert_eq!(clamp_lifetime(Some(&value)), expected, "{value}");
        }
        // Zero is not a life: the default, like a missing value.
        assert_eq!(clamp_lifetime(Some(&json!(0))), (3600, true));
        assert_eq!(clamp_lifetime(None), (3600, true));
    }

    #[test]
    fn minted_user_ids_are_dl_prefixed_and_distinct() {
        let a = mint_user_id();
        assert!(a.starts_with("dl_") && a.len() == 25);
        assert_ne!(a, mint_user_id());
    }

    #[test]
    fn json_content_types() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            require_json_content_type(&headers),
            Err(GatewayError::UnsupportedMediaType)
        );
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/vnd.x+json", true),
            ("text/plain", false),
            ("multipart/form-data", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(require_json_content_type(&headers).is_ok(), ok, "{value}");
        }
    }

    #[test]
    fn cookie_domain_is_dropped() {
        let value = HeaderValue::from_static("sid=abc; Domain=.botframework.com; Path=/; Secure");
        assert_eq!(
            strip_cookie_domain(&value).unwrap(),
            "sid=abc; Path=/; Secure"
        );
    }
}
