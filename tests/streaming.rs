//! Livestreamed answers end to end (ARCHITECTURE §14): `delivery_mode`, interims relayed in
//! order with one final, slow readers given the newest interim, hostile interims.

mod support;

use std::time::Duration;

use directline_emulator::Faults;
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
    assert_eq!(interims(&seen).len(), 5, "{:?}", seen.activities);
    assert_stream_order(&seen);
    let answer = finals(&seen)[0].clone();
    assert_eq!(answer["text"], "w1 w2 w3 w4 w5");
    let stream_id = interims(&seen)[0]["id"].as_str().expect("id").to_owned();
    assert_eq!(
        stream_fields(&answer).expect("fields")["streamId"],
        stream_id
    );

    // The client says "normal": kept, so the bot answers with the final alone.
    post(&h, &conversation, "stream 3", Some("normal")).await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t == "w1 w2 w3")
    })
    .await;
    assert_eq!(
        interims(&seen).len(),
        5,
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
