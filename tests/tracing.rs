//! Distributed tracing against a real gateway, the emulator and an OTLP/HTTP
//! receiver on loopback that decodes what arrives as a collector would.

mod support;

use std::time::Duration;

use directline_gateway::config::TracingConfig;
use futures_util::SinkExt;
use http::{Method, Request, StatusCode};
use serde_json::json;
use support::otlp::{Collector, Received};
use support::*;

/// The span kinds of the OTLP protobuf (`Span.SpanKind`).
const SERVER: i32 = 2;
const CLIENT: i32 = 3;

const CALLER_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn tracing_to(endpoint: &str) -> TracingConfig {
    TracingConfig {
        traces_url: url::Url::parse(&format!("{endpoint}/v1/traces")).unwrap(),
        service_name: "gateway-under-test".to_owned(),
        sampling_ratio: 1.0,
        propagate_upstream: false,
        include_conversation_ids: false,
        export_interval: Duration::from_millis(50),
        export_timeout: Duration::from_secs(2),
        queue_size: 2048,
        trust_incoming_context: true,
    }
}

async fn traced_harness(tracing: TracingConfig) -> Harness {
    Harness::builder()
        .config(move |config| config.tracing = Some(tracing))
        .start()
        .await
}

/// A POST of one message with extra request headers.
async fn post_with(h: &Harness, conversation: &Conversation, text: &str, headers: &[(&str, &str)]) {
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let mut builder = Request::builder().method(Method::POST).uri(h.url(&path));
    for (name, value) in headers {
        builder = builder.header(*name, *value);
    }
    let body = json!({"type": "message", "from": {"id": "user"}, "text": text});
    let reply = h
        .send(api_request(builder, Some(&conversation.token), Some(body)))
        .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
}

fn server_spans<'a>(spans: &'a [Received], route: &str) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.span.kind == SERVER && s.attr("directline.route").as_deref() == Some(route))
        .collect()
}

fn children<'a>(spans: &'a [Received], parent: &Received) -> Vec<&'a Received> {
    spans
        .iter()
        .filter(|s| s.trace_id() == parent.trace_id() && s.parent_id() == parent.span_id())
        .collect()
}

#[tokio::test]
async fn a_callers_traceparent_is_continued_down_to_direct_line() {
    let collector = Collector::start().await;
    let h = traced_harness(tracing_to(&collector.endpoint)).await;
    let conversation = h.conversation().await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    post_with(
        &h,
        &conversation,
        "traced",
        &[("traceparent", &traceparent), ("tracestate", "vendor=1")],
    )
    .await;

    let spans = collector
        .wait_for("the POST's server span and its upstream span", |spans| {
            server_spans(spans, "activities_post")
                .iter()
                .any(|s| !children(spans, s).is_empty())
        })
        .await;
    let server = server_spans(&spans, "activities_post")[0];
    assert_eq!(
        server.trace_id(),
        CALLER_TRACE,
        "the caller's trace goes on"
    );
    assert_eq!(server.parent_id(), CALLER_SPAN, "under the caller's span");
    assert_eq!(server.service, "gateway-under-test");
    assert_eq!(
        server.span.name,
        "POST /v3/directline/conversations/{conversationId}/activities"
    );
    assert_eq!(server.attr("http.request.method").as_deref(), Some("POST"));
    assert_eq!(
        server.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        server.attr("directline.status_class").as_deref(),
        Some("2xx")
    );
    assert_eq!(server.attr("directline.bot").as_deref(), Some("default"));
    assert_eq!(
        server.attr("directline.upstream_status").as_deref(),
        Some("200")
    );
    assert_eq!(server.span.trace_state, "vendor=1");
    let request_id = server.attr("directline.request_id").expect("request id");
    assert_eq!(request_id.len(), 32, "the gateway's own request id");

    let client = children(&spans, server)[0];
    assert_eq!(client.span.kind, CLIENT);
    assert_eq!(client.span.name, "POST activities_post");
    assert_eq!(
        client.attr("directline.route").as_deref(),
        Some("activities_post")
    );
    assert_eq!(
        client.attr("http.response.status_code").as_deref(),
        Some("200")
    );
    let ms_request_id = client
        .attr("http.response.header.x-ms-request-id")
        .expect("Direct Line's request id on the upstream span");
    let groups: Vec<usize> = ms_request_id.split('-').map(str::len).collect();
    assert_eq!(groups, [8, 4, 4, 4, 12], "{ms_request_id}");
    assert!(client.span.start_time_unix_nano >= server.span.start_time_unix_nano);
    assert!(client.span.end_time_unix_nano <= server.span.end_time_unix_nano);
    // The emulator saw the gateway's request id, and no traceparent (off by default).
    let posted = h
        .emulator
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .unwrap();
    assert_eq!(posted.request_id.as_deref(), Some(request_id.as_str()));
    assert!(
        !posted
            .headers
            .iter()
            .any(|(name, _)| name == "traceparent" || name == "tracestate"),
        "traceparent reached Direct Line without tracing.propagate_upstream"
    );
}

