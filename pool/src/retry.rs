//! Running an operation on a pooled connection, and reconnecting when it breaks.
//!
//! [`Pool::run`], [`Pool::run_idempotent`] and [`Pool::run_with`] check out a
//! connection, hand it to your closure, and look at the error if there is one
//! ([`Classify`]). When the connection broke they discard it (counted with its
//! cause) and, when that is safe, try again on another connection.
//!
//! # Retry rules
//!
//! * **An idempotent operation** (running it twice does no harm: a read, a `SET` to a
//!   fixed value, an upsert keyed by a request id) is retried whenever the connection
//!   broke. Use [`Pool::run_idempotent`].
//! * **Any other operation** is retried only when the request provably never reached
//!   the server: no connection could be opened, or the manager's error says
//!   [`Sent::No`]. If the connection broke after the request may have been sent, the
//!   operation is **never replayed**: you get [`RunError::MaybeExecuted`] with reason
//!   [`GiveUp::NotIdempotent`] and the cause. This is what [`Pool::run`] does.
//! * **A transient error** (the server is busy; the connection is fine) is retried
//!   after a backoff, for both kinds: the server refused the work, it did not run it.
//! * **An application error** (the server answered "no") is returned as it is, at once,
//!   as [`RunError::Operation`], and the connection goes back to the pool.
//! * **No connection at all** because the pool is closed, exhausted past
//!   `wait_timeout`, or its [connect circuit](crate::breaker) is open: returned at
//!   once, with reason [`GiveUp::NoConnection`]. Failing fast is the point of the
//!   circuit.
//!
//! Every retry is bounded three ways, by the [`RetryPolicy`]: a number of attempts,
//! an overall deadline (which also bounds the operation itself; one still running at
//! the deadline is cancelled and its connection discarded), and the pool's **retry
//! budget**: retries may be at most `ratio` x the requests of the last 10 seconds,
//! plus `floor`. During a hard outage the budget runs out and each request fails after
//! its first attempt, instead of every request turning into several (the way a fixed
//! retry count triples the load on a struggling upstream).
//!
//! # Did it run?
//!
//! Every failure says whether the request may have taken effect, in its type:
//!
//! | error | meaning | what to do |
//! |---|---|---|
//! | [`RunError::Operation`] | the server answered with an error | what that error says |
//! | [`RunError::MaybeExecuted`] | an attempt may have reached the server: it may have taken effect, once | find out (by a request id, a read) before redoing it |
//! | [`RunError::NotExecuted`] | no attempt reached the server: nothing took effect | safe to try again later |
//!
//! Once an attempt may have sent the request (its connection broke with
//! [`Sent::Maybe`], or the deadline cut the operation while it ran), every way the
//! run can end is [`RunError::MaybeExecuted`], whatever stopped it: the deadline, the
//! budget, the attempts, a failed connect or a closed pool on a later attempt. Only a
//! run whose every attempt failed before sending (failed connects, [`Sent::No`],
//! transient refusals) or got no connection at all ends in
//! [`RunError::NotExecuted`]. [`RunError::reason`] says why retrying stopped.
//!
//! **Backoff.** The first retry after a pooled connection that turned out to be stale
//! (the peer closed or reset it while it sat idle, and the checkout probe could not
//! see it yet) happens at once: the upstream is fine, only that socket was dead.
//! Every other retry waits, and every wait is random: the `n`-th is drawn from
//! `[d, 2d)` where `d` doubles from the backoff base up to half the cap, so no wait
//! exceeds the cap and even capped waits are spread out. Waits that would pass the
//! deadline are not started.
//!
//! A closure that panics: its connection is discarded (never returned half-used),
//! the panic goes on to the caller, and the pool stays consistent. The same holds for
//! a `run` future dropped half-way.
//!
//! Each `run` is a tracing span `run` with fields `pool`, `idempotent`, `attempt` and
//! `conn` (the connection id). Each call that returns counts once in
//! `steadypool_runs_total{outcome}` (`ok`, `operation_error`, `maybe_executed`,
//! `not_executed`); each one that hit a failure it weighed retrying also counts once
//! in `steadypool_retries_total{cause, outcome}` (a transient failure has cause
//! `other`). A `run` future dropped before it returned counts in neither.
//!
//! # The operation
//!
//! The operation is an async closure, `async |conn| { ... }`, called once per attempt
//! with the attempt's connection (any [`AsyncFnMut`] does: an `async fn` taking
//! `&mut M::Connection` can be passed by name). It borrows what it captures, so
//! nothing needs cloning per attempt, and it may change its captures between
//! attempts. It returns the manager's error, or your own error type with
//! [`Pool::run_with_error`].
//!
//! `run` is `Send`, and can be spawned, whenever the operation's future is. One
//! limit of the compiler (rust-lang/rust#138207): in a spawned task, a closure that
//! captures a *reference* to the task's own data is rejected with "implementation of
//! `Send` is not general enough". Move the data into the closure instead, with
//! `async move |conn|`: each attempt still only borrows it.
//!
//! ```no_run
//! # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>) {
//! use tokio::io::AsyncWriteExt;
//! let request = b"SET greeting hello\n".to_vec();
//! let task = tokio::spawn(async move {
//!     pool.run_idempotent(async move |conn| conn.write_all(&request).await)
//!         .await
//! });
//! # drop(task); }
//! ```
//!
//! ```no_run
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use steadypool::{drivers::tcp::TcpManager, Pool, RunError};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).build()?;
//!
//! // A read: safe to run twice, so it is retried on any broken connection.
//! let reply = pool
//!     .run_idempotent(async |conn| {
//!         conn.write_all(b"GET balance\n").await?;
//!         let mut buf = [0u8; 64];
//!         let n = conn.read(&mut buf).await?;
//!         Ok(buf[..n].to_vec())
//!     })
//!     .await?;
//!
//! // A payment: never replayed once it may have reached the server.
//! let amount = 10;
//! match pool
//!     .run(async |conn| conn.write_all(format!("PAY {amount}\n").as_bytes()).await)
//!     .await
//! {
//!     Ok(()) => {}
//!     Err(RunError::MaybeExecuted { reason, cause, .. }) => {
//!         eprintln!("{reason} ({cause:?}): the payment may have run; look it up before paying again");
//!     }
//!     Err(RunError::NotExecuted { reason, .. }) => {
//!         eprintln!("{reason}: the payment did not run; safe to try again later");
//!     }
//!     Err(other) => return Err(other.into()),
//! }
//! # drop(reply); Ok(()) }
//! ```

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tokio::time::Instant;
use tracing::Instrument;

