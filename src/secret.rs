//! The Direct Line secret: held only by the gateway, never printed.

use std::fmt;
use std::sync::Arc;

/// A Direct Line secret (or any credential that must never be shown).
///
/// `Debug` prints `Secret(..)` and there is deliberately no `Display`, so the value
/// cannot reach a log line or an error body through formatting.
///
/// Shared (`Arc`) so the scrubber can hold it for a whole response without copying it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(Arc<str>);

impl Secret {
    pub fn new(value: impl Into<Arc<str>>) -> Self {
        Self(value.into())
    }

    /// The value, shared, for [`crate::scrub::Needles`]: what must never reach a client.
    pub fn shared(&self) -> Arc<str> {
        self.0.clone()
    }

    /// The raw value, for the one place that builds an upstream `Authorization` header.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// `Bearer <secret>` as a header value marked sensitive, so hyper's and our own
    /// debug output redact it.
    pub fn bearer_header(&self) -> http::HeaderValue {
        bearer(&self.0)
    }
}

/// Builds a sensitive `Authorization: Bearer …` value. Secrets and tokens are
/// printable ASCII; anything else (which cannot come from our own config checks)
/// degrades to an empty credential that upstream refuses, rather than a panic.
pub fn bearer(credential: &str) -> http::HeaderValue {
    let mut value = http::HeaderValue::from_str(&format!("Bearer {credential}"))
        .unwrap_or_else(|_| http::HeaderValue::from_static("Bearer"));
    value.set_sensitive(true);
    value
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_value() {
        let secret = Secret::new("s3cr3t-value");
        assert_eq!(format!("{secret:?}"), "Secret(..)");
        assert!(secret.bearer_header().is_sensitive());
        assert_eq!(
            secret.bearer_header().to_str().unwrap(),
            "Bearer s3cr3t-value"
        );
    }
}