#[tokio::test]
async fn a_request_without_traceparent_starts_a_trace_and_each_its_own() {
    let collector = Collector::start().await;
    let h = traced_harness(tracing_to(&collector.endpoint)).await;
    h.generate().await;
    h.generate().await;
    let spans = collector
        .wait_for("two tokens/generate server spans", |spans| {
            server_spans(spans, "tokens_generate").len() == 2
        })
        .await;
    let generated = server_spans(&spans, "tokens_generate");
    for server in &generated {
        assert!(server.span.parent_span_id.is_empty(), "a root span");
        assert_ne!(server.trace_id(), "0".repeat(32));
        let calls = children(&spans, server);
        assert_eq!(calls.len(), 1, "one upstream call");
        assert_eq!(
            calls[0].attr("directline.route").as_deref(),
            Some("tokens_generate")
        );
    }
    assert_ne!(generated[0].trace_id(), generated[1].trace_id());
}

#[tokio::test]
async fn traceparent_reaches_direct_line_only_when_asked() {
    let collector = Collector::start().await;
    let h = traced_harness(TracingConfig {
        propagate_upstream: true,
        ..tracing_to(&collector.endpoint)
    })
    .await;
    let conversation = h.conversation().await;
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    post_with(
        &h,
        &conversation,
        "traced",
        &[("traceparent", &traceparent)],
    )
    .await;
    let spans = collector
        .wait_for("the POST's upstream span", |spans| {
            spans.iter().any(|s| {
                s.span.kind == CLIENT
                    && s.attr("directline.route").as_deref() == Some("activities_post")
            })
        })
        .await;
    let client = spans
        .iter()
        .find(|s| {
            s.span.kind == CLIENT
                && s.attr("directline.route").as_deref() == Some("activities_post")
        })
        .unwrap();
    let posted = h
        .emulator
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .unwrap();
    let sent = posted
        .headers
        .iter()
        .find(|(name, _)| name == "traceparent")
        .map(|(_, value)| value.clone())
        .expect("traceparent sent upstream");
    assert_eq!(
        sent,
        format!("00-{CALLER_TRACE}-{}-01", client.span_id()),
        "the upstream span is the parent Direct Line sees"
    );
    // A caller that did not sample: nothing recorded, but Direct Line learns the decision
    // (in the caller's trace, under the gateway's unrecorded span).
    let unsampled_trace = "2".repeat(32);
    let unsampled = format!("00-{unsampled_trace}-{CALLER_SPAN}-00");
    post_with(
        &h,
        &conversation,
        "unsampled",
        &[("traceparent", &unsampled)],
    )
    .await;
    let posted = h
        .emulator
        .requests()
        .into_iter()
        .rfind(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .unwrap();
    let sent: Vec<&str> = posted
        .headers
        .iter()
        .filter(|(name, _)| name == "traceparent" || name == "tracestate")
        .map(|(_, value)| value.as_str())
        .collect();
    assert_eq!(
        sent.len(),
        1,
        "one traceparent, no empty tracestate: {sent:?}"
    );
    assert!(
        sent[0].starts_with(&format!("00-{unsampled_trace}-")) && sent[0].ends_with("-00"),
        "{sent:?}"
    );
}

#[tokio::test]
async fn stream_resumes_are_spans_linked_to_the_request_that_made_the_hub() {
    let collector = Collector::start().await;
    let h = traced_harness(tracing_to(&collector.endpoint)).await;
    let (conversation, mut ws, mut seen) = h.exchanged().await;
    h.emulator.drop_all_streams();
    h.post_message(&conversation, "after the drop").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: after the drop".to_owned())
    })
    .await;

    let spans = collector
        .wait_for("an upstream resume span that ended ok", |spans| {
            spans.iter().any(|s| {
                s.span.name == "stream upstream_resume"
                    && s.attr("directline.result").as_deref() == Some("ok")
            })
        })
        .await;
    let stream_request = server_spans(&spans, "stream")[0];
    let resume = spans
        .iter()
        .find(|s| s.span.name == "stream upstream_resume")
        .unwrap();
    assert!(resume.span.parent_span_id.is_empty(), "a trace of its own");
    assert_ne!(resume.trace_id(), stream_request.trace_id());
    let link = &resume.span.links[0];
    assert_eq!(
        support::otlp::hex(&link.trace_id),
        stream_request.trace_id()
    );
    assert_eq!(
        support::otlp::hex(&link.span_id),
        stream_request.span_id(),
        "linked to the hub's first request"
    );
    assert!(resume.attr("directline.attempts").is_some_and(|a| a != "0"));
    assert!(resume.span.end_time_unix_nano > resume.span.start_time_unix_nano);
    let reconnect = children(&spans, resume);
    assert!(
        reconnect.iter().any(|s| s.span.kind == CLIENT
            && s.attr("directline.route").as_deref() == Some("stream_resume")),
        "the reconnect GET is under the resume span"
    );

    // A client resuming at its watermark from the hub's buffer.
    let watermark = seen.watermark.clone().unwrap();
    ws.close(None).await.unwrap();
    let resumed = h.reconnect(&conversation, Some(&watermark)).await;
    let _again = open_stream(resumed["streamUrl"].as_str().unwrap()).await;
    let spans = collector
        .wait_for("a client resume span", |spans| {
            spans.iter().any(|s| s.span.name == "stream client_resume")
        })
        .await;
    let client_resume = spans
        .iter()
        .find(|s| s.span.name == "stream client_resume")
        .unwrap();
    let second_stream = server_spans(&spans, "stream")
        .into_iter()
        .find(|s| s.span_id() != stream_request.span_id())
        .expect("the second stream request");
    assert_eq!(client_resume.parent_id(), second_stream.span_id());
    assert!(matches!(
        client_resume.attr("directline.result").as_deref(),
        Some("buffer" | "upstream" | "catch_up")
    ));
}

