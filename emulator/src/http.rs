//! REST routes (PROTOCOL §1–§4), the error bodies, and the headers every response carries.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{HeaderMap, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt as _, Limited};
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::activity::{self, Watermark};
use super::credential::Credential;
use super::exchange::{Body, DlError, Exchange, json_response, query_parameter, raw_json_response};
use super::random;
use super::state::{Conversation, ConversationId, Outgoing, State, TokenGrant};
use super::stream;
use super::upload;

/// Activity size limit: "must not exceed 256K characters" (PROTOCOL §4.2).
const ACTIVITY_LIMIT: usize = 256 * 1024;
/// Upload size limit; the body is read in chunks up to this.
const UPLOAD_LIMIT: usize = 16 * 1024 * 1024;
/// Most bytes of a refused body read (and dropped) before the connection is given up.
const DISCARD_LIMIT: usize = 64 * 1024 * 1024;
/// TokenParameters / start bodies.
const PARAMETERS_LIMIT: usize = 64 * 1024;
/// Most activities in one `GET …/activities` answer; clients page with the watermark.
const PAGE_SIZE: usize = 1000;

/// hyper's service: route, answer, decorate, record.
pub(super) async fn handle(
    state: Arc<State>,
    request: Request<Incoming>,
) -> Result<Response<Body>, Infallible> {
    let arrival = state.arrival();
    let mut exchange = Exchange::new(&request);
    let response = answer(&state, request, &mut exchange)
        .await
        .unwrap_or_else(DlError::response);
    let response = decorate(response);
    state.record(arrival, exchange.into_record(response.status()));
    Ok(response)
}

/// The routes under `/v3/directline` (PROTOCOL §10.1).
#[derive(Debug, PartialEq, Eq)]
enum Endpoint {
    Generate,
    Refresh,
    Conversations,
    SessionId,
    Conversation(String),
    Activities(String),
    Upload(String),
    Stream {
        conversation: String,
        multimodal: bool,
    },
}

impl Endpoint {
    fn parse(path: &str) -> Option<Self> {
        let rest = path.strip_prefix("/v3/directline/")?;
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let segments: Vec<&str> = rest.split('/').collect();
        let is = |index: usize, name: &str| {
            segments
                .get(index)
                .is_some_and(|segment| segment.eq_ignore_ascii_case(name))
        };
        let id = || segments.get(1).map(|id| (*id).to_owned());
        match segments.len() {
            2 if is(0, "tokens") && is(1, "generate") => Some(Self::Generate),
            2 if is(0, "tokens") && is(1, "refresh") => Some(Self::Refresh),
            2 if is(0, "session") && is(1, "getsessionid") => Some(Self::SessionId),
            1 if is(0, "conversations") => Some(Self::Conversations),
            2 if is(0, "conversations") => id().map(Self::Conversation),
            3 if is(0, "conversations") && is(2, "activities") => id().map(Self::Activities),
            3 if is(0, "conversations") && is(2, "upload") => id().map(Self::Upload),
            3 | 4 if is(0, "conversations") && is(2, "stream") => {
                let multimodal = segments.len() == 4;
                if multimodal && !is(3, "multimodal") {
                    return None;
                }
                id().map(|conversation| Self::Stream {
                    conversation,
                    multimodal,
                })
            }
            _ => None,
        }
    }
}

async fn answer(
    state: &Arc<State>,
    request: Request<Incoming>,
    exchange: &mut Exchange,
) -> Result<Response<Body>, DlError> {
    if request.uri().path() == super::content_safety::PATH {
        return Ok(super::content_safety::analyze(request).await);
    }
    if let Some(response) = super::copilot::route(state, &request) {
        return Ok(response);
    }
    let endpoint = Endpoint::parse(request.uri().path());
    if let Some(Endpoint::Stream {
        conversation,
        multimodal,
    }) = endpoint
    {
        return stream::upgrade(state, request, &conversation, multimodal, exchange);
    }
    let credential = Credential::from_headers(state, request.headers());
    exchange.credential = credential.seen();
    if request.method() == Method::OPTIONS {
        return Ok(preflight());
    }
    let endpoint = endpoint.ok_or(DlError::NOT_FOUND)?;
    let method = request.method().clone();
    match (method, endpoint) {
        (Method::POST, Endpoint::Generate) => generate(state, request, &credential, exchange).await,
        (Method::POST, Endpoint::Refresh) => refresh(state, &credential),
        (Method::POST, Endpoint::Conversations) => {
            start(state, request, &credential, exchange).await
        }
        (Method::GET, Endpoint::Conversation(id)) => reconnect(state, &request, &credential, &id),
        (Method::GET, Endpoint::Activities(id)) => activities(state, &request, &credential, &id),
        (Method::POST, Endpoint::Activities(id)) => {
            post_activity(state, request, &credential, &id, exchange).await
        }
        (Method::POST, Endpoint::Upload(id)) => {
            upload(state, request, &credential, &id, exchange).await
        }
        (Method::GET, Endpoint::SessionId) => session_id(&credential),
        _ => Err(DlError::METHOD_NOT_ALLOWED),
    }
}

