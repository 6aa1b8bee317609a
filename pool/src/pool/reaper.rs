//! The reaper: one background task per pool that keeps the idle connections honest.
//!
//! Every `reaper_interval` it probes each idle connection (free unless something
//! arrived on it), asks the manager whether it is broken, closes those whose peer is
//! gone and those past their idle or lifetime limit, starts connects to keep
//! `min_idle` ready, and publishes the occupancy gauges. It goes over a long queue in
//! parts, releasing deadpool's lock between them (see [`PART`]). deadpool alone never
//! looks at an idle connection, so a socket whose server closed it sits in
//! `CLOSE_WAIT` until the next checkout happens to pop it.
//!
//! Nothing in a tick can end the reaper: the manager's code it calls under deadpool's
//! lock is contained (a panic there discards that connection), and a tick that
//! panics anyway is logged, and the next one runs. The task holds only a weak
//! reference: it ends when the pool is dropped or closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::MissedTickBehavior;

use super::backend::{Backend, WeakBackend};
use super::slot::Slot;
use super::state::{Obituary, Verdict};
use crate::cause::Phase;
use crate::clock::CoarseInstant;
use crate::manager::Manager;
use crate::observe::Occupancy;

/// Starts the reaper of the pool whose queue is `backend`: the handle aborts it.
pub(super) fn spawn<M: Manager>(
    backend: &Backend<M>,
    runtime: &tokio::runtime::Handle,
) -> tokio::task::AbortHandle {
    let interval = backend.parts().core.config.reaper_interval;
    runtime.spawn(run(backend.weak(), interval)).abort_handle()
}

async fn run<M: Manager>(weak: WeakBackend<M>, interval: std::time::Duration) {
    // A random phase: pools built together (a fleet deployed at once, or many pools in
    // one process) would otherwise probe and refill in lock-step after an outage. Drawn
    // from the second half of an interval: from all of it, a pool given an hour's
    // interval could tick in its first second, and a first tick is never later than
    // one interval either way.
    let phase = interval.mul_f64(0.5 + fastrand::f64() / 2.0);
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + phase, interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let Some(pool) = weak.upgrade() else { return };
        if pool.is_closed() {
            return;
        }
        // A task of its own, so that a panic ends this tick and not the reaper.
        let parts = Arc::clone(pool.parts());
        if let Err(err) = tokio::spawn(async move { tick(&pool).await }).await
            && err.is_panic()
        {
            parts.core.observer.reaper_panicked();
        }
    }
}

/// One pass: evict, refill, publish. Returns how long the pass over deadpool's queue
/// held its lock, during which every checkout and return of the pool waits.
pub(super) async fn tick<M: Manager>(pool: &Backend<M>) -> Duration {
    let held = evict(pool).await;
    refill(pool);
    let parts = pool.parts();
    let core = &parts.core;
    let status = pool.occupancy();
    let occupancy = Occupancy {
        idle: status.available + parts.spare_count(),
        in_use: status.size.saturating_sub(status.available),
        waiters: status.waiting + core.yielding.load(std::sync::atomic::Ordering::Acquire),
    };
    let limit = core.learner.snapshot(CoarseInstant::now());
    core.observer.tick(occupancy, core.gate.state(), &limit);
    held
}

/// Idle connections one part of a pass looks at under deadpool's lock. A look costs
/// 50 to 85 ns in a large pool, whose slots and sockets are cold by the next tick
/// (`reaper-pass`, BENCHMARKS.md): a part holds the lock for about 0.1 to 0.3 ms, and
/// a pass over 16,384 connections in one part held it for 0.8 to 1.4 ms, each
/// checkout and return of the pool waiting meanwhile.
const PART: usize = if cfg!(test) { 4 } else { 2048 };

