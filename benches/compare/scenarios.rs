//! The scenarios of `benches/compare.rs`, each run three ways, and their tables.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use directline_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
use futures_util::StreamExt as _;
use serde_json::Value;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

use crate::Options;
use crate::clients::{self, Conversation, Endpoint, Http, Socket, Via};
use crate::procs::{self, Memory, Proc, SECRET};
use crate::stats::{Latencies, mib, ms, spread};

/// Conversations opened at once while setting up.
const OPENING: usize = 64;
const ACTIVITY: &[u8] = br#"{"type":"message","from":{"id":"user1"},"text":"hello"}"#;

pub fn print_header(mode: &str, options: &Options) {
    let mut args: Vec<String> = options
        .raw()
        .map(|(k, v)| match v.as_str() {
            "true" => format!("--{k}"),
            _ => format!("--{k} {v}"),
        })
        .collect();
    args.sort();
    println!(
        "\n## compare {mode} {}\n\n{} cores, load average at start {}, gateway {}, nginx {}",
        args.join(" "),
        procs::cores(),
        load_average(),
        procs::gateway_bin(),
        procs::nginx_bin(),
    );
}

pub fn print_footer() {
    println!("\nload average at end {}", load_average());
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn progress(text: impl AsRef<str>) {
    eprintln!("[compare] {}", text.as_ref());
}

// ---------------------------------------------------------------------------------------
// One measurement's set-up

/// A fresh emulator in this process and, unless direct, the proxy under test in front.
struct Stack {
    emulator: EmulatorHandle,
    proxy: Option<Proc>,
    endpoint: Endpoint,
}

impl Stack {
    async fn start(via: Via) -> Self {
        Self::start_with(
            via,
            EmulatorConfig {
                secret: emulator::Secret::new(SECRET),
                ..EmulatorConfig::default()
            },
            "",
        )
        .await
    }

    /// With the emulator's settings given, and `gateway_config` added to the gateway's.
    async fn start_with(via: Via, config: EmulatorConfig, gateway_config: &str) -> Self {
        let emulator = emulator::spawn(deep_listener(), config);
        let port = emulator.local_addr().port();
        let proxy = match via {
            Via::Direct => None,
            Via::Nginx => Some(Proc::nginx(port)),
            Via::Gateway => Some(Proc::gateway_with(
                &emulator.base_url(),
                &[],
                gateway_config,
            )),
        };
        let proxy = proxy.map(|mut proxy| {
            tokio::task::block_in_place(|| proxy.wait_ready());
            proxy
        });
        let endpoint = match &proxy {
            None => Endpoint::new(port, Some(SECRET)),
            Some(proxy) => Endpoint::new(proxy.port, None),
        };
        Self {
            emulator,
            proxy,
            endpoint,
        }
    }

    fn memory(&self) -> Option<Memory> {
        self.proxy.as_ref().map(Proc::memory)
    }

    fn stop(mut self) {
        if let Some(mut proxy) = self.proxy.take() {
            tokio::task::block_in_place(|| proxy.stop());
        }
        self.emulator.shutdown();
    }
}

/// A loopback listener with a deep accept queue: when a storm makes a thousand
/// connections at once, Direct Line's front ends would not drop SYNs, so the emulator
/// must not either (a dropped SYN costs a 1 s retransmit, which would be the figure).
fn deep_listener() -> TcpListener {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    socket.set_reuseaddr(true).expect("reuseaddr");
    socket
        .bind(std::net::SocketAddr::from(([127, 0, 0, 1], 0)))
        .expect("bind");
    socket.listen(4096).expect("listen")
}

/// What the proxy spent between two instants (`None` when direct).
#[derive(Clone, Copy, Debug)]
struct Spent {
    cpu: Duration,
    /// The kernel's part of `cpu`.
    kernel: Duration,
    switches: u64,
}

/// With `COMPARE_STRACE=1` the window is also traced (`strace -c -f`) and the census is
/// printed: timings of such a run are meaningless, syscall counts are the point. Any other
/// value is taken as strace's arguments instead of `-c -f`.
async fn spent_over(stack: &Stack, from: Instant, to: Instant, label: &str) -> Option<Spent> {
    tokio::time::sleep_until(from.into()).await;
    let proxy = stack.proxy.as_ref()?;
    let (cpu, kernel, switches) = (proxy.cpu(), proxy.kernel_cpu(), proxy.context_switches());
    let strace = std::env::var("COMPARE_STRACE").ok().and_then(|args| {
        let output = procs::run_dir().join(format!("strace-{label}.txt"));
        let args = (args != "1").then_some(args.as_str());
        tokio::task::block_in_place(|| procs::Strace::attach(&proxy.pids(), output, args))
    });
    tokio::time::sleep_until(to.into()).await;
    if let Some(strace) = strace {
        let output = strace.output.clone();
        let summary = tokio::task::block_in_place(|| strace.finish());
        println!(
            "\nstrace -c -f of {label} over the window ({}), {} syscalls:\n\n```\n{}```",
            output.display(),
            procs::strace_total_calls(&summary).map_or("?".into(), |n| n.to_string()),
            summary.lines().take(14).collect::<Vec<_>>().join("\n") + "\n"
        );
    }
    Some(Spent {
        cpu: proxy.cpu() - cpu,
        kernel: proxy.kernel_cpu() - kernel,
        switches: proxy.context_switches() - switches,
    })
}

async fn open_conversations(http: &Http, endpoint: &Endpoint, count: usize) -> Vec<Conversation> {
    clients::in_parallel(count, OPENING, |_| {
        let (http, endpoint) = (http.clone(), endpoint.clone());
        async move {
            clients::start_conversation(&http, &endpoint)
                .await
                .unwrap_or_else(|e| panic!("start conversation: {e}"))
        }
    })
    .await
}

/// CPU seconds per 100k operations, from per-run samples.
fn per_100k(cpu: Option<Duration>, operations: usize) -> Option<f64> {
    cpu.map(|c| c.as_secs_f64() * 100_000.0 / operations.max(1) as f64)
}

fn spread_opt(values: &[Option<f64>], decimals: usize) -> String {
    let present: Vec<f64> = values.iter().flatten().copied().collect();
    if present.is_empty() {
        "—".into()
    } else {
        spread(&present, decimals)
    }
}

// ---------------------------------------------------------------------------------------
// REST load

struct RestRun {
    via: Via,
    concurrency: usize,
    secs: f64,
    latencies: Latencies,
    errors: usize,
    spent: Option<Spent>,
    memory: Option<Memory>,
}

impl RestRun {
    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.secs
    }
}

