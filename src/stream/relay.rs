//! The hub's upstream task: read frames through the tracker into the hub, keep the socket
//! alive, and resume at the last watermark whenever it drops.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;

use super::websocket::close_frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use super::backoff;
use super::deliver::{Screen, relay_page, relay_screened, relay_text, screen_for};
use super::hub::Hub;
use super::link::{self, DialError, FetchError, ResumeEnd, UpstreamSocket};
use super::tracker::Tracker;
use super::upstream_socket::ReadError;
use super::ws_frames::{Incoming, Violation};
use crate::gateway::Gateway;

/// What the hub's first upstream connection should do.
pub struct FirstLink {
    /// The upstream stream URL sealed in the creating client's ticket.
    pub stream_url: Option<String>,
    pub watermark: Option<Arc<str>>,
    /// The ticket came from start-conversation (see [`crate::seal::StreamTicket::from_start`]).
    pub from_start: bool,
    /// The conversation's user (bound in the ticket): the activity policy screens what is
    /// not theirs.
    pub user: Arc<str>,
}

enum PumpEnd {
    /// Closed, errored, or went silent: resume. `healthy` when the socket relayed a frame or
    /// stayed up for [`STABLE_LINK`], which ends a run of failures.
    Dropped { why: &'static str, healthy: bool },
    /// Direct Line closed it with `collision`: another socket (another replica's hub) took
    /// the conversation's stream.
    Collision,
    /// No client for the linger time.
    Idle,
    /// The hub was closed (drain).
    Stopped,
}

/// A socket up this long before it dropped was working: the next resume starts a fresh
/// backoff and budget. Shorter-lived sockets that relayed nothing (a frame the gateway cannot
/// read, an upstream that accepts and hangs up) continue one run of failures, so they back
/// off and spend one resume budget instead of redialling forever.
const STABLE_LINK: Duration = Duration::from_secs(10);

/// Frame-too-large drops in a row, with nothing relayed between them, after which the
/// upstream is taken to hold a frame this gateway will never read: clients are closed with
/// 1009 rather than waiting out the resume budget.
const POISON_DROPS: u32 = 2;

/// One run of failed upstream connections: its backoff and its share of the resume budget.
struct FailureRun {
    started: Instant,
    attempt: u32,
    too_large: u32,
}

impl FailureRun {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            attempt: 0,
            too_large: 0,
        }
    }
}

