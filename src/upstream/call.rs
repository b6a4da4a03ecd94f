//! The one path every upstream HTTP call takes (ARCHITECTURE §9): REST routes, the stream's
//! reconnect, catch-up and token refresh, the durable resume, and a Copilot Studio
//! environment's token endpoint and regional settings (ARCHITECTURE §10). It holds the credential
//! policy (secret, conversation token, or the secret with the enhanced-authentication
//! fallback; never a secret for a bot without one), the request id and forwarding headers,
//! the timeout, and the upstream metrics of every attempt, so none of that is written twice.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Method, Response, StatusCode, header};
use hyper::body::Incoming;

use super::answer_body::{error_code, read_body, read_body_within};
use super::client::Upstream;
use crate::boxed_body::{self, Body};
use crate::error::GatewayError;
use crate::live::Bot;
use crate::metrics::{Metrics, status_class};
use crate::secret;
use crate::telemetry::{Parent, UpstreamSpan};

/// Which Direct Line credential a call carries.
#[derive(Clone, Copy)]
pub enum Credential<'a> {
    /// The bot's secret.
    Secret,
    /// A conversation's Direct Line token.
    Token(&'a str),
    /// The secret; when Direct Line answers `400 MissingProperty` (enhanced
    /// authentication, PROTOCOL §0.5, refused before reaching the bot), once more with the
    /// conversation token. Only for bodies that can be sent twice.
    SecretThenToken(&'a str),
    /// The secret, or for a bot without one the conversation token; for bodies sent once.
    SecretElseToken(&'a str),
    /// No `Authorization` at all: a Copilot Studio environment's token endpoint and
    /// regional settings take none.
    None,
}

/// Which host a call goes to.
#[derive(Clone, Copy)]
enum Target {
    /// The bot's Direct Line base (fixed, or discovered).
    Directline,
    /// The bot's Copilot Studio environment (its token endpoint's origin).
    Environment,
}

/// An upstream answer: still streaming, or already read (when the call had to look inside),
/// or an error body past the error-body limit (left unread).
pub enum Answer {
    Streaming(Response<Incoming>),
    Read(http::response::Parts, Bytes),
    Oversized(http::response::Parts),
}

impl Answer {
    pub fn status(&self) -> StatusCode {
        match self {
            Answer::Streaming(response) => response.status(),
            Answer::Read(parts, _) | Answer::Oversized(parts) => parts.status,
        }
    }

    /// The whole answer, read within `timeout` (bounded, gzip decoded); an oversized error
    /// body is the upstream's failure.
    pub async fn read(
        self,
        timeout: Duration,
    ) -> Result<(http::response::Parts, Bytes), GatewayError> {
        match self {
            Answer::Streaming(response) => read_body(response, timeout).await,
            Answer::Read(parts, bytes) => Ok((parts, bytes)),
            Answer::Oversized(_) => Err(GatewayError::upstream_invalid(
                "an answer over the size a Direct Line answer can have",
            )),
        }
    }
}

/// What a call came back with, and whether the conversation token was the credential that
/// answered (its answer then carries the user claim and a fresh token, PROTOCOL §0.5).
pub struct Reply {
    pub answer: Answer,
    pub via_token: bool,
}

/// The request id and client address a client request carries upstream, and its trace.
pub struct Forwarding<'a> {
    pub request_id: &'a HeaderValue,
    pub forwarded_for: &'a HeaderValue,
    /// The request's span while tracing is on (given here rather than by
    /// [`UpstreamCall::traced`], which would move the call once more per request).
    pub trace: Option<Parent>,
}

static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
static X_MS_BOT_AGENT: HeaderName = HeaderName::from_static("x-ms-bot-agent");
static BOT_AGENT: HeaderValue = HeaderValue::from_static("DirectLine/3.0 (directline-gateway)");

enum CallBody {
    /// Sent as often as the credential policy needs (cheap clones of shared bytes).
    Replayable(Bytes),
    /// Sent once (uploads, streamed as they arrive).
    Once(Body),
}

/// One upstream call, built then [`send`](UpstreamCall::send)ed.
pub struct UpstreamCall<'a> {
    bot: &'a Bot,
    target: Target,
    method: Method,
    path: &'a str,
    credential: Credential<'a>,
    /// The `route` label of the upstream metrics (the client route, or `stream_resume`,
    /// `stream_catch_up`).
    label: &'static str,
    timeout: Duration,
    error_body_limit: usize,
    json: bool,
    /// `x-request-id` and `x-forwarded-for` of the client request.
    forwarding: Option<(HeaderValue, HeaderValue)>,
    /// Anything else the route passes on (cookies, an upload's content headers); empty
    /// (no allocation) for most calls.
    headers: Vec<(HeaderName, HeaderValue)>,
    body: CallBody,
    /// The span this call's client span is a child of, while tracing is on.
    trace: Option<Parent>,
}