pub async fn rest(options: &Options) {
    let repeat = options.number("repeat", 1.0, 3.0) as usize;
    let secs = options.number("secs", 3.0, 10.0);
    let warmup = Duration::from_secs_f64(options.number("warmup", 1.0, 2.0));
    let levels = options.list("concurrency", &[32, 256], &[32, 256]);
    let mut runs = Vec::new();
    for &concurrency in &levels {
        for round in 0..repeat {
            for via in Via::ALL {
                progress(format!(
                    "rest: {} at concurrency {concurrency}, run {}/{repeat}",
                    via.name(),
                    round + 1
                ));
                runs.push(rest_once(via, concurrency, warmup, secs).await);
            }
        }
    }
    println!(
        "\nREST: POST activities at fixed concurrency (each worker its own conversation, \
         token → start first), {secs} s measured after {:.0} s warm-up, {repeat} run(s) each, \
         interleaved direct/nginx/gateway; median (min–max) over runs.\n",
        warmup.as_secs_f64()
    );
    println!(
        "| concurrency | via | req/s | p50 ms | p90 ms | p99 ms | max ms | errors | proxy CPU s per 100k req | proxy peak RSS MiB | proxy RSS at end MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for &concurrency in &levels {
        for via in Via::ALL {
            let mine: Vec<&RestRun> = runs
                .iter()
                .filter(|r| r.via == via && r.concurrency == concurrency)
                .collect();
            let col = |f: &dyn Fn(&RestRun) -> f64, d| {
                spread(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
            };
            let cpu: Vec<Option<f64>> = mine
                .iter()
                .map(|r| per_100k(r.spent.map(|s| s.cpu), r.latencies.len()))
                .collect();
            let hwm: Vec<Option<f64>> = mine
                .iter()
                .map(|r| r.memory.map(|m| mib(m.hwm_kib)))
                .collect();
            let rss: Vec<Option<f64>> = mine
                .iter()
                .map(|r| r.memory.map(|m| mib(m.rss_kib)))
                .collect();
            println!(
                "| {concurrency} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                via.name(),
                col(&|r| r.throughput(), 0),
                col(&|r| ms(r.latencies.p(0.50)), 2),
                col(&|r| ms(r.latencies.p(0.90)), 2),
                col(&|r| ms(r.latencies.p(0.99)), 2),
                col(&|r| ms(r.latencies.max()), 2),
                mine.iter().map(|r| r.errors).sum::<usize>(),
                spread_opt(&cpu, 2),
                spread_opt(&hwm, 1),
                spread_opt(&rss, 1),
            );
        }
    }
    println!(
        "\nRatios (median of the per-round ratios; each round measured all three back to back):\n"
    );
    println!(
        "| concurrency | throughput gateway/nginx | throughput gateway/direct | throughput nginx/direct | added p99 gateway ms | added p99 nginx ms |"
    );
    println!("|---|---|---|---|---|---|");
    for &concurrency in &levels {
        let rounds: Vec<[&RestRun; 3]> = runs
            .iter()
            .filter(|r| r.concurrency == concurrency)
            .collect::<Vec<_>>()
            .chunks(3)
            .filter_map(|c| <[&RestRun; 3]>::try_from(c).ok())
            .collect();
        let ratio = |f: &dyn Fn(&[&RestRun; 3]) -> f64, d| {
            spread(&rounds.iter().map(f).collect::<Vec<_>>(), d)
        };
        println!(
            "| {concurrency} | {} | {} | {} | {} | {} |",
            ratio(&|[_, n, g]| g.throughput() / n.throughput(), 2),
            ratio(&|[d, _, g]| g.throughput() / d.throughput(), 2),
            ratio(&|[d, n, _]| n.throughput() / d.throughput(), 2),
            ratio(
                &|[d, _, g]| ms(g.latencies.p(0.99)) - ms(d.latencies.p(0.99)),
                2
            ),
            ratio(
                &|[d, n, _]| ms(n.latencies.p(0.99)) - ms(d.latencies.p(0.99)),
                2
            ),
        );
    }
}

async fn rest_once(via: Via, concurrency: usize, warmup: Duration, secs: f64) -> RestRun {
    let stack = Stack::start(via).await;
    let http = clients::http_client();
    let conversations = open_conversations(&http, &stack.endpoint, concurrency).await;
    let window_start = Instant::now() + warmup;
    let window_end = window_start + Duration::from_secs_f64(secs);
    let workers: Vec<_> = conversations
        .into_iter()
        .map(|conversation| {
            let http = http.clone();
            let url = format!(
                "{}/conversations/{}/activities",
                stack.endpoint.domain, conversation.id
            );
            tokio::spawn(async move {
                let mut samples = Vec::new();
                let mut errors = 0;
                loop {
                    let start = Instant::now();
                    if start >= window_end {
                        break;
                    }
                    let answer = clients::request(
                        &http,
                        http::Method::POST,
                        &url,
                        Some(&conversation.token),
                        Bytes::from_static(ACTIVITY),
                    )
                    .await;
                    let took = start.elapsed();
                    match answer {
                        Ok((200, _)) if start >= window_start => samples.push(took),
                        Ok((200, _)) => {}
                        _ => errors += 1,
                    }
                }
                (samples, errors)
            })
        })
        .collect();
    let label = format!("rest-{}-{concurrency}", via.name());
    let spent = spent_over(&stack, window_start, window_end, &label).await;
    let mut samples = Vec::new();
    let mut errors = 0;
    for worker in workers {
        let (s, e) = worker.await.expect("worker");
        samples.extend(s);
        errors += e;
    }
    let memory = stack.memory();
    stack.stop();
    RestRun {
        via,
        concurrency,
        secs,
        latencies: Latencies::new(samples),
        errors,
        spent,
        memory,
    }
}

// ---------------------------------------------------------------------------------------
// REST cross-check with wrk: a C load generator with one thread, far lighter than this
// process, so the proxy under test gets more of the two cores.

pub async fn wrk(options: &Options) {
    let repeat = options.number("repeat", 1.0, 3.0) as usize;
    let secs = options.number("secs", 3.0, 10.0) as u64;
    let connections = options.number("connections", 32.0, 32.0) as usize;
    // `--threads 2` gives wrk both cores, as the issue-19 harness did; `--conversations 1`
    // sends every connection's POSTs to one conversation.
    let threads = options.number("threads", 1.0, 1.0) as usize;
    let conversation_count =
        (options.number("conversations", connections as f64, connections as f64) as usize)
            .clamp(1, connections);
    // (via, wrk's figures, proxy CPU s per 100k, of which kernel)
    type Row = (Via, Option<WrkResult>, Option<f64>, Option<f64>);
    let mut rows: Vec<Row> = Vec::new();
    for round in 0..repeat {
        for via in Via::ALL {
            progress(format!("wrk: {} run {}/{repeat}", via.name(), round + 1));
            let stack = Stack::start(via).await;
            let http = clients::http_client();
            let conversations =
                open_conversations(&http, &stack.endpoint, conversation_count).await;
            let script = procs::run_dir().join(format!("wrk-{}.lua", via.name()));
            std::fs::write(&script, wrk_script(&conversations)).expect("wrk script");
            let proxy_cpu = stack.proxy.as_ref().map(Proc::cpu);
            let proxy_kernel = stack.proxy.as_ref().map(Proc::kernel_cpu);
            let output = tokio::process::Command::new("wrk")
                .args([
                    &format!("-t{threads}"),
                    &format!("-c{connections}"),
                    &format!("-d{secs}s"),
                    "--latency",
                    "-s",
                ])
                .arg(&script)
                .arg(stack.endpoint.domain.to_string())
                .output()
                .await
                .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                .unwrap_or_default();
            let result = WrkResult::parse(&output);
            let cpu = stack
                .proxy
                .as_ref()
                .zip(proxy_cpu)
                .zip(result.as_ref())
                .map(|((proxy, before), r)| {
                    (proxy.cpu() - before).as_secs_f64() * 100_000.0 / (r.rps * secs as f64)
                });
            let kernel = stack
                .proxy
                .as_ref()
                .zip(proxy_kernel)
                .zip(result.as_ref())
                .map(|((proxy, before), r)| {
                    (proxy.kernel_cpu() - before).as_secs_f64() * 100_000.0 / (r.rps * secs as f64)
                });
            rows.push((via, result, cpu, kernel));
            stack.stop();
        }
    }
    println!(
        "\nREST cross-check: `wrk -t{threads} -c{connections} -d{secs}s --latency`, POST activities \
         round robin over {conversation_count} conversation(s); {repeat} run(s) each, \
         interleaved; median (min–max). The proxy's CPU is over the whole wrk run.\n"
    );
    println!(
        "| via | req/s | p50 ms | p90 ms | p99 ms | non-2xx | proxy CPU s per 100k req | of which kernel |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for via in Via::ALL {
        let mine: Vec<&WrkResult> = rows
            .iter()
            .filter(|(v, ..)| *v == via)
            .filter_map(|(_, r, ..)| r.as_ref())
            .collect();
        let cpu: Vec<Option<f64>> = rows
            .iter()
            .filter(|(v, ..)| *v == via)
            .map(|(_, _, c, _)| *c)
            .collect();
        let kernel: Vec<Option<f64>> = rows
            .iter()
            .filter(|(v, ..)| *v == via)
            .map(|(.., k)| *k)
            .collect();
        let col = |f: &dyn Fn(&WrkResult) -> f64, d| {
            spread(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            via.name(),
            col(&|r| r.rps, 0),
            col(&|r| r.p50_ms, 2),
            col(&|r| r.p90_ms, 2),
            col(&|r| r.p99_ms, 2),
            mine.iter().map(|r| r.non_2xx).sum::<u64>(),
            spread_opt(&cpu, 2),
            spread_opt(&kernel, 2),
        );
    }
}

fn wrk_script(conversations: &[Conversation]) -> String {
    let paths: Vec<String> = conversations
        .iter()
        .map(|c| format!("\"/v3/directline/conversations/{}/activities\"", c.id))
        .collect();
    let tokens: Vec<String> = conversations
        .iter()
        .map(|c| format!("\"Bearer {}\"", c.token))
        .collect();
    format!(
        "local paths = {{ {} }}\nlocal tokens = {{ {} }}\nlocal body = '{}'\nlocal i = 0\n\
         request = function()\n  i = i % #paths + 1\n  return wrk.format(\"POST\", paths[i], \
         {{ [\"Content-Type\"] = \"application/json\", [\"Authorization\"] = tokens[i] }}, body)\nend\n",
        paths.join(", "),
        tokens.join(", "),
        String::from_utf8_lossy(ACTIVITY),
    )
}

struct WrkResult {
    rps: f64,
    p50_ms: f64,
    p90_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
}

impl WrkResult {
    fn parse(output: &str) -> Option<Self> {
        let value = |prefix: &str| {
            output
                .lines()
                .find_map(|l| l.trim().strip_prefix(prefix))
                .map(str::trim)
        };
        let latency = |percent: &str| value(percent).and_then(wrk_duration_ms);
        Some(Self {
            rps: value("Requests/sec:")?.parse().ok()?,
            p50_ms: latency("50%")?,
            p90_ms: latency("90%")?,
            p99_ms: latency("99%")?,
            non_2xx: value("Non-2xx or 3xx responses:")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0),
        })
    }
}

/// `635.91us`, `1.23ms`, `2.00s` → ms.
fn wrk_duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    Some(match unit {
        "us" => number / 1000.0,
        "ms" => number,
        "s" => number * 1000.0,
        "m" => number * 60_000.0,
        _ => return None,
    })
}

