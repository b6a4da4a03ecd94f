//! The identity provider's JWT as the gateway reads it (`src/identity/verify.rs`,
//! `src/identity/jwks.rs`), before and after the key lookup.
//!
//! Input: byte 0 picks the mode.
//! - Even: the rest (lossy UTF-8) is a bearer token. `verify::front` must never panic; it
//!   answers `TooLarge` exactly when the text is over the limit; when it accepts, the token
//!   has three dot-separated parts, its algorithm is on the allow-list and not HMAC, and its
//!   kid is 1 to 256 bytes. Then `verify::finish` with the fixed RSA and EC keys (each
//!   under the token's kid) must refuse: the fuzzer holds no private key, so no input may
//!   ever verify, and a key whose type does not fit the algorithm answers `Algorithm`.
//!   Seeds are readable: `\x00eyJhbGciOi…`.
//! - Odd: the rest is a JWKS entry (JSON). `jwks::Key::from_jwk` must never panic, and a
//!   key it accepts allows only algorithms of its own type (never HMAC), and its `alg` when
//!   it names one.

#![no_main]

use std::sync::LazyLock;
use std::time::Duration;

use directline_gateway::identity::jwks::{Key, KeyKind};
use directline_gateway::identity::refusal::Refusal;
use directline_gateway::identity::settings::{AuthSettings, IdentityLimits};
use directline_gateway::identity::verify;
use directline_gateway::secret::Secret;
use jsonwebtoken::Algorithm;
use libfuzzer_sys::fuzz_target;
use serde_json::{Value, json};

const MAX: usize = 8 * 1024;
const ALLOWED: [Algorithm; 3] = [Algorithm::RS256, Algorithm::ES256, Algorithm::PS256];
const ALL: [Algorithm; 12] = [
    Algorithm::HS256,
    Algorithm::HS384,
    Algorithm::HS512,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::RS256,
    Algorithm::RS384,
    Algorithm::RS512,
    Algorithm::PS256,
    Algorithm::PS384,
    Algorithm::PS512,
    Algorithm::EdDSA,
];

/// A 2048-bit RSA public key (the emulator's first test key) and a P-256 point (RFC 7517 A.1).
const RSA_N: &str = "8vANVj77-cEGyv9UPVTDBItOttJ0mNnbLjKOW2dr807RUU7I5W93ehG428HJ25ndZ9RfOvzZXEHLXhrVHErwhbs7029SXaq2XKQqQdnfqw4Z17swdq4y_Uc0rJmmzyVsJhHfdab1JLKYUvXmushxAq1q6vTAuDo17lIe7Po05Gb4uF4x4JEYlwayCc17HVsqpWyxE_8WTIP3tTrMfo5zGcMO2YzKePrnVCiocTvjWJWBDppeYwUze3o2W1iYmM5QnP06kxivA7dNIWl0rr3HpLXIjmCZK9W6aQLlhZMlspiBa8dfDvkfbYo-p9bhwt4d43i2GAOwzjw_fJQ44iWOJQ";
const EC_X: &str = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
const EC_Y: &str = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";

static SETTINGS: LazyLock<AuthSettings> = LazyLock::new(|| AuthSettings {
    issuer: "https://idp.example.com".into(),
    audiences: vec!["api://fuzz".into()],
    jwks_url: None,
    user_claim: "sub".into(),
    name_claim: Some("name".into()),
    algorithms: ALLOWED.to_vec(),
    leeway: Duration::from_secs(60),
    pseudonym_key: Secret::new("fuzz-pseudonym-key-0123456789abcdef0123"),
    limits: IdentityLimits::default(),
});

fn keys(kid: &str) -> [Key; 2] {
    [
        Key::from_jwk(&json!({"kty": "RSA", "kid": kid, "n": RSA_N, "e": "AQAB"}))
            .expect("the RSA test key"),
        Key::from_jwk(&json!({"kty": "EC", "crv": "P-256", "kid": kid, "x": EC_X, "y": EC_Y}))
            .expect("the EC test key"),
    ]
}

fn check_token(token: &str) {
    let front = verify::front(token, MAX, &ALLOWED);
    assert_eq!(
        front == Err(Refusal::TooLarge),
        token.len() > MAX,
        "{front:?}"
    );
    let Ok(front) = front else {
        return;
    };
    assert_eq!(token.split('.').count(), 3);
    assert!(ALLOWED.contains(&front.alg));
    assert!(!front.kid.is_empty() && front.kid.len() <= 256);
    for key in keys(&front.kid) {
        let fits = key.allows(front.alg);
        match verify::finish(token, &front, &key, &SETTINGS) {
            Ok(claims) => panic!("a fuzzed token verified: {claims:?}"),
            Err(refusal) if !fits => assert_eq!(refusal, Refusal::Algorithm),
            Err(_) => {}
        }
    }
}

fn check_jwk(bytes: &[u8]) {
    let Ok(value) = serde_json::from_slice::<Value>(bytes) else {
        return;
    };
    let Ok(key) = Key::from_jwk(&value) else {
        return;
    };
    assert!(!key.kid.is_empty() && key.kid.len() <= 256);
    for alg in ALL {
        if !key.allows(alg) {
            continue;
        }
        let family_fits = match key.kind {
            KeyKind::Rsa => matches!(
                alg,
                Algorithm::RS256
                    | Algorithm::RS384
                    | Algorithm::RS512
                    | Algorithm::PS256
                    | Algorithm::PS384
                    | Algorithm::PS512
            ),
            KeyKind::P256 => alg == Algorithm::ES256,
            KeyKind::P384 => alg == Algorithm::ES384,
            KeyKind::Ed25519 => alg == Algorithm::EdDSA,
        };
        assert!(family_fits, "{:?} allows {alg:?}", key.kind);
        assert!(key.alg.is_none_or(|own| own == alg));
    }
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    if mode % 2 == 0 {
        check_token(&String::from_utf8_lossy(rest));
    } else {
        check_jwk(rest);
    }
});
