//! The demo's result: one column per pool, what steadypool learned, and the same as
//! JSON.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, Snapshot};
use serde::Serialize;
use steadypool::IdleLimit;
use steadypool::chaos::ChaosStats;
use steadypool::{Eviction, Phase, ResetCause};

use super::clients::Protocol;
use super::tally::Totals;
use crate::console::human;
use crate::recommend::{ClosedBy, Recommendation, RecommendationSummary};

/// The machine-readable summary of a run (what `--json` prints).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The seed the workload and the faults were drawn from.
    pub seed: u64,
    /// The run's planned length, in seconds.
    pub planned_secs: f64,
    /// How long the workload actually ran, in seconds.
    pub ran_secs: f64,
    /// Whether Ctrl-C cut the run short.
    pub interrupted: bool,
    /// Workers per pool.
    pub concurrency: usize,
    /// Where the requests went.
    pub target: String,
    /// The protocol spoken.
    pub protocol: Protocol,
    /// The faults in force.
    pub faults: FaultSummary,
    /// When the workers paused and the upstream crashed, in seconds from the start.
    pub schedule: ScheduleSummary,
    /// One entry per pool: steadypool first, then the plain deadpool pool.
    pub pools: Vec<PoolReport>,
    /// What steadypool learned about the path's idle limit.
    pub learned: Learned,
}

/// The faults both proxies injected.
#[derive(Debug, Clone, Serialize)]
pub struct FaultSummary {
    /// Which faults were on, as named on the command line.
    pub names: Vec<String>,
    /// The load balancer's idle timeout, in seconds, when `idle` or `idle-fin` is on.
    pub lb_idle_timeout_secs: Option<f64>,
    /// `rst` or `fin`, when an idle timeout is on.
    pub lb_idle_close: Option<ClosedBy>,
    /// The share of requests reset mid-request, when `resets` is on.
    pub reset_rate: Option<f64>,
    /// The nominal time between upstream crashes, in seconds, when `crash` is on.
    pub crash_every_secs: Option<f64>,
}

/// The workload's shape.
#[derive(Debug, Clone, Serialize)]
pub struct ScheduleSummary {
    /// Idle gaps, `[start, end]`.
    pub gaps: Vec<[f64; 2]>,
    /// Crash times.
    pub crashes: Vec<f64>,
}

/// One pool's column.
#[derive(Debug, Clone, Serialize)]
pub struct PoolReport {
    /// `steadypool` or `deadpool`.
    pub name: String,
    /// Requests the application made (and that finished).
    pub requests: u64,
    /// Requests that got their reply.
    pub succeeded: u64,
    /// Requests that failed, as the application saw them.
    pub failures: u64,
    /// The failures by kind (`peer_reset / in_use`, `gave up (...), may have run: ...`, ...).
    pub failures_by_kind: BTreeMap<String, u64>,
    /// One error message per kind of failure.
    pub failure_examples: BTreeMap<String, String>,
    /// Requests sent again after a broken connection (extra attempts).
    pub retries: u64,
    /// Connections lost, by cause and phase: steadypool's from its metrics
    /// (`steadypool_resets_total`), the plain pool's from the errors its application
    /// got.
    pub resets: Vec<ResetCount>,
    /// All of `resets` except connects that never got through (`refused`,
    /// `connect_timeout`): the connections that were open, their handshake included,
    /// when they were lost.
    pub connections_lost: u64,
    /// Idle connections the pool closed itself, past its idle limit (steadypool's
    /// `idle_expired` evictions; 0 for the plain pool).
    pub closed_idle: u64,
    /// Connections the pool closed on purpose, by reason (steadypool only).
    pub evictions: BTreeMap<String, u64>,
    /// What became of steadypool's requests that hit a broken connection, by outcome
    /// (`steadypool_retries_total`).
    pub retry_outcomes: BTreeMap<String, u64>,
    /// Request latency as the application saw it, retries included, in milliseconds.
    pub latency_ms: LatencySummary,
    /// What this pool's chaos proxy did, when there was one.
    pub chaos: Option<ChaosSummary>,
}

/// Connections lost with one cause in one phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ResetCount {
    /// The cause's label.
    pub cause: &'static str,
    /// The phase's label.
    pub phase: &'static str,
    /// How many.
    pub count: u64,
}

/// Latency percentiles, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct LatencySummary {
    /// Median.
    pub p50: f64,
    /// 99th percentile.
    pub p99: f64,
    /// The slowest.
    pub max: f64,
}

