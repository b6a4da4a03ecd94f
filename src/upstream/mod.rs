//! Everything that talks to Direct Line over HTTP: the client ([`client`]), the one call
//! path with the credential policy, the enhanced-auth fallback and the upstream metrics
//! ([`call`]), and reading answers ([`body`]).

pub mod body;
pub mod call;
pub mod client;
