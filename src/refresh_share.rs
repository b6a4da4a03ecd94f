//! One upstream token refresh per conversation at a time, and its result shared: a refresh
//! loop (or many tabs of one page) must not turn into one Direct Line call, with the bot's
//! secret or the conversation's token, per request (SECURITY.md, "tokens/refresh").
//!
//! Each conversation has a slot holding its current upstream token. A refresh that finds it
//! still good (not near its end, or obtained a moment ago) answers with it; otherwise the
//! first caller calls upstream while later ones wait on the slot's lock and then take what it
//! got. Slots are forgotten once their token has expired (swept with the rate buckets), and
//! their number is capped: past the cap a refresh still works, unshared.

use std::sync::Arc;

use dashmap::DashMap;
use tokio::sync::Mutex;

/// Slots kept at most; each is a conversation refreshed within its token's life.
pub const MAX_SLOTS: usize = 100_000;

/// How long a fresh token is handed out again even when it is already near its end (short
/// upstream lifetimes): at most this, and at most half its life.
const SHARED_FOR_SECS: u64 = 10;

/// An upstream token and when it was obtained and ends (Unix seconds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fresh {
    pub upstream_token: String,
    pub obtained_at: u64,
    pub expires_at: u64,
}

impl Fresh {
    /// Good to hand out again at `now`: more than `refresh_before` left, or obtained so
    /// recently that calling upstream again would return the same.
    pub fn reusable(&self, now: u64, refresh_before: u64) -> bool {
        if now >= self.expires_at {
            return false;
        }
        let life = self.expires_at.saturating_sub(self.obtained_at);
        self.expires_at - now >= refresh_before
            || now.saturating_sub(self.obtained_at) < SHARED_FOR_SECS.min(life / 2)
    }
}

/// Bot, conversation id, user id: a conversation's token is shared only with its own user.
pub type Key = (Arc<str>, String, String);

#[derive(Default)]
pub struct RefreshShare {
    slots: DashMap<Key, Arc<Mutex<Option<Fresh>>>>,
}

/// Whether an answer came from an upstream call or from the conversation's slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Upstream,
    Shared,
}

impl RefreshShare {
    /// The conversation's current upstream token if `reusable` says it still is, else what
    /// `fetch` gets (one `fetch` at a time per conversation; its failures are not kept).
    pub async fn get<E>(
        &self,
        key: Key,
        reusable: impl Fn(&Fresh) -> bool,
        fetch: impl AsyncFnOnce() -> Result<Fresh, E>,
    ) -> Result<(Fresh, Source), E> {
        let slot = match self.slots.get(&key) {
            Some(slot) => slot.clone(),
            None if self.slots.len() >= MAX_SLOTS => return Ok((fetch().await?, Source::Upstream)),
            // The map's guard ends with the statement: no guard is held across the awaits.
            None => self.slots.entry(key).or_default().clone(),
        };
        let mut held = slot.lock().await;
        if let Some(fresh) = held.as_ref().filter(|fresh| reusable(fresh)) {
            return Ok((fresh.clone(), Source::Shared));
        }
        let fresh = fetch().await?;
        *held = Some(fresh.clone());
        Ok((fresh, Source::Upstream))
    }

    /// Forgets slots nobody is using whose token has expired (or that never got one).
    pub fn sweep(&self, now: u64) {
        self.slots.retain(|_, slot| {
            Arc::strong_count(slot) > 1
                || slot.try_lock().map_or(true, |held| {
                    held.as_ref().is_some_and(|f| f.expires_at > now)
                })
        });
    }

    pub fn len(&self) -> usize {
        self.slots.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn fresh(obtained_at: u64, expires_at: u64) -> Fresh {
        Fresh {
            upstream_token: "t".into(),
            obtained_at,
            expires_at,
        }
    }

    #[test]
    fn reusable_until_near_its_end_or_for_a_moment_when_short_lived() {
        let hour = fresh(1000, 4600);
        assert!(hour.reusable(1000, 1800));
        assert!(hour.reusable(2800, 1800));
        assert!(!hour.reusable(2801, 1800), "inside refresh_before");
        // Lives 20 s, refresh_before 30 s: shared for 10 s only.
        let short = fresh(1000, 1020);
        assert!(short.reusable(1009, 30));
        assert!(!short.reusable(1010, 30));
        // Lives 4 s: shared for 2 s at most, never past its end.
        let tiny = fresh(1000, 1004);
        assert!(tiny.reusable(1001, 30));
        assert!(!tiny.reusable(1002, 30));
        assert!(!hour.reusable(4600, 0));
    }

    #[tokio::test]
    async fn concurrent_refreshes_of_one_conversation_make_one_call() {
        let share = Arc::new(RefreshShare::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let key: Key = ("bot".into(), "c1".into(), "u1".into());
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let (share, calls, key) = (share.clone(), calls.clone(), key.clone());
            tasks.push(tokio::spawn(async move {
                share
                    .get(
                        key,
                        |f| f.reusable(100, 30),
                        async || {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                            Ok::<_, ()>(fresh(100, 3700))
                        },
                    )
                    .await
                    .unwrap()
            }));
        }
        let mut shared = 0;
        for task in tasks {
            let (got, source) = task.await.unwrap();
            assert_eq!(got, fresh(100, 3700));
            shared += usize::from(source == Source::Shared);
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(shared, 19);
        // Another user's refresh of the same conversation id shares nothing.
        let other: Key = ("bot".into(), "c1".into(), "u2".into());
        let (_, source) = share
            .get(other, |_| true, async || Ok::<_, ()>(fresh(100, 3700)))
            .await
            .unwrap();
        assert_eq!(source, Source::Upstream);
        share.sweep(200);
        assert_eq!(share.len(), 2);
        share.sweep(3700);
        assert_eq!(share.len(), 0, "expired slots are forgotten");
    }

    #[tokio::test]
    async fn a_failed_refresh_is_not_kept() {
        let share = RefreshShare::default();
        let key: Key = ("bot".into(), "c1".into(), "u1".into());
        let failed = share
            .get(key.clone(), |_| true, async || Err::<Fresh, _>("down"))
            .await;
        assert_eq!(failed, Err("down"));
        let (_, source) = share
            .get(key, |_| true, async || Ok::<_, &str>(fresh(1, 2)))
            .await
            .unwrap();
        assert_eq!(source, Source::Upstream);
    }
}
