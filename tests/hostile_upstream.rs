// The tests of the next commits use the rest of the helpers.
#![allow(dead_code, unused_imports)]
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
        config.rate_limits.activities.per_minute = 0;
        config.rate_limits.sessions.per_minute = 0;
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
