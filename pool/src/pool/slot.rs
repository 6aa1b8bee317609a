//! One pooled connection, its close tally, and the deadpool manager that opens and
//! checks it.
//!
//! deadpool owns the queue, the semaphore and the slot accounting; steadypool plugs in
//! here. `create` takes a connection the reaper opened ahead of demand (the spare
//! stock) or dials a new one through the pool's [`Dialer`](crate::Dialer) under the
//! connect timeout; `recycle` is the checkout check, the free tests before the round
//! trip:
//!
//! 1. the [`probe`] (an atomic load, or one `peek`): first, so that a connection the
//!    path already closed counts as a reset even when it is also past a limit,
//! 2. lifetime and idle limits (a read of the coarse [`clock`](crate::clock)),
//! 3. [`Manager::broken`] (a flag read),
//! 4. [`Manager::ping`], only after `check_after` of idleness (a round trip).
//!
//! The first check that fails discards the connection with its cause, and deadpool
//! moves on to the next idle one (or opens a new one).
//!
//! **Every connection is counted when it closes, exactly once.** A [`Slot`] carries a
//! [`Tally`] whose `Drop` counts the close, with the fate the pool decided for it (a
//! reset with its cause and phase, or an eviction with its reason). A slot dropped on
//! a path nobody decided on (a checkout future cancelled during its ping, a pool
//! dropped with idle connections, deadpool shedding a connection returned to a pool
//! that was resized below its size) is counted too, with the reason the pool's state
//! explains. So `opened = open now + resets outside the connect phase + evictions`
//! holds whatever was cancelled, timed out or panicked.
//!
//! **The size cap is the pool's own.** deadpool's `resize` withdraws capacity only
//! while it has more connections than the new size, so after shrinking a pool that
//! was not full its semaphore still admits the old number of checkouts. `create`
//! therefore reserves capacity against the pool's own count of open connections, and
//! when there is none it hands deadpool a [`Entry::Placeholder`] instead of dialing.
//! The checkout drops the placeholder: deadpool, now over its size, keeps the
//! semaphore permit, so each placeholder withdraws one surplus permit for good.

use std::future::Future;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use deadpool::managed::{Metrics, RecycleError, RecycleResult};

use super::config::Config;
use super::hooks::{self, Hook, Hooks};
use crate::breaker::{CircuitEvent, Gate, Refusal};
use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause};
use crate::clock::{CoarseDuration, CoarseInstant};
use crate::diagnosis::IdleLimitLearner;
use crate::dial::Dialer;
use crate::manager::Manager;
pub(crate) use crate::observe::Obituary;
use crate::observe::Observer;
use crate::probe::{self, Liveness, SocketRef};
use crate::retry::budget::RetryState;

/// A pooled connection with the bookkeeping the pool needs.
pub(crate) struct Slot<M: Manager> {
    pub(crate) conn: M::Connection,
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
    /// Whether it sat in the pool before its current checkout: it came from the spare
    /// stock (deadpool's own count says so for the others).
    pub(crate) spare: bool,
    /// Why the application marked it broken in its current checkout, if it did: it
    /// is then closed on return. A slot back in the pool always has `None` here.
    pub(crate) broken: Option<ResetCause>,
    /// An [`Exchange`](crate::Exchange) began on it and did not finish: a reply may
    /// be in flight, so it is closed on return.
    pub(crate) exchange_open: bool,
    pub(crate) tally: Tally<M>,
}

/// What deadpool holds: a connection, or a stand-in that withdraws a surplus permit
/// after the pool was resized down (see the module docs).
pub(crate) enum Entry<M: Manager> {
    Live(Box<Slot<M>>),
    Placeholder,
}

/// How a connection's life ended, counted when its slot drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Reset(ResetCause, Phase),
    Evicted(Eviction),
}

/// Counts its connection's close exactly once, when dropped.
pub(crate) struct Tally<M: Manager> {
    pub(crate) parts: Arc<Parts<M>>,
    pub(crate) fate: Option<Fate>,
}

impl<M: Manager> Drop for Tally<M> {
    fn drop(&mut self) {
        let core = &self.parts.core;
        let fate = self.fate.unwrap_or_else(|| core.unplanned_fate());
        core.closed(fate);
    }
}

/// Why an idle or returning connection leaves the pool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Evict(Eviction),
    Reset(ResetCause, Option<String>),
}

