//! The issuer's signing keys: discovered, fetched, cached, refreshed, and kept when the
//! issuer is away.
//!
//! LIFECYCLE. Empty at start; the first sign-in fetches (discovery once, then the JWKS).
//! A fetched set is fresh for its `Cache-Control: max-age` (clamped) or a default. A
//! sign-in with a known `kid` never waits for the network: past freshness it starts one
//! background refresh and verifies with what it has. An unknown `kid` waits for a refresh,
//! but at most one fetch starts per cooldown, whatever arrives: a flood of invented `kid`s
//! costs the issuer one request per cooldown, and the others are refused at once. A
//! failed fetch keeps the cached keys (stale beats none while the issuer is down); a
//! successful one replaces them whole, so a key the issuer rotated out stops verifying.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, StatusCode, header};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use serde_json::Value;
use tokio::time::Instant;
use url::Url;

use super::refusal::Refusal;
use crate::config::auth::{AuthSettings, IdentityLimits, fetchable};

/// One verification key from the JWKS.
pub struct Key {
    pub kid: String,
    pub kind: KeyKind,
    /// The JWK's own `alg`, when it names one: then only that algorithm.
    pub alg: Option<Algorithm>,
    pub decoding: DecodingKey,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyKind {
    Rsa,
    P256,
    P384,
    Ed25519,
}

impl Key {
    /// Whether this key may verify `alg`: the algorithm's key type and curve (RFC 7518
    /// §3.1), and the JWK's `alg` if it has one. This, not the token, decides.
    pub fn allows(&self, alg: Algorithm) -> bool {
        use Algorithm::*;
        let by_kind = match self.kind {
            KeyKind::Rsa => matches!(alg, RS256 | RS384 | RS512 | PS256 | PS384 | PS512),
            KeyKind::P256 => alg == ES256,
            KeyKind::P384 => alg == ES384,
            KeyKind::Ed25519 => alg == EdDSA,
        };
        by_kind && self.alg.is_none_or(|own| own == alg)
    }

    /// A signing key from one JWKS entry, or why it is skipped. Symmetric (`oct`) keys,
    /// encryption keys, RSA moduli under 2048 bits and curves ring cannot verify are never
    /// keys here.
    pub fn from_jwk(value: &Value) -> Result<Self, &'static str> {
        let jwk: Jwk = serde_json::from_value(value.clone()).map_err(|_| "not a JWK we know")?;
        let kid = jwk.common.key_id.clone().ok_or("no kid")?;
        if kid.is_empty() || kid.len() > MAX_KID_BYTES {
            return Err("kid empty or too long");
        }
        if jwk
            .common
            .public_key_use
            .as_ref()
            .is_some_and(|u| *u != PublicKeyUse::Signature)
        {
            return Err("not a signature key");
        }
        let alg = match &jwk.common.key_algorithm {
            None => None,
            Some(alg) => Some(signature_algorithm(alg).ok_or("not a signature algorithm")?),
        };
        let kind = match &jwk.algorithm {
            AlgorithmParameters::RSA(rsa) => {
                let modulus = base64_len(&rsa.n);
                if !(256..=1024).contains(&modulus) {
                    return Err("RSA modulus not 2048 to 8192 bits");
                }
                KeyKind::Rsa
            }
            AlgorithmParameters::EllipticCurve(ec) => {
                let (kind, coordinate) = match ec.curve {
                    EllipticCurve::P256 => (KeyKind::P256, 32),
                    EllipticCurve::P384 => (KeyKind::P384, 48),
                    _ => return Err("curve not P-256 or P-384"),
                };
                if base64_len(&ec.x) != coordinate || base64_len(&ec.y) != coordinate {
                    return Err("EC coordinates of the wrong length");
                }
                kind
            }
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                if base64_len(&okp.x) != 32 {
                    return Err("Ed25519 key of the wrong length");
                }
                KeyKind::Ed25519
            }
            AlgorithmParameters::OctetKeyPair(_) => return Err("OKP curve not Ed25519"),
            AlgorithmParameters::OctetKey(_) => return Err("symmetric key in a JWKS"),
        };
        let decoding = DecodingKey::from_jwk(&jwk).map_err(|_| "key material not base64url")?;
        let key = Key {
            kid,
            kind,
            alg,
            decoding,
        };
        if key.alg.is_some_and(|alg| !key.allows(alg)) {
            return Err("alg does not fit the key type");
        }
        Ok(key)
    }
}

