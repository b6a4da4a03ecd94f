//! Copilot Studio agents behind the gateway (ARCHITECTURE §10), against the emulator's Copilot
//! Studio environment on loopback: tokens from the agent's token endpoint (no secret), or
//! the secret with web channel security on; the Direct Line host discovered from the
//! environment's regional channel settings; streams across drops, token refresh, discovery
//! failures and a reload that moves the agent.
//!
//! The token endpoint is addressed as `localhost:PORT` and the emulator names its Direct
//! Line as `127.0.0.1:PORT`, so the `Host` of each recorded request says which of the two
//! the gateway meant.

mod support;

use std::time::Duration;

use directline_emulator::{
    EmulatorConfig, EmulatorHandle, Faults, RecordedRequest, SeenCredential,
};
use directline_gateway::config::{BotConfig, Config, TokenEndpoint, UpstreamTarget};
use directline_gateway::secret::Secret;
use http::{Method, StatusCode};
use serde_json::json;
use support::*;

const API_VERSION: &str = "2022-03-01-preview";

fn token_endpoint(emulator: &EmulatorHandle) -> TokenEndpoint {
    let port = emulator.local_addr().port();
    TokenEndpoint::parse(&format!(
        "http://localhost:{port}/powervirtualagents/botsbyschema/cr_demo/directline/token?api-version={API_VERSION}"
    ))
    .unwrap()
}

async fn environment(edit: impl FnOnce(&mut EmulatorConfig)) -> EmulatorHandle {
    let mut config = EmulatorConfig {
        secret: directline_emulator::Secret::new(SECRET),
        keepalive_interval: Duration::from_millis(300),
        ..EmulatorConfig::default()
    };
    edit(&mut config);
    Harness::emulator(config).await
}

/// The gateway's config for the agent of `emulator`: Direct Line discovered, and the
/// secret only when given. Stream timings short, as in the harness.
fn agent_config(emulator: &EmulatorHandle, secret: Option<&str>) -> Config {
    let mut config = Config {
        token_key: Some(Secret::new(TOKEN_KEY)),
        ..Config::single(BotConfig {
            upstream: UpstreamTarget::Discovered,
            secret: secret.map(Secret::new),
            token_endpoint: Some(token_endpoint(emulator)),
            ..BotConfig::default()
        })
    };
    config.stream.keepalive_interval = Duration::from_millis(500);
    config.stream.liveness_timeout = Duration::from_secs(2);
    config.stream.linger = Duration::from_millis(500);
    config.stream.backoff_base = Duration::from_millis(20);
    config.stream.backoff_max = Duration::from_millis(200);
    config.stream.resume_budget = Duration::from_secs(15);
    config.shutdown_grace = Duration::from_secs(2);
    config.stream.drain_period = Duration::from_secs(1);
    config.stream.drain_spread = Duration::from_millis(200);
    config.bot_mut().rate_limits.activities.per_minute = 0;
    config
}

/// The gateway started in front of `emulator`, once its first discovery (if it discovers)
/// has ended, well or not: it serves at once and discovers in the background, and these
/// scenarios start from a known host (or a known failure).
async fn gateway(emulator: EmulatorHandle, config: Config) -> Harness {
    let discovers = config
        .bots
        .iter()
        .any(|bot| bot.upstream == UpstreamTarget::Discovered);
    let running = start_gateway(config).await;
    let mut harness = Harness::attach_in_process(emulator, &running);
    harness.gateway = Some(running);
    if discovers {
        eventually("the first discovery ended", async || {
            let metrics = harness.metrics().await;
            ["ok", "unreachable", "refused", "invalid", "foreign_host"]
                .iter()
                .any(|result| {
                    metric(
                        &metrics,
                        &format!(
                            "directline_gateway_discoveries_total{{bot=\"default\",result=\"{result}\"}}"
                        ),
                    ) >= 1.0
                })
        })
        .await;
    }
    harness
}

fn environment_host(emulator: &EmulatorHandle) -> String {
    format!("localhost:{}", emulator.local_addr().port())
}

fn directline_host(emulator: &EmulatorHandle) -> String {
    format!("127.0.0.1:{}", emulator.local_addr().port())
}

