//! Gateway errors: who is to blame, and the one place they become Direct Line error bodies.

use std::sync::Arc;

use http::{HeaderValue, Response, StatusCode, header};

use crate::body::{self, Body};

/// Who caused a failure; it decides the log level and keeps 4xx and 5xx honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Gateway,
}

/// Every failure the gateway answers itself. Messages are fixed strings: details
/// (which may contain upstream text) go to the log, never to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GatewayError {
    #[error("no token in the Authorization header")]
    MissingCredential,
    #[error("the token could not be opened")]
    InvalidToken,
    #[error("the token has expired")]
    TokenExpired,
    #[error("the token has expired and this bot cannot resume conversations")]
    ResumeUnavailable,
    #[error("the token belongs to another conversation")]
    WrongConversation,
    #[error("the token belongs to another bot")]
    WrongBot,
    #[error("the stream ticket is invalid, expired or for another conversation")]
    InvalidTicket,
    /// Signed-in mode: no identity token, or one that failed `reason`'s check.
    #[error("sign-in refused ({reason})")]
    SignInRefused { reason: &'static str },
    /// Signed-in mode: a valid sign-in of another person than the token's user.
    #[error("the sign-in is of another user than the token's")]
    SignInMismatch,
    /// Signed-in mode: the identity provider's keys could not be fetched and none are cached.
    #[error("the identity provider's keys are unavailable")]
    IdentityUnavailable,
    #[error("the conversation id is not valid")]
    InvalidConversationId,
    #[error("no such route")]
    NotFound,
    #[error("method not allowed on this route")]
    MethodNotAllowed,
    #[error("request body over the {limit} byte limit")]
    BodyTooLarge { limit: u64 },
    #[error("request URL over the limit")]
    UrlTooLong,
    #[error("request headers over the limit")]
    HeadersTooLarge,
    #[error("an HTTP/1.1 request needs exactly one Host header")]
    BadHost,
    #[error("the body is not valid JSON")]
    MalformedJson,
    #[error("the activity must be a JSON object")]
    InvalidActivity,
    #[error("unsupported content type")]
    UnsupportedMediaType,
    #[error("a query parameter is not valid")]
    InvalidQuery,
    #[error("the request body could not be read")]
    BodyRead,
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("the origin is not allowed")]
    OriginNotAllowed,
    #[error("too many WebSocket connections for this conversation")]
    TooManySockets,
    #[error("rate limit reached; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("WebSocket upgrade required")]
    UpgradeRequired,
    /// `cause` is the transport's error chain (`tcp connect error: Connection refused`,
    /// `dns error: …`, `invalid peer certificate: …`) for the log line, never for the client.
    #[error("upstream could not be reached: {cause}")]
    UpstreamUnreachable { cause: Arc<str> },
    #[error("upstream answered something the gateway cannot use")]
    UpstreamInvalid,
    #[error("upstream timeout: no answer in time")]
    UpstreamTimeout,
    #[error("the gateway is shutting down")]
    Draining,
    #[error("internal gateway error")]
    Internal,
}