/// Who is asking, once the credential checked out.
enum Authority {
    Secret,
    Token(TokenGrant),
}

impl Authority {
    fn user(&self) -> Option<Arc<str>> {
        match self {
            Self::Secret { .. } => None,
            Self::Token(grant) => grant.user.clone(),
        }
    }
}

fn authority(credential: &Credential) -> Result<Authority, DlError> {
    match credential {
        Credential::Missing | Credential::Malformed => Err(DlError::MISSING_CREDENTIAL),
        Credential::Secret { .. } => Ok(Authority::Secret),
        Credential::Token(grant) if grant.is_expired() => Err(DlError::TOKEN_EXPIRED),
        Credential::Token(grant) => Ok(Authority::Token(grant.clone())),
        Credential::StreamToken | Credential::Unknown => Err(DlError::INVALID_CREDENTIAL),
    }
}

/// Credential, then ownership (a token only opens its own conversation), then the id.
fn conversation_access(
    state: &State,
    credential: &Credential,
    id: &str,
) -> Result<(Arc<Conversation>, Authority), DlError> {
    let authority = authority(credential)?;
    if let Authority::Token(grant) = &authority {
        if grant.conversation.as_str() != id {
            return Err(DlError::WRONG_CONVERSATION);
        }
    }
    if !ConversationId::is_valid(id) {
        return Err(DlError::BAD_CONVERSATION_ID);
    }
    let conversation = state
        .conversation(id)
        .ok_or(DlError::UNKNOWN_CONVERSATION)?;
    Ok((conversation, authority))
}

/// POST /tokens/generate (PROTOCOL §1.2): secret only; allocates, does not start.
async fn generate(
    state: &State,
    request: Request<Incoming>,
    credential: &Credential,
    exchange: &mut Exchange,
) -> Result<Response<Body>, DlError> {
    match authority(credential)? {
        Authority::Secret => {}
        Authority::Token(_) => return Err(DlError::SECRET_REQUIRED),
    }
    let body = read_optional_json(request, PARAMETERS_LIMIT).await?;
    let user = body.as_ref().and_then(activity::user_id).map(Arc::from);
    exchange.body = body;
    let conversation = state.create_conversation();
    let token = state.mint_token(&conversation.id, user);
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "conversationId": conversation.id.as_str(),
            "token": token,
            "expires_in": state.token_ttl.as_secs(),
        }),
    ))
}

/// POST /tokens/refresh (PROTOCOL §1.3): token only; same conversation and user.
fn refresh(state: &State, credential: &Credential) -> Result<Response<Body>, DlError> {
    let grant = match authority(credential)? {
        Authority::Token(grant) => grant,
        Authority::Secret => return Err(DlError::TOKEN_REQUIRED),
    };
    let token = state.mint_token(&grant.conversation, grant.user.clone());
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "conversationId": grant.conversation.as_str(),
            "token": token,
            "expires_in": state.token_ttl.as_secs(),
        }),
    ))
}

/// POST /conversations (PROTOCOL §2): the secret creates, a token starts its own conversation
/// (201), or finds it already started (200).
async fn start(
    state: &State,
    request: Request<Incoming>,
    credential: &Credential,
    exchange: &mut Exchange,
) -> Result<Response<Body>, DlError> {
    let authority = authority(credential)?;
    let origin = stream_origin(state, request.headers());
    let body = read_optional_json(request, PARAMETERS_LIMIT).await?;
    let body_user = body.as_ref().and_then(activity::user_id).map(Arc::from);
    exchange.body = body;
    let (conversation, user) = match authority {
        Authority::Secret => (state.create_conversation(), body_user),
        Authority::Token(grant) => {
            let conversation = state
                .conversation(grant.conversation.as_str())
                .ok_or(DlError::UNKNOWN_CONVERSATION)?;
            (conversation, grant.user)
        }
    };
    // Starting sends the bot a conversationUpdate; the echo bot does not answer it, and
    // conversationUpdate never reaches clients (PROTOCOL §0.7), so nothing is stored.
    let created = conversation.start();
    let token = state.mint_token(&conversation.id, user.clone());
    let stream_url =
        state.mint_stream_url(&origin, &conversation, user, Watermark::None, "-", false);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok(json_response(
        status,
        &json!({
            "conversationId": conversation.id.as_str(),
            "token": token,
            "expires_in": state.token_ttl.as_secs(),
            "streamUrl": stream_url,
            "referenceGrammarId": state.reference_grammar_id,
        }),
    ))
}

