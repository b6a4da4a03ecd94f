//! A hub that shares its conversation with another replica's hub: Direct Line keeps one
//! stream per conversation and closes the older socket with 1000 `collision` when another
//! opens (PROTOCOL §5.4). Taking the stream straight back would close the other replica's
//! socket, which would take it back in turn, and so on. Instead the hub that lost it serves
//! its clients by polling `GET …/activities?watermark=` through the same tracker (same
//! dedupe, same watermark) and tries the socket again after a backoff that doubles with
//! each collision the hub has seen, so Direct Line sees a bounded number of stream opens
//! (ARCHITECTURE §15).
//!
//! What it cannot see: whether the other replica's hub is still there. Its socket closing
//! is invisible from here, so a hub left alone takes the stream back at its next retry,
//! within `stream.collision_retry_max`; its clients are served by polling meanwhile, a
//! poll interval behind. Typing activities (and streamed interims) are not delivered by
//! REST polling: clients of a polling hub do not see them until the socket is back.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::backoff;
use super::deliver::{relay_page, screen_for};
use super::hub::Hub;
use super::link::{self, FetchError, ResumeEnd, UpstreamSocket};
use super::tracker::Tracker;
use crate::gateway::Gateway;

/// The close reason Direct Line gives the socket another one replaced.
const COLLISION_REASON: &str = "collision";

/// Whether an upstream close frame says another socket took the conversation's stream.
pub(super) fn is_collision(frame: Option<&CloseFrame>) -> bool {
    frame.is_some_and(|frame| {
        frame.code == CloseCode::Normal && frame.reason.as_str() == COLLISION_REASON
    })
}

/// How long a hub that has now lost its socket `collisions` times polls before it tries
/// the socket again: `collision_retry_base · 2^(collisions-1)`, at most
/// `collision_retry_max`, less up to half at random so two replicas' retries drift apart.
pub(super) fn retry_after(
    collisions: u32,
    base: Duration,
    max: Duration,
    random_unit: f64,
) -> Duration {
    backoff::delay(
        collisions.max(1),
        base,
        max,
        0.5 + 0.5 * random_unit.clamp(0.0, 1.0),
    )
}

/// Counts the hub as polling while it lives.
struct Polling<'a>(&'a Gateway);

impl Drop for Polling<'_> {
    fn drop(&mut self) {
        self.0.metrics.polling_hubs.dec();
    }
}

/// Serves the hub's clients by polling until it has the socket back (or ends like a
/// resume does: conversation gone, bot removed, Direct Line unreachable for the whole
/// resume budget, no client for the linger time, hub stopped).
pub(super) async fn share(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &mut Tracker,
    collisions: u32,
    user: &Arc<str>,
) -> ResumeEnd {
    // Polled pages go through the bot's policy as stream frames do.
    let screen = screen_for(gateway, hub, user);
    // Copied out: no settings handle is held across the awaits below.
    let (poll_every, retry_wait, linger, budget) = {
        let live = gateway.live();
        let s = &live.config.stream;
        (
            s.collision_poll_interval,
            retry_after(
                collisions,
                s.collision_retry_base,
                s.collision_retry_max,
                fastrand::f64(),
            ),
            s.linger,
            s.resume_budget,
        )
    };
    gateway.metrics.polling_hubs.inc();
    let _polling = Polling(gateway);
    let polling_seconds = gateway
        .metrics
        .upstream_polling_seconds
        .with_label_values(&[&hub.bot]);
    tracing::debug!(bot = &*hub.bot, conversation = %hub.conversation, collisions, retry_in = ?retry_wait, "upstream stream taken by another socket; polling");
    let mut counted_to = Instant::now();
    let mut retry_at = counted_to + retry_wait;
    let mut failing_since: Option<Instant> = None;
    let mut stop = hub.stop_signal();
    let mut tick = tokio::time::interval(poll_every);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let end = loop {
        if *stop.borrow_and_update() {
            break ResumeEnd::Stopped;
        }
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => break ResumeEnd::Stopped,
        }
        let now = Instant::now();
        polling_seconds.inc_by(now.duration_since(counted_to).as_secs_f64());
        counted_to = now;
        if hub.idle_for(linger) {
            break ResumeEnd::Idle;
        }
        let upstream_token = hub.upstream_token();
        let watermark = tracker.watermark().map(|w| &**w);
        match link::poll(
            gateway,
            &hub.bot,
            &hub.conversation,
            watermark,
            &upstream_token,
        )
        .await
        {
            Ok(page) => {
                failing_since = None;
                if let Some(page) = page {
                    relay_page(gateway, hub, tracker, screen.as_ref(), page).await;
                }
            }
            Err(FetchError::Gone) => break ResumeEnd::Gone,
            Err(FetchError::BotRemoved) => break ResumeEnd::BotRemoved,
            Err(FetchError::Retry) => {
                if failing_since.get_or_insert(now).elapsed() >= budget {
                    break ResumeEnd::Exhausted;
                }
            }
        }
        if Instant::now() >= retry_at {
            match Box::pin(take_back(gateway, hub, tracker)).await {
                Ok(Some(socket)) => break ResumeEnd::Connected(socket),
                Ok(None) => retry_at = Instant::now() + retry_wait,
                Err(end) => break end,
            }
        }
    };
    polling_seconds.inc_by(counted_to.elapsed().as_secs_f64());
    end
}

