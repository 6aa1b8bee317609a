//! Any existing [`deadpool::managed::Manager`] as a steadypool [`Manager`].
//!
//! Users of the deadpool family (deadpool-postgres, deadpool-redis, deadpool-lapin,
//! your own) keep their manager and change one line to gain steadypool's checkout
//! checks, reaper, lifetime and idle limits, retries and metrics:
//!
//! ```ignore
//! // before: deadpool_postgres::Pool::builder(manager).max_size(16).build()?
//! let pool = steadypool::Pool::builder(DeadpoolManager::new(manager)).max_size(16).build()?;
//! ```
//!
//! The code using the connections stays as it was: a checked-out connection
//! dereferences to the wrapped manager's object, as deadpool's `Object` does (with
//! deadpool-postgres, `*conn` is the `ClientWrapper`, `conn.query(..)` and
//! `conn.prepare_cached(..)` work as before, and `&conn` passes for a
//! `&tokio_postgres::Client`). The wrapped manager's `detach` runs when a connection
//! leaves the pool, as deadpool runs it. In an operation given to
//! [`Pool::run`](crate::Pool::run),
//! `?` turns the wrapped manager's error into this manager's [`DeadpoolError`],
//! whatever its type:
//!
//! ```ignore
//! let count: i64 = pool
//!     .run_idempotent(async |client| {
//!         let stmt = client.prepare_cached("SELECT count(*) FROM users").await?;
//!         Ok(client.query_one(&stmt, &[]).await?.get(0))
//!     })
//!     .await?;
//! ```
//!
//! To return an error of another type from the operation, use
//! [`Pool::run_with_error`](crate::Pool::run_with_error).
//!
//! What the wrapped manager keeps doing: opening connections (its `create`) and
//! checking them (its `recycle`, run as steadypool's checkout ping after `check_after`
//! of idleness; it is handed fresh deadpool `Metrics`, since steadypool keeps a
//! connection's age and idle time itself and enforces `max_lifetime` and
//! `idle_timeout` on them). What it cannot get, because its socket is out of reach:
//!
//! * **the pool's socket options**: the wrapped manager opens its own sockets, so
//!   keepalive, `TCP_USER_TIMEOUT` and nodelay are whatever it sets (deadpool-postgres
//!   has `keepalives` and `tcp_user_timeout` in its config: set them there). The
//!   pool's `connect_timeout` still bounds the whole `create`.
//! * **the free probe**: the pool cannot see the socket, so a connection the server
//!   closed while idle is found by the ping (`recycle`) at checkout, not by the reaper.
//!   Keep `check_after` short, or use the native drivers
//!   ([`postgres`](super::postgres), [`redis`](super::redis)), which have both.
//!
//! The wrapped manager's error type should implement [`Classify`], so the pool can
//! tell a broken connection from a failed query: [`std::io::Error`] does, and so do
//! `tokio_postgres::Error` (feature `postgres`) and `redis::RedisError` (feature
//! `redis`), the error types of deadpool-postgres and deadpool-redis, and
//! `Infallible`. A manager whose error is `()` can be wrapped too; its failures say
//! nothing, so the pool treats each as a broken connection (see [`DeadpoolError`]).
//!
//! **Why a wrapper, and only one.** The pool itself queues its connections in
//! deadpool, but what it queues is not the wrapped manager's object: it is a slot
//! holding that object with the pool's own bookkeeping (id, opening time, idle time,
//! lifetime, the close tally that counts every connection once). The pool's internal
//! deadpool manager creates and recycles those slots for every kind of connection,
//! native or wrapped, so a wrapped deadpool manager cannot stand in for it: the types
//! differ. What [`DeadpoolManager`] adapts is the protocol only (`create` is the
//! connect, `recycle` the ping, `detach` the detach), the same four questions every
//! [`Manager`] answers; the pool's queue never sees the wrapped manager. Handing the
//! wrapped manager to the queue directly would mean either keeping the bookkeeping
//! beside deadpool's objects (a second map, locked on every checkout) or giving up the
//! probe, the limits and the counts, which are what the wrapper is for.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io;
//! use deadpool::managed::{Metrics, RecycleResult};
//! use steadypool::{drivers::deadpool::DeadpoolManager, Pool};
//!
//! /// A deadpool manager written for deadpool.
//! struct Counter;
//!
//! impl deadpool::managed::Manager for Counter {
//!     type Type = u32;
//!     type Error = io::Error;
//!
//!     async fn create(&self) -> io::Result<u32> {
//!         Ok(0)
//!     }
//!
//!     async fn recycle(&self, n: &mut u32, _: &Metrics) -> RecycleResult<io::Error> {
//!         *n += 1;
//!         Ok(())
//!     }
//! }
//!
//! let pool = Pool::builder(DeadpoolManager::new(Counter)).max_size(2).build()?;
//! let conn = pool.get().await?;
//! assert_eq!(*conn, 0);
//! # Ok(()) }
//! ```

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

