//! The door to deadpool: the one file that names it.
//!
//! deadpool is the queue and the semaphore the pool stands on: it holds the idle
//! entries, admits at most `max_size` checkouts, queues the rest fairly, and runs the
//! pool's `create` and `recycle` (the checkout check) on an entry before handing it
//! out. The rest of the crate sees only what it needs from it:
//!
//! | here | what it does |
//! | --- | --- |
//! | [`Backend::try_checkout`] | a checkout that does not queue: a free permit or [`Refused::Busy`] at once |
//! | [`Backend::checkout`] | a checkout that waits in the queue (its caller bounds the wait) |
//! | dropping a [`Lease`] | the entry goes back to the queue (or is shed above the size) |
//! | [`Lease::take`] | the entry leaves the queue for good, its slot freed |
//! | [`Lease::withdraw`] | the same, for a connection that stays the pool's (a hand-off) |
//! | [`Backend::occupancy`], [`Backend::resize`], [`Backend::close`], [`Backend::retain`] | status, size, close, and the idle entries a predicate rejects |
//! | [`Backend::retain_part`] | the same over a part of the queue, resumed where the last part stopped |
//!
//! deadpool's own configuration errors cannot happen here: the queue is built with no
//! deadpool timeout and no deadpool hook (the pool bounds waits with tokio's timer and
//! runs its hooks itself), and checkouts pass only a zero wait, which deadpool answers
//! without its runtime. Their variants still exist in deadpool's error type; they are
//! reported as what they would be, a defect ([`Refused::Internal`]), not as a closed
//! pool.

use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool::managed::{self, Metrics, Object, PoolError, RecycleError, RecycleResult, Timeouts};

use super::config::{BuildError, QueueMode};
use super::slot::{Entry, Parts, Slot};
use super::state::ConnectError;
use crate::manager::Manager;

/// deadpool's manager: the pool's parts, opening and checking entries.
pub(crate) struct Adapter<M: Manager>(Arc<Parts<M>>);

/// What the pool's `create` and `recycle` report to deadpool.
#[derive(Debug)]
pub(crate) enum Failure<E> {
    /// A connect failed: the checkout gets this error.
    Connect(ConnectError<E>),
    /// An idle entry was not handed out: a placeholder, or a connection that failed
    /// the checkout check (its fate, with the cause, is decided and counted on its
    /// slot). deadpool drops it and tries the next one.
    Rejected,
}

impl<M: Manager> managed::Manager for Adapter<M> {
    type Type = Entry<M>;
    type Error = Failure<M::Error>;

    async fn create(&self) -> Result<Entry<M>, Self::Error> {
        self.0.create().await.map_err(Failure::Connect)
    }

    fn detach(&self, entry: &mut Entry<M>) {
        // deadpool calls this for every object that leaves its pool: shed, taken,
        // rejected at checkout, or removed by `retain`.
        if let Entry::Live(slot) = entry {
            self.0.manager.detach(&mut slot.conn);
        }
    }

    async fn recycle(&self, entry: &mut Entry<M>, _: &Metrics) -> RecycleResult<Self::Error> {
        let Entry::Live(slot) = entry else {
            // A placeholder that went back to the queue: the pool had room again by
            // then. Dropping it frees its permit; it was never a connection.
            return Err(RecycleError::Backend(Failure::Rejected));
        };
        if self.0.checkout_check(slot).await {
            Ok(())
        } else {
            Err(RecycleError::Backend(Failure::Rejected))
        }
    }
}

/// The queue of a pool's idle connections.
pub(crate) struct Backend<M: Manager> {
    queue: managed::Pool<Adapter<M>>,
}

