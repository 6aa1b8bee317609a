//! What the pool shares between checkouts, the reaper and returned connections: the
//! [`Core`] (configuration, the size cap's count, the connect gate, the books), and
//! the small decisions a connection's end is made of ([`Verdict`], [`Fate`],
//! [`Obituary`]), with why a connect failed ([`ConnectError`]).
//!
//! This file imports none of its users (the slots, the hooks, the queue, the pool
//! handle): each of them reads the core, and the core knows none of them.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use super::config::Config;
use crate::breaker::{Gate, Refusal};
use crate::cause::{Eviction, Phase, ResetCause};
use crate::clock::{CoarseDuration, CoarseInstant};
use crate::diagnosis::IdleLimitLearner;
use crate::dial::Dialer;
use crate::manager::Broken;
use crate::observe::Observer;
use crate::retry::budget::RetryState;

/// How a connection's life ended, counted when its slot drops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fate {
    Reset(ResetCause, Phase),
    Evicted(Eviction),
}

/// Why an idle or returning connection leaves the pool.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Keep,
    Evict(Eviction),
    Reset(ResetCause, Option<String>),
}

impl From<Broken> for Verdict {
    /// What the pool makes of a [`Manager::broken`](crate::Manager::broken) report.
    /// A planned close keeps no detail here: a variant that carried it cost every
    /// checkout 8 instructions (measured), so its event asks the manager again, off
    /// the checkout path ([`Slot::condemn`](super::slot::Slot::condemn)).
    fn from(broken: Broken) -> Verdict {
        if broken.planned {
            Verdict::Evict(Eviction::ServerLimit)
        } else {
            Verdict::Reset(broken.cause, broken.detail)
        }
    }
}

pub(crate) use crate::observe::Obituary;

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
    pub(crate) next_id: AtomicU64,
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
    pub(crate) fn unplanned_fate(&self) -> Fate {
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
    pub(crate) fn closed(&self, fate: Fate) {
        self.open.fetch_sub(1, Ordering::AcqRel);
        match fate {
            Fate::Reset(cause, phase) => self.observer.closed_reset(cause, phase),
            Fate::Evicted(reason) => self.observer.closed_evicted(reason),
        }
    }

    /// The idle limit in force now: `idle_timeout`, or the learned limit when it is
    /// lower (see [`IdleLimit`](crate::IdleLimit)).
    #[inline]
    pub(crate) fn idle_limit(&self, now: CoarseInstant) -> Option<CoarseDuration> {
        self.learner.evict_after(now)
    }

    /// A connection that sat idle for `idle` before its checkout came back healthy.
    pub(crate) fn record_reuse(&self, idle: Duration) {
        if let Some(limit) = self.learner.reused(idle, CoarseInstant::now()) {
            self.observer.idle_limit_changed(&limit);
        }
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

    /// Records a connection closed on purpose, with what its manager said about it.
    pub(crate) fn record_eviction(&self, reason: Eviction, gone: &Obituary, detail: Option<&str>) {
        self.observer.evicted(reason, gone, detail);
    }

    /// The idle limit the upstream announced on a connection that came back healthy
    /// (see [`Manager::announced_idle_limit`](crate::Manager::announced_idle_limit)):
    /// published when it is news. Not evidence for the learner: a promise the manager
    /// keeps per connection.
    #[inline]
    pub(crate) fn announced(&self, limit: Duration) {
        self.observer
            .announced_idle_limit(limit, || self.learner.current());
    }
}

/// Room for one connection under the size cap, held while it is being opened. Given
/// back when dropped (the connect failed, or its future was cancelled) unless
/// [`Reservation::keep`] handed it to the new connection.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_planned_close_is_an_eviction_and_a_broken_connection_a_reset() {
        let due = Broken::server_limit("closed before the server's Keep-Alive: timeout=5 would");
        assert_eq!(Verdict::from(due), Verdict::Evict(Eviction::ServerLimit));
        let reset = Broken::new(ResetCause::PeerClosed).with_detail("57P01");
        assert_eq!(
            Verdict::from(reset),
            Verdict::Reset(ResetCause::PeerClosed, Some("57P01".to_owned()))
        );
    }
}
