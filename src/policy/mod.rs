//! The activity policy (`[policy]`): redaction and a webhook's verdict on every activity,
//! user → bot (POST, multimodal frames) and bot → user (both stream routes, `GET …/activities`).
//! A bot without a policy pays one `Option` branch per request or relayed frame.
//!
//! - `redact`: the built-in redactions (pure);
//! - `webhook`: the verdict call and its bounds;
//! - `content_safety`: Azure AI Content Safety's text analysis as a verdict.

pub mod content_safety;
pub mod redact;
pub mod webhook;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};

use serde_json::Value;

use crate::config::{OnError, PolicyConfig};
use crate::error::GatewayError;
use crate::metrics::Metrics;
use content_safety::ContentSafety;
pub use webhook::{Direction, Subject};
use webhook::{Failure, Verdict, Webhook};

/// What happens to a bot activity.
#[derive(Debug, Clone, PartialEq)]
pub enum BotVerdict {
    /// Delivered as the bot sent it.
    Deliver,
    /// Delivered as this (redacted, or the webhook's replacement with the bot's `from`).
    Replace(Arc<Value>),
    /// Not delivered; its watermark still advances.
    Withhold,
}

pub struct Policy {
    pub settings: Arc<PolicyConfig>,
    webhook: Option<Webhook>,
    content_safety: Option<ContentSafety>,
    verdicts: Mutex<VerdictCache>,
}

impl Policy {
    pub fn new(settings: Arc<PolicyConfig>) -> Result<Self, String> {
        let webhook = settings
            .webhook
            .as_ref()
            .map(|url| Webhook::new(url, &settings))
            .transpose()?;
        let content_safety = settings
            .content_safety
            .as_ref()
            .map(|cs| ContentSafety::new(cs, settings.timeout))
            .transpose()?;
        Ok(Self {
            content_safety,
            verdicts: Mutex::new(VerdictCache::new(settings.verdict_cache)),
            settings,
            webhook,
        })
    }

    /// Whether this policy can be kept across a reload to `settings` (its cache and pool).
    pub fn serves(&self, settings: &PolicyConfig) -> bool {
        *self.settings == *settings
    }

    /// A user's activity (already bound to the user by `activity_body::bind_sender`):
    /// the bytes to send upstream, or the refusal. Unchanged bytes when nothing applies.
    pub async fn screen_user(
        &self,
        metrics: &Metrics,
        subject: Subject<'_>,
        bound: Vec<u8>,
    ) -> Result<Vec<u8>, GatewayError> {
        let mut activity: Value =
            serde_json::from_slice(&bound).map_err(|_| GatewayError::MalformedJson)?;
        let redacted = self.redact(metrics, subject.bot, &mut activity);
        if self.webhook.is_none() && self.content_safety.is_none() {
            self.count(metrics, subject.bot, Direction::User, "allowed");
            return Ok(if redacted {
                serde_json::to_vec(&activity).map_err(|error| {
                    GatewayError::internal_because("serialising the redacted activity", error)
                })?
            } else {
                bound
            });
        }
        match self.ask(metrics, Direction::User, subject, &activity).await {
            Ok(Verdict::Allow) => {
                self.count(metrics, subject.bot, Direction::User, "allowed");
            }
            Ok(Verdict::Deny) => {
                self.count(metrics, subject.bot, Direction::User, "denied");
                return Err(GatewayError::PolicyDenied);
            }
            Ok(Verdict::Replace(mut replacement)) => {
                self.count(metrics, subject.bot, Direction::User, "replaced");
                // The replacement is redacted too, and its sender bound again below.
                self.redact(metrics, subject.bot, &mut replacement);
                let text = serde_json::to_vec(&replacement).map_err(|error| {
                    GatewayError::internal_because("serialising the policy's replacement", error)
                })?;
                return crate::activity_body::bind_sender(&text, subject.user)
                    .map_err(|_| GatewayError::PolicyUnavailable);
            }
            Err(failure) => {
                self.failed(metrics, subject.bot, Direction::User, failure);
                if self.settings.on_error == OnError::Deny {
                    return Err(GatewayError::PolicyUnavailable);
                }
            }
        }
        if redacted {
            serde_json::to_vec(&activity).map_err(|error| {
                GatewayError::internal_because("serialising the redacted activity", error)
            })
        } else {
            Ok(bound)
        }
    }

