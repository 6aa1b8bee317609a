//! Scenario 4: a reconnect storm.
//!
//! `pools` pools of `size` connections each (all opened up front) serve
//! `workers` tasks per pool; each task sends one request per `tick` (at its own phase),
//! whatever became of the last one, and gives a request at most 1 s. Then the upstream
//! restarts: every open connection is reset and new connects are refused for
//! `down_for`; then it accepts again. Every connect attempt any pool starts is logged:
//! the figure of merit is how many hit the upstream at once, and how soon every pool
//! answers again.
//!
//! [`outages`] runs the same fleet through outages of other lengths, each with its
//! own cap on a request: a short restart, a long outage, and a short one that the
//! request's deadline outlasts (the storm's 1 s cap hides whether a pool makes a
//! request wait for the upstream instead of failing it).

use std::sync::Arc;
use std::time::{Duration, Instant};

use steadypool::chaos::ChaosProxy;
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use crate::echo::EchoServer;
use crate::error::BenchError;
use crate::goodput::Contender;
use crate::pools::{AnyPool, ConnectLog, Kind, PoolSpec};
use crate::report::Record;
use crate::stats;

/// The pools compared.
pub const KINDS: [Kind; 3] = [Kind::Steadypool, Kind::DeadpoolPeek, Kind::Bb8Ping];

/// Width of one bucket of the connect-attempt count.
pub const BUCKET: Duration = Duration::from_millis(100);

/// A request slower than this counts as failed.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(1);

/// The storm's size and timing.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// Pools (one per simulated client process).
    pub pools: usize,
    /// Connections per pool.
    pub size: usize,
    /// Tasks sending requests, per pool.
    pub workers: usize,
    /// Each task sends one request per tick.
    pub tick: Duration,
    /// Steady traffic before the restart.
    pub before: Duration,
    /// How long the upstream refuses connections.
    pub down_for: Duration,
    /// How long to keep going once it accepts again.
    pub after: Duration,
}

/// One run of one pool kind, with times counted from the moment the upstream went down.
#[derive(Debug, Clone)]
pub struct StormRun {
    /// The pool.
    pub kind: Kind,
    /// Every connect attempt, in seconds from the upstream going down (negative: before).
    pub attempts: Vec<f64>,
    /// How long the upstream refused connections.
    pub down_for: Duration,
    /// From the upstream coming back until every pool had answered a request again
    /// (`None`: some pool never did).
    pub recovery: Option<Duration>,
    /// Requests started after the upstream came back that failed.
    pub failed_after_restart: u64,
    /// Requests started after the upstream came back.
    pub requests_after_restart: u64,
    /// Requests started while the upstream was down.
    pub requests_while_down: u64,
    /// Requests started while the upstream was down that failed.
    pub failed_while_down: u64,
    /// 99th percentile of how long those requests took, failed or not, in ms.
    pub p99_ms_after_restart: f64,
}

struct Outcome {
    pool: usize,
    started: Instant,
    finished: Instant,
    ok: bool,
}

/// Runs the storm once for `kind`, each request capped at [`REQUEST_TIMEOUT`].
///
/// # Errors
/// When the server, the proxy or a pool cannot be set up.
pub async fn run_once(kind: Kind, settings: Settings) -> Result<StormRun, BenchError> {
    let contender = Contender { kind, attempts: 1 };
    run_capped(contender, settings, REQUEST_TIMEOUT).await
}

/// One request, with the application's own retry loop when the contender has one
/// (at once, as in the goodput scenario), all of it within `cap`.
async fn request(pool: &AnyPool, attempts: u32, id: u64, cap: Duration) -> bool {
    let tries = async {
        for _ in 0..attempts.max(1) {
            if pool.request(id).await.is_ok() {
                return true;
            }
        }
        false
    };
    tokio::time::timeout(cap, tries).await.unwrap_or(false)
}

