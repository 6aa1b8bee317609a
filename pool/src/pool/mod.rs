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
//!
//! The files, each importing only those listed before it (no import loop):
//!
//! | file | owns |
//! | --- | --- |
//! | `config`, `stats` | the validated settings; the books behind [`Pool::stats`] |
//! | `state` | the `Core` every part shares (settings, size-cap count, connect gate, books), and how a connection's end is decided (`Verdict`, `Fate`, `Obituary`) |
//! | `hooks` | the application's hooks and how a failed one is judged |
//! | `slot` | one pooled connection and its close tally; the parts that open one and check one at checkout; the spare stock |
//! | `backend` | the door to deadpool, the queue and semaphore underneath: checkout with and without queueing, return, status, resize, close, retain |
//! | `reaper` | the background task over the idle connections |
//! | this file | the [`Pool`] handle and the [`Connection`] it lends |
//! | `builder` | [`PoolBuilder`](crate::PoolBuilder), which builds a pool and starts its reaper |

mod backend;
pub(crate) mod builder;
mod config;
mod hooks;
mod reaper;
mod slot;
mod state;

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::pin::{Pin, pin};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Poll, ready};
use std::time::{Duration, Instant};

use tokio::time::error::Elapsed;

use self::backend::{Attempt, Backend, Lease, Refused, settle};
use self::config::Config;
pub use self::config::{BuildError, QueueMode};
use self::hooks::Hooks;
pub use self::hooks::{ConnectionInfo, HookFuture};
use self::slot::{Entry, Parts, Slot};
use self::state::{ConnectError, Fate, Verdict};
pub(crate) use self::state::{Core, Obituary};
use crate::breaker::CircuitState;
use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause, Sent};
use crate::clock::CoarseInstant;
use crate::diagnosis::{self, IdleLimit};
use crate::manager::Manager;
use crate::metrics::CheckoutFailure;
use crate::observe::Stats;

/// What one checkout attempt returns: a connection, or why not.
type Checkout<M> = Result<Lease<M>, Refused<<M as Manager>::Error>>;

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
    backend: Backend<M>,
    reaper: std::sync::OnceLock<tokio::task::AbortHandle>,
}

impl<M: Manager> Drop for Shared<M> {
    fn drop(&mut self) {
        if let Some(reaper) = self.reaper.get() {
            reaper.abort();
        }
        // Connections still pooled, or returned from now on, close with the pool.
        // The spare stock's connections point back at the pool's parts: dropping them
        // here also breaks that cycle.
        let parts = self.backend.parts();
        parts.core.start_closing();
        parts.close_spare(Eviction::Closed);
        // Through the queue, so that each idle connection's manager `detach` runs.
        drop(self.backend.retain(|_| false));
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
            .field("name", &self.core().observer.name())
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
    /// The connect circuit (see [`CircuitState`](crate::CircuitState)).
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
    /// A defect in steadypool: deadpool, the queue under the pool, failed the
    /// checkout for a reason the pool rules out when it builds it (a deadpool timeout
    /// without a runtime, a deadpool hook). Please report it, with the message.
    #[error("internal error in the pool's queue: {0}")]
    Internal(String),
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
    /// A new connection was needed, but the connect circuit stayed open for as long as
    /// the checkout could wait ([`circuit_wait`](crate::PoolBuilder::circuit_wait)):
    /// recent connects all failed, so the pool did not dial (see
    /// [`CircuitState`](crate::CircuitState)).
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
            Error::Timeout(_) | Error::Closed | Error::Internal(_) => None,
        }
    }
}

impl<E: StdError + 'static> Error<E> {
    fn from_connect(err: ConnectError<E>) -> Error<E> {
        match err {
            ConnectError::Failed(cause, source) => Error::Connect { cause, source },
            ConnectError::TimedOut(after) => Error::ConnectTimeout(after),
            ConnectError::CircuitOpen(refusal) => Error::CircuitOpen {
                cause: refusal.cause,
                last_error: refusal.last_error,
                failures: refusal.failures,
                retry_in: refusal.retry_in,
            },
            ConnectError::PoolClosed => Error::Closed,
        }
    }
}

