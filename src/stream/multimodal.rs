//! `…/stream/multimodal` (DLJS voice mode, PROTOCOL §5.1): client frames carry activities
//! upstream, so this socket is bridged frame by frame, one upstream socket per client
//! socket, without hub or resume.
//!
//! A client frame here is a POST activities by another road, and gets what POST gets: its
//! `from` bound to the token's user (the upstream URL may come from a reconnect made with
//! the secret, which Direct Line does not bind to any user), the activity body limit, and
//! the conversation's activity rate. A frame that fails any of them closes the socket with
//! the code RFC 6455 gives it; the client reconnects and nothing it sent is stored under
//! another name. Empty text frames are DLJS's keepalives and pass. Under an activity policy
//! a frame is screened as a POST is: denied closes with 1008, no verdict under
//! `on_error = "deny"` with 1011, and neither frame goes upstream. The bot's frames on the
//! way back are screened as on the classic stream (withheld activities taken out of the
//! set, its watermark kept; replaced ones swapped) before the client and the record see
//! them.

use std::sync::Arc;
use std::time::Instant;

use futures_util::{SinkExt, StreamExt};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Message, Utf8Bytes};
use url::Url;

use super::client::{CLOSE_GRACE, Refusal};
use super::gathered_writes::GatheredWrites;
use super::websocket::close_frame;
use crate::activity_body;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::seal::StreamTicket;

/// A multimodal client socket: read and written at once (client frames upstream, bot frames
/// back), so it keeps tungstenite's split halves; frames fed in one wake-up leave in one
/// write (see [`GatheredWrites`]).
pub type MultimodalSocket = WebSocketStream<GatheredWrites<TokioIo<Upgraded>>>;

const NOT_ACTIVITY: Refusal = Refusal {
    code: CloseCode::Invalid,
    reason: "frame is not a JSON activity",
    metric: "not_activity",
};
const BINARY: Refusal = Refusal {
    code: CloseCode::Unsupported,
    reason: "only JSON text frames are accepted",
    metric: "binary",
};
const POLICY_DENIED: Refusal = Refusal {
    code: CloseCode::Policy,
    reason: "activity refused by the content policy",
    metric: "policy_denied",
};
const POLICY_UNAVAILABLE: Refusal = Refusal {
    code: CloseCode::Error,
    reason: "content policy unavailable; retry later",
    metric: "policy_unavailable",
};
const RATE_LIMITED: Refusal = Refusal {
    code: CloseCode::Policy,
    reason: "too many activities; slow down",
    metric: "rate_limited",
};

