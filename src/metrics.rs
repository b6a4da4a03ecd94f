//! Prometheus metrics in the gateway's own registry. Labels are bounded sets
//! (route names, status classes, reasons, bot names from the configuration): never a
//! conversation id, user id, token or path.

use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

const PREFIX: &str = "directline_gateway";

pub struct Metrics {
    registry: Registry,
    pub http_requests: IntCounterVec,
    pub http_duration: HistogramVec,
    pub http_in_flight: IntGauge,
    pub upstream_requests: IntCounterVec,
    pub upstream_duration: HistogramVec,
    pub auth_refusals: IntCounterVec,
    pub tokens: IntCounterVec,
    pub client_sockets: IntGaugeVec,
    /// Client WebSockets of all bots: what the connection cap counts. Not exported (the
    /// labelled gauge sums to it).
    all_client_sockets: IntGauge,
    pub upstream_sockets: IntGaugeVec,
    pub hubs: IntGauge,
    pub activities_relayed: IntCounterVec,
    pub duplicates_dropped: IntCounter,
    pub bytes_relayed: IntCounterVec,
    pub upstream_reconnects: IntCounterVec,
    pub resume_duration: Histogram,
    pub slow_clients_closed: IntCounter,
    pub client_replays: IntCounterVec,
    pub config_reloads: IntCounterVec,
    pub rate_limited: IntCounterVec,
    pub client_connections: IntGauge,
    pub connections_refused: IntCounter,
    pub tls_reloads: IntCounterVec,
    pub upstream_bodies_scrubbed: IntCounterVec,
    pub stream_urls_refused: IntCounterVec,
    pub lifetimes_clamped: IntCounterVec,
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
        let latency_buckets = vec![
            0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 15.0,
            35.0, 140.0,
        ];
        let m = Self {
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
                    "Requests refused with 429 by a rate limit, by route and bot (per client IP for tokens and conversation starts, per conversation for activities and uploads).",
                ),
                &["route", "bot"],
            )
            .expect("valid metric"),
            client_connections: IntGauge::new(
                "client_connections",
                "Open client-listener HTTP connections (once upgraded, a WebSocket counts in client_websockets instead).",
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
                    "Configuration reloads (SIGHUP) by result (ok, error; on error the previous configuration keeps serving).",
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
            registry,
        };
        m.register_all();
        m
    }

    fn register_all(&self) {
        let collectors: Vec<Box<dyn prometheus::core::Collector>> = vec![
            Box::new(self.http_requests.clone()),
            Box::new(self.http_duration.clone()),
            Box::new(self.http_in_flight.clone()),
            Box::new(self.upstream_requests.clone()),
            Box::new(self.upstream_duration.clone()),
            Box::new(self.auth_refusals.clone()),
            Box::new(self.tokens.clone()),
            Box::new(self.client_sockets.clone()),
            Box::new(self.upstream_sockets.clone()),
            Box::new(self.hubs.clone()),
            Box::new(self.activities_relayed.clone()),
            Box::new(self.duplicates_dropped.clone()),
            Box::new(self.bytes_relayed.clone()),
            Box::new(self.upstream_reconnects.clone()),
            Box::new(self.resume_duration.clone()),
            Box::new(self.slow_clients_closed.clone()),
            Box::new(self.client_replays.clone()),
            Box::new(self.config_reloads.clone()),
            Box::new(self.rate_limited.clone()),
            Box::new(self.client_connections.clone()),
            Box::new(self.connections_refused.clone()),
            Box::new(self.tls_reloads.clone()),
            Box::new(self.upstream_bodies_scrubbed.clone()),
            Box::new(self.stream_urls_refused.clone()),
            Box::new(self.lifetimes_clamped.clone()),
        ];
        for collector in collectors {
            self.registry
                .register(collector)
                .expect("metric names are unique");
        }
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

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut out = Vec::with_capacity(16 * 1024);
        let encoder = TextEncoder::new();
        // Encoding our own well-formed families into a Vec cannot fail.
        let _ = encoder.encode(&self.registry.gather(), &mut out);
        String::from_utf8(out).unwrap_or_default()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
