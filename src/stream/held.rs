//! What held polls may hold on this replica: polls waiting per conversation, per client IP
//! and in total, and hubs opened by polls. Each is a slot taken before the hold and given
//! back when its guard drops, however the poll ends.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use dashmap::DashMap;

use crate::config::PollingConfig;
use crate::endpoint::ConversationId;

type ConversationKey = (Arc<str>, ConversationId);

/// Which bound refused a poll (the `polls_refused_total` reason).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HoldRefused {
    Conversation,
    Ip,
    Total,
}

impl HoldRefused {
    pub fn as_str(self) -> &'static str {
        match self {
            HoldRefused::Conversation => "conversation",
            HoldRefused::Ip => "ip",
            HoldRefused::Total => "total",
        }
    }
}

/// The replica's held polls and poll-opened hubs.
pub struct HeldPolls {
    per_conversation: Arc<DashMap<ConversationKey, usize>>,
    per_ip: Arc<DashMap<IpAddr, usize>>,
    total: Arc<AtomicUsize>,
    hubs: Arc<AtomicUsize>,
    held_gauge: prometheus::IntGauge,
    hubs_gauge: prometheus::IntGauge,
}

/// One held poll's places under the three bounds.
pub struct HeldSlot {
    per_conversation: Arc<DashMap<ConversationKey, usize>>,
    per_ip: Arc<DashMap<IpAddr, usize>>,
    total: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
    conversation: ConversationKey,
    ip: IpAddr,
}

/// A hub's place under `polling.max_hubs`, kept by the hub itself.
#[derive(Debug)]
pub struct PollHubSlot {
    hubs: Arc<AtomicUsize>,
    gauge: prometheus::IntGauge,
}

impl HeldPolls {
    pub fn new(held_gauge: prometheus::IntGauge, hubs_gauge: prometheus::IntGauge) -> Self {
        Self {
            per_conversation: Arc::default(),
            per_ip: Arc::default(),
            total: Arc::default(),
            hubs: Arc::default(),
            held_gauge,
            hubs_gauge,
        }
    }

    /// Takes a place for one held poll, or names the bound it would pass.
    pub fn hold(
        &self,
        limits: &PollingConfig,
        bot: &Arc<str>,
        conversation: &ConversationId,
        ip: IpAddr,
    ) -> Result<HeldSlot, HoldRefused> {
        if self.total.fetch_add(1, Ordering::AcqRel) >= limits.max_held {
            self.total.fetch_sub(1, Ordering::AcqRel);
            return Err(HoldRefused::Total);
        }
        // Taken in this order so each refusal gives back only what it took.
        let key = (bot.clone(), conversation.clone());
        {
            let mut count = self.per_conversation.entry(key.clone()).or_insert(0);
            if *count >= limits.max_held_per_conversation {
                drop(count);
                self.per_conversation.remove_if(&key, |_, c| *c == 0);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(HoldRefused::Conversation);
            }
            *count += 1;
        }
        {
            let mut count = self.per_ip.entry(ip).or_insert(0);
            if *count >= limits.max_held_per_ip {
                drop(count);
                self.per_ip.remove_if(&ip, |_, c| *c == 0);
                release(&self.per_conversation, &key);
                self.total.fetch_sub(1, Ordering::AcqRel);
                return Err(HoldRefused::Ip);
            }
            *count += 1;
        }
        self.held_gauge.inc();
        Ok(HeldSlot {
            per_conversation: self.per_conversation.clone(),
            per_ip: self.per_ip.clone(),
            total: self.total.clone(),
            gauge: self.held_gauge.clone(),
            conversation: key,
            ip,
        })
    }

    /// Takes a place for a hub a poll opens, or `None` when `max` are open.
    pub fn open_hub(&self, max: usize) -> Option<PollHubSlot> {
        if self.hubs.fetch_add(1, Ordering::AcqRel) >= max {
            self.hubs.fetch_sub(1, Ordering::AcqRel);
            return None;
        }
        self.hubs_gauge.inc();
        Some(PollHubSlot {
            hubs: self.hubs.clone(),
            gauge: self.hubs_gauge.clone(),
        })
    }

    /// Polls held now (all conversations, all addresses).
    pub fn held(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}

fn release<K: std::hash::Hash + Eq + Clone>(map: &DashMap<K, usize>, key: &K) {
    if let Some(mut count) = map.get_mut(key) {
        *count = count.saturating_sub(1);
    }
    map.remove_if(key, |_, count| *count == 0);
}

impl Drop for HeldSlot {
    fn drop(&mut self) {
        release(&self.per_conversation, &self.conversation);
        release(&self.per_ip, &self.ip);
        self.total.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

impl Drop for PollHubSlot {
    fn drop(&mut self) {
        self.hubs.fetch_sub(1, Ordering::AcqRel);
        self.gauge.dec();
    }
}

/// A hub's identity for poll watermarks: a random start per process, so two replicas'
/// hubs of one conversation never share one, then a count.
pub fn hub_nonce() -> u64 {
    static START: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let start = *START.get_or_init(|| {
        let mut bytes = [0u8; 8];
        // Without an entropy source the clock still makes replicas' starts differ.
        if ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes).is_err() {
            bytes = crate::clock::unix_millis().to_le_bytes();
        }
        u64::from_le_bytes(bytes)
    });
    start.wrapping_add(NEXT.fetch_add(1, Ordering::Relaxed))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn polls() -> HeldPolls {
        HeldPolls::new(
            prometheus::IntGauge::new("held", "test").unwrap(),
            prometheus::IntGauge::new("hubs", "test").unwrap(),
        )
    }

    #[test]
    fn each_bound_refuses_past_its_limit_and_slots_come_back() {
        let held = polls();
        let limits = PollingConfig {
            max_held_per_conversation: 2,
            max_held_per_ip: 3,
            max_held: 4,
            ..PollingConfig::default()
        };
        let bot: Arc<str> = Arc::from("default");
        let a = ConversationId::parse("a").unwrap();
        let b = ConversationId::parse("b").unwrap();
        let c = ConversationId::parse("c").unwrap();
        let one: IpAddr = "127.0.0.1".parse().unwrap();
        let two: IpAddr = "127.0.0.2".parse().unwrap();
        let first = held.hold(&limits, &bot, &a, one).unwrap();
        let _second = held.hold(&limits, &bot, &a, one).unwrap();
        assert_eq!(
            held.hold(&limits, &bot, &a, two).err(),
            Some(HoldRefused::Conversation)
        );
        let _third = held.hold(&limits, &bot, &b, one).unwrap();
        assert_eq!(
            held.hold(&limits, &bot, &c, one).err(),
            Some(HoldRefused::Ip)
        );
        let _fourth = held.hold(&limits, &bot, &c, two).unwrap();
        assert_eq!(
            held.hold(&limits, &bot, &c, two).err(),
            Some(HoldRefused::Total)
        );
        assert_eq!(held.held(), 4);
        drop(first);
        assert_eq!(held.held(), 3);
        let _again = held.hold(&limits, &bot, &a, two).unwrap();
        assert_eq!(held.held(), 4);
    }

    #[test]
    fn hubs_are_bounded_and_returned() {
        let held = polls();
        let first = held.open_hub(1).unwrap();
        assert!(held.open_hub(1).is_none());
        drop(first);
        assert!(held.open_hub(1).is_some());
    }

    #[test]
    fn nonces_differ() {
        assert_ne!(hub_nonce(), hub_nonce());
    }
}
