//! Stream benchmarks (not tests). Run with:
//!   cargo bench --bench stream -- resume-gap [CONVERSATIONS] [ROUNDS]
//!   cargo bench --bench stream -- idle-memory [COUNT ...]
//!
//! resume-gap: every upstream stream is dropped right after each frame it sends (emulator
//! fault `drop_after_frames = 1`). For each drop the figure is the time between the client
//! receiving the last frame before the drop and receiving the next activity, which the bot
//! sends after the drop. Through the gateway the client socket stays open and the gateway
//! resumes upstream; the baseline, measured in the same run, is a client connected straight
//! to the emulator that resumes itself at once (reconnect GET + dial, no backoff): the best
//! any client can do, and far better than DLJS's 3–15 s wait.
//!
//! idle-memory: a real gateway process in front of a real emulator process; COUNT
//! conversations are started and bridged (client socket + upstream socket) and left idle;
//! the figure is the growth of the gateway's resident memory divided by COUNT.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use directline_emulator::{self as emulator, EmulatorConfig, EmulatorHandle, Faults};
use directline_gateway::config::{BotConfig, Config, UpstreamTarget};
use directline_gateway::secret::Secret;
use directline_gateway::server;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;

const SECRET: &str = "bench-secret-0123456789abcdef0123456789";
const TOKEN_KEY: &str = "bench-token-key-0123456789abcdef0123456789";
/// Conversations opened before the baseline is read: the opening concurrency.
const WARM_UP: usize = 64;

type Http = Client<HttpConnector, Full<Bytes>>;

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    match args.first().map(String::as_str) {
        Some("resume-gap") => {
            let conversations = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(100);
            let rounds = args.get(2).and_then(|a| a.parse().ok()).unwrap_or(10);
            runtime.block_on(resume_gap(conversations, rounds));
        }
        Some("idle-memory") => {
            let counts: Vec<usize> = args[1..].iter().filter_map(|a| a.parse().ok()).collect();
            let counts = if counts.is_empty() {
                vec![1000]
            } else {
                counts
            };
            runtime.block_on(idle_memory(&counts));
        }
        _ => eprintln!(
            "usage: cargo bench --bench stream -- resume-gap [CONVERSATIONS] [ROUNDS] | idle-memory [COUNT ...]"
        ),
    }
}

// ---------------------------------------------------------------------------------------
// resume-gap

async fn resume_gap(conversations: usize, rounds: usize) {
    directline_gateway::server::install_crypto_provider();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let emulator = emulator::spawn(
        listener,
        EmulatorConfig {
            secret: emulator::Secret::new(SECRET),
            faults: Faults {
                drop_after_frames: Some(1),
                ..Faults::default()
            },
            ..EmulatorConfig::default()
        },
    );
    let mut config = Config {
        token_key: Some(Secret::new(TOKEN_KEY)),
        ..Config::single(BotConfig {
            upstream: UpstreamTarget::Url(url::Url::parse(&emulator.base_url()).unwrap()),
            secret: Some(Secret::new(SECRET)),
            ..BotConfig::default()
        })
    };
    // Every conversation comes from one loopback address: the per-IP limit would be the
    // figure measured otherwise.
    config.bot_mut().rate_limits.sessions.per_minute = 0;
    let gateway = server::start_on(
        config,
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
        TcpListener::bind("127.0.0.1:0").await.unwrap(),
    )
    .await
    .unwrap();
    let http: Http = Client::builder(TokioExecutor::new()).build_http();
    let gateway_base = format!("http://{}", gateway.client_addr);

    println!(
        "resume-gap: {conversations} conversations x {rounds} drops each, loopback, {} cores",
        num_cpus()
    );
    let baseline = run_gap_clients(&emulator, &http, conversations, rounds, Path::Direct).await;
    report(
        "baseline: client resumes directly against the emulator, no backoff",
        &baseline,
    );
    let through = run_gap_clients(
        &emulator,
        &http,
        conversations,
        rounds,
        Path::Gateway(gateway_base.clone()),
    )
    .await;
    report(
        "gateway: client socket stays open, gateway resumes upstream",
        &through,
    );
    let ratio =
        percentile(&through, 0.99).as_secs_f64() / percentile(&baseline, 0.99).as_secs_f64();
    println!("p99 ratio gateway/baseline: {ratio:.2}");
    gateway.shutdown().await;
}

#[derive(Clone)]
enum Path {
    Direct,
    Gateway(String),
}

async fn run_gap_clients(
    emulator: &EmulatorHandle,
    http: &Http,
    conversations: usize,
    rounds: usize,
    path: Path,
) -> Vec<Duration> {
    let mut tasks = Vec::new();
    for _ in 0..conversations {
        let emulator = emulator.clone();
        let http = http.clone();
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            gap_client(&emulator, &http, rounds, path).await
        }));
    }
    let mut samples = Vec::new();
    for task in tasks {
        samples.extend(task.await.unwrap());
    }
    samples.sort();
    samples
}