impl<M: Manager> Slot<M> {
    pub(crate) fn obituary(&self, now: CoarseInstant) -> Obituary {
        Obituary {
            id: self.id,
            peer: self.peer,
            age: now.saturating_duration_since(self.created),
            idle: now.saturating_duration_since(self.idle_since),
        }
    }

    /// Decides this connection's end: recorded (learned from, logged) now, counted
    /// when the slot drops.
    pub(crate) fn condemn(&mut self, verdict: Verdict, phase: Phase, dead: &Obituary) {
        let core = &self.tally.parts.core;
        match verdict {
            Verdict::Keep => {}
            Verdict::Evict(reason) => {
                core.record_eviction(reason, dead);
                self.tally.fate = Some(Fate::Evicted(reason));
            }
            Verdict::Reset(cause, detail) => {
                core.record_reset(cause, phase, dead, detail.as_deref());
                self.tally.fate = Some(Fate::Reset(cause, phase));
            }
        }
    }

    /// Sets the reason this connection is closed with when it drops, without a trace
    /// event of its own (the caller reports it).
    pub(crate) fn evict_quietly(&mut self, reason: Eviction) {
        self.tally.fate = Some(Fate::Evicted(reason));
    }
}

/// Everything the pool shares between checkouts, the reaper and returned connections.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) config: Config,
    pub(crate) dialer: Dialer,
    /// Where every event goes: the books, the metrics and the log.
    pub(crate) observer: Observer,
    pub(crate) learner: IdleLimitLearner,
    pub(crate) gate: Gate,
    pub(crate) retry: RetryState,
    next_id: AtomicU64,
    /// Connections open now (pooled, in use, or in the spare stock) plus connects
    /// under way: the count the size cap is checked against.
    open: AtomicUsize,
    /// The size cap; `resize` changes it.
    pub(crate) max_size: AtomicUsize,
    /// Set by `close` and when the pool is dropped: connections dropped from then on
    /// were closed with the pool.
    closing: AtomicBool,
    /// Checkouts between their first, non-queueing attempt and the queue: waiting,
    /// though deadpool does not count them yet.
    pub(crate) yielding: AtomicUsize,
}

impl Core {
    pub(crate) fn new(mut config: Config) -> Core {
        let learner = IdleLimitLearner::new(
            config.idle_timeout,
            config.learn_idle_limit,
            config.reaper_interval,
        );
        // The observer owns the name from here on: the one copy of it.
        let name = std::mem::take(&mut config.name);
        let observer = Observer::new(name, config.learn_idle_limit, &learner.current());
        Core {
            dialer: config.dialer(),
            observer,
            learner,
            gate: Gate::new(config.gate()),
            retry: RetryState::new(&config.retry),
            next_id: AtomicU64::new(1),
            open: AtomicUsize::new(0),
            max_size: AtomicUsize::new(config.max_size),
            closing: AtomicBool::new(false),
            yielding: AtomicUsize::new(0),
            config,
        }
    }

