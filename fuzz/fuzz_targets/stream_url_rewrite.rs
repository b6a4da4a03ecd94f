//! streamUrl rewriting and watermark handling (`src/rewrite.rs`) over arbitrary strings.
//!
//! Input: lossy UTF-8 text split on `\n` into fields, each optional:
//!   0: an upstream stream URL (as Direct Line would return it)
//!   1: a watermark
//!   2: a client query string (what `query_watermark` sees)
//!   3: a conversation id
//!   4: a host for the gateway's public base (as `public_ws_base` might produce it)
//!   5: a path prefix (kept only if the real config loader accepts it)
//!
//! Invariants checked:
//! - `normalize_watermark`: `None` exactly for `""` and `"-"`, otherwise the text verbatim;
//! - `watermark_query` → `query_watermark` round trip: the watermark comes back unchanged, or is
//!   refused only for the documented reasons (too long, control characters); the encoded query
//!   is always one single `watermark` pair (no parameter injection upstream);
//! - whatever `query_watermark` accepts is bounded, has no control characters and survives
//!   re-encoding;
//! - `gateway_stream_url` with a valid base, prefix and id is a ws(s) URL whose path is exactly
//!   the gateway stream path, whose query is exactly `watermark` then `t`, with the watermark
//!   decoding back to what was put in and the ticket unchanged, and `stream_url_watermark`
//!   reads the same watermark back;
//! - `stream_url_watermark` never yields `""` or `"-"`, nor a watermark no client could send
//!   back (too long, control characters), and reads the first `watermark` pair;
//! - `is_upstream_stream_url` accepts only ws/wss URLs with a host, stays accepting after a
//!   parse/serialise round, and whatever it accepts can be dialed as it is (the hub hands the
//!   same string to tungstenite, which parses it as an `http::Uri`).
//! - `StreamUrlPin::read` (the pin to the bot's upstream) admits only what
//!   `is_upstream_stream_url` accepts, with the same watermark, on the pinned host and port
//!   as both the dial's parser and the WHATWG parser read it, and what it admits also passes
//!   the dial's own check (`check_dial`).

#![no_main]

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use directline_gateway::config::{Config, Env, Overrides};
use directline_gateway::endpoint::ConversationId;
use directline_gateway::error::GatewayError;
use directline_gateway::rewrite::{
    MAX_WATERMARK_LEN, StreamUrlPin, gateway_stream_url, is_upstream_stream_url,
    normalize_watermark, query_watermark, read_upstream_stream_url, stream_url_watermark,
    watermark_query,
};
use libfuzzer_sys::fuzz_target;
use tungstenite::client::IntoClientRequest;
use url::Url;

const BASES: [&str; 4] = [
    "wss://chat.contoso.com",
    "ws://127.0.0.1:8080",
    "wss://bots.example.com/chat",
    "ws://[::1]:9000",
];

fn check_normalize(raw: &str) {
    let n = normalize_watermark(raw);
    if raw.is_empty() || raw == "-" {
        assert_eq!(n, None);
    } else {
        assert_eq!(n.as_deref(), Some(raw));
    }
}

/// Encodes `watermark` as the upstream query and decodes it as a client query.
fn check_query_round_trip(watermark: &str) {
    assert_eq!(watermark_query(None), "");
    let q = watermark_query(Some(watermark));
    let body = q
        .strip_prefix("?watermark=")
        .unwrap_or_else(|| panic!("{q:?}"));
    // Only the pair we meant: the value cannot break out into another parameter or a fragment.
    assert!(!body.contains(['&', '#', '?', '=', '+', ' ']), "{q:?}");
    assert!(body.is_ascii(), "{q:?}");
    let pairs: Vec<(String, String)> = form_urlencoded::parse(&q.as_bytes()[1..])
        .into_owned()
        .collect();
    assert_eq!(
        pairs,
        [("watermark".to_owned(), watermark.to_owned())],
        "{q:?}"
    );
    let back = query_watermark(Some(&q[1..]));
    if watermark.len() > MAX_WATERMARK_LEN || watermark.chars().any(char::is_control) {
        assert_eq!(back, Err(GatewayError::InvalidQuery), "{watermark:?}");
    } else {
        assert_eq!(back, Ok(normalize_watermark(watermark)), "{watermark:?}");
    }
}

