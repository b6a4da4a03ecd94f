//! One client WebSocket: replay from its cursor, then live frames; absorb its keepalives.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::SinkExt;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::error::{CapacityError, Error as WsError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::chunks::{ClientStreams, Send};
pub use super::client_socket::ClientSocket;
use super::hub::{Cursor, Event, Hub, Pending, filtered_text};
use super::tracker::StreamMark;
use super::websocket::close_frame;
use super::ws_frames::{Incoming, ReadError, Violation};
use crate::gateway::Gateway;

/// How long a closing socket gets to take its close frame: a client that stopped reading
/// will not take it at all, and must not hold its socket for the whole write timeout.
pub(crate) const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// A frame a client must not send, as the close frame RFC 6455 §7.4.1 gives it and the
/// `client_frames_refused_total` reason it is counted under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refusal {
    pub code: CloseCode,
    pub reason: &'static str,
    pub metric: &'static str,
}

impl Refusal {
    pub const TOO_LARGE: Refusal = Refusal {
        code: CloseCode::Size,
        reason: "frame larger than the gateway accepts",
        metric: "too_large",
    };
    pub const BAD_UTF8: Refusal = Refusal {
        code: CloseCode::Invalid,
        reason: "text frame is not valid UTF-8",
        metric: "bad_utf8",
    };
    pub const PROTOCOL: Refusal = Refusal {
        code: CloseCode::Protocol,
        reason: "WebSocket protocol violation",
        metric: "protocol",
    };

    /// The refusal for what the frame reader found wrong.
    pub fn of_violation(violation: Violation) -> Refusal {
        match violation {
            Violation::TooLarge => Self::TOO_LARGE,
            Violation::BadUtf8 => Self::BAD_UTF8,
            Violation::Protocol(_) => Self::PROTOCOL,
        }
    }

    /// The refusal for a tungstenite read error (a multimodal socket), or `None` when the
    /// connection itself is gone (nothing can be told to the client then).
    pub fn of(error: &WsError) -> Option<Refusal> {
        match error {
            WsError::Capacity(CapacityError::MessageTooLong { .. }) => Some(Self::TOO_LARGE),
            WsError::Capacity(_) => Some(Self::PROTOCOL),
            WsError::Utf8(_) => Some(Self::BAD_UTF8),
            WsError::Protocol(_) | WsError::AttackAttempt => Some(Self::PROTOCOL),
            _ => None,
        }
    }

    fn count(self, gateway: &Gateway, bot: &str) {
        gateway
            .metrics
            .client_frames_refused
            .with_label_values(&[self.metric, bot])
            .inc();
    }

    /// Counts the refusal and tries, briefly, to tell the client (a tungstenite sink: a
    /// multimodal socket).
    pub async fn close<S>(self, gateway: &Gateway, bot: &str, sink: &mut S)
    where
        S: futures_util::Sink<Message> + Unpin,
    {
        self.count(gateway, bot);
        let frame = close_frame(self.code, self.reason);
        let _ = tokio::time::timeout(CLOSE_GRACE, sink.send(Message::Close(Some(frame)))).await;
    }

    /// Counts the refusal and tries, briefly, to tell a classic client.
    pub async fn close_client(self, gateway: &Gateway, bot: &str, socket: &mut ClientSocket) {
        self.count(gateway, bot);
        let frame = close_frame(self.code, self.reason);
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(Some(&frame))).await;
    }
}

/// What a write watched by [`write_watching_lag`] came to.
enum Wrote {
    Done,
    Failed,
    /// The hub moved on while the client was not reading: the frame being written left
    /// the ring, or too many came after it.
    Behind,
}

