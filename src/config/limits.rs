//! `[limits]` (what a client may send and hold: body, URL and header sizes, connections, read
//! deadlines) and `[timeouts]` (how long an upstream call may take).

use std::ops::RangeInclusive;

use super::errors::{ConfigError, invalid};
use super::file::{FileLimits, FileTimeouts};
use super::values::{set_duration, set_size, set_usize};
use super::{Limits, Timeouts};

/// What `limits.upstream_error_body` may be. The top is the ceiling on any upstream JSON
/// answer (`upstream::answer_body::MAX_UPSTREAM_JSON`), stated here and pinned by a test rather than
/// imported: the configuration sits below the upstream client, which reads it.
const UPSTREAM_ERROR_BODY: RangeInclusive<usize> = 1024..=1024 * 1024;

/// `[limits]`, each key checked on its own.
pub(super) fn section(l: FileLimits) -> Result<Limits, ConfigError> {
    let mut limits = Limits::default();
    set_size(
        &mut limits.activity_body_bytes,
        "limits.activity_body",
        l.activity_body,
    )?;
    set_size(
        &mut limits.upload_body_bytes,
        "limits.upload_body",
        l.upload_body,
    )?;
    set_size(
        &mut limits.token_body_bytes,
        "limits.token_body",
        l.token_body,
    )?;
    set_usize(
        &mut limits.upstream_error_body_bytes,
        "limits.upstream_error_body",
        l.upstream_error_body,
    )?;
    if !UPSTREAM_ERROR_BODY.contains(&limits.upstream_error_body_bytes) {
        return Err(invalid(
            "limits.upstream_error_body",
            "must be 1KiB to 1MiB",
        ));
    }
    set_usize(&mut limits.max_url_bytes, "limits.max_url", l.max_url)?;
    set_usize(
        &mut limits.max_header_bytes,
        "limits.max_headers",
        l.max_headers,
    )?;
    set_duration(
        &mut limits.header_read_timeout,
        "limits.header_read_timeout",
        l.header_read_timeout,
    )?;
    set_duration(
        &mut limits.http2_idle_timeout,
        "limits.http2_idle_timeout",
        l.http2_idle_timeout,
    )?;

    if let Some(max) = l.max_connections {
        if max == 0 {
            return Err(invalid("limits.max_connections", "must be at least 1"));
        }
        limits.max_connections = max;
    }
    if let Some(max) = l.max_connections_per_ip {
        limits.max_connections_per_ip = max;
    }
    for (slot, key, value) in [
        (
            &mut limits.body_read_timeout,
            "limits.body_read_timeout",
            l.body_read_timeout,
        ),
        (
            &mut limits.upload_read_timeout,
            "limits.upload_read_timeout",
            l.upload_read_timeout,
        ),
    ] {
        set_duration(slot, key, value)?;
        if slot.is_zero() {
            return Err(invalid(key, "must be above 0"));
        }
    }
    if let Some(count) = l.max_header_count {
        if !(8..=1000).contains(&count) {
            return Err(invalid("limits.max_header_count", "must be 8 to 1000"));
        }
        limits.max_header_count = count;
    }
    if limits.max_header_bytes < 1024 {
        return Err(invalid("limits.max_headers", "must be at least 1KiB"));
    }
    if limits.max_url_bytes < 256 {
        return Err(invalid("limits.max_url", "must be at least 256B"));
    }
    Ok(limits)
}

pub(super) fn timeouts(t: FileTimeouts) -> Result<Timeouts, ConfigError> {
    let mut timeouts = Timeouts::default();
    set_duration(&mut timeouts.connect, "timeouts.connect", t.connect)?;
    set_duration(&mut timeouts.default, "timeouts.default", t.default)?;
    set_duration(
        &mut timeouts.activities,
        "timeouts.activities",
        t.activities,
    )?;
    set_duration(&mut timeouts.upload, "timeouts.upload", t.upload)?;
    Ok(timeouts)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load::load_str;

    #[test]
    fn upstream_error_body_limit_is_bounded() {
        assert_eq!(
            *UPSTREAM_ERROR_BODY.end(),
            crate::upstream::answer_body::MAX_UPSTREAM_JSON
        );
        let config = load_str("[limits]\nupstream_error_body = \"4KiB\"", &[]).unwrap();
        assert_eq!(config.limits.upstream_error_body_bytes, 4096);
        for bad in ["\"100\"", "\"2MiB\"", "\"lots\""] {
            let err = load_str(&format!("[limits]\nupstream_error_body = {bad}"), &[]).unwrap_err();
            assert!(
                err.to_string().contains("limits.upstream_error_body"),
                "{bad}: {err}"
            );
        }
    }
}
