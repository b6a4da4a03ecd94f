//! Typed Direct Line 3.0 client routes: a request path becomes an [`Endpoint`] or a refusal.

use std::fmt;

use http::Method;

use crate::error::GatewayError;

/// Longest conversation id accepted. Real ids are about 25 characters (PROTOCOL §2);
/// anything far longer is an attack on logs or upstream, not a conversation.
pub const MAX_CONVERSATION_ID_LEN: usize = 128;

/// A conversation id that is safe to put in an upstream path and a log line.
///
/// Direct Line ids are opaque but URL-path-safe (`FBfSqjVTqId8YuZUagotOF-us`):
/// only ASCII letters, digits, `-`, `_` and `.` are accepted, never `.`/`..` segments.
/// Percent-escapes are refused outright, so `%2F` and `%00` cannot smuggle a slash or NUL.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct ConversationId(Box<str>);

impl ConversationId {
    pub fn parse(raw: &str) -> Result<Self, GatewayError> {
        let valid = !raw.is_empty()
            && raw.len() <= MAX_CONVERSATION_ID_LEN
            && raw != "."
            && !raw.contains("..")
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
        if valid {
            Ok(Self(raw.into()))
        } else {
            Err(GatewayError::InvalidConversationId)
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&self.0, f)
    }
}

impl fmt::Display for ConversationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A client route of Direct Line 3.0 (PROTOCOL §10.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    TokensGenerate,
    TokensRefresh,
    StartConversation,
    Reconnect(ConversationId),
    GetActivities(ConversationId),
    PostActivity(ConversationId),
    Upload(ConversationId),
    Stream {
        conversation: ConversationId,
        multimodal: bool,
    },
    SessionId,
    /// CORS preflight for any of the routes above.
    Preflight(Route),
}

/// The route name used in metrics and logs: bounded, never a raw path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Route {
    TokensGenerate,
    TokensRefresh,
    StartConversation,
    Reconnect,
    GetActivities,
    PostActivity,
    Upload,
    Stream,
    SessionId,
    Preflight,
    /// The chat page at `/` (embedded emulator only).
    Demo,
    Unknown,
}

impl Route {
    pub fn as_str(self) -> &'static str {
        match self {
            Route::TokensGenerate => "tokens_generate",
            Route::TokensRefresh => "tokens_refresh",
            Route::StartConversation => "conversations_start",
            Route::Reconnect => "conversations_reconnect",
            Route::GetActivities => "activities_get",
            Route::PostActivity => "activities_post",
            Route::Upload => "upload",
            Route::Stream => "stream",
            Route::SessionId => "session_id",
            Route::Preflight => "preflight",
            Route::Demo => "demo",
            Route::Unknown => "unknown",
        }
    }
}

impl Endpoint {
    /// Parses `path` (without query) after stripping `prefix` (`""` or `/bots/support`).
    pub fn parse(method: &Method, path: &str, prefix: &str) -> Result<Self, GatewayError> {
        let rest = path
            .strip_prefix(prefix)
            .and_then(|p| p.strip_prefix("/v3/directline/"))
            .ok_or(GatewayError::NotFound)?;
        let segments: Vec<&str> = rest.split('/').collect();
        let (route, conversation) = match segments.as_slice() {
            ["tokens", "generate"] => (Route::TokensGenerate, None),
            ["tokens", "refresh"] => (Route::TokensRefresh, None),
            ["conversations"] => (Route::StartConversation, None),
            ["conversations", id] => (Route::Reconnect, Some(*id)),
            ["conversations", id, "activities"] => (Route::GetActivities, Some(*id)),
            ["conversations", id, "upload"] => (Route::Upload, Some(*id)),
            ["conversations", id, "stream"] => (Route::Stream, Some(*id)),
            ["conversations", id, "stream", "multimodal"] => (Route::Stream, Some(*id)),
            ["session", "getsessionid"] => (Route::SessionId, None),
            _ => return Err(GatewayError::NotFound),
        };
        let conversation = conversation.map(ConversationId::parse).transpose()?;
        if method == Method::OPTIONS {
            return Ok(Endpoint::Preflight(route));
        }
        let multimodal = segments.len() == 4;
        let allowed = match route {
            Route::TokensGenerate | Route::TokensRefresh | Route::StartConversation => {
                method == Method::POST
            }
            Route::Reconnect | Route::Stream | Route::SessionId => method == Method::GET,
            Route::GetActivities => method == Method::GET || method == Method::POST,
            Route::Upload | Route::PostActivity => method == Method::POST,
            Route::Preflight | Route::Demo | Route::Unknown => false,
        };
        if !allowed {
            return Err(GatewayError::MethodNotAllowed);
        }
        Ok(match (route, conversation) {
            (Route::TokensGenerate, _) => Endpoint::TokensGenerate,
            (Route::TokensRefresh, _) => Endpoint::TokensRefresh,
            (Route::StartConversation, _) => Endpoint::StartConversation,
            (Route::SessionId, _) => Endpoint::SessionId,
            (Route::Reconnect, Some(id)) => Endpoint::Reconnect(id),
            (Route::GetActivities, Some(id)) if method == Method::POST => {
                Endpoint::PostActivity(id)
            }
            (Route::GetActivities, Some(id)) => Endpoint::GetActivities(id),
            (Route::Upload, Some(id)) => Endpoint::Upload(id),
            (Route::Stream, Some(conversation)) => Endpoint::Stream {
                conversation,
                multimodal,
            },
            _ => return Err(GatewayError::NotFound),
        })
    }

