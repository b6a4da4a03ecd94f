//! The watermark tracker (`src/stream/tracker.rs`) fed a sequence of upstream text frames.
//!
//! Input: byte 0 picks the tracker's id capacity; the rest is split on 0x1E (ASCII record
//! separator, never raw inside JSON) into frames. A frame starting with `#` is a *structured*
//! frame: its remaining bytes drive `arbitrary` to build ActivitySets with ids drawn from a small
//! pool (so replays and overlaps are common), escaped ids, typing activities, odd watermarks,
//! both key orders and odd spacing, and livestream interims (stream fields in a `streaminfo`
//! entity or in `channelData`). Any other frame is sent to the tracker as it is.
//! Seeds are readable: `\x00{"activities":[{"type":"message","id":"abc|0000001"}],"watermark":"1"}`.
//!
//! Invariants checked, frame by frame:
//! - interims (a frame without watermark holding one typing activity with stream fields) are
//!   live-only: forwarded whatever their id, never remembered, marked `StreamMark::Interim`;
//! - an activity id is never forwarded twice while the tracker remembers it: the tracker forwards
//!   an id iff it is not among the last `capacity` ids it forwarded (with a large capacity:
//!   never twice at all), and `was_delivered` agrees;
//! - for structured frames, the exact outcome is predicted: which activities are kept, how many
//!   dropped, keepalive / all-duplicates / forward, and the watermark;
//! - the watermark never goes back to `None` once set, never changes on a frame without one,
//!   and equals the frame's watermark when the frame carries one;
//! - the forwarded text (rebuilt or original) is valid JSON whenever it carries activities, its
//!   `activities` array is exactly the reported spans in order, each span is the activity with
//!   the reported id, and a rebuilt frame keeps the original watermark verbatim.

#![no_main]

use std::borrow::Cow;
use std::collections::VecDeque;
use std::sync::Arc;

use arbitrary::{Arbitrary, Unstructured};
use directline_gateway::stream::tracker::{ActivityKey, Forward, Observed, StreamMark, Tracker};
use libfuzzer_sys::fuzz_target;
use serde::de::IgnoredAny;
use serde_json::Value;
use serde_json::value::RawValue;

const SEPARATOR: u8 = 0x1e;
const BIG_CAPACITY: usize = 1 << 20;

/// The tracker's memory as its documentation states it: the last `capacity` forwarded ids.
struct Model {
    capacity: usize,
    window: VecDeque<Arc<str>>,
    /// Ids pushed out of the window during the current frame.
    evicted: Vec<Arc<str>>,
    watermark: Option<Arc<str>>,
}

impl Model {
    fn remembers(&self, id: &str) -> bool {
        self.window.iter().any(|w| &**w == id)
    }

    fn forwarded(&mut self, id: Arc<str>) {
        assert!(
            !self.remembers(&id),
            "activity id {id:?} forwarded twice (capacity {})",
            self.capacity
        );
        self.window.push_back(id);
        if self.window.len() > self.capacity {
            self.evicted.extend(self.window.pop_front());
        }
    }
}

#[derive(Debug, Arbitrary)]
enum IdSpec {
    Missing,
    Empty,
    Null,
    Number(i32),
    Pool(u8),
    /// A pool id written with a `\u` escape: the same id once decoded.
    Escaped(u8),
    /// A long id, still from a small pool.
    Long(u8),
}

#[derive(Debug, Arbitrary)]
enum Kind {
    Message,
    Typing,
    Event,
    /// Not an object at all: a string or number where an activity should be.
    NotAnObject,
    /// A livestream interim: typing with stream fields.
    Interim {
        sequence: u8,
        stream: u8,
        channel_data: bool,
    },
}

#[derive(Debug, Arbitrary)]
struct ActivitySpec {
    id: IdSpec,
    kind: Kind,
    text: String,
    id_first: bool,
    nested: bool,
}

#[derive(Debug, Arbitrary)]
enum WatermarkSpec {
    Missing,
    Null,
    Empty,
    Dash,
    Number(u32),
    Text(u16),
    Any(String),
    Bool(bool),
    Object,
}

#[derive(Debug, Arbitrary)]
enum SetSpec {
    Set {
        activities: Vec<ActivitySpec>,
        watermark: WatermarkSpec,
        watermark_first: bool,
        extra_field: bool,
        spaced: bool,
    },
    /// `{"activities":null,...}` or no activities key at all.
    NoActivities {
        null: bool,
        watermark: WatermarkSpec,
    },
    Keepalive(u8),
}

fn pool_id(n: u8) -> String {
    format!("8tvLeMkKWC3JhDUmJgFvXa-us|{:07}", n % 24)
}

fn long_id(n: u8) -> String {
    format!("{}|{:07}", "x".repeat(300), n % 8)
}

