//! The connect gate: a state machine that admits connects and returns how its circuit moved.

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Notify, Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::cause::ResetCause;

/// The state of a pool's connect circuit. The pool's connect gate decides how many
/// connects may be in flight, and when to stop connecting.
///
/// When an upstream goes down, every task that needs a connection would otherwise dial
/// it, fail, and dial again: thousands of refused connects a second across a fleet, and
/// a stampede of handshakes the moment it comes back. The gate puts two limits on a
/// pool's connects:
///
/// * **A width: how many connects may be in flight at once.** Further connects wait
///   their turn (inside `get()`'s `wait_timeout`). The width follows the upstream's
///   health, like TCP's congestion window: it starts narrow (2), grows by one with
///   each successful connect (so it doubles with each round of connects) up to its
///   ceiling (16 by default), and stays there across idle periods, so a pool whose
///   connects succeed reopens a burst of connections that went idle and were closed
///   all at once, as a pool without a gate would. A failed connect narrows it back at
///   once: connects already in flight go on, but no new one starts until fewer than
///   the narrow width are in flight. A connect that started before that failure does
///   not widen the gate when it succeeds. An explicit
///   [`max_concurrent_connects`](crate::PoolBuilder::max_concurrent_connects) is the
///   ceiling, never exceeded, and the narrow width is 2 or that value when lower.
///   A checkout waiting for its turn, or on the open circuit below, takes a healthy
///   connection that another user returns meanwhile instead of dialing.
/// * **A circuit.** After [`circuit_open_after`](crate::PoolBuilder::circuit_open_after)
///   consecutive failed connects the circuit *opens*: [`Pool::get`](crate::Pool::get)
///   calls that need a new connection stop dialing. They wait for the circuit to let
///   them through, up to [`circuit_wait`](crate::PoolBuilder::circuit_wait), then fail
///   with [`Error::CircuitOpen`](crate::Error::CircuitOpen), which names the last
///   failure's cause (at once with a zero `circuit_wait`). Pooled connections that are
///   still healthy keep being handed out. When the open period ends the circuit turns
///   *half-open*: the next checkout that needs a connection makes one trial connect
///   while the others keep waiting. A successful trial *closes* the circuit and wakes
///   them; a failed one opens it again for twice as long, up to
///   [`circuit_open_for`](crate::PoolBuilder::circuit_open_for). Each open period is
///   drawn at random between half and all of its length, which keeps a fleet of pools
///   from probing a recovering upstream in lock-step.
///
/// A connect that fails for a reason waiting cannot change (a certificate that does
/// not verify, refused credentials: [`Classify::is_permanent`](crate::Classify::is_permanent))
/// counts toward opening the circuit like any other, so a fleet does not hammer an
/// upstream that refuses it either; but no checkout waits behind it: checkouts
/// parked on the circuit are told at once, and those that arrive while it is open
/// fail at once, until a trial fails for another reason or succeeds.
///
/// Any successful connect closes the circuit. One that closes it starts the width
/// again from narrow: an upstream that just came back, with every pool of a fleet
/// reconnecting to it, gets a slow start rather than each pool's full ceiling at once.
/// The state is in
/// [`Status::circuit`](crate::Status::circuit) and in the `steadypool_circuit_state`
/// gauge.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use steadypool::{drivers::tcp::TcpManager, CircuitState, Error, Pool};
///
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
///     .max_concurrent_connects(2)
///     .circuit_open_after(3)
///     .circuit_open_for(Duration::from_secs(1))
///     .circuit_wait(Duration::ZERO)
///     .build()?;
/// match pool.get().await {
///     Ok(conn) => drop(conn),
///     Err(Error::CircuitOpen { cause, retry_in, .. }) => {
///         eprintln!("upstream down ({cause}); next trial connect in {retry_in:?}");
///         assert_eq!(pool.status().circuit, CircuitState::Open);
///     }
///     Err(other) => return Err(other.into()),
/// }
/// # Ok(()) }
/// ```
///
/// ```
/// use steadypool::CircuitState;
/// assert_eq!(CircuitState::Open.as_str(), "open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CircuitState {
    /// Connects go ahead (as many at once as the gate's width allows).
    #[default]
    Closed,
    /// The open period is over: the next connect is a trial, and while it is in
    /// flight other checkouts that need a connection wait for its outcome.
    HalfOpen,
    /// Recent connects all failed; checkouts that need a connection wait (up to
    /// `circuit_wait`) or fail.
    Open,
}

impl CircuitState {
    /// The value of the `steadypool_circuit_state` gauge: 0 closed, 1 half-open, 2 open.
    pub const fn gauge_value(self) -> f64 {
        match self {
            CircuitState::Closed => 0.0,
            CircuitState::HalfOpen => 1.0,
            CircuitState::Open => 2.0,
        }
    }

