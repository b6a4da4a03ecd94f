//! Configuration: the TOML file, environment and flags, parsed once into typed values.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use crate::identity::settings::Table;
use crate::secret::Secret;

pub const ENV_SECRET: &str = "DIRECTLINE_SECRET";
pub const ENV_TOKEN_KEY: &str = "DIRECTLINE_GATEWAY_TOKEN_KEY";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file is not TOML, or has a key the gateway does not know. `key` is the dotted
    /// path (`stream.liveness_timeout`) when the location names one.
    #[error("{}: {message}", at(path, *line, *column, key))]
    Parse {
        path: PathBuf,
        line: usize,
        column: usize,
        key: String,
        message: String,
    },
    #[error("invalid value for {key}: {message}")]
    Invalid { key: &'static str, message: String },
    /// An [`ConfigError::Invalid`] value that came from the file, with where it stands there.
    #[error("{}: invalid value: {message}", at(path, *line, *column, key))]
    InvalidAt {
        path: PathBuf,
        line: usize,
        column: usize,
        key: &'static str,
        message: String,
    },
    #[error("no Direct Line secret: set {ENV_SECRET} or secret_file (or use --upstream embedded)")]
    MissingSecret,
}

/// `file:line:column: key` (the form editors and compilers use, so a click opens the spot).
fn at(path: &Path, line: usize, column: usize, key: &str) -> String {
    if key.is_empty() {
        format!("{}:{line}:{column}", path.display())
    } else {
        format!("{}:{line}:{column}: {key}", path.display())
    }
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// The table a line of a TOML file is in (`stream`, `bots`, `bots.rate_limits`; empty at the
/// top), read from the headers above it. Enough for the gateway's own flat files.
fn table_at(text: &str, line: usize) -> String {
    text.lines()
        .take(line.saturating_sub(1))
        .filter_map(|l| {
            let l = l.trim();
            let header = l
                .strip_prefix("[[")
                .and_then(|h| h.split_once("]]"))
                .or_else(|| l.strip_prefix('[').and_then(|h| h.split_once(']')))?;
            Some(header.0.trim().to_owned())
        })
        .last()
        .unwrap_or_default()
}

/// The dotted key path of the `key = value` on `line` (1-based), if that line holds one.
fn key_path_at(text: &str, line: usize) -> String {
    let Some(key) = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(key, _)| key.trim().trim_matches('"'))
        .filter(|key| !key.is_empty() && !key.starts_with('['))
    else {
        return table_at(text, line + 1);
    };
    match table_at(text, line) {
        table if table.is_empty() => key.to_owned(),
        table => format!("{table}.{key}"),
    }
}

/// Where `key` (dotted, as in [`ConfigError::Invalid`]) is set in the file, if it is.
fn locate_key(text: &str, key: &str) -> Option<(usize, usize)> {
    for (index, line) in text.lines().enumerate() {
        let number = index + 1;
        if line.contains('=') && key_path_at(text, number) == key {
            let column = line.len() - line.trim_start().len() + 1;
            return Some((number, column));
        }
    }
    None
}

/// toml's own message, one line, with a hint for the commonest slip: a string (an address,
/// a URL, a size or a duration) written without quotes.
fn parse_message(text: &str, error: &toml::de::Error, line: usize) -> String {
    let mut message = error.message().trim().replace('\n', "; ");
    let value = text
        .lines()
        .nth(line.saturating_sub(1))
        .and_then(|l| l.split_once('='))
        .map(|(_, value)| value.trim());
    if let Some(value) = value {
        let bare = !value.is_empty()
            && !value.starts_with(['"', '\'', '[', '{'])
            && !matches!(value, "true" | "false")
            && value.parse::<f64>().is_err();
        if bare {
            let looks_like_address = value.contains(':') || value.contains('/');
            let what = if looks_like_address {
                "an address or URL"
            } else {
                "a text value"
            };
            message = format!("{message} ({what} needs quotes: \"{value}\")");
        }
    }
    message
}

fn invalid(key: &'static str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key,
        message: message.into(),
    }
}

impl ConfigError {
    /// An invalid value with its place in the file, when the file set it (a flag that
    /// overrides the key has no place there).
    fn located_in(self, path: &Path, text: &str, overrides: &Overrides) -> ConfigError {
        let ConfigError::Invalid { key, message } = self else {
            return self;
        };
        let from_flag = match key {
            "listen" => overrides.listen.is_some(),
            "admin_listen" => overrides.admin_listen.is_some(),
            "upstream" => overrides.upstream.is_some(),
            "public_url" => overrides.public_url.is_some(),
            _ => false,
        };
        match locate_key(text, key).filter(|_| !from_flag) {
            Some((line, column)) => ConfigError::InvalidAt {
                path: path.to_owned(),
                line,
                column,
                key,
                message,
            },
            None => ConfigError::Invalid { key, message },
        }
    }
}

/// Where the gateway sends Direct Line calls.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamTarget {
    /// The built-in emulator with an echo bot, started in-process on a loopback port.
    Embedded,
    /// A Direct Line base URL without `/v3/directline`.
    Url(Url),
}

