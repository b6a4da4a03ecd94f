//! Starting the emulator, and the handle a test or the gateway holds to a running one.

use std::future::Future;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use serde_json::Value;
use tokio::net::TcpListener;

use crate::config::{EmulatorArgs, EmulatorConfig};
use crate::environment::EnvironmentControl;
use crate::faults::FaultControl;
use crate::record::RecordedRequest;
use crate::secret::Secret;
use crate::server;
use crate::state::State;

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
    let issuer = match args.issuer_listen {
        None => None,
        Some(issuer_addr) => match TcpListener::bind(issuer_addr).await {
            Ok(listener) => {
                let issuer = crate::oidc::OidcIssuer::spawn_demo(listener);
                println!(
                    "OpenID Connect test issuer on {} (a signed-in token: GET {}/demo/token?sub=alice)",
                    issuer.issuer(),
                    issuer.issuer()
                );
                Some(issuer)
            }
            Err(error) => {
                eprintln!("{program}: cannot listen on {issuer_addr} (issuer): {error}");
                return std::process::ExitCode::from(64);
            }
        },
    };
    let outcome = run(listener, args.config(), shutdown).await;
    if let Some(issuer) = issuer {
        issuer.shutdown();
    }
    match outcome {
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
        self.state.base_url()
    }

    /// The Copilot Studio environment's switches (web channel security, outage, hostile
    /// regional settings).
    pub fn environment(&self) -> EnvironmentControl {
        self.state.environment.clone()
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

    /// Forgets the conversation (Direct Line drops them after 15–20 days idle, PROTOCOL §3):
    /// reconnects and REST calls for it answer 404 from now on. False if unknown.
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

    /// A live-only bot activity of any shape (an interim of a livestreamed answer, well
    /// formed or not), delivered to the open stream without a watermark and never stored,
    /// as typing is; its fields, `id` included, are sent as given. False for an unknown
    /// conversation or an `activity` that is not a JSON object.
    pub fn send_bot_live(&self, conversation_id: &str, activity: Value) -> bool {
        let Some(conversation) = self.state.conversation(conversation_id) else {
            return false;
        };
        let Value::Object(mut activity) = activity else {
            return false;
        };
        activity.insert("from".into(), crate::bot::account());
        conversation.emit_transient(activity);
        true
    }

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

    /// Open stream sockets of the conversation: 0 or 1 (a newcomer takes the slot and the
    /// older socket closes with `collision`; a stalled socket no longer counts).
    pub fn live_streams(&self, conversation_id: &str) -> usize {
        self.state
            .conversation(conversation_id)
            .map_or(0, |conversation| conversation.live_streams())
    }

    /// Stream sockets that have taken this conversation's slot (every upgrade that got
    /// as far as the slot; each one closed the previous holder with `collision`).
    pub fn stream_opens(&self, conversation_id: &str) -> u64 {
        self.state
            .conversation(conversation_id)
            .map_or(0, |conversation| conversation.stream_opens())
    }

    /// Successful upgrades so far, including ones that took the slot from another.
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