    /// A bot's activity, asked once per activity id (replays and polls reuse the verdict).
    /// A failure is not remembered: the next delivery asks again.
    pub async fn screen_bot(
        &self,
        metrics: &Metrics,
        subject: Subject<'_>,
        activity: &Value,
    ) -> BotVerdict {
        let key = activity
            .get("id")
            .and_then(Value::as_str)
            .map(|id| (Arc::<str>::from(subject.conversation), Arc::<str>::from(id)));
        if let Some(key) = &key
            && let Some(known) = self.cached(key)
        {
            return known;
        }
        let mut screened = activity.clone();
        let redacted = self.redact(metrics, subject.bot, &mut screened);
        let verdict = self.ask(metrics, Direction::Bot, subject, &screened).await;
        let verdict = match verdict {
            Ok(Verdict::Allow) => {
                self.count(metrics, subject.bot, Direction::Bot, "allowed");
                if redacted {
                    BotVerdict::Replace(Arc::new(screened))
                } else {
                    BotVerdict::Deliver
                }
            }
            Ok(Verdict::Deny) => {
                self.count(metrics, subject.bot, Direction::Bot, "denied");
                BotVerdict::Withhold
            }
            Ok(Verdict::Replace(mut replacement)) => {
                self.count(metrics, subject.bot, Direction::Bot, "replaced");
                self.redact(metrics, subject.bot, &mut replacement);
                BotVerdict::Replace(Arc::new(keep_identity(activity, replacement)))
            }
            Err(failure) => {
                self.failed(metrics, subject.bot, Direction::Bot, failure);
                return match self.settings.on_error {
                    OnError::Deny => BotVerdict::Withhold,
                    OnError::Allow if redacted => BotVerdict::Replace(Arc::new(screened)),
                    OnError::Allow => BotVerdict::Deliver,
                };
            }
        };
        if let Some(key) = key {
            self.remember(key, verdict.clone());
        }
        verdict
    }

    /// Content Safety first (a deny there ends it), then the webhook; allowed when neither
    /// is configured.
    async fn ask(
        &self,
        metrics: &Metrics,
        direction: Direction,
        subject: Subject<'_>,
        activity: &Value,
    ) -> Result<Verdict, Failure> {
        if let Some(content_safety) = &self.content_safety
            && let Verdict::Deny = content_safety.analyze(metrics, direction, activity).await?
        {
            return Ok(Verdict::Deny);
        }
        match &self.webhook {
            None => Ok(Verdict::Allow),
            Some(webhook) => webhook.ask(metrics, direction, subject, activity).await,
        }
    }

    fn cached(&self, key: &(Arc<str>, Arc<str>)) -> Option<BotVerdict> {
        let cache = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        cache.map.get(key).cloned()
    }

    fn remember(&self, key: (Arc<str>, Arc<str>), verdict: BotVerdict) {
        let mut cache = self.verdicts.lock().unwrap_or_else(|e| e.into_inner());
        cache.insert(key, verdict);
    }

    /// Applies the configured redactions; true when something was replaced.
    fn redact(&self, metrics: &Metrics, bot: &str, activity: &mut Value) -> bool {
        let counts = redact::redact_activity(activity, self.settings.redact);
        for (kind, n) in [
            ("email", counts.email),
            ("phone", counts.phone),
            ("credit_card", counts.credit_card),
        ] {
            if n > 0 {
                metrics
                    .policy_redactions
                    .with_label_values(&[bot, kind])
                    .inc_by(u64::from(n));
            }
        }
        counts.total() > 0
    }

    fn count(&self, metrics: &Metrics, bot: &str, direction: Direction, outcome: &str) {
        metrics
            .policy_verdicts
            .with_label_values(&[bot, direction.as_str(), outcome])
            .inc();
    }

    fn failed(&self, metrics: &Metrics, bot: &str, direction: Direction, failure: Failure) {
        self.count(metrics, bot, direction, "failed");
        metrics
            .policy_webhook_failures
            .with_label_values(&[failure.as_str()])
            .inc();
        // Never the activity or the webhook's reason: they may carry what the user wrote.
        tracing::warn!(
            bot,
            direction = direction.as_str(),
            reason = failure.as_str(),
            "policy webhook gave no verdict"
        );
    }
}

/// A bot-side replacement keeps the original's id (its place in the conversation, the
/// watermark, duplicate suppression), `from`, `conversation`, `replyToId` and timestamp:
/// the webhook decides what is said, not who said it or where.
fn keep_identity(original: &Value, replacement: Value) -> Value {
    let Value::Object(mut replacement) = replacement else {
        return original.clone();
    };
    if let Value::Object(original) = original {
        for key in [
            "id",
            "from",
            "conversation",
            "replyToId",
            "timestamp",
            "channelId",
        ] {
            match original.get(key) {
                Some(value) => {
                    replacement.insert(key.to_owned(), value.clone());
                }
                None => {
                    replacement.remove(key);
                }
            }
        }
    }
    Value::Object(replacement)
}

