//! The settings a gateway serves with: the snapshot a reload swaps whole ([`Live`]) and the
//! bots in it ([`Bot`]), each with its upstream client and policy. They sit with the upstream
//! layer (ARCHITECTURE §9): a bot holds its upstream and policy, and the upstream call path
//! takes the bot. [`LiveSettings`] is how the upstream's background tasks read the current
//! snapshot from the app state above them.

use std::sync::Arc;

use arc_swap::Guard;

use crate::config::{BotConfig, Config};
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::upstream::base::{DirectlineBase, Environment};

/// Everything a reload (SIGHUP) may change, swapped whole: a request or a reconnect loads it
/// once and sees one consistent configuration, secret and key set, while sockets stay up.
pub struct Live {
    pub config: Config,
    pub sealer: Arc<Sealer>,
    /// Token keys replaced by earlier reloads and the Unix second each stops opening tokens.
    pub retired_keys: Vec<(Secret, u64)>,
    /// Most specific first (see [`Live::bot_for`]).
    pub bots: Vec<Arc<Bot>>,
}

/// One bot as it serves now: its settings, its secret and its upstream client.
pub struct Bot {
    /// Metric label, log field, and the name tokens and tickets are bound to.
    pub name: Arc<str>,
    pub settings: BotConfig,
    /// The Direct Line secret injected upstream (the emulator's own in embedded mode).
    /// `None` only for a Copilot Studio agent whose token endpoint hands out tokens: then
    /// no call ever carries a secret.
    pub secret: Option<Secret>,
    /// Kept across reloads that do not change the upstream, so its connection pool survives.
    pub upstream: DirectlineBase,
    /// Signed-in mode (`[auth]`); kept across reloads that leave it unchanged, so its
    /// cached keys survive.
    pub identity: Option<Arc<crate::identity::Identity>>,
    /// The Copilot Studio environment of a bot with a `token_endpoint`.
    pub environment: Option<Arc<Environment>>,
    /// The activity policy (`[policy]`); kept across reloads that leave it unchanged, so
    /// its verdict cache and webhook connections survive.
    pub policy: Option<Arc<crate::policy::Policy>>,
    /// Whether Direct Line accepts `secret` (fresh with each reload, which checks it again).
    pub credential: crate::credential::CredentialState,
}

impl Bot {
    /// The token endpoint mints this bot's tokens (a Copilot Studio agent without web
    /// channel security, so without a secret).
    pub fn token_endpoint_mints(&self) -> Option<&Environment> {
        self.environment
            .as_deref()
            .filter(|_| self.secret.is_none())
    }
}

impl Live {
    /// The bot serving a request for `host` (without port, any case) and `path`: a bot bound
    /// to the host before one for any host, then the longest path prefix.
    pub fn bot_for(&self, host: Option<&str>, path: &str) -> Option<&Arc<Bot>> {
        self.bots.iter().find(|bot| {
            let settings = &bot.settings;
            let host_matches = settings
                .host
                .as_deref()
                .is_none_or(|wanted| host.is_some_and(|h| h.eq_ignore_ascii_case(wanted)));
            host_matches && under_prefix(path, &settings.path_prefix)
        })
    }

    pub fn bot(&self, name: &str) -> Option<&Arc<Bot>> {
        self.bots.iter().find(|bot| &*bot.name == name)
    }
}

/// Orders bots so the first whose host and prefix match is the most specific one.
pub fn most_specific_first(bots: &mut [Arc<Bot>]) {
    bots.sort_by(|a, b| {
        let (a, b) = (&a.settings, &b.settings);
        b.host
            .is_some()
            .cmp(&a.host.is_some())
            .then(b.path_prefix.len().cmp(&a.path_prefix.len()))
    });
}

/// `/bots/a/v3/…` is under `/bots/a`; `/bots/ab/…` is not.
fn under_prefix(path: &str, prefix: &str) -> bool {
    path.strip_prefix(prefix)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The current settings and what a background task needs beside them, as the app state
/// (`Gateway`) provides them to the layers below it.
pub trait LiveSettings: Send + Sync {
    /// The current settings, for one round of work (not held across a wait).
    fn live(&self) -> Guard<Arc<Live>>;
    /// The current settings as an owned handle, for work that outlives a borrow.
    fn live_owned(&self) -> Arc<Live>;
    fn metrics(&self) -> &Metrics;
    /// The gateway is stopping: background work should not start anything new.
    fn is_draining(&self) -> bool;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_match_whole_segments() {
        assert!(under_prefix(
            "/bots/a/v3/directline/tokens/generate",
            "/bots/a"
        ));
        assert!(under_prefix("/bots/a", "/bots/a"));
        assert!(under_prefix("/v3/directline/conversations", ""));
        assert!(!under_prefix("/bots/ab/v3/directline", "/bots/a"));
        assert!(!under_prefix("/v3/directline", "/bots/a"));
    }
}