/// Why [`Pool::warm_up`] opened no connection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WarmUpError<E: StdError + 'static> {
    /// Every connect failed: the upstream is unreachable, refuses, or a hook
    /// ([`PoolBuilder::after_connect`](crate::PoolBuilder::after_connect)) rejected every connection. The first failure.
    #[error("warm-up opened no connection: {0}")]
    Unreachable(#[source] Error<E>),
    /// No connect finished within the warm-up's timeout (a black hole, a hung
    /// handshake).
    #[error("warm-up opened no connection within {0:?}: no connect finished in time")]
    TimedOut(Duration),
    /// The pool was closed.
    #[error("the pool is closed")]
    Closed,
}

impl<E: Classify + StdError + 'static> Classify for Error<E> {
    fn classify(&self) -> Disposition {
        match self.cause() {
            Some(cause) => Disposition::Broken {
                cause,
                sent: Sent::No,
            },
            None => Disposition::Application,
        }
    }

    /// A connect whose error is permanent by its own [`Classify`] (refused
    /// credentials, a database that does not exist), or holds a TLS refusal in its
    /// chain (see [`permanent_in_source_chain`](crate::permanent_in_source_chain)).
    fn is_permanent(&self) -> bool {
        match self {
            Error::Connect { source, .. } => {
                source.is_permanent() || crate::classify::permanent_in_source_chain(source)
            }
            _ => false,
        }
    }
}

impl<M: Manager> Pool<M> {
    fn from_parts(manager: M, config: Config, hooks: Hooks<M>) -> Result<Pool<M>, BuildError> {
        let (max_size, queue_mode) = (config.max_size, config.queue_mode);
        let parts = Parts::new(manager, Core::new(config), hooks);
        Ok(Pool {
            shared: Arc::new(Shared {
                backend: Backend::new(parts, max_size, queue_mode)?,
                reaper: std::sync::OnceLock::new(),
            }),
        })
    }

    fn backend(&self) -> &Backend<M> {
        &self.shared.backend
    }

    fn parts(&self) -> &Arc<Parts<M>> {
        self.shared.backend.parts()
    }

    pub(crate) fn core(&self) -> &Core {
        &self.parts().core
    }

    /// The manager this pool was built with.
    pub fn manager(&self) -> &M {
        &self.parts().manager
    }

    /// Takes a connection: an idle one that passes the checkout checks, or a new one.
    ///
    /// Never returns a connection whose close, reset or stray bytes tokio's I/O driver
    /// has recorded (the probe reads that record; on a saturated runtime it can lag the
    /// kernel for a moment, a gap the retries of `run_idempotent` cover).
    ///
    /// Cancel-safe: dropping the future at any point loses no slot, and a connection
    /// it was checking is closed and counted (eviction reason `cancelled`).
    ///
    /// A connection from `get()` goes back to the pool when dropped, so the pool
    /// cannot tell a finished request from one abandoned half-way (a task aborted, a
    /// timeout around your code). For a request/reply on it, either use
    /// [`Pool::run`] / [`Pool::run_idempotent`], which discard a connection whose
    /// operation did not finish, or open an [`Exchange`] with
    /// [`Connection::exchange`]. The PostgreSQL and Redis drivers match replies to
    /// requests in their own task, so an abandoned query never reaches the next user.
    ///
    /// # Errors
    /// [`Error::Timeout`] after `wait_timeout`; [`Error::Connect`] /
    /// [`Error::ConnectTimeout`] when a needed new connection failed, with its cause;
    /// [`Error::CircuitOpen`] when a new connection was needed and the connect circuit
    /// stayed open through `circuit_wait`; [`Error::Closed`] after [`Pool::close`].
    pub async fn get(&self) -> Result<Connection<M>, Error<M::Error>> {
        // First without queueing: the queue takes a free permit or reports none, with
        // no waiter node and no timer. Most checkouts find an idle connection that
        // passes the free checks and finish on this first poll; they are counted with
        // one relaxed add, and recorded in the wait histogram as 0 s by the reaper.
        let mut attempt = pin!(self.backend().try_checkout());
        // `settle` called here, not through `Option::map`: passed as a function it is
        // not inlined (measured: 10 instructions per checkout).
        let first = match poll_once(attempt.as_mut()).await {
            Some(attempt) => match settle(attempt) {
                Ok(lease) => {
                    self.core().observer.immediate_checkout();
                    return Ok(Connection::new(lease));
                }
                Err(refused) => match self.error_of(refused) {
                    None => First::Busy,
                    Some(err) => First::Failed(err),
                },
            },
            // A slot was free but its connection needs I/O: a ping, or a new connect.
            None => First::Pending,
        };
        self.wait_for(first, attempt).await
    }

