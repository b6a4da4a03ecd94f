//! Livestreamed answers on the stream path (ARCHITECTURE §14, PROTOCOL §5.2): which
//! activities are a stream's interims and which its final.
//!
//! An interim is a `typing` activity whose stream fields (in a `streaminfo` entity or in
//! `channelData`) say `streamType` `streaming` or `informative` with a positive integer
//! `streamSequence`; its stream is its `streamId`, or its own `id` for the first one. A
//! final is an activity with `streamType` `final` and a `streamId`. Anything else, however
//! close (a missing or non-numeric sequence, say), is relayed as an ordinary activity:
//! nothing the gateway does to streams can then reorder, drop or double it.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;

use super::ids::ActivityKey;

/// What one activity is to a livestream.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StreamRole {
    /// Cumulative text so far; a newer one of the same stream replaces it.
    Interim { stream: ActivityKey, sequence: u64 },
    /// The whole answer: the stream is over.
    Final { stream: ActivityKey },
}

/// `type` and `id` are read as raw values: a hostile upstream may send a number there, and
/// that must make the activity id-less (as the tracker sees it), not stream fields unread.
#[derive(Deserialize)]
struct Probe<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(borrow, default)]
    entities: Option<Vec<&'a RawValue>>,
    #[serde(rename = "channelData", borrow, default)]
    channel_data: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct Fields<'a> {
    #[serde(rename = "type", borrow, default)]
    kind: Option<Cow<'a, str>>,
    #[serde(rename = "streamType", borrow, default)]
    stream_type: Option<Cow<'a, str>>,
    #[serde(rename = "streamSequence", borrow, default)]
    stream_sequence: Option<&'a RawValue>,
    #[serde(rename = "streamId", borrow, default)]
    stream_id: Option<Cow<'a, str>>,
}

/// The stream role of one activity's JSON text, if it has one: a serde reading of the whole
/// activity. The relay reads roles with [`role_of`]; this is the reading it is tested
/// against, and the one for text no scan has walked.
pub fn role(activity: &str) -> Option<StreamRole> {
    memchr::memmem::find(activity.as_bytes(), b"\"streamType\"")?;
    // serde would also read a struct from a JSON array (its positional form): an activity,
    // entity or `channelData` that is not an object has no stream fields.
    if !activity.trim_start().starts_with('{') {
        return None;
    }
    let probe: Probe<'_> = serde_json::from_str(activity).ok()?;
    let kind = probe.kind.and_then(string);
    let id = probe.id.and_then(string);
    let fields = stream_fields(&probe)?;
    decide(
        kind.as_deref(),
        id.as_deref(),
        fields.stream_type.as_deref()?,
        fields.stream_sequence.map(RawValue::get),
        fields.stream_id.as_deref(),
    )
}

/// The role an activity's fields give it (the module docs say which).
fn decide(
    kind: Option<&str>,
    id: Option<&str>,
    stream_type: &str,
    stream_sequence: Option<&str>,
    stream_id: Option<&str>,
) -> Option<StreamRole> {
    if stream_type == "final" {
        let stream = stream_id.filter(|id| !id.is_empty())?;
        return Some(StreamRole::Final {
            stream: ActivityKey::of(stream),
        });
    }
    if !matches!(stream_type, "streaming" | "informative") || kind != Some("typing") {
        return None;
    }
    let sequence = stream_sequence
        .and_then(|raw| raw.parse::<u64>().ok())
        .filter(|sequence| *sequence >= 1)?;
    let stream = stream_id.or(id).filter(|id| !id.is_empty())?;
    Some(StreamRole::Interim {
        stream: ActivityKey::of(stream),
        sequence,
    })
}

