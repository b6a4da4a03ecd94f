//! The watermark tracker: which upstream position we are at, and which activities were
//! already delivered, so replays after a reconnect reach clients exactly once.
//!
//! Rules (PROTOCOL §0.6, §5.2, §10.6):
//! - the watermark is opaque: copied verbatim, compared only for equality, never computed;
//! - a frame whose watermark is null or missing never overwrites the last one;
//! - an activity whose `id` was delivered before is dropped, whatever its position or
//!   sequence number (the service has replayed whole histories and reset sequences);
//! - frames without a watermark (typing) are forwarded live and never replayed;
//! - order of arrival is kept; nothing is reordered.

use std::collections::VecDeque;
use std::ops::Range;
use std::sync::Arc;

use super::chunks::StreamRole;
pub use super::ids::ActivityKey;
use super::ids::KeySet;

/// An activity's id (when it has one) and its byte range inside the frame text.
pub type ActivitySpan = (Option<ActivityKey>, Range<usize>);

/// What one upstream text frame turned out to be.
#[derive(Debug, PartialEq, Eq)]
pub enum Observed {
    /// An empty keepalive: nothing to forward.
    Keepalive,
    /// Forward this text to clients.
    Forward(Forward),
    /// An ActivitySet whose activities were all delivered already.
    AllDuplicates { dropped: usize },
}

#[derive(Debug, PartialEq, Eq)]
pub struct Forward {
    /// A rebuilt frame when some activities were dropped; `None`: send the upstream frame
    /// itself, unchanged and uncopied (the common case).
    pub rebuilt: Option<String>,
    /// The frame's watermark; `None` means live-only (never replayed).
    pub watermark: Option<Arc<str>>,
    /// Ids of the activities in `text`, and each one's byte range inside `text`.
    pub activities: Vec<ActivitySpan>,
    pub dropped: usize,
    /// What the frame is to a livestreamed answer.
    pub stream: StreamMark,
}

/// A frame's part in a livestreamed answer (see `chunks`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum StreamMark {
    #[default]
    None,
    /// A live-only frame holding one interim and nothing else: a newer one of its stream
    /// may replace it.
    Interim { stream: ActivityKey, sequence: u64 },
    /// The frame holds the final of this stream.
    Final { stream: ActivityKey },
}

pub struct Tracker {
    watermark: Option<Arc<str>>,
    delivered: KeySet,
    order: VecDeque<ActivityKey>,
    capacity: usize,
}