impl GatewayError {
    pub fn status(&self) -> StatusCode {
        use GatewayError::*;
        match self {
            MissingCredential | SignInRefused { .. } => StatusCode::UNAUTHORIZED,
            SignInMismatch => StatusCode::FORBIDDEN,
            IdentityUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            InvalidToken | TokenExpired | ResumeUnavailable | WrongConversation | WrongBot
            | InvalidTicket | OriginNotAllowed => StatusCode::FORBIDDEN,
            InvalidConversationId
            | MalformedJson
            | InvalidActivity
            | InvalidQuery
            | BodyRead
            | BadHost => StatusCode::BAD_REQUEST,
            NotFound => StatusCode::NOT_FOUND,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            UrlTooLong => StatusCode::URI_TOO_LONG,
            HeadersTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            TooManySockets | RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            UpgradeRequired => StatusCode::UPGRADE_REQUIRED,
            UpstreamUnreachable { .. } | UpstreamInvalid => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            Draining => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The stable `error.code`; Direct Line's own codes where one exists (spec §1.5).
    pub fn code(&self) -> &'static str {
        use GatewayError::*;
        match self {
            TokenExpired | ResumeUnavailable => "TokenExpired",
            MissingCredential
            | InvalidToken
            | WrongConversation
            | WrongBot
            | InvalidTicket
            | InvalidConversationId
            | MalformedJson
            | InvalidActivity
            | InvalidQuery
            | BodyRead
            | BadHost
            | OriginNotAllowed
            | SignInRefused { .. }
            | SignInMismatch => "BadArgument",
            IdentityUnavailable => "ServiceUnavailable",
            NotFound => "NotFound",
            BodyTimeout => "RequestTimeout",
            MethodNotAllowed => "MethodNotAllowed",
            BodyTooLarge { .. } => "MessageSizeTooBig",
            UrlTooLong => "UriTooLong",
            HeadersTooLarge => "HeadersTooLarge",
            UnsupportedMediaType => "UnsupportedMediaType",
            TooManySockets | RateLimited { .. } => "TooManyRequests",
            UpgradeRequired => "UpgradeRequired",
            UpstreamUnreachable { .. } => "UpstreamUnavailable",
            UpstreamInvalid => "UpstreamError",
            UpstreamTimeout => "UpstreamTimeout",
            Draining => "ServiceUnavailable",
            Internal => "ServiceError",
        }
    }

    pub fn message(&self) -> &'static str {
        use GatewayError::*;
        match self {
            MissingCredential => "Missing token",
            InvalidToken => "Invalid token",
            TokenExpired => "Token expired",
            ResumeUnavailable => {
                "Token expired; this bot cannot resume a conversation after its token expired (enhanced authentication), start a new one"
            }
            WrongConversation => "Token is not valid for this conversation",
            WrongBot => "Token is not valid for this bot",
            InvalidTicket => "Invalid or expired stream URL",
            SignInRefused { .. } => {
                "Sign-in required: a valid identity token from the configured issuer"
            }
            SignInMismatch => "The sign-in is of another user than the token's",
            IdentityUnavailable => "The identity provider cannot be reached; retry later",
            InvalidConversationId => "Invalid conversation id",
            NotFound => "Not found",
            MethodNotAllowed => "Method not allowed",
            BodyTooLarge { .. } => "Request body too large",
            UrlTooLong => "Request URL too long",
            HeadersTooLarge => "Request headers too large",
            BadHost => "An HTTP/1.1 request needs exactly one Host header",
            MalformedJson => "Malformed JSON body",
            InvalidActivity => "Activity must be a JSON object",
            UnsupportedMediaType => "Content-Type must be application/json",
            InvalidQuery => "Invalid query parameter",
            BodyRead => "Request body could not be read",
            BodyTimeout => "Request body not received in time",
            OriginNotAllowed => "Origin not allowed",
            TooManySockets => "Too many connections for this conversation",
            RateLimited { .. } => "Too many requests; retry after the time in Retry-After",
            UpgradeRequired => "WebSocket upgrade required",
            UpstreamUnreachable { .. } => "Direct Line could not be reached",
            UpstreamInvalid => "Direct Line returned an invalid response",
            UpstreamTimeout => "Direct Line did not respond in time",
            Draining => "Gateway is shutting down",
            Internal => "Internal gateway error",
        }
    }

    pub fn blame(&self) -> Blame {
        use GatewayError::*;
        match self {
            UpstreamUnreachable { .. }
            | UpstreamInvalid
            | UpstreamTimeout
            | IdentityUnavailable => Blame::Upstream,
            Internal | Draining => Blame::Gateway,
            _ => Blame::Client,
        }
    }

    /// Metric label for refusals of credentials; `None` for everything else.
    pub fn auth_refusal_reason(&self) -> Option<&'static str> {
        use GatewayError::*;
        match self {
            MissingCredential => Some("missing"),
            InvalidToken => Some("invalid"),
            TokenExpired | ResumeUnavailable => Some("expired"),
            WrongConversation => Some("wrong_conversation"),
            WrongBot => Some("wrong_bot"),
            InvalidTicket => Some("invalid_ticket"),
            SignInRefused { reason } => Some(reason),
            SignInMismatch => Some("idp_other_user"),
            IdentityUnavailable => Some("idp_unavailable"),
            _ => None,
        }
    }

    pub fn into_response(self) -> Response<Body> {
        let mut response = error_response(self.status(), self.code(), self.message());
        if matches!(self, GatewayError::MissingCredential) {
            response
                .headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, GatewayError::SignInRefused { .. }) {
            // RFC 6750 §3: the token given (if any) is not acceptable.
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer error=\"invalid_token\""),
            );
        }
        match self {
            GatewayError::TooManySockets | GatewayError::Draining => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::IdentityUnavailable => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            GatewayError::RateLimited { retry_after_secs } => {
                response
                    .headers_mut()
                    .insert(header::RETRY_AFTER, HeaderValue::from(retry_after_secs));
            }
            _ => {}
        }
        response
    }
}

