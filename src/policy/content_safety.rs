//! Azure AI Content Safety as a built-in verdict (`[policy.content_safety]`): the activity's
//! text to `POST {endpoint}/contentsafety/text:analyze?api-version=2024-09-01` with the key
//! in `Ocp-Apim-Subscription-Key`; any category in `categoriesAnalysis` at or above the
//! threshold denies. An activity without text is allowed without a call.

use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderValue, Method, Request, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use serde::Deserialize;
use serde_json::{Value, json};

use super::webhook::{Direction, Failure, Verdict, http_client};
use crate::config::ContentSafetyConfig;
use crate::metrics::Metrics;

/// The service's limit on one text (characters).
const MAX_TEXT_CHARS: usize = 10_000;
/// An analysis answer is a few hundred bytes; anything far larger is not one.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Analysis {
    categories_analysis: Vec<Category>,
}

#[derive(Deserialize)]
struct Category {
    #[serde(default)]
    severity: Option<u8>,
}

pub struct ContentSafety {
    uri: http::Uri,
    key: HeaderValue,
    threshold: u8,
    timeout: Duration,
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl ContentSafety {
    pub fn new(settings: &ContentSafetyConfig, timeout: Duration) -> Result<Self, String> {
        let base = settings.endpoint.as_str().trim_end_matches('/');
        let uri = format!("{base}/contentsafety/text:analyze?api-version=2024-09-01")
            .parse()
            .map_err(|_| "content_safety.endpoint is not a usable URL".to_owned())?;
        let mut key = HeaderValue::from_str(settings.key.expose())
            .map_err(|_| "content_safety key is not a valid header value".to_owned())?;
        key.set_sensitive(true);
        Ok(Self {
            uri,
            key,
            threshold: settings.threshold,
            timeout,
            client: http_client(timeout)?,
        })
    }

    pub async fn analyze(
        &self,
        metrics: &Metrics,
        direction: Direction,
        activity: &Value,
    ) -> Result<Verdict, Failure> {
        let Some(text) = activity.get("text").and_then(Value::as_str) else {
            return Ok(Verdict::Allow);
        };
        if text.is_empty() {
            return Ok(Verdict::Allow);
        }
        if text.chars().count() > MAX_TEXT_CHARS {
            return Err(Failure::TooLarge);
        }
        let started = Instant::now();
        let result = tokio::time::timeout(self.timeout, self.call(text))
            .await
            .unwrap_or(Err(Failure::Timeout));
        metrics
            .policy_webhook_duration
            .with_label_values(&[direction.as_str()])
            .observe(started.elapsed().as_secs_f64());
        result
    }

    async fn call(&self, text: &str) -> Result<Verdict, Failure> {
        let body = serde_json::to_vec(&json!({ "text": text })).map_err(|_| Failure::Invalid)?;
        let mut request = Request::new(Full::new(Bytes::from(body)));
        *request.method_mut() = Method::POST;
        *request.uri_mut() = self.uri.clone();
        let headers = request.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        headers.insert("ocp-apim-subscription-key", self.key.clone());
        let response = self
            .client
            .request(request)
            .await
            .map_err(|_| Failure::Unreachable)?;
        if !response.status().is_success() {
            return Err(Failure::Status);
        }
        let bytes = Limited::new(response.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|_| Failure::Invalid)?
            .to_bytes();
        let analysis: Analysis = serde_json::from_slice(&bytes).map_err(|_| Failure::Invalid)?;
        let worst = analysis
            .categories_analysis
            .iter()
            .filter_map(|c| c.severity)
            .max()
            .unwrap_or(0);
        Ok(if worst >= self.threshold {
            Verdict::Deny
        } else {
            Verdict::Allow
        })
    }
}
