//! Promises the README and the API docs make, each with a test that fails when the
//! promise breaks: every discarded connection counted once, on every path, with
//! `Pool::stats()` and the metrics agreeing; what `close()` and dropping the pool do
//! to waiters, busy connections and the reaper task; the connect gate's limit as a
//! real server sees it; pooled connections served while the circuit is open;
//! `wait_timeout` bounding a connect and a `run`; the gauges' values; and the
//! defaults (FIFO, 2.5 % lifetime jitter, 1 s reaper tick) as behaviour.
//!
//! Real loopback sockets. Waits are bounded generously or run on tokio's paused
//! clock; nothing asserts how fast anything is.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use steadypool::metrics::{
    CIRCUIT_STATE, CONNECTIONS, CONNECTS, EVICTIONS, IDLE_EVICT_AFTER, RESETS, WAITERS,
};
use steadypool::{
    AttemptError, CircuitState, Dialer, Error, Eviction, GiveUp, Manager, Pool, PoolBuilder,
    ResetCause, RetryPolicy, RunError, SocketRef,
};
use steadypool_tests::eventually;
use steadypool_tests::line_manager::{GreetedManager, LineConnection, LineManager, request};
use steadypool_tests::recorded::{Books, RecordedMetrics};
use steadypool_tests::servers::{Ending, LineServer};
use steadypool_tests::unreliable::{Behaviour, UnreliableManager};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

const HOUR: Duration = Duration::from_secs(3600);
/// Generous: waits for loopback events and reaper ticks on a loaded 2-core machine.
const PATIENCE: Duration = Duration::from_secs(5);

/// A pool in which only the test closes connections: no reaper tick and no
/// checkout ping unless a case asks for one.
fn quiet(server: &LineServer) -> PoolBuilder<LineManager> {
    Pool::builder(LineManager::new(server.addr()))
        .max_size(4)
        .reaper_interval(HOUR)
        .check_after(HOUR)
}

/// Checks out `n` connections at once; returns them, held.
async fn hold<M: Manager>(pool: &Pool<M>, n: usize) -> Vec<steadypool::Connection<M>> {
    let mut held = Vec::with_capacity(n);
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    held
}

/// The books balance, and the only closes are `n` evictions for `reason`; the
/// metrics say the same as `Pool::stats()`.
fn assert_books<M: Manager>(
    case: &str,
    pool: &Pool<M>,
    metrics: &RecordedMetrics,
    reason: Eviction,
    n: u64,
) {
    let stats = pool.stats();
    let status = pool.status();
    assert_eq!(
        stats.opened,
        status.size as u64 + stats.closed(),
        "{case}: opened != open now + closed: {stats:?} {status:?}"
    );
    assert_eq!(
        stats.evictions(reason),
        n,
        "{case}: evictions {reason:?}: {stats:?}"
    );
    assert_eq!(stats.closed(), n, "{case}: other closes counted: {stats:?}");
    for each in Eviction::ALL {
        assert_eq!(
            metrics.counter(EVICTIONS, &[("reason", each.as_str())]),
            stats.evictions(each),
            "{case}: the metrics and stats disagree on {each:?}"
        );
    }
    assert_eq!(
        metrics.counter(RESETS, &[]),
        0,
        "{case}: {:?}",
        stats.reset_table()
    );
    assert_eq!(
        metrics.counter(CONNECTS, &[("outcome", "ok")]),
        stats.opened,
        "{case}"
    );
}

/// The paths on which a connection leaves the pool without breaking.
#[derive(Debug, Clone, Copy)]
enum Discard {
    PanicInRun,
    CancelledRun,
    RunPastDeadline,
    CheckoutCancelledDuringPing,
    WaitTimeoutDuringPing,
    ResizeIdle,
    ResizeBusy,
    CloseIdle,
    CloseBusy,
    Detach,
}

