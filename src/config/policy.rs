//! `[policy]` and `[bots.policy]`: the activity policy a bot's traffic passes through (a
//! webhook's verdict, built-in redaction), with the bounds that keep a slow webhook from
//! holding the gateway. `[policy]` at the top level applies to every bot that has no
//! `[bots.policy]` of its own.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;
use url::Url;

use super::errors::{ConfigError, invalid};
use super::values::{parse_duration, parse_size};
use crate::secret::Secret;

/// `[policy.content_safety]`: Azure AI Content Safety's text analysis as a built-in verdict.
#[derive(Debug, Clone, PartialEq)]
pub struct ContentSafetyConfig {
    /// The resource's endpoint, `https://NAME.cognitiveservices.azure.com`.
    pub endpoint: Url,
    /// Sent as `Ocp-Apim-Subscription-Key`; read from `key_file`.
    pub key: Secret,
    /// Deny when any category's severity is at or above this (0 to 7; the service answers
    /// 0, 2, 4 or 6 on its default scale).
    pub threshold: u8,
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileContentSafety {
    pub endpoint: String,
    pub key_file: PathBuf,
    pub threshold: Option<u8>,
}

/// What a webhook that fails (unreachable, timeout, bad answer, queue full) means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnError {
    /// A user activity is refused (503 PolicyUnavailable) and a bot activity withheld.
    Deny,
    /// The activity goes on as if the webhook had allowed it.
    Allow,
}

/// The built-in redactions, each applied to an activity's text before anything else sees it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Redactions {
    pub email: bool,
    pub phone: bool,
    /// Digit runs of 13 to 19 digits that pass the Luhn check.
    pub credit_card: bool,
}

impl Redactions {
    pub fn any(self) -> bool {
        self.email || self.phone || self.credit_card
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct PolicyConfig {
    /// Asked for a verdict on each activity (POST, JSON); `None`: redaction only.
    pub webhook: Option<Url>,
    /// The whole webhook call, its wait for a free slot included.
    pub timeout: Duration,
    pub on_error: OnError,
    pub redact: Redactions,
    /// Screen streamed interim activities too (then only screened finals are delivered).
    pub screen_interims: bool,
    /// Webhook calls in flight at once, per replica.
    pub concurrency: usize,
    /// Activities waiting for a webhook slot, per replica; past it a call fails at once.
    pub queue: usize,
    /// The largest webhook request body; a larger activity counts as a failed call.
    pub max_body_bytes: usize,
    /// Bot-side verdicts remembered by activity id, so replays and polls ask once.
    pub verdict_cache: usize,
    /// Azure AI Content Safety, asked before the webhook (either may deny).
    pub content_safety: Option<ContentSafetyConfig>,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        Self {
            webhook: None,
            timeout: Duration::from_secs(2),
            on_error: OnError::Deny,
            redact: Redactions::default(),
            screen_interims: false,
            concurrency: 64,
            queue: 1024,
            max_body_bytes: 64 * 1024,
            verdict_cache: 10_000,
            content_safety: None,
        }
    }
}

#[derive(Debug, Default, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilePolicy {
    pub webhook: Option<String>,
    pub timeout: Option<String>,
    pub on_error: Option<String>,
    #[serde(default)]
    pub redact: Vec<String>,
    pub screen_interims: Option<bool>,
    pub concurrency: Option<usize>,
    pub queue: Option<usize>,
    pub max_body: Option<String>,
    pub verdict_cache: Option<usize>,
    pub content_safety: Option<FileContentSafety>,
}

