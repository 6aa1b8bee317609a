//! Observation: the one place that reports what the pool does.
//!
//! The domain (the checkout checks, the connect gate, the idle-limit learner, the
//! retry loop) decides and returns what happened; the pool hands each event to its
//! [`Observer`], which keeps the in-process books ([`Stats`]), records the
//! [metrics](crate::metrics) and writes the `tracing` events. Keeping every report
//! here means the domain can be read and tested without a recorder, a metric name
//! change touches one module, and the books and the metrics count the same events.
//!
//! Every lost connection is logged as a `warn` event with its cause, its phase, how
//! long it sat idle, its age, the peer's address, and a hint that says what most
//! likely happened and what to change:
//!
//! ```text
//! WARN connection reset pool=api conn=17 cause="peer_reset" phase="checkout"
//!   idle_secs=61.2 age_secs=600.4 peer=10.0.3.7:443 suppressed=0
//!   hint=reset (RST) after 61 s idle: an intermediary (load balancer, NAT, firewall) or
//!   the server's own idle timeout closes idle connections between 45 s and 61 s;
//!   set idle_timeout below 45 s
//! ```
//!
//! | what the pool saw | likely production cause | the hint says |
//! |---|---|---|
//! | FIN / RST found after idling | an idle-timeout conflict (LB, NAT, firewall, server) | the learned interval, and the `idle_timeout` to set |
//! | refused connects; busy connections reset; closes within a second of use | upstream crash, restart or exhaustion | check the upstream's logs, restarts, backlog |
//! | connect, keepalive or user timeouts | a silent black hole | which timeout fired, and where packets vanish |
//!
//! Identical warnings (same cause and phase) are rate limited to one per 10 s per
//! pool; the next one that goes out says how many it stands for (`suppressed`). The
//! books and the metrics still count every one.

mod hints;
mod recorder;
mod stats;
mod throttle;

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

pub use self::hints::human as human_duration;
use self::recorder::Recorder;
pub(crate) use self::stats::Books;
pub use self::stats::Stats;
use self::throttle::WarnThrottle;
use crate::breaker::{CircuitEvent, CircuitState};
use crate::cause::{Eviction, Phase, ResetCause};
use crate::clock::CoarseInstant;
use crate::diagnosis::{IdleLimit, Lesson};
use crate::metrics::{CheckoutFailure, RetryOutcome, RunOutcome};

/// What a discarded connection looked like, for its trace event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Obituary {
    pub(crate) id: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) age: Duration,
    pub(crate) idle: Duration,
}

/// The pool's occupancy, as the reaper saw it on its tick.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Occupancy {
    pub(crate) idle: usize,
    pub(crate) in_use: usize,
    pub(crate) waiters: usize,
}

/// One pool's observer: its name, books, metric handles and warning throttle.
#[derive(Debug)]
pub(crate) struct Observer {
    name: String,
    books: Books,
    recorder: Recorder,
    throttle: WarnThrottle,
    /// Holds back news of an announced idle limit that keeps changing (servers behind
    /// one address that disagree).
    announcements: WarnThrottle<()>,
    /// The pool evicts by the learned idle limit: the hints say so.
    enforcing: bool,
}

impl Observer {
    /// The observer of a pool named `name` (the `pool` label and log field), which
    /// evicts by the learned idle limit when `enforcing`; `limit` is the limit it
    /// starts with, published at once.
    pub(crate) fn new(name: String, enforcing: bool, limit: &IdleLimit) -> Observer {
        let recorder = Recorder::new(&name);
        recorder.idle_limit(limit);
        recorder.announced_idle_timeout(None);
        Observer {
            name,
            books: Books::default(),
            recorder,
            throttle: WarnThrottle::default(),
            announcements: WarnThrottle::default(),
            enforcing,
        }
    }

    /// The pool's name.
    pub(crate) fn name(&self) -> &str {
        &self.name
    }

    /// The books as they stand.
    pub(crate) fn stats(&self) -> Stats {
        self.books.snapshot()
    }

    /// A connection closed after it broke with `cause` in `phase`: counted once, when
    /// its slot drops.
    pub(crate) fn closed_reset(&self, cause: ResetCause, phase: Phase) {
        self.recorder.reset(cause, phase);
        self.books.reset(cause, phase);
    }

    /// A connection closed on purpose: counted once, when its slot drops.
    pub(crate) fn closed_evicted(&self, reason: Eviction) {
        self.recorder.eviction(reason, 1);
        self.books.evicted(reason);
    }

