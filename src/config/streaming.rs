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

#[cfg(test)]
mod tests {
    use crate::config::ConfigError;
    use crate::config::load::load_str;
    use std::time::Duration;

    // Livestreamed answers: `delivery_mode` (top level, per bot) and `[stream]` keys.
    #[test]
    fn delivery_mode_is_inherited_and_only_stream_is_accepted() {
        let config = load_str(
            r#"
delivery_mode = "stream"
[stream]
chunk_interval = "50ms"
client_unsent_bytes = "8KiB"
[[bots]]
name = "a"
upstream = "embedded"
[[bots]]
name = "b"
path_prefix = "/b"
upstream = "embedded"
delivery_mode = "stream"
"#,
            &[],
        )
        .unwrap();
        assert!(
            config
                .bots
                .iter()
                .all(|bot| bot.delivery_mode == crate::config::DeliveryMode::Stream)
        );
        assert_eq!(config.stream.chunk_interval, Duration::from_millis(50));
        assert_eq!(config.stream.client_unsent_bytes, 8 * 1024);
        let plain = load_str("", &[]).unwrap();
        assert_eq!(
            plain.bots[0].delivery_mode,
            crate::config::DeliveryMode::Unset
        );
        assert_eq!(plain.stream.chunk_interval, Duration::ZERO);
        for (text, key) in [
            ("delivery_mode = \"normal\"", "delivery_mode"),
            (
                "[[bots]]\nname = \"a\"\nupstream = \"embedded\"\ndelivery_mode = \"Stream\"",
                "bots.delivery_mode",
            ),
            (
                "[stream]\nchunk_interval = \"soon\"",
                "stream.chunk_interval",
            ),
        ] {
            match load_str(text, &[]) {
                Err(ConfigError::Invalid { key: got, .. }) => assert_eq!(got, key, "{text}"),
                other => panic!("{text}: {other:?}"),
            }
        }
    }
}
