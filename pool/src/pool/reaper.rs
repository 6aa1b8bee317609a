//! The reaper: one background task per pool that keeps the idle connections honest.
//!
//! Every `reaper_interval` it probes each idle connection (free unless something
//! arrived on it), closes those whose peer is gone and those past their idle or
//! lifetime limit, refills up to `min_idle`, and publishes the occupancy gauges.
//! deadpool alone never looks at an idle connection, so a socket whose server closed
//! it sits in `CLOSE_WAIT` until the next checkout happens to pop it.
//!
//! The task holds only a weak reference: it ends when the pool is dropped or closed.

use deadpool::managed::{Timeouts, WeakPool};
use tokio::task::JoinSet;
use tokio::time::MissedTickBehavior;

use super::slot::{Adapter, Obituary, Verdict};
use super::{Inner, Pool};
use crate::cause::Phase;
use crate::clock::CoarseInstant;
use crate::manager::Manager;

pub(super) fn spawn<M: Manager>(pool: &Pool<M>, runtime: &tokio::runtime::Handle) {
    let weak = pool.inner().weak();
    let interval = pool.core().config.reaper_interval;
    let handle = runtime.spawn(run(weak, interval));
    // Only `build()` spawns the reaper, once, on a pool nobody else has seen yet.
    let _ = pool.shared.reaper.set(handle.abort_handle());
}

async fn run<M: Manager>(weak: WeakPool<Adapter<M>>, interval: std::time::Duration) {
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
        tick(&pool).await;
    }
}

/// One pass: evict, refill, publish.
pub(super) async fn tick<M: Manager>(pool: &Inner<M>) {
    evict(pool);
    refill(pool).await;
    let core = &pool.manager().core;
    core.recorder.circuit_state(core.gate.state().gauge_value());
    let status = pool.status();
    core.recorder.occupancy(
        status.available,
        status.size - status.available,
        status.waiting,
    );
}

fn evict<M: Manager>(pool: &Inner<M>) {
    let adapter = pool.manager();
    let now = CoarseInstant::now();
    let mut gone: Vec<(Verdict, Obituary)> = Vec::new();
    // `retain` runs under deadpool's slot lock: only the probe happens here, and the
    // reporting (which may write logs) waits until the lock is released.
    let removed = pool.retain(
        |slot, _| match adapter.core.inspect(&adapter.manager, slot, now) {
            Verdict::Keep => true,
            verdict => {
                gone.push((verdict, slot.obituary(now)));
                false
            }
        },
    );
    drop(removed);
    for (verdict, obituary) in &gone {
        adapter.core.record(verdict, Phase::Idle, obituary);
    }
}

/// Opens connections until `min_idle` are idle, without ever making a user wait.
///
/// deadpool has no way to add a connection directly, so the refill checks out what
/// it needs at once (the idle ones plus new ones) and returns them together. Each
/// checkout only takes a free slot if one is there right now (a zero wait), and the
/// refill stands back entirely while any task is waiting.
async fn refill<M: Manager>(pool: &Inner<M>) {
    let config = &pool.manager().core.config;
    let status = pool.status();
    if status.available >= config.min_idle || status.waiting > 0 {
        return;
    }
    let missing = (config.min_idle - status.available).min(status.max_size - status.size);
    if missing == 0 {
        return;
    }
    let no_wait = Timeouts {
        wait: Some(std::time::Duration::ZERO),
        create: None,
        recycle: None,
    };
    let mut checkouts = JoinSet::new();
    for _ in 0..status.available + missing {
        let pool = pool.clone();
        checkouts.spawn(async move { pool.timeout_get(&no_wait).await });
    }
    let mut held = Vec::with_capacity(status.available + missing);
    while let Some(result) = checkouts.join_next().await {
        if let Ok(Ok(object)) = result {
            held.push(object);
        }
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
        let weak = pool.inner().weak();
        drop(pool);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert!(weak.upgrade().is_none());
    }
}
