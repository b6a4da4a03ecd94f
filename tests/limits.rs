//! Abuse limits end to end: per-IP session buckets (with X-Forwarded-For only from trusted
//! proxies), per-conversation activity buckets, origin refusal on token minting, and the
//! global connection cap. Every refusal is Direct Line-shaped and reaches nothing upstream.

mod support;

use directline_gateway::config::{IpNet, Rate};
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use serde_json::json;
use support::*;
use tokio::io::AsyncReadExt;

fn generate_requests(h: &Harness) -> usize {
    h.emulator
        .requests()
        .iter()
        .filter(|r| r.path == "/v3/directline/tokens/generate")
        .count()
}

async fn generate_from(h: &Harness, forwarded_for: Option<&str>) -> Reply {
    let mut request = Request::post(h.url("/v3/directline/tokens/generate"));
    if let Some(ip) = forwarded_for {
        request = request.header("x-forwarded-for", ip);
    }
    h.send(request.body(Full::default()).unwrap()).await
}

#[tokio::test]
async fn sessions_are_limited_per_client_ip() {
    let h = Harness::builder()
        .config(|c| {
            c.bot_mut().rate_limits.sessions = Rate {
                per_minute: 1,
                burst: 3,
            };
            c.trusted_proxies = vec![IpNet::parse("127.0.0.1/32").unwrap()];
        })
        .start()
        .await;
    for _ in 0..3 {
        assert_eq!(generate_from(&h, None).await.status, StatusCode::OK);
    }
    let refused = generate_from(&h, None).await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "TooManyRequests");
    let retry_after: u64 = refused.headers["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after} s");
    assert_eq!(
        generate_requests(&h),
        3,
        "the refused call never reached Direct Line"
    );

    // Behind a trusted proxy each forwarded client has its own bucket.
    assert_eq!(
        generate_from(&h, Some("203.0.113.7")).await.status,
        StatusCode::OK
    );
    assert_eq!(
        generate_from(&h, Some("203.0.113.8")).await.status,
        StatusCode::OK
    );
    let text = h.metrics().await;
    assert_eq!(
        metric(
            &text,
            "directline_gateway_rate_limited_total{bot=\"default\",route=\"tokens_generate\"}"
        ),
        1.0
    );
}

