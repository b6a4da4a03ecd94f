//! The stream path (placeholder until the bridge lands).

use std::sync::{Arc, Weak};

use http::{Request, Response};
use hyper::body::Incoming;

use crate::body::Body;
use crate::endpoint::ConversationId;
use crate::error::GatewayError;
use crate::gateway::{Gateway, RequestContext};

pub struct Hubs {
    _gateway: Weak<Gateway>,
}

impl Hubs {
    pub fn new(gateway: Weak<Gateway>) -> Self {
        Self { _gateway: gateway }
    }
    pub fn close_all_for_drain(&self) {}
}

pub fn accept(
    _gw: &Arc<Gateway>,
    _conversation: ConversationId,
    _multimodal: bool,
    _request: Request<Incoming>,
    _ctx: &mut RequestContext,
) -> Result<Response<Body>, GatewayError> {
    Err(GatewayError::Internal)
}