/// Longer `kid`s are skipped in a JWKS and refused in a token header.
pub const MAX_KID_BYTES: usize = 256;

/// The decoded length of unpadded base64url text (0 when it is not base64url).
fn base64_len(text: &str) -> usize {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .map_or(0, |bytes| bytes.len())
}

fn signature_algorithm(alg: &KeyAlgorithm) -> Option<Algorithm> {
    Some(match alg {
        KeyAlgorithm::RS256 => Algorithm::RS256,
        KeyAlgorithm::RS384 => Algorithm::RS384,
        KeyAlgorithm::RS512 => Algorithm::RS512,
        KeyAlgorithm::PS256 => Algorithm::PS256,
        KeyAlgorithm::PS384 => Algorithm::PS384,
        KeyAlgorithm::PS512 => Algorithm::PS512,
        KeyAlgorithm::ES256 => Algorithm::ES256,
        KeyAlgorithm::ES384 => Algorithm::ES384,
        KeyAlgorithm::EdDSA => Algorithm::EdDSA,
        _ => return None,
    })
}

type HttpClient = Client<HttpsConnector<HttpConnector>, Empty<Bytes>>;

/// The keys of one issuer for one bot, shared by every request of that bot.
pub struct KeySet {
    bot: Arc<str>,
    issuer: String,
    configured_jwks: Option<Url>,
    discovery: Option<Url>,
    limits: IdentityLimits,
    client: HttpClient,
    cache: Mutex<Cache>,
    /// Held by the one fetch in progress; waiters re-check the cache after it.
    fetching: tokio::sync::Mutex<()>,
    fetches: prometheus::IntCounterVec,
}

#[derive(Default)]
struct Cache {
    keys: HashMap<String, Arc<Key>>,
    fresh_until: Option<Instant>,
    last_attempt: Option<Instant>,
    /// Fetches failed in a row while no key was cached: they set the short backoff.
    failures_while_empty: u32,
    /// From discovery, kept once found.
    jwks_url: Option<Url>,
}

#[derive(Debug, thiserror::Error)]
enum FetchError {
    #[error("{0}")]
    Unreachable(String),
    #[error("{0}")]
    Invalid(String),
}

