//! A Copilot Studio agent's token endpoint (ARCHITECTURE §10), for `tokens/generate` of a bot
//! without a secret: `GET {token_endpoint}` with no credential answers a Direct Line token
//! already bound to a new conversation, in the shape Direct Line's own generate answers.

use std::time::Duration;

use http::StatusCode;
use serde_json::{Map, Value};

use super::context::RequestContext;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::upstream::answer_body::read_body_within;
use crate::upstream::call::{Answer, UpstreamCall};

/// A token answer is well under a kilobyte; past this it is not one.
const MAX_ANSWER_BYTES: usize = 16 * 1024;
/// Direct Line tokens seen are about 1 KiB; the bound keeps sealed tokens small.
const MAX_TOKEN_BYTES: usize = 8 * 1024;

/// The endpoint's answer as a JSON object whose `token` is one the gateway can send on
/// (the caller checks `conversationId` and `expires_in`, as for Direct Line's). A refusal
/// (web channel security turned the endpoint off, an unknown agent) is logged with its
/// status and becomes the gateway's own 502: the environment's body is not Direct Line's.
pub(crate) async fn token_from_endpoint(
    gateway: &Gateway,
    ctx: &mut RequestContext,
    timeout: Duration,
) -> Result<(StatusCode, Map<String, Value>), GatewayError> {
    let bot = ctx.bot.clone();
    let environment = bot.token_endpoint_mints().ok_or(GatewayError::internal(
        "a token from the endpoint of a bot whose endpoint does not mint them",
    ))?;
    // A token is of no use before the Direct Line host it works on is known: the caller
    // gets the 503 with Retry-After now, not a token whose start fails.
    bot.upstream.current()?;
    let path = environment.endpoint.path_and_query();
    let reply =
        UpstreamCall::environment(&bot, &path, ctx.route.as_str(), timeout, MAX_ANSWER_BYTES)
            .traced(
                ctx.trace
                    .as_ref()
                    .map(crate::telemetry::RequestTrace::parent),
            )
            .send(&gateway.metrics)
            .await?;
    ctx.saw(&reply);
    let Answer::Streaming(response) = reply.answer else {
        return Err(GatewayError::upstream_invalid(
            "the token endpoint's answer was read before its status was checked",
        ));
    };
    let status = response.status();
    if !status.is_success() {
        tracing::warn!(
            bot = &*bot.name,
            request_id = ctx.request_id.to_str().unwrap_or(""),
            endpoint = %environment.endpoint.url(),
            status = status.as_u16(),
            "the Copilot Studio token endpoint refused (with web channel security on, configure one of the agent's secrets)"
        );
        return Err(GatewayError::TokenEndpointRefused {
            status: status.as_u16(),
        });
    }
    let (_, body) = read_body_within(response, timeout, MAX_ANSWER_BYTES).await?;
    let body = body.ok_or(GatewayError::upstream_invalid(
        "a token endpoint answer over its size bound",
    ))?;
    let json = match serde_json::from_slice::<Value>(&body) {
        Ok(Value::Object(json)) => json,
        Ok(_) => {
            return Err(GatewayError::upstream_invalid(
                "a token endpoint answer that is no JSON object",
            ));
        }
        Err(error) => {
            return Err(GatewayError::upstream_invalid_because(
                "a token endpoint answer that is no JSON",
                error,
            ));
        }
    };
    let sendable = json
        .get("token")
        .and_then(Value::as_str)
        .is_some_and(is_sendable_token);
    if !sendable {
        return Err(GatewayError::upstream_invalid(
            "a token endpoint answer without a token that can be sent in a header",
        ));
    }
    Ok((StatusCode::OK, json))
}

/// A token that fits an `Authorization: Bearer` header as it is and a sealed token.
fn is_sendable_token(token: &str) -> bool {
    (1..=MAX_TOKEN_BYTES).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_must_fit_a_header() {
        assert!(is_sendable_token("eyJhbGciOi.x-y_z"));
        assert!(!is_sendable_token(""));
        assert!(!is_sendable_token("a b"));
        assert!(!is_sendable_token("a\r\nX-Evil: 1"));
        assert!(!is_sendable_token(&"a".repeat(MAX_TOKEN_BYTES + 1)));
    }
}
