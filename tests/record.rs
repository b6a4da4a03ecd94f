//! The conversation record end to end: the gateway, the emulator, a policy webhook and a
//! record receiver, all real processes on 127.0.0.1. The record holds both directions as
//! delivered (after redaction, nothing denied, no interims, each bot activity once), never
//! a secret or a token; a receiver that is down gets every record once it is back; a full
//! spool is counted.

mod support;

use std::convert::Infallible;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use directline_gateway::config::{PolicyConfig, RecordConfig, Redactions};
use futures_util::SinkExt;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use support::webhook::PolicyWebhook;
use support::*;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

/// A fresh directory under the system's temporary one, removed when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!(
            "dlgw-record-{name}-{}-{:?}",
            std::process::id(),
            std::time::SystemTime::now()
        ));
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every line of every daily file, parsed.
fn record_lines(dir: &Path) -> Vec<Value> {
    let mut lines = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return lines;
    };
    for entry in entries.flatten() {
        if entry.file_name().to_string_lossy().ends_with(".jsonl") {
            let text = std::fs::read_to_string(entry.path()).unwrap();
            lines.extend(
                text.lines()
                    .map(|l| serde_json::from_str::<Value>(l).unwrap()),
            );
        }
    }
    lines
}

fn record_text(dir: &Path) -> String {
    record_lines(dir)
        .iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n")
}

fn texts(lines: &[Value], direction: &str) -> Vec<String> {
    lines
        .iter()
        .filter(|l| l["direction"] == direction)
        .filter_map(|l| l["activity"]["text"].as_str().map(str::to_owned))
        .collect()
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

async fn with_record(record: RecordConfig, policy: Option<PolicyConfig>) -> Harness {
    Harness::builder()
        .config(|config| {
            config.record = Some(record);
            config.bot_mut().policy = policy.map(Arc::new);
        })
        .start()
        .await
}

#[tokio::test]
async fn the_record_holds_both_directions_after_redaction_each_once_and_nothing_denied() {
    let scratch = Scratch::new("both");
    let webhook = PolicyWebhook::start().await;
    let policy = PolicyConfig {
        webhook: Some(url::Url::parse(&webhook.url).unwrap()),
        redact: Redactions {
            email: true,
            ..Redactions::default()
        },
        ..PolicyConfig::default()
    };
    let h = with_record(
        RecordConfig {
            path: scratch.0.clone(),
            ..RecordConfig::default()
        },
        Some(policy),
    )
    .await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    let reply = post(&h, &conversation, "write to jane.doe@example.com").await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let reply = post(&h, &conversation, "user says DENY").await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    let bot = |text: &str| h.emulator.send_bot_message(&conversation.id, text).unwrap();
    bot("bot says DENY");
    h.emulator
        .send_bot_activity(
            &conversation.id,
            json!({"type": "typing", "text": "interim words", "channelData": {"streamType": "streaming", "streamSequence": 1}}),
        )
        .unwrap();
    bot("bot says fine");
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"bot says fine".to_owned())
    })
    .await;
    // Polled after it was streamed: still recorded once.
    let page = h
        .activities(&conversation.id, None, &conversation.token)
        .await;
    assert_eq!(page.status, StatusCode::OK);
    let dir = scratch.0.clone();
    eventually("the bot's final in the record", async || {
        texts(&record_lines(&dir), "bot").contains(&"bot says fine".to_owned())
    })
    .await;
    let lines = record_lines(&scratch.0);
    let user = texts(&lines, "user");
    assert_eq!(user, ["write to [email]"], "{lines:?}");
    let bot_texts = texts(&lines, "bot");
    assert_eq!(
        bot_texts
            .iter()
            .filter(|t| t.as_str() == "bot says fine")
            .count(),
        1,
        "{bot_texts:?}"
    );
    let everything = record_text(&scratch.0);
    for absent in [
        "jane.doe@example.com",
        "DENY",
        "interim words",
        SECRET,
        conversation.token.as_str(),
    ] {
        assert!(!everything.contains(absent), "{absent:?} in the record");
    }
    for line in &lines {
        assert_eq!(line["bot"], "default");
        assert_eq!(line["conversation"], conversation.id.as_str());
        assert!(line["user"].as_str().unwrap().starts_with("dl_"), "{line}");
        assert!(line["time"].as_str().unwrap().ends_with('Z'));
    }
    let metrics = h.metrics().await;
    assert_eq!(
        metric(&metrics, "directline_gateway_record_written_total"),
        lines.len() as f64
    );
    assert!(
        !metrics.contains("bot says"),
        "activity content in a metric"
    );
}

