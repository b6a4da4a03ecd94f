//! What every REST route and the stream upgrade share: the response body type, Direct
//! Line error bodies, JSON answers, the record of one request, and query parameters.

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use serde_json::{Value, json};

use crate::record::{RecordedRequest, SeenCredential};

pub(super) type Body = Full<Bytes>;

/// A Direct Line error: status, stable code, fixed message (PROTOCOL §1.5).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct DlError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: &'static str,
}

impl DlError {
    const fn new(status: StatusCode, code: &'static str, message: &'static str) -> Self {
        Self {
            status,
            code,
            message,
        }
    }

    pub const MISSING_CREDENTIAL: Self = Self::new(
        StatusCode::UNAUTHORIZED,
        "BadArgument",
        "Missing token or secret",
    );
    /// A stream upgrade without `t` (the service answers 403 there, PROTOCOL §1.5).
    pub const MISSING_STREAM_TOKEN: Self = Self::new(
        StatusCode::FORBIDDEN,
        "BadArgument",
        "Missing token or secret",
    );
    pub const INVALID_CREDENTIAL: Self = Self::new(
        StatusCode::FORBIDDEN,
        "BadArgument",
        "Invalid token or secret",
    );
    /// A stream URL past its 60 s: refused before the upgrade like any bad `t`.
    pub const STREAM_URL_EXPIRED: Self =
        Self::new(StatusCode::FORBIDDEN, "BadArgument", "Stream URL expired");
    pub const TOKEN_EXPIRED: Self =
        Self::new(StatusCode::FORBIDDEN, "TokenExpired", "Token expired");
    pub const WRONG_CONVERSATION: Self = Self::new(
        StatusCode::FORBIDDEN,
        "BadArgument",
        "Token not valid for this conversation",
    );
    pub const SECRET_REQUIRED: Self = Self::new(
        StatusCode::FORBIDDEN,
        "BadArgument",
        "This operation requires the secret",
    );
    pub const TOKEN_REQUIRED: Self = Self::new(
        StatusCode::FORBIDDEN,
        "BadArgument",
        "This operation requires a token",
    );
    pub const UNKNOWN_CONVERSATION: Self =
        Self::new(StatusCode::NOT_FOUND, "BadArgument", "Unknown conversation");
    pub const BAD_CONVERSATION_ID: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "BadArgument",
        "Failed to decrypt conversation id",
    );
    pub const NOT_FOUND: Self = Self::new(StatusCode::NOT_FOUND, "NotFound", "Unknown route");
    pub const METHOD_NOT_ALLOWED: Self = Self::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "BadArgument",
        "Method not allowed",
    );
    pub const MALFORMED_JSON: Self =
        Self::new(StatusCode::BAD_REQUEST, "BadArgument", "Malformed JSON");
    pub const MISSING_TYPE: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "BadArgument",
        "An activity must be a JSON object with a type",
    );
    pub const NOT_JSON: Self = Self::new(
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "BadArgument",
        "Content-Type must be application/json",
    );
    /// The code the gateway uses for its own 413 too; no source gives the service's.
    pub const TOO_LARGE: Self = Self::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "MessageSizeTooBig",
        "Request body too large",
    );
    pub const BODY_UNREADABLE: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "BadArgument",
        "Could not read the request body",
    );
    pub const BAD_WATERMARK: Self =
        Self::new(StatusCode::BAD_REQUEST, "BadArgument", "Invalid watermark");
    pub const BAD_UPLOAD: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "BadArgument",
        "Malformed upload body",
    );
    pub const MISSING_USER_ID: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "MissingProperty",
        "Missing user ID",
    );
    pub const RECONNECT_FAILED: Self = Self::new(
        StatusCode::BAD_GATEWAY,
        "ServiceError",
        "Failed to reconnect to the conversation",
    );
    pub const NOT_WEBSOCKET: Self = Self::new(
        StatusCode::BAD_REQUEST,
        "BadArgument",
        "WebSocket upgrade required",
    );

    /// The one place an error becomes a response.
    pub(super) fn response(self) -> Response<Body> {
        json_response(
            self.status,
            &json!({ "error": { "code": self.code, "message": self.message } }),
        )
    }
}

/// The request facts that end up in the log.
pub(super) struct Exchange {
    method: String,
    path: String,
    query: Option<String>,
    host: Option<String>,
    request_id: Option<String>,
    pub credential: SeenCredential,
    pub(super) body: Option<Value>,
    headers: Vec<(String, String)>,
}

impl Exchange {
    pub(super) fn new(request: &Request<Incoming>) -> Self {
        Self {
            method: request.method().as_str().to_owned(),
            path: request.uri().path().to_owned(),
            query: request.uri().query().map(str::to_owned),
            host: host(request).map(str::to_owned),
            request_id: request
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            credential: SeenCredential::Missing,
            headers: request
                .headers()
                .iter()
                .map(|(name, value)| {
                    let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
                    (name.as_str().to_owned(), value)
                })
                .collect(),
            body: None,
        }
    }

    pub(super) fn into_record(self, status: StatusCode) -> RecordedRequest {
        RecordedRequest {
            method: self.method,
            path: self.path,
            query: self.query,
            credential: self.credential,
            headers: self.headers,
            host: self.host,
            request_id: self.request_id,
            body: self.body,
            status: status.as_u16(),
        }
    }
}

pub(super) fn json_response(status: StatusCode, value: &Value) -> Response<Body> {
    raw_json_response(status, value.to_string())
}

pub(super) fn raw_json_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    response
}

pub(super) fn query_parameter(query: Option<&str>, name: &str) -> Option<String> {
    form_urlencoded::parse(query?.as_bytes())
        .find(|(key, _)| key == name)
        .map(|(_, value)| value.into_owned())
}

const JSON_CONTENT_TYPE: &str = "application/json; charset=utf-8";

pub(super) fn host(request: &Request<Incoming>) -> Option<&str> {
    request
        .headers()
        .get(header::HOST)
        .and_then(|value| value.to_str().ok())
        .or_else(|| {
            request
                .uri()
                .authority()
                .map(|authority| authority.as_str())
        })
}
