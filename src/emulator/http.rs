//! The emulator's REST routes (spec §1–§4) and its accept loop.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

use super::state::{RecordedRequest, SeenCredential, State};
use crate::body::{self, Body};

const ACTIVITY_LIMIT: usize = 256 * 1024;
const UPLOAD_LIMIT: usize = 16 * 1024 * 1024;

pub async fn serve(listener: TcpListener, state: Arc<State>) {
    let mut stopped = state.stopped.subscribe();
    let builder = auto::Builder::new(TokioExecutor::new());
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let _ = stream.set_nodelay(true);
                let state = state.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let state = state.clone();
                    async move { Ok::<_, Infallible>(handle(state, request).await) }
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service).into_owned();
                let mut stopped = stopped.clone();
                tokio::spawn(async move {
                    tokio::select! {
                        _ = connection => {}
                        _ = stopped.changed() => {}
                    }
                });
            }
            _ = stopped.changed() => return,
        }
    }
}

struct Call {
    method: Method,
    path: String,
    query: Option<String>,
    host: Option<String>,
    credential: SeenCredential,
    raw_credential: Option<String>,
    body: Option<Value>,
}

async fn handle(state: Arc<State>, request: Request<Incoming>) -> Response<Body> {
    let (parts, incoming) = request.into_parts();
    let raw_credential = parts
        .headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("bearer "))
        })
        .map(|v| v.trim().to_owned());
    let mut call = Call {
        method: parts.method.clone(),
        path: parts.uri.path().to_owned(),
        query: parts.uri.query().map(str::to_owned),
        host: parts
            .headers
            .get(header::HOST)
            .and_then(|h| h.to_str().ok())
            .map(str::to_owned),
        credential: judge(&state, raw_credential.as_deref()),
        raw_credential,
        body: None,
    };
    let segments: Vec<String> = call
        .path
        .trim_start_matches('/')
        .split('/')
        .map(str::to_owned)
        .collect();
    let segments: Vec<&str> = segments.iter().map(String::as_str).collect();
    if call.method == Method::OPTIONS {
        return cors(Response::new(body::empty()));
    }
    let response = match (call.method.clone(), segments.as_slice()) {
        (Method::GET, ["v3", "directline", "conversations", id, "stream"]) => {
            let id = (*id).to_owned();
            super::stream::upgrade(
                state.clone(),
                &id,
                Request::from_parts(parts, incoming),
                &call.query,
            )
        }
        (Method::POST, ["v3", "directline", "conversations", id, "upload"]) => {
            let id = (*id).to_owned();
            upload(&state, &mut call, &id, &parts.headers, incoming).await
        }
        (method, path) => {
            let bytes = match Limited::new(incoming, ACTIVITY_LIMIT).collect().await {
                Ok(collected) => collected.to_bytes(),
                Err(_) => Bytes::new(),
            };
            if !bytes.is_empty() {
                call.body = serde_json::from_slice(&bytes).ok();
            }
            let path: Vec<String> = path.iter().map(|s| (*s).to_owned()).collect();
            let path: Vec<&str> = path.iter().map(String::as_str).collect();
            route(&state, &mut call, &method, &path, &bytes, &parts.headers)
        }
    };
    state.record(RecordedRequest {
        method: call.method.to_string(),
        path: call.path,
        query: call.query,
        credential: call.credential,
        host: call.host,
        body: call.body,
        status: response.status().as_u16(),
    });
    cors(response)
}

fn route(
    state: &State,
    call: &mut Call,
    method: &Method,
    path: &[&str],
    bytes: &Bytes,
    headers: &http::HeaderMap,
) -> Response<Body> {
    match (method, path) {
        (&Method::POST, ["v3", "directline", "tokens", "generate"]) => generate(state, call),
        (&Method::POST, ["v3", "directline", "tokens", "refresh"]) => refresh(state, call),
        (&Method::POST, ["v3", "directline", "conversations"]) => start(state, call),
        (&Method::GET, ["v3", "directline", "conversations", id]) => reconnect(state, call, id),
        (&Method::GET, ["v3", "directline", "conversations", id, "activities"]) => {
            get_activities(state, call, id)
        }
        (&Method::POST, ["v3", "directline", "conversations", id, "activities"]) => {
            post_activity(state, call, id, bytes, headers)
        }
        (&Method::GET, ["v3", "directline", "session", "getsessionid"]) => {
            if matches!(
                call.credential,
                SeenCredential::Missing | SeenCredential::Invalid
            ) {
                return error(
                    StatusCode::FORBIDDEN,
                    "BadArgument",
                    "Invalid token or secret",
                );
            }
            let mut response = ok(
                StatusCode::OK,
                json!({ "sessionId": super::state::random_token(12) }),
            );
            response.headers_mut().insert(
                header::SET_COOKIE,
                HeaderValue::from_static(
                    "dl_session=1; Domain=.botframework.com; Path=/; Secure; HttpOnly",
                ),
            );
            response
        }
        _ => error(StatusCode::NOT_FOUND, "NotFound", "Not found"),
    }
}