fn check_client_query(query: &str) {
    assert_eq!(query_watermark(None), Ok(None));
    match query_watermark(Some(query)) {
        Ok(Some(w)) => {
            assert!(!w.is_empty() && w != "-", "{query:?} -> {w:?}");
            assert!(w.len() <= MAX_WATERMARK_LEN, "{query:?}");
            assert!(!w.chars().any(char::is_control), "{query:?} -> {w:?}");
            // It is the last `watermark` pair, decoded.
            let last = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "watermark")
                .last()
                .map(|(_, v)| v.into_owned());
            assert_eq!(last.as_deref(), Some(w.as_str()), "{query:?}");
            // Forwarding it upstream and reading it back gives the same watermark.
            check_query_round_trip(&w);
        }
        Ok(None) => {
            if let Some(last) = form_urlencoded::parse(query.as_bytes())
                .filter(|(k, _)| k == "watermark")
                .last()
            {
                assert!(
                    last.1.is_empty() || last.1 == "-",
                    "{query:?} lost {last:?}"
                );
            }
        }
        Err(e) => {
            assert_eq!(e, GatewayError::InvalidQuery);
            assert!(
                form_urlencoded::parse(query.as_bytes())
                    .filter(|(k, _)| k == "watermark")
                    .any(|(_, v)| v.len() > MAX_WATERMARK_LEN || v.chars().any(char::is_control)),
                "{query:?} refused without cause"
            );
        }
    }
}

/// Upstream bases the pin is checked against: global Direct Line, a loopback test upstream,
/// an App Service extension with its `/.bot` path.
const PIN_BASES: [&str; 3] = [
    "https://directline.botframework.com",
    "http://127.0.0.1:3978",
    "https://myapp.azurewebsites.net/.bot",
];

fn check_pin(raw: &str, conversation: &ConversationId) {
    for base in PIN_BASES {
        let base = Url::parse(base).unwrap();
        let pin = StreamUrlPin::new(&base).unwrap();
        let Ok(read) = pin.read(raw, conversation) else {
            continue;
        };
        assert!(
            is_upstream_stream_url(raw),
            "pinned but not dialable: {raw:?}"
        );
        assert_eq!(read.watermark, stream_url_watermark(raw), "{raw:?}");
        let host = base.host_str().unwrap();
        let port = base.port_or_known_default().unwrap();
        let uri: http::Uri = raw.parse().unwrap();
        assert!(
            uri.host().unwrap().eq_ignore_ascii_case(host),
            "{raw:?} for {base}"
        );
        let default = if uri.scheme_str() == Some("wss") {
            443
        } else {
            80
        };
        assert_eq!(
            uri.port_u16().unwrap_or(default),
            port,
            "{raw:?} for {base}"
        );
        // The other parser reads the same origin: no differential between the check and
        // a client of the URL.
        let whatwg = Url::parse(raw).unwrap();
        assert!(
            whatwg.host_str().unwrap().eq_ignore_ascii_case(host),
            "{raw:?} for {base}"
        );
        assert_eq!(
            whatwg.port_or_known_default(),
            Some(port),
            "{raw:?} for {base}"
        );
        assert!(pin.check_dial(&uri).is_ok(), "{raw:?} for {base}");
    }
}

fn check_upstream_url(raw: &str) {
    let accepted = is_upstream_stream_url(raw);
    let parsed = Url::parse(raw);
    if accepted {
        let url = parsed.as_ref().expect("accepted an unparsable URL");
        assert!(matches!(url.scheme(), "ws" | "wss"), "{raw:?}");
        assert!(url.host().is_some(), "{raw:?}");
        assert!(is_upstream_stream_url(url.as_str()), "{raw:?} -> {url}");
        // The hub dials the string exactly as accepted (`link::dial`: tungstenite's
        // `into_client_request`, an `http::Uri`), so it must be dialable as it is.
        let request = raw
            .into_client_request()
            .unwrap_or_else(|e| panic!("accepted stream URL {raw:?} cannot be dialed: {e}"));
        // tungstenite only dials the exact schemes `ws` and `wss`.
        assert!(
            tungstenite::client::uri_mode(request.uri()).is_ok(),
            "{raw:?} dials as {} (scheme {:?})",
            request.uri(),
            request.uri().scheme_str()
        );
        assert!(request.uri().host().is_some(), "{raw:?}");
    }
    let read = read_upstream_stream_url(raw);
    assert_eq!(read.is_some(), accepted, "{raw:?}");
    let watermark = stream_url_watermark(raw);
    if let Some(read) = read {
        // The one-pass reading the start/reconnect path uses agrees with the WHATWG one.
        assert_eq!(read.watermark, watermark, "{raw:?}");
    }
    if let Some(w) = &watermark {
        assert!(!w.is_empty() && w != "-", "{raw:?}");
        assert!(w.len() <= MAX_WATERMARK_LEN && !w.chars().any(char::is_control), "{raw:?}");
        let url = parsed.as_ref().expect("watermark from an unparsable URL");
        let first = url
            .query_pairs()
            .find(|(k, _)| k == "watermark")
            .map(|(_, v)| v.into_owned());
        assert_eq!(first.as_deref(), Some(w.as_str()), "{raw:?}");
    }
}

struct NoEnv;

impl Env for NoEnv {
    fn var(&self, _: &str) -> Option<String> {
        None
    }
}

