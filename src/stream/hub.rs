//! A hub: one per conversation per replica. It owns the only upstream socket (Direct Line
//! closes extra ones with `collision`) and fans its frames out to every client socket.
//!
//! LIFECYCLE
//! - created by the first client socket of a conversation on this replica; its upstream
//!   task first dials the stream URL sealed in that client's ticket (it replays what was
//!   sent since the start/reconnect call that minted it);
//! - every later upstream connection comes from a fresh reconnect GET at the tracker's
//!   watermark, dialled at once (the URL lives 60 s);
//! - with no client for `linger`, the upstream socket closes and the hub retires;
//! - past the resume budget, on a gone conversation, or on drain, the hub closes every
//!   client with a close code (1011, 1000, 1001) and retires.
//!
//! Frames live in a bounded ring of [`Event`]s. Each client keeps its own cursor (a
//! sequence number), so fan-out is one `Arc` clone per client per frame and a slow client
//! never blocks others: it falls off the ring and is closed with 1013 to resume by watermark.
//!
//! The ring is bounded three ways: frames (`stream.buffer_frames`), bytes per conversation
//! (`stream.buffer_bytes`, the newest frame always stays so live delivery never depends on
//! it) and bytes of every ring on the replica together ([`RingBudget`],
//! `stream.buffer_total_bytes`, strict: past it the publishing hub gives up its own frames,
//! the newest included). A frame that leaves the ring before a client read it makes that
//! client lag: it is closed with 1013 and catches up by REST from its watermark, so a budget
//! costs a reconnect, never an activity.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

pub use super::answer_metrics::Published;
use super::chunks::{Admit, OpenStreams};
use super::ids::KeySet;
use super::tracker::{ActivitySpan, StreamMark};
use crate::endpoint::ConversationId;

/// One frame as clients receive it.
pub struct Event {
    pub seq: u64,
    pub text: Utf8Bytes,
    /// `None`: live-only (typing, unknown frames), never replayed to a late joiner.
    pub watermark: Option<Arc<str>>,
    pub activities: Vec<ActivitySpan>,
    pub received_at_ms: u64,
    /// What this event costs the ring budgets (text, spans and the event itself).
    pub size: usize,
    /// Its part in a livestreamed answer; for a final, `last_sequence` is the last interim
    /// sequence the hub relayed.
    pub stream: StreamMark,
    pub last_sequence: u64,
    /// How many frames other than interims came before it: clients are behind by stored
    /// frames only, never for interims they were spared.
    pub stored_index: u64,
}

impl EventParts {
    fn size(&self) -> usize {
        self.text.len()
            + self.activities.len() * std::mem::size_of::<ActivitySpan>()
            + self.watermark.as_ref().map_or(0, |w| w.len())
            + std::mem::size_of::<Event>()
    }
}

/// Why frames left a ring before its frame limit was the only reason.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Eviction {
    Frames,
    ConversationBytes,
    ProcessBytes,
}

impl Eviction {
    pub const ALL: [Eviction; 3] = [
        Eviction::Frames,
        Eviction::ConversationBytes,
        Eviction::ProcessBytes,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Eviction::Frames => "frames",
            Eviction::ConversationBytes => "conversation_bytes",
            Eviction::ProcessBytes => "process_bytes",
        }
    }
}

/// The bytes every hub's ring holds on this replica, against one limit.
pub struct RingBudget {
    used: AtomicUsize,
    limit: AtomicUsize,
    gauge: prometheus::IntGauge,
    /// Indexed like [`Eviction::ALL`].
    evictions: [prometheus::IntCounter; 3],
}

