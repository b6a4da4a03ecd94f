//! A voice-route (multimodal) client socket's writes gathered per wake-up: one write
//! syscall for every frame queued. Classic client sockets gather their own
//! (`client_socket`), with the same [`GATHER_LIMIT`].
//!
//! tungstenite writes each frame to its stream as soon as it is fed (the gateway keeps
//! tungstenite's own write buffer at zero so an idle socket holds none), so a client task
//! that feeds ten queued frames and then flushes made ten `write`s. [`GatheredWrites`] takes
//! the fed bytes into a buffer that exists only between the first feed and the flush: the
//! flush writes them at once and frees the buffer, so an idle socket still holds nothing.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Past this many gathered bytes a feed writes them out first: a long catch-up is not copied
/// into one large buffer, and a slow reader pushes back on its task as before.
pub(super) const GATHER_LIMIT: usize = 64 * 1024;

pub struct GatheredWrites<S> {
    inner: S,
    /// Bytes fed since the last flush; empty (no allocation) when idle.
    gathered: Vec<u8>,
    /// How much of `gathered` the socket has taken.
    written: usize,
}

impl<S> GatheredWrites<S> {
    pub fn new(inner: S) -> Self {
        Self {
            inner,
            gathered: Vec::new(),
            written: 0,
        }
    }
}

impl<S: AsyncWrite + Unpin> GatheredWrites<S> {
    /// Writes out what is gathered, then frees the buffer.
    fn poll_write_gathered(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.gathered.len() {
            let n =
                ready!(Pin::new(&mut self.inner).poll_write(cx, &self.gathered[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.gathered = Vec::new();
        self.written = 0;
        Poll::Ready(Ok(()))
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for GatheredWrites<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for GatheredWrites<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if !this.gathered.is_empty() && this.gathered.len() + buf.len() > GATHER_LIMIT {
            ready!(this.poll_write_gathered(cx))?;
        }
        if this.gathered.is_empty() && buf.len() >= GATHER_LIMIT {
            // Large enough to be its own write: not copied.
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.gathered.extend_from_slice(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_gathered(cx))?;
        Pin::new(&mut this.inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_write_gathered(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn fed_bytes_reach_the_socket_only_at_the_flush_in_order_and_the_buffer_is_freed() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writer = GatheredWrites::new(near);
        writer.write_all(b"one ").await.expect("write");
        writer.write_all(b"two").await.expect("write");
        let mut probe = [0u8; 16];
        let early =
            tokio::time::timeout(std::time::Duration::from_millis(50), far.read(&mut probe)).await;
        assert!(early.is_err(), "nothing written before the flush");
        writer.flush().await.expect("flush");
        assert_eq!(writer.gathered.capacity(), 0, "freed once written");
        let n = far.read(&mut probe).await.expect("read");
        assert_eq!(&probe[..n], b"one two");
    }

    #[tokio::test]
    async fn past_the_limit_a_feed_writes_what_is_gathered_first() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut writer = GatheredWrites::new(near);
        let chunk = vec![7u8; GATHER_LIMIT / 2 + 1];
        writer.write_all(&chunk).await.expect("write");
        writer.write_all(&chunk).await.expect("write");
        assert_eq!(writer.gathered.len(), chunk.len(), "the first went out");
        writer
            .write_all(&vec![1u8; GATHER_LIMIT])
            .await
            .expect("write");
        writer.flush().await.expect("flush");
        let mut all = Vec::new();
        drop(writer);
        far.read_to_end(&mut all).await.expect("read");
        assert_eq!(all.len(), chunk.len() * 2 + GATHER_LIMIT);
        assert!(all[..chunk.len() * 2].iter().all(|&b| b == 7));
        assert!(all[chunk.len() * 2..].iter().all(|&b| b == 1));
    }
}
