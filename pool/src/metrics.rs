//! Every metric steadypool records: names, units, descriptions and the recording calls.
//!
//! Metrics go through the [`metrics`](https://docs.rs/metrics) facade: install any
//! recorder (for example `metrics-exporter-prometheus`) **before building a pool**, since
//! a pool binds its metric handles once when it is built, which keeps recording off the
//! checkout path's lookups. Every series carries the label `pool` (the pool's
//! [`name`](crate::PoolBuilder::name)); other label values come from fixed sets
//! ([`ResetCause`], [`Phase`], [`Eviction`], [`RetryOutcome`], [`RunOutcome`]), never
//! from errno values, addresses or messages.
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `steadypool_resets_total` | counter | `cause`, `phase` | connections that broke or could not be opened (`phase="connect"`), by why and when |
//! | `steadypool_evictions_total` | counter | `reason` | connections closed on purpose |
//! | `steadypool_retries_total` | counter | `cause`, `outcome` | operations that hit a broken connection, and what became of them |
//! | `steadypool_connects_total` | counter | `outcome` | connect attempts: `ok` or the failure's cause |
//! | `steadypool_connect_duration_seconds` | histogram | | time to open a connection, handshake included |
//! | `steadypool_checkout_wait_seconds` | histogram | | time `get()` took |
//! | `steadypool_connections` | gauge | `state` (`idle`, `in_use`) | pooled connections |
//! | `steadypool_waiters` | gauge | | tasks waiting in `get()` |
//! | `steadypool_circuit_state` | gauge | | connect circuit: 0 closed, 1 half-open, 2 open |
//! | `steadypool_idle_limit_lower_seconds` | gauge | | longest idle time seen harmless on this path (0: none yet) |
//! | `steadypool_idle_limit_upper_seconds` | gauge | | shortest idle time after which a connection was found closed (NaN: none) |
//! | `steadypool_idle_evict_after_seconds` | gauge | | idle time after which the pool closes a connection now (`+Inf`: never) |
//! | `steadypool_runs_total` | counter | `outcome` | `run` calls, by what the caller got: `ok`, `operation_error`, `maybe_executed`, `not_executed` |
//!
//! The occupancy gauges are refreshed on every reaper tick; the idle-limit gauges
//! whenever the evidence changes (see [`crate::diagnosis`]).

use std::time::Duration;

use metrics::{
    Counter, Gauge, Histogram, SharedString, Unit, counter, describe_counter, describe_gauge,
    describe_histogram, gauge, histogram,
};

use crate::cause::{Eviction, Phase, ResetCause};
use crate::diagnosis::IdleLimit;

/// Connections that broke, by `cause` and `phase`.
pub const RESETS: &str = "steadypool_resets_total";
/// Connections closed on purpose, by `reason`.
pub const EVICTIONS: &str = "steadypool_evictions_total";
/// Operations that hit a broken connection, by `cause` and `outcome`.
pub const RETRIES: &str = "steadypool_retries_total";
/// Connect attempts, by `outcome`.
pub const CONNECTS: &str = "steadypool_connects_total";
/// Time to open a connection.
pub const CONNECT_DURATION: &str = "steadypool_connect_duration_seconds";
/// Time `get()` took.
pub const CHECKOUT_WAIT: &str = "steadypool_checkout_wait_seconds";
/// Pooled connections, by `state`.
pub const CONNECTIONS: &str = "steadypool_connections";
/// Tasks waiting for a connection.
pub const WAITERS: &str = "steadypool_waiters";
/// The connect circuit's state.
pub const CIRCUIT_STATE: &str = "steadypool_circuit_state";
/// Lower bound of the learned idle limit.
pub const IDLE_LIMIT_LOWER: &str = "steadypool_idle_limit_lower_seconds";
/// Upper bound of the learned idle limit.
pub const IDLE_LIMIT_UPPER: &str = "steadypool_idle_limit_upper_seconds";
/// The idle time after which the pool closes a connection now.
pub const IDLE_EVICT_AFTER: &str = "steadypool_idle_evict_after_seconds";
/// `run` calls, by the `outcome` the caller got.
pub const RUNS: &str = "steadypool_runs_total";

