//! The demo's result: one column per pool, what steadypool learned, and the same as
//! JSON.

use std::collections::BTreeMap;

use serde::Serialize;
use steadypool::IdleLimit;
use steadypool::chaos::ChaosStats;
use steadypool::{Eviction, Phase, ResetCause, Stats};

use super::clients::Protocol;
use super::tally::Totals;
use crate::recommend::{ClosedBy, Recommendation, RecommendationSummary};

/// The machine-readable summary of a run (what `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    /// The seed the workload and the faults were drawn from.
    pub(crate) seed: u64,
    /// The run's planned length, in seconds.
    pub(crate) planned_secs: f64,
    /// How long the workload actually ran, in seconds.
    pub(crate) ran_secs: f64,
    /// Whether Ctrl-C cut the run short.
    pub(crate) interrupted: bool,
    /// Workers per pool.
    pub(crate) concurrency: usize,
    /// Where the requests went.
    pub(crate) target: String,
    /// The protocol spoken.
    pub(crate) protocol: Protocol,
    /// The faults in force.
    pub(crate) faults: FaultSummary,
    /// When the workers paused and the upstream crashed, in seconds from the start.
    pub(crate) schedule: ScheduleSummary,
    /// One entry per pool: steadypool first, then the plain deadpool pool (reqwest
    /// over HTTP).
    pub(crate) pools: Vec<PoolReport>,
    /// What steadypool learned about the path's idle limit.
    pub(crate) learned: Learned,
    /// What the HTTP server announced, and how the requests were paced around it
    /// (`--protocol http` only).
    pub(crate) http: Option<HttpSummary>,
}

/// The HTTP server's keep-alive, and the workload around it.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct HttpSummary {
    /// The `Keep-Alive: timeout=N` of the server's first answer, in seconds: each
    /// steadypool connection closes itself before it has sat idle that long.
    pub(crate) announced_keep_alive_secs: Option<f64>,
    /// The `keepAliveTimeout` of the Node.js server the demo started, in seconds.
    pub(crate) node_keep_alive_timeout_secs: Option<f64>,
    /// The range of each worker's pause after a request, in seconds: around the
    /// server's keep-alive close (its announced timeout plus a second, as Node.js
    /// closes), or the load balancer's idle timeout with `idle` on.
    pub(crate) request_gap_secs: Option<[f64; 2]>,
}

/// The faults both proxies injected.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct FaultSummary {
    /// Which faults were on, as named on the command line.
    pub(crate) names: Vec<String>,
    /// The load balancer's idle timeout, in seconds, when `idle` or `idle-fin` is on.
    pub(crate) lb_idle_timeout_secs: Option<f64>,
    /// `rst` or `fin`, when an idle timeout is on.
    pub(crate) lb_idle_close: Option<ClosedBy>,
    /// The share of requests reset mid-request, when `resets` is on.
    pub(crate) reset_rate: Option<f64>,
    /// The nominal time between upstream crashes, in seconds, when `crash` is on.
    pub(crate) crash_every_secs: Option<f64>,
}

/// The workload's shape.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct ScheduleSummary {
    /// Idle gaps, `[start, end]`.
    pub(crate) gaps: Vec<[f64; 2]>,
    /// Crash times.
    pub(crate) crashes: Vec<f64>,
}

/// One pool's column.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct PoolReport {
    /// `steadypool`, `deadpool` or `reqwest`.
    pub(crate) name: String,
    /// Requests the application made (and that finished).
    pub(crate) requests: u64,
    /// Requests that got their reply.
    pub(crate) succeeded: u64,
    /// Requests that failed, as the application saw them.
    pub(crate) failures: u64,
    /// The failures by kind (`peer_reset / in_use`, `gave up (...), may have run: ...`, ...).
    pub(crate) failures_by_kind: BTreeMap<String, u64>,
    /// One error message per kind of failure.
    pub(crate) failure_examples: BTreeMap<String, String>,
    /// Requests sent again after a broken connection (extra attempts).
    pub(crate) retries: u64,
    /// Connections lost, by cause and phase: steadypool's from
    /// [`Pool::stats`](steadypool::Pool::stats), the plain pool's from the errors its application
    /// got.
    pub(crate) resets: Vec<ResetCount>,
    /// All of `resets` except connects that never got through (`refused`,
    /// `connect_timeout`): the connections that were open, their handshake included,
    /// when they were lost.
    pub(crate) connections_lost: u64,
    /// Idle connections the pool closed itself, past its idle limit (steadypool's
    /// `idle_expired` evictions; 0 for the plain pool).
    pub(crate) closed_idle: u64,
    /// Connections the pool closed on purpose, by reason (steadypool only).
    pub(crate) evictions: BTreeMap<String, u64>,
    /// Request latency as the application saw it, retries included, in milliseconds.
    pub(crate) latency_ms: LatencySummary,
    /// What this pool's chaos proxy did, when there was one.
    pub(crate) chaos: Option<ChaosSummary>,
}

