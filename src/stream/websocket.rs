//! WebSocket settings and close frames, the same for the client and the upstream side.

use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};

use crate::config::StreamConfig;

/// tungstenite settings for both sides: small eagerly-allocated read buffers, because an
/// idle bridged conversation should cost kilobytes (tungstenite's default is 128 KiB each).
pub fn ws_config(config: &StreamConfig) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_write_buffer_size(config.max_frame_bytes * 2 + 1024)
        .max_message_size(Some(config.max_frame_bytes))
        .max_frame_size(Some(config.max_frame_bytes))
}

pub fn close_frame(code: CloseCode, reason: &'static str) -> CloseFrame {
    CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }
}
