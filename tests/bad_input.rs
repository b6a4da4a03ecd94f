//! The bad-input matrix: each row is raw bytes on a fresh TCP connection to the gateway
//! and the answer expected. Raw bytes, not an HTTP client, so rows can carry what clients
//! refuse to send (duplicated and conflicting headers, smuggling attempts, broken framing).
//! Nothing refused may reach Direct Line, and afterwards a normal conversation still works.

mod support;

use futures_util::{SinkExt, StreamExt};
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// What a row expects: the status, and the Direct Line error code when the gateway can
/// answer in Direct Line's shape. Framing errors are answered by the HTTP parser before any
/// route exists (hyper's bare 400), so they carry no code.
struct Row {
    name: &'static str,
    request: Vec<u8>,
    status: u16,
    code: Option<&'static str>,
}

fn row(name: &'static str, request: String, status: u16, code: Option<&'static str>) -> Row {
    Row {
        name,
        request: request.into_bytes(),
        status,
        code,
    }
}

/// Sends `request` on a fresh connection and reads the first response (head, then a body
/// of its Content-Length): status and body. Keep-alive connections are not waited out.
async fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    tcp.write_all(request).await.unwrap();
    let read = async {
        let mut bytes = Vec::new();
        let mut chunk = [0u8; 8192];
        loop {
            let n = tcp.read(&mut chunk).await.unwrap_or(0);
            bytes.extend_from_slice(&chunk[..n]);
            let text = String::from_utf8_lossy(&bytes);
            if let Some((head, body)) = text.split_once("\r\n\r\n") {
                let length = head
                    .lines()
                    .find_map(|l| {
                        let (name, value) = l.split_once(':')?;
                        name.eq_ignore_ascii_case("content-length")
                            .then(|| value.trim().parse::<usize>().ok())?
                    })
                    .unwrap_or(0);
                if body.len() >= length || n == 0 {
                    return (head.to_owned(), body.to_owned());
                }
            }
            assert!(n > 0, "connection closed before a response: {text:?}");
        }
    };
    let (head, body) = tokio::time::timeout(WAIT, read)
        .await
        .expect("the gateway answered in time");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {head:?}"));
    (status, body)
}

fn post(path: &str, token: &str, content_type: &str, body: &[u8]) -> Vec<u8> {
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(body);
    request
}