/// What a chaos proxy did to the connections through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct ChaosSummary {
    /// Connections it accepted.
    pub accepted: u64,
    /// Idle connections it reset (the load balancer's idle timeout, `rst`).
    pub idle_rst: u64,
    /// Idle connections it closed with a FIN (`fin`).
    pub idle_fin: u64,
    /// Connections it reset mid-request, at random.
    pub reset_random: u64,
    /// Connections reset by upstream crashes.
    pub crash_resets: u64,
    /// Upstream crashes.
    pub crashes: u64,
    /// Any other resets it sent (upstream unreachable, over capacity).
    pub other_resets: u64,
    /// Every connection it ended on purpose: the sum of the closes and resets above.
    pub ended_by_faults: u64,
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
pub struct Learned {
    /// The longest idle time after which a connection was fine, in seconds.
    pub idle_limit_lower_secs: Option<f64>,
    /// The shortest idle time after which a connection was found closed, in seconds.
    pub idle_limit_upper_secs: Option<f64>,
    /// The idle time after which the pool now closes connections, in seconds.
    pub evict_after_secs: Option<f64>,
    /// The settings recommended for this path, once a limit was found.
    pub recommended: Option<RecommendationSummary>,
    #[serde(skip)]
    recommendation: Option<Recommendation>,
}

impl Learned {
    pub(crate) fn new(limit: Option<IdleLimit>, closed_by: Option<ClosedBy>) -> Learned {
        let limit = limit.unwrap_or_default();
        let recommendation = limit
            .upper
            .map(|upper| Recommendation::for_limit(upper, limit.lower, closed_by));
        Learned {
            idle_limit_lower_secs: limit.lower.map(|d| d.as_secs_f64()),
            idle_limit_upper_secs: limit.upper.map(|d| d.as_secs_f64()),
            evict_after_secs: limit.evict_after.map(|d| d.as_secs_f64()),
            recommended: recommendation.map(|r| r.summary()),
            recommendation,
        }
    }
}

/// steadypool's counters for one pool, read from a metrics snapshot.
#[derive(Debug, Default)]
pub(crate) struct PoolMetrics {
    pub(crate) resets: BTreeMap<(ResetCause, Phase), u64>,
    pub(crate) evictions: BTreeMap<String, u64>,
    pub(crate) retry_outcomes: BTreeMap<String, u64>,
}

impl PoolMetrics {
    pub(crate) fn read(snapshot: Snapshot, pool: &str) -> PoolMetrics {
        let mut found = PoolMetrics::default();
        for (key, _, _, value) in snapshot.into_vec() {
            let DebugValue::Counter(count) = value else {
                continue;
            };
            let key = key.key();
            let label = |name: &str| {
                key.labels()
                    .find(|l| l.key() == name)
                    .map(|l| l.value().to_owned())
            };
            if count == 0 || label("pool").as_deref() != Some(pool) {
                continue;
            }
            match key.name() {
                steadypool::metrics::RESETS => {
                    let cause = label("cause")
                        .and_then(|c| ResetCause::ALL.into_iter().find(|x| x.as_str() == c));
                    let phase = label("phase")
                        .and_then(|p| Phase::ALL.into_iter().find(|x| x.as_str() == p));
                    if let (Some(cause), Some(phase)) = (cause, phase) {
                        *found.resets.entry((cause, phase)).or_default() += count;
                    }
                }
                steadypool::metrics::EVICTIONS => {
                    if let Some(reason) = label("reason") {
                        *found.evictions.entry(reason).or_default() += count;
                    }
                }
                steadypool::metrics::RETRIES => {
                    if let Some(outcome) = label("outcome") {
                        *found.retry_outcomes.entry(outcome).or_default() += count;
                    }
                }
                _ => {}
            }
        }
        found
    }
}

