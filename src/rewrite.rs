//! streamUrl rewriting: upstream stream URLs become gateway URLs carrying a stream ticket.

use http::HeaderMap;
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};
use std::net::SocketAddr;
use url::Url;

use crate::config::Config;
use crate::endpoint::ConversationId;

/// Characters escaped in a watermark query value: it is opaque (PROTOCOL §4.1) and may hold
/// anything.
const QUERY_VALUE: &AsciiSet = &CONTROLS
    .add(b' ')
    .add(b'"')
    .add(b'#')
    .add(b'%')
    .add(b'&')
    .add(b'+')
    .add(b'<')
    .add(b'=')
    .add(b'>')
    .add(b'?')
    .add(b'`')
    .add(b'{')
    .add(b'}');

/// Longest watermark accepted from a client or upstream; real ones are short decimal strings.
pub const MAX_WATERMARK_LEN: usize = 256;

/// The WebSocket base clients should connect to: `wss://chat.contoso.com` (plus any path
/// of the public URL), without the Direct Line path. `authority` is the request URI's
/// (HTTP/2 sends `:authority` instead of `Host`).
pub fn public_ws_base(
    config: &Config,
    public_url: Option<&Url>,
    headers: &HeaderMap,
    authority: Option<&str>,
    peer: SocketAddr,
    local: SocketAddr,
) -> String {
    if let Some(public) = public_url {
        let scheme = if public.scheme() == "https" {
            "wss"
        } else {
            "ws"
        };
        let host = public.host_str().unwrap_or("localhost");
        let port = public.port().map(|p| format!(":{p}")).unwrap_or_default();
        let path = public.path().trim_end_matches('/');
        return format!("{scheme}://{host}{port}{path}");
    }
    let forwarded =
        |name: &str| crate::forwarded::trusted_header(&config.trusted_proxies, peer, headers, name);
    let scheme = match forwarded("x-forwarded-proto").as_deref() {
        Some("https") | Some("wss") => "wss",
        Some(_) => "ws",
        None if config.tls.is_some() => "wss",
        None => "ws",
    };
    let host = forwarded("x-forwarded-host")
        .or_else(|| {
            headers
                .get(http::header::HOST)
                .and_then(|h| h.to_str().ok())
                .or(authority)
                .map(str::to_owned)
        })
        .filter(|h| is_host(h))
        .unwrap_or_else(|| local.to_string());
    format!("{scheme}://{host}")
}

/// A `Host` value we are willing to echo into a URL: a name or address with an optional port.
fn is_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']'))
}

/// The gateway stream URL handed to clients. The path still ends in `/stream`, so DLJS's
/// `/multimodal` variant keeps working (PROTOCOL §5.1).
pub fn gateway_stream_url(
    ws_base: &str,
    prefix: &str,
    conversation: &ConversationId,
    watermark: Option<&str>,
    ticket: &str,
) -> String {
    let watermark = utf8_percent_encode(watermark.unwrap_or("-"), QUERY_VALUE);
    format!(
        "{ws_base}{prefix}/v3/directline/conversations/{conversation}/stream?watermark={watermark}&t={ticket}"
    )
}

/// The watermark in an upstream stream URL (`None` for `-` or absent), read with the WHATWG
/// parser. The start/reconnect path uses [`read_upstream_stream_url`]; this reading is the
/// reference the tests and `fuzz/stream_url_rewrite` check that one against.
pub fn stream_url_watermark(stream_url: &str) -> Option<String> {
    let url = Url::parse(stream_url).ok()?;
    let (_, value) = url.query_pairs().find(|(k, _)| k == "watermark")?;
    is_sendable_watermark(&value)
        .then(|| normalize_watermark(&value))
        .flatten()
}

/// Whether a client could send this watermark back in a query (`query_watermark`'s bound).
fn is_sendable_watermark(value: &str) -> bool {
    value.len() <= MAX_WATERMARK_LEN && !value.chars().any(char::is_control)
}

