//! Test harness: a real emulator and a real gateway on 127.0.0.1:0, an HTTP client and a
//! WebSocket client, and bounded waits. Reads like the scenario: `Harness::builder().faults(…).start()`.
#![allow(dead_code)]

pub mod balancer;
pub mod hostile;
pub mod otlp;
pub mod process;
pub mod webhook;

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use directline_emulator::{self as emulator, EmulatorConfig, EmulatorHandle, Faults};
use directline_gateway::config::{BotConfig, Config, UpstreamTarget};
use directline_gateway::secret::Secret;
use directline_gateway::server::{self, Running};
use futures_util::{SinkExt, StreamExt};
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

pub const SECRET: &str = "test-directline-secret-value-0123456789";
pub const TOKEN_KEY: &str = "test-token-key-0123456789abcdef0123456789";
/// Upper bound for any single wait in these tests; generous for a loaded 2-core CI box.
pub const WAIT: Duration = Duration::from_secs(20);

pub struct Harness {
    pub gateway: Option<Running>,
    pub emulator: EmulatorHandle,
    pub base: String,
    pub admin: String,
    pub http: Client<HttpConnector, Full<Bytes>>,
}

pub struct Builder {
    faults: Faults,
    config: Config,
    emulator_keepalive: Duration,
    emulator_token_ttl: Duration,
}

impl Harness {
    pub fn builder() -> Builder {
        let mut config = Config {
            token_key: Some(Secret::new(TOKEN_KEY)),
            ..Config::single(BotConfig {
                secret: Some(Secret::new(SECRET)),
                ..BotConfig::default()
            })
        };
        // Short stream timings so drop/idle paths run in test time; values stay ordered as in production.
        config.stream.keepalive_interval = Duration::from_millis(500);
        config.stream.liveness_timeout = Duration::from_secs(2);
        config.stream.linger = Duration::from_millis(500);
        config.stream.backoff_base = Duration::from_millis(20);
        config.stream.backoff_max = Duration::from_millis(200);
        config.stream.resume_budget = Duration::from_secs(15);
        config.shutdown_grace = Duration::from_secs(2);
        config.stream.drain_period = Duration::from_secs(1);
        config.stream.drain_spread = Duration::from_millis(200);
        // Throughput scenarios post faster than the default per-conversation rate allows;
        // tests/limits.rs covers the limits themselves.
        config.bot_mut().rate_limits.activities.per_minute = 0;
        Builder {
            faults: Faults::default(),
            config,
            emulator_keepalive: Duration::from_millis(300),
            emulator_token_ttl: EmulatorConfig::default().token_ttl,
        }
    }

    pub async fn start() -> Harness {
        Self::builder().start().await
    }

