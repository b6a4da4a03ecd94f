//! What an operator does to a running gateway, done to the real binary: reload with SIGHUP
//! (secret and token-key rotation, a broken file refused), drain with SIGTERM.

mod support;

use directline_emulator::{EmulatorConfig, SeenCredential};
use directline_gateway::seal::{ClientToken, Purpose, Sealer};
use http::{Method, StatusCode};
use support::process::{GatewayProcess, TempDir};
use support::*;

const SECOND_SECRET: &str = "second-directline-secret-0123456789abcdef";
const KEY_1: &str = "operations-token-key-one-0123456789abcdef";
const KEY_2: &str = "operations-token-key-two-0123456789abcdef";

fn config_file(dir: &TempDir, upstream: &str, extra: &str) -> String {
    let secret = dir.path().join("secret").display().to_string();
    let key = dir.path().join("token-key").display().to_string();
    // The SIGHUP tests count reloads exactly: no file watch unless a test asks for one.
    let watch = if extra.contains("file_watch_interval") {
        ""
    } else {
        "file_watch_interval = \"0s\"\n"
    };
    dir.write(
        "gateway.toml",
        &format!(
            "upstream = \"{upstream}\"\nsecret_file = \"{secret}\"\ntoken_key_file = \"{key}\"\n\
             token_key_overlap = \"10m\"\nshutdown_grace = \"5s\"\n{watch}{extra}"
        ),
    )
}

/// The emulator with the test secret (and optionally the site's second one).
async fn emulator(second_secret: Option<&str>) -> directline_emulator::EmulatorHandle {
    Harness::emulator(EmulatorConfig {
        secret: directline_emulator::Secret::new(SECRET),
        second_secret: second_secret.map(directline_emulator::Secret::new),
        ..EmulatorConfig::default()
    })
    .await
}

/// Waits until the gateway has counted one reload with `result`.
async fn reloads_counted(h: &Harness, result: &str) {
    let series = format!("directline_gateway_config_reloads_total{{result=\"{result}\"}}");
    eventually(&format!("a reload counted as {result}"), async || {
        metric(&h.metrics().await, &series) == 1.0
    })
    .await;
}

