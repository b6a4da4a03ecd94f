//! `[polling]`: long polls for clients that cannot open a WebSocket (`webSocket: false`).
//! With `hold` set, `GET …/activities` is answered from the conversation's hub and a poll
//! with nothing new waits up to `hold` for something to arrive (ARCHITECTURE §14).

use std::time::Duration;

use serde::Deserialize;

use super::errors::{ConfigError, invalid};
use super::values::parse_duration;

/// botframework-directlinejs gives up on a poll after 20 s and counts it as a failure, so
/// a held poll must be answered well before that.
pub const CLIENT_POLL_TIMEOUT: Duration = Duration::from_secs(20);

/// `[polling]` as the gateway runs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollingConfig {
    /// How long a poll with nothing new waits for an activity; zero: polls are passed
    /// through to Direct Line as they come (the default).
    pub hold: Duration,
    /// Polls held at once for one conversation on this replica (one client polls one at a
    /// time; a few tabs of one conversation fit).
    pub max_held_per_conversation: usize,
    /// Polls held at once for one client IP address on this replica.
    pub max_held_per_ip: usize,
    /// Polls held at once on this replica.
    pub max_held: usize,
    /// Hubs (upstream sockets) that polls may open on this replica; past it a poll of a
    /// conversation without a hub is passed through unheld.
    pub max_hubs: usize,
}

impl Default for PollingConfig {
    fn default() -> Self {
        Self {
            hold: Duration::ZERO,
            max_held_per_conversation: 4,
            max_held_per_ip: 64,
            max_held: 10_000,
            max_hubs: 5_000,
        }
    }
}

impl PollingConfig {
    pub fn enabled(&self) -> bool {
        !self.hold.is_zero()
    }
}

/// The file's `[polling]` table.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolling {
    pub hold: Option<String>,
    pub max_held_per_conversation: Option<usize>,
    pub max_held_per_ip: Option<usize>,
    pub max_held: Option<usize>,
    pub max_hubs: Option<usize>,
}

pub fn section(file: Option<FilePolling>) -> Result<PollingConfig, ConfigError> {
    let file = file.unwrap_or_default();
    let mut polling = PollingConfig::default();
    if let Some(text) = file.hold {
        polling.hold = parse_duration(&text).ok_or_else(|| {
            invalid(
                "polling.hold",
                format!("{text:?} is not a duration like 10s or 250ms"),
            )
        })?;
    }
    validate(&polling)?;
    let counts = [
        (
            "polling.max_held_per_conversation",
            file.max_held_per_conversation,
            &mut polling.max_held_per_conversation,
        ),
        (
            "polling.max_held_per_ip",
            file.max_held_per_ip,
            &mut polling.max_held_per_ip,
        ),
        ("polling.max_held", file.max_held, &mut polling.max_held),
        ("polling.max_hubs", file.max_hubs, &mut polling.max_hubs),
    ];
    for (key, value, slot) in counts {
        if let Some(value) = value {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
            *slot = value;
        }
    }
    Ok(polling)
}

/// The rule a configuration built in code must also keep.
pub fn validate(polling: &PollingConfig) -> Result<(), ConfigError> {
    if polling.hold >= CLIENT_POLL_TIMEOUT {
        return Err(invalid(
            "polling.hold",
            format!(
                "must be below {} s: botframework-directlinejs abandons a poll after {} s (10s is a good value)",
                CLIENT_POLL_TIMEOUT.as_secs(),
                CLIENT_POLL_TIMEOUT.as_secs()
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(hold: &str) -> FilePolling {
        FilePolling {
            hold: Some(hold.to_owned()),
            ..FilePolling::default()
        }
    }

    #[test]
    fn off_by_default_and_hold_must_stay_below_the_client_timeout() {
        assert!(!section(None).unwrap().enabled());
        assert_eq!(
            section(Some(file("10s"))).unwrap().hold,
            Duration::from_secs(10)
        );
        for refused in ["20s", "1m", "ten"] {
            let error = section(Some(file(refused))).unwrap_err().to_string();
            assert!(error.contains("polling.hold"), "{error}");
        }
    }

    #[test]
    fn bounds_must_be_positive() {
        let zero = FilePolling {
            max_held_per_ip: Some(0),
            ..FilePolling::default()
        };
        let error = section(Some(zero)).unwrap_err().to_string();
        assert!(error.contains("polling.max_held_per_ip"), "{error}");
    }
}
