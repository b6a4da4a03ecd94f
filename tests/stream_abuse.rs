//! The stream routes against hostile clients and a poisoned upstream: a client
//! that posts as someone else over `…/stream/multimodal`, opens too many sockets, floods
//! frames, breaks the WebSocket protocol or stops reading, an upstream that sends a frame
//! too large to read or stops answering pings, and the memory all of that may take.

mod support;

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use support::process::GatewayProcess;
use support::{Harness, Seen, WAIT, eventually, metric, open_stream, read_until};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};

use directline_emulator::{EmulatorConfig, Faults};

fn multimodal(stream_url: &str) -> String {
    let (path, query) = stream_url.split_once('?').unwrap();
    format!("{path}/multimodal?{query}")
}

/// The close code the gateway sent, waiting at most [`WAIT`]; `None` for a socket that
/// ended without a close frame.
async fn close_code(ws: &mut support::Ws) -> Option<u16> {
    tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Close(frame))) => return frame.map(|f| u16::from(f.code)),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return None,
            }
        }
    })
    .await
    .expect("the gateway ended the socket in time")
}

/// The user id the gateway bound into `conversation`'s token, as Direct Line stored it for
/// a REST post.
async fn bound_user(h: &Harness, conversation: &support::Conversation) -> String {
    h.post_message(conversation, "who am i").await;
    let stored = h.emulator.activities(&conversation.id);
    let mine = stored
        .iter()
        .find(|a| a["text"] == "who am i")
        .expect("the post was stored");
    mine["from"]["id"].as_str().unwrap().to_owned()
}

#[tokio::test]
async fn multimodal_frames_are_stored_as_the_bound_user_after_a_secret_reconnect() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let user = bound_user(&h, &conversation).await;
    assert!(user.starts_with("dl_"), "{user}");
    // A reconnect's upstream URL comes from a GET made with the secret: Direct Line binds
    // no user to it, so only the gateway can keep the sender honest on this socket.
    let reconnected = h.reconnect(&conversation, None).await;
    let url = multimodal(reconnected["streamUrl"].as_str().unwrap());
    let mut ws = open_stream(&url).await;
    let forged = json!({
        "type": "message",
        "text": "as the victim",
        "from": {"id": "victim-user", "name": "Victim", "role": "bot", "aadObjectId": "x"},
    });
    ws.send(Message::Text(forged.to_string().into()))
        .await
        .unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: as the victim".to_owned())
    })
    .await;
    let stored = h.emulator.activities(&conversation.id);
    let forged_one = stored
        .iter()
        .find(|a| a["text"] == "as the victim")
        .expect("the frame reached Direct Line");
    assert_eq!(
        forged_one["from"],
        json!({"id": user, "name": "Victim"}),
        "stored as {}",
        forged_one["from"]
    );
}

#[tokio::test]
async fn multimodal_sockets_count_against_the_per_conversation_cap() {
    let h = Harness::builder()
        .config(|c| c.stream.max_sockets_per_conversation = 1)
        .start()
        .await;
    let conversation = h.conversation().await;
    let url = multimodal(&conversation.stream_url);
    // One socket: Direct Line (and the emulator) refuses a second upstream socket of a
    // conversation with `collision`, which would end the first on its own.
    let first = open_stream(&url).await;
    eventually("the multimodal socket is bridged", async || {
        h.emulator.live_streams(&conversation.id) == 1
    })
    .await;
    let connects_before = h.emulator.stream_connects();
    for target in [&url, &conversation.stream_url] {
        match tokio_tungstenite::connect_async(target.as_str()).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 429)
            }
            other => panic!("expected 429 for {target}, got {:?}", other.map(|_| ())),
        }
    }
    assert_eq!(
        h.emulator.stream_connects(),
        connects_before,
        "a refused socket dialled upstream"
    );
    // A slot comes back when its socket goes.
    drop(first);
    eventually("the multimodal slot is free again", async || {
        tokio_tungstenite::connect_async(url.as_str()).await.is_ok()
    })
    .await;
}

