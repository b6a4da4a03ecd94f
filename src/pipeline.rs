//! A client request in named phases (ARCHITECTURE §9): **admit** (URL and header sizes, Host,
//! draining) → **select bot** (host, prefix) → **parse** (typed endpoint) → **check origin**
//! → **authorize** (token, ownership) → **rate-limit** → **dispatch** (the route) →
//! **respond** (CORS, errors as Direct Line bodies) → **log** (access line, metrics). What
//! each route needs is declared once in [`crate::routes::needs`]; the phases do it.
//!
//! Hand-written rather than a stack of tower layers: the phases share one context (bot,
//! route, client IP) that each later phase reads, and the measured hot path has no boxing
//! or per-layer future (docs/DESIGN-NOTES.md, "tower").

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Instant;

use http::{HeaderValue, Method, Request, Response};
use hyper::body::Incoming;

use crate::auth::OpenedTokens;
use crate::boxed_body::Body;
use crate::config::{BotConfig, Config, NO_BOT, UpstreamTarget};
use crate::cors;
use crate::endpoint::{Endpoint, Route};
use crate::error::{Blame, GatewayError, Refusal};
use crate::forwarded::{client_ip, client_key, forwarded_for_value};
use crate::gateway::Gateway;
use crate::identity::SignedIn;
use crate::live::{Bot, Live};
use crate::metrics::status_class;
use crate::request_headers::{accepts_gzip, request_host, request_id};
use crate::routes::context::RequestContext;
use crate::routes::needs::{self, Bucket, Credential, Needs};
use crate::routes::{activities, conversations, session, stream, tokens, upload};
use crate::seal::ClientToken;
use crate::telemetry::RequestTrace;

/// Facts of one client connection, shared by every request on it.
pub struct Connection {
    pub peer: SocketAddr,
    pub local: SocketAddr,
    /// The peer's address as the `x-forwarded-for` value upstream requests carry: formatted
    /// once per connection rather than once per request.
    pub forwarded_for: HeaderValue,
    /// The client token this connection presented last, opened (see [`OpenedTokens`]).
    pub opened: Arc<OpenedTokens>,
}

impl Connection {
    pub fn new(peer: SocketAddr, local: SocketAddr) -> Self {
        Self {
            peer,
            local,
            forwarded_for: forwarded_for_value(peer),
            opened: Arc::default(),
        }
    }
}

/// What the authorize phase opened for the route.
enum Authorized {
    Nothing,
    /// `tokens/generate`: who the identity provider signed in (signed-in mode only).
    SignIn(Option<SignedIn>),
    Token(ClientToken),
    /// A token for `tokens/refresh`, and whether it had expired (a durable resume).
    Refresh(ClientToken, bool),
}

impl Authorized {
    /// The token a route declared it needs; the table guarantees there is one.
    fn token(self) -> Result<ClientToken, GatewayError> {
        match self {
            Authorized::Token(token) | Authorized::Refresh(token, _) => Ok(token),
            Authorized::Nothing | Authorized::SignIn(_) => Err(GatewayError::internal(
                "a route that needs a token authorized without one",
            )),
        }
    }

    /// The conversation a `tokens/refresh` is for, which its bucket is keyed by.
    fn refreshing(&self) -> Option<&str> {
        match self {
            Authorized::Refresh(token, _) => Some(&token.conversation_id),
            _ => None,
        }
    }
}

