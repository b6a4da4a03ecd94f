//! A hostile upstream through a real gateway: echoed credentials and hosts never reach a
//! client, foreign stream URLs are never dialled, upstream lifetimes are clamped.

mod support;

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use directline_gateway::config::Config;
use directline_gateway::server::Running;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde_json::{Value, json};
use support::hostile::{FailBody, Failure, Hostile, Knobs, Route, counting_listener};
use support::*;

/// A gateway in-process in front of a hostile upstream.
struct Gateway {
    hostile: Hostile,
    running: Running,
    http: Client<HttpConnector, Full<Bytes>>,
}

impl Gateway {
    async fn start(knobs: Knobs, edit: impl FnOnce(&mut Config)) -> Gateway {
        let hostile = Hostile::start(knobs).await;
        let mut config = config_with_upstream(&hostile.base);
        // Every refresh goes upstream, so the refresh route meets the hostile answers too.
        config.upstream_refresh_before = Duration::from_secs(7200);
        config.bot_mut().rate_limits.activities.per_minute = 0;
        config.bot_mut().rate_limits.sessions.per_minute = 0;
        edit(&mut config);
        let running = start_gateway(config).await;
        Gateway {
            hostile,
            running,
            http: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    async fn send(&self, request: Request<Full<Bytes>>) -> Reply {
        let response = tokio::time::timeout(WAIT, self.http.request(request))
            .await
            .expect("gateway answered in time")
            .expect("gateway reachable");
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            bytes,
        }
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let url = format!("http://{}{path}", self.running.client_addr);
        self.send(api_request(
            Request::builder().method(method).uri(url),
            token,
            body,
        ))
        .await
    }

    async fn upload(&self, conversation: &str, token: &str) -> Reply {
        let boundary = "XyZ";
        let body = format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.txt\"\r\nContent-Type: text/plain\r\n\r\nhello\r\n--{boundary}--\r\n"
        );
        let url = format!(
            "http://{}/v3/directline/conversations/{conversation}/upload",
            self.running.client_addr
        );
        let request = Request::post(url)
            .header("authorization", format!("Bearer {token}"))
            .header(
                "content-type",
                format!("multipart/form-data; boundary={boundary}"),
            )
            .body(Full::new(Bytes::from(body)))
            .unwrap();
        self.send(request).await
    }

    async fn metrics(&self) -> String {
        let url = format!("http://{}/metrics", self.running.admin_addr);
        let request = Request::get(url).body(Full::new(Bytes::new())).unwrap();
        self.send(request).await.text()
    }

    /// generate + start → (conversation id, gateway token, gateway stream URL).
    async fn conversation(&self) -> (String, String, String) {
        let generated = self
            .call(Method::POST, "/v3/directline/tokens/generate", None, None)
            .await;
        assert_eq!(generated.status, StatusCode::OK, "{}", generated.text());
        let token = generated.json()["token"].as_str().unwrap().to_owned();
        let started = self
            .call(
                Method::POST,
                "/v3/directline/conversations",
                Some(&token),
                None,
            )
            .await;
        assert_eq!(started.status, StatusCode::CREATED, "{}", started.text());
        let json = started.json();
        (
            json["conversationId"].as_str().unwrap().to_owned(),
            json["token"].as_str().unwrap().to_owned(),
            json["streamUrl"].as_str().unwrap().to_owned(),
        )
    }

    /// Calls `route` as a client would, for `conversation` with `token`.
    async fn call_route(&self, route: Route, conversation: &str, token: &str) -> Reply {
        let conv = format!("/v3/directline/conversations/{conversation}");
        match route {
            Route::Generate => {
                self.call(Method::POST, "/v3/directline/tokens/generate", None, None)
                    .await
            }
            Route::Refresh => {
                self.call(
                    Method::POST,
                    "/v3/directline/tokens/refresh",
                    Some(token),
                    None,
                )
                .await
            }
            Route::Start => {
                self.call(
                    Method::POST,
                    "/v3/directline/conversations",
                    Some(token),
                    None,
                )
                .await
            }
            Route::Reconnect => {
                self.call(
                    Method::GET,
                    &format!("{conv}?watermark=1"),
                    Some(token),
                    None,
                )
                .await
            }
            Route::GetActivities => {
                self.call(
                    Method::GET,
                    &format!("{conv}/activities"),
                    Some(token),
                    None,
                )
                .await
            }
            Route::PostActivity => {
                let body = json!({"type": "message", "text": "hi"});
                self.call(
                    Method::POST,
                    &format!("{conv}/activities"),
                    Some(token),
                    Some(body),
                )
                .await
            }
            Route::Upload => self.upload(conversation, token).await,
            Route::Stream | Route::Other => unreachable!(),
        }
    }