/// The same as [`role`] for an activity of a frame `activity_set::read` has already walked
/// and validated: `activity` is its range in `frame`, `keys` where its stream-relevant
/// values are. Those few values are read by hand (no serde set-up per value, no pass over the
/// activity's cumulative `text`); the property test `same_as_role` pins the reading to
/// [`role`]'s on hostile shapes.
pub fn role_of(
    frame: &str,
    activity: std::ops::Range<usize>,
    keys: &crate::activity_set::StreamKeys,
) -> Option<StreamRole> {
    if keys.refused {
        return None;
    }
    // `null` is as good as absent for all four, as serde reads an `Option`.
    let slice = |range: &Option<std::ops::Range<usize>>| {
        range
            .clone()
            .and_then(|r| frame.get(r))
            .filter(|text| *text != "null")
    };
    let from_entities = match slice(&keys.entities) {
        None => None,
        Some(entities) if entities.starts_with('[') => elements(entities)
            .filter(|entity| entity.starts_with('{'))
            .find_map(|entity| {
                read_fields(entity).filter(|f| f.kind.as_deref() == Some("streaminfo"))
            }),
        // serde refuses an activity whose `entities` is not an array.
        Some(_) => return None,
    };
    let fields = from_entities.or_else(|| {
        slice(&keys.channel_data)
            .filter(|data| data.starts_with('{'))
            .and_then(read_fields)
            .filter(|f| f.stream_type.is_some())
    })?;
    let kind = slice(&keys.kind).and_then(string_value);
    let id = slice(&keys.id).and_then(string_value);
    let role = decide(
        kind.as_deref(),
        id.as_deref(),
        fields.stream_type.as_deref()?,
        fields.stream_sequence,
        fields.stream_id.as_deref(),
    )?;
    // `role` reads nothing from an activity without a literal `"streamType"`; a key written
    // that way is one, so only an escaped one needs the search through the whole activity.
    if !fields.literal_stream_type {
        memchr::memmem::find(frame.get(activity)?.as_bytes(), b"\"streamType\"")?;
    }
    Some(role)
}

/// A JSON string's value; anything else (number, null, object) is no string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str(raw.get()).ok()
}

/// The `streaminfo` entity's fields, else `channelData`'s when it has a `streamType`.
fn stream_fields<'a>(probe: &Probe<'a>) -> Option<Fields<'a>> {
    let object = |raw: &&'a RawValue| raw.get().starts_with('{');
    let from_entities = probe.entities.as_ref().and_then(|entities| {
        entities.iter().filter(|raw| object(raw)).find_map(|raw| {
            serde_json::from_str::<Fields<'a>>(raw.get())
                .ok()
                .filter(|f| f.kind.as_deref() == Some("streaminfo"))
        })
    });
    from_entities.or_else(|| {
        probe
            .channel_data
            .filter(object)
            .and_then(|raw| serde_json::from_str::<Fields<'a>>(raw.get()).ok())
            .filter(|f| f.stream_type.is_some())
    })
}

/// An entity's (or `channelData`'s) stream fields, read by hand from valid JSON text.
#[derive(Default)]
struct HandFields<'a> {
    kind: Option<Cow<'a, str>>,
    stream_type: Option<Cow<'a, str>>,
    /// The value's JSON text.
    stream_sequence: Option<&'a str>,
    stream_id: Option<Cow<'a, str>>,
    /// `streamType` was written without escapes.
    literal_stream_type: bool,
}

/// The fields of one JSON object, or `None` where serde's `Fields` refuses it: a field
/// given twice, a key whose escapes do not decode, a string field holding anything but a
/// string or `null`.
fn read_fields(object: &str) -> Option<HandFields<'_>> {
    let mut fields = HandFields::default();
    let mut seen = [false; 4];
    for (key, value) in members(object) {
        let escaped = key.contains('\\');
        let name = if escaped {
            Cow::Owned(serde_json::from_str::<String>(key).ok()?)
        } else {
            Cow::Borrowed(key.get(1..key.len().saturating_sub(1))?)
        };
        let field = match &*name {
            "type" => 0,
            "streamType" => 1,
            "streamSequence" => 2,
            "streamId" => 3,
            _ => continue,
        };
        if std::mem::replace(&mut seen[field], true) {
            return None;
        }
        if field == 2 {
            fields.stream_sequence = Some(value).filter(|value| *value != "null");
            continue;
        }
        let text = match value {
            "null" => None,
            _ => Some(string_value(value)?),
        };
        match field {
            0 => fields.kind = text,
            1 => {
                fields.stream_type = text;
                fields.literal_stream_type = !escaped;
            }
            _ => fields.stream_id = text,
        }
    }
    Some(fields)
}

/// A JSON string's value from its quoted text; `None` for any other value, or escapes that
/// are no character (a lone surrogate), as serde refuses them.
fn string_value(text: &str) -> Option<Cow<'_, str>> {
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

