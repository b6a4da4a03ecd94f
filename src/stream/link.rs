//! The upstream side of a hub: fetching stream URLs, dialling them, and REST catch-up.

use std::borrow::Cow;

use http::{Method, StatusCode};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::{self, Utf8Bytes};
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::ids::{ActivityKey, KeySet};
use crate::endpoint::ConversationId;
use crate::gateway::Gateway;
use crate::live::{Bot, Live};
use crate::rewrite;
use crate::scrub::Needles;
use crate::telemetry::Parent;
use crate::upstream::call::{Credential, UpstreamCall};
use crate::upstream::client::stream_url_refused;

use super::upstream_socket::HandshakeError;
pub use super::upstream_socket::UpstreamSocket;

/// The voice route's upstream socket (the hub's is [`UpstreamSocket`]).
pub type TungsteniteSocket = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Why a stream URL could not be had.
#[derive(Debug, PartialEq, Eq)]
pub enum FetchError {
    /// 404: the conversation is gone (PROTOCOL §3); retrying cannot help.
    Gone,
    /// A reload removed the conversation's bot.
    BotRemoved,
    /// Anything else: 5xx, 429, timeouts, refused connections, odd answers.
    Retry,
}

#[derive(Debug, PartialEq, Eq)]
pub enum DialError {
    /// 403 on the handshake: the URL went stale; fetch a new one at once (PROTOCOL §0.2).
    Forbidden,
    Failed,
}

/// `GET /conversations/{id}?watermark=W` with the secret, or with the conversation token
/// under enhanced authentication (400 MissingProperty). A token answer is adopted, since
/// it carries the user claim and a fresh lifetime.
pub async fn fetch_stream_url(
    gateway: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &mut String,
    trace: Option<Parent>,
) -> Result<String, FetchError> {
    let path = format!(
        "/v3/directline/conversations/{conversation}{}",
        rewrite::watermark_query(watermark)
    );
    let live = gateway.live_owned();
    let bot = live.bot(bot).ok_or(FetchError::BotRemoved)?;
    let timeout = live.config.timeouts.default;
    let call = upstream_get(&live, bot, &path, upstream_token, "stream_resume").traced(trace);
    let (bytes, via_token) = get_success(gateway, call, timeout, conversation).await?;
    let json: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| FetchError::Retry)?;
    if via_token && let Some(fresh) = json.get("token").and_then(|t| t.as_str()) {
        *upstream_token = fresh.to_owned();
    }
    let url = json
        .get("streamUrl")
        .and_then(|u| u.as_str())
        .ok_or(FetchError::Retry)?;
    // A refused URL is a failed attempt: the resume loop backs off and spends its budget.
    let upstream = bot.upstream.current().map_err(|_| FetchError::Retry)?;
    match upstream.stream_pin().read(url, conversation) {
        Ok(_) => Ok(url.to_owned()),
        Err(refused) => {
            stream_url_refused(&gateway.metrics, &bot.name, &refused, "resume");
            Err(FetchError::Retry)
        }
    }
}

/// Sends a stream-side GET and reads its answer: the body of a success and whether the
/// conversation token answered, `Gone` for a conversation Direct Line no longer knows (404),
/// `Retry` for anything else (the failure's cause goes to the debug log).
async fn get_success(
    gateway: &Gateway,
    call: UpstreamCall<'_>,
    timeout: std::time::Duration,
    conversation: &ConversationId,
) -> Result<(bytes::Bytes, bool), FetchError> {
    let reply = call.send(&gateway.metrics).await.map_err(|error| {
        tracing::debug!(conversation = %conversation, error = %error.log_line(), "stream-side GET failed");
        FetchError::Retry
    })?;
    let via_token = reply.via_token;
    let (parts, bytes) = reply
        .answer
        .read(timeout)
        .await
        .map_err(|_| FetchError::Retry)?;
    if parts.status == StatusCode::NOT_FOUND {
        return Err(FetchError::Gone);
    }
    if !parts.status.is_success() {
        tracing::debug!(conversation = %conversation, status = parts.status.as_u16(), "stream-side GET refused upstream");
        return Err(FetchError::Retry);
    }
    Ok((bytes, via_token))
}

/// A GET of the stream side, with the secret and the enhanced-auth fallback to the
/// conversation token (PROTOCOL §0.5), labelled `label` in the upstream metrics.
fn upstream_get<'a>(
    live: &Live,
    bot: &'a Bot,
    path: &'a str,
    upstream_token: &'a str,
    label: &'static str,
) -> UpstreamCall<'a> {
    UpstreamCall::new(
        bot,
        Method::GET,
        path,
        Credential::SecretThenToken(upstream_token),
        label,
        live.config.timeouts.default,
        live.config.limits.upstream_error_body_bytes,
    )
}

