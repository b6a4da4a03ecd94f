//! The gateway's shared state and the request pipeline: parse → authorize → upstream → rewrite → respond.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use arc_swap::{ArcSwap, Guard};
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::{BotConfig, Config, NO_BOT, Rate, UpstreamTarget};
use crate::cors;
use crate::endpoint::{ConversationId, Endpoint, Route};
use crate::error::{Blame, GatewayError};
use crate::metrics::{Metrics, status_class};
use crate::ratelimit::{Limiter, client_ip};
use crate::rest;
use crate::seal::{ClientToken, Sealer};
use crate::secret::Secret;
use crate::stream::Hubs;
use crate::upstream::Upstream;

pub struct Gateway {
    live: ArcSwap<Live>,
    pub metrics: Arc<Metrics>,
    pub hubs: Hubs,
    /// tokens/generate and conversation starts, per bot and client IP.
    pub session_limits: Limiter<(Arc<str>, IpAddr)>,
    /// POST activities and uploads, per bot and conversation.
    pub activity_limits: Limiter<(Arc<str>, ConversationId)>,
    draining: AtomicBool,
}

/// Everything a reload (SIGHUP) may change, swapped whole: a request or a reconnect loads it
/// once and sees one consistent configuration, secret and key set, while sockets stay up.
pub struct Live {
    pub config: Config,
    pub sealer: Arc<Sealer>,
    /// Token keys replaced by earlier reloads and the Unix second each stops opening tokens.
    pub retired_keys: Vec<(Secret, u64)>,
    /// Most specific route first (see [`Live::route`]).
    pub bots: Vec<Arc<Bot>>,
}

/// One bot as it serves now: its settings, its secret and its upstream client.
pub struct Bot {
    /// Metric label, log field, and the name tokens and tickets are bound to.
    pub name: Arc<str>,
    pub settings: BotConfig,
    /// The Direct Line secret injected upstream (the emulator's own in embedded mode).
    pub secret: Secret,
    /// Kept across reloads that do not change the upstream, so its connection pool survives.
    pub upstream: Arc<Upstream>,
    /// Signed-in mode (`[auth]`); kept across reloads that leave it unchanged, so its
    /// cached keys survive.
    pub identity: Option<Arc<crate::identity::Identity>>,
}

impl Live {
    /// The bot serving a request for `host` (without port, any case) and `path`: a bot bound
    /// to the host before one for any host, then the longest path prefix.
    pub fn route(&self, host: Option<&str>, path: &str) -> Option<&Arc<Bot>> {
        self.bots.iter().find(|bot| {
            let settings = &bot.settings;
            let host_matches = settings
                .host
                .as_deref()
                .is_none_or(|wanted| host.is_some_and(|h| h.eq_ignore_ascii_case(wanted)));
            host_matches && under_prefix(path, &settings.path_prefix)
        })
    }

    pub fn bot(&self, name: &str) -> Option<&Arc<Bot>> {
        self.bots.iter().find(|bot| &*bot.name == name)
    }
}

/// Orders bots so the first whose route matches is the most specific one.
pub fn most_specific_first(bots: &mut [Arc<Bot>]) {
    bots.sort_by(|a, b| {
        let (a, b) = (&a.settings, &b.settings);
        b.host
            .is_some()
            .cmp(&a.host.is_some())
            .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
    });
}

/// `/bots/a/v3/…` is under `/bots/a`; `/bots/ab/…` is not.
fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// Facts of one client connection, shared by every request on it.
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The peer's address as the `x-forwarded-for` value upstream requests carry: formatted
    /// once per connection rather than once per request.
    pub forwarded_for: HeaderValue,
}

impl Connection {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            local,
            forwarded_for: HeaderValue::from_str(&peer.ip().to_string())
                .unwrap_or_else(|_| HeaderValue::from_static("unknown")),
        }
    }
}

