//! Gateway errors: who is to blame, what a refusal is (the gateway's own or Direct Line's),
//! and the one place a refusal becomes a Direct Line error body ([`Refusal::into_response`]).

use std::sync::Arc;

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};

use crate::boxed_body::{self, Body};

/// Who caused a failure; it decides the log level and keeps 4xx and 5xx honest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Blame {
    Client,
    Upstream,
    Gateway,
}

/// The error behind an upstream failure, shared so [`GatewayError`] stays cheap to clone.
/// Two causes are equal only when they are the same error (tests compare variants).
#[derive(Clone)]
pub struct Cause(Arc<dyn std::error::Error + Send + Sync + 'static>);

impl Cause {
    pub fn new(error: impl std::error::Error + Send + Sync + 'static) -> Self {
        Self(Arc::new(error))
    }

    /// A cause that arrives boxed (a body's error).
    pub fn boxed(error: Box<dyn std::error::Error + Send + Sync + 'static>) -> Self {
        Self(Arc::from(error))
    }
}

impl std::fmt::Debug for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&self.0, f)
    }
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for Cause {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl Eq for Cause {}

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
    /// A multipart upload without a boundary, with a malformed part, or with its activity
    /// part after a file part.
    #[error("the multipart upload is malformed")]
    MalformedUpload,
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
    /// A held poll past `[polling]`'s per-conversation, per-IP or replica bound.
    #[error("too many held polls")]
    TooManyPolls,
    #[error("rate limit reached; retry in {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    #[error("WebSocket upgrade required")]
    UpgradeRequired,
    /// `cause` is the transport's error, kept whole with its sources (`tcp connect error:
    /// Connection refused`, `dns error: …`, `invalid peer certificate: …`) for the log
    /// line ([`GatewayError::log_line`]), never for the client.
    #[error("upstream could not be reached")]
    UpstreamUnreachable {
        #[source]
        cause: Cause,
    },
    /// Direct Line answered, but nothing the gateway can use: `what` names what was wrong
    /// (never the answer's text), `cause` is the parser's error where one failed. Both are for
    /// the log line; the client gets the row's fixed message.
    #[error("upstream answered something the gateway cannot use: {what}")]
    UpstreamInvalid {
        what: &'static str,
        #[source]
        cause: Option<Cause>,
    },
    /// An upstream body that broke off or would not decode; `cause` is for the log line.
    #[error("upstream answer could not be read")]
    UpstreamUnreadable {
        #[source]
        cause: Cause,
    },
    #[error("upstream timeout: no answer in time")]
    UpstreamTimeout,
    /// Direct Line refused with a 4xx whose body is not a Direct Line error (only ever seen
    /// inside a [`Refusal::Upstream`], under Direct Line's status).
    #[error("upstream refused with a body that is not a Direct Line error")]
    UpstreamRefused,
    /// A Copilot Studio bot whose Direct Line host has not been discovered (yet): its
    /// environment was unreachable or answered something unusable (logged by discovery).
    #[error("the bot's Direct Line host is not known yet; retry in {retry_after_secs} s")]
    UpstreamUndiscovered { retry_after_secs: u64 },
    /// The agent's token endpoint did not hand out a token (`status`; web channel security
    /// turns it off: then only a secret works).
    #[error("the Copilot Studio token endpoint answered {status}")]
    TokenEndpointRefused { status: u16 },
    /// The activity policy's webhook denied a user's activity; nothing went upstream.
    #[error("the activity policy denied the activity")]
    PolicyDenied,
    /// The policy webhook failed or timed out under `on_error = "deny"`.
    #[error("the activity policy could not decide")]
    PolicyUnavailable,
    #[error("the gateway is shutting down")]
    Draining,
    /// A state the gateway's own code should never reach, or a value it built that would not
    /// serialise: `what` names which, `cause` is the failing library's error. For the log
    /// line only.
    #[error("internal gateway error: {what}")]
    Internal {
        what: &'static str,
        #[source]
        cause: Option<Cause>,
    },
}

