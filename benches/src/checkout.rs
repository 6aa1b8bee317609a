//! Scenario 1: what a checkout costs. Each pool holds `size` real, idle loopback
//! connections; `tasks` tasks (OS threads for r2d2) check one out and return it at
//! once, in a loop. The figure is wall time per checkout.

use std::net::SocketAddr;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::error::BenchError;
use crate::pools::{AnyPool, AsyncEchoPool, Kind, PoolSpec};
use crate::report::Record;

/// Pool sizes measured.
pub const POOL_SIZES: [usize; 2] = [8, 32];
/// Concurrent tasks measured.
pub const TASKS: [usize; 4] = [1, 16, 64, 256];

/// The case name of a pool size and a task count, as used in results.
///
/// ```
/// assert_eq!(steadypool_benches::checkout::case(8, 16), "pool8-tasks16");
/// ```
pub fn case(size: usize, tasks: usize) -> String {
    format!("pool{size}-tasks{tasks}")
}

/// Builds a pool of `kind` to `addr` and opens all `size` of its connections.
///
/// # Errors
/// When the pool cannot be built or a connection cannot be opened.
pub async fn prepare(kind: Kind, addr: SocketAddr, size: usize) -> Result<AnyPool, BenchError> {
    let pool = PoolSpec::new(kind, addr, size).build().await?;
    pool.fill(kind, size).await?;
    Ok(pool)
}

/// Runs `iters` checkouts spread over `tasks` tasks and returns the time they took.
///
/// # Errors
/// [`BenchError::Checkout`] when a checkout fails.
pub async fn run(
    kind: Kind,
    pool: &AnyPool,
    tasks: usize,
    iters: u64,
) -> Result<Duration, BenchError> {
    let tasks = tasks.max(1);
    let per_task = iters.div_ceil(tasks as u64).max(1);
    let done = per_task * tasks as u64;
    let took = pool
        .time_checkouts(tasks, per_task)
        .await
        .map_err(|message| BenchError::Checkout {
            pool: kind.label(),
            message,
        })?;
    // Scaled to exactly `iters` checkouts.
    Ok(took.mul_f64(iters as f64 / done as f64))
}

/// `per_task` checkouts in each of `tasks` tasks. Each measured loop awaits that
/// pool type's own future (a shared enum future would be as large as the largest
/// pool's, and copying it would be timed for every pool).
pub(crate) async fn run_tasks<P: AsyncEchoPool>(
    pool: &P,
    tasks: usize,
    per_task: u64,
) -> Result<Duration, String> {
    let started = Instant::now();
    let mut set = JoinSet::new();
    for _ in 0..tasks {
        let pool = pool.clone();
        set.spawn(async move {
            for _ in 0..per_task {
                AsyncEchoPool::get_and_drop(&pool).await?;
            }
            Ok::<(), String>(())
        });
    }
    while let Some(joined) = set.join_next().await {
        joined.map_err(|e| e.to_string())??;
    }
    Ok(started.elapsed())
}

/// r2d2 is a blocking pool: its users are threads. They start together behind a
/// barrier, so thread creation is not timed.
pub(crate) fn run_threads(
    pool: &r2d2::Pool<crate::pools::R2d2Echo>,
    threads: usize,
    per_thread: u64,
) -> Result<Duration, String> {
    let barrier = Arc::new(Barrier::new(threads + 1));
    let mut handles = Vec::with_capacity(threads);
    for _ in 0..threads {
        let pool = pool.clone();
        let barrier = Arc::clone(&barrier);
        handles.push(std::thread::spawn(move || {
            barrier.wait();
            for _ in 0..per_thread {
                drop(pool.get().map_err(|e| e.to_string())?);
            }
            Ok::<(), String>(())
        }));
    }
    barrier.wait();
    let started = Instant::now();
    let mut outcome = Ok(());
    for handle in handles {
        let joined = handle
            .join()
            .map_err(|_| "a checkout thread panicked".to_owned())
            .and_then(|r| r);
        if outcome.is_ok() {
            outcome = joined;
        }
    }
    outcome.map(|()| started.elapsed())
}

/// Which cells the `bench-all` checkout measurement runs, and for how long.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Pool sizes (default [`POOL_SIZES`]).
    pub sizes: Vec<usize>,
    /// Task counts (default [`TASKS`]).
    pub tasks: Vec<usize>,
    /// Time to run before measuring.
    pub warm_up: Duration,
    /// Length of one timed batch.
    pub batch: Duration,
    /// Timed batches; the median is reported.
    pub batches: usize,
}

/// Measures every kind at every pool size and task count: nanoseconds per checkout,
/// the median of `settings.batches` batches.
///
/// The kinds take turns, batch by batch, so that a burst of load from elsewhere on the
/// machine falls on all of them alike rather than on whichever ran at that moment.
///
/// # Errors
/// When a pool cannot be built or a checkout fails.
pub async fn scenario(settings: Settings, kinds: &[Kind]) -> Result<Vec<Record>, BenchError> {
    let server = crate::echo::EchoServer::start().await?;
    let mut records = Vec::new();
    for &size in &settings.sizes {
        let mut pools = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            pools.push((kind, prepare(kind, server.addr(), size).await?));
        }
        for &tasks in &settings.tasks {
            let mut iters = Vec::with_capacity(pools.len());
            for (kind, pool) in &pools {
                iters.push(warm_up(*kind, pool, tasks, &settings).await?);
            }
            let mut per_op = vec![Vec::with_capacity(settings.batches); pools.len()];
            for _ in 0..settings.batches.max(1) {
                for (i, (kind, pool)) in pools.iter().enumerate() {
                    let took = run(*kind, pool, tasks, iters[i]).await?;
                    per_op[i].push(took.as_secs_f64() * 1e9 / iters[i] as f64);
                }
            }
            for ((kind, _), mut samples) in pools.iter().zip(per_op) {
                let ns = crate::stats::median(&mut samples);
                eprintln!(
                    "checkout {:>14} {:<16} {ns:>10.0} ns",
                    kind.label(),
                    case(size, tasks)
                );
                records.push(Record::new(
                    "checkout",
                    case(size, tasks),
                    kind.label(),
                    "ns_per_checkout",
                    ns,
                ));
            }
        }
    }
    Ok(records)
}

/// Runs checkouts for `settings.warm_up`, and returns how many make one batch.
async fn warm_up(
    kind: Kind,
    pool: &AnyPool,
    tasks: usize,
    settings: &Settings,
) -> Result<u64, BenchError> {
    let mut iters: u64 = (tasks as u64 * 16).max(256);
    let mut warmed = Duration::ZERO;
    while warmed < settings.warm_up {
        let took = run(kind, pool, tasks, iters).await?;
        warmed += took;
        let per = took.as_secs_f64() / iters as f64;
        if per > 0.0 {
            iters = ((settings.batch.as_secs_f64() / per) as u64).max(tasks as u64);
        }
    }
    Ok(iters)
}
