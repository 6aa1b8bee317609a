//! One pooled connection, its close tally, and the parts that open and check it.
//!
//! The queue (deadpool, behind `backend`) owns the semaphore and the slot accounting;
//! it calls the two steps here. [`Parts::create`] takes a connection the reaper
//! opened ahead of demand (the spare stock) or dials a new one through the pool's
//! [`Dialer`](crate::Dialer) under the connect timeout; [`Parts::checkout_check`] is
//! the check of an idle connection at checkout, the free tests before the round
//! trip:
//!
//! 1. the [`probe`] (an atomic load, or one `peek`): first, so that a connection the
//!    path already closed counts as a reset even when it is also past a limit; on
//!    the duplicate of a socket a driver's task reads, a close the probe finds is
//!    counted with the reason the driver recorded first, when it recorded one,
//! 2. lifetime and idle limits (a read of the coarse [`clock`](crate::clock)),
//! 3. [`Manager::broken`] (a flag read): a reset, or a planned close before a limit
//!    the server announced (counted as the eviction `server_limit`),
//! 4. [`Manager::ping`], only after `check_after` of idleness (a round trip).
//!
//! The first check that fails discards the connection with its cause, and the queue
//! moves on to the next idle one (or opens a new one).
//!
//! **A checkout waiting for its turn to dial takes a connection returned meanwhile.**
//! A checkout in `create` that has reserved room waits for the connect gate: for a
//! permit (at most `max_concurrent_connects` dial at once) or on the open circuit.
//! deadpool counts it as opening a connection, so a connection another user returns
//! meanwhile would go to deadpool's queue, where it does not look. Instead, while such
//! a checkout waits ([`Parts::detour`], one relaxed load on the return path), the
//! return takes the connection out of deadpool's queue ([`Parts::hand_off`]), puts it
//! in the spare stock and wakes one waiting checkout, which gives back its
//! reservation (the connection is counted open already), checks it as any idle one
//! and takes it instead of dialing. A checkout that got its turn dials as before. A
//! connection whose checkout is gone by then (cancelled, timed out, or it got its
//! turn first) stays in the spare stock for the next checkout, or the reaper's idle
//! rules. After an upstream's return this is what keeps the checkouts parked on its
//! circuit from each dialing a connection of its own, when a returned one comes
//! sooner than their turn.
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
use std::pin::{Pin, pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::hooks::{self, ConnectionInfo, Hook, Hooks};
use super::state::{ConnectError, Core, Fate, Obituary, Verdict};
use crate::breaker::{CircuitEvent, Refusal, Ticket};
use crate::cause::{Classify, Disposition, Eviction, Phase, ResetCause};
use crate::clock::{CoarseDuration, CoarseInstant};
use crate::manager::Manager;
use crate::probe::{self, Liveness, SocketRef};

/// A pooled connection with the bookkeeping the pool needs.
///
/// Laid out for the cache. In a pool of thousands of connections taken in turn, the
/// slot a checkout gets has not been touched since its last turn, so every cache line
/// of it that the checkout and the return read is a miss. What they read comes first
/// (the connection, whose socket the probe looks at, then the clock fields, the
/// lifetime and the way back to the pool), on a line of its own: the bookkeeping takes
/// 32 bytes after the connection, so with a connection of up to 32 bytes (a tokio
/// `TcpStream` in an optimized build) it is all one line. The rest is read only when
/// a connection is reported or closed. Measured with cachegrind, one task, 4,096
/// connections: 5.2 first-level cache misses per checkout before, 3.0 after, against
/// bare deadpool's 1.25 (BENCHMARKS.md).
#[repr(C, align(64))]
pub(crate) struct Slot<M: Manager> {
    pub(crate) conn: M::Connection,
    /// When the connection last carried traffic the pool knows of: its return to the
    /// pool, or a successful ping.
    pub(crate) idle_since: CoarseInstant,
    /// How long it sat idle before its current checkout (zero for a new connection):
    /// what its fate in use teaches about the path's idle limit.
    pub(crate) reused_after: CoarseDuration,
    /// When the jittered `max_lifetime` runs out ([`CoarseInstant::NEVER`] without
    /// one).
    pub(crate) retire_at: CoarseInstant,
    pub(crate) tally: Tally<M>,
    pub(crate) id: u64,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) created: CoarseInstant,
    /// Whether it sat in the pool before its current checkout: it came from the spare
    /// stock (deadpool's own count says so for the others).
    pub(crate) spare: bool,
}

