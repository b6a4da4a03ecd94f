//! The chat page served at a bot's root when the upstream is the embedded emulator, so the
//! no-argument run is something a person can try in a browser, and in front of a real
//! Direct Line only when the bot's `demo_page = true` (off by default: an organisation's
//! domain root is theirs), to chat with one's own bot through the gateway on day one.

use http::{HeaderValue, Response, StatusCode, header};

use crate::boxed_body::{self, Body};

const PAGE: &str = include_str!("demo.html");

/// The page uses only inline script and style and talks only to this origin.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self' ws: wss:; base-uri 'none'; form-action 'none'";

/// The page for bot `bot` (a configuration name: `a-z`, `0-9`, `-`, `_`, so nothing to
/// escape), which it names, so two demo bots' pages are told apart; `embedded` says the
/// bot is the emulator's echo bot rather than the organisation's own.
pub fn page(bot: &str, embedded: bool) -> Response<Body> {
    let (kind, heading, via) = if embedded {
        ("echo bot", "Echo bot", " and its embedded emulator")
    } else {
        ("bot", "Bot", "")
    };
    let text = PAGE
        .replace("{{BOT}}", bot)
        .replace("{{KIND}}", kind)
        .replace("{{HEADING}}", heading)
        .replace("{{VIA}}", via);
    let mut response = Response::new(boxed_body::full(text));
    *response.status_mut() = StatusCode::OK;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}
