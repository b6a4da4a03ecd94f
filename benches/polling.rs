//! Held-poll latency (not a test). Run with:
//!   cargo bench --bench polling -- [ROUNDS] [INTERVAL_MS]
//!
//! A page without WebSockets polls `GET …/activities`. For each round the bot sends one
//! message (the emulator's `send_bot_message`) while the client is polling, and the figure
//! is the time from that send to the poll answer that carries it:
//! - `held`: through a gateway with `[polling] hold = "10s"`: the poll waits on the hub and
//!   is answered when the message arrives;
//! - `interval`: through a gateway without `hold`, polling every INTERVAL_MS as
//!   botframework-directlinejs does (`pollingInterval`, 1000 ms by default): the message
//!   waits for the next poll.
//!
//! The bot's send happens at a random point of the client's cycle, as it would in real use.

use std::time::{Duration, Instant};

use bytes::Bytes;
use directline_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
use directline_gateway::config::{BotConfig, Config, UpstreamTarget};
use directline_gateway::secret::Secret;
use directline_gateway::server::{self, Running};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use tokio::net::TcpListener;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const TOKEN_KEY: &str = "bench-token-key-0123456789abcdef0123456789";

type Http = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let rounds = args.first().and_then(|a| a.parse().ok()).unwrap_or(50);
    let interval = Duration::from_millis(args.get(1).and_then(|a| a.parse().ok()).unwrap_or(1000));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let emulator = emulator::spawn(
            listener,
            EmulatorConfig {
                secret: emulator::Secret::new(SECRET),
                ..EmulatorConfig::default()
            },
        );
        let held = gateway(&emulator, Duration::from_secs(10)).await;
        let plain = gateway(&emulator, Duration::ZERO).await;
        let http: Http = Client::builder(TokioExecutor::new()).build_http();
        let with_hold = measure(&http, &emulator, &held, rounds, None).await;
        report("held (polling.hold = 10s)", &with_hold);
        let without = measure(&http, &emulator, &plain, rounds, Some(interval)).await;
        report(
            &format!(
                "interval (no hold, a poll every {} ms)",
                interval.as_millis()
            ),
            &without,
        );
        held.shutdown().await;
        plain.shutdown().await;
    });
}

async fn gateway(emulator: &EmulatorHandle, hold: Duration) -> Running {
    let mut config = Config {
        token_key: Some(Secret::new(TOKEN_KEY)),
        ..Config::single(BotConfig {
            secret: Some(Secret::new(SECRET)),
            upstream: UpstreamTarget::Url(url::Url::parse(&emulator.base_url()).unwrap()),
            ..BotConfig::default()
        })
    };
    config.polling.hold = hold;
    config.bot_mut().rate_limits.activities.per_minute = 0;
    let client = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let admin = TcpListener::bind("127.0.0.1:0").await.unwrap();
    server::start_on(config, client, admin).await.unwrap()
}

async fn call(
    http: &Http,
    method: http::Method,
    url: &str,
    token: Option<&str>,
    body: Option<Value>,
) -> Value {
    let mut request = http::Request::builder().method(method).uri(url);
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let body = body.map_or_else(Bytes::new, |b| Bytes::from(b.to_string()));
    let request = request
        .header("content-type", "application/json")
        .body(Full::new(body))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap_or(Value::Null)
}

/// Milliseconds from each bot send to the poll answer carrying it.
async fn measure(
    http: &Http,
    emulator: &EmulatorHandle,
    gateway: &Running,
    rounds: usize,
    interval: Option<Duration>,
) -> Vec<f64> {
    let base = format!("http://{}/v3/directline", gateway.client_addr);
    let generated = call(
        http,
        http::Method::POST,
        &format!("{base}/tokens/generate"),
        None,
        None,
    )
    .await;
    let token = generated["token"].as_str().unwrap().to_owned();
    let id = generated["conversationId"].as_str().unwrap().to_owned();
    call(
        http,
        http::Method::POST,
        &format!("{base}/conversations"),
        Some(&token),
        Some(json!({})),
    )
    .await;
    let activities = format!("{base}/conversations/{id}/activities");
    let mut watermark: Option<String> = None;
    let mut figures = Vec::with_capacity(rounds);
    for round in 0..rounds {
        let text = format!("bench {round}");
        // The send lands at a random point of the client's cycle.
        let delay = Duration::from_millis(50 + u64::from(rand_byte()) * 4);
        let sender = {
            let emulator = emulator.clone();
            let id = id.clone();
            let text = text.clone();
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let sent = Instant::now();
                emulator.send_bot_message(&id, &text);
                sent
            })
        };
        let received = loop {
            let url = match &watermark {
                Some(w) => format!("{activities}?watermark={w}"),
                None => activities.clone(),
            };
            let answer = call(http, http::Method::GET, &url, Some(&token), None).await;
            let at = Instant::now();
            if let Some(w) = answer["watermark"].as_str() {
                watermark = Some(w.to_owned());
            }
            let got = answer["activities"]
                .as_array()
                .is_some_and(|a| a.iter().any(|a| a["text"] == text.as_str()));
            if got {
                break at;
            }
            if let Some(interval) = interval {
                tokio::time::sleep(interval).await;
            }
        };
        let sent = sender.await.unwrap();
        figures.push(received.saturating_duration_since(sent).as_secs_f64() * 1000.0);
        if let Some(interval) = interval {
            tokio::time::sleep(interval).await;
        }
    }
    figures
}

fn rand_byte() -> u8 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .subsec_nanos();
    (nanos >> 8) as u8
}

fn report(what: &str, figures: &[f64]) {
    let mut sorted = figures.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| sorted[((sorted.len() - 1) as f64 * q).round() as usize];
    println!(
        "{what}: {} rounds, bot message → poll answer p50 {:.1} ms, p95 {:.1} ms, max {:.1} ms",
        sorted.len(),
        at(0.5),
        at(0.95),
        at(1.0)
    );
}