/// Checks that an upstream stream URL is a WebSocket URL we can dial later. It is read the
/// way the dial reads it (tungstenite parses an `http::Uri` and knows exactly `ws` and
/// `wss`), not with the lenient WHATWG parser, which accepts spaces, `ws:host`, backslashes
/// and upper-case schemes that would then fail at every dial (found by fuzzing).
pub fn is_upstream_stream_url(stream_url: &str) -> bool {
    read_upstream_stream_url(stream_url).is_some()
}

/// What the gateway needs from an upstream stream URL it accepted.
#[derive(Debug, PartialEq, Eq)]
pub struct UpstreamStreamUrl {
    /// The URL's `watermark` parameter, as [`stream_url_watermark`] reads it.
    pub watermark: Option<String>,
}

/// [`is_upstream_stream_url`] and [`stream_url_watermark`] in one parse of each kind: the
/// URLs carry a long token, and reading them three times was a tenth of a start's cost.
/// The watermark comes from the `http::Uri`'s query; for a URL both parsers accept, that is
/// the query the WHATWG parser reads (it only percent-encodes what `http::Uri` refuses).
pub fn read_upstream_stream_url(stream_url: &str) -> Option<UpstreamStreamUrl> {
    parse_stream_url(stream_url).map(|(_, read)| read)
}

fn parse_stream_url(stream_url: &str) -> Option<(http::Uri, UpstreamStreamUrl)> {
    let uri = stream_url.parse::<http::Uri>().ok()?;
    let valid = matches!(uri.scheme_str(), Some("ws" | "wss"))
        && uri.host().is_some_and(|host| !host.is_empty())
        && Url::parse(stream_url).is_ok();
    if !valid {
        return None;
    }
    let watermark = match uri
        .query()
        .and_then(|query| form_urlencoded::parse(query.as_bytes()).find(|(k, _)| k == "watermark"))
    {
        // A watermark no client could send back (`query_watermark`'s bound) would break every
        // later reconnect of the conversation: the URL is refused now instead.
        Some((_, value)) if !is_sendable_watermark(&value) => return None,
        Some((_, value)) => normalize_watermark(&value),
        None => None,
    };
    Some((uri, UpstreamStreamUrl { watermark }))
}

/// Where a bot's upstream stream URLs may point (ARCHITECTURE §13): the configured upstream's
/// host and port, `wss` for an `https` upstream and `ws` only for an `http` one, and the
/// upstream's own stream path. An upstream (or whatever answers in its name) that hands out
/// another URL would otherwise have the gateway dial anywhere, carrying the upstream ticket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamUrlPin {
    scheme: &'static str,
    /// As the WHATWG parser gives it: lower case, IPv6 in brackets.
    host: String,
    port: u16,
    /// `{base path}/v3/directline/conversations/`.
    conversations: String,
}

/// Why an upstream stream URL was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StreamUrlRefused {
    /// Not a URL the dial can read.
    Invalid,
    /// Dialable, but not the bot's upstream: `host` (only the host, never the query with its
    /// ticket) is what the log line may show.
    Foreign { host: String },
}

impl StreamUrlRefused {
    pub fn host(&self) -> &str {
        match self {
            StreamUrlRefused::Invalid => "",
            StreamUrlRefused::Foreign { host } => host,
        }
    }
}

impl StreamUrlPin {
    /// The pin of an upstream base URL (`https://directline.botframework.com`,
    /// `https://host/.bot`, `http://127.0.0.1:PORT`); `None` for other schemes.
    pub fn new(base: &Url) -> Option<Self> {
        let scheme = match base.scheme() {
            "https" => "wss",
            "http" => "ws",
            _ => return None,
        };
        Some(Self {
            scheme,
            host: base.host_str()?.to_ascii_lowercase(),
            port: base.port_or_known_default()?,
            conversations: format!(
                "{}/v3/directline/conversations/",
                base.path().trim_end_matches('/')
            ),
        })
    }

    /// Reads the stream URL of a start or reconnect answer for `conversation`: dialable, on
    /// the pinned origin, at exactly `…/conversations/{conversation}/stream`.
    pub fn read(
        &self,
        stream_url: &str,
        conversation: &ConversationId,
    ) -> Result<UpstreamStreamUrl, StreamUrlRefused> {
        let (uri, read) = parse_stream_url(stream_url).ok_or(StreamUrlRefused::Invalid)?;
        let own_path = uri
            .path()
            .strip_prefix(self.conversations.as_str())
            .and_then(|rest| rest.strip_prefix(conversation.as_str()))
            == Some("/stream");
        if self.same_origin(&uri) && own_path {
            Ok(read)
        } else {
            Err(foreign(&uri))
        }
    }

