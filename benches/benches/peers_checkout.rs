//! What a checkout costs in steadypool and in each of its peers.
//!
//! Every pool holds `size` real, idle loopback TCP connections to an echo server;
//! `tasks` tasks (OS threads for r2d2) check one out and return it at once, in a loop.
//! The figure is wall time per checkout. The pools and their checks are described in
//! `steadypool_benches::pools`; the `*-ping` rows pay a one-byte round trip per
//! checkout, which is what steadypool's probe avoids.
//!
//! ```text
//! cargo bench -p steadypool-benches --bench peers_checkout
//! ```

use std::time::Duration;

use criterion::{BenchmarkId, Criterion};
use steadypool_benches::checkout::{self, POOL_SIZES, TASKS};
use steadypool_benches::echo::EchoServer;
use steadypool_benches::pools::Kind;
use tokio::runtime::Runtime;

fn runtime() -> Runtime {
    steadypool_benches::runtime().expect("a tokio runtime")
}

fn peers_checkout(c: &mut Criterion) {
    let rt = runtime();
    let server = rt
        .block_on(EchoServer::start())
        .expect("start the echo server");
    let mut group = c.benchmark_group("peers_checkout");
    group
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    for size in POOL_SIZES {
        for kind in Kind::ALL {
            let pool = rt
                .block_on(checkout::prepare(kind, server.addr(), size))
                .expect("build the pool and open its connections");
            for tasks in TASKS {
                let id = BenchmarkId::new(kind.label(), checkout::case(size, tasks));
                group.bench_with_input(id, &tasks, |b, &tasks| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let pool = pool.clone();
                        async move {
                            checkout::run(kind, &pool, tasks, iters)
                                .await
                                .expect("every checkout succeeds")
                        }
                    })
                });
            }
        }
    }
    group.finish();
}

fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    peers_checkout(&mut criterion);
    criterion.final_summary();
}
