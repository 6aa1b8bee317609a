//! Connection hooks, warm-up and `retain` against real servers on loopback (and a
//! real PostgreSQL when the machine can run one): each hook runs where it promises
//! and a failing one costs what its docs say, counted; warm-up opens `min_idle`
//! connections and says why when it cannot; `retain` closes exactly the idle
//! connections it rejects, never a busy one. The books balance after each.

use std::collections::HashSet;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use steadypool::drivers::postgres::PgManager;
use steadypool::{
    ConnectionInfo, Error, Eviction, Manager, Phase, Pool, PoolBuilder, ResetCause, WarmUpError,
};
use steadypool_tests::eventually;
use steadypool_tests::line_manager::{LineManager, request};
use steadypool_tests::postgres::PgServer;
use steadypool_tests::servers::{Ending, LineServer};
use tokio::net::TcpListener;

/// Timing room on a loaded 2-core machine.
const SLACK: Duration = Duration::from_secs(10);
const HOUR: Duration = Duration::from_secs(3600);

/// A pool in which only the test opens or closes connections: no reaper tick, no
/// ping at checkout.
fn builder(server: &LineServer) -> PoolBuilder<LineManager> {
    Pool::builder(LineManager::new(server.addr()))
        .reaper_interval(HOUR)
        .check_after(HOUR)
}

fn assert_books<M: Manager>(pool: &Pool<M>) {
    let stats = pool.stats();
    let status = pool.status();
    assert_eq!(
        stats.opened,
        status.size as u64 + stats.closed(),
        "opened != open now + closed: {stats:?} {status:?}"
    );
}

fn local_addr(conn: &steadypool_tests::line_manager::LineConnection) -> SocketAddr {
    conn.get_ref().local_addr().unwrap()
}

/// An address nothing listens on.
async fn closed_port() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    drop(listener);
    addr
}

#[tokio::test]
async fn after_connect_runs_once_on_every_new_connection_before_it_is_handed_out() {
    let server = LineServer::start().await.unwrap();
    let hooked: Arc<Mutex<HashSet<SocketAddr>>> = Arc::default();
    let seen = Arc::clone(&hooked);
    let pool = builder(&server)
        .after_connect(move |conn| {
            let seen = Arc::clone(&seen);
            Box::pin(async move {
                // A round trip on the new connection, as `AUTH` or `SET` would be.
                assert_eq!(request(conn, "PING").await?, "PONG");
                seen.lock().unwrap().insert(local_addr(conn));
                Ok(())
            })
        })
        .build()
        .unwrap();

    let mut held = Vec::new();
    for _ in 0..3 {
        let conn = pool.get().await.unwrap();
        assert!(
            hooked.lock().unwrap().contains(&local_addr(&conn)),
            "a connection was handed out before its after_connect hook ran"
        );
        held.push(conn);
    }
    drop(held);
    // Reused connections do not run it again.
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    }
    assert_eq!(hooked.lock().unwrap().len(), 3);
    assert_eq!(server.accepts(), 3);
    assert_eq!(pool.stats().opened, 3);
    assert_books(&pool);
}

#[tokio::test]
async fn a_failing_after_connect_is_a_failed_connect_and_feeds_the_circuit() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server)
        .circuit_open_after(2)
        .circuit_open_for(HOUR)
        // The fixed open period and the fail-fast checkout these checks were written for.
        .circuit_first_open(HOUR)
        .circuit_wait(Duration::ZERO)
        .after_connect(|conn| {
            Box::pin(async move {
                request(conn, "PING").await?;
                Err(io::Error::new(
                    io::ErrorKind::PermissionDenied,
                    "AUTH rejected: wrong password",
                ))
            })
        })
        .build()
        .unwrap();

    for _ in 0..2 {
        match pool.get().await {
            Err(Error::Connect { cause, source }) => {
                assert_eq!(cause, ResetCause::Other);
                assert!(source.to_string().contains("AUTH rejected"), "{source}");
            }
            other => panic!("expected a failed connect, got {other:?}"),
        }
    }
    // Two failed connects opened the circuit: the third checkout does not dial.
    match pool.get().await {
        Err(Error::CircuitOpen { last_error, .. }) => {
            assert!(last_error.contains("AUTH rejected"), "{last_error}");
        }
        other => panic!("expected the circuit open, got {other:?}"),
    }
    assert_eq!(server.accepts(), 2);
    let stats = pool.stats();
    assert_eq!(stats.opened, 0, "{stats:?}");
    assert_eq!(stats.connect_failures, 2, "{stats:?}");
    assert_eq!(pool.status().size, 0);
    // The rejected connections were closed, not leaked.
    assert!(eventually(SLACK, || server.live() == 0).await);
    assert_books(&pool);
}

