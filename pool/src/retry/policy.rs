//! The retry policy and the one decision every failed attempt goes through.
//!
//! [`decide`] is a pure function: from what ended an attempt, whether the operation
//! is idempotent, whether the request may have been sent, whether the connection was
//! reused, the attempt's number and the time left, it returns the next step: retry
//! after a wait, or stop with a reason. The run loop ([`super::run`]) only carries
//! out what it says, then asks the pool's retry budget. Nothing here touches the
//! pool, so the pool's own modules can hold a [`RetryPolicy`] without importing the
//! loop.

use std::fmt;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use crate::cause::{ResetCause, Sent};

/// Whether running an operation twice is harmless.
///
/// ```
/// use steadypool::Idempotency;
/// assert!(Idempotency::Idempotent.is_idempotent());
/// assert!(!Idempotency::NotIdempotent.is_idempotent());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Idempotency {
    /// Running it twice does no harm: retried whenever the connection broke.
    Idempotent,
    /// Running it twice could do harm: retried only when it provably never reached
    /// the server.
    NotIdempotent,
}

impl Idempotency {
    /// Whether this is [`Idempotency::Idempotent`].
    pub const fn is_idempotent(self) -> bool {
        matches!(self, Idempotency::Idempotent)
    }
}

/// How hard [`Pool::run`](crate::Pool::run) and friends try: attempts, deadline, backoff, retry budget.
/// Set it with [`PoolBuilder::retry_policy`](crate::PoolBuilder::retry_policy).
///
/// # Retry rules
///
/// * **An idempotent operation** (running it twice does no harm: a read, a `SET` to a
///   fixed value, an upsert keyed by a request id) is retried whenever the connection
///   broke. Use [`Pool::run_idempotent`](crate::Pool::run_idempotent).
/// * **Any other operation** is retried only when the request provably never reached
///   the server: no connection could be opened, or the manager's error says
///   [`Sent::No`](crate::Sent::No). If the connection broke after the request may have been sent, the
///   operation is **never replayed**: you get [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted) with reason
///   [`GiveUp::NotIdempotent`](crate::GiveUp::NotIdempotent) and the cause. This is what [`Pool::run`](crate::Pool::run) does.
/// * **A transient error** (the server is busy; the connection is fine) is retried
///   after a backoff, for both kinds: the server refused the work, it did not run it.
///   One whose [`Classify::transient_sent`](crate::Classify::transient_sent) says the
///   work may have run (a gateway's 502) counts as sent: retried only for an
///   idempotent operation.
/// * **An application error** (the server answered "no") is returned as it is, at once,
///   as [`RunError::Operation`](crate::RunError::Operation), and the connection goes back to the pool.
/// * **No connection at all** because the pool is closed, exhausted past
///   `wait_timeout`, or its [connect circuit](crate::CircuitState) stayed open through
///   [`circuit_wait`](crate::PoolBuilder::circuit_wait): returned at once, with reason
///   [`GiveUp::NoConnection`](crate::GiveUp::NoConnection). The checkout already waited
///   for the upstream as long as the pool allows; another attempt would only wait
///   again, and a hard outage must not pile up work.
/// * **A connect that failed for good** (the server's certificate does not verify,
///   it refused the credentials: the driver's error says so through
///   [`Classify::is_permanent`](crate::Classify::is_permanent)): returned at once,
///   with reason [`GiveUp::Permanent`](crate::GiveUp::Permanent) and the driver's
///   typed error as its source. Another attempt would meet the same refusal; the
///   caller should hear it now, not when its deadline ends.
///
/// Every retry is bounded three ways, by the the policy: a number of attempts,
/// an overall deadline (which also bounds the operation itself; one still running at
/// the deadline is cancelled and its connection discarded), and the pool's **retry
/// budget**: retries may be at most `ratio` x the requests of the last 10 seconds,
/// plus `floor`. During a hard outage the budget runs out and each request fails after
/// its first attempt, instead of every request turning into several (the way a fixed
/// retry count triples the load on a struggling upstream).
///
/// # Did it run?
///
/// Every failure says whether the request may have taken effect, in its type:
///
/// | error | meaning | what to do |
/// |---|---|---|
/// | [`RunError::Operation`](crate::RunError::Operation) | the server answered with an error | what that error says |
/// | [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted) | an attempt may have reached the server: it may have taken effect, once | find out (by a request id, a read) before redoing it |
/// | [`RunError::NotExecuted`](crate::RunError::NotExecuted) | no attempt reached the server: nothing took effect | safe to try again later |
///
/// Once an attempt may have sent the request (its connection broke with
/// [`Sent::Maybe`](crate::Sent::Maybe), a transient failure came after the work may
/// have run, or the deadline cut the operation while it ran), every way the
/// run can end is [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted), whatever stopped it: the deadline, the
/// budget, the attempts, a failed connect or a closed pool on a later attempt. Only a
/// run whose every attempt failed before sending (failed connects, [`Sent::No`](crate::Sent::No),
/// transient refusals) or got no connection at all ends in
/// [`RunError::NotExecuted`](crate::RunError::NotExecuted). [`RunError::reason`](crate::RunError::reason) says why retrying stopped.
///
/// **Backoff.** The first retry after a pooled connection that turned out to be stale
/// (the peer closed or reset it while it sat idle, and the checkout probe could not
/// see it yet) happens at once: the upstream is fine, only that socket was dead.
/// Every other retry waits, and every wait is random: the `n`-th is drawn from
/// `[d, 2d)` where `d` doubles from the backoff base up to half the cap, so no wait
/// exceeds the cap and even capped waits are spread out. Waits that would pass the
/// deadline are not started.
///
/// A closure that panics: its connection is discarded (never returned half-used),
/// the panic goes on to the caller, and the pool stays consistent. The same holds for
/// a `run` future dropped half-way.
///
/// Each `run` is a tracing span `run` with fields `pool`, `idempotent`, `attempt` and
/// `conn` (the connection id). Each call that returns counts once in
/// `steadypool_runs_total{outcome}` (`ok`, `operation_error`, `maybe_executed`,
/// `not_executed`); each one that hit a failure it weighed retrying also counts once
/// in `steadypool_retries_total{cause, outcome}` (a transient failure has cause
/// `other`). A `run` future dropped before it returned counts in neither.
///
/// # The operation
///
/// The operation is an async closure, `async |conn| { ... }`, called once per attempt
/// with the attempt's connection (any `AsyncFnMut` does: an `async fn` taking
/// `&mut M::Connection` can be passed by name). It borrows what it captures, so
/// nothing needs cloning per attempt, and it may change its captures between
/// attempts. It returns the manager's error, or your own error type with
/// [`Pool::run_with_error`](crate::Pool::run_with_error).
///
/// `run` is `Send`, and can be spawned, whenever the operation's future is. One
/// limit of the compiler (rust-lang/rust#138207): in a spawned task, a closure that
/// captures a *reference* to the task's own data is rejected with "implementation of
/// `Send` is not general enough". Move the data into the closure instead, with
/// `async move |conn|`: each attempt still only borrows it.
///
/// ```no_run
/// # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>) {
/// use tokio::io::AsyncWriteExt;
/// let request = b"SET greeting hello\n".to_vec();
/// let task = tokio::spawn(async move {
///     pool.run_idempotent(async move |conn| conn.write_all(&request).await)
///         .await
/// });
/// # drop(task); }
/// ```
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use steadypool::{drivers::tcp::TcpManager, Pool, RunError};
/// use tokio::io::{AsyncReadExt, AsyncWriteExt};
///
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).build()?;
///
/// // A read: safe to run twice, so it is retried on any broken connection.
/// let reply = pool
///     .run_idempotent(async |conn| {
///         conn.write_all(b"GET balance\n").await?;
///         let mut buf = [0u8; 64];
///         let n = conn.read(&mut buf).await?;
///         Ok(buf[..n].to_vec())
///     })
///     .await?;
///
/// // A payment: never replayed once it may have reached the server.
/// let amount = 10;
/// match pool
///     .run(async |conn| conn.write_all(format!("PAY {amount}\n").as_bytes()).await)
///     .await
/// {
///     Ok(()) => {}
///     Err(RunError::MaybeExecuted { reason, cause, .. }) => {
///         eprintln!("{reason} ({cause:?}): the payment may have run; look it up before paying again");
///     }
///     Err(RunError::NotExecuted { reason, .. }) => {
///         eprintln!("{reason}: the payment did not run; safe to try again later");
///     }
///     Err(other) => return Err(other.into()),
/// }
/// # drop(reply); Ok(()) }
/// ```
///
/// # Settings
///
/// | setting | default | prevents |
/// |---|---|---|
/// | [`max_attempts`](Self::max_attempts) | 3 | retrying forever |
/// | [`deadline`](Self::deadline) | 10 s | a request outliving its caller's patience; must be at least `connect_timeout` |
/// | [`backoff`](Self::backoff) | 50 ms base, 2 s cap | retries hammering a failing upstream, in lock-step with other clients |
/// | [`jitter_seed`](Self::jitter_seed) | random | (tests) irreproducible waits |
/// | [`budget`](Self::budget) | ratio 0.2, floor 10 | an outage multiplying the load (every request tried several times) |
///
/// ```
/// use std::time::Duration;
/// use steadypool::RetryPolicy;
///
/// let policy = RetryPolicy::default()
///     .max_attempts(5)
///     .deadline(Duration::from_secs(20))
///     .backoff(Duration::from_millis(20), Duration::from_secs(1))
///     .budget(0.1, 20);
/// assert!(policy.validate().is_ok());
/// assert!(RetryPolicy::default().max_attempts(0).validate().is_err());
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct RetryPolicy {
    pub(crate) max_attempts: u32,
    pub(crate) deadline: Duration,
    pub(crate) backoff_base: Duration,
    pub(crate) backoff_cap: Duration,
    pub(crate) jitter_seed: Option<u64>,
    pub(crate) budget_ratio: f64,
    pub(crate) budget_floor: u32,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            deadline: Duration::from_secs(10),
            backoff_base: Duration::from_millis(50),
            backoff_cap: Duration::from_secs(2),
            jitter_seed: None,
            budget_ratio: 0.2,
            budget_floor: 10,
        }
    }
}

