//! The upstream side of a hub: fetching stream URLs, dialling them, and REST catch-up.

use std::borrow::Cow;

use http::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::ids::{ActivityKey, KeySet};
use crate::body;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::Gateway;
use crate::metrics::status_class;
use crate::rewrite;
use crate::scrub::Needles;
use crate::secret;
use crate::upstream;

pub type UpstreamSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a stream URL could not be had.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchError {
    /// 404: the conversation is gone (spec §3); retrying cannot help.
    Gone,
    /// A reload removed the conversation's bot.
    BotRemoved,
    /// Anything else: 5xx, 429, timeouts, refused connections, odd answers.
    Retry,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DialError {
    /// 403 on the handshake: the URL went stale; fetch a new one at once (spec §0.2).
    Forbidden,
    Failed,
}

/// `GET /conversations/{id}?watermark=W` with the secret, or with the conversation token
/// under enhanced authentication (400 MissingProperty). A token answer is adopted, since
/// it carries the user claim and a fresh lifetime.
pub async fn fetch_stream_url(
    gw: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &mut String,
) -> Result<String, FetchError> {
    let path = format!(
        "/v3/directline/conversations/{conversation}{}",
        rewrite::watermark_query(watermark)
    );
    let live = gw.live_owned();
    let bot = live.bot(bot).ok_or(FetchError::BotRemoved)?;
    let timeout = live.config.timeouts.default;
    let mut with_token = false;
    loop {
        let credential = if with_token {
            secret::bearer(upstream_token)
        } else {
            bot.secret.bearer_header()
        };
        let request = bot
            .upstream
            .request(Method::GET, &path, credential)
            .and_then(|b| b.body(body::empty()).map_err(|_| GatewayError::Internal))
            .map_err(|_| FetchError::Retry)?;
        let response = bot.upstream.send(request, timeout).await;
        let status_label = match &response {
            Ok(r) => status_class(r.status().as_u16()),
            Err(GatewayError::UpstreamTimeout) => "timeout",
            Err(_) => "error",
        };
        gw.metrics
            .upstream_requests
            .with_label_values(&["stream_resume", status_label, &bot.name])
            .inc();
        let response = response.map_err(|_| FetchError::Retry)?;
        let status = response.status();
        let (_, bytes) = upstream::read_body(response, timeout)
            .await
            .map_err(|_| FetchError::Retry)?;
        if status == StatusCode::NOT_FOUND {
            return Err(FetchError::Gone);
        }
        if status == StatusCode::BAD_REQUEST
            && !with_token
            && upstream::error_code(&bytes).as_deref() == Some("MissingProperty")
        {
            with_token = true;
            continue;
        }
        if !status.is_success() {
            tracing::debug!(conversation = %conversation, status = status.as_u16(), "reconnect refused upstream");
            return Err(FetchError::Retry);
        }
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| FetchError::Retry)?;
        if with_token && let Some(fresh) = json.get("token").and_then(|t| t.as_str()) {
            *upstream_token = fresh.to_owned();
        }
        let url = json
            .get("streamUrl")
            .and_then(|u| u.as_str())
            .ok_or(FetchError::Retry)?;
        // A refused URL is a failed attempt: the resume loop backs off and spends its budget.
        return match bot.upstream.stream_pin().read(url, conversation) {
            Ok(_) => Ok(url.to_owned()),
            Err(refused) => {
                upstream::stream_url_refused(&gw.metrics, &bot.name, &refused, "resume");
                Err(FetchError::Retry)
            }
        };
    }
}