/// Values a command line may override; `None` means "not given".
#[derive(Debug, Default, Clone)]
pub struct Overrides {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub public_url: Option<String>,
}

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub upstream: UpstreamTarget,
    /// How clients reach the gateway (`https://chat.contoso.com`); rewritten stream URLs start here.
    pub public_url: Option<Url>,
    /// A path the gateway serves Direct Line under, e.g. `/bots/support` (empty: none).
    pub path_prefix: String,
    /// `None` only with the embedded emulator, which then gets a random secret.
    pub secret: Option<Secret>,
    /// `None`: a random per-process key (tokens then do not survive restarts or cross replicas).
    pub token_key: Option<Secret>,
    pub previous_token_keys: Vec<Secret>,
    /// After a reload replaces the token key, the replaced key still opens tokens this long.
    pub token_key_overlap: Duration,
    /// PEM CA certificates trusted for the upstream besides the webpki roots (private
    /// upstreams: the App Service extension, private link).
    pub upstream_ca_file: Option<PathBuf>,
    /// TLS on the client listener; `None` serves plain HTTP (TLS ends at a proxy).
    pub tls: Option<TlsFiles>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Browser origins allowed by CORS; empty allows any.
    pub allowed_origins: Vec<String>,
    /// Sent upstream as `trustedOrigins` on tokens/generate.
    pub trusted_origins: Vec<String>,
    pub limits: Limits,
    pub rate_limits: RateLimits,
    pub timeouts: Timeouts,
    pub stream: StreamConfig,
    /// Refresh the upstream token on `tokens/refresh` when it has less than this left.
    pub upstream_refresh_before: Duration,
    /// Drain grace period on SIGTERM.
    pub shutdown_grace: Duration,
    /// The configuration file and the files it names (secrets, token keys) are checked this
    /// often, and a change reloads them as SIGHUP does: a Kubernetes Secret or ConfigMap
    /// update reaches its mounted files by itself, and the scratch image has no shell to
    /// send a signal from. Zero: only SIGHUP reloads.
    pub file_watch_interval: Duration,
    /// The secret and key files this configuration was read from (what the watch checks
    /// besides the configuration file itself).
    pub watched_files: Vec<PathBuf>,
    /// How the conversation's user id is chosen (single-bot configuration).
    pub user_ids: UserIdPolicy,
    /// How long after its expiry a gateway token can still be refreshed (and nothing else);
    /// zero turns durable resume off (single-bot configuration, default for `[[bots]]`).
    pub resume_window: Duration,
    /// Signed-in mode (`[auth]`, DESIGN §11), single-bot configuration.
    pub auth: Option<std::sync::Arc<crate::identity::settings::AuthSettings>>,
    /// Several bots behind this gateway (`[[bots]]`). Empty: one bot, named `default`, from
    /// the top-level `upstream`, secret, `path_prefix`, origins, rate limits and user ids.
    pub bots: Vec<BotConfig>,
}

/// The bot a token was sealed for when the token predates multi-bot support, and the name
/// of the bot a single-bot configuration describes.
pub const DEFAULT_BOT: &str = "default";

/// Direct Line keeps a conversation's activities for 24 h: a resume later than that could
/// bring back a conversation but not its history, so the window stops there. See
/// docs/SECURITY.md for what a stolen expired token can do inside it.
pub const DEFAULT_RESUME_WINDOW: Duration = Duration::from_secs(24 * 3600);

/// Label value for requests no bot's route matched; never a bot name.
pub const NO_BOT: &str = "none";

/// One bot behind the gateway: how requests reach it and where they go.
#[derive(Debug, Clone)]
pub struct BotConfig {
    /// Bounded, operator-chosen: it is a metric label and a log field, and bound into tokens.
    pub name: String,
    /// Requests whose `Host` (or HTTP/2 `:authority`) is this name, without the port.
    /// `None`: any host.
    pub host: Option<String>,
    /// Requests under this path, e.g. `/bots/support` (empty: the root).
    pub path_prefix: String,
    pub upstream: UpstreamTarget,
    /// `None` only for an embedded upstream, which then gets a random secret.
    pub secret: Option<Secret>,
    pub public_url: Option<Url>,
    pub allowed_origins: Vec<String>,
    pub trusted_origins: Vec<String>,
    pub rate_limits: RateLimits,
    pub user_ids: UserIdPolicy,
    pub upstream_ca_file: Option<PathBuf>,
    /// See [`Config::resume_window`].
    pub resume_window: Duration,
    /// Signed-in mode (`[bots.auth]`); see [`Config::auth`].
    pub auth: Option<std::sync::Arc<crate::identity::settings::AuthSettings>>,
}

/// Who chooses the user id bound into a conversation's token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum UserIdPolicy {
    /// The gateway mints `dl_` + 128 random bits per token; whatever the caller says is ignored.
    #[default]
    Minted,
    /// `user.id` from the tokens/generate body when it is a well-formed `dl_` id (spec §1.1),
    /// else minted. Only for deployments where tokens/generate is called by the site's own
    /// backend, which has authenticated the user: any caller can claim any id otherwise.
    Caller,
}

/// PEM certificate chain and private key for the client listener, re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files are checked for a change (renewals by cert-manager and the like).
    pub watch_interval: Duration,
}

/// A token bucket: `per_minute` tokens a minute, up to `burst` at once; 0 a minute is off.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    pub per_minute: u32,
    pub burst: u32,
}

impl Rate {
    pub fn is_unlimited(self) -> bool {
        self.per_minute == 0
    }

