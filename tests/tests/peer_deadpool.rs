//! deadpool 0.13.1's managed-pool test suite (`tests/managed*.rs`), ported to
//! steadypool: the promises a deadpool user counts on, checked against steadypool's
//! checkout, resize and close, which wrap deadpool's but are steadypool's own.
//!
//! deadpool's tests pool in-memory integers; here every connection is a real socket
//! to a loopback [`LineServer`], opened by an [`UnreliableManager`] whose connects and
//! pings succeed, fail, stall or hang on command. deadpool's recycle is steadypool's
//! checkout check, whose round trip is the manager's ping (made on every reuse where a
//! test needs it, with `check_after(0)`). Tests keep their deadpool names.
//!
//! Left out:
//! - `managed::retain`, `managed::retain_fnmut`: steadypool has no `retain`; its reaper
//!   evicts by idle time and lifetime, which the bb8 ports in `peer_bb8.rs` cover.
//! - `managed_config::from_env`: steadypool is configured through `PoolBuilder` only;
//!   it has no serde or environment configuration.
//! - `managed_hooks::{post_create_ok, post_create_ok_async, post_create_err_abort,
//!   pre_recycle_ok, pre_recycle_err_continue, post_recycle_ok,
//!   post_recycle_err_continue}`: steadypool has no hooks API; what a post-create hook
//!   does belongs in `Manager::connect`, and a failed recycle check is ported below
//!   (`unreliable_recycle`).
//! - `managed_timeout::{rt_async_std_1, rt_smol_2}`: steadypool runs on tokio only;
//!   `rt_tokio_1` is ported.

use std::future::Future;
use std::io;
use std::pin::{Pin, pin};
use std::task::Poll;
use std::time::Duration;

use steadypool::{Connection, Error, Phase, Pool, PoolBuilder, ResetCause};
use steadypool_tests::eventually;
use steadypool_tests::servers::LineServer;
use steadypool_tests::unreliable::{Behaviour, UnreliableManager};
use tokio::task::JoinHandle;

/// Generous: the longest anything that should happen may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);
/// How long a checkout that must not succeed is given to succeed anyway. A loopback
/// connect takes well under a millisecond, so a pool that wrongly lets one through
/// shows it long before this.
const HOLD_OFF: Duration = Duration::from_millis(500);
/// The reaper's interval where a test lets it run.
const TICK: Duration = Duration::from_millis(20);

type TestPool = Pool<UnreliableManager>;

fn builder(manager: &UnreliableManager) -> PoolBuilder<UnreliableManager> {
    Pool::builder(manager.clone())
}

/// `(size, idle, waiting)`: deadpool's `(size, available, waiting)`.
fn occupancy(pool: &TestPool) -> (usize, usize, usize) {
    let status = pool.status();
    (status.size, status.idle, status.waiting)
}

/// `(max_size, size)`.
fn sizes(pool: &TestPool) -> (usize, usize) {
    let status = pool.status();
    (status.max_size, status.size)
}

/// Polls `future` once: its output if it finished at once.
async fn poll_once<F: Future>(mut future: Pin<&mut F>) -> Option<F::Output> {
    std::future::poll_fn(|cx| match future.as_mut().poll(cx) {
        Poll::Ready(output) => Poll::Ready(Some(output)),
        Poll::Pending => Poll::Ready(None),
    })
    .await
}

type Checkout = Result<Connection<UnreliableManager>, Error<io::Error>>;

fn spawn_get(pool: &TestPool) -> JoinHandle<Checkout> {
    let pool = pool.clone();
    tokio::spawn(async move { pool.get().await })
}

/// A further checkout does not succeed: the pool holds as many connections as it may.
async fn no_room(pool: &TestPool) {
    let extra = tokio::time::timeout(HOLD_OFF, pool.get()).await;
    assert!(
        extra.is_err(),
        "a checkout succeeded with no room left: {:?}",
        pool.status()
    );
}