    /// The checkout of [`Pool::get`] that did not finish on its first poll, all of it
    /// bounded by `wait_timeout` from its start.
    async fn wait_for<F>(
        &self,
        first: First<M>,
        attempt: Pin<&mut F>,
    ) -> Result<Connection<M>, Error<M::Error>>
    where
        F: Future<Output = Attempt<M>>,
    {
        let started = Instant::now();
        // tokio's clock for the deadline (tests pause it), the precise one to report.
        let deadline = tokio::time::Instant::now() + self.core().config.wait_timeout;
        let mut result = match first {
            First::Pending => tokio::time::timeout_at(deadline, attempt).await.map(settle),
            First::Busy => self.queue(deadline).await,
            First::Failed(err) => return Err(self.failed(err)),
        };
        loop {
            match result {
                Ok(Ok(lease)) => {
                    let core = self.core();
                    core.observer.waited_checkout(started.elapsed());
                    return Ok(Connection::new(lease));
                }
                Ok(Err(refused)) => match self.error_of(refused) {
                    // What the attempt got was a placeholder (the pool is above its
                    // size after a resize), dropped: wait for a connection.
                    None => result = self.queue(deadline).await,
                    Some(err) => return Err(self.failed(err)),
                },
                Err(_) => {
                    let waited = self.core().config.wait_timeout;
                    return Err(self.failed(Error::Timeout(waited)));
                }
            }
        }
    }

    /// The checkout that found every connection busy.
    ///
    /// It yields once and tries again before it queues. A connection returned
    /// meanwhile is taken just as cheaply. And once waiters have queued, each returned
    /// connection goes to the oldest of them, which has to be scheduled before it can
    /// use it: a checkout that queued at once would always find none free and queue in
    /// turn, so the queue would never drain (measured: most checkouts queued, each
    /// paying for a timer, at 1.4x to 1.9x the cost; BENCHMARKS.md). A checkout that
    /// yields lets it drain. While it yields it counts as waiting in
    /// [`Pool::status`], as it is.
    async fn queue(&self, deadline: tokio::time::Instant) -> Result<Checkout<M>, Elapsed> {
        let waiting = Waiting::new(&self.core().yielding);
        tokio::task::yield_now().await;
        let mut attempt = pin!(self.backend().try_checkout());
        let polled = poll_once(attempt.as_mut()).await.map(settle);
        // From here the queue counts this checkout among its users.
        drop(waiting);
        match polled {
            Some(Err(Refused::Busy)) => {
                tokio::time::timeout_at(deadline, self.backend().checkout()).await
            }
            Some(result) => Ok(result),
            None => tokio::time::timeout_at(deadline, attempt).await.map(settle),
        }
    }

    /// The error a refused checkout attempt ends the checkout with; none when it
    /// found no connection free ([`Refused::Busy`]) and waits on.
    fn error_of(&self, refused: Refused<M::Error>) -> Option<Error<M::Error>> {
        match refused {
            Refused::Busy => None,
            Refused::Closed => Some(Error::Closed),
            Refused::Connect(err) => Some(Error::from_connect(err)),
            Refused::Internal(what) => Some(Error::Internal(what)),
        }
    }

    /// A failed checkout's error, counted.
    fn failed(&self, error: Error<M::Error>) -> Error<M::Error> {
        let core = self.core();
        core.observer.checkout_failed(match &error {
            Error::Timeout(_) => CheckoutFailure::Timeout,
            Error::Closed => CheckoutFailure::Closed,
            Error::Internal(_) => CheckoutFailure::Internal,
            Error::Connect { .. } => CheckoutFailure::ConnectFailed,
            Error::ConnectTimeout(_) => CheckoutFailure::ConnectTimeout,
            Error::CircuitOpen { .. } => CheckoutFailure::CircuitOpen,
        });
        error
    }

