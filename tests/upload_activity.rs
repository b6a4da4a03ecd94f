//! The activity part of a multipart upload end to end: real gateway, real emulator (and a
//! real policy webhook and OpenID issuer) on 127.0.0.1. The part is rewritten as a posted
//! activity is — sender bound, verified name, delivery mode — and screened before anything
//! goes upstream; the files around it stream through.

mod support;

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use directline_emulator::OidcIssuer;
use directline_emulator::oidc::{Alg, DEFAULT_AUDIENCE};
use directline_gateway::config::{DeliveryMode, PolicyConfig, RecordConfig};
use directline_gateway::identity::settings::{AuthSettings, IdentityLimits};
use directline_gateway::secret::Secret;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use jsonwebtoken::Algorithm;
use serde_json::{Value, json};
use support::webhook::PolicyWebhook;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const BOUNDARY: &str = "----dlgwBoundary7";

/// A DLJS-shaped upload: the activity part first, then the files.
fn multipart(activity: &Value, files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut out = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"activity\"\r\nContent-Type: application/vnd.microsoft.activity\r\n\r\n{activity}\r\n"
    )
    .into_bytes();
    for (name, bytes) in files {
        out.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
        );
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn upload(h: &Harness, conversation: &Conversation, body: Vec<u8>) -> Reply {
    let request = Request::post(h.url(&format!(
        "/v3/directline/conversations/{}/upload?userId=someone-else",
        conversation.id
    )))
    .header("authorization", format!("Bearer {}", conversation.token))
    .header(
        "content-type",
        format!("multipart/form-data; boundary={BOUNDARY}"),
    )
    .body(Full::new(Bytes::from(body)))
    .unwrap();
    h.send(request).await
}

/// What the emulator made of the last upload it took.
fn last_upload(h: &Harness) -> Option<Value> {
    h.emulator
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path.ends_with("/upload"))
        .and_then(|r| r.body)
}

