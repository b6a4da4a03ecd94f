//! Reading client request bodies: bounded by size and by time, JSON checked.

use bytes::Bytes;
use http::header;
use http_body_util::{BodyExt, Limited};
use hyper::body::Incoming;
use serde_json::Value;

use super::context::RequestContext;
use crate::error::GatewayError;

pub(crate) fn content_length(headers: &http::HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

pub(crate) fn require_json_content_type(headers: &http::HeaderMap) -> Result<(), GatewayError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(GatewayError::UnsupportedMediaType);
    };
    let media = value
        .to_str()
        .map_err(|_| GatewayError::UnsupportedMediaType)?
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if media == "application/json"
        || (media.starts_with("application/") && media.ends_with("+json"))
    {
        Ok(())
    } else {
        Err(GatewayError::UnsupportedMediaType)
    }
}

/// Reads a request body up to `limit` bytes: 413 from `Content-Length` before reading,
/// or as soon as the stream passes the limit.
pub(crate) async fn read_limited(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    ctx: &RequestContext,
) -> Result<Bytes, GatewayError> {
    if content_length(headers).is_some_and(|len| len > limit) {
        return Err(GatewayError::BodyTooLarge { limit });
    }
    let within = ctx.config().limits.body_read_timeout;
    match tokio::time::timeout(within, Limited::new(body, limit as usize).collect()).await {
        Err(_) => Err(GatewayError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(error)) if error.is::<http_body_util::LengthLimitError>() => {
            Err(GatewayError::BodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(GatewayError::BodyRead),
    }
}

/// An optional JSON body (tokens/generate and start may have none).
pub(crate) async fn read_optional_json(
    body: Incoming,
    headers: &http::HeaderMap,
    limit: u64,
    ctx: &RequestContext,
) -> Result<Option<Value>, GatewayError> {
    let bytes = read_limited(body, headers, limit, ctx).await?;
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(None);
    }
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|_| GatewayError::MalformedJson)
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    #[test]
    fn json_content_types() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(
            require_json_content_type(&headers),
            Err(GatewayError::UnsupportedMediaType)
        );
        for (value, ok) in [
            ("application/json", true),
            ("application/json; charset=utf-8", true),
            ("application/vnd.x+json", true),
            ("text/plain", false),
            ("multipart/form-data", false),
        ] {
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(value));
            assert_eq!(require_json_content_type(&headers).is_ok(), ok, "{value}");
        }
    }
}
