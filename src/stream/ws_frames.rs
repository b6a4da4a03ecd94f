//! WebSocket frames (RFC 6455) decoded from bytes as they arrive, with no read buffer kept
//! between reads: the socket reads into a per-worker scratch buffer, complete messages
//! are taken out of it, and only the bytes of an unfinished frame are kept. An idle socket
//! holds nothing here (tungstenite's reader keeps its buffer for the socket's life).
//!
//! The checks are those tungstenite makes for what the gateway accepts: no reserved bits
//! (no extension is negotiated), known opcodes only, masking as the direction requires,
//! control frames at most 125 bytes and never fragmented, close codes a peer may send,
//! text that is UTF-8, and no message (fragments together) over the configured limit.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::task::{Context, Poll, ready};

use bytes::Bytes;
use tokio::io::{AsyncRead, ReadBuf};
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;

/// Longest frame header: 2 bytes, 8 of extended length, 4 of mask.
pub const MAX_HEADER: usize = 14;
/// RFC 6455 §5.5: a control frame's payload is at most 125 bytes.
pub const MAX_CONTROL_PAYLOAD: usize = 125;

const OP_CONTINUATION: u8 = 0x0;
const OP_TEXT: u8 = 0x1;
const OP_BINARY: u8 = 0x2;
const OP_CLOSE: u8 = 0x8;
const OP_PING: u8 = 0x9;
const OP_PONG: u8 = 0xA;

/// What the peer did wrong; the socket is closed after any of them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// A frame or a reassembled message over the limit (close code 1009).
    TooLarge,
    /// Text or a close reason that is not UTF-8 (close code 1007).
    BadUtf8,
    /// Anything else RFC 6455 forbids (close code 1002); the text says what.
    Protocol(&'static str),
}

/// One message, whole.
#[derive(Debug, PartialEq)]
pub enum Incoming {
    Text(Utf8Bytes),
    /// Binary messages carry nothing the gateway relays; only their arrival is told.
    Binary,
    Ping(Bytes),
    Pong,
    Close(Option<CloseFrame>),
}

/// Which side of the connection reads: a server reads masked frames, a client unmasked
/// ones (RFC 6455 §5.1: anything else closes the connection).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading {
    AsClient,
    AsServer,
}

/// A frame header, decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    pub fin: bool,
    pub opcode: u8,
    pub mask: Option<[u8; 4]>,
    /// Bytes the header takes.
    pub len: usize,
    pub payload_len: usize,
}

/// Decodes the header at the start of `bytes`: `None` while it is incomplete. `max_payload`
/// bounds a data frame's payload (a longer one is refused from its header, before any of
/// its payload is read).
pub fn parse_header(
    bytes: &[u8],
    reading: Reading,
    max_payload: usize,
) -> Result<Option<Header>, Violation> {
    let [first, second, ..] = *bytes else {
        return Ok(None);
    };
    if first & 0x70 != 0 {
        return Err(Violation::Protocol("reserved bits set"));
    }
    let fin = first & 0x80 != 0;
    let opcode = first & 0x0F;
    let control = match opcode {
        OP_CONTINUATION | OP_TEXT | OP_BINARY => false,
        OP_CLOSE | OP_PING | OP_PONG => true,
        _ => return Err(Violation::Protocol("unknown opcode")),
    };
    let masked = second & 0x80 != 0;
    match (reading, masked) {
        (Reading::AsClient, true) => return Err(Violation::Protocol("masked frame from a server")),
        (Reading::AsServer, false) => {
            return Err(Violation::Protocol("unmasked frame from a client"));
        }
        _ => {}
    }
    let (payload_len, mut len) = match second & 0x7F {
        126 => match bytes.get(2..4) {
            Some(b) => (u64::from(u16::from_be_bytes([b[0], b[1]])), 4),
            None => return Ok(None),
        },
        127 => match bytes.get(2..10) {
            Some(b) => {
                let length = u64::from_be_bytes(b.try_into().expect("eight bytes"));
                if length >> 63 != 0 {
                    return Err(Violation::Protocol("64-bit length with its high bit set"));
                }
                (length, 10)
            }
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if control {
        if !fin {
            return Err(Violation::Protocol("fragmented control frame"));
        }
        if payload_len > MAX_CONTROL_PAYLOAD as u64 {
            return Err(Violation::Protocol("control frame over 125 bytes"));
        }
    } else if payload_len > max_payload as u64 {
        return Err(Violation::TooLarge);
    }
    let mask = if masked {
        let Some(key) = bytes.get(len..len + 4) else {
            return Ok(None);
        };
        len += 4;
        Some(key.try_into().expect("four bytes"))
    } else {
        None
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        // At most `max_payload` or 125, so it fits.
        payload_len: payload_len as usize,
    }))
}

