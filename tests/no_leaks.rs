//! The secret, upstream tokens and gateway credentials never reach a log line (at trace
//! level), a metric, or a client response. One test per binary: it owns the global subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use directline_emulator::Faults;
use directline_gateway::seal::{ClientToken, Purpose, Sealer};
use http::Method;
use serde_json::json;
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn nothing_secret_in_logs_metrics_or_responses() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(directline_gateway::logging::filter("trace"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let h = Harness::builder()
        .faults(Faults {
            drop_after_frames: Some(2),
            enhanced_auth: true,
            ..Faults::default()
        })
        .start()
        .await;
    let mut responses = Vec::new();
    let generate = h
        .request(
            Method::POST,
            "/v3/directline/tokens/generate",
            None,
            Some(json!({"user": {"name": "Ada"}})),
        )
        .await;
    responses.push(generate.text());
    let token = generate.json()["token"].as_str().unwrap().to_owned();
    let start = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            Some(&token),
            None,
        )
        .await;
    responses.push(start.text());
    let start = start.json();
    let conversation = Conversation {
        id: start["conversationId"].as_str().unwrap().to_owned(),
        token: start["token"].as_str().unwrap().to_owned(),
        stream_url: start["streamUrl"].as_str().unwrap().to_owned(),
    };
    let mut ws = open_stream(&conversation.stream_url).await;
    for i in 0..10 {
        h.post_message(&conversation, &format!("m{i}")).await;
    }
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.texts().len() >= 20).await;
    let path = format!("/v3/directline/conversations/{}", conversation.id);
    for (method, path, token) in [
        (
            Method::GET,
            format!("{path}?watermark=1"),
            Some(conversation.token.as_str()),
        ),
        (
            Method::GET,
            format!("{path}/activities"),
            Some(conversation.token.as_str()),
        ),
        (
            Method::POST,
            "/v3/directline/tokens/refresh".to_owned(),
            Some(conversation.token.as_str()),
        ),
        (Method::GET, format!("{path}/activities"), Some(SECRET)),
        (Method::GET, format!("{path}/activities"), None),
    ] {
        responses.push(h.request(method, &path, token, None).await.text());
    }
    let frames: String = seen.activities.iter().map(|a| a.to_string()).collect();
    responses.push(frames);
    let metrics = h.metrics().await;

    // The upstream credentials inside the gateway tokens, opened with the test's key.
    let sealer = Sealer::new(TOKEN_KEY, &[]).unwrap();
    let upstream_tokens: Vec<String> = [&token, &conversation.token]
        .iter()
        .map(|t| {
            sealer
                .open::<ClientToken>(Purpose::ClientToken, t)
                .unwrap()
                .upstream_token
        })
        .collect();
    let ticket = conversation
        .stream_url
        .split("&t=")
        .nth(1)
        .unwrap()
        .to_owned();

    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("access"), "access log lines were captured");
    assert!(logs.len() > 1000, "trace logging was on");
    let mut forbidden: Vec<(&str, String)> = vec![
        ("secret", SECRET.to_owned()),
        ("gateway token", token.clone()),
        ("conversation token", conversation.token.clone()),
        ("stream ticket", ticket),
    ];
    for upstream in &upstream_tokens {
        forbidden.push(("upstream token", upstream.clone()));
    }
    for (what, value) in &forbidden {
        assert!(!logs.contains(value.as_str()), "{what} found in logs");
        assert!(!metrics.contains(value.as_str()), "{what} found in metrics");
    }
    for response in &responses {
        assert!(
            !response.contains(SECRET),
            "secret in a response: {response}"
        );
        for upstream in &upstream_tokens {
            assert!(
                !response.contains(upstream.as_str()),
                "upstream token in a response: {response}"
            );
        }
        assert!(
            !response.contains(&h.emulator.base_url()),
            "upstream address in a response: {response}"
        );
    }
}
