//! The connect gate: how many connects may be in flight, and when to stop connecting.
//!
//! When an upstream goes down, every task that needs a connection would otherwise dial
//! it, fail, and dial again: thousands of refused connects a second across a fleet, and
//! a stampede of handshakes the moment it comes back. The gate puts two limits on a
//! pool's connects:
//!
//! * **At most [`max_concurrent_connects`](crate::PoolBuilder::max_concurrent_connects)
//!   in flight.** Further connects wait their turn (inside `get()`'s `wait_timeout`).
//! * **A circuit.** After [`circuit_open_after`](crate::PoolBuilder::circuit_open_after)
//!   consecutive failed connects the circuit *opens*: [`Pool::get`](crate::Pool::get)
//!   calls that need a new connection fail at once with
//!   [`Error::CircuitOpen`](crate::Error::CircuitOpen), which names the last failure's
//!   cause, instead of dialing. Pooled connections that are still healthy keep being
//!   handed out. After a random time between half and all of
//!   [`circuit_open_for`](crate::PoolBuilder::circuit_open_for) the circuit turns
//!   *half-open*: the next checkout that needs a connection makes one trial connect
//!   while the others still fail fast. A successful trial *closes* the circuit; a
//!   failed one opens it again for another random period. The randomness keeps a
//!   fleet of pools from probing a recovering upstream in lock-step.
//!
//! Any successful connect closes the circuit. The state is in
//! [`Status::circuit`](crate::Status::circuit) and in the `steadypool_circuit_state`
//! gauge.
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use steadypool::{drivers::tcp::TcpManager, CircuitState, Error, Pool};
//!
//! let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
//!     .max_concurrent_connects(2)
//!     .circuit_open_after(3)
//!     .circuit_open_for(Duration::from_secs(1))
//!     .build()?;
//! match pool.get().await {
//!     Ok(conn) => drop(conn),
//!     Err(Error::CircuitOpen { cause, retry_in, .. }) => {
//!         eprintln!("upstream down ({cause}); next trial connect in {retry_in:?}");
//!         assert_eq!(pool.status().circuit, CircuitState::Open);
//!     }
//!     Err(other) => return Err(other.into()),
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use tokio::sync::{Semaphore, SemaphorePermit};
use tokio::time::Instant;

use crate::cause::ResetCause;
use crate::metrics::Recorder;

/// The state of a pool's connect circuit (see the [module docs](self)).
///
/// ```
/// use steadypool::CircuitState;
/// assert_eq!(CircuitState::Open.as_str(), "open");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum CircuitState {
    /// Connects go ahead (at most `max_concurrent_connects` at once).
    #[default]
    Closed,
    /// The open period is over: the next connect is a trial, and while it is in
    /// flight other checkouts that need a connection fail fast.
    HalfOpen,
    /// Recent connects all failed; checkouts that need a connection fail fast.
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
}

/// The gate's settings.
#[derive(Debug, Clone, Copy)]
pub(crate) struct GateConfig {
    pub(crate) max_concurrent_connects: usize,
    pub(crate) open_after: u32,
    pub(crate) open_for: Duration,
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
}

/// One pool's connect gate. See the [module docs](self).
#[derive(Debug)]
pub(crate) struct Gate {
    permits: Semaphore,
    state: Mutex<State>,
    config: GateConfig,
    pool: String,
}

impl Gate {
    pub(crate) fn new(config: GateConfig, pool: &str) -> Gate {
        Gate {
            permits: Semaphore::new(config.max_concurrent_connects),
            state: Mutex::new(State {
                circuit: Circuit::Closed,
                failures: 0,
                last_cause: ResetCause::Other,
                last_error: Arc::from(""),
            }),
            config,
            pool: pool.to_owned(),
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

    /// Waits for the right to dial, or says why not to.
    ///
    /// # Errors
    /// A [`Refusal`] while the circuit is open, or half-open with its trial in flight.
    pub(crate) async fn enter<'g>(&'g self, recorder: &'g Recorder) -> Result<Ticket<'g>, Refusal> {
        let trial = self.admit(recorder)?;
        let mut ticket = Ticket {
            gate: self,
            permit: None,
            trial,
            recorder,
            settled: false,
        };
        // Dropping `ticket` while waiting here (a cancelled checkout) hands a trial
        // back, so the circuit cannot stay half-open with nobody trying.
        let permit = match self.permits.acquire().await {
            Ok(permit) => permit,
            Err(_) => unreachable!("the gate's semaphore is never closed"),
        };
        ticket.permit = Some(permit);
        if !trial {
            // The circuit may have opened while this connect waited for a permit:
            // then it must not dial either.
            self.admit_waiter()?;
        }
        Ok(ticket)
    }

    /// Decides at arrival: go ahead (as a trial or not) or fail fast.
    fn admit(&self, recorder: &Recorder) -> Result<bool, Refusal> {
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
                drop(state);
                recorder.circuit_state(CircuitState::HalfOpen.gauge_value());
                tracing::debug!(pool = %self.pool, "connect circuit half-open: trial connect");
                Ok(true)
            }
        }
    }

