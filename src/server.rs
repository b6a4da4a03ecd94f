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

use crate::admission::{FirstRequest, IpSlot, PerIp, within_first_request};
use crate::boxed_body::{self, Body};
use crate::config::{Config, ConfigError, UpstreamTarget};
use crate::forwarded::{client_key, is_trusted};
use crate::gateway::Gateway;
use crate::h2_idle;
use crate::metrics::Metrics;
use crate::pipeline::{self, Connection};
use crate::reload::{BuildError, ReloadError, bot_names, build_live, check_reloadable};
use crate::secret::Secret;
use crate::tls::ListenerTls;
use crate::workers::{self, Placed, Workers};
use directline_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// `listener` is the key the address came from (`listen`, `admin_listen`), so "address
    /// in use" says which of the two clashed.
    #[error("cannot listen on {addr} ({listener}): {source}")]
    Bind {
        listener: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("invalid configuration: {0}")]
    Build(#[from] BuildError),
    /// The certificate or key of `tls` could not be loaded (the text names the file).
    #[error("tls: {0}")]
    Tls(String),
    /// `[record]`: its directory or threads could not be set up.
    #[error("record: {0}")]
    Record(String),
    #[error("cannot start {count} worker threads (workers): {source}")]
    Workers {
        count: usize,
        source: std::io::Error,
    },
}

/// A running gateway: its addresses, its state, and the handle that stops it.
pub struct Running {
    pub gateway: Arc<Gateway>,
    pub client_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    /// The first embedded bot's emulator (the default bot's in the no-argument run).
    pub emulator: Option<EmulatorHandle>,
    /// Every embedded bot's emulator, by bot name, in configuration order.
    pub emulators: Vec<(String, EmulatorHandle)>,
    stop: watch::Sender<bool>,
    /// The admin listener stops last: /readyz must say 503 and /metrics and /healthz keep
    /// answering (a liveness probe must not kill a draining pod) until the drain is over.
    stop_admin: watch::Sender<bool>,
    client_task: JoinHandle<()>,
    admin_task: JoinHandle<()>,
    /// Endless housekeeping (certificate watch, rate-bucket sweep), aborted at shutdown.
    background: Vec<JoinHandle<()>>,
    /// The threads client connections run on; they stop when this is dropped (after the
    /// drain, or with a `Running` dropped without one).
    workers: Arc<Workers>,
}