/// What deadpool holds: a connection, or a stand-in that withdraws a surplus permit
/// after the pool was resized down (see the module docs).
///
/// The slot is boxed so that what deadpool holds stays one pointer wide: deadpool
/// moves it at each step of a checkout (out of its queue, through `recycle`, into the
/// object it hands out) and back on return.
pub(crate) enum Entry<M: Manager> {
    Live(Box<Slot<M>>),
    Placeholder,
}

/// Counts its connection's close exactly once, when dropped.
///
/// The way back to the pool first: a return reads it, the fate only a close does
/// (see [`Slot`]'s layout).
#[repr(C)]
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

impl<M: Manager> Slot<M> {
    /// What a hook or a `retain` predicate is told about this connection.
    pub(crate) fn info(&self, now: CoarseInstant, idle: Duration) -> ConnectionInfo {
        ConnectionInfo {
            id: self.id,
            peer: self.peer,
            age: now.saturating_duration_since(self.created),
            idle,
        }
    }

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
                let said = match reason {
                    Eviction::ServerLimit => self.planned_detail(),
                    _ => None,
                };
                core.record_eviction(reason, dead, said.as_deref());
                self.tally.fate = Some(Fate::Evicted(reason));
            }
            Verdict::Reset(cause, detail) => {
                core.record_reset(cause, phase, dead, detail.as_deref());
                self.tally.fate = Some(Fate::Reset(cause, phase));
            }
        }
    }

    /// What the manager says about this connection, which it reported due to close
    /// ([`Broken::server_limit`](crate::Broken::server_limit)): which limit of the
    /// server's, for the eviction's event. Asked again rather than carried in the
    /// [`Verdict`], which every checkout pays for; a manager that panics here costs
    /// the event its detail, nothing more.
    #[cold]
    #[inline(never)]
    fn planned_detail(&self) -> Option<String> {
        let manager = &self.tally.parts.manager;
        let broken = catch_unwind(AssertUnwindSafe(|| manager.broken(&self.conn)))
            .ok()
            .flatten()?;
        if broken.planned { broken.detail } else { None }
    }

    /// Sets the reason this connection is closed with when it drops, without a trace
    /// event of its own (the caller reports it).
    pub(crate) fn evict_quietly(&mut self, reason: Eviction) {
        self.tally.fate = Some(Fate::Evicted(reason));
    }
}

/// The future of [`Parts::create`].
pub(crate) type Opening<'a, M> = Pin<
    Box<dyn Future<Output = Result<Entry<M>, ConnectError<<M as Manager>::Error>>> + Send + 'a>,
>;

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
    /// Connections the reaper opened to keep `min_idle`, and connections returned
    /// while a checkout waited for its turn to dial ([`Parts::hand_off`]), not yet
    /// taken by a checkout. They are idle connections like those in deadpool's queue,
    /// which deadpool offers no way to add to: a checkout that finds the queue empty
    /// takes one here before dialing.
    spare: Mutex<Vec<Box<Slot<M>>>>,
    /// Connects the refill has under way.
    refilling: AtomicUsize,
    /// What a healthy return must do besides going back to the queue: [`ON_RETURN`]
    /// when there is an on-return hook, plus [`WAITER`] for each checkout waiting for
    /// its turn to dial, to which the return hands its connection. One word, so that
    /// the return path pays one relaxed load and a branch for both (the hook's own
    /// test costs as much).
    detour: AtomicUsize,
    /// Wakes one checkout waiting for its turn to dial when a returned connection was
    /// put in the spare stock for it.
    handed_off: Notify,
}

/// In [`Parts::detour`]: the pool has an on-return hook.
const ON_RETURN: usize = 1;
/// In [`Parts::detour`]: one checkout waits for its turn to dial.
const WAITER: usize = 2;

/// Counts a checkout in [`Parts::detour`] while it waits for its turn to dial; a
/// cancelled checkout is uncounted when its future drops.
struct Waiter<'a>(&'a AtomicUsize);

impl<'a> Waiter<'a> {
    fn new(detour: &'a AtomicUsize) -> Waiter<'a> {
        detour.fetch_add(WAITER, Ordering::AcqRel);
        Waiter(detour)
    }
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(WAITER, Ordering::AcqRel);
    }
}

/// What [`Parts::gated_connect`] came back with.
enum Dialed<M: Manager> {
    /// A connection it opened.
    New(Slot<M>),
    /// Nothing: while it waited for its turn, a returned connection was put in the
    /// spare stock for it.
    HandedOff,
}