use deadpool::managed::{Metrics, RecycleError};

use crate::cause::{Classify, Disposition, ResetCause, Sent};
use crate::dial::Dialer;
use crate::manager::Manager;

/// A deadpool manager, wrapped for a steadypool [`Pool`](crate::Pool). See the
/// [module docs](self).
pub struct DeadpoolManager<D> {
    inner: D,
}

impl<D> DeadpoolManager<D> {
    /// Wraps `manager`.
    pub fn new(manager: D) -> Self {
        DeadpoolManager { inner: manager }
    }

    /// The wrapped manager (for example to reach deadpool-postgres's statement caches).
    pub fn inner(&self) -> &D {
        &self.inner
    }
}

impl<D> fmt::Debug for DeadpoolManager<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DeadpoolManager")
            .field("manager", &std::any::type_name::<D>())
            .finish()
    }
}

impl<D> Manager for DeadpoolManager<D>
where
    D: deadpool::managed::Manager + 'static,
    D::Type: 'static,
    D::Error: Send + Sync + 'static,
    DeadpoolError<D::Error>: Classify + StdError,
{
    type Connection = D::Type;
    type Error = DeadpoolError<D::Error>;

    /// Runs the wrapped manager's `create`. The dialer is not used: the wrapped
    /// manager opens its own sockets, with its own options.
    async fn connect(&self, _dialer: &Dialer) -> Result<D::Type, Self::Error> {
        self.inner.create().await.map_err(DeadpoolError::Backend)
    }

    /// Runs the wrapped manager's `recycle`, its own health check.
    async fn ping(&self, conn: &mut D::Type) -> Result<(), Self::Error> {
        let result = self.inner.recycle(conn, &Metrics::default()).await;
        result.map_err(|err| match err {
            RecycleError::Backend(e) => DeadpoolError::Backend(e),
            RecycleError::Message(message) => DeadpoolError::Recycle(message),
        })
    }

    /// Runs the wrapped manager's `detach`, as deadpool does when an object leaves.
    fn detach(&self, conn: &mut D::Type) {
        self.inner.detach(conn);
    }
}

/// Why a wrapped deadpool manager failed.
///
/// `?` converts the wrapped manager's error into it, whatever its type.
///
/// The wrapped manager's error `E` can be any error that [classifies](Classify)
/// ([`std::io::Error`], `tokio_postgres::Error` with feature `postgres`,
/// `redis::RedisError` with feature `redis`, `Infallible`, your own with
/// `#[derive(Classify)]`), or `()`: a manager that says nothing about its failures.
/// A `()` failure is taken as a broken connection with an unknown cause (`other`),
/// which a request may have reached: the pool discards the connection, and retries
/// only what was declared idempotent.
///
/// ```
/// use std::io;
/// use steadypool::drivers::deadpool::DeadpoolError;
///
/// fn send(fail: bool) -> Result<(), DeadpoolError<io::Error>> {
///     let written: io::Result<()> = if fail { Err(io::ErrorKind::BrokenPipe.into()) } else { Ok(()) };
///     written?;
///     Ok(())
/// }
/// assert!(matches!(send(true), Err(DeadpoolError::Backend(_))));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum DeadpoolError<E> {
    /// The wrapped manager's own error.
    Backend(E),
    /// The wrapped manager's `recycle` rejected the connection.
    Recycle(Cow<'static, str>),
}