/// The JSON text of a structured frame and what the tracker must see in it:
/// each activity's id, the watermark text if the frame sets one, and whether the frame is
/// a livestream interim.
fn render(spec: &SetSpec) -> (String, Vec<Option<String>>, Option<String>, bool) {
    let watermark = |w: &WatermarkSpec| -> (Option<String>, Option<String>) {
        match w {
            WatermarkSpec::Missing => (None, None),
            WatermarkSpec::Null => (Some("null".into()), None),
            WatermarkSpec::Empty => (Some("\"\"".into()), None),
            WatermarkSpec::Dash => (Some("\"-\"".into()), Some("-".into())),
            WatermarkSpec::Number(n) => (Some(n.to_string()), Some(n.to_string())),
            WatermarkSpec::Text(n) => (Some(format!("\"{n}\"")), Some(n.to_string())),
            WatermarkSpec::Any(s) => (
                Some(serde_json::to_string(s).unwrap()),
                (!s.is_empty()).then(|| s.clone()),
            ),
            WatermarkSpec::Bool(b) => (Some(b.to_string()), None),
            WatermarkSpec::Object => (Some("{\"w\":\"1\"}".into()), None),
        }
    };
    match spec {
        SetSpec::Keepalive(n) => (" \r\n\t".repeat(usize::from(*n % 3)), vec![], None, false),
        SetSpec::NoActivities { null, watermark: w } => {
            let (wm_json, wm) = watermark(w);
            let mut fields = Vec::new();
            if *null {
                fields.push("\"activities\":null".to_owned());
            }
            if let Some(j) = wm_json {
                fields.push(format!("\"watermark\":{j}"));
            }
            fields.push("\"conversationId\":\"c\"".to_owned());
            (format!("{{{}}}", fields.join(",")), vec![], wm, false)
        }
        SetSpec::Set {
            activities,
            watermark: w,
            watermark_first,
            extra_field,
            spaced,
        } => {
            let sep = if *spaced { ",\n  " } else { "," };
            let mut ids = Vec::new();
            let mut items = Vec::new();
            for a in activities.iter().take(64) {
                if matches!(a.kind, Kind::NotAnObject) {
                    items.push(serde_json::to_string(&a.text).unwrap());
                    ids.push(None);
                    continue;
                }
                let (id_json, id) = match &a.id {
                    IdSpec::Missing => (None, None),
                    IdSpec::Empty => (Some("\"\"".to_owned()), None),
                    IdSpec::Null => (Some("null".to_owned()), None),
                    IdSpec::Number(n) => (Some(n.to_string()), None),
                    IdSpec::Pool(n) => {
                        let id = pool_id(*n);
                        (Some(serde_json::to_string(&id).unwrap()), Some(id))
                    }
                    IdSpec::Escaped(n) => {
                        let id = pool_id(*n);
                        let escaped = id.replace('|', "\\u007c").replace('8', "\\u0038");
                        (Some(format!("\"{escaped}\"")), Some(id))
                    }
                    IdSpec::Long(n) => {
                        let id = long_id(*n);
                        (Some(serde_json::to_string(&id).unwrap()), Some(id))
                    }
                };
                let kind = match a.kind {
                    Kind::Message => "message",
                    Kind::Typing | Kind::Interim { .. } => "typing",
                    _ => "event",
                };
                let mut stream_fields = None;
                if let Kind::Interim {
                    sequence,
                    stream,
                    channel_data,
                } = a.kind
                {
                    let fields = format!(
                        "\"streamType\":\"streaming\",\"streamSequence\":{},\"streamId\":\"stream-{}\"",
                        u16::from(sequence) + 1,
                        stream % 3
                    );
                    stream_fields = Some(if channel_data {
                        format!("\"channelData\":{{{fields}}}")
                    } else {
                        format!("\"entities\":[{{\"type\":\"streaminfo\",{fields}}}]")
                    });
                }
                let mut fields = vec![
                    format!("\"type\":\"{kind}\""),
                    format!("\"text\":{}", serde_json::to_string(&a.text).unwrap()),
                    "\"from\":{\"id\":\"bot\",\"name\":\"Bot\"}".to_owned(),
                ];
                if let Some(stream) = stream_fields {
                    fields.push(stream);
                } else if a.nested {
                    // An `id` inside a nested object is not the activity's id.
                    fields.push(
                        "\"channelData\":{\"id\":\"nested-id\",\"list\":[{\"id\":\"x\"}]}".into(),
                    );
                }
                if let Some(j) = id_json {
                    let field = format!("\"id\":{j}");
                    if a.id_first {
                        fields.insert(0, field);
                    } else {
                        fields.push(field);
                    }
                }
                items.push(format!("{{{}}}", fields.join(sep)));
                ids.push(id);
            }
            let (wm_json, wm) = watermark(w);
            let mut root = vec![format!("\"activities\":[{}]", items.join(sep))];
            if let Some(j) = wm_json {
                let field = format!("\"watermark\":{j}");
                if *watermark_first {
                    root.insert(0, field);
                } else {
                    root.push(field);
                }
            }
            if *extra_field {
                root.push("\"future\":{\"activities\":[{\"id\":\"not-this\"}]}".into());
            }
            let text = if *spaced {
                format!("{{\n  {}\n}}\n", root.join(sep))
            } else {
                format!("{{{}}}", root.join(","))
            };
            let interim = items.len() == 1
                && matches!(activities[0].kind, Kind::Interim { .. })
                && wm.is_none();
            (text, ids, wm, interim)
        }
    }
}