    pub fn per_second(self) -> f64 {
        f64::from(self.per_minute) / 60.0
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// tokens/generate and conversation starts, per client IP.
    pub sessions: Rate,
    /// POST activities and uploads, per conversation.
    pub activities: Rate,
}

impl Default for RateLimits {
    fn default() -> Self {
        Self {
            sessions: Rate {
                per_minute: 10,
                burst: 20,
            },
            // Far above a person typing; a runaway client or script is cut off.
            activities: Rate {
                per_minute: 600,
                burst: 100,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub activity_body_bytes: u64,
    pub upload_body_bytes: u64,
    pub token_body_bytes: u64,
    /// Upstream error bodies read to check them (DESIGN §13); a larger one is replaced by
    /// the gateway's own error body.
    pub upstream_error_body_bytes: usize,
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// Open client connections (HTTP and WebSocket) on this replica; more are closed at accept.
    pub max_connections: usize,
    /// Request header fields per request (431 beyond: by the HTTP/1.1 parser, and for
    /// HTTP/2 by the gateway).
    pub max_header_count: usize,
    /// Open client connections from one IP (0: no cap). Peers in `trusted_proxies` are not
    /// capped: behind an ingress every client arrives from it.
    pub max_connections_per_ip: usize,
    /// Time to receive a whole request body on tokens/generate, start and POST activities.
    pub body_read_timeout: Duration,
    /// Time to receive a whole upload body.
    pub upload_read_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct Timeouts {
    pub connect: Duration,
    pub default: Duration,
    pub activities: Duration,
    pub upload: Duration,
}

#[derive(Debug, Clone)]
pub struct StreamConfig {
    /// Lifetime of a gateway stream ticket (Direct Line's stream URLs live 60 s).
    pub ticket_ttl: Duration,
    /// Empty text frame sent upstream this often (DLJS does the same every 20 s).
    pub keepalive_interval: Duration,
    /// No frame at all from upstream for this long → the socket is dead, resume.
    pub liveness_timeout: Duration,
    /// An upstream that has answered pings before and leaves one unanswered this long is
    /// dead: noticed within `keepalive_interval + pong_timeout`, not `liveness_timeout`.
    pub pong_timeout: Duration,
    /// Total time the hub keeps trying to resume before closing clients with 1011.
    pub resume_budget: Duration,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Upstream socket kept open this long after the last client leaves.
    pub linger: Duration,
    /// ActivitySets kept per conversation for client resume.
    pub buffer_frames: usize,
    /// Bytes of frames kept per conversation for client resume; the newest frame stays
    /// even when it alone is larger (it is at most `max_frame_bytes`).
    pub buffer_bytes: usize,
    /// Bytes of frames kept by all conversations' rings together on this replica.
    pub buffer_total_bytes: usize,
    /// Activity ids remembered per conversation to drop replays.
    pub delivered_ids: usize,
    /// Frames a client may fall behind before it is closed with 1013.
    pub client_lag_frames: usize,
    pub max_sockets_per_conversation: usize,
    pub max_frame_bytes: usize,
    pub ws_read_buffer_bytes: usize,
    /// A hub created for a resuming client first learns by REST which activities the client
    /// already has, so a whole-history replay from upstream cannot reach it twice.
    pub guard_against_replays: bool,
    /// On SIGTERM, open client sockets (with their hubs' upstream sockets and resumes) keep
    /// being served this long: DLJS waits 3–15 s before it reconnects after any close, so
    /// closing every socket at once stalls every user of the replica (DESIGN §5).
    pub drain_period: Duration,
    /// After `drain_period`, the sockets still open are closed with 1001 spread evenly over
    /// this long, so the other replicas are not hit by every reconnect at once.
    pub drain_spread: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            upstream: UpstreamTarget::Embedded,
            public_url: None,
            path_prefix: String::new(),
            secret: None,
            token_key: None,
            previous_token_keys: Vec::new(),
            token_key_overlap: Duration::from_secs(3600),
            upstream_ca_file: None,
            tls: None,
            trusted_proxies: Vec::new(),
            allowed_origins: Vec::new(),
            trusted_origins: Vec::new(),
            limits: Limits::default(),
            rate_limits: RateLimits::default(),
            timeouts: Timeouts::default(),
            stream: StreamConfig::default(),
            upstream_refresh_before: Duration::from_secs(1800),
            shutdown_grace: Duration::from_secs(20),
            file_watch_interval: Duration::from_secs(10),
            watched_files: Vec::new(),
            user_ids: UserIdPolicy::Minted,
            resume_window: DEFAULT_RESUME_WINDOW,
            auth: None,
            bots: Vec::new(),
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Direct Line's documented activity limit is 256K characters (spec §4.2).
            activity_body_bytes: 256 * 1024,
            upload_body_bytes: 16 * 1024 * 1024,
            token_body_bytes: 16 * 1024,
            upstream_error_body_bytes: 64 * 1024,
            max_url_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(10),
            max_connections: 20_000,
            max_header_count: 100,
            // A tenth of the replica: one host (a NATed office may be hundreds of users with
            // a few sockets each) cannot shut everyone else out.
            max_connections_per_ip: 2_000,
            // Activities are at most 256 KiB: seconds even on a poor mobile link.
            body_read_timeout: Duration::from_secs(15),
            // 16 MiB at about 1 Mbit/s.
            upload_read_timeout: Duration::from_secs(130),
        }
    }
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: Duration::from_secs(5),
            default: Duration::from_secs(15),
            // Bots get ~15 s and Direct Line adds its own time (spec §1.5, §10.9).
            activities: Duration::from_secs(35),
            upload: Duration::from_secs(140),
        }
    }
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            ticket_ttl: Duration::from_secs(60),
            keepalive_interval: Duration::from_secs(20),
            liveness_timeout: Duration::from_secs(75),
            pong_timeout: Duration::from_secs(10),
            resume_budget: Duration::from_secs(300),
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(10),
            linger: Duration::from_secs(20),
            buffer_frames: 256,
            buffer_bytes: 1024 * 1024,
            buffer_total_bytes: 256 * 1024 * 1024,
            delivered_ids: 4096,
            client_lag_frames: 128,
            max_sockets_per_conversation: 8,
            max_frame_bytes: 1024 * 1024,
            ws_read_buffer_bytes: 2048,
            guard_against_replays: true,
            drain_period: Duration::from_secs(20),
            drain_spread: Duration::from_secs(5),
        }
    }
}