impl PoolReport {
    pub(crate) fn new(
        name: &str,
        totals: Totals,
        metrics: Option<PoolMetrics>,
        chaos: Option<ChaosStats>,
    ) -> PoolReport {
        let (resets, evictions, retry_outcomes) = match metrics {
            Some(m) => (m.resets, m.evictions, m.retry_outcomes),
            None => (totals.resets.clone(), BTreeMap::new(), BTreeMap::new()),
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
            retry_outcomes,
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

/// A column of the table: one value per pool.
struct Row {
    label: String,
    cells: Vec<String>,
}

const LABEL_WIDTH: usize = 38;
const CELL_WIDTH: usize = 14;

fn count(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn millis(ms: f64) -> String {
    if ms < 10.0 {
        format!("{ms:.2} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn secs(s: f64) -> String {
    human(Duration::from_secs_f64(s))
}

impl Report {
    /// The report as the table the demo prints.
    pub fn table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(out, "{}", self.headline());
        let _ = writeln!(out, "faults: {}", self.fault_text());
        let _ = writeln!(out);
        let mut rows = vec![Row {
            label: String::new(),
            cells: self.pools.iter().map(|p| p.name.clone()).collect(),
        }];
        let per_pool = |label: &str, f: &dyn Fn(&PoolReport) -> String| Row {
            label: label.to_owned(),
            cells: self.pools.iter().map(f).collect(),
        };
        rows.push(per_pool("requests", &|p| count(p.requests)));
        rows.push(per_pool("failures seen by the application", &|p| {
            count(p.failures)
        }));
        rows.push(per_pool("retries", &|p| count(p.retries)));
        rows.push(per_pool("connections lost (resets)", &|p| {
            count(p.resets.iter().map(|r| r.count).sum())
        }));
        let mut kinds: Vec<(&str, &str)> = Vec::new();
        for phase in Phase::ALL {
            for cause in ResetCause::ALL {
                let key = (cause.as_str(), phase.as_str());
                let seen = self.pools.iter().any(|p| {
                    p.resets
                        .iter()
                        .any(|r| (r.cause, r.phase) == key && r.count > 0)
                });
                if seen {
                    kinds.push(key);
                }
            }
        }
        for (cause, phase) in kinds {
            rows.push(per_pool(&format!("  {cause} · {phase}"), &|p| {
                p.resets
                    .iter()
                    .find(|r| (r.cause, r.phase) == (cause, phase))
                    .map_or("-".to_owned(), |r| count(r.count))
            }));
        }
        if self.pools.iter().any(|p| p.closed_idle > 0) {
            rows.push(per_pool(
                "idle connections closed by the pool",
                &|p| match p.closed_idle {
                    0 => "-".to_owned(),
                    n => count(n),
                },
            ));
        }
        rows.push(per_pool("latency p50", &|p| millis(p.latency_ms.p50)));
        rows.push(per_pool("latency p99", &|p| millis(p.latency_ms.p99)));
        rows.push(per_pool("latency max", &|p| millis(p.latency_ms.max)));
        if self.pools.iter().any(|p| p.chaos.is_some()) {
            rows.push(per_pool("ended by its chaos proxy", &|p| {
                p.chaos.map_or("-".to_owned(), |c| count(c.ended_by_faults))
            }));
            let chaos_row = |label: &str, f: fn(&ChaosSummary) -> u64| {
                self.pools
                    .iter()
                    .any(|p| p.chaos.is_some_and(|c| f(&c) > 0))
                    .then(|| per_pool(label, &|p| p.chaos.map_or("-".to_owned(), |c| count(f(&c)))))
            };
            rows.extend(chaos_row("  idle timeout (RST)", |c| c.idle_rst));
            rows.extend(chaos_row("  idle timeout (FIN)", |c| c.idle_fin));
            rows.extend(chaos_row("  reset mid-request", |c| c.reset_random));
            rows.extend(chaos_row("  upstream crash", |c| c.crash_resets));
            rows.extend(chaos_row("  other", |c| c.other_resets));
        }
        for row in rows {
            let _ = write!(out, "{:<LABEL_WIDTH$}", row.label);
            for cell in row.cells {
                let _ = write!(out, "{cell:>CELL_WIDTH$}");
            }
            let _ = writeln!(out);
        }
        self.write_failures(&mut out);
        self.write_learned(&mut out);
        out
    }

    fn headline(&self) -> String {
        let ran = if self.interrupted {
            format!(
                "interrupted after {} of {}",
                secs(self.ran_secs),
                secs(self.planned_secs)
            )
        } else {
            secs(self.ran_secs)
        };
        format!(
            "steadypool demo: {ran}, {} workers per pool, seed {}, {} ({})",
            self.concurrency, self.seed, self.target, self.protocol
        )
    }

    fn fault_text(&self) -> String {
        let f = &self.faults;
        let mut parts = Vec::new();
        if let (Some(after), Some(with)) = (f.lb_idle_timeout_secs, f.lb_idle_close) {
            parts.push(format!(
                "load balancer idle timeout {} ({})",
                secs(after),
                with.as_str()
            ));
        }
        if let Some(rate) = f.reset_rate {
            parts.push(format!("{}% of requests reset", rate * 100.0));
        }
        if let Some(every) = f.crash_every_secs {
            parts.push(format!("upstream crash every ~{}", secs(every)));
        }
        if f.names.iter().any(|n| n == "latency") {
            parts.push("added latency".to_owned());
        }
        if f.names.iter().any(|n| n == "gaps") {
            parts.push("idle gaps in the workload".to_owned());
        }
        if parts.is_empty() {
            "none".to_owned()
        } else {
            parts.join(", ")
        }
    }

    fn write_failures(&self, out: &mut String) {
        for pool in &self.pools {
            if pool.failures == 0 {
                continue;
            }
            let _ = writeln!(out);
            let _ = writeln!(out, "{}'s application got these errors:", pool.name);
            let mut kinds: Vec<_> = pool.failures_by_kind.iter().collect();
            kinds.sort_by(|a, b| b.1.cmp(a.1));
            for (kind, n) in kinds {
                let example = pool
                    .failure_examples
                    .get(kind)
                    .map_or(String::new(), |e| format!(": {e}"));
                let _ = writeln!(out, "  {:>7}  {kind}{example}", count(*n));
            }
        }
    }

    fn write_learned(&self, out: &mut String) {
        let Some(steady) = self.pools.first() else {
            return;
        };
        if let Some(chaos) = steady.chaos {
            let _ = writeln!(out);
            let ended = chaos.ended_by_faults;
            let lost = steady.connections_lost;
            let accounting = if lost == ended {
                "every one of them".to_owned()
            } else if lost < ended && lost + steady.closed_idle >= ended {
                format!(
                    "the other {} were past its learned idle limit when it found them, \
                     and went as planned closes",
                    count(ended - lost)
                )
            } else {
                "the difference ended in the last moments of the run".to_owned()
            };
            let _ = writeln!(
                out,
                "{}'s proxy ended {} connections; steadypool counted {} lost connections \
                 ({accounting}), and its application saw {} failures.",
                steady.name,
                count(ended),
                count(lost),
                count(steady.failures)
            );
        }
        let _ = writeln!(out);
        let learned = &self.learned;
        let (Some(upper), Some(recommendation)) =
            (learned.idle_limit_upper_secs, learned.recommendation)
        else {
            let found_after_idling = steady.resets.iter().any(|r| {
                (r.phase == Phase::Idle.as_str() || r.phase == Phase::Checkout.as_str())
                    && matches!(r.cause, "peer_reset" | "peer_closed" | "broken_pipe")
            });
            let why = if found_after_idling {
                "the connections it found closed after idling went together with upstream \
                 failures (crashes, resets mid-request), which it does not take for an idle limit"
            } else {
                "no connection was found closed after idling"
            };
            let _ = writeln!(
                out,
                "steadypool settled on no idle limit for this path: {why}."
            );
            return;
        };
        let _ = writeln!(out, "What steadypool learned about this path's idle limit:");
        let how = recommendation
            .closed_by
            .map_or(String::new(), |c| format!(" ({})", c.as_str()));
        match learned.idle_limit_lower_secs {
            Some(lower) => {
                let _ = writeln!(
                    out,
                    "  connections idle {} were fine; one idle {} had been closed{how}",
                    secs(lower),
                    secs(upper)
                );
            }
            None => {
                let _ = writeln!(
                    out,
                    "  a connection idle {} had been closed{how}",
                    secs(upper)
                );
            }
        }
        if let Some(after) = learned.evict_after_secs {
            let _ = writeln!(
                out,
                "  so it now closes connections idle {} itself, before the path does",
                secs(after)
            );
        }
        let _ = writeln!(out, "Recommended settings for this path:");
        let _ = writeln!(out, "    Pool::builder(manager)");
        for line in recommendation.builder_lines() {
            let _ = writeln!(out, "        {line}");
        }
        let _ = writeln!(out, "  {}", recommendation.rationale());
    }

    /// The report as pretty-printed JSON.
    ///
    /// # Errors
    /// Only if serialization fails, which the report's plain fields rule out.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_grouped_in_thousands() {
        assert_eq!(count(0), "0");
        assert_eq!(count(999), "999");
        assert_eq!(count(1000), "1,000");
        assert_eq!(count(1_234_567), "1,234,567");
    }
}