/// Runs every traced path (tokens, start, POST, GET, reconnect, stream, resume, refresh)
/// and scans every attribute of every span, resource, event and link, and every span name,
/// for the secret, any token and the conversation id.
#[tokio::test]
async fn no_secret_token_or_conversation_id_in_any_span() {
    let collector = Collector::start().await;
    let h = traced_harness(tracing_to(&collector.endpoint)).await;
    let (conversation, mut ws, mut seen) = h.exchanged().await;
    h.activities(&conversation.id, None, &conversation.token)
        .await;
    let refreshed = h.refresh(&conversation.token).await;
    assert_eq!(refreshed.status, StatusCode::OK, "{}", refreshed.text());
    let fresh_token = refreshed.json()["token"].as_str().unwrap().to_owned();
    h.emulator.drop_all_streams();
    h.post_message(&conversation, "after the drop").await;
    read_until(&mut ws, &mut seen, |s| {
        s.texts().contains(&"echo: after the drop".to_owned())
    })
    .await;
    ws.send(tokio_tungstenite::tungstenite::Message::Close(None))
        .await
        .ok();
    let resumed = h.reconnect(&conversation, seen.watermark.as_deref()).await;
    let stream_url = resumed["streamUrl"].as_str().unwrap().to_owned();
    let _again = open_stream(&stream_url).await;
    // A refused request (a forged token) is traced too.
    let forged = h
        .request(
            Method::GET,
            &format!(
                "/v3/directline/conversations/{}/activities",
                conversation.id
            ),
            Some("forged-token"),
            None,
        )
        .await;
    assert_eq!(forged.status, StatusCode::FORBIDDEN, "{}", forged.text());

    let spans = collector
        .wait_for("spans of every path", |spans| {
            [
                "tokens_generate",
                "conversations_start",
                "activities_post",
                "activities_get",
                "tokens_refresh",
                "conversations_reconnect",
                "stream",
            ]
            .iter()
            .all(|route| !server_spans(spans, route).is_empty())
                && spans
                    .iter()
                    .any(|s| s.span.name == "stream upstream_resume")
                && spans.iter().any(|s| s.span.name == "stream client_resume")
                && spans
                    .iter()
                    .any(|s| s.attr("http.response.status_code").as_deref() == Some("403"))
        })
        .await;
    // Everything secret: ours and Direct Line's (the credentials the emulator was sent).
    let mut needles = vec![
        SECRET.to_owned(),
        TOKEN_KEY.to_owned(),
        conversation.id.clone(),
        conversation.token.clone(),
        fresh_token,
        stream_url.split("t=").nth(1).unwrap().to_owned(),
    ];
    for request in h.emulator.requests() {
        for (name, value) in &request.headers {
            if name == "authorization" {
                needles.push(value.trim_start_matches("Bearer ").to_owned());
            }
        }
        if let Some(query) = &request.query
            && let Some(ticket) = query.split("t=").nth(1)
        {
            needles.push(ticket.split('&').next().unwrap().to_owned());
        }
    }
    needles.retain(|n| n.len() >= 8);
    assert!(needles.len() > 6, "{needles:?}");
    for received in &spans {
        let mut texts: Vec<String> = received
            .all_attributes
            .iter()
            .map(|kv| {
                format!(
                    "{}={}",
                    kv.key,
                    kv.value
                        .as_ref()
                        .map(support::otlp::text)
                        .unwrap_or_default()
                )
            })
            .collect();
        texts.push(received.span.name.clone());
        texts.extend(received.span.events.iter().map(|e| e.name.clone()));
        texts.push(received.span.trace_state.clone());
        for text in &texts {
            for needle in &needles {
                assert!(
                    !text.contains(needle.as_str()),
                    "span {:?} carries a secret, token or conversation id: {text}",
                    received.span.name
                );
            }
        }
    }
}

