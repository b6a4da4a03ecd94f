//! One validating pass over an upstream stream frame that yields everything the tracker
//! needs: where each activity is, each activity's top-level `"id"`, and the watermark.
//!
//! This replaced a serde pass (which validated the frame and captured each activity as a
//! `RawValue`) followed by a second scan of every activity for its id: on the relay path
//! that was half of the instructions per relayed activity (docs/PROFILE-FINDINGS.md). The
//! reading is serde_json's, which the property test below checks on random frames:
//! - the frame is JSON (RFC 8259: strings without raw control characters and with valid
//!   escapes, the number grammar, `true`/`false`/`null`, nothing after the value) and an
//!   object; otherwise it is not an activity set (`None`), and passes through untouched;
//! - `activities` is an array or `null`, given at most once; `watermark` is any value, given
//!   at most once (`null` is none); a top-level key whose escapes do not decode refuses the frame (serde
//!   decodes every top-level key to match it against the field names);
//! - an activity's id is its top-level `"id"` when that is a non-empty string and the only
//!   `"id"` key of the activity (clients disagree on which of two counts, so such an
//!   activity is never treated as a duplicate); ids of nested objects are not the activity's.
//!
//! Containers nest without a limit, as serde's `RawValue` capture allows, and without
//! recursion: a bit per level says whether it is an object or an array.

use std::borrow::Cow;
use std::ops::Range;

/// What a frame holds, borrowed from its text.
pub struct ActivitySet<'a> {
    /// Each activity's byte range in the frame (without surrounding whitespace), its id,
    /// and where the values of its top-level keys that can make it part of a livestream are.
    pub activities: Vec<Activity<'a>>,
    /// The JSON text of the `watermark` value, when the frame has one.
    pub watermark: Option<&'a str>,
}

/// One activity of a set: its byte range in the frame, its id, its stream keys.
pub type Activity<'a> = (Range<usize>, Option<Cow<'a, str>>, StreamKeys);

/// Byte ranges (in the frame) of an activity's top-level `type`, `id`, `entities` and
/// `channelData` values, so that its livestream role is read from those small slices instead
/// of a second parse of the whole activity, whose cumulative `text` is most of its bytes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamKeys {
    pub kind: Option<Range<usize>>,
    pub id: Option<Range<usize>>,
    pub entities: Option<Range<usize>>,
    pub channel_data: Option<Range<usize>>,
    /// One of the four keys came twice, or a key's escapes do not decode: a serde reading
    /// of the activity refuses it.
    pub refused: bool,
}

impl StreamKeys {
    fn slot(&mut self, key: &str) -> Option<&mut Option<Range<usize>>> {
        match key {
            "type" => Some(&mut self.kind),
            "id" => Some(&mut self.id),
            "entities" => Some(&mut self.entities),
            "channelData" => Some(&mut self.channel_data),
            _ => None,
        }
    }
}

/// Reads `text` as an activity set, or `None` when it is not one (see the module docs).
pub fn read(text: &str) -> Option<ActivitySet<'_>> {
    let mut scan = Scan {
        text,
        bytes: text.as_bytes(),
        at: 0,
    };
    let mut set = ActivitySet {
        activities: Vec::new(),
        watermark: None,
    };
    let (mut saw_activities, mut saw_watermark) = (false, false);
    scan.whitespace();
    scan.expect(b'{')?;
    scan.whitespace();
    if scan.eat(b'}') {
        return scan.end().then_some(set);
    }
    loop {
        let key = scan.key()?;
        match key {
            Key::Activities => {
                if saw_activities {
                    return None;
                }
                saw_activities = true;
                scan.activities(&mut set.activities)?;
            }
            Key::Watermark => {
                if saw_watermark {
                    return None;
                }
                saw_watermark = true;
                let start = scan.at;
                scan.value()?;
                // `null` is no watermark, as serde reads an `Option`.
                set.watermark = Some(&text[start..scan.at]).filter(|value| *value != "null");
            }
            Key::Other => scan.value()?,
        }
        scan.whitespace();
        if scan.eat(b',') {
            scan.whitespace();
            continue;
        }
        scan.expect(b'}')?;
        break;
    }
    scan.end().then_some(set)
}

enum Key {
    Activities,
    Watermark,
    Other,
}

