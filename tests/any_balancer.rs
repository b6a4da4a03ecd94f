//! Replicas behind a balancer with no conversation affinity (ARCHITECTURE §15): one
//! conversation's client sockets and posts spread over several gateways that share a token
//! key and one Direct Line (the emulator, which like Direct Line keeps one stream per
//! conversation and closes the older socket with 1000 `collision`). The hubs must not take
//! the stream from each other in a loop: the one that lost it polls, every client gets
//! every activity once and in order, and Direct Line sees a bounded number of stream opens.

mod support;

use std::time::Duration;

use directline_gateway::config::Config;
use directline_gateway::server::Running;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use serde_json::Value;
use support::balancer::Balancer;
use support::*;

/// One replica's configuration: the harness's short stream timings, the shared token key,
/// and collision timings for test time.
fn replica_config(upstream: &str, retry_base: Duration, retry_max: Duration) -> Config {
    let mut config = config_with_upstream(upstream);
    config.stream.keepalive_interval = Duration::from_millis(500);
    config.stream.liveness_timeout = Duration::from_secs(2);
    config.stream.linger = Duration::from_millis(500);
    config.stream.backoff_base = Duration::from_millis(20);
    config.stream.backoff_max = Duration::from_millis(200);
    config.stream.resume_budget = Duration::from_secs(15);
    config.stream.collision_poll_interval = Duration::from_millis(100);
    config.stream.collision_retry_base = retry_base;
    config.stream.collision_retry_max = retry_max;
    config.shutdown_grace = Duration::from_secs(2);
    config.bot_mut().rate_limits.activities.per_minute = 0;
    config
}

struct Replicas {
    emulator: directline_emulator::EmulatorHandle,
    replicas: Vec<Running>,
    balancer: Balancer,
    /// Talks to the balancer; a new connection per request, so requests spread too.
    front: Harness,
}

impl Replicas {
    async fn start(count: usize, retry_base: Duration, retry_max: Duration) -> Replicas {
        let emulator = Harness::emulator(directline_emulator::EmulatorConfig {
            secret: directline_emulator::Secret::new(SECRET),
            keepalive_interval: Duration::from_millis(300),
            ..Default::default()
        })
        .await;
        let mut replicas = Vec::new();
        for _ in 0..count {
            replicas.push(
                start_gateway(replica_config(&emulator.base_url(), retry_base, retry_max)).await,
            );
        }
        let balancer = Balancer::start(replicas.iter().map(|r| r.client_addr).collect()).await;
        let front = Harness {
            gateway: None,
            emulator: emulator.clone(),
            base: balancer.base(),
            admin: format!("http://{}", replicas[0].admin_addr),
            http: Client::builder(TokioExecutor::new())
                .pool_max_idle_per_host(0)
                .build_http(),
        };
        Replicas {
            emulator,
            replicas,
            balancer,
            front,
        }
    }

    /// The sum of one series over every replica.
    async fn total(&self, series: &str) -> f64 {
        let mut sum = 0.0;
        for replica in &self.replicas {
            let admin = Harness::attach_in_process(self.emulator.clone(), replica);
            sum += metric(&admin.metrics().await, series);
        }
        sum
    }
}

/// The sequence number in an emulator activity id (`<conversation>|0000007`).
fn sequence(activity: &Value) -> u64 {
    activity["id"]
        .as_str()
        .and_then(|id| id.rsplit_once('|'))
        .and_then(|(_, n)| n.parse().ok())
        .unwrap_or_else(|| panic!("no sequence in {activity}"))
}

/// Every activity once, in the order Direct Line stored them, and the socket still open.
fn assert_complete(seen: &Seen, expected: usize, which: &str) {
    assert_eq!(seen.closed, None, "{which} was closed");
    seen.assert_no_duplicate_ids();
    let sequences: Vec<u64> = seen.activities.iter().map(sequence).collect();
    assert_eq!(
        sequences,
        (0..expected as u64).collect::<Vec<_>>(),
        "{which} saw {:?}",
        seen.texts()
    );
}

const STREAMS: &str = "directline_gateway_upstream_websockets{bot=\"default\"}";
const POLLING: &str = "directline_gateway_stream_hubs_polling";
const COLLISIONS: &str = "directline_gateway_upstream_stream_collisions_total{bot=\"default\"}";

