//! The reaper: one background task per pool that keeps the idle connections honest.
//!
//! Every `reaper_interval` it probes each idle connection (free unless something
//! arrived on it), asks the manager whether it is broken, closes those whose peer is
//! gone and those past their idle or lifetime limit, starts connects to keep
//! `min_idle` ready, and publishes the occupancy gauges. deadpool alone never looks
//! at an idle connection, so a socket whose server closed it sits in `CLOSE_WAIT`
//! until the next checkout happens to pop it.
//!
//! Nothing in a tick can end the reaper: the manager's code it calls under deadpool's
//! lock is contained (a panic there discards that connection), and a tick that
//! panics anyway is logged, and the next one runs. The task holds only a weak
//! reference: it ends when the pool is dropped or closed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::time::MissedTickBehavior;

use super::backend::{Backend, WeakBackend};
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
    // one process) would otherwise probe and refill in lock-step after an outage.
    let phase = interval.mul_f64(fastrand::f64());
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
    let held = evict(pool);
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

fn evict<M: Manager>(pool: &Backend<M>) -> Duration {
    let parts = pool.parts();
    let now = CoarseInstant::now();
    // `retain` runs under deadpool's slot lock: only the free checks happen there
    // (contained, so that a panic in the manager's code cannot poison the lock), and
    // the reporting, which may write logs, waits until the lock is released.
    let mut verdicts: HashMap<u64, (Verdict, Obituary)> = HashMap::new();
    let started = Instant::now();
    let removed = pool.retain(|slot| match parts.inspect_idle(slot, now) {
        Verdict::Keep => true,
        verdict => {
            verdicts.insert(slot.id, (verdict, slot.obituary(now)));
            false
        }
    });
    let held = started.elapsed();
    let spare = parts.drain_spare(|slot| match parts.inspect_idle(slot, now) {
        Verdict::Keep => false,
        verdict => {
            verdicts.insert(slot.id, (verdict, slot.obituary(now)));
            true
        }
    });
    for mut slot in removed.into_iter().chain(spare) {
        if let Some((verdict, dead)) = verdicts.remove(&slot.id) {
            slot.condemn(verdict, Phase::Idle, &dead);
        }
    }
    held
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
}
