//! One pooled connection and the deadpool manager that opens and checks it.
//!
//! deadpool owns the queue, the semaphore and the slot accounting; steadypool plugs in
//! here. `create` dials through the pool's [`Dialer`](crate::Dialer) under the connect
//! timeout; `recycle` is the checkout check, the free tests before the round trip:
//!
//! 1. the [`probe`] (an atomic load, or one `peek`): first, so that a connection the
//!    path already closed counts as a reset even when it is also past a limit,
//! 2. lifetime and idle limits (a read of the coarse [`clock`](crate::clock)),
//! 3. [`Manager::broken`] (a flag read),
//! 4. [`Manager::ping`], only after `check_after` of idleness (a round trip).
//!
//! The first check that fails discards the connection with its cause, and deadpool
//! moves on to the next idle one (or opens a new one).

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};

use super::config::Config;
use crate::breaker::{Gate, Refusal};
use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause};
use crate::clock::{CoarseDuration, CoarseInstant};
use crate::diagnosis::Diagnosis;
use crate::dial::Dialer;
use crate::manager::Manager;
use crate::metrics::Recorder;
use crate::probe::{self, Liveness, SocketRef};
use crate::retry::RetryState;

/// A pooled connection with the bookkeeping the pool needs.
#[derive(Debug)]
pub(crate) struct Slot<C> {
    pub(crate) conn: C,
    pub(crate) id: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) created: CoarseInstant,
    /// When the jittered `max_lifetime` runs out.
    pub(crate) retire_at: Option<CoarseInstant>,
    /// When the connection last carried traffic the pool knows of: its return to the
    /// pool, or a successful ping.
    pub(crate) idle_since: CoarseInstant,
    /// How long it sat idle before its current checkout (zero for a new connection):
    /// what its fate in use teaches about the path's idle limit.
    pub(crate) reused_after: CoarseDuration,
    /// Why the application marked it broken in its current checkout, if it did: it
    /// is then closed on return. A slot back in the pool always has `None` here.
    pub(crate) broken: Option<ResetCause>,
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
    pub(crate) fn obituary(&self, now: CoarseInstant) -> Obituary {
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
    pub(crate) diagnosis: Diagnosis,
    pub(crate) gate: Gate,
    pub(crate) retry: RetryState,
    next_id: AtomicU64,
}

impl Core {
    pub(crate) fn new(config: Config) -> Core {
        let recorder = Recorder::new(&config.name);
        let diagnosis = Diagnosis::new(
            config.idle_timeout,
            config.learn_idle_limit,
            config.reaper_interval,
        );
        diagnosis.idle_limit(CoarseInstant::now(), &recorder);
        Core {
            dialer: config.dialer(),
            recorder,
            diagnosis,
            gate: Gate::new(config.gate(), &config.name),
            retry: RetryState::new(&config.retry),
            config,
            next_id: AtomicU64::new(1),
        }
    }

    /// The idle limit in force now: `idle_timeout`, or the learned limit when it is
    /// lower (see [`crate::diagnosis`]).
    pub(crate) fn idle_limit(&self, now: CoarseInstant) -> Option<CoarseDuration> {
        self.diagnosis.evict_after(now, &self.recorder)
    }

    /// A connection that sat idle for `idle` before its checkout came back healthy.
    pub(crate) fn record_reuse(&self, idle: Duration) {
        self.diagnosis
            .reused(idle, CoarseInstant::now(), &self.recorder);
    }

    /// The checks that need no I/O beyond the probe: used by checkout and the reaper.
    ///
    /// Inlined: on the checkout path a call costs about as much as the checks.
    #[inline]
    pub(crate) fn inspect<M: Manager>(
        &self,
        manager: &M,
        slot: &Slot<M::Connection>,
        now: CoarseInstant,
    ) -> Verdict {
        // The probe first: a connection the path already closed is a reset (and
        // evidence about the path's idle limit) even when it is also past a limit of
        // ours. In the common case it costs an atomic load, no more than the limits.
        if let Some(socket) = manager.socket(&slot.conn) {
            match probe::check(socket) {
                Liveness::Alive => {}
                Liveness::PeerClosed => return Verdict::Reset(ResetCause::PeerClosed),
                Liveness::PeerReset => return Verdict::Reset(ResetCause::PeerReset),
                // A raw socket is a duplicate of one a driver's task reads: bytes
                // waiting there are the task's next message (a late reply to a statement
                // close, a notification, or a server's goodbye before its FIN), not a
                // desync. The task reads them, and a close behind them shows up as end
                // of stream or through `Manager::broken`.
                Liveness::UnexpectedData if matches!(socket, SocketRef::Raw(_)) => {}
                Liveness::UnexpectedData => return Verdict::Reset(ResetCause::UnexpectedData),
                Liveness::Error(err) => {
                    return Verdict::Reset(ResetCause::of_io(&err, Phase::Idle));
                }
            }
        }
        if slot.retire_at.is_some_and(|at| now >= at) {
            return Verdict::Evict(Eviction::MaxLifetime);
        }
        if self
            .idle_limit(now)
            .is_some_and(|limit| now.saturating_since(slot.idle_since) >= limit)
        {
            return Verdict::Evict(Eviction::IdleExpired);
        }
        Verdict::Keep
    }