/// Exactly `max_size` connections can be held at once, and not one more.
async fn room_for_exactly(pool: &TestPool, max_size: usize) {
    let mut held = Vec::new();
    for _ in 0..max_size {
        let conn = tokio::time::timeout(PATIENCE, pool.get())
            .await
            .expect("a checkout waited although there was room")
            .unwrap();
        held.push(conn);
    }
    no_room(pool).await;
    let status = pool.status();
    assert!(status.size <= status.max_size, "{status:?}");
}

/// A pool with one connection kept ready, as a service that wants no connect latency
/// configures it; its reaper runs every few milliseconds so that it acts within the
/// test.
fn warm(builder: PoolBuilder<UnreliableManager>) -> PoolBuilder<UnreliableManager> {
    builder.min_idle(1).reaper_interval(TICK)
}

async fn warmed_up(pool: &TestPool) {
    assert!(
        eventually(PATIENCE, || pool.status().idle == 1).await,
        "the reaper never opened the min_idle connection: {:?}",
        pool.status()
    );
}

/// Where deadpool's shrink tests start: a [`warm`] pool of two, warmed up, with both
/// its connections in use.
async fn warm_pool_of_two_in_use(
    manager: &UnreliableManager,
) -> (
    TestPool,
    Connection<UnreliableManager>,
    Connection<UnreliableManager>,
) {
    let pool = warm(builder(manager).max_size(2)).build().unwrap();
    warmed_up(&pool).await;
    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    (pool, first, second)
}

/// Gives the reaper many ticks to act on the pool as it is.
async fn let_the_reaper_run() {
    tokio::time::sleep(TICK * 10).await;
}

/// The reaper still works: a connection taken away is replaced to keep `min_idle`.
async fn reaper_keeps_min_idle(pool: &TestPool) {
    drop(pool.get().await.unwrap().detach());
    assert!(
        eventually(PATIENCE, || pool.status().idle == 1).await,
        "the reaper no longer refills min_idle: {:?}",
        pool.status()
    );
}

// ---- managed.rs ----

#[tokio::test]
async fn basic() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(16).build().unwrap();
    assert_eq!(occupancy(&pool), (0, 0, 0));

    let first = pool.get().await.unwrap();
    assert_eq!(occupancy(&pool), (1, 0, 0));
    let second = pool.get().await.unwrap();
    assert_eq!(occupancy(&pool), (2, 0, 0));
    let third = pool.get().await.unwrap();
    assert_eq!(occupancy(&pool), (3, 0, 0));

    drop(first);
    assert_eq!(occupancy(&pool), (3, 1, 0));
    drop(second);
    assert_eq!(occupancy(&pool), (3, 2, 0));
    drop(third);
    assert_eq!(occupancy(&pool), (3, 3, 0));
}

#[tokio::test]
async fn closing() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(1).build().unwrap();
    let only = pool.get().await.unwrap();
    let waiter = spawn_get(&pool);

    tokio::task::yield_now().await;
    assert_eq!(pool.status().idle, 0);
    assert_eq!(
        pool.status().waiting,
        1,
        "a checkout blocked on the exhausted pool is not counted as waiting"
    );

    pool.close();
    tokio::task::yield_now().await;
    assert_eq!(pool.status().idle, 0);
    assert_eq!(pool.status().waiting, 0);

    assert!(matches!(waiter.await.unwrap(), Err(Error::Closed)));
    assert!(matches!(pool.get().await, Err(Error::Closed)));
    // deadpool also asks with a zero wait. steadypool has no such call, but the first
    // poll of a checkout is its non-blocking step, and it must not wait to say so.
    let get = pin!(pool.get());
    assert!(matches!(poll_once(get).await, Some(Err(Error::Closed))));

    drop(only);
    tokio::task::yield_now().await;
    assert_eq!(occupancy(&pool), (0, 0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(3).build().unwrap();

    let users: Vec<_> = (0..100)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                let mut conn = pool.get().await.unwrap();
                conn.tally += 1;
                assert_eq!(conn.request("PING").await.unwrap(), "PONG");
                tokio::time::sleep(Duration::from_millis(1)).await;
            })
        })
        .collect();
    for user in users {
        user.await.unwrap();
    }

    assert_eq!(occupancy(&pool), (3, 3, 0));
    let all = [
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
        pool.get().await.unwrap(),
    ];
    // Each use counted once on the connection it had to itself: none was shared.
    assert_eq!(all.iter().map(|conn| conn.tally).sum::<usize>(), 100);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn object_take() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(2).build().unwrap();
    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    assert_eq!(occupancy(&pool), (2, 0, 0));

    drop(first.detach());
    assert_eq!(occupancy(&pool), (1, 0, 0));
    drop(second.detach());
    assert_eq!(occupancy(&pool).0, 0);
    assert_eq!(occupancy(&pool).1, 0);

    let first = pool.get().await.unwrap();
    let second = pool.get().await.unwrap();
    assert_eq!(occupancy(&pool), (2, 0, 0));
    drop(first);
    drop(second);
    assert_eq!(occupancy(&pool), (2, 2, 0));
}