async fn gap_client(
    emulator: &EmulatorHandle,
    http: &Http,
    rounds: usize,
    path: Path,
) -> Vec<Duration> {
    let (conversation, stream_url, token) = match &path {
        Path::Direct => {
            let started = post_json(
                http,
                &format!("{}/v3/directline/conversations", emulator.base_url()),
                Some(SECRET),
            )
            .await;
            (
                started["conversationId"].as_str().unwrap().to_owned(),
                started["streamUrl"].as_str().unwrap().to_owned(),
                SECRET.to_owned(),
            )
        }
        Path::Gateway(base) => {
            let generated =
                post_json(http, &format!("{base}/v3/directline/tokens/generate"), None).await;
            let started = post_json(
                http,
                &format!("{base}/v3/directline/conversations"),
                generated["token"].as_str(),
            )
            .await;
            (
                started["conversationId"].as_str().unwrap().to_owned(),
                started["streamUrl"].as_str().unwrap().to_owned(),
                started["token"].as_str().unwrap().to_owned(),
            )
        }
    };
    let (mut ws, _) = tokio_tungstenite::connect_async(&stream_url).await.unwrap();
    let mut watermark: Option<String> = None;
    let mut samples = Vec::with_capacity(rounds);
    let mut expected = 0usize;
    let mut last_frame_at = Instant::now();
    let mut awaiting_gap = false;
    emulator.send_bot_message(&conversation, "m0").unwrap();
    while samples.len() < rounds {
        match ws.next().await {
            Some(Ok(Message::Text(text))) if !text.is_empty() => {
                let set: Value = serde_json::from_str(text.as_str()).unwrap();
                if let Some(w) = set["watermark"].as_str() {
                    watermark = Some(w.to_owned());
                }
                let received = set["activities"].as_array().map_or(0, |a| a.len());
                if received == 0 {
                    continue;
                }
                expected += received;
                let now = Instant::now();
                if awaiting_gap {
                    samples.push(now - last_frame_at);
                }
                last_frame_at = now;
                awaiting_gap = true;
                // The emulator dropped the stream right after that frame: the next message
                // exists only after the drop, so it can only arrive through a resume.
                emulator
                    .send_bot_message(&conversation, &format!("m{expected}"))
                    .unwrap();
            }
            Some(Ok(_)) => {}
            Some(Err(_)) | None => match &path {
                // The baseline client resumes itself at once, as fast as a client can.
                Path::Direct => {
                    let query = watermark
                        .as_deref()
                        .map(|w| format!("?watermark={w}"))
                        .unwrap_or_default();
                    let url = format!(
                        "{}/v3/directline/conversations/{conversation}{query}",
                        emulator.base_url()
                    );
                    let resumed = get_json(http, &url, &token).await;
                    let (fresh, _) =
                        tokio_tungstenite::connect_async(resumed["streamUrl"].as_str().unwrap())
                            .await
                            .unwrap();
                    ws = fresh;
                }
                Path::Gateway(_) => panic!("the gateway closed a client socket during resume"),
            },
        }
    }
    samples
}

