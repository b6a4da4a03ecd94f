//! Prometheus metrics in the gateway's own registry. Labels are bounded sets
//! (route names, status classes, reasons, bot names from the configuration): never a
//! conversation id, user id, token or path.

use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "directline_gateway";

/// Label values of the families whose label sets are fixed. [`Metrics::initialise`] exports
/// each of them at 0 from the start: a rate or `increase()` alert cannot fire on a series'
/// first sample, so a series that appears only with its first event hides that event.
pub const AUTH_REFUSAL_REASONS: [&str; 6] = [
    "missing",
    "invalid",
    "expired",
    "wrong_conversation",
    "wrong_bot",
    "invalid_ticket",
];
/// `auth_refusals_total`'s reasons in signed-in mode (`identity::refusal::Refusal`): which
/// check of the identity provider's token failed.
pub const SIGN_IN_REFUSAL_REASONS: [&str; 14] = [
    "idp_missing",
    "idp_too_large",
    "idp_malformed",
    "idp_algorithm",
    "idp_unknown_kid",
    "idp_signature",
    "idp_expired",
    "idp_not_yet_valid",
    "idp_issuer",
    "idp_audience",
    "idp_claims",
    "idp_unavailable",
    "idp_proof_missing",
    "idp_other_user",
];
/// `jwks_fetches_total`'s results (`identity::jwks`).
pub const JWKS_FETCH_RESULTS: [&str; 3] = ["ok", "unreachable", "invalid"];
/// `policy_*{direction}`: which way a screened activity went.
pub const POLICY_DIRECTIONS: [&str; 2] = ["user", "bot"];
/// `policy_verdicts_total{outcome}`.
pub const POLICY_OUTCOMES: [&str; 4] = ["allowed", "denied", "replaced", "failed"];
/// `policy_redactions_total{kind}` (`policy::redact`).
pub const POLICY_REDACTION_KINDS: [&str; 3] = ["email", "phone", "credit_card"];
/// `policy_webhook_failures_total{reason}` (`policy::webhook::Failure`).
pub const POLICY_WEBHOOK_FAILURES: [&str; 6] = [
    "timeout",
    "unreachable",
    "status",
    "invalid",
    "too_large",
    "queue_full",
];
pub const TOKEN_KINDS: [&str; 3] = ["generated", "refreshed", "conversation"];
pub const RECONNECT_RESULTS: [&str; 4] = ["ok", "retry", "gone", "exhausted"];
pub const RESUME_SOURCES: [&str; 3] = ["upstream", "buffer", "catch_up"];
pub const DIRECTIONS: [&str; 2] = ["downstream", "upstream"];
pub const RELOAD_RESULTS: [&str; 2] = ["ok", "error"];
/// Routes a rate limit applies to (per client IP: tokens and starts; per conversation:
/// activities and uploads).
pub const RATE_LIMITED_ROUTES: [&str; 6] = [
    "tokens_generate",
    "tokens_refresh",
    "conversations_start",
    "activities_post",
    "upload",
    // Activities sent as frames on `…/stream/multimodal`.
    "stream",
];
/// `client_frames_refused_total`'s reasons (`stream::client::Refusal`, `stream::multimodal`).
pub const FRAME_REFUSALS: [&str; 8] = [
    "too_large",
    "bad_utf8",
    "protocol",
    "not_activity",
    "binary",
    "rate_limited",
    // The activity policy (`[policy]`) on a multimodal frame.
    "policy_denied",
    "policy_unavailable",
];
/// `upstream_stream_drops_total`'s causes (`stream::relay`).
pub const STREAM_DROP_REASONS: [&str; 7] = [
    "closed",
    "collision",
    "error",
    "silent",
    "no_pong",
    "frame_too_large",
    "keepalive_failed",
];
/// `token_resumes_total`'s results.
pub const TOKEN_RESUME_RESULTS: [&str; 5] = ["ok", "past_window", "gone", "unavailable", "error"];
/// `upstream_bodies_scrubbed_total`'s kinds (`rest`, `scrub`).
pub const SCRUB_KINDS: [&str; 3] = ["error_replaced", "error_scrubbed", "success_scrubbed"];
/// `client_timeouts_total`'s phases.
pub const CLIENT_TIMEOUT_PHASES: [&str; 4] = ["first_request", "body", "upload", "http2_idle"];
/// `stream_buffer_evictions_total`'s reasons (`stream::hub::Eviction`).
pub const EVICTION_REASONS: [&str; 3] = ["frames", "conversation_bytes", "process_bytes"];
/// `upstream_requests_total`'s status label: a class, or no answer at all.
pub const UPSTREAM_STATUSES: [&str; 5] = ["2xx", "4xx", "5xx", "timeout", "error"];
/// `trace_spans_dropped_total`'s reasons (`telemetry::export`).
pub const TRACE_DROP_REASONS: [&str; 2] = ["queue_full", "export_failed"];
/// Held polls (`stream::poll`): how a poll was answered, and why one was refused or not held.
pub const POLL_RESULTS: [&str; 3] = ["activities", "empty", "passthrough"];
pub const POLL_REFUSAL_REASONS: [&str; 4] = ["conversation", "ip", "total", "hubs"];
/// `discoveries_total`'s results (`upstream::discovery`).
pub const DISCOVERY_RESULTS: [&str; 5] =
    ["ok", "unreachable", "refused", "invalid", "foreign_host"];
