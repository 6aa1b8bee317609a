//! Running an operation on a pooled connection, and reconnecting when it breaks.
//!
//! [`Pool::run`](crate::Pool::run), [`Pool::run_idempotent`](crate::Pool::run_idempotent) and [`Pool::run_with`](crate::Pool::run_with) check out a
//! connection, hand it to your closure, and look at the error if there is one
//! ([`Classify`](crate::Classify)(crate::Classify)). When the connection broke they discard it (counted with its
//! cause) and, when that is safe, try again on another connection.
//!
//! # Retry rules
//!
//! * **An idempotent operation** (running it twice does no harm: a read, a `SET` to a
//!   fixed value, an upsert keyed by a request id) is retried whenever the connection
//!   broke. Use [`Pool::run_idempotent`](crate::Pool::run_idempotent).
//! * **Any other operation** is retried only when the request provably never reached
//!   the server: no connection could be opened, or the manager's error says
//!   [`Sent::No`](crate::Sent::No). If the connection broke after the request may have been sent, the
//!   operation is **never replayed**: you get [`RunError::MaybeExecuted`] with reason
//!   [`GiveUp::NotIdempotent`] and the cause. This is what [`Pool::run`](crate::Pool::run) does.
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
//! [`Sent::Maybe`](crate::Sent::Maybe), or the deadline cut the operation while it ran), every way the
//! run can end is [`RunError::MaybeExecuted`], whatever stopped it: the deadline, the
//! budget, the attempts, a failed connect or a closed pool on a later attempt. Only a
//! run whose every attempt failed before sending (failed connects, [`Sent::No`](crate::Sent::No),
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
//! [`Pool::run_with_error`](crate::Pool::run_with_error).
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
//!
//! # Inside
//!
//! | module | owns |
//! |---|---|
//! | `policy` | [`RetryPolicy`], [`Idempotency`], [`GiveUp`], the backoff, and the one pure decision every failed attempt goes through |
//! | `budget` | the pool's retry budget |
//! | `run` | the attempt loop and [`Pool::run`](crate::Pool::run) with its siblings |
//! | `error` | [`RunError`] and [`AttemptError`] |

pub(crate) mod budget;
mod error;
pub(crate) mod policy;
mod run;

pub use self::error::{AttemptError, RunError};
pub use self::policy::{GiveUp, Idempotency, PolicyError, RetryPolicy};
#[allow(deprecated)] // kept so that code naming it gets the deprecation note, not an error
pub use self::run::OperationFuture;