impl RetryPolicy {
    /// Attempts in all, the first included: 1 never retries. Default 3.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// The longest one `run` may take, checkouts, waits and the operation itself
    /// included. Default 10 s. Must be at least the pool's `connect_timeout`, or a
    /// single slow connect could use it all.
    #[must_use]
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// The first wait (`base`) and the longest (`cap`). Default 50 ms and 2 s. Waits
    /// double from `base` and are drawn at random, never above `cap`: the first
    /// between `base` and twice `base`. A `base` above half of `cap` starts from
    /// half of `cap` instead, so that the random part stays below `cap`.
    #[must_use]
    pub fn backoff(mut self, base: Duration, cap: Duration) -> Self {
        self.backoff_base = base;
        self.backoff_cap = cap;
        self
    }

    /// Makes the random waits reproducible (for tests). Each `run` still gets its own
    /// sequence, derived from the seed and the order in which runs start. Default:
    /// a random seed.
    #[must_use]
    pub fn jitter_seed(mut self, seed: u64) -> Self {
        self.jitter_seed = Some(seed);
        self
    }

    /// The pool's retry budget: retries may be at most `ratio` x the requests started
    /// in the last 10 s, plus `floor` (which lets a quiet pool retry at all).
    /// Default 0.2 and 10: in an outage at most one request in five is retried.
    #[must_use]
    pub fn budget(mut self, ratio: f64, floor: u32) -> Self {
        self.budget_ratio = ratio;
        self.budget_floor = floor;
        self
    }