/// The path prefix the gateway would run with if an operator configured `raw`: asked of the
/// real config loader (through a small TOML file, cached per distinct value), `""` if refused.
fn accepted_prefix(raw: &str) -> String {
    static CACHE: LazyLock<Mutex<HashMap<String, String>>> = LazyLock::new(Default::default);
    if raw.is_empty() || raw.len() > 256 || !raw.starts_with('/') {
        return String::new();
    }
    let mut cache = CACHE.lock().unwrap();
    if let Some(p) = cache.get(raw) {
        return p.clone();
    }
    let path = std::env::temp_dir().join(format!("dlgw-fuzz-prefix-{}.toml", std::process::id()));
    let toml = format!(
        "upstream = \"embedded\"\npath_prefix = {}\n",
        serde_json::to_string(raw).unwrap()
    );
    std::fs::write(&path, toml).unwrap();
    let accepted = Config::load(Some(&path), &Overrides::default(), &NoEnv)
        .ok()
        .and_then(|c| c.bots.into_iter().next())
        .map(|bot| bot.path_prefix)
        .unwrap_or_default();
    if cache.len() > 100_000 {
        cache.clear();
    }
    cache.insert(raw.to_owned(), accepted.clone());
    accepted
}

/// A ticket as the sealer makes them: `dlgw1.` and base64url.
fn ticket_from(text: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut t = String::from("dlgw1.");
    t.extend(
        text.bytes()
            .map(|b| char::from(ALPHABET[usize::from(b) % ALPHABET.len()])),
    );
    t
}

fn check_gateway_url(
    base: &str,
    prefix: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    ticket: &str,
) {
    let url = gateway_stream_url(base, prefix, conversation, watermark, ticket);
    let stream_path = format!("{prefix}/v3/directline/conversations/{conversation}/stream");
    assert!(
        url.starts_with(&format!("{base}{stream_path}?watermark=")),
        "{url:?}"
    );
    assert!(url.ends_with(&format!("&t={ticket}")), "{url:?}");

    let parsed = Url::parse(&url).unwrap_or_else(|e| panic!("{url:?}: {e}"));
    assert!(matches!(parsed.scheme(), "ws" | "wss"), "{url:?}");
    assert!(parsed.fragment().is_none(), "{url:?}");
    let base_path = Url::parse(base).unwrap();
    let base_path = base_path.path().trim_end_matches('/');
    assert_eq!(
        parsed.path(),
        format!("{base_path}{stream_path}"),
        "{url:?}"
    );
    let pairs: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
    assert_eq!(
        pairs,
        [
            ("watermark".to_owned(), watermark.unwrap_or("-").to_owned()),
            ("t".to_owned(), ticket.to_owned()),
        ],
        "{url:?}"
    );
    // As an upstream URL, one whose watermark no client could send back is refused.
    let sendable = watermark
        .is_none_or(|w| w.len() <= MAX_WATERMARK_LEN && !w.chars().any(char::is_control));
    assert_eq!(is_upstream_stream_url(&url), sendable, "{url:?}");
    assert_eq!(
        stream_url_watermark(&url),
        watermark.filter(|_| sendable).and_then(normalize_watermark),
        "{url:?}"
    );
}

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let mut fields = text.split('\n');
    let mut field = || fields.next().unwrap_or("");
    let upstream = field();
    let watermark = field();
    let query = field();
    let conversation = field();
    let host = field();
    let prefix = field();

    check_normalize(watermark);
    check_normalize(upstream);
    check_query_round_trip(watermark);
    check_client_query(query);
    check_client_query(upstream);
    check_upstream_url(upstream);

    // The gateway URL, with a real or fuzzed id, prefix and host.
    let conversation = ConversationId::parse(conversation)
        .unwrap_or_else(|_| ConversationId::parse("FBfSqjVTqId8YuZUagotOF-us").unwrap());
    check_pin(upstream, &conversation);
    let prefix = accepted_prefix(prefix);
    let prefix = prefix.as_str();
    let ticket = ticket_from(query);
    // One base per input (the fuzzed host when `public_ws_base` would echo it), to keep the
    // executions fast; the watermark as the client gave it, and none.
    let fuzzed_base = format!("ws://{host}");
    let base = if !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
        && Url::parse(&fuzzed_base).is_ok_and(|u| u.host().is_some() && u.path() == "/")
    {
        fuzzed_base.as_str()
    } else {
        BASES[host.len() % BASES.len()]
    };
    check_gateway_url(base, prefix, &conversation, Some(watermark), &ticket);
    if watermark.len() % 2 == 1 {
        check_gateway_url(base, prefix, &conversation, None, &ticket);
    }
    if let Some(w) = stream_url_watermark(upstream) {
        check_gateway_url(BASES[0], prefix, &conversation, Some(&w), &ticket);
    }
});
