//! Loading: the file, then the environment, then the flags, into one validated [`Config`].

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::auth::Table;
use super::errors::{ConfigError, invalid, key_path_at, line_column, parse_message};
use super::file::{FileConfig, FileLimits, FileStream, FileTimeouts, FileTls};
use super::sources::{ENV_TOKEN_KEY, Env, Overrides};
use super::values::{IpNet, UserIdPolicy, parse_addr};
use super::{Config, Limits, StreamConfig, Timeouts, TlsFiles};
use crate::seal::{self, MIN_KEY_LEN};
use crate::secret::Secret;

use super::bots::{bots, parse_auth, plain_http_checked, refuse_top_level_bot_keys, top_level_bot};
use super::values::{duration_or, read_trimmed, set_duration, set_size, set_usize};

/// What `limits.upstream_error_body` may be. The top is the ceiling on any upstream JSON
/// answer (`upstream::body::MAX_UPSTREAM_JSON`), stated here and pinned by a test rather than
/// imported: the configuration sits below the upstream client, which reads it.
const UPSTREAM_ERROR_BODY: RangeInclusive<usize> = 1024..=1024 * 1024;

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
            limits: limits(file.limits)?,
            timeouts: timeouts(file.timeouts)?,
            stream: stream(file.stream)?,
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
        let s = &self.stream;
        if s.liveness_timeout <= s.keepalive_interval {
            return Err(invalid(
                "stream.liveness_timeout",
                "must be longer than stream.keepalive_interval",
            ));
        }
        if s.pong_timeout.is_zero() {
            return Err(invalid("stream.pong_timeout", "must be above 0"));
        }
        if s.buffer_bytes == 0 || s.buffer_total_bytes < s.buffer_bytes {
            return Err(invalid(
                "stream.buffer_total_bytes",
                "must be at least stream.buffer_bytes, which must be above 0",
            ));
        }
        if s.backoff_base.is_zero() || s.backoff_max < s.backoff_base {
            return Err(invalid(
                "stream.backoff_max",
                "must be at least stream.backoff_base, which must be above 0",
            ));
        }
        if s.collision_poll_interval < Duration::from_millis(100) {
            return Err(invalid(
                "stream.collision_poll_interval",
                "must be at least 100ms",
            ));
        }
        if s.collision_retry_base.is_zero() || s.collision_retry_max < s.collision_retry_base {
            return Err(invalid(
                "stream.collision_retry_max",
                "must be at least stream.collision_retry_base, which must be above 0",
            ));
        }
        if self.limits.max_header_bytes < 1024 {
            return Err(invalid("limits.max_headers", "must be at least 1KiB"));
        }
        if self.limits.max_url_bytes < 256 {
            return Err(invalid("limits.max_url", "must be at least 256B"));
        }
        if s.ws_read_buffer_bytes < 512 {
            return Err(invalid("stream.ws_read_buffer", "must be at least 512B"));
        }
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

fn limits(l: FileLimits) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    set_size(
        &mut limits.activity_body_bytes,
        "limits.activity_body",
        l.activity_body,
    )?;
    set_size(
        &mut limits.upload_body_bytes,
        "limits.upload_body",
        l.upload_body,
    )?;
    set_size(
        &mut limits.token_body_bytes,
        "limits.token_body",
        l.token_body,
    )?;
    set_usize(
        &mut limits.upstream_error_body_bytes,
        "limits.upstream_error_body",
        l.upstream_error_body,
    )?;
    if !UPSTREAM_ERROR_BODY.contains(&limits.upstream_error_body_bytes) {
        return Err(invalid(
            "limits.upstream_error_body",
            "must be 1KiB to 1MiB",
        ));
    }
    set_usize(&mut limits.max_url_bytes, "limits.max_url", l.max_url)?;
    set_usize(
        &mut limits.max_header_bytes,
        "limits.max_headers",
        l.max_headers,
    )?;
    set_duration(
        &mut limits.header_read_timeout,
        "limits.header_read_timeout",
        l.header_read_timeout,
    )?;
    set_duration(
        &mut limits.http2_idle_timeout,
        "limits.http2_idle_timeout",
        l.http2_idle_timeout,
    )?;

    if let Some(max) = l.max_connections {
        if max == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        limits.max_connections = max;
    }
    if let Some(max) = l.max_connections_per_ip {
        limits.max_connections_per_ip = max;
    }
    for (slot, key, value) in [
        (
            &mut limits.body_read_timeout,
            "limits.body_read_timeout",
            l.body_read_timeout,
        ),
        (
            &mut limits.upload_read_timeout,
            "limits.upload_read_timeout",
            l.upload_read_timeout,
        ),
    ] {
        set_duration(slot, key, value)?;
        if slot.is_zero() {
            return Err(invalid(key, "must be above 0"));
        }
    }
    if let Some(count) = l.max_header_count {
        if !(8..=1000).contains(&count) {
            return Err(invalid("limits.max_header_count", "must be 8 to 1000"));
        }
        limits.max_header_count = count;
    }
    Ok(limits)
}