/// Runs the storm once for `contender`, each request capped at `cap`.
///
/// # Errors
/// When the server, the proxy or a pool cannot be set up.
pub async fn run_capped(
    contender: Contender,
    settings: Settings,
    cap: Duration,
) -> Result<StormRun, BenchError> {
    let kind = contender.kind;
    let attempts = contender.attempts;
    let server = EchoServer::start().await?;
    let proxy = ChaosProxy::builder(server.addr()).seed(9).start().await?;
    let log = Arc::new(ConnectLog::new());
    let mut pools = Vec::with_capacity(settings.pools);
    for _ in 0..settings.pools {
        let pool = PoolSpec::new(kind, proxy.local_addr(), settings.size)
            .log_connects(Arc::clone(&log))
            .build()
            .await?;
        pool.fill(kind, settings.size).await?;
        pools.push(pool);
    }
    let start = Instant::now();
    let down_at = start + settings.before;
    let up_at = down_at + settings.down_for;
    let end = up_at + settings.after;
    let mut workers = JoinSet::new();
    let mut rng = fastrand::Rng::with_seed(17);
    for (index, pool) in pools.iter().enumerate() {
        for worker in 0..settings.workers {
            let pool = pool.clone();
            let phase = settings.tick.mul_f64(rng.f64());
            let id_base = ((index * settings.workers + worker) as u64) << 32;
            workers.spawn(async move {
                let mut outcomes = Vec::new();
                let mut ticks = tokio::time::interval_at((start + phase).into(), settings.tick);
                ticks.set_missed_tick_behavior(MissedTickBehavior::Skip);
                for n in 0u64.. {
                    let at = ticks.tick().await.into_std();
                    if at >= end {
                        break;
                    }
                    let ok = request(&pool, attempts, id_base | n, cap).await;
                    outcomes.push(Outcome {
                        pool: index,
                        started: at,
                        finished: Instant::now(),
                        ok,
                    });
                }
                outcomes
            });
        }
    }
    tokio::time::sleep_until(down_at.into()).await;
    proxy.set_refuse(true)?;
    proxy.crash().await;
    tokio::time::sleep_until(up_at.into()).await;
    proxy.set_refuse(false)?;
    let mut outcomes = Vec::new();
    while let Some(joined) = workers.join_next().await {
        outcomes.extend(joined.map_err(|e| BenchError::Setup(e.to_string()))?);
    }
    drop(pools);
    let mut first_success = vec![None; settings.pools];
    let (mut failed, mut requests) = (0, 0);
    let (mut failed_down, mut requests_down) = (0, 0);
    let mut waits = Vec::new();
    for outcome in &outcomes {
        // A pool has recovered when a request is answered again, whenever it started:
        // a checkout that waited through the outage and succeeded after it counts
        // when it succeeded.
        if outcome.ok && outcome.finished >= up_at {
            let first = &mut first_success[outcome.pool];
            if first.is_none_or(|at| outcome.finished < at) {
                *first = Some(outcome.finished);
            }
        }
        if (down_at..up_at).contains(&outcome.started) {
            requests_down += 1;
            failed_down += u64::from(!outcome.ok);
        }
        if outcome.started >= up_at {
            requests += 1;
            failed += u64::from(!outcome.ok);
            waits.push((outcome.finished - outcome.started).as_secs_f64() * 1e3);
        }
    }
    let recovery = first_success.iter().try_fold(Duration::ZERO, |latest, at| {
        at.map(|at| latest.max(at - up_at))
    });
    let origin_to_down = down_at
        .saturating_duration_since(log.origin())
        .as_secs_f64();
    let attempts = log
        .attempts()
        .iter()
        .map(|at| at.as_secs_f64() - origin_to_down)
        .collect();
    Ok(StormRun {
        kind,
        attempts,
        down_for: settings.down_for,
        recovery,
        failed_after_restart: failed,
        requests_after_restart: requests,
        requests_while_down: requests_down,
        failed_while_down: failed_down,
        p99_ms_after_restart: stats::percentile(&mut waits, 0.99),
    })
}

impl StormRun {
    /// Connect attempts per [`BUCKET`], from the upstream going down until `until`
    /// after it.
    pub fn per_bucket(&self, until: Duration) -> Vec<u64> {
        let after: Vec<Duration> = self
            .attempts
            .iter()
            .filter(|at| **at >= 0.0)
            .map(|at| Duration::from_secs_f64(*at))
            .collect();
        stats::buckets(&after, BUCKET, until)
    }
}

