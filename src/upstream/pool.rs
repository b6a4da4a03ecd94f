//! Upstream HTTP/1 connections, kept per worker thread for reuse.
//!
//! Each worker (see [`crate::workers`]) has a shelf of its own: a request made on a worker
//! uses connections whose tasks run on that worker, so no request hops threads, and the
//! shelf's lock is never contended by another worker. A shelf is a queue with the connection
//! sent on longest ago in front: under load that is the one most likely to be free again,
//! so the search for a free connection usually stops at the first one.
//!
//! This replaces hyper-util's pooled client, whose checkout hashed the pool key twice per
//! request, boxed the request future and sent it through a dispatch channel of its own
//! (docs/PROFILE-FINDINGS.md). What it kept for us is kept here:
//! - the connector: the same `HttpConnector` (connect timeout, `TCP_NODELAY`) under the
//!   rustls connector, and its errors reported as `client error (Connect)` with the cause;
//! - a connection is reused only once hyper says it is ready again, which it does only after
//!   the previous answer's body was read to its end (a body dropped early closes the
//!   connection);
//! - a request on a kept connection that closed before any of it was written (the upstream
//!   ended an idle connection as we picked it) is sent once more on a fresh connection; one
//!   that was written, even partly, is never sent again;
//! - idle connections are closed after [`IDLE_TIMEOUT`].
//!
//! Added: at most [`MAX_KEPT`] connections per worker are kept (hyper-util kept any number
//! of idle ones); a request that finds none free beyond that still gets a connection of its
//! own, which closes after its answer. Open connections are counted in
//! `upstream_http_connections{bot}`.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::TrySendError;
use hyper::client::conn::http1::{self, SendRequest};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use prometheus::IntGauge;

use crate::boxed_body::{Body, BoxError};