// ---------------------------------------------------------------------------------------
// WebSocket load

struct WsRun {
    via: Via,
    conversations: usize,
    sent: usize,
    latencies: Latencies,
    closed: usize,
    spent: Option<Spent>,
    memory: Option<Memory>,
}

pub async fn ws(options: &Options) {
    let repeat = options.number("repeat", 1.0, 3.0) as usize;
    let secs = options.number("secs", 3.0, 10.0);
    let warmup = Duration::from_secs_f64(options.number("warmup", 1.0, 2.0));
    let rate = options.number("rate", 2000.0, 2000.0);
    let levels = options.list("conversations", &[100, 1000], &[100, 1000]);
    let mut runs = Vec::new();
    for &conversations in &levels {
        for round in 0..repeat {
            for via in Via::ALL {
                progress(format!(
                    "ws: {} with {conversations} conversations, run {}/{repeat}",
                    via.name(),
                    round + 1
                ));
                runs.push(ws_once(via, conversations, rate, warmup, secs).await);
            }
        }
    }
    println!(
        "\nWebSocket: bot messages pushed by the emulator (in this process) at {rate:.0}/s in \
         total, round robin over the conversations, {secs} s measured after {:.0} s warm-up; \
         latency = arrival at the client − send time encoded in the text, one clock. \
         {repeat} run(s) each, interleaved; median (min–max) over runs.\n",
        warmup.as_secs_f64()
    );
    println!(
        "| conversations | via | received / sent | p50 ms | p90 ms | p99 ms | max ms | added p50 ms | added p99 ms | proxy CPU s per 100k activities | of which kernel s | proxy context switches per activity | proxy peak RSS MiB | proxy RSS at end MiB |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for &conversations in &levels {
        let direct: Vec<&WsRun> = runs
            .iter()
            .filter(|r| r.via == Via::Direct && r.conversations == conversations)
            .collect();
        for via in Via::ALL {
            let mine: Vec<&WsRun> = runs
                .iter()
                .filter(|r| r.via == via && r.conversations == conversations)
                .collect();
            let col = |f: &dyn Fn(&WsRun) -> f64, d| {
                spread(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
            };
            // Added latency per round: this run minus the direct run of the same round.
            let added = |q: f64| {
                let values: Vec<f64> = mine
                    .iter()
                    .zip(&direct)
                    .map(|(r, d)| ms(r.latencies.p(q)) - ms(d.latencies.p(q)))
                    .collect();
                if via == Via::Direct {
                    "—".into()
                } else {
                    spread(&values, 2)
                }
            };
            let cpu: Vec<Option<f64>> = mine
                .iter()
                .map(|r| per_100k(r.spent.map(|s| s.cpu), r.sent))
                .collect();
            let kernel: Vec<Option<f64>> = mine
                .iter()
                .map(|r| per_100k(r.spent.map(|s| s.kernel), r.sent))
                .collect();
            let switches: Vec<Option<f64>> = mine
                .iter()
                .map(|r| r.spent.map(|s| s.switches as f64 / r.sent.max(1) as f64))
                .collect();
            let hwm: Vec<Option<f64>> = mine
                .iter()
                .map(|r| r.memory.map(|m| mib(m.hwm_kib)))
                .collect();
            let rss: Vec<Option<f64>> = mine
                .iter()
                .map(|r| r.memory.map(|m| mib(m.rss_kib)))
                .collect();
            let received: usize = mine.iter().map(|r| r.latencies.len()).sum();
            let sent: usize = mine.iter().map(|r| r.sent).sum();
            let closed: usize = mine.iter().map(|r| r.closed).sum();
            println!(
                "| {conversations} | {} | {received} / {sent}{} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                via.name(),
                if closed > 0 {
                    format!(" ({closed} sockets closed)")
                } else {
                    String::new()
                },
                col(&|r| ms(r.latencies.p(0.50)), 2),
                col(&|r| ms(r.latencies.p(0.90)), 2),
                col(&|r| ms(r.latencies.p(0.99)), 2),
                col(&|r| ms(r.latencies.max()), 2),
                added(0.50),
                added(0.99),
                spread_opt(&cpu, 2),
                spread_opt(&kernel, 2),
                spread_opt(&switches, 2),
                spread_opt(&hwm, 1),
                spread_opt(&rss, 1),
            );
        }
    }
}

async fn ws_once(via: Via, count: usize, rate: f64, warmup: Duration, secs: f64) -> WsRun {
    let stack = Stack::start(via).await;
    let http = clients::http_client();
    let epoch = Instant::now();
    let (stop_tx, stop) = watch::channel(false);
    let conversations = open_conversations(&http, &stack.endpoint, count).await;
    let sockets = dial_all(&conversations).await;
    let readers: Vec<_> = sockets
        .into_iter()
        .map(|socket| tokio::spawn(read_timestamps(socket, epoch, stop.clone())))
        .collect();
    wait_attached(&stack.emulator, &conversations).await;

    let window_start = Instant::now() + warmup;
    let window_end = window_start + Duration::from_secs_f64(secs);
    let ids: Vec<String> = conversations.iter().map(|c| c.id.clone()).collect();
    let emulator = stack.emulator.clone();
    let sender = tokio::spawn(async move {
        let begin = Instant::now();
        let mut sent = 0u64;
        let mut in_window = 0usize;
        while Instant::now() < window_end {
            let due = (begin.elapsed().as_secs_f64() * rate) as u64;
            while sent < due {
                let now = Instant::now();
                let stamp = now.duration_since(epoch).as_nanos();
                emulator.send_bot_message(&ids[sent as usize % ids.len()], &stamp.to_string());
                if now >= window_start && now < window_end {
                    in_window += 1;
                }
                sent += 1;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        in_window
    });
    let label = format!("ws-{}-{count}", via.name());
    let spent = spent_over(&stack, window_start, window_end, &label).await;
    let sent = sender.await.expect("sender");
    // The tail still in flight.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let memory = stack.memory();
    let _ = stop_tx.send(true);
    let (from, to) = (
        window_start.duration_since(epoch).as_nanos() as u64,
        window_end.duration_since(epoch).as_nanos() as u64,
    );
    let mut samples = Vec::new();
    let mut closed = 0;
    for reader in readers {
        let (stamps, was_closed) = reader.await.expect("reader");
        closed += usize::from(was_closed);
        samples.extend(
            stamps
                .into_iter()
                .filter(|(sent, _)| (from..to).contains(sent))
                .map(|(_, latency)| Duration::from_nanos(latency)),
        );
    }
    stack.stop();
    WsRun {
        via,
        conversations: count,
        sent,
        latencies: Latencies::new(samples),
        closed,
        spent,
        memory,
    }
}

/// Until every conversation has its stream open at the emulator (through a proxy the
/// upstream leg is dialled after the client's), so no message goes to a replay.
async fn wait_attached(emulator: &EmulatorHandle, conversations: &[Conversation]) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while conversations
        .iter()
        .any(|c| emulator.live_streams(&c.id) == 0)
    {
        assert!(Instant::now() < deadline, "streams never attached upstream");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads frames until stopped: `(send time, latency)` in ns for every activity, and
/// whether the socket ended by itself.
async fn read_timestamps(
    mut socket: Socket,
    epoch: Instant,
    mut stop: watch::Receiver<bool>,
) -> (Vec<(u64, u64)>, bool) {
    let mut stamps = Vec::new();
    loop {
        tokio::select! {
            _ = stop.changed() => return (stamps, false),
            message = socket.next() => match message {
                Some(Ok(Message::Text(text))) if !text.is_empty() => {
                    // Read the clock before parsing: parsing is the client's cost.
                    let now = epoch.elapsed().as_nanos() as u64;
                    let Ok(set) = serde_json::from_str::<Value>(text.as_str()) else { continue };
                    for activity in set["activities"].as_array().into_iter().flatten() {
                        if let Some(sent) = activity["text"].as_str().and_then(|t| t.parse::<u64>().ok()) {
                            stamps.push((sent, now.saturating_sub(sent)));
                        }
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return (stamps, true),
            },
        }
    }
}

// ---------------------------------------------------------------------------------------
// Idle memory

struct IdleRow {
    via: Via,
    count: usize,
    per_added_kib: f64,
    whole_kib: f64,
    rss_kib: u64,
    pss_kib: u64,
    bridged: usize,
}

pub async fn idle(options: &Options) {
    let repeat = options.number("repeat", 1.0, 3.0) as usize;
    let mut counts = options.list("counts", &[1000], &[1000, 9900]);
    // Each conversation is one client socket here; keep room for the rest.
    let limit = procs::open_file_limit() as usize;
    counts.retain(|&c| {
        let fits = c + 200 <= limit;
        if !fits {
            progress(format!(
                "idle: skipping {c} (open-file limit {limit}; run `ulimit -n $(ulimit -Hn)`)"
            ));
        }
        fits
    });
    let mut rows = Vec::new();
    for round in 0..repeat {
        for via in [Via::Nginx, Via::Gateway] {
            progress(format!("idle: {} run {}/{repeat}", via.name(), round + 1));
            rows.extend(idle_once(via, &counts).await);
        }
    }
    println!(
        "\nIdle: conversations opened through the proxy (token → start → stream), each client \
         socket kept open and reading, upstream an emulator process (`directline-gateway \
         emulator`, keepalive frames every 15 s); RSS of the proxy's connection-holding \
         processes (gateway; nginx workers) after 3 s of quiet. Baseline read after {OPENING} \
         warm-up conversations. {repeat} run(s); median (min–max).\n"
    );
    println!(
        "| via | conversations | upstream sockets at the emulator | per added conversation KiB | whole process ÷ conversations KiB | RSS MiB | PSS MiB |"
    );
    println!("|---|---|---|---|---|---|---|");
    for &count in &counts {
        for via in [Via::Nginx, Via::Gateway] {
            let mine: Vec<&IdleRow> = rows
                .iter()
                .filter(|r| r.via == via && r.count == count)
                .collect();
            let col = |f: &dyn Fn(&IdleRow) -> f64, d| {
                spread(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
            };
            println!(
                "| {} | {count} | {} | {} | {} | {} | {} |",
                via.name(),
                col(&|r| r.bridged as f64, 0),
                col(&|r| r.per_added_kib, 1),
                col(&|r| r.whole_kib, 1),
                col(&|r| mib(r.rss_kib), 1),
                col(&|r| mib(r.pss_kib), 1),
            );
        }
    }
}

async fn idle_once(via: Via, counts: &[usize]) -> Vec<IdleRow> {
    let mut emulator = Proc::emulator();
    tokio::task::block_in_place(|| emulator.wait_ready());
    let upstream_port = emulator.port;
    let mut proxy = match via {
        Via::Nginx => Proc::nginx(upstream_port),
        _ => Proc::gateway(&format!("http://127.0.0.1:{upstream_port}"), &[]),
    };
    tokio::task::block_in_place(|| proxy.wait_ready());
    let endpoint = Endpoint::new(proxy.port, None);
    let http = clients::http_client();
    let mut sockets = Vec::new();
    let (stop_tx, stop) = watch::channel(false);
    open_idle(&http, &endpoint, OPENING, &stop, &mut sockets).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = proxy.worker_memory().rss_kib;
    let mut rows = Vec::new();
    let mut open = OPENING;
    for &count in counts {
        let more = count.saturating_sub(open);
        open_idle(&http, &endpoint, more, &stop, &mut sockets).await;
        open = open.max(count);
        tokio::time::sleep(Duration::from_secs(3)).await;
        let memory = proxy.worker_memory();
        let rss = memory.rss_kib;
        let bridged = procs::established_to(upstream_port);
        progress(format!(
            "idle: {} {open} conversations, RSS {rss} KiB, {bridged} sockets at the emulator",
            via.name()
        ));
        rows.push(IdleRow {
            via,
            count: open,
            per_added_kib: rss.saturating_sub(baseline) as f64 / (open - OPENING).max(1) as f64,
            whole_kib: rss as f64 / open as f64,
            rss_kib: rss,
            pss_kib: memory.pss_kib,
            bridged,
        });
    }
    let _ = stop_tx.send(true);
    for socket in sockets {
        let _ = socket.await;
    }
    tokio::task::block_in_place(|| {
        proxy.stop();
        emulator.stop();
    });
    rows
}

async fn open_idle(
    http: &Http,
    endpoint: &Endpoint,
    count: usize,
    stop: &watch::Receiver<bool>,
    sockets: &mut Vec<tokio::task::JoinHandle<()>>,
) {
    let opened = clients::in_parallel(count, OPENING, |_| {
        let (http, endpoint) = (http.clone(), endpoint.clone());
        async move {
            let conversation = clients::start_conversation(&http, &endpoint)
                .await
                .unwrap_or_else(|e| panic!("start: {e}"));
            clients::dial(&conversation.stream_url)
                .await
                .unwrap_or_else(|e| panic!("dial: {e}"))
        }
    })
    .await;
    // Each keeps reading (and so answers pings) for the rest of the run, as a client would.
    sockets.extend(opened.into_iter().map(|mut socket| {
        let mut stop = stop.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = stop.changed() => break,
                    message = socket.next() => if !matches!(message, Some(Ok(_))) { break },
                }
            }
        })
    }));
}

/// Opens every conversation's stream, [`OPENING`] at a time.
async fn dial_all(conversations: &[Conversation]) -> Vec<Socket> {
    clients::in_parallel(conversations.len(), OPENING, |index| {
        let url = conversations[index].stream_url.clone();
        async move {
            clients::dial(&url)
                .await
                .unwrap_or_else(|e| panic!("dial: {e}"))
        }
    })
    .await
}

// ---------------------------------------------------------------------------------------
// Resume drop storm

struct StormRun {
    via: Via,
    gaps: Latencies,
    missing: usize,
    duplicates: usize,
    client_reconnects: usize,
    /// Machine-wide accept-queue overflows during the storm (each a 1 s SYN retransmit).
    overflows: u64,
}

pub async fn storm(options: &Options) {
    let repeat = options.number("repeat", 1.0, 3.0) as usize;
    let count = options.number("conversations", 1000.0, 1000.0) as usize;
    let mut runs = Vec::new();
    for round in 0..repeat {
        for via in Via::ALL {
            progress(format!("storm: {} run {}/{repeat}", via.name(), round + 1));
            runs.push(storm_once(via, count).await);
        }
    }
    println!(
        "\nDrop storm: {count} conversations with an open stream, each has received one bot \
         message; then the emulator cuts every upstream stream at once (no close frame) and the \
         bot sends one message per conversation. Gap = from the cut to that message's arrival at \
         the client (the {count} sends take part of it). Through the gateway the client socket \
         stays open and the gateway resumes; direct and through nginx the client socket dies \
         and an ideal client reconnects itself at once (reconnect GET + dial, no backoff; \
         DLJS waits 3–15 s before it starts). {repeat} run(s); median (min–max).\n"
    );
    println!(
        "| via | who resumes | every client whole after ms (max gap) | p50 gap ms | p99 gap ms | missing | duplicates | client reconnects | accept-queue overflows |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for via in Via::ALL {
        let mine: Vec<&StormRun> = runs.iter().filter(|r| r.via == via).collect();
        let col = |f: &dyn Fn(&StormRun) -> f64, d| {
            spread(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
        };
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            via.name(),
            match via {
                Via::Gateway => "the gateway (client socket stays open)",
                Via::Nginx =>
                    "the client must reconnect itself (ideal client here; DLJS waits 3–15 s)",
                Via::Direct => "the client (ideal: at once, no backoff)",
            },
            col(&|r| ms(r.gaps.max()), 1),
            col(&|r| ms(r.gaps.p(0.50)), 1),
            col(&|r| ms(r.gaps.p(0.99)), 1),
            mine.iter().map(|r| r.missing).sum::<usize>(),
            mine.iter().map(|r| r.duplicates).sum::<usize>(),
            mine.iter().map(|r| r.client_reconnects).sum::<usize>(),
            mine.iter().map(|r| r.overflows).sum::<u64>(),
        );
    }
}

async fn storm_once(via: Via, count: usize) -> StormRun {
    let stack = Stack::start(via).await;
    let http = clients::http_client();
    let conversations = open_conversations(&http, &stack.endpoint, count).await;
    let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
    let (arrived_tx, mut arrived_rx) = mpsc::unbounded_channel::<Instant>();
    let (stop_tx, stop) = watch::channel(false);
    let reconnects = Arc::new(AtomicUsize::new(0));
    let sockets = dial_all(&conversations).await;
    let readers: Vec<_> = sockets
        .into_iter()
        .zip(&conversations)
        .map(|(socket, conversation)| {
            let mut client = StormClient {
                via,
                http: http.clone(),
                endpoint: stack.endpoint.clone(),
                conversation: conversation.clone(),
                socket,
                watermark: None,
                seen: HashSet::new(),
                duplicates: 0,
                reconnects: reconnects.clone(),
            };
            let (ready, arrived, stop) = (ready_tx.clone(), arrived_tx.clone(), stop.clone());
            tokio::spawn(async move { client.run(ready, arrived, stop).await })
        })
        .collect();
    drop((ready_tx, arrived_tx));
    wait_attached(&stack.emulator, &conversations).await;
    for conversation in &conversations {
        stack.emulator.send_bot_message(&conversation.id, "before");
    }
    for _ in 0..count {
        tokio::time::timeout(Duration::from_secs(30), ready_rx.recv())
            .await
            .expect("every client gets the first message")
            .expect("readers alive");
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let overflows_before = procs::listen_overflows();
    let cut = Instant::now();
    stack.emulator.drop_all_streams();
    for conversation in &conversations {
        stack.emulator.send_bot_message(&conversation.id, "after");
    }
    let mut gaps = Vec::with_capacity(count);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while gaps.len() < count {
        match tokio::time::timeout_at(deadline, arrived_rx.recv()).await {
            Ok(Some(at)) => gaps.push(at - cut),
            _ => break,
        }
    }
    // Watch a little longer for replayed duplicates.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let _ = stop_tx.send(true);
    let mut duplicates = 0;
    for reader in readers {
        duplicates += reader.await.expect("reader");
    }
    let missing = count - gaps.len();
    let overflows = procs::listen_overflows() - overflows_before;
    stack.stop();
    StormRun {
        overflows,
        via,
        gaps: Latencies::new(gaps),
        missing,
        duplicates,
        client_reconnects: reconnects.load(Ordering::Relaxed),
    }
}

struct StormClient {
    via: Via,
    http: Http,
    endpoint: Endpoint,
    conversation: Conversation,
    socket: Socket,
    watermark: Option<String>,
    /// Activity ids received: a second arrival is a duplicate.
    seen: HashSet<String>,
    duplicates: usize,
    reconnects: Arc<AtomicUsize>,
}

impl StormClient {
    /// Returns how many duplicates it saw.
    async fn run(
        &mut self,
        ready: mpsc::UnboundedSender<()>,
        arrived: mpsc::UnboundedSender<Instant>,
        mut stop: watch::Receiver<bool>,
    ) -> usize {
        loop {
            let message = tokio::select! {
                _ = stop.changed() => return self.duplicates,
                message = self.socket.next() => message,
            };
            match message {
                Some(Ok(Message::Text(text))) if !text.is_empty() => {
                    let now = Instant::now();
                    let Ok(set) = serde_json::from_str::<Value>(text.as_str()) else {
                        continue;
                    };
                    if let Some(w) = set["watermark"].as_str() {
                        self.watermark = Some(w.to_owned());
                    }
                    for activity in set["activities"].as_array().into_iter().flatten() {
                        let id = activity["id"].as_str().unwrap_or_default().to_owned();
                        if !self.seen.insert(id) {
                            self.duplicates += 1;
                            continue;
                        }
                        let _ = match activity["text"].as_str() {
                            Some("before") => ready.send(()).map_err(drop),
                            Some("after") => arrived.send(now).map_err(drop),
                            _ => Ok(()),
                        };
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    if *stop.borrow() {
                        return self.duplicates;
                    }
                    self.reconnects.fetch_add(1, Ordering::Relaxed);
                    if self.via == Via::Gateway {
                        eprintln!("storm: the gateway closed a client socket");
                    }
                    // What an ideal client does: resume at once from its watermark.
                    let url = clients::reconnect(
                        &self.http,
                        &self.endpoint,
                        &self.conversation,
                        self.watermark.as_deref(),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("reconnect: {e}"));
                    self.socket = clients::dial(&url)
                        .await
                        .unwrap_or_else(|e| panic!("redial: {e}"));
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------
// Start-up time and binary size

pub fn startup(options: &Options) {
    let repeat = options.number("repeat", 5.0, 20.0) as usize;
    // Only something to point the gateway at; it does not dial upstream to start.
    let upstream_port = procs::free_port();
    let upstream = format!("http://127.0.0.1:{upstream_port}");
    let mut gateway_accept = Vec::new();
    let mut gateway_ready = Vec::new();
    let mut nginx_accept = Vec::new();
    let mut nginx_ready = Vec::new();
    for round in 0..repeat {
        progress(format!("startup: run {}/{repeat}", round + 1));
        {
            let start = Instant::now();
            let mut gateway = Proc::gateway(&upstream, &[]);
            let (accepting, ready) = poll_start(
                start,
                gateway.port,
                gateway.admin_port.unwrap_or(0),
                "/readyz",
            );
            gateway_accept.push(ms(accepting));
            gateway_ready.push(ms(ready));
            gateway.stop();
        }
        {
            let start = Instant::now();
            let mut nginx = Proc::nginx(upstream_port);
            let (accepting, ready) = poll_start(start, nginx.port, nginx.port, "/nginx-ready");
            nginx_accept.push(ms(accepting));
            nginx_ready.push(ms(ready));
            nginx.stop();
        }
    }
    println!(
        "\nStart-up: exec → port accepting, and exec → first HTTP 200 (gateway: `/readyz` on \
         the admin port; nginx: a `return 200` location), polled every 0.2 ms, {repeat} runs \
         each, alternating; median (min–max) ms.\n"
    );
    println!("| process | exec → accepting ms | exec → HTTP 200 ms |");
    println!("|---|---|---|");
    println!(
        "| gateway | {} | {} |",
        spread(&gateway_accept, 2),
        spread(&gateway_ready, 2)
    );
    println!(
        "| nginx (master + 2 workers) | {} | {} |",
        spread(&nginx_accept, 2),
        spread(&nginx_ready, 2)
    );
    let gateway_size = file_size(&procs::gateway_bin());
    let nginx_path = which(&procs::nginx_bin());
    let nginx_size = file_size(&nginx_path);
    let (gw_libs, gw_libs_size) = shared_libraries(&procs::gateway_bin());
    let (ng_libs, ng_libs_size) = shared_libraries(&nginx_path);
    println!("\n| binary | size MiB | shared libraries loaded (ldd) | their size MiB |");
    println!("|---|---|---|---|");
    println!(
        "| gateway `{}` (release, stripped) | {:.2} | {gw_libs} | {:.2} |",
        procs::gateway_bin(),
        mib(gateway_size / 1024),
        mib(gw_libs_size / 1024)
    );
    println!(
        "| nginx `{nginx_path}` | {:.2} | {ng_libs} | {:.2} |",
        mib(nginx_size / 1024),
        mib(ng_libs_size / 1024)
    );
}

/// Polls from `start` until the client port accepts, then until `path` answers 200.
fn poll_start(start: Instant, port: u16, status_port: u16, path: &str) -> (Duration, Duration) {
    let deadline = start + Duration::from_secs(20);
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let accepting = loop {
        if std::net::TcpStream::connect(addr).is_ok() {
            break start.elapsed();
        }
        assert!(Instant::now() < deadline, "never accepted");
        std::thread::sleep(Duration::from_micros(200));
    };
    let ready = loop {
        if procs::http_status(status_port, path) == Some(200) {
            break start.elapsed();
        }
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_micros(200));
    };
    (accepting, ready)
}

fn file_size(path: &str) -> u64 {
    std::fs::metadata(path).map_or(0, |m| m.len())
}

fn which(program: &str) -> String {
    if program.contains('/') {
        return program.to_owned();
    }
    std::env::var("PATH")
        .unwrap_or_default()
        .split(':')
        .map(|dir| format!("{dir}/{program}"))
        .chain(["/usr/sbin/nginx".to_owned()])
        .find(|p| std::path::Path::new(p).is_file())
        .unwrap_or_else(|| program.to_owned())
}

/// Number and total size of the shared libraries `ldd` lists.
fn shared_libraries(binary: &str) -> (usize, u64) {
    let Ok(output) = std::process::Command::new("ldd").arg(binary).output() else {
        return (0, 0);
    };
    let text = String::from_utf8_lossy(&output.stdout);
    let paths: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split("=>").nth(1))
        .filter_map(|rest| rest.split_whitespace().next())
        .filter(|p| p.starts_with('/'))
        .collect();
    let size = paths
        .iter()
        .map(|p| std::fs::canonicalize(p).map_or(0, |real| file_size(&real.display().to_string())))
        .sum();
    (paths.len(), size)
}

// ---------------------------------------------------------------------------------------
// Profile: a fixed workload per hot path against a gateway started under a profiler

pub async fn profile(options: &Options) {
    let count = options.number("count", 200.0, 1000.0) as usize;
    let phases: Vec<&str> = match options.text("phase").unwrap_or("all") {
        "all" => vec!["tokens", "rest", "ws", "streamed"],
        one => vec![one],
    };
    let wrapper: Vec<String> = options
        .text("wrapper")
        .map(str::to_owned)
        .or_else(|| std::env::var("COMPARE_GATEWAY_WRAPPER").ok())
        .unwrap_or_else(|| "valgrind --tool=callgrind --instr-atstart=no".to_owned())
        .split_whitespace()
        .map(str::to_owned)
        .collect();
    let emulator = emulator::spawn(
        deep_listener(),
        EmulatorConfig {
            secret: emulator::Secret::new(SECRET),
            ..EmulatorConfig::default()
        },
    );
    // `--chunk-interval 50ms` profiles the gateway as the streamed comparison's third
    // relay runs it.
    let extra = options
        .text("chunk-interval")
        .map(|interval| format!("[stream]\nchunk_interval = \"{interval}\"\n"))
        .unwrap_or_default();
    let mut gateway = Proc::gateway_with(&emulator.base_url(), &wrapper, &extra);
    tokio::task::block_in_place(|| gateway.wait_ready());
    let endpoint = Endpoint::new(gateway.port, None);
    let http = clients::http_client();
    let pid = gateway.pid();
    // Instrumentation is on only around each phase's workload, so set-up and the other
    // phases are not in its counts; each phase ends in its own dump.
    let control = |args: &[&str]| {
        let ok = std::process::Command::new("callgrind_control")
            .args(args)
            .arg(pid.to_string())
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            progress(format!(
                "callgrind_control {args:?} failed (not under callgrind?)"
            ));
        }
    };
    let mut dump = 0;
    for phase in phases {
        progress(format!("profile: {phase} x {count}"));
        match phase {
            "tokens" => {
                control(&["-z"]);
                control(&["-i", "on"]);
                open_conversations(&http, &endpoint, count).await;
            }
            "rest" => {
                let conversation = clients::start_conversation(&http, &endpoint)
                    .await
                    .unwrap_or_else(|e| panic!("start: {e}"));
                let url = format!(
                    "{}/conversations/{}/activities",
                    endpoint.domain, conversation.id
                );
                control(&["-z"]);
                control(&["-i", "on"]);
                let _ = clients::in_parallel(count, 8, |_| {
                    let (http, url, token) =
                        (http.clone(), url.clone(), conversation.token.clone());
                    async move {
                        clients::request(
                            &http,
                            http::Method::POST,
                            &url,
                            Some(&token),
                            Bytes::from_static(ACTIVITY),
                        )
                        .await
                        .map(|(status, _)| assert_eq!(status, 200, "POST activities"))
                    }
                })
                .await;
            }
            "ws" => {
                let streams = 20;
                let conversations = open_conversations(&http, &endpoint, streams).await;
                let received = Arc::new(AtomicUsize::new(0));
                let mut readers = Vec::new();
                for conversation in &conversations {
                    let mut socket = clients::dial(&conversation.stream_url)
                        .await
                        .unwrap_or_else(|e| panic!("dial: {e}"));
                    let received = received.clone();
                    readers.push(tokio::spawn(async move {
                        while let Some(Ok(message)) = socket.next().await {
                            if let Message::Text(text) = message
                                && !text.is_empty()
                            {
                                received.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                    }));
                }
                wait_attached(&emulator, &conversations).await;
                control(&["-z"]);
                control(&["-i", "on"]);
                for index in 0..count {
                    emulator
                        .send_bot_message(&conversations[index % streams].id, &index.to_string());
                    if index % streams == streams - 1 {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                }
                // Until every client has every frame (not by asking the gateway: answering
                // /metrics would be in the profile).
                let deadline = Instant::now() + Duration::from_secs(300);
                while received.load(Ordering::Relaxed) < count && Instant::now() < deadline {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                control(&["-d", phase]);
                control(&["-i", "off"]);
                for reader in readers {
                    reader.abort();
                }
            }
            "streamed" => {
                // Paced so that no interim is ever replaced by a newer one, even with the
                // gateway slowed by callgrind: every produced interim goes the whole way,
                // and the count per interim repeats from run to run.
                let streams = 10;
                let per_stream = count.div_ceil(streams);
                emulator
                    .faults()
                    .set_stream_interval(Duration::from_millis(20));
                let conversations = open_conversations(&http, &endpoint, streams).await;
                let sockets = dial_all(&conversations).await;
                wait_attached(&emulator, &conversations).await;
                let readers: Vec<_> = sockets
                    .into_iter()
                    .map(|mut socket| {
                        tokio::spawn(async move {
                            let mut tally = Tally::default();
                            read_until_final(&mut socket, &mut tally, Duration::from_secs(600))
                                .await;
                            tally
                        })
                    })
                    .collect();
                let ask = format!(
                    r#"{{"type":"message","from":{{"id":"user1"}},"text":"stream {per_stream}","deliveryMode":"stream"}}"#
                );
                control(&["-z"]);
                control(&["-i", "on"]);
                let mut tally = Tally::default();
                for conversation in &conversations {
                    let url = format!(
                        "{}/conversations/{}/activities",
                        endpoint.domain, conversation.id
                    );
                    let posted = clients::request(
                        &http,
                        http::Method::POST,
                        &url,
                        Some(&conversation.token),
                        Bytes::from(ask.clone()),
                    )
                    .await;
                    assert!(matches!(posted, Ok((200, _))), "POST stream: {posted:?}");
                }
                for reader in readers {
                    tally += reader.await.expect("reader");
                }
                control(&["-d", phase]);
                control(&["-i", "off"]);
                progress(format!(
                    "profile: streamed: {} of {} interims and {} of {streams} finals reached the clients",
                    tally.interims,
                    per_stream * streams,
                    tally.finals
                ));
            }
            other => panic!("unknown phase {other}"),
        }
        if !matches!(phase, "ws" | "streamed") {
            control(&["-d", phase]);
            control(&["-i", "off"]);
        }
        dump += 1;
        println!("profile phase {phase}: {count} operations, callgrind dump #{dump}");
    }
    tokio::task::block_in_place(|| gateway.stop());
    emulator.shutdown();
}

// ---------------------------------------------------------------------------------------
// Streamed answers (livestreaming)

/// One streamed answer as an LLM agent sends it: 300 interims with the text so far, 100 a
/// second, then the final message.
const STREAM_INTERIMS: usize = 300;
const STREAM_INTERVAL: Duration = Duration::from_millis(10);
/// The user's message that asks the emulator's bot for such an answer, opting in.
const STREAM_ASK: &[u8] =
    br#"{"type":"message","from":{"id":"user1"},"text":"stream 300","deliveryMode":"stream"}"#;
/// How an interim and a final show in a frame (compact JSON from the emulator, relayed as
/// is): counting these is far cheaper for the load generator than parsing every frame.
const INTERIM_MARK: &str = r#""streamType":"streaming""#;
const FINAL_MARK: &str = r#""streamType":"final""#;

/// What relays the answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Relay {
    Nginx,
    Gateway,
    /// The gateway with `stream.chunk_interval = "50ms"`.
    GatewayChunked,
}

impl Relay {
    const ALL: [Relay; 3] = [Relay::Nginx, Relay::Gateway, Relay::GatewayChunked];

    fn name(self) -> &'static str {
        match self {
            Relay::Nginx => "nginx",
            Relay::Gateway => "gateway (defaults)",
            Relay::GatewayChunked => "gateway, chunk_interval 50ms",
        }
    }

    fn via(self) -> Via {
        match self {
            Relay::Nginx => Via::Nginx,
            Relay::Gateway | Relay::GatewayChunked => Via::Gateway,
        }
    }

    fn gateway_config(self) -> &'static str {
        match self {
            Relay::GatewayChunked => "[stream]\nchunk_interval = \"50ms\"\n",
            Relay::Nginx | Relay::Gateway => "",
        }
    }

    async fn start(self) -> Stack {
        Stack::start_with(
            self.via(),
            EmulatorConfig {
                secret: emulator::Secret::new(SECRET),
                faults: emulator::Faults {
                    stream_interval: STREAM_INTERVAL,
                    ..emulator::Faults::default()
                },
                ..EmulatorConfig::default()
            },
            self.gateway_config(),
        )
        .await
    }
}

/// What the clients of one run received.
#[derive(Clone, Copy, Debug, Default)]
struct Tally {
    interims: usize,
    finals: usize,
    /// A POST refused, a socket gone, or a final that never came.
    failures: usize,
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, other: Self) {
        self.interims += other.interims;
        self.finals += other.finals;
        self.failures += other.failures;
    }
}

impl Tally {
    /// Counts the interims and finals of one text frame; whether a final was among them.
    fn frame(&mut self, text: &str) -> bool {
        self.interims += text.matches(INTERIM_MARK).count();
        let finals = text.matches(FINAL_MARK).count();
        self.finals += finals;
        finals > 0
    }
}

struct StreamedRun {
    relay: Relay,
    produced: usize,
    expected_finals: usize,
    tally: Tally,
    elapsed: Duration,
    spent: Option<Spent>,
}

impl StreamedRun {
    /// Proxy CPU µs per interim the bot produced.
    fn cpu_us(&self) -> Option<f64> {
        self.spent
            .map(|s| s.cpu.as_secs_f64() * 1e6 / self.produced.max(1) as f64)
    }
}

pub async fn streamed(options: &Options) {
    let repeat = options.number("repeat", 1.0, 3.0) as usize;
    let count = options.number("conversations", 100.0, 100.0) as usize;
    let answers = options.number("answers", 1.0, 3.0) as usize;
    let slow = options.number("slow", 200.0, 1000.0) as usize;
    let mut runs = Vec::new();
    for round in 0..repeat {
        for relay in Relay::ALL {
            progress(format!(
                "streamed: {} with {count} conversations, run {}/{repeat}",
                relay.name(),
                round + 1
            ));
            runs.push(streamed_once(relay, count, answers).await);
        }
    }
    println!(
        "\nStreamed answers: {count} conversations, each client asks (POST, `deliveryMode: \
         \"stream\"`) for {answers} answer(s) one after another; each answer is \
         {STREAM_INTERIMS} interims with the cumulative text, {} ms apart (the emulator's \
         `stream {STREAM_INTERIMS}` in this process), then the final message. Proxy CPU from \
         the first POST to the last final at its client, per interim the bot produced. \
         {repeat} run(s) each, interleaved; median (min–max) over runs.\n",
        STREAM_INTERVAL.as_millis()
    );
    println!(
        "| relay | interims produced | interims received | finals received / expected | failures | s until the last final | proxy CPU µs per produced interim | of which kernel µs | proxy context switches per produced interim |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for relay in Relay::ALL {
        let mine: Vec<&StreamedRun> = runs.iter().filter(|r| r.relay == relay).collect();
        let col = |f: &dyn Fn(&StreamedRun) -> Option<f64>, d| {
            spread_opt(&mine.iter().map(|r| f(r)).collect::<Vec<_>>(), d)
        };
        println!(
            "| {} | {} | {} | {} / {} | {} | {} | {} | {} | {} |",
            relay.name(),
            mine.iter().map(|r| r.produced).sum::<usize>(),
            mine.iter().map(|r| r.tally.interims).sum::<usize>(),
            mine.iter().map(|r| r.tally.finals).sum::<usize>(),
            mine.iter().map(|r| r.expected_finals).sum::<usize>(),
            mine.iter().map(|r| r.tally.failures).sum::<usize>(),
            col(&|r| Some(r.elapsed.as_secs_f64()), 2),
            col(&StreamedRun::cpu_us, 2),
            col(
                &|r| r
                    .spent
                    .map(|s| s.kernel.as_secs_f64() * 1e6 / r.produced.max(1) as f64),
                2
            ),
            col(
                &|r| r
                    .spent
                    .map(|s| s.switches as f64 / r.produced.max(1) as f64),
                3
            ),
        );
    }
    println!(
        "\nRatios to nginx (median of the per-round ratios; each round measured all three back to back):\n"
    );
    println!("| relay | proxy CPU per produced interim ÷ nginx |");
    println!("|---|---|");
    let rounds: Vec<&[StreamedRun]> = runs.chunks(Relay::ALL.len()).collect();
    for relay in [Relay::Gateway, Relay::GatewayChunked] {
        let ratios: Vec<Option<f64>> = rounds
            .iter()
            .map(|round| {
                let of = |relay| round.iter().find(|r| r.relay == relay)?.cpu_us();
                Some(of(relay)? / of(Relay::Nginx)?)
            })
            .collect();
        println!("| {} | {} |", relay.name(), spread_opt(&ratios, 2));
    }
    if slow > 0 {
        slow_readers(slow).await;
    }
}

async fn streamed_once(relay: Relay, count: usize, answers: usize) -> StreamedRun {
    let stack = relay.start().await;
    let http = clients::http_client();
    let conversations = open_conversations(&http, &stack.endpoint, count).await;
    let sockets = dial_all(&conversations).await;
    wait_attached(&stack.emulator, &conversations).await;
    let proxy = stack.proxy.as_ref().expect("a relay is a proxy");
    let before = (proxy.cpu(), proxy.kernel_cpu(), proxy.context_switches());
    let start = Instant::now();
    let clients: Vec<_> = sockets
        .into_iter()
        .zip(conversations)
        .map(|(socket, conversation)| {
            let url = format!(
                "{}/conversations/{}/activities",
                stack.endpoint.domain, conversation.id
            );
            tokio::spawn(ask_and_read(
                http.clone(),
                url,
                conversation.token,
                socket,
                answers,
            ))
        })
        .collect();
    let mut tally = Tally::default();
    for client in clients {
        tally += client.await.expect("client task");
    }
    let elapsed = start.elapsed();
    let spent = Spent {
        cpu: proxy.cpu() - before.0,
        kernel: proxy.kernel_cpu() - before.1,
        switches: proxy.context_switches() - before.2,
    };
    stack.stop();
    StreamedRun {
        relay,
        produced: count * answers * STREAM_INTERIMS,
        expected_finals: count * answers,
        tally,
        elapsed,
        spent: Some(spent),
    }
}

/// One conversation's client: asks for `answers` streamed answers, each after the last one's
/// final arrived, reading every frame as it comes.
async fn ask_and_read(
    http: Http,
    url: String,
    token: String,
    mut socket: Socket,
    answers: usize,
) -> Tally {
    let mut tally = Tally::default();
    for _ in 0..answers {
        let posted = clients::request(
            &http,
            http::Method::POST,
            &url,
            Some(&token),
            Bytes::from_static(STREAM_ASK),
        )
        .await;
        if !matches!(posted, Ok((200, _))) {
            tally.failures += 1;
            break;
        }
        if !read_until_final(&mut socket, &mut tally, Duration::from_secs(60)).await {
            tally.failures += 1;
            break;
        }
    }
    tally
}

/// Reads frames until one carries a final; false if the socket ended or `limit` passed.
async fn read_until_final(socket: &mut Socket, tally: &mut Tally, limit: Duration) -> bool {
    tokio::time::timeout(limit, async {
        loop {
            match socket.next().await {
                Some(Ok(Message::Text(text))) => {
                    if tally.frame(text.as_str()) {
                        return true;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return false,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// Slow readers: `count` conversations get the same answers at once; half the clients read
/// one frame every 100 ms (a tenth of the interims' pace), half read nothing until every
/// final is stored upstream. The proxy's RSS is sampled every 50 ms meanwhile; then every
/// client reads on and must get its final.
async fn slow_readers(count: usize) {
    let limit = procs::open_file_limit() as usize;
    // A client socket and the emulator's end of its upstream leg, both in this process.
    if 2 * count + 200 > limit {
        progress(format!(
            "streamed: skipping {count} slow readers (open-file limit {limit}; run `ulimit -n $(ulimit -Hn)`)"
        ));
        return;
    }
    let mut rows = Vec::new();
    for relay in [Relay::Nginx, Relay::Gateway] {
        progress(format!("streamed: {count} slow readers, {}", relay.name()));
        rows.push((relay, slow_readers_once(relay, count).await));
    }
    println!(
        "\nSlow readers: {count} conversations each ask for one streamed answer at once \
         ({STREAM_INTERIMS} interims, {} ms apart); half the clients read one frame every \
         100 ms, half read nothing until every final is stored upstream, then all read on. \
         Proxy RSS sampled every 50 ms; growth = peak − RSS with the sockets open before the \
         answers. One run.\n",
        STREAM_INTERVAL.as_millis()
    );
    println!(
        "| relay | RSS before MiB | peak RSS MiB | peak growth per reader KiB | s until every final stored | finals received / expected | interims received | sockets closed |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (relay, row) in rows {
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | {} / {count} | {} | {} |",
            relay.name(),
            mib(row.baseline_kib),
            mib(row.peak_kib),
            row.peak_kib.saturating_sub(row.baseline_kib) as f64 / count as f64,
            row.stored_after.as_secs_f64(),
            row.tally.finals,
            row.tally.interims,
            row.tally.failures,
        );
    }
}

struct SlowRun {
    baseline_kib: u64,
    peak_kib: u64,
    stored_after: Duration,
    tally: Tally,
}

async fn slow_readers_once(relay: Relay, count: usize) -> SlowRun {
    let stack = relay.start().await;
    let http = clients::http_client();
    let conversations = open_conversations(&http, &stack.endpoint, count).await;
    let sockets = dial_all(&conversations).await;
    wait_attached(&stack.emulator, &conversations).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let proxy = stack.proxy.as_ref().expect("a relay is a proxy");
    let baseline_kib = proxy.memory().rss_kib;
    let (release_tx, release) = watch::channel(false);
    let readers: Vec<_> = sockets
        .into_iter()
        .enumerate()
        .map(|(index, socket)| {
            let pace = (index % 2 == 0).then_some(Duration::from_millis(100));
            tokio::spawn(read_slowly(socket, pace, release.clone()))
        })
        .collect();
    let start = Instant::now();
    let asks = clients::in_parallel(count, OPENING, |index| {
        let http = http.clone();
        let url = format!(
            "{}/conversations/{}/activities",
            stack.endpoint.domain, conversations[index].id
        );
        let token = conversations[index].token.clone();
        async move {
            clients::request(
                &http,
                http::Method::POST,
                &url,
                Some(&token),
                Bytes::from_static(STREAM_ASK),
            )
            .await
        }
    })
    .await;
    let refused = asks.iter().filter(|a| !matches!(a, Ok((200, _)))).count();
    let mut peak_kib = baseline_kib;
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut checked = Instant::now();
    let stored_after = loop {
        peak_kib = peak_kib.max(proxy.memory().rss_kib);
        if checked.elapsed() >= Duration::from_millis(500) {
            checked = Instant::now();
            if conversations
                .iter()
                .all(|c| has_bot_final(&stack.emulator, &c.id))
                || Instant::now() > deadline
            {
                break start.elapsed();
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    // The relay may still be writing what it holds for the slow half.
    let hold_until = Instant::now() + Duration::from_secs(1);
    while Instant::now() < hold_until {
        peak_kib = peak_kib.max(proxy.memory().rss_kib);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = release_tx.send(true);
    let mut tally = Tally {
        failures: refused,
        ..Tally::default()
    };
    for reader in readers {
        tally += reader.await.expect("reader");
    }
    stack.stop();
    SlowRun {
        baseline_kib,
        peak_kib,
        stored_after,
        tally,
    }
}

/// Whether the bot's final message of a streamed answer is stored.
fn has_bot_final(emulator: &EmulatorHandle, conversation: &str) -> bool {
    emulator
        .activities(conversation)
        .iter()
        .any(|activity| activity["type"] == "message" && activity["from"]["id"] == emulator::BOT_ID)
}

/// Reads one frame per `pace` (or nothing, without one) until released, then at full speed
/// until the final.
async fn read_slowly(
    mut socket: Socket,
    pace: Option<Duration>,
    mut release: watch::Receiver<bool>,
) -> Tally {
    let mut tally = Tally::default();
    let mut done = false;
    if let Some(pace) = pace {
        while !done {
            tokio::select! {
                _ = release.changed() => break,
                () = tokio::time::sleep(pace) => {}
            }
            match socket.next().await {
                Some(Ok(Message::Text(text))) => done = tally.frame(text.as_str()),
                Some(Ok(_)) => {}
                Some(Err(_)) | None => {
                    tally.failures += 1;
                    return tally;
                }
            }
        }
    } else {
        let _ = release.changed().await;
    }
    if !done && !read_until_final(&mut socket, &mut tally, Duration::from_secs(60)).await {
        tally.failures += 1;
    }
    tally
}