/// The `host` label of `discovered_upstream_info` before anything was discovered.
pub const NO_HOST: &str = "none";
/// The routes that call Direct Line (`stream_resume`: the hub's reconnect GET;
/// `stream_catch_up`: the REST pages a client or a hub catches up with;
/// `stream_token_refresh`: a hub keeping a secretless bot's token alive; `discovery`: a
/// Copilot Studio environment's regional settings; `stream_poll`: a hub polling after a
/// collision; `credential_check`: the secret's check at start and after each reload).
pub const UPSTREAM_ROUTES: [&str; 13] = [
    "tokens_generate",
    "tokens_refresh",
    "conversations_start",
    "conversations_reconnect",
    "activities_get",
    "activities_post",
    "upload",
    "stream_resume",
    "stream_catch_up",
    "stream_token_refresh",
    "discovery",
    "stream_poll",
    // The secret's check at start and after each reload (`upstream::credential`).
    "credential_check",
];
/// Client routes with the method each is called with (preflight and the rest return 4xx
/// for other methods, counted as they come).
pub const CLIENT_ROUTES: [(&str, &str); 10] = [
    ("tokens_generate", "POST"),
    ("tokens_refresh", "POST"),
    ("conversations_start", "POST"),
    ("conversations_reconnect", "GET"),
    ("activities_get", "GET"),
    ("activities_post", "POST"),
    ("upload", "POST"),
    ("stream", "GET"),
    ("session_id", "GET"),
    ("preflight", "OPTIONS"),
];

