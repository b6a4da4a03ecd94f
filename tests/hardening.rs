//! Hardening, round 3: what a hostile caller could make the gateway do before, on real
//! processes (gateway + emulator on 127.0.0.1): refresh floods, idle HTTP/2 connections,
//! client addresses behind a proxy, names in signed-in mode, start-up and discovery.

mod support;

use std::time::Duration;

use directline_emulator::SeenCredential;
use directline_gateway::seal::{ClientToken, Purpose, Sealer};
use futures_util::future::join_all;
use http::StatusCode;
use support::{Harness, TOKEN_KEY, metric};

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// `token` re-sealed so that it ends at `expires_at` (its upstream token is unchanged): a
/// token near its end, or expired inside `resume_window`, without waiting for it.
fn ending_at(token: &str, expires_at: u64) -> String {
    let sealer = Sealer::new(TOKEN_KEY, &[]).unwrap();
    let mut opened: ClientToken = sealer.open(Purpose::ClientToken, token).unwrap();
    opened.expires_at = expires_at;
    sealer.seal(Purpose::ClientToken, &opened)
}

/// Upstream calls a refresh can make: `tokens/refresh` with the conversation's token, and
/// the reconnect GET with the secret that resumes an expired one.
fn upstream_refreshes(h: &Harness, conversation: &str) -> (usize, usize) {
    let requests = h.emulator.requests();
    let refreshes = requests
        .iter()
        .filter(|r| r.path == "/v3/directline/tokens/refresh")
        .count();
    let reconnect = format!("/v3/directline/conversations/{conversation}");
    let resumes = requests
        .iter()
        .filter(|r| r.path == reconnect && matches!(r.credential, SeenCredential::Secret))
        .count();
    (refreshes, resumes)
}