impl RingBudget {
    pub fn new(
        limit: usize,
        gauge: prometheus::IntGauge,
        evictions: [prometheus::IntCounter; 3],
    ) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit: AtomicUsize::new(limit),
            gauge,
            evictions,
        }
    }

    /// A reload may change the limit; hubs apply it from their next publish.
    pub fn set_limit(&self, limit: usize) {
        self.limit.store(limit, Ordering::Relaxed);
    }

    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn add(&self, bytes: usize) {
        let used = self.used.fetch_add(bytes, Ordering::Relaxed) + bytes;
        self.gauge.set(used as i64);
    }

    fn sub(&self, bytes: usize) {
        let used = self.used.fetch_sub(bytes, Ordering::Relaxed) - bytes;
        self.gauge.set(used as i64);
    }

    fn over(&self) -> bool {
        self.used.load(Ordering::Relaxed) > self.limit.load(Ordering::Relaxed)
    }

    fn evicted(&self, why: Eviction, count: u64) {
        if count > 0 {
            self.evictions[why as usize].inc_by(count);
        }
    }
}

/// Where a client socket starts reading.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResumeFrom {
    /// Everything the hub has: the client created it, so all of it is new to that client.
    Start,
    /// After this upstream watermark (a client resume, PROTOCOL §3).
    Watermark(Arc<str>),
    /// What arrived at or after this Unix-millisecond instant (a ticket without watermark:
    /// "only messages received after the request", PROTOCOL §3).
    Since(u64),
}

/// A client's position in the hub.
#[derive(Debug)]
pub struct Cursor {
    pub next_seq: u64,
    /// Events before this sequence are a replay: live-only ones among them are skipped.
    pub live_from: u64,
    /// Ids this client already got by REST catch-up; such activities are not sent again.
    pub filter: Option<KeySet>,
}

#[derive(Debug, PartialEq, Eq)]
pub enum AttachError {
    /// The watermark is not in the ring: the client needs a catch-up from upstream first.
    NotBuffered,
    /// The hub is ending; make a new one.
    Retired,
}

/// Where a held poll starts reading.
#[derive(Debug, Clone, Copy)]
pub enum PollFrom<'a> {
    /// Everything in the ring (a hub this poll just opened at the poll's watermark).
    Start,
    /// Only what comes next.
    Head,
    /// This hub's sequence number, from the gateway's own poll watermark.
    Seq(u64),
    /// After this upstream watermark.
    Watermark(&'a str),
}

/// What a client should do next.
pub enum Pending {
    /// Frames to send (possibly none).
    Frames,
    /// The client fell too far behind: close with 1013.
    Lagged,
    /// The hub ended: close with this frame.
    Closed(CloseFrame),
}

pub struct Hub {
    /// The bot this conversation belongs to; its settings are looked up by name at each
    /// reconnect, so a reload reaches a hub that outlives it.
    pub bot: Arc<str>,
    pub conversation: ConversationId,
    /// This bot's `activities_relayed_total`, resolved once rather than per frame.
    pub relayed: prometheus::IntCounter,
    state: Mutex<HubState>,
    published: watch::Sender<u64>,
    stop: watch::Sender<bool>,
    clients: AtomicUsize,
    pub resumes: AtomicU64,
    /// The newest upstream conversation token known on this replica: reconnects under
    /// enhanced authentication need a live one, and clients refresh theirs every 15 min.
    upstream_token: Mutex<Arc<str>>,
    budget: Arc<RingBudget>,
    /// While tracing is on: the request that created this hub, which its stream spans
    /// link to (set once, by the stream route, right after creating it).
    pub trace: std::sync::OnceLock<crate::telemetry::Origin>,
    /// Held polls: this hub's identity in the gateway's poll watermarks, so a position in
    /// its ring is only ever used with the ring it came from.
    pub nonce: u64,
    /// Set when a poll opened this hub: its place under `polling.max_hubs`, given back when
    /// the hub goes.
    pub opened_by_poll: std::sync::OnceLock<super::held::PollHubSlot>,
}

/// How much one hub's ring may hold, fixed when the hub is made.
#[derive(Clone, Copy, Debug)]
pub struct RingLimits {
    pub frames: usize,
    pub bytes: usize,
}

