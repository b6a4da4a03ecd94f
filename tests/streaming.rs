//! Livestreamed answers end to end (ARCHITECTURE §14): `delivery_mode`, interims relayed in
//! order with one final, slow readers given the newest interim, hostile interims.

mod support;

use std::time::Duration;

use directline_emulator::Faults;
use directline_gateway::config::Config;
use directline_gateway::config::DeliveryMode;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::*;

/// The stream fields of an activity, from its `streaminfo` entity or its `channelData`.
fn stream_fields(activity: &Value) -> Option<Value> {
    activity["entities"]
        .as_array()
        .and_then(|entities| entities.iter().find(|e| e["type"] == "streaminfo"))
        .or_else(|| activity.get("channelData"))
        .filter(|fields| fields.get("streamType").is_some())
        .cloned()
}

fn is_final(activity: &Value) -> bool {
    activity["type"] == "message"
        && stream_fields(activity).is_some_and(|fields| fields["streamType"] == "final")
}

fn interims(seen: &Seen) -> Vec<&Value> {
    seen.activities
        .iter()
        .filter(|a| a["type"] == "typing" && stream_fields(a).is_some())
        .collect()
}

fn finals(seen: &Seen) -> Vec<&Value> {
    seen.activities.iter().filter(|a| is_final(a)).collect()
}

/// Posts a message with `deliveryMode` when given.
async fn post(h: &Harness, conversation: &Conversation, text: &str, mode: Option<&str>) {
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let mut body = json!({"type": "message", "from": {"id": "user"}, "text": text});
    if let Some(mode) = mode {
        body["deliveryMode"] = Value::from(mode);
    }
    let reply = h
        .request(Method::POST, &path, Some(&conversation.token), Some(body))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

/// Every interim of one stream arrived in `streamSequence` order, with cumulative text,
/// and none after the final.
fn assert_stream_order(seen: &Seen) {
    let mut last_sequence = 0;
    let mut finished = false;
    for activity in &seen.activities {
        let Some(fields) = stream_fields(activity) else {
            continue;
        };
        if is_final(activity) {
            assert!(!finished, "a second final: {activity}");
            finished = true;
            continue;
        }
        assert!(!finished, "an interim after its final: {activity}");
        let sequence = fields["streamSequence"].as_u64().expect("sequence");
        assert!(
            sequence > last_sequence,
            "out of order: {sequence} after {last_sequence}"
        );
        let words = activity["text"].as_str().expect("text").split(' ').count() as u64;
        assert_eq!(words, sequence, "cumulative text");
        last_sequence = sequence;
    }
}

#[tokio::test]
async fn delivery_mode_stream_asks_for_streaming_and_an_explicit_value_is_kept() {
    let h = Harness::builder()
        .faults(Faults {
            stream_interval: Duration::from_millis(2),
            ..Faults::default()
        })
        .config(|config| config.bot_mut().delivery_mode = DeliveryMode::Stream)
        .start()
        .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();

    // No deliveryMode from the client: the gateway adds "stream", the bot livestreams.
    post(&h, &conversation, "stream 5", None).await;
    read_until(&mut ws, &mut seen, |s| finals(s).len() == 1).await;
    // A newer interim replaces one the client task has not taken yet, so a fast reader
    // may still miss some: at least one arrives, in order.
    assert!(!interims(&seen).is_empty(), "{:?}", seen.activities);
    assert_stream_order(&seen);
    let answer = finals(&seen)[0].clone();
    assert_eq!(answer["text"], "w1 w2 w3 w4 w5");
    let first = interims(&seen)[0];
    let stream_id = stream_fields(first).expect("fields")["streamId"]
        .as_str()
        .or(first["id"].as_str())
        .expect("stream id")
        .to_owned();
    assert_eq!(
        stream_fields(&answer).expect("fields")["streamId"],
        stream_id
    );

    let streamed = interims(&seen).len();
    // The client says "normal": kept, so the bot answers with the final alone.
    post(&h, &conversation, "stream 3", Some("normal")).await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "w1 w2 w3")
    })
    .await;
    assert_eq!(
        interims(&seen).len(),
        streamed,
        "no interims for a normal delivery"
    );

    let posted: Vec<Value> = h
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .filter_map(|r| r.body)
        .collect();
    assert_eq!(posted[0]["deliveryMode"], "stream");
    assert_eq!(posted[1]["deliveryMode"], "normal");
}

