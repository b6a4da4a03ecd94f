//! Full-jitter exponential backoff inside a total time budget.

use std::time::Duration;

/// Delay before retry number `attempt` (1-based): uniform in `[0, min(max, base·2^(attempt-1))]`.
/// Full jitter spreads a reconnect storm (every conversation dropped at once) across the
/// window instead of synchronising it. Attempt 0 is the first try and waits nothing, so a
/// single drop resumes at once.
pub fn delay(attempt: u32, base: Duration, max: Duration, random_unit: f64) -> Duration {
    if attempt == 0 {
        return Duration::ZERO;
    }
    let exponent = (attempt - 1).min(30);
    let ceiling = base.saturating_mul(1u32 << exponent).min(max);
    ceiling.mul_f64(random_unit.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(10);

    #[test]
    fn first_attempt_is_immediate() {
        assert_eq!(delay(0, BASE, MAX, 1.0), Duration::ZERO);
    }

    #[test]
    fn ceiling_doubles_then_caps() {
        assert_eq!(delay(1, BASE, MAX, 1.0), Duration::from_millis(100));
        assert_eq!(delay(2, BASE, MAX, 1.0), Duration::from_millis(200));
        assert_eq!(delay(4, BASE, MAX, 1.0), Duration::from_millis(800));
        assert_eq!(delay(8, BASE, MAX, 1.0), MAX);
        assert_eq!(delay(u32::MAX, BASE, MAX, 1.0), MAX);
    }

    #[test]
    fn jitter_stays_inside_the_window() {
        assert_eq!(delay(3, BASE, MAX, 0.0), Duration::ZERO);
        assert_eq!(delay(3, BASE, MAX, 0.5), Duration::from_millis(200));
        assert_eq!(delay(3, BASE, MAX, 7.0), Duration::from_millis(400));
    }
}