#[tokio::test]
async fn the_activity_part_is_bound_to_the_user_and_files_pass_through() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let activity = json!({"type": "message", "text": "see files", "from": {"id": "spoofed", "name": "Caller Name"}});
    let reply = upload(
        &h,
        &conversation,
        multipart(
            &activity,
            &[("a.bin", b"\x00\r\n--not-it\r\n"), ("b.txt", b"two")],
        ),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    // (The emulator also binds `from.id` to the `userId` query, which the gateway already
    // set: this checks the rewritten body still parses with its files, not the binding.)
    let seen = last_upload(&h).expect("the upload reached the emulator");
    assert_eq!(seen["text"], "see files");
    let from = seen["from"]["id"].as_str().unwrap();
    assert!(from.starts_with("dl_") && from != "spoofed", "{from}");
    // Not signed in: the caller's own name is kept, as on POST activities.
    assert_eq!(seen["from"]["name"], "Caller Name");
    let names: Vec<&str> = seen["attachments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["a.bin", "b.txt"]);
}

#[tokio::test]
async fn delivery_mode_stream_is_added_to_the_activity_part() {
    let h = Harness::builder()
        .config(|config| config.bot_mut().delivery_mode = DeliveryMode::Stream)
        .start()
        .await;
    let conversation = h.conversation().await;
    let activity = json!({"type": "message", "text": "file"});
    let reply = upload(&h, &conversation, multipart(&activity, &[("a", b"x")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(last_upload(&h).unwrap()["deliveryMode"], "stream");
}

#[tokio::test]
async fn a_denied_activity_part_is_403_and_nothing_reaches_direct_line() {
    let webhook = PolicyWebhook::start().await;
    let policy = PolicyConfig {
        webhook: Some(url::Url::parse(&webhook.url).unwrap()),
        ..PolicyConfig::default()
    };
    let h = Harness::builder()
        .config(|config| config.bot_mut().policy = Some(Arc::new(policy)))
        .start()
        .await;
    let conversation = h.conversation().await;
    let activity = json!({"type": "message", "text": "please DENY this"});
    let reply = upload(&h, &conversation, multipart(&activity, &[("a", b"x")])).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.error_code(), "PolicyDenied");
    assert!(
        last_upload(&h).is_none(),
        "a denied upload reached Direct Line"
    );
    assert_eq!(webhook.asked_about("DENY").len(), 1);
    // Allowed: it goes up.
    let activity = json!({"type": "message", "text": "fine"});
    let reply = upload(&h, &conversation, multipart(&activity, &[("a", b"x")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert_eq!(last_upload(&h).unwrap()["text"], "fine");
}

#[tokio::test]
async fn an_oversized_activity_part_is_413_and_a_late_one_400() {
    let h = Harness::builder()
        .config(|config| {
            config.limits.activity_body_bytes = 1024;
            config.limits.upload_body_bytes = 256 * 1024;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let activity = json!({"type": "message", "text": "x".repeat(2048)});
    let reply = upload(&h, &conversation, multipart(&activity, &[("a", b"x")])).await;
    assert_eq!(
        reply.status,
        StatusCode::PAYLOAD_TOO_LARGE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code(), "MessageSizeTooBig");
    // A big file after a small activity is within the upload's own limit.
    let activity = json!({"type": "message", "text": "small"});
    let big = vec![7u8; 100 * 1024];
    let reply = upload(&h, &conversation, multipart(&activity, &[("big", &big)])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(last_upload(&h).is_some());

    // An activity part after a file would reach Direct Line unscreened: refused.
    let mut late = format!(
        "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n"
    )
    .into_bytes();
    late.extend(multipart(&json!({"type": "message", "text": "late"}), &[]));
    let reply = upload(&h, &conversation, late).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.error_code(), "BadArgument");
    assert!(
        !h.emulator
            .activities(&conversation.id)
            .iter()
            .any(|a| a["text"] == "late")
    );

    // A multipart without its boundary.
    let request = Request::post(h.url(&format!(
        "/v3/directline/conversations/{}/upload",
        conversation.id
    )))
    .header("authorization", format!("Bearer {}", conversation.token))
    .header("content-type", "multipart/form-data")
    .body(Full::new(Bytes::from_static(b"--x--\r\n")))
    .unwrap();
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{}", reply.text());
    assert_eq!(reply.error_code(), "BadArgument");
}

#[tokio::test]
async fn a_body_in_tiny_chunks_is_rewritten_all_the_same() {
    let h = Harness::builder()
        .config(|config| config.bot_mut().delivery_mode = DeliveryMode::Stream)
        .start()
        .await;
    let conversation = h.conversation().await;
    let activity = json!({"type": "message", "text": "chunked", "from": {"id": "spoofed"}});
    let body = multipart(&activity, &[("a.bin", b"file bytes\r\n--almost")]);
    let address = h.url("").trim_start_matches("http://").to_owned();
    let mut socket = TcpStream::connect(&address).await.unwrap();
    socket.set_nodelay(true).unwrap();
    let head = format!(
        "POST /v3/directline/conversations/{}/upload HTTP/1.1\r\nHost: {address}\r\nAuthorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary={BOUNDARY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        conversation.id,
        conversation.token,
        body.len()
    );
    socket.write_all(head.as_bytes()).await.unwrap();
    for piece in body.chunks(3) {
        socket.write_all(piece).await.unwrap();
        socket.flush().await.unwrap();
        tokio::task::yield_now().await;
    }
    let mut answer = Vec::new();
    tokio::time::timeout(WAIT, socket.read_to_end(&mut answer))
        .await
        .expect("answered in time")
        .unwrap();
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    let seen = last_upload(&h).unwrap();
    assert_eq!(seen["text"], "chunked");
    // Rewritten, though every delimiter arrived split across reads.
    assert_eq!(seen["deliveryMode"], "stream");
    assert_ne!(seen["from"]["id"], "spoofed");
    assert_eq!(seen["attachments"][0]["name"], "a.bin");
}

#[tokio::test]
async fn signed_in_the_activity_part_carries_the_issuers_name() {
    let idp = OidcIssuer::spawn(TcpListener::bind("127.0.0.1:0").await.unwrap());
    let auth = Arc::new(AuthSettings {
        issuer: idp.issuer(),
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        jwks_url: None,
        user_claim: "sub".to_owned(),
        name_claim: Some("name".to_owned()),
        algorithms: vec![Algorithm::RS256, Algorithm::ES256],
        leeway: Duration::from_secs(60),
        pseudonym_key: Secret::new("test-pseudonym-key-0123456789abcdef0123"),
        limits: IdentityLimits::default(),
    });
    let h = Harness::builder()
        .config(|config| {
            config.bot_mut().rate_limits.sessions.per_minute = 0;
            config.bot_mut().auth = Some(auth);
        })
        .start()
        .await;
    let jwt = idp
        .token("alice")
        .alg(Alg::Rs256)
        .claim("name", json!("Alice Example"))
        .sign();
    let reply = h
        .request(
            Method::POST,
            "/v3/directline/tokens/generate",
            Some(&jwt),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let token = reply.json()["token"].as_str().unwrap().to_owned();
    let reply = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let started = reply.json();
    let conversation = Conversation {
        id: started["conversationId"].as_str().unwrap().to_owned(),
        token: started["token"].as_str().unwrap_or(&token).to_owned(),
        stream_url: String::new(),
    };
    let activity = json!({"type": "message", "text": "hi", "from": {"id": "x", "name": "Mallory"}});
    let reply = upload(&h, &conversation, multipart(&activity, &[("a", b"x")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let seen = last_upload(&h).unwrap();
    assert_eq!(seen["from"]["name"], "Alice Example");
    assert!(seen["from"]["id"].as_str().unwrap().starts_with("dl_"));
}

#[tokio::test]
async fn the_activity_part_is_recorded_as_it_went_upstream() {
    let dir = std::env::temp_dir().join(format!(
        "dlgw-upload-record-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let record = RecordConfig {
        path: dir.clone(),
        ..RecordConfig::default()
    };
    let h = Harness::builder()
        .config(|config| config.record = Some(record))
        .start()
        .await;
    let conversation = h.conversation().await;
    let activity = json!({"type": "message", "text": "uploaded", "from": {"id": "spoofed"}});
    let reply = upload(&h, &conversation, multipart(&activity, &[("a", b"x")])).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let user_lines = || -> Vec<Value> {
        let mut lines = Vec::new();
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if entry.file_name().to_string_lossy().ends_with(".jsonl") {
                let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
                lines.extend(
                    text.lines()
                        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                        .filter(|l| l["direction"] == "user"),
                );
            }
        }
        lines
    };
    eventually("the upload's activity in the record", async || {
        !user_lines().is_empty()
    })
    .await;
    let lines = user_lines();
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert_eq!(lines[0]["activity"]["text"], "uploaded");
    let from = lines[0]["activity"]["from"]["id"].as_str().unwrap();
    assert!(from.starts_with("dl_"), "{from}");
    let _ = std::fs::remove_dir_all(&dir);
}
