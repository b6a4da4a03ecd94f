//! Shared emulator state: conversations and their histories, tokens, the request log.
//!
//! Locking: the maps are `DashMap`s whose guards are dropped before any `.await`; each
//! conversation has one short std `Mutex` around its timeline. There is no global lock on
//! the activity path; the request log has one, held for a push.

use crate::environment::EnvironmentControl;
use std::borrow::Borrow;
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use dashmap::DashMap;
use serde_json::{Map, Value, json};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::activity::{self, Watermark};
use super::bot;
use super::config::EmulatorConfig;
use super::faults::FaultControl;
use super::random;
use super::record::RecordedRequest;
use crate::secret::Secret;

/// Most recent requests kept for [`super::EmulatorHandle::requests`]; older ones are
/// forgotten so a long benchmark does not grow without bound.
const REQUEST_LOG_CAPACITY: usize = 16_384;
/// Typing activities kept for a stream that is behind; a slower socket loses the oldest
/// ones, which is harmless since typing is never replayed anyway (PROTOCOL §0.7).
const TRANSIENT_CAPACITY: usize = 64;
/// Most activity frames prepared per lock of a timeline.
const FRAMES_PER_TURN: usize = 32;
/// Activities per frame when the `batch` fault is on.
const BATCH_SIZE: usize = 3;

pub(super) struct State {
    pub secret: Secret,
    pub second_secret: Option<Secret>,
    pub tls: Option<std::sync::Arc<rustls::ServerConfig>>,
    pub token_ttl: Duration,
    pub stream_url_ttl: Duration,
    pub keepalive_interval: Duration,
    pub faults: FaultControl,
    /// The Copilot Studio environment served beside Direct Line.
    pub environment: EnvironmentControl,
    pub local_addr: SocketAddr,
    /// Answered on every start, like the service's per-bot grammar id.
    pub reference_grammar_id: String,
    conversations: DashMap<ConversationId, Arc<Conversation>>,
    tokens: DashMap<Box<str>, TokenGrant>,
    stream_tokens: DashMap<Box<str>, StreamGrant>,
    log: RequestLog,
    stream_connects: AtomicU64,
    next_socket: AtomicU64,
    shutdown: watch::Sender<bool>,
    /// Bumped by [`super::EmulatorHandle::drop_all_streams`]; every open socket watches it.
    drop_all: watch::Sender<u64>,
}

/// A conversation id: what the service allocates (22 base64url characters and a region
/// suffix), and what a path may name (only `[A-Za-z0-9_-]`).
#[derive(Clone, PartialEq, Eq, Hash)]
pub(super) struct ConversationId(Arc<str>);

impl ConversationId {
    fn generate() -> Self {
        let random: [u8; 16] = random::random_bytes();
        Self(format!("{}-us", random::base64url(&random)).into())
    }

    /// Accepts only the characters the service uses, so a path can never smuggle
    /// separators or encodings into an id.
    pub(super) fn is_valid(text: &str) -> bool {
        !text.is_empty()
            && text.len() <= 128
            && text
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    }

