//! REST path end to end: real gateway + real emulator on loopback.

mod support;

use bytes::Bytes;
use directline_emulator::{Faults, SeenCredential};
use directline_gateway::clock;
use directline_gateway::config::Config;
use directline_gateway::seal::{ClientToken, Purpose, Sealer};
use directline_gateway::secret::Secret;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use serde_json::json;
use support::*;

#[tokio::test]
async fn token_start_post_get_reconnect_refresh() {
    let h = Harness::start().await;
    let (token, id) = h.generate().await;
    assert!(token.starts_with("dlgw1."));

    let reply = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            Some(&token),
            Some(json!({"user": {"id": "spoofed"}, "locale": "en-US"})),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED);
    let start = reply.json();
    assert_eq!(start["conversationId"], id.as_str());
    assert_eq!(start["expires_in"].as_u64().map(|s| s > 3500), Some(true));
    let stream_url = start["streamUrl"].as_str().unwrap();
    assert!(
        stream_url.starts_with(&format!(
            "ws://{}/v3/directline/conversations/{id}/stream?watermark=-&t=dlgw1.",
            h.gateway().client_addr
        )),
        "{stream_url}"
    );
    let conversation = Conversation {
        id: id.clone(),
        token: start["token"].as_str().unwrap().to_owned(),
        stream_url: stream_url.to_owned(),
    };

    // Starting again with the same token: Direct Line answers 200 for an existing conversation.
    let again = h
        .request(
            Method::POST,
            "/v3/directline/conversations",
            Some(&token),
            None,
        )
        .await;
    assert_eq!(again.status, StatusCode::OK, "{}", again.text());

    let activity_id = h.post_message(&conversation, "hello").await;
    assert!(activity_id.starts_with(&format!("{id}|")), "{activity_id}");

    let reply = h
        .request(
            Method::GET,
            &format!("/v3/directline/conversations/{id}/activities"),
            Some(&conversation.token),
            None,
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let set = reply.json();
    let texts: Vec<&str> = set["activities"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|a| a["text"].as_str())
        .collect();
    assert_eq!(texts, ["hello", "echo: hello"]);
    let watermark = set["watermark"].as_str().unwrap().to_owned();
    // from.id is the user bound into the token, not what the client claimed.
    let user = &set["activities"][0]["from"]["id"];
    assert!(user.as_str().unwrap().starts_with("dl_"), "{user}");

    let resumed = h.reconnect(&conversation, Some(&watermark)).await;
    let resumed_url = resumed["streamUrl"].as_str().unwrap();
    assert!(
        resumed_url.contains(&format!(
            "/conversations/{id}/stream?watermark={watermark}&t=dlgw1."
        )),
        "{resumed_url}"
    );
    assert!(resumed["token"].as_str().unwrap().starts_with("dlgw1."));

    let refresh = h.refresh(&conversation.token).await;
    assert_eq!(refresh.status, StatusCode::OK, "{}", refresh.text());
    let refreshed = refresh.json();
    assert_eq!(refreshed["conversationId"], id.as_str());
    let refreshed_conversation = Conversation {
        token: refreshed["token"].as_str().unwrap().to_owned(),
        ..conversation
    };
    h.post_message(&refreshed_conversation, "after refresh")
        .await;

    // What the emulator saw: the secret on generate/reconnect/activities, the upstream
    // conversation token on start, and never a gateway token.
    let seen = h.emulator.requests();
    let credential_of = |method: &str, suffix: &str| -> Vec<SeenCredential> {
        seen.iter()
            .filter(|r| r.method == method && r.path.ends_with(suffix))
            .map(|r| r.credential.clone())
            .collect()
    };
    assert_eq!(
        credential_of("POST", "/tokens/generate"),
        [SeenCredential::Secret]
    );
    assert!(credential_of("POST", "/v3/directline/conversations").iter().all(|c| matches!(c, SeenCredential::ConversationToken { conversation_id } if *conversation_id == id)));
    assert!(
        credential_of("POST", "/activities")
            .iter()
            .all(|c| *c == SeenCredential::Secret)
    );
    assert!(
        credential_of("GET", &format!("/conversations/{id}"))
            .iter()
            .all(|c| *c == SeenCredential::Secret)
    );
    assert!(
        seen.iter()
            .all(|r| r.credential != SeenCredential::Invalid
                && r.credential != SeenCredential::Missing),
        "{seen:?}"
    );
    let upstream_host = h
        .emulator
        .base_url()
        .trim_start_matches("http://")
        .to_owned();
    assert!(
        seen.iter()
            .all(|r| r.host.as_deref() == Some(upstream_host.as_str())),
        "upstream Host must be the upstream's own"
    );
    let posted = seen
        .iter()
        .find(|r| r.method == "POST" && r.path.ends_with("/activities"))
        .unwrap();
    assert_eq!(posted.body.as_ref().unwrap()["from"]["id"], *user);
    let generate_body = seen
        .iter()
        .find(|r| r.path.ends_with("/tokens/generate"))
        .unwrap()
        .body
        .clone()
        .unwrap();
    assert_eq!(generate_body["user"]["id"], *user);
}

