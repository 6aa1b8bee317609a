//! One pooled connection and the deadpool manager that opens and checks it.
//!
//! deadpool owns the queue, the semaphore and the slot accounting; steadypool plugs in
//! here. `create` dials through the pool's [`Dialer`](crate::Dialer) under the connect
//! timeout; `recycle` is the checkout check, cheapest test first:
//!
//! 1. lifetime and idle limits (a clock read),
//! 2. [`Manager::is_broken`] (a flag read),
//! 3. the [`probe`] (an atomic load, or one `peek`),
//! 4. [`Manager::ping`], only after `check_after` of idleness (a round trip).
//!
//! The first check that fails discards the connection with its cause, and deadpool
//! moves on to the next idle one (or opens a new one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};

use super::config::Config;
use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause};
use crate::dial::Dialer;
use crate::manager::Manager;
use crate::metrics::Recorder;
use crate::probe::{self, Liveness};

/// A pooled connection with the bookkeeping the pool needs.
#[derive(Debug)]
pub(crate) struct Slot<C> {
    pub(crate) conn: C,
    pub(crate) id: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) created: Instant,
    /// When the jittered `max_lifetime` runs out.
    pub(crate) retire_at: Option<Instant>,
    /// When the connection last carried traffic the pool knows of: its return to the
    /// pool, or a successful ping.
    pub(crate) idle_since: Instant,
}

/// Why an idle or returning connection leaves the pool.
#[derive(Debug)]
pub(crate) enum Verdict {
    Keep,
    Evict(Eviction),
    Reset(ResetCause),
}

/// What a discarded connection looked like, for the trace event.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Obituary {
    pub(crate) id: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) age: Duration,
    pub(crate) idle: Duration,
}

impl<C> Slot<C> {
    pub(crate) fn obituary(&self, now: Instant) -> Obituary {
        Obituary {
            id: self.id,
            peer: self.peer,
            age: now.saturating_duration_since(self.created),
            idle: now.saturating_duration_since(self.idle_since),
        }
    }
}

/// Everything the pool shares between checkouts, the reaper and returned connections.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) dialer: Dialer,
    pub(crate) recorder: Recorder,
    next_id: AtomicU64,
}

impl Core {
    pub(crate) fn new(config: Config) -> Core {
        Core {
            dialer: config.dialer(),
            recorder: Recorder::new(&config.name),
            config,
            next_id: AtomicU64::new(1),
        }
    }

    /// The idle limit in force now: `idle_timeout`.
    pub(crate) fn idle_limit(&self) -> Option<Duration> {
        self.config.idle_timeout
    }

    /// The checks that need no I/O beyond the probe: used by checkout and the reaper.
    pub(crate) fn inspect<M: Manager>(
        &self,
        manager: &M,
        slot: &Slot<M::Connection>,
        now: Instant,
    ) -> Verdict {
        if slot.retire_at.is_some_and(|at| now >= at) {
            return Verdict::Evict(Eviction::MaxLifetime);
        }
        if self
            .idle_limit()
            .is_some_and(|limit| now.saturating_duration_since(slot.idle_since) >= limit)
        {
            return Verdict::Evict(Eviction::IdleExpired);
        }
        let Some(socket) = manager.socket(&slot.conn) else {
            return Verdict::Keep;
        };
        match probe::check(socket) {
            Liveness::Alive => Verdict::Keep,
            Liveness::PeerClosed => Verdict::Reset(ResetCause::PeerClosed),
            Liveness::PeerReset => Verdict::Reset(ResetCause::PeerReset),
            Liveness::UnexpectedData => Verdict::Reset(ResetCause::UnexpectedData),
            Liveness::Error(err) => Verdict::Reset(ResetCause::of_io(&err, Phase::Idle)),
        }
    }

    /// Records a connection that broke.
    pub(crate) fn record_reset(&self, cause: ResetCause, phase: Phase, dead: &Obituary) {
        self.recorder.reset(cause, phase);
        tracing::warn!(
            pool = %self.config.name,
            conn = dead.id,
            cause = cause.as_str(),
            phase = phase.as_str(),
            idle_secs = dead.idle.as_secs_f64(),
            age_secs = dead.age.as_secs_f64(),
            peer = ?dead.peer,
            "connection reset",
        );
    }

    /// Records a connection closed on purpose.
    pub(crate) fn record_eviction(&self, reason: Eviction, gone: &Obituary) {
        self.recorder.eviction(reason, 1);
        tracing::debug!(
            pool = %self.config.name,
            conn = gone.id,
            reason = reason.as_str(),
            idle_secs = gone.idle.as_secs_f64(),
            age_secs = gone.age.as_secs_f64(),
            "connection closed",
        );
    }

