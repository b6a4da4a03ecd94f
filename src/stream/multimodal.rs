//! `…/stream/multimodal` (DLJS voice mode, spec §5.1): client frames carry activities
//! upstream, so this socket is passed through frame by frame, one upstream socket per
//! client socket, without hub or resume.

use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use url::Url;

use super::client::ClientSocket;
use super::relay::close_frame;
use crate::gateway::Gateway;
use crate::seal::StreamTicket;

pub async fn bridge(gw: Arc<Gateway>, ticket: StreamTicket, mut client: ClientSocket) {
    let upstream_url = ticket
        .upstream_stream_url
        .as_deref()
        .and_then(multimodal_url);
    let upstream = match upstream_url {
        Some(url) => super::link::dial(&gw, &ticket.bot, &url).await.ok(),
        None => None,
    };
    let Some(upstream) = upstream else {
        let _ = client
            .close(Some(close_frame(
                CloseCode::Error,
                "upstream stream unavailable",
            )))
            .await;
        return;
    };
    let _open = gw.metrics.client_socket_opened(&ticket.bot);
    let upstream_sockets = gw
        .metrics
        .upstream_sockets
        .with_label_values(&[&ticket.bot]);
    upstream_sockets.inc();
    let (mut client_sink, mut client_stream) = client.split();
    let (mut upstream_sink, mut upstream_stream) = upstream.split();
    let to_upstream = async {
        while let Some(Ok(message)) = client_stream.next().await {
            let close = message.is_close();
            if upstream_sink.send(message).await.is_err() || close {
                break;
            }
        }
    };
    let to_client = async {
        while let Some(Ok(message)) = upstream_stream.next().await {
            let close = message.is_close();
            if client_sink.send(message).await.is_err() || close {
                break;
            }
        }
    };
    tokio::select! {
        _ = to_upstream => {}
        _ = to_client => {}
    }
    upstream_sockets.dec();
}

/// The upstream URL with `/multimodal` appended to its `/stream` path, query kept.
fn multimodal_url(stream_url: &str) -> Option<String> {
    let mut url = Url::parse(stream_url).ok()?;
    if !url.path().ends_with("/stream") {
        return None;
    }
    let path = format!("{}/multimodal", url.path());
    url.set_path(&path);
    Some(url.to_string())
}

#[cfg(test)]
mod tests {
    #[test]
    fn multimodal_url_keeps_the_query() {
        assert_eq!(
            super::multimodal_url("wss://h/v3/directline/conversations/c/stream?watermark=-&t=x")
                .as_deref(),
            Some("wss://h/v3/directline/conversations/c/stream/multimodal?watermark=-&t=x")
        );
        assert_eq!(super::multimodal_url("wss://h/other"), None);
    }
}