// ---- managed_cancellation.rs ----

// deadpool runs every combination of succeeding, failing, slow and hanging creates,
// recycles and hooks; steadypool has no hooks, so these are its connects and its
// checkout pings (made on every reuse).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn test_cancellations() {
    const GATES: [Behaviour; 4] = [
        Behaviour::Succeed,
        Behaviour::Fail,
        Behaviour::Stall(Duration::from_nanos(2)),
        Behaviour::Hang,
    ];
    let server = LineServer::start().await.unwrap();
    for connect in GATES {
        for ping in GATES {
            let manager = UnreliableManager::new(server.addr()).unwrap();
            manager.set_connects(connect);
            manager.set_pings(ping);
            let gates = format!("connect {connect:?}, ping {ping:?}");
            let pool = builder(&manager)
                .max_size(2)
                .check_after(Duration::ZERO)
                .build()
                .unwrap();
            let users: Vec<_> = (0..8u64)
                .map(|i| {
                    let pool = pool.clone();
                    tokio::spawn(async move {
                        loop {
                            let _conn =
                                tokio::time::timeout(Duration::from_nanos(i), pool.get()).await;
                            tokio::time::sleep(Duration::from_nanos(i)).await;
                        }
                    })
                })
                .collect();
            for _ in 0..10 {
                tokio::time::sleep(Duration::from_millis(1)).await;
                let status = pool.status();
                assert!(status.size <= status.max_size, "{status:?}, {gates}");
            }
            for user in &users {
                user.abort();
            }
            for user in users {
                let _ = user.await;
            }
            let status = pool.status();
            assert!(status.size <= status.max_size, "{status:?}, {gates}");
            assert!(status.idle <= status.max_size, "{status:?}, {gates}");
        }
    }
}

// ---- managed_deadlock.rs ----

#[tokio::test(flavor = "current_thread")]
async fn pool_drained() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.set_connects(Behaviour::AwaitOrder);
    let pool = builder(&manager).max_size(1).build().unwrap();

    // The first checkout takes the only slot and connects, until told how it ends.
    let get_1 = spawn_get(&pool);
    tokio::task::yield_now().await;
    assert_eq!(occupancy(&pool), (0, 0, 1));

    // The second waits for the slot.
    let get_2 = spawn_get(&pool);
    tokio::task::yield_now().await;
    assert_eq!(occupancy(&pool), (0, 0, 2));

    manager.order(Behaviour::Fail);
    assert!(get_1.await.unwrap().is_err());
    assert_eq!(occupancy(&pool), (0, 0, 1));

    // The failed connect gave its slot back: the second checkout connects now.
    manager.order(Behaviour::Succeed);
    let got_2 = tokio::time::timeout(PATIENCE, get_2).await;
    assert!(got_2.is_ok(), "the second checkout never got the slot");
    assert_eq!(occupancy(&pool), (1, 0, 0));
    assert!(
        got_2.unwrap().unwrap().is_ok(),
        "the second checkout failed"
    );
    assert_eq!(occupancy(&pool), (1, 1, 0));
}

