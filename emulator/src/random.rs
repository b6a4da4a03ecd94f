//! Random bytes, opaque tokens and ids.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::rand::{SecureRandom, SystemRandom};

/// `N` random bytes from the OS; falls back to `fastrand` only if the OS source fails.
pub(super) fn random_bytes<const N: usize>() -> [u8; N] {
    let mut bytes = [0u8; N];
    if SystemRandom::new().fill(&mut bytes).is_err() {
        bytes.iter_mut().for_each(|b| *b = fastrand::u8(..));
    }
    bytes
}

pub(super) fn base64url(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// An opaque token (not a JWT): 32 random bytes, base64url. Never contains the secret,
/// so a test can search any output for the secret.
pub(super) fn random_token(secret: &str) -> String {
    let mut token = base64url(&random_bytes::<32>());
    for _ in 0..64 {
        if secret.is_empty() || !token.contains(secret) {
            break;
        }
        token = base64url(&random_bytes::<32>());
    }
    token
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_opaque_and_distinct() {
        let a = random_token("secret");
        let b = random_token("secret");
        assert_ne!(a, b);
        assert_eq!(a.len(), 43);
        assert!(
            a.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        );
        assert!(!a.contains('.'), "not a JWT");
        // A one-letter secret would appear by chance; the retry keeps it out.
        assert!(!random_token("A").contains('A'));
    }
}