struct Scan<'a> {
    text: &'a str,
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Scan<'a> {
    fn peek(&self) -> Option<u8> {
        self.bytes.get(self.at).copied()
    }

    fn eat(&mut self, byte: u8) -> bool {
        let matched = self.peek() == Some(byte);
        self.at += usize::from(matched);
        matched
    }

    fn expect(&mut self, byte: u8) -> Option<()> {
        self.eat(byte).then_some(())
    }

    fn whitespace(&mut self) {
        while let Some(b' ' | b'\n' | b'\t' | b'\r') = self.peek() {
            self.at += 1;
        }
    }

    /// Only whitespace is left.
    fn end(&mut self) -> bool {
        self.whitespace();
        self.at == self.bytes.len()
    }

    /// A top-level key and its colon, classified.
    fn key(&mut self) -> Option<Key> {
        let start = self.at;
        let escaped = self.string()?;
        let quoted = &self.text[start..self.at];
        let key = if escaped {
            decode(quoted)?
        } else {
            Cow::Borrowed(&quoted[1..quoted.len() - 1])
        };
        self.whitespace();
        self.expect(b':')?;
        self.whitespace();
        Some(match &*key {
            "activities" => Key::Activities,
            "watermark" => Key::Watermark,
            _ => Key::Other,
        })
    }

    /// `activities`: `null`, or an array whose elements are recorded.
    fn activities(&mut self, into: &mut Vec<Activity<'a>>) -> Option<()> {
        if self.peek() == Some(b'n') {
            return self.literal(b"null");
        }
        self.expect(b'[')?;
        self.whitespace();
        if self.eat(b']') {
            return Some(());
        }
        loop {
            let start = self.at;
            let mut keys = StreamKeys::default();
            let id = if self.peek() == Some(b'{') {
                self.activity(&mut keys)?
            } else {
                self.value()?;
                None
            };
            into.push((start..self.at, id, keys));
            self.whitespace();
            if self.eat(b',') {
                self.whitespace();
                continue;
            }
            return self.expect(b']');
        }
    }

    /// One activity object; its id as the module docs define it, and its stream keys.
    fn activity(&mut self, keys: &mut StreamKeys) -> Option<Option<Cow<'a, str>>> {
        self.expect(b'{')?;
        self.whitespace();
        if self.eat(b'}') {
            return Some(None);
        }
        let mut id: Option<Option<Cow<'a, str>>> = None;
        let mut repeated = false;
        loop {
            let start = self.at;
            let escaped = self.string()?;
            let quoted = &self.text[start..self.at];
            let decoded = if escaped {
                decode(quoted)
            } else {
                Some(Cow::Borrowed(&quoted[1..quoted.len() - 1]))
            };
            let is_id = decoded.as_deref() == Some("id");
            self.whitespace();
            self.expect(b':')?;
            self.whitespace();
            let value_start = self.at;
            let mut repeated_key = false;
            if let Some(slot) = decoded.as_deref().and_then(|key| keys.slot(key)) {
                // Filled below once the value's end is known; a second one refuses.
                repeated_key = slot.is_some();
                *slot = Some(value_start..value_start);
            }
            keys.refused |= repeated_key || decoded.is_none();
            if is_id {
                repeated |= id.is_some();
                let value = if self.peek() == Some(b'"') {
                    let start = self.at;
                    let escaped = self.string()?;
                    let quoted = &self.text[start..self.at];
                    let inner = &quoted[1..quoted.len() - 1];
                    if inner.is_empty() {
                        None
                    } else if escaped {
                        decode(quoted).filter(|id| !id.is_empty())
                    } else {
                        Some(Cow::Borrowed(inner))
                    }
                } else {
                    self.value()?;
                    None
                };
                id.get_or_insert(value);
            } else {
                self.value()?;
            }
            if let Some(slot) = decoded.as_deref().and_then(|key| keys.slot(key)) {
                *slot = Some(value_start..self.at);
            }
            self.whitespace();
            if self.eat(b',') {
                self.whitespace();
                continue;
            }
            self.expect(b'}')?;
            return Some(if repeated { None } else { id.flatten() });
        }
    }

    /// Any JSON value, checked and skipped. Containers are walked without recursion.
    fn value(&mut self) -> Option<()> {
        let mut levels = Levels::default();
        loop {
            // A value.
            match self.peek()? {
                b'"' => {
                    self.string()?;
                }
                b'-' | b'0'..=b'9' => self.number()?,
                b't' => self.literal(b"true")?,
                b'f' => self.literal(b"false")?,
                b'n' => self.literal(b"null")?,
                open @ (b'{' | b'[') => {
                    self.at += 1;
                    self.whitespace();
                    let close = if open == b'{' { b'}' } else { b']' };
                    if !self.eat(close) {
                        levels.push(open == b'{');
                        if open == b'{' {
                            self.member_key()?;
                        }
                        continue;
                    }
                }
                _ => return None,
            }
            // After a value: the next one at this level, or the ends of levels.
            loop {
                let Some(in_object) = levels.top() else {
                    return Some(());
                };
                self.whitespace();
                if self.eat(b',') {
                    self.whitespace();
                    if in_object {
                        self.member_key()?;
                    }
                    break;
                }
                self.expect(if in_object { b'}' } else { b']' })?;
                levels.pop();
            }
        }
    }

    /// A key inside a skipped object, and its colon.
    fn member_key(&mut self) -> Option<()> {
        self.string()?;
        self.whitespace();
        self.expect(b':')?;
        self.whitespace();
        Some(())
    }

    /// A string (at its opening quote); whether it has escapes.
    fn string(&mut self) -> Option<bool> {
        self.expect(b'"')?;
        let mut escaped = false;
        loop {
            let rest = self.bytes.get(self.at..)?;
            let stop = memchr::memchr2(b'"', b'\\', rest)?;
            // Raw control characters are not allowed in JSON strings.
            if rest[..stop].iter().fold(0x20u8, |low, &b| low.min(b)) < 0x20 {
                return None;
            }
            self.at += stop + 1;
            if rest[stop] == b'"' {
                return Some(escaped);
            }
            escaped = true;
            match self.peek()? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                b'u' => {
                    let hex = self.bytes.get(self.at + 1..self.at + 5)?;
                    if !hex.iter().all(u8::is_ascii_hexdigit) {
                        return None;
                    }
                    self.at += 5;
                }
                _ => return None,
            }
        }
    }

    fn number(&mut self) -> Option<()> {
        self.eat(b'-');
        match self.peek()? {
            b'0' => self.at += 1,
            b'1'..=b'9' => self.digits(),
            _ => return None,
        }
        if self.eat(b'.') {
            self.some_digits()?;
        }
        if let Some(b'e' | b'E') = self.peek() {
            self.at += 1;
            if let Some(b'+' | b'-') = self.peek() {
                self.at += 1;
            }
            self.some_digits()?;
        }
        Some(())
    }

    fn digits(&mut self) {
        while let Some(b'0'..=b'9') = self.peek() {
            self.at += 1;
        }
    }

    fn some_digits(&mut self) -> Option<()> {
        let start = self.at;
        self.digits();
        (self.at > start).then_some(())
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        if self.bytes.get(self.at..self.at + word.len())? != word {
            return None;
        }
        self.at += word.len();
        Some(())
    }
}

