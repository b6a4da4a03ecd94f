//! Reading facts out of JSON text that a full parse already validated (or is about to), in
//! one cheap pass and without building anything: how deeply a posted body nests, and (for
//! the tests) an activity's id.

#[cfg(test)]
use std::borrow::Cow;

/// The top-level `"id"` of one activity, read straight from its JSON text. The relay reads
/// ids with [`crate::activity_set`] now, in its one pass over the frame; this reading stays
/// as the reference that module's property tests compare with.
///
/// `activity` must be valid JSON (a slice serde_json already captured as a `RawValue`); that
/// is what lets this skip values without checking them. `None` when the activity is not an
/// object, has no id, an empty or non-string id, or more than one top-level `"id"` (clients
/// disagree on which one counts, so such an activity is never treated as a duplicate).
/// Ids inside nested objects (`from.id`, `conversation.id`, `channelData`) are not the
/// activity's.
#[cfg(test)]
pub fn top_level_id(activity: &str) -> Option<Cow<'_, str>> {
    let bytes = activity.as_bytes();
    if bytes.first() != Some(&b'{') {
        return None;
    }
    let mut depth = 0usize;
    let mut expecting_key = false;
    let mut found: Option<Option<Cow<'_, str>>> = None;
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' => {
                let end = string_end(bytes, i + 1)?;
                if depth == 1 && expecting_key {
                    expecting_key = false;
                    if is_id_key(&activity[i..=end]) {
                        if found.is_some() {
                            return None;
                        }
                        let (value, next) = id_value(activity, end + 1)?;
                        found = Some(value);
                        i = next;
                        continue;
                    }
                }
                i = end + 1;
                continue;
            }
            b'{' | b'[' => {
                depth += 1;
                expecting_key = bytes[i] == b'{' && depth == 1;
            }
            b'}' | b']' => {
                depth = depth.checked_sub(1)?;
                if depth == 0 {
                    break;
                }
            }
            b',' if depth == 1 => expecting_key = true,
            _ => {}
        }
        i += 1;
    }
    found.flatten()
}

/// Index of the quote closing the string whose content starts at `from`.
fn string_end(bytes: &[u8], mut from: usize) -> Option<usize> {
    loop {
        let at = from + memchr::memchr2(b'"', b'\\', bytes.get(from..)?)?;
        if bytes[at] == b'"' {
            return Some(at);
        }
        // Skips the escaped character; `\uXXXX` continues with hex digits, never a quote.
        from = at + 2;
    }
}