use crate::cause::{Classify, Disposition, Eviction, ResetCause, Sent};
use crate::manager::Manager;
use crate::metrics::{RetryOutcome, RunOutcome};
use crate::pool::{Connection, Error, Pool};

/// The boxed future operations used to return, before [`Pool::run`] took async
/// closures.
///
/// A named function returning it still works as an operation; a closure returning
/// it does not infer its argument's type any more. Write `async |conn| { ... }`
/// instead of `|conn| Box::pin(async move { ... })`.
#[deprecated(
    since = "0.1.0",
    note = "operations are async closures now: write `async |conn| { ... }`"
)]
pub type OperationFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

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

/// How hard [`Pool::run`] and friends try: attempts, deadline, backoff, retry budget.
/// Set it with [`PoolBuilder::retry_policy`](crate::PoolBuilder::retry_policy).
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
    max_attempts: u32,
    deadline: Duration,
    backoff_base: Duration,
    backoff_cap: Duration,
    jitter_seed: Option<u64>,
    budget_ratio: f64,
    budget_floor: u32,
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
    /// double from `base` and are drawn at random, never above `cap`.
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

/// Why retrying stopped: the `reason` of [`RunError::MaybeExecuted`] and
/// [`RunError::NotExecuted`].
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
    /// [`RunError::MaybeExecuted`].
    NotIdempotent,
    /// No connection could be had: the pool is closed, stayed exhausted past
    /// `wait_timeout`, or its [connect circuit](crate::breaker) is open. Not retried.
    NoConnection,
}

impl fmt::Display for GiveUp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            GiveUp::Attempts => "attempts exhausted",
            GiveUp::Deadline => "deadline passed",
            GiveUp::Budget => "retry budget spent",
            GiveUp::NotIdempotent => "not idempotent, so not replayed",
            GiveUp::NoConnection => "no connection to be had",
        })
    }
}

/// What went wrong in one attempt: the operation's error or the checkout's.
///
/// ```
/// use std::io;
/// use steadypool::AttemptError;
/// let last: AttemptError<io::Error> = AttemptError::Checkout(steadypool::Error::Closed);
/// assert_eq!(last.to_string(), "the pool is closed");
/// ```
#[derive(Debug, thiserror::Error)]
pub enum AttemptError<E: StdError + 'static> {
    /// The operation returned this error.
    #[error(transparent)]
    Operation(E),
    /// No connection could be had.
    #[error(transparent)]
    Checkout(Error<E>),
}