impl<'a> UpstreamCall<'a> {
    /// A call to `path` (starting `/v3/directline/`) of `bot`'s upstream, with no body.
    /// `error_body_limit` bounds the 400 body read to look for `MissingProperty`.
    pub fn new(
        bot: &'a Bot,
        method: Method,
        path: &'a str,
        credential: Credential<'a>,
        label: &'static str,
        timeout: Duration,
        error_body_limit: usize,
    ) -> Self {
        Self {
            bot,
            target: Target::Directline,
            method,
            path,
            credential,
            label,
            timeout,
            error_body_limit,
            json: false,
            forwarding: None,
            headers: Vec::new(),
            body: CallBody::Replayable(Bytes::new()),
            trace: None,
        }
    }

    /// A call to `path_and_query` of `bot`'s Copilot Studio environment instead, with no
    /// credential; a bot without one fails with [`GatewayError::Internal`] when sent.
    pub fn environment(
        bot: &'a Bot,
        path_and_query: &'a str,
        label: &'static str,
        timeout: Duration,
        error_body_limit: usize,
    ) -> Self {
        Self {
            target: Target::Environment,
            ..Self::new(
                bot,
                Method::GET,
                path_and_query,
                Credential::None,
                label,
                timeout,
                error_body_limit,
            )
        }
    }

    /// A JSON body (`Content-Type: application/json`).
    pub fn json(mut self, bytes: impl Into<Bytes>) -> Self {
        self.json = true;
        self.body = CallBody::Replayable(bytes.into());
        self
    }

    /// A body streamed once; the credential must not be [`Credential::SecretThenToken`].
    pub fn streamed(mut self, body: Body) -> Self {
        self.body = CallBody::Once(body);
        self
    }

    pub fn header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The client request's id and address, and the gateway's bot agent.
    pub fn forwarding(mut self, forwarding: Forwarding<'_>) -> Self {
        self.forwarding = Some((
            forwarding.request_id.clone(),
            forwarding.forwarded_for.clone(),
        ));
        self.trace = forwarding.trace;
        self
    }

    /// Traced as a child of `parent` (`None`: tracing off, or an untraced caller).
    pub fn traced(mut self, parent: Option<Parent>) -> Self {
        self.trace = parent;
        self
    }

    /// Sends the call by its credential policy; never retries otherwise (POST activities
    /// and uploads must not be repeated, PROTOCOL §4.2). Each attempt is measured.
    pub async fn send(self, metrics: &Metrics) -> Result<Reply, GatewayError> {
        let upstream = match self.target {
            Target::Directline => self.bot.upstream.current()?,
            Target::Environment => match &self.bot.environment {
                Some(environment) => environment.client.clone(),
                None => {
                    return Err(GatewayError::internal(
                        "a call to the token endpoint of a bot without a Copilot Studio environment",
                    ));
                }
            },
        };
        // A bot without a secret (a Copilot Studio agent's token endpoint) sends its
        // conversation token wherever the secret would go, and never tries a secret.
        let secret = self.bot.secret.as_ref();
        let (first, fallback, via_token) = match (self.credential, secret) {
            (Credential::None, _) => (None, None, false),
            (Credential::Secret, Some(secret)) => (Some(secret.bearer_header()), None, false),
            (Credential::Secret, None) => {
                return Err(GatewayError::internal(
                    "a call that needs the secret, for a bot without one",
                ));
            }
            // `via_token` reports the fallback only; Token callers know what they sent.
            (Credential::Token(token), _) => (Some(secret::bearer(token)), None, false),
            (Credential::SecretThenToken(token), Some(secret)) => {
                (Some(secret.bearer_header()), Some(token), false)
            }
            (Credential::SecretElseToken(_), Some(secret)) => {
                (Some(secret.bearer_header()), None, false)
            }
            (Credential::SecretThenToken(token) | Credential::SecretElseToken(token), None) => {
                (Some(secret::bearer(token)), None, true)
            }
        };
        let streaming = |response| Reply {
            answer: Answer::Streaming(response),
            via_token,
        };
        // Kept for the fallback only: the first clone of a `Bytes` made from a `Vec`
        // allocates its shared header, which a call without a fallback need not pay.
        let bytes = match (&self.body, fallback) {
            (CallBody::Replayable(bytes), Some(_)) => bytes.clone(),
            _ => Bytes::new(),
        };
        let mut call = self;
        let mut span = call.trace.take().and_then(|parent| {
            let host = upstream.host_names().1;
            parent.upstream(
                call.label,
                &call.method,
                host,
                &call.bot.name,
                &mut call.headers,
            )
        });
        let carries_secret = matches!(call.target, Target::Directline)
            && secret.is_some()
            && matches!(
                call.credential,
                Credential::Secret
                    | Credential::SecretThenToken(_)
                    | Credential::SecretElseToken(_)
            );
        let request = call.build(&upstream, first)?;
        let response = attempt(
            call.bot,
            &upstream,
            metrics,
            call.label,
            request,
            call.timeout,
            span.as_mut(),
        )
        .await?;
        if carries_secret {
            judge_secret(call.bot, metrics, call.label, response.status());
        }
        let Some(token) = fallback else {
            return Ok(streaming(response));
        };
        if response.status() != StatusCode::BAD_REQUEST {
            return Ok(streaming(response));
        }
        let (parts, read) = read_body_within(response, call.timeout, call.error_body_limit).await?;
        let Some(read) = read else {
            return Ok(Reply {
                answer: Answer::Oversized(parts),
                via_token: false,
            });
        };
        if error_code(&read).as_deref() != Some("MissingProperty") {
            return Ok(Reply {
                answer: Answer::Read(parts, read),
                via_token: false,
            });
        }
        call.body = CallBody::Replayable(bytes);
        if let Some(span) = &mut span {
            span.fallback();
        }
        let request = call.build(&upstream, Some(secret::bearer(token)))?;
        let response = attempt(
            call.bot,
            &upstream,
            metrics,
            call.label,
            request,
            call.timeout,
            span.as_mut(),
        )
        .await?;
        Ok(Reply {
            answer: Answer::Streaming(response),
            via_token: true,
        })
    }

