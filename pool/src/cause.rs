//! Why a connection died, and what the pool should do about an error.
//!
//! Every connection steadypool discards is labelled with a [`ResetCause`] (what the
//! kernel or the server told us) and a [`Phase`] (where in the connection's life it
//! happened). Connections closed on purpose are an [`Eviction`], never a reset, so the
//! reset counters only ever show trouble.
//!
//! The [`Classify`] trait turns an operation's error into a [`Disposition`]: is the
//! connection still good, and could the request have reached the server? The pool's
//! retry rules (see [`RetryPolicy`](crate::RetryPolicy#retry-rules)) are decided on that answer alone.
//!
//! | cause | seen as | usual meaning |
//! |---|---|---|
//! | `refused` | `ECONNREFUSED` on connect | upstream down, listener gone |
//! | `connect_timeout` | connect did not finish in time | black hole, SYN backlog full |
//! | `peer_reset` | `ECONNRESET` / `ECONNABORTED` | upstream crash or overload, middlebox reset |
//! | `peer_closed` | EOF (FIN) | server idle timeout, graceful shutdown |
//! | `broken_pipe` | `EPIPE` | wrote to a connection already reset |
//! | `keepalive_timeout` | `ETIMEDOUT` on an idle socket | keepalive probes unanswered |
//! | `user_timeout` | `ETIMEDOUT` with unacknowledged data | black hole mid-request |
//! | `unexpected_data` | bytes on an idle connection | protocol desync, notice before close |
//! | `ping_failed` | the manager's ping failed | application-level failure |
//! | `other` | anything else | |

use std::fmt;
use std::io;

/// The reason a connection broke. Label values are fixed (see [`ResetCause::as_str`]).
///
/// ```
/// use steadypool::ResetCause;
/// assert_eq!(ResetCause::PeerReset.as_str(), "peer_reset");
/// assert_eq!(ResetCause::PeerReset.to_string(), "peer_reset");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum ResetCause {
    /// `ECONNREFUSED` while connecting: nothing listens, or the listener's backlog is full.
    Refused,
    /// The connect (or the manager's handshake) did not finish within `connect_timeout`.
    ConnectTimeout,
    /// `ECONNRESET` / `ECONNABORTED`: the peer or a middlebox sent an RST.
    PeerReset,
    /// End of stream (FIN): the peer closed the connection.
    PeerClosed,
    /// `EPIPE`: a write to a connection that was already reset.
    BrokenPipe,
    /// `ETIMEDOUT` on an idle socket: keepalive probes went unanswered.
    KeepaliveTimeout,
    /// `ETIMEDOUT` with data in flight: `TCP_USER_TIMEOUT` fired mid-request.
    UserTimeout,
    /// Bytes arrived on a connection nobody was using.
    UnexpectedData,
    /// The manager's round-trip ping failed or timed out.
    PingFailed,
    /// Anything else (the error's message says more).
    Other,
}

impl ResetCause {
    /// Every cause, in a fixed order (for describing metrics and for tables).
    pub const ALL: [ResetCause; 10] = [
        ResetCause::Refused,
        ResetCause::ConnectTimeout,
        ResetCause::PeerReset,
        ResetCause::PeerClosed,
        ResetCause::BrokenPipe,
        ResetCause::KeepaliveTimeout,
        ResetCause::UserTimeout,
        ResetCause::UnexpectedData,
        ResetCause::PingFailed,
        ResetCause::Other,
    ];

