//! A Copilot Studio environment on the emulator's own origin (ARCHITECTURE §10): an agent's token
//! endpoint (`GET /powervirtualagents/botsbyschema/{schema}/directline/token`, no
//! credential, a token bound to a new conversation) and the regional channel settings that
//! name the Direct Line host (`GET /powervirtualagents/regionalchannelsettings`), as the
//! switches in `environment` say.

use http::{Method, Request, Response, StatusCode};
use hyper::body::Incoming;
use serde_json::json;

use super::environment::lock;
use super::exchange::{Body, json_response, query_parameter, raw_json_response};
use super::state::State;

const AGENTS: &str = "/powervirtualagents/";

/// The answer when `request` is for the environment; `None` for every other path.
pub(super) fn route(state: &State, request: &Request<Incoming>) -> Option<Response<Body>> {
    let rest = request.uri().path().strip_prefix(AGENTS)?;
    let control = &state.environment.0;
    let segments: Vec<&str> = rest.split('/').collect();
    let is_token = matches!(
        segments[..],
        ["botsbyschema", schema, "directline", "token"] if !schema.is_empty()
    );
    let is_settings = segments[..] == ["regionalchannelsettings"];
    if !is_token && !is_settings {
        return Some(failure(StatusCode::NOT_FOUND, "NotFound"));
    }
    if request.method() != Method::GET {
        return Some(failure(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed"));
    }
    if query_parameter(request.uri().query(), "api-version").is_none() {
        return Some(failure(StatusCode::BAD_REQUEST, "MissingApiVersion"));
    }
    if control.down() {
        return Some(failure(
            StatusCode::SERVICE_UNAVAILABLE,
            "ServiceUnavailable",
        ));
    }
    if is_settings {
        if let Some(body) = lock(&control.settings_body).clone() {
            return Some(raw_json_response(StatusCode::OK, body));
        }
        let directline = lock(&control.directline)
            .clone()
            .unwrap_or_else(|| format!("{}/", state.base_url()));
        return Some(json_response(
            StatusCode::OK,
            &json!({"channelUrlsById": {
                "directline": directline,
                "webchat": format!("{}/", state.base_url()),
            }}),
        ));
    }
    if control.secured() {
        return Some(failure(StatusCode::FORBIDDEN, "DirectLineTokenDisabled"));
    }
    let conversation = state.create_conversation();
    let token = state.mint_token(&conversation.id, None);
    Some(json_response(
        StatusCode::OK,
        &json!({
            "token": token,
            "expires_in": state.token_ttl.as_secs(),
            "conversationId": conversation.id.as_str(),
        }),
    ))
}

/// The environment's errors are not Direct Line's: a small body of its own shape.
fn failure(status: StatusCode, code: &str) -> Response<Body> {
    json_response(status, &json!({"ErrorCode": code}))
}
