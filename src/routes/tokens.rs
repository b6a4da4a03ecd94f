//! `tokens/generate` and `tokens/refresh`: the gateway's own sealed tokens, and the durable
//! resume of a conversation whose token expired (ARCHITECTURE §12).

use std::sync::Arc;

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::{Map, Value, json};

use super::answer::{json_response, json_str, read_json};
use super::context::RequestContext;
use super::lifetime::upstream_lifetime;
use super::request_body::read_optional_json;
use crate::boxed_body::Body;
use crate::clock;
use crate::config::UserIdPolicy;
use crate::endpoint::ConversationId;
use crate::error::{GatewayError, Refusal};
use crate::gateway::Gateway;
use crate::identity::SignedIn;
use crate::refresh_share::{Fresh, Source};
use crate::seal::{ClientToken, Purpose};
use crate::upstream::call::{Answer, Credential};

pub async fn generate_token(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
    signed_in: Option<SignedIn>,
) -> Result<Response<Body>, Refusal> {
    let (parts, body) = request.into_parts();
    let params = read_optional_json(
        body,
        &parts.headers,
        ctx.config().limits.token_body_bytes,
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
    let timeout = ctx.config().timeouts.default;
    let (status, json) = if ctx.bot.token_endpoint_mints().is_some() {
        // A Copilot Studio agent without a secret: its token endpoint answers the same
        // shape (`token`, `expires_in`, `conversationId`), the user is bound by the gateway.
        super::copilot::token_from_endpoint(gateway, ctx, timeout).await?
    } else {
        let body = serde_json::to_vec(&upstream_body).map_err(|error| {
            GatewayError::internal_because("serialising the tokens/generate body", error)
        })?;
        let path = "/v3/directline/tokens/generate";
        let reply = ctx
            .send_shaped(
                gateway,
                Method::POST,
                path,
                Credential::Secret,
                timeout,
                |call| call.json(body),
            )
            .await?;
        read_json(gateway, ctx, reply.answer, timeout, "").await?
    };
    let conversation_id = json_str(&json, "conversationId")
        .and_then(|c| ConversationId::parse(c).ok())
        .ok_or(GatewayError::upstream_invalid(
            "a token answer without a valid conversationId",
        ))?;
    let upstream_token = json_str(&json, "token").ok_or(GatewayError::upstream_invalid(
        "a token answer without a token",
    ))?;
    let expires_in = upstream_lifetime(gateway, ctx, &json);
    let token = ClientToken {
        bot: ctx.bot.name.to_string(),
        conversation_id: conversation_id.to_string(),
        user_id,
        upstream_token: upstream_token.to_owned(),
        expires_at: clock::unix_seconds().saturating_add(expires_in),
        // Kept so every later activity of a signed-in user carries only this name.
        name: signed_in.as_ref().and_then(|s| s.name.clone()),
    };
    gateway
        .metrics
        .tokens
        .with_label_values(&["generated", &ctx.bot.name])
        .inc();
    let body = json!({
        "conversationId": conversation_id.as_str(),
        "token": sealed_for_client(&ctx.live.sealer, Purpose::ClientToken, &token)?,
        "expires_in": expires_in,
    });
    Ok(json_response(status, &body))
}

pub async fn refresh_token(
    gateway: &Arc<Gateway>,
    ctx: &mut RequestContext,
    mut token: ClientToken,
    expired: bool,
) -> Result<Response<Body>, Refusal> {
    let resumes = |result: &str, ctx: &RequestContext| {
        gateway
            .metrics
            .token_resumes
            .with_label_values(&[result, &ctx.bot.name])
            .inc();
    };
    let now = clock::unix_seconds();
    if expired {
        // The Direct Line token inside expired with it; the conversation lives on upstream,
        // and the secret can reconnect to it (PROTOCOL §3). The sealed token is the proof that
        // the caller owned it.
        match current_upstream_token(gateway, ctx, &token, true).await {
            Ok(fresh) => {
                resumes("ok", ctx);
                token.upstream_token = fresh.upstream_token;
                token.expires_at = fresh.expires_at;
            }
            Err(refusal) => {
                let result = match &refusal {
                    Refusal::Upstream(refused) if refused.status == StatusCode::NOT_FOUND => "gone",
                    Refusal::Gateway(GatewayError::ResumeUnavailable) => "unavailable",
                    _ => "error",
                };
                resumes(result, ctx);
                return Err(refusal);
            }
        }
    } else if token.expires_at.saturating_sub(now) < ctx.config().upstream_refresh_before.as_secs()
    {
        let fresh = current_upstream_token(gateway, ctx, &token, false).await?;
        token.upstream_token = fresh.upstream_token;
        token.expires_at = fresh.expires_at;
    }
    gateway
        .metrics
        .tokens
        .with_label_values(&["refreshed", &ctx.bot.name])
        .inc();
    let body = json!({
        "conversationId": token.conversation_id,
        "token": sealed_for_client(&ctx.live.sealer, Purpose::ClientToken, &token)?,
        "expires_in": token.expires_at.saturating_sub(now),
    });
    Ok(json_response(StatusCode::OK, &body))
}

/// The conversation's current upstream token: the one another refresh of it obtained, while
/// that is not near its end, else one upstream call shared by every refresh of the
/// conversation waiting meanwhile (`refresh_share`). `expired`: the caller's token is past
/// its life (a durable resume, with the secret), else near its end (a refresh with it).
async fn current_upstream_token(
    gateway: &Gateway,
    ctx: &mut RequestContext,
    token: &ClientToken,
    expired: bool,
) -> Result<Fresh, Refusal> {
    let refresh_before = ctx.config().upstream_refresh_before.as_secs();
    let key = (
        ctx.bot.name.clone(),
        token.conversation_id.clone(),
        token.user_id.clone(),
    );
    let (fresh, source) = gateway
        .refreshes
        .get(
            key,
            |fresh| fresh.reusable(clock::unix_seconds(), refresh_before),
            async || {
                if expired {
                    resume_expired(gateway, token, ctx).await
                } else {
                    refresh_upstream(gateway, token, ctx).await
                }
            },
        )
        .await?;
    if source == Source::Shared {
        gateway.metrics.token_refreshes_shared.inc();
    }
    Ok(fresh)
}

/// `tokens/refresh` upstream with the conversation's live token (never the secret).
async fn refresh_upstream(
    gateway: &Gateway,
    token: &ClientToken,
    ctx: &mut RequestContext,
) -> Result<Fresh, Refusal> {
    let timeout = ctx.config().timeouts.default;
    let path = "/v3/directline/tokens/refresh";
    let credential = Credential::Token(&token.upstream_token);
    let reply = ctx
        .send(gateway, Method::POST, path, credential, timeout)
        .await?;
    let sent = &token.upstream_token;
    let (_, json) = read_json(gateway, ctx, reply.answer, timeout, sent).await?;
    let fresh = fresh_from(gateway, ctx, &json)?;
    if let Ok(conversation) = ConversationId::parse(&token.conversation_id) {
        gateway
            .hubs
            .adopt_upstream_token(&ctx.bot.name, &conversation, &fresh.upstream_token);
    }
    Ok(fresh)
}

/// A fresh upstream token for an expired gateway token's conversation, from a reconnect
/// GET with the secret. Under enhanced authentication that GET needs a live conversation
/// token, which an expired one is not: nothing can resume then. Direct Line's refusals
/// (404 for a conversation it no longer knows) come back as the client's answer.
async fn resume_expired(
    gateway: &Gateway,
    token: &ClientToken,
    ctx: &mut RequestContext,
) -> Result<Fresh, Refusal> {
    let conversation =
        ConversationId::parse(&token.conversation_id).map_err(|_| GatewayError::InvalidToken)?;
    if ctx.bot.secret.is_none() {
        // A Copilot Studio token endpoint's bot has no secret, and a dead token cannot
        // reconnect: nothing can bring the conversation back.
        return Err(GatewayError::ResumeUnavailable.into());
    }
    let timeout = ctx.config().timeouts.default;
    let path = format!("/v3/directline/conversations/{conversation}");
    let reply = ctx
        .send(gateway, Method::GET, &path, Credential::Secret, timeout)
        .await?;
    let (parts, bytes) = reply.answer.read(timeout).await?;
    if parts.status == StatusCode::BAD_REQUEST
        && crate::upstream::answer_body::error_code(&bytes).as_deref() == Some("MissingProperty")
    {
        return Err(GatewayError::ResumeUnavailable.into());
    }
    let sent = &token.upstream_token;
    let answer = Answer::Read(parts, bytes);
    let (_, json) = read_json(gateway, ctx, answer, timeout, sent).await?;
    if json_str(&json, "conversationId").is_some_and(|c| c != conversation.as_str()) {
        return Err(GatewayError::upstream_invalid(
            "a refresh that named another conversation than the token's",
        )
        .into());
    }
    let fresh = fresh_from(gateway, ctx, &json)?;
    gateway
        .hubs
        .adopt_upstream_token(&ctx.bot.name, &conversation, &fresh.upstream_token);
    Ok(fresh)
}

/// The token and its (clamped) life from an upstream answer.
fn fresh_from(
    gateway: &Gateway,
    ctx: &RequestContext,
    json: &Map<String, Value>,
) -> Result<Fresh, GatewayError> {
    let upstream_token = json_str(json, "token").ok_or(GatewayError::upstream_invalid(
        "a refresh answer without a token",
    ))?;
    let obtained_at = clock::unix_seconds();
    Ok(Fresh {
        upstream_token: upstream_token.to_owned(),
        obtained_at,
        expires_at: obtained_at.saturating_add(upstream_lifetime(gateway, ctx, json)),
    })
}

/// Property names in TokenParameters match case-insensitively (PROTOCOL §1.2).
fn field<'a>(value: &'a Value, name: &str) -> Option<&'a Value> {
    value
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

