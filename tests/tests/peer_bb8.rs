//! bb8 0.9.1's test suite (`tests/test.rs`), ported to steadypool: the promises a
//! bb8 user counts on, checked against steadypool.
//!
//! bb8's tests pool in-memory objects and count their drops; here every connection is
//! a real socket to a loopback `LineServer`, opened by an [`UnreliableManager`] that
//! counts the connections it opened and closed, and whose connects, pings and
//! broken-checks misbehave on command (bb8's `NthConnectionFailManager` is "n connects
//! succeed, then every one fails"). Translations: bb8's `connection_timeout` is
//! steadypool's `wait_timeout`, `is_valid` its checkout ping (made on every reuse with
//! `check_after(0)`, as bb8's `test_on_check_out` does), `has_broken` its
//! `is_broken`, `reaper_rate` its `reaper_interval`, `State` its `Status`, and bb8's
//! statistics its metrics. Tests keep their bb8 names.
//!
//! Left out:
//! - `test_initialization_failure`: steadypool's `build()` opens no connection
//!   (the reaper fills `min_idle` afterwards), so it has no connect to fail; failing
//!   connects surface at checkout, as `test_lazy_initialization_failure` checks.
//! - `test_can_use_added_connections`, `test_add_ok_until_max_size`,
//!   `test_add_checks_broken_connections`: steadypool has no `Pool::add` nor
//!   `dedicated_connection`; connections enter the pool only through its manager.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::Poll;
use std::time::Duration;

use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use steadypool::metrics::CHECKOUT_WAIT;
use steadypool::{Connection, Error, Eviction, Phase, Pool, PoolBuilder, QueueMode, ResetCause};
use steadypool_tests::eventually;
use steadypool_tests::faults;
use steadypool_tests::recorded::Books;
use steadypool_tests::unreliable::{Behaviour, UnreliableManager};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Generous: the longest anything that should happen may take on a loaded machine.
const PATIENCE: Duration = Duration::from_secs(10);
/// The reaper's interval in the tests that rely on it.
const TICK: Duration = Duration::from_millis(50);
/// Far enough away never to come during a test.
const HOUR: Duration = Duration::from_secs(3600);

type TestPool = Pool<UnreliableManager>;

fn builder(manager: &UnreliableManager) -> PoolBuilder<UnreliableManager> {
    Pool::builder(manager.clone())
}

/// bb8's `NthConnectionFailManager::new(n)`: `n` connects succeed, then all fail.
fn fail_after(manager: &UnreliableManager, n: usize) {
    manager.script_connects(n, Behaviour::Succeed);
    manager.set_connects(Behaviour::Fail);
}

/// A task that checks a connection out, says so, and holds it until released: the
/// spawned holders of bb8's tests.
struct Holder {
    got: oneshot::Receiver<()>,
    release: oneshot::Sender<()>,
    task: JoinHandle<()>,
}

impl Holder {
    async fn got(&mut self) {
        (&mut self.got)
            .await
            .expect("the holder failed to check a connection out");
    }

    async fn release(self) {
        let _ = self.release.send(());
        self.task.await.unwrap();
    }
}

fn hold(pool: &TestPool) -> Holder {
    let (got_tx, got) = oneshot::channel();
    let (release, released) = oneshot::channel::<()>();
    let pool = pool.clone();
    let task = tokio::spawn(async move {
        let conn = pool.get().await.unwrap();
        let _ = got_tx.send(());
        let _ = released.await;
        drop(conn);
    });
    Holder { got, release, task }
}

async fn is_pending<T>(rx: &mut oneshot::Receiver<T>) -> bool {
    std::future::poll_fn(|cx| Poll::Ready(std::pin::Pin::new(&mut *rx).poll(cx).is_pending())).await
}

#[tokio::test]
async fn test_max_size_ok() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    fail_after(&manager, 5);
    let pool = builder(&manager).max_size(5).build().unwrap();
    let mut holders: Vec<_> = (0..5).map(|_| hold(&pool)).collect();
    for holder in &mut holders {
        holder.got().await;
    }
    assert_eq!(holders.len(), 5);
    for holder in holders {
        holder.release().await;
    }
}