pub struct Metrics {
    registry: Registry,
    /// The standard `process_*` families (memory, CPU, file descriptors, start time), kept
    /// unprefixed so the usual dashboards and alerts find them under their usual names.
    process_registry: Registry,
    /// Every family registered, with its exported name: what [`Metrics::initialise`] must
    /// cover, and what a test checks against a scrape.
    family_names: Vec<String>,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub auth_refusals: IntCounterVec,
    /// Signed-in mode: fetches of an identity provider's discovery document and JWKS.
    pub jwks_fetches: IntCounterVec,
    pub tokens: IntCounterVec,
    pub client_sockets: IntGaugeVec,
    /// Client WebSockets of all bots: what the connection cap counts. Not exported (the
    /// labelled gauge sums to it).
    all_client_sockets: IntGauge,
    pub upstream_sockets: IntGaugeVec,
    /// Upstream HTTP/1 connections open (in use or kept idle), by bot.
    pub upstream_connections: IntGaugeVec,
    pub hubs: IntGauge,
    pub activities_relayed: IntCounterVec,
    pub duplicates_dropped: IntCounter,
    pub bytes_relayed: IntCounterVec,
    pub upstream_reconnects: IntCounterVec,
    pub resume_duration: Histogram,
    pub slow_clients_closed: IntCounter,
    /// Livestreamed answers: interims relayed and coalesced, streams finalized and abandoned.
    pub streamed_answers: crate::stream::answer_metrics::StreamedAnswers,
    pub stream_buffer_bytes: IntGauge,
    pub stream_buffer_evictions: IntCounterVec,
    pub client_frames_refused: IntCounterVec,
    pub upstream_stream_drops: IntCounterVec,
    pub token_resumes: IntCounterVec,
    pub connections_refused_per_ip: IntCounter,
    pub client_timeouts: IntCounterVec,
    pub drain_closed: IntCounter,
    pub client_replays: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub rate_limited: IntCounterVec,
    /// tokens/refresh answered with the conversation's current upstream token, no call.
    pub token_refreshes_shared: IntCounter,
    pub client_connections: IntGauge,
    /// Connections (WebSockets included) each worker thread serves, by worker number.
    pub worker_connections: IntGaugeVec,
    pub connections_refused: IntCounter,
    pub tls_reloads: IntCounterVec,
    pub upstream_bodies_scrubbed: IntCounterVec,
    pub stream_urls_refused: IntCounterVec,
    pub lifetimes_clamped: IntCounterVec,
    pub discoveries: IntCounterVec,
    /// 1 for the Direct Line host a Copilot Studio bot uses now (at most one per bot,
    /// besides `host="none"` at 0).
    pub discovered_upstream: IntGaugeVec,
    /// Tracing: spans the collector accepted, and spans lost by reason.
    pub trace_spans_exported: IntCounter,
    pub trace_spans_dropped: IntCounterVec,
    /// Replicas sharing a conversation (`stream::relay`'s polling mode): upstream sockets
    /// opened, taken by another socket (`collision`), and time spent polling instead.
    pub upstream_stream_opens: IntCounterVec,
    pub upstream_stream_collisions: IntCounterVec,
    pub upstream_polling_seconds: CounterVec,
    pub polling_hubs: IntGauge,
    // Activity policy (`[policy]`, `src/policy/`): present at 0 for every bot from the start.
    pub policy_verdicts: IntCounterVec,
    pub policy_redactions: IntCounterVec,
    pub policy_webhook_duration: HistogramVec,
    pub policy_webhook_failures: IntCounterVec,
    pub policy_webhook_waiting: IntGauge,
    /// Held polls (`[polling] hold`): polls waiting now, hubs polls opened, polls answered
    /// by result, polls refused (or, for `hubs`, passed through unheld) by bound.
    pub polls_held: IntGauge,
    pub poll_hubs: IntGauge,
    pub polls: IntCounterVec,
    pub polls_refused: IntCounterVec,
    /// Answers 401/403 from Direct Line to a call carrying a bot's secret: a
    /// wrong or revoked secret, counted per bot.
    pub upstream_credential_refusals: IntCounterVec,
    // The conversation record (`[record]`, `src/record/`): present at 0 from the start.
    pub record_written: IntCounter,
    pub record_refused: IntCounter,
    pub record_batches: IntCounterVec,
    pub record_spool_bytes: IntGauge,
    pub record_spool_full: IntCounter,
}

/// One client WebSocket counted in its bot's gauge and in the replica-wide count, until dropped.
pub struct OpenClientSocket {
    by_bot: IntGauge,
    all: IntGauge,
}

impl Drop for OpenClientSocket {
    fn drop(&mut self) {
        self.by_bot.dec();
        self.all.dec();
    }
}

/// HTTP status class label (`2xx` …) so the label set stays tiny.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

impl Metrics {
    pub fn client_socket_opened(&self, bot: &str) -> OpenClientSocket {
        let by_bot = self.client_sockets.with_label_values(&[bot]);
        by_bot.inc();
        self.all_client_sockets.inc();
        OpenClientSocket {
            by_bot,
            all: self.all_client_sockets.clone(),
        }
    }

