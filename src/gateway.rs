//! The gateway's shared state ([`Gateway`]): the long-lived parts every request and stream
//! shares (metrics, the stream's hubs and held polls, rate buckets, drain) and the settings
//! snapshot a reload swaps ([`Live`]). It sits in the stream's layer (ARCHITECTURE §9): it
//! holds the stream's registries, and the stream files take it as their context.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};

use crate::endpoint::ConversationId;
use crate::live::{Live, LiveSettings};
use crate::metrics::Metrics;
use crate::ratelimit::Limiter;
use crate::stream::registry::Hubs;
use crate::telemetry::Telemetry;

pub struct Gateway {
    live: ArcSwap<Live>,
    pub metrics: Arc<Metrics>,
    pub hubs: Hubs,
    /// Held polls and the hubs they opened (`[polling]`).
    pub polls: crate::stream::held::HeldPolls,
    /// tokens/generate and conversation starts, per bot and client IP.
    pub session_limits: Limiter<(Arc<str>, IpAddr)>,
    /// POST activities and uploads, per bot and conversation.
    pub activity_limits: Limiter<(Arc<str>, ConversationId)>,
    /// tokens/refresh per bot and conversation, per bot and client IP, and the upstream
    /// refresh each conversation shares (`refresh_share`).
    pub refresh_limits: Limiter<(Arc<str>, String)>,
    pub refresh_ip_limits: Limiter<(Arc<str>, IpAddr)>,
    pub refreshes: crate::refresh_share::RefreshShare,
    draining: AtomicBool,
    /// The tracer while `[tracing]` is on (fixed at start; a reload that changes it is
    /// refused); `None` costs each request one branch.
    pub telemetry: Option<Arc<Telemetry>>,
    /// The conversation record while `[record]` is set (fixed at start); `None` costs a
    /// request or relayed frame one branch.
    pub record: Option<Arc<crate::record::Recorder>>,
}

impl Gateway {
    pub fn new(
        live: Live,
        metrics: Arc<Metrics>,
        record: Option<Arc<crate::record::Recorder>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            record,
            telemetry: Telemetry::start(live.config.tracing.as_ref(), &metrics),
            hubs: Hubs::new(&metrics),
            polls: crate::stream::held::HeldPolls::new(
                metrics.polls_held.clone(),
                metrics.poll_hubs.clone(),
            ),
            session_limits: Limiter::default(),
            activity_limits: Limiter::default(),
            refresh_limits: Limiter::default(),
            refresh_ip_limits: Limiter::default(),
            refreshes: Default::default(),
            live: ArcSwap::from_pointee(live),
            metrics,
            draining: AtomicBool::new(false),
        })
    }

    /// The current settings. Cheap (no reference-count traffic on the hot path); hold it for
    /// one request or one reconnect, not for a socket's lifetime, so reloads reach it.
    pub fn live(&self) -> Guard<Arc<Live>> {
        self.live.load()
    }

    /// The current settings as an owned handle, for work that outlives a borrow.
    pub fn live_owned(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Installs reloaded settings; requests already running finish with the ones they loaded.
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    /// The bots whose secret Direct Line refuses now (`/readyz` answers 503 while any does).
    pub fn refused_credentials(&self) -> Vec<Arc<str>> {
        self.live()
            .bots
            .iter()
            .filter(|bot| bot.credential.is_refused())
            .map(|bot| bot.name.clone())
            .collect()
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Readiness goes false and new requests get 503; open client sockets go on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The stream half of a drain (ARCHITECTURE §5): open client sockets are served for
    /// `stream.drain_period` or until they have all gone, then the rest are closed with 1001
    /// over `stream.drain_spread`. Returns once their close frames had a moment to leave.
    pub async fn drain_streams(&self) {
        let stream = self.live().config.stream.clone();
        let deadline = tokio::time::Instant::now() + stream.drain_period;
        // Polled: a socket's end is not an event anyone waits on, and a drain is rare.
        while self.metrics.open_client_sockets() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.metrics.open_client_sockets();
        if left > 0 {
            tracing::info!(
                sockets = left,
                spread_ms = stream.drain_spread.as_millis() as u64,
                "drain period over; closing the remaining client sockets with 1001"
            );
        }
        let closed = self.hubs.close_all_for_drain(stream.drain_spread).await;
        self.metrics.drain_closed.inc_by(closed as u64);
        // Each client task sends its close frame; give them a bounded moment to do so.
        let flushed = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.metrics.open_client_sockets() > 0 && tokio::time::Instant::now() < flushed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Forgets rate buckets that have refilled; called periodically.
    pub fn sweep_limits(&self) {
        let live = self.live();
        let now = Instant::now();
        self.session_limits.sweep(now, |(bot, _)| {
            live.bot(bot).map(|b| b.settings.rate_limits.sessions)
        });
        self.activity_limits.sweep(now, |(bot, _)| {
            live.bot(bot).map(|b| b.settings.rate_limits.activities)
        });
        self.refresh_limits.sweep(now, |(bot, _)| {
            live.bot(bot).map(|b| b.settings.rate_limits.refresh)
        });
        self.refresh_ip_limits.sweep(now, |(bot, _)| {
            live.bot(bot).map(|b| b.settings.rate_limits.refresh_per_ip)
        });
        self.refreshes.sweep(crate::clock::unix_seconds());
    }
}

/// What the upstream layer's background tasks (secret checks, Copilot Studio discovery) read
/// of the gateway, without naming it.
impl LiveSettings for Gateway {
    fn live(&self) -> Guard<Arc<Live>> {
        Gateway::live(self)
    }

    fn live_owned(&self) -> Arc<Live> {
        Gateway::live_owned(self)
    }

    fn metrics(&self) -> &crate::metrics::Metrics {
        &self.metrics
    }

    fn is_draining(&self) -> bool {
        Gateway::is_draining(self)
    }
}
