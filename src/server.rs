//! Listeners and connections: the client listener, the admin listener, and the whole process.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderValue, Request, Response, StatusCode, header};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::body::{self, Body};
use crate::config::{Config, UpstreamTarget};
use crate::emulator::{self, EmulatorConfig, EmulatorHandle};
use crate::gateway::Gateway;
use crate::metrics::Metrics;
use crate::seal::Sealer;
use crate::secret::Secret;
use crate::upstream::Upstream;

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Config(String),
}

/// A running gateway: its addresses, its state, and the handle that stops it.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The embedded emulator when `upstream = embedded`.
    pub emulator: Option<EmulatorHandle>,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

/// Installs ring as rustls's process-wide provider (ENVIRONMENT.md: if another crate ever
/// enabled a second provider, `ClientConfig::builder()` would otherwise panic).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Binds the configured addresses and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let client = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.admin_listen,
            source,
        })?;
    start_on(config, client, admin).await
}

/// Starts serving on listeners the caller bound (tests bind `127.0.0.1:0`).
pub async fn start_on(
    config: Config,
    client: TcpListener,
    admin: TcpListener,
) -> Result<Running, StartError> {
    install_crypto_provider();
    let (upstream_url, secret, emulator) = match &config.upstream {
        UpstreamTarget::Url(url) => {
            let secret = config
                .secret
                .clone()
                .ok_or_else(|| StartError::Config("no Direct Line secret".into()))?;
            (url.clone(), secret, None)
        }
        UpstreamTarget::Embedded => {
            let listener = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0)))
                .await
                .map_err(|source| StartError::Bind {
                    addr: SocketAddr::from(([127, 0, 0, 1], 0)),
                    source,
                })?;
            let secret = config.secret.clone().unwrap_or_else(random_secret);
            let handle = emulator::spawn(
                listener,
                EmulatorConfig {
                    secret: secret.clone(),
                    ..EmulatorConfig::default()
                },
            );
            let url = url::Url::parse(&handle.base_url())
                .map_err(|e| StartError::Config(e.to_string()))?;
            (url, secret, Some(handle))
        }
    };
    let upstream = Upstream::new(&upstream_url, config.timeouts.connect)
        .map_err(|_| StartError::Config("upstream URL".into()))?;
    let sealer = match &config.token_key {
        Some(key) => {
            let previous: Vec<String> = config
                .previous_token_keys
                .iter()
                .map(|k| k.expose().to_owned())
                .collect();
            Sealer::new(key.expose(), &previous).map_err(|e| StartError::Config(e.to_string()))?
        }
        None => {
            tracing::warn!(
                "no token key configured: tokens are sealed with a random per-process key, so other replicas and restarts cannot open them"
            );
            Sealer::ephemeral()
        }
    };
    let client_addr = client.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        addr: config.admin_listen,
        source,
    })?;
    let metrics = Arc::new(Metrics::new());
    let gateway = Gateway::new(config, secret, sealer, upstream, metrics);
    let (stop, stopped) = watch::channel(false);
    let tasks = vec![
        tokio::spawn(serve_client(client, gateway.clone(), stopped.clone())),
        tokio::spawn(serve_admin(admin, gateway.clone(), stopped)),
    ];
    Ok(Running {
        gateway,
        client_addr,
        admin_addr,
        emulator,
        stop,
        tasks,
    })
}

impl Running {
    /// Drains: readiness false, no new connections, client sockets closed with 1001,
    /// in-flight requests given up to the grace period.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        let _ = self.stop.send(true);
        let grace = self.gateway.config.shutdown_grace;
        for task in self.tasks {
            let _ = tokio::time::timeout(grace + Duration::from_secs(1), task).await;
        }
        if let Some(emulator) = &self.emulator {
            emulator.shutdown();
        }
    }
}

fn random_secret() -> Secret {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("OS random source unavailable");
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn connection_builder(gateway: &Gateway) -> auto::Builder<TokioExecutor> {
    let limits = &gateway.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own buffer is larger than our limits so oversized URLs and headers reach the
    // handler and get a Direct Line-shaped 414/431 instead of a bare one.
    let buffer = (limits.max_header_bytes + limits.max_url_bytes + 4096).max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(buffer);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(buffer as u32);
    builder
}

async fn serve_client(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = connection_builder(&gateway);
    let graceful = GracefulShutdown::new();
    let local = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(pair) => pair,
                    Err(error) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(%error, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let gateway = gateway.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(gateway.handle(request, peer, local).await) }
                });
                let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
                let connection = graceful.watch(connection.into_owned());
                tokio::spawn(async move {
                    if let Err(error) = connection.await {
                        tracing::debug!(error = %error, "client connection ended with an error");
                    }
                });
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let grace = gateway.config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
}

async fn serve_admin(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = connection_builder(&gateway);
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((stream, _)) = accepted else { continue };
                let gateway = gateway.clone();
                let service = service_fn(move |request: Request<Incoming>| {
                    let gateway = gateway.clone();
                    async move { Ok::<_, Infallible>(admin(&gateway, &request)) }
                });
                let connection = builder.serve_connection(TokioIo::new(stream), service).into_owned();
                tokio::spawn(async move {
                    let _ = connection.await;
                });
            }
            _ = stop.changed() => break,
        }
    }
}

/// `/healthz` (the process answers), `/readyz` (serving and not draining; deliberately not
/// tied to Direct Line reachability, so an upstream outage restarts nothing), `/metrics`.
fn admin(gateway: &Gateway, request: &Request<Incoming>) -> Response<Body> {
    let (status, content_type, text) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if gateway.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        "/readyz" => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
        "/metrics" => (
            StatusCode::OK,
            "text/plain; version=0.0.4",
            gateway.metrics.render(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_owned(),
        ),
    };
    let mut response = Response::new(body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