fn is_environment_path(request: &RecordedRequest) -> bool {
    request.path.starts_with("/powervirtualagents/")
}

/// Everything Direct Line-shaped went to the discovered host, and only the environment's
/// two routes to the environment.
fn assert_hosts_kept_apart(emulator: &EmulatorHandle) {
    let (environment, directline) = (environment_host(emulator), directline_host(emulator));
    for request in emulator.requests() {
        let host = request.host.clone().unwrap_or_default();
        if is_environment_path(&request) {
            assert_eq!(host, environment, "{request:?}");
        } else {
            assert_eq!(host, directline, "{request:?}");
        }
    }
}

async fn start(h: &Harness, token: &str) -> Conversation {
    let reply = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            Some(token),
            Some(json!({"user": {}})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.text());
    let json = reply.json();
    Conversation {
        id: json["conversationId"].as_str().unwrap().to_owned(),
        token: json["token"].as_str().unwrap().to_owned(),
        stream_url: json["streamUrl"].as_str().unwrap().to_owned(),
    }
}

#[tokio::test]
async fn tokens_come_from_the_token_endpoint_and_no_secret_is_ever_sent() {
    let emulator = environment(|_| {}).await;
    let h = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    let (token, id) = h.generate().await;
    let endpoint_calls: Vec<RecordedRequest> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.path.ends_with("/directline/token"))
        .collect();
    assert_eq!(endpoint_calls.len(), 1, "{endpoint_calls:?}");
    assert_eq!(endpoint_calls[0].credential, SeenCredential::Missing);
    assert_eq!(
        endpoint_calls[0].query.as_deref(),
        Some("api-version=2022-03-01-preview")
    );
    let conversation = start(&h, &token).await;
    assert_eq!(conversation.id, id, "the token endpoint's conversation");
    assert!(
        conversation
            .stream_url
            .starts_with(&h.base.replace("http", "ws")),
        "{}",
        conversation.stream_url
    );
    let mut ws = open_stream(&conversation.stream_url).await;
    let sent = h.post_message(&conversation, "hello agent").await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t.contains("hello agent")) && s.ids().len() >= 2
    })
    .await;
    assert!(seen.ids().contains(&sent));
    // A file upload (a body sent once) goes with the conversation token too.
    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nnotes\r\n--{boundary}--\r\n"
    );
    let upload = http::Request::builder()
        .method(Method::POST)
        .uri(h.url(&format!(
            "/v3/directline/conversations/{}/upload",
            conversation.id
        )))
        .header("authorization", format!("Bearer {}", conversation.token))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(http_body_util::Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let uploaded = h.send(upload).await;
    assert_eq!(uploaded.status, StatusCode::OK, "{}", uploaded.text());
    let recorded = emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/upload"))
        .unwrap();
    assert!(
        matches!(
            recorded.credential,
            SeenCredential::ConversationToken { .. }
        ),
        "{recorded:?}"
    );

    let requests = emulator.requests();
    assert!(
        requests.iter().all(|r| !matches!(
            r.credential,
            SeenCredential::Secret | SeenCredential::SecondSecret
        )),
        "a secret was sent: {requests:?}"
    );
    assert!(
        requests
            .iter()
            .any(|r| r.path.ends_with("/regionalchannelsettings")),
        "discovered"
    );
    assert_hosts_kept_apart(&emulator);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            &format!(
                "directline_gateway_discovered_upstream_info{{bot=\"default\",host=\"{}\"}}",
                directline_host(&emulator)
            )
        ),
        1.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "directline_gateway_discoveries_total{bot=\"default\",result=\"ok\"}"
        ) >= 1.0
    );
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_requests_total{bot=\"default\",route=\"discovery\",status=\"2xx\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn web_channel_security_turns_the_token_endpoint_off_and_the_secret_works_on_the_discovered_host()
 {
    let emulator = environment(|c| c.web_channel_security = true).await;
    // Without a secret: the endpoint refuses, and the caller gets a Direct Line error.
    let tokenless = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    let refused = tokenless
        .request(Method::POST, "/v3/directline/tokens/generate", None, None)
        .await;
    assert_eq!(
        refused.status,
        StatusCode::BAD_GATEWAY,
        "{}",
        refused.text()
    );
    assert_eq!(refused.error_code(), "UpstreamError");

    // With one of the agent's secrets: classic Direct Line on the discovered host.
    let h = gateway(emulator.clone(), agent_config(&emulator, Some(SECRET))).await;
    let before = emulator.requests().len();
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    h.post_message(&conversation, "secured").await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts().iter().any(|t| t.contains("secured"))
    })
    .await;
    let since: Vec<RecordedRequest> = emulator.requests().into_iter().skip(before).collect();
    let generate = since
        .iter()
        .find(|r| r.path == "/v3/directline/tokens/generate")
        .expect("classic generate");
    assert_eq!(generate.credential, SeenCredential::Secret);
    assert!(
        !since.iter().any(|r| r.path.ends_with("/directline/token")),
        "the token endpoint is not asked when a secret is configured: {since:?}"
    );
    assert_hosts_kept_apart(&emulator);
}