#[tokio::test]
async fn test_acquire_release() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(2).build().unwrap();

    let mut first = hold(&pool);
    // A checkout created but never awaited takes nothing.
    let (created_tx, created) = oneshot::channel();
    let (drop_tx, drop_rx) = oneshot::channel::<()>();
    let unpolled = {
        let pool = pool.clone();
        tokio::spawn(async move {
            let never_awaited = pool.get();
            created_tx.send(()).unwrap();
            let _ = drop_rx.await;
            drop(never_awaited);
        })
    };
    first.got().await;
    created.await.unwrap();

    let mut third = hold(&pool);
    assert!(is_pending(&mut third.got).await);
    first.release().await;
    third.got().await;
    drop_tx.send(()).unwrap();
    unpolled.await.unwrap();
    third.release().await;
}

#[test]
fn test_is_send_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    is_send_sync::<Pool<UnreliableManager>>();
    is_send_sync::<Connection<UnreliableManager>>();
}

#[tokio::test]
async fn test_drop_on_broken() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.report_broken(usize::MAX);
    let pool = builder(&manager).build().unwrap();

    drop(pool.get().await.unwrap());

    assert_eq!(
        manager.closed(),
        1,
        "a connection the manager reports broken was kept when returned: {:?}",
        pool.status()
    );
    assert_eq!(
        pool.stats().all_resets(),
        1,
        "{:?}",
        pool.stats().reset_table()
    );
}

/// The set-up of bb8's lazy-initialization tests: every connect fails, and one
/// checkout waits at most a second's `wait_timeout`; it must end within it.
async fn checkout_with_every_connect_failing(
    manager: &UnreliableManager,
) -> Result<Connection<UnreliableManager>, Error<std::io::Error>> {
    fail_after(manager, 0);
    let wait = Duration::from_secs(1);
    let pool = builder(manager).wait_timeout(wait).build().unwrap();
    tokio::time::timeout(wait + PATIENCE, pool.get())
        .await
        .expect("a checkout outlived its wait_timeout")
}

// bb8 retries the failing connect until `connection_timeout` and then reports
// `TimedOut`. steadypool's `get()` does not retry a connect (`Pool::run` does): it
// fails at once, with the connect's cause. Either way the checkout ends within the
// timeout with an error.
#[tokio::test]
async fn test_lazy_initialization_failure() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    faults::assert_refused(checkout_with_every_connect_failing(&manager).await);
}

// bb8's `retry_connection(false)` is how steadypool's `get()` always behaves: one
// connect, and its failure reported.
#[tokio::test]
async fn test_lazy_initialization_failure_no_retry() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let err = checkout_with_every_connect_failing(&manager)
        .await
        .unwrap_err();
    assert_eq!(err.cause(), Some(ResetCause::Refused), "{err}");
    assert_eq!(manager.attempts(), 1);
}

#[tokio::test]
async fn test_get_timeout() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let wait = Duration::from_secs(5);
    let pool = builder(&manager)
        .max_size(1)
        .wait_timeout(wait)
        .build()
        .unwrap();
    let mut holder = hold(&pool);
    holder.got().await;

    // The pool is exhausted: the wait needs no socket to make progress.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    assert!(
        matches!(err, Error::Timeout(after) if after == wait),
        "{err}"
    );
    assert!(started.elapsed() >= wait);
    tokio::time::resume();
    holder.release().await;
}

#[tokio::test]
async fn test_lots_of_waiters() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    // bb8 allows 5 s; 25,000 waiters served in turn on a loaded machine get longer.
    let pool = builder(&manager)
        .max_size(3)
        .wait_timeout(Duration::from_secs(120))
        .build()
        .unwrap();

    let mut waiters = Vec::new();
    for _ in 0..25_000 {
        let pool = pool.clone();
        let (tx, rx) = oneshot::channel();
        waiters.push(rx);
        tokio::spawn(async move {
            let _conn = pool.get().await.unwrap();
            tx.send(()).unwrap();
        });
    }
    for waiter in waiters {
        assert!(waiter.await.is_ok());
    }
}

