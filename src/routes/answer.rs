//! The respond phase: upstream answers as the client gets them. Only allow-listed headers
//! pass, success bodies are scrubbed of credentials on the way, and an error answer becomes an
//! [`UpstreamRefusal`]: a Direct Line error's code and message, or a row of the error table.

use std::borrow::Cow;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Response, StatusCode, header};
use hyper::body::Incoming;
use serde_json::{Map, Value};

use super::context::RequestContext;
use crate::boxed_body::{self, Body};
use crate::error::{GatewayError, Refusal, UpstreamRefusal, UpstreamSaid};
use crate::gateway::Gateway;
use crate::scrub::{Needles, ScrubbedBody};
use crate::upstream::answer_body::{
    MAX_UPSTREAM_JSON, gunzip, is_gzip, read_body, read_body_within, read_raw,
};
use crate::upstream::call::Answer;

/// Upstream response headers a client may see; everything else stays behind the gateway.
const PASSED_RESPONSE_HEADERS: [header::HeaderName; 6] = [
    header::CONTENT_TYPE,
    header::CONTENT_ENCODING,
    header::RETRY_AFTER,
    header::CACHE_CONTROL,
    header::PRAGMA,
    header::EXPIRES,
];

pub(crate) const JSON: &str = "application/json; charset=utf-8";

/// Reads a JSON object from a successful upstream answer; an upstream error is the
/// client's refusal ([`upstream_refusal`]).
pub(crate) async fn read_json(
    gateway: &Gateway,
    ctx: &RequestContext,
    answer: Answer,
    timeout: Duration,
    upstream_token: &str,
) -> Result<(StatusCode, Map<String, Value>), Refusal> {
    // The needles are made only for an error: a success is parsed, and what of it is passed
    // on is checked where it is (`scrub_passed_fields`).
    let needles = || credential_needles(ctx, upstream_token.to_owned());
    let (parts, bytes) = match answer {
        Answer::Streaming(response) if !response.status().is_success() => {
            return Err(read_error(gateway, ctx, response, timeout, needles())
                .await?
                .into());
        }
        Answer::Streaming(response) => read_body(response, timeout).await?,
        Answer::Read(parts, bytes) => (parts, bytes),
        Answer::Oversized(parts) => {
            return Err(upstream_refusal(gateway, ctx, parts, None, &needles()).into());
        }
    };
    if !parts.status.is_success() {
        let needles = with_upstream_host(ctx, needles());
        return Err(upstream_refusal(gateway, ctx, parts, Some(bytes), &needles).into());
    }
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok((parts.status, map)),
        Ok(_) => Err(GatewayError::upstream_invalid("an answer that is no JSON object").into()),
        Err(error) => {
            Err(GatewayError::upstream_invalid_because("an answer that is no JSON", error).into())
        }
    }
}

impl RequestContext {
    /// Direct Line's answer passed on to the client ([`passthrough`]): scrubbed of the bot's
    /// secret and `upstream_token` (the caller's, moved in; empty when there is none), and
    /// read within the default timeout where it has to be read.
    pub(crate) async fn pass_on(
        &self,
        gateway: &Gateway,
        answer: Answer,
        upstream_token: String,
    ) -> Result<Response<Body>, Refusal> {
        let needles = credential_needles(self, upstream_token);
        passthrough(
            gateway,
            answer,
            self,
            self.config().timeouts.default,
            needles,
        )
        .await
    }
}

/// What a client must never see in an answer from `ctx`'s bot: the bot's secret and the
/// caller's upstream conversation token (moved in, not copied; empty when there is none).
pub(crate) fn credential_needles(ctx: &RequestContext, upstream_token: String) -> Needles {
    let mut needles = Needles::default();
    if let Some(secret) = &ctx.bot.secret {
        needles.push(secret.shared());
    }
    needles.push(upstream_token);
    needles
}

/// `needles` and the upstream host, with and without its port: error pages name it, while
/// success bodies may rightly hold upstream URLs (attachments).
pub(crate) fn with_upstream_host(ctx: &RequestContext, mut needles: Needles) -> Needles {
    // The host in use now; a bot whose host is not discovered yet made no call to leak it.
    if let Ok(upstream) = ctx.bot.upstream.current() {
        let (authority, host) = upstream.host_names();
        needles.push(authority);
        needles.push(host);
    }
    needles
}