/// One row of the error table: everything the gateway says and records about a variant.
struct Row {
    status: StatusCode,
    /// The stable `error.code`; Direct Line's own codes where one exists (PROTOCOL §1.5).
    code: &'static str,
    /// The client's `error.message`: fixed text, never a detail.
    message: &'static str,
    blame: Blame,
    /// The `auth_refusals_total{reason}` label for refused credentials.
    refusal: Option<&'static str>,
}

impl GatewayError {
    /// Direct Line's answer lacked or broke `what`.
    pub fn upstream_invalid(what: &'static str) -> Self {
        GatewayError::UpstreamInvalid { what, cause: None }
    }

    /// Direct Line's answer did not parse as `what`; `error` is the parser's.
    pub fn upstream_invalid_because(
        what: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        GatewayError::UpstreamInvalid {
            what,
            cause: Some(Cause::new(error)),
        }
    }

    /// The gateway's own code reached a state `what` says it should not.
    pub fn internal(what: &'static str) -> Self {
        GatewayError::Internal { what, cause: None }
    }

    /// The gateway failed at `what` because of `error`.
    pub fn internal_because(
        what: &'static str,
        error: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        GatewayError::Internal {
            what,
            cause: Some(Cause::new(error)),
        }
    }

    /// The table: one row per variant and no wildcard, so a new variant cannot compile
    /// without saying its status, code, message, blame and refusal reason.
    fn row(&self) -> Row {
        use Blame::{Client, Gateway, Upstream};
        use GatewayError::*;
        #[rustfmt::skip]
        let (status, code, message, blame, refusal) = match self {
            MissingCredential => (StatusCode::UNAUTHORIZED, "BadArgument", "Missing token", Client, Some("missing")),
            InvalidToken => (StatusCode::FORBIDDEN, "BadArgument", "Invalid token", Client, Some("invalid")),
            TokenExpired => (StatusCode::FORBIDDEN, "TokenExpired", "Token expired", Client, Some("expired")),
            ResumeUnavailable => (StatusCode::FORBIDDEN, "TokenExpired", "Token expired; this bot cannot resume a conversation after its token expired (enhanced authentication, or a Copilot Studio agent without a secret), start a new one", Client, Some("expired")),
            WrongConversation => (StatusCode::FORBIDDEN, "BadArgument", "Token is not valid for this conversation", Client, Some("wrong_conversation")),
            WrongBot => (StatusCode::FORBIDDEN, "BadArgument", "Token is not valid for this bot", Client, Some("wrong_bot")),
            InvalidTicket => (StatusCode::FORBIDDEN, "BadArgument", "Invalid or expired stream URL", Client, Some("invalid_ticket")),
            SignInRefused { reason } => (StatusCode::UNAUTHORIZED, "BadArgument", "Sign-in required: a valid identity token from the configured issuer", Client, Some(*reason)),
            SignInMismatch => (StatusCode::FORBIDDEN, "BadArgument", "The sign-in is of another user than the token's", Client, Some("idp_other_user")),
            IdentityUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The identity provider cannot be reached; retry later", Upstream, Some("idp_unavailable")),
            InvalidConversationId => (StatusCode::BAD_REQUEST, "BadArgument", "Invalid conversation id", Client, None),
            NotFound => (StatusCode::NOT_FOUND, "NotFound", "Not found", Client, None),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "Method not allowed", Client, None),
            BodyTooLarge { .. } => (StatusCode::PAYLOAD_TOO_LARGE, "MessageSizeTooBig", "Request body too large", Client, None),
            UrlTooLong => (StatusCode::URI_TOO_LONG, "UriTooLong", "Request URL too long", Client, None),
            HeadersTooLarge => (StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE, "HeadersTooLarge", "Request headers too large", Client, None),
            BadHost => (StatusCode::BAD_REQUEST, "BadArgument", "An HTTP/1.1 request needs exactly one Host header", Client, None),
            MalformedJson => (StatusCode::BAD_REQUEST, "BadArgument", "Malformed JSON body", Client, None),
            InvalidActivity => (StatusCode::BAD_REQUEST, "BadArgument", "Activity must be a JSON object", Client, None),
            MalformedUpload => (StatusCode::BAD_REQUEST, "BadArgument", "Malformed multipart upload: it needs a boundary, and its activity part must come first", Client, None),
            UnsupportedMediaType => (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UnsupportedMediaType", "Content-Type must be application/json", Client, None),
            InvalidQuery => (StatusCode::BAD_REQUEST, "BadArgument", "Invalid query parameter", Client, None),
            BodyRead => (StatusCode::BAD_REQUEST, "BadArgument", "Request body could not be read", Client, None),
            BodyTimeout => (StatusCode::REQUEST_TIMEOUT, "RequestTimeout", "Request body not received in time", Client, None),
            OriginNotAllowed => (StatusCode::FORBIDDEN, "BadArgument", "Origin not allowed", Client, None),
            TooManySockets => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many connections for this conversation", Client, None),
            TooManyPolls => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many polls waiting; retry shortly", Client, None),
            RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "TooManyRequests", "Too many requests; retry after the time in Retry-After", Client, None),
            UpgradeRequired => (StatusCode::UPGRADE_REQUIRED, "UpgradeRequired", "WebSocket upgrade required", Client, None),
            UpstreamUnreachable { .. } => (StatusCode::BAD_GATEWAY, "UpstreamUnavailable", "Direct Line could not be reached", Upstream, None),
            UpstreamInvalid { .. } | UpstreamUnreadable { .. } => (StatusCode::BAD_GATEWAY, "UpstreamError", "Direct Line returned an invalid response", Upstream, None),
            UpstreamTimeout => (StatusCode::GATEWAY_TIMEOUT, "UpstreamTimeout", "Direct Line did not respond in time", Upstream, None),
            UpstreamRefused => (StatusCode::BAD_REQUEST, "BadArgument", "Request refused by Direct Line", Upstream, None),
            UpstreamUndiscovered { .. } => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "The bot's Direct Line region is not known yet; retry after the time in Retry-After", Upstream, None),
            TokenEndpointRefused { .. } => (StatusCode::BAD_GATEWAY, "UpstreamError", "The agent's token endpoint did not issue a token", Upstream, None),
            PolicyDenied => (StatusCode::FORBIDDEN, "PolicyDenied", "The activity was refused by this service's content policy", Client, None),
            PolicyUnavailable => (StatusCode::SERVICE_UNAVAILABLE, "PolicyUnavailable", "The content policy could not check the activity; retry later", Gateway, None),
            Draining => (StatusCode::SERVICE_UNAVAILABLE, "ServiceUnavailable", "Gateway is shutting down", Gateway, None),
            Internal { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "ServiceError", "Internal gateway error", Gateway, None),
        };
        Row {
            status,
            code,
            message,
            blame,
            refusal,
        }
    }

    pub fn status(&self) -> StatusCode {
        self.row().status
    }

    /// The stable `error.code`.
    pub fn code(&self) -> &'static str {
        self.row().code
    }

    pub fn message(&self) -> &'static str {
        self.row().message
    }

    pub fn blame(&self) -> Blame {
        self.row().blame
    }

    /// Metric label for refusals of credentials; `None` for everything else.
    pub fn auth_refusal_reason(&self) -> Option<&'static str> {
        self.row().refusal
    }

    /// The error and its causes as one log line (`upstream could not be reached: client
    /// error (Connect): tcp connect error: Connection refused`).
    pub fn log_line(&self) -> String {
        cause_chain(self)
    }

    /// The headers its row implies: a challenge for a refused credential, `Retry-After`
    /// where a retry can work.
    fn add_headers(&self, headers: &mut HeaderMap) {
        match self {
            GatewayError::MissingCredential => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            GatewayError::SignInRefused { .. } => {
                // RFC 6750 §3: the token given (if any) is not acceptable.
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static("Bearer error=\"invalid_token\""),
                );
            }
            GatewayError::IdentityUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            GatewayError::TooManySockets
            | GatewayError::TooManyPolls
            | GatewayError::Draining
            | GatewayError::PolicyUnavailable => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            GatewayError::RateLimited { retry_after_secs }
            | GatewayError::UpstreamUndiscovered { retry_after_secs } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
            }
            _ => {}
        }
    }
}