fn judge(state: &State, credential: Option<&str>) -> SeenCredential {
    let Some(credential) = credential else {
        return SeenCredential::Missing;
    };
    if credential == state.secret.expose() {
        return SeenCredential::Secret;
    }
    if let Some(token) = state.tokens.get(credential) {
        return SeenCredential::ConversationToken {
            conversation_id: token.conversation.clone(),
        };
    }
    if state.stream_tokens.contains_key(credential) {
        return SeenCredential::StreamToken;
    }
    SeenCredential::Invalid
}

/// Checks the credential of a conversation-scoped call. `Ok(user)`: the token's user, if any.
#[expect(
    clippy::result_large_err,
    reason = "the refusal is the response itself, built once per refused call"
)]
fn authorize(
    state: &State,
    call: &Call,
    conversation: Option<&str>,
) -> Result<Option<String>, Response<Body>> {
    match &call.credential {
        SeenCredential::Missing => Err(error(
            StatusCode::UNAUTHORIZED,
            "BadArgument",
            "Missing token or secret",
        )),
        SeenCredential::Secret => Ok(None),
        SeenCredential::ConversationToken { conversation_id } => {
            let raw = call.raw_credential.as_deref().unwrap_or("");
            let token = state.tokens.get(raw).ok_or_else(|| {
                error(
                    StatusCode::FORBIDDEN,
                    "BadArgument",
                    "Invalid token or secret",
                )
            })?;
            if token.expires_at <= Instant::now() {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "TokenExpired",
                    "Token expired",
                ));
            }
            if conversation.is_some_and(|c| c != conversation_id) {
                return Err(error(
                    StatusCode::FORBIDDEN,
                    "BadArgument",
                    "Token not valid for this conversation",
                ));
            }
            Ok(token.user.clone())
        }
        SeenCredential::StreamToken | SeenCredential::Invalid => Err(error(
            StatusCode::FORBIDDEN,
            "BadArgument",
            "Invalid token or secret",
        )),
    }
}

/// A field of a JSON object, matched case-insensitively as Direct Line does (spec §1.2).
fn field<'a>(value: Option<&'a Value>, name: &str) -> Option<&'a Value> {
    value?
        .as_object()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(name))
        .map(|(_, v)| v)
}

fn user_id(body: Option<&Value>) -> Option<String> {
    field(field(body, "user"), "id")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_owned)
}

fn generate(state: &State, call: &Call) -> Response<Body> {
    if call.credential != SeenCredential::Secret {
        return match authorize(state, call, None) {
            Err(response) => response,
            Ok(_) => error(StatusCode::FORBIDDEN, "BadArgument", "A secret is required"),
        };
    }
    let conversation = state.allocate();
    let token = state.mint_token(&conversation.id, user_id(call.body.as_ref()));
    ok(
        StatusCode::OK,
        json!({ "conversationId": conversation.id, "token": token, "expires_in": state.token_ttl.as_secs() }),
    )
}

fn refresh(state: &State, call: &Call) -> Response<Body> {
    if !matches!(call.credential, SeenCredential::ConversationToken { .. }) {
        return match authorize(state, call, None) {
            Err(response) => response,
            Ok(_) => error(StatusCode::FORBIDDEN, "BadArgument", "A token is required"),
        };
    }
    let user = match authorize(state, call, None) {
        Ok(user) => user,
        Err(response) => return response,
    };
    let SeenCredential::ConversationToken { conversation_id } = &call.credential else {
        unreachable!()
    };
    let token = state.mint_token(conversation_id, user);
    ok(
        StatusCode::OK,
        json!({ "conversationId": conversation_id, "token": token, "expires_in": state.token_ttl.as_secs() }),
    )
}