struct HubState {
    events: VecDeque<Arc<Event>>,
    next_seq: u64,
    capacity: usize,
    byte_capacity: usize,
    /// Sum of the ring's events' sizes.
    bytes: usize,
    last_watermark: Option<Arc<str>>,
    closed: Option<CloseFrame>,
    retired: bool,
    last_client_left: Instant,
    // Livestreamed answers (ARCHITECTURE §14): only the newest interim of each open stream
    // stays in the ring, so events leave it from the middle too; positions are found by
    // sequence number, and a client lags only when an event it had not read was evicted.
    streams: OpenStreams,
    stored_count: u64,
    /// One past the newest event evicted for space.
    evicted_below: u64,
    /// When the last frame other than an interim was published: the start of the time to
    /// a stream's first interim.
    last_stored_at: Instant,
}

impl Hub {
    pub fn new(
        bot: Arc<str>,
        conversation: ConversationId,
        relayed: prometheus::IntCounter,
        limits: RingLimits,
        budget: Arc<RingBudget>,
        watermark: Option<Arc<str>>,
        upstream_token: &str,
    ) -> Self {
        let (published, _) = watch::channel(0);
        let (stop, _) = watch::channel(false);
        Self {
            bot,
            conversation,
            relayed,
            state: Mutex::new(HubState {
                events: VecDeque::new(),
                next_seq: 0,
                capacity: limits.frames.max(1),
                byte_capacity: limits.bytes,
                bytes: 0,
                last_watermark: watermark,
                closed: None,
                retired: false,
                last_client_left: Instant::now(),
                streams: OpenStreams::default(),
                stored_count: 0,
                evicted_below: 0,
                last_stored_at: Instant::now(),
            }),
            published,
            stop,
            clients: AtomicUsize::new(0),
            resumes: AtomicU64::new(0),
            upstream_token: Mutex::new(Arc::from(upstream_token)),
            budget,
            trace: std::sync::OnceLock::new(),
            nonce: super::held::hub_nonce(),
            opened_by_poll: std::sync::OnceLock::new(),
        }
    }

    pub fn upstream_token(&self) -> Arc<str> {
        self.upstream_token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    pub fn set_upstream_token(&self, token: &str) {
        let mut current = self
            .upstream_token
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if **current != *token {
            *current = Arc::from(token);
        }
    }

    fn lock(&self) -> MutexGuard<'_, HubState> {
        // A panic while holding this lock cannot leave the ring half-updated in a way that
        // matters more than losing the hub, so poisoning is ignored.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn clients(&self) -> usize {
        self.clients.load(Ordering::Relaxed)
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.published.subscribe()
    }

    pub fn stop_signal(&self) -> watch::Receiver<bool> {
        self.stop.subscribe()
    }

    /// Adds a client reading from `from`.
    pub fn attach(&self, from: &ResumeFrom) -> Result<Cursor, AttachError> {
        let state = self.lock();
        if state.retired {
            return Err(AttachError::Retired);
        }
        let head = state.next_seq;
        let oldest = state.events.front().map_or(head, |e| e.seq);
        let next_seq = match from {
            ResumeFrom::Start => oldest,
            ResumeFrom::Watermark(w) if state.last_watermark.as_deref() == Some(&**w) => head,
            ResumeFrom::Watermark(w) => state
                .events
                .iter()
                .rev()
                .find(|e| e.watermark.as_deref() == Some(&**w))
                .map(|e| e.seq + 1)
                .ok_or(AttachError::NotBuffered)?,
            ResumeFrom::Since(ms) => state
                .events
                .iter()
                .find(|e| e.received_at_ms >= *ms)
                .map_or(head, |e| e.seq),
        };
        self.clients.fetch_add(1, Ordering::Relaxed);
        drop(state);
        Ok(Cursor {
            next_seq,
            live_from: if *from == ResumeFrom::Start { 0 } else { head },
            filter: None,
        })
    }

    /// Adds a client that already received `filter` by REST: it replays the whole ring,
    /// minus those activities.
    pub fn attach_after_catch_up(&self, filter: KeySet) -> Result<Cursor, AttachError> {
        let state = self.lock();
        if state.retired {
            return Err(AttachError::Retired);
        }
        let head = state.next_seq;
        let oldest = state.events.front().map_or(head, |e| e.seq);
        self.clients.fetch_add(1, Ordering::Relaxed);
        Ok(Cursor {
            next_seq: oldest,
            live_from: head,
            filter: Some(filter),
        })
    }

