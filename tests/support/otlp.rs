//! An OTLP/HTTP receiver on 127.0.0.1:0, as a collector would be: `POST /v1/traces` with an
//! `application/x-protobuf` `ExportTraceServiceRequest`, decoded with `opentelemetry-proto`
//! and kept for the test to read. It knows nothing of the gateway's SDK.

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
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message;
use tokio::net::TcpListener;

/// One received span with the service name of the resource it came under.
#[derive(Clone, Debug)]
pub struct Received {
    pub service: String,
    pub span: Span,
    /// Every attribute of the resource, its scope and the span (events and links too).
    pub all_attributes: Vec<KeyValue>,
}

impl Received {
    pub fn attr(&self, key: &str) -> Option<String> {
        self.span
            .attributes
            .iter()
            .find(|kv| kv.key == key)
            .and_then(|kv| kv.value.as_ref())
            .map(text)
    }

    pub fn trace_id(&self) -> String {
        hex(&self.span.trace_id)
    }

    pub fn span_id(&self) -> String {
        hex(&self.span.span_id)
    }

    pub fn parent_id(&self) -> String {
        hex(&self.span.parent_span_id)
    }
}

/// An attribute value as text (strings as they are, numbers and booleans printed).
pub fn text(value: &AnyValue) -> String {
    match &value.value {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => {
            a.values.iter().map(text).collect::<Vec<_>>().join(",")
        }
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Collector {
    /// `http://127.0.0.1:PORT` (the OTLP base URL; spans go to `/v1/traces`).
    pub endpoint: String,
    spans: Arc<Mutex<Vec<Received>>>,
    /// Export requests that were not a decodable `POST /v1/traces` protobuf.
    pub refused: Arc<Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Collector {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Collector {
    pub async fn start() -> Collector {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let spans = Arc::new(Mutex::new(Vec::new()));
        let refused = Arc::new(Mutex::new(Vec::new()));
        let (store, complaints) = (spans.clone(), refused.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    return;
                };
                let (store, complaints) = (store.clone(), complaints.clone());
                tokio::spawn(async move {
                    let service = service_fn(move |request| {
                        receive(request, store.clone(), complaints.clone())
                    });
                    let _ = auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(tcp), service)
                        .await;
                });
            }
        });
        Collector {
            endpoint,
            spans,
            refused,
            task,
        }
    }

    pub fn spans(&self) -> Vec<Received> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits (bounded) until `done` holds for what was received; returns all of it.
    pub async fn wait_for(
        &self,
        what: &str,
        mut done: impl FnMut(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + super::WAIT;
        loop {
            let spans = self.spans();
            if done(&spans) {
                return spans;
            }
            assert!(
                Instant::now() < deadline,
                "collector: {what} not received in time; got {:#?}",
                spans
                    .iter()
                    .map(|s| (&s.span.name, s.trace_id()))
                    .collect::<Vec<_>>()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

async fn receive(
    request: Request<Incoming>,
    store: Arc<Mutex<Vec<Received>>>,
    complaints: Arc<Mutex<Vec<String>>>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let protobuf = request
        .headers()
        .get(http::header::CONTENT_TYPE)
        .is_some_and(|v| v == "application/x-protobuf");
    let right_place =
        request.method() == http::Method::POST && request.uri().path() == "/v1/traces";
    let body = request.into_body().collect().await.map(|b| b.to_bytes());
    let decoded = match body {
        Ok(bytes) if protobuf && right_place => ExportTraceServiceRequest::decode(bytes).ok(),
        _ => None,
    };
    let Some(export) = decoded else {
        complaints
            .lock()
            .unwrap()
            .push("not a protobuf POST /v1/traces".to_owned());
        let mut refusal = Response::new(Full::new(Bytes::new()));
        *refusal.status_mut() = StatusCode::BAD_REQUEST;
        return Ok(refusal);
    };
    let mut received = Vec::new();
    for resource_spans in export.resource_spans {
        let resource_attributes = resource_spans
            .resource
            .map(|r| r.attributes)
            .unwrap_or_default();
        let service = resource_attributes
            .iter()
            .find(|kv| kv.key == "service.name")
            .and_then(|kv| kv.value.as_ref())
            .map(text)
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            let scope_attributes = scope_spans.scope.map(|s| s.attributes).unwrap_or_default();
            for span in scope_spans.spans {
                let mut all_attributes = resource_attributes.clone();
                all_attributes.extend(scope_attributes.iter().cloned());
                all_attributes.extend(span.attributes.iter().cloned());
                for event in &span.events {
                    all_attributes.extend(event.attributes.iter().cloned());
                }
                for link in &span.links {
                    all_attributes.extend(link.attributes.iter().cloned());
                }
                received.push(Received {
                    service: service.clone(),
                    span,
                    all_attributes,
                });
            }
        }
    }
    store.lock().unwrap().extend(received);
    let mut response = Response::new(Full::new(Bytes::new()));
    response.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static("application/x-protobuf"),
    );
    Ok(response)
}