    /// A lower-case name, for logs.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::HalfOpen => "half_open",
            CircuitState::Open => "open",
        }
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A move of the circuit, for the pool's observer to report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CircuitEvent {
    /// The open period ended: this connect is the trial.
    HalfOpen,
    /// A connect succeeded after `failures` consecutive failed ones.
    Closed { failures: u32 },
    /// `failures` consecutive connects failed, the last with `cause`: checkouts that
    /// need a connection wait (or fail) for `retry_in`.
    Opened {
        cause: ResetCause,
        failures: u32,
        retry_in: Duration,
    },
}

/// Why the gate turned a connect away without dialing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Refusal {
    /// The cause of the last failed connect.
    pub(crate) cause: ResetCause,
    /// The last failed connect's error, as text: what the upstream actually said
    /// ("too many connections", a TLS failure, ...).
    pub(crate) last_error: Arc<str>,
    /// Consecutive failed connects so far.
    pub(crate) failures: u32,
    /// Time until the next trial connect may start (zero while one is in flight).
    pub(crate) retry_in: Duration,
    /// Whether the last failed connect failed for a reason waiting cannot change
    /// ([`Classify::is_permanent`](crate::Classify::is_permanent)): a checkout does
    /// not wait for the next trial, it fails at once.
    pub(crate) permanent: bool,
}

/// The gate's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateConfig {
    /// The width after a failed connect and after the circuit closes, and at first.
    pub(crate) narrow: usize,
    /// The widest the gate grows while connects succeed; at least `narrow`.
    pub(crate) ceiling: usize,
    pub(crate) open_after: u32,
    /// The longest open period: the cap of the doubling schedule.
    pub(crate) open_for: Duration,
    /// The first open period after the circuit opens; each failed trial doubles it,
    /// up to `open_for`.
    pub(crate) first_open: Duration,
}

/// The first open period by default. An upstream that restarts is usually back within
/// a fraction of a second: a first trial tens of milliseconds after the circuit opens
/// finds it, and the doubling keeps a long outage down to a trial per `open_for`.
pub(crate) const FIRST_OPEN: Duration = Duration::from_millis(100);

/// The narrow width: two connects in flight while the upstream's health is unknown
/// or bad. One would serialize a pool's reconnects behind a slow handshake; more
/// would multiply a fleet's load on an upstream that is failing.
pub(crate) const NARROW: usize = 2;

/// The default ceiling of the width: a pool whose connects succeed reopens up to 16
/// connections at once (as many as a burst after an idle close usually needs),
/// without letting a large pool open hundreds of handshakes at the same moment.
pub(crate) const CEILING: usize = 16;

/// The narrow width and the ceiling for a pool's `max_concurrent_connects`: the
/// defaults when unset; when set, the value is the ceiling and bounds the narrow width.
pub(crate) fn widths(max_concurrent_connects: Option<usize>) -> (usize, usize) {
    match max_concurrent_connects {
        Some(connects) => (NARROW.min(connects), connects),
        None => (NARROW, CEILING),
    }
}

#[derive(Debug)]
enum Circuit {
    Closed,
    Open { until: Instant },
    HalfOpen,
}

#[derive(Debug)]
struct State {
    circuit: Circuit,
    failures: u32,
    last_cause: ResetCause,
    last_error: Arc<str>,
    /// Whether the last failed connect was permanent.
    last_permanent: bool,
    /// Trials that failed since the circuit last closed: the exponent of the next
    /// open period.
    failed_trials: u32,
    /// Connects allowed in flight now, from `narrow` to `ceiling`: the semaphore's
    /// free permits plus the permits tickets hold, less `owed`.
    width: usize,
    /// Permits held by tickets that must be forgotten, not returned, when they end:
    /// the part of a narrowing the free permits could not pay at once.
    owed: usize,
    /// Counts the narrowings. A connect that started before the last one does not
    /// widen the gate when it succeeds: its success says nothing about the failure
    /// that came after it started.
    narrowings: u64,
}

/// One pool's connect gate. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Semaphore,
    state: Mutex<State>,
    /// Wakes the checkouts parked on the circuit ([`Gate::enter_within`]) whenever it
    /// moves: closed, reopened after a failed trial, or a trial abandoned.
    moved: Notify,
    config: GateConfig,
}

impl Gate {
    pub(crate) fn new(config: GateConfig) -> Gate {
        Gate {
            permits: Semaphore::new(config.narrow),
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                failures: 0,
                last_cause: ResetCause::Other,
                last_error: Arc::from(""),
                last_permanent: false,
                failed_trials: 0,
                width: config.narrow,
                owed: 0,
                narrowings: 0,
            }),
            moved: Notify::new(),
            config,
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is a few plain fields updated in single statements: a panic
        // elsewhere cannot leave it half-written, so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The circuit's state now.
    pub(crate) fn state(&self) -> CircuitState {
        match self.lock().circuit {
            Circuit::Closed => CircuitState::Closed,
            // Nothing moves the circuit on when the open period ends; the next connect
            // does. Until then it is half-open in all but name.
            Circuit::Open { until } if Instant::now() >= until => CircuitState::HalfOpen,
            Circuit::Open { .. } => CircuitState::Open,
            Circuit::HalfOpen => CircuitState::HalfOpen,
        }
    }

