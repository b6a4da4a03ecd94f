//! The Direct Line user id of a signed-in person: `dl_` + a keyed pseudonym.
//!
//! HMAC-SHA256 under a dedicated key (not the token key: that one rotates, and the id must
//! not), over the issuer and the user claim, length-prefixed so no two (issuer, claim)
//! pairs share an input. 192 bits of the tag are kept: a collision between two people
//! is as likely as guessing a 96-bit secret. The bot sees the pseudonym, never the claim,
//! and without the key nobody can tell which claim a pseudonym stands for.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::hmac;

const DOMAIN: &[u8] = b"directline-gateway/pseudonym/v1";
/// 24 bytes: 32 base64url characters after `dl_`.
const KEPT_BYTES: usize = 24;

pub struct Pseudonyms {
    key: hmac::Key,
}

impl Pseudonyms {
    pub fn new(key: &str) -> Self {
        Self {
            key: hmac::Key::new(hmac::HMAC_SHA256, key.as_bytes()),
        }
    }

    /// The same for the same (issuer, claim) on every replica, across restarts and token
    /// key rotations; `dl_` because Direct Line binds only such ids (PROTOCOL §1.1).
    pub fn user_id(&self, issuer: &str, claim: &str) -> String {
        let mut context = hmac::Context::with_key(&self.key);
        context.update(DOMAIN);
        context.update(&(issuer.len() as u64).to_be_bytes());
        context.update(issuer.as_bytes());
        context.update(&(claim.len() as u64).to_be_bytes());
        context.update(claim.as_bytes());
        let tag = context.sign();
        format!("dl_{}", URL_SAFE_NO_PAD.encode(&tag.as_ref()[..KEPT_BYTES]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pseudonym-key-0123456789abcdef0123456789";

    #[test]
    fn stable_distinct_and_keyed() {
        let ids = Pseudonyms::new(KEY);
        let alice = ids.user_id("https://idp.example.com", "alice");
        assert_eq!(
            alice,
            Pseudonyms::new(KEY).user_id("https://idp.example.com", "alice")
        );
        assert!(alice.starts_with("dl_") && alice.len() == 35, "{alice}");
        assert!(!alice.contains("alice"));
        assert_ne!(alice, ids.user_id("https://idp.example.com", "bob"));
        assert_ne!(alice, ids.user_id("https://other.example.com", "alice"));
        // The length prefix keeps the boundary between issuer and claim.
        assert_ne!(
            ids.user_id("https://a", "bc"),
            ids.user_id("https://ab", "c")
        );
        let other_key = Pseudonyms::new("another-pseudonym-key-0123456789abcdef");
        assert_ne!(alice, other_key.user_id("https://idp.example.com", "alice"));
    }

    /// Pinned: a change here changes every signed-in user's id, and with it their
    /// conversations' owner; that needs a migration note, not a silent edit.
    #[test]
    fn the_derivation_is_pinned() {
        let ids = Pseudonyms::new(KEY);
        let got = ids.user_id("https://idp.example.com", "alice");
        assert_eq!(got, PINNED, "pseudonym derivation changed");
    }

    // Cross-checked with Python's hmac module over the same bytes.
    const PINNED: &str = "dl_n9tPUR6tz_-r5UOF5w731DO6WMSjv9zS";
}