pub async fn run(gateway: Arc<Gateway>, hub: Arc<Hub>, first: FirstLink) {
    let delivered_ids = gateway.live().config.stream.delivered_ids;
    let mut tracker = Tracker::new(delivered_ids, first.watermark.clone());
    let mut pending_url = first.stream_url.clone();
    let mut dropped_at: Option<Instant> = None;
    let mut run = FailureRun::new();
    // Learnt from the first pong: only an upstream known to answer pings is judged by them.
    let mut answers_pings = false;
    // Collisions this hub has had: each doubles its wait before taking the stream back.
    let mut collisions: u32 = 0;
    let mut shared: Option<ResumeEnd> = None;
    gateway.metrics.hubs.inc();
    let secretless = gateway
        .live()
        .bot(&hub.bot)
        .is_some_and(|bot| bot.secret.is_none());
    if secretless {
        tokio::spawn(super::keeper::keep_token_alive(
            gateway.clone(),
            Arc::downgrade(&hub),
        ));
    }
    if !first.from_start
        && let Some(watermark) = first.watermark.as_deref()
        && gateway.live().config.stream.guard_against_replays
    {
        Box::pin(seed_history(&gateway, &hub, &mut tracker, watermark)).await;
    }
    loop {
        // Cold paths (dial, resume) are boxed: inline they would make every idle hub's
        // task as large as a TLS handshake future (about 12 KiB, measured with massif).
        let first_try = match pending_url.take() {
            Some(url) => {
                let socket = Box::pin(link::dial(&gateway, &hub.bot, &url))
                    .await
                    .ok()
                    .map(Box::new);
                if socket.is_none() && first.from_start && tracker.watermark().is_none() {
                    // A reconnect without a watermark would replay only what comes after it,
                    // losing what was sent between start and now: fetch the history first.
                    Box::pin(backfill(&gateway, &hub, &mut tracker, &first.user)).await;
                }
                socket
            }
            None => None,
        };
        let socket = match first_try {
            Some(socket) => socket,
            None => match Box::pin(after_collision_or_resume(
                shared.take(),
                &gateway,
                &hub,
                &tracker,
                &mut run,
            ))
            .await
            {
                ResumeEnd::Connected(socket) => socket,
                ResumeEnd::Gone => {
                    tracing::info!(bot = &*hub.bot, conversation = %hub.conversation, "conversation gone upstream; closing its client sockets");
                    hub.close(close_frame(CloseCode::Normal, "conversation ended"));
                    break;
                }
                ResumeEnd::Exhausted => {
                    tracing::warn!(bot = &*hub.bot, conversation = %hub.conversation, budget = ?gateway.live().config.stream.resume_budget, "upstream resume budget exhausted; closing client sockets with 1011");
                    hub.close(close_frame(
                        CloseCode::Error,
                        "upstream unavailable; reconnect",
                    ));
                    break;
                }
                ResumeEnd::BotRemoved => {
                    hub.close(close_frame(CloseCode::Away, "bot removed"));
                    break;
                }
                ResumeEnd::Idle | ResumeEnd::Stopped => break,
            },
        };
        if let Some(since) = dropped_at.take() {
            gateway
                .metrics
                .resume_duration
                .observe(since.elapsed().as_secs_f64());
            hub.resumes
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        let upstream_sockets = gateway
            .metrics
            .upstream_sockets
            .with_label_values(&[&hub.bot]);
        upstream_sockets.inc();
        gateway
            .metrics
            .upstream_stream_opens
            .with_label_values(&[&hub.bot])
            .inc();
        let screen = screen_for(&gateway, &hub, &first.user);
        let end = pump(
            &gateway,
            &hub,
            &mut tracker,
            socket,
            &mut answers_pings,
            screen.as_ref(),
        )
        .await;
        upstream_sockets.dec();
        match end {
            PumpEnd::Dropped { why, healthy } => {
                gateway
                    .metrics
                    .upstream_stream_drops
                    .with_label_values(&[why, &hub.bot])
                    .inc();
                if healthy {
                    run = FailureRun::new();
                }
                if why == DROP_TOO_LARGE {
                    run.too_large += 1;
                    if run.too_large >= POISON_DROPS {
                        tracing::warn!(bot = &*hub.bot, conversation = %hub.conversation, max_frame = gateway.live().config.stream.max_frame_bytes, "upstream keeps sending a frame over stream.max_frame; closing client sockets with 1009");
                        hub.close(close_frame(
                            CloseCode::Size,
                            "upstream frame larger than the gateway accepts",
                        ));
                        break;
                    }
                }
                tracing::debug!(bot = &*hub.bot, conversation = %hub.conversation, why, "upstream stream dropped; resuming");
                dropped_at = Some(Instant::now());
            }
            PumpEnd::Collision => {
                // Another replica's hub holds the stream now: poll rather than take it
                // straight back (crate::stream::collision).
                gateway
                    .metrics
                    .upstream_stream_collisions
                    .with_label_values(&[&hub.bot])
                    .inc();
                gateway
                    .metrics
                    .upstream_stream_drops
                    .with_label_values(&["collision", &hub.bot])
                    .inc();
                collisions = collisions.saturating_add(1);
                shared = Some(
                    Box::pin(super::collision::share(
                        &gateway,
                        &hub,
                        &mut tracker,
                        collisions,
                        &first.user,
                    ))
                    .await,
                );
            }
            PumpEnd::Idle | PumpEnd::Stopped => break,
        }
    }
    hub.retire();
    gateway.hubs.remove(&hub);
    gateway.metrics.hubs.dec();
}

const DROP_TOO_LARGE: &str = "frame_too_large";

/// Under `stream.chunk_interval`, a relayed interim lets the upstream socket rest for the
/// interval (at most this long): frames arriving meanwhile wait in the kernel and are read
/// together at its end, one read and one wake-up for several interims. No client would
/// get a newer interim of that stream before then anyway; what else comes meanwhile (a
/// final, an ordinary activity, a ping or close from upstream) waits at most as long.
const MAX_READ_DEFERRAL: Duration = Duration::from_secs(1);

/// How often the pump checks liveness and idleness: fine enough for the configured
/// times, coarse enough that ten thousand idle hubs cost few wakeups.
fn check_period(gateway: &Gateway) -> Duration {
    let live = gateway.live();
    let s = &live.config.stream;
    (s.linger / 2)
        .min(s.liveness_timeout / 4)
        .min(s.pong_timeout / 2)
        .clamp(Duration::from_millis(10), Duration::from_secs(5))
}

/// The socket stays boxed: inline it is 1.4 KB (the rustls variant) in every idle hub's task.
async fn pump(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &mut Tracker,
    mut socket: Box<UpstreamSocket>,
    answers_pings: &mut bool,
    screen: Option<&Screen>,
) -> PumpEnd {
    // Copied out: the pump holds no settings handle across its awaits.
    let (keepalive_interval, liveness_timeout, pong_timeout, linger, read_deferral) = {
        let live = gateway.live();
        let s = &live.config.stream;
        (
            s.keepalive_interval,
            s.liveness_timeout,
            s.pong_timeout,
            s.linger,
            s.chunk_interval.min(MAX_READ_DEFERRAL),
        )
    };
    let connected = Instant::now();
    let mut relayed_any = false;
    let dropped = |why: &'static str, relayed_any: bool| PumpEnd::Dropped {
        why,
        healthy: relayed_any || connected.elapsed() >= STABLE_LINK,
    };
    let mut stop = hub.stop_signal();
    if *stop.borrow_and_update() {
        let _ = socket.close().await;
        return PumpEnd::Stopped;
    }
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + keepalive_interval,
        keepalive_interval,
    );
    let mut check = tokio::time::interval(check_period(gateway));
    let mut last_frame = Instant::now();
    // A ping at once: its pong tells whether this upstream answers pings before a stall
    // would need to be judged by them.
    if socket.ping().await.is_err() {
        return dropped("keepalive_failed", relayed_any);
    }
    let mut ping_unanswered_since: Option<Instant> = Some(Instant::now());
    let downstream_bytes = gateway
        .metrics
        .bytes_relayed
        .with_label_values(&["downstream"]);
    // Under `stream.chunk_interval`, after an interim the socket is not read again until
    // this instant (see `MAX_READ_DEFERRAL`).
    let mut read_after: Option<tokio::time::Instant> = None;
    loop {
        tokio::select! {
            message = socket.read(), if read_after.is_none() => {
              let mut message = message;
              loop {
                last_frame = Instant::now();
                let interim = match message {
                    Ok(Incoming::Text(text)) => {
                        downstream_bytes.inc_by(text.len() as u64);
                        relayed_any |= !text.is_empty();
                        match screen {
                            None => relay_text(gateway, hub, tracker, text),
                            // Awaited here: a conversation's later activities wait for this
                            // one's verdict (order holds); other hubs run on their own tasks.
                            // Boxed: inline, the webhook call's future would grow every idle
                            // hub's task, policy or not.
                            Some(screen) => {
                                Box::pin(relay_screened(gateway, hub, tracker, screen, text)).await
                            }
                        }
                    }
                    Ok(Incoming::Ping(payload)) => {
                        if socket.pong(payload).await.is_err() {
                            return dropped("error", relayed_any);
                        }
                        false
                    }
                    Ok(Incoming::Pong) => {
                        *answers_pings = true;
                        ping_unanswered_since = None;
                        false
                    }
                    Ok(Incoming::Close(frame)) => {
                        if let Some(frame) = &frame {
                            tracing::debug!(bot = &*hub.bot, conversation = %hub.conversation, code = u16::from(frame.code), reason = %frame.reason, "upstream closed the stream");
                        }
                        if super::collision::is_collision(frame.as_ref()) {
                            return PumpEnd::Collision;
                        }
                        return dropped("closed", relayed_any);
                    }
                    Ok(Incoming::Binary) => false,
                    Err(ReadError::Violation(Violation::TooLarge)) => {
                        // Redialling from the same watermark brings the same frame back.
                        return dropped(DROP_TOO_LARGE, relayed_any);
                    }
                    Err(ReadError::Violation(violation)) => {
                        tracing::debug!(bot = &*hub.bot, conversation = %hub.conversation, ?violation, "upstream broke the WebSocket protocol");
                        return dropped("error", relayed_any);
                    }
                    Err(ReadError::Gone) => return dropped("error", relayed_any),
                };
                if !interim || read_deferral.is_zero() {
                    break;
                }
                // What the kernel already holds is read now (a backlog never builds up
                // behind the pause); once it holds nothing, the socket rests.
                match socket.read().now_or_never() {
                    Some(next) => message = next,
                    None => {
                        read_after = Some(tokio::time::Instant::now() + read_deferral);
                        break;
                    }
                }
              }
            }
            // An async block, so that no timer is set up while reads do not rest: `select!`
            // builds every branch's future on each turn, disabled or not.
            _ = async {
                if let Some(at) = read_after {
                    tokio::time::sleep_until(at).await;
                }
            }, if read_after.is_some() => {
                read_after = None;
                // Silence is judged while the socket is read: the rest does not count (an
                // interim just came, so the upstream was alive when it began).
                last_frame = Instant::now();
                if ping_unanswered_since.is_some() {
                    ping_unanswered_since = Some(Instant::now());
                }
            }
            _ = keepalive.tick() => {
                // An empty text frame is what Direct Line documents and DLJS sends; a ping
                // also draws a pong from servers that never send frames of their own.
                if socket.keepalive().await.is_err() {
                    return dropped("keepalive_failed", relayed_any);
                }
                ping_unanswered_since.get_or_insert_with(Instant::now);
            }
            // While reads rest, frames (and pongs) wait unread in the kernel: no silence.
            _ = check.tick() => {
                if read_after.is_none() && last_frame.elapsed() >= liveness_timeout {
                    return dropped("silent", relayed_any);
                }
                if *answers_pings
                    && read_after.is_none()
                    && ping_unanswered_since.is_some_and(|since| since.elapsed() >= pong_timeout)
                {
                    return dropped("no_pong", relayed_any);
                }
                if hub.idle_for(linger) {
                    let _ = socket.close().await;
                    return PumpEnd::Idle;
                }
            }
            _ = stop.changed() => {
                let _ = socket.close().await;
                return PumpEnd::Stopped;
            }
        }
    }
}

