//! [`Pool`]: checkout, return, status, resize and close.
//!
//! A checkout ([`Pool::get`]) takes an idle connection and checks it, the free tests
//! first (the [`probe`](crate::probe), the lifetime and idle limits), then a ping only
//! if it sat idle past `check_after`; a connection that fails any test is
//! discarded with its cause and the next one is tried; when none is left a new one is
//! opened. A connection returns to the pool when its [`Connection`] handle drops.
//!
//! In the background a reaper task (one per pool, gone with the pool) probes idle
//! connections every `reaper_interval`, closes the dead and the expired, and keeps
//! `min_idle` connections ready.

mod builder;
mod config;
mod reaper;
mod slot;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use deadpool::managed::{Object, PoolError, TimeoutType, Timeouts};
use tokio::time::error::Elapsed;

pub use self::builder::PoolBuilder;
use self::config::Config;
pub use self::config::{BuildError, QueueMode};
pub(crate) use self::slot::{Adapter, ConnectError, Core, Obituary};
use crate::breaker::CircuitState;
use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause, Sent};
use crate::clock::CoarseInstant;
use crate::diagnosis::{self, IdleLimit};
use crate::manager::Manager;

type Inner<M> = deadpool::managed::Pool<Adapter<M>>;

/// What one of deadpool's checkouts returns.
type Checkout<M> = Result<Object<Adapter<M>>, PoolError<ConnectError<<M as Manager>::Error>>>;

/// A pool of connections made by a [`Manager`]. Cheap to clone: clones share the pool.
///
/// ```no_run
/// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use steadypool::{drivers::tcp::TcpManager, Pool};
/// use tokio::io::AsyncWriteExt;
///
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).max_size(8).build()?;
/// let mut conn = pool.get().await?;
/// conn.write_all(b"PING\r\n").await?;
/// # Ok(()) }
/// ```
pub struct Pool<M: Manager> {
    shared: Arc<Shared<M>>,
}

struct Shared<M: Manager> {
    inner: Inner<M>,
    reaper: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl<M: Manager> Drop for Shared<M> {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get() {
            reaper.abort();
        }
    }
}

impl<M: Manager> Clone for Pool<M> {
    fn clone(&self) -> Self {
        Pool {
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<M: Manager> fmt::Debug for Pool<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pool")
            .field("name", &self.core().config.name)
            .field("status", &self.status())
            .finish()
    }
}

/// A snapshot of a pool's occupancy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status {
    /// The most connections the pool may hold.
    pub max_size: usize,
    /// Connections open now, idle and in use.
    pub size: usize,
    /// Connections waiting in the pool.
    pub idle: usize,
    /// Connections handed out.
    pub in_use: usize,
    /// Tasks waiting for a connection.
    pub waiting: usize,
    /// The connect circuit (see [`crate::breaker`]).
    pub circuit: CircuitState,
}

/// Why a checkout failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error<E: StdError + 'static> {
    /// No connection within `wait_timeout`: the pool stayed exhausted, or connecting
    /// was slow.
    #[error(
        "no connection within {0:?}: every connection stayed busy; raise max_size or wait_timeout"
    )]
    Timeout(Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
    /// A new connection could not be opened.
    #[error("could not connect ({cause}): {source}")]
    Connect {
        /// Why.
        cause: ResetCause,
        /// The manager's error.
        #[source]
        source: E,
    },
    /// A new connection was not ready within `connect_timeout`.
    #[error("could not connect (connect_timeout): no connection within {0:?}")]
    ConnectTimeout(Duration),
    /// A new connection was needed, but the connect circuit is open: recent connects
    /// all failed, so the pool did not dial (see [`crate::breaker`]).
    #[error(
        "not connecting: the connect circuit is open after {failures} failed connects \
         (last: {cause}: {last_error}); next trial connect in {retry_in:?}"
    )]
    CircuitOpen {
        /// The cause of the last failed connect.
        cause: ResetCause,
        /// The last failed connect's error, as text (what the upstream said).
        last_error: Arc<str>,
        /// Consecutive failed connects.
        failures: u32,
        /// Time until a trial connect may start (zero while one is in flight).
        retry_in: Duration,
    },
}

