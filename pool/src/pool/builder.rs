//! [`PoolBuilder`]: every knob, its default, and the failure it prevents.

use std::time::Duration;

use super::config::{BuildError, Config, QueueMode, UserTimeout};
use super::{Pool, reaper};
use crate::dial::Keepalive;
use crate::manager::Manager;
use crate::retry::RetryPolicy;

/// Configures and builds a [`Pool`].
///
/// Defaults are chosen for a service behind a load balancer or NAT:
///
/// | knob | default | prevents |
/// |---|---|---|
/// | [`max_size`](Self::max_size) | 10 | overloading the upstream's connection limit |
/// | [`min_idle`](Self::min_idle) | 0 | connect latency on a burst after a quiet spell |
/// | [`wait_timeout`](Self::wait_timeout) | 30 s | a request hanging forever on an exhausted pool |
/// | [`connect_timeout`](Self::connect_timeout) | 5 s | a SYN into a black hole hanging ~127 s |
/// | [`ping_timeout`](Self::ping_timeout) | 2 s | a checkout ping into a black hole hanging |
/// | [`idle_timeout`](Self::idle_timeout) | 45 s | reusing a connection a middlebox already dropped |
/// | [`max_lifetime`](Self::max_lifetime) | 30 min | pinning to one backend forever; stale DNS |
/// | [`max_lifetime_jitter`](Self::max_lifetime_jitter) | 2.5 % of `max_lifetime` | a fleet's connections expiring together |
/// | [`check_after`](Self::check_after) | 500 ms | zombies the probe cannot see (silent drops), at one round trip per long-idle checkout |
/// | [`keepalive`](Self::keepalive) | 10 s / 3 s / 3 | dead peers found after 2 h 11 min (kernel default) |
/// | [`user_timeout`](Self::user_timeout) | keepalive detection time (19 s) | a request into a black hole waiting ~15 min |
/// | [`nodelay`](Self::nodelay) | on | Nagle delaying small requests by up to 40 ms |
/// | [`queue_mode`](Self::queue_mode) | FIFO | connections idling out while the pool is busy |
/// | [`reaper_interval`](Self::reaper_interval) | 1 s | dead sockets lingering in `CLOSE_WAIT` |
/// | [`learn_idle_limit`](Self::learn_idle_limit) | on | repeated resets from an idle limit below `idle_timeout` |
/// | [`max_concurrent_connects`](Self::max_concurrent_connects) | 2 | a burst of waiters, or a restarted upstream's every client, dialing at once |
/// | [`circuit_open_after`](Self::circuit_open_after) | 3 failed connects | every checkout dialing an upstream that is down |
/// | [`circuit_open_for`](Self::circuit_open_for) | 1 s | trial connects hammering a down upstream, or in lock-step across a fleet |
/// | [`retry_policy`](Self::retry_policy) | [`RetryPolicy::default`] | retries without end, without pause, or multiplying an outage's load |
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
#[derive(Debug)]
#[must_use = "a builder does nothing until build() is called"]
pub struct PoolBuilder<M> {
    manager: M,
    config: Config,
    named: bool,
}

impl<M: Manager> PoolBuilder<M> {
    pub(crate) fn new(manager: M) -> Self {
        PoolBuilder {
            manager,
            config: Config::default(),
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
    /// handshake. Default 5 s. Without it a SYN into a black hole waits ~127 s.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.config.connect_timeout = timeout;
        self
    }

    /// The longest a checkout ping may take before the connection counts as dead
    /// (`ping_failed`). Default 2 s.
    pub fn ping_timeout(mut self, timeout: Duration) -> Self {
        self.config.ping_timeout = timeout;
        self
    }

    /// Close connections idle longer than this. Default 45 s, below the common
    /// load balancer limits (AWS ALB 60 s, nginx 75 s): a middlebox that drops an idle
    /// flow makes the next request on it fail with `ECONNRESET`. `None` keeps idle
    /// connections forever (keepalive still finds dead ones).
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
    pub fn keepalive(mut self, keepalive: Option<Keepalive>) -> Self {
        self.config.keepalive = keepalive;
        self
    }

    /// `TCP_USER_TIMEOUT`: how long sent data may stay unacknowledged before the
    /// connection fails with `ETIMEDOUT`. `None` leaves the kernel's (~15 min).
    /// Default: the keepalive detection time (`idle + interval x count`, 19 s), since
    /// Linux also applies it to keepalive and the two must agree.
    pub fn user_timeout(mut self, timeout: Option<Duration>) -> Self {
        self.config.user_timeout = UserTimeout::Set(timeout);
        self
    }

    /// `TCP_NODELAY`. Default on: requests leave at once.
    pub fn nodelay(mut self, nodelay: bool) -> Self {
        self.config.nodelay = nodelay;
        self
    }

    /// Which idle connection a checkout takes. Default [`QueueMode::Fifo`].
    pub fn queue_mode(mut self, mode: QueueMode) -> Self {
        self.config.queue_mode = mode;
        self
    }

    /// How often the reaper probes idle connections, evicts expired ones and refills
    /// `min_idle`. Default 1 s: no socket whose peer closed stays in `CLOSE_WAIT` longer.
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

    /// How many connects may be in flight at once (see [`crate::breaker`]). Default 2.
    /// Further connects wait their turn within `wait_timeout`. Prevents a burst of
    /// checkouts, or every pool of a fleet when the upstream restarts, from opening a
    /// storm of connections and handshakes at the same moment.
    pub fn max_concurrent_connects(mut self, connects: usize) -> Self {
        self.config.max_concurrent_connects = connects;
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

    /// How long the circuit stays open at most before a trial connect: each open period
    /// is drawn at random between half of this and all of it. Default 1 s. Bounds how
    /// soon the pool notices a recovered upstream, while keeping trial connects rare and
    /// out of step with other pools.
    pub fn circuit_open_for(mut self, period: Duration) -> Self {
        self.config.circuit_open_for = period;
        self
    }

    /// Attempts, deadline, backoff and retry budget for [`Pool::run`] and its
    /// siblings. Default [`RetryPolicy::default`]. Its deadline must be at least
    /// `connect_timeout`.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
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
        let pool = Pool::from_parts(self.manager, self.config);
        reaper::spawn(&pool, &runtime);
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
