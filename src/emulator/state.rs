//! Emulator state: credentials, conversations and their activity logs, recorded requests.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use dashmap::DashMap;
use serde_json::{Value, json};
use tokio::sync::{Notify, watch};

use super::EmulatorConfig;
use super::faults::FaultControl;
use crate::secret::Secret;

/// What the `Authorization` header of a request was, as the emulator judged it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeenCredential {
    Missing,
    Secret,
    ConversationToken { conversation_id: String },
    StreamToken,
    Invalid,
}

#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub credential: SeenCredential,
    /// The `Host` header as received.
    pub host: Option<String>,
    /// The JSON body, when there was one.
    pub body: Option<Value>,
    /// What the emulator answered (101 for accepted upgrades).
    pub status: u16,
}

pub struct TokenInfo {
    pub conversation: String,
    pub user: Option<String>,
    pub expires_at: Instant,
}

/// Where a stream starts reading.
#[derive(Clone, Copy, Debug)]
pub enum StreamStart {
    /// After the stored activity with this sequence number (a watermark).
    AfterSeq(u64),
    /// From this log position: what was logged after the URL was minted (`watermark=-`).
    FromLog(usize),
}

pub struct StreamToken {
    pub conversation: String,
    pub start: StreamStart,
    pub from_reconnect: bool,
    pub expires_at: Instant,
}

pub struct State {
    pub secret: Secret,
    pub faults: FaultControl,
    pub keepalive_interval: Duration,
    pub stream_url_ttl: Duration,
    pub token_ttl: Duration,
    pub tokens: DashMap<String, TokenInfo>,
    pub stream_tokens: DashMap<String, StreamToken>,
    conversations: DashMap<String, Arc<Conversation>>,
    requests: Mutex<Vec<RecordedRequest>>,
    connects: AtomicU64,
    pub stopped: watch::Sender<bool>,
}

impl State {
    pub fn new(config: EmulatorConfig) -> Self {
        Self {
            faults: FaultControl::new(&config.faults),
            secret: config.secret,
            keepalive_interval: config.keepalive_interval,
            stream_url_ttl: config.stream_url_ttl,
            token_ttl: config.token_ttl,
            tokens: DashMap::new(),
            stream_tokens: DashMap::new(),
            conversations: DashMap::new(),
            requests: Mutex::new(Vec::new()),
            connects: AtomicU64::new(0),
            stopped: watch::channel(false).0,
        }
    }

    pub fn record(&self, request: RecordedRequest) {
        lock(&self.requests).push(request);
    }

    pub fn recorded(&self) -> Vec<RecordedRequest> {
        lock(&self.requests).clone()
    }

    pub fn count_connect(&self) {
        self.connects.fetch_add(1, Ordering::Relaxed);
    }

    pub fn stream_connects(&self) -> u64 {
        self.connects.load(Ordering::Relaxed)
    }

    pub fn shutdown(&self) {
        self.stopped.send_replace(true);
    }

    pub fn conversation(&self, id: &str) -> Option<Arc<Conversation>> {
        self.conversations.get(id).map(|c| c.clone())
    }

    /// Allocates a conversation id (not started yet).
    pub fn allocate(&self) -> Arc<Conversation> {
        let id = format!("{}-us", random_token(16));
        let conversation = Arc::new(Conversation::new(id.clone()));
        self.conversations.insert(id, conversation.clone());
        conversation
    }

    pub fn mint_token(&self, conversation: &str, user: Option<String>) -> String {
        let token = random_token(32);
        self.tokens.insert(
            token.clone(),
            TokenInfo {
                conversation: conversation.to_owned(),
                user,
                expires_at: Instant::now() + self.token_ttl,
            },
        );
        token
    }

    pub fn mint_stream_token(
        &self,
        conversation: &Conversation,
        watermark: Option<u64>,
        from_reconnect: bool,
    ) -> String {
        let token = random_token(32);
        let start = match watermark {
            Some(seq) => StreamStart::AfterSeq(seq),
            None => StreamStart::FromLog(conversation.log_len()),
        };
        self.stream_tokens.insert(
            token.clone(),
            StreamToken {
                conversation: conversation.id.clone(),
                start,
                from_reconnect,
                expires_at: Instant::now() + self.stream_url_ttl,
            },
        );
        token
    }
}

/// One entry of a conversation's log: stored activities have a sequence number (their
/// watermark); typing has none and is never returned by GET nor replayed.
pub struct Entry {
    pub seq: Option<u64>,
    pub activity: Value,
}

pub struct Conversation {
    pub id: String,
    log: Mutex<Log>,
    /// Bumped on every append; stream tasks wait on it.
    appended: watch::Sender<usize>,
    live: AtomicUsize,
    /// Lets a new connection release a stalled one, which cannot see its peer leave.
    pub kick_stalled: Notify,
    pub drops: AtomicU64,
    /// Highest log position sent on any socket: fault counters count only frames beyond it,
    /// so drops and stalls compose with replays and a conversation always makes progress.
    pub high_water: AtomicUsize,
}

