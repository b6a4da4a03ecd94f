//! The emulator's WebSocket stream (spec §5): replay from the URL's position, then live
//! ActivitySet frames, empty keepalives, one socket per conversation, and the stream faults.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};

use super::http::{error, query_param};
use super::state::{Conversation, State, StreamStart};
use crate::body::{self, Body};

/// Close reason Direct Line uses for a second socket on one conversation (spec §0.3).
pub const COLLISION: &str = "collision";
const MAX_FRAME_ACTIVITIES: usize = 3;

pub fn upgrade(
    state: Arc<State>,
    id: &str,
    mut request: Request<Incoming>,
    query: &Option<String>,
) -> Response<Body> {
    let token = query_param(query.as_deref(), "t").unwrap_or_default();
    let ticket = state.stream_tokens.get(&token).map(|t| {
        (
            t.conversation.clone(),
            t.start,
            t.from_reconnect,
            t.expires_at,
        )
    });
    let Some((conversation_id, start, from_reconnect, expires_at)) = ticket else {
        return error(
            StatusCode::FORBIDDEN,
            "BadArgument",
            "Missing token or secret",
        );
    };
    if conversation_id != id || expires_at <= Instant::now() {
        return error(
            StatusCode::FORBIDDEN,
            "BadArgument",
            "Invalid or expired stream token",
        );
    }
    let Some(conversation) = state.conversation(id) else {
        return error(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation");
    };
    let Some(key) = request.headers().get(header::SEC_WEBSOCKET_KEY).cloned() else {
        return error(
            StatusCode::BAD_REQUEST,
            "BadArgument",
            "Not a WebSocket upgrade",
        );
    };
    let position = if from_reconnect && state.faults.replay_history() {
        0
    } else {
        match start {
            StreamStart::AfterSeq(seq) => conversation.position_after(seq),
            StreamStart::FromLog(position) => position,
        }
    };
    let on_upgrade = hyper::upgrade::on(&mut request);
    tokio::spawn(async move {
        let Ok(upgraded) = on_upgrade.await else {
            return;
        };
        let config = WebSocketConfig::default()
            .read_buffer_size(4096)
            .write_buffer_size(0);
        let socket =
            WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config))
                .await;
        serve(state, conversation, socket, position).await;
    });
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    response
}

type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

enum Fault {
    None,
    Drop,
    Stall,
}

async fn serve(
    state: Arc<State>,
    conversation: Arc<Conversation>,
    mut socket: Socket,
    position: usize,
) {
    if !conversation.claim_stream() {
        // A stalled socket cannot see its peer leave, so a newcomer releases it first;
        // a healthy one stays and the newcomer is refused, as Direct Line does.
        conversation.kick_stalled.notify_waiters();
        tokio::time::sleep(Duration::from_millis(20)).await;
        if !conversation.claim_stream() {
            let frame = CloseFrame {
                code: CloseCode::Normal,
                reason: Utf8Bytes::from_static(COLLISION),
            };
            let _ = socket.close(Some(frame)).await;
            return;
        }
    }
    state.count_connect();
    run(&state, &conversation, socket, position).await;
    conversation.release_stream();
}

async fn run(state: &State, conversation: &Conversation, socket: Socket, mut cursor: usize) {
    let replay_end = conversation.log_len();
    let mut appended = conversation.subscribe();
    let mut stopped = state.stopped.subscribe();
    let mut keepalive = tokio::time::interval_at(
        tokio::time::Instant::now() + state.keepalive_interval,
        state.keepalive_interval,
    );
    let (mut sink, mut incoming) = socket.split();
    let mut frames_sent: u32 = 0;
    loop {
        appended.borrow_and_update();
        let entries = conversation.entries_from(cursor, 256);
        if !entries.is_empty() {
            let first = cursor;
            cursor += entries.len();
            for (frame, end) in frames(&entries, first, replay_end, state.faults.batch()) {
                if sink
                    .send(Message::Text(Utf8Bytes::from(frame)))
                    .await
                    .is_err()
                {
                    return;
                }
                if conversation.high_water.fetch_max(end, Ordering::Relaxed) >= end {
                    // A replayed frame: fault counters count new frames only.
                    continue;
                }
                frames_sent += 1;
                match fault_after(state, frames_sent) {
                    Fault::None => {}
                    Fault::Drop => {
                        // Odd drops vanish without a close frame; even ones close with 1011.
                        if conversation.drops.fetch_add(1, Ordering::Relaxed) % 2 == 1 {
                            let frame = CloseFrame {
                                code: CloseCode::Error,
                                reason: Utf8Bytes::from_static("injected drop"),
                            };
                            let _ = sink.send(Message::Close(Some(frame))).await;
                        }
                        return;
                    }
                    Fault::Stall => {
                        tokio::select! {
                            _ = conversation.kick_stalled.notified() => {}
                            _ = stopped.changed() => {}
                        }
                        return;
                    }
                }
            }
            continue;
        }
        tokio::select! {
            _ = appended.changed() => {}
            message = incoming.next() => match message {
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => return,
                // Clients send "" as a keepalive; Direct Line ignores client frames.
                Some(Ok(_)) => {}
            },
            _ = keepalive.tick() => {
                if sink.send(Message::Text(Utf8Bytes::from_static(""))).await.is_err() {
                    return;
                }
            }
            _ = stopped.changed() => return,
        }
    }
}

fn fault_after(state: &State, frames_sent: u32) -> Fault {
    if state
        .faults
        .drop_after_frames()
        .is_some_and(|n| frames_sent >= n)
    {
        return Fault::Drop;
    }
    if state
        .faults
        .stall_after_frames()
        .is_some_and(|n| frames_sent >= n)
    {
        return Fault::Stall;
    }
    Fault::None
}

/// Turns log entries into frame texts, each with the log position just past it: stored
/// activities one per frame (or up to 3 with `batch`) with the watermark of the last;
/// stream-only ones alone and without a watermark, skipped when they precede the
/// connection (they are never replayed).
fn frames(
    entries: &[(Option<u64>, Value)],
    first: usize,
    replay_end: usize,
    batch: bool,
) -> Vec<(String, usize)> {
    let per_frame = if batch { MAX_FRAME_ACTIVITIES } else { 1 };
    let mut frames = Vec::new();
    let mut pending: Vec<&Value> = Vec::new();
    let mut pending_seq = 0;
    let flush =
        |pending: &mut Vec<&Value>, seq: u64, end: usize, frames: &mut Vec<(String, usize)>| {
            if !pending.is_empty() {
                frames.push((
                    json!({ "activities": pending, "watermark": seq.to_string() }).to_string(),
                    end,
                ));
                pending.clear();
            }
        };
    for (offset, (seq, activity)) in entries.iter().enumerate() {
        let position = first + offset;
        match seq {
            Some(seq) => {
                pending.push(activity);
                pending_seq = *seq;
                if pending.len() >= per_frame {
                    flush(&mut pending, pending_seq, position + 1, &mut frames);
                }
            }
            None if position < replay_end => {}
            None => {
                flush(&mut pending, pending_seq, position, &mut frames);
                frames.push((
                    json!({ "activities": [activity] }).to_string(),
                    position + 1,
                ));
            }
        }
    }
    flush(
        &mut pending,
        pending_seq,
        first + entries.len(),
        &mut frames,
    );
    frames
}