fn start(state: &State, call: &Call) -> Response<Body> {
    let token_user = match authorize(state, call, None) {
        Ok(user) => user,
        Err(response) => return response,
    };
    let (conversation, user) = match &call.credential {
        SeenCredential::ConversationToken { conversation_id } => {
            match state.conversation(conversation_id) {
                Some(c) => (c, token_user),
                None => return error(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation"),
            }
        }
        _ => (state.allocate(), user_id(call.body.as_ref())),
    };
    let created = conversation.start();
    let token = state.mint_token(&conversation.id, user);
    let stream_token = state.mint_stream_token(&conversation, None, false);
    let body = json!({
        "conversationId": conversation.id,
        "token": token,
        "expires_in": state.token_ttl.as_secs(),
        "streamUrl": stream_url(call, &conversation.id, "-", &stream_token),
        "referenceGrammarId": "2ea0374a-461a-2b59-b42a-b1c985b149a3",
    });
    ok(
        if created {
            StatusCode::CREATED
        } else {
            StatusCode::OK
        },
        body,
    )
}

fn reconnect(state: &State, call: &Call, id: &str) -> Response<Body> {
    let user = match authorize(state, call, Some(id)) {
        Ok(user) => user,
        Err(response) => return response,
    };
    if state.faults.take_reconnect_failure() {
        return error(
            StatusCode::BAD_GATEWAY,
            "ServiceError",
            "Injected reconnect failure",
        );
    }
    let Some(conversation) = state.conversation(id) else {
        return error(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation");
    };
    if call.credential == SeenCredential::Secret && state.faults.enhanced_auth() {
        return error(
            StatusCode::BAD_REQUEST,
            "MissingProperty",
            "Missing user ID",
        );
    }
    let raw_watermark =
        query_param(call.query.as_deref(), "watermark").filter(|w| !w.is_empty() && w != "-");
    let watermark = match raw_watermark.as_deref().map(str::parse::<u64>) {
        Some(Ok(w)) => Some(w),
        Some(Err(_)) => return error(StatusCode::BAD_REQUEST, "BadArgument", "Invalid watermark"),
        None => None,
    };
    let stream_token = state.mint_stream_token(&conversation, watermark, true);
    let shown = raw_watermark.unwrap_or_else(|| "-".into());
    let token = state.mint_token(id, user);
    ok(
        StatusCode::OK,
        json!({
            "conversationId": id,
            "token": token,
            "expires_in": state.token_ttl.as_secs(),
            "streamUrl": stream_url(call, id, &shown, &stream_token),
        }),
    )
}

fn get_activities(state: &State, call: &Call, id: &str) -> Response<Body> {
    if let Err(response) = authorize(state, call, Some(id)) {
        return response;
    }
    let Some(conversation) = state.conversation(id) else {
        return error(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation");
    };
    let watermark =
        query_param(call.query.as_deref(), "watermark").and_then(|w| w.parse::<u64>().ok());
    let activities = conversation.stored_after(watermark);
    let newest = conversation.newest_watermark().or(watermark);
    ok(
        StatusCode::OK,
        json!({ "activities": activities, "watermark": newest.map(|w| w.to_string()) }),
    )
}

fn post_activity(
    state: &State,
    call: &Call,
    id: &str,
    bytes: &Bytes,
    headers: &http::HeaderMap,
) -> Response<Body> {
    let user = match authorize(state, call, Some(id)) {
        Ok(user) => user,
        Err(response) => return response,
    };
    let Some(conversation) = state.conversation(id) else {
        return error(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation");
    };
    let json_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.to_ascii_lowercase().contains("json"));
    if !json_type {
        return error(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "BadArgument",
            "Content-Type must be JSON",
        );
    }
    if bytes.len() >= ACTIVITY_LIMIT {
        return error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "MessageSizeTooBig",
            "Activity too large",
        );
    }
    let mut activity = match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) if map.get("type").is_some_and(Value::is_string) => {
            Value::Object(map)
        }
        Ok(_) => {
            return error(
                StatusCode::BAD_REQUEST,
                "BadArgument",
                "Activity must be an object with a type",
            );
        }
        Err(_) => return error(StatusCode::BAD_REQUEST, "BadArgument", "Malformed JSON"),
    };
    if let Some(user) = user {
        activity["from"] =
            json!({ "id": user, "name": activity["from"]["name"].clone(), "role": "user" });
    }
    activity["recipient"] = json!({ "id": "echo-bot", "name": "Echo Bot", "role": "bot" });
    let text = activity["text"].as_str().map(str::to_owned);
    let is_message = activity["type"] == "message";
    let id = conversation.store(activity);
    if is_message {
        if state.faults.typing() {
            conversation.ephemeral(json!({ "type": "typing", "from": { "id": "echo-bot", "name": "Echo Bot", "role": "bot" } }));
        }
        let reply = format!("echo: {}", text.unwrap_or_default());
        conversation.append_bot_message(&reply, Some(&id));
    }
    ok(StatusCode::OK, json!({ "id": id }))
}

