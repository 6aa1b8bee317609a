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
use tokio::io::AsyncWriteExt;
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

/// A flag a hook reads to panic once, as a bug in it would.
fn panic_once(flag: &AtomicBool, hook: &str) {
    if flag.swap(false, Ordering::SeqCst) {
        panic!("a bug in the {hook} hook");
    }
}

/// Runs one checkout on a task of its own, and checks that it ended in a hook's
/// panic (not in an error, nor a connection).
async fn checkout_that_panics(pool: &Pool<LineManager>) {
    let pool = pool.clone();
    let joined = tokio::spawn(async move { pool.get().await.map(|conn| conn.id()) }).await;
    let panic = match joined {
        Err(err) if err.is_panic() => err.into_panic(),
        other => panic!("expected the checkout to panic, got {other:?}"),
    };
    let message = panic
        .downcast_ref::<String>()
        .map_or("", String::as_str)
        .to_owned();
    assert!(message.starts_with("a bug in the"), "{message:?}");
}

#[tokio::test]
async fn a_panicking_before_checkout_unwinds_into_the_checkout_and_closes_its_connection() {
    let server = LineServer::start().await.unwrap();
    let armed = Arc::new(AtomicBool::new(false));
    let panics = Arc::clone(&armed);
    let pool = builder(&server)
        .before_checkout(move |_conn, _info| {
            let panics = Arc::clone(&panics);
            Box::pin(async move {
                panic_once(&panics, "before_checkout");
                Ok(())
            })
        })
        .build()
        .unwrap();
    let first = pool.get().await.unwrap().id();

    armed.store(true, Ordering::SeqCst);
    checkout_that_panics(&pool).await;
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(stats.closed(), 1, "{stats:?}");
    assert_eq!(pool.status().size, 0);
    assert!(
        eventually(SLACK, || server.live() == 0).await,
        "the connection the hook held was not closed"
    );

    // The pool goes on: the next checkout opens a connection and uses it.
    let mut conn = pool.get().await.unwrap();
    assert_ne!(conn.id(), first);
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(server.accepts(), 2);
    drop(conn);
    assert_books(&pool);
}

#[tokio::test]
async fn a_panicking_after_connect_unwinds_into_the_checkout_and_its_connection_is_not_counted() {
    let server = LineServer::start().await.unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let panics = Arc::clone(&armed);
    let pool = builder(&server)
        .after_connect(move |conn| {
            let panics = Arc::clone(&panics);
            Box::pin(async move {
                // The connection is real: the server answered on it.
                assert_eq!(request(conn, "PING").await?, "PONG");
                panic_once(&panics, "after_connect");
                Ok(())
            })
        })
        .build()
        .unwrap();

    checkout_that_panics(&pool).await;
    assert_eq!(server.accepts(), 1);
    assert!(
        eventually(SLACK, || server.live() == 0).await,
        "the connection whose hook panicked was not closed"
    );
    let stats = pool.stats();
    assert_eq!((stats.opened, stats.closed()), (0, 0), "{stats:?}");
    assert_eq!(pool.status().size, 0);
    assert_books(&pool);

    // The pool goes on: the next checkout's connect runs the hook and succeeds.
    let mut conn = pool.get().await.unwrap();
    assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
    assert_eq!(server.accepts(), 2);
    drop(conn);
    let stats = pool.stats();
    assert_eq!((stats.opened, stats.closed()), (1, 0), "{stats:?}");
    assert_books(&pool);
}

#[tokio::test]
async fn a_panicking_on_return_closes_its_connection_as_cancelled() {
    let server = LineServer::start().await.unwrap();
    let armed = Arc::new(AtomicBool::new(true));
    let panics = Arc::clone(&armed);
    let pool = builder(&server)
        .on_return(move |_conn, _info| {
            let panics = Arc::clone(&panics);
            Box::pin(async move {
                panic_once(&panics, "on_return");
                Ok(())
            })
        })
        .build()
        .unwrap();
    let first = pool.get().await.unwrap().id();
    assert!(eventually(SLACK, || pool.status().size == 0).await);
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(stats.closed(), 1, "{stats:?}");
    assert!(
        eventually(SLACK, || server.live() == 0).await,
        "the connection whose hook panicked was not closed"
    );

    // The pool goes on, and a hook that succeeds returns the connection.
    let conn = pool.get().await.unwrap();
    let second = conn.id();
    assert_ne!(second, first);
    drop(conn);
    assert!(eventually(SLACK, || pool.status().idle == 1).await);
    let mut reused = pool.get().await.unwrap();
    assert_eq!(reused.id(), second);
    assert_eq!(request(&mut reused, "PING").await.unwrap(), "PONG");
    drop(reused);
    assert_eq!(server.accepts(), 2);
    assert_books(&pool);
}

/// A pool whose on-return hook counts its calls in `calls`.
fn counting_on_return(server: &LineServer, calls: &Arc<AtomicUsize>) -> PoolBuilder<LineManager> {
    let counted = Arc::clone(calls);
    builder(server).on_return(move |_conn, _info| {
        counted.fetch_add(1, Ordering::SeqCst);
        Box::pin(async { Ok(()) })
    })
}