/// Feeds a new conversation's whole history, by REST, through the tracker into the hub.
/// A hub created for a client resuming at `watermark` has seen nothing of the conversation,
/// so a reconnect that replays the whole history (the 2021 service regression) would reach
/// the client as new. Watermarks are opaque, so the activities at or before it are learnt by
/// REST: the whole history first, then what comes after the watermark; the difference is
/// what the client already has. In that order a new activity arriving between the two reads
/// is never mistaken for an old one.
async fn seed_history(gateway: &Gateway, hub: &Hub, tracker: &mut Tracker, watermark: &str) {
    let upstream_token = hub.upstream_token();
    let all = link::catch_up(gateway, &hub.bot, &hub.conversation, None, &upstream_token).await;
    let after = link::catch_up(
        gateway,
        &hub.bot,
        &hub.conversation,
        Some(watermark),
        &upstream_token,
    )
    .await;
    match (all, after) {
        (Ok((_, all)), Ok((_, after))) => {
            for id in all.into_iter().filter(|id| !after.contains(id)) {
                tracker.mark_delivered(id);
            }
        }
        (Err(error), _) | (_, Err(error)) => {
            tracing::debug!(bot = &*hub.bot, conversation = %hub.conversation, ?error, "history for replay guard unavailable")
        }
    }
}