/// Opens a hub's upstream stream URL (ws or wss) within the connect timeout, read by the
/// gateway's own frame reader (no read buffer held while idle).
pub async fn dial(gateway: &Gateway, bot: &str, url: &str) -> Result<UpstreamSocket, DialError> {
    let (request, tls, timeout) = dial_checked(gateway, bot, url)?;
    let max_message = gateway.live().config.stream.max_frame_bytes;
    let connect = UpstreamSocket::connect(request.uri(), &tls, max_message);
    match tokio::time::timeout(timeout, connect).await {
        Ok(Ok(socket)) => Ok(socket),
        Ok(Err(HandshakeError::Forbidden)) => Err(DialError::Forbidden),
        Ok(Err(HandshakeError::Failed(why))) => {
            tracing::debug!(error = why, "upstream stream dial failed");
            Err(DialError::Failed)
        }
        Err(_) => Err(DialError::Failed),
    }
}

/// Opens an upstream stream URL through tungstenite: the voice route's socket, bridged
/// frame by frame in both directions.
pub async fn dial_tungstenite(
    gateway: &Gateway,
    bot: &str,
    url: &str,
) -> Result<TungsteniteSocket, DialError> {
    let (request, tls, timeout) = dial_checked(gateway, bot, url)?;
    let ws_config = super::websocket::ws_config(&gateway.live().config.stream);
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

type DialPlan = (
    http::Request<()>,
    std::sync::Arc<rustls::ClientConfig>,
    std::time::Duration,
);

/// The request for `url`, once it is known to belong to the bot's upstream in use now, with
/// the upstream's TLS settings and the dial timeout.
fn dial_checked(gateway: &Gateway, bot: &str, url: &str) -> Result<DialPlan, DialError> {
    let request = url.into_client_request().map_err(|_| DialError::Failed)?;
    let live = gateway.live();
    let bot = live.bot(bot).ok_or(DialError::Failed)?;
    // Pinned to the host in use now: after a re-discovery moved the bot's region, a
    // stream URL of the old one is refused and the resume fetches a new one.
    let upstream = bot.upstream.current().map_err(|_| DialError::Failed)?;
    if let Err(refused) = upstream.stream_pin().check_dial(request.uri()) {
        stream_url_refused(&gateway.metrics, &bot.name, &refused, "dial");
        return Err(DialError::Failed);
    }
    Ok((
        request,
        upstream.tls().clone(),
        live.config.timeouts.connect * 2,
    ))
}

/// Most pages fetched for one client catch-up; Direct Line keeps 24 h of activities.
const MAX_CATCH_UP_PAGES: usize = 50;

/// Activities after `watermark` (all of them for `None`), by `GET …/activities`: for a
/// client whose watermark is older than the hub's ring, or a hub backfilling a new
/// conversation whose first stream URL was refused. Each page is sent as it came (an ActivitySet); the ids
/// returned let the client skip the same activities when they arrive on the stream.
pub async fn catch_up(
    gateway: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &str,
) -> Result<(Vec<Utf8Bytes>, KeySet), FetchError> {
    catch_up_traced(gateway, bot, conversation, watermark, upstream_token, None).await
}

/// [`catch_up`] with its GETs traced under `trace` (a client's resume span).
pub async fn catch_up_traced(
    gateway: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &str,
    trace: Option<Parent>,
) -> Result<(Vec<Utf8Bytes>, KeySet), FetchError> {
    let mut frames = Vec::new();
    let mut ids = KeySet::default();
    let mut watermark = watermark.map(str::to_owned);
    let live = gateway.live_owned();
    let bot = live.bot(bot).ok_or(FetchError::BotRemoved)?;
    let needles = page_needles(bot, upstream_token);
    for _ in 0..MAX_CATCH_UP_PAGES {
        let Some(page) = fetch_page(
            gateway,
            &live,
            bot,
            conversation,
            watermark.as_deref(),
            upstream_token,
            &needles,
            "stream_catch_up",
            trace.clone(),
        )
        .await?
        else {
            break;
        };
        ids.extend(page.ids);
        frames.push(page.text);
        match page.watermark {
            Some(next) if watermark.as_deref() != Some(next.as_str()) => watermark = Some(next),
            _ => break,
        }
    }
    Ok((frames, ids))
}

/// One `GET …/activities?watermark=W` of a hub that lost its upstream socket to another
/// replica's (`collision`): the page as it came (an ActivitySet, scrubbed), or `None` when
/// nothing is new. One GET per poll; a longer backlog comes in the next polls.
pub async fn poll(
    gateway: &Gateway,
    bot: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &str,
) -> Result<Option<Utf8Bytes>, FetchError> {
    let live = gateway.live_owned();
    let bot = live.bot(bot).ok_or(FetchError::BotRemoved)?;
    let needles = page_needles(bot, upstream_token);
    let page = fetch_page(
        gateway,
        &live,
        bot,
        conversation,
        watermark,
        upstream_token,
        &needles,
        "stream_poll",
        None,
    )
    .await?;
    Ok(page.map(|page| page.text))
}

/// What must not reach a client in a page: the hub's token and the bot's secret.
fn page_needles(bot: &Bot, upstream_token: &str) -> Needles {
    let mut needles = Needles::default().with(upstream_token.to_owned());
    if let Some(secret) = &bot.secret {
        needles.push(secret.shared());
    }
    needles
}

/// One page of `GET …/activities` read into a client frame.
struct Page {
    text: Utf8Bytes,
    ids: KeySet,
    watermark: Option<String>,
}

#[allow(clippy::too_many_arguments)]
async fn fetch_page(
    gateway: &Gateway,
    live: &Live,
    bot: &Bot,
    conversation: &ConversationId,
    watermark: Option<&str>,
    upstream_token: &str,
    needles: &Needles,
    label: &'static str,
    trace: Option<Parent>,
) -> Result<Option<Page>, FetchError> {
    let timeout = live.config.timeouts.default;
    let path = format!(
        "/v3/directline/conversations/{conversation}/activities{}",
        rewrite::watermark_query(watermark)
    );
    let call = upstream_get(live, bot, &path, upstream_token, label).traced(trace);
    let (bytes, _) = get_success(gateway, call, timeout, conversation).await?;
    let set: serde_json::Value = serde_json::from_slice(&bytes).map_err(|_| FetchError::Retry)?;
    let activities = set
        .get("activities")
        .and_then(|a| a.as_array())
        .map_or(&[][..], |a| a.as_slice());
    if activities.is_empty() {
        return Ok(None);
    }
    let mut ids = KeySet::default();
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
    // Pages go to a client as they came: scrubbed like a REST answer (crate::scrub).
    let page = match needles.scrub(&bytes) {
        Cow::Borrowed(clean) => clean.to_vec(),
        Cow::Owned(scrubbed) => {
            gateway
                .metrics
                .upstream_bodies_scrubbed
                .with_label_values(&["success_scrubbed", &bot.name])
                .inc();
            scrubbed
        }
    };
    let text = String::from_utf8(page).map_err(|_| FetchError::Retry)?;
    Ok(Some(Page {
        text: Utf8Bytes::from(text),
        ids,
        watermark: next,
    }))
}

/// Why a hub could not refresh its upstream token.
#[derive(Debug, PartialEq, Eq)]
pub enum RefreshError {
    /// Direct Line refused the token (401/403: expired or revoked): no later try can work.
    Refused,
    /// A reload removed the conversation's bot.
    BotRemoved,
    /// Anything else: try again a little later.
    Retry,
}

/// `POST /tokens/refresh` with `upstream_token` (PROTOCOL §1.3): a fresh token for the same
/// conversation and its lifetime in seconds, within Direct Line's 1..=3600.
pub async fn refresh_token(
    gateway: &Gateway,
    bot: &str,
    upstream_token: &str,
) -> Result<(String, u64), RefreshError> {
    let live = gateway.live_owned();
    let bot = live.bot(bot).ok_or(RefreshError::BotRemoved)?;
    let timeout = live.config.timeouts.default;
    let reply = UpstreamCall::new(
        bot,
        Method::POST,
        "/v3/directline/tokens/refresh",
        Credential::Token(upstream_token),
        "stream_token_refresh",
        timeout,
        live.config.limits.upstream_error_body_bytes,
    )
    .send(&gateway.metrics)
    .await
    .map_err(|error| {
        tracing::debug!(error = %error.log_line(), "hub token refresh failed");
        RefreshError::Retry
    })?;
    let (parts, bytes) = reply
        .answer
        .read(timeout)
        .await
        .map_err(|_| RefreshError::Retry)?;
    if matches!(
        parts.status,
        StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
    ) {
        return Err(RefreshError::Refused);
    }
    if !parts.status.is_success() {
        return Err(RefreshError::Retry);
    }
    let json: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| RefreshError::Retry)?;
    let fresh = json
        .get("token")
        .and_then(|t| t.as_str())
        .filter(|t| !t.is_empty() && t.len() <= 8 * 1024 && t.bytes().all(|b| b.is_ascii_graphic()))
        .ok_or(RefreshError::Retry)?;
    // Direct Line issues 3600 s and never more (PROTOCOL §0.4, §1.3); a missing value is that.
    let lifetime = json
        .get("expires_in")
        .and_then(|e| e.as_u64())
        .unwrap_or(3600)
        .clamp(1, 3600);
    Ok((fresh.to_owned(), lifetime))
}

/// How getting the upstream socket back ended: a resume after a drop, or a polling spell
/// after a collision.
pub(crate) enum ResumeEnd {
    Connected(Box<UpstreamSocket>),
    Gone,
    BotRemoved,
    Exhausted,
    Idle,
    Stopped,
}
