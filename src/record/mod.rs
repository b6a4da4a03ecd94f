//! The conversation record (`[record]`): each activity as delivered, both directions, finals
//! only, after the activity policy and its redaction, as JSON lines in a file a day; and,
//! with `record.url`, the same lines sent in batches through a bounded on-disk spool.
//!
//! The request and relay paths only offer an entry to a bounded channel (`try_send`, never a
//! wait; a full channel is counted). A writer thread does the parsing, the dedupe and the file
//! I/O, so neither the workers' runtimes nor a slow disk hold a client.
//!
//! - `writer`: the daily files, retention, dedupe and the spool's segments;
//! - `sender`: the batches POSTed to `record.url` with backoff;
//! - `entry`: what the request and relay paths hand to the writer;
//! - `date`: UTC calendar dates and timestamps without a time-zone crate.

mod date;
mod entry;
mod sender;
mod writer;

use std::sync::Arc;
use std::sync::mpsc::{SyncSender, TrySendError, sync_channel};

use bytes::Bytes;

use entry::{Entry, Key};

use crate::config::RecordConfig;
use crate::metrics::Metrics;
use crate::policy::Subject;

pub struct Recorder {
    queue: SyncSender<Entry>,
    metrics: Arc<Metrics>,
}

impl Recorder {
    /// Creates the directory and starts the writer (and, with `url`, the sender) thread.
    pub fn start(settings: &RecordConfig, metrics: Arc<Metrics>) -> Result<Arc<Self>, String> {
        let spool = writer::Spool::open(settings, &metrics)?;
        let (queue, entries) = sync_channel(settings.queue);
        // Held by the writer thread: the sender stops once the writer is gone (the gateway
        // dropped) and what it left unsent waits in the spool for the next start.
        let writing = Arc::new(());
        if let Some(url) = &settings.url {
            let writer_alive = Arc::downgrade(&writing);
            sender::start(
                url,
                spool.dir(),
                spool.bytes(),
                metrics.clone(),
                writer_alive,
            )?;
        }
        let writer = writer::Writer::new(settings, spool, metrics.clone());
        std::thread::Builder::new()
            .name("record-writer".into())
            .spawn(move || {
                let _writing = writing;
                writer.run(entries)
            })
            .map_err(|e| format!("record writer thread: {e}"))?;
        Ok(Arc::new(Self { queue, metrics }))
    }

    /// A user's activity as sent upstream (after the policy).
    pub fn user(&self, subject: Subject<'_>, activity: Bytes) {
        self.offer(Entry::User {
            key: Key::of(subject),
            activity,
        });
    }

    /// An activity set as delivered; the writer keeps the bot's finals, each once.
    pub fn bot_set(&self, subject: Subject<'_>, set: Bytes) {
        self.offer(Entry::Bot {
            key: Key::of(subject),
            set,
        });
    }

    fn offer(&self, entry: Entry) {
        match self.queue.try_send(entry) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) | Err(TrySendError::Disconnected(_)) => {
                self.metrics.record_refused.inc();
            }
        }
    }
}
