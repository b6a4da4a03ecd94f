//! CORS: preflight answers and response headers for browser clients (WebChat, DLJS).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};
use crate::config::Config;
use crate::error::GatewayError;

/// DLJS sends these on every call (spec §7.1); `x-request-id` lets clients correlate logs.
const ALLOWED_HEADERS: &str = "authorization, content-type, x-ms-bot-agent, x-request-id";
const EXPOSED_HEADERS: &str = "Retry-After, x-request-id";

/// The origin to echo, or `None` when the request has no origin or it is not allowed.
pub fn allowed_origin<'a>(config: &Config, headers: &'a HeaderMap) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let allowed = config.allowed_origins.is_empty()
        || config
            .allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(text.trim_end_matches('/')));
    allowed.then_some(origin)
}

pub fn preflight(config: &Config, headers: &HeaderMap) -> Response<Body> {
    let Some(origin) = allowed_origin(config, headers) else {
        return GatewayError::OriginNotAllowed.into_response();
    };
    let mut response = Response::new(body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static(ALLOWED_HEADERS),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    decorate(h, origin);
    response
}

/// Adds the CORS response headers. Credentials are allowed because DLJS's
/// `getSessionId` uses `withCredentials` (spec §7.5), so the origin is echoed, never `*`.
pub fn decorate(headers: &mut HeaderMap, origin: &HeaderValue) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
        HeaderValue::from_static("true"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}
