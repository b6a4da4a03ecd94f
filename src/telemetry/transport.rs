//! The OTLP/HTTP transport: the same hyper-util client and rustls-with-ring TLS the gateway
//! uses for Direct Line, on a small runtime of its own.
//!
//! The SDK's batch processor exports from its own thread by blocking on the exporter's
//! future with a plain executor; hyper needs a Tokio reactor for sockets and timers. Each
//! request is therefore spawned onto a current-thread runtime that one dedicated thread
//! drives, and the processor's thread only waits for its result. Nothing here runs on, or
//! depends on, the runtime(s) that serve clients, so the gateway may change its own runtime
//! model (thread-per-core) without touching the export.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use opentelemetry_http::{HttpClient, HttpError, Request, Response};
use tokio::sync::oneshot;

/// A collector's answer is a small protobuf (partial success at most): anything larger is
/// not a collector.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// Sends export requests; dropping the last clone stops its thread.
#[derive(Clone)]
pub struct Transport {
    client: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    runtime: tokio::runtime::Handle,
    /// Per attempt: the exporter retries within its own overall timeout.
    timeout: Duration,
    _thread: Arc<Stop>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// Ends the transport's thread (and with it the runtime and its pooled connections).
struct Stop(Option<oneshot::Sender<()>>);

impl Drop for Stop {
    fn drop(&mut self) {
        if let Some(stop) = self.0.take() {
            let _ = stop.send(());
        }
    }
}

impl Transport {
    pub fn start(timeout: Duration) -> std::io::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let handle = runtime.handle().clone();
        let (stop, stopped) = oneshot::channel::<()>();
        std::thread::Builder::new()
            .name("otlp-export".to_owned())
            .spawn(move || {
                runtime.block_on(async {
                    let _ = stopped.await;
                });
                // In-flight requests are abandoned: the processor has given up on them.
                runtime.shutdown_background();
            })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(30))
            .build(connector);
        Ok(Self {
            client,
            runtime: handle,
            timeout,
            _thread: Arc::new(Stop(Some(stop))),
        })
    }
}

/// rustls with the ring provider and the webpki roots: the collector is a public or
/// in-cluster service; a plain `http://` endpoint needs none of it.
fn tls_config() -> rustls::ClientConfig {
    let roots = rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default TLS versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

#[async_trait::async_trait]
impl HttpClient for Transport {
    async fn send_bytes(&self, request: Request<Bytes>) -> Result<Response<Bytes>, HttpError> {
        let client = self.client.clone();
        let timeout = self.timeout;
        let exchange = async move {
            let request = request.map(Full::new);
            let response = tokio::time::timeout(timeout, client.request(request))
                .await
                .map_err(|_| "OTLP export timed out")??;
            let (parts, body) = response.into_parts();
            let body =
                tokio::time::timeout(timeout, Limited::new(body, MAX_ANSWER_BYTES).collect())
                    .await
                    .map_err(|_| "OTLP answer timed out")?
                    .map_err(|e| e as HttpError)?
                    .to_bytes();
            Ok::<_, HttpError>(Response::from_parts(parts, body))
        };
        self.runtime
            .spawn(exchange)
            .await
            .map_err(|_| "OTLP transport stopped")?
    }
}
