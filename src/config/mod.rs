//! Configuration: the TOML file, environment and flags, parsed once into typed values.
//!
//! Where each concern lives:
//! - this file: the typed configuration the gateway runs with ([`Config`], [`BotConfig`] and
//!   the sections) and its defaults;
//! - `load`: reading the file, the environment and the flags into a [`Config`], and
//!   validating it ([`Config::load`]); the top-level keys (listeners, token keys, TLS,
//!   workers, trusted proxies) and the checks that span sections;
//! - `bots`: the top-level bot and each `[[bots]]` entry; `auth`: `[auth]`;
//! - `limits`: `[limits]` and `[timeouts]`;
//! - `stream`: `[stream]`, the WebSocket bridge's settings;
//! - `file`: the TOML schema, key by key, as serde reads it;
//! - `quantity`: a duration or size written as text or as a bare number;
//! - `values`: value types and their parsers ([`IpNet`], [`Rate`], [`UpstreamTarget`],
//!   durations, sizes, URLs);
//! - `sources`: the environment ([`Env`]) and command-line [`Overrides`];
//! - `errors`: [`ConfigError`] and where in the file a mistake stands (file:line:column);
//! - `copilot`: a Copilot Studio agent's [`TokenEndpoint`] (ARCHITECTURE §10);
//! - `record`: `[record]` ([`RecordConfig`]);
//! - `policy`: `[policy]` and `[bots.policy]` ([`PolicyConfig`]);
//! - `tracing`: `[tracing]` and the OpenTelemetry environment variables ([`TracingConfig`]);
//! - `polling`: `[polling]`, held polls for clients without WebSockets ([`PollingConfig`]);
//! - `streaming`: livestreamed answers' `delivery_mode` ([`DeliveryMode`]).

pub mod auth;
mod bots;
mod copilot;
mod errors;
mod file;
mod limits;
mod load;
mod policy;
mod polling;
pub(crate) mod quantity;
mod record;
mod sources;
mod stream;
mod streaming;
mod tracing;
mod values;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use url::Url;

use crate::secret::Secret;
pub use streaming::DeliveryMode;

pub use crate::seal::DEFAULT_BOT;
pub use copilot::{TokenEndpoint, is_loopback};
pub use errors::ConfigError;
pub use policy::{ContentSafetyConfig, OnError, PolicyConfig, Redactions};
pub use polling::PollingConfig;
pub use record::RecordConfig;
pub use sources::{ENV_SECRET, ENV_TOKEN_KEY, Env, Overrides, ProcessEnv};
pub use tracing::TracingConfig;
pub use values::{IpNet, Rate, UpstreamTarget, UserIdPolicy, parse_duration, parse_size};