/// XORs `payload` with the mask key, as sender and receiver both do (RFC 6455 §5.3).
pub fn apply_mask(payload: &mut [u8], key: [u8; 4]) {
    for (i, byte) in payload.iter_mut().enumerate() {
        *byte ^= key[i & 3];
    }
}

/// A fragmented message being put together.
#[derive(Debug)]
struct Fragments {
    text: bool,
    bytes: Vec<u8>,
    /// How far a text's bytes are known to be UTF-8 (a character may straddle fragments).
    checked: usize,
}

impl Fragments {
    /// Refuses a text as soon as its bytes so far cannot be the start of UTF-8, as
    /// tungstenite does, rather than only once the last fragment is in.
    fn check_text(&mut self) -> Result<(), Violation> {
        if !self.text {
            return Ok(());
        }
        match std::str::from_utf8(&self.bytes[self.checked..]) {
            Ok(_) => self.checked = self.bytes.len(),
            Err(error) if error.error_len().is_none() => self.checked += error.valid_up_to(),
            Err(_) => return Err(Violation::BadUtf8),
        }
        Ok(())
    }
}

/// One socket's reading state: the bytes of an unfinished frame, a fragmented message so
/// far, and the messages decoded but not yet taken. All three are empty, and allocate
/// nothing, while the socket is idle.
#[derive(Debug)]
pub struct FrameReader {
    reading: Reading,
    max_message: usize,
    unfinished: Vec<u8>,
    fragments: Option<Fragments>,
    ready: VecDeque<Incoming>,
    /// A violation stops reading for good.
    failed: Option<Violation>,
}

/// Decoded messages kept past one read are few; a queue grown larger (a peer sending
/// thousands of tiny frames at once) is given back once drained.
const READY_KEPT: usize = 8;

impl FrameReader {
    pub fn new(reading: Reading, max_message: usize) -> Self {
        Self {
            reading,
            max_message,
            unfinished: Vec::new(),
            fragments: None,
            ready: VecDeque::new(),
            failed: None,
        }
    }

    /// The next decoded message, if a read brought one.
    pub fn take(&mut self) -> Option<Incoming> {
        let message = self.ready.pop_front();
        if self.ready.is_empty() && self.ready.capacity() > READY_KEPT {
            self.ready = VecDeque::new();
        }
        message
    }

    /// The next decoded message, or, once every message decoded before it was taken, the
    /// violation that stopped reading. A violation in the same read as whole frames before
    /// it (or in the bytes that came with a handshake's answer) is thus reported in order,
    /// not in their place and not lost while the socket waits for more bytes.
    pub fn next_in_order(&mut self) -> Option<Result<Incoming, Violation>> {
        match self.take() {
            Some(message) => Some(Ok(message)),
            None => self.failed.map(Err),
        }
    }

    /// Bytes held for an unfinished frame or message (what an idle socket costs here).
    pub fn held_bytes(&self) -> usize {
        self.unfinished.capacity()
            + self.fragments.as_ref().map_or(0, |f| f.bytes.capacity())
            + self.ready.capacity() * std::mem::size_of::<Incoming>()
    }

    /// Bytes kept of an unfinished frame (at most one frame's header and payload).
    pub fn unfinished_len(&self) -> usize {
        self.unfinished.len()
    }

    /// Whether the bytes so far end inside a frame or inside a fragmented message.
    pub fn mid_message(&self) -> bool {
        !self.unfinished.is_empty() || self.fragments.is_some()
    }

    /// Decodes the bytes a read brought: every message they complete is queued for
    /// [`take`](Self::take), the bytes of a frame they leave unfinished are kept. After a
    /// violation every later call returns it again.
    pub fn feed(&mut self, fresh: &[u8]) -> Result<(), Violation> {
        if let Some(violation) = self.failed {
            return Err(violation);
        }
        let result = if self.unfinished.is_empty() {
            // The usual case: the read holds whole frames, decoded where they lie.
            self.decode(fresh).map(|used| {
                if used < fresh.len() {
                    self.unfinished.extend_from_slice(&fresh[used..]);
                }
            })
        } else {
            let mut held = std::mem::take(&mut self.unfinished);
            held.extend_from_slice(fresh);
            self.decode(&held).map(|used| {
                if used < held.len() {
                    held.drain(..used);
                    self.unfinished = held;
                }
            })
        };
        if let Err(violation) = result {
            self.failed = Some(violation);
            self.unfinished = Vec::new();
            self.fragments = None;
        }
        result
    }