    fn admit_waiter(&self) -> Result<(), Refusal> {
        let state = self.lock();
        match state.circuit {
            Circuit::Closed => Ok(()),
            Circuit::HalfOpen => Err(refusal(&state, Duration::ZERO)),
            Circuit::Open { until } => Err(refusal(
                &state,
                until.saturating_duration_since(Instant::now()),
            )),
        }
    }

    /// A random open period between half and all of `open_for`.
    fn open_period(&self) -> Duration {
        let open_for = self.config.open_for;
        open_for / 2 + (open_for / 2).mul_f64(fastrand::f64())
    }

    fn succeeded(&self, recorder: &Recorder) {
        let mut state = self.lock();
        let was = std::mem::replace(&mut state.circuit, Circuit::Closed);
        let failures = std::mem::take(&mut state.failures);
        drop(state);
        if !matches!(was, Circuit::Closed) {
            recorder.circuit_state(CircuitState::Closed.gauge_value());
            tracing::info!(
                pool = %self.pool,
                failures,
                "connect circuit closed: a connect succeeded",
            );
        }
    }

    fn failed(
        &self,
        cause: ResetCause,
        error: &dyn fmt::Display,
        trial: bool,
        recorder: &Recorder,
    ) {
        let error = Arc::from(error.to_string());
        let mut state = self.lock();
        state.failures = state.failures.saturating_add(1);
        state.last_cause = cause;
        state.last_error = error;
        let open = match state.circuit {
            Circuit::HalfOpen => trial,
            Circuit::Closed => state.failures >= self.config.open_after,
            Circuit::Open { .. } => false,
        };
        if !open {
            return;
        }
        let period = self.open_period();
        state.circuit = Circuit::Open {
            until: Instant::now() + period,
        };
        let failures = state.failures;
        drop(state);
        recorder.circuit_state(CircuitState::Open.gauge_value());
        tracing::warn!(
            pool = %self.pool,
            cause = cause.as_str(),
            failures,
            retry_in_secs = period.as_secs_f64(),
            "connect circuit open: the upstream keeps failing; checkouts that need a new \
             connection fail fast until a trial connect succeeds",
        );
    }

    /// A trial that ended without an outcome (its checkout was dropped): let the next
    /// checkout try at once.
    fn abandoned(&self, recorder: &Recorder) {
        let mut state = self.lock();
        if matches!(state.circuit, Circuit::HalfOpen) {
            state.circuit = Circuit::Open {
                until: Instant::now(),
            };
            drop(state);
            recorder.circuit_state(CircuitState::Open.gauge_value());
        }
    }
}

fn refusal(state: &State, retry_in: Duration) -> Refusal {
    Refusal {
        cause: state.last_cause,
        last_error: Arc::clone(&state.last_error),
        failures: state.failures,
        retry_in,
    }
}

/// The right to dial once. Report the outcome with [`Ticket::succeeded`] or
/// [`Ticket::failed`]; dropping it unreported counts as neither.
pub(crate) struct Ticket<'g> {
    gate: &'g Gate,
    permit: Option<SemaphorePermit<'g>>,
    trial: bool,
    recorder: &'g Recorder,
    settled: bool,
}

