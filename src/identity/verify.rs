//! Verifying an identity provider's JWT, in two halves around the key lookup.
//!
//! [`front`] is everything decided before a key is needed, on untrusted text only: size,
//! shape, header, algorithm. It is the fuzzed part (`fuzz/fuzz_targets/jwt_front.rs`).
//! [`finish`] verifies the signature with the key the `kid` chose and then the claims,
//! through `jsonwebtoken` (ring): `iss`, `aud`, `exp`, `nbf` with leeway (RFC 7519 §4.1,
//! OIDC Core §3.1.3.7). Claims are read only from a token whose signature verified.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde::Deserialize;
use serde_json::{Map, Value};

use super::jwks::{Key, MAX_KID_BYTES};
use super::refusal::Refusal;
use crate::config::auth::AuthSettings;

/// What the header says, once it is known to be usable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Front {
    pub alg: Algorithm,
    pub kid: String,
}

/// The protected header as far as the gateway reads it. `jku`, `x5u`, `jwk` and `x5c`
/// are never followed: keys come only from the configured issuer's JWKS.
#[derive(Deserialize)]
struct Header {
    alg: String,
    kid: Option<String>,
    /// RFC 7515 §4.1.11: a recipient that does not understand a listed extension must
    /// refuse the token; the gateway understands none.
    crit: Option<serde::de::IgnoredAny>,
}

/// Size, shape, header and algorithm of `token`, before any key or network.
pub fn front(token: &str, max_bytes: usize, allowed: &[Algorithm]) -> Result<Front, Refusal> {
    if token.len() > max_bytes {
        return Err(Refusal::TooLarge);
    }
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(Refusal::Malformed);
    };
    if header.is_empty() || payload.is_empty() || !is_base64url(token) {
        return Err(Refusal::Malformed);
    }
    let header = URL_SAFE_NO_PAD
        .decode(header)
        .map_err(|_| Refusal::Malformed)?;
    let header: Header = serde_json::from_slice(&header).map_err(|_| Refusal::Malformed)?;
    if header.crit.is_some() {
        return Err(Refusal::Malformed);
    }
    // `none` and names the crate does not know fail to parse; HMAC parses and is refused
    // here whatever the allow-list says (settings refuse it there too).
    let alg: Algorithm = header.alg.parse().map_err(|_| Refusal::Algorithm)?;
    if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512)
        || !allowed.contains(&alg)
    {
        return Err(Refusal::Algorithm);
    }
    if signature.is_empty() {
        return Err(Refusal::Signature);
    }
    let kid = header
        .kid
        .filter(|kid| !kid.is_empty() && kid.len() <= MAX_KID_BYTES)
        .ok_or(Refusal::UnknownKey)?;
    Ok(Front { alg, kid })
}

/// Base64url characters and the two dots.
fn is_base64url(token: &str) -> bool {
    token
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// What the gateway takes from a verified token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The user claim (`sub` unless configured): the pseudonym's input, never shown.
    pub user: String,
    pub name: Option<String>,
}

/// Signature with `key`, then the claims. `front` came from the same `token`.
pub fn finish(
    token: &str,
    front: &Front,
    key: &Key,
    settings: &AuthSettings,
) -> Result<Claims, Refusal> {
    // The key, not the token, says which algorithms it verifies: an RSA key never checks
    // an ES256 or HS256 signature however the header is labelled.
    if !key.allows(front.alg) {
        return Err(Refusal::Algorithm);
    }
    let mut validation = Validation::new(front.alg);
    validation.leeway = settings.leeway.as_secs();
    validation.validate_exp = true;
    validation.validate_nbf = true;
    validation.validate_aud = true;
    validation.set_audience(&settings.audiences);
    validation.set_issuer(&[&settings.issuer]);
    validation.set_required_spec_claims(&["exp", "iss", "aud"]);
    let data = jsonwebtoken::decode::<Map<String, Value>>(token, &key.decoding, &validation)
        .map_err(|error| refusal(error.kind()))?;
    let claims = data.claims;
    // RFC 7519 §4.1.1: `iss` is one string; the crate would also take a list naming us.
    if claims.get("iss").and_then(Value::as_str) != Some(settings.issuer.as_str()) {
        return Err(Refusal::Issuer);
    }
    let limit = settings.limits.max_claim_bytes;
    let user = claims
        .get(&settings.user_claim)
        .and_then(Value::as_str)
        .filter(|user| !user.is_empty() && user.len() <= limit)
        .ok_or(Refusal::Claims)?
        .to_owned();
    let name = settings
        .name_claim
        .as_ref()
        .and_then(|claim| claims.get(claim))
        .and_then(Value::as_str)
        .map(str::trim)
        .filter(|name| !name.is_empty() && name.len() <= limit)
        .map(str::to_owned);
    Ok(Claims { user, name })
}

