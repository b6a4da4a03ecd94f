//! What an operator's Prometheus sees: every family from the first scrape (an `increase()`
//! alert cannot fire on a series' first sample), and the standard process metrics.

mod support;

use directline_gateway::config::{BotConfig, RateLimits, UpstreamTarget, UserIdPolicy};
use directline_gateway::secret::Secret;
use support::*;

/// Whether the exposition has a sample (not only HELP/TYPE) of family `name`.
fn has_sample(text: &str, name: &str) -> bool {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.split(['{', ' ']).next())
        .any(|series| {
            series == name
                || ["_bucket", "_sum", "_count"]
                    .iter()
                    .any(|suffix| series.strip_suffix(suffix) == Some(name))
        })
}

/// The exposition line of one series, e.g. `…_total{bot="default",result="exhausted"} 0`.
fn series_line<'a>(text: &'a str, series: &str) -> Option<&'a str> {
    text.lines().find(|line| {
        line.strip_prefix(series)
            .is_some_and(|v| v.starts_with(' '))
    })
}

#[tokio::test]
async fn every_registered_family_has_a_sample_at_start_with_the_process_metrics() {
    let h = Harness::start().await;
    let text = h.metrics().await;
    // The registry's own list, not a copy of it here: a family added later fails this test
    // until `Metrics::initialise` covers it.
    let families = h.gateway().gateway.metrics.family_names();
    assert!(families.len() >= 20, "{families:?}");
    let missing: Vec<&String> = families
        .iter()
        .filter(|name| !has_sample(&text, name))
        .collect();
    assert!(
        missing.is_empty(),
        "families without a sample at start: {missing:?}"
    );
    for name in [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "process_start_time_seconds",
    ] {
        assert!(has_sample(&text, name), "{name} in\n{text}");
    }
    assert!(metric(&text, "process_resident_memory_bytes") > 1_000_000.0);
    // The series alerts compute increases of exist at 0, every label value of them.
    for series in [
        "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"exhausted\"}",
        "directline_gateway_rate_limited_total{bot=\"default\",route=\"tokens_generate\"}",
        "directline_gateway_auth_refusals_total{bot=\"default\",reason=\"invalid\"}",
        "directline_gateway_config_reloads_total{result=\"ok\"}",
        "directline_gateway_config_reloads_total{result=\"error\"}",
        "directline_gateway_upstream_requests_total{bot=\"default\",route=\"activities_post\",status=\"timeout\"}",
        "directline_gateway_client_websockets{bot=\"default\"}",
    ] {
        let line = series_line(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert!(line.ends_with(" 0"), "{line}");
    }
}

#[tokio::test]
async fn a_bot_added_by_reload_has_its_series_at_zero() {
    let h = Harness::start().await;
    let running = h.gateway();
    let mut next = running.gateway.live().config.clone();
    let bot = |name: &str, prefix: &str| BotConfig {
        name: name.to_owned(),
        host: None,
        path_prefix: prefix.to_owned(),
        upstream: UpstreamTarget::Url(url::Url::parse(&h.emulator.base_url()).unwrap()),
        secret: Some(Secret::new(SECRET)),
        public_url: None,
        allowed_origins: Vec::new(),
        allow_credentials: false,
        demo_page: false,
        trusted_origins: Vec::new(),
        rate_limits: RateLimits::default(),
        user_ids: UserIdPolicy::Minted,
        upstream_ca_file: None,
        resume_window: directline_gateway::config::DEFAULT_RESUME_WINDOW,
        auth: None,
        token_endpoint: None,
        policy: None,
        delivery_mode: Default::default(),
    };
    next.bots = vec![bot("default", ""), bot("sales", "/bots/sales")];
    running.reload(Ok(next)).expect("reload accepted");
    let text = h.metrics().await;
    for series in [
        "directline_gateway_upstream_reconnects_total{bot=\"sales\",result=\"exhausted\"}",
        "directline_gateway_tokens_total{bot=\"sales\",kind=\"generated\"}",
        "directline_gateway_activities_relayed_total{bot=\"sales\"}",
    ] {
        let line = series_line(&text, series).unwrap_or_else(|| panic!("{series} in\n{text}"));
        assert!(line.ends_with(" 0"), "{line}");
    }
    assert!(
        series_line(
            &text,
            "directline_gateway_config_reloads_total{result=\"ok\"}"
        )
        .is_some()
    );
}