    /// Decodes whole frames from the start of `bytes`; returns how many bytes they took.
    fn decode(&mut self, bytes: &[u8]) -> Result<usize, Violation> {
        let mut at = 0;
        loop {
            let rest = &bytes[at..];
            let Some(header) = parse_header(rest, self.reading, self.max_message)? else {
                return Ok(at);
            };
            let Some(payload) = rest.get(header.len..header.len + header.payload_len) else {
                return Ok(at);
            };
            at += header.len + header.payload_len;
            self.frame(header, payload)?;
        }
    }

    fn frame(&mut self, header: Header, payload: &[u8]) -> Result<(), Violation> {
        // Only a server's reads are masked, and clients send little: the copy to unmask
        // is on the cold side.
        let unmasked;
        let payload = match header.mask {
            Some(key) => {
                let mut owned = payload.to_vec();
                apply_mask(&mut owned, key);
                unmasked = owned;
                &unmasked[..]
            }
            None => payload,
        };
        let message = match header.opcode {
            OP_PING => Incoming::Ping(Bytes::copy_from_slice(payload)),
            OP_PONG => Incoming::Pong,
            OP_CLOSE => Incoming::Close(close_frame(payload)?),
            OP_CONTINUATION => {
                let Some(fragments) = self.fragments.as_mut() else {
                    return Err(Violation::Protocol("continuation without a first fragment"));
                };
                if fragments.bytes.len() + payload.len() > self.max_message {
                    return Err(Violation::TooLarge);
                }
                fragments.bytes.extend_from_slice(payload);
                fragments.check_text()?;
                if !header.fin {
                    return Ok(());
                }
                let whole = self.fragments.take().expect("checked above");
                if whole.text {
                    let text = String::from_utf8(whole.bytes).map_err(|_| Violation::BadUtf8)?;
                    Incoming::Text(Utf8Bytes::from(text))
                } else {
                    Incoming::Binary
                }
            }
            opcode => {
                if self.fragments.is_some() {
                    return Err(Violation::Protocol("new message inside a fragmented one"));
                }
                let text = opcode == OP_TEXT;
                if !header.fin {
                    let mut fragments = Fragments {
                        text,
                        bytes: payload.to_vec(),
                        checked: 0,
                    };
                    fragments.check_text()?;
                    self.fragments = Some(fragments);
                    return Ok(());
                }
                if text {
                    let text = std::str::from_utf8(payload).map_err(|_| Violation::BadUtf8)?;
                    Incoming::Text(Utf8Bytes::from(String::from(text)))
                } else {
                    Incoming::Binary
                }
            }
        };
        self.ready.push_back(message);
        Ok(())
    }
}

/// A close frame's payload: none, or a code a peer may send and a UTF-8 reason.
fn close_frame(payload: &[u8]) -> Result<Option<CloseFrame>, Violation> {
    match payload {
        [] => Ok(None),
        [_] => Err(Violation::Protocol("close payload of one byte")),
        [high, low, reason @ ..] => {
            let code = CloseCode::from(u16::from_be_bytes([*high, *low]));
            if !code.is_allowed() {
                return Err(Violation::Protocol("close code a peer may not send"));
            }
            let reason = std::str::from_utf8(reason).map_err(|_| Violation::BadUtf8)?;
            Ok(Some(CloseFrame {
                code,
                reason: Utf8Bytes::from(String::from(reason)),
            }))
        }
    }
}

/// Per worker: what one read of a socket may bring. Larger frames are read in several
/// reads (their bytes kept by the reader in between). Shared by the upstream and the
/// client sockets: a read's bytes are decoded before the next read on the thread.
const SCRATCH_BYTES: usize = 16 * 1024;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_BYTES].into_boxed_slice());
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// The peer broke RFC 6455 (or sent more than the gateway accepts).
    Violation(Violation),
    /// The connection closed without a close frame, or failed.
    Gone,
}