fn report(label: &str, samples: &[Duration]) {
    println!(
        "  {label}\n    n={} p50={:.2}ms p90={:.2}ms p99={:.2}ms max={:.2}ms",
        samples.len(),
        ms(percentile(samples, 0.50)),
        ms(percentile(samples, 0.90)),
        ms(percentile(samples, 0.99)),
        ms(*samples.last().unwrap_or(&Duration::ZERO)),
    );
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

// ---------------------------------------------------------------------------------------
// idle-memory

struct Processes {
    emulator: Child,
    gateway: Child,
}

impl Drop for Processes {
    /// SIGTERM, so the gateway drains and exits (and a profiler in front of it writes its file).
    fn drop(&mut self) {
        for child in [&mut self.gateway, &mut self.emulator] {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
        }
        let _ = self.gateway.wait();
        let _ = self.emulator.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

async fn idle_memory(counts: &[usize]) {
    let bin = env!("CARGO_BIN_EXE_directline-gateway");
    let (emulator_port, gateway_port, admin_port) = (free_port(), free_port(), free_port());
    let emulator = Command::new(bin)
        .args([
            "emulator",
            "--listen",
            &format!("127.0.0.1:{emulator_port}"),
            "--secret",
            SECRET,
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // A profiler in front of the gateway, e.g. "valgrind --tool=massif --massif-out-file=m.out".
    let wrapper = std::env::var("BENCH_GATEWAY_WRAPPER").unwrap_or_default();
    let mut words = wrapper.split_whitespace();
    let mut gateway = match words.next() {
        Some(program) => {
            let mut command = Command::new(program);
            command.args(words).arg(bin);
            command
        }
        None => Command::new(bin),
    };
    // An extra config file (e.g. to compare buffer sizes) without touching the defaults;
    // by default one that only lifts the per-IP session limit (every conversation here comes
    // from one loopback address).
    let config_file = std::env::var("BENCH_GATEWAY_CONFIG").unwrap_or_else(|_| {
        let path = std::env::temp_dir().join(format!("dlgw-bench-{}.toml", std::process::id()));
        std::fs::write(
            &path,
            "[limits]\nmax_connections_per_ip = 0\n[rate_limits]\nsessions_per_minute = 0\n",
        )
        .unwrap();
        path.display().to_string()
    });
    gateway.args(["--config", &config_file]);
    let gateway = gateway
        .args([
            "--listen",
            &format!("127.0.0.1:{gateway_port}"),
            "--admin-listen",
            &format!("127.0.0.1:{admin_port}"),
            "--upstream",
            &format!("http://127.0.0.1:{emulator_port}"),
        ])
        .env("DIRECTLINE_SECRET", SECRET)
        .env("DIRECTLINE_GATEWAY_TOKEN_KEY", TOKEN_KEY)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let processes = Processes { emulator, gateway };
    let http: Http = Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(64)
        .build_http();
    let base = format!("http://127.0.0.1:{gateway_port}");
    wait_ready(&http, &format!("http://127.0.0.1:{admin_port}/readyz")).await;
    // Warm up with as many conversations as are opened at once, so the fixed-size
    // connection pools a burst creates (REST keep-alives in, upstream pool out) are part of
    // the baseline and the figure is the cost of one more bridged conversation.
    open_conversations(&http, &base, WARM_UP).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let pid = processes.gateway.id();
    let baseline = rss_kib(pid);
    println!(
        "idle-memory: gateway pid {pid}, baseline RSS {baseline} KiB after {WARM_UP} warm-up conversations, {} cores",
        num_cpus()
    );
    let mut open = WARM_UP;
    for &count in counts {
        let more = count.saturating_sub(open);
        open_conversations(&http, &base, more).await;
        open = count.max(open);
        // Let every hub finish its upstream handshake and settle.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let metrics = get_text(&http, &format!("http://127.0.0.1:{admin_port}/metrics")).await;
        let upstream = metric(
            &metrics,
            "directline_gateway_upstream_websockets{bot=\"default\"}",
        );
        let clients = metric(
            &metrics,
            "directline_gateway_client_websockets{bot=\"default\"}",
        );
        let rss = rss_kib(pid);
        let marginal = rss.saturating_sub(baseline) as f64 / (open - WARM_UP).max(1) as f64;
        println!(
            "  {open} bridged idle conversations ({clients} client + {upstream} upstream sockets): RSS {rss} KiB; \
             {marginal:.1} KiB per added conversation; whole process {:.1} KiB per conversation",
            rss as f64 / open as f64
        );
    }
    drop(processes);
}

/// Opens `count` conversations through the gateway, each with an open stream that a task
/// keeps reading (as a client would), 64 at a time.
async fn open_conversations(http: &Http, base: &str, count: usize) {
    let semaphore = Arc::new(tokio::sync::Semaphore::new(64));
    let mut openers = Vec::with_capacity(count);
    for _ in 0..count {
        let permit = semaphore.clone().acquire_owned().await.unwrap();
        let http = http.clone();
        let base = base.to_owned();
        openers.push(tokio::spawn(async move {
            let generated = post_json(
                &http,
                &format!("{base}/v3/directline/tokens/generate"),
                None,
            )
            .await;
            let started = post_json(
                &http,
                &format!("{base}/v3/directline/conversations"),
                generated["token"].as_str(),
            )
            .await;
            let (mut ws, _) =
                tokio_tungstenite::connect_async(started["streamUrl"].as_str().unwrap())
                    .await
                    .unwrap();
            drop(permit);
            // Keeps reading for the rest of the run, as a client would.
            tokio::spawn(async move { while let Some(Ok(_)) = ws.next().await {} });
        }));
    }
    for opener in openers {
        opener.await.unwrap();
    }
}

async fn wait_ready(http: &Http, url: &str) {
    for _ in 0..2000 {
        let request = http::Request::get(url)
            .body(Full::new(Bytes::new()))
            .unwrap();
        if let Ok(response) = http.request(request).await
            && response.status() == 200
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("gateway never became ready");
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap()
}

fn metric(text: &str, name: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .unwrap_or("?")
        .to_owned()
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

// ---------------------------------------------------------------------------------------
// HTTP helpers

async fn post_json(http: &Http, url: &str, token: Option<&str>) -> Value {
    let mut request = http::Request::post(url).header("content-type", "application/json");
    if let Some(token) = token {
        request = request.header("authorization", format!("Bearer {token}"));
    }
    let response = http
        .request(request.body(Full::new(Bytes::from_static(b"{}"))).unwrap())
        .await
        .unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn get_json(http: &Http, url: &str, token: &str) -> Value {
    let request = http::Request::get(url)
        .header("authorization", format!("Bearer {token}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = http.request(request).await.unwrap();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

async fn get_text(http: &Http, url: &str) -> String {
    let request = http::Request::get(url)
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = http.request(request).await.unwrap();
    String::from_utf8_lossy(&response.into_body().collect().await.unwrap().to_bytes()).into_owned()
}
