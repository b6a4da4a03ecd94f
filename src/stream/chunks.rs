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

/// The stream role of one activity's JSON text, if it has one. Costs a substring search
/// for activities without stream fields (nearly all of them); only those with one are
/// parsed, and then only shallowly.
pub fn role(activity: &str) -> Option<StreamRole> {
    memchr::memmem::find(activity.as_bytes(), b"\"streamType\"")?;
    let probe: Probe<'_> = serde_json::from_str(activity).ok()?;
    role_from_probe(&probe)
}

/// The role an activity's probed fields give it.
fn role_from_probe(probe: &Probe<'_>) -> Option<StreamRole> {
    let kind = probe.kind.and_then(string);
    let id = probe.id.and_then(string);
    let fields = stream_fields(probe)?;
    let stream_type = fields.stream_type.as_deref()?;
    if stream_type == "final" {
        let stream = fields.stream_id.as_deref().filter(|id| !id.is_empty())?;
        return Some(StreamRole::Final {
            stream: ActivityKey::of(stream),
        });
    }
    if !matches!(stream_type, "streaming" | "informative") || kind.as_deref() != Some("typing") {
        return None;
    }
    let sequence = fields
        .stream_sequence
        .and_then(|raw| raw.get().parse::<u64>().ok())
        .filter(|sequence| *sequence >= 1)?;
    let stream = fields
        .stream_id
        .as_deref()
        .or(id.as_deref())
        .filter(|id| !id.is_empty())?;
    Some(StreamRole::Interim {
        stream: ActivityKey::of(stream),
        sequence,
    })
}

/// The same as [`role`] for an activity of a frame `activity_set::read` has already walked:
/// `activity` is its range in `frame`, `keys` where its stream-relevant values are. Only
/// those small values are parsed, not the activity's whole text again (most of an interim's
/// bytes are its cumulative `text`).
pub fn role_of(
    frame: &str,
    activity: std::ops::Range<usize>,
    keys: &crate::activity_set::StreamKeys,
) -> Option<StreamRole> {
    memchr::memmem::find(frame[activity].as_bytes(), b"\"streamType\"")?;
    if keys.repeated {
        return None;
    }
    let slice = |range: &Option<std::ops::Range<usize>>| range.clone().map(|r| &frame[r]);
    // As the serde probe of `role` reads them: `entities` must be an array or null, and
    // `null` for any of the four is as good as absent.
    let entities: Option<Vec<&RawValue>> = match slice(&keys.entities) {
        Some(text) => serde_json::from_str(text).ok()?,
        None => None,
    };
    let channel_data = slice(&keys.channel_data)
        .filter(|text| *text != "null")
        .map(serde_json::from_str::<&RawValue>)
        .transpose()
        .ok()?;
    let raw = |range: &Option<std::ops::Range<usize>>| {
        slice(range)
            .filter(|text| *text != "null")
            .and_then(|text| serde_json::from_str::<&RawValue>(text).ok())
    };
    let probe = Probe {
        kind: raw(&keys.kind),
        id: raw(&keys.id),
        entities,
        channel_data,
    };
    role_from_probe(&probe)
}

/// A JSON string's value; anything else (number, null, object) is no string.
fn string(raw: &RawValue) -> Option<Cow<'_, str>> {
    serde_json::from_str(raw.get()).ok()
}

/// The `streaminfo` entity's fields, else `channelData`'s when it has a `streamType`.
fn stream_fields<'a>(probe: &Probe<'a>) -> Option<Fields<'a>> {
    let from_entities = probe.entities.as_ref().and_then(|entities| {
        entities.iter().find_map(|raw| {
            serde_json::from_str::<Fields<'a>>(raw.get())
                .ok()
                .filter(|f| f.kind.as_deref() == Some("streaminfo"))
        })
    });
    from_entities.or_else(|| {
        probe
            .channel_data
            .and_then(|raw| serde_json::from_str::<Fields<'a>>(raw.get()).ok())
            .filter(|f| f.stream_type.is_some())
    })
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
        ];

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(4096))]
            #[test]
            fn for_any_activity(members in proptest::collection::vec((0..KEYS.len(), 0..VALUES.len()), 0..7)) {
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