/// Installs ring as rustls's process-wide provider: if another crate ever enabled a second
/// provider, `ClientConfig::builder()` would otherwise panic.
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Binds the configured addresses and starts serving.
pub async fn start(config: Config) -> Result<Running, StartError> {
    let client = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            listener: "listen",
            addr: config.listen,
            source,
        })?;
    let admin = TcpListener::bind(config.admin_listen)
        .await
        .map_err(|source| StartError::Bind {
            listener: "admin_listen",
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
    // Before the bots: each upstream keeps one connection pool per worker.
    let workers = Arc::new(
        Workers::start(workers::resolve(config.workers)).map_err(|source| StartError::Workers {
            count: config.workers,
            source,
        })?,
    );
    crate::upstream::client::plan_pools(workers.count());
    let mut emulators = Vec::new();
    for bot in &config.bots {
        if bot.upstream != UpstreamTarget::Embedded {
            continue;
        }
        let loopback = SocketAddr::from(([127, 0, 0, 1], 0));
        let listener = TcpListener::bind(loopback)
            .await
            .map_err(|source| StartError::Bind {
                listener: "embedded emulator",
                addr: loopback,
                source,
            })?;
        let secret = bot.secret.clone().unwrap_or_else(random_secret);
        let handle = emulator::spawn(
            listener,
            EmulatorConfig {
                secret: emulator::Secret::new(secret.expose()),
                ..EmulatorConfig::default()
            },
        );
        emulators.push((bot.name.clone(), handle));
    }
    // Before the settings: a bot's signed-in mode counts its key fetches from the start.
    let metrics = Arc::new(Metrics::new());
    let live = build_live(config, &emulators, None, &metrics)?;
    warn_any_origin(&live.config);
    let client_addr = client.local_addr().map_err(|source| StartError::Bind {
        listener: "listen",
        addr: live.config.listen,
        source,
    })?;
    let admin_addr = admin.local_addr().map_err(|source| StartError::Bind {
        listener: "admin_listen",
        addr: live.config.admin_listen,
        source,
    })?;
    let listener_tls = match &live.config.tls {
        Some(files) => Some(Arc::new(ListenerTls::new(files).map_err(StartError::Tls)?)),
        None => None,
    };
    metrics.initialise(&bot_names(&live));
    metrics.initialise_workers(workers.count());
    let record = match &live.config.record {
        Some(settings) => Some(
            crate::record::Recorder::start(settings, metrics.clone())
                .map_err(StartError::Record)?,
        ),
        None => None,
    };

    let gateway = Gateway::new(live, metrics, record);
    // Each bot's secret, before the listeners answer: with a wrong one /readyz is 503 from
    // the first probe. Bounded; an upstream that does not answer is checked in the background.
    if gateway.live().config.check_credentials {
        let timeouts = gateway.live().config.timeouts.clone();
        crate::upstream::credential::check_all(&gateway, timeouts.connect + timeouts.default).await;
    }
    let (stop, stopped) = watch::channel(false);
    let (stop_admin, admin_stopped) = watch::channel(false);
    let client_task = tokio::spawn(serve_client(
        client,
        gateway.clone(),
        listener_tls.clone(),
        workers.clone(),
        stopped,
    ));
    let admin_task = tokio::spawn(serve_admin(admin, gateway.clone(), admin_stopped));
    let mut background = vec![
        tokio::spawn(sweep_rate_limits(gateway.clone())),
        // Copilot Studio bots learn their Direct Line host in the background, from the first
        // moment: the gateway serves at once (their Direct Line routes answer 503 with
        // Retry-After until it is known), so an environment that hangs delays nothing else.
        // Also for configurations without a Copilot Studio bot: a reload may add one.
        tokio::spawn(crate::upstream::discovery::run(gateway.clone())),
    ];
    if let Some(tls) = listener_tls {
        background.push(tokio::spawn(tls.watch(gateway.metrics.clone())));
    }
    Ok(Running {
        gateway,
        client_addr,
        admin_addr,
        emulator: emulators.first().map(|(_, handle)| handle.clone()),
        emulators,
        stop,
        stop_admin,
        client_task,
        admin_task,
        background,
        workers,
    })
}

/// What `directline-gateway validate` checks beyond loading the configuration: the files
/// only a start reads (the listener's certificate and key, each bot's upstream CA file).
/// Binds nothing and starts nothing.
pub fn check_files(config: &Config) -> Result<(), StartError> {
    install_crypto_provider();
    if let Some(files) = &config.tls {
        ListenerTls::new(files).map_err(StartError::Tls)?;
    }
    for bot in &config.bots {
        crate::upstream::client::tls_client_config(bot.upstream_ca_file.as_deref()).map_err(
            |message| {
                StartError::Build(BuildError::UpstreamCa {
                    bot: bot.name.clone(),
                    message,
                })
            },
        )?;
    }
    Ok(())
}

/// Reachable from other machines with no `allowed_origins`: any web site can mint tokens
/// for the bot from its visitors' browsers. Said once at start; a loopback listener (a
/// developer's machine, a sidecar behind a proxy on the same host) is left alone.
fn warn_any_origin(config: &Config) {
    if config.listen.ip().is_loopback() {
        return;
    }
    for bot in config
        .bots
        .iter()
        .filter(|bot| bot.allowed_origins.is_empty())
    {
        tracing::warn!(
            bot = %bot.name,
            listen = %config.listen,
            "allowed_origins is empty: a page on any web site can get tokens for this bot and talk to it through the gateway; list the sites that embed the chat"
        );
    }
}

impl Running {
    /// Applies a new configuration without dropping a socket: new requests and upstream
    /// reconnects use the new secret and keys at once; the replaced token key keeps opening
    /// tokens for `token_key_overlap`. Listeners and the upstream mode need a restart.
    /// `loaded` is the result of reading the configuration again: a file that no longer
    /// parses is refused like any other invalid configuration.
    pub fn reload(&self, loaded: Result<Config, ConfigError>) -> Result<(), ReloadError> {
        let current = self.gateway.live_owned();
        let result = loaded.map_err(ReloadError::from).and_then(|mut config| {
            check_reloadable(&current.config, &config)?;
            config.check_credentials = current.config.check_credentials;
            Ok(build_live(
                config,
                &self.emulators,
                Some(&current),
                &self.gateway.metrics,
            )?)
        });
        let outcome = match result {
            Ok(live) => {
                let names: Vec<Arc<str>> = live.bots.iter().map(|b| b.name.clone()).collect();
                self.gateway.metrics.initialise(&bot_names(&live));
                self.gateway.replace_live(live);
                self.gateway
                    .hubs
                    .close_removed_bots(|bot| names.iter().any(|n| &**n == bot));
                tracing::info!(bots = names.len(), "configuration reloaded");
                // The secrets again (each reloaded bot starts unjudged), in the background:
                // the reload itself never waits on Direct Line.
                if current.config.check_credentials {
                    let gateway = self.gateway.clone();
                    tokio::spawn(async move {
                        crate::upstream::credential::check_all(&gateway, Duration::ZERO).await;
                    });
                }
                Ok(())
            }
            Err(error) => {
                tracing::error!(%error, "configuration reload refused; the previous one keeps serving");
                Err(error)
            }
        };
        self.gateway
            .metrics
            .config_reloads
            .with_label_values(&[if outcome.is_ok() { "ok" } else { "error" }])
            .inc();
        outcome
    }

    /// Drains (ARCHITECTURE §5): readiness false and the client listener closed at once; REST
    /// requests in flight get `shutdown_grace`; at the same time open client sockets are
    /// served for `stream.drain_period`, then closed with 1001 over `stream.drain_spread`.
    /// Embedded emulators and the admin listener stop when both are done.
    pub async fn shutdown(self) {
        self.gateway.start_draining();
        let _ = self.stop.send(true);
        for task in &self.background {
            task.abort();
        }
        let grace = self.gateway.live().config.shutdown_grace;
        let requests = tokio::time::timeout(grace + Duration::from_secs(1), self.client_task);
        let (_, ()) = tokio::join!(requests, self.gateway.drain_streams());
        let _ = self.stop_admin.send(true);
        let _ = self.admin_task.await;
        for (_, emulator) in &self.emulators {
            emulator.shutdown();
        }
        // Last: the drain's own spans go out too.
        if let Some(telemetry) = self.gateway.telemetry.clone() {
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        drop(self.workers);
    }

    /// Client connections each worker thread serves now.
    pub fn worker_loads(&self) -> Vec<usize> {
        self.workers.loads()
    }
}

/// Rate buckets that refilled are dropped every half minute, so the maps hold only callers
/// seen recently.
async fn sweep_rate_limits(gateway: Arc<Gateway>) {
    let mut ticks = tokio::time::interval(Duration::from_secs(30));
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticks.tick().await;
        gateway.sweep_limits();
    }
}

/// Counts an open client connection until dropped with its task.
struct OpenConnection(prometheus::IntGauge);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.dec();
    }
}

