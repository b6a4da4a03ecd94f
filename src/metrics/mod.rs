//! Prometheus metrics in the gateway's own registry. Labels are bounded sets
//! (route names, status classes, reasons, bot names from the configuration): never a
//! conversation id, user id, token or path.

use prometheus::{
    CounterVec, Encoder, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry, TextEncoder,
};

mod families;
pub(crate) mod streamed_answers;

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
    pub streamed_answers: streamed_answers::StreamedAnswers,
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