#[tokio::test]
async fn without_delivery_mode_activities_pass_as_written() {
    let h = Harness::builder().start().await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    post(&h, &conversation, "stream 3", None).await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "w1 w2 w3")
    })
    .await;
    assert!(interims(&seen).is_empty());
    let posted = h
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .and_then(|r| r.body)
        .expect("posted");
    assert!(posted.get("deliveryMode").is_none(), "{posted}");
}

/// A harness whose bot livestreams `stream N` answers `interval` apart, for every client.
async fn streaming_harness(interval: Duration, edit: impl FnOnce(&mut Config)) -> Harness {
    Harness::builder()
        .faults(Faults {
            stream_interval: interval,
            ..Faults::default()
        })
        .config(|config| {
            config.bot_mut().delivery_mode = DeliveryMode::Stream;
            edit(config);
        })
        .start()
        .await
}

#[tokio::test]
async fn an_upstream_drop_mid_answer_gives_the_final_once_and_no_interim_after_it() {
    let h = streaming_harness(Duration::from_millis(10), |_| {}).await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    post(&h, &conversation, "stream 60", None).await;
    read_until(&mut ws, &mut seen, |s| interims(s).len() >= 5).await;
    h.emulator.drop_all_streams();
    read_until(&mut ws, &mut seen, |s| finals(s).len() == 1).await;
    // Anything still coming (a replayed final) must not be a second final or an interim.
    post(&h, &conversation, "after", Some("normal")).await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "echo: after")
    })
    .await;
    assert_eq!(seen.closed, None, "the client socket was kept");
    assert_eq!(finals(&seen).len(), 1);
    assert_stream_order(&seen);
    assert_eq!(
        finals(&seen)[0]["text"]
            .as_str()
            .map(|t| t.split(' ').count()),
        Some(60)
    );
    seen.assert_no_duplicate_ids();
    let text = h.metrics().await;
    assert_eq!(
        metric(&text, "directline_gateway_streams_finalized_total"),
        1.0
    );
    assert!(metric(&text, "directline_gateway_stream_interims_relayed_total") >= 5.0);
}

/// A client socket with a small receive buffer, so what it does not read backs up in the
/// gateway quickly (as on a slow mobile link) rather than in a large loopback window.
async fn open_small_window_stream(url: &str) -> Ws {
    let parsed = url::Url::parse(url).expect("url");
    let addr = format!(
        "{}:{}",
        parsed.host_str().expect("host"),
        parsed.port().expect("port")
    );
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("rcvbuf");
    let tcp = socket
        .connect(addr.parse().expect("addr"))
        .await
        .expect("connect");
    let (ws, _) = tokio::time::timeout(
        WAIT,
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(tcp)),
    )
    .await
    .expect("upgrade in time")
    .expect("upgrade");
    ws
}

