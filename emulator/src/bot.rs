//! The echo bot: answers each message with `echo: <text>`; `stream N` is answered as an
//! LLM agent livestreams (N interim `typing` activities with cumulative text, then a final
//! `message`) when the posted activity asked for it with `deliveryMode: "stream"`.

use serde_json::{Map, Value, json};

pub const BOT_ID: &str = "echo-bot";
pub const BOT_NAME: &str = "Echo Bot";

/// The bot's channel account, as `from` of its activities and `recipient` of the user's.
pub(super) fn account() -> Value {
    json!({ "id": BOT_ID, "name": BOT_NAME, "role": "bot" })
}

/// What the bot does with one activity.
#[derive(Debug, Default)]
pub(super) struct Replies {
    /// Stream-only, never stored (PROTOCOL §0.7).
    pub typing: Option<Map<String, Value>>,
    pub messages: Vec<Map<String, Value>>,
}

/// The bot's turn for a stored user activity. Only messages get an answer; events,
/// endOfConversation and the rest are stored and left alone.
pub(super) fn respond(activity: &Map<String, Value>, typing: bool) -> Replies {
    if activity.get("type").and_then(Value::as_str) != Some("message") {
        return Replies::default();
    }
    let text = activity.get("text").and_then(Value::as_str).unwrap_or("");
    let attachments = activity
        .get("attachments")
        .and_then(Value::as_array)
        .map_or(0, Vec::len);
    let echo = if text.is_empty() && attachments > 0 {
        format!("echo: {attachments} attachment(s)")
    } else {
        format!("echo: {text}")
    };
    let recipient = activity.get("from").cloned();
    let reply_to = activity.get("id").and_then(Value::as_str);
    let typing = typing.then(|| {
        let mut typing = object(json!({ "type": "typing", "from": account() }));
        if let Some(recipient) = &recipient {
            typing.insert("recipient".into(), recipient.clone());
        }
        typing
    });
    Replies {
        typing,
        messages: vec![message(&echo, recipient, reply_to)],
    }
}

/// Most interims one `stream N` answer may ask for, so a message cannot keep a task busy
/// for ever.
pub(super) const MAX_STREAM_CHUNKS: u32 = 100_000;

/// Where an answer carries its stream fields: a `streaminfo` entity (the Agents SDK's and
/// Direct Line's usual shape) or `channelData` (older bots); clients recognise both.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum StreamEncoding {
    Entity,
    ChannelData,
}

/// A `stream N [channeldata]` message: the answer to livestream.
#[derive(Debug)]
pub(super) struct StreamPlan {
    pub chunks: u32,
    pub encoding: StreamEncoding,
    /// The client opted in (`deliveryMode: "stream"`); otherwise only the final is sent.
    pub live: bool,
    pub recipient: Option<Value>,
    pub reply_to: Option<String>,
}

/// The plan for a stored user message that asks for a streamed answer, if it is one.
pub(super) fn stream_plan(activity: &Map<String, Value>) -> Option<StreamPlan> {
    if activity.get("type").and_then(Value::as_str) != Some("message") {
        return None;
    }
    let text = activity.get("text").and_then(Value::as_str)?;
    let mut words = text.split_ascii_whitespace();
    if words.next() != Some("stream") {
        return None;
    }
    let chunks = words.next()?.parse::<u32>().ok()?.min(MAX_STREAM_CHUNKS);
    let encoding = if words.any(|word| word.eq_ignore_ascii_case("channeldata")) {
        StreamEncoding::ChannelData
    } else {
        StreamEncoding::Entity
    };
    let live = activity.get("deliveryMode").and_then(Value::as_str) == Some("stream");
    Some(StreamPlan {
        chunks,
        encoding,
        live,
        recipient: activity.get("from").cloned(),
        reply_to: activity
            .get("id")
            .and_then(Value::as_str)
            .map(str::to_owned),
    })
}

/// The cumulative text after `chunks` chunks: `w1 w2 … wN`.
pub(super) fn streamed_text(chunks: u32) -> String {
    let mut text = String::new();
    for chunk in 1..=chunks {
        if chunk > 1 {
            text.push(' ');
        }
        text.push('w');
        text.push_str(&chunk.to_string());
    }
    text
}

impl StreamPlan {
    /// Interim `sequence` (1-based): a `typing` with the text so far; `stream_id` is the
    /// first interim's id, absent on the first interim itself.
    pub(super) fn interim(&self, sequence: u32, stream_id: Option<&str>) -> Map<String, Value> {
        let mut interim = object(json!({
            "type": "typing",
            "from": account(),
            "text": streamed_text(sequence),
        }));
        let mut fields = json!({ "streamType": "streaming", "streamSequence": sequence });
        if let Some(stream_id) = stream_id {
            fields["streamId"] = Value::from(stream_id);
        }
        self.decorate(&mut interim, fields);
        interim
    }

