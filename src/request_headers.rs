//! What the pipeline reads from a request's headers before any phase: the host a bot is
//! chosen by, the request id the access log and upstream carry, and whether the caller takes
//! gzip.

use http::{HeaderValue, Request};

/// The request's host without the port: the URI's authority (HTTP/2, absolute form), else `Host`.
pub(crate) fn request_host<B>(request: &Request<B>) -> Option<&str> {
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

/// Whether the caller accepts a gzip body (RFC 9110 §12.5.3): `gzip` or `*` with a q-value
/// above zero; an explicit `gzip;q=0` refuses it whatever `*` says.
pub(crate) fn accepts_gzip(headers: &http::HeaderMap) -> bool {
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
pub(crate) fn request_id(headers: &http::HeaderMap) -> HeaderValue {
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
}