    /// A connection was found broken with `cause` in `phase`: the lesson published,
    /// and a warning with a hint, unless one of its kind went out just now.
    pub(crate) fn reset(
        &self,
        cause: ResetCause,
        phase: Phase,
        lost: &Obituary,
        detail: Option<&str>,
        lesson: &Lesson,
        limit: impl FnOnce() -> IdleLimit,
    ) {
        self.learned(lesson);
        let Some(suppressed) = self.throttle.admit(cause, phase, CoarseInstant::now()) else {
            return;
        };
        let limit = lesson.changed.unwrap_or_else(limit);
        let hint = hints::hint(
            cause,
            phase,
            lost.idle,
            lesson.reading,
            &limit,
            self.enforcing,
        );
        tracing::warn!(
            pool = %self.name,
            conn = lost.id,
            cause = cause.as_str(),
            phase = phase.as_str(),
            idle_secs = secs(lost.idle),
            age_secs = secs(lost.age),
            peer = %Peer(lost.peer),
            detail = detail.unwrap_or("none"),
            suppressed,
            hint = %hint,
            "connection reset",
        );
    }

    /// A connection was chosen to close for `reason`; `detail` is what its manager
    /// said about it (which limit of the server's it was closed before).
    pub(crate) fn evicted(&self, reason: Eviction, gone: &Obituary, detail: Option<&str>) {
        tracing::debug!(
            pool = %self.name,
            conn = gone.id,
            reason = reason.as_str(),
            idle_secs = secs(gone.idle),
            age_secs = secs(gone.age),
            detail = detail.unwrap_or("none"),
            "connection closed",
        );
    }

    /// A connection came back with `announced`, the idle timeout its upstream
    /// announced. News (the first, or a change) is published, and told in an `info`
    /// event with a hint unless one went out just now; `limit` is the pool's own idle
    /// limit, read only then. The common case, no news, costs one atomic load.
    #[inline]
    pub(crate) fn announced_idle_limit(
        &self,
        announced: Duration,
        limit: impl FnOnce() -> IdleLimit,
    ) {
        if self.books.announce(announced) {
            self.announcement(announced, &limit());
        }
    }

    #[cold]
    #[inline(never)]
    fn announcement(&self, announced: Duration, limit: &IdleLimit) {
        self.recorder.announced_idle_timeout(Some(announced));
        let Some(suppressed) = self.announcements.admit_kind((), CoarseInstant::now()) else {
            return;
        };
        tracing::info!(
            pool = %self.name,
            announced_secs = secs(announced),
            suppressed,
            hint = %hints::announced(announced, limit),
            "the upstream announced its idle timeout",
        );
    }

    /// A new connection was opened in `took`.
    pub(crate) fn connected(&self, took: Duration) {
        self.recorder.connect(Ok(()), took);
        self.books.opened();
    }

    /// A new connection could not be opened: counted as a reset in phase `connect`,
    /// and warned about with a hint.
    pub(crate) fn connect_failed(
        &self,
        cause: ResetCause,
        took: Duration,
        error: &dyn fmt::Display,
        lesson: &Lesson,
        limit: impl FnOnce() -> IdleLimit,
    ) {
        self.recorder.connect(Err(cause), took);
        self.recorder.reset(cause, Phase::Connect);
        self.books.connect_failed(cause);
        self.learned(lesson);
        let Some(suppressed) = self
            .throttle
            .admit(cause, Phase::Connect, CoarseInstant::now())
        else {
            return;
        };
        let limit = lesson.changed.unwrap_or_else(limit);
        let hint = hints::hint(
            cause,
            Phase::Connect,
            Duration::ZERO,
            lesson.reading,
            &limit,
            self.enforcing,
        );
        tracing::warn!(
            pool = %self.name,
            cause = cause.as_str(),
            phase = Phase::Connect.as_str(),
            error = %error,
            suppressed,
            hint = %hint,
            "connect failed",
        );
    }

    /// The connect gate turned a connect away without dialing.
    pub(crate) fn gate_rejected(&self) {
        self.books.gate_rejection();
    }

    /// The connect circuit moved.
    pub(crate) fn circuit(&self, event: CircuitEvent) {
        match event {
            CircuitEvent::HalfOpen => {
                self.recorder
                    .circuit_state(CircuitState::HalfOpen.gauge_value());
                tracing::debug!(pool = %self.name, "connect circuit half-open: trial connect");
            }
            CircuitEvent::Closed { failures } => {
                self.recorder
                    .circuit_state(CircuitState::Closed.gauge_value());
                tracing::info!(
                    pool = %self.name,
                    failures,
                    "connect circuit closed: a connect succeeded",
                );
            }
            CircuitEvent::Opened {
                cause,
                failures,
                retry_in,
            } => {
                self.recorder
                    .circuit_state(CircuitState::Open.gauge_value());
                tracing::warn!(
                    pool = %self.name,
                    cause = cause.as_str(),
                    failures,
                    retry_in_secs = retry_in.as_secs_f64(),
                    "connect circuit open: the upstream keeps failing; checkouts that need a new \
                     connection wait (up to circuit_wait) for a trial connect to succeed",
                );
            }
        }
    }

