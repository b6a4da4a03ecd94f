//! The writer thread: one JSON line per recorded activity in `path/YYYY-MM-DD.jsonl`, old
//! days removed, bot activities deduplicated, and with `record.url` each line also spooled
//! in `path/spool/` segments of at most `record.batch` lines that the sender POSTs.

use std::collections::{HashSet, VecDeque};
use std::fs::{self, File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::date;
use super::entry::{Entry, Key};
use crate::config::RecordConfig;
use crate::metrics::Metrics;

/// An open segment is sealed for sending after this long without a new record, so a quiet
/// conversation's last lines do not wait for a full batch.
const SEAL_AFTER: Duration = Duration::from_secs(1);

const PART: &str = "current.part";

#[derive(Serialize)]
struct Line<'a> {
    time: &'a str,
    bot: &'a str,
    conversation: &'a str,
    user: &'a str,
    direction: &'static str,
    activity: &'a Value,
}

/// The spool of unsent batches: `NNNNNNNNNNNNNNNNNNNN.batch` files, oldest first.
pub struct Spool {
    dir: PathBuf,
    bytes: Arc<AtomicU64>,
    /// `None` without `record.url`: nothing is spooled.
    enabled: bool,
    limit: u64,
    next: u64,
    part: Option<BufWriter<File>>,
    part_lines: usize,
}

impl Spool {
    /// Creates `path` (and `path/spool`), seals a segment left by a previous run and counts
    /// what is waiting.
    pub fn open(settings: &RecordConfig, metrics: &Metrics) -> Result<Self, String> {
        fs::create_dir_all(&settings.path)
            .map_err(|e| format!("record.path {}: {e}", settings.path.display()))?;
        let dir = settings.path.join("spool");
        let mut spool = Self {
            dir,
            bytes: Arc::new(AtomicU64::new(0)),
            enabled: settings.url.is_some(),
            limit: settings.spool_bytes,
            next: 0,
            part: None,
            part_lines: 0,
        };
        if !spool.enabled {
            return Ok(spool);
        }
        fs::create_dir_all(&spool.dir)
            .map_err(|e| format!("record spool {}: {e}", spool.dir.display()))?;
        let mut total = 0;
        for entry in fs::read_dir(&spool.dir)
            .map_err(|e| e.to_string())?
            .flatten()
        {
            let name = entry.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name
                .strip_suffix(".batch")
                .and_then(|s| s.parse::<u64>().ok())
            {
                spool.next = spool.next.max(seq + 1);
            }
            if name.ends_with(".batch") || name == PART {
                total += entry.metadata().map(|m| m.len()).unwrap_or(0);
            }
        }
        spool.bytes.store(total, Ordering::Release);
        metrics.record_spool_bytes.set(total as i64);
        // A segment the last run left open is sent as it is.
        if spool.dir.join(PART).exists() {
            spool.part_lines = 1;
            spool.seal();
        }
        Ok(spool)
    }

    pub fn dir(&self) -> PathBuf {
        self.dir.clone()
    }

    pub fn bytes(&self) -> Arc<AtomicU64> {
        self.bytes.clone()
    }

    /// Appends one line; false when the spool is full (the line is only in the daily file).
    fn push(&mut self, line: &[u8], batch: usize, metrics: &Metrics) -> bool {
        let len = line.len() as u64;
        if self.bytes.load(Ordering::Acquire) + len > self.limit {
            return false;
        }
        if self.part.is_none() {
            match OpenOptions::new()
                .create(true)
                .append(true)
                .open(self.dir.join(PART))
            {
                Ok(file) => self.part = Some(BufWriter::new(file)),
                Err(error) => {
                    tracing::error!(%error, "record spool segment cannot be opened");
                    return false;
                }
            }
        }
        let Some(part) = &mut self.part else {
            return false;
        };
        if let Err(error) = part.write_all(line) {
            tracing::error!(%error, "record spool write failed");
            return false;
        }
        let now = self.bytes.fetch_add(len, Ordering::AcqRel) + len;
        metrics.record_spool_bytes.set(now as i64);
        self.part_lines += 1;
        if self.part_lines >= batch {
            self.seal();
        }
        true
    }

    /// Closes the open segment and names it for the sender.
    fn seal(&mut self) {
        if self.part_lines == 0 {
            return;
        }
        if let Some(mut part) = self.part.take()
            && let Err(error) = part.flush()
        {
            tracing::error!(%error, "record spool flush failed");
        }
        let sealed = self.dir.join(format!("{:020}.batch", self.next));
        match fs::rename(self.dir.join(PART), &sealed) {
            Ok(()) => {
                self.next += 1;
                self.part_lines = 0;
            }
            Err(error) => tracing::error!(%error, "record spool segment cannot be sealed"),
        }
    }
}

pub struct Writer {
    path: PathBuf,
    retention_days: i64,
    batch: usize,
    spool: Spool,
    metrics: Arc<Metrics>,
    day: i64,
    file: Option<BufWriter<File>>,
    seen: Seen,
    line: Vec<u8>,
}

impl Writer {
    pub fn new(settings: &RecordConfig, spool: Spool, metrics: Arc<Metrics>) -> Self {
        Self {
            path: settings.path.clone(),
            retention_days: i64::from(settings.retention_days),
            batch: settings.batch,
            spool,
            metrics,
            day: i64::MIN,
            file: None,
            seen: Seen::new(settings.dedupe),
            line: Vec::with_capacity(1024),
        }
    }

