//! The attempt loop: check out, lend the connection to the operation, classify what
//! came back, ask [`decide`] for the next step and the budget for a retry, and hand
//! the outcome to the pool's observer once, where the loop exits.

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;

use tokio::time::Instant;
use tracing::Instrument;

use super::error::{AttemptError, RunError};
use super::policy::{Attempt, Backoff, Failed, GiveUp, Idempotency, Step, decide};
use crate::cause::{Classify, Disposition, Eviction, ResetCause, Sent};
use crate::manager::Manager;
use crate::metrics::{RetryOutcome, RunOutcome};
use crate::pool::{Connection, Error, Pool};

/// The boxed future operations used to return, before
/// [`Pool::run`](crate::Pool::run) took async closures.
///
/// A named function returning it still works as an operation; a closure returning
/// it does not infer its argument's type any more. Write `async |conn| { ... }`
/// instead of `|conn| Box::pin(async move { ... })`.
#[deprecated(
    since = "0.1.0",
    note = "operations are async closures now: write `async |conn| { ... }`"
)]
pub type OperationFuture<'c, T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send + 'c>>;

/// How one attempt ended.
enum Ending<T, E: StdError + 'static> {
    /// The operation succeeded.
    Done(T),
    /// The server answered with the operation's own error; the connection went back.
    Answered(E),
    /// A failure for the retry decision to weigh.
    Failed(Failure<E>),
}

/// A failed attempt: what the decision needs, and what the caller gets if it is the
/// last.
struct Failure<E: StdError + 'static> {
    failed: Failed,
    /// Whether the attempt's connection had served an earlier checkout.
    reused: bool,
    /// The reset cause reported with the error: the connection's, or the checkout's.
    cause: Option<ResetCause>,
    /// `None` when the deadline cut the attempt before it had an error to show.
    error: Option<AttemptError<E>>,
}

/// What one `run` carries from attempt to attempt.
struct Progress<E: StdError + 'static> {
    deadline: Instant,
    /// This run's jitter seed, drawn when it starts so that each run of a pool
    /// gets its own sequence whether or not it retries.
    seed: u64,
    /// Built at the first retry: most runs never wait, and a boxed backoff keeps the
    /// run's future small for all of them.
    backoff: Option<Box<Backoff>>,
    attempt: u32,
    /// The last failure that came with an error, for the caller.
    last: Option<(Option<ResetCause>, AttemptError<E>)>,
    /// Set once an attempt may have sent the request, and never cleared: from then on
    /// no error may claim that nothing ran.
    maybe_sent: bool,
    /// The `retries_total` cause of the last failure weighed for a retry; `None` while
    /// the run hit none (such a run is not a retry and counts only in `runs_total`).
    weighed: Option<ResetCause>,
}