/// An upstream error answer, read up to `limits.upstream_error_body`.
async fn read_error(
    gateway: &Gateway,
    ctx: &RequestContext,
    response: Response<Incoming>,
    timeout: Duration,
    needles: Needles,
) -> Result<UpstreamRefusal, GatewayError> {
    let cap = ctx.config().limits.upstream_error_body_bytes;
    let (parts, bytes) = read_body_within(response, timeout, cap).await?;
    let needles = with_upstream_host(ctx, needles);
    Ok(upstream_refusal(gateway, ctx, parts, bytes, &needles))
}

/// An upstream error answer as the client gets it. Only a Direct Line error's `code` and
/// `message` pass (PROTOCOL §10.8), rebuilt from their decoded text, so an escaped credential
/// cannot hide in them and nothing else of the body (extra fields) passes; a message naming
/// a needle is scrubbed, a code naming one is not Direct Line's. Anything else (HTML from a
/// load balancer, other JSON, a body past the limit: `None`) is replaced by a row of the
/// error table under Direct Line's status.
fn upstream_refusal(
    gateway: &Gateway,
    ctx: &RequestContext,
    parts: http::response::Parts,
    body: Option<Bytes>,
    needles: &Needles,
) -> UpstreamRefusal {
    let scrubbed = |kind: &str| {
        gateway
            .metrics
            .upstream_bodies_scrubbed
            .with_label_values(&[kind, &ctx.bot.name])
            .inc();
    };
    let direct_line = body
        .as_deref()
        .and_then(direct_line_error)
        .filter(|(code, _)| !needles.contains_any(code.as_bytes()));
    let said = match direct_line {
        Some((code, message)) => {
            let clean = match needles.scrub_str(&message) {
                Cow::Owned(clean) => Some(clean),
                Cow::Borrowed(_) => None,
            };
            let message = match clean {
                Some(clean) => {
                    scrubbed("error_scrubbed");
                    clean
                }
                None => message,
            };
            UpstreamSaid::DirectLine { code, message }
        }
        None => {
            scrubbed("error_replaced");
            UpstreamSaid::Replaced(if parts.status == StatusCode::GATEWAY_TIMEOUT {
                GatewayError::UpstreamTimeout
            } else if parts.status.is_server_error() {
                GatewayError::upstream_invalid("a server error without a Direct Line error body")
            } else {
                GatewayError::UpstreamRefused
            })
        }
    };
    let mut headers = http::HeaderMap::new();
    copy_passed_headers(&parts.headers, &mut headers, false, needles);
    UpstreamRefusal {
        status: parts.status,
        said,
        headers,
    }
}

/// `error.code` and `error.message` of a Direct Line error body. Codes are stable
/// identifiers (PROTOCOL §1.5); anything else in `code` is not a Direct Line error.
fn direct_line_error(body: &[u8]) -> Option<(String, String)> {
    let value: Value = serde_json::from_slice(body).ok()?;
    let error = value.get("error")?;
    let code = error.get("code")?.as_str()?;
    let plausible = !code.is_empty()
        && code.len() <= 64
        && code
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.');
    if !plausible {
        return None;
    }
    let message = error
        .get("message")
        .and_then(Value::as_str)
        .unwrap_or(GatewayError::UpstreamRefused.message());
    Some((code.to_owned(), message.to_owned()))
}