    /// Adds a held poll reading from `from`. Unlike a socket, a poll gets the live-only
    /// frames (interims) after its position too: it was not connected when they passed.
    pub fn attach_poll(&self, from: PollFrom<'_>) -> Result<Cursor, AttachError> {
        let state = self.lock();
        if state.retired {
            return Err(AttachError::Retired);
        }
        let head = state.next_seq;
        let oldest = state.events.front().map_or(head, |e| e.seq);
        let next_seq = match from {
            PollFrom::Start => oldest,
            PollFrom::Head => head,
            // Interims a newer one replaced left the ring without being evicted: a position
            // among them is still good, one below an evicted frame is not.
            PollFrom::Seq(seq) if seq >= state.evicted_below && seq <= head => seq,
            PollFrom::Seq(_) => return Err(AttachError::NotBuffered),
            PollFrom::Watermark(w) => match state
                .events
                .iter()
                .rev()
                .find(|e| e.watermark.as_deref() == Some(w))
            {
                Some(event) => event.seq + 1,
                None if state.last_watermark.as_deref() == Some(w) => head,
                None => return Err(AttachError::NotBuffered),
            },
        };
        self.clients.fetch_add(1, Ordering::Relaxed);
        Ok(Cursor {
            next_seq,
            live_from: next_seq,
            filter: None,
        })
    }

    pub fn detach(&self) {
        let mut state = self.lock();
        if self.clients.fetch_sub(1, Ordering::Relaxed) == 1 {
            state.last_client_left = Instant::now();
        }
    }

    /// Frames for one client since its cursor, into `out`. `lag_limit` bounds how many
    /// live frames a client may be behind.
    pub fn pending(
        &self,
        cursor: &mut Cursor,
        out: &mut Vec<Arc<Event>>,
        lag_limit: usize,
    ) -> Pending {
        let state = self.lock();
        let head = state.next_seq;
        if state.is_behind(cursor.next_seq, cursor.live_from, lag_limit) {
            return Pending::Lagged;
        }
        let start = state.position(cursor.next_seq);
        out.extend(
            state
                .events
                .iter()
                .skip(start)
                .filter(|e| e.seq >= cursor.live_from || e.watermark.is_some())
                .cloned(),
        );
        cursor.next_seq = head;
        if let Some(close) = &state.closed {
            return Pending::Closed(close.clone());
        }
        Pending::Frames
    }

    /// Publishes a frame to every client; `watermark` is the tracker's position after it.
    pub fn publish(&self, event: EventParts, watermark: Option<&Arc<str>>) -> Published {
        let size = event.size();
        let mut state = self.lock();
        let seq = state.next_seq;
        let mut published = Published::default();
        let mut last_sequence = 0;
        let now = Instant::now();
        match event.stream {
            StreamMark::Interim { stream, sequence } => {
                match state.streams.interim(stream, sequence, seq, now) {
                    Admit::Drop => {
                        published.dropped = true;
                        return published;
                    }
                    Admit::Publish {
                        replaces,
                        first,
                        abandoned,
                    } => {
                        if let Some(old) = replaces {
                            self.remove(&mut state, old);
                        }
                        if first {
                            published.first_interim_after =
                                Some(now.saturating_duration_since(state.last_stored_at));
                        }
                        published.abandoned = abandoned;
                    }
                }
            }
            StreamMark::Final { stream } => {
                let finish = state.streams.finish(stream);
                if let Some(old) = finish.removes {
                    self.remove(&mut state, old);
                }
                last_sequence = finish.last_sequence;
                published.finalized = true;
            }
            StreamMark::None => {}
        }
        let interim = matches!(event.stream, StreamMark::Interim { .. });
        if !interim {
            state.last_stored_at = now;
        }
        let stored_index = state.stored_count;
        state.stored_count += u64::from(!interim);
        state.next_seq += 1;
        state.events.push_back(Arc::new(Event {
            seq,
            text: event.text,
            watermark: event.watermark,
            activities: event.activities,
            received_at_ms: crate::clock::unix_millis(),
            size,
            stream: event.stream,
            last_sequence,
            stored_index,
        }));
        state.bytes += size;
        self.budget.add(size);
        self.evict(&mut state);
        if watermark.is_some() {
            state.last_watermark = watermark.cloned();
        }
        drop(state);
        self.published.send_replace(seq + 1);
        published
    }