#[tokio::test]
async fn before_checkout_runs_on_reused_connections_and_a_failure_discards_and_counts() {
    let server = LineServer::start().await.unwrap();
    let calls: Arc<Mutex<Vec<ConnectionInfo>>> = Arc::default();
    // 0: pass; 1: an error of the hook's own (eviction); 2: the connection broke.
    let mode = Arc::new(AtomicUsize::new(0));
    let (log, how) = (Arc::clone(&calls), Arc::clone(&mode));
    let pool = builder(&server)
        .before_checkout(move |conn, info| {
            let (log, how) = (Arc::clone(&log), Arc::clone(&how));
            Box::pin(async move {
                log.lock().unwrap().push(info);
                assert_eq!(request(conn, "PING").await?, "PONG");
                match how.load(Ordering::SeqCst) {
                    0 => Ok(()),
                    1 => Err(io::Error::other("session state is stale")),
                    _ => Err(io::ErrorKind::ConnectionReset.into()),
                }
            })
        })
        .build()
        .unwrap();

    let first = pool.get().await.unwrap();
    let id = first.id();
    assert!(calls.lock().unwrap().is_empty(), "ran on a new connection");
    drop(first);
    let again = pool.get().await.unwrap();
    assert_eq!(again.id(), id);
    {
        let calls = calls.lock().unwrap();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].id, id);
        assert_eq!(calls[0].peer, Some(server.addr()));
    }
    drop(again);

    // A failing hook: the checkout still succeeds, on a new connection.
    mode.store(1, Ordering::SeqCst);
    let replaced = pool.get().await.unwrap();
    assert_ne!(replaced.id(), id);
    // The server counts an accept after the client's connect returned.
    assert!(eventually(SLACK, || server.accepts() == 2).await);
    assert_eq!(pool.stats().evictions(Eviction::HookFailed), 1);
    assert!(
        eventually(SLACK, || server
            .ended()
            .iter()
            .any(|e| e.how == Ending::ClientClosed))
        .await,
        "the rejected connection was not closed"
    );
    drop(replaced);

    // An error that says the connection broke is a reset with its cause.
    mode.store(2, Ordering::SeqCst);
    let replaced = pool.get().await.unwrap();
    let stats = pool.stats();
    assert_eq!(
        stats.resets(ResetCause::PeerReset, Phase::Checkout),
        1,
        "{stats:?}"
    );
    assert_eq!(stats.evictions(Eviction::HookFailed), 1, "{stats:?}");
    assert_eq!(stats.closed(), 2, "{stats:?}");
    assert_eq!(pool.status().size, 1);
    drop(replaced);
    assert_books(&pool);
}

#[tokio::test]
async fn on_return_runs_before_the_connection_is_idle_and_a_failure_discards_and_counts() {
    let server = LineServer::start().await.unwrap();
    let fail = Arc::new(AtomicBool::new(false));
    let release = Arc::new(tokio::sync::Semaphore::new(0));
    let (failing, gate) = (Arc::clone(&fail), Arc::clone(&release));
    let pool = builder(&server)
        .on_return(move |conn, info| {
            let (failing, gate) = (Arc::clone(&failing), Arc::clone(&gate));
            Box::pin(async move {
                // Held until the test lets it finish.
                gate.acquire().await.map_err(io::Error::other)?.forget();
                assert_eq!(
                    request(conn, &format!("SET reset {}", info.id)).await?,
                    "OK"
                );
                if failing.load(Ordering::SeqCst) {
                    return Err(io::Error::other("could not reset the session"));
                }
                Ok(())
            })
        })
        .build()
        .unwrap();

    let conn = pool.get().await.unwrap();
    let id = conn.id();
    drop(conn);
    // While the hook runs, the connection is not idle: a checkout opens another one
    // rather than take it half-reset.
    tokio::task::yield_now().await;
    assert_eq!(pool.status().in_use, 1);
    let other = pool.get().await.unwrap();
    assert_ne!(other.id(), id);
    release.add_permits(1);
    assert!(eventually(SLACK, || pool.status().idle == 1).await);
    let mut reused = pool.get().await.unwrap();
    assert_eq!(reused.id(), id);
    assert_eq!(
        request(&mut reused, "GET reset").await.unwrap(),
        format!("VALUE {id}"),
        "the hook's request did not reach the server"
    );

    // A failing hook closes the connection instead of returning it.
    fail.store(true, Ordering::SeqCst);
    release.add_permits(2);
    drop(reused);
    drop(other);
    assert!(eventually(SLACK, || pool.status().size == 0).await);
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::HookFailed), 2, "{stats:?}");
    assert_eq!(stats.opened, 2, "{stats:?}");
    assert_books(&pool);
}