fn get(path: &str, token: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_request_gets_its_answer_and_nothing_reaches_upstream() {
    let h = Harness::builder()
        .config(|c| {
            c.limits.activity_body_bytes = 64 * 1024;
            c.stream.max_frame_bytes = 64 * 1024;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let other = h.conversation().await;
    let token = conversation.token.as_str();
    let id = conversation.id.as_str();
    let activities = format!("/v3/directline/conversations/{id}/activities");
    let json = "application/json";
    let deep = format!(
        "{{\"text\":\"x\",\"value\":{}{}}}",
        "[".repeat(5000),
        "]".repeat(5000)
    );
    // One character changed: 'A' unless it already was one (then this was the real token).
    let changed = if token.ends_with('A') { 'B' } else { 'A' };
    let forged = format!("{}{changed}", &token[..token.len() - 1]);
    let truncated = &token[..token.len() / 2];
    let foreign_key =
        directline_gateway::seal::Sealer::new("a-key-this-gateway-never-had-0123456789", &[])
            .unwrap()
            .seal(
                directline_gateway::seal::Purpose::ClientToken,
                &directline_gateway::seal::ClientToken {
                    bot: "default".into(),
                    conversation_id: id.to_owned(),
                    user_id: "dl_x".into(),
                    upstream_token: "x".into(),
                    expires_at: u64::MAX / 2,
                    name: None,
                },
            );
    let stream_path = |conversation: &Conversation| {
        let url = &conversation.stream_url;
        url[url.find("/v3/").unwrap()..].to_owned()
    };
    let upgrade = |path: &str| {
        format!(
            "GET {path} HTTP/1.1\r\nHost: gw\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
             Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n"
        )
    };
    let own_stream = stream_path(&conversation);
    let other_stream = stream_path(&other);
    // The other conversation's ticket presented on this conversation's stream route.
    let replayed_ticket = format!(
        "/v3/directline/conversations/{id}/stream?{}",
        other_stream.split_once('?').unwrap().1
    );
    let without_ticket = format!("/v3/directline/conversations/{id}/stream");
    let expired_ticket = directline_gateway::seal::Sealer::new(TOKEN_KEY, &[])
        .unwrap()
        .seal(
            directline_gateway::seal::Purpose::StreamTicket,
            &directline_gateway::seal::StreamTicket {
                bot: "default".into(),
                conversation_id: id.to_owned(),
                user_id: "dl_x".into(),
                watermark: None,
                upstream_stream_url: None,
                upstream_token: "x".into(),
                issued_at_ms: 0,
                from_start: false,
                name: None,
                expires_at: 1,
            },
        );
    let many_headers: String = (0..150).map(|i| format!("X-H{i}: v\r\n")).collect();

    let rows = vec![
        Row {
            name: "malformed JSON",
            request: post(&activities, token, json, b"{not json"),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "JSON array",
            request: post(&activities, token, json, b"[1,2]"),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "JSON string",
            request: post(&activities, token, json, b"\"hi\""),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "JSON null",
            request: post(&activities, token, json, b"null"),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "empty body",
            request: post(&activities, token, json, b""),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "invalid UTF-8",
            request: post(&activities, token, json, &[b'{', 0xff, 0xfe, b'}']),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "deeply nested JSON",
            request: post(&activities, token, json, deep.as_bytes()),
            status: 400,
            code: Some("BadArgument"),
        },
        Row {
            name: "huge JSON",
            request: post(
                &activities,
                token,
                json,
                format!("{{\"text\":\"{}\"}}", "x".repeat(100_000)).as_bytes(),
            ),
            status: 413,
            code: Some("MessageSizeTooBig"),
        },
        Row {
            name: "text/plain",
            request: post(&activities, token, "text/plain", b"{}"),
            status: 415,
            code: Some("UnsupportedMediaType"),
        },
        Row {
            name: "application/xml",
            request: post(&activities, token, "application/xml", b"<a/>"),
            status: 415,
            code: Some("UnsupportedMediaType"),
        },
        row(
            "traversal id",
            get("/v3/directline/conversations/../activities", token),
            400,
            Some("BadArgument"),
        ),
        row(
            "dotted id",
            get("/v3/directline/conversations/a..b/activities", token),
            400,
            Some("BadArgument"),
        ),
        row(
            "encoded slash id",
            get("/v3/directline/conversations/a%2Fb/activities", token),
            400,
            Some("BadArgument"),
        ),
        row(
            "NUL id",
            get("/v3/directline/conversations/a%00b/activities", token),
            400,
            Some("BadArgument"),
        ),
        row(
            "1,000-character id",
            get(
                &format!(
                    "/v3/directline/conversations/{}/activities",
                    "a".repeat(1000)
                ),
                token,
            ),
            400,
            Some("BadArgument"),
        ),
        row(
            "10 KB id",
            get(
                &format!(
                    "/v3/directline/conversations/{}/activities",
                    "a".repeat(10_000)
                ),
                token,
            ),
            414,
            Some("UriTooLong"),
        ),
        row(
            "unknown route",
            get("/v3/directline/everything", token),
            404,
            Some("NotFound"),
        ),
        row(
            "wrong method",
            format!(
                "DELETE {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\n\r\n"
            ),
            405,
            Some("MethodNotAllowed"),
        ),
        row(
            "no token",
            format!("GET {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n"),
            401,
            Some("BadArgument"),
        ),
        row(
            "forged token",
            get(&activities, &forged),
            403,
            Some("BadArgument"),
        ),
        row(
            "truncated token",
            get(&activities, truncated),
            403,
            Some("BadArgument"),
        ),
        row(
            "token sealed with an unknown key",
            get(&activities, &foreign_key),
            403,
            Some("BadArgument"),
        ),
        row(
            "the raw secret as a token",
            get(&activities, SECRET),
            403,
            Some("BadArgument"),
        ),
        row(
            "another conversation's token",
            get(&activities, &other.token),
            403,
            Some("BadArgument"),
        ),
        row(
            "two Authorization headers",
            format!(
                "GET {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nAuthorization: Bearer {}\r\n\r\n",
                other.token
            ),
            403,
            Some("BadArgument"),
        ),
        row(
            "oversized headers",
            format!(
                "GET {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nX-Filler: {}\r\n\r\n",
                "y".repeat(40_000)
            ),
            431,
            Some("HeadersTooLarge"),
        ),
        row(
            "Content-Length with Transfer-Encoding (smuggling)",
            format!(
                "POST {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /v3/directline/tokens/generate HTTP/1.1\r\nHost: gw\r\n\r\n"
            ),
            400,
            None,
        ),
        row(
            "two different Content-Lengths",
            format!(
                "POST {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{{}}"
            ),
            400,
            None,
        ),
        row(
            "header without a colon",
            format!("GET {activities} HTTP/1.1\r\nHost: gw\r\nthis is not a header\r\n\r\n"),
            400,
            None,
        ),
        row(
            "stream without an upgrade",
            get(&own_stream, token),
            426,
            Some("UpgradeRequired"),
        ),
        row(
            "upgrade without a ticket",
            upgrade(&without_ticket),
            403,
            Some("BadArgument"),
        ),
        row(
            "upgrade with a forged ticket",
            upgrade(&format!("{without_ticket}?t=dlgw1.forged")),
            403,
            Some("BadArgument"),
        ),
        row(
            "upgrade with another conversation's ticket",
            upgrade(&replayed_ticket),
            403,
            Some("BadArgument"),
        ),
        row(
            "upgrade with an expired ticket",
            upgrade(&format!("{without_ticket}?t={expired_ticket}")),
            403,
            Some("BadArgument"),
        ),
        row(
            "150 header fields",
            format!(
                "GET {activities} HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n{many_headers}\r\n"
            ),
            431,
            None,
        ),
    ];
    let before = h.emulator.requests().len();
    let addr = h.gateway().client_addr;
    let tried = rows.len();
    for Row {
        name,
        request,
        status,
        code,
    } in rows
    {
        let (got, body) = exchange(addr, &request).await;
        assert_eq!(got, status, "{name}: {body}");
        if let Some(code) = code {
            let json: serde_json::Value = serde_json::from_str(&body)
                .unwrap_or_else(|_| panic!("{name}: not Direct Line-shaped: {body:?}"));
            assert_eq!(json["error"]["code"], code, "{name}");
            assert!(json["error"]["message"].is_string(), "{name}");
        }
        assert!(!body.contains(SECRET), "{name}: the secret leaked");
    }
    assert_eq!(
        h.emulator.requests().len(),
        before,
        "a refused request reached Direct Line"
    );
    eprintln!("bad-input matrix: {tried} HTTP requests refused as expected");

    // WebSocket frames a client should never send: each ends that socket, and only it.
    let oversized = Message::Text("x".repeat(70 * 1024).into());
    let bad_close = Message::Close(Some(CloseFrame {
        code: CloseCode::from(999),
        reason: "".into(),
    }));
    for (name, frame) in [
        ("oversized frame", oversized),
        ("invalid close code", bad_close),
    ] {
        let mut ws = open_stream(&conversation.stream_url).await;
        let _ = ws.send(frame).await;
        let ended = tokio::time::timeout(WAIT, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Close(_))) | None | Some(Err(_)) => return,
                    Some(Ok(_)) => {}
                }
            }
        })
        .await;
        assert!(ended.is_ok(), "{name}: the gateway ended the socket");
    }
    // A binary frame is not Direct Line's protocol: ignored, the socket keeps working.
    let mut ws = open_stream(&conversation.stream_url).await;
    ws.send(Message::Binary(vec![0u8, 1, 2].into()))
        .await
        .unwrap();

    // After all of that the gateway still serves the conversation, on this socket too.
    let mut seen = Seen::default();
    h.post_message(&conversation, "still fine").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: still fine".into())
    })
    .await;
    seen.assert_no_duplicate_ids();
}