// ---- managed_resize.rs ----
//
// Beyond deadpool's assertions on the counts, each resize test checks how many
// connections can then be held at once, which is what a resize promises; and the
// tests that shrink below the connections in use run the pool with a reaper keeping
// one connection ready, and check that it still does afterwards.

#[tokio::test]
async fn test_grow_reuse_existing() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let (pool, first, second) = warm_pool_of_two_in_use(&manager).await;
    assert_eq!(sizes(&pool), (2, 2));

    // Connections in use are not closed by a shrink, but still counted.
    pool.resize(0);
    assert_eq!(sizes(&pool), (0, 2));
    let_the_reaper_run().await;

    pool.resize(1);
    assert_eq!(sizes(&pool), (1, 2));
    // Two are open and one is allowed: no third.
    no_room(&pool).await;

    // The first returned closes, bringing the size down to the maximum.
    drop(first);
    assert_eq!(sizes(&pool), (1, 1));
    drop(second);
    assert_eq!(sizes(&pool), (1, 1));
    room_for_exactly(&pool, 1).await;
    reaper_keeps_min_idle(&pool).await;
}

#[tokio::test]
async fn resize_pool_shrink() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let (pool, first, second) = warm_pool_of_two_in_use(&manager).await;

    pool.resize(1);
    assert_eq!(sizes(&pool), (1, 2));
    let_the_reaper_run().await;
    drop(second);
    assert_eq!(sizes(&pool), (1, 1));
    drop(first);
    assert_eq!(sizes(&pool), (1, 1));
    room_for_exactly(&pool, 1).await;
    reaper_keeps_min_idle(&pool).await;
}

#[tokio::test]
async fn resize_pool_grow() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(1).build().unwrap();
    let first = pool.get().await.unwrap();

    pool.resize(2);
    assert_eq!(sizes(&pool), (2, 1));
    let second = pool.get().await.unwrap();
    assert_eq!(sizes(&pool), (2, 2));
    drop(second);
    assert_eq!(sizes(&pool), (2, 2));
    drop(first);
    assert_eq!(sizes(&pool), (2, 2));
    room_for_exactly(&pool, 2).await;
}

#[tokio::test]
async fn resize_pool_shrink_grow() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(1).build().unwrap();
    let only = pool.get().await.unwrap();

    pool.resize(2);
    pool.resize(0);
    pool.resize(5);
    assert_eq!(sizes(&pool), (5, 1));
    drop(only);
    assert_eq!(sizes(&pool), (5, 1));
    room_for_exactly(&pool, 5).await;
}

#[tokio::test]
async fn resize_pool_grow_concurrent() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    // deadpool builds this pool with max_size 0; steadypool refuses to build one
    // (BuildError::ZeroMaxSize), so it is shrunk to 0 before any use.
    let pool = builder(&manager).max_size(1).build().unwrap();
    pool.resize(0);

    let waiter = spawn_get(&pool);
    tokio::task::yield_now().await;
    assert_eq!(sizes(&pool), (0, 0));
    assert_eq!(occupancy(&pool), (0, 0, 1));
    // Given time, the waiter still gets nothing: there is no room.
    tokio::time::sleep(HOLD_OFF).await;
    assert!(
        !waiter.is_finished(),
        "a checkout succeeded on a pool of max_size 0: {:?}",
        pool.status()
    );
    assert_eq!(sizes(&pool), (0, 0));
    assert_eq!(occupancy(&pool), (0, 0, 1));

    pool.resize(1);
    assert_eq!(sizes(&pool), (1, 0));
    assert_eq!(occupancy(&pool), (0, 0, 1));
    // deadpool's objects appear in one yield; a real connect takes its round trips.
    let conn = tokio::time::timeout(PATIENCE, waiter)
        .await
        .expect("the waiter was not served after the pool grew")
        .unwrap()
        .unwrap();
    assert_eq!(sizes(&pool), (1, 1));
    assert_eq!(occupancy(&pool), (1, 0, 0));
    drop(conn);
    assert_eq!(sizes(&pool), (1, 1));
    assert_eq!(occupancy(&pool), (1, 1, 0));
}