    /// The pool's occupancy now.
    pub fn status(&self) -> Status {
        let status = self.backend().occupancy();
        let spare = self.parts().spare_count();
        Status {
            max_size: status.max_size,
            size: status.size + spare,
            idle: status.available + spare,
            in_use: status.size.saturating_sub(status.available),
            waiting: status.waiting + self.core().yielding.load(Ordering::Acquire),
            circuit: self.core().gate.state(),
        }
    }

    /// What the pool has done since it was built: connections opened and closed, by
    /// cause and reason, and checkouts. See [`Stats`].
    pub fn stats(&self) -> Stats {
        self.core().observer.stats()
    }

    /// Changes `max_size`. From the moment it returns, no new connection is opened
    /// while the pool is at or above its size, idle connections beyond the new size
    /// are closed at once (those opened ahead of demand first, then the longest
    /// idle), and busy ones beyond it when they are returned: at most `max_size`
    /// connections are open once those are back. All are counted as evictions with
    /// reason `resize`. Does nothing on a closed pool.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).max_size(16).build()?;
    /// pool.resize(4);
    /// assert_eq!(pool.status().max_size, 4);
    /// # Ok(()) }
    /// ```
    pub fn resize(&self, max_size: usize) {
        if self.is_closed() {
            return;
        }
        let parts = self.parts();
        parts.core.max_size.store(max_size, Ordering::Release);
        let mut excess = parts.core.open().saturating_sub(max_size);
        let mut take = || {
            let evict = excess > 0;
            excess = excess.saturating_sub(1);
            evict
        };
        let spare = parts.drain_spare(|_| take());
        let idle = self.backend().retain(|_| !take());
        for mut slot in spare.into_iter().chain(idle) {
            slot.evict_quietly(Eviction::Resize);
        }
        self.backend().resize(max_size);
        parts.core.observer.resized(max_size);
    }

    /// Opens connections ahead of demand and reports whether the upstream can be
    /// reached: for a service that should fail fast at start instead of on its first
    /// request, and have `min_idle` connections ready when traffic arrives.
    ///
    /// Opens connections until `min_idle` (at least one) are idle, all at once
    /// through the connect gate (so at most `max_concurrent_connects` dial together),
    /// each as a checkout's connect would: within `connect_timeout`, with the
    /// [`after_connect`](crate::PoolBuilder::after_connect) hook, counted in the books. They
    /// wait in the pool for the first checkouts. Returns how many it opened: zero when
    /// enough were idle already, or the size cap left no room. Connects still under
    /// way after `timeout` are abandoned. The reaper keeps `min_idle` from then on.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).min_idle(4).build()?;
    /// // Fails at start, with the reason, when the upstream cannot be reached.
    /// let opened = pool.warm_up(Duration::from_secs(10)).await?;
    /// assert!(opened <= 4);
    /// # Ok(()) }
    /// ```
    ///
    /// # Errors
    /// Only when it opened no connection and needed to: [`WarmUpError::Unreachable`]
    /// with the first connect's failure when at least one connect failed (also when
    /// the others were still under way at `timeout`: a failure says more than a
    /// timeout), [`WarmUpError::TimedOut`] when none finished within `timeout`,
    /// [`WarmUpError::Closed`] after [`Pool::close`]. Some connects failing while
    /// others succeed is not an error: the failures are in [`Pool::stats`] and the
    /// metrics.
    pub async fn warm_up(&self, timeout: Duration) -> Result<usize, WarmUpError<M::Error>> {
        if self.is_closed() {
            return Err(WarmUpError::Closed);
        }
        let parts = self.parts();
        let wanted = parts
            .core
            .config
            .min_idle
            .max(1)
            .saturating_sub(self.status().idle);
        // Tasks, so that the connects run in parallel; aborted when the set drops, at
        // the deadline or when this future is dropped, which gives back their room.
        let mut connects = tokio::task::JoinSet::new();
        for _ in 0..wanted {
            connects.spawn(Arc::clone(parts).open_spare());
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut opened = 0;
        let mut first_failure = None;
        while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, connects.join_next()).await {
            match joined {
                Ok(Some(Ok(()))) => opened += 1,
                Ok(Some(Err(err))) => {
                    first_failure.get_or_insert(err);
                }
                // No room under the size cap: busy connections hold it.
                Ok(None) => {}
                // The manager's connect panicked: as in a checkout, the caller sees it.
                Err(err) if err.is_panic() => std::panic::resume_unwind(err.into_panic()),
                Err(_) => {}
            }
        }
        let everything_failed = opened == 0 && wanted > 0;
        match first_failure {
            Some(err) if everything_failed => {
                Err(WarmUpError::Unreachable(Error::from_connect(err)))
            }
            None if everything_failed && !connects.is_empty() => {
                Err(WarmUpError::TimedOut(timeout))
            }
            _ => Ok(opened),
        }
    }