/// Connections kept per worker and upstream, in use or idle.
pub const MAX_KEPT: usize = 256;
/// An idle connection is closed this long after its last request.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// A failed send: the connection could not be made, or the exchange on it failed.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// Worded as hyper-util's client worded it, so log lines read as before.
    #[error("client error (Connect)")]
    Connect(#[source] BoxError),
    #[error(transparent)]
    Exchange(#[from] hyper::Error),
}

pub struct Pool {
    connector: HttpsConnector<HttpConnector>,
    /// `scheme://authority/`: where the connector dials.
    dial: Uri,
    shelves: Box<[Arc<Shard>]>,
    max_kept: usize,
    idle_timeout: Duration,
}

struct Shard {
    shelf: Mutex<Shelf>,
}

#[derive(Default)]
struct Shelf {
    kept: VecDeque<Kept>,
    /// Whether a sweeper task is closing this shelf's idle connections.
    sweeping: bool,
}

/// What hyper answers a request sent on a connection with: the request comes back with the
/// error when none of it was written.
type Sent = Result<Response<Incoming>, TrySendError<Request<Body>>>;

/// A request no kept connection was free for (boxed: a request head is large, and this is
/// the rarer outcome under load).
struct Unsent(Box<Request<Body>>);

struct Kept {
    sender: SendRequest<Body>,
    last_sent: Instant,
}

impl Pool {
    pub fn new(
        connector: HttpsConnector<HttpConnector>,
        dial: Uri,
        workers: usize,
        max_kept: usize,
        idle_timeout: Duration,
    ) -> Self {
        Self {
            connector,
            dial,
            shelves: (0..workers.max(1))
                .map(|_| {
                    Arc::new(Shard {
                        shelf: Mutex::new(Shelf::default()),
                    })
                })
                .collect(),
            max_kept,
            idle_timeout,
        }
    }

    /// Sends `request` (origin-form URI, `Host` set) on a free kept connection of this
    /// worker, else on a new one; `open` gives the gauge that counts a connection opened
    /// for it while the connection lives (looked up only then: a label lookup per request
    /// is a cost the reuse would pay for nothing).
    pub async fn send(
        &self,
        request: Request<Body>,
        open: impl FnOnce() -> IntGauge,
    ) -> Result<Response<Incoming>, SendError> {
        let shard = &self.shelves[crate::workers::index() % self.shelves.len()];
        let request = match shard.send_on_kept(request) {
            Ok(pending) => match pending.await {
                Ok(response) => return Ok(response),
                Err(mut error) => match error.take_message() {
                    // Not a byte of it was written: the connection ended before (an
                    // upstream closing an idle connection), so sending it again cannot
                    // repeat it upstream.
                    Some(unsent) => unsent,
                    None => return Err(SendError::Exchange(error.into_error())),
                },
            },
            Err(Unsent(request)) => *request,
        };
        // Boxed: the dial's state (the TLS stream among it) is kilobytes, and every
        // request's handler future would carry that size, and copy it when it is created,
        // for a step that only a new connection takes.
        let mut sender = Box::pin(self.connect(open())).await?;
        let pending = sender.try_send_request(request);
        self.keep(shard, sender);
        pending
            .await
            .map_err(|error| SendError::Exchange(error.into_error()))
    }

    /// A new connection, its task spawned on this worker and counted in `open`.
    async fn connect(&self, open: IntGauge) -> Result<SendRequest<Body>, SendError> {
        let mut connector = self.connector.clone();
        let io = tower_service::Service::call(&mut connector, self.dial.clone())
            .await
            .map_err(SendError::Connect)?;
        let (sender, connection) = http1::handshake(io).await?;
        open.inc();
        tokio::spawn(async move {
            // Its errors reach the request that was on it (or none was: an idle close).
            let _ = connection.await;
            open.dec();
        });
        Ok(sender)
    }

    /// Shelves a new connection when there is room; otherwise it serves its one request
    /// and closes (hyper ends a connection whose sender is gone once its answer is read).
    fn keep(&self, shard: &Arc<Shard>, sender: SendRequest<Body>) {
        let mut shelf = shard.lock();
        shelf.kept.retain(|kept| !kept.sender.is_closed());
        if shelf.kept.len() >= self.max_kept {
            return;
        }
        shelf.kept.push_back(Kept {
            sender,
            last_sent: Instant::now(),
        });
        if !shelf.sweeping {
            shelf.sweeping = true;
            tokio::spawn(sweep(Arc::downgrade(shard), self.idle_timeout));
        }
    }

    /// Connections kept on every worker's shelf now.
    #[cfg(test)]
    fn kept(&self) -> usize {
        self.shelves
            .iter()
            .map(|shard| shard.lock().kept.len())
            .sum()
    }
}

impl Shard {
    fn lock(&self) -> MutexGuard<'_, Shelf> {
        // A shelf is a queue of senders: one left mid-update by a panic is still usable.
        self.shelf.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends on the first free kept connection (which then goes to the back of the queue),
    /// dropping closed ones on the way; gives the request back when none is free.
    /// The future is hyper's own, not boxed: it holds no borrow of the connection.
    fn send_on_kept(
        &self,
        request: Request<Body>,
    ) -> Result<impl Future<Output = Sent> + use<>, Unsent> {
        let mut shelf = self.lock();
        let mut at = 0;
        while at < shelf.kept.len() {
            let kept = &shelf.kept[at];
            if kept.sender.is_closed() {
                shelf.kept.remove(at);
                continue;
            }
            if !kept.sender.is_ready() {
                at += 1;
                continue;
            }
            let Some(mut kept) = shelf.kept.remove(at) else {
                break;
            };
            let pending = kept.sender.try_send_request(request);
            kept.last_sent = Instant::now();
            shelf.kept.push_back(kept);
            return Ok(pending);
        }
        Err(Unsent(Box::new(request)))
    }
}

/// Closes a shelf's connections idle for `idle_timeout`, until the shelf is empty or gone.
async fn sweep(shard: Weak<Shard>, idle_timeout: Duration) {
    /// A sweeper dropped with its runtime lets the next kept connection start another.
    struct Sweeping(Weak<Shard>);
    impl Drop for Sweeping {
        fn drop(&mut self) {
            if let Some(shard) = self.0.upgrade() {
                shard.lock().sweeping = false;
            }
        }
    }
    let _sweeping = Sweeping(shard.clone());
    loop {
        tokio::time::sleep(idle_timeout / 4).await;
        let Some(shard) = shard.upgrade() else {
            return;
        };
        let now = Instant::now();
        let mut shelf = shard.lock();
        shelf.kept.retain(|kept| {
            let idle = kept.sender.is_ready()
                && now.saturating_duration_since(kept.last_sent) >= idle_timeout;
            !kept.sender.is_closed() && !idle
        });
        if shelf.kept.is_empty() {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    /// What the test upstream does with its nth request (counted from 0, over all
    /// connections).
    #[derive(Clone, Copy, PartialEq)]
    enum Then {
        /// Answers and keeps the connection open, as a keep-alive server does.
        Answer,
        /// Answers, then closes the connection without saying so (no `Connection: close`),
        /// as a server whose keep-alive timeout is shorter than ours does.
        AnswerAndClose,
        /// Reads the request and closes without answering.
        Close,
        /// Sends a head announcing 1,000 bytes and only 10 of them, then waits.
        Partial,
    }

    /// A real upstream on 127.0.0.1 speaking just enough HTTP/1.1.
    struct Upstream {
        dial: Uri,
        requests: Arc<AtomicUsize>,
        connections: Arc<AtomicUsize>,
    }

    async fn upstream(then: fn(usize) -> Then) -> Upstream {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        let requests = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(AtomicUsize::new(0));
        let (counted, accepted) = (requests.clone(), connections.clone());
        tokio::spawn(async move {
            loop {
                let (socket, _) = listener.accept().await.unwrap();
                accepted.fetch_add(1, Ordering::SeqCst);
                tokio::spawn(serve(socket, counted.clone(), then));
            }
        });
        Upstream {
            dial,
            requests,
            connections,
        }
    }

    async fn serve(mut socket: TcpStream, requests: Arc<AtomicUsize>, then: fn(usize) -> Then) {
        let mut buffer = Vec::new();
        loop {
            // One request: a head and an empty body (the tests send none).
            let end = loop {
                if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
                    break end + 4;
                }
                let mut chunk = [0u8; 1024];
                match socket.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => buffer.extend_from_slice(&chunk[..n]),
                }
            };
            buffer.drain(..end);
            let then = then(requests.fetch_add(1, Ordering::SeqCst));
            let answer: &[u8] = match then {
                Then::Answer | Then::AnswerAndClose => {
                    b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
                }
                Then::Close => return,
                Then::Partial => b"HTTP/1.1 200 OK\r\ncontent-length: 1000\r\n\r\n0123456789",
            };
            if socket.write_all(answer).await.is_err() {
                return;
            }
            match then {
                Then::AnswerAndClose => return,
                Then::Partial => {
                    // Held open: only the gateway side may end this connection.
                    let _ = socket.read(&mut [0u8; 1]).await;
                    return;
                }
                _ => {}
            }
        }
    }

    fn pool(dial: &Uri, max_kept: usize) -> Pool {
        pool_idle_for(dial, max_kept, IDLE_TIMEOUT)
    }

    fn pool_idle_for(dial: &Uri, max_kept: usize, idle_timeout: Duration) -> Pool {
        let tls = super::super::client::tls_client_config(None).unwrap();
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config((*tls).clone())
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        Pool::new(connector, dial.clone(), 1, max_kept, idle_timeout)
    }

    fn request() -> Request<Body> {
        Request::builder()
            .uri("/v3/directline/x")
            .header(http::header::HOST, "upstream")
            .body(crate::boxed_body::empty())
            .unwrap()
    }

    async fn get(pool: &Pool, open: &IntGauge) -> Result<bytes::Bytes, SendError> {
        let response = pool.send(request(), || open.clone()).await?;
        Ok(response.into_body().collect().await?.to_bytes())
    }

    /// Waits (for state, not for a time) until `gauge` reads `value`.
    async fn until(gauge: &IntGauge, value: i64) {
        tokio::time::timeout(Duration::from_secs(10), async {
            while gauge.get() != value {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .unwrap_or_else(|_| panic!("gauge stayed at {}, not {value}", gauge.get()));
    }

    fn gauge() -> IntGauge {
        IntGauge::new("open", "test").unwrap()
    }

    #[tokio::test]
    async fn answers_read_to_their_end_free_the_connection_for_the_next_request() {
        let upstream = upstream(|_| Then::Answer).await;
        let pool = pool(&upstream.dial, 4);
        let open = gauge();
        for _ in 0..5 {
            assert_eq!(&get(&pool, &open).await.unwrap()[..], b"ok");
        }
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 1);
        assert_eq!(open.get(), 1);
        assert_eq!(pool.kept(), 1);
    }

    #[tokio::test]
    async fn at_most_max_kept_connections_stay_open_after_a_burst() {
        let upstream = upstream(|_| Then::Answer).await;
        let pool = pool(&upstream.dial, 2);
        let open = gauge();
        // Heads first, bodies after: all five are in use at once.
        let responses =
            futures_util::future::join_all((0..5).map(|_| pool.send(request(), || open.clone())))
                .await;
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 5);
        for response in responses {
            response.unwrap().into_body().collect().await.unwrap();
        }
        until(&open, 2).await;
        assert_eq!(pool.kept(), 2);
        get(&pool, &open).await.unwrap();
        assert_eq!(
            upstream.connections.load(Ordering::SeqCst),
            5,
            "a kept one reused"
        );
    }

    #[tokio::test]
    async fn a_connection_whose_answer_was_not_read_to_its_end_is_never_reused() {
        let upstream = upstream(|n| if n == 0 { Then::Partial } else { Then::Answer }).await;
        let pool = pool(&upstream.dial, 4);
        let open = gauge();
        let response = pool.send(request(), || open.clone()).await.unwrap();
        drop(response);
        assert_eq!(&get(&pool, &open).await.unwrap()[..], b"ok");
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 2);
        until(&open, 1).await;
    }

    #[tokio::test]
    async fn connections_the_upstream_closed_are_replaced_and_nothing_is_sent_twice() {
        let upstream = upstream(|_| Then::AnswerAndClose).await;
        let pool = pool(&upstream.dial, 4);
        let open = gauge();
        // Back to back: each request finds the previous connection closed (or closing, and
        // then sent again on a fresh one only if none of it was written).
        for _ in 0..20 {
            assert_eq!(&get(&pool, &open).await.unwrap()[..], b"ok");
        }
        assert_eq!(upstream.requests.load(Ordering::SeqCst), 20);
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 20);
        until(&open, 0).await;
    }

    #[tokio::test]
    async fn a_request_written_on_a_connection_that_then_closes_is_not_sent_again() {
        let upstream = upstream(|n| if n == 0 { Then::Answer } else { Then::Close }).await;
        let pool = pool(&upstream.dial, 4);
        let open = gauge();
        get(&pool, &open).await.unwrap();
        let error = get(&pool, &open).await.unwrap_err();
        assert!(matches!(error, SendError::Exchange(_)), "{error}");
        assert_eq!(upstream.requests.load(Ordering::SeqCst), 2);
        assert_eq!(upstream.connections.load(Ordering::SeqCst), 1, "no retry");
    }

    #[tokio::test]
    async fn a_refused_connection_is_a_connect_error() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let dial = format!("http://{}/", listener.local_addr().unwrap())
            .parse()
            .unwrap();
        drop(listener);
        let open = gauge();
        let error = get(&pool(&dial, 4), &open).await.unwrap_err();
        assert!(matches!(error, SendError::Connect(_)), "{error}");
        assert_eq!(open.get(), 0);
    }

    #[tokio::test]
    async fn idle_connections_close_after_the_idle_timeout() {
        let upstream = upstream(|_| Then::Answer).await;
        let pool = pool_idle_for(&upstream.dial, 4, Duration::from_millis(100));
        let open = gauge();
        get(&pool, &open).await.unwrap();
        until(&open, 0).await;
        assert_eq!(pool.kept(), 0);
    }
}
