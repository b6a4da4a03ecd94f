//! The life of upstream Direct Line tokens as the gateway believes it (PROTOCOL §0.4, §1.3).

use serde_json::{Map, Value};

use super::context::RequestContext;
use crate::gateway::Gateway;

/// The longest life the gateway believes of a Direct Line token: what the service issues
/// (PROTOCOL §0.4), and tokens cannot be given a longer one (PROTOCOL §1.3). A gateway token never
/// claims to outlive the Direct Line token it wraps.
pub const MAX_UPSTREAM_TOKEN_LIFETIME: u64 = 3600;

/// The life assumed when upstream gives no usable `expires_in`: the real one (PROTOCOL §0.4).
pub const DEFAULT_UPSTREAM_TOKEN_LIFETIME: u64 = 3600;

/// `expires_in` of an upstream token answer, within 1..=[`MAX_UPSTREAM_TOKEN_LIFETIME`];
/// every value that was not already there is counted.
pub(crate) fn upstream_lifetime(
    gateway: &Gateway,
    ctx: &RequestContext,
    json: &Map<String, Value>,
) -> u64 {
    let (seconds, clamped) = clamp_lifetime(json.get("expires_in"));
    if clamped {
        gateway
            .metrics
            .lifetimes_clamped
            .with_label_values(&[&ctx.bot.name])
            .inc();
    }
    seconds
}

/// An upstream `expires_in` clamped to Direct Line's range: above the maximum → the
/// maximum; missing, zero, negative, fractional or not a number → the default. The flag
/// says whether the value was changed.
pub(crate) fn clamp_lifetime(value: Option<&Value>) -> (u64, bool) {
    match value.and_then(Value::as_u64) {
        Some(seconds @ 1..=MAX_UPSTREAM_TOKEN_LIFETIME) => (seconds, false),
        Some(0) | None => (DEFAULT_UPSTREAM_TOKEN_LIFETIME, true),
        Some(_) => (MAX_UPSTREAM_TOKEN_LIFETIME, true),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn upstream_lifetimes_are_clamped_to_direct_lines_range() {
        for (value, expected) in [
            (json!(3600), (3600, false)),
            (json!(1), (1, false)),
            (json!(1_000_000_000_000u64), (3600, true)),
            (json!(u64::MAX), (3600, true)),
            (json!(-5), (3600, true)),
            (json!(i64::MIN), (3600, true)),
            (json!(3599.5), (3600, true)),
            (json!(1e300), (3600, true)),
            (json!("3600"), (3600, true)),
            (Value::Null, (3600, true)),
        ] {
            assert_eq!(clamp_lifetime(Some(&value)), expected, "{value}");
        }
        // Zero is not a life: the default, like a missing value.
        assert_eq!(clamp_lifetime(Some(&json!(0))), (3600, true));
        assert_eq!(clamp_lifetime(None), (3600, true));
    }
}
