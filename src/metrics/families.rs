//! The metric families: each one's name, help, labels and buckets, and their registration
//! in the gateway's registry. What the families mean to an operator is docs/METRICS.md.

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry,
};

use super::{Metrics, PREFIX};

/// A family built from literals: a name, help or label set prometheus refuses is a typo in
/// this file, and fails every test that builds `Metrics` (all of them), not a deployment.
fn valid<T>(family: prometheus::Result<T>) -> T {
    family.expect("metric name, help and labels are valid literals")
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new_custom(Some(PREFIX.to_owned()), None)
            .expect("static prefix is a valid metric name");
        let process_registry = Registry::new();
        #[cfg(target_os = "linux")]
        process_registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metric names are unique");
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
            35.0, 140.0,
        ];
        let mut m = Self {
            http_requests: valid(IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "Client HTTP requests by route, method, status class and bot (none: no bot's host or path matched).",
                ),
                &["route", "method", "status", "bot"],
            )),
            http_duration: valid(HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Client HTTP request duration by route, until response headers.",
                )
                .buckets(latency_buckets.clone()),
                &["route"],
            )),
            upstream_requests: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_requests_total",
                    "Requests to Direct Line by route, status class (error: no response) and bot.",
                ),
                &["route", "status", "bot"],
            )),
            upstream_duration: valid(HistogramVec::new(
                HistogramOpts::new(
                    "upstream_request_duration_seconds",
                    "Direct Line request duration by route, until response headers.",
                )
                .buckets(latency_buckets),
                &["route"],
            )),
            auth_refusals: valid(IntCounterVec::new(
                Opts::new(
                    "auth_refusals_total",
                    "Requests refused before reaching upstream, by reason and bot.",
                ),
                &["reason", "bot"],
            )),
            jwks_fetches: valid(IntCounterVec::new(
                Opts::new(
                    "jwks_fetches_total",
                    "Signed-in mode: fetches of the identity provider's keys (discovery and JWKS), by result (ok, unreachable, invalid) and bot.",
                ),
                &["result", "bot"],
            )),
            tokens: valid(IntCounterVec::new(
                Opts::new(
                    "tokens_total",
                    "Gateway client tokens issued, by kind (generated, refreshed, conversation) and bot.",
                ),
                &["kind", "bot"],
            )),
            client_sockets: valid(IntGaugeVec::new(
                Opts::new("client_websockets", "Client WebSockets open now, by bot."),
                &["bot"],
            )),
            all_client_sockets: valid(IntGauge::new("client_websockets_all", "unexported")),
            upstream_sockets: valid(IntGaugeVec::new(
                Opts::new(
                    "upstream_websockets",
                    "Upstream Direct Line WebSockets open now, by bot.",
                ),
                &["bot"],
            )),
            upstream_connections: valid(IntGaugeVec::new(
                Opts::new(
                    "upstream_http_connections",
                    "Upstream HTTP connections open now (in use or kept idle for reuse), by bot.",
                ),
                &["bot"],
            )),
            hubs: valid(IntGauge::new(
                "stream_hubs",
                "Conversations with a live stream hub on this replica.",
            )),
            activities_relayed: valid(IntCounterVec::new(
                Opts::new(
                    "activities_relayed_total",
                    "Activities received upstream and fanned out to clients (once per activity), by bot.",
                ),
                &["bot"],
            )),
            duplicates_dropped: valid(IntCounter::new(
                "duplicates_dropped_total",
                "Replayed activities dropped because they were already delivered.",
            )),
            bytes_relayed: valid(IntCounterVec::new(
                Opts::new(
                    "bytes_relayed_total",
                    "WebSocket payload bytes relayed, by direction.",
                ),
                &["direction"],
            )),
            upstream_reconnects: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_reconnects_total",
                    "Upstream stream reconnect attempts by result and bot.",
                ),
                &["result", "bot"],
            )),
            resume_duration: valid(Histogram::with_opts(
                HistogramOpts::new(
                    "resume_duration_seconds",
                    "Time from an upstream stream drop until a new upstream stream is open.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ]),
            )),
            slow_clients_closed: valid(IntCounter::new(
                "slow_clients_closed_total",
                "Client WebSockets closed with 1013 because they fell too far behind.",
            )),
            stream_buffer_bytes: valid(IntGauge::new(
                "stream_buffer_bytes",
                "Bytes of frames held by every conversation's replay ring on this replica (bounded by stream.buffer_total_bytes).",
            )),
            stream_buffer_evictions: valid(IntCounterVec::new(
                Opts::new(
                    "stream_buffer_evictions_total",
                    "Frames that left a replay ring early, by the limit that pushed them out (frames, conversation_bytes, process_bytes); clients that still needed one resume by REST.",
                ),
                &["reason"],
            )),
            client_frames_refused: valid(IntCounterVec::new(
                Opts::new(
                    "client_frames_refused_total",
                    "Client WebSocket frames refused and their socket closed, by reason (too_large 1009, bad_utf8 1007, protocol 1002, not_activity 1007, binary 1003, rate_limited 1008) and bot.",
                ),
                &["reason", "bot"],
            )),
            upstream_stream_drops: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_stream_drops_total",
                    "Upstream streams that ended and were resumed, by cause (closed, error, silent, no_pong, frame_too_large, keepalive_failed) and bot.",
                ),
                &["reason", "bot"],
            )),
            connections_refused_per_ip: valid(IntCounter::new(
                "connections_refused_per_ip_total",
                "Client connections closed at accept because limits.max_connections_per_ip were open from that IP.",
            )),
            client_timeouts: valid(IntCounterVec::new(
                Opts::new(
                    "client_timeouts_total",
                    "Client connections or requests cut for being too slow, by phase (first_request: no request within limits.header_read_timeout; body, upload: the body not received within limits.body_read_timeout / upload_read_timeout).",
                ),
                &["phase"],
            )),
            token_resumes: valid(IntCounterVec::new(
                Opts::new(
                    "token_resumes_total",
                    "tokens/refresh calls with a token that had expired (durable resume), by result (ok, past_window, gone, unavailable, error) and bot.",
                ),
                &["result", "bot"],
            )),
            drain_closed: valid(IntCounter::new(
                "drain_closed_websockets_total",
                "Client WebSockets still open at the end of stream.drain_period, closed with 1001 (the rest ended by themselves during the drain).",
            )),
            client_replays: valid(IntCounterVec::new(
                Opts::new(
                    "client_resumes_total",
                    "Client stream attaches by source of the replay (buffer, upstream, live).",
                ),
                &["source"],
            )),
            http_in_flight: valid(IntGauge::new(
                "http_requests_in_flight",
                "Client HTTP requests being handled now (WebSocket sessions not included).",
            )),
            rate_limited: valid(IntCounterVec::new(
                Opts::new(
                    "rate_limited_total",
                    "Requests refused with 429 by a rate limit, by route and bot (per client IP for tokens and conversation starts, per conversation for activities and uploads, per conversation and per client IP for token refreshes).",
                ),
                &["route", "bot"],
            )),
            token_refreshes_shared: valid(IntCounter::new(
                "token_refreshes_shared_total",
                "tokens/refresh calls answered with the upstream token another refresh of the same conversation had just obtained (no Direct Line call).",
            )),
            client_connections: valid(IntGauge::new(
                "client_connections",
                "Open client-listener HTTP connections (once upgraded, a WebSocket counts in client_websockets instead).",
            )),
            worker_connections: valid(IntGaugeVec::new(
                Opts::new(
                    "worker_connections",
                    "Client connections (WebSockets included) each worker thread serves; new ones go to the least loaded (`workers`).",
                ),
                &["worker"],
            )),
            connections_refused: valid(IntCounter::new(
                "connections_refused_total",
                "Client connections closed at accept because limits.max_connections were open.",
            )),
            config_reloads: valid(IntCounterVec::new(
                Opts::new(
                    "config_reloads_total",
                    "Configuration reloads (SIGHUP or a changed configuration, secret or key file) by result (ok, error; on error the previous configuration keeps serving).",
                ),
                &["result"],
            )),
            tls_reloads: valid(IntCounterVec::new(
                Opts::new(
                    "tls_reloads_total",
                    "Client-listener certificate reloads after a file change, by result (ok, error).",
                ),
                &["result"],
            )),
            upstream_bodies_scrubbed: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_bodies_scrubbed_total",
                    "Upstream bodies changed before a client saw them, by kind (error_replaced: not Direct Line-shaped or over limits.upstream_error_body, replaced by the gateway's own; error_scrubbed: a Direct Line error whose code or message held the secret, a token or the upstream host; success_scrubbed: a success body that held the secret or a token) and bot.",
                ),
                &["kind", "bot"],
            )),
            stream_urls_refused: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_stream_urls_refused_total",
                    "Upstream stream URLs refused because they were not on the bot's upstream (other host, port, scheme or path), by bot.",
                ),
                &["bot"],
            )),
            lifetimes_clamped: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_lifetimes_clamped_total",
                    "Upstream token lifetimes (expires_in) outside 1..=3600 s or not an integer, replaced by the clamped or default value, by bot.",
                ),
                &["bot"],
            )),
            discoveries: valid(IntCounterVec::new(
                Opts::new(
                    "discoveries_total",
                    "Discoveries of a Copilot Studio agent's Direct Line host from its environment's regional channel settings, by bot and result (ok; unreachable: no answer in time or no connection; refused: not 2xx; invalid: not the expected JSON or too large; foreign_host: a URL that is no Direct Line host).",
                ),
                &["bot", "result"],
            )),
            discovered_upstream: valid(IntGaugeVec::new(
                Opts::new(
                    "discovered_upstream_info",
                    "The Direct Line host a Copilot Studio bot uses, discovered from its environment (value 1); host=\"none\" at 0 for every bot.",
                ),
                &["bot", "host"],
            )),
            trace_spans_exported: valid(IntCounter::new(
                "trace_spans_exported_total",
                "Trace spans sent to the OTLP collector and accepted by it (0 while [tracing] is off).",
            )),
            trace_spans_dropped: valid(IntCounterVec::new(
                Opts::new(
                    "trace_spans_dropped_total",
                    "Trace spans lost, by reason (queue_full: ended while tracing.queue_size spans waited for a slow or absent collector; export_failed: in a batch the collector refused or never answered).",
                ),
                &["reason"],
            )),
            upstream_credential_refusals: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_credential_refusals_total",
                    "Answers 401 or 403 from Direct Line to a call made with the bot's secret (the start-up and reload check, and normal traffic): the secret is wrong or revoked, and /readyz answers 503 until a call with it succeeds.",
                ),
                &["bot"],
            )),
            upstream_stream_opens: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_stream_opens_total",
                    "Upstream Direct Line WebSockets opened (first, resumed, or taken back after a collision), by bot.",
                ),
                &["bot"],
            )),
            upstream_stream_collisions: valid(IntCounterVec::new(
                Opts::new(
                    "upstream_stream_collisions_total",
                    "Upstream WebSockets Direct Line closed with `collision` because another socket (another replica's hub) opened for the conversation, by bot.",
                ),
                &["bot"],
            )),
            upstream_polling_seconds: valid(CounterVec::new(
                Opts::new(
                    "upstream_polling_seconds_total",
                    "Time hubs spent serving their clients by polling GET …/activities after a collision, summed over hubs, by bot.",
                ),
                &["bot"],
            )),
            polling_hubs: valid(IntGauge::new(
                "stream_hubs_polling",
                "Hubs on this replica polling Direct Line because another replica holds the conversation's stream.",
            )),
            policy_verdicts: valid(IntCounterVec::new(
                Opts::new(
                    "policy_verdicts_total",
                    "Activities screened by the activity policy, by bot, direction (user, bot) and outcome (allowed, denied, replaced, failed: the webhook gave no verdict).",
                ),
                &["bot", "direction", "outcome"],
            )),
            policy_redactions: valid(IntCounterVec::new(
                Opts::new(
                    "policy_redactions_total",
                    "Personal data replaced by the activity policy's built-in redactions, by bot and kind (email, phone, credit_card).",
                ),
                &["bot", "kind"],
            )),
            policy_webhook_duration: valid(HistogramVec::new(
                HistogramOpts::new(
                    "policy_webhook_duration_seconds",
                    "Policy webhook calls, from asking to the verdict or failure (the wait for a free slot included), by direction.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
                ]),
                &["direction"],
            )),
            policy_webhook_failures: valid(IntCounterVec::new(
                Opts::new(
                    "policy_webhook_failures_total",
                    "Policy webhook calls that gave no verdict, by reason (timeout, unreachable, status, invalid, too_large: over policy.max_body, queue_full: over policy.queue waiting).",
                ),
                &["reason"],
            )),
            polls_held: valid(IntGauge::new(
                "polls_held",
                "GET activities polls waiting for an activity now (bounded by polling.max_held).",
            )),
            poll_hubs: valid(IntGauge::new(
                "poll_hubs",
                "Conversation hubs (upstream sockets) opened by held polls on this replica (bounded by polling.max_hubs).",
            )),
            polls: valid(IntCounterVec::new(
                Opts::new(
                    "polls_total",
                    "GET activities polls served with polling.hold set, by result (activities, empty: held until polling.hold passed, passthrough: answered by Direct Line unheld).",
                ),
                &["result"],
            )),
            polls_refused: valid(IntCounterVec::new(
                Opts::new(
                    "polls_refused_total",
                    "Polls refused with 429 by the bound they passed (conversation, ip, total), or passed through unheld because polling.max_hubs hubs were open (hubs).",
                ),
                &["reason"],
            )),
            policy_webhook_waiting: valid(IntGauge::new(
                "policy_webhook_waiting",
                "Activities waiting for a free policy webhook slot (policy.concurrency in flight).",
            )),
            streamed_answers: super::streamed_answers::StreamedAnswers::new(),
            record_written: valid(IntCounter::new(
                "record_written_total",
                "Activities written to the conversation record's daily file.",
            )),
            record_refused: valid(IntCounter::new(
                "record_refused_total",
                "Activities not recorded because record.queue entries already waited for the writer (never waited for).",
            )),
            record_batches: valid(IntCounterVec::new(
                Opts::new(
                    "record_batches_total",
                    "Record batches POSTed to record.url, by outcome (sent: answered 2xx and removed from the spool; failed: kept for a retry).",
                ),
                &["outcome"],
            )),
            record_spool_bytes: valid(IntGauge::new(
                "record_spool_bytes",
                "Bytes of records waiting in the on-disk spool for record.url.",
            )),
            record_spool_full: valid(IntCounter::new(
                "record_spool_full_total",
                "Records kept out of the spool because it held record.spool_size (still in the daily file, never sent to record.url).",
            )),
            registry,
            process_registry,
            family_names: Vec::new(),
        };
        m.register_all();
        m
    }

    fn register_all(&mut self) {
        let collectors: Vec<Box<dyn Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.http_in_flight.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.auth_refusals.clone()),
            Box::new(self.jwks_fetches.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.client_sockets.clone()),
            Box::new(self.upstream_sockets.clone()),
            Box::new(self.upstream_connections.clone()),
            Box::new(self.hubs.clone()),
            Box::new(self.activities_relayed.clone()),
            Box::new(self.duplicates_dropped.clone()),
            Box::new(self.bytes_relayed.clone()),
            Box::new(self.upstream_reconnects.clone()),
            Box::new(self.resume_duration.clone()),
            Box::new(self.slow_clients_closed.clone()),
            Box::new(self.stream_buffer_bytes.clone()),
            Box::new(self.stream_buffer_evictions.clone()),
            Box::new(self.client_frames_refused.clone()),
            Box::new(self.upstream_stream_drops.clone()),
            Box::new(self.token_resumes.clone()),
            Box::new(self.connections_refused_per_ip.clone()),
            Box::new(self.client_timeouts.clone()),
            Box::new(self.drain_closed.clone()),
            Box::new(self.client_replays.clone()),
            Box::new(self.config_reloads.clone()),
            Box::new(self.rate_limited.clone()),
            Box::new(self.token_refreshes_shared.clone()),
            Box::new(self.client_connections.clone()),
            Box::new(self.worker_connections.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.upstream_bodies_scrubbed.clone()),
            Box::new(self.stream_urls_refused.clone()),
            Box::new(self.lifetimes_clamped.clone()),
            Box::new(self.discoveries.clone()),
            Box::new(self.discovered_upstream.clone()),
            Box::new(self.trace_spans_exported.clone()),
            Box::new(self.trace_spans_dropped.clone()),
            Box::new(self.upstream_stream_opens.clone()),
            Box::new(self.upstream_stream_collisions.clone()),
            Box::new(self.upstream_polling_seconds.clone()),
            Box::new(self.polling_hubs.clone()),
            Box::new(self.policy_verdicts.clone()),
            Box::new(self.policy_redactions.clone()),
            Box::new(self.policy_webhook_duration.clone()),
            Box::new(self.policy_webhook_failures.clone()),
            Box::new(self.policy_webhook_waiting.clone()),
            Box::new(self.polls_held.clone()),
            Box::new(self.poll_hubs.clone()),
            Box::new(self.polls.clone()),
            Box::new(self.polls_refused.clone()),
            Box::new(self.upstream_credential_refusals.clone()),
            Box::new(self.record_written.clone()),
            Box::new(self.record_refused.clone()),
            Box::new(self.record_batches.clone()),
            Box::new(self.record_spool_bytes.clone()),
            Box::new(self.record_spool_full.clone()),
        ];
        let collectors = collectors
            .into_iter()
            .chain(self.streamed_answers.collectors());
        for collector in collectors {
            self.family_names.extend(
                collector
                    .desc()
                    .iter()
                    .map(|desc| format!("{PREFIX}_{}", desc.fq_name)),
            );
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
        self.family_names.push(format!("{PREFIX}_build_info"));
        let build = valid(IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1."),
            &["version", "git_sha"],
        ));
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("GIT_SHA")])
            .set(1);
        self.registry
            .register(Box::new(build))
            .expect("metric names are unique");
    }
}