    /// A checkout found a connection on its first attempt: one relaxed add, the whole
    /// cost of observing it on the checkout path (the reaper's tick records it).
    #[inline]
    pub(crate) fn immediate_checkout(&self) {
        self.books.immediate_checkout();
    }

    /// A checkout got a connection after waiting `took`.
    pub(crate) fn waited_checkout(&self, took: Duration) {
        self.recorder.checkout(took);
        self.books.waited_checkout();
    }

    /// A checkout failed with `failure`.
    pub(crate) fn checkout_failed(&self, failure: CheckoutFailure) {
        self.books.checkout_error(failure);
        self.recorder.checkout_failed(failure);
    }

    /// A connection reused after idling changed the learned idle limit.
    ///
    /// Changes learned on two threads at once may be published out of order; the
    /// reaper's tick publishes the limit in force, so the gauges settle within a
    /// `reaper_interval`. Publishing under the learner's lock would tie the domain to
    /// the recorder again.
    pub(crate) fn idle_limit_changed(&self, limit: &IdleLimit) {
        self.recorder.idle_limit(limit);
    }

    fn learned(&self, lesson: &Lesson) {
        if let Some(limit) = &lesson.changed {
            self.recorder.idle_limit(limit);
        }
    }

    /// A `run` returned `run` to its caller; `retry` is the cause it weighed retrying
    /// for and what became of that, when it hit a broken connection.
    pub(crate) fn run_finished(&self, run: RunOutcome, retry: Option<(ResetCause, RetryOutcome)>) {
        self.recorder.run(run);
        self.books.run(run);
        if let Some((cause, outcome)) = retry {
            self.recorder.retry(cause, outcome);
            self.books.retry(cause, outcome);
        }
    }

    /// Attempt `attempt` of a `run` failed with `cause`; the next one follows after
    /// `wait`.
    pub(crate) fn retrying(&self, attempt: u32, cause: ResetCause, wait: Duration) {
        tracing::debug!(
            attempt,
            cause = cause.as_str(),
            wait_ms = wait.as_secs_f64() * 1000.0,
            "retrying",
        );
    }

    /// Attempt `attempt` of a `run` failed with `cause`, and is not retried for
    /// `reason`.
    pub(crate) fn not_retrying(&self, attempt: u32, cause: ResetCause, reason: &dyn fmt::Display) {
        tracing::debug!(attempt, cause = cause.as_str(), %reason, "not retrying");
    }

    /// An operation did not finish on connection `conn`, which is discarded.
    pub(crate) fn unfinished(&self, conn: u64) {
        tracing::debug!(
            conn,
            "operation did not finish (it panicked, was cancelled or hit the deadline); \
             its connection is discarded",
        );
    }

    /// The reaper's tick: what checkouts left for it to record, and the gauges.
    pub(crate) fn tick(&self, occupancy: Occupancy, circuit: CircuitState, limit: &IdleLimit) {
        if self.recorder.follow_global_recorder() {
            tracing::info!(
                "a metrics recorder was installed after this pool was built; its metrics go there from now on"
            );
        }
        self.recorder
            .immediate_checkouts(self.books.take_immediate());
        self.recorder.circuit_state(circuit.gauge_value());
        self.recorder
            .occupancy(occupancy.idle, occupancy.in_use, occupancy.waiters);
        self.recorder.idle_limit(limit);
        self.recorder.announced_idle_timeout(self.books.announced());
    }

    /// A reaper tick panicked; the reaper goes on.
    pub(crate) fn reaper_panicked(&self) {
        tracing::error!(
            pool = %self.name,
            "a reaper tick panicked; the next tick runs as usual",
        );
    }

    /// A connection hook failed: the connection is closed.
    pub(crate) fn hook_failed(&self, conn: u64, hook: &'static str, error: &dyn fmt::Display) {
        tracing::warn!(
            pool = %self.name,
            conn,
            hook,
            error = %error,
            "a hook failed: the connection is closed",
        );
    }

    /// The pool was resized to `max_size`.
    pub(crate) fn resized(&self, max_size: usize) {
        tracing::debug!(pool = %self.name, max_size, "pool resized");
    }

