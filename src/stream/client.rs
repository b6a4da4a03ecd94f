//! One client WebSocket: replay from its cursor, then live frames; absorb its keepalives.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::hub::{Cursor, Event, Hub, Pending, filtered_text};
use super::relay::close_frame;
use crate::gateway::Gateway;

pub type ClientSocket = WebSocketStream<TokioIo<Upgraded>>;

/// Why a client session ended, for the session log line.
#[derive(Debug, Clone, Copy)]
enum End {
    ClientClosed,
    ClientError,
    Slow,
    HubClosed,
    WriteFailed,
}

pub async fn serve(
    gw: Arc<Gateway>,
    hub: Arc<Hub>,
    socket: ClientSocket,
    mut cursor: Cursor,
    catch_up: Vec<Utf8Bytes>,
) {
    let started = Instant::now();
    let resumes_at_start = hub.resumes.load(std::sync::atomic::Ordering::Relaxed);
    let _open = gw.metrics.client_socket_opened(&hub.bot);
    // Copied out so the task holds no settings handle: a reload applies to the next session.
    let (keepalive_interval, write_timeout, lag_frames) = {
        let live = gw.live();
        let s = &live.config.stream;
        (
            s.keepalive_interval,
            s.liveness_timeout,
            s.client_lag_frames,
        )
    };
    let upstream_bytes = gw.metrics.bytes_relayed.with_label_values(&["upstream"]);
    let (mut sink, mut incoming) = socket.split();
    let mut published = hub.subscribe();
    let mut batch: Vec<Arc<Event>> = Vec::new();
    let mut delivered_activities: u64 = 0;
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + keepalive_interval,
        keepalive_interval,
    );

    let end = 'session: {
        for frame in catch_up {
            if tokio::time::timeout(write_timeout, sink.feed(Message::Text(frame)))
                .await
                .map_or(true, |r| r.is_err())
            {
                break 'session End::WriteFailed;
            }
        }
        loop {
            // Mark before reading so a publish between the read and the wait still wakes us.
            published.borrow_and_update();
            let state = hub.pending(&mut cursor, &mut batch, lag_frames);
            for event in batch.drain(..) {
                let text = match &cursor.filter {
                    Some(filter) => match filtered_text(&event, filter) {
                        Some(text) => text,
                        None => continue,
                    },
                    None => event.text.clone(),
                };
                delivered_activities += event.activities.len() as u64;
                if tokio::time::timeout(write_timeout, sink.feed(Message::Text(text)))
                    .await
                    .map_or(true, |r| r.is_err())
                {
                    break 'session End::WriteFailed;
                }
            }
            if tokio::time::timeout(write_timeout, sink.flush())
                .await
                .map_or(true, |r| r.is_err())
            {
                break 'session End::WriteFailed;
            }
            match state {
                Pending::Frames => {}
                Pending::Lagged => {
                    gw.metrics.slow_clients_closed.inc();
                    let frame = close_frame(
                        CloseCode::Again,
                        "client too slow; reconnect with your watermark",
                    );
                    let _ =
                        tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame))))
                            .await;
                    break 'session End::Slow;
                }
                Pending::Closed(frame) => {
                    let _ =
                        tokio::time::timeout(write_timeout, sink.send(Message::Close(Some(frame))))
                            .await;
                    break 'session End::HubClosed;
                }
            }
            tokio::select! {
                changed = published.changed() => {
                    if changed.is_err() {
                        break 'session End::HubClosed;
                    }
                }
                message = incoming.next() => match message {
                    // DLJS pings with "" every 20 s (spec §5.3); Direct Line ignores anything
                    // else a client sends on the classic stream, and so do we.
                    Some(Ok(Message::Text(text))) => upstream_bytes.inc_by(text.len() as u64),
                    Some(Ok(Message::Close(_))) | None => break 'session End::ClientClosed,
                    Some(Ok(_)) => {}
                    Some(Err(_)) => break 'session End::ClientError,
                },
                _ = keepalive.tick() => {
                    let sent = tokio::time::timeout(write_timeout, sink.send(Message::Text(Utf8Bytes::from_static("")))).await;
                    if sent.map_or(true, |r| r.is_err()) {
                        break 'session End::WriteFailed;
                    }
                }
            }
        }
    };
    if matches!(end, End::ClientClosed) {
        // Let tungstenite finish the close handshake.
        let _ = tokio::time::timeout(write_timeout, sink.close()).await;
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
        "client stream ended"
    );
}
