//! How much a client socket's kernel buffer may hold unsent (`stream.client_unsent_bytes`).
//!
//! Linux grows a socket's send buffer up to 4 MB (`tcp_wmem`): a client that stops reading
//! would have every interim of an answer "sent" into it, and none could be replaced by a
//! newer one. With `TCP_NOTSENT_LOWAT` a write stops being accepted once that many bytes
//! wait unsent, so what a slow reader has not taken stays in the hub, where a newer interim
//! replaces it. Bytes already in flight (sent, unacknowledged) are bounded by the peer's
//! receive window as usual.

/// Applies the bound to an accepted client connection; zero leaves the kernel's default.
/// A failure only loses the coalescing, so it is logged at debug and ignored.
#[cfg(target_os = "linux")]
pub fn bound_unsent(stream: &tokio::net::TcpStream, bytes: usize) {
    if bytes == 0 {
        return;
    }
    let lowat = u32::try_from(bytes).unwrap_or(u32::MAX);
    if let Err(error) = socket2::SockRef::from(stream).set_tcp_notsent_lowat(lowat) {
        tracing::debug!(%error, "TCP_NOTSENT_LOWAT not set");
    }
}

/// Elsewhere the option does not exist; the kernel's own buffering applies.
#[cfg(not(target_os = "linux"))]
pub fn bound_unsent(_stream: &tokio::net::TcpStream, _bytes: usize) {}
