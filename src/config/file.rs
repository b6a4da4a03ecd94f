//! The TOML file's schema as serde reads it: every key the gateway knows, none it does not.

use super::auth::FileAuth;
use std::path::PathBuf;

use serde::Deserialize;

use super::quantity::text_or_number;

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub listen: Option<String>,
    pub admin_listen: Option<String>,
    pub upstream: Option<String>,
    pub token_endpoint: Option<String>,
    pub public_url: Option<String>,
    pub path_prefix: Option<String>,
    pub secret_file: Option<PathBuf>,
    pub token_key_file: Option<PathBuf>,
    #[serde(default)]
    pub previous_token_key_files: Vec<PathBuf>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub token_key_overlap: Option<String>,
    pub upstream_ca_file: Option<PathBuf>,
    pub tls: Option<FileTls>,
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    pub client_ipv6_prefix: Option<u8>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub trusted_origins: Vec<String>,
    /// CORS with credentials, and the demo page for a real upstream (issue 29).
    pub allow_credentials: Option<bool>,
    pub demo_page: Option<bool>,
    /// A plain-http upstream that is not loopback (the secret would travel in clear).
    pub allow_http_upstream: Option<bool>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub upstream_refresh_before: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub resume_window: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub shutdown_grace: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub file_watch_interval: Option<String>,
    pub workers: Option<usize>,
    #[serde(default)]
    pub limits: FileLimits,
    #[serde(default)]
    pub rate_limits: FileRateLimits,
    #[serde(default)]
    pub timeouts: FileTimeouts,
    #[serde(default)]
    pub stream: FileStream,
    pub user_ids: Option<String>,
    /// Signed-in mode, single-bot form (`[auth]`).
    pub auth: Option<FileAuth>,
    /// Distributed tracing (`[tracing]`).
    pub tracing: Option<FileTracing>,
    /// Activity policy (`[policy]`): every bot's unless it has its own.
    pub policy: Option<super::policy::FilePolicy>,
    /// Held polls (`[polling]`).
    pub polling: Option<super::polling::FilePolling>,
    /// The conversation record (`[record]`).
    pub record: Option<super::record::FileRecord>,
    #[serde(default)]
    pub bots: Vec<FileBot>,
    /// Livestreamed answers: `"stream"` asks bots to livestream for every client.
    pub delivery_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileBot {
    pub name: String,
    pub host: Option<String>,
    pub path_prefix: Option<String>,
    /// Optional only with `token_endpoint` (then discovered).
    pub upstream: Option<String>,
    pub token_endpoint: Option<String>,
    pub secret_file: Option<PathBuf>,
    /// The name of the environment variable holding this bot's secret.
    pub secret_env: Option<String>,
    pub public_url: Option<String>,
    #[serde(default)]
    pub allowed_origins: Vec<String>,
    #[serde(default)]
    pub trusted_origins: Vec<String>,
    pub allow_credentials: Option<bool>,
    pub demo_page: Option<bool>,
    pub rate_limits: Option<FileRateLimits>,
    pub user_ids: Option<String>,
    pub upstream_ca_file: Option<PathBuf>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub resume_window: Option<String>,
    /// Signed-in mode of this bot (`[bots.auth]`).
    pub auth: Option<FileAuth>,
    /// This bot's activity policy (`[bots.policy]`), instead of the top-level one.
    pub policy: Option<super::policy::FilePolicy>,
    pub delivery_mode: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTls {
    pub cert_file: PathBuf,
    pub key_file: PathBuf,
    #[serde(default, deserialize_with = "text_or_number")]
    pub watch_interval: Option<String>,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileRateLimits {
    pub sessions_per_minute: Option<u32>,
    pub sessions_burst: Option<u32>,
    pub activities_per_minute: Option<u32>,
    pub activities_burst: Option<u32>,
    pub refresh_per_minute: Option<u32>,
    pub refresh_burst: Option<u32>,
    pub refresh_per_ip_per_minute: Option<u32>,
    pub refresh_per_ip_burst: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileLimits {
    #[serde(default, deserialize_with = "text_or_number")]
    pub activity_body: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub upload_body: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub token_body: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub upstream_error_body: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub max_url: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub max_headers: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub header_read_timeout: Option<String>,
    pub http2_idle_timeout: Option<String>,
    pub max_connections: Option<usize>,
    pub max_header_count: Option<usize>,
    pub max_connections_per_ip: Option<usize>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub body_read_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub upload_read_timeout: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTimeouts {
    #[serde(default, deserialize_with = "text_or_number")]
    pub connect: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub default: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub activities: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub upload: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileStream {
    #[serde(default, deserialize_with = "text_or_number")]
    pub keepalive_interval: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub liveness_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub pong_timeout: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub resume_budget: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub backoff_base: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub backoff_max: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub linger: Option<String>,
    pub buffer_frames: Option<usize>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub buffer_bytes: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub buffer_total_bytes: Option<String>,
    pub delivered_ids: Option<usize>,
    pub client_lag_frames: Option<usize>,
    pub max_sockets_per_conversation: Option<usize>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub max_frame: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub ws_read_buffer: Option<String>,
    pub guard_against_replays: Option<bool>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub drain_period: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub drain_spread: Option<String>,
    // Sharing a conversation with another replica (`stream::relay`'s polling mode).
    pub collision_poll_interval: Option<String>,
    pub collision_retry_base: Option<String>,
    pub collision_retry_max: Option<String>,
    pub chunk_interval: Option<String>,
    pub client_unsent_bytes: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileTracing {
    pub enabled: Option<bool>,
    pub endpoint: Option<String>,
    pub protocol: Option<String>,
    pub service_name: Option<String>,
    pub sampling_ratio: Option<f64>,
    pub propagate_upstream: Option<bool>,
    pub include_conversation_ids: Option<bool>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub export_interval: Option<String>,
    #[serde(default, deserialize_with = "text_or_number")]
    pub export_timeout: Option<String>,
    pub queue_size: Option<usize>,
    pub trust_incoming_context: Option<bool>,
}