    /// Reserves room for one more connection under the size cap, for a connect.
    pub(crate) fn reserve(&self) -> Option<Reservation<'_>> {
        let before = self.open.fetch_add(1, Ordering::AcqRel);
        let reservation = Reservation {
            open: &self.open,
            kept: false,
        };
        (before < self.max_size.load(Ordering::Acquire)).then_some(reservation)
    }

    /// Connections open now, in the pool's own count.
    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }

    pub(crate) fn start_closing(&self) {
        self.closing.store(true, Ordering::Release);
    }

    pub(crate) fn is_closing(&self) -> bool {
        self.closing.load(Ordering::Acquire)
    }

    /// The reason for a connection dropped without a decision of the pool's.
    fn unplanned_fate(&self) -> Fate {
        Fate::Evicted(if self.is_closing() {
            Eviction::Closed
        } else if self.open() > self.max_size.load(Ordering::Acquire) {
            // deadpool sheds connections returned while the pool is above its size.
            Eviction::Resize
        } else {
            Eviction::Cancelled
        })
    }

    /// Counts a connection's close.
    fn closed(&self, fate: Fate) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        match fate {
            Fate::Reset(cause, phase) => self.observer.closed_reset(cause, phase),
            Fate::Evicted(reason) => self.observer.closed_evicted(reason),
        }
    }

    /// The idle limit in force now: `idle_timeout`, or the learned limit when it is
    /// lower (see [`IdleLimit`](crate::IdleLimit)).
    pub(crate) fn idle_limit(&self, now: CoarseInstant) -> Option<CoarseDuration> {
        self.learner.evict_after(now)
    }

    /// A connection that sat idle for `idle` before its checkout came back healthy.
    pub(crate) fn record_reuse(&self, idle: Duration) {
        if let Some(limit) = self.learner.reused(idle, CoarseInstant::now()) {
            self.observer.idle_limit_changed(&limit);
        }
    }

    /// The checks that need no I/O beyond the probe: used by checkout and the reaper.
    ///
    /// Inlined: on the checkout path a call costs about as much as the checks.
    #[inline]
    pub(crate) fn inspect<M: Manager>(
        &self,
        manager: &M,
        slot: &Slot<M>,
        now: CoarseInstant,
    ) -> Verdict {
        // The probe first: a connection the path already closed is a reset (and
        // evidence about the path's idle limit) even when it is also past a limit of
        // ours. In the common case it costs an atomic load, no more than the limits.
        if let Some(socket) = manager.socket(&slot.conn) {
            match probe::check(socket) {
                Liveness::Alive => {}
                Liveness::PeerClosed => return Verdict::Reset(ResetCause::PeerClosed, None),
                Liveness::PeerReset => return Verdict::Reset(ResetCause::PeerReset, None),
                // A raw socket is a duplicate of one a driver's task reads: bytes
                // waiting there are the task's next message (a late reply to a statement
                // close, a notification, or a server's goodbye before its FIN), not a
                // desync. The task reads them; a close behind them the probe reports
                // as `PeerClosed` (from the TCP state), or `Manager::broken` does.
                Liveness::UnexpectedData if matches!(socket, SocketRef::Raw(_)) => {}
                Liveness::UnexpectedData => {
                    return Verdict::Reset(ResetCause::UnexpectedData, None);
                }
                Liveness::Error(err) => {
                    // The message names what a layer saw (a TLS alert, for one).
                    let cause = ResetCause::of_io(&err, Phase::Idle);
                    return Verdict::Reset(cause, Some(err.to_string()));
                }
            }
        }
        if slot.retire_at.is_some_and(|at| now >= at) {
            return Verdict::Evict(Eviction::MaxLifetime);
        }
        // Never before the limit: the idle time between two coarse readings can read
        // up to a kernel tick long.
        if self.idle_limit(now).is_some_and(|limit| {
            now.saturating_since(slot.idle_since) >= limit.saturating_add(CoarseDuration::MAX_LAG)
        }) {
            return Verdict::Evict(Eviction::IdleExpired);
        }
        Verdict::Keep
    }

    /// Records a connection that broke: learned from, and logged with a hint.
    pub(crate) fn record_reset(
        &self,
        cause: ResetCause,
        phase: Phase,
        dead: &Obituary,
        detail: Option<&str>,
    ) {
        let lesson = self.learner.reset(cause, dead.idle, CoarseInstant::now());
        self.observer
            .reset(cause, phase, dead, detail, &lesson, || {
                self.learner.current()
            });
    }

    /// Records a connection closed on purpose.
    pub(crate) fn record_eviction(&self, reason: Eviction, gone: &Obituary) {
        self.observer.evicted(reason, gone);
    }
}

/// Room for one connection under the size cap, held while it is being opened. Given
/// back when dropped (the connect failed, or its future was cancelled) unless
/// [`Reservation::keep`] handed it to the new connection's [`Tally`].
pub(crate) struct Reservation<'a> {
    open: &'a AtomicUsize,
    kept: bool,
}

impl Reservation<'_> {
    pub(crate) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        if !self.kept {
            self.open.fetch_sub(1, Ordering::AcqRel);
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
    /// The pool was closed while the connect ran.
    #[error("the pool was closed while connecting")]
    PoolClosed,
}

/// The manager, the core, the hooks and the spare stock: what every slot points back
/// to.
pub(crate) struct Parts<M: Manager> {
    pub(crate) manager: M,
    pub(crate) core: Core,
    pub(crate) hooks: Hooks<M>,
    /// Idle time after which a checkout needs I/O: `check_after` for the ping, or zero
    /// with a before-checkout hook, which runs on every reused connection. One
    /// comparison on the checkout path for both (measured: with a second test there
    /// a checkout cost 1,202 instructions instead of 1,188; with one, 1,198).
    round_trips_after: CoarseDuration,
    /// Connections the reaper opened to keep `min_idle`, not yet taken by a checkout.
    /// They are idle connections like those in deadpool's queue, which deadpool offers
    /// no way to add to: a checkout that finds the queue empty takes one here before
    /// dialing.
    spare: Mutex<Vec<Box<Slot<M>>>>,
    /// Connects the refill has under way.
    refilling: AtomicUsize,
}