/// An address or CIDR block (`10.0.0.0/8`, `::1`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpNet {
    addr: IpAddr,
    prefix: u8,
}

impl IpNet {
    pub fn parse(text: &str) -> Option<Self> {
        let (addr, prefix) = match text.split_once('/') {
            Some((a, p)) => (a.parse::<IpAddr>().ok()?, Some(p.parse::<u8>().ok()?)),
            None => (text.parse::<IpAddr>().ok()?, None),
        };
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(max);
        (prefix <= max).then_some(Self { addr, prefix })
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        let ip = match ip {
            IpAddr::V6(v6) => v6.to_ipv4_mapped().map(IpAddr::V4).unwrap_or(ip),
            v4 => v4,
        };
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    listen: Option<String>,
    admin_listen: Option<String>,
    upstream: Option<String>,
    public_url: Option<String>,
    path_prefix: Option<String>,
    secret_file: Option<PathBuf>,
    token_key_file: Option<PathBuf>,
    #[serde(default)]
    previous_token_key_files: Vec<PathBuf>,
    token_key_overlap: Option<String>,
    upstream_ca_file: Option<PathBuf>,
    tls: Option<FileTls>,
    #[serde(default)]
    trusted_proxies: Vec<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    trusted_origins: Vec<String>,
    upstream_refresh_before: Option<String>,
    resume_window: Option<String>,
    shutdown_grace: Option<String>,
    file_watch_interval: Option<String>,
    #[serde(default)]
    limits: FileLimits,
    #[serde(default)]
    rate_limits: FileRateLimits,
    #[serde(default)]
    timeouts: FileTimeouts,
    #[serde(default)]
    stream: FileStream,
    user_ids: Option<String>,
    auth: Option<crate::identity::settings::FileAuth>,
    #[serde(default)]
    bots: Vec<FileBot>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileBot {
    name: String,
    host: Option<String>,
    path_prefix: Option<String>,
    upstream: String,
    secret_file: Option<PathBuf>,
    /// The name of the environment variable holding this bot's secret.
    secret_env: Option<String>,
    public_url: Option<String>,
    #[serde(default)]
    allowed_origins: Vec<String>,
    #[serde(default)]
    trusted_origins: Vec<String>,
    rate_limits: Option<FileRateLimits>,
    user_ids: Option<String>,
    upstream_ca_file: Option<PathBuf>,
    resume_window: Option<String>,
    auth: Option<crate::identity::settings::FileAuth>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTls {
    cert_file: PathBuf,
    key_file: PathBuf,
    watch_interval: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileRateLimits {
    sessions_per_minute: Option<u32>,
    sessions_burst: Option<u32>,
    activities_per_minute: Option<u32>,
    activities_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileLimits {
    activity_body: Option<String>,
    upload_body: Option<String>,
    token_body: Option<String>,
    upstream_error_body: Option<String>,
    max_url: Option<String>,
    max_headers: Option<String>,
    header_read_timeout: Option<String>,
    max_connections: Option<usize>,
    max_header_count: Option<usize>,
    max_connections_per_ip: Option<usize>,
    body_read_timeout: Option<String>,
    upload_read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileTimeouts {
    connect: Option<String>,
    default: Option<String>,
    activities: Option<String>,
    upload: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileStream {
    keepalive_interval: Option<String>,
    liveness_timeout: Option<String>,
    pong_timeout: Option<String>,
    resume_budget: Option<String>,
    backoff_base: Option<String>,
    backoff_max: Option<String>,
    linger: Option<String>,
    buffer_frames: Option<usize>,
    buffer_bytes: Option<String>,
    buffer_total_bytes: Option<String>,
    delivered_ids: Option<usize>,
    client_lag_frames: Option<usize>,
    max_sockets_per_conversation: Option<usize>,
    max_frame: Option<String>,
    ws_read_buffer: Option<String>,
    guard_against_replays: Option<bool>,
    drain_period: Option<String>,
    drain_spread: Option<String>,
}

/// Where environment variables come from; tests pass a map instead of the process env.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok().filter(|v| !v.is_empty())
    }
}

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

    fn from_parts(
        file: FileConfig,
        overrides: &Overrides,
        env: &dyn Env,
    ) -> Result<Self, ConfigError> {
        let mut config = Config {
            watched_files: file
                .secret_file
                .iter()
                .chain(&file.token_key_file)
                .chain(&file.previous_token_key_files)
                .chain(file.bots.iter().filter_map(|bot| bot.secret_file.as_ref()))
                .cloned()
                .collect(),
            ..Config::default()
        };
        let several_bots = !file.bots.is_empty();
        if several_bots {
            // One place per fact: with [[bots]], these belong to each bot.
            let stray = [
                (
                    "upstream",
                    file.upstream.is_some() || overrides.upstream.is_some(),
                ),
                ("secret_file", file.secret_file.is_some()),
                (ENV_SECRET, env.var(ENV_SECRET).is_some()),
                ("path_prefix", file.path_prefix.is_some()),
                (
                    "public_url",
                    file.public_url.is_some() || overrides.public_url.is_some(),
                ),
                ("allowed_origins", !file.allowed_origins.is_empty()),
                ("trusted_origins", !file.trusted_origins.is_empty()),
                ("[auth]", file.auth.is_some()),
            ];
            if let Some((key, _)) = stray.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    "bots",
                    format!("{key} is set at the top level; with [[bots]] give it to each bot"),
                ));
            }
        }
        if let Some(listen) = overrides.listen.as_ref().or(file.listen.as_ref()) {
            config.listen = parse_addr("listen", listen)?;
        }
        if let Some(admin) = overrides
            .admin_listen
            .as_ref()
            .or(file.admin_listen.as_ref())
        {
            config.admin_listen = parse_addr("admin_listen", admin)?;
        }
        if config.listen == config.admin_listen && config.listen.port() != 0 {
            return Err(invalid(
                "admin_listen",
                format!(
                    "{} is also the client listener's address (listen); give each its own port",
                    config.admin_listen
                ),
            ));
        }
        if let Some(upstream) = overrides.upstream.as_ref().or(file.upstream.as_ref()) {
            config.upstream = parse_upstream(upstream)?;
        }
        if let Some(public) = overrides.public_url.as_ref().or(file.public_url.as_ref()) {
            config.public_url = Some(parse_public_url(public)?);
        }
        if let Some(prefix) = file.path_prefix {
            config.path_prefix = parse_prefix(&prefix)?;
        }
        config.secret = match env.var(ENV_SECRET) {
            Some(secret) => Some(Secret::new(secret)),
            None => match &file.secret_file {
                Some(path) => Some(Secret::new(read_trimmed(path)?)),
                None => None,
            },
        };
        if !several_bots && config.secret.is_none() && config.upstream != UpstreamTarget::Embedded {
            return Err(ConfigError::MissingSecret);
        }
        config.token_key = match env.var(ENV_TOKEN_KEY) {
            Some(key) => Some(Secret::new(key)),
            None => file
                .token_key_file
                .as_deref()
                .map(read_trimmed)
                .transpose()?
                .map(Secret::new),
        };
        if let Some(key) = &config.token_key
            && key.expose().chars().count() < crate::seal::MIN_KEY_LEN
        {
            return Err(invalid(
                "token key",
                format!("must be at least {} characters", crate::seal::MIN_KEY_LEN),
            ));
        }
        config.previous_token_keys = file
            .previous_token_key_files
            .iter()
            .map(|p| read_trimmed(p).map(Secret::new))
            .collect::<Result<_, _>>()?;
        if config
            .previous_token_keys
            .iter()
            .any(|k| k.expose().chars().count() < crate::seal::MIN_KEY_LEN)
        {
            return Err(invalid("previous_token_key_files", "a key is too short"));
        }
        set_duration(
            &mut config.token_key_overlap,
            "token_key_overlap",
            file.token_key_overlap,
        )?;
        config.upstream_ca_file = file.upstream_ca_file;
        if let Some(tls) = file.tls {
            let mut watch_interval = Duration::from_secs(10);
            set_duration(
                &mut watch_interval,
                "tls.watch_interval",
                tls.watch_interval,
            )?;
            config.tls = Some(TlsFiles {
                cert_file: tls.cert_file,
                key_file: tls.key_file,
                watch_interval,
            });
        }
        config.trusted_proxies = file
            .trusted_proxies
            .iter()
            .map(|t| IpNet::parse(t).ok_or_else(|| invalid("trusted_proxies", t.clone())))
            .collect::<Result<_, _>>()?;
        (config.allowed_origins, config.trusted_origins) =
            parse_origins(file.allowed_origins, file.trusted_origins)?;
        set_duration(
            &mut config.resume_window,
            "resume_window",
            file.resume_window,
        )?;
        set_duration(
            &mut config.upstream_refresh_before,
            "upstream_refresh_before",
            file.upstream_refresh_before,
        )?;
        set_duration(
            &mut config.shutdown_grace,
            "shutdown_grace",
            file.shutdown_grace,
        )?;
        set_duration(
            &mut config.file_watch_interval,
            "file_watch_interval",
            file.file_watch_interval,
        )?;

        let l = file.limits;
        let limits = &mut config.limits;
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
        if !(1024..=crate::upstream::MAX_UPSTREAM_JSON).contains(&limits.upstream_error_body_bytes)
        {
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
        config.rate_limits = parse_rates(config.rate_limits, &file.rate_limits)?;
        if let Some(policy) = &file.user_ids {
            config.user_ids = parse_user_ids(policy)?;
        }
        config.auth = parse_auth(file.auth, Table::Top, env)?;
        if config.auth.is_some() && config.user_ids == UserIdPolicy::Caller {
            return Err(invalid(
                "user_ids",
                "\"caller\" and [auth] exclude each other: signed-in users get the pseudonym",
            ));
        }

        let t = file.timeouts;
        let timeouts = &mut config.timeouts;
        set_duration(&mut timeouts.connect, "timeouts.connect", t.connect)?;
        set_duration(&mut timeouts.default, "timeouts.default", t.default)?;
        set_duration(
            &mut timeouts.activities,
            "timeouts.activities",
            t.activities,
        )?;
        set_duration(&mut timeouts.upload, "timeouts.upload", t.upload)?;

        let s = file.stream;
        let stream = &mut config.stream;
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
        config.bots = file
            .bots
            .into_iter()
            .map(|bot| parse_bot(bot, &config, env))
            .collect::<Result<_, _>>()?;
        config.validate()?;
        Ok(config)
    }

    /// The no-argument run: the default echo bot at the root and a second one under
    /// `/bots/second`, each behind its own embedded emulator with its own secret, so routing
    /// between bots can be tried with nothing configured.
    pub fn with_demo_bots(mut self) -> Self {
        let mut default = self.bot_configs().remove(0);
        default.upstream = UpstreamTarget::Embedded;
        let second = BotConfig {
            name: "second".to_owned(),
            path_prefix: format!("{}/bots/second", default.path_prefix),
            ..default.clone()
        };
        self.bots = vec![default, second];
        self
    }

    /// The bots this configuration describes: `[[bots]]`, or the one top-level bot.
    pub fn bot_configs(&self) -> Vec<BotConfig> {
        if !self.bots.is_empty() {
            return self.bots.clone();
        }
        vec![BotConfig {
            name: DEFAULT_BOT.to_owned(),
            host: None,
            path_prefix: self.path_prefix.clone(),
            upstream: self.upstream.clone(),
            secret: self.secret.clone(),
            public_url: self.public_url.clone(),
            allowed_origins: self.allowed_origins.clone(),
            trusted_origins: self.trusted_origins.clone(),
            rate_limits: self.rate_limits.clone(),
            user_ids: self.user_ids,
            upstream_ca_file: self.upstream_ca_file.clone(),
            resume_window: self.resume_window,
            auth: self.auth.clone(),
        }]
    }

    fn validate(&self) -> Result<(), ConfigError> {
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

fn parse_origins(
    allowed: Vec<String>,
    trusted: Vec<String>,
) -> Result<(Vec<String>, Vec<String>), ConfigError> {
    for origin in allowed.iter().chain(&trusted) {
        if origin != "*" && Url::parse(origin).is_err() {
            return Err(invalid("allowed_origins/trusted_origins", origin.clone()));
        }
    }
    let allowed = allowed
        .into_iter()
        .filter(|o| o != "*")
        .map(|o| o.trim_end_matches('/').to_owned())
        .collect();
    Ok((allowed, trusted))
}

/// `base` with what `file` sets; a bot's limits start from the top-level ones.
fn parse_rates(base: RateLimits, file: &FileRateLimits) -> Result<RateLimits, ConfigError> {
    let mut rates = base;
    for (slot, key, per_minute, burst) in [
        (
            &mut rates.sessions,
            "rate_limits.sessions_burst",
            file.sessions_per_minute,
            file.sessions_burst,
        ),
        (
            &mut rates.activities,
            "rate_limits.activities_burst",
            file.activities_per_minute,
            file.activities_burst,
        ),
    ] {
        if let Some(per_minute) = per_minute {
            slot.per_minute = per_minute;
        }
        if let Some(burst) = burst {
            slot.burst = burst;
        }
        if !slot.is_unlimited() && slot.burst == 0 {
            return Err(invalid(key, "must be at least 1 when the rate is on"));
        }
    }
    Ok(rates)
}

fn parse_user_ids(text: &str) -> Result<UserIdPolicy, ConfigError> {
    match text {
        "minted" => Ok(UserIdPolicy::Minted),
        "caller" => Ok(UserIdPolicy::Caller),
        other => Err(invalid(
            "user_ids",
            format!("{other:?}: must be \"minted\" or \"caller\""),
        )),
    }
}

/// A bot name: short, lower case, safe as a metric label and a log field.
fn valid_bot_name(name: &str) -> bool {
    (1..=32).contains(&name.len())
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name != NO_BOT
}

/// A host name as it appears in `Host` without the port, lower-cased.
fn parse_host(text: &str) -> Result<String, ConfigError> {
    let host = text.trim().to_ascii_lowercase();
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.');
    if valid {
        Ok(host)
    } else {
        Err(invalid(
            "bots.host",
            format!("{text:?}: a host name without scheme or port"),
        ))
    }
}

fn parse_bot(file: FileBot, top: &Config, env: &dyn Env) -> Result<BotConfig, ConfigError> {
    if !valid_bot_name(&file.name) {
        return Err(invalid(
            "bots.name",
            format!(
                "{:?}: 1 to 32 of a-z, 0-9, - and _, starting with a letter or digit, not {NO_BOT:?}",
                file.name
            ),
        ));
    }
    let name = file.name;
    let within = |error: ConfigError| match error {
        ConfigError::Invalid { key, message } => ConfigError::Invalid {
            key,
            message: format!("bot {name:?}: {message}"),
        },
        other => other,
    };
    let upstream = parse_upstream(&file.upstream).map_err(within)?;
    let secret = match (&file.secret_env, &file.secret_file) {
        (Some(_), Some(_)) => {
            return Err(within(invalid(
                "bots.secret_env",
                "give secret_env or secret_file, not both",
            )));
        }
        (Some(variable), None) => Some(Secret::new(env.var(variable).ok_or_else(|| {
            within(invalid(
                "bots.secret_env",
                format!("environment variable {variable} is not set"),
            ))
        })?)),
        (None, Some(path)) => Some(Secret::new(read_trimmed(path)?)),
        (None, None) => None,
    };
    if secret.is_none() && upstream != UpstreamTarget::Embedded {
        return Err(within(invalid(
            "bots.secret_file",
            "a bot with a real upstream needs secret_env or secret_file",
        )));
    }
    let host = file
        .host
        .as_deref()
        .map(parse_host)
        .transpose()
        .map_err(within)?;
    let path_prefix = match &file.path_prefix {
        Some(prefix) => parse_prefix(prefix).map_err(within)?,
        None => String::new(),
    };
    let public_url = file
        .public_url
        .as_deref()
        .map(parse_public_url)
        .transpose()
        .map_err(within)?;
    let (allowed_origins, trusted_origins) =
        parse_origins(file.allowed_origins, file.trusted_origins).map_err(within)?;
    let rate_limits = match &file.rate_limits {
        Some(rates) => parse_rates(top.rate_limits.clone(), rates).map_err(within)?,
        None => top.rate_limits.clone(),
    };
    let user_ids = match &file.user_ids {
        Some(policy) => parse_user_ids(policy).map_err(within)?,
        None => top.user_ids,
    };
    let mut resume_window = top.resume_window;
    set_duration(&mut resume_window, "bots.resume_window", file.resume_window).map_err(within)?;
    let auth = parse_auth(file.auth, Table::Bot, env).map_err(within)?;
    if auth.is_some() && user_ids == UserIdPolicy::Caller {
        return Err(within(invalid(
            "bots.user_ids",
            "\"caller\" and [bots.auth] exclude each other: signed-in users get the pseudonym",
        )));
    }
    Ok(BotConfig {
        auth,
        resume_window,
        host,
        path_prefix,
        upstream,
        secret,
        public_url,
        allowed_origins,
        trusted_origins,
        rate_limits,
        user_ids,
        upstream_ca_file: file
            .upstream_ca_file
            .or_else(|| top.upstream_ca_file.clone()),
        name,
    })
}

/// `[auth]` through [`crate::identity::settings::parse`], with this file's duration syntax.
fn parse_auth(
    file: Option<crate::identity::settings::FileAuth>,
    table: Table,
    env: &dyn Env,
) -> Result<Option<std::sync::Arc<crate::identity::settings::AuthSettings>>, ConfigError> {
    use crate::identity::settings::{self, AuthConfigError};
    let Some(file) = file else {
        return Ok(None);
    };
    let key = env.var(settings::ENV_PSEUDONYM_KEY);
    match settings::parse(file, table, key, parse_duration) {
        Ok(auth) => Ok(Some(std::sync::Arc::new(auth))),
        Err(AuthConfigError::Invalid { key, message }) => {
            Err(ConfigError::Invalid { key, message })
        }
        Err(AuthConfigError::Read { path, source }) => Err(ConfigError::Read { path, source }),
    }
}

fn read_trimmed(path: &Path) -> Result<String, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(text.trim().to_owned())
}

fn parse_addr(key: &'static str, text: &str) -> Result<SocketAddr, ConfigError> {
    text.parse()
        .map_err(|_| invalid(key, format!("{text:?} is not an IP:port address")))
}

fn parse_upstream(text: &str) -> Result<UpstreamTarget, ConfigError> {
    if text == "embedded" {
        return Ok(UpstreamTarget::Embedded);
    }
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => invalid(
            "upstream",
            format!("{text:?} must start with https:// (e.g. https://{text}), or be \"embedded\""),
        ),
        e => invalid("upstream", format!("{text:?}: {e}")),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
        return Err(invalid(
            "upstream",
            "must be an http(s) URL or \"embedded\"",
        ));
    }
    if url.query().is_some() || url.path().contains("/v3/directline") {
        return Err(invalid(
            "upstream",
            "give the base URL without /v3/directline and without a query",
        ));
    }
    Ok(UpstreamTarget::Url(url))
}

fn parse_public_url(text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text).map_err(|e| match e {
        url::ParseError::RelativeUrlWithoutBase => invalid(
            "public_url",
            format!("{text:?} must start with https:// or http://"),
        ),
        e => invalid("public_url", format!("{text:?}: {e}")),
    })?;
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || url.query().is_some() {
        return Err(invalid(
            "public_url",
            "must be an http(s) URL without a query",
        ));
    }
    Ok(url)
}

fn parse_prefix(text: &str) -> Result<String, ConfigError> {
    let trimmed = text.trim_end_matches('/');
    if trimmed.is_empty() {
        return Ok(String::new());
    }
    // Every segment non-empty and not `.` or `..`: URL parsers (browsers included) normalise
    // those away, so stream URLs under such a prefix would come back on a path the router
    // refuses (found by fuzzing).
    let valid = trimmed.starts_with('/')
        && trimmed[1..]
            .split('/')
            .all(|segment| !segment.is_empty() && segment != "." && segment != "..")
        && trimmed
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'-' | b'_' | b'.'));
    if valid {
        Ok(trimmed.to_owned())
    } else {
        Err(invalid("path_prefix", "must look like /bots/support"))
    }
}