/// Why [`Pool::run`] (or a sibling) failed, and whether the request may have taken
/// effect. Each failure has exactly one shape; see [Did it run?](crate::retry#did-it-run).
///
/// `cause` and `source` describe the last failure that ended an attempt with an error
/// (a broken connection, a failed connect, a transient refusal, or the checkout that
/// found no connection); both are `None` when no attempt ended that way (the deadline
/// cut the first attempt short).
///
/// ```
/// use std::io;
/// use steadypool::{AttemptError, GiveUp, ResetCause, RunError};
///
/// fn explain(err: &RunError<io::Error>) -> String {
///     match err {
///         RunError::Operation(e) => format!("the server said no: {e}"),
///         RunError::MaybeExecuted { reason, .. } => {
///             format!("{reason}; it may have run: check before redoing it")
///         }
///         RunError::NotExecuted { reason: GiveUp::Budget, .. } => {
///             "upstream struggling; shed load".into()
///         }
///         RunError::NotExecuted { reason, .. } => format!("{reason}; it did not run"),
///         // Anything this crate may add later: assume the worst.
///         other => format!("it may have run: {other}"),
///     }
/// }
///
/// let err = RunError::MaybeExecuted {
///     reason: GiveUp::NotIdempotent,
///     attempts: 1,
///     cause: Some(ResetCause::PeerReset),
///     source: Some(AttemptError::Operation(io::ErrorKind::ConnectionReset.into())),
/// };
/// assert!(err.may_have_executed());
/// assert_eq!(err.cause(), Some(ResetCause::PeerReset));
/// assert!(explain(&err).contains("may have run"));
/// assert!(err.to_string().contains("may have taken effect"), "{err}");
///
/// let closed: RunError<io::Error> = RunError::NotExecuted {
///     reason: GiveUp::NoConnection,
///     attempts: 1,
///     cause: None,
///     source: Some(AttemptError::Checkout(steadypool::Error::Closed)),
/// };
/// assert!(!closed.may_have_executed());
/// assert!(closed.to_string().contains("did not reach the server"), "{closed}");
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum RunError<E: StdError + 'static> {
    /// The server answered with the operation's own error (the connection was fine
    /// and went back to the pool). Never retried.
    #[error(transparent)]
    Operation(E),
    /// The request may have reached the server, and may or may not have taken
    /// effect: an attempt's connection broke after it may have been sent, or the
    /// deadline cut the operation while it ran. Find out before running it again.
    #[error(
        "gave up after {attempts} attempt(s) ({reason}; last cause: {}): \
         the request may have reached the server and may have taken effect",
        cause_text(.cause)
    )]
    MaybeExecuted {
        /// Why retrying stopped.
        reason: GiveUp,
        /// Attempts made.
        attempts: u32,
        /// The last failure's reset cause; `None` when it had none (a transient
        /// refusal, a closed or exhausted pool) or no attempt ended with an error.
        cause: Option<ResetCause>,
        /// The last failed attempt's error; `None` when no attempt ended with one.
        #[source]
        source: Option<AttemptError<E>>,
    },
    /// The request provably never reached the server: no attempt sent it (connects
    /// failed, the manager's errors said [`Sent::No`], the server refused the work as
    /// transient, or no connection could be had). Nothing took effect: safe to try
    /// again later.
    #[error(
        "gave up after {attempts} attempt(s) ({reason}; last cause: {}): \
         the request did not reach the server and did not take effect",
        cause_text(.cause)
    )]
    NotExecuted {
        /// Why retrying stopped. Never [`GiveUp::NotIdempotent`].
        reason: GiveUp,
        /// Attempts made.
        attempts: u32,
        /// The last failure's reset cause; `None` when it had none (a transient
        /// refusal, a closed or exhausted pool) or no attempt ended with an error.
        cause: Option<ResetCause>,
        /// The last failed attempt's error; `None` when no attempt ended with one.
        #[source]
        source: Option<AttemptError<E>>,
    },
}

fn cause_text(cause: &Option<ResetCause>) -> &'static str {
    cause.map_or("none", ResetCause::as_str)
}

