//! The stream routes: a client WebSocket upgrade authorised by its stream ticket, attached
//! to its conversation's hub (classic) or bridged on its own (multimodal).

use std::sync::Arc;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

use crate::auth;
use crate::boxed_body::{self, Body};
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::routes::context::RequestContext;
use crate::seal::StreamTicket;
use crate::stream::gathered_writes::GatheredWrites;
use crate::stream::hub::{AttachError, ResumeFrom};
use crate::stream::relay::FirstLink;
use crate::stream::websocket::{close_frame, ws_config};
use crate::stream::{client, link, multimodal, relay};
use crate::telemetry::{Origin, RequestTrace, StreamSpan};

/// Authorises a stream upgrade and answers 101; the socket is served in its own task.
pub fn accept(
    gateway: &Arc<Gateway>,
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
    let slot = gateway.hubs.reserve_socket(
        &ctx.bot.name,
        &conversation,
        ctx.config().stream.max_sockets_per_conversation,
    )?;
    let accept_key = derive_accept_key(key.as_bytes());
    let socket_config = ws_config(&ctx.config().stream);
    let max_client_message = ctx.config().stream.max_frame_bytes;
    let on_upgrade = hyper::upgrade::on(&mut request);
    // The connection's place under the per-IP cap stays taken while the WebSocket lives.
    let ip_slot = request
        .extensions_mut()
        .remove::<Arc<crate::admission::IpSlot>>();
    // And its place in its worker's count, so new connections go to quieter threads.
    let worker_place = request
        .extensions_mut()
        .remove::<Arc<crate::workers::Placed>>();
    let gateway = gateway.clone();
    let bot = ctx.bot.name.clone();
    let origin = ctx.trace.as_ref().map(RequestTrace::origin);
    tokio::spawn(async move {
        let _slot = slot;
        let _ip_slot = ip_slot;
        let _worker_place = worker_place;
        let upgraded = match on_upgrade.await {
            Ok(upgraded) => upgraded,
            Err(error) => {
                tracing::debug!(error = %error, "client upgrade failed");
                return;
            }
        };
        // Boxed so the resting state of this task is the client loop, not the largest
        // future any branch could hold (see BENCHMARKS.md, idle memory).
        if multimodal {
            // Frames both ways at once, one upstream socket each: tungstenite's split halves.
            let socket = WebSocketStream::from_raw_socket(
                GatheredWrites::new(TokioIo::new(upgraded)),
                Role::Server,
                Some(socket_config),
            )
            .await;
            Box::pin(multimodal::bridge(gateway, conversation, ticket, socket)).await;
        } else {
            let socket = client::ClientSocket::new(TokioIo::new(upgraded), max_client_message);
            Box::pin(session(gateway, bot, conversation, ticket, socket, origin)).await;
        }
    });
    let mut response = Response::new(boxed_body::empty());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(
        header::SEC_WEBSOCKET_ACCEPT,
        HeaderValue::from_str(&accept_key).map_err(|error| {
            GatewayError::internal_because("the Sec-WebSocket-Accept value", error)
        })?,
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
    gateway: Arc<Gateway>,
    bot: Arc<str>,
    conversation: ConversationId,
    ticket: StreamTicket,
    socket: client::ClientSocket,
    origin: Option<Origin>,
) {
    // While tracing is on: the span of a client resuming at its watermark.
    let mut resume: Option<StreamSpan> = None;
    let from = match &ticket.watermark {
        Some(w) => ResumeFrom::Watermark(Arc::from(w.as_str())),
        None => ResumeFrom::Since(ticket.issued_at_ms),
    };
    let mut socket = socket;
    for _ in 0..3 {
        let (hub, created) = hub_for(&gateway, &bot, &conversation, &ticket);
        if let Some(origin) = &origin {
            if created {
                let _ = hub.trace.set(origin.clone());
            }
            if resume.is_none() && ticket.watermark.is_some() {
                resume = origin.client_resume(hub.trace.get(), &bot, &conversation);
            }
        }
        let attached = if created {
            hub.attach(&ResumeFrom::Start)
        } else {
            hub.attach(&from)
        };
        match attached {
            Ok(cursor) => {
                let source = if created { "upstream" } else { "buffer" };
                gateway
                    .metrics
                    .client_replays
                    .with_label_values(&[source])
                    .inc();
                if let Some(span) = resume.take() {
                    span.finish(source, &[]);
                }
                client::serve(gateway, hub, socket, cursor, Vec::new()).await;
                return;
            }
            Err(AttachError::Retired) => continue,
            Err(AttachError::NotBuffered) => {
                let Some(watermark) = ticket.watermark.as_deref() else {
                    continue;
                };
                match Box::pin(link::catch_up_traced(
                    &gateway,
                    &bot,
                    &conversation,
                    Some(watermark),
                    &ticket.upstream_token,
                    resume.as_ref().map(StreamSpan::parent),
                ))
                .await
                {
                    Ok((frames, ids)) => match hub.attach_after_catch_up(ids) {
                        Ok(cursor) => {
                            gateway
                                .metrics
                                .client_replays
                                .with_label_values(&["catch_up"])
                                .inc();
                            if let Some(span) = resume.take() {
                                span.finish("catch_up", &[]);
                            }
                            client::serve(gateway, hub, socket, cursor, frames).await;
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
    if let Some(span) = resume {
        span.finish("failed", &[]);
    }
    let frame = close_frame(CloseCode::Error, "could not resume; reconnect");
    let _ = tokio::time::timeout(client::CLOSE_GRACE, socket.close(Some(&frame))).await;
}

/// The conversation's hub on this replica; a new one gets its upstream task, started from
/// the ticket's upstream stream URL.
fn hub_for(
    gateway: &Arc<Gateway>,
    bot: &Arc<str>,
    conversation: &ConversationId,
    ticket: &StreamTicket,
) -> (Arc<crate::stream::hub::Hub>, bool) {
    let watermark: Option<Arc<str>> = ticket.watermark.as_deref().map(Arc::from);
    let (hub, created) = gateway.hubs.get_or_create(
        &gateway.metrics,
        &gateway.live().config.stream,
        bot,
        conversation,
        watermark.as_ref(),
        &ticket.upstream_token,
    );
    if created {
        let first = FirstLink {
            stream_url: ticket.upstream_stream_url.clone(),
            watermark,
            from_start: ticket.from_start,
            user: Arc::from(ticket.user_id.as_str()),
        };
        tokio::spawn(relay::run(gateway.clone(), hub.clone(), first));
    }
    (hub, created)
}
