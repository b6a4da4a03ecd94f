//! Starting a conversation and reconnecting to one: the answers carry a fresh gateway token
//! and a gateway stream URL whose sealed ticket holds the upstream one.

use std::borrow::Cow;
use std::sync::Arc;

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::answer::{credential_needles, json_response, json_str, read_json};
use super::context::RequestContext;
use super::lifetime::upstream_lifetime;
use super::request_body::read_optional_json;
use super::tokens::sealed_for_client;
use crate::boxed_body::Body;
use crate::clock;
use crate::endpoint::ConversationId;
use crate::error::{GatewayError, Refusal};
use crate::gateway::Gateway;
use crate::rewrite;
use crate::seal::{ClientToken, Purpose, StreamTicket};
use crate::upstream::call::Credential;
use crate::upstream::client::stream_url_refused;

pub async fn start_conversation(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, Refusal> {
    let ws_base = ws_base(&request, ctx);
    let (parts, body) = request.into_parts();
    let mut params = match read_optional_json(
        body,
        &parts.headers,
        ctx.config().limits.token_body_bytes,
        ctx,
    )
    .await?
    {
        Some(Value::Object(map)) => map,
        Some(_) => return Err(GatewayError::MalformedJson.into()),
        None => Map::new(),
    };
    // The conversation's user is the one bound into the token, whatever the caller says.
    params.retain(|k, _| !k.eq_ignore_ascii_case("user"));
    params.insert("user".into(), json!({ "id": token.user_id }));
    // The upstream token (not the secret) starts the conversation tokens/generate allocated.
    let timeout = ctx.config().timeouts.default;
    let body = serde_json::to_vec(&params).map_err(|error| {
        GatewayError::internal_because("serialising the conversation parameters", error)
    })?;
    let path = "/v3/directline/conversations";
    let credential = Credential::Token(&token.upstream_token);
    let reply = ctx
        .send_shaped(gateway, Method::POST, path, credential, timeout, |call| {
            call.json(body)
        })
        .await?;
    let sent = &token.upstream_token;
    let (status, json) = read_json(gateway, ctx, reply.answer, timeout, sent).await?;
    let conversation =
        ConversationId::parse(&token.conversation_id).map_err(|_| GatewayError::InvalidToken)?;
    if json_str(&json, "conversationId") != Some(conversation.as_str()) {
        tracing::warn!(
            request_id = ctx.request_id.to_str().unwrap_or(""),
            "upstream started a different conversation than the token's"
        );
        return Err(GatewayError::upstream_invalid(
            "a start that named another conversation than the token's",
        )
        .into());
    }
    let body = conversation_response(
        gateway,
        ctx,
        json,
        token,
        Minted::Start,
        &ws_base,
        &conversation,
    )?;
    gateway
        .metrics
        .tokens
        .with_label_values(&["conversation", &ctx.bot.name])
        .inc();
    Ok(json_response(status, &body))
}

pub async fn reconnect(
    gateway: &Arc<Gateway>,
    conversation: &ConversationId,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    token: ClientToken,
) -> Result<Response<Body>, Refusal> {
    let watermark = rewrite::query_watermark(request.uri().query())?;
    let ws_base = ws_base(&request, ctx);
    let path = format!(
        "/v3/directline/conversations/{conversation}{}",
        rewrite::watermark_query(watermark.as_deref())
    );
    let timeout = ctx.config().timeouts.default;
    let credential = Credential::SecretThenToken(&token.upstream_token);
    let reply = ctx
        .send(gateway, Method::GET, &path, credential, timeout)
        .await?;
    let via_token = reply.via_token;
    let sent = &token.upstream_token;
    let (_, json) = read_json(gateway, ctx, reply.answer, timeout, sent).await?;
    if json_str(&json, "conversationId").is_some_and(|c| c != conversation.as_str()) {
        return Err(GatewayError::upstream_invalid(
            "a reconnect that named another conversation than the request's",
        )
        .into());
    }
    let minted = Minted::Reconnect {
        via_token,
        watermark,
    };
    let body = conversation_response(gateway, ctx, json, token, minted, &ws_base, conversation)?;
    Ok(json_response(StatusCode::OK, &body))
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
    gateway: &Gateway,
    ctx: &RequestContext,
    mut json: Map<String, Value>,
    mut token: ClientToken,
    minted: Minted,
    ws_base: &str,
    conversation: &ConversationId,
) -> Result<Map<String, Value>, GatewayError> {
    let live = &ctx.live;
    let now = clock::unix_seconds();
    scrub_passed_fields(gateway, ctx, &mut json, &token);
    // A secret-reconnect token carries no user claim (PROTOCOL §0.5): keep the bound one then.
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
            token.expires_at = now.saturating_add(upstream_lifetime(gateway, ctx, &json));
        }
    }
    let upstream_stream_url = match json.remove("streamUrl") {
        Some(Value::String(url)) => match ctx
            .bot
            .upstream
            .current()?
            .stream_pin()
            .read(&url, conversation)
        {
            Ok(read) => Some((url, read.watermark)),
            Err(refused) => {
                let at = if from_start { "start" } else { "reconnect" };
                stream_url_refused(&gateway.metrics, &ctx.bot.name, &refused, at);
                return Err(GatewayError::upstream_invalid(
                    "a streamUrl outside the upstream's stream URL pin",
                ));
            }
        },
        Some(Value::Null) => {
            json.insert("streamUrl".into(), Value::Null);
            None
        }
        None => None,
        Some(_) => {
            return Err(GatewayError::upstream_invalid(
                "a streamUrl that is neither a string nor null",
            ));
        }
    };
    if let Some((upstream_url, url_watermark)) = upstream_stream_url {
        let ticket = StreamTicket {
            bot: token.bot.clone(),
            conversation_id: conversation.to_string(),
            user_id: token.user_id.clone(),
            name: token.name.clone(),
            watermark: watermark.or(url_watermark),
            upstream_stream_url: Some(upstream_url),
            upstream_token: token.upstream_token.clone(),
            issued_at_ms: clock::unix_millis(),
            expires_at: now.saturating_add(live.config.stream.ticket_ttl.as_secs()),
            from_start,
        };
        let ticket_watermark = ticket.watermark.clone();
        let sealed = sealed_for_client(&live.sealer, Purpose::StreamTicket, &ticket)?;
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
        Value::String(sealed_for_client(
            &live.sealer,
            Purpose::ClientToken,
            &token,
        )?),
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
    gateway: &Gateway,
    ctx: &RequestContext,
    json: &mut Map<String, Value>,
    token: &ClientToken,
) {
    let fresh = json_str(json, "token").unwrap_or("");
    // No needle fits in a field shorter than the shortest of them (Direct Line's ids and
    // grammar ids are shorter than secrets and tokens): then nothing is built or searched.
    let secret = ctx.bot.secret.as_ref().map_or("", |s| s.expose());
    let shortest = [secret, &token.upstream_token, fresh]
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
        gateway
            .metrics
            .upstream_bodies_scrubbed
            .with_label_values(&["success_scrubbed", &ctx.bot.name])
            .inc();
    }
}

fn ws_base(request: &Request<Incoming>, ctx: &RequestContext) -> String {
    rewrite::public_ws_base(
        ctx.config(),
        ctx.bot.settings.public_url.as_ref(),
        request.headers(),
        request.uri().authority().map(|a| a.as_str()),
        ctx.peer,
        ctx.local,
    )
}