/// Connections lost with one cause in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ResetCount {
    /// The cause's label.
    pub(crate) cause: &'static str,
    /// The phase's label.
    pub(crate) phase: &'static str,
    /// How many.
    pub(crate) count: u64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct LatencySummary {
    /// Median.
    pub(crate) p50: f64,
    /// 99th percentile.
    pub(crate) p99: f64,
    /// The slowest.
    pub(crate) max: f64,
}

/// What a chaos proxy did to the connections through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ChaosSummary {
    /// Connections it accepted.
    pub(crate) accepted: u64,
    /// Idle connections it reset (the load balancer's idle timeout, `rst`).
    pub(crate) idle_rst: u64,
    /// Idle connections it closed with a FIN (`fin`).
    pub(crate) idle_fin: u64,
    /// Connections it reset mid-request, at random.
    pub(crate) reset_random: u64,
    /// Connections reset by upstream crashes.
    pub(crate) crash_resets: u64,
    /// Upstream crashes.
    pub(crate) crashes: u64,
    /// Any other resets it sent (upstream unreachable, over capacity).
    pub(crate) other_resets: u64,
    /// Every connection it ended on purpose: the sum of the closes and resets above.
    pub(crate) ended_by_faults: u64,
}

impl From<ChaosStats> for ChaosSummary {
    fn from(stats: ChaosStats) -> Self {
        ChaosSummary {
            accepted: stats.accepted,
            idle_rst: stats.idle_rst,
            idle_fin: stats.idle_fin,
            reset_random: stats.reset_random,
            crash_resets: stats.crash_resets,
            crashes: stats.crashes,
            other_resets: stats.upstream_unreachable
                + stats.over_capacity
                + stats.reset_after_bytes,
            ended_by_faults: stats.injected_resets() + stats.idle_fin,
        }
    }
}

/// What steadypool learned about the path's idle limit, and what it recommends.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Learned {
    /// The longest idle time after which a connection was fine, in seconds.
    pub(crate) idle_limit_lower_secs: Option<f64>,
    /// The shortest idle time after which a connection was found closed, in seconds.
    pub(crate) idle_limit_upper_secs: Option<f64>,
    /// The idle time after which the pool now closes connections, in seconds.
    pub(crate) evict_after_secs: Option<f64>,
    /// The settings recommended for this path, once a limit was found.
    pub(crate) recommended: Option<RecommendationSummary>,
    #[serde(skip)]
    pub(super) recommendation: Option<Recommendation>,
}

impl Learned {
    pub(crate) fn new(limit: Option<IdleLimit>, closed_by: Option<ClosedBy>) -> Learned {
        let limit = limit.unwrap_or_default();
        let recommendation = Recommendation::for_limit(limit, closed_by);
        Learned {
            idle_limit_lower_secs: limit.lower.map(|d| d.as_secs_f64()),
            idle_limit_upper_secs: limit.upper.map(|d| d.as_secs_f64()),
            evict_after_secs: limit.evict_after.map(|d| d.as_secs_f64()),
            recommended: recommendation.map(|r| r.summary()),
            recommendation,
        }
    }
}

/// steadypool's counters for one pool, read from its [`Stats`].
#[derive(Debug, Default)]
pub(crate) struct PoolCounts {
    pub(crate) resets: BTreeMap<(ResetCause, Phase), u64>,
    pub(crate) evictions: BTreeMap<String, u64>,
}

