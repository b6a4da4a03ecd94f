//! Keeping a hub's upstream token alive for a bot without a secret (a Copilot Studio
//! agent's token endpoint, ARCHITECTURE §10). With a secret, a hub reconnects whatever its token
//! did; without one, reconnecting needs a live conversation token, and a conversation can
//! outlast one (Direct Line tokens live an hour). So the hub refreshes its own, and a
//! client's `tokens/refresh` through the gateway hands the hub a fresh one too.
//!
//! LIFECYCLE: refresh at once (the hub does not know how much its token has left) → wait
//! half the fresh token's life → refresh … until the hub is gone. A refused refresh (the
//! token already expired) stops it: the hub's next reconnect fails, and its clients must
//! start again (their resume is `ResumeUnavailable` too).

use std::sync::{Arc, Weak};
use std::time::Duration;

use super::hub::Hub;
use super::link::{self, RefreshError};
use crate::gateway::Gateway;

/// A failed refresh (not a refusal) is tried again this soon.
const RETRY: Duration = Duration::from_secs(5);

/// Runs until the hub is dropped or retired. Holds the hub weakly: a retired hub's ring is
/// freed at once, not after this task's next wake.
pub async fn keep_token_alive(gateway: Arc<Gateway>, hub: Weak<Hub>) {
    let mut wait = Duration::ZERO;
    loop {
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let Some(hub) = hub.upgrade() else {
            return;
        };
        if hub.is_retired() {
            return;
        }
        let token = hub.upstream_token();
        wait = match link::refresh_token(&gateway, &hub.bot, &token).await {
            Ok((fresh, lifetime)) => {
                hub.set_upstream_token(&fresh);
                next_refresh(lifetime)
            }
            Err(RefreshError::Refused) => {
                tracing::info!(bot = &*hub.bot, conversation = %hub.conversation, "upstream token refused on refresh; the hub cannot reconnect once its socket drops");
                return;
            }
            Err(RefreshError::BotRemoved) => return,
            Err(RefreshError::Retry) => RETRY,
        };
    }
}

/// Half a token's life: early enough that one failed refresh still leaves time for more.
fn next_refresh(lifetime_secs: u64) -> Duration {
    Duration::from_millis(lifetime_secs.saturating_mul(500)).max(Duration::from_millis(500))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refreshes_at_half_life() {
        assert_eq!(next_refresh(3600), Duration::from_secs(1800));
        assert_eq!(next_refresh(4), Duration::from_secs(2));
        assert_eq!(next_refresh(0), Duration::from_millis(500));
    }
}
