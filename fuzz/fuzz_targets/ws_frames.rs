//! The WebSocket frame reader (`src/stream/ws_frames.rs`) over arbitrary bytes, cut into
//! arbitrary reads: as a hub's upstream socket reads a server's frames, and as a classic
//! client socket reads a client's (masked) frames.
//!
//! Input: byte 0 picks the message limit (`byte % 4`: 125, 126, 300 or 70,000 bytes; small
//! limits reach the too-large paths) and the side (bit 2 set: the server's side, reading a
//! client's frames), byte 1 the number of cuts; then two bytes per cut
//! (its offset, modulo the length); the rest is what the server sent.
//!
//! Invariants checked:
//! - the messages and the violation are the same whether the bytes come in one read or in
//!   the cut reads (the bytes kept for an unfinished frame are kept right);
//! - no more unfinished bytes than one frame's header and payload are ever held;
//! - against tungstenite reading the same bytes on the same side (the oracle, up to the first
//!   close): both agree on every message both decode; if neither refuses anything the
//!   messages are the same; if tungstenite refuses something the reader does not, the
//!   reader was left in the middle of a frame or of a fragmented message (the reader refuses
//!   some frames from their header, tungstenite once their payload is in).

#![no_main]

use std::io::{Cursor, Read, Write};

use directline_gateway::stream::ws_frames::{
    FrameReader, Incoming, MAX_CONTROL_PAYLOAD, MAX_HEADER, Reading,
};
use libfuzzer_sys::fuzz_target;
use tungstenite::protocol::{Role, WebSocket, WebSocketConfig};
use tungstenite::{Error, Message, error::ProtocolError};

/// The peer's bytes to read; what tungstenite writes back (pongs, a close) is dropped.
struct Wire(Cursor<Vec<u8>>);

impl Read for Wire {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        self.0.read(buf)
    }
}

impl Write for Wire {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// A message in a form both readers produce.
#[derive(Debug, PartialEq)]
enum Seen {
    Text(String),
    Binary,
    Ping(Vec<u8>),
    Pong,
    Close(Option<(u16, String)>),
}

fn ours(message: Incoming) -> Seen {
    match message {
        Incoming::Text(text) => Seen::Text(text.as_str().to_owned()),
        Incoming::Binary => Seen::Binary,
        Incoming::Ping(payload) => Seen::Ping(payload.to_vec()),
        Incoming::Pong => Seen::Pong,
        Incoming::Close(frame) => {
            Seen::Close(frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())))
        }
    }
}

/// Reads `chunks` in order; the messages up to the first close, whether a violation
/// stopped it, and whether the reader was left mid-frame or mid-message.
fn read_ours(chunks: &[&[u8]], limit: usize, side: Reading) -> (Vec<Seen>, Option<String>, bool) {
    let mut reader = FrameReader::new(side, limit);
    let mut seen = Vec::new();
    for chunk in chunks {
        let fed = reader.feed(chunk);
        assert!(reader.unfinished_len() < MAX_HEADER + limit.max(MAX_CONTROL_PAYLOAD) + 1);
        while let Some(message) = reader.take() {
            let closing = matches!(message, Incoming::Close(_));
            seen.push(ours(message));
            if closing {
                // A close inside a fragmented message: tungstenite may have refused an
                // earlier fragment's UTF-8 already.
                return (seen, None, reader.mid_message());
            }
        }
        if let Err(violation) = fed {
            return (seen, Some(format!("{violation:?}")), false);
        }
    }
    let mid = reader.mid_message();
    (seen, None, mid)
}

fn read_tungstenite(bytes: &[u8], limit: usize, side: Reading) -> (Vec<Seen>, bool) {
    let config = WebSocketConfig::default()
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    let mut socket = WebSocket::from_raw_socket(
        Wire(Cursor::new(bytes.to_vec())),
        match side {
            Reading::AsClient => Role::Client,
            Reading::AsServer => Role::Server,
        },
        Some(config),
    );
    let mut seen = Vec::new();
    loop {
        match socket.read() {
            Ok(Message::Text(text)) => seen.push(Seen::Text(text.as_str().to_owned())),
            Ok(Message::Binary(_)) => seen.push(Seen::Binary),
            Ok(Message::Ping(payload)) => seen.push(Seen::Ping(payload.to_vec())),
            Ok(Message::Pong(_)) => seen.push(Seen::Pong),
            Ok(Message::Close(frame)) => {
                seen.push(Seen::Close(
                    frame.map(|f| (u16::from(f.code), f.reason.as_str().to_owned())),
                ));
                return (seen, false);
            }
            Ok(Message::Frame(_)) => unreachable!("raw frames are never read"),
            // The bytes ran out (mid-frame or between frames): not a refusal.
            Err(Error::Protocol(ProtocolError::ResetWithoutClosingHandshake))
            | Err(Error::ConnectionClosed)
            | Err(Error::Io(_)) => return (seen, false),
            Err(_) => return (seen, true),
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let [choice, cuts, rest @ ..] = data else {
        return;
    };
    let limit = [125, 126, 300, 70_000][usize::from(*choice % 4)];
    let side = if choice & 4 == 0 {
        Reading::AsClient
    } else {
        Reading::AsServer
    };
    let cuts = usize::from(*cuts % 16);
    let Some((cut_bytes, bytes)) = rest.split_at_checked(cuts * 2) else {
        return;
    };
    let mut points: Vec<usize> = cut_bytes
        .chunks(2)
        .map(|c| usize::from(u16::from_be_bytes([c[0], c[1]])) % (bytes.len() + 1))
        .collect();
    points.sort_unstable();
    let mut chunks = Vec::new();
    let mut start = 0;
    for point in points.into_iter().chain([bytes.len()]) {
        chunks.push(&bytes[start..point]);
        start = point;
    }

    let whole = read_ours(&[bytes], limit, side);
    let cut = read_ours(&chunks, limit, side);
    assert_eq!(whole.0, cut.0, "messages depend on how the bytes were cut");
    assert_eq!(
        whole.1, cut.1,
        "violation depends on how the bytes were cut"
    );

    let (theirs, refused) = read_tungstenite(bytes, limit, side);
    let (mine, violation, mid) = whole;
    let both = mine.len().min(theirs.len());
    assert_eq!(mine[..both], theirs[..both], "a message read differently");
    match (violation.is_some(), refused) {
        (false, false) => assert_eq!(mine, theirs),
        (false, true) => assert!(mid, "tungstenite refused what the reader accepted"),
        _ => {}
    }
});