    /// `Pool::retain` closed `closed` idle connections.
    pub(crate) fn retained(&self, closed: usize) {
        tracing::debug!(pool = %self.name, closed, "retain closed idle connections");
    }
}

/// A duration for a log field: seconds, rounded to the millisecond (`1.304`, not
/// `1.3040000379999999`).
fn secs(d: Duration) -> f64 {
    d.as_millis() as f64 / 1000.0
}

/// A peer address for a log field: the address, or `unknown` when the manager does
/// not expose the socket.
struct Peer(Option<SocketAddr>);

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => addr.fmt(f),
            None => f.write_str("unknown"),
        }
    }
}

#[cfg(test)]
mod tests {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    use super::*;
    use crate::diagnosis::Reading;
    use crate::metrics::{CHECKOUT_ERRORS, CONNECTS, EVICTIONS, RESETS, RETRIES, RUNS};

    /// The sum of counter `name` over the series whose labels include `labels`.
    fn counted(
        snapshot: &[(
            metrics_util::CompositeKey,
            Option<metrics::Unit>,
            Option<metrics::SharedString>,
            DebugValue,
        )],
        name: &str,
        labels: &[(&str, &str)],
    ) -> u64 {
        snapshot
            .iter()
            .filter(|(key, ..)| {
                key.key().name() == name
                    && labels
                        .iter()
                        .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
            })
            .map(|(.., value)| match value {
                DebugValue::Counter(n) => *n,
                _ => 0,
            })
            .sum()
    }

    #[test]
    fn the_books_and_the_metrics_count_the_same_events() {
        let recorder = DebuggingRecorder::new();
        let snapshotter = recorder.snapshotter();
        let observer = metrics::with_local_recorder(&recorder, || {
            Observer::new("observed".to_owned(), true, &IdleLimit::default())
        });
        let lesson = Lesson {
            reading: Reading::UpstreamFailure,
            changed: None,
        };
        observer.connected(Duration::from_millis(3));
        observer.connected(Duration::from_millis(4));
        observer.connect_failed(
            ResetCause::Refused,
            Duration::from_millis(1),
            &"refused",
            &lesson,
            IdleLimit::default,
        );
        observer.closed_reset(ResetCause::PeerReset, Phase::InUse);
        observer.closed_evicted(Eviction::IdleExpired);
        observer.checkout_failed(CheckoutFailure::CircuitOpen);
        observer.gate_rejected();
        observer.run_finished(RunOutcome::Ok, None);
        observer.run_finished(
            RunOutcome::MaybeExecuted,
            Some((ResetCause::PeerReset, RetryOutcome::NotSafe)),
        );

        let stats = observer.stats();
        let snapshot = snapshotter.snapshot().into_vec();
        assert_eq!(stats.opened, 2);
        assert_eq!(counted(&snapshot, CONNECTS, &[("outcome", "ok")]), 2);
        assert_eq!(stats.connect_failures, 1);
        assert_eq!(stats.resets(ResetCause::Refused, Phase::Connect), 1);
        assert_eq!(
            counted(
                &snapshot,
                RESETS,
                &[("cause", "refused"), ("phase", "connect")]
            ),
            1
        );
        assert_eq!(stats.resets(ResetCause::PeerReset, Phase::InUse), 1);
        assert_eq!(counted(&snapshot, RESETS, &[]), 2);
        assert_eq!(stats.closed(), 2, "a failed connect closes no connection");
        assert_eq!(stats.evictions(Eviction::IdleExpired), 1);
        assert_eq!(
            counted(&snapshot, EVICTIONS, &[("reason", "idle_expired")]),
            1
        );
        assert_eq!(stats.checkout_failures(CheckoutFailure::CircuitOpen), 1);
        assert_eq!(stats.checkout_errors, 1);
        assert_eq!(
            counted(&snapshot, CHECKOUT_ERRORS, &[("error", "circuit_open")]),
            1
        );
        assert_eq!(stats.gate_rejections, 1);
        assert_eq!(stats.runs(RunOutcome::Ok), 1);
        assert_eq!(stats.runs(RunOutcome::MaybeExecuted), 1);
        assert_eq!(counted(&snapshot, RUNS, &[]), 2);
        assert_eq!(
            stats.retries_by_cause(ResetCause::PeerReset, RetryOutcome::NotSafe),
            1
        );
        assert_eq!(stats.retries(RetryOutcome::NotSafe), 1);
        assert_eq!(
            counted(
                &snapshot,
                RETRIES,
                &[("cause", "peer_reset"), ("outcome", "not_safe")]
            ),
            1
        );
        assert_eq!(counted(&snapshot, RETRIES, &[]), 1);
    }
}
