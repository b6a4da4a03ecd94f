//! directline-gateway: a reverse proxy for Bot Framework Direct Line 3.0.
//!
//! Layers, each importing only from its own and the ones below it (ARCHITECTURE §9);
//! `tests/layers.rs` holds this map as `LAYERS` and fails on an import up it, and on any import
//! cycle between files:
//! 1. **server**: [`server`] (listeners, connections, admin, [`server::start`]), [`signals`],
//!    `h2_idle` (idle HTTP/2 connections), `tls`, [`cli`], [`logging`].
//! 2. **pipeline**: `pipeline`, a request in named phases (admit → select bot → parse →
//!    check origin → authorize → rate-limit → dispatch → respond → log).
//! 3. **routes**: `routes`, one file per Direct Line concern (tokens, conversations,
//!    activities, upload, session, stream), what each needs (`routes::needs`), the request
//!    context with the send-and-answer shape they share (`routes::context`), and the respond
//!    phase (`routes::answer`).
//! 4. **stream and the app state**: [`stream`], the WebSocket bridge (registry of hubs, hub,
//!    relay, link, client, tracker), and `gateway` (`Gateway`: metrics, the hub registry and
//!    held polls, rate buckets, drain, the `Live` snapshot a reload swaps). They
//!    share a layer because `Gateway` holds the stream's registries while the stream files
//!    take `Gateway` as their context; `stream::registry` and `stream::held` import nothing of
//!    the app state, so there is no cycle.
//! 5. **upstream and the settings served**: `upstream`, the client and the one call path
//!    (`upstream::call`), where a bot's calls go (`upstream::base`) and Copilot Studio
//!    discovery (`upstream::discovery`); `live` (`Live` and `Bot`: each bot with its upstream
//!    and policy, and `LiveSettings`, what the upstream's background tasks read of the app
//!    state) and `reload` (a configuration turned into `Live`). `policy` (`[policy]`:
//!    redaction and the webhook's verdict on each activity) and [`record`] sit here too: they
//!    make calls of their own and import only cores.
//! 6. **identity**: [`identity`], signed-in users: the identity provider's JWT, its keys
//!    (fetched and cached), the pseudonym. Its settings are configuration (`config::auth`).
//! 7. **cores** (no layer above them imported): [`config`], [`endpoint`], `auth`, [`seal`],
//!    [`secret`], `forwarded` (client addresses behind proxies), `ratelimit`,
//!    `refresh_share`, [`rewrite`], [`scrub`], `cors`, [`activity_body`], `activity_set` (an
//!    upstream frame read in one validating pass), [`upload_activity`], `jsonscan`, `boxed_body` (the one body type responses and upstream requests use),
//!    `request_headers` (the host, request id and gzip a request's headers say),
//!    [`error`], `metrics` (the families in `metrics::families`), [`clock`], `demo`,
//!    `credential` (whether Direct Line accepts a bot's secret), `telemetry` (OpenTelemetry
//!    spans; its export runs on threads of its own), `workers` (the threads connections run
//!    on; routes and the upstream client ask it which thread they are on) and `admission`
//!    (the per-IP cap and first-request deadline; the stream route keeps a connection's slot).
//!
//! The public surface is what the binary, the integration tests, the benches and the fuzz
//! targets use: [`config`], [`server`], [`cli`], [`signals`], [`logging`], [`seal`],
//! [`secret`], [`endpoint`], [`error`], [`clock`], [`rewrite`], [`scrub`],
//! [`activity_body`], [`identity`], [`policy::redact`] and [`stream::tracker`]. Everything else is `pub(crate)`.
//! The Direct Line emulator is its own crate, `directline-emulator` (`emulator/`).

pub mod activity_body;
pub(crate) mod activity_set;
pub(crate) mod admission;
pub(crate) mod auth;
pub(crate) mod boxed_body;
pub mod cli;
pub mod clock;
pub mod config;
pub(crate) mod cors;
pub(crate) mod credential;
pub(crate) mod demo;
pub mod endpoint;
pub mod error;
pub(crate) mod forwarded;
pub(crate) mod gateway;
pub(crate) mod h2_idle;
pub mod identity;
pub(crate) mod jsonscan;
pub(crate) mod live;
pub mod logging;
pub(crate) mod metrics;
pub(crate) mod pipeline;
pub mod policy;
pub(crate) mod ratelimit;
pub mod record;
pub(crate) mod refresh_share;
pub(crate) mod reload;
pub(crate) mod request_headers;
pub mod rewrite;
pub(crate) mod routes;
pub mod scrub;
pub mod seal;
pub mod secret;
pub mod server;
pub mod signals;
pub mod stream;
pub(crate) mod telemetry;
pub(crate) mod tls;
pub mod upload_activity;
pub(crate) mod upstream;
pub(crate) mod workers;
