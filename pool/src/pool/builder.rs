//! [`PoolBuilder`]: every knob, its default, and the failure it prevents.

use std::time::Duration;

use super::config::{BuildError, Config, QueueMode};
use super::hooks::{ConnectionInfo, HookFuture, Hooks};
use super::{Pool, reaper};
use crate::dial::{Dialer, Keepalive};
use crate::manager::Manager;
use crate::retry::policy::RetryPolicy;

impl<M: Manager> Pool<M> {
    /// Starts configuring a pool of `manager`'s connections. See [`PoolBuilder`].
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000")).max_size(8).build()?;
    /// # Ok(()) }
    /// ```
    pub fn builder(manager: M) -> PoolBuilder<M> {
        PoolBuilder::new(manager)
    }
}

/// Configures and builds a [`Pool`].
///
/// Defaults are chosen for a service behind a load balancer or NAT:
///
/// | knob | default | prevents |
/// |---|---|---|
/// | [`max_size`](Self::max_size) | 10 | overloading the upstream's connection limit |
/// | [`min_idle`](Self::min_idle) | 0 | connect latency on a burst after a quiet spell |
/// | [`wait_timeout`](Self::wait_timeout) | 30 s | a request hanging forever on an exhausted pool |
/// | [`connect_timeout`](Self::connect_timeout) | 5 s, shared among the resolved addresses | a SYN into a black hole hanging ~127 s; a black-holed first address leaving no time for the next |
/// | [`ping_timeout`](Self::ping_timeout) | 2 s | a checkout ping into a black hole hanging |
/// | [`idle_timeout`](Self::idle_timeout) | 45 s | reusing a connection a middlebox already dropped |
/// | [`max_lifetime`](Self::max_lifetime) | 30 min | pinning to one backend forever; stale DNS |
/// | [`max_lifetime_jitter`](Self::max_lifetime_jitter) | 2.5 % of `max_lifetime` | a fleet's connections expiring together |
/// | [`check_after`](Self::check_after) | 500 ms | zombies the probe cannot see (silent drops), at one round trip per long-idle checkout |
/// | [`keepalive`](Self::keepalive) | 10 s / 3 s / 3 | dead peers found after 2 h 11 min (kernel default) |
/// | [`user_timeout`](Self::user_timeout) | keepalive detection time (19 s) | a request into a black hole waiting ~15 min |
/// | [`nodelay`](Self::nodelay) | on | Nagle delaying small requests by up to 40 ms |
/// | [`dialer`](Self::dialer) | [`Dialer::new`] | the four socket settings above, set at once from a dialer built elsewhere |
/// | [`queue_mode`](Self::queue_mode) | FIFO | connections idling out while the pool is busy |
/// | [`reaper_interval`](Self::reaper_interval) | 1 s | dead sockets lingering in `CLOSE_WAIT` |
/// | [`learn_idle_limit`](Self::learn_idle_limit) | on | repeated resets from an idle limit below `idle_timeout` |
/// | [`max_concurrent_connects`](Self::max_concurrent_connects) | a width from 2 (after a failure or an outage) to 16 (while connects succeed) | a burst of waiters, or a restarted upstream's every client, dialing at once; a burst after an idle close reopening its connections two at a time |
/// | [`circuit_open_after`](Self::circuit_open_after) | 3 failed connects | every checkout dialing an upstream that is down |
/// | [`circuit_open_for`](Self::circuit_open_for) | 250 ms | trial connects hammering a down upstream, or in lock-step across a fleet |
/// | [`circuit_first_open`](Self::circuit_first_open) | 100 ms (at most `circuit_open_for`) | a pool turning connects away long after a short restart of its upstream |
/// | [`circuit_wait`](Self::circuit_wait) | 2 s (at most `wait_timeout`) | a request failing at once during an upstream's restart, though it had time to wait |
/// | [`retry_policy`](Self::retry_policy) | [`RetryPolicy::default`] | retries without end, without pause, or multiplying an outage's load |
/// | [`after_connect`](Self::after_connect), [`before_checkout`](Self::before_checkout), [`on_return`](Self::on_return) | none | session setup repeated by hand on every checkout |
///
/// Common idle limits on the path, to set [`idle_timeout`](Self::idle_timeout) below:
///
/// | intermediary | idle limit |
/// |---|---|
/// | AWS ALB | 60 s |
/// | AWS NAT gateway | 350 s |
/// | Azure load balancer | 4 min |
/// | nginx `keepalive_timeout` | 75 s |
/// | Node.js `server.keepAliveTimeout` | 5 s |
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadypool::BuildError> {
/// use std::time::Duration;
/// use steadypool::{drivers::tcp::TcpManager, Pool};
///
/// let pool = Pool::builder(TcpManager::new("127.0.0.1:6379"))
///     .name("cache")
///     .max_size(16)
///     .idle_timeout(Some(Duration::from_secs(50)))
///     .build()?;
/// assert_eq!(pool.status().max_size, 16);
/// # Ok(()) }
/// ```
///
/// # Hooks
///
/// Code of yours that runs on a connection: each hook is a closure that borrows the
/// connection and returns a boxed future ([`HookFuture`]), with the manager's error
/// type. Each is optional, and costs nothing when not set.
///
/// | hook | runs | on error | counted as |
/// |---|---|---|---|
/// | [`after_connect`](Self::after_connect) | on every new connection, before anyone sees it, within `connect_timeout` | the connect failed: the checkout gets [`Error::Connect`](crate::Error::Connect); counts toward opening the connect circuit | a failed connect (`connect_failures`, `resets_total{phase="connect"}`) with the error's cause, `other` unless it classifies as broken |
/// | [`before_checkout`](Self::before_checkout) | on every checkout of a connection that sat in the pool, after the free checks and the ping | the connection is closed; the checkout takes the next one or opens one | a reset with the error's cause in phase `checkout` if the error classifies as broken with a known cause, else eviction `hook_failed` |
/// | [`on_return`](Self::on_return) | on a task of its own once a healthy connection is dropped, before it is idle again, within `wait_timeout` | the connection is closed | a reset with the error's cause in phase `in_use` if broken with a known cause, else eviction `hook_failed`; cut by `wait_timeout`, a panic or a runtime shutting down: eviction `cancelled` |
///
/// "Broken with a known cause" is an error that [classifies](crate::Classify) as
/// [`Disposition::Broken`](crate::Disposition::Broken) with a cause other than
/// `other`: the connection died under the hook (`peer_reset`, `peer_closed`, ...),
/// trouble the reset counters must show. Any other error is the hook turning the
/// connection down, on purpose: a server's error answer, or one the hook made up
/// (`io::Error::other("stale")` classifies as broken with cause `other`).
///
/// A hook that panics in `after_connect` or `before_checkout` unwinds into the
/// checkout, as a panicking manager would, and the pool goes on. In
/// `before_checkout` the connection it held is closed and counted (`cancelled`). In
/// `after_connect` the connection is not open yet (it opens when its hook
/// succeeds): it is closed, and counted neither as opened nor as closed.
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder<M: Manager> {
    manager: M,
    config: Config,
    hooks: Hooks<M>,
    named: bool,
}

impl<M: Manager> PoolBuilder<M> {
    pub(crate) fn new(manager: M) -> Self {
        PoolBuilder {
            manager,
            config: Config::default(),
            hooks: Hooks::default(),
            named: false,
        }
    }

    /// The pool's name: the `pool` label on every metric and a field on every trace
    /// event. Default: where the manager connects ([`Manager::target`], for example
    /// `"127.0.0.1:7000"`), or `"pool"`; a second unnamed pool with the same default
    /// in one process gets `"#2"` appended, and so on, so that unnamed pools never
    /// share their series.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self.named = true;
        self
    }

    /// The most connections open at once, idle and in use together. Default 10.
    pub fn max_size(mut self, max_size: usize) -> Self {
        self.config.max_size = max_size;
        self
    }

    /// Idle connections the reaper keeps ready. Default 0. Set it when a burst after a
    /// quiet spell must not pay connect latency; at most `max_size`.
    pub fn min_idle(mut self, min_idle: usize) -> Self {
        self.config.min_idle = min_idle;
        self
    }

    /// The longest [`Pool::get`] may take, waiting for a free slot and connecting
    /// included. Default 30 s. Prevents requests hanging on an exhausted pool.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.config.wait_timeout = timeout;
        self
    }

    /// The longest a new connection may take: resolving, TCP connect and the manager's
    /// handshake. Default 5 s. Without it a SYN into a black hole waits ~127 s. The
    /// dial shares it among a name's resolved addresses, so a black-holed first one
    /// leaves time for the next. Sets [`Dialer::connect_timeout`] on the pool's dialer.
    pub fn connect_timeout(self, timeout: Duration) -> Self {
        self.map_dialer(|dialer| dialer.connect_timeout(timeout))
    }

    /// The longest a checkout ping may take before the connection counts as dead
    /// (`ping_failed`). Default 2 s.
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.config.ping_timeout = timeout;
        self
    }

    /// Close connections idle longer than this. Default 45 s, below the common
    /// load balancer limits (AWS ALB 60 s, nginx 75 s): a middlebox that drops an idle
    /// flow makes the next request on it fail with `ECONNRESET`. `None` sets no idle
    /// limit of the pool's own: the limit learned from resets
    /// ([`learn_idle_limit`](Self::learn_idle_limit), on by default) still applies,
    /// and keepalive still finds dead connections.
    pub fn idle_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.idle_timeout = timeout;
        self
    }

    /// Retire connections older than this, minus a random jitter. Default 30 min.
    /// Lets DNS changes and rebalanced backends reach long-lived pools. `None` keeps
    /// connections forever.
    pub fn max_lifetime(mut self, lifetime: Option<Duration>) -> Self {
        self.config.max_lifetime = lifetime;
        self
    }

    /// Each connection's lifetime is `max_lifetime` minus a random amount up to this.
    /// Default 2.5 % of `max_lifetime` (HikariCP's choice). Prevents every connection
    /// of a fleet, opened together at deploy, from expiring together.
    pub fn max_lifetime_jitter(mut self, jitter: Duration) -> Self {
        self.config.max_lifetime_jitter = Some(jitter);
        self
    }

    /// A checkout pings ([`Manager::ping`]) connections idle longer than this; younger
    /// ones get only the free probe. Default 500 ms (HikariCP's bypass window). Catches
    /// flows dropped silently, at ~20 µs per checkout after an idle spell.
    pub fn check_after(mut self, idle: Duration) -> Self {
        self.config.check_after = idle.into();
        self
    }

    /// TCP keepalive timing on every socket, or `None` for the kernel's (off).
    /// Default 10 s idle, 3 s interval, 3 probes: a dead peer or a black-holed flow is
    /// found 19 s after the last traffic instead of 2 h 11 min, and the probes keep NAT
    /// entries alive. Idle and interval are whole seconds, 1 to 32767; count 1 to 127.
    /// Sets [`Dialer::keepalive`] on the pool's dialer.
    pub fn keepalive(self, keepalive: Option<Keepalive>) -> Self {
        self.map_dialer(|dialer| dialer.keepalive(keepalive))
    }

    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the
    /// connection fails with `ETIMEDOUT`. `None` leaves the kernel's (~15 min).
    /// Default: the keepalive detection time (`idle + interval x count`, 19 s), since
    /// Linux also applies it to keepalive and the two must agree. Sets
    /// [`Dialer::user_timeout`] on the pool's dialer.
    pub fn user_timeout(self, timeout: Option<Duration>) -> Self {
        self.map_dialer(|dialer| dialer.user_timeout(timeout))
    }

    /// `TCP_NODELAY`. Default on: requests leave at once.
    pub fn nodelay(self, nodelay: bool) -> Self {
        self.map_dialer(|dialer| dialer.nodelay(nodelay))
    }

    /// Every socket setting at once: the connect timeout, keepalive, the user
    /// timeout and nodelay, from a [`Dialer`] you built (or share with code that
    /// dials outside the pool). Default [`Dialer::new`]. Replaces what
    /// [`connect_timeout`](Self::connect_timeout), [`keepalive`](Self::keepalive),
    /// [`user_timeout`](Self::user_timeout) and [`nodelay`](Self::nodelay) set before
    /// it; those called after it change this dialer. `build()` checks it
    /// ([`Dialer::validate`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadypool::BuildError> {
    /// use std::time::Duration;
    /// use steadypool::{drivers::tcp::TcpManager, Dialer, Keepalive, Pool};
    ///
    /// let dialer = Dialer::new()
    ///     .connect_timeout(Duration::from_secs(2))
    ///     .keepalive(Some(Keepalive::new(Duration::from_secs(5), Duration::from_secs(1), 3)));
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:6379"))
    ///     .dialer(dialer)
    ///     .build()?;
    /// # drop(pool); Ok(()) }
    /// ```
    pub fn dialer(mut self, dialer: Dialer) -> Self {
        self.config.dialer = dialer;
        self
    }

    /// Changes the pool's dialer: the one place the socket knobs are kept.
    pub(crate) fn map_dialer(mut self, change: impl FnOnce(Dialer) -> Dialer) -> Self {
        self.config.dialer = change(self.config.dialer);
        self
    }

    /// Which idle connection a checkout takes. Default [`QueueMode::Fifo`].
    pub fn queue_mode(mut self, mode: QueueMode) -> Self {
        self.config.queue_mode = mode;
        self
    }

    /// How often the reaper probes idle connections, evicts expired ones and refills
    /// `min_idle`. Default 1 s: no socket whose peer closed stays in `CLOSE_WAIT` longer.
    /// The first pass comes between half an interval and one interval after `build`,
    /// at random, so that pools built together do not probe and refill in step.
    pub fn reaper_interval(mut self, interval: Duration) -> Self {
        self.config.reaper_interval = interval;
        self
    }

    /// Learn the path's idle limit from connections found dead after idling, and
    /// evict idle connections safely below it (never later than `idle_timeout`).
    /// Default on. Prevents a stream of resets when a middlebox's idle limit is shorter
    /// than `idle_timeout`.
    pub fn learn_idle_limit(mut self, learn: bool) -> Self {
        self.config.learn_idle_limit = learn;
        self
    }

    /// The most connects in flight at once: a hard ceiling on the connect gate's
    /// width (see [`CircuitState`](crate::CircuitState)). Further connects wait their
    /// turn within `wait_timeout`.
    ///
    /// Default: a width that follows the upstream's health, from 2 up to 16. It starts
    /// at 2, grows by one with each successful connect, and stays wide across idle
    /// periods, so a burst of checkouts that finds its idle connections closed by a
    /// load balancer reopens them together instead of two at a time. A failed connect
    /// narrows it back to 2 at once, and so does the circuit closing after an outage,
    /// from where it grows again. The narrow width prevents a burst of checkouts, or
    /// every pool of a fleet when the upstream restarts, from opening a storm of
    /// connections and handshakes against an upstream that is failing or just came
    /// back; the ceiling keeps a large pool from opening hundreds at the same moment.
    ///
    /// Set, the value is the ceiling and is never exceeded (the width still narrows to
    /// 2, or the value when lower, after a failure): set it for an upstream whose
    /// handshake is costly (TLS, authentication) or that limits new connections.
    /// [`build`](Self::build) refuses zero.
    ///
    /// A checkout waiting for its turn takes a healthy connection that another user
    /// returns meanwhile, and then does not dial at all.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadypool::BuildError> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// // A costly handshake: never more than 4 at once, 2 after a failure.
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:5432"))
    ///     .max_concurrent_connects(4)
    ///     .build()?;
    /// # drop(pool);
    /// # Ok(()) }
    /// ```
    pub fn max_concurrent_connects(mut self, connects: usize) -> Self {
        self.config.max_concurrent_connects = Some(connects);
        self
    }

    /// Open the connect circuit after this many consecutive failed connects. Default
    /// 3. While open, checkouts that need a new connection fail at once with
    /// [`Error::CircuitOpen`](crate::Error::CircuitOpen) instead of each dialing an
    /// upstream that is down. `u32::MAX` in effect turns the circuit off.
    pub fn circuit_open_after(mut self, failures: u32) -> Self {
        self.config.circuit_open_after = failures;
        self
    }

    /// How long the circuit stays open at most before a trial connect. Default 250 ms.
    /// The first open period is 100 ms (or this, when shorter) and each failed trial
    /// doubles it up to this cap; each period is drawn at random between half of its
    /// length and all of it, so a fleet of pools does not probe in lock-step. The cap
    /// bounds how long a pool keeps turning connects away after its upstream is back;
    /// a longer cap means fewer trial connects against an upstream that stays down
    /// (with the default, 4 to 8 per pool per second).
    pub fn circuit_open_for(mut self, period: Duration) -> Self {
        self.config.circuit_open_for = period;
        self
    }

    /// The first open period after the connect circuit opens; each failed trial
    /// doubles it, up to [`circuit_open_for`](Self::circuit_open_for). Default 100 ms,
    /// or `circuit_open_for` when that is shorter. A short first period finds an
    /// upstream that restarted in a fraction of a second soon after its return; the
    /// doubling keeps trials rare through a long outage. Set it to `circuit_open_for`
    /// for a fixed period. [`build`](Self::build) refuses zero and a value above
    /// `circuit_open_for`
    /// ([`BuildError::FirstOpenAboveOpenFor`](crate::BuildError::FirstOpenAboveOpenFor)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadypool::BuildError> {
    /// use std::time::Duration;
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// // Trials 50 ms, 100 ms, 200 ms, then every 200 ms (each period jittered).
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
    ///     .circuit_first_open(Duration::from_millis(50))
    ///     .circuit_open_for(Duration::from_millis(200))
    ///     .build()?;
    /// # drop(pool);
    /// # Ok(()) }
    /// ```
    pub fn circuit_first_open(mut self, period: Duration) -> Self {
        self.config.circuit_first_open = Some(period);
        self
    }

    /// How long a checkout that needs a new connection waits for an open connect
    /// circuit to let it through, within `get()`'s `wait_timeout` and a run's deadline.
    /// Default 2 s, or `wait_timeout` when that is shorter.
    ///
    /// A waiting checkout is woken as soon as a trial connect succeeds, and may make
    /// the trial itself when an open period ends: a request made during an upstream's
    /// restart (a PostgreSQL fast restart takes about a second) is answered once it is
    /// back, instead of failing with [`Error::CircuitOpen`](crate::Error::CircuitOpen)
    /// while it had time left. The bound keeps a hard outage from piling up work:
    /// after it, the checkout fails with `CircuitOpen` as before. Zero fails fast.
    /// Healthy pooled connections are handed out without waiting either way, and a
    /// waiting checkout takes one that another user returns meanwhile (the trial's,
    /// after its first request) instead of dialing.
    ///
    /// [`build`](Self::build) refuses a value above `wait_timeout`
    /// ([`BuildError::CircuitWaitAboveWaitTimeout`](crate::BuildError::CircuitWaitAboveWaitTimeout)).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")] async fn main() -> Result<(), steadypool::BuildError> {
    /// use std::time::Duration;
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// // Fail fast while the upstream is down: the caller has a fallback.
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
    ///     .circuit_wait(Duration::ZERO)
    ///     .build()?;
    /// # drop(pool);
    /// let too_long = Pool::builder(TcpManager::new("127.0.0.1:7000"))
    ///     .wait_timeout(Duration::from_secs(1))
    ///     .circuit_wait(Duration::from_secs(5))
    ///     .build();
    /// assert!(too_long.is_err());
    /// # Ok(()) }
    /// ```
    pub fn circuit_wait(mut self, wait: Duration) -> Self {
        self.config.circuit_wait = Some(wait);
        self
    }

    /// Attempts, deadline, backoff and retry budget for [`Pool::run`] and its
    /// siblings. Default [`RetryPolicy::default`]. Its deadline must be at least
    /// `connect_timeout`.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }

    /// Runs `hook` on every new connection before anyone sees it: session setup
    /// (`SET search_path`, `AUTH`, `SELECT 2`), or a check that it reached the
    /// right server. Default: none. Bounded, with the manager's connect, by
    /// `connect_timeout`.
    ///
    /// The connection is not open until its hook succeeded: a failing hook is a
    /// **failed connect** in every way. The checkout that needed it gets
    /// [`Error::Connect`](crate::Error::Connect) with the hook's error and its cause
    /// (what the error [classifies](crate::Classify) as if broken, else `other`); it is
    /// counted in `Stats::connect_failures` and `resets_total{phase="connect"}`, never
    /// in `opened`; and it counts toward opening the connect circuit, since a hook that
    /// fails on every connection (a wrong password, a missing schema) leaves the pool
    /// as unable to connect as an upstream that refuses, and should not be dialed in a
    /// loop. See the [hooks table](crate::PoolBuilder#hooks).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:6379"))
    ///     .after_connect(|conn| {
    ///         Box::pin(async move {
    ///             conn.write_all(b"AUTH secret\r\n").await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn after_connect<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut M::Connection) -> HookFuture<'c, M::Error> + Send + Sync + 'static,
    {
        self.hooks.after_connect = Some(Box::new(hook));
        self
    }

    /// Runs `hook` on a connection that sat in the pool before each checkout hands it
    /// out, after the free checks and the ping: for state that must be checked or
    /// refreshed per use. Default: none, and then a checkout does not pay for it. Not
    /// run on a connection opened for this very checkout (its `after_connect` just
    /// ran); run on one the pool opened ahead of demand (`min_idle`,
    /// [`Pool::warm_up`]). Bounded, with the rest of the checkout, by
    /// `wait_timeout`.
    ///
    /// A failing hook closes the connection, and the checkout goes on to the next
    /// idle one or opens a new one: it fails only as a checkout would without the
    /// hook. The closed connection is counted as a reset with the error's cause in
    /// phase `checkout` when the error says the connection broke with a known cause
    /// (it died under the hook), else as an eviction with reason `hook_failed`. The
    /// hook's error is logged at `warn`. See the [hooks table](crate::PoolBuilder#hooks).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::time::Duration;
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
    ///     .before_checkout(|_conn, info| {
    ///         Box::pin(async move {
    ///             if info.age > Duration::from_secs(600) {
    ///                 return Err(std::io::Error::other("too old for this backend"));
    ///             }
    ///             Ok(())
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn before_checkout<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut M::Connection, ConnectionInfo) -> HookFuture<'c, M::Error>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.before_checkout = Some(Box::new(hook));
        self
    }

    /// Runs `hook` on a connection after the application returned it healthy, before
    /// it is idle again: to reset session state (`DISCARD ALL`, `RESET ALL`) or to
    /// check the connection is fit for the next user. Default: none, and then a
    /// return does not pay for it.
    ///
    /// `Drop` cannot wait, so the hook runs on a task of its own (spawned on the
    /// runtime the connection is dropped on), and the connection stays in use,
    /// holding its slot, until the hook is done: the next checkout never sees it
    /// half-reset, and waits (or opens another connection) meanwhile. The price is a
    /// task per return, and a connection that is busy a little longer than the
    /// application held it. Connections closed on return (marked broken, past their
    /// lifetime, an exchange left open) do not run it.
    ///
    /// A failing hook closes the connection: a reset with the error's cause in phase
    /// `in_use` when the error says the connection broke with a known cause, else an
    /// eviction with reason `hook_failed`. A hook still running after `wait_timeout`, that panics, or whose
    /// task is dropped (the runtime shuts down, or a connection dropped outside any
    /// runtime) closes it as `cancelled`. See the [hooks table](crate::PoolBuilder#hooks).
    ///
    /// ```no_run
    /// # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use steadypool::{drivers::tcp::TcpManager, Pool};
    /// use tokio::io::AsyncWriteExt;
    ///
    /// let pool = Pool::builder(TcpManager::new("127.0.0.1:7000"))
    ///     .on_return(|conn, _info| {
    ///         Box::pin(async move {
    ///             // A request the server does not answer: the hook waits for nothing.
    ///             conn.write_all(b"RESET\n").await?;
    ///             Ok(())
    ///         })
    ///     })
    ///     .build()?;
    /// # Ok(()) }
    /// ```
    pub fn on_return<F>(mut self, hook: F) -> Self
    where
        F: for<'c> Fn(&'c mut M::Connection, ConnectionInfo) -> HookFuture<'c, M::Error>
            + Send
            + Sync
            + 'static,
    {
        self.hooks.on_return = Some(Box::new(hook));
        self
    }

    /// Checks the configuration and starts the pool (and its reaper task).
    ///
    /// # Errors
    /// [`BuildError`] naming the offending knob; [`BuildError::NoRuntime`] outside a
    /// tokio runtime.
    pub fn build(mut self) -> Result<Pool<M>, BuildError> {
        self.config.validate()?;
        if !self.named {
            self.config.name = default_name(self.manager.target());
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| BuildError::NoRuntime)?;
        let pool = Pool::from_parts(self.manager, self.config, self.hooks)?;
        let reaper = reaper::spawn(pool.backend(), &runtime);
        // Only here, once, on a pool nobody else has seen yet: the cell is empty.
        let _ = pool.shared.reaper.set(reaper);
        Ok(pool)
    }
}

/// A pool name nobody else in this process has been given by default: `base`, then
/// `base#2`, `base#3`, ...
fn default_name(target: Option<String>) -> String {
    static TAKEN: std::sync::Mutex<Option<std::collections::HashMap<String, usize>>> =
        std::sync::Mutex::new(None);
    let base = target.unwrap_or_else(|| "pool".to_owned());
    let mut taken = TAKEN
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    let count = taken
        .get_or_insert_with(Default::default)
        .entry(base.clone())
        .or_insert(0);
    *count += 1;
    match *count {
        1 => base,
        n => format!("{base}#{n}"),
    }
}
