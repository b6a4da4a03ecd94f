//! The gateway's shared state and the request pipeline: parse → authorize → upstream → rewrite → respond.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use arc_swap::{ArcSwap, Guard};
use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::config::{Config, Rate, UpstreamTarget};
use crate::cors;
use crate::endpoint::{ConversationId, Endpoint, Route};
use crate::error::{Blame, GatewayError};
use crate::metrics::{Metrics, status_class};
use crate::ratelimit::{Limiter, client_ip};
use crate::rest;
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::stream::Hubs;
use crate::upstream::Upstream;

pub struct Gateway {
    live: ArcSwap<Live>,
    pub metrics: Arc<Metrics>,
    pub hubs: Hubs,
    /// tokens/generate and conversation starts, per client IP.
    pub session_limits: Limiter<IpAddr>,
    /// POST activities and uploads, per conversation.
    pub activity_limits: Limiter<ConversationId>,
    draining: AtomicBool,
}

/// Everything a reload (SIGHUP) may change, swapped whole: a request or a reconnect loads it
/// once and sees one consistent configuration, secret and key set, while sockets stay up.
pub struct Live {
    pub config: Config,
    /// The Direct Line secret injected upstream (the emulator's own in embedded mode).
    pub secret: Secret,
    pub sealer: Arc<Sealer>,
    /// Kept across reloads that do not change the upstream, so its connection pool survives.
    pub upstream: Arc<Upstream>,
    /// Token keys replaced by earlier reloads and the Unix second each stops opening tokens.
    pub retired_keys: Vec<(Secret, u64)>,
}

/// Per-request facts the phases share.
pub struct RequestContext {
    pub route: Route,
    pub peer: SocketAddr,
    /// The caller: the peer, or the client a trusted proxy forwarded for.
    pub client_ip: IpAddr,
    pub local: SocketAddr,
    pub request_id: HeaderValue,
    pub upstream_status: Option<u16>,
    /// Whether the caller sent `Accept-Encoding: gzip`; upstream gzip is decoded otherwise.
    pub accepts_gzip: bool,
    /// The settings this request runs with from start to end, even across a reload.
    pub live: Arc<Live>,
}

impl Gateway {
    pub fn new(live: Live, metrics: Arc<Metrics>) -> Arc<Self> {
        Arc::new(Self {
            hubs: Hubs::default(),
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

    /// Readiness goes false, new requests get 503, live client sockets close with 1001.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
        self.hubs.close_all_for_drain();
    }

    pub async fn handle(
        self: &Arc<Self>,
        request: Request<Incoming>,
        peer: SocketAddr,
        local: SocketAddr,
    ) -> Response<Body> {
        let started = Instant::now();
        let _in_flight = InFlight::enter(&self.metrics.http_in_flight);
        let method = request.method().clone();
        let live = self.live_owned();
        let origin = cors::allowed_origin(&live.config, request.headers()).cloned();
        let mut ctx = RequestContext {
            route: Route::Unknown,
            peer,
            client_ip: client_ip(peer, request.headers(), &live.config.trusted_proxies),
            local,
            request_id: request_id(request.headers()),
            upstream_status: None,
            accepts_gzip: accepts_gzip(request.headers()),
            live,
        };
        let result = self.route(request, &mut ctx).await;
        let mut response = match result {
            Ok(response) => response,
            Err(error) => {
                self.record_refusal(&error, &ctx);
                error.into_response()
            }
        };
        let headers = response.headers_mut();
        headers.insert("x-request-id", ctx.request_id.clone());
        if let Some(origin) = &origin
            && ctx.route != Route::Preflight
        {
            cors::decorate(headers, origin);
        }
        let status = response.status().as_u16();
        let elapsed = started.elapsed();
        let route = ctx.route.as_str();
        self.metrics
            .http_requests
            .with_label_values(&[route, method_label(&method), status_class(status)])
            .inc();
        self.metrics
            .http_duration
            .with_label_values(&[route])
            .observe(elapsed.as_secs_f64());
        tracing::info!(
            target: "access",
            route,
            method = %method,
            status,
            upstream_status = ctx.upstream_status,
            duration_ms = elapsed.as_secs_f64() * 1000.0,
            request_id = ctx.request_id.to_str().unwrap_or(""),
            client_ip = %ctx.client_ip,
        );
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
        if header_bytes > config.limits.max_header_bytes {
            return Err(GatewayError::HeadersTooLarge);
        }
        if serves_demo(config, request.method(), uri.path()) {
            ctx.route = Route::Demo;
            return Ok(crate::demo::page());
        }
        let endpoint = Endpoint::parse(request.method(), uri.path(), &config.path_prefix)?;
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
            if !config.allowed_origins.is_empty()
                && request.headers().contains_key(http::header::ORIGIN)
                && cors::allowed_origin(config, request.headers()).is_none()
            {
                return Err(GatewayError::OriginNotAllowed);
            }
            self.limit(
                &self.session_limits,
                &ctx.client_ip,
                config.rate_limits.sessions,
                ctx,
            )?;
        }
        match endpoint {
            Endpoint::Preflight(_) => Ok(cors::preflight(config, request.headers())),
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
        key: &K,
        rate: Rate,
        ctx: &RequestContext,
    ) -> Result<(), GatewayError> {
        limiter.check(key, rate, Instant::now()).map_err(|wait| {
            self.metrics
                .rate_limited
                .with_label_values(&[ctx.route.as_str()])
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
        self.session_limits
            .sweep(live.config.rate_limits.sessions, now);
        self.activity_limits
            .sweep(live.config.rate_limits.activities, now);
    }

    fn record_refusal(&self, error: &GatewayError, ctx: &RequestContext) {
        if let Some(reason) = error.auth_refusal_reason() {
            self.metrics
                .auth_refusals
                .with_label_values(&[reason])
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

fn serves_demo(config: &Config, method: &Method, path: &str) -> bool {
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

fn accepts_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get_all(http::header::ACCEPT_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|coding| {
            coding
                .split(';')
                .next()
                .is_some_and(|c| c.trim().eq_ignore_ascii_case("gzip"))
        })
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
    let id = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    HeaderValue::from_str(&id).unwrap_or_else(|_| HeaderValue::from_static("unknown"))
}
