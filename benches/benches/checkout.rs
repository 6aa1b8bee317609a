//! What steadypool's checkout costs over bare deadpool.
//!
//! Both pools hold the same kind of connection: a real, idle loopback TCP stream to a
//! server that accepts and holds it. steadypool runs with its defaults (probe on every
//! checkout, reaper running), except `check_after`, raised so that no ping happens in
//! the loop; bare deadpool's `recycle` does nothing. Each of `tasks` tasks checks a
//! connection out and drops it in a loop; the figure is wall time per checkout.
//!
//! A second group, `checkout_queued`, makes every checkout wait: each task holds its
//! connection across a yield to the scheduler, so with more tasks than connections
//! the pool is always exhausted. That is where steadypool arms its `wait_timeout`
//! timer; deadpool is measured without a wait timeout and with one.
//!
//! ```text
//! cargo bench -p steadypool-benches --bench checkout
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion};
use deadpool::managed::{Metrics, RecycleResult};
use steadypool::Pool;
use steadypool::drivers::tcp::TcpManager;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Runtime;
use tokio::task::JoinSet;

const POOL_SIZES: [usize; 2] = [8, 32];
const TASKS: [usize; 4] = [1, 16, 64, 256];

/// deadpool with nothing added: connect, and a recycle that does nothing.
struct BareManager {
    addr: SocketAddr,
}

impl deadpool::managed::Manager for BareManager {
    type Type = TcpStream;
    type Error = io::Error;

    async fn create(&self) -> io::Result<TcpStream> {
        TcpStream::connect(self.addr).await
    }

    async fn recycle(&self, _: &mut TcpStream, _: &Metrics) -> RecycleResult<io::Error> {
        Ok(())
    }
}

type BarePool = deadpool::managed::Pool<BareManager>;

/// A server that accepts connections and holds them open, silent.
async fn holding_server() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a loopback port");
    let addr = listener.local_addr().expect("listener address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn runtime() -> Runtime {
    steadypool_benches::runtime().expect("a tokio runtime")
}

/// Opens `size` connections and returns them, so that all sit idle.
async fn fill<T, E: std::fmt::Debug, F: Future<Output = Result<T, E>>>(
    size: usize,
    get: impl Fn() -> F,
) {
    let mut held = Vec::with_capacity(size);
    for _ in 0..size {
        held.push(get().await.expect("open a pooled connection"));
    }
}

/// How long a task keeps its connection.
#[derive(Debug, Clone, Copy)]
enum Hold {
    /// Returned at once: with more tasks than worker threads, connections are still
    /// free, and checkouts rarely wait.
    None,
    /// Held across one yield to the scheduler: other tasks run meanwhile, so with more
    /// tasks than connections every checkout waits for one.
    Yield,
}

impl Hold {
    async fn apply(self) {
        if let Hold::Yield = self {
            tokio::task::yield_now().await;
        }
    }
}

/// A pool the benchmark checks connections out of.
trait Checkout: Clone + Send + Sync + 'static {
    /// One checkout, held as `hold` says, then returned.
    fn get_and_drop(&self, hold: Hold) -> impl Future<Output = ()> + Send;
}

impl Checkout for Pool<TcpManager> {
    async fn get_and_drop(&self, hold: Hold) {
        let conn = self.get().await.expect("steadypool checkout");
        hold.apply().await;
        drop(conn);
    }
}

impl Checkout for BarePool {
    async fn get_and_drop(&self, hold: Hold) {
        let conn = self.get().await.expect("deadpool checkout");
        hold.apply().await;
        drop(conn);
    }
}

/// `tasks` tasks share `iters` checkouts; returns the time for `iters` of them.
async fn run(pool: impl Checkout, tasks: usize, hold: Hold, iters: u64) -> Duration {
    let per_task = iters.div_ceil(tasks as u64);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                pool.get_and_drop(hold).await;
            }
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.expect("a benchmark task panicked");
    }
    // Scale to exactly `iters` checkouts (the tasks did per_task x tasks).
    started
        .elapsed()
        .mul_f64(iters as f64 / (per_task * tasks as u64) as f64)
}

/// steadypool with its defaults, except `check_after`, raised so that no ping runs;
/// `size` connections open and idle.
async fn steady_pool(addr: SocketAddr, size: usize) -> Pool<TcpManager> {
    let pool = Pool::builder(TcpManager::new(addr))
        .name(format!("bench{size}"))
        .max_size(size)
        .check_after(Duration::from_secs(3600))
        .build()
        .expect("build the steadypool pool");
    fill(size, || pool.get()).await;
    pool
}

/// deadpool with a `recycle` that does nothing; `size` connections open and idle.
async fn bare_pool(addr: SocketAddr, size: usize, wait_timeout: Option<Duration>) -> BarePool {
    let pool = BarePool::builder(BareManager { addr })
        .max_size(size)
        .wait_timeout(wait_timeout)
        .runtime(deadpool::Runtime::Tokio1)
        .build()
        .expect("build the deadpool pool");
    fill(size, || pool.get()).await;
    pool
}

fn group<'a>(c: &'a mut Criterion, name: &str) -> BenchmarkGroup<'a, WallTime> {
    let mut group = c.benchmark_group(name);
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    group
}

fn checkout(c: &mut Criterion) {
    let rt = runtime();
    let addr = rt.block_on(holding_server());
    let mut group = group(c, "checkout");
    for size in POOL_SIZES {
        let steady = rt.block_on(steady_pool(addr, size));
        let bare = rt.block_on(bare_pool(addr, size, None));
        for tasks in TASKS {
            let id = format!("pool{size}-tasks{tasks}");
            group.bench_with_input(BenchmarkId::new("steadypool", &id), &tasks, |b, &tasks| {
                b.to_async(&rt)
                    .iter_custom(|iters| run(steady.clone(), tasks, Hold::None, iters))
            });
            group.bench_with_input(BenchmarkId::new("deadpool", &id), &tasks, |b, &tasks| {
                b.to_async(&rt)
                    .iter_custom(|iters| run(bare.clone(), tasks, Hold::None, iters))
            });
        }
    }
    group.finish();
}

/// Every checkout waits: 64 tasks on 8 connections, each held across a yield.
fn checkout_queued(c: &mut Criterion) {
    const SIZE: usize = 8;
    const TASKS: usize = 64;
    let rt = runtime();
    let addr = rt.block_on(holding_server());
    let mut group = group(c, "checkout_queued");
    let steady = rt.block_on(steady_pool(addr, SIZE));
    let bare = rt.block_on(bare_pool(addr, SIZE, None));
    let bare_with_timeout = rt.block_on(bare_pool(addr, SIZE, Some(Duration::from_secs(30))));
    let id = format!("pool{SIZE}-tasks{TASKS}");
    group.bench_with_input(BenchmarkId::new("steadypool", &id), &TASKS, |b, &tasks| {
        b.to_async(&rt)
            .iter_custom(|iters| run(steady.clone(), tasks, Hold::Yield, iters))
    });
    for (name, pool) in [
        ("deadpool", bare),
        ("deadpool-wait-timeout", bare_with_timeout),
    ] {
        group.bench_with_input(BenchmarkId::new(name, &id), &TASKS, |b, &tasks| {
            b.to_async(&rt)
                .iter_custom(|iters| run(pool.clone(), tasks, Hold::Yield, iters))
        });
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    checkout(&mut criterion);
    checkout_queued(&mut criterion);
    criterion.final_summary();
}