/// What became of an operation that hit a broken connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RetryOutcome {
    /// It was retried and a later attempt succeeded.
    Succeeded,
    /// It was retried, but attempts or the deadline ran out.
    GaveUp,
    /// It was not retried: the retry budget was spent.
    BudgetSpent,
    /// It was not retried: it may have run on the server and is not idempotent.
    NotSafe,
}

impl RetryOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [RetryOutcome; 4] = [
        RetryOutcome::Succeeded,
        RetryOutcome::GaveUp,
        RetryOutcome::BudgetSpent,
        RetryOutcome::NotSafe,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RetryOutcome::Succeeded => "succeeded",
            RetryOutcome::GaveUp => "gave_up",
            RetryOutcome::BudgetSpent => "budget_spent",
            RetryOutcome::NotSafe => "not_safe",
        }
    }
}

/// What a caller of [`Pool::run`](crate::Pool::run) (or a sibling) got back. Every
/// call that returns counts once; a `run` future dropped before it returned counts
/// nothing.
///
/// ```
/// use steadypool::metrics::RunOutcome;
/// let labels: Vec<_> = RunOutcome::ALL.iter().map(|o| o.as_str()).collect();
/// assert_eq!(labels, ["ok", "operation_error", "maybe_executed", "not_executed"]);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum RunOutcome {
    /// The operation returned its value.
    Ok,
    /// The server answered with the operation's own error
    /// ([`RunError::Operation`](crate::RunError::Operation)).
    OperationError,
    /// The request may have taken effect
    /// ([`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted)).
    MaybeExecuted,
    /// The request never reached the server
    /// ([`RunError::NotExecuted`](crate::RunError::NotExecuted)), for example every
    /// connect was refused or the connect circuit is open.
    NotExecuted,
}

impl RunOutcome {
    /// Every outcome, in a fixed order.
    pub const ALL: [RunOutcome; 4] = [
        RunOutcome::Ok,
        RunOutcome::OperationError,
        RunOutcome::MaybeExecuted,
        RunOutcome::NotExecuted,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            RunOutcome::Ok => "ok",
            RunOutcome::OperationError => "operation_error",
            RunOutcome::MaybeExecuted => "maybe_executed",
            RunOutcome::NotExecuted => "not_executed",
        }
    }
}

fn describe() {
    describe_counter!(
        RESETS,
        Unit::Count,
        "Connections that broke, by cause and phase."
    );
    describe_counter!(
        EVICTIONS,
        Unit::Count,
        "Connections closed on purpose (idle, lifetime, resize, close), by reason."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Operations that hit a broken connection, by cause and what became of them."
    );
    describe_counter!(
        CONNECTS,
        Unit::Count,
        "Connect attempts, by outcome: ok or the cause of the failure."
    );
    describe_histogram!(
        CONNECT_DURATION,
        Unit::Seconds,
        "Time to open a connection, handshake included."
    );
    describe_histogram!(
        CHECKOUT_WAIT,
        Unit::Seconds,
        "Time a checkout (get) took, probe and ping included."
    );
    describe_gauge!(CONNECTIONS, Unit::Count, "Pooled connections by state.");
    describe_gauge!(WAITERS, Unit::Count, "Tasks waiting for a connection.");
    describe_gauge!(
        CIRCUIT_STATE,
        "Connect circuit: 0 closed, 1 half-open, 2 open."
    );
    describe_gauge!(
        IDLE_LIMIT_LOWER,
        Unit::Seconds,
        "Longest idle time after which a connection was reused without trouble (learned); 0 while none was."
    );
    describe_gauge!(
        IDLE_LIMIT_UPPER,
        Unit::Seconds,
        "Shortest idle time after which a connection was found closed or reset (learned); NaN while none was."
    );
    describe_gauge!(
        IDLE_EVICT_AFTER,
        Unit::Seconds,
        "Idle time after which the pool closes a connection now: idle_timeout, or the learned limit when lower; +Inf for never."
    );
    describe_counter!(
        RUNS,
        Unit::Count,
        "Run calls, by what the caller got: ok, operation_error, maybe_executed (the request may have taken effect) or not_executed."
    );
}

