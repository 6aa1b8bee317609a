//! Checkout never hands out a connection the peer closed, reset or desynced while it
//! sat idle; it discards it with its cause and tries the next. Real loopback sockets,
//! faults struck from the server side.
//!
//! The reaper is slowed to once an hour here so that only the checkout can find the
//! dead connections (tests/reaper.rs covers the reaper).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use steadypool::TcpState;
use steadypool::drivers::tcp::TcpManager;
use steadypool::{Eviction, Manager, Phase, Pool, PoolBuilder, ResetCause};
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::recorded::Books;
use steadypool_tests::servers::{Ending, LineServer};
use steadypool_tests::{eventually, sockets};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

const HOUR: Duration = Duration::from_secs(3600);
/// Generous: these are waits for loopback events, which take microseconds.
const PATIENCE: Duration = Duration::from_secs(5);

/// A pool whose only checks are the checkout's, and which pings only after an hour.
fn checkout_only<M: Manager>(manager: M) -> PoolBuilder<M> {
    Pool::builder(manager)
        .reaper_interval(HOUR)
        .check_after(HOUR)
}

/// A line server and a checkout-only pool to it.
async fn line_pool() -> (LineServer, Pool<LineManager>) {
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(LineManager::new(server.addr()))
        .build()
        .unwrap();
    (server, pool)
}

/// Waits until the kernel shows `count` of this process's sockets to `port` in `state`,
/// then gives tokio's reactor a moment to record the event.
async fn kernel_shows(port: u16, state: TcpState, count: usize) {
    let shown = eventually(PATIENCE, || {
        sockets::count_in_state(port, state).unwrap_or(0) == count
    })
    .await;
    assert!(
        shown,
        "the kernel never showed {count} sockets in {state:?}"
    );
    tokio::time::sleep(Duration::from_millis(50)).await;
}

/// Checks out `n` connections at once and returns them, so that `n` sit idle, and
/// waits until the server holds them all. Returns their ids.
async fn open_idle<M: Manager>(pool: &Pool<M>, server: &LineServer, n: usize) -> Vec<u64> {
    let mut held = Vec::new();
    for _ in 0..n {
        held.push(pool.get().await.unwrap());
    }
    assert!(eventually(PATIENCE, || server.live() == n).await);
    held.iter().map(|c| c.id()).collect()
}

/// What the server does to an idle connection.
#[derive(Debug, Clone, Copy)]
enum Strike {
    /// Closes it (a FIN).
    Close,
    /// Resets it (an RST).
    Reset,
    /// Sends a line nobody asked for.
    StrayLine,
}

/// One fault struck on an idle connection, and the cause the checkout must find.
struct Fault {
    name: &'static str,
    strike: Strike,
    cause: ResetCause,
}

const FAULTS: &[Fault] = &[
    Fault {
        name: "a FIN is discarded as peer closed",
        strike: Strike::Close,
        cause: ResetCause::PeerClosed,
    },
    Fault {
        name: "an RST is discarded as peer reset",
        strike: Strike::Reset,
        cause: ResetCause::PeerReset,
    },
    Fault {
        name: "bytes nobody asked for are discarded as unexpected data",
        strike: Strike::StrayLine,
        cause: ResetCause::UnexpectedData,
    },
];