/// A checkout that did not produce a connection.
#[derive(Debug)]
pub(crate) enum Refused<E> {
    /// No connection now: no permit was free (a checkout that does not queue), or
    /// the entry handed out was a placeholder (see `slot`), now dropped.
    Busy,
    /// The queue was closed.
    Closed,
    /// A new connection was needed, and its connect failed.
    Connect(ConnectError<E>),
    /// deadpool failed for a reason of its own configuration, which this file rules
    /// out (see the module docs): a defect, with deadpool's words.
    Internal(String),
}

/// The queue's occupancy, as deadpool counts it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Occupancy {
    pub(crate) max_size: usize,
    /// Entries in the queue and handed out.
    pub(crate) size: usize,
    /// Entries in the queue.
    pub(crate) available: usize,
    /// Checkouts waiting for a permit.
    pub(crate) waiting: usize,
}

/// deadpool's checkout that does not queue: a free permit or `Timeout(Wait)` at once.
const NO_QUEUEING: Timeouts = Timeouts {
    wait: Some(Duration::ZERO),
    create: None,
    recycle: None,
};

impl<M: Manager> Backend<M> {
    /// A queue of at most `max_size` entries, with no deadpool timeout and no
    /// deadpool hook.
    ///
    /// # Errors
    /// [`BuildError::Internal`] if deadpool refused that configuration, which it
    /// refuses only for timeouts without a runtime.
    pub(crate) fn new(
        parts: Arc<Parts<M>>,
        max_size: usize,
        queue_mode: QueueMode,
    ) -> Result<Backend<M>, BuildError> {
        let queue_mode = match queue_mode {
            QueueMode::Fifo => managed::QueueMode::Fifo,
            QueueMode::Lifo => managed::QueueMode::Lifo,
        };
        let queue = managed::Pool::builder(Adapter(parts))
            .max_size(max_size)
            .queue_mode(queue_mode)
            .build()
            .map_err(|err| BuildError::Internal(err.to_string()))?;
        Ok(Backend { queue })
    }

    #[inline]
    pub(crate) fn parts(&self) -> &Arc<Parts<M>> {
        &self.queue.manager().0
    }

