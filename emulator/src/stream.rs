//! The WebSocket stream (PROTOCOL §5): upgrade, replay then live delivery, keepalives, faults.
//!
//! LIFECYCLE of one socket: upgrade checked (`t` live and for this conversation, else 403
//! before upgrade) → 101 → claim the conversation's one stream slot (taken: the OLDER
//! socket closes with code 1000, reason `collision`, as Direct Line does, PROTOCOL §5.4)
//! → replay from the grant's position, then
//! live frames as activities arrive, `""` every keepalive interval → end: peer close,
//! error, shutdown (1001 `shutdown`), or a fault (drop: abort or 1011 `fault: drop`;
//! stall: silence until the next socket of the conversation arrives, then an abort). The
//! slot is freed the moment the socket ends or stalls.

use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode, Version};
use hyper::body::Incoming;
use hyper::upgrade::{OnUpgrade, Upgraded};
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::time::{Interval, MissedTickBehavior, timeout};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, Role, WebSocketConfig};

use super::credential::Credential;
use super::exchange::{Body, DlError, Exchange, query_parameter};
use super::faults::AfterFrame;
use super::state::{Conversation, Cursor, Outgoing, State, StreamGrant};

/// Close reason for a second socket on one conversation (PROTOCOL §0.3).
pub const COLLISION_REASON: &str = "collision";
/// Close reason of the even-numbered drops of the `drop_after_frames` fault (code 1011).
pub const DROP_REASON: &str = "fault: drop";
/// Close reason when the emulator shuts down (code 1001).
pub const SHUTDOWN_REASON: &str = "shutdown";
/// How long a closing socket waits for the peer's close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(2);
/// How long a stalled socket is held open, silent, before it is dropped.
const STALL_LIMIT: Duration = Duration::from_secs(600);

type Socket = WebSocketStream<TokioIo<Upgraded>>;

/// Idle sockets should cost kilobytes: small read buffer, writes go straight out.
fn socket_config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(512 * 1024))
        .max_frame_size(Some(512 * 1024))
}

/// GET …/stream?watermark=W&t=T: checks the stream token, answers 101 and hands the
/// connection to a socket task. No `Authorization` needed (PROTOCOL §5.1).
pub(super) fn upgrade(
    state: &Arc<State>,
    request: Request<Incoming>,
    conversation_id: &str,
    multimodal: bool,
    exchange: &mut Exchange,
) -> Result<Response<Body>, DlError> {
    let t = query_parameter(request.uri().query(), "t").filter(|t| !t.is_empty());
    exchange.credential = if request.headers().contains_key(header::AUTHORIZATION) {
        Credential::from_headers(state, request.headers()).seen()
    } else {
        t.as_deref()
            .map_or(Credential::Missing, |t| Credential::from_bearer(state, t))
            .seen()
    };
    let t = t.ok_or(DlError::MISSING_STREAM_TOKEN)?;
    let grant = state.stream_grant(&t).ok_or(DlError::INVALID_CREDENTIAL)?;
    if tokio::time::Instant::now() >= grant.expires_at {
        return Err(DlError::STREAM_URL_EXPIRED);
    }
    if grant.conversation.as_str() != conversation_id {
        return Err(DlError::WRONG_CONVERSATION);
    }
    if state.faults.take_stream_refusal() {
        return Err(DlError::STREAM_URL_EXPIRED);
    }
    let conversation = state
        .conversation(conversation_id)
        .ok_or(DlError::UNKNOWN_CONVERSATION)?;
    let key = websocket_key(&request).ok_or(DlError::NOT_WEBSOCKET)?;
    let accept = derive_accept_key(key.as_bytes());
    let on_upgrade = hyper::upgrade::on(request);
    tokio::spawn(serve(
        state.clone(),
        conversation,
        grant,
        on_upgrade,
        multimodal,
    ));

    let mut response = Response::new(Body::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    }
    Ok(response)
}

/// `Sec-WebSocket-Key` of a well-formed HTTP/1.1 WebSocket upgrade request.
fn websocket_key(request: &Request<Incoming>) -> Option<String> {
    let headers = request.headers();
    let value = |name: header::HeaderName| headers.get(name).and_then(|v| v.to_str().ok());
    let has_token = |name: header::HeaderName, token: &str| {
        value(name).is_some_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    let valid = request.version() == Version::HTTP_11
        && has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && value(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v.trim() == "13");
    valid
        .then(|| value(header::SEC_WEBSOCKET_KEY).map(str::to_owned))
        .flatten()
}

/// Holds the conversation's stream slot; dropping it frees the slot at once.
struct Slot {
    conversation: Arc<Conversation>,
    socket: u64,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.conversation.release_stream(self.socket);
    }
}

/// Why a socket's delivery loop ended.
enum End {
    /// Error or EOF: nothing more to say.
    Gone,
    /// The peer sent a close frame; tungstenite replies on the next read.
    PeerClosed,
    Shutdown,
    /// The drop fault, odd drop: no close frame.
    Abort,
    /// The drop fault, even drop: close with 1011.
    DropWithClose,
    Stall,
    /// A newer socket took the conversation's stream slot: close with 1000 `collision`.
    Collision,
}