/// The section as the gateway runs it; every value is checked.
pub fn section(file: FilePolicy) -> Result<PolicyConfig, ConfigError> {
    let defaults = PolicyConfig::default();
    let webhook = match file.webhook {
        None => None,
        Some(text) => {
            let url = Url::parse(&text)
                .ok()
                .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
                .ok_or_else(|| invalid("policy.webhook", "must be an http:// or https:// URL"))?;
            Some(url)
        }
    };
    let timeout = match file.timeout {
        None => defaults.timeout,
        Some(text) => parse_duration(&text)
            .filter(|d| !d.is_zero())
            .ok_or_else(|| invalid("policy.timeout", "must be a duration above 0 like 2s"))?,
    };
    let on_error = match file.on_error.as_deref() {
        None => defaults.on_error,
        Some("deny") => OnError::Deny,
        Some("allow") => OnError::Allow,
        Some(_) => return Err(invalid("policy.on_error", "must be \"deny\" or \"allow\"")),
    };
    let mut redact = Redactions::default();
    for name in &file.redact {
        match name.as_str() {
            "email" => redact.email = true,
            "phone" => redact.phone = true,
            "credit_card" => redact.credit_card = true,
            _ => {
                return Err(invalid(
                    "policy.redact",
                    format!("{name:?} is not one of \"email\", \"phone\", \"credit_card\""),
                ));
            }
        }
    }
    let bounded = |key: &'static str, value: Option<usize>, default: usize| match value {
        None => Ok(default),
        Some(n) if (1..=1_000_000).contains(&n) => Ok(n),
        Some(_) => Err(invalid(key, "must be 1 to 1000000")),
    };
    let max_body_bytes = match file.max_body {
        None => defaults.max_body_bytes,
        Some(text) => parse_size(&text)
            .filter(|n| (1024..=16 * 1024 * 1024).contains(n))
            .ok_or_else(|| invalid("policy.max_body", "must be a size from 1KiB to 16MiB"))?
            as usize,
    };
    let content_safety = file.content_safety.map(content_safety).transpose()?;
    Ok(PolicyConfig {
        content_safety,
        webhook,
        timeout,
        on_error,
        redact,
        screen_interims: file.screen_interims.unwrap_or(false),
        concurrency: bounded("policy.concurrency", file.concurrency, defaults.concurrency)?,
        queue: bounded("policy.queue", file.queue, defaults.queue)?,
        max_body_bytes,
        verdict_cache: bounded(
            "policy.verdict_cache",
            file.verdict_cache,
            defaults.verdict_cache,
        )?,
    })
}

fn content_safety(file: FileContentSafety) -> Result<ContentSafetyConfig, ConfigError> {
    let endpoint = Url::parse(&file.endpoint)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .ok_or_else(|| {
            invalid(
                "policy.content_safety.endpoint",
                "must be the resource's https:// endpoint",
            )
        })?;
    let key = std::fs::read_to_string(&file.key_file).map_err(|source| ConfigError::Read {
        path: file.key_file.clone(),
        source,
    })?;
    let key = key.trim();
    if key.is_empty() {
        return Err(invalid(
            "policy.content_safety.key_file",
            "the file is empty",
        ));
    }
    let threshold = file.threshold.unwrap_or(4);
    if threshold > 7 {
        return Err(invalid(
            "policy.content_safety.threshold",
            "must be a severity from 0 to 7",
        ));
    }
    Ok(ContentSafetyConfig {
        endpoint,
        key: Secret::new(key),
        threshold,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_values() {
        let policy = section(FilePolicy {
            webhook: Some("http://127.0.0.1:9/verdict".into()),
            on_error: Some("allow".into()),
            redact: vec!["email".into(), "credit_card".into()],
            ..FilePolicy::default()
        })
        .unwrap();
        assert_eq!(policy.timeout, Duration::from_secs(2));
        assert_eq!(policy.on_error, OnError::Allow);
        assert!(policy.redact.email && policy.redact.credit_card && !policy.redact.phone);
    }

    #[test]
    fn mistakes_name_their_key() {
        let refused = |file: FilePolicy| match section(file) {
            Err(ConfigError::Invalid { key, .. }) => key,
            other => panic!("{other:?}"),
        };
        let bad_redact = FilePolicy {
            redact: vec!["ssn".into()],
            ..FilePolicy::default()
        };
        assert_eq!(refused(bad_redact), "policy.redact");
        let bad_on_error = FilePolicy {
            on_error: Some("maybe".into()),
            ..FilePolicy::default()
        };
        assert_eq!(refused(bad_on_error), "policy.on_error");
        let bad_url = FilePolicy {
            webhook: Some("ftp://x".into()),
            ..FilePolicy::default()
        };
        assert_eq!(refused(bad_url), "policy.webhook");
    }

    /// `[policy]` is every bot's default; `[bots.policy]` replaces it whole for its bot.
    #[test]
    fn top_level_policy_is_the_default_a_bot_may_replace() {
        let text = r#"
[policy]
webhook = "http://127.0.0.1:9/verdict"
redact = ["email"]

[[bots]]
name = "a"
upstream = "embedded"

[[bots]]
name = "b"
path_prefix = "/bots/b"
upstream = "embedded"
[bots.policy]
on_error = "allow"
"#;
        let config = crate::config::load::load_str(text, &[]).unwrap();
        let a = config.bots[0].policy.as_deref().unwrap();
        assert!(a.webhook.is_some() && a.redact.email);
        let b = config.bots[1].policy.as_deref().unwrap();
        assert!(b.webhook.is_none() && !b.redact.email);
        assert_eq!(b.on_error, crate::config::OnError::Allow);
    }

    #[test]
    fn an_unknown_policy_key_is_refused() {
        assert!(
            toml::from_str::<crate::config::file::FileConfig>("[policy]\nwebhok = \"x\"\n")
                .is_err()
        );
    }
}