fn set_duration(
    slot: &mut Duration,
    key: &'static str,
    value: Option<String>,
) -> Result<(), ConfigError> {
    if let Some(text) = value {
        *slot = parse_duration(&text)
            .ok_or_else(|| invalid(key, format!("{text:?} is not a duration like 15s or 250ms")))?;
    }
    Ok(())
}

fn set_size(slot: &mut u64, key: &'static str, value: Option<String>) -> Result<(), ConfigError> {
    if let Some(text) = value {
        *slot = parse_size(&text)
            .ok_or_else(|| invalid(key, format!("{text:?} is not a size like 256KiB")))?;
    }
    Ok(())
}

fn set_usize(
    slot: &mut usize,
    key: &'static str,
    value: Option<String>,
) -> Result<(), ConfigError> {
    let mut wide = *slot as u64;
    set_size(&mut wide, key, value)?;
    *slot = usize::try_from(wide).map_err(|_| invalid(key, "too large"))?;
    Ok(())
}

/// `250ms`, `15s`, `2m`, `1h`; a bare number is seconds.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    match unit.trim() {
        "ms" => Some(Duration::from_millis(n)),
        "" | "s" => Some(Duration::from_secs(n)),
        "m" => n.checked_mul(60).map(Duration::from_secs),
        "h" => n.checked_mul(3600).map(Duration::from_secs),
        _ => None,
    }
}