impl<E: StdError + 'static> Error<E> {
    /// The reset cause, for errors that come from the upstream.
    pub fn cause(&self) -> Option<ResetCause> {
        match self {
            Error::Connect { cause, .. } => Some(*cause),
            Error::ConnectTimeout(_) => Some(ResetCause::ConnectTimeout),
            Error::CircuitOpen { cause, .. } => Some(*cause),
            Error::Timeout(_) | Error::Closed => None,
        }
    }
}

impl<E: StdError + 'static> Classify for Error<E> {
    fn classify(&self) -> Disposition {
        match self.cause() {
            Some(cause) => Disposition::Broken {
                cause,
                sent: Sent::No,
            },
            None => Disposition::Application,
        }
    }
}

impl<M: Manager> Pool<M> {
    /// Starts configuring a pool of `manager`'s connections. See [`PoolBuilder`].
    pub fn builder(manager: M) -> PoolBuilder<M> {
        PoolBuilder::new(manager)
    }

    fn from_parts(manager: M, config: Config) -> Pool<M> {
        let max_size = config.max_size;
        let queue_mode = match config.queue_mode {
            QueueMode::Fifo => deadpool::managed::QueueMode::Fifo,
            QueueMode::Lifo => deadpool::managed::QueueMode::Lifo,
        };
        let adapter = Adapter {
            manager,
            core: Core::new(config),
        };
        let inner = deadpool::managed::Pool::builder(adapter)
            .max_size(max_size)
            .queue_mode(queue_mode)
            .runtime(deadpool::Runtime::Tokio1)
            .build();
        // deadpool fails to build only when timeouts are set without a runtime; we
        // set a runtime and no deadpool timeouts, so this branch is unreachable in
        // practice, and the pool would be unusable anyway.
        let inner = match inner {
            Ok(inner) => inner,
            Err(err) => unreachable!("deadpool rejected a pool without timeouts: {err}"),
        };
        Pool {
            shared: Arc::new(Shared {
                inner,
                reaper: std::sync::OnceLock::new(),
            }),
        }
    }

    pub(crate) fn inner(&self) -> &Inner<M> {
        &self.shared.inner
    }

    pub(crate) fn core(&self) -> &Core {
        &self.shared.inner.manager().core
    }

    /// The manager this pool was built with.
    pub fn manager(&self) -> &M {
        &self.shared.inner.manager().manager
    }

    /// Takes a connection: an idle one that passes the checkout checks, or a new one.
    ///
    /// Never returns a connection the kernel knows to be dead. Cancel-safe: dropping
    /// the future at any point loses no slot.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `wait_timeout`; [`Error::Connect`] /
    /// [`Error::ConnectTimeout`] when a needed new connection failed, with its cause;
    /// [`Error::Closed`] after [`Pool::close`].
    pub async fn get(&self) -> Result<Connection<M>, Error<M::Error>> {
        // First without queueing: deadpool takes a free permit or reports none, with no
        // waiter node and no timer. Most checkouts find an idle connection that passes
        // the free checks and finish on this first poll; they are recorded as taking
        // 0 s, well under a microsecond, below any histogram bucket.
        let mut attempt = pin!(self.inner().timeout_get(&NO_QUEUEING));
        let (result, took) = match poll_once(attempt.as_mut()).await {
            Some(Ok(object)) => {
                self.core().recorder.checkout(Duration::ZERO);
                return Ok(Connection::new(object));
            }
            Some(Err(PoolError::Timeout(TimeoutType::Wait))) => self.queue().await,
            Some(Err(err)) => (Ok(Err(err)), Duration::ZERO),
            // A slot was free but its connection needs I/O: a ping, or a new connect.
            None => timed(self.core().config.wait_timeout, attempt).await,
        };
        self.core().recorder.checkout(took);
        self.outcome(result)
    }

