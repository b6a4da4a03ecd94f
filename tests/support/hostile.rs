//! A hostile Direct Line upstream, on 127.0.0.1:0, that misbehaves on purpose, knob by knob.
//!
//! It speaks just enough Direct Line for a gateway to get a token, start, reconnect, read,
//! post and upload, and then lies as told: error bodies that echo the request (the
//! `Authorization` header, so the secret or the upstream token, and the `Host`) as JSON, as
//! an HTML page, or inside a Direct Line-shaped message; stream URLs on a foreign host; odd
//! `expires_in` values; success bodies that echo the credential; a stream that sends one
//! frame of N bytes, closes at once, or goes silent. Knobs change while it runs
//! ([`Hostile::set`]); what it was asked is recorded ([`Hostile::requests`]).
//!
//! To add a knob: a field in [`Knobs`] (default = behave), read it in `answer` or `serve_stream`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Method, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;

/// The Direct Line routes the hostile upstream answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Generate,
    Refresh,
    Start,
    Reconnect,
    GetActivities,
    PostActivity,
    Upload,
    Stream,
    Other,
}

/// What a failing route answers, always with the status of its [`Failure`].
#[derive(Debug, Clone)]
pub enum FailBody {
    /// `{"message":"…","request":{"authorization":…,"host":…}}`: JSON, not Direct Line-shaped.
    EchoJson,
    /// An HTML error page (a load balancer's) quoting the request headers.
    EchoHtml,
    /// `{"error":{"code":"BadArgument","message":"… Bearer <credential> … <host>"}}`.
    DlEcho,
    /// A clean Direct Line error.
    Dl { code: String, message: String },
    /// A JSON body of this many bytes.
    Huge(usize),
}

#[derive(Debug, Clone)]
pub struct Failure {
    pub route: Route,
    pub status: u16,
    pub body: FailBody,
}

#[derive(Debug, Clone)]
pub struct Knobs {
    /// Routes that fail, and how; the first matching one wins.
    pub fail: Vec<Failure>,
    /// The `expires_in` of every token answer, verbatim.
    pub expires_in: Value,
    /// Start's `streamUrl`; `None`: this server's own stream endpoint. `{conv}` is replaced.
    pub start_stream_url: Option<String>,
    /// Reconnect's `streamUrl`, likewise.
    pub reconnect_stream_url: Option<String>,
    /// Success answers of activities and upload echo the `Authorization` header.
    pub echo_on_success: bool,
    /// The stream sends one text frame of this many bytes after the upgrade.
    pub frame_bytes: Option<usize>,
    /// The stream closes right after the upgrade (the gateway then resumes).
    pub close_stream_at_once: bool,
    /// The stream sends nothing and reads nothing, keeping the socket open.
    pub silent: bool,
    /// Bytes of `x` appended to every upstream token minted (Direct Line's are under 1 KB).
    pub token_padding: usize,
}

impl Default for Knobs {
    fn default() -> Self {
        Self {
            fail: Vec::new(),
            expires_in: json!(3600),
            start_stream_url: None,
            reconnect_stream_url: None,
            echo_on_success: false,
            frame_bytes: None,
            close_stream_at_once: false,
            silent: false,
            token_padding: 0,
        }
    }
}

/// One request as the hostile upstream saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub route: Route,
    pub method: Method,
    pub path: String,
    pub authorization: String,
}

#[derive(Default)]
struct State {
    knobs: Mutex<Knobs>,
    seen: Mutex<Vec<Seen>>,
    issued: AtomicUsize,
    stream_connects: AtomicUsize,
}