    /// Waits for the right to dial, or says why not to. A ticket for the trial
    /// connect that turned the circuit half-open says so ([`Ticket::is_trial`]).
    ///
    /// # Errors
    /// A [`Refusal`] while the circuit is open, or half-open with its trial in flight.
    pub(crate) async fn enter(&self) -> Result<Ticket<'_>, Refusal> {
        let trial = self.admit()?;
        let mut ticket = Ticket {
            gate: self,
            permit: None,
            trial,
            settled: false,
            narrowings: 0,
        };
        // Dropping `ticket` while waiting here (a cancelled checkout) hands a trial
        // back, so the circuit cannot stay half-open with nobody trying.
        let permit = match self.permits.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the gate's semaphore is never closed"),
        };
        ticket.permit = Some(permit);
        ticket.narrowings = self.admit_waiter(trial)?;
        Ok(ticket)
    }

    /// Like [`Gate::enter`], but a checkout the circuit turns away waits up to
    /// `patience` for it to let a connect through: it is woken when a trial succeeds
    /// (or fails, or is abandoned), and when the open period ends it may make the
    /// trial itself. Zero patience fails fast, and so does a circuit whose last
    /// failed connect was permanent: the next trial would most likely fail the same
    /// way, and its caller deserves the answer now rather than at the end of its
    /// patience.
    ///
    /// # Errors
    /// The last [`Refusal`] once `patience` has passed with the circuit still open,
    /// or at once when it says the last failure was permanent.
    pub(crate) async fn enter_within(&self, patience: Duration) -> Result<Ticket<'_>, Refusal> {
        let give_up = Instant::now() + patience;
        loop {
            // Created before the look at the circuit, so a move in between is not missed.
            let moved = self.moved.notified();
            let refusal = match self.enter().await {
                Ok(ticket) => return Ok(ticket),
                Err(refusal) => refusal,
            };
            let now = Instant::now();
            if now >= give_up || refusal.permanent {
                return Err(refusal);
            }
            // A zero `retry_in` is a trial in flight: its outcome moves the circuit.
            let wake = if refusal.retry_in.is_zero() {
                give_up
            } else {
                (now + refusal.retry_in).min(give_up)
            };
            tokio::select! {
                () = moved => {}
                () = tokio::time::sleep_until(wake) => {}
            }
        }
    }

    /// Decides at arrival: go ahead (as a trial or not) or fail fast.
    fn admit(&self) -> Result<bool, Refusal> {
        let mut state = self.lock();
        match state.circuit {
            Circuit::Closed => Ok(false),
            Circuit::HalfOpen => Err(refusal(&state, Duration::ZERO)),
            Circuit::Open { until } => {
                let now = Instant::now();
                if now < until {
                    return Err(refusal(&state, until - now));
                }
                state.circuit = Circuit::HalfOpen;
                Ok(true)
            }
        }
    }

    /// Decides once a permit is in hand, and returns the narrowings so far. The
    /// circuit may have opened while a connect waited for its permit: then it must
    /// not dial either. The trial dials whatever the circuit says: it is its trial.
    fn admit_waiter(&self, trial: bool) -> Result<u64, Refusal> {
        let state = self.lock();
        if trial {
            return Ok(state.narrowings);
        }
        match state.circuit {
            Circuit::Closed => Ok(state.narrowings),
            Circuit::HalfOpen => Err(refusal(&state, Duration::ZERO)),
            Circuit::Open { until } => Err(refusal(
                &state,
                until.saturating_duration_since(Instant::now()),
            )),
        }
    }

    /// A random open period between half and all of `first_open` doubled once per
    /// failed trial, capped at `open_for`.
    fn open_period(&self, failed_trials: u32) -> Duration {
        let doubled = self
            .config
            .first_open
            .saturating_mul(1u32.checked_shl(failed_trials).unwrap_or(u32::MAX));
        let period = doubled.min(self.config.open_for);
        period / 2 + (period / 2).mul_f64(fastrand::f64())
    }

    /// Narrows the width at once. Free permits are forgotten now; what they cannot
    /// pay is owed by the connects in flight, each of which forgets its permit when
    /// it ends, so no new connect starts until fewer than `narrow` are in flight.
    fn narrow(&self, state: &mut State) {
        state.narrowings = state.narrowings.wrapping_add(1);
        let excess = state.width.saturating_sub(self.config.narrow);
        state.width = self.config.narrow;
        if excess > 0 {
            let forgotten = self.permits.forget_permits(excess);
            state.owed += excess - forgotten;
        }
    }

    /// Widens by one, up to the ceiling, unless the gate narrowed since the connect
    /// that succeeded started.
    fn widen(&self, state: &mut State, narrowings: u64) {
        if narrowings != state.narrowings || state.width >= self.config.ceiling {
            return;
        }
        state.width += 1;
        if state.owed > 0 {
            state.owed -= 1;
        } else {
            self.permits.add_permits(1);
        }
    }

    /// Ends a ticket's hold on its permit: returned, or forgotten if a narrowing is
    /// still owed.
    fn release(&self, permit: SemaphorePermit<'_>) {
        let mut state = self.lock();
        let owed = state.owed > 0;
        if owed {
            state.owed -= 1;
        }
        drop(state);
        if owed {
            permit.forget();
        } else {
            drop(permit);
        }
    }

    fn succeeded(&self, narrowings: u64) -> Option<CircuitEvent> {
        let mut state = self.lock();
        let was = std::mem::replace(&mut state.circuit, Circuit::Closed);
        let failures = std::mem::take(&mut state.failures);
        state.failed_trials = 0;
        state.last_permanent = false;
        let moved = !matches!(was, Circuit::Closed);
        if moved {
            // The upstream just came back: a slow start from narrow.
            self.narrow(&mut state);
        } else {
            self.widen(&mut state, narrowings);
        }
        drop(state);
        if moved {
            self.moved.notify_waiters();
        }
        moved.then_some(CircuitEvent::Closed { failures })
    }

    fn failed(&self, failure: Failure<'_>, trial: bool) -> Option<CircuitEvent> {
        let error = Arc::from(failure.error.to_string());
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        state.last_cause = failure.cause;
        state.last_error = error;
        state.last_permanent = failure.permanent;
        self.narrow(&mut state);
        let open = match state.circuit {
            Circuit::HalfOpen => trial,
            Circuit::Closed => state.failures >= self.config.open_after,
            Circuit::Open { .. } => false,
        };
        if !open {
            drop(state);
            if failure.permanent {
                // Checkouts parked on the open circuit learn at once that the
                // upstream refuses for good, instead of at their next trial.
                self.moved.notify_waiters();
            }
            return None;
        }
        if trial {
            state.failed_trials = state.failed_trials.saturating_add(1);
        }
        let retry_in = self.open_period(state.failed_trials);
        state.circuit = Circuit::Open {
            until: Instant::now() + retry_in,
        };
        let failures = state.failures;
        drop(state);
        self.moved.notify_waiters();
        Some(CircuitEvent::Opened {
            cause: failure.cause,
            failures,
            retry_in,
        })
    }

    /// A trial that ended without an outcome (its checkout was dropped): let the next
    /// checkout try at once. No event: the circuit reads half-open again at once
    /// ([`Gate::state`]), as it did before this trial began.
    fn abandoned(&self) {
        let mut state = self.lock();
        if matches!(state.circuit, Circuit::HalfOpen) {
            state.circuit = Circuit::Open {
                until: Instant::now(),
            };
            drop(state);
            self.moved.notify_waiters();
        }
    }
}