fn timeouts(t: FileTimeouts) -> Result<Timeouts, ConfigError> {
    let mut timeouts = Timeouts::default();
    set_duration(&mut timeouts.connect, "timeouts.connect", t.connect)?;
    set_duration(&mut timeouts.default, "timeouts.default", t.default)?;
    set_duration(
        &mut timeouts.activities,
        "timeouts.activities",
        t.activities,
    )?;
    set_duration(&mut timeouts.upload, "timeouts.upload", t.upload)?;
    Ok(timeouts)
}

fn stream(s: FileStream) -> Result<StreamConfig, ConfigError> {
    let mut stream = StreamConfig::default();
    set_duration(
        &mut stream.keepalive_interval,
        "stream.keepalive_interval",
        s.keepalive_interval,
    )?;
    set_duration(
        &mut stream.liveness_timeout,
        "stream.liveness_timeout",
        s.liveness_timeout,
    )?;
    set_duration(
        &mut stream.resume_budget,
        "stream.resume_budget",
        s.resume_budget,
    )?;
    set_duration(
        &mut stream.backoff_base,
        "stream.backoff_base",
        s.backoff_base,
    )?;
    set_duration(&mut stream.backoff_max, "stream.backoff_max", s.backoff_max)?;
    set_duration(&mut stream.linger, "stream.linger", s.linger)?;
    set_duration(
        &mut stream.pong_timeout,
        "stream.pong_timeout",
        s.pong_timeout,
    )?;
    set_duration(
        &mut stream.drain_period,
        "stream.drain_period",
        s.drain_period,
    )?;
    set_duration(
        &mut stream.drain_spread,
        "stream.drain_spread",
        s.drain_spread,
    )?;
    // Sharing a conversation with another replica.
    set_duration(
        &mut stream.collision_poll_interval,
        "stream.collision_poll_interval",
        s.collision_poll_interval,
    )?;
    set_duration(
        &mut stream.collision_retry_base,
        "stream.collision_retry_base",
        s.collision_retry_base,
    )?;
    set_duration(
        &mut stream.collision_retry_max,
        "stream.collision_retry_max",
        s.collision_retry_max,
    )?;
    set_duration(
        &mut stream.chunk_interval,
        "stream.chunk_interval",
        s.chunk_interval,
    )?;
    set_usize(
        &mut stream.client_unsent_bytes,
        "stream.client_unsent_bytes",
        s.client_unsent_bytes,
    )?;
    set_usize(&mut stream.max_frame_bytes, "stream.max_frame", s.max_frame)?;
    set_usize(
        &mut stream.buffer_bytes,
        "stream.buffer_bytes",
        s.buffer_bytes,
    )?;
    set_usize(
        &mut stream.buffer_total_bytes,
        "stream.buffer_total_bytes",
        s.buffer_total_bytes,
    )?;
    set_usize(
        &mut stream.ws_read_buffer_bytes,
        "stream.ws_read_buffer",
        s.ws_read_buffer,
    )?;
    if let Some(guard) = s.guard_against_replays {
        stream.guard_against_replays = guard;
    }
    let counts = [
        (
            &mut stream.buffer_frames,
            s.buffer_frames,
            "stream.buffer_frames",
        ),
        (
            &mut stream.delivered_ids,
            s.delivered_ids,
            "stream.delivered_ids",
        ),
        (
            &mut stream.client_lag_frames,
            s.client_lag_frames,
            "stream.client_lag_frames",
        ),
        (
            &mut stream.max_sockets_per_conversation,
            s.max_sockets_per_conversation,
            "stream.max_sockets_per_conversation",
        ),
    ];
    for (slot, value, key) in counts {
        if let Some(value) = value {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
            *slot = value;
        }
    }
    Ok(stream)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::sources::ENV_SECRET;
    use crate::config::{DEFAULT_BOT, DEFAULT_RESUME_WINDOW, Rate, UpstreamTarget, UserIdPolicy};
    use std::collections::HashMap;

    struct MapEnv(HashMap<&'static str, &'static str>);
    impl Env for MapEnv {
        fn var(&self, name: &str) -> Option<String> {
            self.0.get(name).map(|v| v.to_string())
        }
    }

    fn load_str(
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

    const TWO_BOTS: &str = r#"
resume_window = "2h"

[rate_limits]
sessions_per_minute = 30

[[bots]]
name = "support"
host = "Support.Contoso.com"
upstream = "https://europe.directline.botframework.com"
secret_env = "SUPPORT_SECRET"
allowed_origins = ["https://contoso.com/"]
user_ids = "caller"

[[bots]]
name = "sales"
path_prefix = "/bots/sales/"
upstream = "embedded"
resume_window = "0"
[bots.rate_limits]
activities_per_minute = 60
activities_burst = 5
"#;

    #[test]
    fn bots_take_their_own_settings_and_the_top_level_defaults() {
        let config = load_str(TWO_BOTS, &[("SUPPORT_SECRET", "s3cret")]).unwrap();
        let [support, sales] = &config.bots[..] else {
            panic!("two bots");
        };
        assert_eq!(support.name, "support");
        assert_eq!(support.host.as_deref(), Some("support.contoso.com"));
        assert_eq!(support.path_prefix, "");
        assert_eq!(support.secret.as_ref().unwrap().expose(), "s3cret");
        assert_eq!(support.allowed_origins, ["https://contoso.com"]);
        assert_eq!(support.user_ids, UserIdPolicy::Caller);
        assert_eq!(
            support.rate_limits.sessions.per_minute, 30,
            "top-level default"
        );
        assert_eq!(
            support.resume_window,
            Duration::from_secs(7200),
            "top-level default"
        );
        assert_eq!(sales.resume_window, Duration::ZERO, "0 turns it off");
        assert_eq!(sales.path_prefix, "/bots/sales");
        assert_eq!(sales.upstream, UpstreamTarget::Embedded);
        assert!(sales.secret.is_none());
        assert_eq!(sales.user_ids, UserIdPolicy::Minted);
        assert_eq!(sales.rate_limits.sessions.per_minute, 30);
        assert_eq!(
            sales.rate_limits.activities,
            Rate {
                per_minute: 60,
                burst: 5
            }
        );
        // Without [[bots]] the top level is one bot named "default".
        let single = load_str("user_ids = \"caller\"", &[]).unwrap();
        let [default] = &single.bots[..] else {
            panic!("one bot");
        };
        assert_eq!(default.name, DEFAULT_BOT);
        assert_eq!(default.user_ids, UserIdPolicy::Caller);
        assert_eq!(default.resume_window, DEFAULT_RESUME_WINDOW);
    }

    #[test]
    fn bot_mistakes_are_named() {
        let bot = |extra: &str| format!("[[bots]]\nname = \"a\"\nupstream = \"embedded\"\n{extra}");
        let cases = [
            (format!("upstream = \"embedded\"\n{}", bot("")), "bots"),
            (format!("path_prefix = \"/x\"\n{}", bot("")), "bots"),
            (
                format!("{}{}", bot(""), bot("path_prefix = \"/b\"")),
                "bots",
            ),
            (
                format!(
                    "{}[[bots]]\nname = \"b\"\nupstream = \"embedded\"\n",
                    bot("")
                ),
                "bots",
            ),
            (
                "[[bots]]\nname = \"Bad Name\"\nupstream = \"embedded\"\n".to_owned(),
                "bots.name",
            ),
            (
                "[[bots]]\nname = \"none\"\nupstream = \"embedded\"\n".to_owned(),
                "bots.name",
            ),
            (bot("host = \"https://x.test\""), "bots.host"),
            (bot("user_ids = \"anyone\""), "user_ids"),
            (bot("secret_env = \"NOT_SET_ANYWHERE\""), "bots.secret_env"),
            (
                "[[bots]]\nname = \"a\"\nupstream = \"https://x.test\"\n".to_owned(),
                "bots.secret_file",
            ),
        ];
        for (text, key) in cases {
            match load_str(&text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
        // The environment's single-bot secret would be silently unused with [[bots]].
        assert!(matches!(
            load_str(&bot(""), &[(ENV_SECRET, "x")]),
            Err(ConfigError::Invalid { key: "bots", .. })
        ));
    }

    #[test]
    fn a_token_endpoint_stands_in_for_upstream_and_secret() {
        const ENDPOINT: &str = "https://contoso.environment.api.powerplatform.com/powervirtualagents/botsbyschema/cr_a/directline/token?api-version=2022-03-01-preview";
        let single = load_str(&format!("token_endpoint = \"{ENDPOINT}\""), &[]).unwrap();
        assert_eq!(single.bots[0].upstream, UpstreamTarget::Discovered);
        assert!(single.bots[0].secret.is_none());
        // The shipped file's `upstream = "embedded"` left in place is a mistake, named.
        let embedded = format!("upstream = \"embedded\"\ntoken_endpoint = \"{ENDPOINT}\"");
        assert!(matches!(
            load_str(&embedded, &[]),
            Err(ConfigError::Invalid {
                key: "token_endpoint",
                ..
            })
        ));
        let explicit = format!(
            "upstream = \"https://europe.directline.botframework.com\"\ntoken_endpoint = \"{ENDPOINT}\""
        );
        assert!(matches!(
            load_str(&explicit, &[]).unwrap().bots[0].upstream,
            UpstreamTarget::Url(_)
        ));
        let bots = format!(
            "[[bots]]\nname = \"agent\"\ntoken_endpoint = \"{ENDPOINT}\"\nsecret_env = \"AGENT_SECRET\"\n"
        );
        let config = load_str(&bots, &[("AGENT_SECRET", "s")]).unwrap();
        assert_eq!(config.bots[0].upstream, UpstreamTarget::Discovered);
        assert!(config.bots[0].secret.is_some());
        for (text, key) in [
            ("[[bots]]\nname = \"a\"\n".to_owned(), "bots.upstream"),
            (
                "[[bots]]\nname = \"a\"\ntoken_endpoint = \"http://example.com/powervirtualagents/botsbyschema/a/directline/token?api-version=1\"\n".to_owned(),
                "bots.token_endpoint",
            ),
            (
                format!("token_endpoint = \"{ENDPOINT}\"\n[[bots]]\nname = \"a\"\nupstream = \"embedded\"\n"),
                "bots",
            ),
        ] {
            match load_str(&text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }

    /// Segments a URL parser would normalise away are refused (regression found by fuzzing).
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
    fn upstream_error_body_limit_is_bounded() {
        assert_eq!(
            *UPSTREAM_ERROR_BODY.end(),
            crate::upstream::body::MAX_UPSTREAM_JSON
        );
        let config = load_str("[limits]\nupstream_error_body = \"4KiB\"", &[]).unwrap();
        assert_eq!(config.limits.upstream_error_body_bytes, 4096);
        for bad in ["\"100\"", "\"2MiB\"", "\"lots\""] {
            let err = load_str(&format!("[limits]\nupstream_error_body = {bad}"), &[]).unwrap_err();
            assert!(
                err.to_string().contains("limits.upstream_error_body"),
                "{bad}: {err}"
            );
        }
    }

    /// Replicas sharing a conversation (`stream::collision`): read, and refused when the
    /// poll would hammer Direct Line or the retry schedule makes no sense.
    #[test]
    fn collision_settings_are_read_and_checked() {
        let config = load_str(
            "[stream]\ncollision_poll_interval = \"250ms\"\ncollision_retry_base = \"2s\"\ncollision_retry_max = \"30s\"",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.stream.collision_poll_interval,
            Duration::from_millis(250)
        );
        assert_eq!(config.stream.collision_retry_base, Duration::from_secs(2));
        assert_eq!(config.stream.collision_retry_max, Duration::from_secs(30));
        for bad in [
            "collision_poll_interval = \"50ms\"",
            "collision_retry_base = \"0s\"",
            "collision_retry_base = \"2m\"\ncollision_retry_max = \"1m\"",
        ] {
            let err = load_str(&format!("[stream]\n{bad}"), &[]).unwrap_err();
            assert!(
                err.to_string().contains("stream.collision_"),
                "{bad}: {err}"
            );
        }
    }

    #[test]
    fn real_upstream_needs_a_secret() {
        let err = load_str("upstream = \"https://directline.botframework.com\"", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingSecret));
        let ok = load_str(
            "upstream = \"https://europe.directline.botframework.com\"",
            &[(ENV_SECRET, "s")],
        )
        .unwrap();
        assert!(matches!(ok.bots[0].upstream, UpstreamTarget::Url(_)));
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

    // Livestreamed answers: `delivery_mode` (top level, per bot) and `[stream]` keys.
    #[test]
    fn delivery_mode_is_inherited_and_only_stream_is_accepted() {
        let config = load_str(
            r#"
delivery_mode = "stream"
[stream]
chunk_interval = "50ms"
client_unsent_bytes = "8KiB"
[[bots]]
name = "a"
upstream = "embedded"
[[bots]]
name = "b"
path_prefix = "/b"
upstream = "embedded"
delivery_mode = "stream"
"#,
            &[],
        )
        .unwrap();
        assert!(
            config
                .bots
                .iter()
                .all(|bot| bot.delivery_mode == crate::config::DeliveryMode::Stream)
        );
        assert_eq!(config.stream.chunk_interval, Duration::from_millis(50));
        assert_eq!(config.stream.client_unsent_bytes, 8 * 1024);
        let plain = load_str("", &[]).unwrap();
        assert_eq!(
            plain.bots[0].delivery_mode,
            crate::config::DeliveryMode::Unset
        );
        assert_eq!(plain.stream.chunk_interval, Duration::ZERO);
        for (text, key) in [
            ("delivery_mode = \"normal\"", "delivery_mode"),
            (
                "[[bots]]\nname = \"a\"\nupstream = \"embedded\"\ndelivery_mode = \"Stream\"",
                "bots.delivery_mode",
            ),
            (
                "[stream]\nchunk_interval = \"soon\"",
                "stream.chunk_interval",
            ),
        ] {
            match load_str(text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}

/// `[policy]` is every bot's default; `[bots.policy]` replaces it whole for its bot.
#[cfg(test)]
mod policy_sections {
    use super::*;

    #[test]
    fn top_level_policy_is_the_default_a_bot_may_replace() {
        let text = r#"
[policy]
webhook = "http://127.0.0.1:9/verdict"
redact = ["email"]

[[bots]]
name = "a"
upstream = "embedded"

[[bots]]
name = "b"
path_prefix = "/bots/b"
upstream = "embedded"
[bots.policy]
on_error = "allow"
"#;
        let file: FileConfig = toml::from_str(text).unwrap();
        let config = Config::from_parts(file, &Overrides::default(), &NoEnv).unwrap();
        let a = config.bots[0].policy.as_deref().unwrap();
        assert!(a.webhook.is_some() && a.redact.email);
        let b = config.bots[1].policy.as_deref().unwrap();
        assert!(b.webhook.is_none() && !b.redact.email);
        assert_eq!(b.on_error, crate::config::OnError::Allow);
    }

    #[test]
    fn an_unknown_policy_key_is_refused() {
        assert!(toml::from_str::<FileConfig>("[policy]\nwebhok = \"x\"\n").is_err());
    }

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
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
