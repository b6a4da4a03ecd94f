//! Reading upstream answers: bounded, within a deadline, gzip decoded (PROTOCOL §0.10).

use std::time::Duration;

use bytes::Bytes;
use http::{Response, header};
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;

use crate::error::{Cause, GatewayError};

/// Upstream JSON answers (tokens, conversations, errors) are small; anything larger is refused.
pub const MAX_UPSTREAM_JSON: usize = 1024 * 1024;

/// Reads a small upstream body whole, decompressing gzip (PROTOCOL §0.10), within `timeout`.
pub async fn read_body(
    response: Response<Incoming>,
    timeout: Duration,
) -> Result<(http::response::Parts, Bytes), GatewayError> {
    match read_body_within(response, timeout, MAX_UPSTREAM_JSON).await? {
        (parts, Some(bytes)) => Ok((parts, bytes)),
        (_, None) => Err(GatewayError::upstream_invalid(
            "an answer over the size a Direct Line answer can have",
        )),
    }
}

/// [`read_body`] up to `limit` bytes, before and after decoding; `None` past it.
pub async fn read_body_within(
    response: Response<Incoming>,
    timeout: Duration,
    limit: usize,
) -> Result<(http::response::Parts, Option<Bytes>), GatewayError> {
    // Collected here rather than through `read_raw`: one async frame less on every
    // start and token call.
    let (mut parts, body) = response.into_parts();
    let raw = match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => return Err(GatewayError::UpstreamTimeout),
        Ok(Ok(collected)) => collected.to_bytes(),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            return Ok((parts, None));
        }
        Ok(Err(error)) => return Err(unreadable(error)),
    };
    if !is_gzip(&parts.headers) {
        return Ok((parts, Some(raw)));
    }
    parts.headers.remove(header::CONTENT_ENCODING);
    Ok((parts, gunzip(&raw, limit)?))
}

/// The body as it came (still encoded), up to `limit` bytes; `None` past it.
pub async fn read_raw(
    response: Response<Incoming>,
    timeout: Duration,
    limit: usize,
) -> Result<(http::response::Parts, Option<Bytes>), GatewayError> {
    let (parts, body) = response.into_parts();
    match tokio::time::timeout(timeout, Limited::new(body, limit).collect()).await {
        Err(_) => Err(GatewayError::UpstreamTimeout),
        Ok(Ok(collected)) => Ok((parts, Some(collected.to_bytes()))),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => Ok((parts, None)),
        Ok(Err(error)) => Err(unreadable(error)),
    }
}

/// A gzip body decoded, up to `limit` bytes; `None` past it.
pub fn gunzip(bytes: &[u8], limit: usize) -> Result<Option<Bytes>, GatewayError> {
    let mut decoded = Vec::with_capacity((bytes.len() * 4).min(limit + 1));
    let reader = flate2::read::GzDecoder::new(bytes);
    std::io::Read::read_to_end(
        &mut std::io::Read::take(reader, limit as u64 + 1),
        &mut decoded,
    )
    .map_err(|error| GatewayError::UpstreamUnreadable {
        cause: Cause::new(error),
    })?;
    Ok((decoded.len() <= limit).then(|| Bytes::from(decoded)))
}

/// A body that broke off, with the transport's reason kept for the log line.
fn unreadable(error: Box<dyn std::error::Error + Send + Sync>) -> GatewayError {
    GatewayError::UpstreamUnreadable {
        cause: Cause::boxed(error),
    }
}

pub fn is_gzip(headers: &http::HeaderMap) -> bool {
    headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"gzip"))
}

/// The Direct Line `error.code` of an upstream error body, if it has one.
pub fn error_code(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    value.get("error")?.get("code")?.as_str().map(str::to_owned)
}
