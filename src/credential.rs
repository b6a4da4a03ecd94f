//! Whether Direct Line accepts a bot's secret, as the last call made with it said.
//!
//! A wrong or rotated-away secret makes every call fail with 401/403 while the process looks
//! healthy: this state is what turns that into an unready pod (`/readyz`), one ERROR line
//! per change, and `upstream_credential_refusals_total{bot}`. Only answers to calls made
//! with the secret count; a network error or a 5xx says nothing about the secret and
//! changes nothing (an outage of Direct Line must not take every replica out of service).

use std::sync::atomic::{AtomicBool, Ordering};

/// One bot's credential as Direct Line last judged it. A bot built by a reload starts
/// unjudged (accepted) and is checked again, so a corrected secret is ready at once.
#[derive(Debug, Default)]
pub struct CredentialState {
    refused: AtomicBool,
}

/// What an answer to a call made with the secret changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Refused now, accepted before: the moment to log the ERROR.
    NowRefused,
    /// Accepted now, refused before.
    NowAccepted,
    /// Same as before (or an answer that says nothing about the secret).
    Unchanged,
}

impl CredentialState {
    pub fn is_refused(&self) -> bool {
        self.refused.load(Ordering::Relaxed)
    }

    /// Records the status Direct Line answered a call carrying the secret with: 401 and
    /// 403 refuse it, any 2xx accepts it, anything else (404, 429, 5xx) says nothing.
    /// One atomic load on the hot path when nothing changes.
    pub fn observe(&self, status: u16) -> Change {
        let refused = match status {
            401 | 403 => true,
            200..=299 => false,
            _ => return Change::Unchanged,
        };
        if self.refused.load(Ordering::Relaxed) == refused {
            return Change::Unchanged;
        }
        match (self.refused.swap(refused, Ordering::Relaxed), refused) {
            (false, true) => Change::NowRefused,
            (true, false) => Change::NowAccepted,
            _ => Change::Unchanged,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_and_successes_flip_it_and_other_answers_do_not() {
        let state = CredentialState::default();
        assert!(!state.is_refused());
        assert_eq!(state.observe(500), Change::Unchanged);
        assert_eq!(state.observe(404), Change::Unchanged);
        assert_eq!(state.observe(403), Change::NowRefused);
        assert_eq!(state.observe(401), Change::Unchanged);
        assert!(state.is_refused());
        assert_eq!(state.observe(503), Change::Unchanged);
        assert!(state.is_refused(), "an outage changes nothing");
        assert_eq!(state.observe(200), Change::NowAccepted);
        assert!(!state.is_refused());
    }
}