#[tokio::test]
async fn test_timeout_caller() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager)
        .max_size(1)
        .wait_timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    let one = pool.get().await;
    assert!(one.is_ok());

    // The caller gives up first; no socket is involved until the next checkout.
    tokio::time::pause();
    let res = tokio::time::timeout(Duration::from_millis(100), pool.get()).await;
    assert!(res.is_err());
    tokio::time::resume();

    drop(one);
    let two = pool.get().await;
    assert!(two.is_ok());
}

#[tokio::test]
async fn test_now_invalid() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager)
        .max_size(2)
        .min_idle(2)
        .reaper_interval(TICK)
        .check_after(Duration::ZERO)
        .build()
        .unwrap();
    assert!(eventually(PATIENCE, || pool.status().idle == 2).await);

    let mut first = hold(&pool);
    let mut second = hold(&pool);
    first.got().await;
    second.got().await;

    // The upstream turns unusable: checks fail, and connects too.
    manager.set_pings(Behaviour::Fail);
    manager.set_connects(Behaviour::Fail);
    first.release().await;
    second.release().await;

    let r = pool.get().await;
    assert!(r.is_err());
    // Both pooled connections were found invalid.
    assert_eq!(
        pool.stats().resets(ResetCause::PingFailed, Phase::Checkout),
        2,
        "{:?}",
        pool.stats().reset_table()
    );
}

/// What bb8's tests of `idle_timeout` and `max_lifetime` check once five connections
/// are open: one is held, the four left idle are closed past `limit`, the held one
/// too once it is returned, and all five are counted as `reason`.
async fn five_idle_then_closed_past(
    manager: &UnreliableManager,
    pool: &TestPool,
    limit: Duration,
    reason: Eviction,
) {
    assert!(eventually(PATIENCE, || pool.status().idle == 5).await);

    let mut holder = hold(pool);
    holder.got().await;
    assert!(
        eventually(limit + PATIENCE, || manager.closed() == 4).await,
        "idle connections past {reason:?} were not closed: {} closed",
        manager.closed()
    );
    assert_eq!(manager.closed(), 4);

    holder.release().await;
    assert!(
        eventually(limit + PATIENCE, || manager.closed() == 5).await,
        "the returned connection past {reason:?} was not closed: {} closed",
        manager.closed()
    );
    assert_eq!(pool.stats().evictions(reason), 5);
}

// steadypool's reaper refill for min_idle checks idle connections out, and a
// successful ping counts as traffic that restarts a connection's idle clock; with
// `check_after` below `idle_timeout` the refill could keep them alive. bb8's reaper
// does not touch idle connections, so pings are put an hour away: this is about
// `idle_timeout` alone.
#[tokio::test]
async fn test_idle_timeout() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    fail_after(&manager, 5);
    let idle_timeout = Duration::from_millis(500);
    let pool = builder(&manager)
        .idle_timeout(Some(idle_timeout))
        .reaper_interval(TICK)
        .check_after(HOUR)
        .max_size(5)
        .min_idle(5)
        .build()
        .unwrap();
    five_idle_then_closed_past(&manager, &pool, idle_timeout, Eviction::IdleExpired).await;
}

#[tokio::test]
async fn test_max_lifetime() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    fail_after(&manager, 5);
    let lifetime = Duration::from_millis(500);
    let pool = builder(&manager)
        .max_lifetime(Some(lifetime))
        .max_lifetime_jitter(Duration::from_millis(1))
        .idle_timeout(None)
        .reaper_interval(TICK)
        .max_size(5)
        .min_idle(5)
        .build()
        .unwrap();
    five_idle_then_closed_past(&manager, &pool, lifetime, Eviction::MaxLifetime).await;
}

#[tokio::test]
async fn test_max_lifetime_reap_on_drop() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let lifetime = Duration::from_millis(500);
    let pool = builder(&manager)
        .max_lifetime(Some(lifetime))
        .max_lifetime_jitter(Duration::from_millis(1))
        .idle_timeout(None)
        .reaper_interval(Duration::from_secs(999))
        .build()
        .unwrap();

    let conn = pool.get().await.unwrap();
    assert!(eventually(lifetime + PATIENCE, || conn.age() > lifetime).await);
    assert_eq!(manager.closed(), 0);

    drop(conn);
    assert_eq!(
        manager.closed(),
        1,
        "a connection past max_lifetime went back to the pool: {:?}",
        pool.status()
    );
    assert_eq!(pool.stats().evictions(Eviction::MaxLifetime), 1);
}

