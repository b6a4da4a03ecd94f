//! The activity policy end to end: a real webhook (tests/support/webhook.rs), the gateway and
//! the emulator on 127.0.0.1. What the webhook denies never reaches Direct Line (the
//! emulator's record), the client (stream and GET) or the webhook's later calls; what it
//! replaces arrives replaced; redaction happens before any of them see the text.

mod support;

use std::sync::Arc;
use std::time::Duration;

use directline_gateway::config::{OnError, PolicyConfig, Redactions};
use futures_util::SinkExt;
use http::{Method, StatusCode};
use serde_json::{Value, json};
use support::webhook::{PolicyWebhook, REPLACED_TEXT};
use support::*;
use tokio_tungstenite::tungstenite::Message;

async fn with_policy(policy: PolicyConfig) -> Harness {
    Harness::builder()
        .config(|config| config.bot_mut().policy = Some(Arc::new(policy)))
        .start()
        .await
}

fn webhook_policy(webhook: &PolicyWebhook) -> PolicyConfig {
    PolicyConfig {
        webhook: Some(url::Url::parse(&webhook.url).unwrap()),
        ..PolicyConfig::default()
    }
}

async fn post(h: &Harness, conversation: &Conversation, text: &str) -> Reply {
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let body = json!({"type": "message", "from": {"id": "user"}, "text": text});
    h.request(Method::POST, &path, Some(&conversation.token), Some(body))
        .await
}

/// The texts Direct Line holds for the conversation.
fn upstream_texts(h: &Harness, conversation: &Conversation) -> Vec<String> {
    h.emulator
        .activities(&conversation.id)
        .iter()
        .filter_map(|a| a["text"].as_str().map(str::to_owned))
        .collect()
}

fn verdicts(metrics: &str, direction: &str, outcome: &str) -> f64 {
    metric(
        metrics,
        &format!(
            "directline_gateway_policy_verdicts_total{{bot=\"default\",direction=\"{direction}\",outcome=\"{outcome}\"}}"
        ),
    )
}

#[tokio::test]
async fn a_denied_user_activity_is_403_and_never_reaches_direct_line() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(webhook_policy(&webhook)).await;
    let conversation = h.conversation().await;
    let reply = post(&h, &conversation, "please DENY this").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.error_code(), "PolicyDenied");
    post(&h, &conversation, "fine").await;
    let texts = upstream_texts(&h, &conversation);
    assert!(texts.contains(&"fine".to_owned()), "{texts:?}");
    assert!(!texts.iter().any(|t| t.contains("DENY")), "{texts:?}");
    let asked = webhook.asked_about("DENY");
    assert_eq!(asked.len(), 1);
    assert_eq!(asked[0]["direction"], "user");
    assert_eq!(asked[0]["bot"], "default");
    assert_eq!(asked[0]["conversation"], conversation.id.as_str());
    assert!(asked[0]["user"].as_str().unwrap().starts_with("dl_"));
    let metrics = h.metrics().await;
    assert_eq!(verdicts(&metrics, "user", "denied"), 1.0);
    assert!(!metrics.contains("DENY"), "activity content in a metric");
}

#[tokio::test]
async fn a_replaced_user_activity_goes_upstream_replaced_and_still_from_the_bound_user() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(webhook_policy(&webhook)).await;
    let conversation = h.conversation().await;
    let reply = post(&h, &conversation, "REPLACE me").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let history = h.emulator.activities(&conversation.id);
    let replaced = history
        .iter()
        .find(|a| a["text"] == REPLACED_TEXT)
        .expect("the replacement reached Direct Line");
    let user = webhook.asked_about("REPLACE")[0]["user"].clone();
    // The webhook's replacement said `someone-else`; the token's user is who sent it.
    assert_eq!(replaced["from"]["id"], user);
    assert!(!upstream_texts(&h, &conversation).contains(&"REPLACE me".to_owned()));
}