#[tokio::test]
async fn a_client_that_stops_reading_during_16_answers_keeps_its_socket_and_gets_each_final_once() {
    const ANSWERS: usize = 16;
    const CHUNKS: usize = 200;
    let h = streaming_harness(Duration::from_millis(1), |config| {
        // Far fewer stored frames than interims: a client behind on interims alone is not
        // closed, whatever this says.
        config.stream.client_lag_frames = 64;
        // A write blocked longer than this counts the client dead; this one only pauses.
        config.stream.liveness_timeout = Duration::from_secs(60);
    })
    .await;
    let conversation = h.conversation().await;
    let mut ws = open_small_window_stream(&conversation.stream_url).await;
    let baseline = metric(&h.metrics().await, "directline_gateway_stream_buffer_bytes");
    for _ in 0..ANSWERS {
        post(&h, &conversation, &format!("stream {CHUNKS}"), None).await;
    }
    // Not reading: wait until the bot has finished every answer.
    eventually("every final stored upstream", async || {
        h.emulator
            .activities(&conversation.id)
            .iter()
            .filter(|a| a["type"] == "message" && a["from"]["role"] == "bot")
            .count()
            == ANSWERS
    })
    .await;
    eventually("every final relayed", async || {
        let text = h.metrics().await;
        let finalized = metric(&text, "directline_gateway_streams_finalized_total");
        eprintln!("finalized {finalized}");
        finalized == ANSWERS as f64
    })
    .await;
    let metrics = h.metrics().await;
    let ring = metric(&metrics, "directline_gateway_stream_buffer_bytes") - baseline;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| finals(s).len() == ANSWERS).await;
    assert_eq!(seen.closed, None, "kept its socket");
    assert_stream_order_per_stream(&seen);
    let delivered = interims(&seen).len();
    eprintln!(
        "interims delivered to the stalled reader: {delivered} of {}; ring bytes {ring}",
        ANSWERS * CHUNKS
    );
    assert!(
        delivered < ANSWERS * CHUNKS / 10,
        "{delivered} interims delivered"
    );
    // What the gateway holds for this conversation once the answers are done: stored frames
    // (the 16 finals and the 16 user messages), no interims. Each final is ~1.5 KB here.
    assert!(ring < 128.0 * 1024.0, "ring holds {ring} bytes");
    // Counted when the client task moves past the interims it skipped, which it cannot while
    // its write is blocked: read once the client has read everything.
    let coalesced = metric(
        &h.metrics().await,
        "directline_gateway_stream_interims_coalesced_total",
    );
    assert!(coalesced > 0.0);
}

/// Per stream: sequences rise, text is cumulative, nothing after the final, one final.
fn assert_stream_order_per_stream(seen: &Seen) {
    let mut streams: std::collections::HashMap<String, (u64, bool)> = Default::default();
    for activity in &seen.activities {
        let Some(fields) = stream_fields(activity) else {
            continue;
        };
        let id = fields["streamId"]
            .as_str()
            .or(activity["id"].as_str())
            .expect("stream id")
            .to_owned();
        let entry = streams.entry(id).or_insert((0, false));
        assert!(!entry.1, "after its final: {activity}");
        if is_final(activity) {
            entry.1 = true;
            continue;
        }
        let sequence = fields["streamSequence"].as_u64().expect("sequence");
        assert!(sequence > entry.0, "out of order: {activity}");
        entry.0 = sequence;
    }
    assert!(streams.values().all(|(_, done)| *done));
}