#[tokio::test]
async fn the_stream_survives_upstream_drops_with_the_conversation_token() {
    let emulator = environment(|c| {
        c.faults = Faults {
            drop_after_frames: Some(2),
            ..Faults::default()
        }
    })
    .await;
    let h = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    let (token, _) = h.generate().await;
    let conversation = start(&h, &token).await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    for n in 0..6 {
        h.post_message(&conversation, &format!("m{n}")).await;
    }
    read_until(&mut ws, &mut seen, |s| {
        (0..6).all(|n| s.texts().iter().any(|t| t.contains(&format!("m{n}"))))
    })
    .await;
    seen.assert_no_duplicate_ids();
    let reconnects: Vec<RecordedRequest> = emulator
        .requests()
        .into_iter()
        .filter(|r| {
            r.method == "GET"
                && r.path == format!("/v3/directline/conversations/{}", conversation.id)
        })
        .collect();
    assert!(!reconnects.is_empty(), "the hub reconnected");
    for reconnect in &reconnects {
        assert!(
            matches!(
                reconnect.credential,
                SeenCredential::ConversationToken { .. }
            ),
            "{reconnect:?}"
        );
        assert_eq!(reconnect.status, 200, "{reconnect:?}");
    }
    // The client's own reconnect (GET /conversations/{id}) works with the token as well.
    let again = h.reconnect(&conversation, seen.watermark.as_deref()).await;
    assert!(again["streamUrl"].as_str().is_some());
    assert_hosts_kept_apart(&emulator);
}

/// Direct Line tokens of 4 s: the hub refreshes its own before it expires, so a drop after
/// every token of the start died still resumes; past expiry nothing can resume the client's
/// conversation without a secret.
#[tokio::test]
async fn the_hub_keeps_its_upstream_token_alive_and_a_dead_one_cannot_resume() {
    let emulator = environment(|c| c.token_ttl = Duration::from_secs(4)).await;
    let h = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    let (token, _) = h.generate().await;
    let conversation = start(&h, &token).await;
    let mut ws = open_stream(&conversation.stream_url).await;
    // Past the life of every token issued at the start; the client refreshes nothing.
    tokio::time::sleep(Duration::from_millis(5500)).await;
    let connects = emulator.stream_connects();
    emulator.drop_all_streams();
    eventually("the hub reconnected upstream", async || {
        emulator.stream_connects() > connects
    })
    .await;
    emulator
        .send_bot_message(&conversation.id, "after the first token died")
        .expect("known conversation");
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| {
        s.texts()
            .iter()
            .any(|t| t.contains("after the first token died"))
    })
    .await;
    let requests = emulator.requests();
    assert!(
        requests
            .iter()
            .any(|r| r.path == "/v3/directline/tokens/refresh" && r.status == 200),
        "the hub refreshed"
    );
    assert!(
        requests.iter().all(|r| !matches!(
            r.credential,
            SeenCredential::Secret | SeenCredential::SecondSecret
        )),
        "no secret"
    );
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_requests_total{bot=\"default\",route=\"stream_token_refresh\",status=\"2xx\"}"
        ) >= 1.0,
        "{metrics}"
    );
    // The client's token expired with its Direct Line token: no secret, no durable resume.
    let late = h.refresh(&conversation.token).await;
    assert_eq!(late.status, StatusCode::FORBIDDEN, "{}", late.text());
    assert_eq!(late.error_code(), "TokenExpired");
    assert!(late.text().contains("cannot resume"), "{}", late.text());
}