/// Three replicas, one client socket of the conversation on each, posts spread over all
/// three and two upstream drops: the hubs settle with one holding the stream and two
/// polling, and every client gets every activity once, in order, on a socket that stays
/// open. The collision retry waits are longer than the test, so the bound on stream opens
/// at Direct Line is exact: one per replica's hub, plus one per drop (the holder resumes).
/// Before collision-aware hubs, each hub that lost the stream took it straight back and
/// the opens grew without bound.
#[tokio::test]
async fn three_replicas_share_one_conversation_without_fighting() {
    let r = Replicas::start(3, Duration::from_secs(600), Duration::from_secs(600)).await;
    let conversation = r.front.conversation().await;
    let mut readers = Vec::new();
    for _ in 0..3 {
        readers.push(open_stream(&conversation.stream_url).await);
    }
    assert!(
        r.balancer.connections().iter().all(|&n| n >= 1),
        "{:?}",
        r.balancer.connections()
    );
    eventually("one hub holds the stream and two poll", async || {
        r.total(STREAMS).await == 1.0 && r.total(POLLING).await == 2.0
    })
    .await;
    assert_eq!(r.emulator.live_streams(&conversation.id), 1);

    const MESSAGES: usize = 12;
    let mut tasks = Vec::new();
    for ws in readers {
        tasks.push(tokio::spawn(async move {
            let mut ws = ws;
            let mut seen = Seen::default();
            read_until(&mut ws, &mut seen, |s| s.activities.len() >= 2 * MESSAGES).await;
            (ws, seen)
        }));
    }
    let mut drops = 0u64;
    for n in 0..MESSAGES {
        r.front
            .post_message(&conversation, &format!("message {n}"))
            .await;
        if n == 3 || n == 8 {
            // The holder's socket is cut without a close frame; it resumes from its
            // watermark. Wait until it has, so each drop costs exactly one open.
            r.emulator.drop_all_streams();
            drops += 1;
            eventually("the holder resumed", async || {
                r.emulator.live_streams(&conversation.id) == 1
            })
            .await;
        }
    }
    let mut readers = Vec::new();
    for (index, task) in tasks.into_iter().enumerate() {
        let (ws, seen) = task.await.unwrap();
        assert_complete(&seen, 2 * MESSAGES, &format!("client {index}"));
        readers.push(ws);
    }

    let opens = r.emulator.stream_opens(&conversation.id);
    let bound = 3 + drops;
    assert!(
        opens <= bound,
        "{opens} stream opens at Direct Line, bound {bound}"
    );
    assert!(r.total(COLLISIONS).await >= 2.0);
    assert!(
        r.total("directline_gateway_upstream_polling_seconds_total{bot=\"default\"}")
            .await
            > 0.0
    );
    assert!(
        r.total("directline_gateway_upstream_requests_total{route=\"stream_poll\",status=\"2xx\",bot=\"default\"}")
            .await
            > 0.0
    );
    drop(readers);
}

/// Two replicas: the second's hub takes the stream, the first's polls; when the second's
/// client leaves (a tab closed) and its hub lingers out, the first takes the stream back
/// within its retry schedule and its client keeps receiving, once each, throughout.
#[tokio::test]
async fn a_hub_left_alone_takes_the_stream_back() {
    let r = Replicas::start(2, Duration::from_millis(200), Duration::from_millis(400)).await;
    let conversation = r.front.conversation().await;
    let mut first = open_stream(&conversation.stream_url).await;
    let second = open_stream(&conversation.stream_url).await;
    eventually("one hub holds the stream and one polls", async || {
        r.total(STREAMS).await == 1.0 && r.total(POLLING).await == 1.0
    })
    .await;
    let mut seen = Seen::default();
    r.front.post_message(&conversation, "shared").await;
    read_until(&mut first, &mut seen, |s| s.texts().len() >= 2).await;

    drop(second);
    eventually("the remaining hub holds the stream", async || {
        r.total(POLLING).await == 0.0 && r.total(STREAMS).await == 1.0
    })
    .await;
    assert_eq!(r.emulator.live_streams(&conversation.id), 1);
    r.front.post_message(&conversation, "alone").await;
    read_until(&mut first, &mut seen, |s| s.texts().len() >= 4).await;
    assert_complete(&seen, 4, "the remaining client");
    assert!(r.total(COLLISIONS).await >= 1.0);
}
