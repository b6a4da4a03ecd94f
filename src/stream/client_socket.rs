//! A classic stream client's WebSocket, the server side of it, without tungstenite: reads
//! go through [`FrameReader`] from the per-worker scratch buffer (an idle socket keeps no
//! read buffer), and writes are encoded here, gathered per wake-up into one buffer that
//! exists only between the first frame queued and the flush that writes them all.
//!
//! The handshake is the route's (`routes::stream`): this takes the upgraded connection.
//! What a client sends on the classic stream is read and checked (masking, control frame
//! rules, close codes, UTF-8, the message limit, fragments bounded by it) and, apart from
//! pings (answered) and a close (echoed), ignored by the session.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncWrite;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;

use super::gathered_writes::GATHER_LIMIT;
use super::ws_frames::{
    FrameReader, Incoming, MAX_HEADER, ReadError, Reading, opcode, push_server_close,
    push_server_frame, read_message,
};

pub struct ClientSocket<S = TokioIo<Upgraded>> {
    io: S,
    reader: FrameReader,
    /// Frames queued since the last flush; empty (no allocation) when idle.
    out: Vec<u8>,
    /// How much of `out` the socket has taken: a flush cut short (a timeout, a slow
    /// client) goes on from here, so a later close frame still follows whole frames.
    written: usize,
}

impl<S> ClientSocket<S> {
    /// `max_message` bounds a client's message, its fragments together.
    pub fn new(io: S, max_message: usize) -> Self {
        Self {
            io,
            reader: FrameReader::new(Reading::AsServer, max_message),
            out: Vec::new(),
            written: 0,
        }
    }

    /// Bytes this socket holds in buffers: none once everything queued is written and no
    /// frame is half read.
    #[cfg(test)]
    fn held_bytes(&self) -> usize {
        self.out.capacity() + self.reader.held_bytes()
    }
}

impl<S: tokio::io::AsyncRead + AsyncWrite + Unpin> ClientSocket<S> {
    /// Queues a text frame for the next flush. Past [`GATHER_LIMIT`] gathered bytes what is
    /// queued is written first, so a long catch-up is not copied into one large buffer and
    /// a slow reader pushes back on its task.
    pub async fn feed_text(&mut self, text: &[u8]) -> io::Result<()> {
        if !self.out.is_empty() && self.out.len() + MAX_HEADER + text.len() > GATHER_LIMIT {
            self.flush().await?;
        }
        push_server_frame(&mut self.out, opcode::TEXT, text);
        Ok(())
    }

    /// A text frame, written now (with anything queued before it).
    pub async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.feed_text(text).await?;
        self.flush().await
    }

    /// The answer to a ping: its payload back (RFC 6455 §5.5.3).
    pub async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        push_server_frame(&mut self.out, opcode::PONG, payload);
        self.flush().await
    }

    /// A close frame, after anything queued; the connection is dropped by the caller.
    pub async fn close(&mut self, frame: Option<&CloseFrame>) -> io::Result<()> {
        push_server_close(&mut self.out, frame);
        self.flush().await?;
        // The server closes the TCP connection first (RFC 6455 §7.1.1).
        std::future::poll_fn(|cx| Pin::new(&mut self.io).poll_shutdown(cx)).await
    }

    /// Writes what is queued, then frees the buffer.
    pub async fn flush(&mut self) -> io::Result<()> {
        std::future::poll_fn(|cx| self.poll_flush(cx)).await
    }

    fn poll_flush(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.out.len() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        if !self.out.is_empty() {
            self.out = Vec::new();
            self.written = 0;
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// The client's next message. Cancel-safe: a read either decodes what it got or
    /// leaves nothing.
    pub async fn read(&mut self) -> Result<Incoming, ReadError> {
        read_message(&mut self.io, &mut self.reader).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ws_frames::{Violation, apply_mask};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        assert!(payload.len() < 126);
        let key = [1, 2, 3, 4];
        let mut out = vec![first, 0x80 | payload.len() as u8];
        out.extend_from_slice(&key);
        let mut body = payload.to_vec();
        apply_mask(&mut body, key);
        out.extend(body);
        out
    }

    #[tokio::test]
    async fn queued_frames_leave_in_one_write_at_the_flush_and_the_buffer_is_freed() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = ClientSocket::new(near, 1024);
        socket.feed_text(b"one").await.unwrap();
        socket.feed_text(&[b'x'; 300]).await.unwrap();
        assert!(socket.held_bytes() > 0);
        socket.flush().await.unwrap();
        assert_eq!(socket.held_bytes(), 0, "nothing held once written");
        let mut got = vec![0u8; 5 + 4 + 300];
        far.read_exact(&mut got).await.unwrap();
        assert_eq!(&got[..5], b"\x81\x03one");
        assert_eq!(&got[5..9], &[0x81, 126, 1, 44]);
        assert!(got[9..].iter().all(|&b| b == b'x'));
    }

    #[tokio::test]
    async fn pings_come_back_as_pongs_and_a_close_carries_its_code() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = ClientSocket::new(near, 1024);
        far.write_all(&masked(0x89, b"hi")).await.unwrap();
        let Ok(Incoming::Ping(payload)) = socket.read().await else {
            panic!("a ping");
        };
        socket.pong(&payload).await.unwrap();
        let frame = CloseFrame {
            code: 1013.into(),
            reason: "later".into(),
        };
        socket.close(Some(&frame)).await.unwrap();
        let mut got = Vec::new();
        far.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, b"\x8a\x02hi\x88\x07\x03\xf5later");
    }

    #[tokio::test]
    async fn a_flush_cut_short_goes_on_where_it_stopped_and_a_close_follows_whole_frames() {
        // Room for 64 bytes: the 304-byte frame cannot all be taken while nobody reads.
        let (near, mut far) = tokio::io::duplex(64);
        let mut socket = ClientSocket::new(near, 1024);
        socket.feed_text(&[b'x'; 300]).await.unwrap();
        let cut = tokio::time::timeout(std::time::Duration::from_millis(20), socket.flush()).await;
        assert!(cut.is_err(), "the flush waits for a reader");
        let reader = tokio::spawn(async move {
            let mut got = Vec::new();
            far.read_to_end(&mut got).await.unwrap();
            got
        });
        socket.close(None).await.unwrap();
        drop(socket);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), 4 + 300 + 2);
        assert_eq!(&got[..4], &[0x81, 126, 1, 44]);
        assert!(got[4..304].iter().all(|&b| b == b'x'));
        assert_eq!(&got[304..], b"\x88\x00");
    }

    #[tokio::test]
    async fn an_unmasked_client_frame_is_a_violation() {
        let (near, mut far) = tokio::io::duplex(1 << 20);
        let mut socket = ClientSocket::new(near, 1024);
        far.write_all(b"\x81\x02hi").await.unwrap();
        assert!(matches!(
            socket.read().await,
            Err(ReadError::Violation(Violation::Protocol(_)))
        ));
    }
}