#[tokio::test]
async fn forwarded_for_from_an_untrusted_peer_does_not_buy_a_new_bucket() {
    let h = Harness::builder()
        .config(|c| {
            c.bot_mut().rate_limits.sessions = Rate {
                per_minute: 1,
                burst: 2,
            }
        })
        .start()
        .await;
    for ip in ["198.51.100.1", "198.51.100.2"] {
        assert_eq!(generate_from(&h, Some(ip)).await.status, StatusCode::OK);
    }
    assert_eq!(
        generate_from(&h, Some("198.51.100.3")).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
}

#[tokio::test]
async fn activities_are_limited_per_conversation() {
    let h = Harness::builder()
        .config(|c| {
            c.bot_mut().rate_limits.activities = Rate {
                per_minute: 1,
                burst: 2,
            }
        })
        .start()
        .await;
    let first = h.conversation().await;
    let second = h.conversation().await;
    h.post_message(&first, "one").await;
    h.post_message(&first, "two").await;
    let path = format!("/v3/directline/conversations/{}/activities", first.id);
    let body = json!({"type": "message", "from": {"id": "u"}, "text": "three"});
    let refused = h
        .request(Method::POST, &path, Some(&first.token), Some(body))
        .await;
    assert_eq!(refused.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(refused.error_code(), "TooManyRequests");
    assert!(refused.headers.contains_key("retry-after"));
    // Another conversation has its own bucket, and refused credentials never drain it.
    h.post_message(&second, "fine").await;
    let second_path = format!("/v3/directline/conversations/{}/activities", second.id);
    for _ in 0..5 {
        let forged = h
            .request(
                Method::POST,
                &second_path,
                Some("dlgw1.forged"),
                Some(json!({"type": "message", "text": "x"})),
            )
            .await;
        assert_eq!(forged.status, StatusCode::FORBIDDEN);
    }
    h.post_message(&second, "still fine").await;
    let posted = h
        .emulator
        .requests()
        .iter()
        .filter(|r| r.path.ends_with("/activities") && r.method == "POST")
        .count();
    assert_eq!(
        posted, 4,
        "the refused activities never reached Direct Line"
    );
}

#[tokio::test]
async fn tokens_are_not_minted_for_other_origins() {
    let h = Harness::builder()
        .config(|c| c.bot_mut().allowed_origins = vec!["https://chat.contoso.com".into()])
        .start()
        .await;
    let from = |origin: Option<&'static str>| {
        let mut request = Request::post(h.url("/v3/directline/tokens/generate"));
        if let Some(origin) = origin {
            request = request.header("origin", origin);
        }
        h.send(request.body(Full::default()).unwrap())
    };
    let refused = from(Some("https://evil.example")).await;
    assert_eq!(refused.status, StatusCode::FORBIDDEN);
    assert_eq!(refused.error_code(), "BadArgument");
    assert_eq!(generate_requests(&h), 0);
    let allowed = from(Some("https://chat.contoso.com")).await;
    assert_eq!(allowed.status, StatusCode::OK);
    assert_eq!(
        allowed.headers["access-control-allow-origin"],
        "https://chat.contoso.com"
    );
    // A server fetching a token for its page sends no Origin: not a browser, not refused.
    assert_eq!(from(None).await.status, StatusCode::OK);
}

#[tokio::test]
async fn connections_past_the_cap_are_closed_at_accept() {
    let h = Harness::builder()
        .config(|c| c.limits.max_connections = 2)
        .start()
        .await;
    let addr = h.gateway().client_addr;
    let held = [
        tokio::net::TcpStream::connect(addr).await.unwrap(),
        tokio::net::TcpStream::connect(addr).await.unwrap(),
    ];
    eventually("two connections counted", async || {
        metric(&h.metrics().await, "directline_gateway_client_connections") == 2.0
    })
    .await;
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = [0u8; 1];
    let read = tokio::time::timeout(WAIT, third.read(&mut buf))
        .await
        .expect("closed in time");
    assert!(matches!(read, Ok(0) | Err(_)), "closed without an answer");
    assert_eq!(
        metric(
            &h.metrics().await,
            "directline_gateway_connections_refused_total"
        ),
        1.0
    );
    drop(held);
    eventually("a slot is free again", async || {
        metric(&h.metrics().await, "directline_gateway_client_connections") == 0.0
    })
    .await;
    h.generate().await;
}

#[tokio::test]
async fn the_header_count_limit_is_configurable() {
    let h = Harness::builder()
        .config(|c| c.limits.max_header_count = 200)
        .start()
        .await;
    let mut request = Request::post(h.url("/v3/directline/tokens/generate"));
    for i in 0..150 {
        request = request.header(format!("x-h{i}"), "v");
    }
    let reply = h.send(request.body(Full::default()).unwrap()).await;
    assert_eq!(reply.status, StatusCode::OK, "150 fields fit under 200");
}

#[tokio::test]
async fn idle_keep_alive_connections_are_closed_after_the_header_read_timeout() {
    use tokio::io::AsyncWriteExt;
    let h = Harness::builder()
        .config(|c| c.limits.header_read_timeout = std::time::Duration::from_millis(300))
        .start()
        .await;
    let mut tcp = tokio::net::TcpStream::connect(h.gateway().client_addr)
        .await
        .unwrap();
    tcp.write_all(
        b"POST /v3/directline/tokens/generate HTTP/1.1\r\nHost: gw\r\nContent-Length: 0\r\n\r\n",
    )
    .await
    .unwrap();
    let mut answered = Vec::new();
    let mut buf = [0u8; 4096];
    // The answer, then silence from the client: the gateway must end the connection itself.
    let closed = tokio::time::timeout(WAIT, async {
        loop {
            match tcp.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => answered.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "an idle keep-alive connection stayed open");
    assert!(String::from_utf8_lossy(&answered).starts_with("HTTP/1.1 200"));
}