    pub(crate) fn record(&self, verdict: &Verdict, phase: Phase, slot: &Obituary) {
        match *verdict {
            Verdict::Keep => {}
            Verdict::Evict(reason) => self.record_eviction(reason, slot),
            Verdict::Reset(cause) => self.record_reset(cause, phase, slot),
        }
    }
}

/// Why a connect failed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConnectError<E> {
    #[error("{0}")]
    Failed(ResetCause, #[source] E),
    #[error("no connection within {0:?}")]
    TimedOut(Duration),
}

/// The deadpool manager wrapping a steadypool [`Manager`].
#[derive(Debug)]
pub(crate) struct Adapter<M> {
    pub(crate) manager: M,
    pub(crate) core: Core,
}

impl<M: Manager> Adapter<M> {
    async fn connect(&self) -> Result<Slot<M::Connection>, ConnectError<M::Error>> {
        let started = Instant::now();
        let timeout = self.core.config.connect_timeout;
        let result =
            match tokio::time::timeout(timeout, self.manager.connect(&self.core.dialer)).await {
                Ok(Ok(conn)) => Ok(conn),
                Ok(Err(err)) => {
                    let cause = match err.classify() {
                        Disposition::Broken { cause, .. } => cause,
                        Disposition::Application | Disposition::Transient => ResetCause::Other,
                    };
                    Err(ConnectError::Failed(cause, err))
                }
                Err(_) => Err(ConnectError::TimedOut(timeout)),
            };
        let took = started.elapsed();
        match result {
            Ok(conn) => {
                self.core.recorder.connect(Ok(()), took);
                let now = Instant::now();
                let peer = self
                    .manager
                    .socket(&conn)
                    .and_then(|s| s.sock_ref().peer_addr().ok())
                    .and_then(|a| a.as_socket());
                let lifetime = self.core.config.max_lifetime.map(|lifetime| {
                    let jitter = self.core.config.lifetime_jitter();
                    lifetime - jitter.mul_f64(fastrand::f64())
                });
                Ok(Slot {
                    conn,
                    id: self.core.next_id.fetch_add(1, Ordering::Relaxed),
                    peer,
                    created: now,
                    retire_at: lifetime.map(|l| now + l),
                    idle_since: now,
                })
            }
            Err(err) => {
                let cause = match &err {
                    ConnectError::Failed(cause, _) => *cause,
                    ConnectError::TimedOut(_) => ResetCause::ConnectTimeout,
                };
                self.core.recorder.connect(Err(cause), took);
                tracing::warn!(
                    pool = %self.core.config.name,
                    cause = cause.as_str(),
                    phase = Phase::Connect.as_str(),
                    error = %err,
                    "connect failed",
                );
                Err(err)
            }
        }
    }
}

impl<M: Manager> deadpool::managed::Manager for Adapter<M> {
    type Type = Slot<M::Connection>;
    type Error = ConnectError<M::Error>;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        self.connect().await
    }

    async fn recycle(&self, slot: &mut Self::Type, _: &Metrics) -> RecycleResult<Self::Error> {
        let now = Instant::now();
        let mut verdict = self.core.inspect(&self.manager, slot, now);
        if matches!(verdict, Verdict::Keep) && self.manager.is_broken(&mut slot.conn) {
            verdict = Verdict::Reset(ResetCause::Other);
        }
        if matches!(verdict, Verdict::Keep)
            && now.saturating_duration_since(slot.idle_since) >= self.core.config.check_after
        {
            match tokio::time::timeout(
                self.core.config.ping_timeout,
                self.manager.ping(&mut slot.conn),
            )
            .await
            {
                Ok(Ok(())) => slot.idle_since = Instant::now(),
                Ok(Err(err)) => {
                    verdict = Verdict::Reset(match err.classify() {
                        Disposition::Broken { cause, .. } if cause != ResetCause::Other => cause,
                        _ => ResetCause::PingFailed,
                    });
                }
                Err(_) => verdict = Verdict::Reset(ResetCause::PingFailed),
            }
        }
        match verdict {
            Verdict::Keep => Ok(()),
            Verdict::Evict(reason) => {
                self.core.record_eviction(reason, &slot.obituary(now));
                Err(RecycleError::message(reason.as_str()))
            }
            Verdict::Reset(cause) => {
                self.core
                    .record_reset(cause, Phase::Checkout, &slot.obituary(now));
                Err(RecycleError::message(cause.as_str()))
            }
        }
    }
}