#[tokio::test]
async fn hostile_interims_are_relayed_or_dropped_by_the_rule_and_never_pile_up() {
    let h = Harness::builder().start().await;
    let conversation = h.conversation().await;
    let other = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "hello").await;
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 2).await;
    let id = &conversation.id;
    let interim = |n: u64, sequence: Value, stream: &str| {
        json!({"type": "typing", "id": format!("{id}|h{n}"), "text": format!("t{n}"),
               "entities": [{"type": "streaminfo", "streamType": "streaming",
                             "streamSequence": sequence, "streamId": stream}]})
    };
    let send = |activity: Value| assert!(h.emulator.send_bot_live(id, activity));
    // Missing and non-numeric sequences: ordinary typing activities, relayed as they are.
    send(
        json!({"type": "typing", "id": format!("{id}|h0"), "channelData": {"streamType": "streaming"}}),
    );
    send(interim(1, json!("two"), "s"));
    // Another conversation's stream id, and a real stream: 1, 3, then 2 (out of order).
    let foreign = format!("{}|s0000001", other.id);
    send(interim(2, json!(1), &foreign));
    send(interim(3, json!(1), "s"));
    send(interim(4, json!(3), "s"));
    send(interim(5, json!(2), "s"));
    // Its final, then an interim after it.
    h.emulator.send_bot_activity(
        id,
        json!({"type": "message", "text": "done",
        "entities": [{"type": "streaminfo", "streamType": "final", "streamId": "s"}]}),
    );
    send(interim(6, json!(4), "s"));
    h.post_message(&conversation, "checked").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "echo: checked")
    })
    .await;
    // A huge interim (just under the frame limit), then hundreds of one-off streams, in
    // batches the emulator's own live buffer (64 typing activities) keeps whole.
    let huge = "x".repeat(900 * 1024);
    let mut big = interim(7, json!(1), "huge");
    big["text"] = Value::from(huge);
    send(big);
    for batch in 0..5u64 {
        for n in 0..40u64 {
            send(interim(
                100 + batch * 40 + n,
                json!(1),
                &format!("flood{batch}-{n}"),
            ));
        }
        let last = format!("t{}", 100 + batch * 40 + 39);
        read_until(&mut ws, &mut seen, |s| {
            s.activities.iter().any(|a| a["text"] == last.as_str())
        })
        .await;
    }
    h.post_message(&conversation, "end").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "echo: end")
    })
    .await;
    assert_eq!(seen.closed, None);
    let texts: Vec<&str> = seen
        .activities
        .iter()
        .filter_map(|a| a["text"].as_str())
        .collect();
    assert!(
        texts.contains(&"t1"),
        "a non-numeric sequence is relayed as typing"
    );
    assert!(
        texts.contains(&"t2"),
        "a foreign stream id is just another stream here"
    );
    // 3 may have been replaced by 4, and 4 dropped by the final, before the client took
    // them: whatever came, came in order and before the final.
    let at = |text: &str| texts.iter().position(|t| *t == text);
    let done = at("done").expect("the final");
    if let (Some(three), Some(four)) = (at("t3"), at("t4")) {
        assert!(three < four);
    }
    assert!(at("t3").is_none_or(|p| p < done) && at("t4").is_none_or(|p| p < done));
    assert!(
        !texts.contains(&"t5"),
        "an older sequence after a newer one is dropped"
    );
    assert!(!texts.contains(&"t6"), "nothing after the final");
    assert_eq!(texts.iter().filter(|t| **t == "done").count(), 1);
    assert!(
        seen.activities
            .iter()
            .any(|a| a["id"] == format!("{id}|h0"))
    );
    // The ring keeps at most one interim per open stream, and at most 32 open streams.
    let ring = metric(&h.metrics().await, "directline_gateway_stream_buffer_bytes");
    assert!(ring < 1.5 * 1024.0 * 1024.0, "ring {ring}");
    assert!(
        metric(
            &h.metrics().await,
            "directline_gateway_streams_abandoned_total"
        ) >= 160.0
    );
}

#[tokio::test]
async fn chunk_interval_sends_at_most_one_interim_per_interval_in_order_and_the_final_once() {
    const CHUNKS: u64 = 100;
    let interval = Duration::from_millis(200);
    // The bot streams 100 interims 10 ms apart: about a second, so about five intervals.
    let h = streaming_harness(Duration::from_millis(10), |config| {
        config.stream.chunk_interval = interval;
    })
    .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    let started = std::time::Instant::now();
    post(&h, &conversation, &format!("stream {CHUNKS}"), None).await;
    read_until(&mut ws, &mut seen, |s| finals(s).len() == 1).await;
    // A loaded machine stretches the answer, and so the bound: at most one interim per
    // interval of the answer's time, plus the first and one at each edge.
    let elapsed = started.elapsed();
    let bound = (elapsed.as_millis() / interval.as_millis()) as usize + 3;
    post(&h, &conversation, "after", Some("normal")).await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "echo: after")
    })
    .await;
    let delivered = interims(&seen).len();
    eprintln!("{delivered} of {CHUNKS} interims in {elapsed:?} (bound {bound})");
    assert!(delivered >= 1, "at least one interim");
    assert!(
        delivered <= bound,
        "{delivered} interims in {elapsed:?} with a {interval:?} interval"
    );
    assert!(delivered < CHUNKS as usize / 4, "{delivered} interims");
    assert_eq!(finals(&seen).len(), 1);
    assert_stream_order(&seen);
    assert_eq!(
        finals(&seen)[0]["text"]
            .as_str()
            .map(|t| t.split(' ').count() as u64),
        Some(CHUNKS)
    );
    seen.assert_no_duplicate_ids();
    let metrics = h.metrics().await;
    assert_eq!(
        metric(&metrics, "directline_gateway_stream_interims_relayed_total"),
        delivered as f64
    );
    let coalesced = metric(
        &metrics,
        "directline_gateway_stream_interims_coalesced_total",
    );
    assert!(
        coalesced >= (CHUNKS as usize / 2) as f64,
        "{coalesced} coalesced of {CHUNKS}"
    );
}

