//! Livestreamed answers (ARCHITECTURE §14): `delivery_mode`, top level and per bot.

use super::errors::{ConfigError, invalid};

/// What the gateway does about `deliveryMode` on the activities clients post.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum DeliveryMode {
    /// Activities go upstream as the client wrote them.
    #[default]
    Unset,
    /// `deliveryMode: "stream"` is added to activities that carry none, so the bot
    /// livestreams its answers to pages built before clients could ask for it. A client's
    /// own value is never replaced.
    Stream,
}

impl DeliveryMode {
    /// The value added to activities without one, if any.
    pub fn default_for_activities(self) -> Option<&'static str> {
        match self {
            Self::Unset => None,
            Self::Stream => Some("stream"),
        }
    }
}

/// `delivery_mode = "stream"`; anything else is a mistake worth stopping on.
pub fn parse_delivery_mode(key: &'static str, text: &str) -> Result<DeliveryMode, ConfigError> {
    match text {
        "stream" => Ok(DeliveryMode::Stream),
        other => Err(invalid(
            key,
            format!(
                "{other:?} is not a delivery mode: the only one is \"stream\" (leave the key out to pass activities as they are)"
            ),
        )),
    }
}
