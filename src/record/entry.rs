//! What the request and relay paths hand to the record's writer thread.

use std::sync::Arc;

use bytes::Bytes;

use crate::policy::Subject;

/// What the request and relay paths hand to the writer.
pub(super) enum Entry {
    /// A user's activity as it went upstream (bound, screened, redacted).
    User { key: Key, activity: Bytes },
    /// An activity set (a stream frame, a history page) as delivered to clients.
    Bot { key: Key, set: Bytes },
}

/// Bot, conversation and the conversation's bound user (`dl_…`).
pub(super) struct Key {
    pub(super) bot: Arc<str>,
    pub(super) conversation: Box<str>,
    pub(super) user: Arc<str>,
}

impl Key {
    pub(super) fn of(subject: Subject<'_>) -> Self {
        Self {
            bot: Arc::from(subject.bot),
            conversation: Box::from(subject.conversation),
            user: Arc::from(subject.user),
        }
    }
}