#[tokio::test]
async fn refusals_never_reach_upstream() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let other = h.conversation().await;
    let forged = |expires_at: u64| ClientToken {
        bot: "default".into(),
        conversation_id: conversation.id.clone(),
        user_id: "dl_x".into(),
        upstream_token: "x".into(),
        expires_at,
        name: None,
    };
    // Past the default resume_window too, so even tokens/refresh refuses it
    // (tests/resume.rs covers refreshes inside the window).
    let expired = support::sealed_token(TOKEN_KEY, &forged(clock::unix_seconds() - 25 * 3600));
    let foreign_key = support::sealed_token(
        "another-key-that-this-gateway-never-had-0000",
        &forged(clock::unix_seconds() + 600),
    );
    let mut truncated = conversation.token.clone();
    truncated.truncate(truncated.len() - 5);
    let before = h.emulator.requests().len();
    let cases: Vec<(Option<&str>, u16, &str)> = vec![
        (None, 401, "BadArgument"),
        (Some("not-a-token"), 403, "BadArgument"),
        (Some(SECRET), 403, "BadArgument"),
        (Some(&truncated), 403, "BadArgument"),
        (Some(&foreign_key), 403, "BadArgument"),
        (Some(&expired), 403, "TokenExpired"),
        (Some(&other.token), 403, "BadArgument"),
    ];
    let id = &conversation.id;
    let routes = [
        (
            Method::GET,
            format!("/v3/directline/conversations/{id}?watermark=1"),
        ),
        (
            Method::GET,
            format!("/v3/directline/conversations/{id}/activities"),
        ),
        (
            Method::POST,
            format!("/v3/directline/conversations/{id}/activities"),
        ),
        (
            Method::POST,
            format!("/v3/directline/conversations/{id}/upload?userId=x"),
        ),
    ];
    for (token, status, code) in &cases {
        for (method, path) in &routes {
            let reply = h
                .request(
                    method.clone(),
                    path,
                    *token,
                    Some(json!({"type": "message", "text": "x"})),
                )
                .await;
            assert_eq!(
                reply.status.as_u16(),
                *status,
                "{method} {path} with {token:?}: {}",
                reply.text()
            );
            assert_eq!(reply.error_code(), *code);
            assert!(!reply.text().contains(SECRET));
        }
    }
    // Token-only routes refuse the same way.
    // The last case is a valid token for another conversation, which these routes accept.
    for (token, status, _) in cases.iter().take(cases.len() - 1) {
        let reply = h
            .request(Method::POST, "/v3/directline/tokens/refresh", *token, None)
            .await;
        assert_eq!(reply.status.as_u16(), *status, "refresh with {token:?}");
        let reply = h
            .request(Method::POST, "/v3/directline/conversations", *token, None)
            .await;
        assert_eq!(reply.status.as_u16(), *status, "start with {token:?}");
    }
    assert_eq!(
        h.emulator.requests().len(),
        before,
        "a refused request reached upstream"
    );
    let metrics = h.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_auth_refusals_total{bot=\"default\",reason=\"wrong_conversation\"}"
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn enhanced_authentication_falls_back_to_the_conversation_token() {
    let h = Harness::builder()
        .faults(Faults {
            enhanced_auth: true,
            ..Faults::default()
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    h.post_message(&conversation, "one").await;
    let resumed = h.reconnect(&conversation, Some("0")).await;
    assert!(
        resumed["streamUrl"]
            .as_str()
            .unwrap()
            .contains("watermark=0&t=dlgw1.")
    );
    let reconnects: Vec<SeenCredential> = h
        .emulator
        .requests()
        .into_iter()
        .filter(|r| r.method == "GET" && r.path.ends_with(&conversation.id))
        .map(|r| r.credential)
        .collect();
    assert_eq!(reconnects[0], SeenCredential::Secret, "secret first");
    assert!(
        matches!(&reconnects[1], SeenCredential::ConversationToken { conversation_id } if *conversation_id == conversation.id)
    );
}

#[tokio::test]
async fn upstream_unreachable_is_502_and_cors_preflight_works() {
    // An address nothing listens on: bind, note the port, drop the listener.
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let config = config_with_upstream(&format!("http://127.0.0.1:{port}"));
    let running = start_gateway(config).await;
    let h_base = format!("http://{}", running.client_addr);
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::post(format!("{h_base}/v3/directline/tokens/generate"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::BAD_GATEWAY);

    let preflight = Request::builder()
        .method(Method::OPTIONS)
        .uri(format!("{h_base}/v3/directline/conversations"))
        .header("origin", "https://app.example")
        .header("access-control-request-method", "POST")
        .header(
            "access-control-request-headers",
            "authorization, content-type, x-ms-bot-agent",
        )
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(preflight).await.unwrap();
    assert_eq!(response.status(), StatusCode::NO_CONTENT);
    let h = response.headers();
    assert_eq!(h["access-control-allow-origin"], "https://app.example");
    let allowed = h["access-control-allow-headers"].to_str().unwrap();
    for name in ["authorization", "content-type", "x-ms-bot-agent"] {
        assert!(allowed.contains(name), "{allowed}");
    }
    assert!(
        h["access-control-expose-headers"]
            .to_str()
            .unwrap()
            .contains("Retry-After")
    );
    running.shutdown().await;
}

#[tokio::test]
async fn upstream_errors_and_retry_after_pass_through() {
    let h = Harness::builder()
        .faults(Faults {
            fail_reconnects: 1,
            ..Faults::default()
        })
        .start()
        .await;
    let conversation = h.conversation().await;
    let path = format!(
        "/v3/directline/conversations/{}?watermark=0",
        conversation.id
    );
    let reply = h
        .request(Method::GET, &path, Some(&conversation.token), None)
        .await;
    assert_eq!(reply.status, StatusCode::BAD_GATEWAY, "{}", reply.text());
    let _ = reply.error_code();
    let ok = h
        .request(Method::GET, &path, Some(&conversation.token), None)
        .await;
    assert_eq!(ok.status, StatusCode::OK);
}

#[tokio::test]
async fn admin_endpoints() {
    let h = Harness::start().await;
    assert_eq!(h.admin_get("/healthz").await.status, StatusCode::OK);
    assert_eq!(h.admin_get("/readyz").await.status, StatusCode::OK);
    let conversation = h.conversation().await;
    h.post_message(&conversation, "count me").await;
    let metrics = h.metrics().await;
    for name in [
        "directline_gateway_http_requests_total{bot=\"default\",method=\"POST\",route=\"activities_post\",status=\"2xx\"} 1",
        "directline_gateway_upstream_requests_total{bot=\"default\",route=\"tokens_generate\",status=\"2xx\"} 1",
        "directline_gateway_http_request_duration_seconds_bucket",
        "directline_gateway_tokens_total{bot=\"default\",kind=\"generated\"} 1",
        "directline_gateway_build_info",
    ] {
        assert!(metrics.contains(name), "missing {name} in\n{metrics}");
    }
    // No conversation id, user id or token ever becomes a label.
    assert!(!metrics.contains(&conversation.id));
    assert!(!metrics.contains("dl_"));
    assert!(!metrics.contains("dlgw1."));
}

#[tokio::test]
async fn upload_is_streamed_with_the_bound_user() {
    let h = Harness::builder()
        .config(|c| c.limits.upload_body_bytes = 64 * 1024)
        .start()
        .await;
    let conversation = h.conversation().await;
    let boundary = "XyZ";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"activity\"\r\nContent-Type: application/vnd.microsoft.activity\r\n\r\n{{\"type\":\"message\",\"text\":\"see file\"}}\r\n--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello file\r\n--{boundary}--\r\n"
    );
    let path = format!(
        "/v3/directline/conversations/{}/upload?userId=someone-else",
        conversation.id
    );
    let request = Request::post(h.url(&path))
        .header("authorization", format!("Bearer {}", conversation.token))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(Full::new(Bytes::from(body)))
        .unwrap();
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let upload = h
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/upload"))
        .unwrap();
    assert_eq!(upload.credential, SeenCredential::Secret);
    let query = upload.query.unwrap();
    assert!(
        query.starts_with("userId=dl_") && !query.contains("someone-else"),
        "{query}"
    );
    let stored = upload.body.unwrap();
    assert_eq!(stored["text"], "see file");
    assert_eq!(stored["attachments"][0]["name"], "a.txt");

    let too_big = Request::post(h.url(&path))
        .header("authorization", format!("Bearer {}", conversation.token))
        .header("content-type", "application/octet-stream")
        .body(Full::new(Bytes::from(vec![0u8; 100 * 1024])))
        .unwrap();
    let reply = h.send(too_big).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(reply.error_code(), "MessageSizeTooBig");
}

#[tokio::test]
async fn session_id_passes_cookies_through_for_the_gateway_host() {
    let h = Harness::start().await;
    let conversation = h.conversation().await;
    let request = Request::get(h.url("/v3/directline/session/getsessionid"))
        .header("authorization", format!("Bearer {}", conversation.token))
        .header("cookie", "earlier=1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = h.send(request).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    assert!(reply.json()["sessionId"].is_string());
    let cookie = reply.headers["set-cookie"].to_str().unwrap();
    assert!(
        cookie.starts_with("dl_session=") && !cookie.to_ascii_lowercase().contains("domain="),
        "{cookie}"
    );
    let seen = h
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("getsessionid"))
        .unwrap();
    assert!(matches!(
        seen.credential,
        SeenCredential::ConversationToken { .. }
    ));
}

#[tokio::test]
async fn silent_upstream_times_out_with_504() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            held.push(stream);
        }
    });
    let mut config = config_with_upstream(&format!("http://{addr}"));
    config.timeouts.default = std::time::Duration::from_millis(300);
    let running = start_gateway(config).await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let response = client
        .request(
            Request::post(format!(
                "http://{}/v3/directline/tokens/generate",
                running.client_addr
            ))
            .body(Full::new(Bytes::new()))
            .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::GATEWAY_TIMEOUT);
    running.shutdown().await;
}