/// Per-request facts the phases share.
pub struct RequestContext {
    pub route: Route,
    pub peer: SocketAddr,
    pub forwarded_for: HeaderValue,
    /// The caller: the peer, or the client a trusted proxy forwarded for.
    pub client_ip: IpAddr,
    pub local: SocketAddr,
    pub request_id: HeaderValue,
    pub upstream_status: Option<u16>,
    /// Whether the caller sent `Accept-Encoding: gzip`; upstream gzip is decoded otherwise.
    pub accepts_gzip: bool,
    /// The settings this request runs with from start to end, even across a reload.
    pub live: Arc<Live>,
    /// The bot the request's host and path chose, from `live`.
    pub bot: Arc<Bot>,
}

impl RequestContext {
    /// Opens the caller's token for this request's bot and, when given, `conversation`.
    pub fn authorize(
        &self,
        headers: &http::HeaderMap,
        conversation: Option<&ConversationId>,
    ) -> Result<ClientToken, GatewayError> {
        crate::auth::authorize(&self.live.sealer, &self.bot.name, headers, conversation)
    }
}

/// What the access log and request metrics need once a response exists.
struct Finished<'a> {
    method: &'a Method,
    route: Route,
    bot: &'a str,
    started: Instant,
    request_id: HeaderValue,
    upstream_status: Option<u16>,
    client_ip: IpAddr,
}