    /// A checkout that does not queue. Pending only while the entry it took needs
    /// I/O (a ping, a hook, a connect). Its outcome is [`settle`]d by the caller.
    ///
    /// deadpool's own future, built where the caller pins it. A future that holds
    /// deadpool's, built outside it, copies it whole on its first poll (measured with
    /// callgrind: 116 instructions per checkout, see BENCHMARKS.md).
    #[inline]
    pub(crate) fn try_checkout(&self) -> impl Future<Output = Attempt<M>> + Send + '_ {
        self.queue.timeout_get(&NO_QUEUEING)
    }

    /// A checkout that waits in the queue for as long as it takes: the caller bounds it.
    pub(crate) async fn checkout(&self) -> Result<Lease<M>, Refused<M::Error>> {
        settle(self.queue.get().await)
    }

    pub(crate) fn occupancy(&self) -> Occupancy {
        let status = self.queue.status();
        Occupancy {
            max_size: status.max_size,
            size: status.size,
            available: status.available,
            waiting: status.waiting,
        }
    }

    /// deadpool's resize: it sheds idle entries only while it holds more than
    /// `max_size` (the pool's own size cap covers the rest, see `slot`).
    pub(crate) fn resize(&self, max_size: usize) {
        self.queue.resize(max_size);
    }

    /// Closes the queue: waiting and later checkouts get [`Refused::Closed`].
    pub(crate) fn close(&self) {
        self.queue.close();
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.queue.is_closed()
    }

    /// Removes the idle connections `keep` rejects, under deadpool's lock, and
    /// returns them, their manager's `detach` done, for the caller to decide their
    /// fate. Placeholders are removed too: they are not connections.
    pub(crate) fn retain(&self, mut keep: impl FnMut(&Slot<M>) -> bool) -> Vec<Box<Slot<M>>> {
        let removed = self.queue.retain(|entry, _| match entry {
            Entry::Live(slot) => keep(slot),
            Entry::Placeholder => false,
        });
        removed
            .removed
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::Live(slot) => Some(slot),
                Entry::Placeholder => None,
            })
            .collect()
    }

    /// [`Backend::retain`] over at most `budget` idle entries, those after the entry
    /// `after` marks (from the front when `after` is `None`, or when that entry has
    /// left the queue since), so that a pass over a long queue can release the lock
    /// between parts.
    ///
    /// A part still walks the whole queue under the lock, but an entry outside it
    /// costs a read of deadpool's entry (its creation time, to find the mark), not
    /// of its slot. Parts cover every entry that stays idle through the pass, in
    /// both queue modes: entries never change order, checkouts take them from the
    /// front of the part already passed (FIFO) or of the returned ones first
    /// (LIFO), and a mark that a checkout took means everything before it went too.
    ///
    /// A part also ends once its removals have moved [`MOVE_BUDGET`] entries:
    /// deadpool's `retain` takes each rejected entry out with `VecDeque::remove`,
    /// which shifts every entry on the shorter side of it, so rejections scattered
    /// through a long queue cost the queue's length each (measured with
    /// `reaper-pass`, 16,384 idle connections, every second peer gone: one part of
    /// 2,048 held the lock for 8 ms).
    pub(crate) fn retain_part(
        &self,
        after: Option<Mark>,
        budget: usize,
        mut keep: impl FnMut(&Slot<M>) -> bool,
    ) -> Part<M> {
        let started = Instant::now();
        let mut found = after.is_none();
        let mut looked_at = 0;
        let mut next = after;
        // Where deadpool's walk stands: entries kept so far, and the queue's length.
        let mut index = 0;
        let mut length = self.queue.status().available;
        let mut moved = 0;
        let removed = self.queue.retain(|entry, metrics| {
            let kept = if !found {
                found = Some(Mark(metrics.created)) == after;
                true
            } else if looked_at == budget || moved >= MOVE_BUDGET {
                true
            } else {
                looked_at += 1;
                match entry {
                    Entry::Live(slot) => {
                        let kept = keep(slot);
                        if kept {
                            next = Some(Mark(metrics.created));
                        }
                        kept
                    }
                    Entry::Placeholder => false,
                }
            };
            if kept {
                index += 1;
            } else {
                moved += index.min(length.saturating_sub(index + 1));
                length = length.saturating_sub(1);
            }
            kept
        });
        let held = started.elapsed();
        let removed = removed
            .removed
            .into_iter()
            .filter_map(|entry| match entry {
                Entry::Live(slot) => Some(slot),
                Entry::Placeholder => None,
            })
            .collect();
        if !found {
            // The mark was checked out, and everything before it: what is left was
            // not looked at. From the front, then.
            let mut rest = self.retain_part(None, budget, keep);
            rest.removed.extend::<Vec<_>>(removed);
            rest.held = rest.held.max(held);
            return rest;
        }
        Part {
            removed,
            next,
            done: looked_at < budget && moved < MOVE_BUDGET,
            looked_at,
            held,
        }
    }

    /// A handle that does not keep the queue alive.
    pub(crate) fn weak(&self) -> WeakBackend<M> {
        WeakBackend(self.queue.weak())
    }
}

/// Entries that the removals of one [`Backend::retain_part`] may shift before the part
/// ends: about 3 MB of deadpool's queue entries moved, a fraction of a millisecond.
const MOVE_BUDGET: usize = if cfg!(test) { 8 } else { 65_536 };

/// An idle entry's place in the queue, known across parts of a pass by deadpool's
/// creation time of it (precise, so two entries share one only if created in the
/// same nanosecond).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mark(Instant);

/// What one [`Backend::retain_part`] did.
pub(crate) struct Part<M: Manager> {
    /// The idle connections rejected, their manager's `detach` done.
    pub(crate) removed: Vec<Box<Slot<M>>>,
    /// Where the next part starts: after this entry.
    pub(crate) next: Option<Mark>,
    /// The part reached the end of the queue.
    pub(crate) done: bool,
    /// Entries `keep` was asked about.
    pub(crate) looked_at: usize,
    /// How long deadpool's lock was held (the longer of two holds when the mark had
    /// gone).
    pub(crate) held: Duration,
}

