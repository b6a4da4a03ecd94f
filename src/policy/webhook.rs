//! The policy webhook: one POST per activity with `{"direction","bot","conversation","user",
//! "activity"}`, answered `{"action":"allow"}`, `{"action":"deny","reason":…}` or
//! `{"action":"replace","activity":{…}}`. Calls are bounded per replica (in flight and
//! waiting), by body size both ways, and by one timeout that includes the wait for a slot.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Semaphore;
use url::Url;

use crate::config::PolicyConfig;
use crate::metrics::Metrics;

/// Which way an activity goes; the webhook's `direction` and a metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    User,
    Bot,
}

impl Direction {
    pub fn as_str(self) -> &'static str {
        match self {
            Direction::User => "user",
            Direction::Bot => "bot",
        }
    }
}

/// Whose activity it is: the webhook's `bot`, `conversation` and `user` (the bound id, `dl_…`
/// for minted and signed-in users).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub bot: &'a str,
    pub conversation: &'a str,
    pub user: &'a str,
}

#[derive(Serialize)]
struct Ask<'a> {
    direction: &'static str,
    bot: &'a str,
    conversation: &'a str,
    user: &'a str,
    activity: &'a Value,
}

#[derive(Deserialize)]
struct Answer {
    action: String,
    #[serde(default)]
    activity: Option<Value>,
}

/// The webhook's answer.
#[derive(Debug)]
pub enum Verdict {
    Allow,
    Deny,
    Replace(Value),
}

/// Why a call gave no verdict: the `policy_webhook_failures_total{reason}` label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    Timeout,
    Unreachable,
    Status,
    Invalid,
    TooLarge,
    QueueFull,
}

impl Failure {
    pub fn as_str(self) -> &'static str {
        match self {
            Failure::Timeout => "timeout",
            Failure::Unreachable => "unreachable",
            Failure::Status => "status",
            Failure::Invalid => "invalid",
            Failure::TooLarge => "too_large",
            Failure::QueueFull => "queue_full",
        }
    }
}

pub struct Webhook {
    url: Url,
    uri: http::Uri,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    slots: Semaphore,
    waiting: AtomicUsize,
    queue: usize,
    timeout: Duration,
    max_body: usize,
}

impl Webhook {
    pub fn new(url: &Url, settings: &PolicyConfig) -> Result<Self, String> {
        let uri: http::Uri = url.as_str().parse().map_err(|_| "invalid URL".to_owned())?;
        let client = http_client(settings.timeout)?;
        Ok(Self {
            url: url.clone(),
            uri,
            client,
            slots: Semaphore::new(settings.concurrency),
            waiting: AtomicUsize::new(0),
            queue: settings.queue,
            timeout: settings.timeout,
            max_body: settings.max_body_bytes,
        })
    }

    pub fn url(&self) -> &Url {
        &self.url
    }

    /// One verdict on `activity`, within the timeout and the bounds.
    pub async fn ask(
        &self,
        metrics: &Metrics,
        direction: Direction,
        subject: Subject<'_>,
        activity: &Value,
    ) -> Result<Verdict, Failure> {
        let body = serde_json::to_vec(&Ask {
            direction: direction.as_str(),
            bot: subject.bot,
            conversation: subject.conversation,
            user: subject.user,
            activity,
        })
        .map_err(|_| Failure::Invalid)?;
        if body.len() > self.max_body {
            return Err(Failure::TooLarge);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.call(metrics, body))
            .await
            .unwrap_or(Err(Failure::Timeout));
        metrics
            .policy_webhook_duration
            .with_label_values(&[direction.as_str()])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn call(&self, metrics: &Metrics, body: Vec<u8>) -> Result<Verdict, Failure> {
        let _slot = match self.slots.try_acquire() {
            Ok(slot) => slot,
            Err(_) => {
                // Counted before waiting, so the queue bound holds however many arrive.
                if self.waiting.fetch_add(1, Ordering::AcqRel) >= self.queue {
                    self.waiting.fetch_sub(1, Ordering::AcqRel);
                    return Err(Failure::QueueFull);
                }
                metrics.policy_webhook_waiting.inc();
                let _leave = Leave(&self.waiting, metrics);
                self.slots
                    .acquire()
                    .await
                    .map_err(|_| Failure::Unreachable)?
            }
        };
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        request.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        let response = self
            .client
            .request(request)
            .await
            .map_err(|_| Failure::Unreachable)?;
        if !response.status().is_success() {
            return Err(Failure::Status);
        }
        let bytes = Limited::new(response.into_body(), self.max_body)
            .collect()
            .await
            .map_err(|_| Failure::Invalid)?
            .to_bytes();
        let answer: Answer = serde_json::from_slice(&bytes).map_err(|_| Failure::Invalid)?;
        match (answer.action.as_str(), answer.activity) {
            ("allow", _) => Ok(Verdict::Allow),
            ("deny", _) => Ok(Verdict::Deny),
            ("replace", Some(activity)) if activity.is_object() => Ok(Verdict::Replace(activity)),
            _ => Err(Failure::Invalid),
        }
    }
}

/// An HTTP/1.1 client for http:// and https:// (ring, the webpki roots), its own pool.
pub(crate) fn http_client(
    connect_timeout: Duration,
) -> Result<Client<HttpsConnector<HttpConnector>, Full<Bytes>>, String> {
    let tls = crate::upstream::client::tls_client_config(None)?;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(Some(connect_timeout));
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(Arc::unwrap_or_clone(tls))
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    Ok(Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector))
}

/// Leaves the queue however the wait ends (a slot, the timeout dropping the future).
struct Leave<'a>(&'a AtomicUsize, &'a Metrics);

impl Drop for Leave<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
        self.1.policy_webhook_waiting.dec();
    }
}