impl Ticket<'_> {
    pub(crate) fn succeeded(mut self) {
        self.settled = true;
        self.gate.succeeded(self.recorder);
    }

    pub(crate) fn failed(mut self, cause: ResetCause, error: &dyn fmt::Display) {
        self.settled = true;
        self.gate.failed(cause, error, self.trial, self.recorder);
    }
}

impl Drop for Ticket<'_> {
    fn drop(&mut self) {
        drop(self.permit.take());
        if !self.settled && self.trial {
            self.gate.abandoned(self.recorder);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(open_after: u32) -> (Gate, Recorder) {
        let config = GateConfig {
            max_concurrent_connects: 2,
            open_after,
            open_for: Duration::from_secs(10),
        };
        (Gate::new(config, "test"), Recorder::new("test"))
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_fails_fast_naming_the_cause() {
        let (gate, recorder) = gate(3);
        for _ in 0..2 {
            gate.enter(&recorder)
                .await
                .unwrap()
                .failed(ResetCause::Refused, &"refused");
        }
        assert_eq!(gate.state(), CircuitState::Closed);
        gate.enter(&recorder)
            .await
            .unwrap()
            .failed(ResetCause::Refused, &"refused");
        assert_eq!(gate.state(), CircuitState::Open);
        let refused = gate.enter(&recorder).await.err().unwrap();
        assert_eq!(refused.cause, ResetCause::Refused);
        assert_eq!(refused.failures, 3);
        assert!(refused.retry_in >= Duration::from_secs(5));
        assert!(refused.retry_in <= Duration::from_secs(10));
    }

    #[tokio::test(start_paused = true)]
    async fn a_success_resets_the_count() {
        let (gate, recorder) = gate(2);
        gate.enter(&recorder)
            .await
            .unwrap()
            .failed(ResetCause::PeerReset, &"refused");
        gate.enter(&recorder).await.unwrap().succeeded();
        gate.enter(&recorder)
            .await
            .unwrap()
            .failed(ResetCause::PeerReset, &"refused");
        assert_eq!(gate.state(), CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn half_open_lets_one_trial_through_and_closes_on_success() {
        let (gate, recorder) = gate(1);
        gate.enter(&recorder)
            .await
            .unwrap()
            .failed(ResetCause::Refused, &"refused");
        tokio::time::advance(Duration::from_secs(10)).await;
        let trial = gate.enter(&recorder).await.unwrap();
        assert_eq!(gate.state(), CircuitState::HalfOpen);
        let other = gate.enter(&recorder).await.err().unwrap();
        assert_eq!(other.retry_in, Duration::ZERO);
        trial.succeeded();
        assert_eq!(gate.state(), CircuitState::Closed);
        assert!(gate.enter(&recorder).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_trial_reopens_for_a_jittered_period() {
        let (gate, recorder) = gate(1);
        gate.enter(&recorder)
            .await
            .unwrap()
            .failed(ResetCause::Refused, &"refused");
        let mut periods = Vec::new();
        for _ in 0..20 {
            tokio::time::advance(Duration::from_secs(10)).await;
            gate.enter(&recorder)
                .await
                .unwrap()
                .failed(ResetCause::ConnectTimeout, &"refused");
            assert_eq!(gate.state(), CircuitState::Open);
            periods.push(gate.enter(&recorder).await.err().unwrap().retry_in);
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
        let (gate, recorder) = gate(1);
        gate.enter(&recorder)
            .await
            .unwrap()
            .failed(ResetCause::Refused, &"refused");
        tokio::time::advance(Duration::from_secs(10)).await;
        drop(gate.enter(&recorder).await.unwrap());
        assert_eq!(gate.state(), CircuitState::HalfOpen);
        assert!(gate.enter(&recorder).await.is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn waiters_queued_behind_failures_do_not_dial_once_open() {
        let (gate, recorder) = gate(2);
        let first = gate.enter(&recorder).await.unwrap();
        let second = gate.enter(&recorder).await.unwrap();
        let mut third = Box::pin(gate.enter(&recorder));
        assert!(futures_poll(&mut third).is_none(), "only two permits");
        first.failed(ResetCause::Refused, &"refused");
        second.failed(ResetCause::Refused, &"refused");
        assert_eq!(gate.state(), CircuitState::Open);
        let refused = third.await.err().unwrap();
        assert_eq!(refused.cause, ResetCause::Refused);
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
