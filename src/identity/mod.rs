//! Signed-in users (ARCHITECTURE §11): tokens minted only for people the organisation's OpenID
//! Connect provider signed in, under a stable pseudonymous Direct Line user id.
//!
//! Map: [`settings`] (`[auth]`, typed), [`jwks`] (the issuer's keys: discovery, cache,
//! refresh, cooldown), [`verify`] (header checks, then signature and claims), [`pseudonym`]
//! (`dl_` + keyed HMAC of issuer and user claim), [`refusal`] (which check failed).
//!
//! The identity provider's token is read here and nowhere else: it never goes upstream
//! (the routes build Direct Line requests from scratch), and no log line, metric or
//! error body carries it (refusals are fixed names).

pub mod jwks;
pub mod pseudonym;
pub mod refusal;
pub mod verify;

/// `[auth]`'s settings, parsed with the rest of the configuration (`config::auth`).
pub use crate::config::auth as settings;

use std::sync::Arc;
use std::time::Duration;

use http::HeaderMap;

use crate::config::auth::AuthSettings;
use crate::error::GatewayError;
use jwks::KeySet;
use pseudonym::Pseudonyms;
use refusal::Refusal;

/// The header a durable resume (`tokens/refresh` with an expired gateway token) carries
/// the current sign-in in: `X-Identity-Token: <JWT>` (ARCHITECTURE §12). A header of its own
/// because `Authorization` holds the gateway token on that call.
pub const PROOF_HEADER: &str = "x-identity-token";

/// Signed-in mode of one bot: its settings, its issuer's keys and its pseudonyms.
pub struct Identity {
    bot: Arc<str>,
    settings: Arc<AuthSettings>,
    keys: Arc<KeySet>,
    pseudonyms: Pseudonyms,
    tls_source: Option<std::path::PathBuf>,
}

/// Who a verified token says the caller is, as the gateway will tell Direct Line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedIn {
    /// `dl_` + pseudonym.
    pub user_id: String,
    /// From `name_claim`, when configured and present.
    pub name: Option<String>,
}

impl Identity {
    /// `tls` is the bot's upstream TLS configuration (so `upstream_ca_file` applies to the
    /// issuer too), built from `ca_file`; `fetches` is `jwks_fetches_total`.
    pub fn new(
        bot: &str,
        settings: Arc<AuthSettings>,
        tls: &rustls::ClientConfig,
        ca_file: Option<&std::path::Path>,
        connect_timeout: Duration,
        fetches: prometheus::IntCounterVec,
    ) -> Self {
        Self {
            bot: Arc::from(bot),
            keys: Arc::new(KeySet::new(bot, &settings, tls, connect_timeout, fetches)),
            pseudonyms: Pseudonyms::new(settings.pseudonym_key.expose()),
            settings,
            tls_source: ca_file.map(std::path::Path::to_owned),
        }
    }

    pub fn settings(&self) -> &AuthSettings {
        &self.settings
    }

    /// Whether a reload to `settings` (with `ca_file`) can keep this one, and its keys.
    pub fn serves(&self, settings: &AuthSettings, ca_file: Option<&std::path::Path>) -> bool {
        self.settings.same_as(settings) && self.tls_source.as_deref() == ca_file
    }

    /// The caller of `tokens/generate`: `Authorization: Bearer <JWT>`, verified.
    pub async fn sign_in(&self, headers: &HeaderMap) -> Result<SignedIn, GatewayError> {
        let token = match crate::auth::bearer(headers) {
            Ok(token) => token,
            Err(GatewayError::MissingCredential) => return Err(self.refused(Refusal::Missing)),
            Err(_) => return Err(self.refused(Refusal::Malformed)),
        };
        self.verify(token)
            .await
            .map_err(|refusal| self.refused(refusal))
    }

    /// The proof a durable resume needs: a current sign-in in [`PROOF_HEADER`] whose
    /// pseudonym is `user_id`, the expired token's user.
    pub async fn prove(&self, headers: &HeaderMap, user_id: &str) -> Result<(), GatewayError> {
        let mut values = headers.get_all(PROOF_HEADER).iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return Err(self.refused(Refusal::ProofMissing));
        };
        let token = value
            .to_str()
            .map_err(|_| self.refused(Refusal::Malformed))?
            .trim();
        // Also take it written like an Authorization value.
        let token = token
            .strip_prefix("Bearer ")
            .or_else(|| token.strip_prefix("bearer "))
            .unwrap_or(token)
            .trim();
        if token.is_empty() {
            return Err(self.refused(Refusal::ProofMissing));
        }
        let signed_in = self.verify(token).await.map_err(|r| self.refused(r))?;
        if signed_in.user_id != user_id {
            return Err(self.refused(Refusal::OtherUser));
        }
        Ok(())
    }

    async fn verify(&self, token: &str) -> Result<SignedIn, Refusal> {
        let settings = &self.settings;
        let front = verify::front(token, settings.limits.max_token_bytes, &settings.algorithms)?;
        let key = self.keys.key(&front.kid).await?;
        let claims = verify::finish(token, &front, &key, settings)?;
        Ok(SignedIn {
            user_id: self.pseudonyms.user_id(&settings.issuer, &claims.user),
            name: claims.name,
        })
    }

    /// The debug line naming the failed check (never the token), and the error to answer.
    fn refused(&self, refusal: Refusal) -> GatewayError {
        tracing::debug!(
            bot = %self.bot,
            check = refusal.reason(),
            detail = %refusal,
            "sign-in refused"
        );
        refusal.into()
    }
}