async fn backfill(gateway: &Gateway, hub: &Hub, tracker: &mut Tracker, user: &Arc<str>) {
    let upstream_token = hub.upstream_token();
    let screen = screen_for(gateway, hub, user);
    match link::catch_up(gateway, &hub.bot, &hub.conversation, None, &upstream_token).await {
        Ok((pages, _)) => {
            for page in pages {
                relay_page(gateway, hub, tracker, screen.as_ref(), page).await;
            }
        }
        Err(error) => {
            tracing::debug!(bot = &*hub.bot, conversation = %hub.conversation, ?error, "history backfill failed")
        }
    }
}

/// How a polling spell after a collision ended (the socket taken back, or the hub's end),
/// or else a resume after a drop.
async fn after_collision_or_resume(
    shared: Option<ResumeEnd>,
    gateway: &Gateway,
    hub: &Hub,
    tracker: &Tracker,
    run: &mut FailureRun,
) -> ResumeEnd {
    match shared {
        Some(end) => end,
        None => resume(gateway, hub, tracker, run).await,
    }
}

/// Reconnect from the tracker's watermark, traced (while tracing is on) as one span from
/// the drop to its end, with the reconnect GETs under it.
async fn resume(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &Tracker,
    run: &mut FailureRun,
) -> ResumeEnd {
    let Some(span) = hub
        .trace
        .get()
        .and_then(|origin| origin.upstream_resume(&hub.bot, &hub.conversation))
    else {
        return reconnect(gateway, hub, tracker, run, None).await;
    };
    let end = reconnect(gateway, hub, tracker, run, Some(span.parent())).await;
    span.finish(
        end.label(),
        &[("directline.attempts", i64::from(run.attempt))],
    );
    end
}