    /// The metric label value: lower case, stable.
    pub const fn as_str(self) -> &'static str {
        match self {
            ResetCause::Refused => "refused",
            ResetCause::ConnectTimeout => "connect_timeout",
            ResetCause::PeerReset => "peer_reset",
            ResetCause::PeerClosed => "peer_closed",
            ResetCause::BrokenPipe => "broken_pipe",
            ResetCause::KeepaliveTimeout => "keepalive_timeout",
            ResetCause::UserTimeout => "user_timeout",
            ResetCause::UnexpectedData => "unexpected_data",
            ResetCause::PingFailed => "ping_failed",
            ResetCause::Other => "other",
        }
    }

    /// The cause of an I/O error seen in `phase`.
    ///
    /// This is the one place that turns an errno into a cause. `ETIMEDOUT` is
    /// ambiguous on its own: on a socket nobody was using only keepalive can have
    /// fired it, while a request in flight means `TCP_USER_TIMEOUT` (or the kernel's
    /// retransmission limit) gave up on unacknowledged data.
    ///
    /// ```
    /// use std::io;
    /// use steadypool::{Phase, ResetCause};
    /// let timed_out = io::Error::from(io::ErrorKind::TimedOut);
    /// assert_eq!(ResetCause::of_io(&timed_out, Phase::Idle), ResetCause::KeepaliveTimeout);
    /// assert_eq!(ResetCause::of_io(&timed_out, Phase::InUse), ResetCause::UserTimeout);
    /// ```
    pub fn of_io(err: &io::Error, phase: Phase) -> ResetCause {
        use io::ErrorKind as K;
        match err.kind() {
            K::ConnectionRefused => ResetCause::Refused,
            K::ConnectionReset | K::ConnectionAborted => ResetCause::PeerReset,
            K::UnexpectedEof | K::WriteZero | K::NotConnected => ResetCause::PeerClosed,
            K::BrokenPipe => ResetCause::BrokenPipe,
            K::TimedOut => match phase {
                Phase::Connect => ResetCause::ConnectTimeout,
                Phase::Idle | Phase::Checkout => ResetCause::KeepaliveTimeout,
                Phase::InUse => ResetCause::UserTimeout,
            },
            _ => ResetCause::Other,
        }
    }
}

impl fmt::Display for ResetCause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where in its life a connection was when it broke.
///
/// ```
/// assert_eq!(steadypool::Phase::InUse.as_str(), "in_use");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Phase {
    /// Opening a new connection.
    Connect,
    /// Checking a pooled connection before handing it out.
    Checkout,
    /// While the application was using it.
    InUse,
    /// Sitting in the pool, found by the reaper.
    Idle,
}

impl Phase {
    /// Every phase, in a fixed order.
    pub const ALL: [Phase; 4] = [Phase::Connect, Phase::Checkout, Phase::InUse, Phase::Idle];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Connect => "connect",
            Phase::Checkout => "checkout",
            Phase::InUse => "in_use",
            Phase::Idle => "idle",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A connection the pool closed on purpose. These are not resets.
///
/// ```
/// assert_eq!(steadypool::Eviction::MaxLifetime.as_str(), "max_lifetime");
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[non_exhaustive]
pub enum Eviction {
    /// Idle longer than `idle_timeout` (or the learned idle limit).
    IdleExpired,
    /// Older than its (jittered) `max_lifetime`.
    MaxLifetime,
    /// The pool was resized below its current size.
    Resize,
    /// The pool was closed (or dropped).
    Closed,
    /// A future that held the connection was dropped half-way: a cancelled `run`, a
    /// checkout cancelled during its ping, a panic in an operation, or an
    /// [`Exchange`](crate::Exchange) left open. The connection may hold half a
    /// request or an unread reply, so it is never reused.
    Cancelled,
    /// A `run` attempt was cut by the retry deadline; its connection may hold a reply
    /// still in flight.
    Deadline,
    /// The application took the connection out of the pool
    /// ([`Connection::detach`](crate::Connection::detach)).
    Detached,
    /// A before-checkout or on-return hook
    /// ([`PoolBuilder::before_checkout`](crate::PoolBuilder::before_checkout),
    /// [`PoolBuilder::on_return`](crate::PoolBuilder::on_return)) returned an error that
    /// does not say the connection broke: the hook turned the connection down. (An
    /// error that classifies as broken is a reset with its cause instead.)
    HookFailed,
    /// A [`Pool::retain`](crate::Pool::retain) predicate rejected the idle connection.
    Rejected,
    /// Closed before a limit the server announced: the manager reported it due
    /// ([`Broken::server_limit`](crate::Broken::server_limit)), as the HTTP driver
    /// does for a connection idle close to the server's `Keep-Alive: timeout`, and
    /// for one whose last response said `Connection: close` (a server's limit of
    /// requests per connection). Nothing broke; the pool closed it first.
    ServerLimit,
}

impl Eviction {
    /// Every reason, in a fixed order.
    pub const ALL: [Eviction; 10] = [
        Eviction::IdleExpired,
        Eviction::MaxLifetime,
        Eviction::Resize,
        Eviction::Closed,
        Eviction::Cancelled,
        Eviction::Deadline,
        Eviction::Detached,
        Eviction::HookFailed,
        Eviction::Rejected,
        Eviction::ServerLimit,
    ];

