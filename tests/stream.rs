//! The WebSocket bridge end to end: frames, drops, resume, fan-out, refusals.

mod support;

use std::time::Duration;

use directline_emulator::Faults;
use directline_gateway::clock;
use directline_gateway::seal::{Purpose, Sealer, StreamTicket};
use http::Method;
use support::*;

/// Every user message and its echo, as the client should see them.
fn expected_texts(messages: &[String]) -> Vec<String> {
    messages
        .iter()
        .flat_map(|m| [m.clone(), format!("echo: {m}")])
        .collect()
}

/// Posts `count` messages and checks every client socket sees each message and echo once,
/// in order, without ever being closed. The sockets stay open in the returned value.
async fn run_conversation(
    faults: Faults,
    count: usize,
    clients: usize,
) -> (Harness, Vec<(Ws, Seen)>) {
    run_conversation_with(Harness::builder().faults(faults), count, clients).await
}

async fn run_conversation_with(
    builder: Builder,
    count: usize,
    clients: usize,
) -> (Harness, Vec<(Ws, Seen)>) {
    let h = builder.start().await;
    let conversation = h.conversation().await;
    let mut sockets = Vec::new();
    for _ in 0..clients {
        sockets.push((open_stream(&conversation.stream_url).await, Seen::default()));
    }
    let messages: Vec<String> = (0..count).map(|i| format!("message {i}")).collect();
    for (i, text) in messages.iter().enumerate() {
        h.post_message(&conversation, text).await;
        if i % 25 == 0 {
            client_keepalive(&mut sockets[0].0).await;
        }
    }
    let expected = expected_texts(&messages);
    for (ws, seen) in &mut sockets {
        read_until(ws, seen, |s| s.texts().len() >= expected.len()).await;
        assert_eq!(seen.closed, None, "the client socket was closed");
        assert_eq!(seen.texts(), expected);
        seen.assert_no_duplicate_ids();
    }
    (h, sockets)
}

#[tokio::test]
async fn messages_posted_before_the_socket_opens_arrive() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let early: Vec<String> = (0..3).map(|i| format!("early {i}")).collect();
    for text in &early {
        h.post_message(&conversation, text).await;
    }
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "late").await;
    let mut all = early.clone();
    all.push("late".into());
    let expected = expected_texts(&all);
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= expected.len()).await;
    assert_eq!(seen.texts(), expected);
    seen.assert_no_duplicate_ids();
}

#[tokio::test]
async fn no_faults_two_clients() {
    let (h, _sockets) = run_conversation(Faults::default(), 100, 2).await;
    let metrics = h.metrics().await;
    assert!(
        metrics.contains("directline_gateway_activities_relayed_total{bot=\"default\"} 200"),
        "{metrics}"
    );
    assert!(
        metrics.contains("directline_gateway_client_websockets{bot=\"default\"} 2"),
        "{metrics}"
    );
    assert!(
        metrics.contains("directline_gateway_upstream_websockets{bot=\"default\"} 1"),
        "one upstream socket per conversation"
    );
}

#[tokio::test]
async fn drop_every_few_frames() {
    let (h, _sockets) = run_conversation(
        Faults {
            drop_after_frames: Some(3),
            ..Faults::default()
        },
        120,
        2,
    )
    .await;
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"ok\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        h.emulator.stream_connects() > 30,
        "the emulator dropped and the gateway resumed many times"
    );
}

#[tokio::test]
async fn drops_with_batched_frames() {
    run_conversation(
        Faults {
            drop_after_frames: Some(2),
            batch: true,
            ..Faults::default()
        },
        100,
        2,
    )
    .await;
}

#[tokio::test]
async fn drops_with_whole_history_replays() {
    let (h, _sockets) = run_conversation(
        Faults {
            drop_after_frames: Some(4),
            replay_history: true,
            ..Faults::default()
        },
        100,
        2,
    )
    .await;
    let metrics = h.metrics().await;
    let dropped: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("directline_gateway_duplicates_dropped_total "))
        .and_then(|v| v.trim().parse().ok())
        .unwrap();
    assert!(
        dropped > 100,
        "whole-history replays were deduplicated ({dropped})"
    );
}