#[tokio::test]
async fn an_on_return_hook_still_running_after_wait_timeout_closes_its_connection() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server)
        .wait_timeout(Duration::from_millis(200))
        .on_return(|_conn, _info| {
            Box::pin(async move {
                tokio::time::sleep(HOUR).await;
                Ok(())
            })
        })
        .build()
        .unwrap();
    drop(pool.get().await.unwrap());
    assert!(eventually(SLACK, || pool.status().size == 0).await);
    assert_eq!(pool.stats().evictions(Eviction::Cancelled), 1);
    assert!(eventually(SLACK, || server.live() == 0).await);
    assert_books(&pool);
}

#[tokio::test]
async fn warm_up_opens_min_idle_connections_that_the_first_checkouts_take() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server).min_idle(3).build().unwrap();
    assert_eq!(pool.status().size, 0, "build() opened connections");

    assert_eq!(pool.warm_up(SLACK).await.unwrap(), 3);
    assert!(eventually(SLACK, || server.accepts() == 3).await);
    assert_eq!(pool.status().idle, 3);
    // Enough are idle: nothing more to open.
    assert_eq!(pool.warm_up(SLACK).await.unwrap(), 0);

    let mut held = Vec::new();
    for _ in 0..3 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
        held.push(conn);
    }
    assert_eq!(
        server.accepts(),
        3,
        "a checkout dialed past the warm connections"
    );
    assert_eq!(pool.stats().opened, 3);
    drop(held);
    assert_books(&pool);
}

#[tokio::test]
async fn warm_up_without_min_idle_proves_one_connection() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server).build().unwrap();
    assert_eq!(pool.warm_up(SLACK).await.unwrap(), 1);
    assert!(eventually(SLACK, || server.accepts() == 1).await);
    assert_eq!(pool.status().idle, 1);
}

#[tokio::test]
async fn warm_up_of_an_unreachable_upstream_returns_the_connect_error() {
    let addr = closed_port().await;
    let pool = Pool::builder(LineManager::new(addr))
        .min_idle(2)
        .reaper_interval(HOUR)
        .build()
        .unwrap();
    match pool.warm_up(SLACK).await {
        Err(WarmUpError::Unreachable(Error::Connect { cause, .. })) => {
            assert_eq!(cause, ResetCause::Refused);
        }
        other => panic!("expected the refused connect, got {other:?}"),
    }
    let stats = pool.stats();
    assert_eq!((stats.opened, stats.connect_failures), (0, 2), "{stats:?}");
    assert_eq!(pool.status().size, 0);
}

#[tokio::test]
async fn warm_up_gives_up_at_its_timeout_and_gives_back_the_room() {
    let server = LineServer::start().await.unwrap();
    let hang = Arc::new(AtomicBool::new(true));
    let hanging = Arc::clone(&hang);
    let pool = builder(&server)
        .min_idle(2)
        .max_size(2)
        .after_connect(move |_conn| {
            let hanging = Arc::clone(&hanging);
            Box::pin(async move {
                if hanging.load(Ordering::SeqCst) {
                    tokio::time::sleep(HOUR).await;
                }
                Ok(())
            })
        })
        .build()
        .unwrap();
    let started = Instant::now();
    match pool.warm_up(Duration::from_millis(300)).await {
        Err(WarmUpError::TimedOut(after)) => assert_eq!(after, Duration::from_millis(300)),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(pool.stats().opened, 0);
    // The abandoned connects hold no room: the pool can open max_size again.
    hang.store(false, Ordering::SeqCst);
    assert_eq!(pool.warm_up(SLACK).await.unwrap(), 2);
    assert_books(&pool);
}

#[tokio::test]
async fn warm_up_of_a_closed_pool_says_so() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server).build().unwrap();
    pool.close();
    assert!(matches!(
        pool.warm_up(SLACK).await,
        Err(WarmUpError::Closed)
    ));
}