#[tokio::test]
async fn personal_data_is_redacted_before_the_webhook_and_direct_line() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(PolicyConfig {
        redact: Redactions {
            email: true,
            phone: true,
            credit_card: true,
        },
        ..webhook_policy(&webhook)
    })
    .await;
    let conversation = h.conversation().await;
    let text = "mail jane.doe@example.com, card 4111 1111 1111 1111, \
                not a card 4111 1111 1111 1112, call +1 (555) 123-4567";
    let reply = post(&h, &conversation, text).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let expected = "mail [email], card [credit card], \
                    not a card 4111 1111 1111 1112, call [phone]";
    assert!(
        upstream_texts(&h, &conversation).contains(&expected.to_owned()),
        "{:?}",
        upstream_texts(&h, &conversation)
    );
    let asked = webhook.wait_for(1).await;
    assert_eq!(asked[0]["activity"]["text"], expected);
    let everything = serde_json::to_string(&webhook.asked()).unwrap();
    assert!(!everything.contains("jane.doe@example.com"));
    assert!(!everything.contains("4111 1111 1111 1111"));
    let metrics = h.metrics().await;
    for kind in ["email", "phone", "credit_card"] {
        assert_eq!(
            metric(
                &metrics,
                &format!(
                    "directline_gateway_policy_redactions_total{{bot=\"default\",kind=\"{kind}\"}}"
                )
            ),
            1.0,
            "{kind}"
        );
    }
}

#[tokio::test]
async fn a_slow_or_failing_webhook_under_deny_is_503_and_nothing_goes_upstream() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(PolicyConfig {
        timeout: Duration::from_millis(300),
        on_error: OnError::Deny,
        ..webhook_policy(&webhook)
    })
    .await;
    let conversation = h.conversation().await;
    for text in ["SLOW answer", "FAIL answer"] {
        let reply = post(&h, &conversation, text).await;
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE, "{text}");
        assert_eq!(reply.error_code(), "PolicyUnavailable");
        assert!(reply.headers.contains_key(http::header::RETRY_AFTER));
    }
    assert!(upstream_texts(&h, &conversation).is_empty());
    let metrics = h.metrics().await;
    assert_eq!(verdicts(&metrics, "user", "failed"), 2.0);
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_policy_webhook_failures_total{reason=\"timeout\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_policy_webhook_failures_total{reason=\"status\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn a_slow_webhook_under_allow_lets_the_activity_through() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(PolicyConfig {
        timeout: Duration::from_millis(300),
        on_error: OnError::Allow,
        ..webhook_policy(&webhook)
    })
    .await;
    let conversation = h.conversation().await;
    let reply = post(&h, &conversation, "SLOW answer").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(upstream_texts(&h, &conversation).contains(&"SLOW answer".to_owned()));
}

#[tokio::test]
async fn bot_activities_are_withheld_or_replaced_on_the_stream_and_in_get_asked_once() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(webhook_policy(&webhook)).await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    let bot = |text: &str| h.emulator.send_bot_message(&conversation.id, text).unwrap();
    bot("bot says DENY");
    bot("bot says REPLACE");
    bot("bot says fine");
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"bot says fine".to_owned())
    })
    .await;
    let texts = seen.texts();
    assert_eq!(texts, [REPLACED_TEXT, "bot says fine"], "{texts:?}");
    let replaced = seen
        .activities
        .iter()
        .find(|a| a["text"] == REPLACED_TEXT)
        .unwrap();
    // The webhook's replacement claimed another sender; the bot stays the sender.
    assert_eq!(replaced["from"]["id"], "echo-bot");
    // The watermark moved past the withheld activity too.
    let stream_watermark = seen.watermark.clone().unwrap();
    let page = h
        .activities(&conversation.id, None, &conversation.token)
        .await;
    assert_eq!(page.status, StatusCode::OK, "{}", page.text());
    let page = page.json();
    let page_texts: Vec<&str> = page["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["text"].as_str())
        .collect();
    assert_eq!(page_texts, [REPLACED_TEXT, "bot says fine"]);
    assert_eq!(page["watermark"].as_str(), Some(stream_watermark.as_str()));
    // One verdict per activity: the stream asked, the poll reused it.
    assert_eq!(webhook.asked_about("bot says DENY").len(), 1);
    assert_eq!(webhook.asked_about("bot says REPLACE").len(), 1);
    assert!(
        webhook
            .asked_about("bot says")
            .iter()
            .all(|ask| ask["direction"] == "bot")
    );
}