/// Under `stream.chunk_interval` the hub lets its upstream socket rest after an interim,
/// frames waiting in the kernel until the interval is over: an upstream drop mid-answer
/// still gives the whole final once, the interims in order, and what follows arrives.
#[tokio::test]
async fn under_chunk_interval_an_upstream_drop_mid_answer_loses_nothing() {
    let h = streaming_harness(Duration::from_millis(10), |config| {
        config.stream.chunk_interval = Duration::from_millis(50);
    })
    .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    post(&h, &conversation, "stream 60", None).await;
    read_until(&mut ws, &mut seen, |s| interims(s).len() >= 3).await;
    h.emulator.drop_all_streams();
    read_until(&mut ws, &mut seen, |s| finals(s).len() == 1).await;
    post(&h, &conversation, "after", Some("normal")).await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "echo: after")
    })
    .await;
    assert_eq!(seen.closed, None, "the client socket was kept");
    assert_eq!(finals(&seen).len(), 1);
    assert_stream_order(&seen);
    assert_eq!(
        finals(&seen)[0]["text"]
            .as_str()
            .map(|t| t.split(' ').count()),
        Some(60)
    );
    seen.assert_no_duplicate_ids();
}

/// An ordinary activity sent while an answer streams reaches the client in the upstream's
/// order (before the final), though the socket rests between interims.
#[tokio::test]
async fn under_chunk_interval_ordinary_activities_arrive_during_an_answer() {
    let h = streaming_harness(Duration::from_millis(10), |config| {
        config.stream.chunk_interval = Duration::from_millis(50);
    })
    .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    post(&h, &conversation, "stream 80", None).await;
    read_until(&mut ws, &mut seen, |s| interims(s).len() >= 2).await;
    post(&h, &conversation, "meanwhile", Some("normal")).await;
    read_until(&mut ws, &mut seen, |s| finals(s).len() == 1).await;
    let position = |wanted: &dyn Fn(&Value) -> bool| seen.activities.iter().position(wanted);
    let echo = position(&|a| a["text"] == "echo: meanwhile").expect("the echo arrived");
    let last = position(&is_final).expect("the final");
    assert!(echo < last, "the echo after the final");
    assert_eq!(finals(&seen).len(), 1);
    assert_stream_order(&seen);
    seen.assert_no_duplicate_ids();
}

/// While the socket rests, the upstream's frames and pongs wait unread: that is not
/// silence, even with a liveness timeout shorter than the rest.
#[tokio::test]
async fn a_resting_upstream_socket_is_not_dropped_as_silent() {
    let h = streaming_harness(Duration::from_millis(10), |config| {
        config.stream.chunk_interval = Duration::from_millis(800);
        config.stream.keepalive_interval = Duration::from_millis(100);
        config.stream.liveness_timeout = Duration::from_millis(300);
    })
    .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    post(&h, &conversation, "stream 150", None).await;
    read_until(&mut ws, &mut seen, |s| finals(s).len() == 1).await;
    assert_eq!(finals(&seen).len(), 1);
    assert_stream_order(&seen);
    let metrics = h.metrics().await;
    let silent: f64 = metrics
        .lines()
        .filter(|line| {
            line.starts_with("directline_gateway_upstream_stream_drops_total{")
                && line.contains(r#"reason="silent""#)
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum();
    assert_eq!(silent, 0.0, "dropped as silent while resting");
}