    /// Checks the settings that do not depend on the pool.
    ///
    /// # Errors
    /// A [`PolicyError`] naming the offending setting.
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.max_attempts == 0 {
            return Err(PolicyError::ZeroAttempts);
        }
        if self.deadline.is_zero() {
            return Err(PolicyError::ZeroDeadline);
        }
        if self.backoff_base.is_zero() {
            return Err(PolicyError::ZeroBackoff);
        }
        if self.backoff_cap < self.backoff_base {
            return Err(PolicyError::BackoffCapBelowBase {
                base: self.backoff_base,
                cap: self.backoff_cap,
            });
        }
        if !self.budget_ratio.is_finite() || self.budget_ratio < 0.0 {
            return Err(PolicyError::BudgetRatio {
                ratio: self.budget_ratio.to_string(),
            });
        }
        if self.budget_ratio == 0.0 && self.budget_floor == 0 {
            return Err(PolicyError::ZeroBudget);
        }
        Ok(())
    }

    /// [`RetryPolicy::validate`], plus the checks against the pool's connect timeout.
    pub(crate) fn validate_for(&self, connect_timeout: Duration) -> Result<(), PolicyError> {
        self.validate()?;
        if self.deadline < connect_timeout {
            return Err(PolicyError::DeadlineBelowConnectTimeout {
                deadline: self.deadline,
                connect_timeout,
            });
        }
        Ok(())
    }
}

