//! What the emulator starts with: its settings, and the command-line flags that make them.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::faults::Faults;
use crate::secret::Secret;

/// Everything the emulator needs to start.
pub struct EmulatorConfig {
    /// The Direct Line secret it accepts.
    pub secret: Secret,
    /// A Direct Line site has two secrets so one can be rotated while the other serves.
    pub second_secret: Option<Secret>,
    /// Initial fault settings (change them later with [`EmulatorHandle::faults`]).
    pub faults: Faults,
    /// An empty `""` text frame on every open stream this often; zero turns them off.
    pub keepalive_interval: Duration,
    /// Lifetime of a stream URL's `t` token.
    pub stream_url_ttl: Duration,
    /// Lifetime of conversation tokens (`expires_in`).
    pub token_ttl: Duration,
    /// Serve HTTPS and wss stream URLs, as Direct Line does (tests of private upstream CAs).
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// The Copilot Studio token endpoint starts off (web channel security on); switch it
    /// later with [`crate::EmulatorHandle::environment`].
    pub web_channel_security: bool,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            secret: Secret::new(DEFAULT_SECRET),
            second_secret: None,
            faults: Faults::default(),
            keepalive_interval: Duration::from_secs(15),
            stream_url_ttl: Duration::from_secs(60),
            token_ttl: Duration::from_secs(3600),
            tls: None,
            web_channel_security: false,
        }
    }
}

const DEFAULT_SECRET: &str = "emulator-secret";

/// Flags of `directline-emulator` (and of `directline-gateway emulator`).
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:3978")]
    pub listen: SocketAddr,
    /// Direct Line secret the emulator accepts [default: emulator-secret].
    #[arg(long, env = "DIRECTLINE_SECRET", hide_env_values = true, value_parser = parse_secret)]
    pub secret: Option<Secret>,
    /// The site's second secret, also accepted (for rotation drills).
    #[arg(long, value_parser = parse_secret)]
    pub second_secret: Option<Secret>,
    /// Close each stream after N activity frames (alternately without and with a close frame).
    #[arg(long, value_name = "N")]
    pub drop_after_frames: Option<u32>,
    /// Fail the next K reconnects (GET /conversations/{id}) with 502 ServiceError.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub fail_reconnects: u32,
    /// Refuse the next K stream upgrades with 403, as for a stale stream URL.
    #[arg(long, value_name = "K", default_value_t = 0)]
    pub refuse_streams: u32,
    /// Pack up to 3 activities per stream frame.
    #[arg(long)]
    pub batch: bool,
    /// Reconnect streams replay the whole history whatever the watermark.
    #[arg(long)]
    pub replay_history: bool,
    /// Reconnect with the secret answers 400 MissingProperty (enhanced authentication).
    #[arg(long)]
    pub enhanced_auth: bool,
    /// After N activity frames a stream goes silent (no frames, no close, no pongs).
    #[arg(long, value_name = "N")]
    pub stall_after_frames: Option<u32>,
    /// The echo bot sends a typing activity before each echo.
    #[arg(long)]
    pub typing: bool,
    /// Milliseconds between the interims of a streamed answer (a message `stream N`).
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub stream_interval_ms: u64,
    /// Seconds between empty keepalive frames on open streams (0 = none).
    #[arg(long, value_name = "N", default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Lifetime of the Direct Line tokens it issues, in seconds (`expires_in`), for trying
    /// what happens when they expire.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl_secs: u64,
    /// Copilot Studio web channel security ("require secured access"): the agent's token
    /// endpoint (/powervirtualagents/botsbyschema/<schema>/directline/token) refuses, and
    /// only the secrets work.
    #[arg(long)]
    pub web_channel_security: bool,
    /// Also run the OpenID Connect test issuer on this loopback address, for trying
    /// signed-in users: `GET /demo/token?sub=NAME` there signs an ID token for NAME
    /// (audience api://directline-gateway). A demo, never an identity provider.
    #[arg(long, value_name = "ADDR", value_parser = parse_loopback)]
    pub issuer_listen: Option<SocketAddr>,
}

/// The demo issuer signs a token for anyone who asks: never reachable from elsewhere.
fn parse_loopback(value: &str) -> Result<SocketAddr, String> {
    let addr: SocketAddr = value
        .parse()
        .map_err(|_| format!("{value:?} is not an IP:port address"))?;
    if addr.ip().is_loopback() {
        Ok(addr)
    } else {
        Err("must be a loopback address (127.0.0.1:PORT): the demo issuer signs for anyone".into())
    }
}

fn parse_secret(value: &str) -> Result<Secret, String> {
    if value.is_empty() {
        Err("the secret must not be empty".into())
    } else {
        Ok(Secret::new(value))
    }
}

impl EmulatorArgs {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            secret: self
                .secret
                .clone()
                .unwrap_or_else(|| Secret::new(DEFAULT_SECRET)),
            second_secret: self.second_secret.clone(),
            faults: Faults {
                drop_after_frames: self.drop_after_frames,
                fail_reconnects: self.fail_reconnects,
                batch: self.batch,
                replay_history: self.replay_history,
                enhanced_auth: self.enhanced_auth,
                stall_after_frames: self.stall_after_frames,
                typing: self.typing,
                refuse_streams: self.refuse_streams,
                stream_interval: Duration::from_millis(self.stream_interval_ms),
            },
            keepalive_interval: Duration::from_secs(self.keepalive_secs),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            web_channel_security: self.web_channel_security,
            ..EmulatorConfig::default()
        }
    }
}
