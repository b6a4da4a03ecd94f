//! CORS: preflight answers and response headers for browser clients (WebChat, DLJS).

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::boxed_body::{self, Body};
use crate::error::GatewayError;

/// DLJS sends these on every call (PROTOCOL §7.1); `x-request-id` lets clients correlate logs;
/// rxjs's ajax (inside WebChat's DLJS) adds `x-requested-with`. The answer when a preflight
/// names no headers or names them unreadably.
const ALLOWED_HEADERS: &str =
    "authorization, content-type, x-ms-bot-agent, x-request-id, x-requested-with";
/// A longer `Access-Control-Request-Headers` is not echoed.
const MAX_ECHOED_HEADERS: usize = 1024;
const EXPOSED_HEADERS: &str = "Retry-After, x-request-id";

/// The origin to echo, or `None` when the request has no origin or it is not allowed.
pub fn allowed_origin<'a>(
    allowed_origins: &[String],
    headers: &'a HeaderMap,
) -> Option<&'a HeaderValue> {
    let origin = headers.get(header::ORIGIN)?;
    let text = origin.to_str().ok()?;
    let allowed = allowed_origins.is_empty()
        || allowed_origins
            .iter()
            .any(|o| o.eq_ignore_ascii_case(text.trim_end_matches('/')));
    allowed.then_some(origin)
}

/// A preflight's answer; an origin not allowed is refused as every other request is.
pub fn preflight(
    allowed_origins: &[String],
    allow_credentials: bool,
    headers: &HeaderMap,
) -> Result<Response<Body>, GatewayError> {
    let origin = allowed_origin(allowed_origins, headers).ok_or(GatewayError::OriginNotAllowed)?;
    let mut response = Response::new(boxed_body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let h = response.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, POST, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        allowed_headers(headers),
    );
    h.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    decorate(h, origin, allow_credentials);
    Ok(response)
}

/// Whatever request headers the browser asks for are allowed, as Direct Line does: the
/// gateway forwards only a fixed set of headers upstream, so a header a client adds (WebChat
/// variants, telemetry, proxies' own) can never reach Direct Line, and refusing it in the
/// preflight would only break the client. Echoed only when it is a well-formed list.
fn allowed_headers(request: &HeaderMap) -> HeaderValue {
    let fallback = HeaderValue::from_static(ALLOWED_HEADERS);
    let Some(requested) = request.get(header::ACCESS_CONTROL_REQUEST_HEADERS) else {
        return fallback;
    };
    let well_formed = requested.len() <= MAX_ECHOED_HEADERS
        && requested.to_str().is_ok_and(|list| {
            list.split(',')
                .map(str::trim)
                .all(|name| header::HeaderName::from_bytes(name.as_bytes()).is_ok())
        });
    if well_formed {
        requested.clone()
    } else {
        fallback
    }
}

/// Adds the CORS response headers; the origin is echoed, never `*`. Direct Line clients
/// authenticate with bearer tokens, not cookies, so credentials are allowed only when the
/// bot's `allow_credentials` says so: DLJS's `getSessionId` sends cookies
/// (`withCredentials`, PROTOCOL §7.5) for sign-in without a magic code, and nothing else does.
pub fn decorate(headers: &mut HeaderMap, origin: &HeaderValue, allow_credentials: bool) {
    headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin.clone());
    if allow_credentials {
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
            HeaderValue::from_static("true"),
        );
    }
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static(EXPOSED_HEADERS),
    );
    headers.append(header::VARY, HeaderValue::from_static("Origin"));
}

#[cfg(test)]
mod tests {
    use super::*;

    fn preflight_with(requested: Option<&'static str>) -> Response<Body> {
        let mut headers = HeaderMap::new();
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://page.test"));
        if let Some(requested) = requested {
            headers.insert(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                HeaderValue::from_static(requested),
            );
        }
        preflight(&[], false, &headers).expect("any origin is allowed")
    }

    fn allow_headers(response: &Response<Body>) -> &str {
        response.headers()[header::ACCESS_CONTROL_ALLOW_HEADERS]
            .to_str()
            .unwrap()
    }

    #[test]
    fn requested_headers_are_allowed_when_well_formed() {
        let response = preflight_with(Some("authorization,content-type,x-requested-with"));
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            allow_headers(&response),
            "authorization,content-type,x-requested-with"
        );
    }

    #[test]
    fn malformed_or_absent_requests_get_the_fixed_list() {
        for requested in [None, Some("authorization, bad header(), x"), Some("a,,b")] {
            let response = preflight_with(requested);
            assert_eq!(allow_headers(&response), ALLOWED_HEADERS, "{requested:?}");
        }
    }
}
