//! The emulator over real sockets: REST with a hyper client, streams with tokio-tungstenite.

use std::time::Duration;

use ::http::{HeaderMap, Method, Request, header};
use bytes::Bytes;
use futures_util::{SinkExt as _, StreamExt as _};
use http_body_util::{BodyExt as _, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::{sleep, timeout};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

use directline_emulator::*;

/// Upper bound of every wait in these tests.
const WAIT: Duration = Duration::from_secs(5);
/// How long "nothing arrives" is watched for.
const QUIET: Duration = Duration::from_millis(400);
const SECRET: &str = "emulator-secret";

async fn emulator(config: EmulatorConfig) -> (EmulatorHandle, Client) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let handle = spawn(listener, config);
    let client = Client {
        base: handle.base_url(),
        http: HyperClient::builder(TokioExecutor::new()).build_http(),
    };
    (handle, client)
}

async fn default_emulator() -> (EmulatorHandle, Client) {
    emulator(EmulatorConfig::default()).await
}

fn with_faults(faults: Faults) -> EmulatorConfig {
    EmulatorConfig {
        faults,
        ..EmulatorConfig::default()
    }
}

/// Polls `condition` until it holds, for at most [`WAIT`].
async fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let reached = timeout(WAIT, async {
        while !condition() {
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    assert!(reached.is_ok(), "not reached in time: {what}");
}

struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

#[derive(Debug)]
struct Reply {
    status: u16,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    fn error(&self) -> (&str, &str) {
        (
            self.body["error"]["code"].as_str().unwrap_or("<none>"),
            self.body["error"]["message"].as_str().unwrap_or("<none>"),
        )
    }
}

struct Started {
    conversation_id: String,
    token: String,
    stream_url: String,
}

impl Client {
    async fn send(
        &self,
        method: Method,
        path: &str,
        auth: Option<&str>,
        headers: &[(&str, &str)],
        body: Bytes,
    ) -> Reply {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(auth) = auth {
            request = request.header(header::AUTHORIZATION, format!("Bearer {auth}"));
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Full::new(body)).expect("request");
        let response = timeout(WAIT, self.http.request(request))
            .await
            .expect("answer in time")
            .expect("HTTP exchange");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = response
            .into_body()
            .collect()
            .await
            .expect("body")
            .to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::from(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    async fn get(&self, path: &str, auth: Option<&str>) -> Reply {
        self.send(Method::GET, path, auth, &[], Bytes::new()).await
    }

    async fn post(&self, path: &str, auth: Option<&str>, body: &Value) -> Reply {
        let json = [("content-type", "application/json")];
        let bytes = Bytes::from(body.to_string());
        self.send(Method::POST, path, auth, &json, bytes).await
    }

    async fn start(&self, auth: &str) -> Started {
        let reply = self
            .post("/v3/directline/conversations", Some(auth), &json!({}))
            .await;
        assert!(
            reply.status == 201 || reply.status == 200,
            "start: {reply:?}"
        );
        started(&reply.body)
    }

    async fn reconnect(&self, conversation: &str, watermark: &str, auth: &str) -> Reply {
        self.get(
            &format!("/v3/directline/conversations/{conversation}?watermark={watermark}"),
            Some(auth),
        )
        .await
    }

    async fn say(&self, started: &Started, text: &str) -> String {
        let reply = self
            .post(
                &format!(
                    "/v3/directline/conversations/{}/activities",
                    started.conversation_id
                ),
                Some(&started.token),
                &json!({ "type": "message", "from": { "id": "user1" }, "text": text }),
            )
            .await;
        assert_eq!(reply.status, 200, "post: {reply:?}");
        reply.body["id"].as_str().expect("id").to_owned()
    }
}

fn started(body: &Value) -> Started {
    let text = |name: &str| body[name].as_str().expect(name).to_owned();
    Started {
        conversation_id: text("conversationId"),
        token: text("token"),
        stream_url: text("streamUrl"),
    }
}

/// What a client socket sees next.
#[derive(Debug)]
enum Event {
    Frame(Value),
    Keepalive,
    Closed(Option<CloseFrame>),
    /// The connection ended without a close frame.
    Ended,
}

struct Ws(WebSocketStream<MaybeTlsStream<TcpStream>>);

impl Ws {
    async fn open(url: &str) -> Self {
        let (socket, response) = timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("connect in time")
            .expect("upgrade");
        assert_eq!(response.status(), 101);
        Self(socket)
    }

    /// The HTTP status an upgrade attempt was refused with; its error code must be
    /// `BadArgument`.
    async fn refused(url: &str) -> u16 {
        match timeout(WAIT, tokio_tungstenite::connect_async(url))
            .await
            .expect("answer in time")
        {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                let body: Value = response
                    .body()
                    .as_deref()
                    .and_then(|body| serde_json::from_slice(body).ok())
                    .unwrap_or_default();
                assert_eq!(body["error"]["code"], "BadArgument", "{body}");
                response.status().as_u16()
            }
            Err(other) => panic!("unexpected error: {other}"),
            Ok(_) => panic!("upgrade unexpectedly accepted"),
        }
    }

    async fn try_event(&mut self, within: Duration) -> Option<Event> {
        loop {
            let next = timeout(within, self.0.next()).await.ok()?;
            return Some(match next {
                Some(Ok(Message::Text(text))) if text.is_empty() => Event::Keepalive,
                Some(Ok(Message::Text(text))) => {
                    Event::Frame(serde_json::from_str(text.as_str()).expect("JSON frame"))
                }
                Some(Ok(Message::Close(frame))) => Event::Closed(frame),
                Some(Ok(_)) => continue,
                Some(Err(_)) | None => Event::Ended,
            });
        }
    }

    async fn event(&mut self) -> Event {
        self.try_event(WAIT).await.expect("an event in time")
    }

    /// The next ActivitySet, skipping keepalives.
    async fn frame(&mut self) -> Value {
        loop {
            match self.event().await {
                Event::Frame(frame) => return frame,
                Event::Keepalive => {}
                other => panic!("expected a frame, got {other:?}"),
            }
        }
    }

    /// The next `n` ActivitySets, flattened to (watermark, activity) pairs.
    async fn activities(&mut self, n: usize) -> Vec<(Option<String>, Value)> {
        let mut out = Vec::new();
        while out.len() < n {
            let frame = self.frame().await;
            let watermark = frame
                .get("watermark")
                .and_then(Value::as_str)
                .map(str::to_owned);
            for activity in frame["activities"].as_array().expect("activities") {
                out.push((watermark.clone(), activity.clone()));
            }
        }
        out
    }

    /// After the close or abort: what ended the socket.
    async fn ending(&mut self) -> Event {
        loop {
            match self.event().await {
                Event::Frame(_) | Event::Keepalive => {}
                ending => return ending,
            }
        }
    }
}

fn close_of(event: &Event) -> (CloseCode, String) {
    match event {
        Event::Closed(Some(frame)) => (frame.code, frame.reason.as_str().to_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

fn activities_path(conversation: &str) -> String {
    format!("/v3/directline/conversations/{conversation}/activities")
}

#[tokio::test]
async fn generate_start_and_echo_over_the_stream() {
    let (emulator, client) = default_emulator().await;
    let generated = client
        .post(
            "/v3/directline/tokens/generate",
            Some(SECRET),
            &json!({ "User": { "Id": "dl_alice", "Name": "Alice" }, "trustedOrigins": [] }),
        )
        .await;
    assert_eq!(generated.status, 200, "{generated:?}");
    let conversation = generated.body["conversationId"]
        .as_str()
        .expect("id")
        .to_owned();
    let token = generated.body["token"].as_str().expect("token").to_owned();
    assert_eq!(generated.body["expires_in"], 3600);
    assert!(conversation.ends_with("-us") && conversation.len() == 25);
    assert!(
        conversation
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    );
    assert!(!token.contains(SECRET) && token.len() >= 32 && !token.contains('.'));
    assert!(generated.body.get("streamUrl").is_none());

    let first = client
        .post("/v3/directline/conversations", Some(&token), &json!({}))
        .await;
    assert_eq!(first.status, 201, "{first:?}");
    assert_eq!(first.body["conversationId"], conversation.as_str());
    assert_eq!(first.body["expires_in"], 3600);
    let grammar = first.body["referenceGrammarId"]
        .as_str()
        .expect("grammar id");
    assert_eq!(grammar.len(), 36);
    let stream_url = first.body["streamUrl"].as_str().expect("streamUrl");
    let prefix = format!(
        "ws://{}/v3/directline/conversations/{conversation}/stream?watermark=-&t=",
        emulator.local_addr()
    );
    assert!(stream_url.starts_with(&prefix), "{stream_url}");
    let again = client
        .post("/v3/directline/conversations", Some(&token), &json!({}))
        .await;
    assert_eq!(again.status, 200, "{again:?}");
    assert_eq!(again.body["conversationId"], conversation.as_str());

    let started = started(&first.body);
    let mut ws = Ws::open(&started.stream_url).await;
    let id = client.say(&started, "hello").await;
    assert_eq!(id, format!("{conversation}|0000000"));
    let received = ws.activities(2).await;
    assert_eq!(received[0].0.as_deref(), Some("0"));
    let user = &received[0].1;
    assert_eq!(user["id"], id.as_str());
    assert_eq!(
        user["from"]["id"], "dl_alice",
        "the token's user overrides from.id"
    );
    assert_eq!(user["recipient"]["id"], BOT_ID);
    assert_eq!(user["channelId"], "directline");
    assert_eq!(user["conversation"]["id"], conversation.as_str());
    assert!(user["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));
    assert_eq!(received[1].0.as_deref(), Some("1"));
    let echo = &received[1].1;
    assert_eq!(echo["id"], format!("{conversation}|0000001"));
    assert_eq!(echo["text"], "echo: hello");
    assert_eq!(echo["replyToId"], id.as_str());
    assert_eq!(
        echo["from"],
        json!({ "id": "echo-bot", "name": "Echo Bot", "role": "bot" })
    );

    let listed = client
        .get(&activities_path(&conversation), Some(&token))
        .await;
    assert_eq!(listed.status, 200);
    assert_eq!(listed.body["watermark"], "1");
    assert_eq!(listed.body["activities"].as_array().map(Vec::len), Some(2));
    let later = client
        .get(
            &format!("{}?watermark=0", activities_path(&conversation)),
            Some(&token),
        )
        .await;
    assert_eq!(later.body["activities"][0]["text"], "echo: hello");
    let none = client
        .get(
            &format!("{}?watermark=1", activities_path(&conversation)),
            Some(&token),
        )
        .await;
    assert_eq!(none.body, json!({ "activities": [], "watermark": "1" }));
    assert_eq!(emulator.activities(&conversation).len(), 2);
    assert_eq!(emulator.stream_connects(), 1);
    assert_eq!(emulator.live_streams(&conversation), 1);
}

#[tokio::test]
async fn activities_between_start_and_socket_are_replayed() {
    let (_emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    client.say(&started, "one").await;
    client.say(&started, "two").await;
    let mut ws = Ws::open(&started.stream_url).await;
    let received = ws.activities(4).await;
    let texts: Vec<&str> = received
        .iter()
        .map(|(_, a)| a["text"].as_str().unwrap_or(""))
        .collect();
    assert_eq!(texts, ["one", "echo: one", "two", "echo: two"]);
    let watermarks: Vec<_> = received.iter().map(|(w, _)| w.as_deref()).collect();
    assert_eq!(watermarks, [Some("0"), Some("1"), Some("2"), Some("3")]);
}

#[tokio::test]
async fn activities_before_start_url_are_not_replayed_on_dash() {
    let (_emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    client.say(&started, "old").await;
    // A reconnect without a watermark replays only what comes after it (PROTOCOL §3).
    let reply = client
        .reconnect(&started.conversation_id, "", &started.token)
        .await;
    assert_eq!(reply.status, 200);
    let url = reply.body["streamUrl"].as_str().expect("streamUrl");
    assert!(url.contains("watermark=-&"), "{url}");
    let mut ws = Ws::open(url).await;
    client.say(&started, "new").await;
    let received = ws.activities(2).await;
    assert_eq!(received[0].1["text"], "new");
    assert_eq!(received[0].0.as_deref(), Some("2"));
}

#[tokio::test]
async fn reconnect_with_watermark_replays_only_later_activities() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    client.say(&started, "a").await;
    assert_eq!(ws.activities(2).await[1].0.as_deref(), Some("1"));
    ws.0.close(None).await.expect("close");
    eventually("slot freed", || {
        emulator.live_streams(&started.conversation_id) == 0
    })
    .await;
    client.say(&started, "b").await;

    let reply = client
        .reconnect(&started.conversation_id, "1", &started.token)
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    assert_eq!(
        reply.body["conversationId"],
        started.conversation_id.as_str()
    );
    assert_eq!(reply.body["expires_in"], 3600);
    let url = reply.body["streamUrl"].as_str().expect("streamUrl");
    assert!(url.contains("/stream?watermark=1&t="), "{url}");
    let mut ws = Ws::open(url).await;
    let received = ws.activities(2).await;
    assert_eq!(received[0].1["text"], "b");
    assert_eq!(
        received[0].1["id"],
        format!("{}|0000002", started.conversation_id)
    );
    assert_eq!(received[1].1["text"], "echo: b");
    assert!(ws.try_event(QUIET).await.is_none(), "nothing else replayed");

    // Reconnect with the secret: the new token carries no user.
    let generated = client
        .post(
            "/v3/directline/tokens/generate",
            Some(SECRET),
            &json!({ "user": { "id": "dl_bob" } }),
        )
        .await;
    let token = generated.body["token"].as_str().expect("token");
    let conversation = generated.body["conversationId"].as_str().expect("id");
    client
        .post("/v3/directline/conversations", Some(token), &json!({}))
        .await;
    let by_secret = client.reconnect(conversation, "", SECRET).await;
    let by_token = client.reconnect(conversation, "", token).await;
    for (reply, expected_from) in [(by_secret, "someone"), (by_token, "dl_bob")] {
        let token = reply.body["token"].as_str().expect("token");
        let posted = client
            .post(
                &activities_path(conversation),
                Some(token),
                &json!({ "type": "event", "name": "x", "from": { "id": "someone" } }),
            )
            .await;
        let id = posted.body["id"].as_str().expect("id");
        let stored = emulator
            .activities(conversation)
            .into_iter()
            .find(|a| a["id"] == id)
            .expect("stored");
        assert_eq!(stored["from"]["id"], expected_from);
    }
}

#[tokio::test]
async fn a_second_socket_takes_the_stream_and_the_older_closes_with_collision() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let mut first = Ws::open(&started.stream_url).await;
    eventually("first socket holds the slot", || {
        emulator.live_streams(&started.conversation_id) == 1
    })
    .await;
    let mut second = Ws::open(&started.stream_url).await;
    let (code, reason) = close_of(&first.ending().await);
    assert_eq!(code, CloseCode::Normal);
    assert_eq!(reason, COLLISION_REASON);
    assert_eq!(emulator.live_streams(&started.conversation_id), 1);
    assert_eq!(emulator.stream_connects(), 2);
    assert_eq!(emulator.stream_opens(&started.conversation_id), 2);

    client.say(&started, "still here").await;
    assert_eq!(second.activities(1).await[0].1["text"], "still here");
    second.0.close(None).await.expect("close");
    eventually("slot freed", || {
        emulator.live_streams(&started.conversation_id) == 0
    })
    .await;
    let reply = client
        .reconnect(&started.conversation_id, "1", &started.token)
        .await;
    let mut third = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    client.say(&started, "again").await;
    assert_eq!(third.activities(1).await[0].1["text"], "again");
}

#[tokio::test]
async fn stream_upgrades_need_a_live_stream_token_for_that_conversation() {
    let (emulator, client) = emulator(EmulatorConfig {
        stream_url_ttl: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await;
    let a = client.start(SECRET).await;
    let b = client.start(SECRET).await;
    let base = emulator.base_url().replacen("http", "ws", 1);
    let stream = |conversation: &str, query: &str| {
        format!("{base}/v3/directline/conversations/{conversation}/stream{query}")
    };
    let a_t = a.stream_url.split("&t=").nth(1).expect("t").to_owned();
    assert_eq!(Ws::refused(&stream(&a.conversation_id, "")).await, 403);
    assert_eq!(
        Ws::refused(&stream(&a.conversation_id, "?watermark=-&t=bogus")).await,
        403
    );
    assert_eq!(
        Ws::refused(&stream(
            &b.conversation_id,
            &format!("?watermark=-&t={a_t}")
        ))
        .await,
        403,
        "a stream token opens only its own conversation"
    );
    assert_eq!(
        Ws::refused(&stream(&a.conversation_id, &format!("?t={}", a.token))).await,
        403,
        "a conversation token is no stream token"
    );
    sleep(Duration::from_millis(400)).await;
    assert_eq!(Ws::refused(&a.stream_url).await, 403, "expired stream URL");
    assert_eq!(emulator.stream_connects(), 0);

    let upgrades: Vec<_> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/stream"))
        .collect();
    assert_eq!(upgrades.len(), 5);
    assert!(upgrades.iter().all(|r| r.status == 403));
    assert_eq!(upgrades[0].credential, SeenCredential::Missing);
    assert_eq!(upgrades[1].credential, SeenCredential::Invalid);
    assert_eq!(upgrades[2].credential, SeenCredential::StreamToken);
    assert_eq!(
        upgrades[3].credential,
        SeenCredential::ConversationToken {
            conversation_id: a.conversation_id.clone()
        }
    );
}

#[tokio::test]
async fn rest_credentials_are_checked() {
    let (emulator, client) = emulator(EmulatorConfig {
        token_ttl: Duration::from_millis(300),
        ..EmulatorConfig::default()
    })
    .await;
    let a = client.start(SECRET).await;
    let b = client.start(SECRET).await;
    assert!(!a.stream_url.contains(SECRET));

    let missing = client.get(&activities_path(&a.conversation_id), None).await;
    assert_eq!(missing.status, 401);
    assert_eq!(missing.error(), ("BadArgument", "Missing token or secret"));
    let invalid = client
        .get(&activities_path(&a.conversation_id), Some("nope"))
        .await;
    assert_eq!(invalid.status, 403);
    assert_eq!(invalid.error(), ("BadArgument", "Invalid token or secret"));
    let other = client
        .get(&activities_path(&b.conversation_id), Some(&a.token))
        .await;
    assert_eq!(other.status, 403);
    let unknown = client
        .get(&activities_path("NoSuchConversation-us"), Some(SECRET))
        .await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error(), ("BadArgument", "Unknown conversation"));
    let unknown_reconnect = client.reconnect("NoSuchConversation-us", "", SECRET).await;
    assert_eq!(unknown_reconnect.status, 404);
    let stream_t = a.stream_url.split("&t=").nth(1).expect("t");
    let stream_as_rest = client
        .get(&activities_path(&a.conversation_id), Some(stream_t))
        .await;
    assert_eq!(stream_as_rest.status, 403);
    let generate_with_token = client
        .post("/v3/directline/tokens/generate", Some(&a.token), &json!({}))
        .await;
    assert_eq!(generate_with_token.status, 403);
    let refresh_with_secret = client
        .post("/v3/directline/tokens/refresh", Some(SECRET), &json!({}))
        .await;
    assert_eq!(refresh_with_secret.status, 403);

    sleep(Duration::from_millis(400)).await;
    let expired = client
        .get(&activities_path(&a.conversation_id), Some(&a.token))
        .await;
    assert_eq!(expired.status, 403);
    assert_eq!(expired.error().0, "TokenExpired");
    let expired_refresh = client
        .post("/v3/directline/tokens/refresh", Some(&a.token), &json!({}))
        .await;
    assert_eq!(expired_refresh.status, 403);
    assert_eq!(expired_refresh.error().0, "TokenExpired");

    let seen: Vec<_> = emulator
        .requests()
        .into_iter()
        .map(|r| r.credential)
        .collect();
    assert_eq!(seen[0], SeenCredential::Secret);
    assert_eq!(seen[2], SeenCredential::Missing);
    assert_eq!(seen[3], SeenCredential::Invalid);
    assert_eq!(
        seen[4],
        SeenCredential::ConversationToken {
            conversation_id: a.conversation_id.clone()
        }
    );
    assert_eq!(seen[7], SeenCredential::StreamToken);
}

#[tokio::test]
async fn refresh_keeps_conversation_and_user() {
    let (emulator, client) = default_emulator().await;
    let generated = client
        .post(
            "/v3/directline/tokens/generate",
            Some(SECRET),
            &json!({ "user": { "id": "dl_carol" } }),
        )
        .await;
    let token = generated.body["token"].as_str().expect("token");
    let conversation = generated.body["conversationId"].as_str().expect("id");
    let refreshed = client
        .post("/v3/directline/tokens/refresh", Some(token), &json!(null))
        .await;
    assert_eq!(refreshed.status, 200, "{refreshed:?}");
    assert_eq!(refreshed.body["conversationId"], conversation);
    assert_eq!(refreshed.body["expires_in"], 3600);
    let new_token = refreshed.body["token"].as_str().expect("token");
    assert_ne!(new_token, token);
    // Generate only allocates: starting with the refreshed token starts it (201).
    let start = client
        .post("/v3/directline/conversations", Some(new_token), &json!({}))
        .await;
    assert_eq!(start.status, 201);
    let posted = client
        .post(
            &activities_path(conversation),
            Some(new_token),
            &json!({ "type": "message", "text": "hi" }),
        )
        .await;
    assert_eq!(posted.status, 200);
    assert_eq!(
        emulator.activities(conversation)[0]["from"]["id"],
        "dl_carol"
    );
}

#[tokio::test]
async fn posts_are_validated() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let path = activities_path(&started.conversation_id);
    let auth = Some(started.token.as_str());
    let json = [("content-type", "application/json")];

    let untyped = client.post(&path, auth, &json!({ "text": "x" })).await;
    assert_eq!(untyped.status, 400);
    assert_eq!(untyped.error().0, "BadArgument");
    let array = client.post(&path, auth, &json!([1, 2])).await;
    assert_eq!(array.status, 400);
    let malformed = client
        .send(
            Method::POST,
            &path,
            auth,
            &json,
            Bytes::from_static(b"{nope"),
        )
        .await;
    assert_eq!(malformed.status, 400);
    let plain = client
        .send(
            Method::POST,
            &path,
            auth,
            &[("content-type", "text/plain")],
            Bytes::from_static(br#"{"type":"message"}"#),
        )
        .await;
    assert_eq!(plain.status, 415);
    let big = json!({ "type": "message", "text": "x".repeat(300 * 1024) });
    let too_large = client.post(&path, auth, &big).await;
    assert_eq!(too_large.status, 413);
    assert_eq!(too_large.error().0, "MessageSizeTooBig");
    let bad_watermark = client
        .get(&format!("{path}?watermark=0000a-42"), auth)
        .await;
    assert_eq!(bad_watermark.status, 400);
    assert!(emulator.activities(&started.conversation_id).is_empty());

    let unknown = client.get("/v3/directline/nowhere", auth).await;
    assert_eq!(unknown.status, 404);
    assert_eq!(unknown.error().0, "NotFound");
    let wrong_method = client
        .send(Method::DELETE, &path, auth, &[], Bytes::new())
        .await;
    assert_eq!(wrong_method.status, 405);

    let ok = client
        .post(&path, auth, &json!({ "type": "message", "text": "fine" }))
        .await;
    assert_eq!(ok.status, 200);
    assert_eq!(
        ok.headers[header::CONTENT_TYPE],
        "application/json; charset=utf-8"
    );
    assert_eq!(ok.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    assert_eq!(
        ok.headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "Retry-After"
    );
    assert_eq!(unknown.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    // Like Direct Line, every answer (errors too) carries its own GUID-shaped request id.
    let ids: Vec<&str> = [&ok, &unknown]
        .iter()
        .map(|reply| reply.headers["x-ms-request-id"].to_str().unwrap())
        .collect();
    assert_ne!(ids[0], ids[1]);
    for id in ids {
        let groups: Vec<usize> = id.split('-').map(str::len).collect();
        assert_eq!(groups, [8, 4, 4, 4, 12], "{id}");
        assert!(
            id.bytes().all(|b| b == b'-' || b.is_ascii_hexdigit()),
            "{id}"
        );
    }
}

#[tokio::test]
async fn streamed_bodies_are_limited_while_read() {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let mut tcp = TcpStream::connect(emulator.local_addr())
        .await
        .expect("connect");
    let head = format!(
        "POST {} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
        activities_path(&started.conversation_id),
        started.token
    );
    tcp.write_all(head.as_bytes()).await.expect("head");
    let chunk = vec![b' '; 64 * 1024];
    let mut answer = Vec::new();
    let mut sent = 0;
    // Keep sending chunks (no Content-Length) until the emulator answers.
    while sent < 1024 * 1024 && !answer.ends_with(b"}") {
        tcp.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())
            .await
            .expect("chunk size");
        tcp.write_all(&chunk).await.expect("chunk");
        tcp.write_all(b"\r\n").await.expect("chunk end");
        sent += chunk.len();
        let mut buffer = [0u8; 1024];
        if let Ok(Ok(n)) = timeout(Duration::from_millis(20), tcp.read(&mut buffer)).await {
            answer.extend_from_slice(&buffer[..n]);
        }
    }
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 413"), "{text}");
    assert!(
        sent <= 512 * 1024,
        "refused while reading, after {sent} bytes"
    );
}

#[tokio::test]
async fn preflight_allows_the_directline_headers() {
    let (_emulator, client) = default_emulator().await;
    let reply = client
        .send(
            Method::OPTIONS,
            "/v3/directline/conversations",
            None,
            &[
                ("origin", "https://chat.example"),
                ("access-control-request-method", "POST"),
            ],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.headers[header::ACCESS_CONTROL_ALLOW_ORIGIN], "*");
    let allowed = reply.headers[header::ACCESS_CONTROL_ALLOW_HEADERS]
        .to_str()
        .expect("ascii");
    for name in ["authorization", "content-type", "x-ms-bot-agent"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert_eq!(
        reply.headers[header::ACCESS_CONTROL_EXPOSE_HEADERS],
        "Retry-After"
    );
}

#[tokio::test]
async fn uploads_become_attachments() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let body = "--BOUNDARY\r\n\
        Content-Disposition: form-data; name=\"activity\"\r\n\
        Content-Type: application/vnd.microsoft.activity\r\n\r\n\
        {\"type\":\"message\",\"text\":\"photos\",\"channelData\":{\"clientActivityID\":\"c1\"}}\r\n\
        --BOUNDARY\r\n\
        Content-Disposition: form-data; name=\"file\"; filename=\"cat.png\"\r\n\
        Content-Type: image/png\r\n\r\n\
        \u{1}PNG\r\n\
        --BOUNDARY\r\n\
        Content-Disposition: form-data; name=\"file\"; filename=\"notes.txt\"\r\n\
        Content-Type: text/plain\r\n\r\n\
        hello\r\n\
        --BOUNDARY--\r\n";
    let reply = client
        .send(
            Method::POST,
            &format!(
                "/v3/directline/conversations/{}/upload?userId=dl_dave",
                started.conversation_id
            ),
            Some(SECRET),
            &[("content-type", "multipart/form-data; boundary=BOUNDARY")],
            Bytes::from(body),
        )
        .await;
    assert_eq!(reply.status, 200, "{reply:?}");
    let history = emulator.activities(&started.conversation_id);
    assert_eq!(history.len(), 2);
    let upload = &history[0];
    assert_eq!(reply.body["id"], upload["id"]);
    assert_eq!(upload["from"]["id"], "dl_dave");
    assert_eq!(upload["text"], "photos");
    assert_eq!(upload["channelData"]["clientActivityID"], "c1");
    let attachments = upload["attachments"].as_array().expect("attachments");
    assert_eq!(attachments.len(), 2);
    assert_eq!(attachments[0]["name"], "cat.png");
    assert_eq!(attachments[0]["contentType"], "image/png");
    assert_eq!(attachments[1]["contentType"], "text/plain");
    let url = attachments[0]["contentUrl"].as_str().expect("url");
    assert!(url.starts_with(&emulator.base_url()), "{url}");
    assert_eq!(history[1]["text"], "echo: photos");
    let recorded = emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/upload"))
        .expect("recorded upload");
    assert_eq!(recorded.query.as_deref(), Some("userId=dl_dave"));
    let built = recorded.body.expect("the built activity");
    assert_eq!(built["attachments"][1]["name"], "notes.txt");

    let raw = client
        .send(
            Method::POST,
            &format!(
                "/v3/directline/conversations/{}/upload?userId=dl_dave",
                started.conversation_id
            ),
            Some(&started.token),
            &[
                ("content-type", "application/pdf"),
                ("content-disposition", "attachment; filename=\"doc.pdf\""),
            ],
            Bytes::from_static(b"%PDF"),
        )
        .await;
    assert_eq!(raw.status, 200);
    let history = emulator.activities(&started.conversation_id);
    assert_eq!(history[2]["attachments"][0]["name"], "doc.pdf");
    assert_eq!(history[3]["text"], "echo: 1 attachment(s)");

    let too_big = client
        .send(
            Method::POST,
            &format!(
                "/v3/directline/conversations/{}/upload",
                started.conversation_id
            ),
            Some(SECRET),
            &[("content-type", "application/octet-stream")],
            Bytes::from(vec![0u8; 16 * 1024 * 1024 + 1]),
        )
        .await;
    assert_eq!(too_big.status, 413);
}

#[tokio::test]
async fn session_id_sets_a_cookie() {
    let (_emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let reply = client
        .get("/v3/directline/session/getsessionid", Some(&started.token))
        .await;
    assert_eq!(reply.status, 200);
    let session = reply.body["sessionId"].as_str().expect("sessionId");
    let cookie = reply.headers[header::SET_COOKIE].to_str().expect("ascii");
    assert!(
        cookie.starts_with(&format!("dl_session={session};")),
        "{cookie}"
    );
    assert!(cookie.contains("Domain=.botframework.com"), "{cookie}");
}

#[tokio::test]
async fn stream_url_follows_the_host_header() {
    let (emulator, client) = default_emulator().await;
    let reply = client
        .send(
            Method::POST,
            "/v3/directline/conversations",
            Some(SECRET),
            &[("host", "gateway.example:8443")],
            Bytes::new(),
        )
        .await;
    assert_eq!(reply.status, 201);
    let url = reply.body["streamUrl"].as_str().expect("streamUrl");
    assert!(
        url.starts_with("ws://gateway.example:8443/v3/directline/conversations/"),
        "{url}"
    );
    let recorded = emulator.requests();
    assert_eq!(recorded[0].host.as_deref(), Some("gateway.example:8443"));
    assert_eq!(recorded[0].status, 201);
    assert_eq!(recorded[0].body, None);
}

#[tokio::test]
async fn drop_after_frames_alternates_abort_and_1011() {
    let (emulator, client) = emulator(with_faults(Faults {
        drop_after_frames: Some(2),
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    client.say(&started, "a").await;
    assert_eq!(ws.activities(2).await.len(), 2);
    assert!(
        matches!(ws.ending().await, Event::Ended),
        "first drop: no close frame"
    );
    eventually("slot freed", || {
        emulator.live_streams(&started.conversation_id) == 0
    })
    .await;

    let reply = client
        .reconnect(&started.conversation_id, "1", &started.token)
        .await;
    let mut ws = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    client.say(&started, "b").await;
    let received = ws.activities(2).await;
    assert_eq!(received[0].1["text"], "b");
    let (code, reason) = close_of(&ws.ending().await);
    assert_eq!(code, CloseCode::Error);
    assert_eq!(reason, DROP_REASON);

    emulator.faults().set_drop_after_frames(None);
    let reply = client
        .reconnect(&started.conversation_id, "3", &started.token)
        .await;
    let mut ws = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    client.say(&started, "c").await;
    client.say(&started, "d").await;
    assert_eq!(ws.activities(4).await[3].1["text"], "echo: d");
}

#[tokio::test]
async fn drops_count_only_new_frames_so_whole_replays_progress() {
    let (emulator, client) = emulator(with_faults(Faults {
        drop_after_frames: Some(2),
        replay_history: true,
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    client.say(&started, "a").await;
    client.say(&started, "b").await;
    let mut ws = Ws::open(&started.stream_url).await;
    assert_eq!(ws.activities(2).await[1].0.as_deref(), Some("1"));
    assert!(matches!(ws.ending().await, Event::Ended));
    eventually("slot freed", || {
        emulator.live_streams(&started.conversation_id) == 0
    })
    .await;

    // The whole history comes again; only the two new frames count toward the drop.
    let reply = client
        .reconnect(&started.conversation_id, "1", &started.token)
        .await;
    let mut ws = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    let received = ws.activities(4).await;
    let watermarks: Vec<_> = received.iter().map(|(w, _)| w.as_deref()).collect();
    assert_eq!(watermarks, [Some("0"), Some("1"), Some("2"), Some("3")]);
    let (code, reason) = close_of(&ws.ending().await);
    assert_eq!((code, reason.as_str()), (CloseCode::Error, DROP_REASON));
}

#[tokio::test]
async fn fail_reconnects_answers_502_k_times() {
    let (emulator, client) = emulator(with_faults(Faults {
        fail_reconnects: 2,
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    for _ in 0..2 {
        let reply = client
            .reconnect(&started.conversation_id, "", &started.token)
            .await;
        assert_eq!(reply.status, 502);
        assert_eq!(reply.error().0, "ServiceError");
    }
    let reply = client
        .reconnect(&started.conversation_id, "", &started.token)
        .await;
    assert_eq!(reply.status, 200);
    emulator.faults().set_fail_reconnects(1);
    let reply = client
        .reconnect(&started.conversation_id, "", &started.token)
        .await;
    assert_eq!(reply.status, 502);
    assert_eq!(emulator.faults().snapshot().fail_reconnects, 0);
}

#[tokio::test]
async fn batch_packs_three_activities_per_frame() {
    let (_emulator, client) = emulator(with_faults(Faults {
        batch: true,
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    client.say(&started, "a").await;
    client.say(&started, "b").await;
    let mut ws = Ws::open(&started.stream_url).await;
    let first = ws.frame().await;
    assert_eq!(first["activities"].as_array().map(Vec::len), Some(3));
    assert_eq!(first["watermark"], "2");
    assert_eq!(first["activities"][2]["text"], "b");
    let second = ws.frame().await;
    assert_eq!(second["activities"].as_array().map(Vec::len), Some(1));
    assert_eq!(second["watermark"], "3");
}

#[tokio::test]
async fn replay_history_ignores_the_reconnect_watermark() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    client.say(&started, "a").await;
    emulator.faults().set_replay_history(true);
    // A start stream is no reconnect: it still begins at the minting point.
    let fresh = client
        .post(
            "/v3/directline/conversations",
            Some(&started.token),
            &json!({}),
        )
        .await;
    assert_eq!(fresh.status, 200);
    let mut ws = Ws::open(fresh.body["streamUrl"].as_str().expect("url")).await;
    assert!(ws.try_event(QUIET).await.is_none());
    ws.0.close(None).await.expect("close");
    eventually("slot freed", || {
        emulator.live_streams(&started.conversation_id) == 0
    })
    .await;

    let reply = client
        .reconnect(&started.conversation_id, "1", &started.token)
        .await;
    assert!(
        reply.body["streamUrl"]
            .as_str()
            .is_some_and(|url| url.contains("watermark=1&"))
    );
    let mut ws = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    let replayed = ws.activities(2).await;
    assert_eq!(replayed[0].0.as_deref(), Some("0"));
    assert_eq!(replayed[0].1["text"], "a");
}

#[tokio::test]
async fn enhanced_auth_refuses_secret_reconnects() {
    let (_emulator, client) = emulator(with_faults(Faults {
        enhanced_auth: true,
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    let by_secret = client.reconnect(&started.conversation_id, "", SECRET).await;
    assert_eq!(by_secret.status, 400);
    assert_eq!(by_secret.error(), ("MissingProperty", "Missing user ID"));
    let by_token = client
        .reconnect(&started.conversation_id, "", &started.token)
        .await;
    assert_eq!(by_token.status, 200);
}

#[tokio::test]
async fn stall_goes_silent_and_frees_the_slot() {
    let (emulator, client) = emulator(EmulatorConfig {
        faults: Faults {
            stall_after_frames: Some(1),
            ..Faults::default()
        },
        keepalive_interval: Duration::from_millis(50),
        ..EmulatorConfig::default()
    })
    .await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    client.say(&started, "a").await;
    assert_eq!(ws.frame().await["watermark"], "0");
    ws.0.send(Message::Ping(Bytes::from_static(b"hi")))
        .await
        .expect("ping");
    // No echo frame, no keepalive, no pong, no close.
    assert!(ws.try_event(QUIET).await.is_none());
    assert_eq!(emulator.live_streams(&started.conversation_id), 0);

    emulator.faults().set_stall_after_frames(None);
    let reply = client
        .reconnect(&started.conversation_id, "0", &started.token)
        .await;
    let mut fresh = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    assert_eq!(fresh.activities(1).await[0].1["text"], "echo: a");
    // The newcomer retires the stalled connection: dropped, no close frame.
    assert!(matches!(ws.ending().await, Event::Ended));
}

#[tokio::test]
async fn typing_is_stream_only_and_has_no_watermark() {
    let (emulator, client) = emulator(with_faults(Faults {
        typing: true,
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    eventually("socket holds the slot", || {
        emulator.live_streams(&started.conversation_id) == 1
    })
    .await;
    client.say(&started, "hi").await;
    let frames = [ws.frame().await, ws.frame().await, ws.frame().await];
    assert_eq!(frames[0]["watermark"], "0");
    assert_eq!(frames[1]["activities"][0]["type"], "typing");
    assert!(frames[1].get("watermark").is_none(), "{}", frames[1]);
    assert_eq!(frames[2]["activities"][0]["text"], "echo: hi");
    assert_eq!(frames[2]["watermark"], "1");

    let listed = client
        .get(
            &activities_path(&started.conversation_id),
            Some(&started.token),
        )
        .await;
    let types: Vec<_> = listed.body["activities"]
        .as_array()
        .expect("activities")
        .iter()
        .map(|a| a["type"].clone())
        .collect();
    assert_eq!(types, [json!("message"), json!("message")]);
    assert!(
        emulator
            .activities(&started.conversation_id)
            .iter()
            .all(|a| a["type"] != "typing")
    );
}

#[tokio::test]
async fn typing_is_not_replayed_after_reconnect() {
    let (emulator, client) = emulator(with_faults(Faults {
        typing: true,
        ..Faults::default()
    }))
    .await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    eventually("socket holds the slot", || {
        emulator.live_streams(&started.conversation_id) == 1
    })
    .await;
    client.say(&started, "hi").await;
    assert_eq!(ws.activities(3).await.len(), 3);
    ws.0.close(None).await.expect("close");
    eventually("slot freed", || {
        emulator.live_streams(&started.conversation_id) == 0
    })
    .await;
    // From watermark 0 only the echo is due: the typing before it is gone.
    let reply = client
        .reconnect(&started.conversation_id, "0", &started.token)
        .await;
    let mut ws = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    let replayed = ws.frame().await;
    assert_eq!(replayed["activities"][0]["text"], "echo: hi");
    assert!(ws.try_event(QUIET).await.is_none());
}

#[tokio::test]
async fn keepalives_are_empty_text_frames() {
    let (_emulator, client) = emulator(EmulatorConfig {
        keepalive_interval: Duration::from_millis(50),
        ..EmulatorConfig::default()
    })
    .await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    assert!(matches!(ws.event().await, Event::Keepalive));
    // Client keepalives are ignored, and pings are answered.
    ws.0.send(Message::text("")).await.expect("send");
    ws.0.send(Message::Ping(Bytes::from_static(b"p")))
        .await
        .expect("ping");
    let pong = timeout(WAIT, async {
        loop {
            match ws.0.next().await {
                Some(Ok(Message::Pong(data))) => return data,
                Some(Ok(_)) => {}
                other => panic!("socket ended: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(pong.as_ref(), b"p");
}

#[tokio::test]
async fn proactive_messages_and_the_request_log() {
    let (emulator, client) = default_emulator().await;
    assert_eq!(
        emulator.send_bot_message("NoSuchConversation-us", "x"),
        None
    );
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    let id = emulator
        .send_bot_message(&started.conversation_id, "news")
        .expect("known conversation");
    assert_eq!(id, format!("{}|0000000", started.conversation_id));
    let received = ws.activities(1).await;
    assert_eq!(received[0].1["text"], "news");
    assert_eq!(received[0].1["from"]["id"], BOT_ID);
    client.say(&started, "hey").await;

    let log = emulator.requests();
    let summary: Vec<_> = log.iter().map(|r| (r.method.as_str(), r.status)).collect();
    assert_eq!(summary, [("POST", 201), ("GET", 101), ("POST", 200)]);
    assert!(log[1].path.ends_with("/stream"));
    assert!(
        log[1]
            .query
            .as_deref()
            .is_some_and(|q| q.starts_with("watermark=-&t="))
    );
    assert_eq!(log[1].credential, SeenCredential::StreamToken);
    assert_eq!(
        log[2].body.as_ref().map(|b| b["text"].clone()),
        Some(json!("hey"))
    );
    assert_eq!(
        log[2].host.as_deref(),
        Some(emulator.local_addr().to_string().as_str())
    );
}

#[tokio::test]
async fn drop_all_streams_cuts_every_open_stream_and_only_those() {
    let (emulator, client) = default_emulator().await;
    let mut open = Vec::new();
    for _ in 0..3 {
        let started = client.start(SECRET).await;
        let ws = Ws::open(&started.stream_url).await;
        open.push((started, ws));
    }
    for (started, ws) in &mut open {
        emulator.send_bot_message(&started.conversation_id, "before");
        assert_eq!(ws.activities(1).await[0].1["text"], "before");
    }
    emulator.drop_all_streams();
    for (started, ws) in &mut open {
        assert!(matches!(ws.ending().await, Event::Ended), "no close frame");
        eventually("slot freed", || {
            emulator.live_streams(&started.conversation_id) == 0
        })
        .await;
    }

    // A resume from the watermark gets what was sent while no stream was open, and the
    // new socket is not cut by the earlier drop.
    let (started, _) = &open[0];
    emulator.send_bot_message(&started.conversation_id, "missed");
    let reply = client
        .reconnect(&started.conversation_id, "0", &started.token)
        .await;
    let mut ws = Ws::open(reply.body["streamUrl"].as_str().expect("url")).await;
    assert_eq!(ws.activities(1).await[0].1["text"], "missed");
    emulator.send_bot_message(&started.conversation_id, "after");
    assert_eq!(ws.activities(1).await[0].1["text"], "after");
    assert_eq!(emulator.live_streams(&started.conversation_id), 1);
}

#[tokio::test]
async fn shutdown_closes_streams_and_stops_accepting() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    eventually("socket holds the slot", || {
        emulator.live_streams(&started.conversation_id) == 1
    })
    .await;
    emulator.shutdown();
    let (code, reason) = close_of(&ws.ending().await);
    assert_eq!(code, CloseCode::Away);
    assert_eq!(reason, SHUTDOWN_REASON);
    let addr = emulator.local_addr();
    eventually("listener closed", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(50)).is_err()
    })
    .await;
}

#[tokio::test]
async fn run_serves_until_its_shutdown_future_completes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(run(listener, EmulatorConfig::default(), async {
        let _ = stopped.await;
    }));
    let client = Client {
        base: format!("http://{addr}"),
        http: HyperClient::builder(TokioExecutor::new()).build_http(),
    };
    client.start(SECRET).await;
    let _ = stop.send(());
    let result = timeout(WAIT, server).await.expect("run returns in time");
    assert!(matches!(result, Ok(Ok(()))));
}

#[test]
fn args_build_the_config() {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }
    let cli = Cli::parse_from([
        "emulator",
        "--listen",
        "127.0.0.1:0",
        "--secret",
        "s3",
        "--drop-after-frames",
        "3",
        "--fail-reconnects",
        "2",
        "--batch",
        "--replay-history",
        "--enhanced-auth",
        "--stall-after-frames",
        "5",
        "--typing",
        "--keepalive-secs",
        "7",
        "--token-ttl-secs",
        "4",
    ]);
    assert_eq!(cli.args.listen().port(), 0);
    let config = cli.args.config();
    assert_eq!(config.secret.expose(), "s3");
    assert_eq!(config.faults.drop_after_frames, Some(3));
    assert_eq!(config.faults.fail_reconnects, 2);
    assert!(config.faults.batch && config.faults.replay_history && config.faults.typing);
    assert!(config.faults.enhanced_auth);
    assert_eq!(config.faults.stall_after_frames, Some(5));
    assert_eq!(config.keepalive_interval, Duration::from_secs(7));
    assert_eq!(config.token_ttl, Duration::from_secs(4));
    assert_eq!(config.stream_url_ttl, Duration::from_secs(60));
    assert!(
        !format!("{:?}", cli.args).contains("s3"),
        "secret never printed"
    );

    let defaults = Cli::parse_from(["emulator"]).args;
    assert_eq!(defaults.listen().to_string(), "127.0.0.1:3978");
    assert_eq!(defaults.keepalive_secs, 15);
    assert_eq!(defaults.config().token_ttl, Duration::from_secs(3600));
}

/// The Copilot Studio environment beside Direct Line (ARCHITECTURE §10): a token endpoint that
/// takes no credential and answers a token bound to a new conversation (starting with it
/// returns that conversation), regional settings naming the emulator's own base, and web
/// channel security turning the endpoint off while the secret keeps working.
#[tokio::test]
async fn copilot_studio_environment() {
    let (emulator, client) = default_emulator().await;
    const TOKEN: &str =
        "/powervirtualagents/botsbyschema/cr_demo/directline/token?api-version=2022-03-01-preview";
    let minted = client.get(TOKEN, None).await;
    assert_eq!(minted.status, 200, "{:?}", minted.body);
    let token = minted.body["token"].as_str().expect("token").to_owned();
    let conversation = minted.body["conversationId"]
        .as_str()
        .expect("id")
        .to_owned();
    assert_eq!(minted.body["expires_in"], 3600);
    let started = client
        .post("/v3/directline/conversations", Some(&token), &json!({}))
        .await;
    assert_eq!(started.status, 201, "{:?}", started.body);
    assert_eq!(started.body["conversationId"], conversation.as_str());

    let settings = client
        .get(
            "/powervirtualagents/regionalchannelsettings?api-version=2022-03-01-preview",
            None,
        )
        .await;
    assert_eq!(settings.status, 200);
    assert_eq!(
        settings.body["channelUrlsById"]["directline"],
        format!("{}/", emulator.base_url())
    );
    assert_eq!(
        client
            .get("/powervirtualagents/regionalchannelsettings", None)
            .await
            .status,
        400,
        "api-version is required"
    );

    emulator.environment().set_web_channel_security(true);
    assert_eq!(client.get(TOKEN, None).await.status, 403);
    let classic = client
        .post("/v3/directline/tokens/generate", Some(SECRET), &json!({}))
        .await;
    assert_eq!(classic.status, 200, "the secret still works");

    emulator.environment().set_unavailable(true);
    assert_eq!(client.get(TOKEN, None).await.status, 503);
    emulator.environment().set_unavailable(false);
    emulator
        .environment()
        .set_directline(Some("https://europe.directline.botframework.com/".into()));
    let moved = client
        .get(
            "/powervirtualagents/regionalchannelsettings?api-version=1",
            None,
        )
        .await;
    assert_eq!(
        moved.body["channelUrlsById"]["directline"],
        "https://europe.directline.botframework.com/"
    );
}

#[test]
fn the_web_channel_security_flag_turns_the_token_endpoint_off() {
    use clap::Parser as _;
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        args: EmulatorArgs,
    }
    let on = Cli::parse_from(["emulator", "--web-channel-security"]);
    assert!(on.args.config().web_channel_security);
    let off = Cli::parse_from(["emulator"]);
    assert!(!off.args.config().web_channel_security);
}

/// Posts `text` with `deliveryMode` (when given).
async fn say_with_mode(client: &Client, started: &Started, text: &str, mode: Option<&str>) {
    let mut body = json!({ "type": "message", "from": { "id": "user1" }, "text": text });
    if let Some(mode) = mode {
        body["deliveryMode"] = Value::from(mode);
    }
    let reply = client
        .post(
            &activities_path(&started.conversation_id),
            Some(&started.token),
            &body,
        )
        .await;
    assert_eq!(reply.status, 200, "post: {reply:?}");
}

/// Where an answer keeps its stream fields, in either encoding.
fn stream_fields(activity: &Value) -> Value {
    activity["entities"]
        .as_array()
        .and_then(|entities| entities.iter().find(|e| e["type"] == "streaminfo"))
        .cloned()
        .unwrap_or_else(|| activity["channelData"].clone())
}

#[tokio::test]
async fn stream_n_livestreams_interims_then_one_final_in_both_encodings() {
    let (emulator, client) = emulator(with_faults(Faults {
        stream_interval: Duration::from_millis(2),
        ..Faults::default()
    }))
    .await;
    for (text, entity) in [("stream 3", true), ("stream 3 channeldata", false)] {
        let started = client.start(SECRET).await;
        let mut ws = Ws::open(&started.stream_url).await;
        eventually("socket holds the slot", || {
            emulator.live_streams(&started.conversation_id) == 1
        })
        .await;
        say_with_mode(&client, &started, text, Some("stream")).await;
        let received = ws.activities(5).await;
        assert_eq!(received[0].1["text"], text);
        let mut stream_id = None;
        for (sequence, (watermark, interim)) in received[1..4].iter().enumerate() {
            let sequence = sequence + 1;
            assert!(watermark.is_none(), "interims are live-only: {interim}");
            assert_eq!(interim["type"], "typing");
            let words: Vec<String> = (1..=sequence).map(|n| format!("w{n}")).collect();
            assert_eq!(interim["text"], words.join(" "), "cumulative text");
            let fields = stream_fields(interim);
            assert_eq!(interim.get("entities").is_some(), entity, "{interim}");
            assert_eq!(fields["streamType"], "streaming");
            assert_eq!(fields["streamSequence"], sequence);
            let id = interim["id"]
                .as_str()
                .expect("interims have ids")
                .to_owned();
            match &stream_id {
                None => {
                    assert!(fields.get("streamId").is_none(), "{interim}");
                    stream_id = Some(id);
                }
                Some(first) => {
                    assert_eq!(fields["streamId"], first.as_str());
                    assert_ne!(&id, first);
                }
            }
        }
        let (watermark, last) = &received[4];
        assert_eq!(watermark.as_deref(), Some("1"));
        assert_eq!(last["type"], "message");
        assert_eq!(last["text"], "w1 w2 w3");
        let fields = stream_fields(last);
        assert_eq!(fields["streamType"], "final");
        assert_eq!(fields["streamId"], stream_id.as_deref().expect("stream id"));

        let listed = client
            .get(
                &activities_path(&started.conversation_id),
                Some(&started.token),
            )
            .await;
        let types: Vec<_> = listed.body["activities"]
            .as_array()
            .expect("activities")
            .iter()
            .map(|a| a["type"].clone())
            .collect();
        assert_eq!(
            types,
            [json!("message"), json!("message")],
            "no interims stored"
        );
    }
}

#[tokio::test]
async fn stream_n_without_stream_delivery_mode_is_the_final_alone() {
    let (emulator, client) = default_emulator().await;
    let started = client.start(SECRET).await;
    let mut ws = Ws::open(&started.stream_url).await;
    eventually("socket holds the slot", || {
        emulator.live_streams(&started.conversation_id) == 1
    })
    .await;
    say_with_mode(&client, &started, "stream 4", None).await;
    let received = ws.activities(2).await;
    assert_eq!(received[1].1["type"], "message");
    assert_eq!(received[1].1["text"], "w1 w2 w3 w4");
    assert!(received[1].1.get("entities").is_none());
    assert!(ws.try_event(QUIET).await.is_none(), "nothing else");
}