/// Streams an upstream answer to the client with only the allow-listed headers, scrubbed of
/// `needles` on the way ([`crate::scrub`]; errors are read and checked whole). A gzip body
/// is decoded (bounded) to be checked, then goes out as it came when it was clean and the
/// caller accepts gzip, otherwise decoded and scrubbed.
pub(crate) async fn passthrough(
    gateway: &Gateway,
    answer: Answer,
    ctx: &RequestContext,
    timeout: Duration,
    needles: Needles,
) -> Result<Response<Body>, Refusal> {
    let response = match answer {
        Answer::Read(parts, bytes) if parts.status.is_success() => {
            return Ok(scrubbed_read(gateway, ctx, parts, bytes, &needles));
        }
        Answer::Read(parts, bytes) => {
            let needles = with_upstream_host(ctx, needles);
            return Err(upstream_refusal(gateway, ctx, parts, Some(bytes), &needles).into());
        }
        Answer::Oversized(parts) => {
            let needles = with_upstream_host(ctx, needles);
            return Err(upstream_refusal(gateway, ctx, parts, None, &needles).into());
        }
        Answer::Streaming(response) => response,
    };
    if !response.status().is_success() {
        return Err(read_error(gateway, ctx, response, timeout, needles)
            .await?
            .into());
    }
    if is_gzip(response.headers()) {
        let (mut parts, raw) = read_raw(response, timeout, MAX_UPSTREAM_JSON).await?;
        let raw = raw.ok_or(GatewayError::upstream_invalid(
            "a gzip answer over the size a Direct Line answer can have",
        ))?;
        let decoded = gunzip(&raw, MAX_UPSTREAM_JSON)?.ok_or(GatewayError::upstream_invalid(
            "a gzip answer that decompresses past the size a Direct Line answer can have",
        ))?;
        if ctx.accepts_gzip && !needles.contains_any(&decoded) {
            let mut response = Response::new(boxed_body::full(raw));
            *response.status_mut() = parts.status;
            copy_passed_headers(&parts.headers, response.headers_mut(), true, &needles);
            return Ok(response);
        }
        parts.headers.remove(header::CONTENT_ENCODING);
        return Ok(scrubbed_read(gateway, ctx, parts, decoded, &needles));
    }
    let (parts, incoming) = response.into_parts();
    let mut headers = http::HeaderMap::new();
    copy_passed_headers(&parts.headers, &mut headers, true, &needles);
    let metrics = gateway.metrics.clone();
    let bot = ctx.bot.name.clone();
    let count = move || {
        metrics
            .upstream_bodies_scrubbed
            .with_label_values(&["success_scrubbed", &bot])
            .inc();
    };
    // A body that declares itself shorter than every needle cannot hold one (Direct Line's
    // POST answer, `{"id":…}`, is shorter than a secret or a token): no scrubbing then.
    let too_short = http_body::Body::size_hint(&incoming)
        .exact()
        .is_some_and(|len| len < needles.shortest() as u64);
    let body = if too_short || needles.is_empty() {
        boxed_body::stream(incoming)
    } else {
        boxed_body::stream(ScrubbedBody::new(incoming, needles, count))
    };
    let mut response = Response::new(body);
    *response.status_mut() = parts.status;
    *response.headers_mut() = headers;
    Ok(response)
}

/// A success body already read whole, scrubbed.
fn scrubbed_read(
    gateway: &Gateway,
    ctx: &RequestContext,
    parts: http::response::Parts,
    bytes: Bytes,
    needles: &Needles,
) -> Response<Body> {
    let bytes = match needles.scrub(&bytes) {
        Cow::Borrowed(_) => bytes,
        Cow::Owned(clean) => {
            gateway
                .metrics
                .upstream_bodies_scrubbed
                .with_label_values(&["success_scrubbed", &ctx.bot.name])
                .inc();
            Bytes::from(clean)
        }
    };
    let mut response = Response::new(boxed_body::full(bytes));
    *response.status_mut() = parts.status;
    copy_passed_headers(&parts.headers, response.headers_mut(), true, needles);
    response
}

/// Copies the allow-listed upstream headers; a value holding a needle is dropped (an echo
/// can land in `Retry-After` or `Expires` as well as in a body).
fn copy_passed_headers(
    from: &http::HeaderMap,
    to: &mut http::HeaderMap,
    with_content: bool,
    needles: &Needles,
) {
    for name in PASSED_RESPONSE_HEADERS {
        let is_content = name == header::CONTENT_TYPE || name == header::CONTENT_ENCODING;
        if is_content && !with_content {
            continue;
        }
        for value in from.get_all(&name) {
            if !needles.contains_any(value.as_bytes()) {
                to.append(name.clone(), value.clone());
            }
        }
    }
}

pub(crate) fn json_response(status: StatusCode, body: &impl serde::Serialize) -> Response<Body> {
    let bytes = serde_json::to_vec(body).unwrap_or_default();
    let mut response = Response::new(boxed_body::full(bytes));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(JSON));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

pub(crate) fn json_str<'a>(json: &'a Map<String, Value>, key: &str) -> Option<&'a str> {
    json.get(key).and_then(Value::as_str)
}