/// A refresh loop with a token whose upstream token is near its end: one upstream
/// `tokens/refresh`, whose result every later refresh of the conversation shares.
#[tokio::test]
async fn a_refresh_loop_makes_one_upstream_call_when_the_limit_is_off() {
    let h = Harness::builder()
        .config(|c| {
            let rates = &mut c.bot_mut().rate_limits;
            rates.refresh.per_minute = 0;
            rates.refresh_per_ip.per_minute = 0;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    // 60 s left, inside the default `upstream_refresh_before` (30 min).
    let near_end = ending_at(&conversation.token, unix_now() + 60);
    let concurrent = join_all((0..20).map(|_| h.refresh(&near_end))).await;
    for reply in &concurrent {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    for _ in 0..20 {
        let reply = h.refresh(&near_end).await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
        assert!(reply.json()["expires_in"].as_u64().unwrap() > 1800);
    }
    assert_eq!(upstream_refreshes(&h, &conversation.id), (1, 0));
    let metrics = h.metrics().await;
    assert_eq!(
        metric(&metrics, "directline_gateway_token_refreshes_shared_total"),
        39.0,
        "{metrics}"
    );
}

/// The same with an expired token inside `resume_window`: one reconnect with the secret.
#[tokio::test]
async fn a_resume_loop_makes_one_secret_call_when_the_limit_is_off() {
    let h = Harness::builder()
        .config(|c| {
            let bot = c.bot_mut();
            bot.resume_window = Duration::from_secs(600);
            bot.rate_limits.refresh.per_minute = 0;
            bot.rate_limits.refresh_per_ip.per_minute = 0;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let expired = ending_at(&conversation.token, unix_now() - 10);
    let replies = join_all((0..30).map(|_| h.refresh(&expired))).await;
    for reply in &replies {
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    }
    assert_eq!(upstream_refreshes(&h, &conversation.id), (0, 1));
}

/// With the default limits, a loop on one conversation gets 429 with Retry-After past the
/// per-conversation burst, and many conversations from one address past the per-IP one;
/// every refusal is counted.
#[tokio::test]
async fn refreshes_past_the_limits_get_429_and_are_counted() {
    let h = Harness::builder()
        .config(|c| {
            let bot = c.bot_mut();
            bot.resume_window = Duration::from_secs(600);
            bot.rate_limits.refresh_per_ip.burst = 8;
            bot.rate_limits.sessions.per_minute = 0;
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let expired = ending_at(&conversation.token, unix_now() - 10);
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..20 {
        let reply = h.refresh(&expired).await;
        match reply.status {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                refused += 1;
                assert_eq!(reply.error_code(), "TooManyRequests", "{}", reply.text());
                let wait: u64 = reply.headers["retry-after"]
                    .to_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                assert!(wait >= 1);
            }
            other => panic!("{other}: {}", reply.text()),
        }
    }
    // Per conversation: the default burst of 6.
    assert_eq!((ok, refused), (6, 14));
    let (refreshes, resumes) = upstream_refreshes(&h, &conversation.id);
    assert!(refreshes + resumes <= 1, "{refreshes} {resumes}");

    // Other conversations from the same address: the per-IP burst (8) is 6 spent + 2.
    let mut ip_refused = 0;
    for _ in 0..4 {
        let other = h.conversation().await;
        if h.refresh(&ending_at(&other.token, unix_now() - 10))
            .await
            .status
            == StatusCode::TOO_MANY_REQUESTS
        {
            ip_refused += 1;
        }
    }
    assert_eq!(ip_refused, 2);
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_rate_limited_total{route=\"tokens_refresh\",bot=\"default\"}"
        ),
        16.0,
        "{metrics}"
    );
}

fn client_addr(h: &Harness) -> String {
    h.base.trim_start_matches("http://").to_owned()
}

/// One request on an h2c connection, then nothing but answers to the gateway's pings: the
/// connection is closed after `limits.http2_idle_timeout` (held forever before), as an idle
/// HTTP/1.1 keep-alive connection is at `header_read_timeout`.
#[tokio::test]
async fn an_idle_http2_connection_is_closed() {
    let h = Harness::builder()
        .config(|c| c.limits.http2_idle_timeout = Duration::from_secs(1))
        .start()
        .await;
    let tcp = tokio::net::TcpStream::connect(client_addr(&h))
        .await
        .unwrap();
    let (mut send, connection) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(tcp),
    )
    .await
    .unwrap();
    let ended = tokio::spawn(connection);
    let request = http::Request::post(h.url("/v3/directline/tokens/generate"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = send.send_request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap();
    tokio::time::timeout(support::WAIT, ended)
        .await
        .expect("the idle HTTP/2 connection was closed")
        .unwrap()
        .ok();
    // Counted as the server's task ends, which may be just after the client saw the close.
    support::eventually("the idle close was counted", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_client_timeouts_total{phase=\"http2_idle\"}",
        ) == 1.0
    })
    .await;
}

/// `tokens/generate` through a trusted proxy that says the client is `forwarded_for`.
async fn generate_as(h: &Harness, forwarded_for: &str) -> StatusCode {
    let request = http::Request::post(h.url("/v3/directline/tokens/generate"))
        .header("x-forwarded-for", forwarded_for);
    h.send(support::api_request(request, None, None))
        .await
        .status
}

/// Behind a trusted proxy, clients written as `ip:port` (Azure Application Gateway) and
/// `[v6]:port` are told apart (all were the proxy before), an IPv4 client written as an
/// IPv4-mapped IPv6 address is the same client (a fresh allowance before), and the
/// addresses of one IPv6 /64 share one allowance (one each before).
#[tokio::test]
async fn clients_behind_a_trusted_proxy_are_told_apart_and_not_multiplied() {
    let h = Harness::builder()
        .config(|c| {
            c.trusted_proxies =
                vec![directline_gateway::config::IpNet::parse("127.0.0.1/32").unwrap()];
            let sessions = &mut c.bot_mut().rate_limits.sessions;
            sessions.per_minute = 1;
            sessions.burst = 2;
        })
        .start()
        .await;
    for client in ["203.0.113.5:4711", "203.0.113.6:50000"] {
        assert_eq!(generate_as(&h, client).await, StatusCode::OK, "{client}");
        assert_eq!(generate_as(&h, client).await, StatusCode::OK, "{client}");
    }
    for same in [
        "203.0.113.5",
        "::ffff:203.0.113.5",
        "[::ffff:203.0.113.5]:1",
    ] {
        assert_eq!(
            generate_as(&h, same).await,
            StatusCode::TOO_MANY_REQUESTS,
            "{same} is 203.0.113.5"
        );
    }
    assert_eq!(
        generate_as(&h, "[2001:db8:0:7::1]:443").await,
        StatusCode::OK
    );
    assert_eq!(generate_as(&h, "2001:db8:0:7::2").await, StatusCode::OK);
    assert_eq!(
        generate_as(&h, "2001:db8:0:7:ffff::3").await,
        StatusCode::TOO_MANY_REQUESTS,
        "the same /64"
    );
    assert_eq!(
        generate_as(&h, "2001:db8:0:8::1").await,
        StatusCode::OK,
        "another /64"
    );
}

/// The `from` of the last POST activities the emulator received.
fn posted_from(h: &Harness) -> serde_json::Value {
    h.emulator
        .requests()
        .iter()
        .rev()
        .find(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .and_then(|r| r.body.clone())
        .expect("a POST activities reached the emulator")["from"]
        .clone()
}

/// In signed-in mode `from.name` on a post is the identity provider's name for the user, or
/// none: a page's "Mallory" reached the bot before.
#[tokio::test]
async fn a_signed_in_user_posts_under_the_verified_name_only() {
    use directline_emulator::OidcIssuer;
    use directline_emulator::oidc::DEFAULT_AUDIENCE;
    use directline_gateway::identity::settings::{AuthSettings, IdentityLimits};
    use http::Method;
    use serde_json::json;

    let idp = OidcIssuer::spawn(tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap());
    let settings = std::sync::Arc::new(AuthSettings {
        issuer: idp.issuer(),
        audiences: vec![DEFAULT_AUDIENCE.to_owned()],
        jwks_url: None,
        user_claim: "sub".to_owned(),
        name_claim: Some("name".to_owned()),
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        leeway: Duration::from_secs(60),
        pseudonym_key: directline_gateway::secret::Secret::new(
            "test-pseudonym-key-0123456789abcdef0123",
        ),
        limits: IdentityLimits::default(),
    });
    let h = Harness::builder()
        .config(|c| c.bot_mut().auth = Some(settings))
        .start()
        .await;
    for (jwt, expected) in [
        (
            idp.token("alice")
                .claim("name", json!("Alice Example"))
                .sign(),
            json!("Alice Example"),
        ),
        (idp.token("bob").sign(), serde_json::Value::Null),
    ] {
        let generated = h
            .request(
                Method::POST,
                "/v3/directline/tokens/generate",
                Some(&jwt),
                None,
            )
            .await;
        assert_eq!(generated.status, StatusCode::OK, "{}", generated.text());
        let token = generated.json()["token"].as_str().unwrap().to_owned();
        let started = h
            .request(
                Method::POST,
                "/v3/directline/conversations",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
        let id = started.json()["conversationId"]
            .as_str()
            .unwrap()
            .to_owned();
        let body = json!({"type": "message", "text": "hi", "from": {"id": "x", "name": "Mallory"}});
        let path = format!("/v3/directline/conversations/{id}/activities");
        let posted = h
            .request(Method::POST, &path, Some(&token), Some(body))
            .await;
        assert_eq!(posted.status, StatusCode::OK, "{}", posted.text());
        assert_eq!(posted_from(&h)["name"], expected);
    }
}

/// Signed-in mode with the emulator's identity provider, keys cooled down for `cooldown`.
fn signed_in_settings(
    idp: &directline_emulator::OidcIssuer,
    cooldown: Duration,
) -> std::sync::Arc<directline_gateway::identity::settings::AuthSettings> {
    use directline_gateway::identity::settings::{AuthSettings, IdentityLimits};
    std::sync::Arc::new(AuthSettings {
        issuer: idp.issuer(),
        audiences: vec![directline_emulator::oidc::DEFAULT_AUDIENCE.to_owned()],
        jwks_url: None,
        user_claim: "sub".to_owned(),
        name_claim: Some("name".to_owned()),
        algorithms: vec![jsonwebtoken::Algorithm::RS256],
        leeway: Duration::from_secs(60),
        pseudonym_key: directline_gateway::secret::Secret::new(
            "test-pseudonym-key-0123456789abcdef0123",
        ),
        limits: IdentityLimits {
            jwks_cooldown: cooldown,
            ..IdentityLimits::default()
        },
    })
}

/// The identity provider down when the first sign-in came: once it is back, sign-ins work
/// within the short backoff (1 s, 2 s …), not after the unknown-key cooldown (here 120 s;
/// every sign-in got 503 until it had passed before).
#[tokio::test]
async fn signing_in_recovers_soon_after_the_identity_provider_is_back() {
    let idp = directline_emulator::OidcIssuer::spawn(
        tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap(),
    );
    idp.set_down(true);
    let settings = signed_in_settings(&idp, Duration::from_secs(120));
    let h = Harness::builder()
        .config(|c| {
            c.bot_mut().auth = Some(settings);
            c.bot_mut().rate_limits.sessions.per_minute = 0;
        })
        .start()
        .await;
    let jwt = idp.token("alice").sign();
    let generate = async || {
        h.request(
            http::Method::POST,
            "/v3/directline/tokens/generate",
            Some(&jwt),
            None,
        )
        .await
        .status
    };
    assert_eq!(generate().await, StatusCode::SERVICE_UNAVAILABLE);
    idp.set_down(false);
    support::eventually("a sign-in works again", async || {
        generate().await == StatusCode::OK
    })
    .await;
}

/// A Copilot Studio environment that accepts connections and never answers: the gateway
/// serves at once (its start waited for the discovery, here up to an hour, before), its
/// Direct Line routes answer 503 with Retry-After, and it is ready.
#[tokio::test]
async fn start_up_does_not_wait_for_a_hanging_discovery() {
    use directline_gateway::config::{BotConfig, Config, TokenEndpoint, UpstreamTarget};
    let hang = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = hang.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = hang.accept().await {
            sockets.push(socket);
        }
    });
    let endpoint = TokenEndpoint::parse(&format!(
        "http://127.0.0.1:{port}/powervirtualagents/botsbyschema/agent/directline/token?api-version=2022-03-01-preview"
    ))
    .unwrap();
    let mut config = Config {
        token_key: Some(directline_gateway::secret::Secret::new(TOKEN_KEY)),
        ..Config::single(BotConfig {
            upstream: UpstreamTarget::Discovered,
            secret: Some(directline_gateway::secret::Secret::new(support::SECRET)),
            token_endpoint: Some(endpoint),
            ..BotConfig::default()
        })
    };
    config.timeouts.default = Duration::from_secs(3600);
    let running = tokio::time::timeout(support::WAIT, support::start_gateway(config))
        .await
        .expect("the gateway started without waiting for discovery");
    let emulator = Harness::emulator(Default::default()).await;
    let h = Harness::attach_in_process(emulator, &running);
    let reply = h
        .request(
            http::Method::POST,
            "/v3/directline/tokens/generate",
            None,
            None,
        )
        .await;
    assert_eq!(
        reply.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        reply.text()
    );
    assert!(reply.headers.contains_key("retry-after"));
    assert_eq!(h.admin_get("/readyz").await.status, StatusCode::OK);
    held.abort();
    running.shutdown().await;
}

/// A caller's `traceparent` (sampled) with a 16 KiB `tracestate`, by default: the request
/// starts a trace of its own that links the caller's span, and carries no tracestate (the
/// caller chose the trace, its sampling and 16 KiB in every span before).
#[tokio::test]
async fn a_callers_trace_context_is_linked_not_trusted() {
    const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    const CALLER_SPAN: &str = "00f067aa0ba902b7";
    // OTLP's SpanKind: the gateway's own span of the request, not its upstream call's.
    const SERVER_KIND: i32 = 2;
    let collector = support::otlp::Collector::start().await;
    let tracing = directline_gateway::config::TracingConfig {
        traces_url: url::Url::parse(&format!("{}/v1/traces", collector.endpoint)).unwrap(),
        service_name: "gateway-under-test".to_owned(),
        sampling_ratio: 1.0,
        propagate_upstream: false,
        include_conversation_ids: false,
        export_interval: Duration::from_millis(50),
        export_timeout: Duration::from_secs(2),
        queue_size: 2048,
        trust_incoming_context: false,
    };
    let h = Harness::builder()
        .config(move |c| c.tracing = Some(tracing))
        .start()
        .await;
    let tracestate = format!("vendor={}", "a".repeat(16 * 1024));
    let request = http::Request::post(h.url("/v3/directline/tokens/generate"))
        .header("traceparent", format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01"))
        .header("tracestate", tracestate);
    let reply = h.send(support::api_request(request, None, None)).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let spans = collector
        .wait_for("the generate's server span", |spans| {
            spans.iter().any(|s| {
                s.span.kind == SERVER_KIND
                    && s.attr("directline.route").as_deref() == Some("tokens_generate")
            })
        })
        .await;
    let server = spans
        .iter()
        .find(|s| {
            s.span.kind == SERVER_KIND
                && s.attr("directline.route").as_deref() == Some("tokens_generate")
        })
        .unwrap();
    assert_ne!(server.trace_id(), CALLER_TRACE, "a trace of its own");
    assert_ne!(
        server.parent_id(),
        CALLER_SPAN,
        "not under the caller's span"
    );
    assert_eq!(server.span.trace_state, "");
    assert_eq!(server.span.links.len(), 1, "{server:#?}");
    let link = &server.span.links[0];
    assert_eq!(support::otlp::hex(&link.trace_id), CALLER_TRACE);
    assert_eq!(support::otlp::hex(&link.span_id), CALLER_SPAN);
    assert_eq!(link.trace_state, "");
}