async fn upload(
    state: &State,
    call: &mut Call,
    id: &str,
    headers: &http::HeaderMap,
    incoming: Incoming,
) -> Response<Body> {
    if let Err(response) = authorize(state, call, Some(id)) {
        return response;
    }
    let Some(conversation) = state.conversation(id) else {
        return error(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation");
    };
    let bytes = match Limited::new(incoming, UPLOAD_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(_) => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "MessageSizeTooBig",
                "Upload too large",
            );
        }
    };
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("application/octet-stream");
    let user = query_param(call.query.as_deref(), "userId").unwrap_or_default();
    let mut activity = json!({ "type": "message", "from": { "id": user } });
    let mut attachments = Vec::new();
    match content_type.split_once("boundary=") {
        Some((_, boundary)) if content_type.starts_with("multipart/") => {
            for part in multipart_parts(&bytes, boundary.trim_matches('"')) {
                if part.content_type.contains("vnd.microsoft.activity") {
                    if let Ok(Value::Object(fields)) = serde_json::from_slice::<Value>(part.body) {
                        for (k, v) in fields {
                            if k != "from" && k != "attachments" {
                                activity[k] = v;
                            }
                        }
                    }
                } else {
                    attachments.push(json!({ "contentType": part.content_type, "name": part.filename, "contentUrl": format!("http://emulator.invalid/attachments/{}", attachments.len()) }));
                }
            }
        }
        _ => attachments.push(json!({ "contentType": content_type, "contentUrl": "http://emulator.invalid/attachments/0" })),
    }
    activity["attachments"] = Value::Array(attachments);
    call.body = Some(activity.clone());
    let id = conversation.store(activity);
    ok(StatusCode::OK, json!({ "id": id }))
}

struct Part<'a> {
    content_type: String,
    filename: Option<String>,
    body: &'a [u8],
}

/// Splits a multipart body at its boundary lines; enough for the shapes DLJS sends.
fn multipart_parts<'a>(bytes: &'a [u8], boundary: &str) -> Vec<Part<'a>> {
    let delimiter = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut rest = bytes;
    while let Some(start) = find(rest, delimiter.as_bytes()) {
        rest = &rest[start + delimiter.len()..];
        if rest.starts_with(b"--") {
            break;
        }
        let Some(header_end) = find(rest, b"\r\n\r\n") else {
            break;
        };
        let head = String::from_utf8_lossy(&rest[..header_end]).to_string();
        let body_start = header_end + 4;
        let body_end =
            find(&rest[body_start..], delimiter.as_bytes()).map_or(rest.len(), |e| body_start + e);
        let body = rest[body_start..body_end]
            .strip_suffix(b"\r\n")
            .unwrap_or(&rest[body_start..body_end]);
        let mut content_type = "application/octet-stream".to_owned();
        let mut filename = None;
        for line in head.lines() {
            let lower = line.to_ascii_lowercase();
            if let Some(value) = lower.strip_prefix("content-type:") {
                content_type = value.trim().to_owned();
            }
            if lower.starts_with("content-disposition:")
                && let Some(index) = lower.find("filename=")
            {
                filename = Some(
                    line[index + 9..]
                        .trim_matches(|c| c == '"' || c == ';' || c == ' ')
                        .to_owned(),
                );
            }
        }
        parts.push(Part {
            content_type,
            filename,
            body,
        });
        rest = &rest[body_end..];
    }
    parts
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

fn stream_url(call: &Call, id: &str, watermark: &str, token: &str) -> String {
    let host = call.host.as_deref().unwrap_or("127.0.0.1");
    format!("ws://{host}/v3/directline/conversations/{id}/stream?watermark={watermark}&t={token}")
}

pub fn query_param(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn ok(status: StatusCode, body: Value) -> Response<Body> {
    let mut response = Response::new(body::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub fn error(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    ok(
        status,
        json!({ "error": { "code": code, "message": message } }),
    )
}

fn cors(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("authorization, content-type, x-ms-bot-agent"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Retry-After"),
    );
    response
}