/// Serves one client request through every phase; never fails (errors are responses).
pub async fn handle(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    connection: &Connection,
) -> Response<Body> {
    let started = Instant::now();
    let _in_flight = InFlight::enter(&gateway.metrics.http_in_flight);
    let method = request.method().clone();
    let live = gateway.live_owned();
    let client_ip = client_ip(
        connection.peer,
        request.headers(),
        &live.config.trusted_proxies,
    );
    let request_id = request_id(request.headers());
    // Tracing off: `None`, and the caller's traceparent is never read.
    let trace = gateway
        .telemetry
        .as_ref()
        .map(|telemetry| telemetry.server_span(request.headers(), &method));
    let Some(bot) = select_bot(&live, &request) else {
        let response = Refusal::from(GatewayError::NotFound).into_response();
        return log(
            gateway,
            response,
            Finished {
                method: &method,
                route: Route::Unknown,
                bot: NO_BOT,
                started,
                request_id,
                upstream_status: None,
                client_ip,
                trace,
            },
        );
    };
    let origin = cors::allowed_origin(&bot.settings.allowed_origins, request.headers()).cloned();
    let mut ctx = RequestContext {
        route: Route::Unknown,
        peer: connection.peer,
        forwarded_for: connection.forwarded_for.clone(),
        client_ip,
        local: connection.local,
        request_id,
        upstream_status: None,
        accepts_gzip: accepts_gzip(request.headers()),
        live,
        bot,
        opened: connection.opened.clone(),
        trace,
    };
    let result = run(gateway, request, &mut ctx).await;
    let response = respond(gateway, result, &ctx, origin.as_ref());
    let RequestContext {
        route,
        request_id,
        upstream_status,
        client_ip,
        bot,
        trace,
        ..
    } = ctx;
    log(
        gateway,
        response,
        Finished {
            method: &method,
            route,
            bot: &bot.name,
            started,
            request_id,
            upstream_status,
            client_ip,
            trace,
        },
    )
}