    /// The metric label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            Eviction::IdleExpired => "idle_expired",
            Eviction::MaxLifetime => "max_lifetime",
            Eviction::Resize => "resize",
            Eviction::Closed => "closed",
            Eviction::Cancelled => "cancelled",
            Eviction::Deadline => "deadline",
            Eviction::Detached => "detached",
            Eviction::HookFailed => "hook_failed",
            Eviction::Rejected => "rejected",
            Eviction::ServerLimit => "server_limit",
        }
    }
}

impl fmt::Display for Eviction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Could the server have seen the request before the connection broke?
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Sent {
    /// Provably not: it was never written (connect failed, or the manager knows
    /// nothing left the client). Safe to retry even if the operation is not idempotent.
    No,
    /// Perhaps: some or all of it may have reached the server and run there.
    Maybe,
}

/// What an error means for the connection and for the operation.
///
/// ```
/// use std::io;
/// use steadypool::{Classify, Disposition, ResetCause, Sent};
/// let reset = io::Error::from(io::ErrorKind::ConnectionReset);
/// assert_eq!(
///     reset.classify(),
///     Disposition::Broken { cause: ResetCause::PeerReset, sent: Sent::Maybe }
/// );
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Disposition {
    /// The server answered with an error: the connection is fine and goes back to the
    /// pool; the operation is not retried.
    Application,
    /// A passing condition (the server is busy, try later): the connection is fine;
    /// the operation may be retried after a backoff. Nothing ran, unless the error's
    /// [`Classify::transient_sent`] says it may have.
    Transient,
    /// The connection is unusable and must be discarded.
    Broken {
        /// Why it broke.
        cause: ResetCause,
        /// Whether the request may have reached the server.
        sent: Sent,
    },
}

impl Disposition {
    /// Whether the connection must be discarded.
    pub const fn is_broken(self) -> bool {
        matches!(self, Disposition::Broken { .. })
    }
}

/// Maps an error to what the pool must do with the connection and the operation.
///
/// Implemented for [`std::io::Error`], for the pool's own errors, and for the bundled
/// drivers' errors. For your own error enum, derive it:
///
/// ```
/// use steadypool::{Classify, Disposition, ResetCause};
///
/// #[derive(Debug, thiserror::Error, Classify)]
/// enum KvError {
///     #[error("i/o: {0}")]
///     #[classify(transport)]
///     Io(#[from] std::io::Error),
///     #[error("server is loading")]
///     #[classify(transient)]
///     Loading,
///     #[error("garbage from server: {0:?}")]
///     #[classify(broken = "unexpected_data")]
///     Garbage(String),
///     #[error("no such key")]
///     NotFound,
/// }
///
/// assert_eq!(KvError::NotFound.classify(), Disposition::Application);
/// assert!(KvError::Garbage("?".into()).classify().is_broken());
/// ```
pub trait Classify {
    /// What this error means for the connection and the operation.
    fn classify(&self) -> Disposition;

    /// Whether this error, from a connect, will come back however long one waits:
    /// the server's certificate does not verify, it refused the credentials, the
    /// configuration cannot work. Default `false`: a connect failure is taken to be
    /// passing (the upstream is down or restarting) unless the error says otherwise.
    ///
    /// A permanent connect failure is not retried by [`Pool::run`](crate::Pool::run)
    /// and friends (reason [`GiveUp::Permanent`](crate::GiveUp::Permanent)), and
    /// checkouts do not wait on the [connect circuit](crate::CircuitState) behind
    /// it: the caller gets the error at once. The circuit still opens after
    /// [`circuit_open_after`](crate::PoolBuilder::circuit_open_after) of them, so
    /// the upstream is not dialed by every request.
    ///
    /// Not permanent, by design: a refused or timed-out connect, a name that does not
    /// resolve (a resolver outage, or a service whose name appears when it is
    /// deployed), a server that is starting up or full.
    ///
    /// ```
    /// use steadypool::{Classify, Disposition, ResetCause, Sent};
    ///
    /// #[derive(Debug)]
    /// enum LoginError {
    ///     Unreachable(std::io::Error),
    ///     BadPassword,
    /// }
    ///
    /// impl Classify for LoginError {
    ///     fn classify(&self) -> Disposition {
    ///         match self {
    ///             LoginError::Unreachable(io) => io.classify(),
    ///             LoginError::BadPassword => Disposition::Broken {
    ///                 cause: ResetCause::Other,
    ///                 sent: Sent::No,
    ///             },
    ///         }
    ///     }
    ///
    ///     fn is_permanent(&self) -> bool {
    ///         matches!(self, LoginError::BadPassword)
    ///     }
    /// }
    ///
    /// assert!(LoginError::BadPassword.is_permanent());
    /// let refused = std::io::Error::from(std::io::ErrorKind::ConnectionRefused);
    /// assert!(!LoginError::Unreachable(refused).is_permanent());
    /// ```
    fn is_permanent(&self) -> bool {
        false
    }