impl<E: StdError + 'static> RunError<E> {
    /// Whether the request may have taken effect on the server without the caller
    /// knowing: `true` for [`RunError::MaybeExecuted`] only.
    ///
    /// `false` for [`RunError::Operation`]: the server answered, so nothing is
    /// uncertain; whether the refused request changed anything is what its error says
    /// (an application error normally means it did not). One subtlety: after
    /// [`Pool::run_idempotent`] retried, an earlier attempt may also have run, which
    /// the caller declared harmless; the error is the last attempt's answer. A run
    /// with [`Pool::run`] never retries after an attempt that may have been sent, so
    /// its `Operation` error is the answer to the only attempt the server saw.
    ///
    /// ```
    /// use std::io;
    /// use steadypool::{GiveUp, RunError};
    /// let refused: RunError<io::Error> = RunError::Operation(io::Error::other("no such key"));
    /// assert!(!refused.may_have_executed());
    /// let cut: RunError<io::Error> = RunError::MaybeExecuted {
    ///     reason: GiveUp::Deadline,
    ///     attempts: 1,
    ///     cause: None,
    ///     source: None,
    /// };
    /// assert!(cut.may_have_executed());
    /// ```
    pub fn may_have_executed(&self) -> bool {
        matches!(self, RunError::MaybeExecuted { .. })
    }

    /// The reset cause behind the failure, if a connection broke or could not be made.
    ///
    /// ```
    /// use std::io;
    /// use steadypool::{GiveUp, ResetCause, RunError};
    /// let err: RunError<io::Error> = RunError::NotExecuted {
    ///     reason: GiveUp::Attempts,
    ///     attempts: 3,
    ///     cause: Some(ResetCause::Refused),
    ///     source: None,
    /// };
    /// assert_eq!(err.cause(), Some(ResetCause::Refused));
    /// assert_eq!(RunError::Operation(io::Error::other("no")).cause(), None);
    /// ```
    pub fn cause(&self) -> Option<ResetCause> {
        match self {
            RunError::Operation(_) => None,
            RunError::MaybeExecuted { cause, .. } | RunError::NotExecuted { cause, .. } => *cause,
        }
    }

    /// Why retrying stopped; `None` for [`RunError::Operation`], which is never
    /// retried.
    ///
    /// ```
    /// use std::io;
    /// use steadypool::{GiveUp, RunError};
    /// let err: RunError<io::Error> = RunError::NotExecuted {
    ///     reason: GiveUp::Budget,
    ///     attempts: 1,
    ///     cause: None,
    ///     source: None,
    /// };
    /// assert_eq!(err.reason(), Some(GiveUp::Budget));
    /// assert_eq!(RunError::Operation(io::Error::other("no")).reason(), None);
    /// ```
    pub fn reason(&self) -> Option<GiveUp> {
        match self {
            RunError::Operation(_) => None,
            RunError::MaybeExecuted { reason, .. } | RunError::NotExecuted { reason, .. } => {
                Some(*reason)
            }
        }
    }

    /// How many attempts were made; `None` for [`RunError::Operation`], which does
    /// not count them.
    ///
    /// ```
    /// use std::io;
    /// use steadypool::{GiveUp, RunError};
    /// let err: RunError<io::Error> = RunError::MaybeExecuted {
    ///     reason: GiveUp::Attempts,
    ///     attempts: 3,
    ///     cause: None,
    ///     source: None,
    /// };
    /// assert_eq!(err.attempts(), Some(3));
    /// assert_eq!(RunError::Operation(io::Error::other("no")).attempts(), None);
    /// ```
    pub fn attempts(&self) -> Option<u32> {
        match self {
            RunError::Operation(_) => None,
            RunError::MaybeExecuted { attempts, .. } | RunError::NotExecuted { attempts, .. } => {
                Some(*attempts)
            }
        }
    }

    /// The last failed attempt's error (the `source` field); `None` for
    /// [`RunError::Operation`], whose error is the operation's own.
    ///
    /// ```
    /// use std::io;
    /// use steadypool::{AttemptError, Error, GiveUp, RunError};
    /// let err: RunError<io::Error> = RunError::NotExecuted {
    ///     reason: GiveUp::NoConnection,
    ///     attempts: 1,
    ///     cause: None,
    ///     source: Some(AttemptError::Checkout(Error::Closed)),
    /// };
    /// assert!(matches!(err.attempt_error(), Some(AttemptError::Checkout(Error::Closed))));
    /// ```
    pub fn attempt_error(&self) -> Option<&AttemptError<E>> {
        match self {
            RunError::Operation(_) => None,
            RunError::MaybeExecuted { source, .. } | RunError::NotExecuted { source, .. } => {
                source.as_ref()
            }
        }
    }
}

/// The waits between attempts of one `run`. See the [module docs](self).
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

/// How long the budget remembers requests and retries.
const BUDGET_WINDOW_SECS: u64 = 10;

/// The pool's retry budget: a token bucket whose deposits expire. Each request
/// deposits `ratio` of a token, each retry withdraws one, `floor` tokens are always
/// there; what was deposited or withdrawn more than 10 s ago no longer counts. So
/// retries <= ratio x recent requests + floor, at every moment.
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    floor: f64,
    started: Instant,
    window: Mutex<[Second; BUDGET_WINDOW_SECS as usize]>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Second {
    at: u64,
    requests: u64,
    retries: u64,
}

impl Budget {
    pub(crate) fn new(ratio: f64, floor: u32) -> Budget {
        Budget {
            ratio,
            floor: f64::from(floor),
            started: Instant::now(),
            window: Mutex::new([Second::default(); BUDGET_WINDOW_SECS as usize]),
        }
    }

    fn with_current<R>(&self, f: impl FnOnce(&mut [Second], usize, u64) -> R) -> R {
        // The slots are plain counters: a panic elsewhere cannot leave them
        // half-updated, so a poisoned lock is still sound.
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        // Seconds are counted from 1, so a never-used slot (at 0) is never current.
        let now = Instant::now()
            .saturating_duration_since(self.started)
            .as_secs()
            + 1;
        let index = (now % BUDGET_WINDOW_SECS) as usize;
        if window[index].at != now {
            window[index] = Second {
                at: now,
                ..Second::default()
            };
        }
        f(&mut window[..], index, now)
    }

    /// Counts a request (a `run` call).
    pub(crate) fn deposit(&self) {
        self.with_current(|window, index, _| window[index].requests += 1);
    }

    /// Takes one retry from the budget, if there is one.
    pub(crate) fn withdraw(&self) -> bool {
        self.with_current(|window, index, now| {
            let recent = window
                .iter()
                .filter(|s| s.at + BUDGET_WINDOW_SECS > now && s.at > 0);
            let (requests, retries) =
                recent.fold((0u64, 0u64), |(q, r), s| (q + s.requests, r + s.retries));
            let allowed = self.ratio * requests as f64 + self.floor;
            if (retries + 1) as f64 <= allowed {
                window[index].retries += 1;
                true
            } else {
                false
            }
        })
    }
}

/// A pool's retry state: the budget and the counter that gives each run its own
/// jitter sequence.
#[derive(Debug)]
pub(crate) struct RetryState {
    pub(crate) budget: Budget,
    runs: AtomicU64,
}

impl RetryState {
    pub(crate) fn new(policy: &RetryPolicy) -> RetryState {
        RetryState {
            budget: Budget::new(policy.budget_ratio, policy.budget_floor),
            runs: AtomicU64::new(0),
        }
    }