    /// The check before a dial: the pinned origin and a path among the upstream's
    /// conversations (the dial also opens `…/stream/multimodal`). Tickets sealed before a
    /// reload, or by an older replica, are checked again here.
    pub fn check_dial(&self, uri: &http::Uri) -> Result<(), StreamUrlRefused> {
        let path = uri.path();
        let own_path = path.starts_with(self.conversations.as_str())
            && !path
                .split('/')
                .any(|segment| segment == "." || segment == "..");
        if self.same_origin(uri) && own_path {
            Ok(())
        } else {
            Err(foreign(uri))
        }
    }

    fn same_origin(&self, uri: &http::Uri) -> bool {
        let Some(authority) = uri.authority() else {
            return false;
        };
        let default_port = if self.scheme == "wss" { 443 } else { 80 };
        uri.scheme_str() == Some(self.scheme)
            // `user@host`: refused outright rather than trusting every parser to agree.
            && !authority.as_str().contains('@')
            && authority.host().eq_ignore_ascii_case(&self.host)
            && uri.port_u16().unwrap_or(default_port) == self.port
    }
}

fn foreign(uri: &http::Uri) -> StreamUrlRefused {
    let host = uri.host().unwrap_or("");
    // Bounded: the host goes into a log line.
    let host = host.get(..host.len().min(255)).unwrap_or("");
    StreamUrlRefused::Foreign {
        host: host.to_owned(),
    }
}

/// Watermarks are opaque strings (PROTOCOL §4.1): copied verbatim; `-` and empty mean "none".
pub fn normalize_watermark(raw: &str) -> Option<String> {
    (!raw.is_empty() && raw != "-").then(|| raw.to_owned())
}

/// The `watermark` query parameter of a client request, decoded and bounded.
pub fn query_watermark(query: Option<&str>) -> Result<Option<String>, crate::error::GatewayError> {
    let Some(query) = query else { return Ok(None) };
    let mut found = None;
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        if key == "watermark" {
            if !is_sendable_watermark(&value) {
                return Err(crate::error::GatewayError::InvalidQuery);
            }
            found = normalize_watermark(&value);
        }
    }
    Ok(found)
}