/// One try at the socket, from the tracker's watermark: `None` when it failed (polling
/// goes on and tries again later).
async fn take_back(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &Tracker,
) -> Result<Option<Box<UpstreamSocket>>, ResumeEnd> {
    let reconnects = |result: &str| {
        gateway
            .metrics
            .upstream_reconnects
            .with_label_values(&[result, &hub.bot])
            .inc();
    };
    let mut upstream_token = hub.upstream_token().to_string();
    let fetched = link::fetch_stream_url(
        gateway,
        &hub.bot,
        &hub.conversation,
        tracker.watermark().map(|w| &**w),
        &mut upstream_token,
        None,
    )
    .await;
    hub.set_upstream_token(&upstream_token);
    let url = match fetched {
        Ok(url) => url,
        Err(FetchError::Gone) => {
            reconnects("gone");
            return Err(ResumeEnd::Gone);
        }
        Err(FetchError::BotRemoved) => return Err(ResumeEnd::BotRemoved),
        Err(FetchError::Retry) => {
            reconnects("retry");
            return Ok(None);
        }
    };
    match link::dial(gateway, &hub.bot, &url).await {
        Ok(socket) => {
            reconnects("ok");
            Ok(Some(Box::new(socket)))
        }
        Err(_) => {
            reconnects("retry");
            Ok(None)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_secs(5);
    const MAX: Duration = Duration::from_secs(60);

    #[test]
    fn retry_waits_grow_with_collisions_and_stay_within_bounds() {
        for collisions in 1..40 {
            let ceiling = BASE.saturating_mul(1 << (collisions - 1).min(30)).min(MAX);
            let low = retry_after(collisions, BASE, MAX, 0.0);
            let high = retry_after(collisions, BASE, MAX, 1.0);
            assert_eq!(high, ceiling, "collision {collisions}");
            assert_eq!(low, ceiling / 2, "collision {collisions}");
        }
        assert_eq!(retry_after(0, BASE, MAX, 1.0), BASE);
    }

    #[test]
    fn only_a_normal_close_with_reason_collision_is_one() {
        let frame = |code, reason: &str| CloseFrame {
            code,
            reason: reason.to_owned().into(),
        };
        assert!(is_collision(Some(&frame(CloseCode::Normal, "collision"))));
        assert!(!is_collision(Some(&frame(CloseCode::Normal, "bye"))));
        assert!(!is_collision(Some(&frame(CloseCode::Away, "collision"))));
        assert!(!is_collision(None));
    }
}