/// The members (key with its quotes, value) of a valid JSON object's text.
fn members(object: &str) -> impl Iterator<Item = (&str, &str)> {
    let bytes = object.as_bytes();
    let mut at = 1;
    std::iter::from_fn(move || {
        at = after_whitespace(bytes, at);
        if bytes.get(at) == Some(&b',') {
            at = after_whitespace(bytes, at + 1);
        }
        if bytes.get(at) != Some(&b'"') {
            return None;
        }
        let key_end = value_end(bytes, at);
        let key = object.get(at..key_end)?;
        at = after_whitespace(bytes, key_end);
        if bytes.get(at) != Some(&b':') {
            return None;
        }
        let start = after_whitespace(bytes, at + 1);
        at = value_end(bytes, start);
        Some((key, object.get(start..at)?))
    })
}

/// The elements of a valid JSON array's text.
fn elements(array: &str) -> impl Iterator<Item = &str> {
    let bytes = array.as_bytes();
    let mut at = 1;
    std::iter::from_fn(move || {
        at = after_whitespace(bytes, at);
        if bytes.get(at) == Some(&b',') {
            at = after_whitespace(bytes, at + 1);
        }
        if matches!(bytes.get(at), None | Some(b']')) {
            return None;
        }
        let start = at;
        at = value_end(bytes, start);
        array.get(start..at)
    })
}

fn after_whitespace(bytes: &[u8], mut at: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\t' | b'\r') = bytes.get(at) {
        at += 1;
    }
    at
}