/// The deadpool manager wrapping a steadypool [`Manager`].
pub(crate) struct Adapter<M: Manager>(pub(crate) Arc<Parts<M>>);

impl<M: Manager> std::ops::Deref for Adapter<M> {
    type Target = Parts<M>;

    fn deref(&self) -> &Parts<M> {
        &self.0
    }
}

impl<M: Manager> Adapter<M> {
    pub(crate) fn new(manager: M, core: Core, hooks: Hooks<M>) -> Adapter<M> {
        let round_trips_after = match hooks.before_checkout {
            Some(_) => CoarseDuration::ZERO,
            None => core.config.check_after,
        };
        Adapter(Arc::new(Parts {
            manager,
            core,
            hooks,
            round_trips_after,
            spare: Mutex::new(Vec::new()),
            refilling: AtomicUsize::new(0),
        }))
    }
}

/// What a manager's `socket` or `broken` that panicked looks like to the pool: the
/// connection is discarded (the pool cannot tell what state it is in), and the
/// panic does not take the pool down with it.
fn panicked() -> Verdict {
    Verdict::Reset(
        ResetCause::Other,
        Some("the manager's socket() or broken() panicked".to_owned()),
    )
}

impl<M: Manager> Parts<M> {
    /// The checks without I/O, the manager's own among them.
    #[inline]
    fn local_checks(&self, slot: &Slot<M>, now: CoarseInstant) -> Verdict {
        let verdict = self.core.inspect(&self.manager, slot, now);
        if !matches!(verdict, Verdict::Keep) {
            return verdict;
        }
        match self.manager.broken(&slot.conn) {
            Some(broken) => Verdict::Reset(broken.cause, broken.detail),
            None => Verdict::Keep,
        }
    }

    /// The reaper's check of an idle connection: [`Parts::local_checks`], where a
    /// panic in the manager's code must not unwind, since it runs under deadpool's
    /// slot lock or the spare stock's.
    pub(crate) fn inspect_idle(&self, slot: &Slot<M>, now: CoarseInstant) -> Verdict {
        catch_unwind(AssertUnwindSafe(|| self.local_checks(slot, now)))
            .unwrap_or_else(|_| panicked())
    }

    /// The whole checkout check: free tests, then a ping if the connection sat idle
    /// past `check_after`, then the before-checkout hook if there is one. A failed
    /// connection is condemned (phase `checkout`).
    async fn checkout_check(&self, slot: &mut Slot<M>) -> bool {
        let now = CoarseInstant::now();
        slot.reused_after = now.saturating_since(slot.idle_since);
        let mut verdict = self.local_checks(slot, now);
        if matches!(verdict, Verdict::Keep) && slot.reused_after >= self.round_trips_after {
            verdict = self.round_trips(slot).await;
        }
        if matches!(verdict, Verdict::Keep) {
            return true;
        }
        let dead = slot.obituary(now);
        slot.condemn(verdict, Phase::Checkout, &dead);
        false
    }