    /// The final `message` (with the stream fields when it closes a stream), or the plain
    /// whole answer when the client did not ask for streaming.
    pub(super) fn final_message(&self, stream_id: Option<&str>) -> Map<String, Value> {
        let mut message = message(
            &streamed_text(self.chunks),
            self.recipient.clone(),
            self.reply_to.as_deref(),
        );
        if let Some(stream_id) = stream_id {
            let fields = json!({ "streamType": "final", "streamId": stream_id });
            self.decorate(&mut message, fields);
        }
        message
    }

    fn decorate(&self, activity: &mut Map<String, Value>, mut fields: Value) {
        if let Some(recipient) = &self.recipient {
            activity.insert("recipient".into(), recipient.clone());
        }
        match self.encoding {
            StreamEncoding::Entity => {
                fields["type"] = Value::from("streaminfo");
                activity.insert("entities".into(), Value::Array(vec![fields]));
            }
            StreamEncoding::ChannelData => {
                activity.insert("channelData".into(), fields);
            }
        }
    }
}

/// A message from the bot.
pub(super) fn message(
    text: &str,
    recipient: Option<Value>,
    reply_to: Option<&str>,
) -> Map<String, Value> {
    let mut message = object(json!({ "type": "message", "from": account(), "text": text }));
    if let Some(recipient) = recipient {
        message.insert("recipient".into(), recipient);
    }
    if let Some(reply_to) = reply_to {
        message.insert("replyToId".into(), Value::from(reply_to));
    }
    message
}

fn object(value: Value) -> Map<String, Value> {
    match value {
        Value::Object(map) => map,
        _ => Map::new(),
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn echoes_messages_only() {
        let user = object(json!({
            "type": "message", "id": "c|0000000", "text": "hi", "from": {"id": "u1"}
        }));
        let replies = respond(&user, true);
        assert_eq!(replies.messages.len(), 1);
        let echo = &replies.messages[0];
        assert_eq!(echo["text"], "echo: hi");
        assert_eq!(echo["replyToId"], "c|0000000");
        assert_eq!(echo["from"]["id"], BOT_ID);
        assert_eq!(echo["recipient"]["id"], "u1");
        assert_eq!(replies.typing.expect("typing")["type"], "typing");

        let event = object(json!({ "type": "event", "name": "x" }));
        let replies = respond(&event, true);
        assert!(replies.messages.is_empty() && replies.typing.is_none());
    }

    #[test]
    fn stream_plans() {
        let ask = |text: &str, mode: Option<&str>| {
            let mut user = object(json!({ "type": "message", "id": "c|0000000", "text": text }));
            if let Some(mode) = mode {
                user.insert("deliveryMode".into(), Value::from(mode));
            }
            stream_plan(&user)
        };
        assert!(ask("hello", Some("stream")).is_none());
        assert!(ask("stream", Some("stream")).is_none());
        assert!(ask("stream x", Some("stream")).is_none());
        let plan = ask("stream 3", Some("stream")).expect("plan");
        assert!(plan.live && plan.chunks == 3 && plan.encoding == StreamEncoding::Entity);
        assert!(!ask("stream 3", None).expect("plan").live);
        assert!(!ask("stream 3", Some("normal")).expect("plan").live);
        let plan = ask("stream 2 channelData", Some("stream")).expect("plan");
        assert_eq!(plan.encoding, StreamEncoding::ChannelData);
        assert_eq!(
            ask("stream 999999999", None).expect("plan").chunks,
            MAX_STREAM_CHUNKS
        );

        let plan = ask("stream 2", Some("stream")).expect("plan");
        let first = plan.interim(1, None);
        assert_eq!(first["type"], "typing");
        assert_eq!(first["text"], "w1");
        assert_eq!(
            first["entities"],
            json!([{ "type": "streaminfo", "streamType": "streaming", "streamSequence": 1 }])
        );
        let second = plan.interim(2, Some("c|s1"));
        assert_eq!(second["text"], "w1 w2");
        assert_eq!(second["entities"][0]["streamId"], "c|s1");
        let last = plan.final_message(Some("c|s1"));
        assert_eq!(last["type"], "message");
        assert_eq!(last["text"], "w1 w2");
        assert_eq!(last["replyToId"], "c|0000000");
        assert_eq!(
            last["entities"],
            json!([{ "type": "streaminfo", "streamType": "final", "streamId": "c|s1" }])
        );
        assert!(plan.final_message(None).get("entities").is_none());
    }
}