    /// Until every sender of entries is gone (the gateway dropped).
    pub fn run(mut self, entries: Receiver<Entry>) {
        loop {
            match entries.recv_timeout(SEAL_AFTER) {
                Ok(entry) => {
                    self.take(entry);
                    // What else waits goes in the same flush.
                    while let Ok(entry) = entries.try_recv() {
                        self.take(entry);
                    }
                    self.flush();
                }
                Err(RecvTimeoutError::Timeout) => self.spool.seal(),
                Err(RecvTimeoutError::Disconnected) => {
                    self.flush();
                    self.spool.seal();
                    return;
                }
            }
        }
    }

    fn flush(&mut self) {
        if let Some(file) = &mut self.file
            && let Err(error) = file.flush()
        {
            tracing::error!(%error, "record file flush failed");
        }
        if let Some(part) = &mut self.spool.part
            && let Err(error) = part.flush()
        {
            tracing::error!(%error, "record spool flush failed");
        }
    }

    fn take(&mut self, entry: Entry) {
        match entry {
            Entry::User { key, activity } => {
                if let Ok(activity) = serde_json::from_slice::<Value>(&activity) {
                    self.write(&key, "user", &activity);
                }
            }
            Entry::Bot { key, set } => {
                let Ok(mut set) = serde_json::from_slice::<Value>(&set) else {
                    return;
                };
                let Some(Value::Array(activities)) = set.get_mut("activities").map(Value::take)
                else {
                    return;
                };
                for activity in &activities {
                    if !crate::policy::is_bot_activity(activity, &key.user, false) {
                        continue;
                    }
                    if let Some(id) = activity.get("id").and_then(Value::as_str)
                        && !self.seen.first(&key.conversation, id)
                    {
                        continue;
                    }
                    self.write(&key, "bot", activity);
                }
            }
        }
    }

    fn write(&mut self, key: &Key, direction: &'static str, activity: &Value) {
        let (day, millis) = date::now();
        if day != self.day {
            self.open_day(day);
        }
        let time = date::timestamp(day, millis);
        self.line.clear();
        let line = Line {
            time: &time,
            bot: &key.bot,
            conversation: &key.conversation,
            user: &key.user,
            direction,
            activity,
        };
        if serde_json::to_writer(&mut self.line, &line).is_err() {
            return;
        }
        self.line.push(b'\n');
        let Some(file) = &mut self.file else {
            return;
        };
        if let Err(error) = file.write_all(&self.line) {
            tracing::error!(%error, "record file write failed");
            return;
        }
        self.metrics.record_written.inc();
        if self.spool.enabled && !self.spool.push(&self.line, self.batch, &self.metrics) {
            self.metrics.record_spool_full.inc();
        }
    }

    /// A new day: its file, and the files past retention removed.
    fn open_day(&mut self, day: i64) {
        self.flush();
        self.day = day;
        let file = self.path.join(format!("{}.jsonl", date::day_name(day)));
        self.file = match OpenOptions::new().create(true).append(true).open(&file) {
            Ok(file) => Some(BufWriter::new(file)),
            Err(error) => {
                tracing::error!(%error, "record file cannot be opened");
                None
            }
        };
        remove_old(&self.path, &date::day_name(day - self.retention_days));
    }
}

/// Removes the daily files of days before `oldest_kept` (names compare as dates).
fn remove_old(dir: &Path, oldest_kept: &str) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let name = name.to_string_lossy();
        let Some(day) = name.strip_suffix(".jsonl") else {
            continue;
        };
        if day.len() == 10
            && day.as_bytes()[4] == b'-'
            && day < oldest_kept
            && let Err(error) = fs::remove_file(entry.path())
        {
            tracing::warn!(%error, "an old record file cannot be removed");
        }
    }
}

/// Bot activities already recorded, by conversation and id; the oldest forgotten first.
struct Seen {
    set: HashSet<(Box<str>, Box<str>)>,
    order: VecDeque<(Box<str>, Box<str>)>,
    capacity: usize,
}

impl Seen {
    fn new(capacity: usize) -> Self {
        Self {
            set: HashSet::new(),
            order: VecDeque::new(),
            capacity,
        }
    }

    /// True the first time (conversation, id) is seen.
    fn first(&mut self, conversation: &str, id: &str) -> bool {
        let key = (Box::<str>::from(conversation), Box::<str>::from(id));
        if self.set.contains(&key) {
            return false;
        }
        self.set.insert(key.clone());
        self.order.push_back(key);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.set.remove(&oldest);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_is_bounded() {
        let mut seen = Seen::new(2);
        assert!(seen.first("c", "1"));
        assert!(!seen.first("c", "1"));
        assert!(seen.first("c", "2"));
        assert!(seen.first("c", "3"));
        assert!(seen.first("c", "1"));
        assert_eq!(seen.set.len(), 2);
    }

    #[test]
    fn old_days_are_removed() {
        let dir = std::env::temp_dir().join(format!("record-retention-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        for name in ["2025-01-01.jsonl", "2025-01-05.jsonl", "notes.txt"] {
            fs::write(dir.join(name), b"x").unwrap();
        }
        remove_old(&dir, "2025-01-03");
        assert!(!dir.join("2025-01-01.jsonl").exists());
        assert!(dir.join("2025-01-05.jsonl").exists());
        assert!(dir.join("notes.txt").exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