/// Why a [`RetryPolicy`] was refused.
///
/// ```
/// use steadypool::{PolicyError, RetryPolicy};
/// let err = RetryPolicy::default().budget(0.0, 0).validate().unwrap_err();
/// assert_eq!(err, PolicyError::ZeroBudget);
/// println!("{err}"); // ... to turn retries off, set max_attempts(1)
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyError {
    /// `max_attempts` is 0: the operation could never run.
    #[error("max_attempts must be at least 1 (1 means: never retry)")]
    ZeroAttempts,
    /// The deadline is zero.
    #[error("the retry deadline must be greater than zero")]
    ZeroDeadline,
    /// The deadline is shorter than one connect may take.
    #[error(
        "the retry deadline ({deadline:?}) is shorter than connect_timeout ({connect_timeout:?}): \
         one slow connect could use it all; raise the deadline or lower connect_timeout"
    )]
    DeadlineBelowConnectTimeout {
        /// The policy's deadline.
        deadline: Duration,
        /// The pool's `connect_timeout`.
        connect_timeout: Duration,
    },
    /// The backoff base is zero: retries would not wait at all.
    #[error(
        "the backoff base must be greater than zero: retries without a pause hammer a failing upstream"
    )]
    ZeroBackoff,
    /// The backoff cap is below its base.
    #[error("the backoff cap ({cap:?}) must not be below its base ({base:?})")]
    BackoffCapBelowBase {
        /// The first wait.
        base: Duration,
        /// The longest wait.
        cap: Duration,
    },
    /// The budget ratio is negative or not a number.
    #[error("the retry budget ratio must be a finite number of at least 0, got {ratio}")]
    BudgetRatio {
        /// The ratio given.
        ratio: String,
    },
    /// Ratio and floor are both zero: no retry could ever run.
    #[error(
        "the retry budget is zero (ratio 0, floor 0): no retry could ever run; \
         to turn retries off, set max_attempts(1)"
    )]
    ZeroBudget,
}

/// Why retrying stopped: the `reason` of [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted) and
/// [`RunError::NotExecuted`](crate::RunError::NotExecuted).
///
/// ```
/// use steadypool::GiveUp;
/// assert_eq!(GiveUp::Budget.to_string(), "retry budget spent");
/// assert_eq!(GiveUp::NotIdempotent.to_string(), "not idempotent, so not replayed");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GiveUp {
    /// `max_attempts` were made.
    Attempts,
    /// The deadline passed (it may have cut the operation while it ran), or the next
    /// wait would have passed it.
    Deadline,
    /// The pool's retry budget was spent.
    Budget,
    /// The connection broke after the request may have been sent, and the operation
    /// is not idempotent, so it was not replayed. Only ever the reason of
    /// [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted).
    NotIdempotent,
    /// No connection could be had: the pool is closed, stayed exhausted past
    /// `wait_timeout`, or its [connect circuit](crate::CircuitState) stayed open through
    /// `circuit_wait`. Not retried.
    NoConnection,
    /// A connect failed for a reason waiting cannot change (the server's certificate
    /// does not verify, it refused the credentials: see
    /// [`Classify::is_permanent`](crate::Classify::is_permanent)). Not retried: the
    /// error is the caller's at once, with attempts and deadline left.
    ///
    /// ```
    /// use steadypool::GiveUp;
    /// assert_eq!(GiveUp::Permanent.to_string(), "the connect failed for good");
    /// ```
    Permanent,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GiveUp::Attempts => "attempts exhausted",
            GiveUp::Deadline => "deadline passed",
            GiveUp::Budget => "retry budget spent",
            GiveUp::NotIdempotent => "not idempotent, so not replayed",
            GiveUp::NoConnection => "no connection to be had",
            GiveUp::Permanent => "the connect failed for good",
        })
    }
}

