//! `[auth]` (and `[bots.auth]`): what the file says, and the typed settings it becomes.
//!
//! Parsed here rather than in `config` so signed-in mode is one file to read and to merge;
//! `config` calls [`parse`] and turns [`AuthConfigError`] into its own error. This file
//! names nothing of `config` (the duration syntax comes in as a function), so the two
//! never import each other.

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;
use url::Url;

use crate::secret::Secret;

/// Where the pseudonym key comes from when `pseudonym_key_file` is not given.
pub const ENV_PSEUDONYM_KEY: &str = "DIRECTLINE_GATEWAY_PSEUDONYM_KEY";
/// Shorter pseudonym keys are refused, as token keys are.
pub const MIN_PSEUDONYM_KEY_LEN: usize = 32;
/// The most clock skew the file may allow: past this a leeway is a second expiry rule.
pub const MAX_LEEWAY: Duration = Duration::from_secs(300);

/// `[auth]` as written. Key names are the interface (ARCHITECTURE §11).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileAuth {
    issuer: String,
    audience: FileAudience,
    jwks_url: Option<String>,
    user_claim: Option<String>,
    name_claim: Option<String>,
    algorithms: Option<Vec<String>>,
    #[serde(default, deserialize_with = "crate::config::quantity::text_or_number")]
    leeway: Option<String>,
    /// A file holding the key pseudonyms are derived with (default: the environment).
    pseudonym_key_file: Option<PathBuf>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum FileAudience {
    One(String),
    Many(Vec<String>),
}

/// Signed-in mode for one bot, validated.
#[derive(Clone)]
pub struct AuthSettings {
    /// Exactly as configured: `iss` must equal it character for character (OIDC Core
    /// §3.1.3.7), so it is not normalised (a `Url` would add a trailing slash).
    pub issuer: String,
    /// Any of these in `aud` will do.
    pub audiences: Vec<String>,
    /// Skips discovery when set.
    pub jwks_url: Option<Url>,
    pub user_claim: String,
    /// Sent upstream as `user.name` when the token has it as a string.
    pub name_claim: Option<String>,
    /// Never `none`, never HMAC: only what a public key can verify.
    pub algorithms: Vec<Algorithm>,
    pub leeway: Duration,
    /// The key of the user-id pseudonyms: stable across replicas, restarts and token-key
    /// rotations, because it is none of the rotating keys.
    pub pseudonym_key: Secret,
    pub limits: IdentityLimits,
}

impl std::fmt::Debug for AuthSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuthSettings")
            .field("issuer", &self.issuer)
            .field("audiences", &self.audiences)
            .field("jwks_url", &self.jwks_url.as_ref().map(Url::as_str))
            .field("user_claim", &self.user_claim)
            .field("algorithms", &self.algorithms)
            .finish_non_exhaustive()
    }
}

impl AuthSettings {
    /// Whether a reload leaves signed-in mode as it was, so the cached keys can stay.
    pub fn same_as(&self, other: &AuthSettings) -> bool {
        self.issuer == other.issuer
            && self.audiences == other.audiences
            && self.jwks_url == other.jwks_url
            && self.user_claim == other.user_claim
            && self.name_claim == other.name_claim
            && self.algorithms == other.algorithms
            && self.leeway == other.leeway
            && self.pseudonym_key == other.pseudonym_key
            && self.limits == other.limits
    }

    /// `{issuer}/.well-known/openid-configuration`, with a trailing `/` of the issuer
    /// removed first (OpenID Connect Discovery 1.0 §4).
    pub fn discovery_url(&self) -> Option<Url> {
        let base = self.issuer.trim_end_matches('/');
        Url::parse(&format!("{base}/.well-known/openid-configuration")).ok()
    }
}

/// Every bound signed-in mode puts on what a caller or the identity provider can make the
/// gateway hold or do. Documented in docs/SECURITY.md; not in the file (the defaults fit
/// Entra ID, Okta, Auth0, Google and Keycloak), settable in code for tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentityLimits {
    /// A bearer token longer than this is refused before any decoding.
    pub max_token_bytes: usize,
    /// The user and name claims are refused (user) or dropped (name) past this.
    pub max_claim_bytes: usize,
    /// At most one JWKS fetch per this, whatever unknown `kid`s arrive.
    pub jwks_cooldown: Duration,
    /// `Cache-Control: max-age` is honoured within these bounds.
    pub jwks_min_ttl: Duration,
    pub jwks_max_ttl: Duration,
    /// How long a JWKS without `max-age` is fresh.
    pub jwks_default_ttl: Duration,
    /// Connect, send and read the whole body of one discovery or JWKS fetch.
    pub fetch_timeout: Duration,
    pub max_jwks_bytes: usize,
    pub max_discovery_bytes: usize,
    /// A JWKS with more keys than this is refused whole (and the cached keys stay).
    pub max_keys: usize,
}

