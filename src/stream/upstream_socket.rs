//! A hub's upstream WebSocket: the client handshake and the frame reading of our own, so
//! that an idle socket holds no read buffer (tungstenite keeps one for the socket's life,
//! and its client handshake's 4 KiB chunk becomes that buffer whatever it is told).
//!
//! Reads go into a scratch buffer per worker thread (shared with the client sockets);
//! [`FrameReader`] takes the whole messages out of it and keeps only the bytes of an
//! unfinished frame. What the gateway
//! sends on this socket is small (pings, pongs, keepalive texts, a close), masked, and
//! written at once.

use std::io;
use std::sync::Arc;

use bytes::Bytes;
use http::Uri;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::handshake::{client::generate_key, derive_accept_key};

pub use super::ws_frames::ReadError;
use super::ws_frames::{
    FrameReader, Incoming, MAX_CONTROL_PAYLOAD, MAX_HEADER, Reading, encode_small, opcode,
    read_message,
};

/// The longest handshake answer read: Direct Line's is a few hundred bytes.
const MAX_HANDSHAKE_ANSWER: usize = 8 * 1024;

/// Why the handshake failed.
#[derive(Debug, PartialEq, Eq)]
pub enum HandshakeError {
    /// The server answered 403 (a stale stream URL).
    Forbidden,
    Failed(&'static str),
}

pub struct UpstreamSocket {
    io: MaybeTlsStream<TcpStream>,
    reader: FrameReader,
}

impl UpstreamSocket {
    /// Connects to a `ws://` or `wss://` URL (already checked against the bot's upstream)
    /// and completes the client handshake.
    pub async fn connect(
        uri: &Uri,
        tls: &Arc<rustls::ClientConfig>,
        max_message: usize,
    ) -> Result<Self, HandshakeError> {
        let secure = match uri.scheme_str() {
            Some("wss") => true,
            Some("ws") => false,
            _ => return Err(HandshakeError::Failed("not a ws or wss URL")),
        };
        let host = uri.host().ok_or(HandshakeError::Failed("no host"))?;
        let port = uri.port_u16().unwrap_or(if secure { 443 } else { 80 });
        // An IPv6 literal is written in brackets in a URL, without them for a connect.
        let bare_host = host.trim_start_matches('[').trim_end_matches(']');
        let tcp = TcpStream::connect((bare_host, port))
            .await
            .map_err(|_| HandshakeError::Failed("connect"))?;
        let _ = tcp.set_nodelay(true);
        let mut io = if secure {
            let name = rustls::pki_types::ServerName::try_from(bare_host.to_owned())
                .map_err(|_| HandshakeError::Failed("host is not a TLS server name"))?;
            let tls = TlsConnector::from(tls.clone())
                .connect(name, tcp)
                .await
                .map_err(|_| HandshakeError::Failed("TLS"))?;
            MaybeTlsStream::Rustls(tls)
        } else {
            MaybeTlsStream::Plain(tcp)
        };
        let key = generate_key();
        let path = uri.path_and_query().map_or("/", |p| p.as_str());
        let authority = match uri.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_owned(),
        };
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n\r\n"
        );
        io.write_all(request.as_bytes())
            .await
            .map_err(|_| HandshakeError::Failed("write"))?;
        io.flush()
            .await
            .map_err(|_| HandshakeError::Failed("write"))?;
        let mut answer = Vec::with_capacity(1024);
        let head_len = loop {
            if let Some(end) = memchr::memmem::find(&answer, b"\r\n\r\n") {
                break end + 4;
            }
            if answer.len() >= MAX_HANDSHAKE_ANSWER {
                return Err(HandshakeError::Failed("handshake answer too long"));
            }
            let mut chunk = [0u8; 1024];
            let want = chunk.len().min(MAX_HANDSHAKE_ANSWER - answer.len());
            let n = io
                .read(&mut chunk[..want])
                .await
                .map_err(|_| HandshakeError::Failed("read"))?;
            if n == 0 {
                return Err(HandshakeError::Failed("closed during the handshake"));
            }
            answer.extend_from_slice(&chunk[..n]);
        };
        check_answer(&answer[..head_len], &derive_accept_key(key.as_bytes()))?;
        let mut reader = FrameReader::new(Reading::AsClient, max_message);
        // Frames that came with the answer are decoded now; the answer's buffer goes. A
        // violation among them is the stream's, not the handshake's: the reader holds it and
        // the first read reports it (a frame over the limit must count as one, whether or not
        // it arrived in the answer's read).
        if head_len < answer.len() {
            let _ = reader.feed(&answer[head_len..]);
        }
        Ok(Self { io, reader })
    }

    /// The next message. Cancel-safe: a read either decodes what it got or leaves nothing.
    pub async fn read(&mut self) -> Result<Incoming, ReadError> {
        read_message(&mut self.io, &mut self.reader).await
    }

    /// A ping, with nothing in it.
    pub async fn ping(&mut self) -> io::Result<()> {
        self.send(&[(opcode::PING, b"")]).await
    }

    /// The answer to a ping: its payload back.
    pub async fn pong(&mut self, payload: Bytes) -> io::Result<()> {
        self.send(&[(opcode::PONG, &payload)]).await
    }

    /// The keepalive: an empty text frame (what Direct Line documents and DLJS sends) and a
    /// ping (which draws a pong from servers that never send frames of their own), in one
    /// write.
    pub async fn keepalive(&mut self) -> io::Result<()> {
        self.send(&[(opcode::TEXT, b""), (opcode::PING, b"")]).await
    }

    /// A close frame without a code; the socket is dropped after it.
    pub async fn close(&mut self) -> io::Result<()> {
        self.send(&[(opcode::CLOSE, b"")]).await
    }

    async fn send(&mut self, frames: &[(u8, &[u8])]) -> io::Result<()> {
        const FRAME: usize = MAX_HEADER + MAX_CONTROL_PAYLOAD;
        let mut out = [0u8; 2 * FRAME];
        let mut len = 0;
        for (op, payload) in frames.iter().take(2) {
            let mut one = [0u8; FRAME];
            // RFC 6455 §5.3: a client masks every frame with a fresh key.
            let n = encode_small(
                &mut one,
                *op,
                payload,
                Some(fastrand::u32(..).to_ne_bytes()),
            );
            out[len..len + n].copy_from_slice(&one[..n]);
            len += n;
        }
        self.io.write_all(&out[..len]).await?;
        self.io.flush().await
    }
}