/// Where the valid JSON value starting at `at` ends (its end's index, at most the length).
fn value_end(bytes: &[u8], at: usize) -> usize {
    match bytes.get(at) {
        Some(b'"') => string_end(bytes, at),
        Some(b'{' | b'[') => {
            let mut depth = 0usize;
            let mut i = at;
            while let Some(&byte) = bytes.get(i) {
                match byte {
                    b'"' => {
                        i = string_end(bytes, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth -= 1;
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            bytes.len()
        }
        _ => {
            let rest = bytes.get(at..).unwrap_or_default();
            at + rest
                .iter()
                .position(|b| matches!(b, b',' | b'}' | b']' | b' ' | b'\n' | b'\t' | b'\r'))
                .unwrap_or(rest.len())
        }
    }
}

/// Where the string whose opening quote is at `at` ends, after its closing quote.
fn string_end(bytes: &[u8], at: usize) -> usize {
    let mut i = at + 1;
    loop {
        let Some(stop) = bytes
            .get(i..)
            .and_then(|rest| memchr::memchr2(b'"', b'\\', rest))
        else {
            return bytes.len();
        };
        i += stop;
        if bytes[i] == b'"' {
            return i + 1;
        }
        // An escape: the byte after the backslash is never the string's end.
        i += 2;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn interim(stream: &str, sequence: u64) -> Option<StreamRole> {
        Some(StreamRole::Interim {
            stream: ActivityKey::of(stream),
            sequence,
        })
    }

    #[test]
    fn both_encodings_and_the_first_interims_own_id() {
        assert_eq!(
            role(
                r#"{"type":"typing","id":"c|s1","text":"w1","entities":[{"type":"streaminfo","streamType":"streaming","streamSequence":1}]}"#
            ),
            interim("c|s1", 1)
        );
        assert_eq!(
            role(
                r#"{"type":"typing","id":"c|s2","entities":[{"type":"other"},{"type":"streaminfo","streamType":"informative","streamSequence":2,"streamId":"c|s1"}]}"#
            ),
            interim("c|s1", 2)
        );
        assert_eq!(
            role(
                r#"{"type":"typing","id":"x","channelData":{"streamType":"streaming","streamSequence":7,"streamId":"c|s1"}}"#
            ),
            interim("c|s1", 7)
        );
        assert_eq!(
            role(
                r#"{"type":"message","id":"c|0000004","entities":[{"type":"streaminfo","streamType":"final","streamId":"c|s1"}]}"#
            ),
            Some(StreamRole::Final {
                stream: ActivityKey::of("c|s1")
            })
        );
    }

    /// A hostile upstream's non-string `id` makes the activity id-less, as the tracker sees
    /// it; its `streamId` still names the stream (found by the tracker_observe fuzz target:
    /// the whole probe failed and the interim went out as an ordinary activity).
    #[test]
    fn a_non_string_id_is_no_id() {
        assert_eq!(
            role(
                r#"{"id":540680811,"type":"typing","channelData":{"streamType":"streaming","streamSequence":256,"streamId":"stream-0"}}"#
            ),
            interim("stream-0", 256)
        );
        assert_eq!(
            role(
                r#"{"id":7,"type":"typing","channelData":{"streamType":"streaming","streamSequence":1}}"#
            ),
            None
        );
        assert_eq!(
            role(
                r#"{"id":"a","type":5,"channelData":{"streamType":"streaming","streamSequence":1}}"#
            ),
            None
        );
    }

    /// `role_of` (the slices `activity_set` found) reads every activity as `role` (a serde
    /// probe of the whole activity) does: repeated and escaped keys, nulls, wrong types.
    mod same_as_role {
        use super::super::{role, role_of};
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            r#""type""#,
            r#""\u0074ype""#,
            r#""id""#,
            r#""\u0069d""#,
            r#""entities""#,
            r#""entit\u0069es""#,
            r#""channelData""#,
            r#""channel\u0044ata""#,
            r#""text""#,
            r#""streamType""#,
            // a key that does not decode: serde refuses the activity
            r#""\ud800""#,
        ];
        const VALUES: &[&str] = &[
            r#""typing""#,
            r#""message""#,
            r#""a""#,
            r#""""#,
            r#""s\u0031""#,
            "7",
            "null",
            r#"[{"type":"streaminfo","streamType":"streaming","streamSequence":2,"streamId":"s"}]"#,
            r#"[{"type":"other"},{"type":"streaminfo","streamType":"final","streamId":"s"}]"#,
            r#"[1,"streamType"]"#,
            r#""streamType""#,
            r#"{"streamType":"streaming","streamSequence":1}"#,
            r#"{"streamType":"informative","streamSequence":3,"streamId":"x"}"#,
            r#"{"streamType":"final","streamId":"s"}"#,
            r#"{"stream\u0054ype":"streaming","streamSequence":1,"streamId":"e"}"#,
            r#"{"streamType":"streaming","streamSequence":"2"}"#,
            // hostile entities: repeated, escaped and undecodable keys, nulls, numbers and
            // arrays where objects or strings go, nesting, spacing, overflow
            r#"[{"type":"streaminfo","type":"streaminfo","streamType":"streaming","streamSequence":2,"streamId":"s"}]"#,
            r#"[{"type":"streaminfo","streamType":"streaming","stream\u0053equence":4,"streamId":null}]"#,
            r#"[null,{"type":"streaminfo","streamType":null,"streamSequence":2},{"type":"streaminfo","streamType":"final","streamId":"f"}]"#,
            r#"[{"type":"streaminfo","streamType":5},{"type":"str\u0065aminfo","streamType":"streaming","streamSequence":9,"streamId":"t"}]"#,
            r#"[["streaminfo","final",null,"s"]]"#,
            r#"[{"type":"x","e":{"type":"streaminfo","streamType":"final","streamId":"n"}},{"type":"streaminfo","streamType":"streaming","streamSequence":18446744073709551615,"streamId":"big"}]"#,
            r#"[ { "type" : "streaminfo" , "x" : [ "]" , { "}" : "\"" } ] , "streamType" : "informative" , "streamSequence" : 3 } ]"#,
            r#"[{"type":"streaminfo","\ud800":1,"streamType":"final","streamId":"u"},{"type":"streaminfo","streamType":"final","streamId":"v","x":"\ud800"}]"#,
            r#"[{"type":"streaminfo","streamType":"final","streamId":"\ud800"}]"#,
            r#"[{"type":"streaminfo","stream\u0054ype":"final","streamId":"w"}]"#,
            r#"[{"type":"streaminfo","streamType":"streaming","streamSequence":1e0,"streamId":"e"}]"#,
            r#"{"streamType":"streaming","streamSequence":18446744073709551616,"streamId":"o"}"#,
            r#"{"streamType":"streaming","streamSequence":1.0,"streamId":"z"}"#,
            r#"{"streamType":"streaming","streamSequence":1,"streamId":"z","streamId":"y"}"#,
            r#"{"streamType":"final","streamId":"q","streamType":"final"}"#,
            r#"{"streamType":"streaming","streamSequence":null,"streamId":"n"}"#,
            r#"{"streamType":"streaming","streamSequence":1,"streamId":7}"#,
            r#"{"streamType":"streaming","streamSequence":1,"streamId":""}"#,
            r#"{ "streamType" : "streaming" , "streamSequence" : 5 , "streamId" : "w\u00e9" }"#,
            r#"["typing","streaming",1,"a"]"#,
            r#""typ\u0069ng""#,
            r#"{}"#,
            "[]",
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]
            #[test]
            fn for_any_activity(members in proptest::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..8)) {
                let body: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("{}:{}", KEYS[*k], VALUES[*v]))
                    .collect();
                let activity = format!("{{{}}}", body.join(","));
                let frame = format!(r#"{{"activities":[{activity}]}}"#);
                let set = crate::activity_set::read(&frame).expect("a valid frame");
                let (range, _, keys) = &set.activities[0];
                prop_assert_eq!(&frame[range.clone()], activity.as_str());
                prop_assert_eq!(role_of(&frame, range.clone(), keys), role(&activity), "{}", activity);
            }
        }
    }

    #[test]
    fn anything_short_of_the_shape_is_an_ordinary_activity() {
        for text in [
            r#"{"type":"message","text":"hi"}"#,
            r#"{"type":"typing"}"#,
            // no sequence, a string, zero, negative, fractional
            r#"{"type":"typing","id":"a","channelData":{"streamType":"streaming"}}"#,
            r#"{"type":"typing","id":"a","channelData":{"streamType":"streaming","streamSequence":"2"}}"#,
            r#"{"type":"typing","id":"a","channelData":{"streamType":"streaming","streamSequence":0}}"#,
            r#"{"type":"typing","id":"a","channelData":{"streamType":"streaming","streamSequence":-1}}"#,
            r#"{"type":"typing","id":"a","channelData":{"streamType":"streaming","streamSequence":1.5}}"#,
            // a message is never an interim; no id and no streamId names no stream
            r#"{"type":"message","id":"a","channelData":{"streamType":"streaming","streamSequence":1}}"#,
            r#"{"type":"typing","channelData":{"streamType":"streaming","streamSequence":1}}"#,
            // a final without a stream, an unknown type, broken shapes
            r#"{"type":"message","channelData":{"streamType":"final"}}"#,
            r#"{"type":"typing","id":"a","channelData":{"streamType":"other","streamSequence":1}}"#,
            r#"{"type":"typing","id":"a","entities":"streamType","channelData":{"streamType":1}}"#,
            r#"{"type":"typing","id":"a","entities":[1,"streamType"]}"#,
            r#"{"streamType""#,
        ] {
            assert_eq!(role(text), None, "{text}");
        }
    }
}

/// Streams a hub keeps track of at once; past it the stream quiet the longest is
/// forgotten (counted abandoned), so a hostile upstream opening streams cannot grow it.
pub const MAX_OPEN_STREAMS: usize = 32;
/// Finished streams remembered, so an interim arriving after its final is dropped.
pub const FINISHED_STREAMS: usize = 64;
/// A stream with neither an interim nor its final for this long is abandoned: forgotten,
/// and counted.
pub const ABANDONED_AFTER: std::time::Duration = std::time::Duration::from_secs(120);

/// One conversation's open livestreams, as its hub sees them.
#[derive(Default)]
pub struct OpenStreams {
    open: Vec<Open>,
    finished: std::collections::VecDeque<ActivityKey>,
}

struct Open {
    stream: ActivityKey,
    sequence: u64,
    /// The hub sequence number of its newest interim while that is still in the ring.
    in_ring: Option<u64>,
    last_at: std::time::Instant,
}

/// What the hub does with an interim.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// After its final, or not newer than one already relayed: never sent.
    Drop,
    /// Publish it, removing from the ring the interim it supersedes, if still there.
    Publish {
        replaces: Option<u64>,
        /// The first interim of its stream.
        first: bool,
        /// Streams forgotten to make room or for silence (no final).
        abandoned: usize,
    },
}

/// What the hub does when a stream's final arrives.
#[derive(Debug, PartialEq, Eq)]
pub struct Finish {
    /// The stream's interim still in the ring, which no client needs any more.
    pub removes: Option<u64>,
    /// The last interim sequence the hub relayed (0: none).
    pub last_sequence: u64,
}

impl OpenStreams {
    /// An interim `sequence` of `stream`, to be published as hub event `seq`.
    pub fn interim(
        &mut self,
        stream: ActivityKey,
        sequence: u64,
        seq: u64,
        now: std::time::Instant,
    ) -> Admit {
        if self.finished.contains(&stream) {
            return Admit::Drop;
        }
        let mut abandoned = self.sweep(now);
        if let Some(open) = self.open.iter_mut().find(|o| o.stream == stream) {
            if sequence <= open.sequence {
                return Admit::Drop;
            }
            open.sequence = sequence;
            open.last_at = now;
            return Admit::Publish {
                replaces: open.in_ring.replace(seq),
                first: false,
                abandoned,
            };
        }
        if self.open.len() >= MAX_OPEN_STREAMS
            && let Some(quietest) = (0..self.open.len()).min_by_key(|&i| self.open[i].last_at)
        {
            self.open.swap_remove(quietest);
            abandoned += 1;
        }
        self.open.push(Open {
            stream,
            sequence,
            in_ring: Some(seq),
            last_at: now,
        });
        Admit::Publish {
            replaces: None,
            first: true,
            abandoned,
        }
    }

    /// The final of `stream` arrived: later interims of it are dropped.
    pub fn finish(&mut self, stream: ActivityKey) -> Finish {
        let open = self
            .open
            .iter()
            .position(|o| o.stream == stream)
            .map(|i| self.open.swap_remove(i));
        if !self.finished.contains(&stream) {
            if self.finished.len() >= FINISHED_STREAMS {
                self.finished.pop_front();
            }
            self.finished.push_back(stream);
        }
        Finish {
            removes: open.as_ref().and_then(|o| o.in_ring),
            last_sequence: open.map_or(0, |o| o.sequence),
        }
    }

    /// The ring let go of event `seq` (evicted for space).
    pub fn left_ring(&mut self, seq: u64) {
        if let Some(open) = self.open.iter_mut().find(|o| o.in_ring == Some(seq)) {
            open.in_ring = None;
        }
    }

    /// Forgets streams silent for [`ABANDONED_AFTER`]; how many.
    fn sweep(&mut self, now: std::time::Instant) -> usize {
        let before = self.open.len();
        self.open
            .retain(|o| now.saturating_duration_since(o.last_at) < ABANDONED_AFTER);
        before - self.open.len()
    }

    pub fn open(&self) -> usize {
        self.open.len()
    }
}

#[cfg(test)]
mod book {
    use super::*;
    use std::time::{Duration, Instant};

    #[test]
    fn newest_only_in_order_and_nothing_after_the_final() {
        let mut book = OpenStreams::default();
        let s = ActivityKey::of("s");
        let now = Instant::now();
        assert!(matches!(
            book.interim(s, 1, 10, now),
            Admit::Publish {
                replaces: None,
                first: true,
                ..
            }
        ));
        assert!(matches!(
            book.interim(s, 2, 11, now),
            Admit::Publish {
                replaces: Some(10),
                first: false,
                ..
            }
        ));
        assert_eq!(book.interim(s, 2, 12, now), Admit::Drop, "not newer");
        assert_eq!(book.interim(s, 1, 12, now), Admit::Drop, "older");
        book.left_ring(11);
        assert!(matches!(
            book.interim(s, 5, 12, now),
            Admit::Publish { replaces: None, .. }
        ));
        assert_eq!(
            book.finish(s),
            Finish {
                removes: Some(12),
                last_sequence: 5
            }
        );
        assert_eq!(book.interim(s, 6, 13, now), Admit::Drop, "after its final");
        assert_eq!(book.open(), 0);
    }

    #[test]
    fn bounded_and_silent_streams_are_abandoned() {
        let mut book = OpenStreams::default();
        let now = Instant::now();
        for i in 0..MAX_OPEN_STREAMS as u64 {
            book.interim(ActivityKey::of(&i.to_string()), 1, i, now);
        }
        let Admit::Publish { abandoned, .. } = book.interim(ActivityKey::of("new"), 1, 99, now)
        else {
            panic!("published");
        };
        assert_eq!(abandoned, 1);
        assert_eq!(book.open(), MAX_OPEN_STREAMS);
        let later = now + ABANDONED_AFTER + Duration::from_secs(1);
        let Admit::Publish { abandoned, .. } = book.interim(ActivityKey::of("late"), 1, 100, later)
        else {
            panic!("published");
        };
        assert_eq!(abandoned, MAX_OPEN_STREAMS);
        for i in 0..(FINISHED_STREAMS * 2) {
            book.finish(ActivityKey::of(&format!("f{i}")));
        }
        assert_eq!(book.finished.len(), FINISHED_STREAMS);
    }
}

/// One client's view of the streams it is sent: the last interim sequence it got per
/// stream, and, under `stream.chunk_interval`, the newest interim held back per stream.
/// Both bounded by [`MAX_OPEN_STREAMS`].
pub struct ClientStreams<E> {
    sent: Vec<(ActivityKey, u64, std::time::Instant)>,
    held: Vec<(ActivityKey, E)>,
}

impl<E> Default for ClientStreams<E> {
    fn default() -> Self {
        Self {
            sent: Vec::new(),
            held: Vec::new(),
        }
    }
}

/// What the client writer does with an interim.
pub enum Send<E> {
    /// Write it; `skipped` interims of its stream went unsent before it.
    Now { skipped: u64 },
    /// Too soon after the last one of its stream: held (the one it replaced is returned).
    Held(Option<E>),
}

impl<E> ClientStreams<E> {
    pub fn interim(
        &mut self,
        stream: ActivityKey,
        sequence: u64,
        event: E,
        now: std::time::Instant,
        interval: std::time::Duration,
    ) -> (Send<E>, Option<E>) {
        let last = self.sent.iter_mut().find(|(s, ..)| *s == stream);
        if let Some((_, _, at)) = &last
            && !interval.is_zero()
            && now.saturating_duration_since(*at) < interval
        {
            let replaced = match self.held.iter_mut().find(|(s, _)| *s == stream) {
                Some((_, held)) => Some(std::mem::replace(held, event)),
                None => {
                    self.held.push((stream, event));
                    None
                }
            };
            return (Send::Held(replaced), None);
        }
        let skipped = match last {
            Some((_, last_sequence, at)) => {
                let skipped = sequence.saturating_sub(*last_sequence + 1);
                *last_sequence = sequence;
                *at = now;
                skipped
            }
            None => {
                if self.sent.len() >= MAX_OPEN_STREAMS {
                    self.sent.remove(0);
                }
                self.sent.push((stream, sequence, now));
                0
            }
        };
        (Send::Now { skipped }, Some(event))
    }

    /// The final of `stream` is being sent: how many of its interims this client never
    /// got; a held interim of it is dropped.
    pub fn finish(&mut self, stream: ActivityKey, last_sequence: u64) -> u64 {
        self.held.retain(|(s, _)| *s != stream);
        match self.sent.iter().position(|(s, ..)| *s == stream) {
            Some(i) => {
                let (_, sent, _) = self.sent.swap_remove(i);
                last_sequence.saturating_sub(sent)
            }
            None => last_sequence,
        }
    }

    /// When the earliest held interim may go.
    pub fn next_due(&self, interval: std::time::Duration) -> Option<std::time::Instant> {
        self.held
            .iter()
            .filter_map(|(stream, _)| {
                self.sent
                    .iter()
                    .find(|(s, ..)| s == stream)
                    .map(|(.., at)| *at + interval)
            })
            .min()
    }

    /// Held interims whose time has come, oldest stream first.
    pub fn take_due(
        &mut self,
        now: std::time::Instant,
        interval: std::time::Duration,
        out: &mut Vec<E>,
    ) {
        let sent = &self.sent;
        let mut i = 0;
        while i < self.held.len() {
            let stream = self.held[i].0;
            let due = sent
                .iter()
                .find(|(s, ..)| *s == stream)
                .is_none_or(|(.., at)| now.saturating_duration_since(*at) >= interval);
            if due {
                out.push(self.held.remove(i).1);
            } else {
                i += 1;
            }
        }
    }
}