/// What ended an attempt, as the retry decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failed {
    /// No connection could be opened (refused, timed out, the handshake failed):
    /// nothing was sent on it.
    Connect(ResetCause),
    /// No connection could be opened, for a reason another attempt would meet again
    /// (see [`Classify::is_permanent`](crate::Classify::is_permanent)); nothing was
    /// sent.
    Permanent(ResetCause),
    /// No connection to be had: the pool is closed, stayed exhausted past
    /// `wait_timeout`, or its connect circuit is open.
    NoConnection,
    /// The server turned the work down for now; the connection is fine. Nothing
    /// ran, unless a gateway answered after its upstream may have run it
    /// ([`Classify::transient_sent`](crate::Classify::transient_sent)).
    Transient {
        /// Whether the request may have run.
        sent: Sent,
    },
    /// The connection broke under the operation.
    Broken {
        /// Why it broke.
        cause: ResetCause,
        /// Whether the request may have reached the server.
        sent: Sent,
    },
    /// The deadline struck while the attempt was under way: during the checkout
    /// (nothing sent) or while the operation ran (it may have been sent).
    Cut {
        /// Whether the request may have reached the server.
        sent: Sent,
    },
}

impl Failed {
    /// Whether the request may have reached the server in this attempt: from then on
    /// no error of the run may claim that nothing ran.
    pub(crate) fn may_have_sent(self) -> bool {
        matches!(
            self,
            Failed::Broken {
                sent: Sent::Maybe,
                ..
            } | Failed::Cut { sent: Sent::Maybe }
                | Failed::Transient { sent: Sent::Maybe }
        )
    }

    /// The cause `retries_total` counts this failure with; `None` for a failure the
    /// run stops at without weighing a retry (no connection to be had, the deadline
    /// cut it).
    pub(crate) fn retry_cause(self) -> Option<ResetCause> {
        match self {
            Failed::Connect(cause) | Failed::Permanent(cause) | Failed::Broken { cause, .. } => {
                Some(cause)
            }
            Failed::Transient { .. } => Some(ResetCause::Other),
            Failed::NoConnection | Failed::Cut { .. } => None,
        }
    }
}

/// Everything the decision looks at about one failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Attempt {
    /// What ended it.
    pub(crate) failed: Failed,
    /// Whether running the operation twice is harmless.
    pub(crate) idempotency: Idempotency,
    /// Whether its connection had served an earlier checkout.
    pub(crate) reused: bool,
    /// Its number, the first attempt being 1.
    pub(crate) number: u32,
    /// Time left until the run's deadline.
    pub(crate) time_left: Duration,
}

/// What the run does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Another attempt, after this wait (if the budget grants a retry).
    Retry {
        /// Zero for a connection that went stale while it sat idle.
        wait: Duration,
    },
    /// No further attempt.
    Stop(GiveUp),
}