/// Why a request was refused: by the gateway, or by Direct Line. Route handlers answer
/// `Result<Response, Refusal>`; the pipeline turns every refusal into the client's answer with
/// [`Refusal::into_response`], and counts and logs only the gateway's own.
#[derive(Debug)]
pub enum Refusal {
    Gateway(GatewayError),
    Upstream(UpstreamRefusal),
}

/// Direct Line's error answer, reduced to what may reach the client: its status, what it
/// said (or what replaces it) and its allow-listed headers, already checked for credentials.
#[derive(Debug)]
pub struct UpstreamRefusal {
    pub status: StatusCode,
    pub said: UpstreamSaid,
    /// Appended to the answer's own headers (an upstream `Retry-After` passes this way).
    pub headers: HeaderMap,
}

/// What a client is told of an upstream refusal.
#[derive(Debug)]
pub enum UpstreamSaid {
    /// A Direct Line error's code and message, rebuilt from their decoded (and scrubbed) text.
    DirectLine { code: String, message: String },
    /// A body that is no Direct Line error, replaced by a row of the table.
    Replaced(GatewayError),
}

impl From<GatewayError> for Refusal {
    fn from(error: GatewayError) -> Self {
        Refusal::Gateway(error)
    }
}

impl From<UpstreamRefusal> for Refusal {
    fn from(refusal: UpstreamRefusal) -> Self {
        Refusal::Upstream(refusal)
    }
}