impl Gateway {
    pub fn new(live: Live, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            hubs: Hubs::new(&metrics),
            session_limits: Limiter::default(),
            activity_limits: Limiter::default(),
            live: ArcSwap::from_pointee(live),
            metrics,
            draining: AtomicBool::new(false),
        })
    }

    /// The current settings. Cheap (no reference-count traffic on the hot path); hold it for
    /// one request or one reconnect, not for a socket's lifetime, so reloads reach it.
    pub fn live(&self) -> Guard<Arc<Live>> {
        self.live.load()
    }

    /// The current settings as an owned handle, for work that outlives a borrow.
    pub fn live_owned(&self) -> Arc<Live> {
        self.live.load_full()
    }

    /// Installs reloaded settings; requests already running finish with the ones they loaded.
    pub fn replace_live(&self, live: Live) {
        self.live.store(Arc::new(live));
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Readiness goes false and new requests get 503; open client sockets go on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// The stream half of a drain (DESIGN §5): open client sockets are served for
    /// `stream.drain_period` or until they have all gone, then the rest are closed with 1001
    /// over `stream.drain_spread`. Returns once their close frames had a moment to leave.
    pub async fn drain_streams(&self) {
        let stream = self.live().config.stream.clone();
        let deadline = tokio::time::Instant::now() + stream.drain_period;
        // Polled: a socket's end is not an event anyone waits on, and a drain is rare.
        while self.metrics.open_client_sockets() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let left = self.metrics.open_client_sockets();
        if left > 0 {
            tracing::info!(
                sockets = left,
                spread_ms = stream.drain_spread.as_millis() as u64,
                "drain period over; closing the remaining client sockets with 1001"
            );
        }
        let closed = self.hubs.close_all_for_drain(stream.drain_spread).await;
        self.metrics.drain_closed.inc_by(closed as u64);
        // Each client task sends its close frame; give them a bounded moment to do so.
        let flushed = tokio::time::Instant::now() + Duration::from_secs(2);
        while self.metrics.open_client_sockets() > 0 && tokio::time::Instant::now() < flushed {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        connection: &Connection,
    ) -> Response<Body> {
        let (peer, local) = (connection.peer, connection.local);
        let started = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics.http_in_flight);
        let method = request.method().clone();
        let live = self.live_owned();
        let client_ip = client_ip(peer, request.headers(), &live.config.trusted_proxies);
        let request_id = request_id(request.headers());
        let Some(bot) = live
            .route(request_host(&request), request.uri().path())
            .cloned()
        else {
            let response = GatewayError::NotFound.into_response();
            return self.finish(
                response,
                Finished {
                    method: &method,
                    route: Route::Unknown,
                    bot: NO_BOT,
                    started,
                    request_id,
                    upstream_status: None,
                    client_ip,
                },
            );
        };
        let origin =
            cors::allowed_origin(&bot.settings.allowed_origins, request.headers()).cloned();
        let mut ctx = RequestContext {
            route: Route::Unknown,
            peer,
            forwarded_for: connection.forwarded_for.clone(),
            client_ip,
            local,
            request_id,
            upstream_status: None,
            accepts_gzip: accepts_gzip(request.headers()),
            live,
            bot,
        };
        let result = self.route(request, &mut ctx).await;
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                self.record_refusal(&error, &ctx);
                error.into_response()
            }
        };
        if let Some(origin) = &origin
            && ctx.route != Route::Preflight
        {
            cors::decorate(response.headers_mut(), origin);
        }
        let RequestContext {
            route,
            request_id,
            upstream_status,
            client_ip,
            bot,
            ..
        } = ctx;
        self.finish(
            response,
            Finished {
                method: &method,
                route,
                bot: &bot.name,
                started,
                request_id,
                upstream_status,
                client_ip,
            },
        )
    }

    /// The request id header, the request metrics and the access-log line.
    fn finish(&self, mut response: Response<Body>, done: Finished<'_>) -> Response<Body> {
        let status = response.status().as_u16();
        let elapsed = done.started.elapsed();
        let route = done.route.as_str();
        self.metrics
            .http_requests
            .with_label_values(&[
                route,
                method_label(done.method),
                status_class(status),
                done.bot,
            ])
            .inc();
        self.metrics
            .http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "access",
            route,
            bot = done.bot,
            method = %done.method,
            status,
            upstream_status = done.upstream_status,
            // To 10 µs: `0.04`, not `0.041387999999999994`, in both formats.
            duration_ms = (elapsed.as_secs_f64() * 100_000.0).round() / 100.0,
            request_id = done.request_id.to_str().unwrap_or(""),
            client_ip = %done.client_ip,
        );
        response
            .headers_mut()
            .insert("x-request-id", done.request_id);
        response
    }

    async fn route(
        self: &Arc<Self>,
        request: Request<Incoming>,
        ctx: &mut RequestContext,
    ) -> Result<Response<Body>, GatewayError> {
        let live = ctx.live.clone();
        let config = &live.config;
        let uri = request.uri();
        if uri.path_and_query().map_or(0, |pq| pq.as_str().len()) > config.limits.max_url_bytes {
            return Err(GatewayError::UrlTooLong);
        }
        let header_bytes: usize = request
            .headers()
            .iter()
            .map(|(name, value)| name.as_str().len() + value.len() + 4)
            .sum();
        // HTTP/1.1's parser counts fields itself; HTTP/2 has only a byte limit in hyper.
        if header_bytes > config.limits.max_header_bytes
            || request.headers().len() > config.limits.max_header_count
        {
            return Err(GatewayError::HeadersTooLarge);
        }
        // RFC 9112 §3.2: a server must answer 400 to an HTTP/1.1 request without a Host, or
        // with more than one; two would also let a proxy in front and this gateway disagree
        // about which bot (host binding) a request is for.
        if request.version() == http::Version::HTTP_11
            && request.headers().get_all(http::header::HOST).iter().count() != 1
        {
            return Err(GatewayError::BadHost);
        }
        let bot = ctx.bot.clone();
        let settings = &bot.settings;
        if serves_demo(settings, request.method(), uri.path()) {
            ctx.route = Route::Demo;
            return Ok(crate::demo::page(&bot.name));
        }
        let endpoint = Endpoint::parse(request.method(), uri.path(), &settings.path_prefix)?;
        ctx.route = endpoint.route();
        if self.is_draining() && !matches!(endpoint, Endpoint::Preflight(_)) {
            return Err(GatewayError::Draining);
        }
        if matches!(
            endpoint,
            Endpoint::TokensGenerate | Endpoint::StartConversation
        ) {
            // A browser on another site must not mint tokens for this bot; callers without
            // an Origin (a server fetching tokens for its page) are not browsers.
            if !settings.allowed_origins.is_empty()
                && request.headers().contains_key(http::header::ORIGIN)
                && cors::allowed_origin(&settings.allowed_origins, request.headers()).is_none()
            {
                return Err(GatewayError::OriginNotAllowed);
            }
            self.limit(
                &self.session_limits,
                (bot.name.clone(), ctx.client_ip),
                settings.rate_limits.sessions,
                ctx,
            )?;
        }
        match endpoint {
            Endpoint::Preflight(_) => Ok(cors::preflight(
                &settings.allowed_origins,
                request.headers(),
            )),
            Endpoint::TokensGenerate => rest::generate_token(self, request, ctx).await,
            Endpoint::TokensRefresh => rest::refresh_token(self, request, ctx).await,
            Endpoint::StartConversation => rest::start_conversation(self, request, ctx).await,
            Endpoint::Reconnect(id) => rest::reconnect(self, &id, request, ctx).await,
            Endpoint::GetActivities(id) => rest::get_activities(self, &id, request, ctx).await,
            Endpoint::PostActivity(id) => rest::post_activity(self, &id, request, ctx).await,
            Endpoint::Upload(id) => rest::upload(self, &id, request, ctx).await,
            Endpoint::SessionId => rest::session_id(self, request, ctx).await,
            Endpoint::Stream {
                conversation,
                multimodal,
            } => crate::stream::accept(self, conversation, multimodal, request, ctx),
        }
    }

    /// Takes a token from `key`'s bucket or refuses with 429 and a whole-second Retry-After.
    pub fn limit<K: Eq + std::hash::Hash + Clone>(
        &self,
        limiter: &Limiter<K>,
        key: K,
        rate: Rate,
        ctx: &RequestContext,
    ) -> Result<(), GatewayError> {
        limiter.check(key, rate, Instant::now()).map_err(|wait| {
            self.metrics
                .rate_limited
                .with_label_values(&[ctx.route.as_str(), &ctx.bot.name])
                .inc();
            GatewayError::RateLimited {
                retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
            }
        })
    }

    /// Forgets rate buckets that have refilled; called periodically.
    pub fn sweep_limits(&self) {
        let live = self.live();
        let now = Instant::now();
        self.session_limits.sweep(now, |(bot, _)| {
            live.bot(bot).map(|b| b.settings.rate_limits.sessions)
        });
        self.activity_limits.sweep(now, |(bot, _)| {
            live.bot(bot).map(|b| b.settings.rate_limits.activities)
        });
    }

    fn record_refusal(&self, error: &GatewayError, ctx: &RequestContext) {
        if *error == GatewayError::BodyTimeout {
            let phase = if ctx.route == Route::Upload {
                "upload"
            } else {
                "body"
            };
            self.metrics
                .client_timeouts
                .with_label_values(&[phase])
                .inc();
        }
        if let Some(reason) = error.auth_refusal_reason() {
            self.metrics
                .auth_refusals
                .with_label_values(&[reason, &ctx.bot.name])
                .inc();
        }
        let request_id = ctx.request_id.to_str().unwrap_or("");
        match error.blame() {
            Blame::Client => {
                tracing::debug!(route = ctx.route.as_str(), request_id, error = %error, "refused")
            }
            Blame::Upstream => {
                tracing::warn!(route = ctx.route.as_str(), request_id, error = %error, "upstream failure")
            }
            Blame::Gateway => {
                tracing::error!(route = ctx.route.as_str(), request_id, error = %error, "gateway failure")
            }
        }
    }
}