#[tokio::test]
async fn drops_with_failing_reconnects() {
    run_conversation(
        Faults {
            drop_after_frames: Some(5),
            fail_reconnects: 3,
            ..Faults::default()
        },
        100,
        2,
    )
    .await;
}

#[tokio::test]
async fn drops_under_enhanced_authentication() {
    run_conversation(
        Faults {
            drop_after_frames: Some(3),
            enhanced_auth: true,
            ..Faults::default()
        },
        100,
        2,
    )
    .await;
}

#[tokio::test]
async fn stalled_stream_is_detected_and_resumed() {
    let builder = Harness::builder()
        .faults(Faults {
            stall_after_frames: Some(40),
            ..Faults::default()
        })
        .config(|c| {
            c.stream.keepalive_interval = Duration::from_millis(200);
            c.stream.liveness_timeout = Duration::from_millis(800);
        });
    let (h, _sockets) = run_conversation_with(builder, 100, 1).await;
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"ok\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn typing_is_forwarded_live_across_drops() {
    let h = Harness::builder()
        .faults(Faults {
            drop_after_frames: Some(4),
            typing: true,
            ..Faults::default()
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let messages: Vec<String> = (0..100).map(|i| format!("m{i}")).collect();
    for text in &messages {
        h.post_message(&conversation, text).await;
    }
    let expected = expected_texts(&messages);
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= expected.len()).await;
    assert_eq!(seen.texts(), expected);
    assert_eq!(seen.closed, None);
    assert!(
        seen.frames_without_watermark > 0,
        "typing frames carry no watermark and still reach the client"
    );
    assert!(seen.activities.iter().any(|a| a["type"] == "typing"));
}

#[tokio::test]
async fn client_resume_from_the_hub_buffer() {
    let h = Harness::builder()
        .config(|c| c.stream.linger = Duration::from_secs(30))
        .start()
        .await;
    let (conversation, mut ws, seen) = h.exchanged().await;
    let watermark = seen.watermark.clone().unwrap();
    ws.close(None).await.unwrap();
    for text in ["after 1", "after 2"] {
        h.post_message(&conversation, text).await;
    }
    let resumed = h.reconnect(&conversation, Some(&watermark)).await;
    let mut ws = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    let mut again = Seen::default();
    read_until(&mut ws, &mut again, |s| s.texts().len() >= 4).await;
    assert_eq!(
        again.texts(),
        ["after 1", "echo: after 1", "after 2", "echo: after 2"]
    );
    again.assert_no_duplicate_ids();
    assert!(
        metric(
            &h.metrics().await,
            "directline_gateway_client_resumes_total{source=\"buffer\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn client_resume_after_the_hub_is_gone() {
    let h = Harness::start().await;
    let (conversation, mut ws, seen) = h.exchanged().await;
    let watermark = seen.watermark.clone().unwrap();
    ws.close(None).await.unwrap();
    eventually("the idle hub retires after its linger", async || {
        h.metrics()
            .await
            .contains("directline_gateway_stream_hubs 0")
    })
    .await;
    h.post_message(&conversation, "while away").await;
    let resumed = h.reconnect(&conversation, Some(&watermark)).await;
    let mut ws = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    let mut again = Seen::default();
    read_until(&mut ws, &mut again, |s| s.texts().len() >= 2).await;
    h.post_message(&conversation, "live").await;
    read_until(&mut ws, &mut again, |s| s.texts().len() >= 4).await;
    assert_eq!(
        again.texts(),
        ["while away", "echo: while away", "live", "echo: live"]
    );
}

#[tokio::test]
async fn client_resume_older_than_the_buffer_catches_up_from_upstream() {
    let h = Harness::builder()
        .config(|c| c.stream.buffer_frames = 4)
        .start()
        .await;
    let conversation = h.conversation().await;
    // A second client keeps the hub alive while the first is away.
    let mut keeper = open_stream(&conversation.stream_url).await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "before").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;
    let watermark = seen.watermark.clone().unwrap();
    ws.close(None).await.unwrap();
    let away: Vec<String> = (0..6).map(|i| format!("away {i}")).collect();
    for text in &away {
        h.post_message(&conversation, text).await;
    }
    let mut keeper_seen = Seen::default();
    read_until(&mut keeper, &mut keeper_seen, |s| s.texts().len() >= 14).await;
    let resumed = h.reconnect(&conversation, Some(&watermark)).await;
    let mut ws = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    let mut again = Seen::default();
    h.post_message(&conversation, "live").await;
    let mut all = away.clone();
    all.push("live".into());
    let expected = expected_texts(&all);
    read_until(&mut ws, &mut again, |s| s.texts().len() >= expected.len()).await;
    assert_eq!(again.texts(), expected);
    again.assert_no_duplicate_ids();
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_client_resumes_total{source=\"catch_up\"}"
        ) >= 1.0
    );
    // The catch-up's GETs go through the one upstream call path, so they are measured.
    assert!(
        metric(
            &metrics,
            r#"directline_gateway_upstream_requests_total{route="stream_catch_up",status="2xx",bot="default"}"#
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn resume_budget_exhausted_closes_clients_with_1011() {
    let h = Harness::builder()
        .faults(Faults {
            drop_after_frames: Some(1),
            ..Faults::default()
        })
        .config(|c| c.stream.resume_budget = Duration::from_millis(800))
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    h.emulator.faults().set_fail_reconnects(1_000_000);
    h.post_message(&conversation, "one").await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.closed.is_some()).await;
    assert_eq!(seen.closed, Some(Some(1011)));
    assert!(h.metrics().await.contains(
        "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"exhausted\"} 1"
    ));
}

#[tokio::test]
async fn drain_closes_clients_with_1001() {
    // drain_period 0: closed at once, as before drains waited (tests/drain.rs has the rest).
    let mut h = Harness::builder()
        .config(|c| c.stream.drain_period = Duration::ZERO)
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    h.post_message(&conversation, "hi").await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;
    h.stop_gateway().await;
    read_until(&mut ws, &mut seen, |s| s.closed.is_some()).await;
    assert_eq!(seen.closed, Some(Some(1001)));
}

#[tokio::test]
async fn bad_tickets_are_refused_before_upgrade() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let other = h.conversation().await;
    let sealer = Sealer::new(TOKEN_KEY, &[]).unwrap();
    let expired = sealer.seal(
        Purpose::StreamTicket,
        &StreamTicket {
            bot: "default".into(),
            conversation_id: conversation.id.clone(),
            user_id: "dl_x".into(),
            watermark: None,
            upstream_stream_url: None,
            upstream_token: "x".into(),
            issued_at_ms: clock::unix_millis() - 120_000,
            expires_at: clock::unix_seconds() - 60,
            from_start: true,
            name: None,
        },
    );
    let base = h.gateway().client_addr;
    let other_ticket = other.stream_url.split("&t=").nth(1).unwrap().to_owned();
    let urls = [
        format!(
            "ws://{base}/v3/directline/conversations/{}/stream?watermark=-&t={expired}",
            conversation.id
        ),
        format!(
            "ws://{base}/v3/directline/conversations/{}/stream?watermark=-&t={other_ticket}",
            conversation.id
        ),
        format!(
            "ws://{base}/v3/directline/conversations/{}/stream?watermark=-&t={}",
            conversation.id, conversation.token
        ),
        format!(
            "ws://{base}/v3/directline/conversations/{}/stream?watermark=-&t=forged",
            conversation.id
        ),
        format!(
            "ws://{base}/v3/directline/conversations/{}/stream",
            conversation.id
        ),
    ];
    for url in urls {
        match tokio_tungstenite::connect_async(&url).await {
            Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
                assert_eq!(response.status(), 403, "{url}")
            }
            other => panic!("{url}: expected a 403, got {:?}", other.map(|_| ())),
        }
    }
    // A plain GET on the stream route with a valid ticket is not an upgrade.
    let path = conversation
        .stream_url
        .split_once(&base.to_string())
        .unwrap()
        .1
        .to_owned();
    let reply = h.request(Method::GET, &path, None, None).await;
    assert_eq!(reply.status, 426);
    assert_eq!(reply.error_code(), "UpgradeRequired");
}

#[tokio::test]
async fn socket_cap_per_conversation_is_enforced_before_upgrade() {
    let h = Harness::builder()
        .config(|c| c.stream.max_sockets_per_conversation = 2)
        .start()
        .await;
    let conversation = h.conversation().await;
    let _first = open_stream(&conversation.stream_url).await;
    let _second = open_stream(&conversation.stream_url).await;
    eventually("both sockets attached", async || {
        h.metrics()
            .await
            .contains("directline_gateway_client_websockets{bot=\"default\"} 2")
    })
    .await;
    match tokio_tungstenite::connect_async(&conversation.stream_url).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 429)
        }
        other => panic!("expected 429, got {:?}", other.map(|_| ())),
    }
}

