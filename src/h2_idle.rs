//! Closes an HTTP/2 connection that has had no open stream for `limits.http2_idle_timeout`.
//!
//! An idle HTTP/1.1 keep-alive connection ends at hyper's header read timeout; hyper has no
//! such timer for HTTP/2, whose keep-alive pings only find peers that went away. Without
//! this, a client that made one request and then answers pings holds a connection (and a
//! place under `max_connections`) forever. A stream counts as open from its request until
//! its response body has been sent or dropped, so a long response is never cut.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::Instant;

use crate::boxed_body::Body;

/// One connection's open HTTP/2 streams and since when it has had none.
pub struct Streams {
    start: Instant,
    http2: AtomicBool,
    open: AtomicUsize,
    /// Milliseconds after `start` when the last open stream ended.
    idle_since_ms: AtomicU64,
}

impl Default for Streams {
    fn default() -> Self {
        Self {
            start: Instant::now(),
            http2: AtomicBool::new(false),
            open: AtomicUsize::new(0),
            idle_since_ms: AtomicU64::new(0),
        }
    }
}

impl Streams {
    /// A stream of this connection opened: it is HTTP/2, and busy until the guard drops.
    pub fn open(self: &Arc<Self>) -> OpenStream {
        if !self.http2.load(Ordering::Relaxed) {
            self.http2.store(true, Ordering::Relaxed);
        }
        self.open.fetch_add(1, Ordering::AcqRel);
        OpenStream(self.clone())
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// How much longer the connection may stay idle; `None` while it is busy or not HTTP/2.
    fn idle_left(&self, timeout: Duration) -> Option<Duration> {
        self.idle_left_at(self.now_ms(), timeout)
    }

    fn idle_left_at(&self, now_ms: u64, timeout: Duration) -> Option<Duration> {
        if !self.http2.load(Ordering::Relaxed) || self.open.load(Ordering::Acquire) > 0 {
            return None;
        }
        let idle_for = now_ms.saturating_sub(self.idle_since_ms.load(Ordering::Acquire));
        Some(timeout.saturating_sub(Duration::from_millis(idle_for)))
    }
}

/// Held by a request's response body; its drop ends the stream.
pub struct OpenStream(Arc<Streams>);

impl Drop for OpenStream {
    fn drop(&mut self) {
        let streams = &self.0;
        streams
            .idle_since_ms
            .store(streams.now_ms(), Ordering::Release);
        streams.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A response body that keeps its stream counted as open until it ends or is dropped.
pub struct Tracked {
    body: Body,
    _open: Option<OpenStream>,
}

impl Tracked {
    pub fn new(body: Body, open: Option<OpenStream>) -> Self {
        Self { body, _open: open }
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = <Body as HttpBody>::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// Runs `connection` to its end, unless it is HTTP/2 and has had no open stream for
/// `timeout`: then it is dropped (the socket closes) and `None` is returned. A zero
/// `timeout` turns this off.
///
/// Boxed for the reason [`crate::admission::within_first_request`] gives.
pub async fn close_when_idle<T>(
    mut connection: Pin<Box<dyn Future<Output = T> + Send>>,
    streams: Arc<Streams>,
    timeout: Duration,
) -> Option<T> {
    if timeout.is_zero() {
        return Some(connection.await);
    }
    loop {
        // One timer per `timeout` while busy; an idle connection's fires when it is due.
        let wait = streams.idle_left(timeout).unwrap_or(timeout);
        if wait.is_zero() {
            return None;
        }
        tokio::select! {
            output = connection.as_mut() => return Some(output),
            () = tokio::time::sleep(wait) => {}
        }
        if streams.idle_left(timeout) == Some(Duration::ZERO) {
            return None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_an_http2_connection_without_open_streams_is_idle() {
        let streams = Arc::new(Streams::default());
        let timeout = Duration::from_secs(10);
        assert_eq!(streams.idle_left_at(0, timeout), None, "not HTTP/2 (yet)");
        let open = streams.open();
        assert_eq!(
            streams.idle_left_at(30_000, timeout),
            None,
            "a stream is open"
        );
        drop(open);
        let ended = streams.idle_since_ms.load(Ordering::Acquire);
        assert_eq!(streams.idle_left_at(ended, timeout), Some(timeout));
        assert_eq!(
            streams.idle_left_at(ended + 4_000, timeout),
            Some(Duration::from_secs(6))
        );
        assert_eq!(
            streams.idle_left_at(ended + 10_000, timeout),
            Some(Duration::ZERO)
        );
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let streams = Arc::new(Streams::default());
        drop(streams.open());
        let never = Box::pin(std::future::pending::<()>());
        let closed = tokio::time::timeout(
            Duration::from_secs(20),
            close_when_idle(never, streams, Duration::from_millis(10)),
        )
        .await
        .expect("closed");
        assert_eq!(closed, None);

        // Open the whole time, far past the timeout: never closed.
        let busy = Arc::new(Streams::default());
        let open = busy.open();
        let finishes = Box::pin(async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            7
        });
        assert_eq!(
            close_when_idle(finishes, busy, Duration::from_millis(10)).await,
            Some(7)
        );
        drop(open);
    }
}