/// The credential the emulator saw on the latest call to `path`.
fn last_credential(h: &Harness, path: &str) -> SeenCredential {
    h.emulator
        .requests()
        .into_iter()
        .rev()
        .find(|r| r.path == path)
        .map(|r| r.credential)
        .expect("the call reached the emulator")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_secret_and_token_key_while_a_stream_stays_open() {
    let emulator = emulator(Some(SECOND_SECRET)).await;
    let dir = TempDir::new("reload");
    dir.write("secret", SECRET);
    dir.write("token-key", KEY_1);
    let config = config_file(&dir, &emulator.base_url(), "");
    let gateway = GatewayProcess::with_config(&config);
    let h = Harness::attach(emulator, &gateway);

    let conversation = h.conversation().await;
    assert_eq!(
        last_credential(&h, "/v3/directline/tokens/generate"),
        SeenCredential::Secret
    );
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "before").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: before".into())
    })
    .await;

    // Rotation as an operator does it: secret 2 and a new token key into the mounted files.
    dir.write("secret", SECOND_SECRET);
    dir.write("token-key", KEY_2);
    gateway.signal("HUP");
    reloads_counted(&h, "ok").await;

    // New upstream calls use the new secret at once.
    let (fresh_token, _) = h.generate().await;
    assert_eq!(
        last_credential(&h, "/v3/directline/tokens/generate"),
        SeenCredential::SecondSecret
    );
    // New tokens are sealed with the new key only.
    let with_key_2 = Sealer::new(KEY_2, &[]).unwrap();
    let with_key_1 = Sealer::new(KEY_1, &[]).unwrap();
    assert!(
        with_key_2
            .open::<ClientToken>(Purpose::ClientToken, &fresh_token)
            .is_ok()
    );
    assert!(
        with_key_1
            .open::<ClientToken>(Purpose::ClientToken, &fresh_token)
            .is_err()
    );
    // The token sealed before the rotation still works within the overlap, and the stream
    // opened before the reload is still the same socket.
    h.post_message(&conversation, "after").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: after".into())
    })
    .await;
    assert_eq!(
        seen.texts(),
        ["before", "echo: before", "after", "echo: after"]
    );
    seen.assert_no_duplicate_ids();
    // The reconnect with the secret after the rotation: the emulator saw secret 2.
    h.reconnect(&conversation, None).await;
    assert_eq!(
        last_credential(
            &h,
            &format!("/v3/directline/conversations/{}", conversation.id)
        ),
        SeenCredential::SecondSecret
    );

    // A broken file is refused with a log line and a metric; the running settings stay.
    std::fs::write(&config, "this is = = not toml").unwrap();
    gateway.signal("HUP");
    reloads_counted(&h, "error").await;
    h.generate().await;
    assert_eq!(
        last_credential(&h, "/v3/directline/tokens/generate"),
        SeenCredential::SecondSecret
    );
    h.post_message(&conversation, "still").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: still".into())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_from_a_key_retired_past_its_overlap_is_refused() {
    let emulator = emulator(None).await;
    let dir = TempDir::new("overlap");
    dir.write("secret", SECRET);
    dir.write("token-key", KEY_1);
    // No overlap at all: the replaced key stops opening tokens at the reload.
    let config = config_file(&dir, &emulator.base_url(), "");
    let text = std::fs::read_to_string(&config)
        .unwrap()
        .replace("token_key_overlap = \"10m\"", "token_key_overlap = \"0s\"");
    std::fs::write(&config, text).unwrap();
    let gateway = GatewayProcess::with_config(&config);
    let h = Harness::attach(emulator, &gateway);
    let conversation = h.conversation().await;
    dir.write("token-key", KEY_2);
    gateway.signal("HUP");
    reloads_counted(&h, "ok").await;
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let reply = h
        .request(Method::GET, &path, Some(&conversation.token), None)
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.text());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_refuses_a_listener_change_and_keeps_serving() {
    let emulator = emulator(None).await;
    let dir = TempDir::new("listen");
    dir.write("secret", SECRET);
    dir.write("token-key", KEY_1);
    let config = config_file(&dir, &emulator.base_url(), "listen = \"127.0.0.1:0\"\n");
    let gateway =
        GatewayProcess::start(&["--config", &config, "--admin-listen", "127.0.0.1:0"], &[]);
    let h = Harness::attach(emulator, &gateway);
    config_file(&dir, &h.emulator.base_url(), "listen = \"127.0.0.1:1\"\n");
    gateway.signal("HUP");
    reloads_counted(&h, "error").await;
    let conversation = h.conversation().await;
    h.post_message(&conversation, "fine").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_an_open_stream_with_1001_and_finishes_an_in_flight_upload() {
    use bytes::Bytes;
    use futures_util::StreamExt;
    use http_body_util::{BodyExt, StreamBody};
    use tokio_tungstenite::tungstenite::Message;
    use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

    let emulator = emulator(None).await;
    let dir = TempDir::new("drain");
    dir.write("secret", SECRET);
    dir.write("token-key", KEY_1);
    // A short drain period: the stream is served a second longer, then closed (tests/drain.rs
    // has what happens during the period).
    let config = config_file(
        &dir,
        &emulator.base_url(),
        "[stream]\ndrain_period = \"1s\"\ndrain_spread = \"100ms\"\n",
    );
    let mut gateway = GatewayProcess::with_config(&config);
    let h = Harness::attach(emulator, &gateway);
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;

    // An upload whose body is still arriving when SIGTERM comes.
    let boundary = "drain";
    let head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"activity\"\r\nContent-Type: application/vnd.microsoft.activity\r\n\r\n{{\"type\":\"message\",\"text\":\"uploaded during the drain\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\n"
    );
    let tail = format!("the rest of the file\r\n--{boundary}--\r\n");
    // Capacity 1: a second send returns only once hyper has taken the first chunk, that is
    // once the request is on the wire to the gateway.
    let (chunks, body) =
        tokio::sync::mpsc::channel::<Result<http_body::Frame<Bytes>, std::io::Error>>(1);
    let body = StreamBody::new(tokio_stream_from(body));
    let request = http::Request::post(h.url(&format!(
        "/v3/directline/conversations/{}/upload",
        conversation.id
    )))
    .header("authorization", format!("Bearer {}", conversation.token))
    .header(
        "content-type",
        format!("multipart/form-data; boundary={boundary}"),
    )
    .body(body)
    .unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http();
    chunks
        .send(Ok(http_body::Frame::data(Bytes::from(head))))
        .await
        .unwrap();
    let in_flight = tokio::spawn(client.request(request));
    chunks
        .send(Ok(http_body::Frame::data(Bytes::from_static(
            b"the start, ",
        ))))
        .await
        .unwrap();
    // The chunk being taken only proves the bytes reached the kernel: the gateway may not have
    // accepted the connection yet, and a drain refuses connections it has not accepted. Wait
    // until the gateway is inside the request.
    eventually("the upload is in flight at the gateway", async || {
        let text = h.admin_get("/metrics").await.text();
        metric(&text, "directline_gateway_http_requests_in_flight") >= 1.0
    })
    .await;
    gateway.signal("TERM");

    // After the drain period the open stream is closed with 1001 so the client resumes
    // elsewhere.
    let close = loop {
        match tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("close in time")
        {
            Some(Ok(Message::Close(frame))) => break frame,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    assert_eq!(close.map(|f| f.code), Some(CloseCode::Away));

    // The in-flight upload finishes within the grace period.
    chunks
        .send(Ok(http_body::Frame::data(Bytes::from(tail))))
        .await
        .unwrap();
    drop(chunks);
    let response = tokio::time::timeout(WAIT, in_flight)
        .await
        .expect("upload answered in time")
        .unwrap()
        .expect("upload answered");
    assert_eq!(response.status(), StatusCode::OK);
    let _ = response.into_body().collect().await;
    let status = gateway.wait_exit(std::time::Duration::from_secs(30));
    assert!(status.success(), "exit 0 after the drain: {status:?}");
    let stored = h
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/upload"))
        .and_then(|r| r.body)
        .expect("the upload reached Direct Line");
    assert_eq!(stored["text"], "uploaded during the drain");
}

/// A `Stream` over an mpsc receiver, without pulling in tokio-stream.
fn tokio_stream_from<T>(
    mut receiver: tokio::sync::mpsc::Receiver<T>,
) -> impl futures_util::Stream<Item = T> {
    futures_util::stream::poll_fn(move |cx| receiver.poll_recv(cx))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_have_one_access_line_per_request_and_one_line_per_stream_session() {
    let emulator = emulator(None).await;
    let gateway = GatewayProcess::in_front_of(
        &emulator.base_url(),
        KEY_1,
        &["--log-format", "json"],
        &[("RUST_LOG", "info")],
    );
    let h = Harness::attach(emulator, &gateway);

    // A caller's request id is kept, returned, and forwarded upstream.
    let request = http::Request::post(h.url("/v3/directline/tokens/generate"))
        .header("x-request-id", "caller-request-0001")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["x-request-id"], "caller-request-0001");
    // The last one: the gateway's own check of the secret at start came first.
    let upstream = h
        .emulator
        .requests()
        .into_iter()
        .rfind(|r| r.path == "/v3/directline/tokens/generate")
        .unwrap();
    assert_eq!(upstream.request_id.as_deref(), Some("caller-request-0001"));

    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "logged").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: logged".into())
    })
    .await;
    ws.close(None).await.unwrap();

    let parsed = || -> Vec<serde_json::Value> {
        gateway
            .logs()
            .iter()
            .map(|line| serde_json::from_str(line).unwrap_or_else(|_| panic!("not JSON: {line}")))
            .collect()
    };
    eventually("the session line", async || {
        parsed().iter().any(|l| l["target"] == "session")
    })
    .await;
    let lines = parsed();
    let access: Vec<_> = lines.iter().filter(|l| l["target"] == "access").collect();
    let generate = access
        .iter()
        .find(|l| l["request_id"] == "caller-request-0001")
        .expect("an access line for the caller's request");
    assert_eq!(generate["route"], "tokens_generate");
    assert_eq!(generate["status"], 200);
    assert_eq!(generate["upstream_status"], 200);
    assert_eq!(generate["client_ip"], "127.0.0.1");
    assert!(generate["duration_ms"].as_f64().is_some());
    assert!(generate["level"] == "INFO" && generate["timestamp"].is_string());
    for route in ["conversations_start", "activities_post", "stream"] {
        assert!(
            access.iter().any(|l| l["route"] == route),
            "an access line for {route}"
        );
    }
    // Every line the process wrote is JSON: the start-up banner is an event with the
    // version, the listeners, the bots and their upstreams, and stdout holds nothing else.
    for line in gateway.stdout.lock().unwrap().iter() {
        assert!(
            serde_json::from_str::<serde_json::Value>(line).is_ok(),
            "not JSON on stdout: {line}"
        );
    }
    let banner = lines
        .iter()
        .find(|l| l["message"] == "gateway listening")
        .expect("the banner event");
    assert_eq!(banner["version"], env!("CARGO_PKG_VERSION"));
    assert_eq!(banner["listen"], gateway.base.as_str());
    assert_eq!(banner["bots"][0]["name"], "default");
    assert_eq!(
        banner["bots"][0]["domain"],
        format!("{}/v3/directline", gateway.base)
    );
    let upstream = format!("{}/", h.emulator.base_url().trim_end_matches('/'));
    assert_eq!(banner["bots"][0]["upstream"], upstream.as_str());
    assert_eq!(banner["upstreams"][0], upstream.as_str());
    let session = lines.iter().find(|l| l["target"] == "session").unwrap();
    assert!(session["duration_ms"].is_u64());
    assert_eq!(session["activities"], 2);
    assert_eq!(session["resumes"], 0);
    // Nothing secret in any line.
    let all = gateway.logs().join("\n");
    for secret in [SECRET, KEY_1, conversation.token.as_str()] {
        assert!(!all.contains(secret), "a log line holds a secret or token");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_after_a_scenario_pass_promtool() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    h.post_message(&conversation, "measured").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: measured".into())
    })
    .await;
    let text = h.metrics().await;
    for series in [
        "directline_gateway_http_requests_total{bot=\"default\",method=\"POST\",route=\"activities_post\",status=\"2xx\"}",
        "directline_gateway_tokens_total{bot=\"default\",kind=\"conversation\"}",
        "directline_gateway_activities_relayed_total{bot=\"default\"}",
        "directline_gateway_client_websockets{bot=\"default\"}",
        "directline_gateway_upstream_websockets{bot=\"default\"}",
    ] {
        assert!(metric(&text, series) >= 1.0, "{series} in\n{text}");
    }
    assert!(text.contains("directline_gateway_build_info{git_sha="));
    // promtool is the reference linter; tests/run.sh installs it, a bare `cargo test` on a
    // machine without it says so instead of passing silently.
    let promtool = std::env::var("PROMTOOL").unwrap_or_else(|_| "promtool".into());
    let child = std::process::Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(child) => child,
        Err(error) if std::env::var_os("REQUIRE_PROMTOOL").is_none() => {
            eprintln!("SKIPPED: {promtool} not runnable ({error}); tests/run.sh requires it");
            return;
        }
        Err(error) => panic!("{promtool}: {error}"),
    };
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A port nothing listens on: bound, then closed again.
fn closed_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_upstream_is_logged_at_warn_with_its_cause_and_the_request_id() {
    let emulator = emulator(None).await;
    let cases = [
        // Nothing listens: the connect is refused.
        (
            format!("http://127.0.0.1:{}", closed_port()),
            "connection refused",
        ),
        // Something answers, but not TLS: the handshake fails.
        (
            format!(
                "https://{}",
                emulator.base_url().trim_start_matches("http://")
            ),
            "tls",
        ),
    ];
    for (upstream, cause) in cases {
        let gateway = GatewayProcess::in_front_of(&upstream, KEY_1, &[], &[]);
        let h = Harness::attach(Harness::emulator(EmulatorConfig::default()).await, &gateway);
        let request = http::Request::post(h.url("/v3/directline/tokens/generate"))
            .header("x-request-id", "unreachable-upstream-01")
            .body(http_body_util::Full::new(bytes::Bytes::new()))
            .unwrap();
        let reply = h.send(request).await;
        assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{upstream}");
        assert_eq!(reply.error_code(), "UpstreamUnavailable");
        assert!(
            !reply.text().to_lowercase().contains(cause),
            "the cause stays out of the client's answer: {}",
            reply.text()
        );
        let warned = || {
            gateway.logs().into_iter().find(|line| {
                line.contains("WARN")
                    && line.contains("unreachable-upstream-01")
                    && line.contains("upstream could not be reached")
            })
        };
        eventually("the warn line", async || warned().is_some()).await;
        let line = warned().unwrap();
        assert!(
            line.to_lowercase().contains(cause),
            "{upstream}: the cause {cause:?} in {line}"
        );
    }
}