impl KeySet {
    /// `tls` is the bot's upstream TLS configuration (ring, webpki roots and
    /// `upstream_ca_file`); `fetches` is `jwks_fetches_total`.
    pub fn new(
        bot: &str,
        settings: &AuthSettings,
        tls: &rustls::ClientConfig,
        connect_timeout: Duration,
        fetches: prometheus::IntCounterVec,
    ) -> Self {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout.min(settings.limits.fetch_timeout)));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls.clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Self {
            bot: Arc::from(bot),
            issuer: settings.issuer.clone(),
            configured_jwks: settings.jwks_url.clone(),
            discovery: settings.discovery_url(),
            limits: settings.limits.clone(),
            client,
            cache: Mutex::new(Cache::default()),
            fetching: tokio::sync::Mutex::new(()),
            fetches,
        }
    }

    /// The key with this `kid`, fetching when it is unknown and the cooldown allows.
    pub async fn key(self: &Arc<Self>, kid: &str) -> Result<Arc<Key>, Refusal> {
        let now = Instant::now();
        let (found, stale) = {
            let cache = self.cache();
            let stale = cache.fresh_until.is_none_or(|until| now >= until);
            (cache.keys.get(kid).cloned(), stale)
        };
        if let Some(key) = found {
            if stale && self.may_fetch(now) {
                let set = self.clone();
                tokio::spawn(async move { set.refresh().await });
            }
            return Ok(key);
        }
        if self.may_fetch(now) {
            self.refresh().await;
        } else if self.fetching.try_lock().is_err() {
            // Another caller's fetch is running: its answer decides this kid too (without
            // waiting, a caller arriving mid-fetch would find no keys and answer 503).
            drop(self.fetching.lock().await);
        }
        let cache = self.cache();
        match cache.keys.get(kid) {
            Some(key) => Ok(key.clone()),
            None if cache.keys.is_empty() => Err(Refusal::KeysUnavailable),
            None => Err(Refusal::UnknownKey),
        }
    }

    /// How many keys are cached now (for tests and the debug line).
    pub fn cached_keys(&self) -> usize {
        self.cache().keys.len()
    }

    fn cache(&self) -> MutexGuard<'_, Cache> {
        self.cache
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    fn may_fetch(&self, now: Instant) -> bool {
        let cache = self.cache();
        // With no key at all every sign-in fails: retry soon (1 s, 2 s, 4 s … up to the
        // cooldown), so an issuer that was briefly down at start is used once it is back.
        // With keys, only unknown `kid`s wait, and the cooldown bounds what they cost it.
        let wait = if cache.keys.is_empty() {
            empty_backoff(cache.failures_while_empty).min(self.limits.jwks_cooldown)
        } else {
            self.limits.jwks_cooldown
        };
        cache
            .last_attempt
            .is_none_or(|last| now.saturating_duration_since(last) >= wait)
    }

    /// One fetch, unless another caller's fetch ran within the cooldown (then waiting for
    /// it was the refresh). Never holds the cache lock across the network.
    async fn refresh(&self) {
        let _only_one = self.fetching.lock().await;
        let now = Instant::now();
        if !self.may_fetch(now) {
            return;
        }
        self.cache().last_attempt = Some(now);
        let result = tokio::time::timeout(self.limits.fetch_timeout, self.fetch())
            .await
            .unwrap_or_else(|_| Err(FetchError::Unreachable("timed out".into())));
        // The labels of `metrics::JWKS_FETCH_RESULTS`.
        let label = match &result {
            Ok(_) => "ok",
            Err(FetchError::Unreachable(_)) => "unreachable",
            Err(FetchError::Invalid(_)) => "invalid",
        };
        self.fetches.with_label_values(&[label, &self.bot]).inc();
        match result {
            Ok((keys, ttl)) => {
                tracing::debug!(bot = %self.bot, keys = keys.len(), ttl_s = ttl.as_secs(), "identity provider keys fetched");
                let mut cache = self.cache();
                cache.keys = keys;
                cache.fresh_until = Some(Instant::now() + ttl);
                cache.failures_while_empty = 0;
            }
            Err(error) => {
                let cached = {
                    let mut cache = self.cache();
                    if cache.keys.is_empty() {
                        cache.failures_while_empty = cache.failures_while_empty.saturating_add(1);
                    }
                    cache.keys.len()
                };
                tracing::warn!(bot = %self.bot, issuer = %self.issuer, cached, %error, "identity provider keys could not be fetched; the cached keys stay");
            }
        }
    }

    async fn fetch(&self) -> Result<(HashMap<String, Arc<Key>>, Duration), FetchError> {
        let jwks_url = match self
            .configured_jwks
            .clone()
            .or_else(|| self.cache().jwks_url.clone())
        {
            Some(url) => url,
            None => {
                let url = self.discover().await?;
                self.cache().jwks_url = Some(url.clone());
                url
            }
        };
        let (body, max_age) = self.get(&jwks_url, self.limits.max_jwks_bytes).await?;
        let keys = self.parse_jwks(&body)?;
        let ttl = max_age
            .map(|age| age.clamp(self.limits.jwks_min_ttl, self.limits.jwks_max_ttl))
            .unwrap_or(self.limits.jwks_default_ttl);
        Ok((keys, ttl))
    }

    /// `jwks_uri` from the discovery document, whose `issuer` must be ours (OpenID
    /// Connect Discovery 1.0 §4.3: otherwise another issuer's keys would be trusted).
    async fn discover(&self) -> Result<Url, FetchError> {
        let url = self
            .discovery
            .clone()
            .ok_or_else(|| FetchError::Invalid("no discovery URL".into()))?;
        let (body, _) = self.get(&url, self.limits.max_discovery_bytes).await?;
        let document: Value = serde_json::from_slice(&body)
            .map_err(|_| FetchError::Invalid("discovery document is not JSON".into()))?;
        if document.get("issuer").and_then(Value::as_str) != Some(self.issuer.as_str()) {
            return Err(FetchError::Invalid(
                "discovery document names another issuer".into(),
            ));
        }
        let jwks = document
            .get("jwks_uri")
            .and_then(Value::as_str)
            .ok_or_else(|| FetchError::Invalid("discovery document has no jwks_uri".into()))?;
        let url =
            Url::parse(jwks).map_err(|_| FetchError::Invalid("jwks_uri is not a URL".into()))?;
        fetchable(&url).map_err(FetchError::Invalid)?;
        Ok(url)
    }

    fn parse_jwks(&self, body: &[u8]) -> Result<HashMap<String, Arc<Key>>, FetchError> {
        let set: Value = serde_json::from_slice(body)
            .map_err(|_| FetchError::Invalid("JWKS is not JSON".into()))?;
        let entries = set
            .get("keys")
            .and_then(Value::as_array)
            .ok_or_else(|| FetchError::Invalid("JWKS has no keys array".into()))?;
        if entries.len() > self.limits.max_keys {
            return Err(FetchError::Invalid(format!(
                "JWKS has {} keys, over the limit of {}",
                entries.len(),
                self.limits.max_keys
            )));
        }
        let mut keys = HashMap::new();
        for entry in entries {
            match Key::from_jwk(entry) {
                // Two keys under one kid: neither can be told apart, so neither is used.
                Ok(key) if keys.contains_key(&key.kid) => {
                    tracing::warn!(bot = %self.bot, "JWKS lists a kid twice; both skipped");
                    keys.insert(key.kid.clone(), None);
                }
                Ok(key) => {
                    keys.insert(key.kid.clone(), Some(Arc::new(key)));
                }
                Err(why) => tracing::debug!(bot = %self.bot, why, "JWKS entry skipped"),
            }
        }
        let keys: HashMap<String, Arc<Key>> = keys
            .into_iter()
            .filter_map(|(kid, key)| Some((kid, key?)))
            .collect();
        if keys.is_empty() {
            // Replacing the cache with nothing would lock every user out until the next
            // good fetch; an empty set is treated as a bad answer instead.
            return Err(FetchError::Invalid("JWKS has no usable signing key".into()));
        }
        Ok(keys)
    }

    /// GET `url`: 200 and a body within `limit`, with its `max-age`.
    async fn get(&self, url: &Url, limit: usize) -> Result<(Bytes, Option<Duration>), FetchError> {
        let request = Request::get(url.as_str())
            .header(header::ACCEPT, HeaderValue::from_static("application/json"))
            .header(
                header::USER_AGENT,
                HeaderValue::from_static(concat!("directline-gateway/", env!("CARGO_PKG_VERSION"))),
            )
            .body(Empty::new())
            .map_err(|_| FetchError::Invalid("URL not usable in a request".into()))?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|error| FetchError::Unreachable(crate::error::cause_chain(&error)))?;
        let status = response.status();
        if status != StatusCode::OK {
            // 5xx and 429 are the issuer being away; anything else is a wrong URL.
            let text = format!("{url} answered {status}");
            return Err(
                if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS {
                    FetchError::Unreachable(text)
                } else {
                    FetchError::Invalid(text)
                },
            );
        }
        let max_age = max_age(response.headers());
        let declared = response
            .headers()
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|len| len > limit as u64) {
            return Err(FetchError::Invalid(format!(
                "{url}: body over {limit} bytes"
            )));
        }
        let body = Limited::new(response.into_body(), limit)
            .collect()
            .await
            .map_err(|error| {
                if error.is::<http_body_util::LengthLimitError>() {
                    FetchError::Invalid(format!("{url}: body over {limit} bytes"))
                } else {
                    FetchError::Unreachable(format!("{url}: body: {error}"))
                }
            })?
            .to_bytes();
        Ok((body, max_age))
    }
}