/// The phases between choosing the bot and answering.
async fn run(
    gateway: &Arc<Gateway>,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Refusal> {
    admit(&request, &ctx.live.config)?;
    let bot = ctx.bot.clone();
    if serves_demo(&bot.settings, request.method(), request.uri().path()) {
        ctx.route = Route::Demo;
        let embedded = bot.settings.upstream == UpstreamTarget::Embedded;
        return Ok(crate::demo::page(&bot.name, embedded));
    }
    let endpoint = Endpoint::parse(
        request.method(),
        request.uri().path(),
        &bot.settings.path_prefix,
    )?;
    ctx.route = endpoint.route();
    if let Some(trace) = &ctx.trace {
        trace.conversation(endpoint.conversation());
    }
    let needs = needs::of(&endpoint);
    if gateway.is_draining() && !needs.while_draining {
        return Err(GatewayError::Draining.into());
    }
    if needs.origin_checked {
        check_origin(&bot.settings, request.headers())?;
    }
    // A sign-in is checked after its bucket (see `Credential::SignIn`), every other
    // credential before, so forged tokens cannot spend a real caller's rate.
    let authorized = if needs.credential == Credential::SignIn {
        rate_limit(gateway, &endpoint, needs, ctx, None)?;
        authorize(&endpoint, needs, request.headers(), ctx).await?
    } else {
        let authorized = authorize(&endpoint, needs, request.headers(), ctx).await?;
        rate_limit(gateway, &endpoint, needs, ctx, authorized.refreshing())?;
        authorized
    };
    dispatch(gateway, endpoint, authorized, request, ctx).await
}

/// Admit: what every request must satisfy before anything reads it further.
fn admit(request: &Request<Incoming>, config: &Config) -> Result<(), GatewayError> {
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
    Ok(())
}

/// Select bot: the one bound to the request's host, then the longest path prefix.
fn select_bot(live: &Live, request: &Request<Incoming>) -> Option<Arc<Bot>> {
    live.bot_for(request_host(request), request.uri().path())
        .cloned()
}

/// Check origin: a browser on another site must not mint tokens for this bot; callers
/// without an Origin (a server fetching tokens for its page) are not browsers.
fn check_origin(settings: &BotConfig, headers: &http::HeaderMap) -> Result<(), GatewayError> {
    if !settings.allowed_origins.is_empty()
        && headers.contains_key(http::header::ORIGIN)
        && cors::allowed_origin(&settings.allowed_origins, headers).is_none()
    {
        return Err(GatewayError::OriginNotAllowed);
    }
    Ok(())
}

/// Authorize: opens the credential the route declared, for this bot (and conversation).
async fn authorize(
    endpoint: &Endpoint,
    needs: Needs,
    headers: &http::HeaderMap,
    ctx: &RequestContext,
) -> Result<Authorized, GatewayError> {
    Ok(match needs.credential {
        Credential::None => Authorized::Nothing,
        Credential::SignIn => match &ctx.bot.identity {
            Some(identity) => Authorized::SignIn(Some(identity.sign_in(headers).await?)),
            None => Authorized::SignIn(None),
        },
        Credential::Token => Authorized::Token(ctx.authorize(headers, None)?),
        Credential::ConversationToken => {
            Authorized::Token(ctx.authorize(headers, endpoint.conversation())?)
        }
        Credential::RefreshableToken => {
            let (token, expired) = crate::auth::authorize_refresh(
                &ctx.live.sealer,
                &ctx.bot.name,
                headers,
                ctx.bot.settings.resume_window,
            )?;
            if expired && let Some(identity) = &ctx.bot.identity {
                // Signed-in mode (ARCHITECTURE §12): the expired token proves ownership of the
                // conversation, a current sign-in proves the person is still its owner.
                identity.prove(headers, &token.user_id).await?;
            }
            Authorized::Refresh(token, expired)
        }
    })
}

/// Rate-limit: one token from the route's bucket, or 429 with a whole-second Retry-After.
/// `refreshing` is the conversation of a `tokens/refresh`'s token.
fn rate_limit(
    gateway: &Gateway,
    endpoint: &Endpoint,
    needs: Needs,
    ctx: &RequestContext,
    refreshing: Option<&str>,
) -> Result<(), GatewayError> {
    let rates = &ctx.bot.settings.rate_limits;
    let now = Instant::now();
    let client = client_key(ctx.client_ip, ctx.live.config.client_ipv6_prefix);
    let refused = match (needs.bucket, endpoint.conversation()) {
        (Bucket::None, _) => return Ok(()),
        // Before the key is built: it clones the conversation id.
        (Bucket::Activities, _) if rates.activities.is_unlimited() => return Ok(()),
        (Bucket::Sessions, _) => {
            gateway
                .session_limits
                .check((ctx.bot.name.clone(), client), rates.sessions, now)
        }
        (Bucket::Activities, Some(conversation)) => gateway.activity_limits.check_key(
            &(ctx.bot.name.clone(), conversation.clone()),
            rates.activities,
            now,
        ),
        (Bucket::Activities, None) => {
            return Err(GatewayError::internal(
                "the activities bucket on a route without a conversation",
            ));
        }
        // Per conversation, then per client IP: a loop on one conversation and many
        // conversations from one address are both cut off before they reach Direct Line.
        (Bucket::Refresh, _) => {
            let Some(conversation) = refreshing else {
                return Err(GatewayError::internal(
                    "the refresh bucket on a route without a refreshed conversation",
                ));
            };
            gateway
                .refresh_limits
                .check(
                    (ctx.bot.name.clone(), conversation.to_owned()),
                    rates.refresh,
                    now,
                )
                .and_then(|()| {
                    gateway.refresh_ip_limits.check(
                        (ctx.bot.name.clone(), client),
                        rates.refresh_per_ip,
                        now,
                    )
                })
        }
    };
    refused.map_err(|wait| {
        gateway
            .metrics
            .rate_limited
            .with_label_values(&[ctx.route.as_str(), &ctx.bot.name])
            .inc();
        GatewayError::RateLimited {
            retry_after_secs: wait.as_secs_f64().ceil().max(1.0) as u64,
        }
    })
}

/// Dispatch: the route's handler, with what the earlier phases opened.
async fn dispatch(
    gateway: &Arc<Gateway>,
    endpoint: Endpoint,
    authorized: Authorized,
    request: Request<Incoming>,
    ctx: &mut RequestContext,
) -> Result<Response<Body>, Refusal> {
    match endpoint {
        Endpoint::Preflight(_) => Ok(cors::preflight(
            &ctx.bot.settings.allowed_origins,
            ctx.bot.settings.allow_credentials,
            request.headers(),
        )?),
        Endpoint::TokensGenerate => {
            let Authorized::SignIn(signed_in) = authorized else {
                return Err(
                    GatewayError::internal("tokens/generate authorized without a sign-in").into(),
                );
            };
            tokens::generate_token(gateway, request, ctx, signed_in).await
        }
        Endpoint::TokensRefresh => {
            let Authorized::Refresh(token, expired) = authorized else {
                return Err(
                    GatewayError::internal("tokens/refresh authorized without a refresh").into(),
                );
            };
            tokens::refresh_token(gateway, ctx, token, expired).await
        }
        Endpoint::StartConversation => {
            conversations::start_conversation(gateway, request, ctx, authorized.token()?).await
        }
        Endpoint::Reconnect(id) => {
            conversations::reconnect(gateway, &id, request, ctx, authorized.token()?).await
        }
        Endpoint::GetActivities(id) => {
            activities::get_activities(gateway, &id, request, ctx, authorized.token()?).await
        }
        Endpoint::PostActivity(id) => {
            activities::post_activity(gateway, &id, request, ctx, authorized.token()?).await
        }
        Endpoint::Upload(id) => {
            upload::upload(gateway, &id, request, ctx, authorized.token()?).await
        }
        Endpoint::SessionId => {
            session::session_id(gateway, request, ctx, authorized.token()?).await
        }
        Endpoint::Stream {
            conversation,
            multimodal,
        } => Ok(stream::accept(
            gateway,
            conversation,
            multimodal,
            request,
            ctx,
        )?),
    }
}

/// Respond: a refusal becomes its Direct Line body (the gateway's own counted and logged by
/// blame; Direct Line's was counted where it was read), and a browser on an allowed origin
/// gets the CORS headers.
fn respond(
    gateway: &Gateway,
    result: Result<Response<Body>, Refusal>,
    ctx: &RequestContext,
    origin: Option<&HeaderValue>,
) -> Response<Body> {
    let mut response = match result {
        Ok(response) => response,
        Err(refusal) => {
            if let Refusal::Gateway(error) = &refusal {
                record_refusal(gateway, error, ctx);
            }
            refusal.into_response()
        }
    };
    if let Some(origin) = origin
        && ctx.route != Route::Preflight
    {
        cors::decorate(
            response.headers_mut(),
            origin,
            ctx.bot.settings.allow_credentials,
        );
    }
    response
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
    trace: Option<RequestTrace>,
}

/// Log: the request id header, the request metrics and the access-log line.
fn log(gateway: &Gateway, mut response: Response<Body>, done: Finished<'_>) -> Response<Body> {
    let status = response.status().as_u16();
    let elapsed = done.started.elapsed();
    let route = done.route.as_str();
    gateway
        .metrics
        .http_requests
        .with_label_values(&[
            route,
            method_label(done.method),
            status_class(status),
            done.bot,
        ])
        .inc();
    gateway
        .metrics
        .http_duration
        .with_label_values(&[route])
        .observe(elapsed.as_secs_f64());
    let trace_id = done.trace.as_ref().and_then(RequestTrace::log_id);
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
        trace_id = trace_id.map(tracing::field::display),
    );
    if let Some(trace) = done.trace {
        trace.finish(crate::telemetry::Finish {
            method: done.method,
            route: done.route,
            status,
            bot: done.bot,
            request_id: &done.request_id,
            upstream_status: done.upstream_status,
        });
    }
    response
        .headers_mut()
        .insert("x-request-id", done.request_id);
    response
}