impl ResumeEnd {
    fn label(&self) -> &'static str {
        match self {
            ResumeEnd::Connected(_) => "ok",
            ResumeEnd::Gone => "gone",
            ResumeEnd::BotRemoved => "bot_removed",
            ResumeEnd::Exhausted => "exhausted",
            ResumeEnd::Idle => "idle",
            ResumeEnd::Stopped => "stopped",
        }
    }
}

/// Reconnect from the tracker's watermark with full-jitter backoff inside the budget.
async fn reconnect(
    gateway: &Gateway,
    hub: &Hub,
    tracker: &Tracker,
    run: &mut FailureRun,
    trace: Option<crate::telemetry::Parent>,
) -> ResumeEnd {
    // Loaded once per resume: a reload during a drop storm applies from the next one.
    let live = gateway.live_owned();
    let config = &live.config.stream;
    let started = run.started;
    let mut stop = hub.stop_signal();
    let attempt = &mut run.attempt;
    let mut refetched_stale_url = false;
    let reconnects = |result: &str| {
        gateway
            .metrics
            .upstream_reconnects
            .with_label_values(&[result, &hub.bot])
            .inc();
    };
    loop {
        if *stop.borrow_and_update() {
            return ResumeEnd::Stopped;
        }
        if hub.idle_for(config.linger) {
            return ResumeEnd::Idle;
        }
        let wait = backoff::delay(
            *attempt,
            config.backoff_base,
            config.backoff_max,
            fastrand::f64(),
        );
        if started.elapsed() + wait > config.resume_budget {
            reconnects("exhausted");
            return ResumeEnd::Exhausted;
        }
        if !wait.is_zero() {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = stop.changed() => return ResumeEnd::Stopped,
            }
        }
        *attempt += 1;
        let watermark = tracker.watermark().map(|w| &**w);
        // Read per attempt: a client's tokens/refresh may have brought a fresher token.
        let mut upstream_token = hub.upstream_token().to_string();
        let fetched = link::fetch_stream_url(
            gateway,
            &hub.bot,
            &hub.conversation,
            watermark,
            &mut upstream_token,
            trace.clone(),
        )
        .await;
        hub.set_upstream_token(&upstream_token);
        let url = match fetched {
            Ok(url) => url,
            Err(FetchError::Gone) => {
                reconnects("gone");
                return ResumeEnd::Gone;
            }
            Err(FetchError::BotRemoved) => return ResumeEnd::BotRemoved,
            Err(FetchError::Retry) => {
                reconnects("retry");
                continue;
            }
        };
        match link::dial(gateway, &hub.bot, &url).await {
            Ok(socket) => {
                reconnects("ok");
                return ResumeEnd::Connected(Box::new(socket));
            }
            Err(DialError::Forbidden) if !refetched_stale_url => {
                // A stale URL: fetch a fresh one at once, but only once per resume so a
                // server that always refuses cannot turn this into a busy loop.
                reconnects("retry");
                refetched_stale_url = true;
                *attempt = attempt.saturating_sub(1);
            }
            Err(DialError::Forbidden | DialError::Failed) => {
                reconnects("retry");
            }
        }
    }
}
