//! An embedded Direct Line 3.0 server with an echo bot and fault knobs (DESIGN §7).
//!
//! It implements the protocol as `directline-spec.md` describes it (shapes, statuses,
//! string watermarks, `<id>|0000007` ids, 60 s stream URLs, one socket per conversation,
//! typing only on the stream), so the gateway, its tests and its benchmarks run against a
//! faithful upstream with no secret and no network.

mod faults;
mod http;
mod state;
mod stream;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;

use crate::secret::Secret;
pub use faults::{FaultControl, Faults};
pub use state::{RecordedRequest, SeenCredential};

pub struct EmulatorConfig {
    /// The Direct Line secret it accepts.
    pub secret: Secret,
    pub faults: Faults,
    /// An empty text frame on every open stream this often.
    pub keepalive_interval: Duration,
    pub stream_url_ttl: Duration,
    pub token_ttl: Duration,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        Self {
            secret: Secret::new("emulator-secret"),
            faults: Faults::default(),
            keepalive_interval: Duration::from_secs(15),
            stream_url_ttl: Duration::from_secs(60),
            token_ttl: Duration::from_secs(3600),
        }
    }
}

/// Flags of `directline-gateway emulator`.
#[derive(clap::Args, Debug, Clone)]
pub struct EmulatorArgs {
    #[arg(long, default_value = "127.0.0.1:3978")]
    listen: SocketAddr,
    /// The secret clients (or the gateway) must present.
    #[arg(
        long,
        env = "DIRECTLINE_SECRET",
        default_value = "emulator-secret",
        hide_env_values = true
    )]
    secret: String,
    /// Close each stream after N activity frames (alternately a TCP abort and a 1011 close).
    #[arg(long)]
    drop_after_frames: Option<u32>,
    /// The next K reconnect GETs answer 502.
    #[arg(long, default_value_t = 0)]
    fail_reconnects: u32,
    /// Pack up to 3 activities per frame.
    #[arg(long)]
    batch: bool,
    /// Reconnect streams replay the whole history whatever the watermark.
    #[arg(long)]
    replay_history: bool,
    /// Reconnect with the secret answers 400 MissingProperty.
    #[arg(long)]
    enhanced_auth: bool,
    /// After N activity frames a stream goes silent (no frames, no close).
    #[arg(long)]
    stall_after_frames: Option<u32>,
    /// The echo bot sends a typing activity before each echo.
    #[arg(long)]
    typing: bool,
    #[arg(long, default_value_t = 15)]
    keepalive_secs: u64,
}

impl EmulatorArgs {
    pub fn listen(&self) -> SocketAddr {
        self.listen
    }

    pub fn config(&self) -> EmulatorConfig {
        EmulatorConfig {
            secret: Secret::new(self.secret.clone()),
            faults: Faults {
                drop_after_frames: self.drop_after_frames,
                fail_reconnects: self.fail_reconnects,
                batch: self.batch,
                replay_history: self.replay_history,
                enhanced_auth: self.enhanced_auth,
                stall_after_frames: self.stall_after_frames,
                typing: self.typing,
            },
            keepalive_interval: Duration::from_secs(self.keepalive_secs.max(1)),
            ..EmulatorConfig::default()
        }
    }
}

/// A running emulator.
#[derive(Clone)]
pub struct EmulatorHandle {
    addr: SocketAddr,
    state: Arc<state::State>,
}

/// Starts serving on `listener` in a background task and returns at once.
pub fn spawn(listener: TcpListener, config: EmulatorConfig) -> EmulatorHandle {
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let state = Arc::new(state::State::new(config));
    tokio::spawn(http::serve(listener, state.clone()));
    EmulatorHandle { addr, state }
}

/// Serves until `shutdown` completes.
pub async fn run(
    listener: TcpListener,
    config: EmulatorConfig,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let handle = spawn(listener, config);
    shutdown.await;
    handle.shutdown();
    Ok(())
}

impl EmulatorHandle {
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT`, the base URL without `/v3/directline`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Every REST request and stream upgrade attempt, in arrival order.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        self.state.recorded()
    }

    pub fn faults(&self) -> FaultControl {
        self.state.faults.clone()
    }

    /// A proactive bot message; the new activity id, or `None` for an unknown conversation.
    pub fn send_bot_message(&self, conversation_id: &str, text: &str) -> Option<String> {
        let conversation = self.state.conversation(conversation_id)?;
        Some(conversation.append_bot_message(text, None))
    }

    /// The stored history (typing is never stored).
    pub fn activities(&self, conversation_id: &str) -> Vec<serde_json::Value> {
        self.state
            .conversation(conversation_id)
            .map(|c| c.stored_after(None))
            .unwrap_or_default()
    }

    pub fn live_streams(&self, conversation_id: &str) -> usize {
        self.state
            .conversation(conversation_id)
            .map_or(0, |c| c.live_streams())
    }

    pub fn stream_connects(&self) -> u64 {
        self.state.stream_connects()
    }

    pub fn shutdown(&self) {
        self.state.shutdown();
    }
}

#[cfg(test)]
mod tests;