impl<E> From<E> for DeadpoolError<E> {
    fn from(err: E) -> Self {
        DeadpoolError::Backend(err)
    }
}

const RECYCLE_FAILED: &str = "the connection failed its check";

impl<E: Classify + StdError + 'static> fmt::Display for DeadpoolError<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadpoolError::Backend(e) => fmt::Display::fmt(e, f),
            DeadpoolError::Recycle(message) => write!(f, "{RECYCLE_FAILED}: {message}"),
        }
    }
}

impl<E: Classify + StdError + 'static> StdError for DeadpoolError<E> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match self {
            // Transparent: the wrapped error speaks for itself, with its own source.
            DeadpoolError::Backend(e) => e.source(),
            DeadpoolError::Recycle(_) => None,
        }
    }
}

impl<E: Classify + StdError + 'static> Classify for DeadpoolError<E> {
    fn classify(&self) -> Disposition {
        match self {
            DeadpoolError::Backend(e) => e.classify(),
            DeadpoolError::Recycle(_) => RECYCLE_DISPOSITION,
        }
    }

    fn is_permanent(&self) -> bool {
        match self {
            DeadpoolError::Backend(e) => e.is_permanent(),
            DeadpoolError::Recycle(_) => false,
        }
    }

    fn transient_sent(&self) -> Sent {
        match self {
            DeadpoolError::Backend(e) => e.transient_sent(),
            DeadpoolError::Recycle(_) => Sent::No,
        }
    }
}

/// A rejected `recycle`: the check failed before any request was sent.
const RECYCLE_DISPOSITION: Disposition = Disposition::Broken {
    cause: ResetCause::PingFailed,
    sent: Sent::No,
};

impl fmt::Display for DeadpoolError<()> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeadpoolError::Backend(()) => {
                f.write_str("the wrapped deadpool manager failed (its error, `()`, says no more)")
            }
            DeadpoolError::Recycle(message) => write!(f, "{RECYCLE_FAILED}: {message}"),
        }
    }
}

impl StdError for DeadpoolError<()> {}

