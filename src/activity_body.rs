//! The body of `POST …/activities`, rewritten so that `from.id` is the user bound into the
//! caller's token (Direct Line does the same for user-bound tokens; the gateway posts with
//! the secret, PROTOCOL §1.1).
//!
//! Only `from` is parsed. Every other field is copied as the caller's JSON text, so a
//! message costs one validating pass and one copy instead of a JSON tree built, printed
//! and dropped (a tenth of a POST's instructions, docs/PROFILE-FINDINGS.md finding 3).

use std::borrow::Cow;
use std::fmt;

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::Value;
use serde_json::value::RawValue;

use crate::error::GatewayError;
use crate::jsonscan;

/// Deepest nesting accepted: what serde_json's recursion limit lets through (it refuses the
/// 128th container), which a full parse of the body applied before fields were copied
/// through unparsed.
pub const MAX_DEPTH: usize = 127;

/// The activity with its `from.id` set to `user_id`, as JSON bytes.
///
/// Refused: text that is not JSON or nests deeper than [`MAX_DEPTH`] (`MalformedJson`),
/// JSON that is not an object (`InvalidActivity`). A field given twice keeps its last
/// value, as JSON parsers do.
pub fn bind_sender(body: &[u8], user_id: &str) -> Result<Vec<u8>, GatewayError> {
    bind_sender_as(body, user_id, SenderName::Caller, None)
}

/// Where `from.name` comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SenderName<'a> {
    /// The caller's, as on Direct Line itself (anonymous users).
    Caller,
    /// Signed-in mode: the identity provider's name for the user, or none; the caller's is
    /// dropped, since a bot may show it as the person's.
    Verified(Option<&'a str>),
}

/// [`bind_sender`] with `from.name` chosen by `name`, and `deliveryMode: delivery_mode`
/// added when the activity has no `deliveryMode` of its own (`delivery_mode = "stream"`,
/// ARCHITECTURE §14): a client's value, whatever it is, stays. Found during the one pass
/// over the fields, so it costs a key comparison per field.
pub fn bind_sender_as(
    body: &[u8],
    user_id: &str,
    name: SenderName<'_>,
    delivery_mode: Option<&str>,
) -> Result<Vec<u8>, GatewayError> {
    if jsonscan::nests_deeper_than(body, MAX_DEPTH) {
        return Err(GatewayError::MalformedJson);
    }
    // Fields copied as text are checked for JSON's grammar only, which lets a `\u` escape
    // of a lone surrogate through: a full parse refuses it, and so must this one. A body
    // with `\u` escapes is rare (clients send UTF-8), so only such a body pays for the
    // full parse.
    if memchr::memmem::find(body, b"\\u").is_some()
        && serde_json::from_slice::<Value>(body).is_err()
    {
        return Err(GatewayError::MalformedJson);
    }
    let fields = match serde_json::from_slice::<Fields<'_>>(body) {
        Ok(Fields(fields)) => fields,
        Err(error) if error.classify() == serde_json::error::Category::Data => {
            return Err(GatewayError::InvalidActivity);
        }
        Err(_) => return Err(GatewayError::MalformedJson),
    };
    let mut out = Vec::with_capacity(body.len() + user_id.len() + 16);
    out.push(b'{');
    let mut from: Option<&RawValue> = None;
    let mut has_mode = false;
    let superseded = superseded_fields(&fields);
    for (i, (key, value)) in fields.iter().enumerate() {
        if superseded.as_ref().is_some_and(|s| s[i]) {
            continue;
        }
        if key == "from" {
            from = Some(value);
            continue;
        }
        has_mode |= delivery_mode.is_some() && key == "deliveryMode";
        write_key(&mut out, key);
        out.extend_from_slice(value.get().as_bytes());
        out.push(b',');
    }
    if let Some(mode) = delivery_mode.filter(|_| !has_mode) {
        out.extend_from_slice(b"\"deliveryMode\":");
        serde_json::to_writer(&mut out, mode)
            .map_err(|error| GatewayError::internal_because("writing the delivery mode", error))?;
        out.push(b',');
    }
    write_sender(&mut out, from, user_id, name)?;
    out.push(b'}');
    Ok(out)
}

