//! Scenario 2: goodput under faults.
//!
//! `tasks` tasks share `requests` idempotent echo requests, sent through a
//! [`ChaosProxy`] to the echo server. Each task sends a request, thinks for 10–50 ms
//! (uniform), and sends the next. Traffic comes in waves: every 3 s period has 1.8 s
//! of traffic and a 1.2 s lull, so pooled connections sit idle past the proxy's idle
//! limit once per period, as they do behind a load balancer between bursts.
//!
//! With faults on, the proxy
//! * resets connections idle for 1 s (a load balancer's idle timeout, scaled down),
//! * resets a connection instead of forwarding a chunk with probability 0.5 % per
//!   chunk: about 1 % of request/reply exchanges are cut mid-request,
//! * crashes every 3 s, 0.9 s into the traffic of each period: every open connection
//!   is reset at once; the upstream accepts again at once (a supervised restart).
//!
//! Without faults the same proxy forwards faithfully. Each request's latency runs from
//! its start to its answer (checkouts, reconnects and retries included); a request
//! that fails, or takes over 10 s, counts as failed.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use steadypool::chaos::{ChaosProxy, Faults, IdleClose};
use tokio::task::JoinSet;

use crate::echo::EchoServer;
use crate::error::BenchError;
use crate::pools::{AnyPool, Kind, PoolSpec};
use crate::report::Record;
use crate::stats;

/// Length of one traffic wave: traffic, then a lull.
pub const PERIOD: Duration = Duration::from_millis(3000);
/// Traffic at the start of each period; the rest is a lull.
pub const ACTIVE: Duration = Duration::from_millis(1800);
/// When, within each period, the upstream crashes.
pub const CRASH_AT: Duration = Duration::from_millis(900);
/// The proxy's idle limit.
pub const IDLE_CLOSE: Duration = Duration::from_secs(1);
/// Chance that the proxy resets a connection instead of forwarding a chunk.
pub const RESET_PER_CHUNK: f64 = 0.005;
/// A request slower than this counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The start of a wave: every task wakes from the lull at the period's start, so the
/// requests started this early in a period are the burst that queues for the pool's
/// connections.
pub const WAVE_START: Duration = Duration::from_millis(50);

/// A pool set-up in this scenario: a kind, and whether the application retries a
/// failed request itself (immediately, up to `attempts` in all).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Contender {
    /// The pool.
    pub kind: Kind,
    /// Attempts per request made by the application (1: no retry of its own).
    pub attempts: u32,
}

impl Contender {
    /// The label used in results: the kind's, plus `+retryN` for application retries.
    ///
    /// ```
    /// use steadypool_benches::{goodput::Contender, pools::Kind};
    /// let c = Contender { kind: Kind::Bb8Ping, attempts: 3 };
    /// assert_eq!(c.label(), "bb8-ping+retry3");
    /// ```
    pub fn label(&self) -> String {
        if self.attempts > 1 {
            format!("{}+retry{}", self.kind.label(), self.attempts)
        } else {
            self.kind.label().to_owned()
        }
    }
}

/// The set-ups compared: steadypool's own `run_idempotent`; deadpool with a recycle
/// that checks the socket; bb8 with its checkout ping; and those two again with an
/// application retry loop as strong as steadypool's default (3 attempts).
pub const CONTENDERS: [Contender; 5] = [
    Contender {
        kind: Kind::Steadypool,
        attempts: 1,
    },
    Contender {
        kind: Kind::DeadpoolPeek,
        attempts: 1,
    },
    Contender {
        kind: Kind::Bb8Ping,
        attempts: 1,
    },
    Contender {
        kind: Kind::DeadpoolPeek,
        attempts: 3,
    },
    Contender {
        kind: Kind::Bb8Ping,
        attempts: 3,
    },
];

/// The workload's size.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Requests per run.
    pub requests: u64,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Connections per pool.
    pub pool_size: usize,
    /// One run per seed (for the proxy's and the think times' random draws).
    pub seeds: Vec<u64>,
}

/// One finished request.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    /// When it started, from the run's start.
    pub at: Duration,
    /// How long it took.
    pub latency: Duration,
    /// Whether it succeeded.
    pub ok: bool,
}

/// One run of one contender.
#[derive(Debug, Clone)]
pub struct Run {
    /// Who ran.
    pub contender: Contender,
    /// Whether faults were on.
    pub faults: bool,
    /// Every request.
    pub samples: Vec<Sample>,
    /// From the start to the last answer.
    pub elapsed: Duration,
    /// When the upstream crashed, from the run's start.
    pub crashes: Vec<Duration>,
    /// Resets the proxy injected.
    pub injected_resets: u64,
}

