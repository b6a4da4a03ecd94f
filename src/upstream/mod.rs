//! Everything that talks to Direct Line over HTTP: the client ([`client`]) and its
//! per-worker connections ([`pool`]), the one call
//! path with the credential policy, the enhanced-auth fallback and the upstream metrics
//! ([`call`]), reading answers ([`answer_body`]), where a bot's calls go ([`base`]: fixed or
//! discovered), the discovery of a Copilot Studio agent's Direct Line host
//! ([`discovery`]), and the check of each bot's secret at start and reload ([`credential`]).

pub mod answer_body;
pub mod base;
pub mod call;
pub mod client;
pub mod credential;
pub mod discovery;
pub mod pool;