/// Whether the pool's `(idle, size)` reaches `expected` within [`PATIENCE`].
async fn idle_and_size_become(pool: &TestPool, expected: (usize, usize)) -> bool {
    eventually(PATIENCE, || {
        let status = pool.status();
        (status.idle, status.size) == expected
    })
    .await
}

#[tokio::test]
async fn test_min_idle() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager)
        .max_size(5)
        .min_idle(2)
        .reaper_interval(TICK)
        .build()
        .unwrap();
    // bb8 opens min_idle connections in build(); steadypool's reaper does, at once.
    assert!(
        idle_and_size_become(&pool, (2, 2)).await,
        "{:?}",
        pool.status()
    );

    let mut holders: Vec<_> = (0..3).map(|_| hold(&pool)).collect();
    for holder in &mut holders {
        holder.got().await;
    }
    assert!(
        idle_and_size_become(&pool, (2, 5)).await,
        "min_idle was not restored while three were in use: {:?}",
        pool.status()
    );

    for holder in holders {
        holder.release().await;
    }
    assert!(
        idle_and_size_become(&pool, (5, 5)).await,
        "{:?}",
        pool.status()
    );
}

#[tokio::test]
async fn test_conns_drop_on_pool_drop() {
    let (server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager)
        .max_lifetime(Some(Duration::from_secs(10)))
        .idle_timeout(Some(Duration::from_secs(10)))
        .max_size(10)
        .min_idle(10)
        .reaper_interval(TICK)
        .build()
        .unwrap();
    assert!(eventually(PATIENCE, || pool.status().idle == 10).await);

    drop(pool);
    assert!(
        eventually(PATIENCE, || manager.closed() == 10).await,
        "only {} of 10 connections closed after the pool was dropped",
        manager.closed()
    );
    assert!(
        eventually(PATIENCE, || server.live() == 0).await,
        "the server still holds {} connections",
        server.live()
    );
}

#[tokio::test]
async fn test_retry() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.script_pings(1, Behaviour::Fail);
    let pool = builder(&manager)
        .max_size(1)
        .check_after(Duration::ZERO)
        .build()
        .unwrap();
    // The check between the two fails once; the checkout goes on to a new connection.
    for _ in 0..2 {
        drop(pool.get().await.unwrap());
    }
}

// bb8's `get()` retries a failed connect; steadypool's reports it, and `Pool::run`
// is the checkout that retries one (a request that never left is safe to retry).
#[tokio::test]
async fn test_conn_fail_once() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.script_connects(1, Behaviour::Fail);
    let pool = builder(&manager).max_size(1).build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));

    for _ in 0..2 {
        let calls = Arc::clone(&calls);
        pool.run(async move |conn| {
            let calls = Arc::clone(&calls);

            conn.tally += 1;
            calls.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap();
    }
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

// bb8's `test_acquire_release` again, with its holders returning a result.
#[tokio::test]
async fn test_guard() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(2).build().unwrap();

    let guard = |pool: &TestPool| {
        let (got_tx, got) = oneshot::channel();
        let (release, released) = oneshot::channel::<()>();
        let pool = pool.clone();
        let task = tokio::spawn(async move {
            let conn = pool.get().await;
            got_tx.send(()).unwrap();
            let res = released.await.map_err(|_| "never released");
            drop(conn);
            res
        });
        (got, release, task)
    };

    let (got_1, release_1, task_1) = guard(&pool);
    let (got_2, release_2, task_2) = guard(&pool);
    got_1.await.unwrap();
    got_2.await.unwrap();

    let (mut got_3, release_3, task_3) = guard(&pool);
    assert!(is_pending(&mut got_3).await);
    release_1.send(()).unwrap();
    got_3.await.unwrap();
    release_2.send(()).unwrap();
    release_3.send(()).unwrap();
    for task in [task_1, task_2, task_3] {
        task.await.unwrap().unwrap();
    }
}

// bb8's connection customizer runs once per new connection; in steadypool that work
// is `Manager::connect`'s, which numbers each connection.
#[tokio::test]
async fn test_customize_connection_acquire() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(2).build().unwrap();
    {
        let first = pool.get().await.unwrap();
        assert_eq!(first.serial(), 1);
        let second = pool.get().await.unwrap();
        assert_eq!(second.serial(), 2);
    }
    // Reused, not set up again.
    let reused = pool.get().await.unwrap();
    assert!(reused.serial() == 1 || reused.serial() == 2);
    assert_eq!(manager.opened(), 2);
}