fn refusal(state: &State, retry_in: Duration) -> Refusal {
    Refusal {
        cause: state.last_cause,
        last_error: Arc::clone(&state.last_error),
        failures: state.failures,
        retry_in,
        permanent: state.last_permanent,
    }
}

/// A failed connect, as the gate records it.
struct Failure<'e> {
    cause: ResetCause,
    error: &'e dyn fmt::Display,
    permanent: bool,
}

/// The right to dial once. Report the outcome with [`Ticket::succeeded`] or
/// [`Ticket::failed`], which return the circuit's move, if it moved; dropping it
/// unreported counts as neither.
pub(crate) struct Ticket<'g> {
    gate: &'g Gate,
    permit: Option<SemaphorePermit<'g>>,
    trial: bool,
    settled: bool,
    /// The gate's narrowings when this connect was admitted.
    narrowings: u64,
}

impl Ticket<'_> {
    /// Whether this connect is the trial that turned the circuit half-open.
    pub(crate) fn is_trial(&self) -> bool {
        self.trial
    }

    pub(crate) fn succeeded(mut self) -> Option<CircuitEvent> {
        self.settled = true;
        self.gate.succeeded(self.narrowings)
    }

    pub(crate) fn failed(
        mut self,
        cause: ResetCause,
        error: &dyn fmt::Display,
    ) -> Option<CircuitEvent> {
        self.settled = true;
        let failure = Failure {
            cause,
            error,
            permanent: false,
        };
        self.gate.failed(failure, self.trial)
    }

    /// Like [`Ticket::failed`], for a connect that failed for a reason waiting
    /// cannot change: checkouts waiting on the circuit are told at once.
    pub(crate) fn failed_for_good(
        mut self,
        cause: ResetCause,
        error: &dyn fmt::Display,
    ) -> Option<CircuitEvent> {
        self.settled = true;
        let failure = Failure {
            cause,
            error,
            permanent: true,
        };
        self.gate.failed(failure, self.trial)
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        if let Some(permit) = self.permit.take() {
            self.gate.release(permit);
        }
        if !self.settled && self.trial {
            self.gate.abandoned();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One connect through the gate that the upstream refused.
    async fn refuse_one_connect(gate: &Gate) {
        gate.enter()
            .await
            .unwrap()
            .failed(ResetCause::Refused, &"refused");
    }

    fn gate(open_after: u32) -> Gate {
        let config = GateConfig {
            narrow: 2,
            ceiling: 2,
            open_after,
            open_for: Duration::from_secs(10),
            // The fixed period these tests were written for; the doubling schedule
            // has tests of its own.
            first_open: Duration::from_secs(10),
        };
        Gate::new(config)
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_fails_fast_naming_the_cause() {
        let gate = gate(3);
        for _ in 0..2 {
            refuse_one_connect(&gate).await;
        }
        assert_eq!(gate.state(), CircuitState::Closed);
        refuse_one_connect(&gate).await;
        assert_eq!(gate.state(), CircuitState::Open);
        let refused = gate.enter().await.err().unwrap();
        assert_eq!(refused.cause, ResetCause::Refused);
        assert_eq!(refused.failures, 3);
        assert!(refused.retry_in >= Duration::from_secs(5));
        assert!(refused.retry_in <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn each_move_of_the_circuit_is_returned_once() {
        let gate = gate(2);
        let first = gate.enter().await.unwrap();
        assert!(!first.is_trial());
        assert_eq!(first.failed(ResetCause::Refused, &"refused"), None);
        let opened = gate
            .enter()
            .await
            .unwrap()
            .failed(ResetCause::Refused, &"refused");
        let Some(CircuitEvent::Opened {
            cause,
            failures,
            retry_in,
        }) = opened
        else {
            panic!("the second failure opens the circuit: {opened:?}");
        };
        assert_eq!((cause, failures), (ResetCause::Refused, 2));
        assert!(retry_in >= Duration::from_secs(5) && retry_in <= Duration::from_secs(10));
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = gate.enter().await.unwrap();
        assert!(
            trial.is_trial(),
            "the connect after the open period is the trial"
        );
        assert_eq!(
            trial.succeeded(),
            Some(CircuitEvent::Closed { failures: 2 })
        );
        let again = gate.enter().await.unwrap();
        assert!(!again.is_trial());
        assert_eq!(again.succeeded(), None, "a closed circuit does not move");
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let gate = gate(2);
        gate.enter()
            .await
            .unwrap()
            .failed(ResetCause::PeerReset, &"refused");
        gate.enter().await.unwrap().succeeded();
        gate.enter()
            .await
            .unwrap()
            .failed(ResetCause::PeerReset, &"refused");
        assert_eq!(gate.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_trial_through_and_closes_on_success() {
        let gate = gate(1);
        refuse_one_connect(&gate).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = gate.enter().await.unwrap();
        assert_eq!(gate.state(), CircuitState::HalfOpen);
        let other = gate.enter().await.err().unwrap();
        assert_eq!(other.retry_in, Duration::ZERO);
        trial.succeeded();
        assert_eq!(gate.state(), CircuitState::Closed);
        assert!(gate.enter().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_for_a_jittered_period() {
        let gate = gate(1);
        refuse_one_connect(&gate).await;
        let mut periods = Vec::new();
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(10)).await;
            gate.enter()
                .await
                .unwrap()
                .failed(ResetCause::ConnectTimeout, &"refused");
            assert_eq!(gate.state(), CircuitState::Open);
            periods.push(gate.enter().await.err().unwrap().retry_in);
        }
        assert!(
            periods
                .iter()
                .all(|p| *p >= Duration::from_secs(5) && *p <= Duration::from_secs(10))
        );
        periods.sort();
        periods.dedup();
        assert!(
            periods.len() > 10,
            "open periods are not jittered: {periods:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_trial_lets_the_next_checkout_try() {
        let gate = gate(1);
        refuse_one_connect(&gate).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(gate.enter().await.unwrap());
        assert_eq!(gate.state(), CircuitState::HalfOpen);
        assert!(gate.enter().await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_queued_behind_failures_do_not_dial_once_open() {
        let gate = gate(2);
        let first = gate.enter().await.unwrap();
        let second = gate.enter().await.unwrap();
        let mut third = Box::pin(gate.enter());
        assert!(futures_poll(&mut third).is_none(), "only two permits");
        first.failed(ResetCause::Refused, &"refused");
        second.failed(ResetCause::Refused, &"refused");
        assert_eq!(gate.state(), CircuitState::Open);
        let refused = third.await.err().unwrap();
        assert_eq!(refused.cause, ResetCause::Refused);
    }

    fn doubling_gate() -> Gate {
        Gate::new(GateConfig {
            narrow: 2,
            ceiling: 2,
            open_after: 1,
            open_for: Duration::from_millis(800),
            first_open: Duration::from_millis(25),
        })
    }

    #[tokio::test(start_paused = true)]
    async fn open_periods_start_short_and_double_to_the_cap_after_failed_trials() {
        let gate = doubling_gate();
        refuse_one_connect(&gate).await;
        let mut periods = vec![gate.enter().await.err().unwrap().retry_in];
        for _ in 0..8 {
            tokio::time::advance(Duration::from_secs(1)).await;
            let trial = gate.enter().await.unwrap();
            assert!(trial.is_trial());
            trial.failed(ResetCause::Refused, &"refused");
            periods.push(gate.enter().await.err().unwrap().retry_in);
        }
        for (n, period) in periods.iter().enumerate() {
            let full = Duration::from_millis(25 << n.min(5)).min(Duration::from_millis(800));
            assert!(
                *period >= full / 2 && *period <= full,
                "open period {n}: {period:?} outside {:?}..={full:?}",
                full / 2
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_restarts_the_schedule_from_the_first_period() {
        let gate = doubling_gate();
        refuse_one_connect(&gate).await;
        for _ in 0..6 {
            tokio::time::advance(Duration::from_secs(1)).await;
            refuse_one_connect(&gate).await;
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        gate.enter().await.unwrap().succeeded();
        refuse_one_connect(&gate).await;
        let retry_in = gate.enter().await.err().unwrap().retry_in;
        assert!(retry_in <= Duration::from_millis(25), "{retry_in:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn zero_patience_fails_fast() {
        let gate = doubling_gate();
        refuse_one_connect(&gate).await;
        let started = Instant::now();
        let refused = gate.enter_within(Duration::ZERO).await.err().unwrap();
        assert_eq!(refused.cause, ResetCause::Refused);
        assert_eq!(Instant::now(), started, "no wait at all");
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_checkout_makes_the_trial_when_the_open_period_ends() {
        let gate = doubling_gate();
        refuse_one_connect(&gate).await;
        let started = Instant::now();
        let ticket = gate.enter_within(Duration::from_secs(5)).await.unwrap();
        assert!(ticket.is_trial());
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(12) && waited <= Duration::from_millis(25),
            "waited {waited:?} for a first open period of 12.5 to 25 ms"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn parked_checkouts_are_woken_by_the_trials_success() {
        let gate = Gate::new(GateConfig {
            narrow: 4,
            ceiling: 4,
            open_after: 1,
            open_for: Duration::from_secs(10),
            first_open: Duration::from_secs(10),
        });
        refuse_one_connect(&gate).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = gate.enter().await.unwrap();
        assert!(trial.is_trial());
        let mut parked: Vec<_> = (0..3)
            .map(|_| Box::pin(gate.enter_within(Duration::from_secs(5))))
            .collect();
        for waiter in &mut parked {
            assert!(futures_poll(waiter).is_none(), "parked behind the trial");
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        for waiter in &mut parked {
            assert!(futures_poll(waiter).is_none(), "still parked: no news");
        }
        let succeeded_at = Instant::now();
        trial.succeeded();
        for waiter in parked {
            let ticket = waiter.await.unwrap();
            assert!(!ticket.is_trial());
        }
        assert_eq!(
            Instant::now(),
            succeeded_at,
            "woken at once, not by a timer"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_checkout_gives_up_after_its_patience_with_the_last_refusal() {
        let gate = doubling_gate();
        refuse_one_connect(&gate).await;
        let started = Instant::now();
        // Every trial the waiter makes fails: it keeps waiting until its patience ends.
        let patience = Duration::from_millis(500);
        let mut dials = 0;
        let refused = loop {
            match gate
                .enter_within(patience.saturating_sub(started.elapsed()))
                .await
            {
                Ok(ticket) => {
                    dials += 1;
                    ticket.failed(ResetCause::ConnectTimeout, &"timed out");
                }
                Err(refusal) => break refusal,
            }
        };
        assert_eq!(refused.cause, ResetCause::ConnectTimeout);
        assert_eq!(started.elapsed(), patience);
        assert!(
            (4..=5).contains(&dials),
            "{dials} trials in 500 ms on a doubling schedule from 25 ms"
        );
    }

    /// One connect through the gate that failed for good.
    async fn refuse_one_for_good(gate: &Gate) {
        gate.enter()
            .await
            .unwrap()
            .failed_for_good(ResetCause::Other, &"invalid peer certificate");
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failures_open_the_circuit_after_the_same_count() {
        let gate = gate(3);
        for _ in 0..2 {
            refuse_one_for_good(&gate).await;
            assert_eq!(gate.state(), CircuitState::Closed, "still dialing");
        }
        refuse_one_for_good(&gate).await;
        assert_eq!(gate.state(), CircuitState::Open);
        let refused = gate.enter().await.err().unwrap();
        assert!(refused.permanent);
        assert_eq!(refused.failures, 3);
        assert!(refused.last_error.contains("invalid peer certificate"));
        assert!(
            refused.retry_in >= Duration::from_secs(5),
            "the open period is the usual one: {:?}",
            refused.retry_in
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_waiting_checkout_behind_a_permanent_failure_fails_at_once() {
        let gate = doubling_gate();
        refuse_one_for_good(&gate).await;
        let started = Instant::now();
        let refused = gate
            .enter_within(Duration::from_secs(5))
            .await
            .err()
            .unwrap();
        assert!(refused.permanent);
        assert_eq!(Instant::now(), started, "no wait for the next trial");
    }

    #[tokio::test(start_paused = true)]
    async fn parked_checkouts_are_told_at_once_when_the_trial_fails_for_good() {
        let gate = Gate::new(GateConfig {
            narrow: 4,
            ceiling: 4,
            open_after: 1,
            open_for: Duration::from_secs(10),
            first_open: Duration::from_secs(10),
        });
        refuse_one_connect(&gate).await;
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = gate.enter().await.unwrap();
        assert!(trial.is_trial());
        let mut parked: Vec<_> = (0..3)
            .map(|_| Box::pin(gate.enter_within(Duration::from_secs(30))))
            .collect();
        for waiter in &mut parked {
            assert!(futures_poll(waiter).is_none(), "parked behind the trial");
        }
        let failed_at = Instant::now();
        trial.failed_for_good(ResetCause::Other, &"password authentication failed");
        for waiter in parked {
            let refused = waiter.await.err().unwrap();
            assert!(refused.permanent);
            assert!(refused.last_error.contains("password"));
        }
        assert_eq!(
            Instant::now(),
            failed_at,
            "told at once, not at the next trial"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_failure_of_a_connect_already_in_flight_wakes_the_parked() {
        let gate = gate(1);
        let first = gate.enter().await.unwrap();
        let second = gate.enter().await.unwrap();
        first.failed(ResetCause::Refused, &"refused");
        assert_eq!(gate.state(), CircuitState::Open);
        let mut parked = Box::pin(gate.enter_within(Duration::from_secs(30)));
        assert!(futures_poll(&mut parked).is_none(), "waits for the trial");
        second.failed_for_good(ResetCause::Other, &"invalid peer certificate");
        assert_eq!(gate.state(), CircuitState::Open, "the open period stands");
        let refused = futures_poll(&mut parked)
            .expect("woken by the permanent failure")
            .err()
            .unwrap();
        assert!(refused.permanent);
    }

    #[tokio::test(start_paused = true)]
    async fn a_passing_failure_or_a_success_after_a_permanent_one_brings_waiting_back() {
        let gate = doubling_gate();
        refuse_one_for_good(&gate).await;
        tokio::time::advance(Duration::from_secs(1)).await;
        let trial = gate.enter().await.unwrap();
        trial.failed(ResetCause::Refused, &"refused");
        let ticket = gate.enter_within(Duration::from_secs(5)).await.unwrap();
        assert!(ticket.is_trial(), "waited for the next trial");
        ticket.succeeded();
        refuse_one_connect(&gate).await;
        let refused = gate.enter().await.err().unwrap();
        assert!(
            !refused.permanent,
            "a success forgets the permanent failure"
        );
    }

    /// A gate with the pool's default width (2 to 16) and the circuit as configured.
    fn widening_gate(open_after: u32) -> Gate {
        Gate::new(GateConfig {
            narrow: NARROW,
            ceiling: CEILING,
            open_after,
            open_for: Duration::from_secs(10),
            first_open: Duration::from_secs(10),
        })
    }

    /// A ticket if the gate admits one without waiting. Outside tokio's cooperative
    /// budget, which would otherwise answer "wait" after a long run of admissions.
    fn enter_now(gate: &Gate) -> Option<Ticket<'_>> {
        futures_poll(&mut Box::pin(tokio::task::unconstrained(gate.enter())))
            .map(|entered| entered.unwrap())
    }

    /// How many connects the gate lets through at once now: tickets are taken until
    /// one has to wait, then all are dropped unreported, which moves nothing.
    fn admitted_at_once(gate: &Gate) -> usize {
        let mut held = Vec::new();
        loop {
            let mut next = Box::pin(tokio::task::unconstrained(gate.enter()));
            match futures_poll(&mut next) {
                Some(ticket) => held.push(ticket.unwrap()),
                None => return held.len(),
            }
        }
    }

    /// `n` connects through the gate, one after the other, that succeed.
    async fn succeed(gate: &Gate, n: usize) {
        for _ in 0..n {
            gate.enter().await.unwrap().succeeded();
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_width_grows_by_one_per_success_up_to_the_ceiling_and_stays() {
        let gate = widening_gate(3);
        assert_eq!(
            admitted_at_once(&gate),
            NARROW,
            "narrow while nothing is known"
        );
        succeed(&gate, 1).await;
        assert_eq!(admitted_at_once(&gate), NARROW + 1);
        succeed(&gate, 5).await;
        assert_eq!(admitted_at_once(&gate), NARROW + 6);
        succeed(&gate, 100).await;
        assert_eq!(admitted_at_once(&gate), CEILING);
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(admitted_at_once(&gate), CEILING, "still wide after idling");
    }

    #[tokio::test(start_paused = true)]
    async fn a_failure_narrows_at_once_and_connects_in_flight_hold_the_new_starts() {
        let gate = widening_gate(u32::MAX);
        succeed(&gate, CEILING).await;
        let mut in_flight: Vec<_> = (0..CEILING).map(|_| enter_now(&gate).unwrap()).collect();
        let failed = in_flight.pop().unwrap();
        assert_eq!(failed.failed(ResetCause::Refused, &"refused"), None);
        // Fifteen started before the failure are still in flight: nothing new starts
        // until fewer than the narrow width are.
        let mut waiting = Box::pin(tokio::task::unconstrained(gate.enter()));
        while in_flight.len() > NARROW {
            assert!(futures_poll(&mut waiting).is_none(), "{}", in_flight.len());
            // Their successes do not widen the gate again: they began before the failure.
            in_flight.pop().unwrap().succeeded();
        }
        assert!(futures_poll(&mut waiting).is_none());
        drop(in_flight.pop());
        let next = futures_poll(&mut waiting).unwrap().unwrap();
        drop((next, in_flight));
        assert_eq!(admitted_at_once(&gate), NARROW);
        assert_eq!(gate.permits.available_permits(), NARROW, "no permit lost");
    }

    #[tokio::test(start_paused = true)]
    async fn the_width_starts_narrow_when_the_circuit_closes_after_a_trial() {
        let gate = widening_gate(3);
        succeed(&gate, CEILING).await;
        for _ in 0..3 {
            refuse_one_connect(&gate).await;
        }
        assert_eq!(gate.state(), CircuitState::Open);
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = gate.enter().await.unwrap();
        assert!(trial.is_trial());
        assert!(trial.succeeded().is_some());
        assert_eq!(
            admitted_at_once(&gate),
            NARROW,
            "a slow start after an outage"
        );
        succeed(&gate, 2).await;
        assert_eq!(admitted_at_once(&gate), NARROW + 2);
    }

    #[tokio::test(start_paused = true)]
    async fn an_explicit_max_concurrent_connects_is_never_exceeded() {
        for set in [1, 2, 4, 64] {
            let (narrow, ceiling) = widths(Some(set));
            assert_eq!(ceiling, set);
            let gate = Gate::new(GateConfig {
                narrow,
                ceiling,
                open_after: 3,
                open_for: Duration::from_secs(10),
                first_open: Duration::from_secs(10),
            });
            assert_eq!(narrow, NARROW.min(set));
            assert_eq!(admitted_at_once(&gate), narrow, "set to {set}");
            succeed(&gate, 200).await;
            assert_eq!(admitted_at_once(&gate), set, "set to {set}");
            refuse_one_connect(&gate).await;
            assert_eq!(admitted_at_once(&gate), narrow, "set to {set}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn cancelled_waiters_and_dropped_tickets_lose_no_permit_across_moves() {
        let gate = widening_gate(u32::MAX);
        succeed(&gate, 6).await;
        let width = NARROW + 6;
        let mut held: Vec<_> = (0..width).map(|_| enter_now(&gate).unwrap()).collect();
        let mut waiters: Vec<_> = (0..10)
            .map(|_| Box::pin(tokio::task::unconstrained(gate.enter())))
            .collect();
        for waiter in &mut waiters {
            assert!(futures_poll(waiter).is_none());
        }
        // Half the waiters give up, a connect fails (narrowing while the others
        // wait), two finish unreported, then the rest of the waiters give up too.
        waiters.truncate(5);
        held.pop().unwrap().failed(ResetCause::Refused, &"refused");
        held.truncate(held.len() - 2);
        drop(waiters);
        drop(held);
        assert_eq!(gate.permits.available_permits(), NARROW);
        assert_eq!(admitted_at_once(&gate), NARROW);
        // And growing again pays back every permit.
        succeed(&gate, 100).await;
        assert_eq!(gate.permits.available_permits(), CEILING);
        assert_eq!(admitted_at_once(&gate), CEILING);
    }

    fn futures_poll<F: std::future::Future + Unpin>(fut: &mut F) -> Option<F::Output> {
        let waker = std::task::Waker::noop();
        let mut cx = std::task::Context::from_waker(waker);
        match std::pin::Pin::new(fut).poll(&mut cx) {
            std::task::Poll::Ready(out) => Some(out),
            std::task::Poll::Pending => None,
        }
    }
}
