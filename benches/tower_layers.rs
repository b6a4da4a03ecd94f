//! What a tower stack would cost the request path: the pipeline's generic concerns (request
//! id, in-flight gauge, a timeout, the access-log counter) as tower layers around a boxed
//! service, against the same work as plain function calls, per request, on one thread.
//!
//!     cargo bench --bench tower_layers [-- ITERATIONS]
//!
//! Prints nanoseconds per request for both and the difference; docs/BENCHMARKS.md ("tower")
//! compares it with the gateway's measured cost per POST.

use std::convert::Infallible;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tower::util::BoxCloneService;
use tower::{Service, ServiceBuilder, ServiceExt};

static IN_FLIGHT: AtomicI64 = AtomicI64::new(0);
static LOGGED: AtomicU64 = AtomicU64::new(0);

#[derive(Clone)]
struct Request {
    path: &'static str,
    request_id: Option<u64>,
}

struct Response {
    status: u16,
}

/// The route: the same trivial work in both variants, so only the plumbing differs.
async fn route(request: Request) -> Result<Response, Infallible> {
    let status = if request.path.len() > 3 { 200 } else { 404 };
    Ok(Response {
        status: status + request.request_id.map_or(0, |_| 0),
    })
}

async fn hand_written(mut request: Request) -> Response {
    IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
    request.request_id = Some(fastrand::u64(..));
    let response = match tokio::time::timeout(Duration::from_secs(30), route(request)).await {
        Ok(Ok(response)) => response,
        _ => Response { status: 504 },
    };
    LOGGED.fetch_add(u64::from(response.status), Ordering::Relaxed);
    IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
    response
}

fn layered() -> BoxCloneService<Request, Response, tower::BoxError> {
    let service = ServiceBuilder::new()
        .map_request(|mut request: Request| {
            IN_FLIGHT.fetch_add(1, Ordering::Relaxed);
            request.request_id = Some(fastrand::u64(..));
            request
        })
        .map_response(|response: Response| {
            LOGGED.fetch_add(u64::from(response.status), Ordering::Relaxed);
            IN_FLIGHT.fetch_sub(1, Ordering::Relaxed);
            response
        })
        .timeout(Duration::from_secs(30))
        .service_fn(route);
    BoxCloneService::new(service)
}

fn main() {
    let iterations: u32 = std::env::args()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or(2_000_000);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .expect("runtime");
    let request = Request {
        path: "/v3/directline/conversations",
        request_id: None,
    };
    runtime.block_on(async {
        let service = layered();
        let mut rounds = Vec::new();
        for _ in 0..3 {
            let started = Instant::now();
            for _ in 0..iterations {
                std::hint::black_box(hand_written(request.clone()).await.status);
            }
            let plain = started.elapsed();
            let started = Instant::now();
            for _ in 0..iterations {
                // Per request, as a server does: clone the stack, wait for ready, call.
                let mut service = service.clone();
                let response = service.ready().await.expect("ready");
                let response = response.call(request.clone()).await.expect("served");
                std::hint::black_box(response.status);
            }
            let tower = started.elapsed();
            rounds.push((plain, tower));
        }
        for (plain, tower) in rounds {
            let per = |d: Duration| d.as_nanos() as f64 / f64::from(iterations);
            println!(
                "hand-written {:.0} ns/request, tower layers {:.0} ns/request, difference {:.0} ns",
                per(plain),
                per(tower),
                per(tower) - per(plain)
            );
        }
    });
    assert!(LOGGED.load(Ordering::Relaxed) > 0 && IN_FLIGHT.load(Ordering::Relaxed) == 0);
}