    /// Nothing the gateway sent upstream in confidence is in `reply`'s body or headers.
    fn assert_clean(&self, reply: &Reply, what: &str) {
        let mut all = reply.text();
        for (name, value) in &reply.headers {
            all.push_str(&format!("\n{name}: {}", value.to_str().unwrap_or("")));
        }
        assert!(
            !all.contains(SECRET),
            "{what}: the secret reached the client: {all}"
        );
        // Every upstream token the hostile server mints starts so.
        assert!(
            !all.contains("hostile-token-"),
            "{what}: an upstream token reached the client: {all}"
        );
        assert!(
            !all.contains(&self.hostile.authority()),
            "{what}: the upstream host reached the client: {all}"
        );
    }
}

const ROUTES: [Route; 7] = [
    Route::Generate,
    Route::Refresh,
    Route::Start,
    Route::Reconnect,
    Route::GetActivities,
    Route::PostActivity,
    Route::Upload,
];

/// Every REST route, with JSON, HTML and Direct Line-shaped error bodies that echo the
/// request's `Authorization` and `Host`, as client and as server errors: the client gets a
/// Direct Line error body with neither the secret, nor an upstream token, nor the host.
#[tokio::test]
async fn echoed_credentials_and_hosts_never_reach_the_client() {
    let gw = Gateway::start(Knobs::default(), |_| {}).await;
    let (conversation, token, _) = gw.conversation().await;
    for route in ROUTES {
        for body in [FailBody::EchoJson, FailBody::EchoHtml, FailBody::DlEcho] {
            for status in [403, 502] {
                let what = format!("{route:?} {body:?} {status}");
                gw.hostile.set(|k| {
                    k.fail = vec![Failure {
                        route,
                        status,
                        body: body.clone(),
                    }]
                });
                let reply = gw.call_route(route, &conversation, &token).await;
                assert_eq!(reply.status.as_u16(), status, "{what}: {}", reply.text());
                gw.assert_clean(&reply, &what);
                let json: Value = serde_json::from_slice(&reply.bytes)
                    .unwrap_or_else(|_| panic!("{what}: not JSON: {}", reply.text()));
                assert!(json["error"]["code"].is_string(), "{what}: {json}");
                assert!(json["error"]["message"].is_string(), "{what}: {json}");
                if matches!(body, FailBody::DlEcho) {
                    // Direct Line's own code survives, and so does the clean part of its message.
                    assert_eq!(json["error"]["code"], "BadArgument", "{what}");
                    let message = json["error"]["message"].as_str().unwrap();
                    assert!(
                        message.starts_with("Invalid request: "),
                        "{what}: {message}"
                    );
                }
            }
        }
    }
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_bodies_scrubbed_total{bot=\"default\",kind=\"error_replaced\"}"
        ) > 0.0,
        "{metrics}"
    );
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_bodies_scrubbed_total{bot=\"default\",kind=\"error_scrubbed\"}"
        ) > 0.0,
        "{metrics}"
    );
}

/// Clean Direct Line errors pass through with their status, code and message; bodies past
/// the cap are replaced by the gateway's own.
#[tokio::test]
async fn direct_line_errors_pass_and_oversized_ones_are_replaced() {
    let gw = Gateway::start(Knobs::default(), |_| {}).await;
    let (conversation, token, _) = gw.conversation().await;
    for route in ROUTES {
        gw.hostile.set(|k| {
            k.fail = vec![Failure {
                route,
                status: 403,
                body: FailBody::Dl {
                    code: "TokenExpired".into(),
                    message: "Token expired".into(),
                },
            }]
        });
        let reply = gw.call_route(route, &conversation, &token).await;
        assert_eq!(reply.status, StatusCode::FORBIDDEN, "{route:?}");
        assert_eq!(
            reply.json(),
            json!({"error": {"code": "TokenExpired", "message": "Token expired"}}),
            "{route:?}"
        );

        gw.hostile.set(|k| {
            k.fail = vec![Failure {
                route,
                status: 400,
                body: FailBody::Huge(200 * 1024),
            }]
        });
        let reply = gw.call_route(route, &conversation, &token).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{route:?}");
        assert!(
            reply.bytes.len() < 1024,
            "{route:?}: {} bytes passed",
            reply.bytes.len()
        );
        assert!(reply.json()["error"]["code"].is_string(), "{route:?}");
    }
}