/// Runs one socket write (a feed or a flush) within `write_timeout`, waking on every publish
/// to check whether the client has fallen behind meanwhile: a client that stops reading
/// blocks its write, and would otherwise keep frames the ring already let go of until the
/// write timed out.
async fn write_watching_lag(
    write: impl Future<Output = std::io::Result<()>>,
    write_timeout: Duration,
    published: &mut watch::Receiver<u64>,
    hub: &Hub,
    (next_seq, live_from, lag_limit): (u64, u64, usize),
) -> Wrote {
    let write = tokio::time::timeout(write_timeout, write);
    tokio::pin!(write);
    let mut watching = true;
    loop {
        tokio::select! {
            biased;
            done = &mut write => {
                return if matches!(done, Ok(Ok(()))) { Wrote::Done } else { Wrote::Failed };
            }
            changed = published.changed(), if watching => {
                if changed.is_err() {
                    watching = false;
                } else if hub.is_behind(next_seq, live_from, lag_limit) {
                    return Wrote::Behind;
                }
            }
        }
    }
}

/// Why a client session ended, for the session log line.
#[derive(Debug, Clone, Copy)]
enum End {
    ClientClosed,
    ClientError,
    Slow,
    HubClosed,
    WriteFailed,
}

/// Waits until `due`, or for ever when nothing is held.
async fn sleep_until_due(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}

