//! An embedded Direct Line 3.0 server with an echo bot and fault knobs (DESIGN §7).
//!
//! It implements the protocol of `directline-spec.md` rather than replaying canned
//! answers: opaque random tokens (60 s stream tokens, `expires_in` 3600), conversation
//! ids like `JqvzojbEjLT4rEMW4HoUIx-us`, activity ids `<conversationId>|0000007`, string
//! watermarks, one WebSocket per conversation (`collision`), typing on the stream only.
//!
//! Map: `state` (conversations, histories, tokens, request log), `credential` (tokens,
//! `Authorization`), `http` (REST routes and error bodies), `stream` (WebSocket
//! delivery), `bot` (the echo bot), `faults` (misbehaviour on purpose), `upload`
//! (upload bodies), `activity` (ids, timestamps), `server` (listener); `oidc` is a separate
//! OpenID Connect issuer for tests of signed-in users.
//!
//! A stream URL's replay position travels with its `t` token (set when the URL was minted
//! from the reconnect watermark, or "now" for `-`); the `watermark` in the URL is only
//! informational.
//!
//! Close codes it sends: 1000 `collision` (second socket on a conversation, the new one is
//! closed), 1011 `fault: drop` (even-numbered `drop_after_frames` drops), 1001 `shutdown`.

mod activity;
mod bot;
mod credential;
mod faults;
mod http;
pub mod oidc;
mod secret;
mod server;
mod state;
mod stream;
mod upload;

use std::future::Future;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::net::TcpListener;

pub use secret::Secret;
use state::State;

pub use bot::{BOT_ID, BOT_NAME};
pub use faults::{FaultControl, Faults};
pub use oidc::OidcIssuer;
pub use stream::{COLLISION_REASON, DROP_REASON, SHUTDOWN_REASON};

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
    /// Seconds between empty keepalive frames on open streams (0 = none).
    #[arg(long, value_name = "N", default_value_t = 15)]
    pub keepalive_secs: u64,
    /// Lifetime of the Direct Line tokens it issues, in seconds (`expires_in`), for trying
    /// what happens when they expire.
    #[arg(long, value_name = "SECONDS", default_value_t = 3600, value_parser = clap::value_parser!(u64).range(1..))]
    pub token_ttl_secs: u64,
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
            },
            keepalive_interval: Duration::from_secs(self.keepalive_secs),
            token_ttl: Duration::from_secs(self.token_ttl_secs),
            ..EmulatorConfig::default()
        }
    }
}

/// Starts serving on `listener` in a background task; returns at once.
pub fn spawn(listener: TcpListener, config: EmulatorConfig) -> EmulatorHandle {
    let local_addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from((Ipv4Addr::LOCALHOST, 0)));
    start(listener, config, local_addr).0
}

/// Serves until `shutdown` completes (for the CLI), then closes every stream and
/// connection.
pub async fn run(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let local_addr = listener.local_addr()?;
    let (handle, accepting) = start(listener, config, local_addr);
    tokio::select! {
        () = shutdown => {}
        // The accept loop only ends through shutdown; treat a panic there as one.
        _ = accepting => {}
    }
    handle.shutdown();
    Ok(())
}

/// What both command lines (`directline-emulator` and `directline-gateway emulator`) do:
/// listen, print the address, serve until `shutdown`. `program` prefixes error lines.
/// Exit codes: 64 when the address cannot be bound (a usage error), 1 when serving fails.
pub async fn run_cli(
    program: &str,
    args: &EmulatorArgs,
    shutdown: impl Future<Output = ()>,
) -> std::process::ExitCode {
    let listener = match TcpListener::bind(args.listen()).await {
        Ok(listener) => listener,
        Err(error) => {
            eprintln!("{program}: cannot listen on {}: {error}", args.listen());
            return std::process::ExitCode::from(64);
        }
    };
    let addr = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    println!("Direct Line emulator listening on http://{addr}");
    match run(listener, args.config(), shutdown).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("{program}: {error}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn start(
    listener: TcpListener,
    config: EmulatorConfig,
    local_addr: SocketAddr,
) -> (EmulatorHandle, tokio::task::JoinHandle<()>) {
    let state = Arc::new(State::new(config, local_addr));
    tokio::spawn(server::sweep(state.clone()));
    let accepting = tokio::spawn(server::accept(listener, state.clone()));
    (EmulatorHandle { state }, accepting)
}

/// A running emulator: its address, its record, and its run-time controls.
#[derive(Clone)]
pub struct EmulatorHandle {
    state: Arc<State>,
}

impl std::fmt::Debug for EmulatorHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EmulatorHandle")
            .field("local_addr", &self.state.local_addr)
            .finish_non_exhaustive()
    }
}

