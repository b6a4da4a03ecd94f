//! SIGTERM's stream half (ARCHITECTURE §5): readiness false and the listener closed at once, open
//! client sockets served (upstream resumes included) for `stream.drain_period`, then the
//! rest closed with 1001 over `stream.drain_spread`.

mod support;

use std::time::Duration;

use directline_emulator::Faults;
use http::{Method, StatusCode};
use serde_json::json;
use support::*;

/// Posts `text` straight to the emulator with the secret, as another replica would for the
/// user while this one drains (this one no longer accepts connections).
async fn post_upstream(h: &Harness, conversation: &Conversation, text: &str) {
    let request = api_request(
        http::Request::builder().method(Method::POST).uri(format!(
            "{}/v3/directline/conversations/{}/activities",
            h.emulator.base_url(),
            conversation.id
        )),
        Some(SECRET),
        Some(json!({"type": "message", "from": {"id": "dl_drain"}, "text": text})),
    );
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_streams_are_served_with_upstream_resumes_during_the_drain_period() {
    let mut h = Harness::builder()
        // Every second frame the upstream stream drops: resumes must go on during the drain.
        .faults(Faults {
            drop_after_frames: Some(2),
            ..Faults::default()
        })
        .config(|c| c.stream.drain_period = Duration::from_secs(300))
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "before").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: before".into())
    })
    .await;
    let client_addr = h.gateway().client_addr;
    let drain = h.begin_drain();

    // Readiness false at once, and still answered: the admin listener outlives the drain.
    eventually("readiness 503", async || {
        h.admin_get("/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    assert_eq!(h.admin_get("/healthz").await.status, StatusCode::OK);
    // The client listener is closed: new connections go to other replicas.
    eventually("the client listener closed", async || {
        tokio::net::TcpStream::connect(client_addr).await.is_err()
    })
    .await;
    let resumes_before = metric(
        &h.metrics().await,
        "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"ok\"}",
    );

    // The open socket keeps getting the bot's answers, across upstream drops.
    for n in 0..4 {
        post_upstream(&h, &conversation, &format!("during {n}")).await;
        read_until(&mut ws, &mut seen, |s| {
            s.texts().contains(&format!("echo: during {n}"))
        })
        .await;
    }
    assert_eq!(seen.closed, None, "the socket stayed open");
    seen.assert_no_duplicate_ids();
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"ok\"}"
        ) > resumes_before,
        "upstream resumed during the drain: {metrics}"
    );
    assert_eq!(
        metric(&metrics, "directline_gateway_drain_closed_websockets_total"),
        0.0
    );
    drain.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_drain_period_every_remaining_socket_is_closed_with_1001_over_the_spread() {
    let mut h = Harness::builder()
        .config(|c| {
            c.stream.drain_period = Duration::ZERO;
            c.stream.drain_spread = Duration::from_secs(1);
        })
        .start()
        .await;
    let mut sockets = Vec::new();
    for _ in 0..3 {
        let conversation = h.conversation().await;
        let ws = open_stream(&conversation.stream_url).await;
        sockets.push((conversation, ws, Seen::default()));
    }
    for (conversation, ws, seen) in &mut sockets {
        h.post_message(conversation, "hi").await;
        read_until(ws, seen, |s| s.texts().len() >= 2).await;
    }
    let drain = h.begin_drain();
    for (_, ws, seen) in &mut sockets {
        read_until(ws, seen, |s| s.closed.is_some()).await;
        assert_eq!(seen.closed, Some(Some(1001)));
    }
    tokio::time::timeout(WAIT, drain)
        .await
        .expect("the drain ends")
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_ends_as_soon_as_the_last_client_socket_has_gone() {
    let mut h = Harness::builder()
        .config(|c| c.stream.drain_period = Duration::from_secs(300))
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "hi").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;
    let drain = h.begin_drain();
    eventually("readiness 503", async || {
        h.admin_get("/readyz").await.status == StatusCode::SERVICE_UNAVAILABLE
    })
    .await;
    // The user closes the tab: nothing is left to wait for.
    ws.close(None).await.unwrap();
    tokio::time::timeout(WAIT, drain)
        .await
        .expect("the drain ends long before its 300 s")
        .unwrap();
}