/// Closes the idle connections whose peer is gone or whose limits ran out. Returns the
/// longest time a part of the pass held deadpool's lock.
///
/// The pass goes over deadpool's queue in parts of [`PART`] connections, and lets
/// other tasks run between them. It looks at most at the connections idle when it
/// began and one part more: a connection returned during the pass is looked at by the
/// next tick, so a busy pool's returns cannot keep a pass going.
async fn evict<M: Manager>(pool: &Backend<M>) -> Duration {
    let parts = pool.parts();
    let mut held = Duration::ZERO;
    let mut mark = None;
    let mut left = pool.occupancy().available + PART;
    loop {
        let now = CoarseInstant::now();
        // `retain_part` runs under deadpool's slot lock: only the free checks happen
        // there (contained, so that a panic in the manager's code cannot poison the
        // lock), and the reporting, which may write logs, waits until the lock is
        // released.
        let mut verdicts: HashMap<u64, (Verdict, Obituary)> = HashMap::new();
        let part = pool.retain_part(mark, PART.min(left), |slot| {
            match parts.inspect_idle(slot, now) {
                Verdict::Keep => true,
                verdict => {
                    verdicts.insert(slot.id, (verdict, slot.obituary(now)));
                    false
                }
            }
        });
        held = held.max(part.held);
        condemn(part.removed, &mut verdicts);
        left = left.saturating_sub(part.looked_at);
        if part.done || left == 0 {
            break;
        }
        mark = part.next;
        tokio::task::yield_now().await;
    }
    let now = CoarseInstant::now();
    let mut verdicts: HashMap<u64, (Verdict, Obituary)> = HashMap::new();
    let spare = parts.drain_spare(|slot| match parts.inspect_idle(slot, now) {
        Verdict::Keep => false,
        verdict => {
            verdicts.insert(slot.id, (verdict, slot.obituary(now)));
            true
        }
    });
    condemn(spare, &mut verdicts);
    held
}

/// Records and closes the idle connections a pass removed, with their verdicts.
fn condemn<M: Manager>(
    removed: Vec<Box<Slot<M>>>,
    verdicts: &mut HashMap<u64, (Verdict, Obituary)>,
) {
    for mut slot in removed {
        if let Some((verdict, dead)) = verdicts.remove(&slot.id) {
            slot.condemn(verdict, Phase::Idle, &dead);
        }
    }
}

/// Starts connects until `min_idle` connections are idle, counting those under way.
///
/// Each connect runs as a task of its own and puts its connection in the spare stock,
/// where the next checkout that finds deadpool's queue empty takes it. Nothing is
/// checked out to do this: a refill never holds an idle connection away from a user,
/// however long its connects take.
fn refill<M: Manager>(pool: &Backend<M>) {
    let parts = pool.parts();
    let min_idle = parts.core.config.min_idle;
    let status = pool.occupancy();
    let ready = status.available + parts.spare_count() + parts.refilling();
    let room = parts
        .core
        .max_size
        .load(std::sync::atomic::Ordering::Acquire)
        .saturating_sub(parts.core.open());
    for _ in 0..min_idle.saturating_sub(ready).min(room) {
        tokio::spawn(Arc::clone(parts).refill_one());
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use crate::Pool;
    use crate::cause::{Phase, ResetCause};
    use crate::drivers::tcp::TcpManager;

    #[tokio::test(start_paused = false)]
    async fn reaper_stops_when_the_pool_is_dropped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::builder(TcpManager::new(listener.local_addr().unwrap()))
            .reaper_interval(Duration::from_millis(10))
            .build()
            .unwrap();
        let weak = pool.backend().weak();
        drop(pool);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(weak.upgrade().is_none());
    }

    /// A pass over more idle connections than one part holds still closes every
    /// connection whose peer went away, wherever it stands in the queue.
    #[tokio::test]
    async fn a_pass_in_parts_closes_every_dead_connection() {
        const OPEN: usize = 6 * super::PART + 1;
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let pool = Pool::builder(TcpManager::new(listener.local_addr().unwrap()))
            .max_size(OPEN)
            .reaper_interval(Duration::from_secs(3600))
            .build()
            .unwrap();
        let accepting = tokio::spawn(async move {
            let mut ends = Vec::new();
            for _ in 0..OPEN {
                ends.push(listener.accept().await.unwrap().0);
            }
            ends
        });
        let mut held = Vec::new();
        for _ in 0..OPEN {
            held.push(pool.get().await.unwrap());
        }
        drop(held);
        let ends = accepting.await.unwrap();
        // Every third server end closes, the last of the queue among them.
        let (closed, open): (Vec<_>, Vec<_>) =
            ends.into_iter().enumerate().partition(|(i, _)| i % 3 == 0);
        drop(closed);
        // Time for the I/O driver to record the FINs the probe reads.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert_eq!(pool.status().idle, OPEN);
        super::tick(pool.backend()).await;
        assert_eq!(pool.status().idle, open.len());
        assert_eq!(
            pool.stats().resets(ResetCause::PeerClosed, Phase::Idle),
            (OPEN - open.len()) as u64
        );
    }
}