const DISCARDS: [Discard; 10] = [
    Discard::PanicInRun,
    Discard::CancelledRun,
    Discard::RunPastDeadline,
    Discard::CheckoutCancelledDuringPing,
    Discard::WaitTimeoutDuringPing,
    Discard::ResizeIdle,
    Discard::ResizeBusy,
    Discard::CloseIdle,
    Discard::CloseBusy,
    Discard::Detach,
];

/// Checks out one connection, returns it, then makes the server stop answering, so
/// that the next checkout's ping (every checkout pings with `check_after` zero)
/// never gets its PONG.
async fn idle_behind_a_frozen_server(pool: &Pool<LineManager>, server: &LineServer) {
    drop(pool.get().await.unwrap());
    // The kernel completes a connect before the server's accept loop sees it.
    assert!(eventually(PATIENCE, || server.live() == 1).await);
    assert_eq!(server.freeze_all().await, 1);
}

async fn walk(case: Discard) {
    let name = format!("{case:?}");
    let server = LineServer::start().await.unwrap();
    match case {
        Discard::PanicInRun => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            let task = tokio::spawn({
                let pool = pool.clone();
                async move {
                    pool.run(async |conn| {
                        request(conn, "PING").await?;
                        panic!("the operation panics with its connection in hand");
                    })
                    .await
                }
            });
            let joined: Result<Result<(), RunError<io::Error>>, _> = task.await;
            assert!(joined.is_err_and(|e| e.is_panic()), "{name}: no panic");
            assert_books(&name, &pool, &metrics, Eviction::Cancelled, 1);
        }
        Discard::CancelledRun => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            let run = pool.run(async |conn| {
                conn.write_all(b"GET k\n").await?;
                conn.flush().await?;
                // The reply is never read: the caller gives up first.
                std::future::pending::<()>().await;
                Ok(())
            });
            let cut = tokio::time::timeout(Duration::from_millis(200), run).await;
            assert!(cut.is_err(), "{name}: the run finished");
            assert_books(&name, &pool, &metrics, Eviction::Cancelled, 1);
        }
        Discard::RunPastDeadline => {
            let (pool, metrics) = RecordedMetrics::build(
                quiet(&server)
                    .connect_timeout(Duration::from_millis(300))
                    .retry_policy(RetryPolicy::default().deadline(Duration::from_millis(300))),
            )
            .unwrap();
            let err = pool
                .run(async |conn| {
                    conn.write_all(b"GET k\n").await?;
                    conn.flush().await?;
                    std::future::pending::<()>().await;
                    Ok(())
                })
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RunError::MaybeExecuted {
                        reason: GiveUp::Deadline,
                        ..
                    }
                ),
                "{name}: {err}"
            );
            assert_books(&name, &pool, &metrics, Eviction::Deadline, 1);
        }
        Discard::CheckoutCancelledDuringPing => {
            let (pool, metrics) = RecordedMetrics::build(
                quiet(&server)
                    .check_after(Duration::ZERO)
                    .ping_timeout(Duration::from_secs(30)),
            )
            .unwrap();
            idle_behind_a_frozen_server(&pool, &server).await;
            let cut = tokio::time::timeout(Duration::from_millis(200), pool.get()).await;
            assert!(cut.is_err(), "{name}: the checkout finished");
            assert_eq!(pool.manager().pings(), 1, "{name}: not cut during its ping");
            assert_books(&name, &pool, &metrics, Eviction::Cancelled, 1);
        }
        Discard::WaitTimeoutDuringPing => {
            let (pool, metrics) = RecordedMetrics::build(
                quiet(&server)
                    .check_after(Duration::ZERO)
                    .ping_timeout(Duration::from_secs(30))
                    .wait_timeout(Duration::from_millis(300)),
            )
            .unwrap();
            idle_behind_a_frozen_server(&pool, &server).await;
            let err = pool.get().await.unwrap_err();
            assert!(matches!(err, Error::Timeout(_)), "{name}: {err}");
            assert_eq!(pool.manager().pings(), 1, "{name}: not cut during its ping");
            assert_books(&name, &pool, &metrics, Eviction::Cancelled, 1);
        }
        Discard::ResizeIdle => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            drop(hold(&pool, 3).await);
            pool.resize(1);
            // Idle ones beyond the new size close at once.
            assert_books(&name, &pool, &metrics, Eviction::Resize, 2);
            assert_eq!(pool.status().size, 1, "{name}");
        }
        Discard::ResizeBusy => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            let held = hold(&pool, 3).await;
            pool.resize(1);
            assert_books(&name, &pool, &metrics, Eviction::Resize, 0);
            drop(held);
            // Busy ones close when returned, down to the new size.
            assert_books(&name, &pool, &metrics, Eviction::Resize, 2);
            assert_eq!(pool.status().size, 1, "{name}");
        }
        Discard::CloseIdle => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            drop(hold(&pool, 2).await);
            pool.close();
            assert_books(&name, &pool, &metrics, Eviction::Closed, 2);
        }
        Discard::CloseBusy => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            let held = hold(&pool, 2).await;
            pool.close();
            assert_books(&name, &pool, &metrics, Eviction::Closed, 0);
            drop(held);
            assert_books(&name, &pool, &metrics, Eviction::Closed, 2);
        }
        Discard::Detach => {
            let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
            let mut own = pool.get().await.unwrap().detach();
            assert_books(&name, &pool, &metrics, Eviction::Detached, 1);
            // Detached, not closed: it still works, outside the pool.
            assert_eq!(request(&mut own, "PING").await.unwrap(), "PONG");
            assert_eq!(pool.status().size, 0);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_discard_is_counted_once_with_its_reason_on_every_path() {
    for case in DISCARDS {
        walk(case).await;
    }
}

/// A pool built with a reaper whose task the test can watch. Tasks counted on this
/// current-thread runtime: the server's acceptor and one per connection it holds,
/// the reaper, and whatever the test spawns.
fn alive_tasks() -> usize {
    tokio::runtime::Handle::current()
        .metrics()
        .num_alive_tasks()
}

#[tokio::test]
async fn close_fails_waiters_closes_busy_connections_on_return_and_stops_the_reaper() {
    let server = LineServer::start().await.unwrap();
    let baseline = alive_tasks();
    let pool = quiet(&server)
        .max_size(2)
        // close() leaves the reaper to notice at its next tick.
        .reaper_interval(Duration::from_millis(50))
        .wait_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    assert_eq!(alive_tasks(), baseline + 1, "no reaper task to watch");

    let held = hold(&pool, 2).await;
    assert!(eventually(PATIENCE, || server.live() == 2).await);
    let waiters: Vec<_> = (0..3)
        .map(|_| {
            let pool = pool.clone();
            tokio::spawn(async move { pool.get().await.map(drop) })
        })
        .collect();
    assert!(eventually(PATIENCE, || pool.status().waiting == 3).await);

    pool.close();
    for waiter in waiters {
        let got = waiter.await.unwrap();
        assert!(matches!(got, Err(Error::Closed)), "{got:?}");
    }
    // Busy connections stay open until returned...
    assert_eq!(server.live(), 2);
    assert_eq!(pool.stats().evictions(Eviction::Closed), 0);
    drop(held);
    // ... and then close, counted as closed with the pool.
    assert!(eventually(PATIENCE, || server.ended().len() == 2).await);
    assert!(server.ended().iter().all(|e| e.how == Ending::ClientClosed));
    assert_eq!(pool.stats().evictions(Eviction::Closed), 2);
    assert_eq!(pool.stats().closed(), 2);
    assert_eq!(pool.status().size, 0);
    // The server's two handlers are gone; so must be the reaper, while the pool
    // itself is still alive.
    let stopped = eventually(PATIENCE, || alive_tasks() == baseline).await;
    assert!(
        stopped,
        "{} tasks alive after close(), {baseline} before the pool was built",
        alive_tasks()
    );
    assert!(pool.get().await.is_err_and(|e| matches!(e, Error::Closed)));
}

#[tokio::test]
async fn dropping_the_pool_closes_idle_connections_counted_and_stops_the_reaper() {
    let server = LineServer::start().await.unwrap();
    let baseline = alive_tasks();
    // An hour between ticks: only the pool's drop itself can stop the reaper in time.
    let (pool, metrics) = RecordedMetrics::build(quiet(&server)).unwrap();
    assert_eq!(alive_tasks(), baseline + 1, "no reaper task to watch");
    drop(hold(&pool, 2).await);
    assert!(eventually(PATIENCE, || server.live() == 2).await);

    drop(pool);
    assert!(eventually(PATIENCE, || server.ended().len() == 2).await);
    assert!(server.ended().iter().all(|e| e.how == Ending::ClientClosed));
    // The stats went with the pool; the metrics show every connection opened was
    // counted closed with it.
    assert_eq!(metrics.counter(CONNECTS, &[("outcome", "ok")]), 2);
    assert_eq!(metrics.counter(EVICTIONS, &[("reason", "closed")]), 2);
    assert_eq!(metrics.counter(RESETS, &[]), 0);
    let stopped = eventually(PATIENCE, || alive_tasks() == baseline).await;
    assert!(
        stopped,
        "{} tasks alive after the pool was dropped, {baseline} before it was built",
        alive_tasks()
    );
}

/// A server whose handshake takes a while: it greets each connection `delay` after
/// accepting it, and counts how many connections were in their handshake at once.
struct SlowHandshakeServer {
    addr: SocketAddr,
    most_at_once: Arc<AtomicUsize>,
    greeted: Arc<AtomicUsize>,
    acceptor: tokio::task::AbortHandle,
}

impl Drop for SlowHandshakeServer {
    fn drop(&mut self) {
        self.acceptor.abort();
    }
}

impl SlowHandshakeServer {
    async fn start(delay: Duration) -> SlowHandshakeServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let in_handshake = Arc::new(AtomicUsize::new(0));
        let most_at_once = Arc::new(AtomicUsize::new(0));
        let greeted = Arc::new(AtomicUsize::new(0));
        let acceptor = tokio::spawn({
            let (most_at_once, greeted) = (Arc::clone(&most_at_once), Arc::clone(&greeted));
            async move {
                let mut handlers = tokio::task::JoinSet::new();
                while let Ok((mut stream, _)) = listener.accept().await {
                    let in_handshake = Arc::clone(&in_handshake);
                    let most_at_once = Arc::clone(&most_at_once);
                    let greeted = Arc::clone(&greeted);
                    handlers.spawn(async move {
                        let now = in_handshake.fetch_add(1, Ordering::SeqCst) + 1;
                        most_at_once.fetch_max(now, Ordering::SeqCst);
                        tokio::time::sleep(delay).await;
                        // Out of the handshake before the client can see the greeting.
                        in_handshake.fetch_sub(1, Ordering::SeqCst);
                        // Counted before the client can read it, so the test sees
                        // every greeting its connections got.
                        greeted.fetch_add(1, Ordering::SeqCst);
                        if stream.write_all(b"HELLO\n").await.is_err() {
                            return;
                        }
                        let mut sink = Vec::new();
                        let _ = stream.read_to_end(&mut sink).await;
                    });
                }
            }
        });
        SlowHandshakeServer {
            addr,
            most_at_once,
            greeted,
            acceptor: acceptor.abort_handle(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_more_than_max_concurrent_connects_are_in_their_handshake_at_once() {
    const BURST: usize = 20;
    let server = SlowHandshakeServer::start(Duration::from_millis(100)).await;
    let pool = Pool::builder(GreetedManager(server.addr))
        .max_size(BURST)
        .max_concurrent_connects(2)
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    let mut burst = tokio::task::JoinSet::new();
    for _ in 0..BURST {
        let pool = pool.clone();
        // Each holds its connection until every one is open, so each needs a connect.
        burst.spawn(async move { pool.get().await.unwrap() });
    }
    let mut held = Vec::new();
    while let Some(conn) = burst.join_next().await {
        held.push(conn.unwrap());
    }
    assert_eq!(server.greeted.load(Ordering::SeqCst), BURST);
    let most = server.most_at_once.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} connections in their handshake at once");
    // The gate admits two: a limit of one would also pass the line above.
    assert_eq!(most, 2, "the burst never had two connects in flight");
}

#[tokio::test]
async fn healthy_pooled_connections_are_handed_out_while_the_circuit_is_open() {
    let server = LineServer::start().await.unwrap();
    let manager = UnreliableManager::new(server.addr()).unwrap();
    manager.script_connects(2, Behaviour::Succeed);
    manager.set_connects(Behaviour::Fail);
    let pool = Pool::builder(manager.clone())
        .max_size(4)
        .circuit_open_after(3)
        .circuit_open_for(HOUR)
        // The fixed open period and the fail-fast checkout these checks were written for.
        .circuit_first_open(HOUR)
        .circuit_wait(Duration::ZERO)
        .reaper_interval(HOUR)
        .check_after(HOUR)
        .build()
        .unwrap();
    let held = hold(&pool, 2).await;
    let pooled: Vec<usize> = held.iter().map(|c| c.serial()).collect();
    // Both busy: each checkout dials and is refused, until the circuit opens.
    for _ in 0..3 {
        let err = pool.get().await.unwrap_err();
        assert!(matches!(err, Error::Connect { .. }), "{err}");
    }
    assert_eq!(pool.status().circuit, CircuitState::Open);
    assert!(matches!(pool.get().await, Err(Error::CircuitOpen { .. })));
    drop(held);

    // Open, and yet both pooled connections come out, and work.
    let attempts = manager.attempts();
    let mut again = hold(&pool, 2).await;
    for conn in &mut again {
        assert!(pooled.contains(&conn.serial()));
        assert_eq!(conn.request("PING").await.unwrap(), "PONG");
    }
    assert_eq!(pool.status().circuit, CircuitState::Open);
    // A third would need a connect: that still fails fast, without dialing.
    assert!(matches!(pool.get().await, Err(Error::CircuitOpen { .. })));
    assert_eq!(manager.attempts(), attempts);
}

#[tokio::test(start_paused = true)]
async fn wait_timeout_bounds_a_checkout_whose_connect_hangs() {
    let server = LineServer::start().await.unwrap();
    let manager = UnreliableManager::new(server.addr()).unwrap();
    manager.set_connects(Behaviour::Hang);
    let wait = Duration::from_millis(300);
    let connect_timeout = Duration::from_secs(30);
    let pool = Pool::builder(manager.clone())
        .connect_timeout(connect_timeout)
        .wait_timeout(wait)
        .retry_policy(RetryPolicy::default().deadline(connect_timeout))
        .build()
        .unwrap();
    let started = tokio::time::Instant::now();
    let err = pool.get().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(err, Error::Timeout(_)), "{err}");
    assert_eq!(manager.attempts(), 1);
    // Paused clock: the checkout ended at wait_timeout, not at connect_timeout.
    assert!(took >= wait && took < connect_timeout, "took {took:?}");
}

#[tokio::test]
async fn run_on_an_exhausted_pool_returns_after_wait_timeout_without_retrying() {
    let server = LineServer::start().await.unwrap();
    let wait = Duration::from_millis(300);
    let pool = quiet(&server)
        .max_size(1)
        .wait_timeout(wait)
        .retry_policy(
            RetryPolicy::default()
                .max_attempts(5)
                .deadline(Duration::from_secs(60)),
        )
        .build()
        .unwrap();
    let busy = pool.get().await.unwrap();
    // From here no I/O is needed: the paused clock jumps from timer to timer.
    tokio::time::pause();
    let started = tokio::time::Instant::now();
    let ran = Arc::new(AtomicUsize::new(0));
    let err = pool
        .run(async |_conn| {
            let ran = Arc::clone(&ran);

            ran.fetch_add(1, Ordering::SeqCst);
            Ok(())
        })
        .await
        .unwrap_err();
    let took = started.elapsed();
    assert!(
        matches!(
            err,
            RunError::NotExecuted {
                reason: GiveUp::NoConnection,
                source: Some(AttemptError::Checkout(Error::Timeout(_))),
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(ran.load(Ordering::SeqCst), 0);
    // One wait_timeout, not several nor the retry deadline.
    assert!(took >= wait && took < 2 * wait, "took {took:?}");
    assert_eq!(pool.stats().checkout_errors, 1, "a retry checked out again");
    drop(busy);
}

#[tokio::test]
async fn the_gauges_show_occupancy_waiters_circuit_and_idle_limit() {
    let server = LineServer::start().await.unwrap();
    let (pool, metrics) = RecordedMetrics::build(
        quiet(&server)
            .max_size(2)
            .idle_timeout(Some(Duration::from_secs(7)))
            .reaper_interval(Duration::from_millis(20)),
    )
    .unwrap();
    let gauge = |name: &str, labels: &[(&str, &str)]| metrics.gauge(name, labels);
    assert_eq!(gauge(IDLE_EVICT_AFTER, &[]), Some(7.0));

    let mut held = hold(&pool, 2).await;
    drop(held.pop());
    let one_each = eventually(PATIENCE, || {
        gauge(CONNECTIONS, &[("state", "idle")]) == Some(1.0)
            && gauge(CONNECTIONS, &[("state", "in_use")]) == Some(1.0)
            && gauge(WAITERS, &[]) == Some(0.0)
            && gauge(CIRCUIT_STATE, &[]) == Some(0.0)
    })
    .await;
    assert!(one_each, "{:?}", occupancy(&metrics));

    held.push(pool.get().await.unwrap());
    let waiter = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(drop) }
    });
    let queued = eventually(PATIENCE, || {
        gauge(CONNECTIONS, &[("state", "idle")]) == Some(0.0)
            && gauge(CONNECTIONS, &[("state", "in_use")]) == Some(2.0)
            && gauge(WAITERS, &[]) == Some(1.0)
    })
    .await;
    assert!(queued, "{:?}", occupancy(&metrics));
    drop(held);
    waiter.await.unwrap().unwrap();

    // Without an idle timeout the pool never closes an idle connection: +Inf.
    let (_never, never) = RecordedMetrics::build(quiet(&server).idle_timeout(None)).unwrap();
    assert_eq!(never.gauge(IDLE_EVICT_AFTER, &[]), Some(f64::INFINITY));
}

fn occupancy(metrics: &RecordedMetrics) -> [Option<f64>; 4] {
    [
        metrics.gauge(CONNECTIONS, &[("state", "idle")]),
        metrics.gauge(CONNECTIONS, &[("state", "in_use")]),
        metrics.gauge(WAITERS, &[]),
        metrics.gauge(CIRCUIT_STATE, &[]),
    ]
}

#[tokio::test]
async fn the_circuit_state_gauge_shows_an_open_circuit() {
    let server = LineServer::start().await.unwrap();
    let manager = UnreliableManager::new(server.addr()).unwrap();
    manager.set_connects(Behaviour::Fail);
    let (pool, metrics) = RecordedMetrics::build(
        Pool::builder(manager)
            .circuit_open_after(1)
            .circuit_open_for(HOUR)
            // The fixed open period and the fail-fast checkout these checks were written for.
            .circuit_first_open(HOUR)
            .circuit_wait(Duration::ZERO)
            .reaper_interval(Duration::from_millis(20)),
    )
    .unwrap();
    assert!(matches!(pool.get().await, Err(Error::Connect { .. })));
    assert_eq!(pool.status().circuit, CircuitState::Open);
    let open = eventually(PATIENCE, || {
        metrics.gauge(CIRCUIT_STATE, &[]) == Some(CircuitState::Open.gauge_value())
    })
    .await;
    assert!(open, "{:?}", metrics.gauge(CIRCUIT_STATE, &[]));
}

#[tokio::test]
async fn by_default_the_connection_idle_longest_is_handed_out_first() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .build()
        .unwrap();
    let held = hold(&pool, 3).await;
    let returned: Vec<u64> = held.iter().rev().map(|c| c.id()).collect();
    // Returned last to first: the last one checked out has been idle longest.
    for conn in held.into_iter().rev() {
        drop(conn);
    }
    let again = hold(&pool, 3).await;
    let handed: Vec<u64> = again.iter().map(|c| c.id()).collect();
    assert_eq!(handed, returned, "not first in, first out");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn by_default_lifetimes_are_jittered_by_two_and_a_half_percent() {
    // 2.5 % of 8 s is 200 ms: wide enough to see next to a reaper tick of 10 ms.
    const CONNECTIONS: usize = 16;
    let lifetime = Duration::from_secs(8);
    let jitter = lifetime / 40;
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .max_size(CONNECTIONS)
        .max_lifetime(Some(lifetime))
        .idle_timeout(None)
        .check_after(HOUR)
        .reaper_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    drop(hold(&pool, CONNECTIONS).await);
    let retired = eventually(lifetime + PATIENCE, || server.ended().len() == CONNECTIONS).await;
    assert!(retired, "only {} retired", server.ended().len());
    let lived: Vec<Duration> = server.ended().iter().map(|e| e.lived).collect();
    // The server's clock starts at accept, after the pool's; the coarse clock the
    // pool retires by may lag by one kernel tick (up to 10 ms).
    let earliest = lifetime - jitter - Duration::from_millis(10);
    for l in &lived {
        assert!(*l >= earliest, "retired after {l:?}, before {earliest:?}");
        assert!(*l <= lifetime + PATIENCE, "retired after {l:?}");
    }
    // Without jitter none would retire before max_lifetime (less a coarse tick).
    // With it, each retires at a uniform draw from the last 200 ms: even if reaper
    // ticks ran 100 ms late, all sixteen missing the first half has odds 1 in 65,000.
    let first = *lived.iter().min().unwrap();
    assert!(
        first < lifetime - Duration::from_millis(20),
        "no lifetime jittered below {lifetime:?}: {lived:?}"
    );
}

#[tokio::test]
async fn by_default_the_reaper_finds_a_closed_idle_connection_within_about_a_second() {
    let server = LineServer::start().await.unwrap();
    // Defaults but for the checkout ping, which would find it too.
    let pool = Pool::builder(LineManager::new(server.addr()))
        .check_after(HOUR)
        .build()
        .unwrap();
    // The first tick comes at a random phase of the interval, so one round could
    // pass early with a longer interval; each round after starts just after a tick,
    // and then has to wait for the next one.
    for round in 1..=3 {
        drop(pool.get().await.unwrap());
        assert!(eventually(PATIENCE, || server.live() == 1).await);
        assert_eq!(server.close_all().await, 1);
        let closed_at = Instant::now();
        // One default tick is 1 s; 2.5 s allows a late tick on a loaded machine, and
        // fails an interval of 3 s or more.
        let gone = eventually(Duration::from_millis(2500), || pool.status().size == 0).await;
        assert!(
            gone,
            "round {round}: still pooled {:?} after the peer closed it",
            closed_at.elapsed()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_up_dials_no_more_than_max_concurrent_connects_at_once() {
    const MIN_IDLE: usize = 6;
    let server = SlowHandshakeServer::start(Duration::from_millis(100)).await;
    let pool = Pool::builder(GreetedManager(server.addr))
        .min_idle(MIN_IDLE)
        .max_size(MIN_IDLE)
        .max_concurrent_connects(2)
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    assert_eq!(
        pool.warm_up(Duration::from_secs(60)).await.unwrap(),
        MIN_IDLE
    );
    assert_eq!(server.greeted.load(Ordering::SeqCst), MIN_IDLE);
    assert_eq!(pool.status().idle, MIN_IDLE);
    let most = server.most_at_once.load(Ordering::SeqCst);
    assert!(most <= 2, "{most} connections in their handshake at once");
    // The warm-up dials in parallel: a limit of one would also pass the line above.
    assert_eq!(most, 2, "the warm-up never had two connects in flight");
}

#[tokio::test]
async fn the_reapers_refills_turned_away_by_the_open_circuit_are_gate_rejections() {
    let addr = {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        listener.local_addr().unwrap()
    };
    // Nobody checks out: every connect is the reaper's refill toward `min_idle`.
    let pool = Pool::builder(LineManager::new(addr))
        .min_idle(2)
        .circuit_open_after(1)
        .circuit_open_for(HOUR)
        .circuit_first_open(HOUR)
        .reaper_interval(Duration::from_millis(50))
        .build()
        .unwrap();
    assert!(
        eventually(PATIENCE * 2, || pool.stats().gate_rejections >= 4).await,
        "{:?}",
        pool.stats()
    );
    assert_eq!(pool.status().circuit, CircuitState::Open);
    let stats = pool.stats();
    // The refills of the first tick may both have dialed before the circuit opened;
    // none after.
    assert!(
        (1..=2).contains(&stats.connect_failures),
        "the open circuit let refills dial: {stats:?}"
    );
    assert_eq!(
        stats.checkouts_immediate + stats.checkouts_waited + stats.checkout_errors,
        0,
        "{stats:?}"
    );
    assert_eq!((stats.opened, pool.status().size), (0, 0));
}

/// A [`LineManager`] that counts the connections it was told left the pool for good.
#[derive(Debug)]
struct DetachCounting {
    lines: LineManager,
    detached: Arc<AtomicUsize>,
}

impl Manager for DetachCounting {
    type Connection = LineConnection;
    type Error = io::Error;

    async fn connect(&self, dialer: &Dialer) -> io::Result<LineConnection> {
        self.lines.connect(dialer).await
    }

    fn socket<'a>(&self, conn: &'a LineConnection) -> Option<SocketRef<'a>> {
        self.lines.socket(conn)
    }

    fn detach(&self, _conn: &mut LineConnection) {
        self.detached.fetch_add(1, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn detach_is_not_run_for_a_connection_returned_after_its_pool_was_dropped() {
    let server = LineServer::start().await.unwrap();
    let detached = Arc::new(AtomicUsize::new(0));
    let pool = Pool::builder(DetachCounting {
        lines: LineManager::new(server.addr()),
        detached: Arc::clone(&detached),
    })
    .reaper_interval(HOUR)
    .check_after(HOUR)
    .build()
    .unwrap();

    // While the pool lives, a connection closed on return leaves it for good: the
    // count below can see a call.
    let mut conn = pool.get().await.unwrap();
    conn.mark_broken(ResetCause::PeerReset);
    drop(conn);
    assert_eq!(detached.load(Ordering::SeqCst), 1);

    let healthy = pool.get().await.unwrap();
    let mut broken = pool.get().await.unwrap();
    broken.mark_broken(ResetCause::PeerReset);
    drop(pool);
    drop(healthy);
    drop(broken);
    assert!(
        eventually(PATIENCE, || server.live() == 0).await,
        "the connections returned to a dropped pool were not closed"
    );
    assert_eq!(
        detached.load(Ordering::SeqCst),
        1,
        "detach ran for a connection returned after its pool was dropped"
    );
}