    /// Takes event `seq` out of the ring (a superseded interim), if it is still there.
    fn remove(&self, state: &mut HubState, seq: u64) {
        let at = state.position(seq);
        if state.events.get(at).is_some_and(|e| e.seq == seq)
            && let Some(event) = state.events.remove(at)
        {
            state.bytes -= event.size;
            self.budget.sub(event.size);
        }
    }

    /// Oldest frames out until the ring is within its frame and byte limits (keeping the
    /// newest), then until the replica's rings are within theirs (newest included).
    fn evict(&self, state: &mut HubState) {
        let mut counts = [0u64; 3];
        while state.events.len() > 1 {
            let why = if state.events.len() > state.capacity {
                Eviction::Frames
            } else if state.bytes > state.byte_capacity {
                Eviction::ConversationBytes
            } else {
                break;
            };
            self.pop_oldest(state);
            counts[why as usize] += 1;
        }
        while self.budget.over() && self.pop_oldest(state) {
            counts[Eviction::ProcessBytes as usize] += 1;
        }
        for why in Eviction::ALL {
            self.budget.evicted(why, counts[why as usize]);
        }
    }

    fn pop_oldest(&self, state: &mut HubState) -> bool {
        let Some(event) = state.events.pop_front() else {
            return false;
        };
        state.evicted_below = event.seq + 1;
        if matches!(event.stream, StreamMark::Interim { .. }) {
            state.streams.left_ring(event.seq);
        }
        state.bytes -= event.size;
        self.budget.sub(event.size);
        true
    }

    /// Whether a client whose next unsent frame is `next_seq` has fallen behind: that frame
    /// left the ring, or more than `lag_limit` live frames came after it. Asked while the
    /// client's socket is blocked on a write, so a client that stops reading is closed when
    /// it falls behind rather than when the write times out.
    pub fn is_behind(&self, next_seq: u64, live_from: u64, lag_limit: usize) -> bool {
        self.lock().is_behind(next_seq, live_from, lag_limit)
    }

    /// Records the upstream position without a frame (all of a replayed frame was dropped).
    pub fn advance_watermark(&self, watermark: Option<&Arc<str>>) {
        if watermark.is_some() {
            self.lock().last_watermark = watermark.cloned();
        }
    }

    /// Ends the hub: clients get `close` after what they have not read yet; the upstream
    /// task stops.
    pub fn close(&self, close: CloseFrame) {
        let mut state = self.lock();
        state.retired = true;
        if state.closed.is_none() {
            state.closed = Some(close);
        }
        drop(state);
        self.stop.send_replace(true);
        // Wake every client even though nothing new was published.
        self.published.send_modify(|_| {});
    }

    /// Stops taking new clients (the upstream task is ending).
    pub fn retire(&self) {
        self.lock().retired = true;
    }

    pub fn is_retired(&self) -> bool {
        self.lock().retired
    }

    /// True when no client has been attached for at least `linger`.
    pub fn idle_for(&self, linger: Duration) -> bool {
        let state = self.lock();
        self.clients() == 0 && state.last_client_left.elapsed() >= linger
    }
}

impl HubState {
    /// Index in the ring of the first event at or after `seq`.
    fn position(&self, seq: u64) -> usize {
        self.events.partition_point(|e| e.seq < seq)
    }

    /// An event at or after `next_seq` was evicted, or more than `lag_limit` stored frames
    /// (interims do not count) wait at or after `max(next_seq, live_from)`.
    fn is_behind(&self, next_seq: u64, live_from: u64, lag_limit: usize) -> bool {
        if next_seq < self.evicted_below {
            return true;
        }
        let from = self.position(next_seq.max(live_from));
        let waiting = self
            .events
            .get(from)
            .map_or(0, |e| self.stored_count - e.stored_index);
        waiting > lag_limit as u64
    }
}