/// Gives a hook task spawned by a return every chance to run (the test runtime has
/// one thread, which runs it while this sleeps).
async fn let_hooks_run() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn on_return_does_not_run_for_a_connection_closed_on_return() {
    let server = LineServer::start().await.unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let pool = counting_on_return(&server, &calls).build().unwrap();

    // A healthy return runs it: the count below can see a call.
    drop(pool.get().await.unwrap());
    assert!(eventually(SLACK, || pool.status().idle == 1).await);
    assert_eq!(calls.load(Ordering::SeqCst), 1);

    // Marked broken.
    let mut conn = pool.get().await.unwrap();
    conn.mark_broken(ResetCause::PeerReset);
    drop(conn);
    let_hooks_run().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "ran on a broken connection"
    );
    assert_eq!(pool.stats().resets(ResetCause::PeerReset, Phase::InUse), 1);

    // Returned with an exchange left open.
    let mut conn = pool.get().await.unwrap();
    {
        let mut exchange = conn.exchange();
        exchange.write_all(b"PING\n").await.unwrap();
        // Cut before its reply was read, as a timeout would.
    }
    drop(conn);
    let_hooks_run().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        1,
        "ran on a connection returned mid-exchange"
    );
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Cancelled), 1, "{stats:?}");
    assert_eq!(pool.status().size, 0);
    assert_books(&pool);

    // Past its lifetime.
    let calls = Arc::new(AtomicUsize::new(0));
    let lifetime = Duration::from_millis(300);
    let pool = counting_on_return(&server, &calls)
        .max_lifetime(Some(lifetime))
        .idle_timeout(None)
        .build()
        .unwrap();
    let conn = pool.get().await.unwrap();
    tokio::time::sleep(lifetime * 2).await;
    drop(conn);
    let_hooks_run().await;
    assert_eq!(
        calls.load(Ordering::SeqCst),
        0,
        "ran on a connection past its lifetime"
    );
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::MaxLifetime), 1, "{stats:?}");
    assert_eq!(pool.status().size, 0);
    assert_books(&pool);
}

#[tokio::test]
async fn a_retain_predicate_that_panics_after_rejecting_some_closes_those_and_keeps_the_rest() {
    let server = LineServer::start().await.unwrap();
    let pool = builder(&server).build().unwrap();
    let mut held = Vec::new();
    for _ in 0..4 {
        held.push(pool.get().await.unwrap());
    }
    drop(held);
    assert_eq!(pool.status().idle, 4);

    let mut calls = 0;
    let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.retain(|_, _| {
            calls += 1;
            assert!(calls <= 2, "predicate bug");
            false
        })
    }));
    assert!(panicked.is_err(), "the panic did not reach the caller");
    assert_eq!(calls, 3);
    let stats = pool.stats();
    assert_eq!(stats.evictions(Eviction::Rejected), 2, "{stats:?}");
    assert_eq!(stats.closed(), 2, "{stats:?}");
    assert_eq!(pool.status().size, 2);
    assert_eq!(pool.status().idle, 2);
    assert!(
        eventually(SLACK, || server
            .ended()
            .iter()
            .filter(|e| e.how == Ending::ClientClosed)
            .count()
            == 2)
        .await,
        "the rejected connections were not closed"
    );
    assert_books(&pool);

    // The pool goes on: the two kept connections serve, without a new connect.
    let mut kept = Vec::new();
    for _ in 0..2 {
        let mut conn = pool.get().await.unwrap();
        assert_eq!(request(&mut conn, "PING").await.unwrap(), "PONG");
        kept.push(conn);
    }
    assert_eq!(server.accepts(), 4);
    drop(kept);
    assert_eq!(pool.retain(|_, _| false), 2);
    assert_books(&pool);
}

/// What each connect of a warm-up does in its after-connect hook, by the order it
/// reached the hook.
#[derive(Debug, Clone, Copy)]
enum Step {
    Fail,
    Open,
    Hang,
}

/// A pool of `min_idle` = `script.len()` whose connects follow `script`.
fn scripted(server: &LineServer, script: &'static [Step]) -> Pool<LineManager> {
    let next = Arc::new(AtomicUsize::new(0));
    builder(server)
        .min_idle(script.len())
        .max_size(script.len())
        .max_concurrent_connects(script.len())
        .after_connect(move |_conn| {
            let step = script[next.fetch_add(1, Ordering::SeqCst) % script.len()];
            Box::pin(async move {
                match step {
                    Step::Fail => Err(io::Error::other("AUTH rejected")),
                    Step::Open => Ok(()),
                    Step::Hang => {
                        tokio::time::sleep(HOUR).await;
                        Ok(())
                    }
                }
            })
        })
        .build()
        .unwrap()
}

#[tokio::test]
async fn warm_up_with_a_failed_connect_and_the_rest_still_running_at_its_timeout_is_unreachable() {
    let server = LineServer::start().await.unwrap();
    // None opened, one failed: the failure is the answer, though others were still
    // under way when the time ran out.
    let pool = scripted(&server, &[Step::Fail, Step::Hang, Step::Hang]);
    match pool.warm_up(Duration::from_millis(500)).await {
        Err(WarmUpError::Unreachable(Error::Connect { cause, source })) => {
            assert_eq!(cause, ResetCause::Other);
            assert!(source.to_string().contains("AUTH rejected"), "{source}");
        }
        other => panic!("expected the failed connect, got {other:?}"),
    }
    let stats = pool.stats();
    assert_eq!((stats.opened, stats.connect_failures), (0, 1), "{stats:?}");
    assert!(eventually(SLACK, || server.accepts() == 3).await);
    assert!(eventually(SLACK, || server.live() == 0).await);
    assert_eq!(pool.status().size, 0);

    // One opened: the failure and the connect cut at the timeout are no error.
    let pool = scripted(&server, &[Step::Fail, Step::Open, Step::Hang]);
    assert_eq!(pool.warm_up(Duration::from_millis(500)).await.unwrap(), 1);
    let stats = pool.stats();
    assert_eq!((stats.opened, stats.connect_failures), (1, 1), "{stats:?}");
    assert_eq!(pool.status().idle, 1);
    assert_books(&pool);
}