/// The retry rules of the [retry rules](RetryPolicy#retry-rules), in one place.
///
/// `next_wait` draws the next backoff wait; it is called only when a waiting retry
/// is possible, so a retry at once does not advance the backoff.
pub(crate) fn decide(
    policy: &RetryPolicy,
    attempt: Attempt,
    next_wait: impl FnOnce() -> Duration,
) -> Step {
    match attempt.failed {
        Failed::Cut { .. } => return Step::Stop(GiveUp::Deadline),
        Failed::NoConnection => return Step::Stop(GiveUp::NoConnection),
        Failed::Permanent(_) => return Step::Stop(GiveUp::Permanent),
        Failed::Broken {
            sent: Sent::Maybe, ..
        }
        | Failed::Transient { sent: Sent::Maybe }
            if !attempt.idempotency.is_idempotent() =>
        {
            return Step::Stop(GiveUp::NotIdempotent);
        }
        Failed::Connect(_) | Failed::Transient { .. } | Failed::Broken { .. } => {}
    }
    if attempt.number >= policy.max_attempts {
        return Step::Stop(GiveUp::Attempts);
    }
    let wait = if went_stale(attempt) {
        Duration::ZERO
    } else {
        next_wait()
    };
    if wait >= attempt.time_left {
        Step::Stop(GiveUp::Deadline)
    } else {
        Step::Retry { wait }
    }
}

/// A first attempt on a pooled connection that broke the way an idle socket goes
/// stale (the peer closed or reset it while it sat in the pool, before the probe
/// could see it): the upstream is fine, only that socket was dead, so the retry
/// need not wait.
fn went_stale(attempt: Attempt) -> bool {
    attempt.number == 1
        && attempt.reused
        && matches!(
            attempt.failed,
            Failed::Broken {
                cause: ResetCause::PeerClosed | ResetCause::PeerReset | ResetCause::BrokenPipe,
                ..
            }
        )
}

/// The waits between attempts of one `run`. See the [backoff rules](RetryPolicy#retry-rules).
///
/// backon's jitter adds up to one more delay on top of the delay (so a capped delay
/// could reach twice the cap); its exponential part is therefore capped at half the
/// cap, which keeps every wait at or below the cap and still random at the top.
#[derive(Debug)]
pub(crate) struct Backoff {
    waits: ExponentialBackoff,
    cap: Duration,
}

impl Backoff {
    pub(crate) fn new(base: Duration, cap: Duration, seed: u64) -> Backoff {
        let half_cap = cap / 2;
        let waits = ExponentialBuilder::new()
            .with_min_delay(base.min(half_cap))
            .with_max_delay(half_cap)
            .with_factor(2.0)
            .without_max_times()
            .with_jitter()
            // Always seeded: without backon's `std` feature an unseeded backoff uses one
            // fixed seed, which would put every pool's waits in lock-step.
            .with_jitter_seed(seed)
            .build();
        Backoff { waits, cap }
    }