    fn next_seed(&self, policy: &RetryPolicy) -> u64 {
        let run = self.runs.fetch_add(1, Ordering::Relaxed);
        match policy.jitter_seed {
            Some(seed) => seed ^ run.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            None => fastrand::u64(..),
        }
    }
}

/// A connection lent to an operation. Discarded, not returned, if the operation
/// does not finish: it panicked, or the `run` future was dropped or timed out, and
/// the connection may hold half a request or half a reply.
struct Lent<M: Manager> {
    conn: Option<Connection<M>>,
    /// How the discard is counted if the operation does not finish.
    unfinished: Eviction,
}

impl<M: Manager> Lent<M> {
    fn get(&mut self) -> &mut M::Connection {
        match &mut self.conn {
            Some(conn) => conn,
            None => unreachable!("a lent connection is only taken back once"),
        }
    }

    fn give_back(mut self) -> Connection<M> {
        match self.conn.take() {
            Some(conn) => conn,
            None => unreachable!("a lent connection is only taken back once"),
        }
    }
}

impl<M: Manager> Drop for Lent<M> {
    fn drop(&mut self) {
        if let Some(conn) = self.conn.take() {
            tracing::debug!(
                conn = conn.id(),
                "operation did not finish (it panicked, was cancelled or hit the deadline); \
                 its connection is discarded",
            );
            conn.discard(self.unfinished);
        }
    }
}

/// A failure that ended an attempt, kept to report it.
struct Failure<E: StdError + 'static> {
    cause: Option<ResetCause>,
    error: Option<AttemptError<E>>,
}

/// What one `run` carries from attempt to attempt.
struct Progress<E: StdError + 'static> {
    deadline: Instant,
    backoff: Backoff,
    attempt: u32,
    last: Option<Failure<E>>,
    /// Set once an attempt may have sent the request, and never cleared: from then on
    /// no error may claim that nothing ran.
    maybe_sent: bool,
    /// The `retries_total` cause of the last failure weighed for a retry; `None` while
    /// the run hit none (such a run is not a retry and counts only in `runs_total`).
    weighed: Option<ResetCause>,
}

impl<E: StdError + 'static> Progress<E> {
    /// The error that ends the run, reporting `failure`, or else the last one kept.
    fn give_up(&mut self, reason: GiveUp, failure: Option<Failure<E>>) -> RunError<E> {
        let (cause, source) = failure
            .or_else(|| self.last.take())
            .map_or((None, None), |f| (f.cause, f.error));
        let attempts = self.attempt;
        if self.maybe_sent {
            RunError::MaybeExecuted {
                reason,
                attempts,
                cause,
                source,
            }
        } else {
            RunError::NotExecuted {
                reason,
                attempts,
                cause,
                source,
            }
        }
    }
}

/// How a finished run counts in `runs_total`, and in `retries_total` if it hit a
/// failure it weighed retrying.
fn outcomes<T, E: StdError + 'static>(
    result: &Result<T, RunError<E>>,
) -> (RunOutcome, RetryOutcome) {
    match result {
        Ok(_) => (RunOutcome::Ok, RetryOutcome::Succeeded),
        // A later attempt reached the server and got its answer.
        Err(RunError::Operation(_)) => (RunOutcome::OperationError, RetryOutcome::Succeeded),
        Err(err) => {
            let run = if err.may_have_executed() {
                RunOutcome::MaybeExecuted
            } else {
                RunOutcome::NotExecuted
            };
            let retry = match err.reason() {
                Some(GiveUp::Budget) => RetryOutcome::BudgetSpent,
                Some(GiveUp::NotIdempotent) => RetryOutcome::NotSafe,
                _ => RetryOutcome::GaveUp,
            };
            (run, retry)
        }
    }
}