/// Counts a request as in flight until dropped, also when the client goes away mid-request
/// and hyper drops the handler's future.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn enter(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// The request's host without the port: the URI's authority (HTTP/2, absolute form), else `Host`.
fn request_host(request: &Request<Incoming>) -> Option<&str> {
    let authority = match request.uri().authority() {
        Some(authority) => authority.as_str(),
        None => request.headers().get(http::header::HOST)?.to_str().ok()?,
    };
    Some(host_of(authority))
}

fn host_of(authority: &str) -> &str {
    let host = match authority.rsplit_once('@') {
        Some((_, host)) => host,
        None => authority,
    };
    if host.starts_with('[') {
        return host.split_inclusive(']').next().unwrap_or(host);
    }
    host.split(':').next().unwrap_or(host)
}

fn serves_demo(config: &BotConfig, method: &Method, path: &str) -> bool {
    config.upstream == UpstreamTarget::Embedded
        && *method == Method::GET
        && path
            .strip_prefix(config.path_prefix.as_str())
            .is_some_and(|rest| rest == "/" || rest.is_empty())
}

fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::OPTIONS => "OPTIONS",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        _ => "other",
    }
}

/// Whether the caller accepts a gzip body (RFC 9110 §12.5.3): `gzip` or `*` with a q-value
/// above zero; an explicit `gzip;q=0` refuses it whatever `*` says.
fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    let mut gzip = None;
    let mut any = None;
    for coding in headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut parts = coding.split(';');
        let name = parts.next().unwrap_or("").trim();
        let acceptable = parts
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .next_back()
            .is_none_or(|q| q.trim().parse::<f32>().is_ok_and(|q| q > 0.0));
        if name.eq_ignore_ascii_case("gzip") || name.eq_ignore_ascii_case("x-gzip") {
            gzip = Some(acceptable);
        } else if name == "*" {
            any = Some(acceptable);
        }
    }
    gzip.or(any).unwrap_or(false)
}