#[tokio::test]
async fn multimodal_stream_passes_client_frames_upstream() {
    use futures_util::SinkExt;
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let (path, query) = conversation.stream_url.split_once('?').unwrap();
    let url = format!("{path}/multimodal?{query}");
    let mut ws = open_stream(&url).await;
    let activity = serde_json::json!({"type": "message", "from": {"id": "u"}, "text": "spoken"});
    ws.send(tokio_tungstenite::tungstenite::Message::Text(
        activity.to_string().into(),
    ))
    .await
    .unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: spoken".to_owned())
    })
    .await;
    assert_eq!(seen.closed, None);
    assert!(
        h.emulator
            .activities(&conversation.id)
            .iter()
            .any(|a| a["text"] == "spoken")
    );
}

#[tokio::test]
async fn conversation_gone_upstream_closes_clients_with_a_reason() {
    let h = Harness::start().await;
    let (conversation, mut ws, mut seen) = h.exchanged().await;
    // Hold the gateway's resume on 502s until the conversation is gone, then let it see 404.
    h.emulator.faults().set_fail_reconnects(1_000_000);
    h.emulator.faults().set_drop_after_frames(Some(1));
    h.emulator
        .send_bot_message(&conversation.id, "last")
        .unwrap();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"last".to_owned())
    })
    .await;
    assert!(h.emulator.end_conversation(&conversation.id));
    read_until(&mut ws, &mut seen, |s| s.closed.is_some()).await;
    assert_eq!(seen.closed, Some(Some(1000)));
    assert!(h.metrics().await.contains(
        "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"gone\"} 1"
    ));
}