/// `512`, `512B`, `64KiB`, `16MiB`, `1GiB` (binary units; `KB`/`MB` are read as the same).
pub fn parse_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let factor = match unit.trim() {
        "" | "B" => 1,
        "KiB" | "KB" | "K" => 1024,
        "MiB" | "MB" | "M" => 1024 * 1024,
        "GiB" | "GB" | "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    n.checked_mul(factor)
}

#[cfg(test)]
mod tests {
    use super::*;
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
        let [support, sales] = &config.bot_configs()[..] else {
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
        let [default] = &single.bot_configs()[..] else {
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

    /// Segments a URL parser would normalise away are refused (regression found by fuzzing).
    #[test]
    fn path_prefixes_must_survive_url_normalisation() {
        for bad in ["/a/./b", "/a/../b", "/a//b", "/.", "bots", "/bots/sup port"] {
            assert!(parse_prefix(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_prefix("/bots/support.v2/").unwrap(),
            "/bots/support.v2"
        );
        assert_eq!(parse_prefix("/").unwrap(), "");
    }

    #[test]
    fn defaults_are_the_no_argument_run() {
        let config = load_str("", &[]).unwrap();
        assert_eq!(config.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(config.admin_listen.to_string(), "127.0.0.1:9464");
        assert_eq!(config.upstream, UpstreamTarget::Embedded);
        assert_eq!(config.limits.activity_body_bytes, 262_144);
        assert_eq!(config.limits.upstream_error_body_bytes, 65_536);
    }

    #[test]
    fn upstream_error_body_limit_is_bounded() {
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

    #[test]
    fn real_upstream_needs_a_secret() {
        let err = load_str("upstream = \"https://directline.botframework.com\"", &[]).unwrap_err();
        assert!(matches!(err, ConfigError::MissingSecret));
        let ok = load_str(
            "upstream = \"https://europe.directline.botframework.com\"",
            &[(ENV_SECRET, "s")],
        )
        .unwrap();
        assert!(matches!(ok.upstream, UpstreamTarget::Url(_)));
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

    #[test]
    fn units() {
        assert_eq!(parse_duration("250ms"), Some(Duration::from_millis(250)));
        assert_eq!(parse_duration("15"), Some(Duration::from_secs(15)));
        assert_eq!(parse_duration("2m"), Some(Duration::from_secs(120)));
        assert_eq!(parse_duration("x"), None);
        assert_eq!(parse_size("256KiB"), Some(262_144));
        assert_eq!(parse_size("16MiB"), Some(16 * 1024 * 1024));
        assert_eq!(parse_size("1e3"), None);
    }

    #[test]
    fn cidr() {
        let net = IpNet::parse("10.0.0.0/8").unwrap();
        assert!(net.contains("10.1.2.3".parse().unwrap()));
        assert!(!net.contains("11.0.0.1".parse().unwrap()));
        assert!(net.contains("::ffff:10.0.0.1".parse().unwrap()));
        assert!(
            IpNet::parse("::1")
                .unwrap()
                .contains("::1".parse().unwrap())
        );
        assert!(IpNet::parse("1.2.3.4/33").is_none());
    }
}

#[cfg(test)]
mod file_errors {
    use super::*;

    fn load_file(text: &str) -> (String, ConfigError) {
        let dir = std::env::temp_dir().join(format!("dlgw-config-{}", fastrand::u64(..)));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("gateway.toml");
        std::fs::write(&path, text).unwrap();
        let error = Config::load(Some(&path), &Overrides::default(), &NoEnv).unwrap_err();
        let _ = std::fs::remove_dir_all(&dir);
        (format!("{}", path.display()), error)
    }

    struct NoEnv;
    impl Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }

    #[test]
    fn an_unquoted_address_is_located_and_said_to_need_quotes() {
        let (path, error) = load_file("# gateway\nlisten = 127.0.0.1:18080\n");
        let line = error.to_string();
        // The column is toml's: where its value parser gave up.
        assert!(line.starts_with(&format!("{path}:2:")), "{line}");
        assert!(line.contains(": listen: "), "{line}");
        assert!(line.contains("needs quotes: \"127.0.0.1:18080\""), "{line}");
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn a_typo_in_a_section_names_the_section_line_and_column() {
        let (path, error) =
            load_file("listen = \"127.0.0.1:8080\"\n\n[stream]\n  liveness_timout = \"80s\"\n");
        let line = error.to_string();
        assert!(
            line.starts_with(&format!(
                "{path}:4:3: stream.liveness_timout: unknown field"
            )),
            "{line}"
        );
        assert!(!line.contains('\n'), "{line}");
    }

    #[test]
    fn an_invalid_value_from_the_file_says_where_it_is() {
        let (path, error) =
            load_file("[limits]\nmax_url = \"8KiB\"\n[stream]\nliveness_timeout = \"1s\"\n");
        assert!(
            matches!(
                error,
                ConfigError::InvalidAt {
                    key: "stream.liveness_timeout",
                    line: 4,
                    column: 1,
                    ..
                }
            ),
            "{error:?}"
        );
        assert!(error.to_string().starts_with(&format!(
            "{path}:4:1: stream.liveness_timeout: invalid value: "
        )));
    }

    #[test]
    fn the_same_address_for_both_listeners_is_refused_by_name() {
        let (_, error) =
            load_file("listen = \"127.0.0.1:18080\"\nadmin_listen = \"127.0.0.1:18080\"\n");
        let line = error.to_string();
        assert!(
            line.contains("admin_listen") && line.contains("(listen)"),
            "{line}"
        );
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