    /// The request with `credential`; the body is taken (a retry puts it back first).
    fn build(
        &mut self,
        upstream: &Upstream,
        credential: Option<HeaderValue>,
    ) -> Result<http::Request<Body>, GatewayError> {
        let mut request = upstream.request(self.method.clone(), self.path, credential)?;
        {
            let headers = request.headers_mut();
            if self.json {
                headers.insert(
                    header::CONTENT_TYPE,
                    HeaderValue::from_static("application/json"),
                );
            }
            if let Some((request_id, forwarded_for)) = &self.forwarding {
                headers.insert(X_REQUEST_ID.clone(), request_id.clone());
                headers.insert(X_FORWARDED_FOR.clone(), forwarded_for.clone());
                headers.insert(X_MS_BOT_AGENT.clone(), BOT_AGENT.clone());
            }
            for (name, value) in &self.headers {
                headers.append(name.clone(), value.clone());
            }
        }
        let body = match std::mem::replace(&mut self.body, CallBody::Replayable(Bytes::new())) {
            CallBody::Replayable(bytes) if bytes.is_empty() => boxed_body::empty(),
            CallBody::Replayable(bytes) => boxed_body::full(bytes),
            CallBody::Once(body) => body,
        };
        Ok(request.map(|()| body))
    }
}

/// What an answer to a call carrying the secret says about it (`credential`): a 401/403 is
/// counted and, when it is new, logged as an ERROR naming the bot; a success after a
/// refusal makes the gateway ready again. No body is read: the status is enough.
fn judge_secret(bot: &Bot, metrics: &Metrics, label: &'static str, status: StatusCode) {
    use crate::credential::Change;
    let refused = matches!(status.as_u16(), 401 | 403);
    if refused {
        metrics
            .upstream_credential_refusals
            .with_label_values(&[&bot.name])
            .inc();
    }
    match bot.credential.observe(status.as_u16()) {
        Change::NowRefused => tracing::error!(
            bot = %bot.name,
            route = label,
            status = status.as_u16(),
            "Direct Line refuses this bot's secret (wrong, revoked or for another bot or region): /readyz answers 503 until a call with the secret succeeds"
        ),
        Change::NowAccepted => tracing::info!(
            bot = %bot.name,
            route = label,
            "Direct Line accepts this bot's secret again: ready"
        ),
        Change::Unchanged => {}
    }
}

/// One request on the wire, with `upstream_request_duration_seconds{route}` and
/// `upstream_requests_total{route,status,bot}`, and its outcome on the call's span.
async fn attempt(
    bot: &Bot,
    upstream: &Arc<Upstream>,
    metrics: &Metrics,
    label: &'static str,
    request: http::Request<Body>,
    timeout: Duration,
    span: Option<&mut UpstreamSpan>,
) -> Result<Response<Incoming>, GatewayError> {
    let started = Instant::now();
    let open = || metrics.upstream_connections.with_label_values(&[&bot.name]);
    let result = upstream.send(request, timeout, open).await;
    if matches!(
        result,
        Err(GatewayError::UpstreamUnreachable { .. } | GatewayError::UpstreamTimeout)
    ) && bot
        .upstream
        .current()
        .is_ok_and(|current| Arc::ptr_eq(&current, upstream))
    {
        // A discovered Direct Line host that stops answering may have moved region.
        bot.upstream.note_unreachable();
    }
    metrics
        .upstream_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    let status = match &result {
        Ok(response) => status_class(response.status().as_u16()),
        Err(GatewayError::UpstreamTimeout) => "timeout",
        Err(_) => "error",
    };
    metrics
        .upstream_requests
        .with_label_values(&[label, status, &bot.name])
        .inc();
    if let Some(span) = span {
        span.attempt(match &result {
            Ok(response) => Ok((
                response.status().as_u16(),
                response.headers().get(UpstreamSpan::request_id_header()),
            )),
            Err(_) => Err(status),
        });
    }
    result
}
