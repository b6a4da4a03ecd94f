//! Where a bot's Direct Line calls go: a base URL fixed by the configuration, or the one a
//! Copilot Studio environment names (ARCHITECTURE §10), which is found at run time, may be missing
//! (discovery has not succeeded yet) and may change (a re-discovery). Also the environment
//! itself: its token endpoint and the client that calls it.
//!
//! LIFECYCLE of a discovered base: empty → (discovery ok) → serving host H → (hourly, or an
//! upstream connection failure, or a reload) discovery again → serving H or H′. A failed
//! discovery never empties it: the last good host keeps serving while retries back off.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use url::Url;

use super::client::Upstream;
use crate::config::TokenEndpoint;
use crate::error::GatewayError;

/// A good answer is asked again this often: regions move rarely, but they do move.
pub const REDISCOVER_EVERY: Duration = Duration::from_secs(3600);
/// After an upstream connection failure the host is asked again, but not more often than
/// this: a Direct Line outage must not turn into a storm against the environment.
pub const SUSPECT_AFTER: Duration = Duration::from_secs(30);
/// Failed discoveries retry after 1 s, 2 s, 4 s … up to this.
pub const MAX_RETRY: Duration = Duration::from_secs(60);

/// A bot's Direct Line base.
#[derive(Clone)]
pub enum DirectlineBase {
    Fixed(Arc<Upstream>),
    Discovered(Arc<Discovered>),
}

impl DirectlineBase {
    /// The client to call now; while nothing has been discovered, the error clients get
    /// (503 with `Retry-After`, Direct Line-shaped).
    pub fn current(&self) -> Result<Arc<Upstream>, GatewayError> {
        match self {
            Self::Fixed(upstream) => Ok(upstream.clone()),
            Self::Discovered(discovered) => {
                discovered
                    .current
                    .load_full()
                    .ok_or_else(|| GatewayError::UpstreamUndiscovered {
                        retry_after_secs: discovered.retry_after_secs(Instant::now()),
                    })
            }
        }
    }

    pub fn discovered(&self) -> Option<&Arc<Discovered>> {
        match self {
            Self::Fixed(_) => None,
            Self::Discovered(discovered) => Some(discovered),
        }
    }

    /// An upstream connection failed: a discovered host may have moved.
    pub fn note_unreachable(&self) {
        if let Self::Discovered(discovered) = self {
            discovered.lock().suspect = true;
        }
    }
}

/// The discovered base and when to ask again.
#[derive(Default)]
pub struct Discovered {
    current: ArcSwapOption<Upstream>,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    /// The base `current` was built for (kept to keep its connection pool when a
    /// re-discovery names the same one).
    base: Option<Url>,
    last_attempt: Option<Instant>,
    last_success: Option<Instant>,
    /// Failed discoveries in a row.
    failures: u32,
    suspect: bool,
}

impl Discovered {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields: one left mid-update by a panic is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether a discovery should run now.
    pub fn due(&self, now: Instant) -> bool {
        let state = self.lock();
        let Some(last) = state.last_attempt else {
            return true;
        };
        let since = now.saturating_duration_since(last);
        if state.failures > 0 {
            return since >= retry_delay(state.failures);
        }
        if state.suspect && since >= SUSPECT_AFTER {
            return true;
        }
        state
            .last_success
            .is_none_or(|ok| now.saturating_duration_since(ok) >= REDISCOVER_EVERY)
    }

    /// Marks an attempt as started (so a slow one is not started twice).
    pub fn begin(&self, now: Instant) {
        let mut state = self.lock();
        state.last_attempt = Some(now);
        state.suspect = false;
    }

    /// The base discovery found; `build` makes its client, called only when the base changed.
    /// Returns whether it changed.
    pub fn succeeded(
        &self,
        base: Url,
        build: impl FnOnce(&Url) -> Result<Upstream, GatewayError>,
    ) -> Result<bool, GatewayError> {
        let mut state = self.lock();
        let changed = state.base.as_ref() != Some(&base) || self.current.load().is_none();
        if changed {
            self.current.store(Some(Arc::new(build(&base)?)));
            state.base = Some(base);
        }
        state.failures = 0;
        state.last_success = state.last_attempt;
        Ok(changed)
    }

    pub fn failed(&self) {
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
    }

    /// The base in use, if any.
    pub fn base(&self) -> Option<Url> {
        self.lock().base.clone()
    }

    /// Seconds until the next attempt, at least 1 (for `Retry-After`).
    pub fn retry_after_secs(&self, now: Instant) -> u64 {
        let state = self.lock();
        let next = match state.last_attempt {
            Some(last) if state.failures > 0 => {
                (last + retry_delay(state.failures)).saturating_duration_since(now)
            }
            _ => Duration::ZERO,
        };
        next.as_secs().max(1)
    }
}

fn retry_delay(failures: u32) -> Duration {
    let exponent = failures.saturating_sub(1).min(16);
    Duration::from_secs(1u64 << exponent).min(MAX_RETRY)
}

/// A Copilot Studio environment: the agent's token endpoint and the client to its origin
/// (token endpoint and regional channel settings; never Direct Line).
pub struct Environment {
    pub endpoint: TokenEndpoint,
    pub client: Arc<Upstream>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retries_back_off_and_success_waits_an_hour() {
        let discovered = Discovered::new();
        let t0 = Instant::now();
        assert!(discovered.due(t0), "never tried");
        discovered.begin(t0);
        discovered.failed();
        assert!(!discovered.due(t0 + Duration::from_millis(500)));
        assert!(discovered.due(t0 + Duration::from_secs(1)));
        assert_eq!(discovered.retry_after_secs(t0), 1);
        discovered.begin(t0);
        discovered.failed();
        discovered.failed();
        assert!(!discovered.due(t0 + Duration::from_secs(3)));
        assert!(discovered.due(t0 + Duration::from_secs(4)));
        for _ in 0..40 {
            discovered.failed();
        }
        assert_eq!(retry_delay(40), MAX_RETRY);
        assert!(discovered.due(t0 + MAX_RETRY));
    }

    #[test]
    fn a_suspect_host_is_asked_again_but_not_at_once() {
        let base = DirectlineBase::Discovered(Arc::new(Discovered::new()));
        let discovered = base.discovered().unwrap().clone();
        let t0 = Instant::now();
        discovered.begin(t0);
        assert!(matches!(
            base.current(),
            Err(GatewayError::UpstreamUndiscovered { .. })
        ));
        let url = Url::parse("https://europe.directline.botframework.com/").unwrap();
        let build = |url: &Url| {
            let tls = super::super::client::tls_client_config(None).unwrap();
            Upstream::new(url, Duration::from_secs(1), tls)
        };
        assert!(discovered.succeeded(url.clone(), build).unwrap());
        let first = base.current().unwrap();
        assert!(!discovered.due(t0 + Duration::from_secs(60)));
        // The same answer again keeps the client (and its connection pool).
        assert!(!discovered.succeeded(url, build).unwrap());
        assert!(Arc::ptr_eq(&first, &base.current().unwrap()));
        base.note_unreachable();
        assert!(!discovered.due(t0 + Duration::from_secs(1)));
        assert!(discovered.due(t0 + SUSPECT_AFTER));
    }
}