impl Default for IdentityLimits {
    fn default() -> Self {
        Self {
            // Entra ID tokens with many group claims reach 4-6 KiB; 8 KiB is the common
            // header limit of proxies in front (nginx's large_client_header_buffers).
            max_token_bytes: 8 * 1024,
            max_claim_bytes: 1024,
            jwks_cooldown: Duration::from_secs(30),
            jwks_min_ttl: Duration::from_secs(5 * 60),
            jwks_max_ttl: Duration::from_secs(24 * 3600),
            jwks_default_ttl: Duration::from_secs(3600),
            fetch_timeout: Duration::from_secs(5),
            // Entra ID's JWKS is about 10 KiB with certificate chains.
            max_jwks_bytes: 256 * 1024,
            max_discovery_bytes: 64 * 1024,
            max_keys: 32,
        }
    }
}

/// Why `[auth]` was refused. `key` is the dotted name, `auth.…` or `bots.auth.…`.
#[derive(Debug, thiserror::Error)]
pub enum AuthConfigError {
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the table stands in the file: top level (one bot) or inside `[[bots]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Top,
    Bot,
}

impl Table {
    fn key(self, name: &'static str) -> &'static str {
        const KEYS: [(&str, &str, &str); 9] = [
            ("issuer", "auth.issuer", "bots.auth.issuer"),
            ("audience", "auth.audience", "bots.auth.audience"),
            ("jwks_url", "auth.jwks_url", "bots.auth.jwks_url"),
            ("user_claim", "auth.user_claim", "bots.auth.user_claim"),
            ("name_claim", "auth.name_claim", "bots.auth.name_claim"),
            ("algorithms", "auth.algorithms", "bots.auth.algorithms"),
            ("leeway", "auth.leeway", "bots.auth.leeway"),
            (
                "pseudonym_key_file",
                "auth.pseudonym_key_file",
                "bots.auth.pseudonym_key_file",
            ),
            ("auth", "auth", "bots.auth"),
        ];
        KEYS.iter().find(|(short, _, _)| *short == name).map_or(
            "auth",
            |(_, top, bot)| match self {
                Table::Top => top,
                Table::Bot => bot,
            },
        )
    }

    fn invalid(self, name: &'static str, message: impl Into<String>) -> AuthConfigError {
        AuthConfigError::Invalid {
            key: self.key(name),
            message: message.into(),
        }
    }
}

/// Validates `[auth]`. `env_key` is [`ENV_PSEUDONYM_KEY`]'s value; `parse_duration` is the
/// configuration's duration syntax (`60s`, `2m`).
pub fn parse(
    file: FileAuth,
    table: Table,
    env_key: Option<String>,
    parse_duration: fn(&str) -> Option<Duration>,
) -> Result<AuthSettings, AuthConfigError> {
    let issuer = file.issuer.trim().to_owned();
    let issuer_url =
        Url::parse(&issuer).map_err(|e| table.invalid("issuer", format!("{issuer:?}: {e}")))?;
    fetchable(&issuer_url).map_err(|m| table.invalid("issuer", m))?;
    if issuer_url.query().is_some() || issuer_url.fragment().is_some() {
        // OIDC Discovery §3: an issuer has no query or fragment.
        return Err(table.invalid("issuer", "must have no query or fragment"));
    }
    let audiences = match file.audience {
        FileAudience::One(one) => vec![one],
        FileAudience::Many(many) => many,
    };
    if audiences.is_empty() || audiences.iter().any(|a| a.trim().is_empty()) {
        return Err(table.invalid("audience", "give one or more non-empty audiences"));
    }
    let jwks_url = file
        .jwks_url
        .map(|text| {
            let url = Url::parse(&text)
                .map_err(|e| table.invalid("jwks_url", format!("{text:?}: {e}")))?;
            fetchable(&url).map_err(|m| table.invalid("jwks_url", m))?;
            Ok(url)
        })
        .transpose()?;
    let user_claim =
        claim_name(table, "user_claim", file.user_claim)?.unwrap_or_else(|| "sub".into());
    let name_claim = claim_name(table, "name_claim", file.name_claim)?;
    let algorithms = match file.algorithms {
        None => vec![Algorithm::RS256, Algorithm::ES256],
        Some(names) => names
            .iter()
            .map(|name| parse_algorithm(name).map_err(|m| table.invalid("algorithms", m)))
            .collect::<Result<Vec<_>, _>>()?,
    };
    if algorithms.is_empty() {
        return Err(table.invalid("algorithms", "give at least one algorithm"));
    }
    let leeway = match file.leeway {
        None => Duration::from_secs(60),
        Some(text) => parse_duration(&text)
            .filter(|d| *d <= MAX_LEEWAY)
            .ok_or_else(|| {
                table.invalid(
                    "leeway",
                    format!("{text:?} is not a duration of at most 5m, like 60s"),
                )
            })?,
    };
    let pseudonym_key = match (env_key, &file.pseudonym_key_file) {
        (_, Some(path)) => std::fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .map_err(|source| AuthConfigError::Read {
                path: path.clone(),
                source,
            })?,
        (Some(key), None) => key,
        (None, None) => {
            return Err(table.invalid(
                "pseudonym_key_file",
                format!(
                    "signed-in mode needs a pseudonym key: set {ENV_PSEUDONYM_KEY} or pseudonym_key_file (at least {MIN_PSEUDONYM_KEY_LEN} characters, the same on every replica, never rotated)"
                ),
            ));
        }
    };
    if pseudonym_key.chars().count() < MIN_PSEUDONYM_KEY_LEN {
        return Err(table.invalid(
            "pseudonym_key_file",
            format!("the pseudonym key must be at least {MIN_PSEUDONYM_KEY_LEN} characters"),
        ));
    }
    Ok(AuthSettings {
        issuer,
        audiences,
        jwks_url,
        user_claim,
        name_claim,
        algorithms,
        leeway,
        pseudonym_key: Secret::new(pseudonym_key),
        limits: IdentityLimits::default(),
    })
}

/// `https`, or `http` to a loopback address (tests and the demo issuer): keys fetched over
/// plain HTTP from anywhere else could be swapped by anyone on the path.
pub fn fetchable(url: &Url) -> Result<(), String> {
    match (url.scheme(), url.host()) {
        ("https", Some(_)) => Ok(()),
        ("http", Some(host)) if is_loopback(&host) => Ok(()),
        ("http", Some(_)) => Err(format!(
            "{url}: plain http only to a loopback address; use https"
        )),
        _ => Err(format!("{url}: must be an https URL")),
    }
}

fn is_loopback(host: &url::Host<&str>) -> bool {
    match host {
        url::Host::Domain(name) => name.eq_ignore_ascii_case("localhost"),
        url::Host::Ipv4(ip) => IpAddr::V4(*ip).is_loopback(),
        url::Host::Ipv6(ip) => IpAddr::V6(*ip).is_loopback(),
    }
}

fn claim_name(
    table: Table,
    key: &'static str,
    value: Option<String>,
) -> Result<Option<String>, AuthConfigError> {
    match value {
        Some(name) if name.is_empty() || name.len() > 64 => {
            Err(table.invalid(key, "a claim name of 1 to 64 characters"))
        }
        other => Ok(other),
    }
}

/// The algorithms a public key verifies. HMAC needs the issuer's shared secret, which a
/// relying party that reads keys from a JWKS never has; accepting it is the classic
/// algorithm-confusion hole (a token MAC'd with the public key).
fn parse_algorithm(name: &str) -> Result<Algorithm, String> {
    if name.eq_ignore_ascii_case("none") {
        return Err("\"none\" is never accepted: tokens must be signed".into());
    }
    match name.parse::<Algorithm>() {
        Ok(Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) => Err(format!(
            "{name}: HMAC algorithms are not accepted (the gateway verifies with the issuer's public keys only)"
        )),
        Ok(algorithm) => Ok(algorithm),
        Err(_) => Err(format!(
            "{name:?}: one of RS256, RS384, RS512, PS256, PS384, PS512, ES256, ES384, EdDSA"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "pseudonym-key-0123456789abcdef0123456789";

    fn duration(text: &str) -> Option<Duration> {
        text.strip_suffix('s')?
            .parse()
            .ok()
            .map(Duration::from_secs)
    }

    fn parse_text(text: &str) -> Result<AuthSettings, AuthConfigError> {
        let file: FileAuth = toml::from_str(text).unwrap();
        parse(file, Table::Top, Some(KEY.into()), duration)
    }

    fn refused_key(text: &str) -> &'static str {
        match parse_text(text).unwrap_err() {
            AuthConfigError::Invalid { key, .. } => key,
            other => panic!("{other}"),
        }
    }

    #[test]
    fn defaults_and_lists() {
        let settings =
            parse_text("issuer = \"https://login.example.com/t/v2.0\"\naudience = \"api://x\"")
                .unwrap();
        assert_eq!(settings.issuer, "https://login.example.com/t/v2.0");
        assert_eq!(settings.audiences, ["api://x"]);
        assert_eq!(settings.user_claim, "sub");
        assert_eq!(settings.algorithms, [Algorithm::RS256, Algorithm::ES256]);
        assert_eq!(settings.leeway, Duration::from_secs(60));
        assert_eq!(
            settings.discovery_url().unwrap().as_str(),
            "https://login.example.com/t/v2.0/.well-known/openid-configuration"
        );
        let settings = parse_text(
            "issuer = \"https://idp.example.com/\"\naudience = [\"a\", \"b\"]\nalgorithms = [\"ES384\"]\nleeway = \"5s\"\nname_claim = \"name\"\nuser_claim = \"oid\"",
        )
        .unwrap();
        assert_eq!(settings.issuer, "https://idp.example.com/");
        assert_eq!(
            settings.discovery_url().unwrap().as_str(),
            "https://idp.example.com/.well-known/openid-configuration"
        );
        assert_eq!(settings.audiences, ["a", "b"]);
        assert_eq!(settings.algorithms, [Algorithm::ES384]);
        assert_eq!(settings.name_claim.as_deref(), Some("name"));
        assert_eq!(settings.user_claim, "oid");
        assert!(format!("{settings:?}").contains("idp.example.com"));
        assert!(!format!("{settings:?}").contains(KEY));
    }

    #[test]
    fn refusals_name_their_key() {
        let base = "audience = \"a\"\n";
        for (text, key) in [
            ("issuer = \"http://idp.example.com\"", "auth.issuer"),
            ("issuer = \"ftp://idp.example.com\"", "auth.issuer"),
            ("issuer = \"https://idp.example.com?x=1\"", "auth.issuer"),
            ("issuer = \"not a url\"", "auth.issuer"),
        ] {
            assert_eq!(refused_key(&format!("{base}{text}")), key, "{text}");
        }
        let issuer = "issuer = \"https://idp.example.com\"\n";
        for (text, key) in [
            ("audience = []", "auth.audience"),
            ("audience = \"\"", "auth.audience"),
            (
                "audience = \"a\"\nalgorithms = [\"none\"]",
                "auth.algorithms",
            ),
            (
                "audience = \"a\"\nalgorithms = [\"HS256\"]",
                "auth.algorithms",
            ),
            (
                "audience = \"a\"\nalgorithms = [\"RS1\"]",
                "auth.algorithms",
            ),
            ("audience = \"a\"\nalgorithms = []", "auth.algorithms"),
            ("audience = \"a\"\nleeway = \"301s\"", "auth.leeway"),
            ("audience = \"a\"\nleeway = \"soon\"", "auth.leeway"),
            ("audience = \"a\"\nuser_claim = \"\"", "auth.user_claim"),
            (
                "audience = \"a\"\njwks_url = \"http://10.0.0.1/keys\"",
                "auth.jwks_url",
            ),
        ] {
            assert_eq!(refused_key(&format!("{issuer}{text}")), key, "{text}");
        }
        // Loopback over plain http is for tests and the demo issuer.
        assert!(parse_text("issuer = \"http://127.0.0.1:1234\"\naudience = \"a\"").is_ok());
        assert!(parse_text("issuer = \"http://[::1]:1234\"\naudience = \"a\"").is_ok());
        assert!(parse_text("issuer = \"http://localhost:1234\"\naudience = \"a\"").is_ok());
        let file: FileAuth = toml::from_str("issuer = \"https://i\"\naudience = \"a\"").unwrap();
        match parse(file, Table::Bot, None, duration).unwrap_err() {
            AuthConfigError::Invalid { key, message } => {
                assert_eq!(key, "bots.auth.pseudonym_key_file");
                assert!(message.contains(ENV_PSEUDONYM_KEY));
            }
            other => panic!("{other}"),
        }
        let file: FileAuth = toml::from_str("issuer = \"https://i\"\naudience = \"a\"").unwrap();
        assert!(parse(file, Table::Top, Some("short".into()), duration).is_err());
        assert!(
            toml::from_str::<FileAuth>("issuer = \"https://i\"\naudience = \"a\"\nextra = 1")
                .is_err()
        );
    }
}
