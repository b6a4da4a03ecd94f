//! The stream path: client WebSockets authorised by stream tickets, bridged through one
//! hub per conversation to one upstream socket, with watermark tracking and resume.

mod backoff;
mod client;
mod hub;
mod ids;
mod link;
mod multimodal;
mod relay;
pub mod tracker;

use std::sync::Arc;
use std::time::Duration;

use dashmap::DashMap;
use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::auth;
use crate::body::{self, Body};
use crate::config::StreamConfig;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::{Gateway, RequestContext};
use crate::metrics::Metrics;
use crate::seal::StreamTicket;
use hub::{AttachError, Eviction, Hub, ResumeFrom, RingBudget, RingLimits};
use relay::{FirstLink, close_frame};

/// A conversation of one bot: two upstreams may hand out equal conversation ids.
type HubKey = (Arc<str>, ConversationId);

/// The live hubs of this replica, by bot and conversation.
pub struct Hubs {
    map: DashMap<HubKey, Arc<Hub>>,
    /// Client sockets per conversation on every stream route (classic and multimodal),
    /// reserved before the 101 is sent so concurrent upgrades cannot pass the cap together.
    sockets: DashMap<HubKey, usize>,
    ring_budget: Arc<RingBudget>,
}

/// One client socket's place under `stream.max_sockets_per_conversation`, given back when
/// the socket's task ends (or its upgrade fails).
pub struct SocketSlot {
    gw: Arc<Gateway>,
    key: HubKey,
}

impl Drop for SocketSlot {
    fn drop(&mut self) {
        let sockets = &self.gw.hubs.sockets;
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
            sockets: DashMap::new(),
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
    fn reserve_socket(
        gw: &Arc<Gateway>,
        bot: &Arc<str>,
        conversation: &ConversationId,
        max: usize,
    ) -> Result<SocketSlot, GatewayError> {
        let key = (bot.clone(), conversation.clone());
        let mut count = gw.hubs.sockets.entry(key.clone()).or_insert(0);
        if *count >= max {
            return Err(GatewayError::TooManySockets);
        }
        *count += 1;
        drop(count);
        Ok(SocketSlot {
            gw: gw.clone(),
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

    fn remove(&self, hub: &Arc<Hub>) {
        self.map
            .remove_if(&(hub.bot.clone(), hub.conversation.clone()), |_, live| {
                Arc::ptr_eq(live, hub)
            });
    }

    /// The conversation's hub, creating it (and its upstream task) from `ticket` when
    /// there is none. Returns whether it was created.
    fn get_or_create(
        &self,
        gw: &Arc<Gateway>,
        bot: &Arc<str>,
        conversation: &ConversationId,
        ticket: &StreamTicket,
    ) -> (Arc<Hub>, bool) {
        let watermark: Option<Arc<str>> = ticket.watermark.as_deref().map(Arc::from);
        let limits = {
            let live = gw.live();
            let s = &live.config.stream;
            self.ring_budget.set_limit(s.buffer_total_bytes);
            RingLimits {
                frames: s.buffer_frames,
                bytes: s.buffer_bytes,
            }
        };
        let new_hub = || {
            Arc::new(Hub::new(
                bot.clone(),
                conversation.clone(),
                gw.metrics.activities_relayed.with_label_values(&[bot]),
                limits,
                self.ring_budget.clone(),
                watermark.clone(),
                &ticket.upstream_token,
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
        if created {
            let first = FirstLink {
                stream_url: ticket.upstream_stream_url.clone(),
                watermark,
                from_start: ticket.from_start,
            };
            tokio::spawn(relay::run(gw.clone(), hub.clone(), first));
        }
        (hub, created)
    }
}

/// tungstenite settings for both sides: small eagerly-allocated read buffers, because an
/// idle bridged conversation should cost kilobytes (tungstenite's default is 128 KiB each).
pub fn ws_config(config: &StreamConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_frame_bytes * 2 + 1024)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

/// Authorises a stream upgrade and answers 101; the socket is served in its own task.
pub fn accept(
    gw: &Arc<Gateway>,
    conversation: ConversationId,
    multimodal: bool,
    mut request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    let ticket_text = request
        .uri()
        .query()
        .and_then(|q| {
            form_urlencoded::parse(q.as_bytes())
                .find(|(k, _)| k == "t")
                .map(|(_, v)| v.into_owned())
        })
        .ok_or(GatewayError::InvalidTicket)?;
    let ticket = auth::open_ticket(&ctx.live.sealer, &ctx.bot.name, &ticket_text, &conversation)?;
    let key = websocket_key(request.headers()).ok_or(GatewayError::UpgradeRequired)?;
    // Both routes hold a slot: a multimodal socket dials upstream too.
    let slot = Hubs::reserve_socket(
        gw,
        &ctx.bot.name,
        &conversation,
        ctx.live.config.stream.max_sockets_per_conversation,
    )?;
    let accept_key = derive_accept_key(key.as_bytes());
    let socket_config = ws_config(&ctx.live.config.stream);
    let on_upgrade = hyper::upgrade::on(&mut request);
    // The connection's place under the per-IP cap stays taken while the WebSocket lives.
    let ip_slot = request
        .extensions_mut()
        .remove::<Arc<crate::admission::IpSlot>>();
    let gw = gw.clone();
    let bot = ctx.bot.name.clone();
    tokio::spawn(async move {
        let _slot = slot;
        let _ip_slot = ip_slot;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(error = %error, "client upgrade failed");
                return;
            }
        };
        let socket = WebSocketStream::from_raw_socket(
            TokioIo::new(upgraded),
            Role::Server,
            Some(socket_config),
        )
        .await;
        // Boxed so the resting state of this task is the client loop, not the largest
        // future any branch could hold (see BENCHMARKS.md, idle memory).
        if multimodal {
            Box::pin(multimodal::bridge(gw, conversation, ticket, socket)).await;
        } else {
            Box::pin(session(gw, bot, conversation, ticket, socket)).await;
        }
    });
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key).map_err(|_| GatewayError::Internal)?,
    );
    Ok(response)
}

/// The `Sec-WebSocket-Key` of a valid version-13 upgrade request.
fn websocket_key(headers: &http::HeaderMap) -> Option<&HeaderValue> {
    let has_token = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str().is_ok_and(|s| {
                s.split(',')
                    .any(|part| part.trim().eq_ignore_ascii_case(token))
            })
        })
    };
    let version_ok = headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_some_and(|v| v.as_bytes() == b"13");
    (has_token(header::UPGRADE, "websocket")
        && has_token(header::CONNECTION, "upgrade")
        && version_ok)
        .then(|| headers.get(header::SEC_WEBSOCKET_KEY))
        .flatten()
}