impl Tracker {
    /// `capacity` bounds how many delivered ids are remembered (oldest forgotten first).
    pub fn new(capacity: usize, watermark: Option<Arc<str>>) -> Self {
        Self {
            watermark,
            delivered: KeySet::default(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// The last upstream watermark seen: where a reconnect resumes from.
    pub fn watermark(&self) -> Option<&Arc<str>> {
        self.watermark.as_ref()
    }

    pub fn was_delivered(&self, id: &str) -> bool {
        self.delivered.contains(&ActivityKey::of(id))
    }

    pub fn observe(&mut self, text: &str) -> Observed {
        if text.trim().is_empty() {
            return Observed::Keepalive;
        }
        let Some(set) = crate::activity_set::read(text) else {
            // "Additional types … identified by the properties in the JSON root" (PROTOCOL §5.2):
            // unknown content passes through untouched, live only.
            return Observed::Forward(Forward {
                rebuilt: None,
                watermark: None,
                activities: Vec::new(),
                dropped: 0,
                stream: StreamMark::None,
            });
        };
        let watermark = set.watermark.and_then(watermark_text);
        if let Some(w) = &watermark {
            self.watermark = Some(w.clone());
        }
        let mut kept: Vec<ActivitySpan> = Vec::with_capacity(set.activities.len());
        let mut dropped = 0;
        let mut stream = StreamMark::None;
        let single = set.activities.len() == 1;
        for (range, id, stream_keys) in set.activities {
            let key = id.map(|id| ActivityKey::of(&id));
            match super::chunks::role_of(text, range.clone(), &stream_keys) {
                // Interims are live-only and never replayed, and an answer has hundreds:
                // remembering their ids would push stored activities' ids out of the
                // bounded set that catches replays.
                Some(StreamRole::Interim {
                    stream: of,
                    sequence,
                }) if single && watermark.is_none() => {
                    stream = StreamMark::Interim {
                        stream: of,
                        sequence,
                    };
                    kept.push((key, range));
                    continue;
                }
                // Marked only when kept: a replayed final was handled when it first came.
                Some(StreamRole::Final { stream: of })
                    if stream == StreamMark::None
                        && key.is_none_or(|key| !self.delivered.contains(&key)) =>
                {
                    stream = StreamMark::Final { stream: of };
                }
                _ => {}
            }
            if let Some(key) = key {
                if self.delivered.contains(&key) {
                    dropped += 1;
                    continue;
                }
                self.remember(key);
            }
            kept.push((key, range));
        }
        if kept.is_empty() && dropped > 0 {
            return Observed::AllDuplicates { dropped };
        }
        if dropped == 0 {
            return Observed::Forward(Forward {
                rebuilt: None,
                watermark,
                activities: kept,
                dropped,
                stream,
            });
        }
        let (text, activities) = rebuild(text, &kept, set.watermark);
        Observed::Forward(Forward {
            rebuilt: Some(text),
            watermark,
            activities,
            dropped,
            stream,
        })
    }

    /// Counts an activity the client already has (it is at or before the client's
    /// watermark) as delivered, so a replay of it is dropped.
    pub fn mark_delivered(&mut self, id: ActivityKey) {
        self.remember(id);
    }

    fn remember(&mut self, id: ActivityKey) {
        if self.delivered.insert(id) {
            self.order.push_back(id);
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.delivered.remove(&old);
                }
            }
        }
    }
}

/// A watermark as text: strings verbatim, numbers by their JSON text; null, empty strings
/// and anything else mean none. `text` is one valid JSON value, so its first byte tells its
/// type.
fn watermark_text(text: &str) -> Option<Arc<str>> {
    match text.as_bytes().first()? {
        b'"' if text.contains('\\') => serde_json::from_str::<String>(text)
            .ok()
            .filter(|s| !s.is_empty())
            .map(Arc::from),
        b'"' => Some(&text[1..text.len() - 1])
            .filter(|s| !s.is_empty())
            .map(Arc::from),
        b'-' | b'0'..=b'9' => Some(Arc::from(text)),
        _ => None,
    }
}

/// Builds `{"activities":[…kept…],"watermark":…}` from slices of the original text.
pub fn rebuild(
    original: &str,
    kept: &[ActivitySpan],
    watermark: Option<&str>,
) -> (String, Vec<ActivitySpan>) {
    let body_len: usize = kept.iter().map(|(_, r)| r.len() + 1).sum();
    let mut text = String::with_capacity(body_len + 64);
    let mut ranges = Vec::with_capacity(kept.len());
    text.push_str("{\"activities\":[");
    for (i, (id, range)) in kept.iter().enumerate() {
        if i > 0 {
            text.push(',');
        }
        let start = text.len();
        text.push_str(&original[range.clone()]);
        ranges.push((*id, start..text.len()));
    }
    text.push(']');
    if let Some(watermark) = watermark {
        text.push_str(",\"watermark\":");
        text.push_str(watermark);
    }
    text.push('}');
    (text, ranges)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interims_are_marked_and_never_remembered_finals_are_marked_once() {
        let interim = r#"{"activities":[{"type":"typing","id":"c|s1","entities":[{"type":"streaminfo","streamType":"streaming","streamSequence":1}]}]}"#;
        let mut tracker = Tracker::new(2, None);
        for _ in 0..2 {
            let Observed::Forward(forward) = tracker.observe(interim) else {
                panic!("forwarded");
            };
            assert_eq!(
                forward.stream,
                StreamMark::Interim {
                    stream: ActivityKey::of("c|s1"),
                    sequence: 1
                }
            );
        }
        assert!(!tracker.was_delivered("c|s1"));
        let last = r#"{"activities":[{"type":"message","id":"c|0000001","entities":[{"type":"streaminfo","streamType":"final","streamId":"c|s1"}]}],"watermark":"1"}"#;
        let Observed::Forward(forward) = tracker.observe(last) else {
            panic!("forwarded");
        };
        assert_eq!(
            forward.stream,
            StreamMark::Final {
                stream: ActivityKey::of("c|s1")
            }
        );
        assert!(matches!(
            tracker.observe(last),
            Observed::AllDuplicates { dropped: 1 }
        ));
        // With a watermark, a stream-marked typing is a stored activity like any other.
        let stored = r#"{"activities":[{"type":"typing","id":"c|0000002","channelData":{"streamType":"streaming","streamSequence":2,"streamId":"c|s1"}}],"watermark":"2"}"#;
        let Observed::Forward(forward) = tracker.observe(stored) else {
            panic!("forwarded");
        };
        assert_eq!(forward.stream, StreamMark::None);
        assert!(tracker.was_delivered("c|0000002"));
    }

    fn set(ids: &[u32], watermark: Option<u32>) -> String {
        let activities: Vec<String> = ids
            .iter()
            .map(|i| format!(r#"{{"type":"message","id":"c|{i:07}","text":"m{i}"}}"#))
            .collect();
        match watermark {
            Some(w) => format!(
                r#"{{"activities":[{}],"watermark":"{w}"}}"#,
                activities.join(",")
            ),
            None => format!(r#"{{"activities":[{}]}}"#, activities.join(",")),
        }
    }

    fn forwarded_ids_of(original: &str, observed: &Observed) -> Vec<String> {
        match observed {
            Observed::Forward(f) => {
                let v: serde_json::Value =
                    serde_json::from_str(f.rebuilt.as_deref().unwrap_or(original)).unwrap();
                v["activities"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|a| a["id"].as_str().unwrap_or("").to_owned())
                    .collect()
            }
            _ => vec![],
        }
    }

    #[test]
    fn keepalives_and_unknown_frames() {
        let mut t = Tracker::new(16, None);
        assert_eq!(t.observe(""), Observed::Keepalive);
        assert_eq!(t.observe("  "), Observed::Keepalive);
        match t.observe(r#"{"future":"thing"}"#) {
            Observed::Forward(f) => {
                assert!(f.rebuilt.is_none() && f.watermark.is_none() && f.activities.is_empty())
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(t.observe("not json"), Observed::Forward(_)));
        assert_eq!(t.watermark(), None);
    }

    #[test]
    fn watermark_is_verbatim_and_never_cleared() {
        let mut t = Tracker::new(16, Some(Arc::from("start")));
        t.observe(r#"{"activities":[{"id":"a"}],"watermark":"0000a-42"}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("0000a-42"));
        t.observe(r#"{"activities":[{"type":"typing"}]}"#);
        t.observe(r#"{"activities":[{"type":"typing"}],"watermark":null}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("0000a-42"));
        t.observe(r#"{"activities":[{"id":"b"}],"watermark":7}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("7"));
        t.observe(r#"{"activities":[{"id":"c"}],"watermark":""}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("7"));
        t.observe(r#"{"activities":[{"id":"d"}],"watermark":1.5e3}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("1.5e3"));
        t.observe(r#"{"activities":[{"id":"e"}],"watermark":"w\u002f9"}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("w/9"));
        t.observe(r#"{"activities":[{"id":"f"}],"watermark":{"w":"1"}}"#);
        assert_eq!(t.watermark().map(|w| &**w), Some("w/9"));
    }

    #[test]
    fn replays_are_dropped_and_partial_frames_rebuilt() {
        let mut t = Tracker::new(16, None);
        let first = set(&[0, 1], Some(1));
        assert_eq!(
            forwarded_ids_of(&first, &t.observe(&first)),
            ["c|0000000", "c|0000001"]
        );
        assert_eq!(
            t.observe(&set(&[0, 1], Some(1))),
            Observed::AllDuplicates { dropped: 2 }
        );
        let overlap = set(&[1, 2, 3], Some(3));
        let observed = t.observe(&overlap);
        assert_eq!(
            forwarded_ids_of(&overlap, &observed),
            ["c|0000002", "c|0000003"]
        );
        let Observed::Forward(f) = observed else {
            unreachable!()
        };
        let rebuilt = f.rebuilt.clone().unwrap();
        assert_eq!(f.dropped, 1);
        assert_eq!(f.watermark.as_deref(), Some("3"));
        for (id, range) in &f.activities {
            let activity: serde_json::Value =
                serde_json::from_str(&rebuilt[range.clone()]).unwrap();
            assert_eq!(activity["id"].as_str().map(ActivityKey::of), *id);
        }
    }

    #[test]
    fn typing_frames_are_live_only() {
        let mut t = Tracker::new(16, None);
        let Observed::Forward(f) = t.observe(r#"{"activities":[{"type":"typing","id":"c|t1"}]}"#)
        else {
            panic!()
        };
        assert_eq!(f.watermark, None);
    }

    #[test]
    fn capacity_forgets_the_oldest() {
        let mut t = Tracker::new(2, None);
        for i in 0..3 {
            t.observe(&set(&[i], Some(i)));
        }
        assert!(!t.was_delivered("c|0000000"));
        assert!(t.was_delivered("c|0000001") && t.was_delivered("c|0000002"));
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        /// How the upstream resumes after a drop.
        #[derive(Debug, Clone)]
        enum Replay {
            /// From the watermark, as documented.
            FromWatermark,
            /// From `n` activities before it (overlap).
            Overlap(usize),
            /// The whole history (the 2021 regression).
            Whole,
        }

        fn replay() -> impl Strategy<Value = Replay> {
            prop_oneof![
                Just(Replay::FromWatermark),
                (1usize..20).prop_map(Replay::Overlap),
                Just(Replay::Whole),
            ]
        }

        proptest! {
            /// Any history, any batching, any drop points, any replay overlap:
            /// what the tracker forwards is the history, each activity once, in order.
            #[test]
            fn delivered_equals_emitted(
                total in 1usize..120,
                batch in 1usize..4,
                drops in proptest::collection::vec((1usize..40, replay()), 0..8),
                typing_every in 0usize..5,
            ) {
                let mut tracker = Tracker::new(4096, None);
                let mut delivered: Vec<String> = Vec::new();
                let mut typing_seen = 0;
                // The upstream position: index of the next activity it will send.
                let mut position = 0usize;
                let mut drops = drops.into_iter();
                let mut next_drop = drops.next();
                let mut sent_on_socket = 0usize;
                let mut frames = 0usize;
                while position < total {
                    let end = (position + batch).min(total);
                    let ids: Vec<u32> = (position as u32..end as u32).collect();
                    let text = set(&ids, Some(end as u32 - 1));
                    let observed = tracker.observe(&text);
                    delivered.extend(forwarded_ids_of(&text, &observed));
                    position = end;
                    sent_on_socket += 1;
                    frames += 1;
                    if typing_every > 0 && frames.is_multiple_of(typing_every) {
                        let typing = r#"{"activities":[{"type":"typing"}]}"#;
                        if let Observed::Forward(f) = tracker.observe(typing) {
                            prop_assert!(f.watermark.is_none());
                            typing_seen += 1;
                        }
                    }
                    if let Some((after, how)) = &next_drop && sent_on_socket >= *after {
                        // Reconnect from the tracker's watermark.
                        let resume = tracker.watermark().map(|w| w.parse::<usize>().unwrap() + 1).unwrap_or(0);
                        position = match how {
                            Replay::FromWatermark => resume,
                            Replay::Overlap(n) => resume.saturating_sub(*n),
                            Replay::Whole => 0,
                        };
                        sent_on_socket = 0;
                        next_drop = drops.next();
                    }
                }
                let expected: Vec<String> = (0..total).map(|i| format!("c|{i:07}")).collect();
                prop_assert_eq!(delivered, expected);
                if typing_every > 0 {
                    prop_assert!(typing_seen > 0 || frames < typing_every);
                }
            }
        }
    }
}