/// GET /conversations/{id}?watermark=W (PROTOCOL §3).
fn reconnect(
    state: &State,
    request: &Request<Incoming>,
    credential: &Credential,
    id: &str,
) -> Result<Response<Body>, DlError> {
    let (conversation, authority) = conversation_access(state, credential, id)?;
    if matches!(authority, Authority::Secret) && state.faults.enhanced_auth() {
        return Err(DlError::MISSING_USER_ID);
    }
    let raw = query_parameter(request.uri().query(), "watermark");
    let watermark = Watermark::parse(raw.as_deref()).ok_or(DlError::BAD_WATERMARK)?;
    if state.faults.take_reconnect_failure() {
        return Err(DlError::RECONNECT_FAILED);
    }
    let watermark_text = match (watermark, raw.as_deref()) {
        (Watermark::After(_), Some(raw)) => raw,
        _ => "-",
    };
    // With the secret the token carries no user (PROTOCOL §0.5).
    let user = authority.user();
    let token = state.mint_token(&conversation.id, user.clone());
    let origin = stream_origin(state, request.headers());
    let stream_url = state.mint_stream_url(
        &origin,
        &conversation,
        user,
        watermark,
        watermark_text,
        true,
    );
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "conversationId": conversation.id.as_str(),
            "token": token,
            "expires_in": state.token_ttl.as_secs(),
            "streamUrl": stream_url,
        }),
    ))
}

/// GET …/activities?watermark=W (PROTOCOL §4.1): stored activities newer than W.
fn activities(
    state: &State,
    request: &Request<Incoming>,
    credential: &Credential,
    id: &str,
) -> Result<Response<Body>, DlError> {
    let (conversation, _) = conversation_access(state, credential, id)?;
    let raw = query_parameter(request.uri().query(), "watermark");
    let watermark = Watermark::parse(raw.as_deref()).ok_or(DlError::BAD_WATERMARK)?;
    let (items, last) = conversation.stored_from(watermark.next_index(), PAGE_SIZE);
    let body = match last {
        Some(last) => Outgoing::Activities(items, last).frame(),
        // Nothing newer: the client keeps its watermark.
        None => json!({
            "activities": [],
            "watermark": match watermark {
                Watermark::After(sequence) => Value::from(activity::watermark(sequence)),
                Watermark::None => Value::Null,
            },
        })
        .to_string(),
    };
    Ok(raw_json_response(StatusCode::OK, body))
}

/// POST …/activities (PROTOCOL §4.2): answered once the bot has handled it.
async fn post_activity(
    state: &State,
    request: Request<Incoming>,
    credential: &Credential,
    id: &str,
    exchange: &mut Exchange,
) -> Result<Response<Body>, DlError> {
    let (conversation, authority) = conversation_access(state, credential, id)?;
    if !is_json(request.headers()) {
        return Err(DlError::NOT_JSON);
    }
    let bytes = read_body(request, ACTIVITY_LIMIT).await?;
    let value: Value = serde_json::from_slice(&bytes).map_err(|_| DlError::MALFORMED_JSON)?;
    exchange.body = Some(value.clone());
    let Value::Object(activity) = value else {
        return Err(DlError::MISSING_TYPE);
    };
    let typed = activity
        .get("type")
        .and_then(Value::as_str)
        .is_some_and(|kind| !kind.is_empty());
    if !typed {
        return Err(DlError::MISSING_TYPE);
    }
    let user = authority.user();
    let id = state.receive(&conversation, activity, user.as_deref());
    Ok(json_response(StatusCode::OK, &json!({ "id": id })))
}