pub struct Hostile {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:PORT`, the gateway's `upstream`.
    pub base: String,
    state: Arc<State>,
}

impl Hostile {
    pub async fn start(knobs: Knobs) -> Hostile {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let state = Arc::new(State {
            knobs: Mutex::new(knobs),
            ..State::default()
        });
        let serving = state.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                let state = serving.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(state.clone(), addr, request));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tcp), service)
                        .with_upgrades()
                        .await;
                });
            }
        });
        Hostile {
            addr,
            base: format!("http://{addr}"),
            state,
        }
    }

    pub fn set(&self, edit: impl FnOnce(&mut Knobs)) {
        edit(&mut self.state.knobs.lock().unwrap());
    }

    pub fn requests(&self) -> Vec<Seen> {
        self.state.seen.lock().unwrap().clone()
    }

    /// Upgrades accepted on this server's own stream endpoint.
    pub fn stream_connects(&self) -> usize {
        self.state.stream_connects.load(Ordering::Relaxed)
    }

    /// `host:port`, as the gateway sends it in `Host`.
    pub fn authority(&self) -> String {
        self.addr.to_string()
    }
}

/// A listener on `ip` (e.g. `127.0.0.2`) that only counts the connections made to it: the
/// foreign host a hostile stream URL points at.
pub async fn counting_listener(ip: &str) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind((ip, 0)).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let count = Arc::new(AtomicUsize::new(0));
    let counted = count.clone();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            counted.fetch_add(1, Ordering::Relaxed);
            drop(tcp);
        }
    });
    (addr, count)
}

fn route_of(method: &Method, path: &str) -> (Route, Option<String>) {
    let Some(rest) = path.strip_prefix("/v3/directline/") else {
        return (Route::Other, None);
    };
    let parts: Vec<&str> = rest.split('/').collect();
    let conv = parts.get(1).map(|c| (*c).to_owned());
    let route = match (method, parts.as_slice()) {
        (&Method::POST, ["tokens", "generate"]) => Route::Generate,
        (&Method::POST, ["tokens", "refresh"]) => Route::Refresh,
        (&Method::POST, ["conversations"]) => Route::Start,
        (&Method::GET, ["conversations", _]) => Route::Reconnect,
        (&Method::GET, ["conversations", _, "activities"]) => Route::GetActivities,
        (&Method::POST, ["conversations", _, "activities"]) => Route::PostActivity,
        (&Method::POST, ["conversations", _, "upload"]) => Route::Upload,
        (&Method::GET, ["conversations", _, "stream", ..]) => Route::Stream,
        _ => Route::Other,
    };
    (route, conv)
}

fn json_reply(status: u16, body: &Value) -> Response<Full<Bytes>> {
    reply(status, "application/json; charset=utf-8", body.to_string())
}

fn reply(status: u16, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = StatusCode::from_u16(status).unwrap();
    let value = HeaderValue::from_str(content_type).unwrap();
    response.headers_mut().insert(header::CONTENT_TYPE, value);
    response
}

/// The conversation a token was issued for: tokens are `hostile-token-<conv>-<n>`.
fn conversation_of(authorization: &str) -> Option<String> {
    let token = authorization.strip_prefix("Bearer hostile-token-")?;
    token.rsplit_once('-').map(|(conv, _)| conv.to_owned())
}

async fn answer(
    state: Arc<State>,
    addr: SocketAddr,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, std::convert::Infallible> {
    let (route, conv_in_path) = route_of(request.method(), request.uri().path());
    let header_text = |name: header::HeaderName| {
        let value = request.headers().get(name);
        value.and_then(|v| v.to_str().ok()).unwrap_or("").to_owned()
    };
    let (authorization, host) = (
        header_text(header::AUTHORIZATION),
        header_text(header::HOST),
    );
    state.seen.lock().unwrap().push(Seen {
        route,
        method: request.method().clone(),
        path: request.uri().to_string(),
        authorization: authorization.clone(),
    });
    let knobs = state.knobs.lock().unwrap().clone();
    if let Some(failure) = knobs.fail.iter().find(|f| f.route == route) {
        let echo = format!("Authorization: {authorization}; Host: {host}");
        let body = match &failure.body {
            FailBody::EchoJson => json!({"message": "request failed", "request": {
                "authorization": authorization, "host": host}})
            .to_string(),
            FailBody::EchoHtml => {
                let html = format!("<html><body><h1>502 Bad Gateway</h1><pre>{echo}</pre></body></html>");
                return Ok(reply(failure.status, "text/html", html));
            }
            FailBody::DlEcho => {
                json!({"error": {"code": "BadArgument", "message": format!("Invalid request: {echo}")}})
                    .to_string()
            }
            FailBody::Dl { code, message } => {
                json!({"error": {"code": code, "message": message}}).to_string()
            }
            FailBody::Huge(n) => format!("{{\"error\":{{\"code\":\"BadArgument\",\"message\":\"{}\"}}}}", "x".repeat(*n)),
        };
        return Ok(reply(failure.status, "application/json", body));
    }
    if route == Route::Stream {
        return Ok(upgrade_stream(state, knobs, request));
    }
    let _ = request.into_body().collect().await;
    let conv = conv_in_path
        .filter(|c| c != "conversations" && c != "generate" && c != "refresh")
        .or_else(|| conversation_of(&authorization));
    let n = state.issued.fetch_add(1, Ordering::Relaxed);
    let padding = "x".repeat(knobs.token_padding);
    let mint = |conv: &str| {
        format!(
            "hostile-token-{conv}-{n}{:016x}{padding}",
            fastrand::u64(..)
        )
    };
    let stream_url = |custom: &Option<String>, conv: &str| match custom {
        Some(url) => url.replace("{conv}", conv),
        None => format!(
            "ws://{addr}/v3/directline/conversations/{conv}/stream?watermark=-&t=hostile-ticket-{n}"
        ),
    };
    let echo = |mut body: Value| {
        if knobs.echo_on_success {
            body["echo"] = json!(authorization);
        }
        body
    };
    Ok(match (route, conv) {
        (Route::Generate, _) => {
            let conv = format!("hostileconv{n}");
            json_reply(
                200,
                &json!({"conversationId": conv, "token": mint(&conv), "expires_in": knobs.expires_in}),
            )
        }
        (Route::Refresh | Route::Start | Route::Reconnect, Some(conv)) => {
            let mut body = json!({"conversationId": conv, "token": mint(&conv), "expires_in": knobs.expires_in});
            let (status, custom) = match route {
                Route::Start => (201, &knobs.start_stream_url),
                _ => (200, &knobs.reconnect_stream_url),
            };
            if route != Route::Refresh {
                body["streamUrl"] = json!(stream_url(custom, &conv));
            }
            json_reply(status, &echo(body))
        }
        (Route::GetActivities, Some(conv)) => {
            let mut activity =
                json!({"type": "message", "id": format!("{conv}|0000001"), "text": "hi"});
            if knobs.echo_on_success {
                activity["text"] = json!(format!("you sent {authorization}"));
            }
            json_reply(200, &json!({"activities": [activity], "watermark": "1"}))
        }
        (Route::PostActivity | Route::Upload, Some(conv)) => {
            json_reply(200, &echo(json!({"id": format!("{conv}|0000002")})))
        }
        _ => json_reply(
            404,
            &json!({"error": {"code": "NotFound", "message": "Unknown route"}}),
        ),
    })
}

fn upgrade_stream(
    state: Arc<State>,
    knobs: Knobs,
    request: Request<Incoming>,
) -> Response<Full<Bytes>> {
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY) else {
        return json_reply(
            400,
            &json!({"error": {"code": "BadArgument", "message": "Not a WebSocket"}}),
        );
    };
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        state.stream_connects.fetch_add(1, Ordering::Relaxed);
        let mut socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, None).await;
        if let Some(n) = knobs.frame_bytes {
            let frame = r#"{"activities":[],"watermark":"1","pad":""#;
            let pad = n.saturating_sub(frame.len() + 2);
            let _ = socket
                .send(Message::text(format!("{frame}{}\"}}", "x".repeat(pad))))
                .await;
        }
        if knobs.close_stream_at_once {
            let _ = socket.close(None).await;
        } else if knobs.silent {
            tokio::time::sleep(Duration::from_secs(120)).await;
        } else {
            while let Some(Ok(_)) = socket.next().await {}
        }
    });
    let mut response = Response::new(Full::new(Bytes::new()));
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept).unwrap(),
    );
    response
}