/// The `from` upstream gets: the bound user's id, the caller's display `name` when it is a
/// string, and `role` only when it says `user`. Nothing else the caller claims about itself
/// is kept: a bot may trust `role` ("bot" would pass a user's text off as the bot's) and
/// channel fields such as `aadObjectId`, which only a channel may set. The name stays the
/// caller's choice, as on Direct Line itself; bots must not treat it as an identity.
///
/// The caller's `from` is read as borrowed fields (no JSON tree), and its name, already
/// valid JSON text, is copied as it came.
fn write_sender(
    out: &mut Vec<u8>,
    claimed: Option<&RawValue>,
    user_id: &str,
    name: SenderName<'_>,
) -> Result<(), GatewayError> {
    // A `from` that is not an object claims nothing. A field given twice counts once, as
    // its last value, as for the activity's own fields.
    let fields = claimed
        .and_then(|raw| serde_json::from_str::<Fields<'_>>(raw.get()).ok())
        .map(|Fields(fields)| fields)
        .unwrap_or_default();
    let mut claimed_name = None;
    let mut role_is_user = false;
    for (key, value) in &fields {
        if key == "name" {
            claimed_name = value.get().starts_with('"').then_some(value);
        } else if key == "role" {
            role_is_user = is_json_string(value, "user");
        }
    }
    out.extend_from_slice(b"\"from\":{\"id\":");
    serde_json::to_writer(&mut *out, user_id)
        .map_err(|error| GatewayError::internal_because("writing the user id", error))?;
    match name {
        SenderName::Caller => {
            if let Some(claimed_name) = claimed_name {
                out.extend_from_slice(b",\"name\":");
                out.extend_from_slice(claimed_name.get().as_bytes());
            }
        }
        SenderName::Verified(Some(name)) => {
            out.extend_from_slice(b",\"name\":");
            serde_json::to_writer(&mut *out, name)
                .map_err(|error| GatewayError::internal_because("writing the user name", error))?;
        }
        SenderName::Verified(None) => {}
    }
    if role_is_user {
        out.extend_from_slice(b",\"role\":\"user\"");
    }
    out.push(b'}');
    Ok(())
}

/// Whether `value` is the JSON string `text`, escaped or not.
fn is_json_string(value: &RawValue, text: &str) -> bool {
    let json = value.get();
    if !json.contains('\\') {
        return json.len() == text.len() + 2
            && json.starts_with('"')
            && json.ends_with('"')
            && &json[1..json.len() - 1] == text;
    }
    serde_json::from_str::<Cow<'_, str>>(json).is_ok_and(|decoded| decoded == text)
}

/// Which fields a later field of the same name replaces; `None` when no name repeats (the
/// usual case, found without allocating for small activities). A body within the size limit
/// can hold tens of thousands of fields, so repeats are found with a map, never pairwise.
fn superseded_fields(fields: &[(Key<'_>, &RawValue)]) -> Option<Vec<bool>> {
    let repeats = if fields.len() <= 16 {
        fields
            .iter()
            .enumerate()
            .any(|(i, (key, _))| fields[i + 1..].iter().any(|(later, _)| later == key))
    } else {
        let mut seen = std::collections::HashSet::with_capacity(fields.len());
        !fields.iter().all(|(key, _)| seen.insert(&*key.0))
    };
    if !repeats {
        return None;
    }
    let mut last = std::collections::HashMap::with_capacity(fields.len());
    for (i, (key, _)) in fields.iter().enumerate() {
        last.insert(&*key.0, i);
    }
    Some(
        fields
            .iter()
            .enumerate()
            .map(|(i, (key, _))| last[&*key.0] != i)
            .collect(),
    )
}

/// A key as JSON: a key read without escapes is its own JSON text between quotes.
fn write_key(out: &mut Vec<u8>, key: &Key<'_>) {
    match &key.0 {
        Cow::Borrowed(text) => {
            out.push(b'"');
            out.extend_from_slice(text.as_bytes());
            out.push(b'"');
        }
        Cow::Owned(text) => {
            // Writing a String into a Vec cannot fail.
            let _ = serde_json::to_writer(&mut *out, text);
        }
    }
    out.push(b':');
}

/// An object's fields in the order given, values unparsed.
struct Fields<'a>(Vec<(Key<'a>, &'a RawValue)>);

/// A field name, borrowed from the body unless it held escapes.
#[derive(PartialEq)]
struct Key<'a>(Cow<'a, str>);

impl PartialEq<str> for Key<'_> {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
            fn visit_string<E: de::Error>(self, v: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

impl<'de> Deserialize<'de> for Fields<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct FieldsVisitor;
        impl<'de> Visitor<'de> for FieldsVisitor {
            type Value = Fields<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an activity object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Fields<'de>, A::Error> {
                let mut fields = Vec::with_capacity(map.size_hint().unwrap_or(8));
                while let Some(field) = map.next_entry::<Key<'de>, &'de RawValue>()? {
                    fields.push(field);
                }
                Ok(Fields(fields))
            }
        }
        deserializer.deserialize_map(FieldsVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;

    fn bound(body: &str, user: &str) -> Result<Value, GatewayError> {
        bind_sender(body.as_bytes(), user).map(|bytes| serde_json::from_slice(&bytes).unwrap())
    }

    #[test]
    fn a_verified_name_replaces_the_callers_or_removes_it() {
        let body = br#"{"text":"t","from":{"id":"x","name":"Mallory","role":"user"}}"#;
        let named = |name| -> Value {
            serde_json::from_slice(&bind_sender_as(body, "dl_a", name, None).unwrap()).unwrap()
        };
        assert_eq!(
            named(SenderName::Verified(Some("Alice")))["from"],
            serde_json::json!({"id": "dl_a", "name": "Alice", "role": "user"})
        );
        assert_eq!(
            named(SenderName::Verified(None))["from"],
            serde_json::json!({"id": "dl_a", "role": "user"})
        );
        assert_eq!(named(SenderName::Caller)["from"]["name"], "Mallory");
    }

    /// The rule on a full parse: `from` becomes the bound id plus a string name and a
    /// `user` role, everything outside `from` kept.
    fn by_tree(body: &str, user: &str) -> Value {
        let mut activity: Map<String, Value> = serde_json::from_str(body).unwrap();
        let mut from = serde_json::json!({ "id": user });
        if let Some(Value::Object(claimed)) = activity.get("from") {
            if let Some(name) = claimed.get("name").filter(|n| n.is_string()) {
                from["name"] = name.clone();
            }
            if claimed.get("role") == Some(&Value::String("user".into())) {
                from["role"] = "user".into();
            }
        }
        activity.insert("from".into(), from);
        Value::Object(activity)
    }

    #[test]
    fn a_lone_surrogate_escape_is_refused_wherever_it_is() {
        for body in [
            r#"{"type":"message","text":"\udc81"}"#,
            r#"{"type":"message","from":{"id":"x","name":"\ud800"}}"#,
            r#"{"type":"message","channelData":{"a":["\udfff"]}}"#,
        ] {
            assert_eq!(
                bind_sender(body.as_bytes(), "dl_u").unwrap_err(),
                GatewayError::MalformedJson,
                "{body}"
            );
        }
        // A pair is a character, and other escapes are fine.
        let text = bound(r#"{"type":"message","text":"\ud83d\ude00 \u00e9"}"#, "dl_u").unwrap();
        assert_eq!(text["text"], "😀 é");
    }

    #[test]
    fn a_caller_cannot_claim_to_be_the_bot_or_carry_channel_fields() {
        let value = bound(
            r#"{"text":"t","from":{"id":"bot-id","name":"Contoso Bot","role":"bot","aadObjectId":"00000000-0000-0000-0000-000000000001","properties":{}}}"#,
            "dl_alice",
        )
        .unwrap();
        assert_eq!(
            value["from"],
            serde_json::json!({ "id": "dl_alice", "name": "Contoso Bot" })
        );
        let value = bound(r#"{"from":{"name":7,"role":"user"}}"#, "dl_alice").unwrap();
        assert_eq!(
            value["from"],
            serde_json::json!({ "id": "dl_alice", "role": "user" })
        );
    }

    #[test]
    fn from_is_the_bound_user_and_the_rest_is_kept() {
        for body in [
            r#"{"type":"message","text":"hi","from":{"id":"mallory","name":"M","role":"user"}}"#,
            r#"{"type":"message","text":"hi","from":{"id":"mallory","name":"M","role":"bot","x":1}}"#,
            r#"{"type":"message","text":"no from"}"#,
            r#"{"from":"not an object","text":"x"}"#,
            r#"{"from":null}"#,
            r#"{}"#,
            r#" { "text" : "spaced \"quotes\" \u00e9 \\" , "attachments":[{"from":{"id":"x"}}] } "#,
            r#"{"te\u0078t":"escaped key","channelData":{"a":[1,2.5e3,true,null]}}"#,
            r#"{"text":"first","text":"last","from":{"id":"a"},"from":{"name":"second"}}"#,
        ] {
            assert_eq!(
                bound(body, "dl_alice").unwrap(),
                by_tree(body, "dl_alice"),
                "{body}"
            );
        }
    }

    #[test]
    fn many_fields_and_many_repeats() {
        // 40,000 fields (a body under the 256 KiB limit): pairwise checks would be 1.6e9.
        let distinct: Vec<String> = (0..40_000).map(|i| format!(r#""f{i}":{i}"#)).collect();
        let body = format!("{{{}}}", distinct.join(","));
        assert_eq!(bound(&body, "u").unwrap(), by_tree(&body, "u"));
        let repeated: Vec<String> = (0..40_000)
            .map(|i| format!(r#""f{}":{i}"#, i % 7))
            .collect();
        let body = format!("{{{}}}", repeated.join(","));
        let value = bound(&body, "u").unwrap();
        assert_eq!(value, by_tree(&body, "u"));
        assert_eq!(value["f0"], 39_998);
    }

    #[test]
    fn delivery_mode_is_added_only_where_the_client_set_none() {
        let with = |body: &str| -> Value {
            let bytes = bind_sender_as(body.as_bytes(), "dl_u", SenderName::Caller, Some("stream"))
                .unwrap();
            serde_json::from_slice(&bytes).unwrap()
        };
        let added = with(r#"{"type":"message","text":"hi"}"#);
        assert_eq!(added["deliveryMode"], "stream");
        assert_eq!(added["text"], "hi");
        assert_eq!(added["from"]["id"], "dl_u");
        for (body, kept) in [
            (
                r#"{"type":"message","deliveryMode":"normal"}"#,
                Value::from("normal"),
            ),
            (
                r#"{"type":"message","deliveryMode":"expectReplies"}"#,
                Value::from("expectReplies"),
            ),
            (r#"{"type":"message","deliveryMode":null}"#, Value::Null),
            (
                r#"{"deliveryMode":"normal","deliveryMode":"stream"}"#,
                Value::from("stream"),
            ),
        ] {
            let value = with(body);
            assert_eq!(value["deliveryMode"], kept, "{body}");
        }
        // The escaped spelling of the key is the same key.
        let escaped = bind_sender_as(
            br#"{"delivery\u004dode":"normal"}"#,
            "dl_u",
            SenderName::Caller,
            Some("stream"),
        )
        .unwrap();
        let escaped: Value = serde_json::from_slice(&escaped).unwrap();
        assert_eq!(escaped["deliveryMode"], "normal");
        // Without the setting nothing is added.
        let plain = bound(r#"{"type":"message"}"#, "dl_u").unwrap();
        assert!(plain.get("deliveryMode").is_none());
    }

    #[test]
    fn odd_user_ids_are_escaped() {
        let value = bound(r#"{"text":"t"}"#, "a\"b\\c").unwrap();
        assert_eq!(value["from"]["id"], "a\"b\\c");
    }

    #[test]
    fn non_objects_and_broken_json_are_refused_apart() {
        for body in [r#"[]"#, r#""text""#, "42", "null", r#"[{"text":"x"}]"#] {
            assert!(
                matches!(bound(body, "u"), Err(GatewayError::InvalidActivity)),
                "{body}"
            );
        }
        for body in [
            "",
            "{",
            r#"{"text":}"#,
            r#"{"text":"x"} trailing"#,
            "{\"text\":\"\u{1}\"}",
        ] {
            assert!(
                matches!(bound(body, "u"), Err(GatewayError::MalformedJson)),
                "{body}"
            );
        }
        // The same boundary as a full parse: 127 levels in all pass, 128 do not.
        let nested = |arrays: usize| {
            format!(
                r#"{{"value":{}{}}}"#,
                "[".repeat(arrays),
                "]".repeat(arrays)
            )
        };
        assert!(serde_json::from_str::<Value>(&nested(126)).is_ok());
        assert!(bound(&nested(126), "u").is_ok());
        assert!(serde_json::from_str::<Value>(&nested(127)).is_err());
        assert!(matches!(
            bound(&nested(127), "u"),
            Err(GatewayError::MalformedJson)
        ));
        assert!(matches!(
            bind_sender(b"{\"text\":\"\xff\"}", "u"),
            Err(GatewayError::MalformedJson)
        ));
    }

    mod prop {
        use super::*;
        use crate::jsonscan::arbitrary::{object, text};
        use proptest::prelude::*;

        proptest! {
            /// Whatever the caller sends, upstream gets what a full parse-and-set would send.
            #[test]
            fn same_activity_as_a_full_parse(
                object in object(&["from", "id"]),
                user in text(&["from", "id"]),
                pretty in any::<bool>(),
            ) {
                let body = if pretty {
                    serde_json::to_string_pretty(&object).unwrap()
                } else {
                    serde_json::to_string(&object).unwrap()
                };
                prop_assert_eq!(bound(&body, &user).unwrap(), by_tree(&body, &user));
            }
        }
    }
}