#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// `None`: a random per-process key (tokens then do not survive restarts or cross replicas).
    pub token_key: Option<Secret>,
    pub previous_token_keys: Vec<Secret>,
    /// After a reload replaces the token key, the replaced key still opens tokens this long.
    pub token_key_overlap: Duration,
    /// TLS on the client listener; `None` serves plain HTTP (TLS ends at a proxy).
    pub tls: Option<TlsFiles>,
    /// Peers whose `X-Forwarded-*` headers are believed.
    pub trusted_proxies: Vec<IpNet>,
    /// An IPv6 client is counted (rate buckets, the per-IP connection cap) by this many
    /// leading bits of its address: one user holds a whole /64.
    pub client_ipv6_prefix: u8,
    pub limits: Limits,
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
    /// Threads serving client connections, each with its own runtime; 0: one per core.
    pub workers: usize,
    /// The secret and key files this configuration was read from (what the watch checks
    /// besides the configuration file itself).
    pub watched_files: Vec<PathBuf>,
    /// Every bot behind this gateway, at least one: the `[[bots]]` of the file, or the bot
    /// named `default` that the single-bot form's top-level keys describe (loading turns one
    /// form into the other; nothing else needs to know there are two).
    pub bots: Vec<BotConfig>,
    /// Distributed tracing; `None` (the default) is off and costs nothing per request.
    pub tracing: Option<TracingConfig>,
    /// Held polls (`[polling]`); off by default.
    pub polling: PollingConfig,
    /// Ask Direct Line whether each bot's secret is accepted, at start and after each reload
    /// (`upstream::credential`). Always on from the file; fixed at start. Tests that count
    /// every upstream call turn it off; answers to normal traffic are judged either way.
    pub check_credentials: bool,
    /// The conversation record (`[record]`); `None` costs a request or frame one branch.
    pub record: Option<RecordConfig>,
}

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
    /// How clients reach the gateway (`https://chat.contoso.com`); rewritten stream URLs start here.
    pub public_url: Option<Url>,
    /// Browser origins allowed by CORS; empty allows any.
    pub allowed_origins: Vec<String>,
    /// `Access-Control-Allow-Credentials: true` on CORS answers (off: Direct Line clients
    /// send bearer tokens, not cookies); only with `allowed_origins`.
    pub allow_credentials: bool,
    /// Serve the demo chat page at the bot's root for a real upstream too (always for the
    /// embedded emulator).
    pub demo_page: bool,
    /// Sent upstream as `trustedOrigins` on tokens/generate.
    pub trusted_origins: Vec<String>,
    pub rate_limits: RateLimits,
    /// How the conversation's user id is chosen.
    pub user_ids: UserIdPolicy,
    /// PEM CA certificates trusted for the upstream besides the webpki roots (private
    /// upstreams: the App Service extension, private link).
    pub upstream_ca_file: Option<PathBuf>,
    /// How long after its expiry a gateway token can still be refreshed (and nothing else);
    /// zero turns durable resume off.
    pub resume_window: Duration,
    /// Signed-in mode (`[auth]`, `[bots.auth]`, ARCHITECTURE §11): `tokens/generate` needs the
    /// identity provider's JWT.
    pub auth: Option<std::sync::Arc<auth::AuthSettings>>,
    /// A Copilot Studio agent's token endpoint (ARCHITECTURE §10): without a secret, tokens come
    /// from it; with `upstream` = [`UpstreamTarget::Discovered`], the Direct Line host is
    /// discovered from its environment.
    pub token_endpoint: Option<TokenEndpoint>,
    /// Activity policy (`[policy]` or `[bots.policy]`): `None` costs a request one branch.
    pub policy: Option<std::sync::Arc<PolicyConfig>>,
    /// `delivery_mode`: `Stream` asks the bot to livestream on behalf of clients that do
    /// not ask themselves.
    pub delivery_mode: DeliveryMode,
}

/// PEM certificate chain and private key for the client listener, re-read when they change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    /// How often the files are checked for a change (renewals by cert-manager and the like).
    pub watch_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RateLimits {
    /// tokens/generate and conversation starts, per client IP.
    pub sessions: Rate,
    /// POST activities and uploads, per conversation.
    pub activities: Rate,
    /// tokens/refresh, per conversation (each may call Direct Line with the bot's secret).
    pub refresh: Rate,
    /// tokens/refresh, per client IP (so many conversations cannot add up past it).
    pub refresh_per_ip: Rate,
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
            // A page refreshes about once per token life and once per reload; a loop is cut
            // off after a few, and the per-IP bucket leaves room for many users behind one NAT.
            refresh: Rate {
                per_minute: 6,
                burst: 6,
            },
            refresh_per_ip: Rate {
                per_minute: 120,
                burst: 60,
            },
        }
    }
}