impl<M: Manager> Pool<M> {
    /// Runs an operation that must not run twice, retrying only when the request
    /// provably never reached the server. See the [retry rules](crate::retry).
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>) {
    /// use tokio::io::AsyncWriteExt;
    /// match pool
    ///     .run(async |conn| conn.write_all(b"INCR visits\n").await)
    ///     .await
    /// {
    ///     Ok(()) => {}
    ///     Err(err) if err.may_have_executed() => {
    ///         eprintln!("{err}: read the counter before sending it again");
    ///     }
    ///     Err(err) => eprintln!("{err}: the counter is unchanged"),
    /// }
    /// # }
    /// ```
    ///
    /// # Errors
    /// [`RunError::Operation`] with the operation's own error;
    /// [`RunError::MaybeExecuted`] once an attempt may have sent the request (its
    /// connection broke after sending: reason [`GiveUp::NotIdempotent`]; or the
    /// deadline cut it); [`RunError::NotExecuted`] when no attempt sent it.
    pub async fn run<T, F>(&self, op: F) -> Result<T, RunError<M::Error>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, M::Error>,
    {
        self.run_with(Idempotency::NotIdempotent, op).await
    }

    /// Runs an operation that may safely run more than once, retrying on any broken
    /// connection. See the [retry rules](crate::retry).
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    /// let value = pool
    ///     .run_idempotent(async |conn| {
    ///         conn.write_all(b"GET visits\n").await?;
    ///         let mut buf = [0u8; 8];
    ///         conn.read_exact(&mut buf).await?;
    ///         Ok(u64::from_be_bytes(buf))
    ///     })
    ///     .await?;
    /// # drop(value); Ok(()) }
    /// ```
    ///
    /// # Errors
    /// [`RunError::Operation`] with the operation's own error;
    /// [`RunError::MaybeExecuted`] when retrying stopped after an attempt may have
    /// sent the request; [`RunError::NotExecuted`] when no attempt sent it.
    pub async fn run_idempotent<T, F>(&self, op: F) -> Result<T, RunError<M::Error>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, M::Error>,
    {
        self.run_with(Idempotency::Idempotent, op).await
    }

    /// Runs an operation whose idempotency is known only at run time.
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>, is_read: bool) {
    /// use steadypool::Idempotency;
    /// use tokio::io::AsyncWriteExt;
    /// let kind = if is_read { Idempotency::Idempotent } else { Idempotency::NotIdempotent };
    /// let done = pool
    ///     .run_with(kind, async |conn| conn.write_all(b"...\n").await)
    ///     .await;
    /// # drop(done); }
    /// ```
    ///
    /// # Errors
    /// See [`Pool::run`] and [`Pool::run_idempotent`].
    pub async fn run_with<T, F>(
        &self,
        idempotency: Idempotency,
        op: F,
    ) -> Result<T, RunError<M::Error>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, M::Error>,
    {
        self.run_with_error(idempotency, op).await
    }

    /// [`Pool::run_with`], for an operation that returns its own error type `E`
    /// instead of the manager's: `?` then works on the driver's errors (through
    /// `E: From<M::Error>`) and on the application's own, and the [`RunError`] carries
    /// `E`. `E`'s [`Classify`] decides the retries, as the manager's error would; a
    /// failed connect reaches `E` through the same `From`.
    ///
    /// Name `E` in the closure's return type, since `?` alone cannot tell which error
    /// to convert into:
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>) -> Result<(), Box<dyn std::error::Error>> {
    /// use std::io;
    /// use steadypool::{Classify, Idempotency, RunError};
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// #[derive(Debug, thiserror::Error, Classify)]
    /// enum BankError {
    ///     #[error(transparent)]
    ///     #[classify(delegate)]
    ///     Io(#[from] io::Error),
    ///     #[error("insufficient funds")]
    ///     InsufficientFunds,
    /// }
    ///
    /// let result = pool
    ///     .run_with_error(Idempotency::NotIdempotent, async |conn| -> Result<_, BankError> {
    ///         conn.write_all(b"PAY 10\n").await?; // io::Error into BankError
    ///         let mut status = [0u8; 1];
    ///         conn.read_exact(&mut status).await?;
    ///         if status[0] == b'-' {
    ///             return Err(BankError::InsufficientFunds); // the server said no
    ///         }
    ///         Ok(())
    ///     })
    ///     .await;
    /// match result {
    ///     Err(RunError::Operation(BankError::InsufficientFunds)) => eprintln!("declined"),
    ///     other => other?,
    /// }
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// See [`Pool::run`] and [`Pool::run_idempotent`], with `E` in place of the
    /// manager's error.
    pub async fn run_with_error<T, E, F>(
        &self,
        idempotency: Idempotency,
        op: F,
    ) -> Result<T, RunError<E>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, E>,
        E: Classify + From<M::Error> + StdError + 'static,
    {
        let span = tracing::debug_span!(
            "run",
            pool = %self.core().config.name,
            idempotent = idempotency.is_idempotent(),
            attempt = tracing::field::Empty,
            conn = tracing::field::Empty,
        );
        self.attempts(idempotency, op, span.clone())
            .instrument(span)
            .await
    }

    async fn attempts<T, E, F>(
        &self,
        idempotency: Idempotency,
        op: F,
        span: tracing::Span,
    ) -> Result<T, RunError<E>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, E>,
        E: Classify + From<M::Error> + StdError + 'static,
    {
        let core = self.core();
        let policy = &core.config.retry;
        core.retry.budget.deposit();
        let mut progress = Progress {
            deadline: Instant::now() + policy.deadline,
            backoff: Backoff::new(
                policy.backoff_base,
                policy.backoff_cap,
                core.retry.next_seed(policy),
            ),
            attempt: 0,
            last: None,
            maybe_sent: false,
            weighed: None,
        };
        let result = self
            .attempt_until_done(idempotency, op, &span, &mut progress)
            .await;
        // The one place a run is counted: a run future dropped before this line
        // returned nothing to its caller, so it counts nothing.
        let (run, retry) = outcomes(&result);
        core.recorder.run(run);
        if let Some(cause) = progress.weighed {
            core.recorder.retry(cause, retry);
        }
        result
    }

    async fn attempt_until_done<T, E, F>(
        &self,
        idempotency: Idempotency,
        mut op: F,
        span: &tracing::Span,
        progress: &mut Progress<E>,
    ) -> Result<T, RunError<E>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, E>,
        E: Classify + From<M::Error> + StdError + 'static,
    {
        loop {
            progress.attempt += 1;
            span.record("attempt", progress.attempt);
            let conn = match tokio::time::timeout_at(progress.deadline, self.get()).await {
                Err(_) => return Err(progress.give_up(GiveUp::Deadline, None)),
                Ok(Ok(conn)) => conn,
                Ok(Err(err @ (Error::Connect { .. } | Error::ConnectTimeout(_)))) => {
                    // Not a single byte left: safe to retry whatever the operation.
                    let failure = Failure {
                        cause: err.cause(),
                        error: Some(AttemptError::Checkout(checkout_error(err))),
                    };
                    self.pause(progress, failure, false).await?;
                    continue;
                }
                Ok(Err(err)) => {
                    let failure = Failure {
                        cause: err.cause(),
                        error: Some(AttemptError::Checkout(checkout_error(err))),
                    };
                    return Err(progress.give_up(GiveUp::NoConnection, Some(failure)));
                }
            };
            span.record("conn", conn.id());
            let reused = conn.is_reused();
            let mut lent = Lent {
                conn: Some(conn),
                unfinished: Eviction::Cancelled,
            };
            let result = match tokio::time::timeout_at(progress.deadline, op(lent.get())).await {
                Ok(result) => result,
                Err(_) => {
                    // Cut while it ran: the request may be on the server already, and
                    // may even have run there.
                    lent.unfinished = Eviction::Deadline;
                    progress.maybe_sent = true;
                    return Err(progress.give_up(GiveUp::Deadline, None));
                }
            };
            let mut conn = lent.give_back();
            let err = match result {
                Ok(value) => return Ok(value),
                Err(err) => err,
            };
            match err.classify() {
                Disposition::Application => {
                    drop(conn);
                    return Err(RunError::Operation(err));
                }
                Disposition::Transient => {
                    drop(conn);
                    let failure = Failure {
                        cause: None,
                        error: Some(AttemptError::Operation(err)),
                    };
                    self.pause(progress, failure, false).await?;
                }
                Disposition::Broken { cause, sent } => {
                    conn.mark_broken(cause);
                    drop(conn);
                    let failure = Failure {
                        cause: Some(cause),
                        error: Some(AttemptError::Operation(err)),
                    };
                    if sent == Sent::Maybe {
                        progress.maybe_sent = true;
                        if !idempotency.is_idempotent() {
                            progress.weighed = Some(cause);
                            tracing::debug!(
                                attempt = progress.attempt,
                                cause = cause.as_str(),
                                reason = %GiveUp::NotIdempotent,
                                "not retrying",
                            );
                            return Err(progress.give_up(GiveUp::NotIdempotent, Some(failure)));
                        }
                    }
                    let stale = progress.attempt == 1 && reused && is_stale(cause);
                    self.pause(progress, failure, stale).await?;
                }
            }
        }
    }

    /// Decides whether another attempt may follow `failure`, and waits for it; the
    /// error that ends the run otherwise.
    async fn pause<E: StdError + 'static>(
        &self,
        progress: &mut Progress<E>,
        failure: Failure<E>,
        at_once: bool,
    ) -> Result<(), RunError<E>> {
        let core = self.core();
        let policy = &core.config.retry;
        let attempt = progress.attempt;
        let label = failure.cause.unwrap_or(ResetCause::Other);
        progress.weighed = Some(label);
        let mut wait = Duration::ZERO;
        let stop = if attempt >= policy.max_attempts {
            Some(GiveUp::Attempts)
        } else {
            if !at_once {
                wait = progress.backoff.next_wait();
            }
            if Instant::now() + wait >= progress.deadline {
                Some(GiveUp::Deadline)
            } else if !core.retry.budget.withdraw() {
                Some(GiveUp::Budget)
            } else {
                None
            }
        };
        if let Some(reason) = stop {
            tracing::debug!(attempt, cause = label.as_str(), %reason, "not retrying");
            return Err(progress.give_up(reason, Some(failure)));
        }
        tracing::debug!(
            attempt,
            cause = label.as_str(),
            wait_ms = wait.as_secs_f64() * 1000.0,
            "retrying",
        );
        progress.last = Some(failure);
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        Ok(())
    }
}

