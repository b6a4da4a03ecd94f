//! The replica's live hubs, by bot and conversation, and the client socket slots of every
//! stream route.

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::hub::{Eviction, Hub, RingBudget, RingLimits};
use super::websocket::close_frame;
use crate::config::StreamConfig;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::metrics::Metrics;

/// A conversation of one bot: two upstreams may hand out equal conversation ids.
type HubKey = (Arc<str>, ConversationId);

/// The live hubs of this replica, by bot and conversation.
pub struct Hubs {
    map: DashMap<HubKey, Arc<Hub>>,
    /// Client sockets per conversation on every stream route (classic and multimodal),
    /// reserved before the 101 is sent so concurrent upgrades cannot pass the cap together.
    sockets: Arc<DashMap<HubKey, usize>>,
    ring_budget: Arc<RingBudget>,
}

/// One client socket's place under `stream.max_sockets_per_conversation`, given back when
/// the socket's task ends (or its upgrade fails).
pub struct SocketSlot {
    sockets: Arc<DashMap<HubKey, usize>>,
    key: HubKey,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let sockets = &self.sockets;
        if let Some(mut count) = sockets.get_mut(&self.key) {
            *count = count.saturating_sub(1);
        }
        sockets.remove_if(&self.key, |_, count| *count == 0);
    }
}

impl Hubs {
    pub fn new(metrics: &Metrics) -> Self {
        let evictions = Eviction::ALL.map(|why| {
            metrics
                .stream_buffer_evictions
                .with_label_values(&[why.as_str()])
        });
        Self {
            map: DashMap::new(),
            sockets: Arc::default(),
            ring_budget: Arc::new(RingBudget::new(
                StreamConfig::default().buffer_total_bytes,
                metrics.stream_buffer_bytes.clone(),
                evictions,
            )),
        }
    }

    /// Client sockets now open (or being upgraded) on `conversation` on this replica.
    pub fn client_count(&self, bot: &Arc<str>, conversation: &ConversationId) -> usize {
        self.sockets
            .get(&(bot.clone(), conversation.clone()))
            .map_or(0, |count| *count)
    }

    /// Bytes held by every hub's replay ring on this replica.
    pub fn ring_bytes(&self) -> usize {
        self.ring_budget.used()
    }

    /// Takes a socket slot for `conversation`, or refuses when `max` are taken.
    pub fn reserve_socket(
        &self,
        bot: &Arc<str>,
        conversation: &ConversationId,
        max: usize,
    ) -> Result<SocketSlot, GatewayError> {
        let key = (bot.clone(), conversation.clone());
        let mut count = self.sockets.entry(key.clone()).or_insert(0);
        if *count >= max {
            return Err(GatewayError::TooManySockets);
        }
        *count += 1;
        drop(count);
        Ok(SocketSlot {
            sockets: self.sockets.clone(),
            key,
        })
    }

    /// Closes every client socket with 1001 so clients resume through another replica, one
    /// hub after another evenly over `spread` (all at once for zero), so the replicas they
    /// go to are not hit by every reconnect in the same instant. Returns the client sockets
    /// it closed.
    pub async fn close_all_for_drain(&self, spread: Duration) -> usize {
        let hubs: Vec<Arc<Hub>> = self.map.iter().map(|entry| entry.value().clone()).collect();
        // The DashMap guards are gone: the sleeps below hold none.
        let started = tokio::time::Instant::now();
        let step = spread.checked_div(hubs.len() as u32).unwrap_or_default();
        let mut closed = 0;
        for (index, hub) in hubs.iter().enumerate() {
            if !step.is_zero() {
                tokio::time::sleep_until(started + step * index as u32).await;
            }
            closed += hub.clients();
            hub.close(close_frame(
                CloseCode::Away,
                "gateway restarting; reconnect",
            ));
        }
        closed
    }

    /// Closes the sockets of bots a reload removed with 1001; other bots' sockets stay.
    pub fn close_removed_bots(&self, still_served: impl Fn(&str) -> bool) {
        let hubs: Vec<Arc<Hub>> = self
            .map
            .iter()
            .filter(|entry| !still_served(&entry.key().0))
            .map(|entry| entry.value().clone())
            .collect();
        for hub in hubs {
            hub.close(close_frame(CloseCode::Away, "bot removed"));
        }
    }

    /// A client refreshed its token: the conversation's hub on this replica reconnects with
    /// the fresh upstream token from now on (it matters under enhanced authentication).
    pub fn adopt_upstream_token(
        &self,
        bot: &Arc<str>,
        conversation: &ConversationId,
        upstream_token: &str,
    ) {
        if let Some(hub) = self
            .map
            .get(&(bot.clone(), conversation.clone()))
            .map(|entry| entry.value().clone())
        {
            hub.set_upstream_token(upstream_token);
        }
    }

    /// The upstream token the conversation's hub will reconnect with, if it has a hub here.
    pub fn upstream_token(
        &self,
        bot: &Arc<str>,
        conversation: &ConversationId,
    ) -> Option<Arc<str>> {
        self.map
            .get(&(bot.clone(), conversation.clone()))
            .map(|entry| entry.value().upstream_token())
    }

    /// The conversation's live hub on this replica, if it has one.
    pub fn get(&self, bot: &Arc<str>, conversation: &ConversationId) -> Option<Arc<Hub>> {
        self.map
            .get(&(bot.clone(), conversation.clone()))
            .map(|entry| entry.value().clone())
            .filter(|hub| !hub.is_retired())
    }

    pub fn remove(&self, hub: &Arc<Hub>) {
        self.map
            .remove_if(&(hub.bot.clone(), hub.conversation.clone()), |_, live| {
                Arc::ptr_eq(live, hub)
            });
    }

    /// The conversation's hub, creating it from `ticket`'s watermark and upstream token
    /// when there is none (or only a retired one). Returns whether it was created: the
    /// caller then starts the hub's upstream task.
    pub fn get_or_create(
        &self,
        metrics: &Metrics,
        stream: &StreamConfig,
        bot: &Arc<str>,
        conversation: &ConversationId,
        watermark: Option<&Arc<str>>,
        upstream_token: &str,
    ) -> (Arc<Hub>, bool) {
        self.ring_budget.set_limit(stream.buffer_total_bytes);
        let limits = RingLimits {
            frames: stream.buffer_frames,
            bytes: stream.buffer_bytes,
        };
        let new_hub = || {
            Arc::new(Hub::new(
                bot.clone(),
                conversation.clone(),
                metrics.activities_relayed.with_label_values(&[bot]),
                limits,
                self.ring_budget.clone(),
                watermark.cloned(),
                upstream_token,
            ))
        };
        let mut created = false;
        let hub = {
            let mut entry = self
                .map
                .entry((bot.clone(), conversation.clone()))
                .or_insert_with(|| {
                    created = true;
                    new_hub()
                });
            if !created && entry.is_retired() {
                created = true;
                *entry = new_hub();
            }
            entry.clone()
            // The DashMap guard ends here, before anything awaits.
        };
        (hub, created)
    }
}