    /// The checks that take I/O: the ping if the connection sat idle past
    /// `check_after`, then the before-checkout hook.
    ///
    /// A round trip (~20 µs and up): on the heap, so that every checkout's future
    /// stays small, and behind a pointer whose drop is one call, so that finished
    /// checkouts do not pay for dropping a large future they never ran.
    fn round_trips<'a>(
        &'a self,
        slot: &'a mut Slot<M>,
    ) -> Pin<Box<dyn Future<Output = Verdict> + Send + 'a>> {
        Box::pin(async move {
            if slot.reused_after >= self.core.config.check_after {
                let verdict = self.ping(slot).await;
                if !matches!(verdict, Verdict::Keep) {
                    return verdict;
                }
            }
            match &self.hooks.before_checkout {
                Some(hook) => {
                    let idle = slot.reused_after.to_std();
                    hooks::run(hook, Hook::BeforeCheckout, slot, idle).await
                }
                None => Verdict::Keep,
            }
        })
    }

    /// The manager's ping under `ping_timeout`; a success counts as traffic.
    async fn ping(&self, slot: &mut Slot<M>) -> Verdict {
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
            Ok(Err(err)) => {
                let cause = match err.classify() {
                    Disposition::Broken { cause, .. } if cause != ResetCause::Other => cause,
                    _ => ResetCause::PingFailed,
                };
                Verdict::Reset(cause, Some(err.to_string()))
            }
            Err(_) => Verdict::Reset(
                ResetCause::PingFailed,
                Some(format!(
                    "no answer to the ping within {:?}",
                    self.core.config.ping_timeout
                )),
            ),
        }
    }

    /// Takes the connection opened longest ago from the spare stock.
    fn take_spare(&self) -> Option<Box<Slot<M>>> {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        (!spare.is_empty()).then(|| spare.remove(0))
    }

    /// Connections in the spare stock.
    pub(crate) fn spare_count(&self) -> usize {
        self.spare
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Connects the refill has under way.
    pub(crate) fn refilling(&self) -> usize {
        self.refilling.load(Ordering::Acquire)
    }

    /// Removes from the spare stock the connections `reject` picks, runs the manager's
    /// `detach` on them outside the lock (it is the manager's code, and checkouts wait
    /// on that lock), and returns them for the caller to decide their fate.
    pub(crate) fn drain_spare(
        &self,
        mut reject: impl FnMut(&Slot<M>) -> bool,
    ) -> Vec<Box<Slot<M>>> {
        let mut gone = Vec::new();
        {
            let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
            let mut i = 0;
            while i < spare.len() {
                if reject(&spare[i]) {
                    gone.push(spare.remove(i));
                } else {
                    i += 1;
                }
            }
        }
        for slot in &mut gone {
            self.manager.detach(&mut slot.conn);
        }
        gone
    }

    /// Closes every connection in the spare stock, counted with `reason`.
    pub(crate) fn close_spare(&self, reason: Eviction) {
        for mut slot in self.drain_spare(|_| true) {
            slot.evict_quietly(reason);
        }
    }

    /// Opens one connection for the spare stock, if the size cap has room. Runs as a
    /// task of its own: a slow or hanging connect holds nothing a user needs.
    pub(crate) async fn refill_one(self: Arc<Self>) {
        // A failed connect is counted and logged where it failed; the next tick tries
        // again.
        let _ = self.open_spare().await;
    }

    /// Opens one connection into the spare stock: `None` when the size cap has no
    /// room, else how the connect went.
    pub(crate) async fn open_spare(self: Arc<Self>) -> Option<Result<(), ConnectError<M::Error>>> {
        let reservation = self.core.reserve()?;
        self.refilling.fetch_add(1, Ordering::AcqRel);
        let result = self.gated_connect().await;
        self.refilling.fetch_sub(1, Ordering::AcqRel);
        Some(result.map(|mut slot| {
            reservation.keep();
            slot.spare = true;
            if self.core.open() > self.core.max_size.load(Ordering::Acquire) {
                // Resized down meanwhile.
                self.manager.detach(&mut slot.conn);
                slot.evict_quietly(Eviction::Resize);
                return;
            }
            let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
            if self.core.is_closing() {
                // Closed meanwhile: the new connection closes with the pool.
                drop(spare);
                self.manager.detach(&mut slot.conn);
            } else {
                spare.push(Box::new(slot));
            }
        }))
    }

    /// A new connection, through the connect gate. The caller has reserved room.
    async fn gated_connect(self: &Arc<Self>) -> Result<Slot<M>, ConnectError<M::Error>> {
        let observer = &self.core.observer;
        let ticket = self.core.gate.enter().await.map_err(|refusal| {
            observer.gate_rejected();
            ConnectError::CircuitOpen(Box::new(refusal))
        })?;
        if ticket.is_trial() {
            observer.circuit(CircuitEvent::HalfOpen);
        }
        let result = self.connect().await;
        let moved = match &result {
            Ok(_) => ticket.succeeded(),
            Err(ConnectError::Failed(cause, source)) => ticket.failed(*cause, source),
            Err(timed_out @ ConnectError::TimedOut(_)) => {
                ticket.failed(ResetCause::ConnectTimeout, timed_out)
            }
            Err(ConnectError::CircuitOpen(_) | ConnectError::PoolClosed) => {
                drop(ticket);
                None
            }
        };
        if let Some(event) = moved {
            observer.circuit(event);
        }
        result
    }

    /// The manager's connect, then the after-connect hook: a connection is not open
    /// until its hook succeeded, so a failing hook is a failed connect.
    async fn open(&self) -> Result<M::Connection, M::Error> {
        let mut conn = self.manager.connect(&self.core.dialer).await?;
        if let Some(hook) = &self.hooks.after_connect {
            hook(&mut conn).await?;
        }
        Ok(conn)
    }

    async fn connect(self: &Arc<Self>) -> Result<Slot<M>, ConnectError<M::Error>> {
        let core = &self.core;
        let started = Instant::now();
        let timeout = core.config.connect_timeout();
        let result = match tokio::time::timeout(timeout, self.open()).await {
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
                core.observer.connected(took);
                let now = CoarseInstant::now();
                let peer = self
                    .manager
                    .socket(&conn)
                    .and_then(|s| s.sock_ref().peer_addr().ok())
                    .and_then(|a| a.as_socket());
                let lifetime = core.config.max_lifetime.map(|lifetime| {
                    let jitter = core.config.lifetime_jitter();
                    lifetime - jitter.mul_f64(fastrand::f64())
                });
                Ok(Slot {
                    conn,
                    id: core.next_id.fetch_add(1, Ordering::Relaxed),
                    peer,
                    created: now,
                    retire_at: lifetime.and_then(|l| now.checked_add(l)),
                    idle_since: now,
                    reused_after: CoarseDuration::ZERO,
                    spare: false,
                    broken: None,
                    exchange_open: false,
                    tally: Tally {
                        parts: Arc::clone(self),
                        fate: None,
                    },
                })
            }
            Err(err) => {
                let cause = match &err {
                    ConnectError::Failed(cause, _) => *cause,
                    ConnectError::TimedOut(_) => ResetCause::ConnectTimeout,
                    ConnectError::CircuitOpen(refusal) => refusal.cause,
                    ConnectError::PoolClosed => ResetCause::Other,
                };
                let shown: &dyn std::fmt::Display = match &err {
                    ConnectError::Failed(_, source) => source,
                    other => other,
                };
                let lesson = core
                    .learner
                    .reset(cause, Duration::ZERO, CoarseInstant::now());
                core.observer
                    .connect_failed(cause, took, shown, &lesson, || core.learner.current());
                Err(err)
            }
        }
    }
}

