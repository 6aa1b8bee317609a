//! The pool's metric handles: bound once when the pool is built, switched to a global
//! recorder installed later, and the one place that calls the `metrics` crate. The
//! names, labels and meanings are in [`crate::metrics`].

use std::sync::Arc;
use std::time::Duration;

use metrics::{
    Counter, CounterFn, Gauge, GaugeFn, Histogram, HistogramFn, Key, Label, Level, Metadata,
    SharedString, Unit, describe_counter, describe_gauge, describe_histogram,
};

use crate::cause::{Eviction, Phase, ResetCause};
use crate::diagnosis::IdleLimit;
use crate::metrics::{
    ANNOUNCED_IDLE_TIMEOUT, CHECKOUT_ERRORS, CHECKOUT_WAIT, CIRCUIT_STATE, CONNECT_DURATION,
    CONNECTIONS, CONNECTS, CheckoutFailure, EVICTIONS, IDLE_EVICT_AFTER, IDLE_LIMIT_LOWER,
    IDLE_LIMIT_UPPER, RESETS, RETRIES, RUNS, RetryOutcome, RunOutcome, WAITERS,
};

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
    describe_counter!(
        CHECKOUT_ERRORS,
        Unit::Count,
        "Checkouts that failed, by what the caller got."
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
    describe_gauge!(
        ANNOUNCED_IDLE_TIMEOUT,
        Unit::Seconds,
        "Idle timeout the upstream last announced (HTTP Keep-Alive: timeout=N); connections are closed before it, as server_limit evictions; NaN while none was."
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
    handles: Handles,
    follow: Option<Follow>,
}

/// The handles themselves.
#[derive(Debug)]
struct Handles {
    resets: Vec<Counter>,
    evictions: Vec<Counter>,
    retries: Vec<Counter>,
    connects_ok: Counter,
    connects_failed: Vec<Counter>,
    checkout_errors: Vec<Counter>,
    connect_duration: Histogram,
    checkout_wait: Histogram,
    idle: Gauge,
    in_use: Gauge,
    waiters: Gauge,
    circuit_state: Gauge,
    idle_limit_lower: Gauge,
    idle_limit_upper: Gauge,
    idle_evict_after: Gauge,
    announced_idle_timeout: Gauge,
    runs: Vec<Counter>,
}

/// Registers the handles with whatever recorder is in force, or through relays.
trait Bind {
    fn counter(&mut self, key: Key) -> Counter;
    fn gauge(&mut self, key: Key) -> Gauge;
    fn histogram(&mut self, key: Key) -> Histogram;
}

static METADATA: Metadata<'static> = Metadata::new(module_path!(), Level::INFO, None);

/// Binds straight to the recorder in force.
struct Direct;

impl Bind for Direct {
    fn counter(&mut self, key: Key) -> Counter {
        metrics::with_recorder(|r| r.register_counter(&key, &METADATA))
    }

    fn gauge(&mut self, key: Key) -> Gauge {
        metrics::with_recorder(|r| r.register_gauge(&key, &METADATA))
    }

    fn histogram(&mut self, key: Key) -> Histogram {
        metrics::with_recorder(|r| r.register_histogram(&key, &METADATA))
    }
}

/// Binds through relays that can switch, once, to a global recorder installed later.
#[derive(Debug, Default)]
struct Follow {
    /// The recorder the handles were bound to at build.
    bound_to: usize,
    relays: Vec<(Key, Relay)>,
    switched: std::sync::OnceLock<()>,
}

#[derive(Debug)]
enum Relay {
    Counter(Arc<Relayed<Counter>>),
    Gauge(Arc<Relayed<Gauge>>),
    Histogram(Arc<Relayed<Histogram>>),
}

/// A handle that records to the recorder in force at build, until the pool switches
/// it to a global recorder installed after.
#[derive(Debug)]
struct Relayed<H> {
    first: H,
    later: std::sync::OnceLock<H>,
}

impl<H> Relayed<H> {
    fn new(first: H) -> Arc<Relayed<H>> {
        Arc::new(Relayed {
            first,
            later: std::sync::OnceLock::new(),
        })
    }

    fn current(&self) -> &H {
        self.later.get().unwrap_or(&self.first)
    }
}

impl CounterFn for Relayed<Counter> {
    fn increment(&self, value: u64) {
        self.current().increment(value);
    }

    fn absolute(&self, value: u64) {
        self.current().absolute(value);
    }
}

impl GaugeFn for Relayed<Gauge> {
    fn increment(&self, value: f64) {
        self.current().increment(value);
    }

    fn decrement(&self, value: f64) {
        self.current().decrement(value);
    }

    fn set(&self, value: f64) {
        self.current().set(value);
    }
}

impl HistogramFn for Relayed<Histogram> {
    fn record(&self, value: f64) {
        self.current().record(value);
    }

    fn record_many(&self, value: f64, count: usize) {
        self.current().record_many(value, count);
    }
}

impl Bind for Follow {
    fn counter(&mut self, key: Key) -> Counter {
        let relay = Relayed::new(Direct.counter(key.clone()));
        self.relays.push((key, Relay::Counter(Arc::clone(&relay))));
        Counter::from_arc(relay)
    }

    fn gauge(&mut self, key: Key) -> Gauge {
        let relay = Relayed::new(Direct.gauge(key.clone()));
        self.relays.push((key, Relay::Gauge(Arc::clone(&relay))));
        Gauge::from_arc(relay)
    }

    fn histogram(&mut self, key: Key) -> Histogram {
        let relay = Relayed::new(Direct.histogram(key.clone()));
        self.relays
            .push((key, Relay::Histogram(Arc::clone(&relay))));
        Histogram::from_arc(relay)
    }
}

/// Which recorder `metrics` would record to here: its address.
fn recorder_in_force() -> usize {
    metrics::with_recorder(|r| std::ptr::from_ref(r).cast::<()>() as usize)
}

fn key(name: &'static str, pool: &SharedString, labels: &[(&'static str, &'static str)]) -> Key {
    let mut all = vec![Label::new("pool", pool.clone())];
    all.extend(labels.iter().map(|&(k, v)| Label::new(k, v)));
    Key::from_parts(name, all)
}

impl Handles {
    fn bind(pool: &str, bind: &mut dyn Bind) -> Handles {
        describe();
        let pool = SharedString::from(pool.to_owned());
        let mut resets = Vec::new();
        let mut retries = Vec::new();
        let mut connects_failed = Vec::new();
        for cause in ResetCause::ALL {
            for phase in Phase::ALL {
                resets.push(bind.counter(key(
                    RESETS,
                    &pool,
                    &[("cause", cause.as_str()), ("phase", phase.as_str())],
                )));
            }
            for outcome in RetryOutcome::ALL {
                retries.push(bind.counter(key(
                    RETRIES,
                    &pool,
                    &[("cause", cause.as_str()), ("outcome", outcome.as_str())],
                )));
            }
            connects_failed.push(bind.counter(key(
                CONNECTS,
                &pool,
                &[("outcome", cause.as_str())],
            )));
        }
        let evictions = Eviction::ALL
            .iter()
            .map(|reason| bind.counter(key(EVICTIONS, &pool, &[("reason", reason.as_str())])))
            .collect();
        let checkout_errors = CheckoutFailure::ALL
            .iter()
            .map(|error| bind.counter(key(CHECKOUT_ERRORS, &pool, &[("error", error.as_str())])))
            .collect();
        let runs = RunOutcome::ALL
            .iter()
            .map(|outcome| bind.counter(key(RUNS, &pool, &[("outcome", outcome.as_str())])))
            .collect();
        Handles {
            resets,
            evictions,
            retries,
            connects_ok: bind.counter(key(CONNECTS, &pool, &[("outcome", "ok")])),
            connects_failed,
            checkout_errors,
            connect_duration: bind.histogram(key(CONNECT_DURATION, &pool, &[])),
            checkout_wait: bind.histogram(key(CHECKOUT_WAIT, &pool, &[])),
            idle: bind.gauge(key(CONNECTIONS, &pool, &[("state", "idle")])),
            in_use: bind.gauge(key(CONNECTIONS, &pool, &[("state", "in_use")])),
            waiters: bind.gauge(key(WAITERS, &pool, &[])),
            circuit_state: bind.gauge(key(CIRCUIT_STATE, &pool, &[])),
            idle_limit_lower: bind.gauge(key(IDLE_LIMIT_LOWER, &pool, &[])),
            idle_limit_upper: bind.gauge(key(IDLE_LIMIT_UPPER, &pool, &[])),
            idle_evict_after: bind.gauge(key(IDLE_EVICT_AFTER, &pool, &[])),
            announced_idle_timeout: bind.gauge(key(ANNOUNCED_IDLE_TIMEOUT, &pool, &[])),
            runs,
        }
    }
}

impl Recorder {
    pub(crate) fn new(pool: &str) -> Recorder {
        // A recorder set for this thread only (`with_local_recorder`, as tests do) is
        // the caller's choice: bind to it for good. Otherwise bind through relays, so
        // that a global recorder installed after `build()` still gets every series.
        // Only another thread can tell the two apart.
        let here = recorder_in_force();
        let global = std::thread::scope(|s| s.spawn(recorder_in_force).join()).unwrap_or(here);
        if here != global {
            return Recorder {
                handles: Handles::bind(pool, &mut Direct),
                follow: None,
            };
        }
        let mut follow = Follow {
            bound_to: here,
            ..Follow::default()
        };
        let handles = Handles::bind(pool, &mut follow);
        Recorder {
            handles,
            follow: Some(follow),
        }
    }

    /// Switches the handles to a global recorder installed since the pool was built;
    /// returns whether it did (the caller then says so in the log). Called on
    /// every reaper tick; after the switch, or for a pool bound to a local recorder,
    /// it costs one load.
    pub(crate) fn follow_global_recorder(&self) -> bool {
        let Some(follow) = &self.follow else {
            return false;
        };
        if follow.switched.get().is_some() || recorder_in_force() == follow.bound_to {
            return false;
        }
        describe();
        metrics::with_recorder(|r| {
            for (key, relay) in &follow.relays {
                // Each relay is set once; `switched` below keeps this from running twice.
                let _ = match relay {
                    Relay::Counter(c) => c.later.set(r.register_counter(key, &METADATA)).is_ok(),
                    Relay::Gauge(g) => g.later.set(r.register_gauge(key, &METADATA)).is_ok(),
                    Relay::Histogram(h) => {
                        h.later.set(r.register_histogram(key, &METADATA)).is_ok()
                    }
                };
            }
        });
        let _ = follow.switched.set(());
        true
    }

    fn cause_index(cause: ResetCause) -> usize {
        ResetCause::ALL
            .iter()
            .position(|c| *c == cause)
            .unwrap_or(0)
    }

    pub(crate) fn reset(&self, cause: ResetCause, phase: Phase) {
        let phase_index = Phase::ALL.iter().position(|p| *p == phase).unwrap_or(0);
        self.handles.resets[Self::cause_index(cause) * Phase::ALL.len() + phase_index].increment(1);
    }

    pub(crate) fn eviction(&self, reason: Eviction, count: u64) {
        let index = Eviction::ALL.iter().position(|r| *r == reason).unwrap_or(0);
        self.handles.evictions[index].increment(count);
    }

    pub(crate) fn retry(&self, cause: ResetCause, outcome: RetryOutcome) {
        let outcome_index = RetryOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.handles.retries[Self::cause_index(cause) * RetryOutcome::ALL.len() + outcome_index]
            .increment(1);
    }

    pub(crate) fn connect(&self, result: Result<(), ResetCause>, took: Duration) {
        match result {
            Ok(()) => self.handles.connects_ok.increment(1),
            Err(cause) => self.handles.connects_failed[Self::cause_index(cause)].increment(1),
        }
        self.handles.connect_duration.record(took.as_secs_f64());
    }

    pub(crate) fn checkout(&self, took: Duration) {
        self.handles.checkout_wait.record(took.as_secs_f64());
    }

    /// Checkouts that found a connection at once, counted on the checkout path and
    /// recorded here in one call.
    pub(crate) fn immediate_checkouts(&self, count: u64) {
        if count > 0 {
            let count = usize::try_from(count).unwrap_or(usize::MAX);
            self.handles.checkout_wait.record_many(0.0, count);
        }
    }

    pub(crate) fn checkout_failed(&self, failure: CheckoutFailure) {
        let index = CheckoutFailure::ALL
            .iter()
            .position(|f| *f == failure)
            .unwrap_or(0);
        self.handles.checkout_errors[index].increment(1);
    }

    pub(crate) fn occupancy(&self, idle: usize, in_use: usize, waiters: usize) {
        self.handles.idle.set(idle as f64);
        self.handles.in_use.set(in_use as f64);
        self.handles.waiters.set(waiters as f64);
    }

    pub(crate) fn circuit_state(&self, state: f64) {
        self.handles.circuit_state.set(state);
    }

    pub(crate) fn idle_limit(&self, limit: &IdleLimit) {
        self.handles
            .idle_limit_lower
            .set(limit.lower.map_or(0.0, |lower| lower.as_secs_f64()));
        self.handles
            .idle_limit_upper
            .set(limit.upper.map_or(f64::NAN, |upper| upper.as_secs_f64()));
        self.handles.idle_evict_after.set(
            limit
                .evict_after
                .map_or(f64::INFINITY, |after| after.as_secs_f64()),
        );
    }

    pub(crate) fn announced_idle_timeout(&self, announced: Option<Duration>) {
        self.handles
            .announced_idle_timeout
            .set(announced.map_or(f64::NAN, |d| d.as_secs_f64()));
    }

    pub(crate) fn run(&self, outcome: RunOutcome) {
        let index = RunOutcome::ALL
            .iter()
            .position(|o| *o == outcome)
            .unwrap_or(0);
        self.handles.runs[index].increment(1);
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
            CHECKOUT_ERRORS,
            CONNECTIONS,
            WAITERS,
            CIRCUIT_STATE,
            IDLE_LIMIT_LOWER,
            IDLE_LIMIT_UPPER,
            IDLE_EVICT_AFTER,
            ANNOUNCED_IDLE_TIMEOUT,
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
