//! What a client connection may hold before it has sent a request: a place under the
//! per-client-IP cap, and a deadline for its first request.
//!
//! hyper's HTTP/1.1 header timer starts only once hyper-util has sniffed which protocol a
//! connection speaks; until the first bytes arrive, and for an HTTP/2 connection that sends
//! its preface and no stream, nothing bounds it. So the whole connection must see its first
//! request within `limits.header_read_timeout`, or it is closed. From then on HTTP/1.1's
//! header timer bounds idle keep-alive time, and HTTP/2 keep-alive pings find dead peers.

use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use dashmap::DashMap;

/// Open connections per client IP (WebSockets upgraded from them included).
#[derive(Default)]
pub struct PerIp {
    open: DashMap<IpAddr, usize>,
}

/// One connection's place under the per-IP cap. Shared by the connection's task and, after
/// an upgrade, the WebSocket's task: the place is given back when the last of them ends.
pub struct IpSlot {
    owner: Arc<PerIp>,
    ip: IpAddr,
}

impl Drop for IpSlot {
    fn drop(&mut self) {
        if let Some(mut open) = self.owner.open.get_mut(&self.ip) {
            *open = open.saturating_sub(1);
        }
        self.owner.open.remove_if(&self.ip, |_, open| *open == 0);
    }
}

impl PerIp {
    /// A place for one more connection from `ip`, or `None` when `max` are open (0: no cap).
    pub fn admit(self: &Arc<Self>, ip: IpAddr, max: usize) -> Option<Arc<IpSlot>> {
        if max > 0 {
            let mut open = self.open.entry(ip).or_insert(0);
            if *open >= max {
                return None;
            }
            *open += 1;
        } else {
            *self.open.entry(ip).or_insert(0) += 1;
        }
        Some(Arc::new(IpSlot {
            owner: self.clone(),
            ip,
        }))
    }

    /// Connections open from `ip` now (for the tests of the cap).
    #[cfg(test)]
    pub fn open(&self, ip: IpAddr) -> usize {
        self.open.get(&ip).map_or(0, |open| *open)
    }
}

/// Set by a connection's first request.
#[derive(Default)]
pub struct FirstRequest(AtomicBool);

impl FirstRequest {
    pub fn arrived(&self) {
        // A plain store: checked once, when the deadline passes.
        if !self.0.load(Ordering::Relaxed) {
            self.0.store(true, Ordering::Relaxed);
        }
    }

    fn has_arrived(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
}

/// Runs `connection` to its end, unless no request has arrived on it within `deadline`:
/// then it is dropped (the socket closes) and `None` is returned.
///
/// The connection comes boxed: hyper's connection futures trip rustc's higher-ranked `Send`
/// check when passed through a generic async function (a known rustc limitation), and the box
/// is one allocation per connection, not per request.
pub async fn within_first_request<T>(
    mut connection: Pin<Box<dyn Future<Output = T> + Send>>,
    first: Arc<FirstRequest>,
    deadline: Duration,
) -> Option<T> {
    let sleep = tokio::time::sleep(deadline);
    tokio::select! {
        output = connection.as_mut() => return Some(output),
        () = sleep => {}
    }
    if !first.has_arrived() {
        return None;
    }
    Some(connection.await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_per_ip_cap_counts_until_the_last_holder_lets_go() {
        let per_ip = Arc::new(PerIp::default());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        let other: IpAddr = "192.0.2.2".parse().unwrap();
        let a = per_ip.admit(ip, 2).unwrap();
        let b = per_ip.admit(ip, 2).unwrap();
        assert!(per_ip.admit(ip, 2).is_none());
        assert!(per_ip.admit(other, 2).is_some());
        let upgraded = a.clone();
        drop(a);
        assert!(
            per_ip.admit(ip, 2).is_none(),
            "the WebSocket still holds it"
        );
        drop(upgraded);
        assert_eq!(per_ip.open(ip), 1);
        drop(b);
        assert_eq!(per_ip.open(ip), 0);
        // Uncapped, still counted.
        let uncapped: Vec<_> = (0..5).map(|_| per_ip.admit(ip, 0).unwrap()).collect();
        assert_eq!(per_ip.open(ip), 5);
        drop(uncapped);
        assert_eq!(per_ip.open(ip), 0);
    }

    #[tokio::test]
    async fn a_connection_without_a_request_is_dropped_at_the_deadline() {
        let first = Arc::new(FirstRequest::default());
        let silent = within_first_request(
            Box::pin(std::future::pending::<()>()),
            first,
            Duration::from_millis(10),
        );
        assert_eq!(silent.await, None);
        let first = Arc::new(FirstRequest::default());
        first.arrived();
        let served = within_first_request(
            Box::pin(async {
                tokio::time::sleep(Duration::from_millis(30)).await;
                7
            }),
            first,
            Duration::from_millis(10),
        );
        assert_eq!(served.await, Some(7));
    }
}