/// Keeps a caller's `x-request-id` when it is short and printable, else mints one.
fn request_id(headers: &http::HeaderMap) -> HeaderValue {
    if let Some(value) = headers.get("x-request-id")
        && value.len() <= 128
        && !value.is_empty()
        && value.as_bytes().iter().all(|b| b.is_ascii_graphic())
    {
        return value.clone();
    }
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut id = [0u8; 32];
    let random = fastrand::u128(..);
    for (i, digit) in id.iter_mut().enumerate() {
        *digit = HEX[(random >> (124 - 4 * i) & 0xf) as usize];
    }
    HeaderValue::from_bytes(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_32_hex_digits_unless_the_caller_sent_a_sane_one() {
        let empty = http::HeaderMap::new();
        let a = request_id(&empty);
        let b = request_id(&empty);
        assert_ne!(a, b);
        for id in [&a, &b] {
            assert_eq!(id.len(), 32);
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
            );
        }
        let mut sent = http::HeaderMap::new();
        sent.insert("x-request-id", HeaderValue::from_static("trace-7"));
        assert_eq!(request_id(&sent), "trace-7");
        sent.insert("x-request-id", HeaderValue::from_static("has space"));
        assert_eq!(request_id(&sent).len(), 32);
    }

    #[test]
    fn forwarded_for_is_the_peer_ip_without_its_port() {
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        for (peer, expected) in [
            ("192.0.2.7:50123", "192.0.2.7"),
            ("[2001:db8::1]:443", "2001:db8::1"),
            (
                "[ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255]:1",
                "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
            ),
        ] {
            let connection = Connection::new(peer.parse().unwrap(), local);
            assert_eq!(connection.forwarded_for, expected);
        }
    }

    #[test]
    fn accept_encoding_q_values_are_honoured() {
        for (value, gzip) in [
            ("gzip", true),
            ("gzip, deflate, br", true),
            ("deflate, GZIP;q=0.5", true),
            ("gzip;q=0", false),
            ("gzip; q=0.000", false),
            ("*", true),
            ("*;q=0", false),
            ("*, gzip;q=0", false),
            ("identity", false),
            ("br;q=1, *;q=0.1", true),
            ("gzip;q=abc", false),
            ("", false),
        ] {
            let mut headers = http::HeaderMap::new();
            headers.insert(
                http::header::ACCEPT_ENCODING,
                HeaderValue::from_static(value),
            );
            assert_eq!(accepts_gzip(&headers), gzip, "{value:?}");
        }
        assert!(!accepts_gzip(&http::HeaderMap::new()));
    }

    #[test]
    fn hosts_lose_their_port_and_credentials() {
        for (authority, host) in [
            ("chat.contoso.com", "chat.contoso.com"),
            ("chat.contoso.com:8443", "chat.contoso.com"),
            ("user:pw@chat.contoso.com:80", "chat.contoso.com"),
            ("[::1]:8080", "[::1]"),
            ("127.0.0.1:8080", "127.0.0.1"),
        ] {
            assert_eq!(host_of(authority), host, "{authority}");
        }
    }

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under_prefix(
            "/bots/a/v3/directline/tokens/generate",
            "/bots/a"
        ));
        assert!(under_prefix("/bots/a", "/bots/a"));
        assert!(under_prefix("/v3/directline/conversations", ""));
        assert!(!under_prefix("/bots/ab/v3/directline", "/bots/a"));
        assert!(!under_prefix("/v3/directline", "/bots/a"));
    }
}
