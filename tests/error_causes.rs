//! A 502 for an upstream answer the gateway cannot use says in the log what was wrong, and
//! nothing of it in the client's body. One test per binary: it owns the global subscriber.

mod support;

use std::io::Write;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use support::hostile::{Hostile, Knobs};
use support::*;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn an_unusable_upstream_answer_is_named_in_the_log_and_not_to_the_client() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter(directline_gateway::logging::filter("info"))
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    // Direct Line starts the conversation with a stream URL on another host.
    let foreign = "ws://127.0.0.2:1/v3/directline/conversations/{conv}/stream?t=T";
    let hostile = Hostile::start(Knobs {
        start_stream_url: Some(foreign.to_owned()),
        ..Knobs::default()
    })
    .await;
    let running = start_gateway(config_with_upstream(&hostile.base)).await;
    let http = Client::builder(TokioExecutor::new()).build_http();
    let call = async |path: &str, token: Option<&str>| {
        let uri = format!("http://{}{path}", running.client_addr);
        let request: Request<Full<Bytes>> = api_request(
            Request::builder().method(Method::POST).uri(uri),
            token,
            None,
        );
        let response = http.request(request).await.unwrap();
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    let (status, generated) = call("/v3/directline/tokens/generate", None).await;
    assert_eq!(status, StatusCode::OK, "{generated}");
    let generated: serde_json::Value = serde_json::from_str(&generated).unwrap();
    let token = generated["token"].as_str().unwrap();

    let (status, body) = call("/v3/directline/conversations", Some(token)).await;
    assert_eq!(status, StatusCode::BAD_GATEWAY, "{body}");
    assert_eq!(
        body,
        r#"{"error":{"code":"UpstreamError","message":"Direct Line returned an invalid response"}}"#
    );
    let logs = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let line = logs
        .lines()
        .find(|line| line.contains("upstream failure"))
        .unwrap_or_else(|| panic!("an upstream failure line in:\n{logs}"));
    assert!(
        line.contains(
            "upstream answered something the gateway cannot use: a streamUrl outside the upstream's stream URL pin"
        ),
        "{line}"
    );
    // The log names what was wrong, not the answer itself.
    assert!(!line.contains("127.0.0.2"), "{line}");
}