/// `max-age` of `Cache-Control`; `no-store`/`no-cache` count as 0 (then the minimum).
/// The wait after `failures` failed fetches in a row with no key cached: 1 s, 2 s, 4 s …
fn empty_backoff(failures: u32) -> Duration {
    Duration::from_secs(1 << failures.saturating_sub(1).min(6))
}

fn max_age(headers: &http::HeaderMap) -> Option<Duration> {
    let mut found = None;
    for directive in headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let directive = directive.trim();
        if directive.eq_ignore_ascii_case("no-store") || directive.eq_ignore_ascii_case("no-cache")
        {
            return Some(Duration::ZERO);
        }
        if let Some((name, value)) = directive.split_once('=')
            && name.trim().eq_ignore_ascii_case("max-age")
            && let Ok(seconds) = value.trim().trim_matches('"').parse::<u64>()
        {
            found = Some(Duration::from_secs(seconds));
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const N: &str = "8vANVj77-cEGyv9UPVTDBItOttJ0mNnbLjKOW2dr807RUU7I5W93ehG428HJ25ndZ9RfOvzZXEHLXhrVHErwhbs7029SXaq2XKQqQdnfqw4Z17swdq4y_Uc0rJmmzyVsJhHfdab1JLKYUvXmushxAq1q6vTAuDo17lIe7Po05Gb4uF4x4JEYlwayCc17HVsqpWyxE_8WTIP3tTrMfo5zGcMO2YzKePrnVCiocTvjWJWBDppeYwUze3o2W1iYmM5QnP06kxivA7dNIWl0rr3HpLXIjmCZK9W6aQLlhZMlspiBa8dfDvkfbYo-p9bhwt4d43i2GAOwzjw_fJQ44iWOJQ";

    fn rsa(kid: &str) -> Value {
        json!({"kty": "RSA", "kid": kid, "use": "sig", "n": N, "e": "AQAB"})
    }

    #[test]
    fn jwk_entries_that_are_no_signing_keys_are_skipped() {
        let key = Key::from_jwk(&rsa("a")).unwrap();
        assert_eq!(key.kind, KeyKind::Rsa);
        assert!(key.allows(Algorithm::RS256) && key.allows(Algorithm::PS256));
        assert!(!key.allows(Algorithm::ES256) && !key.allows(Algorithm::HS256));
        let pinned =
            Key::from_jwk(&json!({"kty": "RSA", "kid": "a", "alg": "RS256", "n": N, "e": "AQAB"}))
                .unwrap();
        assert!(pinned.allows(Algorithm::RS256) && !pinned.allows(Algorithm::RS512));
        let x = "f83OJ3D2xF1Bg8vub9tLe1gHMzV76e8Tus9uPHvRVEU";
        let y = "x_FEzRu9m36HLN_tue659LNpXW6pCyStikYjKIWI5a0";
        let ec = Key::from_jwk(&json!({"kty": "EC", "crv": "P-256", "kid": "e", "x": x, "y": y}))
            .unwrap();
        assert!(
            ec.allows(Algorithm::ES256)
                && !ec.allows(Algorithm::ES384)
                && !ec.allows(Algorithm::RS256)
        );
        for (entry, why) in [
            (
                json!({"kty": "oct", "kid": "s", "k": "c2VjcmV0"}),
                "symmetric key in a JWKS",
            ),
            (json!({"kty": "RSA", "n": N, "e": "AQAB"}), "no kid"),
            (
                json!({"kty": "RSA", "kid": "a", "use": "enc", "n": N, "e": "AQAB"}),
                "not a signature key",
            ),
            (
                json!({"kty": "RSA", "kid": "a", "alg": "RSA-OAEP", "n": N, "e": "AQAB"}),
                "not a signature algorithm",
            ),
            (
                json!({"kty": "RSA", "kid": "a", "alg": "ES256", "n": N, "e": "AQAB"}),
                "alg does not fit the key type",
            ),
            (
                json!({"kty": "RSA", "kid": "a", "n": "AQAB", "e": "AQAB"}),
                "RSA modulus not 2048 to 8192 bits",
            ),
            (
                json!({"kty": "EC", "crv": "P-521", "kid": "e", "x": x, "y": y}),
                "curve not P-256 or P-384",
            ),
            (
                json!({"kty": "EC", "crv": "P-384", "kid": "e", "x": x, "y": y}),
                "EC coordinates of the wrong length",
            ),
            (
                json!({"kty": "RSA", "kid": "k".repeat(300), "n": N, "e": "AQAB"}),
                "kid empty or too long",
            ),
            (json!("not an object"), "not a JWK we know"),
        ] {
            assert_eq!(Key::from_jwk(&entry).err(), Some(why), "{entry}");
        }
    }

    #[test]
    fn an_empty_cache_retries_with_a_growing_backoff() {
        let waits: Vec<u64> = (1..=8).map(|n| empty_backoff(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 16, 32, 64, 64]);
    }

    #[test]
    fn cache_control_max_age() {
        let headers = |value: &'static str| {
            let mut headers = http::HeaderMap::new();
            headers.insert(header::CACHE_CONTROL, HeaderValue::from_static(value));
            headers
        };
        assert_eq!(
            max_age(&headers("public, max-age=3600")),
            Some(Duration::from_secs(3600))
        );
        assert_eq!(
            max_age(&headers("max-age=\"60\", must-revalidate")),
            Some(Duration::from_secs(60))
        );
        assert_eq!(max_age(&headers("no-store")), Some(Duration::ZERO));
        assert_eq!(max_age(&headers("public")), None);
        assert_eq!(max_age(&headers("max-age=soon")), None);
        assert_eq!(max_age(&http::HeaderMap::new()), None);
    }
}