#[tokio::test]
async fn slow_headers_are_cut_off() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let h = Harness::builder()
        .config(|c| c.limits.header_read_timeout = std::time::Duration::from_millis(300))
        .start()
        .await;
    let mut stream = tokio::net::TcpStream::connect(h.gateway().client_addr)
        .await
        .unwrap();
    stream
        .write_all(b"POST /v3/directline/tokens/generate HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    let read = tokio::time::timeout(WAIT, stream.read_to_end(&mut buf)).await;
    assert!(
        read.is_ok(),
        "the gateway kept a connection with unfinished headers open"
    );
    assert!(h.emulator.requests().is_empty(), "nothing reached upstream");
}

/// Forwards to `upstream` and gzips every response body, as Direct Line may (PROTOCOL §0.10).
async fn gzip_proxy(upstream: String) -> std::net::SocketAddr {
    use http_body_util::BodyExt;
    use std::io::Write;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let client = client.clone();
            let upstream = upstream.clone();
            let service =
                hyper::service::service_fn(move |request: Request<hyper::body::Incoming>| {
                    let client = client.clone();
                    let upstream = upstream.clone();
                    async move {
                        let (mut parts, body) = request.into_parts();
                        let body = body.collect().await.unwrap().to_bytes();
                        parts.uri = format!("{upstream}{}", parts.uri.path_and_query().unwrap())
                            .parse()
                            .unwrap();
                        let response = client
                            .request(Request::from_parts(parts, Full::new(body)))
                            .await
                            .unwrap();
                        let (mut parts, body) = response.into_parts();
                        let plain = body.collect().await.unwrap().to_bytes();
                        let mut encoder = flate2::write::GzEncoder::new(
                            Vec::new(),
                            flate2::Compression::default(),
                        );
                        encoder.write_all(&plain).unwrap();
                        parts
                            .headers
                            .insert("content-encoding", "gzip".parse().unwrap());
                        parts.headers.remove("content-length");
                        Ok::<_, std::convert::Infallible>(http::Response::from_parts(
                            parts,
                            Full::new(Bytes::from(encoder.finish().unwrap())),
                        ))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    addr
}

#[tokio::test]
async fn gzip_upstream_answers_are_rewritten_and_passed_through() {
    use std::io::Read;
    let plain = Harness::start().await;
    let proxy = gzip_proxy(plain.emulator.base_url()).await;
    let config = config_with_upstream(&format!("http://{proxy}"));
    let running = start_gateway(config).await;
    let h = Harness {
        base: format!("http://{}", running.client_addr),
        gateway: Some(running),
        ..plain
    };
    let conversation = h.conversation().await;
    assert!(
        conversation
            .stream_url
            .starts_with(&h.base.replace("http://", "ws://")),
        "{}",
        conversation.stream_url
    );
    assert!(conversation.token.starts_with("dlgw1."));
    h.post_message(&conversation, "zipped").await;
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    // A caller that did not ask for gzip gets plain JSON.
    let reply = h
        .request(Method::GET, &path, Some(&conversation.token), None)
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert!(reply.headers.get("content-encoding").is_none());
    assert!(reply.text().contains("echo: zipped"), "{}", reply.text());
    // A caller that accepts gzip gets the upstream encoding untouched.
    let request = Request::get(h.url(&path))
        .header("authorization", format!("Bearer {}", conversation.token))
        .header("accept-encoding", "gzip, deflate")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let reply = h.send(request).await;
    assert_eq!(reply.headers["content-encoding"], "gzip");
    let mut text = String::new();
    flate2::read::GzDecoder::new(&reply.bytes[..])
        .read_to_string(&mut text)
        .unwrap();
    assert!(text.contains("echo: zipped"), "{text}");
    // q=0 means "not acceptable" (RFC 9110 §12.5.3): decoded, as for a caller without gzip.
    for refusal in ["gzip;q=0", "*;q=0", "*, gzip;q=0"] {
        let request = Request::get(h.url(&path))
            .header("authorization", format!("Bearer {}", conversation.token))
            .header("accept-encoding", refusal)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let reply = h.send(request).await;
        assert!(reply.headers.get("content-encoding").is_none(), "{refusal}");
        assert!(reply.text().contains("echo: zipped"), "{refusal}");
    }
    let resumed = h.reconnect(&conversation, Some("0")).await;
    assert!(
        resumed["streamUrl"]
            .as_str()
            .unwrap()
            .contains("/stream?watermark=0&t=dlgw1.")
    );
}

#[tokio::test]
async fn refresh_renews_the_upstream_token_when_it_nears_its_end() {
    // Every upstream token (3600 s) is "near its end" with a 3700 s threshold.
    let h = Harness::builder()
        .config(|c| c.upstream_refresh_before = std::time::Duration::from_secs(3700))
        .start()
        .await;
    let conversation = h.conversation().await;
    let reply = h.refresh(&conversation.token).await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.text());
    let refreshed = reply.json()["token"].as_str().unwrap().to_owned();
    let sealer = Sealer::new(TOKEN_KEY, &[]).unwrap();
    let before: ClientToken = sealer
        .open(Purpose::ClientToken, &conversation.token)
        .unwrap();
    let after: ClientToken = sealer.open(Purpose::ClientToken, &refreshed).unwrap();
    assert_ne!(
        before.upstream_token, after.upstream_token,
        "the upstream token was renewed"
    );
    assert_eq!(before.user_id, after.user_id);
    let upstream_refresh = h
        .emulator
        .requests()
        .into_iter()
        .find(|r| r.path.ends_with("/tokens/refresh"))
        .unwrap();
    assert!(matches!(
        upstream_refresh.credential,
        SeenCredential::ConversationToken { .. }
    ));
    h.post_message(
        &Conversation {
            token: refreshed,
            ..conversation
        },
        "still works",
    )
    .await;
}

#[tokio::test]
async fn disallowed_origins_get_no_cors() {
    let h = Harness::builder()
        .config(|c| c.bot_mut().allowed_origins = vec!["https://chat.contoso.com".into()])
        .start()
        .await;
    let preflight = |origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(h.url("/v3/directline/tokens/generate"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let allowed = h.send(preflight("https://chat.contoso.com")).await;
    assert_eq!(allowed.status, StatusCode::NO_CONTENT);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://chat.contoso.com"
    );
    let refused = h.send(preflight("https://evil.example")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert!(refused.headers.get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn the_demo_page_is_served_only_in_front_of_the_embedded_emulator() {
    let embedded = support::start_gateway(Config {
        token_key: Some(Secret::new(support::TOKEN_KEY)),
        ..Config::default()
    })
    .await;
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build_http::<Full<Bytes>>();
    let request = Request::get(format!("http://{}/", embedded.client_addr))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = client.request(request).await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    let headers = response.headers().clone();
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(
        headers["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    let page = response.into_body().collect().await.unwrap().to_bytes();
    let page = std::str::from_utf8(&page).unwrap();
    assert!(page.contains("/tokens/generate") && page.contains("new WebSocket"));
    embedded.shutdown().await;

    // In front of any other upstream the domain root belongs to the organisation: 404.
    let h = Harness::start().await;
    let reply = h.request(Method::GET, "/", None, None).await;
    assert_eq!(reply.status, StatusCode::NOT_FOUND);
    assert_eq!(reply.json()["error"]["code"], "NotFound");
}

/// `demo_page = true`: the same page for a real upstream, so an organisation can chat with
/// its own bot through the gateway on day one; it names the bot, not an echo bot.
#[tokio::test]
async fn demo_page_true_serves_the_page_in_front_of_a_real_upstream() {
    let h = Harness::builder()
        .config(|c| c.bot_mut().demo_page = true)
        .start()
        .await;
    let reply = h.request(Method::GET, "/", None, None).await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.headers["content-type"], "text/html; charset=utf-8");
    let page = reply.text();
    assert!(page.contains("/tokens/generate") && page.contains("new WebSocket"));
    assert!(!page.contains("echo bot") && !page.contains("{{"), "{page}");
    // The page's own calls work through the gateway.
    h.conversation().await;
}

/// Direct Line clients authenticate with bearer tokens, not cookies: by default no CORS
/// answer allows credentials, for an allowed origin or any (empty `allowed_origins`), and a
/// foreign origin's preflight gets no CORS headers at all when origins are listed.
#[tokio::test]
async fn cors_answers_allow_no_credentials_unless_configured() {
    let preflight = |h: &Harness, origin: &'static str| {
        Request::builder()
            .method(Method::OPTIONS)
            .uri(h.url("/v3/directline/tokens/generate"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .header("access-control-request-headers", "authorization")
            .body(Full::new(Bytes::new()))
            .unwrap()
    };
    let any = Harness::start().await;
    let reply = any.send(preflight(&any, "https://foreign.example")).await;
    assert_eq!(reply.status, StatusCode::NO_CONTENT);
    assert_eq!(
        reply.headers["access-control-allow-origin"],
        "https://foreign.example"
    );
    assert!(
        reply
            .headers
            .get("access-control-allow-credentials")
            .is_none()
    );
    let generated = any
        .send(
            Request::post(any.url("/v3/directline/tokens/generate"))
                .header("origin", "https://foreign.example")
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await;
    assert_eq!(generated.status, StatusCode::OK);
    assert!(
        generated
            .headers
            .get("access-control-allow-credentials")
            .is_none()
    );

    let with_credentials = Harness::builder()
        .config(|c| {
            let bot = c.bot_mut();
            bot.allowed_origins = vec!["https://chat.contoso.com".into()];
            bot.allow_credentials = true;
        })
        .start()
        .await;
    let h = &with_credentials;
    let allowed = h.send(preflight(h, "https://chat.contoso.com")).await;
    assert_eq!(allowed.status, StatusCode::NO_CONTENT);
    assert_eq!(allowed.headers["access-control-allow-credentials"], "true");
    let foreign = h.send(preflight(h, "https://foreign.example")).await;
    assert_eq!(foreign.status, StatusCode::FORBIDDEN);
    assert!(foreign.headers.get("access-control-allow-origin").is_none());
    assert!(
        foreign
            .headers
            .get("access-control-allow-credentials")
            .is_none()
    );
    assert_eq!(foreign.json()["error"]["code"], "BadArgument");
}

#[tokio::test]
async fn cleartext_http2_is_served_alongside_http1() {
    let h = Harness::start().await;
    let h2c = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let request = Request::post(h.url("/v3/directline/tokens/generate"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    let response = h2c.request(request).await.expect("h2c accepted");
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.version(), http::Version::HTTP_2);
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let token: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert!(token["token"].as_str().unwrap().starts_with("dlgw1."));
}
