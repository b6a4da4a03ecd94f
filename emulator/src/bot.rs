//! The echo bot: answers each message with `echo: <text>`.

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
}