    pub fn route(&self) -> Route {
        match self {
            Endpoint::TokensGenerate => Route::TokensGenerate,
            Endpoint::TokensRefresh => Route::TokensRefresh,
            Endpoint::StartConversation => Route::StartConversation,
            Endpoint::Reconnect(_) => Route::Reconnect,
            Endpoint::GetActivities(_) => Route::GetActivities,
            Endpoint::PostActivity(_) => Route::PostActivity,
            Endpoint::Upload(_) => Route::Upload,
            Endpoint::Stream { .. } => Route::Stream,
            Endpoint::SessionId => Route::SessionId,
            Endpoint::Preflight(_) => Route::Preflight,
        }
    }

    pub fn conversation(&self) -> Option<&ConversationId> {
        match self {
            Endpoint::Reconnect(id)
            | Endpoint::GetActivities(id)
            | Endpoint::PostActivity(id)
            | Endpoint::Upload(id)
            | Endpoint::Stream {
                conversation: id, ..
            } => Some(id),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(method: Method, path: &str) -> Result<Endpoint, GatewayError> {
        Endpoint::parse(&method, path, "")
    }

    fn id(raw: &str) -> ConversationId {
        ConversationId::parse(raw).unwrap()
    }

    #[test]
    fn every_client_route() {
        let cases = [
            (
                Method::POST,
                "/v3/directline/tokens/generate",
                Endpoint::TokensGenerate,
            ),
            (
                Method::POST,
                "/v3/directline/tokens/refresh",
                Endpoint::TokensRefresh,
            ),
            (
                Method::POST,
                "/v3/directline/conversations",
                Endpoint::StartConversation,
            ),
            (
                Method::GET,
                "/v3/directline/conversations/abc-us",
                Endpoint::Reconnect(id("abc-us")),
            ),
            (
                Method::GET,
                "/v3/directline/conversations/a/activities",
                Endpoint::GetActivities(id("a")),
            ),
            (
                Method::POST,
                "/v3/directline/conversations/a/activities",
                Endpoint::PostActivity(id("a")),
            ),
            (
                Method::POST,
                "/v3/directline/conversations/a/upload",
                Endpoint::Upload(id("a")),
            ),
            (
                Method::GET,
                "/v3/directline/conversations/a/stream",
                Endpoint::Stream {
                    conversation: id("a"),
                    multimodal: false,
                },
            ),
            (
                Method::GET,
                "/v3/directline/conversations/a/stream/multimodal",
                Endpoint::Stream {
                    conversation: id("a"),
                    multimodal: true,
                },
            ),
            (
                Method::GET,
                "/v3/directline/session/getsessionid",
                Endpoint::SessionId,
            ),
            (
                Method::OPTIONS,
                "/v3/directline/conversations",
                Endpoint::Preflight(Route::StartConversation),
            ),
        ];
        for (method, path, expected) in cases {
            assert_eq!(parse(method, path).unwrap(), expected, "{path}");
        }
    }

    #[test]
    fn prefix_is_required_when_configured() {
        let ep = Endpoint::parse(
            &Method::POST,
            "/bots/a/v3/directline/tokens/generate",
            "/bots/a",
        );
        assert_eq!(ep.unwrap(), Endpoint::TokensGenerate);
        let bare = Endpoint::parse(&Method::POST, "/v3/directline/tokens/generate", "/bots/a");
        assert_eq!(bare.unwrap_err(), GatewayError::NotFound);
    }

    #[test]
    fn unknown_routes_and_methods() {
        assert_eq!(parse(Method::GET, "/").unwrap_err(), GatewayError::NotFound);
        assert_eq!(
            parse(Method::GET, "/v3/directline/").unwrap_err(),
            GatewayError::NotFound
        );
        assert_eq!(
            parse(Method::GET, "/v3/directline/conversations/a/b").unwrap_err(),
            GatewayError::NotFound
        );
        assert_eq!(
            parse(Method::GET, "/v3/directline/conversations/a/").unwrap_err(),
            GatewayError::NotFound
        );
        assert_eq!(
            parse(Method::GET, "/v3/directline/tokens/generate").unwrap_err(),
            GatewayError::MethodNotAllowed
        );
        assert_eq!(
            parse(Method::DELETE, "/v3/directline/conversations/a").unwrap_err(),
            GatewayError::MethodNotAllowed
        );
    }

    #[test]
    fn odd_conversation_ids_are_refused() {
        let long = "a".repeat(MAX_CONVERSATION_ID_LEN + 1);
        for raw in [
            "..", ".", "a..b", "a%2Fb", "%2e%2e", "a%00", "a\u{0}b", "a b", "a\tb", "é", "a:b",
            "a|b", &long,
        ] {
            let path = format!("/v3/directline/conversations/{raw}/activities");
            assert_eq!(
                parse(Method::GET, &path).unwrap_err(),
                GatewayError::InvalidConversationId,
                "{raw:?}"
            );
        }
        assert!(ConversationId::parse(&"a".repeat(MAX_CONVERSATION_ID_LEN)).is_ok());
        assert!(ConversationId::parse("FBfSqjVTqId8YuZUagotOF-us").is_ok());
    }
}