#[tokio::test]
async fn client_pings_are_answered() {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    ws.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    let pong = tokio::time::timeout(WAIT, async {
        loop {
            match ws.next().await {
                Some(Ok(Message::Pong(payload))) => return payload,
                Some(Ok(_)) => continue,
                other => panic!("stream ended before a pong: {other:?}"),
            }
        }
    })
    .await
    .expect("pong in time");
    assert_eq!(&pong[..], b"are you there");
}

#[tokio::test]
async fn stale_upstream_stream_url_is_fetched_again() {
    let h = Harness::start().await;
    let (conversation, mut ws, mut seen) = h.exchanged().await;
    // The next upstream handshake is refused as stale: the gateway must fetch a new URL.
    h.emulator.faults().set_refuse_streams(1);
    h.emulator.faults().set_drop_after_frames(Some(1));
    h.emulator
        .send_bot_message(&conversation.id, "drop after me")
        .unwrap();
    // Only once the frame is out may the fault be cleared, or the drop may not happen.
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 3).await;
    h.emulator.faults().set_drop_after_frames(None);
    h.post_message(&conversation, "after").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 5).await;
    assert_eq!(
        seen.texts(),
        [
            "before",
            "echo: before",
            "drop after me",
            "after",
            "echo: after"
        ]
    );
    assert_eq!(seen.closed, None);
    let refused = h
        .emulator
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/stream") && r.status == 403)
        .count();
    assert_eq!(refused, 1, "one stale handshake");
}

#[tokio::test]
async fn start_gap_survives_a_refused_first_upstream_handshake() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    h.post_message(&conversation, "early").await;
    // The sealed first stream URL is refused; the hub must not lose "early".
    h.emulator.faults().set_refuse_streams(1);
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "late").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 4).await;
    assert_eq!(seen.texts(), ["early", "echo: early", "late", "echo: late"]);
    seen.assert_no_duplicate_ids();
    assert_eq!(seen.closed, None);
}