/// A pool's metric handles, bound once when the pool is built.
#[derive(Debug)]
pub(crate) struct Recorder {
    resets: Vec<Counter>,
    evictions: Vec<Counter>,
    retries: Vec<Counter>,
    connects_ok: Counter,
    connects_failed: Vec<Counter>,
    connect_duration: Histogram,
    checkout_wait: Histogram,
    idle: Gauge,
    in_use: Gauge,
    waiters: Gauge,
    circuit_state: Gauge,
    idle_limit_lower: Gauge,
    idle_limit_upper: Gauge,
    idle_evict_after: Gauge,
    runs: Vec<Counter>,
}

impl Recorder {
    pub(crate) fn new(pool: &str) -> Recorder {
        describe();
        let pool = SharedString::from(pool.to_owned());
        let resets = ResetCause::ALL
            .iter()
            .flat_map(|cause| {
                let pool = pool.clone();
                Phase::ALL.iter().map(move |phase| {
                    counter!(RESETS, "pool" => pool.clone(), "cause" => cause.as_str(), "phase" => phase.as_str())
                })
            })
            .collect();
        let evictions = Eviction::ALL
            .iter()
            .map(|reason| counter!(EVICTIONS, "pool" => pool.clone(), "reason" => reason.as_str()))
            .collect();
        let retries = ResetCause::ALL
            .iter()
            .flat_map(|cause| {
                let pool = pool.clone();
                RetryOutcome::ALL.iter().map(move |outcome| {
                    counter!(RETRIES, "pool" => pool.clone(), "cause" => cause.as_str(), "outcome" => outcome.as_str())
                })
            })
            .collect();
        let runs = RunOutcome::ALL
            .iter()
            .map(|outcome| counter!(RUNS, "pool" => pool.clone(), "outcome" => outcome.as_str()))
            .collect();
        let connects_failed = ResetCause::ALL
            .iter()
            .map(|cause| counter!(CONNECTS, "pool" => pool.clone(), "outcome" => cause.as_str()))
            .collect();
        Recorder {
            resets,
            evictions,
            retries,
            connects_ok: counter!(CONNECTS, "pool" => pool.clone(), "outcome" => "ok"),
            connects_failed,
            connect_duration: histogram!(CONNECT_DURATION, "pool" => pool.clone()),
            checkout_wait: histogram!(CHECKOUT_WAIT, "pool" => pool.clone()),
            idle: gauge!(CONNECTIONS, "pool" => pool.clone(), "state" => "idle"),
            in_use: gauge!(CONNECTIONS, "pool" => pool.clone(), "state" => "in_use"),
            waiters: gauge!(WAITERS, "pool" => pool.clone()),
            circuit_state: gauge!(CIRCUIT_STATE, "pool" => pool.clone()),
            idle_limit_lower: gauge!(IDLE_LIMIT_LOWER, "pool" => pool.clone()),
            idle_limit_upper: gauge!(IDLE_LIMIT_UPPER, "pool" => pool.clone()),
            idle_evict_after: gauge!(IDLE_EVICT_AFTER, "pool" => pool),
            runs,
        }
    }

    fn cause_index(cause: ResetCause) -> usize {
        ResetCause::ALL
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(0)
    }

    pub(crate) fn reset(&self, cause: ResetCause, phase: Phase) {
        let phase_index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        self.resets[Self::cause_index(cause) * Phase::ALL.len() + phase_index].increment(1);
    }

    pub(crate) fn eviction(&self, reason: Eviction, count: u64) {
        let index = Eviction::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.evictions[index].increment(count);
    }

    pub(crate) fn retry(&self, cause: ResetCause, outcome: RetryOutcome) {
        let outcome_index = RetryOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.retries[Self::cause_index(cause) * RetryOutcome::ALL.len() + outcome_index]
            .increment(1);
    }