    /// The checkout of [`Pool::get`] that found every connection busy.
    ///
    /// It yields once and tries again before it queues. A connection returned
    /// meanwhile is taken just as cheaply. And once waiters have queued, each returned
    /// connection goes to the oldest of them, which has to be scheduled before it can
    /// use it: a checkout that queued at once would always find none free and queue in
    /// turn, so the queue would never drain (measured: most checkouts queued, each
    /// paying for a timer, at 1.4x to 1.9x the cost; BENCHMARKS.md). A checkout that
    /// yields lets it drain.
    async fn queue(&self) -> (Result<Checkout<M>, Elapsed>, Duration) {
        let wait = self.core().config.wait_timeout;
        tokio::task::yield_now().await;
        let mut attempt = pin!(self.inner().timeout_get(&NO_QUEUEING));
        match poll_once(attempt.as_mut()).await {
            // Still busy: queue for one.
            Some(Err(PoolError::Timeout(TimeoutType::Wait))) => {
                timed(wait, self.inner().get()).await
            }
            Some(result) => (Ok(result), Duration::ZERO),
            None => timed(wait, attempt).await,
        }
    }

    /// What a checkout that did not finish at once comes to.
    fn outcome(
        &self,
        result: Result<Checkout<M>, Elapsed>,
    ) -> Result<Connection<M>, Error<M::Error>> {
        let wait = self.core().config.wait_timeout;
        match result {
            Ok(Ok(object)) => Ok(Connection::new(object)),
            Ok(Err(err)) => Err(match err {
                PoolError::Backend(ConnectError::Failed(cause, source)) => {
                    Error::Connect { cause, source }
                }
                PoolError::Backend(ConnectError::TimedOut(after)) => Error::ConnectTimeout(after),
                PoolError::Backend(ConnectError::CircuitOpen(refusal)) => Error::CircuitOpen {
                    cause: refusal.cause,
                    last_error: refusal.last_error,
                    failures: refusal.failures,
                    retry_in: refusal.retry_in,
                },
                PoolError::Timeout(_) => Error::Timeout(wait),
                PoolError::Closed
                | PoolError::NoRuntimeSpecified
                | PoolError::PostCreateHook(_) => Error::Closed,
            }),
            Err(_) => Err(Error::Timeout(wait)),
        }
    }

    /// The pool's occupancy now.
    pub fn status(&self) -> Status {
        let status = self.inner().status();
        Status {
            max_size: status.max_size,
            size: status.size,
            idle: status.available,
            in_use: status.size - status.available,
            waiting: status.waiting,
            circuit: self.core().gate.state(),
        }
    }

    /// Changes `max_size`. Idle connections beyond the new size are closed at once
    /// (counted as evictions with reason `resize`); busy ones close when returned.
    pub fn resize(&self, max_size: usize) {
        let before = self.inner().status().size;
        self.inner().resize(max_size);
        let after = self.inner().status().size;
        self.core()
            .recorder
            .eviction(Eviction::Resize, before.saturating_sub(after) as u64);
    }

    /// Closes the pool: idle connections close now, busy ones when returned, waiting
    /// and future checkouts fail with [`Error::Closed`], and the reaper stops.
    pub fn close(&self) {
        let idle = self.inner().status().available;
        self.inner().close();
        self.core().recorder.eviction(Eviction::Closed, idle as u64);
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.inner().is_closed()
    }

    /// What the pool has learned about the path's idle limit, and the idle time after
    /// which it closes connections now (see [`crate::diagnosis`]).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).build()?;
    /// let limit = pool.idle_limit();
    /// if let Some(below) = limit.recommended_idle_timeout() {
    ///     println!("idle connections die on this path; set idle_timeout below {below:?}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn idle_limit(&self) -> IdleLimit {
        let core = self.core();
        core.diagnosis
            .idle_limit(CoarseInstant::now(), &core.recorder)
    }
}

/// deadpool's non-blocking checkout: a free slot or `PoolError::Timeout(Wait)` at once.
const NO_QUEUEING: Timeouts = Timeouts {
    wait: Some(Duration::ZERO),
    create: None,
    recycle: None,
};

/// Runs a checkout that has to wait under `wait_timeout`, and says how long it ran.
async fn timed<F: Future>(wait: Duration, checkout: F) -> (Result<F::Output, Elapsed>, Duration) {
    let started = Instant::now();
    let result = tokio::time::timeout(wait, checkout).await;
    (result, started.elapsed())
}

