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
//! `?` turns the wrapped manager's error into this manager's [`DeadpoolError`]
//! for [`std::io::Error`], `tokio_postgres::Error` (deadpool-postgres, feature
//! `postgres`) and `redis::RedisError` (deadpool-redis, feature `redis`):
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
//! For any other error type, return your own error from the operation with
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
//! The wrapped manager's error type must implement [`Classify`], so the pool can tell
//! a broken connection from a failed query: [`std::io::Error`] does, and so do
//! `tokio_postgres::Error` (feature `postgres`) and `redis::RedisError` (feature
//! `redis`), the error types of deadpool-postgres and deadpool-redis.
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
use crate::dial::{DialError, Dialer};
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
    D::Error: Classify + StdError + Send + Sync + 'static,
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
/// `?` converts the backend errors of the deadpool family into it: [`std::io::Error`],
/// `tokio_postgres::Error` (feature `postgres`) and `redis::RedisError` (feature
/// `redis`). A conversion for every backend error type at once is not possible: for
/// the backend error [`DialError`] it would be a second `From<DialError>`.
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
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeadpoolError<E: StdError + 'static> {
    /// The wrapped manager's own error.
    #[error(transparent)]
    Backend(E),
    /// The wrapped manager's `recycle` rejected the connection.
    #[error("the connection failed its check: {0}")]
    Recycle(Cow<'static, str>),
    /// Not produced by this manager, which does not dial; every manager's error
    /// converts from a [`DialError`].
    #[error(transparent)]
    Dial(#[from] DialError),
}

// One impl per backend error type rather than a blanket `From<E>`, which would
// overlap with `From<DialError>` (the one the `Manager` trait requires) for
// `E = DialError`.
impl From<std::io::Error> for DeadpoolError<std::io::Error> {
    fn from(err: std::io::Error) -> Self {
        DeadpoolError::Backend(err)
    }
}

#[cfg(feature = "postgres")]
impl From<tokio_postgres::Error> for DeadpoolError<tokio_postgres::Error> {
    fn from(err: tokio_postgres::Error) -> Self {
        DeadpoolError::Backend(err)
    }
}

#[cfg(feature = "redis")]
impl From<redis::RedisError> for DeadpoolError<redis::RedisError> {
    fn from(err: redis::RedisError) -> Self {
        DeadpoolError::Backend(err)
    }
}

impl<E: Classify + StdError + 'static> Classify for DeadpoolError<E> {
    fn classify(&self) -> Disposition {
        match self {
            DeadpoolError::Backend(e) => e.classify(),
            DeadpoolError::Recycle(_) => Disposition::Broken {
                cause: ResetCause::PingFailed,
                sent: Sent::No,
            },
            DeadpoolError::Dial(e) => e.classify(),
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
}