/// Opens an upstream stream URL (ws or wss) within the connect timeout.
pub async fn dial(gw: &Gateway, bot: &str, url: &str) -> Result<UpstreamSocket, DialError> {
    let request = url.into_client_request().map_err(|_| DialError::Failed)?;
    let (ws_config, tls, timeout) = {
        let live = gw.live();
        let bot = live.bot(bot).ok_or(DialError::Failed)?;
        if let Err(refused) = bot.upstream.stream_pin().check_dial(request.uri()) {
            upstream::stream_url_refused(&gw.metrics, &bot.name, &refused, "dial");
            return Err(DialError::Failed);
        }
        (
            super::ws_config(&live.config.stream),
            bot.upstream.tls().clone(),
            live.config.timeouts.connect * 2,
        )
    };
    let connect = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        true,
        Some(Connector::Rustls(tls)),
    );
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok((socket, _))) => Ok(socket),
        Ok(Err(tungstenite::Error::Http(response)))
            if response.status() == StatusCode::FORBIDDEN =>
        {
            Err(DialError::Forbidden)
        }
        Ok(Err(error)) => {
            tracing::debug!(error = %error, "upstream stream dial failed");
            Err(DialError::Failed)
        }
        Err(_) => Err(DialError::Failed),
    }
}

/// Most pages fetched for one client catch-up; Direct Line keeps 24 h of activities.
const MAX_CATCH_UP_PAGES: usize = 50;

/// Activities after `watermark` (all of them for `None`), by `GET …/activities`: for a
/// client whose watermark is older than the hub's ring, or a hub backfilling a new
/// conversation whose first stream URL was refused. Each page is sent as it came (an ActivitySet); the ids
/// returned let the client skip the same activities when they arrive on the stream.
pub async fn catch_up(
    gw: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &str,
) -> Result<(Vec<Utf8Bytes>, KeySet), FetchError> {
    let mut frames = Vec::new();
    let mut ids = KeySet::default();
    let mut watermark = watermark.map(str::to_owned);
    let live = gw.live_owned();
    let bot = live.bot(bot).ok_or(FetchError::BotRemoved)?;
    let timeout = live.config.timeouts.default;
    // Pages go to a client as they came: scrubbed like a REST answer (crate::scrub).
    let needles = Needles::default()
        .with(bot.secret.shared())
        .with(upstream_token.to_owned());
    for _ in 0..MAX_CATCH_UP_PAGES {
        let path = format!(
            "/v3/directline/conversations/{conversation}/activities{}",
            rewrite::watermark_query(watermark.as_deref())
        );
        let mut bytes = None;
        for credential in [bot.secret.bearer_header(), secret::bearer(upstream_token)] {
            let request = bot
                .upstream
                .request(Method::GET, &path, credential)
                .and_then(|b| b.body(body::empty()).map_err(|_| GatewayError::Internal))
                .map_err(|_| FetchError::Retry)?;
            let response = bot
                .upstream
                .send(request, timeout)
                .await
                .map_err(|_| FetchError::Retry)?;
            let status = response.status();
            let (_, body) = upstream::read_body(response, timeout)
                .await
                .map_err(|_| FetchError::Retry)?;
            if status.is_success() {
                bytes = Some(body);
                break;
            }
            if status == StatusCode::NOT_FOUND {
                return Err(FetchError::Gone);
            }
            if !(status == StatusCode::BAD_REQUEST
                && upstream::error_code(&body).as_deref() == Some("MissingProperty"))
            {
                return Err(FetchError::Retry);
            }
        }
        let bytes = bytes.ok_or(FetchError::Retry)?;
        let set: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|_| FetchError::Retry)?;
        let activities = set
            .get("activities")
            .and_then(|a| a.as_array())
            .map_or(&[][..], |a| a.as_slice());
        if activities.is_empty() {
            break;
        }
        for id in activities
            .iter()
            .filter_map(|a| a.get("id").and_then(|i| i.as_str()))
        {
            ids.insert(ActivityKey::of(id));
        }
        let next = set
            .get("watermark")
            .and_then(|w| w.as_str())
            .map(str::to_owned);
        let page = match needles.scrub(&bytes) {
            Cow::Borrowed(clean) => clean.to_vec(),
            Cow::Owned(scrubbed) => {
                gw.metrics
                    .upstream_bodies_scrubbed
                    .with_label_values(&["success_scrubbed", &bot.name])
                    .inc();
                scrubbed
            }
        };
        let text = String::from_utf8(page).map_err(|_| FetchError::Retry)?;
        frames.push(Utf8Bytes::from(text));
        match next {
            Some(next) if watermark.as_deref() != Some(next.as_str()) => watermark = Some(next),
            _ => break,
        }
    }
    Ok((frames, ids))
}