/// The rotation path of the shipped manifests: the Secret is mounted as files, and an
/// update of the files is applied without a signal (the scratch image has no shell).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_secret_file_is_picked_up_without_a_signal_or_a_restart() {
    let emulator = emulator(Some(SECOND_SECRET)).await;
    let dir = TempDir::new("watch");
    dir.write("secret", SECRET);
    dir.write("token-key", KEY_1);
    let config = config_file(
        &dir,
        &emulator.base_url(),
        "file_watch_interval = \"100ms\"\n",
    );
    let gateway = GatewayProcess::with_config(&config);
    let h = Harness::attach(emulator, &gateway);
    let conversation = h.conversation().await;
    let mut ws = open_stream(&conversation.stream_url).await;
    let mut seen = Seen::default();
    assert_eq!(
        last_credential(&h, "/v3/directline/tokens/generate"),
        SeenCredential::Secret
    );

    // What a Kubernetes Secret update does to the mounted file; no SIGHUP.
    dir.write("secret", SECOND_SECRET);
    reloads_counted(&h, "ok").await;
    h.generate().await;
    assert_eq!(
        last_credential(&h, "/v3/directline/tokens/generate"),
        SeenCredential::SecondSecret
    );
    // The stream opened before goes on.
    h.post_message(&conversation, "after the rotation").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: after the rotation".into())
    })
    .await;
    assert_eq!(seen.closed, None);
    assert!(
        gateway
            .logs()
            .iter()
            .any(|l| l.contains("file changed: reloading")),
        "{:?}",
        gateway.logs()
    );
}