pub async fn bridge(
    gateway: Arc<Gateway>,
    conversation: ConversationId,
    ticket: StreamTicket,
    mut client: MultimodalSocket,
) {
    let upstream_url = ticket
        .upstream_stream_url
        .as_deref()
        .and_then(multimodal_url);
    let upstream = match upstream_url {
        Some(url) => super::link::dial_tungstenite(&gateway, &ticket.bot, &url)
            .await
            .ok(),
        None => None,
    };
    let Some(upstream) = upstream else {
        let _ = client
            .close(Some(close_frame(
                CloseCode::Error,
                "upstream stream unavailable",
            )))
            .await;
        return;
    };
    // Copied out: the bridge holds no settings handle, a reload applies to the next socket.
    let Some((max_activity, rate, policy, delivery_mode, signed_in)) = ({
        let live = gateway.live();
        live.bot(&ticket.bot).map(|bot| {
            (
                live.config.limits.activity_body_bytes,
                bot.settings.rate_limits.activities,
                bot.policy.clone(),
                bot.settings.delivery_mode.default_for_activities(),
                bot.identity.is_some(),
            )
        })
    }) else {
        let _ = client
            .close(Some(close_frame(CloseCode::Away, "bot removed")))
            .await;
        return;
    };
    let bot: Arc<str> = Arc::from(ticket.bot.as_str());
    let _open = gateway.metrics.client_socket_opened(&bot);
    let upstream_sockets = gateway.metrics.upstream_sockets.with_label_values(&[&bot]);
    upstream_sockets.inc();
    let upstream_bytes = gateway
        .metrics
        .bytes_relayed
        .with_label_values(&["upstream"]);
    let (mut client_sink, mut client_stream) = client.split();
    let (mut upstream_sink, mut upstream_stream) = upstream.split();
    let rate_key = (bot.clone(), conversation);
    let client_ended = {
        let to_upstream = async {
            loop {
                let message = match client_stream.next().await {
                    Some(Ok(message)) => message,
                    Some(Err(error)) => break Refusal::of(&error),
                    None => break None,
                };
                let forward = match message {
                    Message::Text(text) if text.is_empty() => Message::Text(text),
                    Message::Text(text) => {
                        if text.len() as u64 > max_activity {
                            break Some(Refusal::TOO_LARGE);
                        }
                        if gateway
                            .activity_limits
                            .check_key(&rate_key, rate, Instant::now())
                            .is_err()
                        {
                            gateway
                                .metrics
                                .rate_limited
                                .with_label_values(&["stream", &bot])
                                .inc();
                            break Some(RATE_LIMITED);
                        }
                        let name = if signed_in {
                            activity_body::SenderName::Verified(ticket.name.as_deref())
                        } else {
                            activity_body::SenderName::Caller
                        };
                        let bound = match activity_body::bind_sender_as(
                            text.as_bytes(),
                            &ticket.user_id,
                            name,
                            delivery_mode,
                        ) {
                            Ok(bound) => bound,
                            Err(_) => break Some(NOT_ACTIVITY),
                        };
                        let bound = match &policy {
                            None => Ok(bound),
                            Some(policy) => {
                                let subject = crate::policy::Subject {
                                    bot: &bot,
                                    conversation: rate_key.1.as_str(),
                                    user: &ticket.user_id,
                                };
                                policy.screen_user(&gateway.metrics, subject, bound).await
                            }
                        };
                        match bound {
                            Err(GatewayError::PolicyDenied) => break Some(POLICY_DENIED),
                            Err(GatewayError::PolicyUnavailable) => break Some(POLICY_UNAVAILABLE),
                            Ok(bound) => match String::from_utf8(bound) {
                                Ok(bound) => {
                                    upstream_bytes.inc_by(bound.len() as u64);
                                    if let Some(record) = &gateway.record {
                                        let subject = crate::policy::Subject {
                                            bot: &bot,
                                            conversation: rate_key.1.as_str(),
                                            user: &ticket.user_id,
                                        };
                                        record.user(
                                            subject,
                                            bytes::Bytes::copy_from_slice(bound.as_bytes()),
                                        );
                                    }
                                    Message::Text(Utf8Bytes::from(bound))
                                }
                                Err(_) => break Some(NOT_ACTIVITY),
                            },
                            Err(_) => break Some(NOT_ACTIVITY),
                        }
                    }
                    Message::Binary(_) => break Some(BINARY),
                    Message::Close(frame) => {
                        let _ = upstream_sink.send(Message::Close(frame)).await;
                        break None;
                    }
                    // tungstenite answers pings itself; pongs and raw frames carry nothing.
                    Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => continue,
                };
                if upstream_sink.send(forward).await.is_err() {
                    break None;
                }
            }
        };
        // Bot frames go through the bot's policy and into the record as on the classic
        // stream; with neither, a frame costs this one branch.
        let screened = policy.is_some() || gateway.record.is_some();
        let to_client = async {
            while let Some(Ok(message)) = upstream_stream.next().await {
                let message = match message {
                    Message::Text(text) if screened && !text.is_empty() => {
                        let subject = crate::policy::Subject {
                            bot: &bot,
                            conversation: rate_key.1.as_str(),
                            user: &ticket.user_id,
                        };
                        Message::Text(
                            Box::pin(super::deliver::screen_frame(
                                &gateway,
                                policy.as_deref(),
                                gateway.record.as_deref(),
                                subject,
                                text,
                            ))
                            .await,
                        )
                    }
                    other => other,
                };
                let close = message.is_close();
                if client_sink.send(message).await.is_err() || close {
                    break;
                }
            }
        };
        tokio::select! {
            refusal = to_upstream => Some(refusal),
            _ = to_client => None,
        }
    };
    if let Some(refusal) = client_ended {
        match refusal {
            Some(refusal) => refusal.close(&gateway, &bot, &mut client_sink).await,
            // The client closed: tungstenite has queued its answer (the client's code, or
            // 1002 for a code a client may not send) and, as a server, writes it into
            // `GatheredWrites` and reports the connection closed without flushing that.
            None => {
                let _ = tokio::time::timeout(CLOSE_GRACE, async {
                    let _ = client_sink.flush().await;
                    if let Ok(mut socket) = client_sink.reunite(client_stream) {
                        let _ = tokio::io::AsyncWriteExt::flush(socket.get_mut()).await;
                    }
                })
                .await;
            }
        }
        // A close handshake, not a dropped connection: closing a socket with unread data
        // resets it, and Direct Line could lose the frames this client sent just before.
        let _ = tokio::time::timeout(CLOSE_GRACE, async {
            let _ = upstream_sink.close().await;
            while let Some(Ok(_)) = upstream_stream.next().await {}
        })
        .await;
    }
    upstream_sockets.dec();
}

/// The upstream URL with `/multimodal` appended to its `/stream` path, query kept.
fn multimodal_url(stream_url: &str) -> Option<String> {
    let mut url = Url::parse(stream_url).ok()?;
    if !url.path().ends_with("/stream") {
        return None;
    }
    let path = format!("{}/multimodal", url.path());
    url.set_path(&path);
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn refusal_labels_are_the_exported_ones() {
        use super::super::client::Refusal;
        let counted: Vec<&str> = [
            Refusal::TOO_LARGE,
            Refusal::BAD_UTF8,
            Refusal::PROTOCOL,
            super::NOT_ACTIVITY,
            super::BINARY,
            super::RATE_LIMITED,
            super::POLICY_DENIED,
            super::POLICY_UNAVAILABLE,
        ]
        .iter()
        .map(|r| r.metric)
        .collect();
        assert_eq!(counted, crate::metrics::FRAME_REFUSALS);
    }

    #[test]
    fn multimodal_url_keeps_the_query() {
        assert_eq!(
            super::multimodal_url("wss://h/v3/directline/conversations/c/stream?watermark=-&t=x")
                .as_deref(),
            Some("wss://h/v3/directline/conversations/c/stream/multimodal?watermark=-&t=x")
        );
        assert_eq!(super::multimodal_url("wss://h/other"), None);
    }
}
