//! The HTTP client to Direct Line: URL building, upstream `Host`, TLS with the ring provider.
//! It sends once and maps transport failures; [`super::call`] is the one path that uses it.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use http::uri::{Authority, Scheme};
use http::{HeaderValue, Method, Request, Response, Uri, header};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntGauge;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use url::Url;

use crate::boxed_body::Body;
use crate::error::GatewayError;
use crate::metrics::Metrics;
use crate::rewrite::{StreamUrlPin, StreamUrlRefused};

use super::pool::{IDLE_TIMEOUT, MAX_KEPT, Pool};

/// Connection pools each new [`Upstream`] keeps: the most workers any gateway in this
/// process runs (set before its bots are built).
static POOLS: AtomicUsize = AtomicUsize::new(1);

/// Called by the server with its worker count before it builds upstreams.
pub fn plan_pools(workers: usize) {
    POOLS.fetch_max(workers, Ordering::Relaxed);
}

/// Host, credential, accept, content type, request id, forwarded-for, bot agent, and one
/// passed through from the client.
const REQUEST_HEADERS: usize = 8;

pub struct Upstream {
    authority: Authority,
    /// Path of the base URL without a trailing slash: `""`, or `/.bot` for the App Service extension.
    base_path: String,
    host: HeaderValue,
    /// Connections kept per worker thread (see [`crate::workers`]).
    pool: Pool,
    tls: Arc<rustls::ClientConfig>,
    stream_pin: StreamUrlPin,
}