struct Log {
    entries: Vec<Entry>,
    next_seq: u64,
    started: bool,
}

impl Conversation {
    fn new(id: String) -> Self {
        Self {
            id,
            log: Mutex::new(Log {
                entries: Vec::new(),
                next_seq: 0,
                started: false,
            }),
            appended: watch::channel(0).0,
            live: AtomicUsize::new(0),
            kick_stalled: Notify::new(),
            drops: AtomicU64::new(0),
            high_water: AtomicUsize::new(0),
        }
    }

    /// Marks the conversation started; false when it already was.
    pub fn start(&self) -> bool {
        let mut log = lock(&self.log);
        !std::mem::replace(&mut log.started, true)
    }

    pub fn log_len(&self) -> usize {
        lock(&self.log).entries.len()
    }

    pub fn subscribe(&self) -> watch::Receiver<usize> {
        self.appended.subscribe()
    }

    /// Stores an activity with the next id, timestamp and conversation; returns its id.
    pub fn store(&self, mut activity: Value) -> String {
        let mut log = lock(&self.log);
        let seq = log.next_seq;
        log.next_seq += 1;
        let id = format!("{}|{seq:07}", self.id);
        if let Value::Object(map) = &mut activity {
            map.insert("id".into(), json!(id));
            map.insert("timestamp".into(), json!(timestamp()));
            map.insert("channelId".into(), json!("directline"));
            map.insert("conversation".into(), json!({ "id": self.id }));
        }
        log.entries.push(Entry {
            seq: Some(seq),
            activity,
        });
        let len = log.entries.len();
        drop(log);
        self.appended.send_replace(len);
        id
    }

    /// A stream-only activity (typing): never stored, never replayed.
    pub fn ephemeral(&self, activity: Value) {
        let mut log = lock(&self.log);
        log.entries.push(Entry {
            seq: None,
            activity,
        });
        let len = log.entries.len();
        drop(log);
        self.appended.send_replace(len);
    }

    pub fn append_bot_message(&self, text: &str, reply_to: Option<&str>) -> String {
        let mut activity = json!({
            "type": "message",
            "from": { "id": "echo-bot", "name": "Echo Bot", "role": "bot" },
            "text": text,
        });
        if let Some(reply_to) = reply_to {
            activity["replyToId"] = json!(reply_to);
        }
        self.store(activity)
    }

    /// Stored activities after `watermark` (all when `None`), and the newest watermark.
    pub fn stored_after(&self, watermark: Option<u64>) -> Vec<Value> {
        let log = lock(&self.log);
        log.entries
            .iter()
            .filter(|e| {
                matches!((e.seq, watermark), (Some(s), Some(w)) if s > w)
                    || (e.seq.is_some() && watermark.is_none())
            })
            .map(|e| e.activity.clone())
            .collect()
    }

    pub fn newest_watermark(&self) -> Option<u64> {
        lock(&self.log).next_seq.checked_sub(1)
    }

    /// Log position of the first entry stored after `seq`.
    pub fn position_after(&self, seq: u64) -> usize {
        let log = lock(&self.log);
        log.entries
            .iter()
            .position(|e| e.seq.is_some_and(|s| s > seq))
            .unwrap_or(log.entries.len())
    }

    /// Copies entries `from..` (up to `max`), as (seq, activity).
    pub fn entries_from(&self, from: usize, max: usize) -> Vec<(Option<u64>, Value)> {
        let log = lock(&self.log);
        log.entries
            .iter()
            .skip(from)
            .take(max)
            .map(|e| (e.seq, e.activity.clone()))
            .collect()
    }

    pub fn live_streams(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Claims the conversation's single stream slot.
    pub fn claim_stream(&self) -> bool {
        self.live
            .compare_exchange(0, 1, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn release_stream(&self) {
        self.live.store(0, Ordering::Release);
    }
}

pub fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

pub fn random_token(bytes: usize) -> String {
    let raw: Vec<u8> = (0..bytes).map(|_| fastrand::u8(..)).collect();
    URL_SAFE_NO_PAD.encode(raw)
}

/// ISO 8601 UTC with milliseconds, as Direct Line stamps activities.
fn timestamp() -> String {
    let ms = crate::clock::unix_millis();
    let (days, day_ms) = ((ms / 86_400_000) as i64, ms % 86_400_000);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    let secs = day_ms / 1000;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60,
        day_ms % 1000
    )
}

#[cfg(test)]
#[test]
fn timestamps_are_iso_8601() {
    let t = timestamp();
    assert_eq!(t.len(), 24, "{t}");
    assert!(
        t.starts_with("20") && t.ends_with('Z') && &t[10..11] == "T",
        "{t}"
    );
}