impl<E: StdError + 'static> Progress<E> {
    /// Takes note of a failed attempt, and returns what the decision needs of it.
    fn note(&mut self, failure: Failure<E>) -> (Failed, bool) {
        self.maybe_sent |= failure.failed.may_have_sent();
        if let Some(cause) = failure.failed.retry_cause() {
            self.weighed = Some(cause);
        }
        if let Some(error) = failure.error {
            self.last = Some((failure.cause, error));
        }
        (failure.failed, failure.reused)
    }

    /// The error that ends the run, reporting the last failure that had one.
    fn give_up(&mut self, reason: GiveUp) -> RunError<E> {
        let (cause, source) = self
            .last
            .take()
            .map_or((None, None), |(cause, error)| (cause, Some(error)));
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
    /// provably never reached the server. See the [retry rules](crate::RetryPolicy#retry-rules).
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
    /// connection. See the [retry rules](crate::RetryPolicy#retry-rules).
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
    /// `E`. `E`'s [`Classify`](crate::Classify) decides the retries, as the manager's error would; a
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
        let span = self.run_span(idempotency);
        let attempts_span = span.clone();
        // The attempts' future is made inside the block, not moved into it: a future
        // the block captured and then awaited would take its space in the block twice.
        async move {
            let (value, mut conn) = self.attempts(idempotency, op, attempts_span).await?;
            conn.finish_exchange();
            drop(conn);
            Ok(value)
        }
        .instrument(span)
        .await
    }

    /// [`Pool::run_with_error`], keeping the connection of the attempt that
    /// succeeded: it comes back with its exchange still open, for a reply whose rest
    /// its holder reads later (an HTTP response body). The holder calls
    /// `Connection::finish_exchange` once the reply was read to its end; dropped
    /// before, the connection is closed and counted as `cancelled`.
    #[cfg(feature = "http")]
    pub(crate) async fn run_keeping<T, E, F>(
        &self,
        idempotency: Idempotency,
        op: F,
    ) -> Result<(T, Connection<M>), RunError<E>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, E>,
        E: Classify + From<M::Error> + StdError + 'static,
    {
        let span = self.run_span(idempotency);
        self.attempts(idempotency, op, span.clone())
            .instrument(span)
            .await
    }

    fn run_span(&self, idempotency: Idempotency) -> tracing::Span {
        tracing::debug_span!(
            "run",
            pool = %self.core().observer.name(),
            idempotent = idempotency.is_idempotent(),
            attempt = tracing::field::Empty,
            conn = tracing::field::Empty,
        )
    }

    async fn attempts<T, E, F>(
        &self,
        idempotency: Idempotency,
        mut op: F,
        span: tracing::Span,
    ) -> Result<(T, Connection<M>), RunError<E>>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, E>,
        E: Classify + From<M::Error> + StdError + 'static,
    {
        let core = self.core();
        let policy = &core.config.retry;
        core.retry.budget.deposit();
        let mut progress = Progress {
            deadline: Instant::now() + policy.deadline,
            seed: core.retry.next_seed(policy),
            backoff: None,
            attempt: 0,
            last: None,
            maybe_sent: false,
            weighed: None,
        };
        let result = loop {
            progress.attempt += 1;
            span.record("attempt", progress.attempt);
            let failure = match self.attempt(&mut op, progress.deadline, &span).await {
                Ending::Done(value) => break Ok(value),
                Ending::Answered(err) => break Err(RunError::Operation(err)),
                Ending::Failed(failure) => failure,
            };
            let (failed, reused) = progress.note(failure);
            let attempt = Attempt {
                failed,
                idempotency,
                reused,
                number: progress.attempt,
                time_left: progress.deadline.saturating_duration_since(Instant::now()),
            };
            let cause = failed.retry_cause().unwrap_or(ResetCause::Other);
            let next_wait = || {
                progress
                    .backoff
                    .get_or_insert_with(|| {
                        Box::new(Backoff::new(
                            policy.backoff_base,
                            policy.backoff_cap,
                            progress.seed,
                        ))
                    })
                    .next_wait()
            };
            let step = match decide(policy, attempt, next_wait) {
                Step::Retry { .. } if !core.retry.budget.withdraw() => Step::Stop(GiveUp::Budget),
                step => step,
            };
            let wait = match step {
                Step::Retry { wait } => {
                    core.observer.retrying(progress.attempt, cause, wait);
                    wait
                }
                Step::Stop(reason) => {
                    core.observer.not_retrying(progress.attempt, cause, &reason);
                    break Err(progress.give_up(reason));
                }
            };
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        };
        // The one place a run is counted: a run future dropped before this line
        // returned nothing to its caller, so it counts nothing.
        let (run, retry) = outcomes(&result);
        core.observer
            .run_finished(run, progress.weighed.map(|cause| (cause, retry)));
        result
    }

    /// One attempt: a checkout, then the operation on the connection it lends.
    ///
    /// The connection is lent as an open [`Exchange`](crate::Exchange): if the
    /// operation does not finish (it panics, or the `run` future is dropped), the
    /// connection is closed as `cancelled`, never returned with half a request or
    /// half a reply in it. After a success the exchange is still open: the caller
    /// finishes it, or hands the connection on with the rest of the reply.
    async fn attempt<T, E, F>(
        &self,
        op: &mut F,
        deadline: Instant,
        span: &tracing::Span,
    ) -> Ending<(T, Connection<M>), E>
    where
        F: AsyncFnMut(&mut M::Connection) -> Result<T, E>,
        E: Classify + From<M::Error> + StdError + 'static,
    {
        let mut conn = match tokio::time::timeout_at(deadline, self.get()).await {
            Ok(Ok(conn)) => conn,
            Ok(Err(err)) => return Ending::Failed(self.checkout_failure(err)),
            Err(_) => {
                return Ending::Failed(Failure {
                    failed: Failed::Cut { sent: Sent::No },
                    reused: false,
                    cause: None,
                    error: None,
                });
            }
        };
        span.record("conn", conn.id());
        let reused = conn.is_reused();
        let mut exchange = conn.exchange();
        let Ok(result) = tokio::time::timeout_at(deadline, op(&mut exchange)).await else {
            // Cut while it ran: the request may be on the server already, and may
            // even have run there; a reply may still be on its way.
            conn.discard(Eviction::Deadline);
            return Ending::Failed(Failure {
                failed: Failed::Cut { sent: Sent::Maybe },
                reused,
                cause: None,
                error: None,
            });
        };
        let err = match result {
            Ok(value) => return Ending::Done((value, conn)),
            Err(err) => err,
        };
        exchange.finish();
        let (failed, cause) = match err.classify() {
            Disposition::Application => return Ending::Answered(err),
            Disposition::Transient => (
                Failed::Transient {
                    sent: err.transient_sent(),
                },
                None,
            ),
            Disposition::Broken { cause, sent } => {
                conn.mark_broken(cause);
                (Failed::Broken { cause, sent }, Some(cause))
            }
        };
        Ending::Failed(Failure {
            failed,
            reused,
            cause,
            error: Some(AttemptError::Operation(err)),
        })
    }

    /// A checkout that found no connection, in the operation's error type.
    ///
    /// A connect that timed out has one shape, [`Error::ConnectTimeout`], whichever
    /// timer noticed first: the dialer's own (the manager's error then says
    /// `connect_timeout`) or the pool's around the whole connect.
    fn checkout_failure<E>(&self, err: Error<M::Error>) -> Failure<E>
    where
        E: From<M::Error> + StdError + 'static,
    {
        let connect_timeout = self.core().config.connect_timeout();
        let (failed, err) = match err {
            Error::Connect {
                cause: ResetCause::ConnectTimeout,
                ..
            }
            | Error::ConnectTimeout(_) => (
                Failed::Connect(ResetCause::ConnectTimeout),
                Error::ConnectTimeout(connect_timeout),
            ),
            Error::Connect { cause, source } => (
                // Judged on the driver's own error: `E`'s `From` may not carry
                // what it knew.
                if source.is_permanent() {
                    Failed::Permanent(cause)
                } else {
                    Failed::Connect(cause)
                },
                Error::Connect {
                    cause,
                    source: E::from(source),
                },
            ),
            Error::Timeout(waited) => (Failed::NoConnection, Error::Timeout(waited)),
            Error::Closed => (Failed::NoConnection, Error::Closed),
            Error::Internal(what) => (Failed::NoConnection, Error::Internal(what)),
            Error::CircuitOpen {
                cause,
                last_error,
                failures,
                retry_in,
            } => (
                Failed::NoConnection,
                Error::CircuitOpen {
                    cause,
                    last_error,
                    failures,
                    retry_in,
                },
            ),
        };
        Failure {
            failed,
            reused: false,
            cause: err.cause(),
            error: Some(AttemptError::Checkout(err)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn progress(maybe_sent: bool) -> Progress<std::io::Error> {
        Progress {
            deadline: Instant::now(),
            seed: 0,
            backoff: None,
            attempt: 2,
            last: Some((
                Some(ResetCause::Refused),
                AttemptError::Operation(std::io::ErrorKind::ConnectionRefused.into()),
            )),
            maybe_sent,
            weighed: None,
        }
    }

    /// A run's future holds its checkout's and little more. It once held its
    /// attempts twice (7,256 bytes for the TCP manager, against 3,032 for `get()`'s),
    /// and every request paid for moving that around; this keeps it from growing
    /// back unnoticed.
    #[tokio::test]
    async fn a_runs_future_is_not_much_larger_than_a_checkouts() {
        use tokio::io::AsyncWriteExt;
        let pool = Pool::builder(crate::drivers::tcp::TcpManager::new("127.0.0.1:1"))
            .build()
            .unwrap();
        let get = std::mem::size_of_val(&pool.get());
        let run = std::mem::size_of_val(
            &pool.run_idempotent(async |conn| conn.write_all(b"PING\n").await),
        );
        assert!(
            run <= get + 1024,
            "run_idempotent's future is {run} bytes, get()'s {get}"
        );
    }

    #[test]
    fn once_an_attempt_may_have_sent_every_give_up_says_it_may_have_run() {
        for reason in [
            GiveUp::Attempts,
            GiveUp::Deadline,
            GiveUp::Budget,
            GiveUp::NoConnection,
        ] {
            let err = progress(true).give_up(reason);
            assert!(
                matches!(
                    err,
                    RunError::MaybeExecuted {
                        reason: r,
                        attempts: 2,
                        cause: Some(ResetCause::Refused),
                        source: Some(AttemptError::Operation(_)),
                    } if r == reason
                ),
                "{err:?}"
            );
            assert!(err.may_have_executed());
            assert!(err.to_string().contains("may have taken effect"), "{err}");

            let err = progress(false).give_up(reason);
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
    fn a_failure_without_an_error_keeps_the_last_one_that_had_one() {
        let mut cut_short = progress(false);
        let cut = Failure {
            failed: Failed::Cut { sent: Sent::Maybe },
            reused: true,
            cause: None,
            error: None,
        };
        assert_eq!(
            cut_short.note(cut),
            (Failed::Cut { sent: Sent::Maybe }, true)
        );
        let err = cut_short.give_up(GiveUp::Deadline);
        assert!(
            matches!(
                err,
                RunError::MaybeExecuted {
                    cause: Some(ResetCause::Refused),
                    source: Some(AttemptError::Operation(_)),
                    ..
                }
            ),
            "{err:?}"
        );

        let mut closed = progress(false);
        closed.note(Failure {
            failed: Failed::NoConnection,
            reused: false,
            cause: None,
            error: Some(AttemptError::Checkout(Error::Closed)),
        });
        assert!(
            matches!(
                closed.give_up(GiveUp::NoConnection),
                RunError::NotExecuted {
                    cause: None,
                    source: Some(AttemptError::Checkout(Error::Closed)),
                    ..
                }
            ),
            "the failure that ended the run is the one reported"
        );
        assert_eq!(closed.weighed, None, "no connection is not a retry weighed");
    }

    #[test]
    fn every_result_is_one_run_outcome_and_one_retry_outcome() {
        let failed = |maybe_sent: bool, reason| Err(progress(maybe_sent).give_up(reason));
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
}