impl Drop for Hub {
    fn drop(&mut self) {
        let state = self
            .state
            .get_mut()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        self.budget.sub(state.bytes);
        state.bytes = 0;
    }
}

/// A frame's content before it gets its sequence number.
pub struct EventParts {
    pub text: Utf8Bytes,
    pub watermark: Option<Arc<str>>,
    pub activities: Vec<ActivitySpan>,
    pub stream: StreamMark,
}

/// The event's text for a client that must not see `filter`'s activities again;
/// `None` when nothing is left to send.
pub fn filtered_text(event: &Event, filter: &KeySet) -> Option<Utf8Bytes> {
    if event.activities.is_empty() {
        return Some(event.text.clone());
    }
    let kept: Vec<ActivitySpan> = event
        .activities
        .iter()
        .filter(|(id, _)| id.as_ref().is_none_or(|id| !filter.contains(id)))
        .cloned()
        .collect();
    if kept.len() == event.activities.len() {
        return Some(event.text.clone());
    }
    if kept.is_empty() {
        return None;
    }
    let watermark = event
        .watermark
        .as_ref()
        .and_then(|w| serde_json::value::to_raw_value(&**w).ok());
    let (text, _) = super::tracker::rebuild(
        event.text.as_str(),
        &kept,
        watermark.as_deref().map(serde_json::value::RawValue::get),
    );
    Some(Utf8Bytes::from(text))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ids::ActivityKey;

    fn budget(limit: usize) -> Arc<RingBudget> {
        let counter = || prometheus::IntCounter::new("evicted", "test").unwrap();
        Arc::new(RingBudget::new(
            limit,
            prometheus::IntGauge::new("ring", "test").unwrap(),
            [counter(), counter(), counter()],
        ))
    }

    fn hub_with(frames: usize, bytes: usize, budget: Arc<RingBudget>) -> Hub {
        Hub::new(
            Arc::from("default"),
            ConversationId::parse("c").unwrap(),
            prometheus::IntCounter::new("relayed", "test").unwrap(),
            RingLimits { frames, bytes },
            budget,
            None,
            "token",
        )
    }

    fn hub(capacity: usize) -> Hub {
        hub_with(capacity, usize::MAX / 2, budget(usize::MAX / 2))
    }

    fn parts(text: &str, watermark: Option<&str>) -> EventParts {
        EventParts {
            text: Utf8Bytes::from(text.to_owned()),
            watermark: watermark.map(Arc::from),
            activities: Vec::new(),
            stream: StreamMark::None,
        }
    }

    fn texts(hub: &Hub, cursor: &mut Cursor) -> Vec<String> {
        let mut out = Vec::new();
        assert!(matches!(
            hub.pending(cursor, &mut out, 100),
            Pending::Frames
        ));
        out.iter().map(|e| e.text.as_str().to_owned()).collect()
    }

    #[test]
    fn cursors_are_independent_and_replay_skips_live_only() {
        let hub = hub(16);
        let mut first = hub.attach(&ResumeFrom::Start).unwrap();
        hub.publish(parts("a", Some("1")), Some(&Arc::from("1")));
        hub.publish(parts("typing", None), Some(&Arc::from("1")));
        hub.publish(parts("b", Some("2")), Some(&Arc::from("2")));
        assert_eq!(texts(&hub, &mut first), ["a", "typing", "b"]);
        let mut late = hub.attach(&ResumeFrom::Watermark(Arc::from("1"))).unwrap();
        assert_eq!(texts(&hub, &mut late), ["b"]);
        hub.publish(parts("typing2", None), None);
        assert_eq!(texts(&hub, &mut late), ["typing2"]);
        assert_eq!(texts(&hub, &mut first), ["typing2"]);
        let mut current = hub.attach(&ResumeFrom::Watermark(Arc::from("2"))).unwrap();
        assert!(texts(&hub, &mut current).is_empty());
        assert_eq!(
            hub.attach(&ResumeFrom::Watermark(Arc::from("0")))
                .unwrap_err(),
            AttachError::NotBuffered
        );
        assert_eq!(hub.clients(), 3);
    }

    #[test]
    fn a_client_behind_the_ring_lags() {
        let hub = hub(2);
        let mut slow = hub.attach(&ResumeFrom::Start).unwrap();
        for i in 0..3 {
            hub.publish(parts(&i.to_string(), Some(&i.to_string())), None);
        }
        let mut out = Vec::new();
        assert!(matches!(
            hub.pending(&mut slow, &mut out, 100),
            Pending::Lagged
        ));
    }

    #[test]
    fn close_delivers_the_rest_first() {
        let hub = hub(4);
        let mut cursor = hub.attach(&ResumeFrom::Start).unwrap();
        hub.publish(parts("last", Some("9")), None);
        hub.close(CloseFrame {
            code: 1011.into(),
            reason: "x".into(),
        });
        let mut out = Vec::new();
        assert!(matches!(
            hub.pending(&mut cursor, &mut out, 100),
            Pending::Closed(_)
        ));
        assert_eq!(out.len(), 1);
        assert_eq!(
            hub.attach(&ResumeFrom::Start).unwrap_err(),
            AttachError::Retired
        );
    }

    #[test]
    fn filter_drops_already_sent_activities() {
        let text = r#"{"activities":[{"id":"a"},{"id":"b"}],"watermark":"2"}"#;
        let a = 15..25;
        let b = 26..36;
        assert_eq!(&text[a.clone()], r#"{"id":"a"}"#);
        let event = Event {
            seq: 0,
            text: Utf8Bytes::from(text.to_owned()),
            watermark: Some(Arc::from("2")),
            activities: vec![
                (Some(ActivityKey::of("a")), a),
                (Some(ActivityKey::of("b")), b),
            ],
            received_at_ms: 0,
            size: 0,
            stream: StreamMark::None,
            last_sequence: 0,
            stored_index: 0,
        };
        let only_a: KeySet = [ActivityKey::of("a")].into_iter().collect();
        let both: KeySet = [ActivityKey::of("a"), ActivityKey::of("b")]
            .into_iter()
            .collect();
        assert_eq!(
            filtered_text(&event, &KeySet::default()).unwrap().as_str(),
            text
        );
        assert_eq!(
            filtered_text(&event, &only_a).unwrap().as_str(),
            r#"{"activities":[{"id":"b"}],"watermark":"2"}"#
        );
        assert!(filtered_text(&event, &both).is_none());
    }

    fn big(n: usize, watermark: &str) -> EventParts {
        parts(&"x".repeat(n), Some(watermark))
    }

    #[test]
    fn eviction_labels_are_the_exported_ones() {
        let labels: Vec<&str> = Eviction::ALL.iter().map(|e| e.as_str()).collect();
        assert_eq!(labels, crate::metrics::EVICTION_REASONS);
    }

    #[test]
    fn the_ring_keeps_its_byte_budget_but_always_the_newest_frame() {
        let shared = budget(usize::MAX / 2);
        let hub = hub_with(100, 10_000, shared.clone());
        let mut cursor = hub.attach(&ResumeFrom::Start).unwrap();
        for i in 0..10 {
            hub.publish(big(3_000, &i.to_string()), None);
        }
        // Three 3 KB frames fit in 10 KB with their overhead; older ones left.
        let held = shared.used();
        assert!(held <= 10_000, "{held}");
        assert!(held >= 3 * 3_000, "{held}");
        // The client that read nothing lost frames: it lags rather than miss them silently.
        let mut out = Vec::new();
        assert!(matches!(
            hub.pending(&mut cursor, &mut out, 100),
            Pending::Lagged
        ));
        // A frame larger than the whole budget still reaches clients that are reading.
        let mut live = hub.attach(&ResumeFrom::Watermark(Arc::from("9"))).unwrap();
        hub.publish(big(50_000, "10"), None);
        assert_eq!(texts(&hub, &mut live).len(), 1);
        assert!(shared.used() >= 50_000 && shared.used() < 51_000);
    }

    #[test]
    fn the_replica_budget_is_strict_and_returned_when_hubs_go() {
        let shared = budget(20_000);
        let a = hub_with(100, 1_000_000, shared.clone());
        let b = hub_with(100, 1_000_000, shared.clone());
        for i in 0..10 {
            a.publish(big(4_000, &i.to_string()), None);
            assert!(shared.used() <= 20_000);
        }
        // b gets nothing kept while a holds the budget, not even its newest frame...
        let mut reader = b.attach(&ResumeFrom::Start).unwrap();
        b.publish(big(8_000, "b"), None);
        assert!(shared.used() <= 20_000, "{}", shared.used());
        // ...so its reader learns it lagged (and resumes by REST) instead of missing it.
        let mut out = Vec::new();
        assert!(matches!(
            b.pending(&mut reader, &mut out, 100),
            Pending::Lagged
        ));
        let used_by_a = shared.used();
        drop(a);
        assert!(shared.used() < used_by_a);
        drop(b);
        assert_eq!(shared.used(), 0);
    }

    fn interim(text: &str, stream: &str, sequence: u64) -> EventParts {
        EventParts {
            stream: StreamMark::Interim {
                stream: ActivityKey::of(stream),
                sequence,
            },
            ..parts(text, None)
        }
    }

    #[test]
    fn the_ring_keeps_the_newest_interim_per_stream_and_none_after_its_final() {
        let hub = hub(16);
        let mut reader = hub.attach(&ResumeFrom::Start).unwrap();
        let mut behind = hub.attach(&ResumeFrom::Start).unwrap();
        hub.publish(parts("question", Some("1")), None);
        for sequence in 1..=50 {
            hub.publish(interim(&format!("i{sequence}"), "s", sequence), None);
            if sequence == 10 {
                assert_eq!(texts(&hub, &mut reader), ["question", "i10"]);
            }
        }
        hub.publish(interim("other1", "t", 1), None);
        // 52 frames published into a 16-frame ring, yet the client that read nothing is
        // behind by one stored frame only, and gets the newest interim of each stream.
        assert!(!hub.is_behind(behind.next_seq, behind.live_from, 1));
        assert_eq!(texts(&hub, &mut behind), ["question", "i50", "other1"]);
        assert_eq!(
            hub.publish(interim("late", "s", 50), None),
            Published {
                dropped: true,
                ..Published::default()
            }
        );
        let finished = hub.publish(
            EventParts {
                stream: StreamMark::Final {
                    stream: ActivityKey::of("s"),
                },
                ..parts("final", Some("2"))
            },
            None,
        );
        assert!(finished.finalized);
        assert!(hub.publish(interim("after", "s", 51), None).dropped);
        // The reader never sees i11..i49 queued behind the final, nor anything after it.
        assert_eq!(texts(&hub, &mut reader), ["other1", "final"]);
        let late = hub.attach(&ResumeFrom::Start).unwrap();
        let mut late = late;
        assert_eq!(texts(&hub, &mut late), ["question", "other1", "final"]);
    }

    #[test]
    fn a_blocked_client_is_behind_once_its_next_frame_left_the_ring() {
        let hub = hub(3);
        let cursor = hub.attach(&ResumeFrom::Start).unwrap();
        hub.publish(parts("a", Some("1")), None);
        assert!(!hub.is_behind(cursor.next_seq, cursor.live_from, 100));
        for i in 2..=4 {
            hub.publish(parts("b", Some(&i.to_string())), None);
        }
        assert!(hub.is_behind(cursor.next_seq, cursor.live_from, 100));
        let fresh = hub.attach(&ResumeFrom::Watermark(Arc::from("4"))).unwrap();
        hub.publish(parts("c", Some("5")), None);
        hub.publish(parts("d", Some("6")), None);
        assert!(!hub.is_behind(fresh.next_seq, fresh.live_from, 2));
        assert!(hub.is_behind(fresh.next_seq, fresh.live_from, 1));
    }
}