#[derive(Debug, Clone)]
pub struct Limits {
    pub activity_body_bytes: u64,
    pub upload_body_bytes: u64,
    pub token_body_bytes: u64,
    /// Upstream error bodies read to check them (ARCHITECTURE §13); a larger one is replaced by
    /// the gateway's own error body.
    pub upstream_error_body_bytes: usize,
    pub max_url_bytes: usize,
    pub max_header_bytes: usize,
    pub header_read_timeout: Duration,
    /// An HTTP/2 connection with no open stream this long is closed (zero: never), as an
    /// idle HTTP/1.1 one is at `header_read_timeout`.
    pub http2_idle_timeout: Duration,
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
    /// closing every socket at once stalls every user of the replica (ARCHITECTURE §5).
    pub drain_period: Duration,
    /// After `drain_period`, the sockets still open are closed with 1001 spread evenly over
    /// this long, so the other replicas are not hit by every reconnect at once.
    pub drain_spread: Duration,
    /// A hub whose upstream socket was taken by another replica's (Direct Line closes the
    /// older socket with `collision`) polls `GET …/activities` this often meanwhile.
    pub collision_poll_interval: Duration,
    /// The first wait before such a hub tries the socket again; each further collision
    /// doubles it, up to `collision_retry_max`, so two replicas cannot fight in a loop.
    pub collision_retry_base: Duration,
    pub collision_retry_max: Duration,
    /// Livestreamed answers: at most one interim per stream per this interval to each
    /// client, the newest winning; zero relays every interim the client can take.
    pub chunk_interval: Duration,
    /// Bytes a client socket's kernel buffer may hold not yet sent (`TCP_NOTSENT_LOWAT`):
    /// beyond it the writer keeps frames itself, where a newer interim can replace an
    /// older one. Zero leaves the kernel's default (up to megabytes).
    pub client_unsent_bytes: usize,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            token_key: None,
            previous_token_keys: Vec::new(),
            token_key_overlap: Duration::from_secs(3600),
            tls: None,
            trusted_proxies: Vec::new(),
            client_ipv6_prefix: 64,
            limits: Limits::default(),
            timeouts: Timeouts::default(),
            stream: StreamConfig::default(),
            upstream_refresh_before: Duration::from_secs(1800),
            shutdown_grace: Duration::from_secs(20),
            file_watch_interval: Duration::from_secs(10),
            workers: 0,
            watched_files: Vec::new(),
            check_credentials: true,
            bots: vec![BotConfig::default()],
            tracing: None,
            polling: PollingConfig::default(),
            record: None,
        }
    }
}

/// The bot of the no-argument run: `default`, at the root, on the embedded emulator.
impl Default for BotConfig {
    fn default() -> Self {
        Self {
            name: DEFAULT_BOT.to_owned(),
            host: None,
            path_prefix: String::new(),
            upstream: UpstreamTarget::Embedded,
            secret: None,
            public_url: None,
            allowed_origins: Vec::new(),
            allow_credentials: false,
            demo_page: false,
            trusted_origins: Vec::new(),
            rate_limits: RateLimits::default(),
            user_ids: UserIdPolicy::Minted,
            upstream_ca_file: None,
            resume_window: DEFAULT_RESUME_WINDOW,
            auth: None,
            token_endpoint: None,
            policy: None,
            delivery_mode: DeliveryMode::Unset,
        }
    }
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            // Direct Line's documented activity limit is 256K characters (PROTOCOL §4.2).
            activity_body_bytes: 256 * 1024,
            upload_body_bytes: 16 * 1024 * 1024,
            token_body_bytes: 16 * 1024,
            upstream_error_body_bytes: 64 * 1024,
            max_url_bytes: 8 * 1024,
            max_header_bytes: 32 * 1024,
            header_read_timeout: Duration::from_secs(10),
            http2_idle_timeout: Duration::from_secs(10),
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
            // Bots get ~15 s and Direct Line adds its own time (PROTOCOL §1.5, §10.9).
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
            collision_poll_interval: Duration::from_secs(1),
            collision_retry_base: Duration::from_secs(5),
            collision_retry_max: Duration::from_secs(60),
            chunk_interval: Duration::ZERO,
            client_unsent_bytes: 16 * 1024,
        }
    }
}

impl Config {
    /// The defaults with `bot` as the only bot: `Config { token_key, ..Config::single(bot) }`.
    pub fn single(bot: BotConfig) -> Self {
        Self {
            bots: vec![bot],
            ..Self::default()
        }
    }

    /// The first bot, the only one in a single-bot configuration: what a test or an embedder
    /// that serves one bot sets (`config.bot_mut().secret = …`). A configuration without
    /// bots gets the default one first.
    pub fn bot_mut(&mut self) -> &mut BotConfig {
        if self.bots.is_empty() {
            self.bots.push(BotConfig::default());
        }
        &mut self.bots[0]
    }

    /// The no-argument run: the default echo bot at the root and a second one under
    /// `/bots/second`, each behind its own embedded emulator with its own secret, so routing
    /// between bots can be tried with nothing configured.
    pub fn with_demo_bots(mut self) -> Self {
        let mut default = self.bots.into_iter().next().unwrap_or_default();
        default.upstream = UpstreamTarget::Embedded;
        let second = BotConfig {
            name: "second".to_owned(),
            path_prefix: format!("{}/bots/second", default.path_prefix),
            ..default.clone()
        };
        self.bots = vec![default, second];
        self
    }
}
