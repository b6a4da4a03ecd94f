//! Connections and requests that try to hold the gateway without finishing anything (issue
//! 14): silent TCP connections, an HTTP/2 preface and nothing more, bodies that stall, one
//! host taking every connection, and requests with no Host, two Hosts or too many headers.
//! Raw sockets on loopback, so nothing a client library would fix up for us.

mod support;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::Full;
use support::{Harness, WAIT, eventually, metric};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const SHORT: Duration = Duration::from_millis(500);

fn client_addr(h: &Harness) -> SocketAddr {
    h.base.trim_start_matches("http://").parse().unwrap()
}

/// Reads until the gateway closes the connection; returns what it sent. Fails after [`WAIT`].
async fn read_to_close(tcp: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, async {
        let mut chunk = [0u8; 4096];
        loop {
            match tcp.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => bytes.extend_from_slice(&chunk[..n]),
            }
        }
    })
    .await
    .expect("the gateway closed the connection in time");
    bytes
}

#[tokio::test]
async fn silent_connections_are_closed_and_no_longer_shut_real_clients_out() {
    let h = Harness::builder()
        .config(|c| {
            c.limits.max_connections = 6;
            c.limits.header_read_timeout = SHORT;
        })
        .start()
        .await;
    let addr = client_addr(&h);
    let mut silent = Vec::new();
    for _ in 0..6 {
        silent.push(TcpStream::connect(addr).await.unwrap());
    }
    for tcp in &mut silent {
        assert!(
            read_to_close(tcp).await.is_empty(),
            "closed without an answer"
        );
    }
    // With the cap free again, a real client is served.
    h.generate().await;
    // Counted just after the socket is dropped, so the count may trail the close we saw.
    eventually("six first-request timeouts counted", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_client_timeouts_total{phase=\"first_request\"}",
        ) >= 6.0
    })
    .await;
}

#[tokio::test]
async fn an_http2_preface_without_a_request_is_closed() {
    let h = Harness::builder()
        .config(|c| c.limits.header_read_timeout = SHORT)
        .start()
        .await;
    let mut tcp = TcpStream::connect(client_addr(&h)).await.unwrap();
    tcp.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n")
        .await
        .unwrap();
    // An empty SETTINGS frame: a well-behaved HTTP/2 client that then says nothing.
    tcp.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).await.unwrap();
    read_to_close(&mut tcp).await;
}

/// Sends a request head promising `length` body bytes and only `sent` of them.
async fn stalled_post(h: &Harness, path: &str, extra: &str, length: usize, sent: &[u8]) -> String {
    let mut tcp = TcpStream::connect(client_addr(h)).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: gw\r\n{extra}Content-Length: {length}\r\n\r\n");
    tcp.write_all(head.as_bytes()).await.unwrap();
    tcp.write_all(sent).await.unwrap();
    String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned()
}