    /// A harness whose gateway is a real process (started by the test) in front of `emulator`.
    pub fn attach(emulator: EmulatorHandle, gateway: &process::GatewayProcess) -> Harness {
        Harness {
            gateway: None,
            emulator,
            base: gateway.base.clone(),
            admin: gateway.admin.clone(),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// A harness around a gateway the test started in-process in front of `emulator`.
    pub fn attach_in_process(emulator: EmulatorHandle, gateway: &Running) -> Harness {
        Harness {
            gateway: None,
            emulator,
            base: format!("http://{}", gateway.client_addr),
            admin: format!("http://{}", gateway.admin_addr),
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The emulator alone on 127.0.0.1:0, for a gateway process to be put in front of it.
    pub async fn emulator(config: EmulatorConfig) -> EmulatorHandle {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        emulator::spawn(listener, config)
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn gateway(&self) -> &Running {
        self.gateway.as_ref().expect("gateway running")
    }

    pub async fn request(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let builder = Request::builder().method(method).uri(self.url(path));
        self.send(api_request(builder, token, body)).await
    }

    pub async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(WAIT, self.http.request(request))
            .await
            .expect("gateway answered in time")
            .expect("gateway reachable");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    /// A GET on the admin listener, with the same bounded wait as [`Harness::send`].
    pub async fn admin_get(&self, path: &str) -> Reply {
        let request = Request::get(format!("{}{}", self.admin, path))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let response = tokio::time::timeout(WAIT, self.http.request(request))
            .await
            .expect("admin answered in time")
            .expect("admin reachable");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = tokio::time::timeout(WAIT, response.into_body().collect())
            .await
            .expect("admin body in time")
            .unwrap()
            .to_bytes();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    /// A conversation with its stream open after one message went both ways ("before" and
    /// its echo): the bridge is live, so a fault injected next hits a working stream.
    pub async fn exchanged(&self) -> (Conversation, Ws, Seen) {
        let conversation = self.conversation().await;
        let mut ws = open_stream(&conversation.stream_url).await;
        let mut seen = Seen::default();
        self.post_message(&conversation, "before").await;
        read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;
        (conversation, ws, seen)
    }

    /// `POST tokens/refresh` with `token`.
    pub async fn refresh(&self, token: &str) -> Reply {
        self.request(
            Method::POST,
            "/v3/directline/tokens/refresh",
            Some(token),
            None,
        )
        .await
    }

    /// `GET …/activities` of `conversation` (from `watermark`) with `token`.
    pub async fn activities(
        &self,
        conversation: &str,
        watermark: Option<&str>,
        token: &str,
    ) -> Reply {
        let query = watermark.map_or(String::new(), |w| format!("?watermark={w}"));
        let path = format!("/v3/directline/conversations/{conversation}/activities{query}");
        self.request(Method::GET, &path, Some(token), None).await
    }

    /// tokens/generate → the gateway token and conversation id.
    pub async fn generate(&self) -> (String, String) {
        let reply = self
            .request(Method::POST, "/v3/directline/tokens/generate", None, None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        let json = reply.json();
        (
            json["token"].as_str().unwrap().to_owned(),
            json["conversationId"].as_str().unwrap().to_owned(),
        )
    }

    /// generate + start: a started conversation with its token and gateway stream URL.
    pub async fn conversation(&self) -> Conversation {
        let (token, id) = self.generate().await;
        let reply = self
            .request(
                Method::POST,
                "/v3/directline/conversations",
                Some(&token),
                Some(json!({"user": {}})),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
        let json = reply.json();
        assert_eq!(json["conversationId"], id.as_str());
        Conversation {
            id,
            token: json["token"].as_str().unwrap().to_owned(),
            stream_url: json["streamUrl"].as_str().unwrap().to_owned(),
        }
    }

    pub async fn post_message(&self, conversation: &Conversation, text: &str) -> String {
        let path = format!(
            "/v3/directline/conversations/{}/activities",
            conversation.id
        );
        let body = json!({"type": "message", "from": {"id": "user"}, "text": text});
        let reply = self
            .request(Method::POST, &path, Some(&conversation.token), Some(body))
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()["id"].as_str().unwrap().to_owned()
    }

    /// Client-side resume: `GET /conversations/{id}?watermark=W` → a fresh gateway stream URL.
    pub async fn reconnect(&self, conversation: &Conversation, watermark: Option<&str>) -> Value {
        let query = watermark
            .map(|w| format!("?watermark={w}"))
            .unwrap_or_default();
        let path = format!("/v3/directline/conversations/{}{query}", conversation.id);
        let reply = self
            .request(Method::GET, &path, Some(&conversation.token), None)
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        reply.json()
    }

    pub async fn metrics(&self) -> String {
        self.admin_get("/metrics").await.text()
    }

    /// Starts the drain in the background (SIGTERM's path) and leaves the emulator running;
    /// the admin listener keeps answering until the drain is over.
    pub fn begin_drain(&mut self) -> tokio::task::JoinHandle<()> {
        let running = self.gateway.take().expect("gateway running");
        tokio::spawn(running.shutdown())
    }

    /// Stops the gateway (drain) and leaves the emulator running.
    pub async fn stop_gateway(&mut self) {
        if let Some(running) = self.gateway.take() {
            running.shutdown().await;
        }
    }
}

impl Builder {
    pub fn faults(mut self, faults: Faults) -> Self {
        self.faults = faults;
        self
    }

    /// How long the emulator's Direct Line tokens live (`expires_in`).
    pub fn token_ttl(mut self, ttl: Duration) -> Self {
        self.emulator_token_ttl = ttl;
        self
    }

    pub fn config(mut self, edit: impl FnOnce(&mut Config)) -> Self {
        edit(&mut self.config);
        self
    }

    pub async fn start(self) -> Harness {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator = emulator::spawn(
            listener,
            EmulatorConfig {
                secret: emulator::Secret::new(SECRET),
                faults: self.faults,
                keepalive_interval: self.emulator_keepalive,
                token_ttl: self.emulator_token_ttl,
                ..EmulatorConfig::default()
            },
        );
        let mut config = self.config;
        config.bot_mut().upstream =
            UpstreamTarget::Url(url::Url::parse(&emulator.base_url()).unwrap());
        let running = start_gateway(config).await;
        let base = format!("http://{}", running.client_addr);
        let admin = format!("http://{}", running.admin_addr);
        Harness {
            gateway: Some(running),
            emulator,
            base,
            admin,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }
}

/// The gateway in-process on 127.0.0.1:0 ports, without the credential check at start and
/// reload: these tests count the calls Direct Line receives exactly (tests/operations.rs
/// checks the credential check on the real binary).
pub async fn start_gateway(mut config: Config) -> Running {
    config.check_credentials = false;
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    server::start_on(config, client, admin)
        .await
        .expect("gateway starts")
}

#[derive(Debug, Clone)]
pub struct Conversation {
    pub id: String,
    pub token: String,
    pub stream_url: String,
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: http::HeaderMap,
    pub bytes: Bytes,
}

impl Reply {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.bytes).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.bytes).unwrap_or_else(|_| panic!("not JSON: {}", self.text()))
    }

    /// `error.code` of a Direct Line error body.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error code: {}", self.text()))
            .to_owned()
    }
}

/// `builder` with the bearer `token` and the JSON `body`, when given.
pub fn api_request(
    mut builder: http::request::Builder,
    token: Option<&str>,
    body: Option<Value>,
) -> Request<Full<Bytes>> {
    if let Some(token) = token {
        builder = builder.header("authorization", format!("Bearer {token}"));
    }
    let bytes = match body {
        Some(body) => {
            builder = builder.header("content-type", "application/json");
            Bytes::from(body.to_string())
        }
        None => Bytes::new(),
    };
    builder.body(Full::new(bytes)).unwrap()
}

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

pub async fn open_stream(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("stream opened in time")
        .expect("stream upgrade accepted");
    ws
}

/// What a client socket saw.
#[derive(Debug, Default)]
pub struct Seen {
    /// Activities in arrival order.
    pub activities: Vec<Value>,
    /// The last watermark a frame carried.
    pub watermark: Option<String>,
    pub frames_without_watermark: usize,
    pub closed: Option<Option<u16>>,
}

impl Seen {
    pub fn ids(&self) -> Vec<String> {
        self.activities
            .iter()
            .filter_map(|a| a["id"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn texts(&self) -> Vec<String> {
        self.activities
            .iter()
            .filter(|a| a["type"] == "message")
            .filter_map(|a| a["text"].as_str().map(str::to_owned))
            .collect()
    }

    pub fn assert_no_duplicate_ids(&self) {
        let ids = self.ids();
        let unique: HashSet<&String> = ids.iter().collect();
        assert_eq!(unique.len(), ids.len(), "duplicate activity ids: {ids:?}");
    }
}

/// Reads frames until `done(&seen)` or the socket closes, failing after [`WAIT`].
pub async fn read_until(ws: &mut Ws, seen: &mut Seen, mut done: impl FnMut(&Seen) -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !done(seen) {
        let next = tokio::time::timeout_at(deadline, ws.next()).await;
        let message = match next {
            Err(_) => panic!(
                "timed out; saw {} activities: {:?}",
                seen.activities.len(),
                seen.texts()
            ),
            Ok(message) => message,
        };
        match message {
            Some(Ok(Message::Text(text))) => absorb(seen, text.as_str()),
            Some(Ok(Message::Close(frame))) => {
                seen.closed = Some(frame.map(|f| u16::from(f.code)));
                return;
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => {
                seen.closed = Some(None);
                return;
            }
        }
    }
}

pub fn absorb(seen: &mut Seen, text: &str) {
    if text.is_empty() {
        return;
    }
    let set: Value = serde_json::from_str(text).expect("frames are JSON");
    match set.get("watermark").and_then(Value::as_str) {
        Some(w) => seen.watermark = Some(w.to_owned()),
        None => seen.frames_without_watermark += 1,
    }
    if let Some(activities) = set["activities"].as_array() {
        seen.activities.extend(activities.iter().cloned());
    }
}

/// The value of one series in a Prometheus exposition, written as it would be exposed
/// (`name{a="1",b="2"}` or `name`); labels match in any order, and every label of the
/// series must be given. 0 when absent.
pub fn metric(text: &str, series: &str) -> f64 {
    let wanted = parse_series(series);
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (name_labels, value) = line.rsplit_once(' ')?;
            (parse_series(name_labels) == wanted).then(|| value.parse().unwrap())
        })
        .unwrap_or(0.0)
}

/// A series' name and its labels, sorted. Label values in these tests hold no `,` or `"`.
fn parse_series(series: &str) -> (String, Vec<(String, String)>) {
    let Some((name, labels)) = series.split_once('{') else {
        return (series.to_owned(), Vec::new());
    };
    let mut labels: Vec<(String, String)> = labels
        .trim_end_matches('}')
        .split(',')
        .filter(|pair| !pair.is_empty())
        .filter_map(|pair| {
            let (key, value) = pair.split_once('=')?;
            Some((key.to_owned(), value.trim_matches('"').to_owned()))
        })
        .collect();
    labels.sort();
    (name.to_owned(), labels)
}

/// A gateway token sealed with `key`, as a forger holding that key (or the gateway itself)
/// would make it: for tests of expired, foreign-bot and foreign-key tokens.
pub fn sealed_token(key: &str, token: &directline_gateway::seal::ClientToken) -> String {
    directline_gateway::seal::Sealer::new(key, &[])
        .expect("key long enough")
        .seal(directline_gateway::seal::Purpose::ClientToken, token)
}

#[test]
fn metric_matches_labels_in_any_order() {
    let text = "# HELP x y\nx_total{b=\"2\",a=\"1\"} 7\nx_total{a=\"1\"} 3\nplain 4\n";
    assert_eq!(metric(text, r#"x_total{a="1",b="2"}"#), 7.0);
    assert_eq!(metric(text, r#"x_total{b="2",a="1"}"#), 7.0);
    assert_eq!(metric(text, r#"x_total{a="1"}"#), 3.0);
    assert_eq!(metric(text, "plain"), 4.0);
    assert_eq!(metric(text, r#"x_total{a="9"}"#), 0.0);
}

/// Sends an empty keepalive like DLJS does, to prove the gateway absorbs it.
pub async fn client_keepalive(ws: &mut Ws) {
    ws.send(Message::Text("".into())).await.unwrap();
}

/// Polls `check` until it holds, failing after [`WAIT`]. For state that has no event to wait on.
pub async fn eventually(what: &str, mut check: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never became true: {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A gateway config for `upstream` with the test secret and token key and default limits,
/// for tests that put something other than the plain emulator upstream.
pub fn config_with_upstream(upstream: &str) -> Config {
    Config {
        token_key: Some(Secret::new(TOKEN_KEY)),
        ..Config::single(BotConfig {
            upstream: UpstreamTarget::Url(url::Url::parse(upstream).unwrap()),
            secret: Some(Secret::new(SECRET)),
            ..BotConfig::default()
        })
    }
}