async fn serve(
    state: Arc<State>,
    conversation: Arc<Conversation>,
    grant: StreamGrant,
    on_upgrade: OnUpgrade,
    multimodal: bool,
) {
    let Ok(upgraded) = on_upgrade.await else {
        return;
    };
    state.count_stream_connect();
    let mut socket = WebSocketStream::from_raw_socket(
        TokioIo::new(upgraded),
        Role::Server,
        Some(socket_config()),
    )
    .await;
    let socket_id = state.socket_id();
    let from = if grant.reconnect && state.faults.replay_history() {
        0
    } else {
        grant.from
    };
    let cursor = conversation.claim_stream(socket_id, from);
    let slot = Slot {
        conversation: conversation.clone(),
        socket: socket_id,
    };
    let delivery = Delivery {
        state: &state,
        conversation: &conversation,
        cursor,
        socket_id,
        user: grant.user,
        multimodal,
        frames: 0,
    };
    let end = delivery.run(&mut socket).await;
    // Armed before the slot is freed, so a newcomer's claim cannot slip past it.
    let kicked = conversation.stall_kick().notified();
    tokio::pin!(kicked);
    kicked.as_mut().enable();
    drop(slot);
    match end {
        End::Gone | End::Abort => {}
        End::PeerClosed => drain(&mut socket).await,
        End::Shutdown => close(&mut socket, CloseCode::Away, SHUTDOWN_REASON).await,
        End::DropWithClose => close(&mut socket, CloseCode::Error, DROP_REASON).await,
        End::Collision => close(&mut socket, CloseCode::Normal, COLLISION_REASON).await,
        End::Stall => {
            // Silent and unread (so no pongs). The slot is already free, so the client's
            // next socket does not collide; when it arrives (or at shutdown, or after
            // the limit) this connection is dropped without a close frame.
            let mut shutdown = state.shutdown_signal();
            let _ = timeout(STALL_LIMIT, async {
                tokio::select! {
                    () = &mut kicked => {}
                    _ = shutdown.wait_for(|down| *down) => {}
                }
            })
            .await;
        }
    }
}

/// One socket's delivery state.
struct Delivery<'a> {
    state: &'a State,
    conversation: &'a Arc<Conversation>,
    cursor: Cursor,
    socket_id: u64,
    user: Option<Arc<str>>,
    multimodal: bool,
    /// Activity frames sent on this socket, for the drop and stall faults.
    frames: u32,
}

impl Delivery<'_> {
    async fn run(mut self, socket: &mut Socket) -> End {
        let mut shutdown = self.state.shutdown_signal();
        let mut drop_all = self.state.drop_all_signal();
        let mut keepalive = keepalive(self.state.keepalive_interval);
        let mut due = Vec::new();
        loop {
            // Enabled before looking, so an activity stored meanwhile still wakes us.
            let notified = self.conversation.wake().notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.conversation.holds_stream(self.socket_id) {
                return End::Collision;
            }
            self.conversation
                .due_frames(&mut self.cursor, self.state.faults.batch(), &mut due);
            if !due.is_empty() {
                for outgoing in due.drain(..) {
                    if socket.send(Message::text(outgoing.frame())).await.is_err() {
                        return End::Gone;
                    }
                    // Replays (frames with nothing any socket has not sent already) do not
                    // count, so drop + replay_history still makes progress.
                    let fresh = match &outgoing {
                        Outgoing::Activities(_, last) => self.conversation.mark_delivered(last + 1),
                        Outgoing::Transient(_) => true,
                    };
                    if !fresh {
                        continue;
                    }
                    self.frames = self.frames.saturating_add(1);
                    match self.state.faults.after_frame(self.frames) {
                        AfterFrame::Continue => {}
                        AfterFrame::Stall => return End::Stall,
                        AfterFrame::Drop if self.conversation.count_drop() % 2 == 1 => {
                            return End::Abort;
                        }
                        AfterFrame::Drop => return End::DropWithClose,
                    }
                }
                continue;
            }
            tokio::select! {
                _ = async { shutdown.wait_for(|down| *down).await.map(|_| ()) } => return End::Shutdown,
                _ = drop_all.changed() => return End::Abort,
                () = &mut notified => {}
                message = socket.next() => match message {
                    None | Some(Err(_)) => return End::Gone,
                    Some(Ok(Message::Close(_))) => return End::PeerClosed,
                    // Client frames are "" keepalives and are ignored (PROTOCOL §5.3), except
                    // on /stream/multimodal where they carry activities (PROTOCOL §5.1).
                    Some(Ok(Message::Text(text))) if self.multimodal && !text.is_empty() => {
                        self.receive(text.as_str());
                    }
                    Some(Ok(_)) => {}
                },
                () = tick(&mut keepalive) => {
                    if socket.send(Message::text("")).await.is_err() {
                        return End::Gone;
                    }
                }
            }
        }
    }

    /// An activity sent on a multimodal socket goes the same way as a POST.
    fn receive(&self, text: &str) {
        if let Ok(Value::Object(activity)) = serde_json::from_str::<Value>(text) {
            if activity.get("type").is_some_and(Value::is_string) {
                self.state
                    .receive(self.conversation, activity, self.user.as_deref());
            }
        }
    }
}

/// `None` when the interval is zero: no keepalives.
fn keepalive(period: Duration) -> Option<Interval> {
    if period.is_zero() {
        return None;
    }
    let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    Some(interval)
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// Sends a close frame and waits (briefly) for the peer's.
async fn close(socket: &mut Socket, code: CloseCode, reason: &'static str) {
    let frame = CloseFrame {
        code,
        reason: reason.into(),
    };
    if socket.close(Some(frame)).await.is_ok() {
        drain(socket).await;
    }
}

/// Reads until the close handshake completes (tungstenite answers a peer's close frame
/// on the next read) or the grace time runs out.
async fn drain(socket: &mut Socket) {
    let _ = timeout(CLOSE_GRACE, async {
        while let Some(Ok(_)) = socket.next().await {}
    })
    .await;
}