pub async fn serve(
    gateway: Arc<Gateway>,
    hub: Arc<Hub>,
    mut socket: ClientSocket,
    mut cursor: Cursor,
    catch_up: Vec<Utf8Bytes>,
) {
    let started = Instant::now();
    let resumes_at_start = hub.resumes.load(std::sync::atomic::Ordering::Relaxed);
    let _open = gateway.metrics.client_socket_opened(&hub.bot);
    // Copied out so the task holds no settings handle: a reload applies to the next session.
    let (keepalive_interval, write_timeout, lag_frames, chunk_interval) = {
        let live = gateway.live();
        let s = &live.config.stream;
        (
            s.keepalive_interval,
            s.liveness_timeout,
            s.client_lag_frames,
            s.chunk_interval,
        )
    };
    let answers = &gateway.metrics.streamed_answers;
    let mut streams: ClientStreams<Arc<Event>> = ClientStreams::default();
    let upstream_bytes = gateway
        .metrics
        .bytes_relayed
        .with_label_values(&["upstream"]);
    let mut published = hub.subscribe();
    let mut batch: Vec<Arc<Event>> = Vec::new();
    let mut delivered_activities: u64 = 0;
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + keepalive_interval,
        keepalive_interval,
    );

    // The client's close frame, echoed when the session ends on it.
    let mut client_close = None;
    let end = 'session: {
        for frame in catch_up {
            if tokio::time::timeout(write_timeout, socket.feed_text(frame.as_bytes()))
                .await
                .map_or(true, |r| r.is_err())
            {
                break 'session End::WriteFailed;
            }
        }
        loop {
            // Mark before reading so a publish between the read and the wait still wakes us.
            published.borrow_and_update();
            // Interims held back by `stream.chunk_interval` whose time came go first: the
            // batch can only hold newer ones of their streams.
            if !chunk_interval.is_zero() {
                streams.take_due(Instant::now(), chunk_interval, &mut batch);
            }
            let state = hub.pending(&mut cursor, &mut batch, lag_frames);
            let mut wrote = Wrote::Done;
            for event in batch.drain(..) {
                if !matches!(wrote, Wrote::Done) {
                    continue;
                }
                let event = match event.stream {
                    StreamMark::Interim { stream, sequence } => {
                        match streams.interim(
                            stream,
                            sequence,
                            event,
                            Instant::now(),
                            chunk_interval,
                        ) {
                            (Send::Now { skipped }, Some(event)) => {
                                answers.interims_coalesced.inc_by(skipped);
                                answers.interims_relayed.inc();
                                event
                            }
                            (Send::Held(replaced), _) => {
                                drop(replaced);
                                continue;
                            }
                            (Send::Now { .. }, None) => continue,
                        }
                    }
                    StreamMark::Final { stream } => {
                        let missed = streams.finish(stream, event.last_sequence);
                        answers.interims_coalesced.inc_by(missed);
                        event
                    }
                    StreamMark::None => event,
                };
                let text = match &cursor.filter {
                    Some(filter) => match filtered_text(&event, filter) {
                        Some(text) => text,
                        None => continue,
                    },
                    None => event.text.clone(),
                };
                delivered_activities += event.activities.len() as u64;
                let at = (event.seq, cursor.live_from, lag_frames);
                drop(event);
                wrote = write_watching_lag(
                    socket.feed_text(text.as_bytes()),
                    write_timeout,
                    &mut published,
                    &hub,
                    at,
                )
                .await;
            }
            if matches!(wrote, Wrote::Done) {
                let at = (cursor.next_seq, cursor.live_from, lag_frames);
                wrote = write_watching_lag(socket.flush(), write_timeout, &mut published, &hub, at)
                    .await;
            }
            let state = match wrote {
                Wrote::Done => state,
                Wrote::Failed => break 'session End::WriteFailed,
                Wrote::Behind => Pending::Lagged,
            };
            match state {
                Pending::Frames => {}
                Pending::Lagged => {
                    gateway.metrics.slow_clients_closed.inc();
                    if let Some(origin) = hub.trace.get() {
                        origin.slow_client_closed(&hub.bot, &hub.conversation, lag_frames);
                    }
                    let frame = close_frame(
                        CloseCode::Again,
                        "client too slow; reconnect with your watermark",
                    );
                    let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(Some(&frame))).await;
                    break 'session End::Slow;
                }
                Pending::Closed(frame) => {
                    let _ = tokio::time::timeout(write_timeout, socket.close(Some(&frame))).await;
                    break 'session End::HubClosed;
                }
            }
            let held_due = streams.next_due(chunk_interval);
            tokio::select! {
                () = sleep_until_due(held_due) => {}
                changed = published.changed() => {
                    if changed.is_err() {
                        break 'session End::HubClosed;
                    }
                }
                message = socket.read() => match message {
                    // DLJS pings with "" every 20 s (PROTOCOL §5.3); Direct Line ignores anything
                    // else a client sends on the classic stream, and so do we.
                    Ok(Incoming::Text(text)) => upstream_bytes.inc_by(text.len() as u64),
                    Ok(Incoming::Close(frame)) => {
                        client_close = Some(frame);
                        break 'session End::ClientClosed;
                    }
                    Ok(Incoming::Ping(payload)) => {
                        let sent = tokio::time::timeout(write_timeout, socket.pong(&payload)).await;
                        if sent.map_or(true, |r| r.is_err()) {
                            break 'session End::WriteFailed;
                        }
                    }
                    Ok(Incoming::Pong | Incoming::Binary) => {}
                    Err(ReadError::Gone) => break 'session End::ClientClosed,
                    Err(ReadError::Violation(violation)) => {
                        Refusal::of_violation(violation)
                            .close_client(&gateway, &hub.bot, &mut socket)
                            .await;
                        break 'session End::ClientError;
                    }
                },
                _ = keepalive.tick() => {
                    let sent = tokio::time::timeout(write_timeout, socket.send_text(b"")).await;
                    if sent.map_or(true, |r| r.is_err()) {
                        break 'session End::WriteFailed;
                    }
                }
            }
        }
    };
    if let Some(frame) = client_close {
        // The close handshake: the client's code back (RFC 6455 §5.5.1).
        let _ = tokio::time::timeout(CLOSE_GRACE, socket.close(frame.as_ref())).await;
    }
    hub.detach();
    tracing::info!(
        target: "session",
        bot = &*hub.bot,
        conversation = %hub.conversation,
        duration_ms = started.elapsed().as_millis() as u64,
        activities = delivered_activities,
        resumes = hub.resumes.load(std::sync::atomic::Ordering::Relaxed) - resumes_at_start,
        end = ?end,
        trace_id = hub.trace.get().and_then(|o| o.trace_id()).map(tracing::field::display),
        "client stream ended"
    );
}