    /// Client WebSockets open now, all bots together.
    pub fn open_client_sockets(&self) -> i64 {
        self.all_client_sockets.get()
    }

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
            http_requests: IntCounterVec::new(
                Opts::new(
                    "http_requests_total",
                    "Client HTTP requests by route, method, status class and bot (none: no bot's host or path matched).",
                ),
                &["route", "method", "status", "bot"],
            )
            .expect("valid metric"),
            http_duration: HistogramVec::new(
                HistogramOpts::new(
                    "http_request_duration_seconds",
                    "Client HTTP request duration by route, until response headers.",
                )
                .buckets(latency_buckets.clone()),
                &["route"],
            )
            .expect("valid metric"),
            upstream_requests: IntCounterVec::new(
                Opts::new(
                    "upstream_requests_total",
                    "Requests to Direct Line by route, status class (error: no response) and bot.",
                ),
                &["route", "status", "bot"],
            )
            .expect("valid metric"),
            upstream_duration: HistogramVec::new(
                HistogramOpts::new(
                    "upstream_request_duration_seconds",
                    "Direct Line request duration by route, until response headers.",
                )
                .buckets(latency_buckets),
                &["route"],
            )
            .expect("valid metric"),
            auth_refusals: IntCounterVec::new(
                Opts::new(
                    "auth_refusals_total",
                    "Requests refused before reaching upstream, by reason and bot.",
                ),
                &["reason", "bot"],
            )
            .expect("valid metric"),
            jwks_fetches: IntCounterVec::new(
                Opts::new(
                    "jwks_fetches_total",
                    "Signed-in mode: fetches of the identity provider's keys (discovery and JWKS), by result (ok, unreachable, invalid) and bot.",
                ),
                &["result", "bot"],
            )
            .expect("valid metric"),
            tokens: IntCounterVec::new(
                Opts::new(
                    "tokens_total",
                    "Gateway client tokens issued, by kind (generated, refreshed, conversation) and bot.",
                ),
                &["kind", "bot"],
            )
            .expect("valid metric"),
            client_sockets: IntGaugeVec::new(
                Opts::new("client_websockets", "Client WebSockets open now, by bot."),
                &["bot"],
            )
            .expect("valid metric"),
            all_client_sockets: IntGauge::new("client_websockets_all", "unexported")
                .expect("valid metric"),
            upstream_sockets: IntGaugeVec::new(
                Opts::new(
                    "upstream_websockets",
                    "Upstream Direct Line WebSockets open now, by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            upstream_connections: IntGaugeVec::new(
                Opts::new(
                    "upstream_http_connections",
                    "Upstream HTTP connections open now (in use or kept idle for reuse), by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            hubs: IntGauge::new(
                "stream_hubs",
                "Conversations with a live stream hub on this replica.",
            )
            .expect("valid metric"),
            activities_relayed: IntCounterVec::new(
                Opts::new(
                    "activities_relayed_total",
                    "Activities received upstream and fanned out to clients (once per activity), by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            duplicates_dropped: IntCounter::new(
                "duplicates_dropped_total",
                "Replayed activities dropped because they were already delivered.",
            )
            .expect("valid metric"),
            bytes_relayed: IntCounterVec::new(
                Opts::new(
                    "bytes_relayed_total",
                    "WebSocket payload bytes relayed, by direction.",
                ),
                &["direction"],
            )
            .expect("valid metric"),
            upstream_reconnects: IntCounterVec::new(
                Opts::new(
                    "upstream_reconnects_total",
                    "Upstream stream reconnect attempts by result and bot.",
                ),
                &["result", "bot"],
            )
            .expect("valid metric"),
            resume_duration: Histogram::with_opts(
                HistogramOpts::new(
                    "resume_duration_seconds",
                    "Time from an upstream stream drop until a new upstream stream is open.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
                    300.0,
                ]),
            )
            .expect("valid metric"),
            slow_clients_closed: IntCounter::new(
                "slow_clients_closed_total",
                "Client WebSockets closed with 1013 because they fell too far behind.",
            )
            .expect("valid metric"),
            stream_buffer_bytes: IntGauge::new(
                "stream_buffer_bytes",
                "Bytes of frames held by every conversation's replay ring on this replica (bounded by stream.buffer_total_bytes).",
            )
            .expect("valid metric"),
            stream_buffer_evictions: IntCounterVec::new(
                Opts::new(
                    "stream_buffer_evictions_total",
                    "Frames that left a replay ring early, by the limit that pushed them out (frames, conversation_bytes, process_bytes); clients that still needed one resume by REST.",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            client_frames_refused: IntCounterVec::new(
                Opts::new(
                    "client_frames_refused_total",
                    "Client WebSocket frames refused and their socket closed, by reason (too_large 1009, bad_utf8 1007, protocol 1002, not_activity 1007, binary 1003, rate_limited 1008) and bot.",
                ),
                &["reason", "bot"],
            )
            .expect("valid metric"),
            upstream_stream_drops: IntCounterVec::new(
                Opts::new(
                    "upstream_stream_drops_total",
                    "Upstream streams that ended and were resumed, by cause (closed, error, silent, no_pong, frame_too_large, keepalive_failed) and bot.",
                ),
                &["reason", "bot"],
            )
            .expect("valid metric"),
            connections_refused_per_ip: IntCounter::new(
                "connections_refused_per_ip_total",
                "Client connections closed at accept because limits.max_connections_per_ip were open from that IP.",
            )
            .expect("valid metric"),
            client_timeouts: IntCounterVec::new(
                Opts::new(
                    "client_timeouts_total",
                    "Client connections or requests cut for being too slow, by phase (first_request: no request within limits.header_read_timeout; body, upload: the body not received within limits.body_read_timeout / upload_read_timeout).",
                ),
                &["phase"],
            )
            .expect("valid metric"),
            token_resumes: IntCounterVec::new(
                Opts::new(
                    "token_resumes_total",
                    "tokens/refresh calls with a token that had expired (durable resume), by result (ok, past_window, gone, unavailable, error) and bot.",
                ),
                &["result", "bot"],
            )
            .expect("valid metric"),
            drain_closed: IntCounter::new(
                "drain_closed_websockets_total",
                "Client WebSockets still open at the end of stream.drain_period, closed with 1001 (the rest ended by themselves during the drain).",
            )
            .expect("valid metric"),
            client_replays: IntCounterVec::new(
                Opts::new(
                    "client_resumes_total",
                    "Client stream attaches by source of the replay (buffer, upstream, live).",
                ),
                &["source"],
            )
            .expect("valid metric"),
            http_in_flight: IntGauge::new(
                "http_requests_in_flight",
                "Client HTTP requests being handled now (WebSocket sessions not included).",
            )
            .expect("valid metric"),
            rate_limited: IntCounterVec::new(
                Opts::new(
                    "rate_limited_total",
                    "Requests refused with 429 by a rate limit, by route and bot (per client IP for tokens and conversation starts, per conversation for activities and uploads, per conversation and per client IP for token refreshes).",
                ),
                &["route", "bot"],
            )
            .expect("valid metric"),
            token_refreshes_shared: IntCounter::new(
                "token_refreshes_shared_total",
                "tokens/refresh calls answered with the upstream token another refresh of the same conversation had just obtained (no Direct Line call).",
            )
            .expect("valid metric"),
            client_connections: IntGauge::new(
                "client_connections",
                "Open client-listener HTTP connections (once upgraded, a WebSocket counts in client_websockets instead).",
            )
            .expect("valid metric"),
            worker_connections: IntGaugeVec::new(
                Opts::new(
                    "worker_connections",
                    "Client connections (WebSockets included) each worker thread serves; new ones go to the least loaded (`workers`).",
                ),
                &["worker"],
            )
            .expect("valid metric"),
            connections_refused: IntCounter::new(
                "connections_refused_total",
                "Client connections closed at accept because limits.max_connections were open.",
            )
            .expect("valid metric"),
            config_reloads: IntCounterVec::new(
                Opts::new(
                    "config_reloads_total",
                    "Configuration reloads (SIGHUP or a changed configuration, secret or key file) by result (ok, error; on error the previous configuration keeps serving).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            tls_reloads: IntCounterVec::new(
                Opts::new(
                    "tls_reloads_total",
                    "Client-listener certificate reloads after a file change, by result (ok, error).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            upstream_bodies_scrubbed: IntCounterVec::new(
                Opts::new(
                    "upstream_bodies_scrubbed_total",
                    "Upstream bodies changed before a client saw them, by kind (error_replaced: not Direct Line-shaped or over limits.upstream_error_body, replaced by the gateway's own; error_scrubbed: a Direct Line error whose code or message held the secret, a token or the upstream host; success_scrubbed: a success body that held the secret or a token) and bot.",
                ),
                &["kind", "bot"],
            )
            .expect("valid metric"),
            stream_urls_refused: IntCounterVec::new(
                Opts::new(
                    "upstream_stream_urls_refused_total",
                    "Upstream stream URLs refused because they were not on the bot's upstream (other host, port, scheme or path), by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            lifetimes_clamped: IntCounterVec::new(
                Opts::new(
                    "upstream_lifetimes_clamped_total",
                    "Upstream token lifetimes (expires_in) outside 1..=3600 s or not an integer, replaced by the clamped or default value, by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            discoveries: IntCounterVec::new(
                Opts::new(
                    "discoveries_total",
                    "Discoveries of a Copilot Studio agent's Direct Line host from its environment's regional channel settings, by bot and result (ok; unreachable: no answer in time or no connection; refused: not 2xx; invalid: not the expected JSON or too large; foreign_host: a URL that is no Direct Line host).",
                ),
                &["bot", "result"],
            )
            .expect("valid metric"),
            discovered_upstream: IntGaugeVec::new(
                Opts::new(
                    "discovered_upstream_info",
                    "The Direct Line host a Copilot Studio bot uses, discovered from its environment (value 1); host=\"none\" at 0 for every bot.",
                ),
                &["bot", "host"],
            )
            .expect("valid metric"),
            trace_spans_exported: IntCounter::new(
                "trace_spans_exported_total",
                "Trace spans sent to the OTLP collector and accepted by it (0 while [tracing] is off).",
            )
            .expect("valid metric"),
            trace_spans_dropped: IntCounterVec::new(
                Opts::new(
                    "trace_spans_dropped_total",
                    "Trace spans lost, by reason (queue_full: ended while tracing.queue_size spans waited for a slow or absent collector; export_failed: in a batch the collector refused or never answered).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            upstream_credential_refusals: IntCounterVec::new(
                Opts::new(
                    "upstream_credential_refusals_total",
                    "Answers 401 or 403 from Direct Line to a call made with the bot's secret (the start-up and reload check, and normal traffic): the secret is wrong or revoked, and /readyz answers 503 until a call with it succeeds.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            upstream_stream_opens: IntCounterVec::new(
                Opts::new(
                    "upstream_stream_opens_total",
                    "Upstream Direct Line WebSockets opened (first, resumed, or taken back after a collision), by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            upstream_stream_collisions: IntCounterVec::new(
                Opts::new(
                    "upstream_stream_collisions_total",
                    "Upstream WebSockets Direct Line closed with `collision` because another socket (another replica's hub) opened for the conversation, by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            upstream_polling_seconds: CounterVec::new(
                Opts::new(
                    "upstream_polling_seconds_total",
                    "Time hubs spent serving their clients by polling GET …/activities after a collision, summed over hubs, by bot.",
                ),
                &["bot"],
            )
            .expect("valid metric"),
            polling_hubs: IntGauge::new(
                "stream_hubs_polling",
                "Hubs on this replica polling Direct Line because another replica holds the conversation's stream.",
            )
            .expect("valid metric"),
            policy_verdicts: IntCounterVec::new(
                Opts::new(
                    "policy_verdicts_total",
                    "Activities screened by the activity policy, by bot, direction (user, bot) and outcome (allowed, denied, replaced, failed: the webhook gave no verdict).",
                ),
                &["bot", "direction", "outcome"],
            )
            .expect("valid metric"),
            policy_redactions: IntCounterVec::new(
                Opts::new(
                    "policy_redactions_total",
                    "Personal data replaced by the activity policy's built-in redactions, by bot and kind (email, phone, credit_card).",
                ),
                &["bot", "kind"],
            )
            .expect("valid metric"),
            policy_webhook_duration: HistogramVec::new(
                HistogramOpts::new(
                    "policy_webhook_duration_seconds",
                    "Policy webhook calls, from asking to the verdict or failure (the wait for a free slot included), by direction.",
                )
                .buckets(vec![
                    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0,
                ]),
                &["direction"],
            )
            .expect("valid metric"),
            policy_webhook_failures: IntCounterVec::new(
                Opts::new(
                    "policy_webhook_failures_total",
                    "Policy webhook calls that gave no verdict, by reason (timeout, unreachable, status, invalid, too_large: over policy.max_body, queue_full: over policy.queue waiting).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            polls_held: IntGauge::new(
                "polls_held",
                "GET activities polls waiting for an activity now (bounded by polling.max_held).",
            )
            .expect("valid metric"),
            poll_hubs: IntGauge::new(
                "poll_hubs",
                "Conversation hubs (upstream sockets) opened by held polls on this replica (bounded by polling.max_hubs).",
            )
            .expect("valid metric"),
            polls: IntCounterVec::new(
                Opts::new(
                    "polls_total",
                    "GET activities polls served with polling.hold set, by result (activities, empty: held until polling.hold passed, passthrough: answered by Direct Line unheld).",
                ),
                &["result"],
            )
            .expect("valid metric"),
            polls_refused: IntCounterVec::new(
                Opts::new(
                    "polls_refused_total",
                    "Polls refused with 429 by the bound they passed (conversation, ip, total), or passed through unheld because polling.max_hubs hubs were open (hubs).",
                ),
                &["reason"],
            )
            .expect("valid metric"),
            policy_webhook_waiting: IntGauge::new(
                "policy_webhook_waiting",
                "Activities waiting for a free policy webhook slot (policy.concurrency in flight).",
            )
            .expect("valid metric"),
            streamed_answers: crate::stream::answer_metrics::StreamedAnswers::new(),
            record_written: IntCounter::new(
                "record_written_total",
                "Activities written to the conversation record's daily file.",
            )
            .expect("valid metric"),
            record_refused: IntCounter::new(
                "record_refused_total",
                "Activities not recorded because record.queue entries already waited for the writer (never waited for).",
            )
            .expect("valid metric"),
            record_batches: IntCounterVec::new(
                Opts::new(
                    "record_batches_total",
                    "Record batches POSTed to record.url, by outcome (sent: answered 2xx and removed from the spool; failed: kept for a retry).",
                ),
                &["outcome"],
            )
            .expect("valid metric"),
            record_spool_bytes: IntGauge::new(
                "record_spool_bytes",
                "Bytes of records waiting in the on-disk spool for record.url.",
            )
            .expect("valid metric"),
            record_spool_full: IntCounter::new(
                "record_spool_full_total",
                "Records kept out of the spool because it held record.spool_size (still in the daily file, never sent to record.url).",
            )
            .expect("valid metric"),
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
        let build = prometheus::IntGaugeVec::new(
            Opts::new("build_info", "Build information; the value is always 1."),
            &["version", "git_sha"],
        )
        .expect("valid metric");
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("GIT_SHA")])
            .set(1);
        self.registry
            .register(Box::new(build))
            .expect("metric names are unique");
    }

    /// Exports every known label combination at 0 for these bots, so each series exists
    /// before its first event. Called at start and when a reload adds a bot; touching a
    /// series that exists already changes nothing.
    /// Every worker's connection gauge at 0, so a dashboard sees all of them from the start.
    pub fn initialise_workers(&self, count: usize) {
        for number in 0..count {
            self.worker_connections
                .with_label_values(&[&number.to_string()]);
        }
    }

    pub fn initialise(&self, bots: &[&str]) {
        for bot in bots {
            for reason in AUTH_REFUSAL_REASONS.iter().chain(&SIGN_IN_REFUSAL_REASONS) {
                self.auth_refusals.with_label_values(&[reason, bot]);
            }
            for result in JWKS_FETCH_RESULTS {
                self.jwks_fetches.with_label_values(&[result, bot]);
            }
            for kind in TOKEN_KINDS {
                self.tokens.with_label_values(&[kind, bot]);
            }
            for result in RECONNECT_RESULTS {
                self.upstream_reconnects.with_label_values(&[result, bot]);
            }
            for route in RATE_LIMITED_ROUTES {
                self.rate_limited.with_label_values(&[route, bot]);
            }
            for route in UPSTREAM_ROUTES {
                for status in UPSTREAM_STATUSES {
                    self.upstream_requests
                        .with_label_values(&[route, status, bot]);
                }
            }
            for (route, method) in CLIENT_ROUTES {
                for status in ["2xx", "4xx", "5xx"] {
                    self.http_requests
                        .with_label_values(&[route, method, status, bot]);
                }
            }
            for reason in FRAME_REFUSALS {
                self.client_frames_refused.with_label_values(&[reason, bot]);
            }
            for reason in STREAM_DROP_REASONS {
                self.upstream_stream_drops.with_label_values(&[reason, bot]);
            }
            for result in TOKEN_RESUME_RESULTS {
                self.token_resumes.with_label_values(&[result, bot]);
            }
            for kind in SCRUB_KINDS {
                self.upstream_bodies_scrubbed
                    .with_label_values(&[kind, bot]);
            }
            self.stream_urls_refused.with_label_values(&[bot]);
            self.lifetimes_clamped.with_label_values(&[bot]);
            self.client_sockets.with_label_values(&[bot]);
            self.upstream_sockets.with_label_values(&[bot]);
            self.upstream_connections.with_label_values(&[bot]);
            self.activities_relayed.with_label_values(&[bot]);
            for result in DISCOVERY_RESULTS {
                self.discoveries.with_label_values(&[*bot, result]);
            }
            self.discovered_upstream.with_label_values(&[*bot, NO_HOST]);
            self.upstream_credential_refusals.with_label_values(&[bot]);
            self.upstream_stream_opens.with_label_values(&[bot]);
            self.upstream_stream_collisions.with_label_values(&[bot]);
            self.upstream_polling_seconds.with_label_values(&[bot]);
        }
        for (route, _) in CLIENT_ROUTES {
            self.http_duration.with_label_values(&[route]);
        }
        for route in UPSTREAM_ROUTES {
            self.upstream_duration.with_label_values(&[route]);
        }
        for direction in DIRECTIONS {
            self.bytes_relayed.with_label_values(&[direction]);
        }
        for source in RESUME_SOURCES {
            self.client_replays.with_label_values(&[source]);
        }
        for result in RELOAD_RESULTS {
            self.config_reloads.with_label_values(&[result]);
            self.tls_reloads.with_label_values(&[result]);
        }
        for phase in CLIENT_TIMEOUT_PHASES {
            self.client_timeouts.with_label_values(&[phase]);
        }
        for reason in EVICTION_REASONS {
            self.stream_buffer_evictions.with_label_values(&[reason]);
        }
        for reason in TRACE_DROP_REASONS {
            self.trace_spans_dropped.with_label_values(&[reason]);
        }
        for result in POLL_RESULTS {
            self.polls.with_label_values(&[result]);
        }
        for reason in POLL_REFUSAL_REASONS {
            self.polls_refused.with_label_values(&[reason]);
        }
        self.initialise_policy(bots);
        for outcome in ["sent", "failed"] {
            self.record_batches.with_label_values(&[outcome]);
        }
    }

    /// The activity policy's series at 0 for every bot (whether or not it has a policy: a
    /// dashboard or alert then needs no special case for the bots that have none).
    fn initialise_policy(&self, bots: &[&str]) {
        for bot in bots {
            for direction in POLICY_DIRECTIONS {
                for outcome in POLICY_OUTCOMES {
                    self.policy_verdicts
                        .with_label_values(&[bot, direction, outcome]);
                }
            }
            for kind in POLICY_REDACTION_KINDS {
                self.policy_redactions.with_label_values(&[bot, kind]);
            }
        }
        for direction in POLICY_DIRECTIONS {
            self.policy_webhook_duration.with_label_values(&[direction]);
        }
        for reason in POLICY_WEBHOOK_FAILURES {
            self.policy_webhook_failures.with_label_values(&[reason]);
        }
    }

    /// The exported name of every family this registry holds (not the `process_*` ones).
    pub fn family_names(&self) -> &[String] {
        &self.family_names
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        let _ = encoder.encode(&self.process_registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::GatewayError;

    /// The reasons exported at 0 are the ones refusals are counted under.
    #[test]
    fn initialised_refusal_reasons_are_the_counted_ones() {
        use GatewayError::*;
        let counted: Vec<&str> = [
            MissingCredential,
            InvalidToken,
            TokenExpired,
            WrongConversation,
            WrongBot,
            InvalidTicket,
        ]
        .iter()
        .filter_map(GatewayError::auth_refusal_reason)
        .collect();
        assert_eq!(counted, AUTH_REFUSAL_REASONS);
    }

    #[test]
    fn initialise_touches_every_family_of_the_registry() {
        let metrics = Metrics::new();
        metrics.initialise(&["default"]);
        metrics.initialise_workers(2);
        let text = metrics.render();
        for name in metrics.family_names() {
            assert!(text.contains(&format!("\n{name}")), "{name}");
        }
    }
}