#[tokio::test]
async fn a_withheld_bot_activity_does_not_hold_back_another_conversation() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(PolicyConfig {
        on_error: OnError::Deny,
        timeout: Duration::from_secs(4),
        ..webhook_policy(&webhook)
    })
    .await;
    let slow = h.conversation().await;
    let quick = h.conversation().await;
    let mut slow_ws = open_stream(&slow.stream_url).await;
    let mut quick_ws = open_stream(&quick.stream_url).await;
    // The slow conversation's bot activity waits up to 4 s for its verdict ...
    h.emulator
        .send_bot_message(&slow.id, "bot says SLOW")
        .unwrap();
    h.emulator
        .send_bot_message(&slow.id, "after the slow one")
        .unwrap();
    webhook.wait_for(1).await;
    // ... while the other conversation's arrive at once.
    h.emulator.send_bot_message(&quick.id, "quick one").unwrap();
    let mut quick_seen = Seen::default();
    read_until(&mut quick_ws, &mut quick_seen, |s| {
        s.texts().contains(&"quick one".to_owned())
    })
    .await;
    // Per-conversation order holds: the later activity comes after the withheld one's verdict.
    let mut slow_seen = Seen::default();
    read_until(&mut slow_ws, &mut slow_seen, |s| {
        s.texts().contains(&"after the slow one".to_owned())
    })
    .await;
    assert_eq!(slow_seen.texts(), ["after the slow one"]);
    let quick_asked = webhook.asked_about("quick one");
    assert_eq!(quick_asked.len(), 1);
    let order: Vec<Value> = webhook.asked();
    let slow_at = order
        .iter()
        .position(|a| a["activity"]["text"] == "bot says SLOW")
        .unwrap();
    let quick_at = order
        .iter()
        .position(|a| a["activity"]["text"] == "quick one")
        .unwrap();
    assert!(slow_at < quick_at);
}

#[tokio::test]
async fn a_denied_multimodal_frame_closes_with_1008_and_never_reaches_direct_line() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(webhook_policy(&webhook)).await;
    let conversation = h.conversation().await;
    let (path, query) = conversation.stream_url.split_once('?').unwrap();
    let mut ws = open_stream(&format!("{path}/multimodal?{query}")).await;
    let activity = json!({"type": "message", "from": {"id": "u"}, "text": "spoken DENY"});
    ws.send(Message::Text(activity.to_string().into()))
        .await
        .unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.closed.is_some()).await;
    assert_eq!(seen.closed, Some(Some(1008)));
    assert!(!upstream_texts(&h, &conversation).contains(&"spoken DENY".to_owned()));
    assert_eq!(webhook.asked_about("spoken DENY").len(), 1);
}

#[tokio::test]
async fn bot_answers_on_the_multimodal_socket_are_screened_before_the_client_and_the_record() {
    let webhook = PolicyWebhook::start().await;
    let record = std::env::temp_dir().join(format!(
        "dlgw-policy-multimodal-{}-{:?}",
        std::process::id(),
        std::time::SystemTime::now()
    ));
    let policy = webhook_policy(&webhook);
    let h = Harness::builder()
        .config(|config| {
            config.bot_mut().policy = Some(Arc::new(policy));
            config.record = Some(directline_gateway::config::RecordConfig {
                path: record.clone(),
                ..Default::default()
            });
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let (path, query) = conversation.stream_url.split_once('?').unwrap();
    let mut ws = open_stream(&format!("{path}/multimodal?{query}")).await;
    let bot = |text: &str| h.emulator.send_bot_message(&conversation.id, text).unwrap();
    // A withheld answer leaves its frame empty but still carrying its watermark.
    bot("bot says DENY");
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.watermark.is_some()).await;
    assert!(seen.activities.is_empty(), "{:?}", seen.activities);
    let after_withheld = seen.watermark.clone();
    bot("bot says one");
    bot("bot says REPLACE");
    bot("bot says two");
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"bot says two".to_owned())
    })
    .await;
    assert_eq!(
        seen.texts(),
        ["bot says one", REPLACED_TEXT, "bot says two"],
        "{:?}",
        seen.activities
    );
    seen.assert_no_duplicate_ids();
    let replaced = seen
        .activities
        .iter()
        .find(|a| a["text"] == REPLACED_TEXT)
        .unwrap();
    // The webhook's replacement claimed another sender; the bot stays the sender.
    assert_eq!(replaced["from"]["id"], "echo-bot");
    assert_ne!(seen.watermark, after_withheld);
    assert_eq!(webhook.asked_about("bot says DENY").len(), 1);
    assert_eq!(webhook.asked_about("bot says DENY")[0]["direction"], "bot");
    // The record holds the answers as the client got them: the replacement, never the
    // withheld one.
    let bot_texts = || -> Vec<String> {
        let Ok(files) = std::fs::read_dir(&record) else {
            return Vec::new();
        };
        let mut texts = Vec::new();
        for file in files.flatten() {
            if !file.file_name().to_string_lossy().ends_with(".jsonl") {
                continue;
            }
            let lines = std::fs::read_to_string(file.path()).unwrap_or_default();
            for line in lines.lines() {
                let entry: Value = serde_json::from_str(line).unwrap();
                if entry["direction"] == "bot" {
                    texts.push(entry["activity"]["text"].as_str().unwrap_or("").to_owned());
                }
            }
        }
        texts
    };
    eventually("the last answer in the record", async || {
        bot_texts().contains(&"bot says two".to_owned())
    })
    .await;
    let recorded = bot_texts();
    let _ = std::fs::remove_dir_all(&record);
    assert_eq!(
        recorded,
        ["bot says one", REPLACED_TEXT, "bot says two"],
        "{recorded:?}"
    );
}