#[tokio::test]
async fn retain_closes_the_idle_connections_it_rejects_and_never_a_busy_one() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server).min_idle(4).build().unwrap();
    // Two idle in deadpool's queue, one busy, then two more opened ahead of demand
    // (the spare stock).
    let a = pool.get().await.unwrap();
    let b = pool.get().await.unwrap();
    let mut busy = pool.get().await.unwrap();
    let (a_id, busy_id) = (a.id(), busy.id());
    drop((a, b));
    assert_eq!(pool.warm_up(SLACK).await.unwrap(), 2);
    assert_eq!(pool.status().idle, 4);

    let mut seen = Vec::new();
    assert_eq!(
        pool.retain(|_conn, info| {
            seen.push(info.id);
            true
        }),
        0
    );
    seen.sort_unstable();
    assert_eq!(seen.len(), 4, "{seen:?}");
    assert!(!seen.contains(&busy_id), "retain saw a busy connection");

    // One from the queue and one from the spare stock.
    let spare_id = seen[3];
    let closed = pool.retain(|_conn, info| info.id != a_id && info.id != spare_id);
    assert_eq!(closed, 2);
    assert_eq!(pool.stats().evictions(Eviction::Rejected), 2);
    assert_eq!(pool.status().size, 3);
    assert!(
        eventually(SLACK, || server
            .ended()
            .iter()
            .filter(|e| e.how == Ending::ClientClosed)
            .count()
            == 2)
        .await
    );
    assert_books(&pool);

    // Rejecting everything leaves the busy connection alone.
    assert_eq!(pool.retain(|_, _| false), 2);
    assert_eq!(request(&mut busy, "PING").await.unwrap(), "PONG");
    assert_eq!(pool.status().size, 1);
    drop(busy);
    assert_eq!(pool.status().idle, 1);
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Rejected), 4, "{stats:?}");
    assert_eq!(stats.closed(), 4, "{stats:?}");
    assert_books(&pool);
}

#[tokio::test]
async fn a_panicking_retain_predicate_leaves_the_pool_working() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server).build().unwrap();
    drop(pool.get().await.unwrap());
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.retain(|_, _| panic!("predicate bug"))
    }));
    assert!(panicked.is_err());
    assert_eq!(pool.status().idle, 1);
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(server.accepts(), 1);
    drop(conn);
    assert_books(&pool);
}

#[tokio::test]
async fn postgres_after_connect_sets_the_search_path_of_every_session() {
    let Some(pg) = PgServer::start() else { return };
    let admin = pg.connect().await;
    admin
        .batch_execute(
            "CREATE SCHEMA app; CREATE TABLE app.items (n int); INSERT INTO app.items VALUES (7)",
        )
        .await
        .unwrap();
    let pool = Pool::builder(PgManager::new(pg.config()).unwrap())
        .reaper_interval(HOUR)
        .after_connect(|conn| {
            Box::pin(async move {
                conn.batch_execute("SET search_path TO app").await?;
                Ok(())
            })
        })
        .build()
        .unwrap();
    let mut held = Vec::new();
    for _ in 0..2 {
        let conn = pool.get().await.unwrap();
        let path: String = conn
            .query_one("SHOW search_path", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(path, "app");
        let n: i32 = conn
            .query_one("SELECT n FROM items", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(n, 7);
        held.push(conn);
    }
    drop(held);
    assert_eq!(pool.stats().opened, 2);

    // A hook the server answers with an error: a failed connect with the server's
    // message, nothing opened.
    let failing = Pool::builder(PgManager::new(pg.config()).unwrap())
        .reaper_interval(HOUR)
        .after_connect(|conn| {
            Box::pin(async move {
                conn.batch_execute("SET search_path TO app; SELECT 1/0")
                    .await?;
                Ok(())
            })
        })
        .build()
        .unwrap();
    match failing.get().await {
        Err(Error::Connect { cause, source }) => {
            assert_eq!(cause, ResetCause::Other);
            assert!(source.to_string().contains("division by zero"), "{source}");
        }
        other => panic!("expected a failed connect, got {other:?}"),
    }
    let stats = failing.stats();
    assert_eq!((stats.opened, stats.connect_failures), (0, 1), "{stats:?}");
    assert_books(&failing);
    assert_books(&pool);
}
