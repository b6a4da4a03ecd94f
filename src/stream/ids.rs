//! What identifies an activity on the stream path, without keeping its id text.
//!
//! A hub remembers thousands of delivered ids per conversation (`stream.delivered_ids`) to
//! drop replays. Kept as text, each cost an allocation per relayed activity and ~100 bytes
//! resident; kept as a 128-bit keyed hash they cost 16 bytes and no allocation. Two ids
//! that differ hash equal with odds of 2⁻¹²⁸ per pair, far below any failure the relay can
//! otherwise have; the keys are random per process, so nobody can choose colliding ids.
//! Keys never leave the process: other replicas compute their own from the ids.

use std::hash::{BuildHasher, BuildHasherDefault, Hash, Hasher, RandomState};
use std::sync::OnceLock;

/// An activity id, as a keyed 128-bit hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ActivityKey(u128);

impl ActivityKey {
    pub fn of(id: &str) -> Self {
        static KEYS: OnceLock<(RandomState, RandomState)> = OnceLock::new();
        let (high, low) = KEYS.get_or_init(|| (RandomState::new(), RandomState::new()));
        Self((u128::from(high.hash_one(id)) << 64) | u128::from(low.hash_one(id)))
    }
}

impl Hash for ActivityKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        // Already uniformly distributed: the set needs no second hash.
        state.write_u64(self.0 as u64);
    }
}

/// Passes an [`ActivityKey`]'s own bits through as its hash-table hash.
#[derive(Default)]
pub struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Not reached for ActivityKey; kept correct for anything else hashed by mistake.
        for &b in bytes {
            self.0 = (self.0.rotate_left(5) ^ u64::from(b)).wrapping_mul(0x100_0000_01b3);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

pub type KeySet = std::collections::HashSet<ActivityKey, BuildHasherDefault<KeyHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_stable_within_the_process_and_differ_across_ids() {
        assert_eq!(ActivityKey::of("a|1"), ActivityKey::of("a|1"));
        assert_ne!(ActivityKey::of("a|1"), ActivityKey::of("a|2"));
        let set: KeySet = (0..10_000)
            .map(|i| ActivityKey::of(&format!("c|{i:07}")))
            .collect();
        assert_eq!(set.len(), 10_000);
        assert!(set.contains(&ActivityKey::of("c|0004242")));
        assert!(!set.contains(&ActivityKey::of("c|0010000")));
    }
}