/// A caller-chosen id the `caller` policy accepts: `dl_` (Direct Line binds only such ids
/// into tokens, PROTOCOL §1.1) and a short run of URL-safe characters.
fn is_caller_user_id(id: &str) -> bool {
    id.len() > 3
        && id.len() <= 128
        && id.starts_with("dl_")
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.' | b'@'))
}

/// `dl_` + 128 random bits: the prefix Direct Line reserves for server-bound user ids
/// (PROTOCOL §1.1).
fn mint_user_id() -> String {
    let mut bytes = [0u8; 16];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("OS random source unavailable");
    format!("dl_{}", URL_SAFE_NO_PAD.encode(bytes))
}

/// Seals claims that carry what upstream sent (its token, its stream URL) for a client. An
/// upstream answer too long to seal into something the gateway would open again is refused
/// here (502) rather than handed out as a token or stream URL that every later use refuses.
pub(crate) fn sealed_for_client<T: serde::Serialize>(
    sealer: &crate::seal::Sealer,
    purpose: Purpose,
    claims: &T,
) -> Result<String, GatewayError> {
    sealer
        .seal_openable(purpose, claims)
        .ok_or(GatewayError::upstream_invalid(
            "a token or stream URL too long to seal for the client",
        ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_user_ids_are_dl_prefixed_and_distinct() {
        let a = mint_user_id();
        assert!(a.starts_with("dl_") && a.len() == 25);
        assert_ne!(a, mint_user_id());
    }
}