#[tokio::test]
async fn test_broken_connections_dont_starve_pool() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    manager.report_broken(5);
    let pool = builder(&manager)
        .max_size(5)
        .wait_timeout(Duration::from_secs(10))
        .build()
        .unwrap();

    let users: Vec<_> = (0..10)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move {
                drop(pool.get().await.unwrap());
            })
        })
        .collect();
    for user in users {
        user.await.unwrap();
    }
}

/// Every `get()` duration the pool recorded since the last call.
fn checkout_waits(snapshotter: &Snapshotter) -> Vec<f64> {
    snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .filter(|(key, ..)| key.key().name() == CHECKOUT_WAIT)
        .flat_map(|(.., value)| match value {
            DebugValue::Histogram(values) => values.into_iter().map(|v| v.0).collect(),
            _ => Vec::new(),
        })
        .collect()
}

// bb8 counts checkouts served at once and those that waited, and the time waited;
// steadypool counts both in `Pool::stats` and records each checkout's duration in a
// histogram, zero for one served at once.
#[tokio::test]
async fn test_state_get_contention() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let pool = metrics::with_local_recorder(&recorder, || {
        builder(&manager)
            .max_size(1)
            .min_idle(1)
            .reaper_interval(TICK)
            .build()
    })
    .unwrap();
    assert!(eventually(PATIENCE, || pool.status().idle == 1).await);

    let mut holder = hold(&pool);
    holder.got().await;
    // Not polled until the connection is on its way back.
    let second = pool.get();
    let _ = holder.release.send(());
    second.await.unwrap();
    holder.task.await.unwrap();

    // A checkout served at once is counted on the checkout path and reaches the
    // histogram on the reaper's next tick; one that waited is recorded as it ends.
    let stats = pool.stats();
    assert_eq!(stats.checkouts_immediate, 1, "{stats:?}");
    assert_eq!(stats.checkouts_waited, 1, "{stats:?}");
    let mut waits = Vec::new();
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while waits.len() < 2 && tokio::time::Instant::now() < deadline {
        waits.extend(checkout_waits(&snapshotter));
        tokio::time::sleep(TICK).await;
    }
    assert_eq!(waits.len(), 2, "{waits:?}");
    let direct = waits.iter().filter(|wait| **wait == 0.0).count();
    let waited = waits.iter().filter(|wait| **wait > 0.0).count();
    assert_eq!(direct, 1, "checkouts served at once: {waits:?}");
    assert_eq!(waited, 1, "checkouts that waited: {waits:?}");
}

#[tokio::test]
async fn test_statistics_connections_created() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager).max_size(1).min_idle(1).build().unwrap();
    let task = {
        let pool = pool.clone();
        tokio::spawn(async move { drop(pool.get().await.unwrap()) })
    };
    task.await.unwrap();
    assert_eq!(pool.stats().opened, 1);
}

#[tokio::test]
async fn test_reuse_on_drop() {
    let (_server, manager) = UnreliableManager::with_server().await.unwrap();
    let pool = builder(&manager)
        .min_idle(0)
        .max_size(100)
        .queue_mode(QueueMode::Lifo)
        .build()
        .unwrap();

    // The first checkout opens a connection; returned, it serves the second.
    let conn_0 = pool.get().await.unwrap();
    drop(conn_0);
    let _conn_1 = pool.get().await.unwrap();
    // The third opens one more, and only one.
    let _conn_2 = pool.get().await.unwrap();
    assert_eq!(pool.status().size, 2);
    assert_eq!(manager.opened(), 2);
}
