//! `[stream]`: the WebSocket bridge's keepalives, reconnects, buffers, drain and sharing a
//! conversation with another replica. (`streaming` is the livestreamed answers' `delivery_mode`.)

use std::time::Duration;

use super::StreamConfig;
use super::errors::{ConfigError, invalid};
use super::file::FileStream;
use super::values::{set_duration, set_usize};

/// `[stream]`, each key checked on its own; [`validate`] checks them against each other.
pub(super) fn section(s: FileStream) -> Result<StreamConfig, ConfigError> {
    let mut stream = StreamConfig::default();
    set_duration(
        &mut stream.keepalive_interval,
        "stream.keepalive_interval",
        s.keepalive_interval,
    )?;
    set_duration(
        &mut stream.liveness_timeout,
        "stream.liveness_timeout",
        s.liveness_timeout,
    )?;
    set_duration(
        &mut stream.resume_budget,
        "stream.resume_budget",
        s.resume_budget,
    )?;
    set_duration(
        &mut stream.backoff_base,
        "stream.backoff_base",
        s.backoff_base,
    )?;
    set_duration(&mut stream.backoff_max, "stream.backoff_max", s.backoff_max)?;
    set_duration(&mut stream.linger, "stream.linger", s.linger)?;
    set_duration(
        &mut stream.pong_timeout,
        "stream.pong_timeout",
        s.pong_timeout,
    )?;
    set_duration(
        &mut stream.drain_period,
        "stream.drain_period",
        s.drain_period,
    )?;
    set_duration(
        &mut stream.drain_spread,
        "stream.drain_spread",
        s.drain_spread,
    )?;
    // Sharing a conversation with another replica.
    set_duration(
        &mut stream.collision_poll_interval,
        "stream.collision_poll_interval",
        s.collision_poll_interval,
    )?;
    set_duration(
        &mut stream.collision_retry_base,
        "stream.collision_retry_base",
        s.collision_retry_base,
    )?;
    set_duration(
        &mut stream.collision_retry_max,
        "stream.collision_retry_max",
        s.collision_retry_max,
    )?;
    set_duration(
        &mut stream.chunk_interval,
        "stream.chunk_interval",
        s.chunk_interval,
    )?;
    set_usize(
        &mut stream.client_unsent_bytes,
        "stream.client_unsent_bytes",
        s.client_unsent_bytes,
    )?;
    set_usize(&mut stream.max_frame_bytes, "stream.max_frame", s.max_frame)?;
    set_usize(
        &mut stream.buffer_bytes,
        "stream.buffer_bytes",
        s.buffer_bytes,
    )?;
    set_usize(
        &mut stream.buffer_total_bytes,
        "stream.buffer_total_bytes",
        s.buffer_total_bytes,
    )?;
    set_usize(
        &mut stream.ws_read_buffer_bytes,
        "stream.ws_read_buffer",
        s.ws_read_buffer,
    )?;
    if let Some(guard) = s.guard_against_replays {
        stream.guard_against_replays = guard;
    }
    let counts = [
        (
            &mut stream.buffer_frames,
            s.buffer_frames,
            "stream.buffer_frames",
        ),
        (
            &mut stream.delivered_ids,
            s.delivered_ids,
            "stream.delivered_ids",
        ),
        (
            &mut stream.client_lag_frames,
            s.client_lag_frames,
            "stream.client_lag_frames",
        ),
        (
            &mut stream.max_sockets_per_conversation,
            s.max_sockets_per_conversation,
            "stream.max_sockets_per_conversation",
        ),
    ];
    for (slot, value, key) in counts {
        if let Some(value) = value {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
            *slot = value;
        }
    }
    Ok(stream)
}

/// The checks between `[stream]`'s keys.
pub(super) fn validate(s: &StreamConfig) -> Result<(), ConfigError> {
    if s.liveness_timeout <= s.keepalive_interval {
        return Err(invalid(
            "stream.liveness_timeout",
            "must be longer than stream.keepalive_interval",
        ));
    }
    if s.pong_timeout.is_zero() {
        return Err(invalid("stream.pong_timeout", "must be above 0"));
    }
    if s.buffer_bytes == 0 || s.buffer_total_bytes < s.buffer_bytes {
        return Err(invalid(
            "stream.buffer_total_bytes",
            "must be at least stream.buffer_bytes, which must be above 0",
        ));
    }
    if s.backoff_base.is_zero() || s.backoff_max < s.backoff_base {
        return Err(invalid(
            "stream.backoff_max",
            "must be at least stream.backoff_base, which must be above 0",
        ));
    }
    if s.collision_poll_interval < Duration::from_millis(100) {
        return Err(invalid(
            "stream.collision_poll_interval",
            "must be at least 100ms",
        ));
    }
    if s.collision_retry_base.is_zero() || s.collision_retry_max < s.collision_retry_base {
        return Err(invalid(
            "stream.collision_retry_max",
            "must be at least stream.collision_retry_base, which must be above 0",
        ));
    }
    if s.ws_read_buffer_bytes < 512 {
        return Err(invalid("stream.ws_read_buffer", "must be at least 512B"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_str;

    /// Replicas sharing a conversation (`stream::collision`): read, and refused when the
    /// poll would hammer Direct Line or the retry schedule makes no sense.
    #[test]
    fn collision_settings_are_read_and_checked() {
        let config = load_str(
            "[stream]\ncollision_poll_interval = \"250ms\"\ncollision_retry_base = \"2s\"\ncollision_retry_max = \"30s\"",
            &[],
        )
        .unwrap();
        assert_eq!(
            config.stream.collision_poll_interval,
            Duration::from_millis(250)
        );
        assert_eq!(config.stream.collision_retry_base, Duration::from_secs(2));
        assert_eq!(config.stream.collision_retry_max, Duration::from_secs(30));
        for bad in [
            "collision_poll_interval = \"50ms\"",
            "collision_retry_base = \"0s\"",
            "collision_retry_base = \"2m\"\ncollision_retry_max = \"1m\"",
        ] {
            let err = load_str(&format!("[stream]\n{bad}"), &[]).unwrap_err();
            assert!(
                err.to_string().contains("stream.collision_"),
                "{bad}: {err}"
            );
        }
    }
}