#[tokio::test]
async fn conversation_ids_are_on_spans_only_when_asked() {
    let collector = Collector::start().await;
    let h = traced_harness(TracingConfig {
        include_conversation_ids: true,
        ..tracing_to(&collector.endpoint)
    })
    .await;
    let conversation = h.conversation().await;
    h.post_message(&conversation, "hello").await;
    let spans = collector
        .wait_for("the POST's server span", |spans| {
            !server_spans(spans, "activities_post").is_empty()
        })
        .await;
    assert_eq!(
        server_spans(&spans, "activities_post")[0].attr("directline.conversation_id"),
        Some(conversation.id.clone())
    );
}

#[tokio::test]
async fn requests_are_unaffected_by_a_collector_that_is_down_and_lost_spans_are_counted() {
    // A port nothing listens on.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}", listener.local_addr().unwrap())
    };
    let h = traced_harness(TracingConfig {
        queue_size: 4,
        export_timeout: Duration::from_millis(500),
        ..tracing_to(&closed)
    })
    .await;
    let started = std::time::Instant::now();
    let conversation = h.conversation().await;
    for i in 0..10 {
        h.post_message(&conversation, &format!("message {i}")).await;
    }
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "requests waited on the collector"
    );
    eventually(
        "spans are counted as dropped for a full queue and for failed exports",
        async || {
            let metrics = h.metrics().await;
            metric(
                &metrics,
                "directline_gateway_trace_spans_dropped_total{reason=\"queue_full\"}",
            ) > 0.0
                && metric(
                    &metrics,
                    "directline_gateway_trace_spans_dropped_total{reason=\"export_failed\"}",
                ) > 0.0
        },
    )
    .await;
    let metrics = h.metrics().await;
    assert_eq!(
        metric(&metrics, "directline_gateway_trace_spans_exported_total"),
        0.0
    );
    // The requests themselves were all answered (and counted as such).
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_http_requests_total{bot=\"default\",method=\"POST\",route=\"activities_post\",status=\"2xx\"}"
        ),
        10.0
    );
}

#[tokio::test]
async fn sampling_is_parent_based_with_the_ratio_for_new_traces() {
    let collector = Collector::start().await;
    let h = traced_harness(TracingConfig {
        sampling_ratio: 0.0,
        ..tracing_to(&collector.endpoint)
    })
    .await;
    let conversation = h.conversation().await;
    // No parent, ratio 0: not recorded. A caller that did not sample: not recorded either.
    h.post_message(&conversation, "unsampled").await;
    let unsampled = format!("00-{}-{CALLER_SPAN}-00", "1".repeat(32));
    post_with(
        &h,
        &conversation,
        "caller did not sample",
        &[("traceparent", &unsampled)],
    )
    .await;
    // A caller that sampled: recorded, whatever the ratio.
    let sampled = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    post_with(
        &h,
        &conversation,
        "caller sampled",
        &[("traceparent", &sampled)],
    )
    .await;
    let spans = collector
        .wait_for("the sampled caller's spans", |spans| {
            spans
                .iter()
                .filter(|s| s.trace_id() == CALLER_TRACE)
                .count()
                == 2
        })
        .await;
    // Spans are exported in the order they ended, so anything of the earlier requests
    // would have arrived with or before these.
    assert!(
        spans.iter().all(|s| s.trace_id() == CALLER_TRACE),
        "unsampled requests were recorded: {:?}",
        spans
            .iter()
            .map(|s| (&s.span.name, s.trace_id()))
            .collect::<Vec<_>>()
    );
}

