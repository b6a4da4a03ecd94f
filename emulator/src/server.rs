//! The listener: accepts connections, serves HTTP/1.1 (with upgrades) and h2c, and stops
//! on shutdown.

use std::sync::Arc;
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::{TcpListener, TcpStream};

use super::http;
use super::state::State;

/// How long open connections get to finish in-flight requests after shutdown.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// Pause after a failed accept (e.g. out of file descriptors) before trying again.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(20);

/// Accepts until shutdown; the listener is dropped (port closed) when this returns.
pub(super) async fn accept(listener: TcpListener, state: Arc<State>) {
    let builder = Arc::new(auto::Builder::new(TokioExecutor::new()));
    let mut shutdown = state.shutdown_signal();
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = async { shutdown.wait_for(|down| *down).await.map(|_| ()) } => return,
        };
        match accepted {
            Ok((tcp, _)) => {
                tokio::spawn(connection(tcp, builder.clone(), state.clone()));
            }
            Err(error) => {
                tracing::warn!(%error, "emulator: accept failed");
                tokio::time::sleep(ACCEPT_BACKOFF).await;
            }
        }
    }
}

async fn connection(tcp: TcpStream, builder: Arc<auto::Builder<TokioExecutor>>, state: Arc<State>) {
    // Frames and small JSON answers: latency matters more than packet count.
    let _ = tcp.set_nodelay(true);
    match state.tls.clone() {
        None => serve(tcp, builder, state).await,
        Some(tls) => match tokio_rustls::TlsAcceptor::from(tls).accept(tcp).await {
            Ok(stream) => serve(stream, builder, state).await,
            Err(error) => tracing::debug!(%error, "emulator: TLS handshake failed"),
        },
    }
}

async fn serve<T>(io: T, builder: Arc<auto::Builder<TokioExecutor>>, state: Arc<State>)
where
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut shutdown = state.shutdown_signal();
    let service = service_fn(move |request| http::handle(state.clone(), request));
    let connection = builder.serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(connection);
    tokio::select! {
        _ = connection.as_mut() => return,
        _ = async { shutdown.wait_for(|down| *down).await.map(|_| ()) } => {}
    }
    connection.as_mut().graceful_shutdown();
    let _ = tokio::time::timeout(DRAIN_GRACE, connection).await;
}

/// Forgets expired tokens now and then, until shutdown.
pub(super) async fn sweep(state: Arc<State>) {
    let period = state
        .stream_url_ttl
        .clamp(Duration::from_secs(1), Duration::from_secs(30));
    let mut shutdown = state.shutdown_signal();
    let mut interval = tokio::time::interval(period);
    loop {
        tokio::select! {
            _ = interval.tick() => state.sweep(),
            _ = async { shutdown.wait_for(|down| *down).await.map(|_| ()) } => return,
        }
    }
}