impl Run {
    /// Successful requests per second.
    pub fn throughput(&self) -> f64 {
        let ok = self.samples.iter().filter(|s| s.ok).count();
        ok as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

/// Of the successful requests at or above the `q` quantile of latency, the percentage
/// that started within [`WAVE_START`] of a period's start (0 when there are none).
///
/// The p99 of this workload is the tail of the burst that starts each wave: this says
/// how much of it is, run by run.
///
/// ```
/// use std::time::Duration;
/// use steadypool_benches::goodput::{tail_at_wave_start_pct, Sample};
/// let ms = Duration::from_millis;
/// let sample = |at, latency| Sample { at: ms(at), latency: ms(latency), ok: true };
/// // The slow request started 10 ms into the second period; the others are fast.
/// let samples = [sample(3_010, 9), sample(500, 1), sample(700, 1), sample(900, 1)];
/// assert_eq!(tail_at_wave_start_pct(&samples, 0.99), 100.0);
/// assert_eq!(tail_at_wave_start_pct(&samples, 0.5), 25.0);
/// ```
pub fn tail_at_wave_start_pct(samples: &[Sample], q: f64) -> f64 {
    let mut latencies: Vec<f64> = samples
        .iter()
        .filter(|s| s.ok)
        .map(|s| s.latency.as_secs_f64())
        .collect();
    let threshold = stats::percentile(&mut latencies, q);
    let tail: Vec<&Sample> = samples
        .iter()
        .filter(|s| s.ok && s.latency.as_secs_f64() >= threshold)
        .collect();
    if tail.is_empty() {
        return 0.0;
    }
    let period = PERIOD.as_nanos();
    let at_start = tail
        .iter()
        .filter(|s| s.at.as_nanos() % period < WAVE_START.as_nanos())
        .count();
    100.0 * at_start as f64 / tail.len() as f64
}

fn faults(on: bool) -> Faults {
    if on {
        Faults {
            idle_close: Some(IdleClose::rst(IDLE_CLOSE)),
            reset_probability: RESET_PER_CHUNK,
            ..Faults::none()
        }
    } else {
        Faults::none()
    }
}

/// How long to wait before sending: zero during traffic, the rest of the lull in one.
fn lull_left(since_start: Duration) -> Duration {
    let period = PERIOD.as_nanos();
    let phase = Duration::from_nanos((since_start.as_nanos() % period) as u64);
    if phase >= ACTIVE {
        PERIOD - phase
    } else {
        Duration::ZERO
    }
}

async fn request(pool: &AnyPool, attempts: u32, id: u64) -> bool {
    for _ in 0..attempts.max(1) {
        if let Ok(Ok(())) = tokio::time::timeout(REQUEST_TIMEOUT, pool.request(id)).await {
            return true;
        }
    }
    false
}

/// Runs the workload once for `contender`, with or without faults.
///
/// # Errors
/// When the server, the proxy or the pool cannot be set up.
pub async fn run_once(
    contender: Contender,
    with_faults: bool,
    seed: u64,
    settings: &Settings,
) -> Result<Run, BenchError> {
    let server = EchoServer::start().await?;
    let proxy = Arc::new(
        ChaosProxy::builder(server.addr())
            .seed(seed)
            .faults(faults(with_faults))
            .start()
            .await?,
    );
    let pool = PoolSpec::new(contender.kind, proxy.local_addr(), settings.pool_size)
        .build()
        .await?;
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let crasher = with_faults.then(|| {
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let mut crashes = Vec::new();
            for k in 0u32.. {
                let at = started + PERIOD * k + CRASH_AT;
                tokio::time::sleep_until(at.into()).await;
                proxy.crash().await;
                crashes.push(at - started);
            }
            crashes
        })
    });
    let mut tasks = JoinSet::new();
    for task in 0..settings.tasks {
        let pool = pool.clone();
        let next = Arc::clone(&next);
        let requests = settings.requests;
        let attempts = contender.attempts;
        let mut rng = fastrand::Rng::with_seed(seed ^ (task as u64).wrapping_mul(0x9E37_79B9));
        tasks.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let id = next.fetch_add(1, Ordering::Relaxed);
                if id >= requests {
                    return samples;
                }
                tokio::time::sleep(lull_left(started.elapsed())).await;
                let begun = Instant::now();
                let ok = request(&pool, attempts, id).await;
                samples.push(Sample {
                    at: begun - started,
                    latency: begun.elapsed(),
                    ok,
                });
                tokio::time::sleep(Duration::from_millis(rng.u64(10..=50))).await;
            }
        });
    }
    let mut samples = Vec::with_capacity(settings.requests as usize);
    while let Some(joined) = tasks.join_next().await {
        samples.extend(joined.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    let elapsed = samples
        .iter()
        .map(|s| s.at + s.latency)
        .max()
        .unwrap_or_default();
    let mut crashes = Vec::new();
    if let Some(crasher) = crasher {
        crasher.abort();
        // A crash that began before the last answer counts; one cut short by the
        // abort is not reported.
        crashes = (0u32..)
            .map(|k| PERIOD * k + CRASH_AT)
            .take_while(|at| *at < elapsed)
            .collect();
    }
    let injected_resets = proxy.stats().injected_resets();
    drop(pool);
    Ok(Run {
        contender,
        faults: with_faults,
        samples,
        elapsed,
        crashes,
        injected_resets,
    })
}

fn rec_resets(records: &mut Vec<Record>, label: &str, resets: u64) {
    records.push(Record::new(
        "goodput",
        case(true),
        label,
        "resets_injected",
        resets as f64,
    ));
}

fn case(with_faults: bool) -> String {
    if with_faults { "faults" } else { "no-faults" }.to_owned()
}

/// Runs every contender with and without faults, once per seed; returns the records
/// and every run (for the plots).
///
/// Per contender and case: `success_pct` and `failed` over all runs,
/// `throughput_rps` (median over runs), `p50_ms` and `p99_ms` of the successful
/// requests of all runs, `p99_tail_at_wave_start_pct` (of the requests at or above
/// that p99, the share that started in the burst at a wave's start); with faults also `resets_injected` (by the proxy, all runs)
/// and `throughput_vs_no_faults`.
///
/// # Errors
/// When a run cannot be set up.
pub async fn scenario(
    settings: &Settings,
    contenders: &[Contender],
) -> Result<(Vec<Record>, Vec<Run>), BenchError> {
    let mut records = Vec::new();
    let mut all_runs = Vec::new();
    for contender in contenders {
        let mut clean_throughput = None;
        for with_faults in [false, true] {
            let mut runs = Vec::new();
            for &seed in &settings.seeds {
                let run = run_once(*contender, with_faults, seed, settings).await?;
                eprintln!(
                    "goodput {:>22} {:<9} seed {seed}: {} ok of {}, {:.0} req/s, {} resets injected",
                    contender.label(),
                    case(with_faults),
                    run.samples.iter().filter(|s| s.ok).count(),
                    run.samples.len(),
                    run.throughput(),
                    run.injected_resets,
                );
                runs.push(run);
            }
            let total: usize = runs.iter().map(|r| r.samples.len()).sum();
            let ok: usize = runs
                .iter()
                .map(|r| r.samples.iter().filter(|s| s.ok).count())
                .sum();
            let mut throughputs: Vec<f64> = runs.iter().map(Run::throughput).collect();
            let throughput = stats::median(&mut throughputs);
            let mut latencies: Vec<f64> = runs
                .iter()
                .flat_map(|r| r.samples.iter().filter(|s| s.ok))
                .map(|s| s.latency.as_secs_f64() * 1e3)
                .collect();
            let label = contender.label();
            let rec = |metric: &str, value: f64| {
                Record::new("goodput", case(with_faults), &label, metric, value)
            };
            records.push(rec("success_pct", 100.0 * ok as f64 / total.max(1) as f64));
            records.push(rec("failed", (total - ok) as f64));
            records.push(rec("throughput_rps", throughput));
            records.push(rec("p50_ms", stats::percentile(&mut latencies, 0.5)));
            records.push(rec("p99_ms", stats::percentile(&mut latencies, 0.99)));
            let samples: Vec<Sample> = runs.iter().flat_map(|r| r.samples.clone()).collect();
            records.push(rec(
                "p99_tail_at_wave_start_pct",
                tail_at_wave_start_pct(&samples, 0.99),
            ));
            if with_faults {
                rec_resets(
                    &mut records,
                    &label,
                    runs.iter().map(|r| r.injected_resets).sum(),
                );
            }
            match clean_throughput {
                None => clean_throughput = Some(throughput),
                Some(clean) => records.push(rec(
                    "throughput_vs_no_faults",
                    throughput / f64::max(clean, 1e-9),
                )),
            }
            all_runs.extend(runs);
        }
    }
    Ok((records, all_runs))
}