    pub(crate) fn connect(&self, result: Result<(), ResetCause>, took: Duration) {
        match result {
            Ok(()) => self.connects_ok.increment(1),
            Err(cause) => self.connects_failed[Self::cause_index(cause)].increment(1),
        }
        self.connect_duration.record(took.as_secs_f64());
    }

    pub(crate) fn checkout(&self, took: Duration) {
        self.checkout_wait.record(took.as_secs_f64());
    }

    pub(crate) fn occupancy(&self, idle: usize, in_use: usize, waiters: usize) {
        self.idle.set(idle as f64);
        self.in_use.set(in_use as f64);
        self.waiters.set(waiters as f64);
    }

    pub(crate) fn circuit_state(&self, state: f64) {
        self.circuit_state.set(state);
    }

    pub(crate) fn idle_limit(&self, limit: &IdleLimit) {
        self.idle_limit_lower
            .set(limit.lower.map_or(0.0, |lower| lower.as_secs_f64()));
        self.idle_limit_upper
            .set(limit.upper.map_or(f64::NAN, |upper| upper.as_secs_f64()));
        self.idle_evict_after.set(
            limit
                .evict_after
                .map_or(f64::INFINITY, |after| after.as_secs_f64()),
        );
    }

    pub(crate) fn run(&self, outcome: RunOutcome) {
        let index = RunOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.runs[index].increment(1);
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;

    #[test]
    fn every_metric_is_registered_and_described_when_a_pool_is_built() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let pool = metrics::with_local_recorder(&recorder, || Recorder::new("described"));
        pool.reset(ResetCause::UserTimeout, Phase::InUse);
        pool.retry(ResetCause::PeerReset, RetryOutcome::NotSafe);
        pool.run(RunOutcome::MaybeExecuted);
        let snapshot = snapshotter.snapshot().into_vec();
        for name in [
            RESETS,
            EVICTIONS,
            RETRIES,
            CONNECTS,
            CONNECT_DURATION,
            CHECKOUT_WAIT,
            CONNECTIONS,
            WAITERS,
            CIRCUIT_STATE,
            IDLE_LIMIT_LOWER,
            IDLE_LIMIT_UPPER,
            IDLE_EVICT_AFTER,
            RUNS,
        ] {
            let series: Vec<_> = snapshot
                .iter()
                .filter(|(key, ..)| key.key().name() == name)
                .collect();
            assert!(!series.is_empty(), "{name} is not registered");
            for (key, _, description, _) in &series {
                assert!(description.is_some(), "{name} has no description");
                assert!(
                    key.key()
                        .labels()
                        .any(|l| l.key() == "pool" && l.value() == "described"),
                    "{name} lacks the pool label"
                );
            }
        }
        let counted = |name: &str, labels: &[(&str, &str)]| {
            snapshot
                .iter()
                .filter(|(key, ..)| {
                    key.key().name() == name
                        && labels.iter().all(|(k, v)| {
                            key.key().labels().any(|l| l.key() == *k && l.value() == *v)
                        })
                })
                .map(|(.., value)| match value {
                    DebugValue::Counter(n) => *n,
                    _ => 0,
                })
                .sum::<u64>()
        };
        assert_eq!(
            counted(RESETS, &[("cause", "user_timeout"), ("phase", "in_use")]),
            1
        );
        assert_eq!(counted(RESETS, &[]), 1);
        assert_eq!(
            counted(RETRIES, &[("cause", "peer_reset"), ("outcome", "not_safe")]),
            1
        );
        assert_eq!(counted(RUNS, &[("outcome", "maybe_executed")]), 1);
        assert_eq!(counted(RUNS, &[]), 1);
        assert_eq!(
            snapshot
                .iter()
                .filter(|(key, ..)| key.key().name() == RUNS)
                .count(),
            RunOutcome::ALL.len()
        );
        // Every combination exists from the start, so rates never miss a series.
        assert_eq!(
            snapshot
                .iter()
                .filter(|(key, ..)| key.key().name() == RESETS)
                .count(),
            ResetCause::ALL.len() * Phase::ALL.len()
        );
    }
}