#[cfg(test)]
fn is_id_key(quoted: &str) -> bool {
    quoted == "\"id\""
        || (quoted.contains('\\')
            && serde_json::from_str::<Cow<'_, str>>(quoted).is_ok_and(|k| k == "id"))
}

#[cfg(test)]
/// Reads the value after an `"id"` key (`from` is just past the key's closing quote):
/// the id if it is a non-empty string, and where scanning continues.
fn id_value(activity: &str, from: usize) -> Option<(Option<Cow<'_, str>>, usize)> {
    let bytes = activity.as_bytes();
    let mut i = from;
    while i < bytes.len() && (bytes[i].is_ascii_whitespace() || bytes[i] == b':') {
        i += 1;
    }
    if bytes.get(i) != Some(&b'"') {
        // null, a number, an object…: not an id, and scanned on as any value.
        return Some((None, i));
    }
    let end = string_end(bytes, i + 1)?;
    let inner = &activity[i + 1..end];
    let id = if inner.is_empty() {
        None
    } else if inner.contains('\\') {
        serde_json::from_str::<String>(&activity[i..=end])
            .ok()
            .filter(|id| !id.is_empty())
            .map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    };
    Some((id, end + 1))
}

/// Whether `json` nests arrays and objects more than `limit` deep. Strings are skipped,
/// brackets inside them do not count. For text a parser will not recurse into (a value
/// copied through as a `RawValue`), so that hostile nesting is refused here as a full
/// parse would refuse it, instead of reaching a parser upstream.
pub fn nests_deeper_than(json: &[u8], limit: usize) -> bool {
    let mut depth = 0usize;
    let mut i = 0;
    while i < json.len() {
        match json[i] {
            b'"' => match string_end(json, i + 1) {
                Some(end) => i = end,
                None => return false,
            },
            b'{' | b'[' => {
                depth += 1;
                if depth > limit {
                    return true;
                }
            }
            b'}' | b']' => depth = depth.saturating_sub(1),
            _ => {}
        }
        i += 1;
    }
    false
}

/// Random JSON for the property tests of the modules that read JSON text without a full
/// parse: each compares its reading with serde_json's on the same document.
#[cfg(test)]
pub(crate) mod arbitrary {
    use proptest::prelude::*;
    use serde_json::Value;

    /// Field names and strings: one of `names` (what a test is about), or short text with
    /// the characters a scanner can trip on (quotes, backslashes, brackets, separators, a
    /// control character, non-ASCII).
    pub fn text(names: &'static [&'static str]) -> BoxedStrategy<String> {
        prop_oneof![
            proptest::sample::select(names).prop_map(str::to_owned),
            "[a-z|\"\\\\{}\\[\\],: é/\u{1}]{0,12}",
        ]
        .boxed()
    }

    /// Any JSON value, three levels deep. Numbers are integers: serde_json's float parsing is
    /// not exact, so a float parsed twice (as a rewritten field is) may differ in its last
    /// digit from one parsed once, and the comparison would fail on serde_json, not on us.
    pub fn value(names: &'static [&'static str]) -> BoxedStrategy<Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            text(names).prop_map(Value::String),
        ];
        leaf.prop_recursive(3, 24, 4, move |inner| {
            prop_oneof![
                proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                proptest::collection::vec((text(names), inner), 0..4)
                    .prop_map(|fields| Value::Object(fields.into_iter().collect())),
            ]
        })
        .boxed()
    }

    /// A JSON object of up to six fields whose values are any JSON.
    pub fn object(names: &'static [&'static str]) -> BoxedStrategy<Value> {
        proptest::collection::vec((text(names), value(names)), 0..6)
            .prop_map(|fields| Value::Object(fields.into_iter().collect()))
            .boxed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(activity: &str) -> Option<String> {
        top_level_id(activity).map(Cow::into_owned)
    }

    #[test]
    fn nesting_depth_counts_brackets_outside_strings() {
        assert!(!nests_deeper_than(br#"{"a":[{"b":[]}]}"#, 4));
        assert!(nests_deeper_than(br#"{"a":[{"b":[]}]}"#, 3));
        assert!(!nests_deeper_than(br#"{"a":"[[[[[[{{{{"}"#, 1));
        assert!(!nests_deeper_than(br#"{"a":"\"[[[["}"#, 1));
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert!(nests_deeper_than(deep.as_bytes(), 128));
        assert!(!nests_deeper_than(deep.as_bytes(), 200));
        // Unterminated strings (invalid JSON) end the scan without a panic.
        assert!(!nests_deeper_than(br#"{"a":"[[[["#, 1));
    }

    #[test]
    fn finds_the_top_level_id_wherever_it_is() {
        assert_eq!(
            id(r#"{"id":"a|1","type":"message"}"#).as_deref(),
            Some("a|1")
        );
        assert_eq!(
            id(r#"{"type":"message","from":{"id":"bot"},"conversation":{"id":"c"},"id":"a|2"}"#)
                .as_deref(),
            Some("a|2")
        );
        assert_eq!(
            id("{ \"text\" : \"say \\\"id\\\": x\" ,\n \"id\" :\t\"a|3\" }").as_deref(),
            Some("a|3")
        );
        assert_eq!(
            id(r#"{"attachments":[{"id":"n"},["id","x"]],"id":"a|4"}"#).as_deref(),
            Some("a|4")
        );
    }

    #[test]
    fn nested_ids_and_id_values_elsewhere_are_not_the_activity_id() {
        assert_eq!(id(r#"{"from":{"id":"bot"},"text":"id"}"#), None);
        assert_eq!(
            id(r#"{"channelData":{"list":[{"id":"x"}]},"name":"id"}"#),
            None
        );
        assert_eq!(id(r#"{"text":"\"id\":\"fake\""}"#), None);
        assert_eq!(id(r#"{"x":"id","y":["id"]}"#), None);
    }

    #[test]
    fn escapes_are_decoded_in_ids_and_keys() {
        assert_eq!(id(r#"{"id":"a\u007c1"}"#).as_deref(), Some("a|1"));
        assert_eq!(id(r#"{"id":"a\\\"b"}"#).as_deref(), Some("a\\\"b"));
        assert_eq!(id(r#"{"\u0069d":"a|5"}"#).as_deref(), Some("a|5"));
        assert_eq!(id(r#"{"i\"d":"a|6"}"#), None);
    }

    #[test]
    fn missing_empty_odd_and_repeated_ids_are_none() {
        for activity in [
            r#"{}"#,
            r#"{"type":"typing"}"#,
            r#"{"id":""}"#,
            r#"{"id":null}"#,
            r#"{"id":42}"#,
            r#"{"id":{"id":"x"}}"#,
            r#"{"id":"a","id":"b"}"#,
            r#"{"id":"a","text":"t","id":"a"}"#,
            r#""id""#,
            r#"["id","x"]"#,
            "7",
        ] {
            assert_eq!(id(activity), None, "{activity}");
        }
        // A non-string id followed by a real one is still a repeated key.
        assert_eq!(id(r#"{"id":null,"id":"b"}"#), None);
    }

    #[test]
    fn agrees_with_a_full_parse() {
        let cases = [
            r#"{"type":"message","id":"WN3Y9BbeAdpNM3xe5FdC2Q-us|0000001","timestamp":"2026-11-22T00:00:00Z","from":{"id":"bot","name":"Bot"},"text":"é ✓ \\ \/"}"#,
            r#"{"text":"a\\","id":"b\\"}"#,
            r#"{"entities":[{"type":"x","id":[1,{"id":2}]}],"id":"z"}"#,
        ];
        for activity in cases {
            let value: serde_json::Value = serde_json::from_str(activity).unwrap();
            assert_eq!(id(activity).as_deref(), value["id"].as_str(), "{activity}");
        }
    }

    mod prop {
        use super::*;
        use crate::jsonscan::arbitrary::object;
        use proptest::prelude::*;

        proptest! {
            /// Whatever surrounds it, the scanner reads the id a JSON parser reads.
            #[test]
            fn scanner_reads_what_a_parser_reads(
                object in object(&["id"]),
                pretty in any::<bool>(),
            ) {
                let activity = if pretty {
                    serde_json::to_string_pretty(&object).unwrap()
                } else {
                    serde_json::to_string(&object).unwrap()
                };
                let expected = object["id"].as_str().filter(|id| !id.is_empty());
                let found = top_level_id(&activity);
                prop_assert_eq!(found.as_deref(), expected, "{}", activity);
            }
        }
    }
}