/// Polls `future` once: its output if it finished, `None` if it has to wait (it has
/// then registered the task's waker, as any poll does).
///
/// A finished poll spends one unit of the task's cooperative budget, as tokio's own
/// semaphore does for each permit: a task that checks connections out in a loop
/// without other I/O still yields to the scheduler now and then. With the budget
/// spent, the task yields before polling.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        let budget = ready!(tokio::task::coop::poll_proceed(cx));
        Poll::Ready(match future.as_mut().poll(cx) {
            Poll::Ready(output) => {
                budget.made_progress();
                Some(output)
            }
            Poll::Pending => None,
        })
    })
    .await
}

/// A connection checked out of a [`Pool`]. Dereferences to the manager's connection;
/// goes back to the pool when dropped.
///
/// If an operation shows the connection is broken, call [`Connection::mark_broken`]
/// so it is discarded (and counted) instead of returned.
pub struct Connection<M: Manager> {
    object: Option<Object<Adapter<M>>>,
}

impl<M: Manager> Connection<M> {
    fn new(object: Object<Adapter<M>>) -> Connection<M> {
        Connection {
            object: Some(object),
        }
    }

    fn object(&self) -> &Object<Adapter<M>> {
        match &self.object {
            Some(object) => object,
            None => unreachable!("a Connection holds its object until dropped"),
        }
    }

    fn slot(&self) -> &slot::Slot<M::Connection> {
        self.object()
    }

    fn slot_mut(&mut self) -> &mut slot::Slot<M::Connection> {
        match &mut self.object {
            Some(object) => object,
            None => unreachable!("a Connection holds its object until dropped"),
        }
    }

    /// The pool's id for this connection (unique per pool), as shown in trace events.
    pub fn id(&self) -> u64 {
        self.slot().id
    }

    /// How long ago this connection was opened.
    pub fn age(&self) -> Duration {
        self.slot().created.elapsed()
    }

    /// The peer's address, when the manager exposes the socket.
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.slot().peer
    }

    /// Marks the connection as broken: when dropped it is closed, not returned, and
    /// counted as a reset with `cause` in phase `in_use`.
    pub fn mark_broken(&mut self, cause: ResetCause) {
        self.slot_mut().broken = Some(cause);
    }

    /// Whether this connection served an earlier checkout (it sat in the pool before).
    pub(crate) fn is_reused(&self) -> bool {
        Object::metrics(self.object()).recycle_count > 0
    }

    /// Whether [`Connection::mark_broken`] was called.
    pub fn is_marked_broken(&self) -> bool {
        self.slot().broken.is_some()
    }

    /// Takes the connection out of the pool for good; the pool opens another in its
    /// place when needed.
    pub fn detach(mut self) -> M::Connection {
        match self.object.take() {
            Some(object) => Object::take(object).conn,
            None => unreachable!("a Connection holds its object until dropped"),
        }
    }
}

impl<M: Manager> Deref for Connection<M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        &self.slot().conn
    }
}

impl<M: Manager> DerefMut for Connection<M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        &mut self.slot_mut().conn
    }
}

impl<M: Manager> fmt::Debug for Connection<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id())
            .field("peer", &self.peer_addr())
            .field("broken", &self.slot().broken)
            .finish()
    }
}

impl<M: Manager> Drop for Connection<M> {
    fn drop(&mut self) {
        // The object stays in its field on the common path, and goes back to the pool
        // when the field drops after this: taking it out would move it once more.
        let Some(object) = self.object.as_mut() else {
            return;
        };
        let now = CoarseInstant::now();
        let Some(cause) = object.broken else {
            if diagnosis::teaches_idle_limit(object.reused_after)
                && let Some(pool) = Object::pool(object)
            {
                pool.manager()
                    .core
                    .record_reuse(object.reused_after.to_std());
            }
            object.idle_since = now;
            return;
        };
        if let Some(pool) = Object::pool(object) {
            // What the path did to it depends on how long it sat idle before this
            // checkout, not on how long the application held it.
            let dead = Obituary {
                idle: object.reused_after.to_std(),
                ..object.obituary(now)
            };
            pool.manager().core.record_reset(cause, Phase::InUse, &dead);
        }
        if let Some(object) = self.object.take() {
            drop(Object::take(object));
        }
    }
}