fn random_secret() -> Secret {
    let mut bytes = [0u8; 24];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut bytes)
        .expect("OS random source unavailable");
    Secret::new(bytes.iter().map(|b| format!("{b:02x}")).collect::<String>())
}

fn connection_builder(gateway: &Gateway) -> auto::Builder<TokioExecutor> {
    let live = gateway.live();
    let limits = &live.config.limits;
    let mut builder = auto::Builder::new(TokioExecutor::new());
    // hyper's own buffer is larger than our limits so oversized URLs and headers reach the
    // handler and get a Direct Line-shaped 414/431 instead of a bare one.
    let buffer = (limits.max_header_bytes + limits.max_url_bytes + 4096).max(8192);
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_headers(limits.max_header_count)
        .max_buf_size(buffer);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_header_list_size(buffer as u32)
        // Finds peers that went away without a FIN; idle-but-alive HTTP/2 connections are
        // bounded by the connection caps.
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    builder
}

async fn serve_client(
    listener: TcpListener,
    gateway: Arc<Gateway>,
    tls: Option<Arc<ListenerTls>>,
    workers: Arc<Workers>,
    mut stop: watch::Receiver<bool>,
) {
    let builder = connection_builder(&gateway);
    let graceful = GracefulShutdown::new();
    let per_ip = Arc::new(PerIp::default());
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
                // Past the cap the socket is closed at once: cheaper than any answer, and a
                // flood cannot grow memory or file descriptors further.
                // An upgraded connection leaves hyper's count and joins the WebSocket gauge.
                let connections = &gateway.metrics.client_connections;
                let open_now = connections.get() + gateway.metrics.open_client_sockets();
                let (max_connections, max_per_ip, first_request_deadline, exempt, client) = {
                    let live = gateway.live();
                    let limits = &live.config.limits;
                    (
                        limits.max_connections as i64,
                        limits.max_connections_per_ip,
                        limits.header_read_timeout,
                        is_trusted(&live.config.trusted_proxies, peer),
                        // One IPv6 client holds a whole prefix: capped as one.
                        client_key(peer.ip(), live.config.client_ipv6_prefix),
                    )
                };
                if open_now >= max_connections {
                    gateway.metrics.connections_refused.inc();
                    drop(stream);
                    continue;
                }
                // Trusted proxies carry everyone's connections: counted, never capped.
                let Some(ip_slot) = per_ip.admit(client, if exempt { 0 } else { max_per_ip }) else {
                    gateway.metrics.connections_refused_per_ip.inc();
                    drop(stream);
                    continue;
                };
                connections.inc();
                let open = OpenConnection(connections.clone());
                let _ = stream.set_nodelay(true);
                // Livestreamed answers: a bound on unsent bytes, so a slow reader's interims
                // wait where a newer one can replace them.
                crate::stream::send_buffer::bound_unsent(
                    &stream,
                    gateway.live().config.stream.client_unsent_bytes,
                );
                // Registered again by the worker's own reactor, which then does all its IO.
                let stream = match stream.into_std() {
                    Ok(stream) => stream,
                    Err(error) => {
                        tracing::debug!(%error, "accepted socket could not be handed over");
                        continue;
                    }
                };
                let serving = Serving {
                    gateway: gateway.clone(),
                    builder: builder.clone(),
                    connection: Arc::new(Connection::new(peer, local)),
                    tls: tls.clone(),
                    watcher: graceful.watcher(),
                    first_request_deadline,
                };
                workers.place(move |placed| serve_connection(serving, stream, open, ip_slot, placed));
            }
            _ = stop.changed() => break,
        }
    }
    drop(listener);
    let grace = gateway.live().config.shutdown_grace;
    if tokio::time::timeout(grace, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!(?grace, "grace period over with requests still in flight");
    }
}