/// On the REST path, tokens/refresh near expiry renews the upstream token with the token
/// (never a secret), so the conversation outlives its first token.
#[tokio::test]
async fn tokens_refresh_renews_the_upstream_token_before_it_expires() {
    let emulator = environment(|c| c.token_ttl = Duration::from_secs(4)).await;
    let h = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    let (token, _) = h.generate().await;
    let mut conversation = start(&h, &token).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let refreshed = h.refresh(&conversation.token).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    conversation.token = refreshed.json()["token"].as_str().unwrap().to_owned();
    let refresh = emulator
        .requests()
        .into_iter()
        .find(|r| r.path == "/v3/directline/tokens/refresh")
        .expect("refreshed upstream");
    assert!(
        matches!(refresh.credential, SeenCredential::ConversationToken { .. }),
        "{refresh:?}"
    );
    // The start's token is dead now; the refreshed one posts.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    h.post_message(&conversation, "later").await;
}

#[tokio::test]
async fn a_failed_discovery_answers_503_with_retry_after_and_then_recovers() {
    let emulator = environment(|_| {}).await;
    emulator.environment().set_unavailable(true);
    let h = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    let reply = h
        .request(Method::POST, "/v3/directline/tokens/generate", None, None)
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert_eq!(reply.error_code(), "ServiceUnavailable");
    let retry_after: u64 = reply.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(h.admin_get("/readyz").await.status, StatusCode::OK);
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_discoveries_total{bot=\"default\",result=\"refused\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(
        emulator.requests().iter().all(is_environment_path),
        "nothing went to Direct Line before its host was known"
    );

    emulator.environment().set_unavailable(false);
    // Watched on the metrics: polling tokens/generate would spend the caller's rate.
    eventually("discovery recovered", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_discoveries_total{bot=\"default\",result=\"ok\"}",
        ) >= 1.0
    })
    .await;
    let (token, _) = h.generate().await;
    start(&h, &token).await;
}

#[tokio::test]
async fn a_foreign_host_in_the_regional_settings_is_never_used() {
    let emulator = environment(|_| {}).await;
    let hostile = [
        r#"{"channelUrlsById":{"directline":"https://evil.example/"}}"#.to_owned(),
        r#"{"channelUrlsById":{"directline":"https://europe.directline.botframework.com.evil.example/"}}"#.to_owned(),
        format!("{{\"channelUrlsById\":{{\"directline\":\"{}\"}}}}", "x".repeat(70_000)),
        "not json".to_owned(),
    ];
    emulator
        .environment()
        .set_settings_body(Some(hostile[0].clone()));
    let h = gateway(emulator.clone(), agent_config(&emulator, None)).await;
    for body in &hostile[1..] {
        let reply = h
            .request(Method::POST, "/v3/directline/tokens/generate", None, None)
            .await;
        assert_eq!(
            reply.status,
            StatusCode::SERVICE_UNAVAILABLE,
            "{}",
            reply.text()
        );
        assert!(reply.headers.contains_key("retry-after"));
        emulator.environment().set_settings_body(Some(body.clone()));
    }
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_discoveries_total{bot=\"default\",result=\"foreign_host\"}"
        ) >= 1.0,
        "{metrics}"
    );
    assert!(!metrics.contains("evil.example"), "never a label");
    eventually("an invalid answer was counted", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_discoveries_total{bot=\"default\",result=\"invalid\"}",
        ) >= 1.0
    })
    .await;
    emulator.environment().set_settings_body(None);
    // Watched on the metrics: polling tokens/generate would spend the caller's rate.
    eventually("discovery recovered", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_discoveries_total{bot=\"default\",result=\"ok\"}",
        ) >= 1.0
    })
    .await;
    assert!(
        emulator
            .requests()
            .iter()
            .filter(|r| !is_environment_path(r))
            .all(|r| r.host.as_deref() == Some(directline_host(&emulator).as_str())),
    );
}