    /// Records a connection that broke: counted, learned from, and logged with a hint.
    pub(crate) fn record_reset(&self, cause: ResetCause, phase: Phase, dead: &Obituary) {
        self.diagnosis
            .reset(&self.config.name, &self.recorder, cause, phase, dead);
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
    /// Boxed: every checkout's result inside deadpool is as large as this error, and
    /// is moved at each step there, while a refusal is rare (measured: 55 of ~1,235
    /// instructions per checkout went to carrying it inline).
    #[error("connect circuit open ({})", .0.cause)]
    CircuitOpen(Box<Refusal>),
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
                let now = CoarseInstant::now();
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
                    retire_at: lifetime.and_then(|l| now.checked_add(l)),
                    idle_since: now,
                    reused_after: CoarseDuration::ZERO,
                    broken: None,
                })
            }
            Err(err) => {
                let cause = match &err {
                    ConnectError::Failed(cause, _) => *cause,
                    ConnectError::TimedOut(_) => ResetCause::ConnectTimeout,
                    ConnectError::CircuitOpen(refusal) => refusal.cause,
                };
                self.core.recorder.connect(Err(cause), took);
                let shown: &dyn std::fmt::Display = match &err {
                    ConnectError::Failed(_, source) => source,
                    other => other,
                };
                self.core.diagnosis.connect_failed(
                    &self.core.config.name,
                    &self.core.recorder,
                    cause,
                    shown,
                );
                Err(err)
            }
        }
    }
}

impl<M: Manager> deadpool::managed::Manager for Adapter<M> {
    // Boxed: deadpool moves its object at every checkout and return, and a pointer
    // moves cheaper than the slot's bookkeeping (measured: 30% of a checkout's time
    // went to copying it, see BENCHMARKS.md).
    type Type = Box<Slot<M::Connection>>;
    type Error = ConnectError<M::Error>;

    async fn create(&self) -> Result<Self::Type, Self::Error> {
        // Opening a connection takes a round trip or more, and its future is large
        // (resolve, connect, the manager's handshake). It lives on the heap so that
        // every checkout's future stays small: a checkout that finds an idle
        // connection would otherwise copy kilobytes it never uses.
        Box::pin(self.gated_connect()).await.map(Box::new)
    }

    async fn recycle(&self, slot: &mut Self::Type, _: &Metrics) -> RecycleResult<Self::Error> {
        let now = CoarseInstant::now();
        slot.reused_after = now.saturating_since(slot.idle_since);
        let mut verdict = self.core.inspect(&self.manager, slot, now);
        if matches!(verdict, Verdict::Keep)
            && let Some(broken) = self.manager.broken(&mut slot.conn)
        {
            verdict = Verdict::Reset(broken.cause);
        }
        if matches!(verdict, Verdict::Keep) && slot.reused_after >= self.core.config.check_after {
            // A round trip (~20 µs and up): on the heap too, for the same reason.
            verdict = Box::pin(self.ping(slot)).await;
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

impl<M: Manager> Adapter<M> {
    /// A new connection, through the connect gate.
    async fn gated_connect(&self) -> Result<Slot<M::Connection>, ConnectError<M::Error>> {
        let ticket = self
            .core
            .gate
            .enter(&self.core.recorder)
            .await
            .map_err(|refusal| ConnectError::CircuitOpen(Box::new(refusal)))?;
        let result = self.connect().await;
        match &result {
            Ok(_) => ticket.succeeded(),
            Err(ConnectError::Failed(cause, source)) => ticket.failed(*cause, source),
            Err(timed_out @ ConnectError::TimedOut(_)) => {
                ticket.failed(ResetCause::ConnectTimeout, timed_out);
            }
            Err(ConnectError::CircuitOpen(_)) => drop(ticket),
        }
        result
    }

    /// The manager's ping under `ping_timeout`; a success counts as traffic.
    async fn ping(&self, slot: &mut Slot<M::Connection>) -> Verdict {
        match tokio::time::timeout(
            self.core.config.ping_timeout,
            self.manager.ping(&mut slot.conn),
        )
        .await
        {
            Ok(Ok(())) => {
                slot.idle_since = CoarseInstant::now();
                Verdict::Keep
            }
            Ok(Err(err)) => Verdict::Reset(match err.classify() {
                Disposition::Broken { cause, .. } if cause != ResetCause::Other => cause,
                _ => ResetCause::PingFailed,
            }),
            Err(_) => Verdict::Reset(ResetCause::PingFailed),
        }
    }
}