/// What a worker needs to serve one accepted client connection.
struct Serving {
    gateway: Arc<Gateway>,
    builder: auto::Builder<TokioExecutor>,
    connection: Arc<Connection>,
    tls: Option<Arc<ListenerTls>>,
    watcher: hyper_util::server::graceful::Watcher,
    first_request_deadline: Duration,
}

/// One client connection, on the worker it was placed on.
async fn serve_connection(
    serving: Serving,
    stream: std::net::TcpStream,
    _open: OpenConnection,
    ip_slot: Arc<IpSlot>,
    mut placed: Placed,
) {
    placed.count_in(
        serving
            .gateway
            .metrics
            .worker_connections
            .with_label_values(&[&placed.number().to_string()]),
    );
    let stream = match tokio::net::TcpStream::from_std(stream) {
        Ok(stream) => stream,
        Err(error) => {
            tracing::debug!(%error, "accepted socket could not be registered");
            return;
        }
    };
    let Serving {
        gateway,
        builder,
        connection,
        tls,
        watcher,
        first_request_deadline,
    } = serving;
    let timeouts = gateway
        .metrics
        .client_timeouts
        .with_label_values(&["first_request"]);
    let idle_closed = gateway
        .metrics
        .client_timeouts
        .with_label_values(&["http2_idle"]);
    let first_request = Arc::new(FirstRequest::default());
    let arrived = first_request.clone();
    let idle_timeout = gateway.live().config.limits.http2_idle_timeout;
    let streams = Arc::new(h2_idle::Streams::default());
    let counted = streams.clone();
    // An upgraded WebSocket outlives this connection's task and keeps its places: under the
    // per-IP cap and in its worker's count.
    let placed = Arc::new(placed);
    let places = (ip_slot.clone(), placed.clone());
    let service = service_fn(move |mut request: Request<Incoming>| {
        arrived.arrived();
        if request.headers().contains_key(header::UPGRADE) {
            let extensions = request.extensions_mut();
            extensions.insert(places.0.clone());
            extensions.insert(places.1.clone());
        }
        // HTTP/1.1 connections are bounded by hyper's header timer; only HTTP/2 streams
        // are counted (one reference-count increment per request).
        let open = (request.version() == http::Version::HTTP_2).then(|| counted.open());
        let gateway = gateway.clone();
        let connection = connection.clone();
        async move {
            let response = pipeline::handle(&gateway, request, &connection).await;
            Ok::<_, Infallible>(response.map(|body| h2_idle::Tracked::new(body, open)))
        }
    });
    let _places = (ip_slot, placed);
    let ended = match tls {
        None => {
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            within_first_request(
                Box::pin(h2_idle::close_when_idle(
                    Box::pin(watcher.watch(connection.into_owned())),
                    streams,
                    idle_timeout,
                )),
                first_request,
                first_request_deadline,
            )
            .await
        }
        Some(tls) => {
            // The handshake runs in the connection's task, bounded like header reads, so a
            // slow or silent TLS client holds nothing but its own task.
            let stream =
                match tokio::time::timeout(first_request_deadline, tls.acceptor().accept(stream))
                    .await
                {
                    Ok(Ok(stream)) => stream,
                    Ok(Err(error)) => {
                        tracing::debug!(error = %error, "TLS handshake failed");
                        return;
                    }
                    Err(_) => {
                        tracing::debug!("TLS handshake timed out");
                        return;
                    }
                };
            let connection = builder.serve_connection_with_upgrades(TokioIo::new(stream), service);
            within_first_request(
                Box::pin(h2_idle::close_when_idle(
                    Box::pin(watcher.watch(connection.into_owned())),
                    streams,
                    idle_timeout,
                )),
                first_request,
                first_request_deadline,
            )
            .await
        }
    };
    match ended {
        None => timeouts.inc(),
        Some(None) => idle_closed.inc(),
        Some(Some(Err(error))) => {
            tracing::debug!(error = %error, "client connection ended with an error")
        }
        Some(Some(Ok(()))) => {}
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

/// `/healthz` (the process answers), `/readyz` (serving, not draining, and no bot's secret
/// refused by Direct Line; deliberately not tied to Direct Line reachability, so an
/// upstream outage takes no replica out of service), `/metrics`.
fn admin(gateway: &Gateway, request: &Request<Incoming>) -> Response<Body> {
    let (status, content_type, text) = match request.uri().path() {
        "/healthz" => (StatusCode::OK, "text/plain", "ok\n".to_owned()),
        "/readyz" if gateway.is_draining() => (
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "draining\n".to_owned(),
        ),
        "/readyz" => match gateway.refused_credentials().as_slice() {
            [] => (StatusCode::OK, "text/plain", "ready\n".to_owned()),
            refused => (
                StatusCode::SERVICE_UNAVAILABLE,
                "text/plain",
                format!(
                    "Direct Line refuses the secret of bot {}\n",
                    refused.join(", ")
                ),
            ),
        },
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
    let mut response = Response::new(boxed_body::full(text));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reload_applies_request_level_limits_and_refuses_listener_level_ones() {
        let current = Config::default();
        let mut next = Config::default();
        next.limits.activity_body_bytes = 1024;
        next.limits.max_connections = 10;
        next.bot_mut().rate_limits.sessions.per_minute = 1;
        assert!(check_reloadable(&current, &next).is_ok());
        for change in [
            (|c: &mut Config| c.limits.header_read_timeout = Duration::from_secs(1))
                as fn(&mut Config),
            |c| c.limits.max_header_count = 50,
            |c| c.limits.max_url_bytes = 1024,
            |c| c.limits.max_header_bytes = 1024,
            |c| {
                c.tls = Some(crate::config::TlsFiles {
                    cert_file: "a".into(),
                    key_file: "b".into(),
                    watch_interval: Duration::from_secs(1),
                })
            },
            |c| c.listen = SocketAddr::from(([127, 0, 0, 1], 1)),
        ] {
            let mut next = Config::default();
            change(&mut next);
            assert!(matches!(
                check_reloadable(&current, &next),
                Err(ReloadError::NeedsRestart(_))
            ));
        }
    }
}