/// An error and its sources as one line, `outer: inner: innermost`, for logs. A source whose
/// text its parent already printed (some errors include their cause) is not repeated.
pub fn cause_chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut line = error.to_string();
    let mut source = error.source();
    while let Some(inner) = source {
        let text = inner.to_string();
        if !text.is_empty() && !line.ends_with(&text) {
            line.push_str(": ");
            if is_tls(inner) {
                // rustls's texts ("received corrupt message of type …") do not say TLS.
                line.push_str("tls: ");
            }
            line.push_str(&text);
        }
        source = inner.source();
    }
    line
}

/// A rustls error, also when wrapped in the `io::Error` the TLS stream reports it as.
fn is_tls(error: &(dyn std::error::Error + 'static)) -> bool {
    if error.is::<rustls::Error>() {
        return true;
    }
    // `io::Error::source` skips the error it wraps; look inside, through nested wrappers.
    match error
        .downcast_ref::<std::io::Error>()
        .and_then(std::io::Error::get_ref)
    {
        Some(inner) => is_tls(inner),
        None => false,
    }
}

/// A Direct Line ErrorResponse: `{"error":{"code":…,"message":…}}`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(body::full(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json; charset=utf-8"),
    );
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    /// Pins the status and code of every variant: clients key on these (spec §1.5, §10.8).
    #[test]
    fn status_and_code_table() {
        use GatewayError::*;
        let table: &[(GatewayError, u16, &str, Blame)] = &[
            (MissingCredential, 401, "BadArgument", Blame::Client),
            (InvalidToken, 403, "BadArgument", Blame::Client),
            (TokenExpired, 403, "TokenExpired", Blame::Client),
            (ResumeUnavailable, 403, "TokenExpired", Blame::Client),
            (WrongConversation, 403, "BadArgument", Blame::Client),
            (InvalidTicket, 403, "BadArgument", Blame::Client),
            (
                SignInRefused {
                    reason: "idp_expired",
                },
                401,
                "BadArgument",
                Blame::Client,
            ),
            (SignInMismatch, 403, "BadArgument", Blame::Client),
            (
                IdentityUnavailable,
                503,
                "ServiceUnavailable",
                Blame::Upstream,
            ),
            (InvalidConversationId, 400, "BadArgument", Blame::Client),
            (NotFound, 404, "NotFound", Blame::Client),
            (BodyTimeout, 408, "RequestTimeout", Blame::Client),
            (MethodNotAllowed, 405, "MethodNotAllowed", Blame::Client),
            (
                BodyTooLarge { limit: 1 },
                413,
                "MessageSizeTooBig",
                Blame::Client,
            ),
            (UrlTooLong, 414, "UriTooLong", Blame::Client),
            (HeadersTooLarge, 431, "HeadersTooLarge", Blame::Client),
            (BadHost, 400, "BadArgument", Blame::Client),
            (MalformedJson, 400, "BadArgument", Blame::Client),
            (InvalidActivity, 400, "BadArgument", Blame::Client),
            (
                UnsupportedMediaType,
                415,
                "UnsupportedMediaType",
                Blame::Client,
            ),
            (TooManySockets, 429, "TooManyRequests", Blame::Client),
            (
                RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "TooManyRequests",
                Blame::Client,
            ),
            (
                UpstreamUnreachable {
                    cause: Arc::from("tcp connect error: Connection refused"),
                },
                502,
                "UpstreamUnavailable",
                Blame::Upstream,
            ),
            (UpstreamInvalid, 502, "UpstreamError", Blame::Upstream),
            (UpstreamTimeout, 504, "UpstreamTimeout", Blame::Upstream),
            (Draining, 503, "ServiceUnavailable", Blame::Gateway),
            (Internal, 500, "ServiceError", Blame::Gateway),
        ];
        for (error, status, code, blame) in table {
            assert_eq!(error.status().as_u16(), *status, "{error:?}");
            assert_eq!(error.code(), *code, "{error:?}");
            assert_eq!(error.blame(), *blame, "{error:?}");
        }
    }

    #[test]
    fn cause_chain_prints_every_source_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("client error (Connect)")]
        struct Outer(#[source] std::io::Error);
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        assert_eq!(
            cause_chain(&Outer(refused)),
            "client error (Connect): Connection refused"
        );
        let unreachable = GatewayError::UpstreamUnreachable {
            cause: Arc::from("client error (Connect): Connection refused"),
        };
        assert_eq!(
            unreachable.to_string(),
            "upstream could not be reached: client error (Connect): Connection refused"
        );
        // The client never sees the cause.
        assert_eq!(unreachable.message(), "Direct Line could not be reached");
    }

    #[tokio::test]
    async fn body_is_direct_line_shaped() {
        let response = GatewayError::TokenExpired.into_response();
        assert_eq!(response.status(), 403);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "TokenExpired");
        assert_eq!(json["error"]["message"], "Token expired");
    }
}