impl EmulatorHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.state.local_addr
    }

    /// `http://127.0.0.1:PORT` (`https://` with TLS), without `/v3/directline` (a wildcard listen address is
    /// reported as loopback).
    /// The secret the emulator accepts first (the gateway injects it in embedded mode).
    pub fn secret(&self) -> Secret {
        self.state.secret.clone()
    }

    pub fn base_url(&self) -> String {
        let mut addr = self.state.local_addr;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr {
                SocketAddr::V4(_) => Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => Ipv6Addr::LOCALHOST.into(),
            });
        }
        let scheme = if self.state.tls.is_some() {
            "https"
        } else {
            "http"
        };
        format!("{scheme}://{addr}")
    }

    /// Every REST request and stream upgrade attempt, in arrival order (the most recent
    /// 16384).
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.requests()
    }

    /// Run-time fault switches.
    pub fn faults(&self) -> FaultControl {
        self.state.faults.clone()
    }

    /// A proactive bot message; the new activity id, or `None` for an unknown conversation.
    pub fn send_bot_message(&self, conversation_id: &str, text: &str) -> Option<String> {
        let conversation = self.state.conversation(conversation_id)?;
        Some(self.state.proactive(&conversation, text))
    }

    /// A proactive bot activity of any shape (an OAuthCard, an event), as a bot would send
    /// through the Bot Connector; `from` is set to the bot. The new activity id, or `None`
    /// for an unknown conversation or an `activity` that is not a JSON object.
    pub fn send_bot_activity(&self, conversation_id: &str, activity: Value) -> Option<String> {
        let conversation = self.state.conversation(conversation_id)?;
        let Value::Object(activity) = activity else {
            return None;
        };
        Some(self.state.proactive_activity(&conversation, activity))
    }

    /// Forgets the conversation (Direct Line drops them after 15–20 days idle, spec §3):
    /// reconnects and REST calls for it answer 404 from now on. False if unknown.
    pub fn end_conversation(&self, conversation_id: &str) -> bool {
        self.state.forget_conversation(conversation_id)
    }

    /// The stored history (typing activities are never stored).
    pub fn activities(&self, conversation_id: &str) -> Vec<Value> {
        self.state
            .conversation(conversation_id)
            .map(|conversation| conversation.history())
            .unwrap_or_default()
    }

    /// Open stream sockets of the conversation: 0 or 1 (a collision closes the newcomer;
    /// a stalled socket no longer counts).
    pub fn live_streams(&self, conversation_id: &str) -> usize {
        self.state
            .conversation(conversation_id)
            .map_or(0, |conversation| conversation.live_streams())
    }

    /// Successful upgrades so far, including ones then closed for `collision`.
    pub fn stream_connects(&self) -> u64 {
        self.state.stream_connects()
    }

    /// Cuts every stream open right now at once, without a close frame (as a Direct Line
    /// front end failing over does), and frees their slots; streams opened afterwards are
    /// untouched. For the drop-storm benchmark (`benches/compare.rs`): the proxy in front
    /// must notice the drop and resume each conversation from its watermark.
    pub fn drop_all_streams(&self) {
        self.state.drop_all_streams();
    }

    /// Stops accepting, closes streams with 1001 and lets connections drain.
    pub fn shutdown(&self) {
        self.state.shut_down();
    }
}

/// One REST request or stream upgrade attempt, as the emulator saw and answered it.
#[derive(Clone, Debug)]
pub struct RecordedRequest {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    /// What the `Authorization` header was; for stream upgrades without one, what `t` was.
    pub credential: SeenCredential,
    /// The `Host` header as received.
    pub host: Option<String>,
    /// The `x-request-id` header as received (the gateway forwards its caller's).
    pub request_id: Option<String>,
    /// The parsed JSON body, when there was one.
    pub body: Option<Value>,
    /// Every header as received (values lossily as text), so a test can assert that
    /// nothing it did not mean to send reached Direct Line.
    pub headers: Vec<(String, String)>,
    /// What the emulator answered (101 for accepted upgrades).
    pub status: u16,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SeenCredential {
    Missing,
    Secret,
    /// The site's second secret.
    SecondSecret,
    ConversationToken {
        conversation_id: String,
    },
    StreamToken,
    Invalid,
}