/// `?watermark=…` for an upstream request, or nothing.
pub fn watermark_query(watermark: Option<&str>) -> String {
    match watermark {
        Some(w) => format!("?watermark={}", utf8_percent_encode(w, QUERY_VALUE)),
        None => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::IpNet;

    fn conv() -> ConversationId {
        ConversationId::parse("FBfSqjVTqId8YuZUagotOF-us").unwrap()
    }

    /// What the dial cannot read is refused up front (regressions found by fuzzing).
    #[test]
    fn only_dialable_stream_urls_are_accepted() {
        for odd in [
            "ws:directline.botframework.com/v3/directline/conversations/c/stream",
            " wss://directline.botframework.com/v3/directline/conversations/c/stream",
            "wss://directline.botframework.com/v3/directline/conversations/c/stream?t=a b",
            "wss:\\\\directline.botframework.com\\v3",
            "https://directline.botframework.com/v3/directline/conversations/c/stream",
            "wss:///v3/directline/conversations/c/stream",
        ] {
            assert!(!is_upstream_stream_url(odd), "{odd:?}");
        }
        assert!(is_upstream_stream_url(
            "wss://directline.botframework.com/v3/directline/conversations/c/stream?watermark=-&t=x"
        ));
    }

    /// Every upstream host form of ARCHITECTURE §6 yields the same kind of gateway URL, with the
    /// upstream watermark kept and no upstream host or credential left in it.
    #[test]
    fn every_upstream_host_form() {
        let forms = [
            "wss://directline.botframework.com/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?watermark=-&t=UPSTREAM.JWT",
            "wss://europe.directline.botframework.com/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?watermark=12&t=UPSTREAM.JWT",
            "wss://india.directline.botframework.com/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?t=UPSTREAM.JWT&watermark=0000a-42",
            "wss://myapp.azurewebsites.net/.bot/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?watermark=7&t=UPSTREAM.JWT",
            "ws://127.0.0.1:3978/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?watermark=3&t=UPSTREAM.JWT",
            "wss://directline.botframework.azure.us/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?watermark=5&t=UPSTREAM.JWT",
        ];
        let expected = [
            None,
            Some("12"),
            Some("0000a-42"),
            Some("7"),
            Some("3"),
            Some("5"),
        ];
        for (upstream, want) in forms.iter().zip(expected) {
            assert!(is_upstream_stream_url(upstream));
            let watermark = stream_url_watermark(upstream);
            assert_eq!(watermark.as_deref(), want, "{upstream}");
            let read = read_upstream_stream_url(upstream).expect(upstream);
            assert_eq!(read.watermark.as_deref(), want, "{upstream}");
            let rewritten = gateway_stream_url(
                "wss://chat.contoso.com",
                "",
                &conv(),
                watermark.as_deref(),
                "dlgw1.TICKET",
            );
            assert!(rewritten.starts_with("wss://chat.contoso.com/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?"));
            assert!(!rewritten.contains("UPSTREAM"));
            assert!(
                !rewritten.contains("botframework")
                    && !rewritten.contains("azurewebsites")
                    && !rewritten.contains("3978")
            );
            let parsed = Url::parse(&rewritten).unwrap();
            assert!(parsed.path().ends_with("/stream"));
            let query: Vec<(String, String)> = parsed.query_pairs().into_owned().collect();
            assert_eq!(query[0], ("watermark".into(), want.unwrap_or("-").into()));
            assert_eq!(query[1], ("t".into(), "dlgw1.TICKET".into()));
        }
    }

    #[test]
    fn an_upstream_watermark_no_client_could_send_back_refuses_the_url() {
        let url = |watermark: &str| {
            let query = form_urlencoded::Serializer::new(String::new())
                .append_pair("watermark", watermark)
                .append_pair("t", "TICKET")
                .finish();
            format!(
                "wss://directline.botframework.com/v3/directline/conversations/abc/stream?{query}"
            )
        };
        let longest = "7".repeat(MAX_WATERMARK_LEN);
        assert_eq!(
            read_upstream_stream_url(&url(&longest)).map(|r| r.watermark),
            Some(Some(longest.clone()))
        );
        assert_eq!(stream_url_watermark(&url(&longest)), Some(longest));
        for refused in ["7".repeat(MAX_WATERMARK_LEN + 1), "12\n".to_owned()] {
            assert!(
                read_upstream_stream_url(&url(&refused)).is_none(),
                "{refused:?}"
            );
            assert!(!is_upstream_stream_url(&url(&refused)), "{refused:?}");
            assert_eq!(stream_url_watermark(&url(&refused)), None, "{refused:?}");
        }
    }

    #[test]
    fn stream_urls_are_pinned_to_the_upstream() {
        let c = conv();
        let pin = |base: &str| StreamUrlPin::new(&Url::parse(base).unwrap()).unwrap();
        let global = pin("https://directline.botframework.com");
        let ok = "wss://directline.botframework.com/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?watermark=4&t=x";
        assert_eq!(global.read(ok, &c).unwrap().watermark.as_deref(), Some("4"));
        let upper = ok.replace("directline.botframework", "DirectLine.BotFramework");
        assert!(global.read(&upper, &c).is_ok());
        let with_port = ok.replace(".com/", ".com:443/");
        assert!(global.read(&with_port, &c).is_ok());
        let path = "/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?t=x";
        for foreign in [
            format!("ws://directline.botframework.com{path}"),
            format!("wss://directline.botframework.com:8443{path}"),
            format!("wss://evil.example{path}"),
            format!("wss://directline.botframework.com.evil.example{path}"),
            format!("wss://x@directline.botframework.com{path}"),
            format!("wss://directline.botframework.com@evil.example{path}"),
            "wss://directline.botframework.com/anything?t=x".to_owned(),
            "wss://directline.botframework.com/v3/directline/conversations/other/stream?t=x"
                .to_owned(),
            "wss://directline.botframework.com/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream/../../x?t=x".to_owned(),
            "wss://directline.botframework.com/.bot/v3/directline/conversations/FBfSqjVTqId8YuZUagotOF-us/stream?t=x".to_owned(),
        ] {
            let refused = global.read(&foreign, &c).unwrap_err();
            assert!(matches!(refused, StreamUrlRefused::Foreign { .. }), "{foreign}");
            assert!(!refused.host().contains("t=x"), "{foreign}");
        }
        assert_eq!(global.read("not a url", &c), Err(StreamUrlRefused::Invalid));

        // An http (loopback, test) upstream: ws, its own port; an app path is kept.
        let local = pin("http://127.0.0.1:3978/");
        assert!(
            local
                .read(&format!("ws://127.0.0.1:3978{path}"), &c)
                .is_ok()
        );
        assert!(
            local
                .read(&format!("wss://127.0.0.1:3978{path}"), &c)
                .is_err()
        );
        assert!(
            local
                .read(&format!("ws://127.0.0.2:3978{path}"), &c)
                .is_err()
        );
        assert!(
            local
                .read(&format!("ws://127.0.0.1:3979{path}"), &c)
                .is_err()
        );
        let app = pin("https://myapp.azurewebsites.net/.bot/");
        assert!(
            app.read(&format!("wss://myapp.azurewebsites.net/.bot{path}"), &c)
                .is_ok()
        );
        assert!(
            app.read(&format!("wss://myapp.azurewebsites.net{path}"), &c)
                .is_err()
        );
        let v6 = pin("http://[::1]:9000");
        assert!(v6.read(&format!("ws://[::1]:9000{path}"), &c).is_ok());

        // The dial's check: the origin, and a path among the conversations (multimodal too).
        let dial = |url: &str| global.check_dial(&url.parse::<http::Uri>().unwrap());
        assert!(dial(&ok.replace("/stream?", "/stream/multimodal?")).is_ok());
        assert!(dial("wss://evil.example/v3/directline/conversations/c/stream").is_err());
        assert!(
            dial("wss://directline.botframework.com/v3/directline/conversations/../x").is_err()
        );
        assert!(dial("wss://directline.botframework.com/other").is_err());
        assert!(StreamUrlPin::new(&Url::parse("ftp://h").unwrap()).is_none());
    }

    #[test]
    fn odd_watermarks_survive_encoding() {
        let url = gateway_stream_url("ws://h", "/bots/a", &conv(), Some("a&b=c d%"), "T");
        assert!(url.starts_with("ws://h/bots/a/v3/directline/"));
        let parsed = Url::parse(&url).unwrap();
        let (_, w) = parsed
            .query_pairs()
            .find(|(k, _)| k == "watermark")
            .unwrap();
        assert_eq!(w, "a&b=c d%");
    }

    #[test]
    fn client_watermark_query() {
        assert_eq!(query_watermark(None).unwrap(), None);
        assert_eq!(query_watermark(Some("watermark=")).unwrap(), None);
        assert_eq!(query_watermark(Some("watermark=-")).unwrap(), None);
        assert_eq!(
            query_watermark(Some("x=1&watermark=42"))
                .unwrap()
                .as_deref(),
            Some("42")
        );
        assert!(query_watermark(Some("watermark=%00")).is_err());
        assert!(query_watermark(Some(&format!("watermark={}", "9".repeat(300)))).is_err());
        assert_eq!(watermark_query(Some("a b")), "?watermark=a%20b");
    }

    #[test]
    fn public_base_from_config_host_and_trusted_proxy() {
        let mut config = Config::default();
        let peer: SocketAddr = "10.1.1.1:5000".parse().unwrap();
        let local: SocketAddr = "127.0.0.1:8080".parse().unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("host", "gw.local:8080".parse().unwrap());
        headers.insert("x-forwarded-proto", "https".parse().unwrap());
        headers.insert("x-forwarded-host", "chat.contoso.com".parse().unwrap());
        assert_eq!(
            public_ws_base(&config, None, &headers, None, peer, local),
            "ws://gw.local:8080"
        );
        config.trusted_proxies = vec![IpNet::parse("10.0.0.0/8").unwrap()];
        assert_eq!(
            public_ws_base(&config, None, &headers, None, peer, local),
            "wss://chat.contoso.com"
        );
        let public = Url::parse("https://bots.example.com/chat/").unwrap();
        assert_eq!(
            public_ws_base(&config, Some(&public), &headers, None, peer, local),
            "wss://bots.example.com/chat"
        );
        let mut evil = HeaderMap::new();
        evil.insert("host", "evil.com/path?x".parse().unwrap());
        assert_eq!(
            public_ws_base(&Config::default(), None, &evil, None, peer, local),
            "ws://127.0.0.1:8080"
        );
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn host() -> impl Strategy<Value = String> {
            prop_oneof![
                Just("directline.botframework.com".to_owned()),
                "[a-z]{1,12}\\.directline\\.botframework\\.com",
                "[a-z][a-z0-9-]{0,20}\\.azurewebsites\\.net",
                Just("directline.botframework.azure.us".to_owned()),
                Just("127.0.0.1".to_owned()),
                Just("[::1]".to_owned()),
            ]
        }

        proptest! {
            /// Any upstream host form, port, path prefix and query order: the watermark read
            /// from the upstream URL survives into the gateway URL and back out of a client's
            /// query, and nothing of the upstream (host, `t`) is left in what clients get.
            #[test]
            fn rewriting_keeps_the_watermark_and_drops_the_upstream(
                secure in any::<bool>(),
                host in host(),
                port in proptest::option::of(1u16..),
                app_path in prop_oneof![Just(""), Just("/.bot")],
                watermark in proptest::option::of("[A-Za-z0-9|_.~ +&=%-]{1,40}"),
                extra in proptest::collection::vec(("[a-z]{1,6}", "[a-z0-9]{0,6}"), 0..3),
                order in 0usize..4,
                upstream_t in "[A-Za-z0-9._-]{20,60}",
            ) {
                let scheme = if secure { "wss" } else { "ws" };
                let port = port.map(|p| format!(":{p}")).unwrap_or_default();
                let mut pairs: Vec<(String, String)> = extra;
                pairs.push(("t".into(), upstream_t.clone()));
                if let Some(w) = &watermark {
                    pairs.push(("watermark".into(), w.clone()));
                }
                let len = pairs.len();
                pairs.rotate_left(order % len);
                let query = form_urlencoded::Serializer::new(String::new())
                    .extend_pairs(pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                    .finish();
                let upstream = format!(
                    "{scheme}://{host}{port}{app_path}/v3/directline/conversations/{}/stream?{query}",
                    conv()
                );
                prop_assert!(is_upstream_stream_url(&upstream), "{upstream}");
                let base = format!("{}://{host}{port}{app_path}", if secure { "https" } else { "http" });
                let pin = StreamUrlPin::new(&Url::parse(&base).unwrap()).unwrap();
                prop_assert!(pin.read(&upstream, &conv()).is_ok(), "{} refused for {}", upstream, base);
                let read = stream_url_watermark(&upstream);
                let expected = watermark.as_deref().and_then(normalize_watermark);
                prop_assert_eq!(&read, &expected);
                let one_pass = read_upstream_stream_url(&upstream).map(|r| r.watermark);
                prop_assert_eq!(one_pass, Some(expected.clone()));

                let url = gateway_stream_url(
                    "wss://chat.contoso.com",
                    "/bots/support",
                    &conv(),
                    read.as_deref(),
                    "dlgw1.TICKET",
                );
                prop_assert!(url.starts_with(
                    "wss://chat.contoso.com/bots/support/v3/directline/conversations/"
                ));
                prop_assert!(!url.contains(&upstream_t), "upstream t leaked: {}", url);
                prop_assert!(!url.contains(&format!("//{host}")), "upstream host leaked: {}", url);
                let client_query = url.split_once('?').map(|(_, q)| q);
                let back = query_watermark(client_query).unwrap();
                prop_assert_eq!(back, expected);
            }
        }
    }
}
