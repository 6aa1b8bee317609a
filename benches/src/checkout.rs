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

/// Checkouts each connection of a freshly filled pool gets before any timing: see
/// [`warm_up`].
const ROTATIONS: u64 = 2;

/// Two warm-up runs whose cost per checkout differs by less than this are taken as
/// steady: timing starts after them.
const STEADY: f64 = 0.10;

/// The warm-up goes on for at most this many times its set length while its runs do
/// not agree, and then says so.
const WARM_UP_CAP: u32 = 4;

/// Timed batches whose middle half spans more than this, relative to their median,
/// are noted as unsteady, and the cell gets as many batches again, once.
const SPREAD: f64 = 0.15;

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
    check_open_files(&settings.sizes, kinds.len())?;
    let server = crate::echo::EchoServer::start().await?;
    let mut records = Vec::new();
    for &size in &settings.sizes {
        let mut pools = Vec::with_capacity(kinds.len());
        for &kind in kinds {
            let started = Instant::now();
            pools.push((kind, prepare(kind, server.addr(), size).await?));
            eprintln!(
                "checkout {:>14} pool{size:<12} filled in {:.2} s",
                kind.label(),
                started.elapsed().as_secs_f64()
            );
        }
        for &tasks in &settings.tasks {
            let mut iters = Vec::with_capacity(pools.len());
            for (kind, pool) in &pools {
                iters.push(warm_up(*kind, pool, tasks, size, &settings).await?);
            }
            let mut per_op = vec![Vec::with_capacity(settings.batches); pools.len()];
            let mut rounds = settings.batches.max(1);
            let mut extended = false;
            loop {
                for _ in 0..rounds {
                    for (i, (kind, pool)) in pools.iter().enumerate() {
                        let took = run(*kind, pool, tasks, iters[i]).await?;
                        per_op[i].push(took.as_secs_f64() * 1e9 / iters[i] as f64);
                    }
                }
                if extended || per_op.iter().all(|samples| spread(samples) <= SPREAD) {
                    break;
                }
                // A burst of load from elsewhere fell on some batches: as many again,
                // and the median of all.
                extended = true;
                rounds = per_op.first().map_or(0, Vec::len);
            }
            for ((kind, _), mut samples) in pools.iter().zip(per_op) {
                let unsteady = spread(&samples);
                let ns = crate::stats::median(&mut samples);
                let note = if unsteady > SPREAD {
                    "  NOTE: unsteady, the machine's load changed during the batches"
                } else {
                    ""
                };
                eprintln!(
                    "checkout {:>14} {:<16} {ns:>10.0} ns  ({} batches, middle half within {:.0} %){note}",
                    kind.label(),
                    case(size, tasks),
                    samples.len(),
                    unsteady * 100.0
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

/// Warms a pool of `size` up for `tasks`, and returns how many checkouts make one
/// batch.
///
/// First every connection is checked out [`ROTATIONS`] times. A pool just filled
/// holds connections that sat idle while the other pools were filled, often past
/// steadypool's `check_after` (500 ms): the first checkout of each pings it, a
/// round trip (~20 µs). With 4,096 connections that is a whole rotation of pings, and
/// a batch sized from it, or timed during it, measured that instead of the pool's
/// steady state (610 to 3,304 ns in quick mode, where 300 ns was right). Then it runs
/// for `settings.warm_up` and until two runs in a row cost the same within
/// [`STEADY`] (at most [`WARM_UP_CAP`] times the warm-up); the batch is sized from
/// the last of them.
async fn warm_up(
    kind: Kind,
    pool: &AnyPool,
    tasks: usize,
    size: usize,
    settings: &Settings,
) -> Result<u64, BenchError> {
    run(kind, pool, tasks, ROTATIONS * size as u64).await?;
    let mut iters: u64 = (tasks as u64 * 16).max(256);
    let mut warmed = Duration::ZERO;
    let mut last: Option<f64> = None;
    loop {
        let took = run(kind, pool, tasks, iters).await?;
        warmed += took;
        let per = took.as_secs_f64() / iters as f64;
        if per > 0.0 {
            iters = ((settings.batch.as_secs_f64() / per) as u64).max(tasks as u64);
        }
        let steady = last.is_some_and(|before| (per - before).abs() <= STEADY * before);
        last = Some(per);
        if warmed >= settings.warm_up && steady {
            return Ok(iters);
        }
        if warmed >= settings.warm_up * WARM_UP_CAP {
            eprintln!(
                "checkout {:>14} {:<16} NOTE: still not steady after {:.1} s of warm-up",
                kind.label(),
                case(size, tasks),
                warmed.as_secs_f64()
            );
            return Ok(iters);
        }
    }
}

/// How far apart the middle half of `samples` lies, relative to their median: 0.1
/// when the second and the fourth quartile differ by a tenth of the median.
///
/// ```
/// use steadypool_benches::checkout::spread;
/// assert_eq!(spread(&[100.0, 100.0, 100.0, 100.0]), 0.0);
/// assert!((spread(&[90.0, 100.0, 110.0, 500.0, 100.0]) - 0.1).abs() < 1e-9);
/// ```
pub fn spread(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n == 0 {
        return 0.0;
    }
    let median = crate::stats::median(&mut sorted.clone());
    if median <= 0.0 {
        return 0.0;
    }
    (sorted[(3 * n).div_ceil(4) - 1] - sorted[n / 4]) / median
}

/// Open files a pool of `size` connections to a server in this process takes: both
/// ends of each connection.
fn files_per_pool(size: usize) -> usize {
    2 * size
}

/// Refuses pool sizes whose connections, for `pools` pools held at once, do not fit
/// under this process's limit of open files (read from `/proc/self/limits`; no check
/// where it cannot be read), with what it would take.
///
/// # Errors
/// [`BenchError::Setup`] naming the size, the files it needs and the limit.
pub fn check_open_files(sizes: &[usize], pools: usize) -> Result<(), BenchError> {
    let Some(limit) = open_file_limit() else {
        return Ok(());
    };
    // The runtime, the server's listener, logs and plots.
    const SPARE: usize = 256;
    for &size in sizes {
        let needed = files_per_pool(size) * pools + SPARE;
        if needed > limit {
            return Err(BenchError::Setup(format!(
                "checkout: pool size {size} with {pools} pools at once needs about {needed} \
                 open files (both ends of every connection) and the limit here is {limit}: \
                 raise it (ulimit -n), or measure fewer pools (--pools) or smaller sizes \
                 (--sizes)"
            )));
        }
    }
    Ok(())
}

/// The soft limit on open files, from `/proc/self/limits`.
fn open_file_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Settings, check_open_files, open_file_limit, scenario};
    use crate::pools::Kind;

    #[test]
    fn a_size_beyond_the_open_file_limit_is_refused_with_the_numbers() {
        let limit = open_file_limit().expect("Linux shows the limit in /proc/self/limits");
        let refused = check_open_files(&[8, limit], 2).unwrap_err().to_string();
        assert!(
            refused.contains(&format!("pool size {limit} ")),
            "{refused}"
        );
        assert!(
            refused.contains(&format!("the limit here is {limit}")),
            "{refused}"
        );
        check_open_files(&[8, 32], 2).unwrap();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_pool_gets_a_figure_in_every_cell() {
        let settings = Settings {
            sizes: vec![4],
            tasks: vec![1, 8],
            warm_up: Duration::from_millis(5),
            batch: Duration::from_millis(5),
            batches: 2,
        };
        let kinds = [Kind::Steadypool, Kind::DeadpoolBare];
        let records = scenario(settings, &kinds).await.unwrap();
        assert_eq!(records.len(), 4);
        for record in &records {
            assert!(
                record.value.is_finite() && record.value > 0.0,
                "{}: {}",
                record.case,
                record.value
            );
        }
    }
}