#[derive(serde::Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow, default)]
    id: Option<Cow<'a, str>>,
}

#[derive(serde::Deserialize)]
struct RebuiltSet<'a> {
    #[serde(borrow)]
    activities: Vec<&'a RawValue>,
    #[serde(borrow, default)]
    watermark: Option<&'a RawValue>,
}

/// The invariants every observation must hold; returns what it forwarded.
fn check_observed(model: &mut Model, tracker: &Tracker, text: &str, observed: &Observed) {
    let before = model.watermark.clone();
    match observed {
        Observed::Keepalive => {
            assert!(text.trim().is_empty(), "keepalive for {text:?}");
            assert_eq!(tracker.watermark(), before.as_ref());
        }
        Observed::AllDuplicates { dropped } => {
            assert!(*dropped > 0);
            if before.is_some() {
                assert!(tracker.watermark().is_some(), "watermark lost on {text:?}");
            }
            model.watermark = tracker.watermark().cloned();
        }
        Observed::Forward(forward) => {
            check_forward(model, text, forward);
            match &forward.watermark {
                Some(w) => assert_eq!(tracker.watermark(), Some(w), "{text:?}"),
                None => assert_eq!(
                    tracker.watermark(),
                    before.as_ref(),
                    "watermark changed by a frame without one: {text:?}"
                ),
            }
            model.watermark = tracker.watermark().cloned();
        }
    }
    // Everything remembered is reported delivered; what fell out of the window is not.
    for id in &model.window {
        assert!(tracker.was_delivered(id), "forgot {id:?} early");
    }
    for id in std::mem::take(&mut model.evicted) {
        if !model.remembers(&id) {
            assert!(!tracker.was_delivered(&id), "{id:?} kept past capacity");
        }
    }
}

fn check_forward(model: &mut Model, text: &str, forward: &Forward) {
    let sent = forward.rebuilt.as_deref().unwrap_or(text);
    let interim = matches!(forward.stream, StreamMark::Interim { .. });
    if interim {
        assert!(forward.watermark.is_none() && forward.activities.len() == 1, "{text:?}");
    }
    assert_eq!(forward.rebuilt.is_some(), forward.dropped > 0, "{text:?}");
    // In order: with a small capacity an id may leave the memory and come back within one
    // frame, exactly as the model predicts. The tracker reports ids as keys; the id text is
    // read back from the span, which must hold the activity with that key.
    for (key, range) in &forward.activities {
        if let Some(key) = key {
            let slice = sent
                .get(range.clone())
                .unwrap_or_else(|| panic!("span {range:?} outside {sent:?}"));
            let parsed: IdOnly<'_> =
                serde_json::from_str(slice).unwrap_or_else(|e| panic!("span {slice:?}: {e}"));
            let id = parsed.id.unwrap_or_else(|| panic!("keyed span without id: {slice:?}"));
            assert!(!id.is_empty());
            assert_eq!(ActivityKey::of(&id), *key, "{slice:?}");
            // Interims are live-only: never remembered, so never deduplicated.
            if !interim {
                model.forwarded(Arc::from(&*id));
            }
        }
    }
    if forward.activities.is_empty() && forward.watermark.is_none() && forward.rebuilt.is_none() {
        // A frame the tracker did not take as an ActivitySet passes through unchanged.
        return;
    }
    // Valid JSON (checked without converting numbers, as the tracker does).
    if let Err(e) = serde_json::from_str::<IgnoredAny>(sent) {
        panic!("forwarded frame is not JSON ({e}): {sent:?}");
    }
    for (id, range) in &forward.activities {
        let slice = sent
            .get(range.clone())
            .unwrap_or_else(|| panic!("span {range:?} outside {sent:?}"));
        if let Err(e) = serde_json::from_str::<IgnoredAny>(slice) {
            panic!("span {slice:?} is not JSON: {e}");
        }
        if let Some(key) = id {
            // What a client's JSON parser reads as the id is the same.
            if let Ok(value) = serde_json::from_str::<Value>(slice) {
                assert_eq!(value["id"].as_str().map(ActivityKey::of), Some(*key), "{slice:?}");
            }
        }
    }
    if let Some(rebuilt) = &forward.rebuilt {
        let set: RebuiltSet<'_> = serde_json::from_str(rebuilt)
            .unwrap_or_else(|e| panic!("rebuilt frame {rebuilt:?}: {e}"));
        assert_eq!(
            set.activities.len(),
            forward.activities.len(),
            "{rebuilt:?}"
        );
        for (element, (_, range)) in set.activities.iter().zip(&forward.activities) {
            assert_eq!(element.get(), &rebuilt[range.clone()]);
        }
        // Spans are in order and do not overlap.
        for pair in forward.activities.windows(2) {
            assert!(pair[0].1.end < pair[1].1.start);
        }
        // The watermark is carried over verbatim.
        if let Some(w) = &forward.watermark {
            let raw = set
                .watermark
                .unwrap_or_else(|| panic!("rebuilt frame lost its watermark: {rebuilt:?}"));
            match serde_json::from_str::<Value>(raw.get()) {
                Ok(Value::String(s)) => assert_eq!(s.as_str(), &**w),
                Ok(Value::Number(_)) => assert_eq!(raw.get(), &**w),
                other => panic!("rebuilt watermark {other:?} for {w:?}"),
            }
        }
    }
}