#[tokio::test]
async fn a_refreshed_upstream_token_reaches_the_hub() {
    use directline_gateway::endpoint::ConversationId;
    use directline_gateway::seal::ClientToken;
    let h = Harness::builder()
        .faults(Faults {
            enhanced_auth: true,
            ..Faults::default()
        })
        .config(|c| c.upstream_refresh_before = Duration::from_secs(3700))
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "hi").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;
    let id = ConversationId::parse(&conversation.id).unwrap();
    let sealer = Sealer::new(TOKEN_KEY, &[]).unwrap();
    let before: ClientToken = sealer
        .open(Purpose::ClientToken, &conversation.token)
        .unwrap();
    assert_eq!(
        h.gateway()
            .gateway
            .hubs
            .upstream_token(&"default".into(), &id)
            .as_deref(),
        Some(before.upstream_token.as_str())
    );
    let reply = h.refresh(&conversation.token).await;
    let after: ClientToken = sealer
        .open(
            Purpose::ClientToken,
            reply.json()["token"].as_str().unwrap(),
        )
        .unwrap();
    assert_ne!(after.upstream_token, before.upstream_token);
    assert_eq!(
        h.gateway()
            .gateway
            .hubs
            .upstream_token(&"default".into(), &id)
            .as_deref(),
        Some(after.upstream_token.as_str())
    );
    // And the stream keeps working across a drop, resumed with that token (enhanced auth).
    h.emulator.faults().set_drop_after_frames(Some(1));
    h.post_message(&conversation, "across a drop").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 4).await;
    assert_eq!(seen.closed, None);
}

/// A client resuming by watermark after its conversation's hub has closed gets a fresh hub;
/// when upstream then replays the whole history (the 2021 regression), the client must
/// still get only what it did not have.
#[tokio::test]
async fn a_fresh_hub_for_a_resuming_client_drops_a_whole_history_replay() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "one").await;
    h.post_message(&conversation, "two").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 4).await;
    let watermark = seen.watermark.clone().expect("frames carried a watermark");
    ws.close(None).await.unwrap();
    drop(ws);
    eventually("the hub closed after its linger", async || {
        h.metrics()
            .await
            .lines()
            .any(|l| l == "directline_gateway_stream_hubs 0")
    })
    .await;

    h.emulator.faults().set_replay_history(true);
    h.post_message(&conversation, "three").await;
    let resumed = h.reconnect(&conversation, Some(&watermark)).await;
    let mut ws = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    let mut later = Seen::default();
    read_until(&mut ws, &mut later, |s| s.texts().len() >= 2).await;
    h.post_message(&conversation, "four").await;
    read_until(&mut ws, &mut later, |s| s.texts().len() >= 4).await;
    assert_eq!(
        later.texts(),
        ["three", "echo: three", "four", "echo: four"]
    );
    later.assert_no_duplicate_ids();
}

/// Thread per core (`workers`): each new connection goes to the worker serving the fewest,
/// WebSockets included, and every worker relays its own conversations.
#[tokio::test]
async fn client_sockets_spread_over_the_workers_and_each_relays() {
    let h = Harness::builder().config(|c| c.workers = 2).start().await;
    let running = h.gateway.as_ref().expect("running");
    let mut streams = Vec::new();
    for _ in 0..6 {
        let conversation = h.conversation().await;
        let ws = open_stream(&conversation.stream_url).await;
        streams.push((conversation, ws, Seen::default()));
    }
    let loads = running.worker_loads();
    assert_eq!(loads.len(), 2);
    assert!(
        loads.iter().sum::<usize>() >= 6,
        "six sockets (and the REST connections) are counted: {loads:?}"
    );
    assert!(
        loads[0].abs_diff(loads[1]) <= 1,
        "connections opened one after another alternate: {loads:?}"
    );
    let metrics = h.metrics().await;
    let gauges = [
        metric(
            &metrics,
            "directline_gateway_worker_connections{worker=\"0\"}",
        ),
        metric(
            &metrics,
            "directline_gateway_worker_connections{worker=\"1\"}",
        ),
    ];
    assert!(
        gauges[0] >= 3.0 && gauges[1] >= 3.0,
        "the gauge counts each worker's sockets: {gauges:?} for {loads:?}"
    );
    for (conversation, ws, seen) in &mut streams {
        h.post_message(conversation, "hello").await;
        read_until(ws, seen, |s| s.texts().len() >= 2).await;
        assert_eq!(seen.texts(), ["hello", "echo: hello"]);
    }
    drop(streams);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while running.worker_loads().iter().sum::<usize>() > loads.iter().sum::<usize>() - 6 {
        assert!(
            std::time::Instant::now() < deadline,
            "closed sockets give their places back: {:?}",
            running.worker_loads()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