/// Success answers that echo the credential (GET and POST activities, upload, start and
/// reconnect) reach the client with the credential masked and the rest intact.
#[tokio::test]
async fn echoed_credentials_in_success_bodies_are_masked() {
    let gw = Gateway::start(Knobs::default(), |_| {}).await;
    let (conversation, token, _) = gw.conversation().await;
    gw.hostile.set(|k| k.echo_on_success = true);
    for route in [
        Route::GetActivities,
        Route::PostActivity,
        Route::Upload,
        Route::Start,
        Route::Reconnect,
    ] {
        let reply = gw.call_route(route, &conversation, &token).await;
        assert!(reply.status.is_success(), "{route:?}: {}", reply.text());
        let json = reply.json();
        let text = json.to_string();
        assert!(!text.contains(SECRET), "{route:?}: {text}");
        assert!(!text.contains("hostile-token-"), "{route:?}: {text}");
        assert!(
            text.contains("Bearer ***"),
            "{route:?}: the echo is gone, not masked: {text}"
        );
        match route {
            Route::GetActivities => {
                assert_eq!(
                    json["activities"][0]["id"],
                    format!("{conversation}|0000001")
                )
            }
            Route::PostActivity | Route::Upload => {
                assert_eq!(json["id"], format!("{conversation}|0000002"))
            }
            _ => assert_eq!(json["conversationId"], conversation.as_str()),
        }
    }
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_bodies_scrubbed_total{bot=\"default\",kind=\"success_scrubbed\"}"
        ) >= 5.0,
        "{metrics}"
    );
}

/// Stream URLs on another host, another port, another scheme or another path are refused on
/// start and reconnect (502, Direct Line-shaped) and never dialled.
#[tokio::test]
async fn foreign_stream_urls_are_refused_and_never_dialled() {
    let (other_host, other_host_dials) = counting_listener("127.0.0.2").await;
    let (other_port, other_port_dials) = counting_listener("127.0.0.1").await;
    let gw = Gateway::start(Knobs::default(), |_| {}).await;
    let own = gw.hostile.authority();
    let foreign = [
        format!("ws://{other_host}/v3/directline/conversations/{{conv}}/stream?watermark=-&t=T"),
        format!("ws://{other_port}/v3/directline/conversations/{{conv}}/stream?watermark=-&t=T"),
        format!("wss://{own}/v3/directline/conversations/{{conv}}/stream?watermark=-&t=T"),
        format!("ws://{own}/anything?t=T"),
        format!("ws://{own}/v3/directline/conversations/someoneelse/stream?t=T"),
        format!("ws://user@{other_host}/v3/directline/conversations/{{conv}}/stream?t=T"),
    ];
    let (conversation, token, _) = gw.conversation().await;
    for url in &foreign {
        gw.hostile.set(|k| {
            k.start_stream_url = Some(url.clone());
            k.reconnect_stream_url = Some(url.clone());
        });
        for route in [Route::Start, Route::Reconnect] {
            let reply = gw.call_route(route, &conversation, &token).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_GATEWAY,
                "{route:?} {url}: {}",
                reply.text()
            );
            assert_eq!(reply.error_code(), "UpstreamError", "{route:?} {url}");
            gw.assert_clean(&reply, url);
        }
    }
    let metrics = gw.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_upstream_stream_urls_refused_total{bot=\"default\"}"
        ),
        (foreign.len() * 2) as f64,
        "{metrics}"
    );
    assert_eq!(other_host_dials.load(Ordering::Relaxed), 0);
    assert_eq!(other_port_dials.load(Ordering::Relaxed), 0);
}

/// An upstream token or stream URL watermark too long for the gateway to hand on is refused
/// with 502 when it arrives, not sealed into a token or stream URL that every later use
/// refuses; a long but usable token still makes a working conversation.
#[tokio::test]
async fn upstream_answers_too_long_to_hand_on_are_refused_when_they_arrive() {
    let gw = Gateway::start(Knobs::default(), |_| {}).await;
    gw.hostile.set(|k| k.token_padding = 3_000);
    let (conversation, token, stream_url) = gw.conversation().await;
    assert!(stream_url.starts_with("ws://"), "{stream_url}");
    let posted = gw
        .call_route(Route::PostActivity, &conversation, &token)
        .await;
    assert_eq!(posted.status, StatusCode::OK, "{}", posted.text());

    // A reconnect keeps the caller's upstream token (the fresh one in its answer is not
    // adopted), so only the routes that seal the new token meet it.
    gw.hostile.set(|k| k.token_padding = 10_000);
    for route in [Route::Generate, Route::Refresh, Route::Start] {
        let reply = gw.call_route(route, &conversation, &token).await;
        assert_eq!(
            reply.status,
            StatusCode::BAD_GATEWAY,
            "{route:?}: {}",
            reply.text()
        );
        assert_eq!(reply.error_code(), "UpstreamError", "{route:?}");
        gw.assert_clean(&reply, &format!("{route:?}"));
    }

    gw.hostile.set(|k| k.token_padding = 0);
    let own = gw.hostile.authority();
    for watermark in ["9".repeat(257), "12%0A".to_owned()] {
        let url = format!(
            "ws://{own}/v3/directline/conversations/{{conv}}/stream?watermark={watermark}&t=T"
        );
        gw.hostile.set(|k| {
            k.start_stream_url = Some(url.clone());
            k.reconnect_stream_url = Some(url.clone());
        });
        for route in [Route::Start, Route::Reconnect] {
            let reply = gw.call_route(route, &conversation, &token).await;
            assert_eq!(
                reply.status,
                StatusCode::BAD_GATEWAY,
                "{route:?} {url}: {}",
                reply.text()
            );
        }
    }
}