    pub(super) fn as_str(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for ConversationId {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a conversation token grants.
#[derive(Clone, Debug)]
pub(super) struct TokenGrant {
    pub conversation: ConversationId,
    pub user: Option<Arc<str>>,
    pub expires_at: Instant,
}

/// What a stream URL's `t` grants: one conversation, from one position in its history.
#[derive(Clone, Debug)]
pub(super) struct StreamGrant {
    pub conversation: ConversationId,
    pub user: Option<Arc<str>>,
    /// The first history index to replay: after the watermark, or the history length when
    /// the URL was minted (`watermark=-`), which makes the start→socket gap lossless.
    pub from: usize,
    /// Minted by a reconnect (`GET /conversations/{id}`), which `replay_history` affects.
    pub reconnect: bool,
    pub expires_at: Instant,
}

impl State {
    pub(super) fn new(config: EmulatorConfig, local_addr: SocketAddr) -> Self {
        Self {
            faults: FaultControl::new(&config.faults),
            environment: EnvironmentControl::new(config.web_channel_security),
            secret: config.secret,
            second_secret: config.second_secret,
            tls: config.tls,
            token_ttl: config.token_ttl,
            stream_url_ttl: config.stream_url_ttl,
            keepalive_interval: config.keepalive_interval,
            local_addr,
            reference_grammar_id: uuid_like(),
            conversations: DashMap::new(),
            tokens: DashMap::new(),
            stream_tokens: DashMap::new(),
            log: RequestLog::default(),
            stream_connects: AtomicU64::new(0),
            next_socket: AtomicU64::new(1),
            shutdown: watch::channel(false).0,
            drop_all: watch::channel(0).0,
        }
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), without `/v3/directline` (a wildcard
    /// listen address is reported as loopback).
    pub(super) fn base_url(&self) -> String {
        let mut addr = self.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    pub(super) fn conversation(&self, id: &str) -> Option<Arc<Conversation>> {
        self.conversations
            .get(id)
            .map(|entry| entry.value().clone())
    }

    /// Forgets a conversation, as Direct Line does after weeks of inactivity: later calls
    /// for it answer 404. Open streams are left to end on their own.
    pub(super) fn forget_conversation(&self, id: &str) -> bool {
        self.conversations.remove(id).is_some()
    }

    /// Allocates a conversation (not started: tokens/generate allocates without starting).
    pub(super) fn create_conversation(&self) -> Arc<Conversation> {
        loop {
            let id = ConversationId::generate();
            if let dashmap::Entry::Vacant(slot) = self.conversations.entry(id.clone()) {
                let conversation = Arc::new(Conversation::new(id));
                slot.insert(conversation.clone());
                return conversation;
            }
        }
    }

    pub(super) fn mint_token(
        &self,
        conversation: &ConversationId,
        user: Option<Arc<str>>,
    ) -> String {
        let token = random::random_token(self.secret.expose());
        self.tokens.insert(
            token.clone().into(),
            TokenGrant {
                conversation: conversation.clone(),
                user,
                expires_at: deadline(self.token_ttl),
            },
        );
        token
    }

    /// A stream URL for `conversation`, minted now (PROTOCOL §2, §3): `watermark_text` is put
    /// back verbatim, `watermark` decides where its replay starts.
    pub(super) fn mint_stream_url(
        &self,
        origin: &str,
        conversation: &Conversation,
        user: Option<Arc<str>>,
        watermark: Watermark,
        watermark_text: &str,
        reconnect: bool,
    ) -> String {
        let from = match watermark {
            Watermark::None => conversation.history_len(),
            after => after.next_index(),
        };
        let token = random::random_token(self.secret.expose());
        self.stream_tokens.insert(
            token.clone().into(),
            StreamGrant {
                conversation: conversation.id.clone(),
                user,
                from,
                reconnect,
                expires_at: deadline(self.stream_url_ttl),
            },
        );
        let watermark: String =
            form_urlencoded::byte_serialize(watermark_text.as_bytes()).collect();
        format!(
            "{origin}/v3/directline/conversations/{}/stream?watermark={watermark}&t={token}",
            conversation.id.as_str()
        )
    }

    pub(super) fn token(&self, token: &str) -> Option<TokenGrant> {
        self.tokens.get(token).map(|entry| entry.value().clone())
    }

    pub(super) fn stream_grant(&self, token: &str) -> Option<StreamGrant> {
        self.stream_tokens
            .get(token)
            .map(|entry| entry.value().clone())
    }

    pub(super) fn is_stream_token(&self, token: &str) -> bool {
        self.stream_tokens.contains_key(token)
    }

    /// Takes in an activity from a user (REST post, upload, or a multimodal stream frame):
    /// stamps and stores it, then lets the bot answer. Returns the new activity id once the
    /// bot is done, as the service answers POST only after the bot (PROTOCOL §4.2); a streamed
    /// answer (`stream N`) goes on in its own task after that.
    pub(super) fn receive(
        &self,
        conversation: &Arc<Conversation>,
        mut activity: Map<String, Value>,
        user: Option<&str>,
    ) -> String {
        if let Some(user) = user {
            set_from_id(&mut activity, user);
        }
        activity.insert("recipient".into(), bot::account());
        let (id, stored) = conversation.append(activity);
        if let Some(plan) = bot::stream_plan(&stored) {
            if plan.live && plan.chunks > 0 {
                tokio::spawn(stream_answer(
                    conversation.clone(),
                    plan,
                    self.faults.clone(),
                ));
            } else {
                conversation.append(plan.final_message(None));
            }
            return id;
        }
        let replies = bot::respond(&stored, self.faults.typing());
        if let Some(typing) = replies.typing {
            conversation.emit_transient(typing);
        }
        for reply in replies.messages {
            conversation.append(reply);
        }
        id
    }

    /// A message from the bot on its own initiative.
    pub(super) fn proactive(&self, conversation: &Conversation, text: &str) -> String {
        let (id, _) = conversation.append(bot::message(text, None, None));
        id
    }

    /// A bot activity of any shape (a card, an event); `from` is always the bot.
    pub(super) fn proactive_activity(
        &self,
        conversation: &Conversation,
        mut activity: serde_json::Map<String, Value>,
    ) -> String {
        activity.insert("from".into(), bot::account());
        let (id, _) = conversation.append(activity);
        id
    }

    pub(super) fn record(&self, arrival: u64, request: RecordedRequest) {
        self.log.push(arrival, request);
    }

    pub(super) fn arrival(&self) -> u64 {
        self.log.next.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn requests(&self) -> Vec<RecordedRequest> {
        self.log.snapshot()
    }

    pub(super) fn count_stream_connect(&self) {
        self.stream_connects.fetch_add(1, Ordering::Relaxed);
    }

    pub(super) fn stream_connects(&self) -> u64 {
        self.stream_connects.load(Ordering::Relaxed)
    }

    pub(super) fn socket_id(&self) -> u64 {
        self.next_socket.fetch_add(1, Ordering::Relaxed)
    }

    pub(super) fn shutdown_signal(&self) -> watch::Receiver<bool> {
        self.shutdown.subscribe()
    }

    pub(super) fn shut_down(&self) {
        self.shutdown.send_replace(true);
    }

    /// A receiver that sees only drops requested after it was made.
    pub(super) fn drop_all_signal(&self) -> watch::Receiver<u64> {
        self.drop_all.subscribe()
    }

    pub(super) fn drop_all_streams(&self) {
        self.drop_all.send_modify(|generation| *generation += 1);
    }

    /// Forgets stream tokens past their TTL, and conversation tokens one TTL after they
    /// expired (until then they still answer `TokenExpired` rather than "invalid").
    pub(super) fn sweep(&self) {
        let now = Instant::now();
        self.stream_tokens.retain(|_, grant| grant.expires_at > now);
        let grace = self.token_ttl;
        self.tokens
            .retain(|_, grant| now.saturating_duration_since(grant.expires_at) < grace);
    }
}

/// A livestreamed answer: `plan.chunks` interims, each live-only with its own id (the first
/// one's id is the stream's id), `stream_interval` apart, then the stored final message.
async fn stream_answer(
    conversation: Arc<Conversation>,
    plan: bot::StreamPlan,
    faults: FaultControl,
) {
    let mut stream_id: Option<String> = None;
    for sequence in 1..=plan.chunks {
        let interim = plan.interim(sequence, stream_id.as_deref());
        let id = conversation.emit_interim(interim);
        stream_id.get_or_insert(id);
        let interval = faults.stream_interval();
        if interval.is_zero() {
            tokio::task::yield_now().await;
        } else {
            tokio::time::sleep(interval).await;
        }
    }
    conversation.append(plan.final_message(stream_id.as_deref()));
}

/// `now + ttl`, saturating far in the future instead of overflowing.
fn deadline(ttl: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(ttl)
        .unwrap_or_else(|| now + Duration::from_secs(100 * 365 * 86_400))
}

/// A random id shaped like a UUID: `2ea0374a-461a-2b59-b42a-b1c985b149a3`.
fn uuid_like() -> String {
    let hex: String = random::random_bytes::<16>()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    )
}

/// The service overwrites `from.id` with the token's user (PROTOCOL §1.1).
pub(super) fn set_from_id(activity: &mut Map<String, Value>, user: &str) {
    match activity.get_mut("from") {
        Some(Value::Object(from)) => {
            from.insert("id".into(), Value::from(user));
        }
        _ => {
            activity.insert("from".into(), json!({ "id": user }));
        }
    }
}

/// One conversation: its history, pending typing activities, and the one-stream slot.
pub(super) struct Conversation {
    pub id: ConversationId,
    timeline: Mutex<Timeline>,
    /// Woken on every new activity; stream tasks enable their `Notified` before looking at
    /// the timeline, so no wake-up is lost.
    wake: Notify,
    /// Drop-fault counter: odd drops abort, even drops close with 1011.
    drops: AtomicU32,
    /// One past the highest history index any socket has sent: frames below it are
    /// replays, which the frame-counting faults ignore.
    delivered: AtomicUsize,
    /// Wakes a stalled socket when a new one takes the slot, so it can go away.
    stall_kick: Notify,
    /// Sockets that took the stream slot so far (each one took it from the holder, if any).
    stream_opens: AtomicU64,
    /// Numbers the ids of live-only interims (`<conversationId>|s0000001`), which take no
    /// place in the history.
    interims: AtomicU64,
}

#[derive(Default)]
struct Timeline {
    started: bool,
    /// Stored activities as serialized JSON; the index is the sequence number.
    history: Vec<Arc<str>>,
    transients: VecDeque<Transient>,
    next_transient: u64,
    /// The socket holding the one-stream-per-conversation slot (PROTOCOL §0.3).
    stream: Option<u64>,
}

/// A stream-only activity (typing), due right after `history[..at]`.
struct Transient {
    serial: u64,
    at: usize,
    json: Arc<str>,
}

/// Where one socket is in its conversation's timeline.
#[derive(Clone, Copy, Debug)]
pub(super) struct Cursor {
    next: usize,
    next_transient: u64,
}

/// One frame to send.
pub(super) enum Outgoing {
    /// Stored activities and the sequence number of the last one (its watermark).
    Activities(Vec<Arc<str>>, usize),
    /// A typing activity: sent without a watermark.
    Transient(Arc<str>),
}

impl Outgoing {
    /// The ActivitySet text frame (PROTOCOL §5.2).
    pub(super) fn frame(&self) -> String {
        let (items, watermark) = match self {
            Self::Activities(items, last) => (items.as_slice(), Some(activity::watermark(*last))),
            Self::Transient(item) => (std::slice::from_ref(item), None),
        };
        let size: usize = items.iter().map(|item| item.len() + 1).sum();
        let mut frame = String::with_capacity(size + 48);
        frame.push_str("{\"activities\":[");
        for (index, item) in items.iter().enumerate() {
            if index > 0 {
                frame.push(',');
            }
            frame.push_str(item);
        }
        frame.push(']');
        if let Some(watermark) = watermark {
            frame.push_str(",\"watermark\":\"");
            frame.push_str(&watermark);
            frame.push('"');
        }
        frame.push('}');
        frame
    }
}

impl Conversation {
    fn new(id: ConversationId) -> Self {
        Self {
            id,
            timeline: Mutex::new(Timeline::default()),
            wake: Notify::new(),
            drops: AtomicU32::new(0),
            delivered: AtomicUsize::new(0),
            stall_kick: Notify::new(),
            stream_opens: AtomicU64::new(0),
            interims: AtomicU64::new(0),
        }
    }

    /// The guard is never held across `.await`; a panic while holding it cannot leave
    /// the timeline half-written (every mutation is a single push or assignment).
    fn timeline(&self) -> MutexGuard<'_, Timeline> {
        self.timeline
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Marks the conversation started; true when it was not yet.
    pub(super) fn start(&self) -> bool {
        !std::mem::replace(&mut self.timeline().started, true)
    }

    pub(super) fn history_len(&self) -> usize {
        self.timeline().history.len()
    }

    pub(super) fn wake(&self) -> &Notify {
        &self.wake
    }

    /// The next drop number (1-based) for the drop fault.
    pub(super) fn stall_kick(&self) -> &Notify {
        &self.stall_kick
    }

    /// Records that a frame ending before history index `end` went out; true when it
    /// carried at least one activity no socket had sent before.
    pub(super) fn mark_delivered(&self, end: usize) -> bool {
        self.delivered.fetch_max(end, Ordering::Relaxed) < end
    }

    pub(super) fn count_drop(&self) -> u32 {
        self.drops.fetch_add(1, Ordering::Relaxed).wrapping_add(1)
    }

    /// Stores an activity: assigns its id and watermark, stamps `timestamp`,
    /// `conversation` and `channelId`. Returns the id and the stored activity.
    pub(super) fn append(&self, mut activity: Map<String, Value>) -> (String, Map<String, Value>) {
        activity.insert("timestamp".into(), Value::from(activity::timestamp_now()));
        activity.insert("channelId".into(), Value::from("directline"));
        activity.insert("conversation".into(), json!({ "id": self.id.as_str() }));
        let id = {
            let mut timeline = self.timeline();
            let id = activity::activity_id(self.id.as_str(), timeline.history.len());
            activity.insert("id".into(), Value::from(id.as_str()));
            // Serializing a map with string keys cannot fail.
            let json = serde_json::to_string(&activity).unwrap_or_default();
            timeline.history.push(json.into());
            id
        };
        self.wake.notify_waiters();
        (id, activity)
    }

    /// Delivers a typing activity to the open stream, if any; never stored.
    pub(super) fn emit_transient(&self, mut activity: Map<String, Value>) {
        activity.insert("timestamp".into(), Value::from(activity::timestamp_now()));
        activity.insert("channelId".into(), Value::from("directline"));
        activity.insert("conversation".into(), json!({ "id": self.id.as_str() }));
        let json: Arc<str> = serde_json::to_string(&activity).unwrap_or_default().into();
        {
            let mut timeline = self.timeline();
            if timeline.stream.is_none() {
                return;
            }
            let serial = timeline.next_transient;
            timeline.next_transient += 1;
            let at = timeline.history.len();
            timeline
                .transients
                .push_back(Transient { serial, at, json });
            if timeline.transients.len() > TRANSIENT_CAPACITY {
                timeline.transients.pop_front();
            }
        }
        self.wake.notify_waiters();
    }

    /// Delivers a streamed answer's interim to the open stream, if any, with an id of its
    /// own (returned even when no stream is open: the stream's id is that of its first
    /// interim, delivered or not). Never stored, never replayed, no watermark.
    pub(super) fn emit_interim(&self, mut activity: Map<String, Value>) -> String {
        let serial = self.interims.fetch_add(1, Ordering::Relaxed) + 1;
        let id = format!("{}|s{serial:07}", self.id.as_str());
        activity.insert("id".into(), Value::from(id.as_str()));
        self.emit_transient(activity);
        id
    }

    /// Stored activities from index `from`, at most `limit`, with the last one's sequence.
    pub(super) fn stored_from(&self, from: usize, limit: usize) -> (Vec<Arc<str>>, Option<usize>) {
        let timeline = self.timeline();
        let from = from.min(timeline.history.len());
        let end = from.saturating_add(limit).min(timeline.history.len());
        let items = timeline.history[from..end].to_vec();
        (items, end.checked_sub(1).filter(|_| end > from))
    }

    /// Every stored activity, parsed.
    pub(super) fn history(&self) -> Vec<Value> {
        let items = self.timeline().history.clone();
        items
            .iter()
            .filter_map(|json| serde_json::from_str(json).ok())
            .collect()
    }

    /// Takes the one stream slot for `socket`. Like Direct Line (PROTOCOL §5.4), a newcomer
    /// wins: a socket holding the slot finds it gone ([`Self::holds_stream`], woken through
    /// [`Self::wake`]) and closes with 1000 `collision`.
    pub(super) fn claim_stream(&self, socket: u64, from: usize) -> Cursor {
        let mut timeline = self.timeline();
        let taken_from = timeline.stream.replace(socket);
        if taken_from.is_some() {
            // Typing emitted for the old socket is not the newcomer's.
            timeline.transients.clear();
        }
        let cursor = Cursor {
            next: from.min(timeline.history.len()),
            next_transient: timeline.next_transient,
        };
        drop(timeline);
        self.stream_opens.fetch_add(1, Ordering::Relaxed);
        self.stall_kick.notify_waiters();
        if taken_from.is_some() {
            self.wake.notify_waiters();
        }
        cursor
    }

    /// Whether `socket` still holds the stream slot (a newer socket takes it).
    pub(super) fn holds_stream(&self, socket: u64) -> bool {
        self.timeline().stream == Some(socket)
    }

    /// Sockets that have taken this conversation's stream slot.
    pub(super) fn stream_opens(&self) -> u64 {
        self.stream_opens.load(Ordering::Relaxed)
    }

    /// Frees the slot if `socket` holds it.
    pub(super) fn release_stream(&self, socket: u64) {
        let mut timeline = self.timeline();
        if timeline.stream == Some(socket) {
            timeline.stream = None;
            timeline.transients.clear();
        }
    }

    pub(super) fn live_streams(&self) -> usize {
        usize::from(self.timeline().stream.is_some())
    }

    /// Fills `out` with the frames due after `cursor` and advances it: stored activities
    /// in order (up to [`BATCH_SIZE`] per frame with `batch`), each typing activity at
    /// the place in the history where it was emitted.
    pub(super) fn due_frames(&self, cursor: &mut Cursor, batch: bool, out: &mut Vec<Outgoing>) {
        let per_frame = if batch { BATCH_SIZE } else { 1 };
        let timeline = self.timeline();
        let first_serial = timeline.transients.front().map_or(0, |t| t.serial);
        cursor.next_transient = cursor.next_transient.max(first_serial);
        while out.len() < FRAMES_PER_TURN {
            let transient = usize::try_from(cursor.next_transient - first_serial)
                .ok()
                .and_then(|offset| timeline.transients.get(offset));
            let stored_end = match transient {
                Some(transient) if transient.at <= cursor.next => {
                    out.push(Outgoing::Transient(transient.json.clone()));
                    cursor.next_transient += 1;
                    continue;
                }
                Some(transient) => transient.at,
                None => timeline.history.len(),
            };
            let end = stored_end.min(cursor.next + per_frame);
            if end <= cursor.next {
                break;
            }
            out.push(Outgoing::Activities(
                timeline.history[cursor.next..end].to_vec(),
                end - 1,
            ));
            cursor.next = end;
        }
    }
}

/// Requests in arrival order; bounded.
#[derive(Default)]
struct RequestLog {
    next: AtomicU64,
    entries: Mutex<VecDeque<(u64, RecordedRequest)>>,
}

impl RequestLog {
    fn entries(&self) -> MutexGuard<'_, VecDeque<(u64, RecordedRequest)>> {
        self.entries
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn push(&self, arrival: u64, request: RecordedRequest) {
        let mut entries = self.entries();
        if entries.len() >= REQUEST_LOG_CAPACITY {
            entries.pop_front();
        }
        entries.push_back((arrival, request));
    }

    /// Recorded when answered, listed by arrival.
    fn snapshot(&self) -> Vec<RecordedRequest> {
        let mut entries: Vec<_> = self.entries().iter().cloned().collect();
        entries.sort_by_key(|(arrival, _)| *arrival);
        entries.into_iter().map(|(_, request)| request).collect()
    }
}

#[cfg(test)]
mod unit {
    use super::*;

    fn conversation() -> Conversation {
        Conversation::new(ConversationId("c-us".into()))
    }

    fn message(text: &str) -> Map<String, Value> {
        match json!({ "type": "message", "text": text }) {
            Value::Object(map) => map,
            _ => Map::new(),
        }
    }

    fn texts(frames: &[Outgoing]) -> Vec<String> {
        frames.iter().map(Outgoing::frame).collect()
    }

    #[test]
    fn ids_and_frames() {
        let conversation = conversation();
        let (id, stored) = conversation.append(message("a"));
        assert_eq!(id, "c-us|0000000");
        assert_eq!(stored["conversation"]["id"], "c-us");
        assert_eq!(stored["channelId"], "directline");
        conversation.append(message("b"));
        let mut cursor = conversation.claim_stream(1, 0);
        let mut out = Vec::new();
        conversation.due_frames(&mut cursor, false, &mut out);
        let frames = texts(&out);
        assert_eq!(frames.len(), 2);
        let first: Value = serde_json::from_str(&frames[0]).expect("json");
        assert_eq!(first["watermark"], "0");
        assert_eq!(first["activities"][0]["text"], "a");
        let second: Value = serde_json::from_str(&frames[1]).expect("json");
        assert_eq!(second["watermark"], "1");
    }

    #[test]
    fn batches_and_typing_order() {
        let conversation = conversation();
        let mut cursor = conversation.claim_stream(1, 0);
        for text in ["a", "b", "c", "d"] {
            conversation.append(message(text));
        }
        conversation.emit_transient(message("typing"));
        conversation.append(message("e"));
        let mut out = Vec::new();
        conversation.due_frames(&mut cursor, true, &mut out);
        let frames: Vec<Value> = texts(&out)
            .iter()
            .map(|f| serde_json::from_str(f).expect("json"))
            .collect();
        assert_eq!(frames.len(), 4);
        assert_eq!(frames[0]["activities"].as_array().map(Vec::len), Some(3));
        assert_eq!(frames[0]["watermark"], "2");
        assert_eq!(frames[1]["activities"][0]["text"], "d");
        assert_eq!(frames[1]["watermark"], "3");
        assert_eq!(frames[2]["activities"][0]["text"], "typing");
        assert!(frames[2].get("watermark").is_none());
        assert_eq!(frames[3]["activities"][0]["text"], "e");
        out.clear();
        conversation.due_frames(&mut cursor, true, &mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn one_stream_slot() {
        let conversation = conversation();
        conversation.claim_stream(1, 0);
        assert!(conversation.holds_stream(1));
        // The newcomer takes the slot; the old holder's release frees nothing.
        conversation.claim_stream(2, 0);
        assert!(!conversation.holds_stream(1));
        conversation.release_stream(1);
        assert_eq!(conversation.live_streams(), 1);
        conversation.release_stream(2);
        assert_eq!(conversation.live_streams(), 0);
        conversation.claim_stream(3, 0);
        assert_eq!(conversation.stream_opens(), 3);
    }

    #[test]
    fn typing_without_a_stream_is_dropped() {
        let conversation = conversation();
        conversation.emit_transient(message("typing"));
        conversation.append(message("a"));
        let mut cursor = conversation.claim_stream(1, 0);
        let mut out = Vec::new();
        conversation.due_frames(&mut cursor, false, &mut out);
        assert_eq!(out.len(), 1);
        assert!(matches!(out[0], Outgoing::Activities(_, 0)));
    }

    #[test]
    fn generated_ids_are_path_safe() {
        for _ in 0..100 {
            let id = ConversationId::generate();
            assert!(ConversationId::is_valid(id.as_str()), "{id:?}");
            assert_eq!(id.as_str().len(), 25);
        }
        assert!(!ConversationId::is_valid("a|b"));
        assert!(!ConversationId::is_valid("a%2Fb"));
        assert!(!ConversationId::is_valid(""));
    }
}