#[tokio::test]
async fn multimodal_frames_spend_the_conversation_activity_rate() {
    let h = Harness::builder()
        .config(|c| {
            c.bot_mut().rate_limits.activities.per_minute = 1;
            c.bot_mut().rate_limits.activities.burst = 3;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&multimodal(&conversation.stream_url)).await;
    for i in 0..10 {
        let activity = json!({"type": "message", "text": format!("flood {i}")});
        if ws
            .send(Message::Text(activity.to_string().into()))
            .await
            .is_err()
        {
            break;
        }
    }
    assert_eq!(close_code(&mut ws).await, Some(1008));
    let flood = |h: &Harness| {
        h.emulator
            .activities(&conversation.id)
            .iter()
            .filter(|a| a["text"].as_str().is_some_and(|t| t.starts_with("flood")))
            .count()
    };
    // The burst reaches Direct Line (it may still be on its way when the close arrives)...
    eventually("the burst is stored", async || flood(&h) == 3).await;
    // ...and REST shares the bucket: the stream cannot be used to post past the rate.
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let reply = h
        .request(
            http::Method::POST,
            &path,
            Some(&conversation.token),
            Some(json!({"type": "message", "text": "flood by REST"})),
        )
        .await;
    assert_eq!(reply.status, 429, "{}", reply.text());
    assert_eq!(flood(&h), 3, "only the burst may be stored");
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_client_frames_refused_total{bot=\"default\",reason=\"rate_limited\"}"
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn multimodal_frames_that_are_not_activities_close_the_socket() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let url = multimodal(&conversation.stream_url);
    for (name, frame, code) in [
        ("not JSON", Message::Text("hello".into()), 1007),
        ("a JSON array", Message::Text("[1,2]".into()), 1007),
        ("binary", Message::Binary(vec![1u8, 2, 3].into()), 1003),
    ] {
        let mut ws = open_stream(&url).await;
        ws.send(frame).await.unwrap();
        assert_eq!(close_code(&mut ws).await, Some(code), "{name}");
    }
    assert!(
        h.emulator
            .activities(&conversation.id)
            .iter()
            .all(|a| a["from"]["role"] != "bot")
    );
}

#[tokio::test]
async fn client_protocol_violations_get_their_close_codes() {
    let h = Harness::builder()
        .config(|c| c.stream.max_frame_bytes = 16 * 1024)
        .start()
        .await;
    let bad_utf8 = Frame::message(vec![b'{', 0xff, 0xfe, b'}'], OpCode::Data(Data::Text), true);
    let mut reserved = Frame::message(b"{}".to_vec(), OpCode::Data(Data::Text), true);
    reserved.header_mut().rsv2 = true;
    for (name, frame, code) in [
        (
            "oversized",
            Message::Text("x".repeat(20 * 1024).into()),
            1009,
        ),
        ("invalid UTF-8", Message::Frame(bad_utf8), 1007),
        ("reserved bits", Message::Frame(reserved), 1002),
    ] {
        for multimodal_route in [false, true] {
            // A conversation each: its one upstream socket is not shared with the other route.
            let conversation = h.conversation().await;
            let url = if multimodal_route {
                multimodal(&conversation.stream_url)
            } else {
                conversation.stream_url.clone()
            };
            let mut ws = open_stream(&url).await;
            ws.send(frame.clone()).await.unwrap();
            assert_eq!(close_code(&mut ws).await, Some(code), "{name} on {url}");
        }
    }
    let metrics = h.metrics().await;
    for reason in ["too_large", "bad_utf8", "protocol"] {
        let series = format!(
            "directline_gateway_client_frames_refused_total{{bot=\"default\",reason=\"{reason}\"}}"
        );
        assert_eq!(metric(&metrics, &series), 2.0, "{series}\n{metrics}");
    }
}

/// A client frame as raw bytes: `first` (FIN, opcode), masked unless `mask` is `None`,
/// with the length field a client chooses (`claimed`, else the payload's own).
fn raw_frame(first: u8, payload: &[u8], mask: Option<[u8; 4]>, claimed: Option<u64>) -> Vec<u8> {
    let mut out = vec![first];
    let masked = if mask.is_some() { 0x80 } else { 0 };
    match claimed.unwrap_or(payload.len() as u64) {
        n if n < 126 => out.push(masked | n as u8),
        n if n <= 0xFFFF => {
            out.push(masked | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(masked | 127);
            out.extend_from_slice(&n.to_be_bytes());
        }
    }
    match mask {
        Some(key) => {
            out.extend_from_slice(&key);
            out.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        }
        None => out.extend_from_slice(payload),
    }
    out
}

/// Writes `bytes` on a fresh socket after the handshake and reads the gateway's frames raw
/// until it closes: the frames as (opcode, payload), the last one a close if one came.
async fn raw_exchange(url: &str, bytes: &[u8]) -> Vec<(u8, Vec<u8>)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut ws = open_stream(url).await;
    let tokio_tungstenite::MaybeTlsStream::Plain(tcp) = ws.get_mut() else {
        panic!("a plain socket");
    };
    tcp.write_all(bytes).await.unwrap();
    let mut got = Vec::new();
    let _ = tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await;
    let mut frames = Vec::new();
    let mut at = 0;
    while at + 2 <= got.len() {
        let (opcode, short) = (got[at] & 0x0F, got[at + 1]);
        assert_eq!(short & 0x80, 0, "a server frame is never masked");
        let (len, header) = match short {
            126 => (
                usize::from(u16::from_be_bytes([got[at + 2], got[at + 3]])),
                4,
            ),
            127 => (
                u64::from_be_bytes(got[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        frames.push((opcode, got[at + header..at + header + len].to_vec()));
        at += header + len;
    }
    frames
}

fn close_code_of(frames: &[(u8, Vec<u8>)]) -> Option<u16> {
    match frames.last() {
        Some((0x8, payload)) if payload.len() >= 2 => {
            Some(u16::from_be_bytes([payload[0], payload[1]]))
        }
        _ => None,
    }
}

#[tokio::test]
async fn hostile_client_frames_over_a_raw_socket_get_their_close_codes_on_both_routes() {
    let h = Harness::builder()
        .config(|c| {
            c.stream.max_frame_bytes = 16 * 1024;
            // A conversation per case and route, from one client address.
            c.bot_mut().rate_limits.sessions.per_minute = 0;
        })
        .start()
        .await;
    let key = Some([0x37, 0xfa, 0x21, 0x3d]);
    let half = vec![b'x'; 10 * 1024];
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("unmasked", raw_frame(0x81, b"{}", None, None), 1002),
        (
            "a 64-bit length far over the limit, no payload sent",
            raw_frame(0x81, b"", key, Some(1 << 40)),
            1009,
        ),
        ("fragmented ping", raw_frame(0x09, b"", key, None), 1002),
        (
            "ping over 125 bytes",
            raw_frame(0x89, &[b'p'; 126], key, None),
            1002,
        ),
        (
            "close code 1004 (reserved)",
            raw_frame(0x88, &1004u16.to_be_bytes(), key, None),
            1002,
        ),
        (
            "close code 999",
            raw_frame(0x88, &999u16.to_be_bytes(), key, None),
            1002,
        ),
        (
            "close payload of one byte",
            raw_frame(0x88, b"x", key, None),
            1002,
        ),
        (
            "close reason not UTF-8",
            raw_frame(0x88, &[0x03, 0xe8, 0xff], key, None),
            1007,
        ),
        (
            "fragments together over the limit",
            [
                raw_frame(0x01, &half, key, None),
                raw_frame(0x80, &half, key, None),
            ]
            .concat(),
            1009,
        ),
        (
            "invalid UTF-8 in a first fragment",
            raw_frame(0x01, &[b'{', 0xc0, 0x80], key, None),
            1007,
        ),
        (
            "continuation with no first fragment",
            raw_frame(0x80, b"x", key, None),
            1002,
        ),
        (
            "a new message inside a fragmented one",
            [
                raw_frame(0x01, b"{", key, None),
                raw_frame(0x81, b"}", key, None),
            ]
            .concat(),
            1002,
        ),
        ("unknown opcode", raw_frame(0x83, b"", key, None), 1002),
        (
            "a close the client may send, answered with its own code",
            raw_frame(0x88, &4000u16.to_be_bytes(), key, None),
            4000,
        ),
    ];
    let mut wrong = Vec::new();
    for (name, bytes, code) in &cases {
        for multimodal_route in [false, true] {
            let conversation = h.conversation().await;
            let url = if multimodal_route {
                multimodal(&conversation.stream_url)
            } else {
                conversation.stream_url.clone()
            };
            let frames = raw_exchange(&url, bytes).await;
            if close_code_of(&frames) != Some(*code) {
                wrong.push(format!(
                    "{name} (multimodal: {multimodal_route}): {frames:?}"
                ));
            }
        }
    }
    assert!(wrong.is_empty(), "{wrong:#?}");
    let metrics = h.metrics().await;
    let refused = |reason: &str| {
        metric(
            &metrics,
            &format!(
                "directline_gateway_client_frames_refused_total{{bot=\"default\",reason=\"{reason}\"}}"
            ),
        )
    };
    let counted = |code: u16| 2.0 * cases.iter().filter(|c| c.2 == code).count() as f64;
    // On the multimodal route tungstenite answers a close code a client may not send with
    // 1002 as a close, not as an error: those two are not counted there.
    assert_eq!(refused("protocol"), counted(1002) - 2.0, "{metrics}");
    assert_eq!(refused("too_large"), counted(1009), "{metrics}");
    assert_eq!(refused("bad_utf8"), counted(1007), "{metrics}");
}

#[tokio::test]
async fn a_classic_client_gets_its_ping_payload_back_and_its_close_code_echoed() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let key = Some([9, 8, 7, 6]);
    let bytes = [
        raw_frame(0x89, b"are you there", key, None),
        raw_frame(0x8A, b"unasked pong", key, None),
        raw_frame(0x82, b"binary is ignored", key, None),
        raw_frame(0x81, b"", key, None),
        raw_frame(0x88, &[0x0f, 0xa0, b'b', b'y', b'e'], key, None),
    ]
    .concat();
    let frames = raw_exchange(&conversation.stream_url, &bytes).await;
    assert_eq!(
        frames,
        vec![
            (0xA, b"are you there".to_vec()),
            (0x8, vec![0x0f, 0xa0, b'b', b'y', b'e'])
        ],
        "a pong, then the close echoed (code 4000)"
    );
}

/// A client socket with a tiny receive buffer that never reads, so the gateway's writes to
/// it block once the kernel buffers are full.
async fn open_unread_stream(url: &str) -> support::Ws {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

#[tokio::test]
async fn a_client_that_stops_reading_is_closed_when_it_falls_behind_not_at_the_write_timeout() {
    let h = Harness::builder()
        .config(|c| {
            // Writes may block this long before the old cut-off: far past this test's wait.
            c.stream.liveness_timeout = Duration::from_secs(120);
            c.stream.keepalive_interval = Duration::from_secs(60);
            c.stream.client_lag_frames = 8;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let _stalled = open_unread_stream(&conversation.stream_url).await;
    let mut reader = open_stream(&conversation.stream_url).await;
    eventually("both sockets attached", async || {
        h.metrics()
            .await
            .contains("directline_gateway_client_websockets{bot=\"default\"} 2")
    })
    .await;
    // The reading client reads as frames come, the other never does.
    let reading = tokio::spawn(async move {
        let mut seen = Seen::default();
        read_until(&mut reader, &mut seen, |s| {
            s.texts().iter().filter(|t| t.starts_with("echo: ")).count() == 40
        })
        .await;
        seen
    });
    let text = "y".repeat(60 * 1024);
    for i in 0..40 {
        h.post_message(&conversation, &format!("{i}{text}")).await;
    }
    let seen = reading.await.unwrap();
    eventually("the stalled client was closed as slow", async || {
        let metrics = h.metrics().await;
        metric(&metrics, "directline_gateway_slow_clients_closed_total") >= 1.0
            && metrics.contains("directline_gateway_client_websockets{bot=\"default\"} 1")
    })
    .await;
    assert_eq!(seen.closed, None, "the reading client was never closed");
}

#[tokio::test]
async fn an_upstream_frame_too_large_to_read_closes_clients_with_1009_after_bounded_retries() {
    let h = Harness::builder()
        .config(|c| {
            c.stream.max_frame_bytes = 32 * 1024;
            c.limits.activity_body_bytes = 128 * 1024;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "small first").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: small first".to_owned())
    })
    .await;
    let reconnects_before = reconnect_gets(&h, &conversation.id);
    // Stored by Direct Line, but every stream from before it brings it back whole.
    h.post_message(&conversation, &"z".repeat(64 * 1024)).await;
    assert_eq!(close_code(&mut ws).await, Some(1009));
    let reconnects = reconnect_gets(&h, &conversation.id) - reconnects_before;
    assert!(
        (1..=3).contains(&reconnects),
        "{reconnects} reconnects for one poison frame"
    );
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_stream_drops_total{bot=\"default\",reason=\"frame_too_large\"}"
        ) >= 2.0,
        "{metrics}"
    );
    // And it stays quiet: the hub is gone, nothing dials again.
    let settled = reconnect_gets(&h, &conversation.id);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(reconnect_gets(&h, &conversation.id), settled);
}

fn reconnect_gets(h: &Harness, conversation: &str) -> usize {
    let path = format!("/v3/directline/conversations/{conversation}");
    h.emulator
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path == path)
        .count()
}

#[tokio::test]
async fn an_upstream_that_stops_answering_pings_is_resumed_before_the_liveness_timeout() {
    let builder = Harness::builder()
        .faults(Faults {
            stall_after_frames: Some(6),
            ..Faults::default()
        })
        .config(|c| {
            c.stream.keepalive_interval = Duration::from_millis(300);
            // The old detector alone would take this long: far past the test's wait.
            c.stream.liveness_timeout = Duration::from_secs(90);
            c.stream.pong_timeout = Duration::from_millis(500);
        });
    let h = builder.start().await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    for i in 0..8 {
        h.post_message(&conversation, &format!("m{i}")).await;
    }
    read_until(&mut ws, &mut seen, |s| {
        s.texts()
            .iter()
            .filter(|t| t.starts_with("echo: m"))
            .count()
            == 8
    })
    .await;
    seen.assert_no_duplicate_ids();
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_stream_drops_total{bot=\"default\",reason=\"no_pong\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

/// Resident memory of a process, from `/proc`.
fn rss_bytes(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .expect("VmRSS line");
    let kib: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kib * 1024
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Large activities on several conversations, each with a reading client, all within the
/// default rate limits: the gateway's memory stays within its ring budgets instead of
/// growing with the ring's frame count. `MEMORY_CONVERSATIONS`, `MEMORY_POSTS` and
/// `MEMORY_KB` scale it to the review's load (8 × 130 × 250); SECURITY.md has the figures.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ring_memory_is_bounded_by_bytes_under_large_activities() {
    let conversations = env_or("MEMORY_CONVERSATIONS", 4);
    let posts = env_or("MEMORY_POSTS", 60);
    let kb = env_or("MEMORY_KB", 200);
    let emulator = Harness::emulator(EmulatorConfig {
        secret: directline_emulator::Secret::new(support::SECRET),
        ..EmulatorConfig::default()
    })
    .await;
    let gateway = GatewayProcess::in_front_of(
        &emulator.base_url(),
        support::TOKEN_KEY,
        &[],
        &[("RUST_LOG", "warn")],
    );
    let pid = gateway.child.id();
    let h = Harness::attach(emulator, &gateway);
    let mut streams = Vec::new();
    for _ in 0..conversations {
        let conversation = h.conversation().await;
        let ws = open_stream(&conversation.stream_url).await;
        streams.push((conversation, ws, Seen::default()));
    }
    // Warm up the paths once, so the baseline has the allocator's working set.
    for (conversation, ws, seen) in &mut streams {
        h.post_message(conversation, "warm").await;
        read_until(ws, seen, |s| s.texts().contains(&"echo: warm".to_owned())).await;
    }
    let baseline = rss_bytes(pid);
    let text = "w".repeat(kb * 1000);
    for round in 0..posts {
        for (conversation, ws, seen) in &mut streams {
            h.post_message(conversation, &format!("{round}:{text}"))
                .await;
            let wanted = format!("echo: {round}:");
            read_until(ws, seen, |s| {
                s.texts().last().is_some_and(|t| t.starts_with(&wanted))
            })
            .await;
        }
    }
    let after = rss_bytes(pid);
    let metrics = h.metrics().await;
    let rings = metric(&metrics, "directline_gateway_stream_buffer_bytes");
    let grown = after.saturating_sub(baseline);
    eprintln!(
        "ring memory: {conversations} conversations x {posts} posts x {kb} KB: RSS {:.1} MB -> {:.1} MB (+{:.1} MB), rings {:.1} MB",
        baseline as f64 / 1e6,
        after as f64 / 1e6,
        grown as f64 / 1e6,
        rings / 1e6
    );
    // Per conversation: stream.buffer_bytes (1 MiB) plus at most one newest frame.
    let ring_bound = conversations as f64 * (1024.0 * 1024.0 + 2.0 * kb as f64 * 1000.0);
    assert!(rings <= ring_bound, "rings hold {rings} bytes");
    // Rings plus per-socket buffers and allocator slack; the frame-count ring alone held
    // conversations x 2 x posts x kb (96 MB at the defaults here).
    assert!(
        (grown as f64) < ring_bound + 24e6,
        "RSS grew by {grown} bytes; rings {rings}"
    );
    for (_, _, seen) in &streams {
        seen.assert_no_duplicate_ids();
    }
}