/// Strikes `strike` on the server's only connection and waits until this side can
/// see it.
async fn strike(server: &LineServer, strike: Strike) {
    let port = server.addr().port();
    match strike {
        Strike::Close => {
            assert_eq!(server.close_all().await, 1);
            kernel_shows(port, TcpState::CloseWait, 1).await;
        }
        Strike::Reset => {
            assert_eq!(server.reset_all().await, 1);
            // A reset socket leaves the kernel's connection table at once.
            kernel_shows(port, TcpState::Established, 0).await;
        }
        Strike::StrayLine => {
            assert_eq!(server.send_all(b"NOTICE shutting down\n").await, 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

#[tokio::test]
async fn a_fault_on_an_idle_connection_is_discarded_with_its_cause() {
    for fault in FAULTS {
        let row = fault.name;
        let (server, pool) = line_pool().await;
        let first = open_idle(&pool, &server, 1).await;

        strike(&server, fault.strike).await;

        let mut conn = pool.get().await.unwrap();
        assert!(
            !first.contains(&conn.id()),
            "{row}: the struck connection came back"
        );
        // Had a stray line stayed, this reply would be the notice.
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG", "{row}");
        assert_eq!(
            pool.stats().resets(fault.cause, Phase::Checkout),
            1,
            "{row}: {:?}",
            pool.stats().reset_table()
        );
        assert_eq!(pool.stats().all_resets(), 1, "{row}");
        assert_eq!(server.accepts(), 2, "{row}");
        drop(conn);
        assert_eq!(
            sockets::count_in_state(server.addr().port(), TcpState::CloseWait).unwrap(),
            0,
            "{row}: a discarded connection was left in CLOSE_WAIT"
        );
    }
}

#[tokio::test]
async fn every_dead_idle_connection_is_skipped_then_a_fresh_one_is_opened() {
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(TcpManager::new(server.addr()))
        .build()
        .unwrap();
    let first = open_idle(&pool, &server, 3).await;
    assert_eq!(pool.status().idle, 3);

    assert_eq!(server.close_all().await, 3);
    kernel_shows(server.addr().port(), TcpState::CloseWait, 3).await;

    let mut conn = pool.get().await.unwrap();
    assert!(!first.contains(&conn.id()));
    // A raw TCP connection: prove it is the live one by a round trip.
    conn.write_all(b"PING\n").await.unwrap();
    let mut reply = String::new();
    BufReader::new(&mut *conn)
        .read_line(&mut reply)
        .await
        .unwrap();
    assert_eq!(reply, "PONG\n");
    assert_eq!(
        pool.stats().resets(ResetCause::PeerClosed, Phase::Checkout),
        3
    );
    assert_eq!(server.accepts(), 4);
    let status = pool.status();
    assert_eq!((status.size, status.in_use, status.idle), (1, 1, 0));
}

#[tokio::test]
async fn a_returned_connection_is_reused_without_a_ping() {
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(LineManager::new(server.addr()))
        .build()
        .unwrap();
    let first = open_idle(&pool, &server, 1).await;
    for _ in 0..10 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(conn.id(), first[0]);
        assert_eq!(request(&mut conn, "GET k").await.unwrap(), "NONE");
    }
    assert_eq!(server.accepts(), 1);
    assert_eq!(pool.manager().pings(), 0);
}

#[tokio::test]
async fn a_connection_idle_past_idle_timeout_is_closed_at_checkout() {
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(LineManager::new(server.addr()))
        .idle_timeout(Some(Duration::from_millis(200)))
        .build()
        .unwrap();
    let first = open_idle(&pool, &server, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let conn = pool.get().await.unwrap();
    assert_ne!(conn.id(), first[0]);
    assert_eq!(pool.stats().evictions(Eviction::IdleExpired), 1);
    assert_eq!(
        pool.stats().all_resets(),
        0,
        "an idle expiry is not a reset"
    );
    let closed = eventually(PATIENCE, || {
        server.ended().iter().any(|e| e.how == Ending::ClientClosed)
    })
    .await;
    assert!(closed, "the expired connection was not closed");
}

#[tokio::test]
async fn only_a_connection_idle_past_check_after_is_pinged() {
    // Long next to any stall of a loaded machine between two checkouts in a row,
    // which must not be taken for idleness; the sleep below is what crosses it.
    let check_after = Duration::from_secs(2);
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(HOUR)
        .check_after(check_after)
        .build()
        .unwrap();
    open_idle(&pool, &server, 1).await;
    for _ in 0..5 {
        drop(pool.get().await.unwrap());
    }
    assert_eq!(
        pool.manager().pings(),
        0,
        "a recently used connection was pinged"
    );

    // Past check_after by more than the coarse clock's tick (at most 10 ms).
    tokio::time::sleep(check_after + Duration::from_millis(100)).await;
    drop(pool.get().await.unwrap());
    assert_eq!(pool.manager().pings(), 1);
    // The ping counts as traffic: the next checkout right after needs none.
    drop(pool.get().await.unwrap());
    assert_eq!(pool.manager().pings(), 1);
    assert_eq!(server.accepts(), 1);
}

#[tokio::test]
async fn a_hung_server_fails_the_ping_and_the_connection_is_replaced() {
    let server = LineServer::start().await.unwrap();
    let pool = Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(HOUR)
        .check_after(Duration::from_millis(100))
        .ping_timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let first = open_idle(&pool, &server, 1).await;
    assert_eq!(server.freeze_all().await, 1);
    tokio::time::sleep(Duration::from_millis(150)).await;

    let mut conn = pool.get().await.unwrap();
    assert_ne!(conn.id(), first[0]);
    assert_eq!(
        pool.stats().resets(ResetCause::PingFailed, Phase::Checkout),
        1
    );
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
}

#[tokio::test]
async fn a_connection_marked_broken_is_closed_not_returned() {
    let (_server, pool) = line_pool().await;
    let mut conn = pool.get().await.unwrap();
    let id = conn.id();
    conn.mark_broken(ResetCause::PeerReset);
    drop(conn);

    assert_eq!(pool.status().size, 0);
    assert_eq!(pool.stats().resets(ResetCause::PeerReset, Phase::InUse), 1);
    let conn = pool.get().await.unwrap();
    assert_ne!(conn.id(), id);
}

#[tokio::test]
async fn a_detached_connection_leaves_the_pool_and_frees_its_slot() {
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(LineManager::new(server.addr()))
        .max_size(1)
        .wait_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let mut own = pool.get().await.unwrap().detach();
    assert_eq!(pool.status().size, 0);
    let mut pooled = pool.get().await.unwrap();
    assert_eq!(request(&mut own, "PING").await.unwrap(), "PONG");
    assert_eq!(request(&mut pooled, "PING").await.unwrap(), "PONG");
    assert_eq!(server.accepts(), 2);
}

#[tokio::test]
async fn a_dead_connection_is_found_even_when_the_task_budget_is_spent() {
    // tokio gives a task a budget of 128 operations per poll; a budget-aware
    // operation that finds none left returns Pending. Spend nearly all of it before
    // the checkout, so that the checkout itself takes the last unit and the probe
    // runs on an empty budget. A probe that took Pending for "nothing arrived" would
    // then hand out the dead connection.
    for spent in 120..=128 {
        let (server, pool) = line_pool().await;
        let first = open_idle(&pool, &server, 1).await;
        strike(&server, Strike::Close).await;

        tokio::task::yield_now().await;
        for _ in 0..spent {
            tokio::task::consume_budget().await;
        }
        let conn = pool.get().await.unwrap();
        assert!(
            !first.contains(&conn.id()),
            "the closed connection came back after {spent} units of budget"
        );
        assert_eq!(
            pool.stats().resets(ResetCause::PeerClosed, Phase::Checkout),
            1
        );
    }
}

#[tokio::test]
async fn a_loop_of_checkouts_still_lets_other_tasks_run() {
    // A checkout that finds an idle connection finishes without waiting. Each one
    // spends a unit of the task's cooperative budget, as a semaphore permit does, so a
    // task that does nothing but check out in a loop still yields now and then. On
    // this single-threaded runtime the other task runs only when the loop yields.
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(LineManager::new(server.addr()))
        .build()
        .unwrap();
    open_idle(&pool, &server, 1).await;
    let looper = tokio::spawn(async move {
        let other_ran = Arc::new(AtomicBool::new(false));
        tokio::spawn({
            let other_ran = Arc::clone(&other_ran);
            async move { other_ran.store(true, Ordering::Relaxed) }
        });
        for checkouts in 0..10_000 {
            drop(pool.get().await.unwrap());
            if other_ran.load(Ordering::Relaxed) {
                return Some(checkouts);
            }
        }
        None
    });
    let yielded_after = looper.await.unwrap();
    assert!(
        yielded_after.is_some_and(|n| n <= 128),
        "the other task ran only after {yielded_after:?} checkouts"
    );
}

#[tokio::test]
async fn a_checkout_that_finds_every_connection_busy_waits_counted_and_gets_the_returned_one() {
    // One connection, held. On this single-threaded runtime the tasks take turns:
    // the checkout finds it busy and yields before it queues (see `Pool::queue`), and
    // counts as waiting while it does; the holder returns the connection, and the
    // checkout takes that one, with no new connect.
    let server = LineServer::start().await.unwrap();
    let pool = checkout_only(LineManager::new(server.addr()))
        .max_size(1)
        .build()
        .unwrap();
    let held = pool.get().await.unwrap();
    let held_id = held.id();
    // That checkout waited for its connect.
    let waited_before = pool.stats().checkouts_waited;
    let checkout = tokio::spawn({
        let pool = pool.clone();
        async move { pool.get().await.map(|conn| conn.id()) }
    });
    tokio::task::yield_now().await;
    assert_eq!(
        pool.status().waiting,
        1,
        "a checkout that found the pool exhausted is not counted as waiting"
    );
    drop(held);
    assert_eq!(checkout.await.unwrap().unwrap(), held_id);
    assert_eq!(pool.status().waiting, 0);
    assert_eq!(pool.stats().checkouts_waited, waited_before + 1);
    assert_eq!(server.accepts(), 1);
}