#[tokio::test]
async fn bodies_that_stall_get_408_within_their_bound_and_nothing_reaches_upstream() {
    let h = Harness::builder()
        .config(|c| c.limits.body_read_timeout = SHORT)
        .start()
        .await;
    let conversation = h.conversation().await;
    let before = h.emulator.requests().len();
    let answer = stalled_post(
        &h,
        "/v3/directline/tokens/generate",
        "Content-Type: application/json\r\n",
        1000,
        b"{",
    )
    .await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("\"RequestTimeout\""), "{answer}");
    let path = format!(
        "/v3/directline/conversations/{}/activities",
        conversation.id
    );
    let auth = format!(
        "Authorization: Bearer {}\r\nContent-Type: application/json\r\n",
        conversation.token
    );
    let answer = stalled_post(&h, &path, &auth, 1000, b"{").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert_eq!(
        h.emulator.requests().len(),
        before,
        "a stalled body reached Direct Line"
    );
    let metrics = h.metrics().await;
    assert_eq!(
        metric(
            &metrics,
            "directline_gateway_client_timeouts_total{phase=\"body\"}"
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn an_upload_that_stalls_is_cut_at_its_own_bound() {
    let h = Harness::builder()
        .config(|c| c.limits.upload_read_timeout = SHORT)
        .start()
        .await;
    let conversation = h.conversation().await;
    let path = format!("/v3/directline/conversations/{}/upload", conversation.id);
    let auth = format!(
        "Authorization: Bearer {}\r\nContent-Type: multipart/form-data; boundary=b\r\n",
        conversation.token
    );
    let answer = stalled_post(&h, &path, &auth, 100_000, b"--b\r\n").await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    eventually("the upload timeout is counted", async || {
        metric(
            &h.metrics().await,
            "directline_gateway_client_timeouts_total{phase=\"upload\"}",
        ) == 1.0
    })
    .await;
}

#[tokio::test]
async fn one_host_cannot_take_every_connection_unless_it_is_a_trusted_proxy() {
    for trusted in [false, true] {
        let h = Harness::builder()
            .config(|c| {
                c.limits.max_connections_per_ip = 3;
                if trusted {
                    c.trusted_proxies =
                        vec![directline_gateway::config::IpNet::parse("127.0.0.1").unwrap()];
                }
            })
            .start()
            .await;
        let addr = client_addr(&h);
        let mut held = Vec::new();
        for _ in 0..3 {
            held.push(TcpStream::connect(addr).await.unwrap());
        }
        eventually("three connections open", async || {
            metric(&h.metrics().await, "directline_gateway_client_connections") == 3.0
        })
        .await;
        let mut fourth = TcpStream::connect(addr).await.unwrap();
        fourth
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let answer = read_to_close(&mut fourth).await;
        let refused = metric(
            &h.metrics().await,
            "directline_gateway_connections_refused_per_ip_total",
        );
        if trusted {
            assert!(!answer.is_empty(), "a trusted proxy's connection is served");
            assert_eq!(refused, 0.0);
        } else {
            assert!(answer.is_empty(), "closed at accept, no answer");
            assert_eq!(refused, 1.0);
            // A place comes back when a connection goes.
            drop(held.pop());
            eventually("a connection is accepted again", async || {
                let Ok(mut tcp) = TcpStream::connect(addr).await else {
                    return false;
                };
                let _ = tcp
                    .write_all(b"GET / HTTP/1.1\r\nHost: gw\r\nConnection: close\r\n\r\n")
                    .await;
                !read_to_close(&mut tcp).await.is_empty()
            })
            .await;
        }
    }
}

#[tokio::test]
async fn host_headers_and_header_counts_are_checked_on_every_protocol() {
    let h = Harness::start().await;
    let addr = client_addr(&h);
    for (name, head) in [
        (
            "no Host",
            "POST /v3/directline/tokens/generate HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
        ),
        (
            "two Hosts",
            "POST /v3/directline/tokens/generate HTTP/1.1\r\nHost: a\r\nHost: b\r\nContent-Length: 0\r\n\r\n",
        ),
    ] {
        let mut tcp = TcpStream::connect(addr).await.unwrap();
        tcp.write_all(head.as_bytes()).await.unwrap();
        let answer = String::from_utf8_lossy(&read_to_close(&mut tcp).await).into_owned();
        assert!(answer.starts_with("HTTP/1.1 400"), "{name}: {answer}");
        assert!(answer.contains("\"BadArgument\""), "{name}: {answer}");
    }
    // HTTP/2 (prior knowledge): 150 header fields, the HTTP/1.1 parser's cap is 100.
    let h2 = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .http2_only(true)
        .build_http::<Full<Bytes>>();
    let mut request = Request::builder()
        .method(Method::POST)
        .uri(h.url("/v3/directline/tokens/generate"));
    for i in 0..150 {
        request = request.header(format!("x-filler-{i}"), "x");
    }
    let response = tokio::time::timeout(WAIT, h2.request(request.body(Full::default()).unwrap()))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        response.status(),
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE
    );
    // And a normal HTTP/2 request still works.
    let request = Request::builder()
        .method(Method::POST)
        .uri(h.url("/v3/directline/tokens/generate"))
        .body(Full::default())
        .unwrap();
    let response = tokio::time::timeout(WAIT, h2.request(request))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}