/// rustls client configuration with the ring provider, the webpki roots and, for private
/// upstreams, the CA certificates of `extra_ca` (PEM); shared by the REST client and the
/// upstream WebSocket connector.
pub fn tls_client_config(extra_ca: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, String> {
    let mut roots =
        rustls::RootCertStore::from_iter(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = extra_ca {
        let pem = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| format!("{}: {e}", path.display()))?;
            roots
                .add(cert)
                .map_err(|e| format!("{}: {e}", path.display()))?;
            added += 1;
        }
        if added == 0 {
            return Err(format!("{}: no PEM certificate", path.display()));
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .expect("ring supports the default TLS versions")
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

impl Upstream {
    pub fn new(
        base: &Url,
        connect_timeout: Duration,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, GatewayError> {
        let scheme = match base.scheme() {
            "https" => Scheme::HTTPS,
            "http" => Scheme::HTTP,
            _ => {
                return Err(GatewayError::internal(
                    "an upstream URL neither https nor http",
                ));
            }
        };
        let host = base
            .host_str()
            .ok_or(GatewayError::internal("an upstream URL without a host"))?;
        let authority_text = match base.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let authority: Authority = authority_text.parse().map_err(|error| {
            GatewayError::internal_because("the upstream host is no URI authority", error)
        })?;
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(connect_timeout));
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let dial = Uri::builder()
            .scheme(scheme)
            .authority(authority.clone())
            .path_and_query("/")
            .build()
            .map_err(|error| GatewayError::internal_because("the upstream's dial URI", error))?;
        let pool = Pool::new(
            connector,
            dial,
            POOLS.load(Ordering::Relaxed),
            MAX_KEPT,
            IDLE_TIMEOUT,
        );
        let stream_pin = StreamUrlPin::new(base).ok_or(GatewayError::internal(
            "no stream URL pin for the upstream URL",
        ))?;
        Ok(Self {
            stream_pin,
            host: HeaderValue::from_str(&authority_text).map_err(|error| {
                GatewayError::internal_because("the upstream host is no Host header", error)
            })?,
            authority,
            base_path: base.path().trim_end_matches('/').to_owned(),
            pool,
            tls,
        })
    }

    /// The TLS configuration upstream WebSockets are dialled with (same roots as REST).
    pub fn tls(&self) -> &Arc<rustls::ClientConfig> {
        &self.tls
    }

    /// The upstream's `host:port` (as sent in `Host`) and its bare host.
    pub fn host_names(&self) -> (&str, &str) {
        (self.host.to_str().unwrap_or(""), self.authority.host())
    }

    /// Where this upstream's stream URLs may point.
    pub fn stream_pin(&self) -> &StreamUrlPin {
        &self.stream_pin
    }

    /// The request target as sent on an HTTP/1 connection to this upstream (origin-form:
    /// the connection already names the host); `path_and_query` starts with `/v3/directline/`.
    /// Parsed once, and formatted only for a base with a path of its own.
    fn origin_form(&self, path_and_query: &str) -> Result<Uri, GatewayError> {
        let uri = if self.base_path.is_empty() {
            Uri::try_from(path_and_query)
        } else {
            Uri::try_from(format!("{}{}", self.base_path, path_and_query))
        };
        uri.map_err(|error| GatewayError::internal_because("an upstream request target", error))
    }

    /// A request to upstream with its own `Host` (PROTOCOL §0.10) and the given credential
    /// (none for a Copilot Studio environment).
    /// Built in place rather than with `Request::builder()`, whose every `.header()` moves
    /// the whole request head; room for the headers a call adds is reserved at once.
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        authorization: Option<HeaderValue>,
    ) -> Result<Request<()>, GatewayError> {
        let mut request = Request::new(());
        *request.method_mut() = method;
        *request.uri_mut() = self.origin_form(path_and_query)?;
        let headers = request.headers_mut();
        headers.reserve(REQUEST_HEADERS);
        headers.insert(header::HOST, self.host.clone());
        if let Some(authorization) = authorization {
            headers.insert(header::AUTHORIZATION, authorization);
        }
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        Ok(request)
    }

    /// Sends once. Never retried here: POST activities and uploads must not be repeated
    /// (PROTOCOL §4.2), and the callers that may retry decide that themselves.
    /// `open` gives the gauge that counts a connection opened for it while it lives.
    pub async fn send(
        &self,
        request: Request<Body>,
        timeout: Duration,
        open: impl FnOnce() -> IntGauge,
    ) -> Result<Response<Incoming>, GatewayError> {
        // Boxed: a request's handler future holds every upstream call it may make, and hyper
        // copies that future whole when it creates it; one allocation here is cheaper than
        // carrying the pool's state in it (docs/PROFILE-FINDINGS.md, round 3).
        let sending = Box::pin(self.pool.send(request, open));
        match tokio::time::timeout(timeout, sending).await {
            Err(_) => Err(GatewayError::UpstreamTimeout),
            Ok(Err(error)) => {
                if has_cause::<http_body_util::LengthLimitError>(&error) {
                    return Err(GatewayError::BodyTooLarge { limit: 0 });
                }
                if has_cause::<crate::upload_activity::LateActivity>(&error) {
                    return Err(GatewayError::MalformedUpload);
                }
                if has_cause::<crate::boxed_body::DeadlineError>(&error) {
                    return Err(GatewayError::BodyTimeout);
                }
                // Kept whole for the warn line: "client error (Connect)" alone does not
                // tell a refused port from a DNS failure or a bad certificate.
                Err(GatewayError::UpstreamUnreachable {
                    cause: crate::error::Cause::new(error),
                })
            }
            Ok(Ok(response)) => Ok(response),
        }
    }
}

/// Counts and logs an upstream stream URL that was refused, with its host only: the query
/// holds the upstream's stream ticket.
pub fn stream_url_refused(metrics: &Metrics, bot: &str, refused: &StreamUrlRefused, at: &str) {
    metrics.stream_urls_refused.with_label_values(&[bot]).inc();
    tracing::warn!(
        bot,
        at,
        host = refused.host(),
        reason = match refused {
            StreamUrlRefused::Invalid => "not a ws/wss URL the gateway can dial",
            StreamUrlRefused::Foreign { .. } =>
                "not on the bot's upstream host, port, scheme and path",
        },
        "upstream stream URL refused"
    );
}

/// Whether a request failed because our own request body ended it (a limit, a deadline).
fn has_cause<E: std::error::Error + 'static>(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut source = Some(error);
    while let Some(e) = source {
        if e.is::<E>() {
            return true;
        }
        source = e.source();
    }
    false
}