/// Runs the storm for every kind in `kinds`.
///
/// Per kind: `peak_connects_per_100ms`, `connects_while_down`,
/// `connects_after_restart`, `recovery_s` (capped at the run's end when some pool
/// never recovered), `failed_after_restart` and `p99_ms_after_restart` (the requests
/// started after the upstream came back: how many failed, and how long they took).
///
/// # Errors
/// When a run cannot be set up.
pub async fn scenario(
    settings: Settings,
    kinds: &[Kind],
) -> Result<(Vec<Record>, Vec<StormRun>), BenchError> {
    let mut records = Vec::new();
    let mut runs = Vec::new();
    let case = format!(
        "{}x{}-down{}s",
        settings.pools,
        settings.size,
        settings.down_for.as_secs_f64()
    );
    for &kind in kinds {
        let run = run_once(kind, settings).await?;
        let down = settings.down_for.as_secs_f64();
        let while_down = run
            .attempts
            .iter()
            .filter(|at| (0.0..down).contains(*at))
            .count();
        let after = run.attempts.iter().filter(|at| **at >= down).count();
        let peak = run
            .per_bucket(settings.down_for + settings.after)
            .into_iter()
            .max()
            .unwrap_or(0);
        let label = kind.label();
        eprintln!(
            "storm {label:>14}: peak {peak} connects/100ms, {while_down} while down, {after} after, recovery {:?}",
            run.recovery
        );
        let rec =
            |metric: &str, value: f64| Record::new("storm", case.clone(), label, metric, value);
        records.push(rec("peak_connects_per_100ms", peak as f64));
        records.push(rec("connects_while_down", while_down as f64));
        records.push(rec("connects_after_restart", after as f64));
        records.push(
            rec(
                "recovery_s",
                run.recovery.unwrap_or(settings.after).as_secs_f64(),
            )
            .capped(run.recovery.is_none()),
        );
        records.push(rec("failed_after_restart", run.failed_after_restart as f64));
        records.push(rec("p99_ms_after_restart", run.p99_ms_after_restart));
        runs.push(run);
    }
    Ok((records, runs))
}

/// One outage of [`outages`]: how long the upstream refuses connections, and how long
/// a request may take.
#[derive(Debug, Clone, Copy)]
pub struct Outage {
    /// How long the upstream refuses connections.
    pub down_for: Duration,
    /// The cap on one request, the application's retries included.
    pub request_timeout: Duration,
}

/// The set-ups compared in [`outages`]: the storm's pools, and deadpool with the
/// retry loop a user would wrap around it (3 attempts at once, as in the goodput
/// scenario).
pub const OUTAGE_CONTENDERS: [Contender; 4] = [
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
];

/// The fleet of `base` through each outage, for each contender. Case
/// `<pools>x<size>-down<s>s-cap<s>s`; per contender: `connects_while_down`,
/// `requests_while_down`, `failed_while_down` (requests started while the upstream
/// was down that failed or passed their cap), `failed_after_restart`, `recovery_s`
/// and `p99_ms_after_restart`, as in [`scenario`].
///
/// # Errors
/// When a run cannot be set up.
pub async fn outages(
    base: Settings,
    outages: &[Outage],
    contenders: &[Contender],
) -> Result<Vec<Record>, BenchError> {
    let mut records = Vec::new();
    for outage in outages {
        let settings = Settings {
            down_for: outage.down_for,
            // Long enough for a request that waited through the outage to finish, and
            // for the after-return figures to mean something.
            after: base
                .after
                .max(outage.request_timeout + Duration::from_secs(1)),
            ..base
        };
        let case = format!(
            "{}x{}-down{}s-cap{}s",
            settings.pools,
            settings.size,
            outage.down_for.as_secs_f64(),
            outage.request_timeout.as_secs_f64()
        );
        for &contender in contenders {
            let run = run_capped(contender, settings, outage.request_timeout).await?;
            let down = outage.down_for.as_secs_f64();
            let while_down = run
                .attempts
                .iter()
                .filter(|at| (0.0..down).contains(*at))
                .count();
            let label = contender.label();
            eprintln!(
                "outage {case} {label:>20}: {while_down} connects while down, {} of {} requests \
                 failed while down, {} of {} after, recovery {:?}",
                run.failed_while_down,
                run.requests_while_down,
                run.failed_after_restart,
                run.requests_after_restart,
                run.recovery
            );
            let rec = |metric: &str, value: f64| {
                Record::new("outage", case.clone(), &label, metric, value)
            };
            records.push(rec("connects_while_down", while_down as f64));
            records.push(rec("requests_while_down", run.requests_while_down as f64));
            records.push(rec("failed_while_down", run.failed_while_down as f64));
            records.push(rec("failed_after_restart", run.failed_after_restart as f64));
            records.push(
                rec(
                    "recovery_s",
                    run.recovery.unwrap_or(settings.after).as_secs_f64(),
                )
                .capped(run.recovery.is_none()),
            );
            records.push(rec("p99_ms_after_restart", run.p99_ms_after_restart));
        }
    }
    Ok(records)
}
