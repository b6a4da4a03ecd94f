//! directline-gateway: a reverse proxy for Bot Framework Direct Line 3.0.
//!
//! Map of the crate:
//! - [`config`]: the TOML file, environment and flags, parsed once into typed values.
//! - [`signals`]: SIGTERM/SIGINT (drain) and SIGHUP (reload), registered at start-up.
//! - [`admission`]: what a connection may hold before its first request (per-IP cap, deadline).
//! - [`server`]: listeners, connections, the admin endpoints, and the whole-process [`server::run`].
//! - [`gateway`]: shared state and the request pipeline (parse → authorize → upstream → rewrite → respond).
//! - [`endpoint`]: typed Direct Line routes and strict conversation ids.
//! - [`auth`], [`seal`]: sealed client tokens and stream tickets, and the ownership check.
//! - [`identity`]: signed-in users: the identity provider's JWT, its keys, the pseudonym.
//! - [`ratelimit`]: token buckets per client IP and per conversation, and the client IP.
//! - [`rest`]: the REST routes; [`upstream`]: the HTTP client to Direct Line.
//! - [`activity_body`]: a posted activity with `from.id` bound to the token's user.
//! - [`jsonscan`]: one-pass reads of already valid JSON text (activity ids, nesting depth).
//! - [`rewrite`]: streamUrl rewriting and pinning; [`cors`]: browser preflight and headers.
//! - [`scrub`]: upstream bodies cleaned of the secret, tokens and host before a client sees them.
//! - [`stream`]: the WebSocket bridge (hubs, watermark tracker, resume).
//! - [`demo`]: the chat page on `/` in embedded-emulator mode.
//! - [`error`]: blame and the one place errors become Direct Line error bodies.
//! - [`tls`]: TLS on the client listener, with certificate reload.
//! - [`metrics`], [`logging`]: Prometheus registry and tracing setup.

pub mod activity_body;
pub mod admission;
pub mod auth;
pub mod body;
pub mod cli;
pub mod clock;
pub mod config;
pub mod cors;
pub mod demo;
pub mod endpoint;
pub mod error;
pub mod gateway;
pub mod identity;
pub mod jsonscan;
pub mod logging;
pub mod metrics;
pub mod ratelimit;
pub mod rest;
pub mod rewrite;
pub mod scrub;
pub mod seal;
pub mod secret;
pub mod server;
pub mod signals;
pub mod stream;
pub mod tls;
pub mod upstream;
