//! The emulator against the protocol facts it must honour, over real sockets.

use std::time::Duration;

use ::http::{Method, Request, StatusCode};
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

use super::*;

const WAIT: Duration = Duration::from_secs(10);

struct Emu {
    handle: EmulatorHandle,
    http: Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>,
}

impl Emu {
    async fn start(faults: Faults) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let handle = spawn(
            listener,
            EmulatorConfig {
                faults,
                ..EmulatorConfig::default()
            },
        );
        Self {
            handle,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        credential: &str,
        body: Option<Value>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.handle.base_url()));
        if !credential.is_empty() {
            request = request.header("authorization", format!("Bearer {credential}"));
        }
        let bytes = body.map(|b| b.to_string()).unwrap_or_default();
        let request = request
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(bytes)))
            .unwrap();
        let response = self.http.request(request).await.unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

async fn frames_until(url: &str, count: usize) -> Vec<Value> {
    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
    let mut activities = Vec::new();
    while activities.len() < count {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("frame in time")
        {
            Some(Ok(Message::Text(text))) if !text.is_empty() => {
                let set: Value = serde_json::from_str(text.as_str()).unwrap();
                activities.extend(set["activities"].as_array().unwrap().iter().cloned());
            }
            Some(Ok(_)) => {}
            other => panic!("stream ended: {other:?}"),
        }
    }
    activities
}

#[tokio::test]
async fn generate_start_post_and_stream() {
    let emu = Emu::start(Faults::default()).await;
    let (status, generated) = emu
        .call(
            Method::POST,
            "/v3/directline/tokens/generate",
            "emulator-secret",
            Some(json!({"User": {"Id": "dl_ada"}})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(generated["expires_in"], 3600);
    let token = generated["token"].as_str().unwrap();
    let id = generated["conversationId"].as_str().unwrap();
    let (status, started) = emu
        .call(Method::POST, "/v3/directline/conversations", token, None)
        .await;
    assert_eq!(status, 201);
    assert_eq!(started["conversationId"], id);
    let (status, _) = emu
        .call(Method::POST, "/v3/directline/conversations", token, None)
        .await;
    assert_eq!(status, 200, "a started conversation answers 200");
    let stream_url = started["streamUrl"].as_str().unwrap();
    assert!(stream_url.contains("/stream?watermark=-&t="));
    let (status, posted) = emu
        .call(
            Method::POST,
            &format!("/v3/directline/conversations/{id}/activities"),
            token,
            Some(json!({"type": "message", "from": {"id": "spoof"}, "text": "hi"})),
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(posted["id"], format!("{id}|0000000"));
    let activities = frames_until(stream_url, 2).await;
    assert_eq!(
        activities[0]["from"]["id"], "dl_ada",
        "the token's user overrides from.id"
    );
    assert_eq!(activities[1]["text"], "echo: hi");
    assert_eq!(activities[1]["id"], format!("{id}|0000001"));
}

#[tokio::test]
async fn reconnect_replays_after_the_watermark_and_collides() {
    let emu = Emu::start(Faults {
        typing: true,
        ..Faults::default()
    })
    .await;
    let (_, started) = emu
        .call(
            Method::POST,
            "/v3/directline/conversations",
            "emulator-secret",
            None,
        )
        .await;
    let id = started["conversationId"].as_str().unwrap().to_owned();
    for text in ["a", "b"] {
        emu.call(
            Method::POST,
            &format!("/v3/directline/conversations/{id}/activities"),
            "emulator-secret",
            Some(json!({"type": "message", "from": {"id": "u"}, "text": text})),
        )
        .await;
    }
    let (status, set) = emu
        .call(
            Method::GET,
            &format!("/v3/directline/conversations/{id}/activities"),
            "emulator-secret",
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(
        set["activities"].as_array().unwrap().len(),
        4,
        "typing is never stored"
    );
    assert_eq!(set["watermark"], "3");
    let (_, resumed) = emu
        .call(
            Method::GET,
            &format!("/v3/directline/conversations/{id}?watermark=1"),
            "emulator-secret",
            None,
        )
        .await;
    let url = resumed["streamUrl"].as_str().unwrap().to_owned();
    assert!(url.contains("watermark=1&t="));
    let (mut first, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let first_frame = tokio::time::timeout(WAIT, first.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    let set: Value = serde_json::from_str(first_frame.to_text().unwrap()).unwrap();
    assert_eq!(
        set["activities"][0]["text"], "b",
        "replay starts after watermark 1"
    );
    let (mut second, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    match tokio::time::timeout(WAIT, second.next()).await.unwrap() {
        Some(Ok(Message::Close(Some(frame)))) => assert_eq!(frame.reason.as_str(), "collision"),
        other => panic!("expected a collision close, got {other:?}"),
    }
    assert_eq!(emu.handle.live_streams(&id), 1);
}

#[tokio::test]
async fn refusals_and_faults() {
    let emu = Emu::start(Faults {
        enhanced_auth: true,
        fail_reconnects: 1,
        ..Faults::default()
    })
    .await;
    assert_eq!(
        emu.call(Method::POST, "/v3/directline/conversations", "", None)
            .await
            .0,
        401
    );
    assert_eq!(
        emu.call(Method::POST, "/v3/directline/conversations", "wrong", None)
            .await
            .0,
        403
    );
    let (_, generated) = emu
        .call(
            Method::POST,
            "/v3/directline/tokens/generate",
            "emulator-secret",
            Some(json!({"user": {"id": "dl_u"}})),
        )
        .await;
    let token = generated["token"].as_str().unwrap();
    let id = generated["conversationId"].as_str().unwrap();
    emu.call(Method::POST, "/v3/directline/conversations", token, None)
        .await;
    let path = format!("/v3/directline/conversations/{id}");
    let (status, body) = emu.call(Method::GET, &path, token, None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (502, Some("ServiceError")),
        "injected failure first"
    );
    let (status, body) = emu.call(Method::GET, &path, "emulator-secret", None).await;
    assert_eq!(
        (status.as_u16(), body["error"]["code"].as_str()),
        (400, Some("MissingProperty"))
    );
    assert_eq!(emu.call(Method::GET, &path, token, None).await.0, 200);
    assert_eq!(
        emu.call(
            Method::GET,
            "/v3/directline/conversations/unknown-id",
            "emulator-secret",
            None
        )
        .await
        .0,
        404
    );
    let recorded = emu.handle.requests();
    assert_eq!(recorded[0].credential, SeenCredential::Missing);
    assert_eq!(recorded[1].credential, SeenCredential::Invalid);
}