/// A record receiver: keeps every line of every batch it accepts.
struct Receiver {
    lines: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Receiver {
    async fn start(listener: TcpListener) -> Receiver {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let store = lines.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request: Request<Incoming>| {
                        let store = store.clone();
                        async move {
                            let body = request.into_body().collect().await.unwrap().to_bytes();
                            let text = String::from_utf8(body.to_vec()).unwrap();
                            store
                                .lock()
                                .unwrap()
                                .extend(text.lines().map(str::to_owned));
                            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
                        }
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Receiver { lines, task }
    }

    fn lines(&self) -> Vec<String> {
        self.lines.lock().unwrap().clone()
    }
}

/// An address nothing listens on (yet): bound, noted, released.
async fn free_address() -> std::net::SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    listener.local_addr().unwrap()
}

#[tokio::test]
async fn a_receiver_down_for_a_while_then_receives_every_record_once() {
    let scratch = Scratch::new("receiver");
    let address = free_address().await;
    let h = with_record(
        RecordConfig {
            path: scratch.0.clone(),
            url: Some(url::Url::parse(&format!("http://{address}/records")).unwrap()),
            batch: 3,
            ..RecordConfig::default()
        },
        None,
    )
    .await;
    let conversation = h.conversation().await;
    for n in 0..5 {
        h.post_message(&conversation, &format!("message {n}")).await;
        h.emulator
            .send_bot_message(&conversation.id, &format!("answer {n}"))
            .unwrap();
    }
    // Polled, so the bot's activities are delivered (and recorded) without a stream.
    let page = h
        .activities(&conversation.id, None, &conversation.token)
        .await;
    assert_eq!(page.status, StatusCode::OK);
    eventually("a failed batch while the receiver is down", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_record_batches_total{outcome=\"failed\"}",
        ) >= 1.0
    })
    .await;
    let receiver = Receiver::start(TcpListener::bind(address).await.unwrap()).await;
    let dir = scratch.0.clone();
    eventually("the spool emptied into the receiver", async || {
        let written = record_lines(&dir).len();
        written >= 10
            && receiver.lines().len() >= written
            && metric(&h.metrics().await, "directline_gateway_record_spool_bytes") == 0.0
    })
    .await;
    let mut received: Vec<Value> = receiver
        .lines()
        .iter()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let mut written = record_lines(&scratch.0);
    let order = |v: &Value| v.to_string();
    received.sort_by_key(order);
    written.sort_by_key(order);
    // Exactly what the daily file holds: nothing lost, nothing twice.
    assert_eq!(received, written);
    for n in 0..5 {
        assert!(texts(&written, "user").contains(&format!("message {n}")));
        assert!(texts(&written, "bot").contains(&format!("answer {n}")));
    }
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_record_batches_total{outcome=\"sent\"}"
        ) >= 4.0
    );
    assert_eq!(
        metric(&metrics, "directline_gateway_record_spool_full_total"),
        0.0
    );
}

#[tokio::test]
async fn a_full_spool_is_counted_and_the_daily_file_still_has_everything() {
    let scratch = Scratch::new("full");
    let address = free_address().await;
    let h = with_record(
        RecordConfig {
            path: scratch.0.clone(),
            url: Some(url::Url::parse(&format!("http://{address}/records")).unwrap()),
            spool_bytes: 1024,
            ..RecordConfig::default()
        },
        None,
    )
    .await;
    let conversation = h.conversation().await;
    for n in 0..10 {
        h.post_message(&conversation, &format!("message {n} {}", "x".repeat(100)))
            .await;
    }
    let dir = scratch.0.clone();
    eventually("every message in the daily file", async || {
        texts(&record_lines(&dir), "user").len() == 10
    })
    .await;
    let metrics = h.metrics().await;
    let full = metric(&metrics, "directline_gateway_record_spool_full_total");
    assert!(full >= 1.0, "{full}");
    let spooled = metric(&metrics, "directline_gateway_record_spool_bytes");
    assert!(spooled > 0.0 && spooled <= 1024.0, "{spooled}");
    assert_eq!(
        metric(&metrics, "directline_gateway_record_written_total"),
        10.0
    );
}

#[tokio::test]
async fn a_multimodal_frame_is_recorded_as_it_went_upstream_and_its_answer_once() {
    let scratch = Scratch::new("multimodal");
    let h = with_record(
        RecordConfig {
            path: scratch.0.clone(),
            ..RecordConfig::default()
        },
        Some(PolicyConfig {
            redact: Redactions {
                phone: true,
                ..Redactions::default()
            },
            ..PolicyConfig::default()
        }),
    )
    .await;
    let conversation = h.conversation().await;
    let (path, query) = conversation.stream_url.split_once('?').unwrap();
    let mut ws = open_stream(&format!("{path}/multimodal?{query}")).await;
    let activity =
        json!({"type": "message", "from": {"id": "u"}, "text": "call +1 (555) 123-4567"});
    ws.send(Message::Text(activity.to_string().into()))
        .await
        .unwrap();
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t.starts_with("echo:"))
    })
    .await;
    let dir = scratch.0.clone();
    eventually("both directions in the record", async || {
        let lines = record_lines(&dir);
        !texts(&lines, "user").is_empty() && !texts(&lines, "bot").is_empty()
    })
    .await;
    let lines = record_lines(&scratch.0);
    assert_eq!(texts(&lines, "user"), ["call [phone]"], "{lines:?}");
    assert_eq!(texts(&lines, "bot"), ["echo: call [phone]"], "{lines:?}");
    assert!(!record_text(&scratch.0).contains("555"));
}