/// Bot-side verdicts by (conversation, activity id), oldest forgotten first.
struct VerdictCache {
    map: HashMap<(Arc<str>, Arc<str>), BotVerdict>,
    order: VecDeque<(Arc<str>, Arc<str>)>,
    capacity: usize,
}

impl VerdictCache {
    fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    fn insert(&mut self, key: (Arc<str>, Arc<str>), verdict: BotVerdict) {
        if self.map.insert(key.clone(), verdict).is_none() {
            self.order.push_back(key);
        }
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.map.remove(&oldest);
            }
        }
    }
}

/// A Direct Line activity set (`{"activities":[…],"watermark":…}`) with each bot activity
/// screened: withheld ones removed, replaced ones swapped. `None` when nothing changed (the
/// original bytes go on). Activities from `user` were screened on their way in.
pub async fn screen_set(
    policy: &Policy,
    metrics: &Metrics,
    subject: Subject<'_>,
    text: &[u8],
) -> Option<Vec<u8>> {
    let mut set: Value = serde_json::from_slice(text).ok()?;
    let activities = set.get_mut("activities")?.as_array_mut()?;
    let mut changed = false;
    let mut kept = Vec::with_capacity(activities.len());
    for activity in activities.drain(..) {
        if !is_bot_activity(&activity, subject.user, policy.settings.screen_interims) {
            kept.push(activity);
            continue;
        }
        match policy.screen_bot(metrics, subject, &activity).await {
            BotVerdict::Deliver => kept.push(activity),
            BotVerdict::Replace(replacement) => {
                changed = true;
                kept.push(Arc::unwrap_or_clone(replacement));
            }
            BotVerdict::Withhold => changed = true,
        }
    }
    *activities = kept;
    if changed {
        serde_json::to_vec(&set).ok()
    } else {
        None
    }
}

/// A bot's activity to screen: not the user's own (screened on the way in), and not a
/// streamed interim unless `screen_interims` asks for them.
pub(crate) fn is_bot_activity(activity: &Value, user: &str, screen_interims: bool) -> bool {
    let from_user = activity
        .get("from")
        .and_then(|from| from.get("id"))
        .and_then(Value::as_str)
        .is_some_and(|id| id == user);
    if from_user {
        return false;
    }
    screen_interims || !is_interim(activity)
}

/// A livestreamed answer's interim: a `typing` activity with `streamType` other than
/// `final` in its `channelData` or in a `streaminfo` entity.
fn is_interim(activity: &Value) -> bool {
    if activity.get("type").and_then(Value::as_str) != Some("typing") {
        return false;
    }
    let stream_type = activity
        .get("channelData")
        .and_then(|c| c.get("streamType"))
        .or_else(|| {
            activity
                .get("entities")
                .and_then(Value::as_array)
                .and_then(|entities| {
                    entities
                        .iter()
                        .find(|e| e.get("type").and_then(Value::as_str) == Some("streaminfo"))
                })
                .and_then(|e| e.get("streamType"))
        })
        .and_then(Value::as_str);
    matches!(stream_type, Some("informative" | "streaming"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn replacement_keeps_who_and_where() {
        let original = json!({"id": "c|1", "from": {"id": "bot", "role": "bot"}, "text": "x"});
        let replaced = keep_identity(
            &original,
            json!({"id": "other", "from": {"id": "dl_someone_else"}, "text": "safe"}),
        );
        assert_eq!(replaced["id"], "c|1");
        assert_eq!(replaced["from"]["id"], "bot");
        assert_eq!(replaced["text"], "safe");
    }

    #[test]
    fn cache_is_bounded() {
        let mut cache = VerdictCache::new(2);
        for id in ["a", "b", "c"] {
            cache.insert((Arc::from("c"), Arc::from(id)), BotVerdict::Withhold);
        }
        assert_eq!(cache.map.len(), 2);
        assert!(!cache.map.contains_key(&(Arc::from("c"), Arc::from("a"))));
    }

    #[test]
    fn interims_are_typing_with_a_stream_type() {
        let interim = json!({"type": "typing", "channelData": {"streamType": "streaming"}});
        let last = json!({"type": "message", "channelData": {"streamType": "final"}});
        assert!(is_interim(&interim));
        assert!(!is_interim(&last));
        assert!(!is_bot_activity(&interim, "dl_u", false));
        assert!(is_bot_activity(&interim, "dl_u", true));
        assert!(!is_bot_activity(
            &json!({"type": "message", "from": {"id": "dl_u"}}),
            "dl_u",
            false
        ));
    }
}