impl<M: Manager> Parts<M> {
    pub(crate) fn new(manager: M, core: Core, hooks: Hooks<M>) -> Arc<Parts<M>> {
        let round_trips_after = match hooks.before_checkout {
            Some(_) => CoarseDuration::ZERO,
            None => core.config.check_after,
        };
        let detour = if hooks.on_return.is_some() {
            ON_RETURN
        } else {
            0
        };
        Arc::new(Parts {
            manager,
            core,
            round_trips_after,
            spare: Mutex::new(Vec::new()),
            refilling: AtomicUsize::new(0),
            detour: AtomicUsize::new(detour),
            handed_off: Notify::new(),
            hooks,
        })
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
    /// The checks that need no I/O beyond the probe: used by checkout and the reaper.
    ///
    /// Inlined: on the checkout path a call costs about as much as the checks.
    #[inline]
    fn inspect(&self, slot: &Slot<M>, now: CoarseInstant) -> Verdict {
        // The probe first: a connection the path already closed is a reset (and
        // evidence about the path's idle limit) even when it is also past a limit of
        // ours. In the common case it costs an atomic load, no more than the limits.
        if let Some(socket) = self.manager.socket(&slot.conn) {
            let found = match probe::check(socket) {
                Liveness::Alive => None,
                Liveness::PeerClosed => Some(Verdict::Reset(ResetCause::PeerClosed, None)),
                Liveness::PeerReset => Some(Verdict::Reset(ResetCause::PeerReset, None)),
                // A raw socket is a duplicate of one a driver's task reads: bytes
                // waiting there are the task's next message (a late reply to a statement
                // close, a notification, or a server's goodbye before its FIN), not a
                // desync. The task reads them; a close behind them the probe reports
                // as `PeerClosed` (from the TCP state), or `Manager::broken` does.
                Liveness::UnexpectedData if matches!(socket, SocketRef::Raw(_)) => None,
                Liveness::UnexpectedData => Some(Verdict::Reset(ResetCause::UnexpectedData, None)),
                Liveness::Error(err) => {
                    // The message names what a layer saw (a TLS alert, for one).
                    let cause = ResetCause::of_io(&err, Phase::Idle);
                    Some(Verdict::Reset(cause, Some(err.to_string())))
                }
            };
            if let Some(found) = found {
                // The task that reads a raw socket's original saw the session end
                // before the probe could: a PostgreSQL backend's FATAL before its FIN,
                // and the RST that answers a write sent after that FIN. What the task
                // recorded is the cause; what the probe finds is its aftermath. A
                // planned close is no record: the peer closed first, which is a reset
                // and evidence about its limit.
                if matches!(socket, SocketRef::Raw(_))
                    && let Some(broken) = self.manager.broken(&slot.conn)
                    && !broken.planned
                {
                    return Verdict::from(broken);
                }
                return found;
            }
        }
        if now >= slot.retire_at {
            return Verdict::Evict(Eviction::MaxLifetime);
        }
        // Never before the limit: the idle time between two coarse readings can read
        // up to a kernel tick long.
        if self.core.idle_limit(now).is_some_and(|limit| {
            now.saturating_since(slot.idle_since) >= limit.saturating_add(CoarseDuration::MAX_LAG)
        }) {
            return Verdict::Evict(Eviction::IdleExpired);
        }
        Verdict::Keep
    }

    /// The checks without I/O, the manager's own among them.
    #[inline]
    fn local_checks(&self, slot: &Slot<M>, now: CoarseInstant) -> Verdict {
        let verdict = self.inspect(slot, now);
        if !matches!(verdict, Verdict::Keep) {
            return verdict;
        }
        match self.manager.broken(&slot.conn) {
            Some(broken) => Verdict::from(broken),
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
    pub(crate) async fn checkout_check(&self, slot: &mut Slot<M>) -> bool {
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
                    let info = slot.info(CoarseInstant::now(), slot.reused_after.to_std());
                    hooks::run::<M>(hook, Hook::BeforeCheckout, &mut slot.conn, info, &self.core)
                        .await
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

    /// Whether a healthy return has more to do than go back to the queue: run the
    /// on-return hook, or hand its connection to a checkout waiting to dial. One
    /// relaxed load: a return that misses a checkout that just began to wait goes
    /// back to the queue, and that checkout dials, as it would have without hand-off.
    #[inline(always)]
    pub(crate) fn detour(&self) -> bool {
        self.detour.load(Ordering::Relaxed) != 0
    }

    /// Whether a checkout waits for its turn to dial.
    pub(crate) fn awaited(&self) -> bool {
        self.detour.load(Ordering::Relaxed) >= WAITER
    }

    /// Puts a healthy returned connection, already out of deadpool's queue, in the
    /// spare stock and wakes one checkout waiting for its turn to dial, which takes it
    /// instead of dialing. Should that checkout be gone (cancelled, or it got its turn
    /// at the same moment), the connection waits in the spare stock like any other:
    /// the next checkout that finds the queue empty takes it, or the reaper closes it
    /// by its idle rules. It is counted open all along: the checkout that takes it
    /// gives back the room it had reserved to dial.
    ///
    /// The size cap and `close()` are checked under the spare stock's lock, as the
    /// refill does: `close()` and `resize()` change them before they empty the stock,
    /// so a connection either sees the change here or is emptied out with the stock.
    pub(crate) fn hand_off(&self, mut slot: Box<Slot<M>>) {
        let mut spare = self.spare.lock().unwrap_or_else(PoisonError::into_inner);
        if self.core.is_closing() || self.core.open() > self.core.max_size.load(Ordering::Acquire) {
            drop(spare);
            self.manager.detach(&mut slot.conn);
            // Counted as its drop explains it: `closed`, or `resize`.
            drop(slot);
            return;
        }
        slot.spare = true;
        spare.push(slot);
        drop(spare);
        self.handed_off.notify_one();
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
    /// Wakes every checkout waiting for its turn to dial, to look at the pool again:
    /// after `close()`, to fail with `Closed` instead of dialing.
    pub(crate) fn wake_waiting_turns(&self) {
        self.handed_off.notify_waiters();
    }

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
        // The refill does not wait on an open circuit: the next tick tries again. Nor
        // does it take a returned connection: that would only move an idle connection
        // from the queue to the spare stock.
        let result = self.gated_connect(Duration::ZERO, false).await;
        self.refilling.fetch_sub(1, Ordering::AcqRel);
        let result = match result {
            Ok(Dialed::New(slot)) => Ok(slot),
            // Not asked for: nothing was opened.
            Ok(Dialed::HandedOff) => return None,
            Err(err) => Err(err),
        };
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
    /// While the circuit is open it waits up to `patience` for it to let a connect
    /// through. With `take_returned`, a connection returned while it waits for its
    /// turn (a gate permit, or the circuit) ends the wait instead
    /// ([`Dialed::HandedOff`]).
    async fn gated_connect(
        self: &Arc<Self>,
        patience: Duration,
        take_returned: bool,
    ) -> Result<Dialed<M>, ConnectError<M::Error>> {
        let observer = &self.core.observer;
        let give_up = tokio::time::Instant::now() + patience;
        loop {
            let left = give_up.saturating_duration_since(tokio::time::Instant::now());
            let entered = if take_returned {
                self.wait_turn(left).await
            } else {
                Some(self.core.gate.enter_within(left).await)
            };
            let Some(entered) = entered else {
                return Ok(Dialed::HandedOff);
            };
            let ticket = entered.map_err(|refusal| {
                observer.gate_rejected();
                ConnectError::CircuitOpen(Box::new(refusal))
            })?;
            // Its turn came after `close()`: nothing is dialed for a closed pool.
            if self.core.is_closing() {
                return Err(ConnectError::PoolClosed);
            }
            if ticket.is_trial() {
                observer.circuit(CircuitEvent::HalfOpen);
            }
            let result = self.connect().await;
            let mut permanent = false;
            let moved = match &result {
                Ok(_) => ticket.succeeded(),
                Err(ConnectError::Failed(cause, source)) if source.is_permanent() => {
                    permanent = true;
                    ticket.failed_for_good(*cause, source)
                }
                Err(ConnectError::Failed(cause, source)) => ticket.failed(*cause, source),
                Err(timed_out @ ConnectError::TimedOut(_)) => {
                    ticket.failed(ResetCause::ConnectTimeout, timed_out)
                }
                Err(ConnectError::CircuitOpen(_) | ConnectError::PoolClosed) => {
                    drop(ticket);
                    None
                }
            };
            let reopened = matches!(moved, Some(CircuitEvent::Opened { .. }));
            if let Some(event) = moved {
                observer.circuit(event);
            }
            // A connect that opened the circuit (or a trial that reopened it) is the
            // circuit's news, not this checkout's end: with time left it waits for the
            // next trial like the checkouts parked behind it, instead of spending one
            // of its caller's attempts on each failed trial. A permanent failure is
            // the caller's answer at once: the next trial would only repeat it.
            if reopened && !permanent && tokio::time::Instant::now() < give_up {
                continue;
            }
            return result.map(Dialed::New);
        }
    }

    /// The connect gate's answer ([`Gate::enter_within`](crate::breaker::Gate::enter_within)),
    /// or `None` when a returned connection was handed to this checkout while it
    /// waited for its turn.
    ///
    /// A checkout that gets its turn at once is not counted as waiting: it dials, and a
    /// connection returned meanwhile stays in the queue.
    async fn wait_turn(&self, patience: Duration) -> Option<Result<Ticket<'_>, Refusal>> {
        let mut enter = pin!(self.core.gate.enter_within(patience));
        if let Poll::Ready(entered) =
            std::future::poll_fn(|cx| Poll::Ready(enter.as_mut().poll(cx))).await
        {
            return Some(entered);
        }
        let _waiting = Waiter::new(&self.detour);
        loop {
            // A hand-off made before this `notified()` left its wake-up stored
            // (`notify_one`), so none is missed between the count and the wait. A
            // `close()` after it wakes it (`notify_waiters`); one before it, the check
            // below sees.
            let handed_off = self.handed_off.notified();
            if self.core.is_closing() {
                return None;
            }
            tokio::select! {
                biased;
                () = handed_off => {
                    // Another checkout may have taken it first: then wait on, unless
                    // `close()` emptied the stock, which ends the checkout.
                    if self.spare_count() > 0 || self.core.is_closing() {
                        return None;
                    }
                }
                entered = enter.as_mut() => return Some(entered),
            }
        }
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
                    retire_at: lifetime
                        .and_then(|l| now.checked_add(l))
                        .unwrap_or(CoarseInstant::NEVER),
                    idle_since: now,
                    reused_after: CoarseDuration::ZERO,
                    spare: false,
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

impl<M: Manager> Parts<M> {
    /// A connection for a checkout that found the queue empty: one from the spare
    /// stock that passes the checkout check, else a new one; a placeholder when the
    /// size cap has no room. While it waits for its turn to dial, a connection
    /// returned meanwhile is handed to it through the spare stock
    /// ([`Parts::hand_off`]), and it takes that one instead of dialing.
    ///
    /// Opening a connection takes a round trip or more, and its future is large
    /// (resolve, connect, the manager's handshake). It lives on the heap so that
    /// every checkout's future stays small: a checkout that finds an idle connection
    /// would otherwise copy kilobytes it never uses.
    pub(crate) fn create(self: &Arc<Self>) -> Opening<'_, M> {
        Box::pin(async {
            let give_up = tokio::time::Instant::now() + self.core.config.circuit_wait();
            let mut slot = loop {
                while let Some(mut slot) = self.take_spare() {
                    if self.checkout_check(&mut slot).await {
                        return Ok(Entry::Live(slot));
                    }
                    self.manager.detach(&mut slot.conn);
                }
                let Some(reservation) = self.core.reserve() else {
                    return Ok(Entry::Placeholder);
                };
                let patience = give_up.saturating_duration_since(tokio::time::Instant::now());
                match self.gated_connect(patience, true).await? {
                    Dialed::New(slot) => {
                        reservation.keep();
                        break slot;
                    }
                    // The returned connection is counted open already: the room
                    // reserved for a new one goes back, and the spare stock is looked
                    // at again.
                    Dialed::HandedOff => {
                        drop(reservation);
                        if self.core.is_closing() {
                            return Err(ConnectError::PoolClosed);
                        }
                    }
                }
            };
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
    }
}

#[cfg(test)]
mod tests {
    use std::mem::{align_of, offset_of, size_of};

    use tokio::net::TcpStream;

    use super::{Slot, Tally};
    use crate::drivers::tcp::TcpManager;

    /// What a checkout and a return read of a slot follows the connection, in 32
    /// bytes: with a connection of up to 32 bytes (a tokio `TcpStream` in an optimized
    /// build; mio adds a field to it in debug builds) all of it is on the slot's first
    /// cache line. A field added before `tally` would push the pool pointer off it.
    #[test]
    fn what_a_checkout_reads_follows_the_connection_within_32_bytes() {
        type S = Slot<TcpManager>;
        assert_eq!(align_of::<S>(), 64);
        assert_eq!(offset_of!(S, conn), 0);
        let conn = size_of::<TcpStream>();
        assert_eq!(offset_of!(S, idle_since), conn);
        let end = offset_of!(S, tally) + offset_of!(Tally<TcpManager>, parts) + size_of::<usize>();
        assert!(
            end - conn <= 32,
            "the bookkeeping takes {} bytes after the connection",
            end - conn
        );
        for hot in [offset_of!(S, reused_after), offset_of!(S, retire_at)] {
            assert!(
                hot < end,
                "a field every checkout reads lies at byte {hot}, past the pool pointer"
            );
        }
    }
}
