//! Token buckets keyed by client (`forwarded::client_key`) (tokens/generate, starting conversations) or by
//! conversation (POST activities, uploads). Sharded map, one short lock per check; buckets
//! that have refilled are forgotten by a periodic sweep, so memory follows active callers.

use std::hash::Hash;
use std::time::{Duration, Instant};

use dashmap::DashMap;

use crate::config::Rate;

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: Instant,
}

pub struct Limiter<K: Eq + Hash> {
    buckets: DashMap<K, Bucket>,
}

impl<K: Eq + Hash> Default for Limiter<K> {
    fn default() -> Self {
        Self {
            buckets: DashMap::new(),
        }
    }
}

impl<K: Eq + Hash + Clone> Limiter<K> {
    /// Takes one token from `key`'s bucket, or says how long until one is there. The rate
    /// is passed in (not stored) so a reload applies to buckets already in the map.
    pub fn check(&self, key: K, rate: Rate, now: Instant) -> Result<(), Duration> {
        self.check_key(&key, rate, now)
    }

    /// [`Limiter::check`] for a key the caller keeps: cloned only when its bucket is new, so
    /// a stream charging every frame to one conversation allocates nothing per frame.
    pub fn check_key(&self, key: &K, rate: Rate, now: Instant) -> Result<(), Duration> {
        if rate.is_unlimited() {
            return Ok(());
        }
        let burst = f64::from(rate.burst);
        let per_second = rate.per_second();
        let mut bucket = match self.buckets.get_mut(key) {
            Some(bucket) => bucket,
            None => self.buckets.entry(key.clone()).or_insert(Bucket {
                tokens: burst,
                updated: now,
            }),
        };
        let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * per_second).min(burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((1.0 - bucket.tokens) / per_second))
        }
    }

    /// Drops buckets that are full again: forgetting them changes no answer. `rate_of`
    /// gives each key's rate now; `None` (its bot was removed) forgets the bucket.
    pub fn sweep(&self, now: Instant, rate_of: impl Fn(&K) -> Option<Rate>) {
        self.buckets.retain(|key, bucket| {
            let Some(rate) = rate_of(key).filter(|r| !r.is_unlimited()) else {
                return false;
            };
            let elapsed = now.saturating_duration_since(bucket.updated).as_secs_f64();
            bucket.tokens + elapsed * rate.per_second() < f64::from(rate.burst)
        });
    }

    pub fn len(&self) -> usize {
        self.buckets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.buckets.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(per_minute: u32, burst: u32) -> Rate {
        Rate { per_minute, burst }
    }

    #[test]
    fn burst_then_refill_at_the_rate() {
        let limiter = Limiter::default();
        let start = Instant::now();
        let r = rate(60, 3);
        for _ in 0..3 {
            assert!(limiter.check("ip", r, start).is_ok());
        }
        let wait = limiter.check("ip", r, start).unwrap_err();
        assert!(wait > Duration::from_millis(900) && wait <= Duration::from_secs(1));
        assert!(
            limiter.check("other", r, start).is_ok(),
            "keys are independent"
        );
        assert!(
            limiter
                .check("ip", r, start + Duration::from_secs(1))
                .is_ok()
        );
        assert!(
            limiter
                .check("ip", r, start + Duration::from_secs(1))
                .is_err()
        );
    }

    #[test]
    fn unlimited_never_refuses_and_sweep_forgets_full_buckets() {
        let limiter = Limiter::default();
        let now = Instant::now();
        for _ in 0..1000 {
            assert!(limiter.check(1u32, rate(0, 0), now).is_ok());
        }
        assert!(limiter.is_empty());
        let r = rate(60, 2);
        limiter.check(1u32, r, now).unwrap();
        limiter.check(2u32, r, now).unwrap();
        limiter.sweep(now, |_| Some(r));
        assert_eq!(limiter.len(), 2, "not refilled yet");
        limiter.sweep(now + Duration::from_secs(2), |_| Some(r));
        assert!(limiter.is_empty(), "refilled buckets are forgotten");
    }
}