/// Reads once from `io` into the worker's scratch buffer and feeds what came to `reader`.
/// Cancel-safe: the bytes of a read are decoded (or kept) before it returns.
pub fn poll_read_into<R: AsyncRead + Unpin>(
    io: &mut R,
    reader: &mut FrameReader,
    cx: &mut Context<'_>,
) -> Poll<Result<(), ReadError>> {
    SCRATCH.with_borrow_mut(|scratch| {
        let mut buf = ReadBuf::new(scratch);
        ready!(std::pin::Pin::new(io).poll_read(cx, &mut buf)).map_err(|_| ReadError::Gone)?;
        if buf.filled().is_empty() {
            return Poll::Ready(Err(ReadError::Gone));
        }
        Poll::Ready(reader.feed(buf.filled()).map_err(ReadError::Violation))
    })
}

/// The next message read from `io` through `reader`. Cancel-safe: a read either decodes
/// what it got or leaves nothing. A violation is held by the reader, so the whole frames
/// before it in the same read are taken first.
pub async fn read_message<R: AsyncRead + Unpin>(
    io: &mut R,
    reader: &mut FrameReader,
) -> Result<Incoming, ReadError> {
    loop {
        if let Some(next) = reader.next_in_order() {
            return next.map_err(ReadError::Violation);
        }
        match std::future::poll_fn(|cx| poll_read_into(io, reader, cx)).await {
            Ok(()) | Err(ReadError::Violation(_)) => {}
            Err(gone) => return Err(gone),
        }
    }
}