/// A rotation with a typo: Direct Line refuses the secret, and the gateway says so where an
/// operator and an orchestrator look (readiness, an ERROR line naming the bot, a counter)
/// instead of answering every user 403 while looking healthy. A reload with the right
/// secret makes it ready again; an upstream that does not answer at all does not make it
/// unready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_secret_makes_the_gateway_unready_until_a_reload_brings_the_right_one() {
    let emulator = emulator(None).await;
    let dir = TempDir::new("refused");
    dir.write("secret", SECOND_SECRET);
    dir.write("token-key", KEY_1);
    let config = config_file(&dir, &emulator.base_url(), "");
    let gateway = GatewayProcess::with_config(&config);
    let h = Harness::attach(emulator, &gateway);
    let refusals = "directline_gateway_upstream_credential_refusals_total{bot=\"default\"}";

    // The check at start has answered before the listeners did: unready from the first probe.
    let ready = h.admin_get("/readyz").await;
    assert_eq!(
        ready.status,
        StatusCode::SERVICE_UNAVAILABLE,
        "{}",
        ready.text()
    );
    assert!(ready.text().contains("default"), "{}", ready.text());
    assert!(metric(&h.metrics().await, refusals) >= 1.0);
    let logged = gateway.logs().into_iter().find(|line| {
        line.contains("ERROR") && line.contains("default") && line.contains("refuses")
    });
    let logged = logged.unwrap_or_else(|| panic!("an ERROR line: {:?}", gateway.logs()));
    assert!(logged.contains("403"), "the cause: {logged}");
    assert!(!logged.contains(SECOND_SECRET), "{logged}");
    // Normal traffic with the refused secret counts too.
    let before = metric(&h.metrics().await, refusals);
    let reply = h
        .request(Method::POST, "/v3/directline/tokens/generate", None, None)
        .await;
    assert!(reply.status.is_client_error(), "{}", reply.text());
    assert!(metric(&h.metrics().await, refusals) > before);

    // The corrected secret, reloaded: ready again without a restart.
    dir.write("secret", SECRET);
    gateway.signal("HUP");
    reloads_counted(&h, "ok").await;
    eventually("ready after the reload", async || {
        h.admin_get("/readyz").await.status == StatusCode::OK
    })
    .await;
    h.generate().await;
    assert_eq!(h.admin_get("/readyz").await.status, StatusCode::OK);

    // Direct Line unreachable says nothing about the secret: still ready.
    let outage = GatewayProcess::in_front_of(
        &format!("http://127.0.0.1:{}", closed_port()),
        KEY_1,
        &[],
        &[],
    );
    let o = Harness::attach(Harness::emulator(EmulatorConfig::default()).await, &outage);
    let reply = o
        .request(Method::POST, "/v3/directline/tokens/generate", None, None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY);
    assert_eq!(o.admin_get("/readyz").await.status, StatusCode::OK);
    assert_eq!(metric(&o.metrics().await, refusals), 0.0);
}
