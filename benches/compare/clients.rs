//! The client side: the same Direct Line calls whichever way the bench goes (direct,
//! through nginx, through the gateway). Only `tokens/generate` differs: straight to
//! Direct Line a token server would send the secret; the two proxies add it themselves.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub type Http = Client<HttpConnector, Full<Bytes>>;
pub type Socket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Keep-alive to every target with no cap on idle connections, Nagle off (the gateway
/// and the emulator set nodelay too; nginx does on keep-alive connections by default).
pub fn http_client() -> Http {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new()).build(connector)
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Via {
    Direct,
    Nginx,
    Gateway,
}

impl Via {
    pub const ALL: [Via; 3] = [Via::Direct, Via::Nginx, Via::Gateway];

    pub fn name(self) -> &'static str {
        match self {
            Via::Direct => "direct",
            Via::Nginx => "nginx",
            Via::Gateway => "gateway",
        }
    }
}

/// Where clients send their Direct Line calls.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `http://127.0.0.1:PORT/v3/directline`
    pub domain: Arc<str>,
    /// `Authorization` for `tokens/generate`: the secret when going direct.
    pub generate_auth: Option<Arc<str>>,
}

impl Endpoint {
    pub fn new(port: u16, generate_auth: Option<&str>) -> Self {
        Self {
            domain: format!("http://127.0.0.1:{port}/v3/directline").into(),
            generate_auth: generate_auth.map(Into::into),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Conversation {
    pub id: String,
    pub token: String,
    pub stream_url: String,
}

pub async fn request(
    http: &Http,
    method: http::Method,
    url: &str,
    auth: Option<&str>,
    body: Bytes,
) -> Result<(u16, Bytes), String> {
    let mut builder = http::Request::builder().method(method).uri(url);
    if let Some(auth) = auth {
        builder = builder.header(http::header::AUTHORIZATION, format!("Bearer {auth}"));
    }
    if !body.is_empty() {
        builder = builder.header(http::header::CONTENT_TYPE, "application/json");
    }
    let request = builder.body(Full::new(body)).map_err(|e| e.to_string())?;
    let response = http.request(request).await.map_err(|e| e.to_string())?;
    let status = response.status().as_u16();
    let bytes = response
        .into_body()
        .collect()
        .await
        .map_err(|e| e.to_string())?
        .to_bytes();
    Ok((status, bytes))
}

async fn json(
    http: &Http,
    method: http::Method,
    url: &str,
    auth: Option<&str>,
    body: &'static [u8],
) -> Result<Value, String> {
    let (status, bytes) = request(http, method, url, auth, Bytes::from_static(body)).await?;
    if !(200..300).contains(&status) {
        return Err(format!(
            "{url}: {status} {}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    serde_json::from_slice(&bytes).map_err(|e| format!("{url}: {e}"))
}

/// tokens/generate → POST /conversations, as DLJS behind a token server does.
pub async fn start_conversation(http: &Http, endpoint: &Endpoint) -> Result<Conversation, String> {
    let domain = &endpoint.domain;
    let generated = json(
        http,
        http::Method::POST,
        &format!("{domain}/tokens/generate"),
        endpoint.generate_auth.as_deref(),
        b"{}",
    )
    .await?;
    let token = generated["token"].as_str().ok_or("no token")?;
    let started = json(
        http,
        http::Method::POST,
        &format!("{domain}/conversations"),
        Some(token),
        b"{}",
    )
    .await?;
    let text = |name: &str| {
        started[name]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| format!("start answered no {name}: {started}"))
    };
    let stream_url = text("streamUrl")?;
    // A proxy that failed to rewrite would send the WebSocket straight to Direct Line and
    // every stream figure would silently be direct's.
    let origin = endpoint
        .domain
        .strip_prefix("http://")
        .and_then(|rest| rest.split('/').next())
        .unwrap_or_default();
    if !stream_url.starts_with(&format!("ws://{origin}/")) {
        return Err(format!("streamUrl not rewritten to {origin}: {stream_url}"));
    }
    Ok(Conversation {
        id: text("conversationId")?,
        token: text("token")?,
        stream_url,
    })
}

/// Reconnect (`GET /conversations/{id}?watermark=W`): a fresh stream URL.
pub async fn reconnect(
    http: &Http,
    endpoint: &Endpoint,
    conversation: &Conversation,
    watermark: Option<&str>,
) -> Result<String, String> {
    let query = watermark
        .map(|w| format!("?watermark={w}"))
        .unwrap_or_default();
    let answer = json(
        http,
        http::Method::GET,
        &format!(
            "{}/conversations/{}{query}",
            endpoint.domain, conversation.id
        ),
        Some(&conversation.token),
        b"",
    )
    .await?;
    answer["streamUrl"]
        .as_str()
        .map(str::to_owned)
        .ok_or_else(|| format!("reconnect answered no streamUrl: {answer}"))
}

pub async fn dial(url: &str) -> Result<Socket, String> {
    let (socket, _) = tokio::time::timeout(
        Duration::from_secs(30),
        tokio_tungstenite::connect_async(url),
    )
    .await
    .map_err(|_| format!("{url}: upgrade timed out"))?
    .map_err(|e| format!("{url}: {e}"))?;
    Ok(socket)
}

/// Runs `open` for `0..count`, at most `parallel` at once, in order of completion.
pub async fn in_parallel<T, F, Fut>(count: usize, parallel: usize, open: F) -> Vec<T>
where
    T: Send + 'static,
    F: Fn(usize) -> Fut,
    Fut: std::future::Future<Output = T> + Send + 'static,
{
    let semaphore = Arc::new(tokio::sync::Semaphore::new(parallel));
    let mut tasks = Vec::with_capacity(count);
    for index in 0..count {
        let permit = semaphore
            .clone()
            .acquire_owned()
            .await
            .expect("open semaphore");
        let future = open(index);
        tasks.push(tokio::spawn(async move {
            let out = future.await;
            drop(permit);
            out
        }));
    }
    let mut out = Vec::with_capacity(count);
    for task in tasks {
        out.push(task.await.expect("opener task"));
    }
    out
}