/// Checks a handshake answer's head (status line and headers, through the blank line).
fn check_answer(head: &[u8], accept: &str) -> Result<(), HandshakeError> {
    let head = std::str::from_utf8(head).map_err(|_| HandshakeError::Failed("answer not UTF-8"))?;
    let mut lines = head.split("\r\n");
    let status = lines.next().unwrap_or_default();
    let mut parts = status.splitn(3, ' ');
    let (version, code) = (parts.next(), parts.next());
    if !version.is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(HandshakeError::Failed("not an HTTP/1 answer"));
    }
    match code {
        Some("101") => {}
        Some("403") => return Err(HandshakeError::Forbidden),
        _ => return Err(HandshakeError::Failed("not 101 Switching Protocols")),
    }
    let (mut upgrade, mut connection, mut accepted) = (false, false, false);
    for line in lines.take_while(|line| !line.is_empty()) {
        let Some((name, value)) = line.split_once(':') else {
            return Err(HandshakeError::Failed("malformed header"));
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("upgrade") {
            upgrade = value.eq_ignore_ascii_case("websocket");
        } else if name.eq_ignore_ascii_case("connection") {
            connection = value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("upgrade"));
        } else if name.eq_ignore_ascii_case("sec-websocket-accept") {
            accepted = value == accept;
        } else if name.eq_ignore_ascii_case("sec-websocket-extensions")
            || name.eq_ignore_ascii_case("sec-websocket-protocol")
        {
            // Neither was asked for: a server that imposes one speaks something else.
            return Err(HandshakeError::Failed(
                "unrequested extension or subprotocol",
            ));
        }
    }
    if upgrade && connection && accepted {
        Ok(())
    } else {
        Err(HandshakeError::Failed("not a WebSocket upgrade"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stream::ws_frames::Violation;

    const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

    fn check(head: &str) -> Result<(), HandshakeError> {
        check_answer(head.as_bytes(), &derive_accept_key(KEY.as_bytes()))
    }

    #[test]
    fn a_switching_answer_with_the_right_accept_key_passes() {
        // RFC 6455 §1.3's example key and answer.
        assert_eq!(
            derive_accept_key(KEY.as_bytes()),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        let good = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: WebSocket\r\nConnection: keep-alive, Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n";
        assert_eq!(check(good), Ok(()));
        assert!(check(&good.replace("xOo=", "xOp=")).is_err());
        assert!(check(&good.replace("Upgrade: WebSocket\r\n", "")).is_err());
        assert!(check(&good.replace("keep-alive, Upgrade", "keep-alive")).is_err());
        assert!(
            check(&good.replace(
                "\r\n\r\n",
                "\r\nSec-WebSocket-Extensions: permessage-deflate\r\n\r\n"
            ))
            .is_err()
        );
    }

    #[test]
    fn a_403_is_told_apart_from_other_refusals() {
        assert_eq!(
            check("HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n"),
            Err(HandshakeError::Forbidden)
        );
        assert!(matches!(
            check("HTTP/1.1 200 OK\r\n\r\n"),
            Err(HandshakeError::Failed(_))
        ));
        assert!(matches!(
            check("SSH-2.0\r\n\r\n"),
            Err(HandshakeError::Failed(_))
        ));
    }

    /// A server that writes its 101 answer and then `frames` in one write, so that both
    /// arrive in the handshake's read.
    async fn answering_with(frames: Vec<u8>) -> Uri {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let (mut tcp, _) = listener.accept().await.unwrap();
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while memchr::memmem::find(&request, b"\r\n\r\n").is_none() {
                let n = tcp.read(&mut chunk).await.unwrap();
                assert!(n > 0, "the client closed during its handshake");
                request.extend_from_slice(&chunk[..n]);
            }
            let request = String::from_utf8(request).unwrap();
            let key = request
                .lines()
                .find_map(|line| line.strip_prefix("Sec-WebSocket-Key: "))
                .unwrap();
            let mut answer = format!(
                "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
                derive_accept_key(key.as_bytes())
            )
            .into_bytes();
            answer.extend_from_slice(&frames);
            tcp.write_all(&answer).await.unwrap();
            // Held open: the client must not need a close to learn of what it got.
            tokio::time::sleep(std::time::Duration::from_secs(30)).await;
        });
        format!("ws://{addr}/v3/directline/conversations/c/stream")
            .parse()
            .unwrap()
    }

    fn tls() -> Arc<rustls::ClientConfig> {
        let roots = rustls::RootCertStore::empty();
        Arc::new(
            rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
        )
    }

    /// A frame over the limit that comes in the handshake answer's read is the stream's
    /// violation, reported by the first read after the frames before it, as it is when it
    /// comes later (the hub counts it towards closing clients with 1009); it used to fail
    /// the handshake, which the hub retried as a failed dial until the resume budget ended.
    #[tokio::test]
    async fn a_frame_over_the_limit_in_the_answers_read_is_reported_by_the_first_read() {
        let mut frames = Vec::new();
        super::super::ws_frames::push_server_frame(&mut frames, opcode::TEXT, b"{}");
        let mut header = vec![0x81, 127];
        header.extend_from_slice(&(64u64 * 1024).to_be_bytes());
        frames.extend_from_slice(&header);
        frames.extend_from_slice(&[b'z'; 100]);
        let uri = answering_with(frames).await;
        let mut socket = UpstreamSocket::connect(&uri, &tls(), 32 * 1024)
            .await
            .expect("the handshake itself succeeded");
        let first = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read())
            .await
            .expect("the whole frame before it is read without waiting for more bytes");
        assert!(
            matches!(first, Ok(Incoming::Text(ref text)) if text.as_str() == "{}"),
            "{first:?}"
        );
        let second = tokio::time::timeout(std::time::Duration::from_secs(5), socket.read())
            .await
            .expect("the violation is reported without waiting for more bytes");
        assert!(
            matches!(second, Err(ReadError::Violation(Violation::TooLarge))),
            "{second:?}"
        );
    }
}
