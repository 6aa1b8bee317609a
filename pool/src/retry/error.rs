//! What a `run` returns when it fails: whether the request may have taken effect,
//! why retrying stopped, and the last attempt's error. See
//! [Did it run?](crate::RetryPolicy#did-it-run).

use std::error::Error as StdError;

use super::policy::GiveUp;
use crate::cause::ResetCause;
use crate::pool::Error;

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

/// Why [`Pool::run`](crate::Pool::run) (or a sibling) failed, and whether the request may have taken
/// effect. Each failure has exactly one shape; see [Did it run?](crate::RetryPolicy#did-it-run).
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
    /// failed, the manager's errors said [`Sent::No`](crate::Sent::No), the server refused the work as
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
    /// [`Pool::run_idempotent`](crate::Pool::run_idempotent) retried, an earlier attempt may also have run, which
    /// the caller declared harmless; the error is the last attempt's answer. A run
    /// with [`Pool::run`](crate::Pool::run) never retries after an attempt that may have been sent, so
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