/// A quoted JSON string with escapes, decoded; `None` when an escape is not a character
/// (a lone surrogate), as serde_json refuses it.
fn decode(quoted: &str) -> Option<Cow<'_, str>> {
    serde_json::from_str::<String>(quoted).ok().map(Cow::Owned)
}

/// Open containers, innermost last: `true` for an object. The first 64 in a word, deeper
/// ones (hostile frames only) in a vector.
#[derive(Default)]
struct Levels {
    bits: u64,
    depth: usize,
    deeper: Vec<bool>,
}

impl Levels {
    fn push(&mut self, object: bool) {
        if self.depth < 64 {
            self.bits = (self.bits & !(1 << self.depth)) | (u64::from(object) << self.depth);
        } else {
            self.deeper.push(object);
        }
        self.depth += 1;
    }

    fn top(&self) -> Option<bool> {
        match self.depth {
            0 => None,
            d if d <= 64 => Some(self.bits >> (d - 1) & 1 == 1),
            _ => self.deeper.last().copied(),
        }
    }

    fn pop(&mut self) {
        if self.depth > 64 {
            self.deeper.pop();
        }
        self.depth = self.depth.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::jsonscan::arbitrary;
    use proptest::prelude::*;
    use serde::Deserialize;
    use serde_json::value::RawValue;

    /// The reading this module replaced: serde_json's, with each activity's id found by
    /// `jsonscan::top_level_id` in the span serde captured.
    /// Activities (span, id) and the watermark's JSON text, owned.
    type Reading = (Vec<(Range<usize>, Option<String>)>, Option<String>);

    fn by_serde(text: &str) -> Option<Reading> {
        #[derive(Deserialize)]
        struct RawActivitySet<'a> {
            #[serde(borrow)]
            activities: Option<Vec<&'a RawValue>>,
            #[serde(borrow, default)]
            watermark: Option<&'a RawValue>,
        }
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let set = serde_json::from_str::<RawActivitySet<'_>>(text).ok()?;
        let activities = set
            .activities
            .unwrap_or_default()
            .into_iter()
            .map(|raw| {
                let start = raw.get().as_ptr() as usize - text.as_ptr() as usize;
                (
                    start..start + raw.get().len(),
                    crate::jsonscan::top_level_id(raw.get()).map(Cow::into_owned),
                )
            })
            .collect();
        Some((activities, set.watermark.map(|w| w.get().to_owned())))
    }

    fn by_scan(text: &str) -> Option<Reading> {
        let set = read(text)?;
        Some((
            set.activities
                .into_iter()
                .map(|(range, id, _)| (range, id.map(Cow::into_owned)))
                .collect(),
            set.watermark.map(str::to_owned),
        ))
    }