impl PoolCounts {
    /// Adds `other`'s counts to these: one report for a fleet of pools.
    pub(crate) fn add(&mut self, other: &PoolCounts) {
        for (key, n) in &other.resets {
            *self.resets.entry(*key).or_default() += n;
        }
        for (reason, n) in &other.evictions {
            *self.evictions.entry(reason.clone()).or_default() += n;
        }
    }

    pub(crate) fn read(stats: &Stats) -> PoolCounts {
        let resets = ResetCause::ALL
            .into_iter()
            .flat_map(|cause| Phase::ALL.into_iter().map(move |phase| (cause, phase)))
            .map(|(cause, phase)| ((cause, phase), stats.resets(cause, phase)))
            .filter(|(_, count)| *count > 0)
            .collect();
        let evictions = Eviction::ALL
            .into_iter()
            .map(|reason| (reason.as_str().to_owned(), stats.evictions(reason)))
            .filter(|(_, count)| *count > 0)
            .collect();
        PoolCounts { resets, evictions }
    }
}

impl PoolReport {
    pub(crate) fn new(
        name: &str,
        totals: Totals,
        counts: Option<PoolCounts>,
        chaos: Option<ChaosStats>,
    ) -> PoolReport {
        let (resets, evictions) = match counts {
            Some(m) => (m.resets, m.evictions),
            None => (totals.resets.clone(), BTreeMap::new()),
        };
        let closed_idle = evictions
            .get(Eviction::IdleExpired.as_str())
            .copied()
            .unwrap_or(0);
        let quantile = |q: f64| totals.latency.value_at_quantile(q) as f64 / 1000.0;
        PoolReport {
            name: name.to_owned(),
            requests: totals.counts.requests,
            succeeded: totals.counts.requests - totals.counts.failures,
            failures: totals.counts.failures,
            failures_by_kind: totals
                .failures
                .iter()
                .map(|(k, v)| (k.clone(), v.count))
                .collect(),
            failure_examples: totals
                .failures
                .iter()
                .map(|(k, v)| (k.clone(), v.example.clone()))
                .collect(),
            retries: totals.counts.retries,
            connections_lost: resets
                .iter()
                .filter(|((cause, phase), _)| {
                    *phase != Phase::Connect
                        || !matches!(cause, ResetCause::Refused | ResetCause::ConnectTimeout)
                })
                .map(|(_, n)| n)
                .sum(),
            closed_idle,
            resets: resets
                .iter()
                .map(|((cause, phase), count)| ResetCount {
                    cause: cause.as_str(),
                    phase: phase.as_str(),
                    count: *count,
                })
                .collect(),
            evictions,
            latency_ms: LatencySummary {
                p50: quantile(0.5),
                p99: quantile(0.99),
                max: totals.latency.max() as f64 / 1000.0,
            },
            chaos: chaos.map(ChaosSummary::from),
        }
    }

    /// How the path closed the idle connections this pool found dead, when any.
    pub(crate) fn idle_closes(&self) -> Option<ClosedBy> {
        let mut rst = 0;
        let mut fin = 0;
        for reset in &self.resets {
            if reset.phase == Phase::Idle.as_str() || reset.phase == Phase::Checkout.as_str() {
                match reset.cause {
                    "peer_reset" | "broken_pipe" => rst += reset.count,
                    "peer_closed" => fin += reset.count,
                    _ => {}
                }
            }
        }
        match (rst, fin) {
            (0, 0) => None,
            (rst, fin) if rst >= fin => Some(ClosedBy::Rst),
            _ => Some(ClosedBy::Fin),
        }
    }
}

impl Report {
    /// The report as pretty-printed JSON.
    ///
    /// # Errors
    /// Only if serialization fails, which the report's plain fields rule out.
    pub(crate) fn to_json(&self) -> Result<String, serde_json::Error> {
        serde_json::to_string_pretty(self)
    }
}

impl crate::outcome::Summary for Report {
    fn to_json(&self) -> Result<String, serde_json::Error> {
        Report::to_json(self)
    }

    fn text(&self) -> String {
        self.table()
    }
}
