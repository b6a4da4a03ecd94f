//! The check of each bot's Direct Line secret at start and after each reload, so a wrong
//! secret makes the pod unready before the first user meets it (see `crate::credential`
//! for what the answers change, and docs/DESIGN-NOTES.md for why `tokens/generate`).

use std::sync::{Arc, Weak};
use std::time::Duration;

use http::Method;
use tokio::sync::oneshot;

use super::call::{Credential, UpstreamCall};
use crate::config::UpstreamTarget;
use crate::live::{Bot, LiveSettings};

/// The call that checks a secret: documented, answered by Direct Line itself without
/// reaching the bot or starting a conversation, and 401/403 for a secret it does not know.
const CHECK_PATH: &str = "/v3/directline/tokens/generate";
/// Between attempts whose answer said nothing about the secret (no connection, 5xx, a
/// Copilot Studio host not discovered yet): doubling from the first, up to the last.
const RETRY_FIRST: Duration = Duration::from_secs(1);
const RETRY_MAX: Duration = Duration::from_secs(60);
/// While Direct Line refuses the secret, it is asked again this often: a refusal that was
/// Direct Line's mistake heals by itself, and the refusal counter keeps rising while the
/// pod, unready, gets no traffic that would count it (what the alert rule relies on).
const RECHECK_REFUSED: Duration = Duration::from_secs(60);

/// Checks every bot of the current settings that holds a secret (not an embedded
/// emulator's, which the gateway made itself). Waits, at most `bound`, for each first
/// answer, so a gateway that starts with a wrong secret is unready from its first probe.
/// The checks go on in the background until Direct Line accepts the secret (a refused one
/// is asked again every minute, an unanswered one with backoff) or a reload replaces their
/// bot.
pub async fn check_all(gateway: &Arc<impl LiveSettings + 'static>, bound: Duration) {
    let bots: Vec<Arc<Bot>> = gateway
        .live()
        .bots
        .iter()
        .filter(|bot| bot.secret.is_some() && bot.settings.upstream != UpstreamTarget::Embedded)
        .cloned()
        .collect();
    let mut first_answers = Vec::with_capacity(bots.len());
    for bot in bots {
        let (answered, first_answer) = oneshot::channel();
        first_answers.push(first_answer);
        let weak = Arc::downgrade(gateway);
        tokio::spawn(check(weak, bot, answered));
    }
    let _ = tokio::time::timeout(bound, async {
        for first_answer in first_answers {
            let _ = first_answer.await;
        }
    })
    .await;
}

/// One bot's check. Holds the gateway weakly: a stopped gateway ends it.
async fn check(gateway: Weak<dyn LiveSettings>, bot: Arc<Bot>, answered: oneshot::Sender<()>) {
    let mut answered = Some(answered);
    let mut delay = RETRY_FIRST;
    loop {
        let Some(gateway) = gateway.upgrade() else {
            return;
        };
        let (current, timeout, limit) = {
            let live = gateway.live();
            (
                live.bots.iter().any(|b| Arc::ptr_eq(b, &bot)),
                live.config.timeouts.default,
                live.config.limits.upstream_error_body_bytes,
            )
        };
        if !current || gateway.is_draining() {
            return;
        }
        let call = UpstreamCall::new(
            &bot,
            Method::POST,
            CHECK_PATH,
            Credential::Secret,
            "credential_check",
            timeout,
            limit,
        );
        // The call path judged the answer already (`call::judge_secret`); here only what
        // to do next.
        let status = match call.send(gateway.metrics()).await {
            Ok(reply) => Some(reply.answer.status()),
            Err(_) => None,
        };
        if let Some(answered) = answered.take() {
            let _ = answered.send(());
        }
        drop(gateway);
        let wait = match status {
            Some(status) if status.is_success() => return,
            Some(status) if matches!(status.as_u16(), 401 | 403) => RECHECK_REFUSED,
            _ => {
                let wait = delay;
                delay = (delay * 2).min(RETRY_MAX);
                wait
            }
        };
        tokio::time::sleep(wait).await;
    }
}
