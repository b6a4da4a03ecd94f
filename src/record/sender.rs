//! The sender thread: the spool's sealed batches, oldest first, POSTed to `record.url` as
//! `application/x-ndjson`; a batch leaves the spool only once the receiver answered 2xx, so
//! a receiver that is down loses nothing (it may see a batch twice if the gateway stops
//! between the answer and the removal). Failures back off up to [`MAX_BACKOFF`].

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use bytes::Bytes;
use http::{Method, Request, header};
use http_body_util::Full;
use url::Url;

use crate::metrics::Metrics;

const FIRST_BACKOFF: Duration = Duration::from_millis(200);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How often an empty spool is looked at again.
const IDLE: Duration = Duration::from_millis(200);
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

pub fn start(
    url: &Url,
    dir: PathBuf,
    bytes: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    writer_alive: Weak<()>,
) -> Result<(), String> {
    let uri: http::Uri = url
        .as_str()
        .parse()
        .map_err(|_| "record.url: invalid URL".to_owned())?;
    std::thread::Builder::new()
        .name("record-sender".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(runtime) => runtime,
                Err(error) => {
                    tracing::error!(%error, "record sender cannot start");
                    return;
                }
            };
            runtime.block_on(send_while(uri, dir, bytes, metrics, writer_alive));
        })
        .map_err(|e| format!("record sender thread: {e}"))?;
    Ok(())
}

async fn send_while(
    uri: http::Uri,
    dir: PathBuf,
    bytes: Arc<AtomicU64>,
    metrics: Arc<Metrics>,
    writer_alive: Weak<()>,
) {
    let client = match crate::policy::webhook::http_client(CALL_TIMEOUT) {
        Ok(client) => client,
        Err(error) => {
            tracing::error!(%error, "record sender has no HTTP client");
            return;
        }
    };
    let mut backoff = FIRST_BACKOFF;
    loop {
        if writer_alive.strong_count() == 0 {
            return;
        }
        let Some(batch) = oldest(&dir) else {
            tokio::time::sleep(IDLE).await;
            continue;
        };
        let body = match std::fs::read(&batch) {
            Ok(body) => Bytes::from(body),
            Err(error) => {
                tracing::error!(%error, "record batch cannot be read");
                tokio::time::sleep(backoff).await;
                continue;
            }
        };
        let len = body.len() as u64;
        let request = Request::builder()
            .method(Method::POST)
            .uri(uri.clone())
            .header(header::CONTENT_TYPE, "application/x-ndjson")
            .body(Full::new(body));
        let Ok(request) = request else {
            return;
        };
        let sent = tokio::time::timeout(CALL_TIMEOUT, client.request(request)).await;
        let accepted = matches!(&sent, Ok(Ok(answer)) if answer.status().is_success());
        if !accepted {
            metrics.record_batches.with_label_values(&["failed"]).inc();
            tracing::warn!(
                backoff_ms = backoff.as_millis() as u64,
                "record receiver did not take a batch; kept in the spool"
            );
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
            continue;
        }
        backoff = FIRST_BACKOFF;
        metrics.record_batches.with_label_values(&["sent"]).inc();
        if let Err(error) = std::fs::remove_file(&batch) {
            // Left in place it would be sent again forever: stop rather than repeat.
            tracing::error!(%error, "a sent record batch cannot be removed; sender stops");
            return;
        }
        let left = bytes.fetch_sub(len, Ordering::AcqRel).saturating_sub(len);
        metrics.record_spool_bytes.set(left as i64);
    }
}

/// The oldest sealed batch (names are zero-padded sequence numbers).
fn oldest(dir: &Path) -> Option<PathBuf> {
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|entry| entry.file_name())
        .filter(|name| name.to_string_lossy().ends_with(".batch"))
        .min()
        .map(|name| dir.join(name))
}
