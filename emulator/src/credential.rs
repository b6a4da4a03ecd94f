//! Credentials: opaque random tokens, and what an `Authorization` header turns out to be.

use http::HeaderMap;
use tokio::time::Instant;

use super::record::SeenCredential;
use super::state::{State, TokenGrant};

/// What a request presented, resolved against the emulator's state.
#[derive(Clone, Debug)]
pub(super) enum Credential {
    /// No `Authorization` header, or `Bearer` with nothing after it.
    Missing,
    /// A header that is not `Bearer <credential>`.
    Malformed,
    /// One of the site's two secrets (`second` for secret 2, as after a rotation).
    Secret {
        second: bool,
    },
    Token(TokenGrant),
    /// A stream URL's `t`, which is no REST credential.
    StreamToken,
    Unknown,
}

impl Credential {
    pub(super) fn from_headers(state: &State, headers: &HeaderMap) -> Self {
        let Some(value) = headers.get(http::header::AUTHORIZATION) else {
            return Self::Missing;
        };
        let Ok(value) = value.to_str() else {
            return Self::Malformed;
        };
        let value = value.trim();
        let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Self::Malformed;
        }
        Self::from_bearer(state, rest.trim())
    }

    pub(super) fn from_bearer(state: &State, credential: &str) -> Self {
        if credential.is_empty() {
            Self::Missing
        } else if constant_time_eq(credential.as_bytes(), state.secret.expose().as_bytes()) {
            Self::Secret { second: false }
        } else if state
            .second_secret
            .as_ref()
            .is_some_and(|s| constant_time_eq(credential.as_bytes(), s.expose().as_bytes()))
        {
            Self::Secret { second: true }
        } else if let Some(grant) = state.token(credential) {
            Self::Token(grant)
        } else if state.is_stream_token(credential) {
            Self::StreamToken
        } else {
            Self::Unknown
        }
    }

    pub(super) fn seen(&self) -> SeenCredential {
        match self {
            Self::Missing => SeenCredential::Missing,
            Self::Secret { second: false } => SeenCredential::Secret,
            Self::Secret { second: true } => SeenCredential::SecondSecret,
            Self::Token(grant) => SeenCredential::ConversationToken {
                conversation_id: grant.conversation.as_str().to_owned(),
            },
            Self::StreamToken => SeenCredential::StreamToken,
            Self::Malformed | Self::Unknown => SeenCredential::Invalid,
        }
    }
}

impl TokenGrant {
    pub(super) fn is_expired(&self) -> bool {
        Instant::now() >= self.expires_at
    }
}

/// Compares without an early exit on the first differing byte.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod unit {
    use super::*;

    #[test]
    fn comparison() {
        assert!(constant_time_eq(b"abc", b"abc"));
        assert!(!constant_time_eq(b"abc", b"abd"));
        assert!(!constant_time_eq(b"abc", b"abcd"));
    }
}