/// POST …/upload?userId=U (PROTOCOL §4.3): files become attachments of one message. The
/// request log records that activity as the upload's body.
async fn upload(
    state: &State,
    request: Request<Incoming>,
    credential: &Credential,
    id: &str,
    exchange: &mut Exchange,
) -> Result<Response<Body>, DlError> {
    let (conversation, authority) = conversation_access(state, credential, id)?;
    let user_param = query_parameter(request.uri().query(), "userId").filter(|u| !u.is_empty());
    let header = |name: header::HeaderName| {
        request
            .headers()
            .get(name)
            .and_then(|value| value.to_str().ok())
            .map(str::to_owned)
    };
    let content_type = header(header::CONTENT_TYPE);
    let disposition = header(header::CONTENT_DISPOSITION);
    let origin = http_origin(state, request.headers());
    let bytes = read_body(request, UPLOAD_LIMIT).await?;
    let upload = upload::parse(content_type.as_deref(), disposition.as_deref(), &bytes)
        .map_err(|_| DlError::BAD_UPLOAD)?;
    let mut activity = upload.activity.unwrap_or_default();
    if !activity.get("type").is_some_and(Value::is_string) {
        activity.insert("type".into(), Value::from("message"));
    }
    if let Some(user) = &user_param {
        super::state::set_from_id(&mut activity, user);
    }
    let attachments: Vec<Value> = upload
        .files
        .iter()
        .map(|file| {
            let key = random::base64url(&random::random_bytes::<12>());
            let name: String = form_urlencoded::byte_serialize(file.name.as_bytes()).collect();
            json!({
                "contentType": file.content_type,
                "contentUrl": format!(
                    "{origin}/v3/directline/attachments/{}/{key}/{name}",
                    conversation.id.as_str()
                ),
                "name": file.name,
            })
        })
        .collect();
    activity.insert("attachments".into(), Value::Array(attachments));
    exchange.body = Some(Value::Object(activity.clone()));
    let user = authority.user();
    let id = state.receive(&conversation, activity, user.as_deref());
    Ok(json_response(StatusCode::OK, &json!({ "id": id })))
}

/// GET /session/getsessionid (PROTOCOL §7.5): a session id and its cookie, scoped like the
/// service's own (`Domain=.botframework.com; Secure`), which a gateway must rewrite.
fn session_id(credential: &Credential) -> Result<Response<Body>, DlError> {
    authority(credential)?;
    let session = random::base64url(&random::random_bytes::<18>());
    let mut response = json_response(StatusCode::OK, &json!({ "sessionId": session }));
    if let Ok(cookie) = HeaderValue::from_str(&format!(
        "dl_session={session}; Domain=.botframework.com; Path=/; Secure; HttpOnly"
    )) {
        response.headers_mut().insert(header::SET_COOKIE, cookie);
    }
    Ok(response)
}

/// CORS preflight for any path (PROTOCOL §7.1).
fn preflight() -> Response<Body> {
    let mut response = Response::new(Body::default());
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-ms-bot-agent"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    response
}

/// Headers every REST answer carries (PROTOCOL §2 "Headers").
fn decorate(mut response: Response<Body>) -> Response<Body> {
    if response.status() == StatusCode::SWITCHING_PROTOCOLS {
        return response;
    }
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Direct Line answers every REST call with its own request id (what Microsoft support
    // asks for); the gateway puts it on its upstream trace span.
    if let Ok(id) = HeaderValue::from_str(&ms_request_id()) {
        headers.insert("x-ms-request-id", id);
    }
    response
}

/// A fresh id in Direct Line's form (a GUID: 8-4-4-4-12 lowercase hex digits).
fn ms_request_id() -> String {
    let n = fastrand::u128(..);
    let hex = format!("{n:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// Reads the whole body chunk by chunk, refusing more than `limit` bytes: by
/// `Content-Length` before reading, or as soon as the chunks read exceed it. A refused
/// body is drained in the background (up to [`DISCARD_LIMIT`]) so the client, still
/// sending, reads the 413 instead of a connection reset.
async fn read_body(request: Request<Incoming>, limit: usize) -> Result<Bytes, DlError> {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok());
    let mut body = request.into_body();
    if declared.is_some_and(|length| length > limit as u64) {
        discard(body);
        return Err(DlError::TOO_LARGE);
    }
    let mut chunks: Vec<Bytes> = Vec::new();
    let mut total = 0usize;
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|_| DlError::BODY_UNREADABLE)?;
        let Ok(chunk) = frame.into_data() else {
            continue;
        };
        total = total.saturating_add(chunk.len());
        if total > limit {
            discard(body);
            return Err(DlError::TOO_LARGE);
        }
        chunks.push(chunk);
    }
    Ok(match chunks.len() {
        0 => Bytes::new(),
        1 => chunks.swap_remove(0),
        _ => chunks.concat().into(),
    })
}