/// Attaches a classic stream socket to its conversation's hub and serves it.
async fn session(
    gw: Arc<Gateway>,
    bot: Arc<str>,
    conversation: ConversationId,
    ticket: StreamTicket,
    socket: client::ClientSocket,
) {
    let from = match &ticket.watermark {
        Some(w) => ResumeFrom::Watermark(Arc::from(w.as_str())),
        None => ResumeFrom::Since(ticket.issued_at_ms),
    };
    let mut socket = socket;
    for _ in 0..3 {
        let (hub, created) = gw.hubs.get_or_create(&gw, &bot, &conversation, &ticket);
        let attached = if created {
            hub.attach(&hub::ResumeFrom::Start)
        } else {
            hub.attach(&from)
        };
        match attached {
            Ok(cursor) => {
                gw.metrics
                    .client_replays
                    .with_label_values(&[if created { "upstream" } else { "buffer" }])
                    .inc();
                client::serve(gw, hub, socket, cursor, Vec::new()).await;
                return;
            }
            Err(AttachError::Retired) => continue,
            Err(AttachError::NotBuffered) => {
                let Some(watermark) = ticket.watermark.as_deref() else {
                    continue;
                };
                match Box::pin(link::catch_up(
                    &gw,
                    &bot,
                    &conversation,
                    Some(watermark),
                    &ticket.upstream_token,
                ))
                .await
                {
                    Ok((frames, ids)) => match hub.attach_after_catch_up(ids) {
                        Ok(cursor) => {
                            gw.metrics
                                .client_replays
                                .with_label_values(&["catch_up"])
                                .inc();
                            client::serve(gw, hub, socket, cursor, frames).await;
                            return;
                        }
                        Err(_) => continue,
                    },
                    Err(error) => {
                        tracing::debug!(conversation = %conversation, ?error, "client catch-up failed");
                        break;
                    }
                }
            }
        }
    }
    let frame = close_frame(CloseCode::Error, "could not resume; reconnect");
    let _ = socket.close(Some(frame)).await;
}