impl Classify for DeadpoolError<()> {
    fn classify(&self) -> Disposition {
        match self {
            // Nothing known: the safe reading, a broken connection the request may
            // have reached.
            DeadpoolError::Backend(()) => Disposition::Broken {
                cause: ResetCause::Other,
                sent: Sent::Maybe,
            },
            DeadpoolError::Recycle(_) => RECYCLE_DISPOSITION,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use deadpool::managed::RecycleResult;
    use tokio::io::AsyncWriteExt;
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::Pool;

    /// A plain deadpool manager over TCP whose recycle fails once the peer is gone.
    struct TcpDeadpool {
        addr: std::net::SocketAddr,
        detached: AtomicUsize,
    }

    impl deadpool::managed::Manager for TcpDeadpool {
        type Type = TcpStream;
        type Error = io::Error;

        async fn create(&self) -> io::Result<TcpStream> {
            TcpStream::connect(self.addr).await
        }

        async fn recycle(&self, conn: &mut TcpStream, _: &Metrics) -> RecycleResult<io::Error> {
            let mut byte = [0u8; 1];
            match conn.try_read(&mut byte) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(()),
                Ok(_) => Err(RecycleError::message("peer closed")),
                Err(e) => Err(RecycleError::Backend(e)),
            }
        }

        fn detach(&self, _: &mut TcpStream) {
            self.detached.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Accepts and holds connections, so none closes on its own.
    async fn holding_server() -> std::net::SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        addr
    }

    #[tokio::test]
    async fn every_connection_that_leaves_runs_the_wrapped_detach_once() {
        let manager = DeadpoolManager::new(TcpDeadpool {
            addr: holding_server().await,
            detached: AtomicUsize::new(0),
        });
        let pool = Pool::builder(manager)
            .max_size(4)
            .min_idle(1)
            .reaper_interval(Duration::from_millis(20))
            .build()
            .unwrap();
        let detached = |pool: &Pool<DeadpoolManager<TcpDeadpool>>| {
            pool.manager().inner().detached.load(Ordering::Relaxed) as u64
        };
        // The reaper's spare connection, then three more.
        while pool.status().idle < 1 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let held: Vec<_> = check_out(&pool, 4).await;
        drop(held);
        // Closed on return.
        let mut conn = pool.get().await.unwrap();
        conn.mark_broken(crate::ResetCause::PeerReset);
        drop(conn);
        // Taken out by the application: detached, and handed over as it is.
        let taken = pool.get().await.unwrap().detach();
        // Idle beyond the new size.
        pool.resize(1);
        let stats = pool.stats();
        assert_eq!(detached(&pool), stats.closed(), "{stats:?}");
        // The rest, idle and in the spare stock, with the pool.
        pool.close();
        let stats = pool.stats();
        assert_eq!(stats.opened, stats.closed(), "{stats:?}");
        assert_eq!(detached(&pool), stats.closed(), "{stats:?}");
        drop(taken);
    }

    /// Checks out `n` connections at once.
    async fn check_out(
        pool: &Pool<DeadpoolManager<TcpDeadpool>>,
        n: usize,
    ) -> Vec<crate::Connection<DeadpoolManager<TcpDeadpool>>> {
        let mut held = Vec::new();
        for _ in 0..n {
            held.push(pool.get().await.unwrap());
        }
        held
    }

    #[tokio::test]
    async fn a_dead_connection_fails_the_wrapped_recycle_and_is_replaced() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let manager = DeadpoolManager::new(TcpDeadpool {
            addr: listener.local_addr().unwrap(),
            detached: AtomicUsize::new(0),
        });
        let pool = Pool::builder(manager)
            .check_after(Duration::from_millis(1))
            .build()
            .unwrap();
        let first = pool.get().await.unwrap();
        let (mut server_side, _) = listener.accept().await.unwrap();
        drop(first);
        server_side.shutdown().await.unwrap();
        drop(server_side);
        tokio::time::sleep(Duration::from_millis(50)).await;

        let mut second = pool.get().await.unwrap();
        let (_server_side, _) = listener.accept().await.unwrap();
        second.write_all(b"x").await.unwrap();
        assert_eq!(pool.manager().inner().detached.load(Ordering::Relaxed), 1);
        assert_eq!(pool.status().size, 1);
    }

    #[test]
    fn a_rejected_recycle_is_a_failed_ping_and_backend_errors_keep_their_class() {
        let rejected: DeadpoolError<io::Error> = DeadpoolError::Recycle("stale".into());
        assert_eq!(
            rejected.classify(),
            Disposition::Broken {
                cause: ResetCause::PingFailed,
                sent: Sent::No
            }
        );
        let reset: DeadpoolError<io::Error> =
            DeadpoolError::Backend(io::ErrorKind::ConnectionReset.into());
        assert_eq!(
            reset.classify(),
            Disposition::Broken {
                cause: ResetCause::PeerReset,
                sent: Sent::Maybe
            }
        );
    }

    /// A backend error that is permanent and, as a transient failure, may have run.
    #[derive(Debug, thiserror::Error)]
    #[error("refused for good, after the work may have run")]
    struct Judged;

    impl Classify for Judged {
        fn classify(&self) -> Disposition {
            Disposition::Transient
        }

        fn is_permanent(&self) -> bool {
            true
        }

        fn transient_sent(&self) -> Sent {
            Sent::Maybe
        }
    }

    #[test]
    fn a_backend_errors_own_answers_pass_through_and_a_rejected_recycle_has_none() {
        let backend = DeadpoolError::Backend(Judged);
        assert!(backend.is_permanent());
        assert_eq!(backend.transient_sent(), Sent::Maybe);
        let rejected: DeadpoolError<Judged> = DeadpoolError::Recycle("stale".into());
        assert!(!rejected.is_permanent());
        assert_eq!(rejected.transient_sent(), Sent::No);
    }

    /// A deadpool manager that cannot fail: in-memory objects numbered from 1.
    struct Numbered(AtomicUsize);

    impl deadpool::managed::Manager for Numbered {
        type Type = usize;
        type Error = std::convert::Infallible;

        async fn create(&self) -> Result<usize, Self::Error> {
            Ok(self.0.fetch_add(1, Ordering::Relaxed) + 1)
        }

        async fn recycle(&self, _: &mut usize, _: &Metrics) -> RecycleResult<Self::Error> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_manager_that_cannot_fail_is_pooled() {
        let pool = Pool::builder(DeadpoolManager::new(Numbered(AtomicUsize::new(0))))
            .max_size(2)
            .build()
            .unwrap();
        let first = pool.get().await.unwrap();
        assert_eq!(*first, 1);
        drop(first);
        let again = pool.get().await.unwrap();
        assert_eq!(*again, 1, "the idle object is handed out again");
        let result: Result<usize, crate::RunError<DeadpoolError<std::convert::Infallible>>> =
            pool.run_idempotent(async |n: &mut usize| Ok(*n * 10)).await;
        assert_eq!(result.unwrap(), 20, "a second object for the second user");
        assert_eq!(pool.stats().opened, 2);
    }

    /// A deadpool manager whose error is `()`: the first create fails, and recycle
    /// fails for objects numbered in `refuse`.
    struct Mute {
        created: AtomicUsize,
        refuse: usize,
    }

    impl deadpool::managed::Manager for Mute {
        type Type = usize;
        type Error = ();

        async fn create(&self) -> Result<usize, ()> {
            match self.created.fetch_add(1, Ordering::Relaxed) {
                0 => Err(()),
                n => Ok(n),
            }
        }

        async fn recycle(&self, n: &mut usize, _: &Metrics) -> RecycleResult<()> {
            if *n == self.refuse {
                Err(RecycleError::Backend(()))
            } else {
                Ok(())
            }
        }
    }

    #[tokio::test]
    async fn a_manager_whose_error_is_unit_is_pooled_and_its_failures_count_as_broken() {
        let manager = DeadpoolManager::new(Mute {
            created: AtomicUsize::new(0),
            refuse: 1,
        });
        let pool = Pool::builder(manager)
            .max_size(1)
            .check_after(Duration::from_millis(1))
            .build()
            .unwrap();
        match pool.get().await {
            Err(crate::Error::Connect { cause, source }) => {
                assert_eq!(cause, ResetCause::Other);
                assert!(matches!(source, DeadpoolError::Backend(())));
                assert!(source.to_string().contains("says no more"), "{source}");
            }
            other => panic!("expected a failed connect, got {other:?}"),
        }
        let first = pool.get().await.unwrap();
        assert_eq!(*first, 1);
        drop(first);
        tokio::time::sleep(Duration::from_millis(20)).await;
        // The ping (the wrapped recycle) refuses object 1: a new one replaces it.
        let second = pool.get().await.unwrap();
        assert_eq!(*second, 2);
        let stats = pool.stats();
        assert_eq!(
            stats.resets(ResetCause::PingFailed, crate::Phase::Checkout),
            1,
            "{stats:?}"
        );
        assert_eq!(stats.connect_failures, 1, "{stats:?}");
    }
}
