//! The routes, one file per Direct Line concern. The pipeline ([`crate::pipeline`]) runs a
//! request's phases and dispatches here.

pub(crate) mod activities;
pub(crate) mod answer;
pub(crate) mod context;
pub(crate) mod conversations;
pub(crate) mod copilot;
pub(crate) mod lifetime;
pub(crate) mod needs;
pub(crate) mod request_body;
pub(crate) mod session;
pub(crate) mod stream;
pub(crate) mod tokens;
pub(crate) mod upload;