    #[test]
    fn reads_activities_ids_and_the_watermark() {
        let text = r#" { "activities" : [ {"type":"message","id":"c|1","from":{"id":"u"}} , {"id":"c|2"} ], "watermark" : "2" } "#;
        let (activities, watermark) = by_scan(text).unwrap();
        assert_eq!(watermark.as_deref(), Some("\"2\""));
        let ids: Vec<_> = activities.iter().map(|(_, id)| id.as_deref()).collect();
        assert_eq!(ids, [Some("c|1"), Some("c|2")]);
        assert_eq!(&text[activities[1].0.clone()], r#"{"id":"c|2"}"#);
    }

    #[test]
    fn refuses_what_serde_refuses() {
        for text in [
            r#"{"activities":[],"activities":[]}"#,
            r#"{"watermark":"1","watermark":"2"}"#,
            r#"{"activities":{}}"#,
            r#"{"activities":[1,]}"#,
            r#"{"a":01}"#,
            r#"{"a":1.}"#,
            r#"{"a":-}"#,
            r#"{"a":tru}"#,
            "{\"a\":\"\u{1}\"}",
            r#"{"a":"\x"}"#,
            r#"{"a":"\u12G4"}"#,
            r#"{"\ud800":1}"#,
            r#"{"a":1} x"#,
            r#"{"a":[}"#,
            r#"{"a":{"b"}}"#,
            r#"{"a":1"#,
            r#"["not","an","object"]"#,
        ] {
            assert!(read(text).is_none(), "{text}");
            assert!(by_serde(text).is_none(), "the reference accepts {text}");
        }
    }

    #[test]
    fn ids_nested_repeated_empty_escaped_or_not_strings() {
        let ids = |text: &str| -> Vec<Option<String>> {
            by_scan(text)
                .unwrap()
                .0
                .into_iter()
                .map(|(_, id)| id)
                .collect()
        };
        assert_eq!(
            ids(
                r#"{"activities":[{"from":{"id":"u"}},{"id":""},{"id":7},{"id":"a","id":"b"},{"\u0069d":"x\u00e9"},"text",{"id":null,"id":"y"}]}"#
            ),
            [None, None, None, None, Some("xé".to_owned()), None, None]
        );
    }

    #[test]
    fn nesting_has_no_limit_and_no_recursion() {
        let deep = format!(
            r#"{{"activities":[{{"id":"a","x":{}1{}}}]}}"#,
            "[{\"k\":".repeat(5000),
            "}]".repeat(5000)
        );
        let (activities, _) = by_scan(&deep).unwrap();
        assert_eq!(activities[0].1.as_deref(), Some("a"));
        assert_eq!(by_scan(&deep), by_serde(&deep));
    }

    fn frame() -> BoxedStrategy<String> {
        let names: &'static [&'static str] = &["id", "activities", "watermark", "\\u0069d", "type"];
        (
            proptest::collection::vec(arbitrary::object(names), 0..4),
            proptest::option::of(arbitrary::value(names)),
            arbitrary::object(names),
        )
            .prop_map(|(activities, watermark, extra)| {
                let mut text = String::from("{");
                if let serde_json::Value::Object(extra) = extra {
                    for (key, value) in extra {
                        text.push_str(&format!(
                            "{}:{},",
                            serde_json::to_string(&key).unwrap(),
                            value
                        ));
                    }
                }
                text.push_str(&format!(
                    "\"activities\":{}",
                    serde_json::Value::Array(activities)
                ));
                if let Some(watermark) = watermark {
                    text.push_str(&format!(", \"watermark\" : {watermark}"));
                }
                text.push('}');
                text
            })
            .boxed()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn reads_what_serde_reads(text in frame()) {
            prop_assert_eq!(by_scan(&text), by_serde(&text));
        }

        /// Broken frames too: cut short, or one byte replaced by a character JSON cares about.
        #[test]
        fn refuses_what_serde_refuses_on_damaged_frames(
            text in frame(),
            cut in any::<prop::sample::Index>(),
            at in any::<prop::sample::Index>(),
            with in prop::sample::select(vec!['"', '\\', '{', '}', '[', ']', ',', ':', '0', 'e', '-', '\u{1}', 'n', ' ']),
        ) {
            let mut damaged: Vec<char> = text.chars().collect();
            let position = at.index(damaged.len());
            damaged[position] = with;
            let damaged: String = damaged.into_iter().collect();
            prop_assert_eq!(by_scan(&damaged), by_serde(&damaged), "{}", damaged);
            let end = cut.index(text.len());
            if text.is_char_boundary(end) {
                prop_assert_eq!(by_scan(&text[..end]), by_serde(&text[..end]));
            }
        }
    }
}
