//! The stream path: client WebSockets authorised by stream tickets, bridged through one
//! hub per conversation to one upstream socket, with watermark tracking and resume.
//!
//! Map: `registry` (the replica's hubs and socket slots), `hub` (one conversation's replay
//! ring and clients), `relay` (the hub's upstream task), `link` (upstream stream URLs,
//! dialling, REST catch-up, token refresh), `keeper` (a secretless bot's hub keeps its
//! upstream token alive), `client` (one client session), `multimodal` (the voice route),
//! `tracker` (watermarks and ids), `chunks` (livestreamed answers' interims and finals),
//! `ids`, `backoff`, `websocket` (settings, close frames), `deliver` (frames into the hub,
//! through the policy and the record), `collision` (polling while another replica's hub
//! holds the conversation's stream), `poll` (held `GET …/activities` polls served from the
//! hub), `held` (their bounds), `send_buffer` (what a client socket's kernel buffer may hold
//! unsent), `client_socket` (a classic client's WebSocket: reads through `ws_frames`,
//! writes gathered per wake-up), `gathered_writes` (the same gathering under tungstenite,
//! for multimodal sockets), `ws_frames`
//! (RFC 6455 frames decoded without a buffer held while idle) and `upstream_socket` (a hub's
//! upstream socket: handshake, reads through `ws_frames`, small masked writes).
//! The route that accepts client sockets is `routes::stream`. The livestream metrics live
//! with the others (`metrics::streamed_answers`), named here as `answer_metrics`.

// The metrics registry holds these families: they belong below the stream.
pub(crate) use crate::metrics::streamed_answers as answer_metrics;

pub(crate) mod backoff;
pub mod chunks;
pub(crate) mod client;
pub(crate) mod client_socket;
pub(crate) mod collision;
pub(crate) mod deliver;
pub(crate) mod gathered_writes;
pub(crate) mod held;
pub(crate) mod hub;
pub(crate) mod ids;
pub(crate) mod keeper;
pub(crate) mod link;
pub(crate) mod multimodal;
pub(crate) mod poll;
pub(crate) mod registry;
pub(crate) mod relay;
pub(crate) mod send_buffer;
pub mod tracker;
pub(crate) mod upstream_socket;
pub(crate) mod websocket;
pub mod ws_frames;