/// A checkout's error in the operation's error type: the manager's error a failed
/// connect carries becomes the operation's, the rest is unchanged.
fn checkout_error<A, B>(err: Error<A>) -> Error<B>
where
    A: StdError + 'static,
    B: From<A> + StdError + 'static,
{
    match err {
        Error::Timeout(waited) => Error::Timeout(waited),
        Error::Closed => Error::Closed,
        Error::Internal(what) => Error::Internal(what),
        Error::Connect { cause, source } => Error::Connect {
            cause,
            source: B::from(source),
        },
        Error::ConnectTimeout(waited) => Error::ConnectTimeout(waited),
        Error::CircuitOpen {
            cause,
            last_error,
            failures,
            retry_in,
        } => Error::CircuitOpen {
            cause,
            last_error,
            failures,
            retry_in,
        },
    }
}

/// Causes that, on a connection just taken from the pool, mean only that socket went
/// stale while it sat idle (the upstream itself answered it).
fn is_stale(cause: ResetCause) -> bool {
    matches!(
        cause,
        ResetCause::PeerClosed | ResetCause::PeerReset | ResetCause::BrokenPipe
    )
}

#[cfg(test)]
mod tests {
    use super::*;

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
    fn runs_of_a_seeded_policy_get_different_but_reproducible_seeds() {
        let policy = RetryPolicy::default().jitter_seed(42);
        let seeds =
            |state: &RetryState| (0..4).map(|_| state.next_seed(&policy)).collect::<Vec<_>>();
        let first = seeds(&RetryState::new(&policy));
        assert_eq!(first, seeds(&RetryState::new(&policy)));
        let mut unique = first.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), first.len());
    }

    #[tokio::test(start_paused = true)]
    async fn budget_allows_ratio_of_recent_requests_plus_floor() {
        let budget = Budget::new(0.5, 2);
        for _ in 0..10 {
            budget.deposit();
        }
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 7, "0.5 x 10 requests + 2");
        // Ten seconds later the old requests and retries no longer count.
        tokio::time::advance(Duration::from_secs(BUDGET_WINDOW_SECS)).await;
        let granted = (0..100).filter(|_| budget.withdraw()).count();
        assert_eq!(granted, 2, "only the floor is left");
    }

    #[tokio::test(start_paused = true)]
    async fn budget_counts_a_sliding_window() {
        let budget = Budget::new(1.0, 0);
        for _ in 0..4 {
            budget.deposit();
        }
        tokio::time::advance(Duration::from_secs(5)).await;
        for _ in 0..4 {
            budget.deposit();
        }
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 8);
        tokio::time::advance(Duration::from_secs(6)).await;
        // The first four requests aged out; the retries taken since still count.
        assert_eq!((0..100).filter(|_| budget.withdraw()).count(), 0);
    }

    fn progress(maybe_sent: bool) -> Progress<std::io::Error> {
        Progress {
            deadline: Instant::now(),
            backoff: Backoff::new(Duration::from_millis(1), Duration::from_millis(2), 0),
            attempt: 2,
            last: Some(Failure {
                cause: Some(ResetCause::Refused),
                error: None,
            }),
            maybe_sent,
            weighed: None,
        }
    }

    #[test]
    fn once_an_attempt_may_have_sent_every_give_up_says_it_may_have_run() {
        for reason in [
            GiveUp::Attempts,
            GiveUp::Deadline,
            GiveUp::Budget,
            GiveUp::NoConnection,
        ] {
            let err = progress(true).give_up(reason, None);
            assert!(
                matches!(
                    err,
                    RunError::MaybeExecuted {
                        reason: r,
                        attempts: 2,
                        cause: Some(ResetCause::Refused),
                        source: None,
                    } if r == reason
                ),
                "{err:?}"
            );
            assert!(err.may_have_executed());
            assert!(err.to_string().contains("may have taken effect"), "{err}");

            let err = progress(false).give_up(reason, None);
            assert!(
                matches!(err, RunError::NotExecuted { reason: r, attempts: 2, .. } if r == reason),
                "{err:?}"
            );
            assert!(!err.may_have_executed());
            assert!(
                err.to_string().contains("did not reach the server"),
                "{err}"
            );
        }
    }

    #[test]
    fn a_give_up_reports_the_failure_that_ended_it_before_the_last_one_kept() {
        let closed = Failure {
            cause: None,
            error: Some(AttemptError::Checkout(Error::Closed)),
        };
        let err = progress(false).give_up(GiveUp::NoConnection, Some(closed));
        assert!(
            matches!(
                err,
                RunError::NotExecuted {
                    cause: None,
                    source: Some(AttemptError::Checkout(Error::Closed)),
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn every_result_is_one_run_outcome_and_one_retry_outcome() {
        let failed = |maybe_sent: bool, reason| Err(progress(maybe_sent).give_up(reason, None));
        let cases: [(
            Result<(), RunError<std::io::Error>>,
            RunOutcome,
            RetryOutcome,
        ); 7] = [
            (Ok(()), RunOutcome::Ok, RetryOutcome::Succeeded),
            (
                Err(RunError::Operation(std::io::Error::other("no"))),
                RunOutcome::OperationError,
                RetryOutcome::Succeeded,
            ),
            (
                failed(true, GiveUp::NotIdempotent),
                RunOutcome::MaybeExecuted,
                RetryOutcome::NotSafe,
            ),
            (
                failed(true, GiveUp::Budget),
                RunOutcome::MaybeExecuted,
                RetryOutcome::BudgetSpent,
            ),
            (
                failed(false, GiveUp::Budget),
                RunOutcome::NotExecuted,
                RetryOutcome::BudgetSpent,
            ),
            (
                failed(true, GiveUp::Deadline),
                RunOutcome::MaybeExecuted,
                RetryOutcome::GaveUp,
            ),
            (
                failed(false, GiveUp::NoConnection),
                RunOutcome::NotExecuted,
                RetryOutcome::GaveUp,
            ),
        ];
        for (result, run, retry) in cases {
            assert_eq!(outcomes(&result), (run, retry), "{result:?}");
        }
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
