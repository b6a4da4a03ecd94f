//! Thread per core: client connections are served by `workers` threads, each running its
//! own current-thread tokio runtime. A connection, the requests it carries, the upstream
//! connections those requests use and, for a WebSocket, the conversation's hub and its
//! upstream socket all run on the thread that accepted the connection, so one activity never
//! wakes a second thread (with tokio's work-stealing pool, a conversation's upstream read and
//! its client write often ran on different workers: a futex wake and a context switch per
//! activity; docs/PROFILE-FINDINGS.md, the thread-per-core section).
//!
//! One acceptor hands each new connection to the worker with the fewest open connections
//! (WebSockets included), so long-lived sockets spread evenly, which neither a shared
//! listening socket (whoever wakes first wins) nor `SO_REUSEPORT` (a hash of the peer's
//! address) guarantees.

use std::cell::Cell;
use std::future::Future;
use std::io;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::{Builder, Handle};
use tokio::sync::oneshot;

thread_local! {
    /// This thread's worker number; 0 on every thread that is not a worker.
    static INDEX: Cell<usize> = const { Cell::new(0) };
}

/// The worker running this code (0 outside the workers), for per-worker state such as the
/// upstream connection pools.
pub fn index() -> usize {
    INDEX.with(Cell::get)
}

/// How many workers `configured` (the `workers` setting) means: 0 is one per core.
pub fn resolve(configured: usize) -> usize {
    if configured > 0 {
        return configured;
    }
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// The worker threads of one gateway. Dropping it stops them: their runtimes end, and every
/// task still on them (connections, hubs) is dropped.
pub struct Workers {
    workers: Vec<Worker>,
}

struct Worker {
    handle: Handle,
    /// Connections this worker serves now.
    load: Arc<AtomicUsize>,
    stop: Option<oneshot::Sender<()>>,
}

/// A connection's place on its worker, given back when the connection (or the WebSocket it
/// became) ends.
pub struct Placed {
    load: Arc<AtomicUsize>,
    number: usize,
    /// The worker's gauge in the metrics, when the server gave it one.
    gauge: Option<prometheus::IntGauge>,
}

impl Placed {
    /// The worker this connection runs on.
    pub fn number(&self) -> usize {
        self.number
    }

    /// Counts this connection in `gauge` until it ends.
    pub fn count_in(&mut self, gauge: prometheus::IntGauge) {
        gauge.inc();
        self.gauge = Some(gauge);
    }
}

impl Drop for Placed {
    fn drop(&mut self) {
        self.load.fetch_sub(1, Ordering::Relaxed);
        if let Some(gauge) = &self.gauge {
            gauge.dec();
        }
    }
}

impl Workers {
    /// Starts `count` worker threads (at least one).
    pub fn start(count: usize) -> io::Result<Self> {
        let mut workers = Vec::with_capacity(count.max(1));
        for number in 0..count.max(1) {
            let runtime = Builder::new_current_thread().enable_all().build()?;
            let handle = runtime.handle().clone();
            let (stop, stopped) = oneshot::channel::<()>();
            std::thread::Builder::new()
                .name(format!("dlgw-worker-{number}"))
                .spawn(move || {
                    INDEX.with(|index| index.set(number));
                    // A current-thread runtime runs its tasks only inside `block_on`: this
                    // thread drives them until the gateway stops.
                    runtime.block_on(async {
                        let _ = stopped.await;
                    });
                })?;
            workers.push(Worker {
                handle,
                load: Arc::new(AtomicUsize::new(0)),
                stop: Some(stop),
            });
        }
        Ok(Self { workers })
    }

    pub fn count(&self) -> usize {
        self.workers.len()
    }

    /// Runs `task` on the least-loaded worker, which it holds a place on through [`Placed`].
    pub fn place<F, T>(&self, task: F)
    where
        F: FnOnce(Placed) -> T + Send + 'static,
        T: Future<Output = ()> + Send + 'static,
    {
        let (number, worker) = self
            .workers
            .iter()
            .enumerate()
            .min_by_key(|(_, worker)| worker.load.load(Ordering::Relaxed))
            .expect("at least one worker");
        worker.load.fetch_add(1, Ordering::Relaxed);
        let placed = Placed {
            load: worker.load.clone(),
            number,
            gauge: None,
        };
        worker.handle.spawn(async move { task(placed).await });
    }

    /// Connections each worker serves now (for the tests and the benchmarks).
    pub fn loads(&self) -> Vec<usize> {
        self.workers
            .iter()
            .map(|worker| worker.load.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for worker in &mut self.workers {
            if let Some(stop) = worker.stop.take() {
                let _ = stop.send(());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn each_worker_knows_its_number_and_new_work_goes_to_the_least_loaded() {
        let workers = Workers::start(2).unwrap();
        let (seen, mut numbers) = tokio::sync::mpsc::unbounded_channel();
        let (release, released) = tokio::sync::watch::channel(false);
        for _ in 0..4 {
            let seen = seen.clone();
            let mut released = released.clone();
            let (placed_tx, placed_rx) = std::sync::mpsc::channel();
            workers.place(move |placed| async move {
                seen.send(index()).unwrap();
                let _ = placed_tx.send(());
                let _ = released.wait_for(|done| *done).await;
                drop(placed);
            });
            placed_rx.recv_timeout(Duration::from_secs(5)).unwrap();
        }
        let mut per_worker = [0; 2];
        for _ in 0..4 {
            per_worker[numbers.blocking_recv().unwrap()] += 1;
        }
        assert_eq!(
            per_worker,
            [2, 2],
            "four long connections split two and two"
        );
        assert_eq!(workers.loads(), vec![2, 2]);
        release.send(true).unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while workers.loads() != vec![0, 0] {
            assert!(std::time::Instant::now() < deadline, "places given back");
            std::thread::sleep(Duration::from_millis(5));
        }
        assert_eq!(index(), 0, "the test thread is no worker");
    }

    #[test]
    fn zero_means_one_worker_per_core() {
        assert_eq!(resolve(3), 3);
        assert!(resolve(0) >= 1);
    }
}