/// The raw outcome of [`Backend::try_checkout`], for [`settle`]: an entry not yet
/// known to be a connection, or deadpool's error.
pub(crate) type Attempt<M> = Result<Object<Adapter<M>>, PoolError<Failure<<M as Manager>::Error>>>;

/// The outcome of one of deadpool's checkouts, in the pool's terms.
///
/// Always inlined: on the checkout path a call costs more than the match (measured:
/// 36 instructions more per checkout when LLVM kept it out of line).
#[inline(always)]
pub(crate) fn settle<M: Manager>(attempt: Attempt<M>) -> Result<Lease<M>, Refused<M::Error>> {
    match attempt {
        Ok(object) => match *object {
            Entry::Live(_) => Ok(Lease(object)),
            // Dropping it (now) withdraws one surplus permit: see `slot`.
            Entry::Placeholder => Err(Refused::Busy),
        },
        // The zero wait of a checkout that does not queue: the only deadpool timeout
        // this file sets.
        Err(PoolError::Timeout(_)) => Err(Refused::Busy),
        Err(PoolError::Closed) => Err(Refused::Closed),
        Err(PoolError::Backend(Failure::Connect(err))) => Err(Refused::Connect(err)),
        // deadpool drops what `recycle` rejects and moves on to the next entry; were
        // a rejection to reach the checkout, it found no connection, as with a
        // placeholder.
        Err(PoolError::Backend(Failure::Rejected)) => Err(Refused::Busy),
        Err(PoolError::NoRuntimeSpecified) => Err(Refused::Internal(
            "deadpool has no runtime for a timeout".to_owned(),
        )),
        Err(PoolError::PostCreateHook(err)) => Err(Refused::Internal(format!(
            "a deadpool post-create hook failed: {err:?}"
        ))),
    }
}

/// An entry checked out of the queue: a connection (a placeholder is never leased).
/// Dropped, it goes back to the queue.
pub(crate) struct Lease<M: Manager>(Object<Adapter<M>>);

impl<M: Manager> Lease<M> {
    #[inline]
    pub(crate) fn entry(&self) -> &Entry<M> {
        &self.0
    }

    #[inline]
    pub(crate) fn entry_mut(&mut self) -> &mut Entry<M> {
        &mut self.0
    }

    /// Whether the queue handed this entry out before: it was recycled.
    pub(crate) fn reused(&self) -> bool {
        Object::metrics(&self.0).recycle_count > 0
    }

    /// Takes the entry out of the queue for good: its manager's `detach` runs, and
    /// its place is free for a new connection.
    pub(crate) fn take(self) -> Entry<M> {
        Object::take(self.0)
    }

    /// Takes the entry out of the queue for good without its manager's `detach`: the
    /// connection stays the pool's, on its way to a checkout that waits to dial.
    ///
    /// deadpool's `Object::take` (0.13) lowers the queue's size by one and gives its
    /// semaphore permit back (unless the queue is above its size after a resize), as a
    /// return does; it runs `detach` on what the object holds, here a placeholder.
    pub(crate) fn withdraw(mut self) -> Entry<M> {
        let entry = std::mem::replace(&mut *self.0, Entry::Placeholder);
        drop(Object::take(self.0));
        entry
    }
}

/// A [`Backend`] that does not keep the queue alive: the reaper's.
pub(crate) struct WeakBackend<M: Manager>(managed::WeakPool<Adapter<M>>);

impl<M: Manager> WeakBackend<M> {
    pub(crate) fn upgrade(&self) -> Option<Backend<M>> {
        self.0.upgrade().map(|queue| Backend { queue })
    }
}