/// The binary with `[tracing]` in its file: log lines carry the trace id, the span reaches
/// the collector under the configured service name, and a bad value is refused at start.
#[tokio::test]
async fn the_binary_traces_from_its_config_file_and_logs_trace_ids() {
    let collector = Collector::start().await;
    let dir = process::TempDir::new("tracing");
    let config = dir.write(
        "gateway.toml",
        &format!(
            "upstream = \"embedded\"\n\n[tracing]\nendpoint = \"{}\"\nservice_name = \"from-the-file\"\nexport_interval = \"50ms\"\ntrust_incoming_context = true\n",
            collector.endpoint
        ),
    );
    let gateway = process::GatewayProcess::with_config(&config);
    let http = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<http_body_util::Full<bytes::Bytes>>();
    let traceparent = format!("00-{CALLER_TRACE}-{CALLER_SPAN}-01");
    let request = Request::post(format!("{}/v3/directline/tokens/generate", gateway.base))
        .header("traceparent", &traceparent)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, http.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let spans = collector
        .wait_for("the binary's server span", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id() == CALLER_TRACE && s.span.kind == SERVER)
        })
        .await;
    assert!(spans.iter().all(|s| s.service == "from-the-file"));
    eventually("the access line carries the trace id", async || {
        gateway.logs().iter().any(|line| {
            line.contains("tokens_generate") && line.contains(&format!("trace_id={CALLER_TRACE}"))
        })
    })
    .await;

    drop(gateway);

    // The JSON log format carries the same field.
    let json = process::GatewayProcess::start(
        &[
            "--config",
            &config,
            "--listen",
            "127.0.0.1:0",
            "--admin-listen",
            "127.0.0.1:0",
            "--log-format",
            "json",
        ],
        &[],
    );
    let request = Request::post(format!("{}/v3/directline/tokens/generate", json.base))
        .header("traceparent", &traceparent)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = tokio::time::timeout(WAIT, http.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    eventually("the JSON access line carries the trace id", async || {
        json.logs().iter().any(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .is_ok_and(|v| v["target"] == "access" && v["trace_id"] == CALLER_TRACE)
        })
    })
    .await;

    let bad = dir.write(
        "bad.toml",
        "upstream = \"embedded\"\n\n[tracing]\nendpoint = \"http://c:4318\"\nsampling_ratio = 2.0\n",
    );
    let output = std::process::Command::new(process::BIN)
        .args(["--config", &bad])
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("bad.toml:5:1: tracing.sampling_ratio"),
        "{stderr}"
    );
}

/// A client socket with a tiny receive buffer that never reads: the gateway's writes to it
/// block once the kernel buffers are full.
async fn open_unread_stream(url: &str) -> Ws {
    let uri: http::Uri = url.parse().unwrap();
    let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let stream = socket.connect(addr.parse().unwrap()).await.unwrap();
    let (ws, _) =
        tokio_tungstenite::client_async(url, tokio_tungstenite::MaybeTlsStream::Plain(stream))
            .await
            .unwrap();
    ws
}

#[tokio::test]
async fn a_slow_client_close_is_a_span_linked_to_the_hubs_request() {
    let collector = Collector::start().await;
    let h = Harness::builder()
        .config({
            let tracing = tracing_to(&collector.endpoint);
            move |c| {
                c.tracing = Some(tracing);
                c.stream.liveness_timeout = Duration::from_secs(120);
                c.stream.keepalive_interval = Duration::from_secs(60);
                c.stream.client_lag_frames = 4;
            }
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let _stalled = open_unread_stream(&conversation.stream_url).await;
    let text = "y".repeat(60 * 1024);
    let mut posted = 0;
    eventually("the stalled client was closed as slow", async || {
        posted += 1;
        h.post_message(&conversation, &format!("{posted}{text}"))
            .await;
        metric(
            &h.metrics().await,
            "directline_gateway_slow_clients_closed_total",
        ) >= 1.0
    })
    .await;
    let spans = collector
        .wait_for("the slow-client span", |spans| {
            spans
                .iter()
                .any(|s| s.span.name == "stream slow_client_closed")
        })
        .await;
    let slow = spans
        .iter()
        .find(|s| s.span.name == "stream slow_client_closed")
        .unwrap();
    let stream_request = server_spans(&spans, "stream")[0];
    assert_eq!(
        support::otlp::hex(&slow.span.links[0].span_id),
        stream_request.span_id()
    );
    assert_eq!(
        slow.attr("directline.client_lag_frames").as_deref(),
        Some("4")
    );
    assert_eq!(slow.attr("directline.bot").as_deref(), Some("default"));
}