#[tokio::test]
async fn close_resize() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(1).build().unwrap();
    pool.close();
    pool.resize(16);
    assert_eq!(sizes(&pool), (0, 0));
}

// ---- managed_timeout.rs ----
//
// deadpool sets its create, wait and recycle timeouts to zero, which steadypool
// refuses; short ones on tokio's paused clock make the same point: a checkout whose
// connect or check never finishes still ends, with a timeout.

#[tokio::test(start_paused = true)]
async fn rt_tokio_1_connect_never_finishes() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.set_connects(Behaviour::Hang);

    let waits_less = builder(&manager)
        .max_size(16)
        .wait_timeout(Duration::from_millis(10))
        .connect_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    let err = waits_less.get().await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");

    let connects_less = builder(&manager)
        .max_size(16)
        .wait_timeout(Duration::from_secs(1))
        .connect_timeout(Duration::from_millis(10))
        .build()
        .unwrap();
    let err = connects_less.get().await.unwrap_err();
    assert_eq!(err.cause(), Some(ResetCause::ConnectTimeout), "{err}");
}

#[tokio::test]
async fn rt_tokio_1_ping_never_answers() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.script_connects(1, Behaviour::Succeed);
    manager.set_connects(Behaviour::Hang);
    manager.set_pings(Behaviour::Hang);
    let pool = builder(&manager)
        .max_size(16)
        .check_after(Duration::ZERO)
        .ping_timeout(Duration::from_millis(10))
        .wait_timeout(Duration::from_secs(1))
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());

    // Nothing below needs a socket to make progress.
    tokio::time::pause();
    let err = pool.get().await.unwrap_err();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert_eq!(
        pool.stats().resets(ResetCause::PingFailed, Phase::Checkout),
        1
    );
}

// ---- managed_unreliable_manager.rs ----

#[tokio::test]
async fn unreliable_create() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.set_connects(Behaviour::Fail);
    let pool = builder(&manager).max_size(16).build().unwrap();

    assert!(pool.get().await.is_err());
    assert_eq!(occupancy(&pool).0, 0);
    assert_eq!(occupancy(&pool).1, 0);
    // A failing connect fails the checkout; it does not leave it waiting.
    let again = tokio::time::timeout(PATIENCE, pool.get())
        .await
        .expect("a checkout whose connect failed kept waiting");
    assert!(again.is_err());
    assert_eq!(occupancy(&pool).0, 0);
    assert_eq!(occupancy(&pool).1, 0);
}

#[tokio::test]
async fn unreliable_recycle() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.set_pings(Behaviour::Fail);
    let pool = builder(&manager)
        .max_size(16)
        .check_after(Duration::ZERO)
        .build()
        .unwrap();
    {
        let _a = pool.get().await.unwrap();
        let _b = pool.get().await.unwrap();
    }
    assert_eq!(occupancy(&pool).0, 2);
    assert_eq!(occupancy(&pool).1, 2);
    assert_eq!(manager.closed(), 0);
    {
        let _a = pool.get().await.unwrap();
        // Both idle connections failed their check and were closed; a new one was
        // opened.
        assert_eq!(occupancy(&pool).0, 1);
        assert_eq!(occupancy(&pool).1, 0);
        assert_eq!(manager.closed(), 2);
        assert_eq!(
            pool.stats().resets(ResetCause::PingFailed, Phase::Checkout),
            2
        );
    }
    assert_eq!(occupancy(&pool).0, 1);
    assert_eq!(occupancy(&pool).1, 1);
}