/// A hub whose upstream hands out a foreign stream URL on every resume never dials it: each
/// refusal is a failed attempt, backed off inside the resume budget, and once the budget is
/// spent the client socket is closed with 1011 so the client resumes itself.
#[tokio::test]
async fn a_foreign_url_on_resume_spends_the_budget_and_is_never_dialled() {
    let (other_host, other_host_dials) = counting_listener("127.0.0.2").await;
    let knobs = Knobs {
        close_stream_at_once: true,
        ..Knobs::default()
    };
    let gw = Gateway::start(knobs, |c| {
        c.stream.backoff_base = Duration::from_millis(20);
        c.stream.backoff_max = Duration::from_millis(200);
        c.stream.resume_budget = Duration::from_secs(2);
    })
    .await;
    let (_, _, stream_url) = gw.conversation().await;
    gw.hostile.set(|k| {
        k.reconnect_stream_url = Some(format!(
            "ws://{other_host}/v3/directline/conversations/{{conv}}/stream?watermark=-&t=T"
        ))
    });
    let mut ws = open_stream(&stream_url).await;
    let mut seen = Seen::default();
    read_until(&mut ws, &mut seen, |s| s.closed.is_some()).await;
    assert_eq!(seen.closed, Some(Some(1011)));
    assert_eq!(other_host_dials.load(Ordering::Relaxed), 0);
    let metrics = gw.metrics().await;
    let refused = metric(
        &metrics,
        "directline_gateway_upstream_stream_urls_refused_total{bot=\"default\"}",
    );
    let resumes = gw
        .hostile
        .requests()
        .iter()
        .filter(|r| r.route == Route::Reconnect)
        .count();
    assert!(refused >= 1.0, "{metrics}");
    assert_eq!(
        refused, resumes as f64,
        "every resume's URL was refused: {metrics}"
    );
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_upstream_reconnects_total{bot=\"default\",result=\"exhausted\"}"
        ),
        1.0,
        "{metrics}"
    );
}

/// Huge, `u64::MAX`, negative, fractional, string and zero `expires_in`: the client's
/// `expires_in` stays within Direct Line's 1..=3600 s, and the token still works.
#[tokio::test]
async fn upstream_expires_in_is_clamped_and_the_token_works() {
    let gw = Gateway::start(Knobs::default(), |_| {}).await;
    for odd in [
        json!(1_000_000_000_000u64),
        json!(u64::MAX),
        json!(-5),
        json!(3599.5),
        json!("3600"),
        json!(0),
        Value::Null,
    ] {
        gw.hostile.set(|k| k.expires_in = odd.clone());
        let generated = gw
            .call(Method::POST, "/v3/directline/tokens/generate", None, None)
            .await;
        assert_eq!(
            generated.status,
            StatusCode::OK,
            "{odd}: {}",
            generated.text()
        );
        let json = generated.json();
        let life = json["expires_in"]
            .as_u64()
            .unwrap_or_else(|| panic!("{odd}: {json}"));
        assert!((1..=3600).contains(&life), "{odd}: expires_in {life}");
        let token = json["token"].as_str().unwrap();
        for route in [Route::Start, Route::Refresh] {
            let reply = gw
                .call_route(route, json["conversationId"].as_str().unwrap(), token)
                .await;
            assert!(
                reply.status.is_success(),
                "{odd} {route:?}: {}",
                reply.text()
            );
            let life = reply.json()["expires_in"].as_u64().unwrap();
            assert!(
                (1..=3600).contains(&life),
                "{odd} {route:?}: expires_in {life}"
            );
        }
    }
    let metrics = gw.metrics().await;
    assert!(
        metric(
            &metrics,
            "directline_gateway_upstream_lifetimes_clamped_total{bot=\"default\"}"
        ) >= 3.0,
        "{metrics}"
    );
}