/// A structured frame: the whole outcome is known in advance.
fn check_structured(
    model: &mut Model,
    tracker: &mut Tracker,
    text: &str,
    ids: &[Option<String>],
    watermark: Option<&str>,
    interim: bool,
) {
    // Expected: which activities go out, which are dropped.
    let mut window: VecDeque<Arc<str>> = model.window.clone();
    let mut kept: Vec<Option<String>> = Vec::new();
    let mut dropped = 0;
    for id in ids {
        if interim {
            kept.push(id.clone());
            continue;
        }
        match id {
            Some(id) if window.iter().any(|w| &**w == id.as_str()) => dropped += 1,
            Some(id) => {
                window.push_back(Arc::from(id.as_str()));
                if window.len() > model.capacity {
                    window.pop_front();
                }
                kept.push(Some(id.clone()));
            }
            None => kept.push(None),
        }
    }
    let expected_watermark: Option<Arc<str>> =
        watermark.map(Arc::from).or_else(|| model.watermark.clone());

    let observed = tracker.observe(text);
    check_observed(model, tracker, text, &observed);
    assert_eq!(tracker.watermark(), expected_watermark.as_ref(), "{text:?}");
    match &observed {
        Observed::Keepalive => assert!(ids.is_empty() && text.trim().is_empty()),
        Observed::AllDuplicates { dropped: d } => {
            assert!(kept.is_empty(), "{text:?}");
            assert_eq!(*d, dropped);
        }
        Observed::Forward(f) => {
            assert_eq!(f.dropped, dropped, "{text:?}");
            let got: Vec<Option<ActivityKey>> = f.activities.iter().map(|(id, _)| *id).collect();
            let kept: Vec<Option<ActivityKey>> = kept
                .iter()
                .map(|id| id.as_deref().map(ActivityKey::of))
                .collect();
            assert_eq!(got, kept, "{text:?}");
            assert_eq!(f.watermark.as_deref(), watermark, "{text:?}");
            assert_eq!(
                matches!(f.stream, StreamMark::Interim { .. }),
                interim,
                "{text:?}"
            );
        }
    }
    assert_eq!(model.window, window);
}

fuzz_target!(|data: &[u8]| {
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let capacity = match first % 4 {
        0 => BIG_CAPACITY,
        n => usize::from(first / 4) % 16 + usize::from(n == 1),
    };
    let start: Option<Arc<str>> = (first & 0x80 != 0).then(|| Arc::from("7"));
    let mut tracker = Tracker::new(capacity, start.clone());
    let mut model = Model {
        // The tracker keeps at least one id.
        capacity: capacity.max(1),
        window: VecDeque::new(),
        evicted: Vec::new(),
        watermark: start,
    };
    assert_eq!(tracker.watermark(), model.watermark.as_ref());
    for frame in rest.split(|&b| b == SEPARATOR).take(256) {
        if let Some(structured) = frame.strip_prefix(b"#") {
            let mut u = Unstructured::new(structured);
            while !u.is_empty() {
                let Ok(spec) = SetSpec::arbitrary(&mut u) else {
                    break;
                };
                let (text, ids, watermark, interim) = render(&spec);
                check_structured(
                    &mut model,
                    &mut tracker,
                    &text,
                    &ids,
                    watermark.as_deref(),
                    interim,
                );
            }
        } else {
            let text = String::from_utf8_lossy(frame);
            let observed = tracker.observe(&text);
            check_observed(&mut model, &tracker, &text, &observed);
        }
    }
});