/// Appends one unmasked frame (what a server sends, RFC 6455 §5.1) of any length to `out`.
pub fn push_server_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.reserve(MAX_HEADER + payload.len());
    out.push(0x80 | opcode);
    match payload.len() {
        n if n < 126 => out.push(n as u8),
        n if n <= 0xFFFF => {
            out.push(126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(payload);
}

/// Appends a close frame: no payload without a frame, else its code and as much of its
/// reason as fits a control frame (cut at a character boundary).
pub fn push_server_close(out: &mut Vec<u8>, frame: Option<&CloseFrame>) {
    let Some(frame) = frame else {
        push_server_frame(out, OP_CLOSE, b"");
        return;
    };
    let mut payload = [0u8; MAX_CONTROL_PAYLOAD];
    payload[..2].copy_from_slice(&u16::from(frame.code).to_be_bytes());
    let reason = frame.reason.as_str();
    let mut fits = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
    while !reason.is_char_boundary(fits) {
        fits -= 1;
    }
    payload[2..2 + fits].copy_from_slice(&reason.as_bytes()[..fits]);
    push_server_frame(out, OP_CLOSE, &payload[..2 + fits]);
}

/// Writes one frame (at most a control frame's size: what the gateway's side of an upstream
/// socket sends) into `out`, masked with `key` when `key` is given; returns its length.
pub fn encode_small(
    out: &mut [u8; MAX_HEADER + MAX_CONTROL_PAYLOAD],
    opcode: u8,
    payload: &[u8],
    key: Option<[u8; 4]>,
) -> usize {
    assert!(payload.len() <= MAX_CONTROL_PAYLOAD, "small frames only");
    out[0] = 0x80 | opcode;
    out[1] = payload.len() as u8;
    let mut at = 2;
    if let Some(key) = key {
        out[1] |= 0x80;
        out[2..6].copy_from_slice(&key);
        at = 6;
    }
    out[at..at + payload.len()].copy_from_slice(payload);
    if let Some(key) = key {
        apply_mask(&mut out[at..at + payload.len()], key);
    }
    at + payload.len()
}

/// Opcodes of the frames [`encode_small`] writes.
pub mod opcode {
    pub const TEXT: u8 = super::OP_TEXT;
    pub const CLOSE: u8 = super::OP_CLOSE;
    pub const PING: u8 = super::OP_PING;
    pub const PONG: u8 = super::OP_PONG;
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1024;

    /// An unmasked frame as a server sends it.
    fn frame(first: u8, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        push_server_frame(&mut out, 0, payload);
        out[0] = first;
        out
    }

    fn read_all(bytes: &[u8]) -> Result<Vec<Incoming>, Violation> {
        let mut reader = FrameReader::new(Reading::AsClient, MAX);
        reader.feed(bytes)?;
        Ok(std::iter::from_fn(|| reader.take()).collect())
    }

    fn text(s: &str) -> Incoming {
        Incoming::Text(Utf8Bytes::from(s.to_owned()))
    }

    #[test]
    fn whole_frames_in_one_read_are_all_decoded_and_nothing_is_kept() {
        let mut bytes = frame(0x81, b"one");
        bytes.extend(frame(0x8A, b""));
        bytes.extend(frame(0x81, &[b'x'; 300]));
        let mut reader = FrameReader::new(Reading::AsClient, MAX);
        reader.feed(&bytes).unwrap();
        assert_eq!(reader.take(), Some(text("one")));
        assert_eq!(reader.take(), Some(Incoming::Pong));
        assert_eq!(reader.take(), Some(text(&"x".repeat(300))));
        assert_eq!(reader.take(), None);
        // The queue of decoded messages stays (a few hundred bytes); no byte buffer does.
        assert_eq!(reader.unfinished.capacity(), 0);
        assert!(reader.fragments.is_none());
        assert!(reader.held_bytes() <= READY_KEPT * std::mem::size_of::<Incoming>());
    }

    #[test]
    fn a_frame_split_at_every_byte_decodes_the_same() {
        let mut bytes = frame(0x81, "héllo wörld".as_bytes());
        bytes.extend(frame(0x81, &[b'y'; 200]));
        for cut in 0..=bytes.len() {
            let mut reader = FrameReader::new(Reading::AsClient, MAX);
            reader.feed(&bytes[..cut]).unwrap();
            reader.feed(&bytes[cut..]).unwrap();
            assert_eq!(reader.take(), Some(text("héllo wörld")), "cut at {cut}");
            assert_eq!(reader.take(), Some(text(&"y".repeat(200))), "cut at {cut}");
            assert_eq!(reader.take(), None);
            assert_eq!(reader.unfinished.len(), 0);
        }
    }

    #[test]
    fn fragments_are_reassembled_around_control_frames() {
        let mut bytes = frame(0x01, "par".as_bytes());
        bytes.extend(frame(0x89, b"p"));
        bytes.extend(frame(0x00, "t ".as_bytes()));
        bytes.extend(frame(0x80, "two".as_bytes()));
        assert_eq!(
            read_all(&bytes).unwrap(),
            vec![Incoming::Ping(Bytes::from_static(b"p")), text("part two")]
        );
    }

    #[test]
    fn a_length_over_the_limit_is_refused_from_its_header() {
        // The header alone: no payload needed to refuse it.
        let mut header = vec![0x81, 126];
        header.extend_from_slice(&((MAX + 1) as u16).to_be_bytes());
        assert_eq!(read_all(&header), Err(Violation::TooLarge));
        let mut huge = vec![0x81, 127];
        huge.extend_from_slice(&(u64::MAX >> 1).to_be_bytes());
        assert_eq!(read_all(&huge), Err(Violation::TooLarge));
    }

    #[test]
    fn a_64_bit_length_with_its_high_bit_is_a_protocol_error() {
        let mut bytes = vec![0x81, 127];
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert!(matches!(read_all(&bytes), Err(Violation::Protocol(_))));
    }

    #[test]
    fn fragments_together_over_the_limit_are_too_large() {
        let half = vec![b'a'; MAX / 2 + 1];
        let mut bytes = frame(0x01, &half);
        bytes.extend(frame(0x80, &half));
        assert_eq!(read_all(&bytes), Err(Violation::TooLarge));
    }

    #[test]
    fn masking_must_match_the_direction() {
        let mut masked = vec![0x81, 0x80 | 2, 1, 2, 3, 4, b'h' ^ 1, b'i' ^ 2];
        let mut reader = FrameReader::new(Reading::AsServer, MAX);
        reader.feed(&masked).unwrap();
        assert_eq!(reader.take(), Some(text("hi")));
        assert!(matches!(read_all(&masked), Err(Violation::Protocol(_))));
        masked = frame(0x81, b"hi");
        let mut server = FrameReader::new(Reading::AsServer, MAX);
        assert!(matches!(server.feed(&masked), Err(Violation::Protocol(_))));
    }

    #[test]
    fn control_frames_are_small_and_whole() {
        assert!(matches!(
            read_all(&frame(0x09, b"")),
            Err(Violation::Protocol("fragmented control frame"))
        ));
        assert!(matches!(
            read_all(&frame(0x89, &[0; 126])),
            Err(Violation::Protocol("control frame over 125 bytes"))
        ));
    }

    #[test]
    fn reserved_bits_and_opcodes_are_refused() {
        for first in [0xC1, 0xA1, 0x91, 0x83, 0x87, 0x8B, 0x8F] {
            assert!(
                matches!(read_all(&frame(first, b"x")), Err(Violation::Protocol(_))),
                "{first:#x}"
            );
        }
    }

    #[test]
    fn text_must_be_utf8_whole_or_reassembled() {
        assert_eq!(
            read_all(&frame(0x81, &[0xC3, 0x28])),
            Err(Violation::BadUtf8)
        );
        // A character split across fragments is fine; a truncated one at the end is not.
        let mut split = frame(0x01, &[0xC3]);
        split.extend(frame(0x80, &[0xA9]));
        assert_eq!(read_all(&split).unwrap(), vec![text("é")]);
        let mut cut = frame(0x01, b"a");
        cut.extend(frame(0x80, &[0xC3]));
        assert_eq!(read_all(&cut), Err(Violation::BadUtf8));
        // A first fragment that cannot start UTF-8 is refused before the rest comes.
        assert_eq!(read_all(&frame(0x01, &[0xFF])), Err(Violation::BadUtf8));
    }

    #[test]
    fn fragmentation_out_of_order_is_refused() {
        assert!(matches!(
            read_all(&frame(0x80, b"x")),
            Err(Violation::Protocol(_))
        ));
        let mut twice = frame(0x01, b"a");
        twice.extend(frame(0x81, b"b"));
        assert!(matches!(read_all(&twice), Err(Violation::Protocol(_))));
    }

    #[test]
    fn close_frames_carry_allowed_codes_and_utf8_reasons() {
        assert_eq!(
            read_all(&frame(0x88, b"")).unwrap(),
            vec![Incoming::Close(None)]
        );
        let mut collision = 1000u16.to_be_bytes().to_vec();
        collision.extend_from_slice(b"collision");
        let Incoming::Close(Some(close)) = read_all(&frame(0x88, &collision)).unwrap().remove(0)
        else {
            panic!("a close frame");
        };
        assert_eq!(
            (u16::from(close.code), close.reason.as_str()),
            (1000, "collision")
        );
        assert!(read_all(&frame(0x88, &[3])).is_err());
        for refused in [999u16, 1004, 1005, 1006, 1015, 2999, 5000] {
            assert!(
                matches!(
                    read_all(&frame(0x88, &refused.to_be_bytes())),
                    Err(Violation::Protocol(_))
                ),
                "{refused}"
            );
        }
        let mut bad_reason = 1000u16.to_be_bytes().to_vec();
        bad_reason.push(0xFF);
        assert_eq!(read_all(&frame(0x88, &bad_reason)), Err(Violation::BadUtf8));
    }

    #[test]
    fn a_violation_sticks_and_frees_what_was_held() {
        let mut reader = FrameReader::new(Reading::AsClient, MAX);
        reader.feed(&frame(0x01, &[b'a'; 100])).unwrap();
        reader.feed(&[0xC1, 0]).unwrap_err();
        assert_eq!(reader.held_bytes(), 0);
        assert!(reader.feed(&frame(0x81, b"ok")).is_err());
    }

    #[test]
    fn small_frames_encode_masked_and_decode_back() {
        let mut out = [0; MAX_HEADER + MAX_CONTROL_PAYLOAD];
        let len = encode_small(&mut out, opcode::PING, b"abc", Some([9, 8, 7, 6]));
        let mut server = FrameReader::new(Reading::AsServer, MAX);
        server.feed(&out[..len]).unwrap();
        assert_eq!(
            server.take(),
            Some(Incoming::Ping(Bytes::from_static(b"abc")))
        );
        let len = encode_small(&mut out, opcode::TEXT, b"", None);
        assert_eq!(&out[..len], &[0x81, 0]);
    }

    /// Frames from parts that are mostly right (so reading gets deep) and sometimes not.
    fn arbitrary_frames() -> impl proptest::strategy::Strategy<Value = Vec<u8>> {
        use proptest::prelude::*;
        let one = (
            any::<u8>(),
            prop_oneof![
                3 => proptest::collection::vec(any::<u8>(), 0..40),
                1 => proptest::collection::vec(b'a'..=b'z', 100..300),
                1 => Just("é€".as_bytes().to_vec()),
            ],
            any::<bool>(),
        )
            .prop_map(|(first, payload, plain)| {
                // Mostly a FIN text, binary, continuation, ping, pong or close.
                let first = if plain {
                    [0x81, 0x82, 0x01, 0x00, 0x80, 0x89, 0x8A, 0x88][usize::from(first % 8)]
                } else {
                    first
                };
                frame(first, &payload)
            });
        proptest::collection::vec(one, 0..8).prop_map(|frames| frames.concat())
    }

    /// Reads with tungstenite as a client, up to the first close: the messages, and whether
    /// it refused something (running out of bytes is not a refusal).
    fn tungstenite_reads(bytes: &[u8], limit: usize) -> (Vec<Incoming>, bool) {
        use std::io::Cursor;
        use tokio_tungstenite::tungstenite::error::ProtocolError;
        use tokio_tungstenite::tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
        use tokio_tungstenite::tungstenite::{Error, Message};
        struct Wire(Cursor<Vec<u8>>);
        impl std::io::Read for Wire {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.0.read(buf)
            }
        }
        impl std::io::Write for Wire {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let config = WebSocketConfig::default()
            .max_message_size(Some(limit))
            .max_frame_size(Some(limit));
        let wire = Wire(Cursor::new(bytes.to_vec()));
        let mut socket = WebSocket::from_raw_socket(wire, Role::Client, Some(config));
        let mut seen = Vec::new();
        loop {
            match socket.read() {
                Ok(Message::Text(text)) => seen.push(Incoming::Text(text)),
                Ok(Message::Binary(_)) => seen.push(Incoming::Binary),
                Ok(Message::Ping(payload)) => seen.push(Incoming::Ping(payload)),
                Ok(Message::Pong(_)) => seen.push(Incoming::Pong),
                Ok(Message::Close(frame)) => {
                    seen.push(Incoming::Close(frame));
                    return (seen, false);
                }
                Ok(Message::Frame(_)) => unreachable!("raw frames are never read"),
                Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
                | Err(Error::ConnectionClosed)
                | Err(Error::Io(_)) => return (seen, false),
                Err(_) => return (seen, true),
            }
        }
    }

    /// Reads `chunks` in order, up to the first close: the messages, the violation, and
    /// whether the bytes ended inside a frame or a fragmented message.
    fn reads(chunks: &[&[u8]], limit: usize) -> (Vec<Incoming>, Option<Violation>, bool) {
        let mut reader = FrameReader::new(Reading::AsClient, limit);
        let mut seen = Vec::new();
        for chunk in chunks {
            let fed = reader.feed(chunk);
            assert!(reader.unfinished_len() <= MAX_HEADER + limit.max(MAX_CONTROL_PAYLOAD));
            while let Some(message) = reader.take() {
                let closing = matches!(message, Incoming::Close(_));
                seen.push(message);
                if closing {
                    // A close inside a fragmented message: tungstenite may have refused
                    // an earlier fragment's UTF-8 already.
                    return (seen, None, reader.mid_message());
                }
            }
            if let Err(violation) = fed {
                return (seen, Some(violation), false);
            }
        }
        let mid = reader.mid_message();
        (seen, None, mid)
    }

    proptest::proptest! {
        #[test]
        fn reads_agree_with_tungstenite_whatever_the_read_boundaries(
            bytes in arbitrary_frames(),
            cuts in proptest::collection::vec(proptest::prelude::any::<u16>(), 0..6),
            limit in proptest::sample::select(vec![125usize, 126, 300, 70_000]),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|&c| usize::from(c) % (bytes.len() + 1)).collect();
            points.sort_unstable();
            let mut chunks = Vec::new();
            let mut start = 0;
            for point in points.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[start..point]);
                start = point;
            }
            let whole = reads(&[&bytes], limit);
            let cut = reads(&chunks, limit);
            // Whether the bytes ended mid-frame depends on the cut; what was read does not.
            proptest::prop_assert_eq!((&whole.0, &whole.1), (&cut.0, &cut.1));
            let (theirs, refused) = tungstenite_reads(&bytes, limit);
            let (mine, violation, mid) = whole;
            let both = mine.len().min(theirs.len());
            proptest::prop_assert_eq!(&mine[..both], &theirs[..both]);
            match (violation.is_some(), refused) {
                (false, false) => proptest::prop_assert_eq!(&mine, &theirs),
                (false, true) => proptest::prop_assert!(mid, "tungstenite refused what was accepted"),
                _ => {}
            }
        }
    }
}