/// Reads and drops the rest of a refused body, up to a bound.
fn discard(body: Incoming) {
    tokio::spawn(async move {
        let mut body = Limited::new(body, DISCARD_LIMIT);
        while let Some(Ok(_)) = body.frame().await {}
    });
}

/// An optional JSON body (TokenParameters, start parameters): empty means none.
async fn read_optional_json(
    request: Request<Incoming>,
    limit: usize,
) -> Result<Option<Value>, DlError> {
    let bytes = read_body(request, limit).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| DlError::MALFORMED_JSON)
}

/// `application/json`, `text/json`, `application/*+json`, with any parameters.
fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(';').next())
        .map(|media| media.trim().to_ascii_lowercase())
        .is_some_and(|media| media.ends_with("/json") || media.ends_with("+json"))
}

/// `host[:port]` as the client addressed us, so URLs work behind any address.
fn authority_of(state: &State, headers: &HeaderMap) -> String {
    headers
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .filter(|host| !host.is_empty())
        .map_or_else(|| state.local_addr.to_string(), str::to_owned)
}

fn is_forwarded_https(headers: &HeaderMap) -> bool {
    headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|proto| proto.trim().eq_ignore_ascii_case("https"))
}

/// `ws://HOST` (`wss://` when serving TLS or behind a TLS proxy that says so).
fn stream_origin(state: &State, headers: &HeaderMap) -> String {
    let scheme = if state.tls.is_some() || is_forwarded_https(headers) {
        "wss"
    } else {
        "ws"
    };
    format!("{scheme}://{}", authority_of(state, headers))
}

fn http_origin(state: &State, headers: &HeaderMap) -> String {
    let scheme = if state.tls.is_some() || is_forwarded_https(headers) {
        "https"
    } else {
        "http"
    };
    format!("{scheme}://{}", authority_of(state, headers))
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn routes() {
        let conversation = |id: &str| Some(Endpoint::Conversation(id.into()));
        assert_eq!(
            Endpoint::parse("/v3/directline/tokens/generate"),
            Some(Endpoint::Generate)
        );
        assert_eq!(
            Endpoint::parse("/v3/directline/Conversations/"),
            Some(Endpoint::Conversations)
        );
        assert_eq!(
            Endpoint::parse("/v3/directline/conversations/a-us"),
            conversation("a-us")
        );
        assert_eq!(
            Endpoint::parse("/v3/directline/conversations/a/stream/multimodal"),
            Some(Endpoint::Stream {
                conversation: "a".into(),
                multimodal: true
            })
        );
        assert_eq!(
            Endpoint::parse("/v3/directline/conversations/a/stream/x"),
            None
        );
        assert_eq!(Endpoint::parse("/v3/directline/conversations/a/b"), None);
        assert_eq!(Endpoint::parse("/v3/directline"), None);
        assert_eq!(Endpoint::parse("/other"), None);
    }

    #[test]
    fn error_bodies() {
        let table = [
            (DlError::MISSING_CREDENTIAL, 401, "BadArgument"),
            (DlError::INVALID_CREDENTIAL, 403, "BadArgument"),
            (DlError::TOKEN_EXPIRED, 403, "TokenExpired"),
            (DlError::UNKNOWN_CONVERSATION, 404, "BadArgument"),
            (DlError::MISSING_USER_ID, 400, "MissingProperty"),
            (DlError::RECONNECT_FAILED, 502, "ServiceError"),
            (DlError::TOO_LARGE, 413, "MessageSizeTooBig"),
        ];
        for (error, status, code) in table {
            let response = error.response();
            assert_eq!(response.status().as_u16(), status);
            assert_eq!(error.code, code);
            assert_eq!(
                response.headers()[header::CONTENT_TYPE],
                "application/json; charset=utf-8"
            );
        }
    }

    #[test]
    fn json_media_types() {
        let with = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            is_json(&headers)
        };
        assert!(with("application/json"));
        assert!(with("application/json; charset=utf-8"));
        assert!(with("application/vnd.api+json"));
        assert!(with("Text/JSON"));
        assert!(!with("text/plain"));
        assert!(!is_json(&HeaderMap::new()));
    }
}