    /// Closes the idle connections `keep` rejects, and returns how many it closed:
    /// for rotated credentials, a backend being drained, or any state the application
    /// can read off a connection. Each is counted as an eviction with reason
    /// `rejected`.
    ///
    /// `keep` sees every idle connection, those in deadpool's queue and those opened
    /// ahead of demand, with its [`ConnectionInfo`]. Connections in use are not seen
    /// and not touched: to retire those too, mark them yourself
    /// ([`Connection::mark_broken`]) or run `retain` again once they are back. `keep`
    /// runs under the pool's lock: keep it quick, and do no I/O in it. If it
    /// panics, the connections already rejected are closed, the rest are kept, and
    /// the panic goes on to the caller.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::net::SocketAddr;
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("backends.internal:7000")).build()?;
    /// let draining: SocketAddr = "10.0.0.7:7000".parse()?;
    /// let closed = pool.retain(|_conn, info| info.peer != Some(draining));
    /// println!("closed {closed} idle connections to {draining}");
    /// # Ok(()) }
    /// ```
    pub fn retain(&self, mut keep: impl FnMut(&M::Connection, ConnectionInfo) -> bool) -> usize {
        let parts = self.parts();
        let now = CoarseInstant::now();
        let mut panicked = None;
        // A panic must not unwind through deadpool's lock (it would poison it) nor
        // the spare stock's: it is held until both are released.
        let mut reject = |slot: &Slot<M>| {
            if panicked.is_some() {
                return false;
            }
            let info = slot.info(now, now.saturating_duration_since(slot.idle_since));
            match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| keep(&slot.conn, info)))
            {
                Ok(kept) => !kept,
                Err(panic) => {
                    panicked = Some(panic);
                    false
                }
            }
        };
        let spare = parts.drain_spare(&mut reject);
        let idle = self.backend().retain(|slot| !reject(slot));
        let mut closed = 0;
        for mut slot in spare.into_iter().chain(idle) {
            slot.evict_quietly(Eviction::Rejected);
            closed += 1;
        }
        parts.core.observer.retained(closed);
        if let Some(panic) = panicked {
            std::panic::resume_unwind(panic);
        }
        closed
    }

    /// Closes the pool: idle connections close now, busy ones when returned, waiting
    /// and future checkouts fail with [`Error::Closed`], and the reaper stops. Every
    /// connection is counted as an eviction with reason `closed`.
    pub fn close(&self) {
        let parts = self.parts();
        parts.core.start_closing();
        // Checkouts waiting for their turn to dial (a gate permit, or the open
        // circuit) are not in deadpool's queue: they learn it here.
        parts.wake_waiting_turns();
        parts.close_spare(Eviction::Closed);
        drop(self.backend().retain(|_| false));
        self.backend().close();
    }

    /// Whether [`Pool::close`] was called.
    pub fn is_closed(&self) -> bool {
        self.backend().is_closed()
    }

    /// What the pool has learned about the path's idle limit, and the idle time after
    /// which it closes connections now (see [`IdleLimit`](crate::IdleLimit)).
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
        self.core().learner.current()
    }
}

/// How the first, non-queueing attempt of a checkout ended.
enum First<M: Manager> {
    /// No connection free (or a placeholder): yield, then queue.
    Busy,
    /// A free slot whose connection needs I/O first.
    Pending,
    Failed(Error<M::Error>),
}

