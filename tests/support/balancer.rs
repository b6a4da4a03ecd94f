//! A plain round-robin TCP balancer on 127.0.0.1:0, like an L4 load balancer with no
//! affinity: each new connection goes to the next backend, bytes are copied both ways
//! untouched (HTTP and WebSocket alike).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

pub struct Balancer {
    pub addr: SocketAddr,
    /// Connections accepted so far, per backend.
    counts: Arc<Vec<AtomicUsize>>,
    task: JoinHandle<()>,
}

impl Balancer {
    pub async fn start(backends: Vec<SocketAddr>) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let counts: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let task = tokio::spawn({
            let counts = counts.clone();
            async move {
                let mut next = 0usize;
                while let Ok((mut client, _)) = listener.accept().await {
                    let index = next % backends.len();
                    next += 1;
                    counts[index].fetch_add(1, Ordering::Relaxed);
                    let backend = backends[index];
                    tokio::spawn(async move {
                        if let Ok(mut server) = TcpStream::connect(backend).await {
                            let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                        }
                    });
                }
            }
        });
        Balancer { addr, counts, task }
    }

    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Connections sent to each backend so far.
    pub fn connections(&self) -> Vec<usize> {
        self.counts
            .iter()
            .map(|count| count.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
    }
}