    pub(crate) fn next_wait(&mut self) -> Duration {
        self.waits.next().unwrap_or(self.cap).min(self.cap)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One row of the decision table: what failed, idempotent?, reused?, attempt,
    /// time left (ms), the backoff's next wait (ms), and the step expected.
    type Row = (Failed, bool, bool, u32, u64, u64, Step);

    fn broken(cause: ResetCause, sent: Sent) -> Failed {
        Failed::Broken { cause, sent }
    }

    fn retry(ms: u64) -> Step {
        Step::Retry {
            wait: MS * ms as u32,
        }
    }

    #[test]
    fn the_decision_table() {
        use ResetCause::{
            BrokenPipe, ConnectTimeout, Other, PeerClosed, PeerReset, Refused, UserTimeout,
        };
        use Sent::{Maybe, No};
        let stop = Step::Stop;
        // failed                        idempotent reused attempt left_ms wait_ms  step
        #[rustfmt::skip]
        let rows: &[Row] = &[
            // A failed connect sent nothing: retried whatever the operation.
            (Failed::Connect(Refused),         false, false, 1, 1000, 50, retry(50)),
            (Failed::Connect(ConnectTimeout),  true,  false, 2, 1000, 90, retry(90)),
            (Failed::Connect(Refused),         false, false, 3, 1000, 50, stop(GiveUp::Attempts)),
            // No connection to be had: fail fast, whatever is left.
            (Failed::NoConnection,             true,  false, 1, 1000, 50, stop(GiveUp::NoConnection)),
            // A connect that failed for good: stop, with attempts and time left.
            (Failed::Permanent(Other),         true,  false, 1, 1000, 50, stop(GiveUp::Permanent)),
            (Failed::Permanent(Other),         false, false, 1, 1000, 50, stop(GiveUp::Permanent)),
            (Failed::Permanent(PeerReset),     true,  false, 2, 1000, 50, stop(GiveUp::Permanent)),
            (Failed::Permanent(Other),         true,  false, 3, 0,    50, stop(GiveUp::Permanent)),
            // A transient refusal ran nothing: retried after a wait, both kinds.
            (Failed::Transient { sent: No },   false, true,  1, 1000, 50, retry(50)),
            (Failed::Transient { sent: No },   true,  true,  1, 1000, 50, retry(50)),
            // A transient answer after the work may have run (a gateway's 502): as a
            // break after sending, never replayed unless idempotent.
            (Failed::Transient { sent: Maybe }, false, true, 1, 1000, 50, stop(GiveUp::NotIdempotent)),
            (Failed::Transient { sent: Maybe }, true,  true, 1, 1000, 50, retry(50)),
            (Failed::Transient { sent: Maybe }, true,  true, 3, 1000, 50, stop(GiveUp::Attempts)),
            // Broke after it may have been sent: never replayed unless idempotent.
            (broken(PeerReset, Maybe),         false, true,  1, 1000, 50, stop(GiveUp::NotIdempotent)),
            (broken(UserTimeout, Maybe),       false, false, 2, 1000, 50, stop(GiveUp::NotIdempotent)),
            (broken(UserTimeout, Maybe),       true,  false, 1, 1000, 50, retry(50)),
            // Provably not sent: retried even when not idempotent.
            (broken(PeerReset, No),            false, false, 1, 1000, 50, retry(50)),
            // A pooled connection gone stale: the first retry goes at once.
            (broken(PeerReset, Maybe),         true,  true,  1, 1000, 50, retry(0)),
            (broken(PeerClosed, No),           false, true,  1, 1000, 50, retry(0)),
            (broken(BrokenPipe, Maybe),        true,  true,  1, 1000, 50, retry(0)),
            // ... but not on a fresh connection, a later attempt, or another cause.
            (broken(PeerReset, Maybe),         true,  false, 1, 1000, 50, retry(50)),
            (broken(PeerReset, Maybe),         true,  true,  2, 1000, 50, retry(50)),
            (broken(UserTimeout, Maybe),       true,  true,  1, 1000, 50, retry(50)),
            // Attempts are counted before the deadline is weighed.
            (broken(PeerReset, Maybe),         true,  true,  3, 0,    50, stop(GiveUp::Attempts)),
            // A wait that would reach the deadline is not started.
            (Failed::Connect(Refused),         true,  false, 1, 50,   50, stop(GiveUp::Deadline)),
            (Failed::Connect(Refused),         true,  false, 1, 51,   50, retry(50)),
            (broken(PeerReset, Maybe),         true,  true,  1, 0,    50, stop(GiveUp::Deadline)),
            // Cut by the deadline: stop, sent or not.
            (Failed::Cut { sent: Maybe },      true,  true,  1, 1000, 50, stop(GiveUp::Deadline)),
            (Failed::Cut { sent: No },         true,  false, 1, 1000, 50, stop(GiveUp::Deadline)),
        ];
        let policy = RetryPolicy::default();
        assert_eq!(policy.max_attempts, 3, "the table assumes the default");
        for (i, &(failed, idempotent, reused, number, left_ms, wait_ms, expected)) in
            rows.iter().enumerate()
        {
            let attempt = Attempt {
                failed,
                idempotency: if idempotent {
                    Idempotency::Idempotent
                } else {
                    Idempotency::NotIdempotent
                },
                reused,
                number,
                time_left: MS * left_ms as u32,
            };
            let step = decide(&policy, attempt, || MS * wait_ms as u32);
            assert_eq!(step, expected, "row {i}: {attempt:?}");
        }
    }

    #[test]
    fn a_retry_at_once_leaves_the_backoff_where_it_was() {
        let attempt = Attempt {
            failed: broken(ResetCause::PeerReset, Sent::Maybe),
            idempotency: Idempotency::Idempotent,
            reused: true,
            number: 1,
            time_left: Duration::from_secs(1),
        };
        let mut drawn = false;
        let step = decide(&RetryPolicy::default(), attempt, || {
            drawn = true;
            MS
        });
        assert_eq!(
            step,
            Step::Retry {
                wait: Duration::ZERO
            }
        );
        assert!(!drawn, "a retry at once drew a backoff wait");
    }

    #[test]
    fn what_a_failure_says_about_sending_and_counting() {
        let rows = [
            (
                Failed::Connect(ResetCause::Refused),
                false,
                Some(ResetCause::Refused),
            ),
            (Failed::NoConnection, false, None),
            (
                Failed::Permanent(ResetCause::Other),
                false,
                Some(ResetCause::Other),
            ),
            (
                Failed::Transient { sent: Sent::No },
                false,
                Some(ResetCause::Other),
            ),
            (
                Failed::Transient { sent: Sent::Maybe },
                true,
                Some(ResetCause::Other),
            ),
            (
                broken(ResetCause::PeerReset, Sent::No),
                false,
                Some(ResetCause::PeerReset),
            ),
            (
                broken(ResetCause::PeerReset, Sent::Maybe),
                true,
                Some(ResetCause::PeerReset),
            ),
            (Failed::Cut { sent: Sent::No }, false, None),
            (Failed::Cut { sent: Sent::Maybe }, true, None),
        ];
        for (failed, sent, counted) in rows {
            assert_eq!(failed.may_have_sent(), sent, "{failed:?}");
            assert_eq!(failed.retry_cause(), counted, "{failed:?}");
        }
    }

    #[test]
    fn waits_grow_are_jittered_and_never_pass_the_cap() {
        let base = Duration::from_millis(10);
        let cap = Duration::from_millis(200);
        let mut all = Vec::new();
        for seed in 0..50 {
            let mut backoff = Backoff::new(base, cap, seed);
            let waits: Vec<Duration> = (0..12).map(|_| backoff.next_wait()).collect();
            assert!(waits.iter().all(|w| *w <= cap), "{waits:?}");
            assert!(waits[0] >= base && waits[0] < base * 2, "{waits:?}");
            assert!(waits[3] >= base * 8, "waits grow: {waits:?}");
            // At the top, still spread over [cap/2, cap].
            assert!(waits[11] >= cap / 2);
            all.push(waits[11]);
        }
        all.sort();
        all.dedup();
        assert!(all.len() > 25, "capped waits are not jittered: {all:?}");
    }

    #[test]
    fn a_seed_reproduces_the_waits() {
        let base = Duration::from_millis(5);
        let cap = Duration::from_secs(1);
        let waits = |seed| {
            let mut backoff = Backoff::new(base, cap, seed);
            (0..8).map(|_| backoff.next_wait()).collect::<Vec<_>>()
        };
        assert_eq!(waits(7), waits(7));
        assert_ne!(waits(7), waits(8));
    }

    #[test]
    fn bad_policies_are_refused_with_a_reason() {
        let ok = RetryPolicy::default();
        assert_eq!(ok.validate(), Ok(()));
        assert_eq!(
            ok.clone().max_attempts(0).validate(),
            Err(PolicyError::ZeroAttempts)
        );
        assert_eq!(
            ok.clone().budget(0.0, 0).validate(),
            Err(PolicyError::ZeroBudget)
        );
        assert!(matches!(
            ok.clone().budget(-0.1, 10).validate(),
            Err(PolicyError::BudgetRatio { .. })
        ));
        assert!(matches!(
            ok.clone().budget(f64::NAN, 10).validate(),
            Err(PolicyError::BudgetRatio { .. })
        ));
        assert_eq!(
            ok.clone()
                .backoff(Duration::ZERO, Duration::from_secs(1))
                .validate(),
            Err(PolicyError::ZeroBackoff)
        );
        assert!(matches!(
            ok.clone()
                .backoff(Duration::from_secs(2), Duration::from_secs(1))
                .validate(),
            Err(PolicyError::BackoffCapBelowBase { .. })
        ));
        let err = ok
            .clone()
            .deadline(Duration::from_secs(1))
            .validate_for(Duration::from_secs(5))
            .unwrap_err();
        assert!(
            err.to_string().contains("shorter than connect_timeout"),
            "{err}"
        );
    }
}