impl<M: Manager> deadpool::managed::Manager for Adapter<M> {
    type Type = Entry<M>;
    type Error = ConnectError<M::Error>;

    async fn create(&self) -> Result<Entry<M>, Self::Error> {
        // Opening a connection takes a round trip or more, and its future is large
        // (resolve, connect, the manager's handshake). It lives on the heap so that
        // every checkout's future stays small: a checkout that finds an idle
        // connection would otherwise copy kilobytes it never uses.
        Box::pin(async {
            while let Some(mut slot) = self.take_spare() {
                if self.checkout_check(&mut slot).await {
                    return Ok(Entry::Live(slot));
                }
                self.manager.detach(&mut slot.conn);
            }
            let Some(reservation) = self.core.reserve() else {
                return Ok(Entry::Placeholder);
            };
            let mut slot = self.0.gated_connect().await?;
            reservation.keep();
            // `close()` or `resize()` may have returned while this connect ran: its
            // promise holds from that moment, so the new connection does not outlive
            // it. Dropped while closing, it is counted `closed`.
            if self.core.is_closing() {
                self.manager.detach(&mut slot.conn);
                drop(slot);
                return Err(ConnectError::PoolClosed);
            }
            if self.core.open() > self.core.max_size.load(Ordering::Acquire) {
                self.manager.detach(&mut slot.conn);
                slot.evict_quietly(Eviction::Resize);
                drop(slot);
                return Ok(Entry::Placeholder);
            }
            Ok(Entry::Live(Box::new(slot)))
        })
        .await
    }

    fn detach(&self, entry: &mut Entry<M>) {
        // deadpool calls this for every object that leaves its pool: shed, taken,
        // rejected at checkout, or removed by `retain`.
        if let Entry::Live(slot) = entry {
            self.manager.detach(&mut slot.conn);
        }
    }

    async fn recycle(&self, entry: &mut Entry<M>, _: &Metrics) -> RecycleResult<Self::Error> {
        let Entry::Live(slot) = entry else {
            // A placeholder that went back to the queue: the pool had room again by
            // then. Dropping it frees its permit; it was never a connection.
            return Err(RecycleError::message("placeholder"));
        };
        if self.checkout_check(slot).await {
            Ok(())
        } else {
            Err(RecycleError::message(
                "connection failed the checkout check",
            ))
        }
    }
}
