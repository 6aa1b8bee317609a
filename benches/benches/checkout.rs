//! What steadypool's checkout costs over bare deadpool.
//!
//! Both pools hold the same kind of connection: a real, idle loopback TCP stream to a
//! server that accepts and holds it. steadypool runs with its defaults (probe on every
//! checkout, reaper running), except `check_after`, raised so that no ping happens in
//! the loop; bare deadpool's `recycle` does nothing. Each of `tasks` tasks checks a
//! connection out and drops it in a loop; the figure is wall time per checkout.
//!
//! ```text
//! cargo bench -p steadypool-benches --bench checkout
//! ```

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
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
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
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

/// A pool the benchmark checks connections out of.
trait Checkout: Clone + Send + Sync + 'static {
    /// One checkout, dropped at once.
    fn get_and_drop(&self) -> impl Future<Output = ()> + Send;
}

impl Checkout for Pool<TcpManager> {
    async fn get_and_drop(&self) {
        drop(self.get().await.expect("steadypool checkout"));
    }
}

impl Checkout for BarePool {
    async fn get_and_drop(&self) {
        drop(self.get().await.expect("deadpool checkout"));
    }
}

/// `tasks` tasks share `iters` get+drop cycles; returns the time for `iters` of them.
async fn run(pool: impl Checkout, tasks: usize, iters: u64) -> Duration {
    let per_task = iters.div_ceil(tasks as u64);
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                pool.get_and_drop().await;
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

fn checkout(c: &mut Criterion) {
    let rt = runtime();
    let addr = rt.block_on(holding_server());
    let mut group = c.benchmark_group("checkout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));

    for size in POOL_SIZES {
        let steady: Pool<TcpManager> = rt.block_on(async {
            let pool = Pool::builder(TcpManager::new(addr))
                .name(format!("bench{size}"))
                .max_size(size)
                .check_after(Duration::from_secs(3600))
                .build()
                .expect("build the steadypool pool");
            fill(size, || pool.get()).await;
            pool
        });
        let bare: BarePool = rt.block_on(async {
            let pool = BarePool::builder(BareManager { addr })
                .max_size(size)
                .build()
                .expect("build the deadpool pool");
            fill(size, || pool.get()).await;
            pool
        });

        for tasks in TASKS {
            let id = format!("pool{size}-tasks{tasks}");
            group.bench_with_input(BenchmarkId::new("steadypool", &id), &tasks, |b, &tasks| {
                b.to_async(&rt)
                    .iter_custom(|iters| run(steady.clone(), tasks, iters))
            });
            group.bench_with_input(BenchmarkId::new("deadpool", &id), &tasks, |b, &tasks| {
                b.to_async(&rt)
                    .iter_custom(|iters| run(bare.clone(), tasks, iters))
            });
        }
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    checkout(&mut criterion);
    criterion.final_summary();
}