    /// For an error that [classifies](Classify::classify) as
    /// [`Disposition::Transient`]: whether the work may have run before the server
    /// answered it. Default [`Sent::No`]: a server that says "busy, try later"
    /// (Redis `LOADING`, a PostgreSQL serialization failure whose transaction was
    /// rolled back, HTTP 503) did not do it.
    ///
    /// [`Sent::Maybe`] is for an answer that comes after the work may have run: a
    /// gateway's 502 says its upstream failed, perhaps after it ran the request.
    /// Such a failure is retried only for an idempotent operation, and a run that
    /// ends after it ends in [`RunError::MaybeExecuted`](crate::RunError::MaybeExecuted),
    /// never `NotExecuted`.
    ///
    /// ```
    /// use steadypool::{Classify, Disposition, Sent};
    ///
    /// #[derive(Debug)]
    /// enum GatewayError {
    ///     /// The service said it is overloaded: it did not start the work.
    ///     Overloaded,
    ///     /// The gateway lost its upstream, perhaps mid-way through the work.
    ///     UpstreamLost,
    /// }
    ///
    /// impl Classify for GatewayError {
    ///     fn classify(&self) -> Disposition {
    ///         Disposition::Transient
    ///     }
    ///
    ///     fn transient_sent(&self) -> Sent {
    ///         match self {
    ///             GatewayError::Overloaded => Sent::No,
    ///             GatewayError::UpstreamLost => Sent::Maybe,
    ///         }
    ///     }
    /// }
    ///
    /// assert_eq!(GatewayError::UpstreamLost.transient_sent(), Sent::Maybe);
    /// ```
    fn transient_sent(&self) -> Sent {
        Sent::No
    }
}

/// The error of a manager that cannot fail (a wrapped deadpool manager whose `Error`
/// is `Infallible`, for one): there is nothing to classify.
impl Classify for std::convert::Infallible {
    fn classify(&self) -> Disposition {
        match *self {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_maps_to_one_cause_per_phase() {
        let cases = [
            (libc::ECONNREFUSED, ResetCause::Refused),
            (libc::ECONNRESET, ResetCause::PeerReset),
            (libc::ECONNABORTED, ResetCause::PeerReset),
            (libc::EPIPE, ResetCause::BrokenPipe),
            (libc::ENOTCONN, ResetCause::PeerClosed),
            (libc::EINVAL, ResetCause::Other),
        ];
        for (errno, cause) in cases {
            let err = io::Error::from_raw_os_error(errno);
            assert_eq!(
                ResetCause::of_io(&err, Phase::InUse),
                cause,
                "errno {errno}"
            );
        }
        let timed_out = io::Error::from_raw_os_error(libc::ETIMEDOUT);
        assert_eq!(
            ResetCause::of_io(&timed_out, Phase::Connect),
            ResetCause::ConnectTimeout
        );
        assert_eq!(
            ResetCause::of_io(&timed_out, Phase::Checkout),
            ResetCause::KeepaliveTimeout
        );
        assert_eq!(
            ResetCause::of_io(&timed_out, Phase::InUse),
            ResetCause::UserTimeout
        );
    }

    #[test]
    fn label_values_are_unique() {
        let mut labels: Vec<_> = ResetCause::ALL.iter().map(|c| c.as_str()).collect();
        labels.sort_unstable();
        labels.dedup();
        assert_eq!(labels.len(), ResetCause::ALL.len());
        let mut reasons: Vec<_> = Eviction::ALL.iter().map(|r| r.as_str()).collect();
        reasons.sort_unstable();
        reasons.dedup();
        assert_eq!(reasons.len(), Eviction::ALL.len());
    }
}