#[cfg(feature = "bench-hooks")]
impl<M: Manager> Pool<M> {
    /// Runs one reaper tick now, as the reaper task does, and returns how long its
    /// pass over the idle connections held deadpool's lock (checkouts and returns wait
    /// that long). For the `reaper-pass` benchmark; not part of the API.
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).build()?;
    /// let held = pool.reaper_tick().await;
    /// println!("the pass held the queue's lock for {held:?}");
    /// # Ok(()) }
    /// ```
    #[doc(hidden)]
    pub async fn reaper_tick(&self) -> Duration {
        reaper::tick(self.backend()).await
    }
}

/// Counts a checkout as waiting while it yields before queueing.
struct Waiting<'a>(&'a AtomicUsize);

impl<'a> Waiting<'a> {
    fn new(count: &'a AtomicUsize) -> Waiting<'a> {
        count.fetch_add(1, Ordering::AcqRel);
        Waiting(count)
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
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
/// On its way back the pool asks the manager ([`Manager::broken`]) whether it is
/// still usable. If an operation shows the connection is broken, call
/// [`Connection::mark_broken`] so it is discarded (and counted) instead of returned.
pub struct Connection<M: Manager> {
    /// Always a lease of a connection; `None` only once `Drop` or a method that
    /// consumes the handle has taken it.
    object: Option<Lease<M>>,
    /// Why the application marked it broken, if it did: it is then closed on return.
    /// Kept here, not in the slot, like `exchange_open`: the slot's first cache line,
    /// which every checkout and return read, has no room left for them.
    broken: Option<ResetCause>,
    /// An [`Exchange`] began on it and did not finish: a reply may be in flight, so
    /// it is closed on return.
    exchange_open: bool,
}

impl<M: Manager> Connection<M> {
    #[inline]
    fn new(object: Lease<M>) -> Connection<M> {
        Connection {
            object: Some(object),
            broken: None,
            exchange_open: false,
        }
    }

    fn slot(&self) -> &Slot<M> {
        match self.object.as_ref().map(Lease::entry) {
            Some(Entry::Live(slot)) => slot,
            _ => unreachable!("a Connection holds a live slot until dropped"),
        }
    }

    fn slot_mut(&mut self) -> &mut Slot<M> {
        match self.object.as_mut().map(Lease::entry_mut) {
            Some(Entry::Live(slot)) => slot,
            _ => unreachable!("a Connection holds a live slot until dropped"),
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
        self.broken = Some(cause);
    }

    /// Whether this connection served an earlier checkout (it sat in the pool before).
    pub(crate) fn is_reused(&self) -> bool {
        self.object.as_ref().is_some_and(Lease::reused) || self.slot().spare
    }

    /// Whether [`Connection::mark_broken`] was called.
    pub fn is_marked_broken(&self) -> bool {
        self.broken.is_some()
    }

    /// Opens an exchange: a request and its reply, written and read through the
    /// returned guard. If the guard is dropped before [`Exchange::finish`] (the task
    /// was aborted, a timeout cut it, an error returned early with `?`), the
    /// connection is closed when it returns to the pool, and counted as an eviction
    /// with reason `cancelled`, instead of handing its late reply to the next user.
    ///
    /// ```no_run
    /// # async fn demo(pool: steadypool::Pool<steadypool::drivers::tcp::TcpManager>) -> Result<(), Box<dyn std::error::Error>> {
    /// use tokio::io::{AsyncReadExt, AsyncWriteExt};
    ///
    /// let mut conn = pool.get().await?;
    /// let mut exchange = conn.exchange();
    /// exchange.write_all(b"GET balance\n").await?;
    /// let mut reply = [0u8; 8];
    /// exchange.read_exact(&mut reply).await?;
    /// exchange.finish();
    /// # Ok(()) }
    /// ```
    pub fn exchange(&mut self) -> Exchange<'_, M> {
        self.exchange_open = true;
        Exchange { conn: self }
    }

    /// Ends the open exchange: its reply was read in full, and the connection may go
    /// back to the pool.
    pub(crate) fn finish_exchange(&mut self) {
        self.exchange_open = false;
    }

    /// Takes the connection out of the pool for good; the pool opens another in its
    /// place when needed. Counted as an eviction with reason `detached`.
    pub fn detach(mut self) -> M::Connection {
        let slot = self.take_slot();
        let Slot {
            conn, mut tally, ..
        } = *slot;
        tally.fate = Some(Fate::Evicted(Eviction::Detached));
        conn
    }

    /// Closes the connection instead of returning it, counted with `reason`: for a
    /// connection whose operation did not finish.
    pub(crate) fn discard(mut self, reason: Eviction) {
        let mut slot = self.take_slot();
        slot.tally.parts.core.observer.unfinished(slot.id);
        slot.evict_quietly(reason);
    }

    fn take_slot(&mut self) -> Box<Slot<M>> {
        match self.object.take().map(Lease::take) {
            Some(Entry::Live(slot)) => slot,
            _ => unreachable!("a Connection holds a live slot until dropped"),
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
        let slot = self.slot();
        f.debug_struct("Connection")
            .field("id", &slot.id)
            .field("peer", &slot.peer)
            .field("broken", &self.broken)
            .field("exchange_open", &self.exchange_open)
            .finish()
    }
}

impl<M: Manager> Drop for Connection<M> {
    fn drop(&mut self) {
        // The object stays in its field on the common path, and goes back to the pool
        // when the field drops after this: taking it out would move it once more.
        let Some(Entry::Live(slot)) = self.object.as_mut().map(Lease::entry_mut) else {
            return;
        };
        let now = CoarseInstant::now();
        // A panic while the application held the connection may have left a request
        // half-way; and the manager's own check must not run (and maybe panic) during
        // unwinding.
        let healthy = self.broken.is_none()
            && !self.exchange_open
            && now < slot.retire_at
            && !std::thread::panicking();
        if healthy && slot.tally.parts.manager.broken(&slot.conn).is_none() {
            if let Some(limit) = slot.tally.parts.manager.announced_idle_limit(&slot.conn) {
                slot.tally.parts.core.announced(limit);
            }
            if diagnosis::teaches_idle_limit(slot.reused_after) {
                slot.tally
                    .parts
                    .core
                    .record_reuse(slot.reused_after.to_std());
            }
            // One relaxed load for the on-return hook and the hand-off both: this is
            // every checkout's return. Read before the store below, so that the slot's
            // address need not be loaded again after it (one instruction, measured).
            let detour = slot.tally.parts.detour();
            slot.idle_since = now;
            if detour {
                self.return_detour();
            }
            return;
        }
        self.close_on_return(now);
    }
}

impl<M: Manager> Connection<M> {
    /// A healthy return that has more to do than go back to the queue: through the
    /// on-return hook first if there is one, else to a checkout waiting for its turn
    /// to dial ([`give_back`]).
    #[cold]
    #[inline(never)]
    fn return_detour(&mut self) {
        let Some(object) = self.object.take() else {
            return;
        };
        let hooked = match object.entry() {
            Entry::Live(slot) => slot.tally.parts.hooks.on_return.is_some(),
            Entry::Placeholder => false,
        };
        if hooked {
            return_through_hook(object);
        } else {
            give_back(object);
        }
    }
}

/// Puts a healthy returned connection back: handed to a checkout that waits for its
/// turn to dial when there is one ([`Parts::hand_off`]), else
/// into the queue. The hand-off takes it out of deadpool's queue first, where that
/// checkout, which deadpool counts as opening a connection, would not look.
#[cold]
#[inline(never)]
fn give_back<M: Manager>(lease: Lease<M>) {
    let parts = match lease.entry() {
        Entry::Live(slot) if slot.tally.parts.awaited() => Arc::clone(&slot.tally.parts),
        // Back to the queue as it drops.
        _ => return,
    };
    if let Entry::Live(slot) = lease.withdraw() {
        parts.hand_off(slot);
    }
}

/// Hands a healthy returned connection to a task that runs the on-return hook, and
/// puts it back in the pool only if the hook succeeds. `Drop` cannot wait for the
/// hook: the connection stays checked out (in use, holding its slot) until the hook
/// is done.
fn return_through_hook<M: Manager>(object: Lease<M>) {
    let returning = Returning(Some(object));
    match tokio::runtime::Handle::try_current() {
        Ok(runtime) => drop(runtime.spawn(returning.run())),
        // No runtime to run the hook on: dropping the guard closes the connection
        // (`cancelled`) rather than returning it without its hook.
        Err(_) => drop(returning),
    }
}

/// A returned connection on its way back through the on-return hook. Dropped before
/// the hook succeeded (the hook failed, panicked or was cut by `wait_timeout`, or the
/// runtime shut down), it closes the connection instead of returning it.
struct Returning<M: Manager>(Option<Lease<M>>);

impl<M: Manager> Returning<M> {
    async fn run(mut self) {
        let Some(Entry::Live(slot)) = self.0.as_mut().map(Lease::entry_mut) else {
            return;
        };
        let parts = Arc::clone(&slot.tally.parts);
        let Some(hook) = &parts.hooks.on_return else {
            return;
        };
        let info = slot.info(CoarseInstant::now(), Duration::ZERO);
        let hooked = hooks::run::<M>(
            hook,
            hooks::Hook::OnReturn,
            &mut slot.conn,
            info,
            &parts.core,
        );
        let verdict = match tokio::time::timeout(parts.core.config.wait_timeout, hooked).await {
            Ok(verdict) => verdict,
            Err(_) => Verdict::Evict(Eviction::Cancelled),
        };
        if matches!(verdict, Verdict::Keep) {
            slot.idle_since = CoarseInstant::now();
            if let Some(lease) = self.0.take() {
                give_back(lease);
            }
            return;
        }
        let now = CoarseInstant::now();
        let dead = slot.obituary(now);
        slot.condemn(verdict, Phase::InUse, &dead);
    }
}

impl<M: Manager> Drop for Returning<M> {
    fn drop(&mut self) {
        let Some(object) = self.0.take() else {
            return;
        };
        if let Entry::Live(mut slot) = object.take()
            && slot.tally.fate.is_none()
        {
            slot.evict_quietly(Eviction::Cancelled);
        }
    }
}

impl<M: Manager> Connection<M> {
    /// Closes a returned connection that must not be reused, counted with why: marked
    /// broken, called broken by its manager, past its lifetime, or returned with an
    /// exchange open or during a panic.
    #[cold]
    #[inline(never)]
    fn close_on_return(&mut self, now: CoarseInstant) {
        let marked = self.broken;
        let exchange_open = self.exchange_open;
        let slot = self.slot_mut();
        let verdict = if let Some(cause) = marked {
            Verdict::Reset(cause, None)
        } else if exchange_open || std::thread::panicking() {
            Verdict::Evict(Eviction::Cancelled)
        } else if let Some(broken) = slot.tally.parts.manager.broken(&slot.conn) {
            Verdict::from(broken)
        } else {
            Verdict::Evict(Eviction::MaxLifetime)
        };
        // What the path did to it depends on how long it sat idle before this
        // checkout, not on how long the application held it.
        let dead = Obituary {
            idle: slot.reused_after.to_std(),
            ..slot.obituary(now)
        };
        slot.condemn(verdict, Phase::InUse, &dead);
        drop(self.take_slot());
    }
}

/// A request and its reply in flight on a [`Connection`]; see
/// [`Connection::exchange`]. Dereferences to the manager's connection.
pub struct Exchange<'c, M: Manager> {
    conn: &'c mut Connection<M>,
}

impl<M: Manager> Exchange<'_, M> {
    /// The reply was read in full: the connection may go back to the pool.
    pub fn finish(self) {
        self.conn.finish_exchange();
    }
}

impl<M: Manager> Deref for Exchange<'_, M> {
    type Target = M::Connection;

    fn deref(&self) -> &M::Connection {
        self.conn
    }
}

impl<M: Manager> DerefMut for Exchange<'_, M> {
    fn deref_mut(&mut self) -> &mut M::Connection {
        self.conn
    }
}

impl<M: Manager> fmt::Debug for Exchange<'_, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exchange")
            .field("conn", &self.conn)
            .finish()
    }
}