impl Refusal {
    /// The status the client gets.
    pub fn status(&self) -> StatusCode {
        match self {
            Refusal::Gateway(error) => error.status(),
            Refusal::Upstream(refused) => refused.status,
        }
    }

    /// The one place a refusal becomes a Direct Line error body.
    pub fn into_response(self) -> Response<Body> {
        let refused = match self {
            Refusal::Gateway(error) => {
                let mut response = error_body(error.status(), error.code(), error.message());
                error.add_headers(response.headers_mut());
                return response;
            }
            Refusal::Upstream(refused) => refused,
        };
        // A replaced body's row implies no header of its own: Direct Line's status and
        // allow-listed headers are the answer's.
        let mut response = match &refused.said {
            UpstreamSaid::DirectLine { code, message } => error_body(refused.status, code, message),
            UpstreamSaid::Replaced(error) => {
                error_body(refused.status, error.code(), error.message())
            }
        };
        let headers = response.headers_mut();
        let mut last = None;
        for (name, value) in refused.headers {
            // `HeaderMap`'s iterator names a header once, before the first of its values.
            if let Some(name) = name {
                last = Some(name);
            }
            if let Some(name) = &last {
                headers.append(name.clone(), value);
            }
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
fn error_body(status: StatusCode, code: &str, message: &str) -> Response<Body> {
    let body = serde_json::json!({ "error": { "code": code, "message": message } });
    let mut response = Response::new(boxed_body::full(body.to_string()));
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

    /// Pins the status and code of every variant: clients key on these (PROTOCOL §1.5, §10.8).
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
            (MalformedUpload, 400, "BadArgument", Blame::Client),
            (
                UnsupportedMediaType,
                415,
                "UnsupportedMediaType",
                Blame::Client,
            ),
            (TooManySockets, 429, "TooManyRequests", Blame::Client),
            (TooManyPolls, 429, "TooManyRequests", Blame::Client),
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
                    cause: Cause::new(std::io::Error::other("Connection refused")),
                },
                502,
                "UpstreamUnavailable",
                Blame::Upstream,
            ),
            (
                GatewayError::upstream_invalid("no token"),
                502,
                "UpstreamError",
                Blame::Upstream,
            ),
            (
                UpstreamUnreadable {
                    cause: Cause::new(std::io::Error::other("connection reset")),
                },
                502,
                "UpstreamError",
                Blame::Upstream,
            ),
            (UpstreamTimeout, 504, "UpstreamTimeout", Blame::Upstream),
            (UpstreamRefused, 400, "BadArgument", Blame::Upstream),
            (
                UpstreamUndiscovered {
                    retry_after_secs: 2,
                },
                503,
                "ServiceUnavailable",
                Blame::Upstream,
            ),
            (
                TokenEndpointRefused { status: 403 },
                502,
                "UpstreamError",
                Blame::Upstream,
            ),
            (PolicyDenied, 403, "PolicyDenied", Blame::Client),
            (PolicyUnavailable, 503, "PolicyUnavailable", Blame::Gateway),
            (Draining, 503, "ServiceUnavailable", Blame::Gateway),
            (
                GatewayError::internal("no credential"),
                500,
                "ServiceError",
                Blame::Gateway,
            ),
        ];
        for (error, status, code, blame) in table {
            assert!(!error.message().is_empty());
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
        let refused =
            std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "Connection refused");
        let unreachable = GatewayError::UpstreamUnreachable {
            cause: Cause::new(Outer(refused)),
        };
        assert_eq!(
            unreachable.log_line(),
            "upstream could not be reached: client error (Connect): Connection refused"
        );
        assert!(std::error::Error::source(&unreachable).is_some());
        // The client never sees the cause.
        assert_eq!(unreachable.message(), "Direct Line could not be reached");
    }

    /// What was invalid or failed reaches the log line with the library's error, and
    /// nothing of it the client's body.
    #[tokio::test]
    async fn invalid_and_internal_errors_log_their_cause_and_answer_the_fixed_body() {
        let parse = serde_json::from_slice::<serde_json::Value>(b"{\"token\": ").unwrap_err();
        let invalid = GatewayError::upstream_invalid_because("the answer is no JSON object", parse);
        let line = invalid.log_line();
        assert!(
            line.starts_with(
                "upstream answered something the gateway cannot use: the answer is no JSON object: EOF while parsing"
            ),
            "{line}"
        );
        let internal = GatewayError::internal("the bot has no Direct Line secret");
        assert_eq!(
            internal.log_line(),
            "internal gateway error: the bot has no Direct Line secret"
        );
        for (error, body) in [
            (
                invalid,
                &br#"{"error":{"code":"UpstreamError","message":"Direct Line returned an invalid response"}}"#[..],
            ),
            (
                internal,
                &br#"{"error":{"code":"ServiceError","message":"Internal gateway error"}}"#[..],
            ),
        ] {
            let response = Refusal::from(error).into_response();
            let bytes = response.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], body);
        }
    }

    #[tokio::test]
    async fn body_is_direct_line_shaped() {
        let response = Refusal::from(GatewayError::TokenExpired).into_response();
        assert_eq!(response.status(), 403);
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let json: serde_json::Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(json["error"]["code"], "TokenExpired");
        assert_eq!(json["error"]["message"], "Token expired");
    }

    /// Direct Line's refusal keeps its status and passed headers; a replaced body is the
    /// table row's, under that status.
    #[tokio::test]
    async fn upstream_refusals_keep_their_status_and_headers() {
        let mut headers = HeaderMap::new();
        headers.append(header::RETRY_AFTER, HeaderValue::from_static("7"));
        let refused = Refusal::from(UpstreamRefusal {
            status: StatusCode::CONFLICT,
            said: UpstreamSaid::Replaced(GatewayError::UpstreamRefused),
            headers,
        });
        assert_eq!(refused.status(), StatusCode::CONFLICT);
        let response = refused.into_response();
        assert_eq!(response.status(), 409);
        assert_eq!(response.headers()[header::RETRY_AFTER], "7");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &bytes[..],
            br#"{"error":{"code":"BadArgument","message":"Request refused by Direct Line"}}"#
        );
        let said = UpstreamSaid::DirectLine {
            code: "Conflict".into(),
            message: "already taken".into(),
        };
        let response = Refusal::from(UpstreamRefusal {
            status: StatusCode::CONFLICT,
            said,
            headers: HeaderMap::new(),
        })
        .into_response();
        assert!(response.headers().get(header::RETRY_AFTER).is_none());
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(
            &bytes[..],
            br#"{"error":{"code":"Conflict","message":"already taken"}}"#
        );
    }
}