fn refusal(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::ImmatureSignature => Refusal::NotYetValid,
        ErrorKind::InvalidIssuer => Refusal::Issuer,
        ErrorKind::InvalidAudience => Refusal::Audience,
        ErrorKind::MissingRequiredClaim(claim) => match claim.as_str() {
            "iss" => Refusal::Issuer,
            "aud" => Refusal::Audience,
            _ => Refusal::Claims,
        },
        ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::MissingAlgorithm => Refusal::Algorithm,
        // ring refusing the signature or the key material: not verified either way.
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidRsaKey(_)
        | ErrorKind::InvalidKeyFormat
        | ErrorKind::Crypto(_) => Refusal::Signature,
        _ => Refusal::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encode(value: &str) -> String {
        URL_SAFE_NO_PAD.encode(value)
    }

    fn token(header: &str) -> String {
        format!("{}.{}.c2ln", encode(header), encode("{}"))
    }

    const ALLOWED: [Algorithm; 2] = [Algorithm::RS256, Algorithm::ES256];

    #[test]
    fn the_front_refuses_before_any_key() {
        let ok = front(&token(r#"{"alg":"RS256","kid":"k1"}"#), 8192, &ALLOWED).unwrap();
        assert_eq!(
            ok,
            Front {
                alg: Algorithm::RS256,
                kid: "k1".into()
            }
        );
        for (input, refusal) in [
            (token(r#"{"alg":"none","kid":"k1"}"#), Refusal::Algorithm),
            (token(r#"{"alg":"None","kid":"k1"}"#), Refusal::Algorithm),
            (token(r#"{"alg":"HS256","kid":"k1"}"#), Refusal::Algorithm),
            (token(r#"{"alg":"RS512","kid":"k1"}"#), Refusal::Algorithm),
            (token(r#"{"kid":"k1"}"#), Refusal::Malformed),
            (token(r#"{"alg":"RS256"}"#), Refusal::UnknownKey),
            (token(r#"{"alg":"RS256","kid":""}"#), Refusal::UnknownKey),
            (
                token(r#"{"alg":"RS256","kid":"k1","crit":["exp"]}"#),
                Refusal::Malformed,
            ),
            (token("not json"), Refusal::Malformed),
            (
                token(r#"{"alg":"RS256","kid":"k1"}"#).replace(".c2ln", "."),
                Refusal::Signature,
            ),
            ("a.b".into(), Refusal::Malformed),
            ("a.b.c.d".into(), Refusal::Malformed),
            (".b.c".into(), Refusal::Malformed),
            ("a b.c.d".into(), Refusal::Malformed),
            ("YQ==.b.c".into(), Refusal::Malformed),
            ("x".repeat(9000), Refusal::TooLarge),
        ] {
            assert_eq!(front(&input, 8192, &ALLOWED), Err(refusal), "{input}");
        }
    }

    #[test]
    fn every_crate_error_has_a_refusal() {
        assert_eq!(refusal(&ErrorKind::ExpiredSignature), Refusal::Expired);
        assert_eq!(
            refusal(&ErrorKind::MissingRequiredClaim("aud".into())),
            Refusal::Audience
        );
        assert_eq!(
            refusal(&ErrorKind::MissingRequiredClaim("exp".into())),
            Refusal::Claims
        );
        assert_eq!(refusal(&ErrorKind::InvalidToken), Refusal::Malformed);
    }
}