fn record_refusal(gateway: &Gateway, error: &GatewayError, ctx: &RequestContext) {
    if *error == GatewayError::BodyTimeout {
        let phase = if ctx.route == Route::Upload {
            "upload"
        } else {
            "body"
        };
        gateway
            .metrics
            .client_timeouts
            .with_label_values(&[phase])
            .inc();
    }
    if let Some(reason) = error.auth_refusal_reason() {
        gateway
            .metrics
            .auth_refusals
            .with_label_values(&[reason, &ctx.bot.name])
            .inc();
    }
    // A refresh past `resume_window` is refused by the authorize phase; it is a resume that
    // could not be, and counted as one (`token_resumes_total{result="past_window"}`).
    if ctx.route == Route::TokensRefresh && *error == GatewayError::TokenExpired {
        gateway
            .metrics
            .token_resumes
            .with_label_values(&["past_window", &ctx.bot.name])
            .inc();
    }
    let request_id = ctx.request_id.to_str().unwrap_or("");
    let trace_id = ctx
        .trace
        .as_ref()
        .and_then(RequestTrace::log_id)
        .map(tracing::field::display);
    match error.blame() {
        Blame::Client => {
            tracing::debug!(route = ctx.route.as_str(), request_id, trace_id, error = %error, "refused")
        }
        Blame::Upstream => {
            tracing::warn!(route = ctx.route.as_str(), request_id, trace_id, error = %error.log_line(), "upstream failure")
        }
        Blame::Gateway => {
            tracing::error!(route = ctx.route.as_str(), request_id, trace_id, error = %error.log_line(), "gateway failure")
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

fn serves_demo(config: &BotConfig, method: &Method, path: &str) -> bool {
    (config.upstream == UpstreamTarget::Embedded || config.demo_page)
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
