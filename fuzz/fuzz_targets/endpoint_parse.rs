//! `Endpoint::parse` over any method, path and configured prefix.
//!
//! Input: byte 0 picks the method, byte 1 the path prefix, the rest is the path (lossy UTF-8;
//! hyper only hands over ASCII, so this is a superset). Seeds are therefore readable:
//! `\x01\x00/v3/directline/conversations/abc/activities`.
//!
//! Invariants checked (beyond "never panics"):
//! - a conversation id that got through is what `ConversationId::parse` promises: non-empty,
//!   at most `MAX_CONVERSATION_ID_LEN` bytes, only ASCII letters, digits, `-`, `_`, `.`,
//!   never `.` nor containing `..` (so no `/`, NUL, `%` escape or traversal);
//! - an accepted path is exactly the canonical path of the endpoint it parsed to, under the
//!   prefix (nothing was skipped, decoded or normalised on the way);
//! - refusals are only NotFound, InvalidConversationId or MethodNotAllowed, and the route/id
//!   checks do not depend on the method: the OPTIONS answer predicts every other method's.

#![no_main]

use directline_gateway::endpoint::{ConversationId, Endpoint, MAX_CONVERSATION_ID_LEN, Route};
use directline_gateway::error::GatewayError;
use http::Method;
use libfuzzer_sys::fuzz_target;

const PREFIXES: [&str; 4] = ["", "/bots/support", "/bots/a", "/v3"];

fn method(byte: u8) -> Method {
    match byte % 9 {
        0 => Method::GET,
        1 => Method::POST,
        2 => Method::OPTIONS,
        3 => Method::PUT,
        4 => Method::DELETE,
        5 => Method::HEAD,
        6 => Method::PATCH,
        7 => Method::TRACE,
        _ => Method::from_bytes(b"PROPFIND").unwrap(),
    }
}

fn check_id(id: &ConversationId, path: &str) {
    let s = id.as_str();
    assert!(!s.is_empty(), "empty conversation id from {path:?}");
    assert!(
        s.len() <= MAX_CONVERSATION_ID_LEN,
        "conversation id of {} bytes from {path:?}",
        s.len()
    );
    assert!(
        !s.contains('/') && !s.contains('\0') && !s.contains('%') && !s.contains('\\'),
        "unsafe character in conversation id {s:?}"
    );
    assert!(
        s != "." && !s.contains(".."),
        "traversal in conversation id {s:?}"
    );
    assert!(
        s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')),
        "conversation id outside the documented alphabet: {s:?}"
    );
    // What gets logged and put in the upstream path is the id itself, unchanged.
    assert_eq!(id.to_string(), s);
    assert_eq!(ConversationId::parse(s).as_ref(), Ok(id));
}

/// The one path each endpoint answers to (without prefix); `None` for preflight, which
/// drops the id.
fn canonical(endpoint: &Endpoint) -> Option<String> {
    let base = "/v3/directline";
    Some(match endpoint {
        Endpoint::TokensGenerate => format!("{base}/tokens/generate"),
        Endpoint::TokensRefresh => format!("{base}/tokens/refresh"),
        Endpoint::StartConversation => format!("{base}/conversations"),
        Endpoint::Reconnect(id) => format!("{base}/conversations/{id}"),
        Endpoint::GetActivities(id) | Endpoint::PostActivity(id) => {
            format!("{base}/conversations/{id}/activities")
        }
        Endpoint::Upload(id) => format!("{base}/conversations/{id}/upload"),
        Endpoint::Stream {
            conversation,
            multimodal: false,
        } => format!("{base}/conversations/{conversation}/stream"),
        Endpoint::Stream {
            conversation,
            multimodal: true,
        } => format!("{base}/conversations/{conversation}/stream/multimodal"),
        Endpoint::SessionId => format!("{base}/session/getsessionid"),
        Endpoint::Preflight(_) => return None,
    })
}

fn allowed(route: Route, method: &Method) -> bool {
    match route {
        Route::TokensGenerate | Route::TokensRefresh | Route::StartConversation => {
            method == Method::POST
        }
        Route::Reconnect | Route::Stream | Route::SessionId => method == Method::GET,
        Route::GetActivities | Route::PostActivity => {
            method == Method::GET || method == Method::POST
        }
        Route::Upload => method == Method::POST,
        // Preflight, Unknown and any route that is not a Direct Line client route.
        _ => false,
    }
}

fn check(method: &Method, path: &str, prefix: &str) -> Result<Endpoint, GatewayError> {
    let result = Endpoint::parse(method, path, prefix);
    match &result {
        Ok(endpoint) => {
            let rest = path
                .strip_prefix(prefix)
                .unwrap_or_else(|| panic!("{path:?} accepted without its prefix {prefix:?}"));
            if let Some(id) = endpoint.conversation() {
                check_id(id, path);
            }
            match endpoint {
                Endpoint::Preflight(route) => {
                    assert_eq!(method, Method::OPTIONS, "preflight for {method}");
                    assert!(
                        !matches!(route, Route::Preflight | Route::Unknown),
                        "preflight of {route:?}"
                    );
                }
                other => {
                    assert_ne!(method, Method::OPTIONS);
                    assert!(
                        allowed(other.route(), method),
                        "{method} accepted on {other:?}"
                    );
                    assert_eq!(
                        canonical(other).as_deref(),
                        Some(rest),
                        "{path:?} parsed to {other:?}"
                    );
                    // POST on the activities path is the post route, GET the get route.
                    match other {
                        Endpoint::PostActivity(_) => assert_eq!(method, Method::POST),
                        Endpoint::GetActivities(_) => assert_eq!(method, Method::GET),
                        _ => {}
                    }
                }
            }
        }
        Err(error) => assert!(
            matches!(
                error,
                GatewayError::NotFound
                    | GatewayError::InvalidConversationId
                    | GatewayError::MethodNotAllowed
            ),
            "unexpected refusal {error:?} for {path:?}"
        ),
    }
    if !path
        .strip_prefix(prefix)
        .is_some_and(|p| p.starts_with("/v3/directline/"))
    {
        assert_eq!(result, Err(GatewayError::NotFound), "{path:?}");
    }
    result
}

fuzz_target!(|data: &[u8]| {
    let (Some(&m), Some(&p)) = (data.first(), data.get(1)) else {
        return;
    };
    let method = method(m);
    let prefix = PREFIXES[usize::from(p) % PREFIXES.len()];
    let path = String::from_utf8_lossy(&data[2..]);
    let result = check(&method, &path, prefix);

    // The route and id checks come before the method check: OPTIONS tells what any method gets.
    let preflight = check(&Method::OPTIONS, &path, prefix);
    match (&preflight, &result) {
        (Err(pe), r) => assert_eq!(r.as_ref().err(), Some(pe), "{method} {path:?}"),
        (Ok(Endpoint::Preflight(route)), Ok(endpoint)) => {
            let route_of = match endpoint {
                Endpoint::Preflight(r) => *r,
                Endpoint::PostActivity(_) => Route::GetActivities,
                e => e.route(),
            };
            assert_eq!(route_of, *route, "{method} {path:?}");
        }
        (Ok(Endpoint::Preflight(_)), Err(e)) => {
            assert_eq!(*e, GatewayError::MethodNotAllowed, "{method} {path:?}")
        }
        (Ok(other), _) => panic!("OPTIONS parsed to {other:?}"),
    }
});
