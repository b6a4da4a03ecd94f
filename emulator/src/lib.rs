//! An embedded Direct Line 3.0 server with an echo bot and fault knobs (ARCHITECTURE §7).
//!
//! It implements the protocol of `docs/PROTOCOL.md` rather than replaying canned
//! answers: opaque random tokens (60 s stream tokens, `expires_in` 3600), conversation
//! ids like `JqvzojbEjLT4rEMW4HoUIx-us`, activity ids `<conversationId>|0000007`, string
//! watermarks, one WebSocket per conversation (`collision`), typing on the stream only.
//!
//! Map: `config` (settings and flags), `handle` (start, run, the running emulator's
//! handle), `copilot` (a Copilot Studio environment: token endpoint, regional
//! settings), `environment` (its switches), `record` (what it was sent), `state` (conversations, histories, tokens),
//! `credential` (what an `Authorization` header is), `random` (tokens and ids), `http`
//! (REST routes), `exchange` (error bodies, JSON answers, one request's record),
//! `stream` (WebSocket delivery), `bot` (the echo bot), `faults` (misbehaviour on
//! purpose), `upload` (upload bodies), `activity` (ids, timestamps), `server` (listener),
//! `content_safety` (a fake of Azure AI Content Safety's text analysis);
//! `oidc` is a separate OpenID Connect issuer for tests of signed-in users.
//!
//! A stream URL's replay position travels with its `t` token (set when the URL was minted
//! from the reconnect watermark, or "now" for `-`); the `watermark` in the URL is only
//! informational.
//!
//! Close codes it sends: 1000 `collision` (a second socket on a conversation takes the
//! stream; the older one is closed), 1011 `fault: drop` (even-numbered `drop_after_frames` drops), 1001 `shutdown`.

mod activity;
mod bot;
mod config;
mod content_safety;
mod copilot;
mod credential;
mod environment;
mod exchange;
mod faults;
mod handle;
mod http;
pub mod oidc;
mod random;
mod record;
mod secret;
mod server;
mod state;
mod stream;
mod upload;

pub use bot::{BOT_ID, BOT_NAME};
pub use config::{EmulatorArgs, EmulatorConfig};
/// The key the emulator's Azure AI Content Safety fake accepts.
pub use content_safety::KEY as CONTENT_SAFETY_KEY;
pub use environment::EnvironmentControl;
pub use faults::{FaultControl, Faults};
pub use handle::{EmulatorHandle, run, run_cli, spawn};
pub use oidc::OidcIssuer;
pub use record::{RecordedRequest, SeenCredential};
pub use secret::Secret;
pub use stream::{COLLISION_REASON, DROP_REASON, SHUTDOWN_REASON};