/// Azure AI Content Safety through the emulator's fake of `text:analyze` (the severity a
/// text gets is written in it: `HATE6`).
async fn with_content_safety(key: &str) -> (Harness, directline_emulator::EmulatorHandle) {
    let service = Harness::emulator(directline_emulator::EmulatorConfig::default()).await;
    let policy = PolicyConfig {
        timeout: Duration::from_secs(5),
        content_safety: Some(directline_gateway::config::ContentSafetyConfig {
            endpoint: url::Url::parse(&service.base_url()).unwrap(),
            key: directline_gateway::secret::Secret::new(key),
            threshold: 4,
        }),
        ..PolicyConfig::default()
    };
    (with_policy(policy).await, service)
}

#[tokio::test]
async fn content_safety_denies_at_or_above_the_threshold_both_ways() {
    let (h, service) = with_content_safety(directline_emulator::CONTENT_SAFETY_KEY).await;
    let conversation = h.conversation().await;
    let reply = post(&h, &conversation, "you are HATE6").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
    assert_eq!(reply.error_code(), "PolicyDenied");
    let reply = post(&h, &conversation, "mildly HATE2").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let texts = upstream_texts(&h, &conversation);
    assert!(texts.contains(&"mildly HATE2".to_owned()));
    assert!(!texts.iter().any(|t| t.contains("HATE6")));
    let mut ws = open_stream(&conversation.stream_url).await;
    h.emulator
        .send_bot_message(&conversation.id, "bot VIOLENCE4")
        .unwrap();
    h.emulator
        .send_bot_message(&conversation.id, "bot calm")
        .unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"bot calm".to_owned())
    })
    .await;
    assert!(!seen.texts().iter().any(|t| t.contains("VIOLENCE")));
    drop(service);
}

#[tokio::test]
async fn content_safety_refusing_the_key_is_503_under_deny() {
    let (h, _service) = with_content_safety("wrong-key").await;
    let conversation = h.conversation().await;
    let reply = post(&h, &conversation, "hello").await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code(), "PolicyUnavailable");
    assert!(upstream_texts(&h, &conversation).is_empty());
}

#[tokio::test]
async fn past_the_webhook_bounds_a_call_fails_and_on_error_decides() {
    let webhook = PolicyWebhook::start().await;
    let h = with_policy(PolicyConfig {
        concurrency: 1,
        queue: 1,
        max_body_bytes: 1024,
        timeout: Duration::from_secs(3),
        on_error: OnError::Deny,
        ..webhook_policy(&webhook)
    })
    .await;
    let conversation = h.conversation().await;
    // Over policy.max_body: never sent to the webhook.
    let big = format!("big {}", "x".repeat(2048));
    let reply = post(&h, &conversation, &big).await;
    assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(webhook.asked_about("big ").is_empty());
    // One slow call in flight and one waiting fill the bounds; the third fails at once.
    let (a, b, c) = tokio::join!(
        post(&h, &conversation, "SLOW one"),
        post(&h, &conversation, "SLOW two"),
        post(&h, &conversation, "SLOW three"),
    );
    for reply in [&a, &b, &c] {
        assert_eq!(reply.status, StatusCode::SERVICE_UNAVAILABLE);
    }
    let metrics = h.metrics().await;
    let failures = |reason: &str| {
        metric(
            &metrics,
            &format!("directline_gateway_policy_webhook_failures_total{{reason=\"{reason}\"}}"),
        )
    };
    assert_eq!(failures("too_large"), 1.0);
    assert_eq!(failures("queue_full"), 1.0);
    assert!(upstream_texts(&h, &conversation).is_empty());
}
