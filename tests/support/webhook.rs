//! A policy webhook on 127.0.0.1:0 for tests: it reads the activity's text and answers as
//! the text asks. `DENY` denies, `REPLACE` replaces the activity with one whose text is
//! `replaced by policy` (and whose `from.id` tries to be someone else), `SLOW` answers
//! allow after 5 s, `FAIL` answers 500; anything else is allowed. Every request body is
//! kept for the test to read.

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub const REPLACED_TEXT: &str = "replaced by policy";

pub struct PolicyWebhook {
    /// The URL to configure as `policy.webhook`.
    pub url: String,
    asked: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for PolicyWebhook {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl PolicyWebhook {
    pub async fn start() -> PolicyWebhook {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/verdict", listener.local_addr().unwrap());
        let asked = Arc::new(Mutex::new(Vec::new()));
        let store = asked.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let store = store.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |request| answer(request, store.clone()));
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        PolicyWebhook { url, asked, task }
    }

    /// Every request the gateway sent, in order.
    pub fn asked(&self) -> Vec<Value> {
        self.asked.lock().unwrap().clone()
    }

    /// The requests whose activity text contains `needle`.
    pub fn asked_about(&self, needle: &str) -> Vec<Value> {
        self.asked()
            .into_iter()
            .filter(|ask| {
                ask["activity"]["text"]
                    .as_str()
                    .is_some_and(|t| t.contains(needle))
            })
            .collect()
    }

    /// Waits (bounded) until `count` requests were received.
    pub async fn wait_for(&self, count: usize) -> Vec<Value> {
        let deadline = Instant::now() + super::WAIT;
        loop {
            let asked = self.asked();
            if asked.len() >= count {
                return asked;
            }
            assert!(
                Instant::now() < deadline,
                "webhook: {count} requests not received in time; got {asked:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn answer(
    request: Request<Incoming>,
    store: Arc<Mutex<Vec<Value>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let bytes = request
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let ask: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    store.lock().unwrap().push(ask.clone());
    let text = ask["activity"]["text"].as_str().unwrap_or("").to_owned();
    let reply = |status: StatusCode, body: Value| {
        let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
        *response.status_mut() = status;
        response.headers_mut().insert(
            http::header::CONTENT_TYPE,
            http::HeaderValue::from_static("application/json"),
        );
        Ok(response)
    };
    if text.contains("SLOW") {
        tokio::time::sleep(Duration::from_secs(5)).await;
        return reply(StatusCode::OK, json!({"action": "allow"}));
    }
    if text.contains("FAIL") {
        return reply(StatusCode::INTERNAL_SERVER_ERROR, json!({"error": "down"}));
    }
    if text.contains("DENY") {
        return reply(
            StatusCode::OK,
            json!({"action": "deny", "reason": "test says so"}),
        );
    }
    if text.contains("REPLACE") {
        let mut activity = ask["activity"].clone();
        activity["text"] = json!(REPLACED_TEXT);
        activity["from"] = json!({"id": "someone-else", "role": "user"});
        return reply(
            StatusCode::OK,
            json!({"action": "replace", "activity": activity}),
        );
    }
    reply(StatusCode::OK, json!({"action": "allow"}))
}