#[tokio::test]
async fn a_reload_that_changes_the_token_endpoint_moves_the_bot() {
    let first = environment(|_| {}).await;
    let second = environment(|_| {}).await;
    let h = gateway(first.clone(), agent_config(&first, None)).await;
    let (token, _) = h.generate().await;
    start(&h, &token).await;

    let next = agent_config(&second, None);
    h.gateway().reload(Ok(next)).expect("reload accepted");
    eventually(
        "the second environment was asked for its Direct Line host",
        async || {
            second
                .requests()
                .iter()
                .any(|r| r.path.ends_with("/regionalchannelsettings") && r.status == 200)
        },
    )
    .await;
    let (token, _) = h.generate().await;
    let before = first.requests().len();
    start(&h, &token).await;
    assert_eq!(
        first.requests().len(),
        before,
        "nothing more to the first agent"
    );
    assert!(
        second
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/directline/token")),
        "the second agent's token endpoint minted it"
    );
    assert_hosts_kept_apart(&second);
    let metrics = h.metrics().await;
    let series = |emulator: &EmulatorHandle| {
        format!(
            "directline_gateway_discovered_upstream_info{{bot=\"default\",host=\"{}\"}}",
            directline_host(emulator)
        )
    };
    assert_eq!(metric(&metrics, &series(&second)), 1.0, "{metrics}");
    assert!(!metrics.contains(&directline_host(&first)), "{metrics}");
}

/// The CLI form of the README: `--token-endpoint` with no upstream and no secret, against
/// `directline-gateway emulator`'s own environment.
#[test]
fn the_token_endpoint_flag_loads_as_a_discovered_secretless_bot() {
    let overrides = directline_gateway::config::Overrides {
        token_endpoint: Some(format!(
            "http://127.0.0.1:3978/powervirtualagents/botsbyschema/demo/directline/token?api-version={API_VERSION}"
        )),
        ..Default::default()
    };
    struct NoEnv;
    impl directline_gateway::config::Env for NoEnv {
        fn var(&self, _: &str) -> Option<String> {
            None
        }
    }
    let config = Config::load(None, &overrides, &NoEnv).unwrap();
    let bot = &config.bots[0];
    assert_eq!(bot.upstream, UpstreamTarget::Discovered);
    assert!(bot.secret.is_none());
    assert!(bot.token_endpoint.is_some());
    let plain_http = directline_gateway::config::Overrides {
        token_endpoint: Some(format!(
            "http://contoso.example/powervirtualagents/botsbyschema/demo/directline/token?api-version={API_VERSION}"
        )),
        ..Default::default()
    };
    let error = Config::load(None, &plain_http, &NoEnv).unwrap_err();
    assert!(error.to_string().contains("token_endpoint"), "{error}");
}

/// With web channel security, the agent's two secrets rotate as any bot's do; a reload
/// that keeps the token endpoint keeps the discovered host (no new discovery).
#[tokio::test]
async fn secured_agents_rotate_their_two_secrets_and_keep_the_discovered_host() {
    const SECOND: &str = "second-directline-secret-value-9876543210";
    let emulator = environment(|c| {
        c.web_channel_security = true;
        c.second_secret = Some(directline_emulator::Secret::new(SECOND));
    })
    .await;
    let h = gateway(emulator.clone(), agent_config(&emulator, Some(SECRET))).await;
    h.conversation().await;
    let discoveries = |emulator: &EmulatorHandle| {
        emulator
            .requests()
            .iter()
            .filter(|r| r.path.ends_with("/regionalchannelsettings"))
            .count()
    };
    let before = discoveries(&emulator);
    h.gateway()
        .reload(Ok(agent_config(&emulator, Some(SECOND))))
        .expect("reload accepted");
    h.conversation().await;
    let generates: Vec<SeenCredential> = emulator
        .requests()
        .into_iter()
        .filter(|r| r.path == "/v3/directline/tokens/generate")
        .map(|r| r.credential)
        .collect();
    assert_eq!(
        generates,
        [SeenCredential::Secret, SeenCredential::SecondSecret]
    );
    assert_eq!(discoveries(&emulator), before, "the host was kept");
}
