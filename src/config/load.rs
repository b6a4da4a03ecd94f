//! Loading: the file, then the environment, then the flags, into one validated [`Config`].

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::auth::Table;
use super::errors::{ConfigError, invalid, key_path_at, line_column, parse_message};
use super::file::{FileConfig, FileTls};
use super::sources::{ENV_TOKEN_KEY, Env, Overrides};
use super::values::{IpNet, UserIdPolicy, parse_addr};
use super::{Config, TlsFiles};
use crate::seal::{self, MIN_KEY_LEN};
use crate::secret::Secret;

use super::bots::{bots, parse_auth, plain_http_checked, refuse_top_level_bot_keys, top_level_bot};
use super::values::{duration_or, read_trimmed};

impl Config {
    /// Loads `file` (if any), then the environment, then `overrides`, and validates the result.
    pub fn load(
        file: Option<&Path>,
        overrides: &Overrides,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let parsed = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                let parsed = toml::from_str::<FileConfig>(&text).map_err(|error| {
                    let (line, column) = line_column(&text, error.span().map_or(0, |s| s.start));
                    ConfigError::Parse {
                        path: path.to_owned(),
                        line,
                        column,
                        key: key_path_at(&text, line),
                        message: parse_message(&text, &error, line),
                    }
                })?;
                return Self::from_parts(parsed, overrides, env)
                    .map_err(|error| error.located_in(path, &text, overrides));
            }
            None => FileConfig::default(),
        };
        Self::from_parts(parsed, overrides, env)
    }

    /// The file's sections, one function each, in the order their mistakes are reported;
    /// then the checks that span sections.
    fn from_parts(
        mut file: FileConfig,
        overrides: &Overrides,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let defaults = Config::default();
        let top_auth = file.auth.take();
        let watched_files = watched_files(&file);
        if !file.bots.is_empty() {
            refuse_top_level_bot_keys(&file, overrides, env)?;
            if top_auth.is_some() {
                return Err(invalid(
                    "bots",
                    "[auth] is set at the top level; with [[bots]] give it to each bot",
                ));
            }
        }
        let (listen, admin_listen) = listeners(&file, overrides, &defaults)?;
        let mut top = top_level_bot(&file, overrides, env)?;
        top.auth = parse_auth(top_auth, Table::Top, env)?;
        // `[policy]` is every bot's default; a bot's own `[bots.policy]` replaces it whole.
        top.policy = file
            .policy
            .take()
            .map(super::policy::section)
            .transpose()?
            .map(Arc::new);
        if top.auth.is_some() && top.user_ids == UserIdPolicy::Caller {
            return Err(invalid(
                "user_ids",
                "\"caller\" and [auth] exclude each other: signed-in users get the pseudonym",
            ));
        }
        let (token_key, previous_token_keys, token_key_overlap) =
            token_keys(&file, env, defaults.token_key_overlap)?;
        let config = Config {
            listen,
            admin_listen,
            token_key,
            previous_token_keys,
            token_key_overlap,
            tls: tls(file.tls)?,
            trusted_proxies: trusted_proxies(&file.trusted_proxies)?,
            client_ipv6_prefix: client_ipv6_prefix(file.client_ipv6_prefix)?,
            upstream_refresh_before: duration_or(
                defaults.upstream_refresh_before,
                "upstream_refresh_before",
                file.upstream_refresh_before,
            )?,
            shutdown_grace: duration_or(
                defaults.shutdown_grace,
                "shutdown_grace",
                file.shutdown_grace,
            )?,
            file_watch_interval: duration_or(
                defaults.file_watch_interval,
                "file_watch_interval",
                file.file_watch_interval,
            )?,
            workers: workers(file.workers)?,
            limits: super::limits::section(file.limits)?,
            timeouts: super::limits::timeouts(file.timeouts)?,
            stream: super::stream::section(file.stream)?,
            bots: plain_http_checked(bots(file.bots, top, env)?, file.allow_http_upstream)?,
            tracing: super::tracing::section(file.tracing, env)?,
            polling: super::polling::section(file.polling)?,
            // The conversation record (`[record]`): fixed at start like `[tracing]`.
            record: file.record.map(super::record::section).transpose()?,
            watched_files,
            check_credentials: true,
        };
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        super::polling::validate(&self.polling)?;
        super::stream::validate(&self.stream)?;
        let mut names = std::collections::HashSet::new();
        let mut routes = std::collections::HashSet::new();
        for bot in &self.bots {
            if !names.insert(bot.name.as_str()) {
                return Err(invalid(
                    "bots",
                    format!("two bots are named {:?}", bot.name),
                ));
            }
            if !routes.insert((bot.host.as_deref(), bot.path_prefix.as_str())) {
                return Err(invalid(
                    "bots",
                    format!(
                        "bot {:?} has the same host and path_prefix as another bot",
                        bot.name
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The secret and key files the configuration names: a change to one reloads it.
fn watched_files(file: &FileConfig) -> Vec<PathBuf> {
    file.secret_file
        .iter()
        .chain(&file.token_key_file)
        .chain(&file.previous_token_key_files)
        .chain(file.bots.iter().filter_map(|bot| bot.secret_file.as_ref()))
        .cloned()
        .collect()
}

/// `listen` and `admin_listen`, flags first; two listeners cannot share an address.
fn listeners(
    file: &FileConfig,
    overrides: &Overrides,
    defaults: &Config,
) -> Result<(SocketAddr, SocketAddr), ConfigError> {
    let listen = match overrides.listen.as_ref().or(file.listen.as_ref()) {
        Some(listen) => parse_addr("listen", listen)?,
        None => defaults.listen,
    };
    let admin_listen = match overrides
        .admin_listen
        .as_ref()
        .or(file.admin_listen.as_ref())
    {
        Some(admin) => parse_addr("admin_listen", admin)?,
        None => defaults.admin_listen,
    };
    if listen == admin_listen && listen.port() != 0 {
        return Err(invalid(
            "admin_listen",
            format!(
                "{admin_listen} is also the client listener's address (listen); give each its own port"
            ),
        ));
    }
    Ok((listen, admin_listen))
}

/// The sealing key (environment first), the keys still opened after a rotation, and how
/// long a key replaced by a reload keeps opening tokens.
fn token_keys(
    file: &FileConfig,
    env: &dyn Env,
    default_overlap: Duration,
) -> Result<(Option<Secret>, Vec<Secret>, Duration), ConfigError> {
    let current = match env.var(ENV_TOKEN_KEY) {
        Some(key) => Some(Secret::new(key)),
        None => file
            .token_key_file
            .as_deref()
            .map(read_trimmed)
            .transpose()?
            .map(Secret::new),
    };
    if let Some(key) = &current
        && seal::check_key(key.expose()).is_err()
    {
        return Err(invalid(
            "token key",
            format!("must be at least {MIN_KEY_LEN} characters"),
        ));
    }
    let previous: Vec<Secret> = file
        .previous_token_key_files
        .iter()
        .map(|p| read_trimmed(p).map(Secret::new))
        .collect::<Result<_, _>>()?;
    if previous
        .iter()
        .any(|k| seal::check_key(k.expose()).is_err())
    {
        return Err(invalid("previous_token_key_files", "a key is too short"));
    }
    let overlap = duration_or(
        default_overlap,
        "token_key_overlap",
        file.token_key_overlap.clone(),
    )?;
    Ok((current, previous, overlap))
}

fn tls(file: Option<FileTls>) -> Result<Option<TlsFiles>, ConfigError> {
    let Some(tls) = file else {
        return Ok(None);
    };
    Ok(Some(TlsFiles {
        watch_interval: duration_or(
            Duration::from_secs(10),
            "tls.watch_interval",
            tls.watch_interval,
        )?,
        cert_file: tls.cert_file,
        key_file: tls.key_file,
    }))
}

/// At most this many worker threads: more than any machine's cores is a typo, and each
/// thread holds a runtime and one upstream pool per bot.
const MAX_WORKERS: usize = 1024;

fn workers(file: Option<usize>) -> Result<usize, ConfigError> {
    match file {
        None => Ok(0),
        Some(count) if count > MAX_WORKERS => {
            Err(invalid("workers", "at most 1024 (0: one per core)"))
        }
        Some(count) => Ok(count),
    }
}

/// 1..=128 bits; unset: a /64, the block one IPv6 subscriber or host is given.
fn client_ipv6_prefix(file: Option<u8>) -> Result<u8, ConfigError> {
    match file {
        None => Ok(64),
        Some(bits @ 1..=128) => Ok(bits),
        Some(_) => Err(invalid("client_ipv6_prefix", "must be 1 to 128")),
    }
}

fn trusted_proxies(file: &[String]) -> Result<Vec<IpNet>, ConfigError> {
    file.iter()
        .map(|t| IpNet::parse(t).ok_or_else(|| invalid("trusted_proxies", t.clone())))
        .collect()
}

#[cfg(test)]
struct MapEnv(std::collections::HashMap<&'static str, &'static str>);
#[cfg(test)]
impl Env for MapEnv {
    fn var(&self, name: &str) -> Option<String> {
        self.0.get(name).map(|v| v.to_string())
    }
}

/// A configuration from TOML text and an environment of `(name, value)` pairs, as the
/// tests of each section's file read one.
#[cfg(test)]
pub(super) fn load_str(
    toml_text: &str,
    env: &[(&'static str, &'static str)],
) -> Result<Config, ConfigError> {
    let file: FileConfig = toml::from_str(toml_text).map_err(|e| ConfigError::Parse {
        path: "test".into(),
        line: 0,
        column: 0,
        key: String::new(),
        message: e.to_string(),
    })?;
    Config::from_parts(
        file,
        &Overrides::default(),
        &MapEnv(env.iter().copied().collect()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::UpstreamTarget;

    /// Durations and sizes as bare numbers are seconds and bytes, as documented; negative
    /// or fractional ones are refused.
    #[test]
    fn bare_numbers_are_seconds_and_bytes() {
        let config = load_str(
            "shutdown_grace = 20\nresume_window = 0\n[limits]\nactivity_body = 4096\n\
             [stream]\nkeepalive_interval = 15\nliveness_timeout = 60\nbuffer_bytes = 65536\n\
             [auth]\nissuer = \"https://id.example.com\"\naudience = \"a\"\nleeway = 30\n",
            &[(
                "DIRECTLINE_GATEWAY_PSEUDONYM_KEY",
                "pseudonym-key-0123456789abcdef0123456789",
            )],
        )
        .unwrap();
        assert_eq!(config.shutdown_grace, Duration::from_secs(20));
        assert_eq!(config.bots[0].resume_window, Duration::ZERO);
        assert_eq!(config.limits.activity_body_bytes, 4096);
        assert_eq!(config.stream.keepalive_interval, Duration::from_secs(15));
        assert_eq!(config.stream.buffer_bytes, 65536);
        for bad in ["shutdown_grace = -1\n", "shutdown_grace = 1.5\n"] {
            assert!(load_str(bad, &[]).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_the_no_argument_run() {
        let config = load_str("", &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.bots[0].upstream, UpstreamTarget::Embedded);
        assert_eq!(config.limits.activity_body_bytes, 262_144);
        assert_eq!(config.limits.upstream_error_body_bytes, 65_536);
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            ("listen = \"nope\"", "listen"),
            ("upstream = \"ftp://x\"", "upstream"),
            ("upstream = \"https://x/v3/directline\"", "upstream"),
            ("path_prefix = \"bots\"", "path_prefix"),
            ("trusted_proxies = [\"10.0.0.0/99\"]", "trusted_proxies"),
            ("[limits]\nactivity_body = \"lots\"", "limits.activity_body"),
            (
                "[stream]\nliveness_timeout = \"1s\"",
                "stream.liveness_timeout",
            ),
            ("[stream]\nbuffer_frames = 0", "stream.buffer_frames"),
            ("[stream]\ndrain_period = \"soon\"", "stream.drain_period"),
            ("[stream]\ndrain_spread = \"-1s\"", "stream.drain_spread"),
            ("[stream]\npong_timeout = \"0s\"", "stream.pong_timeout"),
            (
                "[stream]\nbuffer_bytes = \"2MiB\"\nbuffer_total_bytes = \"1MiB\"",
                "stream.buffer_total_bytes",
            ),
            (
                "[limits]\nbody_read_timeout = \"0s\"",
                "limits.body_read_timeout",
            ),
            (
                "[limits]\nupload_read_timeout = \"x\"",
                "limits.upload_read_timeout",
            ),
            ("resume_window = \"a day\"", "resume_window"),
        ];
        for (text, key) in cases {
            match load_str(text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        assert!(matches!(
            load_str("nonsense = 1", &[]),
            Err(ConfigError::Parse { .. })
        ));
        let short_key = load_str("", &[(ENV_TOKEN_KEY, "short")]).unwrap_err();
        assert!(matches!(
            short_key,
            ConfigError::Invalid {
                key: "token key",
                ..
            }
        ));
    }
}

#[cfg(test)]
mod shipped_file {
    use super::*;

    /// The documented file in config/ parses and states exactly the defaults.
    #[test]
    fn config_file_states_the_defaults() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("config/gateway.toml");
        let config = Config::load(Some(&path), &Overrides::default(), &NoEnv).unwrap();
        let defaults = Config::default();
        assert_eq!(format!("{config:?}"), format!("{defaults:?}"));
    }

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }
}
