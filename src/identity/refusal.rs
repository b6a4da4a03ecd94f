//! Why a sign-in was refused: one check's name, a metric label, and the client's answer.

use crate::error::GatewayError;

/// The check that failed. Each is a label of `auth_refusals_total` (see
/// [`crate::metrics::SIGN_IN_REFUSAL_REASONS`]) and the `check` field of the debug line;
/// the client only learns 401, 403 or 503 with a fixed message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("no bearer token")]
    Missing,
    #[error("token longer than the limit")]
    TooLarge,
    #[error("not a compact JWS (three base64url parts, a JSON header, no crit)")]
    Malformed,
    #[error("algorithm not allowed, or not the key's")]
    Algorithm,
    #[error("no published key has the token's kid")]
    UnknownKey,
    #[error("signature does not verify")]
    Signature,
    #[error("exp is past (with leeway)")]
    Expired,
    #[error("nbf is ahead (with leeway)")]
    NotYetValid,
    #[error("iss is not the configured issuer")]
    Issuer,
    #[error("aud names none of the configured audiences")]
    Audience,
    #[error("a required claim is missing or not a string")]
    Claims,
    #[error("the issuer's keys could not be fetched and none are cached")]
    KeysUnavailable,
    #[error("an expired token's resume came without a sign-in")]
    ProofMissing,
    #[error("the sign-in is another user's than the token's")]
    OtherUser,
}

impl Refusal {
    pub fn reason(self) -> &'static str {
        match self {
            Refusal::Missing => "idp_missing",
            Refusal::TooLarge => "idp_too_large",
            Refusal::Malformed => "idp_malformed",
            Refusal::Algorithm => "idp_algorithm",
            Refusal::UnknownKey => "idp_unknown_kid",
            Refusal::Signature => "idp_signature",
            Refusal::Expired => "idp_expired",
            Refusal::NotYetValid => "idp_not_yet_valid",
            Refusal::Issuer => "idp_issuer",
            Refusal::Audience => "idp_audience",
            Refusal::Claims => "idp_claims",
            Refusal::KeysUnavailable => "idp_unavailable",
            Refusal::ProofMissing => "idp_proof_missing",
            Refusal::OtherUser => "idp_other_user",
        }
    }

    pub const ALL: [Refusal; 14] = [
        Refusal::Missing,
        Refusal::TooLarge,
        Refusal::Malformed,
        Refusal::Algorithm,
        Refusal::UnknownKey,
        Refusal::Signature,
        Refusal::Expired,
        Refusal::NotYetValid,
        Refusal::Issuer,
        Refusal::Audience,
        Refusal::Claims,
        Refusal::KeysUnavailable,
        Refusal::ProofMissing,
        Refusal::OtherUser,
    ];
}

impl From<Refusal> for GatewayError {
    fn from(refusal: Refusal) -> Self {
        match refusal {
            // Not the caller's fault: answered 503 so clients retry rather than sign in again.
            Refusal::KeysUnavailable => GatewayError::IdentityUnavailable,
            // A valid sign-in, of someone else: forbidden, not unauthenticated.
            Refusal::OtherUser => GatewayError::SignInMismatch,
            other => GatewayError::SignInRefused {
                reason: other.reason(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every refusal is counted under a reason exported at 0 from the start.
    #[test]
    fn every_reason_is_an_exported_label() {
        let reasons: Vec<&str> = Refusal::ALL.iter().map(|r| r.reason()).collect();
        assert_eq!(reasons, crate::metrics::SIGN_IN_REFUSAL_REASONS);
        for refusal in Refusal::ALL {
            let error = GatewayError::from(refusal);
            assert_eq!(
                error.auth_refusal_reason(),
                Some(refusal.reason()),
                "{refusal:?}"
            );
        }
    }
}
